"""Tests of the synthetic scene generator (forward3d.data.synthetic)."""

from __future__ import annotations

import logging
import time

import numpy as np
import pytest
from scipy.ndimage import map_coordinates
from scipy.spatial import cKDTree

from forward3d.data.synthetic import SyntheticConfig, SyntheticScene
from forward3d.types import Frame, Mesh, PointCloud

log = logging.getLogger(__name__)

W, H = 160, 120


@pytest.fixture(scope="module")
def scene() -> SyntheticScene:
    return SyntheticScene(num_frames=12, width=W, height=H)


@pytest.fixture(scope="module")
def surface(scene: SyntheticScene) -> tuple[PointCloud, cKDTree]:
    pc = scene.surface_points(spacing=0.02)
    return pc, cKDTree(pc.points)


def _unproject(depth: np.ndarray, K: np.ndarray, c2w: np.ndarray) -> np.ndarray:
    """``[H, W]`` z-depth -> ``[H, W, 3]`` world points (pixel centres at +0.5)."""
    h, w = depth.shape
    u, v = np.meshgrid(np.arange(w) + 0.5, np.arange(h) + 0.5)
    x = (u - K[0, 2]) / K[0, 0] * depth
    y = (v - K[1, 2]) / K[1, 1] * depth
    cam = np.stack([x, y, depth], -1)
    return cam @ c2w[:3, :3].T + c2w[:3, 3]


def _rot_angle_deg(Ra: np.ndarray, Rb: np.ndarray) -> float:
    c = (np.trace(Ra.T @ Rb) - 1.0) / 2.0
    return float(np.degrees(np.arccos(np.clip(c, -1.0, 1.0))))


# ------------------------------------------------------------------------------------------ config


@pytest.mark.parametrize(
    "bad",
    [
        {"width": 0},
        {"height": -5},
        {"num_frames": 0},
        {"fov_x_deg": 0.0},
        {"trajectory": "fly"},
        {"speed": -1.0},
        {"depth_noise": -0.1},
        {"depth_holes": 1.0},
        {"max_depth": -1.0},
        {"num_boxes": -1},
        {"room_size": (1.0, 3.0, 5.0)},
    ],
)
def test_bad_config_raises(bad: dict) -> None:
    with pytest.raises(ValueError, match=next(iter(bad))):
        SyntheticConfig(**bad)
    with pytest.raises(ValueError):
        SyntheticScene(**bad)


def test_overrides_and_unknown_field() -> None:
    cfg = SyntheticConfig(num_frames=3, width=40, height=30)
    s = SyntheticScene(cfg, speed=0.5, trajectory="walk")
    assert s.config.speed == 0.5 and s.config.trajectory == "walk" and s.config.width == 40
    assert cfg.speed == 1.0 and cfg.trajectory == "orbit"
    with pytest.raises(ValueError, match="unknown"):
        SyntheticScene(cfg, colour="red")
    with pytest.raises(ValueError, match="num_frames"):
        SyntheticScene(cfg, num_frames=0)


# ------------------------------------------------------------------------------------------ shapes


def test_shapes_and_dtypes(scene: SyntheticScene) -> None:
    assert scene.num_frames == 12 and len(scene) == 12
    assert scene.K.shape == (3, 3) and scene.K.dtype == np.float64
    assert np.isclose(scene.K[0, 2], W / 2) and np.isclose(scene.K[1, 2], H / 2)
    assert np.isclose(2 * np.degrees(np.arctan(W / 2 / scene.K[0, 0])), 70.0)
    assert scene.c2w.shape == (12, 4, 4) and scene.c2w.dtype == np.float64
    f = scene.frame(3)
    assert isinstance(f, Frame)
    assert f.image.shape == (H, W, 3) and f.image.dtype == np.uint8
    assert f.depth.shape == (H, W) and f.depth.dtype == np.float32
    assert f.index == 3 and f.name == "000003" and f.timestamp == pytest.approx(3 / 30)
    np.testing.assert_array_equal(f.c2w, scene.c2w[3])
    np.testing.assert_array_equal(f.K, scene.K)
    rgb, depth = scene.render(scene.c2w[3], scene.K, W, H)
    np.testing.assert_array_equal(rgb, f.image)
    np.testing.assert_array_equal(depth, f.depth)
    pm = scene.point_map(3)
    assert pm.shape == (H, W, 3) and pm.dtype == np.float32
    pm_small = scene.point_map(3, width=80, height=60)
    assert pm_small.shape == (60, 80, 3)
    n = scene.render_normals(scene.c2w[3], scene.K, W, H)
    assert n.shape == (H, W, 3)
    np.testing.assert_allclose(np.linalg.norm(n, axis=-1), 1.0, atol=1e-5)
    frames = list(scene.frames())
    assert [fr.index for fr in frames] == list(range(12))
    with pytest.raises(IndexError):
        scene.frame(12)


