"""StyleGAN2-ADA training: loss terms against independent computations, phases, EMA, resume, NaN, bad input."""

import pytest
import torch

from viscoin_core.config import ConfigError, parse_config
from viscoin_core.nets import stylegan2
from viscoin_core.train import gan
from viscoin_core.runs import read_jsonl
from viscoin_core.train.loop import NonFiniteLoss


pytestmark = pytest.mark.usefixtures("one_thread")


RES = 16


class TinyImages(torch.utils.data.Dataset):
    """Random smooth images in [-1, 1] with the attributes train_gan reads."""

    def __init__(self, n: int = 16, resolution: int = RES):
        g = torch.Generator().manual_seed(123)
        coarse = torch.rand(n, 3, 4, 4, generator=g) * 2 - 1
        self.x = torch.nn.functional.interpolate(coarse, size=resolution, mode="bilinear", align_corners=False)
        self.resolution = resolution
        self.labels = torch.zeros(n, dtype=torch.long)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], 0


def tiny_config(**overrides) -> gan.GanConfig:
    params = dict(data="unused.yaml", start="scratch", arch="small", ema_rampup=0.05, fid_features="classifier", kimg=0.016, w_dim=16, channel_base=128, channel_max=16,
                  mapping_layers=1, batch=4, mbstd_group=2, fid_images=0, r1_interval=2, pl_interval=2,
                  snapshot_kimg=0.008, grid_size=2, ema_kimg=0.01, augment_p=0.2, ada_kimg=1.0, ada_interval=1,
                  log_every=1)
    params.update(overrides)
    return parse_config(gan.GanConfig, params)


def tiny_state(config: gan.GanConfig) -> gan.GanState:
    G, D, G_ema = gan.start_networks(config, RES)
    G_opt, D_opt = gan.make_optimizers(G, D, config)
    return gan.GanState(G, D, G_ema.eval().requires_grad_(False), G_opt, D_opt, gan.make_ada(config), torch.zeros(()))


def params_of(module) -> dict:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def changed(before: dict, after: dict) -> set:
    return {k for k in before if not torch.equal(before[k], after[k])}


def run_phases(state, config, phases, data=None):
    data = data or TinyImages()
    draws = gan.draw_step(config, state.step, len(data), state.G.z_dim, state.G.num_ws, 3, RES, state.p)
    return gan.train_step(state, config, gan.reals_reader(data), draws, torch.device("cpu"), phases=phases)


# ---------------------------------------------------------------------------------------------

def test_r1_of_a_linear_discriminator_is_its_squared_weight_norm():
    w = torch.randn(3, 4, 4)
    x = torch.randn(5, 3, 4, 4, requires_grad=True)
    logits = (x * w).sum(dim=[1, 2, 3])
    assert torch.allclose(gan.r1_penalty(x, logits), w.square().sum().expand(5), rtol=1e-5)


def test_r1_equals_jacobian_of_real_discriminator():
    D = stylegan2.Discriminator(**stylegan2.small_discriminator_kwargs(resolution=8, channel_base=64, channel_max=8,
                                                                       mbstd_group_size=2)).double()
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64, requires_grad=True)
    r1 = gan.r1_penalty(x, D(x, None))
    # Independent: the full Jacobian of the summed logits, row by row.
    jac = torch.autograd.functional.jacobian(lambda t: D(t, None).sum(), x.detach())   # (2, 3, 8, 8)
    assert torch.allclose(r1, jac.square().sum(dim=[1, 2, 3]), rtol=1e-8)
    r1.sum().backward()                       # the penalty is differentiable for D's update
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in D.parameters())


def test_path_lengths_match_explicit_jacobian():
    torch.manual_seed(1)
    ws = torch.randn(2, 3, 4, requires_grad=True)
    A = torch.randn(4, 2 * 2 * 2)
    images = (ws.sum(1) @ A).view(2, 2, 2, 2)        # image depends linearly on the sum of the ws copies
    noise = torch.randn(2, 2, 2, 2)
    got = gan.path_lengths(images, ws, noise)
    y = noise.view(2, -1) / 2.0                       # / sqrt(H W)
    per_copy = y @ A.T                                # J^T y w.r.t. each w copy: (2, 4)
    expected = per_copy.square().sum(1).sqrt()       # same for every copy, so the mean is that
    assert torch.allclose(got, expected, rtol=1e-5)


