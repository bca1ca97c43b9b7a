"""PLY point cloud and mesh reading/writing."""

import numpy as np
import pytest

from forward3d.io import ply as ply_mod
from forward3d.io.ply import read_mesh_ply, read_point_cloud, write_mesh_ply, write_point_cloud
from forward3d.types import SH_C0, Mesh, PointCloud


def _cloud(n=100, colors=True, normals=True, seed=0):
    rng = np.random.default_rng(seed)
    return PointCloud(
        rng.standard_normal((n, 3)).astype(np.float32),
        rng.integers(0, 256, (n, 3), dtype=np.uint8) if colors else None,
        rng.standard_normal((n, 3)).astype(np.float32) if normals else None,
    )


def _mesh(seed=0):
    rng = np.random.default_rng(seed)
    return Mesh(
        rng.standard_normal((12, 3)),
        rng.integers(0, 12, (20, 3)),
        rng.integers(0, 256, (12, 3), dtype=np.uint8),
        rng.standard_normal((12, 3)).astype(np.float32),
    )


@pytest.mark.parametrize("colors,normals", [(True, True), (True, False), (False, True), (False, False)])
def test_point_cloud_roundtrip(tmp_path, colors, normals):
    pc = _cloud(colors=colors, normals=normals)
    write_point_cloud(tmp_path / "a.ply", pc)
    back = read_point_cloud(tmp_path / "a.ply")
    np.testing.assert_array_equal(back.points, pc.points)
    assert (back.colors is None) == (not colors) and (back.normals is None) == (not normals)
    if colors:
        np.testing.assert_array_equal(back.colors, pc.colors)
    if normals:
        np.testing.assert_array_equal(back.normals, pc.normals)
    header = (tmp_path / "a.ply").read_bytes()[:400]
    assert b"format binary_little_endian 1.0" in header and b"property float x" in header
    assert (b"property uchar red" in header) == colors


def test_empty_point_cloud(tmp_path):
    write_point_cloud(tmp_path / "e.ply", PointCloud(np.zeros((0, 3), np.float32)))
    assert len(read_point_cloud(tmp_path / "e.ply")) == 0


def test_open3d_reads_our_ply_and_we_read_open3d(tmp_path):
    o3d = pytest.importorskip("open3d")
    pc = _cloud(50)
    write_point_cloud(tmp_path / "a.ply", pc)
    o = o3d.io.read_point_cloud(str(tmp_path / "a.ply"))
    np.testing.assert_allclose(np.asarray(o.points), pc.points, atol=1e-6)
    np.testing.assert_allclose(np.asarray(o.colors) * 255, pc.colors, atol=0.5)
    for ascii_ in (True, False):  # open3d writes double coordinates and uchar colours
        o3d.io.write_point_cloud(str(tmp_path / "o.ply"), o, write_ascii=ascii_)
        back = read_point_cloud(tmp_path / "o.ply")
        np.testing.assert_allclose(back.points, pc.points, atol=1e-5)
        np.testing.assert_array_equal(back.colors, pc.colors)


def _write_manual(path, fmt, header_props, rows_dtype, rows, extra=b""):
    head = f"ply\nformat {fmt} 1.0\ncomment hand made\nelement vertex {len(rows)}\n" + header_props + "end_header\n"
    if fmt == "ascii":
        body = "\n".join(" ".join(str(v) for v in r) for r in rows.tolist()).encode() + b"\n"
    else:
        body = np.array([tuple(r) for r in rows.tolist()], dtype=rows_dtype).tobytes()
    path.write_bytes(head.encode() + body + extra)


@pytest.mark.parametrize("fmt,order", [("binary_little_endian", "<"), ("binary_big_endian", ">"), ("ascii", "<")])
def test_read_double_float_colours_and_extra_props(tmp_path, fmt, order):
    rng = np.random.default_rng(1)
    xyz = rng.standard_normal((7, 3))
    rgb = rng.uniform(0, 1, (7, 3)).astype(np.float32)
    extra = rng.standard_normal((7, 1))
    rows = np.concatenate([xyz, extra, rgb], 1)
    dt = [("x", order + "f8"), ("y", order + "f8"), ("z", order + "f8"), ("q", order + "f8"),
          ("r", order + "f4"), ("g", order + "f4"), ("b", order + "f4")]
    props = "".join(f"property double {n}\n" for n in "xyz") + "property double quality\n" + \
        "".join(f"property float {n}\n" for n in ("red", "green", "blue"))
    _write_manual(tmp_path / "m.ply", fmt, props, dt, rows)
    pc = read_point_cloud(tmp_path / "m.ply")
    np.testing.assert_allclose(pc.points, xyz.astype(np.float32), rtol=1e-6 if fmt != "ascii" else 1e-5)
    np.testing.assert_array_equal(pc.colors, (rgb * 255 + 0.5).astype(np.uint8))
    assert pc.normals is None


