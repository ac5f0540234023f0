"""ADA pipeline: identities, known pixel moves, differentiability, and the adaptive p rule."""

import math

import pytest
import torch

from viscoin_core.train import augment as A


pytestmark = pytest.mark.usefixtures("one_thread")


def _image(b=2, c=3, h=8, w=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, c, h, w, generator=g) * 2 - 1


def test_p_zero_is_identity():
    x = _image()
    assert A.augment(x, 0.0) is x
    draw = A.sample_augment(4, 0.0, 8, 8, torch.Generator().manual_seed(1))
    assert torch.equal(A.apply_augment(_image(b=4), draw), _image(b=4))


def test_p_one_changes_every_image():
    x = _image(b=8)
    y = A.augment(x, 1.0, torch.Generator().manual_seed(0))
    assert y.shape == x.shape
    assert ((y - x).abs().flatten(1).amax(1) > 1e-3).all()


def test_two_xflips_are_identity_and_one_is_a_mirror():
    x = _image()
    flip = A.scale2d(torch.tensor([-1.0, -1.0]), torch.ones(2))
    once = A.apply_geometric(x, flip)
    assert torch.allclose(once, x.flip(3), atol=1e-5)
    assert torch.allclose(A.apply_geometric(once, flip), x, atol=1e-5)


@pytest.mark.parametrize("k", [1, 2, 3])
def test_rotate90_moves_a_marked_pixel(k):
    h = w = 8
    x = torch.zeros(1, 1, h, w)
    r, c = 1, 6
    x[0, 0, r, c] = 1.0
    # The geometric maps are inverses (output -> input): undo a counter-clockwise rotation by k * 90.
    y = A.apply_geometric(x, A.rotate2d(torch.tensor([-k * math.pi / 2], dtype=torch.float64)))
    for _ in range(k):     # counter-clockwise on screen: (r, c) -> (w - 1 - c, r)
        r, c = w - 1 - c, r
    assert y[0, 0, r, c] == pytest.approx(1.0, abs=1e-5)
    assert y.sum() == pytest.approx(1.0, abs=1e-4)
    assert torch.allclose(y, torch.rot90(x, k, dims=(2, 3)), atol=1e-5)


def test_integer_translation_shifts_by_whole_pixels():
    x = _image(b=1, h=8, w=8)
    # Output pixel q shows input pixel q - (2, 1): content moves right by 2 and down by 1.
    y = A.apply_geometric(x, A.translate2d(torch.tensor([-2.0]), torch.tensor([-1.0])))
    assert torch.allclose(y[..., 1:, 2:], x[..., :-1, :-2], atol=1e-5)


def test_hue_rotation_by_360_degrees_is_identity_and_keeps_grey():
    x = _image()
    full = A.hue_rotation(torch.tensor([2 * math.pi, 2 * math.pi], dtype=torch.float64))
    assert torch.allclose(A.apply_color(x, full), x, atol=1e-6)
    grey = torch.full((1, 3, 2, 2), 0.3)
    quarter = A.hue_rotation(torch.tensor([math.pi / 3], dtype=torch.float64))
    assert torch.allclose(A.apply_color(grey, quarter), grey, atol=1e-6)   # greys lie on the axis


def test_colour_transforms_closed_forms():
    x = _image(b=1)
    one = lambda v: torch.tensor([v], dtype=torch.float64)
    assert torch.allclose(A.apply_color(x, A.brightness(one(0.25))), x + 0.25, atol=1e-6)
    assert torch.allclose(A.apply_color(x, A.contrast(one(0.5))), x * 0.5, atol=1e-6)
    mean = x.mean(1, keepdim=True)
    # Saturation 0 leaves only luma (the channel mean); luma flip negates luma, keeps chroma.
    assert torch.allclose(A.apply_color(x, A.saturation(one(0.0))), mean.expand_as(x), atol=1e-6)
    assert torch.allclose(A.apply_color(x, A.luma_flip(one(1.0))), x - 2 * mean, atol=1e-6)


@pytest.mark.parametrize("name", ["xflip", "rotate90", "xint", "scale", "rotate", "aniso", "xfrac"])
def test_each_geometric_transform_is_differentiable(name):
    x = _image(b=2, h=6, w=6).double().requires_grad_()
    inv = A.sample_geometric(2, 1.0, 6, 6, torch.Generator().manual_seed(3), enabled=(name,))
    assert torch.autograd.gradcheck(lambda t: A.apply_geometric(t, inv), (x,), eps=1e-6, atol=1e-4)


@pytest.mark.parametrize("name", ["brightness", "contrast", "lumaflip", "hue", "saturation"])
def test_each_colour_transform_is_differentiable(name):
    x = _image(b=8, h=2, w=2).double().requires_grad_()
    m = A.sample_color(8, 1.0, torch.Generator().manual_seed(4), enabled=(name,))
    assert not torch.equal(m, torch.eye(4, dtype=m.dtype).expand_as(m))   # some image is transformed
    assert torch.autograd.gradcheck(lambda t: A.apply_color(t, m), (x,), eps=1e-6, atol=1e-4)


def test_probability_controls_fraction_of_transformed_images():
    n = 4000
    inv = A.sample_geometric(n, 0.3, 8, 8, torch.Generator().manual_seed(5), enabled=("xflip",))
    flipped = (inv[:, 0, 0] < 0).double().mean().item()
    assert flipped == pytest.approx(0.3 * 0.5, abs=0.025)   # gate p, then a fair coin for the flip


def test_draw_slices_match_global_batch():
    g1, g2 = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    full = A.sample_augment(8, 0.5, 8, 8, g1)
    part = A.sample_augment(8, 0.5, 8, 8, g2).slice(4, 8)
    x = _image(b=8)
    assert torch.allclose(A.apply_augment(x, full)[4:], A.apply_augment(x[4:], part))


def test_ada_p_rises_when_overconfident_and_falls_otherwise():
    step = 16 * 4 / (500 * 1000)
    assert A.ada_adjust(0.2, rt=0.9, target=0.6, batch=16, interval=4, ada_kimg=500) == pytest.approx(0.2 + step)
    assert A.ada_adjust(0.2, rt=0.1, target=0.6, batch=16, interval=4, ada_kimg=500) == pytest.approx(0.2 - step)
    assert A.ada_adjust(0.0, rt=-1.0, target=0.6, batch=16, interval=4, ada_kimg=500) == 0.0
    ada = A.AdaptiveP(target=0.6, interval=2, ada_kimg=0.1)
    for _ in range(4):     # D sure of every real: all logits positive
        ada.observe(torch.ones(8))
        ada.step(batch=8)
    assert ada.p == pytest.approx(2 * 8 * 2 / 100)
    for _ in range(2):     # D unsure: half the reals called fake
        ada.observe(torch.tensor([1.0, -1.0] * 4))
        ada.step(batch=8)
    assert ada.p == pytest.approx(8 * 2 / 100)


def test_bad_target_is_rejected():
    with pytest.raises(ValueError, match="target"):
        A.AdaptiveP(target=1.0)
    with pytest.raises(ValueError, match="target"):
        A.ada_adjust(0.1, 0.5, 0.0, 8, 4, 500)
