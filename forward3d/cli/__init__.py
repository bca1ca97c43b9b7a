"""The ``forward3d`` command line: one console script with subcommands.

Each subcommand lives in its own module ``forward3d/cli/<name>.py`` that defines
``add_arguments(parser, argv)`` (``argv``: the whole command line, so that e.g. ``recon --backend X``
can add X's options only) and ``run(args) -> int``. Modules are imported only when their command runs,
so ``forward3d --help`` stays fast and one broken optional dependency never breaks the others. The
options themselves come from the library's config dataclasses (:mod:`forward3d.cli.options`); the
commands call the library (:mod:`forward3d.api`, ...) and print.

Errors a user can fix (bad input, missing files, a missing optional dependency) are one line on stderr
and exit status 2, never a traceback (``-v`` shows it).
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import logging
import sys

# command name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("forward3d.cli.demo", "generate a synthetic RGB-D scene, reconstruct it and score it"),
    "recon": ("forward3d.cli.recon", "video / image folder / RGB-D dataset -> poses, point cloud, mesh"),
    "eval": ("forward3d.cli.eval", "score reconstructions, trajectories and novel views"),
    "render": ("forward3d.cli.render", "render a 3D Gaussian scene (PLY/.splat) to images and a video"),
    "splat": ("forward3d.cli.splat", "single image (+ depth) or posed views (--multiview) -> 3D Gaussians"),
    "scene": ("forward3d.cli.scene", "single image -> an extrapolated 3D scene (Invisible Stitch: outpaint, complete depth, fit)"),
    "train": ("forward3d.cli.train", "train a model"),
    "bench": ("forward3d.cli.bench", "run a back-end over a dataset under a published benchmark protocol"),
    "data": ("forward3d.cli.data", "prepare / check training datasets, list them, check mixture strings"),
    "view": ("forward3d.cli.view", "open a reconstruction / point cloud / mesh / 3D Gaussians in the browser (viser)"),
    "stream-proxy": ("forward3d.cli.stream_proxy", "re-serve one MJPEG/HTTP camera to many clients"),
    "app": ("forward3d.cli.app", "the web app (Gradio): video / images / RGB-D zip / stream -> 3D, image -> 3D Gaussians"),
}


class CLIError(Exception):
    """An error to report as one line, without a traceback."""


def _version() -> str:
    from forward3d import __version__

    return __version__


def _build_parser(command: str | None, argv: list[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="forward3d", description="Feed-forward 3D reconstruction.",
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"forward3d {_version()}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging and full tracebacks")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_) in COMMANDS.items():
        p = sub.add_parser(name, help=help_, description=help_)
        if name == command:
            add = importlib.import_module(module).add_arguments
            if len(inspect.signature(add).parameters) >= 2:
                add(p, argv)
            else:
                add(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    from tqdm.contrib.logging import logging_redirect_tqdm

    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    if command not in COMMANDS:
        command = None
    try:
        parser = _build_parser(command, argv)
    except ImportError as exc:
        print(f"forward3d {command}: missing dependency: {exc}", file=sys.stderr)
        return 2
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    if args.command is None:
        parser.print_help()
        return 1
    module = importlib.import_module(COMMANDS[args.command][0])
    try:
        with logging_redirect_tqdm():  # log lines print above progress bars, not glued to them
            return int(module.run(args) or 0)
    except (CLIError, ValueError, TypeError, FileNotFoundError, ImportError, PermissionError) as exc:
        if args.verbose:
            raise
        print(f"forward3d {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"forward3d {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
