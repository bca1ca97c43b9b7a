"""Training readers of CO3D v2 (object turntables), RealEstate10K (no depth) and the synthetic generator."""

from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from forward3d.data.sequence import (
    SequenceConfig,
    SequenceDataset,
    SequenceInfo,
    load_depth,
    make_frame,
    register_dataset,
)
from forward3d.io.source_base import natural_key, read_rgb
from forward3d.types import Frame

__all__ = ["Co3DConfig", "Co3DDataset", "RealEstate10KConfig", "RealEstate10KDataset", "SyntheticSeqConfig",
           "SyntheticDataset", "CO3D_TRAINING_CATEGORIES", "CO3D_TEST_CATEGORIES"]

log = logging.getLogger(__name__)

# the reference's category split of CO3D v2 (41 training, 10 test categories)
CO3D_TRAINING_CATEGORIES = (
    "apple", "backpack", "banana", "baseballbat", "baseballglove", "bench", "bicycle", "bottle", "bowl", "broccoli",
    "cake", "car", "carrot", "cellphone", "chair", "cup", "donut", "hairdryer", "handbag", "hydrant", "keyboard",
    "laptop", "microwave", "motorcycle", "mouse", "orange", "parkingmeter", "pizza", "plant", "stopsign",
    "teddybear", "toaster", "toilet", "toybus", "toyplane", "toytrain", "toytruck", "tv", "umbrella", "vase",
    "wineglass",
)
CO3D_TEST_CATEGORIES = ("ball", "book", "couch", "frisbee", "hotdog", "kite", "remote", "sandwich", "skateboard",
                        "suitcase")


# --------------------------------------------------------------------------------------------------
# CO3D
# --------------------------------------------------------------------------------------------------


@dataclass
class Co3DConfig(SequenceConfig):
    """CO3D fields (defaults as the reference's ``Co3d_Seq``: ``degree=90``, ``sel_num=1``).

    Attributes:
        categories: categories to read; empty = the reference's split (train: its 41 training
            categories, test/val: its 10 test categories; None split: all found).
        mask_bg: zero the depth outside the object mask: True, False or ``"rand"`` (per sample, p=1/2).
        frames_per_sequence: keep this many frames per sequence, evenly spaced (DUSt3R's preprocessing
            keeps 100; 0 = all).
        set_list: read only the frames of this subset file (``set_lists/set_lists_<set_list>.json``,
            subset = ``split``); empty = every frame.
    """

    degree: float = 90.0
    sel_num: int = 1
    categories: tuple[str, ...] = ()
    mask_bg: bool | Literal["rand"] = True
    frames_per_sequence: int = 100
    set_list: str = ""

    def validate(self) -> None:
        super().validate()
        if self.mask_bg not in (True, False, "rand"):
            raise ValueError(f"Co3DConfig.mask_bg: expected True, False or 'rand', found {self.mask_bg!r}")
        if self.frames_per_sequence < 0:
            raise ValueError(f"Co3DConfig.frames_per_sequence: expected >= 0, found {self.frames_per_sequence}")


