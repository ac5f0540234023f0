"""The three trained parts of VisCoIN: Psi (concept extractor), Theta (explainer), Omega (concept translator).

    x --f (frozen)--> taps --Psi--> Phi (B, K, 3, 3), Phi' (B, 9K)
    Phi --Theta--> logits of g = Theta o Psi (the interpretable network)
    (Phi, Phi') --Omega--> ws (B, num_ws, w_dim) --G.synthesis (frozen)--> x~ in [-1, 1]

Psi follows the authors' architecture: one convolution per tap bringing layer2/3/4 to layer4's grid
(strides 4, 2, 1), concatenation, a fusing 3x3 convolution, then a 1x1 convolution to K concept
maps with ReLU, adaptively average-pooled to 3x3 (Phi), and a parallel branch (the fused map pooled
to 3x3, two fully connected layers with ReLU) giving Phi', which only helps reconstruction.

`fuse_at` picks the grid the taps are brought to. 'layer4' is the paper's (8x8 at 256 px). Below
96 px layer4's grid is smaller than 3x3 (1x1 at 32 px): the pooling then copies one vector into all
nine cells, so neither Phi nor Phi' has a spatial layout, and where the bird stands must survive
as channel values that the class losses are free to discard. 'layer2' (4x4 at 32 px) keeps the
layout: coarser taps are upsampled (nearest) to it before their convolution. (On the 32 px toybirds
that carried more of the bird's position into Omega's input, but did not make reconstructions
follow their inputs more: results/mini/README.md.)

Omega has one fully connected layer per style vector of G. Vectors with index < coarse_layer or
> mid_layer read Phi'; those in [coarse_layer, mid_layer] read the flattened Phi. The output is added
to w-bar: G's average latent `w_avg`, frozen (the paper), or a zero vector that is trained
(`w_bar='zeros_trainable'`, the released code).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

W_BAR_CHOICES = ("w_avg", "zeros_trainable")
FUSE_AT_CHOICES = ("layer4", "layer3", "layer2")
TAPS = ("layer2", "layer3", "layer4")     # grids 8x, 16x, 32x smaller than the image


class ConceptExtractor(nn.Module):
    """Psi: taps of f -> (Phi (B, K, 3, 3) >= 0, Phi' (B, 9K) >= 0).

    `tap_channels` are the channel counts of layer2, layer3, layer4 (f.tap_channels); the input
    resolution may be any multiple of 32 (layer4's grid is then H/32, layer2's four times larger).
    `fuse_at` names the tap whose grid the others are brought to (module docstring).
    """

    def __init__(self, n_concepts: int, tap_channels: tuple[int, int, int], latent_channels: int = 512,
                 fuse_at: str = "layer4"):
        super().__init__()
        if n_concepts < 1:
            raise ValueError(f"n_concepts (K) must be >= 1, got {n_concepts}")
        if fuse_at not in FUSE_AT_CHOICES:
            raise ValueError(f"fuse_at={fuse_at!r}; choose one of {list(FUSE_AT_CHOICES)}")
        self.n_concepts, self.latent_channels, self.fuse_at = n_concepts, latent_channels, fuse_at
        target = TAPS.index(fuse_at)
        # A finer tap is strided down to the target grid (stride 4: kernel 5, stride 2: kernel 3);
        # a coarser one is upsampled by `upsample[tap]` first, then convolved at stride 1.
        self.upsample = {}
        for tap, channels in zip(TAPS, tap_channels):
            steps = target - TAPS.index(tap)                # > 0: finer than the target grid
            stride, self.upsample[tap] = 2 ** max(steps, 0), 2 ** max(-steps, 0)
            kernel = 5 if stride == 4 else 3
            setattr(self, f"from_{tap}", nn.Conv2d(channels, latent_channels, kernel_size=kernel, stride=stride,
                                                  padding=kernel // 2))
        self.fuse = nn.Conv2d(3 * latent_channels, 3 * latent_channels, kernel_size=3, padding=1)
        self.to_concepts = nn.Conv2d(3 * latent_channels, n_concepts, kernel_size=1)  # kernels W_Psi
        self.prime1 = nn.Linear(9 * 3 * latent_channels, 9 * n_concepts)
        self.prime2 = nn.Linear(9 * n_concepts, 9 * n_concepts, bias=False)

    def forward(self, taps: dict[str, torch.Tensor] | tuple) -> tuple[torch.Tensor, torch.Tensor]:
        maps = [taps[t] for t in TAPS] if isinstance(taps, dict) else list(taps)
        h = torch.cat([F.relu(getattr(self, f"from_{t}")(self._upsampled(t, m))) for t, m in zip(TAPS, maps)],
                      dim=1)                                            # (B, 3L, grid of fuse_at)
        h = F.relu(self.fuse(h))
        phi = F.adaptive_avg_pool2d(F.relu(self.to_concepts(h)), 3)      # (B, K, 3, 3)
        pooled = F.adaptive_avg_pool2d(h, 3).flatten(1)                  # (B, 27L)
        phi_prime = F.relu(self.prime2(F.relu(self.prime1(pooled))))      # (B, 9K)
        return phi, phi_prime

    def _upsampled(self, tap: str, m: torch.Tensor) -> torch.Tensor:
        factor = self.upsample[tap]
        return m if factor == 1 else F.interpolate(m, scale_factor=factor, mode="nearest")


class Explainer(nn.Module):
    """Theta: Phi (B, K, 3, 3) -> logits (B, C) = linear(spatial max of Phi); `linear.weight` is W_Theta (C, K)."""

    def __init__(self, n_concepts: int, n_classes: int):
        super().__init__()
        self.linear = nn.Linear(n_concepts, n_classes)

    @staticmethod
    def pool(phi: torch.Tensor) -> torch.Tensor:
        """Concept activations (B, K): the spatial maximum of each 3x3 map."""
        return phi.amax(dim=(2, 3))

    def forward(self, phi: torch.Tensor) -> torch.Tensor:
        return self.linear(self.pool(phi))


def _normalize_2nd_moment(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    # StyleGAN's input normalisation: unit root-mean-square per sample.
    return x * (x.square().mean(dim=1, keepdim=True) + eps).rsqrt()


class ConceptTranslator(nn.Module):
    """Omega: (Phi (B, K, 3, 3), Phi' (B, 9K)) -> ws (B, num_ws, w_dim), fed to G.synthesis.

    Each style vector i has its own fully connected layer (StyleGAN's mapping conventions, as in the
    authors' implementation: inputs normalised to unit second moment, equalised learning rate with
    `lr_multiplier`, leaky ReLU with gain sqrt(2) unless `activation='linear'`), reading Phi' when
    i < coarse_layer or i > mid_layer and Phi otherwise; w-bar is added to every vector.
    """

    def __init__(self, n_concepts: int, num_ws: int, w_dim: int, coarse_layer: int = 3, mid_layer: int = 12,
                 w_bar: str = "w_avg", w_avg: torch.Tensor | None = None, activation: str = "lrelu",
                 lr_multiplier: float = 0.01):
        super().__init__()
        if n_concepts < 1:
            raise ValueError(f"n_concepts (K) must be >= 1, got {n_concepts}")
        if not 0 <= coarse_layer <= mid_layer:
            raise ValueError(f"need 0 <= coarse_layer <= mid_layer, got coarse_layer={coarse_layer}, "
                             f"mid_layer={mid_layer}")
        if mid_layer >= num_ws:
            raise ValueError(f"mid_layer={mid_layer} must be < num_ws={num_ws} (G has {num_ws} style vectors)")
        if w_bar not in W_BAR_CHOICES:
            raise ValueError(f"w_bar={w_bar!r}; choose one of {list(W_BAR_CHOICES)}")
        if activation not in ("lrelu", "linear"):
            raise ValueError(f"activation={activation!r}; choose 'lrelu' or 'linear'")
        self.n_concepts, self.num_ws, self.w_dim = n_concepts, num_ws, w_dim
        self.coarse_layer, self.mid_layer, self.activation = coarse_layer, mid_layer, activation
        self.lr_multiplier = lr_multiplier
        in_features = 9 * n_concepts
        # Stored divided by lr_multiplier and rescaled in forward (equalised learning rate).
        self.weight = nn.Parameter(torch.randn(num_ws, w_dim, in_features) / lr_multiplier)
        self.bias = nn.Parameter(torch.zeros(num_ws, w_dim))
        self.weight_gain = lr_multiplier / math.sqrt(in_features)
        # Which input each style vector reads: 0 = Phi (mid-level), 1 = Phi' (coarse and fine).
        index = torch.arange(num_ws)
        self.register_buffer("reads_prime", ((index < coarse_layer) | (index > mid_layer)).long(), persistent=False)
        if w_bar == "w_avg":
            if w_avg is None:
                raise ValueError("w_bar='w_avg' needs G's average latent (G.mapping.w_avg)")
            self.register_buffer("w_bar", w_avg.detach().clone().float().reshape(w_dim))
        else:
            self.w_bar = nn.Parameter(torch.zeros(w_dim))
        self.w_bar_mode = w_bar

    def forward(self, phi: torch.Tensor, phi_prime: torch.Tensor) -> torch.Tensor:
        inputs = torch.stack([_normalize_2nd_moment(phi.flatten(1)),
                              _normalize_2nd_moment(phi_prime)])          # (2, B, 9K)
        x = inputs[self.reads_prime]                                      # (num_ws, B, 9K)
        ws = torch.einsum("nbi,noi->bno", x, self.weight * self.weight_gain)
        ws = ws + self.bias * self.lr_multiplier                          # (B, num_ws, w_dim)
        if self.activation == "lrelu":
            ws = F.leaky_relu(ws, 0.2) * math.sqrt(2)
        return ws + self.w_bar


def concepts(f: nn.Module, psi: ConceptExtractor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(Phi, Phi') for images x in [-1, 1]; f runs without a graph (it is frozen, its taps are inputs)."""
    with torch.no_grad():
        _, taps = f.forward_taps(x)
    return psi(taps)


def reconstruct(G: nn.Module, omega: ConceptTranslator, phi: torch.Tensor, phi_prime: torch.Tensor,
                noise_mode: str = "const") -> torch.Tensor:
    """x~ = G.synthesis(Omega(Phi, Phi')), images in [-1, 1]."""
    return G.synthesis(omega(phi, phi_prime), noise_mode=noise_mode)
