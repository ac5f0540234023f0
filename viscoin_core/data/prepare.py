"""Raw dataset -> resized uint8 cache + manifest.json (notebook 01).

    python -m viscoin_core.data.prepare --params params/smoke/data_toybirds.yaml [--force] [--set key=value ...]

prints the manifest path last. A cache whose manifest records other settings (or another raw tree)
is rebuilt, never reused. For the synthetic datasets the raw tree under `root` is generated first
when it is missing or was generated with other settings.
"""

from __future__ import annotations

import argparse
import errno
import multiprocessing
import shutil
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np
from tqdm import tqdm

from viscoin_core.config import ConfigError, config_from, param, parse_config, read_params, resolve_path, to_dict
from viscoin_core.data import synthetic
from viscoin_core.data.cache import (FORMAT_VERSION, MANIFEST, SPLITS, DataError, RawDataset, array_path,
                                     cache_is_complete, checksum, file_lock, read_manifest, remove_cache, write_manifest)
from viscoin_core.data.cub import read_cub
from viscoin_core.data.folder import read_folder
from viscoin_core.data.nct import TRAIN_DIRS, class_weights, read_nct
from viscoin_core.data.transforms import (CROPS, bbox_box, center_box, crop_resize, crop_resize_masks, load_rgb_noted,
                                          study_box)

DATASETS = ("cub", "nct", "folder", "toybirds", "toytissue")
CUB_LIKE = ("cub", "toybirds")  # datasets in CUB's layout, the only ones with bounding boxes and crops


@dataclass
class DataConfig:
    """Parameters of data preparation (step 01). Paths are relative to the repository root."""
    dataset: str = param(choices=DATASETS, help="which reader: cub, nct, folder, or a synthetic stand-in")
    root: str = param(help="raw dataset folder; for toybirds/toytissue, where the generated tree is written")
    cache_dir: str = param(help="where the resized cache and manifest.json go")
    resolution: int = param(256, low=8, high=1024, help="side of the cached square images, pixels")
    crop: str = param("center", choices=CROPS, help="CUB layout only: study (random 256 px window), center, bbox")
    bbox_margin: float = param(0.1, low=0.0, high=1.0, help="bbox crop: margin on each side, fraction of the box's long side")
    seed: int = param(0, low=0, help="seeds synthetic generation, the study crop and folder splits")
    n_per_class: int = param(100, low=1, high=1_000_000, help="synthetic only: images per class and split")
    nct_variant: str = param("norm", choices=tuple(TRAIN_DIRS), help="nct only: Macenko-normalised or NONORM train tiles")
    test_fraction: float = param(0.2, low=0.0, high=1.0, low_open=True, help="folder only, without train/test folders")
    max_rejected: float = param(0.01, low=0.0, high=1.0, help="fail when more than this fraction of a split is unreadable")
    workers: int = param(2, low=1, high=64, help="processes decoding images (does not change the result)")

    def __post_init__(self):
        if self.crop != "center" and self.dataset not in CUB_LIKE:
            raise ConfigError(f"parameter 'crop' = {self.crop!r} applies to {list(CUB_LIKE)} only; "
                              f"dataset {self.dataset!r} takes 'center'")


def as_config(config: DataConfig | Mapping[str, Any] | str | Path) -> DataConfig:
    """A DataConfig from itself, a flat mapping or a YAML parameter file (relative to the repository root)."""
    return config_from(DataConfig, config, source="data parameters")


def read_raw(config: DataConfig, root: Path) -> RawDataset:
    """Parse the raw tree with the dataset's reader (synthetic trees share the real readers)."""
    if config.dataset in CUB_LIKE:
        raw = read_cub(root)
    elif config.dataset == "nct":
        raw = read_nct(root, config.nct_variant)
    elif config.dataset == "toytissue":
        raw = read_nct(root, "norm")
    else:
        raw = read_folder(root, config.test_fraction, config.seed)
    if config.dataset in synthetic.DATASETS:
        synthetic.attach_factors(raw)
        synthetic.attach_parts(raw)
    return raw