def test_render_bad_input(scene: SyntheticScene) -> None:
    with pytest.raises(ValueError, match="c2w"):
        scene.render(np.eye(3), scene.K, W, H)
    with pytest.raises(ValueError, match="K"):
        scene.render(scene.c2w[0], np.eye(4), W, H)
    with pytest.raises(ValueError, match="size"):
        scene.render(scene.c2w[0], scene.K, 0, H)
    with pytest.raises(ValueError, match="spacing"):
        scene.surface_points(spacing=0.0)


# ------------------------------------------------------------------------------------------ determinism


def test_determinism() -> None:
    a = SyntheticScene(seed=3, num_frames=4, width=64, height=48, depth_noise=0.01, depth_holes=0.05)
    b = SyntheticScene(seed=3, num_frames=4, width=64, height=48, depth_noise=0.01, depth_holes=0.05)
    c = SyntheticScene(seed=4, num_frames=4, width=64, height=48, depth_noise=0.01, depth_holes=0.05)
    np.testing.assert_array_equal(a.c2w, b.c2w)
    for i in range(4):
        fa, fb, fc = a.frame(i), b.frame(i), c.frame(i)
        np.testing.assert_array_equal(fa.image, fb.image)
        np.testing.assert_array_equal(fa.depth, fb.depth)
        assert np.abs(fa.image.astype(int) - fc.image.astype(int)).mean() > 10
    np.testing.assert_array_equal(a.frame(2).depth, a.frame(2).depth)  # per-frame noise is repeatable
    assert not np.allclose(a.c2w, c.c2w)


# ------------------------------------------------------------------------------------------ trajectory


@pytest.mark.parametrize("trajectory", ["orbit", "walk", "handheld"])
def test_trajectory_valid(trajectory: str) -> None:
    s = SyntheticScene(trajectory=trajectory, num_frames=100, width=8, height=6)
    R = s.c2w[:, :3, :3]
    np.testing.assert_allclose(np.linalg.det(R), 1.0, atol=1e-9)
    np.testing.assert_allclose(R @ R.transpose(0, 2, 1), np.broadcast_to(np.eye(3), R.shape), atol=1e-9)
    np.testing.assert_array_equal(s.c2w[:, 3], np.broadcast_to([0, 0, 0, 1], (100, 4)))
    centres = s.c2w[:, :3, 3]
    X, Y, Z = s.config.room_size
    assert np.all(np.abs(centres[:, 0]) < X / 2 - 0.5) and np.all(np.abs(centres[:, 2]) < Z / 2 - 0.5)
    top_of_boxes = max(c[1] + h[1] for c, h, _ in s.boxes)
    assert np.all(centres[:, 1] > top_of_boxes + 0.3) and np.all(centres[:, 1] < Y - 0.5)
    step = np.linalg.norm(np.diff(centres, axis=0), axis=1)
    angles = np.array([_rot_angle_deg(R[i], R[i + 1]) for i in range(99)])
    log.info("%s: step %.3f m, %.2f deg per frame", trajectory, step.mean(), angles.mean())
    assert 0.01 < step.mean() < 0.08 and step.max() < 0.1
    assert 0.3 < angles.mean() < 5.0 and angles.max() < 6.0
    # the camera looks down a little and the view is never blocked by something very close
    assert np.all(R[:, 1, 2] < 0.0)  # camera z has a downward (-y) component
    depth_min = min(float(s.render(s.c2w[i], s.intrinsics(32, 24), 32, 24)[1].min()) for i in range(0, 100, 10))
    assert depth_min > 0.3


def test_speed_scales_motion() -> None:
    a = SyntheticScene(num_frames=20, width=8, height=6)
    b = SyntheticScene(num_frames=20, width=8, height=6, speed=0.5)
    sa = np.linalg.norm(np.diff(a.c2w[:, :3, 3], axis=0), axis=1).mean()
    sb = np.linalg.norm(np.diff(b.c2w[:, :3, 3], axis=0), axis=1).mean()
    assert sb == pytest.approx(0.5 * sa, rel=0.1)