def test_ema_beta_and_update_follow_the_formula():
    assert gan.ema_beta(32, 10_000, 10.0, None) == pytest.approx(0.5 ** (32 / 10_000))
    assert gan.ema_beta(32, 1_000, 10.0, 0.05) == pytest.approx(0.5 ** (32 / 50))      # ramp-up caps the half-life
    a, b = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    a.register_buffer("w_avg", torch.zeros(2))
    b.register_buffer("w_avg", torch.ones(2))
    ema_w = a.weight.detach().clone()
    gan.update_ema(a, b, 0.9)
    assert torch.allclose(a.weight, 0.9 * ema_w + 0.1 * b.weight.detach())
    assert torch.equal(a.w_avg, b.w_avg)


def test_losses_closed_form():
    logits = torch.tensor([0.0, 2.0])
    assert torch.allclose(gan.g_loss(logits), torch.log1p(torch.exp(-logits)))
    assert torch.allclose(gan.d_loss(logits, -logits), 2 * torch.log1p(torch.exp(-logits)))


@pytest.mark.parametrize("phase,moves", [("gmain", "G"), ("greg", "G"), ("dmain", "D"), ("dreg", "D")])
def test_each_phase_changes_only_its_network(phase, moves):
    config = tiny_config()
    state = tiny_state(config)
    G0, D0, E0 = params_of(state.G), params_of(state.D), params_of(state.G_ema)
    logs = run_phases(state, config, (phase,))
    G1, D1 = params_of(state.G), params_of(state.D)
    assert bool(changed(G0, G1)) == (moves == "G")
    assert bool(changed(D0, D1)) == (moves == "D")
    assert state.step == 1 and state.nimg == config.batch
    # G_ema moved towards G by the EMA formula (parameters), buffers copied.
    beta = gan.ema_beta(config.batch, config.batch, config.ema_kimg, config.ema_rampup)
    for (name, p_ema), (_, p) in zip(state.G_ema.named_parameters(), state.G.named_parameters()):
        assert torch.allclose(p_ema, beta * E0[name] + (1 - beta) * p, atol=1e-6), name
    assert all(torch.isfinite(torch.tensor(v)) for v in logs.values())
    if phase == "greg":
        assert float(state.pl_mean) > 0


def test_ada_p_moves_with_d_confidence():
    config = tiny_config(augment_p=0.5, ada_interval=1, ada_kimg=1.0)
    state = tiny_state(config)
    run_phases(state, config, ("dmain",))
    rt = state.ada.last_rt
    step = config.batch / 1000
    assert state.p == pytest.approx(0.5 + (step if rt > 0.6 else -step))


def _train(tmp_path, monkeypatch, name, config, **kw):
    monkeypatch.setattr(gan, "load_training_data", lambda cfg: TinyImages())
    return gan.train_gan(config, tmp_path / name, **kw)


def test_resume_repeats_an_uninterrupted_run(tmp_path, monkeypatch):
    config = tiny_config()                            # 4 steps of 4 images, snapshots every 2 steps
    full = _train(tmp_path, monkeypatch, "full", config)
    assert _train(tmp_path, monkeypatch, "split", config, stop_at_kimg=0.008) == {"stopped_at_kimg": 0.008}
    assert not (tmp_path / "split" / "G.pt").exists()
    split = _train(tmp_path, monkeypatch, "split", config)
    assert full["kimg"] == split["kimg"] == 0.016
    a = torch.load(tmp_path / "full" / "checkpoint.pt", weights_only=True)
    b = torch.load(tmp_path / "split" / "checkpoint.pt", weights_only=True)
    for net in ("G", "D", "G_ema"):
        assert not changed(a[net], b[net]), net
    assert a["ada"] == b["ada"] and torch.equal(a["pl_mean"], b["pl_mean"])
    strip = lambda rs: [{k: v for k, v in r.items() if k != "seconds"} for r in rs]
    assert strip(read_jsonl(tmp_path / "full" / "log.jsonl")) == strip(read_jsonl(tmp_path / "split" / "log.jsonl"))
    G = stylegan2.load_generator(tmp_path / "full" / "G.pt")
    assert not changed(a["G_ema"], params_of(G))
    assert (tmp_path / "full" / gan.grid_name(0.016)).exists() and (tmp_path / "full" / "reals.png").exists()