def requested_settings(config: DataConfig, root: Path, fingerprint: str) -> dict:
    """Everything that decides the cache's content; a manifest must match it exactly to be reused."""
    settings = {"format_version": FORMAT_VERSION, "dataset": config.dataset, "root": str(root),
                "resolution": config.resolution, "source_fingerprint": fingerprint}
    if config.dataset in CUB_LIKE:
        settings["crop"] = config.crop
        if config.crop == "bbox":
            settings["bbox_margin"] = config.bbox_margin
    if config.dataset in synthetic.DATASETS:
        settings["n_per_class"] = config.n_per_class
    if config.dataset == "nct":
        settings["nct_variant"] = config.nct_variant
    if config.dataset == "folder":
        settings["test_fraction"] = config.test_fraction
    if config.dataset == "folder" or (config.dataset in synthetic.DATASETS) or config.crop == "study":
        settings["seed"] = config.seed
    return settings


def process_image(job: tuple) -> tuple[int, np.ndarray | None, str | None, str | None]:
    """Load, crop and resize one image: (row, uint8 HWC or None, reason it was rejected or None,
    note on a conversion such as transparency composited on white, or None)."""
    row, path, box, crop, resolution, margin, seed = job
    try:
        image, note = load_rgb_noted(path)
    except Exception as err:  # PIL raises many types for bad files; record the reason, never crash
        return row, None, f"{type(err).__name__}: {err}", None
    if crop == "bbox" and (box[2] <= 0 or box[3] <= 0):
        return row, None, f"bounding box {box} has no area", None
    window, flip = crop_window(job, *image.size)
    array = crop_resize(image, window, resolution)
    return row, (array[:, ::-1] if flip else array), None, note


def crop_window(job: tuple, width: int, height: int) -> tuple[tuple[float, float, float, float], bool]:
    """(box in original pixels, whether to flip left-right) of one job's image of that size: the one
    place that decides the geometry, so images and their part masks are cut alike."""
    _, _, box, crop, _, margin, seed = job
    if crop == "bbox":
        return bbox_box(width, height, box, margin), False
    if crop == "study":
        rng = np.random.default_rng(seed)
        window = study_box(width, height, rng)
        return window, bool(rng.random() < 0.5)  # the study baked one flip into every image too (docs/DISCREPANCIES.md item 7)
    return center_box(width, height), False


def process_masks(job: tuple, masks: np.ndarray) -> np.ndarray:
    """One image's part masks (P, H, W) cut and resized as `process_image` cuts the image (the masks
    are drawn at the image's own size): bool (P, resolution, resolution)."""
    window, flip = crop_window(job, masks.shape[2], masks.shape[1])
    resolution = job[4]   # the job tuple of `jobs_for`
    out = crop_resize_masks(masks, window, resolution)
    return out[:, :, ::-1] if flip else out


def jobs_for(config: DataConfig, raw: RawDataset, split: str) -> list[tuple]:
    part = raw.splits[split]
    crop = config.crop if config.dataset in CUB_LIKE else "center"
    split_code = SPLITS.index(split)
    jobs = []
    for row, path in enumerate(part.paths):
        box = tuple(part.boxes[row]) if part.boxes is not None else None
        jobs.append((row, str(path), box, crop, config.resolution, config.bbox_margin, (config.seed, split_code, row)))
    return jobs