# ------------------------------------------------------------------------------------------ geometry


def test_depth_dense_in_closed_room(scene: SyntheticScene) -> None:
    for i in range(0, 12, 3):
        d = scene.frame(i).depth
        assert np.all(d > 0) and np.all(np.isfinite(d))
        assert d.max() < np.linalg.norm(scene.config.room_size)


def test_unprojection_on_surface(scene: SyntheticScene, surface) -> None:
    _, tree = surface
    for i in (0, 7):
        f = scene.frame(i)
        pts = _unproject(f.depth.astype(np.float64), f.K, f.c2w)
        np.testing.assert_allclose(pts, scene.point_map(i), atol=2e-4)
        dist, _ = tree.query(pts.reshape(-1, 3))
        # grid spacing 0.02: the farthest point of a cell from its centre is 0.02 / sqrt(2)
        assert dist.max() < 0.0142 + 1e-3, dist.max()


def test_multiview_consistency(scene: SyntheticScene) -> None:
    for i in (0, 5):
        pts = scene.point_map(i).reshape(-1, 3).astype(np.float64)
        w2c = np.linalg.inv(scene.c2w[i + 1])
        cam = pts @ w2c[:3, :3].T + w2c[:3, 3]
        z = cam[:, 2]
        uv = cam[:, :2] / z[:, None] * np.diag(scene.K)[:2] + scene.K[:2, 2]
        inside = (z > 0) & (uv[:, 0] >= 0) & (uv[:, 0] < W) & (uv[:, 1] >= 0) & (uv[:, 1] < H)
        assert inside.mean() > 0.7  # consecutive frames overlap a lot
        ui, vi = uv[inside].astype(int).T
        d_next = scene.frame(i + 1).depth[vi, ui]
        # nearest-pixel lookup: compare with a tolerance for the depth slope within a pixel
        rel = np.abs(d_next - z[inside]) / z[inside]
        visible = rel < 0.03
        assert visible.mean() > 0.9
        # photometric consistency: frame i+1 warped into frame i with the exact geometry matches
        # frame i (view-independent shading), up to texture filtering and occlusions
        pts_j = scene.point_map(i + 1).reshape(-1, 3).astype(np.float64)
        w2c_i = np.linalg.inv(scene.c2w[i])
        cam_j = pts_j @ w2c_i[:3, :3].T + w2c_i[:3, 3]
        uv_j = cam_j[:, :2] / cam_j[:, 2:] * np.diag(scene.K)[:2] + scene.K[:2, 2] - 0.5  # array coords
        gray_i = scene.frame(i).image.astype(np.float64).mean(-1)
        gray_j = scene.frame(i + 1).image.astype(np.float64).mean(-1).reshape(-1)
        warped = map_coordinates(gray_i, [uv_j[:, 1], uv_j[:, 0]], order=1, mode="constant", cval=np.nan)
        z_i = map_coordinates(scene.frame(i).depth, [uv_j[:, 1], uv_j[:, 0]], order=0, mode="constant")
        vis = np.isfinite(warped) & (np.abs(z_i - cam_j[:, 2]) < 0.02 * cam_j[:, 2])
        assert vis.mean() > 0.8
        res = np.abs(warped - gray_j)[vis]
        assert np.median(res) < 2.0 and res.mean() < 4.0, (np.median(res), res.mean())
        # a one-pixel shift is much worse: the test is sensitive to misalignment
        shifted = map_coordinates(gray_i, [uv_j[:, 1], uv_j[:, 0] + 1.0], order=1, mode="constant", cval=np.nan)
        assert np.nanmean(np.abs(shifted - gray_j)[vis]) > 2.0 * res.mean()


def test_normals_face_camera(scene: SyntheticScene) -> None:
    c2w = scene.c2w[2]
    n = scene.render_normals(c2w, scene.K, W, H).reshape(-1, 3)
    pts = scene.point_map(2).reshape(-1, 3)
    view = pts - c2w[:3, 3]
    assert np.all(np.einsum("pk,pk->p", n, view) < 0)


# ------------------------------------------------------------------------------------------ ground truth


