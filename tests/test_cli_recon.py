"""``forward3d recon`` on dataset layouts written from the synthetic room."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

pytest.importorskip("open3d")

from forward3d.cli import main  # noqa: E402
from forward3d.api import parse_size  # noqa: E402
from forward3d.io.atomic import OUTPUT_MARKER, staged_folder  # noqa: E402
from forward3d.data.synthetic import SyntheticScene  # noqa: E402
from forward3d.io.sources import write_layout  # noqa: E402
from forward3d.io.trajectory import read_tum  # noqa: E402

PRIMESENSE_FOV = 2 * math.degrees(math.atan(320 / 525))  # 640x480, fx = fy = 525


def _redwood(root, frames: int, width: int, height: int):
    scene = SyntheticScene(num_frames=frames, width=width, height=height, fov_x_deg=PRIMESENSE_FOV)
    write_layout(scene.frames(), root, "redwood")
    return scene


def _recon_ok(tmp_path, width, height, frames, extra=()):
    data = tmp_path / "redwood"
    scene = _redwood(data, frames, width, height)
    assert scene.K[0, 0] == pytest.approx(525 * width / 640)
    assert (data / "trajectory.log").is_file() and (data / "depth").is_dir()
    out = tmp_path / "out"
    assert main(["recon", str(data), "--out", str(out), *extra]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["num_frames_with_gt"] == frames
    assert m["ate_se3"]["rmse"] < 0.02, m["ate_se3"]
    for name in ("point_cloud.ply", "mesh.ply", "mesh.glb", "trajectory_tum.txt", "colmap/images.txt",
                 "transforms.json", "reconstruction.npz", "previews/trajectory.png"):
        assert (out / name).is_file(), name
    ts, c2w = read_tum(out / "trajectory_tum.txt")
    assert len(c2w) == frames
    return scene, out, m


def test_redwood_round_trip_small(tmp_path, capsys):
    _recon_ok(tmp_path, 320, 240, 16, ["--size", "320x240"])
    assert "ATE" in capsys.readouterr().out


@pytest.mark.slow
def test_redwood_round_trip_640x480(tmp_path):
    _recon_ok(tmp_path, 640, 480, 60)


def test_use_gt_poses_and_stride(tmp_path):
    data = tmp_path / "redwood"
    scene = _redwood(data, 12, 160, 120)
    out = tmp_path / "out"
    assert main(["recon", str(data), "--out", str(out), "--use-gt-poses", "--stride", "2", "--no-previews",
                 "--voxel-size", "0.03"]) == 0
    _, c2w = read_tum(out / "trajectory_tum.txt")
    np.testing.assert_allclose(c2w, scene.c2w[::2], atol=1e-5)
    assert json.loads((out / "metrics.json").read_text())["ate_se3"]["rmse"] < 1e-4
    assert not (out / "previews").exists()


def test_rgb_only_input_is_a_one_line_error(tmp_path, capsys):
    scene = SyntheticScene(num_frames=3, width=64, height=48)
    write_layout((f.with_(depth=None, c2w=None) for f in scene.frames()), tmp_path / "imgs", "images")
    out = tmp_path / "out"
    assert main(["recon", str(tmp_path / "imgs"), "--out", str(out), "--backend", "rgbd"]) == 2
    err = capsys.readouterr().err
    assert "slam3r" in err and "--depth-model" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_failed_run_leaves_no_partial_output(tmp_path, capsys):
    data = tmp_path / "redwood"
    _redwood(data, 3, 64, 48)
    (data / "trajectory.log").unlink()  # no poses, but --use-gt-poses
    out = tmp_path / "out"
    assert main(["recon", str(data), "--out", str(out), "--use-gt-poses"]) == 2
    assert "ground-truth" in capsys.readouterr().err
    assert not out.exists() and not list(tmp_path.glob(".out.*"))


def test_unknown_backend_and_bad_size(tmp_path, capsys):
    data = tmp_path / "redwood"
    _redwood(data, 3, 64, 48)
    assert main(["recon", str(data), "--out", str(tmp_path / "o"), "--backend", "nope"]) == 2
    assert "nope" in capsys.readouterr().err
    with pytest.raises(ValueError, match="WxH"):
        parse_size("12xy")
    assert parse_size("640x480") == (640, 480) and parse_size("512") == 512 and parse_size(None) is None


def test_staged_folder_replaces_the_whole_set_only_on_success(tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    (out / "keep.txt").write_text("old")
    (out / "a.txt").write_text("old")
    with pytest.raises(ValueError, match="--overwrite"):  # a folder forward3d did not write
        with staged_folder(out):
            pass
    with pytest.raises(RuntimeError):
        with staged_folder(out, overwrite=True) as stage:
            (stage / "a.txt").write_text("new")
            raise RuntimeError("boom")
    assert (out / "a.txt").read_text() == "old" and (out / "keep.txt").is_file()
    with staged_folder(out, overwrite=True) as stage:
        (stage / "a.txt").write_text("new")
        (stage / "sub").mkdir()
    # replaced as a whole: no stale file of the previous run is left beside the new results
    assert (out / "a.txt").read_text() == "new" and not (out / "keep.txt").exists()
    assert (out / "sub").is_dir() and (out / OUTPUT_MARKER).is_file() and len(list(tmp_path.iterdir())) == 1
    with staged_folder(out) as stage:  # a forward3d output folder: replaced without --overwrite
        (stage / "b.txt").write_text("newer")
    assert sorted(p.name for p in out.iterdir()) == sorted([OUTPUT_MARKER, "b.txt"])


def test_missing_intrinsics_error_names_the_option(tmp_path):
    scene = SyntheticScene(num_frames=2, width=64, height=48)
    frames = [f.with_(K=None) for f in scene.frames()]
    from forward3d.pipelines import get_backend

    with pytest.raises(ValueError, match="--intrinsics"):
        get_backend("rgbd").run(frames)


def test_backend_help_lists_its_options(capsys):
    with pytest.raises(SystemExit):
        main(["recon", "--backend", "slam3r", "--help"])
    out = capsys.readouterr().out
    for flag in ("--i2p", "--l2w", "--online", "--keyframe-stride", "--dtype", "--stride", "--intrinsics"):
        assert flag in out, flag
    assert "--voxel-size" not in out  # rgbd's options only with --backend rgbd
    with pytest.raises(SystemExit):
        main(["recon", "--help"])
    out = capsys.readouterr().out
    assert "--voxel-size" in out and "--bilateral" in out and "slam3r:" in out
