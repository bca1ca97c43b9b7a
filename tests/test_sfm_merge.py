"""Joining SfM sub-models (forward3d.sfm.merge) on a synthetic case: two models of one scene in different
worlds and scales, connected through shared frames; no pycolmap (descriptors are one-hot point ids)."""

from __future__ import annotations

import numpy as np
import pytest

from forward3d.geometry.se3 import make_sim3, split_sim3
from forward3d.sfm.colmap_sfm import SfMModel, SiftMatcher
from forward3d.sfm.merge import fit_model_sim3, join_models, merge_models
from forward3d.types import PointCloud

NPTS = 300


def _scene(seed: int = 0, m: int = 10):
    rng = np.random.default_rng(seed)
    pts = rng.uniform([-2, -1, 3], [2, 1, 5], (NPTS, 3))
    c2w = np.tile(np.eye(4), (m, 1, 1))
    c2w[:, 0, 3] = np.linspace(-1.5, 1.5, m)  # a sideways track looking at the points (+z)
    seen = [np.flatnonzero(np.abs(pts[:, 0] - c2w[i, 0, 3]) < 1.2) for i in range(m)]
    return pts, c2w, seen


def _model(pts, c2w, seen, images, G, m):
    """An SfMModel holding ``images`` (its own points: the scene points they see) in the world ``x' = G x``."""
    s, R, t = split_sim3(G)
    ids = np.unique(np.concatenate([seen[i] for i in images]))
    local = {int(p): k for k, p in enumerate(ids)}
    xyz = (float(s) * pts[ids] @ R.T + t).astype(np.float32)
    reg = np.zeros(m, bool)
    reg[images] = True
    C = np.tile(np.eye(4), (m, 1, 1))
    feats = [(np.zeros((0, 2)), np.zeros((0, NPTS), np.float32), np.zeros(0, np.int64)) for _ in range(m)]
    vis = [np.zeros(0, np.int64) for _ in range(m)]
    for i in images:
        T = G @ c2w[i]
        T[:3, :3] /= float(s)
        C[i] = T
        pidx = np.array([local[int(p)] for p in seen[i]], np.int64)
        feats[i] = (np.zeros((len(pidx), 2)), np.eye(NPTS, dtype=np.float32)[seen[i]], pidx)
        vis[i] = pidx
    K = np.tile(np.diag([100.0, 100.0, 1.0]), (m, 1, 1))
    return SfMModel(reg, C, K, PointCloud(xyz), np.full(len(ids), 0.5), vis, 0.5, np.full(m, NPTS), 2,
                    {"model": "PINHOLE"}, feats)


def _random_sim3(seed: int, scale: float) -> np.ndarray:
    rng = np.random.default_rng(seed)
    R = np.linalg.qr(rng.normal(size=(3, 3)))[0]
    return make_sim3(R * np.sign(np.linalg.det(R)), rng.normal(size=3), scale)


class _OneHotMatcher:
    """``extract`` gives one-hot descriptors of the scene points frame i sees (``image(i)`` = i)."""

    def __init__(self, seen):
        self.seen = seen

    def extract(self, i):
        return np.zeros((len(self.seen[i]), 2)), np.eye(NPTS, dtype=np.float32)[self.seen[i]]

    match = staticmethod(SiftMatcher.match)


def _centre_error(a, b):
    return float(np.abs(a[:, :3, 3] - b[:, :3, 3]).max()), float(np.abs(a[:, :3, :3] - b[:, :3, :3]).max())


def test_merge_models_applies_the_similarity():
    pts, c2w, seen = _scene()
    G = _random_sim3(1, 0.4)
    a = _model(pts, c2w, seen, list(range(0, 6)), np.eye(4), 10)
    b = _model(pts, c2w, seen, list(range(6, 10)), G, 10)
    joined = merge_models(a, b, np.linalg.inv(G))
    assert joined.registered.all() and len(joined.points) == len(a.points) + len(b.points)
    dt, dr = _centre_error(joined.c2w, c2w)
    assert dt < 1e-9 and dr < 1e-9
    p = joined.visibility[8]  # b's points, shifted after a's, now in a's world
    assert p.min() >= len(a.points)
    np.testing.assert_allclose(joined.points.points[p], pts[seen[8]], atol=1e-5)
    assert joined.features[8][2].min() >= len(a.points)


def test_fit_model_sim3_rejects_outliers_and_too_few_pairs():
    rng = np.random.default_rng(2)
    src = rng.normal(size=(80, 3))
    S = make_sim3(np.eye(3), [1.0, 2.0, 3.0], 2.5)
    dst = 2.5 * src + [1.0, 2.0, 3.0]
    dst[:20] += rng.normal(scale=3.0, size=(20, 3))  # 25 % wrong pairs
    got, inl = fit_model_sim3(src, dst, scene_size=3.0)
    np.testing.assert_allclose(got, S, atol=1e-6)
    assert inl == 60
    assert fit_model_sim3(src[:5], dst[:5], scene_size=3.0) is None


@pytest.mark.parametrize("split", [5, 7])
def test_join_models_through_shared_frames(split):
    pts, c2w, seen = _scene(seed=3)
    G = _random_sim3(split, 0.3)
    main = _model(pts, c2w, seen, list(range(split)), np.eye(4), 10)
    sub = _model(pts, c2w, seen, list(range(split, 10)), G, 10)
    main.others = [sub]
    keys = list(range(10))
    joined, reports = join_models(main, keys, lambda i: i, _OneHotMatcher(seen))
    assert reports[0]["joined"] and reports[0]["point_pairs"] > 50
    assert joined.registered.all() and not joined.others
    dt, dr = _centre_error(joined.c2w, c2w)
    assert dt < 1e-5 and dr < 1e-6
    assert abs(reports[0]["scale"] - 1 / 0.3) < 1e-4


def test_join_models_keeps_a_disconnected_model_out():
    pts, c2w, seen = _scene(seed=4)
    far = [np.array([], np.int64) if i >= 6 else s for i, s in enumerate(seen)]  # no shared points
    main = _model(pts, c2w, seen, list(range(6)), np.eye(4), 10)
    sub = _model(pts + 100.0, c2w, seen, list(range(6, 10)), np.eye(4), 10)
    sub.features = [(f[0], f[1][:, ::-1].copy(), f[2]) for f in sub.features]  # other descriptors: no matches
    main.others = [sub]
    joined, reports = join_models(main, list(range(10)), lambda i: i, _OneHotMatcher(far))
    assert not reports[0]["joined"] and joined.registered.sum() == 6


def test_sift_options_reach_pycolmap():
    pycolmap = pytest.importorskip("pycolmap")
    from forward3d.sfm.colmap_sfm import extraction_options
    from forward3d.sfm.config import SfMConfig

    opts = extraction_options(pycolmap, SfMConfig(sift_peak_threshold=0.004, sift_dsp=True, threads=1))
    assert abs(opts.sift.peak_threshold - 0.004) < 1e-12 and opts.sift.domain_size_pooling
    assert not opts.sift.estimate_affine_shape and opts.num_threads == 1
    assert SfMConfig().mapper == "global"
    with pytest.raises(ValueError, match="sift_peak_threshold"):
        SfMConfig(sift_peak_threshold=0.0)
