"""DepthSplat's Gaussian adapter: raw per-pixel head output -> world-frame 3D Gaussians.

Per pixel, 37 raw channels (SH degree 2): ``c0`` opacity logit; ``c1:3`` sub-pixel offsets (sigmoid - 0.5
pixels); ``c3:6`` scales ``clamp(softplus(c - 4), min, max)``; ``c6:10`` quaternion *xyzw*, divided by
(norm + 1e-8); ``c10:37`` SH as (rgb, 9), scaled by ``0.1 * 0.25**l`` for ``l >= 1`` and with the DC
offset by the input colour ``(rgb - 0.5) / C0``. Means are ``centre + depth * R K^-1 [u, v, 1]`` (z-depth,
normalised K, pixel centres at +0.5). Covariances ``R Rq S^2 Rq^T R^T``. The SH are rotated into the world
with e3nn's Wigner-D matrices of the camera rotation (as the reference does, on the 3DGS coefficients).

Wigner-D: e3nn defines ``D_l(R)`` by ``Y_l(R x) = D_l(R) Y_l(x)`` for its real spherical harmonics
(``l = 1``: ``(x, y, z)``). :func:`wigner_d` solves that identity by least squares on fixed sample
directions, in float64, instead of going through e3nn's Euler angles and matrix exponentials.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from forward3d.render.sh import SH_C0

__all__ = ["RawGaussians", "wigner_d", "rotate_sh", "quat_xyzw_to_rotmat", "adapt_gaussians"]


def _e3nn_sh(l: int, p: Tensor) -> Tensor:
    """e3nn's real spherical harmonics (unnormalised) of degree ``l`` at ``p`` ``[..., 3]`` -> ``[..., 2l+1]``."""
    x, y, z = p.unbind(-1)
    if l == 0:
        return torch.ones_like(x)[..., None]
    if l == 1:
        return p
    s3 = math.sqrt(3.0)
    if l == 2:
        return torch.stack([s3 * x * z, s3 * x * y, y * y - 0.5 * (x * x + z * z), s3 * y * z,
                            s3 / 2 * (z * z - x * x)], dim=-1)
    raise ValueError(f"wigner_d: degree {l} not supported (0..2)")


_SAMPLES = torch.nn.functional.normalize(torch.tensor(
    [[0.3, -0.5, 0.8], [-0.7, 0.2, 0.4], [0.1, 0.9, -0.3], [0.6, 0.6, 0.2], [-0.2, -0.4, -0.9],
     [0.8, -0.1, -0.5], [-0.5, 0.7, 0.6], [0.4, 0.3, -0.7], [-0.9, -0.3, 0.1], [0.2, -0.8, 0.3],
     [0.5, 0.1, 0.9], [-0.3, -0.9, -0.2]], dtype=torch.float64), dim=-1)


def wigner_d(l: int, R: Tensor) -> Tensor:
    """e3nn Wigner-D matrix of degree ``l`` for rotations ``R`` ``[..., 3, 3]`` -> ``[..., 2l+1, 2l+1]``."""
    Rd = R.double()
    if l == 0:
        return torch.ones(*R.shape[:-2], 1, 1, dtype=R.dtype, device=R.device)
    if l == 1:
        return R.clone()
    pts = _SAMPLES.to(R.device)
    y0 = _e3nn_sh(l, pts)  # [P, n]
    yr = _e3nn_sh(l, torch.einsum("...ij,pj->...pi", Rd, pts))  # [..., P, n]
    dt = torch.linalg.pinv(y0) @ yr  # [..., n, n] = D^T
    return dt.transpose(-1, -2).to(R.dtype)


def rotate_sh(sh: Tensor, R: Tensor) -> Tensor:
    """Rotate SH ``[..., C, K]`` (coefficients last) by ``R`` ``[..., 3, 3]`` (broadcast over C)."""
    k = sh.shape[-1]
    deg = int(round(math.sqrt(k))) - 1
    out = []
    for l in range(deg + 1):
        D = wigner_d(l, R)[..., None, :, :]  # [..., 1, n, n]
        out.append(torch.einsum("...ij,...j->...i", D, sh[..., l * l:(l + 1) ** 2]))
    return torch.cat(out, dim=-1)


def quat_xyzw_to_rotmat(q: Tensor, eps: float = 1e-8) -> Tensor:
    """``[..., 4]`` xyzw (any norm) -> ``[..., 3, 3]``, with ``2 / (|q|^2 + eps)`` as the reference."""
    i, j, k, r = q.unbind(-1)
    s = 2 / ((q * q).sum(-1) + eps)
    return torch.stack([1 - s * (j * j + k * k), s * (i * j - k * r), s * (i * k + j * r),
                        s * (i * j + k * r), 1 - s * (i * i + k * k), s * (j * k - i * r),
                        s * (i * k - j * r), s * (j * k + i * r), 1 - s * (i * i + j * j)], -1).view(*q.shape[:-1], 3, 3)


