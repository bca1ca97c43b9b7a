"""Umeyama alignment (+RANSAC), depth scale/shift fits and normals."""

import numpy as np
import pytest
import torch

from forward3d.geometry import (
    depth_to_points,
    estimate_normals,
    fit_scale,
    fit_scale_ransac,
    fit_scale_shift,
    fit_scale_shift_ransac,
    normals_from_point_map,
    so3_exp,
    umeyama,
    umeyama_ransac,
)

R0 = so3_exp([0.4, -0.3, 1.1])
T0 = np.array([0.5, -2.0, 3.0])
S0 = 1.7


def _apply(src, s=S0, R=R0, t=T0):
    return s * src @ R.T + t


# ----------------------------------------------------------------------------------------------
# Umeyama
# ----------------------------------------------------------------------------------------------


def test_umeyama_exact_sim3_and_se3():
    rng = np.random.default_rng(1)
    src = rng.normal(size=(20, 3))
    s, R, t = umeyama(src, _apply(src))
    assert abs(s - S0) < 1e-12
    np.testing.assert_allclose(R, R0, atol=1e-12)
    np.testing.assert_allclose(t, T0, atol=1e-12)
    s, R, t = umeyama(src, _apply(src, s=1.0), with_scale=False)
    assert s == 1.0
    np.testing.assert_allclose(R, R0, atol=1e-12)
    # exactly 3 points (minimal, planar) still work; torch inputs too
    s, R, t = umeyama(torch.tensor(src[:3]), torch.tensor(_apply(src[:3])))
    np.testing.assert_allclose(R, R0, atol=1e-10)
    assert abs(np.linalg.det(R) - 1) < 1e-12


def test_umeyama_noise_weights_and_nan_rows():
    rng = np.random.default_rng(2)
    src = rng.normal(size=(2000, 3))
    dst = _apply(src) + rng.normal(scale=0.01, size=src.shape)
    s, R, t = umeyama(src, dst)
    assert abs(s - S0) < 2e-3
    assert np.abs(R - R0).max() < 2e-3
    assert np.abs(t - T0).max() < 2e-3
    # NaN/inf rows and zero-weight rows are ignored
    dst2 = _apply(src[:50])
    dst2[:5] = np.nan
    src2 = src[:50].copy()
    src2[5] = np.inf
    w = np.ones(50)
    w[6:10] = 0
    dst2[6:10] += 100.0  # garbage rows with zero weight
    s, R, t = umeyama(src2, dst2, weights=w)
    assert abs(s - S0) < 1e-10 and np.abs(R - R0).max() < 1e-10


def test_umeyama_reflection_is_never_returned():
    rng = np.random.default_rng(3)
    src = rng.normal(size=(30, 3))
    dst = src * [1, 1, -1]  # a mirror: best proper rotation, det +1
    _, R, _ = umeyama(src, dst)
    assert abs(np.linalg.det(R) - 1) < 1e-12


def test_umeyama_degenerate_raises():
    with pytest.raises(ValueError, match="at least 3"):
        umeyama(np.zeros((2, 3)), np.zeros((2, 3)))
    line = np.linspace(0, 1, 10)[:, None] * [1.0, 2.0, 3.0]
    with pytest.raises(ValueError, match="collinear"):
        umeyama(line, line + 1)
    with pytest.raises(ValueError, match="collinear"):
        umeyama(np.ones((5, 3)), np.ones((5, 3)))
    bad = np.full((5, 3), np.nan)
    with pytest.raises(ValueError, match="found 0"):
        umeyama(bad, bad)
    with pytest.raises(ValueError, match=r"\[N, 3\]"):
        umeyama(np.zeros((5, 2)), np.zeros((5, 2)))
    with pytest.raises(ValueError, match="dst"):
        umeyama(np.zeros((5, 3)), np.zeros((4, 3)))


def test_umeyama_ransac_40_percent_outliers():
    rng = np.random.default_rng(4)
    src = rng.normal(size=(200, 3))
    dst = _apply(src) + rng.normal(scale=1e-3, size=src.shape)
    out = rng.permutation(200)[:80]
    dst[out] += rng.normal(scale=3.0, size=(80, 3))
    dst[0] = np.nan  # ignored, never an inlier
    with pytest.raises(AssertionError):  # plain least squares is ruined
        np.testing.assert_allclose(umeyama(src, dst)[1], R0, atol=1e-2)
    s, R, t, inl = umeyama_ransac(src, dst, threshold=0.02, iters=300, seed=0)
    assert abs(s - S0) < 1e-3 and np.abs(R - R0).max() < 1e-3 and np.abs(t - T0).max() < 1e-2
    truth = np.ones(200, dtype=bool)
    truth[out] = False
    truth[0] = False
    assert not inl[0]
    assert (inl == truth).mean() > 0.98
    # deterministic for a given seed
    np.testing.assert_array_equal(umeyama_ransac(src, dst, 0.02, 300, seed=0)[3], inl)
    # rigid variant
    dst_r = _apply(src, s=1.0)
    dst_r[out] += 5.0
    s, R, t, inl = umeyama_ransac(src, dst_r, 0.01, 200, with_scale=False)
    assert s == 1.0 and np.abs(R - R0).max() < 1e-9 and inl.sum() == 120


