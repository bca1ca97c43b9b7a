"""The Invisible Stitch scene-geometry benchmark: depth completion of the region a known view misses.

Protocol (ScanNet scenes 0000-0049, every 50th frame, target = frame i + 10; Hypersim pairs where
view 1 covers >= 80 % of view 2): lift frame ``i`` with its ground-truth depth, render the lifted points
into frame ``j``, give the method frame ``j``'s image with that rendered (sparse) depth and coverage
mask, and score the mean absolute depth error (metres) on the pixels the lifted points do NOT cover
(and where ``j`` has ground truth). Variants: completion with the sparse input (``use_sparse=True``),
without it (``use_sparse=False``: the completer sees no known pixel), and a scale/shift-aligned
monocular depth (:class:`~forward3d.models.depth_completion.AlignedCompleter` with sparse input).

The harness (datasets, pair lists, tables) wraps :func:`evaluate_extrapolation_pair`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["ExtrapolationScore", "lift_into_view", "score_extrapolation", "evaluate_extrapolation_pair"]


@dataclass
class ExtrapolationScore:
    """Attributes:
        mae: mean absolute depth error in metres over the scored pixels (NaN when there are none).
        num_pixels: scored pixels (uncovered by the lifted view, valid ground truth).
        coverage: fraction of the target's pixels the lifted view covers.
    """

    mae: float
    num_pixels: int
    coverage: float


def lift_into_view(depth_i: np.ndarray, K_i: np.ndarray, c2w_i: np.ndarray, K_j: np.ndarray, c2w_j: np.ndarray,
                   width: int, height: int, image_i: np.ndarray | None = None,
                   known_alpha: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """Lift view ``i`` (``[H_i, W_i]`` metric depth, 0 = none) and render it into view ``j``.

    Returns ``(sparse_depth [H, W] (0 where not covered), covered [H, W] bool)``, rendered with the
    scene loop's renderer (one Gaussian per pixel, plane depth: :func:`forward3d.pipelines.stitch.
    render_rgbd`)."""
    from forward3d.pipelines.stitch import lift_view, render_rgbd

    d = np.asarray(depth_i, np.float64)
    if d.ndim != 2:
        raise ValueError(f"lift_into_view: expected depth_i [H, W], found {list(d.shape)}")
    img = np.zeros((*d.shape, 3), np.uint8) if image_i is None else np.asarray(image_i)
    valid = np.isfinite(d) & (d > 0)
    g = lift_view(img, d, valid, K_i, c2w_i)
    if g is None:
        raise ValueError("lift_into_view: depth_i has no valid pixel")
    _, alpha, depth = render_rgbd(g, c2w_j, K_j, width, height)
    covered = (alpha >= known_alpha) & (depth > 0)
    return np.where(covered, depth, 0.0), covered


def score_extrapolation(pred_depth: np.ndarray, gt_depth: np.ndarray, covered: np.ndarray) -> ExtrapolationScore:
    """Mean absolute error of ``pred_depth`` against ``gt_depth`` on the pixels NOT ``covered``."""
    p, g, c = np.asarray(pred_depth, np.float64), np.asarray(gt_depth, np.float64), np.asarray(covered, bool)
    if not p.shape == g.shape == c.shape:
        raise ValueError(f"score_extrapolation: shapes differ: pred {list(p.shape)}, gt {list(g.shape)}, "
                         f"covered {list(c.shape)}")
    scored = ~c & np.isfinite(g) & (g > 0) & np.isfinite(p)
    n = int(scored.sum())
    mae = float(np.abs(p[scored] - g[scored]).mean()) if n else float("nan")
    return ExtrapolationScore(mae, n, float(c.mean()))


def evaluate_extrapolation_pair(completer, image_j: np.ndarray, gt_depth_j: np.ndarray, depth_i: np.ndarray,
                                K_i: np.ndarray, c2w_i: np.ndarray, K_j: np.ndarray, c2w_j: np.ndarray,
                                use_sparse: bool = True, min_coverage: float = 0.0) -> ExtrapolationScore:
    """One benchmark pair: lift ``i`` into ``j``, complete ``j``'s depth, score the uncovered pixels.

    ``completer``: a :class:`~forward3d.models.depth_completion.DepthCompleter`; it gets ``c2w_j``
    and ``K_j`` too (oracles use them). ``use_sparse=False``: the completer sees no known pixel.
    ``min_coverage``: a pair where ``i`` covers less of ``j`` is not completed (Hypersim: 0.8); its score
    has ``num_pixels = 0``, ``mae`` NaN and the coverage found."""
    h, w = np.shape(gt_depth_j)
    sparse, covered = lift_into_view(depth_i, K_i, c2w_i, K_j, c2w_j, w, h)
    if covered.mean() < min_coverage:
        return ExtrapolationScore(float("nan"), 0, float(covered.mean()))
    if use_sparse:
        pred = completer.complete(image_j, sparse, covered, K=K_j, c2w=c2w_j)
    else:
        pred = completer.complete(image_j, np.zeros((h, w)), np.zeros((h, w), bool), K=K_j, c2w=c2w_j)
    return score_extrapolation(pred, gt_depth_j, covered)
