"""Latent regression on the synthetic half, Omega's lr multiplier and f's temperature (options, off in the paper profile)."""

import pytest
import torch

from viscoin_core import losses, model
from viscoin_core.config import ConfigError, load_config
from viscoin_core.nets.viscoin import ConceptTranslator
from viscoin_core.train import viscoin as V
from test_viscoin_train import make_trainer   # a Trainer on random f and G, no data


def tiny(**kw):
    """32 px, random resnet18 f and small G (num_ws = 8), K = 4, B = 2 + 2; no data needed for a step."""
    params = dict(f="random", G="random", cache_dir="unused", n_concepts=4, latent_channels=8, coarse_layer=2,
                  mid_layer=5, batch_real=2, batch_fake=2, iterations=10, lpips_backbone="random",
                  fid_features="classifier", lr=1e-3, device="cpu")
    params.update(kw)
    return model.as_config(params)


def x_real(cfg):
    return torch.rand(cfg.batch_real, 3, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1


# ---------------------------------------------------------------------------------------------
# The loss in closed form

def test_latent_regression_is_zero_at_the_target_and_the_square_of_an_offset():
    target = torch.randn(3, 8, 5)
    assert losses.latent_regression(target.clone(), target).item() == 0.0
    assert losses.latent_regression(target + 0.5, target).item() == pytest.approx(0.25)
    # one vector of one sample off by 2 in every channel: 4 / (3 * 8) averaged over the rest
    pred = target.clone()
    pred[1, 3] += 2.0
    assert losses.latent_regression(pred, target).item() == pytest.approx(4.0 / 24)
    with pytest.raises(ValueError, match="shape"):
        losses.latent_regression(target[:, :4], target)


def test_the_term_exists_only_with_a_positive_weight_and_a_target():
    cfg = tiny()
    tr = make_trainer(cfg)
    x = torch.cat([x_real(cfg), tr.sample_fake(V.synthetic_z(cfg, 0, tr.G.z_dim))])
    _, terms, _ = tr.loss(x, 0)
    assert "latent_regression" not in terms
    on = make_trainer(tiny(latent_regression_weight=2.0))
    ws = on.synthetic_ws(V.synthetic_z(cfg, 0, on.G.z_dim))
    total, terms, _ = on.loss(x, 0, ws)
    assert "latent_regression" in terms
    assert total.item() == pytest.approx(sum(v.item() for v in terms.values()), rel=1e-6)


# ---------------------------------------------------------------------------------------------
# Off (weight 0): the step is the one before the option existed

def old_step(tr, x, z, iteration):
    """The training step as it was before latent regression (commit 1c3df28), written out."""
    for group in tr.optimizer.param_groups:
        group["lr"] = V.learning_rate(tr.cfg, iteration)
    with torch.no_grad():
        ws = tr.G.mapping(z, None, truncation_psi=tr.cfg.truncation_psi)
        fake = tr.G.synthesis(ws, noise_mode="random").float()
    total, terms, _ = tr.loss(torch.cat([x, fake]), iteration)
    tr.optimizer.zero_grad(set_to_none=True)
    total.backward()
    tr.optimizer.step()
    return {**{k: v.item() for k, v in terms.items()}, "total": total.item()}, fake


@pytest.mark.parametrize("space", ["w", "w+"])
def test_weight_zero_changes_no_draw_no_term_and_no_number(space):
    cfg = tiny(latent_regression_weight=0.0, latent_regression_space=space)
    new, old = make_trainer(cfg), make_trainer(cfg)
    x = x_real(cfg)
    for i in range(3):
        z = V.synthetic_z(cfg, i, new.G.z_dim)
        mix = V.synthetic_mix(cfg, i, new.G.z_dim, new.G.num_ws)
        assert mix is None                      # nothing drawn from the mixing stream
        torch.manual_seed(100 + i)
        images = new.sample_fake(z, mix)
        torch.manual_seed(100 + i)
        terms_new = new.step(x, z, i, mix)
        rng_new = torch.get_rng_state()
        torch.manual_seed(100 + i)
        terms_old, images_old = old_step(old, x, z, i)
        assert torch.equal(torch.get_rng_state(), rng_new)   # the same global draws
        assert torch.equal(images, images_old)
        assert terms_new == terms_old                        # same keys (no latent term), same values
    for name in ("psi", "theta", "omega"):
        a, b = new.parts[name].state_dict(), old.parts[name].state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a), name


# ---------------------------------------------------------------------------------------------
# On

