"""``forward3d recon INPUT --backend slam3r``: the SLAM3R options and the run.

``forward3d.cli.recon`` calls :func:`add_cli_arguments(parser, common=False) <add_cli_arguments>` (its
own options ``--out``, ``--device``, ``--intrinsics``, ``--stride``, ``--size``... are used as they
are) and, for ``--backend slam3r``, :func:`run_cli`.
It also runs stand-alone: ``python -m forward3d.cli.recon_slam3r INPUT --i2p W --l2w W --out DIR``.

Outputs in ``--out``: ``point_cloud.ply``, ``trajectory_tum.txt``, ``colmap/``, ``transforms.json``,
``reconstruction.npz`` (+ ``.json``), and ``metrics.json`` when the input has ground-truth poses.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from typing import Any

logger = logging.getLogger(__name__)

__all__ = ["add_cli_arguments", "config_from_cli_args", "from_cli_args", "run_cli", "add_arguments", "run", "main"]


def _add(group, *flags: str, **kwargs: Any) -> None:
    """``add_argument`` that leaves an option alone when the parser already defines it."""
    try:
        group.add_argument(*flags, **kwargs)
    except argparse.ArgumentError:
        pass


def add_cli_arguments(parser: argparse.ArgumentParser, common: bool = True) -> None:
    """Add the ``--backend slam3r`` options to ``parser``.

    ``common``: also add the options ``forward3d recon`` defines for every backend (``--out``,
    ``--device``, ``--intrinsics``, ``--stride``, ``--max-frames``, ``--no-previews``); an option the
    parser already has is always left alone.
    """
    g = parser.add_argument_group("slam3r (--backend slam3r)")
    _add(g, "--i2p", default="siyan824/slam3r_i2p", metavar="WEIGHTS",
         help="I2P weights: local folder/file or hub id (default: %(default)s)")
    _add(g, "--l2w", default="siyan824/slam3r_l2w", metavar="WEIGHTS",
         help="L2W weights: local folder/file or hub id (default: %(default)s)")
    _add(g, "--i2p-config", default=None, metavar="JSON", help="config.json of the I2P weights (if not beside them)")
    _add(g, "--l2w-config", default=None, metavar="JSON", help="config.json of the L2W weights (if not beside them)")
    _add(g, "--online", action="store_true", help="online mode: frames one at a time, past frames only, bounded memory")
    _add(g, "--keyframe-stride", type=int, default=-1, metavar="N", help="keyframe stride; -1 = adaptive (default)")
    _add(g, "--buffer-strategy", choices=("reservoir", "fifo"), default="reservoir", help="buffering set policy")
    _add(g, "--buffer-size", type=int, default=100, metavar="N", help="buffering set capacity (<= 0: unbounded)")
    _add(g, "--win-r", type=int, default=3, metavar="N", help="I2P window radius (default 3)")
    _add(g, "--num-scene-frame", type=int, default=10, metavar="N", help="scene frames retrieved per L2W call")
    _add(g, "--max-num-register", type=int, default=10, metavar="N", help="frames registered per L2W call at most")
    _add(g, "--initial-winsize", type=int, default=5, metavar="N", help="initial window size")
    _add(g, "--update-buffer-intv", type=int, default=1, metavar="N", help="buffer update interval (strides)")
    _add(g, "--retrieve-freq", type=int, default=1, metavar="N", help="online: retrieve scene frames every N frames")
    _add(g, "--conf-thres-i2p", type=float, default=1.5, metavar="X", help="I2P confidence threshold")
    _add(g, "--conf-thres-l2w", type=float, default=12.0, metavar="X", help="confidence threshold of exported points")
    _add(g, "--num-points-save", type=int, default=2_000_000, metavar="N", help="points in point_cloud.ply")
    _add(g, "--depth-fit", choices=("scale", "scale_shift"), default="scale", help="RGB-D depth correction fit")
    _add(g, "--no-depth-correction", action="store_true", help="ignore sensor depth (relative scale)")
    _add(g, "--spool-dir", default=None, metavar="DIR", help="online: keep per-frame results here")
    _add(g, "--seed", type=int, default=42, help="random seed (default 42)")
    _add(g, "--dtype", choices=("fp32", "bf16", "fp16"), default="fp32", help="compute dtype of the networks")
    _add(g, "--use-dataset-intrinsics", action="store_true",
         help="use the intrinsics the input provides (datasets, --intrinsics) instead of estimating them")
    _add(g, "--no-progress", action="store_true", help="no progress bars")
    if common:
        _add(g, "--out", "-o", default=None, metavar="DIR", help="output folder")
        _add(g, "--device", default=None, help="cpu | cuda | cuda:N (default: cuda if available)")
        _add(g, "--intrinsics", type=float, nargs=4, default=None, metavar=("FX", "FY", "CX", "CY"),
             help="known intrinsics of the input images (pixels); default: estimated per frame")
        _add(g, "--stride", type=int, default=1, metavar="N", help="read every N-th input frame")
        _add(g, "--max-frames", type=int, default=None, metavar="N", help="read at most N frames")
        _add(g, "--no-previews", action="store_true", help="do not render previews/*.png")


def config_from_cli_args(args: argparse.Namespace):
    """:class:`~forward3d.pipelines.slam3r.SLAM3RConfig` from parsed arguments."""
    from forward3d.pipelines.slam3r import SLAM3RConfig

    get = lambda name, default=None: getattr(args, name, default)  # noqa: E731
    # --intrinsics go to the frame source (scaled with --size) and are then used as given
    use_frame_K = bool(get("use_dataset_intrinsics", False) or get("intrinsics") is not None)
    return SLAM3RConfig(
        keyframe_stride=get("keyframe_stride", -1), initial_winsize=get("initial_winsize", 5), win_r=get("win_r", 3),
        conf_thres_i2p=get("conf_thres_i2p", 1.5), num_scene_frame=get("num_scene_frame", 10),
        max_num_register=get("max_num_register", 10), conf_thres_l2w=get("conf_thres_l2w", 12.0),
        num_points_save=get("num_points_save", 2_000_000), update_buffer_intv=get("update_buffer_intv", 1),
        buffer_size=get("buffer_size", 100), buffer_strategy=get("buffer_strategy", "reservoir"),
        seed=get("seed", 42), retrieve_freq=get("retrieve_freq", 1), online=bool(get("online", False)),
        depth_correction=not get("no_depth_correction", False), depth_fit=get("depth_fit", "scale"),
        use_frame_intrinsics=use_frame_K,
        progress=not get("no_progress", False), spool_dir=get("spool_dir"),
    )


_DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16", None: "float32"}


def from_cli_args(args: argparse.Namespace):
    """A :class:`~forward3d.pipelines.slam3r.SLAM3RPipeline` with the networks of ``--i2p``/``--l2w``."""
    import torch

    from forward3d.pipelines.slam3r import SLAM3RPipeline

    device = getattr(args, "device", None) or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = _DTYPES.get(getattr(args, "dtype", None), getattr(args, "dtype", "float32"))
    kwargs = {}
    if getattr(args, "i2p_config", None):
        kwargs["i2p_config"] = args.i2p_config
    if getattr(args, "l2w_config", None):
        kwargs["l2w_config"] = args.l2w_config
    return SLAM3RPipeline.from_pretrained(args.i2p, args.l2w, config=config_from_cli_args(args), device=device,
                                          dtype=dtype, **kwargs)


def _open(args: argparse.Namespace):
    from forward3d.io.sources import open_frames

    size = getattr(args, "size", None)
    if isinstance(size, str):
        from forward3d.cli.recon import parse_size

        size = parse_size(size)
    return open_frames(args.input, stride=getattr(args, "stride", 1) or 1, max_frames=getattr(args, "max_frames", None),
                       size=size, depth_scale=getattr(args, "depth_scale", None),
                       intrinsics=getattr(args, "intrinsics", None), layout=getattr(args, "layout", "auto") or "auto")


def run_cli(args: argparse.Namespace) -> int:
    """Open ``args.input``, reconstruct with SLAM3R, write every output into ``args.out``.

    Uses the generic helpers of :mod:`forward3d.cli.recon` (staged output folder, ground-truth
    recorder, trajectory metrics, previews) so that every backend writes the same files.
    """
    from forward3d.cli.recon import GTRecorder, staged_output, trajectory_metrics, write_outputs

    if getattr(args, "input", None) is None:
        raise ValueError("forward3d recon --backend slam3r: expected an INPUT path or URL, found none")
    if not getattr(args, "out", None):
        raise ValueError("forward3d recon --backend slam3r: expected --out DIR, found none")
    t0 = time.perf_counter()
    pipe = from_cli_args(args)
    src = _open(args)
    frames = GTRecorder(src)
    recon = pipe.reconstruct(frames)
    metric = bool(recon.metadata.get("metric_scale"))
    traj = trajectory_metrics(recon.c2w, frames.gt, metric_scale=metric) if getattr(src, "has_gt_poses", False) else None
    with staged_output(args.out) as stage:
        write_outputs(recon, stage, traj, previews=not getattr(args, "no_previews", False))
    md = recon.metadata
    dt = time.perf_counter() - t0
    print(f"forward3d recon: {len(recon)} frames with slam3r ({md.get('mode')}, keyframe stride "
          f"{md.get('keyframe_stride')}, {'metric' if metric else 'relative'} scale) in {dt:.1f} s "
          f"({len(recon) / max(dt, 1e-9):.1f} frames/s) -> {args.out}")
    if recon.points is not None:
        print(f"  points {len(recon.points)}")
    if traj is not None:
        key = "ate_se3" if metric else "ate_sim3"
        print(f"  ATE ({key[4:]}) RMSE {traj[key]['rmse'] * 100:.2f} cm over {traj['num_frames_with_gt']} frames")
    if md.get("stream_dropped"):
        logger.warning("the input stream dropped: saved the reconstruction of the %d frames received", len(recon))
    return 0


# the cli/__init__.py module interface, for stand-alone use
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", help="image folder, video, RGB-D dataset folder or stream URL")
    add_cli_arguments(parser)


def run(args: argparse.Namespace) -> int:
    return run_cli(args)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="forward3d-recon-slam3r", description="SLAM3R reconstruction")
    add_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        return run(args)
    except (ValueError, FileNotFoundError, ImportError) as exc:
        print(f"forward3d recon: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
