"""Scoring one sequence under a protocol: trajectories (ATE/RPE) and point clouds (aligned as published).

- :class:`GroundTruthCollector` wraps the frames a method reads and keeps what scoring needs (each
  frame's ground-truth ``c2w``, as :class:`~forward3d.eval.traj.GroundTruthRecorder`; for reconstruction protocols a bounded random subset of the world points
  of the valid depth pixels with their pixel positions, and the first frame's depth).
- :func:`score_trajectory`: ATE after the protocol's alignment (:func:`forward3d.eval.traj.ate`) and RPE.
- :func:`align_reconstruction` + :func:`score_reconstruction`: the prediction's points (its point maps
  above the confidence threshold, else its fused cloud) aligned with the protocol's recipe, then
  accuracy / completion / normal consistency (:func:`forward3d.eval.recon.recon_metrics`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Iterable, Iterator

import numpy as np

from forward3d.bench.protocol import Protocol, ReconAlignment
from forward3d.eval.traj import GroundTruthRecorder
from forward3d.types import Frame, PointCloud, Reconstruction

__all__ = ["GroundTruthCollector", "centre_window", "window_mask", "score_trajectory", "align_reconstruction", "score_reconstruction",
           "icp", "estimate_normals_o3d"]

log = logging.getLogger(__name__)


class GroundTruthCollector(GroundTruthRecorder):
    """Passes frames through, keeping their ground truth (see the module docstring): ``gt`` (the
    :class:`~forward3d.eval.traj.GroundTruthRecorder` list of ``c2w`` or None) and, with ``points``, the
    world points of the valid depth pixels.

    Args:
        frames: the frame source (``len()``, ``layout``, ``has_depth``... are forwarded).
        points: keep ground-truth points (reconstruction protocols).
        max_points: at most this many points over the whole sequence (per frame: ``max_points / len``).
        seed: seed of the subsampling.
        window: ``(W, H)``: keep only the pixels of the centre ``W x H`` window of each frame
            (:attr:`Protocol.score_crop <forward3d.bench.protocol.Protocol>`); None = all pixels.
    """

    def __init__(self, frames: Iterable[Frame], points: bool = False, max_points: int = 2_000_000,
                 seed: int = 0, window: tuple[int, int] | None = None) -> None:
        super().__init__(frames)
        self.window = window
        self.collect_points = points
        self.max_points = int(max_points)
        self.rng = np.random.default_rng(seed)
        self.points: list[np.ndarray] = []  # per frame [M, 3] world points
        self.pixels: list[np.ndarray] = []  # per frame [M, 2] (u, v) in [0, 1) of the image
        self.first_depth: np.ndarray | None = None
        self.first_K: np.ndarray | None = None

    def __iter__(self) -> Iterator[Frame]:
        from forward3d.geometry.camera import depth_to_points

        try:
            per_frame = max(1, self.max_points // max(1, len(self)))
        except TypeError:
            per_frame = 50_000
        for f in super().__iter__():
            c2w = self.gt[-1]
            if self.collect_points:
                if c2w is None or f.depth is None or f.K is None:
                    raise ValueError(f"{f.source or f.name}: a reconstruction protocol needs ground-truth depth, "
                                     "intrinsics and pose for every scored frame")
                depth = np.asarray(f.depth, np.float64)
                if self.window is not None:
                    (l, r), (t, b) = centre_window(f.width, f.height, self.window, f.width, f.height)
                    depth = np.where(window_mask(f.height, f.width, l, r, t, b), depth, 0.0)
                if self.first_depth is None:
                    self.first_depth, self.first_K = depth, np.asarray(f.K, np.float64)
                pts = depth_to_points(depth, f.K, c2w)
                v, u = np.nonzero(np.isfinite(pts).all(-1))
                if len(v) > per_frame:
                    keep = np.sort(self.rng.choice(len(v), per_frame, replace=False))
                    v, u = v[keep], u[keep]
                self.points.append(pts[v, u])
                self.pixels.append(np.stack([(u + 0.5) / f.width, (v + 0.5) / f.height], 1))
            yield f

    def gt_cloud(self) -> np.ndarray:
        """All kept ground-truth points ``[M, 3]``."""
        return np.concatenate(self.points) if self.points else np.zeros((0, 3))


def centre_window(width: int, height: int, window: tuple[int, int], map_width: int,
                  map_height: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """The centre ``window`` ``(W, H)`` of a ``width x height`` frame in the pixels of a ``map_width x
    map_height`` map of it: ``((left, right), (top, bottom))``, right/bottom exclusive. At the frame's own
    size it is CUT3R's crop: ``left = width // 2 - W // 2`` (and the same for the rows)."""
    ww, wh = int(window[0]), int(window[1])
    if ww > width or wh > height:
        raise ValueError(f"score crop {ww}x{wh}: larger than the {width}x{height} frames")
    sx, sy = map_width / width, map_height / height
    l, t = round((width // 2 - ww // 2) * sx), round((height // 2 - wh // 2) * sy)
    return (l, l + max(1, round(ww * sx))), (t, t + max(1, round(wh * sy)))


def window_mask(height: int, width: int, left: int, right: int, top: int, bottom: int) -> np.ndarray:
    """``[H, W]`` bool: True inside columns ``[left, right)`` and rows ``[top, bottom)``."""
    m = np.zeros((height, width), bool)
    m[top:bottom, left:right] = True
    return m


def score_trajectory(recon: Reconstruction, gt_c2w: list[np.ndarray | None],
                     align: str = "sim3") -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """ATE (``align``: ``"sim3"`` as evo ``-as``, ``"se3"`` as evo ``-a``) and RPE (delta 1, after the
    alignment) over the frames with a ground-truth pose.

    Returns:
        ``(metrics, arrays)``: ``ate_rmse, ate_mean, ate_median, ate_max, rot_rmse_deg, scale,
        rpe_trans_rmse, rpe_rot_rmse_deg, num_frames, num_frames_with_gt``; arrays ``gt_c2w``,
        ``aligned_c2w`` ``[K, 4, 4]`` and ``errors`` ``[K]`` for the plots.
    """
    from forward3d.eval.traj import ate, rpe

    idx = [i for i, g in enumerate(gt_c2w[: len(recon.c2w)]) if g is not None]
    if len(idx) < 3:
        raise ValueError(f"trajectory scoring: expected at least 3 frames with a ground-truth pose, found {len(idx)}")
    pred = np.asarray(recon.c2w, np.float64)[idx]
    gt = np.stack([gt_c2w[i] for i in idx])
    a = ate(pred, gt, align=align)  # type: ignore[arg-type]
    r = rpe(a["aligned_c2w"], gt, 1)
    metrics = {"ate_rmse": a["rmse"], "ate_mean": a["mean"], "ate_median": a["median"], "ate_max": a["max"],
               "rot_rmse_deg": a["rot_rmse_deg"], "scale": a["scale"], "rpe_trans_rmse": r["trans_rmse"],
               "rpe_rot_rmse_deg": r["rot_rmse_deg"], "num_frames": len(recon.c2w), "num_frames_with_gt": len(idx),
               "alignment_degenerate": bool(a["degenerate"])}
    return metrics, {"gt_c2w": gt, "aligned_c2w": a["aligned_c2w"], "errors": a["errors"]}


# --------------------------------------------------------------------------------------------------
# Point clouds
# --------------------------------------------------------------------------------------------------


def _o3d():
    try:
        import open3d as o3d
    except ImportError as exc:
        raise ImportError("reconstruction protocols align with Open3D's ICP: pip install forward3d[bench] "
                          f"(open3d) ({exc})") from exc
    return o3d


def _o3d_cloud(points: np.ndarray, normals: np.ndarray | None = None):
    o3d = _o3d()
    pc = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(np.asarray(points, np.float64)))
    if normals is not None:
        pc.normals = o3d.utility.Vector3dVector(np.asarray(normals, np.float64))
    return pc


def estimate_normals_o3d(points: np.ndarray, knn: int = 30) -> np.ndarray:
    """Open3D normals ``[N, 3]`` of ``points`` (PCA of ``knn`` neighbours, ``estimate_normals()``'s default as in
    the Spann3R / DUSt3R evaluation; unoriented, which normal consistency's ``|n . n'|`` ignores)."""
    o3d = _o3d()
    pc = _o3d_cloud(points)
    pc.estimate_normals(o3d.geometry.KDTreeSearchParamKNN(knn))
    return np.asarray(pc.normals, np.float64)


def icp(src: np.ndarray, dst: np.ndarray, threshold: float, kind: str = "point", dst_normals: np.ndarray | None = None,
        init: np.ndarray | None = None) -> np.ndarray:
    """Open3D ICP of ``src`` ``[N, 3]`` onto ``dst`` ``[M, 3]`` (``kind`` ``"point"`` or ``"plane"``, which
    needs ``dst_normals``); returns the ``[4, 4]`` transform (the published evaluations' ICP)."""
    o3d = _o3d()
    reg = o3d.pipelines.registration
    est = reg.TransformationEstimationPointToPoint() if kind == "point" else reg.TransformationEstimationPointToPlane()
    res = reg.registration_icp(_o3d_cloud(src), _o3d_cloud(dst, dst_normals), float(threshold),
                               np.eye(4) if init is None else init, est)
    return np.asarray(res.transformation, np.float64)


@dataclass
class _Prediction:
    points: np.ndarray  # [P, 3] world points of the method
    pixels: list[np.ndarray] | None  # per frame [H', W', 3] point maps (NaN = dropped), when it has them


def _prediction(recon: Reconstruction, cfg: ReconAlignment, window: tuple[int, int] | None = None) -> _Prediction:
    """The method's points; with ``window``, those of the centre window of each frame only (point maps:
    the window's pixels; a fused cloud: the points that project into the window of a camera)."""
    if recon.point_maps is not None:
        maps = np.asarray(recon.point_maps, np.float64).copy()
        bad = ~np.isfinite(maps).all(-1) | (np.abs(maps).sum(-1) == 0)
        if window is not None:
            fw, fh = recon.image_size
            mh, mw = maps.shape[1:3]
            (l, r), (t, b) = centre_window(fw, fh, window, mw, mh)
            bad |= ~window_mask(mh, mw, l, r, t, b)[None]
        if recon.confidences is not None and cfg.conf_threshold > 0:
            bad |= np.asarray(recon.confidences) <= cfg.conf_threshold
        maps[bad] = np.nan
        pts = maps[~bad]
        if len(pts) == 0:
            raise ValueError(f"{recon.backend}: no predicted point above the confidence threshold {cfg.conf_threshold}")
        return _Prediction(pts, list(maps))
    if recon.points is None or len(recon.points) == 0:
        raise ValueError(f"{recon.backend}: the method produced no points (point maps or a point cloud) to score")
    pts = np.asarray(recon.points.points, np.float64)
    if window is not None:
        pts = pts[_in_some_window(recon, pts, window)]
        if len(pts) == 0:
            raise ValueError(f"{recon.backend}: no predicted point projects into the centre {window} window of a frame")
    return _Prediction(pts, None)


def _in_some_window(recon: Reconstruction, pts: np.ndarray, window: tuple[int, int]) -> np.ndarray:
    """``[P]`` bool: the point projects into the centre ``window`` of at least one of the method's cameras."""
    from forward3d.geometry.camera import project, world_to_camera

    fw, fh = recon.image_size
    (l, r), (t, b) = centre_window(fw, fh, window, fw, fh)
    keep = np.zeros(len(pts), bool)
    for c2w, K in zip(recon.c2w, recon.K):
        uv, z = project(world_to_camera(pts, np.asarray(c2w, np.float64)), np.asarray(K, np.float64))
        with np.errstate(invalid="ignore"):
            keep |= (z > 0) & (uv[:, 0] >= l) & (uv[:, 0] < r) & (uv[:, 1] >= t) & (uv[:, 1] < b)
    return keep


def _transform(T: np.ndarray, p: np.ndarray) -> np.ndarray:
    return p @ T[:3, :3].T + T[:3, 3]


def _median_first_init(recon: Reconstruction, pred: _Prediction, gt: GroundTruthCollector) -> np.ndarray:
    """Spann3R's initial alignment: the prediction in its camera 1, scaled so that its median depth there
    matches the ground truth's, placed at the ground-truth camera 1. Returns a ``[4, 4]`` Sim(3)."""
    from forward3d.geometry.camera import project, world_to_camera
    from forward3d.geometry.se3 import inverse_se3

    c2w_p0 = np.asarray(recon.c2w[0], np.float64)
    if pred.pixels is not None:
        cam = world_to_camera(pred.pixels[0].reshape(-1, 3), c2w_p0)
        z = cam[:, 2][np.isfinite(cam[:, 2]) & (cam[:, 2] > 0)]
    else:  # a fused cloud: its points that project into frame 1
        cam = world_to_camera(pred.points, c2w_p0)
        K = np.asarray(recon.K[0], np.float64)
        uv, z = project(cam, K)
        w, h = recon.image_size
        inside = (z > 0) & (uv[:, 0] >= 0) & (uv[:, 0] < w) & (uv[:, 1] >= 0) & (uv[:, 1] < h)
        z = z[inside]
    d = gt.first_depth[np.isfinite(gt.first_depth) & (gt.first_depth > 0)] if gt.first_depth is not None else []
    if len(z) == 0 or len(d) == 0:
        raise ValueError("median-scale alignment: no valid depth in the first frame (prediction or ground truth)")
    s = float(np.median(d) / np.median(z))
    S = np.diag([s, s, s, 1.0])
    return gt.gt[0] @ S @ inverse_se3(c2w_p0)


def _pairs(pred: _Prediction, gt: GroundTruthCollector, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-aligned (prediction, ground truth) point pairs: each kept GT pixel and the point-map pixel
    at the same relative image position."""
    src, dst = [], []
    for pm, g, uv in zip(pred.pixels or [], gt.points, gt.pixels):
        h, w = pm.shape[:2]
        u = np.minimum((uv[:, 0] * w).astype(np.int64), w - 1)
        v = np.minimum((uv[:, 1] * h).astype(np.int64), h - 1)
        p = pm[v, u]
        ok = np.isfinite(p).all(1)
        src.append(p[ok])
        dst.append(g[ok])
    src_a, dst_a = (np.concatenate(src), np.concatenate(dst)) if src else (np.zeros((0, 3)), np.zeros((0, 3)))
    if len(src_a) > n:
        keep = rng.choice(len(src_a), n, replace=False)
        src_a, dst_a = src_a[keep], dst_a[keep]
    return src_a, dst_a


def align_reconstruction(recon: Reconstruction, gt: GroundTruthCollector, cfg: ReconAlignment,
                         window: tuple[int, int] | None = None) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """The prediction's points aligned to the ground truth with ``cfg``'s recipe (``window``: only the
    predicted points of each frame's centre window, see :func:`centre_window`; ``gt`` is cropped alike).

    Returns:
        ``(pred_points [P, 3], gt_points [M, 3], info)``, both downsampled to ``cfg.voxel_size`` when it is
        set; ``info``: the transform (``[4, 4]`` Sim(3)), the steps applied, the fitted scale.
    """
    from forward3d.eval.recon import voxel_downsample
    from forward3d.eval.traj import ate
    from forward3d.geometry.align import umeyama_ransac
    from forward3d.geometry.se3 import make_sim3

    pred = _prediction(recon, cfg, window)
    g = gt.gt_cloud()
    if len(g) == 0:
        raise ValueError("reconstruction scoring: no ground-truth points (no valid depth in the scored frames)")
    rng = np.random.default_rng(0)
    steps = []
    if cfg.kind == "median-first-icp":
        T = _median_first_init(recon, pred, gt)
        steps.append("median depth scale + GT camera 1")
    else:
        src, dst = _pairs(pred, gt, cfg.num_pairs, rng) if pred.pixels is not None else (None, None)
        if src is not None and len(src) >= 3:
            s, R, t, _ = umeyama_ransac(src, dst, threshold=cfg.ransac_threshold, with_scale=True)
            steps.append(f"RANSAC Umeyama Sim(3) on {len(src)} pixel-aligned pairs")
        else:
            gts = gt.gt[: len(recon.c2w)]
            idx = [i for i, c in enumerate(gts) if c is not None]
            a = ate(np.asarray(recon.c2w)[idx], np.stack([gts[i] for i in idx]), align="sim3")
            s, R, t = a["scale"], a["alignment"][:3, :3] / a["scale"], a["alignment"][:3, 3]
            steps.append("Sim(3) Umeyama on the camera centres (the method has no point maps)")
        T = make_sim3(R, t, s)
    p = _transform(T, pred.points)
    if cfg.kind == "ransac-umeyama-icp":
        gn = estimate_normals_o3d(g)
        ok = np.isfinite(gn).all(1) & (np.abs(gn).sum(1) > 0)
        X = icp(p, g[ok], cfg.plane_icp_threshold, "plane", gn[ok])
        p, T = _transform(X, p), X @ T
        steps.append(f"point-to-plane ICP ({cfg.plane_icp_threshold:g} m)")
    if cfg.voxel_size > 0:
        p, _ = voxel_downsample(p, cfg.voxel_size)
        g, _ = voxel_downsample(g, cfg.voxel_size)
        steps.append(f"{cfg.voxel_size * 1000:g} mm voxels")
    X = icp(p, g, cfg.icp_threshold, "point")
    p, T = _transform(X, p), X @ T
    steps.append(f"point-to-point ICP ({cfg.icp_threshold:g} m)")
    scale = float(np.cbrt(abs(np.linalg.det(T[:3, :3]))))
    return p, g, {"transform": T, "scale": scale, "steps": steps}


def score_reconstruction(recon: Reconstruction, gt: GroundTruthCollector,
                         protocol: Protocol) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Align (:func:`align_reconstruction`) and score: ``accuracy``/``completion`` (mean, median),
    ``chamfer``, ``normal_consistency`` (Open3D normals of both clouds, 30 neighbours), F-scores."""
    from forward3d.eval.recon import recon_metrics

    p, g, info = align_reconstruction(recon, gt, protocol.recon, protocol.score_crop)
    pn, gn = estimate_normals_o3d(p), estimate_normals_o3d(g)
    okp, okg = np.abs(pn).sum(1) > 0, np.abs(gn).sum(1) > 0
    m = dict(recon_metrics(PointCloud(p[okp], normals=pn[okp]), PointCloud(g[okg], normals=gn[okg]),
                           thresholds=(0.05,)))
    m.update({"scale": info["scale"], "num_frames": len(recon.c2w)})
    return {**m, "alignment_steps": info["steps"]}, {"transform": info["transform"]}
