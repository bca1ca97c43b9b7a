"""``forward3d recon INPUT --out DIR``: any input of ``open_frames`` -> poses, point cloud, mesh.

Backends come from the pipeline registry (:mod:`forward3d.pipelines`). For ``--backend NAME`` the
command looks for CLI hooks, in this order:

1. a module ``forward3d.cli.recon_<NAME>`` with ``add_cli_arguments(parser, common=False)`` and
   ``run_cli(args) -> int`` (the backend runs its own loop, e.g. ``slam3r``);
2. attributes of the registered factory: ``add_cli_arguments(parser)`` and ``from_cli_args(args)``
   (``rgbd``); the generic loop below then runs the pipeline and writes the outputs.

Outputs (generic loop): ``point_cloud.ply``, ``mesh.ply`` + ``mesh.glb``, ``trajectory_tum.txt``,
``colmap/``, ``transforms.json``, ``reconstruction.npz`` (+ ``.json``), ``previews/*.png`` and, when
the input has ground-truth poses, ``metrics.json`` (ATE/RPE). Everything is written into a staging
folder first and moved into ``--out`` only when the run succeeded (no half-written outputs).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np

from forward3d.io.jsonio import write_json
from forward3d.types import Frame, Reconstruction

__all__ = ["add_arguments", "run", "parse_size", "staged_output", "GTRecorder", "trajectory_metrics",
           "write_json", "reconstruct", "write_outputs", "DEFAULT_BACKEND"]

log = logging.getLogger(__name__)

DEFAULT_BACKEND = "rgbd"


# --------------------------------------------------------------------------------------------------
# helpers shared with forward3d demo
# --------------------------------------------------------------------------------------------------


def parse_size(text: str | None) -> tuple[int, int] | int | None:
    """``"640x480"`` -> ``(640, 480)``; ``"512"`` -> 512 (long side); None -> None."""
    if text is None:
        return None
    t = str(text).lower().strip()
    try:
        if "x" in t:
            w, h = t.split("x", 1)
            size: tuple[int, int] | int = (int(w), int(h))
            ok = min(size) > 0
        else:
            size = int(t)
            ok = size > 0
    except ValueError:
        ok = False
    if not ok:
        raise ValueError(f"--size: expected WxH (e.g. 640x480) or a long side in pixels, found {text!r}")
    return size


@contextlib.contextmanager
def staged_output(out: str | Path) -> Iterator[Path]:
    """Yield an empty staging folder beside ``out``; on success its entries replace those in ``out``.

    On an error the staging folder is removed and ``out`` is left as it was.
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out}: expected a folder, found a file")
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
    try:
        yield stage
        out.mkdir(exist_ok=True)
        for entry in sorted(stage.iterdir()):
            target = out / entry.name
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
            entry.replace(target)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


class GTRecorder:
    """Passes frames through, remembering ground-truth ``c2w`` (None where missing) for the metrics."""

    def __init__(self, frames: Iterable[Frame]) -> None:
        self.frames = frames
        self.gt: list[np.ndarray | None] = []

    def __len__(self) -> int:
        return len(self.frames)  # type: ignore[arg-type]

    @property
    def dropped(self) -> bool:
        return bool(getattr(self.frames, "dropped", False))

    def __iter__(self) -> Iterator[Frame]:
        for f in self.frames:
            ok = f.c2w is not None and np.isfinite(f.c2w).all()
            self.gt.append(np.asarray(f.c2w, np.float64) if ok else None)
            yield f


def trajectory_metrics(c2w: np.ndarray, gt: list[np.ndarray | None], metric_scale: bool = True) -> dict[str, Any] | None:
    """ATE (SE(3) and Sim(3) alignment) and RPE over the frames that have a ground-truth pose.

    Returns None with fewer than 3 such frames. ``alignment`` (``[4, 4]``, prediction world -> GT
    world, of the SE(3) fit when ``metric_scale`` else Sim(3)) is included for aligning geometry.
    """
    from forward3d.eval import ate, rpe

    idx = [i for i, g in enumerate(gt[: len(c2w)]) if g is not None]
    if len(idx) < 3:
        return None
    pred, ref = np.asarray(c2w)[idx], np.stack([gt[i] for i in idx])  # type: ignore[misc]
    keys = ("rmse", "mean", "median", "max", "rot_rmse_deg", "scale")
    out: dict[str, Any] = {"num_frames_with_gt": len(idx)}
    primary = "se3" if metric_scale else "sim3"
    for align in ("se3", "sim3"):
        r = ate(pred, ref, align=align)
        out[f"ate_{align}"] = {k: r[k] for k in keys}
        if align == primary:
            out["alignment"] = r["alignment"]
            out["aligned_c2w"] = r["aligned_c2w"]
    contiguous = idx == list(range(idx[0], idx[0] + len(idx)))
    if contiguous and len(idx) > 1:
        r = rpe(pred, ref, 1)
        out["rpe"] = {k: r[k] for k in ("trans_rmse", "trans_mean", "rot_rmse_deg", "rot_mean_deg")}
    out["gt_c2w"] = ref
    return out


