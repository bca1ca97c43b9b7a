"""Surface normals of point maps (finite differences) and point clouds (PCA of k nearest neighbours)."""

from __future__ import annotations

import numpy as np

from forward3d.geometry._util import to_numpy64

__all__ = ["normals_from_point_map", "estimate_normals"]


def _shift(a: np.ndarray, d: int, axis: int) -> np.ndarray:
    """``out[i] = a[i + d]`` along ``axis`` (0 = rows, 1 = columns), NaN outside the map."""
    out = np.full_like(a, np.nan)
    n = a.shape[axis]
    if abs(d) >= n:
        return out
    src = [slice(None)] * a.ndim
    dst = [slice(None)] * a.ndim
    if d > 0:
        src[axis], dst[axis] = slice(d, None), slice(None, n - d)
    else:
        src[axis], dst[axis] = slice(None, n + d), slice(-d, None)
    out[tuple(dst)] = a[tuple(src)]
    return out


def _derivative(p: np.ndarray, axis: int) -> np.ndarray:
    """Central difference, falling back to one-sided differences where a neighbour is missing."""
    nxt, prv = _shift(p, 1, axis), _shift(p, -1, axis)
    cands = [nxt - prv, nxt - p, p - prv]
    out = np.full_like(p, np.nan)
    for c in reversed(cands):  # first finite candidate wins
        ok = np.isfinite(c).all(-1)
        out[ok] = c[ok]
    return out


def normals_from_point_map(points: np.ndarray, camera_center=None) -> np.ndarray:
    """Per-pixel unit normals of a point map.

    Args:
        points: ``[H, W, 3]`` points; invalid pixels are NaN/inf (or all-zero, also treated invalid).
        camera_center: ``[3]`` viewpoint the normals are oriented toward; the origin by default
            (right for camera-frame point maps; pass the camera centre for world point maps).

    Returns:
        ``[H, W, 3]`` float64 unit normals with ``n . (camera_center - p) >= 0``; NaN where the
        pixel or both neighbours along a direction are invalid, or the surface is degenerate.
    """
    p = to_numpy64("normals_from_point_map points", points)
    if p.ndim != 3 or p.shape[2] != 3:
        raise ValueError(f"normals_from_point_map points: expected shape [H, W, 3], found {list(p.shape)}")
    p = p.copy()
    invalid = ~(np.isfinite(p).all(-1) & (np.abs(p).sum(-1) > 0))
    p[invalid] = np.nan
    du = _derivative(p, 1)
    dv = _derivative(p, 0)
    n = np.cross(du, dv)
    norm = np.linalg.norm(n, axis=-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        n = np.where(norm > 1e-12, n / norm, np.nan)
    c = np.zeros(3) if camera_center is None else to_numpy64("camera_center", camera_center).reshape(3)
    flip = (n * (c - p)).sum(-1) < 0
    n[flip] *= -1.0
    n[invalid] = np.nan
    return n


def estimate_normals(points, k: int = 16, viewpoints=None, workers: int = -1) -> np.ndarray:
    """Unit normals of a point cloud by PCA of each point's ``k`` nearest neighbours.

    Args:
        points: ``[N, 3]``; non-finite rows get NaN normals.
        k: neighbourhood size (including the point itself), at least 3.
        viewpoints: optional ``[3]`` (one viewpoint) or ``[N, 3]`` (one per point, e.g. the centre
            of the camera that saw it); normals are flipped to face them. Without it the sign is
            arbitrary.
        workers: cKDTree query workers (-1 = all cores).

    Returns:
        ``[N, 3]`` float64 unit normals (the eigenvector of the smallest covariance eigenvalue).
    """
    from scipy.spatial import cKDTree

    p = to_numpy64("estimate_normals points", points)
    if p.ndim != 2 or p.shape[1] != 3:
        raise ValueError(f"estimate_normals points: expected shape [N, 3], found {list(p.shape)}")
    if k < 3:
        raise ValueError(f"estimate_normals: expected k >= 3, found {k}")
    ok = np.isfinite(p).all(1)
    q = p[ok]
    out = np.full_like(p, np.nan)
    if len(q) < 3:
        raise ValueError(f"estimate_normals: expected at least 3 finite points, found {len(q)}")
    kk = min(k, len(q))
    _, nn = cKDTree(q).query(q, k=kk, workers=workers)
    nb = q[nn]  # [M, k, 3]
    nb = nb - nb.mean(1, keepdims=True)
    cov = np.einsum("mki,mkj->mij", nb, nb)
    _, vecs = np.linalg.eigh(cov)
    n = vecs[:, :, 0]
    if viewpoints is not None:
        v = to_numpy64("estimate_normals viewpoints", viewpoints)
        if v.shape == (3,):
            v = v[None]
        elif v.shape == p.shape:
            v = v[ok]
        else:
            raise ValueError(f"estimate_normals viewpoints: expected shape [3] or {list(p.shape)}, found {list(v.shape)}")
        flip = (n * (v - q)).sum(1) < 0
        n[flip] *= -1.0
    out[ok] = n
    return out
