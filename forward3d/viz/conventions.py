"""The viewer boundary: forward3d cameras and Gaussians -> what viser expects. No viser import here.

forward3d speaks OpenCV cameras (x right, y down, z forward), ``c2w`` 4x4 matrices, ``K`` in pixels
with pixel centres at +0.5, wxyz quaternions, and Gaussians as raw (unactivated) tensors. viser
(https://viser.studio) places every scene node by ``wxyz`` (the rotation parent <- local, R_pl) and
``position`` (t_pl); its camera frustums and its client camera use OpenCV axes too, and its world has
a configurable "up" direction (default +z). So the conversion is:

- a camera: ``wxyz = quat(c2w[:3, :3])``, ``position = c2w[:3, 3]`` (:func:`c2w_to_viser_pose`);
  its frustum: the VERTICAL field of view in radians and the aspect width / height
  (:func:`frustum_fov_aspect`); viser draws a centred frustum, the principal point offset is dropped;
- the world: points stay in forward3d world coordinates, and viser is told which direction is up:
  minus the mean camera y axis (:func:`world_up`), since a camera held upright has its y axis pointing
  down;
- Gaussians: activated centres, covariances ``[N, 3, 3]``, RGB in ``[0, 1]`` and opacities ``[N, 1]``
  (:func:`gaussians_to_viser`).
"""

from __future__ import annotations

import math

import numpy as np

from forward3d.geometry.quaternion import quat_to_rotmat, rotmat_to_quat
from forward3d.types import Gaussians

__all__ = ["c2w_to_viser_pose", "viser_pose_to_c2w", "frustum_fov_aspect", "world_up", "initial_view",
           "gaussians_to_viser"]


def _nearest_rotation(R: np.ndarray) -> np.ndarray:
    """The rotation closest to ``R`` ``[..., 3, 3]`` (removes a Sim(3) scale and numerical drift)."""
    U, _, Vt = np.linalg.svd(R)
    d = np.sign(np.linalg.det(U @ Vt))
    U[..., :, 2] *= d[..., None]
    return U @ Vt


