"""StyleGAN2-ADA generator G and discriminator D, and their native checkpoints.

Written for this project from the StyleGAN2 / StyleGAN2-ADA papers (Karras et al. 2020) and the
facts of the official PyTorch release's format: every module, parameter, buffer and constructor
keyword argument carries the official name and shape, so an official `state_dict` loads with
`load_state_dict(strict=True)` and an official network pickle loads through
`viscoin_core.nets.network_pkl.load_network_pkl` without the official code.

Everything is plain, differentiable PyTorch (no custom kernels): gradients flow through
`G.synthesis` to `ws` and through `D` to images, double backward included (R1 penalty).

Pixel range: G outputs and D inputs are RGB NCHW float32 in [-1, 1] (nominally; G is unbounded).
fp16: the top `num_fp16_res` resolutions run in float16 only on CUDA; on CPU everything is float32.

Public API
    Generator(z_dim, c_dim, w_dim, img_resolution, img_channels, mapping_kwargs, synthesis_kwargs)
        G(z, c=None, truncation_psi=1, truncation_cutoff=None, noise_mode='random', force_fp32=False)
        G.mapping(z, c=None, truncation_psi=1, truncation_cutoff=None, skip_w_avg_update=False) -> ws
        G.synthesis(ws [N, G.num_ws, G.w_dim], noise_mode='random'|'const'|'none', force_fp32=False)
        G.mapping.w_avg, G.num_ws, G.z_dim, G.c_dim, G.w_dim, G.img_resolution, G.img_channels, G.init_kwargs
    Discriminator(c_dim, img_resolution, img_channels, architecture='resnet', channel_base, channel_max,
                  num_fp16_res, conv_clamp, cmap_dim, block_kwargs, mapping_kwargs, epilogue_kwargs)
        D(img, c=None) -> logits [N, 1]
    small_generator_kwargs(...), small_discriminator_kwargs(...), paper256_kwargs() -> (G kwargs, D kwargs)
    load_weights(module, state_dict, source)
    save_network / load_network, save_generator / load_generator, save_discriminator / load_discriminator
    (load_generator / load_discriminator also read official .pkl files, through `nets.network_pkl`)

CPU speed: large activations are allocated and freed every layer; with glibc's default malloc
each such buffer is a fresh mmap, and page faults then cost as much as a third of a step. Running
with MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=68719476736 in the environment keeps freed memory
for reuse (measured: paper256 forward+backward, system time 1.6 s -> 0 s per batch of 4).
"""

from __future__ import annotations

import copy
import math
import re
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
import torch.nn.functional as F

# ---------------------------------------------------------------------------------------------
# Low-level ops: activation with bias/gain/clamp, FIR resampling, resampling convolution.

# name -> (function, default gain). The gains keep the signal variance near 1 (He init).
_ACTIVATIONS = {
    "linear": (lambda x: x, 1.0),
    "relu": (F.relu, math.sqrt(2)),
    "lrelu": (lambda x: F.leaky_relu(x, 0.2), math.sqrt(2)),
    "tanh": (torch.tanh, 1.0),
    "sigmoid": (torch.sigmoid, 1.0),
    "elu": (F.elu, 1.0),
    "selu": (F.selu, 1.0),
    "softplus": (F.softplus, 1.0),
    "swish": (lambda x: x * torch.sigmoid(x), math.sqrt(2)),
}


# positively homogeneous activations, applied in place (their backward needs only the output)
_HOMOGENEOUS = {
    "linear": lambda x: x,
    "relu": lambda x: F.relu(x, inplace=True),
    "lrelu": lambda x: F.leaky_relu(x, 0.2, inplace=True),
}


def _activation(name: str):
    if name not in _ACTIVATIONS:
        raise ValueError(f"activation {name!r} is not one of {sorted(_ACTIVATIONS)}")
    return _ACTIVATIONS[name]


def bias_act(x: torch.Tensor, b: torch.Tensor | None = None, act: str = "linear",
             gain: float | None = None, clamp: float | None = None) -> torch.Tensor:
    """Add bias `b` along dim 1, apply `act`, scale by `gain` (default: the activation's), clamp to +-clamp."""
    func, def_gain = _activation(act)
    gain = def_gain if gain is None else float(gain)
    if b is not None:
        x = x + b.reshape([1, -1] + [1] * (x.ndim - 2))
    x = func(x)
    if gain != 1:
        x = x * gain
    if clamp is not None and clamp >= 0:
        x = _clamp(x, clamp)
    return x


def _clamp(x: torch.Tensor, bound: float) -> torch.Tensor:
    """x.clamp(-bound, bound). On CPU one min/max scan first: when nothing reaches the bound (the
    usual case for conv_clamp=256) the clamp is the identity, in value and in gradient, and both
    its pass over the activations and the mask in backward are skipped."""
    if x.device.type == "cpu" and x.numel() > 0:
        low, high = torch.aminmax(x.detach())
        if low >= -bound and high <= bound:
            return x
    return x.clamp(-bound, bound)


def setup_filter(f=(1, 3, 3, 1)) -> torch.Tensor:
    """2-D FIR filter [fh, fw] from 1-D taps (outer product), normalised to sum 1."""
    f = torch.as_tensor(f, dtype=torch.float32)
    if f.ndim == 0:
        f = f[None]
    if f.ndim == 1:
        f = torch.outer(f, f)
    return f / f.sum()


def upfirdn2d(x: torch.Tensor, f: torch.Tensor, up: int = 1, down: int = 1,
              padding=(0, 0, 0, 0), gain: float = 1.0) -> torch.Tensor:
    """Upsample by zero insertion, pad (negative = crop), convolve with FIR `f`, downsample.

    x: [N, C, H, W]; f: [fh, fw]; padding: (x0, x1, y0, y1) applied after upsampling.
    The filter is flipped for a true convolution, so asymmetric filters behave as in the
    official op; `gain` scales the output (use up**2 when upsampling to keep the mean).
    """
    n, c, h, w = x.shape
    if up > 1:
        # [N, C, H, 1, W, 1] padded with up-1 zeros after each pixel on both axes
        x = x.reshape(n, c, h, 1, w, 1)
        x = F.pad(x, [0, up - 1, 0, 0, 0, up - 1])
        x = x.reshape(n, c, h * up, w * up)
    # one depthwise 2-D convolution: on CPU it beats two 1-D passes, forward and backward
    f = (f * gain).to(x.dtype).flip([0, 1])
    f = f[None, None].expand(c, 1, *f.shape).contiguous()  # [C, 1, fh, fw]
    x0, x1, y0, y1 = padding
    if x0 == x1 and y0 == y1 and x0 >= 0 and y0 >= 0:
        x = F.conv2d(x, f, padding=(y0, x0), groups=c)  # symmetric zero padding inside the conv
    else:
        x = F.conv2d(F.pad(x, [x0, x1, y0, y1]), f, groups=c)  # negative entries crop
    if down > 1:
        x = x[:, :, ::down, ::down]
    return x


