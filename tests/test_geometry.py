"""SE(3)/Sim(3), quaternions and pinhole camera maths."""

import math

import numpy as np
import pytest
import torch

from forward3d.geometry import (
    camera_to_world,
    compose,
    depth_to_points,
    depth_to_points_torch,
    inverse_se3,
    inverse_sim3,
    make_se3,
    make_sim3,
    pixel_grid,
    pixel_grid_torch,
    project,
    project_torch,
    quat_conjugate,
    quat_multiply,
    quat_to_rotmat,
    quat_to_rotmat_torch,
    relative_c2w,
    rotation_angle,
    rotmat_to_quat,
    rotmat_to_quat_torch,
    so3_exp,
    so3_log,
    split_sim3,
    transform_points,
    unproject,
    valid_depth_mask,
    world_to_camera,
    wxyz_to_xyzw,
    xyzw_to_wxyz,
)
from forward3d.types import _quat_to_rotmat, _rotmat_to_quat

RNG = np.random.default_rng(0)


def random_rotations(n, rng=RNG):
    q = rng.normal(size=(n, 4))
    return quat_to_rotmat(q)


def random_sim3(n, rng=RNG, scale=True):
    s = rng.uniform(0.5, 2.0, n) if scale else np.ones(n)
    return make_sim3(random_rotations(n, rng), rng.normal(size=(n, 3)), s)


# ----------------------------------------------------------------------------------------------
# SE(3) / Sim(3)
# ----------------------------------------------------------------------------------------------


def test_make_split_roundtrip():
    T = random_sim3(5)
    s, R, t = split_sim3(T)
    np.testing.assert_allclose(make_sim3(R, t, s), T, atol=1e-12)
    np.testing.assert_allclose(R @ np.swapaxes(R, -1, -2), np.broadcast_to(np.eye(3), (5, 3, 3)), atol=1e-12)
    assert T.shape == (5, 4, 4)
    np.testing.assert_array_equal(T[:, 3], np.broadcast_to([0, 0, 0, 1.0], (5, 4)))


def test_inverse_se3_and_sim3():
    T = random_sim3(7, scale=False)
    np.testing.assert_allclose(inverse_se3(T) @ T, np.broadcast_to(np.eye(4), T.shape), atol=1e-12)
    S = random_sim3(7)
    np.testing.assert_allclose(inverse_sim3(S) @ S, np.broadcast_to(np.eye(4), S.shape), atol=1e-12)
    np.testing.assert_allclose(S @ inverse_sim3(S), np.broadcast_to(np.eye(4), S.shape), atol=1e-12)
    np.testing.assert_allclose(inverse_sim3(S), np.linalg.inv(S), atol=1e-10)


def test_inverse_torch_matches_numpy_and_is_differentiable():
    S = random_sim3(3)
    St = torch.tensor(S, requires_grad=True)
    inv = inverse_sim3(St)
    assert isinstance(inv, torch.Tensor)
    np.testing.assert_allclose(inv.detach().numpy(), inverse_sim3(S), atol=1e-12)
    inv.sum().backward()
    assert torch.isfinite(St.grad).all()
    T = torch.tensor(random_sim3(1, scale=False)[0], requires_grad=True)
    assert torch.autograd.gradcheck(lambda m: inverse_se3(m), (T,))


def test_compose_transform_points_and_relative():
    A, B = random_sim3(2)
    p = RNG.normal(size=(10, 3))
    np.testing.assert_allclose(transform_points(compose(A, B), p), transform_points(A, transform_points(B, p)),
                               atol=1e-12)
    # batched T [B, 4, 4] with points [B, N, 3]
    Ts = random_sim3(4)
    ps = RNG.normal(size=(4, 6, 3))
    out = transform_points(Ts, ps)
    for i in range(4):
        np.testing.assert_allclose(out[i], transform_points(Ts[i], ps[i]), atol=1e-12)
    # single T on an image-shaped point map
    assert transform_points(A, RNG.normal(size=(2, 3, 3))).shape == (2, 3, 3)
    c2w = random_sim3(2, scale=False)
    rel = relative_c2w(c2w[0], c2w[1])
    np.testing.assert_allclose(c2w[0] @ rel, c2w[1], atol=1e-12)
    # torch points
    pt = transform_points(torch.tensor(A), torch.tensor(p))
    np.testing.assert_allclose(pt.numpy(), transform_points(A, p), atol=1e-12)


def test_se3_bad_input():
    with pytest.raises(ValueError, match=r"\[\.\.\., 4, 4\]"):
        inverse_se3(np.eye(3))
    with pytest.raises(ValueError, match="points"):
        transform_points(np.eye(4), np.zeros((4, 2)))
    with pytest.raises(ValueError):
        compose()
    with pytest.raises(ValueError, match="t"):
        make_sim3(np.eye(3), np.zeros(2))


