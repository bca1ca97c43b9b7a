"""Pinhole camera maths: pixel grids, projection, unprojection, depth maps to points.

OpenCV axes (x right, y down, z forward), ``K`` in pixels, pixel centres at +0.5: the centre of
pixel ``(row i, column j)`` is ``(u, v) = (j + 0.5, i + 0.5)``. Depth is metric z-depth.

Invalid depth (0, negative, NaN or inf) never produces a point:

- numpy :func:`depth_to_points` fills invalid pixels with ``fill`` (NaN by default); get the mask
  with :func:`valid_depth_mask`.
- torch :func:`depth_to_points_torch` fills them with ``fill`` (0 by default, the convention of the
  SLAM3R point maps, whose ``PointMap.mask`` treats all-zero points as invalid).

Points at or behind the camera (``z <= 0``) project to NaN ``uv`` (``z`` is returned so callers
can mask with ``z > 0``); gradients stay finite in the torch version.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from forward3d.checks import check_shape
from forward3d.geometry.se3 import inverse_se3, transform_points

__all__ = [
    "scale_K",
    "crop_K",
    "pixel_grid",
    "project",
    "unproject",
    "valid_depth_mask",
    "depth_to_points",
    "world_to_camera",
    "camera_to_world",
    "pixel_grid_torch",
    "project_torch",
    "unproject_torch",
    "depth_to_points_torch",
]


def _check_K(name: str, K) -> None:
    check_shape(K, "... 3 3", f"{name} K")


def _expand(a, ndim: int):
    """Append singleton dims so ``a`` (a K entry, shape ``[B...]``) broadcasts against ``ndim`` dims."""
    return a.reshape(tuple(a.shape) + (1,) * (ndim - a.ndim))


def _intrinsics(K, ndim: int):
    return tuple(_expand(K[..., r, c], ndim) for r, c in ((0, 0), (1, 1), (0, 2), (1, 2), (0, 1)))


# --------------------------------------------------------------------------------------------------
# numpy
# --------------------------------------------------------------------------------------------------


def scale_K(K: np.ndarray, sx: float, sy: float | None = None) -> np.ndarray:
    """``[..., 3, 3]`` intrinsics after resizing the image by ``sx`` (and ``sy``, default ``sx``):
    rows 0 and 1 scale (pixel centres at +0.5 map to +0.5). Returns a float64 copy."""
    out = np.array(K, dtype=np.float64)
    _check_K("scale_K", out)
    out[..., 0, :] *= sx
    out[..., 1, :] *= sx if sy is None else sy
    return out


def crop_K(K: np.ndarray, x0: float, y0: float) -> np.ndarray:
    """``[..., 3, 3]`` intrinsics after cropping the image at ``(x0, y0)``. Returns a float64 copy."""
    out = np.array(K, dtype=np.float64)
    _check_K("crop_K", out)
    out[..., 0, 2] -= x0
    out[..., 1, 2] -= y0
    return out


def pixel_grid(height: int, width: int) -> np.ndarray:
    """``[H, W, 2]`` float64 pixel centres ``(u, v)``: ``grid[i, j] = (j + 0.5, i + 0.5)``."""
    if height <= 0 or width <= 0:
        raise ValueError(f"pixel_grid: expected a positive size, found {height}x{width}")
    v, u = np.meshgrid(np.arange(height) + 0.5, np.arange(width) + 0.5, indexing="ij")
    return np.stack([u, v], axis=-1)


def project(points_cam: np.ndarray, K: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Project camera-frame points to pixels.

    Args:
        points_cam: ``[..., 3]`` points in the camera frame.
        K: ``[3, 3]``, or ``[B..., 3, 3]`` for ``points_cam`` ``[B..., *, 3]`` (leading dims match).

    Returns:
        ``(uv [..., 2], z [...])``; ``uv`` is NaN where ``z <= 0``.
    """
    p = np.asarray(points_cam, dtype=np.float64)
    K = np.asarray(K, dtype=np.float64)
    _check_K("project", K)
    if p.ndim == 0 or p.shape[-1] != 3:
        raise ValueError(f"project points_cam: expected shape [..., 3], found {list(p.shape)}")
    fx, fy, cx, cy, sk = _intrinsics(K, p.ndim - 1)
    z = p[..., 2]
    ok = z > 0
    zs = np.where(ok, z, 1.0)
    x, y = p[..., 0] / zs, p[..., 1] / zs
    uv = np.stack([fx * x + sk * y + cx, fy * y + cy], axis=-1)
    return np.where(ok[..., None], uv, np.nan), z


