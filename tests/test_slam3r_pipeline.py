"""SLAM3R pipeline driven by the ground-truth oracle on a synthetic room (offline and online)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from forward3d.data.synthetic import SyntheticConfig, SyntheticScene
from forward3d.eval.recon import recon_metrics
from forward3d.eval.traj import ate
from forward3d.geometry.align import umeyama
from forward3d.pipelines.oracle import OracleSLAM3R
from forward3d.pipelines.slam3r import SLAM3RBackend, SLAM3RConfig, crop_transform
from forward3d.types import Frame

IMAGE_SIZE = (64, 80)  # (H, W), the small model's size
N_FRAMES = 40


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: see conftest.one_thread


@pytest.fixture(scope="module")
def scene() -> SyntheticScene:
    return SyntheticScene(SyntheticConfig(seed=3, num_frames=N_FRAMES, width=160, height=120, trajectory="orbit"))


@pytest.fixture(scope="module")
def frames(scene) -> list[Frame]:
    return list(scene.frames())


def _gt_world(oracle: OracleSLAM3R, n: int) -> np.ndarray:
    """Exact visible surface at the model crop: the union of every frame's GT world points."""
    pts = [oracle._gt(i)[1][oracle._gt(i)[2]] for i in range(n)]
    return np.concatenate(pts)[::3]


def _run(scene, frames, *, oracle_kw=None, **cfg_kw):
    oracle = OracleSLAM3R(scene, image_size=IMAGE_SIZE, **(oracle_kw or {}))
    cfg = SLAM3RConfig(**cfg_kw)
    updates = []
    rec = SLAM3RBackend(cfg, models=oracle).run(frames, callback=updates.append)
    return rec, oracle, updates


def _score(rec, oracle, scene, with_scale=True):
    """Sim(3) (or SE(3)) alignment on pixel-aligned point maps, then accuracy/completion and ATE."""
    n = len(rec)
    pred = np.asarray(rec.point_maps, dtype=np.float64)
    gt = np.stack([oracle._gt(i)[1] for i in range(n)])
    ok = np.stack([oracle._gt(i)[2] for i in range(n)]) & (np.asarray(rec.confidences) > 3)
    s, R, t = umeyama(pred[ok][::7], gt[ok][::7], with_scale=with_scale)
    cloud = s * rec.points.points.astype(np.float64) @ R.T + t
    m = recon_metrics(cloud, _gt_world(oracle, n))
    tr = ate(rec.c2w, scene.c2w[:n], align="sim3" if with_scale else "se3")
    return s, m, tr


def test_offline_oracle_accuracy(scene, frames):
    rec, oracle, updates = _run(scene, frames, keyframe_stride=3)
    n = len(frames)
    assert len(rec) == n and rec.point_maps.shape == (n, *IMAGE_SIZE, 3)
    assert rec.confidences.shape == (n, *IMAGE_SIZE) and rec.point_map_colors.dtype == np.uint8
    assert rec.image_size == (160, 120) and rec.K.shape == (n, 3, 3)
    md = rec.metadata
    assert md["mode"] == "offline" and md["keyframe_stride"] == 3 and not md["keyframe_stride_adaptive"]
    assert md["init_window"] == [0, 3, 6, 9, 12]
    assert updates == []  # offline mode has no incremental updates
    s, m, tr = _score(rec, oracle, scene)
    assert m["accuracy"] < 0.03 and m["completion"] < 0.03, m
    assert tr["rmse"] < 0.03 and tr["rot_rmse_deg"] < 1.0, tr
    # intrinsics mapped back to the ORIGINAL resolution: fx within 2% of the truth
    assert np.allclose(rec.K[:, 0, 0], scene.K[0, 0], rtol=0.02)
    assert np.allclose(rec.K[:, 1, 2], scene.K[1, 2], atol=1.5)
    # (s+1)//2 = 2 frames per L2W call after the 4 pre-registered frames of the initial span
    assert oracle.calls["l2w"] == 8 + int(np.ceil((n - 13) / 2))


