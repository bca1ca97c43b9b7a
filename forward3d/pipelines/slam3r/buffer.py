"""The SLAM3R buffering set: the pool of registered frames that serve as scene frames.

Reference rules (``../shared/specs/slam3r.md`` step 7): every ``update_buffer_intv * s`` registered
frames, each block of ``s`` frames after the milestone is a candidate. When the buffer is full,
``fifo`` always inserts and evicts the oldest entry; ``reservoir`` inserts with probability
``size / count`` (count = candidates seen so far) and evicts a random entry. The frame inserted from a
block maximises ``((c_l2w - 1) / c_l2w) * ((c_i2p - 1) / c_i2p)`` (mean confidences) among the frames
at least ``3s/4`` after the last buffered frame.
"""

from __future__ import annotations

import logging
from typing import Sequence

import numpy as np

logger = logging.getLogger(__name__)

__all__ = ["BufferingSet"]


class BufferingSet:
    """Frame ids of the buffering set plus the reference's milestone/reservoir bookkeeping.

    Args:
        ids: the initial frames (the initial window's keyframes).
        max_size: capacity; <= 0 means unbounded.
        strategy: ``"reservoir"`` or ``"fifo"``.
        stride: the keyframe stride ``s``.
        update_intv: ``update_buffer_intv`` (in strides).
        milestone: first frame id that has not yet been a buffer candidate.
        rng: the pipeline's random state (reservoir draws).
    """

    def __init__(self, ids: Sequence[int], max_size: int, strategy: str, stride: int, update_intv: int,
                 milestone: int, rng: np.random.RandomState) -> None:
        if strategy not in ("reservoir", "fifo"):
            raise ValueError(f"BufferingSet: expected strategy 'reservoir' or 'fifo', found {strategy!r}")
        if max_size > 0 and len(ids) > max_size:
            raise ValueError(f"BufferingSet: {len(ids)} initial frames exceed buffer_size {max_size}")
        self.ids: list[int] = [int(i) for i in ids]
        self.max_size = int(max_size)
        self.strategy = strategy
        self.stride = int(stride)
        self.update_intv = int(update_intv) * int(stride)
        self.milestone = int(milestone)
        self.candidate_count = len(self.ids)
        self.rng = rng

    def __len__(self) -> int:
        return len(self.ids)

    def __contains__(self, frame_id: int) -> bool:
        return frame_id in self.ids

    @property
    def full(self) -> bool:
        return self.max_size > 0 and len(self.ids) >= self.max_size

    def update(self, next_register_id: int, l2w_conf_mean: Sequence[float],
               i2p_conf_mean: Sequence[float]) -> tuple[list[int], list[int]]:
        """Run the reference update once frames ``< next_register_id`` are registered.

        ``l2w_conf_mean`` / ``i2p_conf_mean``: mean confidences indexed by frame id (at least up to
        ``next_register_id - 1``). Returns (inserted ids, evicted ids).
        """
        inserted: list[int] = []
        evicted: list[int] = []
        s = self.stride
        if next_register_id - self.milestone < self.update_intv:
            return inserted, evicted
        while next_register_id - self.milestone >= s:
            self.candidate_count += 1
            full = self.full
            insert = (not full) or self.strategy == "fifo" or (
                self.strategy == "reservoir" and self.rng.rand() < self.max_size / self.candidate_count)
            if not insert:
                self.milestone += s
                continue
            last = self.ids[-1] if self.ids else -s
            offset = max(0, last + s * 3 // 4 - self.milestone)
            offset = min(offset, s - 1)  # never an empty candidate block
            cand = np.arange(self.milestone + offset, self.milestone + s)
            rc = np.array([float(l2w_conf_mean[i]) for i in cand])
            lc = np.array([float(i2p_conf_mean[i]) for i in cand])
            score = ((rc - 1.0) / rc) * ((lc - 1.0) / lc)
            chosen = int(cand[int(np.argmax(score))])
            self.ids.append(chosen)
            inserted.append(chosen)
            if full:
                if self.strategy == "reservoir":
                    evicted.append(self.ids.pop(int(self.rng.randint(self.max_size))))
                else:
                    evicted.append(self.ids.pop(0))
            self.milestone += s
        return inserted, evicted
