"""Camera paths for rendering: orbits and small novel-view moves (OpenCV axes, ``c2w``)."""

from __future__ import annotations

import math

import numpy as np

__all__ = ["look_at", "orbit_c2w", "novel_view_c2w", "orbit_around_camera"]


def look_at(eye: np.ndarray, target: np.ndarray, up: np.ndarray = np.array([0.0, -1.0, 0.0])) -> np.ndarray:
    """``[4, 4]`` c2w of a camera at ``eye`` looking at ``target`` (OpenCV: z forward, y down;
    ``up`` is the world direction that should appear up in the image)."""
    eye, target, up = (np.asarray(v, np.float64) for v in (eye, target, up))
    z = target - eye
    n = np.linalg.norm(z)
    if n < 1e-12:
        raise ValueError("look_at: eye and target coincide")
    z /= n
    x = np.cross(z, up)  # right = forward x up  (with y down: x = z cross (-y)... handled by up sign)
    if np.linalg.norm(x) < 1e-9:
        x = np.cross(z, np.array([1.0, 0.0, 0.0]) if abs(z[0]) < 0.9 else np.array([0.0, 0.0, 1.0]))
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    c2w = np.eye(4)
    c2w[:3, 0], c2w[:3, 1], c2w[:3, 2], c2w[:3, 3] = x, y, z, eye
    return c2w


def orbit_c2w(center: np.ndarray, radius: float, n: int, elevation_deg: float = 20.0,
              up: np.ndarray = np.array([0.0, -1.0, 0.0])) -> np.ndarray:
    """``[n, 4, 4]`` cameras on a circle around ``center`` looking at it (world ``up`` given)."""
    center = np.asarray(center, np.float64)
    up = np.asarray(up, np.float64) / np.linalg.norm(up)
    a = np.array([1.0, 0.0, 0.0]) if abs(up[0]) < 0.9 else np.array([0.0, 0.0, 1.0])
    e1 = np.cross(up, a)
    e1 /= np.linalg.norm(e1)
    e2 = np.cross(up, e1)
    el = math.radians(elevation_deg)
    out = []
    for t in np.linspace(0, 2 * math.pi, n, endpoint=False):
        d = math.cos(el) * (math.cos(t) * e1 + math.sin(t) * e2) + math.sin(el) * up
        out.append(look_at(center + radius * d, center, up))
    return np.stack(out)


def novel_view_c2w(c2w: np.ndarray, forward: float = 0.0, right: float = 0.0, down: float = 0.0,
                   yaw_deg: float = 0.0) -> np.ndarray:
    """Move a camera along its own axes (metres) and turn it about its y axis."""
    c2w = np.asarray(c2w, np.float64)
    t = np.eye(4)
    t[:3, 3] = [right, down, forward]
    y = math.radians(yaw_deg)
    r = np.eye(4)
    r[:3, :3] = [[math.cos(y), 0, math.sin(y)], [0, 1, 0], [-math.sin(y), 0, math.cos(y)]]
    return c2w @ t @ r


def orbit_around_camera(depth: float, n: int = 48, radius_fraction: float = 0.15,
                        c2w: np.ndarray | None = None) -> np.ndarray:
    """``[n, 4, 4]`` small circular motion of a camera that keeps looking at the point ``depth``
    metres in front of it (a gentle orbit for single-image scenes, whose content is only visible
    from near the source view)."""
    base = np.eye(4) if c2w is None else np.asarray(c2w, np.float64)
    r = radius_fraction * depth
    target = base[:3, :3] @ np.array([0, 0, depth]) + base[:3, 3]
    up = -base[:3, 1]
    out = []
    for t in np.linspace(0, 2 * math.pi, n, endpoint=False):
        eye = base[:3, :3] @ np.array([r * math.cos(t), r * math.sin(t), 0.0]) + base[:3, 3]
        out.append(look_at(eye, target, up))
    return np.stack(out)
