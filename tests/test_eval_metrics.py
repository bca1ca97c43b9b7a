"""Reconstruction and trajectory metrics on analytic cases."""

import math

import numpy as np
import pytest

from forward3d.eval import associate, ate, recon_metrics, rpe, voxel_downsample
from forward3d.geometry import make_se3, make_sim3, so3_exp
from forward3d.types import PointCloud


def grid_plane(n=60, spacing=0.01, z=0.0):
    u, v = np.meshgrid(np.arange(n) * spacing, np.arange(n) * spacing, indexing="ij")
    return np.stack([u.ravel(), v.ravel(), np.full(n * n, z)], 1)


# ----------------------------------------------------------------------------------------------
# Reconstruction
# ----------------------------------------------------------------------------------------------


def test_identical_clouds_are_perfect():
    g = grid_plane()
    m = recon_metrics(g, g)
    assert m["accuracy"] == 0 and m["completion"] == 0 and m["chamfer"] == 0
    assert m["fscore@0.01"] == 1.0 and m["precision@0.05"] == 1.0
    assert m["num_pred"] == m["num_gt"] == len(g)
    assert "normal_consistency" not in m


def test_shifted_plane_accuracy_equals_shift():
    g = grid_plane()
    p = g + [0, 0, 0.015]
    m = recon_metrics(p, g, thresholds=(0.01, 0.02))
    for k in ("accuracy", "accuracy_median", "completion", "completion_median", "chamfer"):
        assert m[k] == pytest.approx(0.015, abs=1e-9)
    assert m["precision@0.01"] == 0.0 and m["recall@0.01"] == 0.0 and m["fscore@0.01"] == 0.0
    assert m["precision@0.02"] == 1.0 and m["fscore@0.02"] == 1.0
    # max_dist clips distances
    m = recon_metrics(p, g, max_dist=0.01)
    assert m["accuracy"] == pytest.approx(0.01)


def test_gaussian_noise_along_normal():
    rng = np.random.default_rng(0)
    g = grid_plane(n=100, spacing=0.002)  # dense GT: the NN distance is the out-of-plane offset
    sigma = 0.01
    p = g + np.stack([np.zeros(len(g)), np.zeros(len(g)), rng.normal(scale=sigma, size=len(g))], 1)
    m = recon_metrics(p, g)
    # E|N(0, s^2)| = s sqrt(2/pi); median = 0.6745 s (in-plane spacing makes it slightly smaller)
    assert m["accuracy"] == pytest.approx(sigma * math.sqrt(2 / math.pi), rel=0.05)
    assert m["accuracy_median"] == pytest.approx(0.6745 * sigma, rel=0.06)
    # precision@0.01 ~ P(|N| < sigma) = 0.683
    assert m["precision@0.01"] == pytest.approx(0.683, abs=0.03)


def test_subset_completion_and_recall():
    g = grid_plane(n=50, spacing=0.01)  # x in [0, 0.49]
    p = g[g[:, 0] < 0.245]  # the left half only
    m = recon_metrics(p, g, thresholds=(0.005,))
    assert m["accuracy"] == 0.0 and m["precision@0.005"] == 1.0
    assert m["recall@0.005"] == pytest.approx(0.5)
    assert m["fscore@0.005"] == pytest.approx(2 * 0.5 / 1.5)
    # missing columns x = 0.25 .. 0.49 are 0.01 .. 0.25 away: mean over GT = half the points * mean(0.01..0.25) / 2
    expected = np.arange(1, 26).mean() * 0.01 / 2
    assert m["completion"] == pytest.approx(expected, rel=1e-9)
    assert m["chamfer"] == pytest.approx(expected / 2, rel=1e-9)


def test_normal_consistency_and_pointcloud_input():
    g = grid_plane(n=30)
    ng = np.tile([0.0, 0.0, 1.0], (len(g), 1))
    tilt = so3_exp([0.5, 0.0, 0.0])
    pred = PointCloud(g.astype(np.float32), normals=(ng @ tilt.T).astype(np.float32))
    gt = PointCloud(g.astype(np.float32), normals=-ng.astype(np.float32))  # sign does not matter
    m = recon_metrics(pred, gt)
    assert m["normal_accuracy"] == pytest.approx(math.cos(0.5), abs=1e-6)
    assert m["normal_completion"] == pytest.approx(math.cos(0.5), abs=1e-6)
    assert m["normal_consistency"] == pytest.approx(math.cos(0.5), abs=1e-6)
    # only one side with normals: no normal metric
    assert "normal_consistency" not in recon_metrics(pred, g)


