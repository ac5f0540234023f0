"""NCT-CRC-HE-100K (train) and CRC-VAL-HE-7K (test) colorectal histology tiles (Kather et al., 2019).

    root/NCT-CRC-HE-100K/<CLASS>/<tile>.tif          (or NCT-CRC-HE-100K-NONORM, variant 'nonorm')
    root/CRC-VAL-HE-7K/<CLASS>/<tile>.tif

Nine classes: ADI adipose, BACK background, DEB debris, LYM lymphocytes, MUC mucus, MUS smooth
muscle, NORM normal mucosa, STR stroma, TUM tumour epithelium. Tiles are 224 x 224 px at
0.5 micron/px; the cache resizes them with LANCZOS (to 256 in the paper profile, as the study did).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from viscoin_core.data.cache import DataError, RawDataset
from viscoin_core.data.folder import scan_class_folders, splits_from_folders

CLASSES = ("ADI", "BACK", "DEB", "LYM", "MUC", "MUS", "NORM", "STR", "TUM")
TRAIN_DIRS = {"norm": "NCT-CRC-HE-100K", "nonorm": "NCT-CRC-HE-100K-NONORM"}
TEST_DIR = "CRC-VAL-HE-7K"
LAYOUT = "root/{NCT-CRC-HE-100K[-NONORM], CRC-VAL-HE-7K}/<CLASS>/<tile>.tif with CLASS in " + ", ".join(CLASSES)


def read_nct(root: str | Path, variant: str = "norm") -> RawDataset:
    """Parse the two NCT roots under `root` (train from the `variant` of the 100K set, test from 7K)."""
    root = Path(root)
    if variant not in TRAIN_DIRS:
        raise DataError(f"unknown NCT variant {variant!r}; expected one of {sorted(TRAIN_DIRS)}")
    train_dir, test_dir = root / TRAIN_DIRS[variant], root / TEST_DIR
    for folder in (train_dir, test_dir):
        if not folder.is_dir():
            raise DataError(f"missing NCT folder {folder}; expected {LAYOUT}")
    train = scan_class_folders(train_dir, LAYOUT)
    test = scan_class_folders(test_dir, LAYOUT)
    # The nine tissue classes in their usual order; other folder names are kept (sorted) after them.
    class_names = [c for c in CLASSES if c in train] + sorted(set(train) - set(CLASSES))
    splits, class_names = splits_from_folders(train, test, root, class_names)
    return RawDataset(root=root, splits=splits, class_names=class_names, notes={"variant": variant})


def class_weights(counts: Sequence[int] | np.ndarray | torch.Tensor) -> torch.Tensor:
    """Normalised inverse-frequency class weights: w_c = (1 / n_c) / mean_j (1 / n_j).

    Balanced counts give all ones; the weights average 1 over classes, so a weighted cross-entropy
    keeps the scale of the unweighted one. Returns float32 (C,). Every count must be positive.
    """
    counts = torch.as_tensor(counts, dtype=torch.float64).flatten()
    if counts.numel() == 0 or bool((counts <= 0).any()):
        raise ValueError(f"class counts must all be positive, got {counts.tolist()}")
    inverse = 1.0 / counts
    return (inverse / inverse.mean()).float()
