"""ScanNet++ files: DSLR nerfstudio transforms (fisheye), iPhone ``depth.bin`` and ``pose_intrinsic_imu.json``.

Layout of one scene (``<root>/data/<scene_id>/``, as downloaded; see the scannetpp toolbox)::

    dslr/resized_images/DSC*.JPG         fisheye photos (OPENCV_FISHEYE)
    dslr/resized_anon_masks/DSC*.png     255 = valid, 0 = anonymised/invalid
    dslr/nerfstudio/transforms.json      nerfstudio cameras: fl_x fl_y cx cy w h k1..k4, "frames" and
                                         "test_frames" with file_path, transform_matrix (OpenGL c2w)
    dslr/train_test_lists.json           {"train": [...], "test": [...]} image names
    dslr/render_depth/DSC*.png           depth rendered from the mesh (toolbox render.py, uint16 mm,
                                         fisheye geometry), optional
    dslr/undistorted_images/, undistorted_anon_masks/, nerfstudio/transforms_undistorted.json
                                         the toolbox's undistortion output (PINHOLE), or ours
    iphone/rgb.mkv (v1) | rgb.mp4 (v2)   1920x1440 video, 60 fps
    iphone/depth.bin                     LiDAR depth 256x192 per video frame (below)
    iphone/pose_intrinsic_imu.json       {"frame_000000": {"timestamp", "intrinsic" 3x3 (for 1920x1440),
                                          "pose", "aligned_pose" 4x4 c2w (OpenCV axes, mesh frame), ...}}
    iphone/colmap/{cameras,images,points3D}.txt  every 10th frame, named frame_XXXXXX.jpg
    iphone/rgb/frame_XXXXXX.jpg, iphone/depth/frame_XXXXXX.png (uint16 mm)  extracted frames

``depth.bin`` comes in two encodings (the toolbox's ``extract_depth`` tries them in this order): the
whole stream raw-DEFLATE compressed (zlib ``wbits=-15``) as float32 metres ``[N, 192, 256]``; or one
record per frame, a little-endian uint32 byte count then either an LZ4 block of uint16 millimetres
or a raw-DEFLATE block of float32 metres.
"""

from __future__ import annotations

import logging
import os
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from forward3d.io.jsonio import read_json
from forward3d.io.nerfstudio import opengl_to_opencv_c2w

__all__ = ["FisheyeCamera", "DslrTransforms", "read_dslr_transforms", "read_train_test_lists",
           "read_pose_intrinsic_imu", "iter_iphone_depth", "IPHONE_DEPTH_SIZE", "IPHONE_RGB_SIZE"]

log = logging.getLogger(__name__)

IPHONE_DEPTH_SIZE = (256, 192)  # (W, H)
IPHONE_RGB_SIZE = (1920, 1440)
_CHUNK = 1 << 20


@dataclass(frozen=True)
class FisheyeCamera:
    """Camera of a transforms.json: pinhole ``K`` ``[3, 3]``, ``dist`` ``[4]`` (k1..k4), size, model."""

    K: np.ndarray
    dist: np.ndarray
    width: int
    height: int
    model: str


@dataclass
class DslrTransforms:
    """A ScanNet++ DSLR transforms file: the camera and ``(name, c2w [4, 4] OpenCV, mask name, is_bad)``
    per frame, for ``frames`` and ``test_frames``; ``raw`` is the parsed JSON (for rewriting)."""

    camera: FisheyeCamera
    frames: list[tuple[str, np.ndarray, str | None, bool]]
    test_frames: list[tuple[str, np.ndarray, str | None, bool]]
    raw: dict = field(repr=False, default_factory=dict)


def _num(path: Path, d: dict, key: str, default: float | None = None) -> float:
    if key not in d:
        if default is not None:
            return default
        raise ValueError(f"{path}: expected key {key!r} in the transforms file")
    try:
        v = float(d[key])
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{path}: {key} must be a number, found {d[key]!r}") from exc
    if not np.isfinite(v):
        raise ValueError(f"{path}: {key} must be finite, found {v}")
    return v


