"""Ground-truth part masks of the synthetic stand-ins: they cover what their part paints, empty parts
are empty, and they reach the loaded Dataset through the cache, cut and resized with the images."""

import numpy as np
import pytest
from PIL import Image

from viscoin_core.data import load_split
from viscoin_core.data import synthetic as S
from viscoin_core.data.cub import read_cub
from viscoin_core.data.prepare import as_config, prepare, process_image, process_masks, read_raw

RES = 128   # big enough that even a short tail and the bill have pixels off their outline


@pytest.fixture(scope="module")
def drawn():
    """Two birds of every class at RES px without clutter: images in [0, 1], part masks, factors."""
    labels = np.repeat(np.arange(len(S.TOYBIRD_CLASSES)), 2)
    factors = S.sample_toybird_factors(labels, np.random.default_rng(3))
    factors[:, S.TOYBIRD_FACTORS.index("clutter")] = 0.0     # no twigs or leaves that could share a colour
    images, bird, parts = S.draw_toybirds(factors, np.random.default_rng(4), RES)
    return images.astype(np.float32) / 255, parts, factors, labels, bird


def _colour_of(factors, name):
    col = {n: i for i, n in enumerate(S.TOYBIRD_FACTORS)}
    belly = sum(factors[col[f"belly_{c}"]] * np.array(rgb) for c, rgb in S.BELLY_COLOURS.items())
    shade = factors[col["plumage_shade"]]
    plumage = np.array([0.42 - 0.22 * shade, 0.36 - 0.18 * shade, 0.30 - 0.14 * shade])
    bill = S.BILL_COLOURS["orange" if factors[col["bill_orange"]] > 0.5 else "black"]
    return {"belly": belly, "crest": 0.85 * belly, "tail": 0.55 * plumage, "bill": np.array(bill)}[name]


@pytest.mark.parametrize("name", ["belly", "crest", "tail", "bill"])
def test_a_mask_covers_pixels_of_its_parts_colour(drawn, name):
    images, parts, factors, _, _ = drawn
    p = S.TOYBIRD_PARTS.index(name)
    for image, masks, f in zip(images, parts, factors):
        if not masks[p].any():
            continue
        # belly shading (light from above) scales its colour by 0.8..1.15; a pixel on the outline is
        # in the mask when the part covers more than half of it, so it blends with what is beside it
        far = np.abs(image - _colour_of(f, name)).max(axis=-1)
        assert np.median(far[masks[p]]) < 0.12, name
        inner = _eroded(masks[p])
        assert (far[inner] < 0.2).mean() > 0.95, name


def _eroded(mask):
    """The pixels of a mask whose four neighbours are in it too (off the outline)."""
    padded = np.pad(mask, 1)
    return mask & padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]


def test_no_pixel_outside_every_mask_has_the_belly_colour(drawn):
    images, parts, factors, _, _ = drawn
    for image, masks, f in zip(images, parts, factors):
        outside = ~masks.any(axis=0)
        near = np.abs(image[outside] - _colour_of(f, "belly")).max(axis=1) < 0.1
        assert near.mean() < 0.01     # the eye's white highlight is a few pixels of a white-bellied bird


def test_a_part_the_class_lacks_is_empty_and_the_others_are_not(drawn):
    _, parts, _, labels, bird = drawn
    for masks, c, whole in zip(parts, labels, bird):
        has = {"belly": True, "wing": True, "crest": S.TOYBIRD_CLASSES[c][2], "tail": True, "bill": True}
        for p, name in enumerate(S.TOYBIRD_PARTS):
            assert masks[p].any() == has[name], (c, name)
        assert not (masks.any(axis=0) & ~whole).any()            # every part lies on the bird


def test_plain_wings_are_the_dark_plumage_and_patterned_ones_carry_light_marks(drawn):
    images, parts, factors, labels, _ = drawn
    wing = S.TOYBIRD_PARTS.index("wing")
    for image, masks, f, c in zip(images, parts, factors, labels):
        pixels = image[masks[wing]]
        light = (pixels.min(axis=1) > 0.7).mean()           # the pattern's pale colour (0.97, 0.95, 0.88)
        if S.TOYBIRD_CLASSES[c][1] == "plain":
            assert np.median(np.abs(pixels - _colour_of(f, "tail")).max(axis=1)) < 0.1 and light < 0.05
        else:
            assert light > 0.1