def unproject(uv: np.ndarray, depth: np.ndarray, K: np.ndarray) -> np.ndarray:
    """Pixels ``uv`` ``[..., 2]`` with z-depth ``[...]`` -> camera-frame points ``[..., 3]``.

    ``K`` is ``[3, 3]`` or ``[B..., 3, 3]`` with leading dims matching those of ``depth``.
    No validity masking is done here (see :func:`depth_to_points`).
    """
    uv = np.asarray(uv, dtype=np.float64)
    d = np.asarray(depth, dtype=np.float64)
    K = np.asarray(K, dtype=np.float64)
    _check_K("unproject", K)
    if uv.ndim == 0 or uv.shape[-1] != 2:
        raise ValueError(f"unproject uv: expected shape [..., 2], found {list(uv.shape)}")
    fx, fy, cx, cy, sk = _intrinsics(K, uv.ndim - 1)
    y = (uv[..., 1] - cy) / fy
    x = (uv[..., 0] - cx - sk * y) / fx
    return np.stack([x * d, y * d, d], axis=-1)


def valid_depth_mask(depth: np.ndarray, min_depth: float | None = None,
                     max_depth: float | None = None) -> np.ndarray:
    """``[...]`` bool: finite, positive depth (optionally within ``[min_depth, max_depth]``)."""
    d = np.asarray(depth)
    with np.errstate(invalid="ignore"):
        m = np.isfinite(d) & (d > 0)
        if min_depth is not None:
            m &= d >= min_depth
        if max_depth is not None:
            m &= d <= max_depth
    return m


def depth_to_points(depth: np.ndarray, K: np.ndarray, c2w: np.ndarray | None = None,
                    fill: float = np.nan) -> np.ndarray:
    """Depth map(s) -> per-pixel 3D points (pixel centres at +0.5).

    Args:
        depth: ``[H, W]`` or ``[B, H, W]`` metric z-depth; 0 / negative / non-finite = invalid.
        K: ``[3, 3]`` or ``[B, 3, 3]``.
        c2w: optional ``[4, 4]`` or ``[B, 4, 4]``; points are in the world frame if given, else in
            the camera frame.
        fill: value written to the points of invalid pixels (NaN by default; 0.0 is also common).

    Returns:
        ``[H, W, 3]`` (or ``[B, H, W, 3]``) float64 points. Mask: ``valid_depth_mask(depth)``.
    """
    d = np.asarray(depth, dtype=np.float64)
    K = np.asarray(K, dtype=np.float64)
    if d.ndim not in (2, 3):
        raise ValueError(f"depth_to_points depth: expected shape [H, W] or [B, H, W], found {list(d.shape)}")
    _check_K("depth_to_points", K)
    h, w = d.shape[-2:]
    batch = d.shape[:-2]
    valid = valid_depth_mask(d)
    pts = unproject(np.broadcast_to(pixel_grid(h, w), (*batch, h, w, 2)), np.where(valid, d, 0.0), K)
    if c2w is not None:
        c2w = np.asarray(c2w, dtype=np.float64)
        if c2w.shape[-2:] != (4, 4) or c2w.ndim not in (2, d.ndim):
            raise ValueError(f"depth_to_points c2w: expected shape [4, 4] or [B, 4, 4], found {list(c2w.shape)}")
        if c2w.ndim == 2:
            pts = transform_points(c2w, pts)
        else:
            pts = transform_points(c2w, pts.reshape(*batch, h * w, 3)).reshape(*batch, h, w, 3)
    pts[~valid] = fill
    return pts


def world_to_camera(points_world: np.ndarray, c2w: np.ndarray) -> np.ndarray:
    """``[..., 3]`` world points -> camera frame of ``c2w`` ``[4, 4]`` (or batched, see transform_points)."""
    return transform_points(inverse_se3(np.asarray(c2w, dtype=np.float64)), np.asarray(points_world, dtype=np.float64))


def camera_to_world(points_cam: np.ndarray, c2w: np.ndarray) -> np.ndarray:
    """``[..., 3]`` camera-frame points -> world frame via ``c2w`` ``[4, 4]`` (or batched)."""
    return transform_points(np.asarray(c2w, dtype=np.float64), np.asarray(points_cam, dtype=np.float64))