def _preview_up(recon: Reconstruction) -> np.ndarray:
    """World up guess: minus the first camera's y axis (OpenCV y points down in the image)."""
    return -recon.c2w[0][:3, 1]


def write_outputs(recon: Reconstruction, stage: Path, traj: dict[str, Any] | None = None,
                  extra_metrics: dict[str, Any] | None = None, previews: bool = True,
                  up: np.ndarray | None = None) -> dict[str, Path]:
    """Export ``recon`` (standard formats), previews and metrics.json (when there is something to score)."""
    from forward3d.io.export import export_reconstruction

    written = export_reconstruction(recon, stage)
    if previews:
        from forward3d.viz import write_previews

        geometry = recon.mesh if recon.mesh is not None and len(recon.mesh.faces) else recon.points
        if traj is not None:
            est, gt = traj["aligned_c2w"], traj["gt_c2w"]
            A = traj["alignment"]
            if geometry is not None:
                geometry = _transform_geometry(geometry, A)
            up = up if up is not None else -gt[0][:3, 1]
        else:
            est, gt = recon.c2w, None
            up = up if up is not None else _preview_up(recon)
        if geometry is not None and len(getattr(geometry, "faces", getattr(geometry, "points", []))) == 0:
            geometry = None
        paths = write_previews(stage / "previews", geometry, est, gt, up=up,
                               title=f"{recon.metadata.get('backend', '')} trajectory (red) vs ground truth (blue)"
                               if gt is not None else "estimated trajectory")
        if paths:
            written["previews"] = stage / "previews"
    if traj is not None or extra_metrics:
        metrics: dict[str, Any] = {"backend": recon.metadata.get("backend"), "num_frames": len(recon)}
        if traj is not None:
            metrics.update({k: v for k, v in traj.items() if k not in ("aligned_c2w", "gt_c2w")})
        metrics.update(extra_metrics or {})
        timings = recon.metadata.get("timings")
        if timings:
            metrics["timings"] = timings
        metrics["tracking_failures"] = len(recon.metadata.get("tracking_failures", []))
        written["metrics"] = write_json(stage / "metrics.json", metrics)
    return written


def _transform_geometry(geometry, A: np.ndarray):
    """Apply a Sim(3) ``A`` ``[4, 4]`` to a PointCloud or Mesh (normals rotated)."""
    from forward3d.types import Mesh, PointCloud

    A = np.asarray(A, np.float64)
    R = A[:3, :3] / np.cbrt(np.linalg.det(A[:3, :3]))
    if isinstance(geometry, Mesh):
        v = (geometry.vertices @ A[:3, :3].T + A[:3, 3]).astype(np.float32)
        n = None if geometry.vertex_normals is None else (geometry.vertex_normals @ R.T).astype(np.float32)
        return Mesh(v, geometry.faces, geometry.vertex_colors, n)
    p = (geometry.points @ A[:3, :3].T + A[:3, 3]).astype(np.float32)
    n = None if geometry.normals is None else (geometry.normals @ R.T).astype(np.float32)
    return PointCloud(p, geometry.colors, n)


def reconstruct(pipeline: Any, frames: Iterable[Frame], num_frames: int | None = None) -> Reconstruction:
    """Run any registered pipeline (``run(frames, num_frames=...)`` or ``reconstruct(frames)``)."""
    if hasattr(pipeline, "run"):
        return pipeline.run(frames, num_frames=num_frames)
    if hasattr(pipeline, "reconstruct"):
        return pipeline.reconstruct(frames)
    raise TypeError(f"pipeline {type(pipeline).__name__}: expected a run() or reconstruct() method")


# --------------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------------


def _cli_module(name: str):
    """``forward3d.cli.recon_<name>`` if it exists, else None."""
    try:
        return importlib.import_module(f"forward3d.cli.recon_{name}")
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.endswith(f"recon_{name}"):
            return None
        raise


