"""single image (+ depth) -> 3D Gaussians (3DGS PLY, .splat, novel views, orbit video)"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)


def add_arguments(p: argparse.ArgumentParser) -> None:
    from forward3d.device import DEVICE_HELP

    p.add_argument("image", help="input image (jpg/png/webp)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--depth", help="metric depth map of the image (16-bit PNG in mm, .npy in metres, float TIFF)")
    src.add_argument("--depth-model", help="depth network: a transformers model folder/hub id, 'transformers:PATH' "
                                           "or 'unidepth[:SOURCE]' (needs the UniDepth package)")
    p.add_argument("--depth-scale", type=float, default=None,
                   help="divide 16-bit depth PNG values by this (default 1000 = millimetres)")
    cam = p.add_mutually_exclusive_group()
    cam.add_argument("--intrinsics", type=float, nargs=4, metavar=("FX", "FY", "CX", "CY"),
                     help="pinhole intrinsics of the image in pixels")
    cam.add_argument("--fov", type=float, default=None, help="horizontal field of view in degrees (default 60)")
    p.add_argument("--weights", help="Flash3D checkpoint (.pth/.safetensors/folder/hub id); without it the "
                                     "no-network unproject baseline is used")
    p.add_argument("--device", default="auto", help=DEVICE_HELP + " (default: auto)")
    p.add_argument("--out", default="forward3d-splat", help="output folder")
    p.add_argument("--orbit-frames", type=int, default=48, help="frames of the orbit video (0 = none)")
    p.add_argument("--video", choices=["mp4", "gif", "none"], default="mp4")
    p.add_argument("--max-gaussians", type=int, default=None,
                   help="unproject baseline: cap on the number of Gaussians (every n-th pixel above it; "
                        "default 1,000,000; 0 = no cap)")


def run(args: argparse.Namespace) -> int:
    from forward3d.device import resolve_device
    from forward3d.io.atomic import staged_folder
    from forward3d.models.depth import make_depth_estimator, read_image_and_depth
    from forward3d.pipelines.splat import (
        DEFAULT_MAX_GAUSSIANS,
        save_outputs,
        splat_image,
    )
    from forward3d.types import Intrinsics

    args.device = str(resolve_device(args.device))
    image, depth = read_image_and_depth(args.image, args.depth, args.depth_scale)
    h, w = image.shape[:2]
    if args.intrinsics:
        fx, fy, cx, cy = args.intrinsics
        K = np.array([[fx, 0, cx], [0, fy, cy], [0, 0, 1.0]])
    else:
        K = Intrinsics.from_fov(w, h, 60.0 if args.fov is None else args.fov).K
        if args.fov is None:
            logger.warning("no --intrinsics or --fov given: assuming a 60 degree horizontal field of view")
    depth_model = make_depth_estimator(args.depth_model, device=args.device) if args.depth_model else None
    if depth is None and depth_model is None:
        raise ValueError("splat needs depth: pass --depth DEPTH.png or --depth-model MODEL")
    model = None
    if args.weights:
        from forward3d.models.flash3d import Flash3D

        model = Flash3D.from_pretrained(args.weights, device=args.device)
    else:
        logger.warning("no --weights: using the no-network unproject baseline (one Gaussian per pixel)")
    cap = DEFAULT_MAX_GAUSSIANS if args.max_gaussians is None else (args.max_gaussians or None)
    result = splat_image(image, K, depth=depth, model=model, depth_model=depth_model, max_gaussians=cap)
    with staged_folder(args.out) as stage:  # an error leaves --out as it was, never half-written
        paths = save_outputs(result, stage, orbit_frames=args.orbit_frames, video=args.video)
        paths = {k: Path(args.out) / Path(v).relative_to(stage) for k, v in paths.items()}
        summary = {"method": result.method, "image": str(args.image), "num_gaussians": len(result.gaussians),
                   "K": result.K.tolist(), "size": [result.width, result.height], **result.info,
                   "files": {k: str(v) for k, v in paths.items()}}
        with open(stage / "summary.json", "w", encoding="utf-8") as f:
            json.dump(summary, f, indent=2)
    print(f"{result.method}: {len(result.gaussians)} Gaussians -> {paths['ply']}")
    return 0
