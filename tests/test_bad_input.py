"""Bad-input corpus, built in tmp_path: every case raises ONE ValueError naming the file and the problem
(wrapping the PIL/PyAV error), except a single corrupt frame in a sequence, which is skipped."""

from __future__ import annotations

import io
import logging
import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from forward3d.io.sources import detect_layout, open_frames, write_layout
from forward3d.types import Frame, Intrinsics

W, H = 32, 24


def _png_bytes(value: int = 128) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((H, W, 3), value, np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def _jpg_bytes(value: int = 128) -> bytes:
    buf = io.BytesIO()
    rng = np.random.default_rng(value)
    Image.fromarray(rng.integers(0, 255, (H, W, 3), dtype=np.uint8)).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def _frames(n: int) -> list[Frame]:
    K = Intrinsics(30.0, 30.0, W / 2, H / 2, W, H).K
    return [Frame(np.full((H, W, 3), 10 * i, np.uint8), np.full((H, W), 1.0 + i, np.float32), K, np.eye(4),
                  1.0 + i / 30, i, f"{i}") for i in range(n)]


def _read_all(path, **kwargs) -> list[Frame]:
    return list(open_frames(path, **kwargs))


def _expect_error(path, match: str, **kwargs) -> ValueError:
    with pytest.raises(ValueError) as info:
        _read_all(path, **kwargs)
    msg = str(info.value)
    assert str(path) in msg, msg
    assert match in msg, msg
    return info.value


@pytest.mark.parametrize("case,match", [
    ("zero_byte", "empty file (0 bytes)"),
    ("truncated_png", "not a readable colour image"),
    ("truncated_jpg", "not a readable colour image"),
    ("text_as_png", "not a readable colour image"),
])
def test_unreadable_image(tmp_path, case, match):
    name = {"zero_byte": "a.png", "truncated_png": "a.png", "truncated_jpg": "a.jpg", "text_as_png": "a.png"}[case]
    data = {"zero_byte": b"", "truncated_png": _png_bytes()[:60], "truncated_jpg": _jpg_bytes()[:300],
            "text_as_png": b"hello, I am not an image\n" * 10}[case]
    p = tmp_path / name
    p.write_bytes(data)
    err = _expect_error(p, match)  # a single image file
    if case != "zero_byte":
        assert err.__cause__ is not None  # wrapped PIL error (raise ... from exc), not a bare traceback
    _expect_error(tmp_path, match)  # the folder holding it


def test_image_depth_size_mismatch(tmp_path):
    root = write_layout(_frames(1), tmp_path / "tum", "tum")
    depth_file = next((root / "depth").iterdir())
    Image.fromarray(np.full((H // 2, W // 2), 5000, np.uint16)).save(depth_file)
    err = _expect_error(root, "does not match the colour image", on_error="raise")
    assert str(depth_file) in str(err) and f"{W // 2}x{H // 2}" in str(err) and f"{W}x{H}" in str(err)


@pytest.mark.parametrize("kind", ["zero_png", "nan_tiff", "nan_npy", "zero_npy"])
def test_depth_without_valid_pixel(tmp_path, kind):
    root = tmp_path / "imgs"
    write_layout(_frames(1), root, "images")
    (root / "depth" / "frame_000000.png").unlink()
    if kind == "zero_png":
        p = root / "depth" / "frame_000000.png"
        Image.fromarray(np.zeros((H, W), np.uint16)).save(p)
    elif kind == "nan_tiff":
        p = root / "depth" / "frame_000000.tiff"
        Image.fromarray(np.full((H, W), np.nan, np.float32)).save(p)
    else:
        p = root / "depth" / "frame_000000.npy"
        np.save(p, np.full((H, W), np.nan if kind == "nan_npy" else 0.0, np.float32))
    err = _expect_error(root, "no valid pixel")
    assert str(p) in str(err)


def test_depth_wrong_kind(tmp_path):
    root = tmp_path / "imgs"
    write_layout(_frames(1), root, "images")
    p = root / "depth" / "frame_000000.png"
    Image.fromarray(np.full((H, W, 3), 7, np.uint8)).save(p)  # an RGB picture is not a depth map
    err = _expect_error(root, "found PIL mode RGB")
    assert str(p) in str(err)


def test_video_without_decodable_frame(tmp_path):
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 8)
    _expect_error(garbage, "cannot open video")
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    _expect_error(empty, "cannot open video")
    import av

    no_frames = tmp_path / "no_frames.mp4"  # header only: FFmpeg sees no video stream
    with av.open(str(no_frames), "w") as out:
        stream = out.add_stream("mpeg4", rate=30)
        stream.width, stream.height, stream.pix_fmt = W, H, "yuv420p"
        out.start_encoding()
    _expect_error(no_frames, "no video stream")
    # a valid container whose every packet is zeroed: opens, but no frame decodes
    video = write_layout(_frames(4), tmp_path / "zeroed.mp4", "video", codec="mpeg4")
    data = bytearray(video.read_bytes())
    at = data.find(b"mdat")
    size = struct.unpack(">I", data[at - 4: at])[0]
    data[at + 4: at - 4 + size] = bytes(size - 8)
    video.write_bytes(bytes(data))
    src = open_frames(video)
    assert len(src) == 4
    with pytest.raises(ValueError, match="no decodable video frame") as info:
        list(src)
    assert str(video) in str(info.value)


def test_empty_folder_and_unknown_inputs(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    _expect_error(empty, "empty folder")
    other = tmp_path / "other"
    other.mkdir()
    (other / "readme.txt").write_text("hi")
    (other / "data.csv").write_text("1,2")
    _expect_error(other, "unknown layout")
    weird = tmp_path / "scene.xyz"
    weird.write_text("?")
    _expect_error(weird, "unknown input type")
    _expect_error(tmp_path / "does_not_exist", "no such file or folder")
    with pytest.raises(ValueError, match="layout: expected"):
        open_frames(other, layout="colmap")
    with pytest.raises(ValueError, match="rgb.txt missing"):
        open_frames(other, layout="tum")


@pytest.mark.parametrize("layout", ["images", "tum", "scannet", "7scenes"])
def test_single_corrupt_frame_is_skipped(tmp_path, caplog, layout):
    root = write_layout(_frames(8), tmp_path / layout, layout, image_format="png")
    color = sorted(p for p in root.rglob("*.png") if "depth" not in p.name and "depth" not in p.parent.name)
    bad = color[3]
    bad.write_bytes(_png_bytes()[:50])  # truncated
    with caplog.at_level(logging.WARNING):
        frames = _read_all(root)
    assert len(frames) == 7
    assert 3 not in [f.index for f in frames] and [f.index for f in frames][3] == 4
    assert "skipping frame 3" in caplog.text and str(bad) in caplog.text
    with pytest.raises(ValueError, match="not a readable colour image"):
        _read_all(root, on_error="raise")


def test_tum_missing_and_malformed_entries(tmp_path, caplog):
    root = write_layout(_frames(4), tmp_path / "tum", "tum")
    rgb_files = sorted((root / "rgb").iterdir())
    rgb_files[1].unlink()  # listed in rgb.txt, missing on disk
    with caplog.at_level(logging.WARNING):
        src = open_frames(root)
    assert len(src) == 3 and "missing files" in caplog.text and str(rgb_files[1]) in caplog.text
    for p in rgb_files:
        p.unlink(missing_ok=True)
    with pytest.raises(ValueError, match="none of the 4 listed frames exists") as info:
        open_frames(root)
    assert str(root / "rgb.txt") in str(info.value)
    (root / "rgb.txt").write_text("# only comments\n")
    with pytest.raises(ValueError, match="no frame entries"):
        open_frames(root)
    (root / "rgb.txt").write_text("# header\n1.0 rgb/1.png\nbanana\n")
    with pytest.raises(ValueError, match=r"rgb.txt:3: malformed rgb.txt line"):
        open_frames(root)


@pytest.mark.parametrize("layout,target,content,match", [
    ("tum", "groundtruth.txt", "# ts tx ty tz qx qy qz qw\n1.0 0 0 0 0 0 0\n", r"groundtruth.txt:2: expected 8 values"),
    ("tum", "groundtruth.txt", "1.0 0 0 0 0 0 0 0\n", "zero quaternion"),
    ("replica", "traj.txt", "1 0 0 0 0 1 0 0 0 0 1 0 0 0 0\n", "malformed pose line"),
    ("redwood", "trajectory.log", "0 0 1\n1 0 0 0\n0 1 0 0\n0 0 1 x\n0 0 0 1\n", r"trajectory.log:4: expected numbers"),
    ("scannet", "pose/0.txt", "1 0 0 0\n0 1 0 0\n0 0 1 0\n", "expected 16 numbers"),
    ("7scenes", "seq-01/frame-000000.pose.txt", "not a pose\n", "not a 4x4 matrix"),
])
def test_malformed_pose_file(tmp_path, layout, target, content, match):
    root = write_layout(_frames(1), tmp_path / layout, layout, image_format="png")
    p = root / target
    assert p.is_file()
    p.write_text(content)
    with pytest.raises(ValueError, match=match) as info:
        _read_all(root)
    assert str(p) in str(info.value)


def test_malformed_intrinsics_file(tmp_path):
    root = write_layout(_frames(1), tmp_path / "redwood", "redwood", image_format="png")
    p = root / "camera_intrinsic.json"
    p.write_text('{"width": 32, "height": 24, "intrinsic_matrix": [1, 2, 3]}')
    with pytest.raises(ValueError, match="9 finite intrinsic_matrix numbers") as info:
        open_frames(root)
    assert str(p) in str(info.value)
    p.write_text("{not json")
    with pytest.raises(ValueError, match="not an Open3D intrinsic json"):
        open_frames(root)


def test_detect_layout_is_cheap_and_names_path(tmp_path):
    p = tmp_path / "x"
    with pytest.raises(ValueError, match=str(p)):
        detect_layout(p)


def test_redwood_unpairable(tmp_path):
    root = write_layout(_frames(3), tmp_path / "redwood", "redwood", image_format="png")
    d = sorted((root / "depth").iterdir())
    d[0].rename(root / "depth" / "zzz.png")
    d[1].unlink()
    with pytest.raises(ValueError, match="cannot pair colour and depth"):
        open_frames(root)


def test_files_not_left_open(tmp_path):
    """Reading never keeps file handles (Windows-safe deletes; long sequences)."""
    root = write_layout(_frames(2), tmp_path / "imgs", "images")
    _read_all(root)
    for p in Path(root).rglob("*.png"):
        p.unlink()


def test_all_frames_corrupt_fails_fast(tmp_path, caplog):
    root = tmp_path / "imgs"
    root.mkdir()
    for i in range(30):
        (root / f"f{i}.png").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="the first 10 frames could not be read") as info:
        _read_all(root)
    assert str(root / "f0.png") in str(info.value)
    assert caplog.text.count("skipping frame") == 10
