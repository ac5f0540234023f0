"""Image-level metrics against closed forms, torchmetrics and hand-computed cases."""

import numpy as np
import pytest
import scipy.linalg
import torch
import torch.nn as nn

from viscoin_core.eval import metrics


def test_accuracy_flattens_column_predictions_instead_of_broadcasting():
    labels = torch.tensor([0, 1, 2, 2])
    preds_col = torch.tensor([[0], [1], [1], [2]])     # (B, 1), as the released code had them
    assert metrics.accuracy(preds_col, labels) == pytest.approx(75.0)
    # (B, 1) == (B,) broadcasts to (B, B): sum_c n_pred(c) n_label(c) = 1*1 + 2*1 + 1*2 = 5 of 16 pairs.
    assert (preds_col == labels).float().mean().item() * 100 == pytest.approx(31.25)
    logits = torch.nn.functional.one_hot(preds_col[:, 0], 3).float()
    assert metrics.accuracy(logits, labels) == pytest.approx(75.0)
    with pytest.raises(ValueError, match="predictions but"):
        metrics.accuracy(labels[:3], labels)


def test_fidelity_is_prediction_overlap():
    g = torch.tensor([[2.0, 1.0], [0.0, 1.0], [3.0, 0.0]])
    f = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0]])
    assert metrics.fidelity(g, f) == pytest.approx(200 / 3)


def test_mse_is_per_image():
    x = torch.zeros(2, 3, 4, 4)
    y = x.clone()
    y[1] = 0.5
    assert torch.allclose(metrics.mse(y, x), torch.tensor([0.0, 0.25]))



def test_identification_tells_a_faithful_reconstruction_from_a_class_average():
    gen = torch.Generator().manual_seed(0)
    labels = torch.tensor([0, 0, 0, 0, 1, 1])
    x = torch.rand(6, 3, 8, 8, generator=gen) * 2 - 1
    faithful = metrics.reconstruction_identification(x + 0.01, x, labels)
    assert faithful["identification"] == 100.0 and faithful["identification_in_class"] == 100.0
    # Drawing each class's mean image: the class is right, the individual never (the mean is
    # equidistant from nobody in particular, so at most one input per class can be nearest).
    means = torch.stack([x[labels == c].mean(0) for c in labels.tolist()])
    average = metrics.reconstruction_identification(means, x, labels)
    assert average["identification_in_class"] <= 100 * 2 / 6
    # Every reconstruction identical: all distances to the same input tie or lose -> at most one hit.
    constant = metrics.reconstruction_identification(x[:1].expand(6, -1, -1, -1), x, labels)
    assert constant["identification"] == pytest.approx(100 / 6)      # x~_0 = x_0 is its own nearest
    assert faithful["identification_chance"] == pytest.approx(100 / 6)
    assert faithful["identification_in_class_chance"] == pytest.approx(100 * (4 * 1 / 4 + 2 * 1 / 2) / 6)
    # Swapping two reconstructions of the same class makes both miss.
    swapped = x.clone()[[1, 0, 2, 3, 4, 5]]
    assert metrics.reconstruction_identification(swapped, x, labels)["identification_in_class"] == \
        pytest.approx(100 * 4 / 6)
    with pytest.raises(ValueError, match="shapes differ"):
        metrics.reconstruction_identification(x[:5], x, labels)


def test_thumbnails_average_areas_and_leave_small_images_alone():
    x = torch.arange(4.0).reshape(1, 1, 2, 2).expand(1, 3, 2, 2).repeat(1, 1, 32, 32)   # (1, 3, 64, 64)
    small = metrics.thumbnails(x, 32)
    assert small.shape == (1, 3, 32, 32)
    assert torch.allclose(small, x.mean().expand_as(small))    # each 2x2 block holds 0, 1, 2, 3
    y = torch.rand(2, 3, 16, 16)
    assert torch.equal(metrics.thumbnails(y, 32), y)

def test_lpips_random_backbone_is_deterministic_and_zero_on_identical_images():
    net_a = metrics.build_lpips("random")
    net_b = metrics._build_lpips("random")       # a second construction, not the per-process copy
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 32, 32, generator=g) * 2 - 1
    y = torch.rand(2, 3, 32, 32, generator=g) * 2 - 1
    d = metrics.lpips_distance(y, x, net_a)
    assert d.shape == (2,)
    assert torch.allclose(d, metrics.lpips_distance(y, x, net_b))
    assert torch.all(d > 0)
    assert torch.allclose(metrics.lpips_distance(x, x, net_a), torch.zeros(2), atol=1e-6)
    with pytest.raises(ValueError, match="lpips_backbone"):
        metrics.build_lpips("alex")


