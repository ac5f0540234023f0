"""StyleGAN2-ADA G and D: golden vectors, official layout, closed forms, gradients."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from viscoin_core.nets.stylegan2 import (
    Discriminator,
    Generator,
    conv2d_resample,
    modulated_conv2d,
    paper256_kwargs,
    setup_filter,
    small_discriminator_kwargs,
    small_generator_kwargs,
    upfirdn2d,
)

GOLDEN = ["stylegan2_tiny_golden.pt", "stylegan2_tiny_golden_clamp.pt"]

# 8 px, 4 channels: small enough for float64 finite differences
MICRO_G = small_generator_kwargs(resolution=8, w_dim=4, channel_base=32, channel_max=4)
MICRO_D = small_discriminator_kwargs(resolution=8, channel_base=32, channel_max=4, mbstd_group_size=2)


@pytest.fixture(scope="module", params=GOLDEN)
def golden(request, fixtures_dir):
    data = torch.load(fixtures_dir / request.param, weights_only=True)
    G = Generator(**data["G_kwargs"])
    G.load_state_dict(data["G_state_dict"], strict=True)
    D = Discriminator(**data["D_kwargs"])
    D.load_state_dict(data["D_state_dict"], strict=True)
    return G.eval(), D.eval(), data


def close(a, b):
    return a.shape == b.shape and (a - b).abs().max().item() <= 1e-5


def test_golden_state_dict_layout(golden):
    G, D, data = golden
    assert list(G.state_dict()) == list(data["G_state_dict"])
    assert list(D.state_dict()) == list(data["D_state_dict"])


def test_golden_mapping(golden):
    G, _, data = golden
    io = data["inputs_outputs"]
    with torch.no_grad():
        assert close(G.mapping(io["z"], None), io["ws"])
        assert close(G.mapping(io["z"], None, truncation_psi=0.7), io["ws_trunc07"])
        assert close(G.mapping(io["z"], None, truncation_psi=0.5, truncation_cutoff=2), io["ws_trunc05_cut2"])


@pytest.mark.parametrize("fused", [True, False])
def test_golden_synthesis_and_generator(golden, fused):
    G, _, data = golden
    io = data["inputs_outputs"]
    with torch.no_grad():
        assert close(G.synthesis(io["ws"], noise_mode="const", fused_modconv=fused), io["img_const"])
        assert close(G.synthesis(io["ws"], noise_mode="none", fused_modconv=fused), io["img_none"])
        img = G(io["z"], None, truncation_psi=0.7, noise_mode="const", fused_modconv=fused)
        assert close(img, io["img_full_trunc07_const"])


def test_golden_discriminator(golden):
    _, D, data = golden
    io = data["inputs_outputs"]
    with torch.no_grad():
        assert close(D(io["d_input"], None), io["d_logits"])
        assert close(D(io["img_const"] * 10, None), io["d_logits_on_img_const_x10"])


def test_paper256_layout(fixtures_dir):
    layout = json.loads((fixtures_dir / "stylegan2_paper256_layout.json").read_text())
    g_kwargs, d_kwargs = paper256_kwargs()
    G, D = Generator(**g_kwargs), Discriminator(**d_kwargs)
    for net, key in ((G, "G"), (D, "D")):
        shapes = {name: list(t.shape) for name, t in net.state_dict().items()}
        assert list(shapes) == list(layout[key])
        assert shapes == layout[key]
        assert sum(p.numel() for p in net.parameters()) == layout[f"{key}_params"]
    assert G.num_ws == layout["G_num_ws"] == 14
    assert G.mapping.w_avg.shape == (512,)


# ---------------------------------------------------------------------------------------------
# Mapping network: closed forms.

def test_w_avg_tracking_and_truncation():
    G = Generator(**small_generator_kwargs(resolution=16, w_dim=8, channel_base=64, channel_max=8))
    z = torch.randn(6, 8)
    with torch.no_grad():
        G.mapping.w_avg.normal_()
        before = G.mapping.w_avg.clone()
        G.eval()
        w = G.mapping(z, None)  # [N, num_ws, w_dim]
        assert torch.equal(G.mapping.w_avg, before)  # eval: no update
        G.train()
        G.mapping(z, None, skip_w_avg_update=True)
        assert torch.equal(G.mapping.w_avg, before)
        G.mapping(z, None)
        expected = before * 0.995 + w[:, 0].mean(dim=0) * 0.005
        assert torch.allclose(G.mapping.w_avg, expected, atol=1e-6)

        G.eval()
        w_avg = G.mapping.w_avg
        assert (w == w[:, :1]).all()  # broadcast to every ws
        assert torch.allclose(G.mapping(z, None, truncation_psi=0), w_avg.expand_as(w))
        half = G.mapping(z, None, truncation_psi=0.5, truncation_cutoff=3)
        assert torch.allclose(half[:, :3], w_avg + 0.5 * (w[:, :3] - w_avg), atol=1e-6)
        assert torch.equal(half[:, 3:], w[:, 3:])


def test_num_ws_and_small_configs():
    G = Generator(**small_generator_kwargs())
    assert G.num_ws == 8 and G.synthesis.num_ws == 8  # 32 px: 1 + 2 + 2 + 2 convs + final torgb
    img = G(torch.randn(2, G.z_dim), None)
    assert img.shape == (2, 3, 32, 32) and img.dtype == torch.float32
    D = Discriminator(**small_discriminator_kwargs())
    assert D(img, None).shape == (2, 1)


def test_noise_modes():
    G = Generator(**MICRO_G).eval()
    with torch.no_grad():
        for m in G.modules():
            if hasattr(m, "noise_strength"):
                m.noise_strength.fill_(0.5)
        ws = G.mapping(torch.randn(2, G.z_dim), None)
        const = G.synthesis(ws, noise_mode="const")
        assert torch.equal(const, G.synthesis(ws, noise_mode="const"))
        assert not torch.equal(G.synthesis(ws, noise_mode="random"), G.synthesis(ws, noise_mode="random"))
        assert not torch.allclose(G.synthesis(ws, noise_mode="none"), const)
        with pytest.raises(ValueError, match="noise_mode"):
            G.synthesis(ws, noise_mode="fixed")


def test_conditional_layout_and_c_required():
    G = Generator(**small_generator_kwargs(resolution=16, w_dim=8, channel_base=64, channel_max=8, c_dim=3))
    D = Discriminator(**small_discriminator_kwargs(resolution=16, channel_base=64, channel_max=8, c_dim=3))
    assert G.state_dict()["mapping.embed.weight"].shape == (8, 3)
    assert D.state_dict()["mapping.embed.weight"].shape == (8, 3)  # cmap_dim = channels at 4 px
    assert D.state_dict()["b4.out.weight"].shape == (8, 8)
    assert "mapping.w_avg" not in D.state_dict()
    c = torch.eye(3)[:2]
    img = G(torch.randn(2, 8), c)
    assert D(img, c).shape == (2, 1)
    with pytest.raises(ValueError, match="c_dim=3"):
        G(torch.randn(2, 8), None)
    with pytest.raises(ValueError, match="c_dim=3"):
        D(img, None)


def test_shape_errors():
    G = Generator(**MICRO_G)
    assert G.num_ws == 4  # 8 px: 1 + 2 convs + final torgb
    with pytest.raises(ValueError, match=r"ws has shape \[2, 3, 4\], expected \[N, 4, 4\]"):
        G.synthesis(torch.zeros(2, 3, 4))
    D = Discriminator(**MICRO_D)
    with pytest.raises(ValueError, match="not divisible by group size"):
        D(torch.zeros(3, 3, 8, 8), None)


def test_fp16_blocks_stay_float32_on_cpu():
    kwargs = small_generator_kwargs(resolution=16, w_dim=8, channel_base=64, channel_max=8)
    kwargs["synthesis_kwargs"]["num_fp16_res"] = 2
    G = Generator(**kwargs).eval()
    assert G.synthesis.b16.use_fp16 and not G.synthesis.b4.use_fp16
    ws = G.mapping(torch.randn(2, 8), None)
    img = G.synthesis(ws, noise_mode="const")
    assert img.dtype == torch.float32
    assert torch.equal(img, G.synthesis(ws, noise_mode="const", force_fp32=True))


# ---------------------------------------------------------------------------------------------
# Ops against independent references.

def naive_upfirdn2d(x, f, up, down, pad):
    """Direct loops: zero-insert, pad (x0, x1, y0, y1), true convolution with f, keep every down-th."""
    n, c, h, w = x.shape
    big = np.zeros((n, c, h * up, w * up))
    big[:, :, ::up, ::up] = x
    x0, x1, y0, y1 = pad
    big = np.pad(big, ((0, 0), (0, 0), (max(y0, 0), max(y1, 0)), (max(x0, 0), max(x1, 0))))
    big = big[:, :, max(-y0, 0): big.shape[2] - max(-y1, 0), max(-x0, 0): big.shape[3] - max(-x1, 0)]
    fh, fw = f.shape
    out = np.zeros((n, c, big.shape[2] - fh + 1, big.shape[3] - fw + 1))
    for i in range(out.shape[2]):
        for j in range(out.shape[3]):
            patch = big[:, :, i: i + fh, j: j + fw]
            out[:, :, i, j] = (patch * f[::-1, ::-1]).sum(axis=(2, 3))  # convolution flips f
    return out[:, :, ::down, ::down]


@pytest.mark.parametrize("up,down,pad", [(1, 1, (1, 2, 0, 1)), (2, 1, (2, 1, 2, 1)), (1, 2, (1, 1, 1, 1)),
                                         (2, 1, (-1, 2, 1, -1))])
def test_upfirdn2d_matches_direct_loops(up, down, pad):
    x = torch.randn(2, 3, 5, 6, dtype=torch.float64)
    f = torch.rand(3, 4, dtype=torch.float64)  # asymmetric: catches a missing flip
    ours = upfirdn2d(x, f, up=up, down=down, padding=pad)
    assert np.allclose(ours.numpy(), naive_upfirdn2d(x.numpy(), f.numpy(), up, down, pad), atol=1e-12)


def test_resampling_conv_matches_filter_then_conv():
    """Transposed-conv upsampling == FIR-upsample (wide) then valid conv; strided downsampling == FIR then conv."""
    f = setup_filter().double()
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64)
    w = torch.randn(5, 3, 3, 3, dtype=torch.float64)
    up = conv2d_resample(x, w, f, up=2, padding=1)
    # the FIR output is kept one pixel wider than upsample2d so the conv sees filtered borders;
    # up layers convolve (flipped w), as conv_transpose2d does
    ref = torch.nn.functional.conv2d(upfirdn2d(x, f, up=2, padding=(3, 2, 3, 2), gain=4), w.flip([2, 3]))
    assert torch.allclose(up, ref, atol=1e-10)
    down = conv2d_resample(x, w, f, down=2, padding=1)
    ref = torch.nn.functional.conv2d(upfirdn2d(x, f, padding=(2, 2, 2, 2)), w)[:, :, ::2, ::2]
    assert torch.allclose(down, ref, atol=1e-10)


@pytest.mark.parametrize("up", [1, 2])
def test_modulated_conv_fused_equals_unfused_and_reference(up):
    x = torch.randn(3, 4, 6, 6, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(5, 4, 3, 3, dtype=torch.float64)
    styles = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    f = setup_filter().double()
    outs, grads = [], []
    for fused in (True, False):
        y = modulated_conv2d(x, weight, styles, up=up, padding=1, resample_filter=f, fused_modconv=fused, gain=1.5)
        outs.append(y)
        grads.append(torch.autograd.grad(y.square().sum(), (x, styles)))
    # reference: per sample, modulate, demodulate (unit L2 norm per output channel), convolve
    refs = []
    for n in range(3):
        wn = weight * styles[n].reshape(1, -1, 1, 1)
        wn = wn / wn.square().sum(dim=[1, 2, 3], keepdim=True).add(1e-8).sqrt()
        refs.append(1.5 * conv2d_resample(x[n: n + 1], wn, f, up=up, padding=1))
    assert torch.allclose(outs[0], outs[1], atol=1e-10)
    assert torch.allclose(outs[0], torch.cat(refs), atol=1e-10)
    assert all(torch.allclose(a, b, atol=1e-9) for a, b in zip(*grads))


# ---------------------------------------------------------------------------------------------
# Gradients: through frozen synthesis to ws (VisCoIN), through D to images twice (R1).

@pytest.mark.parametrize("architecture,conv_clamp", [("skip", None), ("skip", 256), ("resnet", 0.5), ("orig", None)])
def test_synthesis_gradcheck_wrt_ws(architecture, conv_clamp):
    kwargs = small_generator_kwargs(resolution=8, w_dim=4, channel_base=32, channel_max=4, conv_clamp=conv_clamp)
    kwargs["synthesis_kwargs"]["architecture"] = architecture
    G = Generator(**kwargs).double().eval().requires_grad_(False)
    for m in G.modules():
        if hasattr(m, "noise_strength"):
            m.noise_strength.fill_(0.2)
    ws = torch.randn(2, G.num_ws, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda w: G.synthesis(w, noise_mode="const"), (ws,), atol=1e-6, fast_mode=True)


def test_generator_backward_reaches_ws_only():
    G = Generator(**small_generator_kwargs(resolution=16, w_dim=16, channel_base=128, channel_max=16))
    G.eval().requires_grad_(False)
    ws = G.mapping(torch.randn(2, G.z_dim), None).detach().requires_grad_(True)
    G.synthesis(ws, noise_mode="const").square().mean().backward()
    assert ws.grad is not None and torch.isfinite(ws.grad).all() and ws.grad.abs().sum() > 0
    assert all(p.grad is None for p in G.parameters())


def test_discriminator_double_backward_for_r1():
    D = Discriminator(**MICRO_D).double()
    img = torch.randn(2, 3, 8, 8, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradgradcheck(lambda x: D(x, None), (img,), atol=1e-5, fast_mode=True)
    # the R1 penalty itself trains D's convolutions
    (grad,) = torch.autograd.grad(D(img, None).sum(), img, create_graph=True)
    grad.square().sum().backward()
    assert D.b8.conv0.weight.grad.abs().sum() > 0 and D.b4.fc.weight.grad.abs().sum() > 0
