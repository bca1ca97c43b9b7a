"""Flash3D input preparation: resize to the network size, zero-pad the border, build ``K_src``.

The network sees ``(height + 2 pad) x (width + 2 pad)`` (320 x 448 for the released model). ``K_src``
keeps the focal lengths of the resized (unpadded) image and shifts the principal point by the
padding; ``K_tgt`` is the resized, unpadded intrinsics that renders of the source frustum use.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

logger = logging.getLogger(__name__)

__all__ = ["Flash3DInput", "prepare_input", "pad_depth"]


@dataclass
class Flash3DInput:
    """Attributes:
        image: ``[1, 3, Hp, Wp]`` float RGB in [0, 1], zero-padded.
        image_unpadded: ``[1, 3, H, W]``.
        K_src: ``[1, 3, 3]`` intrinsics of the padded grid. ``K_tgt``: ``[1, 3, 3]`` unpadded.
        depth: ``[1, 1, Hp, Wp]`` metric depth on the padded grid when a depth map was given.
        pad: border width in pixels. ``scale``: (sx, sy) from the original image to the network size.
    """

    image: Tensor
    image_unpadded: Tensor
    K_src: Tensor
    K_tgt: Tensor
    depth: Tensor | None
    pad: int
    scale: tuple[float, float]


def _image_tensor(image: np.ndarray | Tensor) -> Tensor:
    if isinstance(image, np.ndarray):
        if image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"image must be [H, W, 3], found {list(image.shape)}")
        t = torch.from_numpy(np.array(image, copy=True)).permute(2, 0, 1)[None]
        return t.float() / 255.0 if image.dtype == np.uint8 else t.float()
    if image.ndim == 3:
        image = image[None]
    if image.ndim != 4 or image.shape[1] != 3:
        raise ValueError(f"image tensor must be [3, H, W] or [B, 3, H, W], found {list(image.shape)}")
    return image.float() / 255.0 if image.dtype == torch.uint8 else image.float()


def pad_depth(depth: Tensor, pad: int) -> Tensor:
    """Extend ``[B, 1, H, W]`` depth into a ``pad`` border by edge replication (a sensor or
    given depth map has no values outside the frame; the network needs some)."""
    return F.pad(depth, (pad, pad, pad, pad), mode="replicate") if pad > 0 else depth


def prepare_input(image: np.ndarray | Tensor, K: np.ndarray | Tensor, height: int = 256, width: int = 384,
                  pad: int = 32, depth: np.ndarray | Tensor | None = None) -> Flash3DInput:
    """Resize ``image`` (``[H, W, 3]`` uint8 or ``[3, H, W]``/``[1, 3, H, W]`` float in [0, 1]) with its
    intrinsics ``K`` (``[3, 3]``, pixels of the given image) to ``height x width`` and pad by ``pad``.

    ``depth`` (``[H, W]`` metric z-depth of the same image, 0 = invalid) is resized with nearest
    neighbour (holes filled from the nearest valid pixel) and padded by edge replication.
    """
    img = _image_tensor(image)
    h0, w0 = img.shape[-2:]
    K = torch.as_tensor(np.asarray(K, dtype=np.float64) if isinstance(K, np.ndarray) else K, dtype=torch.float64)
    if K.shape != (3, 3):
        raise ValueError(f"K must be [3, 3], found {list(K.shape)}")
    sx, sy = width / w0, height / h0
    if max(sx, sy) / min(sx, sy) > 1.1:  # e.g. a portrait photo into the landscape network input
        logger.warning("Flash3D: the %dx%d image is stretched to the network's %dx%d (aspect %.2f -> %.2f; K is "
                       "scaled per axis, so geometry stays consistent, but the network was trained on %.2f "
                       "images: expect lower quality; crop the image to that aspect for best results)",
                       w0, h0, width, height, w0 / h0, width / height, width / height)
    img = F.interpolate(img, size=(height, width), mode="bilinear", align_corners=False, antialias=True).clamp(0, 1)
    K_tgt = K.clone()
    K_tgt[0] *= sx
    K_tgt[1] *= sy
    K_src = K_tgt.clone()
    K_src[0, 2] += pad
    K_src[1, 2] += pad
    d = None
    if depth is not None:
        dt = torch.as_tensor(np.asarray(depth, np.float32) if isinstance(depth, np.ndarray) else depth).float()
        dt = dt.reshape(1, 1, *dt.shape[-2:])
        if tuple(dt.shape[-2:]) != (h0, w0):
            raise ValueError(f"depth must match the image size {h0}x{w0}, found {list(dt.shape[-2:])}")
        valid = torch.isfinite(dt) & (dt > 0)
        if not valid.any():
            raise ValueError("depth map has no valid (finite, > 0) value")
        dt = _fill_holes(torch.where(valid, dt, torch.zeros_like(dt)))
        d = pad_depth(F.interpolate(dt, size=(height, width), mode="nearest"), pad)
    padded = F.pad(img, (pad, pad, pad, pad), value=0.0)
    return Flash3DInput(padded, img, K_src[None].float(), K_tgt[None].float(), d, pad, (sx, sy))


def _fill_holes(depth: Tensor) -> Tensor:
    """Fill zeros of ``[1, 1, H, W]`` depth with the nearest valid value (scipy's distance transform)."""
    if (depth > 0).all():
        return depth
    from scipy import ndimage

    d = depth[0, 0].numpy()
    idx = ndimage.distance_transform_edt(d <= 0, return_distances=False, return_indices=True)
    return torch.from_numpy(d[tuple(idx)].copy())[None, None]
