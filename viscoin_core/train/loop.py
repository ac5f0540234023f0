"""What every training loop shares: seeding and RNG state, memory, the NaN check, the CLI.

Writing and reading a run directory (config.json, checkpoints, logs, metrics) is `viscoin_core.runs`.
"""

from __future__ import annotations

import argparse
import ctypes
import math
import random
from typing import Any, Iterable, Mapping

import numpy as np
import torch
import yaml

from viscoin_core.config import ConfigError, load_config, resolve_path


class NonFiniteLoss(RuntimeError):
    """A loss term became NaN or inf; the message names the iteration and the term."""


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA) so a CPU run repeats exactly."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def keep_freed_memory() -> bool:
    """Ask glibc to keep freed memory for reuse instead of returning it to the OS; True if it took.

    By default every activation above 32 MB is a fresh mmap, zeroed page by page on first touch;
    at the paper's size that page faulting is half the CPU training step (43 s -> 21 s per step on
    2 cores, `python -m viscoin_core.bench viscoin --size paper`). The cost: the process keeps its
    peak memory. Process-wide, so only entry points call it (the training functions on CPU, the
    benchmarks), never an import. A no-op away from glibc.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_trim_threshold, m_mmap_max = -1, -4   # from glibc's malloc.h
    # A threshold of -1 reaches glibc as SIZE_MAX: never trim.
    return bool(libc.mallopt(m_mmap_max, 0)) and bool(libc.mallopt(m_trim_threshold, -1))


def rng_state() -> dict:
    """Every RNG state a run draws from, in a form `torch.load(weights_only=True)` accepts."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping) -> None:
    """Restore what `rng_state` captured."""
    random.setstate(_as_tuple(state["python"]))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_tuple(value: Any) -> Any:
    # random.setstate wants nested tuples; a checkpoint round trip may hand back lists.
    return tuple(_as_tuple(v) for v in value) if isinstance(value, (list, tuple)) else value


def check_finite(terms: Mapping[str, torch.Tensor | float], iteration: int) -> None:
    """Raise NonFiniteLoss naming the first NaN/inf term and the iteration."""
    for name, value in terms.items():
        v = float(value.detach()) if isinstance(value, torch.Tensor) else float(value)
        if not math.isfinite(v):
            raise NonFiniteLoss(f"loss term '{name}' is {v} at iteration {iteration}; "
                                "the last good state was saved in the run directory")


def cycle(loader: Iterable) -> Iterable:
    """Endless iteration over a DataLoader, reshuffling each pass."""
    while True:
        yield from loader


def stage_cli(stage: str, doc: str) -> argparse.ArgumentParser:
    """The command line every training stage shares: --params FILE --run-dir DIR [--device D] [--set K=V ...]."""
    parser = argparse.ArgumentParser(prog=f"python -m viscoin_core.train.{stage}", description=doc.split("\n")[0])
    parser.add_argument("--params", required=True, help=f"YAML parameter file (params/<profile>/{stage}*.yaml), "
                        "relative to the repository root")
    parser.add_argument("--run-dir", required=True, help="run directory (created; resumed when it holds a checkpoint)")
    parser.add_argument("--device", default=None, help="override the file's device")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override one parameter of the file (VALUE read as YAML); repeatable")
    return parser


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """['k=v', ...] -> {k: YAML value of v}; a malformed item raises ConfigError naming it."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. --set iterations=600")
        out[key.strip()] = yaml.safe_load(value)
    return out


def stage_config(cls: type, args: argparse.Namespace) -> Any:
    """The validated config named by `stage_cli`'s arguments (a relative file is under the repository root)."""
    path = resolve_path(args.params)
    overrides = parse_overrides(getattr(args, "set", []) or [])
    if args.device:
        overrides["device"] = args.device
    return load_config(cls, path, **overrides)
