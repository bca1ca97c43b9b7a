"""EWA projection of 3D Gaussians to screen space (gsplat's ``fully_fused_projection`` semantics).

Steps (``../shared/specs/splatting.md``):
1. world covariance ``Sigma = R(q) diag(s)^2 R(q)^T`` (done by :meth:`forward3d.types.Gaussians.covariances`);
2. camera space with ``w2c``; Gaussians with ``z <= near`` or ``z >= far`` are culled;
3. ``Sigma2D = J W Sigma W^T J^T + eps2d I`` with the pinhole Jacobian ``J`` evaluated at the camera-space
   mean whose ``x/z``, ``y/z`` are clamped to the (1.3x enlarged) field of view, as gsplat's ``persp_proj``;
4. ``mean2D = K`` projection of the (unclamped) camera-space mean, pixel centres at +0.5;
5. screen radius ``ceil(extent * sqrt(lambda_max))`` with ``extent = min(3.33, sqrt(2 ln(255 o)))``: beyond
   that Mahalanobis distance ``alpha = o exp(-d^2 / 2) < 1/255`` and nothing is drawn.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["ALPHA_THRESHOLD", "Projected", "perspective_jacobian", "project_gaussians", "world_to_camera"]

ALPHA_THRESHOLD = 1.0 / 255.0
MAX_EXTENT = 3.33


@dataclass
class Projected:
    """Screen-space Gaussians for ``C`` cameras.

    Attributes:
        means2d: ``[C, N, 2]`` projected centres in pixels.
        depths: ``[C, N]`` camera-space z.
        conics: ``[C, N, 3]`` ``(a, b, c)`` of the inverse 2D covariance ``[[a, b], [b, c]]``.
        covars2d: ``[C, N, 2, 2]`` dilated 2D covariances.
        opacities: ``[C, N]`` opacities (times the anti-aliasing compensation when enabled).
        radii: ``[C, N]`` int32 screen radius in pixels; 0 for culled Gaussians.
        extents: ``[C, N, 2]`` half widths in x and y of the box holding every pixel with
            ``alpha >= 1/255`` (``extent * sqrt(Sigma2D_xx)``, ...), 0 where culled; no gradient.
        packed: ``[C, N, 8]`` ``(mx, my, a, b, c, o, ex, ey)`` when ``means2d``, ``conics``, ``opacities``
            and ``extents`` are views of one buffer (the compiled projection without gradients: the numba
            compositing kernel reads it as is), else None.
    """

    means2d: Tensor
    depths: Tensor
    conics: Tensor
    covars2d: Tensor
    opacities: Tensor
    radii: Tensor
    extents: Tensor
    packed: Tensor | None = None

    @property
    def visible(self) -> Tensor:
        """``[C, N]`` bool: Gaussians that may touch the image."""
        return self.radii > 0


def world_to_camera(means: Tensor, covars: Tensor, w2c: Tensor) -> tuple[Tensor, Tensor]:
    """``means`` ``[N, 3]``, ``covars`` ``[N, 3, 3]``, ``w2c`` ``[C, 4, 4]`` -> ``[C, N, 3]``, ``[C, N, 3, 3]``."""
    R = w2c[:, :3, :3]
    t = w2c[:, :3, 3]
    means_c = torch.einsum("cij,nj->cni", R, means) + t[:, None, :]
    covars_c = torch.einsum("cij,njk,clk->cnil", R, covars, R)
    return means_c, covars_c


def _fov_limits(K: Tensor, width: int, height: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """gsplat's clamp limits on ``x/z`` and ``y/z``: each ``[C, 1]``."""
    fx, fy = K[:, 0, 0, None], K[:, 1, 1, None]
    cx, cy = K[:, 0, 2, None], K[:, 1, 2, None]
    tan_fovx = 0.5 * width / fx
    tan_fovy = 0.5 * height / fy
    lim_x_pos = (width - cx) / fx + 0.3 * tan_fovx
    lim_x_neg = cx / fx + 0.3 * tan_fovx
    lim_y_pos = (height - cy) / fy + 0.3 * tan_fovy
    lim_y_neg = cy / fy + 0.3 * tan_fovy
    return lim_x_neg, lim_x_pos, lim_y_neg, lim_y_pos


