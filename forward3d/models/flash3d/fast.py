"""The inference-only fast path of the Flash3D decoders (built by :meth:`Flash3D.fuse_for_inference`).

The readable reference is :class:`forward3d.models.flash3d.model._UNetDecoder`: per level, a 3x3 conv at
the coarse resolution, a x2 nearest upsample, a concat with the encoder's skip feature and a 3x3 conv
(reflection padding) at the fine resolution. This module computes the same numbers with less work:

- **nearest-upsample + 3x3 conv as four 2x2 convs at the coarse resolution** (sub-pixel form). With
  ``U = up2(x)`` and reflection padding by 1, the padded ``U`` equals ``up2`` of ``x`` replicate-padded
  by 1, so each output phase ``(py, px)`` of the fine grid sees only 2x2 coarse pixels, with kernel rows
  ``[w0, w1 + w2]`` (even rows) and ``[w0 + w1, w2]`` (odd rows), the same for columns. One conv with
  ``4 * C_out`` outputs over the coarse grid gives all four phases: 16 taps per coarse pixel = 4 per fine
  pixel instead of 9 (2.25x fewer FLOPs on the upsampled part), and the upsampled tensor, its padded copy
  and the concat are never built.
- **the concat as a sum**: ``conv(cat[U, S]) = conv_U(U) + conv_S(S)`` (the conv is linear and reflection
  padding acts per channel), so the skip part is a plain 3x3 conv over the skip feature, padded ONCE for
  all decoders that read it, and the four phases are added into its output in place.
- **the decoders together**: all decoders read the same encoder features, so the convs over a shared
  input (``upconv(4, 0)`` and the skip part of every ``upconv(i, 1)``) run as ONE conv with the decoders'
  output channels stacked, and at the coarse levels (small images, large weights) as Winograd F(2x2, 3x3)
  (:func:`winograd_conv3x3`: 2.25x fewer multiplies, one batched GEMM per band of tile rows).
- channels_last tensors throughout (oneDNN's layout; no flips between ops), in-place ELU.

Shapes: ``B`` images, coarse ``h x w``, fine ``2h x 2w``.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["subpixel_weights", "upsample_conv", "winograd_weights", "winograd_conv3x3", "FastDecoders"]

# rows/cols of the 3x3 kernel that each of the 2 taps of phase 0 (even) / 1 (odd) collects
_PHASE = torch.tensor([[[1.0, 0.0, 0.0], [0.0, 1.0, 1.0]],
                       [[1.0, 1.0, 0.0], [0.0, 0.0, 1.0]]])  # [phase, tap, k]


def subpixel_weights(weight: Tensor) -> Tensor:
    """``[C_out, C, 3, 3]`` -> ``[4 * C_out, C, 2, 2]``, output channel ``(2 * py + px) * C_out + o``:
    the 2x2 kernel of fine-grid phase ``(py, px)`` applied to the replicate-padded coarse input."""
    a = _PHASE.to(weight)
    w = torch.einsum("yki,ocij,xlj->yxockl", a, weight, a)  # [py, px, C_out, C, 2, 2]
    return w.reshape(-1, *w.shape[3:]).contiguous()


def upsample_conv(x: Tensor, weight4: Tensor, bias: Tensor | None, out: Tensor | None = None) -> Tensor:
    """``conv3x3(reflect_pad(up2_nearest(x)))`` from the coarse ``x`` (``[B, C, h, w]``) and
    ``weight4 = subpixel_weights(w)``; returns ``[B, C_out, 2h, 2w]``. With ``out`` (the skip part's conv
    output, bias included) the result is added into ``out`` in place and ``bias`` must be None."""
    B, _, h, w = x.shape
    co = weight4.shape[0] // 4
    ph = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), weight4, None)  # [B, 4 C_out, h+1, w+1]
    ph = ph.unflatten(1, (2, 2, co))  # [B, py, px, C_out, h+1, w+1]
    if out is None:
        out = torch.empty(B, co, 2 * h, 2 * w, dtype=ph.dtype, device=ph.device,
                          memory_format=torch.channels_last)
        add = False
    else:
        add = True
    o6 = out.unflatten(3, (w, 2)).unflatten(2, (h, 2))  # [B, C_out, h, py, w, px] (a view of out)
    for py in (0, 1):
        for px in (0, 1):
            src = ph[:, py, px, :, py:py + h, px:px + w]
            dst = o6[:, :, :, py, :, px]
            if add:
                dst.add_(src)
            else:
                dst.copy_(src)
    if bias is not None:
        out.add_(bias.view(1, -1, 1, 1))
    return out


# Winograd F(2x2, 3x3) (Lavin & Gray 2016): a 3x3 conv as 16 GEMMs over 2x2 output tiles
_WINO_G = torch.tensor([[1.0, 0.0, 0.0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0.0, 0.0, 1.0]])


def winograd_weights(weight: Tensor) -> Tensor:
    """``[C_out, C, 3, 3]`` -> ``U = G w G^T`` as ``[16, C, C_out]`` (F(2x2, 3x3))."""
    g = _WINO_G.to(weight)
    u = torch.einsum("ai,ocij,bj->abco", g, weight, g)
    return u.reshape(16, weight.shape[1], weight.shape[0]).contiguous()


def winograd_conv3x3(xp: Tensor, u: Tensor, bias: Tensor | None, max_elems: int = 1 << 20) -> Tensor:
    """``F.conv2d(xp, w, bias)`` (3x3, stride 1, no padding) by Winograd F(2x2, 3x3), ``u = winograd_weights(w)``.

    2.25x fewer multiplies than the direct conv (16 per 2x2 output tile instead of 36), in one batched
    GEMM per band of tile rows (``max_elems`` bounds the transformed input of a band, so it stays in the
    caches). ``xp``: ``[B, C, H + 2, W + 2]`` (channels_last for speed; an odd ``H`` or ``W`` costs a padded
    copy); returns ``[B, C_out, H, W]`` channels_last. Rounding: within a few ulp of the direct conv times the input range.
    """
    B, C, hp, wp = xp.shape
    if hp % 2 or wp % 2:  # odd output: one more zero row/column, cropped from the result
        y = winograd_conv3x3(F.pad(xp, (0, wp % 2, 0, hp % 2)), u, bias, max_elems)
        return y[:, :, :hp - 2, :wp - 2]
    th, tw, co = (hp - 2) // 2, (wp - 2) // 2, u.shape[-1]
    x = xp.permute(0, 2, 3, 1)  # [B, H+2, W+2, C]
    out = torch.empty(B, th, 2, tw, 2, co, dtype=xp.dtype, device=xp.device)
    band = max(1, min(th, max_elems // max(16 * B * tw * C, 1)))
    for r0 in range(0, th, band):
        r1 = min(th, r0 + band)
        n = r1 - r0
        e = [x[:, 2 * r0 + k:2 * r1 + k:2] for k in range(4)]  # [B, n, W+2, C]: row k of each tile
        rows = (e[0] - e[2], e[1] + e[2], e[2] - e[1], e[1] - e[3])  # B^T d
        v = torch.empty(4, 4, B, n, tw, C, dtype=xp.dtype, device=xp.device)
        for a, t in enumerate(rows):  # (B^T d) B
            f = [t[:, :, k:k + 2 * tw:2] for k in range(4)]
            torch.sub(f[0], f[2], out=v[a, 0])
            torch.add(f[1], f[2], out=v[a, 1])
            torch.sub(f[2], f[1], out=v[a, 2])
            torch.sub(f[1], f[3], out=v[a, 3])
        m = torch.bmm(v.view(16, -1, C), u.to(xp.dtype)).view(4, 4, B, n, tw, co)
        o = out[:, r0:r1]
        for p, r in enumerate((m[0] + m[1] + m[2], m[1] - m[2] - m[3])):  # A^T m A
            torch.add(r[0] + r[1], r[2], out=o[:, :, p, :, 0])
            torch.sub(r[1] - r[2], r[3], out=o[:, :, p, :, 1])
    if bias is not None:
        out += bias.to(out.dtype)
    return out.view(B, 2 * th, 2 * tw, co).permute(0, 3, 1, 2)


def _conv(m: nn.Module) -> nn.Conv2d:
    """The Conv2d inside a ``_ConvBlock`` / ``_Conv3x3``."""
    while not isinstance(m, nn.Conv2d):
        m = m.conv
    return m


class FastDecoders(nn.Module):
    """The bodies of all decoders of a Flash3D model (``decoders``: the L Gaussian decoders, then the depth
    decoder if any; ``widths``: their ``num_ch_dec``), level by level. Equals ``[d.body(feats) for d in
    decoders]`` to float rounding; the heads stay with the decoders.

    Every decoder reads the same encoder features, so per level the convolutions over a shared input run
    as ONE conv with the decoders' output channels stacked: ``upconv(4, 0)`` over the deepest feature and
    the skip part of every ``upconv(i, 1)``, over skip features padded once. At the coarse levels
    (``winograd_levels``, where the weights are large and the images small) those stacked convs run as
    Winograd F(2x2, 3x3); the upsampled part of ``upconv(i, 1)`` runs in the sub-pixel form.
    """

    def __init__(self, decoders: list[nn.Module], widths: list[tuple[int, ...]],
                 winograd_levels: tuple[int, ...] = (4, 3, 2)):
        super().__init__()
        if len({w[1:] for w in widths}) != 1:
            raise ValueError(f"FastDecoders: decoders must share the widths of levels 1..4, found {widths}")
        self.widths = [tuple(w) for w in widths]
        self.winograd_levels = tuple(winograd_levels)

        def stack(ts: list[Tensor]) -> Tensor:
            return torch.cat([t.detach() for t in ts], 0)

        def put(name: str, t: Tensor | None) -> None:
            if t is not None and t.ndim == 4:
                t = t.contiguous(memory_format=torch.channels_last)
            self.register_buffer(name, t, persistent=False)

        w40 = stack([_conv(d.decoder[0]).weight for d in decoders])
        put("u4_0", winograd_weights(w40) if 4 in self.winograd_levels else None)
        put("w4_0", None if 4 in self.winograd_levels else w40.clone())
        put("b4_0", stack([_conv(d.decoder[0]).bias for d in decoders]))
        for j, i in enumerate(range(4, -1, -1)):
            c1 = [_conv(d.decoder[2 * j + 1]) for d in decoders]
            for k, (d, w) in enumerate(zip(decoders, self.widths)):
                c0 = _conv(d.decoder[2 * j])
                put(f"w{i}_0_{k}", c0.weight.detach().clone() if i < 4 else None)
                put(f"b{i}_0_{k}", c0.bias.detach().clone() if i < 4 else None)
                put(f"w{i}_up_{k}", subpixel_weights(c1[k].weight.detach()[:, :w[i]]))
                put(f"b{i}_1_{k}", c1[k].bias.detach().clone() if i == 0 else None)
            if i > 0:
                cx = self.widths[0][i]
                ws = stack([c.weight[:, cx:] for c in c1])
                put(f"u{i}_skip", winograd_weights(ws) if i in self.winograd_levels else None)
                put(f"w{i}_skip", None if i in self.winograd_levels else ws.clone())
                put(f"b{i}_skip", stack([c.bias for c in c1]))

    def _shared_conv(self, name: str, xp: Tensor) -> Tensor:
        """The stacked conv ``name`` (``4_0`` or ``{i}_skip``) over the padded shared input."""
        u, b = getattr(self, "u" + name), getattr(self, "b" + name)
        if u is not None:
            return winograd_conv3x3(xp, u, b, max_elems=1 << 22)
        return F.conv2d(xp, getattr(self, "w" + name), b)

    def forward(self, feats: list[Tensor], fp32_levels: int = 0) -> list[Tensor]:
        """``feats``: the encoder's 5 features; returns the ``[B, num_ch_dec[0], Hp, Wp]`` body outputs
        (channels_last). Under autocast the last ``fp32_levels`` levels (of 5) run in fp32."""
        cl = torch.channels_last
        padded = [F.pad(f.contiguous(memory_format=cl), (1, 1, 1, 1), mode="reflect") for f in feats]
        xs = list(F.elu_(self._shared_conv("4_0", padded[4])).split([w[4] for w in self.widths], 1))
        for i in range(4, -1, -1):
            fp32 = i < fp32_levels
            with torch.autocast(padded[4].device.type, enabled=False) if fp32 else contextlib.nullcontext():
                if fp32:
                    xs = [x.float() for x in xs]
                if i < 4:
                    xs = [F.elu_(F.conv2d(F.pad(x, (1, 1, 1, 1), mode="reflect"), getattr(self, f"w{i}_0_{k}"),
                                          getattr(self, f"b{i}_0_{k}"))) for k, x in enumerate(xs)]
                if i > 0:
                    skip = padded[i - 1].to(xs[0].dtype) if fp32 else padded[i - 1]
                    outs = self._shared_conv(f"{i}_skip", skip).split([w[i] for w in self.widths], 1)
                    xs = [F.elu_(upsample_conv(x, getattr(self, f"w{i}_up_{k}"), None, out=o))
                          for k, (x, o) in enumerate(zip(xs, outs))]
                else:
                    xs = [F.elu_(upsample_conv(x, getattr(self, f"w0_up_{k}"), getattr(self, f"b0_1_{k}")))
                          for k, x in enumerate(xs)]
        return xs
