"""Evaluation of a trained VisCoIN run: `evaluate(run_dir)` writes every metric to metrics.json.

Also `python -m viscoin_core.eval --run-dir DIR [--n-images N ...]`. The metric definitions are in
`metrics` (image level) and `concepts` (concept level); DESIGN section 7 states them.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch

# Keys every evaluate() result holds (DESIGN section 6); factor_alignment only on synthetic data.
METRIC_KEYS = ("f_accuracy", "g_accuracy", "fidelity", "mse", "lpips", "fid", "kid", "faithfulness",
               "consistency", "top_n_accuracy", "sparsity", "fid_features", "lpips_backbone",
               "identification", "identification_in_class")


def load_system_and_test_split(run_dir: str | Path, device: str | torch.device = "cpu"):
    """(System, test Dataset, class names) of a trained run; the System also carries `.parts` and `.cache_dir`."""
    from viscoin_core.data import load_split
    from viscoin_core.eval.concepts import system_from_parts
    from viscoin_core.train.viscoin import load_data, load_viscoin
    parts = load_viscoin(run_dir, device=device)
    cfg = parts["config"]
    cache_dir = load_data(cfg)[2]
    test = load_split(cache_dir, "test")
    system = system_from_parts(parts, noise_mode=cfg.noise_mode)
    system.parts, system.cache_dir = parts, cache_dir
    names = parts.get("class_names") or test.class_names
    return system, test, list(names)


def evaluate(run_dir: str | Path, n_images: int | None = None, device: str = "cpu", batch_size: int = 32,
             seed: int = 0, fid_features: str | None = None, lpips_backbone: str | None = None,
             n_train_images: int | None = None, faithfulness_images: int = 1000,
             consistency_samples: int = 100, consistency_concepts: int | None = None,
             write: bool = True) -> dict:
    """Every metric of DESIGN section 7 for the run in `run_dir`, written to its metrics.json, plus
    reconstruction identification (ours: do reconstructions follow their own inputs, beyond the class?).

    n_images: test images used (a fixed random subset; default: the run's `eval_images`, and all
    when that is null too). n_train_images: training images
    searched for consistency's most activating samples (default: n_images). faithfulness uses at
    most `faithfulness_images` of the evaluated test images; consistency at most
    `consistency_samples` per split and concept, and a random subset of `consistency_concepts`
    eligible concepts (None = all). fid_features / lpips_backbone default to the run's config.
    Keys already in metrics.json that are not recomputed (e.g. the trainer's) are kept.
    Also writes relevance.pt ({'r_kc', 'class_names'}) beside it for the figures.
    """
    from tqdm import tqdm   # text bars: a widget bar shows "model not found" once its page is reloaded

    from viscoin_core.data import load_split
    from viscoin_core.eval import concepts as C
    from viscoin_core.eval import metrics as M
    from viscoin_core.train import loop

    run_dir = Path(run_dir)
    stages = tqdm(total=7, desc="evaluate", dynamic_ncols=True)
    system, test, class_names = load_system_and_test_split(run_dir, device)
    cfg = system.parts["config"]
    fid_features = fid_features or cfg.fid_features
    lpips_backbone = lpips_backbone or cfg.lpips_backbone
    n_images = n_images or cfg.eval_images
    lpips_net = M.build_lpips(lpips_backbone, device)
    extractor = (M.inception_extractor(device) if fid_features == "inception"
                 else M.classifier_extractor(system.f, device))
    stages.update(1)

    # One pass over the test images: accuracy, reconstruction metrics, FID features, the concept pool.
    index = C._subset(len(test), n_images, torch.Generator().manual_seed(seed))
    acc = {k: [] for k in ("f_logits", "labels", "mse", "lpips", "real", "fake", "phi", "phi_prime",
                           "thumbs", "thumbs_rec")}
    with torch.no_grad():
        for chunk in tqdm(index.split(batch_size), desc="test pass", leave=False):
            items = [test[int(i)] for i in chunk]
            x = torch.stack([im for im, _ in items]).to(device)
            f_logits, taps = system.f.forward_taps(x)
            phi, phi_prime = system.psi(taps)
            x_rec = system.reconstruct(phi, phi_prime).float()
            acc["f_logits"].append(f_logits.float().cpu())
            acc["labels"].append(torch.tensor([int(label) for _, label in items]))
            acc["mse"].append(M.mse(x_rec, x).cpu())
            acc["lpips"].append(M.lpips_distance(x_rec, x, lpips_net))
            acc["real"].append(extractor(x).double().cpu())
            acc["fake"].append(extractor(x_rec).double().cpu())
            acc["phi"].append(phi.float().cpu())
            acc["phi_prime"].append(phi_prime.float().cpu())
            acc["thumbs"].append(M.thumbnails(x).cpu())
            acc["thumbs_rec"].append(M.thumbnails(x_rec).cpu())
    cat = {k: torch.cat(v) for k, v in acc.items()}
    theta = copy.deepcopy(system.theta).cpu()     # the concept pool lives on the CPU
    g_logits = theta(cat["phi"])
    predicted = g_logits.argmax(dim=1)
    cp = C.ConceptPool(index, cat["phi"], cat["phi_prime"], C.pool(theta, cat["phi"]), predicted, cat["labels"])
    n = len(index)
    kid, kid_std = M.kid_from_features(cat["real"], cat["fake"], subset_size=min(1000, n), seed=seed)
    result = {
        "f_accuracy": M.accuracy(cat["f_logits"], cat["labels"]), "g_accuracy": M.accuracy(g_logits, cat["labels"]),
        "fidelity": M.fidelity(g_logits, cat["f_logits"]), "mse": float(cat["mse"].mean()),
        "lpips": float(cat["lpips"].mean()), "fid": M.fid_from_features(cat["real"], cat["fake"]),
        "kid": kid, "kid_std": kid_std, "fid_features": fid_features, "lpips_backbone": lpips_backbone,
        "n_test_images": n,
        **M.reconstruction_identification(cat["thumbs_rec"], cat["thumbs"], cat["labels"]),
    }
    stages.update(1)

    # Relevance, sparsity, top-N.
    r = C.concept_relevance(cp.phi, theta, cp.predicted)
    r_kc = C.class_relevance(r, cp.predicted, len(class_names))
    result["sparsity"] = C.sparsity(r_kc)
    result["top_n_accuracy"] = C.top_n_accuracy(cp.phi, theta, cp.labels)
    stages.update(1)

    # Faithfulness on at most `faithfulness_images` of the evaluated images.
    result.update(_faithfulness(system, cp, faithfulness_images, batch_size, seed, device))
    stages.update(1)

    # Consistency: the most activating training images come from the (non-augmented) train split.
    train = load_split(system.cache_dir, "train")
    train_cp = C.concept_pool(system, _OnDevice(train, device), n_images=n_train_images or n_images,
                              batch_size=batch_size, seed=seed + 1, desc="train concepts")
    cons = C.consistency(system, _to(train_cp, device), _to(cp, device), r_kc, n_samples=consistency_samples,
                         max_concepts=consistency_concepts, batch_size=batch_size, seed=seed)
    result["consistency"] = cons
    stages.update(1)

    # Alignment with ground truth, beside an untrained Psi.
    if test.factors is not None or test.attributes is not None:
        untrained = _untrained_activations(system, test, index, batch_size, seed, device)
        if test.factors is not None:
            result["factor_alignment"] = C.factor_alignment(cp.activations, untrained, test.factors[index],
                                                            test.factor_names)
        if test.attributes is not None:
            result["attribute_alignment"] = C.attribute_alignment(cp.activations, untrained, test.attributes[index],
                                                                  test.attribute_names)
    stages.update(1)

    if write:
        previous = loop.read_metrics(run_dir) or {}
        loop.write_metrics(run_dir, {**previous, **_json_ready(result)})
        loop.save_atomic({"r_kc": r_kc, "class_names": class_names}, run_dir / "relevance.pt")
    stages.update(1)
    stages.close()
    return result


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


def _faithfulness(system, cp, n_images: int, batch_size: int, seed: int, device) -> dict:
    from viscoin_core.eval import concepts as C
    g = torch.Generator().manual_seed(seed + 2)
    rows = C._subset(len(cp.phi), n_images, g)
    per_tau = {t: {"ff": [], "ff_random": [], "n_removed": []} for t in C.FAITHFULNESS_TAUS}
    for chunk in rows.split(batch_size):
        out = C.faithfulness_batch(system, cp.phi[chunk].to(device), cp.phi_prime[chunk].to(device),
                                   C.FAITHFULNESS_TAUS, g)
        for t in per_tau:
            for key in per_tau[t]:
                per_tau[t][key].append(out[t][key].cpu())
    summary = C.summarise_faithfulness(per_tau, len(rows))
    return {"faithfulness": summary["faithfulness"], "faithfulness_random": summary["faithfulness_random"],
            "faithfulness_removed": summary["removed"], "faithfulness_images": summary["n_images"]}


@torch.no_grad()
def _untrained_activations(system, test, index, batch_size: int, seed: int, device) -> torch.Tensor:
    """Pooled activations (N, K) of a freshly initialised Psi (same architecture) on the same images."""
    from viscoin_core.eval.concepts import pool, reinitialised
    psi0 = reinitialised(system.psi, seed=seed + 12345)
    acts = []
    for chunk in index.split(batch_size):
        x = torch.stack([test[int(i)][0] for i in chunk]).to(device)
        _, taps = system.f.forward_taps(x)
        acts.append(pool(system.theta, psi0(taps)[0]).cpu())
    return torch.cat(acts)


def _json_ready(value):
    """Tensors/numpy scalars to floats, dict keys to strings, NaN to null (strict JSON), recursively."""
    if isinstance(value, float) and value != value:
        return None
    if isinstance(value, dict):
        return {str(k): _json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(v) for v in value]
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if hasattr(value, "item"):
        return _json_ready(value.item())
    return value
