"""The resized image cache: one uint8 array per split, memory-mapped, plus manifest.json.

Layout of a cache directory (written by `data.prepare`, read here):

    manifest.json            settings it was built with, class/factor/attribute names, counts,
                             checksum, rejected files and why
    {split}_images.npy       uint8 (N, H, W, 3), RGB
    {split}_labels.npy       int64 (N,)
    {split}_factors.npy      float32 (N, F)   synthetic data only
    {split}_attributes.npy   bool (N, A)      CUB and toybirds only
    {split}_parts.npy        bool (N, P, H, W) synthetic data only: ground-truth part masks, cropped
                             and resized with the images (manifest: part_names, part_factors)

One array per split instead of thousands of small files keeps reading fast (the loader touches
one memory map) and makes the checksum cheap to define.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from viscoin_core.data.transforms import augmented_float_chw, to_float_chw

SPLITS = ("train", "test")
MANIFEST = "manifest.json"
FORMAT_VERSION = 3   # 2: 16-bit images scaled (were clipped), transparency composited on white; 3: part masks
OPTIONAL_ARRAYS = ("factors", "attributes", "parts")   # each present when the manifest has its <name>_names


class DataError(ValueError):
    """Bad raw data or a bad cache; the message names the path and what was expected."""


@contextlib.contextmanager
def file_lock(path: str | Path):
    """Hold an exclusive advisory lock on `path` (created if needed) for the duration of the block.

    Several processes (notebooks, tests, training runs) may ask for the same cache at once; the
    first builds it, the others wait and then find it ready.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def array_path(cache_dir: Path, split: str, name: str) -> Path:
    return Path(cache_dir) / f"{split}_{name}.npy"


def read_manifest(cache_dir: str | Path) -> dict | None:
    """The manifest of `cache_dir`, or None when there is none (or it is unreadable)."""
    path = Path(cache_dir) / MANIFEST
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def cache_is_complete(cache_dir: str | Path, manifest: dict) -> bool:
    """True when every array the manifest promises exists with the promised number of rows."""
    cache_dir = Path(cache_dir)
    for split in SPLITS:
        n = manifest["counts"][split]["total"]
        names = ["images", "labels"] + [k for k in OPTIONAL_ARRAYS if manifest.get(f"{k[:-1]}_names")]
        for name in names:
            path = array_path(cache_dir, split, name)
            if not path.is_file():
                return False
            try:
                shape = np.load(path, mmap_mode="r").shape
            except (OSError, ValueError):
                return False
            if shape[0] != n:
                return False
    return True


def checksum(cache_dir: str | Path, chunk: int = 1024) -> str:
    """sha256 over every cached array (images in chunks of `chunk` rows), in a fixed order."""
    cache_dir = Path(cache_dir)
    digest = hashlib.sha256()
    for split in SPLITS:
        for name in ("images", "labels", *OPTIONAL_ARRAYS):
            path = array_path(cache_dir, split, name)
            if not path.is_file():
                continue
            array = np.load(path, mmap_mode="r")
            digest.update(f"{split}_{name}{array.shape}{array.dtype}".encode())
            for start in range(0, len(array), chunk):
                digest.update(np.ascontiguousarray(array[start:start + chunk]).tobytes())
    return digest.hexdigest()


def remove_cache(cache_dir: str | Path) -> None:
    """Delete this module's files from `cache_dir` (manifest first, so a half-deleted cache is never valid)."""
    cache_dir = Path(cache_dir)
    (cache_dir / MANIFEST).unlink(missing_ok=True)
    for split in SPLITS:
        for name in ("images", "labels", *OPTIONAL_ARRAYS):
            array_path(cache_dir, split, name).unlink(missing_ok=True)
            array_path(cache_dir, split, name + ".tmp").unlink(missing_ok=True)


def write_manifest(cache_dir: str | Path, manifest: dict) -> Path:
    path = Path(cache_dir) / MANIFEST
    tmp = path.with_name(MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2) + "\n")
    os.replace(tmp, path)
    return path


