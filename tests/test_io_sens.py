"""Our ScanNet .sens reader against byte-exact files written by an independent test writer."""

from __future__ import annotations

import functools
import logging
import struct

import numpy as np
import pytest

from fake_layouts import mm, write_sens
from forward3d.io.layouts import ScanNetSource
from forward3d.io.sens import SensFile, export_sens


@functools.lru_cache(maxsize=1)
def _frames():
    from forward3d.data.synthetic import SyntheticScene

    return tuple(SyntheticScene(num_frames=5, width=64, height=48, seed=2, trajectory="handheld").frames())


def test_header_and_frames(tmp_path):
    frames = _frames()
    path = tmp_path / "scene0000_00.sens"
    write_sens(path, frames, color_size=(96, 72), invalid_pose={3})
    sens = SensFile(path)
    hd = sens.header
    assert (hd.version, hd.sensor_name, hd.color_compression, hd.depth_compression) == (4, "StructureSensor", "jpeg",
                                                                                     "zlib_ushort")
    assert hd.color_size == (96, 72) and hd.depth_size == (64, 48) and hd.depth_shift == 1000.0
    assert len(sens) == 5 and not sens.truncated
    np.testing.assert_allclose(hd.intrinsic_depth[:3, :3], frames[0].K, rtol=1e-6)
    np.testing.assert_allclose(hd.intrinsic_color[0, 0], frames[0].K[0, 0] * 1.5, rtol=1e-6)
    for i, f in enumerate(frames):
        np.testing.assert_array_equal(sens.read_depth_raw(i), mm(f.depth))  # zlib uint16 is lossless
        fr = sens.frame(i)
        assert fr.image.shape == (48, 64, 3) and fr.depth.shape == (48, 64)  # colour resized to the depth size
        np.testing.assert_allclose(fr.K, frames[0].K, rtol=1e-6)
        assert np.abs(fr.depth - f.depth).max() <= 0.0005 + 1e-6
        if i == 3:
            assert fr.c2w is None and not np.isfinite(sens.raw_c2w(3)).all()  # ScanNet's -inf = lost tracking
        else:
            np.testing.assert_allclose(fr.c2w, f.c2w, atol=1e-6)
        assert fr.timestamp == pytest.approx(i * 0.033333)
    assert np.abs(sens.read_color(1).astype(float).mean() - 0) > 1  # a real picture, not zeros
    full = sens.frame(0, color_to_depth=False)
    assert full.image.shape == (72, 96, 3) and full.depth.shape == (72, 96)
    np.testing.assert_allclose(full.K[0, 0], frames[0].K[0, 0] * 1.5, rtol=1e-6)


def test_truncated_download(tmp_path, caplog):
    path = tmp_path / "cut.sens"
    write_sens(path, _frames(), truncate=500 + 8)  # the IMU tail and part of the last frame
    with pytest.raises(ValueError, match=r"truncated .sens file: frame 4 of 5"):
        SensFile(path)
    with caplog.at_level(logging.WARNING):
        sens = SensFile(path, allow_truncated=True)
    assert len(sens) == 4 and sens.truncated and "keeping the 4 complete frames" in caplog.text
    assert SensFile.read_header(path).num_frames == 5


@pytest.mark.parametrize("patch, match", [
    (lambda b: struct.pack("<I", 3) + b[4:], "expected version 4, found 3"),
    (lambda b: b[:40], "file ends inside the header"),
    (lambda b: b[:4] + struct.pack("<Q", 10**9) + b[12:], "sensor name length"),
])
def test_bad_header(tmp_path, patch, match):
    good = write_sens(tmp_path / "a.sens", _frames()[:2])
    bad = tmp_path / "b.sens"
    bad.write_bytes(patch(good))
    with pytest.raises(ValueError, match=match):
        SensFile(bad)
    with pytest.raises(ValueError, match="no such .sens file"):
        SensFile(tmp_path / "missing.sens")


def test_corrupt_payload(tmp_path):
    data = bytearray(write_sens(tmp_path / "a.sens", _frames()[:2]))
    sens = SensFile(tmp_path / "a.sens")
    e = sens._frames[1]
    start = e.color_offset + e.color_bytes  # the zlib depth payload of frame 1
    data[start: start + 8] = b"\x00" * 8
    (tmp_path / "a.sens").write_bytes(bytes(data))
    sens = SensFile(tmp_path / "a.sens")
    sens.read_depth(0)
    with pytest.raises(ValueError, match="frame 1: corrupt zlib depth"):
        sens.read_depth(1)
    with pytest.raises(IndexError):
        sens.frame(7)


def test_export_is_read_by_the_scannet_source(tmp_path):
    frames = _frames()
    write_sens(tmp_path / "s.sens", frames, color_size=(96, 72), invalid_pose={2})
    stats = export_sens(tmp_path / "s.sens", tmp_path / "out", frame_skip=2)
    assert stats == {"frames": 3, "files": 3 * 3 + 4}
    assert sorted(p.name for p in (tmp_path / "out" / "color").iterdir()) == ["0.jpg", "2.jpg", "4.jpg"]
    # colour JPEGs are the stored bytes, unchanged
    assert (tmp_path / "out" / "color" / "4.jpg").read_bytes() == SensFile(tmp_path / "s.sens").color_bytes(4)
    src = ScanNetSource(tmp_path / "out")
    got = list(src)
    assert [f.name for f in got] == ["0", "2", "4"]
    assert got[1].c2w is None  # -inf pose kept in pose/2.txt and read as invalid
    np.testing.assert_allclose(got[2].c2w, frames[4].c2w, atol=1e-6)
    np.testing.assert_allclose(got[0].K, frames[0].K, rtol=1e-6)
    assert np.abs(got[2].depth - frames[4].depth).max() <= 0.0005 + 1e-6
    # colour brought to the depth size at export: intrinsic_color scaled to it
    export_sens(tmp_path / "s.sens", tmp_path / "small", resize="color_to_depth")
    from PIL import Image

    with Image.open(tmp_path / "small" / "color" / "0.jpg") as im:
        assert im.size == (64, 48)
    kc = np.loadtxt(tmp_path / "small" / "intrinsic" / "intrinsic_color.txt")
    np.testing.assert_allclose(kc[:3, :3], frames[0].K, rtol=1e-5)
    with pytest.raises(ValueError, match="frame_skip"):
        export_sens(tmp_path / "s.sens", tmp_path / "x", frame_skip=0)