def write_split(config: DataConfig, raw: RawDataset, split: str, cache_dir: Path) -> tuple[list[dict], list[dict]]:
    """Decode one split into the cache; returns (rejected files with the reason, converted files with
    a note), paths relative to root.

    The images go through ordinary sequential writes into a temporary .npy that is renamed when it is
    complete: never a sparse memory map, whose stores on a full disk kill the process with SIGBUS and
    no message. The space the split needs is checked first; a full disk raises NoSpaceLeft naming the
    cache and the size, and every partial file of the split is removed.
    """
    part = raw.splits[split]
    jobs = jobs_for(config, raw, split)
    res = config.resolution
    shape = (len(jobs), res, res, 3)
    tmp = array_path(cache_dir, split, "images.tmp")
    compact = array_path(cache_dir, split, "images.compact.tmp")
    final = array_path(cache_dir, split, "images")
    masks_bytes = len(jobs) * len(raw.part_names or ()) * res * res   # bool part masks, one byte per pixel
    require_space(cache_dir, int(np.prod(shape)) + masks_bytes,
                  f"the {split} images" + (" and their part masks" if masks_bytes else ""))
    ok = np.zeros(len(jobs), dtype=bool)
    rejected, converted = [], []
    try:
        with open(tmp, "wb") as handle:
            write_npy_header(handle, shape)
            for row, array, reason, note in decoded(config, jobs, split):
                handle.write(row_bytes(array, res))   # rows arrive in order; a rejected row is zeros for now
                if array is None:
                    rejected.append({"path": relative(part.paths[row], raw.root), "reason": reason})
                else:
                    ok[row] = True
                    if note:
                        converted.append({"path": relative(part.paths[row], raw.root), "note": note})
        n_rejected = int((~ok).sum())
        if n_rejected > config.max_rejected * len(jobs):
            listing = "; ".join(f"{r['path']}: {r['reason']}" for r in rejected[:5])
            raise DataError(f"{raw.root}: {n_rejected} of {len(jobs)} {split} images are unreadable "
                            f"(more than max_rejected = {config.max_rejected:.2%}): {listing}")
        keep = np.flatnonzero(ok)
        if len(keep) == len(jobs):
            tmp.replace(final)
        else:   # drop the rejected rows: a second sequential file, read from the complete first one
            source = np.load(tmp, mmap_mode="r")
            with open(compact, "wb") as handle:
                write_npy_header(handle, (len(keep), res, res, 3))
                for start in range(0, len(keep), 1024):
                    handle.write(np.ascontiguousarray(source[keep[start:start + 1024]]).tobytes())
            del source
            compact.replace(final)
        np.save(array_path(cache_dir, split, "labels"), part.labels[keep].astype(np.int64))
        if raw.factor_names:
            np.save(array_path(cache_dir, split, "factors"), part.factors[keep].astype(np.float32))
        if raw.attribute_names:
            np.save(array_path(cache_dir, split, "attributes"), part.attributes[keep].astype(bool))
        if raw.part_names:
            masks = [process_masks(jobs[row], part.parts[row]) for row in keep]
            np.save(array_path(cache_dir, split, "parts"),
                    np.stack(masks) if masks else np.zeros((0, len(raw.part_names), res, res), bool))
    except OSError as err:
        if err.errno in (errno.ENOSPC, errno.EDQUOT):
            raise no_space(cache_dir, int(np.prod(shape)), f"the {split} images") from None
        raise
    finally:
        tmp.unlink(missing_ok=True)
        compact.unlink(missing_ok=True)
    return rejected, converted


def decoded(config: DataConfig, jobs: list[tuple], split: str):
    """process_image over `jobs`, in row order (worker processes for large splits)."""
    bar = dict(total=len(jobs), desc=f"{config.dataset} {split}", unit="img", leave=False, mininterval=2)
    if config.workers > 1 and len(jobs) >= 256:
        context = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else None)
        with context.Pool(config.workers) as pool:
            yield from tqdm(pool.imap(process_image, jobs, chunksize=32), **bar)
    else:
        for job in tqdm(jobs, **bar):
            yield process_image(job)


def write_npy_header(handle, shape: tuple[int, ...]) -> None:
    """The .npy header of a C-order uint8 array of `shape` (the rows follow as raw bytes)."""
    np.lib.format.write_array_header_1_0(handle, {"descr": np.lib.format.dtype_to_descr(np.dtype(np.uint8)),
                                                  "fortran_order": False, "shape": tuple(int(n) for n in shape)})