def test_surface_points(scene: SyntheticScene, surface) -> None:
    pc, _ = surface
    assert pc.colors is not None and pc.normals is not None
    assert pc.colors.dtype == np.uint8 and pc.points.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(pc.normals, axis=1), 1.0, atol=1e-5)
    X, Y, Z = scene.config.room_size
    lo, hi = np.array([-X / 2, 0, -Z / 2]) - 1e-4, np.array([X / 2, Y, Z / 2]) + 1e-4
    assert np.all(pc.points >= lo) and np.all(pc.points <= hi)
    # normals point into the free space: a step along them is inside the room and outside every box
    step = pc.points + 0.03 * pc.normals
    assert np.all(step > lo + 0.005) and np.all(step < hi - 0.005)
    assert not scene._inside_boxes(step.astype(np.float64)).any()
    # area check: walls + floor + ceiling + visible box faces, minus the floor under the boxes
    area = len(pc) * 0.02**2
    room_area = 2 * (X * Y + Y * Z + X * Z)
    assert room_area < area < room_area + 12.0
    # colours match the rendered image
    _, tree = surface
    f = scene.frame(4)
    _, idx = tree.query(scene.point_map(4).reshape(-1, 3))
    diff = np.abs(pc.colors[idx].astype(float) - f.image.reshape(-1, 3).astype(float))
    assert np.median(diff) < 20


def test_mesh(scene: SyntheticScene, surface) -> None:
    m = scene.mesh(resolution=0.1)
    assert isinstance(m, Mesh)
    assert m.faces.dtype == np.int64 and m.vertex_colors.dtype == np.uint8
    assert len(m.faces) > 1000
    tri = m.vertices[m.faces]
    n = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    area = 0.5 * np.linalg.norm(n, axis=1)
    assert area.min() > 0
    # counter-clockwise seen from the free space: the face normal agrees with the vertex normals
    assert np.all(np.einsum("fk,fk->f", n, m.vertex_normals[m.faces[:, 0]]) > 0)
    # surface area of the mesh ~ area of the GT surface samples
    pc, tree = surface
    assert area.sum() == pytest.approx(len(pc) * 0.02**2, rel=0.03)
    dist, _ = tree.query(tri.mean(1))
    assert dist.max() < 0.02


# ------------------------------------------------------------------------------------------ texture


