"""``forward3d demo``: generate a synthetic RGB-D room, reconstruct it with ``rgbd``, score it
(:func:`forward3d.demo.run_demo`; the options are :class:`forward3d.demo.DemoConfig`)."""

from __future__ import annotations

import argparse

from forward3d.cli.options import add_config_arguments, config_from_args

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from forward3d.demo import DemoConfig

    dests = add_config_arguments(parser, DemoConfig)
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(_demo_dests=dests)


def run(args: argparse.Namespace) -> int:
    from forward3d.demo import DemoConfig, run_demo

    result = run_demo(config_from_args(DemoConfig, args, args._demo_dests), progress=not args.no_progress)
    width = max(len(k) for k, _ in result.rows)
    print(f"forward3d demo: synthetic room -> {result.recon.backend}")
    for k, v in result.rows:
        print(f"  {k:<{width}}  {v}")
    return 0
