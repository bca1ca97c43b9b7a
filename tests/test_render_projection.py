"""Projection and SH: analytic checks from ../shared/specs/splatting.md."""

import math

import pytest
import torch

from forward3d.render import (
    SH_C0,
    SH_C1,
    Cameras,
    eval_sh,
    mahalanobis_cutoff,
    perspective_jacobian,
    project_gaussians,
    sh_basis,
)
from forward3d.render.reference import project_reference
from forward3d.types import Gaussians


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: see conftest.one_thread


def _cam(W=32, H=24, f=30.0, cx=None, cy=None, dtype=torch.float64):
    K = torch.tensor([[f, 0, W / 2 if cx is None else cx], [0, f, H / 2 if cy is None else cy], [0, 0, 1]], dtype=dtype)
    return torch.eye(4, dtype=dtype)[None], K[None], W, H


def _iso(means, s, o=0.5, dtype=torch.float64):
    n = len(means)
    return Gaussians(
        torch.as_tensor(means, dtype=dtype),
        torch.tensor([[1.0, 0, 0, 0]] * n, dtype=dtype),
        torch.full((n, 3), math.log(s), dtype=dtype),
        torch.full((n,), math.log(o / (1 - o)), dtype=dtype),
        torch.zeros(n, 1, 3, dtype=dtype),
    )


def test_on_axis_isotropic_covariance():
    w2c, K, W, H = _cam(f=30.0)
    z, s = 3.0, 0.2
    g = _iso([[0.0, 0.0, z]], s)
    p = project_gaussians(g.means, g.quats, g.scales, g.opacities, w2c, K, W, H)
    expected = (30.0 * s / z) ** 2 + 0.3
    torch.testing.assert_close(p.covars2d[0, 0], expected * torch.eye(2, dtype=torch.float64))
    torch.testing.assert_close(p.means2d[0, 0], torch.tensor([W / 2, H / 2], dtype=torch.float64))
    assert p.depths[0, 0] == z
    c = p.conics[0, 0]
    torch.testing.assert_close(c, torch.tensor([1 / expected, 0.0, 1 / expected], dtype=torch.float64))


def test_jacobian_matches_finite_differences():
    _, K, W, H = _cam(cx=13.0, cy=9.0)
    pts = torch.tensor([[0.3, -0.2, 2.0], [-0.5, 0.4, 3.0], [0.1, 0.1, 1.0]], dtype=torch.float64)

    def proj(p):
        return torch.stack([K[0, 0, 0] * p[0] / p[2] + K[0, 0, 2], K[0, 1, 1] * p[1] / p[2] + K[0, 1, 2]])

    J = perspective_jacobian(pts[None], K, W, H)[0]
    for i, p in enumerate(pts):
        Jn = torch.autograd.functional.jacobian(proj, p)
        torch.testing.assert_close(J[i], Jn)


def test_jacobian_clamps_outside_fov():
    _, K, W, H = _cam(W=32, H=24, f=30.0)
    lim = (W - W / 2) / 30.0 + 0.3 * 0.5 * W / 30.0  # lim_x_pos
    far_right = torch.tensor([[[5.0, 0.0, 1.0]]], dtype=torch.float64)
    J = perspective_jacobian(far_right, K, W, H)[0, 0]
    assert J[0, 2].item() == pytest.approx(-30.0 * lim)


def test_matrix_and_componentwise_projection_agree():
    torch.manual_seed(0)
    n = 50
    g = Gaussians(torch.randn(n, 3, dtype=torch.float64) + torch.tensor([0, 0, 4.0], dtype=torch.float64),
                  torch.randn(n, 4, dtype=torch.float64), torch.randn(n, 3, dtype=torch.float64) * 0.5 - 2,
                  torch.randn(n, dtype=torch.float64), torch.zeros(n, 1, 3, dtype=torch.float64))
    w2c, K, W, H = _cam(cx=10.0)
    for aa in (False, True):
        a = project_gaussians(g.means, g.quats, g.scales, g.opacities, w2c, K, W, H, antialiased=aa)
        b = project_reference(g, w2c, K, W, H, 0.01, 1e10, aa)
        for name in ("means2d", "conics", "covars2d", "opacities", "depths", "extents"):
            torch.testing.assert_close(getattr(a, name), getattr(b, name))
        assert torch.equal(a.radii, b.radii)


