"""Geometric consistency across views and point fusion (torch, on the stereo's device).

A reference pixel ``p`` with depth ``d`` is lifted to the world and projected into a source view ``j``
(pixel ``q``, rounded to the pixel that contains it); ``q``'s depth is lifted from that pixel's centre
and projected back into the reference. The pair agrees when the back-projection lands within
``max_reproj_px`` of ``p`` and its depth differs from ``d`` by less than ``max_rel_depth * d``. A depth is
kept when at least ``min_consistent`` sources agree (COLMAP's ``StereoFusion`` rules), or when one agrees
and its match is confident (a high NCC: surfaces that only two views see well, e.g. at the ends of
a trajectory, would otherwise never be reconstructed).

Point fusion visits the views in order: every kept pixel not yet used becomes one point, the mean of
its own world point and those of the agreeing source pixels, coloured by their mean colour; the
agreeing source pixels are marked used, so that a surface seen by ten views gives one point, not ten.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from forward3d.threads import run_workers

__all__ = ["PairCheck", "check_pair", "consistency_filter", "fuse_points", "refill_holes"]


@dataclass
class PairCheck:
    """Result of checking ``P`` reference pixels against one source.

    Attributes:
        agree: ``[P]`` bool, the pair agrees (False where the source depth is invalid).
        index: ``[P]`` int64 flat pixel index ``v * W_j + u`` of ``q`` in the source (valid where ``agree``).
        points: ``[P, 3]`` world point of ``q`` (lifted from its pixel centre).
    """

    agree: Tensor
    index: Tensor
    points: Tensor


Vec3 = tuple[Tensor, Tensor, Tensor]


def _affine(M: Tensor, t: Tensor | None, x: Vec3) -> Vec3:
    """``M @ x + t`` on separate coordinate vectors (contiguous element-wise ops: a ``[P, 3] @ [3, 3]``
    matmul is many times slower on the CPU)."""
    out = []
    for r in range(3):
        o = x[0] * M[r, 0] + x[1] * M[r, 1] + x[2] * M[r, 2]
        out.append(o if t is None else o + t[r])
    return out[0], out[1], out[2]


def _lift(depth: Tensor, K: Tensor, c2w: Tensor, u: Tensor, v: Tensor) -> Vec3:
    """World points (x, y, z vectors) of continuous pixels ``(u, v)`` with z-depth ``depth``."""
    ray = _affine(torch.linalg.inv(K), None, (u, v, torch.ones_like(u)))
    return _affine(c2w[:3, :3], c2w[:3, 3], (ray[0] * depth, ray[1] * depth, ray[2] * depth))


def _project(X: Vec3, K: Tensor, c2w: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``(u, v, z)`` of world points ``X`` in camera ``c2w``."""
    w2c = torch.linalg.inv(c2w)
    pc = _affine(w2c[:3, :3], w2c[:3, 3], X)
    z = pc[2]
    zs = torch.where(z > 1e-9, z, torch.ones_like(z))
    uvw = _affine(K, None, pc)
    return uvw[0] / zs, uvw[1] / zs, z


