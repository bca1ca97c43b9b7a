"""The sequence-dataset interface: one config dataclass + one reader per dataset, one sampling pipeline.

A dataset is a :class:`SequenceDataset` subclass with a :class:`SequenceConfig` subclass. The
subclass only lists its sequences (:meth:`SequenceDataset.scan`) and reads one native frame
(:meth:`SequenceDataset.load_frame`, a :class:`~forward3d.types.Frame` with depth in metres, ``K`` and
``c2w``); the base class does the rest, identically for every dataset:

1. windows and views per the sampling fields (:mod:`forward3d.data.sampling`);
2. per view: depth masked / range-limited, :func:`~forward3d.data.views.crop_resize` to
   ``resolution`` (``aug_crop``, landscape rotation), colour jitter (``transform="ColorJitter"``),
   the validity mask; views without valid depth are replaced by a neighbouring frame;
3. a :class:`~forward3d.data.views.ViewSample` (collate batches with
   :func:`~forward3d.data.views.collate_views`).

Randomness: sample ``i`` of epoch ``e`` draws everything from ``numpy.random.default_rng([seed, e, i])``
(:meth:`SequenceDataset.set_epoch`), so it is the same in every DataLoader worker, process and
resumed run. Datasets register in :data:`DATASETS` (a plain dict; third-party packages add theirs
through the ``forward3d.datasets`` entry-point group) under their name and the reference's names.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
from torch.utils.data import Dataset

from forward3d.data import sampling
from forward3d.data.views import View, ViewSample, color_jitter, crop_resize, valid_mask
from forward3d.io.source_base import read_depth, resize_depth
from forward3d.types import Frame

__all__ = ["SequenceConfig", "SequenceInfo", "SequenceDataset", "DATASETS", "register_dataset",
           "get_dataset_class", "dataset_names", "read_split_file", "make_frame", "load_depth", "InvalidView"]

log = logging.getLogger(__name__)


class InvalidView(Exception):
    """Raised by :meth:`SequenceDataset.load_frame` for a frame that is readable but unusable (no valid
    depth, no pose): the sampler replaces it by a neighbouring frame, whatever ``on_error`` says."""


@dataclass
class SequenceConfig:
    """Fields common to every sequence dataset (reference names where the reference has them).

    Attributes:
        root: dataset folder (the reference's ``ROOT``).
        split: ``"train"``, ``"val"``, ``"test"`` or None (all scenes); how a split is chosen is the
            dataset's (split files, categories, folders).
        scenes: keep only these scenes (ids as the dataset names them); empty = all of the split.
        num_views: views per sample.
        resolution: output ``(W, H)`` or one int for a square; ``W >= H``.
        aug_crop: random zoom, see :func:`~forward3d.data.views.crop_resize`.
        transform: ``"ImgNorm"`` (none) or ``"ColorJitter"`` (``jitter`` strengths).
        jitter: brightness, contrast, saturation, hue of the colour jitter.
        seed: base seed of the per-sample randomness.
        sample_freq, start_freq, rand_sel, winsize, sel_num, degree, frames_per_turn, filter: the
            reference's window sampling (:mod:`forward3d.data.sampling`).
        max_rotation: degrees; samples with a view rotated more than this from the reference view are
            redrawn (0 = no limit).
        min_overlap: samples where another view sees less than this fraction of the reference view's
            valid pixels are redrawn (0 = no limit).
        ref_id: reference view (-1 middle, -2 random, k >= 0 fixed). ``order``: fixed | reverse | random.
        landscape: rotate portrait frames to landscape.
        max_depth: depth beyond this (dataset units) is invalid (0 = no limit).
        min_valid: fraction of pixels with valid depth a view needs; a view below it (or with none)
            is replaced by a neighbouring frame.
        max_retries: redraws before a sample fails with ValueError.
        on_error: ``"raise"`` on an unreadable frame, or ``"skip"`` it (warning) like an invalid view.
    """

    root: str = ""
    split: str | None = "train"
    scenes: tuple[str, ...] = ()
    num_views: int = 2
    resolution: int | tuple[int, int] = 224
    aug_crop: int = 0
    transform: Literal["ImgNorm", "ColorJitter"] = "ImgNorm"
    jitter: tuple[float, float, float, float] = (0.5, 0.5, 0.5, 0.1)
    seed: int = 0
    sample_freq: int = 1
    start_freq: int = 1
    rand_sel: bool = False
    winsize: int = 0
    sel_num: int = 0
    degree: float = 0.0
    frames_per_turn: int = 100
    filter: bool = False
    max_rotation: float = 0.0
    min_overlap: float = 0.0
    ref_id: int = -1
    order: Literal["fixed", "reverse", "random"] = "fixed"
    landscape: bool = True
    max_depth: float = 0.0
    min_valid: float = 0.0
    max_retries: int = 10
    on_error: Literal["raise", "skip"] = "raise"

    @property
    def size(self) -> tuple[int, int]:
        """``(W, H)`` of the output views."""
        r = self.resolution
        return (int(r), int(r)) if isinstance(r, (int, np.integer)) else (int(r[0]), int(r[1]))

    def validate(self) -> None:
        """Raise ValueError naming the field, the expected and the found value."""
        name = type(self).__name__

        def bad(f: str, expected: str) -> ValueError:
            return ValueError(f"{name}.{f}: expected {expected}, found {getattr(self, f)!r}")

        if self.num_views < 1:
            raise bad("num_views", ">= 1")
        try:
            w, h = self.size
        except (TypeError, ValueError):
            raise bad("resolution", "an int or (W, H)") from None
        if w < 1 or h < 1 or w < h or (not isinstance(self.resolution, int) and len(self.resolution) != 2):
            raise bad("resolution", "a positive int or (W, H) with W >= H")
        for f in ("aug_crop", "seed", "max_depth", "min_overlap", "max_rotation", "degree", "max_retries", "winsize",
                  "sel_num"):
            if getattr(self, f) < 0:
                raise bad(f, ">= 0")
        for f in ("sample_freq", "start_freq", "frames_per_turn"):
            if getattr(self, f) < 1:
                raise bad(f, ">= 1")
        if not 0 <= self.min_valid <= 1 or not 0 <= self.min_overlap <= 1:
            raise ValueError(f"{name}: min_valid and min_overlap are fractions in [0, 1], found "
                             f"{self.min_valid}, {self.min_overlap}")
        if self.degree >= 360 or (self.degree and self.rand_sel):
            raise bad("degree", "a value in [0, 360) and not together with rand_sel")
        if self.rand_sel and (self.winsize < 1 or self.sel_num < 1):
            raise ValueError(f"{name}: rand_sel needs winsize >= 1 and sel_num >= 1, found {self.winsize}, {self.sel_num}")
        if self.rand_sel or self.degree:
            sampling.check_rand_sel(self)
        if not -2 <= self.ref_id < self.num_views:
            raise bad("ref_id", f"-1 (middle), -2 (random) or a view index < num_views={self.num_views}")
        if self.transform not in ("ImgNorm", "ColorJitter"):
            raise bad("transform", "'ImgNorm' or 'ColorJitter'")
        if self.order not in ("fixed", "reverse", "random"):
            raise bad("order", "'fixed', 'reverse' or 'random'")
        if self.on_error not in ("raise", "skip"):
            raise bad("on_error", "'raise' or 'skip'")
        if len(self.jitter) != 4 or min(self.jitter) < 0 or self.jitter[3] > 0.5:
            raise bad("jitter", "(brightness, contrast, saturation, hue) >= 0 with hue <= 0.5")


@dataclass
class SequenceInfo:
    """One sequence (scene) of a dataset, as :meth:`SequenceDataset.scan` lists it.

    Attributes:
        scene: its id. ``names``: frame names in time order.
        frame_numbers: optional ``[N]`` numbers from the file names (for the stride filter).
        id_stride: the usual increment of ``frame_numbers`` between consecutive frames.
        c2w: optional ``[N, 4, 4]`` poses when they are cheap to know up front (rotation limits).
        handle: reader-specific data (paths, an open source, ...).
    """

    scene: str
    names: list[str]
    frame_numbers: np.ndarray | None = None
    id_stride: float = 1.0
    c2w: np.ndarray | None = None
    handle: Any = field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.names)


def make_frame(image: np.ndarray, depth: np.ndarray | None, K: np.ndarray | None, c2w: np.ndarray | None,
               **fields: Any) -> Frame:
    """A :class:`Frame`; a depth map of another size than the image (same aspect ratio, e.g. a
    256x192 LiDAR map for a 1920x1440 photo) is resized to the image with nearest neighbour."""
    if depth is not None:
        (h, w), (hd, wd) = image.shape[:2], depth.shape[:2]
        if (h, w) != (hd, wd):
            if abs(w / h - wd / hd) > 0.01 * w / h:
                raise ValueError(f"{fields.get('source', '')}: depth {wd}x{hd} and image {w}x{h} have different "
                                 f"aspect ratios")
            depth = resize_depth(depth.astype(np.float32), w, h)
        depth = np.array(depth, dtype=np.float32)  # writable: readers zero masked pixels in place
    return Frame(image=image, depth=depth, K=K, c2w=c2w, **fields)


def load_depth(path: str | os.PathLike, scale: float, invalid: tuple[int, ...] = ()) -> np.ndarray:
    """:func:`forward3d.io.source_base.read_depth`, except that a map without any valid pixel is an
    all-zero map (an invalid training view, replaced by a neighbour) instead of an error."""
    try:
        return read_depth(Path(path), scale, invalid)
    except ValueError as exc:
        if "no valid pixel" not in str(exc):
            raise
        from PIL import Image

        with Image.open(path) as im:
            return np.zeros((im.height, im.width), np.float32)


def read_split_file(path: str | os.PathLike) -> list[str]:
    """Scene ids of a split file: one per line, blank lines and ``#`` comments ignored."""
    p = Path(path)
    try:
        lines = p.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"{p}: cannot read split file ({exc})") from exc
    return [ln.split("#", 1)[0].strip() for ln in lines if ln.split("#", 1)[0].strip()]


