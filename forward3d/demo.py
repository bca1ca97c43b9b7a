"""The demo: generate a synthetic RGB-D room, reconstruct it with ``rgbd``, score it against the truth.

``--rgb``: the same room rendered without depth, reconstructed by the weight-free ``sfm`` back-end
(structure from motion, dense stereo when forward3d.mvs is installed) and scored after Sim(3) alignment.

No download, no weights: a textured room with boxes (:mod:`forward3d.data.synthetic`) is rendered
along a camera path, tracked and fused by the ``rgbd`` back-end, and scored against the exact ground
truth: ATE/RPE of the cameras and accuracy / completion / F-score of the fused surface against the
ground-truth surface points that some input frame saw. The output folder is the one of
``forward3d recon`` plus the surface scores in ``metrics.json``. ``forward3d demo`` is this function.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Literal

import numpy as np

from forward3d.config import option
from forward3d.data.synthetic import SyntheticConfig
from forward3d.pipelines.rgbd import RGBDConfig
from forward3d.types import Frame, PointCloud, Reconstruction

__all__ = ["DemoConfig", "DemoResult", "run_demo"]

_SYN = SyntheticConfig()
_RGBD = RGBDConfig()


@dataclass
class DemoConfig:
    """Options of ``forward3d demo``.

    Attributes:
        out: output folder (replaced as a whole).
        frames: number of frames.
        size: image size WxH.
        seed: scene, trajectory and noise seed.
        noise: depth noise: sigma = K * z^2 metres (0 = exact; 0.001 is a good sensor).
        holes: fraction of depth pixels dropped.
        trajectory: camera path.
        voxel_size: TSDF voxel size in metres.
        tracking: rgbd tracking: frame-to-keyframe, frame-to-frame (old name: odometry) or frame-to-model.
        use_gt_poses: fuse with the ground-truth poses (no tracking).
        rgb: RGB only (no depth): reconstruct with the sfm back-end (needs forward3d[sfm]) and score after Sim(3).
        save_input: also write the synthetic sequence as a TUM RGB-D dataset in OUT/input.
        previews: render previews/*.png.
        overwrite: replace --out even when it holds files forward3d did not write.
    """

    out: str = option("./forward3d-demo", metavar="DIR", aliases=("-o",))
    frames: int = option(_SYN.num_frames, metavar="N")
    size: str = option(f"{_SYN.width}x{_SYN.height}", metavar="WxH")
    seed: int = _SYN.seed
    noise: float = option(_SYN.depth_noise, metavar="K")
    holes: float = option(_SYN.depth_holes, metavar="F")
    trajectory: Literal["orbit", "walk", "handheld"] = _SYN.trajectory
    voxel_size: float = _RGBD.voxel_size
    tracking: Literal["keyframe", "frame", "model"] = option(_RGBD.tracking, choice_aliases={"odometry": "frame"})
    use_gt_poses: bool = False
    rgb: bool = False
    save_input: bool = False
    previews: bool = True
    overwrite: bool = False

    def __post_init__(self) -> None:
        if self.frames < 3:
            raise ValueError(f"--frames: expected at least 3, found {self.frames}")
        from forward3d.api import parse_size

        if not isinstance(parse_size(self.size), tuple):
            raise ValueError(f"--size: expected WxH (e.g. 320x240), found {self.size!r}")


@dataclass
class DemoResult:
    """The demo's reconstruction, scores and the table :func:`run_demo` prints in the CLI."""

    recon: Reconstruction
    surface: dict[str, Any]
    files: dict[str, Path]
    seconds: float
    rows: list[tuple[str, str]] = field(default_factory=list)


def run_demo(cfg: DemoConfig | None = None, progress: bool = True) -> DemoResult:
    """Generate, reconstruct, score and export (see the module docstring)."""
    from forward3d.api import parse_size
    from forward3d.data.synthetic import SyntheticScene
    from forward3d.eval.surface import VisibilityMask, score_surface
    from forward3d.eval.traj import GroundTruthRecorder, trajectory_metrics
    from forward3d.io.atomic import check_output_folder, staged_folder
    from forward3d.io.export import write_outputs
    from forward3d.pipelines.rgbd import RGBDBackend

    cfg = cfg or DemoConfig()
    size = parse_size(cfg.size)
    check_output_folder(cfg.out, cfg.overwrite)
    t0 = time.perf_counter()
    scene = SyntheticScene(SyntheticConfig(seed=cfg.seed, num_frames=cfg.frames, width=size[0], height=size[1],
                                           depth_noise=cfg.noise, depth_holes=cfg.holes, trajectory=cfg.trajectory))
    gt_surface = scene.surface_points(0.01)
    vis = VisibilityMask(gt_surface.points, noise=cfg.noise)
    every = max(1, cfg.frames // 25)

    def frames() -> Iterator[Frame]:
        for i, f in enumerate(scene.frames()):
            if i % every == 0 or i == cfg.frames - 1:
                vis.update(f)
            yield f.with_(depth=None) if cfg.rgb else f

    if cfg.rgb:
        from forward3d.pipelines.sfm import SfMBackend

        backend: Any = SfMBackend()
    else:
        backend = RGBDBackend(voxel_size=cfg.voxel_size, tracking=cfg.tracking, use_gt_poses=cfg.use_gt_poses)
    rec_frames = GroundTruthRecorder(frames(), length=cfg.frames)
    recon = backend.run(rec_frames, progress=progress)
    traj = trajectory_metrics(recon.c2w, rec_frames.gt, metric_scale=recon.metric_scale)
    if traj is None:  # pragma: no cover - frames >= 3 always have ground truth here
        raise ValueError("demo: no ground-truth poses to score against")
    recon.trajectory_metrics = traj
    pts = recon.points if recon.points is not None else PointCloud(np.zeros((0, 3), np.float32))
    aligned = pts.transform(traj.alignment)
    surface = score_surface(aligned, gt_surface, vis.seen) if len(aligned) and vis.seen.any() else {}
    extra = {
        "scene": {"seed": cfg.seed, "frames": cfg.frames, "size": list(size), "depth_noise": cfg.noise,
                  "depth_holes": cfg.holes, "trajectory": cfg.trajectory},
        "surface": {"gt": "accuracy/precision: all surface points; completion/recall: those seen by an input "
                          "frame (1 cm grid)",
                    "gt_seen_fraction": float(vis.seen.mean()), **surface},
    }
    out = Path(cfg.out)
    with staged_folder(out, cfg.overwrite) as stage:
        written = write_outputs(recon, stage, extra, previews=cfg.previews, up=np.array([0.0, 1.0, 0.0]))
        if cfg.save_input:
            from forward3d.io.sources import write_layout

            write_layout(scene.frames(), stage / "input", "tum")
            written["input"] = stage / "input"
    files = {k: out / Path(v).relative_to(stage) for k, v in written.items()}
    dt = time.perf_counter() - t0
    ate_row = ("ATE RMSE (Sim3)", f"{traj.ate_sim3.rmse * 100:.2f} cm") if cfg.rgb else \
        ("ATE RMSE (SE3)", f"{traj.ate_se3.rmse * 100:.2f} cm")
    rows = [
        ("frames", f"{len(recon)} ({size[0]}x{size[1]}), {len(recon.keyframes)} keyframes"),
        ("tracking failures", str(len(recon.failures))),
        ate_row,
        ("RPE trans / rot", f"{traj.rpe.trans_rmse * 1000:.2f} mm / {traj.rpe.rot_rmse_deg:.3f} deg"
         if traj.rpe is not None else "-"),
    ]
    if surface:
        rows += [
            ("accuracy (mean)", f"{surface['accuracy'] * 100:.2f} cm"),
            ("completion (mean)", f"{surface['completion'] * 100:.2f} cm"),
            ("F-score @2cm / @5cm", f"{surface['fscore@0.02']:.3f} / {surface['fscore@0.05']:.3f}"),
        ]
    rows += [
        ("points / triangles", f"{len(pts)} / {0 if recon.mesh is None else len(recon.mesh.faces)}"),
        ("speed", f"{recon.timings['frames_per_s']:.1f} frames/s ({recon.backend}), {dt:.1f} s total"),
        ("output", str(out)),
    ]
    return DemoResult(recon, surface, files, dt, rows)
