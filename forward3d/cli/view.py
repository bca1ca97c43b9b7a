"""``forward3d view PATH``: open a reconstruction, point cloud, mesh, 3D Gaussians or camera set in the
browser (viser, extra ``[viewer]``). See :mod:`forward3d.viz.viewer` and :mod:`forward3d.viz.load`."""

from __future__ import annotations

import argparse
import sys

from forward3d.viz.viewer import ViewerConfig

__all__ = ["add_arguments", "run"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    d = ViewerConfig()
    p.add_argument("path", help="a forward3d recon output folder, reconstruction.npz, point-cloud/mesh .ply/.glb/.obj, "
                                "3DGS .ply/.splat, COLMAP model folder (text, or binary with pycolmap) or nerfstudio transforms.json")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: this machine only; 0.0.0.0 exposes the scene "
                        "to the network)")
    p.add_argument("--port", type=int, default=8080, help="port (the next free one is taken when it is busy)")
    p.add_argument("--gt", default=None, help="ground-truth trajectory (TUM .txt or Redwood .log), aligned and "
                                              "drawn in blue")
    p.add_argument("--images", default=None, help="folder of the input images: camera thumbnails for a recon output "
                                                  "(matched by frame name)")
    p.add_argument("--max-points", type=int, default=d.max_points, help="point budget")
    p.add_argument("--max-frustums", type=int, default=d.max_frustums, help="cameras drawn at most (every k-th)")
    p.add_argument("--max-gaussians", type=int, default=d.max_gaussians, help="Gaussians drawn at most")
    p.add_argument("--point-size", type=float, default=d.point_size, help="world units (default: from the extent)")
    p.add_argument("--fps", type=float, default=d.fps, help="timeline playback speed")


def run(args: argparse.Namespace) -> int:
    from forward3d.viz.load import load_scene
    from forward3d.viz.viewer import Viewer

    if not 0 <= args.port <= 65535:
        raise ValueError(f"--port: expected 0..65535, found {args.port}")
    config = ViewerConfig(max_points=args.max_points, max_frustums=args.max_frustums,
                          max_gaussians=args.max_gaussians, point_size=args.point_size, fps=args.fps)
    scene = load_scene(args.path, gt=args.gt, images=args.images)
    viewer = Viewer(scene, host=args.host, port=args.port, config=config)
    s = scene.summary()
    what = ", ".join(f"{v:,} {k.replace('_', ' ')}" for k, v in s.items() if v)
    if args.port and viewer.port != args.port:
        print(f"forward3d view: port {args.port} is busy, using {viewer.port}", file=sys.stderr)
    print(f"forward3d view: {args.path} ({what or 'empty'})", flush=True)
    print(f"forward3d view: open {viewer.url} in a browser (Ctrl-C to stop)", flush=True)
    viewer.serve_forever()
    print("forward3d view: stopped", flush=True)
    return 0
