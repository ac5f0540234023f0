"""A VisCoIN model: its parameters, the networks it is built from, and a trained one read back from its run.

f (the classifier) and G (the generator) are frozen: random ones for tests and smoke runs, or
loaded from files; Psi, Theta and Omega are initialised from the run's seed. `load_viscoin(run_dir)`
rebuilds every network of a run from viscoin.pt (or the last checkpoint of an unfinished run), so
evaluation and figures read a run without importing the trainer (`viscoin_core.train.viscoin`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch
import torch.nn as nn

from viscoin_core import losses, runs, streams
from viscoin_core.config import ConfigError, config_from, param, parse_config, resolve_path
from viscoin_core.nets.classifier import build_classifier, load_classifier
from viscoin_core.nets.viscoin import FUSE_AT_CHOICES, W_BAR_CHOICES, ConceptExtractor, ConceptTranslator, Explainer

FINAL = "viscoin.pt"   # the trained model of a finished run


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
    latent_regression_weight: float = param(0.0, low=0.0, help="weight of the MSE between Omega's style vectors "
                                            "for the synthetic images and the latents G drew them from "
                                            "(not in the paper; 0 = off, the paper)")
    latent_regression_space: str = param("w+", choices=losses.LATENT_REGRESSION_SPACES,
                                         help="'w': one w per sample, no style mixing; 'w+': synthetic samples "
                                         "style-mixed, one target per style vector (with the weight > 0 only)")
    f_temperature: float = param(1.0, low=0.0, low_open=True, help="f's logits are divided by it in both "
                                 "cross-entropies (output fidelity, reconstruction classification); 1 = the paper. "
                                 "A larger value tempers an over-confident f (docs/DISCREPANCIES.md)")
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
                                    "(notebooks 04-06, every metric of metrics.json); null = all. Training ignores it")
    consistency_concepts: int | None = param(None, low=1, help="concepts whose consistency that evaluation measures "
                                             "(a seeded random choice of the eligible ones); null = all eligible")
    faithfulness_images: int = param(1000, low=1, help="at most this many of the evaluated test images measure faithfulness")
    consistency_samples: int = param(100, low=2, help="consistency's most activating images per split and concept (at most)")
    localisation_images: int = param(64, low=1, help="at most this many of the evaluated test images measure concept "
                                     "localisation (synthetic data with part masks only; two reconstructions per "
                                     "image and class top concept)")
    checkpoint_every: int = param(1000, low=1, help="iterations between checkpoints")
    lpips_backbone: str = param("vgg", choices=("vgg", "random"), help="'random' needs no download (not comparable)")
    fid_features: str = param("inception", choices=("inception", "inception_random", "classifier"),
                              help="FID/KID features of the final evaluation (inception_random: no download, not comparable)")
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
    """A ViscoinConfig from itself, a flat mapping or a YAML parameter file (relative to the repository root)."""
    return config_from(ViscoinConfig, config)


def summary(cfg: ViscoinConfig) -> str:
    """Three lines a notebook prints before training: concepts and layers, loss weights, budget."""
    return (f"K = {cfg.n_concepts} concepts; style vectors {cfg.coarse_layer}..{cfg.mid_layer} read Phi, the others Phi'\n"
            f"loss weights: alpha {cfg.alpha}, beta {cfg.beta}, gamma {cfg.gamma}, delta {cfg.delta} "
            f"({cfg.sparsity} sparsity)\n"
            f"w-bar: {cfg.w_bar}; {cfg.iterations} iterations of {cfg.batch_real} real + {cfg.batch_fake} synthetic images")


# ---------------------------------------------------------------------------------------------
# Data

def load_data(cfg: ViscoinConfig):
    """(train set with augmentation, test set, cache dir); prepares the cache from `data` if needed."""
    from viscoin_core.data import load_split
    if cfg.data:
        from viscoin_core.data.prepare import ensure_prepared
        cache_dir = ensure_prepared(str(resolve_path(cfg.data)))
    else:
        cache_dir = resolve_path(cfg.cache_dir)
    return load_split(cache_dir, "train", augment=True), load_split(cache_dir, "test"), Path(cache_dir)


# ---------------------------------------------------------------------------------------------
# Frozen f and G, the trained parts

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
            torch.manual_seed(streams.stream_seed(cfg.seed, "viscoin.init_f"))
            return freeze(build_classifier(cfg.f_arch, n_classes=n_classes))
    f = load_classifier(resolve_path(cfg.f))
    if f.n_classes != n_classes:
        raise ConfigError(f"parameter 'f' = {cfg.f!r}: this classifier has {f.n_classes} classes but the data has "
                          f"{n_classes}; expected a classifier trained on this dataset")
    return freeze(f)


def load_generator_file(path: str) -> nn.Module:
    """G from a native G.pt (file or run directory) or an official network pickle (its G_ema)."""
    from viscoin_core.nets.stylegan2 import load_generator
    path = resolve_path(path)
    return freeze(load_generator(path / "G.pt" if path.is_dir() else path))


def build_G(cfg: ViscoinConfig, resolution: int) -> nn.Module:
    if cfg.G == "random":
        seed = streams.stream_seed(cfg.seed, "viscoin.init_G")
        return random_generator(_random_generator_kwargs(cfg, resolution), seed)
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
        torch.manual_seed(streams.stream_seed(cfg.seed, "viscoin.init_parts"))
        psi = ConceptExtractor(cfg.n_concepts, f.tap_channels, cfg.latent_channels, cfg.fuse_at)
        theta = Explainer(cfg.n_concepts, n_classes)
        omega = ConceptTranslator(cfg.n_concepts, G.num_ws, G.w_dim, cfg.coarse_layer, cfg.mid_layer,
                                  w_bar=cfg.w_bar, w_avg=G.mapping.w_avg, activation=cfg.omega_activation,
                                  lr_multiplier=cfg.omega_lr_multiplier)
    return {"psi": psi, "theta": theta, "omega": omega}


# ---------------------------------------------------------------------------------------------
# A trained run

def load_viscoin(run_dir: str | Path, device: str | torch.device = "cpu") -> dict:
    """The trained system of a run directory: {'f', 'G', 'psi', 'theta', 'omega', 'config', 'class_names'},
    every module in eval mode on `device`. Reads viscoin.pt, or the last checkpoint of an unfinished run.
    A file that is not weights-only or holds NaN/inf is refused (runs.CheckpointError naming it)."""
    run_dir = Path(run_dir)
    record = runs.load_checkpoint(run_dir, FINAL)
    config_path = run_dir / "config.json"
    if record is None:
        record = runs.load_checkpoint(run_dir)
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
