"""The weight-free RGB-D pipeline ``rgbd``: frame tracking + TSDF fusion (open3d).

Frames stream through once (only the current frame, the previous frame and the tracking keyframe
are held): every frame is tracked against the current keyframe (or the previous frame) with
projective point-to-plane RGB-D odometry from a constant-velocity prediction, keyframes are fused
into a sparse TSDF (``open3d.t.geometry.VoxelBlockGrid``), and the mesh and point cloud are
extracted at the end. With ``tracking="model"`` each tracked pose is then refined frame-to-model:
coarse-to-fine point-to-plane ICP of the frame's depth against the fused surface (cached, re-extracted
every few keyframes), accepted only when its fitness, RMSE and correction size are plausible.
Failed tracking (solver failure, low overlap, implausible jump) falls back to the previous frame,
then to the prediction, with a warning; such frames are not fused.

Example::

    from forward3d.io.sources import open_frames
    from forward3d.pipelines import get_pipeline

    recon = get_pipeline("rgbd", voxel_size=0.01).run(open_frames("redwood/livingroom1"))
    recon.mesh, recon.points, recon.c2w  # world frame = first camera
"""

from __future__ import annotations

import argparse
import logging
import math
import time
from dataclasses import asdict, dataclass, fields, replace
from typing import Any, Callable, Iterable, Literal

import numpy as np

from forward3d.types import Frame, Reconstruction

__all__ = ["RGBDConfig", "RGBDPipeline", "RGBDUpdate", "open3d_device_name", "create"]

log = logging.getLogger(__name__)