def perspective_jacobian(means_c: Tensor, K: Tensor, width: int, height: int) -> Tensor:
    """``J`` ``[C, N, 2, 3]`` of the pinhole projection at camera-space means ``[C, N, 3]``.

    ``J = [[fx/z, 0, -fx x/z^2], [0, fy/z, -fy y/z^2]]`` with ``x/z`` and ``y/z`` clamped to
    ``[-lim_neg, lim_pos]`` (``lim_x_pos = (W - cx)/fx + 0.3 tan_fovx``, ``tan_fovx = W / (2 fx)``, ...).
    ``z`` must be positive (callers replace culled depths by 1).
    """
    lxn, lxp, lyn, lyp = _fov_limits(K, width, height)
    x, y, z = means_c.unbind(-1)
    fx, fy = K[:, 0, 0, None], K[:, 1, 1, None]
    tx = z * torch.minimum(torch.maximum(x / z, -lxn), lxp)
    ty = z * torch.minimum(torch.maximum(y / z, -lyn), lyp)
    zero = torch.zeros_like(z)
    z2 = z * z
    return torch.stack([fx / z, zero, -fx * tx / z2, zero, fy / z, -fy * ty / z2], -1).reshape(*z.shape, 2, 3)


def _rotmat_rows(quats: Tensor) -> Tensor:
    """``[N, 4]`` wxyz (normalised inside) -> ``[3, 3, N]`` rotation entries, component-major."""
    q = quats.T  # [4, N]
    q = q / q.norm(dim=0, keepdim=True).clamp_min(1e-12)
    w, x, y, z = q.unbind(0)
    xx, yy, zz = x * x, y * y, z * z
    xy, xz, yz, wx, wy, wz = x * y, x * z, y * z, w * x, w * y, w * z
    return torch.stack(
        [
            1 - 2 * (yy + zz), 2 * (xy - wz), 2 * (xz + wy),
            2 * (xy + wz), 1 - 2 * (xx + zz), 2 * (yz - wx),
            2 * (xz - wy), 2 * (yz + wx), 1 - 2 * (xx + yy),
        ]
    ).reshape(3, 3, -1)


