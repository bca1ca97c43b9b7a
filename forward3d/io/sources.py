"""Streaming frame sources: image folders, video files, live streams and RGB-D dataset layouts.

>>> src = open_frames("rgbd_dataset_freiburg1_xyz", stride=2, size=320)   # doctest: +SKIP
>>> src.layout, src.has_depth, src.has_gt_poses, len(src)                  # doctest: +SKIP
('tum', True, True, 399)
>>> for frame in src:  # forward3d.types.Frame, decoded one at a time           # doctest: +SKIP
...     ...

Supported inputs (``layout="auto"`` detects them, see :func:`detect_layout`):

========== ====================================================================================
images     a folder of jpg/jpeg/png/webp (natural sort, EXIF orientation applied), or one image;
           optional ``depth/`` folder (inside or beside it) with depth maps of the same stem
           (16-bit PNG millimetres, float TIFF/npy metres); optional ``camera_intrinsic.json``
video      mp4/mov/avi/mkv/webm/m4v/mpg/mpeg/ts decoded with PyAV; timestamps from pts
stream     ``http(s)://``, ``rtsp://``, ``rtmp://``, ``udp://``... URLs or a capture device, live
tum        TUM RGB-D: rgb.txt, depth.txt, groundtruth.txt; depth / 5000
redwood    Open3D/Redwood: color/ depth/ (mm), ``*.log`` trajectory, Open3D intrinsic json
scannet    ScanNet export (color/ depth/ pose/ intrinsic/) or flat ``frame-XXXXXX.color.jpg``
replica    NICE-SLAM Replica: results/frameXXXXXX.jpg, results/depthXXXXXX.png (/ 6553.5), traj.txt
7scenes    7-Scenes: seq-XX/frame-XXXXXX.color.png, .depth.png (mm, 65535 invalid), .pose.txt
hypersim   Hypersim scene ai_VVV_NNN: HDF5 colour (tone-mapped), ray distances (-> planar depth), keyframe
           poses; ``sequence=`` picks the camera cam_XX (pip install forward3d[data] for h5py)
========== ====================================================================================
"""

from __future__ import annotations

import logging
import stat
import time
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from forward3d.io.source_base import (
    DEPTH_EXTS,
    IMAGE_EXTS,
    VIDEO_EXTS,
    FrameRecord,
    FrameSource,
    IndexedSource,
    find_open3d_intrinsics,
    list_images,
    natural_key,
    read_open3d_intrinsics,
    skip_frames_without_depth,
)
from forward3d.types import Frame, Intrinsics

__all__ = ["open_frames", "detect_layout", "FrameSource", "LAYOUTS", "write_layout"]

log = logging.getLogger(__name__)

LAYOUTS = ("images", "video", "stream", "tum", "redwood", "scannet", "replica", "7scenes", "hypersim", "posed",
           "nrgbd")
STREAM_SCHEMES = ("http://", "https://", "rtsp://", "rtsps://", "rtmp://", "rtp://", "udp://", "tcp://", "srt://")


def _is_url(path: str | Path) -> bool:
    return isinstance(path, str) and "://" in path


# --------------------------------------------------------------------------------------------------
# Detection
# --------------------------------------------------------------------------------------------------


