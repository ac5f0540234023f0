"""The synthetic benchmark: toybirds (stands in for CUB) and toytissue (for NCT-CRC-HE).

Both are drawn with vectorised numpy, a batch of images at a time, from a seed; every image comes
with its ground-truth factors. They are written in the real datasets' on-disk layouts, so the
real readers (cub.py, nct.py) and everything after them run unchanged:

    toybirds/   CUB_200_2011 layout: images/<NNN.Class>/<file>.png, images.txt, image_class_labels.txt,
                train_test_split.txt, classes.txt, bounding_boxes.txt (from the drawn bird's mask),
                attributes.txt + attributes/image_attribute_labels.txt (part factors, one-hot)
    toytissue/  NCT layout: NCT-CRC-HE-100K/<CLASS>/<file>.png (train), CRC-VAL-HE-7K/<CLASS>/<file>.png (test)
    both:       factors.csv (path, split, label, one column per factor), parts.npz (ground-truth part
                masks, see below) and synthetic.json (how it was made)

toybirds: 12 classes, each a combination of five part factors (belly colour, wing pattern, crest,
tail length, bill colour) chosen so every value is shared by several classes and any two classes
differ in at least two parts. Nuisance: position, scale, facing, plumage shade, background clutter.

toytissue: the nine NCT classes as texture recipes in hematoxylin/eosin optical density
(Beer-Lambert, Ruifrok's stain vectors). Each class draws its factors (nuclei density, size and
irregularity, fibre density and alignment, fat, mucus, glands, debris, background, stain jitter)
from its own ranges, so the class is recoverable from the factors.

parts.npz holds, for every image, one binary mask per part at the image's resolution: 'paths' (N,)
relative paths as in factors.csv, 'names' (P,), 'masks' (N, P, H, ceil(W / 8)) the masks packed
along their rows by np.packbits, 'width' (W, to unpack them) and 'part_factors', a JSON object
naming each part's factors.
toybirds: belly, wing, crest, tail, bill, each the pixels where that part is what one sees (what is
drawn over it later, such as the wing over the belly, is cut out); a part the class lacks (no
crest) is empty. toytissue: nuclei, fibres, fat, mucus, glands, the pixels each structure
dominates; a structure the tile has none of is empty. The real readers never look at this file.
"""

from __future__ import annotations

import csv
import json
import multiprocessing
import os
import shutil
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import fft
from scipy.special import expit, ndtri
from tqdm import tqdm

from viscoin_core.data.cache import DataError, RawDataset

DATASETS = ("toybirds", "toytissue")
GENERATOR_VERSION = 3  # bump whenever the drawing changes, so old generated trees are redrawn (3: parts.npz)
MARKER = "synthetic.json"
FACTORS_FILE = "factors.csv"
PARTS_FILE = "parts.npz"

# ----------------------------------------------------------------------------- shared helpers