def test_w_plus_targets_are_style_mixed_and_w_targets_are_one_vector():
    cfg = tiny(latent_regression_weight=1.0, latent_regression_space="w+", batch_fake=6)
    tr = make_trainer(cfg)
    z = V.synthetic_z(cfg, 0, tr.G.z_dim)
    mix_z, crossover = V.synthetic_mix(cfg, 0, tr.G.z_dim, tr.G.num_ws)
    assert not torch.equal(mix_z, z)             # its own stream, also at seed 0
    assert ((crossover >= 1) & (crossover <= tr.G.num_ws - 1)).all()
    ws = tr.synthetic_ws(z, (mix_z, crossover))
    first, second = tr.synthetic_ws(z), tr.synthetic_ws(mix_z)
    for b, c in enumerate(crossover.tolist()):
        assert torch.equal(ws[b, :c], first[b, :c]) and torch.equal(ws[b, c:], second[b, c:])
        assert not torch.allclose(ws[b, 0], ws[b, -1])   # targets differ across style vectors
    assert V.synthetic_mix(tiny(latent_regression_weight=1.0, latent_regression_space="w"), 0,
                           tr.G.z_dim, tr.G.num_ws) is None
    assert torch.equal(first, first[:, :1].expand_as(first))   # 'w': every vector's target is the sample's w
    with pytest.raises(ValueError, match="style mixing"):       # w+ without its mixing would silently be w
        tr.step(x_real(cfg), z, 0)


@pytest.mark.parametrize("space", ["w", "w+"])
def test_a_few_steps_reduce_the_regression_loss(space):
    # Adam moves each parameter by about lr per step whatever the weight: a weight that dominates the
    # other terms, lr 1e-2 and Omega's multiplier 1 make a few steps enough to show the term acting
    cfg = tiny(latent_regression_weight=100.0, latent_regression_space=space, omega_lr_multiplier=1.0, lr=1e-2)
    tr = make_trainer(cfg)
    x = x_real(cfg)
    z = V.synthetic_z(cfg, 0, tr.G.z_dim)
    mix = V.synthetic_mix(cfg, 0, tr.G.z_dim, tr.G.num_ws)
    torch.manual_seed(0)
    values = [tr.step(x, z, i, mix)["latent_regression"] for i in range(8)]
    assert values[-1] < 0.9 * values[0], values


# ---------------------------------------------------------------------------------------------
# Bad values fail at config time, naming the key and the file

@pytest.mark.parametrize("key, value", [("latent_regression_weight", -0.5), ("latent_regression_space", "z"),
                                        ("omega_lr_multiplier", 0.0), ("omega_lr_multiplier", -0.01),
                                        ("f_temperature", 0.0), ("f_temperature", -30.0)])
def test_bad_values_fail_at_config_time_naming_key_and_file(tmp_path, key, value):
    path = tmp_path / "viscoin_bad.yaml"
    path.write_text(f"f: random\nG: random\ncache_dir: unused\n{key}: {value}\n")
    with pytest.raises(ConfigError) as err:
        load_config(model.ViscoinConfig, path)
    assert key in str(err.value) and str(path) in str(err.value)


def test_defaults_are_the_paper_off():
    cfg = tiny()
    assert cfg.latent_regression_weight == 0.0 and not V.mixes_styles(cfg)
    assert cfg.omega_lr_multiplier == 0.01
    assert cfg.f_temperature == 1.0


# ---------------------------------------------------------------------------------------------
# Omega's equalised learning rate

def one_adam_step(multiplier, lr=1e-4):
    """Relative change ||dW|| / ||W|| of Omega's effective weights after one Adam step, and W before."""
    torch.manual_seed(0)
    omega = ConceptTranslator(4, num_ws=3, w_dim=5, coarse_layer=1, mid_layer=1, w_avg=torch.zeros(5),
                              lr_multiplier=multiplier)
    effective = lambda: (omega.weight * omega.weight_gain).detach().clone()
    before = effective()
    phi, phi_prime = torch.rand(2, 4, 3, 3), torch.rand(2, 36)
    opt = torch.optim.Adam(omega.parameters(), lr=lr)
    omega(phi, phi_prime).square().mean().backward()
    opt.step()
    return ((effective() - before).norm() / before.norm()).item(), before


def test_omega_multiplier_scales_the_per_step_relative_change_of_effective_weights():
    lr = 1e-4
    slow, w_slow = one_adam_step(0.01, lr)
    fast, w_fast = one_adam_step(1.0, lr)
    assert torch.allclose(w_slow, w_fast)   # the same effective weights at initialisation: only speed differs
    # Adam's first step moves every stored entry by lr, i.e. an effective entry by lr * gain, while the
    # effective entries are ~ N(0, 1) * gain / multiplier: relative change ~ lr * multiplier
    assert slow == pytest.approx(0.01 * lr, rel=0.1)
    assert fast == pytest.approx(lr, rel=0.1)
    assert fast / slow == pytest.approx(100, rel=0.01)
