"""Oracles implementing the SLAM3R and Spann3R model protocols with the ground truth of a synthetic scene.

It lets the tests exercise the pipeline's own logic (initialisation, registration order, buffering,
retrieval, depth correction, camera extraction, export) with known answers:

- ``encode`` returns tokens that carry the frame ids (``[B, 1, 1]``).
- ``i2p`` returns the exact point maps of the window's views in the reference view's camera frame,
  rendered at the pipeline's crop intrinsics, times ``scale`` (a wrong global scale), plus noise;
  invalid pixels are 0. Source views are confident where they are co-visible with the reference.
- ``l2w`` estimates the pipeline's world frame by a Sim(3) Umeyama fit between the given scene
  frames' world point maps and their ground-truth world points, and returns the frames' exact world
  points expressed in that frame, plus noise.
- ``corr_scores`` favours frames whose points the query camera sees (frustum overlap).

The model oracles are for tests only; :class:`GroundTruthBackend` (the ``oracle`` back-end) replays the
input's own ground truth as a reconstruction: the reference a benchmark protocol must score ~0 with.

:class:`OracleView` stands in for the single-image scene loop's networks (:mod:`forward3d.pipelines.
stitch`): the inpainter (the ground-truth colours of the hole) and the monocular depth of a new view
(its ground-truth depth, optionally with a wrong scale and shift: an unaligned estimate).
"""

from __future__ import annotations

import logging
import math
from collections import OrderedDict
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from forward3d.geometry.align import umeyama
from forward3d.pipelines.base import Backend, Capabilities
from forward3d.pipelines.slam3r.common import CropTransform, crop_transform
from forward3d.types import PointCloud, Reconstruction

logger = logging.getLogger(__name__)

__all__ = ["OracleSLAM3R", "OracleSpann3R", "OracleView", "GroundTruthConfig", "GroundTruthBackend"]


