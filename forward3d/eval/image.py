"""Image metrics and losses: PSNR and SSIM (differentiable, torch).

SSIM follows the standard definition used by the novel-view-synthesis protocols (Wang et al. 2004;
pixelSplat/MVSplat/Flash3D evaluation): Gaussian window 11 x 11 with sigma 1.5, data range 1,
K1 = 0.01, K2 = 0.03, 'valid' filtering (no padding) for evaluation. The training loss uses the
same window with 'same' reflect padding so that every pixel gets a value.

Images are ``[..., H, W, 3]`` channel-last (as the renderer returns them) or ``[B, 3, H, W]``
channel-first with ``channels_last=False``; values in [0, 1].
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["psnr", "ssim", "ssim_map", "crop_border"]


def _to_bchw(img: Tensor, channels_last: bool) -> Tensor:
    if channels_last:
        if img.shape[-1] not in (1, 3):
            raise ValueError(f"expected [..., H, W, 3] channel-last images, found {list(img.shape)}")
        img = img.movedim(-1, -3)
    if img.ndim < 3:
        raise ValueError(f"expected at least 3 dims, found {list(img.shape)}")
    return img.reshape(-1, *img.shape[-3:])


def psnr(pred: Tensor, target: Tensor, data_range: float = 1.0, reduce: bool = False) -> Tensor:
    """Peak signal-to-noise ratio in dB per image (``[...]`` over the last 3 dims), or their mean.

    Identical images give ``inf``.
    """
    if pred.shape != target.shape:
        raise ValueError(f"psnr: shapes differ: {list(pred.shape)} vs {list(target.shape)}")
    mse = ((pred.float() - target.float()) ** 2).flatten(-3).mean(-1)
    out = 10.0 * torch.log10(data_range**2 / mse)
    return out.mean() if reduce else out


def _gaussian_window(size: int, sigma: float, device, dtype) -> Tensor:
    x = torch.arange(size, device=device, dtype=torch.float64) - (size - 1) / 2.0
    g = torch.exp(-(x**2) / (2 * sigma**2))
    g = g / g.sum()
    return g.to(dtype)


def ssim_map(pred: Tensor, target: Tensor, channels_last: bool = True, window: int = 11, sigma: float = 1.5,
             data_range: float = 1.0, padding: str = "valid") -> Tensor:
    """Per-pixel SSIM ``[B, C, H', W']`` (``padding='valid'`` shrinks by ``window - 1``; ``'same'``
    uses reflect padding)."""
    if pred.shape != target.shape:
        raise ValueError(f"ssim: shapes differ: {list(pred.shape)} vs {list(target.shape)}")
    x = _to_bchw(pred, channels_last)
    y = _to_bchw(target, channels_last)
    c = x.shape[1]
    if padding == "same":
        pad = window // 2
        x = F.pad(x, (pad, pad, pad, pad), mode="reflect")
        y = F.pad(y, (pad, pad, pad, pad), mode="reflect")
    elif padding != "valid":
        raise ValueError(f"ssim: padding must be 'valid' or 'same', found {padding!r}")
    if x.shape[-1] < window or x.shape[-2] < window:
        raise ValueError(f"ssim: image {list(x.shape[-2:])} smaller than the {window}x{window} window")
    g = _gaussian_window(window, sigma, x.device, x.dtype)
    wx = g.view(1, 1, 1, window).expand(c, 1, 1, window)
    wy = g.view(1, 1, window, 1).expand(c, 1, window, 1)

    def blur(t: Tensor) -> Tensor:
        return F.conv2d(F.conv2d(t, wx, groups=c), wy, groups=c)

    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mu_x, mu_y = blur(x), blur(y)
    sxx = blur(x * x) - mu_x**2
    syy = blur(y * y) - mu_y**2
    sxy = blur(x * y) - mu_x * mu_y
    return ((2 * mu_x * mu_y + c1) * (2 * sxy + c2)) / ((mu_x**2 + mu_y**2 + c1) * (sxx + syy + c2))


def ssim(pred: Tensor, target: Tensor, channels_last: bool = True, window: int = 11, sigma: float = 1.5,
         data_range: float = 1.0, padding: str = "valid", reduce: bool = False) -> Tensor:
    """Mean SSIM per image ``[B]`` (or their mean with ``reduce=True``)."""
    m = ssim_map(pred, target, channels_last, window, sigma, data_range, padding)
    out = m.flatten(1).mean(-1)
    return out.mean() if reduce else out


def crop_border(img: Tensor, fraction: float = 0.05, channels_last: bool = True) -> Tensor:
    """Crop ``fraction`` of the height and width on each side (the Flash3D/MINE 5% crop: 256x384 -> 230x344)."""
    h_ax, w_ax = (-3, -2) if channels_last else (-2, -1)
    h, w = img.shape[h_ax], img.shape[w_ax]
    dh, dw = int(math.ceil(h * fraction)), int(math.ceil(w * fraction))
    if channels_last:
        return img[..., dh:h - dh, dw:w - dw, :]
    return img[..., dh:h - dh, dw:w - dw]