class SequenceDataset(Dataset):
    """Base class of the sequence datasets (a torch ``Dataset`` of :class:`ViewSample`).

    Subclasses set ``name`` and ``config_class`` and implement :meth:`scan` and :meth:`load_frame`.
    Construct with a config, keyword overrides, or both: ``ScanNetDataset(root=..., num_views=5)``.
    """

    name: ClassVar[str] = ""
    config_class: ClassVar[type[SequenceConfig]] = SequenceConfig
    has_depth: ClassVar[bool] = True
    metric_depth: ClassVar[bool] = True

    def __init__(self, config: SequenceConfig | None = None, **overrides: Any) -> None:
        cls = self.config_class
        if config is None:
            config = cls(**overrides)
        else:
            if not isinstance(config, cls):
                raise TypeError(f"{type(self).__name__}: expected a {cls.__name__}, found {type(config).__name__}")
            unknown = set(overrides) - {f.name for f in fields(cls)}
            if unknown:
                raise ValueError(f"{type(self).__name__}: unknown config fields {sorted(unknown)}")
            config = replace(config, **overrides)
        config.validate()
        self.config = config
        self.epoch = 0
        seqs = self.scan()
        if config.scenes:
            have = {s.scene for s in seqs}
            missing = [s for s in config.scenes if s not in have]
            if missing:
                raise ValueError(f"{self.name} ({config.root}): scenes {missing} not found; available: "
                                 f"{sorted(have)[:20]}")
            seqs = [s for s in seqs if s.scene in set(config.scenes)]
        if not seqs:
            raise ValueError(f"{self.name} ({config.root}): no sequence found for split {config.split!r}")
        self.sequences = seqs
        wins = []
        for k, s in enumerate(seqs):
            for sid, eid in sampling.make_windows(len(s), config, s.frame_numbers, s.id_stride):
                wins.append((k, sid, eid))
        if not wins:
            raise ValueError(f"{self.name} ({config.root}): no sequence has enough frames for a window of "
                             f"{sampling.window_size(config) + 1} frames ({len(seqs)} sequences, longest "
                             f"{max(len(s) for s in seqs)})")
        self.windows = np.asarray(wins, dtype=np.int64)
        self.per_window = sampling.samples_per_window(config)
        self._invalid: set[tuple[int, int]] = set()

    # -------------------------------------------------------------------------------- subclass API
    def scan(self) -> list[SequenceInfo]:
        """List the sequences of ``self.config`` (split and root)."""
        raise NotImplementedError

    def load_frame(self, seq: SequenceInfo, i: int, context: Any = None) -> Frame:
        """Frame ``i`` of ``seq`` at native resolution with ``depth`` (0 = invalid; masks applied), ``K``
        and ``c2w`` (``None`` when the dataset marks the pose invalid: the view is replaced).
        ``context`` is what :meth:`sample_context` drew for the sample (``None`` outside sampling).
        Raise ValueError naming the file on bad data."""
        raise NotImplementedError

    def sample_context(self, rng: np.random.Generator) -> Any:
        """Per-sample choices shared by its views (e.g. CO3D's random background masking)."""
        return None

    # -------------------------------------------------------------------------------- torch API
    def __len__(self) -> int:
        return len(self.windows) * self.per_window

    def set_epoch(self, epoch: int) -> None:
        """Select the randomness of epoch ``epoch`` (call before each epoch, like a DistributedSampler)."""
        self.epoch = int(epoch)

    def sample_seed(self, index: int) -> tuple[int, int, int]:
        return (int(self.config.seed), self.epoch, int(index))

    def __getitem__(self, index: int) -> ViewSample:
        n = len(self)
        if isinstance(index, (tuple, list)):
            raise TypeError(f"{self.name}: index with an int, found {type(index).__name__}")
        if not -n <= int(index) < n:
            raise IndexError(f"{self.name}: sample {index} outside [0, {n})")
        index = int(index) % n
        seed = self.sample_seed(index)
        rng = np.random.default_rng(list(seed))
        w, k = divmod(index, self.per_window)
        last_error = "no attempt"
        for attempt in range(self.config.max_retries + 1):
            if attempt:
                w, k = int(rng.integers(len(self.windows))), int(rng.integers(self.per_window))
            sample, last_error = self._try_sample(int(w), int(k), rng)
            if sample is not None:
                sample.index, sample.seed = index, seed
                return sample
            log.debug("%s sample %d attempt %d rejected: %s", self.name, index, attempt, last_error)
        raise ValueError(f"{self.name}: sample {index}: no valid set of views after {self.config.max_retries + 1} "
                         f"draws (last: {last_error})")

    # -------------------------------------------------------------------------------- pipeline
    def _try_sample(self, w: int, k: int, rng: np.random.Generator) -> tuple[ViewSample | None, str]:
        cfg = self.config
        seq_idx, sid, eid = (int(v) for v in self.windows[w])
        seq = self.sequences[seq_idx]
        ids, ref = sampling.order_views(sampling.select_frames(sid, eid, k, cfg, rng), cfg, rng)
        if cfg.max_rotation > 0 and seq.c2w is not None:
            rot = sampling.rotation_to_ref(seq.c2w[ids], ref)
            if rot.max() > cfg.max_rotation:
                return None, f"rotation {rot.max():.1f} deg > max_rotation {cfg.max_rotation}"
        context = self.sample_context(rng)
        views = []
        for i in ids:
            view = self._valid_view(seq_idx, i, rng, context)
            if view is None:
                return None, f"{seq.scene}: no frame near {i} has valid depth"
            views.append(view)
        if cfg.max_rotation > 0 and seq.c2w is None:
            rot = sampling.rotation_to_ref(np.stack([v.c2w for v in views]), ref)
            if rot.max() > cfg.max_rotation:
                return None, f"rotation {rot.max():.1f} deg > max_rotation {cfg.max_rotation}"
        if cfg.min_overlap > 0 and self.has_depth:
            r = views[ref]
            for j, v in enumerate(views):
                if j != ref:
                    ov = sampling.overlap_fraction(r.depth, r.valid, r.K, r.c2w, v.K, v.c2w, v.width, v.height)
                    if ov < cfg.min_overlap:
                        return None, f"overlap {ov:.2f} of view {j} < min_overlap {cfg.min_overlap}"
        return ViewSample(views, ref), ""

    def _valid_view(self, seq_idx: int, i: int, rng: np.random.Generator, context: Any = None) -> View | None:
        """View ``i``, or the nearest frame (random direction) whose depth is valid enough."""
        seq = self.sequences[seq_idx]
        n = len(seq)
        direction = 1 if rng.integers(2) else -1
        for off in range(min(n, self.config.max_retries + 1)):
            j = (i + direction * off) % n
            if (seq_idx, j) in self._invalid:
                continue
            view = self._view(seq, j, rng, context)
            if view is not None:
                return view
            self._invalid.add((seq_idx, j))
        return None

    def _view(self, seq: SequenceInfo, i: int, rng: np.random.Generator, context: Any = None) -> View | None:
        cfg = self.config
        try:
            frame = self.load_frame(seq, i, context)
        except InvalidView as exc:
            log.debug("%s: frame %s/%s is not usable: %s", self.name, seq.scene, seq.names[i], exc)
            return None
        except ValueError as exc:
            if cfg.on_error == "raise":
                raise
            log.warning("%s: skipping unreadable frame %s/%s: %s", self.name, seq.scene, seq.names[i], exc)
            return None
        if frame.c2w is None or frame.K is None:
            return None  # invalid pose (ScanNet's -inf) or no camera: a neighbouring frame is used
        frame = self._common_size(frame)
        frame = crop_resize(frame, cfg.size, rng, cfg.aug_crop, cfg.landscape)
        if cfg.transform == "ColorJitter":
            frame = frame.with_(image=color_jitter(frame.image, rng, *cfg.jitter))
        valid = valid_mask(frame.depth, cfg.max_depth) if self.has_depth else np.zeros(frame.depth.shape, bool)
        if self.has_depth and valid.sum() < max(1, cfg.min_valid * valid.size):
            return None
        frame = frame.with_(depth=np.where(valid, frame.depth, np.float32(0.0)).astype(np.float32))
        return View(frame, valid, self.name, seq.scene, self.has_depth)

    @staticmethod
    def _common_size(frame: Frame) -> Frame:
        """A frame without depth (RGB-only datasets) gets an all-invalid depth map."""
        if frame.depth is None:
            return frame.with_(depth=np.zeros(frame.image.shape[:2], np.float32))
        return frame

    # -------------------------------------------------------------------------------- conveniences
    def view(self, scene: str, i: int, resolution: tuple[int, int] | None = None) -> View:
        """Frame ``i`` of ``scene`` as a view without augmentation (evaluation, inspection)."""
        seq = next((s for s in self.sequences if s.scene == scene), None)
        if seq is None:
            raise ValueError(f"{self.name}: no scene {scene!r}")
        cfg = replace(self.config, aug_crop=0, transform="ImgNorm")
        if resolution is not None:
            cfg = replace(cfg, resolution=tuple(resolution))
        frame = self.load_frame(seq, i)
        if frame.c2w is None or frame.K is None:
            raise ValueError(f"{self.name}: frame {i} of {scene} has no valid pose or intrinsics")
        frame = crop_resize(self._common_size(frame), cfg.size, None, 0, cfg.landscape)
        valid = valid_mask(frame.depth, cfg.max_depth) if self.has_depth else np.zeros(frame.depth.shape, bool)
        frame = frame.with_(depth=np.where(valid, frame.depth, np.float32(0.0)).astype(np.float32))
        return View(frame, valid, self.name, seq.scene, self.has_depth)

    def __repr__(self) -> str:
        c = self.config
        return (f"{type(self).__name__}({len(self)} samples, {len(self.sequences)} sequences, split={c.split!r}, "
                f"num_views={c.num_views}, resolution={c.size})")


