"""Training VisCoIN: Psi, Theta and Omega on top of a frozen classifier f and a frozen generator G.

Each iteration takes `batch_real` training images (random pad-crop and flip) and `batch_fake`
images sampled from G without a graph, runs f once on all of them (logits and taps, no graph: f is
frozen and its taps are inputs to Psi), then Psi -> Theta (g's logits) and Psi -> Omega -> G.synthesis
(reconstructions), f on the reconstructions, and the loss of `viscoin_core.losses`; Adam updates
Psi, Theta and Omega only. f and G never change: their parameters have requires_grad False, they
stay in eval mode, and gradients reach the reconstructions' inputs only.

Entry points: `train_viscoin(config, run_dir)` (resumes from run_dir/checkpoint.pt when present),
`load_viscoin(run_dir)`, and `python -m viscoin_core.train.viscoin --params FILE --run-dir DIR`.

Run directory: config.json, log.jsonl (records with "split": "train" every `log_every` iterations,
"split": "test" every `eval_every`; "iteration" counts completed steps), checkpoint.pt (the last one,
written atomically), viscoin.pt (the final model, always written) and metrics.json (f_accuracy,
g_accuracy, fidelity, mse, lpips, fid, kid on the test split, plus lpips_backbone and fid_features).

Resuming is exact on CPU: the batch of iteration i is a pure function of (seed, i) (epoch
permutations seeded by epoch, each sample's augmentation seeded by its position in the stream), z
is drawn from a generator seeded by (seed, i), and the checkpoint restores models, optimiser, the
iteration and every global RNG state. The learning rate is a pure function of the iteration.

Speed: channels_last convolution nets, LPIPS computed once per step, reconstructions through G's
unfused modulated convolutions (gradients reach ws only), fused Adam; on CUDA bf16 autocast
(`amp: auto`) and optional `compile`. On CPU the step runs in float32 unless `amp: bf16`.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm.auto import tqdm

from viscoin_core import losses
from viscoin_core.config import ConfigError, load_config, param, parse_config, to_dict
from viscoin_core.nets.classifier import build_classifier, load_classifier
from viscoin_core.nets.viscoin import FUSE_AT_CHOICES, W_BAR_CHOICES, ConceptExtractor, ConceptTranslator, Explainer
from viscoin_core.train import loop

FINAL = "viscoin.pt"
LR_DECAY_EVERY, LR_DECAY_FACTOR = 1000, 0.8   # the released code's schedule, second half of training


@dataclass
class ViscoinConfig:
    """Parameters of a VisCoIN training run (defaults: the paper's CUB settings). Paths are relative
    to the repository root."""
    f: str = param(help="'random' (a randomly initialised f_arch, tests/smoke) or a classifier f.pt file or run dir")
    G: str = param(help="'random' (a small random generator) or a G.pt file / run dir, or an official .pkl")
    data: str = param("", help="data parameter file (params/<profile>/data_*.yaml); the cache is prepared if missing")
    cache_dir: str = param("", help="an already prepared cache (instead of `data`)")
    seed: int = param(0, low=0, help="seeds initialisation, batches, augmentation and synthetic samples")
    device: str = param("auto", help="'auto' (CUDA when present), 'cpu', 'cuda', 'cuda:1', ...")
    # random f and G (f: random / G: random)
    f_arch: str = param("resnet18", help="torchvision ResNet for f: random")
    g_w_dim: int = param(64, low=1, help="w and z size of the random G")
    g_channel_base: int = param(1024, low=1, help="channel_base of the random G")
    g_channel_max: int = param(64, low=1, help="channel_max of the random G")
    # the three trained networks
    n_concepts: int = param(256, low=1, help="K, the number of concepts")
    latent_channels: int = param(512, low=1, help="channels of Psi's per-tap convolutions")
    fuse_at: str = param("layer4", choices=FUSE_AT_CHOICES, help="grid Psi fuses f's taps at: layer4 (paper); "
                         "layer2 keeps a spatial layout below 96 px, where layer4's grid is under 3x3")
    coarse_layer: int = param(3, low=0, help="style vectors with index < coarse_layer read Phi' (code: 2)")
    mid_layer: int = param(12, low=0, help="style vectors with index > mid_layer read Phi' (code: 10)")
    w_bar: str = param("w_avg", choices=W_BAR_CHOICES, help="Omega's bias: G's w_avg frozen (paper) or zeros trained (code)")
    omega_activation: str = param("lrelu", choices=("lrelu", "linear"), help="Omega's per-vector layer activation")
    omega_lr_multiplier: float = param(0.01, low=0.0, low_open=True, help="equalised-lr multiplier of Omega (StyleGAN mapping's)")
    # the loss
    alpha: float = param(0.5, low=0.0, help="output fidelity weight")
    beta: float = param(3.0, low=0.0, help="LPIPS weight")
    gamma: float = param(0.1, low=0.0, help="weight of CE(f(x~), f(x))")
    delta: float = param(0.2, low=0.0, help="sparsity weight")
    orthogonality_weight: float = param(1.0, low=0.0, help="weight of the orthogonality of Psi's last kernels")
    omega_reg_weight: float = param(1.0, low=0.0, help="weight of ||w_x - w_bar||^2")
    sparsity: str = param("paper", choices=losses.SPARSITY_CHOICES, help="'paper': ||Phi||_1; 'code': the released variant")
    orthogonality: str = param("gram", choices=losses.ORTHOGONALITY_CHOICES, help="'gram': ||WW^T-I||^2; 'code': released variant")
    loss_warmup: int = param(0, low=0, help="output fidelity and sparsity start at this iteration (code: 101)")
    # optimisation
    lr: float = param(1e-4, low=0.0, low_open=True, help="Adam learning rate")
    lr_schedule: str = param("constant", choices=("constant", "code"), help="'code': x0.8 every 1000 its after half")
    iterations: int = param(100_000, low=1, help="training iterations")
    batch_real: int = param(8, low=1, help="real images per iteration")
    batch_fake: int = param(8, low=0, help="images sampled from G per iteration")
    truncation_psi: float = param(1.0, low=0.0, help="truncation of the synthetic samples")
    noise_mode: str = param("const", choices=("const", "random", "none"), help="G's noise for reconstructions")
    workers: int = param(0, low=0, help="DataLoader worker processes (results do not depend on it)")
    # logging, evaluation, checkpoints
    log_every: int = param(50, low=1, help="iterations between train log records")
    eval_every: int = param(2000, low=1, help="iterations between cheap evaluations on the test subset")
    eval_subset: int = param(256, low=1, help="test images in the cheap evaluation")
    final_eval_images: int = param(0, low=0, help="test images of the final evaluation (0: all; else a seeded random subset)")
    eval_images: int | None = param(None, low=1, help="test images of the full evaluation that follows training "
                                    "(notebooks 04-05, every metric of DESIGN 6); null = all. Training ignores it")
    checkpoint_every: int = param(1000, low=1, help="iterations between checkpoints")
    lpips_backbone: str = param("vgg", choices=("vgg", "random"), help="'random' needs no download (not comparable)")
    fid_features: str = param("inception", choices=("inception", "classifier"), help="FID/KID features of the final evaluation")
    # speed
    compile: bool = param(False, help="torch.compile f, Psi, G.synthesis and LPIPS (CUDA)")
    amp: str = param("auto", choices=("auto", "off", "bf16"),
                     help="'auto': bf16 autocast on CUDA, float32 on CPU; 'bf16': bf16 autocast on any device")

    def __post_init__(self):
        if not self.data and not self.cache_dir:
            raise ConfigError("set one of 'data' (a data parameter file) or 'cache_dir' (a prepared cache)")
        if self.data and self.cache_dir:
            raise ConfigError(f"set only one of 'data' = {self.data!r} and 'cache_dir' = {self.cache_dir!r}")
        if self.coarse_layer > self.mid_layer:
            raise ConfigError(f"parameter 'coarse_layer' = {self.coarse_layer} is not allowed; expected a value "
                              f"<= mid_layer = {self.mid_layer}")


def as_config(config: ViscoinConfig | Mapping[str, Any] | str | Path) -> ViscoinConfig:
    """A ViscoinConfig from itself, a flat mapping or a YAML parameter file."""
    if isinstance(config, ViscoinConfig):
        return config
    if isinstance(config, (str, Path)):
        return load_config(ViscoinConfig, config)
    return parse_config(ViscoinConfig, config)


def _resolve(path: str) -> Path:
    from viscoin_core.config import repo_root
    p = Path(path)
    return p if p.is_absolute() else repo_root() / p


# ---------------------------------------------------------------------------------------------
# Data: a batch stream that is a pure function of (seed, iteration)

class _SeededItems(Dataset):
    """dataset[(index, seed)]: the item with torch's RNG seeded for its augmentation, caller's RNG untouched."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, item):
        index, seed = item
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self.dataset[index]


class IterationBatches(Sampler):
    """Batches of (index, augmentation seed) for iterations start..stop-1.

    Iteration i takes positions i*B .. i*B+B-1 of an endless stream that walks through one random
    permutation of the dataset per epoch; epoch e's permutation is seeded by (seed, e).
    """

    def __init__(self, n: int, batch: int, seed: int, start: int, stop: int):
        self.n, self.batch, self.seed, self.start, self.stop = n, batch, seed, start, stop
        self._epoch, self._perm = None, None

    def _permutation(self, epoch: int) -> torch.Tensor:
        if epoch != self._epoch:
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._epoch, self._perm = epoch, torch.randperm(self.n, generator=gen)
        return self._perm

    def __len__(self) -> int:
        return max(0, self.stop - self.start)

    def __iter__(self):
        for i in range(self.start, self.stop):
            batch = []
            for pos in range(i * self.batch, (i + 1) * self.batch):
                index = int(self._permutation(pos // self.n)[pos % self.n])
                batch.append((index, (self.seed * 2_000_003 + pos) % 2**62))
            yield batch


def load_data(cfg: ViscoinConfig):
    """(train set with augmentation, test set, cache dir); prepares the cache from `data` if needed."""
    from viscoin_core.data import load_split
    if cfg.data:
        from viscoin_core.data.prepare import ensure_prepared
        cache_dir = ensure_prepared(str(_resolve(cfg.data)))
    else:
        cache_dir = _resolve(cfg.cache_dir)
    return load_split(cache_dir, "train", augment=True), load_split(cache_dir, "test"), Path(cache_dir)


def synthetic_z(cfg: ViscoinConfig, iteration: int, z_dim: int) -> torch.Tensor:
    """The latents of iteration i's synthetic images (B_fake, z_dim), on the CPU, a function of (seed, i)."""
    gen = torch.Generator().manual_seed(cfg.seed * 3_000_017 + iteration + 1)
    return torch.randn(cfg.batch_fake, z_dim, generator=gen)


# ---------------------------------------------------------------------------------------------
# Frozen f and G

def freeze(module: nn.Module) -> nn.Module:
    """Eval mode and no parameter gradients: the module is never updated."""
    return module.eval().requires_grad_(False)


def _random_generator_kwargs(cfg: ViscoinConfig, resolution: int) -> dict:
    from viscoin_core.nets.stylegan2 import small_generator_kwargs
    return small_generator_kwargs(resolution=resolution, w_dim=cfg.g_w_dim, channel_base=cfg.g_channel_base,
                                  channel_max=cfg.g_channel_max)


def random_generator(kwargs: dict, seed: int) -> nn.Module:
    """A randomly initialised G whose w_avg is the mean of 4096 mapped z (what a trained G tracks)."""
    from viscoin_core.nets.stylegan2 import Generator
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        G = Generator(**kwargs)
        with torch.no_grad():
            G.mapping.w_avg.copy_(G.mapping(torch.randn(4096, G.z_dim), None)[:, 0].mean(0))
    return freeze(G)


def build_f(cfg: ViscoinConfig, n_classes: int) -> nn.Module:
    if cfg.f == "random":
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            return freeze(build_classifier(cfg.f_arch, n_classes=n_classes))
    f = load_classifier(_resolve(cfg.f))
    if f.n_classes != n_classes:
        raise ConfigError(f"parameter 'f' = {cfg.f!r}: this classifier has {f.n_classes} classes but the data has "
                          f"{n_classes}; expected a classifier trained on this dataset")
    return freeze(f)


def load_generator_file(path: str) -> nn.Module:
    """G from a native G.pt (file or run directory) or an official network pickle (its G_ema)."""
    from viscoin_core.nets.stylegan2 import load_generator
    path = _resolve(path)
    return freeze(load_generator(path / "G.pt" if path.is_dir() else path))


def build_G(cfg: ViscoinConfig, resolution: int) -> nn.Module:
    if cfg.G == "random":
        return random_generator(_random_generator_kwargs(cfg, resolution), cfg.seed)
    G = load_generator_file(cfg.G)
    if G.img_resolution != resolution:
        raise ConfigError(f"parameter 'G' = {cfg.G!r}: the generator makes {G.img_resolution} px images but the "
                          f"data is {resolution} px; expected a generator at the data's resolution")
    return freeze(G)


def build_parts(cfg: ViscoinConfig, f: nn.Module, G: nn.Module, n_classes: int) -> dict[str, nn.Module]:
    """Psi, Theta, Omega, initialised from the run's seed."""
    if cfg.mid_layer >= G.num_ws:
        raise ConfigError(f"parameter 'mid_layer' = {cfg.mid_layer} is not allowed; expected a value in "
                          f"[coarse_layer, {G.num_ws - 1}] (G has num_ws = {G.num_ws} style vectors)")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed + 1)
        psi = ConceptExtractor(cfg.n_concepts, f.tap_channels, cfg.latent_channels, cfg.fuse_at)
        theta = Explainer(cfg.n_concepts, n_classes)
        omega = ConceptTranslator(cfg.n_concepts, G.num_ws, G.w_dim, cfg.coarse_layer, cfg.mid_layer,
                                  w_bar=cfg.w_bar, w_avg=G.mapping.w_avg, activation=cfg.omega_activation,
                                  lr_multiplier=cfg.omega_lr_multiplier)
    return {"psi": psi, "theta": theta, "omega": omega}


# ---------------------------------------------------------------------------------------------
# One training step

def learning_rate(cfg: ViscoinConfig, iteration: int) -> float:
    """lr at 0-based `iteration`: constant, or the code's x0.8 at every multiple of 1000 after half."""
    if cfg.lr_schedule == "constant":
        return cfg.lr
    half = cfg.iterations // 2
    decays = max(0, iteration // LR_DECAY_EVERY - half // LR_DECAY_EVERY) if iteration > half else 0
    return cfg.lr * LR_DECAY_FACTOR ** decays


class Trainer:
    """The frozen f, G, LPIPS and the trained Psi, Theta, Omega with their optimiser, on one device."""

    def __init__(self, cfg: ViscoinConfig, f: nn.Module, G: nn.Module, parts: dict[str, nn.Module],
                 lpips_net: nn.Module, device: torch.device):
        self.cfg, self.device = cfg, device
        self.cuda = device.type == "cuda"
        # channels_last suits the convolution libraries on GPU and CPU alike (measured on CPU at
        # 256 px: LPIPS-VGG forward+backward -17%, ResNet-50 -8%)
        fmt = torch.channels_last
        self.f = f.to(device, memory_format=fmt)
        self.G = G.to(device)
        self.lpips = lpips_net.to(device, memory_format=fmt)
        self.parts = {k: m.to(device) for k, m in parts.items()}
        self.psi, self.theta, self.omega = self.parts["psi"], self.parts["theta"], self.parts["omega"]
        self.psi.to(memory_format=fmt)
        params = [p for m in self.parts.values() for p in m.parameters() if p.requires_grad]
        self.optimizer = torch.optim.Adam(params, lr=cfg.lr, fused=True)   # one kernel per step, CPU or CUDA
        self.amp = cfg.amp == "bf16" or (cfg.amp == "auto" and self.cuda)
        self.autocast = (torch.autocast(device.type, dtype=torch.bfloat16) if self.amp
                         else contextlib.nullcontext())
        # compiled views for speed; the plain modules above are what is saved
        self.run_taps, self.run_f, self.run_psi = self.f.forward_taps, self.f, self.psi
        self.run_synthesis, self.run_lpips = self.G.synthesis, self.lpips
        if cfg.compile:
            self.run_taps, self.run_f = torch.compile(self.f.forward_taps), torch.compile(self.f)
            self.run_psi, self.run_lpips = torch.compile(self.psi), torch.compile(self.lpips)
            self.run_synthesis = torch.compile(self.G.synthesis)
        # f and G travel with the run when they were random (nothing else could rebuild them)
        self.frozen_record = {}
        if cfg.f == "random":
            self.frozen_record["f_random"] = {"kwargs": {"arch": f.arch, "n_classes": f.n_classes},
                                              "state_dict": _cpu_state(f)}
        if cfg.G == "random":
            self.frozen_record["G_random"] = {"kwargs": G.init_kwargs, "state_dict": _cpu_state(G)}

    def sample_fake(self, z: torch.Tensor) -> torch.Tensor:
        """Images from G for latents z, with no graph."""
        with torch.no_grad(), self.autocast:
            ws = self.G.mapping(z.to(self.device), None, truncation_psi=self.cfg.truncation_psi)
            return self.run_synthesis(ws, noise_mode="random").float()

    def loss(self, x: torch.Tensor, iteration: int) -> tuple[torch.Tensor, dict[str, torch.Tensor], dict]:
        """The total loss on a batch x in [-1, 1] and its terms, and the tensors the metrics need."""
        cfg = self.cfg
        x = x.contiguous(memory_format=torch.channels_last)
        with self.autocast:
            with torch.no_grad():           # f is frozen: targets and taps carry no graph
                f_logits, taps = self.run_taps(x)
            phi, phi_prime = self.run_psi(taps)
            g_logits = self.theta(phi)
            ws = self.omega(phi, phi_prime)
            # unfused modulated convs: gradients reach ws without per-sample weight gradients
            x_rec = self.run_synthesis(ws, noise_mode=cfg.noise_mode, fused_modconv=False)
            x_rec = x_rec.contiguous(memory_format=torch.channels_last)
            f_rec_logits = self.run_f(x_rec)  # grads flow to x_rec only
            lpips_per_image = self.run_lpips(x_rec, x).flatten()   # (B,), computed once for loss and metrics
            warm = iteration >= cfg.loss_warmup
            total, terms = losses.viscoin_loss(
                g_logits=g_logits, f_logits=f_logits, x_rec=x_rec, x=x, f_rec_logits=f_rec_logits, phi=phi,
                psi_kernels=self.psi.to_concepts.weight, ws=ws, w_bar=self.omega.w_bar,
                lpips_net=lambda a, b: lpips_per_image,
                alpha=cfg.alpha if warm else 0.0, beta=cfg.beta, gamma=cfg.gamma, delta=cfg.delta if warm else 0.0,
                orthogonality_weight=cfg.orthogonality_weight, omega_weight=cfg.omega_reg_weight,
                sparsity_mode=cfg.sparsity, orthogonality_mode=cfg.orthogonality)
        return total, terms, {"f_logits": f_logits, "g_logits": g_logits, "x_rec": x_rec, "lpips": lpips_per_image}

    def step(self, x_real: torch.Tensor, z: torch.Tensor, iteration: int) -> dict[str, float]:
        """One optimiser step on B real + B synthetic images; returns the loss terms as floats.

        Raises NonFiniteLoss (before touching the parameters) when a term is NaN or inf, and after the
        update when it left a parameter NaN or inf (the caller then writes no checkpoint).
        """
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate(self.cfg, iteration)
        x = x_real.to(self.device, non_blocking=True)
        if len(z):
            x = torch.cat([x, self.sample_fake(z)])
        total, terms, _ = self.loss(x, iteration)
        named = {**terms, "total": total}   # terms first, so a NaN is reported by the term that made it
        values = torch.stack([v.detach().float() for v in named.values()]).tolist()  # one device sync
        loop.check_finite(dict(zip(named, values)), iteration)
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        self.optimizer.step()
        # a finite loss can still leave NaN/inf parameters (lr far too large): stop on the step that made them
        loop.check_finite_parameters(((f"{k}.{n}", p) for k, m in self.parts.items()
                                      for n, p in m.named_parameters()), iteration)
        return dict(zip(named, values))

    def train_mode(self, on: bool) -> None:
        for m in self.parts.values():
            m.train(on)

    def state(self, iteration: int, rng: dict) -> dict:
        return {"iteration": iteration, "rng": rng, "optimizer": self.optimizer.state_dict(),
                **{k: _cpu_state(m) for k, m in self.parts.items()}, **self.frozen_record}

    def restore(self, ckpt: dict) -> int:
        for k, m in self.parts.items():
            m.load_state_dict(ckpt[k])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        loop.set_rng_state(ckpt["rng"])
        return int(ckpt["iteration"])


def _cpu_state(module: nn.Module) -> dict:
    return {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}


# ---------------------------------------------------------------------------------------------
# Evaluation (cheap metrics; the full evaluation is viscoin_core.eval)

def evaluate_images(trainer: Trainer, dataset: Dataset, indices: list[int], batch_size: int,
                    features: str | None = None, desc: str = "eval") -> dict:
    """f and g accuracy, fidelity, MSE, LPIPS, reconstruction identification and the loss terms on dataset[indices];
    with `features` ('classifier'|'inception') also FID and KID between originals and reconstructions."""
    from viscoin_core.eval import metrics
    extractor = None
    if features == "inception":
        extractor = metrics.inception_extractor(trainer.device)
    elif features == "classifier":
        extractor = metrics.classifier_extractor(trainer.f, trainer.device)
    trainer.train_mode(False)
    f_logits, g_logits, labels, mse, lp, feats_real, feats_rec, thumbs, thumbs_rec = [], [], [], [], [], [], [], [], []
    sums, n = {}, 0
    with torch.no_grad():
        for start in tqdm(range(0, len(indices), batch_size), desc=desc, leave=False):
            items = [dataset[i] for i in indices[start:start + batch_size]]
            x = torch.stack([im for im, _ in items]).to(trainer.device)
            total, terms, out = trainer.loss(x, iteration=trainer.cfg.loss_warmup)
            for k, v in {"total": total, **terms}.items():
                sums[k] = sums.get(k, 0.0) + float(v) * len(x)
            n += len(x)
            x_rec = out["x_rec"].float()
            f_logits.append(out["f_logits"].float().cpu())
            g_logits.append(out["g_logits"].float().cpu())
            labels.append(torch.tensor([label for _, label in items]))
            mse.append(metrics.mse(x_rec, x).cpu())
            lp.append(out["lpips"].float().cpu())
            thumbs.append(metrics.thumbnails(x).cpu())
            thumbs_rec.append(metrics.thumbnails(x_rec).cpu())
            if extractor is not None:
                feats_real.append(extractor(x).double().cpu())
                feats_rec.append(extractor(x_rec).double().cpu())
    trainer.train_mode(True)
    f_logits, g_logits, labels = torch.cat(f_logits), torch.cat(g_logits), torch.cat(labels)
    result = {"f_accuracy": metrics.accuracy(f_logits, labels), "g_accuracy": metrics.accuracy(g_logits, labels),
              "fidelity": metrics.fidelity(g_logits, f_logits), "mse": float(torch.cat(mse).mean()),
              "lpips": float(torch.cat(lp).mean()), "n_images": n,
              **{f"loss_{k}": v / n for k, v in sums.items()}}
    if n >= 2:
        result.update(metrics.reconstruction_identification(torch.cat(thumbs_rec), torch.cat(thumbs), labels))
    if extractor is not None and n >= 2:
        real, rec = torch.cat(feats_real), torch.cat(feats_rec)
        result["fid"] = metrics.fid_from_features(real, rec)
        result["kid"], result["kid_std"] = metrics.kid_from_features(real, rec, subset_size=min(1000, n))
        result["fid_features"] = features
    return result


def _eval_indices(n: int, count: int, seed: int) -> list[int]:
    """A fixed random subset of the test split (the same at every evaluation of a run)."""
    if count >= n:
        return list(range(n))
    gen = torch.Generator().manual_seed(seed * 4_000_037 + 1)
    return sorted(torch.randperm(n, generator=gen)[:count].tolist())


# ---------------------------------------------------------------------------------------------
# The run

def _model_record(cfg: ViscoinConfig, trainer: Trainer, class_names: list[str]) -> dict:
    """What viscoin.pt holds: config, class names, the trained parts, and f/G when they were random."""
    return {"config": to_dict(cfg), "class_names": list(class_names), "n_classes": len(class_names),
            **{k: _cpu_state(m) for k, m in trainer.parts.items()}, **trainer.frozen_record}


def train_viscoin(config: ViscoinConfig | Mapping[str, Any] | str | Path, run_dir: str | Path,
                  stop_after: int | None = None) -> dict:
    """Train (or resume) a VisCoIN run in `run_dir`; returns the final metrics.

    `stop_after` ends this call after that many completed iterations without the final steps (as an
    interruption would); calling again resumes. A finished run returns its metrics.json.
    """
    cfg = as_config(config)
    check_sources(cfg)   # a missing f, G or data file fails before a run directory or a cache is made
    run_dir = loop.prepare_run_dir(run_dir, cfg)
    done = loop.read_metrics(run_dir)
    if done is not None and (run_dir / FINAL).exists():
        return done
    device = loop.pick_device(cfg.device)
    if device.type == "cpu":
        loop.keep_freed_memory()   # halves a CPU step; see its docstring
    loop.seed_everything(cfg.seed)
    train_set, test_set, cache_dir = load_data(cfg)
    f = build_f(cfg, train_set.n_classes)
    G = build_G(cfg, train_set.resolution)
    parts = build_parts(cfg, f, G, train_set.n_classes)
    from viscoin_core.eval.metrics import build_lpips
    trainer = Trainer(cfg, f, G, parts, build_lpips(cfg.lpips_backbone), device)

    start, saved = 0, None     # saved: what the last (finite) checkpoint written holds
    ckpt = loop.load_checkpoint(run_dir)
    if ckpt is not None:
        start = trainer.restore(ckpt)
        saved = f"iteration {start}"
        loop.truncate_log(run_dir / "log.jsonl", start)
        if start == cfg.iterations:   # killed in the final steps: their evaluation is made again
            _drop_final_record(run_dir / "log.jsonl", cfg.iterations)
        del ckpt
    elif (run_dir / "log.jsonl").exists():
        (run_dir / "log.jsonl").unlink()   # lines of a run killed before its first checkpoint
    stop = cfg.iterations if stop_after is None else min(cfg.iterations, stop_after)
    eval_idx = _eval_indices(len(test_set), cfg.eval_subset, cfg.seed)
    eval_batch = max(1, cfg.batch_real + cfg.batch_fake)

    loader = DataLoader(_SeededItems(train_set),
                        batch_sampler=IterationBatches(len(train_set), cfg.batch_real, cfg.seed, start, stop),
                        num_workers=cfg.workers, pin_memory=trainer.cuda,
                        # its own generator: creating the iterator must not draw from the global RNG
                        generator=torch.Generator().manual_seed(cfg.seed))
    log_path = run_dir / "log.jsonl"
    trainer.train_mode(True)
    it = start
    bar = tqdm(total=cfg.iterations, initial=start, desc="VisCoIN", dynamic_ncols=True)
    tic = time.perf_counter()
    for it, (x_real, _) in enumerate(loader, start=start):
        z = synthetic_z(cfg, it, trainer.G.z_dim)
        try:
            terms = trainer.step(x_real, z, it)
        except loop.NonFiniteLoss as err:
            # nothing is written: the checkpoint on disk is the last finite state
            raise loop.stop_message(err, run_dir / loop.CHECKPOINT, saved) from None
        done_its = it + 1
        bar.update(1)
        if done_its % cfg.log_every == 0 or done_its == cfg.iterations:
            now = time.perf_counter()
            loop.append_jsonl(log_path, {"iteration": done_its, "split": "train", "lr": learning_rate(cfg, it),
                                         "seconds_per_iteration": (now - tic) / cfg.log_every, **terms})
            tic = now
            bar.set_postfix(loss=f"{terms['total']:.4f}")
        if done_its % cfg.eval_every == 0 and done_its < cfg.iterations:
            rng = loop.rng_state()
            result = evaluate_images(trainer, test_set, eval_idx, eval_batch, desc="test subset")
            loop.set_rng_state(rng)   # evaluation must not shift the training stream
            loop.append_jsonl(log_path, {"iteration": done_its, "split": "test", **result})
        if done_its % cfg.checkpoint_every == 0 or done_its == stop:
            try:   # save_atomic refuses a state holding NaN/inf, so the old checkpoint stays
                loop.save_atomic(trainer.state(done_its, loop.rng_state()), run_dir / loop.CHECKPOINT, finite=True)
            except loop.NonFiniteLoss as err:
                raise loop.stop_message(err, run_dir / loop.CHECKPOINT, saved) from None
            saved = f"iteration {done_its}"
    bar.close()
    if stop < cfg.iterations:
        return {"iteration": stop, "finished": False}

    loop.save_atomic(_model_record(cfg, trainer, train_set.class_names), run_dir / FINAL, finite=True)
    n_final = len(test_set) if cfg.final_eval_images == 0 else min(cfg.final_eval_images, len(test_set))
    # a seeded random subset (the split may be ordered by class); all of it when final_eval_images is 0
    final_idx = _eval_indices(len(test_set), n_final, cfg.seed)
    result = evaluate_images(trainer, test_set, final_idx, eval_batch, features=cfg.fid_features,
                             desc="final evaluation")
    loop.append_jsonl(log_path, {"iteration": cfg.iterations, "split": "test", **result})
    metrics = {k: result[k] for k in ("f_accuracy", "g_accuracy", "fidelity", "mse", "lpips")}
    metrics.update({k: result[k] for k in ("fid", "kid") if k in result})
    metrics.update({"lpips_backbone": cfg.lpips_backbone, "fid_features": cfg.fid_features,
                    "n_test_images": n_final, "iterations": cfg.iterations, "cache_dir": str(cache_dir)})
    loop.write_metrics(run_dir, metrics)
    return metrics


def check_sources(cfg: ViscoinConfig) -> None:
    """Raise ConfigError naming the parameter when the f, G, data or cache_dir it names does not exist."""
    wanted = {"f": "f.pt", "G": "G.pt"}
    for key in ("f", "G"):
        value = getattr(cfg, key)
        if value == "random":
            continue
        path = _resolve(value)
        target = path / wanted[key] if path.is_dir() else path
        if not target.is_file():
            raise ConfigError(f"parameter '{key}' = {value!r}: {target} does not exist; train that stage first "
                              "or use 'random'")
    if cfg.data and not _resolve(cfg.data).is_file():
        raise ConfigError(f"parameter 'data' = {cfg.data!r}: {_resolve(cfg.data)} does not exist")
    if cfg.cache_dir and not (_resolve(cfg.cache_dir) / "manifest.json").is_file():
        raise ConfigError(f"parameter 'cache_dir' = {cfg.cache_dir!r}: {_resolve(cfg.cache_dir)} holds no "
                          "manifest.json; prepare it first (python -m viscoin_core.data.prepare) or set 'data'")


def _drop_final_record(log_path: Path, iterations: int) -> None:
    """Remove the final evaluation's line (split 'test' at the last iteration) from a run's log."""
    kept = [r for r in loop.read_jsonl(log_path) if not (r.get("split") == "test" and r.get("iteration") == iterations)]
    loop.write_bytes_atomic(log_path, "".join(json.dumps(r) + "\n" for r in kept).encode())


def load_viscoin(run_dir: str | Path, device: str | torch.device = "cpu") -> dict:
    """The trained system of a run directory: {'f', 'G', 'psi', 'theta', 'omega', 'config', 'class_names'},
    every module in eval mode on `device`. Reads viscoin.pt, or the last checkpoint of an unfinished run.
    A file that is not weights-only or holds NaN/inf is refused (CheckpointError naming it)."""
    run_dir = Path(run_dir)
    record = loop.load_checkpoint(run_dir, FINAL)
    config_path = run_dir / "config.json"
    if record is None:
        record = loop.load_checkpoint(run_dir)
        if record is None or not config_path.exists():
            raise FileNotFoundError(f"{run_dir} holds neither {FINAL} nor a checkpoint of a VisCoIN run")
        import json
        record["config"] = json.loads(config_path.read_text())["config"]
    cfg = parse_config(ViscoinConfig, record["config"], source=str(run_dir / "config.json"))
    class_names = record.get("class_names")
    n_classes = record["theta"]["linear.weight"].shape[0]
    if "f_random" in record:
        f = build_classifier(**record["f_random"]["kwargs"])
        f.load_state_dict(record["f_random"]["state_dict"])
    else:
        f = build_f(cfg, n_classes)
    if "G_random" in record:
        from viscoin_core.nets.stylegan2 import Generator
        G = Generator(**record["G_random"]["kwargs"])
        G.load_state_dict(record["G_random"]["state_dict"])
    else:
        G = load_generator_file(cfg.G)
    parts = build_parts(cfg, f, G, n_classes)
    for k, m in parts.items():
        m.load_state_dict(record[k])
    out = {k: freeze(m).to(device) for k, m in {"f": f, "G": G, **parts}.items()}
    out.update(config=cfg, class_names=class_names)
    return out


def main(argv: list[str] | None = None) -> int:
    args = loop.stage_cli("viscoin", __doc__).parse_args(argv)
    metrics = train_viscoin(loop.stage_config(ViscoinConfig, args), args.run_dir)
    print({k: v for k, v in metrics.items()})
    return 0


if __name__ == "__main__":
    from viscoin_core.cli import run
    sys.exit(run(main))
