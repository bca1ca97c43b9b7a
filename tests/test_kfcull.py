"""Keyframe culling that keeps loops (issue 11): culled keyframes are verified against and re-anchored on
the stored keyframes that cover them, and join the pose graph; relocalised keyframes get a loop edge."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("open3d")

from forward3d.data.synthetic import SyntheticScene  # noqa: E402
from forward3d.eval import ate  # noqa: E402
from forward3d.geometry.se3 import rotation_angle  # noqa: E402
from forward3d.pipelines.loopclosure import LoopCloser, LoopClosureOptions  # noqa: E402
from forward3d.pipelines.rgbd import RGBDBackend  # noqa: E402

OFF = {"feature_tracking": False, "relocalize": False}


def _err(A: np.ndarray, B: np.ndarray) -> tuple[float, float]:
    D = np.linalg.inv(A) @ B
    return float(np.linalg.norm(D[:3, 3])), float(np.degrees(rotation_angle(D[:3, :3])))


def _yaw(deg: float, t=(0.0, 0.0, 0.0)) -> np.ndarray:
    T = np.eye(4)
    c, s = np.cos(np.radians(deg)), np.sin(np.radians(deg))
    T[:3, :3] = [[c, 0, s], [0, 1, 0], [-s, 0, c]]
    T[:3, 3] = t
    return T


@pytest.fixture(scope="module")
def orbit():
    """One orbit = 100 frames (5 cm, 3.6 degrees per frame), noisy depth with holes, 160x120."""
    return SyntheticScene(num_frames=100, width=160, height=120, seed=0, depth_noise=0.002, depth_holes=0.05)


def _add(closer: LoopCloser, scene: SyntheticScene, i: int, c2w: np.ndarray | None = None, **kw) -> bool:
    f = scene.frame(i)
    return closer.add_frame(f.c2w if c2w is None else c2w, True, f.depth, f.image, f.K, **kw)


def test_a_culled_keyframe_is_re_anchored_on_its_covers(orbit):
    """Stored keyframes 0 and 2; frame 1 (between them) arrives culled with 2 cm / 1 degree of tracking
    drift: verified against both covers, its pose is corrected, and the frames after it follow the cover."""
    closer = LoopCloser(LoopClosureOptions(min_gap=10_000))
    _add(closer, orbit, 0)
    _add(closer, orbit, 2)
    f = orbit.frame(1)
    drifted = f.c2w @ _yaw(1.0, (0.02, -0.01, 0.01))
    changed, c2w = closer.add_culled(drifted, [0, 1], f.depth, f.image, f.K, tracked=False)
    assert c2w is not None and closer.reanchored == 1
    dt, dr = _err(f.c2w, c2w)
    assert dt < 0.005 and dr < 0.3, (dt, dr)  # from 2.4 cm / 1 degree
    assert len(closer.keyframes) == 2  # not stored
    nxt = orbit.frame(3)  # tracked from the culled keyframe: it follows its (corrected) pose
    closer.add_frame(c2w @ np.linalg.inv(f.c2w) @ nxt.c2w, False, nxt.depth, nxt.image, nxt.K)
    traj = closer.trajectory()
    assert traj.shape == (4, 4, 4) and np.allclose(traj[2], c2w)
    assert _err(nxt.c2w, traj[3])[0] < 0.005
    # the two covers were joined through the culled keyframe (one edge, measured by two verifications)
    assert [(e.source, e.target) for e in closer.graph.loop_edges] == [(1, 0)]
    assert closer.stats()["reanchor_edges"] == 1



def test_covers_that_disagree_are_not_averaged(orbit, monkeypatch):
    """Frame 1 verified against stored keyframes 0 and 2, and the verification against keyframe 2
    slides 7 cm (as one did on a wall at frame 885 of the 1,000-frame run, fitness 0.87, RMSE 6 mm:
    it passes every check alone). The two verified poses disagree: the frame is re-anchored on the one
    nearer its tracked pose, and the covers are not joined through it (before: the weighted mean of the
    two, 3.5 cm off, and an edge that pulled the two nodes)."""
    closer = LoopCloser(LoopClosureOptions(min_gap=10_000))
    _add(closer, orbit, 0)
    _add(closer, orbit, 2)
    verify = closer._verify_pair
    slide = np.eye(4)
    slide[:3, 3] = [0.07, 0.0, 0.0]

    def sliding(kf, other, init, source, target, kind):
        r, info = verify(kf, other, init, source, target, kind)
        if target == 1:
            r.source_to_target = r.source_to_target @ slide
        return r, info

    monkeypatch.setattr(closer, "_verify_pair", sliding)
    f = orbit.frame(1)
    drifted = f.c2w @ _yaw(0.2, (0.005, 0.0, 0.0))
    changed, c2w = closer.add_culled(drifted, [0, 1], f.depth, f.image, f.K, tracked=False)
    assert c2w is not None and _err(f.c2w, c2w)[0] < 0.004, _err(f.c2w, c2w)
    assert closer.reanchor_inconsistent == 1
    assert closer.graph.loop_edges == [] and closer.stats()["reanchor_inconsistent"] == 1


def test_a_culled_keyframe_that_does_not_verify_is_refused(orbit):
    """A frame of the far side of the room proposed as covered by keyframe 0: verification fails, nothing
    is recorded (the caller stores it as a keyframe instead)."""
    closer = LoopCloser(LoopClosureOptions(min_gap=10_000, features=False))
    _add(closer, orbit, 0)
    f = orbit.frame(50)
    changed, c2w = closer.add_culled(orbit.c2w[0], [0], f.depth, f.image, f.K)
    assert c2w is None and not changed and len(closer) == 1 and closer.reanchor_rejected == 1
    assert closer.graph.loop_edges == []


def test_a_culled_revisit_closes_the_loop(orbit):
    """Keyframes every 4 frames around one orbit, tracked with a small error per step (0.08 degrees,
    1.6 mm) that drifts to 3 cm; frame 100 (the start again) arrives culled, tracked from the last
    keyframe: the edge to the keyframe that covers it is a loop closure, and the optimisation takes the
    drift out of the graph (measured: 3.0 -> 1.8 cm at worst, 2.7 -> 0.2 cm at the end)."""
    closer = LoopCloser(LoopClosureOptions(min_gap=10_000))
    frames = list(range(0, 100, 4))
    step = _yaw(0.08, (0.0016, 0.0, 0.0))
    est = [orbit.c2w[0]]
    for a, b in zip(frames[:-1], frames[1:]):
        est.append(est[-1] @ np.linalg.inv(orbit.c2w[a]) @ orbit.c2w[b] @ step)
    for k, i in enumerate(frames):
        _add(closer, orbit, i, est[k])

    def errors() -> np.ndarray:
        return np.array([_err(orbit.c2w[i], closer.graph.c2w[k])[0] for k, i in enumerate(frames)])

    before = errors()
    f = orbit.frame(0)  # frame 100 = frame 0 one orbit later (the orbit repeats)
    tracked = est[-1] @ np.linalg.inv(orbit.c2w[frames[-1]]) @ orbit.c2w[0] @ step
    changed, c2w = closer.add_culled(tracked, [0], f.depth, f.image, f.K)
    assert changed and c2w is not None and closer.optimizations == 1
    assert [(e.source, e.target) for e in closer.graph.loop_edges] == [(0, len(frames) - 1)]
    after = errors()
    assert before.max() > 0.025 and after.max() < 0.7 * before.max(), (after.max(), before.max())
    assert after[-1] < 0.2 * before[-1], (after[-1], before[-1])
    assert _err(orbit.c2w[0], c2w)[0] < 0.002  # re-anchored on keyframe 0


@pytest.mark.parametrize("relocalised", [True, False])
def test_a_relocalised_keyframe_gets_a_loop_edge(orbit, relocalised):
    """A keyframe relocalised against keyframe 0 (tracking was lost in between: weak odometry edge) is
    verified against it and joins the graph by a loop edge; without ``relocalised_on`` (the control) the
    pair is no candidate (``min_gap``) and only the weak odometry edge links it."""
    closer = LoopCloser(LoopClosureOptions(min_gap=10_000))
    _add(closer, orbit, 0)
    _add(closer, orbit, 20)
    _add(closer, orbit, 3, tracked=False, relocalised_on=0 if relocalised else None)
    loops = [(e.source, e.target) for e in closer.graph.loop_edges]
    odo = [e for e in closer.graph.edges if not e.loop and e.source == 2]
    assert len(odo) == 1 and np.allclose(odo[0].information, 1e-2 * np.eye(6))  # weak: not tracked
    if relocalised:
        assert loops == [(2, 0)] and closer.results[-1].kind == "relocalisation"
    else:
        assert loops == []


@pytest.fixture(scope="module")
def two_orbits():
    """Two and a half orbits of 40 frames (2.5x speed), noisy depth with holes: culled and not culled."""
    scene = SyntheticScene(num_frames=100, width=160, height=120, seed=0, speed=2.5, depth_noise=0.002,
                           depth_holes=0.05)
    frames = list(scene.frames())
    cull = RGBDBackend(mesh=False, keyframe_cull=True, **OFF).run(frames, progress=False)
    keep = RGBDBackend(mesh=False, keyframe_cull=False, **OFF).run(frames, progress=False)
    return scene, cull, keep


def test_culling_keeps_the_loops(two_orbits):
    """The revisits are culled (the store grows with the space, not the length), and the trajectory is
    as good as without culling (measured: 0.29 cm culled, 40 of 100 keyframes stored; 0.21 cm not)."""
    scene, cull, keep = two_orbits
    a_cull, a_keep = ate(cull.c2w, scene.c2w)["rmse"], ate(keep.c2w, scene.c2w)["rmse"]
    lc = cull.metadata["loop_closure"]
    first = sum(1 for i in cull.keyframes if i < 40)
    assert cull.metadata["stored_keyframes"] <= first + 3 and lc["keyframes"] == cull.metadata["stored_keyframes"]
    assert len(cull.keyframes) > 2 * first and lc["reanchored"] >= len(cull.keyframes) - first - 5
    assert lc["reanchor_edges"] > 0 and not cull.failures
    assert a_cull < 1.5 * a_keep + 0.001, (a_cull, a_keep)
    assert sorted(cull.metadata["stored_keyframe_frames"]) == cull.metadata["stored_keyframe_frames"]


def test_a_re_anchoring_correction_does_not_enter_the_motion_prediction(monkeypatch):
    """Frames 0..8 and back to 0 (keyframes every 2 frames; the way back is culled). Frames 9 and 10
    are tracked 3 cm off (drift), and frame 10, a culled keyframe, is re-anchored: its pose moves back by
    3 cm. That correction is not motion: the constant-velocity prediction of frame 11 must be the tracked
    motion (measured: 0.3 cm from the motion of frames 9 -> 10; 2.4 cm when the correction entered it)."""
    from forward3d.pipelines.tsdf import RGBDTracker

    scene = SyntheticScene(num_frames=10, width=160, height=120, seed=0, depth_noise=0.002)
    order = list(range(9)) + list(range(7, -1, -1))
    frames = [scene.frame(i) for i in order]
    drift = np.eye(4)
    drift[:3, 3] = [0.03, 0.0, 0.0]
    calls: list[list[np.ndarray]] = []  # per tracked frame (1, 2, ...): the inits given to the odometry
    track, align = RGBDBackend._track, RGBDTracker.align

    def drifting_track(cfg, tracker, cur, prev, key, *args):
        calls.append([])
        c2w, ok, fit, reason = track(cfg, tracker, cur, prev, key, *args)
        return (drift @ c2w if len(calls) in (9, 10) else c2w), ok, fit, reason

    def recording_align(self, cur, tgt, init):
        calls[-1].append(np.array(init))
        return align(self, cur, tgt, init)

    monkeypatch.setattr(RGBDBackend, "_track", staticmethod(drifting_track))
    monkeypatch.setattr(RGBDTracker, "align", recording_align)
    rec = RGBDBackend(mesh=False, keyframe_cull=True, **OFF).run(frames, progress=False)
    lc = rec.metadata["loop_closure"]
    assert rec.metadata["stored_keyframe_frames"] == [0, 2, 4, 6, 8] and lc["reanchored"] >= 3
    assert rec.frame_status[10].keyframe and 10 not in rec.metadata["stored_keyframe_frames"]
    gt = np.stack([f.c2w for f in frames])
    # frame 11 is tracked from frame 10 (the keyframe): its first init is the predicted motion 10 -> 11
    predicted, motion = calls[10][0], np.linalg.inv(gt[9]) @ gt[10]
    assert _err(motion, predicted)[0] < 0.01, _err(motion, predicted)
    assert _err(np.linalg.inv(rec.c2w[10]) @ rec.c2w[11], np.linalg.inv(gt[10]) @ gt[11])[0] < 0.005
