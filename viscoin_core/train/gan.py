"""Fine-tuning the generator G with StyleGAN2-ADA (Table 2).

The training follows StyleGAN2-ADA (Karras et al. 2020) step for step:
- non-saturating logistic loss for G, logistic loss for D;
- lazy R1 on reals (gamma, every `r1_interval` steps, loss scaled by the interval) and lazy
  path-length regularisation of G (weight 2, every `pl_interval` steps on half the batch, decay 0.01),
  with Adam's lr and betas rescaled by interval / (interval + 1) as in the original;
- style mixing (probability 0.9, one crossover layer per image);
- G_ema, an exponential moving average of G with half-life `ema_kimg` (ramped up over the first
  images when `ema_rampup` is set);
- adaptive discriminator augmentation (`train.augment`) on everything D sees;
- length in kimg (thousands of real images shown to D).

Every random draw of a step (real indices, dataset x-flips, latents, style-mixing crossovers,
augmentations, path-length noise) comes from generators seeded by (seed, step, purpose) and is drawn
for the whole global batch; a data-parallel rank takes its slice. Hence a resumed run repeats an
uninterrupted one exactly, and N processes equal one process on the same global batch. Batches
larger than `batch_gpu` are processed in rounds with gradients accumulated (the official loop's
`batch_gpu`). Gradients are averaged across processes with an all-reduce after each phase
(`torchrun --nproc_per_node=N -m viscoin_core.train.gan ...`; gloo on CPU, NCCL on GPU).

Deviations from the original, all small: the running path-length mean and G's w_avg are updated
once per phase from the whole global batch (the original: per GPU and per round), and the
path-length penalty uses the mean from before the phase (the original folds the current batch in
first; decay 0.01); the style-mixing crossover is drawn per image (the original: one per GPU batch);
gradients are averaged over rounds (the original sums them, which Adam nearly ignores); geometric
augmentation resamples bilinearly (see `train.augment`); FID/KID compare min(fid_images, N_train)
generated images with as many training images (the original's fid50k_full: 50k against all).

Run directory: config.json, log.jsonl (one record per logged step and per snapshot), checkpoint.pt
(latest snapshot: G, D, G_ema, optimisers, ADA state), samples_kimgXXXX.png grids, reals.png,
and at the end G.pt (G_ema, `nets.stylegan2.save_generator`), D.pt and metrics.json (`fid`,
`kid`, `kid_std`, `precision`, `recall`, `fid_features`, `kimg`, the same at kimg 0 as `fid_start`,
`kid_start`, ...).

    python -m viscoin_core.train.gan --params params/smoke/gan.yaml --run-dir runs/smoke/g/toytissue
"""

from __future__ import annotations

import copy
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as dist
import torch.nn.functional as F
from tqdm import tqdm   # text bars: a widget bar shows "model not found" once its page is reloaded

from viscoin_core.config import ConfigError, param, resolve_path
from viscoin_core.nets import network_pkl, stylegan2
from viscoin_core import streams
from viscoin_core.runs import (append_jsonl, finished, load_checkpoint, load_torch, pick_device, prepare_run_dir, read_jsonl,
                               rebuild_hint, save_atomic, truncate_log, write_metrics)
from viscoin_core.train import augment as ada
from viscoin_core.train import loop
from viscoin_core.train.loop import NonFiniteLoss, check_finite, check_finite_parameters, seed_everything

AUGMENT_MODES = ("ada", "fixed", "none")
ARCHS = ("small", "paper256")


