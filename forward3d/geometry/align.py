"""Similarity / rigid alignment of corresponding 3D points (Umeyama 1991), plus RANSAC.

``umeyama(src, dst)`` returns ``(s, R, t)`` minimising ``sum_i w_i |dst_i - (s R src_i + t)|^2``.
Build the 4x4 matrix with :func:`forward3d.geometry.make_sim3`.
"""

from __future__ import annotations

import logging

import numpy as np

from forward3d.geometry._util import to_numpy64

__all__ = ["umeyama", "umeyama_ransac"]

log = logging.getLogger(__name__)

_RANK_TOL = 1e-10


def _pairs(src, dst, weights=None, where: str = "umeyama"):
    src = to_numpy64(f"{where} src", src)
    dst = to_numpy64(f"{where} dst", dst)
    if src.ndim != 2 or src.shape[1] != 3:
        raise ValueError(f"{where} src: expected shape [N, 3], found {list(src.shape)}")
    if dst.shape != src.shape:
        raise ValueError(f"{where} dst: expected shape {list(src.shape)} (as src), found {list(dst.shape)}")
    ok = np.isfinite(src).all(1) & np.isfinite(dst).all(1)
    if weights is not None:
        weights = to_numpy64(f"{where} weights", weights)
        if weights.shape != (len(src),):
            raise ValueError(f"{where} weights: expected shape [{len(src)}], found {list(weights.shape)}")
        ok &= np.isfinite(weights) & (weights > 0)
    return src, dst, weights, ok


def _solve(src: np.ndarray, dst: np.ndarray, w: np.ndarray, with_scale: bool,
           allow_degenerate: bool) -> tuple[float, np.ndarray, np.ndarray]:
    """Weighted Umeyama on clean inputs ``[N, 3]`` with weights ``[N]`` summing to > 0."""
    w = w / w.sum()
    mu_s = w @ src
    mu_d = w @ dst
    xs = src - mu_s
    xd = dst - mu_d
    var_s = float(w @ (xs**2).sum(1))
    cov = (xd * w[:, None]).T @ xs  # [3, 3] = sum_i w_i xd_i xs_i^T
    U, D, Vt = np.linalg.svd(cov)
    if not allow_degenerate and (len(src) < 3 or D[0] <= 0 or D[1] <= _RANK_TOL * D[0]):
        raise ValueError("umeyama: degenerate correspondences: expected at least 3 non-collinear "
                         f"points, found {len(src)} points with cross-covariance singular values {D.tolist()}")
    S = np.eye(3)
    if np.linalg.det(U) * np.linalg.det(Vt) < 0:
        S[2, 2] = -1.0
    R = U @ S @ Vt
    if with_scale:
        s = float(np.trace(np.diag(D) @ S) / var_s) if var_s > 0 else 1.0
    else:
        s = 1.0
    t = mu_d - s * R @ mu_s
    return s, R, t


def umeyama(src, dst, with_scale: bool = True, weights=None,
            allow_degenerate: bool = False) -> tuple[float, np.ndarray, np.ndarray]:
    """Least-squares similarity (or rigid) transform from ``src`` to ``dst``.

    Args:
        src, dst: ``[N, 3]`` corresponding points (numpy or torch). Rows with NaN/inf are ignored.
        with_scale: estimate ``s`` (Sim(3)); otherwise ``s = 1`` (SE(3)).
        weights: optional ``[N]`` non-negative weights (rows with weight 0 are ignored).
        allow_degenerate: accept collinear / coincident points and return one of the (equally good)
            minimisers instead of raising (used by ATE on straight-line trajectories; ``s = 1`` when
            ``src`` has no spread).

    Returns:
        ``(s, R [3, 3], t [3])`` float64 minimising ``sum_i w_i |dst_i - (s R src_i + t)|^2``,
        with ``det R = +1``.

    Raises:
        ValueError: fewer than 3 valid rows, or (unless ``allow_degenerate``) collinear / coincident
            points (the rotation is not determined).
    """
    src, dst, weights, ok = _pairs(src, dst, weights)
    n = int(ok.sum())
    if n < 3:
        raise ValueError(f"umeyama: expected at least 3 valid (finite) correspondences, found {n}")
    w = np.ones(n) if weights is None else weights[ok]
    return _solve(src[ok], dst[ok], w, with_scale, allow_degenerate=allow_degenerate)


def _batched_fit(src: np.ndarray, dst: np.ndarray, with_scale: bool):
    """Unweighted Umeyama on minimal samples ``[M, k, 3]`` -> ``(s [M], R [M, 3, 3], t [M, 3], ok [M])``."""
    mu_s = src.mean(1, keepdims=True)
    mu_d = dst.mean(1, keepdims=True)
    xs, xd = src - mu_s, dst - mu_d
    var_s = (xs**2).sum((1, 2)) / src.shape[1]
    cov = np.einsum("mki,mkj->mij", xd, xs) / src.shape[1]
    U, D, Vt = np.linalg.svd(cov)
    sign = np.sign(np.linalg.det(U) * np.linalg.det(Vt))
    sign[sign == 0] = 1.0
    S = np.ones((len(src), 3))
    S[:, 2] = sign
    R = (U * S[:, None, :]) @ Vt
    ok = (D[:, 0] > 0) & (D[:, 1] > _RANK_TOL * D[:, 0]) & (var_s > 0)
    s = np.where(ok, (D * S).sum(1) / np.where(var_s > 0, var_s, 1.0), 1.0) if with_scale else np.ones(len(src))
    t = mu_d[:, 0] - s[:, None] * np.einsum("mij,mj->mi", R, mu_s[:, 0])
    return s, R, t, ok


