"""Building blocks of the frame sources: file decoding, resizing, intrinsics/pose files, base classes.

Everything here turns library errors (PIL, numpy, json) into a ``ValueError`` that names the file and
the problem, raised ``from`` the original exception. The public entry point is
:func:`forward3d.io.sources.open_frames`.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Literal, Sequence

import numpy as np
from PIL import Image, ImageOps

from forward3d.types import Frame, Intrinsics
from forward3d.io.depth_units import DepthUnitError, check_depth_units

__all__ = [
    "IMAGE_EXTS",
    "DEPTH_EXTS",
    "VIDEO_EXTS",
    "FrameSource",
    "FrameRecord",
    "IndexedSource",
    "natural_key",
    "list_images",
    "read_rgb",
    "read_depth",
    "resize_rgb",
    "resize_depth",
    "resolve_size",
    "as_intrinsics",
    "read_open3d_intrinsics",
    "write_open3d_intrinsics",
    "find_open3d_intrinsics",
    "read_matrix_txt",
    "format_matrix",
    "quat_xyzw_to_rotmat",
    "rotmat_to_quat_xyzw",
    "checked_c2w",
]

log = logging.getLogger(__name__)

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".webp")
DEPTH_EXTS = (".png", ".tif", ".tiff", ".npy")
VIDEO_EXTS = (".mp4", ".mov", ".avi", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".ts")

OnError = Literal["skip", "raise"]

# Sidecar intrinsics file (Open3D PinholeCameraIntrinsic json) honoured by layouts without a native one.
INTRINSICS_SIDECAR = "camera_intrinsic.json"


# --------------------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------------------


def natural_key(name: str) -> list:
    """Sort key putting ``frame2`` before ``frame10`` (digit runs compare as numbers)."""
    return [(0, int(t), "") if t.isdigit() else (1, 0, t.lower()) for t in re.split(r"(\d+)", name) if t]


def list_images(folder: Path, exts: Sequence[str] = IMAGE_EXTS) -> list[Path]:
    """Image files directly inside ``folder`` (hidden files ignored), naturally sorted."""
    files = [p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in exts]
    return sorted(files, key=lambda p: natural_key(p.name))


def _check_nonempty(path: Path, what: str) -> None:
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise ValueError(f"{path}: cannot read {what} ({exc.strerror or exc})") from exc
    if size == 0:
        raise ValueError(f"{path}: empty file (0 bytes), expected {what}")


def read_rgb(path: Path) -> np.ndarray:
    """Decode a colour image to ``[H, W, 3]`` uint8 RGB with its EXIF orientation applied."""
    path = Path(path)
    _check_nonempty(path, "a colour image")
    try:
        with Image.open(path) as im:
            im = ImageOps.exif_transpose(im)
            arr = _to_rgb8(im)
    except Exception as exc:  # PIL raises OSError, SyntaxError, struct.error, ... on bad files
        raise ValueError(f"{path}: not a readable colour image ({type(exc).__name__}: {exc})") from exc
    if arr.ndim != 3 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"{path}: expected a non-empty [H, W, 3] colour image, found shape {list(arr.shape)}")
    return np.ascontiguousarray(arr)


def _to_rgb8(im: "Image.Image") -> np.ndarray:
    """PIL image of any mode -> ``[H, W, 3]`` uint8. 16-bit and 32-bit grey images (``I;16``, ``I``,
    ``F``) are rescaled from their full range (PIL's ``convert("RGB")`` clips them to 255: a white
    image); alpha is dropped; palette, grey and CMYK images are converted."""
    if im.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        a = np.asarray(im).astype(np.float64)
        if im.mode.startswith("I;16") or (im.mode == "I" and a.size and a.max() > 255):
            a = a / 257.0  # 0..65535 -> 0..255
        elif im.mode == "F" and a.size and np.nanmax(a) <= 1.0:
            a = a * 255.0  # float images in [0, 1]
        g = np.clip(np.nan_to_num(a), 0, 255).round().astype(np.uint8)
        return np.repeat(g[..., None], 3, axis=-1)
    return np.asarray(im.convert("RGB"))


def exif_orientation(path: Path) -> int:
    """The EXIF orientation tag (1..8) of an image file; 1 when absent or unreadable."""
    try:
        with Image.open(path) as im:
            o = int(im.getexif().get(0x0112, 1))
    except Exception:  # not an image or no usable EXIF: upright
        return 1
    return o if 1 <= o <= 8 else 1


_EXIF_TRANSPOSE = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
                   4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE,
                   6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE, 8: Image.Transpose.ROTATE_90}


def apply_exif_orientation(array: np.ndarray, orientation: int) -> np.ndarray:
    """Apply the transform PIL's ``exif_transpose`` applies for ``orientation`` to an ``[H, W]`` or
    ``[H, W, C]`` array (e.g. a depth map stored in the camera's raw orientation)."""
    method = _EXIF_TRANSPOSE.get(int(orientation))
    if method is None:
        return array
    a = np.asarray(array)
    chans = [a] if a.ndim == 2 else [a[..., c] for c in range(a.shape[-1])]
    out = [np.asarray(Image.fromarray(np.ascontiguousarray(c, np.float32)).transpose(method)) for c in chans]
    res = out[0] if a.ndim == 2 else np.stack(out, -1)
    return res.astype(a.dtype)


def read_depth(path: Path, scale: float, invalid: Sequence[int] = (), *, float_scale: float = 1.0,
               check_units: bool = False, explicit_scale: bool = False) -> np.ndarray:
    """Decode a depth map to ``[H, W]`` float32 metres, 0 = invalid.

    Integer data (16-bit PNG/TIFF, integer ``.npy``) is divided by ``scale``; values listed in
    ``invalid`` become 0. Float data (32-bit TIFF, float ``.npy``) is divided by ``float_scale``
    (1: metres). ``[1, H, W]`` arrays (a saved network output) are squeezed. Non-finite and negative
    values become 0. A map without any valid pixel raises ``ValueError``. ``check_units``: refuse a
    median depth implausible for the scale (:func:`forward3d.io.depth_units.check_depth_units`; a
    warning only when ``explicit_scale``, i.e. the user chose it).
    """
    path = Path(path)
    _check_nonempty(path, "a depth map")
    try:
        if path.suffix.lower() == ".npy":
            raw = np.load(path, allow_pickle=False)
        else:
            with Image.open(path) as im:
                if im.mode in ("L", "P", "RGB", "RGBA", "LA", "1", "CMYK", "YCbCr"):
                    raise ValueError(f"expected a 16-bit or float single-channel depth image, found PIL mode {im.mode}")
                raw = np.asarray(im)
    except ValueError as exc:
        raise ValueError(f"{path}: cannot read depth map ({exc})") from exc
    except Exception as exc:
        raise ValueError(f"{path}: cannot read depth map ({type(exc).__name__}: {exc})") from exc
    if raw.ndim == 3 and raw.shape[2] == 1:
        raw = raw[..., 0]
    elif raw.ndim == 3 and raw.shape[0] == 1:
        raw = raw[0]
    if raw.ndim != 2 or raw.size == 0:
        raise ValueError(f"{path}: expected a single-channel [H, W] depth map, found shape {list(raw.shape)}")
    if raw.dtype.kind in "iub":
        applied = float(scale)
        depth = raw.astype(np.float32) / np.float32(scale)
        for v in invalid:
            depth[raw == v] = 0.0
    elif raw.dtype.kind == "f":
        applied = float(float_scale)
        depth = raw.astype(np.float32) / np.float32(float_scale)
    else:
        raise ValueError(f"{path}: expected integer or float depth values, found dtype {raw.dtype}")
    depth[~np.isfinite(depth) | (depth < 0)] = 0.0
    if not (depth > 0).any():
        raise ValueError(f"{path}: depth map has no valid pixel (all zero, negative or NaN)")
    if check_units:
        check_depth_units(depth, applied, str(path), raw_integer=raw.dtype.kind in "iub", explicit=explicit_scale)
    return depth


def resolve_size(size: tuple[int, int] | int | None, width: int, height: int) -> tuple[int, int]:
    """Working resolution ``(W, H)``: ``size`` itself, the native size, or an int = the long side."""
    if size is None:
        return width, height
    if isinstance(size, (int, np.integer)) and not isinstance(size, bool):
        s = float(size) / max(width, height)
        return max(1, int(round(width * s))), max(1, int(round(height * s)))
    w, h = size  # validated by check_size
    return int(w), int(h)


def check_size(size: object) -> tuple[int, int] | int | None:
    """Validate the ``size`` option (``None``, a positive int, or ``(W, H)`` positive ints)."""
    if size is None:
        return None
    if isinstance(size, (int, np.integer)) and not isinstance(size, bool):
        if size <= 0:
            raise ValueError(f"size: expected a positive long side, found {size}")
        return int(size)
    try:
        w, h = size  # type: ignore[misc]
        w, h = int(w), int(h)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"size: expected None, an int (long side) or (W, H), found {size!r}") from exc
    if w <= 0 or h <= 0:
        raise ValueError(f"size: expected positive (W, H), found {size!r}")
    return w, h


