"""Run I/O: where a run's files live and how they are written and read.

A run directory holds `config.json` (resolved parameters, package version, git commit),
`log.jsonl` (one JSON object per logged step), checkpoints and `metrics.json`. Checkpoints are
written to a temporary file and renamed, so an interruption never leaves a half-written file, and
they load with `torch.load(weights_only=True)`. Batches keep each run under
`runs/<profile>/<stage>/<params stem>/seed<k>` (`run_directory`); the paths inside parameter files
resolve with `config.resolve_path` (against the repository root).

Below nets, data, eval, viz and train (which all read or write runs): this module imports only the
configuration, the standard library, NumPy and torch.
"""

from __future__ import annotations

import errno
import io
import json
import math
import os
import pickle
import shutil
import subprocess
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from viscoin_core.config import ConfigError, repo_root, to_dict

CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.json"      # a finished run's metrics (its presence marks the run done)


# ---------------------------------------------------------------------------------------------
# Where a run lives and runs

def run_directory(profile: str, stage: str, params_stem: str, seed: int = 0, root: str | Path | None = None) -> Path:
    """runs/<profile>/<stage>/<params stem>/seed<k> under `root` (default: the repository root):
    where a batch row of params/<profile>/<params stem>.yaml keeps its run with seed k."""
    return Path(root or repo_root()) / "runs" / profile / stage / params_stem / f"seed{seed}"


def pick_device(device: str = "auto") -> torch.device:
    """'auto' picks CUDA when present, else CPU; anything else is passed to torch.device.

    Here rather than in train: evaluation and the audit pick their device the same way."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


# ---------------------------------------------------------------------------------------------
# config.json

def git_commit() -> str | None:
    """The checkout's commit hash, or None outside a git checkout."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def describe_run(config: Any) -> dict:
    """Everything a run directory's config.json records: the resolved config, version and commit."""
    from viscoin_core import __version__
    return {"config": to_dict(config), "config_class": type(config).__name__,
            "package_version": __version__, "git_commit": git_commit()}


def changed_keys(old: dict, new: dict) -> list[str]:
    """The keys, sorted, whose values differ between two config dicts (a key missing on one side counts)."""
    return sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))


def prepare_run_dir(run_dir: str | Path, config: Any, extendable: tuple[str, ...] = ()) -> Path:
    """Create `run_dir` and write config.json; refuse to resume a run made with other parameters.

    A budget named in `extendable` (e.g. 'iterations') may grow on resume, and only grow: the run then
    goes on from its checkpoint as if it had been started with the larger budget."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    record = describe_run(config)
    path = run_dir / "config.json"
    if path.exists() and (run_dir / CHECKPOINT).exists():
        before = json.loads(path.read_text())
        old, new = before.get("config"), record["config"]
        changed = changed_keys(old, new)
        grown = all(k in extendable and isinstance(old.get(k), (int, float)) and isinstance(new.get(k), (int, float))
                    and new[k] > old[k] for k in changed)
        if changed and not grown:
            hint = f"; of these only {list(extendable)} may change, and only grow" if extendable else ""
            raise ConfigError(f"{run_dir} holds a run with other parameters (changed: {changed}){hint}; "
                              "use a new run directory or delete the old one")
        # A resumed run keeps the commit it began at; later commits that train it (a run left
        # unfinished, or a budget grown) are listed, not those that merely find it finished.
        began = before.get("git_commit")
        later = list(before.get("resumed_at_commits", []))
        trains = bool(changed) or not (run_dir / METRICS).exists()
        if began and trains and record["git_commit"] not in (began, *later):
            later.append(record["git_commit"])
        record = {**record, "git_commit": began or record["git_commit"], **({"resumed_at_commits": later} if later else {})}
    write_json_atomic(path, record)
    return run_dir


# ---------------------------------------------------------------------------------------------
# JSON

def json_ready(value: Any) -> Any:
    """`value` as plain JSON, recursively: tensors and NumPy values become numbers or lists, paths
    strings, tuples lists, dict keys strings, and NaN null (strict JSON: readers other than Python's
    reject NaN). Anything else unknown is left for json.dumps to refuse."""
    if isinstance(value, float):
        return None if math.isnan(value) else value
    if isinstance(value, Mapping):
        return {str(k): json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    if isinstance(value, (torch.Tensor, np.ndarray, np.generic)):
        return json_ready(value.tolist())
    if isinstance(value, Path):
        return str(value)
    return value


def write_json_atomic(path: str | Path, data: Any) -> None:
    """Write JSON through a temporary file and a rename (a full disk: NoSpaceLeft, nothing replaced)."""
    write_bytes_atomic(path, (json.dumps(json_ready(data), indent=2, sort_keys=True) + "\n").encode())


def write_metrics(run_dir: str | Path, metrics: Mapping) -> Path:
    """Write metrics.json atomically and return its path."""
    path = Path(run_dir) / METRICS
    write_json_atomic(path, dict(metrics))
    return path


def read_metrics(run_dir: str | Path) -> dict | None:
    """The run's metrics.json, or None when the run has not finished."""
    path = Path(run_dir) / METRICS
    return json.loads(path.read_text()) if path.exists() else None


def finished(run_dir: str | Path, final: str, budget_key: str, budget: float) -> dict | None:
    """metrics.json of a finished run whose `budget_key` (e.g. 'iterations', 'kimg') reaches `budget`.

    None when work is left. A finished run with a smaller budget is being extended (prepare_run_dir
    allowed it): its metrics.json and `final` file are the shorter run's, so both are deleted and
    training goes on from the last checkpoint."""
    run_dir = Path(run_dir)
    done = read_metrics(run_dir)
    if done is None or not (run_dir / final).exists():
        return None
    if done.get(budget_key, budget) >= budget:
        return done
    for stale in (METRICS, final):
        (run_dir / stale).unlink()
    return None


# ---------------------------------------------------------------------------------------------
# Checkpoints

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


# ---------------------------------------------------------------------------------------------
# JSONL logs

def append_jsonl(path: str | Path, record: Mapping) -> None:
    """Append one JSON object as a line (flushed, so a crash loses at most the line being written)."""
    with open(path, "a") as fh:
        fh.write(json.dumps(json_ready(record)) + "\n")


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


# ---------------------------------------------------------------------------------------------
# Faults: non-finite states, full disks, refused files. A fault costs at most the work since the
# last checkpoint, and its message says in one line what happened and where.

class NonFiniteLoss(RuntimeError):
    """A loss term became NaN or inf; the message names the iteration and the term."""


class NoSpaceLeft(OSError):
    """A write ran out of disk space; the message names the file, the size it needed and what was kept.
    errno is ENOSPC; str() is the message alone (no '[Errno 28]')."""

    def __str__(self) -> str:
        return str(self.strerror)


class CheckpointError(ValueError):
    """A torch file is refused (not weights-only, unreadable, or holding NaN/inf); the message names it."""


PRETRAINED_DIR = "pretrained"   # the stand-ins' committed networks (viscoin_core.pretrained writes them)


def rebuild_hint(path: str | Path, root: str | Path | None = None) -> str:
    """What to add to an error about `path` when it is one of the pretrained stand-ins (under
    `root`/pretrained, the repository's by default): how to rebuild it."""
    try:
        Path(path).resolve().relative_to((Path(root or repo_root()) / PRETRAINED_DIR).resolve())
    except ValueError:
        return ""
    return f"; {path} is a pretrained stand-in network: rebuild it with `make pretrained`"


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
