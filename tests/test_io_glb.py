"""glTF binary writer, the minimal reader, and third-party readers (pygltflib, open3d)."""

import json
import struct

import numpy as np
import pytest

from forward3d.io import glb as glb_mod
from forward3d.io.export import read_mesh, write_mesh
from forward3d.io.glb import read_glb, write_glb, write_glb_points
from forward3d.types import Mesh, PointCloud


def _mesh(colors=True, normals=True, seed=0):
    rng = np.random.default_rng(seed)
    return Mesh(
        rng.standard_normal((13, 3)),
        rng.integers(0, 13, (20, 3)),
        rng.integers(0, 256, (13, 3), dtype=np.uint8) if colors else None,
        rng.standard_normal((13, 3)).astype(np.float32) if normals else None,
    )


def _chunks(path):
    data = path.read_bytes()
    magic, version, length = struct.unpack_from("<III", data, 0)
    assert (magic, version, length) == (0x46546C67, 2, len(data))
    jlen, jtype = struct.unpack_from("<II", data, 12)
    assert jtype == 0x4E4F534A and jlen % 4 == 0
    gltf = json.loads(data[20:20 + jlen])
    rest = data[20 + jlen:]
    if not rest:
        return gltf, b""
    blen, btype = struct.unpack_from("<II", rest, 0)
    assert btype == 0x004E4942 and blen % 4 == 0 and len(rest) == 8 + blen
    return gltf, rest[8:]


@pytest.mark.parametrize("colors,normals", [(True, True), (False, False)])
def test_glb_roundtrip_and_structure(tmp_path, colors, normals):
    m = _mesh(colors, normals)
    write_glb(tmp_path / "m.glb", m)
    back = read_glb(tmp_path / "m.glb")
    np.testing.assert_array_equal(back.vertices, m.vertices)
    np.testing.assert_array_equal(back.faces, m.faces)
    if colors:
        np.testing.assert_array_equal(back.vertex_colors, m.vertex_colors)
    if normals:
        np.testing.assert_array_equal(back.vertex_normals, m.vertex_normals)
    gltf, binary = _chunks(tmp_path / "m.glb")
    assert gltf["asset"]["version"] == "2.0"
    prim = gltf["meshes"][0]["primitives"][0]
    assert prim["mode"] == 4
    pos = gltf["accessors"][prim["attributes"]["POSITION"]]
    assert pos["componentType"] == 5126 and pos["type"] == "VEC3" and pos["count"] == 13
    raw = read_glb(tmp_path / "m.glb", from_gltf_axes=False).vertices
    np.testing.assert_allclose(pos["min"], raw.min(0), rtol=1e-6)
    np.testing.assert_allclose(pos["max"], raw.max(0), rtol=1e-6)
    idx = gltf["accessors"][prim["indices"]]
    assert idx["componentType"] == 5125 and idx["type"] == "SCALAR" and idx["count"] == 60
    assert ("COLOR_0" in prim["attributes"]) == colors and ("NORMAL" in prim["attributes"]) == normals
    if colors:
        col = gltf["accessors"][prim["attributes"]["COLOR_0"]]
        assert col["componentType"] == 5121 and col["normalized"] and col["type"] == "VEC3"
        assert gltf["bufferViews"][col["bufferView"]]["byteStride"] == 4
    for v in gltf["bufferViews"]:
        assert v["byteOffset"] % 4 == 0
    assert gltf["buffers"][0]["byteLength"] == len(binary)


def test_glb_axes_conversion(tmp_path):
    m = Mesh(np.array([[1.0, 2.0, 3.0], [0, 0, 1], [1, 0, 1]]), [[0, 1, 2]], vertex_normals=np.array([[0, 0, -1.0]] * 3))
    write_glb(tmp_path / "a.glb", m)  # OpenCV (x, y, z) -> glTF (x, -y, -z)
    raw = read_glb(tmp_path / "a.glb", from_gltf_axes=False)
    np.testing.assert_array_equal(raw.vertices[0], [1, -2, -3])
    np.testing.assert_array_equal(raw.vertex_normals[0], [0, 0, 1])
    write_glb(tmp_path / "b.glb", m, to_gltf_axes=False)
    np.testing.assert_array_equal(read_glb(tmp_path / "b.glb", from_gltf_axes=False).vertices, m.vertices)