def batch_size_for(resolution: int, supersample: int = 1) -> int:
    """Images per vectorised batch: about 2^20 rendered pixels, so memory stays near 100 MB."""
    return int(max(1, min(256, 2**20 // (resolution * supersample) ** 2)))


def blur(image: np.ndarray, sigma: np.ndarray | float, anisotropy: np.ndarray | float = 1.0,
         angle: np.ndarray | float = 0.0) -> np.ndarray:
    """Per-image (anisotropic) Gaussian blur of (n, size, size) by FFT, peak-normalised.

    sigma: standard deviation in pixels, per image or shared; with anisotropy > 1 the kernel is that
    many times longer along `angle` (radians). A single 1-valued pixel becomes a blob whose centre
    is 1, so a threshold of 1/2 draws a disc of radius ~1.18 sigma.
    """
    n, size, _ = image.shape
    ky = fft.fftfreq(size)[:, None].astype(np.float32)  # cycles per pixel
    kx = fft.rfftfreq(size)[None, :].astype(np.float32)
    per_image = lambda a: np.broadcast_to(np.asarray(a, np.float32), (n,))[:, None, None]  # noqa: E731
    sigma, anisotropy, angle = per_image(sigma), per_image(anisotropy), per_image(angle)
    along = kx * np.cos(angle) + ky * np.sin(angle)
    across = -kx * np.sin(angle) + ky * np.cos(angle)
    s_along, s_across = sigma * anisotropy, sigma
    gain = np.exp(-2 * np.pi**2 * ((s_along * along) ** 2 + (s_across * across) ** 2)).astype(np.float32)
    out = fft.irfft2(fft.rfft2(image) * gain, s=(size, size)).astype(np.float32)
    return out * (2 * np.pi * s_along * s_across)


def smooth_noise(rng: np.random.Generator, n: int, size: int, sigma: np.ndarray | float,
                 anisotropy: np.ndarray | float = 1.0, angle: np.ndarray | float = 0.0) -> np.ndarray:
    """Gaussian-filtered white noise, standardised per image: float32 (n, size, size).

    sigma: correlation length as a fraction of the image side; anisotropy and angle as in `blur`
    (stretched noise makes fibres).
    """
    white = rng.standard_normal((n, size, size), dtype=np.float32)
    field = blur(white, np.asarray(sigma, np.float32) * size, anisotropy, angle)
    field -= field.mean(axis=(1, 2), keepdims=True)
    field /= field.std(axis=(1, 2), keepdims=True) + 1e-6
    return field


def downsampled_masks(soft: np.ndarray, factor: int) -> np.ndarray:
    """Soft coverage (n, P, H, W) in [0, 1] drawn at `factor` times the image side -> bool masks at
    the image side: a pixel belongs to a part when the part covers more than half of it (the same
    box filter that anti-aliases the image, so masks and pixels line up)."""
    n, p, h, w = soft.shape
    if factor > 1:
        soft = soft.reshape(n, p, h // factor, factor, w // factor, factor).mean(axis=(3, 5))
    return soft > 0.5


def downsample(image: np.ndarray, factor: int) -> np.ndarray:
    """Box-filter (n, H, W, C) by an integer factor (anti-aliasing after supersampled drawing)."""
    if factor == 1:
        return image
    n, h, w, c = image.shape
    return image.reshape(n, h // factor, factor, w // factor, factor, c).mean(axis=(2, 4))


def to_uint8(image: np.ndarray) -> np.ndarray:
    """float [0, 1] -> uint8, rounded."""
    return (np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8)


def paint(canvas: np.ndarray, mask: np.ndarray, colour: np.ndarray) -> None:
    """canvas (n, H, W, 3) <- colour (3,), (n, 3) or broadcastable to (n, H, W, 3), where mask
    (n, H, W) in [0, 1] says how much (soft edges blend)."""
    where = np.nonzero(mask)  # parts cover a small share of the frame: touch only their pixels
    weight = mask[where][:, None]
    if colour.ndim == 1:
        target = colour
    elif colour.ndim == 2:
        target = colour[where[0]]
    else:
        target = np.broadcast_to(colour, mask.shape + (3,))[where]
    canvas[where] += weight * (target - canvas[where])


# ----------------------------------------------------------------------------- toybirds

BELLY_COLOURS = {"red": (0.86, 0.14, 0.12), "yellow": (0.98, 0.84, 0.12),
                 "blue": (0.16, 0.38, 0.92), "white": (0.96, 0.96, 0.93)}
WING_PATTERNS = ("plain", "striped", "spotted")
TAIL_LENGTHS = {"short": (0.06, 0.12), "long": (0.30, 0.40)}  # tail length, units of bird scale
BILL_COLOURS = {"black": (0.07, 0.06, 0.06), "orange": (1.0, 0.52, 0.05)}

# belly, wing pattern, crest, tail, bill: each value shared by 3-6 classes, every pair differs in >= 2 parts
TOYBIRD_CLASSES = (
    ("blue", "plain", True, "short", "black"),
    ("blue", "spotted", False, "long", "black"),
    ("blue", "spotted", True, "long", "orange"),
    ("red", "spotted", True, "short", "black"),
    ("red", "striped", False, "long", "orange"),
    ("red", "striped", True, "long", "black"),
    ("white", "plain", False, "short", "black"),
    ("white", "plain", True, "long", "orange"),
    ("white", "striped", True, "short", "orange"),
    ("yellow", "plain", False, "long", "orange"),
    ("yellow", "spotted", False, "short", "black"),
    ("yellow", "striped", False, "short", "orange"),
)

TOYBIRD_ATTRIBUTES = ([f"has_belly_color::{c}" for c in BELLY_COLOURS]
                      + [f"has_wing_pattern::{p}" for p in WING_PATTERNS]
                      + ["has_crest::yes", "has_crest::no"]
                      + [f"has_tail_length::{t}" for t in TAIL_LENGTHS]
                      + [f"has_bill_color::{c}" for c in BILL_COLOURS])

# The parts with a ground-truth mask (parts.npz), and which factors each one's appearance follows.
TOYBIRD_PARTS = ("belly", "wing", "crest", "tail", "bill")
TOYBIRD_PART_FACTORS = {"belly": [f"belly_{c}" for c in BELLY_COLOURS], "wing": [f"wing_{p}" for p in WING_PATTERNS],
                        "crest": ["crest"], "tail": ["tail_length"], "bill": ["bill_orange"]}

# Part factors (one-hot values, tail length continuous) then nuisance factors.
TOYBIRD_FACTORS = ([f"belly_{c}" for c in BELLY_COLOURS] + [f"wing_{p}" for p in WING_PATTERNS]
                   + ["crest", "tail_length", "bill_orange",
                      "position_x", "position_y", "scale", "facing", "plumage_shade", "clutter"])
TOYBIRD_RANGES = {"tail_length": (0.06, 0.40), "position_x": (0.0, 1.0), "position_y": (0.0, 1.0),
                  "scale": (0.55, 0.75), "facing": (-1.0, 1.0), "plumage_shade": (0.0, 1.0), "clutter": (0.0, 1.0)}

# Bird extent in its own units (x forward, y down): beak tip / tail end / crest top / feet.
FRONT, BACK_BASE, TOP, BOTTOM = 0.56, 0.26, 0.44, 0.36


def toybird_class_name(index: int) -> str:
    belly, wing, crest, tail, bill = TOYBIRD_CLASSES[index]
    parts = [belly.capitalize(), wing.capitalize(), "Crested" if crest else "Plainhead",
             f"{tail.capitalize()}tail", f"{bill.capitalize()}bill"]
    return f"{index + 1:03d}." + "_".join(parts)


def toybird_attributes(labels: np.ndarray) -> np.ndarray:
    """bool (n, 13): the one-hot part values of each image's class."""
    table = np.zeros((len(TOYBIRD_CLASSES), len(TOYBIRD_ATTRIBUTES)), dtype=bool)
    for c, (belly, wing, crest, tail, bill) in enumerate(TOYBIRD_CLASSES):
        for name in (f"has_belly_color::{belly}", f"has_wing_pattern::{wing}",
                     f"has_crest::{'yes' if crest else 'no'}", f"has_tail_length::{tail}", f"has_bill_color::{bill}"):
            table[c, TOYBIRD_ATTRIBUTES.index(name)] = True
    return table[labels]


def sample_toybird_factors(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """float32 (n, F) factors in the order of TOYBIRD_FACTORS for images of classes `labels`."""
    n = len(labels)
    f = np.zeros((n, len(TOYBIRD_FACTORS)), dtype=np.float32)
    col = {name: i for i, name in enumerate(TOYBIRD_FACTORS)}
    for c, (belly, wing, crest, tail, bill) in enumerate(TOYBIRD_CLASSES):
        rows = labels == c
        f[rows, col[f"belly_{belly}"]] = 1
        f[rows, col[f"wing_{wing}"]] = 1
        f[rows, col["crest"]] = float(crest)
        f[rows, col["bill_orange"]] = float(bill == "orange")
        low, high = TAIL_LENGTHS[tail]
        f[rows, col["tail_length"]] = low + (high - low) * rng.random(int(rows.sum()))
    scale = rng.uniform(*TOYBIRD_RANGES["scale"], n)
    facing = np.where(rng.random(n) < 0.5, -1.0, 1.0)
    back = BACK_BASE + f[:, col["tail_length"]]
    # keep the whole bird in frame: its centre may move only as far as its extent allows
    left_extent = np.where(facing > 0, back, FRONT) * scale
    right_extent = np.where(facing > 0, FRONT, back) * scale
    lo, hi = 0.03 + left_extent, 0.97 - right_extent
    f[:, col["position_x"]] = lo + (hi - lo).clip(0) * rng.random(n)
    lo, hi = 0.03 + TOP * scale, 0.97 - BOTTOM * scale
    f[:, col["position_y"]] = lo + (hi - lo) * rng.random(n)
    f[:, col["scale"]] = scale
    f[:, col["facing"]] = facing
    f[:, col["plumage_shade"]] = rng.random(n)
    f[:, col["clutter"]] = rng.random(n)
    return f


def ellipse(x, y, cx, cy, rx, ry, edge):
    """Soft inside-mask of an axis-aligned ellipse; `edge` is the soft border width in bird units."""
    r = np.sqrt(((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2)
    return np.clip((1 - r) * min(rx, ry) / edge + 0.5, 0, 1)


def polygon(x, y, points, edge):
    """Soft inside-mask of a convex polygon given by its corners in either winding order."""
    area = sum(x0 * y1 - x1 * y0 for (x0, y0), (x1, y1) in zip(points, points[1:] + points[:1]))
    sign = np.where(area > 0, 1.0, -1.0)  # corners may be per-image arrays
    inside = None
    for (x0, y0), (x1, y1) in zip(points, points[1:] + points[:1]):
        nx, ny = sign * (y1 - y0), -sign * (x1 - x0)  # outward normal of this edge
        dist = ((x - x0) * nx + (y - y0) * ny) / np.hypot(nx, ny)
        side = np.clip(-dist / edge + 0.5, 0, 1)
        inside = side if inside is None else np.minimum(inside, side)
    return inside


def segment(x, y, p0, p1, width, edge):
    """Soft mask of a thick line segment from p0 to p1 (per-image arrays allowed)."""
    (x0, y0), (x1, y1) = p0, p1
    dx, dy = x1 - x0, y1 - y0
    t = np.clip(((x - x0) * dx + (y - y0) * dy) / (dx * dx + dy * dy + 1e-9), 0, 1)
    dist = np.hypot(x - (x0 + t * dx), y - (y0 + t * dy))
    return np.clip((width / 2 - dist) / edge + 0.5, 0, 1)


def draw_background(rng: np.random.Generator, clutter: np.ndarray, size: int) -> np.ndarray:
    """Foliage-and-sky clutter: float32 (n, size, size, 3) in [0, 1].

    Two muted colours blended by smooth noise, leaves from thresholded mid-scale noise (more with
    `clutter`), and a few branches. Colours stay duller than any bird part.
    """
    n = len(clutter)
    palette = np.array([(0.55, 0.66, 0.74), (0.62, 0.70, 0.58), (0.36, 0.46, 0.28), (0.45, 0.40, 0.30),
                        (0.30, 0.38, 0.30), (0.68, 0.64, 0.52)], np.float32)
    first = palette[rng.integers(0, len(palette), n)] * rng.uniform(0.85, 1.1, (n, 1))
    second = palette[rng.integers(0, len(palette), n)] * rng.uniform(0.85, 1.1, (n, 1))
    blend = expit(1.5 * smooth_noise(rng, n, size, 0.15))[..., None]
    canvas = first[:, None, None] * blend + second[:, None, None] * (1 - blend)
    # leaves: blobs of mid-scale noise above a threshold that falls as clutter grows
    leaf_field = smooth_noise(rng, n, size, 0.035)
    threshold = (1.6 - 1.2 * clutter)[:, None, None]
    leaves = np.clip((leaf_field - threshold) * 3, 0, 1)
    leaf_colour = np.array([0.20, 0.42, 0.16], np.float32) * rng.uniform(0.7, 1.3, (n, 1)).astype(np.float32)
    paint(canvas, leaves * 0.9, leaf_colour)
    shade = smooth_noise(rng, n, size, 0.02) * (0.04 + 0.06 * clutter)[:, None, None]
    canvas *= (1 + shade)[..., None]
    # branches: up to three straight twigs crossing the frame, drawn when clutter is high enough
    v, u = np.meshgrid(np.linspace(0, 1, size, dtype=np.float32), np.linspace(0, 1, size, dtype=np.float32),
                       indexing="ij")
    for k in range(3):
        active = (clutter > 0.25 + 0.25 * k)[:, None, None]
        p0 = rng.uniform(-0.2, 1.2, (2, n, 1, 1)).astype(np.float32)
        p1 = rng.uniform(-0.2, 1.2, (2, n, 1, 1)).astype(np.float32)
        width = rng.uniform(0.012, 0.03, (n, 1, 1)).astype(np.float32)
        twig = segment(u, v, p0, p1, width, 1.5 / size) * active
        paint(canvas, twig, np.array([0.33, 0.24, 0.16], np.float32) * rng.uniform(0.7, 1.2, (n, 1)).astype(np.float32))
    return canvas.astype(np.float32)


def toybird_supersample(resolution: int) -> int:
    """Edges are drawn soft (analytic anti-aliasing); only small images need extra samples for the patterns."""
    return 2 if resolution < 64 else 1


def draw_toybirds(factors: np.ndarray, rng: np.random.Generator,
                  resolution: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Render birds with the given factors: uint8 (n, resolution, resolution, 3), bool bird masks
    (n, H, W), and bool part masks (n, len(TOYBIRD_PARTS), H, W): the visible pixels of each part."""
    supersample = toybird_supersample(resolution)
    col = {name: i for i, name in enumerate(TOYBIRD_FACTORS)}
    n, size = len(factors), resolution * supersample
    g = {name: factors[:, i][:, None, None] for name, i in col.items()}
    canvas = draw_background(rng, factors[:, col["clutter"]], size)

    v, u = np.meshgrid((np.arange(size, dtype=np.float32) + 0.5) / size,
                       (np.arange(size, dtype=np.float32) + 0.5) / size, indexing="ij")
    edge = 1.2 / (size * g["scale"])  # one rendered pixel, in bird units

    shade = factors[:, col["plumage_shade"]]
    plumage = np.stack([0.42 - 0.22 * shade, 0.36 - 0.18 * shade, 0.30 - 0.14 * shade], -1)  # warm brown .. dark slate
    dark = plumage * 0.55
    belly_colour = np.zeros((n, 3), np.float32)
    for c, (name, rgb) in enumerate(BELLY_COLOURS.items()):
        belly_colour += factors[:, col[f"belly_{name}"]][:, None] * np.array(rgb, np.float32)
    bill_colour = np.where(factors[:, col["bill_orange"]][:, None] > 0.5,
                           np.array(BILL_COLOURS["orange"], np.float32), np.array(BILL_COLOURS["black"], np.float32))

    # perch: a branch under the feet, across the whole frame
    perch_y = g["position_y"] + BOTTOM * g["scale"]
    tilt = rng.uniform(-0.12, 0.12, (n, 1, 1)).astype(np.float32)
    perch = np.clip((0.018 - np.abs(v - perch_y - tilt * (u - g["position_x"]))) * size / 1.2 + 0.5, 0, 1)
    paint(canvas, perch, np.array([0.30, 0.21, 0.13], np.float32))

    # The bird is drawn on a window around it (the same size for the whole batch), not the frame.
    rows, cols, window = bird_window(factors, size)
    frame = canvas
    canvas = frame[window]  # (n, h, w, 3) copy of the frame under each bird
    u = (cols[:, None, :] + 0.5) / size  # (n, 1, w)
    v = (rows[:, :, None] + 0.5) / size  # (n, h, 1)
    x = (u - g["position_x"]) / g["scale"] * g["facing"]  # bird units, x towards the beak
    y = (v - g["position_y"]) / g["scale"]
    bird = np.zeros(canvas.shape[:3], np.float32)
    visible = np.zeros((len(TOYBIRD_PARTS),) + canvas.shape[:3], np.float32)   # how much of each part shows

    def part(mask, colour, name=None):
        nonlocal bird
        paint(canvas, mask, colour)
        bird = np.maximum(bird, mask)
        visible[...] *= 1 - mask   # whatever is painted now hides the parts painted before, as on the canvas
        if name is not None:
            visible[TOYBIRD_PARTS.index(name)] += mask

    legs = np.maximum(segment(x, y, (0.02, 0.14), (0.00, BOTTOM), 0.035, edge),
                      segment(x, y, (0.10, 0.14), (0.10, BOTTOM), 0.035, edge))
    part(legs, np.full((n, 3), 0.25, np.float32))
    tail_end = -BACK_BASE - g["tail_length"]
    tail = polygon(x, y, [(-0.20, 0.04), (-0.20, -0.07), (tail_end, -0.13), (tail_end, -0.01)], edge)
    part(tail, dark, "tail")
    body = ellipse(x, y, 0.0, 0.0, 0.30, 0.19, edge)
    part(body, plumage)
    belly = body * ellipse(x, y, 0.08, 0.08, 0.27, 0.15, edge)
    lit = np.clip(1.08 - 0.5 * (y - 0.05), 0.8, 1.15)[..., None]  # light from above
    part(belly, belly_colour[:, None, None, :] * lit, "belly")

    # wing: an ellipse tilted down towards the tail, with its pattern in wing-aligned coordinates
    angle = -0.35
    xw = (x + 0.08) * np.cos(angle) - (y + 0.06) * np.sin(angle)
    yw = (x + 0.08) * np.sin(angle) + (y + 0.06) * np.cos(angle)
    wing = ellipse(xw, yw, 0.0, 0.0, 0.21, 0.095, edge)
    stripes = np.clip(np.sin(2 * np.pi * xw / 0.11) * 3 + 0.5, 0, 1)
    spots = np.maximum(ellipse(xw, yw, -0.09, -0.02, 0.035, 0.035, edge),
                       np.maximum(ellipse(xw, yw, 0.0, -0.02, 0.035, 0.035, edge),
                                  ellipse(xw, yw, 0.09, -0.02, 0.035, 0.035, edge)))
    spots = np.maximum(spots, np.maximum(ellipse(xw, yw, -0.045, 0.045, 0.03, 0.03, edge),
                                         ellipse(xw, yw, 0.045, 0.045, 0.03, 0.03, edge)))
    pattern = g["wing_striped"] * stripes + g["wing_spotted"] * spots
    light = np.array([0.97, 0.95, 0.88], np.float32)
    wing_colour = dark[:, None, None, :] + pattern[..., None] * (light - dark[:, None, None, :])
    part(wing, wing_colour, "wing")

    crest = polygon(x, y, [(0.17, -0.18), (0.33, -0.22), (0.11, -TOP)], edge) * g["crest"]
    part(crest, belly_colour * 0.85, "crest")
    head = ellipse(x, y, 0.27, -0.14, 0.13, 0.125, edge)
    part(head, plumage)
    bill = polygon(x, y, [(0.36, -0.185), (FRONT, -0.12), (0.36, -0.075)], edge)
    part(bill, bill_colour, "bill")
    part(ellipse(x, y, 0.31, -0.17, 0.032, 0.032, edge), np.full((n, 3), 0.97, np.float32))
    part(ellipse(x, y, 0.315, -0.17, 0.02, 0.02, edge), np.full((n, 3), 0.03, np.float32))

    frame[window] = canvas
    full_mask = np.zeros((n, size, size), np.float32)
    full_mask[window] = bird
    image = downsample(frame, supersample)
    image = image + rng.normal(0, 0.012, image.shape).astype(np.float32)  # sensor grain
    mask = downsample(full_mask[..., None], supersample)[..., 0] > 0.5
    parts = np.zeros((len(TOYBIRD_PARTS), n, size, size), np.float32)
    for p in range(len(TOYBIRD_PARTS)):   # window coordinates -> the frame, as for the bird's mask
        parts[p][window] = visible[p]
    return to_uint8(image), mask, downsampled_masks(parts.transpose(1, 0, 2, 3), supersample)


def bird_window(factors: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray, tuple]:
    """Pixel rows (n, h) and columns (n, w) of a window holding each bird, and the fancy index
    that cuts those windows out of an (n, size, size, ...) array. h and w are shared by the batch."""
    col = {name: i for i, name in enumerate(TOYBIRD_FACTORS)}
    scale, facing = factors[:, col["scale"]], factors[:, col["facing"]]
    back = BACK_BASE + factors[:, col["tail_length"]]
    left = factors[:, col["position_x"]] - np.where(facing > 0, back, FRONT) * scale
    right = factors[:, col["position_x"]] + np.where(facing > 0, FRONT, back) * scale
    top = factors[:, col["position_y"]] - TOP * scale
    bottom = factors[:, col["position_y"]] + BOTTOM * scale
    margin = 3  # soft edges reach about a pixel past the outline
    w = int(min(size, np.ceil((right - left).max() * size) + 2 * margin))
    h = int(min(size, np.ceil((bottom - top).max() * size) + 2 * margin))
    x0 = np.clip(np.floor(left * size).astype(int) - margin, 0, size - w)
    y0 = np.clip(np.floor(top * size).astype(int) - margin, 0, size - h)
    rows = y0[:, None] + np.arange(h)[None, :]
    cols = x0[:, None] + np.arange(w)[None, :]
    index = (np.arange(len(factors))[:, None, None], rows[:, :, None], cols[:, None, :])
    return rows.astype(np.float32), cols.astype(np.float32), index


def mask_boxes(masks: np.ndarray) -> np.ndarray:
    """CUB-style boxes (x, y, w, h) in pixels around each boolean mask (n, H, W)."""
    rows, cols = masks.any(axis=2), masks.any(axis=1)
    boxes = np.zeros((len(masks), 4), np.float32)
    for i in range(len(masks)):
        ys, xs = np.flatnonzero(rows[i]), np.flatnonzero(cols[i])
        if len(ys) == 0:
            boxes[i] = (0, 0, masks.shape[2], masks.shape[1])
        else:
            boxes[i] = (xs[0], ys[0], xs[-1] - xs[0] + 1, ys[-1] - ys[0] + 1)
    return boxes


# ----------------------------------------------------------------------------- toytissue

TISSUE_CLASSES = ("ADI", "BACK", "DEB", "LYM", "MUC", "MUS", "NORM", "STR", "TUM")
TISSUE_FACTORS = ("nuclei_density", "nuclei_size", "nuclei_irregularity", "fibre_density", "fibre_alignment",
                  "fat_fraction", "mucus_fraction", "gland_fraction", "debris_density", "background_fraction",
                  "stain_hematoxylin", "stain_eosin")
# Per class, per factor (low, high); stain jitter is shared by all classes.
TISSUE_RECIPES = {
    #        nuc_dens      nuc_size        irreg        fibre        align        fat          mucus        gland        debris       background
    "ADI":  ((0.02, 0.06), (0.027, 0.036), (0.0, 0.2), (0.05, 0.15), (0.0, 0.4), (0.80, 0.95), (0.0, 0.0), (0.0, 0.0), (0.0, 0.0), (0.0, 0.05)),
    "BACK": ((0.0, 0.02), (0.027, 0.045), (0.0, 0.5), (0.0, 0.05), (0.0, 1.0), (0.0, 0.0), (0.0, 0.05), (0.0, 0.0), (0.0, 0.15), (0.85, 1.0)),
    "DEB":  ((0.10, 0.25), (0.018, 0.030), (0.6, 1.0), (0.10, 0.30), (0.0, 0.3), (0.0, 0.05), (0.0, 0.15), (0.0, 0.0), (0.6, 1.0), (0.0, 0.15)),
    "LYM":  ((0.75, 1.0), (0.028, 0.036), (0.0, 0.15), (0.0, 0.10), (0.0, 0.3), (0.0, 0.0), (0.0, 0.0), (0.0, 0.0), (0.0, 0.1), (0.0, 0.05)),
    "MUC":  ((0.02, 0.08), (0.027, 0.039), (0.0, 0.3), (0.0, 0.15), (0.0, 0.5), (0.0, 0.0), (0.70, 0.95), (0.0, 0.0), (0.0, 0.1), (0.0, 0.10)),
    "MUS":  ((0.12, 0.22), (0.027, 0.039), (0.0, 0.2), (0.75, 1.0), (0.75, 1.0), (0.0, 0.0), (0.0, 0.0), (0.0, 0.0), (0.0, 0.0), (0.0, 0.05)),
    "NORM": ((0.20, 0.35), (0.030, 0.042), (0.0, 0.2), (0.15, 0.35), (0.0, 0.4), (0.0, 0.0), (0.0, 0.10), (0.55, 0.85), (0.0, 0.0), (0.0, 0.05)),
    "STR":  ((0.04, 0.12), (0.027, 0.039), (0.0, 0.3), (0.45, 0.75), (0.25, 0.55), (0.0, 0.05), (0.0, 0.05), (0.0, 0.0), (0.0, 0.05), (0.05, 0.20)),
    "TUM":  ((0.45, 0.65), (0.045, 0.063), (0.5, 1.0), (0.05, 0.20), (0.0, 0.4), (0.0, 0.0), (0.0, 0.05), (0.15, 0.35), (0.0, 0.15), (0.0, 0.05)),
}
STAIN_RANGE = (0.8, 1.2)
# The structures with a ground-truth map (parts.npz), and the factors each one's amount follows.
TISSUE_PARTS = ("nuclei", "fibres", "fat", "mucus", "glands")
TISSUE_PART_FACTORS = {"nuclei": ["nuclei_density", "nuclei_size", "nuclei_irregularity"],
                       "fibres": ["fibre_density", "fibre_alignment"], "fat": ["fat_fraction"],
                       "mucus": ["mucus_fraction"], "glands": ["gland_fraction"]}
# optical density per unit stain: the reference H&E vectors of Macenko et al. (2009)
HEMATOXYLIN = np.array([0.5626, 0.7201, 0.4062], np.float32)
EOSIN = np.array([0.2159, 0.8012, 0.5581], np.float32)


def sample_tissue_factors(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """float32 (n, 12) in the order of TISSUE_FACTORS, each drawn from its class's range."""
    ranges = np.array([TISSUE_RECIPES[TISSUE_CLASSES[c]] + (STAIN_RANGE, STAIN_RANGE) for c in range(9)], np.float32)
    per_image = ranges[labels]  # (n, 12, 2)
    draws = rng.random(per_image.shape[:2], dtype=np.float32)
    return per_image[..., 0] + (per_image[..., 1] - per_image[..., 0]) * draws


def region(rng: np.random.Generator, fraction: np.ndarray, size: int, sigma: float, softness: float = 4.0) -> np.ndarray:
    """A soft mask covering about `fraction` of each image, shaped by smooth noise: (n, size, size)."""
    field = smooth_noise(rng, len(fraction), size, sigma)
    threshold = -ndtri(np.clip(fraction, 1e-4, 1 - 1e-4))[:, None, None].astype(np.float32)
    return expit((field - threshold) * softness).astype(np.float32)


def nearest_two(rng: np.random.Generator, n: int, size: int, points: int,
                count: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Distances (fraction of the side) to the nearest and second-nearest of `points` random seeds.

    `count` (n,) keeps only the first count[i] seeds of image i (the rest move far away).
    """
    seeds = rng.random((n, points, 2), dtype=np.float32)
    if count is not None:
        seeds[np.arange(points)[None, :] >= np.asarray(count)[:, None]] = 100.0
    grid = (np.arange(size, dtype=np.float32) + 0.5) / size
    first = np.full((n, size, size), np.inf, np.float32)
    second = np.full((n, size, size), np.inf, np.float32)
    for k in range(points):  # running two smallest squared distances: no (n, H, W, points) array
        d = (grid[None, :, None] - seeds[:, k, 1, None, None]) ** 2 + (grid[None, None, :] - seeds[:, k, 0, None, None]) ** 2
        np.minimum(second, np.maximum(first, d), out=second)
        np.minimum(first, d, out=first)
    return np.sqrt(first), np.sqrt(second)


def on_rows(active: np.ndarray, size: int, layer, outputs: int = 1):
    """Draw `layer(rows)` only for the images where `active` holds; zeros elsewhere.

    layer returns one (k, size, size) array, or a tuple of `outputs` of them; the result has the same
    structure at full batch size (n, size, size). Most texture layers belong to a few classes, and
    drawing them only there keeps generation fast.
    """
    rows = np.flatnonzero(active)
    out = [np.zeros((len(active), size, size), np.float32) for _ in range(outputs)]
    if len(rows):
        drawn = layer(rows)
        for full, part in zip(out, drawn if outputs > 1 else (drawn,)):
            full[rows] = part
    return out[0] if outputs == 1 else tuple(out)


def draw_tissue(factors: np.ndarray, rng: np.random.Generator, resolution: int) -> tuple[np.ndarray, np.ndarray]:
    """Render H&E-like tiles with the given factors: uint8 (n, resolution, resolution, 3), and bool
    structure maps (n, len(TISSUE_PARTS), H, W) (see `tissue_parts`).

    Each layer adds hematoxylin (nuclei, purple) or eosin (cytoplasm, fibres, pink) concentration;
    the two become RGB by Beer-Lambert with the stain vectors, scaled by the per-image stain jitter.
    """
    n, size = len(factors), resolution
    f = {name: factors[:, i] for i, name in enumerate(TISSUE_FACTORS)}
    e3 = lambda a: a[:, None, None]  # noqa: E731  (n,) -> (n, 1, 1)
    px = 1.0 / size
    present = lambda name: f[name] > 0.01  # noqa: E731

    background = on_rows(present("background_fraction"), size,
                         lambda r: region(rng, f["background_fraction"][r], size, 0.12, 3.0))
    tissue = 1 - background
    # stroma/muscle fibres: noise stretched along a per-image direction
    angle = rng.uniform(0, np.pi, n).astype(np.float32)
    fibres = expit(2.5 * smooth_noise(rng, n, size, 0.012, anisotropy=1 + 9 * f["fibre_alignment"], angle=angle))
    eosin = tissue * (0.22 + 0.05 * smooth_noise(rng, n, size, 0.05))
    eosin += tissue * e3(f["fibre_density"]) * 0.75 * fibres
    hema = tissue * 0.05

    # fat: Voronoi cells of large vacuoles, thin eosin membranes, empty (white) inside
    def fat_layer(rows):
        d1, d2 = nearest_two(rng, len(rows), size, 18)
        return region(rng, f["fat_fraction"][rows], size, 0.2, 3.0), np.exp(-(((d2 - d1) / (1.6 * px + 0.006)) ** 2))
    fat, membrane = on_rows(present("fat_fraction"), size, fat_layer, outputs=2)
    fat *= tissue
    eosin = eosin * (1 - fat) + fat * 0.55 * membrane
    hema = hema * (1 - fat)

    # mucus: pale, wispy, blue-grey
    mucus = on_rows(present("mucus_fraction"), size, lambda r: region(rng, f["mucus_fraction"][r], size, 0.15, 3.0))
    mucus *= tissue * (1 - fat)
    wisps = on_rows(present("mucus_fraction"), size,
                    lambda r: expit(2 * smooth_noise(rng, len(r), size, 0.02, anisotropy=3, angle=angle[r])))
    eosin = eosin * (1 - mucus) + mucus * (0.05 + 0.06 * wisps)
    hema = hema * (1 - mucus) + mucus * (0.14 + 0.14 * wisps)

    # glands: lumens (white) ringed by epithelium whose nuclei line the lumen
    count = np.where(f["gland_fraction"] > 0, 1 + np.rint(f["gland_fraction"] * 3), 0).astype(int)

    def gland_distance(rows):
        jitter = 0.02 * e3(f["nuclei_irregularity"][rows]) * smooth_noise(rng, len(rows), size, 0.03)
        return nearest_two(rng, len(rows), size, 4, count[rows])[0] + jitter
    gd = on_rows(count > 0, size, gland_distance)
    gd[count == 0] = 9.0  # far from any gland
    radius = e3(0.15 + 0.1 * f["gland_fraction"])
    lumen = expit((radius * 0.45 - gd) / (1.2 * px))
    epithelium = expit((radius - gd) / (1.2 * px)) * (1 - lumen)
    ring_nuclei = epithelium * expit((0.12 * radius - np.abs(gd - radius * 0.8)) / px)
    eosin = eosin * (1 - lumen) * (1 - 0.5 * epithelium) + epithelium * 0.1
    hema = hema * (1 - lumen) + epithelium * 0.25 + 1.1 * ring_nuclei

    # nuclei: Bernoulli seeds blurred into blobs; irregular ones get a ragged threshold
    radius_px = f["nuclei_size"] * size
    per_pixel = f["nuclei_density"] * 0.55 / (np.pi * radius_px**2)
    seeds = (rng.random((n, size, size), dtype=np.float32) < e3(per_pixel)).astype(np.float32)
    elongation = 1 + 1.8 * f["fibre_alignment"] * f["fibre_density"]
    blobs = blur(seeds, radius_px / 1.4, anisotropy=elongation, angle=angle + np.pi / 2)
    texture = smooth_noise(rng, n, size, 0.6 / size + 0.004)  # ragged edges and chromatin
    nuclei = expit((blobs - 0.5 + e3(f["nuclei_irregularity"]) * 0.45 * texture) * 10)
    nuclei *= tissue * (1 - lumen) * (1 - 0.8 * fat)
    hema = hema + nuclei * (0.95 + 0.1 * texture) * (1.0 + 0.3 * e3(f["nuclei_irregularity"]))
    eosin = eosin * (1 - 0.5 * nuclei)

    # debris: karyorrhectic fragments and eosinophilic smudges
    def debris_layer(rows):
        bits = (rng.random((len(rows), size, size), dtype=np.float32) < e3(f["debris_density"][rows] * 0.05))
        fragments = np.clip(blur(bits.astype(np.float32), np.full(len(rows), 0.7 + 0.006 * size, np.float32)), 0, 1)
        return fragments, expit(2 * smooth_noise(rng, len(rows), size, 0.04))
    fragments, smudge = on_rows(present("debris_density"), size, debris_layer, outputs=2)
    hema = hema + e3(f["debris_density"]) * (0.8 * fragments + 0.1 * smudge)
    eosin = eosin + e3(f["debris_density"]) * 0.25 * smudge * tissue

    # glass: faint dust on the empty slide
    dust = on_rows(present("background_fraction"), size,
                   lambda r: 0.03 * np.clip(smooth_noise(rng, len(r), size, 0.03), 0, None))
    hema, eosin = hema + background * dust, eosin + background * dust

    od = (hema[..., None] * HEMATOXYLIN * e3(f["stain_hematoxylin"])[..., None]
          + eosin[..., None] * EOSIN * e3(f["stain_eosin"])[..., None]) * 1.3 + 0.04
    image = np.exp(-od)
    image = image + rng.normal(0, 0.01, image.shape).astype(np.float32)
    fibre_share = e3(f["fibre_density"]) * fibres * tissue * (1 - fat) * (1 - mucus) * (1 - lumen) * (1 - nuclei)
    return to_uint8(image), tissue_parts(np.maximum(nuclei, ring_nuclei), fibre_share, fat, mucus, lumen + epithelium)


def tissue_parts(nuclei, fibres, fat, mucus, glands) -> np.ndarray:
    """Bool (n, 5, H, W) in the order of TISSUE_PARTS from each structure's soft layer in [0, 1]:
    a pixel belongs to a structure where that layer is more than half there. Each layer is taken
    after the layers drawn over it (fat and mucus replace fibres, nuclei sit on them), so a fibre
    pixel is one whose eosin mostly comes from a visible fibre."""
    return np.stack([nuclei, fibres, fat, mucus, glands], axis=1) > 0.5


# ----------------------------------------------------------------------------- writing the trees


def render_batch(job: tuple) -> tuple[np.ndarray | None, np.ndarray]:
    """Draw one batch and write its PNGs; returns the birds' boxes (toybirds, else None) and the
    part masks packed along their rows (np.packbits: 8x smaller to pass between processes)."""
    dataset, factors, paths, resolution, seed = job
    rng = np.random.default_rng(seed)
    if dataset == "toybirds":
        images, masks, parts = draw_toybirds(factors, rng, resolution)
    else:
        (images, parts), masks = draw_tissue(factors, rng, resolution), None
    for image, path in zip(images, paths):
        Image.fromarray(image).save(path, compress_level=1)
    return (None if masks is None else mask_boxes(masks)), np.packbits(parts, axis=-1)


def render_all(dataset: str, factors: np.ndarray, paths: list[Path], resolution: int, seed: int,
               workers: int) -> tuple[np.ndarray | None, np.ndarray]:
    """Draw and write every image in batches (each batch seeded by its index, so `workers` never
    changes the pixels); returns the concatenated boxes for toybirds (None for toytissue) and the
    packed part masks (N, P, H, ceil(W / 8))."""
    size = batch_size_for(resolution, toybird_supersample(resolution) if dataset == "toybirds" else 1)
    jobs = [(dataset, factors[start:start + size], paths[start:start + size], resolution, [seed, 1, b])
            for b, start in enumerate(range(0, len(factors), size))]
    bar = dict(total=len(jobs), desc=dataset, unit="batch", leave=False, mininterval=2)
    if workers > 1 and len(jobs) > 1:
        context = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else None)
        with context.Pool(min(workers, len(jobs))) as pool:
            results = list(tqdm(pool.imap(render_batch, jobs), **bar))
    else:
        results = [render_batch(job) for job in tqdm(jobs, **bar)]
    boxes, parts = zip(*results)
    return (None if boxes[0] is None else np.concatenate(boxes)), np.concatenate(parts)


def write_toybirds(root: Path, n_per_class: int, resolution: int, seed: int, workers: int = 2) -> None:
    """Generate toybirds in CUB_200_2011's layout under `root` (which must not exist yet)."""
    rng = np.random.default_rng([seed, 0])
    n_classes = len(TOYBIRD_CLASSES)
    labels = np.repeat(np.arange(n_classes), 2 * n_per_class)
    is_train = np.tile(np.r_[np.ones(n_per_class, bool), np.zeros(n_per_class, bool)], n_classes)
    factors = sample_toybird_factors(labels, rng)
    names = [toybird_class_name(c) for c in range(n_classes)]
    for name in names:
        (root / "images" / name).mkdir(parents=True)
    rel_paths = [f"images/{names[c]}/{names[c][4:]}_{i % (2 * n_per_class):05d}.png" for i, c in enumerate(labels)]
    boxes, parts = render_all("toybirds", factors, [root / p for p in rel_paths], resolution, seed, workers)
    write_parts(root, rel_paths, TOYBIRD_PARTS, TOYBIRD_PART_FACTORS, parts, resolution)

    ids = np.arange(1, len(labels) + 1)
    write_lines(root / "images.txt", (f"{i} {p[len('images/'):]}" for i, p in zip(ids, rel_paths)))
    write_lines(root / "image_class_labels.txt", (f"{i} {c + 1}" for i, c in zip(ids, labels)))
    write_lines(root / "train_test_split.txt", (f"{i} {int(t)}" for i, t in zip(ids, is_train)))
    write_lines(root / "classes.txt", (f"{c + 1} {name}" for c, name in enumerate(names)))
    write_lines(root / "bounding_boxes.txt", (f"{i} {x:.1f} {y:.1f} {w:.1f} {h:.1f}" for i, (x, y, w, h) in zip(ids, boxes)))
    write_lines(root / "attributes.txt", (f"{a + 1} {name}" for a, name in enumerate(TOYBIRD_ATTRIBUTES)))
    present = toybird_attributes(labels)
    (root / "attributes").mkdir()
    # image attribute rows as in CUB: image, attribute, is_present, certainty (4 = definitely), time
    write_lines(root / "attributes" / "image_attribute_labels.txt",
                (f"{i} {a + 1} {int(present[r, a])} 4 0.0" for r, i in enumerate(ids) for a in range(len(TOYBIRD_ATTRIBUTES))))
    write_factors(root, rel_paths, np.where(is_train, "train", "test"), labels, TOYBIRD_FACTORS, factors)


def write_toytissue(root: Path, n_per_class: int, resolution: int, seed: int, workers: int = 2) -> None:
    """Generate toytissue in the NCT layout under `root` (which must not exist yet)."""
    from viscoin_core.data.nct import TEST_DIR, TRAIN_DIRS
    rng = np.random.default_rng([seed, 0])
    labels = np.repeat(np.arange(len(TISSUE_CLASSES)), 2 * n_per_class)
    is_train = np.tile(np.r_[np.ones(n_per_class, bool), np.zeros(n_per_class, bool)], len(TISSUE_CLASSES))
    factors = sample_tissue_factors(labels, rng)
    rel_paths = []
    for i, (c, train) in enumerate(zip(labels, is_train)):
        top = TRAIN_DIRS["norm"] if train else TEST_DIR
        rel_paths.append(f"{top}/{TISSUE_CLASSES[c]}/{TISSUE_CLASSES[c]}-{i:06d}.png")
    for top in (TRAIN_DIRS["norm"], TEST_DIR):
        for name in TISSUE_CLASSES:
            (root / top / name).mkdir(parents=True)
    parts = render_all("toytissue", factors, [root / p for p in rel_paths], resolution, seed, workers)[1]
    write_parts(root, rel_paths, TISSUE_PARTS, TISSUE_PART_FACTORS, parts, resolution)
    write_factors(root, rel_paths, np.where(is_train, "train", "test"), labels, TISSUE_FACTORS, factors)


def write_lines(path: Path, lines) -> None:
    path.write_text("".join(line + "\n" for line in lines))


def write_factors(root: Path, rel_paths, splits, labels, names, factors) -> None:
    with open(root / FACTORS_FILE, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "split", "label", *names])
        for path, split, label, row in zip(rel_paths, splits, labels, factors):
            writer.writerow([path, split, int(label), *(f"{v:.6g}" for v in row)])


def write_parts(root: Path, rel_paths, names, part_factors: dict, packed: np.ndarray, width: int) -> None:
    """parts.npz (module docstring): the packed masks (N, P, H, ceil(width / 8)) in the order of
    `rel_paths`; `width` is the images' width in pixels (what unpacking needs back)."""
    save_npz(root / PARTS_FILE, paths=np.array(rel_paths), names=np.array(names), masks=packed,
             width=np.array(width), part_factors=np.array(json.dumps(part_factors)))


def save_npz(path: Path, **arrays: np.ndarray) -> None:
    """np.savez_compressed, but every member dated 1980-01-01 (numpy stamps the clock time), so
    a tree drawn twice from one seed is the same bytes."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for key, value in arrays.items():
            info = zipfile.ZipInfo(key + ".npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            with archive.open(info, "w", force_zip64=True) as handle:
                np.lib.format.write_array(handle, np.asanyarray(value), allow_pickle=False)


def read_parts(root: str | Path) -> tuple[dict[str, np.ndarray], list[str], dict]:
    """({relative path: bool masks (P, H, W)}, part names, {part: its factor names}) from parts.npz."""
    path = Path(root) / PARTS_FILE
    if not path.is_file():
        raise DataError(f"{path} is missing: a synthetic tree carries its ground-truth part masks there")
    with np.load(path) as stored:
        masks = np.unpackbits(stored["masks"], axis=-1, count=int(stored["width"])).astype(bool)
        table = dict(zip(stored["paths"].tolist(), masks))
        return table, stored["names"].tolist(), json.loads(str(stored["part_factors"]))


def generate(dataset: str, root: str | Path, n_per_class: int, resolution: int, seed: int, workers: int = 2) -> Path:
    """Write a synthetic dataset to `root` (replacing an earlier generated one); returns root."""
    root = Path(root)
    writer = {"toybirds": write_toybirds, "toytissue": write_toytissue}[dataset]
    tmp = root.with_name(root.name + ".partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    writer(tmp, n_per_class, resolution, seed, workers)
    marker = {"dataset": dataset, "n_per_class": n_per_class, "resolution": resolution, "seed": seed,
              "generator_version": GENERATOR_VERSION}
    (tmp / MARKER).write_text(json.dumps(marker, indent=2) + "\n")
    if root.exists():
        shutil.rmtree(root)
    os.replace(tmp, root)
    return root


def ensure_generated(dataset: str, root: str | Path, n_per_class: int, resolution: int, seed: int,
                     workers: int = 2) -> Path:
    """Generate `dataset` under `root` unless a tree made with exactly these settings is there.

    A folder at `root` without synthetic.json is not ours: refuse to overwrite it.
    """
    root = Path(root)
    wanted = {"dataset": dataset, "n_per_class": n_per_class, "resolution": resolution, "seed": seed,
              "generator_version": GENERATOR_VERSION}
    marker = root / MARKER
    if marker.is_file():
        try:
            if json.loads(marker.read_text()) == wanted:
                return root
        except json.JSONDecodeError:
            pass
    elif root.exists() and any(root.iterdir()):
        raise DataError(f"{root} exists and is not a generated {dataset} tree (no {MARKER}); "
                        "choose an empty or new `root` for synthetic data")
    return generate(dataset, root, n_per_class, resolution, seed, workers)


def attach_factors(raw: RawDataset) -> None:
    """Fill each split's `factors` from the tree's factors.csv, matching rows by relative path."""
    path = raw.root / FACTORS_FILE
    if not path.is_file():
        raise DataError(f"{path} is missing: a synthetic tree carries its ground-truth factors there")
    with open(path, newline="") as handle:
        reader = csv.reader(handle)
        header = next(reader)
        table = {row[0]: np.array(row[3:], dtype=np.float32) for row in reader}
    raw.factor_names = header[3:]
    for split, part in raw.splits.items():
        rows = []
        for file in part.paths:
            key = Path(file).relative_to(raw.root).as_posix()
            if key not in table:
                raise DataError(f"{path} has no row for {key}")
            rows.append(table[key])
        part.factors = np.stack(rows).astype(np.float32)


def attach_parts(raw: RawDataset) -> None:
    """Fill each split's `parts` (bool (N, P, H, W), at the drawn resolution) from parts.npz, matching
    rows by relative path, and the dataset's part names and each part's factors."""
    table, names, part_factors = read_parts(raw.root)
    raw.part_names, raw.part_factors = names, part_factors
    for part in raw.splits.values():
        keys = [Path(file).relative_to(raw.root).as_posix() for file in part.paths]
        missing = [key for key in keys if key not in table]
        if missing:
            raise DataError(f"{raw.root / PARTS_FILE} has no masks for {missing[0]}")
        part.parts = np.stack([table[key] for key in keys])


def read_factors_csv(root: str | Path) -> tuple[list[str], np.ndarray, np.ndarray, list[str]]:
    """(factor names, labels (N,), factors (N, F), splits) straight from a tree's factors.csv."""
    with open(Path(root) / FACTORS_FILE, newline="") as handle:
        reader = csv.reader(handle)
        header = next(reader)
        rows = list(reader)
    labels = np.array([int(r[2]) for r in rows], dtype=np.int64)
    factors = np.array([r[3:] for r in rows], dtype=np.float32).reshape(len(rows), -1)
    return header[3:], labels, factors, [r[1] for r in rows]
