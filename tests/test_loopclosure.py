"""Loop closure of the rgbd back-end: keyframe store, candidates, verification, corrected trajectory."""

from __future__ import annotations

import argparse

import numpy as np
import pytest

pytest.importorskip("open3d")

from forward3d.cli.options import add_config_arguments, config_from_args  # noqa: E402
from forward3d.data.synthetic import SyntheticScene  # noqa: E402
from forward3d.eval import ate  # noqa: E402
from forward3d.pipelines.loopclosure import (LoopCloser, LoopClosureOptions, downsample_rgbd,  # noqa: E402
                                             thumbnail_descriptor)
from forward3d.pipelines.rgbd import RGBDBackend, RGBDConfig  # noqa: E402

from conftest import SHARED  # noqa: E402


def test_downsample_keeps_geometry_and_drops_edges():
    h, w = 40, 60
    K = np.array([[50.0, 0, 30.0], [0, 50.0, 20.0], [0, 0, 1]])
    u, v = np.meshgrid(np.arange(w) + 0.5, np.arange(h) + 0.5)
    depth = (2.0 + 0.01 * (u - 30.0) / 50.0 * 2.0).astype(np.float32)  # a slanted plane z = 2 + 0.02 x / z-ish
    depth[10, 10] = 0.0  # a hole
    depth[20:, 40:] = 3.0  # a depth edge
    image = np.random.default_rng(0).integers(0, 255, (h, w, 3), dtype=np.uint8)
    d, img, K2 = downsample_rgbd(depth, image, K, 2)
    assert d.shape == (20, 30) and img.shape == (20, 30, 3) and img.dtype == np.uint8
    assert np.allclose(K2[:2, :3], K[:2, :3] / 2) and K2[2, 2] == 1
    assert d[5, 5] == 0.0  # the block with the hole
    assert d[10, 20] == 0.0 or abs(d[10, 20] - 3.0) < 1e-6
    # a pixel of the stored image back-projects to the same ray as the block centre at full size
    x_full = ((2 * 7 + 1.0) - K[0, 2]) / K[0, 0]
    x_half = ((7 + 0.5) - K2[0, 2]) / K2[0, 0]
    assert abs(x_full - x_half) < 1e-12
    assert abs(d[3, 7] - depth[6:8, 14:16].mean()) < 1e-6


def test_thumbnail_descriptor_is_a_normalised_correlation():
    scene = SyntheticScene(num_frames=100, width=160, height=120, seed=0)
    a, b, c = (thumbnail_descriptor(scene.frame(i).image) for i in (0, 1, 50))
    assert a.shape == (768,) and abs(float(np.linalg.norm(a)) - 1.0) < 1e-5
    assert float(a @ a) == pytest.approx(1.0, abs=1e-5)
    assert float(a @ b) > float(a @ c)  # the next frame looks more alike than the far side of the room
    assert not np.any(thumbnail_descriptor(np.full((10, 10, 3), 7, np.uint8)))  # flat: no descriptor


def _closer(scene: SyntheticScene, frames: list[int], **kw) -> LoopCloser:
    """A loop closer fed keyframes at their ground-truth poses (no automatic loops)."""
    closer = LoopCloser(LoopClosureOptions(min_gap=10_000, **kw))
    for i in frames:
        f = scene.frame(i)
        closer.add_frame(f.c2w, True, f.depth, f.image, f.K)
    return closer


@pytest.fixture(scope="module")
def loop_scene():
    return SyntheticScene(num_frames=100, width=160, height=120, seed=0, depth_noise=0.002, depth_holes=0.05)


def test_a_true_loop_is_accepted_from_a_drifted_guess(loop_scene):
    closer = _closer(loop_scene, [0, 4, 98])
    gt = np.linalg.inv(loop_scene.c2w[0]) @ loop_scene.c2w[98]
    drift = np.eye(4)
    drift[:3, 3] = [0.03, -0.01, 0.02]
    r = closer.propose(2, 0, gt @ drift)
    assert r.accepted, r.reason
    err = np.linalg.inv(gt) @ r.source_to_target
    assert np.linalg.norm(err[:3, 3]) < 0.005
    assert [(e.source, e.target) for e in closer.graph.loop_edges] == [(2, 0)]


@pytest.mark.parametrize("verify", [True, False])
def test_a_wrong_loop_is_rejected(loop_scene, verify):
    """Keyframes from opposite sides of the room proposed as the same place (identity guess).

    Without verification (``verify=False``, the control) the same candidate enters the graph: the
    assertions of the verified case are what verification buys.
    """
    closer = _closer(loop_scene, [0, 4, 50], verify=verify)
    before = [T.copy() for T in closer.graph.c2w]
    r = closer.propose(2, 0, np.eye(4))
    if verify:
        assert not r.accepted and r.reason
        assert closer.graph.loop_edges == [] and closer.loops == []
        assert all(np.allclose(a, b) for a, b in zip(before, closer.graph.c2w))
    else:
        assert r.accepted
        assert closer.graph.loop_edges or closer.stats()["accepted"] == 1