def test_glb_points_and_empty(tmp_path):
    rng = np.random.default_rng(3)
    pc = PointCloud(rng.standard_normal((9, 3)), rng.integers(0, 256, (9, 3), dtype=np.uint8))
    write_glb_points(tmp_path / "p.glb", pc)
    gltf, _ = _chunks(tmp_path / "p.glb")
    assert gltf["meshes"][0]["primitives"][0]["mode"] == 0
    back = read_glb(tmp_path / "p.glb")
    np.testing.assert_array_equal(back.vertices, pc.points)
    np.testing.assert_array_equal(back.vertex_colors, pc.colors)
    assert len(back.faces) == 0
    write_glb(tmp_path / "e.glb", Mesh(np.zeros((0, 3)), np.zeros((0, 3))))
    gltf, binary = _chunks(tmp_path / "e.glb")
    assert binary == b"" and "meshes" not in gltf
    assert len(read_glb(tmp_path / "e.glb").vertices) == 0


def test_pygltflib_validates(tmp_path):
    pygltflib = pytest.importorskip("pygltflib")
    m = _mesh()
    write_glb(tmp_path / "m.glb", m)
    g = pygltflib.GLTF2().load(str(tmp_path / "m.glb"))
    assert g.asset.version == "2.0"
    prim = g.meshes[0].primitives[0]
    acc = g.accessors[prim.attributes.POSITION]
    view = g.bufferViews[acc.bufferView]
    blob = g.binary_blob()
    pos = np.frombuffer(blob, "<f4", acc.count * 3, view.byteOffset + (acc.byteOffset or 0)).reshape(-1, 3)
    np.testing.assert_array_equal(pos, m.vertices * np.array([1, -1, -1], np.float32))


def test_open3d_reads_glb(tmp_path):
    o3d = pytest.importorskip("open3d")
    m = _mesh(normals=False)
    write_glb(tmp_path / "m.glb", m)
    om = o3d.io.read_triangle_mesh(str(tmp_path / "m.glb"))
    assert len(om.triangles) == len(m.faces)
    # open3d may reorder vertices: compare the triangles as sets of coordinates, and (vertex, colour) rows
    V, T = np.asarray(om.vertices), np.asarray(om.triangles)
    flipped = m.vertices.astype(np.float64) * [1, -1, -1]
    rows = lambda a: np.unique(np.round(a, 5), axis=0)  # noqa: E731
    np.testing.assert_allclose(rows(V[T].reshape(-1, 9)), rows(flipped[m.faces].reshape(-1, 9)), atol=1e-5)
    used = np.unique(m.faces)
    got = rows(np.concatenate([V, np.asarray(om.vertex_colors) * 255], 1))
    exp = rows(np.concatenate([flipped[used], m.vertex_colors[used]], 1))
    np.testing.assert_allclose(got, exp, atol=1e-3)


def test_write_and_read_mesh_by_suffix(tmp_path):
    m = _mesh()
    for suffix in (".ply", ".glb", ".obj"):
        write_mesh(tmp_path / f"m{suffix}", m)
        back = read_mesh(tmp_path / f"m{suffix}")
        np.testing.assert_allclose(back.vertices, m.vertices, atol=1e-6)
        np.testing.assert_array_equal(back.faces, m.faces)
        np.testing.assert_array_equal(back.vertex_colors, m.vertex_colors)
        np.testing.assert_allclose(back.vertex_normals, m.vertex_normals, atol=1e-6)
    with pytest.raises(ValueError, match="suffix"):
        write_mesh(tmp_path / "m.stl", m)
    with pytest.raises(ValueError, match="suffix"):
        read_mesh(tmp_path / "m.stl")


def test_glb_errors_and_failed_write(tmp_path, monkeypatch):
    bad = tmp_path / "bad.glb"
    bad.write_bytes(b"glTF" + struct.pack("<II", 1, 20) + b"\0" * 8)
    with pytest.raises(ValueError, match="bad.glb"):
        read_glb(bad)
    write_glb(bad, _mesh())
    bad.write_bytes(bad.read_bytes()[:-8])
    with pytest.raises(ValueError, match="bad.glb"):
        read_glb(bad)
    bad.unlink()
    with pytest.raises(ValueError, match="finite"):
        write_glb(tmp_path / "n.glb", Mesh(np.full((3, 3), np.nan), [[0, 1, 2]]))

    class HalfStruct:  # the header goes out, then the writer fails
        calls = 0

        @classmethod
        def pack(cls, *a):
            cls.calls += 1
            if cls.calls > 1:
                raise OSError("disk full")
            return struct.pack(*a)

    monkeypatch.setattr(glb_mod, "struct", HalfStruct)
    with pytest.raises(OSError, match="disk full"):
        write_glb(tmp_path / "x.glb", _mesh())
    assert list(tmp_path.iterdir()) == []
