"""nerfstudio / instant-ngp style ``transforms.json``.

Conventions (https://docs.nerf.studio/quickstart/data_conventions.html):

- ``transform_matrix`` is camera-to-world with OpenGL/Blender camera axes (x right, y up, z back,
  the camera looks down -z). forward3d uses OpenCV camera axes (x right, y down, z forward), so
  ``transform_matrix = c2w @ diag(1, -1, -1, 1)`` (:func:`opencv_to_opengl_c2w`); the world frame is
  left as it is (no ``applied_transform``), so ``ply_file_path`` points are in the same world.
- Intrinsics ``fl_x fl_y cx cy`` in pixels with pixel centres at +0.5 (nerfstudio adds 0.5 to pixel
  indices), the forward3d convention, so they are written unchanged; ``w h`` in pixels.
  ``camera_model`` is ``"OPENCV"`` with zero distortion.
- Intrinsics shared by all frames are written at the top level, otherwise per frame.
- ``file_path`` is relative to the folder of ``transforms.json``.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np

from forward3d.io.atomic import atomic_write
from forward3d.io.colmap import CameraSet
from forward3d.types import Reconstruction

__all__ = ["write_transforms_json", "read_transforms_json", "opencv_to_opengl_c2w", "opengl_to_opencv_c2w",
           "default_image_paths"]

log = logging.getLogger(__name__)

_FLIP_YZ = np.diag([1.0, -1.0, -1.0, 1.0])
_INTR_KEYS = ("fl_x", "fl_y", "cx", "cy")


def opencv_to_opengl_c2w(c2w: np.ndarray) -> np.ndarray:
    """``[..., 4, 4]`` OpenCV-camera c2w -> OpenGL/Blender-camera c2w (flip camera y and z)."""
    return np.asarray(c2w, dtype=np.float64) @ _FLIP_YZ


def opengl_to_opencv_c2w(c2w: np.ndarray) -> np.ndarray:
    """``[..., 4, 4]`` OpenGL/Blender-camera c2w -> OpenCV-camera c2w (its own inverse)."""
    return np.asarray(c2w, dtype=np.float64) @ _FLIP_YZ


def default_image_paths(names: list[str]) -> list[str]:
    """``images/<name>``, with ``.png`` added when ``name`` has no suffix."""
    return [f"images/{n}" if Path(n).suffix else f"images/{n}.png" for n in names]


def write_transforms_json(
    path: str | os.PathLike,
    recon: Reconstruction,
    image_paths: list[str] | None = None,
    ply_file_path: str | None = None,
) -> Path:
    """Write a nerfstudio ``transforms.json``.

    Args:
        path: the JSON file (usually ``<dataset>/transforms.json``).
        recon: cameras of every frame (OpenCV ``c2w``, ``K`` for ``recon.image_size``).
        image_paths: N image paths relative to the JSON's folder; defaults to
            ``images/<frame name>`` (``.png`` added when the name has no suffix).
        ply_file_path: optional point cloud path (relative to the JSON's folder) for 3DGS init.

    Returns:
        ``Path(path)``.
    """
    path = Path(path)
    n = len(recon)
    paths = default_image_paths(recon.frame_names) if image_paths is None else [str(p) for p in image_paths]
    if len(paths) != n:
        raise ValueError(f"write_transforms_json {path}: expected {n} image paths, found {len(paths)}")
    if not np.isfinite(recon.c2w).all() or not np.isfinite(recon.K).all():
        raise ValueError(f"write_transforms_json {path}: c2w / K contain non-finite values")
    w, h = recon.image_size
    intr = np.stack([recon.K[:, 0, 0], recon.K[:, 1, 1], recon.K[:, 0, 2], recon.K[:, 1, 2]], 1) if n \
        else np.zeros((0, 4))
    shared = n > 0 and bool(np.all(intr == intr[0]))
    out: dict = {"camera_model": "OPENCV"}
    if shared:
        out.update({k: float(v) for k, v in zip(_INTR_KEYS, intr[0])})
    out.update({"w": int(w), "h": int(h), "k1": 0.0, "k2": 0.0, "p1": 0.0, "p2": 0.0})
    if ply_file_path is not None:
        out["ply_file_path"] = str(ply_file_path)
    gl = opencv_to_opengl_c2w(recon.c2w)
    frames = []
    for i in range(n):
        fr: dict = {"file_path": paths[i], "transform_matrix": gl[i].tolist()}
        if not shared:
            fr.update({k: float(v) for k, v in zip(_INTR_KEYS, intr[i])})
        fr["timestamp"] = float(recon.timestamps[i])
        frames.append(fr)
    out["frames"] = frames
    text = json.dumps(out, indent=2)
    with atomic_write(path, "w") as f:
        f.write(text + "\n")
    log.debug("wrote %d frames to %s", n, path)
    return path


def _get(path: Path, where: str, d: dict, key: str, top: dict) -> float:
    if key in d:
        return float(d[key])
    if key in top:
        return float(top[key])
    raise ValueError(f"transforms.json {path}: {where}: expected key {key!r} (per frame or top level), not found")


def read_transforms_json(path: str | os.PathLike) -> CameraSet:
    """Read a ``transforms.json`` back to OpenCV cameras.

    Frames keep their file order. Distortion keys are ignored.

    Returns:
        :class:`~forward3d.io.colmap.CameraSet` with ``names`` = ``file_path`` values, OpenCV ``c2w``,
        ``K`` ``[N, 3, 3]`` and image sizes; ``extras`` holds ``camera_model``, ``ply_file_path`` and
        ``timestamps`` when present. ``points`` is None (load ``ply_file_path`` yourself).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"transforms.json not found: {path}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"transforms.json {path}: invalid JSON ({e})") from None
    if not isinstance(data, dict) or not isinstance(data.get("frames"), list):
        raise ValueError(f"transforms.json {path}: expected an object with a 'frames' list")
    frames = data["frames"]
    n = len(frames)
    K = np.tile(np.eye(3), (n, 1, 1))
    c2w = np.zeros((n, 4, 4))
    sizes = np.zeros((n, 2), np.int64)
    names, stamps = [], []
    for i, fr in enumerate(frames):
        where = f"frame {i}"
        if "file_path" not in fr or "transform_matrix" not in fr:
            raise ValueError(f"transforms.json {path}: {where}: expected 'file_path' and 'transform_matrix'")
        T = np.asarray(fr["transform_matrix"], dtype=np.float64)
        if T.shape == (3, 4):
            T = np.vstack([T, [0, 0, 0, 1]])
        if T.shape != (4, 4):
            raise ValueError(f"transforms.json {path}: {where}: expected a 4x4 transform_matrix, found {list(T.shape)}")
        c2w[i] = opengl_to_opencv_c2w(T)
        fx, fy, cx, cy = (_get(path, where, fr, k, data) for k in _INTR_KEYS)
        K[i, 0, 0], K[i, 1, 1], K[i, 0, 2], K[i, 1, 2] = fx, fy, cx, cy
        sizes[i] = int(_get(path, where, fr, "w", data)), int(_get(path, where, fr, "h", data))
        names.append(str(fr["file_path"]))
        if "timestamp" in fr:
            stamps.append(float(fr["timestamp"]))
    extras = {k: data[k] for k in ("camera_model", "ply_file_path") if k in data}
    if len(stamps) == n and n:
        extras["timestamps"] = np.asarray(stamps)
    return CameraSet(names=names, K=K, c2w=c2w, image_sizes=sizes, points=None, extras=extras)
