"""SLAM3R online reconstruction: frames arrive one at a time and only past frames are used.

Per frame ``i`` after the initial window (reference ``scene_recon_pipeline_online``): scene frames are
retrieved from the buffering set (refreshed every ``retrieve_freq`` frames) and the previous ``win_r``
frames at stride ``s`` are added; I2P runs on ``[i] + references`` (``i`` is the reference view) and
L2W registers ``i`` against the same references. The buffering set follows the offline rules.

Memory stays bounded: only the buffering set's and the last ``win_r * s`` frames' tokens and point
maps stay on the compute device; every frame's result (world point map, confidence, colours) is
appended to spool files on disk, and the final :class:`Reconstruction` maps them read-only.
With an adaptive stride (``keyframe_stride = -1``) the first ``online_warmup`` frames are collected
before the stride is chosen on them; their results come out together once it is.
"""

from __future__ import annotations

import logging
import os
import time
from collections import deque
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from forward3d.models.slam3r.protocol import SLAM3RModels
from forward3d.pipelines.slam3r.buffer import BufferingSet
from forward3d.pipelines.slam3r.common import (
    CropTransform,
    SLAM3RConfig,
    encoder_input,
    model_depth_channels,
    prepare_frame,
    retrieve_scene_frames,
)
from forward3d.pipelines.slam3r.offline import choose_keyframe_stride, initialize_window, local_point_map
from forward3d.pipelines.slam3r.result import depth_scale_array, frame_camera, valid_world_mask
from forward3d.pipelines.spool import FrameSpool, trim_heap
from forward3d.progress import progress_bar
from forward3d.types import Frame, FrameStatus, Reconstruction, Update

logger = logging.getLogger(__name__)

__all__ = ["OnlineSLAM3R"]


@dataclass
class _Slot:
    """What the online pipeline keeps of a frame while it may still be used (on the compute device)."""

    tokens: Tensor  # [T, C]
    colors: np.ndarray  # [H, W, 3] uint8
    depth: np.ndarray | None  # [H, W] float32
    local: Tensor | None = None  # [H, W, 3]
    i2p_conf: Tensor | None = None  # [H, W]
    world: Tensor | None = None  # [H, W, 3]
    l2w_conf: Tensor | None = None  # [H, W]