@dataclass
class GanConfig:
    """Parameters of one G fine-tuning run (Table 2). Paths are relative to the repo root."""
    data: str = param(help="data-stage parameter file (params/<profile>/data_*.yaml)")
    start: str = param(help="'scratch', an official network pickle (.pkl, e.g. "
                            "weights/stylegan2-ada/ffhq-res256-mirror-paper256-noaug.pkl) or a native G.pt / "
                            "run directory of this stage")
    kimg: float = param(low=0, low_open=True, help="training length, thousands of real images shown to D")
    arch: str = param("paper256", choices=ARCHS, help="architecture when starting from scratch (else the checkpoint's)")
    w_dim: int = param(64, low=8, help="small arch: z and w dimension")
    channel_base: int = param(1024, low=16, help="small arch: channels = min(channel_base / resolution, channel_max)")
    channel_max: int = param(64, low=8, help="small arch")
    mapping_layers: int = param(2, low=1, high=8, help="small arch")
    batch: int = param(64, low=1, help="global batch (all processes together); paper256: 64")
    batch_gpu: int = param(0, low=0, help="images per process per round; 0 = batch / processes")
    mbstd_group: int = param(4, low=1, help="small arch: minibatch-stddev group size")
    g_lr: float = param(0.0025, low=0, low_open=True)
    d_lr: float = param(0.0025, low=0, low_open=True)
    beta1: float = param(0.0, low=0, high=0.999)
    beta2: float = param(0.99, low=0, high=0.9999)
    r1_gamma: float = param(1.0, low=0)
    r1_interval: int = param(16, low=1)
    pl_weight: float = param(2.0, low=0)
    pl_interval: int = param(4, low=1)
    pl_decay: float = param(0.01, low=0, high=1)
    pl_batch_shrink: int = param(2, low=1)
    style_mixing: float = param(0.9, low=0, high=1)
    ema_kimg: float = param(20.0, low=0, help="half-life of G_ema, kimg (paper256: 20)")
    ema_rampup: float | None = param(None, low=0, help="EMA half-life <= rampup * images so far; null = off "
                                                             "(the original turns it off when fine-tuning)")
    augment: str = param("ada", choices=AUGMENT_MODES)
    augment_p: float = param(0.0, low=0, high=1, help="initial p (ada) or fixed p")
    augpipe: str = param("bgc", choices=tuple(ada.PIPELINES))
    ada_target: float = param(0.6, help="target of E[sign(D(real))], in (0, 1)")
    ada_interval: int = param(4, low=1)
    ada_kimg: float = param(100.0, low=0, low_open=True, help="kimg for p to move by 1 (official: 100 when fine-tuning, 500 from scratch)")
    mirror: bool = param(False, help="x-flip dataset images at random (the original's --mirror)")
    noise_mode: str = param("random", choices=("random", "const"), help="G's per-layer noise while training")
    snapshot_kimg: float = param(100.0, low=0, low_open=True, help="checkpoint, sample grid and FID/KID every this many kimg")
    log_every: int = param(100, low=1, help="steps between log records")
    fid_images: int = param(50000, low=0, help="images per set for FID/KID at snapshots (capped at the training split's size); 0 = none")
    fid_features: str = param("inception", choices=("inception", "inception_random", "classifier"),
                              help="inception: the standard FID; inception_random: its architecture with random "
                                   "weights (no download, not comparable); classifier: f's penultimate features")
    fid_classifier: str | None = param(None, help="f.pt, f run directory or classifier parameter file (its seed-0 "
                                                  "run is trained when missing); needed for fid_features=classifier")
    grid_size: int = param(8, low=1, high=32, help="sample grids are grid_size x grid_size")
    seed: int = param(0, low=0)
    device: str = param("auto")

    def __post_init__(self):
        if not 0 < self.ada_target < 1:
            raise ConfigError(f"parameter 'ada_target' = {self.ada_target!r} is not allowed; expected a value in (0, 1)")
        if self.fid_images > 0 and self.fid_features == "classifier" and not self.fid_classifier:
            raise ConfigError("parameter 'fid_classifier' is required when fid_features = 'classifier' and "
                              f"fid_images = {self.fid_images} > 0 (give an f.pt or f run directory, or set fid_images: 0)")
        if self.batch_gpu and self.batch % self.batch_gpu:
            raise ConfigError(f"parameter 'batch_gpu' = {self.batch_gpu} must divide 'batch' = {self.batch}")


# ---------------------------------------------------------------------------------------------
# Loss terms and updates, one small function each.

def g_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """Non-saturating logistic loss of G, per image: softplus(-D(G(z)))."""
    return F.softplus(-fake_logits)


def d_loss(real_logits: torch.Tensor | None, fake_logits: torch.Tensor | None) -> torch.Tensor:
    """Logistic loss of D, per image: softplus(D(G(z))) + softplus(-D(x))."""
    terms = []
    if fake_logits is not None:
        terms.append(F.softplus(fake_logits))
    if real_logits is not None:
        terms.append(F.softplus(-real_logits))
    return sum(terms)


def r1_penalty(real_images: torch.Tensor, real_logits: torch.Tensor) -> torch.Tensor:
    """||d D(x) / d x||^2 per image (B,), with a graph for backpropagation into D."""
    grads, = torch.autograd.grad(real_logits.sum(), real_images, create_graph=True)
    return grads.square().sum(dim=[1, 2, 3])