def test_umeyama_ransac_bad_input():
    with pytest.raises(ValueError, match="threshold"):
        umeyama_ransac(np.zeros((5, 3)), np.zeros((5, 3)), threshold=0)
    with pytest.raises(ValueError, match="degenerate|collinear"):
        line = np.linspace(0, 1, 10)[:, None] * [1.0, 2.0, 3.0]
        umeyama_ransac(line, line, 0.1, iters=20)


# ----------------------------------------------------------------------------------------------
# Depth fits
# ----------------------------------------------------------------------------------------------


def test_fit_scale_with_holes():
    rng = np.random.default_rng(5)
    ref = rng.uniform(0.5, 5.0, (30, 40))
    pred = ref / 2.5
    pred[0, :10] = np.nan
    pred[1, :10] = 0.0
    pred[2, :10] = np.inf
    ref[3, :10] = 0.0
    ref[4, :10] = np.nan
    pred[3, :10] = 99.0  # paired with ref = 0: ignored
    assert fit_scale(pred, ref) == pytest.approx(2.5, rel=1e-12)
    # torch inputs, masks and a depth range
    assert fit_scale(torch.tensor(pred), torch.tensor(ref)) == pytest.approx(2.5, rel=1e-12)
    assert isinstance(fit_scale(torch.tensor(pred), torch.tensor(ref)), float)
    pred2 = pred.copy()
    pred2[ref > 4.0] *= 10  # would bias the fit unless excluded by the range
    assert fit_scale(pred2, ref, max_depth=4.0) == pytest.approx(2.5, rel=1e-12)
    mask = ref <= 4.0
    assert fit_scale(pred2, ref, mask=mask) == pytest.approx(2.5, rel=1e-12)
    assert fit_scale(pred2, ref, mask=torch.tensor(mask)) == pytest.approx(2.5, rel=1e-12)


def test_fit_scale_least_squares_analytic():
    # s = sum(p r) / sum(p p)
    p = np.array([1.0, 2.0, 3.0])
    r = np.array([2.0, 3.0, 7.0])
    assert fit_scale(p, r) == pytest.approx((2 + 6 + 21) / 14)
    s, b = fit_scale_shift(p, r)
    A = np.stack([p, np.ones(3)], 1)
    s_ref, b_ref = np.linalg.lstsq(A, r, rcond=None)[0]
    assert s == pytest.approx(s_ref) and b == pytest.approx(b_ref)


def test_fit_scale_shift_exact_with_nan():
    rng = np.random.default_rng(6)
    ref = rng.uniform(0.5, 5.0, (2, 20, 20))
    pred = (ref - 0.3) / 1.9
    pred[0, 0] = np.nan
    s, b = fit_scale_shift(pred, ref)
    assert s == pytest.approx(1.9, rel=1e-12) and b == pytest.approx(0.3, rel=1e-10)


def test_depth_fit_errors():
    with pytest.raises(ValueError, match="too few valid pixels: expected at least 1, found 0"):
        fit_scale(np.zeros((4, 4)), np.ones((4, 4)))
    with pytest.raises(ValueError, match="expected at least 2"):
        fit_scale_shift(np.array([1.0, np.nan]), np.array([1.0, 1.0]))
    with pytest.raises(ValueError, match="constant"):
        fit_scale_shift(np.ones(10), np.arange(1.0, 11.0))
    with pytest.raises(ValueError, match="shape"):
        fit_scale(np.ones((4, 4)), np.ones((4, 5)))
    with pytest.raises(ValueError, match="mask"):
        fit_scale(np.ones((4, 4)), np.ones((4, 4)), mask=np.ones(3, bool))
    with pytest.raises(ValueError, match="threshold"):
        fit_scale_ransac(np.ones(4), np.ones(4), threshold=0)