class OnlineSLAM3R:
    """Incremental SLAM3R: :meth:`push` one frame at a time, :meth:`flush` at the end of the input,
    then :meth:`finish` for the :class:`Reconstruction`."""

    def __init__(self, models: SLAM3RModels, cfg: SLAM3RConfig, progress: bool = True) -> None:
        self.models = models
        self.cfg = cfg
        self.device = torch.device(models.device)
        self.rng = np.random.RandomState(cfg.seed)
        self.h, self.w = (int(x) for x in models.image_size)
        self.s: int | None = None if cfg.keyframe_stride == -1 else cfg.keyframe_stride
        self.adaptive = cfg.keyframe_stride == -1
        self.slots: dict[int, _Slot] = {}
        self.crops: list[CropTransform] = []
        self.names: list[str] = []
        self.timestamps: list[float] = []
        self.frame_K: list[np.ndarray | None] = []
        self.l2w_conf_mean: list[float] = []
        self.i2p_conf_mean: list[float] = []
        self.depth_fits: list[tuple[float, float, float] | None] = []
        self.c2w: list[np.ndarray] = []
        self.K: list[np.ndarray] = []
        self.valid_counts: list[int] = []
        self.buffer: BufferingSet | None = None
        self.metric = False
        self.metric_sizes: deque[float] = deque(maxlen=100)
        self.last_sel: list[int] = []
        self.max_buffer_len = 0
        self.max_slots = 0
        self.spool = FrameSpool(cfg.spool_dir, self.h, self.w, prefix="forward3d-slam3r-")
        self.t_start = time.perf_counter()
        self.timings = {"encode": 0.0, "i2p": 0.0, "l2w": 0.0, "retrieval": 0.0, "cameras": 0.0}
        self.bar = progress_bar(None, "SLAM3R online", unit="frame", enabled=progress)

    @property
    def num_frames(self) -> int:
        return len(self.names)

    @property
    def initialised(self) -> bool:
        return self.buffer is not None

    # ------------------------------------------------------------------------------------------ input
    def push(self, frame: Frame) -> list[Update]:
        """Add one frame; returns the updates of the frames that got results (usually just this one)."""
        t0 = time.perf_counter()
        p = prepare_frame(frame, (self.h, self.w))
        i = self.num_frames
        with torch.no_grad():
            x = encoder_input(p, model_depth_channels(self.models), self.cfg.depth_min, self.cfg.depth_max)
            tokens = self.models.encode(x[None].to(self.device), [i])[0]
        self.timings["encode"] += time.perf_counter() - t0
        self.slots[i] = _Slot(tokens, p.colors, p.depth)
        self.crops.append(p.crop)
        self.names.append(p.name)
        self.timestamps.append(p.timestamp)
        self.frame_K.append(p.K)
        self.l2w_conf_mean.append(1.0)
        self.i2p_conf_mean.append(1.0)
        self.depth_fits.append(None)
        if self.initialised:
            return [self._process(i)]
        if self.s is None:
            if self.num_frames >= self.cfg.online_warmup:
                return self._start()
        elif i >= (self.cfg.initial_winsize - 1) * self.s:
            return self._start()
        return []

    def flush(self) -> list[Update]:
        """End of input: initialise with what was received if that has not happened yet."""
        if not self.initialised and self.num_frames >= 2:
            return self._start()
        return []

    # ------------------------------------------------------------------------------------------ init
    def _i2p(self, windows: list[list[int]]) -> tuple[Tensor, Tensor]:
        t0 = time.perf_counter()
        pts, conf = [], []
        for k in range(0, len(windows), self.cfg.i2p_batch_size):
            chunk = windows[k:k + self.cfg.i2p_batch_size]
            tok = torch.stack([torch.stack([self.slots[i].tokens for i in wnd]) for wnd in chunk])
            with torch.no_grad():
                p, c = self.models.i2p(tok, 0)
            pts.append(p.float())
            conf.append(c.float())
        self.timings["i2p"] += time.perf_counter() - t0
        return torch.cat(pts), torch.cat(conf)

    def _l2w(self, scene: list[int], frames: list[int]) -> tuple[Tensor, Tensor]:
        t0 = time.perf_counter()
        sl = [self.slots[i] for i in scene]
        fl = [self.slots[i] for i in frames]
        with torch.no_grad():
            pts, conf = self.models.l2w(torch.stack([x.tokens for x in sl]), torch.stack([x.world for x in sl]),
                                        torch.stack([x.tokens for x in fl]), torch.stack([x.local for x in fl]))
        self.timings["l2w"] += time.perf_counter() - t0
        return pts.float(), conf.float()

    def _adapt_stride(self) -> int:
        best, self.stride_scores = choose_keyframe_stride(self._i2p, self.num_frames, self.cfg, self.rng)
        logger.info("SLAM3R online: adaptive keyframe stride %d over the first %d frames", best, self.num_frames)
        return best

    def _set_local(self, i: int, pts: Tensor, conf: Tensor) -> None:
        slot = self.slots[i]
        slot.i2p_conf = conf.clone()  # not a view that keeps the whole window's output alive
        self.i2p_conf_mean[i] = float(conf.mean())
        slot.local, fit = local_point_map(pts, conf, slot.depth if self.metric else None, self.cfg, self.cfg.seed + i)
        self.depth_fits[i] = fit
        if self.metric:
            size = slot.local[slot.local.abs().sum(-1) > 0].norm(dim=-1).mean()
            if fit is not None and bool(torch.isfinite(size)):
                self.metric_sizes.append(float(size))
            elif fit is None:  # no depth for this frame: the typical metric size of its neighbours
                slot.local = slot.local * (float(np.median(self.metric_sizes)) if self.metric_sizes else self.init_size)

    def _store_world(self, i: int, pts: Tensor, conf: Tensor) -> None:
        self.slots[i].world = pts
        self.slots[i].l2w_conf = conf
        self.l2w_conf_mean[i] = float(conf.mean())

    def _start(self) -> list[Update]:
        cfg, n = self.cfg, self.num_frames
        s = self._adapt_stride() if self.s is None else self.s
        self.s = s = max(1, min(s, n // 2))
        init = initialize_window(self._i2p, n, s, cfg, [self.slots[i].depth for i in range(n)])
        self.init_ids, self.metric, self.init_size = init.ids, init.metric, init.size
        for k, fid in enumerate(init.ids):
            self._store_world(fid, init.world[k], init.conf[k])
        last = (len(init.ids) - 1) * s
        # local maps of the frames of the initial span: window = [frame] + the initial keyframes
        for i in range(last + 1):
            wnd = [i] + [b for b in init.ids if b != i]
            pts, conf = self._i2p([wnd])
            self._set_local(i, pts[0, 0], conf[0, 0])
        for k, fid in enumerate(init.ids):
            self.i2p_conf_mean[fid] = float(init.conf[k].mean())
        if s > 1:  # pre-register the non-keyframes of the initial span
            max_mean = -1.0
            for i in range(last):
                if i % s:
                    pts, conf = self._l2w(init.ids, [i])
                    self._store_world(i, pts[0], conf[0])
                    max_mean = max(max_mean, self.l2w_conf_mean[i])
            max_init = max(self.l2w_conf_mean[i] for i in init.ids)
            factor = max_mean / max_init if max_init > 0 else 1.0
            for i in init.ids:
                self._store_world(i, self.slots[i].world, self.slots[i].l2w_conf * factor)
        self.buffer = BufferingSet(init.ids, cfg.buffer_size, cfg.buffer_strategy, s, cfg.update_buffer_intv,
                                   last + 1, self.rng)
        updates = [self._emit(i) for i in range(last + 1)]
        for i in range(last + 1, n):
            updates.append(self._process(i))
        self._evict(n - 1)
        return updates

    # ------------------------------------------------------------------------------------------ per frame
    def _process(self, i: int) -> Update:
        cfg, s = self.cfg, self.s
        assert self.buffer is not None and s is not None
        cand = list(self.buffer.ids)
        sel = [b for b in self.last_sel if b in self.buffer]
        if i % cfg.retrieve_freq == 0 or not sel:
            t0 = time.perf_counter()
            ks = retrieve_scene_frames(self.models, torch.stack([self.slots[b].tokens for b in cand]),
                                       self.slots[i].tokens[None], cfg.num_scene_frame)
            self.timings["retrieval"] += time.perf_counter() - t0
            sel = [cand[k] for k in ks]
        self.last_sel = list(sel)
        refs = list(sel)
        for j in range(1, cfg.win_r + 1):
            if i - j * s >= 0 and (i - j * s) not in refs:
                refs.append(i - j * s)
        pts, conf = self._i2p([[i] + refs])
        self._set_local(i, pts[0, 0], conf[0, 0])
        wp, wc = self._l2w(refs, [i])
        self._store_world(i, wp[0], wc[0])
        self.buffer.update(i + 1, self.l2w_conf_mean, self.i2p_conf_mean)
        self.max_buffer_len = max(self.max_buffer_len, len(self.buffer))
        update = self._emit(i)
        self._evict(i)
        if i % 64 == 0:
            trim_heap()
        return update

    def _evict(self, i: int) -> None:
        """Free the device data of frames that can no longer be a reference or a buffer candidate."""
        assert self.buffer is not None and self.s is not None
        keep_from = min(self.buffer.milestone, i - self.cfg.win_r * self.s)
        for fid in [f for f in self.slots if f < keep_from and f not in self.buffer]:
            del self.slots[fid]
        self.max_slots = max(self.max_slots, len(self.slots))

    def _emit(self, i: int) -> Update:
        t0 = time.perf_counter()
        slot = self.slots[i]
        world = slot.world.cpu().numpy().astype(np.float32)
        l2w_conf = slot.l2w_conf.cpu().numpy().astype(np.float32)
        local = slot.local.cpu().numpy()
        i2p_conf = slot.i2p_conf.cpu().numpy()
        c2w, K, info = frame_camera(local, world, i2p_conf, l2w_conf, self.crops[i], self.frame_K[i], self.cfg,
                                    same_scale=self.metric and self.depth_fits[i] is not None)
        self.c2w.append(c2w)
        self.K.append(K)
        self.spool.write(world, l2w_conf, slot.colors)
        self.valid_counts.append(int(valid_world_mask(world, l2w_conf, self.cfg.conf_thres_l2w).sum()))
        self.timings["cameras"] += time.perf_counter() - t0
        self.bar.update(1)
        fit = self.depth_fits[i]
        n = len(self.c2w)
        return Update(
            index=i, name=self.names[i], c2w=c2w, K=K, image_size=(self.crops[i].src_w, self.crops[i].src_h),
            status=FrameStatus("registered", keyframe=self.s is not None and i % self.s == 0),
            points=world, confidence=l2w_conf, colors=slot.colors, image=slot.colors, num_frames=n,
            frames_per_s=n / max(time.perf_counter() - self.t_start, 1e-9),
            metadata={"keyframe_stride": self.s, "depth_scale": None if fit is None else fit[0],
                      "focal_model_px": info.get("focal_model_px"),
                      "in_buffer": self.buffer is not None and i in self.buffer})

    # ------------------------------------------------------------------------------------------ output
    def finish(self) -> Reconstruction:
        """Close the spool and build the :class:`Reconstruction` (point maps are read-only memory maps)."""
        self.bar.close()
        self.spool.close()
        n = len(self.c2w)
        if n == 0:
            raise ValueError(f"SLAM3R online: expected at least 2 frames to reconstruct, found {self.num_frames}")
        cfg = self.cfg
        spool = self.spool
        cloud = spool.fuse(int(sum(self.valid_counts)), cfg.conf_thres_l2w, cfg.num_points_save, cfg.seed)
        points, conf, colors = spool.arrays()
        total = time.perf_counter() - self.t_start
        meta = {
            "mode": "online",
            "keyframe_stride": self.s,
            "keyframe_stride_adaptive": self.adaptive,
            "stride_scores": {str(k): v for k, v in getattr(self, "stride_scores", {}).items()},
            "init_window": list(getattr(self, "init_ids", [])),
            "buffer_ids": [] if self.buffer is None else list(self.buffer.ids),
            "buffer_max_len": int(self.max_buffer_len),
            "max_frames_held": int(self.max_slots),
            "depth_shifts": [None if f is None else f[1] for f in self.depth_fits[:n]],
            "model_image_size": [self.w, self.h],
            "l2w_conf_mean": [float(x) for x in self.l2w_conf_mean[:n]],
            "i2p_conf_mean": [float(x) for x in self.i2p_conf_mean[:n]],
            "spool_dir": None if spool.temporary else os.fspath(spool.dir),
            "config": cfg.to_dict(),
        }
        timings = {f"{k}_s": v for k, v in self.timings.items()}
        timings.update(total_s=total, frames_per_s=n / max(total, 1e-9))
        first = self.crops[0]
        return Reconstruction(
            c2w=np.stack(self.c2w), K=np.stack(self.K), image_size=(first.src_w, first.src_h),
            frame_names=self.names[:n], timestamps=np.array(self.timestamps[:n]),
            point_maps=points, confidences=conf, point_map_colors=colors, points=cloud, backend="slam3r",
            metric_scale=bool(self.metric), depth_scales=depth_scale_array(self.depth_fits[:n]),
            frame_status=[FrameStatus("registered", keyframe=self.s is not None and i % self.s == 0) for i in range(n)],
            timings=timings, metadata=meta)
