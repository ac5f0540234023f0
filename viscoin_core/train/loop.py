"""What every training loop shares: run directories, atomic checkpoints, RNG state, JSONL logs.

A run directory holds `config.json` (resolved parameters, package version, git commit),
`log.jsonl` (one JSON object per logged step), checkpoints and `metrics.json`. Checkpoints are
written to a temporary file and renamed, so an interruption never leaves a half-written file, and
they load with `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import argparse
import ctypes
import errno
import io
import json
import math
import os
import pickle
import random
import shutil
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
import torch
import yaml

from viscoin_core.config import ConfigError, describe_run, load_config, load_yaml, repo_root

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
    text = json.dumps(data, indent=2, sort_keys=True, default=_json_default) + "\n"
    write_bytes_atomic(path, text.encode())


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot write {type(value).__name__} to JSON")


def save_atomic(obj: Any, path: str | Path, finite: bool = False) -> None:
    """torch.save through a temporary file and a rename; `path` is never replaced by a worse file.

    With `finite` (every checkpoint and model file of the trainers) an object holding a floating
    tensor with NaN or inf is refused (NonFiniteLoss naming the entry) and nothing is written; other
    records may hold NaN on purpose (an undefined relevance, say). The object is serialised in memory
    first (for a moment the checkpoint's size in RAM) and written with a plain write: a full disk
    then raises NoSpaceLeft naming the path and the size instead of torch's "unexpected pos", the
    partial temporary file is removed and `path` keeps its previous content.
    """
    path = Path(path)
    if finite:
        bad = nonfinite_entries(obj)
        if bad:
            raise NonFiniteLoss(f"refusing to write {path}: {describe_nonfinite(bad)}; "
                                f"{'its previous content is kept' if path.exists() else 'nothing was written'}")
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    write_bytes_atomic(path, buffer.getbuffer())


def load_checkpoint(run_dir: str | Path, name: str = CHECKPOINT) -> dict | None:
    """The run's checkpoint (loaded with weights_only=True, on CPU), or None if there is none yet."""
    path = Path(run_dir) / name
    if not path.exists():
        return None
    return load_torch(path)


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
        try:
            out[key.strip()] = load_yaml(value)     # reads 1e6 and 1e-4 as floats (YAML 1.1 would not)
        except yaml.YAMLError as err:
            raise ConfigError(f"--set {item!r}: the value is not valid YAML ({' '.join(str(err).split())})") from None
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


# ---------------------------------------------------------------------------------------------
# Faults: non-finite states, full disks, refused files (issue 15). A fault costs at most the work
# since the last checkpoint, and its message says in one line what happened and where.

class NoSpaceLeft(OSError):
    """A write ran out of disk space; the message names the file, the size it needed and what was kept.
    errno is ENOSPC; str() is the message alone (no '[Errno 28]')."""

    def __str__(self) -> str:
        return str(self.strerror)


class CheckpointError(ValueError):
    """A torch file is refused (not weights-only, unreadable, or holding NaN/inf); the message names it."""


def write_bytes_atomic(path: str | Path, data: bytes | memoryview) -> None:
    """Write `data` to `path` through a temporary file, fsync and a rename.

    On any OSError the temporary file is removed (a partial file must not fill the disk) and `path`
    keeps its previous content; a full disk raises NoSpaceLeft with the size in MB.
    """
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())   # a crash after the rename finds the whole file
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        if err.errno in (errno.ENOSPC, errno.EDQUOT):
            raise no_space(path, len(data), "its previous content is kept" if path.exists()
                           else "nothing was written") from None
        raise


def no_space(path: str | Path, n_bytes: int, kept: str) -> NoSpaceLeft:
    """NoSpaceLeft for `path` needing `n_bytes`: 'no space left on device: <path> needs N MB (M MB free); <kept>'."""
    path = Path(path)
    try:
        free = f", {shutil.disk_usage(path.parent).free / 2**20:.1f} MB free"
    except OSError:
        free = ""
    return NoSpaceLeft(errno.ENOSPC, f"no space left on device: {path} needs {n_bytes / 2**20:.1f} MB{free}; {kept}")


