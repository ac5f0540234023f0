"""Image-level metrics: accuracy, fidelity, MSE, LPIPS, FID and KID (docs/ARCHITECTURE.md lists the definitions), and
reconstruction identification (not in the paper: whether reconstructions follow their own inputs).

Images are RGB float tensors in [-1, 1], NCHW (docs/ARCHITECTURE.md, data flow). FID and KID compare two sets of
feature vectors; the features come from one of two extractors, named `fid_features` in every
output:

- `inception`: the standard FID Inception-v3 (torch-fidelity's port, loaded through torchmetrics).
  Images are converted to uint8 in [0, 255] right before it, which is what that network expects.
  Its weights download once on a connected machine; offline a clear error names the file.
- `classifier`: the pooled penultimate features of the classifier f (`f.penultimate(x)`). Needs no
  download, so CPU profiles and tests use it. Its numbers are not comparable with Inception FIDs.

FID and KID themselves are computed here in closed form from the features (float64), so the same
code serves both extractors and the cache of a real split's features; tests check them against
torchmetrics' FrechetInceptionDistance / KernelInceptionDistance on the same features.
"""

from __future__ import annotations

import copy
import hashlib
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import torch
import torch.nn as nn
from tqdm import tqdm   # text bars: a widget bar shows "model not found" once its page is reloaded

INCEPTION_WEIGHTS = "weights-inception-2015-12-05-6726825d.pth"   # torch-fidelity's FID Inception
VGG16_WEIGHTS = "vgg16-397923af.pth"                               # torchvision's VGG16 for LPIPS-VGG
FID_FEATURES = ("classifier", "inception", "inception_random")
LPIPS_BACKBONES = ("vgg", "random")


class WeightsUnavailable(RuntimeError):
    """Pretrained weights were needed but are neither cached nor downloadable."""


# ----------------------------------------------------------------------------------------------
# Classification metrics


def _predictions(logits_or_preds: torch.Tensor) -> torch.Tensor:
    """(B, C) logits -> (B,) argmax; (B,) or (B, 1) predictions -> (B,)."""
    t = torch.as_tensor(logits_or_preds)
    if t.dim() == 2 and t.shape[1] > 1:
        return t.argmax(dim=1)
    if t.dim() == 2 and t.shape[1] == 1:
        return t[:, 0].long()
    if t.dim() == 1:
        return t.long()
    raise ValueError(f"expected logits (B, C) or predictions (B,) / (B, 1), got shape {tuple(t.shape)}")


def accuracy(logits_or_preds: torch.Tensor, labels: torch.Tensor) -> float:
    """Top-1 accuracy in % (0-100).

    Predictions are flattened to (B,) before comparing, so (B, 1) never broadcasts against (B,)
    labels into a (B, B) comparison (the released code's bug, docs/DISCREPANCIES.md item 9).
    """
    preds = _predictions(logits_or_preds)
    labels = torch.as_tensor(labels).reshape(-1).to(preds.device)
    if preds.shape != labels.shape:
        raise ValueError(f"{preds.numel()} predictions but {labels.numel()} labels")
    if preds.numel() == 0:
        raise ValueError("accuracy of an empty set is undefined")
    return 100.0 * (preds == labels).double().mean().item()


def fidelity(logits_g: torch.Tensor, logits_f: torch.Tensor) -> float:
    """Prediction overlap in %: how often argmax g equals argmax f."""
    return accuracy(logits_g, _predictions(logits_f))