def detect_layout(path: str | Path) -> str:
    """Name of the layout of ``path`` (one of :data:`LAYOUTS`); ``ValueError`` when none fits.

    Folders are recognised by their index files: ``rgb.txt`` (tum); ``results/`` + ``traj.txt``
    (replica); ``seq-XX/frame-XXXXXX.color.png`` or flat ``frame-XXXXXX.color.png`` without
    ``intrinsic/`` (7scenes); flat ``frame-XXXXXX.color.jpg`` or ``color/`` + ``pose/``/``intrinsic/``
    (scannet); ``color|image|rgb/`` + ``depth/`` (redwood); ``images/scene_cam_XX_final_hdf5/`` +
    ``_detail/`` (hypersim); ``images/`` + ``poses.txt`` + ``K.txt`` (posed: a device capture, see
    :mod:`forward3d.io.posed_folders`) or + ``focal.txt`` (nrgbd); image files or an ``images/`` subfolder
    (images). Files: video extensions (video), image extensions (images). URLs and devices: stream.
    """
    from forward3d.io import layouts

    if _is_url(path):
        return "stream"
    p = Path(path)
    if not p.exists():
        raise ValueError(f"{p}: no such file or folder (expected an image folder, a video, a dataset folder or a URL)")
    if p.is_file():
        ext = p.suffix.lower()
        if ext in VIDEO_EXTS:
            return "video"
        if ext in IMAGE_EXTS:
            return "images"
        raise ValueError(f"{p}: unknown input type '{ext or p.name}': expected a video ({', '.join(VIDEO_EXTS)}), "
                         f"an image ({', '.join(IMAGE_EXTS)}) or a folder")
    if not p.is_dir():
        if stat.S_ISCHR(p.stat().st_mode):
            return "stream"  # capture device, e.g. /dev/video0
        raise ValueError(f"{p}: not a file, folder or device")
    try:
        entries = [e for e in p.iterdir() if not e.name.startswith(".")]
    except OSError as exc:
        raise ValueError(f"{p}: cannot list folder ({exc.strerror or exc})") from exc
    if not entries:
        raise ValueError(f"{p}: empty folder (expected images, a video or a dataset layout)")
    found = layouts.detect_dataset(p)
    if found is not None:
        return found
    if list_images(p) or _images_subfolder(p) is not None:
        return "images"
    videos = sorted((e for e in entries if e.is_file() and e.suffix.lower() in VIDEO_EXTS), key=lambda e: natural_key(e.name))
    if len(videos) == 1:
        return "video"
    names = ", ".join(sorted(e.name for e in entries)[:12])
    raise ValueError(f"{p}: unknown layout: expected image files ({', '.join(IMAGE_EXTS)}), a video, or one of the "
                     f"dataset layouts {', '.join(LAYOUTS[3:])}; found: {names}")


def _images_subfolder(p: Path) -> Path | None:
    for name in ("images", "image", "rgb", "color"):
        sub = p / name
        if sub.is_dir() and list_images(sub):
            return sub
    return None


# --------------------------------------------------------------------------------------------------
# Image folders
# --------------------------------------------------------------------------------------------------


class ImageFolderSource(IndexedSource):
    """A folder of images (or a single image); frames named by file stem, timestamp = index (1 fps).

    Depth (optional): a ``depth/`` folder inside the image folder or beside it, with files of the same
    stem (16-bit PNG in millimetres unless ``depth_scale``; float TIFF/``.npy`` in metres).
    Intrinsics: user ``intrinsics``, else an Open3D ``camera_intrinsic.json`` in the folder, else none.
    """

    layout = "images"
    depth_scale = 1000.0

    def __init__(self, path: str | Path, **kwargs) -> None:
        super().__init__(path, **kwargs)
        p = Path(path)
        if p.is_file():
            files, folder = [p], p.parent
        else:
            folder = p
            files = list_images(p)
            if not files:
                sub = _images_subfolder(p)
                if sub is None:
                    raise ValueError(f"{p}: no images ({', '.join(IMAGE_EXTS)}) in folder")
                folder, files = sub, list_images(sub)
        depth_dir = next((d for d in (folder / "depth", folder.parent / "depth") if d.is_dir() and d != folder), None)
        depth_by_stem: dict[str, Path] = {}
        if depth_dir is not None:
            for d in depth_dir.iterdir():
                if d.is_file() and d.suffix.lower() in DEPTH_EXTS:
                    depth_by_stem.setdefault(d.stem, d)
        records = [FrameRecord(i, f.stem, float(i), f, depth_by_stem.get(f.stem)) for i, f in enumerate(files)]
        self.records, self.has_depth = skip_frames_without_depth(records, depth_dir or p)
        sidecar = find_open3d_intrinsics(folder) if not p.is_file() else None
        if sidecar is not None:
            self.intrinsics = read_open3d_intrinsics(sidecar)


# --------------------------------------------------------------------------------------------------
# Videos and live streams
# --------------------------------------------------------------------------------------------------


def _av():
    try:
        import av
    except ImportError as exc:  # pragma: no cover - av is a required dependency
        raise ImportError("reading videos needs PyAV: pip install av") from exc
    return av