def project_gaussians(
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
    """Project world-space Gaussians into ``C`` cameras (differentiable in all float inputs).

    Computes ``Sigma2D = (J W R S)(J W R S)^T + eps2d I`` component-wise on contiguous ``[C, N]`` rows (no
    per-Gaussian 3x3 matmuls or size-3 reductions, which are slow on CPU). With ``antialiased`` the opacity
    is multiplied by ``sqrt(det(Sigma2D - eps2d I) / det(Sigma2D))`` (gsplat's ``rasterize_mode="antialiased"``).
    """
    C = w2c.shape[0]
    Wr = w2c[:, :3, :3]
    R = _rotmat_rows(quats)  # [3, 3, N]
    # A = W R S, component-major [C, 3, 3, N]: one GEMM over all Gaussians
    A = (Wr.reshape(C * 3, 3) @ R.reshape(3, -1)).reshape(C, 3, 3, -1) * scales.T[None, None]
    mc = (Wr.reshape(C * 3, 3) @ means.T).reshape(C, 3, -1) + w2c[:, :3, 3, None]  # [C, 3, N]
    x, y, z = mc.unbind(1)
    in_range = (z > near) & (z < far)
    # culled Gaussians get z = 1 so that nothing below produces inf/nan (which would poison gradients)
    z = torch.where(in_range, z, torch.ones_like(z))
    fx, fy = K[:, 0, 0, None], K[:, 1, 1, None]
    cx, cy = K[:, 0, 2, None], K[:, 1, 2, None]
    lxn, lxp, lyn, lyp = _fov_limits(K, width, height)
    rz = 1.0 / z
    tx = torch.minimum(torch.maximum(x * rz, -lxn), lxp)  # clamped x/z (only inside J)
    ty = torch.minimum(torch.maximum(y * rz, -lyn), lyp)
    j00, j02 = fx * rz, -fx * tx * rz
    j11, j12 = fy * rz, -fy * ty * rz
    T0 = j00[:, None] * A[:, 0] + j02[:, None] * A[:, 2]  # rows of J W R S  [C, 3, N]
    T1 = j11[:, None] * A[:, 1] + j12[:, None] * A[:, 2]
    c00 = T0[:, 0] * T0[:, 0] + T0[:, 1] * T0[:, 1] + T0[:, 2] * T0[:, 2]
    c01 = T0[:, 0] * T1[:, 0] + T0[:, 1] * T1[:, 1] + T0[:, 2] * T1[:, 2]
    c11 = T1[:, 0] * T1[:, 0] + T1[:, 1] * T1[:, 1] + T1[:, 2] * T1[:, 2]
    det_orig = c00 * c11 - c01 * c01
    c00 = c00 + eps2d
    c11 = c11 + eps2d
    det = c00 * c11 - c01 * c01
    valid = in_range & (det > 0)
    rdet = 1.0 / det.clamp_min(1e-10)
    conics = torch.stack([c11 * rdet, -c01 * rdet, c00 * rdet], -1)
    cov2d = torch.stack([c00, c01, c01, c11], -1).reshape(*c00.shape, 2, 2)
    means2d = torch.stack([fx * x * rz + cx, fy * y * rz + cy], -1)
    opac = opacities[None].expand_as(z)
    if antialiased:
        opac = opac * torch.sqrt((det_orig * rdet).clamp_min(0.0))
    radii, extents = screen_extents(means2d, cov2d, opac, valid, width, height)
    return Projected(means2d, mc[:, 2], conics, cov2d, opac, radii, extents)


@torch.no_grad()
def screen_extents(
    means2d: Tensor, cov2d: Tensor, opacities: Tensor, valid: Tensor, width: int, height: int
) -> tuple[Tensor, Tensor]:
    """Radii ``[C, N]`` int32 (0 = culled) and per-axis half extents ``[C, N, 2]`` (see :class:`Projected`).

    Culls Gaussians that are not ``valid``, have opacity below 1/255, or whose disc misses the image.
    """
    o = opacities.detach()
    valid = valid & (o >= ALPHA_THRESHOLD)
    extent = torch.sqrt(2.0 * torch.log(o.clamp_min(ALPHA_THRESHOLD) / ALPHA_THRESHOLD)).clamp_max(MAX_EXTENT)
    c = cov2d.detach()
    det = c[..., 0, 0] * c[..., 1, 1] - c[..., 0, 1] * c[..., 1, 0]
    b = 0.5 * (c[..., 0, 0] + c[..., 1, 1])
    lam_max = b + torch.sqrt((b * b - det).clamp_min(0.0))
    radius = torch.ceil(extent * torch.sqrt(lam_max))
    m = means2d.detach()
    inside = (m[..., 0] + radius > 0) & (m[..., 0] - radius < width) & (m[..., 1] + radius > 0) & (
        m[..., 1] - radius < height
    )
    valid = valid & inside & (radius > 0) & torch.isfinite(m).all(-1)
    radii = torch.where(valid, radius, torch.zeros_like(radius)).to(torch.int32)
    ext = extent[..., None] * torch.sqrt(torch.stack([c[..., 0, 0], c[..., 1, 1]], -1).clamp_min(0.0))
    extents = torch.where(valid[..., None], ext, torch.zeros_like(ext))
    return radii, extents


def mahalanobis_cutoff(opacity: float) -> float:
    """Mahalanobis distance at which ``opacity * exp(-d^2/2) = 1/255`` (the visible contour)."""
    return math.sqrt(2.0 * math.log(255.0 * opacity))
