"""Weights copied into torch's hub cache are used offline, as the README's 'Weights offline' says.

Each test writes a weights file of the right architecture (random values) where the README tells a
user to copy the real one, forbids every download, builds the network and checks it holds exactly
the values of the file. (The classifier's ImageNet file is covered in test_classifier_net.py.)
"""

import pytest
import torch
import torchvision

from viscoin_core.eval import metrics


@pytest.fixture
def offline_hub(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))

    def no_download(*args, **kwargs):
        raise AssertionError("tried to download")
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_download)
    (tmp_path / "checkpoints").mkdir()
    return tmp_path / "checkpoints"


def test_lpips_vgg_reads_vgg16_from_the_hub_cache(offline_hub, monkeypatch):
    vgg = torchvision.models.vgg16()
    with torch.no_grad():
        vgg.features[0].weight.normal_()
    torch.save({k: v.half() for k, v in vgg.state_dict().items()}, offline_hub / metrics.VGG16_WEIGHTS)
    monkeypatch.setattr(metrics, "_LPIPS_BUILT", {})
    net = metrics.build_lpips("vgg")
    first_conv = net.net.slice1[0].weight
    assert torch.equal(first_conv, vgg.features[0].weight.half().float())


def test_fid_inception_reads_its_weights_from_the_hub_cache(offline_hub, monkeypatch):
    import torch_fidelity.feature_extractor_inceptionv3 as fe
    # An Inception of the right architecture with random weights: construct it once without loading.
    monkeypatch.setattr(fe, "load_state_dict_from_url", lambda *a, **k: {})
    monkeypatch.setattr(fe.FeatureExtractorInceptionV3, "load_state_dict", lambda self, sd: None)
    donor = fe.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
    monkeypatch.undo()
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(offline_hub.parent))
    monkeypatch.setattr(fe, "load_state_dict_from_url", lambda *a, **k: pytest.fail("tried to download"))
    torch.save(donor.state_dict(), offline_hub / metrics.INCEPTION_WEIGHTS)
    features = metrics.inception_extractor()
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    donor.eval()
    with torch.no_grad():
        expected = donor(metrics.to_uint8(x))[0].reshape(2, -1)
    assert torch.allclose(features(x), expected, atol=1e-5)


def test_a_hostile_inception_file_is_refused_before_the_full_unpickle(offline_hub):
    # torch-fidelity reads the file with weights_only=False; ours reads it safely first.
    marker = offline_hub / "code_ran"

    class Hostile:
        def __reduce__(self):
            return (open, (str(marker), "w"))
    torch.save({"x": Hostile()}, offline_hub / metrics.INCEPTION_WEIGHTS)
    with pytest.raises(metrics.WeightsUnavailable, match="not a plain weights file"):
        metrics.inception_extractor()
    assert not marker.exists()


def test_random_inception_needs_no_file_and_is_the_same_every_time(offline_hub, monkeypatch):
    import torch_fidelity.feature_extractor_inceptionv3 as fe
    monkeypatch.setattr(fe, "load_state_dict_from_url", lambda *a, **k: pytest.fail("tried to download"))
    x = torch.rand(3, 3, 64, 64) * 2 - 1
    a = metrics.feature_extractor("inception_random")(x)
    b = metrics.feature_extractor("inception_random")(x)
    assert a.shape == (3, 2048) and torch.equal(a, b) and a.std() > 0
    assert not any(offline_hub.iterdir())   # nothing was read from or written to the hub cache
