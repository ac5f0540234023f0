"""Each loss term against a value worked out by hand on tiny tensors."""

import math

import pytest
import torch

from viscoin_core import losses
from viscoin_core.eval.metrics import build_lpips


def test_soft_cross_entropy_by_hand():
    # targets softmax([0, 0]) = (1/2, 1/2); log_softmax([0, ln 3]) = (ln 1/4, ln 3/4)
    logits = torch.tensor([[0.0, math.log(3.0)]])
    value = losses.soft_cross_entropy(logits, torch.zeros(1, 2))
    assert value.item() == pytest.approx(-0.5 * math.log(3 / 16), rel=1e-6)
    assert losses.output_fidelity(logits, torch.zeros(1, 2)).item() == pytest.approx(value.item())


def test_soft_cross_entropy_stable_and_target_detached():
    logits = torch.tensor([[1000.0, 0.0]], requires_grad=True)
    target = torch.tensor([[1000.0, 0.0]], requires_grad=True)
    value = losses.soft_cross_entropy(logits, target)
    assert math.isfinite(value.item()) and value.item() == pytest.approx(0.0, abs=1e-6)
    value.backward()
    assert target.grad is None and logits.grad is not None


def test_pixel_terms_by_hand():
    x_rec = torch.tensor([0.5, -1.0, 0.0, 2.0]).view(1, 1, 2, 2)
    x = torch.zeros(1, 1, 2, 2)
    assert losses.reconstruction_l2(x_rec, x).item() == pytest.approx((0.25 + 1 + 0 + 4) / 4)
    assert losses.reconstruction_l1(x_rec, x).item() == pytest.approx((0.5 + 1 + 0 + 2) / 4)


def test_reconstruction_classification_is_soft_ce():
    a, b = torch.randn(3, 5), torch.randn(3, 5)
    expected = -(torch.softmax(b, 1) * torch.log(torch.softmax(a, 1))).sum(1).mean()
    assert losses.reconstruction_classification(a, b).item() == pytest.approx(expected.item(), rel=1e-5)


def test_sparsity_by_hand():
    phi = torch.zeros(1, 2, 3, 3)
    phi[0, 0, 1, 2] = 3.0
    phi[0, 1, 0, 0] = 4.0
    assert losses.sparsity(phi, "paper").item() == pytest.approx(7 / 18)
    # code: pooled (3, 4) -> normalised (0.6, 0.8), mean 0.7; plus mean |Phi| = 7/18
    assert losses.sparsity(phi, "code").item() == pytest.approx(0.7 + 7 / 18)
    with pytest.raises(ValueError, match="paper"):
        losses.sparsity(phi, "l2")


def test_orthogonality_zero_for_orthonormal_kernels():
    q, _ = torch.linalg.qr(torch.randn(12, 12))
    kernels = q[:5].reshape(5, 12, 1, 1)       # like Psi's 1x1 conv weight (K, C, 1, 1)
    assert losses.orthogonality(kernels, "gram").item() == pytest.approx(0.0, abs=1e-6)
    # scale does not matter: kernels are normalised first
    assert losses.orthogonality(3 * kernels, "gram").item() == pytest.approx(0.0, abs=1e-6)


def test_orthogonality_by_hand():
    hadamard = torch.tensor([[1.0, 1.0], [1.0, -1.0]])
    assert losses.orthogonality(hadamard, "gram").item() == pytest.approx(0.0, abs=1e-7)
    # code's variant takes |w| first: |w_k| = (1, 1)/sqrt 2, so every Gram entry is 1 -> (4 - 2) / 4
    assert losses.orthogonality(hadamard, "code").item() == pytest.approx(0.5)
    skewed = torch.tensor([[1.0, 0.0], [1.0, 1.0]])  # cosine 1/sqrt 2 between the two
    assert losses.orthogonality(skewed, "gram").item() == pytest.approx(2 * 0.5 / 4)
    assert losses.orthogonality(torch.eye(3), "code").item() == pytest.approx(0.0, abs=1e-7)


def test_omega_regularisation_by_hand():
    ws = torch.tensor([[[1.0, 2.0], [3.0, 4.0]]])
    assert losses.omega_regularisation(ws, torch.ones(2)).item() == pytest.approx((0 + 1 + 4 + 9) / 4)


class HalfAbsLpips(torch.nn.Module):
    """A stand-in perceptual distance with a known value: mean |a - b| / 2 per image, shape (B, 1, 1, 1)."""

    def forward(self, a, b):
        return ((a - b).abs().mean(dim=(1, 2, 3)) / 2).view(-1, 1, 1, 1)