def read_dslr_transforms(path: str | os.PathLike) -> DslrTransforms:
    """``dslr/nerfstudio/transforms*.json`` -> :class:`DslrTransforms` (poses converted to OpenCV)."""
    path = Path(path)
    data = read_json(path, "transforms JSON")
    if not isinstance(data.get("frames"), list):
        raise ValueError(f"{path}: expected an object with a 'frames' list")
    fx, fy, cx, cy = (_num(path, data, k) for k in ("fl_x", "fl_y", "cx", "cy"))
    w, h = int(_num(path, data, "w")), int(_num(path, data, "h"))
    dist = np.array([_num(path, data, k, 0.0) for k in ("k1", "k2", "k3", "k4")])
    cam = FisheyeCamera(np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]]), dist, w, h,
                        str(data.get("camera_model", "OPENCV_FISHEYE")))

    def frames(key: str) -> list:
        out = []
        for k, fr in enumerate(data.get(key) or []):
            try:
                T = np.asarray(fr["transform_matrix"], dtype=np.float64)
                name = str(fr["file_path"])
            except (KeyError, TypeError, ValueError) as exc:
                raise ValueError(f"{path}: {key}[{k}]: expected file_path and a 4x4 transform_matrix ({exc})") from exc
            if T.shape == (3, 4):
                T = np.vstack([T, [0.0, 0.0, 0.0, 1.0]])
            if T.shape != (4, 4) or not np.isfinite(T).all():
                raise ValueError(f"{path}: {key}[{k}]: expected a finite 4x4 transform_matrix, found shape {list(T.shape)}")
            out.append((name, opengl_to_opencv_c2w(T), fr.get("mask_path"), bool(fr.get("is_bad", False))))
        return out

    return DslrTransforms(cam, frames("frames"), frames("test_frames"), data)


def read_train_test_lists(path: str | os.PathLike) -> dict[str, list[str]]:
    """``dslr/train_test_lists.json`` -> ``{"train": [...], "test": [...]}`` (missing keys: empty)."""
    path = Path(path)
    data = read_json(path, "train_test_lists.json")
    try:
        return {k: [str(n) for n in data.get(k, [])] for k in ("train", "test")}
    except TypeError as exc:
        raise ValueError(f"{path}: expected {{'train': [...], 'test': [...]}} ({exc})") from exc