class OracleSLAM3R:
    """Ground-truth SLAM3R "models" for a :class:`~forward3d.data.synthetic.SyntheticScene`.

    Args:
        scene: the synthetic scene (``.c2w`` ``[N, 4, 4]``, ``.K``, ``.render(c2w, K, w, h)``, ``.config``).
        image_size: ``(H, W)`` the pipeline feeds the models.
        noise: standard deviation (metres) of the Gaussian noise on every returned point.
        scale: global scale of the I2P point maps (1.0 = metric).
        conf: confidence of good points (``1 + exp(x)`` style, > 1).
        low_conf: confidence of points a view cannot see from the reference (source views).
        preferred_baseline: if set (metres), source-view confidences fall off as the camera distance
            to the reference departs from it (log-normal bump, sigma 0.5), so that the adaptive stride
            has a known best choice.
        crop: the pipeline's crop transform of the scene's frames; default: computed with the
            pipeline's :func:`crop_transform` from the scene's image size.
        device: where the returned tensors live.
        seed: seed of the noise (noise is a deterministic function of the call's frame ids).
        cache_frames: ground-truth maps kept (least recently used first out), so that long
            sequences (memory benchmarks) stay bounded.
    """

    def __init__(self, scene, image_size: tuple[int, int] = (224, 224), noise: float = 0.0, scale: float = 1.0,
                 conf: float = 20.0, low_conf: float = 1.2, preferred_baseline: float | None = None,
                 crop: CropTransform | None = None, device: str | torch.device = "cpu", seed: int = 0,
                 cache_frames: int = 512) -> None:
        if not conf > 1.0 or not low_conf > 1.0:
            raise ValueError(f"OracleSLAM3R: expected confidences > 1, found conf={conf}, low_conf={low_conf}")
        if not scale > 0:
            raise ValueError(f"OracleSLAM3R: expected scale > 0, found {scale}")
        self.scene = scene
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.device = torch.device(device)
        self.noise = float(noise)
        self.scale = float(scale)
        self.conf = float(conf)
        self.low_conf = float(low_conf)
        self.preferred_baseline = preferred_baseline
        self.seed = int(seed)
        h, w = self.image_size
        self.crop = crop or crop_transform(int(scene.config.width), int(scene.config.height), self.image_size)
        self.K = self.crop.K_to_model(scene.K)  # [3, 3] model-crop intrinsics
        u, v = np.meshgrid(np.arange(w) + 0.5, np.arange(h) + 0.5)
        self._rays = np.stack([(u - self.K[0, 2]) / self.K[0, 0], (v - self.K[1, 2]) / self.K[1, 1], np.ones_like(u)], -1)
        self._cache: OrderedDict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = OrderedDict()
        self.cache_frames = max(1, int(cache_frames))
        self.calls = {"encode": 0, "i2p": 0, "corr_scores": 0, "l2w": 0}

    # ------------------------------------------------------------------------------------------ GT
    def _gt(self, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Frame ``i``: (camera-frame points ``[H, W, 3]``, world points ``[H, W, 3]``, valid ``[H, W]``)."""
        if i not in self._cache:
            if not 0 <= i < len(self.scene.c2w):
                raise ValueError(f"OracleSLAM3R: frame id {i} outside the scene's [0, {len(self.scene.c2w)})")
            h, w = self.image_size
            _, depth = self.scene.render(self.scene.c2w[i], self.K, w, h)
            depth = depth.astype(np.float64)
            cam = self._rays * depth[..., None]
            c2w = self.scene.c2w[i]
            world = cam @ c2w[:3, :3].T + c2w[:3, 3]
            self._cache[i] = (cam, world, depth > 0)
            while len(self._cache) > self.cache_frames:
                self._cache.popitem(last=False)
        self._cache.move_to_end(i)
        return self._cache[i]

    def _ids(self, tokens: Tensor) -> list[int]:
        return [int(round(float(x))) for x in tokens.reshape(tokens.shape[0], -1)[:, 0].tolist()]

    def _rng(self, kind: int, ids: Sequence[int]) -> np.random.Generator:
        return np.random.default_rng([self.seed, kind, *[int(i) for i in ids]])

    def _noisy(self, pts: np.ndarray, rng: np.random.Generator, sigma: float) -> np.ndarray:
        return pts + rng.standard_normal(pts.shape) * sigma if sigma > 0 else pts

    def _visible_in(self, world: np.ndarray, valid: np.ndarray, j: int, depth_check: bool = True) -> np.ndarray:
        """``[H, W]`` bool: which of these world points camera ``j`` sees (inside the image, in front, unoccluded)."""
        h, w = self.image_size
        w2c = np.linalg.inv(self.scene.c2w[j])
        p = world @ w2c[:3, :3].T + w2c[:3, 3]
        z = p[..., 2]
        zs = np.where(z > 1e-6, z, 1.0)
        u = self.K[0, 0] * p[..., 0] / zs + self.K[0, 2]
        v = self.K[1, 1] * p[..., 1] / zs + self.K[1, 2]
        ok = valid & (z > 1e-6) & (u >= 0) & (u < w) & (v >= 0) & (v < h)
        if depth_check and ok.any():
            cam_j, _, valid_j = self._gt(j)
            ui = np.clip(u.astype(np.int64), 0, w - 1)
            vi = np.clip(v.astype(np.int64), 0, h - 1)
            zj = cam_j[vi, ui, 2]
            ok &= valid_j[vi, ui] & (np.abs(zj - z) <= 0.05 * np.maximum(z, 1e-6) + 0.02)
        return ok

    # ------------------------------------------------------------------------------------ protocol
    def encode(self, images: Tensor, ids: Sequence[int] | None = None) -> Tensor:
        """Tokens ``[B, 1, 1]`` holding the frame ids (the images are checked for shape only)."""
        self.calls["encode"] += 1
        h, w = self.image_size
        if images.ndim != 4 or tuple(images.shape[1:]) != (3, h, w):
            raise ValueError(f"OracleSLAM3R.encode: expected images [B, 3, {h}, {w}], found {list(images.shape)}")
        if ids is None or len(ids) != images.shape[0]:
            raise ValueError(f"OracleSLAM3R.encode: expected {images.shape[0]} frame ids, found {ids}")
        return torch.tensor([float(i) for i in ids], device=self.device).reshape(-1, 1, 1)

    def i2p(self, tokens: Tensor, ref_index: int = 0) -> tuple[Tensor, Tensor]:
        """Exact point maps ``[B, V, H, W, 3]`` in each window's reference camera (times ``scale``) + confidences."""
        self.calls["i2p"] += 1
        if tokens.ndim != 4:
            raise ValueError(f"OracleSLAM3R.i2p: expected tokens [B, V, T, C], found {list(tokens.shape)}")
        b, nv = tokens.shape[:2]
        h, w = self.image_size
        pts = np.zeros((b, nv, h, w, 3), np.float32)
        conf = np.full((b, nv, h, w), 1.01, np.float32)
        for k in range(b):
            ids = self._ids(tokens[k].reshape(nv, -1))
            ref = ids[ref_index]
            w2c = np.linalg.inv(self.scene.c2w[ref])
            rng = self._rng(1, [ref_index, *ids])
            for j, fid in enumerate(ids):
                _, world, valid = self._gt(fid)
                p = (world @ w2c[:3, :3].T + w2c[:3, 3]) * self.scale
                p = self._noisy(p, rng, self.noise * self.scale)
                pts[k, j] = np.where(valid[..., None], p, 0.0)
                if j == ref_index:
                    c = np.where(valid, self.conf, 1.01)
                else:
                    seen = self._visible_in(world, valid, ref)
                    good = 1.0 + (self.conf - 1.0) * self._baseline_factor(ref, fid)
                    c = np.where(seen, good, np.where(valid, self.low_conf, 1.01))
                conf[k, j] = c
        return torch.from_numpy(pts).to(self.device), torch.from_numpy(conf).to(self.device)

    def _baseline_factor(self, a: int, b: int) -> float:
        if self.preferred_baseline is None:
            return 1.0
        d = float(np.linalg.norm(self.scene.c2w[a][:3, 3] - self.scene.c2w[b][:3, 3]))
        r = math.log(max(d, 1e-6) / self.preferred_baseline)
        return math.exp(-0.5 * (r / 0.5) ** 2)

    def corr_scores(self, query_tokens: Tensor, cand_tokens: Tensor) -> Tensor:
        """``[M, Q, 1]``: ``1 + 20 * (fraction of the candidate's points the query camera sees)``."""
        self.calls["corr_scores"] += 1
        q_ids = self._ids(query_tokens)
        c_ids = self._ids(cand_tokens)
        out = np.ones((len(c_ids), len(q_ids), 1), np.float32)
        for m, cid in enumerate(c_ids):
            _, world, valid = self._gt(cid)
            sub = (slice(None, None, 4), slice(None, None, 4))
            n = max(int(valid[sub].sum()), 1)
            for q, qid in enumerate(q_ids):
                seen = self._visible_in(world[sub], valid[sub], qid, depth_check=False)
                out[m, q, 0] = 1.0 + 20.0 * float(seen.sum()) / n
        return torch.from_numpy(out).to(self.device)

    def l2w(self, scene_tokens: Tensor, scene_pts_world: Tensor, frame_tokens: Tensor,
            frame_pts_local: Tensor) -> tuple[Tensor, Tensor]:
        """Exact world points ``[S, H, W, 3]`` of the frames in the pipeline's world frame + confidences."""
        self.calls["l2w"] += 1
        h, w = self.image_size
        s_ids = self._ids(scene_tokens)
        f_ids = self._ids(frame_tokens)
        if tuple(scene_pts_world.shape) != (len(s_ids), h, w, 3):
            raise ValueError(f"OracleSLAM3R.l2w: expected scene_pts_world [{len(s_ids)}, {h}, {w}, 3], "
                             f"found {list(scene_pts_world.shape)}")
        if tuple(frame_pts_local.shape) != (len(f_ids), h, w, 3):
            raise ValueError(f"OracleSLAM3R.l2w: expected frame_pts_local [{len(f_ids)}, {h}, {w}, 3], "
                             f"found {list(frame_pts_local.shape)}")
        pipe = scene_pts_world.detach().float().cpu().numpy().astype(np.float64)
        src, dst = [], []
        for r, sid in enumerate(s_ids):
            _, world, valid = self._gt(sid)
            m = valid & (np.abs(pipe[r]).sum(-1) > 0) & np.isfinite(pipe[r]).all(-1)
            src.append(world[m])
            dst.append(pipe[r][m])
        src_a, dst_a = np.concatenate(src), np.concatenate(dst)
        if len(src_a) > 20000:
            keep = np.linspace(0, len(src_a) - 1, 20000).round().astype(np.int64)
            src_a, dst_a = src_a[keep], dst_a[keep]
        s, R, t = umeyama(src_a, dst_a, with_scale=True)
        rng = self._rng(2, [*s_ids, 1 << 30, *f_ids])
        pts = np.zeros((len(f_ids), h, w, 3), np.float32)
        conf = np.full((len(f_ids), h, w), 1.01, np.float32)
        for k, fid in enumerate(f_ids):
            _, world, valid = self._gt(fid)
            p = self._noisy(s * world @ R.T + t, rng, self.noise * s)
            pts[k] = np.where(valid[..., None], p, 0.0)
            conf[k] = np.where(valid, self.conf, 1.01)
        return torch.from_numpy(pts).to(self.device), torch.from_numpy(conf).to(self.device)


class _OracleSpann3RStream:
    def __init__(self, oracle: "OracleSpann3R") -> None:
        self.oracle = oracle
        self.first: int | None = None
        self.last: int | None = None
        self.count = 0

    def push(self, image: Tensor, frame_id: int) -> list:
        h, w = self.oracle.image_size
        if not isinstance(image, Tensor) or tuple(image.shape) != (3, h, w):
            raise ValueError(f"OracleSpann3R: expected an image [3, {h}, {w}], found "
                             f"{list(image.shape) if isinstance(image, Tensor) else type(image).__name__}")
        self.count += 1
        self.oracle.calls["push"] += 1
        prev, self.last = self.last, int(frame_id)
        if self.first is None:
            self.first = int(frame_id)
            return []
        return [self.oracle.predict(prev, self.first)]

    def finish(self) -> list:
        if self.count < 2:
            raise ValueError(f"OracleSpann3R: expected at least 2 frames, found {self.count}")
        return [self.oracle.predict(self.last, self.first)]


class OracleSpann3R(OracleSLAM3R):
    """Ground-truth Spann3R "model" (:class:`forward3d.models.spann3r.protocol.Spann3RModels`).

    Every frame's prediction is its exact point map in the camera frame of the sequence's first
    frame, rendered at the pipeline's crop intrinsics (default: :func:`crop_transform_dust3r` of the
    scene's image size), times ``scale``, plus noise; confidence ``conf`` where the scene is hit
    (1.01 elsewhere, points 0). Frame ids are the scene's frame indices.

    Args:
        offline_order: the processing order the offline mode returns (default: starting from the
            middle frame, then alternating outwards), so that the pipeline's reordering is tested.
        (others as :class:`OracleSLAM3R`)
    """

    def __init__(self, scene, image_size: tuple[int, int] = (224, 224), noise: float = 0.0, scale: float = 1.0,
                 conf: float = 20.0, crop: CropTransform | None = None, device: str | torch.device = "cpu",
                 seed: int = 0, cache_frames: int = 64, offline_order: Sequence[int] | None = None) -> None:
        from forward3d.pipelines.slam3r.common import crop_transform_dust3r

        crop = crop or crop_transform_dust3r(int(scene.config.width), int(scene.config.height), image_size)
        super().__init__(scene, image_size=image_size, noise=noise, scale=scale, conf=conf, crop=crop, device=device,
                         seed=seed, cache_frames=cache_frames)
        self.offline_order = None if offline_order is None else [int(i) for i in offline_order]
        self.calls.update(push=0, offline=0)

    def predict(self, fid: int, ref: int):
        """Frame ``fid``'s :class:`FramePrediction` in frame ``ref``'s camera (times ``scale``)."""
        from forward3d.models.spann3r.protocol import FramePrediction

        _, world, valid = self._gt(fid)
        w2c = np.linalg.inv(self.scene.c2w[ref])
        p = (world @ w2c[:3, :3].T + w2c[:3, 3]) * self.scale
        p = self._noisy(p, self._rng(3, [fid]), self.noise * self.scale)
        pts = np.where(valid[..., None], p, 0.0).astype(np.float32)
        conf = np.where(valid, self.conf, 1.01).astype(np.float32)
        return FramePrediction(int(fid), torch.from_numpy(pts), torch.from_numpy(conf),
                               {"memory_size": 0, "skipped": False, "pruned": False})

    def start(self, memory=None) -> _OracleSpann3RStream:
        return _OracleSpann3RStream(self)

    def offline(self, images: Tensor, frame_ids: Sequence[int], memory=None) -> tuple[list[int], list]:
        self.calls["offline"] += 1
        ids = [int(i) for i in frame_ids]
        if images.shape[0] != len(ids) or len(ids) < 2:
            raise ValueError(f"OracleSpann3R.offline: expected >= 2 images with one id each, found "
                             f"{images.shape[0]} and {len(ids)}")
        if self.offline_order is not None:
            order = list(self.offline_order)
        else:
            mid = len(ids) // 2
            order = [mid] + [i for k in range(1, len(ids)) for i in (mid + k, mid - k) if 0 <= i < len(ids)]
        order = [ids[i] for i in order]
        return order, [self.predict(i, order[0]) for i in order]


# --------------------------------------------------------------------------------------------------
# A registered back-end that replays the input's ground truth (benchmarks' sanity reference)
# --------------------------------------------------------------------------------------------------


@dataclass
class GroundTruthConfig:
    """Options of the ``oracle`` back-end (the input's own ground-truth poses and depth, optionally spoiled).

    Attributes:
        pose_noise: standard deviation in metres of the noise added to each camera centre (0 = exact).
        point_noise: standard deviation in metres of the noise added to each output point (0 = exact).
        scale: global scale of the output (1 = metric; another value tests scale-free alignment).
        point_stride: keep every N-th pixel (both axes) of each depth map in the point maps.
        seed: seed of the noise.
    """

    pose_noise: float = 0.0
    point_noise: float = 0.0
    scale: float = 1.0
    point_stride: int = 2
    seed: int = 0


class GroundTruthBackend(Backend):
    """The input's ground-truth ``c2w`` and depth, as a reconstruction.

    A benchmark run with it scores what a perfect method scores under a protocol (about 0 error), which
    checks the protocol and the data; with ``pose_noise`` / ``point_noise`` / ``scale`` it is a method
    with known errors. Point maps are the depth maps unprojected with the ground-truth cameras (every
    ``point_stride``-th pixel), confidences 10 where the depth is valid.
    """

    name = "oracle"
    description = "replays the input's ground-truth poses and depth (benchmark reference and tests)"
    config_cls = GroundTruthConfig
    capabilities = Capabilities(needs_depth=True, metric_scale="always",
                                outputs=frozenset({"cameras", "point_maps", "points"}))

    def run(self, frames, config=None, *, progress: bool = True, callback=None) -> Reconstruction:
        from forward3d.geometry.camera import depth_to_points
        from forward3d.progress import progress_bar

        cfg = self.resolve_config(config)
        if cfg.point_stride < 1 or not cfg.scale > 0:
            raise ValueError(f"oracle: expected point_stride >= 1 and scale > 0, found {cfg.point_stride}, {cfg.scale}")
        rng = np.random.default_rng(cfg.seed)
        c2ws, Ks, maps, confs, names, ts = [], [], [], [], [], []
        size = None
        bar = progress_bar(len(frames) if hasattr(frames, "__len__") else None, "oracle", unit="frame",
                           enabled=progress)
        for f in frames:
            bar.update(1)
            if f.c2w is None or f.depth is None or f.K is None:
                raise ValueError(f"oracle: frame {f.name} ({f.source or 'input'}) has no ground-truth pose, depth "
                                 "or intrinsics: the oracle back-end needs all three")
            c2w = np.asarray(f.c2w, np.float64).copy()
            c2w[:3, 3] = c2w[:3, 3] * cfg.scale + rng.normal(0.0, cfg.pose_noise, 3) * cfg.scale
            s = cfg.point_stride
            pts = depth_to_points(f.depth, f.K, f.c2w, fill=np.nan)[s // 2::s, s // 2::s] * cfg.scale
            valid = np.isfinite(pts).all(-1)
            pts = pts + rng.normal(0.0, cfg.point_noise, pts.shape) * cfg.scale
            pts[~valid] = 0.0
            c2ws.append(c2w)
            Ks.append(np.asarray(f.K, np.float64))
            maps.append(pts.astype(np.float32))
            confs.append(np.where(valid, 10.0, 0.0).astype(np.float32))
            names.append(f.name)
            ts.append(f.timestamp)
            size = (f.width, f.height)
        bar.close()
        if not c2ws:
            raise ValueError("oracle: the input has no frames")
        point_maps, conf = np.stack(maps), np.stack(confs)
        ok = conf > 0
        cloud = PointCloud(point_maps[ok].astype(np.float64))
        return Reconstruction(np.stack(c2ws), np.stack(Ks), size, frame_names=names,
                              timestamps=np.asarray(ts, np.float64), point_maps=point_maps, confidences=conf,
                              points=cloud, backend=self.name, metric_scale=cfg.scale == 1.0)


class OracleView:
    """Ground truth of a synthetic scene for views given in a source camera's frame.

    Args:
        scene: a :class:`~forward3d.data.synthetic.SyntheticScene`.
        source_c2w: ``[4, 4]`` world pose of the source camera (the loop's origin).
        K, width, height: the loop's camera.
        depth_scale, depth_shift: the monocular depth returned is ``scale * gt + shift`` (1, 0: exact).

    ``inpaint(image, mask, prompt, c2w)`` fills the mask with the ground-truth render (an
    :class:`~forward3d.models.inpaint.Inpainter`); calling the oracle ``(image, K, c2w)`` returns the
    view's depth (a monocular source of :class:`~forward3d.models.depth_completion.AlignedCompleter`).
    """

    name = "oracle"

    def __init__(self, scene, source_c2w: np.ndarray, K: np.ndarray, width: int, height: int,
                 depth_scale: float = 1.0, depth_shift: float = 0.0):
        self.scene, self.source_c2w = scene, np.asarray(source_c2w, np.float64)
        self.K, self.width, self.height = np.asarray(K, np.float64), int(width), int(height)
        self.depth_scale, self.depth_shift = float(depth_scale), float(depth_shift)

    def render(self, c2w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Ground truth ``(rgb, depth)`` of the camera ``c2w`` given in the source camera frame."""
        return self.scene.render(self.source_c2w @ np.asarray(c2w, np.float64), self.K, self.width, self.height)

    def inpaint(self, image, mask, prompt=None, c2w=None) -> np.ndarray:
        if c2w is None:
            raise ValueError("OracleView.inpaint: needs the view's c2w")
        rgb, _ = self.render(c2w)
        return np.where(np.asarray(mask, bool)[..., None], rgb, image)

    def __call__(self, image, K=None, c2w=None) -> np.ndarray:
        if c2w is None:
            raise ValueError("OracleView: needs the view's c2w")
        _, d = self.render(c2w)
        return np.where(d > 0, self.depth_scale * d + self.depth_shift, 0.0)
