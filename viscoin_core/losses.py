"""The VisCoIN training loss, one function per term, named after equations (1)-(6) of the paper.

    L = alpha * CE(g(x), f(x))                                              output fidelity
      + ||x~ - x||_2^2 + ||x~ - x||_1 + beta * LPIPS(x~, x) + gamma * CE(f(x~), f(x))   reconstruction
      + delta * ||Phi(x)||_1                                                 sparsity
      + orthogonality(W_Psi)                                                 (kernels of Psi's last conv)
      + ||w_x - w_bar||_2^2                                                  Omega regularisation
      [+ lambda * ||Omega(Psi(f(G(w)))) - w||^2 on the synthetic images      latent regression, not in
                                                                             the paper; off by default]

With `f_temperature` T (not in the paper; 1 = off) f's logits, on x and on x~, are divided by T in
both cross-entropies, so the targets are softmax(f(x) / T) and the reconstruction term compares
softmax(f(x~) / T) with them; g's logits are left as they are.

Norms are averaged over their elements (pixels, concept entries, latent coordinates) and over the
batch, as in the authors' implementation: the published weights (beta = 3, gamma = 0.1, ...) only
make sense at that scale. CE(a, b) is the cross-entropy of softmax(a) against the soft targets
softmax(b), computed with log-softmax (stable for large logits); targets never carry gradient.
Images are in [-1, 1]; LPIPS takes them as they are (the network comes from
`viscoin_core.eval.metrics.build_lpips`: 'vgg' published, 'random' offline).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

SPARSITY_CHOICES = ("paper", "code")
ORTHOGONALITY_CHOICES = ("gram", "code")
# Targets of the latent regression: "w", one w per sample repeated over its style vectors; "w+", one
# target per style vector (the synthetic samples are drawn with style mixing, so the targets differ).
LATENT_REGRESSION_SPACES = ("w", "w+")


def soft_cross_entropy(logits: torch.Tensor, target_logits: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of -sum_c softmax(target)_c * log_softmax(logits)_c (targets detached)."""
    target = F.softmax(target_logits.detach().float(), dim=1)
    return -(target * F.log_softmax(logits.float(), dim=1)).sum(dim=1).mean()


def output_fidelity(g_logits: torch.Tensor, f_logits: torch.Tensor) -> torch.Tensor:
    """Eq. (1): CE(g(x), f(x)) with f's soft predictions as targets (weight alpha applied by the caller)."""
    return soft_cross_entropy(g_logits, f_logits)


