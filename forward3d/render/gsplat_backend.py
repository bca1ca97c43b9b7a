"""Dispatch to gsplat (``pip install gsplat``) for CUDA tensors.

Not exercised on CPU-only machines: keep it small. gsplat's semantics are those of the torch fast path
except that gsplat >= 1.0 clamps alpha at 0.999 (the torch path at 0.99, as the spec) and computes
per-axis radii ``[C, N, 2]`` (reduced to their max here).
"""

from __future__ import annotations

import importlib.util

import torch
from torch import Tensor

from ..types import Gaussians
from .cameras import Cameras
from .common import RenderMeta, RenderOutput

__all__ = ["gsplat_available", "render_gsplat"]


def gsplat_available() -> bool:
    """Whether ``import gsplat`` can work (checked without importing it) and CUDA is present."""
    return torch.cuda.is_available() and importlib.util.find_spec("gsplat") is not None


def render_gsplat(
    gaussians: Gaussians,
    cameras: Cameras,
    width: int,
    height: int,
    background: Tensor | None,
    sh_degree: int,
    render_mode: str,
    near: float,
    far: float,
    antialiased: bool,
    tile_size: int,
) -> RenderOutput:
    try:
        import gsplat
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("rasterize(backend='gsplat') needs gsplat: pip install gsplat") from exc
    device, dtype = gaussians.means.device, gaussians.means.dtype
    C = len(cameras)
    bg = None
    if background is not None and render_mode.startswith("RGB"):
        bg = torch.as_tensor(background, device=device, dtype=dtype)
        bg = bg[None].expand(C, 3) if bg.ndim == 1 else bg
    colors, alphas, meta = gsplat.rasterization(
        means=gaussians.means,
        quats=gaussians.quats,
        scales=gaussians.scales,
        opacities=gaussians.opacities,
        colors=gaussians.sh,
        viewmats=cameras.w2c.to(device=device, dtype=dtype),
        Ks=cameras.K.to(device=device, dtype=dtype),
        width=width,
        height=height,
        near_plane=near,
        far_plane=far,
        sh_degree=sh_degree,
        packed=False,
        tile_size=tile_size,
        backgrounds=bg,
        render_mode=render_mode,
        rasterize_mode="antialiased" if antialiased else "classic",
    )
    out_colors = colors[..., :3] if render_mode.startswith("RGB") else None
    depths = colors[..., -1] if render_mode != "RGB" else None
    radii = meta["radii"]
    if radii.ndim == 3:  # gsplat >= 1.5: per-axis radii
        radii = radii.max(-1).values
    info = RenderMeta(
        radii=radii.to(torch.int32),
        means2d=meta["means2d"],
        depths=meta["depths"],
        conics=meta["conics"],
        opacities=meta["opacities"],
        n_isects=int(meta["flatten_ids"].numel()) if "flatten_ids" in meta else 0,
        tile_size=tile_size,
        backend="gsplat",
    )
    return RenderOutput(out_colors, alphas[..., 0], depths, info)