def row_bytes(array: np.ndarray | None, res: int) -> bytes:
    """One cached image as bytes; zeros for a rejected one."""
    if array is None:
        return bytes(res * res * 3)
    return np.ascontiguousarray(array, dtype=np.uint8).tobytes()


def relative(path: Path | str, root: Path) -> str:
    return str(Path(path).relative_to(root))


def require_space(cache_dir: Path, n_bytes: int, what: str) -> None:
    """Raise NoSpaceLeft before decoding when `cache_dir`'s file system has less free space than `n_bytes`."""
    free = shutil.disk_usage(cache_dir).free
    if free < n_bytes:
        raise no_space(cache_dir, n_bytes, what)


def no_space(cache_dir: Path, n_bytes: int, what: str):
    """NoSpaceLeft: 'no space left on device: <cache> needs N MB for <what> (M MB free); nothing was kept'."""
    from viscoin_core.runs import NoSpaceLeft
    free = shutil.disk_usage(cache_dir).free
    return NoSpaceLeft(errno.ENOSPC, f"no space left on device: {cache_dir} needs {n_bytes / 2**20:.1f} MB for "
                                     f"{what} ({free / 2**20:.1f} MB free); the partial cache was removed")


def class_checks(raw: RawDataset, counts: dict, rejected: dict) -> list[str]:
    """Raise DataError for a class with no readable training image; return warnings for classes with
    one training image or no test image (each names the class and its folder)."""
    notes = []
    for c, name in enumerate(raw.class_names):
        folder = class_folder(raw, c)
        n_train, n_test = counts["train"]["per_class"][c], counts["test"]["per_class"][c]
        if n_train == 0:
            bad = [r for r in rejected["train"] if Path(raw.root, r["path"]).parent == folder]
            why = f": {bad[0]['path']}: {bad[0]['reason']}" if bad else ""
            raise DataError(f"class '{name}' ({folder}) has no readable training image "
                            f"({len(bad)} rejected{why}); fix or remove the class")
        if n_test == 0:
            notes.append(f"class '{name}' ({folder}) has no test image ({n_train} train): its accuracy is not "
                         "measured; give it at least 2 images")
        elif n_train == 1:
            notes.append(f"class '{name}' ({folder}) has a single training image")
    return notes


def class_folder(raw: RawDataset, label: int) -> Path:
    """The folder of class `label`'s first image (any split), else the dataset's root."""
    for split in SPLITS:
        part = raw.splits[split]
        rows = np.flatnonzero(part.labels == label)
        if len(rows):
            return Path(part.paths[rows[0]]).parent
    return Path(raw.root)


def prepare(config: DataConfig | Mapping[str, Any] | str | Path, force: bool = False) -> Path:
    """Build the cache described by `config` (or reuse a matching one); returns the manifest path."""
    config = as_config(config)
    root, cache_dir = resolve_path(config.root), resolve_path(config.cache_dir)
    with file_lock(cache_dir.parent / f".{cache_dir.name}.lock"):
        if config.dataset in synthetic.DATASETS:
            with file_lock(root.parent / f".{root.name}.lock"):
                synthetic.ensure_generated(config.dataset, root, config.n_per_class, config.resolution,
                                           config.seed, config.workers)
        return build_or_reuse(config, root, cache_dir, force)


def build_or_reuse(config: DataConfig, root: Path, cache_dir: Path, force: bool) -> Path:
    """The body of `prepare`, run while holding the cache's lock."""
    raw = read_raw(config, root)
    settings = requested_settings(config, root, raw.fingerprint())
    manifest = read_manifest(cache_dir)
    if not force and manifest is not None and manifest.get("settings") == settings and cache_is_complete(cache_dir, manifest):
        return cache_dir / MANIFEST

    start = time.time()
    cache_dir.mkdir(parents=True, exist_ok=True)
    remove_cache(cache_dir)
    try:   # the manifest is written last: until then the directory holds no valid cache
        return write_cache(config, raw, settings, cache_dir, start)
    except BaseException:
        remove_cache(cache_dir)   # no partial arrays are left to fill the disk or to be mistaken for a cache
        raise


