"""Concept metrics on hand-built systems whose answers are known."""

import math

import numpy as np
import pytest
import scipy.stats
import torch
import torch.nn as nn

from viscoin_core.eval import concepts as C


class Theta(nn.Module):
    """A hand-set explainer: spatial max, then a linear layer with the given weight (C, K)."""

    def __init__(self, weight, bias=None):
        super().__init__()
        weight = torch.as_tensor(weight, dtype=torch.float32)
        self.linear = nn.Linear(weight.shape[1], weight.shape[0])
        with torch.no_grad():
            self.linear.weight.copy_(weight)
            self.linear.bias.copy_(torch.zeros(weight.shape[0]) if bias is None else torch.as_tensor(bias))

    @staticmethod
    def pool(phi):
        return phi.amax(dim=(2, 3))

    def forward(self, phi):
        return self.linear(self.pool(phi))


class IdentityF(nn.Module):
    """'Images' are the concept maps themselves (B, K, 3, 3); every tap is the image."""

    def forward_taps(self, x):
        return x.sum(dim=(1, 2, 3))[:, None], {"layer2": x, "layer3": x, "layer4": x}


def identity_system(weight, decode=None):
    """x = Phi exactly: Psi reads layer4, G o Omega writes Phi back (Phi' is empty)."""
    return C.System(f=IdentityF(), psi=lambda taps: (taps["layer4"], taps["layer4"].new_zeros(len(taps["layer4"]), 0)),
                    theta=Theta(weight), decode=decode or (lambda phi, phi_prime: phi))


def maps(pooled, fill=0.1):
    """(B, K, 3, 3) maps with the given spatial maxima (centre pixel) over a low background."""
    pooled = torch.as_tensor(pooled, dtype=torch.float32)
    phi = torch.full((*pooled.shape, 3, 3), fill).minimum(pooled[..., None, None])
    phi[..., 1, 1] = pooled
    return phi


def test_relevance_matches_hand_computation():
    theta = Theta([[1.0, -2.0, 0.5], [0.0, 1.0, 1.0]])
    phi = maps([[2.0, 1.0, 4.0], [0.5, 3.0, 1.0]])
    predicted = torch.tensor([0, 1])
    # image 0, class 0: alpha = (2*1, 1*-2, 4*0.5) = (2, -2, 2), max |alpha| = 2 -> r = (1, -1, 1)
    # image 1, class 1: alpha = (0, 3, 1) -> r = (0, 1, 1/3)
    r = C.concept_relevance(phi, theta, predicted)
    assert torch.allclose(r, torch.tensor([[1.0, -1.0, 1.0], [0.0, 1.0, 1 / 3]]))
    assert torch.allclose(C.concept_contributions(phi, theta, predicted),
                          torch.tensor([[2.0, -2.0, 2.0], [0.0, 3.0, 1.0]]))
    # All-zero maps give r = 0, not NaN.
    assert torch.equal(C.concept_relevance(torch.zeros(1, 3, 3, 3), theta, torch.tensor([0])), torch.zeros(1, 3))


def test_class_relevance_and_sparsity():
    r = torch.tensor([[1.0, 0.6, 0.1], [0.8, 0.2, 0.3], [0.0, 1.0, 0.75]])
    predicted = torch.tensor([0, 0, 2])
    r_kc = C.class_relevance(r, predicted, n_classes=3)
    assert torch.allclose(r_kc[0], torch.tensor([0.9, 0.4, 0.2]))
    assert torch.isnan(r_kc[1]).all()              # class 1 is never predicted
    assert torch.allclose(r_kc[2], torch.tensor([0.0, 1.0, 0.75]))
    # class 0: (0.9, 0.4, 0.2); class 2: (0, 1, 0.75); class 1 left out.
    assert C.sparsity(r_kc) == {0.2: pytest.approx(2.0), 0.5: pytest.approx(1.5), 0.7: pytest.approx(1.5)}


