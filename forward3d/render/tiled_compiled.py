"""Opt-in ``torch.compile`` versions of the tiled path's pair kernels (``rasterize(..., compile=True)``).

The same maths as the eager kernels of :mod:`forward3d.render.tiled`, written as pure functions so that
Inductor fuses the ~30 elementwise passes over the ``[B, P, K]`` pair tensors into a few loops (about 3x
faster per batch on CPU). Compiling costs 10-60 s once per process (Inductor caches on disk), so it pays
off in optimisation loops, not for a single render. Results agree with the eager path to float rounding
(the fused ``exp`` / FMAs are not bit-identical, so an alpha sitting exactly on the 1/255 threshold may
flip). Shapes are dynamic: one compilation serves every batch size.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .common import MAX_ALPHA, T_EPS
from .projection import ALPHA_THRESHOLD

__all__ = ["kernels"]

_CACHE: dict[str, object] = {}


def pair_alpha(px: Tensor, py: Tensor, prm: Tensor, T0: Tensor) -> tuple[Tensor, Tensor]:
    """``alpha`` ``[B, P, K]`` (0 where skipped) and ``buf`` ``[B, P, K+1]`` (T before each Gaussian)."""
    mx, my, a, b, c, o = (prm[i][:, None, :] for i in range(6))
    dx = mx - px[..., None]
    dy = my - py[..., None]
    sigma = 0.5 * (a * dx * dx + c * dy * dy) + b * dx * dy
    alpha = (o * torch.exp(-sigma.clamp_max(60.0))).clamp_max(MAX_ALPHA)
    alpha = torch.where((sigma >= 0) & (alpha >= ALPHA_THRESHOLD), alpha, torch.zeros_like(alpha))
    buf = torch.cat([T0[..., None], 1.0 - alpha], -1).cumprod(-1)
    return alpha, buf


def pair_forward(px: Tensor, py: Tensor, prm: Tensor, T0: Tensor, f: Tensor):
    """Batch forward: feature sums ``[B, F, P]``, T after the composited prefix, T after all, alpha, buf."""
    alpha, buf = pair_alpha(px, py, prm, T0)
    mask = buf[..., 1:] > T_EPS
    w = buf[..., :-1] * alpha * mask
    acc = torch.bmm(f, w.transpose(1, 2))
    n = mask.sum(-1, keepdim=True)
    T_after = buf.gather(-1, n).squeeze(-1)
    return acc, T_after, buf[..., -1], alpha, buf


def pair_backward(prm: Tensor, alpha: Tensor, buf: Tensor, f: Tensor, ga: Tensor, S_t: Tensor, upper: Tensor,
                  basis: Tensor, ctr: Tensor):
    """Batch backward (see ``_Composite.backward``): ``g`` ``[B, K, 6]``, ``g_f`` ``[B, K, F]``, new ``S``."""
    B, P, K = alpha.shape
    mask = buf[..., 1:] > T_EPS
    Tex = buf[..., :-1]
    w = Tex * alpha * mask
    g_f = torch.bmm(ga, w).transpose(1, 2)
    G = torch.bmm(ga.transpose(1, 2), f)  # dL/dw
    wG = w * G
    behind = (wG.reshape(-1, K) @ upper).reshape(B, P, K) + S_t[..., None]
    S_new = S_t + wG.sum(-1)
    G = (G * Tex - behind / (1.0 - alpha)) * mask
    G = torch.where(alpha >= MAX_ALPHA, torch.zeros_like(G), G)
    dsig = -(G * alpha)
    S0, Sx, Sy, Sxx, Sxy, Syy = torch.bmm(basis.expand(B, -1, -1), dsig).unbind(1)
    mx = prm[0] - ctr[0][:, None]
    my = prm[1] - ctr[1][:, None]
    a, b, c, o = prm[2], prm[3], prm[4], prm[5]
    s_x = mx * S0 - Sx
    s_y = my * S0 - Sy
    s_xx = mx * mx * S0 - 2 * mx * Sx + Sxx
    s_xy = mx * my * S0 - mx * Sy - my * Sx + Sxy
    s_yy = my * my * S0 - 2 * my * Sy + Syy
    g_o = torch.where(o > 0, -S0 / o.clamp_min(1e-30), torch.zeros_like(o))
    g = torch.stack([a * s_x + b * s_y, c * s_y + b * s_x, 0.5 * s_xx, s_xy, 0.5 * s_yy, g_o], -1)
    return g, g_f, S_new


def kernels() -> dict[str, object]:
    """The compiled kernels (compiled lazily on first use, shared by all calls)."""
    if not _CACHE:
        for name, fn in (("alpha", pair_alpha), ("forward", pair_forward), ("backward", pair_backward)):
            _CACHE[name] = torch.compile(fn, dynamic=True)
    return _CACHE