def test_texture_is_rich(scene: SyntheticScene) -> None:
    for i in (0, 6):
        g = scene.frame(i).image.astype(np.float64).mean(-1)
        gx, gy = np.abs(np.diff(g, axis=1)), np.abs(np.diff(g, axis=0))
        assert gx.mean() + gy.mean() > 8.0
        # no large flat areas: nearly every 8x8 patch has visible contrast
        patches = g[: H // 8 * 8, : W // 8 * 8].reshape(H // 8, 8, W // 8, 8).std(axis=(1, 3))
        assert (patches > 2.0).mean() > 0.95
        # all colour channels vary (not a grey world)
        img = scene.frame(i).image.reshape(-1, 3).astype(float)
        assert img.std(0).min() > 20


# ------------------------------------------------------------------------------------------ sensor


def test_depth_noise_statistics() -> None:
    s = SyntheticScene(num_frames=2, width=W, height=H, depth_noise=0.004)
    exact = s.render(s.c2w[1], s.K, W, H)[1]
    noisy = s.frame(1).depth
    r = (noisy - exact) / (0.004 * exact.astype(np.float64) ** 2)
    assert abs(r.mean()) < 0.05 and r.std() == pytest.approx(1.0, abs=0.05)
    assert not np.array_equal(s.frame(0).depth - s.render(s.c2w[0], s.K, W, H)[1], noisy - exact)


def test_depth_holes_and_range() -> None:
    s = SyntheticScene(num_frames=3, width=W, height=H, depth_holes=0.15, max_depth=3.5)
    exact = s.render(s.c2w[2], s.K, W, H)[1]
    d = s.frame(2).depth
    assert np.all(exact > 0)
    assert np.all(d <= 3.5)
    holes = (d == 0) & (exact <= 3.5)
    assert holes.mean() == pytest.approx(0.15, abs=0.02)
    assert np.array_equal(d[d > 0], exact[d > 0])  # no noise requested: kept pixels are exact
    # holes form blobs: most dropped pixels have a dropped 4-neighbour
    hp = np.pad(holes, 1)
    nb = hp[:-2, 1:-1] | hp[2:, 1:-1] | hp[1:-1, :-2] | hp[1:-1, 2:]
    assert (nb[holes]).mean() > 0.8
    # some holes are at grazing angles
    n = s.render_normals(s.c2w[2], s.K, W, H)
    view = s.point_map(2) - s.c2w[2][:3, 3]
    cos = np.abs(np.einsum("hwk,hwk->hw", n, view)) / np.linalg.norm(view, axis=-1)
    assert cos[holes].mean() < cos[~holes].mean()


def test_render_speed() -> None:
    s = SyntheticScene(num_frames=20)
    t0 = time.perf_counter()
    for f in s.frames():
        assert f.depth.min() > 0
    dt = time.perf_counter() - t0
    log.info("rendered 20 frames at %dx%d in %.2f s (%.1f ms/frame)", s.config.width, s.config.height,
             dt, 1000 * dt / 20)


def test_visible_surface_points() -> None:
    s = SyntheticScene(num_frames=30, width=W, height=H, num_boxes=3)
    full = s.surface_points(spacing=0.03)
    vis = s.surface_points(spacing=0.03, visible_only=True, frame_stride=3)
    assert 0.1 * len(full) < len(vis) < 0.9 * len(full)
    # every visible GT point is a full GT point
    dist, _ = cKDTree(full.points).query(vis.points)
    assert dist.max() < 1e-5
    # the ceiling is never seen (cameras look down)
    ceiling = np.abs(vis.points[:, 1] - s.config.room_size[1]) < 1e-4
    assert ceiling.sum() == 0
    # observed pixels of the used frames are all covered by the visible set
    tree = cKDTree(vis.points)
    for i in (0, 15):
        d, _ = tree.query(s.point_map(i).reshape(-1, 3))
        assert np.percentile(d, 99) < 0.03
    masks = s.observed_cells(0.03, frame_stride=3)
    assert sum(int(m.sum()) for m in masks) >= len(vis)


def test_sample_views_and_camera_checks(scene: SyntheticScene) -> None:
    views = scene.sample_views(8, seed=1)
    assert views.shape == (8, 4, 4)
    np.testing.assert_array_equal(views, scene.sample_views(8, seed=1))
    np.testing.assert_allclose(np.linalg.det(views[:, :3, :3]), 1.0, atol=1e-9)
    K = scene.intrinsics(48, 36)
    assert np.allclose(K, scene.K * np.array([[0.3], [0.3], [1.0]]))
    for c2w in views:
        _, depth = scene.render(c2w, K, 48, 36)
        assert depth.min() > 0.2
    outside = np.eye(4)
    outside[:3, 3] = [0.0, -1.0, 0.0]
    with pytest.raises(ValueError, match="inside the room"):
        scene.render(outside, K, 48, 36)
    centre, _, _ = scene.boxes[0]
    in_box = np.eye(4)
    in_box[:3, 3] = centre
    with pytest.raises(ValueError, match="outside the boxes"):
        scene.render(in_box, K, 48, 36)


@pytest.mark.slow
def test_rgbd_odometry_tracks_default_scene() -> None:
    """Frame-to-frame open3d RGB-D odometry on the default scene (with sensor noise) is accurate."""
    o3d = pytest.importorskip("open3d")
    s = SyntheticScene(num_frames=25, depth_noise=0.002, depth_holes=0.05)
    K = s.K
    # open3d puts pixel centres at integer coordinates: shift the principal point by half a pixel
    intr = o3d.camera.PinholeCameraIntrinsic(s.config.width, s.config.height, K[0, 0], K[1, 1],
                                             K[0, 2] - 0.5, K[1, 2] - 0.5)
    rgbd = [
        o3d.geometry.RGBDImage.create_from_color_and_depth(
            o3d.geometry.Image(f.image), o3d.geometry.Image(f.depth), depth_scale=1.0, depth_trunc=10.0,
            convert_rgb_to_intensity=True)
        for f in s.frames()
    ]
    option = o3d.pipelines.odometry.OdometryOption()
    errs_t, errs_r = [], []
    for i in range(1, len(rgbd)):
        ok, T, _ = o3d.pipelines.odometry.compute_rgbd_odometry(
            rgbd[i], rgbd[i - 1], intr, np.eye(4), o3d.pipelines.odometry.RGBDOdometryJacobianFromHybridTerm(),
            option)
        assert ok
        gt = np.linalg.inv(s.c2w[i - 1]) @ s.c2w[i]  # camera i in camera i-1
        errs_t.append(np.linalg.norm(T[:3, 3] - gt[:3, 3]))
        errs_r.append(_rot_angle_deg(T[:3, :3], gt[:3, :3]))
    log.info("odometry RPE: %.2f mm, %.3f deg", 1000 * np.mean(errs_t), np.mean(errs_r))
    assert np.mean(errs_t) < 0.002 and np.max(errs_t) < 0.005
    assert np.mean(errs_r) < 0.1
