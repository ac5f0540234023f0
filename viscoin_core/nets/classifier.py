"""The classifier f to be explained: a torchvision ResNet with a new head and three feature taps.

f takes RGB images in [-1, 1] (NCHW, float32) and applies ImageNet normalisation itself, so no other
module ever normalises (docs/ARCHITECTURE.md, data flow). Besides the logits it exposes the outputs of layer2,
layer3 and layer4 (the maps the concept extractor Psi reads) and the pooled penultimate features
(offline FID features, the inputs of the final linear layer).

Checkpoints are plain dicts, {'kwargs': {'arch', 'n_classes'}, 'state_dict', 'class_names'?},
readable with `torch.load(weights_only=True)`.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn
import torchvision

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
TAPS = ("layer2", "layer3", "layer4")


class PretrainedWeightsUnavailable(RuntimeError):
    """ImageNet weights were asked for but cannot be read from the cache or downloaded."""


# Ours, not torchvision's: ResNet-18's stages with one block each (4.9M parameters, 9.8 MB in float16).
# The stand-ins' f (32 px): small enough that pretrained/ ships one per stand-in within git's budget.
SMALL_RESNETS = {"resnet10": [1, 1, 1, 1]}


def _resnet_names() -> list[str]:
    return sorted([*SMALL_RESNETS, *(n for n in torchvision.models.list_models(module=torchvision.models)
                                     if "resnet" in n or "resnext" in n)])


def _resnet(arch: str) -> nn.Module:
    if arch in SMALL_RESNETS:
        return torchvision.models.resnet.ResNet(torchvision.models.resnet.BasicBlock, SMALL_RESNETS[arch])
    return torchvision.models.get_model(arch, weights=None)


def _imagenet_state_dict(arch: str) -> dict:
    """torchvision's ImageNet weights for `arch` (IMAGENET1K_V1, what `pretrained=True` used to give).

    Read from the torch hub cache when present, otherwise downloaded by torchvision; offline, a
    PretrainedWeightsUnavailable names the file and the setting that avoids the download.
    """
    weights_enum = torchvision.models.get_model_weights(arch)
    weights = getattr(weights_enum, "IMAGENET1K_V1", None) or weights_enum.DEFAULT
    filename = Path(weights.url).name
    cached = Path(torch.hub.get_dir()) / "checkpoints" / filename
    if cached.is_file():
        return torch.load(cached, map_location="cpu", weights_only=True)
    try:
        return weights.get_state_dict(progress=True)
    except Exception as err:  # urllib/socket/HTTP errors all mean the same thing here
        raise PretrainedWeightsUnavailable(
            f"ImageNet weights for {arch} ({filename}) are not in {cached.parent} and could not be "
            f"downloaded from {weights.url} ({type(err).__name__}: {err}). Copy the file there, or set "
            "`pretrained: false` to start from random weights.") from err


class Classifier(nn.Module):
    """A torchvision ResNet (any depth/width) with a fresh `n_classes` head.

    Input: images in [-1, 1], (B, 3, H, W) with H, W multiples of 32 for the 3x3 concept grid to be
    meaningful (any size runs). Output: logits (B, n_classes).
    """

    def __init__(self, arch: str = "resnet50", n_classes: int = 200, pretrained: bool = False):
        super().__init__()
        if arch not in _resnet_names():
            raise ValueError(f"unknown classifier arch {arch!r}; choose one of {_resnet_names()}")
        if not isinstance(n_classes, int) or n_classes < 1:
            raise ValueError(f"n_classes must be a positive int, got {n_classes!r}")
        if pretrained and arch in SMALL_RESNETS:
            raise ValueError(f"{arch} has no ImageNet weights; use pretrained: false (or init_from a trained f.pt)")
        net = _resnet(arch)
        if pretrained:
            net.load_state_dict(_imagenet_state_dict(arch))
        self.arch, self.n_classes = arch, n_classes
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
        self.feature_dim = net.fc.in_features
        self.fc = nn.Linear(self.feature_dim, n_classes)
        # Every ResNet doubles the channels per stage, ending at feature_dim.
        self.tap_channels = (self.feature_dim // 4, self.feature_dim // 2, self.feature_dim)
        self.class_names: list[str] | None = None
        # [-1, 1] -> ImageNet-normalised in one affine map: ((x + 1) / 2 - mean) / std.
        mean, std = torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD)
        self.register_buffer("in_scale", (0.5 / std).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("in_shift", ((0.5 - mean) / std).view(1, 3, 1, 1), persistent=False)

    def _trunk(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        x = x * self.in_scale + self.in_shift
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer1(x)
        l2 = self.layer2(x)          # (B, D/4, H/8, W/8)
        l3 = self.layer3(l2)         # (B, D/2, H/16, W/16)
        l4 = self.layer4(l3)         # (B, D, H/32, W/32)
        return {"layer2": l2, "layer3": l3, "layer4": l4}

    def forward_taps(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Logits (B, C) and the maps {'layer2', 'layer3', 'layer4'} Psi reads."""
        taps = self._trunk(x)
        pooled = taps["layer4"].mean(dim=(2, 3))   # (B, D)
        return self.fc(pooled), taps

    def penultimate(self, x: torch.Tensor) -> torch.Tensor:
        """Globally pooled layer4 features (B, feature_dim): the inputs of the head."""
        return self._trunk(x)["layer4"].mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.penultimate(x))


def build_classifier(arch: str = "resnet50", n_classes: int = 200, pretrained: bool = False) -> Classifier:
    """f: torchvision ResNet `arch` with an `n_classes` head, ImageNet-initialised when `pretrained`."""
    return Classifier(arch=arch, n_classes=n_classes, pretrained=pretrained)


def save_classifier(f: Classifier, path: str | Path, class_names: list[str] | None = None) -> None:
    """Write f as {'kwargs', 'state_dict', 'class_names'} (atomic: temporary file, then rename)."""
    from viscoin_core.runs import save_atomic
    names = class_names if class_names is not None else f.class_names
    record = {"kwargs": {"arch": f.arch, "n_classes": f.n_classes},
              "state_dict": {k: v.detach().cpu() for k, v in f.state_dict().items()}}
    if names is not None:
        record["class_names"] = list(names)
    save_atomic(record, path, finite=True)   # a NaN/inf f is never written over a good one


def load_classifier(path: str | Path, map_location: str | torch.device = "cpu") -> Classifier:
    """Read a `save_classifier` file (or a run directory holding f.pt); returns f in eval mode.

    A file that is not weights-only, unreadable or holding NaN/inf raises CheckpointError naming it."""
    path = Path(path)
    if path.is_dir():
        path = path / "f.pt"
    if not path.is_file():
        raise FileNotFoundError(f"classifier checkpoint {path} does not exist")
    from viscoin_core.runs import load_torch
    record = load_torch(path, map_location=map_location)   # refuses non-weights or NaN/inf files, naming them
    if not isinstance(record, dict) or "kwargs" not in record or "state_dict" not in record:
        raise ValueError(f"{path} is not a classifier checkpoint (expected keys 'kwargs' and 'state_dict')")
    f = Classifier(**record["kwargs"])
    f.load_state_dict(record["state_dict"])
    f.class_names = record.get("class_names")
    return f.to(map_location).eval()
