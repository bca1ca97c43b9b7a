"""Trajectory metrics: absolute trajectory error (ATE), relative pose error (RPE), and TUM-style
timestamp association.

Poses are ``c2w`` ``[N, 4, 4]`` (rigid) matrices; row ``i`` of the prediction corresponds to row ``i``
of the ground truth (use :func:`associate` first for time-stamped trajectories).

- ATE (Sturm et al. 2012): align the predicted camera centres to the ground-truth ones with Umeyama
  (SE(3), Sim(3) for scale-free methods, or none) and report statistics of the remaining centre
  distances ``|c_gt_i - (s R c_pred_i + t)|``.
- RPE: for each pair ``(i, i + delta)``, the error of the relative motion
  ``E = inv(inv(gt_i) gt_j) inv(pred_i) pred_j``; translation ``|t_E|`` and rotation angle of ``R_E``.
  RPE is invariant to a rigid alignment but not to scale: pass ``ate(...)["aligned_c2w"]`` to score a
  Sim(3)-aligned prediction.
"""

from __future__ import annotations

import logging
from typing import Any, Literal

import numpy as np

from forward3d.geometry._util import to_numpy64
from forward3d.geometry.align import umeyama
from forward3d.geometry.se3 import inverse_se3, make_sim3, rotation_angle

__all__ = ["ate", "rpe", "associate"]

log = logging.getLogger(__name__)


def _check_poses(name: str, c2w) -> np.ndarray:
    T = to_numpy64(name, c2w)
    if T.ndim != 3 or T.shape[1:] != (4, 4):
        raise ValueError(f"{name}: expected shape [N, 4, 4], found {list(T.shape)}")
    if not np.isfinite(T).all():
        bad = np.flatnonzero(~np.isfinite(T).all((1, 2)))
        raise ValueError(f"{name}: expected finite poses, found non-finite values in poses {bad[:10].tolist()}")
    return T


def _check_pair(pred_c2w, gt_c2w, where: str) -> tuple[np.ndarray, np.ndarray]:
    pred = _check_poses(f"{where} pred_c2w", pred_c2w)
    gt = _check_poses(f"{where} gt_c2w", gt_c2w)
    if len(pred) != len(gt):
        raise ValueError(f"{where}: expected as many predicted as ground-truth poses, found {len(pred)} "
                         f"predicted and {len(gt)} ground-truth (associate them first)")
    return pred, gt


def _stats(prefix: str, e: np.ndarray) -> dict[str, float]:
    return {
        f"{prefix}rmse": float(np.sqrt((e**2).mean())),
        f"{prefix}mean": float(e.mean()),
        f"{prefix}median": float(np.median(e)),
        f"{prefix}std": float(e.std()),
        f"{prefix}min": float(e.min()),
        f"{prefix}max": float(e.max()),
    }


def ate(pred_c2w, gt_c2w, align: Literal["se3", "sim3", "none"] = "se3") -> dict[str, Any]:
    """Absolute trajectory error of camera centres after aligning ``pred`` to ``gt``.

    Args:
        pred_c2w, gt_c2w: ``[N, 4, 4]`` corresponding poses.
        align: ``"se3"`` (rigid), ``"sim3"`` (rigid + scale; for up-to-scale methods) or ``"none"``.

    Returns:
        dict with ``rmse, mean, median, std, min, max`` (metres) of the centre errors,
        ``rot_rmse_deg, rot_mean_deg, rot_median_deg`` (orientation error after alignment),
        ``scale`` (float), ``alignment`` (``[4, 4]`` Sim(3) mapping the prediction's world to the
        ground truth's), ``aligned_c2w`` (``[N, 4, 4]`` rigid poses), ``errors`` (``[N]``), ``num_poses``.

    Raises:
        ValueError: shapes, non-finite poses, different lengths, fewer than 3 poses (alignment) or
            1 (no alignment), or an unknown ``align``.
    """
    if align not in ("se3", "sim3", "none"):
        raise ValueError(f"ate: expected align in ('se3', 'sim3', 'none'), found {align!r}")
    pred, gt = _check_pair(pred_c2w, gt_c2w, "ate")
    n = len(pred)
    need = 1 if align == "none" else 3
    if n < need:
        raise ValueError(f"ate: too few poses for align={align!r}: expected at least {need}, found {n}")
    c_pred, c_gt = pred[:, :3, 3], gt[:, :3, 3]
    if align == "none":
        s, R, t = 1.0, np.eye(3), np.zeros(3)
    else:
        # degenerate (collinear / static) trajectories still have a well-defined minimal error
        s, R, t = umeyama(c_pred, c_gt, with_scale=align == "sim3", allow_degenerate=True)
        if s <= 0:
            raise ValueError("ate: Sim(3) alignment found a non-positive scale (static prediction?)")
    aligned = pred.copy()
    aligned[:, :3, :3] = R @ pred[:, :3, :3]
    aligned[:, :3, 3] = s * c_pred @ R.T + t
    err = np.linalg.norm(aligned[:, :3, 3] - c_gt, axis=1)
    rot = np.degrees(rotation_angle(np.swapaxes(gt[:, :3, :3], 1, 2) @ aligned[:, :3, :3]))
    out: dict[str, Any] = _stats("", err)
    out.update({
        "rot_rmse_deg": float(np.sqrt((rot**2).mean())),
        "rot_mean_deg": float(rot.mean()),
        "rot_median_deg": float(np.median(rot)),
        "scale": float(s),
        "alignment": make_sim3(R, t, s),
        "aligned_c2w": aligned,
        "errors": err,
        "num_poses": n,
    })
    return out


