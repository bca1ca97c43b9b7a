"""SpatialMemory logic on hand-made keys: read (against a slow per-token reference), attention
threshold, similarity skip (batch-wide max), counters, pruning and its quirks."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from forward3d.models.spann3r import MemoryConfig, SpatialMemory

P, C = 4, 8


def norms(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(3):
        ln = nn.LayerNorm(C)
        with torch.no_grad():
            ln.weight.copy_(1 + 0.2 * torch.randn(C, generator=g))
            ln.bias.copy_(0.1 * torch.randn(C, generator=g))
        out.append(ln)
    return out


def memory(**cfg) -> SpatialMemory:
    q, k, v = norms()
    return SpatialMemory(q, k, v, MemoryConfig(**{"long_mem_size": 1000, "work_mem_size": 2, "attn_thresh": 0.0,
                                                  "sim_thresh": 0.95, **cfg}), track_sources=True)


def frame_keys(seed: int, B: int = 1) -> torch.Tensor:
    """Random keys [B, P, C] (pairwise cosine ~0: never similar to each other)."""
    return torch.randn(B, P, C, generator=torch.Generator().manual_seed(seed))


def slow_read(mem: SpatialMemory, q: torch.Tensor, thresh: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-batch, per-query-token reference of the read (and the attention it accumulates)."""
    B, Pq, _ = q.shape
    out = torch.zeros_like(q)
    colsum = torch.zeros(B, mem.size)
    for b in range(B):
        K = mem.norm_k(mem.keys[b])
        V = mem.norm_v(mem.values[b])
        for p in range(Pq):
            qn = mem.norm_q(q[b, p])
            a = torch.softmax(torch.stack([qn @ K[s] / math.sqrt(C) for s in range(mem.size)]), 0)
            if thresh > 0:
                if bool((a >= thresh).any()):
                    a = torch.where(a < thresh, torch.zeros_like(a), a)
                    a = a / a.sum()
            out[b, p] = sum(a[s] * V[s] for s in range(mem.size)) + q[b, p]
            colsum[b] += a
    return out, colsum