@dataclass
class RGBDConfig:
    """Configuration of :class:`RGBDPipeline`.

    Attributes:
        voxel_size: TSDF voxel size in metres (0.01-0.02 for rooms; memory ~ surface / voxel_size^2).
        sdf_trunc: truncation distance in metres; None = 4 voxels.
        depth_min, depth_max: valid depth range in metres (others are ignored, as are 0/NaN/inf).
        tracking: ``"keyframe"`` (frame-to-keyframe, default: drift only accumulates per keyframe),
            ``"odometry"`` (frame-to-frame) or ``"model"`` (frame-to-model: the keyframe estimate is
            refined by coarse-to-fine point-to-plane ICP against the fused surface, 4/2/1 cm).
        model_refresh_keyframes: ``tracking="model"``: the model surface is re-extracted from the
            TSDF after this many new fused keyframes.
        tracking_depth_max: depth beyond this is not used for tracking (noise grows with z^2).
        tracking_bilateral: bilateral-filter the tracking depth (helps noisy sensors).
        keyframe_translation, keyframe_rotation_deg: motion since the last keyframe that makes a
            new keyframe.
        keyframe_min_fitness: overlap (inlier fraction) with the keyframe below which the frame
            becomes a keyframe.
        integrate: ``"keyframes"`` (fuse keyframes only) or ``"all"`` (every tracked frame).
        min_fitness: tracking failure below this inlier fraction.
        max_jump_translation, max_jump_rotation_deg: tracking failure when the estimate differs
            this much from the constant-velocity prediction.
        use_gt_poses: fuse with the frames' ground-truth ``c2w`` instead of tracking.
        weight_threshold: surface points / mesh vertices need a TSDF weight above this (1.0: seen
            by at least two fused frames, which drops single-frame outliers).
        mesh: extract a triangle mesh (the point cloud is always extracted).
        block_count: initial voxel-block hash-map capacity (grows on demand).
        device: open3d device, ``"CPU:0"`` or ``"CUDA:0"``.
    """

    voxel_size: float = 0.02
    sdf_trunc: float | None = None
    depth_min: float = 0.1
    depth_max: float = 8.0
    tracking: Literal["keyframe", "odometry", "model"] = "keyframe"
    model_refresh_keyframes: int = 5
    tracking_depth_max: float = 4.0
    tracking_bilateral: bool = False
    keyframe_translation: float = 0.1
    keyframe_rotation_deg: float = 10.0
    keyframe_min_fitness: float = 0.6
    integrate: Literal["keyframes", "all"] = "keyframes"
    min_fitness: float = 0.25
    max_jump_translation: float = 0.3
    max_jump_rotation_deg: float = 30.0
    use_gt_poses: bool = False
    weight_threshold: float = 1.0
    mesh: bool = True
    block_count: int = 4096
    device: str = "CPU:0"

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ValueError naming the field, the expected and the found value."""
        def bad(name: str, expected: str) -> ValueError:
            return ValueError(f"RGBDConfig.{name}: expected {expected}, found {getattr(self, name)!r}")

        for name in ("voxel_size", "depth_max", "tracking_depth_max", "keyframe_translation",
                     "keyframe_rotation_deg", "max_jump_translation", "max_jump_rotation_deg"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise bad(name, "a finite number > 0")
        if self.sdf_trunc is not None and not (math.isfinite(self.sdf_trunc) and self.sdf_trunc >= 2 * self.voxel_size):
            raise bad("sdf_trunc", f"None or >= 2 * voxel_size = {2 * self.voxel_size:g}")
        if not 0 <= self.depth_min < self.depth_max:
            raise bad("depth_min", f"in [0, depth_max={self.depth_max:g})")
        if self.tracking not in ("keyframe", "odometry", "model"):
            raise bad("tracking", "'keyframe', 'odometry' or 'model'")
        if not (isinstance(self.model_refresh_keyframes, int) and self.model_refresh_keyframes >= 1):
            raise bad("model_refresh_keyframes", "an integer >= 1")
        if self.integrate not in ("keyframes", "all"):
            raise bad("integrate", "'keyframes' or 'all'")
        for name in ("min_fitness", "keyframe_min_fitness"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise bad(name, "a fraction in [0, 1]")
        if not self.weight_threshold >= 0:
            raise bad("weight_threshold", ">= 0")
        if int(self.block_count) < 1:
            raise bad("block_count", ">= 1")
        if not str(self.device).upper().startswith(("CPU:", "CUDA:")):
            raise bad("device", "'CPU:0' or 'CUDA:<n>'")

    @property
    def trunc(self) -> float:
        return 4.0 * self.voxel_size if self.sdf_trunc is None else float(self.sdf_trunc)


@dataclass
class RGBDUpdate:
    """Per-frame progress given to the ``callback`` of :meth:`RGBDPipeline.run`.

    Attributes:
        index: position in the processed sequence (0-based).
        name: frame name.
        c2w: ``[4, 4]`` estimated camera-to-world.
        keyframe: whether the frame became a keyframe.
        integrated: whether it was fused into the TSDF.
        tracking_ok: False when tracking failed (pose = fallback).
        fitness: tracking inlier fraction (1.0 for the first frame / ground-truth poses).
    """

    index: int
    name: str
    c2w: np.ndarray
    keyframe: bool
    integrated: bool
    tracking_ok: bool
    fitness: float


_MIN_VALID_DEPTH = 0.05  # a frame with less valid depth than this fraction never becomes a reference


def open3d_device_name(device: str | None) -> str:
    """``None | "cpu" | "cuda" | "cuda:N" | "CPU:0" | "CUDA:N"`` -> open3d's ``"CPU:0"`` / ``"CUDA:N"``."""
    if device is None or str(device).strip() == "":
        return "CPU:0"
    kind, _, idx = str(device).strip().partition(":")
    kind = kind.upper()
    if kind not in ("CPU", "CUDA") or (idx and not idx.isdigit()):
        raise ValueError(f"rgbd device: expected cpu, cuda, cuda:N (or CPU:0 / CUDA:N), found {device!r}")
    return f"{kind}:{idx or 0}"


def _rotation_deg(R: np.ndarray) -> float:
    return math.degrees(math.acos(max(-1.0, min(1.0, (float(np.trace(R)) - 1.0) / 2.0))))


def _clean_depth(depth: np.ndarray, dmin: float, dmax: float) -> np.ndarray:
    """``[H, W]`` float32 with 0 wherever the depth is non-finite or outside ``(dmin, dmax]``."""
    d = np.asarray(depth, dtype=np.float32)
    ok = np.isfinite(d) & (d > dmin) & (d <= dmax)
    return np.where(ok, d, np.float32(0.0)).astype(np.float32)


def _describe(frame: Frame) -> str:
    return frame.source or frame.name or f"frame {frame.index}"


