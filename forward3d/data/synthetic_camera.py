"""Camera trajectories and small rotation maths for the synthetic scene (:mod:`forward3d.data.synthetic`).

World frame: right-handed, metres, +y UP, floor at y = 0. Cameras: OpenCV axes (x right, y down,
z forward), poses as ``c2w``.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["TRAJECTORIES", "make_trajectory", "random_views", "look_at", "rot_y", "rodrigues", "smooth_signal"]

TRAJECTORIES = ("orbit", "walk", "handheld")


def rot_y(angle: float) -> np.ndarray:
    """``[3, 3]`` rotation about world +y by ``angle`` radians."""
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


def rodrigues(w: np.ndarray) -> np.ndarray:
    """``[3]`` axis-angle -> ``[3, 3]`` rotation."""
    th = float(np.linalg.norm(w))
    if th < 1e-12:
        return np.eye(3)
    k = w / th
    kx = np.array([[0.0, -k[2], k[1]], [k[2], 0.0, -k[0]], [-k[1], k[0], 0.0]])
    return np.eye(3) + math.sin(th) * kx + (1.0 - math.cos(th)) * kx @ kx


def look_at(eye: np.ndarray, target: np.ndarray) -> np.ndarray:
    """``[N, 4, 4]`` OpenCV camera-to-world looking from ``eye`` ``[N, 3]`` at ``target`` ``[N, 3]``.

    The image x axis stays horizontal (no roll); camera y points as far down as possible.
    """
    z = target - eye
    z = z / np.linalg.norm(z, axis=-1, keepdims=True)
    down = np.array([0.0, -1.0, 0.0])
    x = np.cross(down, z)
    x = x / np.linalg.norm(x, axis=-1, keepdims=True)
    y = np.cross(z, x)
    c2w = np.tile(np.eye(4), (len(eye), 1, 1))
    c2w[:, :3, 0], c2w[:, :3, 1], c2w[:, :3, 2], c2w[:, :3, 3] = x, y, z, eye
    return c2w


def smooth_signal(rng: np.random.Generator, t: np.ndarray, dims: int, f_lo: float, f_hi: float,
                  n_terms: int = 3) -> np.ndarray:
    """``[len(t), dims]`` sum of sinusoids with unit-ish amplitude and frequencies in cycles/frame."""
    out = np.zeros((len(t), dims))
    for d in range(dims):
        for _ in range(n_terms):
            f = rng.uniform(f_lo, f_hi)
            out[:, d] += rng.uniform(0.5, 1.0) * np.sin(2.0 * np.pi * f * t + rng.uniform(0, 2 * np.pi))
    return out / n_terms


def make_trajectory(kind: str, num_frames: int, room_size: tuple[float, float, float], speed: float,
                    rng: np.random.Generator) -> np.ndarray:
    """``[N, 4, 4]`` float64 smooth OpenCV camera-to-world trajectory inside the room.

    World frame: +y up, floor at y = 0, room centred on x = z = 0. Cameras stay at about 0.55 of
    the room height (above boxes, which are at most 0.35 of it) and look down across the room.

    - ``orbit``: an ellipse of radii (0.16 X, 0.16 Z) around the centre, looking at a point across
      the centre near the floor; one loop per ``100 / speed`` frames (3.6 degrees, ~5 cm per frame
      in the default room), slow height and look-at variation.
    - ``walk``: an ellipse of radii (0.3 X, 0.3 Z) at ~4.5 cm per frame, looking forward and 40
      degrees inward, with a small walking bob.
    - ``handheld``: ``orbit`` plus a smooth shake (~1 cm, ~0.8 degrees).
    """
    if kind not in TRAJECTORIES:
        raise ValueError(f"make_trajectory: expected kind in {TRAJECTORIES}, found {kind!r}")
    X, Y, Z = (float(v) for v in room_size)
    t = np.arange(int(num_frames), dtype=np.float64)
    direction = 1.0 if rng.random() < 0.5 else -1.0
    phi0 = rng.uniform(0.0, 2.0 * np.pi)
    pa, pb, pc = rng.uniform(0.0, 2.0 * np.pi, size=3)
    if kind in ("orbit", "handheld"):
        phi = phi0 + direction * speed * (2.0 * np.pi / 100.0) * t
        rx, rz = 0.16 * X, 0.16 * Z
        eye = np.stack([rx * np.cos(phi), Y * (0.55 + 0.03 * np.sin(2 * phi + pa)), rz * np.sin(phi)], -1)
        rt = 0.22 * min(X, Z)
        psi = phi + 0.12 * np.sin(phi + pb)
        target = np.stack([-rt * np.cos(psi), Y * (0.22 + 0.05 * np.sin(3 * phi + pc)),
                           -rt * np.sin(psi)], -1)
        c2w = look_at(eye, target)
    else:  # walk
        rx, rz = 0.3 * X, 0.3 * Z
        phi = phi0 + direction * speed * 0.045 / (0.5 * (rx + rz)) * t
        eye = np.stack([rx * np.cos(phi), Y * 0.55 + 0.012 * np.sin(2 * np.pi * speed * t / 16.0 + pa),
                        rz * np.sin(phi)], -1)
        tangent = direction * np.stack([-rx * np.sin(phi), np.zeros_like(phi), rz * np.cos(phi)], -1)
        tangent /= np.linalg.norm(tangent, axis=-1, keepdims=True)
        inward = -eye * np.array([1.0, 0.0, 1.0])
        inward /= np.linalg.norm(inward, axis=-1, keepdims=True)
        alpha = math.radians(40.0) + 0.1 * np.sin(phi + pb)
        look = np.cos(alpha)[:, None] * tangent + np.sin(alpha)[:, None] * inward
        target = eye + 2.2 * look
        target[:, 1] = Y * 0.25
        c2w = look_at(eye, target)
    if kind == "handheld":
        shake_t = 0.01 * smooth_signal(rng, t, 3, 0.02, 0.09)
        shake_r = math.radians(0.8) * smooth_signal(rng, t, 3, 0.02, 0.09)
        for i in range(int(num_frames)):
            c2w[i, :3, :3] = c2w[i, :3, :3] @ rodrigues(shake_r[i])
            c2w[i, :3, 3] += shake_t[i]
    return c2w


def random_views(n: int, room_size: tuple[float, float, float], rng: np.random.Generator) -> np.ndarray:
    """``[n, 4, 4]`` float64 random OpenCV camera-to-world poses inside the room, looking at content.

    Eyes are at least 0.6 m from the walls at 0.45-0.65 of the room height (above the boxes);
    each looks, without roll, at a random point 0.1-0.4 of the height above the floor at least
    1 m away horizontally, so views show floor, boxes and walls rather than a wall from up close.
    """
    if int(n) < 0:
        raise ValueError(f"random_views: expected n >= 0, found {n}")
    X, Y, Z = (float(v) for v in room_size)
    mx, mz = max(X / 2 - 0.6, 0.05), max(Z / 2 - 0.6, 0.05)
    eyes = np.zeros((int(n), 3))
    targets = np.zeros((int(n), 3))
    for i in range(int(n)):
        eye = np.array([rng.uniform(-mx, mx), rng.uniform(0.45, 0.65) * Y, rng.uniform(-mz, mz)])
        for _ in range(100):
            tgt = np.array([rng.uniform(-mx, mx), rng.uniform(0.1, 0.4) * Y, rng.uniform(-mz, mz)])
            if math.hypot(tgt[0] - eye[0], tgt[2] - eye[2]) >= min(1.0, 0.5 * min(X, Z)):
                break
        eyes[i], targets[i] = eye, tgt
    return look_at(eyes, targets) if n else np.zeros((0, 4, 4))
