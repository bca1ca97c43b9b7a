"""``forward3d eval``: score reconstructions and trajectories.

Subcommands:

- ``forward3d eval recon PRED.ply GT.ply``: accuracy / completion / chamfer / F-score (+ normal
  consistency when both PLYs have normals).
- ``forward3d eval traj PRED GT``: ATE (after SE(3) / Sim(3) / no alignment) and RPE. Trajectory files
  are TUM text (``timestamp tx ty tz qx qy qz qw``) or Redwood / Open3D ``.log``.
- ``forward3d eval nvs ...``: novel-view metrics, available when :mod:`forward3d.cli.eval_nvs` exists
  (a module with ``add_arguments(parser)`` and ``run(args) -> int``, imported here lazily).

Results are printed as a table and, with ``--out``, written as JSON.
"""

from __future__ import annotations

import argparse
import importlib
import logging
from pathlib import Path
from typing import Any, Callable

import numpy as np

log = logging.getLogger(__name__)

NVS_MODULE = "forward3d.cli.eval_nvs"


# --------------------------------------------------------------------------------------------------
# argument parsing
# --------------------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="eval_command", metavar="SUBCOMMAND", required=True)

    p = sub.add_parser("recon", help="score a point cloud against a ground-truth point cloud / mesh (PLY)",
                       description="Accuracy, completion, chamfer, precision/recall/F-score and normal "
                                   "consistency of PRED against GT (PLY files; meshes use their vertices).")
    p.add_argument("pred", type=Path, help="predicted point cloud (.ply)")
    p.add_argument("gt", type=Path, help="ground-truth point cloud or mesh (.ply)")
    p.add_argument("--thresholds", type=float, nargs="+", default=[0.01, 0.02, 0.05],
                   help="F-score distance thresholds in metres (default: 0.01 0.02 0.05)")
    p.add_argument("--max-dist", type=float, default=None,
                   help="clip nearest-neighbour distances to this value before averaging")
    p.add_argument("--voxel-size", type=float, default=None,
                   help="voxel-downsample both clouds to this size (metres) before scoring")
    p.add_argument("--out", type=Path, default=None, help="write the metrics as JSON here")
    p.set_defaults(_eval_run=run_recon)

    p = sub.add_parser("traj", help="ATE / RPE of a camera trajectory (TUM .txt or Redwood .log)",
                       description="Absolute trajectory error after alignment and relative pose error. "
                                   "Files ending in .log are Redwood/Open3D logs, anything else is TUM "
                                   "('timestamp tx ty tz qx qy qz qw', camera-to-world). Poses are "
                                   "associated by timestamp when both files have them, else by index.")
    p.add_argument("pred", type=Path, help="predicted trajectory (TUM .txt or Redwood .log)")
    p.add_argument("gt", type=Path, help="ground-truth trajectory (TUM .txt or Redwood .log)")
    p.add_argument("--align", choices=("se3", "sim3", "none"), default="se3",
                   help="alignment before ATE: rigid (default), rigid + scale, or none")
    p.add_argument("--delta", type=int, default=1, help="frame offset of the RPE pairs (default 1)")
    p.add_argument("--max-diff", type=float, default=0.02,
                   help="largest timestamp difference (s) when associating TUM trajectories (default 0.02)")
    p.add_argument("--out", type=Path, default=None, help="write the metrics as JSON here")
    p.add_argument("--aligned-out", type=Path, default=None,
                   help="write the aligned predicted trajectory (TUM format) here")
    p.set_defaults(_eval_run=run_traj)

    _add_nvs(sub)


def _add_nvs(sub: Any) -> None:
    """Register ``nvs`` from :mod:`forward3d.cli.eval_nvs` if that module exists."""
    try:
        module = importlib.import_module(NVS_MODULE)
    except ModuleNotFoundError as exc:
        if exc.name == NVS_MODULE:
            return  # not written yet: no nvs subcommand
        error = exc
    except ImportError as exc:
        error = exc
    else:
        p = sub.add_parser("nvs", help=(module.__doc__ or "novel-view synthesis metrics").strip().splitlines()[0])
        module.add_arguments(p)
        p.set_defaults(_eval_run=module.run)
        return
    # the module exists but its dependencies do not import: keep recon/traj working, report on use
    p = sub.add_parser("nvs", help="novel-view synthesis metrics (unavailable: missing dependency)")
    p.add_argument("rest", nargs=argparse.REMAINDER)

    def _unavailable(args: argparse.Namespace) -> int:
        raise ImportError(f"forward3d eval nvs is unavailable: {error}")

    p.set_defaults(_eval_run=_unavailable)


def run(args: argparse.Namespace) -> int:
    fn: Callable[[argparse.Namespace], int] | None = getattr(args, "_eval_run", None)
    if fn is None:
        raise ValueError("expected a subcommand: recon, traj or nvs")
    return int(fn(args) or 0)


# --------------------------------------------------------------------------------------------------
# output helpers
# --------------------------------------------------------------------------------------------------


def _write_json(path: Path, result: dict[str, Any]) -> None:
    from forward3d.io.jsonio import write_json

    write_json(path, result)
    log.info("wrote %s", path)


