"""Evaluation of a trained VisCoIN run: `evaluate(run_dir)` writes every metric to metrics.json.

Also `python -m viscoin_core.eval --run-dir DIR [--n-images N ...]`. The metric definitions are in
`metrics` (image level) and `concepts` (concept level); docs/ARCHITECTURE.md lists them.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch

# Keys every evaluate() result holds (docs/ARCHITECTURE.md); factor_alignment only on synthetic data,
# concept_localisation only where the test split has part masks (the synthetic stand-ins).
METRIC_KEYS = ("f_accuracy", "g_accuracy", "fidelity", "mse", "lpips", "fid", "kid", "faithfulness",
               "consistency", "top_n_accuracy", "sparsity", "fid_features", "lpips_backbone",
               "identification", "identification_in_class")
RELEVANCE = "relevance.pt"   # what evaluate stores for the figures (see evaluate)


def load_system_and_test_split(run_dir: str | Path, device: str | torch.device = "cpu"):
    """(System, test Dataset, class names) of a trained run; the System also carries `.parts` and `.cache_dir`."""
    from viscoin_core.data import load_split
    from viscoin_core.eval.concepts import system_from_parts
    from viscoin_core.model import load_data, load_viscoin
    parts = load_viscoin(run_dir, device=device)
    cfg = parts["config"]
    cache_dir = load_data(cfg)[2]
    test = load_split(cache_dir, "test")
    system = system_from_parts(parts, noise_mode=cfg.noise_mode)
    system.parts, system.cache_dir = parts, cache_dir
    names = parts.get("class_names") or test.class_names
    return system, test, list(names)


def evaluated(run_dir: str | Path) -> bool:
    """Whether `run_dir` holds what `evaluate` writes, as this version writes it: the concept metrics
    in metrics.json and relevance.pt with the per-image predictions the figures read."""
    from viscoin_core import runs
    run_dir = Path(run_dir)
    metrics = runs.read_metrics(run_dir) or {}
    if "faithfulness" not in metrics or not (run_dir / RELEVANCE).exists():
        return False
    return "predicted" in torch.load(run_dir / RELEVANCE, map_location="cpu", weights_only=True)


def evaluate(run_dir: str | Path, n_images: int | None = None, device: str = "cpu", batch_size: int = 32,
             seed: int = 0, fid_features: str | None = None, lpips_backbone: str | None = None,
             n_train_images: int | None = None, faithfulness_images: int | None = None,
             consistency_samples: int | None = None, consistency_concepts: int | None = None,
             localisation_images: int | None = None, write: bool = True) -> dict:
    """Every metric of docs/ARCHITECTURE.md for the run in `run_dir`, written to its metrics.json, plus
    reconstruction identification (ours: do reconstructions follow their own inputs, beyond the class?).

    n_images: test images used (a fixed random subset; default: the run's `eval_images`, and all
    when that is null too). n_train_images: training images
    searched for consistency's most activating samples (default: n_images). faithfulness uses at
    most `faithfulness_images` of the evaluated test images; consistency at most
    `consistency_samples` per split and concept (both default to the run's settings, the paper's 1000
    and 100), and a random subset of `consistency_concepts` eligible concepts (default: the run's
    `consistency_concepts`; all when that is null too). Concept localisation (test splits with part
    masks only) edits at most `localisation_images` of the evaluated images (default: the run's).
    fid_features / lpips_backbone default to the run's config.
    Keys already in metrics.json that are not recomputed (e.g. the trainer's) are kept.
    Also writes relevance.pt beside it, what the figures show: {'r_kc' (C, K), 'class_names', and per
    evaluated test image 'images_index' (into the test split), 'predicted' (g's class), 'labels'}.
    """
    from tqdm import tqdm   # text bars: a widget bar shows "model not found" once its page is reloaded

    from viscoin_core import runs, streams
    from viscoin_core.data import load_split
    from viscoin_core.eval import concepts as C
    from viscoin_core.eval import metrics as M
    from viscoin_core.eval.passes import fid_kid, identification, image_metrics, image_pass

    run_dir = Path(run_dir)
    stages = tqdm(total=7, desc="evaluate", dynamic_ncols=True)
    system, test, class_names = load_system_and_test_split(run_dir, device)
    cfg = system.parts["config"]
    fid_features = fid_features or cfg.fid_features
    lpips_backbone = lpips_backbone or cfg.lpips_backbone
    n_images = n_images or cfg.eval_images
    consistency_concepts = consistency_concepts or cfg.consistency_concepts
    faithfulness_images = faithfulness_images or cfg.faithfulness_images
    consistency_samples = consistency_samples or cfg.consistency_samples
    localisation_images = localisation_images or cfg.localisation_images
    lpips_net = M.build_lpips(lpips_backbone, device)
    extractor = M.feature_extractor(fid_features, system.f, device)
    # An untrained Psi beside the trained one, when there is ground truth to align with.
    with_truth = test.factors is not None or test.attributes is not None
    with_parts = test.part_masks is not None and test.factors is not None
    psi0 = C.reinitialised(system.psi, seed=streams.stream_seed(seed, "eval.untrained_psi")) if with_truth else None
    stages.update(1)

    # One pass over the test images: accuracy, reconstruction metrics, FID features, the concept pool.
    index = C._subset(len(test), n_images, streams.generator(seed, "eval.test_subset"))
    cat = image_pass(_system_batch(system, lpips_net, extractor, psi0, untrained_maps=with_parts), test, index,
                     batch_size, device)
    theta = copy.deepcopy(system.theta).cpu()     # the concept pool lives on the CPU
    g_logits = theta(cat["phi"])
    predicted = g_logits.argmax(dim=1)
    cp = C.ConceptPool(index, cat["phi"], cat["phi_prime"], C.pool(theta, cat["phi"]), predicted, cat["labels"])
    n = len(index)
    kid_seed = streams.stream_seed(seed, "eval.kid")
    result = {**image_metrics(cat, g_logits), **fid_kid(cat["real"], cat["fake"], seed=kid_seed),
              "fid_features": fid_features, "lpips_backbone": lpips_backbone, "n_test_images": n,
              **identification(cat)}
    stages.update(1)

    # Relevance, sparsity, top-N.
    r = C.concept_relevance(cp.phi, theta, cp.predicted)
    r_kc = C.class_relevance(r, cp.predicted, len(class_names))
    result["sparsity"] = C.sparsity(r_kc)
    result["top_n_accuracy"] = C.top_n_accuracy(cp.phi, theta, cp.labels)
    stages.update(1)

    # Faithfulness on at most `faithfulness_images` of the evaluated images (their concepts are in the pool).
    ff = C.faithfulness(system, cp, n_images=faithfulness_images, batch_size=batch_size,
                        seed=streams.stream_seed(seed, "eval.faithfulness"))
    result.update({"faithfulness": ff["faithfulness"], "faithfulness_random": ff["faithfulness_random"],
                   "faithfulness_removed": ff["removed"], "faithfulness_images": ff["n_images"]})
    stages.update(1)

    # Consistency: the most activating training images come from the (non-augmented) train split.
    train = load_split(system.cache_dir, "train")
    train_cp = C.concept_pool(system, _OnDevice(train, device), n_images=n_train_images or n_images,
                              batch_size=batch_size, seed=streams.stream_seed(seed, "eval.train_subset"),
                              desc="train concepts")
    cons = C.consistency(system, _to(train_cp, device), _to(cp, device), r_kc, n_samples=consistency_samples,
                         max_concepts=consistency_concepts, batch_size=batch_size,
                         seed=streams.stream_seed(seed, "eval.consistency"))
    result["consistency"] = cons
    stages.update(1)

    # Alignment with ground truth, beside the untrained Psi.
    if test.factors is not None:
        # the factors the parts' appearance follows are those that define a class
        class_factors = [k for names in (test.part_factors or {}).values() for k in names]
        result["factor_alignment"] = C.factor_alignment(cp.activations, cat["untrained"], test.factors[index],
                                                        test.factor_names, class_factors or None)
    if test.attributes is not None:
        result["attribute_alignment"] = C.attribute_alignment(cp.activations, cat["untrained"],
                                                              test.attributes[index], test.attribute_names)
    if with_parts:
        result["concept_localisation"] = localisation(system, psi0, theta, cp, cat, r_kc, test, localisation_images,
                                                      batch_size, streams.stream_seed(seed, "eval.localisation"))
    stages.update(1)

    if write:
        previous = runs.read_metrics(run_dir) or {}
        runs.write_metrics(run_dir, {**previous, **result})   # write_metrics makes it strict JSON
        runs.save_atomic({"r_kc": r_kc, "class_names": class_names, "images_index": cp.images_index,
                          "predicted": cp.predicted, "labels": cp.labels}, run_dir / RELEVANCE)
    stages.update(1)
    stages.close()
    return result


def localisation(system, psi0, theta, cp, cat: dict, r_kc: torch.Tensor, test, n_images: int, batch_size: int,
                 seed: int) -> dict:
    """metrics.json's `concept_localisation`: the trained system's (mean, median, n, per_part,
    concepts) beside the untrained Psi's (untrained_mean, untrained_median, untrained_n,
    untrained_per_part), on the same `n_images` of the evaluated images (a seeded subset).

    The untrained system is Psi reinitialised with Theta, Omega and G kept, run through the same
    procedure: its own Phi, so its own predictions, r_{k,c}, top concepts and concept-to-part
    assignment (an untrained concept has no part of its own to inherit from the trained one).
    """
    import numpy as np

    from viscoin_core.eval import concepts as C
    rows = C._subset(len(cp.phi), n_images, torch.Generator().manual_seed(seed))
    masks = torch.from_numpy(np.stack([np.asarray(test.part_masks[int(cp.images_index[r])]) for r in rows]))
    truth = dict(part_names=test.part_names, factors=test.factors[cp.images_index], factor_names=test.factor_names,
                 part_factors=test.part_factors, batch_size=batch_size)
    ours = C.concept_localisation(system, cp, r_kc, rows, masks, **truth)
    cp0, r0_kc = _untrained_pool(theta, cp, cat, n_classes=r_kc.shape[0])
    untrained = C.System(system.f, psi0, system.theta, system.decode)
    base = C.concept_localisation(untrained, cp0, r0_kc, rows, masks, **truth)
    return {**{k: ours[k] for k in ("mean", "median", "n", "unchanged", "per_part", "concepts")},
            "untrained_mean": base["mean"], "untrained_median": base["median"], "untrained_n": base["n"],
            "untrained_per_part": base["per_part"], "images": len(rows), "lambda": C.LOCALISATION_LAMBDA}


def _untrained_pool(theta, cp, cat: dict, n_classes: int):
    """(ConceptPool, r_{k,c}) of the untrained Psi on the images of `cp`, from the pass's
    'untrained_phi' and 'untrained_phi_prime', with g's head `theta` (on the CPU, like the pool)."""
    from viscoin_core.eval import concepts as C
    phi0 = cat["untrained_phi"]
    predicted0 = theta(phi0).argmax(dim=1)
    cp0 = C.ConceptPool(cp.images_index, phi0, cat["untrained_phi_prime"], C.pool(theta, phi0), predicted0, cp.labels)
    return cp0, C.class_relevance(C.concept_relevance(phi0, theta, predicted0), predicted0, n_classes)


def _system_batch(system, lpips_net, extractor, psi0=None, untrained_maps: bool = False):
    """What `evaluate` keeps of each batch x: f's logits, MSE, LPIPS, FID features of x and its
    reconstruction, the concept maps, thumbnails, and the untrained Psi's pooled activations (and,
    with `untrained_maps`, its Phi and Phi', which concept localisation edits)."""
    from viscoin_core.eval import concepts as C
    from viscoin_core.eval import metrics as M

    def batch(x: torch.Tensor) -> dict[str, torch.Tensor]:
        f_logits, taps = system.f.forward_taps(x)
        phi, phi_prime = system.psi(taps)
        x_rec = system.reconstruct(phi, phi_prime).float()
        values = {"f_logits": f_logits.float(), "mse": M.mse(x_rec, x), "lpips": M.lpips_distance(x_rec, x, lpips_net),
                  "real": extractor(x).double(), "fake": extractor(x_rec).double(), "phi": phi.float(),
                  "phi_prime": phi_prime.float(), "thumbs": M.thumbnails(x), "thumbs_rec": M.thumbnails(x_rec)}
        if psi0 is not None:
            phi0, phi0_prime = psi0(taps)
            values["untrained"] = C.pool(system.theta, phi0)
            if untrained_maps:
                values["untrained_phi"], values["untrained_phi_prime"] = phi0.float(), phi0_prime.float()
        return values
    return batch


class _OnDevice(torch.utils.data.Dataset):
    """A dataset view whose images land on `device` (concept_pool stacks items as they come)."""

    def __init__(self, dataset, device):
        self.dataset, self.device = dataset, device

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, i):
        image, label = self.dataset[i]
        return image.to(self.device), label


def _to(cp, device):
    from viscoin_core.eval.concepts import ConceptPool
    return ConceptPool(cp.images_index, cp.phi.to(device), cp.phi_prime.to(device), cp.activations.cpu(),
                       cp.predicted.cpu(), cp.labels)
