"""Image folders, videos and live streams through open_frames; layout detection; options."""

from __future__ import annotations

import logging
import socket
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mjpeg_server import MJPEGServer

from forward3d.io.sources import FrameSource, detect_layout, open_frames, write_layout
from forward3d.types import Frame, Intrinsics

W, H = 64, 48


def smooth_frames(n: int, w: int = W, h: int = H) -> list[Frame]:
    """Smooth gradients that survive video compression; frame i is identified by its mean red."""
    yy, xx = np.mgrid[0:h, 0:w]
    out = []
    for i in range(n):
        img = np.stack([np.full((h, w), 20 + 20 * i), xx * 3, yy * 4], -1).astype(np.uint8)
        depth = np.full((h, w), 1.0 + i, np.float32)
        out.append(Frame(img, depth, Intrinsics(50.0, 50.0, w / 2, h / 2, w, h).K, None, i / 30.0, i, f"{i}"))
    return out


# --------------------------------------------------------------------------------------------------
# Image folders
# --------------------------------------------------------------------------------------------------


def test_image_folder_natural_sort_and_formats(tmp_path):
    names = ["frame10.png", "frame2.jpg", "frame1.webp", "Frame3.jpeg", "notes.txt", ".hidden.png"]
    for k, name in enumerate(names):
        p = tmp_path / name
        if name.endswith(".txt"):
            p.write_text("not an image")
            continue
        img = np.full((H, W, 3), 10 * k, np.uint8)
        fmt = {"png": "PNG", "jpg": "JPEG", "jpeg": "JPEG", "webp": "WEBP"}[name.rsplit(".", 1)[1]]
        Image.fromarray(img).save(p, format=fmt, **({"lossless": True} if fmt == "WEBP" else {}))
    assert detect_layout(tmp_path) == "images"
    src = open_frames(tmp_path)
    assert isinstance(src, FrameSource)
    assert src.layout == "images" and not src.has_depth and not src.has_gt_poses and len(src) == 4
    frames = list(src)
    assert [f.name for f in frames] == ["frame1", "frame2", "Frame3", "frame10"]
    assert [f.index for f in frames] == [0, 1, 2, 3]
    assert all(f.K is None and f.c2w is None and f.depth is None for f in frames)
    assert frames[0].image.dtype == np.uint8 and frames[0].image.shape == (H, W, 3)
    assert frames[0].source.endswith("frame1.webp")


def test_image_exif_orientation_applied(tmp_path):
    img = np.zeros((20, 40, 3), np.uint8)
    img[:, :10] = 255  # white stripe on the left of the stored image
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW to display
    Image.fromarray(img).save(tmp_path / "a.jpg", exif=exif.tobytes(), quality=95)
    f = next(iter(open_frames(tmp_path / "a.jpg")))
    assert f.image.shape == (40, 20, 3)  # displayed upright: portrait
    assert f.image[:10].mean() > 200 and f.image[-10:].mean() < 50  # the stripe is now on top


def test_image_folder_stride_size_intrinsics_and_depth(tmp_path):
    ref = smooth_frames(5)
    root = write_layout(ref, tmp_path / "imgs", "images")
    assert (root / "depth" / "frame_000000.png").is_file() and (root / "camera_intrinsic.json").is_file()
    src = open_frames(root, stride=2, size=32)
    assert len(src) == 3 and src.has_depth
    frames = list(src)
    assert [f.index for f in frames] == [0, 2, 4]
    for f, a in zip(frames, ref[::2]):
        assert f.image.shape == (24, 32, 3) and f.depth.shape == (24, 32)
        np.testing.assert_allclose(f.K, [[25, 0, 16], [0, 25, 12], [0, 0, 1]])
        np.testing.assert_allclose(f.depth, a.depth[::2, ::2], atol=5e-4)
    # without the sidecar: plain images have no K; user intrinsics (native size) are scaled
    (root / "camera_intrinsic.json").unlink()
    assert next(iter(open_frames(root))).K is None
    f = next(iter(open_frames(root, size=(32, 24), intrinsics=np.array([[40.0, 0, 32], [0, 40, 24], [0, 0, 1]]))))
    np.testing.assert_allclose(f.K, [[20, 0, 16], [0, 20, 12], [0, 0, 1]])
    # a depth/ folder beside an images/ folder, float .npy in metres
    scene = tmp_path / "scene"
    (scene / "images").mkdir(parents=True)
    (scene / "depth").mkdir()
    Image.fromarray(ref[0].image).save(scene / "images" / "a.png")
    np.save(scene / "depth" / "a.npy", np.full((H, W), 2.5, np.float32))
    src = open_frames(scene)  # the images/ subfolder is used
    assert src.layout == "images" and src.has_depth
    np.testing.assert_allclose(next(iter(src)).depth, 2.5)