class _LenientGroup:
    """An argument group whose ``add_argument`` skips options another backend defined already."""

    def __init__(self, group) -> None:
        self._group = group

    def add_argument(self, *flags, **kwargs):
        try:
            return self._group.add_argument(*flags, **kwargs)
        except argparse.ArgumentError:
            log.debug("option %s already defined by another backend", flags)
            return None

    def __getattr__(self, name):
        return getattr(self._group, name)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from forward3d.pipelines import available_pipelines, get_pipeline_factory

    parser.add_argument("input", help="RGB-D dataset folder (TUM, Redwood, ScanNet, Replica, 7-Scenes), "
                                      "image folder, video or stream URL")
    parser.add_argument("--out", "-o", required=True, metavar="DIR", help="output folder")
    backends = available_pipelines()
    parser.add_argument("--backend", default=DEFAULT_BACKEND, metavar="NAME",
                        help=f"reconstruction backend: {', '.join(backends)} (default {DEFAULT_BACKEND})")
    parser.add_argument("--layout", default="auto", help="input layout (default: detected)")
    parser.add_argument("--depth-scale", type=float, default=None, metavar="S",
                        help="raw depth units per metre (default: the layout's, e.g. TUM 5000, others 1000)")
    parser.add_argument("--intrinsics", type=float, nargs=4, default=None, metavar=("FX", "FY", "CX", "CY"),
                        help="pinhole intrinsics of the native images in pixels (pixel centres at +0.5)")
    parser.add_argument("--stride", type=int, default=1, metavar="N", help="use every N-th frame")
    parser.add_argument("--max-frames", type=int, default=None, metavar="N", help="use at most N frames")
    parser.add_argument("--size", default=None, metavar="WxH", help="working resolution, WxH or the long side")
    parser.add_argument("--device", default=None, help="cpu | cuda | cuda:N (default: cpu for rgbd)")
    parser.add_argument("--no-previews", action="store_true", help="do not render previews/*.png")
    for name in backends:
        try:
            module = _cli_module(name)
            if module is not None and hasattr(module, "add_cli_arguments"):
                module.add_cli_arguments(parser, common=False)  # makes its own group
                continue
            factory = get_pipeline_factory(name)
            if hasattr(factory, "add_cli_arguments"):
                factory.add_cli_arguments(_LenientGroup(parser.add_argument_group(f"{name} backend (--backend {name})")))
        except ImportError as exc:  # an optional backend whose dependencies are missing
            log.debug("backend %s: no CLI options (%s)", name, exc)


def run(args: argparse.Namespace) -> int:
    from forward3d.io.sources import open_frames
    from forward3d.pipelines import available_pipelines, get_pipeline_factory

    backend = args.backend
    if backend not in available_pipelines():
        raise ValueError(f"--backend: expected one of {', '.join(available_pipelines())}, found {backend!r}")
    module = _cli_module(backend)
    if module is not None and hasattr(module, "run_cli"):
        return int(module.run_cli(args) or 0)

    size = parse_size(args.size)
    src = open_frames(args.input, stride=args.stride, max_frames=args.max_frames, size=size,
                      depth_scale=args.depth_scale, intrinsics=args.intrinsics, layout=args.layout)
    if backend == "rgbd" and not src.has_depth:
        raise ValueError(f"{args.input}: the rgbd backend needs depth, and this {src.layout} input has none; "
                         "RGB-only input (videos, image folders) needs the 'slam3r' backend: "
                         "forward3d recon INPUT --backend slam3r")
    if getattr(args, "use_gt_poses", False) and not src.has_gt_poses:
        raise ValueError(f"{args.input}: --use-gt-poses needs ground-truth poses, and this {src.layout} input has none")
    factory = get_pipeline_factory(backend)
    pipeline = factory.from_cli_args(args) if hasattr(factory, "from_cli_args") else factory()
    try:
        num = len(src)
    except TypeError:
        num = None
    t0 = time.perf_counter()
    frames = GTRecorder(src)
    recon = reconstruct(pipeline, frames, num)
    metric = recon.metadata.get("metric_scale", True) is not False
    traj = trajectory_metrics(recon.c2w, frames.gt, metric_scale=metric) if src.has_gt_poses else None
    with staged_output(args.out) as stage:
        written = write_outputs(recon, stage, traj, previews=not args.no_previews)
    out = Path(args.out)
    dt = time.perf_counter() - t0
    print(f"forward3d recon: {len(recon)} frames with {backend} in {dt:.1f} s "
          f"({len(recon) / max(dt, 1e-9):.1f} frames/s) -> {out}")
    if recon.points is not None:
        print(f"  points {len(recon.points)}" + (f", mesh {len(recon.mesh.faces)} triangles" if recon.mesh is not None else ""))
    if traj is not None:
        key = "ate_se3" if metric else "ate_sim3"
        print(f"  ATE ({key[4:]}) RMSE {traj[key]['rmse'] * 100:.2f} cm over {traj['num_frames_with_gt']} frames")
    fails = recon.metadata.get("tracking_failures") or []
    if fails:
        print(f"  tracking failed on {len(fails)} frames (see reconstruction.json)")
    print("  wrote " + ", ".join(sorted(p.name for p in written.values())))
    return 0
