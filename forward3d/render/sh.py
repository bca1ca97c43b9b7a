"""Real spherical harmonics up to degree 3 with the standard 3DGS constants (Inria / gsplat).

Colour of a Gaussian seen along the unit direction ``d = normalize(mean - camera_centre)``:
``max(sum_k Y_k(d) * sh[k] + 0.5, 0)``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from forward3d.types import SH_C0  # one home: the data model's constant

__all__ = ["SH_C0", "SH_C1", "SH_C2", "SH_C3", "sh_basis", "eval_sh", "sh_to_color", "num_sh_bases"]

SH_C1 = 0.4886025119029199
SH_C2 = (1.0925484305920792, -1.0925484305920792, 0.31539156525252005, -1.0925484305920792, 0.5462742152960396)
SH_C3 = (
    -0.5900435899266435,
    2.890611442640554,
    -0.4570457994644658,
    0.3731763325901154,
    -0.4570457994644658,
    1.445305721320277,
    -0.5900435899266435,
)


def num_sh_bases(degree: int) -> int:
    """Number of coefficients ``(degree + 1)^2`` of a degree-``degree`` expansion."""
    if degree not in (0, 1, 2, 3):
        raise ValueError(f"sh degree: expected 0, 1, 2 or 3, found {degree}")
    return (degree + 1) ** 2


def sh_basis(degree: int, dirs: Tensor) -> Tensor:
    """Basis values ``[..., (degree+1)^2]`` at unit directions ``dirs`` ``[..., 3]`` (not normalised here)."""
    n = num_sh_bases(degree)
    out = [torch.full_like(dirs[..., 0], SH_C0)]
    if degree >= 1:
        x, y, z = dirs.unbind(-1)
        out += [-SH_C1 * y, SH_C1 * z, -SH_C1 * x]
    if degree >= 2:
        xx, yy, zz = x * x, y * y, z * z
        xy, yz, xz = x * y, y * z, x * z
        out += [
            SH_C2[0] * xy,
            SH_C2[1] * yz,
            SH_C2[2] * (2.0 * zz - xx - yy),
            SH_C2[3] * xz,
            SH_C2[4] * (xx - yy),
        ]
    if degree >= 3:
        out += [
            SH_C3[0] * y * (3.0 * xx - yy),
            SH_C3[1] * xy * z,
            SH_C3[2] * y * (4.0 * zz - xx - yy),
            SH_C3[3] * z * (2.0 * zz - 3.0 * xx - 3.0 * yy),
            SH_C3[4] * x * (4.0 * zz - xx - yy),
            SH_C3[5] * z * (xx - yy),
            SH_C3[6] * x * (xx - 3.0 * yy),
        ]
    basis = torch.stack(out, -1)
    if basis.shape[-1] != n:  # pragma: no cover - guarded by num_sh_bases
        raise RuntimeError("internal: wrong SH basis size")
    return basis


def eval_sh(degree: int, dirs: Tensor, coeffs: Tensor) -> Tensor:
    """Evaluate SH: ``dirs`` ``[..., 3]`` (normalised inside), ``coeffs`` ``[..., K, 3]`` with
    ``K >= (degree+1)^2`` (extra coefficients are ignored) -> ``[..., 3]`` (without the +0.5 offset)."""
    n = num_sh_bases(degree)
    if coeffs.shape[-2] < n:
        raise ValueError(f"eval_sh: expected at least {n} coefficients for degree {degree}, found {coeffs.shape[-2]}")
    dirs = dirs / dirs.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    basis = sh_basis(degree, dirs)  # [..., n]
    return (basis[..., None] * coeffs[..., :n, :]).sum(-2)


def sh_to_color(degree: int, dirs: Tensor, coeffs: Tensor) -> Tensor:
    """Colour ``max(SH(dirs) + 0.5, 0)`` ``[..., 3]`` as gsplat's ``rasterization`` computes it."""
    return (eval_sh(degree, dirs, coeffs) + 0.5).clamp_min(0.0)