def test_read_3dgs_ply_positions_and_dc_colour(tmp_path):
    names = ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"] + [f"f_rest_{i}" for i in range(9)] + \
        ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
    rng = np.random.default_rng(2)
    rows = rng.standard_normal((5, len(names))).astype(np.float32)
    rows[:, 3:6] = 0
    props = "".join(f"property float {n}\n" for n in names)
    _write_manual(tmp_path / "g.ply", "binary_little_endian", props, [(n, "<f4") for n in names], rows)
    pc = read_point_cloud(tmp_path / "g.ply")
    np.testing.assert_array_equal(pc.points, rows[:, :3])
    exp = (np.clip(0.5 + SH_C0 * rows[:, 6:9], 0, 1) * 255 + 0.5).astype(np.uint8)
    np.testing.assert_array_equal(pc.colors, exp)
    assert pc.normals is None  # all-zero placeholder normals are dropped


def test_mesh_roundtrip_and_open3d(tmp_path):
    o3d = pytest.importorskip("open3d")
    m = _mesh()
    write_mesh_ply(tmp_path / "m.ply", m)
    back = read_mesh_ply(tmp_path / "m.ply")
    np.testing.assert_array_equal(back.vertices, m.vertices)
    np.testing.assert_array_equal(back.faces, m.faces)
    np.testing.assert_array_equal(back.vertex_colors, m.vertex_colors)
    np.testing.assert_array_equal(back.vertex_normals, m.vertex_normals)
    om = o3d.io.read_triangle_mesh(str(tmp_path / "m.ply"))
    np.testing.assert_array_equal(np.asarray(om.triangles), m.faces)
    o3d.io.write_triangle_mesh(str(tmp_path / "o.ply"), om, write_ascii=True)  # uint indices, ascii
    back = read_mesh_ply(tmp_path / "o.ply")
    np.testing.assert_array_equal(back.faces, m.faces)
    # read_point_cloud on a mesh file gives its vertices
    np.testing.assert_array_equal(read_point_cloud(tmp_path / "m.ply").points, m.vertices)


@pytest.mark.parametrize("fmt", ["ascii", "binary_little_endian"])
def test_polygon_faces_are_fan_triangulated(tmp_path, fmt):
    head = ("ply\nformat {fmt} 1.0\nelement vertex 5\nproperty float x\nproperty float y\nproperty float z\n"
            "element face 2\nproperty list uchar int vertex_indices\nproperty uchar flag\nend_header\n").format(fmt=fmt)
    v = np.arange(15, dtype=np.float32).reshape(5, 3)
    if fmt == "ascii":
        body = "\n".join(" ".join(map(str, r)) for r in v.tolist()) + "\n4 0 1 2 3 7\n3 1 2 4 9\n"
        data = head.encode() + body.encode()
    else:
        data = head.encode() + v.astype("<f4").tobytes()
        data += np.array([4], "u1").tobytes() + np.array([0, 1, 2, 3], "<i4").tobytes() + b"\x07"
        data += np.array([3], "u1").tobytes() + np.array([1, 2, 4], "<i4").tobytes() + b"\x09"
    (tmp_path / "p.ply").write_bytes(data)
    m = read_mesh_ply(tmp_path / "p.ply")
    np.testing.assert_array_equal(m.faces, [[0, 1, 2], [0, 2, 3], [1, 2, 4]])


def test_malformed_files_raise_value_error_naming_file(tmp_path):
    bad = tmp_path / "bad.ply"
    bad.write_bytes(b"PLY\n")
    with pytest.raises(ValueError, match="bad.ply"):
        read_point_cloud(bad)
    bad.write_bytes(b"ply\nformat binary_little_endian 1.0\nelement vertex 3\nproperty float x\n")
    with pytest.raises(ValueError, match="end_header"):
        read_point_cloud(bad)
    bad.write_bytes(b"ply\nformat binary_middle_endian 1.0\nend_header\n")
    with pytest.raises(ValueError, match="format"):
        read_point_cloud(bad)
    bad.write_bytes(b"ply\nformat ascii 1.0\nelement vertex 1\nproperty float128 x\nend_header\n1\n")
    with pytest.raises(ValueError, match="bad.ply"):
        read_point_cloud(bad)
    write_point_cloud(bad, _cloud(10))
    bad.write_bytes(bad.read_bytes()[:-5])
    with pytest.raises(ValueError, match="truncated"):
        read_point_cloud(bad)
    bad.write_bytes(b"ply\nformat ascii 1.0\nelement vertex 2\nproperty float x\nproperty float y\nend_header\n1 2\n3 4\n")
    with pytest.raises(ValueError, match="x y z"):
        read_point_cloud(bad)
    m = _mesh()
    write_mesh_ply(bad, m)
    bad.write_bytes(bad.read_bytes()[:-3])
    with pytest.raises(ValueError, match="truncated"):
        read_mesh_ply(bad)
    with pytest.raises(FileNotFoundError):
        read_point_cloud(tmp_path / "missing.ply")


def test_failed_write_leaves_nothing(tmp_path, monkeypatch):
    target = tmp_path / "x.ply"

    orig = ply_mod._vertex_struct

    def half(*a, **k):
        arr, header = orig(*a, **k)
        return _Exploding(arr), header

    class _Exploding:
        def __init__(self, arr):
            self.arr = arr

        def tobytes(self):
            raise RuntimeError("disk full")

    monkeypatch.setattr(ply_mod, "_vertex_struct", half)
    with pytest.raises(RuntimeError, match="disk full"):
        write_point_cloud(target, _cloud(5))
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(TypeError):
        write_point_cloud(target, np.zeros((3, 3)))
    assert list(tmp_path.iterdir()) == []