def test_top_n_accuracy_hand_case_and_full_equals_g():
    theta = Theta([[1.0, 1.0, 0.0], [0.0, 0.0, 1.5]])
    # Image 0: logits (3, 2.7) -> c^ = 0, alpha = (2, 1, 0). Image 1: logits (0.7, 3) -> c^ = 1,
    # alpha = (0, 0, 3).
    phi = maps([[2.0, 1.0, 1.8], [0.5, 0.2, 2.0]])
    labels = torch.tensor([0, 1])
    assert theta(phi).argmax(1).tolist() == [0, 1]
    out = C.top_n_accuracy(phi, theta, labels, sizes=[1, 3])
    # Image 0 with one concept: (2, 0) -> 0, correct; image 1: alpha = (0, 0, 3) -> keeps concept 2 -> 1.
    assert out == {1: 100.0, 3: 100.0}
    torch.manual_seed(0)
    K = 12
    theta = Theta(torch.randn(5, K))
    phi = torch.rand(40, K, 3, 3)
    labels = torch.randint(0, 5, (40,))
    out = C.top_n_accuracy(phi, theta, labels)
    assert list(out) == [2, 4, 8, 12]
    from viscoin_core.eval.metrics import accuracy
    assert out[12] == pytest.approx(accuracy(theta(phi), labels))


def test_faithfulness_drop_is_known_when_removing_one_concept_flips_the_class():
    # K = 2, C = 2, W = I. Maxima (2, 1): c^ = 0, alpha = (2, 0), r = (1, 0); any tau < 1 removes
    # concept 0 only, logits go from (2, 1) to (0, 1).
    system = identity_system(torch.eye(2))
    phi = maps([[2.0, 1.0]])
    out = C.faithfulness_batch(system, phi, phi.new_zeros(1, 0), taus=(0.1, 0.4))
    p_before = 1 / (1 + math.exp(-1))           # softmax((2, 1))[0]
    p_after = 1 / (1 + math.exp(1))             # softmax((0, 1))[0]
    for tau in (0.1, 0.4):
        assert out[tau]["n_removed"].tolist() == [1]
        assert out[tau]["ff"].item() == pytest.approx(p_before - p_after, abs=1e-6)
    # The random baseline removes one concept too: concept 0 (same drop) or concept 1 (logits (2, 0)).
    p_keep = 1 / (1 + math.exp(-2))
    seen = set()
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        ff = C.faithfulness_batch(system, phi, phi.new_zeros(1, 0), taus=(0.1,), generator=g)[0.1]["ff_random"].item()
        assert min(abs(ff - (p_before - p_after)), abs(ff - (p_before - p_keep))) < 1e-6
        seen.add(round(ff, 4))
    assert len(seen) == 2


def test_faithfulness_random_baseline_switches_off_as_many_concepts():
    K = 10
    weight = torch.zeros(2, K)
    weight[0, :3] = 1.0                           # class 0 rests on concepts 0-2
    weight[1, 3:] = 0.1
    removed_counts = []

    def decode(phi, phi_prime):
        removed_counts.append((phi.amax(dim=(2, 3)) == 0).sum(dim=1))
        return phi
    system = identity_system(weight, decode)
    pooled = torch.tensor([[1.0, 0.9, 0.8] + [0.5] * 7] * 4)
    out = C.faithfulness_batch(system, maps(pooled), pooled.new_zeros(4, 0), taus=(0.2,))
    # Calls: reconstruction, removal, random baseline.
    assert removed_counts[0].tolist() == [0] * 4
    assert removed_counts[1].tolist() == [3] * 4
    assert removed_counts[2].tolist() == [3] * 4
    assert out[0.2]["n_removed"].tolist() == [3] * 4


def test_faithfulness_median_over_a_dataset():
    system = identity_system(torch.eye(2))
    images = maps([[2.0, 1.0]] * 5 + [[1.0, 3.0]] * 2)
    out = C.faithfulness(system, images, taus=(0.1, 0.2, 0.4), batch_size=3)
    assert out["n_images"] == 7
    p = 1 / (1 + math.exp(-1)) - 1 / (1 + math.exp(1))      # first kind of image (the majority)
    assert out["faithfulness"][0.2] == pytest.approx(p, abs=1e-6)
    assert set(out["faithfulness_random"]) == {0.1, 0.2, 0.4}
    assert C.faithfulness(system, images, n_images=4)["n_images"] == 4


def test_faithfulness_of_a_concept_pool_equals_that_of_its_images():
    system = identity_system(torch.eye(2))
    images = maps([[2.0, 1.0]] * 5 + [[1.0, 3.0]] * 2)
    pool = C.concept_pool(system, images, batch_size=3)
    from_images = C.faithfulness(system, images, n_images=5, batch_size=3, seed=4)
    from_pool = C.faithfulness(system, pool, n_images=5, batch_size=3, seed=4)
    assert torch.equal(from_images.pop("p_rec"), from_pool.pop("p_rec"))
    assert from_images == from_pool


def _pools(system, n, K, seed):
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(n, K, 3, 3, generator=g)
    return C.concept_pool(system, images, batch_size=16)


