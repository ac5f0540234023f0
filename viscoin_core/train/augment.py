"""Adaptive discriminator augmentation (Karras et al. 2020), written as plain functions.

Every image D sees, real or generated, goes through the same random, differentiable pipeline:
geometric transforms (x-flip, 90-degree rotations, integer translation, isotropic scaling, arbitrary
rotation, anisotropic scaling, fractional translation) composed into one affine map and applied
with a single resampling, then colour transforms (brightness, contrast, luma flip, hue rotation,
saturation) composed into one 4x4 matrix. Each transform is applied to each image independently
with probability `p` (arbitrary rotation twice with probability 1 - sqrt(1 - p), so that at least
one rotation happens with probability p, as in the original). Gradients flow through every step,
which is what lets G learn through D's augmented view.

Strengths and spreads follow the official 'bgc' pipeline. One simplification: the official code
resamples through a 2x upsampled image with a wavelet filter to limit aliasing; here the affine
map is applied with one bilinear `grid_sample` and reflection padding. Flips, 90-degree rotations
and integer translations still land exactly on pixel centres.

Images are (B, C, H, W) in [-1, 1]; the colour transforms expect C = 3.

`p` itself is tuned by `ada_adjust`: every few steps, r_t = E[sign(D(real))] is compared with a
target (0.6); p moves up when D is overconfident on reals (r_t > target) and down otherwise, by
batch * interval / (ada_kimg * 1000) per adjustment, so p can cross [0, 1] in `ada_kimg` kimg.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

GEOMETRIC = ("xflip", "rotate90", "xint", "scale", "rotate", "aniso", "xfrac")
COLOR = ("brightness", "contrast", "lumaflip", "hue", "saturation")

# Spreads of the official 'bgc' pipeline (fractions of the image size for translations, log2 units
# for scalings, fractions of pi for rotations).
XINT_MAX = 0.125
SCALE_STD = 0.2
ROTATE_MAX = 1.0
ANISO_STD = 0.2
XFRAC_STD = 0.125
BRIGHTNESS_STD = 0.2
CONTRAST_STD = 0.5
HUE_MAX = 1.0
SATURATION_STD = 1.0


# ---------------------------------------------------------------------------------------------
# Transform matrices. Geometric ones act on homogeneous pixel coordinates (x right, y down, origin
# at the image centre); colour ones on homogeneous RGB. All take per-sample tensors of shape (B,).

def translate2d(tx: torch.Tensor, ty: torch.Tensor) -> torch.Tensor:
    """(B, 3, 3) translation by (tx, ty) pixels."""
    m = torch.eye(3, dtype=tx.dtype, device=tx.device).repeat(tx.shape[0], 1, 1)
    m[:, 0, 2], m[:, 1, 2] = tx, ty
    return m


def scale2d(sx: torch.Tensor, sy: torch.Tensor) -> torch.Tensor:
    """(B, 3, 3) scaling about the image centre; sx = -1 is a horizontal flip."""
    m = torch.eye(3, dtype=sx.dtype, device=sx.device).repeat(sx.shape[0], 1, 1)
    m[:, 0, 0], m[:, 1, 1] = sx, sy
    return m


def rotate2d(theta: torch.Tensor) -> torch.Tensor:
    """(B, 3, 3) rotation by `theta` radians, counter-clockwise as seen on screen (y points down).

    theta = pi/2 does what `torch.rot90(x, 1, dims=(2, 3))` does: pixel (row r, col c) of a square
    image moves to (W - 1 - c, r).
    """
    c, s = torch.cos(theta), torch.sin(theta)
    m = torch.eye(3, dtype=theta.dtype, device=theta.device).repeat(theta.shape[0], 1, 1)
    m[:, 0, 0], m[:, 0, 1], m[:, 1, 0], m[:, 1, 1] = c, s, -s, c
    return m


def _luma_axis(dtype, device) -> torch.Tensor:
    return torch.full((3,), 1 / math.sqrt(3), dtype=dtype, device=device)


def _color_eye(b: int, dtype, device) -> torch.Tensor:
    return torch.eye(4, dtype=dtype, device=device).repeat(b, 1, 1)


def brightness(b: torch.Tensor) -> torch.Tensor:
    """(B, 4, 4): add b to every channel."""
    m = _color_eye(b.shape[0], b.dtype, b.device)
    m[:, :3, 3] = b[:, None]
    return m


def contrast(c: torch.Tensor) -> torch.Tensor:
    """(B, 4, 4): multiply every channel by c (about mid grey, 0 in [-1, 1])."""
    m = _color_eye(c.shape[0], c.dtype, c.device)
    m[:, :3, :3] *= c[:, None, None]
    return m


def luma_flip(i: torch.Tensor) -> torch.Tensor:
    """(B, 4, 4): reflect colours through the plane orthogonal to the luma axis where i = 1, identity where 0."""
    v = _luma_axis(i.dtype, i.device)
    m = _color_eye(i.shape[0], i.dtype, i.device)
    m[:, :3, :3] -= 2 * torch.outer(v, v) * i[:, None, None]
    return m


def hue_rotation(theta: torch.Tensor) -> torch.Tensor:
    """(B, 4, 4): rotate colours by `theta` radians about the luma axis (Rodrigues' formula)."""
    v = _luma_axis(theta.dtype, theta.device)
    cross = torch.tensor([[0, -v[2], v[1]], [v[2], 0, -v[0]], [-v[1], v[0], 0]],
                         dtype=theta.dtype, device=theta.device)
    c, s = torch.cos(theta)[:, None, None], torch.sin(theta)[:, None, None]
    eye3 = torch.eye(3, dtype=theta.dtype, device=theta.device)
    m = _color_eye(theta.shape[0], theta.dtype, theta.device)
    m[:, :3, :3] = c * eye3 + s * cross + (1 - c) * torch.outer(v, v)
    return m


def saturation(s: torch.Tensor) -> torch.Tensor:
    """(B, 4, 4): keep the luma component, scale the chroma (orthogonal) component by s."""
    v = _luma_axis(s.dtype, s.device)
    luma = torch.outer(v, v)
    eye3 = torch.eye(3, dtype=s.dtype, device=s.device)
    m = _color_eye(s.shape[0], s.dtype, s.device)
    m[:, :3, :3] = luma + (eye3 - luma) * s[:, None, None]
    return m


# ---------------------------------------------------------------------------------------------
# Applying matrices to images.

def apply_geometric(x: torch.Tensor, inverse: torch.Tensor) -> torch.Tensor:
    """Resample x (B, C, H, W) so output pixel q shows input pixel `inverse @ q` (pixel units, centred).

    Bilinear, reflection padding. An all-identity batch returns x untouched.
    """
    b, _, h, w = x.shape
    eye = torch.eye(3, dtype=inverse.dtype, device=inverse.device)
    if torch.equal(inverse, eye.expand_as(inverse)):
        return x
    # grid_sample's coordinates (align_corners=False) are pixel coordinates scaled by 2 / size.
    to_norm = torch.diag(torch.tensor([2 / w, 2 / h, 1.0], dtype=inverse.dtype, device=inverse.device))
    from_norm = torch.diag(torch.tensor([w / 2, h / 2, 1.0], dtype=inverse.dtype, device=inverse.device))
    theta = (to_norm @ inverse @ from_norm)[:, :2, :].to(x.dtype)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def apply_color(x: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
    """Apply per-sample (B, 4, 4) colour matrices to x (B, 3, H, W). An all-identity batch returns x."""
    eye = torch.eye(4, dtype=matrix.dtype, device=matrix.device)
    if torch.equal(matrix, eye.expand_as(matrix)):
        return x
    if x.shape[1] != 3:
        raise ValueError(f"colour augmentation needs 3 channels, got {x.shape[1]}")
    m = matrix.to(x.dtype)
    return torch.einsum("bij,bjhw->bihw", m[:, :3, :3], x) + m[:, :3, 3, None, None]


# ---------------------------------------------------------------------------------------------
# Sampling the random pipeline.

def _gate(values: torch.Tensor, neutral: float, prob: float, generator) -> torch.Tensor:
    """Keep each sample's value with probability `prob`, else use the neutral value (identity)."""
    keep = torch.rand(values.shape[0], generator=generator, dtype=torch.float64) < prob
    return torch.where(keep, values, torch.full_like(values, neutral))


def sample_geometric(batch: int, p: float, height: int, width: int, generator: torch.Generator | None = None,
                     enabled: tuple[str, ...] = GEOMETRIC) -> torch.Tensor:
    """(B, 3, 3) inverse geometric maps (output pixel -> input pixel), float64, on CPU.

    The same number of random draws is made whatever p is, so runs stay aligned across p.
    """
    g, dt = generator, torch.float64
    inv = torch.eye(3, dtype=dt).repeat(batch, 1, 1)

    def on(name: str, prob: float) -> float:
        return prob if name in enabled else 0.0

    i = torch.floor(torch.rand(batch, generator=g, dtype=dt) * 2)
    inv = inv @ scale2d(1 - 2 * _gate(i, 0, on("xflip", p), g), torch.ones(batch, dtype=dt))
    k = torch.floor(torch.rand(batch, generator=g, dtype=dt) * 4)
    inv = inv @ rotate2d(-math.pi / 2 * _gate(k, 0, on("rotate90", p), g))
    t = (torch.rand(batch, 2, generator=g, dtype=dt) * 2 - 1) * XINT_MAX
    keep = _gate(torch.ones(batch, dtype=dt), 0, on("xint", p), g)
    inv = inv @ translate2d(-torch.round(t[:, 0] * width) * keep, -torch.round(t[:, 1] * height) * keep)
    s = _gate(torch.exp2(torch.randn(batch, generator=g, dtype=dt) * SCALE_STD), 1, on("scale", p), g)
    inv = inv @ scale2d(1 / s, 1 / s)
    p_rot = 1 - math.sqrt(max(1 - on("rotate", p), 0.0))
    theta = _gate((torch.rand(batch, generator=g, dtype=dt) * 2 - 1) * math.pi * ROTATE_MAX, 0, p_rot, g)
    inv = inv @ rotate2d(-theta)
    s = _gate(torch.exp2(torch.randn(batch, generator=g, dtype=dt) * ANISO_STD), 1, on("aniso", p), g)
    inv = inv @ scale2d(1 / s, s)
    theta = _gate((torch.rand(batch, generator=g, dtype=dt) * 2 - 1) * math.pi * ROTATE_MAX, 0, p_rot, g)
    inv = inv @ rotate2d(-theta)
    t = torch.randn(batch, 2, generator=g, dtype=dt) * XFRAC_STD
    keep = _gate(torch.ones(batch, dtype=dt), 0, on("xfrac", p), g)
    inv = inv @ translate2d(-t[:, 0] * width * keep, -t[:, 1] * height * keep)
    return inv


def sample_color(batch: int, p: float, generator: torch.Generator | None = None,
                 enabled: tuple[str, ...] = COLOR) -> torch.Tensor:
    """(B, 4, 4) colour matrices, float64, on CPU; applied in the order brightness .. saturation."""
    g, dt = generator, torch.float64
    m = torch.eye(4, dtype=dt).repeat(batch, 1, 1)

    def on(name: str) -> float:
        return p if name in enabled else 0.0

    b = _gate(torch.randn(batch, generator=g, dtype=dt) * BRIGHTNESS_STD, 0, on("brightness"), g)
    m = brightness(b) @ m
    c = _gate(torch.exp2(torch.randn(batch, generator=g, dtype=dt) * CONTRAST_STD), 1, on("contrast"), g)
    m = contrast(c) @ m
    i = _gate(torch.floor(torch.rand(batch, generator=g, dtype=dt) * 2), 0, on("lumaflip"), g)
    m = luma_flip(i) @ m
    theta = _gate((torch.rand(batch, generator=g, dtype=dt) * 2 - 1) * math.pi * HUE_MAX, 0, on("hue"), g)
    m = hue_rotation(theta) @ m
    s = _gate(torch.exp2(torch.randn(batch, generator=g, dtype=dt) * SATURATION_STD), 1, on("saturation"), g)
    m = saturation(s) @ m
    return m


@dataclass
class AugmentDraw:
    """One batch's random pipeline: geometric inverse maps (B, 3, 3) and colour matrices (B, 4, 4)."""
    geometric: torch.Tensor
    color: torch.Tensor

    def slice(self, start: int, stop: int) -> "AugmentDraw":
        """The draws of samples start..stop-1 (a data-parallel rank's share of a global batch)."""
        return AugmentDraw(self.geometric[start:stop], self.color[start:stop])


def sample_augment(batch: int, p: float, height: int, width: int, generator: torch.Generator | None = None,
                   pipeline: str = "bgc") -> AugmentDraw:
    """Draw the pipeline for `batch` images; `pipeline` is 'bgc' (all), 'bg' (geometric) or 'b' (flips,
    90-degree rotations, integer translation: the 'blit' transforms)."""
    if pipeline not in PIPELINES:
        raise ValueError(f"unknown augmentation pipeline {pipeline!r}; choose one of {sorted(PIPELINES)}")
    geometric, color = PIPELINES[pipeline]
    return AugmentDraw(sample_geometric(batch, p, height, width, generator, geometric),
                       sample_color(batch, p, generator, color))


PIPELINES = {
    "bgc": (GEOMETRIC, COLOR),
    "bg": (GEOMETRIC, ()),
    "b": (("xflip", "rotate90", "xint"), ()),
}


def apply_augment(x: torch.Tensor, draw: AugmentDraw) -> torch.Tensor:
    """Geometric then colour transforms of `draw`, applied to x (B, C, H, W); differentiable in x."""
    x = apply_geometric(x, draw.geometric.to(x.device))
    if x.shape[1] == 3:
        x = apply_color(x, draw.color.to(x.device))
    return x


def augment(x: torch.Tensor, p: float, generator: torch.Generator | None = None, pipeline: str = "bgc") -> torch.Tensor:
    """Augment each image of x (B, C, H, W) in [-1, 1] with probability p per transform. p = 0 returns x."""
    if not 0 <= p <= 1:
        raise ValueError(f"augmentation probability p must be in [0, 1], got {p}")
    if p == 0:
        return x
    return apply_augment(x, sample_augment(x.shape[0], p, x.shape[2], x.shape[3], generator, pipeline))


# ---------------------------------------------------------------------------------------------
# Adaptive p.

def ada_adjust(p: float, rt: float, target: float, batch: int, interval: int, ada_kimg: float) -> float:
    """The next p: up when D is overconfident on reals (rt > target), down when rt < target.

    rt = E[sign(D(real))] over the last `interval` steps of `batch` images; one adjustment moves p by
    batch * interval / (ada_kimg * 1000), so p would cross [0, 1] in `ada_kimg` thousand images.
    The result is clamped to [0, 1].
    """
    if not 0 < target < 1:
        raise ValueError(f"ADA target must be in (0, 1), got {target}")
    if ada_kimg <= 0:
        raise ValueError(f"ada_kimg must be positive, got {ada_kimg}")
    step = math.copysign(1.0, rt - target) * (rt != target) * batch * interval / (ada_kimg * 1000)
    return min(max(p + step, 0.0), 1.0)


@dataclass
class AdaptiveP:
    """Running state of the adaptive p: accumulates sign(D(real)) and adjusts every `interval` steps."""
    target: float = 0.6
    interval: int = 4
    ada_kimg: float = 500.0
    p: float = 0.0
    sign_sum: float = 0.0
    count: int = 0
    steps: int = 0
    last_rt: float = float("nan")

    def __post_init__(self):
        if not 0 < self.target < 1:
            raise ValueError(f"ADA target must be in (0, 1), got {self.target}")

    def observe(self, real_logits: torch.Tensor, total_sign: float | None = None, total_count: int | None = None) -> None:
        """Record D's logits on (augmented) reals of one step. Data-parallel callers pass the totals
        summed over ranks instead, so every rank moves p identically."""
        if total_sign is None:
            total_sign, total_count = float(torch.sign(real_logits.detach()).sum()), real_logits.numel()
        self.sign_sum += total_sign
        self.count += total_count

    def step(self, batch: int) -> float:
        """Call once per training step (global batch size); adjusts p every `interval` steps."""
        self.steps += 1
        if self.steps % self.interval == 0 and self.count > 0:
            self.last_rt = self.sign_sum / self.count
            self.p = ada_adjust(self.p, self.last_rt, self.target, batch, self.interval, self.ada_kimg)
            self.sign_sum, self.count = 0.0, 0
        return self.p

    def state_dict(self) -> dict:
        return {k: getattr(self, k) for k in ("target", "interval", "ada_kimg", "p", "sign_sum", "count", "steps", "last_rt")}

    def load_state_dict(self, state: dict) -> None:
        for k, v in state.items():
            setattr(self, k, v)
