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


def bench_viscoin(args) -> None:
    """One full training step: f on 2B images, Psi, Theta, Omega, G.synthesis, f on reconstructions,
    every loss term, backward, Adam. smoke: 32 px, resnet18, small G, K = 16, B = 4 + 4. paper:
    ResNet-50 at 256 px, StyleGAN2 paper256, K = 256, B = 8 + 8, LPIPS-VGG. Random weights
    throughout (LPIPS-VGG with a random trunk: the same network and cost, no download)."""
    import os

    from viscoin_core import streams
    from viscoin_core.config import parse_config
    from viscoin_core.eval.metrics import build_lpips
    from viscoin_core.nets.stylegan2 import paper256_kwargs
    from viscoin_core.model import ViscoinConfig, _random_generator_kwargs, build_f, build_parts, random_generator
    from viscoin_core.runs import pick_device
    from viscoin_core.train.viscoin import Trainer, synthetic_z

    device = pick_device(args.device)
    paper = args.size == "paper"
    resolution, n_classes = (256, 200) if paper else (32, 12)
    cfg = parse_config(ViscoinConfig, dict(
        f="random", G="random", cache_dir="unused", device=str(device), f_arch="resnet50" if paper else "resnet18",
        n_concepts=256 if paper else 16, latent_channels=512 if paper else 32,
        coarse_layer=3 if paper else 2, mid_layer=12 if paper else 5, batch_real=8 if paper else 4,
        batch_fake=8 if paper else 4, compile=bool(getattr(args, "compile", False)),
        amp=getattr(args, "amp", "auto")))
    f = build_f(cfg, n_classes)
    G = random_generator(paper256_kwargs()[0] if paper else _random_generator_kwargs(cfg, resolution),
                         streams.stream_seed(cfg.seed, "viscoin.init_G"))
    trainer = Trainer(cfg, f, G, build_parts(cfg, f, G, n_classes), build_lpips("random"), device)
    x_real = torch.rand(cfg.batch_real, 3, resolution, resolution) * 2 - 1
    it = iter(range(10**9))
    cpu_times = []

    def step():
        i = next(it)
        start = time.process_time()
        trainer.step(x_real, synthetic_z(cfg, i, G.z_dim), i)
        cpu_times.append(time.process_time() - start)

    load_before = os.getloadavg()[0]
    seconds = time_steps(step, max(args.steps, 1), device, warmup=1)
    record = {"name": "viscoin", "size": args.size, "device": str(device), "batch": cfg.batch_real + cfg.batch_fake,
              "resolution": resolution, "f_arch": cfg.f_arch, "n_concepts": cfg.n_concepts,
              "seconds_per_step": round(seconds, 3), "steps": max(args.steps, 1),
              "peak_mem_mb": round(peak_mem_mb(device), 1), "torch_threads": torch.get_num_threads(),
              "amp": "bf16" if trainer.amp else "fp32", "compile": cfg.compile}
    if device.type == "cuda":
        record["gpu"] = torch.cuda.get_device_name(device)
    else:
        # On a shared machine wall time depends on the other processes; the process's CPU time
        # per step (all threads) does much less, and bounds the idle-machine time from below
        # as cpu_seconds / threads.
        record["cpu_seconds_per_step"] = round(statistics.median(cpu_times[1:]), 3)
        record["load_average_1min"] = [round(load_before, 2), round(os.getloadavg()[0], 2)]
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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m viscoin_core.bench", description=__doc__)
    parser.add_argument("name", choices=sorted(BENCHMARKS), help="which benchmark to run")
    parser.add_argument("--size", default="smoke", choices=["smoke", "paper"])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--amp", default="auto", choices=["auto", "off", "bf16"],
                        help="viscoin: autocast (auto: bf16 on CUDA, float32 on CPU; bf16: also on CPU)")
    parser.add_argument("--allocator", default="keep", choices=["keep", "default"],
                        help="CPU: 'keep' freed memory for reuse, as training does (see loop.keep_freed_memory)")
    args = parser.parse_args(argv)
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
