"""View sampling of the sequence datasets: windows, the views inside a window, their order and reference.

The rules are the reference's (SLAM3R ``ScanNetpp_Seq`` / ``Aria_Seq`` / ``Co3d_Seq``):

- **Sliding windows** (default): a window starts every ``start_freq`` frames and spans
  ``winsize = sample_freq * (num_views - 1)`` frames; its views are ``sid, sid + sample_freq, ...``.
  A window must end before the last frame (``sid + winsize < n``, the reference's bound).
- **Random selection** (``rand_sel``): windows of ``winsize`` frames, ``sel_num`` samples each; the
  first sample of a window takes ``num_views`` frames evenly (``linspace``), the others keep the
  first and last frame and draw the ``num_views - 2`` inner ones at random (sorted).
- **Degree windows** (``degree > 0``, CO3D's turntables): ``winsize = int(degree / 360 * frames_per_turn)``
  frames (a sequence of ``frames_per_turn`` frames goes once around the object), then as ``rand_sel``.
- **Stride filter** (``filter``): a window whose frame numbers (from the file names) advance by
  ``3 * id_stride * winsize`` or more is dropped (frames missing in between: ScanNet++'s DSLR
  ``id_stride = 1``, iPhone 10).
- **Limits** (ours): ``max_rotation`` degrees between any view and the reference view, and
  ``min_overlap``, the fraction of the reference view's valid pixels that land, in front of the
  camera and inside the image, in every other view. A sample that breaks them is redrawn.
- **Order / reference** (``order``, ``ref_id``): ``fixed`` keeps time order, ``reverse`` reverses it
  with probability 1/2, ``random`` permutes; ``ref_id = -1`` is the middle view ``(V - 1) // 2`` (the
  reference trainer's default), ``-2`` a random view, ``k >= 0`` view ``k``.
"""

from __future__ import annotations

import math

import numpy as np

from forward3d.geometry.se3 import inverse_se3, rotation_angle

__all__ = ["window_size", "samples_per_window", "make_windows", "select_frames", "order_views",
           "rotation_to_ref", "overlap_fraction"]


def window_size(cfg) -> int:
    """Frames spanned by one window (last index - first index)."""
    if cfg.degree > 0:
        return int(cfg.degree / 360.0 * cfg.frames_per_turn)
    if cfg.rand_sel:
        return int(cfg.winsize)
    return int(cfg.sample_freq) * (int(cfg.num_views) - 1)


def samples_per_window(cfg) -> int:
    """Samples drawn from each window (``sel_num`` for random selection / degree windows, else 1)."""
    return max(1, int(cfg.sel_num)) if (cfg.rand_sel or cfg.degree > 0) else 1


def make_windows(num_frames: int, cfg, frame_numbers: np.ndarray | None = None,
                 id_stride: float = 1.0) -> list[tuple[int, int]]:
    """``(first, last)`` frame indices of the windows of a sequence of ``num_frames`` frames."""
    win = window_size(cfg)
    out = []
    for sid in range(0, int(num_frames), int(cfg.start_freq)):
        eid = sid + win
        if eid >= num_frames:
            break
        if cfg.filter and frame_numbers is not None and len(frame_numbers) == num_frames:
            if frame_numbers[eid] - frame_numbers[sid] >= 3 * id_stride * max(win, 1):
                continue
        out.append((sid, eid))
    return out


def select_frames(sid: int, eid: int, k: int, cfg, rng: np.random.Generator) -> list[int]:
    """The frame indices of sample ``k`` (``0 <= k < samples_per_window``) of window ``(sid, eid)``."""
    v = int(cfg.num_views)
    if not (cfg.rand_sel or cfg.degree > 0):
        return [sid + i * int(cfg.sample_freq) for i in range(v)]
    if v == 1:
        return [sid]
    if k == 0:
        return [int(i) for i in np.linspace(sid, eid, v, endpoint=True).astype(int)]
    if v == 2:
        return [sid, eid]
    inner = np.sort(rng.choice(np.arange(sid + 1, eid), v - 2, replace=False))
    return [sid, *(int(i) for i in inner), eid]


def order_views(ids: list[int], cfg, rng: np.random.Generator) -> tuple[list[int], int]:
    """Apply ``order`` and choose the reference view; returns ``(ids, ref_id)``."""
    ids = list(ids)
    if cfg.order == "reverse" and rng.integers(2):
        ids = ids[::-1]
    elif cfg.order == "random":
        ids = [ids[i] for i in rng.permutation(len(ids))]
    if cfg.ref_id == -1:
        ref = (len(ids) - 1) // 2
    elif cfg.ref_id == -2:
        ref = int(rng.integers(len(ids)))
    else:
        ref = int(cfg.ref_id)
    return ids, ref


def rotation_to_ref(c2w: np.ndarray, ref: int) -> np.ndarray:
    """``[V]`` rotation angles in degrees between each camera of ``c2w`` ``[V, 4, 4]`` and camera ``ref``."""
    rel = inverse_se3(c2w[ref])[None] @ c2w
    return np.degrees(rotation_angle(rel[:, :3, :3]))


def overlap_fraction(depth_ref: np.ndarray, valid_ref: np.ndarray, K_ref: np.ndarray, c2w_ref: np.ndarray,
                     K: np.ndarray, c2w: np.ndarray, width: int, height: int, step: int = 4) -> float:
    """Fraction of the reference view's valid pixels (on a ``step`` grid) that project in front of the
    other camera and inside its ``width x height`` image. 0 when the reference has no valid pixel."""
    vs, us = np.mgrid[0:depth_ref.shape[0]:step, 0:depth_ref.shape[1]:step]
    m = valid_ref[vs, us]
    if not m.any():
        return 0.0
    z = depth_ref[vs, us][m].astype(np.float64)
    u, v = us[m] + 0.5, vs[m] + 0.5
    pc = np.stack([(u - K_ref[0, 2]) / K_ref[0, 0] * z, (v - K_ref[1, 2]) / K_ref[1, 1] * z, z], -1)
    T = inverse_se3(c2w) @ c2w_ref
    q = pc @ T[:3, :3].T + T[:3, 3]
    front = q[:, 2] > 1e-6
    zq = np.where(front, q[:, 2], 1.0)
    uq = K[0, 0] * q[:, 0] / zq + K[0, 2]
    vq = K[1, 1] * q[:, 1] / zq + K[1, 2]
    inside = front & (uq >= 0) & (uq < width) & (vq >= 0) & (vq < height)
    return float(inside.mean())


def check_rand_sel(cfg) -> None:
    """Raise ValueError when random selection cannot draw ``sel_num`` distinct samples per window."""
    v, win = int(cfg.num_views), window_size(cfg)
    if v >= 2 and win < v - 1:
        raise ValueError(f"{type(cfg).__name__}: a window of {win} frames cannot hold num_views={v} distinct views")
    if v > 2 and cfg.sel_num > math.comb(max(win - 1, 0), v - 2):
        raise ValueError(f"{type(cfg).__name__}: sel_num={cfg.sel_num} exceeds the {math.comb(max(win - 1, 0), v - 2)} "
                         f"distinct selections of {v} views in a window of {win} frames")