def test_fit_scale_ransac_outliers():
    rng = np.random.default_rng(7)
    ref = rng.uniform(1.0, 5.0, 2000)
    pred = ref / 3.0
    bad = rng.random(2000) < 0.4
    pred[bad] = rng.uniform(0.1, 10.0, bad.sum())
    pred[:3] = np.nan
    assert abs(fit_scale(pred, ref) - 3.0) > 0.1
    s, inl = fit_scale_ransac(pred, ref, threshold=0.01)
    assert s == pytest.approx(3.0, rel=1e-3)
    assert inl.shape == pred.shape and not inl[:3].any()
    assert inl[~bad].mean() > 0.99
    # scale + shift
    pred2 = (ref - 0.5) / 2.0
    pred2[bad] = rng.uniform(-1.0, 5.0, bad.sum())
    s, b, inl = fit_scale_shift_ransac(torch.tensor(pred2), torch.tensor(ref), threshold=0.005, iters=300)
    assert s == pytest.approx(2.0, rel=1e-2) and b == pytest.approx(0.5, abs=2e-2)
    assert inl[~bad].mean() > 0.99
    # absolute threshold
    s, _ = fit_scale_ransac(pred, ref, threshold=0.01, relative=False)
    assert s == pytest.approx(3.0, rel=1e-3)


# ----------------------------------------------------------------------------------------------
# Normals
# ----------------------------------------------------------------------------------------------

K = np.array([[60.0, 0.0, 32.0], [0.0, 60.0, 24.0], [0.0, 0.0, 1.0]])


def test_normals_of_a_tilted_plane_point_map():
    # plane n . x = d with n facing the camera
    n_true = np.array([0.3, -0.2, -1.0])
    n_true /= np.linalg.norm(n_true)
    d = -2.0
    rays = depth_to_points(np.ones((48, 64)), K)
    depth = d / (rays @ n_true)
    pts = depth_to_points(depth, K)
    pts[10, 10] = np.nan  # a hole: neighbours fall back to one-sided differences
    n = normals_from_point_map(pts)
    assert n.shape == (48, 64, 3)
    ok = np.isfinite(n).all(-1)
    assert not ok[10, 10] and ok.sum() == 48 * 64 - 1
    np.testing.assert_allclose(n[ok], np.broadcast_to(n_true, n[ok].shape), atol=1e-9)
    # orientation follows the given camera centre
    n_far = normals_from_point_map(pts, camera_center=[0, 0, 100.0])
    np.testing.assert_allclose(n_far[ok], -n[ok], atol=1e-9)
    with pytest.raises(ValueError, match=r"\[H, W, 3\]"):
        normals_from_point_map(np.zeros((4, 3)))


def test_normals_of_a_sphere_point_cloud():
    rng = np.random.default_rng(8)
    v = rng.normal(size=(3000, 3))
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    pts = 2.0 * v + [1.0, 0.0, 0.0]
    pts[0] = np.nan
    n = estimate_normals(pts, k=12, viewpoints=[1.0, 0.0, 0.0])  # the centre: normals point inward
    assert np.isnan(n[0]).all()
    cos = (n[1:] * -v[1:]).sum(1)
    assert cos.min() > 0.97
    # per-point viewpoints outside the sphere: normals point outward
    n_out = estimate_normals(pts, k=12, viewpoints=pts * 2)
    assert (n_out[1:] * v[1:]).sum(1).min() > 0.97
    np.testing.assert_allclose(np.linalg.norm(n_out[1:], axis=1), 1.0)
    with pytest.raises(ValueError, match="viewpoints"):
        estimate_normals(pts, viewpoints=np.zeros((5, 3)))


def test_point_map_normals_of_a_sphere():
    # sphere of radius 1 centred at z = 3 seen from the origin: normals face the camera
    h, w = 48, 64
    rays = depth_to_points(np.ones((h, w)), K)
    rays /= np.linalg.norm(rays, axis=-1, keepdims=True)
    c = np.array([0, 0, 3.0])
    b = rays @ c
    disc = b**2 - (c @ c - 1.0)
    t = np.where(disc > 0, b - np.sqrt(np.maximum(disc, 0)), np.nan)
    pts = rays * t[..., None]
    n = normals_from_point_map(pts)
    true = (pts - c) / 1.0
    ok = np.isfinite(n).all(-1) & np.isfinite(true).all(-1)
    inner = ok & (disc > 0.05)  # away from the silhouette, where differences are accurate
    assert inner.sum() > 100
    assert ((n[inner] * true[inner]).sum(-1)).min() > 0.99


def test_umeyama_allow_degenerate_still_minimises():
    line = np.linspace(0, 1, 10)[:, None] * [1.0, 2.0, 3.0]
    dst = _apply(line)
    s, R, t = umeyama(line, dst, allow_degenerate=True)
    np.testing.assert_allclose(s * line @ R.T + t, dst, atol=1e-12)
    assert abs(np.linalg.det(R) - 1) < 1e-12