def upsample2d(x: torch.Tensor, f: torch.Tensor, up: int = 2) -> torch.Tensor:
    """[N, C, H, W] -> [N, C, H*up, W*up] through the FIR filter, mean preserved."""
    fh, fw = f.shape
    p = [(fw + up - 1) // 2, (fw - up) // 2, (fh + up - 1) // 2, (fh - up) // 2]
    return upfirdn2d(x, f, up=up, padding=p, gain=up * up)


def downsample2d(x: torch.Tensor, f: torch.Tensor, down: int = 2) -> torch.Tensor:
    """[N, C, H, W] -> [N, C, H/down, W/down] through the FIR filter."""
    fh, fw = f.shape
    p = [(fw - down + 1) // 2, (fw - down) // 2, (fh - down + 1) // 2, (fh - down) // 2]
    return upfirdn2d(x, f, down=down, padding=p)


def conv2d_resample(x: torch.Tensor, w: torch.Tensor, f: torch.Tensor | None = None, up: int = 1,
                    down: int = 1, padding: int = 0, groups: int = 1) -> torch.Tensor:
    """2-D convolution (cross-correlation with `w` [O, I/groups, kh, kw]) fused with FIR up/downsampling.

    Upsampling runs as a stride-`up` transposed convolution (with `w` unflipped, as the official
    layers do for up > 1) followed by the FIR filter; downsampling filters first and then uses a
    strided convolution. Only square kernels and symmetric `padding` are used by the networks.
    """
    out_channels, in_per_group, kh, kw = w.shape
    if up == 1 and down == 1:
        return F.conv2d(x, w, padding=padding, groups=groups)
    fh, fw = f.shape
    if down > 1 and up == 1:
        p0 = padding + (fw - down + 1) // 2
        p1 = padding + (fw - down) // 2
        if kh == 1 and kw == 1:
            x = upfirdn2d(x, f, down=down, padding=[p0, p1, p0, p1])
            return F.conv2d(x, w, groups=groups)
        x = upfirdn2d(x, f, padding=[p0, p1, p0, p1])
        return F.conv2d(x, w, stride=down, groups=groups)
    if up > 1 and down == 1:
        p0 = padding + (fw + up - 1) // 2
        p1 = padding + (fw - up) // 2
        if kh == 1 and kw == 1:
            x = F.conv2d(x, w, groups=groups)
            return upfirdn2d(x, f, up=up, padding=[p0, p1, p0, p1], gain=up * up)
        # conv_transpose2d weight layout: [I, O/groups, kh, kw]
        if groups == 1:
            wt = w.transpose(0, 1)
        else:
            wt = w.reshape(groups, out_channels // groups, in_per_group, kh, kw).transpose(1, 2)
            wt = wt.reshape(groups * in_per_group, out_channels // groups, kh, kw)
        p0 -= kw - 1
        p1 -= kw - up
        # let the transposed convolution crop what the FIR padding would crop anyway
        pt = max(min(-p0, -p1), 0)
        x = F.conv_transpose2d(x, wt, stride=up, padding=pt, groups=groups)
        return upfirdn2d(x, f, padding=[p0 + pt, p1 + pt, p0 + pt, p1 + pt], gain=up * up)
    raise ValueError(f"conv2d_resample supports up or down, not both (up={up}, down={down})")


def normalize_2nd_moment(x: torch.Tensor, dim: int = 1, eps: float = 1e-8) -> torch.Tensor:
    """Scale each vector to unit root-mean-square along `dim`."""
    return x * (x.square().mean(dim=dim, keepdim=True) + eps).rsqrt()


def modulated_conv2d(x: torch.Tensor, weight: torch.Tensor, styles: torch.Tensor,
                     noise: torch.Tensor | None = None, up: int = 1, padding: int = 0,
                     resample_filter: torch.Tensor | None = None, demodulate: bool = True,
                     fused_modconv: bool = True, gain: float = 1.0) -> torch.Tensor:
    """StyleGAN2 weight (de)modulation: x [N, I, H, W], weight [O, I, k, k], styles [N, I] -> [N, O, H', W'].

    fused_modconv=True folds the batch into groups and convolves with per-sample weights (one
    grouped conv); False scales activations before and after one shared-weight convolution,
    which is mathematically identical and skips per-sample weight gradients in backward.
    `noise` is any term added after (de)modulation (broadcast to [N, O, H', W']). `gain` scales
    the convolution output (not the noise); it rides on the small per-sample weight or
    demodulation tensor instead of costing a pass over the activations.
    """
    batch = x.shape[0]
    out_channels, in_channels, kh, kw = weight.shape
    if x.dtype == torch.float16 and demodulate:
        # pre-normalise so the float16 products cannot overflow; demodulation undoes the scale
        weight = weight * (1 / math.sqrt(in_channels * kh * kw)
                           / weight.norm(float("inf"), dim=[1, 2, 3], keepdim=True))
        styles = styles / styles.norm(float("inf"), dim=1, keepdim=True)

    dcoefs = None
    if demodulate:
        # |weight * style|^2 summed over (I, k, k), as one small matmul instead of a
        # per-sample [N, O, I, k, k] tensor: sum_i s_ni^2 * sum_kk W_oikk^2
        dcoefs = (styles.square() @ weight.square().sum(dim=[2, 3]).t() + 1e-8).rsqrt()  # [N, O]

    if not fused_modconv:
        x = x * styles.to(x.dtype).reshape(batch, -1, 1, 1)
        x = conv2d_resample(x, weight.to(x.dtype), resample_filter, up=up, padding=padding)
        if demodulate or gain != 1:
            scale = dcoefs * gain if demodulate else torch.full([batch, out_channels], float(gain), device=x.device)
            scale = scale.to(x.dtype).reshape(batch, -1, 1, 1)
            # scale and add the noise in one pass over the activations
            return x * scale if noise is None else torch.addcmul(noise.to(x.dtype), x, scale)
        if noise is not None:
            x = x + noise.to(x.dtype)
        return x

    scale = styles.reshape(batch, 1, -1)  # [N, 1, I]
    if demodulate:
        scale = scale * (dcoefs * gain).reshape(batch, -1, 1)  # [N, O, I]
    elif gain != 1:
        scale = scale * gain
    w = weight.unsqueeze(0) * scale.reshape(*scale.shape, 1, 1)  # [N, O, I, k, k]
    x = x.reshape(1, batch * in_channels, *x.shape[2:])
    w = w.reshape(batch * out_channels, in_channels, kh, kw)
    x = conv2d_resample(x, w.to(x.dtype), resample_filter, up=up, padding=padding, groups=batch)
    x = x.reshape(batch, out_channels, *x.shape[2:])
    if noise is not None:
        x = x + noise.to(x.dtype)
    return x


def _plain(value: Any) -> Any:
    """Deep copy of constructor kwargs as plain dicts/lists (EasyDict and tuples flattened)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return copy.deepcopy(value)


# ---------------------------------------------------------------------------------------------
# Layers (official names: weight/bias/affine/noise_const/noise_strength/resample_filter).

class FullyConnectedLayer(torch.nn.Module):
    """Dense layer with equalized learning rate: weight * lr_multiplier / sqrt(in), bias * lr_multiplier."""

    def __init__(self, in_features, out_features, bias=True, activation="linear",
                 lr_multiplier=1, bias_init=0):
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.activation = activation
        _activation(activation)
        self.weight = torch.nn.Parameter(torch.randn([out_features, in_features]) / lr_multiplier)
        self.bias = torch.nn.Parameter(torch.full([out_features], float(bias_init))) if bias else None
        self.weight_gain = lr_multiplier / math.sqrt(in_features)
        self.bias_gain = lr_multiplier

    def forward(self, x):
        w = self.weight.to(x.dtype) * self.weight_gain
        b = self.bias
        if b is not None:
            b = b.to(x.dtype)
            if self.bias_gain != 1:
                b = b * self.bias_gain
        if self.activation == "linear" and b is not None:
            return torch.addmm(b.unsqueeze(0), x, w.t())
        return bias_act(x.matmul(w.t()), b, act=self.activation)


class Conv2dLayer(torch.nn.Module):
    """Convolution with equalized learning rate, optional FIR up/downsampling, bias, activation, clamp."""

    def __init__(self, in_channels, out_channels, kernel_size, bias=True, activation="linear",
                 up=1, down=1, resample_filter=(1, 3, 3, 1), conv_clamp=None, channels_last=False,
                 trainable=True):
        super().__init__()
        self.activation = activation
        self.up = up
        self.down = down
        self.conv_clamp = conv_clamp
        self.channels_last = channels_last
        self.register_buffer("resample_filter", setup_filter(resample_filter))
        self.padding = kernel_size // 2
        self.weight_gain = 1 / math.sqrt(in_channels * kernel_size ** 2)
        self.act_gain = _activation(activation)[1]
        weight = torch.randn([out_channels, in_channels, kernel_size, kernel_size])
        bias_value = torch.zeros([out_channels]) if bias else None
        if trainable:
            self.weight = torch.nn.Parameter(weight)
            self.bias = torch.nn.Parameter(bias_value) if bias_value is not None else None
        else:
            self.register_buffer("weight", weight)
            if bias_value is not None:
                self.register_buffer("bias", bias_value)
            else:
                self.bias = None

    def forward(self, x, gain=1):
        act_clamp = self.conv_clamp * gain if self.conv_clamp is not None else None
        if self.activation not in _HOMOGENEOUS:
            w = (self.weight * self.weight_gain).to(x.dtype)
            b = self.bias.to(x.dtype) if self.bias is not None else None
            x = conv2d_resample(x, w, self.resample_filter, up=self.up, down=self.down, padding=self.padding)
            return bias_act(x, b, act=self.activation, gain=self.act_gain * gain, clamp=act_clamp)
        # as in SynthesisLayer: the output gain rides on the weight and bias (act(g v) = g act(v)),
        # then bias and activation update the fresh convolution output in place
        g = self.act_gain * gain
        w = (self.weight * (self.weight_gain * g)).to(x.dtype)
        x = conv2d_resample(x, w, self.resample_filter, up=self.up, down=self.down, padding=self.padding)
        if self.bias is not None:
            x = x.add_((self.bias * g).to(x.dtype).reshape(1, -1, 1, 1))
        x = _HOMOGENEOUS[self.activation](x)
        if act_clamp is not None and act_clamp >= 0:
            x = _clamp(x, act_clamp)
        return x


class MappingNetwork(torch.nn.Module):
    """z [N, z_dim] (+ c [N, c_dim]) -> w broadcast to [N, num_ws, w_dim] (or [N, w_dim] if num_ws is None)."""

    def __init__(self, z_dim, c_dim, w_dim, num_ws, num_layers=8, embed_features=None,
                 layer_features=None, activation="lrelu", lr_multiplier=0.01, w_avg_beta=0.995):
        super().__init__()
        self.z_dim = z_dim
        self.c_dim = c_dim
        self.w_dim = w_dim
        self.num_ws = num_ws
        self.num_layers = num_layers
        self.w_avg_beta = w_avg_beta
        if embed_features is None:
            embed_features = w_dim
        if c_dim == 0:
            embed_features = 0
        if layer_features is None:
            layer_features = w_dim
        features = [z_dim + embed_features] + [layer_features] * (num_layers - 1) + [w_dim]
        if c_dim > 0:
            self.embed = FullyConnectedLayer(c_dim, embed_features)
        for idx in range(num_layers):
            layer = FullyConnectedLayer(features[idx], features[idx + 1], activation=activation,
                                        lr_multiplier=lr_multiplier)
            setattr(self, f"fc{idx}", layer)
        if num_ws is not None and w_avg_beta is not None:
            self.register_buffer("w_avg", torch.zeros([w_dim]))

    def forward(self, z, c=None, truncation_psi=1, truncation_cutoff=None, skip_w_avg_update=False):
        x = None
        if self.z_dim > 0:
            _check_shape(z, [None, self.z_dim], "z")
            x = normalize_2nd_moment(z.to(_base_dtype(self)))
        if self.c_dim > 0:
            if c is None:
                raise ValueError(f"this network is conditional (c_dim={self.c_dim}): pass c [N, {self.c_dim}]")
            _check_shape(c, [None, self.c_dim], "c")
            y = normalize_2nd_moment(self.embed(c.to(_base_dtype(self))))
            x = torch.cat([x, y], dim=1) if x is not None else y
        for idx in range(self.num_layers):
            x = getattr(self, f"fc{idx}")(x)

        if self.w_avg_beta is not None and self.training and not skip_w_avg_update:
            with torch.no_grad():
                self.w_avg.copy_(x.detach().mean(dim=0).lerp(self.w_avg, self.w_avg_beta))

        if self.num_ws is not None:
            x = x.unsqueeze(1).expand(-1, self.num_ws, -1)  # [N, num_ws, w_dim]
        if truncation_psi != 1:
            if self.w_avg_beta is None:
                raise ValueError("truncation needs w_avg, but this mapping network has w_avg_beta=None")
            if self.num_ws is None or truncation_cutoff is None:
                x = self.w_avg.lerp(x, truncation_psi)
            else:
                head = self.w_avg.lerp(x[:, :truncation_cutoff], truncation_psi)
                x = torch.cat([head, x[:, truncation_cutoff:]], dim=1)
        return x.contiguous() if self.num_ws is not None else x


class SynthesisLayer(torch.nn.Module):
    """Modulated 3x3 conv (optionally 2x upsampling) + noise + bias + lrelu (+ clamp)."""

    def __init__(self, in_channels, out_channels, w_dim, resolution, kernel_size=3, up=1,
                 use_noise=True, activation="lrelu", resample_filter=(1, 3, 3, 1), conv_clamp=None,
                 channels_last=False):
        super().__init__()
        self.resolution = resolution
        self.up = up
        self.use_noise = use_noise
        self.activation = activation
        self.conv_clamp = conv_clamp
        self.register_buffer("resample_filter", setup_filter(resample_filter))
        self.padding = kernel_size // 2
        self.act_gain = _activation(activation)[1]
        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1)
        self.weight = torch.nn.Parameter(torch.randn([out_channels, in_channels, kernel_size, kernel_size]))
        if use_noise:
            self.register_buffer("noise_const", torch.randn([resolution, resolution]))
            self.noise_strength = torch.nn.Parameter(torch.zeros([]))
        self.bias = torch.nn.Parameter(torch.zeros([out_channels]))

    def forward(self, x, w, noise_mode="random", fused_modconv=True, gain=1):
        if noise_mode not in ("random", "const", "none"):
            raise ValueError(f"noise_mode {noise_mode!r} is not one of 'random', 'const', 'none'")
        styles = self.affine(w)  # [N, I]
        noise = None
        if self.use_noise and noise_mode == "random":
            noise = torch.randn([x.shape[0], 1, self.resolution, self.resolution], device=x.device) * self.noise_strength
        if self.use_noise and noise_mode == "const":
            noise = self.noise_const * self.noise_strength
        act_clamp = self.conv_clamp * gain if self.conv_clamp is not None else None
        if self.activation not in _HOMOGENEOUS:
            x = modulated_conv2d(x, self.weight, styles, noise=noise, up=self.up, padding=self.padding,
                                 resample_filter=self.resample_filter, fused_modconv=fused_modconv)
            return bias_act(x, self.bias.to(x.dtype), act=self.activation, gain=self.act_gain * gain,
                            clamp=act_clamp)
        # act(v) * g == act(g * v) for g > 0, so the gain moves into the modulated weights and the
        # noise and bias terms; noise and bias join in one addition, the activation runs in place.
        g = self.act_gain * gain
        shift = (self.bias * g).reshape(1, -1, 1, 1)
        if noise is not None:
            shift = noise * g + shift  # [1 or N, O, H, W]
        x = modulated_conv2d(x, self.weight, styles, noise=shift, up=self.up, padding=self.padding,
                             resample_filter=self.resample_filter, fused_modconv=fused_modconv, gain=g)
        x = _HOMOGENEOUS[self.activation](x)
        if act_clamp is not None and act_clamp >= 0:
            x = _clamp(x, act_clamp)
        return x


class ToRGBLayer(torch.nn.Module):
    """Modulated (not demodulated) 1x1 conv to image channels + bias (+ clamp)."""

    def __init__(self, in_channels, out_channels, w_dim, kernel_size=1, conv_clamp=None, channels_last=False):
        super().__init__()
        self.conv_clamp = conv_clamp
        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1)
        self.weight = torch.nn.Parameter(torch.randn([out_channels, in_channels, kernel_size, kernel_size]))
        self.bias = torch.nn.Parameter(torch.zeros([out_channels]))
        self.weight_gain = 1 / math.sqrt(in_channels * kernel_size ** 2)

    def forward(self, x, w, fused_modconv=True):
        styles = self.affine(w) * self.weight_gain
        x = modulated_conv2d(x, self.weight, styles, demodulate=False, fused_modconv=fused_modconv)
        return bias_act(x, self.bias.to(x.dtype), clamp=self.conv_clamp)


def _base_dtype(module: torch.nn.Module) -> torch.dtype:
    """The floating dtype of a module's tensors: float32, or float64 after .double() (for gradcheck)."""
    for t in module.parameters():
        return t.dtype
    return torch.float32


def _use_fp16(flag: bool, x_device: torch.device, force_fp32: bool) -> bool:
    return flag and not force_fp32 and x_device.type == "cuda"


class SynthesisBlock(torch.nn.Module):
    """One resolution of the synthesis network: (upsampling conv0) + conv1 + torgb (skip architecture)."""

    def __init__(self, in_channels, out_channels, w_dim, resolution, img_channels, is_last,
                 architecture="skip", resample_filter=(1, 3, 3, 1), conv_clamp=None, use_fp16=False,
                 fp16_channels_last=False, **layer_kwargs):
        if architecture not in ("orig", "skip", "resnet"):
            raise ValueError(f"architecture {architecture!r} is not one of 'orig', 'skip', 'resnet'")
        super().__init__()
        self.in_channels = in_channels
        self.w_dim = w_dim
        self.resolution = resolution
        self.img_channels = img_channels
        self.is_last = is_last
        self.architecture = architecture
        self.use_fp16 = use_fp16
        self.channels_last = use_fp16 and fp16_channels_last
        self.register_buffer("resample_filter", setup_filter(resample_filter))
        self.num_conv = 0
        self.num_torgb = 0
        if in_channels == 0:
            self.const = torch.nn.Parameter(torch.randn([out_channels, resolution, resolution]))
        if in_channels != 0:
            self.conv0 = SynthesisLayer(in_channels, out_channels, w_dim=w_dim, resolution=resolution, up=2,
                                        resample_filter=resample_filter, conv_clamp=conv_clamp,
                                        channels_last=self.channels_last, **layer_kwargs)
            self.num_conv += 1
        self.conv1 = SynthesisLayer(out_channels, out_channels, w_dim=w_dim, resolution=resolution,
                                    conv_clamp=conv_clamp, channels_last=self.channels_last, **layer_kwargs)
        self.num_conv += 1
        if is_last or architecture == "skip":
            self.torgb = ToRGBLayer(out_channels, img_channels, w_dim=w_dim, conv_clamp=conv_clamp,
                                    channels_last=self.channels_last)
            self.num_torgb += 1
        if in_channels != 0 and architecture == "resnet":
            self.skip = Conv2dLayer(in_channels, out_channels, kernel_size=1, bias=False, up=2,
                                    resample_filter=resample_filter, channels_last=self.channels_last)

    def forward(self, x, img, ws, force_fp32=False, fused_modconv=None, noise_mode="random"):
        # ws: [N, num_conv + num_torgb, w_dim]
        w_iter = iter(ws.unbind(dim=1))
        device = ws.device
        base = self.resample_filter.dtype  # float32, or float64 after .double()
        dtype = torch.float16 if _use_fp16(self.use_fp16, device, force_fp32) else base
        if fused_modconv is None:
            fused_modconv = _default_fused(self, ws, dtype)

        if self.in_channels == 0:
            x = self.const.to(dtype).unsqueeze(0).expand(ws.shape[0], -1, -1, -1)
            x = self.conv1(x, next(w_iter), noise_mode=noise_mode, fused_modconv=fused_modconv)
        else:
            x = x.to(dtype)
            if self.architecture == "resnet":
                y = self.skip(x, gain=math.sqrt(0.5))
                x = self.conv0(x, next(w_iter), noise_mode=noise_mode, fused_modconv=fused_modconv)
                x = self.conv1(x, next(w_iter), noise_mode=noise_mode, fused_modconv=fused_modconv,
                               gain=math.sqrt(0.5))
                x = y + x
            else:
                x = self.conv0(x, next(w_iter), noise_mode=noise_mode, fused_modconv=fused_modconv)
                x = self.conv1(x, next(w_iter), noise_mode=noise_mode, fused_modconv=fused_modconv)

        if img is not None:
            img = upsample2d(img, self.resample_filter)
        if self.is_last or self.architecture == "skip":
            y = self.torgb(x, next(w_iter), fused_modconv=fused_modconv).to(base)
            img = img + y if img is not None else y
        return x, img


def _default_fused(block: torch.nn.Module, ws: torch.Tensor, dtype: torch.dtype) -> bool:
    """Grouped (fused) modulated conv in eval mode, unfused in training mode, as the official code
    does on GPU. Both forms give the same numbers; on CPU the unfused form is always used, being
    faster there forward and backward (measured at 256 px: about 25% less time for backward to ws).
    """
    if block.training or ws.device.type == "cpu":
        return False
    return dtype != torch.float16 or ws.shape[0] == 1


class SynthesisNetwork(torch.nn.Module):
    """ws [N, num_ws, w_dim] -> image [N, img_channels, img_resolution, img_resolution]."""

    def __init__(self, w_dim, img_resolution, img_channels, channel_base=32768, channel_max=512,
                 num_fp16_res=0, **block_kwargs):
        if img_resolution < 4 or img_resolution & (img_resolution - 1):
            raise ValueError(f"img_resolution must be a power of two >= 4, got {img_resolution}")
        super().__init__()
        self.w_dim = w_dim
        self.img_resolution = img_resolution
        self.img_resolution_log2 = int(np.log2(img_resolution))
        self.img_channels = img_channels
        self.block_resolutions = [2 ** i for i in range(2, self.img_resolution_log2 + 1)]
        channels = {res: min(channel_base // res, channel_max) for res in self.block_resolutions}
        fp16_resolution = max(2 ** (self.img_resolution_log2 + 1 - num_fp16_res), 8)
        self.num_ws = 0
        for res in self.block_resolutions:
            in_channels = channels[res // 2] if res > 4 else 0
            is_last = res == self.img_resolution
            block = SynthesisBlock(in_channels, channels[res], w_dim=w_dim, resolution=res,
                                   img_channels=img_channels, is_last=is_last,
                                   use_fp16=res >= fp16_resolution, **block_kwargs)
            self.num_ws += block.num_conv
            if is_last:
                self.num_ws += block.num_torgb
            setattr(self, f"b{res}", block)

    def forward(self, ws, noise_mode="random", force_fp32=False, fused_modconv=None):
        """noise_mode: 'random' (fresh per call), 'const' (stored noise_const), 'none' (no noise)."""
        _check_shape(ws, [None, self.num_ws, self.w_dim], "ws")
        ws = ws.to(_base_dtype(self))
        x = img = None
        w_idx = 0
        for res in self.block_resolutions:
            block = getattr(self, f"b{res}")
            # consecutive blocks share one w: the torgb of block k uses the first conv w of block k+1
            cur_ws = ws.narrow(1, w_idx, block.num_conv + block.num_torgb)
            w_idx += block.num_conv
            x, img = block(x, img, cur_ws, force_fp32=force_fp32, fused_modconv=fused_modconv,
                           noise_mode=noise_mode)
        return img


class Generator(torch.nn.Module):
    """StyleGAN2-ADA generator with the official constructor arguments and parameter names.

    G(z, c, truncation_psi, truncation_cutoff, noise_mode=...) -> image [N, C, H, W] in about [-1, 1].
    """

    def __init__(self, z_dim, c_dim, w_dim, img_resolution, img_channels, mapping_kwargs=None,
                 synthesis_kwargs=None):
        super().__init__()
        mapping_kwargs = dict(mapping_kwargs or {})
        synthesis_kwargs = dict(synthesis_kwargs or {})
        self.init_kwargs = _plain(dict(z_dim=z_dim, c_dim=c_dim, w_dim=w_dim, img_resolution=img_resolution,
                                       img_channels=img_channels, mapping_kwargs=mapping_kwargs,
                                       synthesis_kwargs=synthesis_kwargs))
        self.z_dim = z_dim
        self.c_dim = c_dim
        self.w_dim = w_dim
        self.img_resolution = img_resolution
        self.img_channels = img_channels
        self.synthesis = SynthesisNetwork(w_dim=w_dim, img_resolution=img_resolution,
                                          img_channels=img_channels, **synthesis_kwargs)
        self.num_ws = self.synthesis.num_ws
        self.mapping = MappingNetwork(z_dim=z_dim, c_dim=c_dim, w_dim=w_dim, num_ws=self.num_ws, **mapping_kwargs)

    def forward(self, z, c=None, truncation_psi=1, truncation_cutoff=None, **synthesis_kwargs):
        ws = self.mapping(z, c, truncation_psi=truncation_psi, truncation_cutoff=truncation_cutoff)
        return self.synthesis(ws, **synthesis_kwargs)


# ---------------------------------------------------------------------------------------------
# Discriminator.

class DiscriminatorBlock(torch.nn.Module):
    """One resolution of D: (fromrgb) + conv0 + downsampling conv1, with a resnet skip."""

    def __init__(self, in_channels, tmp_channels, out_channels, resolution, img_channels, first_layer_idx,
                 architecture="resnet", activation="lrelu", resample_filter=(1, 3, 3, 1), conv_clamp=None,
                 use_fp16=False, fp16_channels_last=False, freeze_layers=0):
        if in_channels not in (0, tmp_channels):
            raise ValueError(f"in_channels must be 0 or tmp_channels ({tmp_channels}), got {in_channels}")
        if architecture not in ("orig", "skip", "resnet"):
            raise ValueError(f"architecture {architecture!r} is not one of 'orig', 'skip', 'resnet'")
        super().__init__()
        self.in_channels = in_channels
        self.resolution = resolution
        self.img_channels = img_channels
        self.first_layer_idx = first_layer_idx
        self.architecture = architecture
        self.use_fp16 = use_fp16
        self.channels_last = use_fp16 and fp16_channels_last
        self.register_buffer("resample_filter", setup_filter(resample_filter))
        self.num_layers = 0

        def trainable() -> bool:
            # layers below `freeze_layers` (counted from the image side) are stored as buffers
            idx = self.first_layer_idx + self.num_layers
            self.num_layers += 1
            return idx >= freeze_layers

        common = dict(activation=activation, conv_clamp=conv_clamp, channels_last=self.channels_last)
        if in_channels == 0 or architecture == "skip":
            self.fromrgb = Conv2dLayer(img_channels, tmp_channels, kernel_size=1, trainable=trainable(), **common)
        self.conv0 = Conv2dLayer(tmp_channels, tmp_channels, kernel_size=3, trainable=trainable(), **common)
        self.conv1 = Conv2dLayer(tmp_channels, out_channels, kernel_size=3, down=2, trainable=trainable(),
                                 resample_filter=resample_filter, **common)
        if architecture == "resnet":
            self.skip = Conv2dLayer(tmp_channels, out_channels, kernel_size=1, bias=False, down=2,
                                    trainable=trainable(), resample_filter=resample_filter,
                                    channels_last=self.channels_last)

    def forward(self, x, img, force_fp32=False):
        device = (x if x is not None else img).device
        base = self.resample_filter.dtype
        dtype = torch.float16 if _use_fp16(self.use_fp16, device, force_fp32) else base
        if x is not None:
            x = x.to(dtype)
        if self.in_channels == 0 or self.architecture == "skip":
            img = img.to(dtype)
            y = self.fromrgb(img)
            x = x + y if x is not None else y
            img = downsample2d(img, self.resample_filter) if self.architecture == "skip" else None
        if self.architecture == "resnet":
            y = self.skip(x, gain=math.sqrt(0.5))
            x = self.conv0(x)
            x = self.conv1(x, gain=math.sqrt(0.5))
            x = y + x
        else:
            x = self.conv1(self.conv0(x))
        return x, img


class MinibatchStdLayer(torch.nn.Module):
    """Append the per-group standard deviation of features as `num_channels` extra channels."""

    def __init__(self, group_size, num_channels=1):
        super().__init__()
        self.group_size = group_size
        self.num_channels = num_channels

    def forward(self, x):
        n, c, h, w = x.shape
        g = min(self.group_size, n) if self.group_size is not None else n
        if n % g:
            raise ValueError(f"minibatch-stddev: batch size {n} is not divisible by group size {g}")
        f = self.num_channels
        # sample i belongs to group member i // (n/g), group i % (n/g)
        y = x.reshape(g, -1, f, c // f, h, w)  # [G, n, F, c, H, W]
        y = y - y.mean(dim=0)
        y = (y.square().mean(dim=0) + 1e-8).sqrt()  # [n, F, c, H, W]
        y = y.mean(dim=[2, 3, 4]).reshape(-1, f, 1, 1)  # [n, F, 1, 1]
        y = y.repeat(g, 1, h, w)  # [N, F, H, W]
        return torch.cat([x, y], dim=1)


class DiscriminatorEpilogue(torch.nn.Module):
    """4x4 head: minibatch stddev, conv, fc, out (projected onto cmap when conditional)."""

    def __init__(self, in_channels, cmap_dim, resolution, img_channels, architecture="resnet",
                 mbstd_group_size=4, mbstd_num_channels=1, activation="lrelu", conv_clamp=None):
        super().__init__()
        self.in_channels = in_channels
        self.cmap_dim = cmap_dim
        self.resolution = resolution
        self.img_channels = img_channels
        self.architecture = architecture
        if architecture == "skip":
            self.fromrgb = Conv2dLayer(img_channels, in_channels, kernel_size=1, activation=activation)
        self.mbstd = MinibatchStdLayer(mbstd_group_size, mbstd_num_channels) if mbstd_num_channels > 0 else None
        self.conv = Conv2dLayer(in_channels + mbstd_num_channels, in_channels, kernel_size=3,
                                activation=activation, conv_clamp=conv_clamp)
        self.fc = FullyConnectedLayer(in_channels * resolution ** 2, in_channels, activation=activation)
        self.out = FullyConnectedLayer(in_channels, 1 if cmap_dim == 0 else cmap_dim)

    def forward(self, x, img, cmap, force_fp32=False):
        base = self.conv.weight.dtype
        x = x.to(base)
        if self.architecture == "skip":
            x = x + self.fromrgb(img.to(base))
        if self.mbstd is not None:
            x = self.mbstd(x)
        x = self.conv(x)
        x = self.fc(x.flatten(1))
        x = self.out(x)  # [N, 1] or [N, cmap_dim]
        if self.cmap_dim > 0:
            x = (x * cmap).sum(dim=1, keepdim=True) * (1 / math.sqrt(self.cmap_dim))
        return x


class Discriminator(torch.nn.Module):
    """StyleGAN2-ADA discriminator: D(img [N, C, H, W] in [-1, 1], c [N, c_dim] or None) -> logits [N, 1]."""

    def __init__(self, c_dim, img_resolution, img_channels, architecture="resnet", channel_base=32768,
                 channel_max=512, num_fp16_res=0, conv_clamp=None, cmap_dim=None, block_kwargs=None,
                 mapping_kwargs=None, epilogue_kwargs=None):
        if img_resolution < 8 or img_resolution & (img_resolution - 1):
            raise ValueError(f"img_resolution must be a power of two >= 8, got {img_resolution}")
        super().__init__()
        block_kwargs = dict(block_kwargs or {})
        mapping_kwargs = dict(mapping_kwargs or {})
        epilogue_kwargs = dict(epilogue_kwargs or {})
        self.init_kwargs = _plain(dict(
            c_dim=c_dim, img_resolution=img_resolution, img_channels=img_channels, architecture=architecture,
            channel_base=channel_base, channel_max=channel_max, num_fp16_res=num_fp16_res,
            conv_clamp=conv_clamp, cmap_dim=cmap_dim, block_kwargs=block_kwargs,
            mapping_kwargs=mapping_kwargs, epilogue_kwargs=epilogue_kwargs))
        self.c_dim = c_dim
        self.img_resolution = img_resolution
        self.img_resolution_log2 = int(np.log2(img_resolution))
        self.img_channels = img_channels
        self.block_resolutions = [2 ** i for i in range(self.img_resolution_log2, 2, -1)]
        channels = {res: min(channel_base // res, channel_max) for res in self.block_resolutions + [4]}
        fp16_resolution = max(2 ** (self.img_resolution_log2 + 1 - num_fp16_res), 8)
        if cmap_dim is None:
            cmap_dim = channels[4]
        if c_dim == 0:
            cmap_dim = 0
        common = dict(img_channels=img_channels, architecture=architecture, conv_clamp=conv_clamp)
        layer_idx = 0
        for res in self.block_resolutions:
            in_channels = channels[res] if res < img_resolution else 0
            block = DiscriminatorBlock(in_channels, channels[res], channels[res // 2], resolution=res,
                                       first_layer_idx=layer_idx, use_fp16=res >= fp16_resolution,
                                       **block_kwargs, **common)
            setattr(self, f"b{res}", block)
            layer_idx += block.num_layers
        if c_dim > 0:
            self.mapping = MappingNetwork(z_dim=0, c_dim=c_dim, w_dim=cmap_dim, num_ws=None, w_avg_beta=None,
                                          **mapping_kwargs)
        self.b4 = DiscriminatorEpilogue(channels[4], cmap_dim=cmap_dim, resolution=4, **epilogue_kwargs, **common)

    def forward(self, img, c=None, force_fp32=False):
        _check_shape(img, [None, self.img_channels, self.img_resolution, self.img_resolution], "img")
        x = None
        for res in self.block_resolutions:
            x, img = getattr(self, f"b{res}")(x, img, force_fp32=force_fp32)
        cmap = None
        if self.c_dim > 0:
            if c is None:
                raise ValueError(f"this discriminator is conditional (c_dim={self.c_dim}): pass c [N, {self.c_dim}]")
            cmap = self.mapping(None, c)
        return self.b4(x, img, cmap)


def _check_shape(t: torch.Tensor, shape: list, name: str) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a tensor, got {type(t).__name__}")
    if t.ndim != len(shape) or any(s is not None and s != d for s, d in zip(shape, t.shape)):
        want = "[" + ", ".join("N" if s is None else str(s) for s in shape) + "]"
        raise ValueError(f"{name} has shape {list(t.shape)}, expected {want}")


# ---------------------------------------------------------------------------------------------
# Configurations.

def small_generator_kwargs(resolution: int = 32, w_dim: int = 64, z_dim: int | None = None,
                           channel_base: int = 1024, channel_max: int = 64, num_layers: int = 2,
                           c_dim: int = 0, conv_clamp: float | None = None) -> dict:
    """Official-format kwargs of a tiny G for tests and the smoke profile (32 px: ~0.2M parameters)."""
    return dict(z_dim=w_dim if z_dim is None else z_dim, c_dim=c_dim, w_dim=w_dim, img_resolution=resolution,
                img_channels=3, mapping_kwargs=dict(num_layers=num_layers),
                synthesis_kwargs=dict(channel_base=channel_base, channel_max=channel_max, num_fp16_res=0,
                                      conv_clamp=conv_clamp, architecture="skip"))


def small_discriminator_kwargs(resolution: int = 32, channel_base: int = 1024, channel_max: int = 64,
                               c_dim: int = 0, mbstd_group_size: int = 4, conv_clamp: float | None = None) -> dict:
    """Official-format kwargs of a tiny D matching `small_generator_kwargs`."""
    return dict(c_dim=c_dim, img_resolution=resolution, img_channels=3, architecture="resnet",
                channel_base=channel_base, channel_max=channel_max, num_fp16_res=0, conv_clamp=conv_clamp,
                mapping_kwargs={}, epilogue_kwargs=dict(mbstd_group_size=mbstd_group_size))


def paper256_kwargs(c_dim: int = 0) -> tuple[dict, dict]:
    """(G kwargs, D kwargs) of StyleGAN2-ADA's `paper256` configuration (256 px, 24.8M / 24.0M parameters)."""
    g = dict(z_dim=512, c_dim=c_dim, w_dim=512, img_resolution=256, img_channels=3,
             mapping_kwargs=dict(num_layers=8),
             synthesis_kwargs=dict(channel_base=16384, channel_max=512, num_fp16_res=4, conv_clamp=256))
    d = dict(c_dim=c_dim, img_resolution=256, img_channels=3, architecture="resnet", channel_base=16384,
             channel_max=512, num_fp16_res=4, conv_clamp=256, block_kwargs={}, mapping_kwargs={},
             epilogue_kwargs=dict(mbstd_group_size=8))
    return g, d


# ---------------------------------------------------------------------------------------------
# Loading weights with clear errors.

def _resolution_of(state_dict: Mapping[str, Any]) -> int | None:
    """Image resolution implied by block names (`synthesis.b256.*` in G, `b256.*` in D)."""
    found = [int(m.group(1)) for key in state_dict for m in [re.search(r"(?:^|\.)b(\d+)\.", key)] if m]
    return max(found) if found else None


def load_weights(module: torch.nn.Module, state_dict: Mapping[str, torch.Tensor], source: str = "state_dict") -> None:
    """`module.load_state_dict(state_dict, strict=True)` with an error that says what does not fit.

    Raises ValueError naming `source`, the resolution the weights are for when it differs from the
    module's, and the first missing / unexpected / wrongly shaped entries.
    """
    own = module.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    wrong = [f"{k}: {list(state_dict[k].shape)} vs {list(own[k].shape)}"
             for k in own if k in state_dict and tuple(state_dict[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or wrong:
        own_res, their_res = getattr(module, "img_resolution", None), _resolution_of(state_dict)
        lines = [f"{source}: weights do not fit {type(module).__name__}"
                 + (f" at {own_res} px" if own_res else "")]
        if their_res is not None and own_res is not None and their_res != own_res:
            lines.append(f"the weights are for a {their_res} px network, expected {own_res} px")
        for label, items in (("missing", missing), ("unexpected", unexpected), ("shape (given vs expected)", wrong)):
            if items:
                more = f" ... (+{len(items) - 5} more)" if len(items) > 5 else ""
                lines.append(f"{label}: {', '.join(items[:5])}{more}")
        raise ValueError("; ".join(lines))
    module.load_state_dict(state_dict, strict=True)


# ---------------------------------------------------------------------------------------------
# Native checkpoints: constructor kwargs + state_dict, loadable with torch.load(weights_only=True).

NATIVE_FORMAT = "viscoin_core.stylegan2/1"
_NETWORK_CLASSES = {"Generator": Generator, "Discriminator": Discriminator}


def save_network(module: torch.nn.Module, path: str | Path) -> None:
    """Write a Generator or Discriminator as {'format', 'class_name', 'kwargs', 'state_dict'} (atomic)."""
    from viscoin_core.runs import save_atomic

    if type(module).__name__ not in _NETWORK_CLASSES or not isinstance(module, tuple(_NETWORK_CLASSES.values())):
        raise TypeError(f"save_network takes a Generator or Discriminator, got {type(module).__name__}")
    save_atomic({"format": NATIVE_FORMAT, "class_name": type(module).__name__, "kwargs": _plain(module.init_kwargs),
                 "state_dict": {k: v.detach().cpu() for k, v in module.state_dict().items()}}, path)


def load_network(path: str | Path, expected: str | None = None) -> torch.nn.Module:
    """Read a native checkpoint written by save_network; eval mode, requires_grad False, CPU.

    `expected` ('Generator' or 'Discriminator') makes a checkpoint of the other kind an error.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such checkpoint")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(f"{path}: not a native StyleGAN2 checkpoint ({type(e).__name__}: {e})") from e
    keys = {"format", "class_name", "kwargs", "state_dict"}
    if not isinstance(ckpt, dict) or not keys <= set(ckpt) or ckpt["format"] != NATIVE_FORMAT:
        found = ckpt.get("format") if isinstance(ckpt, dict) else type(ckpt).__name__
        raise ValueError(f"{path}: expected a native StyleGAN2 checkpoint ({NATIVE_FORMAT}: {sorted(keys)}), "
                         f"found {found!r}")
    name = ckpt["class_name"]
    if name not in _NETWORK_CLASSES:
        raise ValueError(f"{path}: class_name {name!r} is not one of {sorted(_NETWORK_CLASSES)}")
    if expected is not None and name != expected:
        raise ValueError(f"{path}: holds a {name}, expected a {expected}")
    try:
        module = _NETWORK_CLASSES[name](**ckpt["kwargs"])
    except (TypeError, ValueError) as e:
        raise ValueError(f"{path}: cannot build {name}(**{ckpt['kwargs']}): {e}") from e
    load_weights(module, ckpt["state_dict"], str(path))
    return module.eval().requires_grad_(False)


def save_generator(G: Generator, path: str | Path) -> None:
    """Native checkpoint of a Generator (see save_network)."""
    if not isinstance(G, Generator):
        raise TypeError(f"save_generator takes a Generator, got {type(G).__name__}")
    save_network(G, path)


def load_generator(path: str | Path) -> Generator:
    """A frozen Generator (eval, requires_grad False): a native checkpoint, or the G_ema of an official .pkl."""
    if Path(path).suffix == ".pkl":
        from viscoin_core.nets.network_pkl import load_network_pkl   # it builds this module's classes
        nets = load_network_pkl(path)
        return nets["G_ema"] if "G_ema" in nets else nets["G"]
    return load_network(path, expected="Generator")


def save_discriminator(D: Discriminator, path: str | Path) -> None:
    """Native checkpoint of a Discriminator (see save_network)."""
    if not isinstance(D, Discriminator):
        raise TypeError(f"save_discriminator takes a Discriminator, got {type(D).__name__}")
    save_network(D, path)


def load_discriminator(path: str | Path) -> Discriminator:
    """A frozen Discriminator (eval, requires_grad False) from a native checkpoint or an official .pkl."""
    if Path(path).suffix == ".pkl":
        from viscoin_core.nets.network_pkl import NetworkPickleError, load_network_pkl
        nets = load_network_pkl(path)
        if "D" not in nets:
            raise NetworkPickleError(f"{path}: generator-only pickle, holds no 'D'")
        return nets["D"]
    return load_network(path, expected="Discriminator")
