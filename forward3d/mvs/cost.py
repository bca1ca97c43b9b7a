"""Photometric matching cost of the dense stereo: a bilaterally weighted NCC over a window.

For a reference pixel ``p`` and the window taps ``q = p + step * (dy, dx)``, ``|dy|, |dx| <= radius``,
the weights depend on the reference image only (COLMAP's bilateral NCC):

    w(p, q) = exp(-(I(q) - I(p))**2 / (2 sigma_color**2) - |q - p|**2 / (2 sigma_spatial**2))

normalised to sum to 1 over the taps inside the image (taps outside weigh 0). With ``r`` the reference
and ``s`` the warped source values of the window,

    ncc = sum w (r - mean_r)(s - mean_s) / sqrt(sum w (r - mean_r)**2 * sum w (s - mean_s)**2)

and ``ncc = -1`` where either weighted variance is below ``min_variance`` (no texture: no evidence).
The matching cost is ``1 - ncc`` in ``[0, 2]``.

The fast path (:func:`weighted_ncc`) loops over the taps with shifted views of padded images (one
fused multiply-add per tap for ``sum w s`` and ``sum w s**2``, one for ``sum (w r) s``) and batches
sources and hypotheses; :func:`weighted_ncc_reference` is the literal per-pixel definition
(two-pass, explicit means) that the tests compare it against. :func:`warp_by_depth` samples a source
image at the projection of every reference pixel for a per-pixel depth (pixel centres at +0.5);
:func:`warp_by_depth_reference` does the same with explicit per-pixel projection and bilinear
interpolation.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "RefWindow",
    "bilateral_weights",
    "pair_projection",
    "warp_by_depth",
    "warp_by_depth_reference",
    "weighted_ncc",
    "weighted_ncc_reference",
    "weighted_ncc_stacked",
    "window_offsets",
]


def window_offsets(radius: int, step: int) -> list[tuple[int, int]]:
    """``(dy, dx)`` pixel offsets of the window taps, row-major; ``(2 radius + 1)**2`` of them."""
    return [(dy * step, dx * step) for dy in range(-radius, radius + 1) for dx in range(-radius, radius + 1)]


def bilateral_weights(ref: Tensor, radius: int, step: int, sigma_color: float, sigma_spatial: float) -> Tensor:
    """``[T, H, W]`` normalised bilateral weights of the window taps of every pixel of ``ref`` ``[H, W]``.

    ``sigma_spatial`` is in units of taps (the spatial term uses ``|(dy, dx)| / step``).
    """
    h, w = ref.shape
    pad = radius * step
    rp = F.pad(ref[None, None], (pad, pad, pad, pad), value=float("nan"))[0, 0]
    out = []
    for dy, dx in window_offsets(radius, step):
        q = rp[pad + dy:pad + dy + h, pad + dx:pad + dx + w]
        d2 = (dy * dy + dx * dx) / float(step * step)
        wq = torch.exp(-(q - ref) ** 2 / (2.0 * sigma_color ** 2) - d2 / (2.0 * sigma_spatial ** 2))
        out.append(torch.nan_to_num(wq, nan=0.0))
    wts = torch.stack(out)
    return wts / wts.sum(0, keepdim=True).clamp_min(1e-12)


class RefWindow:
    """The reference-only part of the NCC, computed once per reference image.

    Args:
        ref: ``[H, W]`` grey reference in ``[0, 1]``.
        radius, step: window taps ``step * (-radius .. radius)`` per axis.
        sigma_color, sigma_spatial: bilateral weights (grey levels; taps).
        min_variance: below this weighted variance (reference or source) the NCC is -1.
    """

    def __init__(self, ref: Tensor, radius: int, step: int, sigma_color: float, sigma_spatial: float,
                 min_variance: float) -> None:
        self.offsets = window_offsets(radius, step)
        self.pad = radius * step
        self.min_variance = float(min_variance)
        self.weights = bilateral_weights(ref, radius, step, sigma_color, sigma_spatial)  # [T, H, W]
        h, w = ref.shape
        rp = F.pad(ref[None, None], (self.pad,) * 4)[0, 0]
        mean = torch.zeros_like(ref)
        sq = torch.zeros_like(ref)
        wr = []
        for k, (dy, dx) in enumerate(self.offsets):
            q = rp[self.pad + dy:self.pad + dy + h, self.pad + dx:self.pad + dx + w]
            t = self.weights[k] * q
            wr.append(t)
            mean += t
            sq += t * q
        self.weighted_ref = torch.stack(wr)  # [T, H, W]: w * r
        self.mean = mean
        self.var = (sq - mean * mean).clamp_min(0.0)

    def rows(self, y0: int, y1: int) -> RefWindow:
        """The same window restricted to reference rows ``[y0, y1)`` (a view, no copy)."""
        sub = object.__new__(RefWindow)
        sub.offsets, sub.pad, sub.min_variance = self.offsets, self.pad, self.min_variance
        sub.weights = self.weights[:, y0:y1]
        sub.weighted_ref = self.weighted_ref[:, y0:y1]
        sub.mean, sub.var = self.mean[y0:y1], self.var[y0:y1]
        return sub


def weighted_ncc(win: RefWindow, src: Tensor) -> Tensor:
    """Fast bilateral NCC.

    Args:
        win: :class:`RefWindow` of the reference rows ``[h, W]`` being scored.
        src: ``[B, h + 2 pad, W + 2 pad]`` warped source values for those rows plus the window halo
            (``pad = radius * step``; halo values outside the reference image are ignored: weight 0).

    Returns:
        ``[B, h, W]`` NCC in ``[-1, 1]`` (-1 where a variance is below ``min_variance``).
    """
    return weighted_ncc_stacked(win, torch.stack([src, src * src], 1))


def weighted_ncc_stacked(win: RefWindow, s2: Tensor) -> Tensor:
    """:func:`weighted_ncc` of ``s2 = [B, 2, h + 2 pad, W + 2 pad]``: the source values and their squares
    (the sweep writes both into one reused buffer instead of stacking them per call)."""
    h, w = win.mean.shape
    p = win.pad
    acc = mrs = None
    for k, (dy, dx) in enumerate(win.offsets):  # one pass per tap accumulates s and s^2, one s * (w r)
        sl = s2[:, :, p + dy:p + dy + h, p + dx:p + dx + w]
        if acc is None:
            acc, mrs = sl * win.weights[k], sl[:, 0] * win.weighted_ref[k]
        else:
            acc.addcmul_(sl, win.weights[k])
            mrs.addcmul_(sl[:, 0], win.weighted_ref[k])
    ms, mss = acc[:, 0], acc[:, 1]
    var_s = (mss - ms * ms).clamp_min(0.0)
    cov = mrs - win.mean * ms
    ncc = cov / torch.sqrt(win.var * var_s).clamp_min(1e-12)
    ok = (win.var > win.min_variance) & (var_s > win.min_variance)
    return torch.where(ok, ncc.clamp(-1.0, 1.0), torch.full_like(ncc, -1.0))


def weighted_ncc_reference(ref: np.ndarray, src: np.ndarray, radius: int, step: int, sigma_color: float,
                           sigma_spatial: float, min_variance: float) -> np.ndarray:
    """Literal per-pixel bilateral NCC of ``ref`` and ``src`` (both ``[H, W]``, same pixel grid): ``[H, W]``.

    Taps outside the image are skipped. Slow (pure Python loops): for tests on tiny images.
    """
    ref = np.asarray(ref, np.float64)
    src = np.asarray(src, np.float64)
    h, w = ref.shape
    out = np.empty((h, w))
    for y in range(h):
        for x in range(w):
            ws, rs, ss = [], [], []
            for dy in range(-radius, radius + 1):
                for dx in range(-radius, radius + 1):
                    qy, qx = y + dy * step, x + dx * step
                    if not (0 <= qy < h and 0 <= qx < w):
                        continue
                    ws.append(math.exp(-(ref[qy, qx] - ref[y, x]) ** 2 / (2 * sigma_color ** 2)
                                       - (dy * dy + dx * dx) / (2 * sigma_spatial ** 2)))
                    rs.append(ref[qy, qx])
                    ss.append(src[qy, qx])
            wv, rv, sv = np.array(ws) / sum(ws), np.array(rs), np.array(ss)
            mr, ms = (wv * rv).sum(), (wv * sv).sum()
            vr, vs = (wv * (rv - mr) ** 2).sum(), (wv * (sv - ms) ** 2).sum()
            if vr <= min_variance or vs <= min_variance:
                out[y, x] = -1.0
            else:
                out[y, x] = min(1.0, max(-1.0, (wv * (rv - mr) * (sv - ms)).sum() / math.sqrt(vr * vs)))
    return out


def pair_projection(K_ref: Tensor, c2w_ref: Tensor, K_src: Tensor, c2w_src: Tensor) -> tuple[Tensor, Tensor]:
    """``(A [3, 3], b [3])`` with ``x_src ~ A @ [u, v, 1] * depth + b`` for reference pixel ``(u, v)``.

    ``u, v`` are continuous pixel coordinates (pixel centres at +0.5) and ``depth`` the reference z-depth.
    """
    ref_to_src = torch.linalg.inv(c2w_src) @ c2w_ref
    R, t = ref_to_src[:3, :3], ref_to_src[:3, 3]
    return K_src @ R @ torch.linalg.inv(K_ref), K_src @ t


def warp_by_depth(src: Tensor, A: Tensor, b: Tensor, depth: Tensor, y0: int, x0: int = 0) -> tuple[Tensor, Tensor]:
    """Sample source images at the projections of reference pixels with the given depths.

    Args:
        src: ``[S, 1, Hs, Ws]`` grey source images.
        A, b: ``[S, 3, 3]`` / ``[S, 3]`` from :func:`pair_projection` per source.
        depth: ``[D, h, w]`` reference depths (> 0) of the block of reference pixels whose top-left
            pixel is ``(x0, y0)``; D hypotheses.
        y0, x0: pixel offset of the block in the reference image.

    Returns:
        ``(values [S, D, h, w], inside [S, D, h, w] bool)``: bilinearly sampled source values (border
        replicated) and whether the point projects in front of the source camera and inside its image.
    """
    S, _, hs, ws = src.shape
    D, h, w = depth.shape
    ys = torch.arange(y0, y0 + h, device=depth.device, dtype=depth.dtype) + 0.5
    xs = torch.arange(x0, x0 + w, device=depth.device, dtype=depth.dtype) + 0.5
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    pix = torch.stack([gx, gy, torch.ones_like(gx)], 0).reshape(3, -1)  # [3, h*w]
    # grid_sample's normalised coordinates folded into the projection: 2 u / ws - 1 = (2 x / ws - z) / z
    scale = torch.tensor([2.0 / ws, 2.0 / hs], dtype=A.dtype, device=A.device)
    An = torch.cat([A[:, :2] * scale[None, :, None] - A[:, 2:3], A[:, 2:3]], 1)
    bn = torch.cat([b[:, :2] * scale[None] - b[:, 2:3], b[:, 2:3]], 1)
    rays = An @ pix  # [S, 3, h*w]
    dd = depth.reshape(1, D, -1)
    z = torch.addcmul(bn[:, 2, None, None], rays[:, None, 2], dd)  # [S, D, h*w]
    front = z > 1e-9
    rz = torch.where(front, z, torch.ones_like(z)).reciprocal_()
    grid = torch.empty((S, D, h * w, 2), dtype=depth.dtype, device=depth.device)
    gxn, gyn = grid[..., 0], grid[..., 1]  # written in place: no stacking pass
    torch.addcmul(bn[:, 0, None, None], rays[:, None, 0], dd, out=gxn).mul_(rz)
    torch.addcmul(bn[:, 1, None, None], rays[:, None, 1], dd, out=gyn).mul_(rz)
    inside = front & (torch.maximum(gxn.abs(), gyn.abs()) <= 1.0)
    vals = F.grid_sample(src, grid, mode="bilinear", padding_mode="border", align_corners=False)
    return vals.reshape(S, D, h, w), inside.reshape(S, D, h, w)


def warp_by_depth_reference(src: np.ndarray, K_ref: np.ndarray, c2w_ref: np.ndarray, K_src: np.ndarray,
                            c2w_src: np.ndarray, depth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Literal per-pixel version of :func:`warp_by_depth` for one source and one depth map ``[H, W]``.

    Each pixel centre is unprojected with its depth, moved to the world and into the source camera,
    projected, and the source sampled bilinearly (pixel centres at +0.5, coordinates clamped to the
    image like a replicated border). Returns ``(values [H, W], inside [H, W])``.
    """
    src = np.asarray(src, np.float64)
    hs, ws = src.shape
    h, w = depth.shape
    w2c_src = np.linalg.inv(c2w_src)
    Kinv = np.linalg.inv(K_ref)
    vals = np.zeros((h, w))
    inside = np.zeros((h, w), bool)
    for y in range(h):
        for x in range(w):
            X_cam = Kinv @ np.array([x + 0.5, y + 0.5, 1.0]) * depth[y, x]
            X_world = c2w_ref[:3, :3] @ X_cam + c2w_ref[:3, 3]
            Xs = w2c_src[:3, :3] @ X_world + w2c_src[:3, 3]
            if Xs[2] <= 1e-9:
                continue
            u, v = (K_src @ (Xs / Xs[2]))[:2]
            inside[y, x] = 0 <= u <= ws and 0 <= v <= hs
            fx = min(max(u - 0.5, 0.0), ws - 1.0)
            fy = min(max(v - 0.5, 0.0), hs - 1.0)
            ix, iy = min(int(fx), ws - 2), min(int(fy), hs - 2)
            ax, ay = fx - ix, fy - iy
            vals[y, x] = ((1 - ay) * ((1 - ax) * src[iy, ix] + ax * src[iy, ix + 1])
                          + ay * ((1 - ax) * src[iy + 1, ix] + ax * src[iy + 1, ix + 1]))
    return vals, inside
