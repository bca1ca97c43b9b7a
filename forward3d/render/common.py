"""Pieces shared by every rasterizer backend: output types, input checks, per-Gaussian preprocessing."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal

import torch
from torch import Tensor

from ..types import Gaussians
from .cameras import Cameras
from .projection import Projected, project_gaussians
from .sh import SH_C0, sh_to_color

__all__ = ["RenderMode", "RenderOutput", "RenderMeta", "MAX_ALPHA", "T_EPS", "RENDER_MODES", "Prepared"]

RenderMode = Literal["RGB", "D", "ED", "RGB+D", "RGB+ED"]
RENDER_MODES = ("RGB", "D", "ED", "RGB+D", "RGB+ED")

MAX_ALPHA = 0.99  # alpha = min(MAX_ALPHA, o exp(-sigma)) (the spec / Inria; gsplat >= 1.0 uses 0.999)
T_EPS = 1e-4  # stop before a Gaussian when T * (1 - alpha) <= T_EPS


@dataclass
class RenderMeta:
    """Per-Gaussian screen-space data of a render (for densification, debugging, statistics).

    Attributes:
        radii: ``[C, N]`` int32 screen radius in pixels, 0 where culled (behind the camera, off screen,
            opacity below 1/255).
        means2d: ``[C, N, 2]`` projected centres (part of the autograd graph: call
            ``means2d.retain_grad()`` before ``backward()`` to read the screen-space gradient).
        depths: ``[C, N]`` camera-space z.
        conics: ``[C, N, 3]`` inverse 2D covariances ``(a, b, c)``.
        opacities: ``[C, N]`` opacities used (with the anti-aliasing compensation).
        n_isects: number of Gaussian-tile intersections (fast path; 0 for other backends).
        tile_size: tile size used by the fast path.
        backend: the backend that rendered (``"torch"``, ``"reference"`` or ``"gsplat"``).
        kernel: the compositing kernel of the ``"torch"`` backend: ``"numba"`` (compiled, CPU) or ``"torch"``;
            empty for the other backends.
    """

    radii: Tensor
    means2d: Tensor
    depths: Tensor
    conics: Tensor
    opacities: Tensor
    n_isects: int = 0
    tile_size: int = 16
    backend: str = "torch"
    kernel: str = ""


@dataclass
class RenderOutput:
    """What :func:`forward3d.render.rasterize` returns.

    Attributes:
        colors: ``[C, H, W, 3]`` composited colours ``sum_i T_i alpha_i c_i + T * background``;
            ``None`` for the depth-only modes ``"D"`` and ``"ED"``.
        alphas: ``[C, H, W]`` accumulated opacity ``1 - T``.
        depths: ``[C, H, W]`` accumulated depth ``sum_i T_i alpha_i z_i`` (modes ``"D"``, ``"RGB+D"``) or
            expected depth (same divided by ``alphas``, modes ``"ED"``, ``"RGB+ED"``); ``None`` for ``"RGB"``.
        meta: :class:`RenderMeta`.
    """

    colors: Tensor | None
    alphas: Tensor
    depths: Tensor | None
    meta: RenderMeta


@dataclass
class Prepared:
    """Per-camera, per-Gaussian inputs of the compositing step.

    Attributes:
        proj: the :class:`Projected` Gaussians.
        features: ``[C, N, F]`` composited features: RGB colour and/or camera depth (last channel).
        background: ``[C, F]`` background per feature (0 for depth).
        n_color: 3 when colours are rendered, else 0.
        has_depth: whether the last feature is depth.
        expected_depth: normalise depth by alpha.
    """

    proj: Projected
    features: Tensor
    background: Tensor
    n_color: int
    has_depth: bool
    expected_depth: bool


def check_inputs(gaussians: Gaussians, cameras: Cameras, render_mode: str, sh_degree: int | None) -> int:
    """Validate; returns the SH degree to use."""
    if not isinstance(gaussians, Gaussians):
        raise TypeError(f"rasterize: expected forward3d.types.Gaussians, found {type(gaussians).__name__}")
    if not isinstance(cameras, Cameras):
        raise TypeError(f"rasterize: expected forward3d.render.Cameras, found {type(cameras).__name__}")
    if render_mode not in RENDER_MODES:
        raise ValueError(f"rasterize: render_mode expected one of {RENDER_MODES}, found {render_mode!r}")
    deg = gaussians.sh_degree if sh_degree is None else int(sh_degree)
    if not 0 <= deg <= gaussians.sh_degree:
        raise ValueError(f"rasterize: sh_degree expected in [0, {gaussians.sh_degree}] (the Gaussians' degree), "
                         f"found {sh_degree}")
    return deg


def prepare(
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
    projector: Callable[..., Projected] | None = None,
) -> Prepared:
    """Project the Gaussians and compute their per-camera features (colour from SH, depth).

    ``projector(gaussians, w2c, K, width, height, near, far, antialiased) -> Projected`` defaults to
    :func:`forward3d.render.projection.project_gaussians`.
    """
    dtype, device = gaussians.means.dtype, gaussians.means.device
    C = len(cameras)
    w2c = cameras.w2c.to(device=device, dtype=dtype)
    K = cameras.K.to(device=device, dtype=dtype)
    if projector is None:
        proj = project_gaussians(
            gaussians.means, gaussians.quats, gaussians.scales, gaussians.opacities, w2c, K, width, height,
            near=near, far=far, antialiased=antialiased,
        )
    else:
        proj = projector(gaussians, w2c, K, width, height, near, far, antialiased)
    feats = []
    n_color = 0
    if render_mode.startswith("RGB"):
        n_color = 3
        if sh_degree == 0:
            rgb = (0.5 + gaussians.sh[:, 0] * SH_C0).clamp_min(0.0)[None].expand(C, -1, -1)
        else:
            centers = torch.linalg.inv(w2c)[:, :3, 3]  # [C, 3]
            dirs = gaussians.means[None] - centers[:, None]  # [C, N, 3]
            rgb = sh_to_color(sh_degree, dirs, gaussians.sh[None].expand(C, -1, -1, -1))
        feats.append(rgb)
    has_depth = render_mode != "RGB"
    if has_depth:
        feats.append(proj.depths[..., None])
    features = torch.cat(feats, -1) if len(feats) > 1 else feats[0]

    bg = torch.zeros(C, features.shape[-1], dtype=dtype, device=device)
    if background is not None:
        background = torch.as_tensor(background, dtype=dtype, device=device)
        if background.ndim == 1:
            background = background[None].expand(C, -1)
        if tuple(background.shape) != (C, 3):
            raise ValueError(f"rasterize: background expected shape [3] or [{C}, 3], found {list(background.shape)}")
        if n_color:
            bg = torch.cat([background, bg[:, 3:]], -1)
    return Prepared(proj, features, bg, n_color, has_depth, render_mode.endswith("ED"))


def finish(prep: Prepared, acc: Tensor, T: Tensor, meta: RenderMeta) -> RenderOutput:
    """Assemble the output from accumulated features ``acc`` ``[C, H, W, F]`` and final transmittance
    ``T`` ``[C, H, W]``: adds the background and normalises expected depth."""
    acc = acc + T[..., None] * prep.background[:, None, None, :]
    alphas = 1.0 - T
    colors = acc[..., :3] if prep.n_color else None
    depths = None
    if prep.has_depth:
        depths = acc[..., -1]
        if prep.expected_depth:
            depths = depths / alphas.clamp_min(1e-10)
    return RenderOutput(colors, alphas, depths, meta)


def make_meta(prep: Prepared, backend: str, n_isects: int = 0, tile_size: int = 16, kernel: str = "") -> RenderMeta:
    p = prep.proj
    return RenderMeta(p.radii, p.means2d, p.depths, p.conics, p.opacities, n_isects, tile_size, backend, kernel)