def write_cache(config: DataConfig, raw: RawDataset, settings: dict, cache_dir: Path, start: float) -> Path:
    """Write every split and then the manifest; returns the manifest path. Warns (and records in the
    manifest) on converted images and on classes with too few images."""
    rejected, converted, counts = {}, {}, {}
    n_classes = len(raw.class_names)
    for split in SPLITS:
        rejected[split], converted[split] = write_split(config, raw, split, cache_dir)
        labels = np.load(array_path(cache_dir, split, "labels"))
        counts[split] = {"total": int(len(labels)),
                         "per_class": np.bincount(labels, minlength=n_classes).tolist()}
    notes = class_checks(raw, counts, rejected)
    for split in SPLITS:
        if converted[split]:
            first = converted[split][0]
            notes.append(f"{len(converted[split])} {split} image(s) had transparency, composited on white "
                         f"(first: {first['path']}; all listed under 'converted' in the manifest)")
    for note in notes:
        warnings.warn(f"{raw.root}: {note}", stacklevel=3)
    manifest = {
        "format_version": FORMAT_VERSION,
        "settings": settings,
        "config": to_dict(config),
        "source": settings["root"],
        "class_names": raw.class_names,
        "factor_names": raw.factor_names,
        "attribute_names": raw.attribute_names,
        "part_names": raw.part_names,
        "part_factors": raw.part_factors,
        "image_shape": [config.resolution, config.resolution, 3],
        "counts": counts,
        "class_weights": class_weights(np.maximum(counts["train"]["per_class"], 1)).tolist(),
        "rejected": rejected,
        "converted": converted,
        "warnings": notes,
        "checksum": {"sha256": checksum(cache_dir)},
        "notes": raw.notes,
        "built_seconds": round(time.time() - start, 2),
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    return write_manifest(cache_dir, manifest)


def ensure_prepared(params: DataConfig | Mapping[str, Any] | str | Path) -> Path:
    """Prepare the cache if it is missing or stale; returns the cache directory (absolute)."""
    return prepare(params).parent


def summary(manifest: dict) -> str:
    """A short human-readable account of a manifest: source, settings, counts, rejects."""
    lines = [f"dataset {manifest['settings']['dataset']} from {manifest['source']}",
             f"resolution {manifest['settings']['resolution']} px, settings "
             + ", ".join(f"{k}={v}" for k, v in manifest["settings"].items()
                         if k not in ("dataset", "root", "resolution", "source_fingerprint"))]
    for split in SPLITS:
        n_rej = len(manifest["rejected"][split])
        lines.append(f"{split}: {manifest['counts'][split]['total']} images, {n_rej} rejected")
    lines += [f"warning: {note}" for note in manifest.get("warnings", [])]
    lines.append(f"{len(manifest['class_names'])} classes; factors: {len(manifest['factor_names'] or [])}; "
                 f"attributes: {len(manifest['attribute_names'] or [])}; part masks: {len(manifest.get('part_names') or [])}")
    lines.append(f"checksum sha256 {manifest['checksum']['sha256'][:16]}...")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m viscoin_core.data.prepare", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", required=True, help="YAML parameter file (flat DataConfig keys)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override one parameter")
    parser.add_argument("--force", action="store_true", help="rebuild even when the cache matches")
    args = parser.parse_args(argv)
    from viscoin_core.config import parse_overrides
    try:
        params = read_params(args.params)
        params.update(parse_overrides(args.set))
        config = parse_config(DataConfig, params, source=args.params)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)   # the summary below lists them, once
            path = prepare(config, force=args.force)
    except (ConfigError, DataError) as err:
        print(f"error: {' '.join(str(err).split())}", file=sys.stderr)
        return 2
    print(summary(read_manifest(path.parent)), file=sys.stderr)
    print(path)
    return 0


if __name__ == "__main__":
    from viscoin_core.cli import run
    sys.exit(run(main))