def c2w_to_viser_pose(c2w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """OpenCV ``c2w`` ``[..., 4, 4]`` -> viser ``(wxyz [..., 4], position [..., 3])`` (float64).

    A non-orthonormal rotation block (a Sim(3) pose, drift) is replaced by its nearest rotation.
    """
    c2w = np.asarray(c2w, dtype=np.float64)
    if c2w.ndim < 2 or c2w.shape[-2:] != (4, 4):
        raise ValueError(f"c2w_to_viser_pose: expected c2w of shape [..., 4, 4], found {list(c2w.shape)}")
    if not np.isfinite(c2w).all():
        raise ValueError("c2w_to_viser_pose: c2w has NaN/inf entries")
    R = _nearest_rotation(c2w[..., :3, :3])
    return rotmat_to_quat(R), c2w[..., :3, 3].copy()


def viser_pose_to_c2w(wxyz: np.ndarray, position: np.ndarray) -> np.ndarray:
    """viser ``(wxyz [..., 4], position [..., 3])`` (a frustum or the client camera) -> OpenCV ``c2w``."""
    R = quat_to_rotmat(wxyz)
    position = np.asarray(position, dtype=np.float64)
    c2w = np.zeros((*R.shape[:-2], 4, 4))
    c2w[..., :3, :3] = R
    c2w[..., :3, 3] = position
    c2w[..., 3, 3] = 1.0
    return c2w


def frustum_fov_aspect(K: np.ndarray, image_size: tuple[int, int]) -> tuple[float, float]:
    """``K`` ``[3, 3]`` (pixels) and ``(width, height)`` -> viser's ``(vertical fov in radians, width / height)``."""
    K = np.asarray(K, dtype=np.float64)
    if K.shape != (3, 3):
        raise ValueError(f"frustum_fov_aspect: expected K of shape [3, 3], found {list(K.shape)}")
    w, h = (int(v) for v in image_size)
    if w <= 0 or h <= 0 or not K[1, 1] > 0:
        raise ValueError(f"frustum_fov_aspect: expected a positive image size and fy, found {w}x{h}, fy={K[1, 1]}")
    return 2.0 * math.atan(h / (2.0 * K[1, 1])), w / h


def world_up(c2w: np.ndarray, min_spread: float = 0.01) -> np.ndarray:
    """``[3]`` unit world "up" guessed from cameras ``[N, 4, 4]``.

    People hold cameras without roll, so every camera's x axis is horizontal: up is the direction
    most perpendicular to all x axes (the smallest eigenvector of ``sum x x^T``), signed like minus
    the mean y axis (OpenCV y is image-down). That needs x axes pointing different ways (the middle
    eigenvalue at least ``min_spread``, about 6 degrees of turning, and an answer within 60 degrees of
    the mean); otherwise minus the mean y axis is used (it leans by the cameras' mean pitch). No
    cameras: ``(0, -1, 0)``, the OpenCV convention itself.
    """
    c2w = np.asarray(c2w, dtype=np.float64).reshape(-1, 4, 4)
    fallback = np.array([0.0, -1.0, 0.0])
    if len(c2w) == 0 or not np.isfinite(c2w).all():
        return fallback
    mean_up = -c2w[:, :3, 1].mean(0)
    n = np.linalg.norm(mean_up)
    if n < 1e-6:
        return fallback
    mean_up /= n
    x = c2w[:, :3, 0]
    w, V = np.linalg.eigh(x.T @ x / len(x))
    if w[1] >= min_spread:
        up = V[:, 0] * np.sign(V[:, 0] @ mean_up or 1.0)
        if up @ mean_up >= 0.5:
            return up
    return mean_up


def initial_view(c2w: np.ndarray, points: np.ndarray | None = None, up: np.ndarray | None = None,
                 back: float = 1.6, elevation_deg: float = 40.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A first view of a scene for the browser: ``(position, look_at, up)`` in world coordinates.

    It looks at the centre of ``points`` (else of the cameras) from behind the cameras (their mean
    viewing direction) and ``elevation_deg`` above, ``back`` times the scene radius away, so that the
    cameras and the geometry are both in view.
    """
    c2w = np.asarray(c2w, dtype=np.float64).reshape(-1, 4, 4)
    up = world_up(c2w) if up is None else np.asarray(up, np.float64) / np.linalg.norm(up)
    pts = None if points is None or len(points) == 0 else np.asarray(points, np.float64).reshape(-1, 3)
    if pts is not None:
        lo, hi = np.percentile(pts, [2, 98], axis=0)
        centre = (lo + hi) / 2
        radius = max(float(np.linalg.norm(hi - lo)) / 2, 1e-3)
    elif len(c2w):
        centre = c2w[:, :3, 3].mean(0) + c2w[:, :3, 2].mean(0)  # one unit in front of the cameras
        radius = max(float(np.linalg.norm(c2w[:, :3, 3] - centre, axis=-1).max()), 1.0)
    else:
        return np.array([3.0, 3.0, 3.0]) * -up, np.zeros(3), up
    other = np.array([1.0, 0.0, 0.0]) if abs(up[0]) < 0.9 else np.array([0.0, 0.0, 1.0])
    forward = c2w[:, :3, 2].mean(0) if len(c2w) else np.cross(up, other)
    forward = forward - up * (forward @ up)
    if np.linalg.norm(forward) < 1e-6:  # cameras looking every way (an orbit) or straight down
        forward = c2w[0, :3, 2] - up * (c2w[0, :3, 2] @ up) if len(c2w) else np.cross(up, other)
        if np.linalg.norm(forward) < 1e-6:
            forward = np.cross(up, other)
    forward /= np.linalg.norm(forward)
    el = math.radians(elevation_deg)
    direction = -forward * math.cos(el) + up * math.sin(el)
    return centre + back * radius * direction, centre, up


def gaussians_to_viser(g: Gaussians) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """:class:`Gaussians` -> viser ``add_gaussian_splats`` arrays, float32:
    ``centers [N, 3]``, ``covariances [N, 3, 3]``, ``rgbs [N, 3]`` in ``[0, 1]`` (the DC colour),
    ``opacities [N, 1]``."""
    if not isinstance(g, Gaussians):
        raise TypeError(f"gaussians_to_viser: expected Gaussians, found {type(g).__name__}")
    g = g.detach().to("cpu")
    centers = g.means.float().numpy()
    cov = g.covariances().float().numpy()
    rgbs = g.colors.clamp(0.0, 1.0).float().numpy()
    opacities = g.opacities.float().numpy()[:, None]
    return centers, cov, rgbs, opacities
