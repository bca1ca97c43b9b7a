"""Rigid (SE(3)) and similarity (Sim(3)) transforms as ``[..., 4, 4]`` homogeneous matrices.

A Sim(3) matrix is ``[[s R, t], [0, 1]]`` and maps ``x -> s R x + t``; SE(3) is the case ``s = 1``.
Poses are named by direction (``c2w`` / ``w2c``). Everything is batched over leading dimensions.

:func:`inverse_se3`, :func:`inverse_sim3`, :func:`compose`, :func:`transform_points` and
:func:`relative_c2w` accept numpy arrays or torch tensors and return the same kind (torch stays
differentiable); the other functions are numpy float64.
"""

from __future__ import annotations

from typing import TypeVar

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "make_sim3",
    "make_se3",
    "split_sim3",
    "inverse_se3",
    "inverse_sim3",
    "compose",
    "transform_points",
    "relative_c2w",
    "rotation_angle",
    "so3_exp",
    "so3_log",
    "skew",
    "slerp_pose",
]

Array = TypeVar("Array", np.ndarray, Tensor)


def _check_mat(name: str, T, n: int) -> None:
    shape = tuple(T.shape)
    if len(shape) < 2 or shape[-2:] != (n, n):
        raise ValueError(f"{name}: expected shape [..., {n}, {n}], found {list(shape)}")


def _swap(a: Array) -> Array:
    return a.transpose(-1, -2) if isinstance(a, Tensor) else np.swapaxes(a, -1, -2)


def _assemble(A: Array, t: Array) -> Array:
    """``A`` ``[..., 3, 3]`` and ``t`` ``[..., 3]`` -> ``[..., 4, 4]``."""
    if isinstance(A, Tensor):
        batch = torch.broadcast_shapes(A.shape[:-2], t.shape[:-1])
        out = torch.zeros(*batch, 4, 4, dtype=A.dtype, device=A.device)
        out[..., :3, :3] = A
        out[..., :3, 3] = t
        out[..., 3, 3] = 1.0
        return out
    batch = np.broadcast_shapes(A.shape[:-2], t.shape[:-1])
    out = np.zeros((*batch, 4, 4), dtype=np.result_type(A, t, np.float32))
    out[..., :3, :3] = A
    out[..., :3, 3] = t
    out[..., 3, 3] = 1.0
    return out


def make_sim3(R: np.ndarray, t: np.ndarray, s: float | np.ndarray = 1.0) -> np.ndarray:
    """``R`` ``[..., 3, 3]``, ``t`` ``[..., 3]``, ``s`` scalar or ``[...]`` -> ``[..., 4, 4]`` float64."""
    R = np.asarray(R, dtype=np.float64)
    t = np.asarray(t, dtype=np.float64)
    _check_mat("make_sim3 R", R, 3)
    if t.ndim == 0 or t.shape[-1] != 3:
        raise ValueError(f"make_sim3 t: expected shape [..., 3], found {list(t.shape)}")
    s = np.asarray(s, dtype=np.float64)
    return _assemble(s[..., None, None] * R, t)


def make_se3(R: np.ndarray, t: np.ndarray) -> np.ndarray:
    """``R`` ``[..., 3, 3]``, ``t`` ``[..., 3]`` -> ``[..., 4, 4]`` float64."""
    return make_sim3(R, t, 1.0)


