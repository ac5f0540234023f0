"""Image geometry and pixel conversions shared by the readers, the cache and the loaders.

Boxes are (left, top, right, bottom) in pixels of the original image, right/bottom exclusive,
floats allowed (PIL resamples sub-pixel boxes). Cached images are uint8 HWC; the loaders hand out
float32 CHW in [-1, 1] (docs/ARCHITECTURE.md, data flow).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image

CROPS = ("study", "center", "bbox")
STUDY_CROP = 256  # the study took one random 256x256 window of each original CUB image


def load_rgb(path: str | Path) -> Image.Image:
    """Open an image fully and convert it to 8-bit RGB; see `load_rgb_noted` for what each mode becomes."""
    return load_rgb_noted(path)[0]


def load_rgb_noted(path: str | Path) -> tuple[Image.Image, str | None]:
    """(8-bit RGB image, note or None): the image at `path` decoded and converted.

    - 16-bit grey (PIL modes I;16*, and I with values in 0..65535) is scaled to 8 bits by
      round(v / 257), so 65535 -> 255 and 32768 -> 128 (PIL's own conversion clips at 255).
    - Transparency (RGBA, LA, PA, a palette with a transparent index) is composited on white, the
      background a viewer shows; the note says so, `data.prepare` lists those files in the manifest
      and warns. An image whose alpha is everywhere opaque converts without a note.
    - Grey, 1-bit, palette, CMYK and YCbCr images convert as PIL converts them.
    - 32-bit float images (mode F) and 32-bit integers beyond 0..65535 are refused (ValueError): their
      range is unknown, and a guessed scale would silently change every pixel.
    Raises OSError/ValueError (from PIL) on unreadable or truncated files and on images above PIL's
    decompression-bomb limit; the caller records why.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # PIL's notes on odd EXIF; real failures raise
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with Image.open(path) as image:
            image.load()  # decode now: truncated files fail here, not later
            return to_rgb(image)


GREY16_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")
ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")


def to_rgb(image: Image.Image) -> tuple[Image.Image, str | None]:
    """An opened image as 8-bit RGB, and a note when pixels were composited (rules in `load_rgb_noted`)."""
    if image.mode in GREY16_MODES:
        values = np.asarray(image).astype(np.int64)
        if values.size and (values.min() < 0 or values.max() > 65535):
            raise ValueError(f"{image.mode} image with values {values.min()}..{values.max()}: not 8 or 16 bit, "
                             "its range is unknown")
        grey = ((values + 128) // 257).astype(np.uint8)   # round(v / 257): 65535 -> 255, 32768 -> 128
        return Image.fromarray(np.repeat(grey[..., None], 3, axis=2)), None
    if image.mode == "F":
        raise ValueError("32-bit float image: its range is unknown; convert it to 8 or 16 bit first")
    transparent = image.mode in ALPHA_MODES or (image.mode == "P" and "transparency" in image.info)
    if not transparent:
        return image.convert("RGB"), None
    rgba = image.convert("RGBA")
    if np.asarray(rgba)[..., 3].min() == 255:
        return rgba.convert("RGB"), None
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(white, rgba).convert("RGB"), f"{image.mode} with transparency composited on white"


def center_box(width: int, height: int) -> tuple[float, float, float, float]:
    """The largest centred square."""
    side = min(width, height)
    left, top = (width - side) / 2, (height - side) / 2
    return left, top, left + side, top + side


def study_box(width: int, height: int, rng: np.random.Generator,
              window: int = STUDY_CROP) -> tuple[float, float, float, float]:
    """One random square window of `window` original pixels (smaller images: their shorter side)."""
    side = min(window, width, height)
    left = int(rng.integers(0, width - side + 1))
    top = int(rng.integers(0, height - side + 1))
    return left, top, left + side, top + side


def bbox_box(width: int, height: int, box: tuple[float, float, float, float],
             margin: float) -> tuple[float, float, float, float]:
    """A square around `box` (x, y, w, h as in CUB's bounding_boxes.txt) with `margin` of its long side.

    The square is shifted to stay inside the image where it fits; when it is larger than the image
    it extends past the border (the caller pads), so the box is always inside the square.
    """
    x, y, w, h = box
    side = max(w, h) * (1.0 + 2.0 * margin)
    cx, cy = x + w / 2, y + h / 2
    left, top = cx - side / 2, cy - side / 2

    def fit(start: float, extent: float, lo: float, hi: float) -> float:
        # shift inside [0, extent] when the square fits, but never so far that the box leaves it
        if side <= extent:
            start = min(max(start, 0.0), extent - side)
        return min(max(start, hi - side), lo)

    left = fit(left, width, x, x + w)
    top = fit(top, height, y, y + h)
    return left, top, left + side, top + side


def crop_resize(image: Image.Image, box: tuple[float, float, float, float], resolution: int,
                resample: int = Image.Resampling.LANCZOS) -> np.ndarray:
    """Crop `box` (padding by edge replication where it leaves the image) and resize to a square.

    Returns uint8 (resolution, resolution, 3).
    """
    left, top, right, bottom = box
    width, height = image.size
    pad = int(np.ceil(max(0.0, -left, -top, right - width, bottom - height)))
    if pad > 0:
        padded = np.pad(np.asarray(image), ((pad, pad), (pad, pad), (0, 0)), mode="edge")
        image = Image.fromarray(padded)
        left, top, right, bottom = left + pad, top + pad, right + pad, bottom + pad
    out = image.resize((resolution, resolution), resample=resample, box=(left, top, right, bottom))
    return np.asarray(out, dtype=np.uint8)


def crop_resize_masks(masks: np.ndarray, box: tuple[float, float, float, float], resolution: int,
                      resample: int = Image.Resampling.LANCZOS) -> np.ndarray:
    """`crop_resize` for bool masks (P, H, W) of an image of that size: the same box, the same edge
    padding and the same filter on each mask as a float image, then thresholded at 1/2, so a mask
    covers the cropped image's pixels that its part covers. Returns bool (P, resolution, resolution)."""
    left, top, right, bottom = box
    height, width = masks.shape[1:]
    pad = int(np.ceil(max(0.0, -left, -top, right - width, bottom - height)))
    if pad > 0:
        masks = np.pad(masks, ((0, 0), (pad, pad), (pad, pad)), mode="edge")
        left, top, right, bottom = left + pad, top + pad, right + pad, bottom + pad
    out = [np.asarray(Image.fromarray(m.astype(np.float32)).resize((resolution, resolution), resample=resample,
                                                                  box=(left, top, right, bottom))) > 0.5
           for m in masks]
    return np.stack(out) if out else np.zeros((0, resolution, resolution), bool)


def random_window(image: np.ndarray, pad_fraction: float = 0.125) -> tuple[np.ndarray, bool]:
    """The random part of training augmentation on one uint8 (H, W, 3) image.

    Reflect-pads by `pad_fraction` of the side and takes a window of the original size at a random
    offset; also draws whether to flip left-right (probability 1/2). Random numbers come from
    torch's RNG, so DataLoader worker seeding makes them repeatable. Returns (contiguous window, flip).
    """
    height, width = image.shape[:2]
    pad = max(1, int(round(pad_fraction * height)))
    dy, dx, flip = torch.randint(0, 2 * pad + 1, (3,)).tolist()
    padded = np.pad(image, ((pad, pad), (pad, pad), (0, 0)), mode="reflect")
    return np.ascontiguousarray(padded[dy:dy + height, dx:dx + width]), bool(flip % 2)


def augment_uint8(image: np.ndarray, pad_fraction: float = 0.125) -> np.ndarray:
    """Training augmentation on one uint8 (H, W, 3) image: random pad-and-crop, random h-flip."""
    window, flip = random_window(image, pad_fraction)
    return window[:, ::-1] if flip else window


def augmented_float_chw(image: np.ndarray, pad_fraction: float = 0.125) -> torch.Tensor:
    """`augment_uint8` then `to_float_chw`, with the flip done by torch (a negative-stride numpy
    copy is several times slower): float32 (3, H, W) in [-1, 1]."""
    window, flip = random_window(image, pad_fraction)
    tensor = torch.from_numpy(window).permute(2, 0, 1)
    if flip:
        tensor = tensor.flip(-1)
    return tensor.float().div_(127.5).sub_(1.0)


def to_float_chw(image: np.ndarray) -> torch.Tensor:
    """uint8 (H, W, 3) -> float32 (3, H, W) in [-1, 1]."""
    tensor = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)
    return tensor.float().div_(127.5).sub_(1.0)


def to_uint8_hwc(images: torch.Tensor) -> np.ndarray:
    """float (..., 3, H, W) in [-1, 1] -> uint8 (..., H, W, 3), for showing and saving."""
    array = ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return array.movedim(-3, -1).cpu().numpy()