def read_pose_intrinsic_imu(path: str | os.PathLike, key: str = "aligned_pose") -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``iphone/pose_intrinsic_imu.json`` -> ``{frame_id: (c2w [4, 4], K [3, 3] at 1920x1440)}``, sorted.

    ``key``: ``"aligned_pose"`` (registered to the laser scan; default) or ``"pose"`` (raw ARKit).
    """
    path = Path(path)
    data = read_json(path, "pose_intrinsic_imu.json (an object keyed by frame id)")
    out = {}
    for fid in sorted(data):
        rec = data[fid]
        try:
            c2w = np.asarray(rec[key], dtype=np.float64).reshape(4, 4)
            K = np.asarray(rec["intrinsic"], dtype=np.float64).reshape(3, 3)
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{path}: frame {fid!r}: expected {key!r} (4x4) and 'intrinsic' (3x3) ({exc})") from exc
        if not (np.isfinite(c2w).all() and np.isfinite(K).all()):
            log.warning("%s: frame %s has a non-finite pose or intrinsics; skipped", path, fid)
            continue
        out[str(fid)] = (c2w, K)
    return out


def _iter_global(path: Path, width: int, height: int) -> Iterator[np.ndarray]:
    """Frames of a whole-stream raw-DEFLATE float32 depth.bin, decompressed incrementally."""
    frame_bytes = width * height * 4
    dec = zlib.decompressobj(-zlib.MAX_WBITS)
    buf = bytearray()
    with open(path, "rb") as f:
        while True:
            chunk = f.read(_CHUNK)
            if not chunk:
                break
            buf += dec.decompress(chunk)
            while len(buf) >= frame_bytes:
                yield np.frombuffer(bytes(buf[:frame_bytes]), dtype="<f4").reshape(height, width).copy()
                del buf[:frame_bytes]
        buf += dec.flush()
    if not dec.eof:
        raise ValueError(f"{path}: depth.bin ends inside the compressed stream (truncated download?)")
    while len(buf) >= frame_bytes:
        yield np.frombuffer(bytes(buf[:frame_bytes]), dtype="<f4").reshape(height, width).copy()
        del buf[:frame_bytes]
    if buf:
        raise ValueError(f"{path}: depth.bin has {len(buf)} trailing bytes (not a whole {width}x{height} frame)")


def _decode_record(path: Path, k: int, data: bytes, width: int, height: int) -> np.ndarray:
    n = width * height
    try:
        import lz4.block

        raw = lz4.block.decompress(data, uncompressed_size=n * 2)
        if len(raw) == n * 2:
            return np.frombuffer(raw, dtype="<u2").reshape(height, width).astype(np.float32) / np.float32(1000.0)
    except ImportError:
        pass
    except Exception:  # noqa: BLE001 - not an LZ4 block: try the DEFLATE form below
        pass
    try:
        raw = zlib.decompress(data, wbits=-zlib.MAX_WBITS)
    except zlib.error as exc:
        raise ValueError(f"{path}: depth record {k} is neither LZ4 uint16 nor DEFLATE float32 (LZ4 needs "
                         f"pip install lz4) ({exc})") from exc
    if len(raw) != n * 4:
        raise ValueError(f"{path}: depth record {k} decompresses to {len(raw)} bytes, expected {n * 4}")
    return np.frombuffer(raw, dtype="<f4").reshape(height, width).copy()


def _is_per_frame(path: Path, width: int, height: int) -> bool:
    """True when the file starts with a complete, decodable size-prefixed record (the per-frame form)."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(4)
        if len(head) != 4:
            return False
        (n,) = struct.unpack("<I", head)
        if not 0 < n <= size - 4:
            return False
        data = f.read(n)
    try:
        _decode_record(path, 0, data, width, height)
    except ValueError:
        return False
    return True


def iter_iphone_depth(path: str | os.PathLike, width: int = IPHONE_DEPTH_SIZE[0], height: int = IPHONE_DEPTH_SIZE[1],
                      every: int = 1) -> Iterator[tuple[int, np.ndarray]]:
    """Decode ``iphone/depth.bin``: yields ``(frame_index, [height, width] float32 metres)`` for
    ``frame_index % every == 0`` (0 = invalid). Both encodings (see the module docstring)."""
    path = Path(path)
    if not path.is_file() or path.stat().st_size == 0:
        raise ValueError(f"{path}: no iPhone depth.bin (missing or empty file)")
    every = max(1, int(every))
    if not _is_per_frame(path, width, height):
        for k, d in enumerate(_iter_global(path, width, height)):
            if k % every == 0:
                yield k, np.where(np.isfinite(d) & (d > 0), d, 0.0).astype(np.float32)
        return
    size = path.stat().st_size
    with open(path, "rb") as f:
        k = 0
        while True:
            head = f.read(4)
            if not head:
                return
            if len(head) != 4:
                raise ValueError(f"{path}: depth.bin ends inside the size of record {k} (truncated download?)")
            (n,) = struct.unpack("<I", head)
            if n > size:
                raise ValueError(f"{path}: depth record {k} claims {n} bytes, more than the file has")
            if k % every:
                f.seek(n, 1)
            else:
                data = f.read(n)
                if len(data) != n:
                    raise ValueError(f"{path}: depth.bin ends inside record {k} (truncated download?)")
                d = _decode_record(path, k, data, width, height)
                yield k, np.where(np.isfinite(d) & (d > 0), d, 0.0).astype(np.float32)
            k += 1
