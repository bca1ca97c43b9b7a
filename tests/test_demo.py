"""``forward3d demo`` end to end."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("open3d")

from forward3d.cli import main  # noqa: E402

OUTPUTS = ["point_cloud.ply", "mesh.ply", "mesh.glb", "trajectory_tum.txt", "colmap/cameras.txt",
           "colmap/images.txt", "colmap/points3D.txt", "transforms.json", "reconstruction.npz",
           "metrics.json", "previews/trajectory.png", "previews/view_0.png"]


def _check(out, ate_max: float, surf_max: float, frames: int) -> dict:
    for name in OUTPUTS:
        assert (out / name).is_file(), name
    assert not list(out.parent.glob(f".{out.name}.*"))  # no staging folder left behind
    m = json.loads((out / "metrics.json").read_text())
    assert m["backend"] == "rgbd" and m["num_frames"] == frames
    assert m["ate_se3"]["rmse"] < ate_max
    assert m["surface"]["accuracy"] < surf_max and m["surface"]["completion"] < surf_max
    assert m["tracking_failures"] == 0
    lines = [ln for ln in (out / "trajectory_tum.txt").read_text().splitlines() if ln and not ln.startswith("#")]
    assert len(lines) == frames
    return m


def test_demo_reduced(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--frames", "30", "--size", "160x120"]) == 0
    _check(out, 0.02, 0.03, 30)
    text = capsys.readouterr().out
    assert "ATE RMSE" in text and "accuracy" in text


def test_demo_bad_arguments(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path / "x"), "--size", "big"]) == 2
    assert "--size" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


@pytest.mark.slow
def test_demo_default(tmp_path):
    """The README command: 100 frames at 320x240 (< 3 min on 2 cores)."""
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out)]) == 0
    _check(out, 0.02, 0.02, 100)


@pytest.mark.slow
def test_demo_noisy(tmp_path):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--noise", "0.001", "--holes", "0.05"]) == 0
    _check(out, 0.03, 0.03, 100)


def test_demo_save_input_then_recon_the_tum_copy(tmp_path):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--frames", "12", "--size", "160x120", "--save-input", "--no-previews"]) == 0
    assert (out / "input" / "groundtruth.txt").is_file() and not (out / "previews").exists()
    out2 = tmp_path / "recon"
    assert main(["recon", str(out / "input"), "--out", str(out2), "--no-previews"]) == 0
    m = json.loads((out2 / "metrics.json").read_text())
    assert m["num_frames_with_gt"] == 12 and m["ate_se3"]["rmse"] < 0.02
