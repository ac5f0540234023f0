"""Pictures of the two pretraining stages: image grids, f's loss/accuracy curves, G's losses, FID/KID and p.

Figures are matplotlib `Figure`s built without pyplot (no backend choice here); notebooks display
them, scripts save them with `fig.savefig`. Images are [-1, 1] tensors (docs/ARCHITECTURE.md, data flow).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from matplotlib.figure import Figure
from PIL import Image

from viscoin_core.runs import read_jsonl


def image_grid(images: torch.Tensor, cols: int) -> np.ndarray:
    """(N, 3, H, W) in [-1, 1] -> one uint8 (rows * H, cols * W, 3) image, filled row by row (blank tail)."""
    n, c, h, w = images.shape
    rows = -(-n // cols)
    x = ((images.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    canvas = torch.zeros(rows * cols, c, h, w, dtype=torch.uint8)
    canvas[:n] = x
    canvas = canvas.view(rows, cols, c, h, w).permute(0, 3, 1, 4, 2).reshape(rows * h, cols * w, c)
    return canvas.numpy()


def save_image_grid(images: torch.Tensor, path: str | Path, cols: int) -> Path:
    """Write `image_grid(images, cols)` as a PNG (folders created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    grid = image_grid(images, cols)
    Image.fromarray(grid if grid.shape[2] == 3 else grid[:, :, 0]).save(path)
    return path


def _figure(rows: int, cols: int, size: tuple[float, float]):
    fig = Figure(figsize=size, layout="constrained")
    return fig, np.asarray(fig.subplots(rows, cols, squeeze=False))


def show_images(paths: Sequence[str | Path], titles: Sequence[str] | None = None, width: float = 4.0) -> Figure:
    """Show saved PNG grids side by side (e.g. reals, start and final samples)."""
    fig, axes = _figure(1, len(paths), (width * len(paths), width))
    for i, (ax, path) in enumerate(zip(axes.flat, paths)):
        ax.imshow(np.asarray(Image.open(path)))
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(titles[i] if titles else Path(path).stem, fontsize=9)
    return fig


def classifier_curves(run_dir: str | Path) -> Figure:
    """f's training: cross entropy (steps and epochs, train and validation) and accuracy per epoch."""
    records = read_jsonl(Path(run_dir) / "log.jsonl")
    epochs = [r for r in records if r.get("kind") == "epoch"]
    steps = [r for r in records if r.get("kind") == "step"]
    if not epochs:
        raise ValueError(f"{run_dir}/log.jsonl holds no epoch records yet")
    fig, axes = _figure(1, 2, (9.0, 3.2))
    loss, acc = axes[0]
    if steps:
        loss.plot([r["step"] for r in steps], [r["loss"] for r in steps], alpha=0.4, label="train (steps)")
    ends = [r["step"] for r in epochs]
    loss.plot(ends, [r["train_loss"] for r in epochs], marker="o", label="train (epoch)")
    loss.plot(ends, [r["val_loss"] for r in epochs], marker="o", label="validation")
    loss.set_xlabel("step")
    loss.set_title("cross entropy", fontsize=9)
    loss.legend(fontsize=7)
    xs = [r["epoch"] + 1 for r in epochs]
    acc.plot(xs, [r["train_accuracy"] for r in epochs], marker="o", label="train")
    acc.plot(xs, [r["val_accuracy"] for r in epochs], marker="o", label="validation")
    best = epochs[-1].get("best_epoch")
    if best is not None and best >= 0:
        acc.axvline(best + 1, color="grey", linestyle=":", label="best epoch")
    acc.set_xlabel("epoch")
    acc.set_ylabel("%")
    acc.set_title("accuracy", fontsize=9)
    acc.legend(fontsize=7)
    return fig


def gan_curves(run_dir: str | Path) -> Figure:
    """G's training over kimg: G and D losses, FID/KID at snapshots, and the augmentation p (Figure 8)."""
    records = read_jsonl(Path(run_dir) / "log.jsonl")
    steps = [r for r in records if "G/loss" in r]
    snaps = [r for r in records if r.get("event") == "snapshot"]
    if not steps and not snaps:
        raise ValueError(f"{run_dir}/log.jsonl holds no training records yet")
    fig, axes = _figure(1, 3, (13.0, 3.2))
    losses, fid, p = axes[0]
    for key in ("G/loss", "D/loss", "D/r1_penalty", "G/pl_penalty"):
        pts = [(r["kimg"], r[key]) for r in steps if key in r]
        if pts:
            losses.plot(*zip(*pts), label=key)
    losses.set_xlabel("kimg")
    losses.set_title("losses", fontsize=9)
    losses.legend(fontsize=7)
    with_fid = [r for r in snaps if "fid" in r]
    if with_fid:
        fid.plot([r["kimg"] for r in with_fid], [r["fid"] for r in with_fid], marker="o", label="FID")
        kid = fid.twinx()
        kid.plot([r["kimg"] for r in with_fid], [1e3 * r["kid"] for r in with_fid], marker="s",
                 color="tab:orange", label="KID x 1e3")
        kid.set_ylabel("KID x 1e3")
        fid.set_title(f"FID / KID ({with_fid[0].get('fid_features')} features)", fontsize=9)
        fid.legend(fontsize=7, loc="upper left")
        kid.legend(fontsize=7, loc="upper right")
    else:
        fid.set_title("no FID computed (fid_images: 0)", fontsize=9)
    fid.set_xlabel("kimg")
    pts = [(r["kimg"], r["augment_p"]) for r in steps + snaps if "augment_p" in r]
    if pts:
        p.plot(*zip(*sorted(pts)))
    p.set_xlabel("kimg")
    p.set_title("augmentation probability p", fontsize=9)
    return fig


def sample_grids(run_dir: str | Path) -> list[Path]:
    """The run's sample grids, in order of kimg."""
    return sorted(Path(run_dir).glob("samples_kimg*.png"))


def samples_beside_reals(run_dir: str | Path, title: str, out: str | Path | None = None) -> Figure:
    """The run's training images (reals.png) beside its last sample grid, titled with the last
    snapshot's FID, precision and recall: does G draw what it was trained on? Saved as `out`.png."""
    run_dir = Path(run_dir)
    grids = sample_grids(run_dir)
    if not grids or not (run_dir / "reals.png").exists():
        raise FileNotFoundError(f"{run_dir} holds no reals.png and sample grid (run the G stage first)")
    snaps = [r for r in read_jsonl(run_dir / "log.jsonl") if r.get("event") == "snapshot" and "fid" in r]
    last = snaps[-1] if snaps else {}
    scores = ", ".join(f"{k} {last[k]:.3g}" for k in ("fid", "precision", "recall") if isinstance(last.get(k), float))
    fig = show_images([run_dir / "reals.png", grids[-1]],
                      ["training images", f"G's samples at {grids[-1].stem.removeprefix('samples_')}"])
    fig.suptitle(title + (f" ({scores}; {last.get('fid_features')} features)" if scores else ""), fontsize=10)
    if out is not None:
        fig.savefig(Path(out).with_suffix(".png"), dpi=120)
    return fig