def resize_rgb(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """``[H, W, 3]`` uint8 -> ``[height, width, 3]`` (bilinear, antialiased when shrinking)."""
    if image.shape[1] == width and image.shape[0] == height:
        return image
    return np.asarray(Image.fromarray(image).resize((width, height), Image.Resampling.BILINEAR))


def resize_depth(depth: np.ndarray, width: int, height: int) -> np.ndarray:
    """``[H, W]`` float32 -> ``[height, width]`` with NEAREST (never mixes valid and invalid depths)."""
    if depth.shape[1] == width and depth.shape[0] == height:
        return depth
    out = Image.fromarray(np.ascontiguousarray(depth, dtype=np.float32), mode="F")
    return np.asarray(out.resize((width, height), Image.Resampling.NEAREST), dtype=np.float32)


def check_intrinsics(intrinsics: Intrinsics | np.ndarray | Sequence | None) -> Intrinsics | np.ndarray | None:
    """User intrinsics, checked once: an :class:`Intrinsics`, a ``[3, 3]`` K or ``(fx, fy, cx, cy)``
    (what ``--intrinsics`` gives) -> ``Intrinsics`` / ``[3, 3]`` K; finite, positive focal lengths."""
    if intrinsics is None:
        return None
    if isinstance(intrinsics, Intrinsics):
        K = intrinsics.K
    else:
        K = np.asarray(intrinsics, dtype=np.float64)
        if K.shape == (4,):
            fx, fy, cx, cy = K
            K = np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])
        if K.shape != (3, 3):
            raise ValueError(f"intrinsics: expected (fx, fy, cx, cy), a [3, 3] K or an Intrinsics, found shape "
                             f"{list(K.shape)}")
    if not np.isfinite(K).all() or K[0, 0] <= 0 or K[1, 1] <= 0:
        raise ValueError(f"intrinsics: expected finite values and positive focal lengths, found fx={K[0, 0]:g} "
                         f"fy={K[1, 1]:g} cx={K[0, 2]:g} cy={K[1, 2]:g}")
    return intrinsics if isinstance(intrinsics, Intrinsics) else K


