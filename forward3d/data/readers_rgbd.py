"""Training readers of the RGB-D scene datasets: ScanNet, TUM RGB-D, Replica, 7-Scenes, ARKitScenes, Habitat.

ScanNet (exported folders), TUM, Replica and 7-Scenes reuse the inference readers of
:mod:`forward3d.io.layouts` (same file-format code, same ``Frame`` type); ScanNet ``.sens`` files are
read with :class:`forward3d.io.sens.SensFile`. Depth is metric in every one of them.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from forward3d.data.sequence import (
    InvalidView,
    SequenceConfig,
    SequenceDataset,
    SequenceInfo,
    load_depth,
    make_frame,
    read_split_file,
    register_dataset,
)
from forward3d.io.layouts import ReplicaSource, ScanNetSource, SevenScenesSource, TumSource, interpolate_c2w
from forward3d.io.source_base import IndexedSource, natural_key, read_rgb
from forward3d.types import Frame

__all__ = ["ScanNetDataset", "TumDataset", "ReplicaDataset", "SevenScenesDataset", "ARKitScenesDataset",
           "HabitatDataset", "ScanNetConfig", "ARKitScenesConfig", "RGBDConfig"]

log = logging.getLogger(__name__)
_DIGITS = re.compile(r"(\d+)")


def frame_numbers(names: list[str]) -> tuple[np.ndarray | None, float]:
    """The last number in each name and their median increment, or ``(None, 1)`` when a name has none."""
    nums = []
    for n in names:
        m = _DIGITS.findall(n)
        if not m:
            return None, 1.0
        nums.append(int(m[-1]))
    arr = np.asarray(nums, dtype=np.int64)
    stride = float(np.median(np.diff(arr))) if len(arr) > 1 else 1.0
    return arr, max(stride, 1.0)


def _root(cfg: SequenceConfig, name: str) -> Path:
    if not cfg.root:
        raise ValueError(f"{name}: root is not set (the dataset folder)")
    root = Path(cfg.root).expanduser()
    if not root.is_dir():
        raise ValueError(f"{name}: root {root} is not a folder")
    return root


def _split_filter(root: Path, split: str | None, scenes: list[str], candidates: list[str], name: str) -> list[str]:
    """Scenes of ``split``: the first existing split file among ``candidates`` (relative to root),
    else all scenes (with an info message)."""
    if split is None:
        return scenes
    for c in candidates:
        p = root / c.format(split=split)
        if p.is_file():
            keep = set(read_split_file(p))
            return [s for s in scenes if s in keep]
    log.info("%s: no split file for %r under %s (tried %s); using all %d scenes", name, split, root,
             ", ".join(c.format(split=split) for c in candidates), len(scenes))
    return scenes


def _load_record(src: IndexedSource, i: int) -> Frame:
    try:
        return src.load(src.records[i])
    except ValueError as exc:
        if "no valid pixel" in str(exc):
            raise InvalidView(str(exc)) from exc
        raise


class _SourceDataset(SequenceDataset):
    """A dataset whose sequences are :class:`IndexedSource` readers of :mod:`forward3d.io.layouts`."""

    def _seq(self, scene: str, src: IndexedSource) -> SequenceInfo:
        names = [r.name for r in src.records]
        nums, stride = frame_numbers(names)
        poses = [r.c2w for r in src.records]
        c2w = np.stack(poses) if poses and all(p is not None for p in poses) else None
        return SequenceInfo(scene, names, nums, stride, c2w, src)

    def load_frame(self, seq: SequenceInfo, i: int, context: Any = None) -> Frame:
        return _load_record(seq.handle, i)


@dataclass
class RGBDConfig(SequenceConfig):
    """Config of TUM / Replica / 7-Scenes (the common fields only)."""


@register_dataset(aliases=("TUM_Seq",))
class TumDataset(_SourceDataset):
    """TUM RGB-D: ``root/<rgbd_dataset_freiburg*>/`` folders (rgb.txt, depth.txt, groundtruth.txt), or
    ``root`` itself one sequence. Split files: ``root/splits/{split}.txt`` (optional; else all)."""

    name = "TUM"
    config_class = RGBDConfig

    def scan(self) -> list[SequenceInfo]:
        root = _root(self.config, self.name)
        dirs = [root] if (root / "rgb.txt").is_file() else sorted(
            (d for d in root.iterdir() if (d / "rgb.txt").is_file()), key=lambda d: natural_key(d.name))
        names = _split_filter(root, self.config.split, [d.name for d in dirs], ["splits/{split}.txt"], self.name)
        return [self._seq(d.name, TumSource(d, on_error="raise")) for d in dirs if d.name in names]


@register_dataset(aliases=("Replica_Seq",))
class ReplicaDataset(_SourceDataset):
    """Replica as NICE-SLAM distributes it: ``root/<office0|room0|...>/results/`` + ``traj.txt``
    (``cam_params.json`` in the root). Split files: ``root/splits/{split}.txt`` (optional)."""

    name = "Replica"
    config_class = RGBDConfig

    def scan(self) -> list[SequenceInfo]:
        root = _root(self.config, self.name)
        dirs = [root] if (root / "results").is_dir() else sorted(
            (d for d in root.iterdir() if (d / "results").is_dir()), key=lambda d: natural_key(d.name))
        names = _split_filter(root, self.config.split, [d.name for d in dirs], ["splits/{split}.txt"], self.name)
        return [self._seq(d.name, ReplicaSource(d, on_error="raise")) for d in dirs if d.name in names]


@register_dataset(aliases=("SevenScenes_Seq",))
class SevenScenesDataset(_SourceDataset):
    """Microsoft 7-Scenes: ``root/<scene>/seq-XX/``; every sequence is one dataset sequence
    (``"chess/seq-01"``). Splits: the dataset's ``<scene>/TrainSplit.txt`` / ``TestSplit.txt``
    (lines ``sequence1``); ``val`` reads TestSplit. Without them, all sequences."""

    name = "SevenScenes"
    config_class = RGBDConfig

    def scan(self) -> list[SequenceInfo]:
        root = _root(self.config, self.name)
        scene_dirs = [root] if any(p.name.startswith("seq") for p in root.iterdir() if p.is_dir()) else sorted(
            (d for d in root.iterdir() if d.is_dir()), key=lambda d: natural_key(d.name))
        out = []
        split = self.config.split
        for sd in scene_dirs:
            seqs = sorted((d for d in sd.iterdir() if d.is_dir() and re.match(r"^seq-?\d+$", d.name)),
                          key=lambda d: natural_key(d.name))
            split_file = sd / {"train": "TrainSplit.txt"}.get(split or "", "TestSplit.txt")
            if split is not None and split_file.is_file():
                want = {int(m) for ln in read_split_file(split_file) for m in _DIGITS.findall(ln)[-1:]}
                seqs = [d for d in seqs if int(_DIGITS.findall(d.name)[-1]) in want]
            for d in seqs:
                src = SevenScenesSource(sd, sequence=d.name, on_error="raise")  # intrinsics sidecar: seq or scene
                out.append(self._seq(f"{sd.name}/{d.name}", src))
        return out


# --------------------------------------------------------------------------------------------------
# ScanNet
# --------------------------------------------------------------------------------------------------


@dataclass
class ScanNetConfig(SequenceConfig):
    """ScanNet fields. ``source``: read ``"auto"`` (exported folders when present, else the ``.sens``),
    ``"export"`` or ``"sens"``. ``split_file``: a scene list overriding the split lookup."""

    source: str = "auto"
    split_file: str = ""

    def validate(self) -> None:
        super().validate()
        if self.source not in ("auto", "export", "sens"):
            raise ValueError(f"ScanNetConfig.source: expected 'auto', 'export' or 'sens', found {self.source!r}")


class _SensHandle:
    """A ``.sens`` file indexed on first use (per DataLoader worker)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._sens = None

    def get(self):
        from forward3d.io.sens import SensFile

        if self._sens is None:
            self._sens = SensFile(self.path)
        return self._sens

    def __getstate__(self) -> dict:
        return {"path": self.path, "_sens": None}


