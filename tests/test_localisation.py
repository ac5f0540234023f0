"""Concept localisation: closed-form cases on tensors and a stub system, then evaluate on a tiny toybirds run."""

import json
import math

import numpy as np
import pytest
import torch
import torch.nn as nn

from viscoin_core.eval import concepts as C

H = W = 8


def _mask(rows, cols):
    m = torch.zeros(1, H, W, dtype=torch.bool)
    m[0, rows, cols] = True
    return m


def test_a_change_wholly_inside_a_part_of_share_s_scores_one_over_s():
    mask = _mask(slice(0, 4), slice(0, 2))               # s = 8 / 64
    change = mask.float() * 3.0
    assert C.localisation(change, mask).item() == pytest.approx(64 / 8)
    inside_part_of_it = _mask(slice(1, 2), slice(0, 1)).float()  # a change on part of the mask: still all inside
    assert C.localisation(inside_part_of_it, mask).item() == pytest.approx(64 / 8)


def test_a_uniform_change_scores_one_and_a_change_outside_scores_zero():
    mask = _mask(slice(2, 7), slice(1, 4))
    assert C.localisation(torch.full((1, H, W), 0.7), mask).item() == pytest.approx(1.0)
    assert C.localisation((~mask).float(), mask).item() == 0.0
    half = torch.where(mask, 1.0, 0.0) + torch.where(mask, 0.0, 1.0) * 15 / 49   # equal mass in and out
    assert C.localisation(half, mask).item() == pytest.approx(0.5 / (15 / 64))


def test_an_empty_part_or_no_change_is_nan():
    empty = torch.zeros(1, H, W, dtype=torch.bool)
    assert math.isnan(C.localisation(torch.rand(1, H, W), empty).item())
    assert math.isnan(C.localisation(torch.zeros(1, H, W), _mask(0, 0)).item())
    with pytest.raises(ValueError, match="differ in shape"):
        C.localisation(torch.rand(1, H, W), torch.ones(1, H, W + 1, dtype=torch.bool))


def test_summaries_leave_out_nan_pairs_and_split_by_part():
    pairs = [{"part": "belly", "localisation": 2.0}, {"part": "belly", "localisation": 4.0},
             {"part": "bill", "localisation": float("nan")}, {"part": "bill", "localisation": 1.0}]
    out = C.summarise_localisation(pairs)
    assert out["n"] == 3 and out["mean"] == pytest.approx(7 / 3) and out["median"] == 2.0 and out["unchanged"] == 1
    assert out["per_part"]["belly"] == {"mean": 3.0, "median": 3.0, "n": 2}
    assert out["per_part"]["bill"]["n"] == 1


def test_the_part_of_a_concept_is_the_part_of_the_factor_it_equals():
    rng = np.random.default_rng(0)
    names = ["belly_red", "belly_blue", "wing_striped", "tail_length", "position_x"]
    part_factors = {"belly": ["belly_red", "belly_blue"], "wing": ["wing_striped"], "tail": ["tail_length"]}
    factors = torch.tensor(rng.random((200, len(names))), dtype=torch.float32)
    factors[:, :3] = factors[:, :3] > 0.5
    acts = torch.stack([factors[:, 3], factors[:, 1], factors[:, 2] + 0.1 * torch.rand(200), factors[:, 4]], dim=1)
    parts = C.concept_parts(acts, factors, names, part_factors)
    assert parts[0] == "tail" and parts[1] == "belly" and parts[2] == "wing"
    assert parts[3] in part_factors               # a concept following position (no part) still gets a part
    assert C.concept_parts(acts, factors, names, part_factors, concepts=[1]) == {1: "belly"}
    assert C.factor_parts(part_factors)["belly_blue"] == "belly" and "position_x" not in C.factor_parts(part_factors)
    with pytest.raises(ValueError, match="belongs to a part"):
        C.concept_parts(acts, factors, names, {"bill": ["bill_orange"]})