def as_intrinsics(intrinsics: Intrinsics | np.ndarray | Sequence | None, width: int, height: int) -> Intrinsics | None:
    """User intrinsics: an :class:`Intrinsics` (kept with its own size) or a ``[3, 3]`` K for the
    native ``width x height``."""
    if intrinsics is None or isinstance(intrinsics, Intrinsics):
        return intrinsics
    K = np.asarray(intrinsics, dtype=np.float64)
    if K.shape != (3, 3) or not np.isfinite(K).all():
        raise ValueError(f"intrinsics: expected an Intrinsics or a finite [3, 3] K, found shape {list(K.shape)}")
    return Intrinsics.from_K(K, width, height)


# --------------------------------------------------------------------------------------------------
# Intrinsics and pose files
# --------------------------------------------------------------------------------------------------


def read_open3d_intrinsics(path: Path) -> Intrinsics:
    """Open3D ``PinholeCameraIntrinsic`` json: ``{"width", "height", "intrinsic_matrix": 9 numbers
    column-major}``."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        m = np.asarray(data["intrinsic_matrix"], dtype=np.float64)
        w, h = int(data["width"]), int(data["height"])
    except Exception as exc:
        raise ValueError(f"{path}: not an Open3D intrinsic json ({{'width', 'height', 'intrinsic_matrix'}}): "
                         f"{type(exc).__name__}: {exc}") from exc
    if m.shape != (9,) or not np.isfinite(m).all() or w <= 0 or h <= 0:
        raise ValueError(f"{path}: expected 9 finite intrinsic_matrix numbers and a positive size, "
                         f"found {m.shape[0] if m.ndim == 1 else list(m.shape)} numbers, {w}x{h}")
    return Intrinsics.from_K(m.reshape(3, 3).T, w, h)


def write_open3d_intrinsics(path: Path, intrinsics: Intrinsics) -> None:
    from forward3d.io.atomic import atomic_write

    data = {"width": intrinsics.width, "height": intrinsics.height,
            "intrinsic_matrix": [float(v) for v in intrinsics.K.T.reshape(-1)]}
    with atomic_write(path, "w") as f:
        json.dump(data, f, indent=1)


def find_open3d_intrinsics(*folders: Path, names: Sequence[str] = (INTRINSICS_SIDECAR,)) -> Path | None:
    """First existing file among ``names`` in ``folders``."""
    for folder in folders:
        for name in names:
            p = folder / name
            if p.is_file():
                return p
    return None


def read_matrix_txt(path: Path, rows: int = 4, cols: int = 4, text: str | None = None) -> np.ndarray:
    """A whitespace-separated ``[rows, cols]`` float matrix (``inf``/``nan`` allowed)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8") if text is None else text
        values = [float(v) for v in text.split()]
    except Exception as exc:
        raise ValueError(f"{path}: not a {rows}x{cols} matrix text file ({type(exc).__name__}: {exc})") from exc
    if len(values) != rows * cols:
        raise ValueError(f"{path}: expected {rows * cols} numbers ({rows}x{cols} matrix), found {len(values)}")
    return np.asarray(values, dtype=np.float64).reshape(rows, cols)


