"""render a 3D Gaussian scene (PLY/.splat) to images and a video"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
import torch

logger = logging.getLogger(__name__)


def add_arguments(p: argparse.ArgumentParser) -> None:
    from forward3d.device import DEVICE_HELP

    p.add_argument("scene", help="3DGS .ply or .splat file")
    p.add_argument("--cameras", default="orbit",
                   help="'orbit' (default), a COLMAP text model folder, or a nerfstudio transforms.json")
    p.add_argument("--out", default="forward3d-render", help="output folder")
    p.add_argument("--width", type=int, default=None, help="image width (orbit default 640; others: the cameras')")
    p.add_argument("--height", type=int, default=None, help="image height (orbit default 480)")
    p.add_argument("--frames", type=int, default=60, help="orbit: number of frames")
    p.add_argument("--fov", type=float, default=60.0, help="orbit: horizontal field of view in degrees")
    p.add_argument("--radius", type=float, default=None, help="orbit: radius (default from the scene extent)")
    p.add_argument("--elevation", type=float, default=20.0, help="orbit: elevation in degrees")
    p.add_argument("--up", type=float, nargs=3, default=(0.0, -1.0, 0.0), help="orbit: world up vector")
    p.add_argument("--background", type=float, nargs=3, default=(0.0, 0.0, 0.0))
    p.add_argument("--sh-degree", type=int, default=None)
    p.add_argument("--video", choices=["mp4", "gif", "none"], default="mp4")
    p.add_argument("--no-png", action="store_true", help="only write the video")
    p.add_argument("--device", default="auto", help=DEVICE_HELP + " (default: auto)")


def _cameras(args, gaussians):
    from forward3d.types import Intrinsics
    from forward3d.viz.paths import orbit_c2w

    src = args.cameras
    if src == "orbit":
        w, h = args.width or 640, args.height or 480
        means = gaussians.means.detach().cpu().numpy()
        center = np.median(means, 0)
        extent = np.percentile(np.linalg.norm(means - center, axis=1), 90)
        radius = args.radius or max(2.0 * extent, 1e-3)
        c2w = orbit_c2w(center, radius, args.frames, args.elevation, np.asarray(args.up))
        K = np.tile(Intrinsics.from_fov(w, h, args.fov).K, (len(c2w), 1, 1))
        return c2w, K, w, h, [f"{i:05d}" for i in range(len(c2w))]
    p = Path(src)
    if p.is_dir():
        from forward3d.io.colmap import read_colmap_text

        cams = read_colmap_text(p)
    elif p.suffix == ".json":
        from forward3d.io.nerfstudio import read_transforms_json

        cams = read_transforms_json(p)
    else:
        raise ValueError(f"--cameras {src}: expected 'orbit', a COLMAP text folder or a transforms.json")
    sizes = np.unique(cams.image_sizes, axis=0)
    if len(sizes) != 1:
        raise ValueError(f"--cameras {src}: cameras of different sizes {sizes.tolist()} are not supported")
    w0, h0 = (int(v) for v in sizes[0])
    w, h = args.width or w0, args.height or h0
    K = cams.K.copy()
    K[:, 0] *= w / w0
    K[:, 1] *= h / h0
    return cams.c2w, K, w, h, [Path(n).stem for n in cams.names]


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from forward3d.io.gaussians import read_gaussians
    from forward3d.io.video import write_png, write_video
    from forward3d.render import Cameras, rasterize

    from forward3d.device import resolve_device

    args.device = str(resolve_device(args.device))
    gaussians = read_gaussians(args.scene).to(args.device)
    c2w, K, w, h, names = _cameras(args, gaussians)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    bg = torch.tensor(args.background, dtype=torch.float32, device=args.device)
    frames = []
    for i in tqdm(range(len(c2w)), desc="render", unit="view"):
        cams = Cameras.from_c2w(torch.as_tensor(c2w[i], dtype=torch.float32), torch.as_tensor(K[i], dtype=torch.float32), w, h)
        cams = Cameras(cams.w2c.to(args.device), cams.K.to(args.device), w, h)
        with torch.no_grad():
            img = rasterize(gaussians, cams, background=bg, sh_degree=args.sh_degree).colors[0]
        img = (img.clamp(0, 1) * 255 + 0.5).to(torch.uint8).cpu().numpy()
        if not args.no_png:
            write_png(out / f"{names[i]}.png", img)
        frames.append(img)
    if args.video != "none" and len(frames) > 1:
        path = write_video(out / f"video.{args.video}", frames, fps=24)
        print(f"wrote {len(frames)} views and {path}")
    else:
        print(f"wrote {len(frames)} views to {out}")
    return 0
