"""Side measurement: why is concept localisation near 1? Score the same change maps against other masks.

Concept localisation compares an edit's change map |x~(4 phi_max) - x~(0)| with the mask of the
concept's part *on the input image*. If the reconstructions do not follow their input (the bird
drawn where the class's birds usually stand, not where this one stands), the change falls on the
part of the drawn bird, and the input's mask misses it. Scored here, on the pairs Table 3 scores:

- own:        the input's mask of the part (= metrics.json's concept_localisation);
- other bird: the part's mask on another test image of the same class (a bird elsewhere);
- class:      the part's frequency map over the class's evaluated images, a soft mask (weights in
              [0, 1]; the same score with weights in place of 0/1);
- bird:       the union of all parts on the input (does the change stay on the bird at all?);
- shifted:    the input's part mask moved by the (dy, dx), |d| <= 8 px, that scores best: how well the
              change fits the part's shape wherever it lies;
- shifted, another part: the same for a part the concept does not go with (the control: a best
              shift flatters any mask, so `shifted` means something only where it beats this).

    python results/mini/side/masks.py RUN_DIR [OUT_STEM]
"""
import json
import sys
from pathlib import Path

import numpy as np
import torch

from viscoin_core import streams
from viscoin_core.eval import RELEVANCE, load_system_and_test_split
from viscoin_core.eval import concepts as C

torch.set_num_threads(1)


def masks_of(test, index: torch.Tensor) -> torch.Tensor:
    """(N, P, H, W) bool part masks of the test images `index`."""
    return torch.from_numpy(np.stack([np.asarray(test.part_masks[int(i)]) for i in index])).bool()


def soft_localisation(change: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """C.localisation with weights in [0, 1] in place of a 0/1 mask (B,); equal to it on 0/1 masks."""
    change, weights = change.double().flatten(1), weights.double().flatten(1)
    return (change * weights).sum(1) / change.sum(1) / weights.mean(1)


def shifted(mask: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """(B, H, W) masks moved by dy rows and dx columns, zeros shifted in (no wrap-around)."""
    out = torch.zeros_like(mask)
    H, W = mask.shape[-2:]
    out[:, max(dy, 0):H + min(dy, 0), max(dx, 0):W + min(dx, 0)] = \
        mask[:, max(-dy, 0):H + min(-dy, 0), max(-dx, 0):W + min(-dx, 0)]
    return out


def best_shift(change: torch.Tensor, mask: torch.Tensor, reach: int = 8) -> torch.Tensor:
    """Per image, the largest localisation over the mask's shifts within `reach` px that keep it non-empty."""
    best = torch.full((len(change),), float("nan"), dtype=torch.float64)
    for dy in range(-reach, reach + 1):
        for dx in range(-reach, reach + 1):
            score = C.localisation(change, shifted(mask, dy, dx))
            best = torch.where(torch.isnan(best) | (score > best), score, best)
    return best


def other_bird(labels: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """For each row, another row of the same class (the next one in `rows`, cyclically); itself if alone."""
    out = rows.clone()
    for c in labels[rows].unique():
        same = rows[labels[rows] == c]
        out[labels[rows] == c] = same.roll(1)
    return out


def main(run: str, out_stem: str | None = None) -> dict:
    system, test, _ = load_system_and_test_split(run)
    cfg = system.parts["config"]
    saved = torch.load(Path(run) / RELEVANCE, weights_only=True)
    index, r_kc = saved["images_index"], saved["r_kc"]
    x = torch.stack([test[int(i)][0] for i in index])
    cp = C.concept_pool(system, x)                                   # rows 0..N-1 are test[index]
    labels = torch.as_tensor([int(test[int(i)][1]) for i in index])
    masks = masks_of(test, index)                                    # (N, P, H, W)
    names = list(test.part_names)
    rows = C._subset(len(index), cfg.localisation_images,
                     torch.Generator().manual_seed(streams.stream_seed(cfg.seed, "eval.localisation")))
    classes = C.top_concepts(r_kc, 3)
    used = sorted({k for ks in classes.values() for k in ks})
    factors = test.factors[index]
    concept_part = C.concept_parts(cp.activations, factors, test.factor_names, test.part_factors, used)
    class_mask = {int(c): masks[labels == c].float().mean(0) for c in labels.unique()}   # (P, H, W) in [0, 1]
    partner = other_bird(labels, rows)

    scores = {name: [] for name in ("own", "other bird", "class", "bird", "shifted", "shifted, another part")}
    for k in used:
        take = rows[[int(cp.predicted[r]) in classes and k in classes[int(cp.predicted[r])] for r in rows.tolist()]]
        p = names.index(concept_part[k])
        q = (p + 1) % len(names)                                         # the control part
        take = take[masks[take, p].flatten(1).any(1) & masks[take, q].flatten(1).any(1)]
        if not len(take):
            continue
        phi_max = float(cp.activations[:, k].max())
        change = C.change_maps(system, cp.phi[take], cp.phi_prime[take], k, phi_max)      # (B, H, W)
        partner_of = dict(zip(rows.tolist(), partner.tolist()))
        against = {"own": masks[take, p],
                   "other bird": masks[[partner_of[r] for r in take.tolist()], p],
                   "bird": masks[take].any(1)}
        for name, m in against.items():
            scores[name] += C.localisation(change, m).tolist()
        scores["class"] += soft_localisation(change, torch.stack([class_mask[int(labels[r])][p] for r in take])).tolist()
        scores["shifted"] += best_shift(change, masks[take, p]).tolist()
        scores["shifted, another part"] += best_shift(change, masks[take, q]).tolist()
    summary = {name: {"mean": float(np.nanmean(v)), "median": float(np.nanmedian(v)), "n": int(np.isfinite(v).sum())}
               for name, v in scores.items()}
    summary["run"], summary["images"], summary["concepts"] = run, len(rows), len(used)
    print(json.dumps(summary, indent=1))
    if out_stem:
        Path(out_stem + ".json").write_text(json.dumps(summary, indent=1) + "\n")
    return summary


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else None)