def format_matrix(m: np.ndarray) -> str:
    """Rows of ``%.17g`` numbers (exact float64 round trip)."""
    return "".join(" ".join(f"{v:.17g}" for v in row) + "\n" for row in np.atleast_2d(m))


def checked_c2w(c2w: np.ndarray, where: str) -> np.ndarray | None:
    """``c2w`` if finite, else ``None`` with a warning (ScanNet marks lost tracking with ``-inf``)."""
    if not np.isfinite(c2w).all():
        log.warning("%s: invalid (non-finite) pose, frame gets no ground-truth c2w", where)
        return None
    return c2w


def quat_xyzw_to_rotmat(q: np.ndarray) -> np.ndarray:
    """``[4]`` quaternion in xyzw order (TUM files) -> ``[3, 3]`` rotation (normalised inside)."""
    from forward3d.geometry.quaternion import quat_to_rotmat, xyzw_to_wxyz

    return quat_to_rotmat(xyzw_to_wxyz(q))


def rotmat_to_quat_xyzw(R: np.ndarray) -> np.ndarray:
    """``[3, 3]`` rotation -> ``[4]`` xyzw quaternion with w >= 0 (Shepperd's method)."""
    from forward3d.geometry.quaternion import rotmat_to_quat, wxyz_to_xyzw

    return wxyz_to_xyzw(rotmat_to_quat(R))


# --------------------------------------------------------------------------------------------------
# Sources
# --------------------------------------------------------------------------------------------------


class FrameSource:
    """An iterable of :class:`forward3d.types.Frame`, read lazily (never the whole sequence in memory).

    Attributes:
        path: the folder, file or URL the frames come from.
        layout: ``"images" | "video" | "stream" | "tum" | "redwood" | "scannet" | "replica" | "7scenes"``.
        has_depth: frames carry metric depth.
        has_gt_poses: frames carry a ground-truth ``c2w`` (frames whose pose is invalid get ``None``).
        dropped: set when a live stream (or a video) ended with a read error; the frames yielded
            before it are valid.
        num_frames: frames after stride/max_frames, or ``None`` when unknown (live streams).

    ``len(src)`` is ``num_frames``; it raises ``TypeError`` when that is unknown (streams).
    """

    layout: str = ""
    has_depth: bool = False
    has_gt_poses: bool = False

    def __init__(self, path: str | Path, *, stride: int = 1, max_frames: int | None = None,
                 size: tuple[int, int] | int | None = None, intrinsics: Intrinsics | np.ndarray | None = None,
                 on_error: OnError = "skip") -> None:
        if isinstance(stride, bool) or not isinstance(stride, (int, np.integer)) or stride < 1:
            raise ValueError(f"stride: expected an int >= 1, found {stride!r}")
        if max_frames is not None and (isinstance(max_frames, bool) or not isinstance(max_frames, (int, np.integer))
                                       or max_frames < 1):
            raise ValueError(f"max_frames: expected None or an int >= 1, found {max_frames!r}")
        if on_error not in ("skip", "raise"):
            raise ValueError(f"on_error: expected 'skip' or 'raise', found {on_error!r}")
        self.path = path if isinstance(path, str) and "://" in path else Path(path)
        self.stride = int(stride)
        self.max_frames = None if max_frames is None else int(max_frames)
        self.size = check_size(size)
        self.user_intrinsics = check_intrinsics(intrinsics)
        self.on_error: OnError = on_error
        self.dropped = False

    @property
    def num_frames(self) -> int | None:
        return None

    def close(self) -> None:
        """Release held resources (an open stream connection); sources also work without calling it."""

    def __enter__(self) -> "FrameSource":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __len__(self) -> int:
        n = self.num_frames
        if n is None:
            raise TypeError(f"{type(self).__name__} ({self.path}): number of frames unknown (live stream)")
        return n

    def __iter__(self) -> Iterator[Frame]:
        raise NotImplementedError

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(path={str(self.path)!r}, layout={self.layout!r}, frames={self.num_frames}, "
                f"depth={self.has_depth}, gt_poses={self.has_gt_poses})")

    # helpers for subclasses ----------------------------------------------------------------------
    def _select_count(self, total: int) -> int:
        n = (total + self.stride - 1) // self.stride
        return n if self.max_frames is None else min(n, self.max_frames)

    def _finish(self, image: np.ndarray, depth: np.ndarray | None, layout_intrinsics: Intrinsics | None,
                **fields) -> Frame:
        """Resize to the working size, scale K, build the Frame. ``image``/``depth`` are native size."""
        h, w = image.shape[:2]
        W, H = resolve_size(self.size, w, h)
        intr = as_intrinsics(self.user_intrinsics, w, h) or layout_intrinsics
        K = None if intr is None else intr.scaled(W, H).K
        image = resize_rgb(image, W, H)
        if depth is not None:
            depth = resize_depth(depth, W, H)
        return Frame(image=image, depth=depth, K=K, **fields)


