"""Concept-level metrics of a trained VisCoIN system (docs/ARCHITECTURE.md lists the definitions).

Notation as in the paper: Phi(x) (B, K, 3, 3) are the concept maps Psi extracts from f's taps,
Phi'(x) (B, 9K) the extra reconstruction code, g = Theta o Psi the interpretable classifier,
c^ = argmax g(x), W_Theta = theta.linear.weight (C, K), x~ = G(Omega(Phi, Phi')).

- relevance: alpha_k(x) = maxpool(phi_k(x)) * W_Theta[c^, k], r_k(x) = alpha_k / max_l |alpha_l|,
  r_{k,c} = mean of r_k(x) over the test images g assigns to c;
- faithfulness at tau (median over test images of the drop in p_g(c^) when the concepts with
  r_k(x) > tau are switched off), with a baseline that switches off as many random concepts;
- consistency (a linear SVM on f's layer2 features tells x+ from x-), top-N accuracy, sparsity,
  and the alignment of pooled concept activations with ground-truth factors or attributes.

Everything here works on a `System`: four callables/modules, so tests can build toy systems by
hand and `system_from_parts` wraps the trained networks of a run.
"""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from scipy.stats import rankdata
from tqdm import tqdm   # text bars: a widget bar shows "model not found" once its page is reloaded

FAITHFULNESS_TAUS = (0.1, 0.2, 0.4)
SPARSITY_TAUS = (0.2, 0.5, 0.7)
SVM_CS = (0.01, 0.1, 1.0, 5.0)


