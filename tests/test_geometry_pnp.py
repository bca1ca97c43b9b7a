"""PnP: exact recovery, noise, outliers, weights, starts, planar scenes, OpenCV wrapper, bad input."""

from __future__ import annotations

import numpy as np
import pytest

from forward3d.geometry.pnp import reprojection_errors, solve_pnp, solve_pnp_ransac
from forward3d.geometry.se3 import so3_exp

K = np.array([[200.0, 0.0, 112.0], [0.0, 200.0, 112.0], [0.0, 0.0, 1.0]])


def scene(seed: int = 0, n: int = 500, planar: bool = False):
    rng = np.random.default_rng(seed)
    c2w = np.eye(4)
    c2w[:3, :3] = so3_exp(rng.normal(size=3) * 0.4)
    c2w[:3, 3] = rng.normal(size=3) * 0.5
    cam = np.stack([rng.uniform(-1.5, 1.5, n), rng.uniform(-1.5, 1.5, n),
                    np.full(n, 3.0) if planar else rng.uniform(2.0, 6.0, n)], 1)
    world = cam @ c2w[:3, :3].T + c2w[:3, 3]
    uv = cam[:, :2] / cam[:, 2:3] * 200.0 + 112.0
    return world, uv, c2w


def pose_err(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    dR = a[:3, :3].T @ b[:3, :3]
    ang = np.degrees(np.linalg.norm(dR - np.eye(3)) / np.sqrt(2))  # ~ the rotation angle, precise near 0
    return float(ang), float(np.linalg.norm(a[:3, 3] - b[:3, 3]))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_exact_recovery_without_start(seed):
    X, uv, c2w = scene(seed)
    r = solve_pnp(X, uv, K)
    ang, dt = pose_err(r.c2w, c2w)
    assert r.ok and ang < 1e-6 and dt < 1e-6 and r.median_error < 1e-6 and r.init == "dlt"


def test_noise_outliers_and_weights():
    X, uv, c2w = scene(3)
    rng = np.random.default_rng(0)
    uv = uv + rng.normal(size=uv.shape) * 0.5
    bad = rng.choice(len(X), 100, replace=False)
    uv[bad] += rng.uniform(-60, 60, (100, 2))  # 20% gross outliers
    r = solve_pnp(X, uv, K)
    ang, dt = pose_err(r.c2w, c2w)
    assert ang < 0.2 and dt < 0.01, (ang, dt)
    assert 0.75 < r.inlier_ratio < 0.85 and r.median_error < 1.0
    # zero weights on the outliers: as good without any trimming
    w = np.ones(len(X))
    w[bad] = 0.0
    r0 = solve_pnp(X, uv, K, weights=w, rounds=0)
    ang0, dt0 = pose_err(r0.c2w, c2w)
    assert ang0 < 0.2 and dt0 < 0.01


def test_planar_scene_from_a_given_start():
    X, uv, c2w = scene(4, planar=True)
    start = c2w.copy()
    start[:3, :3] = start[:3, :3] @ so3_exp(np.array([0.1, -0.15, 0.05]))
    start[:3, 3] += 0.2
    r = solve_pnp(X, uv, K, c2w_init=start)
    ang, dt = pose_err(r.c2w, c2w)
    assert r.init == "given" and ang < 1e-5 and dt < 1e-5


def test_reprojection_errors_and_behind_camera():
    X, uv, c2w = scene(5, n=20)
    assert np.allclose(reprojection_errors(X, uv, K, c2w), 0.0, atol=1e-9)
    flipped = c2w.copy()
    flipped[:3, :3] = c2w[:3, :3] @ np.diag([1.0, -1.0, -1.0])  # looking away
    assert np.isinf(reprojection_errors(X, uv, K, flipped)).all()


def test_opencv_ransac_matches():
    X, uv, c2w = scene(6)
    r = solve_pnp_ransac(X, uv, K)
    ang, dt = pose_err(r.c2w, c2w)
    assert r.ok and ang < 1e-3 and dt < 1e-3


def test_bad_input():
    X, uv, _ = scene(7, n=10)
    with pytest.raises(ValueError, match=r"points: expected shape \[N, 3\]"):
        solve_pnp(X[:, :2], uv, K)
    with pytest.raises(ValueError, match="pixels"):
        solve_pnp(X, uv[:5], K)
    with pytest.raises(ValueError, match="K"):
        solve_pnp(X, uv, np.eye(4))
    with pytest.raises(ValueError, match="weights"):
        solve_pnp(X, uv, K, weights=np.ones(3))
    with pytest.raises(ValueError, match="c2w_init"):
        solve_pnp(X, uv, K, c2w_init=np.eye(3))
    r = solve_pnp(X[:3], uv[:3], K)
    assert not r.ok and np.array_equal(r.c2w, np.eye(4))
