"""What bounds a reconstruction, measured apart from VisCoIN's training.

VisCoIN's reconstruction x~ = G(Omega(Psi(f(x)))) can follow its input x only as far as two frozen
networks allow, and these measure each one alone, scored with the reconstruction identification of
Table 3 (`metrics.reconstruction_identification`), so a trained run's number reads against them:

- G's reach: each image projected into G's W+ space by gradient descent on the pixel MSE, starting
  from G's average latent (no encoder at all, `project`). If projections are not identified, no
  Omega can do better.
- G's samples: precision and recall (`metrics.precision_recall`, on f's penultimate features) at
  truncation psi < 1, which trades recall for precision where G's average latent draws a good image
  (`truncated_precision_recall`).
- What f's taps carry: a ridge regression from one tap of f (flattened) to the image's pixels,
  fitted on training images, applied to test images (`tap_probe`). If a linear read-out of a tap
  identifies images, the information Psi needs is in that tap.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
from tqdm import tqdm

from viscoin_core.eval.metrics import precision_recall, reconstruction_identification


def project(G: nn.Module, x: torch.Tensor, steps: int = 300, lr: float = 0.05) -> tuple[torch.Tensor, list[float]]:
    """Per-image W+ projection of x (B, 3, H, W) in [-1, 1] at G's resolution.

    Adam on one style vector per layer and image (B, num_ws, w_dim), from G.mapping.w_avg, minimising
    the mean squared pixel error of G.synthesis (noise_mode 'const'). Returns the projected images
    (B, 3, H, W), clamped to [-1, 1], and the MSE before each step and after the last (steps + 1)."""
    if steps < 1:
        raise ValueError(f"projection needs steps >= 1, got {steps}")
    if x.shape[-1] != G.img_resolution:
        raise ValueError(f"images are {x.shape[-1]} px but G makes {G.img_resolution} px")
    params = [p for p in G.parameters()]
    needs_grad = [p.requires_grad for p in params]
    G.requires_grad_(False)
    try:
        ws = G.mapping.w_avg.detach().float().expand(len(x), G.num_ws, -1).clone().requires_grad_(True)
        optimiser = torch.optim.Adam([ws], lr=lr)
        history = []
        for _ in tqdm(range(steps), desc="W+ projection", leave=False):
            loss = (G.synthesis(ws, noise_mode="const") - x).square().mean()
            history.append(loss.item())
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
        with torch.no_grad():
            x_proj = G.synthesis(ws, noise_mode="const").clamp(-1, 1)
        history.append(float((x_proj - x).square().mean()))
    finally:
        for p, flag in zip(params, needs_grad):
            p.requires_grad_(flag)
    return x_proj, history


def ridge_fit(a: torch.Tensor, y: torch.Tensor, ridge: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(W (D, T), b (T,)) minimising ||a W + b - y||^2 + ridge ||W||^2 for a (N, D), y (N, T): the
    intercept is not penalised (both sides are centred first).

    Solved in float64, in the primal (D x D) or the dual (N x N) form, whichever is smaller."""
    if ridge <= 0:
        raise ValueError(f"ridge must be > 0, got {ridge}")
    a, y = a.double(), y.double()
    a_mean, y_mean = a.mean(0), y.mean(0)
    a, yc = a - a_mean, y - y_mean
    if a.shape[1] <= a.shape[0]:
        weights = torch.linalg.solve(a.T @ a + ridge * torch.eye(a.shape[1], dtype=torch.float64), a.T @ yc)
    else:
        weights = a.T @ torch.linalg.solve(a @ a.T + ridge * torch.eye(a.shape[0], dtype=torch.float64), yc)
    return weights, y_mean - a_mean @ weights


def tap_features(f: nn.Module, x: torch.Tensor, tap: str, batch: int = 128) -> torch.Tensor:
    """f's `tap` map ('layer2', 'layer3' or 'layer4') for x in [-1, 1], flattened: (B, C * h * w)."""
    out = []
    with torch.no_grad():
        for start in range(0, len(x), batch):
            out.append(f.forward_taps(x[start:start + batch])[1][tap].float().flatten(1))
    return torch.cat(out)


def tap_probe(f: nn.Module, x_train: torch.Tensor, x_test: torch.Tensor, tap: str, ridge: float) -> torch.Tensor:
    """x_test's pixels (B, 3, H, W) as a ridge regression reads them from f's `tap`, fitted on x_train.

    Features are standardised with the training images' mean and deviation, so one `ridge` suits
    every tap."""
    a, b = tap_features(f, x_train, tap), tap_features(f, x_test, tap)
    mean, std = a.mean(0), a.std(0) + 1e-6
    weights, intercept = ridge_fit((a - mean) / std, x_train.flatten(1), ridge)
    return (((b - mean) / std).double() @ weights + intercept).float().view_as(x_test)


def per_class(labels: torch.Tensor, n: int) -> list[int]:
    """The first `n` indices of every class present in labels (in class order): a balanced subset."""
    labels = torch.as_tensor(labels)
    return [i for c in labels.unique().tolist() for i in (labels == c).nonzero().flatten()[:n].tolist()]


def scored(x_rec: torch.Tensor, x: torch.Tensor, labels: torch.Tensor) -> dict:
    """MSE and reconstruction identification of x_rec against x (what `reach` reports per method)."""
    return {"mse": float((x_rec - x).square().mean()), **reconstruction_identification(x_rec, x, labels)}


def reach(G: nn.Module, f: nn.Module, x_train: torch.Tensor, x_test: torch.Tensor, labels: torch.Tensor,
          steps: int = 300, taps: Sequence[str] = ("layer2", "layer3", "layer4"), ridge: float = 100.0) -> dict:
    """{'projection': scores, 'probe_<tap>': scores, ...} for the test images x_test (B, 3, H, W) with
    `labels`, each score as `scored` gives it, and 'images': the projections and probe outputs (for figures)."""
    x_proj, history = project(G, x_test, steps=steps)
    result = {"projection": {**scored(x_proj, x_test, labels), "steps": steps, "mse_start": history[0]}}
    images = {"projection": x_proj}
    for tap in taps:
        x_probe = tap_probe(f, x_train, x_test, tap, ridge).clamp(-1, 1)
        result[f"probe_{tap}"] = {**scored(x_probe, x_test, labels), "ridge": ridge,
                                  "n_train": len(x_train)}
        images[f"probe_{tap}"] = x_probe
    result["images"] = images
    return result


def truncated_precision_recall(G: nn.Module, f: nn.Module, x_real: torch.Tensor, psis: Sequence[float],
                               seed: int = 0, batch: int = 100) -> dict[str, dict[str, float]]:
    """{str(psi): {'precision', 'recall'}} of as many samples of G as there are real images x_real
    (N, 3, H, W) in [-1, 1], on f's penultimate features; every psi draws the same z (seeded)."""
    with torch.no_grad():
        real = torch.cat([f.penultimate(x_real[s:s + batch]) for s in range(0, len(x_real), batch)])
        z = torch.randn(len(x_real), G.z_dim, generator=torch.Generator().manual_seed(seed))
        result = {}
        for psi in psis:
            fake = torch.cat([f.penultimate(G.synthesis(G.mapping(z[s:s + batch], None, truncation_psi=psi),
                                                        noise_mode="const").clamp(-1, 1))
                              for s in range(0, len(z), batch)])
            result[str(psi)] = precision_recall(real, fake)
    return result
