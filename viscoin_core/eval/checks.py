"""Invariants every VisCoIN evaluation must satisfy, whatever the data, the size or the seed.

Notebooks 04 and 05 call `check_metrics` after `evaluate`, so CI (nbval) and every batch row stop
on a broken one instead of publishing it.
"""

from __future__ import annotations

from typing import Mapping


def check_metrics(metrics: Mapping, n_concepts: int) -> None:
    """Raise AssertionError naming the first broken invariant of an `evaluate()` result.

    - keeping all K concepts (top-N accuracy at N = K) is g itself, so it equals g's accuracy;
    - f's and g's accuracies and their fidelity are percentages in [0, 100].
    """
    top_n = {int(k): v for k, v in metrics["top_n_accuracy"].items()}
    assert n_concepts in top_n, f"top_n_accuracy has no entry for N = K = {n_concepts}: {sorted(top_n)}"
    assert abs(top_n[n_concepts] - metrics["g_accuracy"]) < 1e-6, (
        f"top-{n_concepts} accuracy {top_n[n_concepts]} differs from g's accuracy {metrics['g_accuracy']}")
    for key in ("f_accuracy", "g_accuracy", "fidelity"):
        assert 0 <= metrics[key] <= 100, f"{key} = {metrics[key]} is not a percentage"