def reconstruction_l2(x_rec: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """||x~ - x||_2^2, averaged over pixels and batch."""
    return (x_rec.float() - x.float()).square().mean()


def reconstruction_l1(x_rec: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """||x~ - x||_1, averaged over pixels and batch."""
    return (x_rec.float() - x.float()).abs().mean()


def perceptual(x_rec: torch.Tensor, x: torch.Tensor, lpips_net: nn.Module) -> torch.Tensor:
    """LPIPS(x~, x), mean over the batch; both in [-1, 1]."""
    return lpips_net(x_rec, x).mean()


def reconstruction_classification(f_rec_logits: torch.Tensor, f_logits: torch.Tensor) -> torch.Tensor:
    """CE(f(x~), f(x)): f should see the reconstruction as it saw the original (weight gamma)."""
    return soft_cross_entropy(f_rec_logits, f_logits)


def sparsity(phi: torch.Tensor, mode: str = "paper") -> torch.Tensor:
    """Sparsity of the concept maps Phi (B, K, 3, 3), weight delta applied by the caller.

    'paper': ||Phi||_1 (mean |entry|). 'code': the released code's L1 of the L2-normalised pooled
    activations (B, K) plus L1 of Phi, both as means.
    """
    if mode == "paper":
        return phi.float().abs().mean()
    if mode == "code":
        pooled = F.normalize(phi.float().amax(dim=(2, 3)), p=2, dim=1)
        return pooled.abs().mean() + phi.float().abs().mean()
    raise ValueError(f"sparsity mode {mode!r}; choose one of {list(SPARSITY_CHOICES)}")


def orthogonality(kernels: torch.Tensor, mode: str = "gram") -> torch.Tensor:
    """Orthogonality of Psi's last convolution kernels (K, ...), each row L2-normalised to w_k.

    'gram': ||W W^T - I||_F^2 / K^2, zero exactly when the kernels are orthogonal.
    'code': the released code's (sum_kl |w_k| . |w_l| - K) / K^2 (absolute values taken before the
    product, so it is zero only for kernels with disjoint supports).
    """
    w = F.normalize(kernels.float().flatten(1), dim=1)   # (K, D)
    k = w.shape[0]
    if mode == "gram":
        eye = torch.eye(k, device=w.device)
        return (w @ w.T - eye).square().sum() / k**2
    if mode == "code":
        a = w.abs()
        return ((a @ a.T).sum() - k) / k**2
    raise ValueError(f"orthogonality mode {mode!r}; choose one of {list(ORTHOGONALITY_CHOICES)}")


def omega_regularisation(ws: torch.Tensor, w_bar: torch.Tensor) -> torch.Tensor:
    """||w_x - w_bar||_2^2, averaged over style vectors, coordinates and batch (w_bar detached)."""
    return (ws.float() - w_bar.detach().float()).square().mean()


def latent_regression(ws_pred: torch.Tensor, ws_target: torch.Tensor) -> torch.Tensor:
    """Mean squared error between predicted and known style vectors (B, num_ws, w_dim), averaged over
    samples, style vectors and channels (units of W squared; 0 when equal). The target is detached:
    it is the latent G was sampled from, not something to move."""
    if ws_pred.shape != ws_target.shape:
        raise ValueError(f"latent regression: prediction {tuple(ws_pred.shape)} and target "
                         f"{tuple(ws_target.shape)} differ in shape")
    return (ws_pred.float() - ws_target.detach().float()).square().mean()


def viscoin_loss(*, g_logits, f_logits, x_rec, x, f_rec_logits, phi, psi_kernels, ws, w_bar, lpips_net,
                 alpha: float, beta: float, gamma: float, delta: float, orthogonality_weight: float = 1.0,
                 omega_weight: float = 1.0, sparsity_mode: str = "paper", orthogonality_mode: str = "gram",
                 latent_weight: float = 0.0, ws_synthetic: torch.Tensor | None = None,
                 ws_synthetic_target: torch.Tensor | None = None, f_temperature: float = 1.0,
                 ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The total loss and its weighted terms, each computed once (keys name the terms for logs and NaN reports).

    The latent regression term (`latent_weight` times `latent_regression` of Omega's style vectors for
    the synthetic images, `ws_synthetic`, against the latents they were sampled from) is present only
    when `latent_weight` > 0 and a target is given, so with it off the terms, their sum and the logs
    are exactly the paper's. `f_temperature` divides f's logits (on x and x~) before both
    cross-entropies; at 1 they are untouched.
    """
    if f_temperature != 1.0:
        f_logits, f_rec_logits = f_logits / f_temperature, f_rec_logits / f_temperature
    terms = {
        "output_fidelity": alpha * output_fidelity(g_logits, f_logits),
        "rec_l2": reconstruction_l2(x_rec, x),
        "rec_l1": reconstruction_l1(x_rec, x),
        "rec_lpips": beta * perceptual(x_rec, x, lpips_net),
        "rec_classification": gamma * reconstruction_classification(f_rec_logits, f_logits),
        "sparsity": delta * sparsity(phi, sparsity_mode),
        "orthogonality": orthogonality_weight * orthogonality(psi_kernels, orthogonality_mode),
        "omega_reg": omega_weight * omega_regularisation(ws, w_bar),
    }
    if latent_weight > 0 and ws_synthetic_target is not None:
        terms["latent_regression"] = latent_weight * latent_regression(ws_synthetic, ws_synthetic_target)
    return sum(terms.values()), terms