def _valid_pixels(depth: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(flat index, u, v, depth)`` of the pixels with depth > 0 (and ``mask``), pixel centres at +0.5."""
    w = depth.shape[1]
    ok = depth.reshape(-1) > 0
    if mask is not None:
        ok &= mask.reshape(-1)
    idx = torch.nonzero(ok).squeeze(1)
    u = (idx % w).to(depth.dtype) + 0.5
    v = torch.div(idx, w, rounding_mode="floor").to(depth.dtype) + 0.5
    return idx, u, v, depth.reshape(-1)[idx]


def check_pair(u: Tensor, v: Tensor, d: Tensor, K_r: Tensor, c2w_r: Tensor, depth_j: Tensor, K_j: Tensor,
               c2w_j: Tensor, max_reproj_px: float, max_rel_depth: float) -> PairCheck:
    """Forward-backward check of reference pixels ``(u, v)`` ``[P]`` (continuous, centres at +0.5) with
    depths ``d`` ``[P]`` (> 0) against the source depth map ``[H_j, W_j]`` (0 = invalid)."""
    hj, wj = depth_j.shape
    X = _lift(d, K_r, c2w_r, u, v)
    uj, vj, z = _project(X, K_j, c2w_j)
    iu, iv = torch.floor(uj), torch.floor(vj)
    inside = (z > 1e-9) & (iu >= 0) & (iu < wj) & (iv >= 0) & (iv < hj)
    iu = torch.where(inside, iu, torch.zeros_like(iu)).long()
    iv = torch.where(inside, iv, torch.zeros_like(iv)).long()
    index = iv * wj + iu
    dj = depth_j.reshape(-1)[index]
    Xj = _lift(dj, K_j, c2w_j, iu.to(dj.dtype) + 0.5, iv.to(dj.dtype) + 0.5)
    ub, vb, zb = _project(Xj, K_r, c2w_r)
    err = torch.sqrt((ub - u) ** 2 + (vb - v) ** 2)
    rel = (zb - d).abs() / d.clamp_min(1e-12)
    agree = inside & (dj > 0) & (err < max_reproj_px) & (rel < max_rel_depth)
    return PairCheck(agree, index, torch.stack(Xj, -1))


def consistency_filter(depths: list[Tensor], K: Tensor, c2w: Tensor, sources: list, max_reproj_px: float,
                       max_rel_depth: float, min_consistent: int, confident: list[Tensor] | None = None,
                       workers: int = 1) -> tuple[list[Tensor], list[Tensor]]:
    """``(filtered depths, agreeing-source counts [H, W] int16)`` per view; depths with fewer agreeing
    sources than ``min_consistent`` become 0, except, when ``confident`` (per view ``[H, W]`` bool) is
    given, its pixels that at least one source confirms. ``workers`` > 1: the views on that many threads
    (:func:`forward3d.threads.run_workers`)."""
    def one(r: int) -> tuple[Tensor, Tensor]:
        d = depths[r]
        idx, u, v, z = _valid_pixels(d)
        n = torch.zeros(len(idx), dtype=torch.int16, device=d.device)
        for j in sources[r]:
            j = int(j)
            n += check_pair(u, v, z, K[r], c2w[r], depths[j], K[j], c2w[j], max_reproj_px,
                            max_rel_depth).agree.to(torch.int16)
        full = torch.zeros(d.numel(), dtype=torch.int16, device=d.device)
        full[idx] = n
        full = full.reshape(d.shape)
        keep = full >= min_consistent
        if confident is not None:
            keep |= (full >= 1) & confident[r]
        return torch.where(keep, d, torch.zeros_like(d)), full

    res = run_workers(one, list(range(len(depths))), workers)
    return [o for o, _ in res], [c for _, c in res]


def fuse_points(depths: list[Tensor], images: list[Tensor], K: Tensor, c2w: Tensor, sources: list,
                max_reproj_px: float, max_rel_depth: float, normals: list[Tensor] | None = None
                ) -> tuple[Tensor, Tensor, Tensor | None]:
    """Merge filtered depth maps into one cloud.

    Args:
        depths: per view ``[H, W]`` filtered depth (0 = invalid).
        images: per view ``[H, W, 3]`` float colours.
        K, c2w: ``[N, 3, 3]``, ``[N, 4, 4]``.
        sources: per view its source indices.
        normals: optional per view ``[H, W, 3]`` world normals (the reference pixel's is kept).

    Returns:
        ``(points [P, 3], colours [P, 3] float, normals [P, 3] or None)``.
    """
    used = [torch.zeros(d.numel(), dtype=torch.bool, device=d.device) for d in depths]
    pts, cols, nrms = [], [], []
    for r, d in enumerate(depths):
        idx, u, v, z = _valid_pixels(d, ~used[r])
        acc = torch.stack(_lift(z, K[r], c2w[r], u, v), -1)
        col = images[r].reshape(-1, 3).to(d.dtype)[idx]
        cnt = torch.ones(len(idx), dtype=d.dtype, device=d.device)
        for j in sources[r]:
            j = int(j)
            chk = check_pair(u, v, z, K[r], c2w[r], depths[j], K[j], c2w[j], max_reproj_px, max_rel_depth)
            a = chk.agree
            acc[a] += chk.points[a]
            col[a] += images[j].reshape(-1, 3).to(d.dtype)[chk.index[a]]
            cnt[a] += 1
            used[j][chk.index[a]] = True
        used[r][idx] = True
        pts.append(acc / cnt[:, None])
        cols.append(col / cnt[:, None])
        if normals is not None:
            nrms.append(normals[r].reshape(-1, 3)[idx])
    return torch.cat(pts), torch.cat(cols), (torch.cat(nrms) if normals is not None else None)


def refill_holes(depth: Tensor, raw: Tensor, radius: int, max_rel_depth: float, min_fraction: float = 0.4) -> Tensor:
    """Give back the raw matches of small holes that agree with their consistent neighbours.

    A pixel the consistency filter removed (``depth == 0``) gets its raw stereo depth back when, in its
    ``(2 radius + 1)^2`` window, at least ``min_fraction`` of the pixels kept a depth, those depths span
    less than ``3 * max_rel_depth`` of their median (one smooth surface, not an edge) and the raw depth
    is within ``max_rel_depth`` of that median. No depth is invented (only measured depths come
    back), and holes wider than ``2 * radius`` pixels stay empty.

    Args:
        depth: ``[H, W]`` filtered depth, 0 = invalid.
        raw: ``[H, W]`` raw stereo depth (before the filter), 0 = no match.
        radius: window half-size in pixels (0: nothing is filled).
        max_rel_depth: relative depth tolerance (the consistency filter's).
        min_fraction: fraction of the window that must hold a kept depth.

    Returns:
        ``[H, W]`` depth with the refilled pixels.
    """
    if radius <= 0:
        return depth
    h, w = depth.shape
    k = 2 * radius + 1
    win = torch.nn.functional.unfold(depth[None, None], k, padding=radius)[0].T.reshape(h, w, k * k)
    valid = win > 0
    count = valid.sum(-1)
    big = torch.where(valid, win, torch.full_like(win, float("inf")))
    lo = big.amin(-1)
    hi = torch.where(valid, win, torch.zeros_like(win)).amax(-1)
    med = torch.where(valid, win, torch.full_like(win, float("nan"))).nanmedian(-1).values
    ok = ((depth <= 0) & (raw > 0) & (count >= max(1, math.ceil(min_fraction * k * k)))
          & (hi - lo < 3.0 * max_rel_depth * med) & ((raw - med).abs() < max_rel_depth * med))
    return torch.where(ok, raw, depth)