def test_toytissue_structures_follow_their_recipes(tmp_path):
    root = S.generate("toytissue", tmp_path / "tissue", 2, 32, seed=1, workers=1)
    table, names, part_factors = S.read_parts(root)
    assert names == list(S.TISSUE_PARTS) and set(part_factors) == set(names)
    _, labels, factors, _ = S.read_factors_csv(root)
    masks = np.stack(list(table.values()))                  # rows in factors.csv's order
    share = masks.mean(axis=(2, 3))                          # (N, 5)
    fat, mucus, glands = (S.TISSUE_FACTORS.index(n) for n in ("fat_fraction", "mucus_fraction", "gland_fraction"))
    assert (share[factors[:, fat] == 0, names.index("fat")] == 0).all()
    assert (share[factors[:, glands] == 0, names.index("glands")] == 0).all()
    assert (share[factors[:, mucus] == 0, names.index("mucus")] == 0).all()
    adi = labels == S.TISSUE_CLASSES.index("ADI")
    assert share[adi, names.index("fat")].min() > 0.5
    lym = labels == S.TISSUE_CLASSES.index("LYM")
    assert share[lym, names.index("nuclei")].mean() > 3 * share[~lym, names.index("nuclei")].mean()
    # nuclei are hematoxylin: darker (in red, where eosin absorbs least) than the tile around them
    path = list(table)[np.flatnonzero(lym)[0]]
    image = np.asarray(Image.open(root / path), np.float32)
    nuclei = table[path][names.index("nuclei")]
    assert image[nuclei, 0].mean() < image[~nuclei, 0].mean() - 20


def test_masks_round_trip_through_the_cache_and_load_split(tmp_path):
    params = {"dataset": "toybirds", "root": str(tmp_path / "raw"), "cache_dir": str(tmp_path / "cache"),
              "resolution": 32, "n_per_class": 2, "workers": 1}
    cache = prepare(params).parent
    table, names, part_factors = S.read_parts(tmp_path / "raw")
    raw = read_cub(tmp_path / "raw")
    for split in ("train", "test"):
        ds = load_split(cache, split)
        assert ds.part_names == names == list(S.TOYBIRD_PARTS) and ds.part_factors == part_factors
        assert ds.part_masks.shape == (len(ds), len(names), 32, 32) and ds.part_masks.dtype == bool
        expected = np.stack([table[p.relative_to(tmp_path / "raw").as_posix()] for p in raw.splits[split].paths])
        assert np.array_equal(np.asarray(ds.part_masks), expected)   # a centre crop at the drawn size is the identity
    assert raw.part_names is None    # the real reader alone knows nothing of parts.npz


@pytest.mark.parametrize("crop", ["center", "bbox", "study"])
def test_masks_are_cut_and_resized_exactly_like_their_image(tmp_path, crop):
    # An image that is its own mask (white where the mask holds) goes through process_image and the
    # mask through process_masks with the same job: the two must agree pixel for pixel (but for the
    # rounding of a value exactly between).
    rng = np.random.default_rng(0)
    mask = np.zeros((1, 50, 40), bool)
    mask[0, 10:30, 5:18] = True
    mask[0, 35:45, 25:38] = True
    Image.fromarray(np.repeat(mask[0, :, :, None].astype(np.uint8) * 255, 3, axis=2)).save(tmp_path / "m.png")
    for seed in range(4):
        job = (0, str(tmp_path / "m.png"), (3.0, 8.0, 30.0, 34.0), crop, 24, 0.1, (int(rng.integers(99)), seed, 0))
        image = process_image(job)[1]
        cut = process_masks(job, mask)
        assert cut.shape == (1, 24, 24)
        assert (cut[0] == (image[..., 0] > 127)).mean() > 0.99, (crop, seed)


def test_masks_stay_on_their_parts_under_the_bbox_crop(tmp_path):
    params = {"dataset": "toybirds", "root": str(tmp_path / "raw"), "cache_dir": str(tmp_path / "cache"),
              "resolution": 64, "n_per_class": 1, "workers": 1, "crop": "bbox", "bbox_margin": 0.05}
    cache = prepare(params).parent
    ds = load_split(cache, "test")
    raw = read_raw(as_config(params), tmp_path / "raw")
    masks = np.asarray(ds.part_masks)
    original = raw.splits["test"].parts
    # the crop zooms onto the bird: each part covers a larger share of the frame than before
    belly = S.TOYBIRD_PARTS.index("belly")
    assert masks[:, belly].mean() > 1.3 * original[:, belly].mean()
    crest = S.TOYBIRD_PARTS.index("crest")
    assert np.array_equal(masks[:, crest].any(axis=(1, 2)), original[:, crest].any(axis=(1, 2)))
    _, _, factors, splits = S.read_factors_csv(tmp_path / "raw")
    test_factors = factors[np.array(splits) == "test"]
    for i in range(len(ds)):
        pixels = ds.images[i][masks[i, belly]].astype(np.float32) / 255
        assert np.median(np.abs(pixels - _colour_of(test_factors[i], "belly")).max(axis=1)) < 0.12
