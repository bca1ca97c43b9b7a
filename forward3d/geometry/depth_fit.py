"""Fit a predicted depth (or disparity) map to a reference: scale, or scale and shift.

``fit_scale`` minimises ``sum (s * pred - ref)^2``; ``fit_scale_shift`` minimises
``sum (s * pred + b - ref)^2``, over the valid pixels only. A pixel is valid when ``pred`` and
``ref`` are finite, ``pred != 0``, ``ref > 0``, the optional ``mask`` is set and ``ref`` lies in the
optional ``[min_depth, max_depth]`` range. Inputs may be numpy arrays or torch tensors of any (equal)
shape; results are python floats (and numpy bool inlier masks for the RANSAC variants).
"""

from __future__ import annotations

import logging

import numpy as np

from forward3d.geometry._util import to_numpy64

__all__ = ["fit_scale", "fit_scale_shift", "fit_scale_ransac", "fit_scale_shift_ransac", "depth_fit_mask"]

log = logging.getLogger(__name__)


def depth_fit_mask(pred, ref, mask=None, min_depth: float | None = None,
                   max_depth: float | None = None) -> np.ndarray:
    """Bool mask (shape of ``pred``) of the pixels the fits use (see the module docstring)."""
    return _prepare(pred, ref, mask, min_depth, max_depth, "depth_fit_mask")[2]


def _prepare(pred, ref, mask, min_depth, max_depth, where: str):
    p = to_numpy64(f"{where} pred", pred)
    r = to_numpy64(f"{where} ref", ref)
    if p.shape != r.shape:
        raise ValueError(f"{where}: expected ref of shape {list(p.shape)} (as pred), found {list(r.shape)}")
    with np.errstate(invalid="ignore"):
        ok = np.isfinite(p) & np.isfinite(r) & (p != 0) & (r > 0)
        if min_depth is not None:
            ok &= r >= min_depth
        if max_depth is not None:
            ok &= r <= max_depth
    if mask is not None:
        if hasattr(mask, "detach"):
            mask = mask.detach().cpu().numpy()
        m = np.asarray(mask)
        if m.shape != p.shape:
            raise ValueError(f"{where}: expected mask of shape {list(p.shape)}, found {list(m.shape)}")
        ok &= m.astype(bool)
    return p, r, ok


def _need(where: str, n: int, k: int) -> None:
    if n < k:
        raise ValueError(f"{where}: too few valid pixels: expected at least {k}, found {n} "
                         "(valid = finite, pred != 0, ref > 0, inside mask and depth range)")


def _ls_scale(p: np.ndarray, r: np.ndarray, where: str) -> float:
    den = float(p @ p)
    if den <= 0:
        raise ValueError(f"{where}: degenerate input: all valid predictions are zero")
    return float(p @ r) / den


def _ls_scale_shift(p: np.ndarray, r: np.ndarray, where: str) -> tuple[float, float]:
    pm, rm = p.mean(), r.mean()
    dp = p - pm
    var = float(dp @ dp)
    if var <= 1e-12 * max(1.0, float(pm * pm)) * len(p):
        raise ValueError(f"{where}: degenerate input: the valid predictions are (nearly) constant")
    s = float(dp @ (r - rm)) / var
    return s, float(rm - s * pm)


def fit_scale(pred, ref, mask=None, min_depth: float | None = None, max_depth: float | None = None) -> float:
    """Least-squares ``s`` minimising ``|s * pred - ref|^2`` over valid pixels.

    Args:
        pred, ref: depth maps of equal shape (``[H, W]``, ``[B, H, W]``, ...), numpy or torch.
        mask: optional bool mask of the same shape.
        min_depth, max_depth: optional valid range of ``ref``.

    Raises:
        ValueError: shape mismatch or no valid pixel.
    """
    p, r, ok = _prepare(pred, ref, mask, min_depth, max_depth, "fit_scale")
    _need("fit_scale", int(ok.sum()), 1)
    return _ls_scale(p[ok], r[ok], "fit_scale")


def fit_scale_shift(pred, ref, mask=None, min_depth: float | None = None,
                    max_depth: float | None = None) -> tuple[float, float]:
    """Least-squares ``(s, b)`` minimising ``|s * pred + b - ref|^2`` over valid pixels.

    Raises:
        ValueError: shape mismatch, fewer than 2 valid pixels or constant predictions.
    """
    p, r, ok = _prepare(pred, ref, mask, min_depth, max_depth, "fit_scale_shift")
    _need("fit_scale_shift", int(ok.sum()), 2)
    return _ls_scale_shift(p[ok], r[ok], "fit_scale_shift")


