"""The Python API of a whole run (forward3d.api.reconstruct) and the typed Reconstruction fields."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("open3d")

from forward3d.api import SourceConfig, parse_size, reconstruct  # noqa: E402
from forward3d.data.synthetic import SyntheticScene  # noqa: E402
from forward3d.io.bundle import load_reconstruction, save_reconstruction  # noqa: E402
from forward3d.io.sources import write_layout  # noqa: E402
from forward3d.pipelines import get_backend  # noqa: E402
from forward3d.types import FrameStatus, Reconstruction  # noqa: E402


@pytest.fixture(scope="module")
def tum(tmp_path_factory):
    root = tmp_path_factory.mktemp("api") / "rgbd_dataset_freiburg1_synth"
    write_layout(SyntheticScene(num_frames=12, width=160, height=120).frames(), root, "tum")
    return root


def test_reconstruct_writes_a_scored_output_folder(tum, tmp_path):
    updates = []
    run = reconstruct(tum, "rgbd", {"voxel_size": 0.03, "mesh": False}, source=SourceConfig(stride=2),
                      out=tmp_path / "out", previews=False, progress=False, callback=updates.append)
    rec = run.recon
    assert len(rec) == 6 and [u.index for u in updates] == list(range(6)) and run.source_layout == "tum"
    tm = rec.trajectory_metrics
    assert tm is not None and tm.primary == "se3" and tm.ate.rmse < 0.02 and tm.num_frames_with_gt == 6
    assert set(run.files) >= {"ply", "tum", "colmap", "nerfstudio", "bundle", "metrics"}
    assert all(p.exists() for p in run.files.values())
    m = json.loads(run.files["metrics"].read_text())
    assert m["primary_alignment"] == "se3" and m["ate_se3"]["rmse"] == pytest.approx(tm.ate_se3.rmse)
    again = load_reconstruction(run.out)
    assert again.backend == "rgbd" and again.metric_scale and again.frame_status == rec.frame_status
    assert again.trajectory_metrics.ate_se3 == tm.ate_se3
    np.testing.assert_allclose(again.trajectory_metrics.aligned_c2w, tm.aligned_c2w)


def test_backend_instance_and_source_checks(tum, tmp_path):
    rgb = tmp_path / "rgb"
    write_layout((f.with_(depth=None) for f in SyntheticScene(num_frames=3, width=64, height=48).frames()),
                 rgb, "images")
    with pytest.raises(ValueError, match=r"needs depth.*--backend sfm \(or slam3r, spann3r\)"):
        reconstruct(rgb, get_backend("rgbd"), progress=False)
    with pytest.raises(ValueError, match="--stride"):
        SourceConfig(stride=0)
    with pytest.raises(ValueError, match="WxH"):
        parse_size("12xy")


def test_output_folder_is_checked_before_any_work(tum, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    for bad, msg in ((blocker, "found a file"), (blocker / "sub", "is a file, not a folder")):
        with pytest.raises(ValueError, match=msg):
            reconstruct(tum, "rgbd", out=bad, progress=False)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "mine.txt").write_text("keep")
    with pytest.raises(ValueError, match="--overwrite"):
        reconstruct(tum, "rgbd", out=foreign, progress=False)
    assert (foreign / "mine.txt").read_text() == "keep"


def test_bundle_round_trips_typed_fields(tmp_path):
    n = 3
    rec = Reconstruction(np.tile(np.eye(4), (n, 1, 1)), np.tile(np.eye(3), (n, 1, 1)), (8, 6), backend="x",
                         metric_scale=True, depth_scales=np.array([1.0, np.nan, 2.0]),
                         frame_status=[FrameStatus("tracked", keyframe=True), FrameStatus("failed", "low overlap"),
                                       FrameStatus("interpolated")],
                         timings={"total_s": 1.5, "frames_per_s": 2.0}, interrupted=True)
    save_reconstruction(tmp_path / "b", rec)
    back = load_reconstruction(tmp_path / "b")
    assert back.frame_status == rec.frame_status and back.failures == [(1, FrameStatus("failed", "low overlap"))]
    assert back.keyframes == [0] and back.interrupted and back.timings == rec.timings and back.backend == "x"
    np.testing.assert_array_equal(back.depth_scales, rec.depth_scales)
    with pytest.raises(ValueError, match="frame statuses"):
        Reconstruction(np.tile(np.eye(4), (2, 1, 1)), np.tile(np.eye(3), (2, 1, 1)), (8, 6),
                       frame_status=[FrameStatus()])
    with pytest.raises(ValueError, match="state"):
        FrameStatus("vanished")  # type: ignore[arg-type]
