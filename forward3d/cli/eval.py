"""``forward3d eval``: score reconstructions, trajectories and novel views.

Subcommands (options generated from the library's configs):

- ``forward3d eval recon PRED.ply GT.ply``: accuracy / completion / chamfer / F-score (+ normal
  consistency when both PLYs have normals): :class:`forward3d.eval.recon.ReconEvalConfig`.
- ``forward3d eval traj PRED GT``: ATE (after SE(3) / Sim(3) / no alignment) and RPE; trajectory files
  are TUM text (``timestamp tx ty tz qx qy qz qw``) or Redwood / Open3D ``.log``:
  :class:`forward3d.eval.traj.TrajEvalConfig`.
- ``forward3d eval nvs ...``: novel-view metrics on RealEstate10K (one view or two views):
  :class:`forward3d.eval.nvs.NVSEvalConfig`.

Results are printed as a table and, with ``--out``, written as JSON.
"""

from __future__ import annotations

import argparse
import logging
from typing import Any

from forward3d.cli.options import add_config_arguments, config_from_args
from forward3d.config import import_reference

log = logging.getLogger(__name__)

# name -> (help, description, "module:Config", runner)
SUBCOMMANDS: dict[str, tuple[str, str, str]] = {
    "recon": ("score a point cloud against a ground-truth point cloud / mesh (PLY)",
              "Accuracy, completion, chamfer, precision/recall/F-score and normal consistency of PRED against "
              "GT (PLY files; meshes use their vertices).", "forward3d.eval.recon:ReconEvalConfig"),
    "traj": ("ATE / RPE of a camera trajectory (TUM .txt or Redwood .log)",
             "Absolute trajectory error after alignment and relative pose error. Files ending in .log are "
             "Redwood/Open3D logs, anything else is TUM ('timestamp tx ty tz qx qy qz qw', camera-to-world). "
             "Poses are associated by timestamp when both files have them, else by index.",
             "forward3d.eval.traj:TrajEvalConfig"),
    "nvs": ("novel-view synthesis on RealEstate10K: single-view (re10k-1view) or two-view (re10k-2view) protocol",
            "re10k-1view: renders the +5, +10 and random targets of every line of the split file from the source's "
            "Gaussians, crops 5% per side and prints the means beside the published Flash3D numbers. "
            "re10k-2view: renders the 3 targets of every scene of the pixelSplat evaluation index from the "
            "Gaussians of its 2 context views (256x256 crops) beside the published pixelSplat / MVSplat / "
            "DepthSplat numbers.",
            "forward3d.eval.nvs:NVSEvalConfig"),
}


def add_arguments(parser: argparse.ArgumentParser, argv: list[str] | None = None) -> None:
    sub = parser.add_subparsers(dest="eval_command", metavar="SUBCOMMAND", required=True)
    argv = argv or []
    for name, (help_, desc, ref) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_, description=desc.replace("%", "%%"))
        if name in argv:  # only the chosen evaluation's module is imported
            cls = import_reference(ref)
            p.set_defaults(_eval_dests=add_config_arguments(p, cls), _eval_cls=cls)


def format_table(title: str, rows: list[tuple[str, Any]]) -> str:
    """A two-column plain-text table."""
    width = max([len(k) for k, _ in rows] + [len(title)])
    lines = [title, "-" * (width + 14)]
    for k, v in rows:
        if isinstance(v, float):
            v = f"{v:.6g}"
        lines.append(f"{k:<{width}}  {v}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    cmd = getattr(args, "eval_command", None)
    if cmd not in SUBCOMMANDS:
        raise ValueError("expected a subcommand: recon, traj or nvs")
    cfg = config_from_args(args._eval_cls, args, args._eval_dests)
    if cmd == "recon":
        from forward3d.eval.recon import evaluate_point_cloud_files

        result = evaluate_point_cloud_files(cfg)
        print(format_table(f"recon: {cfg.pred} vs {cfg.gt}", list(result["metrics"].items())))
    elif cmd == "traj":
        from forward3d.eval.traj import evaluate_trajectory_files

        _, rows = evaluate_trajectory_files(cfg)
        print(format_table(f"traj: {cfg.pred} vs {cfg.gt}", rows))
    else:
        from forward3d.eval.nvs import run_nvs_eval

        report, _ = run_nvs_eval(cfg)
        print(report.table())
    return 0
