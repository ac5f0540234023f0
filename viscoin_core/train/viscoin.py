"""Training VisCoIN: Psi, Theta and Omega on top of a frozen classifier f and a frozen generator G.

Each iteration takes `batch_real` training images (random pad-crop and flip) and `batch_fake`
images sampled from G without a graph, runs f once on all of them (logits and taps, no graph: f is
frozen and its taps are inputs to Psi), then Psi -> Theta (g's logits) and Psi -> Omega -> G.synthesis
(reconstructions), f on the reconstructions, and the loss of `viscoin_core.losses`; Adam updates
Psi, Theta and Omega only. f and G never change: their parameters have requires_grad False, they
stay in eval mode, and gradients reach the reconstructions' inputs only.

Entry points: `train_viscoin(config, run_dir)` (resumes from run_dir/checkpoint.pt when present)
and `python -m viscoin_core.train.viscoin --params FILE --run-dir DIR`. The config, the networks
and `load_viscoin(run_dir)` are `viscoin_core.model`.

Run directory: config.json, log.jsonl (records with "split": "train" every `log_every` iterations,
"split": "test" every `eval_every`; "iteration" counts completed steps), checkpoint.pt (the last one,
written atomically), viscoin.pt (the final model, always written) and metrics.json (f_accuracy,
g_accuracy, fidelity, mse, lpips, fid, kid on the test split, plus lpips_backbone and fid_features).

Resuming is exact on CPU: the batch of iteration i is a pure function of (seed, i) (epoch
permutations seeded by epoch, each sample's augmentation seeded by its position in the stream), z
(and, with style mixing, the second z and the crossovers) is drawn from a generator seeded by
(seed, i), and the checkpoint restores models, optimiser, the iteration and every global RNG state.
The learning rate is a pure function of the iteration.

Latent regression (`latent_regression_weight` > 0; not in the paper, off by default): the synthetic
images' latents are known, so Omega's style vectors for them are regressed onto the style vectors
G drew them from. In 'w+' the synthetic samples are style-mixed (`synthetic_mix`) so that the targets
differ between style vectors. With the weight at 0 nothing is drawn or computed for it.

Speed: channels_last convolution nets, LPIPS computed once per step, reconstructions through G's
unfused modulated convolutions (gradients reach ws only), fused Adam; on CUDA bf16 autocast
(`amp: auto`) and optional `compile`. On CPU the step runs in float32 unless `amp: bf16`.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Mapping

import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm import tqdm   # text bars: a widget bar shows "model not found" once its page is reloaded

from viscoin_core import losses, runs, streams
from viscoin_core.config import ConfigError, resolve_path, to_dict
from viscoin_core.model import FINAL, ViscoinConfig, as_config, build_f, build_G, build_parts, load_data
from viscoin_core.train import loop

LR_DECAY_EVERY, LR_DECAY_FACTOR = 1000, 0.8   # the released code's schedule, second half of training


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
            # the CPU generator only, which is all the augmentation draws from: torch.manual_seed also
            # queues seeds for every accelerator backend, 1 ms a call, 3% of a demo step (8 items)
            torch.default_generator.manual_seed(seed)
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
            gen = streams.generator(self.seed, "viscoin.epoch_order", epoch)
            self._epoch, self._perm = epoch, torch.randperm(self.n, generator=gen)
        return self._perm

    def __len__(self) -> int:
        return max(0, self.stop - self.start)

    def __iter__(self):
        for i in range(self.start, self.stop):
            batch = []
            for pos in range(i * self.batch, (i + 1) * self.batch):
                index = int(self._permutation(pos // self.n)[pos % self.n])
                batch.append((index, streams.stream_seed(self.seed, "viscoin.augment", pos)))
            yield batch


def synthetic_z(cfg: ViscoinConfig, iteration: int, z_dim: int) -> torch.Tensor:
    """The latents of iteration i's synthetic images (B_fake, z_dim), on the CPU, a function of (seed, i)."""
    gen = streams.generator(cfg.seed, "viscoin.fake_z", iteration)
    return torch.randn(cfg.batch_fake, z_dim, generator=gen)


def mixes_styles(cfg: ViscoinConfig) -> bool:
    """Whether the synthetic samples are style-mixed: only for latent regression in W+."""
    return cfg.latent_regression_weight > 0 and cfg.latent_regression_space == "w+"


