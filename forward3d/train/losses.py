"""Training losses of Flash3D (photometric terms and Gaussian regularisers).

Reading of the spec (``../shared/specs/flash3d.md``, "Rendering and training"):

- photometric: ``1.0 * L1 + 0.85 * (1 - SSIM)`` averaged over the rendered views (source + targets),
  SSIM with the 11x11 Gaussian window (sigma 1.5) and 'same' reflect padding so every pixel counts;
  ``+ 0.01 * LPIPS-VGG`` (inputs mapped to [-1, 1]) after ``lpips_after_step``;
- "0.001 * mean(scale > 2)": the mean over all scale entries of ``s * [s > 2]`` (the scales above the
  threshold, zero elsewhere; differentiable through ``s``);
- "0.01 * mean(offset^2 > 1)": the mean over all offset entries of ``o^2 * [o^2 > 1]`` (squared
  offsets above 1 m^2, zero elsewhere).
"""

from __future__ import annotations

from torch import Tensor

__all__ = ["photometric_loss", "scale_regulariser", "offset_regulariser"]


def photometric_loss(pred: Tensor, target: Tensor, l1_weight: float = 1.0, ssim_weight: float = 0.85) -> tuple[Tensor, Tensor, Tensor]:
    """``l1_weight * L1 + ssim_weight * (1 - SSIM)``.

    Args:
        pred, target: ``[N, 3, H, W]`` images in [0, 1].

    Returns ``(loss, l1, ssim)`` scalars.
    """
    from forward3d.eval.image import ssim

    if pred.shape != target.shape:
        raise ValueError(f"photometric_loss: shapes differ: {list(pred.shape)} vs {list(target.shape)}")
    l1 = (pred - target).abs().mean()
    s = ssim(pred, target, channels_last=False, padding="same").mean()
    return l1_weight * l1 + ssim_weight * (1.0 - s), l1, s


def scale_regulariser(scaling: Tensor, threshold: float = 2.0) -> Tensor:
    """Mean of the activated scales above ``threshold`` (``s * [s > threshold]``), scalar."""
    return (scaling * (scaling > threshold)).mean()


def offset_regulariser(offset: Tensor, threshold: float = 1.0) -> Tensor:
    """Mean of the squared offsets above ``threshold`` (``o^2 * [o^2 > threshold]``), scalar."""
    sq = offset * offset
    return (sq * (sq > threshold)).mean()
