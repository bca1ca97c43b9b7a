"""Feature-based tracking of the rgbd back-end: ORB + RANSAC initialisation, relocalisation, loop pre-alignment."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("open3d")
pytest.importorskip("cv2")

from forward3d.data.synthetic import SyntheticScene  # noqa: E402
from forward3d.eval import ate  # noqa: E402
from forward3d.geometry.se3 import rotation_angle  # noqa: E402
from forward3d.pipelines.features import KeyframeIndex, align_features, extract_features  # noqa: E402
from forward3d.pipelines.loopclosure import LoopCloser, LoopClosureOptions  # noqa: E402
from forward3d.pipelines.rgbd import RGBDBackend, RGBDConfig  # noqa: E402
from forward3d.types import FrameStatus  # noqa: E402

OFF = {"feature_tracking": False, "relocalize": False}


def _err(A: np.ndarray, B: np.ndarray) -> tuple[float, float]:
    D = np.linalg.inv(A) @ B
    return float(np.linalg.norm(D[:3, 3])), float(np.degrees(rotation_angle(D[:3, :3])))


@pytest.fixture(scope="module")
def room():
    return SyntheticScene(num_frames=120, width=160, height=120, seed=0)


def test_features_align_a_large_motion_without_a_guess(room):
    a, b = room.frame(0), room.frame(6)  # 30 cm / 22 degrees apart
    fa, fb = (extract_features(f.image, f.depth, f.K) for f in (a, b))
    assert len(fa) > 200 and fa.descriptors.shape[1] == 32 and fa.points.shape == (len(fa), 3)
    # the lifted points lie on the frame's depth: z of the point = depth at the keypoint
    u, v = np.floor(fa.uv).astype(int).T
    assert np.allclose(fa.points[:, 2], a.depth[v, u], rtol=0.05)
    res = align_features(fb, fa)
    assert res.ok and res.inliers >= 50, res
    dt, dr = _err(np.linalg.inv(a.c2w) @ b.c2w, res.src_to_tgt)
    assert dt < 0.02 and dr < 1.0, (dt, dr)


def test_features_refuse_unrelated_frames(room):
    a = room.frame(0)
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 255, a.image.shape, dtype=np.uint8)
    fa = extract_features(a.image, a.depth, a.K)
    fn = extract_features(noise, rng.uniform(0.5, 4.0, a.depth.shape).astype(np.float32), a.K)
    res = align_features(fn, fa)
    assert not res.ok and res.reason
    empty = extract_features(np.zeros_like(a.image), np.zeros_like(a.depth), a.K)
    assert len(empty) == 0 and not align_features(empty, fa).ok


def test_jerky_motion_is_tracked_with_features_and_not_without(room):
    """Irregular motion (1 then 6 frames of the orbit, 5 / 30 cm per step): the constant-velocity
    prediction is far off every other frame. With the feature candidate the trajectory is exact; without
    it the dense odometry converges to wrong poses (no failure is even detected)."""
    idx = np.cumsum([0] + [1, 6] * 7)
    frames, gt = [room.frame(int(i)) for i in idx], room.c2w[idx]
    rec = RGBDBackend(mesh=False, loop_closure=False).run(frames, progress=False)
    base = RGBDBackend(mesh=False, loop_closure=False, **OFF).run(frames, progress=False)
    a, a0 = ate(rec.c2w, gt)["rmse"], ate(base.c2w, gt)["rmse"]
    assert a < 0.005 and not rec.failures, (a, rec.failures)
    assert a0 > 10 * a and a0 > 0.05, (a, a0)
    t = rec.metadata["tracking"]
    assert t["feature_chosen"] >= 3 and t["lost"] == 0 and t["features_s"] > 0


def test_relocalisation_after_a_dropout_and_a_jump(room):
    """Frames 0-47, six of them black with no depth (sensor dropout), then a jump back to frame 12
    (the camera teleports 1.6 m / 130 degrees to a place seen before). The dropout frames are ``lost``
    (not fused, not references) and tracking resumes; the jump is relocalised against the keyframes,
    so the tracked poses stay exact. Without features and relocalisation the dense odometry converges
    to a wrong pose at the jump (and the trajectory after it is off by metres)."""
    keep = list(range(0, 48)) + list(range(12, 30))
    frames, gt = [room.frame(i) for i in keep], room.c2w[keep]
    for j in range(30, 36):
        frames[j] = frames[j].with_(image=np.zeros_like(frames[j].image), depth=np.zeros_like(frames[j].depth))
    rec = RGBDBackend(mesh=False, loop_closure=False).run(frames, progress=False)
    states = [s.state for s in rec.frame_status]
    assert [i for i, s in enumerate(states) if s == "lost"] == list(range(30, 36)), states
    assert all(not rec.frame_status[i].ok and not rec.frame_status[i].keyframe for i in range(30, 36))
    assert rec.frame_status[48].state == "tracked" and rec.frame_status[48].reason.startswith("relocalised")
    assert rec.metadata["tracking"]["relocalised"] == 1 and rec.metadata["tracking"]["lost"] == 6
    ok = [i for i, s in enumerate(states) if s == "tracked"]
    assert ate(rec.c2w[ok], gt[ok])["rmse"] < 0.005
    def jump_error(c2w: np.ndarray) -> float:  # pose of frame 48 relative to frame 0 against the truth
        return _err(np.linalg.inv(gt[0]) @ gt[48], np.linalg.inv(c2w[0]) @ c2w[48])[0]

    assert jump_error(rec.c2w) < 0.01
    base = RGBDBackend(mesh=False, loop_closure=False, **OFF).run(frames, progress=False)
    assert jump_error(base.c2w) > 0.5  # tracked into a wrong pose (dense overlap 0.35) or failed


def _closer(scene: SyntheticScene, frames: list[int], features: bool) -> LoopCloser:
    closer = LoopCloser(LoopClosureOptions(min_gap=10_000, features=features))
    for i in frames:
        f = scene.frame(i)
        closer.add_frame(f.c2w, True, f.depth, f.image, f.K, features=extract_features(f.image, f.depth, f.K))
    return closer


@pytest.mark.parametrize("features", [True, False])
def test_loop_with_large_drift_closes_only_with_feature_prealignment(room, features):
    """A true loop (frames 100 -> 0, one orbit apart) proposed with 35 cm / 12 degrees of drift: beyond the
    odometry's basin, so it is rejected from the estimate, and closed from the features' pose."""
    closer = _closer(room, [0, 100], features)
    gt = np.linalg.inv(room.c2w[0]) @ room.c2w[100]
    drift = np.eye(4)
    c, s = np.cos(np.radians(12)), np.sin(np.radians(12))
    drift[:3, :3] = [[c, 0, s], [0, 1, 0], [-s, 0, c]]
    drift[:3, 3] = [0.25, 0.05, -0.24]
    r = closer.propose(1, 0, gt @ drift)
    if features:
        assert r.accepted and r.init == "features", r
        dt, dr = _err(gt, r.source_to_target)
        assert dt < 0.01 and dr < 0.5, (dt, dr)
    else:
        assert not r.accepted, r


def test_keyframe_index_is_bounded_and_queried_by_appearance(room):
    from forward3d.pipelines.loopclosure import thumbnail_descriptor

    index = KeyframeIndex(max_features=100)
    for i in (0, 30, 60, 90):
        f = room.frame(i)
        index.add(i, extract_features(f.image, f.depth, f.K), thumbnail_descriptor(f.image))
    assert len(index) == 4 and all(len(f) <= 100 for f in index.features)
    assert index.nbytes < 4 * (100 * 52 + 768 * 4) + 1
    q = room.frame(61)
    assert index.frames[index.query(thumbnail_descriptor(q.image), 1)[0]] == 60


def test_lost_state_and_config():
    assert not FrameStatus("lost").ok
    cfg = RGBDConfig()
    assert cfg.feature_tracking and cfg.relocalize
    with pytest.raises(ValueError, match="relocalize_patience"):
        RGBDConfig(relocalize_patience=0)
    with pytest.raises(ValueError, match="feature_agreement"):
        RGBDConfig(feature_agreement=-1.0)
    import argparse

    from forward3d.cli.options import add_config_arguments, config_from_args

    p = argparse.ArgumentParser()
    add_config_arguments(p, RGBDConfig)
    c = config_from_args(RGBDConfig, p.parse_args(["--no-feature-tracking", "--no-relocalize"]))
    assert not c.feature_tracking and not c.relocalize


def test_keyframe_culling_bounds_the_stored_keyframes():
    """Two orbits of the room (80 frames, 40 per loop): with culling, the second orbit revisits stored
    keyframes and stores (almost) none of its own, so the store grows with the space, not the length."""
    scene = SyntheticScene(num_frames=80, width=160, height=120, seed=0, speed=2.5)
    frames = list(scene.frames())
    rec = RGBDBackend(mesh=False, keyframe_cull=True, **OFF).run(frames, progress=False)
    first = sum(1 for i in rec.keyframes if i < 40)
    stored, lc = rec.metadata["stored_keyframes"], rec.metadata["loop_closure"]
    assert lc["keyframes"] == stored  # the loop closer holds the stored keyframes only
    assert len(rec.keyframes) > 1.6 * first  # the second orbit still tracks against (culled) keyframes
    assert stored <= first + 3, (stored, first, len(rec.keyframes))
    assert ate(rec.c2w, scene.c2w)["rmse"] < 0.02 and not rec.failures
