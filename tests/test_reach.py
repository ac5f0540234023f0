"""What bounds a reconstruction (eval.reach, python -m viscoin_core.diagnose): the W+ projection, the ridge
probes from f's taps, and the command that scores both beside a VisCoIN run."""

import json

import numpy as np
import pytest
import torch
import torch.nn as nn

from viscoin_core.eval import reach
from viscoin_core.model import random_generator
from viscoin_core.nets.stylegan2 import small_generator_kwargs


def tiny_G(seed: int = 0):
    return random_generator(small_generator_kwargs(resolution=8, w_dim=8, channel_base=64, channel_max=8), seed)


class PixelTaps(nn.Module):
    """A stand-in f whose every tap is the image itself: a probe can then read the pixels exactly."""

    def forward_taps(self, x):
        return x.mean(dim=(1, 2, 3)), {"layer2": x, "layer3": x[:, :, ::2, ::2], "layer4": x[:, :, :1, :1]}


class PixelFeatures(nn.Module):
    """A stand-in f whose penultimate features are the pixels."""

    def penultimate(self, x):
        return x.flatten(1)


def test_ridge_fit_matches_the_normal_equations_in_both_forms():
    """Golden: numpy's solve of the centred normal equations; the intercept is the residual mean."""
    gen = torch.Generator().manual_seed(0)

    def expected(a, y, ridge):
        a, y = a.double().numpy(), y.double().numpy()
        ac, yc = a - a.mean(0), y - y.mean(0)
        w = np.linalg.solve(ac.T @ ac + ridge * np.eye(a.shape[1]), ac.T @ yc)
        return w, y.mean(0) - a.mean(0) @ w

    a, y = torch.randn(30, 5, generator=gen), torch.randn(30, 2, generator=gen)
    wide = torch.randn(4, 9, generator=gen)                      # dual form: 9 columns > 4 rows
    for a_, y_ in ((a, y), (wide, y[:4])):
        w, b = reach.ridge_fit(a_, y_, 0.5)
        w_np, b_np = expected(a_, y_, 0.5)
        assert np.allclose(w.numpy(), w_np, atol=1e-10) and np.allclose(b.numpy(), b_np, atol=1e-10)
    # the intercept is not shrunk: a constant target is fitted exactly whatever the penalty
    w, b = reach.ridge_fit(a, torch.full((30, 1), 3.0), 1e6)
    assert torch.allclose(a.double() @ w + b, torch.full((30, 1), 3.0, dtype=torch.float64))
    with pytest.raises(ValueError, match="ridge"):
        reach.ridge_fit(a, y, 0.0)


def test_a_probe_on_taps_that_are_the_pixels_reads_test_images_back():
    gen = torch.Generator().manual_seed(1)
    x_train, x_test = torch.rand(64, 3, 4, 4, generator=gen) * 2 - 1, torch.rand(12, 3, 4, 4, generator=gen) * 2 - 1
    labels = torch.arange(12) % 3
    read = reach.tap_probe(PixelTaps(), x_train, x_test, "layer2", ridge=1e-3)
    assert (read - x_test).abs().max() < 1e-2
    assert reach.scored(read, x_test, labels)["identification_in_class"] == 100.0
    # layer4 here is one pixel per channel: the rest of the image cannot be read from it
    coarse = reach.scored(reach.tap_probe(PixelTaps(), x_train, x_test, "layer4", ridge=1e-3), x_test, labels)
    assert coarse["mse"] > 0.1


def test_projection_approaches_images_that_G_made_and_leaves_G_untouched():
    G = tiny_G()
    before = {k: v.clone() for k, v in G.state_dict().items()}
    with torch.no_grad():
        ws = G.mapping(torch.randn(6, G.z_dim, generator=torch.Generator().manual_seed(2)), None)
        x = G.synthesis(ws, noise_mode="const")
    x_proj, history = reach.project(G, x, steps=60, lr=0.05)
    assert len(history) == 61 and history[-1] < 0.5 * history[0]
    # a random 8 px G is hard to invert (0.97 -> 0.33 here), but the projections already tell its six images apart
    assert reach.scored(x_proj, x, torch.zeros(6))["identification"] >= 50.0   # chance: 16.7
    assert all(torch.equal(v, before[k]) for k, v in G.state_dict().items())
    assert not any(p.requires_grad for p in G.parameters())   # as it came: random_generator freezes G
    with pytest.raises(ValueError, match="px"):
        reach.project(G, torch.zeros(1, 3, 16, 16))


def test_truncation_zero_draws_one_image_whose_precision_is_all_or_nothing():
    """At psi = 0 every sample is G's average image: all of them lie in the real manifold or none do,
    and they cover no real image (their k-NN balls among themselves have radius 0)."""
    G, f = tiny_G(), PixelFeatures()
    real = torch.rand(12, 3, 8, 8, generator=torch.Generator().manual_seed(3)) * 2 - 1
    pr = reach.truncated_precision_recall(G, f, real, [0.0, 1.0])
    assert pr["0.0"]["precision"] in (0.0, 1.0)
    assert pr["0.0"]["recall"] == 0.0
    assert 0.0 <= pr["1.0"]["precision"] <= 1.0


def test_per_class_takes_the_first_of_every_class():
    assert reach.per_class(torch.tensor([2, 0, 0, 2, 1, 0]), 2) == [1, 2, 4, 0, 3]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, make_tiny_run):
    return make_tiny_run(tmp_path_factory.mktemp("tiny"), "toytissue")


def test_diagnose_scores_projection_probes_and_a_run(tiny_run, tmp_path):
    """The command on a trained tiny run: every method gets its line in the JSON, and the figure has
    one row per method under the inputs."""
    from viscoin_core import diagnose
    from viscoin_core.model import load_viscoin
    from viscoin_core.nets.classifier import save_classifier
    from viscoin_core.nets.stylegan2 import save_generator
    parts = load_viscoin(tiny_run)
    save_classifier(parts["f"], tmp_path / "f.pt")
    save_generator(parts["G"], tmp_path / "G.pt")
    data = parts["config"].cache_dir
    out = tmp_path / "reach" / "tiny"
    assert diagnose.main(["--data", data, "--f", str(tmp_path / "f.pt"), "--G", str(tmp_path / "G.pt"),
                          "--run", f"tiny={tiny_run}", "--out", str(out), "--per-class", "2", "--n-train", "16",
                          "--steps", "3", "--truncation", "1.0", "0.5"]) == 0
    record = json.loads(out.with_suffix(".json").read_text())
    assert set(record["scores"]) == {"projection", "probe_layer2", "probe_layer3", "probe_layer4", "viscoin: tiny"}
    for score in record["scores"].values():
        assert 0.0 <= score["identification_in_class"] <= 100.0 and score["mse"] >= 0.0
    assert set(record["samples_by_truncation"]) == {"1.0", "0.5"}
    assert all(0.0 <= v <= 1.0 for pr in record["samples_by_truncation"].values() for v in pr.values())
    assert out.with_suffix(".png").is_file() and out.with_suffix(".pdf").is_file()
    with pytest.raises(SystemExit):
        diagnose.main(["--data", data, "--f", "x", "--G", "y", "--out", str(out), "--ridge", "0"])