def test_max_frames_and_generator(tmp_path):
    write_layout(smooth_frames(6), tmp_path / "imgs", "images")
    src = open_frames(tmp_path / "imgs", max_frames=4, stride=1)
    assert len(src) == 4
    it = iter(src)
    assert next(it).index == 0  # lazy: one frame at a time
    assert [f.index for f in it] == [1, 2, 3]
    assert len(list(src)) == 4  # iterable again


def test_bad_options(tmp_path):
    write_layout(smooth_frames(1), tmp_path / "imgs", "images")
    for kwargs in ({"stride": 0}, {"max_frames": 0}, {"size": (0, 4)}, {"size": -3}, {"depth_scale": -1.0},
                   {"layout": "nerf"}, {"on_error": "ignore"}, {"intrinsics": np.eye(4)}):
        with pytest.raises(ValueError):
            list(open_frames(tmp_path / "imgs", **kwargs))


# --------------------------------------------------------------------------------------------------
# Videos
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def video_path(tmp_path_factory) -> Path:
    return write_layout(smooth_frames(10), tmp_path_factory.mktemp("video") / "clip.mp4", "video", fps=30)


def test_video_read(video_path):
    assert detect_layout(video_path) == "video"
    src = open_frames(video_path)
    assert src.layout == "video" and not src.has_depth and not src.has_gt_poses and len(src) == 10
    frames = list(src)
    assert len(frames) == 10 and not src.dropped
    ref = smooth_frames(10)
    for i, (f, a) in enumerate(zip(frames, ref)):
        assert f.index == i and f.K is None and f.depth is None
        assert f.timestamp == pytest.approx(i / 30, abs=1e-3)
        assert np.abs(f.image.astype(float) - a.image).mean() < 3.0
        assert f.source == str(video_path)


def test_video_stride_max_frames_size_intrinsics(video_path):
    K = Intrinsics(50.0, 50.0, 32.0, 24.0, W, H)
    src = open_frames(video_path, stride=3, max_frames=3, size=(32, 24), intrinsics=K)
    assert len(src) == 3
    frames = list(src)
    assert [f.index for f in frames] == [0, 3, 6]
    assert [round(f.timestamp * 30) for f in frames] == [0, 3, 6]
    assert frames[0].image.shape == (24, 32, 3)
    np.testing.assert_allclose(frames[0].K, [[25, 0, 16], [0, 25, 12], [0, 0, 1]])
    assert [int(round(f.image[..., 0].mean() / 20)) for f in frames] == [1, 4, 7]  # right frames, not neighbours
    assert len(open_frames(video_path, stride=4)) == 3


def test_video_in_folder(video_path):
    assert detect_layout(video_path.parent) == "video"
    assert len(open_frames(video_path.parent)) == 10


# --------------------------------------------------------------------------------------------------
# Live streams: MJPEG over HTTP served from 127.0.0.1
# --------------------------------------------------------------------------------------------------


def test_stream_mjpeg_http():
    with MJPEGServer([f.image for f in smooth_frames(6)]) as url:
        assert detect_layout(url) == "stream"
        src = open_frames(url, timeout=5)
        assert src.layout == "stream" and not src.has_depth
        with pytest.raises(TypeError):
            len(src)
        assert src.num_frames is None
        frames = list(src)
    assert len(frames) == 6
    assert [int(round(f.image[..., 0].mean() / 20)) - 1 for f in frames] == list(range(6))
    assert all(np.isfinite(f.timestamp) for f in frames) and frames[0].source == url


def test_stream_stride_max_frames():
    with MJPEGServer([f.image for f in smooth_frames(8)]) as url:
        frames = list(open_frames(url, stride=2, max_frames=3, size=32, timeout=5))
    assert [f.index for f in frames] == [0, 2, 4]
    assert frames[0].image.shape == (24, 32, 3)


def test_stream_dropped_midway(caplog):
    with MJPEGServer([f.image for f in smooth_frames(8)], drop_at=5) as url:
        src = open_frames(url, timeout=5)
        with caplog.at_level(logging.WARNING):
            frames = list(src)
    assert len(frames) == 5  # the frames before the drop are kept
    assert src.dropped
    assert "read error" in caplog.text and url in caplog.text


def test_stream_cannot_open():
    with socket.socket() as s:  # a free port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/stream.mjpg"
    with pytest.raises(ValueError, match=f"127.0.0.1:{port}"):
        open_frames(url, timeout=2)


def test_video_without_stored_frame_count(tmp_path):
    mkv = write_layout(smooth_frames(5), tmp_path / "clip.mkv", "video", codec="mpeg4")
    src = open_frames(mkv, stride=2)
    assert len(src) == 3  # counted by demuxing (mkv stores no frame count)
    assert [f.index for f in src] == [0, 2, 4]


def test_stream_context_manager_closes_unused_connection():
    with MJPEGServer([f.image for f in smooth_frames(3)]) as url:
        with open_frames(url, timeout=5) as src:
            assert src._container is not None  # the probe connection is kept for the first iteration
        assert src._container is None
