"""Hypersim training / evaluation reader: one sequence per camera trajectory (``<scene>/<cam_XX>``).

Reads the official download (``root/ai_VVV_NNN/...``, or ``root`` one scene) with
:class:`forward3d.io.hypersim.HypersimSource` (tone-mapped colour, planar metric depth converted from the
ray distances, OpenCV ``c2w`` in metres, the per-scene ``K`` of ``metadata_camera_parameters.csv``).
Splits: ``metadata_images_split_scene_v1.csv`` (ml-hypersim ``evermotion_dataset/analysis``) in ``root``
keeps the frames with ``included_in_public_release == True`` and ``split_partition_name == split``;
without it every scene and frame is used (an info message). Needs h5py (``pip install forward3d[data]``).
"""

from __future__ import annotations

import csv
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from forward3d.data.readers_rgbd import _load_record, _root, frame_numbers
from forward3d.data.sequence import SequenceConfig, SequenceDataset, SequenceInfo, register_dataset
from forward3d.io.hypersim import HypersimSource, hypersim_cameras, is_hypersim_scene
from forward3d.io.source_base import natural_key
from forward3d.types import Frame

__all__ = ["HypersimConfig", "HypersimDataset", "SPLIT_CSV", "read_hypersim_split"]

log = logging.getLogger(__name__)
SPLIT_CSV = "metadata_images_split_scene_v1.csv"


@dataclass
class HypersimConfig(SequenceConfig):
    """Hypersim fields. ``camera_parameters``: the ``metadata_camera_parameters.csv`` (default: searched
    beside the scenes). ``cameras``: keep only these camera names (``cam_00``...); empty = all."""

    camera_parameters: str = ""
    cameras: tuple[str, ...] = ()


def read_hypersim_split(path: str | Path, split: str) -> dict[tuple[str, str], set[int]]:
    """``(scene, camera) -> frame ids`` of ``split`` in the official split csv (public frames only)."""
    path = Path(path)
    out: dict[tuple[str, str], set[int]] = {}
    try:
        with path.open(newline="", encoding="utf-8") as fh:
            for row in csv.DictReader(fh):
                if row.get("split_partition_name") != split or row.get("included_in_public_release") != "True":
                    continue
                out.setdefault((row["scene_name"], row["camera_name"]), set()).add(int(row["frame_id"]))
    except (OSError, KeyError, ValueError) as exc:
        raise ValueError(f"{path}: expected the Hypersim split csv (scene_name, camera_name, frame_id, "
                         f"included_in_public_release, split_partition_name) ({type(exc).__name__}: {exc})") from None
    return out


@register_dataset(aliases=("Hypersim_Seq",))
class HypersimDataset(SequenceDataset):
    """Hypersim camera trajectories (see the module docstring)."""

    name = "Hypersim"
    config_class = HypersimConfig

    def scan(self) -> list[SequenceInfo]:
        cfg: HypersimConfig = self.config
        root = _root(cfg, self.name)
        scenes = [root] if is_hypersim_scene(root) else sorted(
            (d for d in root.iterdir() if d.is_dir() and is_hypersim_scene(d)), key=lambda d: natural_key(d.name))
        split = None
        if cfg.split is not None:
            if (root / SPLIT_CSV).is_file():
                split = read_hypersim_split(root / SPLIT_CSV, cfg.split)
            else:
                log.info("%s: no %s under %s; using all %d scenes", self.name, SPLIT_CSV, root, len(scenes))
        out = []
        for sd in scenes:
            for cam in hypersim_cameras(sd):
                if cfg.cameras and cam not in cfg.cameras:
                    continue
                keep = None if split is None else split.get((sd.name, cam))
                if keep is not None and not keep or split is not None and keep is None:
                    continue
                src = HypersimSource(sd, camera=cam, camera_parameters=cfg.camera_parameters or None, on_error="raise")
                if keep is not None:
                    src.records = [r for r in src.records if int(r.name.split(".")[1]) in keep]
                    for i, r in enumerate(src.records):
                        r.index = i
                if not src.records:
                    continue
                names = [r.name for r in src.records]
                nums, stride = frame_numbers(names)
                c2w = np.stack([r.c2w for r in src.records])
                out.append(SequenceInfo(f"{sd.name}/{cam}", names, nums, stride, c2w, src))
        return out

    def load_frame(self, seq: SequenceInfo, i: int, context: Any = None) -> Frame:
        return _load_record(seq.handle, i)