def mse(x_rec: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Per-image mean squared error (B,), on [-1, 1] pixels (average it for the set's MSE)."""
    if x_rec.shape != x.shape:
        raise ValueError(f"shapes differ: {tuple(x_rec.shape)} vs {tuple(x.shape)}")
    return (x_rec.float() - x.float()).pow(2).flatten(1).mean(dim=1)


IDENTIFICATION_SIZE = 32   # identification compares images at most this many pixels wide


def thumbnails(x: torch.Tensor, size: int = IDENTIFICATION_SIZE) -> torch.Tensor:
    """(B, 3, H, W) -> (B, 3, s, s) with s = min(size, H), area-averaged: what identification compares
    (a whole test split at 256 px would not fit in memory; 32 px keeps colours and layout)."""
    if x.shape[-1] <= size:
        return x.float()
    return torch.nn.functional.adaptive_avg_pool2d(x.float(), size)


def reconstruction_identification(x_rec: torch.Tensor, x: torch.Tensor, labels: torch.Tensor) -> dict:
    """How often a reconstruction is nearer (pixel L2) to its own input than to any other input.

    MSE alone cannot tell a reconstruction that follows its input from one that draws the average
    image of the class; this can. Returns percentages (0-100):
      'identification': the own input is the nearest of all N inputs (chance: 100 / N);
      'identification_in_class': the nearest among the inputs of the same class, so a
        reconstruction that only gets the class right scores chance (mean of 100 / class size).
    Ties count as misses. x_rec, x: (N, ...) on any scale (use `thumbnails`); labels: (N,).
    """
    if x_rec.shape != x.shape:
        raise ValueError(f"shapes differ: {tuple(x_rec.shape)} vs {tuple(x.shape)}")
    labels = torch.as_tensor(labels).reshape(-1)
    n = len(x)
    if n < 2 or labels.numel() != n:
        raise ValueError(f"need at least 2 images and one label each, got {n} images and {labels.numel()} labels")
    d = torch.cdist(x_rec.flatten(1).double(), x.flatten(1).double())    # (N rec, N inputs)
    own = d.diagonal().clone()
    same = labels[:, None] == labels[None, :]
    others = d.masked_fill(torch.eye(n, dtype=torch.bool), float("inf"))
    nearest_other = others.amin(dim=1)
    nearest_other_in_class = others.masked_fill(~same, float("inf")).amin(dim=1)
    class_size = same.sum(dim=1).double()
    return {"identification": 100.0 * (own < nearest_other).double().mean().item(),
            "identification_in_class": 100.0 * (own < nearest_other_in_class).double().mean().item(),
            "identification_chance": 100.0 / n,
            "identification_in_class_chance": 100.0 * (1.0 / class_size).mean().item()}


# ----------------------------------------------------------------------------------------------
# LPIPS


def build_lpips(backbone: str = "vgg", device: str | torch.device = "cpu") -> nn.Module:
    """The LPIPS network of the `lpips` package, frozen, in eval mode (a fresh copy on every call).

    'vgg': LPIPS-VGG with ImageNet VGG16 features (torchvision downloads vgg16-397923af.pth once).
    'random': the same architecture with a randomly initialised VGG16 (fixed seed 0) and the
    package's own linear heads; nothing downloads. Its values are not comparable with LPIPS-VGG.
    """
    if backbone not in LPIPS_BACKBONES:
        raise ValueError(f"lpips_backbone {backbone!r} is not one of {list(LPIPS_BACKBONES)}")
    # Building VGG16 (its 100M-parameter classifier included) takes seconds: build once per process.
    if backbone not in _LPIPS_BUILT:
        _LPIPS_BUILT[backbone] = _build_lpips(backbone)
    return copy.deepcopy(_LPIPS_BUILT[backbone]).to(device)


_LPIPS_BUILT: dict[str, nn.Module] = {}


def _build_lpips(backbone: str) -> nn.Module:
    import warnings

    import lpips
    if backbone == "vgg":
        cached = Path(torch.hub.get_dir()) / "checkpoints" / VGG16_WEIGHTS
        try:
            with warnings.catch_warnings():   # lpips still passes torchvision's old `pretrained=`
                warnings.simplefilter("ignore", UserWarning)
                net = lpips.LPIPS(net="vgg", verbose=False)
        except Exception as err:  # urllib/socket/HTTP errors all mean "not available offline"
            raise WeightsUnavailable(
                f"LPIPS-VGG needs torchvision's {VGG16_WEIGHTS} in {cached.parent}, which is missing and "
                f"could not be downloaded ({type(err).__name__}: {err}). Copy the file there, or set "
                "`lpips_backbone: random`.") from err
    else:
        net = _random_lpips()
    net.backbone = backbone
    for p in net.parameters():
        p.requires_grad_(False)
    return net.eval()


def random_lpips_cache() -> Path:
    """Where the random LPIPS network's weights are kept between processes (under TORCH_HOME), named by
    the torch and lpips versions whose RNG and architecture made them."""
    from importlib.metadata import version
    return (Path(torch.hub.get_dir()) / "checkpoints"
            / f"lpips_random_vgg16_seed0_torch{torch.__version__}_lpips{version('lpips')}.pt")


def _random_lpips() -> nn.Module:
    """LPIPS-VGG with the VGG16 drawn from seed 0. Drawing it (the 120M-parameter classifier included,
    then dropped) takes about 4 s on a CPU core, paid by every notebook kernel of a batch; so the first
    draw is saved (`random_lpips_cache`) and later processes build the network without initialising
    it and load those weights (0.2 s). A missing or unreadable file is drawn again and rewritten."""
    import warnings

    import lpips
    cache = random_lpips_cache()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)   # lpips still passes torchvision's old `pretrained=`
        if cache.is_file():
            try:
                with torch.device("meta"):              # the architecture only: nothing drawn or allocated
                    net = lpips.LPIPS(net="vgg", pnet_rand=True, verbose=False)
                net.load_state_dict(torch.load(cache, map_location="cpu", weights_only=True), assign=True)
                return net
            except Exception:  # noqa: BLE001  (a truncated or foreign file: draw the weights again)
                pass
        # The random VGG must be the same in every run, without touching the caller's RNG stream.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            net = lpips.LPIPS(net="vgg", pnet_rand=True, verbose=False)
    from viscoin_core.runs import save_atomic
    try:   # through a temporary file: a kernel reading it beside this one never sees half a file
        cache.parent.mkdir(parents=True, exist_ok=True)
        save_atomic(net.state_dict(), cache)
    except OSError:        # a read-only or full home: every process draws the weights itself
        pass
    return net


def lpips_distance(x_rec: torch.Tensor, x: torch.Tensor, net: nn.Module) -> torch.Tensor:
    """Per-image LPIPS (B,) between two [-1, 1] batches (the range `lpips` expects)."""
    if x_rec.shape != x.shape:
        raise ValueError(f"shapes differ: {tuple(x_rec.shape)} vs {tuple(x.shape)}")
    device = next(net.parameters()).device
    with torch.no_grad():
        return net(x_rec.to(device), x.to(device)).flatten().cpu()


# ----------------------------------------------------------------------------------------------
# FID, KID, precision and recall from features


def precision_recall(real: torch.Tensor, fake: torch.Tensor, k: int = 3) -> dict[str, float]:
    """Improved precision and recall (Kynkaanniemi et al., 2019) of `fake` against `real` features
    (N, D) each, both in [0, 1]: precision, the share of fakes inside some real's k-NN ball (the
    distance to its k-th nearest real neighbour); recall, the share of reals inside some fake's.

    Computed by torch-fidelity's implementation (`metric_prc`), on the features given here."""
    from torch_fidelity.metric_prc import calculate_precision_recall_part
    if k >= min(len(real), len(fake)):
        raise ValueError(f"precision/recall with k = {k} needs more than {k} samples per side, "
                         f"got {len(real)} real and {len(fake)} fake")
    # torch-fidelity's argument order: generated first, real second.
    precision, recall = calculate_precision_recall_part(fake.float(), real.float(), neighborhood=k)
    return {"precision": float(precision), "recall": float(recall)}


def fid_from_features(a: torch.Tensor | np.ndarray, b: torch.Tensor | np.ndarray) -> float:
    """Frechet distance between Gaussians fitted to feature sets a (N, D) and b (M, D).

    ||mu_a - mu_b||^2 + tr(S_a) + tr(S_b) - 2 tr((S_a S_b)^(1/2)), covariances with N - 1, in
    float64. tr((S_a S_b)^(1/2)) is the sum of the square roots of the eigenvalues of S_a S_b
    (real and non-negative up to rounding, as S_a S_b is similar to a PSD matrix).
    """
    a, b = _as_float64(a), _as_float64(b)
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"feature dimensions differ: {a.shape[1]} vs {b.shape[1]}")
    if len(a) < 2 or len(b) < 2:
        raise ValueError(f"FID needs at least 2 samples per set, got {len(a)} and {len(b)}")
    mu_a, mu_b = a.mean(0), b.mean(0)
    s_a, s_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    s_a, s_b = np.atleast_2d(s_a), np.atleast_2d(s_b)
    eig = np.linalg.eigvals(s_a @ s_b)
    tr_sqrt = np.sqrt(np.clip(eig.real, 0, None)).sum()
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(s_a) + np.trace(s_b) - 2 * tr_sqrt)


