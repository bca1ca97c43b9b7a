"""The weight-free RGB-D pipeline: tracking + TSDF fusion on the synthetic room."""

from __future__ import annotations

import gc
import weakref
from dataclasses import dataclass

import numpy as np
import pytest

pytest.importorskip("open3d")

from forward3d.eval.surface import VisibilityMask, score_surface  # noqa: E402
from forward3d.data.synthetic import SyntheticScene  # noqa: E402
from forward3d.eval import ate  # noqa: E402
from forward3d.pipelines import BACKENDS, Backend, Capabilities, available_backends, get_backend, register_backend  # noqa: E402
from forward3d.pipelines.rgbd import RGBDConfig, RGBDBackend, open3d_device_name  # noqa: E402
from forward3d.types import Frame, PointCloud, Reconstruction, Update  # noqa: E402


def _small_scene(**kw) -> SyntheticScene:
    cfg = dict(num_frames=30, width=160, height=120, seed=0)
    cfg.update(kw)
    return SyntheticScene(**cfg)


def _score(rec: Reconstruction, scene: SyntheticScene, frames: list[Frame], align: bool = True):
    a = ate(rec.c2w, scene.c2w)
    A = a["alignment"] if align else np.eye(4)
    pts = rec.points.points @ A[:3, :3].T + A[:3, 3]
    gt = scene.surface_points(0.01)
    vis = VisibilityMask(gt.points, noise=scene.config.depth_noise)
    for f in frames[::6]:
        vis.update(f)
    return a, score_surface(PointCloud(pts), gt, vis.seen)


@pytest.fixture(scope="module")
def clean():
    scene = _small_scene()
    frames = list(scene.frames())
    rec = RGBDBackend().run(frames)
    return scene, frames, rec


def test_tracks_and_fuses_small_sequence(clean):
    scene, frames, rec = clean
    n = len(frames)
    assert rec.c2w.shape == (n, 4, 4) and rec.K.shape == (n, 3, 3)
    assert rec.image_size == (160, 120)
    assert rec.frame_names == [f.name or f"{f.index:06d}" for f in frames]
    np.testing.assert_allclose(rec.c2w[0], np.eye(4))  # world = first camera
    a, m = _score(rec, scene, frames)
    assert a["rmse"] < 0.02, a["rmse"]
    assert m["accuracy"] < 0.03 and m["completion"] < 0.03, m
    assert rec.backend == "rgbd" and rec.failures == [] and rec.metric_scale
    assert 0 < len(rec.keyframes) <= n and rec.keyframes[0] == 0 and rec.keyframes == rec.metadata["keyframes"]
    assert {s.state for s in rec.frame_status} == {"tracked"}
    assert rec.timings["frames_per_s"] > 0 and rec.timings["total_s"] > 0
    assert rec.mesh is not None and len(rec.mesh.faces) > 1000 and rec.mesh.vertex_colors is not None
    assert rec.points.colors is not None and rec.points.normals is not None
    nrm = np.linalg.norm(rec.points.normals, axis=1)
    assert np.allclose(nrm[nrm > 0], 1.0, atol=1e-3)


def test_use_gt_poses_fuses_in_the_gt_world(clean):
    scene, frames, _ = clean
    rec = RGBDBackend(use_gt_poses=True, mesh=False).run(frames)
    np.testing.assert_allclose(rec.c2w, scene.c2w)
    assert rec.mesh is None
    _, m = _score(rec, scene, frames, align=False)  # no alignment: already in the GT world
    assert m["accuracy"] < 0.015 and m["completion"] < 0.02, m


def test_noisy_depth_with_holes_still_tracks():
    scene = _small_scene(depth_noise=0.001, depth_holes=0.05, seed=1)
    frames = list(scene.frames())
    rec = RGBDBackend().run(frames)
    a, m = _score(rec, scene, frames)
    assert a["rmse"] < 0.03, a["rmse"]
    assert m["accuracy"] < 0.04, m


def test_odometry_mode_and_integrate_all():
    scene = _small_scene(num_frames=12)
    rec = RGBDBackend(tracking="odometry", integrate="all", mesh=False).run(scene.frames())
    assert rec.metadata["config"]["tracking"] == "frame"  # the old spelling is an alias
    assert ate(rec.c2w, scene.c2w)["rmse"] < 0.02
    assert rec.metadata["num_integrated"] == 12


def test_model_tracking_mode(clean):
    """Frame-to-model: keyframe odometry refined by ICP against the fused surface; as accurate as keyframes."""
    scene, frames, _ = clean
    rec = RGBDBackend(tracking="model", mesh=False).run(frames)
    a, m = _score(rec, scene, frames)
    assert a["rmse"] < 0.02, a["rmse"]
    assert m["accuracy"] < 0.03, m
    stats = rec.metadata["model_tracking"]
    assert stats["refreshes"] >= 1 and stats["refined"] >= len(frames) // 2, stats
    assert rec.failures == []


