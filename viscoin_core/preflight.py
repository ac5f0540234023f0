"""Preflight: what a table's rows need, checked before any work (`python -m viscoin_core.batch T --check`).

For every planned row: its inputs (the prepared cache or the raw tree that makes it, the f and G
files or the earlier rows that make them, official network pickles), the weight files a connected
machine would download on first use (ImageNet ResNet, LPIPS' VGG16, the FID Inception), a GPU when
the row asks for one, and disk room for the checkpoints. Each problem is one line that names the
missing piece and how to get it. The batch runs the same check before executing anything.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Callable, Iterable

import torch

from viscoin_core.config import ConfigError, repo_root, resolve_path
from viscoin_core.eval.metrics import INCEPTION_WEIGHTS, VGG16_WEIGHTS
from viscoin_core.runs import rebuild_hint

SYNTHETIC = ("toybirds", "toytissue")
# Images of each real dataset (both splits), to size its cache before it exists.
DATASET_IMAGES = {"cub": 11_788, "nct": 107_180}
# Disk a finished run of each stage takes at the paper's sizes, GB: parameter counts x 4 bytes for
# each stored copy (weights, G_ema, Adam's two moments) -- f: ResNet-50, 23.9M; G: paper256 G 24.8M
# + D 24.0M; VisCoIN: Psi 79.5M + Theta 0.05M + Omega 16.5M at K = 256, 512 latent channels.
RUN_GB = {"f": 0.5, "g": 1.0, "viscoin": 1.6}
SMALL_RUN_GB = 0.05   # a run of the 32 px profiles' small networks
CHECKPOINT_HINT = "a connected machine downloads it on first use; offline, copy it into {dir} (README: Weights offline)"


def hub_checkpoints() -> Path:
    """Where torchvision, lpips and torch-fidelity look for (and download) weight files."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def imagenet_weights_file(arch: str) -> str:
    """torchvision's file name of the ImageNet weights of a ResNet (`pretrained: true`)."""
    import torchvision
    weights = torchvision.models.get_model_weights(arch)
    return Path((getattr(weights, "IMAGENET1K_V1", None) or weights.DEFAULT).url).name


def weight_files(config: Any) -> list[str]:
    """The hub-cache files a stage's config reads (downloaded by their libraries when missing)."""
    files = []
    if getattr(config, "pretrained", False):
        files.append(imagenet_weights_file(config.arch))
    if getattr(config, "lpips_backbone", None) == "vgg":
        files.append(VGG16_WEIGHTS)
    if getattr(config, "fid_features", None) == "inception" and getattr(config, "fid_images", 1) > 0:
        files.append(INCEPTION_WEIGHTS)
    return files


def made_by(path: Path, runs: Iterable) -> Any:
    """The planned run that writes `path` (its run directory or a file in it), or None."""
    for run in runs:
        made = run.run_dir.resolve()
        if path.resolve() == made or made in path.resolve().parents:
            return run
    return None


def data_problem(data_file: str, root: Path) -> tuple[str | None, str, float]:
    """(problem or None, cache directory, GB the cache will take if it must still be made) of a data file."""
    from viscoin_core.data.prepare import as_config
    try:
        data = as_config(resolve_path(data_file, root))
    except ConfigError as err:
        return str(err), data_file, 0.0
    if (resolve_path(data.cache_dir, root) / "manifest.json").is_file() or data.dataset in SYNTHETIC:
        return None, data.cache_dir, 0.0
    raw = resolve_path(data.root, root)
    if not raw.exists():
        gb = DATASET_IMAGES.get(data.dataset, 0) * data.resolution ** 2 * 3 / 1e9
        return (f"{data_file}: the raw {data.dataset} tree {data.root} does not exist (unpack the dataset there, "
                "README 'The real data' step 2)"), data.cache_dir, gb
    return None, data.cache_dir, count_images(raw) * data.resolution ** 2 * 3 / 1e9


def count_images(raw: Path) -> int:
    """Images in a raw tree (CUB: the lines of images.txt; otherwise image files below it)."""
    if (raw / "images.txt").is_file():
        return sum(1 for line in (raw / "images.txt").read_text().splitlines() if line.strip())
    suffixes = {".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp"}
    return sum(1 for path in raw.rglob("*") if path.suffix.lower() in suffixes)


def path_problem(key: str, value: str | None, runs: list, root: Path) -> str | None:
    """A missing f, G, start pickle or init file that no planned run makes, as one line."""
    if value in ("random", "scratch", "", None):
        return None
    path = resolve_path(value, root)
    if path.exists() or made_by(path, runs) is not None:
        return None
    if path.suffix == ".pkl":
        return (f"'{key}' = {value} is missing: download the official StyleGAN2-ADA pickle into "
                f"{Path(value).parent} (README 'The real data' step 3)")
    if path.suffix in (".yaml", ".yml"):   # an FID classifier named by its file is trained when missing
        return None if path.is_file() else f"'{key}' = {value}: no such parameter file"
    if rebuild_hint(path, root):
        return f"'{key}' = {value} is missing: it is a pretrained stand-in network, rebuild it with `make pretrained`"
    return f"'{key}' = {value} is missing and no planned row makes it (run the table that trains it first)"


def run_gb(stage: str, config: Any) -> float:
    """Disk one run of `stage` will take: RUN_GB at the paper's sizes, far less for small networks."""
    if stage == "f":
        return RUN_GB["f"] if getattr(config, "arch", "") == "resnet50" else SMALL_RUN_GB * 4
    if stage == "g":
        return RUN_GB["g"] if config.arch == "paper256" or str(config.start).endswith(".pkl") else SMALL_RUN_GB
    if stage == "viscoin":   # Psi's convolutions, most of it, grow with the square of its channels
        return RUN_GB["viscoin"] * (config.latent_channels / 512) ** 2 + SMALL_RUN_GB
    return 0.0


