"""Readers of the RGB-D dataset layouts: TUM RGB-D, Open3D/Redwood, ScanNet, Replica (NICE-SLAM), 7-Scenes
(Hypersim: :mod:`forward3d.io.hypersim`, dispatched from here).

Each follows its dataset's own conventions (file names, depth scale, pose format, intrinsics); see
the class docstrings. Frames are read lazily; index/trajectory files are parsed when the source is
opened, so a malformed one raises ``ValueError`` from :func:`forward3d.io.sources.open_frames`.
Use :func:`forward3d.io.sources.open_frames`, not these classes directly.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import numpy as np
from PIL import Image

from forward3d.io.source_base import (
    DEPTH_EXTS,
    IMAGE_EXTS,
    INTRINSICS_SIDECAR,
    FrameRecord,
    IndexedSource,
    checked_c2w,
    find_open3d_intrinsics,
    list_images,
    natural_key,
    read_matrix_txt,
    read_open3d_intrinsics,
    skip_frames_without_depth,
)
from forward3d.geometry.se3 import slerp_pose
from forward3d.types import Intrinsics

__all__ = [
    "TumSource",
    "RedwoodSource",
    "ScanNetSource",
    "ReplicaSource",
    "SevenScenesSource",
    "detect_dataset",
    "open_dataset",
    "TUM_INTRINSICS",
    "associate_timestamps",
    "interpolate_c2w",
]

log = logging.getLogger(__name__)

# TUM RGB-D: https://cvg.cit.tum.de/data/datasets/rgbd-dataset/file_formats (ROS default for unknown)
TUM_INTRINSICS = {
    "freiburg1": Intrinsics(517.3, 516.5, 318.6, 255.3, 640, 480),
    "freiburg2": Intrinsics(520.9, 521.0, 325.1, 249.7, 640, 480),
    "freiburg3": Intrinsics(535.4, 539.2, 320.1, 247.6, 640, 480),
}
TUM_DEFAULT_INTRINSICS = Intrinsics(525.0, 525.0, 319.5, 239.5, 640, 480)
PRIMESENSE_INTRINSICS = Intrinsics(525.0, 525.0, 319.5, 239.5, 640, 480)  # Open3D PrimeSenseDefault
REPLICA_INTRINSICS = Intrinsics(600.0, 600.0, 599.5, 339.5, 1200, 680)
SEVEN_SCENES_INTRINSICS = Intrinsics(585.0, 585.0, 320.0, 240.0, 640, 480)
RGBD_FPS = 30.0  # timestamps of layouts without them: index / 30 (the sensors' frame rate)

_FLAT_COLOR = re.compile(r"^frame-(\d+)\.color\.(jpg|jpeg|png)$", re.IGNORECASE)
_SEQ_DIR = re.compile(r"^seq-?\d+$", re.IGNORECASE)


def _image_size(path: Path) -> tuple[int, int]:
    """``(W, H)`` from the file header (no decoding)."""
    try:
        with Image.open(path) as im:
            return int(im.width), int(im.height)
    except Exception as exc:
        raise ValueError(f"{path}: not a readable image ({type(exc).__name__}: {exc})") from exc


def _require_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise ValueError(f"{path}: expected the {what} folder, found none")
    return path


# --------------------------------------------------------------------------------------------------
# TUM RGB-D
# --------------------------------------------------------------------------------------------------


def _read_tum_list(path: Path, min_cols: int, what: str) -> list[list[str]]:
    """Non-comment rows of a TUM text file (``timestamp value ...``)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: cannot read {what} ({exc})") from exc
    rows = []
    for lineno, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.replace(",", " ").split()
        try:
            float(parts[0])
        except ValueError:
            parts = []
        if len(parts) < min_cols:
            raise ValueError(f"{path}:{lineno}: malformed {what} line: expected 'timestamp' + {min_cols - 1} "
                             f"value(s), found {line[:80]!r}")
        rows.append(parts)
    return rows


def associate_timestamps(a: np.ndarray, b: np.ndarray, max_diff: float = 0.02) -> list[tuple[int, int]]:
    """Pairs ``(i, j)`` of :func:`forward3d.io.trajectory.associate` (TUM ``associate.py``), sorted by ``a``."""
    from forward3d.io.trajectory import associate

    ia, ib = associate(a, b, max_diff=max_diff)
    return list(zip(ia.tolist(), ib.tolist()))


