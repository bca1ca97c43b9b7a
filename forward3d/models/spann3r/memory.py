"""Spann3R's spatial memory (reference ``SpatialMemory``, eval mode), with every quirk kept.

The memory holds key/value slots ``[B, S, C]`` (one slot per patch token of every written frame),
an accumulated read attention and an age counter per slot ``[B, S, 1]``, and two counters: ``wm``
(frames in the working memory, at most ``work_mem_size``) and ``lm`` (long-term tokens counted).

- :meth:`SpatialMemory.read`: single-head attention of the query tokens over ALL slots,
  ``softmax(norm_q(q) norm_k(K)^T / sqrt(C))``; entries below ``attn_thresh`` are zeroed and each row
  renormalised (a row with EVERY entry below the threshold keeps its softmax: the reference would
  divide 0 by 0 there, which happens only for near-uniform attention over > 1/thresh slots); the result times ``norm_v(V)`` plus the query (residual). The column sums of the
  attention are added to the slots' accumulated attention.
- :meth:`SpatialMemory.add_checked`: skip the write when the new key's token-wise cosine similarity
  with one of the last ``wm`` pseudo-frames (the last ``wm * P`` slots), averaged over tokens, is
  ``> sim_thresh``; the maximum is taken over the WHOLE batch. Otherwise append (existing ages + 1,
  new slots age 0 and attention 0), ``wm += 1``; past ``work_mem_size`` frames ``lm += P``; once
  ``lm > long_mem_size`` prune to ``long_mem_size`` slots and set ``lm = long_mem_size - wm * P``.
- prune: score = attention / age, ``1e8`` where age ``< work_mem_size + 5`` (which also replaces the
  ``0/0`` of fresh slots); keep ``topk(score, long_mem_size)`` in its sorted order, which becomes the
  new slot order. After a prune the last ``wm * P`` slots (what the similarity check compares with)
  are the lowest-scored survivors, not the most recent frames: the reference's behaviour, kept.

Shapes: ``B`` batch, ``P`` tokens per frame, ``C`` width, ``S`` slots.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from .config import PRUNE_PROTECT_EXTRA, MemoryConfig

__all__ = ["SpatialMemory", "MemoryEvent"]

Norm = Callable[[Tensor], Tensor]


@dataclass
class MemoryEvent:
    """What one :meth:`SpatialMemory.add_checked` call did.

    Attributes:
        skipped: the write was skipped by the similarity check.
        pruned: a prune ran (``size_before`` -> ``size``).
        sim_corr: ``[B, t]`` mean cosine per working-memory pseudo-frame (oldest first), or None
            when the memory was empty.
        size, size_before_prune, wm, lm: slots and counters after the call.
        kept: ``[B, long_mem_size]`` indices (into the slots before the prune) kept by a prune.
        prune_scores: ``[B, S_before, 1]`` the prune scores, when a prune ran.
    """

    skipped: bool
    pruned: bool
    sim_corr: Tensor | None
    size: int
    wm: int
    lm: int
    size_before_prune: int | None = None
    kept: Tensor | None = None
    prune_scores: Tensor | None = None
    extra: dict = field(default_factory=dict)


class SpatialMemory:
    """Key/value memory of a Spann3R sequence (see the module docstring).

    Args:
        norm_q, norm_k, norm_v: the model's ``norm_q/k/v`` LayerNorms (eps 1e-5).
        config: sizes and thresholds (:class:`MemoryConfig`, the reference eval defaults).
        track_sources: also keep ``src`` ``[B, S, 2]`` int64 = (frame id, patch index) per slot.
    """

    def __init__(self, norm_q: Norm, norm_k: Norm, norm_v: Norm, config: MemoryConfig | None = None,
                 track_sources: bool = False) -> None:
        self.norm_q, self.norm_k, self.norm_v = norm_q, norm_k, norm_v
        self.config = config or MemoryConfig()
        self.track_sources = bool(track_sources)
        self.keys: Tensor | None = None  # [B, S, C]
        self.values: Tensor | None = None  # [B, S, C]
        self.attn: Tensor | None = None  # [B, S, 1] accumulated read attention
        self.count: Tensor | None = None  # [B, S, 1] age (writes since the slot was written), float
        self.src: Tensor | None = None  # [B, S, 2] (frame id, patch) when track_sources
        self.wm = 0
        self.lm = 0
        self.num_patches: int | None = None
        self.last_read_attn: Tensor | None = None  # [B, P, S] of the last read (after thresholding)
        self.last_zeroed = 0  # entries zeroed by the threshold in the last read
        self.last_flat_rows = 0  # query rows of the last read with every entry below the threshold

    # ------------------------------------------------------------------ state
    @property
    def size(self) -> int:
        return 0 if self.keys is None else int(self.keys.shape[1])

    @property
    def empty(self) -> bool:
        return self.keys is None

    def nbytes(self) -> int:
        """Bytes held by the slot tensors."""
        return sum(int(t.numel() * t.element_size()) for t in (self.keys, self.values, self.attn, self.count, self.src)
                   if t is not None)

    # ------------------------------------------------------------------ read
    def read(self, query: Tensor, residual: bool = True) -> Tensor:
        """``query`` [B, P, C] -> readout [B, P, C] (plus the query when ``residual``)."""
        if self.keys is None or self.values is None or self.attn is None:
            raise ValueError("SpatialMemory.read: the memory is empty (write a frame first)")
        if query.dim() != 3 or query.shape[0] != self.keys.shape[0] or query.shape[-1] != self.keys.shape[-1]:
            raise ValueError(f"SpatialMemory.read: expected a query [{self.keys.shape[0]}, P, {self.keys.shape[-1]}], "
                             f"found {list(query.shape)}")
        C = query.shape[-1]
        affinity = torch.einsum("bpc,bxc->bpx", self.norm_q(query), self.norm_k(self.keys))
        affinity = affinity / torch.sqrt(torch.tensor(float(C)))  # fp32 scalar, as the reference
        attn = torch.softmax(affinity, dim=-1)
        thresh = float(self.config.attn_thresh)
        self.last_zeroed = self.last_flat_rows = 0
        if thresh > 0:
            low = attn < thresh
            # a row with every entry below the threshold (flat attention over many slots) would be
            # 0/0 = NaN in the reference: such rows keep their softmax instead
            flat = low.all(dim=-1, keepdim=True)
            low = low & ~flat
            self.last_zeroed = int(low.sum())
            self.last_flat_rows = int(flat.sum())
            attn = attn.masked_fill(low, 0.0)
            attn = attn / attn.sum(dim=-1, keepdim=True)
        out = torch.einsum("bpx,bxc->bpc", attn, self.norm_v(self.values))
        if residual:
            out = out + query
        self.attn = self.attn + attn.sum(dim=-2)[..., None]
        self.last_read_attn = attn
        return out

    # ------------------------------------------------------------------ write
    def similarity(self, key: Tensor) -> Tensor | None:
        """``[B, t]`` mean cosine of ``key`` [B, P, C] with each of the last ``wm`` pseudo-frames
        (oldest first); None when the memory is empty."""
        if self.keys is None:
            return None
        P = key.shape[1]
        n = self.wm * P
        wm = self.keys[:, -n:] if n > 0 else self.keys  # the reference's [-0:] = everything
        B, S, C = wm.shape
        if S % P:
            raise ValueError(f"SpatialMemory: {S} working-memory slots are not whole frames of {P} tokens")
        wm = wm.reshape(B, S // P, P, C)
        corr = torch.einsum("bpc,btpc->btp", F.normalize(key, p=2, dim=-1), F.normalize(wm, p=2, dim=-1))
        return corr.mean(dim=-1)

    def add_checked(self, key: Tensor, value: Tensor, frame_id: int = -1) -> MemoryEvent:
        """Write ``key``, ``value`` [B, P, C] unless the similarity check skips it (see the module
        docstring); ``frame_id`` is recorded in :attr:`src` when sources are tracked."""
        if key.dim() != 3 or key.shape != value.shape:
            raise ValueError(f"SpatialMemory.add_checked: expected key and value [B, P, C] of one shape, found "
                             f"{list(key.shape)} and {list(value.shape)}")
        if self.keys is not None and (key.shape[0] != self.keys.shape[0] or key.shape[2] != self.keys.shape[2]):
            raise ValueError(f"SpatialMemory.add_checked: expected [{self.keys.shape[0]}, P, {self.keys.shape[2]}], "
                             f"found {list(key.shape)}")
        if self.num_patches is None:
            self.num_patches = int(key.shape[1])
        elif key.shape[1] != self.num_patches:
            raise ValueError(f"SpatialMemory.add_checked: expected {self.num_patches} tokens per frame, "
                             f"found {key.shape[1]}")
        cfg = self.config
        P = self.num_patches
        sim = None
        if cfg.sim_thresh != 1.0:
            sim = self.similarity(key)
            if sim is not None and float(sim.max()) > cfg.sim_thresh:
                return MemoryEvent(True, False, sim, self.size, self.wm, self.lm)
        self._append(key, value, frame_id)
        self.wm += 1
        if self.wm > cfg.work_mem_size:
            self.wm -= 1
            if cfg.long_mem_size == 0:  # the reference's "no long-term memory": drop the oldest frame
                self._select(slice(P, None))
            else:
                self.lm += P
        if self.lm > cfg.long_mem_size:
            before = self.size
            scores, kept = self._prune()
            self.lm = cfg.long_mem_size - self.wm * P
            return MemoryEvent(False, True, sim, self.size, self.wm, self.lm, before, kept, scores)
        return MemoryEvent(False, False, sim, self.size, self.wm, self.lm)

    def _append(self, key: Tensor, value: Tensor, frame_id: int) -> None:
        B, P, _ = key.shape
        zeros = key.new_zeros(B, P, 1)
        if self.keys is None:
            self.keys, self.values, self.attn, self.count = key, value, zeros, zeros.clone()
        else:
            self.count = torch.cat((self.count + 1, zeros), dim=1)  # type: ignore[operator]
            self.attn = torch.cat((self.attn, zeros), dim=1)  # type: ignore[arg-type]
            self.keys = torch.cat((self.keys, key), dim=1)
            self.values = torch.cat((self.values, value), dim=1)  # type: ignore[arg-type]
        if self.track_sources:
            src = torch.stack([torch.full((P,), int(frame_id), dtype=torch.int64), torch.arange(P)], -1)
            src = src.to(key.device).expand(B, P, 2)
            self.src = src.clone() if self.src is None else torch.cat((self.src, src), dim=1)

    def _select(self, index: slice) -> None:
        for name in ("keys", "values", "attn", "count", "src"):
            t = getattr(self, name)
            if t is not None:
                setattr(self, name, t[:, index])

    def _prune(self) -> tuple[Tensor, Tensor]:
        cfg = self.config
        assert self.attn is not None and self.count is not None and self.keys is not None and self.values is not None
        scores = self.attn / self.count
        scores = scores.masked_fill(self.count < cfg.work_mem_size + PRUNE_PROTECT_EXTRA, 1e8)
        kept = torch.topk(scores, cfg.long_mem_size, dim=1).indices  # [B, L, 1], sorted by score
        C = self.keys.shape[-1]
        self.keys = torch.gather(self.keys, 1, kept.expand(-1, -1, C))
        self.values = torch.gather(self.values, 1, kept.expand(-1, -1, C))
        self.attn = torch.gather(self.attn, 1, kept)
        self.count = torch.gather(self.count, 1, kept)
        if self.src is not None:
            self.src = torch.gather(self.src, 1, kept.expand(-1, -1, 2))
        return scores, kept[..., 0]