def test_top_concepts_rank_by_class_relevance_and_skip_unpredicted_classes():
    r_kc = torch.tensor([[0.1, 0.9, 0.5], [float("nan")] * 3, [1.0, -0.2, 0.3]])
    assert C.top_concepts(r_kc, 2) == {0: [1, 2], 2: [0, 2]}


class _Theta(nn.Module):
    """g's head as the metrics see it: spatial max pooling and a linear layer (C, K) without bias."""

    def __init__(self, weight):
        super().__init__()
        self.linear = nn.Linear(weight.shape[1], weight.shape[0], bias=False)
        self.linear.weight.data.copy_(weight)

    def pool(self, phi):
        return phi.amax(dim=(2, 3))

    def forward(self, phi):
        return self.linear(self.pool(phi))


def _stub_system():
    """Concept 0 paints the top-left 4x4 block, concept 1 the whole frame, each in proportion to its
    pooled activation; Phi' adds a constant image (it must cancel out of every change map)."""
    patterns = torch.zeros(2, 3, H, W)
    patterns[0, :, :4, :4] = 1.0
    patterns[1] = 0.25

    def decode(phi, phi_prime):
        return torch.einsum("bk,kchw->bchw", phi.amax(dim=(2, 3)), patterns) + phi_prime[:, :1, None, None]
    theta = _Theta(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))   # class c's only relevant concept is c
    return C.System(f=None, psi=None, theta=theta, decode=decode)


def _pool(system, n=4):
    phi = torch.rand(n, 2, 3, 3)
    phi[:2, 0] += 1.0                                    # images 0, 1: concept 0 wins, so g says class 0
    phi[2:, 1] += 1.0
    acts = phi.amax(dim=(2, 3))
    return C.ConceptPool(torch.arange(n), phi, torch.rand(n, 18), acts, system.theta(phi).argmax(dim=1), None)


def test_the_stub_systems_change_maps_score_in_closed_form():
    system = _stub_system()
    cp = _pool(system)
    assert cp.predicted.tolist() == [0, 0, 1, 1]
    change = C.change_maps(system, cp.phi, cp.phi_prime, 0, phi_max=2.0)
    expected = torch.zeros(H, W)
    expected[:4, :4] = 3 * 4.0 * 2.0                     # |x~(4 phi_max) - x~(0)| summed over RGB
    assert torch.allclose(change, expected.expand(4, H, W))
    masks = torch.zeros(4, 2, H, W, dtype=torch.bool)
    masks[:, 0, :4, :8] = True                           # "belly": the top half, covering the block
    masks[:, 1, 6:, :] = True                            # "tail": the bottom quarter
    masks[1, 0] = False                                  # image 1 has no belly: its pair is skipped
    pairs = C.localisation_pairs(system, cp, torch.arange(4), masks, ["belly", "tail"],
                                 {0: "belly", 1: "tail"}, {0: [0], 1: [1]}, batch_size=3)
    got = {(p["row"], p["concept"]): p["localisation"] for p in pairs}
    assert set(got) == {(0, 0), (2, 1), (3, 1)}
    assert got[(0, 0)] == pytest.approx(2.0)             # all of it inside a part of share 1/2
    assert got[(2, 1)] == pytest.approx(1.0) == got[(3, 1)]   # concept 1 changes every pixel alike


def test_concept_localisation_reports_its_concepts_and_summary():
    system = _stub_system()
    cp = _pool(system, n=6)
    r_kc = C.class_relevance(C.concept_relevance(cp.phi, system.theta, cp.predicted), cp.predicted, 2)
    masks = torch.zeros(6, 2, H, W, dtype=torch.bool)
    masks[:, 0, :4, :4] = True                           # the block itself: share 1/4
    masks[:, 1, :, :] = True
    factors = torch.stack([cp.activations[:, 0], cp.activations[:, 1]], dim=1)
    out = C.concept_localisation(system, cp, r_kc, torch.arange(6), masks, ["block", "frame"], factors,
                                 ["block_size", "frame_shade"], {"block": ["block_size"], "frame": ["frame_shade"]},
                                 top_k=1)
    assert out["concepts"][0]["part"] == "block" and out["concepts"][1]["part"] == "frame"
    assert out["per_part"]["block"]["mean"] == pytest.approx(4.0)
    assert out["per_part"]["frame"]["mean"] == pytest.approx(1.0)
    assert out["n"] == 6 and out["concepts"][0]["phi_max"] == pytest.approx(float(cp.activations[:, 0].max()))


