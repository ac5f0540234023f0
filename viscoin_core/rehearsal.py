"""Inputs of the `rehearsal` profile: what the paper profile reads, made by code at its real formats.

`make rehearsal` runs every table at the paper's sizes (256 px, ResNet-50, StyleGAN2 paper256,
K = 256) on a CPU. Only the budgets shrink, and so do the inputs this machine cannot get:
- a miniature CUB-200-2011 tree in the archive's layout, with its quirks: a grayscale and a CMYK
  JPEG, float bounding boxes, `attributes.txt` beside the folder, and a 6-field attribute line;
- miniature NCT-CRC-HE-100K and CRC-VAL-HE-7K class folders of 224 px `.tif` tiles;
- network pickles in the official persistence format with random weights: the FFHQ-256 transfer
  source's configuration (paper256) and a BreCaHAD-like 512 px one (paper512).

    python -m viscoin_core.rehearsal [--root raw/rehearsal]

It writes each piece once (a piece already there is kept), so reruns cost nothing.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from viscoin_core.config import repo_root
from viscoin_core.data.nct import CLASSES as NCT_CLASSES, TEST_DIR, TRAIN_DIRS
from viscoin_core.nets.network_pkl_writer import write_network_pkl
from viscoin_core.nets.stylegan2 import Discriminator, Generator, paper256_kwargs

ROOT = "raw/rehearsal"
FFHQ_PKL = "weights/ffhq-res256-mirror-paper256-noaug.pkl"   # under ROOT, the official file's name
BRECAHAD_PKL = "weights/brecahad.pkl"
CUB_CLASSES = ("001.Black_footed_Albatross", "002.Laysan_Albatross", "003.Sooty_Albatross", "004.Groove_billed_Ani")
CUB_ATTRIBUTES = ("has_bill_shape::curved_(up_or_down)", "has_wing_color::blue", "has_wing_color::brown",
                  "has_upperparts_color::iridescent", "has_size::small_(5_-_9_in)", "has_shape::duck-like")


def paper512_kwargs() -> tuple[dict, dict]:
    """(G kwargs, D kwargs) of StyleGAN2-ADA's `paper512` configuration, which BreCaHAD was trained with."""
    g, d = paper256_kwargs()
    g["img_resolution"] = d["img_resolution"] = 512
    g["synthesis_kwargs"]["channel_base"] = d["channel_base"] = 32768
    return g, d


