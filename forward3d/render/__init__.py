"""Differentiable 3D Gaussian rasterization (gsplat semantics) in plain PyTorch.

Usage::

    from forward3d.render import Cameras, rasterize
    cams = Cameras(w2c=w2c, K=K, width=W, height=H)       # [C, 4, 4], [C, 3, 3], OpenCV axes
    out = rasterize(gaussians, cams, background=torch.ones(3), render_mode="RGB+ED")
    out.colors   # [C, H, W, 3]
    out.alphas   # [C, H, W]
    out.depths   # [C, H, W] (depth modes) or None
    out.meta     # RenderMeta: radii [C, N], means2d [C, N, 2], depths, conics, opacities, n_isects

Backends: ``"torch"`` (tiled, vectorised; the default on CPU), ``"reference"`` (slow, literal; tests),
``"gsplat"`` (CUDA), ``"auto"``. On CPU the torch backend composites with the compiled numba kernel
(:mod:`forward3d.render.tiled_numba`) when numba is installed (``pip install forward3d[fast]``);
``rasterize(..., cpu_kernel="torch")`` forces the vectorised torch kernel. The maths is
``../shared/specs/splatting.md``.
"""

from .cameras import Cameras
from .common import MAX_ALPHA, RENDER_MODES, T_EPS, RenderMeta, RenderMode, RenderOutput
from .projection import Projected, mahalanobis_cutoff, perspective_jacobian, project_gaussians, world_to_camera
from .rasterizer import Backend, rasterize
from .sh import SH_C0, SH_C1, SH_C2, SH_C3, eval_sh, sh_basis, sh_to_color

__all__ = [
    "Backend",
    "Cameras",
    "MAX_ALPHA",
    "Projected",
    "RENDER_MODES",
    "RenderMeta",
    "RenderMode",
    "RenderOutput",
    "SH_C0",
    "SH_C1",
    "SH_C2",
    "SH_C3",
    "T_EPS",
    "eval_sh",
    "mahalanobis_cutoff",
    "perspective_jacobian",
    "project_gaussians",
    "rasterize",
    "sh_basis",
    "sh_to_color",
    "world_to_camera",
]
