"""Any class-folder dataset, so users can bring their own images.

    root/<class>/<image>                     one pool, split per class by `test_fraction` (seeded)
    root/train/<class>/<image> and root/test/<class>/<image>    given splits, used as they are

Class names are the folder names, sorted; labels follow that order.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from viscoin_core.data.cache import DataError, RawDataset, RawSplit

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp", ".ppm", ".gif")
LAYOUT = "root/<class>/<image> or root/{train,test}/<class>/<image>"


def scan_class_folders(folder: Path, layout: str = LAYOUT) -> dict[str, list[Path]]:
    """Class name -> sorted image files of `folder`'s sub-folders; an empty class folder is an error."""
    if not folder.is_dir():
        raise DataError(f"{folder} is not a directory; expected {layout}")
    classes = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise DataError(f"{folder} holds no class folders; expected {layout}")
    out = {}
    for class_dir in classes:
        files = sorted(p for p in class_dir.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise DataError(f"class folder {class_dir} holds no images ({', '.join(IMAGE_SUFFIXES)}); "
                            f"expected {layout}")
        out[class_dir.name] = files
    return out


def splits_from_folders(train: dict[str, list[Path]], test: dict[str, list[Path]], where: Path,
                        class_names: list[str] | None = None) -> tuple[dict[str, RawSplit], list[str]]:
    """RawSplits from class -> files maps; a class in test that train lacks is an error."""
    extra = sorted(set(test) - set(train))
    if extra:
        raise DataError(f"{where}: class(es) {extra} appear in the test split but not in train")
    class_names = class_names or sorted(train)
    index = {name: i for i, name in enumerate(class_names)}

    def split_of(files_by_class):
        paths = [p for name in class_names for p in files_by_class.get(name, [])]
        labels = np.array([index[name] for name in class_names for _ in files_by_class.get(name, [])], dtype=np.int64)
        return RawSplit(paths=paths, labels=labels)

    return {"train": split_of(train), "test": split_of(test)}, class_names


def read_folder(root: str | Path, test_fraction: float = 0.2, seed: int = 0) -> RawDataset:
    """Parse a class-folder tree; without train/ and test/, hold out `test_fraction` of each class."""
    root = Path(root)
    if (root / "train").is_dir() and (root / "test").is_dir():
        train, test = scan_class_folders(root / "train"), scan_class_folders(root / "test")
    else:
        pool = scan_class_folders(root)
        rng = np.random.default_rng(seed)
        train, test = {}, {}
        for name, files in pool.items():
            order = rng.permutation(len(files))
            n_test = int(round(test_fraction * len(files)))
            n_test = min(max(n_test, 1 if len(files) > 1 else 0), len(files) - 1)
            test_rows = set(order[:n_test].tolist())
            train[name] = [f for i, f in enumerate(files) if i not in test_rows]
            if test_rows:
                test[name] = [f for i, f in enumerate(files) if i in test_rows]
    splits, class_names = splits_from_folders(train, test, root)
    for split, raw in splits.items():
        if len(raw.paths) == 0:
            raise DataError(f"{root}: the {split} split is empty; expected {LAYOUT}")
    return RawDataset(root=root, splits=splits, class_names=class_names)