@pytest.mark.parametrize("thresh", [0.0, 0.1])
def test_read_matches_slow_reference(thresh):
    mem = memory(attn_thresh=thresh)
    with torch.no_grad():
        for s in range(3):
            mem.add_checked(frame_keys(s, 2), frame_keys(10 + s, 2), frame_id=s)
        q = frame_keys(99, 2) * 3
        ref, colsum = slow_read(mem, q, thresh)
        out = mem.read(q)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(mem.attn[..., 0], colsum, rtol=1e-5, atol=1e-6)
    rows = mem.last_read_attn.sum(-1)
    torch.testing.assert_close(rows, torch.ones_like(rows))
    if thresh > 0:
        assert mem.last_zeroed > 0 and bool((mem.last_read_attn[mem.last_read_attn > 0] >= thresh).all())
    with torch.no_grad():
        no_res = mem.read(q, residual=False)
    torch.testing.assert_close(no_res + q, ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(mem.attn[..., 0], 2 * colsum, rtol=1e-5, atol=1e-6)  # accumulates


def test_threshold_on_flat_attention_keeps_the_softmax():
    """Every entry below the threshold (uniform attention over 12 slots = 0.083 < 0.1): the
    reference's 0/0 would give NaN; the row keeps its softmax instead."""
    mem = memory(attn_thresh=0.1, sim_thresh=1.0)  # no skip: the same key three times
    k = torch.zeros(1, P, C)  # identical keys -> identical affinities -> uniform rows
    for s in range(3):
        mem.add_checked(k, frame_keys(s), frame_id=s)
    with torch.no_grad():
        out = mem.read(frame_keys(7))
    assert torch.isfinite(out).all() and mem.last_flat_rows == P and mem.last_zeroed == 0
    torch.testing.assert_close(mem.last_read_attn, torch.full((1, P, 3 * P), 1 / (3 * P)))


def test_similarity_skip_and_counters():
    mem = memory(work_mem_size=2)
    k0 = frame_keys(0)
    e = mem.add_checked(k0, k0, frame_id=0)
    assert not e.skipped and e.sim_corr is None and (mem.wm, mem.lm, mem.size) == (1, 0, P)
    e = mem.add_checked(k0 * 2.0, k0, frame_id=1)  # same direction: cosine 1 > 0.95
    assert e.skipped and (mem.wm, mem.lm, mem.size) == (1, 0, P)
    assert float(e.sim_corr.max()) == pytest.approx(1.0)
    assert mem.count.sum() == 0  # a skipped write changes nothing
    for s in (1, 2, 3):
        e = mem.add_checked(frame_keys(s), frame_keys(s), frame_id=s)
        assert not e.skipped
    # wm capped at 2; the frames beyond it count as long-term tokens
    assert (mem.wm, mem.lm, mem.size) == (2, 2 * P, 4 * P)
    assert mem.count[0, :, 0].tolist() == [3] * P + [2] * P + [1] * P + [0] * P
    assert e.sim_corr.shape == (1, 2)
    # a duplicate of frame 0, which is outside the 2-frame working memory: not skipped
    assert not mem.add_checked(k0, k0, frame_id=4).skipped


def test_sim_thresh_one_never_skips():
    mem = memory(sim_thresh=1.0)
    k = frame_keys(0)
    for s in range(3):
        e = mem.add_checked(k, k, frame_id=s)
        assert not e.skipped and e.sim_corr is None
    assert mem.size == 3 * P


def test_similarity_max_over_the_whole_batch():
    mem = memory()
    k = frame_keys(0, B=2)
    mem.add_checked(k, k, frame_id=0)
    new = torch.cat([frame_keys(5), k[1:]])  # element 0 is new, element 1 repeats itself
    e = mem.add_checked(new, new, frame_id=1)
    assert e.skipped and e.sim_corr.shape == (2, 1)
    assert float(e.sim_corr[0, 0]) < 0.9 < float(e.sim_corr[1, 0])
    assert mem.size == P  # skipped for BOTH batch elements


def _fill_until_prune(mem: SpatialMemory, n: int) -> list:
    events = []
    with torch.no_grad():
        for s in range(n):
            if s:
                mem.read(frame_keys(100) * (1 + s))  # reads accumulate attention on the existing slots
            events.append(mem.add_checked(frame_keys(s), frame_keys(50 + s), frame_id=s))
    return events


def test_prune_protects_young_slots_and_keeps_top_scores():
    W, L = 2, 8 * P
    mem = memory(work_mem_size=W, long_mem_size=L)
    # lm counts P per write beyond the first W: lm > L at the 11th write (44 slots)
    events = _fill_until_prune(mem, 11)
    assert [e.pruned for e in events] == [False] * 10 + [True]
    e = events[-1]
    assert e.size_before_prune == 11 * P and mem.size == L
    assert mem.lm == L - W * P and mem.wm == W
    scores = e.prune_scores[0, :, 0]
    age = torch.tensor([10 - f for f in range(11) for _ in range(P)], dtype=torch.float32)
    protected = age < W + 5  # frames 4..10
    assert bool((scores[protected] == 1e8).all()) and bool((scores[~protected] < 1e8).all())
    expect = torch.topk(scores, L).indices
    assert e.kept[0].tolist() == expect.tolist()  # topk order = the new slot order
    assert mem.src[0].tolist() == [[f, p] for f, p in (divmod(int(i), P) for i in expect)]
    # all 28 protected slots are kept, plus the 4 best-scored of the 16 older ones
    kept = set(e.kept[0].tolist())
    assert set(torch.nonzero(protected)[:, 0].tolist()) <= kept
    old = torch.nonzero(~protected)[:, 0]
    best_old = old[torch.argsort(scores[old], descending=True)[:L - int(protected.sum())]]
    assert kept - set(torch.nonzero(protected)[:, 0].tolist()) == set(best_old.tolist())
    # the kept slots' state moved with them
    torch.testing.assert_close(mem.count[0, :, 0], age[expect])


def test_after_prune_the_working_memory_tail_is_not_the_latest_frames():
    """Reference quirk: the similarity check compares with the LAST wm*P slots, which after a
    prune are the lowest-scored survivors (topk order), not the most recent frames."""
    mem = memory(work_mem_size=2, long_mem_size=8 * P)
    _fill_until_prune(mem, 11)
    assert set(mem.src[0, -P:, 0].tolist()) <= {0, 1, 2, 3}  # old, unprotected survivors at the end
    sim = mem.similarity(frame_keys(10))  # the latest frame is not in the last pseudo-frame
    assert sim.shape == (1, 2) and float(sim[0, -1]) < 0.9


def test_no_long_term_memory_drops_the_oldest_frame():
    mem = memory(work_mem_size=2, long_mem_size=0)
    for s in range(5):
        mem.add_checked(frame_keys(s), frame_keys(s), frame_id=s)
    assert mem.size == 2 * P and mem.src[0, :, 0].tolist() == [3] * P + [4] * P
    assert mem.lm == 0 and mem.wm == 2


def test_bad_input():
    mem = memory()
    with pytest.raises(ValueError, match="memory is empty"):
        mem.read(frame_keys(0))
    with pytest.raises(ValueError, match="one shape"):
        mem.add_checked(frame_keys(0), frame_keys(0)[:, :2])
    mem.add_checked(frame_keys(0), frame_keys(0))
    with pytest.raises(ValueError, match="tokens per frame"):
        mem.add_checked(torch.zeros(1, P + 1, C), torch.zeros(1, P + 1, C))
    with pytest.raises(ValueError, match="expected"):
        mem.add_checked(torch.zeros(2, P, C), torch.zeros(2, P, C))
    with pytest.raises(ValueError, match="query"):
        mem.read(torch.zeros(1, P, C + 1))
    with pytest.raises(ValueError, match="long_mem_size"):
        MemoryConfig(long_mem_size=-1)
    assert mem.nbytes() > 0