def test_near_plane_culling_and_radius():
    w2c, K, W, H = _cam()
    g = _iso([[0, 0, 0.005], [0, 0, -1.0], [0, 0, 2.0], [100.0, 0, 2.0]], 0.1)
    p = project_gaussians(g.means, g.quats, g.scales, g.opacities, w2c, K, W, H, near=0.01)
    assert p.radii.tolist() == [[0, 0, p.radii[0, 2].item(), 0]]
    var = (30 * 0.1 / 2) ** 2 + 0.3
    assert p.radii[0, 2].item() == math.ceil(mahalanobis_cutoff(0.5) * math.sqrt(var))
    assert torch.isfinite(p.means2d).all() and torch.isfinite(p.conics).all()
    p = project_gaussians(g.means, g.quats, g.scales, g.opacities, w2c, K, W, H, far=1.5)
    assert p.radii[0, 2] == 0


def test_antialiased_compensation():
    w2c, K, W, H = _cam()
    g = _iso([[0, 0, 3.0]], 0.01, o=0.8)
    p = project_gaussians(g.means, g.quats, g.scales, g.opacities, w2c, K, W, H, antialiased=True)
    v = (30 * 0.01 / 3) ** 2
    torch.testing.assert_close(p.opacities[0, 0], torch.tensor(0.8 * v / (v + 0.3), dtype=torch.float64))


def test_sh_degree0_constant_and_degree1_signs():
    dirs = torch.tensor([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0], [0.3, -0.4, 0.5]], dtype=torch.float64)
    coeffs = torch.zeros(4, 4, 3, dtype=torch.float64)
    coeffs[:, 0] = 1.0
    torch.testing.assert_close(eval_sh(0, dirs, coeffs), torch.full((4, 3), SH_C0, dtype=torch.float64))
    basis = sh_basis(1, dirs[:3])
    expected = torch.tensor([[SH_C0, 0, 0, -SH_C1], [SH_C0, -SH_C1, 0, 0], [SH_C0, 0, SH_C1, 0]], dtype=torch.float64)
    torch.testing.assert_close(basis, expected)
    # eval_sh normalises the direction; the real SH basis is orthonormal on the sphere (checked by quadrature)
    torch.testing.assert_close(eval_sh(1, dirs[:1] * 5, coeffs[:1]), eval_sh(1, dirs[:1], coeffs[:1]))
    u = torch.randn(200000, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    u = u / u.norm(dim=-1, keepdim=True)
    Y = sh_basis(3, u)
    gram = Y.T @ Y * (4 * math.pi / len(u))
    torch.testing.assert_close(gram, torch.eye(16, dtype=torch.float64), atol=0.03, rtol=0)


def test_cameras_helpers_and_validation():
    w2c = torch.eye(4)[None].repeat(2, 1, 1)
    w2c[1, :3, 3] = torch.tensor([1.0, 2.0, 3.0])
    K = torch.tensor([[10.0, 0, 8], [0, 10, 6], [0, 0, 1]])[None].repeat(2, 1, 1)
    cams = Cameras(w2c, K, 16, 12)
    torch.testing.assert_close(cams.centers[1], torch.tensor([-1.0, -2.0, -3.0]))
    back = Cameras.from_c2w(cams.c2w, K, 16, 12)
    torch.testing.assert_close(back.w2c, w2c)
    small = cams.resized(8, 6)
    torch.testing.assert_close(small.K[0, :2], K[0, :2] / 2)
    assert len(cams[1]) == 1 and len(cams) == 2
    with pytest.raises(ValueError, match="w2c"):
        Cameras(torch.eye(3), K[0], 16, 12)
    with pytest.raises(ValueError, match="K"):
        Cameras(w2c, K[:1], 16, 12)
