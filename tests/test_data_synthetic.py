"""The synthetic benchmark: determinism, balance, factor ranges, labels from factors, layouts."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.tree import DecisionTreeClassifier

from viscoin_core.data import DataError, load_split, read_manifest
from viscoin_core.data import synthetic as S
from viscoin_core.data.cub import read_cub
from viscoin_core.data.nct import read_nct
from viscoin_core.data.prepare import prepare

N = 6  # images per class and split: small, the machine is shared


@pytest.fixture(scope="module")
def birds(tmp_path_factory):
    return S.generate("toybirds", tmp_path_factory.mktemp("syn") / "toybirds", N, 32, seed=5, workers=1)


@pytest.fixture(scope="module")
def tissue(tmp_path_factory):
    return S.generate("toytissue", tmp_path_factory.mktemp("syn") / "toytissue", N, 32, seed=5, workers=1)


def tree_digest(root):
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(path.relative_to(root).as_posix().encode() + path.read_bytes())
    return digest.hexdigest()


def test_generation_is_deterministic_and_independent_of_workers(birds, tmp_path):
    again = S.generate("toybirds", tmp_path / "again", N, 32, seed=5, workers=2)
    assert tree_digest(again) == tree_digest(birds)
    other = S.generate("toybirds", tmp_path / "other", N, 32, seed=6, workers=1)
    assert tree_digest(other) != tree_digest(birds)


def test_toybirds_layout_is_read_by_the_cub_reader(birds):
    raw = read_cub(birds)
    assert len(raw.class_names) == len(S.TOYBIRD_CLASSES) == 12
    for split in ("train", "test"):
        assert np.bincount(raw.splits[split].labels).tolist() == [N] * 12  # balanced
    assert raw.attribute_names == S.TOYBIRD_ATTRIBUTES
    # every image shows exactly one value of each of the five parts
    assert (raw.splits["train"].attributes.sum(1) == 5).all()
    boxes = raw.splits["test"].boxes
    assert (boxes[:, 0] >= 0).all() and (boxes[:, 0] + boxes[:, 2] <= 32).all()
    assert (boxes[:, 2] >= 8).all() and (boxes[:, 3] >= 6).all()  # a visible bird, not a speck


def test_toybird_factors_take_their_intended_ranges(birds):
    names, labels, factors, _ = S.read_factors_csv(birds)
    col = {n: i for i, n in enumerate(names)}
    belly = factors[:, [col[f"belly_{c}"] for c in S.BELLY_COLOURS]]
    wing = factors[:, [col[f"wing_{p}"] for p in S.WING_PATTERNS]]
    assert set(np.unique(belly)) == {0, 1} and (belly.sum(1) == 1).all() and (wing.sum(1) == 1).all()
    for name, (low, high) in S.TOYBIRD_RANGES.items():
        values = factors[:, col[name]]
        assert values.min() >= low and values.max() <= high, name
    assert set(np.unique(factors[:, col["facing"]])) == {-1.0, 1.0}
    for c, (_, _, _, tail, _) in enumerate(S.TOYBIRD_CLASSES):
        low, high = S.TAIL_LENGTHS[tail]
        tails = factors[labels == c, col["tail_length"]]
        assert tails.min() >= low - 1e-5 and tails.max() <= high + 1e-5


def test_toybird_labels_are_recoverable_from_part_factors(birds):
    names, labels, factors, _ = S.read_factors_csv(birds)
    col = {n: i for i, n in enumerate(names)}
    # written out independently of the generator's table: (belly, wing, crest, long tail, orange bill)
    table = {("blue", "plain", 1, 0, 0): 0, ("blue", "spotted", 0, 1, 0): 1, ("blue", "spotted", 1, 1, 1): 2,
             ("red", "spotted", 1, 0, 0): 3, ("red", "striped", 0, 1, 1): 4, ("red", "striped", 1, 1, 0): 5,
             ("white", "plain", 0, 0, 0): 6, ("white", "plain", 1, 1, 1): 7, ("white", "striped", 1, 0, 1): 8,
             ("yellow", "plain", 0, 1, 1): 9, ("yellow", "spotted", 0, 0, 0): 10, ("yellow", "striped", 0, 0, 1): 11}
    bellies, wings = ["red", "yellow", "blue", "white"], ["plain", "striped", "spotted"]
    for row, label in zip(factors, labels):
        key = (bellies[int(np.argmax(row[col["belly_red"]:col["belly_red"] + 4]))],
               wings[int(np.argmax(row[col["wing_plain"]:col["wing_plain"] + 3]))],
               int(row[col["crest"]]), int(row[col["tail_length"]] > 0.2), int(row[col["bill_orange"]]))
        assert table[key] == label


def test_toytissue_layout_balance_and_factor_ranges(tissue):
    raw = read_nct(tissue)
    assert raw.class_names == list(S.TISSUE_CLASSES)
    for split in ("train", "test"):
        assert np.bincount(raw.splits[split].labels).tolist() == [N] * 9
    names, labels, factors, _ = S.read_factors_csv(tissue)
    assert names == list(S.TISSUE_FACTORS)
    for c, name in enumerate(S.TISSUE_CLASSES):
        ranges = np.array(S.TISSUE_RECIPES[name] + (S.STAIN_RANGE, S.STAIN_RANGE))
        rows = factors[labels == c]
        assert (rows >= ranges[:, 0] - 1e-6).all() and (rows <= ranges[:, 1] + 1e-6).all(), name


def test_toytissue_labels_are_recoverable_from_factors(tmp_path):
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(9), 60)
    factors = S.sample_tissue_factors(labels, rng)
    tree = DecisionTreeClassifier(random_state=0).fit(factors[::2], labels[::2])
    assert tree.score(factors[1::2], labels[1::2]) == 1.0


@pytest.mark.parametrize("dataset", ["toybirds", "toytissue"])
def test_classes_are_visible_in_the_pixels(dataset, birds, tissue, tmp_path):
    # a linear model on colour statistics alone beats chance by far: the classes are there to see
    path = prepare({"dataset": dataset, "root": str(birds if dataset == "toybirds" else tissue),
                    "cache_dir": str(tmp_path / "cache"), "resolution": 32, "n_per_class": N, "seed": 5, "workers": 1})
    features, targets = {}, {}
    for split in ("train", "test"):
        ds = load_split(path.parent, split)
        hist = [np.histogramdd(img.reshape(-1, 3), bins=4, range=[(0, 256)] * 3)[0].ravel() for img in ds.images]
        features[split] = np.log1p(np.array(hist))  # (n, 64) joint RGB colour histogram
        targets[split] = ds.labels.numpy()
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000)).fit(features["train"], targets["train"])
    n_classes = len(read_manifest(path.parent)["class_names"])
    assert model.score(features["test"], targets["test"]) > 3.0 / n_classes


def test_prepare_generates_then_reuses_and_carries_factors(tmp_path):
    params = {"dataset": "toytissue", "root": str(tmp_path / "raw"), "cache_dir": str(tmp_path / "cache"),
              "resolution": 16, "n_per_class": 2, "seed": 1, "workers": 1}
    path = prepare(params)
    ds = load_split(path.parent, "test")
    assert ds.factors.shape == (18, 12) and ds.factor_names == list(S.TISSUE_FACTORS)
    _, labels, factors, splits = S.read_factors_csv(tmp_path / "raw")
    test_rows = np.array(splits) == "test"
    np.testing.assert_allclose(ds.factors.numpy(), factors[test_rows], rtol=1e-5)
    assert ds.labels.tolist() == labels[test_rows].tolist()
    marker = (tmp_path / "raw" / S.MARKER).stat().st_mtime_ns
    prepare(params)
    assert (tmp_path / "raw" / S.MARKER).stat().st_mtime_ns == marker  # raw tree reused
    prepare({**params, "n_per_class": 3})  # other settings regenerate the tree and rebuild the cache
    assert len(load_split(path.parent, "train")) == 27


def test_refuses_to_overwrite_a_foreign_folder(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.txt").write_text("precious")
    with pytest.raises(DataError, match="not a generated toybirds tree"):
        S.ensure_generated("toybirds", tmp_path / "mine", 2, 32, 0)


def _prepare_in_child(params):
    return str(prepare(params))


def test_concurrent_prepares_of_one_cache_agree(tmp_path):
    import multiprocessing
    params = {"dataset": "toytissue", "root": str(tmp_path / "raw"), "cache_dir": str(tmp_path / "cache"),
              "resolution": 16, "n_per_class": 2, "seed": 2, "workers": 1}
    with multiprocessing.get_context("fork").Pool(2) as pool:
        paths = pool.map(_prepare_in_child, [params, params])
    assert paths[0] == paths[1]
    assert len(load_split(tmp_path / "cache", "train")) == 18 and not (tmp_path / "raw.partial").exists()