def test_non_finite_points_dropped_and_errors():
    g = grid_plane(n=20)
    p = g.copy()
    p[:5] = np.nan
    m = recon_metrics(p, g)
    assert m["num_pred"] == len(g) - 5 and m["accuracy"] == 0
    with pytest.raises(ValueError, match="pred.*found 0"):
        recon_metrics(np.full((3, 3), np.nan), g)
    with pytest.raises(ValueError, match=r"\[N, 3\]"):
        recon_metrics(np.zeros((4, 2)), g)
    with pytest.raises(ValueError, match="thresholds"):
        recon_metrics(g, g, thresholds=(0.0,))


def test_voxel_downsample():
    pts = np.array([[0.01, 0.01, 0.01], [0.03, 0.03, 0.03], [0.15, 0.0, 0.0]])
    nrm = np.array([[0, 0, 1.0], [0, 0, -1.0], [1.0, 0, 0]])
    out, n = voxel_downsample(pts, 0.1, nrm)
    assert len(out) == 2
    np.testing.assert_allclose(out[0], [0.02, 0.02, 0.02])
    np.testing.assert_allclose(np.abs(n), [[0, 0, 1], [1, 0, 0]])
    g = grid_plane(n=40, spacing=0.005)
    m = recon_metrics(g, g + [0, 0, 0.003], voxel_size=0.02)
    assert m["num_gt"] == 100 and m["accuracy"] == pytest.approx(0.003)
    with pytest.raises(ValueError):
        voxel_downsample(pts, 0.0)


# ----------------------------------------------------------------------------------------------
# Trajectories
# ----------------------------------------------------------------------------------------------


def circle_trajectory(n=40, radius=2.0):
    c2w = []
    for i in range(n):
        a = 2 * math.pi * i / n
        R = so3_exp([0.0, -a, 0.0]) @ so3_exp([0.1 * math.sin(3 * a), 0, 0])
        c2w.append(make_se3(R, [radius * math.cos(a), 0.2 * math.sin(2 * a), radius * math.sin(a)]))
    return np.stack(c2w)


def apply_sim3(S, c2w):
    s = np.cbrt(np.linalg.det(S[:3, :3]))
    R = S[:3, :3] / s
    out = c2w.copy()
    out[:, :3, :3] = R @ c2w[:, :3, :3]
    out[:, :3, 3] = c2w[:, :3, 3] @ S[:3, :3].T + S[:3, 3]
    return out


def test_ate_known_sim3():
    gt = circle_trajectory()
    S = make_sim3(so3_exp([0.3, 1.0, -0.4]), [1.0, -2.0, 0.5], 0.37)
    pred = apply_sim3(S, gt)
    r = ate(pred, gt, align="sim3")
    assert r["rmse"] < 1e-10 and r["max"] < 1e-10 and r["rot_rmse_deg"] < 1e-5
    assert r["scale"] == pytest.approx(1 / 0.37)
    np.testing.assert_allclose(r["aligned_c2w"], gt, atol=1e-10)
    np.testing.assert_allclose(r["alignment"] @ S, np.eye(4), atol=1e-10)
    assert ate(pred, gt, align="se3")["rmse"] > 0.5  # the scale cannot be undone rigidly
    assert ate(pred, gt, align="none")["rmse"] > 0.5
    rigid = apply_sim3(make_se3(so3_exp([0.3, 1.0, -0.4]), [1.0, -2.0, 0.5]), gt)
    r = ate(rigid, gt, align="se3")
    assert r["rmse"] < 1e-10 and r["scale"] == 1.0