def test_random_lpips_is_drawn_once_then_loaded_and_redrawn_from_a_broken_file(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path))
    cache = metrics.random_lpips_cache()
    assert tmp_path in cache.parents and not cache.exists()
    drawn = metrics._build_lpips("random").state_dict()
    assert cache.is_file() and not list(cache.parent.glob("*.tmp"))
    loaded = metrics._build_lpips("random")
    assert not any(p.is_meta or p.requires_grad for p in loaded.parameters())
    assert drawn.keys() == loaded.state_dict().keys()
    assert all(torch.equal(drawn[k], v) for k, v in loaded.state_dict().items())
    cache.write_bytes(cache.read_bytes()[:1000])          # an interrupted copy
    redrawn = metrics._build_lpips("random").state_dict()
    assert all(torch.equal(drawn[k], v) for k, v in redrawn.items())
    assert cache.stat().st_size > 1000                    # rewritten whole


def _gaussian(n, mean, cov_sqrt, seed):
    g = np.random.default_rng(seed)
    return g.standard_normal((n, len(mean))) @ cov_sqrt.T + mean


def test_fid_matches_closed_form_and_is_zero_for_a_set_with_itself():
    d = 6
    rng = np.random.default_rng(1)
    a = _gaussian(400, rng.normal(size=d), rng.normal(size=(d, d)), 2)
    b = _gaussian(300, rng.normal(size=d), rng.normal(size=(d, d)), 3)
    mu_a, mu_b = a.mean(0), b.mean(0)
    s_a, s_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    # Textbook form with the symmetric square root: tr(S_a + S_b - 2 (S_a^1/2 S_b S_a^1/2)^1/2).
    r = scipy.linalg.sqrtm(s_a)
    expected = ((mu_a - mu_b) ** 2).sum() + np.trace(s_a + s_b - 2 * scipy.linalg.sqrtm(r @ s_b @ r).real)
    assert metrics.fid_from_features(a, b) == pytest.approx(expected, rel=1e-8)
    assert abs(metrics.fid_from_features(a, a)) < 1e-8


def test_fid_of_two_known_gaussians_approaches_the_population_value():
    # N(0, I) vs N(m, 4I) in d dims: FID = |m|^2 + d (1 + 4 - 2 * 2) = |m|^2 + d.
    d, n = 4, 20000
    m = np.array([1.0, 0.0, -1.0, 0.5])
    a = _gaussian(n, np.zeros(d), np.eye(d), 4)
    b = _gaussian(n, m, 2 * np.eye(d), 5)
    assert metrics.fid_from_features(a, b) == pytest.approx((m ** 2).sum() + d, rel=0.03)


class _Passthrough(nn.Module):
    """Hands features to torchmetrics as if they were images' features."""

    def __init__(self, d):
        super().__init__()
        self.num_features = d

    def forward(self, x):
        return x


def test_fid_and_kid_agree_with_torchmetrics():
    from torchmetrics.image.fid import FrechetInceptionDistance
    from torchmetrics.image.kid import KernelInceptionDistance
    d = 8
    rng = np.random.default_rng(0)
    a = torch.tensor(_gaussian(200, np.zeros(d), rng.normal(size=(d, d)), 6))
    b = torch.tensor(_gaussian(150, np.ones(d) * 0.3, rng.normal(size=(d, d)), 7))
    fid = FrechetInceptionDistance(feature=_Passthrough(d))
    fid.update(a, real=True)
    fid.update(b, real=False)
    assert metrics.fid_from_features(a, b) == pytest.approx(fid.compute().item(), rel=1e-6)
    # With a subset as large as both sets, KID has no sampling noise left: one number to compare.
    with pytest.warns(UserWarning, match="save all extracted features"):
        kid = KernelInceptionDistance(feature=_Passthrough(d), subsets=1, subset_size=150)
    kid.update(a[:150], real=True)
    kid.update(b, real=False)
    ours, std = metrics.kid_from_features(a[:150], b, subsets=1, subset_size=150)
    assert ours == pytest.approx(kid.compute()[0].item(), rel=1e-6)
    assert std == 0.0


def test_kid_is_unbiased():
    d = 5
    # Two samples of one distribution: the unbiased estimate averages to 0 (the biased one, > 0).
    scores = [metrics.kid_from_features(_gaussian(50, np.zeros(d), np.eye(d), 2 * s),
                                        _gaussian(50, np.zeros(d), np.eye(d), 2 * s + 1),
                                        subsets=1, subset_size=50)[0] for s in range(60)]
    mean, sem = np.mean(scores), np.std(scores) / np.sqrt(len(scores))
    assert abs(mean) < 3 * sem
    shifted = metrics.kid_from_features(_gaussian(50, np.zeros(d), np.eye(d), 0),
                                        _gaussian(50, np.ones(d), np.eye(d), 1), subsets=10)[0]
    assert shifted > 10 * sem


