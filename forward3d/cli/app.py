"""``forward3d app``: the Gradio web app (extra ``[app]``; options: :class:`~forward3d.app.server.AppConfig`).
See :mod:`forward3d.app`."""

from __future__ import annotations

import argparse

from forward3d.cli.options import add_config_arguments, config_from_args

__all__ = ["add_arguments", "run"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    from forward3d.app.server import AppConfig

    p.set_defaults(_app_dests=add_config_arguments(p, AppConfig))


def run(args: argparse.Namespace) -> int:
    from forward3d.app.server import AppConfig, launch_app

    cfg = config_from_args(AppConfig, args, args._app_dests)
    server = launch_app(cfg, block=False)
    try:
        if cfg.port and server.port != cfg.port:
            print(f"forward3d app: port {cfg.port} is busy, using {server.port}", flush=True)
        print(f"forward3d app: open {server.url} in a browser (Ctrl-C to stop); session files under "
              f"{server.store.root}", flush=True)
        server.demo.block_thread()  # returns on Ctrl-C
    except KeyboardInterrupt:
        pass
    finally:
        server.close()  # stops the viewers, removes the session folders
    print("forward3d app: stopped", flush=True)
    return 0