def _ransac(p: np.ndarray, r: np.ndarray, k: int, threshold: float, relative: bool, iters: int,
            seed: int | None, where: str):
    """Shared RANSAC loop over minimal samples of ``k`` pixels (k=1: scale, k=2: scale+shift)."""
    if not threshold > 0:
        raise ValueError(f"{where}: expected threshold > 0, found {threshold}")
    if iters < 1:
        raise ValueError(f"{where}: expected iters >= 1, found {iters}")
    n = len(p)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(iters, k))
    ps, rs = p[idx], r[idx]
    if k == 1:
        s = rs[:, 0] / ps[:, 0]
        b = np.zeros(iters)
        good = np.isfinite(s)
    else:
        dp = ps[:, 1] - ps[:, 0]
        good = np.abs(dp) > 1e-12 * np.maximum(np.abs(ps).max(1), 1e-30)
        s = np.where(good, (rs[:, 1] - rs[:, 0]) / np.where(good, dp, 1.0), 0.0)
        b = rs[:, 0] - s * ps[:, 0]
    s, b = s[good], b[good]
    if len(s) == 0:
        raise ValueError(f"{where}: every sample was degenerate")
    norm = r if relative else np.ones_like(r)
    best_count, best_cost, best = -1, np.inf, 0
    chunk = max(1, int(4e6 // max(1, n)))  # bounds the [chunk, n] residual arrays (~32 MB)
    for c0 in range(0, len(s), chunk):
        res = np.abs(s[c0:c0 + chunk, None] * p[None] + b[c0:c0 + chunk, None] - r[None]) / norm[None]
        inl = res < threshold
        count = inl.sum(1)
        cost = np.where(inl, res, threshold).sum(1)
        j = int(np.lexsort((cost, -count))[0])
        if count[j] > best_count or (count[j] == best_count and cost[j] < best_cost):
            best_count, best_cost, best = int(count[j]), float(cost[j]), c0 + j
    sb = (float(s[best]), float(b[best]))
    inl = np.abs(sb[0] * p + sb[1] - r) / norm < threshold
    for _ in range(3):  # refit on inliers, re-select
        if inl.sum() < k:
            break
        try:
            sb = (_ls_scale(p[inl], r[inl], where), 0.0) if k == 1 else _ls_scale_shift(p[inl], r[inl], where)
        except ValueError:
            break
        new = np.abs(sb[0] * p + sb[1] - r) / norm < threshold
        if np.array_equal(new, inl):
            break
        inl = new
    if inl.sum() < k:
        raise ValueError(f"{where}: no model with at least {k} inliers at threshold {threshold}")
    return sb, inl


def fit_scale_ransac(pred, ref, mask=None, threshold: float = 0.05, relative: bool = True, iters: int = 200,
                     seed: int | None = 0, min_depth: float | None = None,
                     max_depth: float | None = None) -> tuple[float, np.ndarray]:
    """Robust :func:`fit_scale`: RANSAC over single pixels, least-squares refit on inliers.

    Args:
        threshold: inlier residual ``|s * pred - ref|`` bound; divided by ``ref`` when ``relative``
            (default: 5 % of the reference depth).
        iters: number of random samples. seed: sampler seed (deterministic by default).

    Returns:
        ``(s, inlier_mask)``; the mask has ``pred``'s shape (invalid pixels are never inliers).
    """
    p, r, ok = _prepare(pred, ref, mask, min_depth, max_depth, "fit_scale_ransac")
    _need("fit_scale_ransac", int(ok.sum()), 1)
    (s, _), inl = _ransac(p[ok], r[ok], 1, threshold, relative, iters, seed, "fit_scale_ransac")
    out = np.zeros(p.shape, dtype=bool)
    out[ok] = inl
    return s, out


def fit_scale_shift_ransac(pred, ref, mask=None, threshold: float = 0.05, relative: bool = True,
                           iters: int = 200, seed: int | None = 0, min_depth: float | None = None,
                           max_depth: float | None = None) -> tuple[float, float, np.ndarray]:
    """Robust :func:`fit_scale_shift` (pixel-pair samples); returns ``(s, b, inlier_mask)``."""
    p, r, ok = _prepare(pred, ref, mask, min_depth, max_depth, "fit_scale_shift_ransac")
    _need("fit_scale_shift_ransac", int(ok.sum()), 2)
    (s, b), inl = _ransac(p[ok], r[ok], 2, threshold, relative, iters, seed, "fit_scale_shift_ransac")
    out = np.zeros(p.shape, dtype=bool)
    out[ok] = inl
    return s, b, out