@dataclass
class System:
    """A trained VisCoIN system as the metrics see it.

    f: the classifier, with `forward(x) -> logits` and `forward_taps(x) -> (logits, {'layer2', ...})`.
    psi: taps -> (phi (B, K, h, w), phi_prime (B, 9K)).
    theta: phi -> logits, with `theta.pool(phi) -> (B, K)` and `theta.linear.weight` (C, K).
    decode: (phi, phi_prime) -> images in [-1, 1] (G.synthesis o Omega).
    """
    f: nn.Module
    psi: Callable
    theta: nn.Module
    decode: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

    @torch.no_grad()
    def concepts(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        _, taps = self.f.forward_taps(x)
        return self.psi(taps)

    @torch.no_grad()
    def g_logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.theta(self.concepts(x)[0])

    @torch.no_grad()
    def reconstruct(self, phi: torch.Tensor, phi_prime: torch.Tensor) -> torch.Tensor:
        return self.decode(phi, phi_prime)

    @torch.no_grad()
    def layer2_features(self, x: torch.Tensor) -> torch.Tensor:
        """f's layer2 output, spatially averaged (B, C2): the consistency SVM's input."""
        return self.f.forward_taps(x)[1]["layer2"].mean(dim=(2, 3))


def system_from_parts(parts: dict, noise_mode: str = "const") -> System:
    """Wrap `load_viscoin(run_dir)`'s dict (f, G, psi, theta, omega) as a System."""
    from viscoin_core.nets.viscoin import reconstruct
    G, omega = parts["G"], parts["omega"]
    for net in (parts["f"], G, parts["psi"], parts["theta"], omega):
        net.eval()
    return System(f=parts["f"], psi=parts["psi"], theta=parts["theta"],
                  decode=lambda phi, phi_prime: reconstruct(G, omega, phi, phi_prime, noise_mode=noise_mode))


def pool(theta: nn.Module, phi: torch.Tensor) -> torch.Tensor:
    """Concept activations (B, K): Theta's own pooling when it has one, else the spatial max."""
    return theta.pool(phi) if hasattr(theta, "pool") else phi.amax(dim=(2, 3))


# ----------------------------------------------------------------------------------------------
# Relevance and sparsity


def concept_contributions(phi: torch.Tensor, theta: nn.Module, predicted: torch.Tensor) -> torch.Tensor:
    """alpha_k(x) = maxpool(phi_k(x)) * W_Theta[c^, k], (B, K)."""
    weight = theta.linear.weight                             # (C, K)
    return pool(theta, phi) * weight[predicted.long()].to(phi.dtype)


def concept_relevance(phi: torch.Tensor, theta: nn.Module, predicted: torch.Tensor) -> torch.Tensor:
    """r_k(x) = alpha_k(x) / max_l |alpha_l(x)|, in [-1, 1], (B, K); an all-zero alpha gives r = 0."""
    alpha = concept_contributions(phi, theta, predicted)
    scale = alpha.abs().amax(dim=1, keepdim=True)
    return torch.where(scale > 0, alpha / scale.clamp_min(torch.finfo(alpha.dtype).tiny), torch.zeros_like(alpha))


def class_relevance(r: torch.Tensor, predicted: torch.Tensor, n_classes: int) -> torch.Tensor:
    """r_{k,c} (C, K): mean of r_k(x) over the x with g(x) = c; NaN rows for classes g never predicts."""
    predicted = predicted.long().reshape(-1)
    sums = torch.zeros(n_classes, r.shape[1], dtype=torch.float64).index_add_(0, predicted, r.double())
    counts = torch.bincount(predicted, minlength=n_classes).double()[:, None]
    return (sums / counts).float()          # 0 / 0 = NaN for unpredicted classes


def sparsity(r_kc: torch.Tensor, taus: Sequence[float] = SPARSITY_TAUS) -> dict[float, float]:
    """Mean over classes (those g predicts at least once) of the number of concepts with r_{k,c} > tau."""
    rows = r_kc[~torch.isnan(r_kc).any(dim=1)]
    if len(rows) == 0:
        raise ValueError("no class is ever predicted: r_{k,c} is undefined everywhere")
    return {float(t): float((rows > t).sum(dim=1).double().mean()) for t in taus}


# ----------------------------------------------------------------------------------------------
# Top-N accuracy


def top_n_sizes(n_concepts: int) -> list[int]:
    """N = 2, 4, 8, ... below K, then K itself."""
    sizes, n = [], 2
    while n < n_concepts:
        sizes.append(n)
        n *= 2
    return sizes + [n_concepts]


@torch.no_grad()
def top_n_accuracy(phi: torch.Tensor, theta: nn.Module, labels: torch.Tensor,
                   sizes: Sequence[int] | None = None) -> dict[int, float]:
    """Accuracy (%) of g when only the N concepts with the largest alpha_k(x) are kept (others zeroed).

    c^ (for alpha) is g's prediction with every concept; N = K gives g's own accuracy.
    """
    from viscoin_core.eval.metrics import accuracy
    K = phi.shape[1]
    predicted = theta(phi).argmax(dim=1)
    order = concept_contributions(phi, theta, predicted).argsort(dim=1, descending=True)   # (B, K)
    out = {}
    for n in sizes or top_n_sizes(K):
        if not 1 <= n <= K:
            raise ValueError(f"top-N size {n} is outside 1..{K}")
        keep = torch.zeros_like(order, dtype=phi.dtype).scatter_(1, order[:, :n], 1.0)
        out[int(n)] = accuracy(theta(phi * keep[:, :, None, None]), labels)
    return out


# ----------------------------------------------------------------------------------------------
# Faithfulness


@torch.no_grad()
def faithfulness_batch(system: System, phi: torch.Tensor, phi_prime: torch.Tensor,
                       taus: Sequence[float] = FAITHFULNESS_TAUS,
                       generator: torch.Generator | None = None) -> dict:
    """FF_x = p_g(c^ | x~) - p_g(c^ | x_rem) for one batch, at every tau, and its random baseline.

    x_rem regenerates x with phi_k = 0 for every k with r_k(x) > tau (Phi' unchanged); the baseline
    zeroes as many concepts, drawn uniformly without replacement from all K, per image.
    Returns {tau: {'ff': (B,), 'ff_random': (B,), 'n_removed': (B,)}} and 'p_rec': p_g(c^ | x~).
    """
    predicted = system.theta(phi).argmax(dim=1)                       # c^ of the original x
    r = concept_relevance(phi, system.theta, predicted)
    p_rec = _p_class(system, system.reconstruct(phi, phi_prime), predicted)
    out = {"p_rec": p_rec}
    B, K = r.shape
    for tau in taus:
        remove = r > tau                                              # (B, K)
        n_removed = remove.sum(dim=1)
        random_remove = torch.zeros_like(remove)
        for i in range(B):
            pick = torch.randperm(K, generator=generator)[: int(n_removed[i])]
            random_remove[i, pick] = True
        p_rem = _p_class(system, system.reconstruct(_zero(phi, remove), phi_prime), predicted)
        p_rand = _p_class(system, system.reconstruct(_zero(phi, random_remove), phi_prime), predicted)
        out[float(tau)] = {"ff": p_rec - p_rem, "ff_random": p_rec - p_rand, "n_removed": n_removed}
    return out


def _zero(phi: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return phi * (~mask).to(phi.dtype)[:, :, None, None]


def _p_class(system: System, images: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    probs = F.softmax(system.g_logits(images), dim=1)
    return probs.gather(1, classes[:, None]).squeeze(1)


def faithfulness(system: System, images, taus: Sequence[float] = FAITHFULNESS_TAUS, n_images: int = 1000,
                 batch_size: int = 32, seed: int = 0) -> dict:
    """Median FF over at most `n_images` test images (a random subset when there are more), per tau.

    `images`: an (N, 3, H, W) tensor or a Dataset of (image, label) in [-1, 1], or the ConceptPool of
    a pass over them (its Phi and Phi' are used as they are, without running f and Psi again).
    Returns {'faithfulness': {tau: median}, 'faithfulness_random': {tau: median},
    'removed': {tau: mean number of concepts switched off}, 'n_images', 'p_rec': p_g(c^ | x~) (n,)}.
    """
    g = torch.Generator().manual_seed(seed)
    index = _subset(len(images.phi) if isinstance(images, ConceptPool) else len(images), n_images, g)
    per_tau = {float(t): {"ff": [], "ff_random": [], "n_removed": []} for t in taus}
    p_rec = []
    for chunk in tqdm(index.split(batch_size), desc="faithfulness", leave=False):
        phi, phi_prime = _concepts_of(system, images, chunk)
        result = faithfulness_batch(system, phi, phi_prime, taus, g)
        p_rec.append(result["p_rec"].cpu())
        for t in per_tau:
            for key in per_tau[t]:
                per_tau[t][key].append(result[t][key].cpu())
    return {**summarise_faithfulness(per_tau, len(index)), "p_rec": torch.cat(p_rec)}


def _concepts_of(system: System, images, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(Phi, Phi') of images[rows] on the system's device: a ConceptPool's own, else from f and Psi."""
    if isinstance(images, ConceptPool):
        device = system.theta.linear.weight.device
        return images.phi[rows].to(device), images.phi_prime[rows].to(device)
    if isinstance(images, torch.Tensor):
        return system.concepts(images[rows])
    return system.concepts(torch.stack([_image(images[int(i)]) for i in rows]))


def summarise_faithfulness(per_tau: dict, n_images: int) -> dict:
    cat = {t: {k: torch.cat(v).double() for k, v in d.items()} for t, d in per_tau.items()}
    return {"faithfulness": {t: float(d["ff"].median()) for t, d in cat.items()},
            "faithfulness_random": {t: float(d["ff_random"].median()) for t, d in cat.items()},
            "removed": {t: float(d["n_removed"].mean()) for t, d in cat.items()},
            "n_images": n_images}


def _subset(n: int, k: int | None, generator: torch.Generator) -> torch.Tensor:
    """All indices when k is None or k >= n, else k random ones (sorted, for sequential reads)."""
    if k is None or k >= n:
        return torch.arange(n)
    return torch.randperm(n, generator=generator)[:k].sort().values


def _image(item) -> torch.Tensor:
    return item[0] if isinstance(item, (tuple, list)) else item


# ----------------------------------------------------------------------------------------------
# Consistency


def consistency_score(train_pos: torch.Tensor, train_neg: torch.Tensor, test_pos: torch.Tensor,
                      test_neg: torch.Tensor, Cs: Sequence[float] = SVM_CS, folds: int = 5,
                      seed: int = 0) -> tuple[float, float]:
    """Test accuracy (%) of a linear SVM separating x+ features from x- features, and the chosen C.

    C is picked from `Cs` by stratified `folds`-fold cross-validation on the training features
    (fewer folds when there are fewer than `folds` samples per side).
    """
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.model_selection import GridSearchCV, StratifiedKFold
    from sklearn.svm import LinearSVC
    x_train = torch.cat([train_pos, train_neg]).double().numpy()
    y_train = np.r_[np.ones(len(train_pos)), np.zeros(len(train_neg))]
    x_test = torch.cat([test_pos, test_neg]).double().numpy()
    y_test = np.r_[np.ones(len(test_pos)), np.zeros(len(test_neg))]
    k = min(folds, len(train_pos), len(train_neg))
    if k < 2:
        raise ValueError(f"consistency needs at least 2 training samples per side, got {len(train_pos)}")
    search = GridSearchCV(LinearSVC(max_iter=20000, random_state=seed), {"C": list(Cs)},
                          cv=StratifiedKFold(k, shuffle=True, random_state=seed))
    with warnings.catch_warnings():
        # Liblinear's iteration cap on tiny or noisy sets; the CV score already says how well it did.
        warnings.simplefilter("ignore", ConvergenceWarning)
        search.fit(x_train, y_train)
    return 100.0 * float(search.score(x_test, y_test)), float(search.best_params_["C"])


@dataclass
class ConceptPool:
    """What one pass of f and Psi over a split gives: maps, codes, activations, g's predictions."""
    images_index: torch.Tensor   # (N,) indices into the split
    phi: torch.Tensor            # (N, K, h, w)
    phi_prime: torch.Tensor      # (N, 9K)
    activations: torch.Tensor    # (N, K) pooled phi
    predicted: torch.Tensor      # (N,) argmax g
    labels: torch.Tensor | None  # (N,)


@torch.no_grad()
def concept_pool(system: System, images, n_images: int | None = None, batch_size: int = 32,
                 seed: int = 0, desc: str = "concepts") -> ConceptPool:
    """Run f and Psi over (a random subset of) a split, keeping Phi, Phi', activations and predictions."""
    index = _subset(len(images), n_images, torch.Generator().manual_seed(seed))
    phis, primes, acts, preds, labels = [], [], [], [], []
    for chunk in tqdm(index.split(batch_size), desc=desc, leave=False):
        if isinstance(images, torch.Tensor):
            batch = images[chunk]
        else:
            items = [images[int(i)] for i in chunk]
            batch = torch.stack([_image(it) for it in items])
            if isinstance(items[0], (tuple, list)) and len(items[0]) > 1:
                labels.append(torch.as_tensor([int(it[1]) for it in items]))
        phi, phi_prime = system.concepts(batch)
        phis.append(phi.cpu())
        primes.append(phi_prime.cpu())
        acts.append(pool(system.theta, phi).cpu())
        preds.append(system.theta(phi).argmax(dim=1).cpu())
    return ConceptPool(index, torch.cat(phis), torch.cat(primes), torch.cat(acts), torch.cat(preds),
                       torch.cat(labels) if labels else None)


@torch.no_grad()
def _edited_features(system: System, cp: ConceptPool, rows: torch.Tensor, k: int, value: float,
                     batch_size: int) -> torch.Tensor:
    """f's pooled layer2 features of G(Omega(phi with phi_k := value everywhere, Phi'))."""
    feats = [system.layer2_features(edited(system, cp.phi[chunk], cp.phi_prime[chunk], k, value)).cpu()
             for chunk in rows.split(batch_size)]
    return torch.cat(feats)


def edited(system: System, phi: torch.Tensor, phi_prime: torch.Tensor, k: int, value: float) -> torch.Tensor:
    """x~ with concept k's whole map set to `value` (phi_k := value everywhere; Phi' and the other
    concepts unchanged): G(Omega(phi, Phi')), (B, 3, H, W) in [-1, 1]. Consistency's edit."""
    phi = phi.clone()
    phi[:, k] = value
    return system.reconstruct(phi, phi_prime)


def consistency(system: System, train: ConceptPool, test: ConceptPool, r_kc: torch.Tensor,
                lam: float = 2.0, n_samples: int = 100, threshold: float = 0.5, Cs: Sequence[float] = SVM_CS,
                folds: int = 5, max_concepts: int | None = None, batch_size: int = 32, seed: int = 0) -> dict:
    """Consistency CC_k of each concept relevant to some class, and their mean and std (%).

    For concept k: the classes with r_{k,c} > threshold; in each split the `n_samples` images g
    assigns to those classes with the largest activation maxpool(phi_k); phi_k^max = the largest of
    those activations (per split); x+ regenerates with phi_k = lam * phi_k^max (the whole map), x-
    with phi_k = 0, Phi' and the other concepts unchanged. A linear SVM on f's spatially averaged
    layer2 features, C by cross-validation on train, separates x+ from x-; CC_k = test accuracy.
    Concepts with no relevant class, or with fewer than 2 samples in a split, are skipped.
    `max_concepts` evaluates a random subset of the eligible concepts (cost grows with each).
    """
    relevant = (torch.nan_to_num(r_kc, nan=-np.inf) > threshold)      # (C, K)
    eligible = [k for k in range(r_kc.shape[1]) if relevant[:, k].any()]
    if max_concepts is not None and len(eligible) > max_concepts:
        g = torch.Generator().manual_seed(seed)
        eligible = sorted(eligible[i] for i in torch.randperm(len(eligible), generator=g)[:max_concepts].tolist())
    scores = {}
    for k in tqdm(eligible, desc="consistency", leave=False):
        classes = relevant[:, k].nonzero().flatten()
        sides = []
        for cp in (train, test):
            members = torch.isin(cp.predicted, classes).nonzero().flatten()
            rows = members[cp.activations[members, k].argsort(descending=True)[:n_samples]]
            if len(rows) < 2:
                break
            phi_max = float(cp.activations[rows, k].max())
            sides.append((_edited_features(system, cp, rows, k, lam * phi_max, batch_size),
                          _edited_features(system, cp, rows, k, 0.0, batch_size)))
        if len(sides) < 2:
            continue
        (tr_pos, tr_neg), (te_pos, te_neg) = sides
        scores[k] = consistency_score(tr_pos, tr_neg, te_pos, te_neg, Cs, folds, seed)[0]
    values = np.array(list(scores.values()))
    return {"mean": float(values.mean()) if len(values) else float("nan"),
            "std": float(values.std()) if len(values) else float("nan"),
            "n_concepts": len(values), "per_concept": {int(k): v for k, v in scores.items()}}


# ----------------------------------------------------------------------------------------------
# Alignment with ground-truth factors and attributes


def spearman_matrix(a: torch.Tensor | np.ndarray, b: torch.Tensor | np.ndarray) -> np.ndarray:
    """Spearman rho between every column of a (N, K) and every column of b (N, J): (K, J).

    Ties get average ranks; a constant column correlates 0 with everything.
    """
    ra = _standardise(rankdata(np.asarray(a, dtype=np.float64), axis=0))
    rb = _standardise(rankdata(np.asarray(b, dtype=np.float64), axis=0))
    return ra.T @ rb / len(ra)


def _standardise(x: np.ndarray) -> np.ndarray:
    std = x.std(axis=0)
    return np.where(std > 0, (x - x.mean(axis=0)) / np.where(std > 0, std, 1), 0.0)


def alignment(activations: torch.Tensor, targets: torch.Tensor, names: Sequence[str] | None = None) -> dict:
    """For each target column j: max over concepts k of |Spearman rho(activation_k, target_j)|.

    Returns {'per_target': {name: value}, 'best_concept': {name: k}, 'mean'}.
    """
    if len(activations) != len(targets):
        raise ValueError(f"{len(activations)} activation rows but {len(targets)} target rows")
    rho = np.abs(spearman_matrix(activations, targets))                 # (K, J)
    names = list(names) if names is not None else [str(j) for j in range(rho.shape[1])]
    if len(names) != rho.shape[1]:
        raise ValueError(f"{rho.shape[1]} target columns but {len(names)} names")
    best = rho.max(axis=0)
    return {"per_target": dict(zip(names, best.tolist())),
            "best_concept": dict(zip(names, rho.argmax(axis=0).tolist())),
            "mean": float(best.mean())}


def reinitialised(module: nn.Module, seed: int = 0) -> nn.Module:
    """A copy of `module` with every layer's parameters drawn afresh (an untrained Psi), on the same device.

    Drawn on the CPU from `seed`, so the result is the same on every device and no global RNG moves.
    """
    device = next(module.parameters()).device
    fresh = copy.deepcopy(module).cpu()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for m in fresh.modules():
            if hasattr(m, "reset_parameters"):
                m.reset_parameters()
    return fresh.to(device)


def factor_alignment(trained: torch.Tensor, untrained: torch.Tensor, factors: torch.Tensor,
                     names: Sequence[str] | None = None, class_factors: Sequence[str] | None = None) -> dict:
    """Factor alignment of the trained concepts beside the same number for an untrained Psi.

    trained, untrained: pooled concept activations (N, K) over the same test images; factors (N, J).
    With `class_factors` (names among `names`: the factors that define a class, e.g. the parts'
    factors, not position or lighting) both also get 'class_mean', the mean over those alone.
    """
    ours, base = alignment(trained, factors, names), alignment(untrained, factors, names)
    result = {"per_factor": ours["per_target"], "best_concept": ours["best_concept"], "mean": ours["mean"],
              "untrained": {"per_factor": base["per_target"], "mean": base["mean"]}}
    if class_factors:
        unknown = sorted(set(class_factors) - set(ours["per_target"]))
        if unknown:
            raise ValueError(f"class factors {unknown} are not among the factors {sorted(ours['per_target'])}")
        result["class_factors"] = list(class_factors)
        result["class_mean"] = float(np.mean([ours["per_target"][k] for k in class_factors]))
        result["untrained"]["class_mean"] = float(np.mean([base["per_target"][k] for k in class_factors]))
    return result


def attribute_alignment(trained: torch.Tensor, untrained: torch.Tensor, attributes: torch.Tensor,
                        names: Sequence[str] | None = None) -> dict:
    """The same against binary attributes (CUB: certainty >= 3; toybirds: part attributes)."""
    ours, base = alignment(trained, attributes.float(), names), alignment(untrained, attributes.float(), names)
    return {"per_attribute": ours["per_target"], "mean": ours["mean"], "untrained_mean": base["mean"]}


# ----------------------------------------------------------------------------------------------
# Concept localisation: does editing a concept change the image where its part is?

LOCALISATION_LAMBDA = 4.0   # the strongest amplification the figures show (viz.figures.LAMBDAS)


def select_concepts(r_kc_row: torch.Tensor, threshold: float | None = 0.5, top_k: int | None = None) -> list[int]:
    """The concepts of one class by relevance: r_{k,c} > threshold, or the `top_k` largest (then by r).

    With both given, top_k wins; the result is ordered by decreasing relevance.
    """
    row = torch.nan_to_num(torch.as_tensor(r_kc_row).float(), nan=-np.inf)
    order = row.argsort(descending=True)
    if top_k is not None:
        return order[:top_k].tolist()
    if threshold is None:
        raise ValueError("give a relevance threshold or top_k")
    return [int(k) for k in order if row[k] > threshold]


def top_concepts(r_kc: torch.Tensor, top_k: int = 3) -> dict[int, list[int]]:
    """{c: the `top_k` concepts of largest r_{k,c}, most relevant first} for every class g predicts
    (the rows of r_kc without NaN), as the figures choose them (`select_concepts`)."""
    rows = ~torch.isnan(r_kc).any(dim=1)
    return {int(c): select_concepts(r_kc[c], top_k=top_k) for c in rows.nonzero().flatten()}


def factor_parts(part_factors: dict[str, Sequence[str]]) -> dict[str, str]:
    """{factor name: part} from a dataset's {part: the factor names its appearance follows}
    (e.g. belly_red -> belly); factors of no part (position, clutter, stain) are absent."""
    return {factor: part for part, factors in part_factors.items() for factor in factors}


def concept_parts(activations: torch.Tensor, factors: torch.Tensor, factor_names: Sequence[str],
                  part_factors: dict[str, Sequence[str]], concepts: Sequence[int] | None = None) -> dict[int, str]:
    """The part each concept goes with: the part owning the factor whose |Spearman rho| with the
    concept's pooled activation (N,) is the largest among all part factors (factor_alignment's
    measure). activations (N, K), factors (N, F) over the same images; `concepts` defaults to all K.
    A concept constant over the images correlates 0 with every factor and gets the first part."""
    owner = factor_parts(part_factors)
    columns = [j for j, name in enumerate(factor_names) if name in owner]
    if not columns:
        raise ValueError(f"none of the factors {list(factor_names)} belongs to a part of {list(part_factors)}")
    concepts = list(range(activations.shape[1])) if concepts is None else list(concepts)
    rho = np.abs(spearman_matrix(activations[:, concepts], factors[:, columns]))   # (len(concepts), J)
    return {int(k): owner[factor_names[columns[int(j)]]] for k, j in zip(concepts, rho.argmax(axis=1))}


@torch.no_grad()
def change_maps(system: System, phi: torch.Tensor, phi_prime: torch.Tensor, k: int, phi_max: float,
                lam: float = LOCALISATION_LAMBDA) -> torch.Tensor:
    """|x~(lam) - x~(0)| summed over RGB, (B, H, W) in [0, 6] (images are [-1, 1]).

    x~(lam) regenerates each image with its whole map phi_k := lam * phi_max (consistency's edit,
    `edited`, not the figures' phi_k x lam), Phi' and the other concepts unchanged, so
    the map does not depend on how strongly the image itself shows concept k.
    """
    on, off = (edited(system, phi, phi_prime, k, value).float() for value in (lam * phi_max, 0.0))
    return (on - off).abs().sum(dim=1)


def localisation(change: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Per image (B,): the share of the change map's mass inside the mask, divided by the mask's
    share of the image. 1: no localisation (a uniform change); 1/s: every change inside a part
    covering s of the image; 0: every change outside. NaN where the mask is empty or nothing changed.

    change (B, H, W) >= 0; masks (B, H, W) bool, at the same size.
    """
    if change.shape != masks.shape:
        raise ValueError(f"change maps {tuple(change.shape)} and masks {tuple(masks.shape)} differ in shape")
    change, masks = change.double(), masks.bool()
    mass = change.flatten(1).sum(dim=1)
    inside = (change * masks).flatten(1).sum(dim=1) / mass
    share = masks.flatten(1).double().mean(dim=1)
    score = inside / share
    return torch.where((share > 0) & (mass > 0), score, torch.full_like(score, float("nan")))


def localisation_pairs(system: System, cp: ConceptPool, rows: torch.Tensor, masks: torch.Tensor,
                       part_names: Sequence[str], concept_part: dict[int, str], classes: dict[int, list[int]],
                       lam: float = LOCALISATION_LAMBDA, batch_size: int = 32) -> list[dict]:
    """The localisation of every (image, concept) pair: image cp row r in `rows` and each concept k
    of classes[c^], c^ = g's class of the image, scored against the mask of concept_part[k].

    masks (len(rows), P, H, W) bool, aligned with `rows`; phi_max of k is its largest pooled
    activation over the pool. Pairs whose part is empty on the image are skipped.
    Returns [{'row', 'concept', 'part', 'localisation'}] (rows are cp rows).
    """
    pairs = []
    device = system.theta.linear.weight.device
    wanted = {k for ks in classes.values() for k in ks}
    for k in sorted(wanted):
        take = [i for i, r in enumerate(rows.tolist()) if k in classes.get(int(cp.predicted[r]), ())]
        p = list(part_names).index(concept_part[k])
        take = [i for i in take if bool(masks[i, p].any())]          # the part is not on this image
        if not take:
            continue
        phi_max = float(cp.activations[:, k].max())
        for chunk in torch.tensor(take).split(batch_size):
            r = rows[chunk]
            change = change_maps(system, cp.phi[r].to(device), cp.phi_prime[r].to(device), k, phi_max, lam).cpu()
            for i, score in zip(chunk.tolist(), localisation(change, torch.as_tensor(masks[chunk, p])).tolist()):
                pairs.append({"row": int(rows[i]), "concept": k, "part": concept_part[k], "localisation": score})
    return pairs


def summarise_localisation(pairs: list[dict]) -> dict:
    """Mean, median and count of the pairs' localisation (NaN ones, where nothing changed, left
    out), overall and per part: {'mean', 'median', 'n', 'unchanged' (the NaN pairs: a concept
    with phi_max = 0 changes nothing), 'per_part': {part: {'mean', 'median', 'n'}}}."""
    def stats(values: list[float]) -> dict:
        v = np.array([x for x in values if not np.isnan(x)], np.float64)
        return {"mean": float(v.mean()) if len(v) else float("nan"),
                "median": float(np.median(v)) if len(v) else float("nan"), "n": int(len(v))}
    parts = sorted({p["part"] for p in pairs})
    return {**stats([p["localisation"] for p in pairs]),
            "unchanged": sum(1 for p in pairs if np.isnan(p["localisation"])),
            "per_part": {part: stats([p["localisation"] for p in pairs if p["part"] == part]) for part in parts}}


def concept_localisation(system: System, cp: ConceptPool, r_kc: torch.Tensor, rows: torch.Tensor,
                         masks: torch.Tensor, part_names: Sequence[str], factors: torch.Tensor,
                         factor_names: Sequence[str], part_factors: dict[str, Sequence[str]], top_k: int = 3,
                         lam: float = LOCALISATION_LAMBDA, batch_size: int = 32) -> dict:
    """Concept localisation of one system on the images cp[rows] (masks (len(rows), P, H, W) aligned
    with rows), a number >= 0 per (image, concept) pair where 1 means no localisation.

    Each class's `top_k` concepts by r_{k,c} (C, K) (the system's own relevance over the pool),
    each concept's part by `concept_parts` over the whole pool (factors (N, F) aligned with cp's
    rows), then `localisation_pairs` and `summarise_localisation`. Also returns 'concepts':
    {k: {'part', 'phi_max', 'mean', 'n'}} for the concepts used, which the figures read back.
    """
    classes = top_concepts(r_kc, top_k)
    used = sorted({k for ks in classes.values() for k in ks})
    concept_part = concept_parts(cp.activations, factors, factor_names, part_factors, used)
    pairs = localisation_pairs(system, cp, rows, masks, part_names, concept_part, classes, lam, batch_size)
    out = summarise_localisation(pairs)
    out["concepts"] = {}
    for k in used:
        scores = [p["localisation"] for p in pairs if p["concept"] == k and not np.isnan(p["localisation"])]
        out["concepts"][k] = {"part": concept_part[k], "phi_max": float(cp.activations[:, k].max()),
                              "mean": float(np.mean(scores)) if scores else float("nan"), "n": len(scores)}
    return out