def _tum_intrinsics(root: Path) -> Intrinsics:
    sidecar = find_open3d_intrinsics(root)
    if sidecar is not None:
        return read_open3d_intrinsics(sidecar)
    for name in (root.resolve().name, root.resolve().parent.name):
        m = re.search(r"freiburg(\d)", name, re.IGNORECASE) or re.search(r"(?:^|[_\-])fr(\d)(?:[_\-]|$)", name, re.I)
        if m and f"freiburg{m.group(1)}" in TUM_INTRINSICS:
            return TUM_INTRINSICS[f"freiburg{m.group(1)}"]
    log.warning("%s: TUM camera unknown (folder name has no freiburg1/2/3): using the default intrinsics "
                "fx=fy=525, cx=319.5, cy=239.5; pass intrinsics= to override", root)
    return TUM_DEFAULT_INTRINSICS


def interpolate_c2w(gt_ts: np.ndarray, gt_c2w: np.ndarray, ts: float, max_diff: float = 0.02) -> np.ndarray | None:
    """Ground-truth c2w at ``ts`` from a trajectory sorted by time (``[M]``, ``[M, 4, 4]``).

    Between two samples at most ``2 * max_diff`` apart: interpolated (slerp); otherwise the nearest
    sample within ``max_diff``; otherwise ``None``. An exact timestamp returns its sample unchanged.
    """
    if len(gt_ts) == 0:
        return None
    k = int(np.searchsorted(gt_ts, ts))
    if k < len(gt_ts) and gt_ts[k] == ts:
        return gt_c2w[k].copy()
    if 0 < k < len(gt_ts) and 0 < gt_ts[k] - gt_ts[k - 1] <= 2 * max_diff:
        return slerp_pose(gt_c2w[k - 1], gt_c2w[k], (ts - gt_ts[k - 1]) / (gt_ts[k] - gt_ts[k - 1]))
    j = min((j for j in (k - 1, k) if 0 <= j < len(gt_ts)), key=lambda j: abs(gt_ts[j] - ts))
    return gt_c2w[j].copy() if abs(gt_ts[j] - ts) <= max_diff else None


