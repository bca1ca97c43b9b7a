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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Literal

import numpy as np

from forward3d.config import option
from forward3d.geometry._util import to_numpy64
from forward3d.geometry.align import umeyama
from forward3d.geometry.se3 import inverse_se3, make_sim3, rotation_angle
from forward3d.io.trajectory import associate  # noqa: F401  (re-exported: forward3d.eval.traj.associate)
from forward3d.types import ATEStats, Frame, RPEStats, TrajectoryMetrics

__all__ = ["ate", "rpe", "associate", "trajectory_metrics", "GroundTruthRecorder", "TrajEvalConfig",
           "evaluate_trajectory_files", "match_trajectories"]

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


DEGENERATE_CONDITIONING = 0.05
"""ATE alignment is ill-posed when the ground-truth camera centres are nearly collinear: the ratio of the
second to the first singular value of the centred centres below this (or a spread under 1 mm)."""


def alignment_conditioning(centres: np.ndarray) -> float:
    """``sigma_2 / sigma_1`` of the centred camera centres ``[N, 3]`` (0 for collinear or static ones)."""
    c = np.asarray(centres, np.float64)
    sv = np.linalg.svd(c - c.mean(0), compute_uv=False)
    return float(sv[1] / sv[0]) if sv[0] > 1e-3 else 0.0


def _first_pose_alignment(pred: np.ndarray, gt: np.ndarray, with_scale: bool) -> tuple[float, np.ndarray, np.ndarray]:
    """``(s, R, t)`` mapping the first predicted pose onto the first ground-truth pose (the scale, for
    Sim(3), from the ratio of the distances travelled from the first camera)."""
    R = gt[0, :3, :3] @ pred[0, :3, :3].T
    s = 1.0
    if with_scale:
        dp = np.linalg.norm(pred[:, :3, 3] - pred[0, :3, 3], axis=1).sum()
        dg = np.linalg.norm(gt[:, :3, 3] - gt[0, :3, 3], axis=1).sum()
        s = float(dg / dp) if dp > 1e-12 else 1.0
    t = gt[0, :3, 3] - s * R @ pred[0, :3, 3]
    return s, R, t


def ate(pred_c2w, gt_c2w, align: Literal["se3", "sim3", "none", "first", "first-sim3"] = "se3") -> dict[str, Any]:
    """Absolute trajectory error of camera centres after aligning ``pred`` to ``gt``.

    Args:
        pred_c2w, gt_c2w: ``[N, 4, 4]`` corresponding poses.
        align: ``"se3"`` (rigid, Umeyama on the centres), ``"sim3"`` (rigid + scale; for up-to-scale
            methods), ``"none"``, or ``"first"`` / ``"first-sim3"`` (the first predicted pose onto the first
            ground-truth pose, the scale from the distances travelled: the fallback when the centres are
            nearly collinear and Umeyama's rotation about the path is undetermined).

    Returns:
        dict with ``rmse, mean, median, std, min, max`` (metres) of the centre errors,
        ``rot_rmse_deg, rot_mean_deg, rot_median_deg`` (orientation error after alignment),
        ``scale`` (float), ``alignment`` (``[4, 4]`` Sim(3) mapping the prediction's world to the
        ground truth's), ``aligned_c2w`` (``[N, 4, 4]`` rigid poses), ``errors`` (``[N]``), ``num_poses``,
        ``conditioning`` (:func:`alignment_conditioning` of the GT centres) and ``degenerate`` (an
        se3/sim3 alignment on nearly collinear centres: its rotation numbers are not meaningful).

    Raises:
        ValueError: shapes, non-finite poses, different lengths, fewer than 3 poses (alignment) or
            1 (no alignment), or an unknown ``align``.
    """
    modes = ("se3", "sim3", "none", "first", "first-sim3")
    if align not in modes:
        raise ValueError(f"ate: expected align in {modes}, found {align!r}")
    pred, gt = _check_pair(pred_c2w, gt_c2w, "ate")
    n = len(pred)
    need = 3 if align in ("se3", "sim3") else 1
    if n < need:
        raise ValueError(f"ate: too few poses for align={align!r}: expected at least {need}, found {n}")
    c_pred, c_gt = pred[:, :3, 3], gt[:, :3, 3]
    cond = alignment_conditioning(c_gt) if n >= 2 else 0.0
    degenerate = align in ("se3", "sim3") and cond < DEGENERATE_CONDITIONING
    if align == "none":
        s, R, t = 1.0, np.eye(3), np.zeros(3)
    elif align in ("first", "first-sim3"):
        s, R, t = _first_pose_alignment(pred, gt, with_scale=align == "first-sim3")
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
        "conditioning": cond,
        "degenerate": bool(degenerate),
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


