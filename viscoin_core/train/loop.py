"""What every training loop shares: seeding and RNG state, memory, the NaN check, the CLI.

Writing and reading a run directory (config.json, checkpoints, logs, metrics) is `viscoin_core.runs`.
"""

from __future__ import annotations

import argparse
import ctypes
import math
import random
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
import torch

from viscoin_core.config import load_config, parse_overrides, resolve_path
from viscoin_core.runs import NonFiniteLoss, describe_nonfinite


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


def cpu_has_native_bf16(cpuinfo: str | Path = "/proc/cpuinfo") -> bool | None:
    """Whether the CPU computes bf16 natively (AMX or AVX512-BF16 flags); None where unknown (no
    /proc/cpuinfo). Without it PyTorch emulates bf16 autocast, which can be slower than float32."""
    try:
        flags = set(Path(cpuinfo).read_text().split())
    except OSError:
        return None
    return bool(flags & {"amx_bf16", "avx512_bf16"})


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


def check_finite(terms: Mapping[str, torch.Tensor | float], iteration: int, limit: float | None = None,
                 unit: str = "iteration") -> None:
    """Raise NonFiniteLoss naming the first NaN/inf term (or, with `limit`, the first above it) and the
    iteration. The caller adds where the last finite checkpoint is (`stop_message`)."""
    for name, value in terms.items():
        v = float(value.detach()) if isinstance(value, torch.Tensor) else float(value)
        if not math.isfinite(v):
            raise NonFiniteLoss(f"loss term '{name}' is {v} at {unit} {iteration}")
        if limit is not None and abs(v) > limit:
            raise NonFiniteLoss(f"loss term '{name}' is {v:.3g} at {unit} {iteration}, above {limit:g}: "
                                "training diverged (try a lower lr)")


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


def stage_config(cls: type, args: argparse.Namespace) -> Any:
    """The validated config named by `stage_cli`'s arguments (a relative file is under the repository root)."""
    path = resolve_path(args.params)
    overrides = parse_overrides(getattr(args, "set", []) or [])
    if args.device:
        overrides["device"] = args.device
    return load_config(cls, path, **overrides)


# ---------------------------------------------------------------------------------------------
# Faults: non-finite states, full disks, refused files (issue 15). A fault costs at most the work
# since the last checkpoint, and its message says in one line what happened and where.

def check_finite_parameters(named: Iterable[tuple[str, torch.Tensor]], iteration: int, unit: str = "iteration") -> None:
    """Raise NonFiniteLoss when a tensor of `named` (name, tensor) holds NaN or inf, naming it.

    One device sync for all tensors; names are only looked up on failure. The fast test is the sum
    of all entries: a NaN or inf entry makes it NaN or inf, and it reads each tensor once without the
    boolean copy `isfinite` makes (measured on CPU: 3 ms instead of 69 ms for the 11.5M parameters of
    the demo's VisCoIN, 9% of its step). A sum can also overflow with every entry finite, so a
    non-finite sum only leads to the exact per-tensor test, and that decides.
    """
    named = [(k, t.detach()) for k, t in named if t.is_floating_point()]
    if not named or bool(torch.stack([_entry_sum(t) for _, t in named]).sum().isfinite()):
        return
    bad = [(k, int((~torch.isfinite(t)).sum())) for k, t in named if not bool(torch.isfinite(t).all())]
    if bad:
        raise NonFiniteLoss(f"parameter {describe_nonfinite(bad)} after the update of {unit} {iteration}")


def _entry_sum(t: torch.Tensor) -> torch.Tensor:
    """The sum of a tensor's entries as float32 (accumulated in float32 at least, so half tensors do
    not overflow at 65504); NaN or inf whenever an entry is."""
    return t.sum(dtype=torch.float32) if t.element_size() < 4 else t.sum().float()


def stop_message(err: Exception, checkpoint: Path, saved: str | None) -> NonFiniteLoss:
    """A NonFiniteLoss saying what went wrong and which finite checkpoint a resume would start from;
    `saved` says what that checkpoint holds ('iteration 40', 'epoch 3', ...), None when there is none."""
    if saved is None:
        where = f"no checkpoint was written yet ({checkpoint} does not exist)"
    else:
        where = f"the last finite checkpoint is {checkpoint} ({saved}); nothing was written after it"
    return NonFiniteLoss(f"{err}; training stopped, {where}")