class TumSource(IndexedSource):
    """TUM RGB-D sequence: ``rgb.txt``, ``depth.txt`` (``timestamp path`` lines, ``#`` comments),
    optional ``groundtruth.txt`` (``timestamp tx ty tz qx qy qz qw``, quaternion xyzw on disk).

    Colour and depth are associated by nearest timestamp (greedy one-to-one, ``|dt| < 0.02 s``,
    like TUM's ``associate.py``); colour frames without a depth match are dropped. Ground truth
    (:func:`interpolate_c2w`): interpolated between samples <= 0.04 s apart, else the nearest within
    ``max_gt_diff`` (0.02 s), else ``c2w = None``. Depth PNG uint16 / 5000.
    Intrinsics by folder name (freiburg1/2/3, default 525/525/319.5/239.5 with a warning), or a
    ``camera_intrinsic.json`` (Open3D format) in the folder. Lens distortion is ignored.
    ``Frame.index`` is the position among the associated frames.
    """

    layout = "tum"
    depth_scale = 5000.0

    def __init__(self, path: Path, *, max_diff: float = 0.02, max_gt_diff: float = 0.02, **kwargs) -> None:
        super().__init__(path, **kwargs)
        root = Path(path)
        rgb_txt = root / "rgb.txt"
        if not rgb_txt.is_file():
            raise ValueError(f"{root}: not a TUM RGB-D folder: rgb.txt missing")
        rgb = _read_tum_list(rgb_txt, 2, "rgb.txt")
        if not rgb:
            raise ValueError(f"{rgb_txt}: no frame entries (expected 'timestamp filename' lines)")
        depth_txt = root / "depth.txt"
        depth = _read_tum_list(depth_txt, 2, "depth.txt") if depth_txt.is_file() else []
        self.has_depth = bool(depth)
        if depth_txt.is_file() and not depth:
            log.warning("%s: no entries; reading colour only", depth_txt)
        if self.has_depth:
            pairs = associate_timestamps([float(r[0]) for r in rgb], [float(d[0]) for d in depth], max_diff)
            if not pairs:
                raise ValueError(f"{depth_txt}: no depth timestamp within {max_diff} s of any rgb.txt timestamp")
            if len(pairs) < len(rgb):
                log.info("%s: %d of %d colour frames have no depth within %g s and are dropped",
                         root, len(rgb) - len(pairs), len(rgb), max_diff)
            items = [(rgb[i], depth[j]) for i, j in pairs]
        else:
            items = [(r, None) for r in rgb]
        gt_ts, gt_c2w = self._read_groundtruth(root / "groundtruth.txt")
        missing = []
        records: list[FrameRecord] = []
        for r, d in items:
            img, dep = root / r[1], (root / d[1] if d is not None else None)
            absent = [p for p in (img, dep) if p is not None and not p.is_file()]
            if absent:
                missing.append(absent[0])
                continue
            ts = float(r[0])
            c2w = None if gt_ts is None else interpolate_c2w(gt_ts, gt_c2w, ts, max_gt_diff)
            records.append(FrameRecord(len(records), Path(r[1]).stem, ts, img, dep, c2w))
        if missing:
            log.warning("%s: %d entries of rgb.txt/depth.txt name missing files (first: %s); they are skipped",
                        root, len(missing), missing[0])
        if not records:
            raise ValueError(f"{rgb_txt}: none of the {len(items)} listed frames exists on disk (first missing: "
                             f"{missing[0] if missing else '?'})")
        self.records = records
        self.has_gt_poses = any(r.c2w is not None for r in records)
        self.intrinsics = _tum_intrinsics(root)

    @staticmethod
    def _read_groundtruth(path: Path) -> tuple[np.ndarray | None, np.ndarray | None]:
        """``groundtruth.txt`` (TUM: ``timestamp tx ty tz qx qy qz qw``) sorted by time, or ``(None, None)``."""
        from forward3d.io.trajectory import read_tum

        if not path.is_file():
            return None, None
        ts, c2w = read_tum(path)
        order = np.argsort(ts, kind="stable")
        return ts[order], c2w[order]


# --------------------------------------------------------------------------------------------------
# Open3D / Redwood
# --------------------------------------------------------------------------------------------------


def read_open3d_log(path: Path) -> dict[int, np.ndarray]:
    """Open3D/Redwood ``.log`` trajectory: per frame a ``i j n`` line then a 4x4 c2w. ``{i: c2w}``
    (:func:`forward3d.io.trajectory.read_redwood_log_ids`)."""
    from forward3d.io.trajectory import read_redwood_log_ids

    ids, c2w = read_redwood_log_ids(path)
    return {int(i): m for i, m in zip(ids, c2w)}


def _find_intrinsic_json(*folders: Path) -> Path | None:
    preferred = (INTRINSICS_SIDECAR, "camera_primesense.json", "intrinsic.json", "intrinsics.json")
    hit = find_open3d_intrinsics(*folders, names=preferred)
    if hit is not None:
        return hit
    for folder in folders:
        for p in sorted(folder.glob("*.json")):
            try:
                if "intrinsic_matrix" in json.loads(p.read_text(encoding="utf-8")):
                    return p
            except (OSError, ValueError, TypeError):
                continue
    return None