def trajectory_metrics(c2w: np.ndarray, gt: list[np.ndarray | None],
                       metric_scale: bool = True) -> TrajectoryMetrics | None:
    """ATE (SE(3) and Sim(3) alignment) and RPE over the frames that have a ground-truth pose.

    Args:
        c2w: ``[N, 4, 4]`` estimated poses.
        gt: N ground-truth ``[4, 4]`` poses, None where a frame has none.
        metric_scale: the estimate is metric: SE(3) is the primary alignment, else Sim(3).

    Returns:
        a :class:`~forward3d.types.TrajectoryMetrics`, or None with fewer than 3 frames with GT.
    """
    idx = [i for i, g in enumerate(gt[: len(c2w)]) if g is not None]
    if len(idx) < 3:
        return None
    pred, ref = np.asarray(c2w)[idx], np.stack([gt[i] for i in idx])  # type: ignore[misc]
    primary: Literal["se3", "sim3"] = "se3" if metric_scale else "sim3"
    stats: dict[str, ATEStats] = {}
    alignment = aligned = None
    degenerate = False
    for align in ("se3", "sim3"):
        r = ate(pred, ref, align=align)
        stats[align] = ATEStats(r["rmse"], r["mean"], r["median"], r["max"], r["rot_rmse_deg"], r["scale"])
        degenerate = r["degenerate"]
        if align == primary:
            alignment, aligned = r["alignment"], r["aligned_c2w"]
    first = None
    if degenerate:
        r = ate(pred, ref, align="first" if metric_scale else "first-sim3")
        first = ATEStats(r["rmse"], r["mean"], r["median"], r["max"], r["rot_rmse_deg"], r["scale"])
        log.warning("ATE: the ground-truth camera centres are nearly collinear (conditioning %.3g < %g): the "
                    "alignment's rotation about the path is undetermined, so its rotation error is not "
                    "meaningful; the first-pose alignment gives %.3g deg", r["conditioning"],
                    DEGENERATE_CONDITIONING, first.rot_rmse_deg)
    rpe_stats = None
    contiguous = idx == list(range(idx[0], idx[0] + len(idx)))
    if contiguous:  # an up-to-scale estimate is compared in the ground truth's units (after its Sim(3))
        r = rpe(aligned if primary == "sim3" else pred, ref, 1)
        rpe_stats = RPEStats(r["trans_rmse"], r["trans_mean"], r["rot_rmse_deg"], r["rot_mean_deg"])
    return TrajectoryMetrics(len(idx), primary, stats["se3"], stats["sim3"], alignment, aligned, ref, idx, rpe_stats,
                             alignment_degenerate=degenerate, ate_first_pose=first)


class GroundTruthRecorder:
    """Passes frames through, remembering each one's ground-truth ``c2w`` (None where missing).

    Wrap a frame source with it to score the reconstruction afterwards without holding the frames:
    ``frames = GroundTruthRecorder(src); recon = backend.run(frames); trajectory_metrics(recon.c2w, frames.gt)``.
    ``len()`` (or ``length`` for a generator) and ``dropped`` are those of the wrapped source.
    """

    def __init__(self, frames: Iterable[Frame], length: int | None = None) -> None:
        self.frames = frames
        self.length = length
        self.gt: list[np.ndarray | None] = []

    def __len__(self) -> int:
        if self.length is not None:
            return int(self.length)
        return len(self.frames)  # type: ignore[arg-type]

    @property
    def dropped(self) -> bool:
        return bool(getattr(self.frames, "dropped", False))

    def __getattr__(self, name: str) -> Any:  # layout, has_depth, ... of the source
        if name in ("frames", "length", "gt"):
            raise AttributeError(name)
        return getattr(self.frames, name)

    def __iter__(self) -> Iterator[Frame]:
        for f in self.frames:
            ok = f.c2w is not None and np.isfinite(f.c2w).all()
            self.gt.append(np.asarray(f.c2w, np.float64) if ok else None)
            yield f


def _unit(key: str) -> str:
    """The unit of an ATE/RPE statistic for table rows."""
    if key.endswith("_deg"):
        return "deg"
    if key in ("scale", "conditioning"):
        return "-"
    return "m"


def match_trajectories(ts_pred: np.ndarray | None, n_pred: int, ts_gt: np.ndarray | None, n_gt: int,
                       max_diff: float) -> tuple[np.ndarray, np.ndarray, str]:
    """Pair poses by timestamp (both files timed) or by index.

    Returns:
        ``(idx_pred [K], idx_gt [K], how)`` with ``how`` ``"timestamp"`` or ``"index"``.
    """
    if ts_pred is not None and ts_gt is not None:
        ip, ig = associate(ts_pred, ts_gt, max_diff=max_diff)
        if len(ip) == 0:
            raise ValueError(f"no PRED timestamp is within {max_diff} s of a GT timestamp "
                             f"(PRED: [{ts_pred.min():.3f}, {ts_pred.max():.3f}] s, "
                             f"GT: [{ts_gt.min():.3f}, {ts_gt.max():.3f}] s); check --max-diff")
        if len(ip) < n_pred:
            log.warning("associated %d of %d predicted poses by timestamp", len(ip), n_pred)
        return ip, ig, "timestamp"
    if n_pred != n_gt:
        raise ValueError(f"cannot pair poses by index: expected as many PRED as GT poses, "
                         f"found {n_pred} and {n_gt}")
    return np.arange(n_pred), np.arange(n_gt), "index"