# --------------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------------

DATASETS: dict[str, type[SequenceDataset]] = {}
ALIASES: dict[str, str] = {}
_BUILTIN_MODULES = ("forward3d.data.readers_rgbd", "forward3d.data.readers_scannetpp", "forward3d.data.readers_objects",
                    "forward3d.data.readers_hypersim")
_loaded = False


def register_dataset(cls: type[SequenceDataset] | None = None, *, aliases: tuple[str, ...] = ()):
    """Class decorator: add a dataset to :data:`DATASETS` (checked: a :class:`SequenceDataset` with a
    ``name`` identifier and a :class:`SequenceConfig` dataclass)."""

    def add(c: type[SequenceDataset]) -> type[SequenceDataset]:
        if not (isinstance(c, type) and issubclass(c, SequenceDataset)):
            raise TypeError(f"register_dataset: expected a SequenceDataset subclass, found {c!r}")
        if not (isinstance(c.name, str) and c.name.isidentifier()):
            raise TypeError(f"register_dataset: {c.__name__}.name must be an identifier, found {c.name!r}")
        if not (isinstance(c.config_class, type) and issubclass(c.config_class, SequenceConfig)):
            raise TypeError(f"register_dataset: {c.__name__}.config_class must subclass SequenceConfig")
        for n in (c.name, *aliases):
            owner = DATASETS.get(n) or DATASETS.get(ALIASES.get(n, ""))
            if owner is not None and owner is not c:
                raise ValueError(f"register_dataset: name {n!r} is taken by {owner.__name__}")
        DATASETS[c.name] = c
        for a in aliases:
            ALIASES[a] = c.name
        return c

    return add if cls is None else add(cls)


def _load_builtin() -> None:
    global _loaded
    if _loaded:
        return
    import importlib

    for m in _BUILTIN_MODULES:
        importlib.import_module(m)
    try:
        from importlib.metadata import entry_points

        for ep in entry_points(group="forward3d.datasets"):
            try:
                register_dataset(ep.load())
            except Exception as exc:  # noqa: BLE001 - a broken plug-in must not break the built-ins
                log.warning("dataset plug-in %s could not be loaded: %s", ep.name, exc)
    except Exception:  # noqa: BLE001 - entry points unavailable
        pass
    _loaded = True


def dataset_names() -> list[str]:
    """Registered dataset names (aliases not included)."""
    _load_builtin()
    return sorted(DATASETS)


def get_dataset_class(name: str) -> type[SequenceDataset]:
    """The dataset class registered as ``name`` (or an alias), else ValueError listing the names."""
    _load_builtin()
    key = ALIASES.get(name, name)
    if key not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; registered: {', '.join(sorted(DATASETS))} "
                         f"(aliases: {', '.join(sorted(ALIASES))})")
    return DATASETS[key]
