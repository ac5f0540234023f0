"""Readers, crops, the cache and its loader, on miniature CUB / NCT / class-folder trees written here."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from viscoin_core.config import ConfigError
from viscoin_core.data import DataError, load_split, read_manifest
from viscoin_core.data.cub import read_cub
from viscoin_core.data.folder import read_folder
from viscoin_core.data.nct import class_weights, read_nct
from viscoin_core.data.prepare import DataConfig, ensure_prepared, main, prepare
from viscoin_core.data.transforms import augment_uint8, augmented_float_chw, bbox_box, center_box, crop_resize, study_box

# ----------------------------------------------------------------------------- fixture builders

CUB_CLASSES = ["001.Red_Bird", "002.Green_Bird", "003.Blue_Bird"]
CUB_COLOURS = [(200, 30, 30), (30, 180, 40), (20, 40, 210)]
# Per class, four images: the first two train, the last two test (as train_test_split.txt says).
CUB_SIZES = [(40, 30), (30, 44), (50, 50), (36, 28)]


def write_cub(root: Path, corrupt: bool = True) -> Path:
    """A 3-class, 12-image CUB_200_2011 tree. Image ids 1..12, class c owns ids 4c+1..4c+4.

    Special files: id 2 is grayscale (value 90), id 6 is CMYK (pure cyan), id 11 is corrupt bytes.
    Every other image is a solid colour of its class. attributes.txt lies beside the folder.
    """
    root.mkdir(parents=True)
    lines = {k: [] for k in ("images", "labels", "split", "boxes", "attrs")}
    for c, name in enumerate(CUB_CLASSES):
        (root / "images" / name).mkdir(parents=True)
        for k, (w, h) in enumerate(CUB_SIZES):
            image_id = 4 * c + k + 1
            rel = f"{name}/{name[4:]}_{k}.jpg"
            path = root / "images" / rel
            if image_id == 2:
                Image.new("L", (w, h), 90).save(path, format="PNG")
            elif image_id == 6:
                Image.new("CMYK", (w, h), (255, 0, 0, 0)).save(path, format="JPEG", quality=100)
            elif image_id == 11 and corrupt:
                path.write_bytes(b"this is not an image at all")
            else:
                Image.new("RGB", (w, h), CUB_COLOURS[c]).save(path, format="PNG")
            lines["images"].append(f"{image_id} {rel}")
            lines["labels"].append(f"{image_id} {c + 1}")
            lines["split"].append(f"{image_id} {int(k < 2)}")
            lines["boxes"].append(f"{image_id} 5.0 4.0 {w - 15}.0 {h - 12}.0")
            # attribute 1: present, certainty 4; attribute 2: present but certainty 2 (guessing);
            # attribute 3: present with certainty 3 for class 1 only; the sixth field mimics the
            # stray extra column of the official file
            lines["attrs"] += [f"{image_id} 1 1 4 1.5", f"{image_id} 2 1 2 0.5",
                               f"{image_id} 3 {int(c == 1)} 3 2.0 0"]
    for key, name in [("images", "images.txt"), ("labels", "image_class_labels.txt"),
                      ("split", "train_test_split.txt"), ("boxes", "bounding_boxes.txt")]:
        (root / name).write_text("\n".join(lines[key]) + "\n")
    (root / "classes.txt").write_text("".join(f"{c + 1} {n}\n" for c, n in enumerate(CUB_CLASSES)))
    (root / "attributes").mkdir()
    (root / "attributes" / "image_attribute_labels.txt").write_text("\n".join(lines["attrs"]) + "\n")
    (root.parent / "attributes.txt").write_text("1 has_bill_shape::curved\n2 has_wing_color::blue\n3 has_size::small_(5_-_9_in)\n")
    return root


NCT_COLOURS = {"ADI": (240, 230, 235), "BACK": (250, 250, 250), "TUM": (90, 40, 120)}


def write_nct(root: Path, per_class: dict[str, int] | None = None, corrupt: bool = True) -> Path:
    """Train (NCT-CRC-HE-100K) and test (CRC-VAL-HE-7K) folders of solid 224 px tiles; ADI/BACK/TUM.

    Train holds 3 ADI, 2 BACK, 5 TUM (unless `per_class`); test 2 of each. One extra train TUM
    tile is corrupt when `corrupt`.
    """
    per_class = per_class or {"ADI": 3, "BACK": 2, "TUM": 5}
    for top, counts in (("NCT-CRC-HE-100K", per_class), ("CRC-VAL-HE-7K", {c: 2 for c in NCT_COLOURS})):
        for name, count in counts.items():
            folder = root / top / name
            folder.mkdir(parents=True)
            for k in range(count):
                Image.new("RGB", (224, 224), NCT_COLOURS[name]).save(folder / f"{name}-{k:04d}.tif")
    if corrupt:
        (root / "NCT-CRC-HE-100K" / "TUM" / "TUM-bad.tif").write_bytes(b"II*\x00 truncated")
    return root


# ----------------------------------------------------------------------------- CUB parsing


def test_cub_parsing_matches_hand_written_expectations(tmp_path):
    root = write_cub(tmp_path / "CUB_200_2011")
    raw = read_cub(root)
    assert raw.class_names == CUB_CLASSES
    train, test = raw.splits["train"], raw.splits["test"]
    assert [p.name for p in train.paths] == [f"{n[4:]}_{k}.jpg" for n in CUB_CLASSES for k in (0, 1)]
    assert train.labels.tolist() == [0, 0, 1, 1, 2, 2] and test.labels.tolist() == [0, 0, 1, 1, 2, 2]
    # boxes: x, y, w, h as written, for the test image of class 0 with size (50, 50)
    np.testing.assert_allclose(test.boxes[0], [5, 4, 35, 38])
    assert raw.attribute_names == ["has_bill_shape::curved", "has_wing_color::blue", "has_size::small_(5_-_9_in)"]
    # attribute 1 always (certainty 4), attribute 2 never (certainty 2), attribute 3 for class 1 only
    expected = np.array([[True, False, c == 1] for c in train.labels.tolist()])
    np.testing.assert_array_equal(train.attributes, expected)


def test_cub_missing_metadata_names_path_and_layout(tmp_path):
    root = write_cub(tmp_path / "CUB_200_2011")
    (root / "train_test_split.txt").unlink()
    with pytest.raises(DataError, match=r"train_test_split\.txt.*images\.txt, image_class_labels"):
        read_cub(root)


def test_cub_missing_image_names_path(tmp_path):
    root = write_cub(tmp_path / "CUB_200_2011")
    victim = root / "images" / CUB_CLASSES[2] / "Blue_Bird_3.jpg"
    victim.unlink()
    with pytest.raises(DataError, match=str(victim).replace(".", r"\.")):
        read_cub(root)


def test_cub_split_naming_unknown_image_fails(tmp_path):
    root = write_cub(tmp_path / "CUB_200_2011")
    with open(root / "train_test_split.txt", "a") as handle:
        handle.write("99 1\n")
    with pytest.raises(DataError, match="image id 99"):
        read_cub(root)


def test_cub_class_only_in_test_fails(tmp_path):
    root = write_cub(tmp_path / "CUB_200_2011")
    lines = (root / "train_test_split.txt").read_text().splitlines()
    # move both train images of class 3 (ids 9, 10) to test
    lines = [f"{l.split()[0]} 0" if l.split()[0] in ("9", "10") else l for l in lines]
    (root / "train_test_split.txt").write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match="003.Blue_Bird.*test but not in train"):
        read_cub(root)


# ----------------------------------------------------------------------------- crop geometry


def test_bbox_crop_is_a_square_containing_the_box():
    rng = np.random.default_rng(0)
    for _ in range(500):
        width, height = rng.integers(20, 400, 2)
        x, y = rng.uniform(0, width - 2), rng.uniform(0, height - 2)
        w, h = rng.uniform(1, width - x), rng.uniform(1, height - y)
        margin = rng.uniform(0, 0.5)
        left, top, right, bottom = bbox_box(width, height, (x, y, w, h), margin)
        assert right - left == pytest.approx(bottom - top)
        assert right - left == pytest.approx(max(w, h) * (1 + 2 * margin))
        assert left <= x + 1e-6 and top <= y + 1e-6 and right >= x + w - 1e-6 and bottom >= y + h - 1e-6
        if right - left <= min(width, height):  # a square that fits stays inside the image
            assert left >= -1e-6 and top >= -1e-6 and right <= width + 1e-6 and bottom <= height + 1e-6


def test_center_and_study_boxes():
    assert center_box(100, 60) == (20, 0, 80, 60)
    rng = np.random.default_rng(1)
    for width, height in [(500, 375), (300, 600), (200, 150)]:
        left, top, right, bottom = study_box(width, height, rng)
        side = min(256, width, height)
        assert (right - left, bottom - top) == (side, side)
        assert 0 <= left and right <= width and 0 <= top and bottom <= height


def test_bbox_crop_pixels_show_the_whole_box():
    # a red 30x20 box on blue; the cached crop must show all of it, surrounded by a blue margin
    image = np.zeros((120, 160, 3), np.uint8)
    image[...] = (0, 0, 255)
    image[50:70, 100:130] = (255, 0, 0)
    box = bbox_box(160, 120, (100, 50, 30, 20), margin=0.2)
    out = crop_resize(Image.fromarray(image), box, 64)
    red = (out[..., 0] > 128) & (out[..., 2] < 128)
    rows, cols = np.flatnonzero(red.any(1)), np.flatnonzero(red.any(0))
    # box side 30 px -> square of 42 px -> 64 px: the box spans 30/42*64 ~ 46 px wide, 20/42*64 ~ 30 tall
    assert 44 <= cols[-1] - cols[0] + 1 <= 48 and 28 <= rows[-1] - rows[0] + 1 <= 32
    assert cols[0] > 2 and cols[-1] < 61 and rows[0] > 2 and rows[-1] < 61


def test_bbox_crop_pads_when_the_square_leaves_the_image():
    image = Image.new("RGB", (40, 30), (10, 200, 10))
    box = bbox_box(40, 30, (0, 0, 40, 30), margin=0.25)  # square of 60 px around a 40x30 image
    assert box[0] < 0 and box[2] > 40
    out = crop_resize(image, box, 16)
    assert out.shape == (16, 16, 3) and np.all(np.abs(out.astype(int) - (10, 200, 10)) <= 1)


# ----------------------------------------------------------------------------- the cache


def cub_config(tmp_path, **overrides):
    params = {"dataset": "cub", "root": str(tmp_path / "CUB_200_2011"), "cache_dir": str(tmp_path / "cache"),
              "resolution": 16, "crop": "center", "max_rejected": 0.5, "workers": 1}
    params.update(overrides)
    return params


def test_cache_round_trip_with_grayscale_cmyk_and_a_corrupt_file(tmp_path):
    write_cub(tmp_path / "CUB_200_2011")
    manifest_path = prepare(cub_config(tmp_path))
    manifest = json.loads(manifest_path.read_text())
    # the corrupt test image (id 11: class 2, k = 2) is skipped and recorded with its reason
    assert manifest["rejected"]["train"] == []
    [bad] = manifest["rejected"]["test"]
    assert bad["path"] == "images/003.Blue_Bird/Blue_Bird_2.jpg" and "cannot identify" in bad["reason"]
    assert manifest["counts"]["train"] == {"total": 6, "per_class": [2, 2, 2]}
    assert manifest["counts"]["test"] == {"total": 5, "per_class": [2, 2, 1]}

    train = load_split(tmp_path / "cache", "train")
    assert len(train) == 6 and train.resolution == 16 and train.class_names == CUB_CLASSES
    # train rows are ids 1, 2 (grayscale 90), 5, 6 (CMYK cyan), 9, 10
    expected = [CUB_COLOURS[0], (90, 90, 90), CUB_COLOURS[1], (0, 255, 255), CUB_COLOURS[2], CUB_COLOURS[2]]
    for i, colour in enumerate(expected):
        image, label = train[i]
        assert image.shape == (3, 16, 16) and image.dtype == torch.float32 and label == i // 2
        want = torch.tensor(colour, dtype=torch.float32)[:, None, None] / 127.5 - 1
        assert torch.allclose(image, want.expand(3, 16, 16), atol=2.5 / 127.5), (i, image.mean((1, 2)))
    test = load_split(tmp_path / "cache", "test")
    assert test.labels.tolist() == [0, 0, 1, 1, 2]
    assert test.attributes.shape == (5, 3) and test.attributes[:, 1].sum() == 0
    assert test.factors is None and train.attribute_names[0] == "has_bill_shape::curved"


def test_cache_is_reused_when_settings_match_and_rebuilt_otherwise(tmp_path):
    root = write_cub(tmp_path / "CUB_200_2011")
    images = tmp_path / "cache" / "train_images.npy"
    first = prepare(cub_config(tmp_path))
    os.utime(images, ns=(1, 1))
    assert prepare(cub_config(tmp_path)) == first and images.stat().st_mtime_ns == 1  # reused

    prepare(cub_config(tmp_path, resolution=8))  # other settings: rebuilt at the new size
    assert load_split(tmp_path / "cache", "train")[0][0].shape == (3, 8, 8)

    # a changed raw tree (one more train image) is noticed through the fingerprint
    Image.new("RGB", (30, 30), CUB_COLOURS[0]).save(root / "images" / CUB_CLASSES[0] / "Red_Bird_0.jpg", format="PNG")
    before = read_manifest(first.parent)["settings"]["source_fingerprint"]
    prepare(cub_config(tmp_path, resolution=8))
    assert read_manifest(first.parent)["settings"]["source_fingerprint"] != before

    # a manifest edited by hand never passes for the requested settings
    manifest = read_manifest(first.parent)
    manifest["settings"]["crop"] = "bbox"
    first.write_text(json.dumps(manifest))
    prepare(cub_config(tmp_path, resolution=8))
    assert read_manifest(first.parent)["settings"]["crop"] == "center"


def test_too_many_rejected_images_fail(tmp_path):
    write_cub(tmp_path / "CUB_200_2011")
    with pytest.raises(DataError, match=r"1 of 6 test images are unreadable.*Blue_Bird_2\.jpg"):
        prepare(cub_config(tmp_path, max_rejected=0.01))


def test_bbox_and_study_crops_through_prepare(tmp_path):
    write_cub(tmp_path / "CUB_200_2011")
    for crop in ("bbox", "study"):
        path = prepare(cub_config(tmp_path, crop=crop, cache_dir=str(tmp_path / crop)))
        assert read_manifest(path.parent)["settings"]["crop"] == crop
        assert load_split(path.parent, "train")[0][0].shape == (3, 16, 16)
    # the study's random 256 px windows (and baked flips) follow the seed: use a textured image
    noise = np.random.default_rng(0).integers(0, 256, (280, 300, 3), dtype=np.uint8)
    Image.fromarray(noise).save(tmp_path / "CUB_200_2011" / "images" / CUB_CLASSES[0] / "Red_Bird_0.jpg", format="PNG")
    first, again, other = (prepare(cub_config(tmp_path, crop="study", seed=seed, cache_dir=str(tmp_path / name)))
                           for name, seed in (("s0", 0), ("s0_again", 0), ("s1", 1)))
    checksum = lambda path: read_manifest(path.parent)["checksum"]["sha256"]  # noqa: E731
    assert checksum(first) == checksum(again) != checksum(other)


def test_config_validation():
    base = {"dataset": "nct", "root": "raw/x", "cache_dir": "c"}
    with pytest.raises(ConfigError, match="crop"):
        DataConfig(**base, crop="bbox")
    from viscoin_core.config import parse_config
    with pytest.raises(ConfigError, match="resolution"):
        parse_config(DataConfig, {**base, "resolution": 4})
    with pytest.raises(ConfigError, match="unknown parameter"):
        parse_config(DataConfig, {**base, "colour": 1})
    with pytest.raises(ConfigError, match="root"):
        parse_config(DataConfig, {"dataset": "nct", "cache_dir": "c"})


# ----------------------------------------------------------------------------- NCT and folders


def test_nct_parsing_counts_and_resize(tmp_path):
    root = write_nct(tmp_path / "nct")
    raw = read_nct(root)
    assert raw.class_names == ["ADI", "BACK", "TUM"]
    assert np.bincount(raw.splits["train"].labels).tolist() == [3, 2, 6]  # the corrupt tile is still listed
    path = prepare({"dataset": "nct", "root": str(root), "cache_dir": str(tmp_path / "cache"), "resolution": 24,
                    "max_rejected": 0.2, "workers": 1})
    manifest = read_manifest(path.parent)
    assert manifest["counts"]["train"]["per_class"] == [3, 2, 5]
    assert manifest["rejected"]["train"][0]["path"] == "NCT-CRC-HE-100K/TUM/TUM-bad.tif"
    np.testing.assert_allclose(manifest["class_weights"], class_weights([3, 2, 5]).tolist(), rtol=1e-6)
    image, label = load_split(path.parent, "test")[5]
    assert label == 2 and image.shape == (3, 24, 24)
    assert torch.allclose(image.mean((1, 2)), torch.tensor(NCT_COLOURS["TUM"]) / 127.5 - 1, atol=0.01)


def test_nct_bad_trees(tmp_path):
    with pytest.raises(DataError, match="NCT-CRC-HE-100K.*expected root/"):
        read_nct(tmp_path)
    root = write_nct(tmp_path / "a", corrupt=False)
    (root / "NCT-CRC-HE-100K" / "MUC").mkdir()
    with pytest.raises(DataError, match="MUC holds no images"):
        read_nct(root)
    root = write_nct(tmp_path / "b", per_class={"ADI": 2, "TUM": 2}, corrupt=False)
    with pytest.raises(DataError, match=r"\['BACK'\].*test split but not in train"):
        read_nct(root)


def test_class_weights_closed_form():
    weights = class_weights([1, 2, 4])
    inverse = np.array([1, 0.5, 0.25])
    np.testing.assert_allclose(weights.numpy(), inverse / inverse.mean(), rtol=1e-6)
    assert float(weights.mean()) == pytest.approx(1.0)
    assert torch.equal(class_weights([7, 7, 7]), torch.ones(3))
    with pytest.raises(ValueError):
        class_weights([3, 0])


def test_folder_dataset_split_is_seeded_and_per_class(tmp_path):
    for name, count in (("cats", 10), ("dogs", 5)):
        (tmp_path / "pets" / name).mkdir(parents=True)
        for k in range(count):
            Image.new("RGB", (8, 8), (k, 0, 0)).save(tmp_path / "pets" / name / f"{k}.png")
    a, b = read_folder(tmp_path / "pets", 0.2, seed=3), read_folder(tmp_path / "pets", 0.2, seed=3)
    assert a.splits["test"].paths == b.splits["test"].paths
    assert np.bincount(a.splits["test"].labels).tolist() == [2, 1]
    assert np.bincount(a.splits["train"].labels).tolist() == [8, 4]
    assert not set(a.splits["test"].paths) & set(a.splits["train"].paths)
    path = prepare({"dataset": "folder", "root": str(tmp_path / "pets"), "cache_dir": str(tmp_path / "cache"),
                    "resolution": 8, "seed": 3, "workers": 1})
    manifest = read_manifest(path.parent)
    assert manifest["class_names"] == ["cats", "dogs"] and manifest["counts"]["test"]["per_class"] == [2, 1]
    # the held-out images are the ones read_folder chose: their red values are the file names
    test = load_split(path.parent, "test")
    held_out = sorted(int(p.stem) for p in a.splits["test"].paths[:2])
    assert sorted(int(test.images[i][0, 0, 0]) for i in range(2)) == held_out
    (tmp_path / "pets" / "empty").mkdir()
    with pytest.raises(DataError, match="empty holds no images"):
        read_folder(tmp_path / "pets")


# ----------------------------------------------------------------------------- loader and CLI


def test_augmentation_is_a_shifted_and_maybe_flipped_copy():
    image = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    flips = 0
    for _ in range(40):
        out = augment_uint8(image)
        assert out.shape == image.shape and out.dtype == np.uint8
        # the 12x12 centre of the original survives any shift of at most 2 px, possibly mirrored
        found = [any(np.array_equal(candidate[dy:dy + 12, dx:dx + 12], image[2:14, 2:14])
                     for dy in range(5) for dx in range(5)) for candidate in (out, out[:, ::-1])]
        assert any(found)
        flips += found[1] and not found[0]
    assert 5 < flips < 35


def test_dataloader_workers_and_augment(tmp_path):
    write_cub(tmp_path / "CUB_200_2011")
    prepare(cub_config(tmp_path))
    ds = load_split(tmp_path / "cache", "train", augment=True)
    loader = torch.utils.data.DataLoader(ds, batch_size=3, num_workers=2)
    batches = list(loader)
    assert [b[0].shape for b in batches] == [(3, 3, 16, 16)] * 2
    assert torch.equal(torch.cat([b[1] for b in batches]), ds.labels)
    assert all(b[0].min() >= -1 and b[0].max() <= 1 for b in batches)


def test_missing_cache_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="manifest.json is missing"):
        load_split(tmp_path, "train")


def test_cli_prints_manifest_path_last(tmp_path, capsys):
    write_cub(tmp_path / "CUB_200_2011")
    params = tmp_path / "p.yaml"
    params.write_text("\n".join(f"{k}: {v}" for k, v in cub_config(tmp_path).items()) + "\n")
    assert main(["--params", str(params), "--set", "resolution=12"]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last == str(tmp_path / "cache" / "manifest.json")
    assert read_manifest(tmp_path / "cache")["settings"]["resolution"] == 12
    assert ensure_prepared(params) == tmp_path / "cache"  # resolution 16 again: rebuilt, path returned
    assert main(["--params", str(params), "--set", "crop=diagonal"]) == 2


def test_augmented_tensor_matches_the_uint8_augmentation():
    image = np.random.default_rng(1).integers(0, 256, (12, 12, 3), dtype=np.uint8)
    for seed in range(10):
        torch.manual_seed(seed)
        want = torch.from_numpy(np.ascontiguousarray(augment_uint8(image))).permute(2, 0, 1).float() / 127.5 - 1
        torch.manual_seed(seed)
        assert torch.allclose(augmented_float_chw(image), want)


def test_class_grid_rows_hold_their_class(tmp_path):
    from viscoin_core.data.preview import class_grid, counts_table, pick_per_class
    labels = np.array([2, 0, 1, 0, 2, 2, 1])
    picks = pick_per_class(labels, 2, [0, 1, 2], seed=0)
    assert [set(labels[row].tolist()) for row in picks] == [{0}, {1}, {2}]
    assert pick_per_class(labels, 4, [1])[0, 2:].tolist() == [-1, -1]  # class 1 has only two images

    write_cub(tmp_path / "CUB_200_2011")
    prepare(cub_config(tmp_path))
    train = load_split(tmp_path / "cache", "train")
    grid, names = class_grid(train, n_per_class=2, gap=1)
    assert grid.shape == (3 * 17 - 1, 2 * 17 - 1, 3) and names == CUB_CLASSES
    assert any(np.array_equal(grid[:16, :16], train.images[i]) for i in (0, 1))  # row 0: class 0
    np.testing.assert_array_equal(grid[2 * 17:2 * 17 + 16, :16], train.images[4])
    assert counts_table(read_manifest(tmp_path / "cache"))["train"].tolist() == [2, 2, 2]


def test_cub_attribute_rows_with_unknown_ids_fail(tmp_path):
    root = write_cub(tmp_path / "CUB_200_2011")
    with open(root / "attributes" / "image_attribute_labels.txt", "a") as handle:
        handle.write("5 7 1 4 0.0\n")
    with pytest.raises(DataError, match=r"attribute id\(s\) \[7\] missing from .*attributes\.txt"):
        read_cub(root)
