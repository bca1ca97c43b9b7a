"""Camera pose from 2D-3D correspondences (PnP) with known intrinsics.

- :func:`solve_pnp`: weighted PnP by orthogonal iteration (Lu, Hager & Mjolsness 2000): alternate
  the optimal translation for the rotation, the projection of the points onto their lines of sight
  and a weighted Procrustes (the solver of :func:`forward3d.geometry.align.umeyama`, no scale). It minimises the
  weighted object-space error ``sum_i w_i |(I - V_i)(R X_i + t)|^2`` (``V_i`` the projector on pixel
  i's ray), starts from a given pose and/or a normalised DLT, trims outliers by reprojection error
  in a few rounds and ends with a Levenberg-Marquardt refinement of the weighted reprojection
  error. No dependency beyond numpy.
- :func:`solve_pnp_ransac`: OpenCV's ``solvePnPRansac`` with its defaults (what Spann3R's demo
  uses); needs ``pip install 'forward3d[opencv]'``.

Pixels follow the forward3d convention (pixel centres at +0.5: the centre of pixel ``(row, col)`` is
``(col + 0.5, row + 0.5)``) with ``K`` in the same convention; poses are ``c2w`` [4, 4].
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from forward3d.geometry._util import to_numpy64
from forward3d.geometry.align import _solve  # the weighted Umeyama / Procrustes of align.umeyama
from forward3d.geometry.se3 import so3_exp

__all__ = ["PnPResult", "solve_pnp", "solve_pnp_ransac", "reprojection_errors"]

log = logging.getLogger(__name__)


@dataclass
class PnPResult:
    """``c2w`` [4, 4]; ``median_error`` / ``inlier_ratio``: reprojection error (pixels) of the kept
    points and the fraction kept; ``iterations`` of the last round; ``init``: the starting pose that
    won (``"given"``, ``"dlt"`` or ``"identity"``); ``ok``: enough points and a finite result."""

    c2w: np.ndarray
    median_error: float
    inlier_ratio: float
    iterations: int
    init: str
    ok: bool


def _check(points, pixels, K, weights):
    X = to_numpy64("solve_pnp points", points)
    uv = to_numpy64("solve_pnp pixels", pixels)
    K = to_numpy64("solve_pnp K", K)
    if X.ndim != 2 or X.shape[1] != 3:
        raise ValueError(f"solve_pnp points: expected shape [N, 3], found {list(X.shape)}")
    if uv.shape != (len(X), 2):
        raise ValueError(f"solve_pnp pixels: expected shape [{len(X)}, 2], found {list(uv.shape)}")
    if K.shape != (3, 3):
        raise ValueError(f"solve_pnp K: expected shape [3, 3], found {list(K.shape)}")
    w = np.ones(len(X)) if weights is None else to_numpy64("solve_pnp weights", weights)
    if w.shape != (len(X),):
        raise ValueError(f"solve_pnp weights: expected shape [{len(X)}], found {list(w.shape)}")
    ok = np.isfinite(X).all(1) & np.isfinite(uv).all(1) & np.isfinite(w) & (w > 0)
    return X[ok], uv[ok], K, w[ok]


def reprojection_errors(points: np.ndarray, pixels: np.ndarray, K: np.ndarray, c2w: np.ndarray) -> np.ndarray:
    """``[N]`` pixel distances between ``pixels`` and the projections of world ``points`` (inf behind)."""
    w2c = np.linalg.inv(c2w)
    q = points @ w2c[:3, :3].T + w2c[:3, 3]
    z = q[:, 2]
    zs = np.where(z > 1e-12, z, 1.0)
    u = K[0, 0] * q[:, 0] / zs + K[0, 1] * q[:, 1] / zs + K[0, 2]
    v = K[1, 1] * q[:, 1] / zs + K[1, 2]
    err = np.hypot(u - pixels[:, 0], v - pixels[:, 1])
    return np.where(z > 1e-12, err, np.inf)


def _rays(uv: np.ndarray, K: np.ndarray) -> np.ndarray:
    h = np.concatenate([uv, np.ones((len(uv), 1))], 1)
    return h @ np.linalg.inv(K).T  # [N, 3] directions with z = 1


def _dlt(X: np.ndarray, rays: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """Normalised DLT: ``(R, t)`` of ``w2c`` or None when degenerate (e.g. coplanar points)."""
    if len(X) < 6:
        return None
    mu = X.mean(0)
    sc = np.sqrt(((X - mu) ** 2).sum(1).mean() / 3.0)
    if not sc > 0:
        return None
    Xn = np.concatenate([(X - mu) / sc, np.ones((len(X), 1))], 1)  # [N, 4]
    x, y = rays[:, 0:1], rays[:, 1:2]
    z4 = np.zeros_like(Xn)
    A = np.concatenate([np.concatenate([Xn, z4, -x * Xn], 1), np.concatenate([z4, Xn, -y * Xn], 1)], 0)
    ev, vec = np.linalg.eigh(A.T @ A)  # ascending: the null vector of A is the first eigenvector
    if ev[1] <= 1e-12 * ev[-1]:  # a second null vector: degenerate configuration (e.g. coplanar points)
        return None
    P = vec[:, 0].reshape(3, 4)
    M = P[:, :3]
    if np.linalg.det(M) < 0:
        P, M = -P, -M
    U, s, Vt3 = np.linalg.svd(M)
    R = U @ Vt3
    t_n = P[:, 3] / s.mean()
    t = t_n - R @ mu / sc  # undo the normalisation: R (X - mu)/sc + t_n, up to the scale sc
    t = t * sc
    q = X @ R.T + t
    if np.median(q[:, 2]) < 0:
        return None
    return R, t


def _iterate(X: np.ndarray, rays: np.ndarray, w: np.ndarray, R: np.ndarray, max_iters: int,
             tol: float) -> tuple[np.ndarray, np.ndarray, int, float]:
    """Orthogonal iteration from ``R``; returns ``(R, t, iterations, object-space error)``."""
    V = rays / (rays * rays).sum(1, keepdims=True)  # V_i q = rays_i (rays_i . q) / |rays_i|^2
    wn = w / w.sum()
    # optimal t for R: t = (I - sum w V)^-1 sum w (V - I) R X
    Vsum = np.einsum("n,ni,nj->ij", wn, rays, V)  # sum_i w_i V_i
    A = np.linalg.inv(np.eye(3) - Vsum)

    def t_of(R: np.ndarray) -> np.ndarray:
        q = X @ R.T
        vq = rays * (V * q).sum(1, keepdims=True)
        return A @ (wn @ (vq - q))

    def err(R: np.ndarray, t: np.ndarray) -> float:
        q = X @ R.T + t
        return float(wn @ ((q - rays * (V * q).sum(1, keepdims=True)) ** 2).sum(1))

    t = t_of(R)
    e = err(R, t)
    it = 0
    for it in range(1, max_iters + 1):
        q = X @ R.T + t
        proj = rays * (V * q).sum(1, keepdims=True)  # the points moved onto their lines of sight
        _, R, _ = _solve(X, proj, w, with_scale=False, allow_degenerate=True)  # weighted Procrustes
        t = t_of(R)
        e_new = err(R, t)
        if abs(e - e_new) <= tol * max(e, 1e-30):
            e = e_new
            break
        e = e_new
    return R, t, it, e


def _refine(X: np.ndarray, uv: np.ndarray, K: np.ndarray, w: np.ndarray, R: np.ndarray, t: np.ndarray,
            iters: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """Levenberg-Marquardt on the weighted squared reprojection error (the orthogonal iteration
    converges linearly, slowly on near-planar scenes; this finishes it quadratically)."""
    fx, fy, s_, cx, cy = K[0, 0], K[1, 1], K[0, 1], K[0, 2], K[1, 2]

    def residual(R: np.ndarray, t: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
        q = X @ R.T + t
        z = np.where(q[:, 2] > 1e-9, q[:, 2], 1e-9)
        r = np.stack([fx * q[:, 0] / z + s_ * q[:, 1] / z + cx - uv[:, 0], fy * q[:, 1] / z + cy - uv[:, 1]], 1)
        return q, r, float(w @ (r * r).sum(1))

    q, r, cost = residual(R, t)
    lam = 1e-3
    for _ in range(iters):
        x, y, z = q[:, 0], q[:, 1], np.where(q[:, 2] > 1e-9, q[:, 2], 1e-9)
        dpi = np.zeros((len(q), 2, 3))  # d(u, v) / d q
        dpi[:, 0, 0], dpi[:, 0, 1], dpi[:, 0, 2] = fx / z, s_ / z, -(fx * x + s_ * y) / z**2
        dpi[:, 1, 1], dpi[:, 1, 2] = fy / z, -fy * y / z**2
        dq = np.zeros((len(q), 3, 6))  # q' = q + omega x q + dt: d q / d (omega, dt)
        dq[:, 0, 1], dq[:, 0, 2], dq[:, 1, 0], dq[:, 1, 2], dq[:, 2, 0], dq[:, 2, 1] = z, -y, -z, x, y, -x
        dq[:, :, 3:] = np.eye(3)
        J = dpi @ dq  # [N, 2, 6]
        H = np.einsum("n,nki,nkj->ij", w, J, J)
        g = np.einsum("n,nki,nk->i", w, J, r)
        while True:
            step = -np.linalg.solve(H + lam * np.diag(np.diag(H) + 1e-12), g)
            dR = so3_exp(step[:3])
            R2, t2 = dR @ R, dR @ t + step[3:]
            q2, r2, cost2 = residual(R2, t2)
            if cost2 < cost:
                R, t, q, r, lam = R2, t2, q2, r2, max(lam / 10, 1e-9)
                done = cost - cost2 <= 1e-12 * max(cost, 1e-30)
                cost = cost2
                break
            lam *= 10
            if lam > 1e8:
                return R, t
        if done:
            break
    return R, t


def _c2w(R: np.ndarray, t: np.ndarray) -> np.ndarray:
    c2w = np.eye(4)
    c2w[:3, :3] = R.T
    c2w[:3, 3] = -R.T @ t
    return c2w


def solve_pnp(points, pixels, K, weights=None, c2w_init: np.ndarray | None = None, max_iters: int = 30,
              tol: float = 1e-9, rounds: int = 3, max_points: int | None = 4096) -> PnPResult:
    """Weighted PnP (see the module docstring).

    Args:
        points: ``[N, 3]`` world points; pixels: ``[N, 2]`` their pixel coordinates.
        K: ``[3, 3]`` intrinsics. weights: ``[N]`` non-negative (0 = unused); default 1.
        c2w_init: a starting pose (e.g. the previous video frame's); the DLT start is tried too and
            the better one kept. Without either, the identity rotation is the start.
        rounds: outlier trimming rounds (keep errors within 3x the weighted median, at least 1 px).
        max_points: evenly subsample to at most this many points (None = all).

    Returns:
        :class:`PnPResult`; ``ok`` False (identity pose) with fewer than 4 usable points.
    """
    X, uv, K, w = _check(points, pixels, K, weights)
    if max_points is not None and len(X) > max_points:
        idx = np.linspace(0, len(X) - 1, max_points).round().astype(np.int64)
        X, uv, w = X[idx], uv[idx], w[idx]
    if len(X) < 4:
        return PnPResult(np.eye(4), float("inf"), 0.0, 0, "none", False)
    rays = _rays(uv, K)
    starts: list[tuple[str, np.ndarray]] = []
    if c2w_init is not None:
        c2w0 = to_numpy64("solve_pnp c2w_init", c2w_init)
        if c2w0.shape != (4, 4):
            raise ValueError(f"solve_pnp c2w_init: expected shape [4, 4], found {list(c2w0.shape)}")
        starts.append(("given", c2w0[:3, :3].T))
    dlt = _dlt(X, rays)
    if dlt is not None:
        starts.append(("dlt", dlt[0]))
    if not starts:
        starts.append(("identity", np.eye(3)))
    best = None
    for name, R0 in starts:
        R, t, it, e = _iterate(X, rays, w, R0, max_iters, tol)
        front = float(np.mean((X @ R.T + t)[:, 2] > 0))
        key = (front < 0.5, e)  # prefer solutions with the points in front of the camera
        if best is None or key < best[0]:
            best = (key, name, R, t, it)
    _, name, R, t, it = best
    keep = np.ones(len(X), bool)
    for _ in range(rounds):
        errs = reprojection_errors(X, uv, K, _c2w(R, t))
        med = float(np.median(errs[keep])) if keep.any() else float("inf")
        new_keep = errs <= max(3.0 * med, 1.0)
        if new_keep.sum() < 4 or np.array_equal(new_keep, keep):
            break
        keep = new_keep
        R, t, it, _ = _iterate(X[keep], rays[keep], w[keep], R, max_iters, tol)
    R, t = _refine(X[keep], uv[keep], K, w[keep], R, t)
    c2w = _c2w(R, t)
    errs = reprojection_errors(X, uv, K, c2w)
    ok = bool(np.isfinite(c2w).all())
    return PnPResult(c2w, float(np.median(errs[keep])), float(keep.mean()), it, name, ok)


def solve_pnp_ransac(points, pixels, K, threshold: float = 8.0, iters: int = 100,
                     confidence: float = 0.99) -> PnPResult:
    """OpenCV ``solvePnPRansac`` (no distortion, unweighted); the defaults are OpenCV's, as Spann3R's demo.

    ``threshold``: inlier reprojection error (pixels); ``iters``: RANSAC iterations; ``confidence``:
    its early-stop confidence. OpenCV's RANSAC sampler is seeded, so the result is deterministic.
    ``inlier_ratio`` is the fraction of RANSAC inliers.
    """
    try:
        import cv2
    except ImportError as exc:
        raise ImportError("solve_pnp_ransac needs OpenCV: pip install 'forward3d[opencv]'") from exc
    X, uv, K, _ = _check(points, pixels, K, None)
    if len(X) < 4:
        return PnPResult(np.eye(4), float("inf"), 0.0, 0, "none", False)
    ok, rvec, tvec, inliers = cv2.solvePnPRansac(X.astype(np.float32), uv.astype(np.float32),
                                                 K.astype(np.float32), np.zeros(4, np.float32),
                                                 iterationsCount=int(iters), reprojectionError=float(threshold),
                                                 confidence=float(confidence))
    if not ok:
        return PnPResult(np.eye(4), float("inf"), 0.0, 0, "ransac", False)
    R, _ = cv2.Rodrigues(rvec)
    c2w = _c2w(R.astype(np.float64), tvec.reshape(3).astype(np.float64))
    errs = reprojection_errors(X, uv, K, c2w)
    n_in = 0 if inliers is None else len(inliers)
    return PnPResult(c2w, float(np.median(errs)), n_in / len(X), 0, "ransac", True)