@register_dataset(aliases=("ScanNet_Seq",))
class ScanNetDataset(SequenceDataset):
    """ScanNet v2: raw ``root/scans/<scene>/<scene>.sens`` (read by our parser) and/or the exported
    ``root/<scene>/`` or ``root/scans/<scene>/`` folders (``color/ depth/ pose/ intrinsic/``; see
    ``forward3d data prepare scannet``). Colour is resized to the 640x480 depth, ``K`` is the depth
    camera's; frames with an invalid (``-inf``) pose are replaced by neighbours. Splits:
    ``scannetv2_{split}.txt`` in ``root``, ``root/splits`` or ``root/Tasks/Benchmark`` (else all)."""

    name = "ScanNet"
    config_class = ScanNetConfig

    def scan(self) -> list[SequenceInfo]:
        from forward3d.io.sens import SensFile

        cfg: ScanNetConfig = self.config
        root = _root(cfg, self.name)
        found: dict[str, tuple[str, Path]] = {}
        for base in (root / "scans", root / "scans_test", root):
            if not base.is_dir():
                continue
            for d in sorted(base.iterdir(), key=lambda d: natural_key(d.name)):
                if not d.is_dir() or d.name in found or d.name in ("scans", "scans_test", "splits"):
                    continue
                sens = d / f"{d.name}.sens"
                exported = (d / "color").is_dir() or any(d.glob("frame-*.color.jpg"))
                if exported and cfg.source in ("auto", "export"):
                    found[d.name] = ("export", d)
                elif sens.is_file() and cfg.source in ("auto", "sens"):
                    found[d.name] = ("sens", sens)
        names = list(found)
        if cfg.split_file:
            keep = set(read_split_file(cfg.split_file))
            names = [n for n in names if n in keep]
        else:
            names = _split_filter(root, cfg.split, names, ["scannetv2_{split}.txt", "splits/scannetv2_{split}.txt",
                                                           "Tasks/Benchmark/scannetv2_{split}.txt"], self.name)
        out = []
        for n in names:
            kind, path = found[n]
            if kind == "export":
                src = ScanNetSource(path, on_error="raise")
                nums, stride = frame_numbers([r.name for r in src.records])
                out.append(SequenceInfo(n, [r.name for r in src.records], nums, stride, None, src))
            else:
                header = SensFile.read_header(path)
                out.append(SequenceInfo(n, [str(i) for i in range(header.num_frames)],
                                        np.arange(header.num_frames), 1.0, None, _SensHandle(path)))
        return out

    def load_frame(self, seq: SequenceInfo, i: int, context: Any = None) -> Frame:
        if isinstance(seq.handle, _SensHandle):
            sens = seq.handle.get()
            if i >= len(sens):
                raise ValueError(f"{seq.handle.path}: frame {i} is missing (truncated .sens file, {len(sens)} frames)")
            return sens.frame(i)
        return _load_record(seq.handle, i)


