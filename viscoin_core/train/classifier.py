"""Fine-tuning the classifier f (Table 1): Adam, optional class-weighted cross entropy, best epoch on validation.

The study fine-tuned an ImageNet ResNet-50 with Adam (lr 1e-4, batch 32): 30 epochs on CUB, 10 epochs
with weight decay 1e-4 and inverse-frequency class weights on NCT-CRC-HE. Here a fixed fraction of
the TRAIN split is held out for validation; the epoch with the best validation accuracy is kept and
only that model ever sees the test split, once, at the end.

Run directory: config.json, log.jsonl (step and epoch records), checkpoint.pt (after every epoch;
an interrupted run resumes from the last finished epoch), best.pt, and at the end f.pt
(`nets.classifier.save_classifier`) and metrics.json (`test_accuracy` = `f_accuracy` in %,
`best_epoch`, `best_val_accuracy`, counts).

    python -m viscoin_core.train.classifier --params params/smoke/classifier.yaml --run-dir runs/smoke/f/toytissue
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm   # text bars: a widget bar shows "model not found" once its page is reloaded

from viscoin_core import streams
from viscoin_core.config import ConfigError, load_config, param, resolve_path
from viscoin_core.nets.classifier import build_classifier, load_classifier, save_classifier
from viscoin_core.runs import (append_jsonl, load_checkpoint, pick_device, prepare_run_dir, read_metrics, run_directory,
                               save_atomic, truncate_log, write_metrics)
from viscoin_core.train import loop
from viscoin_core.runs import NonFiniteLoss, rebuild_hint
from viscoin_core.train.loop import (check_finite, check_finite_parameters, rng_state, seed_everything, set_rng_state,
                                     stop_message)

# A cross entropy this far above log(n_classes) means the weights blew up (lr far too large, say):
# finite, but nothing a resumed run could learn from. Stopping keeps the last sane checkpoint.
DIVERGED_CROSS_ENTROPY = 1000.0


@dataclass
class ClassifierConfig:
    """Parameters of one f fine-tuning run (Table 1)."""
    data: str = param(help="data-stage parameter file (e.g. params/smoke/data_toytissue.yaml), relative to the repo root")
    arch: str = param("resnet50", help="torchvision ResNet name (resnet18, resnet50, ...)")
    pretrained: bool = param(True, help="start from torchvision's ImageNet weights (the study) (needs them cached or a connection)")
    init_from: str | None = param(None, help="optional f.pt (or run directory) to start from; its class count must match")
    epochs: int = param(30, low=1)
    batch_size: int = param(32, low=1)
    lr: float = param(1e-4, low=0, low_open=True)
    lr_schedule: str = param("constant", choices=("constant", "cosine"),
                             help="constant (the study) or cosine decay to 0 over the run (short runs)")
    weight_decay: float = param(0.0, low=0)
    class_weights: bool = param(False, help="cross entropy weighted by normalised inverse class frequency (the study on NCT)")
    augment: bool = param(True, help="random pad-crop and horizontal flip of training images")
    rotate90: bool = param(False, help="also random 90-degree rotations and vertical flips (orientation-free "
                                       "images such as histology tiles)")
    recalibrate_bn: bool = param(False, help="before each validation, recompute BatchNorm statistics on the "
                                             "training part (precise BN; matters only for very short runs)")
    val_fraction: float = param(0.1, low=0, high=0.5, low_open=True, help="part of TRAIN held out to pick the best epoch")
    eval_batch_size: int = param(128, low=1)
    log_every: int = param(20, low=1, help="steps between step records in log.jsonl")
    seed: int = param(0)
    device: str = param("auto")
    num_workers: int = param(0, low=0)


# ---------------------------------------------------------------------------------------------

def count_correct(logits: torch.Tensor, labels: torch.Tensor) -> int:
    """Number of rows whose argmax equals the label. logits (B, C), labels (B,).

    Shapes are checked, so (B, 1) predictions can never broadcast against (B,) labels into a
    (B, B) comparison (the released code's accuracy bug, docs/DISCREPANCIES.md item 9).
    """
    if logits.dim() != 2 or labels.dim() != 1 or logits.shape[0] != labels.shape[0]:
        raise ValueError(f"expected logits (B, C) and labels (B,), got {tuple(logits.shape)} and {tuple(labels.shape)}")
    predictions = logits.argmax(dim=1)    # (B,)
    return int((predictions == labels).sum())


def class_weight_tensor(labels: torch.Tensor, n_classes: int) -> torch.Tensor:
    """Normalised inverse-frequency weights (n_classes,) from the training labels (data.nct.class_weights)."""
    from viscoin_core.data.nct import class_weights
    counts = torch.bincount(labels, minlength=n_classes)
    if (counts == 0).any():
        missing = torch.nonzero(counts == 0).flatten().tolist()
        raise ValueError(f"class weights need every class in the training part; classes {missing} have no images")
    return torch.as_tensor(class_weights(counts.tolist()), dtype=torch.float32)


def split_train_val(n: int, val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Fixed random split of the training indices into (train, validation) parts."""
    order = torch.randperm(n, generator=streams.generator(seed, "classifier.val_split")).tolist()
    n_val = max(1, round(n * val_fraction))
    if n_val >= n:
        raise ValueError(f"val_fraction {val_fraction} leaves no training images out of {n}")
    return sorted(order[n_val:]), sorted(order[:n_val])


@torch.no_grad()
def evaluate(f: torch.nn.Module, dataset, batch_size: int, device: torch.device,
             weight: torch.Tensor | None = None, desc: str = "eval") -> dict:
    """Mean cross entropy and accuracy (%) of f on `dataset` (images in [-1, 1])."""
    was_training = f.training
    f.eval()
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
    loss_sum, correct, n = 0.0, 0, 0
    for x, y in tqdm(loader, desc=desc, leave=False):
        x, y = x.to(device), y.to(device)
        logits = f(x)
        loss_sum += float(F.cross_entropy(logits, y, weight=weight, reduction="sum"))
        correct += count_correct(logits, y)
        n += y.shape[0]
    f.train(was_training)
    return {"loss": loss_sum / max(n, 1), "accuracy": 100.0 * correct / max(n, 1), "n": n}


def learning_rate(config: ClassifierConfig, step: int, total_steps: int) -> float:
    """lr at `step` (0-based) of `total_steps`: constant, or cosine from lr down to 0."""
    if config.lr_schedule == "constant":
        return config.lr
    return config.lr * 0.5 * (1 + math.cos(math.pi * min(step / max(total_steps, 1), 1.0)))


def random_dihedral(x: torch.Tensor) -> torch.Tensor:
    """Each image of x (B, C, H, W) rotated by a random multiple of 90 degrees and flipped vertically
    with probability 1/2 (with the loader's horizontal flip: all 8 symmetries of the square)."""
    k = torch.randint(0, 4, (x.shape[0],))
    flip = torch.rand(x.shape[0]) < 0.5
    out = torch.stack([torch.rot90(img, int(r), dims=(1, 2)) for img, r in zip(x, k)])
    return torch.where(flip.to(x.device)[:, None, None, None], out.flip(2), out)


@torch.no_grad()
def recalibrate_batchnorm(f: torch.nn.Module, dataset, batch_size: int, device: torch.device) -> None:
    """Replace BatchNorm running statistics by their exact averages over `dataset` (precise BN)."""
    norms = [m for m in f.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None                 # cumulative average over the batches below
    was_training = f.training
    f.train()
    for x, _ in DataLoader(dataset, batch_size=batch_size, shuffle=False):
        if x.shape[0] > 1:                # BatchNorm needs two values per channel
            f(x.to(device))
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
    f.train(was_training)


def load_data(config: ClassifierConfig):
    """(train dataset with augmentation, the same without, test dataset) of the configured cache."""
    from viscoin_core.data import load_split
    from viscoin_core.data.prepare import ensure_prepared
    cache_dir = ensure_prepared(resolve_path(config.data))
    return (load_split(cache_dir, "train", augment=config.augment), load_split(cache_dir, "train", augment=False),
            load_split(cache_dir, "test", augment=False))


def build_f(config: ClassifierConfig, n_classes: int, class_names: list[str]) -> torch.nn.Module:
    """f with an `n_classes` head, from ImageNet, from `init_from`, or random."""
    if config.init_from:
        path = resolve_path(config.init_from)
        try:
            f = load_classifier(path)
        except (ValueError, FileNotFoundError, RuntimeError) as err:   # CheckpointError is a ValueError
            raise ConfigError(f"parameter 'init_from' = {config.init_from!r}: {err}{rebuild_hint(path)}") from None
        if f.arch != config.arch:
            raise ConfigError(f"parameter 'init_from' = {config.init_from!r} holds a {f.arch}, but 'arch' = "
                              f"{config.arch!r}{rebuild_hint(path)}")
        if f.n_classes != n_classes:
            raise ConfigError(f"init_from {config.init_from} has {f.n_classes} classes but the data "
                              f"({config.data}) has {n_classes}{rebuild_hint(path)}")
        f.train()
    else:
        f = build_classifier(config.arch, n_classes=n_classes, pretrained=config.pretrained)
    f.class_names = list(class_names)
    return f


def train_classifier(config: ClassifierConfig, run_dir: str | Path) -> dict:
    """Fine-tune f as configured; returns (and writes) metrics.json. Resumes from run_dir's checkpoint.

    A NaN/inf or diverged (> DIVERGED_CROSS_ENTROPY) loss, or NaN/inf weights after an epoch, stop
    the run with NonFiniteLoss naming the step or epoch and the last finite checkpoint, which stays.
    """
    check_sources(config)   # before a run directory or a cache is made
    run_dir = prepare_run_dir(run_dir, config)
    done = read_metrics(run_dir)
    if done is not None and (run_dir / "f.pt").exists():
        return done
    device = pick_device(config.device)
    seed_everything(config.seed)
    train_aug, train_plain, test = load_data(config)
    train_idx, val_idx = split_train_val(len(train_aug), config.val_fraction, config.seed)
    train_part, val_part = Subset(train_aug, train_idx), Subset(train_plain, val_idx)
    f = build_f(config, train_aug.n_classes, train_aug.class_names).to(device)
    weight = class_weight_tensor(train_aug.labels[train_idx], train_aug.n_classes).to(device) if config.class_weights else None
    opt = torch.optim.Adam(f.parameters(), lr=config.lr, weight_decay=config.weight_decay)

    start_epoch, best = 0, {"val_accuracy": -1.0, "epoch": -1}
    state = load_checkpoint(run_dir)
    checkpoint = run_dir / "checkpoint.pt"
    saved = None if state is None else f"epoch {state['epoch'] + 1} of {config.epochs}"
    log_path = run_dir / "log.jsonl"
    if state is not None:
        f.load_state_dict(state["f"])
        opt.load_state_dict(state["opt"])
        start_epoch, best = state["epoch"] + 1, state["best"]
        set_rng_state(state["rng"])
        truncate_log(log_path, state["epoch"], key="epoch")
    elif log_path.exists():
        log_path.unlink()

    # A last batch of one image would break BatchNorm (and weighs one image like a full batch): drop it.
    drop_last = len(train_part) > config.batch_size
    steps_per_epoch = len(train_part) // config.batch_size if drop_last else 1
    step = start_epoch * steps_per_epoch
    for epoch in range(start_epoch, config.epochs):
        started = time.time()
        loader = DataLoader(train_part, batch_size=config.batch_size, shuffle=True, drop_last=drop_last,
                            num_workers=config.num_workers,
                            generator=streams.generator(config.seed, "classifier.epoch_order", epoch))
        f.train()
        loss_sum, correct, n = 0.0, 0, 0
        for x, y in tqdm(loader, desc=f"f epoch {epoch + 1}/{config.epochs}", leave=False):
            if config.rotate90:
                x = random_dihedral(x)
            x, y = x.to(device), y.to(device)
            for group in opt.param_groups:
                group["lr"] = learning_rate(config, step, config.epochs * steps_per_epoch)
            logits = f(x)
            loss = F.cross_entropy(logits, y, weight=weight)
            try:
                check_finite({"cross_entropy": loss}, step, limit=DIVERGED_CROSS_ENTROPY, unit="step")
            except NonFiniteLoss as err:
                raise stop_message(err, checkpoint, saved) from None
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss_sum += float(loss.detach()) * y.shape[0]
            correct += count_correct(logits.detach(), y)
            n += y.shape[0]
            step += 1
            if step % config.log_every == 0:
                append_jsonl(log_path, {"kind": "step", "epoch": epoch, "step": step, "loss": float(loss.detach())})
        if config.recalibrate_bn:
            recalibrate_batchnorm(f, Subset(train_plain, train_idx), config.eval_batch_size, device)
        try:   # before best.pt and checkpoint.pt: neither is replaced by a non-finite model
            check_finite_parameters(f.state_dict().items(), epoch + 1, unit="epoch")
        except NonFiniteLoss as err:
            raise stop_message(err, checkpoint, saved) from None
        val = evaluate(f, val_part, config.eval_batch_size, device, weight, desc="validation")
        record = {"kind": "epoch", "epoch": epoch, "step": step, "train_loss": loss_sum / n,
                  "train_accuracy": 100.0 * correct / n, "val_loss": val["loss"], "val_accuracy": val["accuracy"],
                  "seconds": time.time() - started}
        if val["accuracy"] >= best["val_accuracy"]:     # ties go to the later, longer-trained epoch
            best = {"val_accuracy": val["accuracy"], "epoch": epoch}
            save_classifier(f, run_dir / "best.pt")
        record["best_epoch"] = best["epoch"]
        append_jsonl(log_path, record)
        save_atomic({"epoch": epoch, "f": f.state_dict(), "opt": opt.state_dict(), "best": best,
                     "rng": rng_state()}, checkpoint, finite=True)
        saved = f"epoch {epoch + 1} of {config.epochs}"

    f = load_classifier(run_dir / "best.pt", map_location=device)
    result = evaluate(f, test, config.eval_batch_size, device, desc="test")
    save_classifier(f, run_dir / "f.pt", class_names=train_aug.class_names)
    metrics = {"test_accuracy": result["accuracy"], "f_accuracy": result["accuracy"], "test_loss": result["loss"],
               "best_epoch": best["epoch"] + 1, "best_val_accuracy": best["val_accuracy"], "epochs": config.epochs,
               "n_train": len(train_idx), "n_val": len(val_idx), "n_test": result["n"], "n_classes": f.n_classes,
               "arch": f.arch, "pretrained": config.pretrained, "class_weights": config.class_weights,
               "data": config.data}
    write_metrics(run_dir, metrics)
    return metrics


def check_sources(config: ClassifierConfig) -> None:
    """Raise ConfigError naming the parameter when its data file or init_from does not exist."""
    if not resolve_path(config.data).is_file():
        raise ConfigError(f"parameter 'data' = {config.data!r}: {resolve_path(config.data)} does not exist")
    if config.init_from:
        path = resolve_path(config.init_from)
        target = path / "f.pt" if path.is_dir() else path
        if not target.is_file():
            raise ConfigError(f"parameter 'init_from' = {config.init_from!r}: {target} does not exist"
                              f"{rebuild_hint(target)}")


def default_run_dir(params_file: str | Path, seed: int = 0) -> Path:
    """runs/<profile>/f/<stem>/seed<k> for params/<profile>/<stem>.yaml: where `batch` puts that row's run."""
    params_file = resolve_path(params_file)
    return run_directory(params_file.parent.name, "f", params_file.stem, seed)


def ensure_classifier(source: str | Path) -> Path:
    """The f.pt of `source`: an f.pt, a finished f run directory, or a classifier parameter file, whose
    seed-0 run (`default_run_dir`) is trained first when it has not finished."""
    path = resolve_path(source)
    if path.suffix in (".yaml", ".yml"):
        run_dir = default_run_dir(path)
        if not (run_dir / "f.pt").exists():
            train_classifier(load_config(ClassifierConfig, path, seed=0), run_dir)
        return run_dir / "f.pt"
    f_path = path / "f.pt" if path.is_dir() else path
    if not f_path.is_file():
        raise FileNotFoundError(f"classifier {source!r}: {f_path} does not exist; train it first "
                                "(python -m viscoin_core.train.classifier) or name its parameter file instead")
    return f_path


def main(argv: list[str] | None = None) -> dict:
    args = loop.stage_cli("classifier", __doc__).parse_args(argv)
    config = loop.stage_config(ClassifierConfig, args)
    metrics = train_classifier(config, args.run_dir)
    print(f"test accuracy {metrics['test_accuracy']:.2f}% (best epoch {metrics['best_epoch']}) -> {args.run_dir}")
    return metrics


if __name__ == "__main__":
    from viscoin_core.cli import run
    sys.exit(run(main))