@pytest.fixture(scope="module")
def one_loop():
    """110 frames of one orbit (the last ones revisit the start), noisy depth with holes, 160x120."""
    scene = SyntheticScene(num_frames=110, width=160, height=120, seed=0, depth_noise=0.002, depth_holes=0.05)
    frames = list(scene.frames())
    backend = RGBDBackend()
    updates = list(backend.stream(frames, progress=False))
    with_lc = backend.result
    without = RGBDBackend(loop_closure=False).run(frames, progress=False)
    return scene, updates, with_lc, without


def test_loop_closure_lowers_the_drift(one_loop):
    scene, _, rec, base = one_loop
    a_lc, a_base = ate(rec.c2w, scene.c2w)["rmse"], ate(base.c2w, scene.c2w)["rmse"]
    meta = rec.metadata["loop_closure"]
    assert meta["kept"] >= 1 and meta["optimizations"] >= 1
    assert "loop_closure" not in base.metadata
    assert a_lc < 0.65 * a_base, (a_lc, a_base)  # measured: 0.41 vs 0.81 cm
    assert rec.c2w.shape == (110, 4, 4) and len(rec.points) > 1000 and len(rec.mesh.faces) > 1000
    assert rec.timings["loop_closure_s"] > 0


def test_streaming_updates_carry_the_corrected_trajectory(one_loop):
    _, updates, rec, _ = one_loop
    corrected = [u for u in updates if u.trajectory is not None]
    assert corrected, "no update carried a corrected trajectory"
    for u in corrected:
        assert u.trajectory.shape == (u.index + 1, 4, 4)
        assert np.allclose(u.trajectory[-1], u.c2w)
    last = corrected[-1]
    # frames before the last correction: the final poses equal the corrected ones up to later corrections
    assert np.abs(last.trajectory[:, :3, 3] - rec.c2w[:last.index + 1, :3, 3]).max() < 0.05


def test_config_and_cli():
    p = argparse.ArgumentParser()
    dests = add_config_arguments(p, RGBDConfig)
    cfg = config_from_args(RGBDConfig, p.parse_args(["--no-loop-closure", "--loop-radius", "0.8"]), dests)
    assert cfg.loop_closure is False and cfg.loop_radius == 0.8
    assert config_from_args(RGBDConfig, p.parse_args([]), dests).loop_closure is True
    assert "loop" in p.format_help()
    for bad in ({"loop_radius": 0.0}, {"loop_min_gap": 0}, {"loop_min_fitness": 1.5}, {"loop_downsample": 0},
                {"loop_min_appearance": 2.0}):
        with pytest.raises(ValueError, match=f"RGBDConfig.{next(iter(bad))}"):
            RGBDConfig(**bad)


@pytest.mark.slow
def test_three_loops_synthetic_room():
    """The issue's case: 3 loops (300 frames, 320x240), noise 0.002, 5 % holes."""
    scene = SyntheticScene(num_frames=300, width=320, height=240, seed=0, depth_noise=0.002, depth_holes=0.05)
    frames = list(scene.frames())
    rec = RGBDBackend().run(frames, progress=False)
    base = RGBDBackend(loop_closure=False).run(frames, progress=False)
    a_lc, a_base = ate(rec.c2w, scene.c2w)["rmse"], ate(base.c2w, scene.c2w)["rmse"]
    assert a_lc < 0.5 * a_base, (a_lc, a_base)


def _hololens():
    from forward3d.io.sources import open_frames

    root = SHARED / "data" / "hololens_000"
    if not root.is_dir():
        pytest.fail(f"{root} not found: the tests need ../shared beside the checkout")
    K = np.loadtxt(root / "K.txt")
    gt = np.loadtxt(root / "poses.txt").reshape(-1, 4, 4)
    return list(open_frames(root, intrinsics=K)), gt


@pytest.mark.slow
def test_hololens_real_sequence_loops_pass_verification():
    """hololens_000 (real, fast motion): 12 frames are lost with or without loop closure and no loop
    is accepted (ATE 9.89 cm either way, docs/rgbd_hololens.md), so this checks what loop closure
    guarantees there: every loop in the result passed verification, and the run completes
    with a finite pose for every frame."""
    frames, gt = _hololens()
    rec = RGBDBackend().run(frames, progress=False)
    cfg = rec.metadata["config"]
    meta = rec.metadata["loop_closure"]
    assert rec.c2w.shape == (200, 4, 4) and np.isfinite(rec.c2w).all()
    assert np.isfinite(ate(rec.c2w, gt)["rmse"])
    assert meta["candidates"] == meta["accepted"] + meta["rejected"]
    for loop in meta["loops"]:
        assert loop["accepted"] and loop["fitness"] >= cfg["loop_min_fitness"]
        assert loop["rmse_m"] <= cfg["loop_max_rmse"] and loop["information"] >= cfg["loop_min_information"]
