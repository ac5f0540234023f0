"""Rerunnable benchmarks: `python -m viscoin_core.bench NAME [options]` prints one JSON object per line.

Each benchmark times a real step of the code (median over `--steps` after warm-up) and reports
`name`, `size`, `device`, `batch`, `seconds_per_step`, `steps`, `peak_mem_mb` (or, for data
throughput, `images_per_second`). Numbers depend on the machine: rerun, do not quote across machines.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import time
from typing import Callable

import torch


def peak_mem_mb(device: torch.device) -> float:
    """Peak memory of this process: CUDA allocator peak on GPU, max resident set size on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def time_steps(step: Callable[[], object], steps: int, device: torch.device, warmup: int = 1) -> float:
    """Median wall-clock seconds of `step()` over `steps` calls, after `warmup` untimed calls."""
    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    for _ in range(warmup):
        step()
    sync()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def emit(record: dict) -> None:
    """Print one benchmark result as a JSON line."""
    print(json.dumps(record), flush=True)


# name -> "module:function"; each function takes the parsed argparse namespace and emits JSON lines.
BENCHMARKS: dict[str, str] = {}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m viscoin_core.bench", description=__doc__)
    parser.add_argument("name", choices=sorted(BENCHMARKS), help="which benchmark to run")
    parser.add_argument("--size", default="smoke", choices=["smoke", "paper"])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args(argv)
    module_name, func_name = BENCHMARKS[args.name].split(":")
    module = __import__(module_name, fromlist=[func_name])
    getattr(module, func_name)(args)


if __name__ == "__main__":
    sys.exit(main())
