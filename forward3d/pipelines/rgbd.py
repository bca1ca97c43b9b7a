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
    from forward3d.pipelines import get_backend

    recon = get_backend("rgbd", voxel_size=0.01).run(open_frames("redwood/livingroom1"))
    recon.mesh, recon.points, recon.c2w  # world frame = first camera
    for update in get_backend("rgbd").stream(open_frames("http://cam/stream")):  # live
        viewer.add(update)
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Literal

import numpy as np

from forward3d.config import config_to_dict, option
from forward3d.geometry.camera import camera_to_world, unproject
from forward3d.geometry.se3 import rotation_angle
from forward3d.pipelines.base import Backend, Capabilities
from forward3d.progress import progress_bar
from forward3d.threads import open3d_threads
from forward3d.types import Frame, FrameStatus, Reconstruction, Update

__all__ = ["RGBDConfig", "RGBDBackend", "open3d_device_name", "TRACKING_MODES"]

TRACKING_MODES = ("keyframe", "frame", "model")

log = logging.getLogger(__name__)


@dataclass
class RGBDConfig:
    """Configuration of :class:`RGBDPipeline`.

    Attributes:
        voxel_size: TSDF voxel size in metres (0.01-0.02 for rooms; memory ~ surface / voxel_size^2).
        sdf_trunc: truncation distance in metres; None = 4 voxels.
        depth_min, depth_max: valid depth range in metres (others are ignored, as are 0/NaN/inf).
        tracking: ``keyframe`` (frame-to-keyframe, default: drift only accumulates per keyframe),
            ``frame`` (frame-to-frame; ``odometry`` is the old spelling) or ``model`` (frame-to-model:
            the keyframe estimate is refined by coarse-to-fine point-to-plane ICP against the fused
            surface, 4/2/1 cm).
        model_refresh_keyframes: ``tracking="model"``: the model surface is re-extracted from the
            TSDF after this many new fused keyframes.
        tracking_depth_max: depth beyond this is not used for tracking (noise grows with z^2).
        tracking_bilateral: bilateral-filter the tracking depth (helps noisy sensors).
        keyframe_translation, keyframe_rotation_deg: motion since the last keyframe that makes a
            new keyframe.
        keyframe_min_fitness: overlap (inlier fraction) with the keyframe below which the frame
            becomes a keyframe.
        integrate: ``"keyframes"`` (fuse keyframes only) or ``"all"`` (every tracked frame).
        fuse_first: the first this-many tracked frames are all fused whatever ``integrate`` says, so a
            short clip (a few keyframes) still gives a surface; 0 turns this off.
        min_fitness: tracking failure below this inlier fraction.
        max_jump_translation, max_jump_rotation_deg: tracking failure when the estimate differs
            this much from the constant-velocity prediction.
        use_gt_poses: fuse with the frames' ground-truth ``c2w`` instead of tracking.
        weight_threshold: surface points / mesh vertices need a TSDF weight above this (1.0: seen
            by at least two fused frames, which drops single-frame outliers). Lowered to
            ``fused frames - 1`` when fewer frames were fused (one fused frame: every observed voxel).
        mesh: extract a triangle mesh (the point cloud is always extracted).
        block_count: initial voxel-block hash-map capacity (grows on demand).
        max_blocks: voxel-block budget of the TSDF (0 = unbounded). When a frame to fuse would leave
            more blocks than this in memory, the blocks updated least recently (farthest from the camera
            among equals) are first written to a temporary spool on disk and dropped (down to 3/4
            of the budget); the final mesh and cloud merge them back by TSDF weight, so memory
            stays flat on large scenes. A block is 8^3 voxels, 10 KiB; frame-to-model tracking
            and relocalisation see only the resident blocks.
        device: ``auto`` (CUDA when open3d was built with it, else CPU), ``cpu``, ``cuda[:N]`` or
            open3d's ``CPU:0`` / ``CUDA:N``.
        update_stride: streaming: every this-many-th pixel of a frame's depth goes into its
            :class:`~forward3d.types.Update` (points for a live viewer).
        loop_closure: detect loops (by place and by appearance), verify them geometrically and
            optimise the keyframe pose graph (:mod:`forward3d.pipelines.loopclosure`); when a loop
            closes the trajectory is corrected and the TSDF re-fused from the corrected keyframes.
        loop_radius: loop candidates by place: keyframe centres within this distance (metres).
        loop_min_gap: a loop joins keyframes at least this many keyframes apart.
        loop_min_appearance: loop candidates by appearance: thumbnail correlation above this.
        loop_min_fitness: loop verification: odometry inlier fraction at least this.
        loop_max_rmse: loop verification: odometry inlier RMSE at most this (metres).
        loop_min_information: loop verification: smallest eigenvalue of the odometry information
            matrix per 1,000 stored pixels at least this.
        loop_downsample: keyframes are stored (verified and re-fused) at 1/this resolution.
        feature_tracking: ORB feature matches (OpenCV) between the frame and its reference, lifted
            with depth and aligned by RANSAC (rigid 3D-3D), give a second initial pose besides the
            constant-velocity prediction; both are refined by the dense odometry and the one with the
            lower residual is kept (fast hand-held motion). Loop candidates are pre-aligned the same way.
        feature_count: ORB keypoints detected per frame (at most half of them are stored per keyframe).
        feature_agreement: when the features align, a densely refined pose farther than this
            (metres; or 5 degrees) from their pose is rejected, and with none left the feature pose is used.
        keyframe_cull: a new keyframe within ``keyframe_translation`` / ``keyframe_rotation_deg`` of
            a stored one (a revisited place) is a tracking reference only: it is not stored for loop
            closure, relocalisation or re-fusion, and not fused. With loop closure it is verified against
            the (two nearest) stored keyframes that cover it and re-anchored on them (its pose and its
            frames' follow them), and it links them and the previous keyframe in the pose graph, so
            revisits still close loops; one that does not verify is stored. Memory and loop detection
            then grow with the explored space, not with the sequence length. On by default (1,000
            synthetic frames: ATE 0.38 cm against 0.29 cm with every keyframe stored, peak RSS 668
            against 853 MB); ``--no-keyframe-cull`` stores every keyframe.
        relocalize: when tracking fails, match the frame against the keyframes (thumbnail
            correlation, then features + RANSAC, then ICP against the fused surface) and resume there;
            frames that cannot be relocalised are ``lost`` (last known pose, not fused, not references).
        relocalize_candidates: keyframes tried per relocalisation.
        relocalize_patience: after this many consecutive lost frames tracking restarts from the
            current frame at the last known pose (a new, unconnected piece of map; as without
            ``relocalize``).
        threads: CPU threads of open3d while the back-end runs. 1 (default) makes a run
            reproducible bit for bit: open3d's parallel reductions sum in a scheduling-dependent
            order, and on fast real motion such last-digit differences can flip a tracking decision
            (hololens_000: 10 and 19 cm ATE from the same input with 2 threads). 0: all cores (faster,
            not reproducible). The previous setting is restored afterwards.
    """

    voxel_size: float = 0.02
    sdf_trunc: float | None = None
    depth_min: float = 0.1
    depth_max: float = 8.0
    tracking: Literal["keyframe", "frame", "model"] = option("keyframe", choice_aliases={"odometry": "frame"})
    model_refresh_keyframes: int = 5
    tracking_depth_max: float = 4.0
    tracking_bilateral: bool = option(False, flag="--bilateral")
    keyframe_translation: float = 0.1
    keyframe_rotation_deg: float = 10.0
    keyframe_min_fitness: float = 0.6
    integrate: Literal["keyframes", "all"] = "keyframes"
    fuse_first: int = 5
    min_fitness: float = 0.25
    max_jump_translation: float = 0.3
    max_jump_rotation_deg: float = 30.0
    use_gt_poses: bool = option(False, help="fuse with the dataset's ground-truth poses instead of tracking")
    weight_threshold: float = 1.0
    mesh: bool = True
    block_count: int = 4096
    max_blocks: int = 0
    device: str = "auto"
    update_stride: int = 4
    loop_closure: bool = True
    loop_radius: float = 0.5
    loop_min_gap: int = 10
    loop_min_appearance: float = 0.85
    loop_min_fitness: float = 0.5
    loop_max_rmse: float = 0.015
    loop_min_information: float = 5.0
    loop_downsample: int = 2
    feature_tracking: bool = True
    keyframe_cull: bool = True
    feature_count: int = 2000
    relocalize: bool = True
    relocalize_candidates: int = 5
    relocalize_patience: int = 15
    feature_agreement: float = 0.05
    threads: int = 1

    def __post_init__(self) -> None:
        if self.tracking == "odometry":
            self.tracking = "frame"
        self.validate()

    def validate(self) -> None:
        """Raise ValueError naming the field, the expected and the found value."""
        def bad(name: str, expected: str) -> ValueError:
            return ValueError(f"RGBDConfig.{name}: expected {expected}, found {getattr(self, name)!r}")

        for name in ("voxel_size", "depth_max", "tracking_depth_max", "keyframe_translation", "feature_agreement",
                     "keyframe_rotation_deg", "max_jump_translation", "max_jump_rotation_deg"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise bad(name, "a finite number > 0")
        if self.sdf_trunc is not None and not (math.isfinite(self.sdf_trunc) and self.sdf_trunc >= 2 * self.voxel_size):
            raise bad("sdf_trunc", f"None or >= 2 * voxel_size = {2 * self.voxel_size:g}")
        if not 0 <= self.depth_min < self.depth_max:
            raise bad("depth_min", f"in [0, depth_max={self.depth_max:g})")
        if self.tracking not in TRACKING_MODES:
            raise bad("tracking", "'keyframe', 'frame' (or its old name 'odometry') or 'model'")
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
        if not (isinstance(self.max_blocks, int) and self.max_blocks >= 0):
            raise bad("max_blocks", "an integer >= 0 (0 = unbounded)")
        open3d_device_name(self.device)  # raises on a bad device string
        if not (isinstance(self.update_stride, int) and self.update_stride >= 1):
            raise bad("update_stride", "an integer >= 1")
        if not (isinstance(self.fuse_first, int) and self.fuse_first >= 0):
            raise bad("fuse_first", "an integer >= 0")
        for name in ("loop_radius", "loop_max_rmse"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise bad(name, "a finite number > 0")
        if not (isinstance(self.threads, int) and self.threads >= 0):
            raise bad("threads", "an integer >= 0 (0: all cores)")
        for name in ("loop_min_gap", "loop_downsample", "feature_count", "relocalize_candidates",
                     "relocalize_patience"):
            if not (isinstance(getattr(self, name), int) and getattr(self, name) >= 1):
                raise bad(name, "an integer >= 1")
        if not -1.0 <= self.loop_min_appearance <= 1.0:
            raise bad("loop_min_appearance", "a correlation in [-1, 1]")
        if not 0.0 <= self.loop_min_fitness <= 1.0:
            raise bad("loop_min_fitness", "a fraction in [0, 1]")
        if not self.loop_min_information >= 0:
            raise bad("loop_min_information", ">= 0")

    @property
    def trunc(self) -> float:
        return 4.0 * self.voxel_size if self.sdf_trunc is None else float(self.sdf_trunc)

    def loop_options(self):
        """The :class:`~forward3d.pipelines.loopclosure.LoopClosureOptions` of these settings."""
        from forward3d.pipelines.loopclosure import LoopClosureOptions

        return LoopClosureOptions(downsample=self.loop_downsample, min_gap=self.loop_min_gap, radius=self.loop_radius,
                                  min_appearance=self.loop_min_appearance, min_fitness=self.loop_min_fitness,
                                  max_rmse=self.loop_max_rmse, min_information=self.loop_min_information,
                                  depth_max=min(self.tracking_depth_max, self.depth_max),
                                  max_correspondence_distance=max(0.03, 1.5 * self.voxel_size),
                                  features=self.feature_tracking)


_MIN_VALID_DEPTH = 0.05  # a frame with less valid depth than this fraction never becomes a reference
_MIN_DEPTH_INLIERS = 10  # a feature-only pose needs this many matches whose depths agree (3D-3D)
_VETO_FITNESS = 0.5  # dense overlap needed when the ORB features of a frame and its reference do not match


def open3d_device_name(device: str | None) -> str:
    """``None | "auto" | "cpu" | "cuda" | "cuda:N" | "CPU:0" | "CUDA:N"`` -> open3d's ``"CPU:0"`` / ``"CUDA:N"``.

    ``auto`` (and None) is CUDA:0 when open3d was built with CUDA and sees a GPU, else CPU:0.
    """
    if device is None or str(device).strip().lower() in ("", "auto"):
        try:
            import open3d as o3d

            return "CUDA:0" if o3d.core.cuda.is_available() else "CPU:0"
        except Exception:  # open3d missing: the run reports it; the name does not matter here
            return "CPU:0"
    kind, _, idx = str(device).strip().partition(":")
    kind = kind.upper()
    if kind not in ("CPU", "CUDA") or (idx and not idx.isdigit()):
        raise ValueError(f"rgbd device: expected cpu, cuda, cuda:N (or CPU:0 / CUDA:N), found {device!r}")
    return f"{kind}:{idx or 0}"


def _clean_depth(depth: np.ndarray, dmin: float, dmax: float) -> np.ndarray:
    """``[H, W]`` float32 with 0 wherever the depth is non-finite or outside ``(dmin, dmax]``."""
    d = np.asarray(depth, dtype=np.float32)
    ok = np.isfinite(d) & (d > dmin) & (d <= dmax)
    return np.where(ok, d, np.float32(0.0)).astype(np.float32)


def effective_weight_threshold(threshold: float, num_integrated: int) -> float:
    """The extraction weight threshold: ``threshold``, lowered to ``num_integrated - 1`` (>= 0) when
    fewer frames were fused than it asks for (each fused frame adds at most 1 to a voxel's weight)."""
    wt = min(float(threshold), max(0.0, num_integrated - 1.0))
    if wt < threshold:
        log.info("rgbd: %d frame(s) fused: surface weight threshold lowered from %g to %g",
                 num_integrated, threshold, wt)
    return wt


def check_depth_range(raw: np.ndarray, clean: np.ndarray, cfg: RGBDConfig, where: str) -> None:
    """Refuse a first frame whose valid depth lies (almost) all outside ``depth_min..depth_max``:
    the TSDF would stay empty. The message gives the depth seen and the options that fix it."""
    d = np.asarray(raw, np.float64)
    valid = d[np.isfinite(d) & (d > 0)]
    if valid.size == 0 or np.count_nonzero(clean) >= 0.01 * valid.size:
        return
    med = float(np.median(valid))
    side = "beyond --depth-max" if med > cfg.depth_max else "below --depth-min"
    msg = (f"{where}: {100 * (1 - np.count_nonzero(clean) / valid.size):.0f}% of the valid depth is {side} "
           f"(median depth {med:.3g} m, range {cfg.depth_min:g}-{cfg.depth_max:g} m), so nothing can be fused.")
    f = 10.0 ** round(math.log10(med / 2.0))  # the power of ten that brings the median near 2 m
    hint = ""
    if f != 1.0 and cfg.depth_min < med / f <= cfg.depth_max:
        hint = (f" The values look {f:g}x too {'large' if f > 1 else 'small'}: if the depth is stored in another "
                f"unit, multiply the layout's --depth-scale by {f:g} (e.g. --depth-scale {1000 * f:g} for a "
                "millimetre layout)")
    raise ValueError(msg + hint + f"; if the scene really is this deep, set --depth-max {max(med * 2, 1):.3g}"
                     + (" (and --voxel-size to suit)" if med > cfg.depth_max else ""))


def _empty_result_message(cfg: RGBDConfig, fused: int, n: int, status: list[FrameStatus]) -> str:
    tracked = sum(s.ok for s in status)
    msg = (f"rgbd: the reconstruction is empty: {fused} of {n} frames were fused ({tracked} tracked) "
           f"and no voxel of {cfg.voxel_size:g} m has a surface")
    if fused == 0:
        return msg + ": tracking failed on every frame after the first or no frame had usable depth; check the depth"
    return (msg + f" with weight above {effective_weight_threshold(cfg.weight_threshold, fused):g}; try "
            "--integrate all, a larger --voxel-size, --weight-threshold 0, or check --depth-min/--depth-max "
            "and --depth-scale")


class _StoredKeyframes:
    """Frame indices of the stored keyframes, with a hash grid of their centres (keyframe culling)."""

    def __init__(self, translation: float, rotation_deg: float) -> None:
        from forward3d.pipelines.loopclosure import CentreGrid

        self.translation, self.rotation_deg = float(translation), float(rotation_deg)
        self._make = lambda: CentreGrid(max(self.translation, 1e-3))
        self.grid = self._make()
        self.frames: list[int] = []

    def add(self, frame: int, c2w: np.ndarray) -> None:
        self.grid.add(frame, c2w[:3, 3])
        self.frames.append(frame)

    def covering(self, c2w: np.ndarray, c2ws: list[np.ndarray], k: int = 2) -> list[int]:
        """The (up to ``k``) stored keyframes (frame indices) nearest ``c2w`` within the keyframe
        thresholds, nearest first; empty when none covers it."""
        near = []
        for f in self.grid.near(c2w[:3, 3]):
            rel = np.linalg.inv(c2ws[f]) @ c2w
            d = float(np.linalg.norm(rel[:3, 3]))
            if d <= self.translation and float(np.degrees(rotation_angle(rel[:3, :3]))) <= self.rotation_deg:
                near.append((d, f))
        return [f for _, f in sorted(near)[:k]]

    def rebuild(self, c2ws: list[np.ndarray]) -> None:
        """Re-index the centres after a loop closure moved the poses."""
        self.grid = self._make()
        for f in self.frames:
            self.grid.add(f, c2ws[f][:3, 3])


def _describe(frame: Frame) -> str:
    return frame.source or frame.name or f"frame {frame.index}"


class RGBDBackend(Backend):
    """Weight-free RGB-D reconstruction: tracking + TSDF fusion.

    Args:
        config: an :class:`RGBDConfig`; keyword overrides are applied on top (``RGBDBackend(voxel_size=0.01)``).
    """

    name = "rgbd"
    description = "weight-free RGB-D: frame tracking (open3d odometry) + TSDF fusion"
    config_cls = RGBDConfig
    capabilities = Capabilities(needs_depth=True, metric_scale="always", streaming=True,
                                outputs=frozenset({"cameras", "points", "mesh"}))

    def check_source(self, source: Any, where: str = "") -> None:
        super().check_source(source, where)
        if self.config.use_gt_poses and getattr(source, "has_gt_poses", None) is False:
            raise ValueError(f"{where or 'input'}: --use-gt-poses needs ground-truth poses, and this "
                             f"{getattr(source, 'layout', '')} input has none")

    def stream(self, frames: Iterable[Frame], config: RGBDConfig | None = None, *,
               progress: bool = True, num_frames: int | None = None) -> Iterator[Update]:
        """Reconstruct a stream of RGB-D frames, yielding one :class:`Update` per frame (see
        :meth:`_stream`), with open3d limited to ``config.threads`` CPU threads meanwhile."""
        threads = self.resolve_config(config).threads
        with open3d_threads(threads):
            yield from self._stream(frames, config, progress=progress, num_frames=num_frames)

    def _stream(self, frames: Iterable[Frame], config: RGBDConfig | None = None, *,
                progress: bool = True, num_frames: int | None = None) -> Iterator[Update]:
        """Reconstruct a stream of RGB-D frames, yielding one :class:`Update` per frame.

        Args:
            frames: any iterable of :class:`Frame` with ``depth`` and ``K`` (e.g. ``open_frames(...)``);
                it is consumed once and frames are not kept.
            config: options (default: ``self.config``).
            progress: show a progress bar (frames/s).
            num_frames: total for the progress bar (default: ``len(frames)`` when available).

        After the last update :attr:`result` is a :class:`Reconstruction` with a ``c2w`` and ``K`` for
        every frame (world = first camera, or the ground-truth world with ``use_gt_poses``), ``points``
        (colours, normals), ``mesh``, ``frame_status`` (tracked / given / failed and why, keyframes),
        ``timings`` and ``metadata`` (config, keyframes, fusion statistics). An interrupted run (Ctrl-C)
        or a dropped stream ends with the frames so far and ``interrupted`` set.

        Raises:
            ValueError: a frame without depth (RGB-only input needs another back-end), without
                intrinsics, of a different size than the first, or without a ground-truth pose when
                ``use_gt_poses`` is set; or no frames at all.
        """
        from forward3d.pipelines.loopclosure import thumbnail_descriptor
        from forward3d.pipelines.tsdf import ModelTracker, RGBDTracker, TSDFVolume

        cfg = self.resolve_config(config)
        cfg.validate()
        device = open3d_device_name(cfg.device)
        if num_frames is None:
            try:
                num_frames = len(frames)  # type: ignore[arg-type]
            except TypeError:
                num_frames = None
        self.result = None
        def new_volume() -> TSDFVolume:
            return TSDFVolume(cfg.voxel_size, cfg.trunc, block_count=cfg.block_count, depth_min=cfg.depth_min,
                              depth_max=cfg.depth_max, device=device, max_blocks=cfg.max_blocks)

        volume = new_volume()
        closer = None
        if cfg.loop_closure and not cfg.use_gt_poses:
            from forward3d.pipelines.loopclosure import LoopCloser

            closer = LoopCloser(cfg.loop_options(), device=device)
        corrected = False  # a loop closure moved past poses: the volume is re-fused at the end
        tracker = None if cfg.use_gt_poses else RGBDTracker(
            depth_max=min(cfg.tracking_depth_max, cfg.depth_max), min_fitness=cfg.min_fitness,
            bilateral=(7, 0.1, 5.0) if cfg.tracking_bilateral else None, device=device)
        model = None
        if cfg.tracking == "model" and not cfg.use_gt_poses:
            model = ModelTracker(depth_max=min(cfg.tracking_depth_max, cfg.depth_max), device=device)
        model_stats: dict[str, Any] = {"refined": 0, "rejected": 0, "refreshes": 0, "time_s": 0.0}
        model_stale = 0  # keyframes fused since the last model refresh
        tracking = not cfg.use_gt_poses
        index = reloc = None
        if tracking and cfg.feature_tracking:
            from forward3d.pipelines.features import KeyframeIndex, extract_features

            index = KeyframeIndex(max_features=cfg.feature_count // 2)
        if tracking and cfg.relocalize:
            from forward3d.pipelines.features import KeyframeIndex, Relocaliser, extract_features

            index = index or KeyframeIndex(max_features=cfg.feature_count // 2)
            reloc = Relocaliser(index, cfg.relocalize_candidates, depth_max=min(cfg.tracking_depth_max, cfg.depth_max),
                                device=device)
        track_stats: dict[str, Any] = {"feature_candidates": 0, "feature_chosen": 0, "feature_only": 0, "relocalised": 0, "lost": 0,
                                       "restarts": 0, "features_s": 0.0, "relocalisation_s": 0.0}
        lost_run = 0  # consecutive lost frames
        stored = _StoredKeyframes(cfg.keyframe_translation, cfg.keyframe_rotation_deg)  # frames kept as keyframes

        c2ws: list[np.ndarray] = []
        Ks: list[np.ndarray] = []
        names: list[str] = []
        stamps: list[float] = []
        status: list[FrameStatus] = []
        fitness_log: list[float] = []
        size: tuple[int, int] | None = None
        prev = None  # (prepared, c2w) of the previous frame
        key = None  # (prepared, c2w) of the current keyframe
        prev_i = key_i = 0  # their frame indices
        # the last frame's motion as tracked (c2w_prev^-1 c2w): loop-closure corrections (a re-anchored
        # keyframe, an optimised graph) move poses but are not motion, so they must not enter the prediction
        motion = np.eye(4)
        t_track = t_fuse = 0.0
        interrupted = False
        t0 = time.perf_counter()
        bar = progress_bar(num_frames, "rgbd", unit="frame", enabled=progress)
        try:
            for i, frame in enumerate(frames):
                where = _describe(frame)
                if frame.depth is None:
                    raise ValueError(f"{where}: the rgbd back-end needs depth and this frame has none; "
                                     "RGB-only input (videos, image folders) needs another back-end "
                                     "(forward3d recon --backend slam3r)")
                if frame.K is None:
                    raise ValueError(f"{where}: the rgbd back-end needs camera intrinsics and this frame has none; "
                                     "pass --intrinsics fx fy cx cy (or intrinsics= to open_frames) or use a "
                                     "layout that stores them")
                if size is None:
                    size = (frame.width, frame.height)
                elif (frame.width, frame.height) != size:
                    raise ValueError(f"{where}: expected every frame at {size[0]}x{size[1]} like the first, "
                                     f"found {frame.width}x{frame.height}")
                depth = _clean_depth(frame.depth, cfg.depth_min, cfg.depth_max)
                if i == 0:
                    check_depth_range(frame.depth, depth, cfg, where)
                K = np.asarray(frame.K, np.float64)
                ts = time.perf_counter()
                ok, fit, is_key, reason = True, 1.0, False, ""
                reloc_node = None  # the stored keyframe (node) this frame was relocalised against
                state = "tracked"
                if cfg.use_gt_poses:
                    if frame.c2w is None or not np.isfinite(frame.c2w).all():
                        raise ValueError(f"{where}: use_gt_poses is set but this frame has no ground-truth pose; "
                                         "use a layout with poses (TUM, Redwood .log, ScanNet, Replica, 7-Scenes)")
                    c2w = np.asarray(frame.c2w, np.float64)
                    is_key, state = True, "given"
                    cur = None
                else:
                    cur = tracker.prepare(depth, frame.image, K)  # type: ignore[union-attr]
                    if index is not None:
                        tf = time.perf_counter()
                        cur["features"] = extract_features(frame.image, depth, K, cfg.feature_count, cfg.depth_max,
                                                           keep_2d=True)
                        track_stats["features_s"] += time.perf_counter() - tf
                    if prev is None:
                        c2w, is_key = np.eye(4), True
                    else:
                        c2w, ok, fit, reason = self._track(cfg, tracker, cur, prev, key, motion, i, track_stats)
                        if ok and model is not None:
                            c2w, model_stale = self._refine(cfg, model, volume, depth, K, c2w, model_stats,
                                                            model_stale, where)
                        if not ok and reloc is not None and len(index) and float((depth > 0).mean()) >= _MIN_VALID_DEPTH:
                            tr = time.perf_counter()
                            r_c2w, r_frame, r_reason = reloc.relocalise(
                                cur["features"], thumbnail_descriptor(frame.image), depth, K, lambda f: c2ws[f],
                                volume, cfg.weight_threshold)
                            track_stats["relocalisation_s"] += time.perf_counter() - tr
                            if r_c2w is not None:
                                log.info("rgbd: %s relocalised against keyframe %d after %d lost frame(s)",
                                         where, r_frame, lost_run)
                                track_stats["relocalised"] += 1
                                c2w, ok, fit, is_key = r_c2w, True, 1.0, True
                                reloc_node = stored.frames.index(r_frame) if r_frame in stored.frames else None
                                reason = f"relocalised against keyframe {r_frame}"
                            else:
                                reason = f"{reason}; relocalisation: {r_reason}"
                        if not ok and reloc is not None and lost_run < cfg.relocalize_patience:
                            state, c2w, is_key = "lost", prev[1].copy(), False
                            lost_run += 1
                            track_stats["lost"] += 1
                            log.warning("rgbd: tracking lost at %s (%s); not fused, keeping the last pose", where, reason)
                            cur = None  # keep the previous frame and keyframe as references
                        elif not ok:
                            if reloc is not None:
                                track_stats["restarts"] += 1
                                reason += f"; {lost_run} frames lost: tracking restarts here"
                            lost_run = 0
                            state = "failed"
                            usable = float((depth > 0).mean()) >= _MIN_VALID_DEPTH
                            log.warning("rgbd: tracking failed at %s (%s); using the motion prediction%s",
                                        where, reason, " and re-anchoring there" if usable else
                                        " (too little valid depth: frame skipped)")
                            is_key = usable  # re-anchor tracking on this frame unless it has no depth
                            if not usable:
                                cur = None  # keep the previous frame and keyframe as references
                        elif reason.startswith("relocalised"):
                            lost_run = 0
                        else:
                            lost_run = 0
                            rel = np.linalg.inv(key[1]) @ c2w  # type: ignore[index]
                            is_key = (cfg.tracking == "frame"
                                      or np.linalg.norm(rel[:3, 3]) > cfg.keyframe_translation
                                      or float(np.degrees(rotation_angle(rel[:3, :3]))) > cfg.keyframe_rotation_deg
                                      or fit < cfg.keyframe_min_fitness)
                t_track += time.perf_counter() - ts
                tracked_motion = np.linalg.inv(c2ws[-1]) @ c2w if c2ws else np.eye(4)
                trajectory = None
                store, cover = is_key and cur is not None, None
                if store and ok and cfg.keyframe_cull and stored.frames:
                    covers = stored.covering(c2w, c2ws)
                    cover = covers[0] if covers else None
                    store = cover is None
                if closer is not None:
                    # chained: tracked from the previous keyframe (not relocalised, not re-anchored after a failure)
                    chained = ok and not reason.startswith("relocalised")
                    feats = (None if cur is None or "features" not in cur
                             else cur["features"].head(cfg.feature_count // 2))
                    changed = False
                    if cover is not None:  # re-anchor the culled keyframe on the stored one that covers it
                        changed, fixed = closer.add_culled(c2w, [stored.frames.index(f) for f in covers], depth,
                                                           frame.image, K, tracked=chained, features=feats)
                        if fixed is None:  # not verified: store it (the graph stays connected)
                            store, cover = True, None
                        else:
                            c2w = fixed
                    if cover is None:
                        changed = closer.add_frame(c2w, store, depth, frame.image, K, tracked=chained, features=feats,
                                                   relocalised_on=reloc_node if state == "tracked" else None)
                if store:
                    stored.add(i, c2w)
                if closer is not None:
                    if changed:
                        trajectory = closer.trajectory()  # every frame so far, this one included
                        c2ws[:] = list(trajectory[:-1])
                        c2w = trajectory[-1]
                        if key is not None:
                            key = (key[0], trajectory[key_i])
                            prev = (prev[0], trajectory[prev_i])  # type: ignore[index]
                        corrected = True
                        stored.rebuild(c2ws + [c2w])
                        if model is not None:  # the model surface must follow the corrected poses
                            volume = closer.rebuild(new_volume)
                            model_stale = cfg.model_refresh_keyframes
                integrated = False
                # a culled keyframe (cover: a revisit) is not fused: the stored one has that surface
                fuse_key = is_key and cover is None
                if ok and (fuse_key or cfg.integrate == "all" or volume.num_integrated < cfg.fuse_first):
                    ts = time.perf_counter()
                    volume.integrate(depth, frame.image, K, c2w)
                    t_fuse += time.perf_counter() - ts
                    integrated = True
                    model_stale += int(is_key)
                if is_key and cur is not None:
                    key, key_i = (cur, c2w), i
                    if index is not None and ok and store:
                        index.add(i, cur["features"], thumbnail_descriptor(frame.image))
                if cur is not None:
                    prev, prev_i = (cur, c2w), i
                st = FrameStatus(state, reason, keyframe=is_key)
                c2ws.append(c2w)
                motion = tracked_motion
                Ks.append(K)
                names.append(frame.name or f"{frame.index:06d}")
                stamps.append(float(frame.timestamp))
                status.append(st)
                fitness_log.append(fit)
                bar.update(1)
                if bar.n % 10 == 0:
                    bar.set_postfix(kf=sum(s.keyframe for s in status), fail=sum(not s.ok for s in status),
                                    refresh=False)
                update = self._update(cfg, i, names[-1], frame, depth, K, c2w, st, size, integrated, fit,
                                      len(c2ws), len(c2ws) / max(time.perf_counter() - t0, 1e-9))
                update.trajectory = trajectory
                yield update
        except KeyboardInterrupt:
            if not c2ws:
                raise
            interrupted = True
            log.warning("rgbd: interrupted; keeping the %d frames processed so far", len(c2ws))
        finally:
            bar.close()
        if not c2ws:
            raise ValueError("rgbd: no frames to reconstruct (the input is empty)")
        t_loop = time.perf_counter() - t0
        ts = time.perf_counter()
        t_refuse = 0.0
        if closer is not None and closer.finish():
            corrected = True
            c2ws[:] = list(closer.trajectory())
        if closer is not None and corrected:
            volume = closer.rebuild(new_volume, progress=progress)
            t_refuse = time.perf_counter() - ts
            log.info("rgbd: %d loop closure(s); trajectory corrected, %d keyframes re-fused in %.1f s",
                     len(closer.loops), len(closer.keyframes), t_refuse)
        wt = effective_weight_threshold(cfg.weight_threshold, volume.num_integrated)
        points, mesh = volume.surface(wt, mesh=cfg.mesh)  # one pass over a block spool
        t_extract = time.perf_counter() - ts
        if len(points) == 0:
            raise ValueError(_empty_result_message(cfg, volume.num_integrated, len(c2ws), status))
        n = len(c2ws)
        failures = sum(not s.ok for s in status)
        if failures:
            log.warning("rgbd: tracking failed on %d of %d frames", failures, n)
        keyframes = [i for i, s in enumerate(status) if s.keyframe]
        meta = {
            "config": config_to_dict(cfg),
            "keyframes": keyframes,
            "stored_keyframes": len(stored.frames),
            "stored_keyframe_frames": list(stored.frames),
            "num_integrated": volume.num_integrated,
            "weight_threshold": wt,
            "tracking_fitness_mean": float(np.mean(fitness_log)),
            "num_voxel_blocks": volume.num_blocks,
            "peak_voxel_blocks": volume.peak_blocks,
            "spooled_voxel_blocks": volume.spooled_blocks,
            "block_stream_outs": volume.stream_outs,
            "stream_dropped": bool(getattr(frames, "dropped", False)),
        }
        if model is not None:
            meta["model_tracking"] = model_stats
        if tracking:
            meta["tracking"] = dict(track_stats, failed=sum(s.state == "failed" for s in status),
                                    keyframe_index_mb=0.0 if index is None else index.nbytes / 2**20)
        if closer is not None:
            meta["loop_closure"] = dict(closer.stats(), refused_s=t_refuse)
        timings = {"total_s": t_loop + t_extract, "tracking_s": t_track, "fusion_s": t_fuse,
                   "extraction_s": t_extract, "frames_per_s": n / max(t_loop, 1e-9)}
        if closer is not None:
            timings["loop_closure_s"] = closer.time_s
        self.result = Reconstruction(np.stack(c2ws), np.stack(Ks), size, names, np.asarray(stamps),
                                     points=points, mesh=mesh, backend=self.name, metric_scale=True,
                                     frame_status=status, timings=timings,
                                     interrupted=interrupted or meta["stream_dropped"], metadata=meta)
        log.info("rgbd: %d frames (%d keyframes, %d fused, %d failures) at %.1f frames/s; %d points, %d triangles",
                 n, len(keyframes), volume.num_integrated, failures, n / max(t_loop, 1e-9), len(points),
                 0 if mesh is None else len(mesh.faces))

    @staticmethod
    def _update(cfg: RGBDConfig, i: int, name: str, frame: Frame, depth: np.ndarray, K: np.ndarray,
                c2w: np.ndarray, status: FrameStatus, size: tuple[int, int], integrated: bool, fitness: float,
                count: int, fps: float) -> Update:
        """The frame's :class:`Update`: its depth back-projected to world points every ``update_stride`` pixels."""
        s = cfg.update_stride
        d = depth[::s, ::s]
        m = d > 0
        points = colors = None
        if status.ok:
            v, u = np.nonzero(m)
            uv = np.stack([u * s + 0.5, v * s + 0.5], -1)
            points = camera_to_world(unproject(uv, d[m], K), c2w).astype(np.float32)
            colors = frame.image[::s, ::s][m]
        return Update(i, name, c2w.copy(), K, size, status, points=points, colors=colors,
                      image=frame.image[::s, ::s], num_frames=count, frames_per_s=fps,
                      metadata={"integrated": integrated, "fitness": fitness})

    # ----------------------------------------------------------------------------------------------
    @staticmethod
    def _refine(cfg: RGBDConfig, model, volume, depth: np.ndarray, K: np.ndarray, c2w: np.ndarray, stats: dict[str, Any],
                stale: int, where: str) -> tuple[np.ndarray, int]:
        """Frame-to-model refinement of a tracked pose (the input pose when ICP is not trusted).

        ``stale`` counts the keyframes fused since the model surface was last extracted; returns the
        pose and the updated count.
        """
        ts = time.perf_counter()
        if stale >= cfg.model_refresh_keyframes or (stale > 0 and stats["refreshes"] == 0):
            model.refresh(volume, cfg.weight_threshold)
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

    @staticmethod
    def _track(cfg: RGBDConfig, tracker, cur, prev, key, motion: np.ndarray, frame_index: int,
               stats: dict[str, Any]) -> tuple[np.ndarray, bool, float, str]:
        """Pose of the current frame: against the keyframe, else the previous frame, else predicted.

        ``motion`` (``[4, 4]``) is the previous frame's tracked motion (``c2w_{i-2}^-1 c2w_{i-1}`` before
        any loop-closure correction); the constant-velocity prediction is ``prev c2w @ motion``.

        Each reference is tried from the constant-velocity prediction and, with ``feature_tracking``,
        from the feature alignment (when it differs from the prediction by more than 1 cm / 1 degree);
        the refined pose with the lowest ``rmse / fitness`` that passes the checks is kept. When the
        features align, a refined pose must also stay within ``feature_agreement`` of their pose (the
        dense odometry diverges on fast real motion; RANSAC on ORB matches does not need a guess), and
        when no refined pose does, the feature pose itself is used (only when at least 10 matched points
        of the frame's own depth agree with it: a PnP pose alone does not check that depth). When both frames have features
        (100 or more) and they do not match, a refined pose needs an inlier fraction of at least 0.5
        (a jump to another place: the dense odometry may still find some wrong overlap).
        """
        from forward3d.pipelines.features import align_features

        pred = prev[1] @ motion
        targets = [prev] if cfg.tracking == "frame" or key[0] is prev[0] else [key, prev]
        reason = ""
        for tgt, tgt_c2w in targets:
            inits = [("prediction", np.linalg.inv(tgt_c2w) @ pred)]
            fa = None
            veto = False  # both frames have features and they do not match: a dense result needs real overlap
            if "features" in cur and "features" in tgt:
                ts = time.perf_counter()
                fa = align_features(cur["features"], tgt["features"])
                stats["features_s"] += time.perf_counter() - ts
                log.debug("rgbd: frame %d -> %s features: %s, %d inliers of %d matches (%s) %s", frame_index,
                          "previous" if tgt is prev[0] else "keyframe", "ok" if fa.ok else "failed", fa.inliers,
                          fa.matches, fa.method, fa.reason)
                if not fa.ok:
                    veto = min(len(cur["features"]), len(tgt["features"])) >= 100
                    fa = None
                else:
                    d = np.linalg.inv(inits[0][1]) @ fa.src_to_tgt
                    if np.linalg.norm(d[:3, 3]) > 0.01 or float(np.degrees(rotation_angle(d[:3, :3]))) > 1.0:
                        inits.append(("features", fa.src_to_tgt))
                        stats["feature_candidates"] += 1
            best = None
            for kind, init in inits:
                res = tracker.align(cur, tgt, init)
                if not res.ok:
                    reason = res.reason
                    continue
                if veto and res.fitness < _VETO_FITNESS:
                    reason = (f"the features do not match the reference and the dense overlap is only "
                              f"{res.fitness:.2f} < {_VETO_FITNESS}")
                    continue
                c2w = tgt_c2w @ res.src_to_tgt
                # the prediction's result must stay near the motion model, the features' near the features
                ref, max_t, max_r = ((pred, cfg.max_jump_translation, cfg.max_jump_rotation_deg) if kind == "prediction"
                                     else (tgt_c2w @ init, 0.1, 10.0))
                ref_name = kind
                if fa is not None:
                    ref, max_t, max_r, ref_name = tgt_c2w @ fa.src_to_tgt, cfg.feature_agreement, 5.0, "features"
                jump = np.linalg.inv(ref) @ c2w
                if np.linalg.norm(jump[:3, 3]) > max_t or float(np.degrees(rotation_angle(jump[:3, :3]))) > max_r:
                    reason = (f"implausible jump of {np.linalg.norm(jump[:3, 3]):.2f} m / "
                              f"{np.degrees(rotation_angle(jump[:3, :3])):.1f} deg from the {ref_name}")
                    continue
                cost = res.rmse / max(res.fitness, 1e-3)
                log.debug("rgbd: frame %d -> %s, from the %s: fitness %.3f rmse %.4f cost %.4f", frame_index,
                          "previous" if tgt is prev[0] else "keyframe", kind, res.fitness, res.rmse, cost)
                if best is None or cost < best[0]:
                    best = (cost, c2w, res.fitness, kind)
            if best is None and fa is not None and fa.depth_inliers >= _MIN_DEPTH_INLIERS:
                # the frame's own depth must agree with the reference at the feature pose: a PnP pose
                # (pixels only) of a frame without depth, or with garbage depth, is not used (it would be fused)
                jump = np.linalg.inv(pred) @ tgt_c2w @ fa.src_to_tgt
                if (np.linalg.norm(jump[:3, 3]) <= cfg.max_jump_translation
                        and float(np.degrees(rotation_angle(jump[:3, :3]))) <= cfg.max_jump_rotation_deg):
                    stats["feature_only"] += 1
                    return tgt_c2w @ fa.src_to_tgt, True, fa.inliers / max(fa.matches, 1), ""
            if best is not None:
                stats["feature_chosen"] += best[3] == "features"
                return best[1], True, best[2], ""
        return pred, False, 0.0, reason or "tracking failed"
