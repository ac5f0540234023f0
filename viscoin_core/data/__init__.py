"""Datasets: raw readers (CUB, NCT, class folders, synthetic), the resized cache and its loader.

    from viscoin_core.data import ensure_prepared, load_split
    cache_dir = ensure_prepared("params/smoke/data_toybirds.yaml")
    train = load_split(cache_dir, "train", augment=True)   # ds[i] -> (float32 (3, H, W) in [-1, 1], int)

`viscoin_core.data.prepare` is the module (DataConfig, prepare(), the CLI); `ensure_prepared` and
`DataConfig` are re-exported here, loaded on first use so `python -m viscoin_core.data.prepare`
runs cleanly.
"""

from viscoin_core.data.cache import CachedDataset, DataError, load_split, read_manifest

__all__ = ["CachedDataset", "DataConfig", "DataError", "ensure_prepared", "load_split", "read_manifest"]


def __getattr__(name: str):
    if name in ("DataConfig", "ensure_prepared"):
        from viscoin_core.data import prepare as module
        return getattr(module, name)
    raise AttributeError(f"module 'viscoin_core.data' has no attribute {name!r}")
