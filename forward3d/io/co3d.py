"""Common Objects in 3D (CO3D v2) files: ``frame_annotations.jgz``, float16 depth PNGs, masks, cameras.

Layout of one category (``<root>/<category>/``)::

    frame_annotations.jgz          gzipped JSON list, one entry per frame (below)
    sequence_annotations.jgz       per sequence (not needed here)
    set_lists/set_lists_*.json     {"train": [[sequence, frame_number, image_path], ...], "val": ..., "test": ...}
    <sequence>/images/frameXXXXXX.jpg
    <sequence>/depths/frameXXXXXX.jpg.geometric.png    16-bit PNG holding float16 BITS (not integers)
    <sequence>/depth_masks/frameXXXXXX.png             binary validity of the depth
    <sequence>/masks/frameXXXXXX.png                   foreground probability 0..255

A frame annotation::

    {"sequence_name": str, "frame_number": int, "frame_timestamp": float,
     "image": {"path": "<category>/<sequence>/images/frame000001.jpg", "size": [H, W]},
     "depth": {"path": ..., "scale_adjustment": float, "mask_path": ...},
     "mask": {"path": ..., "mass": float},
     "viewpoint": {"R": 3x3, "T": [3], "focal_length": [fx, fy], "principal_point": [px, py],
                   "intrinsics_format": "ndc_isotropic" | "ndc_norm_image_bounds"}}

Paths are relative to ``<root>`` (the folder holding the categories). Cameras are PyTorch3D's:
``x_cam = R^T x_world + T`` with camera axes +X left, +Y up, +Z forward, and NDC intrinsics. The
conversion to OpenCV is PyTorch3D's ``opencv_from_cameras_projection``: ``R_cv = diag(-1, -1, 1) R^T``,
``t_cv = diag(-1, -1, 1) T``; with ``s = min(W, H) / 2`` (isotropic) or ``(W / 2, H / 2)``:
``f_px = f_ndc * s``, ``c_px = (W, H) / 2 - p_ndc * s`` (pixel centres at +0.5). Depth units are the
sequence's COLMAP units times ``scale_adjustment`` (CO3D depth is not metric).
"""

from __future__ import annotations

import gzip
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from forward3d.geometry.se3 import inverse_se3

__all__ = ["Co3DFrame", "read_frame_annotations", "read_co3d_depth", "read_co3d_mask", "co3d_camera",
           "read_set_list"]

_FLIP_XY = np.diag([-1.0, -1.0, 1.0])


@dataclass(frozen=True)
class Co3DFrame:
    """One parsed frame annotation. Paths are relative to the dataset root; ``size`` is ``(W, H)``."""

    sequence: str
    frame_number: int
    timestamp: float
    image_path: str
    size: tuple[int, int]
    depth_path: str | None
    depth_scale: float
    depth_mask_path: str | None
    mask_path: str | None
    K: np.ndarray  # [3, 3] pixels
    c2w: np.ndarray  # [4, 4] OpenCV axes


def co3d_camera(viewpoint: dict, width: int, height: int, where: str = "") -> tuple[np.ndarray, np.ndarray]:
    """A CO3D ``viewpoint`` for a ``width x height`` image -> ``(K [3, 3], c2w [4, 4])`` (OpenCV)."""
    try:
        R = np.asarray(viewpoint["R"], dtype=np.float64).reshape(3, 3)
        T = np.asarray(viewpoint["T"], dtype=np.float64).reshape(3)
        f = np.asarray(viewpoint["focal_length"], dtype=np.float64).reshape(2)
        p = np.asarray(viewpoint["principal_point"], dtype=np.float64).reshape(2)
        fmt = str(viewpoint.get("intrinsics_format", "ndc_norm_image_bounds"))
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{where}: CO3D viewpoint needs R (3x3), T (3), focal_length (2), principal_point (2) "
                         f"({type(exc).__name__}: {exc})") from exc
    if not all(np.isfinite(a).all() for a in (R, T, f, p)):
        raise ValueError(f"{where}: CO3D viewpoint has non-finite values")
    half = np.array([width, height], dtype=np.float64) / 2.0
    if fmt == "ndc_isotropic":
        s = np.full(2, half.min())
    elif fmt == "ndc_norm_image_bounds":
        s = half
    else:
        raise ValueError(f"{where}: CO3D intrinsics_format must be ndc_isotropic or ndc_norm_image_bounds, found {fmt!r}")
    fx, fy = f * s
    cx, cy = half - p * s
    K = np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])
    w2c = np.eye(4)
    w2c[:3, :3] = _FLIP_XY @ R.T
    w2c[:3, 3] = _FLIP_XY @ T
    return K, inverse_se3(w2c)