def test_a_finished_run_extended_to_more_kimg_equals_the_longer_run(tmp_path, monkeypatch):
    """kimg 0.008 -> 0.016 on a finished run goes on from its last snapshot: the same G, D and G_ema
    as 0.016 from the start, and the shorter run's G.pt and metrics.json are replaced. Shrinking, or
    changing anything else, is refused."""
    longer = _train(tmp_path, monkeypatch, "whole", tiny_config())
    short = _train(tmp_path, monkeypatch, "extended", tiny_config(kimg=0.008))
    assert short["kimg"] == 0.008
    extended = _train(tmp_path, monkeypatch, "extended", tiny_config())
    assert extended["kimg"] == longer["kimg"] == 0.016 and extended["steps"] == longer["steps"]
    a, b = (torch.load(tmp_path / d / "checkpoint.pt", weights_only=True) for d in ("whole", "extended"))
    for net in ("G", "D", "G_ema"):
        assert not changed(a[net], b[net]), net
    G = stylegan2.load_generator(tmp_path / "extended" / "G.pt")
    assert not changed(a["G_ema"], params_of(G))          # G.pt is the longer run's, not the shorter's
    with pytest.raises(ConfigError, match=r"only \['kimg'\] may change, and only grow"):
        _train(tmp_path, monkeypatch, "extended", tiny_config(kimg=0.008))
    with pytest.raises(ConfigError, match=r"changed: \['g_lr', 'kimg'\]"):
        _train(tmp_path, monkeypatch, "extended", tiny_config(kimg=0.024, g_lr=0.001))


def test_nan_stops_with_last_good_snapshot(tmp_path, monkeypatch):
    calls = {"n": 0}
    real_g_loss = gan.g_loss

    def poisoned(logits):
        calls["n"] += 1
        return real_g_loss(logits) * (float("nan") if calls["n"] == 3 else 1.0)

    monkeypatch.setattr(gan, "g_loss", poisoned)
    with pytest.raises(NonFiniteLoss, match="G/loss.*last good snapshot"):
        _train(tmp_path, monkeypatch, "nan", tiny_config())
    record = torch.load(tmp_path / "nan" / "checkpoint.pt", weights_only=True)
    assert record["step"] == 2                         # the snapshot before the NaN at step 3
    assert all(torch.isfinite(v).all() for v in record["G"].values())
    assert read_jsonl(tmp_path / "nan" / "log.jsonl")[-1]["event"] == "nonfinite"


def test_bad_parameters_are_rejected():
    with pytest.raises(ConfigError, match="kimg"):
        tiny_config(kimg=0)
    with pytest.raises(ConfigError, match="ada_target"):
        tiny_config(ada_target=1.0)
    with pytest.raises(ConfigError, match="fid_classifier"):
        tiny_config(fid_images=100, fid_features="classifier")
    with pytest.raises(ConfigError, match="start"):
        gan.start_networks(tiny_config(start="weights/none/missing.pkl"), RES)


def test_start_network_of_other_resolution_is_rejected(tmp_path):
    G = stylegan2.Generator(**stylegan2.small_generator_kwargs(resolution=32, w_dim=16, channel_base=128, channel_max=16,
                                                               num_layers=1))
    stylegan2.save_generator(G, tmp_path / "G.pt")
    with pytest.raises(ConfigError, match="32 px.*16 px"):
        gan.start_networks(tiny_config(start=str(tmp_path / "G.pt")), RES)
    G16 = stylegan2.Generator(**stylegan2.small_generator_kwargs(resolution=RES, w_dim=16, channel_base=128,
                                                                 channel_max=16, num_layers=1))
    stylegan2.save_generator(G16, tmp_path / "G16.pt")
    G1, D1, E1 = gan.start_networks(tiny_config(start=str(tmp_path / "G16.pt")), RES)
    assert not changed(params_of(G16), params_of(G1)) and D1.img_resolution == RES


class ColourStats(torch.nn.Module):
    """A stand-in feature extractor for FID: per-channel mean and std of each image."""

    def penultimate(self, x):
        return torch.cat([x.mean(dim=(2, 3)), x.std(dim=(2, 3))], dim=1)


class Replay:
    """A 'generator' that hands out the training images in order: a perfect G for FID purposes."""
    z_dim, c_dim = 4, 0

    def __init__(self, images):
        self.images, self.at = images, 0

    def __call__(self, z, c, noise_mode="const"):
        out = self.images[self.at:self.at + len(z)]
        self.at += len(z)
        return out


def test_fid_snapshot_is_zero_for_the_training_images_and_caches_real_features(tmp_path):
    data = TinyImages(n=16)
    config = tiny_config(fid_images=16, fid_classifier="unused")
    cache = tmp_path / "real.pt"
    perfect = gan.fid_snapshot(Replay(data.x), data, config, torch.device("cpu"), ColourStats(), cache)
    assert cache.exists() and perfect["fid"] == pytest.approx(0.0, abs=1e-6)
    assert perfect["fid_features"] == "classifier"
    G = tiny_state(config).G_ema
    untrained = gan.fid_snapshot(G, data, config, torch.device("cpu"), ColourStats(), cache)
    assert untrained["fid"] > 0.1 and untrained["kid"] > 0
