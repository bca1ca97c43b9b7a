"""Render a batch of per-item Gaussian sets into several views each (training and NVS evaluation)."""

from __future__ import annotations

import torch
from torch import Tensor

from forward3d.render.cameras import Cameras
from forward3d.render.rasterizer import rasterize
from forward3d.types import Gaussians

__all__ = ["render_views"]


def render_views(model_out, w2c: Tensor, K_tgt: Tensor, width: int, height: int, background: Tensor,
                 near: float = 0.01, far: float = 100.0) -> Tensor:
    """Render the Gaussians of each image into its views.

    Args:
        model_out: anything with ``gaussians(b) -> Gaussians`` for ``b < B`` (e.g. ``Flash3DOutput``).
        w2c: ``[B, V, 4, 4]`` source camera -> view camera (metres). ``K_tgt``: ``[B, 3, 3]`` or ``[B, V, 3, 3]``.
        background: ``[B, 3]`` colours.

    Returns ``[B, V, 3, H, W]`` in float32.
    """
    B, V = w2c.shape[:2]
    outs = []
    for b in range(B):
        g = model_out.gaussians(b)
        g = Gaussians(g.means.float(), g.quats.float(), g.log_scales.float(), g.opacity_logits.float(), g.sh.float())
        K = K_tgt[b] if K_tgt.ndim == 4 else K_tgt[b].expand(V, 3, 3)
        cams = Cameras(w2c[b].float(), K.float(), width, height)
        r = rasterize(g, cams, background=background[b].float(), near=near, far=far)
        outs.append(r.colors.permute(0, 3, 1, 2))
    return torch.stack(outs)