class _TinyF(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def penultimate(self, x):
        return self.conv(x).mean(dim=(2, 3))


def test_fid_kid_end_to_end_with_classifier_features_and_cache(tmp_path):
    torch.manual_seed(0)
    f = _TinyF()
    real = torch.rand(40, 3, 8, 8) * 2 - 1
    fake = (torch.rand(40, 3, 8, 8) * 2 - 1) * 0.5
    cache = tmp_path / "real_features.pt"
    out = metrics.fid_kid(real, fake, features="classifier", classifier=f, cache_path=cache, kid_subsets=5)
    assert out["fid_features"] == "classifier" and out["n_real"] == 40 and out["n_fake"] == 40
    with torch.no_grad():
        expected = metrics.fid_from_features(f.penultimate(real), f.penultimate(fake))
    assert out["fid"] == pytest.approx(expected, rel=1e-6)
    assert cache.is_file()
    # A second call reads the real features from the cache: hand it no real images at all.
    again = metrics.fid_kid([], fake, features="classifier", classifier=f, cache_path=cache, kid_subsets=5)
    assert again["fid"] == pytest.approx(out["fid"]) and again["kid"] == pytest.approx(out["kid"])
    # Batches of (image, label) tuples and max_images work too.
    loader = [(real[i:i + 16], torch.zeros(16)) for i in range(0, 40, 16)]
    part = metrics.fid_kid(loader, fake, classifier=f, max_images=20, kid_subsets=2)
    assert part["n_real"] == 20 and part["n_fake"] == 20
    same = metrics.fid_kid(real, real, classifier=f, kid_subsets=2)
    assert abs(same["fid"]) < 1e-6


def test_to_uint8_maps_the_range_ends():
    x = torch.tensor([-1.0, 0.0, 1.0, 1.5])
    assert metrics.to_uint8(x).tolist() == [0, 128, 255, 255]


def test_inception_offline_error_names_file_and_setting(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    import torch_fidelity.feature_extractor_inceptionv3 as fe

    def offline(*args, **kwargs):
        raise OSError("network unreachable")
    monkeypatch.setattr(fe, "load_state_dict_from_url", offline)
    with pytest.raises(metrics.WeightsUnavailable, match="fid_features: classifier") as err:
        metrics.inception_extractor()
    assert metrics.INCEPTION_WEIGHTS in str(err.value)


def test_audit_replays_the_code_fid_inputs():
    from viscoin_core.eval import audit
    from viscoin_core.nets.classifier import Classifier
    f = Classifier("resnet18", n_classes=2)
    x = torch.rand(2, 3, 4, 4) * 2 - 1
    # The same ImageNet normalisation f applies inside its forward.
    assert torch.allclose(audit.imagenet_normalise(x), x * f.in_scale + f.in_shift, atol=1e-6)
    # 0 and 255 read as pixels are the ends of f's [-1, 1]; ImageNet-normalised values land near -1.
    assert audit.as_if_0_255(torch.tensor([0.0, 255.0])).tolist() == [-1.0, 1.0]
    real, fake = audit.code_fid_inputs(x, x)
    assert real.abs().sub(1).abs().max() < 0.03 and fake.abs().sub(1).abs().max() < 0.01


def test_lpips_vgg_offline_error_names_file_and_setting(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    import torchvision.models._api as api

    def offline(*args, **kwargs):
        raise OSError("network unreachable")
    monkeypatch.setattr(api, "load_state_dict_from_url", offline)
    monkeypatch.setattr(metrics, "_LPIPS_BUILT", {})
    with pytest.raises(metrics.WeightsUnavailable, match="lpips_backbone: random") as err:
        metrics.build_lpips("vgg")
    assert metrics.VGG16_WEIGHTS in str(err.value)


def test_classifier_fingerprint_reads_a_resnet_and_follows_its_weights():
    # BatchNorm's num_batches_tracked is a 0-dim tensor: the hash must still read it.
    from viscoin_core.eval.metrics import _classifier_fingerprint
    from viscoin_core.nets.classifier import build_classifier
    f = build_classifier("resnet18", n_classes=3)
    before = _classifier_fingerprint(f)
    assert before == _classifier_fingerprint(f)
    with torch.no_grad():
        f.fc.weight.add_(1.0)
    assert _classifier_fingerprint(f) != before
