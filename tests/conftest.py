"""Shared test fixtures. `../shared` (golden vectors, layouts) sits beside the checkout, in CI too."""

from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not SHARED.is_dir():
        pytest.fail(f"{SHARED} is missing: the golden fixtures live in ../shared beside the checkout")
    return SHARED


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