def test_total_is_weighted_sum_of_terms():
    torch.manual_seed(3)
    args = dict(g_logits=torch.randn(2, 3), f_logits=torch.randn(2, 3), x_rec=torch.rand(2, 3, 4, 4),
                x=torch.rand(2, 3, 4, 4), f_rec_logits=torch.randn(2, 3), phi=torch.rand(2, 4, 3, 3),
                psi_kernels=torch.randn(4, 6, 1, 1), ws=torch.randn(2, 5, 7), w_bar=torch.randn(7),
                lpips_net=HalfAbsLpips())
    w = dict(alpha=0.5, beta=3.0, gamma=0.1, delta=0.2, orthogonality_weight=2.0, omega_weight=0.3)
    total, terms = losses.viscoin_loss(**args, **w)
    a = args
    expected = {
        "output_fidelity": 0.5 * losses.soft_cross_entropy(a["g_logits"], a["f_logits"]),
        "rec_l2": (a["x_rec"] - a["x"]).square().mean(),
        "rec_l1": (a["x_rec"] - a["x"]).abs().mean(),
        "rec_lpips": 3.0 * (a["x_rec"] - a["x"]).abs().mean() / 2,
        "rec_classification": 0.1 * losses.soft_cross_entropy(a["f_rec_logits"], a["f_logits"]),
        "sparsity": 0.2 * a["phi"].abs().mean(),
        "orthogonality": 2.0 * losses.orthogonality(a["psi_kernels"]),
        "omega_reg": 0.3 * (a["ws"] - a["w_bar"]).square().mean(),
    }
    assert set(terms) == set(expected)
    for name, value in expected.items():
        assert terms[name].item() == pytest.approx(value.item(), rel=1e-5), name
    assert total.item() == pytest.approx(sum(v.item() for v in expected.values()), rel=1e-5)


def test_lpips_random_backbone_offline_and_repeatable():
    a = torch.rand(2, 3, 32, 32) * 2 - 1
    b = torch.rand(2, 3, 32, 32) * 2 - 1
    net1, net2 = build_lpips("random"), build_lpips("random")
    assert all(not p.requires_grad for p in net1.parameters()) and not net1.training
    assert losses.perceptual(a, a, net1).item() == pytest.approx(0.0, abs=1e-7)
    d = losses.perceptual(a, b, net1)
    assert d.item() > 0 and d.item() == losses.perceptual(a, b, net2).item()


def test_f_temperature_is_the_paper_at_one_and_a_rescaling_otherwise():
    # Dividing f's logits by T inside the loss must equal feeding it logits already divided by T:
    # the terms of f_temperature=T on (f, f_rec) are those of T=1 on (f / T, f_rec / T); at T=1 the
    # terms are exactly the paper's; g's logits and every other term never change.
    torch.manual_seed(4)
    args = dict(g_logits=torch.randn(3, 5) * 4, x_rec=torch.rand(3, 3, 4, 4), x=torch.rand(3, 3, 4, 4),
                phi=torch.rand(3, 4, 3, 3), psi_kernels=torch.randn(4, 6, 1, 1), ws=torch.randn(3, 5, 7),
                w_bar=torch.randn(7), lpips_net=HalfAbsLpips(), alpha=0.5, beta=3.0, gamma=0.1, delta=0.2)
    f, f_rec = torch.randn(3, 5) * 30, torch.randn(3, 5) * 30     # an over-confident f
    _, paper = losses.viscoin_loss(**args, f_logits=f, f_rec_logits=f_rec)
    _, one = losses.viscoin_loss(**args, f_logits=f, f_rec_logits=f_rec, f_temperature=1.0)
    assert all(torch.equal(paper[k], one[k]) for k in paper)
    _, tempered = losses.viscoin_loss(**args, f_logits=f, f_rec_logits=f_rec, f_temperature=10.0)
    _, scaled = losses.viscoin_loss(**args, f_logits=f / 10, f_rec_logits=f_rec / 10)
    for name in paper:
        assert tempered[name].item() == pytest.approx(scaled[name].item(), rel=1e-6), name
    # closed form of the two changed terms: CE against softmax(f / T), and f(x~) / T against it
    assert tempered["output_fidelity"].item() == pytest.approx(
        0.5 * losses.soft_cross_entropy(args["g_logits"], f / 10).item(), rel=1e-6)
    assert tempered["rec_classification"].item() == pytest.approx(
        0.1 * losses.soft_cross_entropy(f_rec / 10, f / 10).item(), rel=1e-6)
    assert tempered["output_fidelity"].item() != pytest.approx(paper["output_fidelity"].item(), rel=1e-3)
    # the reconstruction term's gradient through f shrinks: T tempers the over-confident logits
    f_rec.requires_grad_(True)
    grad = {t: torch.autograd.grad(losses.viscoin_loss(**args, f_logits=f, f_rec_logits=f_rec,
                                                       f_temperature=t)[1]["rec_classification"], f_rec)[0].norm()
            for t in (1.0, 10.0)}
    assert grad[10.0] < grad[1.0] / 5
