"""Per-view depth estimation: a plane sweep over inverse depth, coarse to fine.

At the coarsest pyramid level every pixel tries the same ``num_depths`` fronto-parallel planes,
uniform in inverse depth over the view's range (for constant depth the per-pixel warp is exactly the
plane's homography). Each finer level upsamples the inverse depth, median-filters it (3x3) and tries
``refine_hypotheses`` per-pixel values around it at half the previous spacing. A hypothesis' cost is
the mean of its ``top_k`` best source costs ``1 - NCC`` (:mod:`forward3d.mvs.cost`); the winner is
refined to sub-hypothesis precision with a parabola through its neighbours' costs.

Memory is bounded by ``max_batch_pixels``: reference rows are scored in tiles and the hypotheses in
chunks so that at most that many warped source pixels exist at once.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from forward3d.mvs.config import MVSConfig
from forward3d.mvs.cost import RefWindow, pair_projection, warp_by_depth, weighted_ncc_stacked

__all__ = [
    "ViewLevel",
    "build_pyramid",
    "estimate_view_depth",
    "hypothesis_costs",
    "mean_of_smallest",
    "select_hypothesis",
    "sweep_reference",
]


@dataclass
class ViewLevel:
    """One pyramid level of one view: ``gray [H, W]`` in [0, 1] and its ``K [3, 3]`` (same device)."""

    gray: Tensor
    K: Tensor


def build_pyramid(gray: Tensor, K: Tensor, num_scales: int) -> list[ViewLevel]:
    """Levels fine (index 0, the input) to coarse; each halves the size (area averaging)."""
    levels = [ViewLevel(gray, K)]
    h, w = gray.shape
    for s in range(1, num_scales):
        hs, ws = max(1, round(h / 2 ** s)), max(1, round(w / 2 ** s))
        g = F.interpolate(gray[None, None], size=(hs, ws), mode="area")[0, 0]
        Ks = K.clone()
        Ks[0] *= ws / w
        Ks[1] *= hs / h
        levels.append(ViewLevel(g, Ks))
    return levels


def hypothesis_costs(win: RefWindow, ref: ViewLevel, c2w_ref: Tensor, srcs: list[ViewLevel], c2w_srcs: Tensor,
                     inv_depth: Tensor, top_k: int, max_batch_pixels: int) -> Tensor:
    """Aggregated matching cost ``[D, H, W]`` of the inverse-depth hypotheses ``inv_depth`` ``[D, H, W]`` (> 0).

    Source ``s`` scores ``1 - NCC`` where the reference pixel projects inside it and 2 elsewhere; the
    cost is the mean of the ``min(top_k, S)`` smallest source costs.
    """
    D, h, w = inv_depth.shape
    S = len(srcs)
    pad = win.pad
    k = min(top_k, S)
    hs = max(s.gray.shape[0] for s in srcs)
    ws = max(s.gray.shape[1] for s in srcs)
    stack = torch.zeros((S, 1, hs, ws), dtype=ref.gray.dtype, device=ref.gray.device)
    for i, s in enumerate(srcs):  # sources of another size: grid_sample normalises by its own size below
        stack[i, 0, :s.gray.shape[0], :s.gray.shape[1]] = s.gray
    AB = [pair_projection(ref.K, c2w_ref, s.K, c2w_srcs[i]) for i, s in enumerate(srcs)]
    same = all(tuple(s.gray.shape) == (hs, ws) for s in srcs)
    A = torch.stack([a for a, _ in AB])
    b = torch.stack([bb for _, bb in AB])
    # rows per tile and hypotheses per chunk so that S * chunk * (rows + 2 pad) * (w + 2 pad) <= budget
    per_row = S * (w + 2 * pad)
    rows = max(1, min(h, max_batch_pixels // per_row - 2 * pad))
    chunk = max(1, min(D, max_batch_pixels // (per_row * (rows + 2 * pad))))
    out = torch.empty((D, h, w), dtype=ref.gray.dtype, device=ref.gray.device)
    buf = None
    for y0 in range(0, h, rows):
        y1 = min(h, y0 + rows)
        ya, yb = max(0, y0 - pad), min(h, y1 + pad)
        sub = win.rows(y0, y1)
        for d0 in range(0, D, chunk):
            d1 = min(D, d0 + chunk)
            nd = d1 - d0
            depth = 1.0 / inv_depth[d0:d1, ya:yb]
            if same:
                vals, inside = warp_by_depth(stack, A, b, depth, ya)
            else:
                parts = [warp_by_depth(s.gray[None, None], A[i:i + 1], b[i:i + 1], depth, ya)
                         for i, s in enumerate(srcs)]
                vals = torch.cat([p[0] for p in parts])
                inside = torch.cat([p[1] for p in parts])
            # the warped values and their squares, with the window halo, in one reused buffer (the halo
            # outside the image keeps its zeros: its taps weigh 0)
            shape = (S * nd, 2, y1 - y0 + 2 * pad, w + 2 * pad)
            if buf is None or buf.shape != shape:
                buf = vals.new_zeros(shape)
            r0 = pad - (y0 - ya)
            blk = buf[:, :, r0:r0 + yb - ya, pad:pad + w]
            blk[:, 0] = vals.reshape(S * nd, yb - ya, w)
            torch.mul(blk[:, 0], blk[:, 0], out=blk[:, 1])
            ncc = weighted_ncc_stacked(sub, buf).reshape(S, nd, y1 - y0, w)
            centre = inside[:, :, y0 - ya:y1 - ya]
            cost = torch.where(centre, 1.0 - ncc, torch.full_like(ncc, 2.0))
            out[d0:d1, y0:y1] = mean_of_smallest(cost, k)
    return out


def mean_of_smallest(x: Tensor, k: int) -> Tensor:
    """Mean over the first axis of the ``k`` smallest of ``x`` ``[S, ...]`` -> ``[...]``.

    An insertion network of element-wise min/max (``2 k`` ops per row of ``x``): for the few sources of
    a sweep many times faster than ``topk`` along a non-contiguous axis.
    """
    S = x.shape[0]
    if k >= S:
        return x.mean(0)
    best = [x[0]]
    for s in range(1, S):
        v = x[s]
        for j in range(len(best)):
            lo = torch.minimum(best[j], v)
            v = torch.maximum(best[j], v)
            best[j] = lo
        if len(best) < k:
            best.append(v)
    total = best[0]
    for t in best[1:]:
        total = total + t
    return total / k


def select_hypothesis(inv_depth: Tensor, cost: Tensor) -> tuple[Tensor, Tensor]:
    """Winner-take-all over ``D`` uniformly spaced hypotheses with parabolic sub-hypothesis refinement.

    Args:
        inv_depth: ``[D, H, W]`` hypotheses, uniformly spaced along ``D`` per pixel.
        cost: ``[D, H, W]``.

    Returns:
        ``(inv_depth [H, W], cost [H, W])`` of the refined minimum (the cost of the winning hypothesis).
    """
    D = cost.shape[0]
    # running arg-min over the hypotheses (first minimum wins, as argmin): element-wise passes over
    # contiguous [H, W] slices, many times faster on the CPU than argmin along the strided first axis
    c1 = cost[0].clone()
    i1 = torch.zeros(cost.shape[1:], dtype=torch.long, device=cost.device)
    for d in range(1, D):
        better = cost[d] < c1
        c1 = torch.where(better, cost[d], c1)
        i1.masked_fill_(better, d)
    idx = i1[None]
    x1 = inv_depth.gather(0, idx)[0]
    if D < 3:
        return x1, c1
    lo = (idx - 1).clamp_min(0)
    hi = (idx + 1).clamp_max(D - 1)
    c0 = cost.gather(0, lo)[0]
    c2 = cost.gather(0, hi)[0]
    spacing = (inv_depth.gather(0, hi)[0] - inv_depth.gather(0, lo)[0]) / (hi - lo)[0].clamp_min(1)
    denom = c0 - 2.0 * c1 + c2
    interior = (idx[0] > 0) & (idx[0] < D - 1) & (denom > 1e-9)
    delta = torch.where(interior, 0.5 * (c0 - c2) / denom.clamp_min(1e-9), torch.zeros_like(c1)).clamp(-0.5, 0.5)
    return x1 + delta * spacing, c1


# Devillard's / Paeth's 19-comparator network for the median of 9 values
_MEDIAN9 = ((1, 2), (4, 5), (7, 8), (0, 1), (3, 4), (6, 7), (1, 2), (4, 5), (7, 8), (0, 3), (5, 8), (4, 7),
            (3, 6), (1, 4), (2, 5), (4, 7), (4, 2), (6, 4), (4, 2))


def _median3(x: Tensor) -> Tensor:
    """3x3 median filter of ``[H, W]`` (replicated border): a min/max network over the 9 shifted
    images (element-wise passes; ``median`` along a stacked axis is several times slower on the CPU)."""
    h, w = x.shape
    p = F.pad(x[None, None], (1, 1, 1, 1), mode="replicate")[0, 0]
    v = [p[dy:dy + h, dx:dx + w] for dy in range(3) for dx in range(3)]
    for a, b in _MEDIAN9:
        v[a], v[b] = torch.minimum(v[a], v[b]), torch.maximum(v[a], v[b])
    return v[4].contiguous()


def estimate_view_depth(ref: list[ViewLevel], c2w_ref: Tensor, srcs: list[list[ViewLevel]], c2w_srcs: Tensor,
                        depth_range: tuple[float, float], cfg: MVSConfig) -> tuple[Tensor, Tensor]:
    """Depth of one reference view from its sources, coarse to fine.

    Args:
        ref: the reference pyramid (:func:`build_pyramid`, fine to coarse).
        c2w_ref: ``[4, 4]``.
        srcs: per source its pyramid (same number of levels).
        c2w_srcs: ``[S, 4, 4]``.
        depth_range: ``(near, far)`` swept at the coarsest level.
        cfg: the options.

    Returns:
        ``(depth [H, W], ncc [H, W])`` at full resolution: the depth (0 where the match is outside the
        range or its aggregated NCC is below ``cfg.min_ncc``) and the aggregated NCC of the winner.
    """
    near, far = float(depth_range[0]), float(depth_range[1])
    inv_lo, inv_hi = 1.0 / far, 1.0 / near
    L = len(ref)
    top = ref[L - 1]
    h, w = top.gray.shape
    dtype, device = top.gray.dtype, top.gray.device
    planes = torch.linspace(inv_hi, inv_lo, cfg.num_depths, dtype=dtype, device=device)
    hyp = planes[:, None, None].expand(-1, h, w).contiguous()
    spacing = (inv_hi - inv_lo) / (cfg.num_depths - 1)
    offsets = torch.arange(cfg.refine_hypotheses, dtype=dtype, device=device) - cfg.refine_hypotheses // 2
    inv = cost = None
    for lev in range(L - 1, -1, -1):
        r = ref[lev]
        win = RefWindow(r.gray, cfg.window_radius, cfg.window_step, cfg.sigma_color, cfg.sigma_spatial,
                        cfg.min_variance)
        s_lev = [s[lev] for s in srcs]
        passes = 1 if lev == L - 1 else cfg.refine_iterations
        for it in range(passes):
            if inv is not None:
                if inv.shape != r.gray.shape:
                    inv = F.interpolate(inv[None, None], size=r.gray.shape, mode="bilinear", align_corners=False)[0, 0]
                    inv = _median3(inv)
                spacing = spacing / 2.0
                hyp = (inv[None] + offsets[:, None, None] * spacing).clamp(inv_lo * 0.5, inv_hi * 2.0)
            c = hypothesis_costs(win, r, c2w_ref, s_lev, c2w_srcs, hyp, cfg.top_k, cfg.max_batch_pixels)
            inv, cost = select_hypothesis(hyp, c)
    ncc = 1.0 - cost
    ok = (ncc >= cfg.min_ncc) & (inv >= inv_lo) & (inv <= inv_hi)
    depth = torch.where(ok, 1.0 / inv, torch.zeros_like(inv))
    return depth, ncc


def sweep_reference(ref_gray, src_grays, K_ref, c2w_ref, K_srcs, c2w_srcs, planes, cfg: MVSConfig):
    """Literal single-scale plane sweep for one reference (tests): ``(inv_depth [H, W], cost [D, H, W])``.

    For every plane and source: warp with :func:`~forward3d.mvs.cost.warp_by_depth_reference`, score with
    :func:`~forward3d.mvs.cost.weighted_ncc_reference`, cost 2 where the pixel projects outside the
    source, mean of the ``top_k`` best sources, then the arg-min plane with the same parabola.
    Arrays are numpy float64; ``planes`` is ``[D]`` inverse depths.
    """
    import numpy as np

    from forward3d.mvs.cost import warp_by_depth_reference, weighted_ncc_reference

    h, w = ref_gray.shape
    D, S = len(planes), len(src_grays)
    cost = np.zeros((D, h, w))
    for d, p in enumerate(planes):
        per = []
        for s in range(S):
            vals, inside = warp_by_depth_reference(src_grays[s], K_ref, c2w_ref, K_srcs[s], c2w_srcs[s],
                                                   np.full((h, w), 1.0 / p))
            ncc = weighted_ncc_reference(ref_gray, vals, cfg.window_radius, cfg.window_step, cfg.sigma_color,
                                         cfg.sigma_spatial, cfg.min_variance)
            per.append(np.where(inside, 1.0 - ncc, 2.0))
        per = np.sort(np.stack(per), axis=0)
        cost[d] = per[:min(cfg.top_k, S)].mean(0)
    hyp = torch.as_tensor(np.broadcast_to(np.asarray(planes, np.float64)[:, None, None], (D, h, w)).copy())
    inv, _ = select_hypothesis(hyp, torch.as_tensor(cost))
    return inv.numpy(), cost
