"""The VisCoIN training loop: frozen f and G, the loss falling, exact resume, NaN handling, bad configs, CLI."""

import json

import pytest
import torch

from viscoin_core import losses, model, runs
from viscoin_core.config import ConfigError, load_config, to_dict
from viscoin_core.data import ensure_prepared
from viscoin_core.eval.metrics import build_lpips
from viscoin_core.nets.classifier import build_classifier, save_classifier
from viscoin_core.train import loop
from viscoin_core.train import viscoin as V


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("toybirds")
    return str(ensure_prepared({"dataset": "toybirds", "root": str(root / "raw"), "cache_dir": str(root / "cache"),
                                "resolution": 32, "n_per_class": 2}))


def tiny(cache_dir, **kw):
    """A tiny run: 32 px toybirds, random resnet18 f and 32 px G (num_ws = 8), K = 4."""
    params = dict(f="random", G="random", cache_dir=cache_dir, n_concepts=4, latent_channels=8, coarse_layer=2,
                  mid_layer=5, batch_real=2, batch_fake=2, iterations=4, log_every=1, eval_every=1000,
                  eval_subset=4, final_eval_images=4, checkpoint_every=1000, lpips_backbone="random",
                  fid_features="classifier", lr=1e-3)
    params.update(kw)
    return model.as_config(params)


def make_trainer(cfg, n_classes=12):
    f = model.build_f(cfg, n_classes)
    G = model.build_G(cfg, 32)
    return V.Trainer(cfg, f, G, model.build_parts(cfg, f, G, n_classes), build_lpips("random"), torch.device("cpu"))


def snapshot(module):
    return {k: v.clone() for k, v in module.state_dict().items()}


def test_training_changes_only_psi_theta_omega_and_loss_falls(cache_dir):
    tr = make_trainer(tiny(cache_dir, batch_fake=1, lr=3e-3))
    before = {name: snapshot(m) for name, m in
              {"f": tr.f, "G": tr.G, "psi": tr.psi, "theta": tr.theta, "omega": tr.omega}.items()}
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    z = V.synthetic_z(tr.cfg, 0, tr.G.z_dim)
    totals = [tr.step(x, z, i)["total"] for i in range(6)]
    assert sum(totals[-2:]) / 2 < 0.95 * sum(totals[:2]) / 2, totals
    for name in ("f", "G"):   # bit-identical, BatchNorm statistics and w_avg included
        after = tr.f.state_dict() if name == "f" else tr.G.state_dict()
        assert all(torch.equal(after[k], v) for k, v in before[name].items()), name
    assert not tr.f.training and not tr.G.training
    for name, m in (("psi", tr.psi), ("theta", tr.theta), ("omega", tr.omega)):
        changed = [k for k, v in m.state_dict().items() if not torch.equal(v, before[name][k])]
        assert changed, f"{name} did not change"
    assert torch.equal(tr.omega.w_bar, tr.G.mapping.w_avg)   # frozen w-bar (paper default)
    assert all(p.grad is None for p in [*tr.f.parameters(), *tr.G.parameters()])


def test_synthetic_samples_carry_no_graph(cache_dir):
    cfg = tiny(cache_dir)
    G = model.build_G(cfg, 32)
    with torch.no_grad():
        expected = G(V.synthetic_z(cfg, 0, G.z_dim), None, noise_mode="const")
    tr = V.Trainer(tiny(cache_dir), model.build_f(cfg, 12), G, model.build_parts(cfg, model.build_f(cfg, 12), G, 12),
                   torch.nn.Identity(), torch.device("cpu"))
    x = tr.sample_fake(V.synthetic_z(cfg, 0, G.z_dim))
    assert x.shape == (2, 3, 32, 32) and x.grad_fn is None and not x.requires_grad
    assert torch.allclose(x, expected, atol=1e-6)   # G(z) at truncation 1 (a fresh G's noise strength is 0)


def test_learning_rate_schedules(cache_dir):
    cfg = tiny(cache_dir, iterations=10_000, lr_schedule="code", lr=1.0)
    # the released loop multiplies by 0.8 at i = 6000, 7000, 8000, 9000 (i > 5000 and i % 1000 == 0)
    assert [V.learning_rate(cfg, i) for i in (0, 5000, 5999, 6000, 6999, 7000, 9999)] == \
        pytest.approx([1, 1, 1, 0.8, 0.8, 0.64, 0.8**4])
    assert V.learning_rate(tiny(cache_dir, lr=0.5), 99_999) == 0.5


def test_batches_are_a_function_of_the_iteration():
    whole = list(V.IterationBatches(n=5, batch=3, seed=7, start=0, stop=6))
    tail = list(V.IterationBatches(n=5, batch=3, seed=7, start=4, stop=6))
    assert whole[4:] == tail
    # every epoch is a permutation: positions 0..14 cover each index exactly 3 times
    indices = [i for batch in whole[:5] for i, _ in batch]
    assert sorted(indices) == sorted(list(range(5)) * 3)


