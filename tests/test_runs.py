"""Run I/O: atomic files, logs, resume guards, metrics, the JSON sanitiser, paths and run directories."""

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from viscoin_core import runs
from viscoin_core.config import ConfigError, param


@dataclass
class Cfg:
    seed: int = param(0)


def test_atomic_save_leaves_no_temporary_file(tmp_path):
    runs.save_atomic({"x": torch.ones(2)}, tmp_path / "a.pt")
    assert [p.name for p in tmp_path.iterdir()] == ["a.pt"]
    assert runs.load_checkpoint(tmp_path, "missing.pt") is None


def test_jsonl_ignores_torn_line_and_truncates_on_resume(tmp_path):
    log = tmp_path / "log.jsonl"
    for i in range(5):
        runs.append_jsonl(log, {"iteration": i, "loss": np.float32(i) / 2})
    with open(log, "a") as fh:
        fh.write('{"iteration": 5, "lo')
    assert [r["iteration"] for r in runs.read_jsonl(log)] == [0, 1, 2, 3, 4]
    runs.truncate_log(log, 2)
    assert [r["iteration"] for r in runs.read_jsonl(log)] == [0, 1, 2]


def test_run_dir_refuses_resume_with_other_parameters(tmp_path):
    runs.prepare_run_dir(tmp_path, Cfg(seed=1))
    runs.save_atomic({}, tmp_path / runs.CHECKPOINT)
    runs.prepare_run_dir(tmp_path, Cfg(seed=1))
    with pytest.raises(ConfigError, match="seed"):
        runs.prepare_run_dir(tmp_path, Cfg(seed=2))


def test_a_resumed_run_keeps_the_commit_it_began_at_and_lists_the_later_ones(tmp_path, monkeypatch):
    """The manifest of pretrained/ reads config.json's commit: resuming a run, or finding it finished,
    at a later commit must not rewrite where it was made."""
    commit = {"now": "aaa"}
    monkeypatch.setattr(runs, "git_commit", lambda: commit["now"])
    runs.prepare_run_dir(tmp_path, Cfg(seed=1))
    runs.save_atomic({}, tmp_path / runs.CHECKPOINT)
    read = lambda: json.loads((tmp_path / "config.json").read_text())
    assert read()["git_commit"] == "aaa" and "resumed_at_commits" not in read()
    for now in ("bbb", "bbb", "ccc"):                  # resumed, unfinished, at three later checkouts
        commit["now"] = now
        runs.prepare_run_dir(tmp_path, Cfg(seed=1))
    assert read()["git_commit"] == "aaa" and read()["resumed_at_commits"] == ["bbb", "ccc"]
    runs.write_metrics(tmp_path, {"done": 1})
    commit["now"] = "ddd"                               # finding it finished trains nothing
    runs.prepare_run_dir(tmp_path, Cfg(seed=1))
    assert read()["resumed_at_commits"] == ["bbb", "ccc"]


def test_metrics_round_trip(tmp_path):
    assert runs.read_metrics(tmp_path) is None
    runs.write_metrics(tmp_path, {"g_accuracy": np.float64(91.5), "tau": {"0.1": 0.2}})
    assert runs.read_metrics(tmp_path) == {"g_accuracy": 91.5, "tau": {"0.1": 0.2}}


def test_json_ready_makes_strict_json_of_tensors_numpy_paths_and_nan():
    value = {0.1: torch.tensor(2.0), 2: np.float32(0.5), "t": (1, torch.arange(2)), "p": Path("a/b"),
             "nan": float("nan"), "arr": np.array([1.5])}
    assert runs.json_ready(value) == {"0.1": 2.0, "2": 0.5, "t": [1, [0, 1]], "p": "a/b", "nan": None, "arr": [1.5]}
    assert math.isinf(runs.json_ready(float("inf")))


def test_run_directory_is_profile_stage_stem_seed(tmp_path):
    assert runs.run_directory("demo", "f", "classifier_cub", 2, root=tmp_path) == \
        tmp_path / "runs" / "demo" / "f" / "classifier_cub" / "seed2"