def synthetic_mix(cfg: ViscoinConfig, iteration: int, z_dim: int, num_ws: int) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Iteration i's style mixing: (second latents (B_fake, z_dim), crossovers (B_fake,) int64 in
    [1, num_ws - 1]; style vectors with index >= the crossover take the second latent's w), or None
    when the samples are not mixed (`mixes_styles`).

    As StyleGAN2's mixing, one crossover per sample, uniform over the interior indices; unlike its
    probability 0.9, every sample is mixed, so every w+ target has two distinct halves. Its own
    stream ('viscoin.fake_mix'), so runs without mixing draw exactly the numbers they drew before.
    """
    if not mixes_styles(cfg):
        return None
    gen = streams.generator(cfg.seed, "viscoin.fake_mix", iteration)
    mix_z = torch.randn(cfg.batch_fake, z_dim, generator=gen)
    crossover = torch.randint(1, max(num_ws, 2), (cfg.batch_fake,), generator=gen)
    return mix_z, crossover


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
        if self.amp and not self.cuda and loop.cpu_has_native_bf16() is False:
            warnings.warn("amp: bf16 on a CPU without native bf16 (no AMX or AVX512-BF16 flag): PyTorch "
                          "emulates it, which may be slower than `amp: off`", stacklevel=2)
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

    def synthetic_ws(self, z: torch.Tensor, mix: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """The style vectors (B, num_ws, w_dim) G maps latents z to (truncated as configured), with no
        graph; with `mix` (from `synthetic_mix`) vectors from each crossover on come from the second latent."""
        with torch.no_grad(), self.autocast:
            ws = self.G.mapping(z.to(self.device), None, truncation_psi=self.cfg.truncation_psi)
            if mix is not None:
                mix_z, crossover = (t.to(self.device) for t in mix)
                ws_mix = self.G.mapping(mix_z, None, truncation_psi=self.cfg.truncation_psi)
                later = torch.arange(ws.shape[1], device=ws.device)[None, :] >= crossover[:, None]
                ws = torch.where(later[:, :, None], ws_mix, ws)
            return ws

    def synthesize_fake(self, ws: torch.Tensor) -> torch.Tensor:
        """Images from G for style vectors ws, with no graph (noise drawn from the global RNG)."""
        with torch.no_grad(), self.autocast:
            return self.run_synthesis(ws, noise_mode="random").float()

    def sample_fake(self, z: torch.Tensor, mix: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """Images from G for latents z (style-mixed with `mix`), with no graph."""
        return self.synthesize_fake(self.synthetic_ws(z, mix))

    def loss(self, x: torch.Tensor, iteration: int, ws_target: torch.Tensor | None = None,
             ) -> tuple[torch.Tensor, dict[str, torch.Tensor], dict]:
        """The total loss on a batch x in [-1, 1] and its terms, and the tensors the metrics need.

        `ws_target` (B_fake, num_ws, w_dim): the style vectors the last B_fake images of x were drawn
        from; with latent_regression_weight > 0 Omega's style vectors for them regress onto it."""
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
                sparsity_mode=cfg.sparsity, orthogonality_mode=cfg.orthogonality,
                latent_weight=cfg.latent_regression_weight, ws_synthetic_target=ws_target,
                f_temperature=cfg.f_temperature,
                ws_synthetic=None if ws_target is None else ws[len(ws) - len(ws_target):])
        return total, terms, {"f_logits": f_logits, "g_logits": g_logits, "x_rec": x_rec, "lpips": lpips_per_image}

    def step(self, x_real: torch.Tensor, z: torch.Tensor, iteration: int,
             mix: tuple[torch.Tensor, torch.Tensor] | None = None) -> dict[str, float]:
        """One optimiser step on B real + B synthetic images (latents z, style-mixed with `mix`);
        returns the loss terms as floats.

        Raises NonFiniteLoss (before touching the parameters) when a term is NaN or inf, and after the
        update when it left a parameter NaN or inf (the caller then writes no checkpoint).
        """
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate(self.cfg, iteration)
        if len(z) and mix is None and mixes_styles(self.cfg):
            raise ValueError("latent regression in w+ needs the synthetic samples' style mixing: pass "
                             "mix=synthetic_mix(cfg, iteration, z_dim, num_ws)")
        x = x_real.to(self.device, non_blocking=True)
        ws_target = None
        if len(z):
            ws_fake = self.synthetic_ws(z, mix)
            x = torch.cat([x, self.synthesize_fake(ws_fake)])
            ws_target = ws_fake if self.cfg.latent_regression_weight > 0 else None
        total, terms, _ = self.loss(x, iteration, ws_target)
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
    with `features` (a `fid_features` value) also FID and KID between originals and reconstructions."""
    from viscoin_core.eval import metrics
    from viscoin_core.eval.passes import fid_kid, identification, image_metrics, image_pass
    extractor = metrics.feature_extractor(features, trainer.f, trainer.device) if features else None

    def batch(x: torch.Tensor) -> dict[str, torch.Tensor]:
        total, terms, out = trainer.loss(x, iteration=trainer.cfg.loss_warmup)
        x_rec = out["x_rec"].float()
        values = {"f_logits": out["f_logits"].float(), "g_logits": out["g_logits"].float(),
                  "mse": metrics.mse(x_rec, x), "lpips": out["lpips"].float(),
                  "thumbs": metrics.thumbnails(x), "thumbs_rec": metrics.thumbnails(x_rec),
                  # each term times the batch size, so the mean over images is sum / n
                  **{f"loss_{k}": torch.tensor([float(v) * len(x)], dtype=torch.float64)
                     for k, v in {"total": total, **terms}.items()}}
        if extractor is not None:
            values.update(real=extractor(x).double(), fake=extractor(x_rec).double())
        return values

    trainer.train_mode(False)
    out = image_pass(batch, dataset, indices, batch_size, trainer.device, desc=desc)
    trainer.train_mode(True)
    n = len(out["labels"])
    result = {**image_metrics(out, out["g_logits"]), "n_images": n,
              **{k: sum(v.tolist()) / n for k, v in out.items() if k.startswith("loss_")}}
    if n >= 2:
        result.update(identification(out))
    if extractor is not None and n >= 2:
        result.update(fid_kid(out["real"], out["fake"], seed=streams.stream_seed(trainer.cfg.seed, "viscoin.kid")))
        result["fid_features"] = features
    return result


def _eval_indices(n: int, count: int, seed: int) -> list[int]:
    """A fixed random subset of the test split (the same at every evaluation of a run)."""
    if count >= n:
        return list(range(n))
    gen = streams.generator(seed, "viscoin.eval_subset")
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
    # With a constant learning rate a longer run is the shorter one continued (batches, latents and
    # evaluations are functions of the iteration), so `iterations` may grow on a finished run.
    run_dir = runs.prepare_run_dir(run_dir, cfg, extendable=("iterations",) if cfg.lr_schedule == "constant" else ())
    done = runs.finished(run_dir, FINAL, "iterations", cfg.iterations)
    if done is not None:
        return done
    device = runs.pick_device(cfg.device)
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
    ckpt = runs.load_checkpoint(run_dir)
    if ckpt is not None:
        start = trainer.restore(ckpt)
        saved = f"iteration {start}"
        runs.truncate_log(run_dir / "log.jsonl", start)
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
                        generator=streams.generator(cfg.seed, "viscoin.loader"))
    log_path = run_dir / "log.jsonl"
    trainer.train_mode(True)
    it = start
    bar = tqdm(total=cfg.iterations, initial=start, desc="VisCoIN", dynamic_ncols=True)
    tic = time.perf_counter()
    for it, (x_real, _) in enumerate(loader, start=start):
        z = synthetic_z(cfg, it, trainer.G.z_dim)
        mix = synthetic_mix(cfg, it, trainer.G.z_dim, trainer.G.num_ws)
        try:
            terms = trainer.step(x_real, z, it, mix)
        except loop.NonFiniteLoss as err:
            # nothing is written: the checkpoint on disk is the last finite state
            raise loop.stop_message(err, run_dir / runs.CHECKPOINT, saved) from None
        done_its = it + 1
        bar.update(1)
        if done_its % cfg.log_every == 0 or done_its == cfg.iterations:
            now = time.perf_counter()
            runs.append_jsonl(log_path, {"iteration": done_its, "split": "train", "lr": learning_rate(cfg, it),
                                         "seconds_per_iteration": (now - tic) / cfg.log_every, **terms})
            tic = now
            bar.set_postfix(loss=f"{terms['total']:.4f}")
        if done_its % cfg.eval_every == 0 and done_its < cfg.iterations:
            rng = loop.rng_state()
            result = evaluate_images(trainer, test_set, eval_idx, eval_batch, desc="test subset")
            loop.set_rng_state(rng)   # evaluation must not shift the training stream
            runs.append_jsonl(log_path, {"iteration": done_its, "split": "test", **result})
        if done_its % cfg.checkpoint_every == 0 or done_its == stop:
            try:   # save_atomic refuses a state holding NaN/inf, so the old checkpoint stays
                runs.save_atomic(trainer.state(done_its, loop.rng_state()), run_dir / runs.CHECKPOINT, finite=True)
            except loop.NonFiniteLoss as err:
                raise loop.stop_message(err, run_dir / runs.CHECKPOINT, saved) from None
            saved = f"iteration {done_its}"
    bar.close()
    if stop < cfg.iterations:
        return {"iteration": stop, "finished": False}

    runs.save_atomic(_model_record(cfg, trainer, train_set.class_names), run_dir / FINAL, finite=True)
    n_final = len(test_set) if cfg.final_eval_images == 0 else min(cfg.final_eval_images, len(test_set))
    # a seeded random subset (the split may be ordered by class); all of it when final_eval_images is 0
    final_idx = _eval_indices(len(test_set), n_final, cfg.seed)
    result = evaluate_images(trainer, test_set, final_idx, eval_batch, features=cfg.fid_features,
                             desc="final evaluation")
    runs.append_jsonl(log_path, {"iteration": cfg.iterations, "split": "test", **result})
    metrics = {k: result[k] for k in ("f_accuracy", "g_accuracy", "fidelity", "mse", "lpips")}
    metrics.update({k: result[k] for k in ("fid", "kid") if k in result})
    metrics.update({"lpips_backbone": cfg.lpips_backbone, "fid_features": cfg.fid_features,
                    "n_test_images": n_final, "iterations": cfg.iterations, "cache_dir": str(cache_dir)})
    runs.write_metrics(run_dir, metrics)
    return metrics


def check_sources(cfg: ViscoinConfig) -> None:
    """Raise ConfigError naming the parameter when the f, G, data or cache_dir it names does not exist."""
    wanted = {"f": "f.pt", "G": "G.pt"}
    for key in ("f", "G"):
        value = getattr(cfg, key)
        if value == "random":
            continue
        path = resolve_path(value)
        target = path / wanted[key] if path.is_dir() else path
        if not target.is_file():
            raise ConfigError(f"parameter '{key}' = {value!r}: {target} does not exist; train that stage first "
                              "or use 'random'")
    if cfg.data and not resolve_path(cfg.data).is_file():
        raise ConfigError(f"parameter 'data' = {cfg.data!r}: {resolve_path(cfg.data)} does not exist")
    if cfg.cache_dir and not (resolve_path(cfg.cache_dir) / "manifest.json").is_file():
        raise ConfigError(f"parameter 'cache_dir' = {cfg.cache_dir!r}: {resolve_path(cfg.cache_dir)} holds no "
                          "manifest.json; prepare it first (python -m viscoin_core.data.prepare) or set 'data'")


def _drop_final_record(log_path: Path, iterations: int) -> None:
    """Remove the final evaluation's line (split 'test' at the last iteration) from a run's log."""
    kept = [r for r in runs.read_jsonl(log_path) if not (r.get("split") == "test" and r.get("iteration") == iterations)]
    runs.write_bytes_atomic(log_path, "".join(json.dumps(r) + "\n" for r in kept).encode())


def main(argv: list[str] | None = None) -> int:
    args = loop.stage_cli("viscoin", __doc__).parse_args(argv)
    metrics = train_viscoin(loop.stage_config(ViscoinConfig, args), args.run_dir)
    print({k: v for k, v in metrics.items()})
    return 0


if __name__ == "__main__":
    from viscoin_core.cli import run
    sys.exit(run(main))