def test_an_items_augmentation_is_its_seeds_draw_and_leaves_the_callers_stream_alone():
    class Draws(torch.utils.data.Dataset):   # an "augmentation" that draws from torch's global RNG
        def __len__(self):
            return 3

        def __getitem__(self, i):
            return torch.rand(4) + i

    items = V._SeededItems(Draws())
    torch.manual_seed(123)
    expected_next = torch.rand(2)
    torch.manual_seed(123)
    first, again = items[(1, 55)], items[(1, 55)]
    assert torch.equal(first, again)
    assert torch.equal(first, torch.rand(4, generator=torch.Generator().manual_seed(55)) + 1)   # seed 55's draw
    assert not torch.equal(items[(1, 56)], first)
    assert torch.equal(torch.rand(2), expected_next)   # the caller's stream continues as if nothing was drawn


@pytest.mark.parametrize("extra", [{}, {"latent_regression_weight": 1.0, "latent_regression_space": "w+"}],
                         ids=["paper", "latent_regression"])
def test_resume_is_exact(cache_dir, tmp_path, extra):
    """2 iterations from the CLI == 1 iteration, an interruption, and a resumed run (bit-identical on CPU)."""
    cfg = tiny(cache_dir, lr_schedule="code", w_bar="zeros_trainable", iterations=2, batch_real=1,
               batch_fake=1, final_eval_images=2, **extra)
    params = tmp_path / "p.yaml"
    params.write_text("\n".join(f"{k}: {json.dumps(v)}" for k, v in to_dict(cfg).items()) + "\n")
    assert V.main(["--params", str(params), "--run-dir", str(tmp_path / "whole")]) == 0
    whole = json.loads((tmp_path / "whole" / "metrics.json").read_text())
    partial = V.train_viscoin(cfg, tmp_path / "resumed", stop_after=1)
    assert partial == {"iteration": 1, "finished": False}
    assert runs.load_checkpoint(tmp_path / "resumed")["iteration"] == 1
    resumed = V.train_viscoin(cfg, tmp_path / "resumed")
    a = torch.load(tmp_path / "whole" / "viscoin.pt", weights_only=True)
    b = torch.load(tmp_path / "resumed" / "viscoin.pt", weights_only=True)
    for part in ("psi", "theta", "omega"):
        for k in a[part]:
            assert torch.equal(a[part][k], b[part][k]), (part, k)
    assert whole == resumed
    logs = [runs.read_jsonl(tmp_path / d / "log.jsonl") for d in ("whole", "resumed")]
    assert [r["iteration"] for r in logs[0]] == [r["iteration"] for r in logs[1]]
    assert [r.get("total") for r in logs[0]] == [r.get("total") for r in logs[1]]
    trained = [r for r in logs[0] if r["split"] == "train"]
    assert all(("latent_regression" in r) == bool(extra) for r in trained)   # its own logged term, only when on
    final_test = [r for r in logs[0] if r["split"] == "test"][-1]   # 2 test images of different classes
    assert final_test["identification_chance"] == 50.0 and final_test["identification_in_class_chance"] == 100.0
    for key in ("g_accuracy", "f_accuracy", "fidelity", "mse", "lpips", "fid", "lpips_backbone", "fid_features"):
        assert key in whole
    assert whole["lpips_backbone"] == "random" and whole["fid_features"] == "classifier"

    system = model.load_viscoin(tmp_path / "whole")
    assert set(system) >= {"f", "G", "psi", "theta", "omega", "config"}
    assert not any(m.training for k, m in system.items() if k in ("f", "G", "psi", "theta", "omega"))
    for k, v in a["psi"].items():
        assert torch.equal(system["psi"].state_dict()[k], v)
    # a finished run is not trained again
    assert V.train_viscoin(cfg, tmp_path / "whole") == whole


def test_a_finished_run_extended_to_more_iterations_equals_the_longer_run(cache_dir, tmp_path):
    """iterations 1 -> 2 on a finished run goes on from its checkpoint: the same weights as 2 from the
    start; the shorter run's metrics and model are replaced. Shrinking, or another change, is refused."""
    longer = V.train_viscoin(tiny(cache_dir, iterations=2), tmp_path / "whole")
    V.train_viscoin(tiny(cache_dir, iterations=1), tmp_path / "extended")
    extended = V.train_viscoin(tiny(cache_dir, iterations=2), tmp_path / "extended")
    a, b = (torch.load(tmp_path / d / "viscoin.pt", weights_only=True) for d in ("whole", "extended"))
    for part in ("psi", "theta", "omega"):
        for k in a[part]:
            assert torch.equal(a[part][k], b[part][k]), (part, k)
    assert extended == longer and extended["iterations"] == 2
    train_its = [r["iteration"] for r in runs.read_jsonl(tmp_path / "extended" / "log.jsonl") if r["split"] == "train"]
    assert train_its == [1, 2]
    with pytest.raises(ConfigError, match=r"only \['iterations'\] may change, and only grow"):
        V.train_viscoin(tiny(cache_dir, iterations=1), tmp_path / "extended")
    with pytest.raises(ConfigError, match="changed: \\['iterations', 'lr'\\]"):
        V.train_viscoin(tiny(cache_dir, iterations=3, lr=2e-3), tmp_path / "extended")
    # the code's schedule decays by the total budget: a longer run is not the shorter one continued
    V.train_viscoin(tiny(cache_dir, iterations=1, lr_schedule="code"), tmp_path / "decayed")
    with pytest.raises(ConfigError, match=r"changed: \['iterations'\]\); use a new run"):
        V.train_viscoin(tiny(cache_dir, iterations=2, lr_schedule="code"), tmp_path / "decayed")


