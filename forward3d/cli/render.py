"""render a 3D Gaussian scene (PLY/.splat) to images and a video
(:func:`forward3d.viz.render_files.render_scene_file`; options: :class:`~forward3d.viz.render_files.RenderConfig`)"""

from __future__ import annotations

import argparse

from forward3d.cli.options import add_config_arguments, config_from_args


def add_arguments(p: argparse.ArgumentParser) -> None:
    from forward3d.viz.render_files import RenderConfig

    p.set_defaults(_render_dests=add_config_arguments(p, RenderConfig))
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from forward3d.viz.render_files import RenderConfig, render_scene_file

    cfg = config_from_args(RenderConfig, args, args._render_dests)
    files = render_scene_file(cfg, progress=not args.no_progress)
    n = cfg.frames if cfg.cameras == "orbit" else "all"
    print(f"wrote {n} views to {cfg.out}" + (f" and {files['video']}" if "video" in files else ""))
    return 0
