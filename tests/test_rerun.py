"""``forward3d recon --rerun out.rrd``: the run as a rerun recording, read back chunk by chunk."""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import pytest

rr = pytest.importorskip("rerun", reason="pip install 'forward3d[rerun]'")

from forward3d.types import Intrinsics, Reconstruction, Update  # noqa: E402
from forward3d.viz.rerun_log import RerunRecorder  # noqa: E402


def _read(path) -> dict[str, list]:
    """entity path -> record batches of its chunks (``rerun.chunk.RrdReader``)."""
    from rerun.chunk import RrdReader

    out = defaultdict(list)
    for chunk in RrdReader(str(path)).stream():
        out[str(chunk.entity_path)].append(chunk.to_record_batch())
    return out


def _by_frame(batches: list, name: str) -> dict[int | None, object]:
    """frame index -> the value of component column ``name`` (rows that logged it; None = static)."""
    rows = {}
    for b in batches:
        if name not in b.schema.names:
            continue
        frames = b.column("frame").to_pylist() if "frame" in b.schema.names else [None] * b.num_rows
        for f, v in zip(frames, b.column(name).to_pylist()):
            if v is not None:
                rows[f] = v
    return dict(sorted(rows.items(), key=lambda kv: -1 if kv[0] is None else kv[0]))


def test_recorder_logs_every_frame_with_depth_from_point_maps(tmp_path):
    W, H = 20, 16
    K = Intrinsics.from_fov(W, H, 60.0).K
    rng = np.random.default_rng(0)
    path = tmp_path / "run.rrd"
    rec = RerunRecorder(path, max_points_per_frame=100)
    c2ws, depths = [], []
    for i in range(5):
        c2w = np.eye(4)
        c2w[:3, 3] = [0.1 * i, 0.0, 0.0]
        depth = 1.0 + rng.random((H, W))
        u, v = np.meshgrid(np.arange(W) + 0.5, np.arange(H) + 0.5)
        cam = np.stack([(u - K[0, 2]) / K[0, 0] * depth, (v - K[1, 2]) / K[1, 1] * depth, depth], -1)
        world = (cam + c2w[:3, 3]).astype(np.float32)
        ok = i != 3
        from forward3d.types import FrameStatus

        rec.push(Update(index=i, name=f"f{i}", c2w=c2w, K=K, image_size=(W, H), points=world,
                        colors=np.full((H, W, 3), 200, np.uint8), image=np.zeros((H // 2, W // 2, 3), np.uint8),
                        status=FrameStatus("tracked" if ok else "failed", reason="low overlap"), num_frames=i + 1))
        c2ws.append(c2w)
        depths.append(depth)
    assert not path.exists()  # nothing under the final name before the recording is complete
    recon = Reconstruction(c2w=np.stack(c2ws), K=np.repeat(K[None], 5, 0), image_size=(W, H))
    assert rec.finish(recon) == path and path.is_file()
    assert not list(tmp_path.glob(".*.tmp"))

    ents = _read(path)
    cam = ents["/world/camera"]
    t = _by_frame(cam, "Transform3D:translation")
    assert list(t) == list(range(5))
    np.testing.assert_allclose(np.array(list(t.values())).reshape(5, 3), np.stack(c2ws)[:, :3, 3], atol=1e-6)
    kk = np.array(_by_frame(cam, "Pinhole:image_from_camera")[0]).reshape(3, 3).T  # stored column major
    np.testing.assert_allclose(kk[:2], K[:2] / 2, rtol=1e-6)  # K of the half-size thumbnail
    raw = _by_frame(ents["/world/camera/depth"], "DepthImage:buffer")[2]
    buf = np.frombuffer(np.asarray(raw, np.uint8).reshape(-1).tobytes(), np.float32)
    np.testing.assert_allclose(buf.reshape(H, W), depths[2], rtol=1e-5)  # metres along the optical axis
    pts = _by_frame(ents["/world/points"], "Points3D:positions")
    assert list(pts) == list(range(5)) and all(len(p) == 100 for p in pts.values())  # capped per frame
    ok = [v[0] for v in _by_frame(ents["/status/tracking_ok"], "Scalars:scalars").values()]
    assert ok == [1.0, 1.0, 1.0, 0.0, 1.0]
    assert "/status/log" in ents and "/world/reconstruction/trajectory" in ents


def test_abort_and_bad_paths(tmp_path):
    rec = RerunRecorder(tmp_path / "x.rrd")
    rec.abort()
    assert not list(tmp_path.iterdir())
    with pytest.raises(ValueError, match=r"\.rrd"):
        RerunRecorder(tmp_path / "x.txt")
    with pytest.raises(ValueError, match="does not exist"):
        RerunRecorder(tmp_path / "missing" / "x.rrd")


def test_cli_recon_rerun(tmp_path):
    """``recon --rerun``: a streaming back-end (rgbd) logs each frame live, then the fused result."""
    pytest.importorskip("open3d")
    from forward3d.cli import main
    from forward3d.data.synthetic import SyntheticConfig, SyntheticScene
    from forward3d.io.sources import write_layout

    n = 6
    scene = SyntheticScene(SyntheticConfig(seed=1, num_frames=n, width=96, height=72))
    data = write_layout(scene.frames(), tmp_path / "redwood", "redwood")
    out = tmp_path / "out"
    assert main(["recon", str(data), "--out", str(out), "--rerun", str(tmp_path / "run.rrd"), "--no-previews",
                 "--no-progress"]) == 0
    ents = _read(tmp_path / "run.rrd")
    assert list(_by_frame(ents["/world/camera"], "Transform3D:translation")) == list(range(n))
    assert _by_frame(ents["/world/points"], "Points3D:positions")
    from forward3d.io.bundle import load_reconstruction

    recon = load_reconstruction(out / "reconstruction.npz")
    cloud = _by_frame(ents["/world/reconstruction/points"], "Points3D:positions")[None]
    assert len(cloud) == len(recon.points)
    strip = _by_frame(ents["/world/reconstruction/trajectory"], "LineStrips3D:strips")[None]
    np.testing.assert_allclose(np.array(strip).reshape(-1, 3), recon.c2w[:, :3, 3], atol=1e-5)