def test_online_oracle_accuracy_and_callback(scene, frames):
    rec, oracle, updates = _run(scene, frames, keyframe_stride=2, online=True, buffer_size=8)
    n = len(frames)
    assert len(rec) == n
    assert [u.index for u in updates] == list(range(n))  # once per frame, in order
    assert [u.num_frames for u in updates] == list(range(1, n + 1))
    u = updates[-1]
    assert u.points.shape == (*IMAGE_SIZE, 3) and u.c2w.shape == (4, 4) and u.K.shape == (3, 3)
    np.testing.assert_allclose(u.c2w, rec.c2w[-1])
    np.testing.assert_allclose(u.points, rec.point_maps[-1])
    s, m, tr = _score(rec, oracle, scene)
    assert m["accuracy"] < 0.03 and m["completion"] < 0.03, m
    assert tr["rmse"] < 0.03, tr
    md = rec.metadata
    assert md["mode"] == "online" and md["buffer_max_len"] <= 8
    # bounded working set: buffer + the last win_r * s frames + one update interval of candidates
    assert md["max_frames_held"] <= 8 + 3 * 2 + 2 * 2 + 1


def test_noise_still_accurate(scene, frames):
    rec, oracle, _ = _run(scene, frames[:24], oracle_kw=dict(noise=0.005), keyframe_stride=2)
    s, m, tr = _score(rec, oracle, scene)
    assert m["accuracy"] < 0.03 and m["completion"] < 0.03, m
    assert tr["rmse"] < 0.03, tr


@pytest.mark.parametrize("online", [False, True])
def test_rgbd_depth_correction_recovers_metric_scale(scene, frames, online):
    sub = frames[:20]
    rec, oracle, _ = _run(scene, sub, oracle_kw=dict(scale=0.37), keyframe_stride=2, online=online)
    assert rec.metric_scale
    scales = [x for x in rec.depth_scales if np.isfinite(x)]
    assert len(scales) >= len(sub) - 1 and np.allclose(scales, 1 / 0.37, rtol=0.01)
    s, m, tr = _score(rec, oracle, scene)
    assert abs(s - 1.0) < 0.02, s  # metric without Sim(3) scale
    se3 = ate(rec.c2w, scene.c2w[:len(sub)], align="se3")
    assert se3["rmse"] < 0.03, se3
    if online:
        return
    # without depth the scale stays relative
    rgb = [f.with_(depth=None) for f in sub]
    rec2, oracle2, _ = _run(scene, rgb, oracle_kw=dict(scale=0.37), keyframe_stride=2, online=online)
    assert not rec2.metric_scale
    s2, _, _ = _score(rec2, oracle2, scene)
    assert abs(s2 - 1.0) > 0.1


def test_depth_correction_with_missing_depth(scene, frames):
    # every third frame has no depth (the initial reference, frame 4, has one): still metric
    sub = [f.with_(depth=None) if i % 3 == 2 else f for i, f in enumerate(frames[:18])]
    rec, oracle, _ = _run(scene, sub, oracle_kw=dict(scale=0.37), keyframe_stride=2)
    assert rec.metric_scale
    assert [not np.isfinite(x) for x in rec.depth_scales] == [i % 3 == 2 for i in range(18)]
    s, _, _ = _score(rec, oracle, scene)
    assert abs(s - 1.0) < 0.02
    assert ate(rec.c2w, scene.c2w[:18], align="se3")["rmse"] < 0.03


def test_depth_correction_scale_shift(scene, frames):
    rec, oracle, _ = _run(scene, frames[:16], oracle_kw=dict(scale=2.5), keyframe_stride=2, depth_fit="scale_shift")
    shifts = [x for x in rec.metadata["depth_shifts"] if x is not None]
    assert shifts and np.allclose(shifts, 0.0, atol=0.01)
    s, _, _ = _score(rec, oracle, scene)
    assert abs(s - 1.0) < 0.02


def test_deterministic(scene, frames):
    a, _, _ = _run(scene, frames[:20], keyframe_stride=-1, oracle_kw=dict(noise=0.003))
    b, _, _ = _run(scene, frames[:20], keyframe_stride=-1, oracle_kw=dict(noise=0.003))
    np.testing.assert_array_equal(a.c2w, b.c2w)
    np.testing.assert_array_equal(a.point_maps, b.point_maps)
    np.testing.assert_array_equal(a.points.points, b.points.points)
    assert a.metadata["buffer_ids"] == b.metadata["buffer_ids"]
    kw = dict(keyframe_stride=1, online=True, buffer_size=5, oracle_kw=dict(noise=0.003))
    c, _, _ = _run(scene, frames[:14], **kw)
    d, _, _ = _run(scene, frames[:14], **kw)
    np.testing.assert_array_equal(c.c2w, d.c2w)
    np.testing.assert_array_equal(np.asarray(c.point_maps), np.asarray(d.point_maps))
    assert c.metadata["buffer_ids"] == d.metadata["buffer_ids"]