def read_frame_annotations(path: str | os.PathLike) -> list[Co3DFrame]:
    """Parse ``frame_annotations.jgz`` (gzipped JSON list) into :class:`Co3DFrame` entries."""
    path = Path(path)
    try:
        raw = path.read_bytes()
        data = json.loads(gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw)
    except (OSError, EOFError, ValueError, gzip.BadGzipFile) as exc:
        raise ValueError(f"{path}: not a readable CO3D frame_annotations.jgz ({type(exc).__name__}: {exc})") from exc
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a JSON list of frame annotations, found {type(data).__name__}")
    out = []
    for k, a in enumerate(data):
        where = f"{path} entry {k}"
        try:
            img = a["image"]
            h, w = (int(v) for v in img["size"])
            depth = a.get("depth") or {}
            mask = a.get("mask") or {}
            K, c2w = co3d_camera(a["viewpoint"], w, h, where)
            out.append(Co3DFrame(
                sequence=str(a["sequence_name"]), frame_number=int(a["frame_number"]),
                timestamp=float(a.get("frame_timestamp", 0.0) or 0.0), image_path=str(img["path"]), size=(w, h),
                depth_path=depth.get("path"), depth_scale=float(depth.get("scale_adjustment", 1.0) or 1.0),
                depth_mask_path=depth.get("mask_path"), mask_path=mask.get("path"), K=K, c2w=c2w))
        except (KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, ValueError) and str(exc).startswith(where):
                raise
            raise ValueError(f"{where}: malformed CO3D frame annotation ({type(exc).__name__}: {exc})") from exc
    return out


def read_co3d_depth(path: str | os.PathLike, scale_adjustment: float = 1.0) -> np.ndarray:
    """A CO3D depth PNG (uint16 holding float16 bits) -> ``[H, W]`` float32 (0 = invalid)."""
    path = Path(path)
    try:
        with Image.open(path) as im:
            raw = np.asarray(im)
    except Exception as exc:  # PIL raises many types on bad files
        raise ValueError(f"{path}: not a readable CO3D depth PNG ({type(exc).__name__}: {exc})") from exc
    if raw.ndim != 2 or raw.dtype.kind not in "iu" or raw.dtype.itemsize < 2:
        raise ValueError(f"{path}: expected a 16-bit single-channel PNG, found dtype {raw.dtype}, shape {list(raw.shape)}")
    depth = np.ascontiguousarray(raw.astype(np.uint16)).view(np.float16).astype(np.float32) * np.float32(scale_adjustment)
    depth[~np.isfinite(depth) | (depth < 0)] = 0.0
    return depth


def read_co3d_mask(path: str | os.PathLike, threshold: float = 0.1) -> np.ndarray:
    """A CO3D mask PNG (depth mask or foreground probability) -> ``[H, W]`` bool (value / 255 > threshold)."""
    path = Path(path)
    try:
        with Image.open(path) as im:
            m = np.asarray(im.convert("L"), dtype=np.float32) / 255.0
    except Exception as exc:  # PIL raises many types on bad files
        raise ValueError(f"{path}: not a readable mask PNG ({type(exc).__name__}: {exc})") from exc
    return m > threshold


def read_set_list(path: str | os.PathLike) -> dict[str, list[tuple[str, int, str]]]:
    """``set_lists_*.json`` -> ``{subset: [(sequence, frame_number, image_path), ...]}``."""
    from forward3d.io.jsonio import read_json

    path = Path(path)
    data = read_json(path, "CO3D set list")
    try:
        return {str(k): [(str(s), int(n), str(p)) for s, n, p in v] for k, v in data.items()}
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{path}: expected a CO3D set list {{subset: [[sequence, frame_number, path], ...]}} "
                         f"({type(exc).__name__}: {exc})") from exc