class CachedDataset(Dataset):
    """One split of a prepared cache: `ds[i] -> (image, label)`.

    image: float32 (3, H, W) in [-1, 1]; label: int. With `augment=True` every read takes a fresh
    random pad-and-crop (reflect padding of resolution/8) and a horizontal flip with probability
    1/2, drawn from torch's RNG (so DataLoader worker seeding makes it repeatable).

    Attributes: labels (LongTensor N), class_names, n_classes, resolution, factors (FloatTensor N x F
    or None), factor_names, attributes (BoolTensor N x A or None), attribute_names, manifest;
    part_masks (bool (N, P, H, W) memory map, aligned with the images, or None), part_names and
    part_factors ({part: the factor names its appearance follows}), None for real datasets.
    """

    def __init__(self, cache_dir: str | Path, split: str, augment: bool = False):
        if split not in SPLITS:
            raise DataError(f"unknown split {split!r}; expected one of {list(SPLITS)}")
        self.cache_dir = Path(cache_dir)
        manifest = read_manifest(self.cache_dir)
        if manifest is None:
            raise DataError(f"{self.cache_dir / MANIFEST} is missing: prepare the cache first with "
                            "`python -m viscoin_core.data.prepare --params FILE`")
        if not cache_is_complete(self.cache_dir, manifest):
            raise DataError(f"cache {self.cache_dir} is incomplete (arrays missing or truncated); "
                            "run `python -m viscoin_core.data.prepare` again")
        self.manifest = manifest
        self.split = split
        self.augment = augment
        self.class_names: list[str] = list(manifest["class_names"])
        self.n_classes = len(self.class_names)
        self.resolution = int(manifest["settings"]["resolution"])
        self.labels = torch.from_numpy(np.load(array_path(self.cache_dir, split, "labels")).astype(np.int64))
        self.factor_names = manifest.get("factor_names")
        self.attribute_names = manifest.get("attribute_names")
        self.factors = self._optional("factors", torch.float32)
        self.attributes = self._optional("attributes", torch.bool)
        self.part_names = manifest.get("part_names")
        self.part_factors = manifest.get("part_factors")
        self._images = None  # opened lazily, once per process (DataLoader workers included)
        self._parts = None
        self._pid = self._parts_pid = None

    def _optional(self, name: str, dtype: torch.dtype) -> torch.Tensor | None:
        if not self.manifest.get(f"{name[:-1]}_names"):
            return None
        return torch.from_numpy(np.load(array_path(self.cache_dir, self.split, name))).to(dtype)

    @property
    def images(self) -> np.ndarray:
        """The uint8 (N, H, W, 3) memory map of this split."""
        if self._images is None or self._pid != os.getpid():
            self._images = np.load(array_path(self.cache_dir, self.split, "images"), mmap_mode="r")
            self._pid = os.getpid()
        return self._images

    @property
    def part_masks(self) -> np.ndarray | None:
        """The bool (N, P, H, W) memory map of this split's part masks (part_names), or None.

        Mapped rather than loaded: at 256 px the masks of a split are P times the size of its images'
        single channel, and the metrics read only a few rows.
        """
        if not self.part_names:
            return None
        if self._parts is None or self._parts_pid != os.getpid():
            self._parts = np.load(array_path(self.cache_dir, self.split, "parts"), mmap_mode="r")
            self._parts_pid = os.getpid()
        return self._parts

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = self.images[index]  # (H, W, 3) uint8 view of the read-only map
        if self.augment:
            return augmented_float_chw(image), int(self.labels[index])
        return to_float_chw(np.array(image)), int(self.labels[index])

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_images"] = state["_parts"] = None  # never pickle a memory map into worker processes
        return state

    def __repr__(self) -> str:
        return (f"CachedDataset({str(self.cache_dir)!r}, split={self.split!r}, n={len(self)}, "
                f"classes={self.n_classes}, resolution={self.resolution}, augment={self.augment})")


def load_split(cache_dir: str | Path, split: str, augment: bool = False) -> CachedDataset:
    """The `split` ('train' or 'test') of the cache in `cache_dir` as a torch Dataset (see CachedDataset)."""
    return CachedDataset(cache_dir, split, augment=augment)


# ----------------------------------------------------------------------------- raw indexes
# What a reader (cub.py, nct.py, folder.py) hands to `prepare`: file paths and per-image metadata.

@dataclass
class RawSplit:
    """One split of a raw dataset: image files and what is known about each (rows aligned)."""
    paths: list[Path]
    labels: np.ndarray                       # int64 (N,), 0-based
    boxes: np.ndarray | None = None          # float (N, 4) x, y, w, h in original pixels (CUB)
    attributes: np.ndarray | None = None     # bool (N, A)
    factors: np.ndarray | None = None        # float32 (N, F)
    parts: np.ndarray | None = None          # bool (N, P, H, W) at each image's own size (synthetic)


@dataclass
class RawDataset:
    """A parsed raw dataset: splits plus names; `prepare` turns it into a cache."""
    root: Path
    splits: dict[str, RawSplit]
    class_names: list[str]
    attribute_names: list[str] | None = None
    factor_names: list[str] | None = None
    part_names: list[str] | None = None
    part_factors: dict[str, list[str]] | None = None
    notes: dict = field(default_factory=dict)

    def fingerprint(self) -> str:
        """A hash of every file's relative path, size and label, so a changed raw tree is noticed."""
        digest = hashlib.sha256()
        for split in SPLITS:
            raw = self.splits[split]
            for path, label in zip(raw.paths, raw.labels.tolist()):
                try:
                    size = path.stat().st_size
                except OSError:
                    size = -1
                digest.update(f"{split}|{path.relative_to(self.root)}|{size}|{label}\n".encode())
        return digest.hexdigest()