def test_adaptive_stride(scene, frames):
    # full overlap scores best when the oracle has no baseline preference
    rec, _, _ = _run(scene, frames[:25], keyframe_stride=-1)
    md = rec.metadata
    assert md["keyframe_stride_adaptive"] and md["keyframe_stride"] == 1
    assert set(md["stride_scores"]) == {"1", "2", "3", "4"}  # 1 .. (N-1)//6
    # with a preferred baseline the stride whose windows match it best wins
    step = float(np.linalg.norm(np.diff(scene.c2w[:, :3, 3], axis=0), axis=1).mean())
    rec, _, _ = _run(scene, frames[:31], keyframe_stride=-1, oracle_kw=dict(preferred_baseline=4 * step))
    s = rec.metadata["keyframe_stride"]
    assert 1 < s <= 30 // 6
    assert rec.metadata["stride_scores"][str(s)] == max(rec.metadata["stride_scores"].values())


@pytest.mark.parametrize("strategy", ["fifo", "reservoir"])
def test_buffer_strategies_bounded(scene, frames, strategy):
    rec, oracle, _ = _run(scene, frames[:30], keyframe_stride=1, buffer_size=6, buffer_strategy=strategy,
                          num_scene_frame=3)
    md = rec.metadata
    assert md["buffer_max_len"] <= 6 and len(md["buffer_ids"]) == 6
    if strategy == "fifo":
        assert md["buffer_ids"] == sorted(md["buffer_ids"]) and md["buffer_ids"][0] > 4
    _, m, tr = _score(rec, oracle, scene)
    assert tr["rmse"] < 0.03


def test_online_adaptive_warmup_and_short_input(scene, frames):
    rec, _, updates = _run(scene, frames[:14], keyframe_stride=-1, online=True, online_warmup=10)
    assert [u.index for u in updates] == list(range(14)) and rec.metadata["keyframe_stride"] >= 1
    # fewer frames than the warm-up: initialised at the end of the input
    rec, _, updates = _run(scene, frames[:5], keyframe_stride=-1, online=True, online_warmup=30)
    assert len(rec) == 5 and len(updates) == 5


def test_user_intrinsics_and_bad_input(scene, frames):
    K = scene.K
    rec, _, _ = _run(scene, frames[:8], keyframe_stride=1, intrinsics=(K[0, 0], K[1, 1], K[0, 2], K[1, 2]))
    np.testing.assert_allclose(rec.K, np.broadcast_to(K, rec.K.shape))
    with pytest.raises(ValueError, match="at least 2 frames"):
        _run(scene, frames[:1], keyframe_stride=1)
    with pytest.raises(ValueError, match="buffer_strategy"):
        SLAM3RConfig(buffer_strategy="lru")
    with pytest.raises(TypeError, match="SLAM3RModels"):
        SLAM3RBackend(models=object())


def test_crop_transform_maps_intrinsics_back():
    crop = crop_transform(640, 480, (224, 224))
    assert (crop.resized_w, crop.resized_h, crop.x0, crop.y0) == (299, 224, 37, 0)
    K = np.array([[500.0, 0, 320], [0, 500.0, 240], [0, 0, 1]])
    np.testing.assert_allclose(crop.K_to_original(crop.K_to_model(K)), K)
    # a non-square model size covers the image, then crops the centre
    crop = crop_transform(100, 100, (64, 80))
    assert (crop.resized_w, crop.resized_h, crop.x0, crop.y0) == (80, 80, 0, 8)


def test_oracle_protocol_shapes(scene):
    from forward3d.models.slam3r.protocol import SLAM3RModels

    o = OracleSLAM3R(scene, image_size=IMAGE_SIZE, scale=0.5)
    assert isinstance(o, SLAM3RModels)
    tok = o.encode(torch.zeros(3, 3, *IMAGE_SIZE), [0, 1, 2])
    pts, conf = o.i2p(tok[None], 1)
    assert pts.shape == (1, 3, *IMAGE_SIZE, 3) and conf.shape == (1, 3, *IMAGE_SIZE) and (conf > 1).all()
    cam = o._gt(1)[0]
    np.testing.assert_allclose(pts[0, 1].numpy(), 0.5 * cam, atol=1e-5)  # reference view: its own camera
    sc = o.corr_scores(tok[:1], tok)
    assert sc.shape == (3, 1, 1) and sc[0, 0, 0] >= sc[2, 0, 0]
    with pytest.raises(ValueError, match="frame ids"):
        o.encode(torch.zeros(2, 3, *IMAGE_SIZE))