@dataclass
class FrameRecord:
    """One frame of a file-based layout: where its files are and what the index files say about it."""

    index: int
    name: str
    timestamp: float
    image_path: Path
    depth_path: Path | None = None
    c2w: np.ndarray | None = None
    pose_path: Path | None = None  # per-frame 4x4 c2w text file (ScanNet, 7-Scenes), read with the frame


def skip_frames_without_depth(records: list["FrameRecord"], where: Path) -> tuple[list["FrameRecord"], bool]:
    """RGB-D layouts: frames whose depth file is missing are skipped with a warning (a real capture
    often loses a few); only when NO frame has depth is the input colour-only. Returns the kept
    records (re-indexed 0..n-1) and whether they have depth."""
    missing = [r for r in records if r.depth_path is None]
    if not missing:
        return records, True
    if len(missing) == len(records):
        return records, False
    log.warning("%s: %d of %d frames have no depth file (first: %s); they are skipped",
                where, len(missing), len(records), missing[0].image_path.name)
    kept = [r for r in records if r.depth_path is not None]
    for i, r in enumerate(kept):
        r.index = i
    return kept, True


class IndexedSource(FrameSource):
    """A source with a known list of frames (image folders and RGB-D dataset layouts).

    Subclasses fill ``self.records`` (all frames, in order), ``self.intrinsics`` (layout K at the native
    frame size, or ``None``), ``self.depth_scale`` and ``self.depth_invalid``.

    A frame whose files cannot be read is skipped with a logged warning (``on_error="skip"``, default)
    or raises (``on_error="raise"``). A source of which no frame can be read (or whose first 10
    frames all fail, or which has a single frame) raises ``ValueError`` naming the first bad file.
    ``len()`` counts the listed frames; skipped frames make the iteration shorter.

    All frames get the native size of the first frame read: a frame of another size with the same
    aspect ratio (1%) is resized to it (K scaled, depth nearest, one warning); a frame of another aspect
    ratio (a portrait photo among landscape ones) is a bad frame (skipped with a warning / raises).
    """

    depth_scale: float = 1000.0
    depth_invalid: tuple[int, ...] = ()
    max_leading_failures = 10  # give up when the first 10 frames are all unreadable
    resize_color_to_depth = False  # ScanNet: colour (1296x968) is resized to the depth size (640x480)

    def __init__(self, path: str | Path, *, depth_scale: float | None = None, **kwargs) -> None:
        super().__init__(path, **kwargs)
        if depth_scale is not None and (not np.isfinite(depth_scale) or depth_scale <= 0):
            raise ValueError(f"depth_scale: expected a positive number, found {depth_scale!r}")
        self.user_depth_scale = depth_scale
        self.records: list[FrameRecord] = []
        self._native_size: tuple[int, int] | None = None  # (W, H) of the first frame read
        self._warned_resize = False
        self._depth_checked = False  # the first depth map read is checked for its unit (depth_units)
        self.intrinsics: Intrinsics | None = None

    @property
    def scale(self) -> float:
        return float(self.user_depth_scale if self.user_depth_scale is not None else self.depth_scale)

    @property
    def selected(self) -> list[FrameRecord]:
        recs = self.records[:: self.stride]
        return recs if self.max_frames is None else recs[: self.max_frames]

    @property
    def num_frames(self) -> int:
        return len(self.selected)

    def _native_intrinsics(self, width: int, height: int) -> Intrinsics | None:
        """Layout intrinsics for a native frame of ``width x height`` (scaled when sizes differ)."""
        if self.intrinsics is None:
            return None
        if (self.intrinsics.width, self.intrinsics.height) != (width, height):
            return self.intrinsics.scaled(width, height)
        return self.intrinsics

    def load(self, rec: FrameRecord) -> Frame:
        """Read one frame (raises ``ValueError`` naming the file on bad data)."""
        image = read_rgb(rec.image_path)
        depth = None
        if rec.depth_path is not None:
            depth = read_depth(rec.depth_path, self.scale, self.depth_invalid,
                               float_scale=self.user_depth_scale or 1.0, check_units=not self._depth_checked,
                               explicit_scale=self.user_depth_scale is not None)
            self._depth_checked = True
            (h, w), (hd, wd) = image.shape[:2], depth.shape
            if (h, w) != (hd, wd) and (hd, wd) == (w, h) and exif_orientation(rec.image_path) in (5, 6, 7, 8):
                # the colour image was EXIF-rotated; the depth map (no EXIF) is in the stored orientation
                depth = apply_exif_orientation(depth, exif_orientation(rec.image_path))
                hd, wd = depth.shape
            if (h, w) != (hd, wd):
                if not self.resize_color_to_depth:
                    raise ValueError(f"{rec.depth_path}: depth size {wd}x{hd} does not match the colour image "
                                     f"{rec.image_path} ({w}x{h})")
                image = resize_rgb(image, wd, hd)
        image, depth = self._to_native_size(rec, image, depth)
        c2w = rec.c2w
        if rec.pose_path is not None:
            c2w = checked_c2w(read_matrix_txt(rec.pose_path), str(rec.pose_path))
        h, w = image.shape[:2]
        return self._finish(image, depth, self._native_intrinsics(w, h), c2w=c2w, timestamp=float(rec.timestamp),
                            index=rec.index, name=rec.name, source=str(rec.image_path))

    def _to_native_size(self, rec: FrameRecord, image: np.ndarray,
                        depth: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
        """Bring a frame to the first frame's native size (see the class docstring)."""
        h, w = image.shape[:2]
        if self._native_size is None:
            self._native_size = (w, h)
            return image, depth
        W0, H0 = self._native_size
        if (w, h) == (W0, H0):
            return image, depth
        if abs(w / h - W0 / H0) > 0.01 * (W0 / H0):
            raise ValueError(f"{rec.image_path}: image size {w}x{h} has another aspect ratio than the first frame's "
                             f"{W0}x{H0}: a sequence needs frames of one camera (remove, crop or rotate this image)")
        if not self._warned_resize:
            log.warning("%s: image size %dx%d differs from the first frame's %dx%d: resized to it (K scaled); "
                        "further resized frames are not reported", rec.image_path, w, h, W0, H0)
            self._warned_resize = True
        return resize_rgb(image, W0, H0), (None if depth is None else resize_depth(depth, W0, H0))

    def __iter__(self) -> Iterator[Frame]:
        first_error: ValueError | None = None
        n = failures = 0
        selected = self.selected
        for rec in selected:
            try:
                frame = self.load(rec)
            except DepthUnitError:
                raise  # a wrong unit is the whole source's problem, not this frame's
            except ValueError as exc:
                if self.on_error == "raise" or len(selected) == 1:
                    raise
                log.warning("skipping frame %d (%s): %s", rec.index, rec.name, exc)
                first_error = first_error or exc
                failures += 1
                if n == 0 and failures == self.max_leading_failures:
                    raise ValueError(f"{self.path}: the first {failures} frames could not be read; first error: "
                                     f"{first_error}") from first_error
                continue
            n += 1
            yield frame
        if n == 0 and first_error is not None:
            raise ValueError(f"{self.path}: no frame could be read; first error: {first_error}") from first_error
