"""View sampling: the reference's window rules, order / reference view, limits, invalid views and the
deterministic per-epoch seeding of the torch Dataset (also through DataLoader workers)."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from forward3d.data import sampling
from forward3d.data.sequence import SequenceConfig, get_dataset_class
from forward3d.data.views import collate_views


def _cfg(**kw) -> SequenceConfig:
    c = SequenceConfig(**kw)
    c.validate()
    return c


def _reference_windows(n, num_views, sample_freq, start_freq, winsize=None):
    """The reference's loop (ScanNetpp_Seq._load_data), written out independently."""
    win = winsize if winsize is not None else sample_freq * (num_views - 1)
    out = []
    for i in range(0, n, start_freq):
        last = i + win
        if last >= n:
            break
        out.append((i, last))
    return out


@pytest.mark.parametrize("n, v, f, s", [(20, 3, 2, 1), (20, 11, 1, 3), (7, 4, 2, 1), (100, 5, 3, 2), (5, 6, 1, 1)])
def test_sliding_windows_match_the_reference(n, v, f, s):
    cfg = _cfg(num_views=v, sample_freq=f, start_freq=s)
    wins = sampling.make_windows(n, cfg)
    assert wins == _reference_windows(n, v, f, s)
    rng = np.random.default_rng(0)
    for sid, eid in wins:
        ids = sampling.select_frames(sid, eid, 0, cfg, rng)
        assert ids == [sid + k * f for k in range(v)] and ids[-1] == eid


def test_random_selection():
    cfg = _cfg(num_views=5, rand_sel=True, winsize=8, sel_num=3)
    assert sampling.window_size(cfg) == 8 and sampling.samples_per_window(cfg) == 3
    rng = np.random.default_rng(0)
    assert sampling.select_frames(10, 18, 0, cfg, rng) == [10, 12, 14, 16, 18]  # linspace
    for _ in range(20):
        ids = sampling.select_frames(10, 18, 1, cfg, rng)
        assert ids[0] == 10 and ids[-1] == 18 and ids == sorted(ids) and len(set(ids)) == 5
    with pytest.raises(ValueError, match="sel_num=40 exceeds the 35 distinct selections"):
        _cfg(num_views=5, rand_sel=True, winsize=8, sel_num=40)
    assert math.comb(7, 3) == 35
    with pytest.raises(ValueError, match="rand_sel needs winsize"):
        _cfg(num_views=3, rand_sel=True)


def test_degree_windows():
    cfg = _cfg(num_views=3, degree=90, sel_num=2)  # CO3D: 100 frames per turn -> 25-frame windows
    assert sampling.window_size(cfg) == 25
    wins = sampling.make_windows(100, cfg)
    assert wins[0] == (0, 25) and wins[-1] == (74, 99) and len(wins) == 75
    with pytest.raises(ValueError, match="degree"):
        _cfg(degree=400)


def test_stride_filter():
    cfg = _cfg(num_views=3, sample_freq=1, filter=True)  # window of 2 frames
    ids = np.array([0, 10, 20, 30, 100, 110, 120])  # iPhone-like numbering, a gap after 30
    wins = sampling.make_windows(len(ids), cfg, ids, id_stride=10)
    assert (2, 4) not in wins and (3, 5) not in wins and (0, 2) in wins and (4, 6) in wins
    assert sampling.make_windows(len(ids), replace(cfg, filter=False), ids, 10) == [(i, i + 2) for i in range(5)]


def test_order_and_reference():
    rng = np.random.default_rng(0)
    ids = [3, 5, 7, 9, 11]
    assert sampling.order_views(ids, _cfg(num_views=5), rng) == (ids, 2)
    assert sampling.order_views(ids[:4], _cfg(num_views=4), rng)[1] == 1  # (V - 1) // 2, the reference's rule
    assert sampling.order_views(ids, _cfg(num_views=5, ref_id=0), rng) == (ids, 0)
    rev = {tuple(sampling.order_views(ids, _cfg(num_views=5, order="reverse"), rng)[0]) for _ in range(20)}
    assert rev == {tuple(ids), tuple(ids[::-1])}
    perm = sampling.order_views(ids, _cfg(num_views=5, order="random"), np.random.default_rng(3))[0]
    assert sorted(perm) == ids and perm != ids
    refs = {sampling.order_views(ids, _cfg(num_views=5, ref_id=-2), rng)[1] for _ in range(50)}
    assert refs == set(range(5))
    with pytest.raises(ValueError, match="ref_id"):
        _cfg(num_views=3, ref_id=3)


