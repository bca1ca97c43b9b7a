"""Cameras for every SLAM3R frame from its point maps.

- Intrinsics: a robust focal fit on the frame's LOCAL (camera-frame) point map, principal point at the
  crop centre (Weiszfeld iterations, as DUSt3R's ``estimate_focal_knowing_depth``), or given ones.
- ``c2w``: weighted Procrustes (Umeyama) between the local and the world point map of the frame, with
  iterative trimming of outliers; with a scale when the two maps differ in scale.
"""

from __future__ import annotations

import logging

import numpy as np

logger = logging.getLogger(__name__)

__all__ = ["estimate_focal", "weighted_umeyama", "robust_procrustes", "sample_indices"]


def sample_indices(mask: np.ndarray, max_points: int) -> np.ndarray:
    """Flat indices of at most ``max_points`` True entries of ``mask``, evenly spread (deterministic)."""
    idx = np.flatnonzero(mask.reshape(-1))
    if len(idx) > max_points:
        idx = idx[np.linspace(0, len(idx) - 1, max_points).round().astype(np.int64)]
    return idx


def estimate_focal(pts_cam: np.ndarray, valid: np.ndarray | None = None, iters: int = 10,
                   max_points: int | None = 4096, pixel_offset: float = 0.5,
                   positive_depth_only: bool = True) -> float | None:
    """Focal length (pixels, ``fx = fy``) of a camera-frame point map ``[H, W, 3]``.

    The principal point is the image centre ``(W/2, H/2)``, pixel centres at +0.5. Minimises
    ``sum |f * (x/z, y/z) - (u - cx, v - cy)|`` (L1 of the 2D residual) by Weiszfeld iterations from
    the least-squares solution. ``valid``: ``[H, W]`` bool. Returns None without enough points.

    ``max_points=None`` uses every point; ``pixel_offset=0, positive_depth_only=False`` is DUSt3R's
    ``estimate_focal_knowing_depth(..., focal_mode='weiszfeld')`` exactly (integer pixel coordinates
    against the principal point ``(W/2, H/2)``, points behind the camera included).
    """
    pts = np.asarray(pts_cam, dtype=np.float64)
    if pts.ndim != 3 or pts.shape[-1] != 3:
        raise ValueError(f"estimate_focal: expected a point map [H, W, 3], found {list(pts.shape)}")
    h, w = pts.shape[:2]
    z = pts[..., 2]
    m = np.isfinite(pts).all(-1) & ((z > 1e-8) if positive_depth_only else (z != 0))
    if valid is not None:
        m &= valid
    idx = sample_indices(m, max_points) if max_points is not None else np.flatnonzero(m.reshape(-1))
    if len(idx) < 8:
        return None
    v, u = np.divmod(idx, w)
    pix = np.stack([u + pixel_offset - w / 2.0, v + pixel_offset - h / 2.0], -1)
    p = pts.reshape(-1, 3)[idx]
    xy = p[:, :2] / p[:, 2:3]
    dot_xy_px = (xy * pix).sum(-1)
    dot_xy_xy = (xy * xy).sum(-1)
    if dot_xy_xy.mean() <= 1e-16:
        return None
    f = dot_xy_px.mean() / dot_xy_xy.mean()
    for _ in range(iters):
        dis = np.linalg.norm(pix - f * xy, axis=-1)
        wgt = 1.0 / np.clip(dis, 1e-8, None)
        f = (wgt * dot_xy_px).mean() / max((wgt * dot_xy_xy).mean(), 1e-16)
    return float(f) if np.isfinite(f) and f > 0 else None


def weighted_umeyama(src: np.ndarray, dst: np.ndarray, weights: np.ndarray | None = None,
                     with_scale: bool = True) -> tuple[float, np.ndarray, np.ndarray]:
    """Weighted least-squares ``dst ~ s R src + t`` for ``[N, 3]`` point sets. Returns ``(s, R, t)``."""
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    w = np.ones(len(src)) if weights is None else np.asarray(weights, dtype=np.float64)
    ws = w.sum()
    if len(src) < 3 or ws <= 0:
        raise ValueError(f"weighted_umeyama: expected >= 3 weighted points, found {len(src)}")
    w = w / ws
    mu_s = w @ src
    mu_d = w @ dst
    xs = src - mu_s
    xd = dst - mu_d
    cov = (xd * w[:, None]).T @ xs
    U, S, Vt = np.linalg.svd(cov)
    D = np.eye(3)
    if np.linalg.det(U) * np.linalg.det(Vt) < 0:
        D[2, 2] = -1.0
    R = U @ D @ Vt
    if with_scale:
        var_s = (w * (xs * xs).sum(-1)).sum()
        s = float(np.trace(np.diag(S) @ D) / var_s) if var_s > 1e-20 else 1.0
    else:
        s = 1.0
    t = mu_d - s * R @ mu_s
    return s, R, t


def robust_procrustes(local: np.ndarray, world: np.ndarray, weights: np.ndarray, with_scale: bool,
                      max_points: int = 4096, rounds: int = 3) -> tuple[np.ndarray, float, float]:
    """``c2w`` ``[4, 4]`` of a frame from its local ``[H, W, 3]`` and world ``[H, W, 3]`` point maps.

    ``weights``: ``[H, W]`` non-negative (0 = unusable). Fits ``world ~ s R local + t`` by weighted
    Umeyama, then refits ``rounds`` times on the points whose residual is within 3x the weighted
    median. Returns ``(c2w, s, median residual)``; identity when fewer than 3 usable points.
    """
    mask = (weights > 0) & np.isfinite(local).all(-1) & np.isfinite(world).all(-1)
    mask &= np.abs(local).sum(-1) > 0
    idx = sample_indices(mask, max_points)
    c2w = np.eye(4)
    if len(idx) < 3:
        return c2w, 1.0, float("inf")
    src = local.reshape(-1, 3)[idx].astype(np.float64)
    dst = world.reshape(-1, 3)[idx].astype(np.float64)
    w = weights.reshape(-1)[idx].astype(np.float64)
    keep = np.ones(len(idx), bool)
    s, R, t = 1.0, np.eye(3), np.zeros(3)
    med = float("inf")
    for r in range(rounds + 1):
        if keep.sum() < 3:
            break
        s, R, t = weighted_umeyama(src[keep], dst[keep], w[keep], with_scale)
        res = np.linalg.norm(dst - (s * src @ R.T + t), axis=-1)
        med = float(np.median(res[keep]))
        if r < rounds:
            keep = res <= max(3.0 * med, 1e-9)
    c2w[:3, :3] = R
    c2w[:3, 3] = t
    return c2w, float(s), med
