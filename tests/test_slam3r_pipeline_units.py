"""Unit tests of the SLAM3R pipeline's pieces: cameras, depth fits, buffering set, preprocessing."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from forward3d.pipelines.slam3r.buffer import BufferingSet
from forward3d.pipelines.slam3r.cameras import estimate_focal, robust_procrustes, weighted_umeyama
from forward3d.pipelines.slam3r.common import (
    correct_points_with_depth,
    fit_depth_scale,
    fuse_point_cloud,
    normalize_points,
    prepare_frame,
)
from forward3d.types import Frame


def _rot(axis, angle):
    axis = np.asarray(axis, float) / np.linalg.norm(axis)
    K = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(angle) * K + (1 - np.cos(angle)) * K @ K


def _point_map(f=60.0, h=48, w=64, seed=0):
    """Exact camera-frame point map of a random smooth depth for a pinhole (centred principal point)."""
    rng = np.random.default_rng(seed)
    u, v = np.meshgrid(np.arange(w) + 0.5, np.arange(h) + 0.5)
    z = 2.0 + 0.5 * np.sin(u / 9.0) + 0.3 * np.cos(v / 7.0) + 0.05 * rng.random((h, w))
    return np.stack([(u - w / 2) / f * z, (v - h / 2) / f * z, z], -1)


def test_estimate_focal_exact_and_robust():
    pts = _point_map(f=60.0)
    assert estimate_focal(pts) == pytest.approx(60.0, rel=1e-6)
    noisy = pts.copy()
    noisy[::7, ::5] *= np.array([1.5, 0.7, 1.0])  # 3% gross outliers
    assert estimate_focal(noisy) == pytest.approx(60.0, rel=0.01)
    assert estimate_focal(np.zeros((8, 8, 3))) is None
    with pytest.raises(ValueError, match=r"\[H, W, 3\]"):
        estimate_focal(np.zeros((8, 3)))


@pytest.mark.parametrize("scale", [1.0, 0.4])
def test_procrustes_recovers_c2w(scale):
    local = _point_map()
    c2w = np.eye(4)
    c2w[:3, :3] = _rot([0.3, 1.0, -0.2], 0.7)
    c2w[:3, 3] = [0.5, -1.0, 2.0]
    world = (local @ c2w[:3, :3].T + c2w[:3, 3]) / scale  # world maps in another scale
    world[::9, ::4] += 3.0  # outliers
    w = np.ones(local.shape[:2])
    est, s, _ = robust_procrustes(local, world, w, with_scale=True)
    np.testing.assert_allclose(est[:3, :3], c2w[:3, :3], atol=1e-6)
    np.testing.assert_allclose(est[:3, 3], c2w[:3, 3] / scale, atol=1e-6)
    assert s == pytest.approx(1 / scale, rel=1e-6)
    if scale == 1.0:
        est, s, _ = robust_procrustes(local, world, w, with_scale=False)
        np.testing.assert_allclose(est, c2w, atol=1e-6)
        assert s == 1.0
    # no usable point: identity, infinite residual
    est, _, res = robust_procrustes(local, world, np.zeros_like(w), with_scale=True)
    assert np.array_equal(est, np.eye(4)) and res == np.inf
    with pytest.raises(ValueError, match=">= 3"):
        weighted_umeyama(np.zeros((2, 3)), np.zeros((2, 3)))


@pytest.mark.parametrize("fit", ["scale", "scale_shift"])
def test_fit_depth_scale(fit):
    rng = np.random.default_rng(1)
    zp = rng.uniform(0.5, 3.0, (32, 40))
    b = 0.0 if fit == "scale" else 0.2
    zs = 2.7 * zp + b
    zs[::6, ::6] = rng.uniform(0.1, 9.0, zs[::6, ::6].shape)  # outliers
    zs[0, :5] = 0.0  # invalid sensor pixels
    zs[1, :5] = 500.0  # outside the valid range
    a, bb, inl = fit_depth_scale(zp, zs, np.ones_like(zp, bool), fit)
    assert a == pytest.approx(2.7, rel=1e-3) and bb == pytest.approx(b, abs=1e-3) and inl > 0.9
    assert fit_depth_scale(zp, zs, np.zeros_like(zp, bool), fit) is None
    pts = torch.from_numpy(np.stack([zp, zp, zp], -1))
    out = correct_points_with_depth(pts, a, bb)
    np.testing.assert_allclose(out[..., 2].numpy(), a * zp + bb, rtol=1e-6)
    with pytest.raises(ValueError, match="scale_shift"):
        fit_depth_scale(zp, zs, np.ones_like(zp, bool), "affine")


def test_normalize_points_mean_distance():
    p = torch.tensor([[[3.0, 0, 4]], [[0, 0, 0]]])  # [2, 1, 3]
    valid = torch.tensor([[True], [False]])
    out, factor = normalize_points([p], [valid])
    assert factor == pytest.approx(5.0) and out[0][0, 0].norm() == pytest.approx(1.0)


def _confs(n, value=5.0):
    return [value] * n


def test_buffer_fifo_and_spacing():
    rng = np.random.RandomState(0)
    buf = BufferingSet([0, 4, 8], max_size=4, strategy="fifo", stride=4, update_intv=1, milestone=9, rng=rng)
    l2w = _confs(40)
    i2p = _confs(40)
    l2w[11] = 50.0  # the most confident frame of the block [9, 13) that is >= 8 + 3 after the last one
    l2w[9] = 100.0  # too close to the last buffered frame (8): not eligible
    assert buf.update(12, l2w, i2p) == ([], [])  # not a full block yet
    ins, ev = buf.update(13, l2w, i2p)
    assert ins == [11] and ev == [] and buf.ids == [0, 4, 8, 11] and buf.milestone == 13
    ins, ev = buf.update(17, l2w, i2p)
    assert len(ins) == 1 and ev == [0] and len(buf) == 4  # full: the oldest goes
    with pytest.raises(ValueError, match="strategy"):
        BufferingSet([0], 4, "lru", 1, 1, 1, rng)
    with pytest.raises(ValueError, match="exceed"):
        BufferingSet([0, 1, 2], 2, "fifo", 1, 1, 3, rng)


def test_buffer_reservoir_bounded_and_seeded():
    def run(seed):
        buf = BufferingSet([0, 1, 2], max_size=5, strategy="reservoir", stride=1, update_intv=1, milestone=3,
                           rng=np.random.RandomState(seed))
        c = _confs(500)
        for nxt in range(4, 500):
            buf.update(nxt, c, c)
            assert len(buf) <= 5
        return list(buf.ids)

    a, b = run(7), run(7)
    assert a == b and len(a) == 5 and a != run(8)
    assert max(a) > 100  # late frames still enter the reservoir


def test_fuse_point_cloud_samples_uniformly():
    chunks = [(np.full((n, 3), i, np.float32), np.full((n, 3), i, np.uint8)) for i, n in enumerate([10, 0, 30])]
    pc = fuse_point_cloud(lambda: iter(chunks), 40, 20, seed=0)
    assert len(pc) == 20 and set(np.unique(pc.points[:, 0])) <= {0.0, 2.0}
    assert len(fuse_point_cloud(lambda: iter(chunks), 40, 100, seed=0)) == 40
    assert len(fuse_point_cloud(lambda: iter([]), 0, 100, seed=0)) == 0


def test_prepare_frame_crop_and_depth():
    img = np.zeros((120, 160, 3), np.uint8)
    img[:, 80:] = 255
    depth = np.tile(np.arange(160, dtype=np.float32), (120, 1))
    p = prepare_frame(Frame(image=img, depth=depth), (64, 80))
    assert p.image.shape == (3, 64, 80) and p.image.min() >= -1 and p.image.max() <= 1
    assert p.colors.shape == (64, 80, 3) and p.depth.shape == (64, 80)
    # nearest resampling through the crop: model column c sees source column floor((c + 0.5 + x0) / sx)
    rows, cols = p.crop.source_pixels()
    np.testing.assert_array_equal(p.depth[0], cols.astype(np.float32))