def bird_image(rng: np.random.Generator, colour: tuple[int, int, int], size: tuple[int, int]) -> Image.Image:
    """A blob of the class's colour on a noisy background, `size` = (width, height) pixels."""
    w, h = size
    background = rng.integers(60, 200, size=(h // 8 + 1, w // 8 + 1, 3), dtype=np.uint8)
    image = Image.fromarray(background).resize((w, h), Image.BILINEAR)
    pixels = np.asarray(image).copy()
    cy, cx = rng.integers(h // 4, 3 * h // 4), rng.integers(w // 4, 3 * w // 4)
    yy, xx = np.mgrid[:h, :w]
    inside = ((yy - cy) / (h / 5)) ** 2 + ((xx - cx) / (w / 4)) ** 2 < 1
    pixels[inside] = colour
    return Image.fromarray(pixels)


def write_cub_tree(folder: Path, train_per_class: int = 6, test_per_class: int = 3, seed: int = 0) -> Path:
    """A CUB_200_2011 tree of len(CUB_CLASSES) classes; returns `folder` (…/CUB_200_2011)."""
    rng = np.random.default_rng(seed)
    lines: dict[str, list[str]] = {k: [] for k in ("images", "labels", "split", "boxes", "attrs")}
    image_id = 0
    for c, name in enumerate(CUB_CLASSES):
        (folder / "images" / name).mkdir(parents=True, exist_ok=True)
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        for k in range(train_per_class + test_per_class):
            image_id += 1
            w, h = int(rng.integers(260, 420)), int(rng.integers(220, 380))
            image = bird_image(rng, colour, (w, h))
            if image_id == 2:
                image = image.convert("L")          # CUB holds a few grayscale JPEGs
            elif image_id == 3:
                image = image.convert("CMYK")       # and a few CMYK ones
            rel = f"{name}/{name.split('.', 1)[1]}_{image_id:04d}_{k}.jpg"
            image.save(folder / "images" / rel, format="JPEG", quality=90)
            lines["images"].append(f"{image_id} {rel}")
            lines["labels"].append(f"{image_id} {c + 1}")
            lines["split"].append(f"{image_id} {int(k < train_per_class)}")
            x, y = rng.uniform(0, w / 4), rng.uniform(0, h / 4)
            lines["boxes"].append(f"{image_id} {x:.1f} {y:.1f} {rng.uniform(w / 2, 3 * w / 4):.1f} "
                                  f"{rng.uniform(h / 2, 3 * h / 4):.1f}")   # CUB's boxes are floats
            for a in range(len(CUB_ATTRIBUTES)):
                present, certainty = int(rng.random() < 0.5), int(rng.integers(1, 5))
                extra = " 0" if (image_id, a) == (5, 0) else ""   # the archive's one 6-field line
                lines["attrs"].append(f"{image_id} {a + 1} {present} {certainty} {rng.uniform(0, 20):.3f}{extra}")
    files = {"images": "images.txt", "labels": "image_class_labels.txt", "split": "train_test_split.txt",
             "boxes": "bounding_boxes.txt"}
    for key, name in files.items():
        (folder / name).write_text("\n".join(lines[key]) + "\n")
    (folder / "classes.txt").write_text("".join(f"{c + 1} {n}\n" for c, n in enumerate(CUB_CLASSES)))
    (folder / "attributes").mkdir(exist_ok=True)
    (folder / "attributes" / "image_attribute_labels.txt").write_text("\n".join(lines["attrs"]) + "\n")
    # The archive ships attributes.txt beside CUB_200_2011/, not inside it.
    (folder.parent / "attributes.txt").write_text("".join(f"{a + 1} {n}\n" for a, n in enumerate(CUB_ATTRIBUTES)))
    return folder


def write_nct_tree(root: Path, train_per_class: int = 3, test_per_class: int = 2, seed: int = 0) -> Path:
    """NCT-CRC-HE-100K/<CLASS>/*.tif and CRC-VAL-HE-7K/<CLASS>/*.tif under `root`: 224 px RGB tiles."""
    rng = np.random.default_rng(seed)
    for c, name in enumerate(NCT_CLASSES):
        tint = np.array([200 - 12 * c, 120 + 8 * c, 190 - 5 * c])   # an H&E-like pink to purple per class
        for folder, count in ((TRAIN_DIRS["norm"], train_per_class), (TEST_DIR, test_per_class)):
            (root / folder / name).mkdir(parents=True, exist_ok=True)
            for k in range(count):
                noise = rng.normal(0, 25, size=(224, 224, 3))
                tile = np.clip(tint + noise, 0, 255).astype(np.uint8)
                Image.fromarray(tile).save(root / folder / name / f"{name}-{folder[:3]}{k:04d}.tif")
    return root


def write_random_pickle(path: Path, kwargs: tuple[dict, dict], seed: int) -> Path:
    """An official-format pickle of a G, D and G_ema of this configuration with seeded random weights."""
    g_kwargs, d_kwargs = kwargs
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        G, D, G_ema = Generator(**g_kwargs), Discriminator(**d_kwargs), Generator(**g_kwargs)
    G_ema.load_state_dict(G.state_dict())
    training_set = dict(class_name="training.dataset.ImageFolderDataset", path="rehearsal.zip",
                        resolution=g_kwargs["img_resolution"], use_labels=False)
    return write_network_pkl(path, {"G": G, "D": D, "G_ema": G_ema}, extras={"training_set_kwargs": training_set})


def make_inputs(root: str | Path = ROOT) -> dict[str, Path]:
    """Write every rehearsal input under `root` (relative to the repository) that is not there yet."""
    root = Path(root) if Path(root).is_absolute() else repo_root() / root
    made = {"cub": root / "CUB_200_2011", "nct": root / "nct", "ffhq": root / FFHQ_PKL, "brecahad": root / BRECAHAD_PKL}
    if not (made["cub"] / "images.txt").is_file():
        write_cub_tree(made["cub"])
    if not (made["nct"] / TEST_DIR).is_dir():
        write_nct_tree(made["nct"])
    if not made["ffhq"].is_file():
        write_random_pickle(made["ffhq"], paper256_kwargs(), seed=256)
    if not made["brecahad"].is_file():
        write_random_pickle(made["brecahad"], paper512_kwargs(), seed=512)
    return made


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m viscoin_core.rehearsal", description=__doc__.split("\n")[0])
    parser.add_argument("--root", default=ROOT, help=f"where the trees and pickles go (default {ROOT})")
    args = parser.parse_args(argv)
    for name, path in make_inputs(args.root).items():
        print(f"{name}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