class RedwoodSource(IndexedSource):
    """Open3D reconstruction-system / Redwood layout: ``color/`` (or ``image/``, ``rgb/``) jpg|png,
    ``depth/`` 16-bit PNG millimetres (/ 1000), a ``*.log`` trajectory (per frame ``i j n`` + 4x4 c2w)
    and an Open3D intrinsic json (default PrimeSense 640x480, fx=fy=525, cx=319.5, cy=239.5).

    Colour and depth are paired by file stem, else by sorted position. Timestamps: index / 30.
    """

    layout = "redwood"
    depth_scale = 1000.0

    def __init__(self, path: Path, **kwargs) -> None:
        super().__init__(path, **kwargs)
        root = Path(path)
        color_dir = next((root / n for n in ("color", "image", "rgb") if (root / n).is_dir()), None)
        if color_dir is None:
            raise ValueError(f"{root}: not an Open3D/Redwood folder: expected a color/ (or image/, rgb/) folder")
        depth_dir = _require_dir(root / "depth", "Redwood depth/")
        colors = list_images(color_dir)
        depths = list_images(depth_dir, DEPTH_EXTS)
        if not colors:
            raise ValueError(f"{color_dir}: no colour images ({', '.join(IMAGE_EXTS)})")
        by_stem = {d.stem: d for d in depths}
        if all(c.stem in by_stem for c in colors):
            pairs = [(c, by_stem[c.stem]) for c in colors]
        elif len(colors) == len(depths):
            pairs = list(zip(colors, depths))
        elif depths and set(by_stem) <= {c.stem for c in colors}:  # same names, some depth files missing
            pairs = [(c, by_stem.get(c.stem)) for c in colors]
        else:
            raise ValueError(f"{root}: cannot pair colour and depth: {len(colors)} files in {color_dir.name}/, "
                             f"{len(depths)} in depth/, and their names differ")
        logs = sorted(root.glob("*.log"), key=lambda p: (0 if "traj" in p.name.lower() else 1, natural_key(p.name)))
        traj = read_open3d_log(logs[0]) if logs else {}
        if len(logs) > 1:
            log.info("%s: several .log files, using %s", root, logs[0].name)
        if traj and len(traj) != len(pairs):
            log.warning("%s: trajectory has %d poses for %d frames; frames without one get c2w=None",
                        logs[0], len(traj), len(pairs))
        records = [FrameRecord(i, c.stem, i / RGBD_FPS, c, d, traj.get(i)) for i, (c, d) in enumerate(pairs)]
        self.records, self.has_depth = skip_frames_without_depth(records, root)
        self.has_gt_poses = bool(traj)
        js = _find_intrinsic_json(root, root.parent)
        self.intrinsics = read_open3d_intrinsics(js) if js is not None else PRIMESENSE_INTRINSICS


# --------------------------------------------------------------------------------------------------
# ScanNet
# --------------------------------------------------------------------------------------------------


def _read_scannet_info(path: Path) -> dict[str, str]:
    """``_info.txt`` of the ScanNet C++ SensReader export (``key = value`` lines)."""
    out = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if "=" in line:
            k, v = line.split("=", 1)
            out[k.strip()] = v.strip()
    return out