def path_lengths(images: torch.Tensor, ws: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """|J_w^T y| per image (B,): y = noise / sqrt(H W), averaged over the num_ws copies of w."""
    h, w = images.shape[2], images.shape[3]
    grads, = torch.autograd.grad((images * noise / math.sqrt(h * w)).sum(), ws, create_graph=True)
    return grads.square().sum(dim=2).mean(dim=1).sqrt()


def ema_beta(batch: int, nimg: int, ema_kimg: float, ema_rampup: float | None) -> float:
    """Per-step decay of G_ema: 0.5 ** (batch / half_life), half_life = ema_kimg * 1000 images,
    capped at ema_rampup * nimg when ramping up."""
    half_life = ema_kimg * 1000
    if ema_rampup is not None:
        half_life = min(half_life, nimg * ema_rampup)
    return 0.5 ** (batch / max(half_life, 1e-8))


@torch.no_grad()
def update_ema(G_ema: torch.nn.Module, G: torch.nn.Module, beta: float) -> None:
    """G_ema <- beta * G_ema + (1 - beta) * G for parameters; buffers (w_avg, noise) are copied."""
    for p_ema, p in zip(G_ema.parameters(), G.parameters()):
        p_ema.copy_(p.detach().lerp(p_ema, beta))
    for b_ema, b in zip(G_ema.buffers(), G.buffers()):
        b_ema.copy_(b)


# ---------------------------------------------------------------------------------------------
# Randomness: one generator per (seed, step, purpose) (`streams`, gan.<purpose>), draws for the whole global batch.

def batch_indices(step: int, batch: int, n: int, seed: int) -> torch.Tensor:
    """Indices of step's global batch: epochs of fresh permutations (seeded by epoch), read in order."""
    positions = torch.arange(step * batch, (step + 1) * batch)
    epochs = positions // n
    out = torch.empty(batch, dtype=torch.long)
    for epoch in epochs.unique().tolist():
        perm = torch.randperm(n, generator=streams.generator(seed, "gan.reals", epoch))
        mask = epochs == epoch
        out[mask] = perm[positions[mask] % n]
    return out


@dataclass
class StepDraws:
    """Everything random about one global batch (CPU tensors, first dim = global batch)."""
    reals: torch.Tensor          # (B,) dataset indices
    mirror: torch.Tensor         # (B,) bool
    z: dict                      # phase -> (B, z_dim)
    mix_z: dict                  # phase -> (B, z_dim)
    cutoff: dict                 # phase -> (B,) first mixed layer (num_ws = no mixing)
    aug: dict                    # 'gmain'/'dgen'/'dreal'/'dreg' -> AugmentDraw
    pl_noise: torch.Tensor       # (B, C, H, W)


def draw_step(config: GanConfig, step: int, n_data: int, z_dim: int, num_ws: int, channels: int,
              resolution: int, p: float) -> StepDraws:
    b, seed = config.batch, config.seed
    g = streams.generator(seed, "gan.mirror", step)
    mirror = (torch.rand(b, generator=g) < 0.5) & config.mirror
    z, mix_z, cutoff = {}, {}, {}
    gm = streams.generator(seed, "gan.mix", step)
    for phase in ("gmain", "greg", "dmain"):
        z[phase] = torch.randn(b, z_dim, generator=streams.generator(seed, f"gan.z_{phase}", step))
        mix_z[phase] = torch.randn(b, z_dim, generator=gm)
        cut = torch.randint(1, max(num_ws, 2), (b,), generator=gm)
        mixed = torch.rand(b, generator=gm) < config.style_mixing
        cutoff[phase] = torch.where(mixed, cut, torch.full_like(cut, num_ws))
    aug = {name: ada.sample_augment(b, p, resolution, resolution, streams.generator(seed, f"gan.aug_{name}", step),
                                    config.augpipe)
           for name in ("gmain", "dgen", "dreal", "dreg")}
    pl_noise = torch.randn(b, channels, resolution, resolution, generator=streams.generator(seed, "gan.pl_noise", step))
    return StepDraws(batch_indices(step, b, n_data, seed), mirror, z, mix_z, cutoff, aug, pl_noise)


# ---------------------------------------------------------------------------------------------
# Training state and one step.

@dataclass
class GanState:
    G: torch.nn.Module
    D: torch.nn.Module
    G_ema: torch.nn.Module
    G_opt: torch.optim.Optimizer
    D_opt: torch.optim.Optimizer
    ada: ada.AdaptiveP | None
    pl_mean: torch.Tensor
    step: int = 0
    nimg: int = 0

    @property
    def p(self) -> float:
        return self.ada.p if self.ada is not None else 0.0


def make_optimizers(G, D, config: GanConfig) -> tuple[torch.optim.Optimizer, torch.optim.Optimizer]:
    """Adam for G and D with the lazy-regularisation correction of lr and betas."""
    def adam(module, lr, interval, active):
        ratio = interval / (interval + 1) if active else 1.0
        return torch.optim.Adam(module.parameters(), lr=lr * ratio,
                                betas=(config.beta1 ** ratio, config.beta2 ** ratio), eps=1e-8)
    return (adam(G, config.g_lr, config.pl_interval, config.pl_weight > 0),
            adam(D, config.d_lr, config.r1_interval, config.r1_gamma > 0))


def make_ada(config: GanConfig) -> ada.AdaptiveP | None:
    if config.augment == "none":
        return None
    # 'fixed' keeps p: an interval that never comes.
    interval = config.ada_interval if config.augment == "ada" else 2**62
    return ada.AdaptiveP(target=config.ada_target, interval=interval, ada_kimg=config.ada_kimg, p=config.augment_p)


def world() -> tuple[int, int]:
    """(rank, world size) of torch.distributed, (0, 1) when not initialised."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    if world()[1] > 1:
        dist.all_reduce(t)
    return t


def sync_gradients(module: torch.nn.Module) -> None:
    """Sum gradients over processes (losses are pre-scaled so the sum is the global-batch mean)."""
    if world()[1] == 1:
        return
    # A parameter without a gradient (e.g. toRGB biases under the path-length penalty) has none on
    # every process (same graph everywhere); leave it None so Adam skips it, as in one process.
    params = [p for p in module.parameters() if p.grad is not None]
    if not params:
        return
    flat = torch.cat([p.grad.flatten() for p in params])
    dist.all_reduce(flat)
    offset = 0
    for p in params:
        p.grad = flat[offset:offset + p.numel()].view_as(p).clone()
        offset += p.numel()


def generate(G, z: torch.Tensor, mix_z: torch.Tensor | None, cutoff: torch.Tensor | None,
             noise_mode: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (B, C, H, W) and their ws (B, num_ws, w_dim); layers >= cutoff take mix_z's w (style mixing).
    w_avg is left alone (see `update_w_avg`)."""
    c = z.new_zeros(z.shape[0], G.c_dim)
    ws = G.mapping(z, c, skip_w_avg_update=True)
    if mix_z is not None:
        ws_mix = G.mapping(mix_z, c, skip_w_avg_update=True)
        layer = torch.arange(ws.shape[1], device=ws.device)
        ws = torch.where((layer[None, :] >= cutoff[:, None].to(ws.device))[:, :, None], ws_mix, ws)
    return G.synthesis(ws, noise_mode=noise_mode), ws


@torch.no_grad()
def update_w_avg(G, w_sum: torch.Tensor, count: int) -> None:
    """w_avg <- lerp(mean w of the phase over all processes, w_avg, w_avg_beta), as the mapping does per call."""
    beta = getattr(G.mapping, "w_avg_beta", None)
    if beta is None or count == 0:
        return
    total = all_reduce_sum(torch.cat([w_sum, w_sum.new_tensor([count])]))
    G.mapping.w_avg.copy_((total[:-1] / total[-1]).lerp(G.mapping.w_avg, beta))


def train_step(state: GanState, config: GanConfig, reals_of: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
               draws: StepDraws, device: torch.device, phases: tuple[str, ...] = ("gmain", "greg", "dmain", "dreg")) -> dict:
    """One StyleGAN2-ADA step over the global batch; returns the logged loss terms (means over it).

    `reals_of(indices, mirror)` returns the real images (b, C, H, W) in [-1, 1] for dataset indices.
    `phases` exists so tests can run one phase alone.
    """
    G, D, cfg = state.G, state.D, config
    rank, n_proc = world()
    local = cfg.batch // n_proc
    bg = cfg.batch_gpu or local
    if local * n_proc != cfg.batch or local % bg:
        raise ConfigError(f"batch {cfg.batch} does not split into {n_proc} processes x rounds of {bg}")
    rounds = [torch.arange(rank * local + k * bg, rank * local + (k + 1) * bg) for k in range(local // bg)]
    n_rounds = cfg.batch // bg                         # over all processes
    step = state.step
    torch.manual_seed(streams.stream_seed(cfg.seed, "gan.noise", step) + rank)  # G's per-layer noise
    logs: dict[str, float] = {}

    def add(name: str, value: torch.Tensor, weight: float) -> None:
        logs[name] = logs.get(name, 0.0) + float(value.detach()) * weight

    def fakes(phase: str, idx: torch.Tensor):
        return generate(G, draws.z[phase][idx].to(device), draws.mix_z[phase][idx].to(device),
                        draws.cutoff[phase][idx], cfg.noise_mode)

    def d_view(images: torch.Tensor, name: str, idx: torch.Tensor) -> torch.Tensor:
        if state.ada is not None and state.p > 0:
            images = ada.apply_augment(images, draws.aug[name].slice(int(idx[0]), int(idx[-1]) + 1))
        return D(images, None)

    def reals(idx: torch.Tensor) -> torch.Tensor:
        return reals_of(draws.reals[idx], draws.mirror[idx]).to(device)

    def begin(module, other, opt):
        module.requires_grad_(True)
        other.requires_grad_(False)
        opt.zero_grad(set_to_none=True)

    def finish(module, opt, name: str):
        check_finite({k: v for k, v in logs.items() if k.startswith(name)}, step, unit="step")
        sync_gradients(module)
        opt.step()

    w_dim = G.mapping.w_avg.shape[0] if hasattr(G.mapping, "w_avg") else 0
    if "gmain" in phases:
        begin(G, D, state.G_opt)
        w_sum, count = torch.zeros(w_dim, device=device), 0
        for idx in rounds:
            img, ws = fakes("gmain", idx)
            loss = g_loss(d_view(img, "gmain", idx)).mean()
            (loss / n_rounds).backward()
            add("G/loss", loss, 1 / n_rounds)
            w_sum, count = w_sum + ws[:, 0].detach().sum(0), count + len(idx)
        all_reduce_logs(logs, ["G/loss"])
        finish(G, state.G_opt, "G/")
        update_w_avg(G, w_sum, count)

    if "greg" in phases and cfg.pl_weight > 0 and step % cfg.pl_interval == 0:
        begin(G, D, state.G_opt)
        pl_mean = state.pl_mean.clone()
        length_sum = torch.zeros((), device=device)
        n_pl = 0
        for idx in rounds:
            idx = idx[:max(len(idx) // cfg.pl_batch_shrink, 1)]
            img, ws = generate(G, draws.z["greg"][idx].to(device), draws.mix_z["greg"][idx].to(device),
                               draws.cutoff["greg"][idx], cfg.noise_mode)
            lengths = path_lengths(img, ws, draws.pl_noise[idx].to(device))
            penalty = (lengths - pl_mean).square() * cfg.pl_weight
            (penalty.mean() * cfg.pl_interval / n_rounds).backward()
            add("G/pl_penalty", penalty.mean(), 1 / n_rounds)
            length_sum, n_pl = length_sum + lengths.detach().sum(), n_pl + len(idx)
        all_reduce_logs(logs, ["G/pl_penalty"])
        finish(G, state.G_opt, "G/")
        total = all_reduce_sum(torch.stack([length_sum, length_sum.new_tensor(float(n_pl))]))
        state.pl_mean.copy_(pl_mean.lerp(total[0] / total[1], cfg.pl_decay))
        logs["G/pl_mean"] = float(state.pl_mean)

    if "dmain" in phases:
        begin(D, G, state.D_opt)
        sign_sum = torch.zeros((), device=device)
        for idx in rounds:
            with torch.no_grad():
                img, _ = fakes("dmain", idx)
            fake_logits = d_view(img, "dgen", idx)
            real_logits = d_view(reals(idx), "dreal", idx)
            loss = d_loss(real_logits, fake_logits).mean()
            (loss / n_rounds).backward()
            add("D/loss", loss, 1 / n_rounds)
            add("D/real_score", real_logits.mean(), 1 / n_rounds)
            add("D/fake_score", fake_logits.mean(), 1 / n_rounds)
            sign_sum = sign_sum + torch.sign(real_logits.detach()).sum()
        all_reduce_logs(logs, ["D/loss", "D/real_score", "D/fake_score"])
        finish(D, state.D_opt, "D/")
        if state.ada is not None:
            total = float(all_reduce_sum(sign_sum.clone()))
            state.ada.observe(None, total_sign=total, total_count=cfg.batch)

    if "dreg" in phases and cfg.r1_gamma > 0 and step % cfg.r1_interval == 0:
        begin(D, G, state.D_opt)
        for idx in rounds:
            x = reals(idx).detach().requires_grad_(True)
            logits = d_view(x, "dreg", idx)
            penalty = r1_penalty(x, logits) * (cfg.r1_gamma / 2)
            (penalty.mean() * cfg.r1_interval / n_rounds).backward()
            add("D/r1_penalty", penalty.mean(), 1 / n_rounds)
        all_reduce_logs(logs, ["D/r1_penalty"])
        finish(D, state.D_opt, "D/")

    G.requires_grad_(False)
    D.requires_grad_(False)
    state.nimg += cfg.batch
    update_ema(state.G_ema, G, ema_beta(cfg.batch, state.nimg, cfg.ema_kimg, cfg.ema_rampup))
    if state.ada is not None:
        logs["augment_p"] = state.p
        state.ada.step(cfg.batch)
    state.step += 1
    return logs


def all_reduce_logs(logs: dict, names: list[str]) -> None:
    """Per-process partial means -> global means (sums of the pre-scaled parts)."""
    if world()[1] == 1:
        return
    values = all_reduce_sum(torch.tensor([logs[n] for n in names], dtype=torch.float64))
    for n, v in zip(names, values.tolist()):
        logs[n] = v


# ---------------------------------------------------------------------------------------------
# Networks: scratch, official pickle or native checkpoint.

def scratch_networks(config: GanConfig, resolution: int) -> tuple[torch.nn.Module, torch.nn.Module]:
    if config.arch == "paper256":
        g_kwargs, d_kwargs = stylegan2.paper256_kwargs()
        if resolution != 256:
            g_kwargs["img_resolution"] = d_kwargs["img_resolution"] = resolution
    else:
        g_kwargs = stylegan2.small_generator_kwargs(resolution=resolution, w_dim=config.w_dim,
                                                    channel_base=config.channel_base, channel_max=config.channel_max,
                                                    num_layers=config.mapping_layers)
        d_kwargs = stylegan2.small_discriminator_kwargs(resolution=resolution, channel_base=config.channel_base,
                                                        channel_max=config.channel_max, mbstd_group_size=config.mbstd_group)
    return stylegan2.Generator(**g_kwargs), stylegan2.Discriminator(**d_kwargs)


def check_compatible(G, D, resolution: int, channels: int, source: str) -> None:
    """A start network must produce (and D read) images of the data's resolution and channels."""
    for name, net in (("G", G), ("D", D)):
        if net is None:
            continue
        if net.img_resolution != resolution or net.img_channels != channels:
            raise ConfigError(f"start network {source}: {name} works at {net.img_resolution} px with "
                              f"{net.img_channels} channels, but the data is {resolution} px with {channels} "
                              "channels; prepare the data at the network's resolution or start from 'scratch'")


def start_networks(config: GanConfig, resolution: int, channels: int = 3):
    """(G, D, G_ema) to start from, as configured; D is fresh when the start holds none."""
    seed_everything(config.seed)
    G_scratch, D_scratch = scratch_networks(config, resolution)
    if config.start == "scratch":
        return G_scratch, D_scratch, copy.deepcopy(G_scratch)
    check_sources(config)   # a missing start is named the same way here
    path = resolve_path(config.start)
    try:
        if path.suffix == ".pkl":
            nets = network_pkl.load_network_pkl(path)
            G, G_ema, D = nets["G"], nets.get("G_ema", nets["G"]), nets.get("D")
        else:
            G_path = path / "G.pt" if path.is_dir() else path
            G = stylegan2.load_generator(G_path)
            G_ema = copy.deepcopy(G)
            D_path = G_path.with_name("D.pt")
            D = stylegan2.load_discriminator(D_path) if D_path.exists() else None
        check_compatible(G, D, resolution, channels, str(path))
    except (ValueError, FileNotFoundError, ConfigError) as err:   # unreadable, foreign or of another size
        raise ConfigError(f"parameter 'start' = {config.start!r}: {err}{rebuild_hint(path)}") from None
    if D is None:
        D = D_scratch
    return G.train(), D.train(), G_ema.eval()


# ---------------------------------------------------------------------------------------------
# Data, snapshots, metrics.

def load_training_data(config: GanConfig):
    from viscoin_core.data import load_split
    from viscoin_core.data.prepare import ensure_prepared
    return load_split(ensure_prepared(resolve_path(config.data)), "train", augment=False)


def reals_reader(dataset) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """reals_of(indices, mirror) -> (b, 3, H, W) in [-1, 1], x-flipped where mirror is set."""
    def reals_of(indices: torch.Tensor, mirror: torch.Tensor) -> torch.Tensor:
        x = torch.stack([dataset[int(i)][0] for i in indices])
        return torch.where(mirror[:, None, None, None], x.flip(3), x)
    return reals_of


@torch.no_grad()
def sample_images(G, n: int, seed: int, device: torch.device, batch: int = 64, noise_mode: str = "const"):
    """Yield batches of G's images for z drawn from `seed` (n images in all)."""
    g = torch.Generator().manual_seed(seed)
    done = 0
    while done < n:
        b = min(batch, n - done)
        z = torch.randn(b, G.z_dim, generator=g).to(device)
        yield G(z, z.new_zeros(b, G.c_dim), noise_mode=noise_mode).clamp(-1, 1).cpu()
        done += b


def fid_snapshot(G_ema, dataset, config: GanConfig, device: torch.device, classifier, cache_path: Path) -> dict:
    """FID/KID of G_ema's samples against a fixed random subset of the training images.

    The real set's features are computed once per run and kept in `cache_path` (the run directory
    holds one feature extractor for its whole life, so the file needs no further key).
    """
    from viscoin_core.eval import metrics as M
    n = min(config.fid_images, len(dataset))
    extractor = M.feature_extractor(config.fid_features, classifier, device)
    real_feats = load_torch(cache_path) if cache_path.exists() else None
    if real_feats is None or len(real_feats) != n:
        # A fixed random subset: cached splits are sorted by class, so the first n would miss classes.
        chosen = torch.randperm(len(dataset), generator=streams.generator(config.seed, "gan.fid_reals"))[:n]
        real = torch.utils.data.Subset(dataset, sorted(chosen.tolist()))
        with torch.no_grad():
            real_feats = M.extract_features(real, extractor, n, 64, desc="real features")
        save_atomic(real_feats, cache_path)
    with torch.no_grad():
        fakes = sample_images(G_ema, n, streams.stream_seed(config.seed, "gan.fid_fakes"), device)
        fake_feats = M.extract_features(fakes, extractor, n, 64, desc="fake features")
    # Subsets of 1000 as the official metric; at most half the set, or every subset would be the whole set.
    kid, kid_std = M.kid_from_features(real_feats, fake_feats, 100, min(1000, max(2, n // 2)),
                                       seed=streams.stream_seed(config.seed, "gan.kid"))
    # Precision and recall beside FID: whether samples look like data, and how much of it they cover.
    pr = M.precision_recall(real_feats, fake_feats) if n > 3 else {"precision": None, "recall": None}
    return {"fid": M.fid_from_features(real_feats, fake_feats), "kid": kid, "kid_std": kid_std, **pr,
            "fid_features": config.fid_features}


def save_grid(G_ema, config: GanConfig, device: torch.device, path: Path) -> None:
    from viscoin_core.viz.training import save_image_grid
    seed = streams.stream_seed(config.seed, "gan.grid_fakes")
    images = torch.cat(list(sample_images(G_ema, config.grid_size ** 2, seed, device)))
    save_image_grid(images, path, cols=config.grid_size)


def grid_name(kimg: float) -> str:
    return f"samples_kimg{kimg:08.2f}.png"


def checkpoint_record(state: GanState) -> dict:
    return {"G_kwargs": state.G.init_kwargs, "D_kwargs": state.D.init_kwargs,
            "G": state.G.state_dict(), "D": state.D.state_dict(), "G_ema": state.G_ema.state_dict(),
            "G_opt": state.G_opt.state_dict(), "D_opt": state.D_opt.state_dict(),
            "ada": state.ada.state_dict() if state.ada is not None else None,
            "pl_mean": state.pl_mean.detach().cpu(), "step": state.step, "nimg": state.nimg}


def restore(state: GanState, record: dict) -> None:
    state.G.load_state_dict(record["G"])
    state.D.load_state_dict(record["D"])
    state.G_ema.load_state_dict(record["G_ema"])
    state.G_opt.load_state_dict(record["G_opt"])
    state.D_opt.load_state_dict(record["D_opt"])
    if state.ada is not None and record["ada"] is not None:
        state.ada.load_state_dict(record["ada"])
    state.pl_mean.copy_(record["pl_mean"])
    state.step, state.nimg = record["step"], record["nimg"]


def init_distributed() -> torch.device | None:
    """Join the torchrun process group when launched by torchrun; returns this process's device."""
    if "WORLD_SIZE" not in os.environ or int(os.environ["WORLD_SIZE"]) <= 1 or dist.is_initialized():
        return None
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    dist.init_process_group(backend)
    if torch.cuda.is_available():
        local = int(os.environ.get("LOCAL_RANK", 0))
        torch.cuda.set_device(local)
        return torch.device("cuda", local)
    return torch.device("cpu")


def train_gan(config: GanConfig, run_dir: str | Path, stop_at_kimg: float | None = None) -> dict:
    """Train G as configured; returns (and writes) metrics.json. Resumes from run_dir's checkpoint.

    `stop_at_kimg` stops after the snapshot at that kimg as if interrupted (for tests and for
    notebooks that split a run); calling again continues.
    """
    run_dir = Path(run_dir)
    check_sources(config)   # a missing start network or FID classifier fails before anything is made
    dist_device = init_distributed()
    rank, n_proc = world()
    # StyleGAN2's learning rates are constant and every draw is a function of the step, so a longer
    # run is the shorter one continued: `kimg` may grow on a finished run (rank 0 clears its end files).
    done = None
    if rank == 0:
        prepare_run_dir(run_dir, config, extendable=("kimg",))
        done = finished(run_dir, "G.pt", "kimg", config.kimg)
    if n_proc > 1:
        dist.barrier()
        if rank > 0:          # after rank 0 has cleared a shorter run's end files
            done = finished(run_dir, "G.pt", "kimg", config.kimg)
    if done is not None:
        return done
    device = dist_device or pick_device(config.device)
    if config.batch % n_proc:
        raise ConfigError(f"batch {config.batch} is not divisible by the {n_proc} processes")

    dataset = load_training_data(config)
    resolution = dataset.resolution
    G, D, G_ema = start_networks(config, resolution)
    G, D, G_ema = G.to(device), D.to(device), G_ema.to(device).eval().requires_grad_(False)
    G_opt, D_opt = make_optimizers(G, D, config)
    state = GanState(G, D, G_ema, G_opt, D_opt, make_ada(config), torch.zeros((), device=device))
    log_path = run_dir / "log.jsonl"
    record = load_checkpoint(run_dir)
    if record is not None:
        restore(state, record)
        if rank == 0:
            truncate_log(log_path, state.step, key="step")
    elif rank == 0 and log_path.exists():
        log_path.unlink()

    classifier = None
    if rank == 0 and config.fid_images > 0 and config.fid_features == "classifier":
        from viscoin_core.nets.classifier import load_classifier
        from viscoin_core.train.classifier import ensure_classifier
        classifier = load_classifier(ensure_classifier(config.fid_classifier), map_location=device)
    reals_of = reals_reader(dataset)
    total_steps = max(1, math.ceil(config.kimg * 1000 / config.batch))
    snapshot_steps = max(1, math.ceil(config.snapshot_kimg * 1000 / config.batch))
    fid_cache = run_dir / "fid_real_features.pt"
    if rank == 0 and not (run_dir / "reals.png").exists():
        from viscoin_core.viz.training import save_image_grid
        n = min(config.grid_size ** 2, len(dataset))
        # a random subset: the split is sorted by class, and the grid should show all of them
        shown = torch.randperm(len(dataset), generator=streams.generator(config.seed, "gan.grid_reals"))[:n]
        save_image_grid(reals_of(shown, torch.zeros(n, dtype=torch.bool)), run_dir / "reals.png", cols=config.grid_size)

    snapshot_seconds = [0.0]

    def snapshot() -> None:
        """Checkpoint, sample grid and FID/KID at the current step (rank 0 writes).

        The log line goes first and the checkpoint last: a kill between them resumes from the previous
        checkpoint, whose resume drops this line and makes the snapshot again, so metrics.json never
        reads a stale FID (the other order left a checkpoint whose snapshot line was lost).
        """
        began = time.time()
        # NaN/inf networks are never sampled, scored nor saved over the last good snapshot; every
        # rank checks (their networks are the same), so none is left waiting at the barrier below
        check_finite_parameters(((f"{k}.{n}", t) for k, m in (("G", G), ("D", D), ("G_ema", G_ema))
                                 for n, t in m.state_dict().items()), state.step, unit="step")
        if rank == 0:
            kimg = state.nimg / 1000
            entry = {"step": state.step, "kimg": kimg, "event": "snapshot", "augment_p": state.p}
            save_grid(G_ema, config, device, run_dir / grid_name(kimg))
            if config.fid_images > 0:
                entry.update(fid_snapshot(G_ema, dataset, config, device, classifier, fid_cache))
            append_jsonl(log_path, entry)
            save_atomic(checkpoint_record(state), run_dir / "checkpoint.pt", finite=True)
        if n_proc > 1:
            dist.barrier()
        snapshot_seconds[0] += time.time() - began

    saved = None if record is None else f"step {state.step}"
    if record is None:
        snapshot()                                    # kimg 0: the start network's FID
        saved = "step 0"
    started, start_step = time.time(), state.step
    snapshot_seconds[0] = 0.0
    bar = tqdm(total=total_steps, initial=state.step, desc="G/D steps", disable=rank != 0)
    try:
        while state.step < total_steps:
            draws = draw_step(config, state.step, len(dataset), G.z_dim, G.num_ws, G.img_channels, resolution, state.p)
            logs = train_step(state, config, reals_of, draws, device)
            bar.update(1)
            if rank == 0 and (state.step % config.log_every == 0 or state.step == total_steps):
                append_jsonl(log_path, {"step": state.step, "kimg": state.nimg / 1000, **logs,
                                        "seconds": time.time() - started})
            if state.step % snapshot_steps == 0 or state.step == total_steps:
                snapshot()
                saved = f"step {state.step}"
                if stop_at_kimg is not None and state.nimg / 1000 >= stop_at_kimg and state.step < total_steps:
                    return {"stopped_at_kimg": state.nimg / 1000}
    except NonFiniteLoss as err:
        if rank == 0:
            append_jsonl(log_path, {"step": state.step, "kimg": state.nimg / 1000, "event": "nonfinite",
                                    "message": str(err)})
        raise NonFiniteLoss(f"{err}; training stopped, the last good snapshot is {run_dir / 'checkpoint.pt'} "
                            f"({saved}); nothing was written after it") from None
    finally:
        bar.close()

    seconds = time.time() - started - snapshot_seconds[0]       # training only: snapshots excluded
    metrics = {}
    if rank == 0:
        stylegan2.save_generator(G_ema, run_dir / "G.pt")
        stylegan2.save_discriminator(D, run_dir / "D.pt")
        metrics = final_metrics(run_dir, config, state, seconds, state.step - start_step)
        write_metrics(run_dir, metrics)
    if n_proc > 1:
        dist.barrier()
    return metrics


def check_sources(config: GanConfig) -> None:
    """Raise ConfigError naming the parameter when the start network or fid_classifier does not exist
    (a missing data file is named by `load_training_data`, which reads it first)."""
    if config.start != "scratch" and not resolve_path(config.start).exists():
        path = resolve_path(config.start)
        raise ConfigError(f"parameter 'start' = {config.start!r}: {path} does not exist"
                          + (rebuild_hint(path) or " (official pickles go under weights/stylegan2-ada/, see README; "
                                                   "or use 'scratch')"))
    if config.fid_images > 0 and config.fid_classifier and not resolve_path(config.fid_classifier).exists():
        raise ConfigError(f"parameter 'fid_classifier' = {config.fid_classifier!r}: "
                          f"{resolve_path(config.fid_classifier)} does not exist")


def final_metrics(run_dir: Path, config: GanConfig, state: GanState, seconds: float, steps: int) -> dict:
    """metrics.json: the last snapshot's FID/KID, the first one's (start network), speed, ADA p."""
    snaps = [r for r in read_jsonl(run_dir / "log.jsonl") if r.get("event") == "snapshot"]
    last, first = snaps[-1], snaps[0]
    metrics = {"kimg": state.nimg / 1000, "steps": state.step, "augment_p": state.p, "start": config.start,
               "resolution": state.G.img_resolution, "data": config.data,
               "n_params_G": sum(p.numel() for p in state.G.parameters()),
               "kimg_per_hour": (steps * config.batch / 1000) / max(seconds / 3600, 1e-9) if steps else None,
               "fid_features": config.fid_features if config.fid_images > 0 else None, "fid_images": config.fid_images}
    if config.fid_images > 0:
        metrics.update({"fid": last["fid"], "kid": last["kid"], "kid_std": last["kid_std"],
                        "precision": last.get("precision"), "recall": last.get("recall"),
                        "fid_start": first["fid"], "kid_start": first["kid"]})
    return metrics


def main(argv: list[str] | None = None) -> dict:
    parser = loop.stage_cli("gan", __doc__)
    parser.add_argument("--stop-at-kimg", type=float, default=None, help="stop after the snapshot at this kimg")
    args = parser.parse_args(argv)
    config = loop.stage_config(GanConfig, args)
    metrics = train_gan(config, args.run_dir, stop_at_kimg=args.stop_at_kimg)
    if world()[0] == 0 and "fid" in metrics:
        print(f"FID {metrics['fid']:.2f} (start {metrics['fid_start']:.2f}, {metrics['fid_features']} features) "
              f"after {metrics['kimg']:.1f} kimg -> {args.run_dir}")
    if dist.is_initialized():
        dist.destroy_process_group()
    return metrics


if __name__ == "__main__":
    from viscoin_core.cli import run
    sys.exit(run(main))
