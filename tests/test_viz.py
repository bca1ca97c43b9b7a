"""PNG previews: numpy z-buffer renders and PIL trajectory plots."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from forward3d.types import Mesh, PointCloud
from forward3d.viz import cloud_of, preview_cameras, render_points, trajectory_plot, write_previews


def _K(w=64, h=48, f=50.0):
    return np.array([[f, 0, w / 2], [0, f, h / 2], [0, 0, 1.0]])


def test_zbuffer_nearest_point_wins_and_projection():
    pts = np.array([[0, 0, 2.0], [0, 0, 1.0], [0, 0, 3.0]], np.float32)  # all on the optical axis
    cols = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255]], np.uint8)
    img = render_points(PointCloud(pts, cols), np.eye(4), _K(), 64, 48, point_size=1)
    assert img.shape == (48, 64, 3) and img.dtype == np.uint8
    assert tuple(img[24, 32]) == (0, 255, 0)  # nearest; pixel (32, 24) holds (32.5, 24.5) ~ cx, cy
    assert (img.reshape(-1, 3) != img[0, 0]).any(1).sum() == 1


def test_backface_culling_and_points_behind():
    pts = np.array([[0, 0, 1.0], [0.2, 0, -1.0]], np.float32)
    nrm = np.array([[0, 0, 1.0], [0, 0, -1.0]], np.float32)  # first faces away from the camera
    img = render_points(PointCloud(pts, None, nrm), np.eye(4), _K(), 64, 48, point_size=1)
    assert (img == img[0, 0]).all()
    img = render_points(PointCloud(pts, None, nrm), np.eye(4), _K(), 64, 48, point_size=1, cull_backfaces=False)
    assert (img.reshape(-1, 3) != img[0, 0]).any(1).sum() == 1


def test_empty_cloud_and_mesh_input():
    img = render_points(PointCloud(np.zeros((0, 3))), np.eye(4), _K(), 64, 48)
    assert (img == img[0, 0]).all()
    mesh = Mesh(np.random.default_rng(0).normal(size=(50, 3)), np.array([[0, 1, 2]]))
    assert len(cloud_of(mesh)) == 50
    with pytest.raises(TypeError):
        cloud_of(np.zeros((3, 3)))  # type: ignore[arg-type]


def test_preview_cameras_look_at_the_cloud():
    pts = np.random.default_rng(0).uniform(-1, 1, (500, 3)).astype(np.float32) * [3, 1, 2]
    cams = preview_cameras(PointCloud(pts), num_views=4, width=80, height=60)
    assert len(cams) == 4
    for c2w, K in cams:
        assert np.allclose(c2w[:3, :3] @ c2w[:3, :3].T, np.eye(3), atol=1e-9)
        p = (pts - c2w[:3, 3]) @ c2w[:3, :3]  # camera coordinates
        assert (p[:, 2] > 0).mean() > 0.99  # everything in front
        u = K[0, 0] * p[:, 0] / p[:, 2] + K[0, 2]
        assert ((u >= 0) & (u < 80)).mean() > 0.9


def test_trajectory_plot_and_write_previews(tmp_path):
    t = np.linspace(0, 2 * np.pi, 40)
    gt = np.tile(np.eye(4), (40, 1, 1))
    gt[:, 0, 3], gt[:, 2, 3] = np.cos(t), np.sin(t)
    est = gt.copy()
    est[:, :3, 3] += 0.02
    img = trajectory_plot(est, gt, width=400, height=200)
    assert img.shape == (200, 400, 3)
    red = (img[..., 0] > 180) & (img[..., 1] < 120) & (img[..., 2] < 100)
    blue = (img[..., 2] > 150) & (img[..., 0] < 100)
    assert red.sum() > 50 and blue.sum() > 50
    pts = PointCloud(np.random.default_rng(0).normal(size=(1000, 3)).astype(np.float32))
    paths = write_previews(tmp_path / "p", pts, est, gt, num_views=3, size=(64, 48))
    assert sorted(p.name for p in paths) == ["trajectory.png", "view_0.png", "view_1.png", "view_2.png"]
    assert Image.open(paths[0]).size == (64, 48)
    assert trajectory_plot(est[:1]).shape == (480, 960, 3)  # one pose, no ground truth