# --------------------------------------------------------------------------------------------------
# torch (same maths; differentiable)
# --------------------------------------------------------------------------------------------------


def pixel_grid_torch(height: int, width: int, device: torch.device | str | None = None,
                     dtype: torch.dtype = torch.float32) -> Tensor:
    """``[H, W, 2]`` pixel centres ``(u, v)`` as a tensor (see :func:`pixel_grid`)."""
    if height <= 0 or width <= 0:
        raise ValueError(f"pixel_grid_torch: expected a positive size, found {height}x{width}")
    v = torch.arange(height, device=device, dtype=dtype) + 0.5
    u = torch.arange(width, device=device, dtype=dtype) + 0.5
    vv, uu = torch.meshgrid(v, u, indexing="ij")
    return torch.stack([uu, vv], dim=-1)


def project_torch(points_cam: Tensor, K: Tensor) -> tuple[Tensor, Tensor]:
    """Tensor version of :func:`project`: ``(uv [..., 2], z [...])``, ``uv`` NaN where ``z <= 0``."""
    _check_K("project_torch", K)
    if points_cam.ndim == 0 or points_cam.shape[-1] != 3:
        raise ValueError(f"project_torch points_cam: expected shape [..., 3], found {list(points_cam.shape)}")
    K = K.to(points_cam)
    fx, fy, cx, cy, sk = _intrinsics(K, points_cam.ndim - 1)
    z = points_cam[..., 2]
    ok = z > 0
    zs = torch.where(ok, z, torch.ones_like(z))
    x, y = points_cam[..., 0] / zs, points_cam[..., 1] / zs
    uv = torch.stack([fx * x + sk * y + cx, fy * y + cy], dim=-1)
    return torch.where(ok[..., None], uv, torch.full_like(uv, float("nan"))), z


def unproject_torch(uv: Tensor, depth: Tensor, K: Tensor) -> Tensor:
    """Tensor version of :func:`unproject`: ``uv [..., 2]``, ``depth [...]`` -> ``[..., 3]``."""
    _check_K("unproject_torch", K)
    if uv.ndim == 0 or uv.shape[-1] != 2:
        raise ValueError(f"unproject_torch uv: expected shape [..., 2], found {list(uv.shape)}")
    K = K.to(uv)
    fx, fy, cx, cy, sk = _intrinsics(K, uv.ndim - 1)
    y = (uv[..., 1] - cy) / fy
    x = (uv[..., 0] - cx - sk * y) / fx
    return torch.stack([x * depth, y * depth, depth], dim=-1)


def depth_to_points_torch(depth: Tensor, K: Tensor, c2w: Tensor | None = None, fill: float = 0.0) -> Tensor:
    """Tensor version of :func:`depth_to_points`; invalid pixels get ``fill`` (0 by default).

    Args:
        depth: ``[H, W]`` or ``[B, H, W]``.
        K: ``[3, 3]`` or ``[B, 3, 3]``.
        c2w: optional ``[4, 4]`` or ``[B, 4, 4]``.

    Returns:
        ``[H, W, 3]`` or ``[B, H, W, 3]`` in ``depth``'s dtype and device.
    """
    if depth.ndim not in (2, 3):
        raise ValueError(f"depth_to_points_torch depth: expected shape [H, W] or [B, H, W], found {list(depth.shape)}")
    _check_K("depth_to_points_torch", K)
    h, w = depth.shape[-2:]
    batch = tuple(depth.shape[:-2])
    valid = torch.isfinite(depth) & (depth > 0)
    d = torch.where(valid, depth, torch.zeros_like(depth))
    grid = pixel_grid_torch(h, w, device=depth.device, dtype=depth.dtype).expand(*batch, h, w, 2)
    pts = unproject_torch(grid, d, K)
    if c2w is not None:
        if tuple(c2w.shape[-2:]) != (4, 4) or c2w.ndim not in (2, depth.ndim):
            raise ValueError(f"depth_to_points_torch c2w: expected shape [4, 4] or [B, 4, 4], found {list(c2w.shape)}")
        c2w = c2w.to(pts)
        if c2w.ndim == 2:
            pts = transform_points(c2w, pts)
        else:
            pts = transform_points(c2w, pts.reshape(*batch, h * w, 3)).reshape(*batch, h, w, 3)
    return torch.where(valid[..., None], pts, torch.full_like(pts, fill))
