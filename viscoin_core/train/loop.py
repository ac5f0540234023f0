"""What every training loop shares: run directories, atomic checkpoints, RNG state, JSONL logs.

A run directory holds `config.json` (resolved parameters, package version, git commit),
`log.jsonl` (one JSON object per logged step), checkpoints and `metrics.json`. Checkpoints are
written to a temporary file and renamed, so an interruption never leaves a half-written file, and
they load with `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import math
import os
import random
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
import torch
import yaml

from viscoin_core.config import ConfigError, describe_run, load_config, repo_root

CHECKPOINT = "checkpoint.pt"


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


def pick_device(device: str = "auto") -> torch.device:
    """'auto' picks CUDA when present, else CPU; anything else is passed to torch.device."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def prepare_run_dir(run_dir: str | Path, config: Any) -> Path:
    """Create `run_dir` and write config.json; refuse to resume a run made with other parameters."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    record = describe_run(config)
    path = run_dir / "config.json"
    if path.exists() and (run_dir / CHECKPOINT).exists():
        old = json.loads(path.read_text()).get("config")
        if old != record["config"]:
            changed = sorted(k for k in set(old) | set(record["config"]) if old.get(k) != record["config"].get(k))
            raise ConfigError(f"{run_dir} holds a run with other parameters (changed: {changed}); "
                              "use a new run directory or delete the old one")
    write_json_atomic(path, record)
    return run_dir


def write_json_atomic(path: str | Path, data: Any) -> None:
    """Write JSON through a temporary file and a rename."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True, default=_json_default) + "\n")
    os.replace(tmp, path)


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot write {type(value).__name__} to JSON")


def save_atomic(obj: Any, path: str | Path) -> None:
    """torch.save through a temporary file and a rename."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def load_checkpoint(run_dir: str | Path, name: str = CHECKPOINT) -> dict | None:
    """The run's checkpoint (loaded with weights_only=True, on CPU), or None if there is none yet."""
    path = Path(run_dir) / name
    if not path.exists():
        return None
    return torch.load(path, map_location="cpu", weights_only=True)


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


def append_jsonl(path: str | Path, record: Mapping) -> None:
    """Append one JSON object as a line (flushed, so a crash loses at most the line being written)."""
    with open(path, "a") as fh:
        fh.write(json.dumps(record, default=_json_default) + "\n")


def read_jsonl(path: str | Path) -> list[dict]:
    """Every complete line of a JSONL log (a torn last line from a crash is ignored)."""
    path = Path(path)
    if not path.exists():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def truncate_log(path: str | Path, last_step: int, key: str = "iteration") -> None:
    """Drop log lines written after the checkpoint we resume from, so the log has no duplicate steps."""
    path = Path(path)
    if not path.exists():
        return
    kept = [r for r in read_jsonl(path) if r.get(key, -1) <= last_step]
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))
    os.replace(tmp, path)


def check_finite(terms: Mapping[str, torch.Tensor | float], iteration: int) -> None:
    """Raise NonFiniteLoss naming the first NaN/inf term and the iteration."""
    for name, value in terms.items():
        v = float(value.detach()) if isinstance(value, torch.Tensor) else float(value)
        if not math.isfinite(v):
            raise NonFiniteLoss(f"loss term '{name}' is {v} at iteration {iteration}; "
                                "the last good state was saved in the run directory")


def write_metrics(run_dir: str | Path, metrics: Mapping) -> Path:
    """Write metrics.json atomically and return its path."""
    path = Path(run_dir) / "metrics.json"
    write_json_atomic(path, dict(metrics))
    return path


def read_metrics(run_dir: str | Path) -> dict | None:
    """The run's metrics.json, or None when the run has not finished."""
    path = Path(run_dir) / "metrics.json"
    return json.loads(path.read_text()) if path.exists() else None


def cycle(loader: Iterable) -> Iterable:
    """Endless iteration over a DataLoader, reshuffling each pass."""
    while True:
        yield from loader


def stage_cli(stage: str, doc: str) -> argparse.ArgumentParser:
    """The command line every training stage shares: --params FILE --run-dir DIR [--device D] [--set K=V ...]."""
    parser = argparse.ArgumentParser(prog=f"python -m viscoin_core.train.{stage}", description=doc.split("\n")[0])
    parser.add_argument("--params", required=True, help=f"YAML parameter file (params/<profile>/{stage}*.yaml)")
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
    """The validated config named by `stage_cli`'s arguments (the file found from here or the repo root)."""
    path = Path(args.params)
    if not (path.is_absolute() or path.exists()):
        path = repo_root() / path
    overrides = parse_overrides(getattr(args, "set", []) or [])
    if args.device:
        overrides["device"] = args.device
    return load_config(cls, path, **overrides)