def test_ate_noise_level():
    rng = np.random.default_rng(1)
    gt = circle_trajectory(n=400)
    pred = gt.copy()
    sigma = 0.01
    pred[:, :3, 3] += rng.normal(scale=sigma, size=(400, 3))
    r = ate(pred, gt, align="none")
    # |N(0, s^2 I_3)| has RMS sqrt(3) s
    assert r["rmse"] == pytest.approx(math.sqrt(3) * sigma, rel=0.1)
    r_al = ate(pred, gt, align="se3")
    assert r_al["rmse"] <= r["rmse"] + 1e-12  # alignment can only reduce the error
    assert r_al["errors"].shape == (400,)


def test_ate_degenerate_and_errors():
    # straight-line trajectory: rotation about the line is undetermined, the error is still 0
    c2w = np.stack([make_se3(np.eye(3), [0.1 * i, 0, 0]) for i in range(10)])
    S = make_sim3(so3_exp([0.2, 0.1, 0.0]), [1, 2, 3], 2.0)
    assert ate(apply_sim3(S, c2w), c2w, align="sim3")["rmse"] < 1e-10
    with pytest.raises(ValueError, match="found 2"):
        ate(c2w[:2], c2w[:2])
    with pytest.raises(ValueError, match="10 predicted and 9 ground-truth"):
        ate(c2w, c2w[:9])
    with pytest.raises(ValueError, match="align"):
        ate(c2w, c2w, align="affine")
    with pytest.raises(ValueError, match=r"\[N, 4, 4\]"):
        ate(c2w[:, :3], c2w[:, :3])
    bad = c2w.copy()
    bad[3, 0, 3] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        ate(bad, c2w)


def test_rpe_constant_velocity():
    # GT moves 0.1 m and turns 2 degrees per frame; prediction moves 0.12 m and turns 3 degrees
    def traj(step, deg, n=20):
        inc = make_se3(so3_exp([0, math.radians(deg), 0]), [0, 0, step])
        out = [np.eye(4)]
        for _ in range(n - 1):
            out.append(out[-1] @ inc)
        return np.stack(out)

    gt, pred = traj(0.1, 2.0), traj(0.12, 3.0)
    r = rpe(pred, gt)
    assert r["num_pairs"] == 19
    # per-step error E = inv(inc_gt) inc_pred: rotation 1 degree, translation |R_gt^T (t_p - t_g)| = 0.02
    assert r["rot_rmse_deg"] == pytest.approx(1.0, abs=1e-9)
    assert r["trans_rmse"] == pytest.approx(0.02, abs=1e-12)
    assert r["trans_max"] == pytest.approx(r["trans_mean"])
    r2 = rpe(pred, gt, delta=2)
    assert r2["num_pairs"] == 18 and r2["rot_mean_deg"] == pytest.approx(2.0, abs=1e-9)
    assert rpe(gt, gt)["trans_rmse"] == pytest.approx(0.0, abs=1e-12)
    # invariant to a rigid change of world frame
    S = make_se3(so3_exp([0.3, -0.2, 0.9]), [5, 1, 2])
    assert rpe(apply_sim3(S, pred), gt)["trans_rmse"] == pytest.approx(0.02, abs=1e-12)
    with pytest.raises(ValueError, match="delta"):
        rpe(pred, gt, delta=0)
    with pytest.raises(ValueError, match="more than delta=20"):
        rpe(pred, gt, delta=20)


def test_associate_greedy():
    a = np.array([0.0, 0.1, 0.2, 0.3, 0.4])
    b = np.array([0.305, 0.005, 0.11, 0.5, 0.195, 0.095])
    ia, ib = associate(a, b, max_diff=0.02)
    np.testing.assert_array_equal(ia, [0, 1, 2, 3])
    np.testing.assert_array_equal(ib, [1, 5, 4, 0])  # 0.1 takes 0.095 (closer than 0.11)
    ia, ib = associate(a, b - 1.0, max_diff=0.02, offset=1.0)
    np.testing.assert_array_equal(ib, [1, 5, 4, 0])
    ia, ib = associate(a, np.array([5.0]))
    assert len(ia) == 0 and len(ib) == 0
    with pytest.raises(ValueError, match="max_diff"):
        associate(a, b, max_diff=0)
