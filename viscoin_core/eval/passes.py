"""The one pass over test images that the trainer's checks, `evaluate` and the audit share, and what
its outputs give: accuracies, reconstruction distances, identification, FID and KID.

`image_pass` walks a fixed list of images in batches and concatenates whatever the caller's
per-batch function returns; each caller computes in that function only what it needs (the trainer
its loss terms, `evaluate` the concept maps, the audit the released code's FID inputs).
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from tqdm import tqdm   # text bars: a widget bar shows "model not found" once its page is reloaded

from viscoin_core.eval import metrics as M


def image_pass(batch_fn: Callable[[torch.Tensor], dict[str, torch.Tensor]], dataset,
               index: Sequence[int] | torch.Tensor, batch_size: int, device: str | torch.device,
               desc: str = "test pass") -> dict[str, torch.Tensor]:
    """One pass over dataset[index] in batches of `batch_size` images, under no_grad.

    dataset[i] is (image (3, H, W) in [-1, 1], label). `batch_fn(x)` gets each batch x (B, 3, H, W)
    on `device` and returns {name: tensor with B rows}. Returns every name concatenated on the CPU
    in the order of `index`, and 'labels' (N,) int64.
    """
    out: dict[str, list[torch.Tensor]] = {"labels": []}
    with torch.no_grad():
        for start in tqdm(range(0, len(index), batch_size), desc=desc, leave=False):
            items = [dataset[int(i)] for i in index[start:start + batch_size]]
            x = torch.stack([image for image, _ in items]).to(device)
            out["labels"].append(torch.tensor([int(label) for _, label in items]))
            for name, value in batch_fn(x).items():
                out.setdefault(name, []).append(value.cpu())
    return {name: torch.cat(values) for name, values in out.items()}


def image_metrics(out: dict[str, torch.Tensor], g_logits: torch.Tensor) -> dict[str, float]:
    """f and g accuracy (%), fidelity (%: g agrees with f), mean MSE and mean LPIPS of the reconstructions,
    from a pass's 'f_logits', 'labels', 'mse' and 'lpips' and g's logits on the same images."""
    return {"f_accuracy": M.accuracy(out["f_logits"], out["labels"]), "g_accuracy": M.accuracy(g_logits, out["labels"]),
            "fidelity": M.fidelity(g_logits, out["f_logits"]), "mse": float(out["mse"].mean()),
            "lpips": float(out["lpips"].mean())}


def identification(out: dict[str, torch.Tensor]) -> dict[str, float]:
    """Reconstruction identification (%) and its chance levels from a pass's 'thumbs', 'thumbs_rec', 'labels'."""
    return M.reconstruction_identification(out["thumbs_rec"], out["thumbs"], out["labels"])


def fid_kid(real: torch.Tensor, fake: torch.Tensor, seed: int) -> dict[str, float]:
    """FID, KID and KID's std between two feature sets (N, D); KID's subsets of min(1000, N) drawn from `seed`."""
    kid, kid_std = M.kid_from_features(real, fake, subset_size=min(1000, len(real)), seed=seed)
    return {"fid": M.fid_from_features(real, fake), "kid": kid, "kid_std": kid_std}
