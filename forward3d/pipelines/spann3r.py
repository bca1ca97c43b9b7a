"""Spann3R reconstruction: frames -> a camera for every frame + world point maps + a fused cloud.

Streaming (default): frames of any source (video, folder, dataset, live stream) are cropped to the
model's 224 x 224 with the reference's DUSt3R crop (:func:`crop_transform_dust3r`) and pushed one by
one; each frame's prediction is final once the next frame has been decoded, so an update comes out
one frame behind the input. Memory is flat in the sequence length: the network's spatial memory is
bounded (:class:`~forward3d.models.spann3r.config.MemoryConfig`) and the per-frame results are
spooled to disk (:class:`~forward3d.pipelines.spool.FrameSpool`).

Offline (``offline=True``): the reference's offline reconstruction (initial pair from the pairwise
DUSt3R confidences, greedy next-best view); N^2 decodes, for short sequences.

Cameras (everything is in the camera frame of the first frame = the world frame):

- intrinsics: the focal of the first frame's point map (Weiszfeld, principal point at the crop
  centre, :func:`~forward3d.pipelines.slam3r.cameras.estimate_focal`), shared by all frames as in
  the reference; or given ones (``intrinsics``, ``use_frame_intrinsics``); mapped back to each
  frame's original resolution through its crop.
- poses: weighted PnP of each frame's world points against its pixel grid
  (:func:`~forward3d.geometry.pnp.solve_pnp`: orthogonal iteration = iterated weighted Procrustes,
  weights ``(c - 1) / c``, started from the previous frame's pose); ``pose_solver="opencv"`` is the
  reference demo's ``cv2.solvePnPRansac`` instead.
- RGB-D: a global metric scale (median of the per-frame depth fits over the first
  ``depth_warmup`` frames, :func:`~forward3d.pipelines.slam3r.common.fit_depth_scale`), then
  optionally each frame's points corrected to its sensor depth along the rays (as SLAM3R's local
  maps). Without depth the scale is the network's (relative).

The back-end is registered as ``spann3r`` (``forward3d recon VIDEO --backend spann3r --weights
spann3r.pth``); every option is a field of :class:`Spann3RPipelineConfig`.

Example::

    pipe = Spann3RPipeline(weights="checkpoints/spann3r.pth", device="cuda")   # loaded on first use
    for update in pipe.stream(open_frames("video.mp4")):                       # forward3d.types.Update
        viewer.add(update.points, update.colors, update.c2w)
    recon = pipe.result
    recon = Spann3RPipeline(models=OracleSpann3R(scene)).run(frames)          # any Spann3RModels
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Literal

import numpy as np
import torch
from tqdm.auto import tqdm

from forward3d.config import option
from forward3d.device import resolve_device
from forward3d.geometry.camera import pixel_grid
from forward3d.geometry.pnp import solve_pnp, solve_pnp_ransac
from forward3d.models.spann3r.config import MemoryConfig
from forward3d.models.spann3r.protocol import FramePrediction, Spann3RModels
from forward3d.pipelines.slam3r.cameras import estimate_focal
from forward3d.pipelines.slam3r.common import (
    PreparedFrame,
    correct_points_with_depth,
    crop_transform_dust3r,
    fit_depth_scale,
    prepare_frame,
)
from forward3d.pipelines.base import Backend, Capabilities
from forward3d.pipelines.slam3r.backend import DTYPES
from forward3d.pipelines.slam3r.result import depth_scale_array, valid_world_mask
from forward3d.pipelines.spool import FrameSpool, trim_heap
from forward3d.types import Frame, FrameStatus, Reconstruction, Update

logger = logging.getLogger(__name__)

__all__ = ["Spann3RPipelineConfig", "Spann3RPipeline", "run_spann3r"]

_MEMORY_FIELDS = ("long_mem_size", "work_mem_size", "attn_thresh", "sim_thresh")


@dataclass
class Spann3RPipelineConfig:
    """Options of the Spann3R back-end.

    Attributes:
        weights: Spann3R weights: the official ``spann3r.pth``, a ``.safetensors`` file, a folder
            (weights + optional config.json) or a hub id.
        model_config: config.json of the weights when it is not beside them (other sizes than the
            official model).
        device: auto (CUDA when available), cpu, cuda or cuda:N.
        dtype: compute dtype (bf16/fp16: autocast; the heads and the memory stay fp32).
        image_size: (H, W) the frames are cropped to (the official model: 224 224).
        offline: the reference's offline reconstruction instead of streaming (all frames in RAM).
        offline_max_frames: refuse longer inputs in offline mode (N^2 decodes).
        memory: a whole MemoryConfig overriding the network's spatial memory (Python only; None = the
            model's: ``long_mem_size=4000, work_mem_size=5, attn_thresh=5e-4, sim_thresh=0.95``).
        long_mem_size: long-term memory slots kept by a prune (None: the model's, 4000).
        work_mem_size: frames in the working memory (None: the model's, 5).
        attn_thresh: memory read attention entries below it are zeroed (None: the model's, 5e-4).
        sim_thresh: skip a memory write whose key is more similar than this to the working memory
            (None: the model's, 0.95; 1 = never skip).
        conf_thresh: a point is valid when ``(c - 1) / c > conf_thresh`` (reference demo: 1e-3).
        num_points: the fused cloud is a uniform sample of at most this many valid points.
        intrinsics: ``(fx, fy, cx, cy)`` in pixels of the ORIGINAL images; None = estimate.
        use_frame_intrinsics: use ``Frame.K`` when a frame carries one (else estimate).
        pose_solver: ``"pnp"`` (weighted PnP, ours) or ``"opencv"`` (``cv2.solvePnPRansac``,
            unweighted, the reference demo; needs ``forward3d[opencv]``).
        camera_max_points: points per frame used by the focal and pose fits.
        depth_correction: use sensor depth when the first frame carries one (metric scale).
        depth_warmup: frames whose depth fits give the global scale (their updates are held back).
        depth_per_frame: also correct each frame's points to its own sensor depth.
        depth_fit: per-frame fit, ``"scale"`` or ``"scale_shift"``.
        depth_min, depth_max, depth_min_pixels: valid sensor range (m) and minimum pixel pairs.
        spool_dir: per-frame results go here (None: a temporary folder).
        seed: seed of the fused-cloud sampling.
    """

    weights: str = option("spann3r.pth", metavar="WEIGHTS")
    model_config: str | None = option(None, metavar="JSON")
    device: str = "auto"
    dtype: Literal["fp32", "bf16", "fp16"] = "fp32"
    image_size: tuple[int, int] = option((224, 224), metavar=("H", "W"))
    offline: bool = False
    offline_max_frames: int = 200
    memory: MemoryConfig | None = option(None, cli=False)
    long_mem_size: int | None = option(None, metavar="N")
    work_mem_size: int | None = option(None, metavar="N")
    attn_thresh: float | None = option(None, metavar="X")
    sim_thresh: float | None = option(None, metavar="X")
    conf_thresh: float = 1e-3
    num_points: int = 2_000_000
    intrinsics: tuple[float, float, float, float] | None = option(None, cli=False)
    use_frame_intrinsics: bool = option(False, aliases=("--use-dataset-intrinsics",))
    pose_solver: Literal["pnp", "opencv"] = "pnp"
    camera_max_points: int = 4096
    depth_correction: bool = True
    depth_warmup: int = 5
    depth_per_frame: bool = True
    depth_fit: Literal["scale", "scale_shift"] = "scale"
    depth_min: float = 1e-3
    depth_max: float = 100.0
    depth_min_pixels: int = 32
    spool_dir: str | None = option(None, metavar="DIR")
    seed: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.memory, dict):
            self.memory = MemoryConfig(**self.memory)
        if self.dtype not in DTYPES:
            raise ValueError(f"Spann3RPipelineConfig.dtype: expected one of {sorted(DTYPES)}, found {self.dtype!r}")
        if len(tuple(self.image_size)) != 2 or min(int(v) for v in self.image_size) < 1:
            raise ValueError(f"Spann3RPipelineConfig.image_size: expected (H, W), found {self.image_size!r}")
        self.image_size = (int(self.image_size[0]), int(self.image_size[1]))
        if self.pose_solver not in ("pnp", "opencv"):
            raise ValueError(f"Spann3RPipelineConfig.pose_solver: expected 'pnp' or 'opencv', found {self.pose_solver!r}")
        if self.depth_fit not in ("scale", "scale_shift"):
            raise ValueError(f"Spann3RPipelineConfig.depth_fit: expected 'scale' or 'scale_shift', found {self.depth_fit!r}")
        if not 0.0 <= float(self.conf_thresh) < 1.0:
            raise ValueError(f"Spann3RPipelineConfig.conf_thresh: expected a value in [0, 1), found {self.conf_thresh}")
        for name in ("offline_max_frames", "num_points", "camera_max_points", "depth_warmup"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"Spann3RPipelineConfig.{name}: expected >= 1, found {getattr(self, name)}")
        if not 0.0 < self.depth_min < self.depth_max:
            raise ValueError(f"Spann3RPipelineConfig: expected 0 < depth_min < depth_max, found "
                             f"{self.depth_min}, {self.depth_max}")
        if self.intrinsics is not None:
            if len(self.intrinsics) != 4 or min(float(self.intrinsics[0]), float(self.intrinsics[1])) <= 0:
                raise ValueError(f"Spann3RPipelineConfig.intrinsics: expected (fx, fy, cx, cy) with fx, fy > 0, "
                                 f"found {self.intrinsics}")
            self.intrinsics = tuple(float(v) for v in self.intrinsics)  # type: ignore[assignment]

    def memory_config(self, model_memory: MemoryConfig | None = None) -> MemoryConfig | None:
        """The spatial memory to run with: :attr:`memory` (else ``model_memory``, the network's) with
        the fields given one by one (``long_mem_size``...) on top; None = the network's unchanged."""
        given = {k: getattr(self, k) for k in _MEMORY_FIELDS if getattr(self, k) is not None}
        if not given:
            return self.memory
        base = self.memory or model_memory or MemoryConfig()
        return dataclasses.replace(base, **given)

    @property
    def conf_min(self) -> float:
        """The confidence ``c`` above which a point is valid: ``(c - 1) / c > conf_thresh``."""
        return 1.0 / (1.0 - float(self.conf_thresh))

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["intrinsics"] = None if self.intrinsics is None else list(self.intrinsics)
        d["image_size"] = list(self.image_size)
        return d


@dataclass
class _Held:
    """A frame's prepared data while its prediction is pending or its scale unknown."""

    prep: PreparedFrame
    pred: FramePrediction | None = None
    c2w: np.ndarray | None = None  # model units
    K_model: np.ndarray | None = None
    info: dict = field(default_factory=dict)
    status: FrameStatus = field(default_factory=lambda: FrameStatus("registered"))


def _conf_weight(conf: np.ndarray) -> np.ndarray:
    return np.clip((conf - 1.0) / np.maximum(conf, 1e-6), 0.0, 1.0)


class _Run:
    """One reconstruction: cameras, scale, spool and the final :class:`Reconstruction`."""

    def __init__(self, models: Spann3RModels, cfg: Spann3RPipelineConfig, mode: str, progress: bool = True) -> None:
        self.models, self.cfg, self.mode = models, cfg, mode
        self.h, self.w = (int(x) for x in models.image_size)
        self.pixels = pixel_grid(self.h, self.w).reshape(-1, 2)
        self.held: dict[int, _Held] = {}
        self.done: list[int] = []  # frame ids in emission order
        self.names: list[str] = []
        self.timestamps: list[float] = []
        self.c2w: list[np.ndarray] = []
        self.K: list[np.ndarray] = []
        self.valid_counts: list[int] = []
        self.infos: list[dict] = []
        self.status: list[FrameStatus] = []
        self.image_size: tuple[int, int] | None = None
        self.K_model: np.ndarray | None = None  # the shared model-crop intrinsics
        self.focal: float | None = None
        self.prev_c2w: np.ndarray | None = None
        self.metric: bool | None = None  # None until the first frame decides
        self.scale: float | None = None  # global scale (None: not yet known)
        self.fits: list[float] = []
        self.waiting: list[int] = []  # ids waiting for the scale
        self.spool = FrameSpool(cfg.spool_dir, self.h, self.w, prefix="forward3d-spann3r-")
        self.timings = {"prepare": 0.0, "model": 0.0, "cameras": 0.0}
        self.extra: dict = {}
        self.max_held = 0  # frames held in memory at once (streaming: 2, plus the depth warm-up)
        self.t_start = time.perf_counter()
        self.bar = tqdm(desc=f"Spann3R {mode}", unit="frame", disable=not progress)

    # ------------------------------------------------------------------ input
    def prepare(self, frame: Frame, k: int) -> PreparedFrame:
        if not isinstance(frame, Frame):
            raise TypeError(f"Spann3R: expected forward3d.types.Frame items, found {type(frame).__name__} at position {k}")
        t0 = time.perf_counter()
        crop = crop_transform_dust3r(frame.width, frame.height, (self.h, self.w))
        p = prepare_frame(frame, (self.h, self.w), crop)
        if self.image_size is None:
            self.image_size = (frame.width, frame.height)
        self.held[k] = _Held(p)
        self.max_held = max(self.max_held, len(self.held))
        self.timings["prepare"] += time.perf_counter() - t0
        return p

    # ------------------------------------------------------------------ cameras
    def _intrinsics(self, held: _Held, pts: np.ndarray, valid: np.ndarray) -> np.ndarray:
        cfg, p = self.cfg, held.prep
        if cfg.intrinsics is not None:
            fx, fy, cx, cy = cfg.intrinsics
            held.info["intrinsics"] = "user"
            return p.crop.K_to_model(np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]]))
        if cfg.use_frame_intrinsics and p.K is not None:
            held.info["intrinsics"] = "frame"
            return p.crop.K_to_model(p.K)
        if self.K_model is None:  # the first frame's point map is in its own camera
            f = estimate_focal(pts, valid, max_points=cfg.camera_max_points)
            held.info["intrinsics"] = "estimated" if f is not None else "fallback"
            self.focal = f if f is not None else float(max(self.h, self.w))  # ~53 degrees without points
            self.K_model = np.array([[self.focal, 0.0, self.w / 2.0], [0.0, self.focal, self.h / 2.0], [0.0, 0.0, 1.0]])
        held.info.setdefault("intrinsics", "estimated")
        return self.K_model

    def camera(self, held: _Held, first: bool) -> None:
        """Intrinsics and pose (model units) of a frame with a prediction."""
        t0 = time.perf_counter()
        cfg = self.cfg
        pts = held.pred.points.numpy().astype(np.float64)
        conf = held.pred.confidence.numpy()
        valid = (conf > cfg.conf_min) & np.isfinite(pts).all(-1)
        held.K_model = self._intrinsics(held, pts, valid)
        if first:
            held.c2w = np.eye(4)
            held.info["pose"] = "reference frame"
            held.status = FrameStatus("registered", reason="the world frame")
        else:
            flat = valid.reshape(-1)
            X, uv = pts.reshape(-1, 3)[flat], self.pixels[flat]
            if cfg.pose_solver == "opencv":
                r = solve_pnp_ransac(X, uv, held.K_model)
            else:
                r = solve_pnp(X, uv, held.K_model, weights=_conf_weight(conf).reshape(-1)[flat],
                              c2w_init=self.prev_c2w, max_points=cfg.camera_max_points)
            if not r.ok:
                logger.warning("Spann3R frame %s: pose not determined (%d valid points); using the previous pose",
                               held.prep.name, int(flat.sum()))
            held.c2w = r.c2w if r.ok else (self.prev_c2w.copy() if self.prev_c2w is not None else np.eye(4))
            held.info.update(pose="pnp" if r.ok else "previous", pose_error_px=r.median_error,
                             pose_inliers=r.inlier_ratio)
            held.status = (FrameStatus("registered") if r.ok else
                           FrameStatus("failed", reason=f"pose not determined ({int(flat.sum())} valid points); "
                                                        "the previous pose"))
        self.prev_c2w = held.c2w
        self.timings["cameras"] += time.perf_counter() - t0

    # ------------------------------------------------------------------ scale
    def _depth_fit(self, held: _Held, c2w: np.ndarray, pts: np.ndarray, valid: np.ndarray, fit: str,
                   seed: int) -> tuple[float, float, float] | None:
        depth = held.prep.depth
        if depth is None:
            return None
        w2c = np.linalg.inv(c2w)
        z = pts @ w2c[2, :3] + w2c[2, 3]
        cfg = self.cfg
        return fit_depth_scale(z, depth, valid, fit, cfg.depth_min, cfg.depth_max, cfg.depth_min_pixels, seed)

    def add_prediction(self, pred: FramePrediction, first: bool) -> list[Update]:
        """A frame's final prediction: its camera, then its update once the scale is known."""
        held = self.attach(pred)
        self.camera(held, first)
        return self.scale_and_emit(int(pred.frame_id))

    def attach(self, pred: FramePrediction) -> _Held:
        k = int(pred.frame_id)
        if k not in self.held:
            raise ValueError(f"Spann3R: the model returned frame id {k}, which was not pushed")
        held = self.held[k]
        held.pred = pred
        held.info.update(pred.info)
        return held

    def scale_and_emit(self, k: int) -> list[Update]:
        """Emit frame ``k`` (camera known); during the depth warm-up, hold it until the scale is."""
        held, cfg = self.held[k], self.cfg
        assert held.pred is not None and held.c2w is not None
        if self.metric is None:  # the first frame decides: metric when it carries sensor depth
            self.metric = bool(cfg.depth_correction and held.prep.depth is not None)
            if not self.metric:
                self.scale = 1.0
        if self.scale is None:
            pts = held.pred.points.numpy().astype(np.float64)
            valid = held.pred.confidence.numpy() > cfg.conf_min
            f = self._depth_fit(held, held.c2w, pts, valid, "scale", cfg.seed + k)
            if f is not None:
                self.fits.append(f[0])
            self.waiting.append(k)
            if len(self.waiting) < cfg.depth_warmup:
                return []
            self._fix_scale()
            return [self.emit(i) for i in self._take_waiting()]
        return [self.emit(k)]

    def _fix_scale(self) -> None:
        if self.fits:
            self.scale = float(np.median(self.fits))
            logger.info("Spann3R: metric scale %.4g from %d depth fits", self.scale, len(self.fits))
        else:
            self.scale, self.metric = 1.0, False
            logger.warning("Spann3R: no usable sensor depth in the first %d frames; the scale stays relative",
                           len(self.waiting))

    def _take_waiting(self) -> list[int]:
        out, self.waiting = self.waiting, []
        return out

    def flush(self) -> list[Update]:
        if self.waiting and self.scale is None:
            self._fix_scale()
        return [self.emit(i) for i in self._take_waiting()]

    # ------------------------------------------------------------------ output
    def emit(self, k: int) -> Update:
        t0 = time.perf_counter()
        cfg = self.cfg
        held = self.held.pop(k)
        p, pred = held.prep, held.pred
        assert pred is not None and held.c2w is not None and held.K_model is not None and self.scale is not None
        s = self.scale
        pts = pred.points.numpy().astype(np.float64) * s
        conf = pred.confidence.numpy().astype(np.float32)
        c2w = held.c2w.copy()
        c2w[:3, 3] *= s
        info = dict(held.info, depth_scale=s if self.metric else None)
        if self.metric and cfg.depth_per_frame:
            valid = conf > cfg.conf_min
            f = self._depth_fit(held, c2w, pts, valid, cfg.depth_fit, cfg.seed + k)
            if f is not None:
                w2c = np.linalg.inv(c2w)
                cam = torch.from_numpy(pts @ w2c[:3, :3].T + w2c[:3, 3])
                cam = correct_points_with_depth(cam, f[0], f[1]).numpy()
                pts = cam @ c2w[:3, :3].T + c2w[:3, 3]
                info.update(frame_depth_scale=f[0], frame_depth_shift=f[1])
        pts32 = pts.astype(np.float32)
        K = p.crop.K_to_original(held.K_model)
        self.spool.write(pts32, conf, p.colors)
        self.valid_counts.append(int(valid_world_mask(pts32, conf, cfg.conf_min).sum()))
        self.done.append(k)
        self.names.append(p.name)
        self.timestamps.append(p.timestamp)
        self.c2w.append(c2w)
        self.K.append(K)
        self.infos.append(info)
        self.status.append(held.status)
        self.bar.update(1)
        self.timings["cameras"] += time.perf_counter() - t0
        if len(self.done) % 64 == 0:
            trim_heap()
        n = len(self.done)
        return Update(index=k, name=p.name, c2w=c2w, K=K, image_size=(p.crop.src_w, p.crop.src_h), status=held.status,
                      points=pts32, colors=p.colors, confidence=conf, image=p.colors, num_frames=n,
                      frames_per_s=n / max(time.perf_counter() - self.t_start, 1e-9), metadata=info)

    def finish(self, extra: dict) -> Reconstruction:
        self.bar.close()
        self.spool.close()
        n = len(self.done)
        if n == 0:
            raise ValueError("Spann3R: expected at least 2 frames to reconstruct, found none with results")
        order = np.argsort(self.done, kind="stable")
        if not np.array_equal(order, np.arange(n)):
            raise ValueError("Spann3R: internal error, frames were emitted out of order")
        cfg, spool = self.cfg, self.spool
        cloud = spool.fuse(int(sum(self.valid_counts)), cfg.conf_min, cfg.num_points, cfg.seed)
        points, conf, colors = spool.arrays()
        total = time.perf_counter() - self.t_start
        meta = {
            "backend": "spann3r",
            "mode": self.mode,
            "num_frames": n,
            "metric_scale": bool(self.metric),
            "depth_scale": self.scale if self.metric else None,
            "depth_scales": [i.get("frame_depth_scale") for i in self.infos],
            "focal_model_px": self.focal,
            "model_image_size": [self.w, self.h],
            "skipped_writes": [self.done[j] for j, i in enumerate(self.infos) if i.get("skipped")],
            "memory_prunes": [self.done[j] for j, i in enumerate(self.infos) if i.get("pruned")],
            "memory_size": [i.get("memory_size") for i in self.infos],
            "pose_error_px": [i.get("pose_error_px") for i in self.infos],
            "intrinsics": self.infos[0].get("intrinsics"),
            "max_frames_held": int(self.max_held),
            "spool_dir": None if spool.temporary else os.fspath(spool.dir),
            "fps": n / max(total, 1e-9),
            "config": cfg.to_dict(),
            **self.extra,
            **extra,
        }
        timings = {f"{k}_s": v for k, v in self.timings.items()}
        timings.update(total_s=total, frames_per_s=n / max(total, 1e-9))
        fits = [None if i.get("frame_depth_scale") is None else (i["frame_depth_scale"],) for i in self.infos]
        w, h = self.image_size or (self.w, self.h)
        return Reconstruction(c2w=np.stack(self.c2w), K=np.stack(self.K), image_size=(w, h),
                              frame_names=list(self.names), timestamps=np.array(self.timestamps),
                              point_maps=points, confidences=conf, point_map_colors=colors, points=cloud,
                              backend="spann3r", metric_scale=bool(self.metric), depth_scales=depth_scale_array(fits),
                              frame_status=list(self.status), timings=timings,
                              interrupted=bool(extra.get("interrupted") or extra.get("stream_dropped")), metadata=meta)


class Spann3RPipeline(Backend):
    """The ``spann3r`` back-end over any :class:`~forward3d.models.spann3r.protocol.Spann3RModels`
    (the real ``Spann3REngine``, loaded from ``config.weights`` on first use, or an oracle).

    Args:
        config: :class:`Spann3RPipelineConfig` (or a dict of its fields); ``overrides`` on top.
        models: the network behind the protocol; default: loaded from ``config.weights``.
    """

    name = "spann3r"
    description = "Spann3R-compatible streaming reconstruction with spatial memory (official spann3r.pth)"
    config_cls = Spann3RPipelineConfig
    capabilities = Capabilities(uses_depth=True, needs_weights=True, metric_scale="with_depth", streaming=True,
                                outputs=frozenset({"cameras", "point_maps", "points"}))

    def __init__(self, config: Spann3RPipelineConfig | dict | None = None, *, models: Spann3RModels | None = None,
                 **overrides: Any) -> None:
        super().__init__(config, **overrides)
        if models is not None and not isinstance(models, Spann3RModels):
            raise TypeError(f"Spann3RPipeline: expected an object with the Spann3RModels protocol "
                            f"(image_size, device, start, offline), found {type(models).__name__}")
        self._models = models

    @property
    def models(self) -> Spann3RModels:
        """The network (loaded from ``config.weights`` on first access when none was given)."""
        if self._models is None:
            from forward3d.models.spann3r.engine import Spann3REngine

            cfg = self.config
            self._models = Spann3REngine.from_pretrained(
                cfg.weights, device=resolve_device(cfg.device), dtype=DTYPES[cfg.dtype], config=cfg.model_config,
                image_size=cfg.image_size)
        return self._models

    @classmethod
    def from_pretrained(cls, source: str | os.PathLike, config: Spann3RPipelineConfig | None = None,
                        device: str | torch.device | None = None, dtype: str | torch.dtype | None = None,
                        **engine_kwargs) -> "Spann3RPipeline":
        """Load the network (``spann3r.pth``, safetensors, folder or hub id) into a ``Spann3REngine`` now."""
        from forward3d.models.spann3r.engine import Spann3REngine

        kw = dict(engine_kwargs)
        if dtype is not None:
            kw["dtype"] = dtype
        return cls(config, models=Spann3REngine.from_pretrained(source, device=device, **kw))

    def configure_for_source(self, source: Any, config: Spann3RPipelineConfig) -> Spann3RPipelineConfig:
        """Intrinsics given for the input (``--intrinsics``) are used as given, not estimated."""
        if getattr(source, "intrinsics", None) is not None and not config.use_frame_intrinsics:
            return dataclasses.replace(config, use_frame_intrinsics=True)
        return config

    def check_source(self, source: Any, where: str = "") -> None:
        """Refuse, before any work, an offline run over more frames than ``offline_max_frames``."""
        super().check_source(source, where)
        cfg = self.config
        try:
            n = len(source)
        except TypeError:  # a live stream: unknown length
            return
        if cfg.offline and n > cfg.offline_max_frames:
            raise ValueError(f"{where or 'input'}: {n} frames for the Spann3R offline mode, which decodes N^2 pairs "
                             f"(at most --offline-max-frames {cfg.offline_max_frames}); use --stride / --max-frames or "
                             "the streaming mode (--no-offline)")

    # ------------------------------------------------------------------------------------------
    def stream(self, frames: Iterable[Frame], config: Spann3RPipelineConfig | None = None, *,
               progress: bool = True) -> Iterator[Update]:
        """Per-frame :class:`~forward3d.types.Update` s, one frame behind the input (offline mode: all
        at the end); :attr:`result` holds the final :class:`Reconstruction` once the generator is
        exhausted. An interruption (Ctrl-C) or a dropped stream keeps the frames processed so far
        (``interrupted``)."""
        self.result = None
        cfg = self.resolve_config(config)
        models = self.models
        memory = cfg.memory_config(getattr(models, "memory", None))
        run = _Run(models, cfg, "offline" if cfg.offline else "online", progress=progress)
        interrupted = False
        try:
            if cfg.offline:
                yield from self._offline(run, frames, cfg, memory)
            else:
                stream = models.start(memory)
                first = True
                k = 0
                try:
                    for k, frame in enumerate(frames):
                        p = run.prepare(frame, k)
                        t0 = time.perf_counter()
                        preds = stream.push(p.image, k)
                        run.timings["model"] += time.perf_counter() - t0
                        p.image = torch.empty(0)
                        for pred in preds:
                            yield from run.add_prediction(pred, first)
                            first = False
                except KeyboardInterrupt:
                    interrupted = True
                    logger.warning("Spann3R: interrupted; keeping the frames processed so far")
                t0 = time.perf_counter()
                preds = stream.finish()
                run.timings["model"] += time.perf_counter() - t0
                for pred in preds:
                    yield from run.add_prediction(pred, first)
                    first = False
                yield from run.flush()
            rec = run.finish({"interrupted": interrupted, "stream_dropped": bool(getattr(frames, "dropped", False))})
        except BaseException:
            run.spool.discard()
            raise
        self.result = rec

    def _offline(self, run: _Run, frames: Iterable[Frame], cfg: Spann3RPipelineConfig,
                 memory: MemoryConfig | None) -> Iterator[Update]:
        images = []
        for k, frame in enumerate(frames):
            if k >= cfg.offline_max_frames:
                raise ValueError(f"Spann3R offline: more than offline_max_frames={cfg.offline_max_frames} frames "
                                 "(the offline pass decodes N^2 pairs); subsample the input or use streaming mode")
            p = run.prepare(frame, k)
            images.append(p.image)
            p.image = torch.empty(0)
        if len(images) < 2:
            raise ValueError(f"Spann3R: expected at least 2 frames, found {len(images)}")
        t0 = time.perf_counter()
        order, preds = run.models.offline(torch.stack(images), list(range(len(images))), memory)
        run.timings["model"] += time.perf_counter() - t0
        del images
        if sorted(order) != list(range(len(preds))) or [p.frame_id for p in preds] != list(order):
            raise ValueError(f"Spann3R offline: the model returned an inconsistent order {order}")
        for j, pred in enumerate(preds):  # cameras in processing order (each pose starts from the previous)
            held = run.attach(pred)
            held.info["offline_rank"] = j
            run.camera(held, j == 0)
        run.extra["offline_order"] = list(order)
        updates = []
        for k in range(len(preds)):  # scale and output in input order
            updates.extend(run.scale_and_emit(k))
        updates.extend(run.flush())
        yield from updates


def run_spann3r(models: Spann3RModels, frames: Iterable[Frame], config: Spann3RPipelineConfig | None = None,
                callback: Callable[[Update], None] | None = None, progress: bool = False) -> Reconstruction:
    """Functional form of :meth:`Spann3RPipeline.run`."""
    return Spann3RPipeline(config, models=models).run(frames, progress=progress, callback=callback)
