"""Habitat-rendered sequences in the DUSt3R export format: per frame an image, a depth map and a camera.

Files of one frame (stem ``S``, e.g. ``000012`` or DUSt3R's ``00012_1``), in one sequence folder::

    S.jpeg | S.jpg | S.png              RGB
    S_depth.exr                         float32 metric z-depth (OpenEXR), 0 / inf = invalid
                                        (S_depth.npy float metres or S_depth.png uint16 mm also read)
    S_camera_params.npz                 camera_intrinsics [3, 3], R_cam2world [3, 3], t_cam2world [3]

Cameras are OpenCV-style (the depth back-projects with ``K`` directly; DUSt3R's renderer converts
from Habitat's OpenGL axes before writing).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from forward3d.io.source_base import read_depth

__all__ = ["read_habitat_camera", "read_habitat_depth", "habitat_depth_path", "read_exr"]

DEPTH_SUFFIXES = ("_depth.exr", "_depth.npy", "_depth.png")


def read_habitat_camera(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """``S_camera_params.npz`` -> ``(K [3, 3], c2w [4, 4])``."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            K = np.asarray(z["camera_intrinsics"], dtype=np.float64).reshape(3, 3)
            R = np.asarray(z["R_cam2world"], dtype=np.float64).reshape(3, 3)
            t = np.asarray(z["t_cam2world"], dtype=np.float64).reshape(3)
    except (OSError, KeyError, ValueError) as exc:
        raise ValueError(f"{path}: expected an npz with camera_intrinsics (3x3), R_cam2world (3x3), t_cam2world (3) "
                         f"({type(exc).__name__}: {exc})") from exc
    if not (np.isfinite(K).all() and np.isfinite(R).all() and np.isfinite(t).all()):
        raise ValueError(f"{path}: non-finite camera parameters")
    c2w = np.eye(4)
    c2w[:3, :3], c2w[:3, 3] = R, t
    return K, c2w


def read_exr(path: str | os.PathLike) -> np.ndarray:
    """A single-channel (or first channel of a multi-channel) OpenEXR file -> ``[H, W]`` float32."""
    from forward3d.io._cv import import_cv2

    cv2 = import_cv2()
    path = Path(path)
    arr = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if arr is None:
        raise ValueError(f"{path}: not a readable OpenEXR file (OpenCV could not decode it)")
    if arr.ndim == 3:
        arr = arr[..., 0]
    return np.asarray(arr, dtype=np.float32)


def habitat_depth_path(image_path: Path) -> Path | None:
    """The depth file of a frame image (``S_depth.exr|npy|png`` beside it), or None."""
    for suffix in DEPTH_SUFFIXES:
        p = image_path.with_name(image_path.stem + suffix)
        if p.is_file():
            return p
    return None


def read_habitat_depth(path: str | os.PathLike) -> np.ndarray:
    """``S_depth.exr`` (float metres), ``.npy`` (float metres) or ``.png`` (uint16 mm) -> float32 metres."""
    path = Path(path)
    if path.suffix.lower() == ".exr":
        d = read_exr(path)
        d[~np.isfinite(d) | (d < 0)] = 0.0
        return d
    return read_depth(path, 1000.0)
