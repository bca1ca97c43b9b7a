"""ScanNet ``.sens`` files (the raw RGB-D stream of the ScanNet download), read by our own parser.

Format (little-endian; as written by ScanNet's C++ ``SensorData`` v4 and read by its ``SensorData.py``)::

    uint32   version                         (4)
    uint64   n; char[n] sensor_name
    float32  intrinsic_color[16]             4x4, row-major
    float32  extrinsic_color[16]
    float32  intrinsic_depth[16]
    float32  extrinsic_depth[16]
    int32    color_compression               -1 unknown, 0 raw RGB8, 1 png, 2 jpeg
    int32    depth_compression               -1 unknown, 0 raw uint16, 1 zlib uint16, 2 occi (unsupported)
    uint32   color_width, color_height, depth_width, depth_height
    float32  depth_shift                     depth units per metre (1000)
    uint64   num_frames
    num_frames x {
        float32 camera_to_world[16]          4x4 c2w (OpenCV axes); -inf where tracking was lost
        uint64  timestamp_color, timestamp_depth
        uint64  color_size_bytes, depth_size_bytes
        byte    color_data[color_size_bytes]
        byte    depth_data[depth_size_bytes] uint16 [depth_height, depth_width] after decompression
    }
    (IMU frames may follow; they are ignored)

:class:`SensFile` indexes the frames once (seeking over the payloads) and reads any frame at random.
A truncated file (an interrupted download) raises ``ValueError`` naming the first incomplete frame,
or keeps the complete frames with ``allow_truncated=True``. :func:`export_sens` writes the layout of
ScanNet's python exporter (``color/N.jpg``, ``depth/N.png``, ``pose/N.txt``, ``intrinsic/*.txt``),
which :class:`forward3d.io.layouts.ScanNetSource` reads.
"""

from __future__ import annotations

import io
import logging
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal

import numpy as np
from PIL import Image

from forward3d.io.source_base import format_matrix, resize_depth, resize_rgb
from forward3d.types import Frame, Intrinsics

__all__ = ["SensFile", "SensHeader", "export_sens", "COLOR_COMPRESSION", "DEPTH_COMPRESSION"]

log = logging.getLogger(__name__)

COLOR_COMPRESSION = {-1: "unknown", 0: "raw", 1: "png", 2: "jpeg"}
DEPTH_COMPRESSION = {-1: "unknown", 0: "raw_ushort", 1: "zlib_ushort", 2: "occi_ushort"}
SENS_VERSION = 4
_MAX_NAME = 1 << 16  # a sensor name longer than this is a corrupt header, not a name
_FRAME_HEAD = struct.Struct("<16f4Q")  # c2w, timestamp_color, timestamp_depth, color_size, depth_size
RGBD_FPS = 30.0


@dataclass(frozen=True)
class SensHeader:
    """The header of a ``.sens`` file. Matrices are ``[4, 4]`` float64; sizes ``(width, height)``."""

    version: int
    sensor_name: str
    intrinsic_color: np.ndarray
    extrinsic_color: np.ndarray
    intrinsic_depth: np.ndarray
    extrinsic_depth: np.ndarray
    color_compression: str
    depth_compression: str
    color_size: tuple[int, int]
    depth_size: tuple[int, int]
    depth_shift: float
    num_frames: int

    @property
    def color_intrinsics(self) -> Intrinsics:
        return Intrinsics.from_K(self.intrinsic_color[:3, :3], *self.color_size)

    @property
    def depth_intrinsics(self) -> Intrinsics:
        return Intrinsics.from_K(self.intrinsic_depth[:3, :3], *self.depth_size)


@dataclass(frozen=True)
class _FrameEntry:
    c2w: np.ndarray  # [4, 4] float64, may be non-finite
    timestamp_color: int
    timestamp_depth: int
    color_offset: int
    color_bytes: int
    depth_bytes: int