def _poly_kernel(x: np.ndarray, y: np.ndarray, degree: int, gamma: float, coef: float) -> np.ndarray:
    return (x @ y.T * gamma + coef) ** degree


def kid_from_features(a: torch.Tensor | np.ndarray, b: torch.Tensor | np.ndarray, subsets: int = 100,
                      subset_size: int = 1000, degree: int = 3, gamma: float | None = None,
                      coef: float = 1.0, seed: int = 0) -> tuple[float, float]:
    """Kernel Inception Distance: unbiased MMD^2 with k(x, y) = (gamma x.y + coef)^degree.

    Averaged over `subsets` random subsets of `subset_size` from each set (capped at the smaller
    set's size); gamma defaults to 1 / D. Returns (mean, std over subsets), as torchmetrics does.
    """
    a, b = _as_float64(a), _as_float64(b)
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"feature dimensions differ: {a.shape[1]} vs {b.shape[1]}")
    m = min(subset_size, len(a), len(b))
    if m < 2:
        raise ValueError(f"KID needs at least 2 samples per set, got {len(a)} and {len(b)}")
    gamma = 1.0 / a.shape[1] if gamma is None else gamma
    rng = np.random.default_rng(seed)
    scores = []
    for _ in range(subsets):
        x = a[rng.choice(len(a), m, replace=False)]
        y = b[rng.choice(len(b), m, replace=False)]
        k_xx, k_yy = _poly_kernel(x, x, degree, gamma, coef), _poly_kernel(y, y, degree, gamma, coef)
        k_xy = _poly_kernel(x, y, degree, gamma, coef)
        # Unbiased: the diagonals k(x_i, x_i) are left out of the within-set means.
        within = (k_xx.sum() - np.trace(k_xx) + k_yy.sum() - np.trace(k_yy)) / (m * (m - 1))
        scores.append(within - 2 * k_xy.mean())
    scores = np.asarray(scores)
    return float(scores.mean()), float(scores.std())


