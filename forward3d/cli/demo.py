"""``forward3d demo``: generate a synthetic RGB-D room, reconstruct it with ``rgbd``, score it.

No download, no weights: a textured room with boxes (:mod:`forward3d.data.synthetic`) is rendered
along a camera orbit, tracked and fused by the ``rgbd`` pipeline, and scored against the exact ground
truth: ATE/RPE of the cameras and accuracy / completion / F-score of the fused surface against the
ground-truth surface points that some input frame saw. Writes the standard outputs of
``forward3d recon`` (mesh, point cloud, TUM trajectory, COLMAP, transforms.json, bundle) plus
``metrics.json`` and ``previews/*.png`` into ``--out`` and prints a short table.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Iterator

import numpy as np

from forward3d.types import Frame, PointCloud

__all__ = ["add_arguments", "run", "VisibilityMask", "score_surface"]


class VisibilityMask:
    """Marks ground-truth surface points seen by the frames (depth-consistent projection).

    Args:
        points: ``[N, 3]`` world points.
        tolerance: base depth tolerance in metres; ``noise * z^2 * 3`` is added for noisy sensors.
    """

    def __init__(self, points: np.ndarray, tolerance: float = 0.03, noise: float = 0.0) -> None:
        self.points = np.asarray(points, np.float64)
        self.seen = np.zeros(len(self.points), bool)
        self.tolerance = float(tolerance)
        self.noise = float(noise)

    def update(self, frame: Frame) -> None:
        if frame.depth is None or frame.K is None or frame.c2w is None:
            return
        w2c = np.linalg.inv(frame.c2w)
        p = self.points @ w2c[:3, :3].T + w2c[:3, 3]
        z = p[:, 2]
        front = z > 1e-3
        u = np.full(len(z), -1, np.int64)
        v = np.full(len(z), -1, np.int64)
        u[front] = np.floor(frame.K[0, 0] * p[front, 0] / z[front] + frame.K[0, 2]).astype(np.int64)
        v[front] = np.floor(frame.K[1, 1] * p[front, 1] / z[front] + frame.K[1, 2]).astype(np.int64)
        inside = front & (u >= 0) & (u < frame.width) & (v >= 0) & (v < frame.height)
        d = np.zeros(len(z))
        d[inside] = frame.depth[v[inside], u[inside]]
        tol = self.tolerance + 3.0 * self.noise * z**2
        self.seen |= inside & (d > 0) & (np.abs(d - z) < tol)


def score_surface(points: PointCloud, gt: PointCloud, seen: np.ndarray | None = None,
                  thresholds=(0.01, 0.02, 0.05)) -> dict[str, float]:
    """Accuracy / completion / F-score of ``points`` against the ground-truth surface ``gt``.

    ``points`` are voxel-downsampled to 1 cm (``gt`` is expected on a regular grid already, e.g.
    ``SyntheticScene.surface_points(0.01)``). Accuracy and precision use all of ``gt`` (a point is
    right if it lies on any true surface); completion and recall only the ``seen`` ``[N]`` bool subset
    (surface no frame saw cannot be reconstructed).
    """
    from forward3d.eval import recon_metrics
    from forward3d.eval.recon import nearest_distances, voxel_downsample

    pred, _ = voxel_downsample(points.points, 0.01)
    ref = gt.points if seen is None else gt.points[seen]
    out = dict(recon_metrics(pred, ref, thresholds=thresholds))
    if seen is None or seen.all():
        return out
    d, _ = nearest_distances(pred, gt.points)
    out["accuracy"], out["accuracy_median"] = float(d.mean()), float(np.median(d))
    out["chamfer"] = 0.5 * (out["accuracy"] + out["completion"])
    for t in thresholds:
        p, r = float((d < t).mean()), out[f"recall@{t:g}"]
        out[f"precision@{t:g}"] = p
        out[f"fscore@{t:g}"] = 2 * p * r / (p + r) if p + r > 0 else 0.0
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", "-o", default="./forward3d-demo", metavar="DIR", help="output folder (default %(default)s)")
    parser.add_argument("--frames", type=int, default=100, metavar="N", help="number of frames (default 100)")
    parser.add_argument("--size", default="320x240", metavar="WxH", help="image size (default 320x240)")
    parser.add_argument("--seed", type=int, default=0, help="scene, trajectory and noise seed (default 0)")
    parser.add_argument("--noise", type=float, default=0.0, metavar="K",
                        help="depth noise: sigma = K * z^2 metres (0 = exact; 0.001 is a good sensor)")
    parser.add_argument("--holes", type=float, default=0.0, metavar="F", help="fraction of depth pixels dropped (default 0)")
    parser.add_argument("--trajectory", choices=["orbit", "walk", "handheld"], default="orbit",
                        help="camera path (default orbit)")
    parser.add_argument("--voxel-size", type=float, default=0.02, help="TSDF voxel size in metres (default 0.02)")
    parser.add_argument("--tracking", choices=["keyframe", "odometry", "model"], default="keyframe",
                        help="rgbd tracking: frame-to-keyframe (default), frame-to-frame or frame-to-model")
    parser.add_argument("--use-gt-poses", action="store_true", help="fuse with the ground-truth poses (no tracking)")
    parser.add_argument("--save-input", action="store_true",
                        help="also write the synthetic sequence as a TUM RGB-D dataset in OUT/input")
    parser.add_argument("--no-previews", action="store_true", help="do not render previews/*.png")


def run(args: argparse.Namespace) -> int:
    from forward3d.cli.recon import GTRecorder, parse_size, staged_output, trajectory_metrics, write_outputs
    from forward3d.data.synthetic import SyntheticConfig, SyntheticScene
    from forward3d.pipelines.rgbd import RGBDPipeline

    size = parse_size(args.size)
    if not isinstance(size, tuple):
        raise ValueError(f"--size: expected WxH (e.g. 320x240), found {args.size!r}")
    if args.frames < 3:
        raise ValueError(f"--frames: expected at least 3, found {args.frames}")
    t0 = time.perf_counter()
    scene = SyntheticScene(SyntheticConfig(seed=args.seed, num_frames=args.frames, width=size[0], height=size[1],
                                           depth_noise=args.noise, depth_holes=args.holes,
                                           trajectory=args.trajectory))
    gt_surface = scene.surface_points(0.01)
    vis = VisibilityMask(gt_surface.points, noise=args.noise)
    every = max(1, args.frames // 25)

    def frames() -> Iterator[Frame]:
        for i, f in enumerate(scene.frames()):
            if i % every == 0 or i == args.frames - 1:
                vis.update(f)
            yield f

    pipeline = RGBDPipeline(voxel_size=args.voxel_size, tracking=args.tracking, use_gt_poses=args.use_gt_poses)
    rec_frames = GTRecorder(frames())
    recon = pipeline.run(rec_frames, num_frames=args.frames)
    traj = trajectory_metrics(recon.c2w, rec_frames.gt)
    if traj is None:  # pragma: no cover - frames >= 3 always have ground truth here
        raise ValueError("demo: no ground-truth poses to score against")
    A = traj["alignment"]
    pts = recon.points if recon.points is not None else PointCloud(np.zeros((0, 3), np.float32))
    aligned = PointCloud((pts.points @ A[:3, :3].T + A[:3, 3]).astype(np.float32), pts.colors,
                         None if pts.normals is None else (pts.normals @ A[:3, :3].T).astype(np.float32))
    surface = score_surface(aligned, gt_surface, vis.seen) if len(aligned) and vis.seen.any() else {}
    extra = {
        "scene": {"seed": args.seed, "frames": args.frames, "size": list(size), "depth_noise": args.noise,
                  "depth_holes": args.holes, "trajectory": args.trajectory},
        "surface": {"gt": "accuracy/precision: all surface points; completion/recall: those seen by an input "
                          "frame (1 cm grid)",
                    "gt_seen_fraction": float(vis.seen.mean()), **surface},
    }
    with staged_output(args.out) as stage:
        written = write_outputs(recon, stage, traj, extra, previews=not args.no_previews, up=np.array([0.0, 1.0, 0.0]))
        if args.save_input:
            from forward3d.io.sources import write_layout

            write_layout(scene.frames(), stage / "input", "tum")
            written["input"] = stage / "input"
    dt = time.perf_counter() - t0
    out = Path(args.out)
    t = recon.metadata["timings"]
    rows = [
        ("frames", f"{len(recon)} ({size[0]}x{size[1]}), {len(recon.metadata['keyframes'])} keyframes"),
        ("tracking failures", str(len(recon.metadata["tracking_failures"]))),
        ("ATE RMSE (SE3)", f"{traj['ate_se3']['rmse'] * 100:.2f} cm"),
        ("RPE trans / rot", f"{traj['rpe']['trans_rmse'] * 1000:.2f} mm / {traj['rpe']['rot_rmse_deg']:.3f} deg"
         if "rpe" in traj else "-"),
    ]
    if surface:
        rows += [
            ("accuracy (mean)", f"{surface['accuracy'] * 100:.2f} cm"),
            ("completion (mean)", f"{surface['completion'] * 100:.2f} cm"),
            ("F-score @2cm / @5cm", f"{surface['fscore@0.02']:.3f} / {surface['fscore@0.05']:.3f}"),
        ]
    rows += [
        ("points / triangles", f"{len(pts)} / {0 if recon.mesh is None else len(recon.mesh.faces)}"),
        ("speed", f"{t['frames_per_s']:.1f} frames/s (rgbd), {dt:.1f} s total"),
        ("output", str(out)),
    ]
    width = max(len(k) for k, _ in rows)
    print("forward3d demo: synthetic room -> rgbd")
    for k, v in rows:
        print(f"  {k:<{width}}  {v}")
    return 0
