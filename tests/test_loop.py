"""Shared run-directory machinery: atomic files, RNG round trips, logs, resume guards."""

import random
from dataclasses import dataclass

import numpy as np
import pytest
import torch

from viscoin_core.config import ConfigError, param
from viscoin_core.train import loop


@dataclass
class Cfg:
    seed: int = param(0)


@dataclass
class Toy:
    a: int = param(0)
    b: float = param(0.0)
    name: str = param("")
    device: str = param("cpu")


def draw():
    return random.random(), float(np.random.rand()), float(torch.rand(()))


def test_rng_state_survives_a_checkpoint_round_trip(tmp_path):
    loop.seed_everything(3)
    draw()
    loop.save_atomic({"rng": loop.rng_state()}, tmp_path / "checkpoint.pt")
    expected = draw()
    loop.seed_everything(99)
    loop.set_rng_state(loop.load_checkpoint(tmp_path)["rng"])
    assert draw() == expected


def test_atomic_save_leaves_no_temporary_file(tmp_path):
    loop.save_atomic({"x": torch.ones(2)}, tmp_path / "a.pt")
    assert [p.name for p in tmp_path.iterdir()] == ["a.pt"]
    assert loop.load_checkpoint(tmp_path, "missing.pt") is None


def test_jsonl_ignores_torn_line_and_truncates_on_resume(tmp_path):
    log = tmp_path / "log.jsonl"
    for i in range(5):
        loop.append_jsonl(log, {"iteration": i, "loss": np.float32(i) / 2})
    with open(log, "a") as fh:
        fh.write('{"iteration": 5, "lo')
    assert [r["iteration"] for r in loop.read_jsonl(log)] == [0, 1, 2, 3, 4]
    loop.truncate_log(log, 2)
    assert [r["iteration"] for r in loop.read_jsonl(log)] == [0, 1, 2]


def test_check_finite_names_term_and_iteration():
    loop.check_finite({"a": torch.tensor(1.0)}, 3)
    with pytest.raises(loop.NonFiniteLoss, match=r"'lpips' is nan at iteration 7"):
        loop.check_finite({"a": 1.0, "lpips": torch.tensor(float("nan"))}, 7)


def test_run_dir_refuses_resume_with_other_parameters(tmp_path):
    loop.prepare_run_dir(tmp_path, Cfg(seed=1))
    loop.save_atomic({}, tmp_path / loop.CHECKPOINT)
    loop.prepare_run_dir(tmp_path, Cfg(seed=1))
    with pytest.raises(ConfigError, match="seed"):
        loop.prepare_run_dir(tmp_path, Cfg(seed=2))


def test_metrics_round_trip(tmp_path):
    assert loop.read_metrics(tmp_path) is None
    loop.write_metrics(tmp_path, {"g_accuracy": np.float64(91.5), "tau": {"0.1": 0.2}})
    assert loop.read_metrics(tmp_path) == {"g_accuracy": 91.5, "tau": {"0.1": 0.2}}


def test_keep_freed_memory_takes_on_glibc_and_allocation_still_works():
    import platform
    took = loop.keep_freed_memory()
    if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
        assert took
    x = torch.ones(64, 1024, 1024)     # 256 MB: served from the heap now, not a fresh mmap
    assert float(x.sum()) == 64 * 1024 * 1024


def test_set_overrides_read_values_as_yaml_and_name_a_bad_item(tmp_path):
    params = tmp_path / "p.yaml"
    params.write_text("a: 1\nname: x\n")
    args = loop.stage_cli("toy", "toy stage").parse_args(
        ["--params", str(params), "--run-dir", "r", "--set", "a=3", "--set", "name=layer2", "--set", "b=0.5"])
    cfg = loop.stage_config(Toy, args)
    assert (cfg.a, cfg.b, cfg.name) == (3, 0.5, "layer2")
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        loop.parse_overrides(["a3"])
    with pytest.raises(ConfigError, match="nope"):
        loop.stage_config(Toy, loop.stage_cli("toy", "t").parse_args(
            ["--params", str(params), "--run-dir", "r", "--set", "nope=1"]))