@pytest.fixture(scope="module")
def tiny_birds_run(tmp_path_factory, make_tiny_run):
    return make_tiny_run(tmp_path_factory.mktemp("tiny_birds"), "toybirds")


def test_evaluate_writes_concept_localisation_on_a_tiny_toybirds_run(tiny_birds_run, tmp_path):
    import matplotlib
    matplotlib.use("Agg")

    from viscoin_core.data.synthetic import TOYBIRD_PARTS
    from viscoin_core.eval import RELEVANCE, evaluate, load_system_and_test_split
    from viscoin_core.viz import figures
    evaluate(tiny_birds_run, consistency_samples=3, consistency_concepts=1, batch_size=8, localisation_images=5)
    stored = json.loads((tiny_birds_run / "metrics.json").read_text())["concept_localisation"]
    assert {"mean", "median", "n", "untrained_mean", "per_part"} <= set(stored)
    assert stored["images"] == 5 and 0 < stored["n"] <= 5 * 3 and stored["lambda"] == 4.0
    assert set(stored["per_part"]) <= set(TOYBIRD_PARTS)
    assert stored["mean"] >= 0 and stored["untrained_mean"] >= 0
    assert all(c["part"] in TOYBIRD_PARTS for c in stored["concepts"].values())
    # the figures show change maps with the part's outline where some shown concept changes anything
    figs = figures.figures_for_run(tiny_birds_run, tmp_path, n_classes_shown=2, n_images=2)
    relevance = torch.load(tiny_birds_run / RELEVANCE, weights_only=True)
    test = load_system_and_test_split(tiny_birds_run)[1]
    counts = torch.bincount(relevance["predicted"], minlength=len(relevance["class_names"]))
    shown = [c for c in counts.argsort(descending=True).tolist() if counts[c] > 0][:2]
    usable = figures.localisation_pairs_shown(stored["concepts"], relevance["r_kc"], shown, relevance["predicted"],
                                              relevance["labels"], relevance["images_index"], test)
    assert ("localisation" in figs) == bool(usable)


def test_table3_shows_localisation_beside_the_untrained_psi_and_n_a_without_masks(tmp_path):
    from dataclasses import dataclass
    from pathlib import Path

    from viscoin_core.tables import build_table, load_tables
    @dataclass(frozen=True)
    class Run:                      # what build_table reads of a batch.Run
        label: str
        run_dir: Path
    spec = load_tables()["table3"]
    label = spec["rows"][0]["label"]
    runs = []
    for seed, metrics in enumerate([{"g_accuracy": 50.0, "concept_localisation": {"mean": 2.0, "untrained_mean": 1.0}},
                                    {"g_accuracy": 60.0, "concept_localisation": {"mean": 4.0, "untrained_mean": 1.0}}]):
        run_dir = tmp_path / f"seed{seed}"
        run_dir.mkdir()
        (run_dir / "metrics.json").write_text(json.dumps(metrics))
        runs.append(Run(label, run_dir))
    table = build_table("table3", "demo", runs)
    assert table.loc[0, "localisation"].startswith("3 ± 1.4") and table.loc[0, "localisation, untrained Psi"] == "1 ± 0"
    (runs[0].run_dir / "metrics.json").write_text(json.dumps({"g_accuracy": 50.0}))   # real data: no masks
    table = build_table("table3", "paper", runs[:1])
    assert table.loc[0, "localisation"] == "n/a" and table.loc[0, "g_accuracy"] == "50"