class SensFile:
    """Random access to the frames of a ScanNet ``.sens`` file.

    Attributes:
        path: the file. ``header``: its :class:`SensHeader`. ``truncated``: True when the file ended
            inside a frame and ``allow_truncated`` kept the complete ones.

    ``len(sens)`` is the number of complete frames. ``frame(i)`` returns a :class:`Frame` with
    metric depth, the depth camera's ``K`` (colour resized to the depth size, as ScanNet users and
    :class:`forward3d.io.layouts.ScanNetSource` do) and ``c2w`` (``None`` where the pose is invalid).
    """

    def __init__(self, path: str | os.PathLike, *, allow_truncated: bool = False) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise ValueError(f"{self.path}: no such .sens file")
        size = self.path.stat().st_size
        with open(self.path, "rb") as f:
            self.header, pos = self._read_header(f, size)
            self._frames, self.truncated = self._index_frames(f, pos, size, allow_truncated)

    @classmethod
    def read_header(cls, path: str | os.PathLike) -> SensHeader:
        """Only the header of a ``.sens`` file (fast: no frame is indexed)."""
        self = cls.__new__(cls)
        self.path = Path(path)
        if not self.path.is_file():
            raise ValueError(f"{self.path}: no such .sens file")
        with open(self.path, "rb") as f:
            return self._read_header(f, self.path.stat().st_size)[0]

    # -------------------------------------------------------------------------------- parsing
    def _fail(self, what: str) -> ValueError:
        return ValueError(f"{self.path}: not a valid ScanNet .sens file: {what}")

    def _read_header(self, f, size: int) -> tuple[SensHeader, int]:
        def take(n: int, what: str) -> bytes:
            b = f.read(n)
            if len(b) != n:
                raise self._fail(f"file ends inside the header ({what}; {size} bytes)")
            return b

        (version,) = struct.unpack("<I", take(4, "version"))
        if version != SENS_VERSION:
            raise self._fail(f"expected version {SENS_VERSION}, found {version}")
        (n,) = struct.unpack("<Q", take(8, "sensor name length"))
        if n > _MAX_NAME:
            raise self._fail(f"sensor name length {n} is implausible")
        name = take(n, "sensor name").decode("utf-8", errors="replace")
        mats = np.frombuffer(take(4 * 64, "calibration matrices"), dtype="<f4").astype(np.float64).reshape(4, 4, 4)
        cc, dc = struct.unpack("<ii", take(8, "compression types"))
        cw, ch, dw, dh = struct.unpack("<4I", take(16, "image sizes"))
        (shift,) = struct.unpack("<f", take(4, "depth shift"))
        (num,) = struct.unpack("<Q", take(8, "frame count"))
        if cc not in COLOR_COMPRESSION or dc not in DEPTH_COMPRESSION:
            raise self._fail(f"unknown compression types colour={cc}, depth={dc}")
        if min(cw, ch, dw, dh) <= 0 or not np.isfinite(shift) or shift <= 0:
            raise self._fail(f"bad sizes colour {cw}x{ch}, depth {dw}x{dh} or depth shift {shift}")
        header = SensHeader(version, name, mats[0], mats[1], mats[2], mats[3], COLOR_COMPRESSION[cc],
                            DEPTH_COMPRESSION[dc], (cw, ch), (dw, dh), float(shift), int(num))
        return header, f.tell()

    def _index_frames(self, f, pos: int, size: int, allow_truncated: bool) -> tuple[list[_FrameEntry], bool]:
        frames: list[_FrameEntry] = []
        for i in range(self.header.num_frames):
            head = f.read(_FRAME_HEAD.size)
            problem = None
            if len(head) == _FRAME_HEAD.size:
                vals = _FRAME_HEAD.unpack(head)
                c2w = np.asarray(vals[:16], dtype=np.float64).reshape(4, 4)
                tsc, tsd, nc, nd = vals[16:]
                start = pos + _FRAME_HEAD.size
                if start + nc + nd <= size:
                    frames.append(_FrameEntry(c2w, tsc, tsd, start, nc, nd))
                    pos = start + nc + nd
                    f.seek(pos)
                    continue
                problem = f"needs {nc + nd} payload bytes at offset {start}, the file has {size - start}"
            else:
                problem = f"its header is cut at offset {pos}"
            msg = (f"{self.path}: truncated .sens file: frame {i} of {self.header.num_frames} is incomplete "
                   f"({problem}); the download was probably interrupted")
            if not allow_truncated:
                raise ValueError(msg)
            log.warning("%s; keeping the %d complete frames", msg, len(frames))
            return frames, True
        return frames, False

    # -------------------------------------------------------------------------------- access
    def __len__(self) -> int:
        return len(self._frames)

    def _entry(self, i: int) -> _FrameEntry:
        if not -len(self) <= int(i) < len(self):
            raise IndexError(f"{self.path}: frame {i} outside [0, {len(self)})")
        return self._frames[int(i)]

    def c2w(self, i: int) -> np.ndarray | None:
        """``[4, 4]`` camera-to-world of frame ``i``, or ``None`` where ScanNet marks it invalid."""
        m = self._entry(i).c2w
        return m.copy() if np.isfinite(m).all() else None

    def raw_c2w(self, i: int) -> np.ndarray:
        """The stored ``[4, 4]`` matrix of frame ``i`` (``-inf`` entries kept)."""
        return self._entry(i).c2w.copy()

    def all_c2w(self) -> np.ndarray:
        """``[N, 4, 4]`` stored matrices (no image data is read)."""
        return np.stack([e.c2w for e in self._frames]) if self._frames else np.zeros((0, 4, 4))

    def timestamp(self, i: int) -> float:
        """Seconds: ``timestamp_color`` (microseconds in the file) relative to frame 0, or
        ``i / 30`` when the file carries no timestamps (zeros)."""
        e0, e = self._frames[0], self._entry(i)
        if e0.timestamp_color == 0 and e.timestamp_color == 0:
            return int(i) / RGBD_FPS
        return (e.timestamp_color - e0.timestamp_color) / 1e6

    def _read(self, offset: int, n: int) -> bytes:
        with open(self.path, "rb") as f:
            f.seek(offset)
            b = f.read(n)
        if len(b) != n:
            raise ValueError(f"{self.path}: cannot read {n} bytes at offset {offset} (file changed?)")
        return b

    def color_bytes(self, i: int) -> bytes:
        """The stored (compressed) colour payload of frame ``i``."""
        e = self._entry(i)
        return self._read(e.color_offset, e.color_bytes)

    def depth_bytes(self, i: int) -> bytes:
        """The stored (compressed) depth payload of frame ``i``."""
        e = self._entry(i)
        return self._read(e.color_offset + e.color_bytes, e.depth_bytes)

    def read_color(self, i: int, size: tuple[int, int] | None = None) -> np.ndarray:
        """``[color_height, color_width, 3]`` uint8 RGB of frame ``i``, or resized to ``size = (W, H)``
        (a JPEG is then decoded at the smallest DCT scale that still covers ``size``: 2-4x faster)."""
        data = self.color_bytes(i)
        w, h = self.header.color_size
        kind = self.header.color_compression
        if kind == "raw":
            if len(data) != w * h * 3:
                raise ValueError(f"{self.path}: frame {i}: raw colour has {len(data)} bytes, expected {w * h * 3}")
            arr = np.frombuffer(data, dtype=np.uint8).reshape(h, w, 3).copy()
            return arr if size is None else resize_rgb(arr, int(size[0]), int(size[1]))
        if kind not in ("jpeg", "png"):
            raise ValueError(f"{self.path}: frame {i}: colour compression {kind!r} is not supported")
        try:
            with Image.open(io.BytesIO(data)) as im:
                if im.size != (w, h):
                    raise ValueError(f"colour is {im.size[0]}x{im.size[1]}, header says {w}x{h}")
                if size is not None and kind == "jpeg":
                    im.draft("RGB", tuple(size))
                arr = np.asarray(im.convert("RGB"))
        except Exception as exc:  # PIL raises many types on corrupt data
            raise ValueError(f"{self.path}: frame {i}: corrupt {kind} colour ({type(exc).__name__}: {exc})") from exc
        return arr if size is None else resize_rgb(arr, int(size[0]), int(size[1]))

    def read_depth_raw(self, i: int) -> np.ndarray:
        """``[depth_height, depth_width]`` uint16 depth of frame ``i`` in file units (0 = invalid)."""
        data = self.depth_bytes(i)
        w, h = self.header.depth_size
        kind = self.header.depth_compression
        if kind == "zlib_ushort":
            try:
                data = zlib.decompress(data)
            except zlib.error as exc:
                raise ValueError(f"{self.path}: frame {i}: corrupt zlib depth ({exc})") from exc
        elif kind != "raw_ushort":
            raise ValueError(f"{self.path}: frame {i}: depth compression {kind!r} is not supported")
        if len(data) != w * h * 2:
            raise ValueError(f"{self.path}: frame {i}: depth has {len(data)} bytes, expected {w * h * 2} ({w}x{h} uint16)")
        return np.frombuffer(data, dtype="<u2").reshape(h, w).copy()

    def read_depth(self, i: int) -> np.ndarray:
        """``[depth_height, depth_width]`` float32 metres of frame ``i`` (0 = invalid)."""
        return self.read_depth_raw(i).astype(np.float32) / np.float32(self.header.depth_shift)

    def frame(self, i: int, color_to_depth: bool = True) -> Frame:
        """Frame ``i``: colour at the depth size with the depth ``K`` (``color_to_depth``), or the
        colour size with the colour ``K`` and the depth resized to it (nearest)."""
        self._entry(i)
        i = int(i) % len(self)
        depth = self.read_depth(i)
        if color_to_depth:
            w, h = self.header.depth_size
            image = self.read_color(i, (w, h))
            K = self.header.depth_intrinsics.K
        else:
            w, h = self.header.color_size
            image = self.read_color(i)
            depth = resize_depth(depth, w, h)
            K = self.header.color_intrinsics.K
        return Frame(image=image, depth=depth, K=K, c2w=self.c2w(i), timestamp=self.timestamp(i), index=i,
                     name=str(i), source=f"{self.path}#{i}")