def _as_float64(x: torch.Tensor | np.ndarray) -> np.ndarray:
    x = x.detach().cpu().double().numpy() if isinstance(x, torch.Tensor) else np.asarray(x, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"expected a (N, D) feature matrix, got shape {x.shape}")
    return x


# ----------------------------------------------------------------------------------------------
# Feature extractors


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] floats -> uint8 [0, 255] (rounded, clamped), the input FID's Inception expects."""
    return ((x.float() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)


def feature_extractor(features: str, classifier: nn.Module | None = None,
                      device: str | torch.device = "cpu") -> Callable[[torch.Tensor], torch.Tensor]:
    """The FID/KID features a config's `fid_features` names: 'inception' (the standard FID network),
    'inception_random' (its architecture with seeded random weights: the same code path and cost,
    no download, numbers not comparable) or 'classifier' (f's penultimate features)."""
    if features not in FID_FEATURES:
        raise ValueError(f"fid_features {features!r} is not one of {list(FID_FEATURES)}")
    if features == "classifier":
        return classifier_extractor(classifier, device)
    return inception_extractor(device, random_weights=features == "inception_random")


def _random_inception() -> nn.Module:
    """The FID Inception's architecture with weights drawn from seed 0, built without any weights file."""
    from unittest import mock

    import torch_fidelity.feature_extractor_inceptionv3 as fidelity
    from torchmetrics.image.fid import NoTrainInceptionV3
    with torch.random.fork_rng(devices=[]), \
            mock.patch.object(fidelity, "load_state_dict_from_url", lambda *args, **kwargs: {}), \
            mock.patch.object(fidelity.FeatureExtractorInceptionV3, "load_state_dict", lambda self, *a, **k: None):
        torch.manual_seed(0)
        return NoTrainInceptionV3(name="inception-v3-compat", features_list=["2048"])


def inception_extractor(device: str | torch.device = "cpu",
                        random_weights: bool = False) -> Callable[[torch.Tensor], torch.Tensor]:
    """[-1, 1] images -> 2048-d pool3 features of the standard FID Inception (via torchmetrics).

    The weights (torch-fidelity's weights-inception-2015-12-05-6726825d.pth) are read from the torch
    hub cache or downloaded there; offline a WeightsUnavailable names the file and the setting
    (`fid_features: classifier`) that avoids it. `random_weights`: the same network, seeded random
    weights, nothing read or downloaded.
    """
    from torchmetrics.image.fid import NoTrainInceptionV3
    if random_weights:
        net = _random_inception().to(device)
        return lambda x: net(to_uint8(x).to(device)).reshape(len(x), -1)   # (B, 2048)
    cached = Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_WEIGHTS
    if cached.is_file():   # torch-fidelity unpickles the file in full: make sure it holds only tensors
        try:
            torch.load(cached, map_location="cpu", weights_only=True)
        except Exception as err:
            raise WeightsUnavailable(f"{cached} is not a plain weights file ({type(err).__name__}: {err}); "
                                     f"replace it with torch-fidelity's {INCEPTION_WEIGHTS}") from err
    try:
        net = NoTrainInceptionV3(name="inception-v3-compat", features_list=["2048"],
                                 feature_extractor_weights_path=str(cached) if cached.is_file() else None)
    except Exception as err:  # urllib/socket/HTTP errors all mean "not available offline"
        raise WeightsUnavailable(
            f"FID Inception weights {INCEPTION_WEIGHTS} are not in {cached.parent} and could not be "
            f"downloaded ({type(err).__name__}: {err}). Copy the file there, or set "
            "`fid_features: classifier` to use the classifier's penultimate features instead.") from err
    net = net.to(device)

    def features(x: torch.Tensor) -> torch.Tensor:
        return net(to_uint8(x).to(device)).reshape(len(x), -1)   # (B, 2048)
    return features


def classifier_extractor(classifier: nn.Module, device: str | torch.device = "cpu"):
    """[-1, 1] images -> f's pooled penultimate features (B, D)."""
    if classifier is None:
        raise ValueError("fid_features 'classifier' needs the classifier f (pass classifier=...)")
    classifier = classifier.to(device).eval()

    def features(x: torch.Tensor) -> torch.Tensor:
        return classifier.penultimate(x.to(device))
    return features


def _image_batches(images, batch_size: int) -> Iterable[torch.Tensor]:
    """Yield (B, 3, H, W) tensors from a tensor, an iterable of batches or a map-style Dataset.

    Batches (or dataset items) may be tuples/lists whose first element is the image.
    """
    def first(item):
        return item[0] if isinstance(item, (tuple, list)) else item
    if isinstance(images, torch.Tensor):
        yield from images.split(batch_size)
    elif isinstance(images, torch.utils.data.Dataset) and hasattr(images, "__getitem__") and hasattr(images, "__len__"):
        for start in range(0, len(images), batch_size):
            yield torch.stack([first(images[i]) for i in range(start, min(start + batch_size, len(images)))])
    else:
        for batch in images:
            yield first(batch)


def extract_features(images, extractor: Callable[[torch.Tensor], torch.Tensor], max_images: int | None = None,
                     batch_size: int = 64, desc: str = "features") -> torch.Tensor:
    """Run `extractor` over at most `max_images` images; returns (N, D) float64 on the CPU."""
    chunks, n = [], 0
    with torch.no_grad(), tqdm(total=max_images, desc=desc, leave=False) as bar:
        for batch in _image_batches(images, batch_size):
            if max_images is not None:
                batch = batch[: max_images - n]
            if len(batch) == 0:
                break
            chunks.append(extractor(batch).detach().double().cpu())
            n += len(batch)
            bar.update(len(batch))
            if max_images is not None and n >= max_images:
                break
    if not chunks:
        raise ValueError("no images to extract features from")
    return torch.cat(chunks)


def _classifier_fingerprint(classifier: nn.Module | None) -> str:
    """A short hash of f's weights, so a feature cache is never reused with another f."""
    if classifier is None:
        return "none"
    h = hashlib.sha1()
    for name, t in sorted(classifier.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
                 if t.numel() else b"")
    return h.hexdigest()[:16]


def fid_kid(real, fake, features: str = "classifier", classifier: nn.Module | None = None,
            device: str | torch.device = "cpu", max_images: int | None = None,
            cache_path: str | Path | None = None, kid_subsets: int = 100, kid_subset_size: int = 1000,
            batch_size: int = 64, seed: int = 0) -> dict:
    """FID and KID between the real images and the fake ones.

    real, fake: (N, 3, H, W) tensors, iterables of image batches (or of (image, label, ...) tuples),
    or Datasets, all in [-1, 1]. `features` is 'classifier' (f.penultimate, needs `classifier`) or
    'inception'. At most `max_images` of each set are used. When `cache_path` is given, the real
    set's features are stored there and reused on the next call with the same extractor, f weights
    and image count (the real split is the same for every run of a profile).

    Returns {'fid', 'kid', 'kid_std', 'fid_features', 'n_real', 'n_fake'}.
    """
    extractor = feature_extractor(features, classifier, device)
    key = {"fid_features": features, "max_images": max_images,
           "classifier": _classifier_fingerprint(classifier if features == "classifier" else None)}
    real_feats = _read_cache(cache_path, key)
    if real_feats is None:
        real_feats = extract_features(real, extractor, max_images, batch_size, desc="real features")
        if cache_path is not None:
            _write_cache(cache_path, key, real_feats)
    fake_feats = extract_features(fake, extractor, max_images, batch_size, desc="fake features")
    kid, kid_std = kid_from_features(real_feats, fake_feats, kid_subsets, kid_subset_size, seed=seed)
    return {"fid": fid_from_features(real_feats, fake_feats), "kid": kid, "kid_std": kid_std,
            "fid_features": features, "n_real": len(real_feats), "n_fake": len(fake_feats)}


def _read_cache(path, key: dict) -> torch.Tensor | None:
    if path is None or not Path(path).is_file():
        return None
    from viscoin_core.runs import load_torch
    record = load_torch(path)   # a refused or non-finite feature cache is named, not a bare torch error
    return record["features"] if record.get("key") == key else None


def _write_cache(path, key: dict, feats: torch.Tensor) -> None:
    from viscoin_core.runs import save_atomic
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    save_atomic({"key": key, "features": feats}, path)
