"""CUB-200-2011 in its official layout (Wah et al., 2011).

    CUB_200_2011/
      images.txt                  <image_id> <class_dir>/<file>.jpg
      image_class_labels.txt      <image_id> <class_id>           (class ids 1..200)
      train_test_split.txt        <image_id> <is_training_image>  (5994 train, 5794 test)
      classes.txt                 <class_id> <class_name>
      bounding_boxes.txt          <image_id> <x> <y> <width> <height>   (pixels)
      images/<class_dir>/<file>.jpg
      attributes/image_attribute_labels.txt   <image_id> <attribute_id> <is_present> <certainty_id> <time>
    attributes.txt                <attribute_id> <name>   (312 names; beside CUB_200_2011/ in the archive)

An attribute counts as present when is_present = 1 and its certainty is at least 3 ("probably"
or "definitely"), the usual reading of CUB's annotations.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from viscoin_core.data.cache import DataError, RawDataset, RawSplit

LAYOUT = ("CUB_200_2011/{images.txt, image_class_labels.txt, train_test_split.txt, classes.txt, "
          "bounding_boxes.txt, images/<class_dir>/<file>, attributes/image_attribute_labels.txt} with "
          "attributes.txt beside CUB_200_2011/ or inside it")
MIN_CERTAINTY = 3


def read_table(path: Path, n_fields: int) -> list[list[str]]:
    """Whitespace-separated rows with at least `n_fields` fields (extra trailing fields are ignored)."""
    if not path.is_file():
        raise DataError(f"missing CUB metadata file {path}; expected the official layout {LAYOUT}")
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split()
        if len(fields) < n_fields:
            raise DataError(f"{path}, line {number}: expected {n_fields} fields, got {line!r}")
        rows.append(fields)
    return rows


def read_named_table(path: Path) -> list[tuple[int, str]]:
    """`<id> <name with spaces allowed>` rows, as in classes.txt and attributes.txt."""
    rows = []
    for fields in read_table(path, 2):
        try:
            rows.append((int(fields[0]), " ".join(fields[1:])))
        except ValueError:
            raise DataError(f"{path}: id {fields[0]!r} is not an integer") from None
    return rows


def per_image(path: Path, rows: list[list[str]], ids: dict[int, int], convert) -> dict[int, object]:
    """Map image ids of a metadata table to values; an id images.txt does not list is an error."""
    out = {}
    for fields in rows:
        image_id = int(fields[0])
        if image_id not in ids:
            raise DataError(f"{path} names image id {image_id}, which images.txt does not list")
        out[image_id] = convert(fields[1:])
    missing = sorted(set(ids) - set(out))
    if missing:
        raise DataError(f"{path} has no entry for image id(s) {missing[:10]}"
                        f"{' ...' if len(missing) > 10 else ''} listed in images.txt")
    return out


def find_attribute_names(root: Path) -> Path | None:
    for candidate in (root / "attributes.txt", root.parent / "attributes.txt", root / "attributes" / "attributes.txt"):
        if candidate.is_file():
            return candidate
    return None


def read_attribute_rows(path: Path) -> np.ndarray:
    """int64 (R, 4): image id, attribute id, is_present, certainty of each row (time and the stray
    extra fields some rows of the official file carry are dropped). 3.7M rows for CUB: read by pandas."""
    import pandas as pd
    table = pd.read_csv(path, sep=r"\s+", header=None, names=range(8), dtype=float).iloc[:, :4]
    bad = np.flatnonzero(table.isna().any(axis=1).to_numpy())
    if len(bad):
        raise DataError(f"{path}, line {bad[0] + 1}: expected <image_id> <attribute_id> <is_present> <certainty_id> <time>")
    return table.to_numpy().astype(np.int64)


def read_attributes(root: Path, ids: dict[int, int]) -> tuple[np.ndarray, list[str]] | tuple[None, None]:
    """bool (N, A) with the certainty rule, and the A names; (None, None) when CUB ships none here."""
    labels_path = root / "attributes" / "image_attribute_labels.txt"
    if not labels_path.is_file():
        return None, None
    names_path = find_attribute_names(root)
    if names_path is None:
        raise DataError(f"{labels_path} exists but attributes.txt (the attribute names) was not found "
                        f"in {root}, {root.parent} or {root / 'attributes'}; expected {LAYOUT}")
    named = sorted(read_named_table(names_path))
    names = [name for _, name in named]
    rows = read_attribute_rows(labels_path)
    image_rows = lookup(rows[:, 0], ids, f"{labels_path} names image id(s)", "that images.txt does not list")
    attr_cols = lookup(rows[:, 1], {attr_id: i for i, (attr_id, _) in enumerate(named)},
                       f"{labels_path} names attribute id(s)", f"missing from {names_path}")
    keep = (rows[:, 2] == 1) & (rows[:, 3] >= MIN_CERTAINTY)
    present = np.zeros((len(ids), len(names)), dtype=bool)
    present[image_rows[keep], attr_cols[keep]] = True
    return present, names


def lookup(keys: np.ndarray, table: dict[int, int], what: str, why: str) -> np.ndarray:
    """Map integer ids through `table` in one vectorised step; unknown ids are an error naming them."""
    known = np.array(sorted(table), dtype=np.int64)
    values = np.array([table[k] for k in known.tolist()], dtype=np.int64)
    pos = np.clip(np.searchsorted(known, keys), 0, len(known) - 1)
    unknown = known[pos] != keys
    if unknown.any():
        raise DataError(f"{what} {sorted(set(keys[unknown].tolist()))[:10]} {why}")
    return values[pos]


def read_cub(root: str | Path) -> RawDataset:
    """Parse a CUB_200_2011 folder into train/test splits (labels 0-based, boxes x, y, w, h)."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"CUB root {root} is not a directory; expected {LAYOUT}")
    images = read_table(root / "images.txt", 2)
    ids = {}  # image id -> row
    for fields in images:
        image_id = int(fields[0])
        if image_id in ids:
            raise DataError(f"{root / 'images.txt'} lists image id {image_id} twice")
        ids[image_id] = len(ids)
    names = {int(f[0]): " ".join(f[1:]) for f in images}

    classes = read_named_table(root / "classes.txt")
    class_ids = sorted(cid for cid, _ in classes)
    class_index = {cid: i for i, cid in enumerate(class_ids)}
    class_names = [name for _, name in sorted(classes)]

    def to_class(fields):
        cid = int(fields[0])
        if cid not in class_index:
            raise DataError(f"{root / 'image_class_labels.txt'} uses class id {cid}, absent from classes.txt")
        return class_index[cid]

    labels = per_image(root / "image_class_labels.txt", read_table(root / "image_class_labels.txt", 2), ids, to_class)
    is_train = per_image(root / "train_test_split.txt", read_table(root / "train_test_split.txt", 2), ids,
                         lambda f: int(f[0]) == 1)
    boxes = per_image(root / "bounding_boxes.txt", read_table(root / "bounding_boxes.txt", 5), ids,
                      lambda f: [float(v) for v in f[:4]])
    attributes, attribute_names = read_attributes(root, ids)

    ordered = sorted(ids, key=ids.get)
    paths = []
    for image_id in ordered:
        path = root / "images" / names[image_id]
        if not path.is_file():
            raise DataError(f"image {path} (id {image_id} in images.txt) is missing; expected {LAYOUT}")
        paths.append(path)
    label_array = np.array([labels[i] for i in ordered], dtype=np.int64)
    train_mask = np.array([is_train[i] for i in ordered], dtype=bool)
    box_array = np.array([boxes[i] for i in ordered], dtype=np.float64).reshape(-1, 4)

    splits = {}
    for split, mask in (("train", train_mask), ("test", ~train_mask)):
        rows = np.flatnonzero(mask)
        splits[split] = RawSplit(paths=[paths[r] for r in rows], labels=label_array[rows], boxes=box_array[rows],
                                 attributes=None if attributes is None else attributes[rows])
    check_classes(root / "train_test_split.txt", splits, class_names)
    return RawDataset(root=root, splits=splits, class_names=class_names, attribute_names=attribute_names)


def check_classes(where: Path, splits: dict[str, RawSplit], class_names: list[str]) -> None:
    """Every split non-empty, and no class in test that train never shows."""
    for split, raw in splits.items():
        if len(raw.labels) == 0:
            raise DataError(f"{where}: the {split} split is empty")
    missing = sorted(set(splits["test"].labels.tolist()) - set(splits["train"].labels.tolist()))
    if missing:
        raise DataError(f"{where}: class(es) {[class_names[c] for c in missing]} appear in test but not in train")