def test_model_tracker_rejects_bad_input_and_corrects_an_offset():
    from forward3d.pipelines.tsdf import ModelTracker, TSDFVolume

    scene = _small_scene(num_frames=4)
    frames = list(scene.frames())
    vol = TSDFVolume(0.02, 0.08)
    for f in frames:
        vol.integrate(f.depth, f.image, f.K, f.c2w)
    tracker = ModelTracker()
    f = frames[2]
    assert not tracker.refine(f.depth, f.K, f.c2w).ok  # no model extracted yet
    tracker.refresh(vol)
    off = f.c2w.copy()
    off[:3, 3] += [0.02, -0.01, 0.015]
    res = tracker.refine(f.depth, f.K, off)
    assert res.ok and np.linalg.norm(res.src_to_tgt[:3, 3] - f.c2w[:3, 3]) < 0.003, res
    far = f.c2w.copy()
    far[:3, 3] += [0.5, 0.0, 0.0]
    assert not tracker.refine(f.depth, f.K, far).ok  # a large correction is not trusted
    with pytest.raises(ValueError, match="iterations"):
        ModelTracker(voxel_sizes=(0.04, 0.02), iterations=(5,))


def test_frames_are_streamed_not_kept():
    scene = _small_scene(num_frames=8)
    refs: list[weakref.ref] = []
    alive_after: list[int] = []

    def gen():
        for f in scene.frames():
            refs.append(weakref.ref(f))
            yield f

    def callback(update):
        gc.collect()
        alive_after.append(sum(r() is not None for r in refs))

    RGBDBackend(mesh=False).run(gen(), callback=callback)
    assert max(alive_after) <= 2  # the current frame (and the generator's local) only


def test_bad_depth_values_are_ignored():
    scene = _small_scene(num_frames=6)
    frames = []
    for f in scene.frames():
        d = f.depth.copy()
        d[:10] = np.nan
        d[10:20] = np.inf
        d[20:25] = -1.0
        d[25:30] = 100.0  # beyond depth_max
        frames.append(f.with_(depth=d))
    rec = RGBDBackend(mesh=False).run(frames)
    assert np.isfinite(rec.c2w).all() and np.isfinite(rec.points.points).all()
    assert ate(rec.c2w, scene.c2w)["rmse"] < 0.02


def test_missing_intrinsics_is_a_clear_error():
    f = _small_scene(num_frames=1).frame(0)
    with pytest.raises(ValueError, match="intrinsics"):
        RGBDBackend().run([f.with_(K=None)])


def test_rgb_only_input_names_slam3r():
    f = _small_scene(num_frames=1).frame(0)
    with pytest.raises(ValueError, match="slam3r"):
        RGBDBackend().run([f.with_(depth=None)])


def test_gt_pose_mode_needs_poses_and_input_needs_frames():
    f = _small_scene(num_frames=1).frame(0)
    with pytest.raises(ValueError, match="ground-truth pose"):
        RGBDBackend(use_gt_poses=True).run([f.with_(c2w=None)])
    with pytest.raises(ValueError, match="no frames"):
        RGBDBackend().run([])


def test_frame_size_change_is_an_error():
    a = _small_scene(num_frames=1).frame(0)
    b = _small_scene(num_frames=1, width=80, height=60).frame(0)
    with pytest.raises(ValueError, match="80x60"):
        RGBDBackend(mesh=False).run([a, b])


def test_config_validation():
    with pytest.raises(ValueError, match="voxel_size"):
        RGBDConfig(voxel_size=0)
    with pytest.raises(ValueError, match="tracking"):
        RGBDConfig(tracking="icp")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="model_refresh_keyframes"):
        RGBDConfig(tracking="model", model_refresh_keyframes=0)
    with pytest.raises(ValueError, match="sdf_trunc"):
        RGBDConfig(voxel_size=0.02, sdf_trunc=0.01)
    with pytest.raises(ValueError, match="unknown options"):
        RGBDBackend(voxel=0.1)
    assert RGBDConfig(tracking="odometry").tracking == "frame"
    assert RGBDConfig(voxel_size=0.02).trunc == pytest.approx(0.08)
    assert open3d_device_name(None) == "CPU:0" and open3d_device_name("cuda:1") == "CUDA:1"
    assert open3d_device_name("auto") == "CPU:0"  # open3d-cpu
    with pytest.raises(ValueError, match="device"):
        open3d_device_name("tpu")


