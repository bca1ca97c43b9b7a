"""The ``spann3r`` back-end on the contract: registry, generated CLI options, ``forward3d recon`` end
to end with the fixture's small random network (a checkpoint the test writes) on a synthetic video,
and the oracle through :func:`forward3d.api.reconstruct` on an RGB-D layout with ground truth."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from forward3d.api import reconstruct
from forward3d.cli import main
from forward3d.data.synthetic import SyntheticConfig, SyntheticScene
from forward3d.io.bundle import load_reconstruction
from forward3d.io.sources import write_layout
from forward3d.models.spann3r import Spann3RConfig
from forward3d.pipelines import get_backend, get_backend_class
from forward3d.pipelines.oracle import OracleSpann3R
from forward3d.pipelines.spann3r import Spann3RPipeline

IMAGE_SIZE = (64, 80)  # (H, W): the small fixture model's size
N = 8

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def scene() -> SyntheticScene:
    return SyntheticScene(SyntheticConfig(seed=3, num_frames=N, width=160, height=128, trajectory="orbit"))


@pytest.fixture(scope="module")
def checkpoint(shared_dir, tmp_path_factory):
    """The fixture's small random network written as an official-style ``spann3r.pth``
    (``{'model': state_dict}``) and its config.json beside it."""
    fx = shared_dir / "fixtures" / "spann3r"
    d = tmp_path_factory.mktemp("ckpt")
    torch.save({"model": load_file(fx / "weights.safetensors")}, d / "spann3r.pth")
    cfg = Spann3RConfig.from_json(fx / "config.json", section="small")
    (d / "small.json").write_text(json.dumps(cfg.to_dict()))
    return d / "spann3r.pth", d / "small.json"


@pytest.fixture(scope="module")
def video(scene, tmp_path_factory):
    return write_layout((f.with_(depth=None, c2w=None) for f in scene.frames()),
                        tmp_path_factory.mktemp("video") / "clip.mp4", "video", codec="mpeg4")


def test_registered_and_help_lists_its_options(capsys):
    cls = get_backend_class("spann3r")
    assert cls is Spann3RPipeline and cls.capabilities.streaming and cls.capabilities.metric_scale == "with_depth"
    with pytest.raises(SystemExit):
        main(["recon", "--backend", "spann3r", "--help"])
    out = capsys.readouterr().out
    for opt in ("--weights", "--model-config", "--device", "--dtype", "--image-size", "--offline", "--long-mem-size",
                "--work-mem-size", "--sim-thresh", "--conf-thresh", "--pose-solver", "--depth-warmup"):
        assert opt in out, opt
    assert "spann3r: Spann3R-compatible" in out and "default: spann3r.pth" in out


def test_recon_cli_small_model_on_a_video(video, checkpoint, tmp_path, capsys):
    pth, cfg_json = checkpoint
    outs = []
    for k in range(2):
        out = tmp_path / f"out{k}"
        argv = ["recon", str(video), "--backend", "spann3r", "--weights", str(pth), "--model-config", str(cfg_json),
                "--image-size", *map(str, IMAGE_SIZE), "--device", "cpu", "--out", str(out), "--no-progress"]
        assert main(argv + (["--no-previews"] if k else [])) == 0
        outs.append(out)
    assert "frames with spann3r (online, relative scale)" in capsys.readouterr().out
    for name in ("point_cloud.ply", "trajectory_tum.txt", "colmap/images.txt", "transforms.json", "reconstruction.npz",
                 "previews/trajectory.png"):
        assert (outs[0] / name).is_file(), name
    a, b = (load_reconstruction(o / "reconstruction.npz") for o in outs)
    assert len(a) == N and a.backend == "spann3r" and not a.metric_scale and not a.interrupted
    assert len(a.frame_status) == N and all(s.state == "registered" for s in a.frame_status)
    assert a.frame_status[0].reason == "the world frame"
    np.testing.assert_array_equal(a.c2w, b.c2w)  # deterministic
    np.testing.assert_array_equal(np.asarray(a.point_maps), np.asarray(b.point_maps))
    assert a.point_maps.shape == (N, *IMAGE_SIZE, 3) and a.image_size == (160, 128)
    np.testing.assert_allclose(a.c2w[0], np.eye(4))
    assert np.isfinite(a.c2w).all() and a.timings["frames_per_s"] > 0
    assert len(json.loads((outs[0] / "transforms.json").read_text())["frames"]) == N


def test_oracle_through_the_backend_rgbd_metric(scene, tmp_path):
    """Ground-truth network through ``reconstruct``: RGB-D layout -> metric, ATE vs the layout's GT."""
    data = write_layout(scene.frames(), tmp_path / "redwood", "redwood")
    updates = []
    backend = Spann3RPipeline(models=OracleSpann3R(scene, image_size=IMAGE_SIZE, scale=0.37), depth_warmup=3)
    run = reconstruct(data, backend, out=tmp_path / "out", previews=False, progress=False, callback=updates.append)
    rec = run.recon
    assert rec.metric_scale and np.isfinite(rec.depth_scales).all()
    assert rec.metadata["depth_scale"] == pytest.approx(1 / 0.37, rel=0.01)
    tm = rec.trajectory_metrics
    assert tm is not None and tm.num_frames_with_gt == N
    assert tm.ate_se3.rmse < 0.005, tm.ate_se3  # metric: no scale in the alignment
    assert [u.index for u in updates] == list(range(N)) and [u.num_frames for u in updates] == list(range(1, N + 1))
    u = updates[-1]
    assert u.status.ok and u.image.shape == (*IMAGE_SIZE, 3) and u.frames_per_s > 0 and u.points.shape[-1] == 3
    np.testing.assert_allclose(u.c2w, rec.c2w[-1])
    assert (tmp_path / "out" / "metrics.json").is_file()


def test_source_checks_and_memory_options(scene):
    class Long:
        has_depth = False

        def __len__(self):
            return 500

    with pytest.raises(ValueError, match="offline-max-frames 200"):
        get_backend("spann3r", offline=True).check_source(Long(), "clip.mp4")
    get_backend("spann3r").check_source(Long(), "clip.mp4")  # streaming: any length
    cfg = get_backend("spann3r", long_mem_size=40, sim_thresh=1.0).config
    mem = cfg.memory_config()
    assert (mem.long_mem_size, mem.sim_thresh, mem.work_mem_size) == (40, 1.0, 5)
    assert get_backend("spann3r").config.memory_config() is None  # the network's own
    with pytest.raises(ValueError, match="dtype"):
        get_backend("spann3r", dtype="int8")
    with pytest.raises(TypeError, match="Spann3RModels protocol"):
        Spann3RPipeline(models=object())
