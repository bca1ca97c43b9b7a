"""Compiled CPU projection and tile intersection (numba) for the tiled rasterizer.

- :func:`project_gaussians_numba`: :func:`forward3d.render.projection.project_gaussians` (EWA projection,
  culling, screen extents) as one parallel loop over the Gaussians, without gradients. :func:`rasterize`
  uses it on CPU when nothing needs a gradient (``torch.no_grad()`` or inputs that do not require grad)
  and the numba compositing kernel is in use; otherwise the torch projection (differentiable) runs.
- :func:`intersect_tiles_numba`: :func:`forward3d.render.tiled.intersect_tiles` with the pair expansion and
  the sort by tile as one counting sort (the depth order is the same torch radix sort); identical lists.

The torch functions are the readable references; the tests compare both (tests/test_render_numba.py).
One call replaces the ~60 small torch ops of the projection and the intersection, each of which started
an OpenMP team: these dominated a 2-thread forward and kept it from scaling.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .projection import ALPHA_THRESHOLD, MAX_EXTENT, Projected, _fov_limits
from .tiled import _MARGIN, TileIsects, depth_order
from .tiled_numba import _threads, _timed_first_call, numba_available

__all__ = ["project_gaussians_numba", "project_gaussians_numba_autograd", "intersect_tiles_numba", "numba_projector"]


def _module():
    """The numba module and the kernels (ImportError naming the extra when numba is missing)."""
    if not numba_available():
        raise ImportError("the numba CPU projection and tile intersection need numba: pip install forward3d[fast]")
    import numba

    from . import _numba_prepare as k

    return numba, k


def _consts(dtype: torch.dtype, near: float, far: float, eps2d: float) -> Tensor:
    return torch.tensor([near, far, eps2d, 1e-12, 1e-10, ALPHA_THRESHOLD, MAX_EXTENT, 0.0, 0.5, 1.0, 2.0], dtype=dtype)


def project_gaussians_numba(
    means: Tensor,  # [N, 3]
    quats: Tensor,  # [N, 4] wxyz
    scales: Tensor,  # [N, 3]
    opacities: Tensor,  # [N]
    w2c: Tensor,  # [C, 4, 4]
    K: Tensor,  # [C, 3, 3]
    width: int,
    height: int,
    near: float = 0.01,
    far: float = 1e10,
    eps2d: float = 0.3,
    antialiased: bool = False,
) -> Projected:
    """:func:`forward3d.render.projection.project_gaussians` compiled (CPU float32/float64; no gradients)."""
    dtype = means.dtype
    if means.device.type != "cpu" or dtype not in (torch.float32, torch.float64):
        raise ValueError(f"project_gaussians_numba: expected CPU float32/float64 tensors, found {means.device} {dtype}")
    numba, k = _module()
    C, N = w2c.shape[0], means.shape[0]

    def arr(t: Tensor):
        return t.detach().to(dtype).contiguous().numpy()

    w2c, K = w2c.detach().to(dtype), K.detach().to(dtype)
    lims = torch.cat(_fov_limits(K, width, height), 1)  # [C, 4]
    consts = _consts(dtype, near, far, eps2d)
    packed = torch.empty(C, N, 8, dtype=dtype)  # the compositing kernel's per-Gaussian rows, written in place
    means2d, conics, opac, extents = packed[..., 0:2], packed[..., 2:5], packed[..., 5], packed[..., 6:8]
    depths = torch.empty(C, N, dtype=dtype)
    cov2d = torch.empty(C, N, 2, 2, dtype=dtype)
    radii = torch.empty(C, N, dtype=torch.int32)
    _timed_first_call(dtype, "projection", k.project, arr(means), arr(quats), arr(scales), arr(opacities),
                      arr(w2c), arr(K), arr(lims), consts.numpy(), width, height, bool(antialiased),
                      _threads(numba), means2d.numpy(), depths.numpy(), conics.numpy(), cov2d.numpy(),
                      opac.numpy(), radii.numpy(), extents.numpy())
    return Projected(means2d, depths, conics, cov2d, opac, radii, extents, packed)


@torch.no_grad()
def intersect_tiles_numba(
    means2d: Tensor,  # [C, N, 2]
    extents: Tensor,  # [C, N, 2]
    depths: Tensor,  # [C, N]
    visible: Tensor,  # [C, N] bool
    width: int,
    height: int,
    tile_size: int,
) -> TileIsects:
    """:func:`forward3d.render.tiled.intersect_tiles` with a compiled counting sort (CPU; identical lists)."""
    numba, k = _module()
    C, N = depths.shape
    tx_n = (width + tile_size - 1) // tile_size
    ty_n = (height + tile_size - 1) // tile_size
    radii = visible.reshape(-1).to(torch.int32).contiguous().numpy()
    if depths.dtype == torch.float32:
        bits = depths.detach().reshape(-1).contiguous().view(torch.int32).numpy()
        order = _timed_first_call(depths.dtype, "depth order", k.depth_order, bits, radii, N)
    else:  # float64 keys: the torch radix sort of the 64-bit patterns
        order = depth_order(depths, visible).numpy()
    m = means2d.detach().reshape(-1, 2).numpy()  # strided views of Projected.packed are read in place
    e = extents.detach().reshape(-1, 2).numpy()
    box = torch.empty(C * N, 4, dtype=torch.int32)
    _threads(numba)
    _timed_first_call(means2d.dtype, "tile boxes", k.tile_boxes, m, e, radii, width, height, tile_size, _MARGIN,
                      box.numpy())
    lists = _timed_first_call(means2d.dtype, "tile lists", k.tile_lists, order, box.numpy(), N, C, tx_n, ty_n,
                              _threads(numba))
    ids, start, count = (torch.from_numpy(a) for a in lists)
    return TileIsects(ids, start, count, tile_size, tx_n, ty_n, C)


class _ProjectNumba(torch.autograd.Function):
    """:func:`project_gaussians_numba` with the backward to the Gaussians' ``means``, ``quats``, ``scales`` and
    ``opacities`` (compiled too; ``w2c`` and ``K`` get no gradient: callers use the torch projection then)."""

    @staticmethod
    def forward(ctx, means, quats, scales, opacities, w2c, K, width, height, near, far, eps2d, antialiased):
        p = project_gaussians_numba(means, quats, scales, opacities, w2c, K, width, height, near, far, eps2d,
                                    antialiased)
        ctx.save_for_backward(means, quats, scales, opacities)
        ctx.args = (w2c.detach(), K.detach(), width, height, near, far, eps2d, antialiased)
        outs = (p.means2d.contiguous(), p.depths, p.conics.contiguous(), p.covars2d, p.opacities.contiguous(),
                p.radii, p.extents.contiguous())
        ctx.mark_non_differentiable(outs[3], outs[5], outs[6])
        return outs

    @staticmethod
    def backward(ctx, g_means2d, g_depths, g_conics, _g_cov, g_opac, _g_radii, _g_ext):
        numba, k = _module()
        means, quats, scales, opacities = ctx.saved_tensors
        w2c, K, width, height, near, far, eps2d, antialiased = ctx.args
        dtype = means.dtype
        C, N = w2c.shape[0], means.shape[0]

        def grad(g: Tensor | None, *shape: int):
            return torch.zeros(*shape, dtype=dtype) if g is None else g.to(dtype).contiguous()

        w2c, K = w2c.to(dtype), K.to(dtype)
        lims = torch.cat(_fov_limits(K, width, height), 1)
        outs = [torch.empty(N, 3, dtype=dtype), torch.empty(N, 4, dtype=dtype), torch.empty(N, 3, dtype=dtype),
                torch.empty(N, dtype=dtype)]
        args = [t.detach().to(dtype).contiguous().numpy() for t in (means, quats, scales, opacities, w2c, K, lims)]
        args += [_consts(dtype, near, far, eps2d).numpy(), bool(antialiased)]
        args += [grad(g_means2d, C, N, 2).numpy(), grad(g_depths, C, N).numpy(), grad(g_conics, C, N, 3).numpy(),
                 grad(g_opac, C, N).numpy()]
        _threads(numba)
        _timed_first_call(dtype, "projection backward", k.project_backward, *args, *(o.numpy() for o in outs))
        g_means, g_quats, g_scales, g_opacities = outs
        return g_means, g_quats, g_scales, g_opacities, None, None, None, None, None, None, None, None


def project_gaussians_numba_autograd(means: Tensor, quats: Tensor, scales: Tensor, opacities: Tensor, w2c: Tensor,
                                     K: Tensor, width: int, height: int, near: float = 0.01, far: float = 1e10,
                                     eps2d: float = 0.3, antialiased: bool = False) -> Projected:
    """:func:`project_gaussians_numba`, differentiable in ``means``, ``quats``, ``scales`` and ``opacities``
    (not in ``w2c`` / ``K``); ``means2d``, ``depths``, ``conics`` and ``opacities`` carry the gradient."""
    out = _ProjectNumba.apply(means, quats, scales, opacities, w2c, K, width, height, near, far, eps2d, antialiased)
    return Projected(*out)


def numba_projector(gaussians, w2c: Tensor, K: Tensor, width: int, height: int, near: float, far: float,
                    antialiased: bool) -> Projected:
    """The compiled projection in the ``projector`` form of :func:`forward3d.render.common.prepare`: with the
    compiled backward when the Gaussians need a gradient (the cameras must not: use the torch projection)."""
    params = (gaussians.means, gaussians.quats, gaussians.scales, gaussians.opacities)
    if torch.is_grad_enabled() and any(t.requires_grad for t in params):
        return project_gaussians_numba_autograd(*params, w2c, K, width, height, near=near, far=far,
                                                antialiased=antialiased)
    with torch.no_grad():
        return project_gaussians_numba(*params, w2c, K, width, height, near=near, far=far, antialiased=antialiased)