def format_table(title: str, rows: list[tuple[str, Any]]) -> str:
    """A two-column plain-text table."""
    width = max([len(k) for k, _ in rows] + [len(title)])
    lines = [title, "-" * (width + 14)]
    for k, v in rows:
        if isinstance(v, float):
            v = f"{v:.6g}"
        lines.append(f"{k:<{width}}  {v}")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------
# recon
# --------------------------------------------------------------------------------------------------


def run_recon(args: argparse.Namespace) -> int:
    from forward3d.eval.recon import recon_metrics
    from forward3d.io.ply import read_point_cloud

    for name, path in (("PRED", args.pred), ("GT", args.gt)):
        if not Path(path).is_file():
            raise FileNotFoundError(f"{name} point cloud not found: {path}")
    pred = read_point_cloud(args.pred)
    gt = read_point_cloud(args.gt)
    if len(pred) == 0:
        raise ValueError(f"PRED {args.pred}: expected points, found an empty point cloud")
    if len(gt) == 0:
        raise ValueError(f"GT {args.gt}: expected points, found an empty point cloud")
    metrics = recon_metrics(pred, gt, thresholds=args.thresholds, max_dist=args.max_dist,
                            voxel_size=args.voxel_size)
    print(format_table(f"recon: {args.pred} vs {args.gt}", list(metrics.items())))
    if args.out is not None:
        _write_json(args.out, {
            "pred": args.pred, "gt": args.gt, "thresholds": list(args.thresholds),
            "max_dist": args.max_dist, "voxel_size": args.voxel_size, "metrics": metrics,
        })
    return 0


# --------------------------------------------------------------------------------------------------
# traj
# --------------------------------------------------------------------------------------------------


def read_trajectory(path: Path) -> tuple[np.ndarray | None, np.ndarray]:
    """``.log`` -> Redwood (no timestamps); anything else -> TUM. Returns ``(timestamps or None, c2w)``."""
    from forward3d.io.trajectory import read_redwood_log, read_tum

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"trajectory not found: {path}")
    if path.suffix.lower() == ".log":
        return None, read_redwood_log(path)
    return read_tum(path)


def match_trajectories(ts_pred: np.ndarray | None, n_pred: int, ts_gt: np.ndarray | None, n_gt: int,
                       max_diff: float) -> tuple[np.ndarray, np.ndarray, str]:
    """Pair poses by timestamp (both files timed) or by index.

    Returns:
        ``(idx_pred [K], idx_gt [K], how)`` with ``how`` ``"timestamp"`` or ``"index"``.
    """
    from forward3d.eval.traj import associate

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


def run_traj(args: argparse.Namespace) -> int:
    from forward3d.eval.traj import ate, rpe

    ts_pred, pred = read_trajectory(args.pred)
    ts_gt, gt = read_trajectory(args.gt)
    for name, path, c2w in (("PRED", args.pred, pred), ("GT", args.gt, gt)):
        if len(c2w) == 0:
            raise ValueError(f"{name} {path}: expected poses, found none")
    ip, ig, how = match_trajectories(ts_pred, len(pred), ts_gt, len(gt), args.max_diff)
    pred_m, gt_m = pred[ip], gt[ig]
    need = 1 if args.align == "none" else 3
    if len(pred_m) < need:
        raise ValueError(f"too few matched poses for --align {args.align}: expected at least {need}, "
                         f"found {len(pred_m)}")
    a = ate(pred_m, gt_m, align=args.align)
    r = rpe(a["aligned_c2w"], gt_m, delta=args.delta) if len(pred_m) > args.delta else None
    if r is None:
        log.warning("RPE skipped: %d matched poses for delta=%d", len(pred_m), args.delta)

    ate_scalars = {k: v for k, v in a.items() if not isinstance(v, np.ndarray)}
    rpe_scalars = {} if r is None else {k: v for k, v in r.items() if not isinstance(v, np.ndarray)}
    rows: list[tuple[str, Any]] = [("matched poses", f"{len(pred_m)} (by {how}; {len(pred)} pred, {len(gt)} gt)"),
                                   ("align", args.align)]
    rows += [(f"ATE {k}", v) for k, v in ate_scalars.items() if k != "num_poses"]
    rows += [(f"RPE(delta={args.delta}) {k}", v) for k, v in rpe_scalars.items() if k != "num_pairs"]
    print(format_table(f"traj: {args.pred} vs {args.gt}", rows))

    if args.out is not None:
        _write_json(args.out, {
            "pred": args.pred, "gt": args.gt, "align": args.align, "association": how,
            "num_pred": len(pred), "num_gt": len(gt), "num_matched": len(pred_m),
            "ate": {**ate_scalars, "alignment": a["alignment"]},
            "rpe": {"delta": args.delta, **rpe_scalars} if r is not None else None,
        })
    if args.aligned_out is not None:
        from forward3d.io.trajectory import write_tum

        ts = ts_pred[ip] if ts_pred is not None else ts_gt[ig] if ts_gt is not None else ip.astype(np.float64)
        write_tum(args.aligned_out, ts, a["aligned_c2w"])
        log.info("wrote aligned trajectory %s", args.aligned_out)
    return 0
