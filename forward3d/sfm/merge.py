"""Joining the sub-models of one SfM run: COLMAP's incremental mapper starts a new model when it cannot
register more images, and each model has its own world and scale. The smaller models are mapped into the
largest one by a Sim(3) fitted to 3D-3D point pairs found through shared frames, then concatenated.

A frame ``f`` near the boundary of the two models gets SIFT features; they are matched to the features with
a 3D point of the nearest registered keyframes of each model, which gives pairs ``(point in A, point in B)``
seen by the same pixel of ``f``. A RANSAC Umeyama fit (:func:`forward3d.geometry.align.umeyama_ransac`) of
those pairs gives the similarity ``B -> A``; :func:`merge_models` applies it.

Example::

    joined, report = join_models(model, keys, image, matcher)   # model.others are folded in
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Callable

import numpy as np

from forward3d.geometry.align import umeyama_ransac
from forward3d.geometry.se3 import make_sim3, split_sim3
from forward3d.types import PointCloud

__all__ = ["point_lookup", "model_point_pairs", "fit_model_sim3", "merge_models", "join_models"]

log = logging.getLogger(__name__)


def point_lookup(model: Any, frame: int, keys: list[int], desc: np.ndarray, matcher: Any,
                 nearest: int = 2) -> dict[int, int]:
    """``{feature index of the frame: point index of model}`` by matching ``desc`` (``[k, 128]`` unit
    descriptors of input frame ``frame``) to the 3D-point features of the ``nearest`` registered keyframes
    of ``model`` closest in time (``keys[p]`` = input index of SfM image ``p``). First match wins."""
    reg = [p for p in range(len(keys)) if model.registered[p]]
    out: dict[int, int] = {}
    for p in sorted(reg, key=lambda q: abs(keys[q] - frame))[:nearest]:
        _, desc_k, pidx_k = model.features[p]
        pairs = matcher.match(desc, desc_k)
        for i, j in pairs:
            out.setdefault(int(i), int(pidx_k[j]))
    return out


def model_point_pairs(a: Any, b: Any, keys: list[int], image: Callable[[int], np.ndarray], matcher: Any,
                      frames: int = 6) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """3D-3D pairs ``(points of a [k, 3], points of b [k, 3], frames used)`` seen through the ``frames``
    registered keyframes of either model closest in time to the other model (``image(i)``: input frame i)."""
    in_a = [keys[p] for p in range(len(keys)) if a.registered[p]]
    in_b = [keys[p] for p in range(len(keys)) if b.registered[p]]
    if not in_a or not in_b:
        return np.zeros((0, 3)), np.zeros((0, 3)), []
    gap = {f: min(abs(f - g) for g in in_b) for f in in_a}
    gap.update({f: min(abs(f - g) for g in in_a) for f in in_b})
    used = sorted(gap, key=lambda f: (gap[f], f))[:frames]
    pa, pb = [], []
    for f in used:
        _, desc = matcher.extract(image(f))
        la, lb = point_lookup(a, f, keys, desc, matcher), point_lookup(b, f, keys, desc, matcher)
        for i in la.keys() & lb.keys():
            pa.append(la[i])
            pb.append(lb[i])
    pairs = np.unique(np.stack([pa, pb], 1), axis=0) if pa else np.zeros((0, 2), np.int64)
    return (a.points.points[pairs[:, 0]].astype(np.float64), b.points.points[pairs[:, 1]].astype(np.float64),
            used)


def fit_model_sim3(src: np.ndarray, dst: np.ndarray, scene_size: float, rel_threshold: float = 0.03,
                   min_inliers: int = 12) -> tuple[np.ndarray, int] | None:
    """Sim(3) ``[4, 4]`` mapping ``src`` points (``[k, 3]``, model B) onto ``dst`` (model A) and its inlier
    count, by RANSAC with the inlier distance ``rel_threshold * scene_size`` (A's units); None with fewer
    than ``min_inliers`` inliers."""
    if len(src) < max(min_inliers, 3):
        return None
    try:
        s, R, t, inl = umeyama_ransac(src, dst, threshold=rel_threshold * scene_size, iters=500)
    except ValueError:
        return None
    if int(inl.sum()) < min_inliers:
        return None
    return make_sim3(R, t, s), int(inl.sum())


def merge_models(a: Any, b: Any, S: np.ndarray) -> Any:
    """Model ``b`` mapped into ``a``'s world by the Sim(3) ``S`` (``[4, 4]``, ``x_a = S x_b``) and joined:
    an :class:`~forward3d.sfm.colmap_sfm.SfMModel` over the same SfM images with the registered images of
    both (``a`` wins where both are registered), ``b``'s points appended after ``a``'s."""
    s, R, t = split_sim3(S)
    s = float(s)
    off = len(a.points)
    take = b.registered & ~a.registered
    c2w = a.c2w.copy()
    for p in np.flatnonzero(take):
        T = S @ b.c2w[p]
        T[:3, :3] /= s
        c2w[p] = T
    xyz = (s * b.points.points.astype(np.float64) @ R.T + t).astype(np.float32)
    points = PointCloud(np.concatenate([a.points.points, xyz]),
                        None if a.points.colors is None or b.points.colors is None
                        else np.concatenate([a.points.colors, b.points.colors]))
    K = a.K.copy()
    K[take] = b.K[take]
    visibility = [b.visibility[p] + off if take[p] else a.visibility[p] for p in range(len(a.registered))]
    features = [(b.features[p][0], b.features[p][1], b.features[p][2] + off) if take[p] else a.features[p]
                for p in range(len(a.registered))]
    na, nb = sum(len(v) for v in a.visibility), sum(len(v) for v in b.visibility)
    err = (a.mean_reprojection_error * na + b.mean_reprojection_error * nb) / max(na + nb, 1)
    return dataclasses.replace(a, registered=a.registered | b.registered, c2w=c2w, K=K, points=points,
                               point_errors=np.concatenate([a.point_errors, b.point_errors]), visibility=visibility,
                               mean_reprojection_error=float(err), features=features, others=[])


def _scene_size(model: Any) -> float:
    centres = model.c2w[model.registered][:, :3, 3]
    pts = model.points.points.astype(np.float64)
    if len(pts) == 0:
        return 1.0
    return float(np.median(np.linalg.norm(pts - np.median(centres, 0), axis=1))) or 1.0


def join_models(model: Any, keys: list[int], image: Callable[[int], np.ndarray], matcher: Any,
                frames: int = 6, min_inliers: int = 12) -> tuple[Any, list[dict[str, Any]]]:
    """Fold ``model.others`` (smaller sub-models, largest first) into ``model`` where a Sim(3) through shared
    frames is found (:func:`model_point_pairs`, :func:`fit_model_sim3`); the rest stay out (their images
    count as unregistered). Returns the joined model and one report dict per sub-model."""
    joined = dataclasses.replace(model, others=[])
    subs = sorted(model.others, key=lambda m: -int(m.registered.sum()))
    reports: list[dict[str, Any]] = [{"images": int(m.registered.sum()), "joined": False} for m in subs]
    pending = list(range(len(subs)))
    progress = True
    while pending and progress:  # a sub-model may connect only through one joined before it
        progress = False
        for k in list(pending):
            dst, src, used = model_point_pairs(joined, subs[k], keys, image, matcher, frames)
            fit = fit_model_sim3(src, dst, _scene_size(joined), min_inliers=min_inliers)
            reports[k].update(point_pairs=len(src), frames=used)
            if fit is None:
                continue
            S, inl = fit
            joined = merge_models(joined, subs[k], S)
            reports[k].update(joined=True, inliers=inl, scale=float(split_sim3(S)[0]))
            pending.remove(k)
            progress = True
            log.info("sfm: joined a sub-model of %d images (%d point pairs through frames %s, %d inliers, "
                     "scale %.3g)", reports[k]["images"], len(src), used, inl, reports[k]["scale"])
    for k in pending:
        log.warning("sfm: a sub-model of %d images shares too few points with the main model; its images are "
                    "registered one by one (PnP) or interpolated", reports[k]["images"])
    return joined, reports