def test_nan_stops_with_iteration_term_and_last_finite_checkpoint(cache_dir, tmp_path, monkeypatch):
    calls = {"n": 0}
    real_sparsity = losses.sparsity

    def sparsity_going_bad(phi, mode="paper"):
        calls["n"] += 1
        value = real_sparsity(phi, mode)
        return value * float("nan") if calls["n"] == 3 else value
    monkeypatch.setattr(losses, "sparsity", sparsity_going_bad)
    run = tmp_path / "run"
    with pytest.raises(loop.NonFiniteLoss, match=r"'sparsity'.*iteration 2.*last finite checkpoint is "
                       rf"{run / 'checkpoint.pt'} \(iteration 2\); nothing was written after it"):
        V.train_viscoin(tiny(cache_dir, checkpoint_every=1), run)
    ckpt = runs.load_checkpoint(run)   # the state before the NaN, written as usual after iteration 2
    assert ckpt["iteration"] == 2 and all(torch.isfinite(v).all() for v in ckpt["psi"].values())


@pytest.mark.parametrize("change, match", [
    ({"n_concept": 4}, "unknown parameter"),
    ({"n_concepts": "four"}, "'n_concepts'"),
    ({"n_concepts": 0}, r"'n_concepts' = 0"),
    ({"coarse_layer": 6, "mid_layer": 5}, r"'coarse_layer' = 6.*mid_layer"),
    ({"w_bar": "ones"}, r"'w_bar'.*zeros_trainable"),
    ({"sparsity": "l2"}, r"'sparsity'"),
    ({"cache_dir": ""}, "'data'"),
])
def test_bad_config(cache_dir, change, match):
    params = dict(f="random", G="random", cache_dir=cache_dir)
    params.update(change)
    with pytest.raises(ConfigError, match=match):
        model.as_config(params)


def test_mid_layer_beyond_generator(cache_dir, tmp_path):
    with pytest.raises(ConfigError, match=r"'mid_layer' = 8.*num_ws = 8"):
        V.train_viscoin(tiny(cache_dir, mid_layer=8), tmp_path / "run")


def test_classifier_class_count_must_match_data(cache_dir, tmp_path):
    save_classifier(build_classifier("resnet18", n_classes=5), tmp_path / "f.pt")
    with pytest.raises(ConfigError, match=r"'f'.*5 classes.*12"):
        V.train_viscoin(tiny(cache_dir, f=str(tmp_path / "f.pt")), tmp_path / "run")


def test_smoke_params_parse():
    smoke = load_config(model.ViscoinConfig, "params/smoke/viscoin.yaml")
    assert smoke.f == "random" and smoke.lpips_backbone == "random" and smoke.fid_features == "classifier"


def test_bf16_autocast_path_runs(cache_dir):
    """The CUDA fast path's bf16 autocast, exercised on CPU: finite terms, float32 parameters."""
    tr = make_trainer(tiny(cache_dir, amp="bf16", batch_fake=1))
    terms = tr.step(torch.rand(1, 3, 32, 32) * 2 - 1, V.synthetic_z(tr.cfg, 0, tr.G.z_dim), 0)
    assert all(torch.isfinite(torch.tensor(v)) for v in terms.values())
    assert all(p.dtype == torch.float32 for p in tr.psi.parameters())


def test_f_and_G_from_files(cache_dir, tmp_path):
    from viscoin_core.nets.stylegan2 import save_generator
    cfg = tiny(cache_dir)
    f = model.build_f(cfg, 12)
    (tmp_path / "f").mkdir()
    save_classifier(f, tmp_path / "f" / "f.pt")   # a run directory holding f.pt
    G = model.build_G(cfg, 32)
    save_generator(G, tmp_path / "G.pt")
    params = dict(f=str(tmp_path / "f"), G=str(tmp_path / "G.pt"), iterations=1, final_eval_images=2)
    V.train_viscoin(tiny(cache_dir, **params), tmp_path / "run")
    system = model.load_viscoin(tmp_path / "run")
    for k, v in f.state_dict().items():
        assert torch.equal(system["f"].state_dict()[k], v), k
    assert torch.equal(system["omega"].w_bar, G.mapping.w_avg)

    from viscoin_core.nets.stylegan2 import Generator
    save_generator(model.freeze(Generator(**model._random_generator_kwargs(cfg, 64))), tmp_path / "G64.pt")
    with pytest.raises(ConfigError, match=r"'G'.*64 px.*32 px"):
        V.train_viscoin(tiny(cache_dir, G=str(tmp_path / "G64.pt")), tmp_path / "run64")
