"""Which parts of the SLAM3R networks stay fp32 under bf16 / fp16 autocast.

Autocast alone runs every matmul, the residual stream, the norms and the attention in the low
precision. :class:`MixedPrecision` names the precision-sensitive parts that are kept in fp32 instead;
the large GEMMs (qkv / proj / MLP / cross-attention projections) stay in the autocast dtype. Each
flag is a no-op without autocast (fp32 models are bit-identical whatever the flags; models whose
parameters are bf16 are run by :class:`~forward3d.models.slam3r.SLAM3REngine` under autocast).

The default keeps every part in fp32; ``benchmarks/slam3r.py --part precision`` measures the
point error of each choice at full size (see ``docs/slam3r_bf16.md``).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, fields, replace

import torch
from torch import Tensor

__all__ = ["MixedPrecision", "autocast_active", "lowp", "fp32", "linear", "conv2d", "no_autocast", "ALL_BF16",
           "PARTS", "PointError", "point_error"]


@dataclass(frozen=True)
class MixedPrecision:
    """Parts computed in fp32 under autocast (True) or in the autocast dtype (False).

    Attributes:
        residual: the residual stream (block inputs and outputs, the cached encoder tokens) is fp32;
            every block adds its bf16 branch output into an fp32 sum.
        attention: ``softmax(q k^T / sqrt(d)) v`` from fp32 q, k, v (SDPA outside autocast).
        rope: RoPE tables applied in fp32 and the rotated q / k kept fp32 up to the attention
            (off: tables and product in the autocast dtype).
        final_norms: ``enc_norm`` and ``dec_norm`` (the LayerNorms at the encoder / decoder outputs)
            on fp32 inputs, fp32 outputs.
        embed: patch embedding, L2W point-map embedding and ``decoder_embed`` in fp32.
        heads: linear head, its final activation (``expm1`` depth, ``exp`` conf) in fp32.
    """

    residual: bool = True
    attention: bool = True
    rope: bool = True
    final_norms: bool = True
    embed: bool = True
    heads: bool = True

    def only(self, **on: bool) -> "MixedPrecision":
        """Copy with the given flags changed (``ALL_BF16.only(heads=True)``)."""
        return replace(self, **on)


PARTS: tuple[str, ...] = tuple(f.name for f in fields(MixedPrecision))
ALL_BF16 = MixedPrecision(**{p: False for p in PARTS})


def no_autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """Disable autocast on ``device`` (a no-op context on devices without autocast, e.g. meta)."""
    if device.type in ("cpu", "cuda", "xpu", "mps"):
        return torch.autocast(device.type, enabled=False)
    return contextlib.nullcontext()


def autocast_active(x: Tensor) -> bool:
    """Whether autocast is on for ``x``'s device."""
    t = x.device.type
    return t in ("cpu", "cuda", "xpu", "mps") and torch.is_autocast_enabled(t)


def lowp(x: Tensor) -> Tensor:
    """``x`` in the autocast dtype when autocast is on (an fp32 part switched off), else unchanged."""
    return x.to(torch.get_autocast_dtype(x.device.type)) if autocast_active(x) else x


def fp32(x: Tensor, on: bool = True) -> Tensor:
    """``x`` in fp32 when autocast is on and ``on``, in the autocast dtype when autocast is on and not
    ``on``, unchanged without autocast (fp32 models and bf16-weight models called directly)."""
    if not autocast_active(x):
        return x
    return x.float() if on else lowp(x)


def linear(lin: torch.nn.Linear, x: Tensor, on: bool) -> Tensor:
    """``lin(x)``; in fp32 (weights upcast, autocast off) when autocast is on and ``on``."""
    if on and autocast_active(x):
        with no_autocast(x.device):
            b = None if lin.bias is None else lin.bias.float()
            return torch.nn.functional.linear(x.float(), lin.weight.float(), b)
    return lin(x)


def conv2d(conv: torch.nn.Conv2d, x: Tensor, on: bool) -> Tensor:
    """``conv(x)``; in fp32 (weights upcast, autocast off) when autocast is on and ``on``."""
    if on and autocast_active(x):
        with no_autocast(x.device):
            b = None if conv.bias is None else conv.bias.float()
            return torch.nn.functional.conv2d(x.float(), conv.weight.float(), b, conv.stride, conv.padding,
                                              conv.dilation, conv.groups)
    return conv(x)


@dataclass(frozen=True)
class PointError:
    """Scaled point error of a point map against a reference (``point_error``).

    Attributes:
        worst: max over points of ``|p - p_ref| / median |p_ref|`` (Euclidean norms).
        median: the median of the same per-point ratio.
        legacy: max over coordinates of ``|x - x_ref| / (1 + |x_ref|)`` (the parity tests' measure).
    """

    worst: float
    median: float
    legacy: float


def point_error(pts: Tensor, ref: Tensor) -> PointError:
    """Per-point error of ``pts`` [..., 3] against ``ref`` [..., 3], scaled by the median reference
    point norm over all of ``ref`` (one scale per call: scale-free, like the points themselves)."""
    if pts.shape != ref.shape or pts.shape[-1] != 3:
        raise ValueError(f"point_error: expected two [..., 3] tensors of one shape, found "
                         f"{tuple(pts.shape)} and {tuple(ref.shape)}")
    p, r = pts.double(), ref.double()
    scale = r.norm(dim=-1).median().clamp_min(1e-12)
    e = (p - r).norm(dim=-1) / scale
    legacy = ((p - r).abs() / (1 + r.abs())).max()
    return PointError(float(e.max()), float(e.median()), float(legacy))
