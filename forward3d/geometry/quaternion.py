"""Unit quaternions, ``wxyz`` order, and their rotation matrices.

numpy (float64) functions are the primary API; the ``*_torch`` variants take tensors. Both run the one
implementation in :mod:`forward3d.types` that the Gaussians use (numpy through float64 tensors), so
the maths exists once in the package.

Canonical form: :func:`rotmat_to_quat` returns unit quaternions with ``w >= 0``. File formats that
store ``xyzw`` (TUM trajectories, scipy) convert at the boundary with :func:`xyzw_to_wxyz` /
:func:`wxyz_to_xyzw`.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from forward3d.checks import check_shape
from forward3d.types import _quat_to_rotmat, _rotmat_to_quat

__all__ = [
    "quat_to_rotmat",
    "rotmat_to_quat",
    "quat_multiply",
    "quat_conjugate",
    "quat_normalize",
    "quat_to_rotmat_torch",
    "rotmat_to_quat_torch",
    "xyzw_to_wxyz",
    "wxyz_to_xyzw",
]


def _as_last(name: str, arr, size: int) -> np.ndarray:
    a = np.asarray(arr, dtype=np.float64)
    check_shape(a, f"... {size}", name)
    return a


def quat_normalize(q: np.ndarray) -> np.ndarray:
    """``[..., 4]`` -> unit quaternions (zero quaternions raise ValueError)."""
    q = _as_last("quat_normalize q", q, 4)
    n = np.linalg.norm(q, axis=-1, keepdims=True)
    if np.any(n < 1e-12):
        raise ValueError("quat_normalize: found a zero-norm quaternion")
    return q / n


def quat_to_rotmat(q: np.ndarray) -> np.ndarray:
    """``q`` ``[..., 4]`` wxyz (normalised inside) -> rotation matrices ``[..., 3, 3]`` float64."""
    return _quat_to_rotmat(torch.from_numpy(quat_normalize(q))).numpy()


def rotmat_to_quat(R: np.ndarray) -> np.ndarray:
    """Rotation matrices ``[..., 3, 3]`` -> unit quaternions ``[..., 4]`` wxyz with ``w >= 0``.

    Shepperd's method (the candidate built from the largest of ``trace, R00, R11, R22`` is used),
    which is accurate for every rotation, including angles near 180 degrees.
    """
    m = np.asarray(R, dtype=np.float64)
    check_shape(m, "... 3 3", "rotmat_to_quat R")
    return _rotmat_to_quat(torch.from_numpy(np.ascontiguousarray(m))).numpy()


def quat_multiply(q1: np.ndarray, q2: np.ndarray) -> np.ndarray:
    """Hamilton product ``q1 * q2`` of ``[..., 4]`` wxyz quaternions (rotation ``q2`` first)."""
    q1 = _as_last("quat_multiply q1", q1, 4)
    q2 = _as_last("quat_multiply q2", q2, 4)
    w1, x1, y1, z1 = np.moveaxis(q1, -1, 0)
    w2, x2, y2, z2 = np.moveaxis(q2, -1, 0)
    return np.stack(
        [
            w1 * w2 - x1 * x2 - y1 * y2 - z1 * z2,
            w1 * x2 + x1 * w2 + y1 * z2 - z1 * y2,
            w1 * y2 - x1 * z2 + y1 * w2 + z1 * x2,
            w1 * z2 + x1 * y2 - y1 * x2 + z1 * w2,
        ],
        axis=-1,
    )


def quat_conjugate(q: np.ndarray) -> np.ndarray:
    """``[..., 4]`` wxyz -> conjugate (the inverse rotation for unit quaternions)."""
    q = _as_last("quat_conjugate q", q, 4)
    return q * np.array([1.0, -1.0, -1.0, -1.0])


def xyzw_to_wxyz(q: np.ndarray) -> np.ndarray:
    """``[..., 4]`` xyzw (TUM, scipy) -> wxyz."""
    q = _as_last("xyzw_to_wxyz q", q, 4)
    return np.concatenate([q[..., 3:], q[..., :3]], axis=-1)


def wxyz_to_xyzw(q: np.ndarray) -> np.ndarray:
    """``[..., 4]`` wxyz -> xyzw (TUM, scipy)."""
    q = _as_last("wxyz_to_xyzw q", q, 4)
    return np.concatenate([q[..., 1:], q[..., :1]], axis=-1)


def quat_to_rotmat_torch(q: Tensor) -> Tensor:
    """Tensor ``[..., 4]`` wxyz (normalised inside) -> ``[..., 3, 3]``; differentiable."""
    check_shape(q, "... 4", "quat_to_rotmat_torch q")
    return _quat_to_rotmat(q)


def rotmat_to_quat_torch(R: Tensor) -> Tensor:
    """Tensor ``[..., 3, 3]`` -> ``[..., 4]`` wxyz unit quaternions with ``w >= 0``."""
    check_shape(R, "... 3 3", "rotmat_to_quat_torch R")
    return _rotmat_to_quat(R)
