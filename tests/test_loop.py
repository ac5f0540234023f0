"""What training loops share: RNG round trips, the NaN check, memory, the stage command line."""

import random
from dataclasses import dataclass

import numpy as np
import pytest
import torch

from viscoin_core import runs
from viscoin_core.config import ConfigError, param
from viscoin_core.train import loop


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
    runs.save_atomic({"rng": loop.rng_state()}, tmp_path / "checkpoint.pt")
    expected = draw()
    loop.seed_everything(99)
    loop.set_rng_state(runs.load_checkpoint(tmp_path)["rng"])
    assert draw() == expected


def test_check_finite_names_term_and_iteration():
    loop.check_finite({"a": torch.tensor(1.0)}, 3)
    with pytest.raises(loop.NonFiniteLoss, match=r"'lpips' is nan at iteration 7"):
        loop.check_finite({"a": 1.0, "lpips": torch.tensor(float("nan"))}, 7)


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


def test_parameter_check_finds_nan_and_inf_by_name_and_ignores_an_overflowing_sum():
    fine = [("a", torch.ones(3)), ("big", torch.full((4,), 3e38)), ("half", torch.full((10,), 6e4).half()),
            ("steps", torch.arange(3))]
    loop.check_finite_parameters(fine, 0)   # the float32 sum overflows to inf; every entry is finite
    for bad in (float("nan"), float("inf"), -float("inf")):
        t = torch.ones(5)
        t[2] = bad
        with pytest.raises(loop.NonFiniteLoss, match=r"^parameter 'b' holds 1 NaN/inf values after the update of "
                                                     r"iteration 7"):
            loop.check_finite_parameters([*fine, ("b", t)], 7)
    with pytest.raises(loop.NonFiniteLoss, match="'h'"):
        loop.check_finite_parameters([("h", torch.tensor([1.0, float("nan")]).half())], 0)


def test_native_bf16_is_read_from_the_cpu_flags(tmp_path):
    (tmp_path / "amx").write_text("processor : 0\nflags : fpu avx2 avx512f amx_bf16 amx_tile\n")
    (tmp_path / "avx2").write_text("processor : 0\nflags : fpu sse4_2 avx2 fma\n")
    (tmp_path / "bf16").write_text("flags : avx512f avx512_bf16\n")
    assert loop.cpu_has_native_bf16(tmp_path / "amx") is True
    assert loop.cpu_has_native_bf16(tmp_path / "bf16") is True
    assert loop.cpu_has_native_bf16(tmp_path / "avx2") is False
    assert loop.cpu_has_native_bf16(tmp_path / "missing") is None
