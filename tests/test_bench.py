"""Benchmarks: the VisCoIN step at the demo size runs, prints its step time and where it goes."""

import json

import pytest

from viscoin_core import bench


def test_viscoin_demo_step_prints_a_step_time_and_its_parts(capsys):
    bench.main(["viscoin", "--size", "demo", "--steps", "1", "--device", "cpu", "--allocator", "default"])
    out, err = capsys.readouterr()
    record = json.loads(out.strip().splitlines()[-1])
    assert record["name"] == "viscoin" and record["size"] == "demo"
    assert record["seconds_per_step"] > 0
    # the demo's Table 3 row: 32 px, ResNet-10 (the pretrained stand-in f's), K = 256, latent_channels 64, 8 + 8 images
    assert (record["resolution"], record["f_arch"], record["n_concepts"], record["latent_channels"],
            record["batch"]) == (32, "resnet10", 256, 64, 16)
    # and its autocast, as the profile sets it, unless --amp says otherwise
    from viscoin_core.config import read_params, resolve_path
    assert record["amp"] == ("bf16" if read_params(resolve_path("params/demo/viscoin_cub.yaml"))["amp"] == "bf16"
                             else "fp32")
    assert list(record["parts_ms"]) == list(bench.VISCOIN_PARTS)
    assert all(v >= 0 for v in record["parts_ms"].values()) and record["parts_ms"]["backward"] > 0
    assert "timed step (median)" in err and "LPIPS" in err   # the readable table, on stderr


def test_amp_given_on_the_command_line_wins_over_the_profile(capsys):
    bench.main(["viscoin", "--size", "demo", "--steps", "1", "--device", "cpu", "--amp", "off"])
    assert json.loads(capsys.readouterr()[0].strip().splitlines()[-1])["amp"] == "fp32"


def test_a_size_a_benchmark_does_not_know_is_refused(capsys):
    with pytest.raises(SystemExit) as exit_:
        bench.main(["gan", "--size", "demo"])
    assert exit_.value.code == 2 and "'gan' has sizes ['smoke', 'paper']" in capsys.readouterr().err
