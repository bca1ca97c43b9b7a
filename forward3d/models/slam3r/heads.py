"""SLAM3R's linear prediction head (DUSt3R ``LinearPts3d``) and its output activations."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .precision import MixedPrecision, autocast_active, no_autocast

__all__ = ["LinearHead", "postprocess"]


def postprocess(raw: Tensor, conf_mode: tuple[str, float, float] = ("exp", 1.0, math.inf)) -> tuple[Tensor, Tensor]:
    """Activations of the head output ``raw`` [N, H, W, 4] (x, y, z, conf logit).

    pts = v / max(|v|, 1e-8) * expm1(|v|) -> [N, H, W, 3]; conf = vmin + exp(c) (clipped at
    vmax - vmin) -> [N, H, W].
    """
    xyz = raw[..., :3]
    d = xyz.norm(dim=-1, keepdim=True)
    pts = xyz / d.clip(min=1e-8) * torch.expm1(d)
    _, vmin, vmax = conf_mode
    conf = vmin + raw[..., 3].exp().clip(max=vmax - vmin)
    return pts, conf


class LinearHead(nn.Module):
    """Linear(D -> 4 * p * p) followed by pixel-shuffle to full resolution (key ``proj``).

    Runs in fp32 whatever the parameter dtype or autocast state (the reference does the same), unless
    ``precision.heads`` is False under autocast (ablation only: linear and activations in the autocast
    dtype).
    """

    precision: MixedPrecision = MixedPrecision()

    def __init__(self, dim: int, patch_size: int, conf_mode: tuple[str, float, float] = ("exp", 1.0, math.inf)) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.conf_mode = conf_mode
        self.proj = nn.Linear(dim, 4 * patch_size * patch_size)

    def raw(self, x: Tensor) -> Tensor:
        """``x`` [N, T, D] -> raw features [N, T, 4 * p * p] (fp32)."""
        if not self.precision.heads and autocast_active(x):
            return self.proj(x)
        with no_autocast(x.device):
            return F.linear(x.float(), self.proj.weight.float(), self.proj.bias.float())

    def forward(self, x: Tensor, grid: tuple[int, int]) -> tuple[Tensor, Tensor]:
        """``x`` [N, T, D] tokens of a ``grid`` = (rows, cols) -> (pts [N, H, W, 3], conf [N, H, W]), fp32.

        Feature ``c * p^2 + p * i + j`` of token (row, col) is channel c at pixel (p*row + i, p*col + j),
        as ``pixel_shuffle(p)`` places it.
        """
        N, T, _ = x.shape
        gh, gw = grid
        if T != gh * gw:
            raise ValueError(f"head: {T} tokens do not form a {gh}x{gw} grid")
        p = self.patch_size
        f = self.raw(x).view(N, gh, gw, 4, p, p).permute(0, 1, 4, 2, 5, 3).reshape(N, gh * p, gw * p, 4)
        with no_autocast(x.device):
            return postprocess(f, self.conf_mode)
