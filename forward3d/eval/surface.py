"""Scoring a reconstructed surface against a ground-truth surface, with the part the input saw.

- :class:`VisibilityMask`: which ground-truth surface points some input frame saw (depth-consistent
  projection), so completion is measured against what could be reconstructed.
- :func:`score_surface`: accuracy / completion / F-score of a point cloud against such a surface.
"""

from __future__ import annotations

import numpy as np

from forward3d.geometry.camera import project, world_to_camera
from forward3d.types import Frame, PointCloud

__all__ = ["VisibilityMask", "score_surface"]


class VisibilityMask:
    """Marks ground-truth surface points seen by the frames (depth-consistent projection).

    Args:
        points: ``[N, 3]`` world points.
        tolerance: base depth tolerance in metres; ``noise * z^2 * 3`` is added for noisy sensors.
    """

    def __init__(self, points: np.ndarray, tolerance: float = 0.03, noise: float = 0.0) -> None:
        self.points = np.asarray(points, np.float64)
        self.seen = np.zeros(len(self.points), bool)
        self.tolerance = float(tolerance)
        self.noise = float(noise)

    def update(self, frame: Frame) -> None:
        if frame.depth is None or frame.K is None or frame.c2w is None:
            return
        uv, z = project(world_to_camera(self.points, frame.c2w), frame.K)
        front = z > 1e-3
        u = np.where(front, np.floor(np.nan_to_num(uv[:, 0], nan=-1.0)), -1).astype(np.int64)
        v = np.where(front, np.floor(np.nan_to_num(uv[:, 1], nan=-1.0)), -1).astype(np.int64)
        inside = front & (u >= 0) & (u < frame.width) & (v >= 0) & (v < frame.height)
        d = np.zeros(len(z))
        d[inside] = frame.depth[v[inside], u[inside]]
        tol = self.tolerance + 3.0 * self.noise * z**2
        self.seen |= inside & (d > 0) & (np.abs(d - z) < tol)


def score_surface(points: PointCloud, gt: PointCloud, seen: np.ndarray | None = None,
                  thresholds=(0.01, 0.02, 0.05)) -> dict[str, float]:
    """Accuracy / completion / F-score of ``points`` against the ground-truth surface ``gt``.

    ``points`` are voxel-downsampled to 1 cm (``gt`` is expected on a regular grid already, e.g.
    ``SyntheticScene.surface_points(0.01)``). Accuracy and precision use all of ``gt`` (a point is
    right if it lies on any true surface); completion and recall only the ``seen`` ``[N]`` bool subset
    (surface no frame saw cannot be reconstructed).
    """
    from forward3d.eval.recon import nearest_distances, recon_metrics, voxel_downsample

    pred, _ = voxel_downsample(points.points, 0.01)
    ref = gt.points if seen is None else gt.points[seen]
    out = dict(recon_metrics(pred, ref, thresholds=thresholds))
    if seen is None or seen.all():
        return out
    d, _ = nearest_distances(pred, gt.points)
    out["accuracy"], out["accuracy_median"] = float(d.mean()), float(np.median(d))
    out["chamfer"] = 0.5 * (out["accuracy"] + out["completion"])
    for t in thresholds:
        p, r = float((d < t).mean()), out[f"recall@{t:g}"]
        out[f"precision@{t:g}"] = p
        out[f"fscore@{t:g}"] = 2 * p * r / (p + r) if p + r > 0 else 0.0
    return out

