"""Slow, readable reference rasterizer: the spec (``../shared/specs/splatting.md``) written literally.

No tiles, no culling by screen radius: every pixel composites every Gaussian in front of the near plane,
front to back by camera z, one Gaussian at a time (vectorised over pixels only). Autograd does the
backward. Use it on tiny scenes (tests, debugging); :mod:`forward3d.render.tiled` must match it.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..types import Gaussians
from .common import MAX_ALPHA, T_EPS, Prepared, RenderOutput, finish, make_meta
from .projection import ALPHA_THRESHOLD, Projected, perspective_jacobian, screen_extents, world_to_camera

__all__ = ["composite_reference", "project_reference", "render_reference"]


def project_reference(
    gaussians: Gaussians, w2c: Tensor, K: Tensor, width: int, height: int, near: float, far: float,
    antialiased: bool, eps2d: float = 0.3,
) -> Projected:
    """The spec's projection in matrix form: ``Sigma2D = J W Sigma W^T J^T + eps2d I``."""
    means_c, covars_c = world_to_camera(gaussians.means, gaussians.covariances(), w2c)  # [C, N, 3], [C, N, 3, 3]
    z = means_c[..., 2]
    in_range = (z > near) & (z < far)
    z_safe = torch.where(in_range, z, torch.ones_like(z))
    mc = torch.cat([means_c[..., :2], z_safe[..., None]], -1)
    J = perspective_jacobian(mc, K, width, height)  # [C, N, 2, 3]
    cov2d = J @ covars_c @ J.transpose(-1, -2)
    det_orig = torch.linalg.det(cov2d)
    cov2d = cov2d + eps2d * torch.eye(2, dtype=cov2d.dtype, device=cov2d.device)
    det = torch.linalg.det(cov2d)
    conics_m = torch.linalg.inv(cov2d)
    conics = torch.stack([conics_m[..., 0, 0], conics_m[..., 0, 1], conics_m[..., 1, 1]], -1)
    uvw = torch.einsum("cij,cnj->cni", K, mc)
    means2d = uvw[..., :2] / uvw[..., 2:]
    opac = gaussians.opacities[None].expand_as(z)
    if antialiased:
        opac = opac * torch.sqrt((det_orig / det).clamp_min(0.0))
    radii, extents = screen_extents(means2d, cov2d, opac, in_range & (det > 0), width, height)
    return Projected(means2d, z, conics, cov2d, opac, radii, extents)


def composite_reference(
    means2d: Tensor,  # [N, 2]
    conics: Tensor,  # [N, 3]
    opacities: Tensor,  # [N]
    features: Tensor,  # [N, F]
    depths: Tensor,  # [N]
    use: Tensor,  # [N] bool: Gaussians to consider (in front of the near plane)
    width: int,
    height: int,
) -> tuple[Tensor, Tensor]:
    """Front-to-back alpha compositing of one camera.

    Returns ``acc`` ``[H, W, F]`` (``sum_i T_i alpha_i f_i``) and the final transmittance ``T`` ``[H, W]``.
    """
    dtype, device = means2d.dtype, means2d.device
    ys, xs = torch.meshgrid(
        torch.arange(height, dtype=dtype, device=device) + 0.5,
        torch.arange(width, dtype=dtype, device=device) + 0.5,
        indexing="ij",
    )
    px, py = xs.reshape(-1), ys.reshape(-1)  # pixel centres [P]
    P = px.shape[0]
    T = torch.ones(P, dtype=dtype, device=device)
    acc = torch.zeros(P, features.shape[-1], dtype=dtype, device=device)
    done = torch.zeros(P, dtype=torch.bool, device=device)

    ids = torch.nonzero(use).flatten()
    order = ids[torch.argsort(depths[ids], stable=True)]  # front to back, ties by index
    for i in order.tolist():
        dx = means2d[i, 0] - px
        dy = means2d[i, 1] - py
        a, b, c = conics[i, 0], conics[i, 1], conics[i, 2]
        sigma = 0.5 * (a * dx * dx + c * dy * dy) + b * dx * dy
        alpha = torch.clamp_max(opacities[i] * torch.exp(-sigma), MAX_ALPHA)
        composite = (sigma >= 0) & (alpha >= ALPHA_THRESHOLD) & ~done
        next_T = T * (1.0 - alpha)
        stop = composite & (next_T <= T_EPS)  # stop BEFORE this Gaussian
        done = done | stop
        composite = composite & ~stop
        weight = torch.where(composite, T * alpha, torch.zeros_like(T))
        acc = acc + weight[:, None] * features[i]
        T = torch.where(composite, next_T, T)
    return acc.reshape(height, width, -1), T.reshape(height, width)


def render_reference(prep: Prepared, width: int, height: int, near: float, far: float) -> RenderOutput:
    """Render every camera of ``prep`` with :func:`composite_reference`."""
    p = prep.proj
    accs, Ts = [], []
    for cam in range(p.means2d.shape[0]):
        z = p.depths[cam]
        use = (z > near) & (z < far)
        acc, T = composite_reference(
            p.means2d[cam], p.conics[cam], p.opacities[cam], prep.features[cam], z, use, width, height
        )
        accs.append(acc)
        Ts.append(T)
    return finish(prep, torch.stack(accs), torch.stack(Ts), make_meta(prep, "reference"))