def nonfinite_entries(obj: Any, name: str = "") -> list[tuple[str, int]]:
    """(dotted name, number of NaN/inf values) of every floating tensor in a nested dict/list/tuple."""
    if isinstance(obj, torch.Tensor):
        if not (obj.is_floating_point() or obj.is_complex()):
            return []
        count = int((~torch.isfinite(obj)).sum())
        return [(name or "tensor", count)] if count else []
    if isinstance(obj, Mapping):
        items = obj.items()
    elif isinstance(obj, (list, tuple)):
        items = enumerate(obj)
    else:
        return []
    found = []
    for key, value in items:
        found += nonfinite_entries(value, f"{name}.{key}" if name else str(key))
    return found


def describe_nonfinite(entries: list[tuple[str, int]]) -> str:
    """'psi.to_concepts.weight' holds 4096 NaN/inf values (and 3 more tensors)."""
    name, count = entries[0]
    more = f" (and {len(entries) - 1} more tensors)" if len(entries) > 1 else ""
    return f"'{name}' holds {count} NaN/inf values{more}"


def check_finite_parameters(named: Iterable[tuple[str, torch.Tensor]], iteration: int, unit: str = "iteration") -> None:
    """Raise NonFiniteLoss when a tensor of `named` (name, tensor) holds NaN or inf, naming it.

    One device sync for all tensors; names are only looked up on failure.
    """
    named = [(k, t.detach()) for k, t in named if t.is_floating_point()]
    if not named or bool(torch.stack([torch.isfinite(t).all() for _, t in named]).all()):
        return
    bad = [(k, int((~torch.isfinite(t)).sum())) for k, t in named if not bool(torch.isfinite(t).all())]
    raise NonFiniteLoss(f"parameter {describe_nonfinite(bad)} after the update of {unit} {iteration}")


def stop_message(err: Exception, checkpoint: Path, saved: str | None) -> NonFiniteLoss:
    """A NonFiniteLoss saying what went wrong and which finite checkpoint a resume would start from;
    `saved` says what that checkpoint holds ('iteration 40', 'epoch 3', ...), None when there is none."""
    if saved is None:
        where = f"no checkpoint was written yet ({checkpoint} does not exist)"
    else:
        where = f"the last finite checkpoint is {checkpoint} ({saved}); nothing was written after it"
    return NonFiniteLoss(f"{err}; training stopped, {where}")


def load_torch(path: str | Path, map_location: Any = "cpu", finite: bool = True) -> Any:
    """torch.load(weights_only=True) that names the file when it refuses it.

    A pickle with anything but tensors and plain containers, a truncated or foreign file, and (with
    `finite`) a file holding NaN or inf all raise CheckpointError naming `path`.
    """
    path = Path(path)
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        raise CheckpointError(f"{path}: refused by torch.load(weights_only=True), it holds more than tensors "
                              f"and plain containers ({_refusal_reason(err)}); load nothing from an "
                              "untrusted source") from None
    except (RuntimeError, EOFError, ValueError, KeyError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"{path}: not a readable torch file ({type(err).__name__}: {first})") from None
    if finite:
        bad = nonfinite_entries(obj)
        if bad:
            raise CheckpointError(f"{path}: {describe_nonfinite(bad)}; refusing a non-finite checkpoint "
                                  "(resume from an earlier one or start a new run directory)")
    return obj


def _refusal_reason(err: Exception) -> str:
    """The line of torch's weights-only refusal that names what was refused (its first line is boilerplate)."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    named = [line for line in lines if "GLOBAL" in line or "Unsupported" in line or "unsupported" in line]
    return (named or lines or [type(err).__name__])[0].rstrip(".")
