"""SLAM3R offline reconstruction: the reference ``scene_recon_pipeline_offline`` steps 1-8.

1. encode every frame once; 2. adaptive keyframe stride; 3. initial window (best reference, retry
with a smaller window); 4. per-frame I2P windows; 5. pre-registration of the non-keyframes inside the
initial span; 6. main L2W registration loop with scene-frame retrieval; 7. buffering set updates;
8. cameras for every frame, fused cloud. Only tokens and model-resolution arrays are kept in memory.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

import numpy as np
import torch
from torch import Tensor

from forward3d.models.slam3r.protocol import SLAM3RModels
from forward3d.pipelines.slam3r.buffer import BufferingSet
from forward3d.pipelines.slam3r.common import (
    PreparedFrame,
    SLAM3RConfig,
    correct_points_with_depth,
    encoder_input,
    fit_depth_scale,
    model_depth_channels,
    normalize_points,
    prepare_frame,
    retrieve_scene_frames,
)
from forward3d.pipelines.slam3r.result import depth_scale_array, frame_camera, fused_cloud_from_arrays
from forward3d.progress import progress_bar
from forward3d.types import Frame, FrameStatus, Reconstruction

logger = logging.getLogger(__name__)

__all__ = ["run_offline", "stride_windows", "choose_keyframe_stride", "i2p_window", "initialize_window", "local_point_map", "InitWindow"]


def stride_windows(center: int, stride: int, radius: int) -> list[int]:
    """``[c, c - s, c + s, ..., c - r s, c + r s]`` (the adaptive-stride test window)."""
    ids = [center]
    for k in range(1, radius + 1):
        ids += [center - k * stride, center + k * stride]
    return ids


def choose_keyframe_stride(i2p, n: int, cfg, rng: np.random.Generator, win_r: int = 3) -> tuple[int, dict[int, float]]:
    """Adaptive keyframe stride (reference step 2): for each candidate stride ``s`` in
    ``[keyframe_adapt_min, min(keyframe_adapt_max, (n-1) // (2 win_r))]`` run I2P on random
    ``2 win_r + 1``-view windows of stride ``s`` and keep the stride with the highest mean confidence.

    ``i2p(windows: list[list[int]]) -> (pts, conf)`` runs the windows (reference = first index).
    Returns ``(best stride, {stride: mean confidence})``.
    """
    amax = min((n - 1) // (2 * win_r), cfg.keyframe_adapt_max)
    best, best_conf = 1, -math.inf
    scores: dict[int, float] = {}
    for s in range(cfg.keyframe_adapt_min, amax + 1, cfg.keyframe_adapt_stride):
        cands = np.arange(win_r * s, n - win_r * s)
        refs = rng.choice(cands, min(n - 2 * win_r * s, cfg.adapt_sample_windows), replace=False)
        _, conf = i2p([stride_windows(int(c), s, win_r) for c in refs])
        scores[s] = float(conf.mean())
        if scores[s] > best_conf:
            best, best_conf = s, scores[s]
    return best, scores


def i2p_window(view_id: int, stride: int, radius: int, num_views: int) -> list[int]:
    """Per-frame I2P window ``[i, i - s, i + s, ...]`` clipped to ``[0, num_views)``; reference first."""
    ids = [view_id]
    for k in range(1, radius + 1):
        if view_id - k * stride >= 0:
            ids.append(view_id - k * stride)
        if view_id + k * stride < num_views:
            ids.append(view_id + k * stride)
    return ids



@dataclass
class InitWindow:
    """The initial window: keyframe ids, the chosen reference (position in ``ids``), world point maps
    ``[w, H, W, 3]`` (invalid zeroed), I2P confidences ``[w, H, W]``, metric flag and the scale
    applied to the raw I2P maps (depth fit, or 1 / normalisation factor)."""

    ids: list[int]
    ref: int
    world: Tensor
    conf: Tensor
    metric: bool
    scale: float
    size: float  # mean distance to the origin of the valid world points (metric size of the window)


def initialize_window(i2p: Callable[[list[list[int]]], tuple[Tensor, Tensor]], n: int, s: int,
                      cfg: SLAM3RConfig, depths: Sequence[np.ndarray | None]) -> InitWindow:
    """Reference ``initialize_scene``: frames ``0, s, ..., (w-1)s``, each tried as the reference; the
    best mean confidence wins; if ``w > 3`` and it is below ``cfg.init_conf_thres``, retry with
    ``w - 1``. Joint normalisation by the mean distance of the valid points, or (RGB-D) the metric
    scale fitted between the reference view's predicted and sensor depth."""
    w = min(cfg.initial_winsize, n // s)
    if w < 2:
        raise ValueError(f"SLAM3R: expected at least 2 frames for the initial window at stride {s}, "
                         f"found {n} frame(s)")
    while True:
        ids = [k * s for k in range(w)]
        windows = [[ids[r]] + [ids[j] for j in range(w) if j != r] for r in range(w)]
        pts, conf = i2p(windows)
        means = conf.mean(dim=(1, 2, 3))
        r = int(torch.argmax(means))  # first maximum, as the reference's strict '>'
        if w > 3 and float(means[r]) < cfg.init_conf_thres:
            w -= 1
            continue
        break
    order = [windows[r].index(fid) for fid in ids]  # window position of each id
    init_pts = pts[r, order]  # [w, H, W, 3] in frame ids[r]'s camera
    init_conf = conf[r, order]
    valid = init_conf > cfg.conf_thres_i2p
    fit = None
    depth = depths[ids[r]]
    if cfg.depth_correction and depth is not None:
        fit = fit_depth_scale(init_pts[r, ..., 2].cpu().numpy(), depth, valid[r].cpu().numpy(), "scale",
                              cfg.depth_min, cfg.depth_max, cfg.depth_min_pixels, cfg.seed)
        if fit is None:
            logger.warning("SLAM3R: no depth fit for the initial reference frame %d; the scale stays relative", ids[r])
    if fit is not None:
        world, scale = [p * fit[0] for p in init_pts], fit[0]
    else:
        world, factor = normalize_points(list(init_pts), list(valid))
        scale = 1.0 / factor
    world_t = torch.stack([torch.where(valid[k, ..., None], world[k], torch.zeros_like(world[k])) for k in range(w)])
    size = float(world_t[valid].norm(dim=-1).mean()) if bool(valid.any()) else 1.0
    return InitWindow(ids, r, world_t, init_conf, fit is not None, float(scale), size if math.isfinite(size) else 1.0)


def local_point_map(pts: Tensor, conf: Tensor, depth: np.ndarray | None, cfg: SLAM3RConfig,
                    seed: int) -> tuple[Tensor, tuple[float, float, float] | None]:
    """A frame's I2P point map ``[H, W, 3]`` (in its own camera) ready for L2W: depth-corrected to
    metric when ``depth`` is given and the fit succeeds, else normalised by its mean distance; points
    with confidence <= ``conf_thres_i2p`` zeroed. Returns (map, (scale, shift, inliers) or None)."""
    valid = conf > cfg.conf_thres_i2p
    fit = None
    if depth is not None:
        fit = fit_depth_scale(pts[..., 2].cpu().numpy(), depth, valid.cpu().numpy(), cfg.depth_fit,
                              cfg.depth_min, cfg.depth_max, cfg.depth_min_pixels, seed)
    if fit is not None:
        pts = correct_points_with_depth(pts, fit[0], fit[1])
    else:
        pts = normalize_points([pts], [valid])[0][0]
    return torch.where(valid[..., None], pts, torch.zeros_like(pts)), fit


class _Offline:
    def __init__(self, models: SLAM3RModels, cfg: SLAM3RConfig, progress: bool = True) -> None:
        self.progress = progress
        self.models = models
        self.cfg = cfg
        self.device = torch.device(models.device)
        self.rng = np.random.RandomState(cfg.seed)
        self.timings: dict[str, float] = {}

    # ---------------------------------------------------------------------------------- step 1
    def encode(self, frames: Iterable[Frame]) -> None:
        cfg = self.cfg
        t0 = time.perf_counter()
        tokens: list[Tensor] = []
        self.colors: list[np.ndarray] = []
        self.depths: list[np.ndarray | None] = []
        self.prepared: list[PreparedFrame] = []  # without images (freed after encoding)
        pending: list[PreparedFrame] = []
        bar = progress_bar(None, "SLAM3R encode", unit="frame", enabled=self.progress)

        def flush() -> None:
            if not pending:
                return
            k = model_depth_channels(self.models)
            imgs = torch.stack([encoder_input(p, k, cfg.depth_min, cfg.depth_max) for p in pending]).to(self.device)
            ids = [len(self.prepared) - len(pending) + k for k in range(len(pending))]
            with torch.no_grad():
                tokens.append(self.models.encode(imgs, ids))
            for p in pending:
                p.image = torch.empty(0)
            bar.update(len(pending))
            pending.clear()

        for frame in frames:
            p = prepare_frame(frame, self.models.image_size)
            self.prepared.append(p)
            self.colors.append(p.colors)
            self.depths.append(p.depth)
            pending.append(p)
            if len(pending) >= cfg.encode_batch_size:
                flush()
        flush()
        bar.close()
        self.n = len(self.prepared)
        self.tokens = torch.cat(tokens, 0) if tokens else torch.empty(0)
        self.timings["encode"] = time.perf_counter() - t0

    def i2p(self, windows: list[list[int]]) -> tuple[Tensor, Tensor]:
        """I2P on equal-length windows (reference = view 0), chunked: ``[B, V, H, W, 3]``, ``[B, V, H, W]``."""
        pts, conf = [], []
        for k in range(0, len(windows), self.cfg.i2p_batch_size):
            idx = torch.as_tensor(windows[k:k + self.cfg.i2p_batch_size], device=self.tokens.device)
            with torch.no_grad():
                p, c = self.models.i2p(self.tokens[idx], 0)
            pts.append(p.float())
            conf.append(c.float())
        return torch.cat(pts), torch.cat(conf)

    # ---------------------------------------------------------------------------------- step 2
    def adapt_stride(self) -> int:
        best, self.stride_scores = choose_keyframe_stride(self.i2p, self.n, self.cfg, self.rng)
        logger.info("SLAM3R: adaptive keyframe stride %d (mean I2P confidence %.2f)", best, self.stride_scores.get(best, math.nan))
        return best

    # ---------------------------------------------------------------------------------- step 3
    def initialize(self, s: int) -> None:
        init = initialize_window(self.i2p, self.n, s, self.cfg, self.depths)
        self.init_ids, self.init_ref, self.metric, self.init_scale = init.ids, init.ref, init.metric, init.scale
        self.init_size = init.size
        for k, fid in enumerate(init.ids):
            self.world[fid] = init.world[k]
            self.l2w_conf[fid] = init.conf[k]
            self.l2w_conf_mean[fid] = float(init.conf[k].mean())
        self.init_conf = init.conf

    # ---------------------------------------------------------------------------------- step 4
    def local_maps(self, s: int) -> None:
        cfg, n = self.cfg, self.n
        t0 = time.perf_counter()
        windows = [i2p_window(i, s, cfg.win_r, n) for i in range(n)]
        by_len: dict[int, list[int]] = {}
        for i, wnd in enumerate(windows):
            by_len.setdefault(len(wnd), []).append(i)
        bar = progress_bar(n, "SLAM3R I2P", unit="frame", enabled=self.progress)
        for _, members in sorted(by_len.items()):
            for k in range(0, len(members), cfg.i2p_batch_size):
                chunk = members[k:k + cfg.i2p_batch_size]
                pts, conf = self.i2p([windows[i] for i in chunk])
                for j, i in enumerate(chunk):
                    self._set_local(i, pts[j, 0], conf[j, 0])
                bar.update(len(chunk))
        bar.close()
        self._finish_metric()
        for k, fid in enumerate(self.init_ids):  # the reference's local confidence of initial frames
            self.i2p_conf_mean[fid] = float(self.init_conf[k].mean())
        self.timings["i2p"] = time.perf_counter() - t0

    def _set_local(self, i: int, pts: Tensor, conf: Tensor) -> None:
        self.i2p_conf[i] = conf
        self.i2p_conf_mean[i] = float(conf.mean())
        self.local[i], self.depth_fits[i] = local_point_map(pts, conf, self.depths[i] if self.metric else None,
                                                            self.cfg, self.cfg.seed + i)

    def _finish_metric(self) -> None:
        """Metric mode: frames without a depth fit get the median metric size of the fitted ones."""
        if not self.metric:
            return
        sizes = [float(self.local[i][self.local[i].abs().sum(-1) > 0].norm(dim=-1).mean())
                 for i in range(self.n) if self.depth_fits[i] is not None]
        sizes = [x for x in sizes if math.isfinite(x)]
        ref = float(np.median(sizes)) if sizes else self.init_size
        for i in range(self.n):
            if self.depth_fits[i] is None:
                self.local[i] = self.local[i] * ref

    # ---------------------------------------------------------------------------------- step 5-7
    def l2w(self, scene_ids: list[int], frame_ids: list[int]) -> tuple[Tensor, Tensor]:
        dev = self.tokens.device
        sidx = torch.as_tensor(scene_ids, device=dev)
        fidx = torch.as_tensor(frame_ids, device=dev)
        with torch.no_grad():
            pts, conf = self.models.l2w(self.tokens[sidx], self.world[sidx].to(dev),
                                        self.tokens[fidx], self.local[fidx].to(dev))
        return pts.float(), conf.float()

    def _store_world(self, i: int, pts: Tensor, conf: Tensor) -> None:
        self.world[i] = pts
        self.l2w_conf[i] = conf
        self.l2w_conf_mean[i] = float(conf.mean())

    def register(self, s: int) -> None:
        cfg, n = self.cfg, self.n
        t0 = time.perf_counter()
        w = len(self.init_ids)
        bar = progress_bar(n, "SLAM3R register", unit="frame", enabled=self.progress)
        bar.update(w)
        if s > 1:  # step 5: non-keyframes inside the initial span, one at a time against the buffer
            max_mean = -1.0
            for i in range((w - 1) * s):
                if i % s == 0:
                    continue
                pts, conf = self.l2w(self.init_ids, [i])
                self._store_world(i, pts[0], conf[0])
                max_mean = max(max_mean, self.l2w_conf_mean[i])
                bar.update(1)
            max_init = max(self.l2w_conf_mean[i] for i in self.init_ids)
            factor = max_mean / max_init if max_init > 0 else 1.0
            for i in self.init_ids:  # align the I2P confidences of the initial window with L2W's
                self.l2w_conf[i] = self.l2w_conf[i] * factor
                self.l2w_conf_mean[i] = float(self.l2w_conf[i].mean())
        start = (w - 1) * s + 1
        self.buffer = BufferingSet(self.init_ids, cfg.buffer_size, cfg.buffer_strategy, s,
                                   cfg.update_buffer_intv, start, self.rng)
        num_register = max(1, min((s + 1) // 2, cfg.max_num_register))
        self.max_buffer_len = len(self.buffer)
        nxt = start
        while nxt < n:
            last = min(nxt + num_register, n) - 1
            cand = list(self.buffer.ids)
            queries = list(range(nxt, min(nxt + num_register, n), 2))
            sel = retrieve_scene_frames(self.models, self.tokens[torch.as_tensor(cand, device=self.tokens.device)],
                                        self.tokens[torch.as_tensor(queries, device=self.tokens.device)],
                                        cfg.num_scene_frame)
            scene = [cand[k] for k in sel]
            frame_ids = list(range(nxt, last + 1))
            pts, conf = self.l2w(scene, frame_ids)
            for j, i in enumerate(frame_ids):
                self._store_world(i, pts[j], conf[j])
            nxt = last + 1
            bar.update(len(frame_ids))
            self.buffer.update(nxt, self.l2w_conf_mean, self.i2p_conf_mean)
            self.max_buffer_len = max(self.max_buffer_len, len(self.buffer))
        bar.close()
        self.timings["register"] = time.perf_counter() - t0

    # ---------------------------------------------------------------------------------- run
    def run(self, frames: Iterable[Frame]) -> Reconstruction:
        cfg = self.cfg
        t_start = time.perf_counter()
        self.encode(frames)
        n = self.n
        if n < 2:
            raise ValueError(f"SLAM3R: expected at least 2 frames, found {n}")
        t0 = time.perf_counter()
        adaptive = cfg.keyframe_stride == -1
        s = self.adapt_stride() if adaptive else cfg.keyframe_stride
        s = max(1, min(s, n // 2))
        self.timings["stride"] = time.perf_counter() - t0
        h, w = self.models.image_size
        dev = self.tokens.device
        self.world = torch.zeros(n, h, w, 3, device=dev)
        self.local = torch.zeros(n, h, w, 3, device=dev)
        self.l2w_conf = torch.ones(n, h, w, device=dev)
        self.i2p_conf = torch.ones(n, h, w, device=dev)
        self.l2w_conf_mean = [1.0] * n
        self.i2p_conf_mean = [1.0] * n
        self.depth_fits: list[tuple[float, float, float] | None] = [None] * n
        t0 = time.perf_counter()
        self.initialize(s)
        self.timings["init"] = time.perf_counter() - t0
        self.local_maps(s)
        self.register(s)
        t0 = time.perf_counter()
        rec = self.assemble(s, adaptive)
        self.timings["cameras_export"] = time.perf_counter() - t0
        self.timings["total"] = time.perf_counter() - t_start
        rec.timings = {f"{k}_s": v for k, v in self.timings.items()}
        rec.timings["frames_per_s"] = n / max(self.timings["total"], 1e-9)
        return rec

    def assemble(self, s: int, adaptive: bool) -> Reconstruction:
        cfg, n = self.cfg, self.n
        world = self.world.cpu().numpy().astype(np.float32)
        local = self.local.cpu().numpy()
        l2w_conf = self.l2w_conf.cpu().numpy().astype(np.float32)
        i2p_conf = self.i2p_conf.cpu().numpy()
        colors = np.stack(self.colors)
        c2w = np.zeros((n, 4, 4))
        K = np.zeros((n, 3, 3))
        infos = []
        for i in range(n):
            p = self.prepared[i]
            c2w[i], K[i], info = frame_camera(local[i], world[i], i2p_conf[i], l2w_conf[i], p.crop, p.K, cfg,
                                              same_scale=self.metric and self.depth_fits[i] is not None)
            infos.append(info)
        cloud = fused_cloud_from_arrays(world, l2w_conf, colors, cfg.conf_thres_l2w, cfg.num_points_save, cfg.seed)
        first = self.prepared[0].crop
        meta = {
            "mode": "offline",
            "keyframe_stride": s,
            "keyframe_stride_adaptive": adaptive,
            "stride_scores": {str(k): v for k, v in getattr(self, "stride_scores", {}).items()},
            "init_window": list(self.init_ids),
            "init_ref": int(self.init_ids[self.init_ref]),
            "buffer_ids": list(self.buffer.ids),
            "buffer_max_len": int(self.max_buffer_len),
            "depth_shifts": [None if f is None else f[1] for f in self.depth_fits],
            "model_image_size": [int(self.models.image_size[1]), int(self.models.image_size[0])],
            "l2w_conf_mean": [float(x) for x in self.l2w_conf_mean],
            "i2p_conf_mean": [float(x) for x in self.i2p_conf_mean],
            "focal_model_px": [info.get("focal_model_px") for info in infos],
            "config": cfg.to_dict(),
        }
        return Reconstruction(
            c2w=c2w, K=K, image_size=(first.src_w, first.src_h),
            frame_names=[p.name for p in self.prepared],
            timestamps=np.array([p.timestamp for p in self.prepared]),
            point_maps=world, confidences=l2w_conf, point_map_colors=colors, points=cloud, backend="slam3r",
            metric_scale=bool(self.metric), depth_scales=depth_scale_array(self.depth_fits),
            frame_status=[FrameStatus("registered", keyframe=i % s == 0) for i in range(n)], metadata=meta)


def run_offline(models: SLAM3RModels, frames: Iterable[Frame], cfg: SLAM3RConfig,
                progress: bool = True) -> Reconstruction:
    """Offline SLAM3R over all ``frames`` (see the module docstring)."""
    return _Offline(models, cfg, progress).run(frames)