@dataclass
class RawGaussians:
    """Gaussians in the reference's layout (``B`` scenes, ``G = V*H*W`` per scene, index ``v*H*W + y*W + x``).

    Attributes:
        means: ``[B, G, 3]`` world centres.
        covariances: ``[B, G, 3, 3]`` world covariances.
        harmonics: ``[B, G, 3, d_sh]`` world-frame SH, (rgb, coefficient).
        opacities: ``[B, G]`` in (0, 1).
        opacity_logits: ``[B, G]`` the raw ``c0`` (``opacities = sigmoid(opacity_logits)``).
        scales: ``[B, G, 3]`` standard deviations (camera frame).
        rotations: ``[B, G, 4]`` camera-frame quaternions, xyzw.
        world_rotations: ``[B, G, 3, 3]`` ``R_c2w @ R_q``.
    """

    means: Tensor
    covariances: Tensor
    harmonics: Tensor
    opacities: Tensor
    opacity_logits: Tensor
    scales: Tensor
    rotations: Tensor
    world_rotations: Tensor


def adapt_gaussians(raw: Tensor, depth: Tensor, images: Tensor, intrinsics: Tensor, extrinsics: Tensor,
                    sh_degree: int, scale_min: float, scale_max: float) -> RawGaussians:
    """Turn the head output into Gaussians.

    Args:
        raw: ``[B, V, C, H, W]`` head output (``C = 10 + 3 * (sh_degree + 1)**2``).
        depth: ``[B, V, H, W]`` metric z-depth.
        images: ``[B, V, 3, H, W]`` RGB in [0, 1] (the SH DC offset).
        intrinsics: ``[B, V, 3, 3]`` normalised K.
        extrinsics: ``[B, V, 4, 4]`` camera-to-world.
    """
    b, v, c, h, w = raw.shape
    d_sh = (sh_degree + 1) ** 2
    g = raw.permute(0, 1, 3, 4, 2).reshape(b, v, h * w, c)  # [B, V, HW, C]
    logits = g[..., 0]
    offset = g[..., 1:3].sigmoid()
    scales = torch.clamp(F.softplus(g[..., 3:6] - 4.0), min=scale_min, max=scale_max)
    rot = g[..., 6:10]
    rot = rot / (rot.norm(dim=-1, keepdim=True) + 1e-8)
    sh = g[..., 10:10 + 3 * d_sh].reshape(b, v, h * w, 3, d_sh)
    mask = torch.ones(d_sh, dtype=raw.dtype, device=raw.device)
    for l in range(1, sh_degree + 1):
        mask[l * l:(l + 1) ** 2] = 0.1 * 0.25 ** l
    sh = sh * mask
    rgb = images.permute(0, 1, 3, 4, 2).reshape(b, v, h * w, 3)
    sh = torch.cat([sh[..., :1] + ((rgb - 0.5) / SH_C0)[..., None], sh[..., 1:]], dim=-1)

    ys, xs = torch.meshgrid(torch.arange(h, device=raw.device), torch.arange(w, device=raw.device), indexing="ij")
    xy = torch.stack([(xs + 0.5) / w, (ys + 0.5) / h], -1).to(raw.dtype).view(1, 1, h * w, 2)
    xy = xy + (offset - 0.5) / torch.tensor((w, h), dtype=raw.dtype, device=raw.device)
    R = extrinsics[..., :3, :3]  # [B, V, 3, 3]
    dirs = torch.einsum("bvij,bvnj->bvni", torch.linalg.inv(intrinsics), F.pad(xy, (0, 1), value=1.0))
    dirs = torch.einsum("bvij,bvnj->bvni", R, dirs)
    means = extrinsics[..., None, :3, 3] + dirs * depth.reshape(b, v, h * w, 1)

    Rq = quat_xyzw_to_rotmat(rot)  # [B, V, HW, 3, 3]
    S = scales.diag_embed()
    cov = Rq @ S @ S.transpose(-1, -2) @ Rq.transpose(-1, -2)
    Rb = R[:, :, None]
    cov = Rb @ cov @ Rb.transpose(-1, -2)
    harm = rotate_sh(sh, Rb)

    def flat(x: Tensor) -> Tensor:
        return x.reshape(b, v * h * w, *x.shape[3:])

    return RawGaussians(means=flat(means), covariances=flat(cov), harmonics=flat(harm),
                        opacities=flat(logits.sigmoid()), opacity_logits=flat(logits), scales=flat(scales),
                        rotations=flat(rot), world_rotations=flat(Rb @ Rq))