def rpe(pred_c2w, gt_c2w, delta: int = 1) -> dict[str, Any]:
    """Relative pose error over pose pairs ``(i, i + delta)``.

    Returns:
        dict with ``trans_rmse, trans_mean, trans_median, trans_max`` (units of the poses),
        ``rot_rmse_deg, rot_mean_deg, rot_median_deg, rot_max_deg``, ``num_pairs``, and the per-pair
        arrays ``trans_errors``, ``rot_errors_deg`` (``[N - delta]``).
    """
    if int(delta) != delta or delta < 1:
        raise ValueError(f"rpe: expected an integer delta >= 1, found {delta}")
    delta = int(delta)
    pred, gt = _check_pair(pred_c2w, gt_c2w, "rpe")
    n = len(pred)
    if n <= delta:
        raise ValueError(f"rpe: too few poses: expected more than delta={delta}, found {n}")
    rel_pred = inverse_se3(pred[:-delta]) @ pred[delta:]
    rel_gt = inverse_se3(gt[:-delta]) @ gt[delta:]
    E = inverse_se3(rel_gt) @ rel_pred
    te = np.linalg.norm(E[:, :3, 3], axis=1)
    re = np.degrees(rotation_angle(E[:, :3, :3]))
    return {
        "trans_rmse": float(np.sqrt((te**2).mean())),
        "trans_mean": float(te.mean()),
        "trans_median": float(np.median(te)),
        "trans_max": float(te.max()),
        "rot_rmse_deg": float(np.sqrt((re**2).mean())),
        "rot_mean_deg": float(re.mean()),
        "rot_median_deg": float(np.median(re)),
        "rot_max_deg": float(re.max()),
        "num_pairs": int(len(te)),
        "trans_errors": te,
        "rot_errors_deg": re,
    }


def associate(ts_a, ts_b, max_diff: float = 0.02, offset: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Match two lists of timestamps one-to-one (TUM ``associate.py``).

    Candidate pairs have ``|a - (b + offset)| < max_diff``; they are taken greedily, closest first,
    each timestamp used at most once.

    Args:
        ts_a: ``[N]`` seconds. ts_b: ``[M]`` seconds.
        max_diff: largest accepted time difference (seconds).
        offset: added to ``ts_b`` before matching.

    Returns:
        ``(idx_a [K], idx_b [K])`` int64 indices, sorted by ``idx_a``'s timestamps.
    """
    a = to_numpy64("associate ts_a", ts_a).reshape(-1)
    b = to_numpy64("associate ts_b", ts_b).reshape(-1) + offset
    if not max_diff > 0:
        raise ValueError(f"associate: expected max_diff > 0, found {max_diff}")
    order_b = np.argsort(b, kind="stable")
    bs = b[order_b]
    lo = np.searchsorted(bs, a - max_diff, side="left")
    hi = np.searchsorted(bs, a + max_diff, side="right")
    counts = hi - lo
    ia = np.repeat(np.arange(len(a)), counts)
    starts = np.repeat(lo - np.cumsum(counts) + counts, counts)
    jb_sorted = np.arange(len(ia)) + starts
    ib = order_b[jb_sorted] if len(ia) else np.zeros(0, dtype=np.int64)
    diff = np.abs(a[ia] - b[ib])
    keep = diff < max_diff
    ia, ib, diff = ia[keep], ib[keep], diff[keep]
    used_a = np.zeros(len(a), dtype=bool)
    used_b = np.zeros(len(b), dtype=bool)
    pairs = []
    for k in np.lexsort((ib, ia, diff)):
        i, j = ia[k], ib[k]
        if not used_a[i] and not used_b[j]:
            used_a[i] = used_b[j] = True
            pairs.append((i, j))
    if not pairs:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    pairs_arr = np.array(pairs, dtype=np.int64)
    pairs_arr = pairs_arr[np.lexsort((pairs_arr[:, 0], a[pairs_arr[:, 0]]))]
    return pairs_arr[:, 0], pairs_arr[:, 1]
