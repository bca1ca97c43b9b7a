"""single image (+ depth), or posed views (--multiview, DepthSplat) -> 3D Gaussians (3DGS PLY, .splat, views, orbit)
(options: :class:`~forward3d.pipelines.splat.SplatConfig`)"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np

from forward3d.cli.options import add_config_arguments, config_from_args

logger = logging.getLogger(__name__)


def add_arguments(p: argparse.ArgumentParser) -> None:
    from forward3d.pipelines.splat import SplatConfig

    p.set_defaults(_splat_dests=add_config_arguments(p, SplatConfig))
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    from forward3d.device import resolve_device
    from forward3d.io.atomic import check_output_folder, staged_folder
    from forward3d.models.depth import make_depth_estimator, read_image_and_depth
    from forward3d.pipelines.splat import SplatConfig, save_outputs, splat_image

    cfg = config_from_args(SplatConfig, args, args._splat_dests)
    check_output_folder(cfg.out, cfg.overwrite)  # before any work
    if cfg.multiview:
        return run_multiview(cfg, progress=not args.no_progress)
    if not cfg.image:
        raise ValueError("splat: give an IMAGE, or --multiview IMG1 IMG2 ... --poses ... for posed views")
    device = str(resolve_device(cfg.device))
    image, depth = read_image_and_depth(cfg.image, cfg.depth, cfg.depth_scale)
    h, w = image.shape[:2]
    K = _camera_K(cfg, w, h)
    depth_model = make_depth_estimator(cfg.depth_model, device=device) if cfg.depth_model else None
    if depth is None and depth_model is None:
        raise ValueError("splat needs depth: pass --depth DEPTH.png or --depth-model MODEL")
    model = None
    if cfg.weights:
        from forward3d.models.flash3d import Flash3D

        model = Flash3D.from_pretrained(cfg.weights, device=device, dtype=cfg.dtype)
    else:
        logger.warning("no --weights: using the no-network unproject baseline (one Gaussian per pixel)")
    result = splat_image(image, K, depth=depth, model=model, depth_model=depth_model,
                         max_gaussians=cfg.max_gaussians or None)
    with staged_folder(cfg.out, cfg.overwrite) as stage:  # an error leaves --out as it was, never half-written
        paths = save_outputs(result, stage, orbit_frames=cfg.orbit_frames, video=cfg.video, max_side=cfg.view_size,
                             orbit_size=cfg.orbit_size, fps=cfg.fps, background=cfg.background,
                             progress=not args.no_progress)
        paths = {k: Path(cfg.out) / Path(v).relative_to(stage) for k, v in paths.items()}
        summary = {"method": result.method, "image": str(cfg.image), "num_gaussians": len(result.gaussians),
                   "K": result.K.tolist(), "size": [result.width, result.height], **result.info,
                   "files": {k: str(v) for k, v in paths.items()}}
        with open(stage / "summary.json", "w", encoding="utf-8") as f:
            json.dump(summary, f, indent=2)
    print(f"{result.method}: {len(result.gaussians)} Gaussians -> {paths['ply']}")
    return 0


def _camera_K(cfg, w: int, h: int) -> np.ndarray:
    from forward3d.types import Intrinsics

    if cfg.intrinsics:
        fx, fy, cx, cy = cfg.intrinsics
        return np.array([[fx, 0, cx], [0, fy, cy], [0, 0, 1.0]])
    if cfg.fov is None:
        logger.warning("no --intrinsics or --fov given: assuming a 60 degree horizontal field of view")
    return Intrinsics.from_fov(w, h, 60.0 if cfg.fov is None else cfg.fov).K


def run_multiview(cfg, progress: bool = True) -> int:
    """``--multiview``: posed views -> one DepthSplat scene."""
    from forward3d.device import resolve_device
    from forward3d.io.atomic import staged_folder
    from forward3d.io.trajectory import read_trajectory
    from forward3d.models.depth import read_image_and_depth
    from forward3d.models.depthsplat import DepthSplat
    from forward3d.pipelines.depthsplat import save_multiview_outputs, splat_multiview

    _, c2w = read_trajectory(cfg.poses)
    if len(c2w) != len(cfg.multiview):
        raise ValueError(f"{cfg.poses}: {len(c2w)} poses for {len(cfg.multiview)} --multiview images")
    images = [read_image_and_depth(p, None, None)[0] for p in cfg.multiview]
    h, w = images[0].shape[:2]
    K = _camera_K(cfg, w, h)
    device = str(resolve_device(cfg.device))
    model = DepthSplat.from_pretrained(cfg.weights, map_location=device)
    result = splat_multiview(model, images, K, c2w, near=cfg.near, far=cfg.far, short_side=cfg.short_side,
                             size=tuple(cfg.crop) if cfg.crop else None, min_opacity=cfg.min_opacity,
                             device=device)
    with staged_folder(cfg.out, cfg.overwrite) as stage:
        paths = save_multiview_outputs(result, stage, orbit_frames=cfg.orbit_frames, video=cfg.video,
                                       orbit_size=cfg.orbit_size, fps=cfg.fps, background=cfg.background,
                                       progress=progress)
        paths = {k: Path(cfg.out) / Path(v).relative_to(stage) for k, v in paths.items()}
        summary = {"method": "depthsplat", "images": [str(p) for p in cfg.multiview], "poses": str(cfg.poses),
                   "weights": str(cfg.weights), "K": result.K.tolist(), **result.info,
                   "files": {k: str(v) for k, v in paths.items()}}
        with open(stage / "summary.json", "w", encoding="utf-8") as f:
            json.dump(summary, f, indent=2)
    print(f"depthsplat: {len(result.gaussians)} Gaussians from {len(images)} views -> {paths['ply']}")
    return 0
