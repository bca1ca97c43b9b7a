"""SLAM3R pipeline end to end with the small random-weight networks (SLAM3REngine), an MJPEG stream
that drops, export and the ``--backend slam3r`` CLI options."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest

from mjpeg_server import MJPEGServer

from forward3d.data.synthetic import SyntheticConfig, SyntheticScene
from forward3d.io.export import export_reconstruction
from forward3d.pipelines.slam3r import SLAM3RBackend, SLAM3RConfig

SMALL = "fixtures/slam3r/small"
N = 10


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: see conftest.one_thread


@pytest.fixture(scope="module")
def small(shared_dir):
    d = shared_dir / SMALL
    return {k: str(d / f"{k}_weights.safetensors") for k in ("i2p", "l2w")} | \
        {f"{k}_config": str(d / f"{k}_config.json") for k in ("i2p", "l2w")}


@pytest.fixture(scope="module")
def engine(small):
    from forward3d.models.slam3r.engine import SLAM3REngine

    return SLAM3REngine.from_pretrained(small["i2p"], small["l2w"], i2p_config=small["i2p_config"],
                                        l2w_config=small["l2w_config"], device="cpu")


@pytest.fixture(scope="module")
def frames():
    scene = SyntheticScene(SyntheticConfig(seed=5, num_frames=N, width=120, height=90, trajectory="handheld"))
    return list(scene.frames())


def _check(rec, n):
    assert len(rec) == n and rec.point_maps.shape == (n, 64, 80, 3) and rec.image_size == (120, 90)
    assert np.isfinite(rec.c2w).all() and np.isfinite(rec.K).all() and np.isfinite(rec.point_maps).all()
    np.testing.assert_allclose(rec.c2w[:, 3], np.tile([0, 0, 0, 1.0], (n, 1)))
    R = rec.c2w[:, :3, :3]
    np.testing.assert_allclose(R @ R.transpose(0, 2, 1), np.broadcast_to(np.eye(3), R.shape), atol=1e-6)
    assert (rec.confidences > 1).all() and (rec.K[:, 0, 0] > 0).all()


@pytest.mark.parametrize("online", [False, True])
def test_small_models_end_to_end(engine, frames, tmp_path, online):
    cfg = SLAM3RConfig(keyframe_stride=2, online=online, conf_thres_l2w=1.5, num_points_save=5000,
                       i2p_batch_size=16)
    updates = []
    a = SLAM3RBackend(cfg, models=engine).run(frames, callback=updates.append)
    _check(a, N)
    assert a.metadata["mode"] == ("online" if online else "offline")
    assert len(updates) == (N if online else 0)
    assert a.metric_scale  # the synthetic frames carry depth
    written = export_reconstruction(a, tmp_path / "out")
    for key in ("ply", "tum", "colmap", "nerfstudio", "bundle"):
        assert written[key].exists(), key
    if not online:  # determinism: a second run gives identical results
        b = SLAM3RBackend(cfg, models=engine).run(frames)
        np.testing.assert_array_equal(a.c2w, b.c2w)
        np.testing.assert_array_equal(a.point_maps, b.point_maps)
        np.testing.assert_array_equal(a.points.points, b.points.points)


def test_online_over_dropped_mjpeg_stream_saves_partial(engine, frames, tmp_path):
    from forward3d.io.sources import open_frames

    with MJPEGServer([f.image for f in frames], drop_at=7) as url:
        src = open_frames(url, timeout=5)
        cfg = SLAM3RConfig(keyframe_stride=1, online=True, conf_thres_l2w=1.5, num_points_save=2000)
        pipe = SLAM3RBackend(cfg, models=engine)
        seen = [u.index for u in pipe.stream(src)]
        rec = pipe.result
    assert src.dropped and rec.metadata["stream_dropped"]
    n = len(rec)  # the frames before the drop (a half-sent JPEG may still decode)
    assert 7 <= n <= 8 and seen == list(range(n))
    _check(rec, n)
    assert not rec.metric_scale  # a video stream has no depth
    written = export_reconstruction(rec, tmp_path / "partial", formats=("ply", "tum", "bundle"))
    assert all(p.exists() for p in written.values())


def test_cli_options_and_run(small, engine, frames, tmp_path, capsys):
    from forward3d.api import SourceConfig
    from forward3d.cli import main
    from forward3d.cli.options import add_config_arguments, config_from_args
    from forward3d.io.sources import write_layout

    root = tmp_path / "tum_seq"
    write_layout(frames, root, "tum")
    out = tmp_path / "out"
    argv = [str(root), "--i2p", small["i2p"], "--l2w", small["l2w"], "--i2p-config", small["i2p_config"],
            "--l2w-config", small["l2w_config"], "--keyframe-stride", "2", "--buffer-strategy", "fifo",
            "--buffer-size", "20", "--win-r", "2", "--num-scene-frame", "4", "--conf-thres-l2w", "1.5",
            "--device", "cpu", "--dtype", "fp32", "--out", str(out), "--no-progress", "--num-points-save", "3000"]
    parser = argparse.ArgumentParser()  # the options generated from the configs, as forward3d recon does
    parser.add_argument("input")
    parser.add_argument("--out")
    parser.add_argument("--no-progress", action="store_true")
    src_dests = add_config_arguments(parser, SourceConfig, prefix="source_")
    dests = add_config_arguments(parser, SLAM3RConfig, prefix="backend_")
    args = parser.parse_args(argv + ["--intrinsics", "100", "100", "60", "45"])
    cfg = config_from_args(SLAM3RConfig, args, dests)
    source = config_from_args(SourceConfig, args, src_dests)
    assert (cfg.buffer_strategy, cfg.buffer_size, cfg.win_r, cfg.num_scene_frame) == ("fifo", 20, 2, 4)
    assert source.intrinsics == (100.0, 100.0, 60.0, 45.0) and not cfg.use_frame_intrinsics
    cfg = SLAM3RBackend(cfg, models=engine).configure_for_source(source, cfg)
    assert cfg.use_frame_intrinsics and not cfg.online and cfg.keyframe_stride == 2
    # through the real command: forward3d recon INPUT --backend slam3r ...
    assert main(["recon", "--backend", "slam3r", "--no-previews", *argv]) == 0
    for name in ("point_cloud.ply", "trajectory_tum.txt", "transforms.json", "reconstruction.npz", "metrics.json"):
        assert (out / name).is_file(), name
    assert (out / "colmap" / "cameras.txt").is_file()
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["backend"] == "slam3r" and "ate_se3" in metrics
    assert "frames with slam3r" in capsys.readouterr().out
    # a hub id while offline: a clear one-line error, exit code 2
    assert main(["recon", "--backend", "slam3r", str(root), "--i2p", "nobody/no_such_model", "--out", str(out)]) == 2
    assert "HF_HUB_OFFLINE" in capsys.readouterr().err