def _png_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array)).save(buf, format="PNG")
    return buf.getvalue()


def _jpeg_bytes(image: np.ndarray, quality: int = 95) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image)).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def export_sens(sens: SensFile | str | os.PathLike, out_dir: str | os.PathLike, *, frame_skip: int = 1,
                resize: Literal["none", "color_to_depth", "depth_to_color"] = "none",
                write: Callable[[Path, bytes], None] | None = None,
                progress: Callable[[int], None] | None = None) -> dict[str, int]:
    """Export a ``.sens`` file in the layout of ScanNet's python ``SensReader``.

    Writes ``color/{i}.jpg`` (the stored JPEG bytes unchanged unless resized), ``depth/{i}.png``
    (uint16 in the file's depth units), ``pose/{i}.txt`` (4x4 c2w as stored, ``-inf`` kept) for
    ``i = 0, frame_skip, ...``, and ``intrinsic/{intrinsic,extrinsic}_{color,depth}.txt`` (4x4).

    Args:
        resize: ``"color_to_depth"`` writes colour at the depth size (intrinsic_color scaled);
            ``"depth_to_color"`` writes depth at the colour size (nearest; intrinsic_depth scaled).
        write: ``write(path, data)`` for each file (default: an atomic write); the prepare step passes
            one that also checksums.
        progress: called with the number of frames done after each frame.

    Returns ``{"frames": n, "files": m}``.
    """
    from forward3d.io.atomic import atomic_write

    if not isinstance(sens, SensFile):
        sens = SensFile(sens)
    if int(frame_skip) < 1:
        raise ValueError(f"export_sens: frame_skip must be >= 1, found {frame_skip}")
    if resize not in ("none", "color_to_depth", "depth_to_color"):
        raise ValueError(f"export_sens: resize must be none, color_to_depth or depth_to_color, found {resize!r}")

    def default_write(path: Path, data: bytes) -> None:
        with atomic_write(path, "wb") as f:
            f.write(data)

    write = write or default_write
    out = Path(out_dir)
    hd = sens.header
    cw, ch = hd.color_size
    dw, dh = hd.depth_size
    n_files = n_frames = 0
    for i in range(0, len(sens), int(frame_skip)):
        if resize == "none" and hd.color_compression == "jpeg":
            color = sens.color_bytes(i)
        else:
            img = sens.read_color(i)
            if resize == "color_to_depth":
                img = resize_rgb(img, dw, dh)
            color = _jpeg_bytes(img)
        depth = sens.read_depth_raw(i)
        if resize == "depth_to_color":
            depth = resize_depth(depth.astype(np.float32), cw, ch).astype(np.uint16)
        write(out / "color" / f"{i}.jpg", color)
        write(out / "depth" / f"{i}.png", _png_bytes(depth))
        write(out / "pose" / f"{i}.txt", format_matrix(sens.raw_c2w(i)).encode())
        n_files += 3
        n_frames += 1
        if progress is not None:
            progress(n_frames)
    k_color, k_depth = hd.intrinsic_color.copy(), hd.intrinsic_depth.copy()
    if resize == "color_to_depth":
        k_color[0, :3] *= dw / cw
        k_color[1, :3] *= dh / ch
    elif resize == "depth_to_color":
        k_depth[0, :3] *= cw / dw
        k_depth[1, :3] *= ch / dh
    for name, m in (("intrinsic_color", k_color), ("extrinsic_color", hd.extrinsic_color),
                    ("intrinsic_depth", k_depth), ("extrinsic_depth", hd.extrinsic_depth)):
        write(out / "intrinsic" / f"{name}.txt", format_matrix(m).encode())
        n_files += 1
    return {"frames": n_frames, "files": n_files}