def test_consistency_is_perfect_when_concepts_show_and_chance_on_noise():
    K = 4
    system = identity_system(torch.eye(K))
    train, test = _pools(system, 120, K, 0), _pools(system, 120, K, 1)
    r_kc = C.class_relevance(C.concept_relevance(test.phi, system.theta, test.predicted), test.predicted, K)
    assert (torch.diagonal(r_kc) > 0.5).all()
    out = C.consistency(system, train, test, r_kc, n_samples=25)
    assert out["n_concepts"] == K
    assert out["mean"] == 100.0 and out["std"] == 0.0

    torch.manual_seed(0)
    noisy = identity_system(torch.eye(K), decode=lambda phi, phi_prime: torch.randn_like(phi))
    out = C.consistency(noisy, train, test, r_kc, n_samples=25)
    assert 35.0 < out["mean"] < 65.0


def test_consistency_score_picks_c_by_cross_validation():
    g = torch.Generator().manual_seed(0)
    pos, neg = torch.randn(30, 3, generator=g) + 3, torch.randn(30, 3, generator=g) - 3
    acc, c = C.consistency_score(pos[:20], neg[:20], pos[20:], neg[20:])
    assert acc == 100.0 and c in C.SVM_CS
    with pytest.raises(ValueError, match="at least 2"):
        C.consistency_score(pos[:1], neg[:1], pos, neg)


def test_spearman_matches_scipy_and_alignment_finds_the_matching_concept():
    rng = np.random.default_rng(0)
    factor = rng.normal(size=(200, 2))
    acts = np.c_[rng.normal(size=200), np.exp(factor[:, 1]), rng.normal(size=200)]
    rho = C.spearman_matrix(acts, factor)
    for k in range(3):
        for j in range(2):
            assert rho[k, j] == pytest.approx(scipy.stats.spearmanr(acts[:, k], factor[:, j])[0], abs=1e-12)
    out = C.factor_alignment(torch.tensor(acts), torch.tensor(rng.normal(size=(200, 3))), torch.tensor(factor),
                             names=["size", "hue"])
    assert out["per_factor"]["hue"] == pytest.approx(1.0)
    assert out["best_concept"]["hue"] == 1
    assert out["per_factor"]["size"] < 0.3 and out["untrained"]["mean"] < 0.3
    assert "class_mean" not in out
    out = C.factor_alignment(torch.tensor(acts), torch.tensor(acts[:, ::-1].copy()), torch.tensor(factor),
                             names=["size", "hue"], class_factors=["hue"])
    assert out["class_mean"] == pytest.approx(out["per_factor"]["hue"]) == pytest.approx(1.0)
    assert out["untrained"]["class_mean"] == pytest.approx(out["untrained"]["per_factor"]["hue"])
    with pytest.raises(ValueError, match="wing"):
        C.factor_alignment(torch.tensor(acts), torch.tensor(acts), torch.tensor(factor), names=["size", "hue"],
                           class_factors=["wing"])
    # A constant target correlates with nothing.
    assert C.alignment(torch.tensor(acts), torch.ones(200, 1))["mean"] == 0.0


def test_attribute_alignment_on_binary_attributes():
    g = torch.Generator().manual_seed(0)
    attrs = torch.rand(100, 2, generator=g) > 0.5
    acts = torch.stack([attrs[:, 0].float() * 2 + 0.01 * torch.rand(100, generator=g), torch.rand(100, generator=g)], 1)
    out = C.attribute_alignment(acts, torch.rand(100, 2, generator=g), attrs, names=["crest", "stripes"])
    # Concept 0 is the attribute up to noise within a group: rho = corr of ranks = point-biserial of ranks.
    assert out["per_attribute"]["crest"] > 0.85
    assert out["mean"] > out["untrained_mean"]


def test_reinitialised_draws_fresh_reproducible_weights():
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Linear(4, 2))
    a, b = C.reinitialised(net, seed=1), C.reinitialised(net, seed=1)
    assert not torch.equal(a[0].weight, net[0].weight)
    assert torch.equal(a[0].weight, b[0].weight) and torch.equal(a[2].bias, b[2].bias)


def test_consistency_without_relevant_concepts_reports_none():
    K = 3
    system = identity_system(torch.eye(K))
    pool = _pools(system, 20, K, 0)
    r_kc = torch.full((K, K), 0.2)                  # no concept passes 0.5 for any class
    out = C.consistency(system, pool, pool, r_kc)
    assert out["n_concepts"] == 0 and math.isnan(out["mean"]) and out["per_concept"] == {}
