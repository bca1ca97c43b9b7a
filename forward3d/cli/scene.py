"""single image -> an extrapolated 3D scene (Invisible Stitch): 3DGS PLY, generated views, orbit video
(options: :class:`~forward3d.pipelines.stitch.StitchConfig`)"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np

from forward3d.cli.options import add_config_arguments, config_from_args

logger = logging.getLogger(__name__)


def add_arguments(p: argparse.ArgumentParser) -> None:
    from forward3d.pipelines.stitch import StitchConfig

    p.set_defaults(_scene_dests=add_config_arguments(p, StitchConfig))
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    from forward3d.device import resolve_device
    from forward3d.io.atomic import check_output_folder, staged_folder
    from forward3d.models.depth import make_depth_estimator, read_image_and_depth
    from forward3d.models.depth_completion import make_depth_completer
    from forward3d.models.inpaint import make_inpainter
    from forward3d.pipelines.stitch import StitchConfig, resize_input, save_stitch_outputs, stitch_scene
    from forward3d.types import Intrinsics

    cfg = config_from_args(StitchConfig, args, args._scene_dests)
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
    image, depth, K = resize_input(image, depth, K, cfg.max_size)
    monocular = make_depth_estimator(cfg.depth_model, device=device) if cfg.depth_model else None
    if depth is None and monocular is None:
        raise ValueError("scene needs depth for the photo: pass --depth DEPTH.png or --depth-model MODEL")
    if monocular is not None and not monocular.metric and depth is None:
        raise ValueError(f"depth model '{monocular.name}' predicts relative depth: give a metric model, or "
                         "--depth to scale it")
    completer = make_depth_completer(cfg.completion, monocular, device=device, seam_width=cfg.seam_width)
    inpainter = make_inpainter(cfg.inpainter, device=device, steps=cfg.inpaint_steps,
                               size=(cfg.inpaint_size, cfg.inpaint_size), guidance=cfg.inpaint_guidance,
                               seed=cfg.seed)
    if cfg.inpainter == "telea":
        logger.info("inpainter: OpenCV Telea (weight-free; new regions continue the seam colours)")
    result = stitch_scene(image, K, depth, completer, inpainter, mode=cfg.mode, step_deg=cfg.step_deg,
                          prompt=cfg.prompt, known_alpha=cfg.known_alpha, fit_steps=cfg.fit_steps,
                          progress=not args.no_progress, device=device)
    with staged_folder(cfg.out, cfg.overwrite) as stage:  # an error leaves --out as it was
        paths = save_stitch_outputs(result, stage, orbit_frames=cfg.orbit_frames, video=cfg.video,
                                    max_side=cfg.view_size, orbit_size=cfg.orbit_size, fps=cfg.fps,
                                    progress=not args.no_progress)
        paths = {k: Path(cfg.out) / Path(v).relative_to(stage) for k, v in paths.items()}
        summary = {"method": "stitch", "image": str(cfg.image), "completion": completer.name,
                   "inpainter": inpainter.name, "K": result.K.tolist(), "size": [result.width, result.height],
                   **result.info, "files": {k: str(v) for k, v in paths.items()}}
        with open(stage / "summary.json", "w", encoding="utf-8") as f:
            json.dump(summary, f, indent=2)
    print(f"scene ({cfg.mode}): {len(result.views)} views, {len(result.gaussians)} Gaussians -> {paths['ply']}")
    return 0