def test_registry():
    assert "rgbd" in available_backends() and "slam3r" in available_backends()
    pipe = get_backend("rgbd", voxel_size=0.03)
    assert isinstance(pipe, RGBDBackend) and pipe.config.voxel_size == 0.03
    with pytest.raises(ValueError, match="unknown back-end"):
        get_backend("nope")
    with pytest.raises(ValueError, match="unknown options"):
        get_backend("rgbd", voxel=0.03)

    @dataclass
    class DummyConfig:
        """Attributes:
            k: a number."""
        k: int = 1

    class Dummy(Backend):
        name = "test-dummy"
        config_cls = DummyConfig
        capabilities = Capabilities()

        def run(self, frames, config=None, *, progress=True, callback=None):
            return Reconstruction(np.eye(4)[None], np.eye(3)[None], (4, 4), backend=self.name)

    try:
        register_backend(Dummy)
        assert get_backend("test-dummy", k=3).config.k == 3
        assert get_backend("test-dummy").run([]).backend == "test-dummy"
        with pytest.raises(ValueError, match="already registered"):
            register_backend(type("Other", (Dummy,), {}), "test-dummy")
    finally:
        BACKENDS.pop("test-dummy", None)


def test_registration_checks_the_contract():
    @dataclass
    class Cfg:
        x: int = 0

    class NoRun(Backend):
        name = "bad"
        config_cls = Cfg

    class StreamingWithoutStream(Backend):
        name = "bad"
        config_cls = Cfg
        capabilities = Capabilities(streaming=True)

    class NoDataclass(Backend):
        name = "bad"
        config_cls = dict

        def run(self, frames, config=None, *, progress=True, callback=None):
            raise AssertionError

    with pytest.raises(TypeError, match="must implement run"):
        register_backend(NoRun)
    with pytest.raises(TypeError, match="does not implement stream"):
        register_backend(StreamingWithoutStream)
    with pytest.raises(TypeError, match="dataclass"):
        register_backend(NoDataclass)
    with pytest.raises(TypeError, match="subclass"):
        register_backend(object)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="declares name"):
        register_backend(RGBDBackend, "other")
    assert "bad" not in BACKENDS


def test_stream_yields_typed_updates():
    scene = _small_scene(num_frames=6)
    backend = RGBDBackend(mesh=False)
    updates = list(backend.stream(scene.frames(), progress=False))
    assert [u.index for u in updates] == list(range(6)) and backend.result is not None
    u = updates[3]
    assert isinstance(u, Update) and u.status.ok and u.points.shape[1] == 3 and len(u.points) == len(u.colors)
    np.testing.assert_allclose(u.c2w, backend.result.c2w[3])
    # the update's points are the frame's depth in the world frame (= the first camera): mapped to the
    # GT world they lie on the GT surface
    from scipy.spatial import cKDTree

    from forward3d.geometry.se3 import transform_points

    gt = scene.surface_points(0.01).points
    d, _ = cKDTree(gt).query(transform_points(scene.c2w[0], u.points.astype(np.float64)))
    assert np.median(d) < 0.02


def test_open3d_pixel_convention_of_integration():
    """A tilted plane fused with forward3d's K (centres at +0.5) comes back unbiased."""
    from forward3d.pipelines.tsdf import TSDFVolume

    w, h, f = 160, 120, 120.0
    K = np.array([[f, 0, w / 2], [0, f, h / 2], [0, 0, 1.0]])
    u, v = np.meshgrid(np.arange(w) + 0.5, np.arange(h) + 0.5)
    a, b = (u - w / 2) / f, (v - h / 2) / f
    depth = (2.0 / (1 - 0.5 * a - 0.3 * b)).astype(np.float32)  # plane z = 2 + 0.5 x + 0.3 y
    vol = TSDFVolume(0.01, 0.04)
    vol.integrate(depth, np.full((h, w, 3), 128, np.uint8), K, np.eye(4))
    assert len(vol.point_cloud(weight_threshold=1.0)) == 0  # one observation: weight 1 is not > 1
    p = vol.point_cloud(weight_threshold=0.5).points.astype(np.float64)
    n = np.array([-0.5, -0.3, 1.0])
    dist = (p @ n - 2.0) / np.linalg.norm(n)
    assert len(p) > 1000
    assert abs(dist.mean()) < 1e-3 and np.abs(dist).mean() < 3e-3


def test_tracking_failure_falls_back_and_recovers(caplog):
    scene = _small_scene(num_frames=16)
    frames = list(scene.frames())
    frames[5] = frames[5].with_(depth=np.zeros_like(frames[5].depth))  # sensor dropout
    rng = np.random.default_rng(0)
    frames[9] = frames[9].with_(depth=rng.uniform(0.5, 5.0, frames[9].depth.shape).astype(np.float32))  # garbage
    rec = RGBDBackend(mesh=False).run(frames)
    failed = [i for i, _ in rec.failures]
    assert all(st.reason for _, st in rec.failures)
    assert 5 in failed and 9 in failed and len(failed) <= 4, failed
    assert "tracking failed" in caplog.text
    assert ate(rec.c2w, scene.c2w)["rmse"] < 0.02
    assert 5 not in rec.keyframes  # no depth: never a reference
