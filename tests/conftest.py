"""Shared test fixtures. Golden vectors and layouts are files in tests/fixtures/ (see its README)."""

import os
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures"


def pytest_configure(config):
    """Under pytest-xdist (`make test` runs tests/ on 2 workers) each worker, and every kernel or
    process it starts, gets its share of the cores: two workers each spinning two torch threads on 2
    cores run slower than one worker alone."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        threads = max(1, (os.cpu_count() or 1) // workers)
        os.environ["OMP_NUM_THREADS"] = str(threads)     # inherited by notebook kernels and subprocesses
        torch.set_num_threads(threads)


def pytest_collection_modifyitems(config, items):
    """Modules with a slow test first, whole modules kept together (their fixtures are set up once):
    with xdist's per-file scheduling the longest ones start at once, side by side, instead of one of
    them running alone at the end."""
    def file_of(item):
        return item.nodeid.split("::")[0]
    slow = {file_of(item) for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: file_of(item) not in slow)


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    return FIXTURES


@pytest.fixture(autouse=True)
def _deterministic_torch():
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module of tiny-network tests: on a shared 2-core machine a second
    thread mostly spins and waits (5x slower under load). Tests only; the library never sets it."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def make_tiny_run():
    """A function (root, dataset) -> the run directory of a tiny trained VisCoIN system under root:
    `dataset` (toytissue or toybirds) at 32 px with 3 images per class and split, random f and G,
    two iterations. Cheap enough to make once per test module that needs a trained run."""
    def make(root: Path, dataset: str = "toytissue") -> Path:
        from viscoin_core.data.prepare import prepare
        from viscoin_core.train.viscoin import train_viscoin
        prepare({"dataset": dataset, "root": str(root / "raw"), "cache_dir": str(root / "cache"),
                 "resolution": 32, "n_per_class": 3, "workers": 1})
        config = dict(f="random", G="random", cache_dir=str(root / "cache"), n_concepts=6, latent_channels=8,
                      iterations=2, batch_real=2, batch_fake=1, log_every=1, eval_every=1, eval_subset=2,
                      final_eval_images=4, eval_images=8, lpips_backbone="random", fid_features="classifier",
                      g_channel_base=128, g_channel_max=16, g_w_dim=16, coarse_layer=1, mid_layer=4, device="cpu")
        train_viscoin(config, root / "run")
        return root / "run"
    return make