class RGBDPipeline:
    """Weight-free RGB-D reconstruction: tracking + TSDF fusion.

    Args:
        config: an :class:`RGBDConfig`; keyword overrides are applied on top (``RGBDPipeline(voxel_size=0.01)``).
    """

    name = "rgbd"

    def __init__(self, config: RGBDConfig | None = None, **overrides: Any) -> None:
        known = {f.name for f in fields(RGBDConfig)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise ValueError(f"rgbd: unknown options {unknown}; expected some of {sorted(known)}")
        self.config = replace(config or RGBDConfig(), **overrides)
        self.result: Reconstruction | None = None

    # -- CLI hooks (looked up by forward3d.cli.recon through the pipeline registry) -----------------
    @staticmethod
    def add_cli_arguments(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
        """Options of ``forward3d recon --backend rgbd``."""
        d = RGBDConfig()
        parser.add_argument("--voxel-size", type=float, default=d.voxel_size,
                            help=f"rgbd: TSDF voxel size in metres (default {d.voxel_size})")
        parser.add_argument("--sdf-trunc", type=float, default=None, help="rgbd: TSDF truncation in metres (default 4 voxels)")
        parser.add_argument("--depth-max", type=float, default=d.depth_max,
                            help=f"rgbd: ignore depth beyond this many metres (default {d.depth_max})")
        parser.add_argument("--tracking", choices=["keyframe", "odometry", "model"], default=d.tracking,
                            help="rgbd: frame-to-keyframe (default), frame-to-frame, or frame-to-model "
                                 "(keyframe odometry refined by ICP against the fused surface)")
        parser.add_argument("--integrate", choices=["keyframes", "all"], default=d.integrate,
                            help="rgbd: fuse keyframes only (default) or every frame")
        parser.add_argument("--use-gt-poses", action="store_true",
                            help="rgbd: fuse with the dataset's ground-truth poses instead of tracking")
        parser.add_argument("--bilateral", action="store_true", help="rgbd: bilateral-filter depth for tracking (noisy sensors)")
        parser.add_argument("--no-mesh", action="store_true", help="rgbd: skip mesh extraction")

    @classmethod
    def from_cli_args(cls, args: argparse.Namespace) -> "RGBDPipeline":
        """The pipeline of parsed ``forward3d recon`` arguments (``--device`` is shared with other backends)."""
        d = RGBDConfig()
        get = lambda name, default: getattr(args, name, default)  # noqa: E731
        sdf_trunc = get("sdf_trunc", None)
        return cls(RGBDConfig(
            voxel_size=get("voxel_size", d.voxel_size), sdf_trunc=sdf_trunc, depth_max=get("depth_max", d.depth_max),
            tracking=get("tracking", d.tracking), integrate=get("integrate", d.integrate),
            use_gt_poses=bool(get("use_gt_poses", False)), tracking_bilateral=bool(get("bilateral", False)),
            mesh=not get("no_mesh", False), device=open3d_device_name(get("device", None))))

    # ----------------------------------------------------------------------------------------------
    def reconstruct(self, frames: Iterable[Frame], callback: Callable[[RGBDUpdate], None] | None = None) -> Reconstruction:
        """Same as :meth:`run` (the name the other pipelines use)."""
        return self.run(frames, callback=callback)

    def run(self, frames: Iterable[Frame], num_frames: int | None = None,
            callback: Callable[[RGBDUpdate], None] | None = None) -> Reconstruction:
        """Reconstruct a stream of RGB-D frames.

        Args:
            frames: any iterable of :class:`Frame` with ``depth`` and ``K`` (e.g. ``open_frames(...)``);
                it is consumed once and frames are not kept.
            num_frames: total for the progress bar (default: ``len(frames)`` when available).
            callback: called with an :class:`RGBDUpdate` after each frame.

        Returns:
            a :class:`Reconstruction` with a ``c2w`` and ``K`` for every frame (world = first camera,
            or the ground-truth world with ``use_gt_poses``), ``points`` (colours, normals), ``mesh``
            and ``metadata`` (backend, config, timings, keyframes, tracking failures).

        Raises:
            ValueError: a frame without depth (RGB-only input needs the ``slam3r`` backend), without
                intrinsics, of a different size than the first, or without a ground-truth pose when
                ``use_gt_poses`` is set; or no frames at all.
        """
        from tqdm.auto import tqdm

        from forward3d.pipelines.tsdf import ModelTracker, RGBDTracker, TSDFVolume

        cfg = self.config
        cfg.validate()
        if num_frames is None:
            try:
                num_frames = len(frames)  # type: ignore[arg-type]
            except TypeError:
                num_frames = None
        volume = TSDFVolume(cfg.voxel_size, cfg.trunc, block_count=cfg.block_count, depth_min=cfg.depth_min,
                            depth_max=cfg.depth_max, device=cfg.device)
        tracker = None if cfg.use_gt_poses else RGBDTracker(
            depth_max=min(cfg.tracking_depth_max, cfg.depth_max), min_fitness=cfg.min_fitness,
            bilateral=(7, 0.1, 5.0) if cfg.tracking_bilateral else None, device=cfg.device)
        model = None
        if cfg.tracking == "model" and not cfg.use_gt_poses:
            model = ModelTracker(depth_max=min(cfg.tracking_depth_max, cfg.depth_max), device=cfg.device)
        model_stats: dict[str, Any] = {"refined": 0, "rejected": 0, "refreshes": 0, "time_s": 0.0}
        model_stale = 0  # keyframes fused since the last model refresh

        c2ws: list[np.ndarray] = []
        Ks: list[np.ndarray] = []
        names: list[str] = []
        stamps: list[float] = []
        keyframes: list[int] = []
        failures: list[dict[str, Any]] = []
        fitness_log: list[float] = []
        size: tuple[int, int] | None = None
        prev = None  # (prepared, c2w) of the previous frame
        key = None  # (prepared, c2w) of the current keyframe
        t_track = t_fuse = 0.0
        t0 = time.perf_counter()
        bar = tqdm(total=num_frames, desc="rgbd", unit="frame", leave=False, dynamic_ncols=True)
        try:
            for i, frame in enumerate(frames):
                where = _describe(frame)
                if frame.depth is None:
                    raise ValueError(f"{where}: the rgbd backend needs depth and this frame has none; "
                                     "RGB-only input (videos, image folders) needs the 'slam3r' backend "
                                     "(forward3d recon --backend slam3r)")
                if frame.K is None:
                    raise ValueError(f"{where}: the rgbd backend needs camera intrinsics and this frame has none; "
                                     "pass --intrinsics fx fy cx cy (or intrinsics= to open_frames) or use a "
                                     "layout that stores them")
                if size is None:
                    size = (frame.width, frame.height)
                elif (frame.width, frame.height) != size:
                    raise ValueError(f"{where}: expected every frame at {size[0]}x{size[1]} like the first, "
                                     f"found {frame.width}x{frame.height}")
                depth = _clean_depth(frame.depth, cfg.depth_min, cfg.depth_max)
                K = np.asarray(frame.K, np.float64)
                ts = time.perf_counter()
                ok, fit, is_key = True, 1.0, False
                if cfg.use_gt_poses:
                    if frame.c2w is None or not np.isfinite(frame.c2w).all():
                        raise ValueError(f"{where}: use_gt_poses is set but this frame has no ground-truth pose; "
                                         "use a layout with poses (TUM, Redwood .log, ScanNet, Replica, 7-Scenes)")
                    c2w = np.asarray(frame.c2w, np.float64)
                    is_key = True
                    cur = None
                else:
                    cur = tracker.prepare(depth, frame.image, K)  # type: ignore[union-attr]
                    if prev is None:
                        c2w, is_key = np.eye(4), True
                    else:
                        c2w, ok, fit, reason = self._track(tracker, cur, prev, key, c2ws)
                        if ok and model is not None:
                            c2w, model_stale = self._refine(model, volume, depth, K, c2w, model_stats,
                                                            model_stale, where)
                        if not ok:
                            failures.append({"index": i, "name": frame.name, "reason": reason})
                            usable = float((depth > 0).mean()) >= _MIN_VALID_DEPTH
                            log.warning("rgbd: tracking failed at %s (%s); using the motion prediction%s",
                                        where, reason, " and re-anchoring there" if usable else
                                        " (too little valid depth: frame skipped)")
                            is_key = usable  # re-anchor tracking on this frame unless it has no depth
                            if not usable:
                                cur = None  # keep the previous frame and keyframe as references
                        else:
                            rel = np.linalg.inv(key[1]) @ c2w  # type: ignore[index]
                            is_key = (cfg.tracking == "odometry"
                                      or np.linalg.norm(rel[:3, 3]) > cfg.keyframe_translation
                                      or _rotation_deg(rel[:3, :3]) > cfg.keyframe_rotation_deg
                                      or fit < cfg.keyframe_min_fitness)
                t_track += time.perf_counter() - ts
                integrated = False
                if ok and (is_key or cfg.integrate == "all"):
                    ts = time.perf_counter()
                    volume.integrate(depth, frame.image, K, c2w)
                    t_fuse += time.perf_counter() - ts
                    integrated = True
                    model_stale += int(is_key)
                if is_key:
                    keyframes.append(i)
                    if cur is not None:
                        key = (cur, c2w)
                if cur is not None:
                    prev = (cur, c2w)
                c2ws.append(c2w)
                Ks.append(K)
                names.append(frame.name or f"{frame.index:06d}")
                stamps.append(float(frame.timestamp))
                fitness_log.append(fit)
                bar.update(1)
                if bar.n % 10 == 0:
                    bar.set_postfix(kf=len(keyframes), fail=len(failures), refresh=False)
                if callback is not None:
                    callback(RGBDUpdate(i, names[-1], c2w.copy(), is_key, integrated, ok, fit))
        finally:
            bar.close()
        if not c2ws:
            raise ValueError("rgbd: no frames to reconstruct (the input is empty)")
        t_loop = time.perf_counter() - t0
        ts = time.perf_counter()
        points = volume.point_cloud(cfg.weight_threshold)
        mesh = volume.mesh(cfg.weight_threshold) if cfg.mesh else None
        t_extract = time.perf_counter() - ts
        if len(points) == 0:
            log.warning("rgbd: the fused volume is empty (no valid depth within %.2f-%.2f m?)",
                        cfg.depth_min, cfg.depth_max)
        n = len(c2ws)
        if failures:
            log.warning("rgbd: tracking failed on %d of %d frames", len(failures), n)
        meta = {
            "backend": "rgbd",
            "config": asdict(cfg),
            "num_frames": n,
            "keyframes": keyframes,
            "num_integrated": volume.num_integrated,
            "tracking_failures": failures,
            "tracking_fitness_mean": float(np.mean(fitness_log)),
            "num_voxel_blocks": volume.num_blocks,
            "timings": {"total_s": t_loop + t_extract, "tracking_s": t_track, "fusion_s": t_fuse,
                        "extraction_s": t_extract, "frames_per_s": n / max(t_loop, 1e-9)},
        }
        if model is not None:
            meta["model_tracking"] = model_stats
        self.result = Reconstruction(np.stack(c2ws), np.stack(Ks), size, names, np.asarray(stamps),
                                     points=points, mesh=mesh, metadata=meta)
        log.info("rgbd: %d frames (%d keyframes, %d fused, %d failures) at %.1f frames/s; %d points, %d triangles",
                 n, len(keyframes), volume.num_integrated, len(failures), n / max(t_loop, 1e-9), len(points),
                 0 if mesh is None else len(mesh.faces))
        return self.result

    # ----------------------------------------------------------------------------------------------
    def _refine(self, model, volume, depth: np.ndarray, K: np.ndarray, c2w: np.ndarray, stats: dict[str, Any],
                stale: int, where: str) -> tuple[np.ndarray, int]:
        """Frame-to-model refinement of a tracked pose (the input pose when ICP is not trusted).

        ``stale`` counts the keyframes fused since the model surface was last extracted; returns the
        pose and the updated count.
        """
        ts = time.perf_counter()
        if stale >= self.config.model_refresh_keyframes or (stale > 0 and stats["refreshes"] == 0):
            model.refresh(volume, self.config.weight_threshold)
            stats["refreshes"] += 1
            stale = 0
        res = model.refine(depth, K, c2w)
        stats["time_s"] += time.perf_counter() - ts
        if res.ok:
            stats["refined"] += 1
            return res.src_to_tgt, stale
        stats["rejected"] += 1
        log.debug("rgbd: model refinement of %s rejected (%s); keeping the odometry pose", where, res.reason)
        return c2w, stale

    def _track(self, tracker, cur, prev, key, c2ws: list[np.ndarray]) -> tuple[np.ndarray, bool, float, str]:
        """Pose of the current frame: against the keyframe, else the previous frame, else predicted."""
        cfg = self.config
        prev_c2w = prev[1]
        velocity = np.linalg.inv(c2ws[-2]) @ c2ws[-1] if len(c2ws) >= 2 else np.eye(4)
        pred = prev_c2w @ velocity
        targets = [prev] if cfg.tracking == "odometry" or key[0] is prev[0] else [key, prev]
        reason = ""
        for tgt, tgt_c2w in targets:
            res = tracker.align(cur, tgt, np.linalg.inv(tgt_c2w) @ pred)
            if not res.ok:
                reason = res.reason
                continue
            c2w = tgt_c2w @ res.src_to_tgt
            jump = np.linalg.inv(pred) @ c2w
            if (np.linalg.norm(jump[:3, 3]) > cfg.max_jump_translation
                    or _rotation_deg(jump[:3, :3]) > cfg.max_jump_rotation_deg):
                reason = (f"implausible jump of {np.linalg.norm(jump[:3, 3]):.2f} m / "
                          f"{_rotation_deg(jump[:3, :3]):.1f} deg from the prediction")
                continue
            return c2w, True, res.fitness, ""
        return pred, False, 0.0, reason or "tracking failed"


def create(**config: Any) -> RGBDPipeline:
    """Registry factory: ``get_pipeline("rgbd", voxel_size=0.01)``."""
    return RGBDPipeline(**config)
