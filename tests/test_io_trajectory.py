"""TUM and Redwood .log trajectories."""

import numpy as np
import pytest

from forward3d.io.trajectory import (
    quat_wxyz_to_rotmat,
    read_redwood_log,
    read_tum,
    rotmat_to_quat_wxyz,
    write_redwood_log,
    write_tum,
)


def _random_c2w(n, seed=0):
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((n, 4))
    c2w = np.tile(np.eye(4), (n, 1, 1))
    c2w[:, :3, :3] = quat_wxyz_to_rotmat(q)
    c2w[:, :3, 3] = rng.standard_normal((n, 3))
    return c2w


def test_quaternion_helpers_analytic_and_roundtrip():
    # 90 degrees about z: wxyz = (cos45, 0, 0, sin45)
    s = np.sqrt(0.5)
    R = quat_wxyz_to_rotmat(np.array([s, 0, 0, s]))
    np.testing.assert_allclose(R, [[0, -1, 0], [1, 0, 0], [0, 0, 1]], atol=1e-12)
    np.testing.assert_allclose(rotmat_to_quat_wxyz(R), [s, 0, 0, s], atol=1e-12)
    # 180 degree rotations (w = 0) and random ones
    for R in [np.diag([1.0, -1, -1]), np.diag([-1.0, 1, -1]), np.diag([-1.0, -1, 1])]:
        np.testing.assert_allclose(quat_wxyz_to_rotmat(rotmat_to_quat_wxyz(R)), R, atol=1e-12)
    c2w = _random_c2w(100)
    q = rotmat_to_quat_wxyz(c2w[:, :3, :3])
    assert (q[:, 0] >= 0).all()
    np.testing.assert_allclose(np.linalg.norm(q, axis=1), 1, atol=1e-12)
    np.testing.assert_allclose(quat_wxyz_to_rotmat(q), c2w[:, :3, :3], atol=1e-12)


def test_tum_roundtrip_and_format(tmp_path):
    c2w = _random_c2w(20)
    ts = 1305031102.175304 + np.arange(20) / 30.0
    write_tum(tmp_path / "t.txt", ts, c2w)
    t2, c2 = read_tum(tmp_path / "t.txt")
    np.testing.assert_allclose(t2, ts, atol=1e-6)
    np.testing.assert_allclose(c2, c2w, atol=1e-8)
    # xyzw on disk: identity rotation gives "0 0 0 1"
    write_tum(tmp_path / "i.txt", [0.5], np.eye(4)[None])
    row = [ln for ln in (tmp_path / "i.txt").read_text().splitlines() if not ln.startswith("#")][0]
    np.testing.assert_allclose([float(v) for v in row.split()], [0.5, 0, 0, 0, 0, 0, 0, 1])


def test_tum_reader_comments_normalisation_and_errors(tmp_path):
    p = tmp_path / "g.txt"
    p.write_text("# ground truth\n# timestamp tx ty tz qx qy qz qw\n\n1.0 1 2 3 0 0 0 2\n2.0,0,0,0,0,0,1,1\n")
    ts, c2w = read_tum(p)
    np.testing.assert_allclose(ts, [1, 2])
    np.testing.assert_allclose(c2w[0], np.array([[1, 0, 0, 1], [0, 1, 0, 2], [0, 0, 1, 3], [0, 0, 0, 1.0]]))
    np.testing.assert_allclose(c2w[1, :3, :3], [[0, -1, 0], [1, 0, 0], [0, 0, 1]], atol=1e-12)
    p.write_text("# x\n1.0 1 2 3 0 0 0 1\n2.0 1 2 3 0 0 1\n")
    with pytest.raises(ValueError, match=r"g\.txt:3.*expected 8 values"):
        read_tum(p)
    p.write_text("1.0 1 2 3 0 0 zero 1\n")
    with pytest.raises(ValueError, match=r"g\.txt:1"):
        read_tum(p)
    p.write_text("1.0 1 2 3 0 0 0 0\n")
    with pytest.raises(ValueError, match="quaternion"):
        read_tum(p)
    with pytest.raises(ValueError, match="timestamps"):
        write_tum(tmp_path / "w.txt", [0.0, 1.0], np.eye(4)[None])
    with pytest.raises(ValueError, match="rotation"):
        write_tum(tmp_path / "w.txt", [0.0], 2 * np.eye(4)[None])
    assert not (tmp_path / "w.txt").exists()
    assert sorted(x.name for x in tmp_path.iterdir()) == ["g.txt"]


def test_redwood_log_roundtrip_and_open3d(tmp_path):
    c2w = _random_c2w(6)
    write_redwood_log(tmp_path / "t.log", c2w)
    np.testing.assert_allclose(read_redwood_log(tmp_path / "t.log"), c2w, atol=1e-9)
    assert (tmp_path / "t.log").read_text().splitlines()[5] == "1 1 2"
    o3d = pytest.importorskip("open3d")
    traj = o3d.io.read_pinhole_camera_trajectory(str(tmp_path / "t.log"))  # stores w2c as extrinsic
    np.testing.assert_allclose(np.linalg.inv(traj.parameters[2].extrinsic), c2w[2], atol=1e-8)
    o3d.io.write_pinhole_camera_trajectory(str(tmp_path / "o.log"), traj)
    np.testing.assert_allclose(read_redwood_log(tmp_path / "o.log"), c2w, atol=1e-6)


def test_redwood_log_errors(tmp_path):
    p = tmp_path / "b.log"
    p.write_text("0 0 1\n1 0 0 0\n0 1 0 0\n0 0 1 0\n")
    with pytest.raises(ValueError, match="b.log.*5 lines"):
        read_redwood_log(p)
    p.write_text("0 0 1\n1 0 0 0\n0 1 0 0\n0 0 1 0\n0 0 x 1\n")
    with pytest.raises(ValueError, match=r"b\.log:5"):
        read_redwood_log(p)
    with pytest.raises(ValueError, match=r"\[N, 4, 4\]"):
        write_redwood_log(tmp_path / "w.log", np.eye(4))
