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


def cpu_seconds() -> float:
    """User + system CPU time of this process and of its finished children (pool and loader workers)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def bench_data(args: argparse.Namespace) -> None:
    """Data throughput: synthetic generation at 64 px (drawn and written as PNG, 2 processes) and
    cache reads at 64 and 256 px through a DataLoader with training augmentation and 2 workers.

    Besides wall-clock images_per_second, each record gives images_per_cpu_second (all processes'
    CPU time): on a shared machine the wall rate falls with the load, the CPU rate much less; two
    idle cores give at most twice the CPU rate.
    """
    import os
    import shutil
    import tempfile
    from pathlib import Path

    import numpy as np

    from viscoin_core.data import load_split, synthetic
    from viscoin_core.data.cache import array_path, write_manifest

    big = args.size == "paper"
    scratch = Path(tempfile.mkdtemp(prefix="viscoin_bench_data_"))

    def record(name, images, wall, cpu, load_before, **extra):
        emit({"name": name, "images": images, "workers": 2, "images_per_second": round(images / wall, 1),
              "images_per_cpu_second": round(images / cpu, 1), "cpu_seconds": round(cpu, 2),
              "load_average_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)], **extra})

    try:
        rates, total_images, total_wall, total_cpu, load = {}, 0, 0.0, 0.0, os.getloadavg()[0]
        for dataset, per_class in (("toybirds", 400 if big else 100), ("toytissue", 500 if big else 120)):
            wall, cpu = time.perf_counter(), cpu_seconds()
            synthetic.generate(dataset, scratch / dataset, per_class, 64, seed=0, workers=2)
            wall, cpu = time.perf_counter() - wall, cpu_seconds() - cpu
            n = 2 * per_class * (12 if dataset == "toybirds" else 9)
            rates[f"{dataset}_images_per_second"] = round(n / wall, 1)
            total_images, total_wall, total_cpu = total_images + n, total_wall + wall, total_cpu + cpu
        record("synthetic_generation", total_images, total_wall, total_cpu, load, resolution=64, **rates)

        for resolution, n in ((64, 20000 if big else 6000), (256, 4000 if big else 1200)):
            cache = scratch / f"cache_{resolution}"
            cache.mkdir()
            rng = np.random.default_rng(0)
            images = np.lib.format.open_memmap(array_path(cache, "train", "images"), mode="w+", dtype=np.uint8,
                                               shape=(n, resolution, resolution, 3))
            for start in range(0, n, 500):
                images[start:start + 500] = rng.integers(0, 256, images[start:start + 500].shape, dtype=np.uint8)
            images.flush()
            del images
            np.save(array_path(cache, "train", "labels"), np.arange(n) % 10)
            # an empty test split keeps the cache complete
            np.save(array_path(cache, "test", "images"), np.zeros((0, resolution, resolution, 3), np.uint8))
            np.save(array_path(cache, "test", "labels"), np.zeros(0, np.int64))
            write_manifest(cache, {"settings": {"resolution": resolution}, "class_names": [str(c) for c in range(10)],
                                   "factor_names": None, "attribute_names": None,
                                   "counts": {"train": {"total": n}, "test": {"total": 0}}})
            dataset = load_split(cache, "train", augment=True)
            loader = torch.utils.data.DataLoader(dataset, batch_size=64, shuffle=True, num_workers=2)
            load, cpu = os.getloadavg()[0], cpu_seconds()
            iterator = iter(loader)
            next(iterator)  # workers started; wall time counts from here
            wall, seen = time.perf_counter(), 0
            for images, _ in iterator:
                seen += len(images)
            wall = time.perf_counter() - wall
            del iterator  # workers joined, so their CPU time is counted
            cpu = cpu_seconds() - cpu
            record(f"cache_read_{resolution}", seen, wall, cpu * seen / n, load, resolution=resolution,
                   batch=64, augment=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def bench_gan(args: argparse.Namespace) -> None:
    """StyleGAN2-ADA training step (G main, lazy path length, D main, lazy R1, EMA, ADA at p = 0.2).

    smoke: the small G/D at 32 and 64 px, batch 16; paper: paper256 at 256 px, batch 16 per device.
    Steps are timed back to back from step 0 (mean, not median), so the lazy regularisation steps
    (every 4th and 16th) count at their real rate; kimg_per_hour follows from it.
    """
    from viscoin_core.config import parse_config
    from viscoin_core.train import gan
    from viscoin_core.runs import pick_device

    device = pick_device(args.device)
    cases = [("small", 32, 16), ("small", 64, 16)] if args.size == "smoke" else [("paper256", 256, 16)]
    for arch, resolution, batch in cases:
        config = parse_config(gan.GanConfig, dict(data="unused", start="scratch", kimg=1, arch=arch, batch=batch,
                                                  fid_images=0, augment_p=0.2, device=str(device)))
        G, D, G_ema = gan.start_networks(config, resolution)
        G, D, G_ema = G.to(device), D.to(device), G_ema.to(device).eval().requires_grad_(False)
        G_opt, D_opt = gan.make_optimizers(G, D, config)
        state = gan.GanState(G, D, G_ema, G_opt, D_opt, gan.make_ada(config), torch.zeros((), device=device))
        data = torch.rand(64, 3, resolution, resolution) * 2 - 1
        reals_of = lambda idx, mirror: data[idx]

        def step():
            draws = gan.draw_step(config, state.step, len(data), G.z_dim, G.num_ws, 3, resolution, state.p)
            gan.train_step(state, config, reals_of, draws, device)

        step()                                     # warm-up (also runs both regularisers)
        state.step = 0
        steps = max(args.steps, 1)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        for _ in range(steps):
            step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = (time.perf_counter() - start) / steps
        emit({"name": "gan", "size": args.size, "arch": arch, "resolution": resolution, "device": str(device),
              "threads": torch.get_num_threads(), "batch": batch, "steps": steps,
              "seconds_per_step": round(seconds, 4), "kimg_per_hour": round(batch / seconds * 3.6, 2),
              "n_params_G": sum(p.numel() for p in G.parameters()),
              "n_params_D": sum(p.numel() for p in D.parameters()), "peak_mem_mb": round(peak_mem_mb(device), 1)})


def bench_classifier(args: argparse.Namespace) -> None:
    """Classifier f training step (forward, cross entropy, backward, Adam): smoke resnet18 at 32 and 64 px,
    batch 32; paper resnet50 at 256 px, batch 32 (the study's setting)."""
    import torch.nn.functional as F

    from viscoin_core.nets.classifier import build_classifier
    from viscoin_core.runs import pick_device

    device = pick_device(args.device)
    cases = [("resnet18", 32, 32), ("resnet18", 64, 32)] if args.size == "smoke" else [("resnet50", 256, 32)]
    for arch, resolution, batch in cases:
        f = build_classifier(arch, n_classes=200, pretrained=False).to(device)
        opt = torch.optim.Adam(f.parameters(), lr=1e-4)
        x = torch.rand(batch, 3, resolution, resolution, device=device) * 2 - 1
        y = torch.randint(0, 200, (batch,), device=device)

        def step():
            loss = F.cross_entropy(f(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        seconds = time_steps(step, max(args.steps, 1), device)
        emit({"name": "classifier", "size": args.size, "arch": arch, "resolution": resolution, "device": str(device),
              "batch": batch, "steps": args.steps, "seconds_per_step": round(seconds, 4),
              "images_per_second": round(batch / seconds, 1), "peak_mem_mb": round(peak_mem_mb(device), 1)})


class PartTimer:
    """Exclusive wall-clock seconds per named part of a step: a part's time excludes the parts timed
    inside it, so the parts add up to the timed whole. On CUDA each boundary synchronises the device
    (the parts then cost what they would alone; the step's own time is measured without this)."""

    def __init__(self, device: torch.device):
        self.device, self.seconds, self._stack = device, {}, []

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def enter(self, name: str) -> None:
        self._sync()
        self._stack.append([name, time.perf_counter(), 0.0])   # name, start, seconds of inner parts

    def exit(self) -> None:
        self._sync()
        name, start, inner = self._stack.pop()
        elapsed = time.perf_counter() - start
        self.seconds[name] = self.seconds.get(name, 0.0) + elapsed - inner
        if self._stack:
            self._stack[-1][2] += elapsed

    def section(self, name: str):
        import contextlib

        @contextlib.contextmanager
        def timed():
            self.enter(name)
            try:
                yield
            finally:
                self.exit()
        return timed()

    def wrap(self, name: str, fn: Callable) -> Callable:
        def timed(*args, **kwargs):
            with self.section(name):
                return fn(*args, **kwargs)
        return timed

    def hook(self, name: str, module: torch.nn.Module) -> list:
        """Time `module`'s forward as `name`; returns the hook handles (remove them when done)."""
        return [module.register_forward_pre_hook(lambda *_: self.enter(name)),
                module.register_forward_hook(lambda *_: self.exit())]


# the parts of a VisCoIN step, in the order they run (the names of the breakdown table)
VISCOIN_PARTS = ("synthetic samples (G, no grad)", "f forward (taps, no grad)", "Psi", "Theta", "Omega",
                 "G synthesis (reconstructions)", "f on reconstructions", "LPIPS", "loss terms and glue",
                 "backward", "optimiser", "finite checks")


def profile_viscoin_step(trainer, x_real: torch.Tensor, z: torch.Tensor, mix, iteration: int) -> dict[str, float]:
    """Seconds per part (VISCOIN_PARTS) of one training step, run as `Trainer.step` runs it.

    The trainer's own callables (`run_taps`, `run_psi`, ...) are wrapped for the forward pass only,
    so the same code runs; the backward pass is one part (autograd runs it as one graph).
    """
    from viscoin_core.train import loop
    from viscoin_core.train.viscoin import learning_rate

    timer = PartTimer(trainer.device)
    for group in trainer.optimizer.param_groups:
        group["lr"] = learning_rate(trainer.cfg, iteration)
    x = x_real.to(trainer.device)
    with timer.section("synthetic samples (G, no grad)"):
        ws_fake = trainer.synthetic_ws(z, mix)
        x = torch.cat([x, trainer.synthesize_fake(ws_fake)])
    ws_target = ws_fake if trainer.cfg.latent_regression_weight > 0 else None
    wrapped = {"run_taps": "f forward (taps, no grad)", "run_psi": "Psi", "run_synthesis": "G synthesis (reconstructions)",
               "run_f": "f on reconstructions", "run_lpips": "LPIPS"}
    saved = {attr: getattr(trainer, attr) for attr in wrapped}
    handles = timer.hook("Theta", trainer.theta) + timer.hook("Omega", trainer.omega)
    try:
        for attr, name in wrapped.items():
            setattr(trainer, attr, timer.wrap(name, saved[attr]))
        with timer.section("loss terms and glue"):
            total, terms, _ = trainer.loss(x, iteration, ws_target)
    finally:
        for attr, fn in saved.items():
            setattr(trainer, attr, fn)
        for handle in handles:
            handle.remove()
    with timer.section("finite checks"):
        named = {**terms, "total": total}
        loop.check_finite(dict(zip(named, torch.stack([v.detach().float() for v in named.values()]).tolist())),
                          iteration)
    with timer.section("backward"):
        trainer.optimizer.zero_grad(set_to_none=True)
        total.backward()
    with timer.section("optimiser"):
        trainer.optimizer.step()
    with timer.section("finite checks"):
        loop.check_finite_parameters(((f"{k}.{n}", p) for k, m in trainer.parts.items()
                                      for n, p in m.named_parameters()), iteration)
    return timer.seconds


def breakdown_table(parts: dict[str, float], step_seconds: float) -> str:
    """A readable table of median seconds per part, their share of the parts' sum, and the timed step."""
    total = sum(parts.values())
    width = max(len(k) for k in parts)
    lines = [f"{'part':<{width}}  {'ms':>8}  {'share':>6}"]
    lines += [f"{name:<{width}}  {1000 * sec:8.1f}  {100 * sec / total:5.1f}%" for name, sec in parts.items()]
    lines.append(f"{'sum of parts':<{width}}  {1000 * total:8.1f}")
    lines.append(f"{'timed step (median)':<{width}}  {1000 * step_seconds:8.1f}")
    return "\n".join(lines)


def _profile_viscoin_setup(size: str, base: dict) -> tuple:
    """(config, G, resolution, n_classes) of the demo or mini profile's Table 3 CUB row with random
    weights: params/<size>/viscoin_cub.yaml, with f the ResNet of params/<size>/classifier_cub.yaml
    and G the scratch generator of params/<size>/gan_cub.yaml (the runs that row reads its f and G from)."""
    from viscoin_core import streams
    from viscoin_core.config import load_config, parse_config, read_params, resolve_path
    from viscoin_core.data import synthetic
    from viscoin_core.model import ViscoinConfig, random_generator
    from viscoin_core.train import gan

    row = resolve_path(f"params/{size}/viscoin_cub.yaml")
    params = read_params(row)
    data = read_params(resolve_path(params["data"]))
    if data["dataset"] != "toybirds":
        raise ValueError(f"{row}: bench expects the toybirds stand-in, got {data['dataset']!r}")
    params.update(base, f_arch=read_params(resolve_path(f"params/{size}/classifier_cub.yaml"))["arch"], data="")
    cfg = parse_config(ViscoinConfig, params, source=str(row))
    G_scratch, _ = gan.scratch_networks(load_config(gan.GanConfig, resolve_path(f"params/{size}/gan_cub.yaml")),
                                        data["resolution"])
    G = random_generator(G_scratch.init_kwargs, streams.stream_seed(cfg.seed, "viscoin.init_G"))
    return cfg, G, data["resolution"], len(synthetic.TOYBIRD_CLASSES)


def _fixed_viscoin_setup(paper: bool, base: dict) -> tuple:
    """(config, G, resolution, n_classes) of the smoke or paper size (sizes written out here)."""
    from viscoin_core import streams
    from viscoin_core.config import parse_config
    from viscoin_core.model import ViscoinConfig, _random_generator_kwargs, random_generator
    from viscoin_core.nets.stylegan2 import paper256_kwargs

    resolution, n_classes = (256, 200) if paper else (32, 12)
    cfg = parse_config(ViscoinConfig, dict(
        base, f_arch="resnet50" if paper else "resnet18",
        n_concepts=256 if paper else 16, latent_channels=512 if paper else 32,
        coarse_layer=3 if paper else 2, mid_layer=12 if paper else 5, batch_real=8 if paper else 4,
        batch_fake=8 if paper else 4))
    G = random_generator(paper256_kwargs()[0] if paper else _random_generator_kwargs(cfg, resolution),
                         streams.stream_seed(cfg.seed, "viscoin.init_G"))
    return cfg, G, resolution, n_classes


def bench_viscoin(args) -> None:
    """One full training step: f on 2B images, Psi, Theta, Omega, G.synthesis, f on reconstructions,
    every loss term, backward, Adam. smoke: 32 px, resnet18, small G, K = 16, B = 4 + 4. demo, mini:
    what params/<size>/viscoin_cub.yaml trains (32 px, the f architecture and the small G of that
    profile's Tables 1-2 rows, K = 256, latent_channels 64, B = 8 + 8, LPIPS with a random trunk).
    paper: ResNet-50 at 256 px, StyleGAN2 paper256, K = 256, B = 8 + 8, LPIPS-VGG. Random weights
    throughout (LPIPS-VGG with a random trunk: the same network and cost, no download).

    Besides the timed step, `--steps` more steps are run part by part (`profile_viscoin_step`):
    the record's `parts_ms` holds the median milliseconds of each part, and a table goes to stderr.
    """
    import os

    from viscoin_core.eval.metrics import build_lpips
    from viscoin_core.model import build_f, build_parts
    from viscoin_core.runs import pick_device
    from viscoin_core.train.viscoin import Trainer, synthetic_mix, synthetic_z

    device = pick_device(args.device)
    base = dict(f="random", G="random", cache_dir="unused", device=str(device),
                compile=bool(getattr(args, "compile", False)))
    if getattr(args, "amp", None) is not None:    # else the profile's setting (demo, mini) or 'auto'
        base["amp"] = args.amp
    if args.size in ("demo", "mini"):
        cfg, G, resolution, n_classes = _profile_viscoin_setup(args.size, base)
    else:
        cfg, G, resolution, n_classes = _fixed_viscoin_setup(args.size == "paper", base)
    f = build_f(cfg, n_classes)
    # the paper's LPIPS-VGG and a random trunk cost the same; the CPU profiles' 'random' is also what they train
    trainer = Trainer(cfg, f, G, build_parts(cfg, f, G, n_classes), build_lpips("random"), device)
    x_real = torch.rand(cfg.batch_real, 3, resolution, resolution) * 2 - 1
    it = iter(range(10**9))
    cpu_times = []

    def step():
        i = next(it)
        start = time.process_time()
        trainer.step(x_real, synthetic_z(cfg, i, G.z_dim), i, synthetic_mix(cfg, i, G.z_dim, G.num_ws))
        cpu_times.append(time.process_time() - start)

    steps = max(args.steps, 1)
    load_before = os.getloadavg()[0]
    seconds = time_steps(step, steps, device, warmup=1)
    profiles = []
    for _ in range(steps):
        i = next(it)
        profiles.append(profile_viscoin_step(trainer, x_real, synthetic_z(cfg, i, G.z_dim),
                                             synthetic_mix(cfg, i, G.z_dim, G.num_ws), i))
    parts = {name: statistics.median(p.get(name, 0.0) for p in profiles) for name in VISCOIN_PARTS}
    record = {"name": "viscoin", "size": args.size, "device": str(device), "batch": cfg.batch_real + cfg.batch_fake,
              "resolution": resolution, "f_arch": cfg.f_arch, "n_concepts": cfg.n_concepts,
              "latent_channels": cfg.latent_channels, "seconds_per_step": round(seconds, 4), "steps": steps,
              "parts_ms": {k: round(1000 * v, 2) for k, v in parts.items()},
              "peak_mem_mb": round(peak_mem_mb(device), 1), "torch_threads": torch.get_num_threads(),
              "amp": "bf16" if trainer.amp else "fp32", "compile": cfg.compile}
    if device.type == "cuda":
        record["gpu"] = torch.cuda.get_device_name(device)
    else:
        # On a shared machine wall time depends on the other processes; the process's CPU time
        # per step (all threads) does much less, and bounds the idle-machine time from below
        # as cpu_seconds / threads.
        record["cpu_seconds_per_step"] = round(statistics.median(cpu_times[1:] or cpu_times), 3)
        record["load_average_1min"] = [round(load_before, 2), round(os.getloadavg()[0], 2)]
    print(breakdown_table(parts, seconds), file=sys.stderr, flush=True)
    emit(record)


def bench_generator(args) -> None:
    """Forward + backward through a frozen G.synthesis to ws, as VisCoIN trains Omega through G.

    smoke: the small 32 px G, batch 8; paper: StyleGAN2 paper256 (256 px, 14 ws), batch 8.
    Random weights, noise_mode 'const', loss = mean squared image; median over `--steps`.
    """
    import os

    from viscoin_core.nets.stylegan2 import Generator, paper256_kwargs, small_generator_kwargs
    from viscoin_core.runs import pick_device

    device = pick_device(args.device)
    paper = args.size == "paper"
    batch = 8
    torch.manual_seed(0)
    kwargs = paper256_kwargs()[0] if paper else small_generator_kwargs(resolution=32)
    G = Generator(**kwargs).to(device).eval().requires_grad_(False)
    with torch.no_grad():
        ws = G.mapping(torch.randn(batch, G.z_dim, device=device), None)
    ws.requires_grad_(True)

    def step():
        ws.grad = None
        G.synthesis(ws, noise_mode="const").square().mean().backward()

    steps = max(args.steps, 1)
    seconds = time_steps(step, steps, device, warmup=1)
    record = {"name": "generator", "size": args.size, "device": str(device), "batch": batch,
              "resolution": G.img_resolution, "num_ws": G.num_ws, "seconds_per_step": round(seconds, 3),
              "steps": steps, "peak_mem_mb": round(peak_mem_mb(device), 1), "torch_threads": torch.get_num_threads(),
              "n_params": sum(p.numel() for p in G.parameters())}
    if device.type == "cuda":
        record["gpu"] = torch.cuda.get_device_name(device)
    else:
        record["load_average_1min"] = round(os.getloadavg()[0], 2)
    emit(record)


def bench_eval(args) -> None:
    """Evaluation costs per test image on random networks: faithfulness (one reconstruction, then two
    per tau, each classified by g: 7 generations and 7 passes of f and Psi for tau 0.1/0.2/0.4) and
    FID features of an image and its reconstruction (f.penultimate). smoke: 32 px, resnet18, small G,
    K = 16, batch 16; paper: ResNet-50 at 256 px, StyleGAN2 paper256, K = 256, batch 16."""
    import os

    from viscoin_core import streams
    from viscoin_core.config import parse_config
    from viscoin_core.eval.concepts import System, faithfulness_batch
    from viscoin_core.eval.metrics import classifier_extractor
    from viscoin_core.nets.stylegan2 import paper256_kwargs
    from viscoin_core.nets.viscoin import reconstruct
    from viscoin_core.model import ViscoinConfig, _random_generator_kwargs, build_f, build_parts, random_generator
    from viscoin_core.runs import pick_device

    device = pick_device(args.device)
    paper = args.size == "paper"
    resolution, n_classes, batch = (256, 200, 16) if paper else (32, 12, 16)
    cfg = parse_config(ViscoinConfig, dict(
        f="random", G="random", cache_dir="unused", device=str(device), f_arch="resnet50" if paper else "resnet18",
        n_concepts=256 if paper else 16, latent_channels=512 if paper else 32,
        coarse_layer=3 if paper else 2, mid_layer=12 if paper else 5))
    f = build_f(cfg, n_classes).to(device)
    G = random_generator(paper256_kwargs()[0] if paper else _random_generator_kwargs(cfg, resolution),
                         streams.stream_seed(cfg.seed, "viscoin.init_G")).to(device)
    parts = {k: m.to(device).eval() for k, m in build_parts(cfg, f, G, n_classes).items()}
    system = System(f=f, psi=parts["psi"], theta=parts["theta"],
                    decode=lambda phi, phi_prime: reconstruct(G, parts["omega"], phi, phi_prime))
    x = torch.rand(batch, 3, resolution, resolution, device=device) * 2 - 1
    phi, phi_prime = system.concepts(x)
    features = classifier_extractor(f, device)
    steps = max(args.steps, 1)
    load_before = os.getloadavg()[0]
    faith = time_steps(lambda: faithfulness_batch(system, phi, phi_prime), steps, device)
    fid = time_steps(lambda: (features(x), features(system.reconstruct(phi, phi_prime))), steps, device)
    record = {"name": "eval", "size": args.size, "device": str(device), "batch": batch, "resolution": resolution,
              "f_arch": cfg.f_arch, "n_concepts": cfg.n_concepts, "steps": steps,
              "faithfulness_seconds_per_image": round(faith / batch, 4),
              "reconstruction_and_fid_features_seconds_per_image": round(fid / batch, 4),
              "peak_mem_mb": round(peak_mem_mb(device), 1), "torch_threads": torch.get_num_threads()}
    if device.type == "cuda":
        record["gpu"] = torch.cuda.get_device_name(device)
    else:
        record["load_average_1min"] = [round(load_before, 2), round(os.getloadavg()[0], 2)]
    emit(record)


# name -> "module:function"; each function takes the parsed argparse namespace and emits JSON lines.
BENCHMARKS: dict[str, str] = {
    "data": "viscoin_core.bench:bench_data",
    "gan": "viscoin_core.bench:bench_gan",
    "classifier": "viscoin_core.bench:bench_classifier",
    "viscoin": "viscoin_core.bench:bench_viscoin",
    "generator": "viscoin_core.bench:bench_generator",
    "eval": "viscoin_core.bench:bench_eval",
}
# the sizes each benchmark knows (the others read any size but 'paper' as smoke)
SIZES: dict[str, tuple[str, ...]] = {name: ("smoke", "paper") for name in BENCHMARKS}
SIZES["viscoin"] = ("smoke", "demo", "mini", "paper")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m viscoin_core.bench", description=__doc__)
    parser.add_argument("name", choices=sorted(BENCHMARKS), help="which benchmark to run")
    parser.add_argument("--size", default="smoke", choices=sorted({s for sizes in SIZES.values() for s in sizes}),
                        help="smoke and paper for every benchmark; viscoin also demo and mini")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--amp", default=None, choices=["auto", "off", "bf16"],
                        help="viscoin: autocast (auto: bf16 on CUDA, float32 on CPU; bf16: also on CPU); "
                             "default: the profile's `amp` for demo and mini, else auto")
    parser.add_argument("--allocator", default="keep", choices=["keep", "default"],
                        help="CPU: 'keep' freed memory for reuse, as training does (see loop.keep_freed_memory)")
    args = parser.parse_args(argv)
    if args.size not in SIZES[args.name]:
        parser.error(f"--size {args.size}: benchmark {args.name!r} has sizes {list(SIZES[args.name])}")
    from viscoin_core.runs import pick_device
    from viscoin_core.train.loop import keep_freed_memory
    if pick_device(args.device).type == "cpu" and args.allocator == "keep":
        keep_freed_memory()
    module_name, func_name = BENCHMARKS[args.name].split(":")
    module = __import__(module_name, fromlist=[func_name])
    getattr(module, func_name)(args)


if __name__ == "__main__":
    from viscoin_core.cli import run
    sys.exit(run(main))