def test_rotation_angle_and_so3():
    axis = np.array([1.0, 2.0, -0.5])
    axis /= np.linalg.norm(axis)
    for angle in [0.0, 1e-9, 1e-5, 0.3, 2.0, math.pi - 1e-7, math.pi]:
        R = so3_exp(axis * angle)
        np.testing.assert_allclose(R @ R.T, np.eye(3), atol=1e-12)
        assert abs(np.linalg.det(R) - 1) < 1e-12
        assert abs(rotation_angle(R) - angle) < 1e-9
        w = so3_log(R)
        if angle < math.pi - 1e-6:
            np.testing.assert_allclose(w, axis * angle, atol=1e-9)
        else:  # at pi, +axis and -axis are the same rotation
            np.testing.assert_allclose(so3_exp(w), R, atol=1e-7)
    # analytic: 90 degrees about z
    Rz = so3_exp([0, 0, math.pi / 2])
    np.testing.assert_allclose(Rz, [[0, -1, 0], [1, 0, 0], [0, 0, 1]], atol=1e-15)
    np.testing.assert_allclose(rotation_angle(make_se3(Rz, [1, 2, 3])), math.pi / 2)
    # batched round trip
    ws = RNG.normal(size=(20, 3))
    ws *= (RNG.uniform(0, 3.0, 20) / np.linalg.norm(ws, axis=1))[:, None]
    np.testing.assert_allclose(so3_log(so3_exp(ws)), ws, atol=1e-10)


# ----------------------------------------------------------------------------------------------
# Quaternions
# ----------------------------------------------------------------------------------------------


def test_quaternion_analytic_and_roundtrip():
    s = math.sqrt(0.5)
    np.testing.assert_allclose(quat_to_rotmat([s, 0, 0, s]), [[0, -1, 0], [1, 0, 0], [0, 0, 1]], atol=1e-15)
    np.testing.assert_allclose(quat_to_rotmat([2.0, 0, 0, 0]), np.eye(3))  # normalised inside
    q = RNG.normal(size=(50, 4))
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    q[q[:, 0] < 0] *= -1
    np.testing.assert_allclose(rotmat_to_quat(quat_to_rotmat(q)), q, atol=1e-12)
    # near-180-degree rotations: w ~ 0
    for ax in np.eye(3):
        q180 = np.concatenate([[1e-9], ax])
        q180 /= np.linalg.norm(q180)
        np.testing.assert_allclose(quat_to_rotmat(rotmat_to_quat(quat_to_rotmat(q180))), quat_to_rotmat(q180), atol=1e-12)
    assert (rotmat_to_quat(random_rotations(100))[:, 0] >= 0).all()


def test_quaternion_multiply_matches_matrices():
    q1, q2 = RNG.normal(size=(2, 8, 4))
    q1 /= np.linalg.norm(q1, axis=-1, keepdims=True)
    q2 /= np.linalg.norm(q2, axis=-1, keepdims=True)
    np.testing.assert_allclose(quat_to_rotmat(quat_multiply(q1, q2)), quat_to_rotmat(q1) @ quat_to_rotmat(q2), atol=1e-12)
    np.testing.assert_allclose(quat_to_rotmat(quat_conjugate(q1)), np.swapaxes(quat_to_rotmat(q1), -1, -2), atol=1e-12)
    np.testing.assert_array_equal(xyzw_to_wxyz(wxyz_to_xyzw(q1)), q1)
    np.testing.assert_array_equal(wxyz_to_xyzw(np.array([1.0, 2, 3, 4])), [2, 3, 4, 1])


def test_quaternion_consistent_with_types_torch():
    q = RNG.normal(size=(30, 4))
    R_np = quat_to_rotmat(q)
    R_types = _quat_to_rotmat(torch.tensor(q)).numpy()
    np.testing.assert_allclose(R_np, R_types, atol=1e-12)
    np.testing.assert_allclose(quat_to_rotmat_torch(torch.tensor(q)).numpy(), R_np, atol=1e-12)
    Rs = random_rotations(30)
    np.testing.assert_allclose(rotmat_to_quat(Rs), _rotmat_to_quat(torch.tensor(Rs)).numpy(), atol=1e-12)
    np.testing.assert_allclose(rotmat_to_quat_torch(torch.tensor(Rs)).numpy(), rotmat_to_quat(Rs), atol=1e-12)


def test_quaternion_bad_input():
    with pytest.raises(ValueError, match=r"\[\.\.\., 4\]"):
        quat_to_rotmat(np.zeros(3))
    with pytest.raises(ValueError, match="zero-norm"):
        quat_to_rotmat(np.zeros(4))
    with pytest.raises(ValueError):
        rotmat_to_quat(np.eye(4)[None, :3])
    with pytest.raises(ValueError):
        quat_to_rotmat_torch(torch.zeros(3))


# ----------------------------------------------------------------------------------------------
# Camera
# ----------------------------------------------------------------------------------------------

K = np.array([[100.0, 0.0, 32.0], [0.0, 110.0, 24.0], [0.0, 0.0, 1.0]])


def test_pixel_grid_centres():
    g = pixel_grid(2, 3)
    assert g.shape == (2, 3, 2)
    np.testing.assert_array_equal(g[0, 0], [0.5, 0.5])
    np.testing.assert_array_equal(g[1, 2], [2.5, 1.5])
    np.testing.assert_array_equal(pixel_grid_torch(2, 3, dtype=torch.float64).numpy(), g)
    with pytest.raises(ValueError):
        pixel_grid(0, 3)


