"""``forward3d recon INPUT --out DIR [--backend NAME]``: any input of ``open_frames`` -> poses, point cloud, mesh.

The options come from :class:`forward3d.api.SourceConfig` (how the input is read) and from the chosen
back-end's config dataclass (``forward3d recon --backend NAME --help`` lists NAME's options); the run is
:func:`forward3d.api.reconstruct`. Outputs: ``point_cloud.ply``, ``mesh.ply`` + ``mesh.glb`` (when the
back-end makes a mesh), ``trajectory_tum.txt``, ``colmap/``, ``transforms.json``, ``reconstruction.npz``
(+ ``.json``), ``previews/*.png`` and, when the input has ground-truth poses, ``metrics.json``; with
``--gaussians depthsplat`` also ``gaussians.ply`` + ``gaussians.json``
(:mod:`forward3d.pipelines.scene_gaussians`).

``--view`` (:class:`forward3d.viz.live.LiveViewConfig`) shows the run live in the browser (a streaming
back-end's updates through :class:`forward3d.viz.live.LiveViewer`), then serves the result until Ctrl-C.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from forward3d.cli.options import add_config_arguments, config_from_args
from forward3d.pipelines import DEFAULT_BACKEND

__all__ = ["add_arguments", "run", "DEFAULT_BACKEND", "selected_backend"]

log = logging.getLogger(__name__)


def selected_backend(argv: list[str] | None, default: str = DEFAULT_BACKEND) -> str:
    """The value of ``--backend`` in ``argv`` (``--backend X`` or ``--backend=X``), else ``default``."""
    argv = argv or []
    for i, a in enumerate(argv):
        if a == "--backend" and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith("--backend="):
            return a.split("=", 1)[1]
    return default


def _backend_listing() -> str:
    from forward3d.pipelines import available_backends, get_backend_class

    lines = []
    for name in available_backends():
        try:
            lines.append("  " + get_backend_class(name).describe())
        except (ImportError, TypeError, ValueError) as exc:
            lines.append(f"  {name}: not available here ({exc})")
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser, argv: list[str] | None = None) -> None:
    from forward3d.api import SourceConfig
    from forward3d.pipelines import available_backends, get_backend_class

    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    backend = selected_backend(argv)
    parser.epilog = ("back-ends (forward3d recon --backend NAME --help shows NAME's options):\n" + _backend_listing())
    parser.add_argument("input", help="RGB-D dataset folder (TUM, Redwood, ScanNet, Replica, 7-Scenes), "
                                      "image folder, video or stream URL")
    parser.add_argument("--out", "-o", default="forward3d-recon", metavar="DIR",
                        help="output folder, replaced as a whole on success (default: %(default)s)")
    parser.add_argument("--backend", default=None, metavar="NAME",
                        help=f"reconstruction back-end: {', '.join(available_backends())} (default: chosen from the "
                             f"input: {DEFAULT_BACKEND} for input with depth, the weight-free sfm for RGB-only "
                             f"input; without --backend the options listed are {DEFAULT_BACKEND}'s)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace --out even when it holds files forward3d did not write")
    parser.add_argument("--no-previews", action="store_true", help="do not render previews/*.png")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    dests = add_config_arguments(parser, SourceConfig, prefix="source_", title="input")
    parser.set_defaults(_source_dests=dests)
    from forward3d.viz.live import LiveViewConfig

    dests = add_config_arguments(parser, LiveViewConfig, prefix="view_", title="live view (forward3d[viewer])")
    parser.set_defaults(_view_dests=dests)
    parser.add_argument("--rerun", default=None, metavar="FILE.rrd",
                        help="also write the run as a rerun recording (frames, depth, cameras, points on a "
                             "timeline; forward3d[rerun]; open it with 'rerun FILE.rrd')")
    from forward3d.pipelines.scene_gaussians import SceneGaussiansConfig

    dests = add_config_arguments(parser, SceneGaussiansConfig, prefix="gaussians_", flag_prefix="gaussians-",
                                 title="3D Gaussians of the scene (--gaussians depthsplat)")
    parser.set_defaults(_gaussians_dests=dests)
    try:
        cls = get_backend_class(backend)
    except (ValueError, ImportError, TypeError) as exc:  # reported by run() with the same message
        parser.set_defaults(_backend_error=str(exc))
        return
    dests = add_config_arguments(parser, cls.config_cls, prefix="backend_",
                                 title=f"{backend} back-end ({cls.capabilities.summary()})")
    parser.set_defaults(_backend_dests=dests, _backend_name=backend)


def _summary(run: Any) -> list[str]:
    recon = run.recon
    n = len(recon)
    fps = n / max(run.seconds, 1e-9)
    extra = []
    mode = recon.metadata.get("mode")
    if mode:
        extra.append(str(mode))
    if "keyframe_stride" in recon.metadata:
        extra.append(f"keyframe stride {recon.metadata['keyframe_stride']}")
    extra.append("metric" if recon.metric_scale else "relative scale")
    lines = [f"forward3d recon: {n} frames with {recon.backend} ({', '.join(extra)}) in {run.seconds:.1f} s "
             f"({fps:.1f} frames/s) -> {run.out}"]
    if recon.interrupted:
        lines.append("  PARTIAL result: the run was interrupted or the stream dropped (marked in metrics/bundle)")
    if recon.points is not None:
        lines.append(f"  points {len(recon.points)}"
                     + (f", mesh {len(recon.mesh.faces)} triangles" if recon.mesh is not None else ""))
    scene = getattr(run, "scene_gaussians", None)
    if scene is not None:
        info = scene.info
        psnr = f", held-out PSNR {info['heldout_psnr_mean']:.2f} dB" if "heldout_psnr_mean" in info else ""
        lines.append(f"  gaussians {info['num_gaussians']} ({info['predictor']}, {info['windows']} windows of "
                     f"{info['context_views']} context views{psnr})")
    tm = recon.trajectory_metrics
    if tm is not None:
        lines.append(f"  ATE ({tm.primary}) RMSE {tm.ate.rmse * 100:.2f} cm over {tm.num_frames_with_gt} frames")
    fails = recon.failures
    if fails:
        lines.append(f"  tracking failed on {len(fails)} frames (see reconstruction.json)")
    if run.files:
        lines.append("  wrote " + ", ".join(sorted(p.name for p in run.files.values())))
    return lines


def run(args: argparse.Namespace) -> int:
    from forward3d.api import SourceConfig, reconstruct

    name = args.backend or DEFAULT_BACKEND
    if getattr(args, "_backend_error", None):
        raise ValueError(f"--backend {name}: {args._backend_error}")
    if name != args._backend_name:  # pragma: no cover - argv pre-parsing and argparse disagree
        raise ValueError(f"--backend {args.backend}: give it as '--backend NAME' or '--backend=NAME'")
    from forward3d.pipelines import get_backend_class

    from forward3d.viz.live import LiveViewConfig

    source = config_from_args(SourceConfig, args, args._source_dests)
    view = config_from_args(LiveViewConfig, args, args._view_dests)
    from forward3d.pipelines.scene_gaussians import SceneGaussiansConfig

    gaussians = config_from_args(SceneGaussiansConfig, args, args._gaussians_dests)
    cls = get_backend_class(name)
    config = config_from_args(cls.config_cls, args, args._backend_dests)
    auto = args.backend is None and not view.view  # the live view streams: it keeps the default back-end
    backend: Any = "auto" if auto else cls(config)  # auto: chosen from the opened input (reconstruct logs which)
    if auto:  # options left at their defaults stay unsaid
        config = None if config == cls.config_cls() else config
    recorder = None
    if args.rerun:
        from forward3d.viz.rerun_log import RerunRecorder

        recorder = RerunRecorder(args.rerun)
    live = _open_live_view(view, cls, args.input) if view.view else None
    sinks = [s.push for s in (live, recorder) if s is not None]

    def callback(update: Any) -> None:  # every update to the live view and the recording
        for push in sinks:
            push(update)
    try:
        result = reconstruct(args.input, backend, config if auto else None, source=source,
                             out=args.out, overwrite=args.overwrite, previews=not args.no_previews,
                             progress=not args.no_progress, gaussians=gaussians,
                             callback=callback if sinks else None)
    except BaseException:
        if live is not None:
            live.stop()
        if recorder is not None:
            recorder.abort()
        raise
    if recorder is not None:
        recorder.finish(result.recon)
    for line in _summary(result):
        print(line)
    if recorder is not None:
        print(f"  rerun recording: {recorder.path} ({recorder.num_updates} frames; open it with 'rerun {recorder.path}')")
    if live is not None:
        _serve_result(live, result, view)
    return 130 if result.user_interrupted else 0  # Ctrl-C: the partial result is saved, the status says so


def _open_live_view(view: Any, cls: Any, input_path: str) -> Any:
    from forward3d.viz.live import LiveViewer

    if not cls.capabilities.streaming:
        raise ValueError(f"--view: the {cls.name} back-end does not stream its frames; run it without --view and "
                         f"open the result with 'forward3d view OUT'")
    live = LiveViewer(view, title=f"{Path(str(input_path).rstrip('/')).name or input_path} ({cls.name})")
    if view.port and live.port != view.port:
        log.warning("--view-port %d is busy, using %d", view.port, live.port)
    print(f"forward3d recon: live view at {live.url} (open it in a browser)", flush=True)
    if view.wait > 0:
        print(f"forward3d recon: waiting up to {view.wait:g} s for a browser to open it (--view-wait)", flush=True)
        try:
            opened = live.wait_for_client(view.wait)
        except BaseException:  # Ctrl-C while waiting: no run, no server left behind
            live.stop()
            raise
        if opened:
            log.info("a browser opened the live view: starting the run")
        else:
            log.warning("--view-wait: no browser opened %s within %g s; starting the run", live.url, view.wait)
    return live


def _serve_result(live: Any, result: Any, view: Any) -> None:
    metrics = {}
    tm = result.recon.trajectory_metrics
    if tm is not None:
        metrics = {f"ATE {tm.primary} RMSE (m)": tm.ate.rmse, "frames with GT": tm.num_frames_with_gt}
    live.finish(result.recon, metrics=metrics, seconds=result.seconds)
    if view.exit:
        live.stop()
        return
    print(f"forward3d recon: serving the result at {live.url} (Ctrl-C to stop)", flush=True)
    live.serve_forever()
    print("forward3d recon: viewer stopped", flush=True)
