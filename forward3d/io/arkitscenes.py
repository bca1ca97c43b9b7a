"""ARKitScenes raw files: ``lowres_wide.traj`` trajectories, ``.pincam`` intrinsics, frame names.

Layout of one raw video (``raw/{Training,Validation}/<video_id>/``, as downloaded by the dataset's
``download_data.py raw``; the 3DOD release nests the same files in ``<video_id>_frames/``)::

    lowres_wide/<video_id>_<timestamp>.png              RGB 256x192
    lowres_depth/<video_id>_<timestamp>.png             uint16 millimetres, 0 = invalid
    lowres_wide_intrinsics/<video_id>_<timestamp>.pincam  "width height fx fy cx cy"
    lowres_wide.traj                                    "timestamp ax ay az tx ty tz" per line

A ``.traj`` line is the WORLD-TO-CAMERA transform (rotation as an axis-angle vector in radians,
translation in metres); its inverse is the camera-to-world pose, with OpenCV camera axes (the
depth back-projects with the pinhole ``K`` directly). Timestamps are seconds; the frame names carry
them with 3 decimals.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

from forward3d.geometry.se3 import inverse_se3, so3_exp
from forward3d.types import Intrinsics

__all__ = ["read_traj", "read_pincam", "frame_timestamp"]

_NAME = re.compile(r"^(?P<video>.+)_(?P<ts>\d+(?:\.\d+)?)$")


def read_traj(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """``lowres_wide.traj`` -> timestamps ``[N]`` (sorted) and camera-to-world ``[N, 4, 4]``."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: cannot read ARKitScenes trajectory ({exc})") from exc
    ts, c2w = [], []
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        tok = line.split()
        try:
            v = np.asarray([float(t) for t in tok], dtype=np.float64)
        except ValueError:
            v = np.zeros(0)
        if v.shape != (7,) or not np.isfinite(v).all():
            raise ValueError(f"{path}:{lineno}: expected 7 numbers 'timestamp ax ay az tx ty tz', found {line[:80]!r}")
        w2c = np.eye(4)
        w2c[:3, :3] = so3_exp(v[1:4])
        w2c[:3, 3] = v[4:7]
        ts.append(v[0])
        c2w.append(inverse_se3(w2c))
    if not ts:
        raise ValueError(f"{path}: empty ARKitScenes trajectory")
    order = np.argsort(ts, kind="stable")
    return np.asarray(ts)[order], np.asarray(c2w)[order]


def read_pincam(path: str | os.PathLike) -> Intrinsics:
    """A ``.pincam`` file (``width height fx fy cx cy``) -> :class:`Intrinsics`."""
    path = Path(path)
    try:
        v = [float(t) for t in path.read_text(encoding="utf-8").split()]
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ValueError(f"{path}: cannot read .pincam intrinsics ({exc})") from exc
    if len(v) != 6 or not np.isfinite(v).all() or v[0] <= 0 or v[1] <= 0 or v[2] <= 0 or v[3] <= 0:
        raise ValueError(f"{path}: expected 'width height fx fy cx cy' (6 positive numbers), found {v}")
    return Intrinsics(v[2], v[3], v[4], v[5], int(round(v[0])), int(round(v[1])))


def frame_timestamp(name: str) -> float:
    """``"<video_id>_<timestamp>"`` (a file STEM, e.g. ``"41069021_6845.801"``) -> seconds."""
    m = _NAME.match(name)
    if m is None:
        raise ValueError(f"ARKitScenes frame name {name!r}: expected '<video_id>_<timestamp>'")
    return float(m.group("ts"))