# --------------------------------------------------------------------------------------------------
# ARKitScenes
# --------------------------------------------------------------------------------------------------


@dataclass
class ARKitScenesConfig(SequenceConfig):
    """ARKitScenes fields. ``max_time_diff``: seconds between a frame and the trajectory samples used
    for its pose (interpolated between samples <= 2x this apart; frames without are dropped).
    ``sky_up``: turn the frames of videos recorded with the device rotated so that the sky is up, by
    the ``sky_direction`` column of the dataset's ``metadata.csv`` (Left: 90 degrees clockwise, Down:
    180, Right: 90 counter-clockwise; ``K`` and ``c2w`` follow the image)."""

    max_time_diff: float = 0.05
    sky_up: bool = True

    def validate(self) -> None:
        super().validate()
        if not self.max_time_diff > 0:
            raise ValueError(f"ARKitScenesConfig.max_time_diff: expected > 0, found {self.max_time_diff}")


_SKY_TURNS = {"up": 0, "left": 1, "down": 2, "right": 3}  # quarter turns clockwise that put the sky up


def _arkit_sky_directions(root: Path) -> dict[str, str]:
    """video id -> sky direction from the first ``metadata.csv`` at ``root`` or above it (3 levels)."""
    import csv

    for folder in [root, *list(root.parents)[:3]]:
        path = folder / "metadata.csv"
        if not path.is_file():
            continue
        try:
            with open(path, newline="", encoding="utf-8") as f:
                rows = list(csv.DictReader(f))
        except (OSError, UnicodeDecodeError, csv.Error) as exc:
            raise ValueError(f"{path}: cannot read ARKitScenes metadata ({exc})") from exc
        if rows and not {"video_id", "sky_direction"} <= set(rows[0]):
            raise ValueError(f"{path}: expected the columns video_id and sky_direction, found {sorted(rows[0])}")
        out = {}
        for lineno, row in enumerate(rows, 2):
            sky = (row["sky_direction"] or "").strip().lower()
            if sky not in _SKY_TURNS:
                raise ValueError(f"{path}:{lineno}: sky_direction expected Up, Down, Left or Right, "
                                 f"found {row['sky_direction']!r}")
            out[str(row["video_id"]).strip()] = sky
        return out
    return {}


