"""Improved precision and recall (Kynkaanniemi et al., 2019) against cases with known answers."""

import pytest
import torch

from viscoin_core.eval.metrics import precision_recall


def brute_force(real, fake, k):
    """Per-sample loops of the paper's definition, for comparison."""
    def radii(x):
        d = torch.cdist(x, x)
        return d.sort(dim=1).values[:, k]        # column 0 is the sample itself

    def inside(points, centres):
        r = radii(centres)
        return sum(bool((torch.cdist(p[None], centres)[0] <= r).any()) for p in points) / len(points)
    return inside(fake, real), inside(real, fake)


def test_a_set_against_itself_has_full_precision_and_recall():
    x = torch.randn(50, 8, generator=torch.Generator().manual_seed(0))
    assert precision_recall(x, x.clone()) == {"precision": 1.0, "recall": 1.0}


def test_far_away_samples_have_neither():
    real = torch.randn(40, 4, generator=torch.Generator().manual_seed(1))
    assert precision_recall(real, real + 100.0) == {"precision": 0.0, "recall": 0.0}


def test_mode_collapse_keeps_precision_and_loses_recall():
    # Two far clusters of reals; the fakes sit on one of them only.
    g = torch.Generator().manual_seed(2)
    a, b = torch.randn(30, 2, generator=g), torch.randn(30, 2, generator=g) + 50.0
    fake = a + 0.01 * torch.randn(30, 2, generator=g)
    pr = precision_recall(torch.cat([a, b]), fake)
    assert pr["precision"] == 1.0
    assert pr["recall"] == pytest.approx(0.5, abs=0.05)   # at most a's points, and nearly all of them


def test_it_matches_the_definition_on_random_sets():
    g = torch.Generator().manual_seed(3)
    real, fake = torch.randn(60, 5, generator=g), 0.7 * torch.randn(45, 5, generator=g) + 0.5
    p, r = brute_force(real, fake, k=3)
    assert precision_recall(real, fake, k=3) == pytest.approx({"precision": p, "recall": r})


def test_too_few_samples_are_refused():
    with pytest.raises(ValueError, match="k = 3"):
        precision_recall(torch.zeros(3, 2), torch.zeros(10, 2))
