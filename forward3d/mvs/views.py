"""Source-view selection and per-view depth ranges (numpy, cheap).

The score of a source view ``j`` for a reference ``i`` sums, over the scene points both see, MVSNet's
piecewise Gaussian of the triangulation angle ``theta`` at the point (Yao et al. 2018):
``exp(-(theta - theta0)**2 / (2 * 1**2))`` below ``theta0`` and ``exp(-(theta - theta0)**2 / (2 * 10**2))``
above (degrees), so that views with some parallax and a large overlap win. Points with an angle below
``min_triangulation_deg`` do not count, and a pair whose median angle is below it is not used.

The points are the sparse SfM points with their visibility when given; without visibility a point is
seen by the views it projects into (in front, inside the image; no occlusion test); without points,
a grid of 8 x 6 pixels of the reference at its nominal depth (the geometric mean of its range) stands
in for the scene.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

from forward3d.mvs.config import MVSConfig

__all__ = ["estimate_depth_ranges", "project_visible", "select_source_views", "view_selection_score"]

log = logging.getLogger(__name__)


def view_selection_score(theta_deg: np.ndarray, theta0: float) -> np.ndarray:
    """MVSNet's piecewise Gaussian of the triangulation angle (degrees): 1 at ``theta0``."""
    t = np.asarray(theta_deg, np.float64)
    sigma = np.where(t <= theta0, 1.0, 10.0)
    return np.exp(-((t - theta0) ** 2) / (2.0 * sigma ** 2))


def project_visible(points: np.ndarray, K: np.ndarray, c2w: np.ndarray, size: tuple[int, int]
                    ) -> tuple[np.ndarray, np.ndarray]:
    """``(inside [M] bool, z [M])``: points ``[M, 3]`` in front of camera ``c2w`` and inside its ``(H, W)`` image."""
    w2c = np.linalg.inv(c2w)
    pc = points @ w2c[:3, :3].T + w2c[:3, 3]
    z = pc[:, 2]
    zs = np.where(z > 1e-9, z, 1.0)
    u = K[0, 0] * pc[:, 0] / zs + K[0, 1] * pc[:, 1] / zs + K[0, 2]
    v = K[1, 1] * pc[:, 1] / zs + K[1, 2]
    h, w = size
    return (z > 1e-9) & (u >= 0) & (u <= w) & (v >= 0) & (v <= h), z


def _visibility(points: np.ndarray | None, visibility: Sequence[np.ndarray] | None, K: np.ndarray,
                c2w: np.ndarray, sizes: list[tuple[int, int]]) -> np.ndarray | None:
    """``[N, M]`` bool: which view sees which sparse point (given, else by projection)."""
    if points is None:
        return None
    n, m = len(c2w), len(points)
    V = np.zeros((n, m), bool)
    for i in range(n):
        if visibility is not None:
            V[i, np.asarray(visibility[i], np.int64)] = True
        else:
            V[i] = project_visible(points, K[i], c2w[i], sizes[i])[0]
    return V


def estimate_depth_ranges(K: np.ndarray, c2w: np.ndarray, sizes: list[tuple[int, int]], points: np.ndarray | None,
                          visibility: Sequence[np.ndarray] | None, cfg: MVSConfig,
                          vis_matrix: np.ndarray | None = None) -> tuple[np.ndarray, list[str]]:
    """``([N, 2] (near, far), how per view)``: from the sparse points a view sees, else the baseline.

    With at least 8 points in front of the view: their 1st and 99th z percentiles widened by
    ``depth_margin`` (``near / (1 + m)``, ``far * (1 + m)``). Otherwise ``baseline_depth_range`` times the
    median distance to the ``num_src`` nearest camera centres (coincident cameras left out).
    """
    n = len(c2w)
    V = _visibility(points, visibility, K, c2w, sizes) if vis_matrix is None else vis_matrix
    centres = c2w[:, :3, 3]
    dist = np.linalg.norm(centres[:, None] - centres[None], axis=-1)
    out = np.zeros((n, 2))
    how = []
    m = cfg.depth_margin
    for i in range(n):
        if V is not None:
            z = project_visible(points[V[i]], K[i], c2w[i], sizes[i])[1]
            z = z[z > 1e-9]
            if len(z) >= 8:
                lo, hi = np.percentile(z, [1.0, 99.0])
                out[i] = lo / (1.0 + m), hi * (1.0 + m)
                how.append("points")
                continue
        others = np.delete(dist[i], i)
        others = np.sort(others[others > 1e-9 * max(float(dist.max()), 1e-300)])[:max(1, cfg.num_src)]
        b = float(np.median(others)) if len(others) else 0.0
        if not b > 0:
            raise ValueError(f"dense_reconstruct: camera {i} has the same centre as the others and no sparse "
                             "points give its depth range: no parallax for stereo (give depth_ranges or "
                             "sparse_points, or frames taken from different positions)")
        out[i] = b * cfg.baseline_depth_range[0], b * cfg.baseline_depth_range[1]
        how.append("baseline")
    return out, how


def select_source_views(K: np.ndarray, c2w: np.ndarray, sizes: list[tuple[int, int]], points: np.ndarray | None,
                        visibility: Sequence[np.ndarray] | None, depth_ranges: np.ndarray, cfg: MVSConfig,
                        vis_matrix: np.ndarray | None = None) -> list[np.ndarray]:
    """Per view the indices ``[<= num_src]`` int64 of its source views, best first (may be empty)."""
    n = len(c2w)
    V = _visibility(points, visibility, K, c2w, sizes) if vis_matrix is None else vis_matrix
    centres = c2w[:, :3, 3]
    out = []
    for i in range(n):
        if V is not None and V[i].sum() >= 8:
            X = points[V[i]]
            seen = V[:, V[i]]  # [N, m]
        else:  # stand-in points: a pixel grid of view i at its nominal depth
            h, w = sizes[i]
            u, v = np.meshgrid((np.arange(8) + 0.5) * w / 8, (np.arange(6) + 0.5) * h / 6)
            z = float(np.sqrt(depth_ranges[i, 0] * depth_ranges[i, 1]))
            rays = np.linalg.inv(K[i]) @ np.stack([u.ravel(), v.ravel(), np.ones(u.size)])
            X = (c2w[i, :3, :3] @ (rays * z)).T + c2w[i, :3, 3]
            seen = np.stack([project_visible(X, K[j], c2w[j], sizes[j])[0] for j in range(n)])
        ri = centres[i] - X
        ri /= np.linalg.norm(ri, axis=1, keepdims=True).clip(1e-12)
        scores = np.full(n, -1.0)
        for j in range(n):
            if j == i or not seen[j].any():
                continue
            rj = centres[j] - X[seen[j]]
            rj /= np.linalg.norm(rj, axis=1, keepdims=True).clip(1e-12)
            theta = np.degrees(np.arccos(np.clip((ri[seen[j]] * rj).sum(1), -1.0, 1.0)))
            if np.median(theta) < cfg.min_triangulation_deg:
                continue
            ok = theta >= cfg.min_triangulation_deg
            scores[j] = float(view_selection_score(theta[ok], cfg.view_score_deg).sum())
        order = np.argsort(-scores, kind="stable")
        chosen = order[scores[order] > 0][:cfg.num_src]
        if len(chosen) == 0:
            log.warning("dense_reconstruct: view %d has no source view with parallax and overlap; "
                        "it gets no depth", i)
        out.append(chosen.astype(np.int64))
    return out
