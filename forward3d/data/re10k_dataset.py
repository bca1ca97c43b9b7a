"""torch Datasets on top of :class:`forward3d.data.re10k.RE10KIndex` for Flash3D training and evaluation.

A sample is one source frame (resized to ``height x width``, zero-padded by ``pad`` for the network)
and ``V`` views to render: the source itself first (training) and the targets. Poses are relative:
``w2c_rel[v] = w2c[tgt] @ c2w[src]`` maps the source camera frame (where the Gaussians live) into
view ``v``, with the translation still in dataset (COLMAP) units; :func:`scale_w2c` multiplies it by
the per-image depth scale once the depth is known (from the dataset's ``depth/`` folder or a depth
network run on the padded source, see :func:`depth_scales`).

Randomness (the training targets) is a function of a per-item seed, so runs are reproducible and a
resumed run draws the same samples as an uninterrupted one.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from forward3d.data.re10k import RE10KIndex, estimate_depth_scale

logger = logging.getLogger(__name__)

__all__ = ["RE10KSample", "RE10KBatch", "RE10KTrainDataset", "RE10KEvalDataset", "EvalLine", "read_split_file",
           "collate_samples", "depth_scales", "scale_w2c", "TARGET_KINDS"]

TARGET_KINDS = ("+5", "+10", "random")


@dataclass
class RE10KSample:
    """One source frame and the views to render from its Gaussians.

    Attributes:
        seq: sequence name. ``frame_ids``: ``[V + 1]`` frame indices: source, then the ``V`` views.
        image: ``[3, Hp, Wp]`` padded source in [0, 1]. ``views``: ``[V, 3, H, W]`` ground-truth images
            of the views (unpadded network size).
        K_src: ``[3, 3]`` padded-grid intrinsics. ``K_tgt``: ``[3, 3]`` unpadded intrinsics.
        w2c_rel: ``[V, 4, 4]`` source camera -> view camera, translation in dataset units.
        depth: ``[1, Hp, Wp]`` metric depth of the source (dataset ``depth/`` folder) or ``None``.
        sparse_xys: ``[P, 2]`` pixels (unpadded network size) of the source's sparse COLMAP points;
            ``sparse_z``: ``[P]`` their z-depth in dataset units.
        kinds: a name per view (``"source"``, ``"target"``, or ``"+5"``/``"+10"``/``"random"`` in eval).
    """

    seq: str
    frame_ids: list[int]
    image: Tensor
    views: Tensor
    K_src: Tensor
    K_tgt: Tensor
    w2c_rel: Tensor
    depth: Tensor | None
    sparse_xys: Tensor
    sparse_z: Tensor
    kinds: list[str] = field(default_factory=list)


@dataclass
class RE10KBatch:
    """``B`` samples stacked (sparse points stay lists, their lengths differ).

    Attributes: ``image [B, 3, Hp, Wp]``, ``views [B, V, 3, H, W]``, ``K_src``/``K_tgt [B, 3, 3]``,
    ``w2c_rel [B, V, 4, 4]``, ``depth [B, 1, Hp, Wp]`` or ``None``, ``sparse_xys``/``sparse_z``: lists.
    """

    seq: list[str]
    frame_ids: list[list[int]]
    image: Tensor
    views: Tensor
    K_src: Tensor
    K_tgt: Tensor
    w2c_rel: Tensor
    depth: Tensor | None
    sparse_xys: list[Tensor]
    sparse_z: list[Tensor]
    kinds: list[list[str]]

    def __len__(self) -> int:
        return int(self.image.shape[0])

    def to(self, device: torch.device | str) -> "RE10KBatch":
        kw = {f.name: getattr(self, f.name) for f in fields(self)}
        for k, v in kw.items():
            if isinstance(v, Tensor):
                kw[k] = v.to(device)
        return RE10KBatch(**kw)


def collate_samples(samples: list[RE10KSample]) -> RE10KBatch:
    """Stack samples into an :class:`RE10KBatch` (all with depth, or all without)."""
    if not samples:
        raise ValueError("collate_samples: expected at least one sample, found none")
    has_depth = [s.depth is not None for s in samples]
    if any(has_depth) and not all(has_depth):
        raise ValueError("collate_samples: some samples have dataset depth and some do not")
    return RE10KBatch(
        seq=[s.seq for s in samples], frame_ids=[s.frame_ids for s in samples],
        image=torch.stack([s.image for s in samples]), views=torch.stack([s.views for s in samples]),
        K_src=torch.stack([s.K_src for s in samples]), K_tgt=torch.stack([s.K_tgt for s in samples]),
        w2c_rel=torch.stack([s.w2c_rel for s in samples]),
        depth=torch.stack([s.depth for s in samples]) if all(has_depth) else None,
        sparse_xys=[s.sparse_xys for s in samples], sparse_z=[s.sparse_z for s in samples],
        kinds=[s.kinds for s in samples],
    )


def depth_scales(depth: Tensor, pad: int, sparse_xys: list[Tensor], sparse_z: list[Tensor],
                 mode: str = "mean_log", seed: int = 0) -> Tensor:
    """Per-image scale from dataset units to metres: ``exp(mean(log d_pred - log z_sparse))``.

    Args:
        depth: ``[B, 1, Hp, Wp]`` metric depth on the padded grid.
        pad: padding border; the unpadded crop is compared with the sparse points.
        sparse_xys, sparse_z: per image ``[P, 2]`` pixels of the unpadded image, ``[P]`` depths.
        mode: ``"mean_log"`` (training) or ``"ransac"`` (evaluation; 1000 iterations, 5-point samples,
            ``|log|`` threshold 0.1).

    Returns ``[B]`` float32 on ``depth``'s device.
    """
    out = []
    d = depth.detach().float()[:, 0]
    h, w = d.shape[-2] - 2 * pad, d.shape[-1] - 2 * pad
    for b in range(d.shape[0]):
        crop = d[b, pad:pad + h, pad:pad + w].cpu().numpy()
        xys = sparse_xys[b].detach().cpu().numpy().astype(np.float64)
        z = sparse_z[b].detach().cpu().numpy().astype(np.float64)
        if len(z) == 0:
            raise ValueError(f"depth scale: image {b} has no sparse COLMAP points (expected at least one)")
        out.append(estimate_depth_scale(crop, xys, z, mode=mode, seed=seed))
    return torch.tensor(out, dtype=torch.float32, device=depth.device)


def scale_w2c(w2c_rel: Tensor, scale: Tensor) -> Tensor:
    """``[B, V, 4, 4]`` relative poses with the translation multiplied by ``scale`` ``[B]``."""
    out = w2c_rel.clone()
    out[..., :3, 3] = out[..., :3, 3] * scale.to(out.dtype).view(-1, *([1] * (out.ndim - 2)))
    return out


def _resize(image: np.ndarray, height: int, width: int) -> Tensor:
    """``[H0, W0, 3]`` uint8 -> ``[3, height, width]`` float in [0, 1] (bilinear, antialiased)."""
    t = torch.from_numpy(np.array(image, copy=True)).permute(2, 0, 1)[None].float() / 255.0
    return F.interpolate(t, size=(height, width), mode="bilinear", align_corners=False, antialias=True).clamp(0, 1)[0]


class _RE10KBase(Dataset):
    def __init__(self, root: str | os.PathLike, split: str, height: int, width: int, pad: int,
                 use_dataset_depth: bool = True):
        self.index = RE10KIndex(root, split)
        self.height, self.width, self.pad = int(height), int(width), int(pad)
        self.use_dataset_depth = use_dataset_depth

    def has_depth(self, seq: str, i: int) -> bool:
        return self.use_dataset_depth and self.index.depth_path(seq, i).is_file()

    def make_sample(self, seq: str, src: int, views: list[int], kinds: list[str]) -> RE10KSample:
        from forward3d.models.depth import read_depth_file
        from forward3d.models.flash3d.preprocess import prepare_input

        s = self.index.sequences[seq]
        n = len(s)
        for i in [src, *views]:
            if not 0 <= i < n:
                raise ValueError(f"{self.index.root}: sequence {seq!r} has {n} frames, frame index {i} is out of range")
        img = self.index.load_image(seq, src)
        h0, w0 = img.shape[:2]
        depth = read_depth_file(self.index.depth_path(seq, src)) if self.has_depth(seq, src) else None
        if depth is not None and depth.shape != (h0, w0):
            raise ValueError(f"{self.index.depth_path(seq, src)}: expected a {w0}x{h0} depth map, found "
                             f"{depth.shape[1]}x{depth.shape[0]}")
        inp = prepare_input(img, s.K(src, w0, h0), self.height, self.width, self.pad, depth)
        imgs = []
        for i in views:
            im = img if i == src else self.index.load_image(seq, i)
            imgs.append(_resize(im, self.height, self.width))
        c2w_src = np.linalg.inv(s.w2c[src])
        w2c_rel = np.stack([s.w2c[i] @ c2w_src for i in views])
        xys, z = self.index.sparse_points(seq, src, w0, h0)
        xys = xys * np.array([self.width / w0, self.height / h0])
        return RE10KSample(
            seq=seq, frame_ids=[src, *views], image=inp.image[0], views=torch.stack(imgs),
            K_src=inp.K_src[0], K_tgt=inp.K_tgt[0], w2c_rel=torch.from_numpy(w2c_rel).float(),
            depth=None if inp.depth is None else inp.depth[0],
            sparse_xys=torch.from_numpy(xys).float(), sparse_z=torch.from_numpy(np.asarray(z)).float(), kinds=kinds,
        )


class RE10KTrainDataset(_RE10KBase):
    """Every frame of every sequence is a source; ``num_targets`` targets drawn uniformly from the frames
    within ``max_offset`` of it (excluding itself when the sequence has other frames). The source is
    rendered too (first view), as in the reference loss.

    Index with an int (seed = the index) or an ``(index, seed)`` pair (what the trainer's sampler gives).
    """

    def __init__(self, root: str | os.PathLike, split: str = "train", height: int = 256, width: int = 384,
                 pad: int = 32, num_targets: int = 3, max_offset: int = 30, use_dataset_depth: bool = True):
        super().__init__(root, split, height, width, pad, use_dataset_depth)
        if num_targets < 0 or max_offset < 1:
            raise ValueError(f"RE10KTrainDataset: expected num_targets >= 0 and max_offset >= 1, found "
                             f"{num_targets}, {max_offset}")
        self.num_targets, self.max_offset = int(num_targets), int(max_offset)
        self.items = [(name, i) for name in self.index.names() for i in range(len(self.index.sequences[name]))]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, key: int | tuple[int, int]) -> RE10KSample:
        idx, seed = (int(key[0]), int(key[1])) if isinstance(key, (tuple, list)) else (int(key), int(key))
        seq, src = self.items[idx]
        n = len(self.index.sequences[seq])
        rng = np.random.default_rng(seed)
        cand = [i for i in range(max(0, src - self.max_offset), min(n, src + self.max_offset + 1)) if i != src] or [src]
        tgts = [int(cand[j]) for j in rng.integers(0, len(cand), size=self.num_targets)]
        return self.make_sample(seq, src, [src, *tgts], ["source"] + ["target"] * len(tgts))


@dataclass(frozen=True)
class EvalLine:
    """One line of an evaluation split file: ``seq src t5 t10 trand`` (absolute frame indices)."""

    seq: str
    src: int
    targets: tuple[int, ...]
    line_no: int


def read_split_file(path: str | os.PathLike, max_lines: int | None = None) -> list[EvalLine]:
    """Read ``re10k_mine_filtered/test_files.txt``-style lines ``seq src +5 +10 rand``.

    The four numbers are frame indices into the sequence (the source and its three targets), not
    offsets. Blank lines and ``#`` comments are skipped.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: split file not found")
    out: list[EvalLine] = []
    for n, raw in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        if len(parts) != 5:
            raise ValueError(f"{p}:{n}: expected 'seq src +5 +10 rand' (5 fields), found {len(parts)}: {raw!r}")
        try:
            ids = [int(x) for x in parts[1:]]
        except ValueError as exc:
            raise ValueError(f"{p}:{n}: expected integer frame indices, found {parts[1:]}") from exc
        out.append(EvalLine(parts[0], ids[0], tuple(ids[1:]), n))
        if max_lines is not None and len(out) >= max_lines:
            break
    if not out:
        raise ValueError(f"{p}: expected at least one 'seq src +5 +10 rand' line, found none")
    return out


class RE10KEvalDataset(_RE10KBase):
    """The lines of a split file; views are the three targets (``kinds = ['+5', '+10', 'random']``).

    Lines whose sequence is not in the index are dropped with a warning (``self.skipped``).
    """

    def __init__(self, root: str | os.PathLike, split_file: str | os.PathLike, split: str = "test",
                 height: int = 256, width: int = 384, pad: int = 32, max_lines: int | None = None,
                 use_dataset_depth: bool = True):
        super().__init__(root, split, height, width, pad, use_dataset_depth)
        lines = read_split_file(split_file, max_lines)
        self.lines = [ln for ln in lines if ln.seq in self.index.sequences]
        self.skipped = [ln for ln in lines if ln.seq not in self.index.sequences]
        if self.skipped:
            logger.warning("%s: %d of %d lines name sequences missing from %s (skipped)", split_file,
                           len(self.skipped), len(lines), self.index.root)
        if not self.lines:
            raise ValueError(f"{split_file}: none of its {len(lines)} sequences is in {self.index.root} "
                             f"(split '{split}')")

    def __len__(self) -> int:
        return len(self.lines)

    def __getitem__(self, i: int) -> RE10KSample:
        ln = self.lines[i]
        return self.make_sample(ln.seq, ln.src, list(ln.targets), list(TARGET_KINDS[:len(ln.targets)]))