def _arkit_video_dirs(root: Path, split: str | None) -> list[Path]:
    """Folders holding ``lowres_wide.traj`` (a video, or its ``<id>_frames/`` 3DOD sub-folder)."""
    if (root / "lowres_wide.traj").is_file():
        return [root]
    folder = {"train": "Training", "val": "Validation", "test": "Validation"}.get(split or "", "")
    bases = [root / folder] if folder and (root / folder).is_dir() else [root]
    if split is None:
        bases = [root / f for f in ("Training", "Validation") if (root / f).is_dir()] or [root]
    out = []
    for base in bases:
        for d in sorted((d for d in base.iterdir() if d.is_dir()), key=lambda d: natural_key(d.name)):
            for cand in (d, d / f"{d.name}_frames"):
                if (cand / "lowres_wide.traj").is_file():
                    out.append(cand)
                    break
    return out


@register_dataset(aliases=("ARKitScenes_Seq", "ARKit"))
class ARKitScenesDataset(SequenceDataset):
    """ARKitScenes raw (``raw/{Training,Validation}/<video_id>/``): ``lowres_wide/*.png`` 256x192 RGB,
    ``lowres_depth/*.png`` uint16 mm, per-frame ``lowres_wide_intrinsics/*.pincam``, the
    ``lowres_wide.traj`` trajectory (see :mod:`forward3d.io.arkitscenes`). ``root`` may be ``raw/``,
    a split folder or one video. Split: train -> Training, val/test -> Validation."""

    name = "ARKitScenes"
    config_class = ARKitScenesConfig

    def scan(self) -> list[SequenceInfo]:
        from forward3d.io.arkitscenes import frame_timestamp, read_traj

        cfg: ARKitScenesConfig = self.config
        root = _root(cfg, self.name)
        skies = _arkit_sky_directions(root) if cfg.sky_up else {}
        out = []
        for vd in _arkit_video_dirs(root, cfg.split):
            rgb_dir = vd / "lowres_wide"
            if not rgb_dir.is_dir() or not (vd / "lowres_depth").is_dir():
                log.warning("%s: %s lacks lowres_wide/ or lowres_depth/; skipped", self.name, vd)
                continue
            ts, c2w = read_traj(vd / "lowres_wide.traj")
            stems, poses, nums = [], [], []
            for p in sorted(rgb_dir.glob("*.png"), key=lambda p: frame_timestamp(p.stem)):
                t = frame_timestamp(p.stem)
                pose = interpolate_c2w(ts, c2w, t, cfg.max_time_diff)
                if pose is None:
                    continue
                stems.append(p.stem)
                poses.append(pose)
                nums.append(t)
            if not stems:
                log.warning("%s: %s: no frame has a pose within %g s", self.name, vd, cfg.max_time_diff)
                continue
            scene = vd.name[: -len("_frames")] if vd.name.endswith("_frames") else vd.name
            turns = _SKY_TURNS[skies.get(scene, "up")]
            if cfg.sky_up and skies and scene not in skies:
                log.warning("%s: %s is not in metadata.csv: its sky direction is taken as Up", self.name, scene)
            out.append(SequenceInfo(scene, stems, None, 1.0, np.stack(poses), (vd, turns)))
        return out

    def load_frame(self, seq: SequenceInfo, i: int, context: Any = None) -> Frame:
        from forward3d.io.arkitscenes import frame_timestamp, read_pincam

        from forward3d.data.views import rotate90

        vd, turns = seq.handle
        stem = seq.names[i]
        image = read_rgb(vd / "lowres_wide" / f"{stem}.png")
        depth = load_depth(vd / "lowres_depth" / f"{stem}.png", 1000.0)
        intr = read_pincam(vd / "lowres_wide_intrinsics" / f"{stem}.pincam")
        if (intr.width, intr.height) != (image.shape[1], image.shape[0]):
            intr = intr.scaled(image.shape[1], image.shape[0])
        frame = make_frame(image, depth, intr.K, seq.c2w[i], timestamp=frame_timestamp(stem), index=i, name=stem,
                           source=str(vd / "lowres_wide" / f"{stem}.png"))
        for _ in range(turns):  # sky up (metadata.csv sky_direction)
            frame = rotate90(frame)
        return frame


