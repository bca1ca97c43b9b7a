"""ScanNet++ training reader: DSLR (undistorted pinhole images + rendered depth) and iPhone sequences.

Reads the layout of the download (``root/data/<scene>/...``, see :mod:`forward3d.io.scannetpp`) after
the preprocessing ``forward3d data prepare scannetpp RAW OUT`` (or the scannetpp toolbox) produced:

- DSLR: ``dslr/undistorted_images/<name>``, ``dslr/nerfstudio/transforms_undistorted.json`` (PINHOLE
  ``K`` and OpenGL c2w, converted), ``dslr/undistorted_depth/<stem>.png`` (uint16 mm, the mesh depth
  rendered by the toolbox and undistorted with the images), ``dslr/undistorted_anon_masks/<stem>.png``
  (depth is invalid where the mask is < 255, as in the reference). Test images
  (``train_test_lists.json``, ``test_frames``) and ``is_bad`` frames are left out (they are not in
  capture order); a scene whose DSLR names have several prefixes (several captures) is skipped.
- iPhone: ``iphone/rgb/frame_XXXXXX.jpg``, ``iphone/depth/frame_XXXXXX.png`` (uint16 mm, 256x192,
  resized to the colour with nearest neighbour), poses from ``iphone/colmap`` (every 10th frame,
  the reference's choice) or ``pose_intrinsic_imu.json`` (``aligned_pose``), ``iphone_poses``.

Splits: ``root/splits/nvs_sem_train.txt`` (train) and ``nvs_sem_val.txt`` (val/test), else all scenes.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from forward3d.data.readers_rgbd import frame_numbers
from forward3d.data.sequence import (
    SequenceConfig,
    SequenceDataset,
    SequenceInfo,
    load_depth,
    make_frame,
    read_split_file,
    register_dataset,
)
from forward3d.io.source_base import natural_key, read_rgb
from forward3d.types import Frame

__all__ = ["ScanNetppConfig", "ScanNetppDataset", "scannetpp_scene_dirs"]

log = logging.getLogger(__name__)
SPLIT_FILES = {"train": "nvs_sem_train.txt", "val": "nvs_sem_val.txt", "test": "nvs_sem_val.txt"}


@dataclass
class ScanNetppConfig(SequenceConfig):
    """ScanNet++ fields. ``img_types``: which cameras (the reference's name). ``iphone_poses``:
    ``"auto"`` (COLMAP when ``iphone/colmap`` exists, else ARKit), ``"colmap"`` or ``"arkit"``."""

    img_types: tuple[str, ...] = ("iphone", "dslr")
    iphone_poses: Literal["auto", "colmap", "arkit"] = "auto"

    def validate(self) -> None:
        super().validate()
        bad = [t for t in self.img_types if t not in ("iphone", "dslr")]
        if bad or not self.img_types:
            raise ValueError(f"ScanNetppConfig.img_types: expected a non-empty subset of ('iphone', 'dslr'), found "
                             f"{self.img_types!r}")
        if self.iphone_poses not in ("auto", "colmap", "arkit"):
            raise ValueError(f"ScanNetppConfig.iphone_poses: expected 'auto', 'colmap' or 'arkit', found "
                             f"{self.iphone_poses!r}")


def scannetpp_scene_dirs(root: Path, split: str | None) -> list[Path]:
    """Scene folders of ``root`` (``root/data/<scene>`` or ``root/<scene>``) in the split."""
    data = root / "data" if (root / "data").is_dir() else root
    scenes = sorted((d for d in data.iterdir() if d.is_dir() and ((d / "dslr").is_dir() or (d / "iphone").is_dir())),
                    key=lambda d: natural_key(d.name))
    if split is not None:
        f = root / "splits" / SPLIT_FILES.get(split, f"{split}.txt")
        if f.is_file():
            keep = set(read_split_file(f))
            scenes = [d for d in scenes if d.name in keep]
        else:
            log.info("ScanNetpp: no split file %s; using all %d scenes", f, len(scenes))
    return scenes


@dataclass
class _Dslr:
    folder: Path
    names: list[str]
    c2w: np.ndarray
    K: np.ndarray
    size: tuple[int, int]


@dataclass
class _Iphone:
    folder: Path
    names: list[str]
    c2w: np.ndarray
    K: np.ndarray  # [N, 3, 3] at Ksize
    K_size: tuple[int, int]


@register_dataset(aliases=("ScanNetpp_Seq", "ScanNetPP"))
class ScanNetppDataset(SequenceDataset):
    """ScanNet++ v1/v2 DSLR and iPhone sequences (see the module docstring)."""

    name = "ScanNetpp"
    config_class = ScanNetppConfig

    def scan(self) -> list[SequenceInfo]:
        cfg: ScanNetppConfig = self.config
        if not cfg.root or not Path(cfg.root).is_dir():
            raise ValueError(f"{self.name}: root {cfg.root!r} is not a folder")
        out = []
        for sd in scannetpp_scene_dirs(Path(cfg.root), cfg.split):
            for kind in cfg.img_types:
                seq = self._scan_dslr(sd) if kind == "dslr" else self._scan_iphone(sd)
                if seq is not None:
                    out.append(seq)
        return out

    # -------------------------------------------------------------------------------- DSLR
    def _scan_dslr(self, sd: Path) -> SequenceInfo | None:
        from forward3d.io.scannetpp import read_dslr_transforms, read_train_test_lists

        dslr = sd / "dslr"
        tf = dslr / "nerfstudio" / "transforms_undistorted.json"
        if not tf.is_file():
            if (dslr / "nerfstudio" / "transforms.json").is_file():
                log.warning("%s: %s has no undistorted DSLR images yet (run: forward3d data prepare scannetpp); "
                            "DSLR skipped", self.name, sd.name)
            return None
        t = read_dslr_transforms(tf)
        if t.camera.model not in ("PINHOLE", "SIMPLE_PINHOLE") and np.abs(t.camera.dist).max() > 0:
            raise ValueError(f"{tf}: expected undistorted PINHOLE cameras, found {t.camera.model} with distortion")
        test = set()
        if (dslr / "train_test_lists.json").is_file():
            test = set(read_train_test_lists(dslr / "train_test_lists.json")["test"])
        test |= {n for n, *_ in t.test_frames}
        frames = sorted(((n, c) for n, c, _m, bad in t.frames if n not in test and not bad), key=lambda x: natural_key(x[0]))
        frames = [(n, c) for n, c in frames if (dslr / "undistorted_images" / n).is_file()]
        if not frames:
            return None
        if len({Path(n).name[:3] for n, _ in frames}) > 1:
            log.warning("%s: %s DSLR images come from several captures (name prefixes differ); skipped",
                        self.name, sd.name)
            return None
        names = [n for n, _ in frames]
        nums, stride = frame_numbers([Path(n).stem for n in names])
        handle = _Dslr(dslr, names, np.stack([c for _, c in frames]), t.camera.K, (t.camera.width, t.camera.height))
        return SequenceInfo(f"{sd.name}/dslr", names, nums, stride, handle.c2w, handle)

    # -------------------------------------------------------------------------------- iPhone
    def _scan_iphone(self, sd: Path) -> SequenceInfo | None:
        from forward3d.io.colmap import read_colmap_text
        from forward3d.io.scannetpp import IPHONE_RGB_SIZE, read_pose_intrinsic_imu

        cfg: ScanNetppConfig = self.config
        ip = sd / "iphone"
        rgb = ip / "rgb"
        if not rgb.is_dir():
            return None
        colmap = ip / "colmap"
        mode = cfg.iphone_poses
        if mode == "auto":
            mode = "colmap" if (colmap / "images.txt").is_file() else "arkit"
        if mode == "colmap":
            cams = read_colmap_text(colmap)
            entries = [(Path(n).name, c, K, tuple(int(v) for v in s))
                       for n, c, K, s in zip(cams.names, cams.c2w, cams.K, cams.image_sizes)]
        else:
            path = ip / "pose_intrinsic_imu.json"
            if not path.is_file():
                log.warning("%s: %s has no iphone/colmap and no pose_intrinsic_imu.json; iPhone skipped", self.name, sd.name)
                return None
            entries = [(f"{fid}.jpg", c, K, IPHONE_RGB_SIZE) for fid, (c, K) in read_pose_intrinsic_imu(path).items()]
        entries = sorted((e for e in entries if (rgb / e[0]).is_file() and (ip / "depth" / f"{Path(e[0]).stem}.png").is_file()),
                         key=lambda e: natural_key(e[0]))
        if not entries:
            log.warning("%s: %s: no extracted iPhone frame (rgb/ + depth/) has a pose; iPhone skipped", self.name, sd.name)
            return None
        sizes = {e[3] for e in entries}
        if len(sizes) > 1:
            raise ValueError(f"{ip}: iPhone cameras of several sizes {sorted(sizes)}")
        names = [e[0] for e in entries]
        nums, stride = frame_numbers([Path(n).stem for n in names])
        handle = _Iphone(ip, names, np.stack([e[1] for e in entries]), np.stack([e[2] for e in entries]), sizes.pop())
        return SequenceInfo(f"{sd.name}/iphone", names, nums, stride, handle.c2w, handle)

    # -------------------------------------------------------------------------------- frames
    def load_frame(self, seq: SequenceInfo, i: int, context: Any = None) -> Frame:
        from forward3d.types import Intrinsics

        h = seq.handle
        name = seq.names[i]
        stem = Path(name).stem
        if isinstance(h, _Dslr):
            img_path = h.folder / "undistorted_images" / name
            image = read_rgb(img_path)
            depth = load_depth(h.folder / "undistorted_depth" / f"{stem}.png", 1000.0)
            mask_path = h.folder / "undistorted_anon_masks" / f"{stem}.png"
            K, K_size = h.K, h.size
        else:
            img_path = h.folder / "rgb" / name
            image = read_rgb(img_path)
            depth = load_depth(h.folder / "depth" / f"{stem}.png", 1000.0)
            mask_path = h.folder / "rgb_masks" / f"{stem}.png"
            K, K_size = h.K[i], h.K_size
        H, W = image.shape[:2]
        if (W, H) != K_size:
            K = Intrinsics.from_K(K, *K_size).scaled(W, H).K
        frame = make_frame(image, depth, K, seq.c2w[i], index=i, name=stem, source=str(img_path))
        if mask_path.is_file():
            from PIL import Image

            with Image.open(mask_path) as im:
                m = np.asarray(im.convert("L").resize((W, H), Image.Resampling.NEAREST))
            frame.depth[m < 255] = 0.0
        return frame
