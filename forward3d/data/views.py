"""Training views: a :class:`~forward3d.types.Frame` with its validity mask and ids, the image-space
augmentations that keep ``K`` (and ``c2w``) exact, and the collation of samples into tensors.

- :func:`crop_resize` is the reference's ``_crop_resize_if_necessary`` (DUSt3R / SLAM3R): crop the
  largest window centred on the principal point, Lanczos-downscale so the image covers the target
  (plus a random ``aug_crop`` zoom), then centre-crop to the target. ``K`` follows every step through
  :meth:`Intrinsics.cropped` / :meth:`Intrinsics.scaled`; depth is resized with nearest neighbour.
- Portrait frames are rotated by 90 degrees to landscape (:func:`rotate90`), with ``K`` and ``c2w``
  updated so the camera stays a proper OpenCV camera. (The reference transposes the arrays instead,
  which mirrors the image and leaves a left-handed camera.)
- :func:`color_jitter` is torchvision's ``ColorJitter(0.5, 0.5, 0.5, 0.1)`` (brightness, contrast,
  saturation, hue in a random order) in numpy, driven by the caller's ``numpy.random.Generator``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from forward3d.geometry.camera import depth_to_points_torch
from forward3d.io.source_base import resize_depth
from forward3d.types import Frame, Intrinsics

__all__ = ["View", "ViewSample", "ViewBatch", "collate_views", "crop_resize", "crop_to_principal_point",
           "rotate90", "color_jitter", "valid_mask"]

_ROT90_CW = np.array([[0.0, -1.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 1.0]])


def valid_mask(depth: np.ndarray, max_depth: float = 0.0) -> np.ndarray:
    """``[H, W]`` bool: finite positive depth (and ``<= max_depth`` when ``max_depth > 0``)."""
    with np.errstate(invalid="ignore"):
        m = np.isfinite(depth) & (depth > 0)
        if max_depth > 0:
            m &= depth <= max_depth
    return m


@dataclass
class View:
    """One training view.

    Attributes:
        frame: the :class:`Frame`: ``image [H, W, 3]`` uint8, ``depth [H, W]`` float32 (metres, or the
            dataset's units; 0 = invalid), ``K [3, 3]``, ``c2w [4, 4]`` (required), name/index/timestamp.
        valid: ``[H, W]`` bool, pixels whose depth is usable for supervision.
        dataset: registry name of the dataset. ``scene``: scene / sequence id.
        has_depth: False for datasets without depth (all pixels invalid, e.g. RealEstate10K).
    """

    frame: Frame
    valid: np.ndarray
    dataset: str = ""
    scene: str = ""
    has_depth: bool = True

    def __post_init__(self) -> None:
        f = self.frame
        where = f.source or f.name
        if f.K is None or f.c2w is None or f.depth is None:
            missing = [n for n in ("K", "c2w", "depth") if getattr(f, n) is None]
            raise ValueError(f"View ({where}): a training view needs K, c2w and depth, missing {missing}")
        if self.valid.shape != f.depth.shape or self.valid.dtype != bool:
            raise ValueError(f"View ({where}): valid must be a bool [H, W] mask like the depth {list(f.depth.shape)}, "
                             f"found {self.valid.dtype} {list(self.valid.shape)}")

    image = property(lambda self: self.frame.image)
    depth = property(lambda self: self.frame.depth)
    K = property(lambda self: self.frame.K)
    c2w = property(lambda self: self.frame.c2w)
    name = property(lambda self: self.frame.name)
    height = property(lambda self: self.frame.height)
    width = property(lambda self: self.frame.width)

    def points_cam(self) -> np.ndarray:
        """``[H, W, 3]`` float32 camera-frame points of the valid pixels (0 elsewhere)."""
        d = torch.from_numpy(np.where(self.valid, self.depth, 0.0).astype(np.float64))
        return depth_to_points_torch(d, torch.from_numpy(self.K)).numpy().astype(np.float32)

    def points_world(self) -> np.ndarray:
        """``[H, W, 3]`` float32 world points of the valid pixels (0 elsewhere)."""
        d = torch.from_numpy(np.where(self.valid, self.depth, 0.0).astype(np.float64))
        return depth_to_points_torch(d, torch.from_numpy(self.K), torch.from_numpy(self.c2w)).numpy().astype(np.float32)


@dataclass
class ViewSample:
    """One training sample: ``V`` views of one scene, in the order the model sees them.

    Attributes:
        views: the views. ``ref_id``: index of the reference view in ``views``.
        index: the sample index in its dataset. ``seed``: the seed its randomness was drawn from.
    """

    views: list[View]
    ref_id: int
    index: int = 0
    seed: tuple[int, ...] = ()

    def __len__(self) -> int:
        return len(self.views)

    @property
    def dataset(self) -> str:
        return self.views[0].dataset if self.views else ""

    @property
    def scene(self) -> str:
        return self.views[0].scene if self.views else ""


@dataclass
class ViewBatch:
    """``B`` samples of ``V`` views stacked into tensors (what a trainer consumes).

    Attributes:
        image: ``[B, V, 3, H, W]`` float32 in [0, 1] (``normalized()`` gives the [-1, 1] network input).
        depth: ``[B, V, H, W]`` float32, 0 where not ``valid``.
        valid: ``[B, V, H, W]`` bool.
        K: ``[B, V, 3, 3]`` float32. ``c2w``: ``[B, V, 4, 4]`` float32 (dataset world frame).
        pts3d_cam: ``[B, V, H, W, 3]`` camera-frame points (0 where not valid).
        pts3d_world: ``[B, V, H, W, 3]`` world points (0 where not valid).
        ref_id: ``[B]`` int64 reference view of each sample.
        dataset, scene: per sample. ``names``: per sample, per view frame names. ``index``: ``[B]``.
    """

    image: Tensor
    depth: Tensor
    valid: Tensor
    K: Tensor
    c2w: Tensor
    pts3d_cam: Tensor
    pts3d_world: Tensor
    ref_id: Tensor
    dataset: list[str] = field(default_factory=list)
    scene: list[str] = field(default_factory=list)
    names: list[list[str]] = field(default_factory=list)
    index: Tensor | None = None

    def __len__(self) -> int:
        return int(self.image.shape[0])

    @property
    def num_views(self) -> int:
        return int(self.image.shape[1])

    def normalized(self) -> Tensor:
        """``[B, V, 3, H, W]`` images in [-1, 1] (mean = std = 0.5, the CroCo/DUSt3R/SLAM3R input)."""
        return self.image * 2.0 - 1.0

    def to(self, device: torch.device | str) -> "ViewBatch":
        kw = {k: (v.to(device) if isinstance(v, Tensor) else v) for k, v in self.__dict__.items()}
        return ViewBatch(**kw)


def collate_views(samples: list[ViewSample]) -> ViewBatch:
    """Stack samples (same number of views, same image size) into a :class:`ViewBatch`."""
    if not samples:
        raise ValueError("collate_views: expected at least one sample, found none")
    nv = {len(s) for s in samples}
    sizes = {(v.height, v.width) for s in samples for v in s.views}
    if len(nv) != 1 or len(sizes) != 1:
        raise ValueError(f"collate_views: all samples need the same number of views and image size to be batched, "
                         f"found views {sorted(nv)} and sizes (H, W) {sorted(sizes)}")
    views = [v for s in samples for v in s.views]
    B, V = len(samples), nv.pop()
    (H, W), = sizes
    image = torch.from_numpy(np.stack([v.image for v in views])).permute(0, 3, 1, 2).float().div_(255.0)
    valid = torch.from_numpy(np.stack([v.valid for v in views]))
    depth = torch.from_numpy(np.stack([v.depth for v in views]).astype(np.float32))
    depth = torch.where(valid, depth, torch.zeros_like(depth))
    K = torch.from_numpy(np.stack([v.K for v in views])).float()
    c2w = torch.from_numpy(np.stack([v.c2w for v in views]))
    pts_cam = depth_to_points_torch(depth.double(), K.double()).float()
    pts_world = depth_to_points_torch(depth.double(), K.double(), c2w).float()
    return ViewBatch(
        image=image.reshape(B, V, 3, H, W), depth=depth.reshape(B, V, H, W), valid=valid.reshape(B, V, H, W),
        K=K.reshape(B, V, 3, 3), c2w=c2w.float().reshape(B, V, 4, 4), pts3d_cam=pts_cam.reshape(B, V, H, W, 3),
        pts3d_world=pts_world.reshape(B, V, H, W, 3), ref_id=torch.tensor([s.ref_id for s in samples]),
        dataset=[s.dataset for s in samples], scene=[s.scene for s in samples],
        names=[[v.name for v in s.views] for s in samples], index=torch.tensor([s.index for s in samples]),
    )


# --------------------------------------------------------------------------------------------------
# Geometric augmentation (K and c2w stay exact)
# --------------------------------------------------------------------------------------------------


def _intr(frame: Frame) -> Intrinsics:
    if frame.K is None:
        raise ValueError(f"{frame.source or frame.name}: the frame has no intrinsics K")
    return Intrinsics.from_K(frame.K, frame.width, frame.height)


def _crop(frame: Frame, x0: int, y0: int, w: int, h: int) -> Frame:
    intr = _intr(frame).cropped(x0, y0, w, h)
    depth = None if frame.depth is None else np.ascontiguousarray(frame.depth[y0:y0 + h, x0:x0 + w])
    return frame.with_(image=np.ascontiguousarray(frame.image[y0:y0 + h, x0:x0 + w]), depth=depth, K=intr.K)


def rotate90(frame: Frame) -> Frame:
    """Rotate a frame 90 degrees clockwise: ``[H, W]`` -> ``[W, H]``; ``K`` and ``c2w`` updated.

    A pixel ``(u, v)`` moves to ``(H - v, u)``; the new camera axes are ``x' = -y, y' = x, z' = z``,
    so ``K' = [[fy, 0, H - cy], [0, fx, cx]]`` and ``c2w' = c2w @ R^T`` with ``R`` that rotation.
    """
    intr = _intr(frame)
    H = frame.height
    K = np.array([[intr.fy, 0.0, H - intr.cy], [0.0, intr.fx, intr.cx], [0.0, 0.0, 1.0]])
    c2w = None if frame.c2w is None else frame.c2w @ _ROT90_CW.T
    depth = None if frame.depth is None else np.ascontiguousarray(np.rot90(frame.depth, -1))
    return frame.with_(image=np.ascontiguousarray(np.rot90(frame.image, -1)), depth=depth, K=K, c2w=c2w)


def crop_to_principal_point(frame: Frame, min_margin: float = 0.2) -> Frame:
    """Crop the largest window centred on the (rounded) principal point.

    Raises ValueError when the principal point is closer than ``min_margin`` of the image size to a
    border (the reference asserts a margin of more than 1/5).
    """
    intr = _intr(frame)
    W, H = frame.width, frame.height
    cx, cy = int(round(intr.cx)), int(round(intr.cy))
    mx, my = min(cx, W - cx), min(cy, H - cy)
    if mx <= min_margin * W or my <= min_margin * H:
        raise ValueError(f"{frame.source or frame.name}: principal point ({intr.cx:.1f}, {intr.cy:.1f}) of a {W}x{H} "
                         f"image is too close to the border for a centred crop (margin <= {min_margin:g})")
    return _crop(frame, cx - mx, cy - my, 2 * mx, 2 * my)


def _lanczos(image: np.ndarray, width: int, height: int) -> np.ndarray:
    if image.shape[1] == width and image.shape[0] == height:
        return image
    return np.asarray(Image.fromarray(image).resize((width, height), Image.Resampling.LANCZOS))


def crop_resize(frame: Frame, resolution: tuple[int, int], rng: np.random.Generator | None = None,
                aug_crop: int = 0, landscape: bool = True) -> Frame:
    """The reference crop/resize: principal-point crop, Lanczos downscale, centre crop to ``resolution``.

    Args:
        frame: with ``K`` (and optionally depth, c2w).
        resolution: ``(W, H)`` output size (``W >= H``).
        rng: draws the ``aug_crop`` zoom and the orientation of square frames.
        aug_crop: the downscaled image covers ``resolution + r`` with ``r`` uniform in ``[0, aug_crop)``
            (a random zoom in; 0 or 1 = none).
        landscape: rotate portrait frames (``H > 1.1 W``) to landscape with :func:`rotate90`, and square
            ones (``0.9 < H / W < 1.1``) with probability 1/2 when ``resolution`` is not square.
    """
    rng = rng if rng is not None else np.random.default_rng(0)
    tw, th = int(resolution[0]), int(resolution[1])
    if tw <= 0 or th <= 0:
        raise ValueError(f"crop_resize: expected a positive resolution (W, H), found {resolution}")
    frame = crop_to_principal_point(frame)
    W, H = frame.width, frame.height
    if landscape:
        if H > 1.1 * W:
            frame = rotate90(frame)
        elif 0.9 < H / W < 1.1 and tw != th and rng.integers(2):
            frame = rotate90(frame)
    W, H = frame.width, frame.height
    extra = int(rng.integers(0, aug_crop)) if aug_crop > 1 else 0
    scale = max((tw + extra) / W, (th + extra) / H) + 1e-8
    nw, nh = max(tw, int(math.floor(W * scale))), max(th, int(math.floor(H * scale)))
    intr = _intr(frame).scaled(nw, nh)
    depth = None if frame.depth is None else resize_depth(frame.depth, nw, nh)
    frame = frame.with_(image=_lanczos(frame.image, nw, nh), depth=depth, K=intr.K)
    x0, y0 = int(round(0.5 * (nw - tw))), int(round(0.5 * (nh - th)))
    return _crop(frame, x0, y0, tw, th)


# --------------------------------------------------------------------------------------------------
# Photometric augmentation
# --------------------------------------------------------------------------------------------------


def _gray(x: np.ndarray) -> np.ndarray:
    return x[..., 0] * 0.299 + x[..., 1] * 0.587 + x[..., 2] * 0.114


def _rgb_to_hsv(x: np.ndarray) -> np.ndarray:
    """``[..., 3]`` RGB in [0, 1] -> HSV (hue in [0, 1)), as :func:`colorsys.rgb_to_hsv`."""
    r, g, b = np.ascontiguousarray(np.moveaxis(x, -1, 0))  # contiguous planes: fast elementwise maths
    mx, mn = np.maximum(np.maximum(r, g), b), np.minimum(np.minimum(r, g), b)
    d = mx - mn
    ds = np.where(d > 0, d, np.float32(1.0))
    h = np.select([mx == r, mx == g], [(g - b) / ds, (b - r) / ds + 2.0], (r - g) / ds + 4.0)
    h = np.where(d > 0, (h / 6.0) % 1.0, 0.0).astype(x.dtype)
    s = np.where(mx > 0, d / np.where(mx > 0, mx, np.float32(1.0)), 0.0).astype(x.dtype)
    return np.stack([h, s, mx], -1)


def _hsv_to_rgb(x: np.ndarray) -> np.ndarray:
    """HSV -> RGB: channel ``c = v - v s clip(min(k, 4 - k), 0, 1)`` with ``k = (n_c + 6 h) mod 6``,
    ``n = (5, 3, 1)`` for (R, G, B) (the closed form of the hexcone, equal to :mod:`colorsys`)."""
    h, s, v = x[..., 0:1], x[..., 1:2], x[..., 2:3]
    k = (np.array([5.0, 3.0, 1.0], dtype=x.dtype) + 6.0 * h) % 6.0
    return v - v * s * np.clip(np.minimum(k, 4.0 - k), 0.0, 1.0)


def color_jitter(image: np.ndarray, rng: np.random.Generator, brightness: float = 0.5, contrast: float = 0.5,
                 saturation: float = 0.5, hue: float = 0.1) -> np.ndarray:
    """torchvision-style colour jitter of an ``[H, W, 3]`` uint8 image (factors drawn from ``rng``).

    Brightness/contrast/saturation factors are uniform in ``[max(0, 1 - a), 1 + a]``, the hue shift
    uniform in ``[-hue, hue]`` (fraction of a turn); the four operations run in a random order.
    """
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"color_jitter: expected an [H, W, 3] uint8 image, found {image.dtype} {list(image.shape)}")
    if not 0.0 <= hue <= 0.5 or min(brightness, contrast, saturation) < 0:
        raise ValueError(f"color_jitter: expected non-negative factors and hue in [0, 0.5], found "
                         f"{(brightness, contrast, saturation, hue)}")
    x = image.astype(np.float32) / 255.0
    order = rng.permutation(4)
    fb = rng.uniform(max(0.0, 1 - brightness), 1 + brightness)
    fc = rng.uniform(max(0.0, 1 - contrast), 1 + contrast)
    fs = rng.uniform(max(0.0, 1 - saturation), 1 + saturation)
    fh = rng.uniform(-hue, hue)
    for op in order:
        if op == 0 and brightness > 0:
            x = np.clip(x * fb, 0.0, 1.0)
        elif op == 1 and contrast > 0:
            x = np.clip(fc * x + (1 - fc) * _gray(x).mean(), 0.0, 1.0)
        elif op == 2 and saturation > 0:
            x = np.clip(fs * x + (1 - fs) * _gray(x)[..., None], 0.0, 1.0)
        elif op == 3 and hue > 0:
            hsv = _rgb_to_hsv(x)
            hsv[..., 0] = (hsv[..., 0] + fh) % 1.0
            x = np.clip(_hsv_to_rgb(hsv), 0.0, 1.0)
    return (x * 255.0 + 0.5).astype(np.uint8)
