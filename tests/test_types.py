import numpy as np
import pytest
import torch

from forward3d.types import Frame, Gaussians, Intrinsics, PointCloud, Reconstruction, _quat_to_rotmat, _rotmat_to_quat


def test_frame_validates_shapes():
    img = np.zeros((4, 5, 3), np.uint8)
    f = Frame(img, depth=np.ones((4, 5)), K=np.eye(3), c2w=np.eye(4), source="a.png")
    assert f.depth.dtype == np.float32 and f.width == 5 and f.height == 4
    with pytest.raises(ValueError, match="a.png"):
        Frame(img, depth=np.ones((5, 4)), source="a.png")
    with pytest.raises(ValueError, match="uint8"):
        Frame(img.astype(np.float32))


def test_intrinsics_scale_and_fov():
    k = Intrinsics.from_fov(640, 480, 90.0)
    assert k.fx == pytest.approx(320.0)
    assert k.fov_x == pytest.approx(90.0)
    s = k.scaled(320, 240)
    assert s.fx == pytest.approx(160.0) and s.cx == pytest.approx(160.0)


def test_reconstruction_checks_lengths():
    r = Reconstruction(np.tile(np.eye(4), (3, 1, 1)), np.tile(np.eye(3), (3, 1, 1)), (10, 8))
    assert len(r) == 3 and r.frame_names[2] == "000002"
    with pytest.raises(ValueError):
        Reconstruction(np.tile(np.eye(4), (3, 1, 1)), np.tile(np.eye(3), (2, 1, 1)), (10, 8))
    with pytest.raises(ValueError):
        PointCloud(np.zeros((3, 3)), colors=np.zeros((3, 3)))


def test_quaternion_roundtrip():
    q = torch.randn(100, 4, dtype=torch.float64)
    q = q / q.norm(dim=-1, keepdim=True)
    q = torch.where(q[:, :1] < 0, -q, q)
    R = _quat_to_rotmat(q)
    assert torch.allclose(R @ R.transpose(-1, -2), torch.eye(3, dtype=torch.float64).expand(100, 3, 3), atol=1e-12)
    assert torch.allclose(_rotmat_to_quat(R), q, atol=1e-10)


def test_gaussians_transform_and_covariance():
    n = 7
    g = Gaussians(torch.randn(n, 3, dtype=torch.float64), torch.randn(n, 4, dtype=torch.float64),
                  torch.randn(n, 3, dtype=torch.float64) * 0.1, torch.randn(n, dtype=torch.float64),
                  torch.randn(n, 4, 3, dtype=torch.float64))
    assert g.sh_degree == 1
    R = _quat_to_rotmat(torch.tensor([0.9, 0.1, -0.3, 0.2], dtype=torch.float64))
    T = torch.eye(4, dtype=torch.float64)
    T[:3, :3] = 2.5 * R
    T[:3, 3] = torch.tensor([1.0, -2.0, 0.5])
    h = g.transform(T)
    assert torch.allclose(h.means, g.means @ (2.5 * R).T + T[:3, 3])
    # covariance transforms as s^2 R S R^T
    assert torch.allclose(h.covariances(), 6.25 * R @ g.covariances() @ R.T, atol=1e-10)
    both = Gaussians.concat([g, Gaussians.empty(0, dtype=torch.float64)])
    assert len(both) == n and both.sh.shape[1] == 4
    act = Gaussians.from_activated(g.means, g.quats, g.scales, g.opacities, colors=g.colors)
    assert torch.allclose(act.colors, g.colors.clamp_min(0))


def test_gaussians_parameters_helpers():
    g = Gaussians.from_activated(torch.zeros(2, 3), torch.tensor([[1.0, 0, 0, 0]] * 2), torch.ones(2, 3) * 0.1,
                                 torch.full((2,), 0.5), colors=torch.full((2, 3), 0.5))
    assert all(not t.requires_grad for t in g.parameters())
    assert all(t.requires_grad for t in g.requires_grad_().parameters())
    assert torch.allclose(g.opacities, torch.full((2,), 0.5)) and torch.allclose(g.scales, torch.full((2, 3), 0.1))