class ScanNetSource(IndexedSource):
    """ScanNet exported frames, two forms:

    - python SensReader export: ``color/N.jpg``, ``depth/N.png`` (uint16 mm), ``pose/N.txt`` (4x4 c2w),
      ``intrinsic/intrinsic_color.txt`` and ``intrinsic/intrinsic_depth.txt`` (4x4);
    - flat C++ export: ``frame-XXXXXX.color.jpg``, ``.depth.png``, ``.pose.txt`` with ``intrinsic/``
      or ``_info.txt`` (``m_calibrationColorIntrinsic``, ``m_calibrationDepthIntrinsic``, ``m_depthShift``).

    Colour (1296x968) and depth (640x480) differ in size: with depth, the colour image is resized to
    the depth size and ``K`` is the DEPTH intrinsics (as NICE-SLAM/SplaTAM do); without depth the colour
    intrinsics. Invalid poses (``-inf``) give ``c2w = None`` with a warning. Timestamps: index / 30.
    """

    layout = "scannet"
    depth_scale = 1000.0
    resize_color_to_depth = True

    def __init__(self, path: Path, **kwargs) -> None:
        super().__init__(path, **kwargs)
        root = Path(path)
        flat = sorted((p for p in root.iterdir() if _FLAT_COLOR.match(p.name)), key=lambda p: natural_key(p.name))
        k_color = k_depth = None
        if flat:
            records = []
            for i, c in enumerate(flat):
                stem = c.name.split(".")[0]  # frame-000000
                d, pz = root / f"{stem}.depth.png", root / f"{stem}.pose.txt"
                records.append(FrameRecord(i, stem, i / RGBD_FPS, c, d if d.is_file() else None,
                                           pose_path=pz if pz.is_file() else None))
        elif (root / "color").is_dir():
            colors = list_images(root / "color")
            if not colors:
                raise ValueError(f"{root / 'color'}: no colour images")
            records = []
            for i, c in enumerate(colors):
                d, pz = root / "depth" / f"{c.stem}.png", root / "pose" / f"{c.stem}.txt"
                records.append(FrameRecord(i, c.stem, i / RGBD_FPS, c, d if d.is_file() else None,
                                           pose_path=pz if pz.is_file() else None))
        else:
            raise ValueError(f"{root}: not a ScanNet export: expected color/ depth/ pose/ intrinsic/ folders or "
                             f"frame-XXXXXX.color.jpg files")
        records, self.has_depth = skip_frames_without_depth(records, root)
        self.has_gt_poses = any(r.pose_path is not None for r in records)
        self.records = records
        # intrinsics ------------------------------------------------------------------------------
        intr_dir, info = root / "intrinsic", root / "_info.txt"
        if intr_dir.is_dir():
            if (intr_dir / "intrinsic_color.txt").is_file():
                k_color = read_matrix_txt(intr_dir / "intrinsic_color.txt")[:3, :3]
            if (intr_dir / "intrinsic_depth.txt").is_file():
                k_depth = read_matrix_txt(intr_dir / "intrinsic_depth.txt")[:3, :3]
        elif info.is_file():
            meta = _read_scannet_info(info)
            if "m_calibrationColorIntrinsic" in meta:
                k_color = read_matrix_txt(info, text=meta["m_calibrationColorIntrinsic"])[:3, :3]
            if "m_calibrationDepthIntrinsic" in meta:
                k_depth = read_matrix_txt(info, text=meta["m_calibrationDepthIntrinsic"])[:3, :3]
            if "m_depthShift" in meta:
                try:
                    self.depth_scale = float(meta["m_depthShift"])
                except ValueError as exc:
                    raise ValueError(f"{info}: m_depthShift is not a number: {meta['m_depthShift']!r}") from exc
        first = records[0]
        if self.has_depth and k_depth is not None:
            self.intrinsics = Intrinsics.from_K(k_depth, *_image_size(first.depth_path))
        elif k_color is not None:
            self.intrinsics = Intrinsics.from_K(k_color, *_image_size(first.image_path))
            if self.has_depth:
                log.warning("%s: no depth intrinsics; using the colour intrinsics scaled to the depth size", root)
        else:
            log.warning("%s: no intrinsic/ folder or _info.txt: frames have no K unless intrinsics= is given", root)


# --------------------------------------------------------------------------------------------------
# Replica (NICE-SLAM)
# --------------------------------------------------------------------------------------------------


def _read_replica_camera(root: Path) -> tuple[Intrinsics, float] | None:
    """``cam_params.json`` (``{"camera": {w, h, fx, fy, cx, cy, scale}}``) or a NICE-SLAM yaml ``cam:``."""
    for folder in (root, root.parent):
        p = folder / "cam_params.json"
        if p.is_file():
            try:
                c = json.loads(p.read_text(encoding="utf-8"))["camera"]
                intr = Intrinsics(float(c["fx"]), float(c["fy"]), float(c["cx"]), float(c["cy"]), int(c["w"]), int(c["h"]))
                return intr, float(c.get("scale", 6553.5))
            except Exception as exc:
                raise ValueError(f"{p}: expected {{'camera': {{'w','h','fx','fy','cx','cy','scale'}}}} "
                                 f"({type(exc).__name__}: {exc})") from exc
    for folder in (root, root.parent):
        for p in sorted(folder.glob("*.yaml")):
            try:
                import yaml

                cam = (yaml.safe_load(p.read_text(encoding="utf-8")) or {}).get("cam")
            except Exception:  # optional file: pyyaml missing or not a config -> ignore
                continue
            if isinstance(cam, dict) and all(k in cam for k in ("H", "W", "fx", "fy", "cx", "cy")):
                intr = Intrinsics(float(cam["fx"]), float(cam["fy"]), float(cam["cx"]), float(cam["cy"]),
                                  int(cam["W"]), int(cam["H"]))
                return intr, float(cam.get("png_depth_scale", 6553.5))
    return None


