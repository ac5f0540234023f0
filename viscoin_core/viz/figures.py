"""Figures of the study: concept grids, amplification strips, curves, Grad-CAM, relevance and metric plots.

Every function returns a matplotlib Figure and, given `out` (a path with or without suffix), also
writes it as PNG and PDF. Nothing here picks a matplotlib backend: notebooks show the returned
figures, scripts and tests choose 'Agg' themselves.

Images are [-1, 1] tensors (docs/ARCHITECTURE.md, data flow); systems are `viscoin_core.eval.concepts.System`.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Callable, Mapping, Sequence

import matplotlib
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from matplotlib.figure import Figure

from viscoin_core.eval.concepts import (LOCALISATION_LAMBDA, System, change_maps, localisation, pool,
                                        select_concepts)

LAMBDAS = (0.0, 1.0, 2.0, 4.0)


# ----------------------------------------------------------------------------------------------
# Helpers


def save_figure(fig: Figure, out: str | Path | None, dpi: int = 150,
                formats: Sequence[str] = ("png", "pdf")) -> Figure:
    """Write `fig` as out.png and out.pdf, or in the given `formats` (folders created); return it unchanged."""
    if out is not None:
        stem = Path(out)
        stem = stem.with_suffix("") if stem.suffix.lower() in (".png", ".pdf") else stem
        stem.parent.mkdir(parents=True, exist_ok=True)
        for fmt in _checked_formats(formats):
            # Append the suffix: a stem may hold dots of its own (CUB's "001.Black_footed_Albatross").
            fig.savefig(stem.parent / f"{stem.name}.{fmt}", dpi=dpi, bbox_inches="tight")
    return fig


def _checked_formats(formats: Sequence[str]) -> Sequence[str]:
    unknown = [fmt for fmt in formats if fmt not in ("png", "pdf")]
    if unknown:
        raise ValueError(f"figure format(s) {unknown}; choose from 'png', 'pdf'")
    return formats


def _new_figure(rows: int, cols: int, size: tuple[float, float]) -> tuple[Figure, np.ndarray]:
    # Figure() rather than pyplot: no global state, no backend choice, nothing left open.
    fig = Figure(figsize=size, layout="constrained")
    axes = np.asarray(fig.subplots(rows, cols, squeeze=False))
    return fig, axes


def to_display(x: torch.Tensor) -> np.ndarray:
    """(3, H, W) in [-1, 1] -> (H, W, 3) in [0, 1] for imshow."""
    return ((x.detach().float().cpu().clamp(-1, 1) + 1) / 2).permute(1, 2, 0).numpy()


def _show(ax, image: torch.Tensor, title: str | None = None) -> None:
    ax.imshow(to_display(image))
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=8)


@torch.no_grad()
def edit_concepts(system: System, x: torch.Tensor, concepts: Sequence[int], scale: float) -> torch.Tensor:
    """Regenerate x with phi_k multiplied by `scale` for k in `concepts` (Phi' and others unchanged)."""
    phi, phi_prime = system.concepts(x)
    phi = phi.clone()
    phi[:, list(concepts)] *= scale
    return system.reconstruct(phi, phi_prime)


# ----------------------------------------------------------------------------------------------
# Concept grid and amplification strips


def concept_grid(system: System, images: torch.Tensor, concepts: Sequence[int], class_name: str = "",
                 lam: float = 4.0, out: str | Path | None = None) -> Figure:
    """Rows of: original | concepts switched off | reconstruction | concepts x lam (Figures 1, 6, 7, 13, 14, 17).

    `images` (n, 3, H, W) are images of one class; `concepts` the class's best concepts (see
    `select_concepts`). The title names the class and the concept indices.
    """
    images = images if images.dim() == 4 else images[None]
    columns = [("original", None), ("concepts off", 0.0), ("reconstruction", 1.0), (f"concepts x{lam:g}", lam)]
    fig, axes = _new_figure(len(images), len(columns), (2.0 * len(columns), 2.0 * len(images) + 0.4))
    rendered = {scale: edit_concepts(system, images, concepts, scale) for _, scale in columns if scale is not None}
    for i, x in enumerate(images):
        for j, (name, scale) in enumerate(columns):
            _show(axes[i, j], x if scale is None else rendered[scale][i], name if i == 0 else None)
    fig.suptitle(f"{class_name}  concepts {list(concepts)}".strip(), fontsize=10)
    return save_figure(fig, out)


def image_rows(rows: Mapping[str, torch.Tensor], titles: Sequence[str] | None = None,
               out: str | Path | None = None) -> Figure:
    """One labelled row per entry of `rows` ({label: (n, 3, H, W) in [-1, 1]}, the same n each), in
    order, columns aligned: inputs above what each method made of them."""
    sets = list(rows.items())
    n = len(sets[0][1])
    fig, axes = _new_figure(len(sets), n, (1.3 * n, 1.5 * len(sets)))
    for i, (label, images) in enumerate(sets):
        for j, x in enumerate(images):
            _show(axes[i, j], x, titles[j] if titles and i == 0 else None)
        axes[i, 0].set_ylabel(label, fontsize=8)
    return save_figure(fig, out)


def reconstruction_pairs(system: System, images: torch.Tensor, titles: Sequence[str] | None = None,
                         out: str | Path | None = None) -> Figure:
    """Inputs (top row) above their reconstructions x~ = G(Omega(Phi, Phi')) (bottom row): does each
    reconstruction follow its own input, or only its class? `images` (n, 3, H, W) in [-1, 1]."""
    with torch.no_grad():
        rec = system.reconstruct(*system.concepts(images))
    return image_rows({"input": images, "reconstruction": rec}, titles, out)


def amplification_strip(system: System, images: torch.Tensor, concepts: Sequence[int],
                        lambdas: Sequence[float] = LAMBDAS, titles: Sequence[str] | None = None,
                        out: str | Path | None = None) -> Figure:
    """Per image: original, x regenerated with the concepts x lambda for each lambda, and the difference
    between the largest lambda and the plain reconstruction (lambda = 1), as a heat map."""
    images = images if images.dim() == 4 else images[None]
    fig, axes = _new_figure(len(images), len(lambdas) + 2, (1.9 * (len(lambdas) + 2), 2.0 * len(images) + 0.4))
    rendered = [edit_concepts(system, images, concepts, lam) for lam in lambdas]
    plain = edit_concepts(system, images, concepts, 1.0)
    for i, x in enumerate(images):
        _show(axes[i, 0], x, titles[i] if titles else ("original" if i == 0 else None))
        for j, lam in enumerate(lambdas):
            _show(axes[i, j + 1], rendered[j][i], f"lambda = {lam:g}" if i == 0 else None)
        diff = (rendered[int(np.argmax(lambdas))][i] - plain[i]).abs().mean(dim=0).cpu().numpy()
        ax = axes[i, -1]
        ax.imshow(diff, cmap="magma", vmin=0, vmax=max(float(diff.max()), 1e-6))
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_xlabel(f"max {diff.max():.3f}", fontsize=7)   # each map has its own scale
        if i == 0:
            ax.set_title(f"|x(lambda={max(lambdas):g}) - x~|", fontsize=8)
    fig.suptitle(f"amplifying concepts {list(concepts)}", fontsize=10)
    return save_figure(fig, out)


def localisation_figure(system: System, images: torch.Tensor, concepts: Sequence[int], masks: torch.Tensor,
                        parts: Sequence[str], phi_max: Sequence[float], lam: float = LOCALISATION_LAMBDA,
                        out: str | Path | None = None) -> Figure:
    """Per row, one (image, concept) pair of concept localisation: the image, and the change map
    |x~(lam) - x~(0)| summed over RGB (`eval.concepts.change_maps`: phi_k := lam * phi_max), each
    with the outline of the concept's part; the title gives the concept, the part and the score.

    images (n, 3, H, W) in [-1, 1]; concepts, parts, phi_max one per image; masks (n, H, W) bool.
    """
    fig, axes = _new_figure(len(images), 2, (4.0, 2.0 * len(images) + 0.4))
    with torch.no_grad():
        phi, phi_prime = system.concepts(images)
    for i, (x, k, part) in enumerate(zip(images, concepts, parts)):
        change = change_maps(system, phi[i:i + 1], phi_prime[i:i + 1], int(k), float(phi_max[i]), lam)[0].cpu()
        mask = torch.as_tensor(masks[i]).bool()
        score = float(localisation(change[None], mask[None])[0])
        _show(axes[i, 0], x, f"concept {k}, {part}")
        ax = axes[i, 1]
        ax.imshow(change.numpy(), cmap="magma", vmin=0, vmax=max(float(change.max()), 1e-6))
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(f"localisation {score:.2f}", fontsize=8)
        for a in axes[i]:   # the part's outline on both: is the change where the part is?
            a.contour(mask.numpy().astype(float), levels=[0.5], colors="cyan", linewidths=0.8)
    fig.suptitle(f"|x~(lambda={lam:g}) - x~(0)| and the part's outline", fontsize=10)
    return save_figure(fig, out)


# ----------------------------------------------------------------------------------------------
# Curves from logs


def _records(log: str | Path | Sequence[Mapping]) -> list[dict]:
    if isinstance(log, (str, Path)):
        from viscoin_core.runs import read_jsonl
        records = read_jsonl(log)
        if not records:
            raise ValueError(f"{log} holds no log records")
        return records
    return [dict(r) for r in log]


def _x_key(records: list[dict]) -> str:
    for key in ("iteration", "step", "kimg", "epoch"):
        if any(key in r for r in records):
            return key
    raise ValueError("log records have no 'iteration', 'step', 'kimg' or 'epoch' field")


TEST_PREFIXES = ("test_", "test/", "val_", "eval_")


def _split_name(key: str) -> tuple[str, str]:
    """'test_loss' -> ('loss', 'test'); 'train_loss' and 'loss' -> ('loss', 'train')."""
    for prefix in TEST_PREFIXES:
        if key.startswith(prefix):
            return key[len(prefix):], "test"
    for prefix in ("train_", "train/"):
        if key.startswith(prefix):
            return key[len(prefix):], "train"
    return key, "train"


def _base_name(key: str) -> str:
    # Evaluations log loss terms as loss_<term>; training logs them as <term>: one panel for both.
    return key[len("loss_"):] if key.startswith("loss_") else key


# Bookkeeping fields, not curves worth a panel unless asked for by name.
NOT_CURVES = {"lr", "seconds_per_iteration", "n_images", "kid_std", "epoch", "kimg", "step"}


def training_curves(log: str | Path | Sequence[Mapping], keys: Sequence[str] | None = None,
                    smooth: int = 1, out: str | Path | None = None) -> Figure:
    """One panel per logged quantity against the iteration, training and test curves together
    (Figures 10, 11, 15, 16). The split of a value comes from its record's "split" field, else from a
    key prefix (test_, val_, train_). `keys` picks quantities by base name; `smooth` is a
    moving-average window for the training curves."""
    records = _records(log)
    x_key = _x_key(records)
    series: dict[str, dict[str, tuple[list, list]]] = {}
    for r in records:
        if x_key not in r:
            continue
        for key, value in r.items():
            if key == x_key or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            base, split = _split_name(key)
            base = _base_name(base)
            split = r.get("split", split)      # trainers tag whole records with "split": "train" | "test"
            xs, ys = series.setdefault(base, {}).setdefault(split, ([], []))
            xs.append(r[x_key])
            ys.append(value)
    # a "<name>_chance" series is drawn as the chance line of <name>'s panel, not as a panel
    default = sorted(k for k in set(series) - NOT_CURVES if not k.endswith("_chance"))
    names = [k for k in (keys or default) if k in series]
    if not names:
        raise ValueError(f"none of {list(keys or [])} is in the log (it has {sorted(series)})")
    cols = min(3, len(names))
    rows = -(-len(names) // cols)
    fig, axes = _new_figure(rows, cols, (4.0 * cols, 2.8 * rows))
    for ax, name in zip(axes.flat, names):
        for split, (xs, ys) in sorted(series[name].items(), key=lambda item: item[0] != "train"):
            ys = np.asarray(ys, dtype=float)
            if split == "train" and smooth > 1 and len(ys) >= smooth:
                ys = np.convolve(ys, np.ones(smooth) / smooth, mode="same")
            ax.plot(xs, ys, label=split, marker="o" if split == "test" else None, markersize=3)
        for xs, ys in series.get(f"{name}_chance", {}).values():
            ax.plot(xs, ys, linestyle="--", color="grey", label="chance")
        ax.set_title(name, fontsize=9)
        ax.set_xlabel(x_key)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(names):]:
        ax.set_visible(False)
    return save_figure(fig, out)


def runs_compared(logs: Mapping[str, str | Path | Sequence[Mapping]], keys: Sequence[str],
                  out: str | Path | None = None) -> Figure:
    """One panel per key, one line per run ({label: log}): the key's test-split records (those with
    "split": "test") against the iteration, with its "<key>_chance" as a grey dashed line where logged."""
    fig, axes = _new_figure(1, len(keys), (4.2 * len(keys), 3.0))
    for ax, key in zip(axes.flat, keys):
        chance = None
        for label, log in logs.items():
            records = [r for r in _records(log) if r.get("split") == "test" and key in r]
            if not records:
                raise ValueError(f"run {label!r}: no test record holds {key!r}")
            ax.plot([r["iteration"] for r in records], [r[key] for r in records], marker="o", markersize=3,
                    label=label)
            chance = chance or [(r["iteration"], r[f"{key}_chance"]) for r in records if f"{key}_chance" in r]
        if chance:
            ax.plot(*zip(*chance), linestyle="--", color="grey", label="chance")
        ax.set_title(key, fontsize=9)
        ax.set_xlabel("iteration")
        ax.legend(fontsize=7)
    return save_figure(fig, out)


def fid_curve(log: str | Path | Sequence[Mapping], out: str | Path | None = None) -> Figure:
    """FID (and KID when logged) against the iteration, e.g. over a generator's snapshots."""
    records = _records(log)
    x_key = _x_key(records)
    keys = sorted({k for r in records for k in r if ("fid" in k.lower() or "kid" in k.lower())
                   and isinstance(r[k], (int, float)) and not isinstance(r[k], bool)})
    if not keys:
        raise ValueError("log records hold no FID or KID values")
    fig, axes = _new_figure(1, 1, (5.0, 3.2))
    ax = axes[0, 0]
    for key in keys:
        pts = [(r[x_key], r[key]) for r in records if key in r and x_key in r]
        (ax.twinx() if "kid" in key.lower() and len(keys) > 1 else ax).plot(
            *zip(*pts), marker="o", markersize=3, label=key, color=None if "fid" in key.lower() else "tab:orange")
    ax.set_xlabel(x_key)
    ax.set_ylabel("FID")
    features = next((r.get("fid_features") for r in records if "fid_features" in r), None)
    ax.set_title(f"FID over training{f' ({features} features)' if features else ''}", fontsize=9)
    fig.legend(fontsize=7, loc="outside upper right")
    return save_figure(fig, out)


# ----------------------------------------------------------------------------------------------
# Grad-CAM


def grad_cam(forward: Callable[[torch.Tensor], torch.Tensor], layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Grad-CAM of a scalar-per-sample output at `layer`: relu(sum_c w_c A_c), w_c = mean_ij dy/dA_cij.

    forward(x) -> (B,) target values; A = layer's output (B, C, h, w). Returns (B, h, w), not normalised.
    """
    store = {}

    def hook(module, inputs, output):
        # A fresh leaf in place of the output: gradients reach it even when the network is frozen.
        store["A"] = output.detach().requires_grad_(True)
        return store["A"]
    handle = layer.register_forward_hook(hook)
    try:
        with torch.enable_grad():
            y = forward(x)
            if y.dim() != 1 or len(y) != len(x):
                raise ValueError(f"forward must give one value per sample, got shape {tuple(y.shape)}")
            y.sum().backward()
    finally:
        handle.remove()
    A = store["A"]
    weights = A.grad.mean(dim=(2, 3), keepdim=True)          # (B, C, 1, 1)
    return F.relu((weights * A).sum(dim=1)).detach()


def last_conv(module: nn.Module) -> nn.Module:
    """The last nn.Conv2d inside `module` (Psi's concept convolution by default)."""
    convs = [m for m in module.modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ValueError(f"{type(module).__name__} has no Conv2d layer")
    return convs[-1]


def concept_cam(system: System, x: torch.Tensor, concept: int, layer: nn.Module | str | None = None) -> torch.Tensor:
    """Grad-CAM of maxpool(phi_k), upsampled to x's size, in [0, 1] per image.

    `layer`: one of Psi's modules (Grad-CAM at its output; default Psi's last convolution), or the
    name of one of f's taps that Psi reads ('layer2', 'layer3', 'layer4'): Grad-CAM at Psi's input.
    Psi works on layer4's grid (H/32), so at small image sizes 'layer2' (H/8) shows more detail.
    """
    with torch.no_grad():
        _, taps = system.f.forward_taps(x)

    def target(taps_in):
        phi, _ = system.psi(taps_in)
        return pool(system.theta, phi)[:, concept]
    if isinstance(layer, str):
        if layer not in taps:
            raise ValueError(f"f has no tap {layer!r}; choose one of {sorted(taps)}")
        leaf = taps[layer].detach().requires_grad_(True)
        with torch.enable_grad():
            target({**taps, layer: leaf}).sum().backward()
        weights = leaf.grad.mean(dim=(2, 3), keepdim=True)
        cam = F.relu((weights * leaf).sum(dim=1)).detach()
    else:
        cam = grad_cam(lambda _: target(taps), layer or last_conv(system.psi), x)
    cam = F.interpolate(cam[:, None], size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    peak = cam.flatten(1).amax(dim=1).clamp_min(1e-12)[:, None, None]
    return cam / peak


def grad_cam_figure(system: System, images: torch.Tensor, concepts: Sequence[int],
                    layer: nn.Module | str | None = None, out: str | Path | None = None) -> Figure:
    """Images with the Grad-CAM of each concept overlaid (Figure 12); `layer` as in `concept_cam`."""
    images = images if images.dim() == 4 else images[None]
    fig, axes = _new_figure(len(images), len(concepts) + 1, (1.9 * (len(concepts) + 1), 2.0 * len(images) + 0.3))
    cams = [concept_cam(system, images, k, layer) for k in concepts]
    for i, x in enumerate(images):
        _show(axes[i, 0], x, "image" if i == 0 else None)
        for j, k in enumerate(concepts):
            _show(axes[i, j + 1], x, f"concept {k}" if i == 0 else None)
            axes[i, j + 1].imshow(cams[j][i].cpu().numpy(), cmap="jet", alpha=0.45, vmin=0, vmax=1)
    where = (f"Psi's input from f's {layer}" if isinstance(layer, str)
             else f"Psi's {type(layer).__name__ if layer is not None else 'last convolution'}")
    fig.suptitle(f"Grad-CAM of each concept at {where}", fontsize=10)
    return save_figure(fig, out)


# ----------------------------------------------------------------------------------------------
# Relevance and metric plots


def relevance_heatmap(r_kc: torch.Tensor, class_names: Sequence[str] | None = None, max_concepts: int | None = 64,
                      out: str | Path | None = None) -> Figure:
    """r_{k,c} as classes x concepts. Concepts are ordered by the class they matter most to, then by
    that relevance, so each class's concepts form a block; only the `max_concepts` most relevant are shown."""
    r = torch.as_tensor(r_kc).float().cpu()
    C, K = r.shape
    filled = torch.nan_to_num(r, nan=-np.inf)
    peak, owner = filled.max(dim=0)
    keep = peak.argsort(descending=True)[: max_concepts or K]
    order = sorted(keep.tolist(), key=lambda k: (int(owner[k]), -float(peak[k])))
    data = np.ma.masked_invalid(r[:, order].numpy())
    fig, axes = _new_figure(1, 1, (min(14, 2 + 0.18 * len(order)), min(12, 1.5 + 0.25 * C)))
    ax = axes[0, 0]
    cmap = matplotlib.colormaps["RdBu_r"].with_extremes(bad="0.75")
    im = ax.imshow(data, cmap=cmap, vmin=-1, vmax=1, aspect="auto", interpolation="nearest")
    ax.set_yticks(range(C))
    ax.set_yticklabels(class_names if class_names is not None else range(C), fontsize=7)
    ax.set_xticks(range(len(order)))
    ax.set_xticklabels(order, fontsize=6, rotation=90)
    ax.set_xlabel("concept k")
    fig.colorbar(im, ax=ax, label="r_{k,c}")
    ax.set_title("class relevance of concepts (grey: class never predicted)", fontsize=9)
    return save_figure(fig, out)


def top_n_curve(top_n: Mapping, g_accuracy: float | None = None, published: Mapping | None = None,
                out: str | Path | None = None) -> Figure:
    """Accuracy of g keeping only the N most contributing concepts, against N (log scale)."""
    fig, axes = _new_figure(1, 1, (4.8, 3.2))
    ax = axes[0, 0]
    ns = sorted(int(n) for n in top_n)
    ax.plot(ns, [top_n[n] if n in top_n else top_n[str(n)] for n in ns], marker="o", label="this run")
    if published:
        pn = sorted(int(n) for n in published)
        ax.plot(pn, [published[n] if n in published else published[str(n)] for n in pn], marker="s",
                linestyle="--", label="published")
    if g_accuracy is not None:
        ax.axhline(g_accuracy, color="grey", linestyle=":", label="g, all concepts")
    ax.set_xscale("log", base=2)
    ax.set_xticks(ns, [str(n) for n in ns])
    ax.minorticks_off()
    ax.set_xlabel("concepts kept (N)")
    ax.set_ylabel("accuracy (%)")
    ax.legend(fontsize=7)
    ax.set_title("top-N accuracy", fontsize=9)
    return save_figure(fig, out)


def faithfulness_plot(faithfulness: Mapping, random_baseline: Mapping, out: str | Path | None = None) -> Figure:
    """Median faithfulness per tau beside the random-concept baseline."""
    taus = sorted(float(t) for t in faithfulness)
    get = lambda d, t: d[t] if t in d else d[str(t)]          # noqa: E731 (JSON keys are strings)
    fig, axes = _new_figure(1, 1, (4.8, 3.2))
    ax = axes[0, 0]
    pos = np.arange(len(taus))
    ax.bar(pos - 0.2, [get(faithfulness, t) for t in taus], 0.4, label="relevant concepts off")
    ax.bar(pos + 0.2, [get(random_baseline, t) for t in taus], 0.4, label="as many random concepts off")
    ax.set_xticks(pos)
    ax.set_xticklabels([f"tau = {t:g}" for t in taus])
    ax.axhline(0, color="black", linewidth=0.6)
    ax.set_ylabel("median drop of p_g(c^)")
    ax.legend(fontsize=7)
    ax.set_title("faithfulness", fontsize=9)
    return save_figure(fig, out)


def factor_alignment_bars(alignment: Mapping, out: str | Path | None = None) -> Figure:
    """Per factor: max |Spearman rho| of a trained concept beside an untrained Psi's."""
    names = list(alignment["per_factor"])
    fig, axes = _new_figure(1, 1, (max(4.8, 0.6 * len(names) + 1.5), 3.4))
    ax = axes[0, 0]
    pos = np.arange(len(names))
    ax.bar(pos - 0.2, [alignment["per_factor"][n] for n in names], 0.4, label=f"trained (mean {alignment['mean']:.2f})")
    untrained = alignment.get("untrained")
    if untrained:
        ax.bar(pos + 0.2, [untrained["per_factor"][n] for n in names], 0.4,
               label=f"untrained Psi (mean {untrained['mean']:.2f})")
    ax.set_xticks(pos)
    ax.set_xticklabels(names, rotation=30, ha="right", fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_ylabel("max |Spearman rho|")
    ax.legend(fontsize=7)
    ax.set_title("alignment of concepts with ground-truth factors", fontsize=9)
    return save_figure(fig, out)


def best_images_of_class(predicted: torch.Tensor, labels: torch.Tensor | None, c: int, n: int) -> list[int]:
    """Indices of up to n test images of class c that g predicts correctly (any of class c if none)."""
    hit = (predicted == c) & (labels == c) if labels is not None else predicted == c
    idx = hit.nonzero().flatten()
    if len(idx) == 0 and labels is not None:
        idx = (labels == c).nonzero().flatten()
    return idx[:n].tolist()


def figures_for_run(run_dir: str | Path, out_dir: str | Path, n_classes_shown: int = 3, n_images: int = 3,
                    threshold: float = 0.5, top_k: int = 3, device: str = "cpu",
                    cam_layer: nn.Module | str | None = "layer2", formats: Sequence[str] = ("png", "pdf")) -> dict:
    """Every figure above for a trained run, from what `evaluate` stored; returns {name: Figure}.

    Reads metrics.json and relevance.pt (r_{k,c}, and g's prediction for each evaluated test image),
    so the figures show the relevance the metrics were computed with. For the `n_classes_shown`
    classes g predicts most often: a concept grid of `n_images` images with the class's concepts of
    r_{k,c} > threshold (else the top_k), amplification strips and Grad-CAM (at `cam_layer`, see
    `concept_cam`); two images per shown class above their reconstructions; then the relevance
    heatmap, training curves, top-N accuracy, faithfulness and factor alignment from metrics.json,
    and, when the run measured concept localisation (part masks), the change maps of each shown
    class's most relevant concept on up to two of its images with the part's outline.
    Each is written to out_dir/<name>.<format> for each of `formats` ('png', 'pdf').
    """
    from viscoin_core.eval import RELEVANCE, load_system_and_test_split
    _checked_formats(formats)   # before any drawing
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    stored = torch.load(run_dir / RELEVANCE, map_location="cpu", weights_only=True)
    if "predicted" not in stored:   # written before evaluate kept g's per-image predictions
        raise ValueError(f"{run_dir / RELEVANCE} predates the per-image predictions the figures read; "
                         "run viscoin_core.eval.evaluate on the run again (eval.evaluated tells)")
    system, test, names = load_system_and_test_split(run_dir, device)
    r_kc, images_index = stored["r_kc"], stored["images_index"]
    predicted, labels = stored["predicted"], stored["labels"]
    figs = {"relevance_heatmap": relevance_heatmap(r_kc, names)}
    counts = torch.bincount(predicted, minlength=len(names))
    shown = [c for c in counts.argsort(descending=True).tolist() if counts[c] > 0][:n_classes_shown]
    for c in shown:    # r_{k,c} is defined only for classes g predicts
        concepts = select_concepts(r_kc[c], threshold) or select_concepts(r_kc[c], top_k=top_k)
        concepts = concepts[:top_k]
        rows = best_images_of_class(predicted, labels, c, n_images)
        if not rows:
            continue
        x = torch.stack([test[int(images_index[i])][0] for i in rows]).to(device)
        tag = re.sub(r"[^A-Za-z0-9_-]+", "_", names[c])
        figs[f"concept_grid_{tag}"] = concept_grid(system, x, concepts, names[c])
        figs[f"amplification_{tag}"] = amplification_strip(system, x[:2], concepts[:1])
        figs[f"grad_cam_{tag}"] = grad_cam_figure(system, x[:2], concepts, layer=cam_layer)
    pairs = [i for c in shown for i in best_images_of_class(predicted, labels, c, 2)]
    if pairs:
        figs["reconstructions"] = reconstruction_pairs(
            system, torch.stack([test[int(images_index[i])][0] for i in pairs]).to(device),
            [names[int(labels[i])][:12] for i in pairs])
    log = run_dir / "log.jsonl"
    if log.exists():
        figs["training_curves"] = training_curves(log, smooth=5)
    figs["top_n_accuracy"] = top_n_curve(metrics["top_n_accuracy"], metrics.get("g_accuracy"))
    figs["faithfulness"] = faithfulness_plot(metrics["faithfulness"], metrics["faithfulness_random"])
    if metrics.get("factor_alignment"):
        figs["factor_alignment"] = factor_alignment_bars(metrics["factor_alignment"])
    if metrics.get("concept_localisation") and test.part_masks is not None:
        pairs = localisation_pairs_shown(metrics["concept_localisation"]["concepts"], r_kc, shown, predicted, labels,
                                         images_index, test)
        if pairs:
            rows, ks = [row for row, _ in pairs], [k for _, k in pairs]
            info = metrics["concept_localisation"]["concepts"]
            parts = [info[str(k)]["part"] for k in ks]
            masks = torch.stack([torch.from_numpy(np.array(test.part_masks[row][test.part_names.index(part)]))
                                 for row, part in zip(rows, parts)])
            figs["localisation"] = localisation_figure(
                system, torch.stack([test[row][0] for row in rows]).to(device), ks, masks, parts,
                [info[str(k)]["phi_max"] for k in ks])
    for name, fig in figs.items():
        save_figure(fig, out_dir / name, formats=formats)
    return figs


def localisation_pairs_shown(concepts: Mapping, r_kc: torch.Tensor, shown: Sequence[int], predicted: torch.Tensor,
                             labels: torch.Tensor | None, images_index: torch.Tensor, test, per_class: int = 2) -> list:
    """(test row, concept) pairs for the localisation figure: each shown class's most relevant concept
    (of those metrics.json's `concept_localisation.concepts` lists, with its part and phi_max) on up
    to `per_class` of the class's images where that part is present."""
    pairs = []
    for c in shown:
        k = next((k for k in select_concepts(r_kc[c], top_k=len(r_kc[c])) if str(k) in concepts), None)
        if k is None or not concepts[str(k)]["phi_max"]:
            continue
        p = test.part_names.index(concepts[str(k)]["part"])
        rows = [int(images_index[i]) for i in best_images_of_class(predicted, labels, c, len(predicted))]
        pairs += [(row, k) for row in rows if test.part_masks[row][p].any()][:per_class]
    return pairs
