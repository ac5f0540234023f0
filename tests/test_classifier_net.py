"""f: shapes of logits and taps, the [-1, 1] -> ImageNet normalisation, checkpoint round trip, offline errors."""

import pytest
import torch
import torchvision

from viscoin_core.nets import classifier as clf
from viscoin_core.nets.classifier import build_classifier, load_classifier, save_classifier


@pytest.mark.parametrize("arch, width", [("resnet18", 512), ("resnet50", 2048)])
@pytest.mark.parametrize("size", [32, 64, 256])
def test_shapes(arch, width, size):
    f = build_classifier(arch, n_classes=7).eval()
    assert f.tap_channels == (width // 4, width // 2, width) and f.feature_dim == width
    x = torch.rand(1, 3, size, size) * 2 - 1
    with torch.no_grad():
        logits, taps = f.forward_taps(x)
        pooled = f.penultimate(x)
    assert logits.shape == (1, 7) and pooled.shape == (1, width)
    for name, channels, stride in zip(("layer2", "layer3", "layer4"), f.tap_channels, (8, 16, 32)):
        assert taps[name].shape == (1, channels, size // stride, size // stride)
    # the three views of f agree
    assert torch.allclose(f(x), logits) and torch.allclose(f.fc(pooled), logits)


def test_imagenet_normalisation_inside():
    """f(x in [-1,1]) equals torchvision's ResNet on ((x+1)/2 - mean)/std with the same weights."""
    torch.manual_seed(1)
    f = build_classifier("resnet18", n_classes=5).eval()
    ref = torchvision.models.resnet18(num_classes=5).eval()
    ref.load_state_dict(f.state_dict())
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    mean = torch.tensor(clf.IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(clf.IMAGENET_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        assert torch.allclose(f(x), ref(((x + 1) / 2 - mean) / std), atol=1e-5)


def test_round_trip(tmp_path):
    f = build_classifier("resnet18", n_classes=3)
    f.train()(torch.rand(4, 3, 32, 32))  # move the BatchNorm running statistics off their init
    save_classifier(f, tmp_path / "f.pt", class_names=["a", "b", "c"])
    record = torch.load(tmp_path / "f.pt", weights_only=True)
    assert record["kwargs"] == {"arch": "resnet18", "n_classes": 3}
    g = load_classifier(tmp_path)  # a run directory works too
    assert g.class_names == ["a", "b", "c"] and not g.training
    for (k, a), (_, b) in zip(f.state_dict().items(), g.state_dict().items()):
        assert torch.equal(a, b), k


def test_bad_arch_and_missing_file(tmp_path):
    with pytest.raises(ValueError, match="resnet50"):
        build_classifier("vgg16")
    with pytest.raises(FileNotFoundError, match="nothing.pt"):
        load_classifier(tmp_path / "nothing.pt")


def test_pretrained_offline_names_file_and_setting(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))

    def no_network(self, *args, **kwargs):
        raise OSError("network unreachable")
    monkeypatch.setattr(torchvision.models.WeightsEnum, "get_state_dict", no_network)
    with pytest.raises(clf.PretrainedWeightsUnavailable, match=r"resnet18-f37072fd\.pth.*pretrained: false"):
        build_classifier("resnet18", n_classes=3, pretrained=True)


def test_pretrained_reads_hub_cache(tmp_path, monkeypatch):
    """A weights file already in the torch hub cache is used without any download."""
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    monkeypatch.setattr(torchvision.models.WeightsEnum, "get_state_dict",
                        lambda *a, **k: pytest.fail("should not download"))
    imagenet = torchvision.models.resnet18()
    (tmp_path / "checkpoints").mkdir()
    torch.save(imagenet.state_dict(), tmp_path / "checkpoints" / "resnet18-f37072fd.pth")
    f = build_classifier("resnet18", n_classes=3, pretrained=True)
    assert torch.equal(f.layer4[1].conv2.weight, imagenet.layer4[1].conv2.weight)
    assert f.fc.out_features == 3