class VideoSource(FrameSource):
    """Frames of a video file decoded with PyAV, one at a time.

    ``stride``/``max_frames`` are applied while decoding: skipped frames are decoded (codecs need them)
    but never converted or kept, and decoding stops after ``max_frames``. Timestamps come from the pts
    (``index / fps`` when missing). The rotation metadata of phone videos is applied. ``K`` is ``None``
    unless ``intrinsics`` is given.
    """

    layout = "video"
    live = False

    def __init__(self, path: str | Path, *, timeout: float = 10.0, stream_format: str | None = None,
                 depth_scale: float | None = None, **kwargs) -> None:
        super().__init__(path, **kwargs)
        del depth_scale  # videos carry no depth
        self.timeout = float(timeout)
        self.stream_format = stream_format
        self._container = None
        container = self._open()
        try:
            vstream = container.streams.video[0]
            self.fps = float(vstream.average_rate or vstream.guessed_rate or 30.0)
            self.total_frames = int(vstream.frames or 0) or None
            self.native_size = (int(vstream.codec_context.width), int(vstream.codec_context.height))
        except Exception:
            container.close()
            raise
        if self.live:
            self._container = container  # reuse the connection for the first iteration
        else:
            container.close()

    def _describe(self) -> str:
        return "stream" if self.live else "video"

    def _open(self):
        av = _av()
        fmt = self.stream_format
        if fmt is None and self.live and str(self.path).startswith("/dev/video"):
            fmt = "v4l2"  # Linux capture devices need the demuxer named
        try:
            if self.live:
                container = av.open(str(self.path), format=fmt, timeout=(self.timeout, self.timeout))
            else:
                container = av.open(str(self.path), format=fmt)
        except Exception as exc:
            raise ValueError(f"{self.path}: cannot open {self._describe()} ({type(exc).__name__}: {exc})") from exc
        if not container.streams.video:
            container.close()
            raise ValueError(f"{self.path}: no video stream in this {self._describe()} "
                             f"(found {len(container.streams)} stream(s) of other kinds)")
        return container

    @property
    def num_frames(self) -> int | None:
        if self.live:
            return None
        if self.total_frames is None:
            self.total_frames = self._count_packets()
        return None if self.total_frames is None else self._select_count(self.total_frames)

    def _count_packets(self) -> int | None:
        """Frame count of containers that do not store one (mkv, webm...): demux without decoding."""
        av = _av()
        try:
            with av.open(str(self.path), format=self.stream_format) as container:
                return sum(1 for pkt in container.demux(container.streams.video[0]) if pkt.size) or None
        except (av.error.FFmpegError, OSError) as exc:
            log.warning("%s: cannot count the video frames (%s); len() unknown", self.path, exc)
            return None

    def close(self) -> None:
        """Release a stream connection opened by the constructor and not yet iterated."""
        if self._container is not None:
            self._container.close()
            self._container = None

    def __iter__(self) -> Iterator[Frame]:
        av = _av()
        container, self._container = self._container, None
        if container is None:
            container = self._open()
        self.dropped = False
        vstream = container.streams.video[0]
        vstream.thread_type = "AUTO"
        n_out, i, bad_packets = 0, -1, 0
        t0 = time.monotonic()
        what = self._describe()
        try:
            packets = container.demux(vstream)
            while self.max_frames is None or n_out < self.max_frames:
                try:
                    packet = next(packets)
                except StopIteration:
                    break
                except (av.error.FFmpegError, OSError) as exc:  # demuxer/network: the stream is gone
                    self.dropped = True
                    log.warning("%s: %s ended after %d decoded frames with a read error (%s: %s); keeping the "
                                "frames read so far", self.path, what, i + 1, type(exc).__name__, exc)
                    break
                try:
                    decoded = packet.decode()  # the final empty packet flushes the decoder
                except (av.error.FFmpegError, OSError) as exc:  # one corrupt packet: skip it
                    bad_packets += 1
                    if bad_packets <= 3:
                        log.warning("%s: skipping an undecodable packet after %d decoded frames (%s: %s)", self.path,
                                    i + 1, type(exc).__name__, exc)
                    continue
                for vframe in decoded:
                    i += 1
                    if i % self.stride or (self.max_frames is not None and n_out >= self.max_frames):
                        continue
                    image = vframe.to_ndarray(format="rgb24")
                    rot = int(getattr(vframe, "rotation", 0) or 0) % 360
                    if rot:  # display-matrix angle, counter-clockwise (phone videos)
                        image = np.ascontiguousarray(np.rot90(image, k=rot // 90))
                    if vframe.time is not None:
                        ts = float(vframe.time)
                    elif self.live:
                        ts = time.monotonic() - t0
                    else:
                        ts = i / self.fps
                    n_out += 1
                    yield self._finish(image, None, None, timestamp=ts, index=i, name=f"{i:06d}",
                                       source=str(self.path))
        finally:
            container.close()
        if bad_packets > 3:
            log.warning("%s: %d undecodable packets skipped in total", self.path, bad_packets)
        self.skipped_packets = bad_packets
        if n_out == 0:
            why = " (read error before the first frame)" if self.dropped else (
                f" ({bad_packets} undecodable packets)" if bad_packets else "")
            raise ValueError(f"{self.path}: no decodable video frame in {what}{why}")


class StreamSource(VideoSource):
    """A live stream (``http(s)://``, ``rtsp://``, ..., or a capture device) opened with PyAV.

    ``len()`` raises ``TypeError``. A stream that cannot be opened raises ``ValueError`` naming the
    URL; a stream that drops mid-way ends the iteration with a logged warning and ``dropped = True``
    (the frames read so far stay valid). ``timeout`` (seconds) bounds opening and each read.
    """

    layout = "stream"
    live = True


# --------------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------------


def open_frames(
    path_or_url: str | Path,
    *,
    stride: int = 1,
    max_frames: int | None = None,
    size: tuple[int, int] | int | None = None,
    depth_scale: float | None = None,
    intrinsics: Intrinsics | np.ndarray | Sequence | None = None,
    layout: str = "auto",
    sequence: str | None = None,
    on_error: str = "skip",
    timeout: float = 10.0,
    stream_format: str | None = None,
) -> FrameSource:
    """Open a folder, file or URL as a lazy iterable of :class:`~forward3d.types.Frame`.

    Args:
        path_or_url: image folder/file, video file, dataset folder, or stream URL/device.
        stride: keep every ``stride``-th frame (``Frame.index`` is the position before the stride).
        max_frames: stop after this many frames (after the stride).
        size: working resolution ``(W, H)``, or an int = the long side (aspect kept), or ``None``
            (native; for ScanNet the depth resolution). ``K`` is scaled with the image (``fx*sx``,
            ``cx*sx``); depth is resized with NEAREST.
        depth_scale: raw integer depth units per metre, overriding the layout's (TUM 5000,
            Replica 6553.5, others 1000). Float depth files are metres already.
        intrinsics: an :class:`Intrinsics`, or a ``[3, 3]`` K for the NATIVE frame size; overrides
            the layout's intrinsics.
        layout: ``"auto"`` (:func:`detect_layout`) or one of :data:`LAYOUTS`.
        sequence: 7-Scenes only: which ``seq-XX`` folder of a scene to read (default: the first).
        on_error: ``"skip"`` (default): a frame whose files are unreadable is skipped with a logged
            warning; ``"raise"``: raise its ``ValueError``. A source with no readable frame raises.
        timeout: streams only: seconds to wait when opening and for each read.
        stream_format: streams/videos only: force a PyAV/FFmpeg demuxer (e.g. ``"mpjpeg"``).

    Returns:
        a :class:`FrameSource` with ``layout``, ``has_depth``, ``has_gt_poses``, ``dropped`` and
        ``len()`` (``TypeError`` for live streams).
    """
    from forward3d.io import layouts

    if layout == "auto":
        layout = detect_layout(path_or_url)
    if layout not in LAYOUTS:
        raise ValueError(f"layout: expected 'auto' or one of {', '.join(LAYOUTS)}, found {layout!r}")
    if not _is_url(path_or_url) and layout != "stream" and not Path(path_or_url).exists():
        raise ValueError(f"{path_or_url}: no such file or folder")
    common = dict(stride=stride, max_frames=max_frames, size=size, intrinsics=intrinsics, on_error=on_error)
    if layout in ("video", "stream"):
        target = path_or_url
        if layout == "video" and Path(path_or_url).is_dir():
            vids = sorted((e for e in Path(path_or_url).iterdir() if e.suffix.lower() in VIDEO_EXTS),
                          key=lambda e: natural_key(e.name))
            if len(vids) != 1:
                raise ValueError(f"{path_or_url}: expected exactly one video file in the folder, found {len(vids)}")
            target = vids[0]
        cls = StreamSource if layout == "stream" else VideoSource
        return cls(target, timeout=timeout, stream_format=stream_format, **common)
    if layout == "images":
        return ImageFolderSource(path_or_url, depth_scale=depth_scale, **common)
    return layouts.open_dataset(layout, Path(path_or_url), depth_scale=depth_scale, sequence=sequence, **common)


def write_layout(frames, root, layout: str, **options):
    """Write frames in a layout's native conventions; see :func:`forward3d.io.layout_writers.write_layout`."""
    from forward3d.io.layout_writers import write_layout as _write

    return _write(frames, root, layout, **options)

