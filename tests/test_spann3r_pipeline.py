"""Spann3R back-end: the pipeline logic (crop, cameras, scale, fusion, offline order) against ground
truth through the oracle, and end to end with the fixture's small random-weight network on a
synthetic video (determinism, export, bounded memory, RGB-D, offline)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from forward3d.data.synthetic import SyntheticConfig, SyntheticScene
from forward3d.eval.traj import ate
from forward3d.io.bundle import load_reconstruction
from forward3d.io.export import export_reconstruction
from forward3d.models.spann3r import MemoryConfig, Spann3RConfig
from forward3d.models.spann3r.engine import Spann3REngine
from forward3d.pipelines.oracle import OracleSpann3R
from forward3d.pipelines.slam3r.common import crop_transform_dust3r, prepare_frame
from forward3d.pipelines.spann3r import Spann3RPipeline, Spann3RPipelineConfig, run_spann3r
from forward3d.types import Frame

IMAGE_SIZE = (64, 80)  # (H, W): the small fixture model's size
N = 16
SCALE = 0.37  # the oracle's wrong global scale

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def scene() -> SyntheticScene:
    # 160 x 128 -> the DUSt3R crop to 80 x 64 is an exact half: principal point at the crop centre
    return SyntheticScene(SyntheticConfig(seed=3, num_frames=N, width=160, height=128, trajectory="orbit"))


@pytest.fixture(scope="module")
def frames(scene) -> list[Frame]:
    return list(scene.frames())


@pytest.fixture(scope="module")
def rgb(frames) -> list[Frame]:
    return [f.with_(depth=None) for f in frames]


@pytest.fixture(scope="module")
def engine(shared_dir) -> Spann3REngine:
    fx = shared_dir / "fixtures" / "spann3r"
    return Spann3REngine.from_pretrained(fx / "weights.safetensors", image_size=IMAGE_SIZE,
                                         config=Spann3RConfig.from_json(fx / "config.json", section="small"))


def gt_c2w(scene, n=N) -> np.ndarray:
    """Ground-truth poses in the first frame's camera (the pipeline's world)."""
    return np.linalg.inv(scene.c2w[0]) @ scene.c2w[:n]


def run(models, frames, **cfg):
    updates = []
    rec = Spann3RPipeline(Spann3RPipelineConfig(**cfg), models=models).run(frames, progress=False,
                                                                           callback=updates.append)
    return rec, updates


# ---------------------------------------------------------------------------------------- crop
@pytest.mark.parametrize("size, expect", [
    ((640, 480), (640, 480, 298, 224, 37, 0)),
    ((1920, 1080), (1920, 1080, 398, 224, 87, 0)),
    ((641, 481), (640, 480, 298, 224, 37, 0)),   # odd: the last column / row is dropped first
    ((224, 224), (224, 224, 224, 224, 0, 0)),
    ((300, 226), (300, 226, 297, 224, 36, 0)),   # margin 73: round-half-even(36.5) = 36
])
def test_dust3r_crop_numbers(size, expect):
    c = crop_transform_dust3r(*size, (224, 224))
    assert (c.window_w, c.window_h, c.resized_w, c.resized_h, c.x0, c.y0) == expect
    assert (c.out_w, c.out_h, c.pre_x0, c.pre_y0) == (224, 224, 0, 0)
    K = np.array([[500.0, 0, size[0] / 2], [0, 500.0, size[1] / 2], [0, 0, 1]])
    np.testing.assert_allclose(c.K_to_original(c.K_to_model(K)), K, atol=1e-9)


def test_prepare_frame_with_the_dust3r_crop():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (121, 161, 3), dtype=np.uint8)
    depth = rng.uniform(1, 3, (121, 161)).astype(np.float32)
    f = Frame(img, depth=depth)
    c = crop_transform_dust3r(161, 121, IMAGE_SIZE)
    p = prepare_frame(f, IMAGE_SIZE, c)
    ref = Image.fromarray(img).crop((0, 0, 160, 120)).resize((c.resized_w, c.resized_h), Image.LANCZOS)
    ref = np.array(ref.crop((c.x0, c.y0, c.x0 + 80, c.y0 + 64)))
    assert np.array_equal(p.colors, ref) and p.image.shape == (3, 64, 80)
    np.testing.assert_allclose(p.image.permute(1, 2, 0).numpy(), ref / 127.5 - 1.0, atol=1e-6)
    rows, cols = c.source_pixels()
    assert np.array_equal(p.depth, depth[rows[:, None], cols[None, :]])
    with pytest.raises(ValueError, match="crop transform for 161x121"):
        prepare_frame(Frame(img[:100]), IMAGE_SIZE, c)


# ---------------------------------------------------------------------------------------- oracle
def test_oracle_rgb_exact_cameras_and_updates(scene, rgb):
    oracle = OracleSpann3R(scene, image_size=IMAGE_SIZE, scale=SCALE)
    rec, updates = run(oracle, rgb)
    assert len(rec) == N and rec.point_maps.shape == (N, *IMAGE_SIZE, 3) and rec.image_size == (160, 128)
    assert [u.index for u in updates] == list(range(N)) and [u.num_frames for u in updates] == list(range(1, N + 1))
    a = ate(rec.c2w, gt_c2w(scene), align="sim3")
    assert a["rmse"] < 1e-6 and a["rot_rmse_deg"] < 1e-4, a
    assert a["scale"] == pytest.approx(1 / SCALE, rel=1e-6)  # relative scale without depth
    np.testing.assert_allclose(rec.c2w[0], np.eye(4))
    np.testing.assert_allclose(rec.K, np.broadcast_to(scene.K, (N, 3, 3)), rtol=1e-6, atol=1e-6)
    md = rec.metadata
    assert md["backend"] == "spann3r" and md["mode"] == "online" and not md["metric_scale"]
    assert md["intrinsics"] == "estimated" and md["max_frames_held"] == 2
    u = updates[-1]
    np.testing.assert_array_equal(u.points, rec.point_maps[-1])
    np.testing.assert_allclose(u.c2w, rec.c2w[-1])
    assert u.image_size == (160, 128) and u.colors.dtype == np.uint8
    # the fused cloud: valid points only, all of them (fewer than num_points)
    valid = rec.confidences > Spann3RPipelineConfig().conf_min
    assert len(rec.points) == int(valid.sum()) == len(rec.points.colors)


def test_oracle_rgbd_metric_scale(scene, frames):
    oracle = OracleSpann3R(scene, image_size=IMAGE_SIZE, scale=SCALE)
    rec, updates = run(oracle, frames, depth_warmup=4)
    md = rec.metadata
    assert md["metric_scale"] and md["depth_scale"] == pytest.approx(1 / SCALE, rel=0.005)
    se3 = ate(rec.c2w, gt_c2w(scene), align="se3")
    assert se3["rmse"] < 0.005, se3
    # per-frame depth correction: every frame's points land on its sensor depth (up to the nearest
    # resampling of the depth map) -> metric world points within 0.5% of the truth
    for i in (0, N // 2, N - 1):
        _, world, valid = oracle._gt(i)
        gt = world @ np.linalg.inv(scene.c2w[0])[:3, :3].T + np.linalg.inv(scene.c2w[0])[:3, 3]
        err = np.linalg.norm(rec.point_maps[i][valid] - gt[valid], axis=-1) / np.linalg.norm(gt[valid], axis=-1)
        assert np.median(err) < 0.005, (i, np.median(err))  # measured 0.15%
    assert all(s is not None for s in md["depth_scales"])
    assert [u.index for u in updates] == list(range(N))  # the warm-up frames come out, in order


def test_oracle_rgbd_global_scale_only(scene, frames):
    oracle = OracleSpann3R(scene, image_size=IMAGE_SIZE, scale=SCALE)
    rec, _ = run(oracle, frames, depth_per_frame=False)
    assert rec.metadata["depth_scales"] == [None] * N
    a = ate(rec.c2w, gt_c2w(scene), align="se3")
    assert a["rmse"] < 0.005
    ratio = rec.point_maps[3][rec.confidences[3] > 2] / (oracle.predict(3, 0).points.numpy()[rec.confidences[3] > 2])
    np.testing.assert_allclose(ratio, rec.metadata["depth_scale"], rtol=1e-5)


def test_oracle_noise(scene, rgb):
    """1 cm noise on every point: frame 0 is the world (no alignment needed), so poses compare
    directly (measured: 0.044 deg, 2.3 mm at most)."""
    oracle = OracleSpann3R(scene, image_size=IMAGE_SIZE, noise=0.01)
    rec, _ = run(oracle, rgb)
    gt = gt_c2w(scene)
    rot = [np.degrees(np.linalg.norm(a.T @ b - np.eye(3)) / np.sqrt(2)) for a, b in zip(rec.c2w[:, :3, :3], gt[:, :3, :3])]
    assert max(rot) < 0.2 and np.abs(rec.c2w[:, :3, 3] - gt[:, :3, 3]).max() < 0.01
    assert rec.K[0, 0, 0] == pytest.approx(scene.K[0, 0], rel=0.02)
    assert max(rec.metadata["pose_error_px"][1:]) < 1.0


def test_oracle_offline_order(scene, rgb):
    oracle = OracleSpann3R(scene, image_size=IMAGE_SIZE, scale=SCALE)
    rec, updates = run(oracle, rgb, offline=True)
    order = rec.metadata["offline_order"]
    assert order[0] == N // 2 and sorted(order) == list(range(N)) and oracle.calls["offline"] == 1
    assert rec.metadata["mode"] == "offline" and [u.index for u in updates] == list(range(N))
    # the world is the first frame of the ORDER; the outputs are in input order
    ref = np.linalg.inv(scene.c2w[order[0]]) @ scene.c2w[:N]
    a = ate(rec.c2w, ref, align="sim3")
    assert a["rmse"] < 1e-6, a
    np.testing.assert_allclose(rec.c2w[order[0]], np.eye(4), atol=1e-12)


@pytest.mark.parametrize("how", ["user", "frame"])
def test_given_intrinsics(scene, rgb, frames, how):
    oracle = OracleSpann3R(scene, image_size=IMAGE_SIZE)
    K = scene.K
    if how == "user":
        rec, _ = run(oracle, rgb[:6], intrinsics=(K[0, 0], K[1, 1], K[0, 2], K[1, 2]))
    else:
        rec, _ = run(oracle, [f.with_(depth=None) for f in frames[:6]], use_frame_intrinsics=True)
    assert rec.metadata["intrinsics"] == how
    np.testing.assert_allclose(rec.K, np.broadcast_to(K, (6, 3, 3)), atol=1e-9)
    assert ate(rec.c2w, gt_c2w(scene, 6), align="sim3")["rmse"] < 1e-6


def test_opencv_pose_solver(scene, rgb):
    oracle = OracleSpann3R(scene, image_size=IMAGE_SIZE)
    rec, _ = run(oracle, rgb[:6], pose_solver="opencv")
    assert ate(rec.c2w, gt_c2w(scene, 6), align="sim3")["rmse"] < 1e-4


def test_interrupt_and_dropped_stream(scene, rgb):
    class Source:
        dropped = True

        def __iter__(self):
            for k, f in enumerate(rgb):
                if k == 5:
                    raise KeyboardInterrupt
                yield f

    rec, updates = run(OracleSpann3R(scene, image_size=IMAGE_SIZE), Source())
    assert len(rec) == 5 and len(updates) == 5
    assert rec.metadata["interrupted"] and rec.metadata["stream_dropped"]


def test_bad_input(scene, rgb):
    oracle = OracleSpann3R(scene, image_size=IMAGE_SIZE)
    with pytest.raises(TypeError, match="Frame items"):
        run(oracle, [rgb[0], np.zeros((4, 4, 3))])
    with pytest.raises(ValueError, match="at least 2 frames"):
        run(oracle, rgb[:1])
    with pytest.raises(ValueError, match="at least 2 frames"):
        run(oracle, rgb[:1], offline=True)
    with pytest.raises(ValueError, match="offline_max_frames"):
        run(oracle, rgb, offline=True, offline_max_frames=4)
    with pytest.raises(TypeError, match="Spann3RModels protocol"):
        Spann3RPipeline(models=object())
    with pytest.raises(ValueError, match="pose_solver"):
        Spann3RPipelineConfig(pose_solver="magic")
    with pytest.raises(ValueError, match="conf_thresh"):
        Spann3RPipelineConfig(conf_thresh=1.0)
    with pytest.raises(ValueError, match="intrinsics"):
        Spann3RPipelineConfig(intrinsics=(0.0, 1.0, 2.0, 3.0))


# ---------------------------------------------------------------------------------------- real network
def test_engine_end_to_end_deterministic_and_export(engine, rgb, tmp_path):
    rec1, ups = run(engine, rgb)
    rec2 = run_spann3r(engine, rgb, Spann3RPipelineConfig())
    assert len(rec1) == N and [u.index for u in ups] == list(range(N))
    np.testing.assert_array_equal(rec1.c2w, rec2.c2w)
    np.testing.assert_array_equal(np.asarray(rec1.point_maps), np.asarray(rec2.point_maps))
    np.testing.assert_array_equal(rec1.points.points, rec2.points.points)
    assert np.isfinite(rec1.c2w).all() and np.isfinite(np.asarray(rec1.point_maps)).all()
    assert np.allclose(rec1.c2w[:, :3, :3] @ rec1.c2w[:, :3, :3].transpose(0, 2, 1), np.eye(3), atol=1e-9)
    md = rec1.metadata
    # the random small model, fed similar frames, skips many writes; the memory stays small
    assert len(md["memory_size"]) == N and max(md["memory_size"]) <= 150 + 2 * 20
    written = export_reconstruction(rec1, tmp_path / "out")
    assert {"ply", "tum", "colmap", "nerfstudio", "bundle"} <= set(written)
    back = load_reconstruction(written["bundle"])
    np.testing.assert_allclose(back.c2w, rec1.c2w)
    lines = [x for x in Path(written["tum"]).read_text().splitlines() if x and not x.startswith("#")]
    assert len(lines) == N
    tf = json.loads(Path(written["nerfstudio"]).read_text())
    assert len(tf["frames"]) == N


def test_engine_bounded_memory_and_spool(engine, rgb, tmp_path):
    spool = tmp_path / "spool"
    mem = MemoryConfig(long_mem_size=40, work_mem_size=2, attn_thresh=5e-4, sim_thresh=1.0)  # never skip
    rec, _ = run(engine, rgb, spool_dir=str(spool), memory=mem)
    md = rec.metadata
    assert md["max_frames_held"] == 2 and md["spool_dir"] == str(spool)
    assert md["memory_prunes"], "the memory must have been pruned"
    assert max(md["memory_size"]) <= 40 + 2 * 20  # long_mem_size + one working memory of tokens
    h, w = IMAGE_SIZE
    assert (spool / "points.bin").stat().st_size == N * h * w * 12
    assert isinstance(rec.point_maps, np.memmap)


def test_engine_rgbd_and_offline(engine, frames):
    rec, _ = run(engine, frames[:6])
    assert rec.metadata["metric_scale"] and rec.metadata["depth_scale"] > 0
    rec_off, _ = run(engine, frames[:5], offline=True)
    order = rec_off.metadata["offline_order"]
    assert sorted(order) == list(range(5)) and len(rec_off) == 5
    np.testing.assert_allclose(rec_off.c2w[order[0]], np.eye(4))


def test_engine_stream_protocol(engine, rgb):
    stream = engine.start()
    img = prepare_frame(rgb[0], IMAGE_SIZE, crop_transform_dust3r(160, 128, IMAGE_SIZE)).image
    assert stream.push(img, 7) == []
    out = stream.push(img, 8)
    assert [p.frame_id for p in out] == [7] and out[0].points.shape == (*IMAGE_SIZE, 3)
    assert [p.frame_id for p in stream.finish()] == [8]
    with pytest.raises(ValueError, match=r"expected an image \[3, 64, 80\]"):
        stream.push(torch.zeros(3, 32, 80), 9)
    one = engine.start()
    one.push(img, 0)
    with pytest.raises(ValueError, match="at least 2 frames"):
        one.finish()