# --------------------------------------------------------------------------------------------------
# Habitat
# --------------------------------------------------------------------------------------------------


_IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png")


@register_dataset(aliases=("Habitat_Seq",))
class HabitatDataset(SequenceDataset):
    """Habitat-rendered sequences in the DUSt3R export format (:mod:`forward3d.io.habitat`): every folder
    under ``root`` (or ``root/{split}`` when it exists) holding ``*_camera_params.npz`` files is one
    sequence, its frames in natural order of their stems."""

    name = "Habitat"
    config_class = RGBDConfig

    def scan(self) -> list[SequenceInfo]:
        root = _root(self.config, self.name)
        if self.config.split and (root / self.config.split).is_dir():
            root = root / self.config.split
        folders: dict[Path, list[str]] = {}
        for cam in root.rglob("*_camera_params.npz"):
            stem = cam.name[: -len("_camera_params.npz")]
            if any((cam.parent / f"{stem}{s}").is_file() for s in _IMAGE_SUFFIXES):
                folders.setdefault(cam.parent, []).append(stem)
        out = []
        for folder in sorted(folders, key=lambda p: natural_key(str(p))):
            stems = sorted(folders[folder], key=natural_key)
            nums, stride = frame_numbers(stems)
            scene = folder.relative_to(root).as_posix() if folder != root else root.name
            out.append(SequenceInfo(scene, stems, nums, stride, None, folder))
        return out

    def load_frame(self, seq: SequenceInfo, i: int, context: Any = None) -> Frame:
        from forward3d.io.habitat import habitat_depth_path, read_habitat_camera, read_habitat_depth

        folder: Path = seq.handle
        stem = seq.names[i]
        img_path = next(folder / f"{stem}{s}" for s in _IMAGE_SUFFIXES if (folder / f"{stem}{s}").is_file())
        K, c2w = read_habitat_camera(folder / f"{stem}_camera_params.npz")
        dpath = habitat_depth_path(img_path)
        if dpath is None:
            raise ValueError(f"{img_path}: no depth file ({stem}_depth.exr / .npy / .png) beside it")
        return make_frame(read_rgb(img_path), read_habitat_depth(dpath), K, c2w, index=i, name=stem,
                          source=str(img_path))