def test_geometry_helpers():
    from forward3d.geometry.se3 import so3_exp

    c2w = np.tile(np.eye(4), (3, 1, 1))
    c2w[1, :3, :3] = so3_exp(np.array([0.0, np.radians(30), 0.0]))
    c2w[2, :3, :3] = so3_exp(np.array([np.radians(50), 0.0, 0.0]))
    np.testing.assert_allclose(sampling.rotation_to_ref(c2w, 0), [0, 30, 50], atol=1e-9)
    K = np.array([[50.0, 0, 32], [0, 50.0, 24], [0, 0, 1]])
    depth = np.full((48, 64), 2.0, np.float32)
    valid = np.ones((48, 64), bool)
    assert sampling.overlap_fraction(depth, valid, K, np.eye(4), K, np.eye(4), 64, 48) == 1.0
    side = np.eye(4)
    side[0, 3] = 100.0  # far to the side: sees nothing of the reference
    assert sampling.overlap_fraction(depth, valid, K, np.eye(4), K, side, 64, 48) == 0.0
    half = np.eye(4)
    half[0, 3] = 2.0 * 32 / 50  # shifted by half the field of view
    assert sampling.overlap_fraction(depth, valid, K, np.eye(4), K, half, 64, 48) == pytest.approx(0.5, abs=0.05)
    assert sampling.overlap_fraction(depth, ~valid, K, np.eye(4), K, half, 64, 48) == 0.0


def _synthetic(**kw):
    base = dict(num_scenes=2, frames_per_scene=16, width=64, height=48, resolution=(64, 48), num_views=3)
    base.update(kw)
    return get_dataset_class("Synthetic")(**base)


def test_dataset_length_and_determinism():
    ds = _synthetic(sample_freq=2, aug_crop=8, transform="ColorJitter")
    assert len(ds) == 2 * len(_reference_windows(16, 3, 2, 1))
    a, b = ds[5], ds[5]
    assert [v.name for v in a.views] == [v.name for v in b.views] and a.seed == (0, 0, 5)
    np.testing.assert_array_equal(a.views[1].image, b.views[1].image)
    ds.set_epoch(1)
    c = ds[5]
    assert c.seed == (0, 1, 5) and not np.array_equal(c.views[1].image, a.views[1].image)  # new augmentation
    ds.set_epoch(0)
    np.testing.assert_array_equal(ds[5].views[1].image, a.views[1].image)
    other_seed = _synthetic(sample_freq=2, aug_crop=8, transform="ColorJitter", seed=9)
    assert not np.array_equal(other_seed[5].views[1].image, a.views[1].image)
    with pytest.raises(IndexError):
        ds[len(ds)]
    with pytest.raises(TypeError):
        ds[(1, 2)]


def test_dataloader_workers_reproduce_direct_indexing():
    ds = _synthetic(sample_freq=2, transform="ColorJitter", aug_crop=4)
    ds.set_epoch(3)
    loader = torch.utils.data.DataLoader(ds, batch_size=2, num_workers=2, collate_fn=collate_views, shuffle=False)
    first = next(iter(loader))
    direct = collate_views([ds[0], ds[1]])
    assert torch.equal(first.image, direct.image) and torch.equal(first.index, torch.tensor([0, 1]))


def test_rotation_and_overlap_limits():
    free = _synthetic(num_views=2, sample_freq=6, trajectory="handheld", speed=2.0)
    rot = [sampling.rotation_to_ref(np.stack([v.c2w for v in free[i].views]), 0).max() for i in range(len(free))]
    assert max(rot) > 40  # without a limit, wide baselines occur
    limited = _synthetic(num_views=2, sample_freq=6, trajectory="handheld", speed=2.0, max_rotation=40, max_retries=30)
    for i in range(len(limited)):
        c2w = np.stack([v.c2w for v in limited[i].views])
        assert sampling.rotation_to_ref(c2w, limited[i].ref_id).max() <= 40
    def overlap(s):
        r, o = s.views[s.ref_id], s.views[1 - s.ref_id]
        return sampling.overlap_fraction(r.depth, r.valid, r.K, r.c2w, o.K, o.c2w, 64, 48)

    assert min(overlap(free[i]) for i in range(len(free))) < 0.5  # without a limit, low overlap occurs
    ov = _synthetic(num_views=2, sample_freq=6, trajectory="handheld", speed=2.0, min_overlap=0.5, max_retries=30)
    for i in range(0, len(ov), 3):
        assert overlap(ov[i]) >= 0.5
    impossible = _synthetic(num_views=2, sample_freq=6, trajectory="handheld", speed=2.0, min_overlap=1.0,
                            max_retries=2)
    with pytest.raises(ValueError, match="no valid set of views after 3 draws"):
        for i in range(len(impossible)):
            impossible[i]


def test_views_without_depth_are_replaced():
    ds = _synthetic(num_views=4, depth_holes=0.0, max_depth=0.0)
    seq = ds.sequences[0]
    load = ds.load_frame

    def holes(s, i, context=None):
        f = load(s, i, context)
        if s is seq and i in (4, 5):
            f = f.with_(depth=np.zeros_like(f.depth))  # a frame whose depth is all invalid
        return f

    ds.load_frame = holes
    s = ds[3]  # frames 3, 4, 5, 6 of the first scene
    names = [v.name for v in s.views]
    assert "000004" not in names and "000005" not in names and all(v.valid.any() for v in s.views)
    frac = _synthetic(num_views=2, depth_holes=0.5, min_valid=0.9, max_retries=1)
    with pytest.raises(ValueError, match="no frame near"):
        frac[0]
