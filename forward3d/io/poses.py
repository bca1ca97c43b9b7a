"""Known camera poses from a file, whatever its format, matched to the frames of an input.

Formats (:func:`read_pose_file`, by content): a COLMAP text model folder (``cameras.txt`` +
``images.txt``), a nerfstudio ``transforms.json``, a Redwood/Open3D ``.log``, a TUM trajectory (8 numbers
a line: ``timestamp tx ty tz qx qy qz qw``) or a text file with one row-major 4x4 ``c2w`` per line (16
numbers a line). All poses are OpenCV ``c2w``. :func:`match_poses` pairs them with frames by image name,
then by timestamp, then by order.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from forward3d.types import PointCloud

__all__ = ["PoseFile", "read_pose_file", "match_poses"]


@dataclass
class PoseFile:
    """Poses read from a file.

    Attributes:
        c2w: ``[M, 4, 4]`` float64 OpenCV camera-to-world.
        format: ``colmap``, ``transforms``, ``redwood``, ``tum`` or ``matrices``.
        names: M image names (COLMAP, transforms.json) or None.
        timestamps: ``[M]`` seconds (TUM, timestamped transforms.json) or None.
        K: ``[M, 3, 3]`` intrinsics (COLMAP, transforms.json) or None; image_sizes: ``[M, 2]`` ``(w, h)`` or None.
        points: the COLMAP model's points, or None.
    """

    c2w: np.ndarray
    format: str
    names: list[str] | None = None
    timestamps: np.ndarray | None = None
    K: np.ndarray | None = None
    image_sizes: np.ndarray | None = None
    points: PointCloud | None = None


def _read_matrices(path: Path) -> np.ndarray:
    from forward3d.io.trajectory import read_number_rows

    rows = [v for _, _, v in read_number_rows(path, 16, f"pose file {path}", "numbers (a row-major 4x4 c2w) or 8 (TUM)")]
    c2w = np.asarray(rows, np.float64).reshape(-1, 4, 4)
    bad = ~np.isfinite(c2w).all(axis=(1, 2)) | (np.abs(c2w[:, 3] - [0, 0, 0, 1]).max(axis=1) > 1e-6)
    if bad.any():
        raise ValueError(f"pose file {path}: pose {int(np.flatnonzero(bad)[0])} is not a finite 4x4 c2w with last "
                         "row 0 0 0 1")
    return c2w


def _first_columns(path: Path) -> int:
    with open(path, encoding="utf-8") as f:
        for line in f:
            s = line.strip()
            if s and not s.startswith("#"):
                return len(s.replace(",", " ").split())
    raise ValueError(f"pose file {path}: expected poses, found no data line")


def read_pose_file(path: str | os.PathLike) -> PoseFile:
    """Read known poses (see the module docstring for the formats).

    Raises:
        FileNotFoundError: no such file or folder. ValueError: an unknown or malformed format.
    """
    p = Path(path)
    if p.is_dir():
        for sub in (p, p / "sparse" / "0", p / "sparse", p / "colmap"):
            if (sub / "images.txt").is_file() and (sub / "cameras.txt").is_file():
                from forward3d.io.colmap import read_colmap_text

                cams = read_colmap_text(sub)
                return PoseFile(cams.c2w, "colmap", cams.names, None, cams.K, cams.image_sizes, cams.points)
        if (p / "transforms.json").is_file():
            p = p / "transforms.json"
        else:
            raise ValueError(f"--poses {path}: expected a COLMAP text model folder (cameras.txt, images.txt) or a "
                             "folder with transforms.json")
    if not p.is_file():
        raise FileNotFoundError(f"--poses {path}: not found")
    if p.suffix.lower() == ".json":
        from forward3d.io.nerfstudio import read_transforms_json

        cams = read_transforms_json(p)
        return PoseFile(cams.c2w, "transforms", cams.names, cams.extras.get("timestamps"), cams.K, cams.image_sizes)
    if p.suffix.lower() == ".log":
        from forward3d.io.trajectory import read_redwood_log

        return PoseFile(read_redwood_log(p), "redwood")
    if _first_columns(p) == 8:
        from forward3d.io.trajectory import read_tum

        ts, c2w = read_tum(p)
        return PoseFile(c2w, "tum", timestamps=ts)
    return PoseFile(_read_matrices(p), "matrices")


def match_poses(poses: PoseFile, frame_names: list[str], timestamps: np.ndarray, where: str = "--poses",
                max_diff: float = 0.02) -> np.ndarray:
    """Index into ``poses`` of each of N frames: by image name (file stem) when the file has names, else
    by timestamp (TUM) when every frame finds one within ``max_diff`` s, else by order.

    Raises:
        ValueError: a frame without a pose (the message names it and says how they were matched).
    """
    n, m = len(frame_names), len(poses.c2w)
    if poses.names is not None:
        stems = {Path(nm).stem: k for k, nm in enumerate(poses.names)}
        idx = [stems.get(Path(f).stem, -1) for f in frame_names]
        missing = [f for f, k in zip(frame_names, idx) if k < 0]
        if not missing:
            return np.asarray(idx, np.int64)
        if m != n:
            raise ValueError(f"{where}: no pose for frames {missing[:5]} (matched by image name; the file has "
                             f"{m} poses for {n} frames)")
    if poses.timestamps is not None:
        from forward3d.io.layouts import associate_timestamps

        pairs = dict(associate_timestamps(np.asarray(timestamps), poses.timestamps, max_diff))
        if len(pairs) == n:
            return np.asarray([pairs[i] for i in range(n)], np.int64)
    if m < n:
        raise ValueError(f"{where}: {m} poses for {n} frames (matched by order: give one pose per frame, or a "
                         "timestamped / named format)")
    return np.arange(n, dtype=np.int64)
