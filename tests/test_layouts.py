"""Round trips of the RGB-D dataset layouts: frames -> write_layout -> open_frames (auto-detected).

Also each layout's own conventions: TUM association and folder-name intrinsics, ScanNet colour/depth
size mismatch, flat form and invalid poses, 7-Scenes sequences and 65535 depth, Replica defaults.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy.spatial.transform import Rotation

from forward3d.data.synthetic import SyntheticScene
from forward3d.io.layouts import (
    PRIMESENSE_INTRINSICS,
    REPLICA_INTRINSICS,
    SEVEN_SCENES_INTRINSICS,
    TUM_INTRINSICS,
    associate_timestamps,
    interpolate_c2w,
)
from forward3d.io.source_base import resize_rgb
from forward3d.io.sources import detect_layout, open_frames, write_layout
from forward3d.types import Frame, Intrinsics

W, H = 64, 48
DEPTH_QUANTUM = {"tum": 1 / 5000, "redwood": 1e-3, "scannet": 1e-3, "replica": 1 / 6553.5, "7scenes": 1e-3}


def _rot_y(th: float) -> np.ndarray:
    c, s = np.cos(th), np.sin(th)
    return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])


@functools.lru_cache(maxsize=4)
def _synthetic(n: int, w: int, h: int) -> tuple[Frame, ...]:
    frames = tuple(SyntheticScene(num_frames=n, width=w, height=h).frames())
    assert len(frames) == n and all(f.depth is not None and f.K is not None and f.c2w is not None for f in frames)
    return frames


def make_frames(n: int = 6, w: int = W, h: int = H) -> list[Frame]:
    """Frames of the synthetic generator (fresh copies, a few invalid depth pixels, timestamps 1 + i/30 s).
    A broken generator fails these tests (no silent fallback to other frames)."""
    out = []
    for i, f in enumerate(_synthetic(n, w, h)):
        depth = f.depth.copy()
        depth[:2, :3] = 0.0  # invalid pixels survive the round trip as 0
        out.append(f.with_(image=f.image.copy(), depth=depth, timestamp=1.0 + i / 30.0, index=i, name=f"{i}"))
    return out


def _check_round_trip(ref: list[Frame], got: list[Frame], layout: str, exact_images: bool, tol_img: float = 6.0):
    assert len(got) == len(ref)
    for i, (a, b) in enumerate(zip(ref, got)):
        assert b.index == i
        assert b.image.shape == a.image.shape and b.image.dtype == np.uint8
        if exact_images:
            np.testing.assert_array_equal(b.image, a.image)
        else:
            assert np.abs(b.image.astype(float) - a.image).mean() < tol_img
        assert b.depth is not None and b.depth.dtype == np.float32
        valid = a.depth > 0
        np.testing.assert_array_equal(b.depth > 0, valid)
        np.testing.assert_allclose(b.depth[valid], a.depth[valid], atol=DEPTH_QUANTUM[layout] / 2 + 1e-6)
        np.testing.assert_allclose(b.K, a.K, atol=1e-9)
        np.testing.assert_allclose(b.c2w, a.c2w, atol=1e-8 if layout != "tum" else 1e-7)
        assert Path(b.source).is_file()


@pytest.mark.parametrize("layout,fmt", [(lay, "png") for lay in ("tum", "redwood", "scannet", "replica", "7scenes")]
                         + [(lay, "jpg") for lay in ("tum", "redwood", "scannet", "replica")])
def test_round_trip(tmp_path, layout, fmt):
    """Lossless png: images exact; jpg: close. Depth within quantisation, K and c2w equal."""
    ref = make_frames(5)
    root = write_layout(ref, tmp_path / layout, layout, image_format=fmt)
    assert detect_layout(root) == layout
    src = open_frames(root)
    assert src.layout == layout and src.has_depth and src.has_gt_poses and len(src) == 5
    _check_round_trip(ref, list(src), layout, exact_images=fmt == "png")


@pytest.mark.parametrize("layout", ["tum", "redwood", "scannet", "replica", "7scenes"])
def test_stride_max_frames_size(tmp_path, layout):
    ref = make_frames(7)
    root = write_layout(ref, tmp_path / layout, layout, image_format="png")
    src = open_frames(root, stride=2, max_frames=3, size=(32, 24))
    assert len(src) == 3
    got = list(src)
    full = list(open_frames(root, stride=2, max_frames=3))
    assert [f.index for f in got] == [0, 2, 4] == [f.index for f in full]
    for f, g, a in zip(got, full, ref[0::2]):
        assert f.image.shape == (24, 32, 3) and f.depth.shape == (24, 32)
        np.testing.assert_allclose(f.K, np.diag([0.5, 0.5, 1.0]) @ a.K, atol=1e-9)
        np.testing.assert_allclose(f.c2w, a.c2w, atol=1e-7)
        # NEAREST with pixel centres at +0.5: output pixel x samples input pixel 2x + 1
        np.testing.assert_array_equal(f.depth, g.depth[1::2, 1::2])
    long_side = open_frames(root, size=40, max_frames=1)
    f = next(iter(long_side))
    assert f.image.shape == (30, 40, 3)
    np.testing.assert_allclose(f.K[0, 0], ref[0].K[0, 0] * 40 / W)


def test_tum_association_and_groundtruth(tmp_path):
    ref = make_frames(4)
    root = write_layout(ref, tmp_path / "rgbd_dataset_freiburg2_desk", "tum", depth_offset=0.012)
    # extra entries: one colour frame with no depth within 0.02 s, one depth with no colour
    Image.fromarray(ref[0].image).save(root / "rgb" / "5.000000.png")
    with open(root / "rgb.txt", "a") as f:
        f.write("5.000000 rgb/5.000000.png\n")
    with open(root / "depth.txt", "a") as f:
        f.write("9.000000 depth/9.000000.png\n")
    src = open_frames(root)
    got = list(src)
    assert len(got) == 4
    for a, b in zip(ref, got):
        assert b.timestamp == pytest.approx(a.timestamp, abs=1e-6)
        assert b.name == f"{a.timestamp:.6f}"
    # ground truth quaternion xyzw on disk: first line matches frame 0's c2w
    rows = [ln.split() for ln in (root / "groundtruth.txt").read_text().splitlines() if not ln.startswith("#")]
    q_file = np.array([float(v) for v in rows[1][4:8]])
    q_ref = Rotation.from_matrix(ref[1].c2w[:3, :3]).as_quat()  # scipy: xyzw, like TUM
    assert min(np.abs(q_file - q_ref).max(), np.abs(q_file + q_ref).max()) < 1e-6
    np.testing.assert_allclose([float(v) for v in rows[1][1:4]], ref[1].c2w[:3, 3], atol=1e-8)
    # without a sidecar the folder name picks the camera (freiburg2), scaled to the image size
    (root / "camera_intrinsic.json").unlink()
    f0 = next(iter(open_frames(root)))
    np.testing.assert_allclose(f0.K, TUM_INTRINSICS["freiburg2"].scaled(W, H).K)


def test_tum_unknown_camera_warns_and_gt_nearest(tmp_path, caplog):
    ref = [f.with_(timestamp=1.0 + 0.1 * i) for i, f in enumerate(make_frames(3))]
    root = write_layout(ref, tmp_path / "my_sequence", "tum")
    (root / "camera_intrinsic.json").unlink()
    # ground truth sampled off the frame times: nearest within 0.02 s, else None
    lines = (root / "groundtruth.txt").read_text().splitlines()
    body = [ln for ln in lines if not ln.startswith("#")]
    shifted = [f"{float(b.split()[0]) + 0.015:.6f} " + " ".join(b.split()[1:]) for b in body[:2]]
    shifted.append(f"{float(body[2].split()[0]) + 0.5:.6f} " + " ".join(body[2].split()[1:]))
    (root / "groundtruth.txt").write_text("\n".join(shifted) + "\n")
    with caplog.at_level(logging.WARNING):
        src = open_frames(root)
    assert "default intrinsics" in caplog.text
    got = list(src)
    np.testing.assert_allclose(got[0].K, Intrinsics(525, 525, 319.5, 239.5, 640, 480).scaled(W, H).K)
    assert got[0].c2w is not None and got[1].c2w is not None and got[2].c2w is None


def test_associate_timestamps_greedy():
    a = np.array([0.0, 0.033, 0.066, 1.0])
    b = np.array([0.010, 0.030, 0.5])
    assert associate_timestamps(a, b) == [(0, 0), (1, 1)]


def test_tum_groundtruth_interpolation():
    a, b = np.eye(4), np.eye(4)
    b[:3, :3] = _rot_y(0.2)
    b[:3, 3] = [0.2, 0.0, -0.1]
    ts, traj = np.array([1.0, 1.02, 2.0]), np.stack([a, b, b])
    mid = interpolate_c2w(ts, traj, 1.01)
    np.testing.assert_allclose(mid[:3, 3], [0.1, 0.0, -0.05], atol=1e-12)
    np.testing.assert_allclose(mid[:3, :3], _rot_y(0.1), atol=1e-12)
    np.testing.assert_array_equal(interpolate_c2w(ts, traj, 1.02), b)  # exact sample: unchanged
    assert interpolate_c2w(ts, traj, 1.5) is None  # 0.98 s gap: no interpolation, nothing within 0.02
    np.testing.assert_array_equal(interpolate_c2w(ts, traj, 2.015), b)  # nearest after the end


def test_scannet_color_depth_size_differ(tmp_path):
    ref = make_frames(3)
    root = write_layout(ref, tmp_path / "scene0000_00", "scannet", image_format="png", color_size=(2 * W, 2 * H))
    assert Image.open(root / "color" / "0.png").size == (2 * W, 2 * H)
    color_k = np.loadtxt(root / "intrinsic" / "intrinsic_color.txt")[:3, :3]
    np.testing.assert_allclose(color_k[0, 0], 2 * ref[0].K[0, 0])
    src = open_frames(root)
    got = list(src)
    for a, b in zip(ref, got):
        assert b.image.shape == a.image.shape  # colour resized to the depth size, depth K
        np.testing.assert_allclose(b.K, a.K)
        np.testing.assert_array_equal(b.image, resize_rgb(resize_rgb(a.image, 2 * W, 2 * H), W, H))
    # no depth: colour resolution, colour K
    for p in (root / "depth").iterdir():
        p.unlink()
    (root / "depth").rmdir()
    f0 = next(iter(open_frames(root, layout="scannet")))
    assert f0.depth is None and f0.image.shape == (2 * H, 2 * W, 3)
    np.testing.assert_allclose(f0.K, color_k)


def test_scannet_flat_form_and_invalid_pose(tmp_path, caplog):
    ref = make_frames(3)
    ref[1] = ref[1].with_(c2w=None)  # written as -inf like ScanNet's lost-tracking frames
    root = write_layout(ref, tmp_path / "flat", "scannet", form="flat", image_format="png")
    assert (root / "frame-000001.pose.txt").read_text().startswith("-inf")
    assert detect_layout(root) == "scannet"
    with caplog.at_level(logging.WARNING):
        got = list(open_frames(root))
    assert "invalid (non-finite) pose" in caplog.text and "frame-000001.pose.txt" in caplog.text
    assert got[1].c2w is None and got[0].c2w is not None
    assert got[2].name == "frame-000002"
    np.testing.assert_array_equal(got[2].image, ref[2].image)


def test_scannet_info_txt_intrinsics(tmp_path):
    ref = make_frames(2)
    root = write_layout(ref, tmp_path / "flat", "scannet", form="flat", image_format="png", depth_scale=2000)
    k = ref[0].K
    kk = " ".join(f"{v:g}" for v in np.block([[k, np.zeros((3, 1))], [np.zeros((1, 3)), np.ones((1, 1))]]).ravel())
    for p in (root / "intrinsic").iterdir():
        p.unlink()
    (root / "intrinsic").rmdir()
    (root / "_info.txt").write_text(f"m_versionNumber = 4\nm_depthShift = 2000\nm_calibrationColorIntrinsic = {kk}\n"
                                    f"m_calibrationDepthIntrinsic = {kk}\n")
    got = list(open_frames(root))
    np.testing.assert_allclose(got[0].K, k, atol=1e-4)
    valid = ref[0].depth > 0
    np.testing.assert_allclose(got[0].depth[valid], ref[0].depth[valid], atol=3e-4)


def test_seven_scenes_sequences_and_invalid_depth(tmp_path, caplog):
    ref = make_frames(3)
    scene = tmp_path / "chess"
    write_layout(ref, scene, "7scenes", sequence="seq-01")
    write_layout(ref[:2], scene, "7scenes", sequence="seq-02")
    raw = np.asarray(Image.open(scene / "seq-01" / "frame-000000.depth.png"))
    assert raw[0, 0] == 65535  # 7-Scenes marks invalid depth with 65535
    with caplog.at_level(logging.INFO):
        src = open_frames(scene)
    assert len(src) == 3 and "seq-01" in caplog.text
    assert len(open_frames(scene, sequence="seq-02")) == 2
    assert len(open_frames(scene, sequence=2)) == 2
    assert len(open_frames(scene / "seq-02")) == 2
    with pytest.raises(ValueError, match="seq-07"):
        open_frames(scene, sequence="seq-07")
    (scene / "camera_intrinsic.json").unlink()
    f0 = next(iter(open_frames(scene)))
    np.testing.assert_allclose(f0.K, SEVEN_SCENES_INTRINSICS.scaled(W, H).K)
    assert f0.depth[0, 0] == 0.0


def test_replica_defaults_and_results_folder(tmp_path):
    ref = make_frames(2)
    root = write_layout(ref, tmp_path / "room0", "replica", image_format="png")
    (root / "cam_params.json").unlink()
    src = open_frames(root / "results")  # the results folder itself is accepted
    f0 = next(iter(src))
    np.testing.assert_allclose(f0.K, REPLICA_INTRINSICS.scaled(W, H).K)
    # NICE-SLAM yaml cam block
    (root / "replica.yaml").write_text("cam:\n  H: 48\n  W: 64\n  fx: 30.0\n  fy: 31.0\n  cx: 32.0\n  cy: 24.0\n"
                                       "  png_depth_scale: 6553.5\n")
    f0 = next(iter(open_frames(root)))
    np.testing.assert_allclose(f0.K, [[30, 0, 32], [0, 31, 24], [0, 0, 1]])


def test_redwood_default_intrinsics_and_log(tmp_path):
    ref = make_frames(3)
    root = write_layout(ref, tmp_path / "livingroom", "redwood", image_format="png")
    first = (root / "trajectory.log").read_text().splitlines()[0]
    assert first.split() == ["0", "0", "1"]
    (root / "camera_intrinsic.json").unlink()
    f0 = next(iter(open_frames(root)))
    np.testing.assert_allclose(f0.K, PRIMESENSE_INTRINSICS.scaled(W, H).K)
    # Open3D json in the camera_primesense.json name, column-major matrix
    (root / "camera_primesense.json").write_text(
        '{"width": 64, "height": 48, "intrinsic_matrix": [50, 0, 0, 0, 51, 0, 31.5, 23.5, 1]}')
    f0 = next(iter(open_frames(root)))
    np.testing.assert_allclose(f0.K, [[50, 0, 31.5], [0, 51, 23.5], [0, 0, 1]])


def test_depth_scale_and_intrinsics_override(tmp_path):
    ref = make_frames(2)
    root = write_layout(ref, tmp_path / "tum", "tum")
    K = np.array([[100.0, 0, 30], [0, 100, 20], [0, 0, 1]])
    f0 = next(iter(open_frames(root, depth_scale=10000)))
    valid = ref[0].depth > 0
    np.testing.assert_allclose(f0.depth[valid], ref[0].depth[valid] / 2, atol=1e-4)
    f0 = next(iter(open_frames(root, intrinsics=K, size=(32, 24))))
    np.testing.assert_allclose(f0.K, [[50, 0, 15], [0, 50, 10], [0, 0, 1]])
    intr = Intrinsics(200.0, 200.0, 64.0, 48.0, 128, 96)  # its own size: scaled to the frames
    f0 = next(iter(open_frames(root, intrinsics=intr)))
    np.testing.assert_allclose(f0.K, [[100, 0, 32], [0, 100, 24], [0, 0, 1]])