def split_sim3(T: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``[..., 4, 4]`` Sim(3) -> ``(s [...], R [..., 3, 3], t [..., 3])`` (``s > 0``, ``det R = +1``)."""
    T = np.asarray(T, dtype=np.float64)
    _check_mat("split_sim3 T", T, 4)
    A = T[..., :3, :3]
    s = np.cbrt(np.linalg.det(A))
    if np.any(s <= 0):
        raise ValueError("split_sim3: the 3x3 block must have a positive determinant")
    return s, A / s[..., None, None], T[..., :3, 3].copy()


def inverse_se3(T: Array) -> Array:
    """Closed-form inverse of rigid transforms ``[..., 4, 4]``: ``[[R^T, -R^T t], [0, 1]]``."""
    _check_mat("inverse_se3 T", T, 4)
    Rt = _swap(T[..., :3, :3])
    t = T[..., :3, 3]
    return _assemble(Rt, -(Rt @ t[..., None])[..., 0])


def inverse_sim3(T: Array) -> Array:
    """Closed-form inverse of similarity transforms ``[..., 4, 4]`` (``x -> s R x + t``).

    ``(s R)^-1 = R^T / s = (s R)^T / s^2``; the scale is read off the first column's norm.
    Also exact for SE(3) (``s = 1``).
    """
    _check_mat("inverse_sim3 T", T, 4)
    A = T[..., :3, :3]
    s2 = (A[..., :, 0] ** 2).sum(-1)
    Ainv = _swap(A) / s2[..., None, None]
    t = T[..., :3, 3]
    return _assemble(Ainv, -(Ainv @ t[..., None])[..., 0])


def compose(*Ts: Array) -> Array:
    """``compose(A, B, C) = A @ B @ C`` (``C`` applied first); broadcast over leading dimensions."""
    if not Ts:
        raise ValueError("compose: expected at least one transform, found none")
    out = Ts[0]
    _check_mat("compose T[0]", out, 4)
    for i, T in enumerate(Ts[1:], 1):
        _check_mat(f"compose T[{i}]", T, 4)
        out = out @ T
    return out


def transform_points(T: Array, points: Array) -> Array:
    """Apply ``T`` (SE(3) or Sim(3)) to ``points``.

    Args:
        T: ``[4, 4]`` (applied to ``points`` of any shape ``[..., 3]``), or batched ``[B..., 4, 4]``
            applied to ``points`` ``[B..., N, 3]`` (one transform per batch of ``N`` points).
        points: ``[..., 3]``.

    Returns:
        ``[..., 3]`` transformed points, ``T[:3, :3] @ p + T[:3, 3]``.
    """
    _check_mat("transform_points T", T, 4)
    if points.shape[-1] != 3:
        raise ValueError(f"transform_points points: expected shape [..., 3], found {list(points.shape)}")
    A = T[..., :3, :3]
    t = T[..., :3, 3]
    if T.ndim == 2:
        return points @ _swap(A) + t
    if points.ndim < T.ndim:
        raise ValueError(f"transform_points: batched T {list(T.shape)} needs points [B..., N, 3], "
                         f"found {list(points.shape)}")
    return points @ _swap(A) + t[..., None, :]


def relative_c2w(c2w_i: Array, c2w_j: Array) -> Array:
    """Pose of camera ``j`` in camera ``i``'s frame: ``inverse(c2w_i) @ c2w_j`` (``[..., 4, 4]``)."""
    return inverse_sim3(c2w_i) @ c2w_j


def rotation_angle(R: np.ndarray) -> np.ndarray:
    """Rotation angle in radians ``[...]`` (in ``[0, pi]``) of rotation matrices ``[..., 3, 3]``.

    ``atan2(|vee(R - R^T)| / 2, (tr R - 1) / 2)``: accurate for small angles, unlike ``arccos``.
    A ``[..., 4, 4]`` input uses its rotation block.
    """
    R = np.asarray(R, dtype=np.float64)
    if R.ndim >= 2 and R.shape[-2:] == (4, 4):
        R = R[..., :3, :3]
    _check_mat("rotation_angle R", R, 3)
    v = np.stack([R[..., 2, 1] - R[..., 1, 2], R[..., 0, 2] - R[..., 2, 0], R[..., 1, 0] - R[..., 0, 1]], -1)
    sin = 0.5 * np.linalg.norm(v, axis=-1)
    cos = 0.5 * (R[..., 0, 0] + R[..., 1, 1] + R[..., 2, 2] - 1.0)
    return np.arctan2(sin, cos)


def skew(v: np.ndarray) -> np.ndarray:
    """``[..., 3]`` -> cross-product matrices ``[..., 3, 3]`` (``skew(a) @ b = a x b``)."""
    v = np.asarray(v, dtype=np.float64)
    if v.ndim == 0 or v.shape[-1] != 3:
        raise ValueError(f"skew v: expected shape [..., 3], found {list(v.shape)}")
    x, y, z = np.moveaxis(v, -1, 0)
    o = np.zeros_like(x)
    return np.stack([o, -z, y, z, o, -x, -y, x, o], -1).reshape(*v.shape[:-1], 3, 3)


def so3_exp(omega: np.ndarray) -> np.ndarray:
    """Axis-angle ``[..., 3]`` (axis times angle in radians) -> rotation matrices ``[..., 3, 3]``.

    Rodrigues' formula with Taylor expansions of the coefficients near zero.
    """
    omega = np.asarray(omega, dtype=np.float64)
    K = skew(omega)
    th2 = (omega**2).sum(-1)
    th = np.sqrt(th2)
    small = th < 1e-4
    th_safe = np.where(small, 1.0, th)
    a = np.where(small, 1.0 - th2 / 6.0, np.sin(th_safe) / th_safe)
    b = np.where(small, 0.5 - th2 / 24.0, (1.0 - np.cos(th_safe)) / th_safe**2)
    return np.eye(3) + a[..., None, None] * K + b[..., None, None] * (K @ K)


def so3_log(R: np.ndarray) -> np.ndarray:
    """Rotation matrices ``[..., 3, 3]`` -> axis-angle ``[..., 3]`` with angle in ``[0, pi]``.

    Goes through the (w >= 0) quaternion, so it is accurate near 0 and near pi.
    """
    from forward3d.geometry.quaternion import rotmat_to_quat

    q = rotmat_to_quat(R)
    w = q[..., 0]
    v = q[..., 1:]
    n = np.linalg.norm(v, axis=-1)
    angle = 2.0 * np.arctan2(n, w)
    small = n < 1e-8
    factor = np.where(small, 2.0 / np.where(small, w, 1.0), angle / np.where(small, 1.0, n))
    return v * factor[..., None]


def slerp_pose(a: np.ndarray, b: np.ndarray, t: float) -> np.ndarray:
    """Rigid pose ``[4, 4]`` between ``a`` (t=0) and ``b`` (t=1): linear translation, spherical-linear
    rotation (the shorter way)."""
    from forward3d.geometry.quaternion import quat_to_rotmat, rotmat_to_quat

    qa, qb = rotmat_to_quat(np.asarray(a, np.float64)[:3, :3]), rotmat_to_quat(np.asarray(b, np.float64)[:3, :3])
    dot = float(qa @ qb)
    if dot < 0:
        qb, dot = -qb, -dot
    if dot > 0.9995:
        q = qa + t * (qb - qa)
    else:
        th = np.arccos(min(dot, 1.0))
        q = (np.sin((1 - t) * th) * qa + np.sin(t * th) * qb) / np.sin(th)
    out = np.eye(4)
    out[:3, :3] = quat_to_rotmat(q / np.linalg.norm(q))
    out[:3, 3] = (1 - t) * np.asarray(a)[:3, 3] + t * np.asarray(b)[:3, 3]
    return out