def _sample_triples(rng: np.random.Generator, n: int, m: int) -> np.ndarray:
    """``[m, 3]`` indices: ``m`` uniform draws of 3 distinct elements of ``range(n)`` (``n >= 3``), vectorised."""
    a = rng.integers(0, n, m)
    b = rng.integers(0, n - 1, m)
    b = b + (b >= a)
    lo, hi = np.minimum(a, b), np.maximum(a, b)
    c = rng.integers(0, n - 2, m)
    c = c + (c >= lo)
    c = c + (c >= hi)
    return np.stack([a, b, c], 1)


def umeyama_ransac(src, dst, threshold: float, iters: int = 1000, with_scale: bool = True,
                   seed: int | None = 0, refine_iters: int = 3,
                   confidence: float | None = None) -> tuple[float, np.ndarray, np.ndarray, np.ndarray]:
    """Robust :func:`umeyama`: RANSAC over minimal 3-point samples, then a refit on the inliers.

    Args:
        src, dst: ``[N, 3]`` correspondences; NaN/inf rows are ignored (never inliers).
        threshold: inlier distance ``|dst - (s R src + t)| < threshold`` (units of ``dst``).
        iters: number of random minimal samples (the most, with ``confidence``).
        with_scale: Sim(3) (True) or SE(3).
        seed: seed of the sampler (deterministic by default).
        refine_iters: refit-on-inliers rounds after the best sample.
        confidence: stop early (samples are scored 32 at a time) once an all-inlier sample has been
            drawn with this probability, given the best inlier fraction so far (the standard adaptive
            RANSAC bound ``log(1 - confidence) / log(1 - w^3)``); None: always ``iters`` samples.

    Returns:
        ``(s, R [3, 3], t [3], inlier_mask [N] bool)``.

    Raises:
        ValueError: bad shapes, ``threshold <= 0``, fewer than 3 valid rows, or no non-degenerate
            sample with at least 3 inliers.
    """
    if not threshold > 0:
        raise ValueError(f"umeyama_ransac: expected threshold > 0, found {threshold}")
    if iters < 1:
        raise ValueError(f"umeyama_ransac: expected iters >= 1, found {iters}")
    if confidence is not None and not 0.0 < confidence < 1.0:
        raise ValueError(f"umeyama_ransac: expected confidence in (0, 1) or None, found {confidence}")
    src_all, dst_all, _, ok = _pairs(src, dst, None, "umeyama_ransac")
    idx = np.flatnonzero(ok)
    n = len(idx)
    if n < 3:
        raise ValueError(f"umeyama_ransac: expected at least 3 valid (finite) correspondences, found {n}")
    src_v, dst_v = src_all[idx], dst_all[idx]
    rng = np.random.default_rng(seed)
    samples = _sample_triples(rng, n, iters) if n > 3 else np.tile(np.arange(3), (1, 1))
    s, R, t, good = _batched_fit(src_v[samples], dst_v[samples], with_scale)
    s, R, t = s[good], R[good], t[good]
    if len(s) == 0:
        raise ValueError("umeyama_ransac: every sample was degenerate (collinear points)")
    thr2 = threshold**2
    best_count, best_cost, best = -1, np.inf, 0
    chunk = max(1, int(4e6 // max(1, 3 * n)))  # bounds the [chunk, n, 3] residual arrays (~32 MB)
    if confidence is not None:
        chunk = min(chunk, 32)
    needed = len(s)
    for c0 in range(0, len(s), chunk):
        if c0 >= needed:
            break
        sl = slice(c0, c0 + chunk)
        pred = s[sl, None, None] * (src_v[None] @ R[sl].transpose(0, 2, 1)) + t[sl, None, :]  # [m, n, 3]
        r2 = ((pred - dst_v[None]) ** 2).sum(-1)  # [m, n]
        inl = r2 < thr2
        count = inl.sum(1)
        cost = np.where(inl, r2, thr2).sum(1)  # MSAC cost breaks ties between equal counts
        j = int(np.lexsort((cost, -count))[0])  # most inliers, then lowest cost
        if count[j] > best_count or (count[j] == best_count and cost[j] < best_cost):
            best_count, best_cost, best = int(count[j]), float(cost[j]), c0 + j
            if confidence is not None:
                w3 = (best_count / n) ** 3
                needed = (0 if w3 >= 1.0 else len(s) if w3 <= 0.0 else
                          int(np.ceil(np.log(1.0 - confidence) / np.log(1.0 - w3))))
    model = (float(s[best]), R[best], t[best])
    inliers = np.zeros(n, dtype=bool)
    for _ in range(max(1, refine_iters)):
        r2 = ((model[0] * src_v @ model[1].T + model[2] - dst_v) ** 2).sum(1)
        new = r2 < thr2
        if new.sum() < 3:
            break
        if np.array_equal(new, inliers):
            break
        inliers = new
        try:
            model = _solve(src_v[inliers], dst_v[inliers], np.ones(int(inliers.sum())), with_scale, False)
        except ValueError:
            break
    r2 = ((model[0] * src_v @ model[1].T + model[2] - dst_v) ** 2).sum(1)
    inliers = r2 < thr2
    if inliers.sum() < 3:
        raise ValueError(f"umeyama_ransac: no model with at least 3 inliers at threshold {threshold} "
                         f"({n} valid correspondences)")
    mask = np.zeros(len(src_all), dtype=bool)
    mask[idx[inliers]] = True
    log.debug("umeyama_ransac: %d / %d inliers", int(inliers.sum()), n)
    return model[0], model[1], model[2], mask