def needs_gpu(config: Any, profile: str) -> bool:
    """A row asks for a GPU when its device names CUDA, or is 'auto' at the paper's sizes."""
    device = str(getattr(config, "device", "cpu"))
    return device.startswith("cuda") or (device == "auto" and profile == "paper")


def gpu_line() -> tuple[str | None, str]:
    """(problem or None, description of the GPU found)."""
    if not torch.cuda.is_available():
        return "no CUDA GPU on this machine (the paper profile's rows are GPU work)", "no GPU"
    props = torch.cuda.get_device_properties(0)
    return None, f"{props.name}, {props.total_memory / 2**30:.0f} GiB"


def steps_of(stage: str, config: Any) -> float | None:
    """Optimiser steps a row takes (classifier: needs its cache's manifest for the image count)."""
    if stage == "viscoin":
        return float(config.iterations)
    if stage == "g":
        return config.kimg * 1000 / config.batch
    return None


BENCH_SIZE_OF_PROFILE = {"paper": "paper", "rehearsal": "paper", "demo": "demo", "mini": "mini", "smoke": "smoke"}


def read_step_times(path: str | Path | None, profile: str = "paper") -> dict[str, float]:
    """Seconds per step by bench name ('viscoin', 'gan', 'classifier') from `bench` JSON lines, of
    the bench size that matches `profile` (a demo step is no estimate of a paper row)."""
    if not path:
        return {}
    size = BENCH_SIZE_OF_PROFILE.get(profile, profile)
    times = {}
    for line in Path(path).read_text().splitlines():
        if line.strip().startswith("{"):
            record = json.loads(line)
            if "seconds_per_step" in record and record.get("size", size) == size:
                times[record["name"]] = float(record["seconds_per_step"])
    return times


BENCH_OF_STAGE = {"viscoin": "viscoin", "g": "gan", "f": "classifier"}


def check(runs: list, profile: str, config_of: Callable, stage_of: Callable, root: Path | None = None,
          step_times: dict[str, float] | None = None) -> tuple[list[str], list[str]]:
    """(problems, plan lines) for the planned runs; no problem means every input is there or made first."""
    root = root or repo_root()
    step_times = step_times or {}
    missing: dict[str, list[str]] = {}     # problem -> the rows it stops
    weights: dict[str, list[str]] = {}     # weight file -> the rows that read it
    caches: dict[str, float] = {}          # cache directory -> GB still to be written
    plan: list[str] = []
    gpu_rows = []
    configs = {}   # run -> its config, parsed once
    for run in runs:
        row = f"{run.table} '{run.label}' seed {run.seed} ({run.params_file.relative_to(root)})"
        config = configs[run] = config_of(run)
        stage = stage_of(run)
        if getattr(config, "data", ""):
            problem, cache_dir, gb = data_problem(config.data, root)
            caches[cache_dir] = gb
            if problem:
                missing.setdefault(problem, []).append(row)
        for key in ("f", "G", "start", "init_from", "fid_classifier"):
            problem = path_problem(key, getattr(config, key, None), runs, root)
            if problem:
                missing.setdefault(problem, []).append(row)
        for name in weight_files(config):
            weights.setdefault(name, []).append(row)
        if needs_gpu(config, profile):
            gpu_rows.append(row)
        reads = sorted({f"{other.table} '{other.label}'" for other in runs if other is not run and any(
            made_by(resolve_path(getattr(config, k, "") or "", root), [other]) for k in ("f", "G", "start"))})
        steps = steps_of(stage, config)
        seconds = step_times.get(BENCH_OF_STAGE.get(stage, stage))
        hours = f"{steps * seconds / 3600:.1f} h" if steps and seconds else "? h"
        plan.append(f"{row}: {stage}" + (f", {steps:.0f} steps, {hours}" if steps else "")
                    + (f", after {', '.join(reads)}" if reads else ""))
    problems = [f"{problem} ({len(rows)} row(s), e.g. {rows[0]})" for problem, rows in missing.items()]
    for name, rows in sorted(weights.items()):
        if not (hub_checkpoints() / name).is_file():
            problems.append(f"weights {name} are not in {hub_checkpoints()} ({len(rows)} row(s), e.g. {rows[0]}): "
                            + CHECKPOINT_HINT.format(dir=hub_checkpoints()))
    if gpu_rows:
        problem, found = gpu_line()
        plan.append(f"GPU: {found} ({len(gpu_rows)} row(s) ask for one)")
        if problem:
            problems.append(f"{problem}: {len(gpu_rows)} row(s) ask for one, e.g. {gpu_rows[0]}")
    cache_gb = sum(caches.values())
    need_gb = cache_gb + sum(run_gb(stage_of(run), configs[run]) for run in runs
                            if not (run.run_dir / "metrics.json").exists())
    runs_dir = root / "runs"
    free_gb = shutil.disk_usage(runs_dir if runs_dir.exists() else root).free / 1e9
    plan.append(f"disk: about {need_gb:.1f} GB needed (caches {cache_gb:.1f} GB), {free_gb:.0f} GB free")
    if need_gb > free_gb:
        problems.append(f"disk: about {need_gb:.1f} GB needed for caches and checkpoints, only {free_gb:.1f} GB "
                        f"free under {runs_dir}")
    if not step_times:
        plan.append("hours: pass --step-times FILE with `python -m viscoin_core.bench NAME --size paper` lines "
                    "measured on the machine that will run the rows")
    return problems, plan
