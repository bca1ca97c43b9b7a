"""single image (+ depth), or posed views (--multiview, DepthSplat) -> 3D Gaussians (3DGS PLY, .splat, views, orbit)"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)


def add_arguments(p: argparse.ArgumentParser) -> None:
    from forward3d.device import DEVICE_HELP

    p.add_argument("image", nargs="?", help="input image (jpg/png/webp); or use --multiview")
    mv = p.add_argument_group("multi-view (DepthSplat)")
    mv.add_argument("--multiview", nargs="+", metavar="IMG",
                    help="two or more posed views of one scene -> one 3DGS scene with DepthSplat (needs --poses, "
                         "--intrinsics or --fov, and --weights: a depthsplat-gs-* checkpoint)")
    mv.add_argument("--poses", help="camera-to-world poses of the --multiview images, one per image in order: a TUM "
                                    "trajectory (timestamp tx ty tz qx qy qz qw) or a Redwood .log")
    mv.add_argument("--near", type=float, default=0.5, help="nearest depth of the plane sweep, in pose units (default 0.5)")
    mv.add_argument("--far", type=float, default=100.0, help="farthest depth of the plane sweep (default 100)")
    mv.add_argument("--short-side", type=int, default=256,
                    help="resize the views so their short side is this before the centre crop (default 256)")
    mv.add_argument("--size", type=int, nargs=2, metavar=("H", "W"),
                    help="resize to cover and centre-crop to exactly H x W (multiples of 16) instead")
    mv.add_argument("--min-opacity", type=float, default=0.0, help="drop Gaussians below this opacity (default 0)")
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
    if args.multiview:
        return run_multiview(args)
    if not args.image:
        raise ValueError("splat: give an IMAGE, or --multiview IMG1 IMG2 ... --poses ... for posed views")
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


def run_multiview(args: argparse.Namespace) -> int:
    """``--multiview``: posed views -> one DepthSplat scene."""
    from forward3d.device import resolve_device
    from forward3d.io.atomic import staged_folder
    from forward3d.io.trajectory import read_trajectory
    from forward3d.models.depth import read_image_and_depth
    from forward3d.models.depthsplat import DepthSplat
    from forward3d.pipelines.depthsplat import save_multiview_outputs, splat_multiview
    from forward3d.types import Intrinsics

    if args.image:
        raise ValueError("splat: give either IMAGE or --multiview, not both")
    if len(args.multiview) < 2:
        raise ValueError(f"splat --multiview: needs at least 2 images, found {len(args.multiview)}")
    if not args.poses:
        raise ValueError("splat --multiview: --poses POSES.txt (TUM) or POSES.log (Redwood) is required")
    if not args.weights:
        raise ValueError("splat --multiview: --weights is required (a depthsplat-gs-* checkpoint, .pth/.safetensors/"
                         "folder/hub id)")
    _, c2w = read_trajectory(args.poses)
    if len(c2w) != len(args.multiview):
        raise ValueError(f"{args.poses}: {len(c2w)} poses for {len(args.multiview)} --multiview images")
    images = [read_image_and_depth(p, None, None)[0] for p in args.multiview]
    h, w = images[0].shape[:2]
    if args.intrinsics:
        fx, fy, cx, cy = args.intrinsics
        K = np.array([[fx, 0, cx], [0, fy, cy], [0, 0, 1.0]])
    else:
        K = Intrinsics.from_fov(w, h, 60.0 if args.fov is None else args.fov).K
        if args.fov is None:
            logger.warning("no --intrinsics or --fov given: assuming a 60 degree horizontal field of view")
    device = str(resolve_device(args.device))
    model = DepthSplat.from_pretrained(args.weights, map_location=device)
    result = splat_multiview(model, images, K, c2w, near=args.near, far=args.far, short_side=args.short_side,
                             size=tuple(args.size) if args.size else None, min_opacity=args.min_opacity,
                             device=device)
    with staged_folder(args.out) as stage:
        paths = save_multiview_outputs(result, stage, orbit_frames=args.orbit_frames, video=args.video)
        paths = {k: Path(args.out) / Path(v).relative_to(stage) for k, v in paths.items()}
        summary = {"method": "depthsplat", "images": [str(p) for p in args.multiview], "poses": str(args.poses),
                   "weights": str(args.weights), "K": result.K.tolist(), **result.info,
                   "files": {k: str(v) for k, v in paths.items()}}
        with open(stage / "summary.json", "w", encoding="utf-8") as f:
            json.dump(summary, f, indent=2)
    print(f"depthsplat: {len(result.gaussians)} Gaussians from {len(images)} views -> {paths['ply']}")
    return 0
