"""single image (+ depth) -> 3D Gaussians (3DGS PLY, .splat, novel views, orbit video)
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
    from forward3d.types import Intrinsics

    cfg = config_from_args(SplatConfig, args, args._splat_dests)
    check_output_folder(cfg.out, cfg.overwrite)  # before any work
    device = str(resolve_device(cfg.device))
    image, depth = read_image_and_depth(cfg.image, cfg.depth, cfg.depth_scale)
    h, w = image.shape[:2]
    if cfg.intrinsics:
        fx, fy, cx, cy = cfg.intrinsics
        K = np.array([[fx, 0, cx], [0, fy, cy], [0, 0, 1.0]])
    else:
        K = Intrinsics.from_fov(w, h, 60.0 if cfg.fov is None else cfg.fov).K
        if cfg.fov is None:
            logger.warning("no --intrinsics or --fov given: assuming a 60 degree horizontal field of view")
    depth_model = make_depth_estimator(cfg.depth_model, device=device) if cfg.depth_model else None
    if depth is None and depth_model is None:
        raise ValueError("splat needs depth: pass --depth DEPTH.png or --depth-model MODEL")
    model = None
    if cfg.weights:
        from forward3d.models.flash3d import Flash3D

        model = Flash3D.from_pretrained(cfg.weights, device=device)
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