@register_dataset(aliases=("Co3d_Seq", "Co3D_Seq", "CO3D"))
class Co3DDataset(SequenceDataset):
    """CO3D v2 as downloaded (``root/<category>/frame_annotations.jgz`` + images, float16 depth PNGs,
    depth masks, object masks; see :mod:`forward3d.io.co3d`). Depth is in the sequence's COLMAP
    units (not metric); depth outside ``depth_masks`` is invalid."""

    name = "Co3D"
    config_class = Co3DConfig
    metric_depth = False

    def scan(self) -> list[SequenceInfo]:
        from forward3d.io.co3d import read_frame_annotations, read_set_list

        cfg: Co3DConfig = self.config
        root = Path(cfg.root)
        if not cfg.root or not root.is_dir():
            raise ValueError(f"{self.name}: root {cfg.root!r} is not a folder")
        found = sorted(d.name for d in root.iterdir() if (d / "frame_annotations.jgz").is_file())
        if cfg.categories:
            cats = [c for c in cfg.categories if c in found]
            if len(cats) < len(cfg.categories):
                raise ValueError(f"{self.name}: categories {sorted(set(cfg.categories) - set(found))} not found under {root}")
        elif cfg.split == "train":
            cats = [c for c in found if c in CO3D_TRAINING_CATEGORIES]
        elif cfg.split in ("test", "val"):
            cats = [c for c in found if c in CO3D_TEST_CATEGORIES]
        else:
            cats = found
        out = []
        for cat in cats:
            frames = read_frame_annotations(root / cat / "frame_annotations.jgz")
            keep = None
            if cfg.set_list:
                sl = read_set_list(root / cat / "set_lists" / f"set_lists_{cfg.set_list}.json")
                if (cfg.split or "train") not in sl:
                    raise ValueError(f"{root / cat}: set list {cfg.set_list!r} has no subset {cfg.split!r} ({sorted(sl)})")
                keep = {(s, n) for s, n, _ in sl[cfg.split or "train"]}
            by_seq: dict[str, list] = {}
            for f in frames:
                if keep is None or (f.sequence, f.frame_number) in keep:
                    by_seq.setdefault(f.sequence, []).append(f)
            for seq_name in sorted(by_seq, key=natural_key):
                fr = sorted(by_seq[seq_name], key=lambda f: f.frame_number)
                if cfg.frames_per_sequence and len(fr) > cfg.frames_per_sequence:
                    idx = np.round(np.linspace(0, len(fr) - 1, cfg.frames_per_sequence)).astype(int)
                    fr = [fr[i] for i in idx]
                out.append(SequenceInfo(f"{cat}/{seq_name}", [Path(f.image_path).stem for f in fr],
                                        np.asarray([f.frame_number for f in fr]), 1.0, np.stack([f.c2w for f in fr]),
                                        (root, fr)))
        return out

    def sample_context(self, rng: np.random.Generator) -> Any:
        mb = self.config.mask_bg
        return {"mask_bg": bool(mb is True or (mb == "rand" and rng.integers(2)))}

    def load_frame(self, seq: SequenceInfo, i: int, context: Any = None) -> Frame:
        from forward3d.io.co3d import read_co3d_depth, read_co3d_mask

        root, frames = seq.handle
        f = frames[i]
        image = read_rgb(root / f.image_path)
        h, w = image.shape[:2]
        K = f.K
        if (w, h) != f.size:  # annotations refer to the original size
            from forward3d.types import Intrinsics

            K = Intrinsics.from_K(K, *f.size).scaled(w, h).K
        if f.depth_path is None:
            raise ValueError(f"{root / f.image_path}: the CO3D annotation has no depth")
        depth = read_co3d_depth(root / f.depth_path, f.depth_scale)
        frame = make_frame(image, depth, K, f.c2w, timestamp=f.timestamp, index=i, name=Path(f.image_path).stem,
                           source=str(root / f.image_path))
        masks = [f.depth_mask_path] if f.depth_mask_path else []
        mask_bg = self.config.mask_bg is True if context is None else context["mask_bg"]
        if mask_bg and f.mask_path:
            masks.append(f.mask_path)
        for mp in masks:
            m = read_co3d_mask(root / mp)
            if m.shape != (h, w):
                from PIL import Image

                m = np.asarray(Image.fromarray(m).resize((w, h), Image.Resampling.NEAREST))
            frame.depth[~m] = 0.0
        return frame


# --------------------------------------------------------------------------------------------------
# RealEstate10K
# --------------------------------------------------------------------------------------------------


@dataclass
class RealEstate10KConfig(SequenceConfig):
    """RealEstate10K in the Flash3D layout (:mod:`forward3d.data.re10k`). ``split`` names its
    ``{split}.pickle.gz``."""


