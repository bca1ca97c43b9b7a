"""Pieces shared by the offline and online SLAM3R pipelines: configuration, preprocessing (resize,
centre crop, normalisation, kept crop transform), point-map normalisation, RGB-D depth correction,
scene-frame retrieval and fusion of the final point cloud.

See ``../shared/specs/slam3r.md`` (reconstruction pipeline) for the reference behaviour.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Literal, Sequence

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from forward3d.config import config_to_dict, option
from forward3d.geometry.camera import crop_K, scale_K
from forward3d.types import Frame, PointCloud

logger = logging.getLogger(__name__)

__all__ = [
    "SLAM3RConfig",
    "CropTransform",
    "crop_transform",
    "crop_transform_dust3r",
    "PreparedFrame",
    "prepare_frame",
    "encoder_input",
    "model_depth_channels",
    "normalize_points",
    "fit_depth_scale",
    "correct_points_with_depth",
    "retrieve_scene_frames",
    "fuse_point_cloud",
]


# --------------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------------


@dataclass
class SLAM3RConfig:
    """Every option of the reference reconstruction CLI (same defaults) plus forward3d's additions.

    Attributes:
        i2p: I2P weights: a local folder/file or a hub id.
        l2w: L2W weights: a local folder/file or a hub id.
        i2p_config: config.json of the I2P weights (when it is not beside them).
        l2w_config: config.json of the L2W weights (when it is not beside them).
        device: auto (CUDA when available), cpu, cuda or cuda:N.
        dtype: compute dtype of the networks.
        online: online mode: frames one at a time, past frames only, bounded memory.
        keyframe_stride: keyframe stride; -1 = adaptive.
        initial_winsize: initial window size.
        win_r: I2P window radius.
        conf_thres_i2p: I2P confidence threshold.
        num_scene_frame: scene frames retrieved per L2W call.
        max_num_register: frames registered per L2W call at most.
        conf_thres_l2w: confidence threshold of exported points.
        num_points_save: points in point_cloud.ply.
        update_buffer_intv: buffer update interval (in units of the stride).
        buffer_size: buffering set capacity (<= 0: unbounded).
        buffer_strategy: buffering set policy.
        keyframe_adapt_min, keyframe_adapt_max, keyframe_adapt_stride: candidate strides of the adaptive
            keyframe stride.
        seed: random seed.
        retrieve_freq: online: retrieve scene frames every N frames.
        init_conf_thres: mean I2P confidence under which the initial window shrinks (reference: 5).
        adapt_sample_windows: windows sampled per candidate stride (reference: 10).
        depth_correction: fit each frame's predicted depth to its sensor depth when it has one (metric
            scale); --no-depth-correction ignores sensor depth (relative scale).
        depth_fit: RGB-D depth correction fit.
        depth_min, depth_max: valid sensor depth range in metres.
        depth_min_pixels: fewer valid pixel pairs than this -> no depth fit for that frame.
        intrinsics: user ``(fx, fy, cx, cy)`` in pixels of the ORIGINAL images; None = estimate.
        use_frame_intrinsics: use the intrinsics the input provides (datasets, --intrinsics) instead of
            estimating them.
        online_warmup: frames collected before choosing an adaptive stride in online mode.
        encode_batch_size: batch size of the encoder.
        i2p_batch_size: batch size of the per-frame I2P windows.
        camera_max_points: points used per frame by the focal and Procrustes fits.
        spool_dir: online: keep per-frame results in this folder (default: a temporary one).
    """

    i2p: str = option("siyan824/slam3r_i2p", metavar="WEIGHTS")
    l2w: str = option("siyan824/slam3r_l2w", metavar="WEIGHTS")
    i2p_config: str | None = option(None, metavar="JSON")
    l2w_config: str | None = option(None, metavar="JSON")
    device: str = "auto"
    dtype: Literal["fp32", "bf16", "fp16"] = "fp32"
    online: bool = False
    keyframe_stride: int = -1
    initial_winsize: int = 5
    win_r: int = 3
    conf_thres_i2p: float = 1.5
    num_scene_frame: int = 10
    max_num_register: int = 10
    conf_thres_l2w: float = 12.0
    num_points_save: int = 2_000_000
    update_buffer_intv: int = 1
    buffer_size: int = 100
    buffer_strategy: Literal["reservoir", "fifo"] = "reservoir"
    keyframe_adapt_min: int = 1
    keyframe_adapt_max: int = 20
    keyframe_adapt_stride: int = 1
    seed: int = 42
    retrieve_freq: int = 1
    # forward3d additions
    init_conf_thres: float = 5.0
    adapt_sample_windows: int = 10
    depth_correction: bool = True
    depth_fit: Literal["scale", "scale_shift"] = "scale"
    depth_min: float = 1e-3
    depth_max: float = 100.0
    depth_min_pixels: int = 32
    intrinsics: tuple[float, float, float, float] | None = option(None, cli=False)
    use_frame_intrinsics: bool = option(False, aliases=("--use-dataset-intrinsics",))
    online_warmup: int = 30
    encode_batch_size: int = 16
    i2p_batch_size: int = 8
    camera_max_points: int = 4096
    spool_dir: str | None = option(None, metavar="DIR")

    def __post_init__(self) -> None:
        if self.buffer_strategy not in ("reservoir", "fifo"):
            raise ValueError(f"SLAM3RConfig.buffer_strategy: expected 'reservoir' or 'fifo', found {self.buffer_strategy!r}")
        if self.dtype not in ("fp32", "bf16", "fp16"):
            raise ValueError(f"SLAM3RConfig.dtype: expected 'fp32', 'bf16' or 'fp16', found {self.dtype!r}")
        if self.depth_fit not in ("scale", "scale_shift"):
            raise ValueError(f"SLAM3RConfig.depth_fit: expected 'scale' or 'scale_shift', found {self.depth_fit!r}")
        if self.keyframe_stride == 0 or self.keyframe_stride < -1:
            raise ValueError(f"SLAM3RConfig.keyframe_stride: expected -1 (adaptive) or >= 1, found {self.keyframe_stride}")
        for name in ("initial_winsize", "win_r", "num_scene_frame", "max_num_register", "update_buffer_intv",
                     "keyframe_adapt_min", "keyframe_adapt_max", "keyframe_adapt_stride", "retrieve_freq",
                     "encode_batch_size", "i2p_batch_size", "adapt_sample_windows"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"SLAM3RConfig.{name}: expected >= 1, found {getattr(self, name)}")
        if self.initial_winsize < 2:
            raise ValueError(f"SLAM3RConfig.initial_winsize: expected >= 2, found {self.initial_winsize}")
        if 0 < self.buffer_size < self.initial_winsize:
            raise ValueError(f"SLAM3RConfig.buffer_size: expected <= 0 (unbounded) or >= initial_winsize "
                             f"({self.initial_winsize}), found {self.buffer_size}")
        if not 0.0 < self.depth_min < self.depth_max:
            raise ValueError(f"SLAM3RConfig: expected 0 < depth_min < depth_max, found {self.depth_min}, {self.depth_max}")
        if self.intrinsics is not None:
            if len(self.intrinsics) != 4:
                raise ValueError(f"SLAM3RConfig.intrinsics: expected (fx, fy, cx, cy), found {self.intrinsics}")
            self.intrinsics = tuple(float(v) for v in self.intrinsics)  # type: ignore[assignment]

    def to_dict(self) -> dict:
        return config_to_dict(self)


# --------------------------------------------------------------------------------------------------
# Preprocessing
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CropTransform:
    """Optionally cut the window ``[pre_x0, pre_x0 + pre_w) x [pre_y0, pre_y0 + pre_h)`` of the
    ``src`` image (0 sizes = the whole image), resize that to ``resized``, then crop the window at
    ``(x0, y0)`` of size ``out``.

    A model pixel coordinate ``(u, v)`` (continuous, pixel centres at +0.5) maps to the original
    image as ``((u + x0) / sx + pre_x0, (v + y0) / sy + pre_y0)`` with ``sx = resized_w / window_w``.
    """

    src_w: int
    src_h: int
    resized_w: int
    resized_h: int
    x0: int
    y0: int
    out_w: int
    out_h: int
    pre_x0: int = 0
    pre_y0: int = 0
    pre_w: int = 0
    pre_h: int = 0

    @property
    def window_w(self) -> int:
        """Width of the part of the source image that is resized."""
        return self.pre_w or self.src_w

    @property
    def window_h(self) -> int:
        return self.pre_h or self.src_h

    @property
    def sx(self) -> float:
        return self.resized_w / self.window_w

    @property
    def sy(self) -> float:
        return self.resized_h / self.window_h

    def K_to_model(self, K: np.ndarray) -> np.ndarray:
        """``[3, 3]`` intrinsics of the original image -> intrinsics of the model crop."""
        K = crop_K(scale_K(crop_K(K, self.pre_x0, self.pre_y0), self.sx, self.sy), self.x0, self.y0)
        K[2] = [0.0, 0.0, 1.0]
        return K

    def K_to_original(self, K: np.ndarray) -> np.ndarray:
        """``[..., 3, 3]`` intrinsics of the model crop -> intrinsics of the original image."""
        K = np.array(K, dtype=np.float64, copy=True)
        K[..., 0, 2] += self.x0
        K[..., 1, 2] += self.y0
        K[..., 0, :] /= self.sx
        K[..., 1, :] /= self.sy
        K[..., 0, 2] += self.pre_x0 * K[..., 2, 2]
        K[..., 1, 2] += self.pre_y0 * K[..., 2, 2]
        return K

    def source_pixels(self) -> tuple[np.ndarray, np.ndarray]:
        """Integer source pixel (row, col) nearest to every model pixel centre: ``[H]``, ``[W]``."""
        u = (np.arange(self.out_w) + 0.5 + self.x0) / self.sx + self.pre_x0
        v = (np.arange(self.out_h) + 0.5 + self.y0) / self.sy + self.pre_y0
        cols = np.clip(np.floor(u).astype(np.int64), 0, self.src_w - 1)
        rows = np.clip(np.floor(v).astype(np.int64), 0, self.src_h - 1)
        return rows, cols


def crop_transform(src_w: int, src_h: int, image_size: tuple[int, int]) -> CropTransform:
    """Resize to cover ``image_size`` = ``(H, W)`` keeping the aspect ratio, then centre-crop.

    For a square model size this is the reference loader's "short side to 224, centre crop".
    """
    out_h, out_w = int(image_size[0]), int(image_size[1])
    if src_w < 1 or src_h < 1:
        raise ValueError(f"crop_transform: expected a positive image size, found {src_w}x{src_h}")
    scale = max(out_w / src_w, out_h / src_h)
    rw = max(out_w, int(round(src_w * scale)))
    rh = max(out_h, int(round(src_h * scale)))
    return CropTransform(int(src_w), int(src_h), rw, rh, (rw - out_w) // 2, (rh - out_h) // 2, out_w, out_h)


def crop_transform_dust3r(src_w: int, src_h: int, image_size: tuple[int, int]) -> CropTransform:
    """The DUSt3R / Spann3R dataset crop (``_crop_resize_if_necessary`` with the demo's principal
    point ``(W // 2, H // 2)``): cut the centred window ``2 (W // 2) x 2 (H // 2)`` (drops the last
    column / row of odd sizes), resize by ``max(out / size) + 1e-8`` with the sizes floored, then
    crop the centre with offsets ``round_half_even(margin / 2)``.
    """
    out_h, out_w = int(image_size[0]), int(image_size[1])
    if src_w < 2 or src_h < 2:
        raise ValueError(f"crop_transform_dust3r: expected an image of at least 2x2 pixels, found {src_w}x{src_h}")
    ww, wh = 2 * (src_w // 2), 2 * (src_h // 2)
    scale = max(out_w / ww, out_h / wh) + 1e-8
    rw, rh = int(np.floor(ww * scale)), int(np.floor(wh * scale))
    x0, y0 = int(np.round(0.5 * (rw - out_w))), int(np.round(0.5 * (rh - out_h)))
    return CropTransform(int(src_w), int(src_h), rw, rh, x0, y0, out_w, out_h, 0, 0, ww, wh)


@dataclass
class PreparedFrame:
    """A frame at model resolution.

    Attributes:
        image: ``[3, H, W]`` float32 in [-1, 1] (CPU).
        colors: ``[H, W, 3]`` uint8 of the crop.
        depth: optional ``[H, W]`` float32 sensor depth resampled (nearest) to the crop; 0 = invalid.
        crop: the crop transform back to the original image.
        K: optional ``[3, 3]`` intrinsics of the ORIGINAL image (from the frame).
        name, timestamp, index: from the frame.
    """

    image: Tensor
    colors: np.ndarray
    depth: np.ndarray | None
    crop: CropTransform
    K: np.ndarray | None
    name: str
    timestamp: float
    index: int


def prepare_frame(frame: Frame, image_size: tuple[int, int], crop: CropTransform | None = None) -> PreparedFrame:
    """Resize to cover, centre-crop, normalise to [-1, 1]; resample the depth (nearest) to the crop.

    ``crop``: the transform to apply (default :func:`crop_transform` of the frame's size).
    """
    crop = crop or crop_transform(frame.width, frame.height, image_size)
    if (crop.src_w, crop.src_h) != (frame.width, frame.height):
        raise ValueError(f"prepare_frame ({frame.source or frame.name}): crop transform for "
                         f"{crop.src_w}x{crop.src_h}, image is {frame.width}x{frame.height}")
    img = Image.fromarray(frame.image)
    if (crop.window_w, crop.window_h) != (frame.width, frame.height):
        img = img.crop((crop.pre_x0, crop.pre_y0, crop.pre_x0 + crop.window_w, crop.pre_y0 + crop.window_h))
    if (crop.resized_w, crop.resized_h) != (crop.window_w, crop.window_h):
        down = crop.resized_w < crop.window_w
        img = img.resize((crop.resized_w, crop.resized_h), Image.LANCZOS if down else Image.BICUBIC)
    img = img.crop((crop.x0, crop.y0, crop.x0 + crop.out_w, crop.y0 + crop.out_h))
    colors = np.array(img, dtype=np.uint8)
    image = torch.from_numpy(colors).permute(2, 0, 1).float().div_(127.5).sub_(1.0)
    depth = None
    if frame.depth is not None:
        rows, cols = crop.source_pixels()
        depth = np.ascontiguousarray(frame.depth[rows[:, None], cols[None, :]], dtype=np.float32)
        depth[~np.isfinite(depth)] = 0.0
    return PreparedFrame(image, colors, depth, crop, frame.K, frame.name or f"{frame.index:06d}",
                         float(frame.timestamp), int(frame.index))


def encoder_input(p: PreparedFrame, depth_channels: int, depth_min: float = 1e-3, depth_max: float = 100.0) -> Tensor:
    """The encoder input of a prepared frame: ``[3 + k, H, W]``, the RGB image then, for an RGB-D
    checkpoint (``k = depth_channels`` > 0), the sensor depth planes (depth outside
    ``[depth_min, depth_max]`` or a frame without depth: invalid, i.e. 0)."""
    if depth_channels == 0:
        return p.image
    from forward3d.models.slam3r.depth_input import stack_depth

    if p.depth is None:
        return stack_depth(p.image, None, depth_channels)
    d = torch.from_numpy(p.depth)
    valid = (d >= depth_min) & (d <= depth_max)
    return stack_depth(p.image, d, depth_channels, valid)


def model_depth_channels(models) -> int:
    """Depth channels the models' encoder takes (0 for RGB checkpoints and oracles)."""
    return int(getattr(models, "depth_channels", 0) or 0)


# --------------------------------------------------------------------------------------------------
# Point-map scale: normalisation and depth correction
# --------------------------------------------------------------------------------------------------


def normalize_points(pts: Sequence[Tensor], valid: Sequence[Tensor]) -> tuple[list[Tensor], float]:
    """Divide point maps jointly by the mean distance to the origin of their valid points.

    ``pts``: point maps ``[..., 3]``; ``valid``: masks ``[...]``. Returns (normalised maps, factor).
    """
    norms = [p[m].norm(dim=-1) for p, m in zip(pts, valid)]
    count = sum(int(n.numel()) for n in norms)
    factor = float(sum(float(n.sum()) for n in norms) / count) if count else 1.0
    if not math.isfinite(factor) or factor <= 1e-12:
        factor = 1.0
    return [p / factor for p in pts], factor


def fit_depth_scale(z_pred: np.ndarray, z_sensor: np.ndarray, valid: np.ndarray,
                    fit: str = "scale", depth_min: float = 1e-3, depth_max: float = 100.0,
                    min_pixels: int = 32, seed: int = 0) -> tuple[float, float, float] | None:
    """Robust fit ``z_sensor ~ a * z_pred (+ b)`` on pixels valid in both.

    ``z_pred``, ``z_sensor``: ``[H, W]``; ``valid``: ``[H, W]`` bool (prediction mask). The sensor
    depth must lie in ``[depth_min, depth_max]``. ``"scale"``: median of ratios then least squares on
    inliers; ``"scale_shift"``: 2-point RANSAC then least squares on inliers. Returns
    ``(a, b, inlier_ratio)`` or None when fewer than ``min_pixels`` pairs.
    """
    zp = np.asarray(z_pred, dtype=np.float64)
    zs = np.asarray(z_sensor, dtype=np.float64)
    m = valid & np.isfinite(zp) & np.isfinite(zs) & (zp > 1e-8) & (zs >= depth_min) & (zs <= depth_max)
    zp, zs = zp[m], zs[m]
    n = len(zp)
    if n < max(min_pixels, 2):
        return None
    if fit == "scale":
        a = float(np.median(zs / zp))
        for _ in range(3):
            res = np.abs(a * zp - zs)
            thr = max(3.0 * 1.4826 * float(np.median(res)), 1e-6 * float(np.median(zs)))
            inl = res <= thr
            if inl.sum() < 2:
                break
            a = float((zp[inl] * zs[inl]).sum() / (zp[inl] ** 2).sum())
        inl = np.abs(a * zp - zs) <= max(3.0 * 1.4826 * float(np.median(np.abs(a * zp - zs))), 1e-9)
        return (a, 0.0, float(inl.mean())) if a > 0 and math.isfinite(a) else None
    if fit != "scale_shift":
        raise ValueError(f"fit_depth_scale: expected fit 'scale' or 'scale_shift', found {fit!r}")
    rng = np.random.default_rng(seed)
    thr = 0.02 * float(np.median(zs))
    best, best_count = (float(np.median(zs / zp)), 0.0), -1
    for _ in range(128):
        i, j = rng.choice(n, 2, replace=False)
        if abs(zp[i] - zp[j]) < 1e-9:
            continue
        a = (zs[i] - zs[j]) / (zp[i] - zp[j])
        if a <= 0:
            continue
        b = zs[i] - a * zp[i]
        count = int((np.abs(a * zp + b - zs) <= thr).sum())
        if count > best_count:
            best, best_count = (a, b), count
    a, b = best
    for _ in range(2):
        inl = np.abs(a * zp + b - zs) <= thr
        if inl.sum() < 3:
            break
        A = np.stack([zp[inl], np.ones(int(inl.sum()))], 1)
        a, b = np.linalg.lstsq(A, zs[inl], rcond=None)[0]
    if not (a > 0 and math.isfinite(a) and math.isfinite(b)):
        return None
    return float(a), float(b), float((np.abs(a * zp + b - zs) <= thr).mean())


def correct_points_with_depth(pts: Tensor, a: float, b: float = 0.0) -> Tensor:
    """Scale camera-frame points ``[..., 3]`` so that their depth becomes ``a * z + b`` (along rays)."""
    if b == 0.0:
        return pts * a
    z = pts[..., 2:3]
    factor = torch.where(z.abs() > 1e-8, a + b / z.clamp_min(1e-8), torch.zeros_like(z))
    return pts * factor


# --------------------------------------------------------------------------------------------------
# Retrieval and fusion
# --------------------------------------------------------------------------------------------------


def retrieve_scene_frames(models, cand_tokens: Tensor, query_tokens: Tensor, num: int) -> list[int]:
    """Indices (into the candidates) of the ``num`` best scene frames for the queries.

    Reference ``scene_frame_retrieve`` / ``sel_ids_by_score``: all candidates if there are at most
    ``num``; else score = mean over queries and patches of the corr score c, mapped ``(c - 1) / c``,
    top ``num`` in descending order.
    """
    m = int(cand_tokens.shape[0])
    if num >= m:
        return list(range(m))
    with torch.no_grad():
        scores = models.corr_scores(query_tokens, cand_tokens).float()  # [M, Q, T']
    c = scores.mean(dim=(1, 2))
    c = (c - 1.0) / c
    order = torch.argsort(c.cpu(), descending=True, stable=True)
    return [int(i) for i in order[:num]]


def fuse_point_cloud(chunks, total_valid: int, num_points: int, seed: int) -> PointCloud:
    """Uniformly sample ``num_points`` of the valid points of all frames without concatenating them.

    ``chunks``: a callable returning an iterator of ``(points [n, 3], colors [n, 3] uint8)`` per frame,
    already filtered by confidence, in a fixed order; ``total_valid``: the sum of the ``n``. Sequential
    sampling without replacement (a hypergeometric draw per chunk): memory O(num_points + chunk).
    """
    rng = np.random.default_rng(seed)
    k = min(int(num_points), int(total_valid))
    if k <= 0:
        return PointCloud(np.zeros((0, 3), np.float32), np.zeros((0, 3), np.uint8))
    pts_out = np.empty((k, 3), np.float32)
    col_out = np.empty((k, 3), np.uint8)
    left_total, left_k, filled = int(total_valid), k, 0
    for pts, cols in chunks():
        n = len(pts)
        if left_k <= 0:
            break
        if n == 0:
            continue
        n = min(n, left_total)
        take = left_k if left_total <= n else int(rng.hypergeometric(n, left_total - n, left_k))
        if take > 0:
            idx = np.sort(rng.choice(n, take, replace=False)) if take < n else np.arange(n)
            pts_out[filled:filled + take] = pts[idx]
            col_out[filled:filled + take] = cols[idx]
            filled += take
        left_total -= n
        left_k -= take
    return PointCloud(pts_out[:filled], col_out[:filled])
