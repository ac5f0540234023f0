"""Psi, Theta, Omega: shapes at every resolution/width, the coarse/mid routing of Omega, w-bar handling."""

import pytest
import torch
import torch.nn as nn

from viscoin_core.nets.classifier import build_classifier
from viscoin_core.nets.viscoin import ConceptExtractor, ConceptTranslator, Explainer, concepts, reconstruct


def fake_taps(width: int, size: int, batch: int = 2) -> dict:
    return {"layer2": torch.rand(batch, width // 4, size // 8, size // 8),
            "layer3": torch.rand(batch, width // 2, size // 16, size // 16),
            "layer4": torch.rand(batch, width, size // 32, size // 32)}


@pytest.mark.parametrize("width", [512, 2048])      # resnet18 / resnet50
@pytest.mark.parametrize("size", [32, 64, 256])
def test_psi_shapes(width, size):
    psi = ConceptExtractor(n_concepts=5, tap_channels=(width // 4, width // 2, width), latent_channels=8)
    with torch.no_grad():
        phi, phi_prime = psi(fake_taps(width, size))
    assert phi.shape == (2, 5, 3, 3) and phi_prime.shape == (2, 45)
    assert (phi >= 0).all() and (phi_prime >= 0).all()


@pytest.mark.parametrize("fuse_at", ["layer4", "layer3", "layer2"])
@pytest.mark.parametrize("size", [32, 96, 256])
def test_psi_fuses_at_any_tap_grid(fuse_at, size):
    psi = ConceptExtractor(n_concepts=5, tap_channels=(16, 32, 64), latent_channels=8, fuse_at=fuse_at)
    taps = fake_taps(64, size)
    grid = taps[fuse_at].shape[-1]
    h = torch.cat([getattr(psi, f"from_{t}")(psi._upsampled(t, taps[t])) for t in ("layer2", "layer3", "layer4")], 1)
    assert h.shape[-2:] == (grid, grid)
    with torch.no_grad():
        phi, phi_prime = psi(taps)
    assert phi.shape == (2, 5, 3, 3) and phi_prime.shape == (2, 45)


def test_fusing_at_layer4_of_a_32px_image_leaves_no_layout_and_layer2_keeps_one():
    # layer4 of a 32 px image is 1x1: the 3x3 pooling copies one value into every cell
    taps = fake_taps(64, 32)
    flat = ConceptExtractor(5, (16, 32, 64), latent_channels=8)(taps)[0]
    assert torch.equal(flat, flat[..., :1, :1].expand_as(flat))
    torch.manual_seed(0)
    laid_out = ConceptExtractor(5, (16, 32, 64), latent_channels=8, fuse_at="layer2")(taps)[0]
    assert (laid_out.flatten(2).std(dim=2) > 0).any()
    # the paper's layout (fuse_at layer4) keeps the authors' kernels: 5/4, 3/2, 3/1
    paper = ConceptExtractor(5, (16, 32, 64), latent_channels=8)
    assert [(c.kernel_size[0], c.stride[0]) for c in (paper.from_layer2, paper.from_layer3, paper.from_layer4)] == \
        [(5, 4), (3, 2), (3, 1)]
    with pytest.raises(ValueError, match="fuse_at"):
        ConceptExtractor(5, (16, 32, 64), fuse_at="layer1")


def test_chain_from_a_real_classifier():
    f = build_classifier("resnet18", n_classes=4).eval().requires_grad_(False)
    psi = ConceptExtractor(6, f.tap_channels, latent_channels=16)
    theta = Explainer(6, 4)
    x = torch.rand(3, 3, 64, 64) * 2 - 1
    phi, phi_prime = concepts(f, psi, x)
    logits = theta(phi)
    assert logits.shape == (3, 4) and phi_prime.shape == (3, 54)
    logits.sum().backward()
    assert psi.to_concepts.weight.grad is not None
    assert all(p.grad is None for p in f.parameters())


def test_theta_is_linear_on_spatial_max():
    theta = Explainer(n_concepts=3, n_classes=2)
    phi = torch.rand(4, 3, 3, 3)
    expected = phi.flatten(2).max(dim=2).values @ theta.linear.weight.T + theta.linear.bias
    assert torch.allclose(theta(phi), expected)
    assert theta.pool(phi).shape == (4, 3) and theta.linear.weight.shape == (2, 3)


def make_omega(**kw):
    args = dict(n_concepts=4, num_ws=8, w_dim=16, coarse_layer=2, mid_layer=5, w_avg=torch.randn(16))
    args.update(kw)
    return ConceptTranslator(**args)


@pytest.mark.parametrize("activation", ["lrelu", "linear"])
def test_omega_routing(activation):
    """Perturbing Phi' moves exactly the vectors outside [coarse, mid]; perturbing Phi exactly the others."""
    omega = make_omega(activation=activation)
    with torch.no_grad():
        omega.bias.normal_()  # so that no vector sits exactly at zero where leaky ReLU could hide a change
    phi, phi_prime = torch.rand(3, 4, 3, 3), torch.rand(3, 36)
    base = omega(phi, phi_prime)
    assert base.shape == (3, 8, 16)
    inside = torch.zeros(8, dtype=torch.bool)
    inside[2:6] = True
    moved_by_prime = (omega(phi, phi_prime + torch.rand(3, 36)) != base).any(dim=(0, 2))
    moved_by_phi = (omega(phi + torch.rand(3, 4, 3, 3), phi_prime) != base).any(dim=(0, 2))
    assert torch.equal(moved_by_prime, ~inside)
    assert torch.equal(moved_by_phi, inside)


def test_omega_w_bar_modes():
    w_avg = torch.randn(16)
    frozen = make_omega(w_avg=w_avg)
    assert torch.equal(frozen.w_bar, w_avg)
    assert all(p is not frozen.w_bar for p in frozen.parameters())
    assert "w_bar" in frozen.state_dict()
    # with zero weights and bias, Omega outputs exactly w-bar
    with torch.no_grad():
        frozen.weight.zero_()
    ws = frozen(torch.rand(2, 4, 3, 3), torch.rand(2, 36))
    assert torch.equal(ws, w_avg.expand(2, 8, 16))

    trainable = make_omega(w_bar="zeros_trainable", w_avg=None)
    assert isinstance(trainable.w_bar, nn.Parameter) and not trainable.w_bar.any()
    trainable(torch.rand(2, 4, 3, 3), torch.rand(2, 36)).sum().backward()
    assert trainable.w_bar.grad is not None


@pytest.mark.parametrize("kw, match", [
    (dict(coarse_layer=6, mid_layer=5), "coarse_layer"),
    (dict(mid_layer=8), "mid_layer=8 must be < num_ws=8"),
    (dict(n_concepts=0), "K"),
    (dict(w_bar="ones"), "zeros_trainable"),
    (dict(w_avg=None), "w_avg"),
])
def test_omega_bad_arguments(kw, match):
    with pytest.raises(ValueError, match=match):
        make_omega(**kw)


def test_psi_rejects_no_concepts():
    with pytest.raises(ValueError, match="K"):
        ConceptExtractor(0, (8, 16, 32))


class StandInSynthesis(nn.Module):
    """Minimal G.synthesis: a fixed linear map ws -> 3x8x8 image with tanh, gradient flows to ws."""

    def __init__(self, num_ws, w_dim):
        super().__init__()
        self.proj = nn.Linear(num_ws * w_dim, 3 * 8 * 8)

    def forward(self, ws, noise_mode="const"):
        return torch.tanh(self.proj(ws.flatten(1))).view(-1, 3, 8, 8)


def test_reconstruct_backpropagates_to_omega_only():
    G = nn.Module()
    G.synthesis = StandInSynthesis(8, 16).requires_grad_(False)
    omega = make_omega()
    x_rec = reconstruct(G, omega, torch.rand(2, 4, 3, 3), torch.rand(2, 36))
    assert x_rec.shape == (2, 3, 8, 8) and x_rec.abs().max() <= 1
    x_rec.square().mean().backward()
    assert omega.weight.grad is not None and G.synthesis.proj.weight.grad is None