@register_dataset(aliases=("RealEstate10K_Seq", "RE10K"))
class RealEstate10KDataset(SequenceDataset):
    """RealEstate10K sequences: frames and (up-to-scale, COLMAP-unit) poses. No depth, so every
    pixel is invalid for depth supervision, unless the forward3d ``depth/`` extension holds metric
    depth maps (uint16 mm). For pose / photometric objectives."""

    name = "RealEstate10K"
    config_class = RealEstate10KConfig
    metric_depth = False

    def scan(self) -> list[SequenceInfo]:
        from forward3d.data.re10k import RE10KIndex

        cfg = self.config
        index = RE10KIndex(cfg.root, cfg.split or "train")
        self.has_depth = (Path(cfg.root) / "depth" / (cfg.split or "train")).is_dir()
        out = []
        for name in index.names():
            s = index.sequences[name]
            out.append(SequenceInfo(name, [str(int(t)) for t in s.timestamps], None, 1.0, s.c2w, (index, name)))
        return out

    def load_frame(self, seq: SequenceInfo, i: int, context: Any = None) -> Frame:
        index, name = seq.handle
        image = index.load_image(name, i)
        h, w = image.shape[:2]
        dp = index.depth_path(name, i)
        depth = load_depth(dp, 1000.0) if self.has_depth and dp.is_file() else None
        return make_frame(image, depth, index.sequences[name].K(i, w, h), seq.c2w[i], index=i, name=seq.names[i],
                          source=str(index.frame_path(name, i)))


# --------------------------------------------------------------------------------------------------
# Synthetic
# --------------------------------------------------------------------------------------------------


@dataclass
class SyntheticSeqConfig(SequenceConfig):
    """Sequences of :class:`forward3d.data.synthetic.SyntheticScene` (no files; ``root`` unused).

    Scene ``k`` of the train split has seed ``scene_seed + k``; val/test scenes start at
    ``scene_seed + 1_000_000`` (disjoint rooms). The other fields are the generator's.
    """

    num_scenes: int = 4
    frames_per_scene: int = 60
    width: int = 320
    height: int = 240
    fov_x_deg: float = 70.0
    num_boxes: int = 6
    trajectory: Literal["orbit", "walk", "handheld"] = "handheld"
    speed: float = 1.0
    depth_noise: float = 0.0
    depth_holes: float = 0.0
    scene_seed: int = 0

    def validate(self) -> None:
        super().validate()
        if self.num_scenes < 1 or self.frames_per_scene < 1:
            raise ValueError(f"SyntheticSeqConfig: expected num_scenes >= 1 and frames_per_scene >= 1, found "
                             f"{self.num_scenes}, {self.frames_per_scene}")


@register_dataset(aliases=("Synthetic_Seq",))
class SyntheticDataset(SequenceDataset):
    """Training sequences rendered on the fly by the synthetic room generator (exact depth and poses)."""

    name = "Synthetic"
    config_class = SyntheticSeqConfig
    _cache_size = 4

    def scan(self) -> list[SequenceInfo]:
        cfg: SyntheticSeqConfig = self.config
        base = cfg.scene_seed + (0 if cfg.split in (None, "train") else 1_000_000)
        self._scenes: OrderedDict = OrderedDict()
        out = []
        for k in range(cfg.num_scenes):
            seed = base + k
            scene = self._scene(seed)
            names = [f"{i:06d}" for i in range(cfg.frames_per_scene)]
            out.append(SequenceInfo(f"synthetic_{seed}", names, np.arange(cfg.frames_per_scene), 1.0, scene.c2w, seed))
        return out

    def _scene(self, seed: int):
        from forward3d.data.synthetic import SyntheticScene

        cache = self.__dict__.setdefault("_scenes", OrderedDict())
        if seed in cache:
            cache.move_to_end(seed)
            return cache[seed]
        cfg: SyntheticSeqConfig = self.config
        scene = SyntheticScene(seed=seed, num_frames=cfg.frames_per_scene, width=cfg.width, height=cfg.height,
                               fov_x_deg=cfg.fov_x_deg, num_boxes=cfg.num_boxes, trajectory=cfg.trajectory,
                               speed=cfg.speed, depth_noise=cfg.depth_noise, depth_holes=cfg.depth_holes)
        cache[seed] = scene
        while len(cache) > self._cache_size:
            cache.popitem(last=False)
        return scene

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_scenes"] = OrderedDict()  # workers rebuild scenes instead of pickling textures
        return state

    def load_frame(self, seq: SequenceInfo, i: int, context: Any = None) -> Frame:
        return self._scene(int(seq.handle)).frame(i)

    def scene(self, k: int):
        """The :class:`~forward3d.data.synthetic.SyntheticScene` of sequence ``k`` (ground truth)."""
        return self._scene(int(self.sequences[k].handle))


