"""Writers of the frame-source layouts, in each dataset's native conventions.

``write_layout(frames, root, layout)`` is the inverse of :func:`forward3d.io.sources.open_frames`: it
writes colour images, depth as uint16 PNG with the layout's scale (0, or 65535 for 7-Scenes, where the
depth is invalid), ground-truth poses in the layout's format and an intrinsics file. Used to test the
readers on synthetic data and to export sequences for other tools. Every file is written atomically.

Layouts without a native intrinsics file (``images``, ``tum``, ``7scenes``) get an Open3D
``camera_intrinsic.json`` sidecar, which the readers honour (a forward3d extension; the real datasets
fall back to their documented defaults).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Iterable

import numpy as np
from PIL import Image

from forward3d.io.atomic import atomic_path, atomic_write
from forward3d.io.source_base import (
    INTRINSICS_SIDECAR,
    VIDEO_EXTS,
    format_matrix,
    resize_rgb,
    rotmat_to_quat_xyzw,
    write_open3d_intrinsics,
)
from forward3d.types import Frame, Intrinsics

__all__ = ["write_layout", "WRITABLE_LAYOUTS", "DEPTH_SCALES"]

log = logging.getLogger(__name__)

WRITABLE_LAYOUTS = ("images", "video", "tum", "redwood", "scannet", "replica", "7scenes")
DEPTH_SCALES = {"images": 1000.0, "tum": 5000.0, "redwood": 1000.0, "scannet": 1000.0, "replica": 6553.5,
                "7scenes": 1000.0}
DEFAULT_IMAGE_FORMAT = {"images": "png", "tum": "png", "redwood": "jpg", "scannet": "jpg", "replica": "jpg",
                        "7scenes": "png"}


def _save_image(path: Path, image: np.ndarray, quality: int = 95) -> None:
    fmt = {"jpg": "JPEG", "jpeg": "JPEG", "png": "PNG", "webp": "WEBP"}[path.suffix.lower().lstrip(".")]
    with atomic_path(path) as tmp:
        kwargs: dict = {}
        if fmt == "JPEG":
            kwargs = {"quality": quality, "subsampling": 0}  # 4:4:4 keeps small test images close
        elif fmt == "WEBP":
            kwargs = {"lossless": True}
        Image.fromarray(np.ascontiguousarray(image)).save(tmp, format=fmt, **kwargs)


def _save_depth_png(path: Path, depth: np.ndarray, scale: float, invalid_value: int = 0) -> None:
    """``[H, W]`` metres -> uint16 PNG of ``round(depth * scale)`` (clipped to 65534; invalid -> value)."""
    d = np.asarray(depth, dtype=np.float64)
    valid = np.isfinite(d) & (d > 0)
    raw = np.clip(np.round(np.where(valid, d, 0.0) * scale), 0, 65534).astype(np.uint16)
    raw[~valid] = invalid_value
    with atomic_path(path) as tmp:
        Image.fromarray(raw).save(tmp, format="PNG")  # uint16 -> PIL mode I;16


def _write_text(path: Path, text: str) -> None:
    with atomic_write(path, "w") as f:
        f.write(text)


def _intrinsics_of(frame: Frame) -> Intrinsics | None:
    return frame.intrinsics


def _c2w_or_inf(frame: Frame) -> np.ndarray:
    return frame.c2w if frame.c2w is not None else np.full((4, 4), -np.inf)


class _Sink:
    """Writes one layout frame by frame; ``close()`` writes the index/trajectory/intrinsics files."""

    def __init__(self, root: Path, layout: str, image_format: str | None, depth_scale: float | None,
                 **options) -> None:
        self.root, self.layout = root, layout
        self.ext = "." + (image_format or DEFAULT_IMAGE_FORMAT[layout]).lower().lstrip(".")
        if self.ext not in (".png", ".jpg", ".jpeg", ".webp"):
            raise ValueError(f"image_format: expected png, jpg or webp, found {image_format!r}")
        self.scale = float(depth_scale or DEPTH_SCALES[layout])
        self.options = options
        self.intrinsics: Intrinsics | None = None
        self.rows: list[str] = []
        self.depth_rows: list[str] = []
        self.gt_rows: list[str] = []
        self.n = 0

    def _check_intrinsics(self, frame: Frame) -> None:
        intr = _intrinsics_of(frame)
        if intr is None:
            return
        if self.intrinsics is None:
            self.intrinsics = intr
        elif not np.allclose(intr.K, self.intrinsics.K) or (intr.width, intr.height) != (
                self.intrinsics.width, self.intrinsics.height):
            log.warning("%s: frame %d has different intrinsics from frame 0; the layout stores one camera (frame 0's)",
                        self.root, self.n)

    def add(self, frame: Frame) -> None:
        self._check_intrinsics(frame)
        getattr(self, f"_add_{self.layout.replace('7', 'seven')}")(frame, self.n)
        self.n += 1

    def close(self) -> Path:
        if self.n == 0:
            raise ValueError(f"write_layout({self.layout}): no frames to write to {self.root}")
        getattr(self, f"_close_{self.layout.replace('7', 'seven')}")()
        return self.root

    # images ------------------------------------------------------------------------------------
    def _add_images(self, f: Frame, i: int) -> None:
        name = f"frame_{i:06d}"
        _save_image(self.root / f"{name}{self.ext}", f.image)
        if f.depth is not None:
            _save_depth_png(self.root / "depth" / f"{name}.png", f.depth, self.scale)

    def _close_images(self) -> None:
        if self.intrinsics is not None:
            write_open3d_intrinsics(self.root / INTRINSICS_SIDECAR, self.intrinsics)

    # TUM RGB-D ---------------------------------------------------------------------------------
    def _add_tum(self, f: Frame, i: int) -> None:
        ts = float(f.timestamp)
        rgb = f"rgb/{ts:.6f}{self.ext}"
        _save_image(self.root / rgb, f.image)
        self.rows.append(f"{ts:.6f} {rgb}\n")
        if f.depth is not None:
            tsd = ts + float(self.options.get("depth_offset", 0.0))
            dep = f"depth/{tsd:.6f}.png"
            _save_depth_png(self.root / dep, f.depth, self.scale)
            self.depth_rows.append(f"{tsd:.6f} {dep}\n")
        if f.c2w is not None:
            q = rotmat_to_quat_xyzw(f.c2w[:3, :3])
            t = f.c2w[:3, 3]
            self.gt_rows.append(f"{ts:.6f} " + " ".join(f"{v:.9f}" for v in (*t, *q)) + "\n")

    def _close_tum(self) -> None:
        head = "# {} images\n# file: 'forward3d write_layout'\n# timestamp filename\n"
        _write_text(self.root / "rgb.txt", head.format("color") + "".join(self.rows))
        if self.depth_rows:
            _write_text(self.root / "depth.txt", head.format("depth") + "".join(self.depth_rows))
        if self.gt_rows:
            _write_text(self.root / "groundtruth.txt", "# ground truth trajectory\n# file: 'forward3d write_layout'\n"
                        "# timestamp tx ty tz qx qy qz qw\n" + "".join(self.gt_rows))
        if self.intrinsics is not None:
            write_open3d_intrinsics(self.root / INTRINSICS_SIDECAR, self.intrinsics)

    # Open3D / Redwood ----------------------------------------------------------------------------
    def _add_redwood(self, f: Frame, i: int) -> None:
        _save_image(self.root / "color" / f"{i:06d}{self.ext}", f.image)
        if f.depth is not None:
            _save_depth_png(self.root / "depth" / f"{i:06d}.png", f.depth, self.scale)
        if f.c2w is not None:
            self.gt_rows.append(f"{i} {i} {i + 1}\n" + format_matrix(f.c2w))

    def _close_redwood(self) -> None:
        if self.gt_rows:
            _write_text(self.root / "trajectory.log", "".join(self.gt_rows))
        if self.intrinsics is not None:
            write_open3d_intrinsics(self.root / INTRINSICS_SIDECAR, self.intrinsics)

    # ScanNet -------------------------------------------------------------------------------------
    def _scannet_color(self, f: Frame) -> np.ndarray:
        size = self.options.get("color_size")
        return f.image if size is None else resize_rgb(f.image, int(size[0]), int(size[1]))

    def _add_scannet(self, f: Frame, i: int) -> None:
        flat = self.options.get("form", "export") == "flat"
        if self.options.get("form", "export") not in ("export", "flat"):
            raise ValueError(f"form: expected 'export' or 'flat' for scannet, found {self.options['form']!r}")
        color = self._scannet_color(f)
        if flat:
            stem = self.root / f"frame-{i:06d}"
            _save_image(Path(f"{stem}.color{self.ext}"), color)
            if f.depth is not None:
                _save_depth_png(Path(f"{stem}.depth.png"), f.depth, self.scale)
            _write_text(Path(f"{stem}.pose.txt"), format_matrix(_c2w_or_inf(f)))
        else:
            _save_image(self.root / "color" / f"{i}{self.ext}", color)
            if f.depth is not None:
                _save_depth_png(self.root / "depth" / f"{i}.png", f.depth, self.scale)
            _write_text(self.root / "pose" / f"{i}.txt", format_matrix(_c2w_or_inf(f)))

    def _close_scannet(self) -> None:
        if self.intrinsics is None:
            return
        intr = self.intrinsics
        size = self.options.get("color_size")
        color = intr if size is None else intr.scaled(int(size[0]), int(size[1]))
        K4 = lambda K: np.block([[K, np.zeros((3, 1))], [np.zeros((1, 3)), np.ones((1, 1))]])  # noqa: E731
        d = self.root / "intrinsic"
        _write_text(d / "intrinsic_color.txt", format_matrix(K4(color.K)))
        _write_text(d / "intrinsic_depth.txt", format_matrix(K4(intr.K)))
        _write_text(d / "extrinsic_color.txt", format_matrix(np.eye(4)))
        _write_text(d / "extrinsic_depth.txt", format_matrix(np.eye(4)))

    # Replica (NICE-SLAM) -------------------------------------------------------------------------
    def _add_replica(self, f: Frame, i: int) -> None:
        _save_image(self.root / "results" / f"frame{i:06d}{self.ext}", f.image)
        if f.depth is not None:
            _save_depth_png(self.root / "results" / f"depth{i:06d}.png", f.depth, self.scale)
        self.gt_rows.append(" ".join(f"{v:.17g}" for v in _c2w_or_inf(f).reshape(-1)) + "\n")

    def _close_replica(self) -> None:
        _write_text(self.root / "traj.txt", "".join(self.gt_rows))
        if self.intrinsics is not None:
            c = self.intrinsics
            cam = {"camera": {"w": c.width, "h": c.height, "fx": c.fx, "fy": c.fy, "cx": c.cx, "cy": c.cy,
                              "scale": self.scale}}
            _write_text(self.root / "cam_params.json", json.dumps(cam, indent=1))

    # 7-Scenes ------------------------------------------------------------------------------------
    def _add_sevenscenes(self, f: Frame, i: int) -> None:
        seq = self.root / str(self.options.get("sequence", "seq-01"))
        stem = seq / f"frame-{i:06d}"
        _save_image(Path(f"{stem}.color{self.ext}"), f.image)
        if f.depth is not None:
            _save_depth_png(Path(f"{stem}.depth.png"), f.depth, self.scale, invalid_value=65535)
        _write_text(Path(f"{stem}.pose.txt"), format_matrix(_c2w_or_inf(f)))

    def _close_sevenscenes(self) -> None:
        if self.intrinsics is not None:
            write_open3d_intrinsics(self.root / INTRINSICS_SIDECAR, self.intrinsics)


def _write_video(frames: Iterable[Frame], path: Path, fps: float, codec: str | None) -> Path:
    import av
    from fractions import Fraction

    if path.suffix.lower() not in VIDEO_EXTS:
        path = path / "video.mp4"
    path.parent.mkdir(parents=True, exist_ok=True)
    rate = Fraction(fps).limit_denominator(1001)
    n = 0
    with atomic_path(path) as tmp:
        with av.open(str(tmp), "w", format={".mkv": "matroska", ".webm": "webm", ".avi": "avi", ".mov": "mov"}.get(
                path.suffix.lower(), "mp4")) as out:
            stream = None
            for f in frames:
                if stream is None:
                    names = [codec] if codec else ["libx264", "mpeg4"]
                    name = next((c for c in names if c in av.codecs_available), None)
                    if name is None:
                        raise ValueError(f"{path}: no video encoder available among {names}")
                    stream = out.add_stream(name, rate=rate)
                    stream.width, stream.height = f.width - f.width % 2, f.height - f.height % 2
                    stream.pix_fmt = "yuv420p"
                    if name == "libx264":
                        stream.options = {"crf": "10", "preset": "ultrafast"}
                    else:
                        stream.bit_rate = 8_000_000
                img = f.image[: stream.height, : stream.width]
                vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")
                vf.pts = n
                for pkt in stream.encode(vf):
                    out.mux(pkt)
                n += 1
            if stream is None:
                raise ValueError(f"write_layout(video): no frames to write to {path}")
            for pkt in stream.encode():
                out.mux(pkt)
    return path


def write_layout(frames: Iterable[Frame], root: str | Path, layout: str, *, image_format: str | None = None,
                 depth_scale: float | None = None, fps: float = 30.0, codec: str | None = None,
                 depth_offset: float = 0.0, form: str = "export", color_size: tuple[int, int] | None = None,
                 sequence: str = "seq-01") -> Path:
    """Write ``frames`` as ``layout`` under ``root``; returns the folder (or the video file).

    Args:
        frames: frames to write (streamed, one at a time). Depth/c2w/K are written when present.
        root: output folder (``video``: a ``.mp4``/``.mkv``/... path, or a folder for ``video.mp4``).
        layout: one of :data:`WRITABLE_LAYOUTS` (``stream`` cannot be written).
        image_format: ``png``/``jpg``/``webp``; default: the dataset's (png for images/tum/7scenes,
            jpg for redwood/scannet/replica).
        depth_scale: integer depth units per metre (default: the layout's; TUM 5000, Replica 6553.5,
            others 1000).
        fps: video frame rate (``video``).
        codec: video encoder (default libx264, else mpeg4).
        depth_offset: TUM: seconds added to the depth timestamps (to exercise the association).
        form: ScanNet: ``"export"`` (color/ depth/ pose/ intrinsic/) or ``"flat"`` (frame-XXXXXX.*).
        color_size: ScanNet: ``(W, H)`` to write colour at (e.g. 1296x968 vs 640x480 depth); the
            colour intrinsics are scaled to it.
        sequence: 7-Scenes: the sequence folder name.

    Frames without ``c2w`` get a ``-inf`` pose in ScanNet/7-Scenes/Replica (ScanNet's marker of an
    invalid pose) and no line in TUM/Redwood trajectories.
    """
    if layout not in WRITABLE_LAYOUTS:
        raise ValueError(f"layout: expected one of {', '.join(WRITABLE_LAYOUTS)}, found {layout!r}")
    root = Path(root)
    if layout == "video":
        return _write_video(frames, root, fps, codec)
    root.mkdir(parents=True, exist_ok=True)
    sink = _Sink(root, layout, image_format, depth_scale, depth_offset=depth_offset, form=form,
                 color_size=color_size, sequence=sequence)
    for frame in frames:
        sink.add(frame)
    return sink.close()