@dataclass
class TrajEvalConfig:
    """Options of ``forward3d eval traj``: ATE after alignment and RPE of a trajectory file.

    Attributes:
        pred: predicted trajectory (TUM .txt or Redwood .log).
        gt: ground-truth trajectory (TUM .txt or Redwood .log).
        align: alignment before ATE: rigid (default), rigid + scale, or none.
        delta: frame offset of the RPE pairs.
        max_diff: largest timestamp difference (s) when associating TUM trajectories.
        out: write the metrics as JSON here.
        aligned_out: write the aligned predicted trajectory (TUM format) here.
    """

    pred: str = option("", positional=True)
    gt: str = option("", positional=True)
    align: Literal["se3", "sim3", "none"] = "se3"
    delta: int = 1
    max_diff: float = 0.02
    out: str | None = option(None, metavar="JSON")
    aligned_out: str | None = option(None, metavar="TXT")


def evaluate_trajectory_files(cfg: TrajEvalConfig) -> tuple[dict[str, Any], list[tuple[str, Any]]]:
    """Read, associate, align and score two trajectory files; write ``cfg.out`` / ``cfg.aligned_out``.

    Returns:
        ``(result, rows)``: the JSON result and ``(label, value)`` rows for a table.
    """
    from forward3d.io.jsonio import write_json
    from forward3d.io.trajectory import read_trajectory, write_tum

    ts_pred, pred = read_trajectory(cfg.pred)
    ts_gt, gt = read_trajectory(cfg.gt)
    for name, path, c2w in (("PRED", cfg.pred, pred), ("GT", cfg.gt, gt)):
        if len(c2w) == 0:
            raise ValueError(f"{name} {path}: expected poses, found none")
    ip, ig, how = match_trajectories(ts_pred, len(pred), ts_gt, len(gt), cfg.max_diff)
    pred_m, gt_m = pred[ip], gt[ig]
    need = 1 if cfg.align == "none" else 3
    if len(pred_m) < need:
        raise ValueError(f"too few matched poses for --align {cfg.align}: expected at least {need}, "
                         f"found {len(pred_m)}")
    a = ate(pred_m, gt_m, align=cfg.align)
    r = rpe(a["aligned_c2w"], gt_m, delta=cfg.delta) if len(pred_m) > cfg.delta else None
    if r is None:
        log.warning("RPE skipped: %d matched poses for delta=%d", len(pred_m), cfg.delta)
    first = None
    if a["degenerate"]:
        first = ate(pred_m, gt_m, align="first" if cfg.align == "se3" else "first-sim3")
        log.warning("ATE: the ground-truth camera centres are nearly collinear (conditioning %.3g): the %s "
                    "alignment's rotation about the path is undetermined; the first-pose alignment is reported "
                    "beside it", a["conditioning"], cfg.align)
    ate_scalars = {k: v for k, v in a.items() if not isinstance(v, np.ndarray)}
    rpe_scalars = {} if r is None else {k: v for k, v in r.items() if not isinstance(v, np.ndarray)}
    rows: list[tuple[str, Any]] = [("matched poses", f"{len(pred_m)} (by {how}; {len(pred)} pred, {len(gt)} gt)"),
                                   ("align", cfg.align + (" (ILL-POSED: nearly collinear centres)" if a["degenerate"]
                                                          else ""))]
    rows += [(f"ATE {k} [{_unit(k)}]", v) for k, v in ate_scalars.items() if k not in ("num_poses", "degenerate")]
    if first is not None:
        rows += [(f"ATE first-pose {k} [{_unit(k)}]", first[k]) for k in ("rmse", "rot_rmse_deg", "scale")]
    rows += [(f"RPE(delta={cfg.delta}) {k} [{_unit(k)}]", v) for k, v in rpe_scalars.items() if k != "num_pairs"]
    result = {
        "pred": cfg.pred, "gt": cfg.gt, "align": cfg.align, "association": how,
        "num_pred": len(pred), "num_gt": len(gt), "num_matched": len(pred_m),
        "ate": {**ate_scalars, "alignment": a["alignment"]},
        "rpe": {"delta": cfg.delta, **rpe_scalars} if r is not None else None,
        "units": {"translation": "m (units of the trajectory files)", "rotation": "deg"},
    }
    if first is not None:
        result["ate_first_pose"] = {k: v for k, v in first.items() if not isinstance(v, np.ndarray)}
    if cfg.out is not None:
        write_json(Path(cfg.out), result)
        log.info("wrote %s", cfg.out)
    if cfg.aligned_out is not None:
        ts = ts_pred[ip] if ts_pred is not None else ts_gt[ig] if ts_gt is not None else ip.astype(np.float64)
        write_tum(cfg.aligned_out, ts, a["aligned_c2w"])
        log.info("wrote aligned trajectory %s", cfg.aligned_out)
    return result, rows