class ReplicaSource(IndexedSource):
    """Replica as distributed by NICE-SLAM: ``results/frameXXXXXX.jpg``, ``results/depthXXXXXX.png``
    (uint16 / 6553.5), ``traj.txt`` (one row-major 4x4 c2w per line, OpenCV axes). Intrinsics 1200x680,
    fx=fy=600, cx=599.5, cy=339.5, or ``cam_params.json`` / a NICE-SLAM yaml ``cam:`` block if present
    (in the scene folder or its parent). Timestamps: index / 30.
    """

    layout = "replica"
    depth_scale = 6553.5

    def __init__(self, path: Path, **kwargs) -> None:
        super().__init__(path, **kwargs)
        root = Path(path)
        if root.name == "results" and not (root / "results").is_dir():
            root = root.parent
        results = _require_dir(root / "results", "Replica results/")
        colors = [p for p in list_images(results) if p.name.lower().startswith("frame")]
        if not colors:
            raise ValueError(f"{results}: no frameXXXXXX.jpg images")
        traj_path = root / "traj.txt"
        traj: list[np.ndarray] = []
        if traj_path.is_file():
            for lineno, line in enumerate(traj_path.read_text(encoding="utf-8").splitlines(), 1):
                if line.strip():
                    try:
                        traj.append(read_matrix_txt(traj_path, text=line))
                    except ValueError as exc:
                        raise ValueError(f"{traj_path}:{lineno}: malformed pose line: expected 16 numbers "
                                         f"(row-major 4x4 c2w) ({exc})") from exc
            if len(traj) != len(colors):
                log.warning("%s: %d poses for %d frames; frames without one get c2w=None", traj_path, len(traj), len(colors))
        records = []
        for i, c in enumerate(colors):
            d = results / f"depth{c.stem[len('frame'):]}.png"
            c2w = checked_c2w(traj[i], f"{traj_path}:{i + 1}") if i < len(traj) else None
            records.append(FrameRecord(i, c.stem, i / RGBD_FPS, c, d if d.is_file() else None, c2w))
        records, self.has_depth = skip_frames_without_depth(records, results)
        self.has_gt_poses = bool(traj)
        self.records = records
        cam = _read_replica_camera(root)
        self.intrinsics, self.depth_scale = cam if cam is not None else (REPLICA_INTRINSICS, 6553.5)


# --------------------------------------------------------------------------------------------------
# 7-Scenes
# --------------------------------------------------------------------------------------------------


class SevenScenesSource(IndexedSource):
    """Microsoft 7-Scenes: ``seq-XX/frame-XXXXXX.color.png``, ``.depth.png`` (uint16 mm, 65535 = invalid),
    ``.pose.txt`` (4x4 c2w). Intrinsics 640x480, fx=fy=585, cx=320, cy=240 (or a ``camera_intrinsic.json``
    in the sequence or scene folder). A scene folder with several ``seq-XX`` folders reads ONE sequence:
    ``sequence=`` (name like ``"seq-02"`` or a number) or, by default, the first in natural order.
    Colour and depth are not registered in the real dataset (known limitation). Timestamps: index / 30.
    """

    layout = "7scenes"
    depth_scale = 1000.0
    depth_invalid = (65535,)

    def __init__(self, path: Path, *, sequence: str | int | None = None, **kwargs) -> None:
        super().__init__(path, **kwargs)
        root = Path(path)
        seq_dir = root
        if not any(_FLAT_COLOR.match(p.name) for p in root.iterdir()):
            seqs = sorted((d for d in root.iterdir() if d.is_dir() and _SEQ_DIR.match(d.name)),
                          key=lambda d: natural_key(d.name))
            if not seqs:
                raise ValueError(f"{root}: not a 7-Scenes folder: expected seq-XX/ folders or frame-XXXXXX.color.png")
            if sequence is None:
                seq_dir = seqs[0]
                if len(seqs) > 1:
                    log.info("%s: %d sequences, reading %s (choose with sequence=)", root, len(seqs), seq_dir.name)
            else:
                want = str(sequence)
                match = [d for d in seqs if d.name == want or (want.isdigit() and re.sub(r"\D", "", d.name)
                                                               and int(re.sub(r"\D", "", d.name)) == int(want))]
                if not match:
                    raise ValueError(f"{root}: sequence {want!r} not found; available: {', '.join(d.name for d in seqs)}")
                seq_dir = match[0]
        elif sequence is not None:
            log.warning("%s: is a single sequence, sequence=%r ignored", root, sequence)
        colors = sorted((p for p in seq_dir.iterdir() if _FLAT_COLOR.match(p.name)), key=lambda p: natural_key(p.name))
        if not colors:
            raise ValueError(f"{seq_dir}: no frame-XXXXXX.color.png images")
        records = []
        for i, c in enumerate(colors):
            stem = c.name.split(".")[0]
            d, pz = seq_dir / f"{stem}.depth.png", seq_dir / f"{stem}.pose.txt"
            records.append(FrameRecord(i, stem, i / RGBD_FPS, c, d if d.is_file() else None,
                                       pose_path=pz if pz.is_file() else None))
        records, self.has_depth = skip_frames_without_depth(records, seq_dir)
        self.has_gt_poses = any(r.pose_path is not None for r in records)
        self.records = records
        self.sequence_dir = seq_dir
        js = find_open3d_intrinsics(seq_dir, root)
        self.intrinsics = read_open3d_intrinsics(js) if js is not None else SEVEN_SCENES_INTRINSICS


