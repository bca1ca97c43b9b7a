"""Two image-folder layouts with ground-truth poses: a user's posed capture and Neural RGB-D (NRGBD).

- ``posed``: ``images/`` (RGB), ``depth/`` (16-bit PNG millimetres, same file stems), ``poses.txt`` (one
  line per image in file-name order: 16 numbers, the row-major 4x4 camera-to-world matrix, OpenCV axes,
  metres) and ``K.txt`` (the 3x3 intrinsics in pixels). This is what a capture app or a device log
  usually gives (e.g. ``shared/data/hololens_000``).
- ``nrgbd`` (Azinović et al., Neural RGB-D Surface Reconstruction; the scenes Spann3R and CUT3R score
  on): ``images/img{i}.png``, ``depth/depth{i}.png`` (16-bit millimetres), ``poses.txt`` (4 lines of 4
  numbers per frame, camera-to-world in OpenGL axes, ``nan`` for frames without a pose) and
  ``focal.txt`` (one focal length in pixels; the principal point is the image centre), as read by
  Spann3R's ``NRGBD`` dataset.

Both are :class:`~forward3d.io.sources.ImageFolderSource` readers (stride, size, depth units as there),
with ``has_gt_poses`` and the frames' ``c2w`` from the pose file.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from forward3d.io.source_base import checked_c2w, read_matrix_txt, skip_frames_without_depth
from forward3d.io.sources import ImageFolderSource
from forward3d.types import Intrinsics

__all__ = ["PosedFolderSource", "NRGBDSource", "detect_posed_folder"]

GL_TO_CV = np.diag([1.0, -1.0, -1.0, 1.0])  # OpenGL <-> OpenCV camera axes (right-multiplied on c2w)


def detect_posed_folder(path: str | Path) -> str | None:
    """``"posed"``, ``"nrgbd"`` or None for the folder ``path``."""
    p = Path(path)
    if not p.is_dir() or not (p / "images").is_dir() or not (p / "poses.txt").is_file():
        return None
    if (p / "K.txt").is_file():
        return "posed"
    if (p / "focal.txt").is_file():
        return "nrgbd"
    return None


def _read_pose_rows(path: Path, per_pose_lines: int) -> list[np.ndarray | None]:
    """Poses of a text file: ``per_pose_lines`` = 1 (16 numbers a line) or 4 (4 lines of 4 numbers)."""
    lines = [ln for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    if len(lines) % per_pose_lines:
        raise ValueError(f"{path}: expected {per_pose_lines} line(s) per pose, found {len(lines)} lines")
    out = []
    for i in range(0, len(lines), per_pose_lines):
        M = read_matrix_txt(path, text=" ".join(lines[i:i + per_pose_lines]))
        out.append(checked_c2w(M, f"{path} pose {i // per_pose_lines}"))
    return out


class _PosedImages(ImageFolderSource):
    def _attach_poses(self, poses: list[np.ndarray | None], path: Path) -> None:
        if len(poses) != len(self.records):
            raise ValueError(f"{path}: expected one pose per image ({len(self.records)} in images/), "
                             f"found {len(poses)}")
        for rec, c2w in zip(self.records, poses):
            rec.c2w = c2w
        self.has_gt_poses = any(c is not None for c in poses)


class PosedFolderSource(_PosedImages):
    """``images/ depth/ poses.txt K.txt`` (see the module docstring)."""

    layout = "posed"

    def __init__(self, path: str | Path, **kwargs) -> None:
        root = Path(path)
        super().__init__(root / "images", **kwargs)
        self.path = root
        K = read_matrix_txt(root / "K.txt", 3, 3)
        w, h = _first_image_size(self.records[0].image_path)
        if self.user_intrinsics is None:
            self.intrinsics = Intrinsics(K[0, 0], K[1, 1], K[0, 2], K[1, 2], w, h)
        self._attach_poses(_read_pose_rows(root / "poses.txt", 1), root / "poses.txt")


class NRGBDSource(_PosedImages):
    """Neural RGB-D scenes (see the module docstring); poses converted from OpenGL to OpenCV axes."""

    layout = "nrgbd"

    def __init__(self, path: str | Path, **kwargs) -> None:
        root = Path(path)
        super().__init__(root / "images", **kwargs)
        self.path = root
        for rec in self.records:  # img{i}.png <-> depth/depth{i}.png
            d = root / "depth" / f"depth{rec.name[3:]}.png"
            rec.depth_path = d if rec.name.startswith("img") and d.is_file() else rec.depth_path
        self.records, self.has_depth = skip_frames_without_depth(self.records, root / "depth")
        try:
            focal = float((root / "focal.txt").read_text(encoding="utf-8").split()[0])
        except (ValueError, IndexError) as exc:
            raise ValueError(f"{root / 'focal.txt'}: expected one focal length in pixels ({exc})") from exc
        w, h = _first_image_size(self.records[0].image_path)
        if self.user_intrinsics is None:
            self.intrinsics = Intrinsics(focal, focal, w / 2.0, h / 2.0, w, h)
        poses = [None if c is None else c @ GL_TO_CV for c in _read_pose_rows(root / "poses.txt", 4)]
        self._attach_poses(poses, root / "poses.txt")


def _first_image_size(path: Path) -> tuple[int, int]:
    from PIL import Image

    with Image.open(path) as im:
        return im.size
