"""Looking at a prepared dataset: a grid of examples per class (as the study's Figures 3 and 4),
and the class counts. Plots use matplotlib; nothing here changes data.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from viscoin_core.data.cache import CachedDataset


def pick_per_class(labels: np.ndarray, n_per_class: int, classes: list[int], seed: int = 0) -> np.ndarray:
    """Row indices (len(classes), n_per_class): a seeded random choice of each class's images.

    Classes with fewer images repeat -1 for the missing cells.
    """
    rng = np.random.default_rng(seed)
    out = np.full((len(classes), n_per_class), -1, dtype=np.int64)
    for row, c in enumerate(classes):
        members = np.flatnonzero(labels == c)
        chosen = rng.permutation(members)[:n_per_class]
        out[row, :len(chosen)] = np.sort(chosen)
    return out


def class_grid(dataset: CachedDataset, n_per_class: int = 8, max_classes: int | None = 20,
               seed: int = 0, gap: int = 1) -> tuple[np.ndarray, list[str]]:
    """uint8 (rows*(H+gap), n*(W+gap), 3) mosaic, one row per class, and the row names."""
    classes = list(range(dataset.n_classes))[:max_classes]
    picks = pick_per_class(dataset.labels.numpy(), n_per_class, classes, seed)
    res = dataset.resolution
    cell = res + gap
    grid = np.full((len(classes) * cell - gap, n_per_class * cell - gap, 3), 255, np.uint8)
    for r, row in enumerate(picks):
        for k, index in enumerate(row):
            if index >= 0:
                grid[r * cell:r * cell + res, k * cell:k * cell + res] = dataset.images[index]
    return grid, [dataset.class_names[c] for c in classes]


def show_class_grid(dataset: CachedDataset, n_per_class: int = 8, max_classes: int | None = 20,
                    seed: int = 0, title: str | None = None, cell_inches: float = 0.6):
    """A matplotlib figure: one row of examples per class, the class name on the left."""
    import matplotlib.pyplot as plt
    grid, names = class_grid(dataset, n_per_class, max_classes, seed)
    rows = len(names)
    fig, ax = plt.subplots(figsize=(cell_inches * n_per_class + 2.2, cell_inches * rows + 0.5))
    ax.imshow(grid, interpolation="nearest")
    cell = dataset.resolution + 1
    ax.set_yticks([r * cell + dataset.resolution / 2 for r in range(rows)], names, fontsize=8)
    ax.set_xticks([])
    for side in ax.spines.values():
        side.set_visible(False)
    ax.set_title(title or f"{dataset.split} split, {dataset.resolution} px", fontsize=10)
    fig.tight_layout()
    return fig


def save_class_grid(dataset: CachedDataset, path: str | Path, n_per_class: int = 8, max_classes: int | None = 20,
                    seed: int = 0, title: str | None = None, dpi: int = 100) -> Path:
    """Write `show_class_grid` to a PNG (e.g. results/synthetic/toybirds_grid.png)."""
    import matplotlib.pyplot as plt
    fig = show_class_grid(dataset, n_per_class, max_classes, seed, title)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return path


def show_class_counts(manifest: dict):
    """A matplotlib bar chart of images per class in each split, from a cache's manifest."""
    import matplotlib.pyplot as plt
    names = manifest["class_names"]
    fig, ax = plt.subplots(figsize=(min(0.35 * len(names) + 2, 14), 3))
    x = np.arange(len(names))
    for offset, split in ((-0.2, "train"), (0.2, "test")):
        ax.bar(x + offset, manifest["counts"][split]["per_class"], width=0.4, label=split)
    ax.set_xticks(x, names if len(names) <= 30 else [str(i) for i in x], rotation=90, fontsize=7)
    ax.set_ylabel("images")
    ax.legend()
    fig.tight_layout()
    return fig


def counts_table(manifest: dict):
    """A pandas DataFrame: class name, train and test counts, and the normalised inverse-frequency weight."""
    import pandas as pd
    return pd.DataFrame({"class": manifest["class_names"],
                         "train": manifest["counts"]["train"]["per_class"],
                         "test": manifest["counts"]["test"]["per_class"],
                         "weight": np.round(manifest["class_weights"], 3)})


def save_synthetic_grids(out_dir: str | Path = "results/synthetic", resolution: int = 64,
                         examples_per_class: int = 10, seed: int = 0) -> list[Path]:
    """Regenerate the committed example grids of toybirds and toytissue (test split, seeded).

    The raw trees and caches go to a temporary folder; only the PNGs land in `out_dir`.
    """
    import tempfile

    from viscoin_core.data.cache import load_split
    from viscoin_core.data.prepare import prepare
    from viscoin_core.config import resolve_path

    out = []
    with tempfile.TemporaryDirectory() as scratch:
        for dataset in ("toybirds", "toytissue"):
            manifest = prepare({"dataset": dataset, "root": f"{scratch}/{dataset}", "cache_dir": f"{scratch}/{dataset}_cache",
                                "resolution": resolution, "n_per_class": examples_per_class, "seed": seed})
            test = load_split(manifest.parent, "test")
            title = f"{dataset}: {examples_per_class} test images per class, {resolution} px, seed {seed}"
            out.append(save_class_grid(test, resolve_path(out_dir) / f"{dataset}_grid.png", examples_per_class,
                                       None, seed, title, dpi=100))
    return out
