"""Turning SLAM3R per-frame point maps into cameras and a :class:`~forward3d.types.Reconstruction`."""

from __future__ import annotations

import logging
from typing import Callable, Iterator

import numpy as np

from forward3d.pipelines.slam3r.cameras import estimate_focal, robust_procrustes
from forward3d.pipelines.slam3r.common import CropTransform, SLAM3RConfig, fuse_point_cloud
from forward3d.types import PointCloud

logger = logging.getLogger(__name__)

__all__ = ["frame_camera", "fused_cloud_from_arrays", "valid_world_mask", "depth_scale_array"]


def _conf_weight(conf: np.ndarray) -> np.ndarray:
    """``(c - 1) / c`` clipped to [0, 1]: SLAM3R's map of a ``1 + exp(x)`` confidence to (0, 1)."""
    c = np.asarray(conf, dtype=np.float64)
    return np.clip((c - 1.0) / np.maximum(c, 1e-6), 0.0, 1.0)


def frame_camera(local: np.ndarray, world: np.ndarray, i2p_conf: np.ndarray, l2w_conf: np.ndarray,
                 crop: CropTransform, frame_K: np.ndarray | None, cfg: SLAM3RConfig,
                 same_scale: bool) -> tuple[np.ndarray, np.ndarray, dict]:
    """Camera of one frame.

    Args:
        local: ``[H, W, 3]`` the frame's point map in its own camera frame (invalid points zero).
        world: ``[H, W, 3]`` its world point map.
        i2p_conf, l2w_conf: ``[H, W]`` confidences of the two maps.
        crop: the frame's crop transform (model crop -> original image).
        frame_K: ``[3, 3]`` intrinsics the frame carried (original resolution) or None.
        same_scale: local and world maps share their scale (metric RGB-D mode): fit SE(3), not Sim(3).

    Returns:
        ``(c2w [4, 4], K [3, 3] for the ORIGINAL image, info)``; info holds the focal (model pixels),
        the Procrustes scale and median residual.
    """
    h, w = local.shape[:2]
    valid = (i2p_conf > cfg.conf_thres_i2p) & (np.abs(local).sum(-1) > 0) & np.isfinite(local).all(-1)
    weights = valid * _conf_weight(i2p_conf) * _conf_weight(l2w_conf)
    c2w, scale, residual = robust_procrustes(local, world, weights, with_scale=not same_scale,
                                             max_points=cfg.camera_max_points)
    info: dict = {"procrustes_scale": scale, "procrustes_residual": residual}
    if cfg.intrinsics is not None:
        fx, fy, cx, cy = cfg.intrinsics
        K = np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])
        info["intrinsics"] = "user"
    elif cfg.use_frame_intrinsics and frame_K is not None:
        K = np.asarray(frame_K, dtype=np.float64)
        info["intrinsics"] = "frame"
    else:
        f = estimate_focal(local, valid, max_points=cfg.camera_max_points)
        if f is None:
            f = float(max(h, w))  # ~53 degrees: only when the local map has no usable point
            info["intrinsics"] = "fallback"
        else:
            info["intrinsics"] = "estimated"
        info["focal_model_px"] = f
        K = crop.K_to_original(np.array([[f, 0.0, w / 2.0], [0.0, f, h / 2.0], [0.0, 0.0, 1.0]]))
    return c2w, K, info


def depth_scale_array(fits: list) -> np.ndarray:
    """``[N]`` fitted depth scales of ``(scale, shift, inliers)`` fits, NaN where a frame had no fit."""
    return np.array([np.nan if f is None else f[0] for f in fits], dtype=np.float64)


def valid_world_mask(points: np.ndarray, conf: np.ndarray, thres: float) -> np.ndarray:
    """``[..., H, W]`` bool: confidence above ``thres`` and finite, non-zero points."""
    return (conf > thres) & np.isfinite(points).all(-1) & (np.abs(points).sum(-1) > 0)


def fused_cloud_from_arrays(points: np.ndarray, conf: np.ndarray, colors: np.ndarray, thres: float,
                            num_points: int, seed: int) -> PointCloud:
    """Fused cloud of ``[N, H, W, 3]`` world point maps: confidence > ``thres``, sampled to ``num_points``."""
    masks = [valid_world_mask(points[i], conf[i], thres) for i in range(len(points))]
    total = int(sum(int(m.sum()) for m in masks))

    def chunks() -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for i, m in enumerate(masks):
            yield np.asarray(points[i][m], dtype=np.float32), colors[i][m]

    return fuse_point_cloud(chunks, total, num_points, seed)


ChunkFn = Callable[[], Iterator[tuple[np.ndarray, np.ndarray]]]
