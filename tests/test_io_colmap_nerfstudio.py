"""COLMAP text models and nerfstudio transforms.json."""

import json

import numpy as np
import pytest

from forward3d.io import colmap as colmap_mod
from forward3d.io.colmap import read_colmap_text, write_colmap_text
from forward3d.io.nerfstudio import opencv_to_opengl_c2w, read_transforms_json, write_transforms_json
from forward3d.io.trajectory import quat_wxyz_to_rotmat
from forward3d.types import PointCloud, Reconstruction


def _recon(n=5, seed=0, points=True, same_k=False):
    rng = np.random.default_rng(seed)
    c2w = np.tile(np.eye(4), (n, 1, 1))
    c2w[:, :3, :3] = quat_wxyz_to_rotmat(rng.standard_normal((n, 4)))
    c2w[:, :3, 3] = rng.standard_normal((n, 3))
    K = np.tile(np.array([[500.0, 0, 320.5], [0, 510.0, 240.25], [0, 0, 1]]), (n, 1, 1))
    if not same_k:
        K[2, 0, 0] = 450.0
    pc = PointCloud(rng.standard_normal((50, 3)), rng.integers(0, 256, (50, 3), dtype=np.uint8)) if points else None
    return Reconstruction(c2w, K, (640, 480), [f"f{i:03d}" for i in range(n)], np.arange(n) / 10.0, points=pc)


def test_colmap_roundtrip(tmp_path):
    r = _recon()
    write_colmap_text(tmp_path / "sparse", r, image_names=[f"{n}.jpg" for n in r.frame_names])
    cs = read_colmap_text(tmp_path / "sparse")
    assert cs.names == [f"{n}.jpg" for n in r.frame_names]
    np.testing.assert_allclose(cs.c2w, r.c2w, atol=1e-12)
    np.testing.assert_array_equal(cs.K, r.K)
    np.testing.assert_array_equal(cs.image_sizes, [[640, 480]] * 5)
    np.testing.assert_array_equal(cs.points.points, r.points.points)
    np.testing.assert_array_equal(cs.points.colors, r.points.colors)
    assert len(set(cs.extras["camera_ids"])) == 2  # one PINHOLE camera per distinct K
    back = cs.to_reconstruction()
    assert back.frame_names == r.frame_names and back.image_size == (640, 480)


def test_colmap_w2c_convention_analytic(tmp_path):
    c2w = np.eye(4)
    c2w[:3, 3] = [1.0, 2.0, 3.0]  # camera centre at (1, 2, 3), axes aligned with the world
    r = Reconstruction(c2w[None], np.eye(3)[None] * [[100], [100], [1]], (64, 48), ["a.png"])
    write_colmap_text(tmp_path, r)
    line = [ln for ln in (tmp_path / "images.txt").read_text().splitlines() if ln and not ln.startswith("#")][0]
    np.testing.assert_allclose([float(v) for v in line.split()[1:8]], [1, 0, 0, 0, -1, -2, -3])
    assert line.split()[9] == "a.png"
    cam = [ln for ln in (tmp_path / "cameras.txt").read_text().splitlines() if not ln.startswith("#")][0]
    assert cam.split()[:4] == ["1", "PINHOLE", "64", "48"]
    assert (tmp_path / "points3D.txt").read_text().count("\n") == 3  # header only


def test_colmap_reads_other_models_tracks_and_points2d(tmp_path):
    (tmp_path / "cameras.txt").write_text("# c\n3 SIMPLE_RADIAL 100 80 90 50 40 0.01\n7 SIMPLE_PINHOLE 100 80 95 49.5 40.5\n")
    (tmp_path / "images.txt").write_text(
        "# i\n2 1 0 0 0 0 0 1 7 b.png\n10.0 20.0 1 11.0 21.0 -1\n1 1 0 0 0 0 0 0 3 a.png\n\n")
    (tmp_path / "points3D.txt").write_text("1 0.5 0.25 2 10 20 30 0.7 1 0 2 1\n2 1 1 1 0 0 0 0\n")
    cs = read_colmap_text(tmp_path)
    assert cs.names == ["a.png", "b.png"]  # IMAGE_ID order
    np.testing.assert_allclose(cs.K[0], [[90, 0, 50], [0, 90, 40], [0, 0, 1]])
    np.testing.assert_allclose(cs.K[1], [[95, 0, 49.5], [0, 95, 40.5], [0, 0, 1]])
    np.testing.assert_allclose(cs.c2w[1, :3, 3], [0, 0, -1])
    np.testing.assert_allclose(cs.points.points, [[0.5, 0.25, 2], [1, 1, 1]])
    np.testing.assert_array_equal(cs.points.colors, [[10, 20, 30], [0, 0, 0]])