# --------------------------------------------------------------------------------------------------
# Detection and dispatch
# --------------------------------------------------------------------------------------------------


def detect_dataset(p: Path) -> str | None:
    """The RGB-D dataset layout of folder ``p``, or ``None`` (see :func:`forward3d.io.sources.detect_layout`)."""
    from forward3d.io.hypersim import is_hypersim_scene

    from forward3d.io.posed_folders import detect_posed_folder

    if is_hypersim_scene(p):
        return "hypersim"
    posed = detect_posed_folder(p)  # images/ + poses.txt + K.txt (posed) or focal.txt (nrgbd)
    if posed is not None:
        return posed
    if (p / "rgb.txt").is_file():
        return "tum"
    results = p / "results"
    if results.is_dir() and any(f.name.lower().startswith("frame") for f in list_images(results)):
        return "replica"
    if p.name == "results" and (p.parent / "traj.txt").is_file():
        return "replica"
    flat = [f for f in p.iterdir() if _FLAT_COLOR.match(f.name)]
    if flat:
        jpg = any(f.suffix.lower() in (".jpg", ".jpeg") for f in flat)
        return "scannet" if (jpg or (p / "intrinsic").is_dir() or (p / "_info.txt").is_file()) else "7scenes"
    for d in p.iterdir():
        if d.is_dir() and _SEQ_DIR.match(d.name) and any(_FLAT_COLOR.match(f.name) for f in d.iterdir()):
            return "7scenes"
    if (p / "color").is_dir() and ((p / "pose").is_dir() or (p / "intrinsic").is_dir()):
        return "scannet"
    if any((p / n).is_dir() for n in ("color", "image", "rgb")) and (p / "depth").is_dir():
        return "redwood"
    return None


_SOURCES = {"tum": TumSource, "redwood": RedwoodSource, "scannet": ScanNetSource, "replica": ReplicaSource,
            "7scenes": SevenScenesSource}


def open_dataset(layout: str, path: Path, *, sequence: str | int | None = None, **kwargs) -> IndexedSource:
    """Open an RGB-D dataset folder with the reader of ``layout``."""
    if not Path(path).is_dir():
        raise ValueError(f"{path}: the {layout} layout needs a folder, found a file")
    if layout == "7scenes":
        return SevenScenesSource(path, sequence=sequence, **kwargs)
    if layout == "hypersim":  # a scene's camera trajectories: sequence = cam_XX (default the first)
        from forward3d.io.hypersim import HypersimSource

        return HypersimSource(path, camera=sequence, **kwargs)
    if sequence is not None:
        log.warning("sequence=%r is only used by the 7scenes and hypersim layouts; ignored for %s", sequence, layout)
    if layout in ("posed", "nrgbd"):
        from forward3d.io.posed_folders import NRGBDSource, PosedFolderSource

        return (PosedFolderSource if layout == "posed" else NRGBDSource)(path, **kwargs)
    return _SOURCES[layout](path, **kwargs)