def test_project_unproject_roundtrip_and_analytic():
    uv, z = project(np.array([[0.0, 0.0, 2.0], [1.0, -0.5, 2.0]]), K)
    np.testing.assert_allclose(uv, [[32, 24], [82, -3.5]])
    np.testing.assert_allclose(z, [2, 2])
    pts = np.concatenate([RNG.uniform(-1, 1, (100, 2)), RNG.uniform(0.5, 5, (100, 1))], 1)
    uv, z = project(pts, K)
    np.testing.assert_allclose(unproject(uv, z, K), pts, atol=1e-12)
    # behind the camera -> NaN uv
    uv, z = project(np.array([[0.0, 0.0, -1.0], [0.0, 0.0, 0.0]]), K)
    assert np.isnan(uv).all() and (z <= 0).all()
    # torch agrees and has finite gradients even with points behind the camera
    p = torch.tensor(np.concatenate([pts[:5], [[0.1, 0.2, -1.0]]]), requires_grad=True)
    uvt, zt = project_torch(p, torch.tensor(K))
    np.testing.assert_allclose(uvt[:5].detach().numpy(), project(pts[:5], K)[0], atol=1e-12)
    torch.nan_to_num(uvt).sum().backward()
    assert torch.isfinite(p.grad).all()


def test_project_batched_K():
    Ks = np.stack([K, K * [[2], [2], [1]]])
    pts = RNG.uniform(0.5, 2, (2, 7, 3))
    uv, _ = project(pts, Ks)
    np.testing.assert_allclose(uv[1], project(pts[1], Ks[1])[0])
    np.testing.assert_allclose(unproject(uv, pts[..., 2], Ks), pts, atol=1e-12)


def test_depth_to_points_analytic_and_invalid():
    depth = np.full((48, 64), 2.0)
    depth[0, 0] = 0.0
    depth[1, 1] = np.nan
    depth[2, 2] = np.inf
    depth[3, 3] = -1.0
    pts = depth_to_points(depth, K)
    assert pts.shape == (48, 64, 3)
    mask = valid_depth_mask(depth)
    assert mask.sum() == 48 * 64 - 4
    assert np.isnan(pts[~mask]).all() and np.isfinite(pts[mask]).all()
    # pixel (row 24, col 32) has centre (32.5, 24.5)
    np.testing.assert_allclose(pts[24, 32], [0.5 / 100 * 2, 0.5 / 110 * 2, 2.0])
    # re-projection gives the pixel centres back
    uv, _ = project(pts[mask], K)
    np.testing.assert_allclose(uv, pixel_grid(48, 64)[mask], atol=1e-9)
    assert (depth_to_points(depth, K, fill=0.0)[~mask] == 0).all()
    np.testing.assert_array_equal(valid_depth_mask(np.array([0.5, 1.0, 9.0]), 0.6, 5.0), [False, True, False])


def test_depth_to_points_world_and_batched():
    c2w = random_sim3(2, scale=False)
    depth = RNG.uniform(1, 3, (2, 6, 8))
    world = depth_to_points(depth, K, c2w)
    for i in range(2):
        np.testing.assert_allclose(world[i], camera_to_world(depth_to_points(depth[i], K), c2w[i]), atol=1e-12)
        np.testing.assert_allclose(world_to_camera(world[i], c2w[i]), depth_to_points(depth[i], K), atol=1e-12)


def test_depth_to_points_torch_matches_numpy():
    depth = RNG.uniform(1, 3, (2, 6, 8))
    depth[0, 0, 0] = 0
    depth[1, 2, 3] = np.nan
    c2w = random_sim3(2, scale=False)
    ref = depth_to_points(depth, K, c2w, fill=0.0)
    out = depth_to_points_torch(torch.tensor(depth), torch.tensor(K), torch.tensor(c2w))
    assert out.dtype == torch.float64 and out.shape == (2, 6, 8, 3)
    np.testing.assert_allclose(out.numpy(), ref, atol=1e-12)
    single = depth_to_points_torch(torch.tensor(depth[1], dtype=torch.float32), torch.tensor(K))
    assert single.dtype == torch.float32
    np.testing.assert_allclose(single.numpy(), depth_to_points(depth[1], K, fill=0.0), atol=1e-5)
    # differentiable w.r.t. depth
    d = torch.tensor(depth[0, :2, :2].copy() + 1, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: depth_to_points_torch(x, torch.tensor(K)), (d,))


def test_camera_bad_input():
    with pytest.raises(ValueError, match="K"):
        project(np.zeros((3, 3)), np.eye(4))
    with pytest.raises(ValueError, match="depth"):
        depth_to_points(np.zeros(5), K)
    with pytest.raises(ValueError, match="c2w"):
        depth_to_points(np.ones((2, 2)), K, np.eye(3))
    with pytest.raises(ValueError, match="depth"):
        depth_to_points_torch(torch.zeros(5), torch.tensor(K))