def test_colmap_errors_and_atomicity(tmp_path, monkeypatch):
    (tmp_path / "cameras.txt").write_text("1 FISHEYE_X 10 10 1 2 3\n")
    (tmp_path / "images.txt").write_text("")
    with pytest.raises(ValueError, match=r"cameras\.txt:1"):
        read_colmap_text(tmp_path)
    (tmp_path / "cameras.txt").write_text("1 PINHOLE 10 10 1 2 3 4\n")
    (tmp_path / "images.txt").write_text("1 1 0 0 0 0 0 0 9 a.png\n\n")
    with pytest.raises(ValueError, match="camera 9"):
        read_colmap_text(tmp_path)
    r = _recon()
    r.c2w[1, :3, :3] *= 2.0  # not rigid
    with pytest.raises(ValueError, match="rigid"):
        write_colmap_text(tmp_path / "out", r)
    with pytest.raises(ValueError, match="whitespace"):
        write_colmap_text(tmp_path / "out", _recon(), image_names=["a b.png"] * 5)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())

    def fail_points(f, pc):
        f.write("1 0 0 0 0 0 0 0\n")
        raise OSError("disk full")

    monkeypatch.setattr(colmap_mod, "_write_points", fail_points)
    with pytest.raises(OSError, match="disk full"):
        write_colmap_text(tmp_path / "out", _recon())
    assert list((tmp_path / "out").iterdir()) == []  # no cameras.txt / images.txt / temp files


def test_nerfstudio_roundtrip_shared_and_per_frame_intrinsics(tmp_path):
    for same_k in (True, False):
        r = _recon(same_k=same_k)
        write_transforms_json(tmp_path / "transforms.json", r, ply_file_path="point_cloud.ply")
        data = json.loads((tmp_path / "transforms.json").read_text())
        assert data["camera_model"] == "OPENCV" and data["w"] == 640 and data["h"] == 480
        assert data["ply_file_path"] == "point_cloud.ply"
        assert ("fl_x" in data) == same_k and ("fl_x" in data["frames"][0]) == (not same_k)
        assert data["frames"][0]["file_path"] == "images/f000.png"
        cs = read_transforms_json(tmp_path / "transforms.json")
        np.testing.assert_allclose(cs.c2w, r.c2w, atol=1e-12)
        np.testing.assert_array_equal(cs.K, r.K)
        np.testing.assert_array_equal(cs.image_sizes, [[640, 480]] * 5)
        back = cs.to_reconstruction()
        np.testing.assert_allclose(back.timestamps, r.timestamps)
        assert back.frame_names == r.frame_names
    write_transforms_json(tmp_path / "t2.json", r, image_paths=[f"rgb/{i}.jpg" for i in range(5)])
    assert read_transforms_json(tmp_path / "t2.json").names[4] == "rgb/4.jpg"


def test_nerfstudio_axes_camera_looking_down_world_z(tmp_path):
    # OpenCV camera at the origin looking down world +z, image y pointing down world +y
    r = Reconstruction(np.eye(4)[None], np.eye(3)[None], (4, 4))
    write_transforms_json(tmp_path / "t.json", r)
    T = np.array(json.loads((tmp_path / "t.json").read_text())["frames"][0]["transform_matrix"])
    np.testing.assert_array_equal(T[:3, 2], [0, 0, -1])  # z column = -forward (camera looks down -z)
    np.testing.assert_array_equal(T[:3, 1], [0, -1, 0])  # y column = up = -(image down)
    np.testing.assert_array_equal(T[:3, 0], [1, 0, 0])
    c2w = _recon().c2w
    np.testing.assert_allclose(opencv_to_opengl_c2w(c2w)[:, :3, 3], c2w[:, :3, 3])


def test_nerfstudio_errors(tmp_path):
    p = tmp_path / "t.json"
    p.write_text("{not json")
    with pytest.raises(ValueError, match="t.json"):
        read_transforms_json(p)
    p.write_text(json.dumps({"frames": [{"file_path": "a.png", "transform_matrix": np.eye(4).tolist()}]}))
    with pytest.raises(ValueError, match="fl_x"):
        read_transforms_json(p)
    with pytest.raises(ValueError, match="image paths"):
        write_transforms_json(tmp_path / "w.json", _recon(), image_paths=["a.png"])
    assert not (tmp_path / "w.json").exists()
