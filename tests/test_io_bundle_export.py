"""Reconstruction bundle (npz + json), export_reconstruction, and atomicity of every writer."""

import json

import numpy as np
import pytest

from forward3d.io import atomic as atomic_mod
from forward3d.io import bundle as bundle_mod
from forward3d.io.bundle import load_reconstruction, save_reconstruction
from forward3d.io.colmap import read_colmap_text, write_colmap_text
from forward3d.io.export import export_reconstruction, write_obj
from forward3d.io.glb import write_glb, write_glb_points
from forward3d.io.nerfstudio import read_transforms_json, write_transforms_json
from forward3d.io.ply import read_mesh_ply, read_point_cloud, write_mesh_ply, write_point_cloud
from forward3d.io.trajectory import quat_wxyz_to_rotmat, read_tum, write_redwood_log, write_tum
from forward3d.types import Mesh, PointCloud, Reconstruction


def _full(n=3, seed=0):
    rng = np.random.default_rng(seed)
    c2w = np.tile(np.eye(4), (n, 1, 1))
    c2w[:, :3, :3] = quat_wxyz_to_rotmat(rng.standard_normal((n, 4)))
    c2w[:, :3, 3] = rng.standard_normal((n, 3))
    K = np.tile(np.array([[60.0, 0, 32], [0, 60, 24], [0, 0, 1]]), (n, 1, 1))
    pm = rng.standard_normal((n, 6, 8, 3)).astype(np.float32)
    pm[0, 0, 0] = 0.0  # invalid point
    return Reconstruction(
        c2w=c2w, K=K, image_size=(64, 48), frame_names=[f"img{i}" for i in range(n)],
        timestamps=np.array([0.0, 0.5, 1.25])[:n], point_maps=pm,
        confidences=rng.uniform(1, 5, (n, 6, 8)).astype(np.float32),
        point_map_colors=rng.integers(0, 256, (n, 6, 8, 3), dtype=np.uint8),
        points=PointCloud(rng.standard_normal((20, 3)), rng.integers(0, 256, (20, 3), dtype=np.uint8),
                          rng.standard_normal((20, 3))),
        mesh=Mesh(rng.standard_normal((6, 3)), [[0, 1, 2], [3, 4, 5]], rng.integers(0, 256, (6, 3), dtype=np.uint8)),
        metadata={"backend": "oracle", "scale": 1.5, "nested": {"a": [1, 2]}, "np": np.float32(2.5)},
    )


def _assert_same(a: Reconstruction, b: Reconstruction):
    for name in ("c2w", "K", "timestamps", "point_maps", "confidences", "point_map_colors"):
        x, y = getattr(a, name), getattr(b, name)
        assert (x is None) == (y is None), name
        if x is not None:
            assert x.dtype == y.dtype and np.array_equal(x, y), name
    assert a.image_size == b.image_size and a.frame_names == b.frame_names
    for obj, attrs in (("points", ("points", "colors", "normals")), ("mesh", ("vertices", "faces", "vertex_colors", "vertex_normals"))):
        x, y = getattr(a, obj), getattr(b, obj)
        assert (x is None) == (y is None), obj
        if x is not None:
            for attr in attrs:
                u, v = getattr(x, attr), getattr(y, attr)
                assert (u is None) == (v is None) and (u is None or (u.dtype == v.dtype and np.array_equal(u, v))), attr


@pytest.mark.parametrize("compress", [False, True])
def test_bundle_roundtrip_full(tmp_path, compress):
    r = _full()
    npz = save_reconstruction(tmp_path / "out", r, compress=compress)
    assert npz == tmp_path / "out" / "reconstruction.npz" and (tmp_path / "out" / "reconstruction.json").is_file()
    back = load_reconstruction(tmp_path / "out")
    _assert_same(r, back)
    assert back.metadata == {"backend": "oracle", "scale": 1.5, "nested": {"a": [1, 2]}, "np": 2.5}
    header = json.loads((tmp_path / "out" / "reconstruction.json").read_text())
    assert header["arrays"]["point_maps"] == {"shape": [3, 6, 8, 3], "dtype": "<f4"}
    with np.load(npz, allow_pickle=False) as z:
        assert "mesh_vertex_normals" not in z.files and "points" in z.files


def test_bundle_roundtrip_minimal_none_fields(tmp_path):
    r = Reconstruction(np.eye(4)[None], np.eye(3)[None], (10, 8))
    save_reconstruction(tmp_path / "r.npz", r)
    back = load_reconstruction(tmp_path / "r.npz")
    _assert_same(r, back)
    assert back.points is None and back.mesh is None and back.point_maps is None and back.metadata == {}
    r2 = Reconstruction(np.eye(4)[None], np.eye(3)[None], (10, 8), points=PointCloud(np.zeros((0, 3))))
    save_reconstruction(tmp_path / "e.npz", r2)
    assert len(load_reconstruction(tmp_path / "e.npz").points) == 0


def test_bundle_errors_and_atomicity(tmp_path, monkeypatch):
    r = _full()
    r.metadata["bad"] = object()
    with pytest.raises(ValueError, match="metadata.bad"):
        save_reconstruction(tmp_path, r)
    assert list(tmp_path.iterdir()) == []
    r.metadata.pop("bad")

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(bundle_mod.Path, "write_text", boom)  # npz already written to its temp file
    with pytest.raises(OSError, match="disk full"):
        save_reconstruction(tmp_path, r)
    assert list(tmp_path.iterdir()) == []
    monkeypatch.undo()
    save_reconstruction(tmp_path, r)
    (tmp_path / "reconstruction.json").write_text('{"format": "other", "version": 1}')
    with pytest.raises(ValueError, match="expected format"):
        load_reconstruction(tmp_path)
    (tmp_path / "reconstruction.json").unlink()
    with pytest.raises(FileNotFoundError, match="reconstruction.json"):
        load_reconstruction(tmp_path)


def test_export_reconstruction_writes_standard_set(tmp_path):
    r = _full()
    out = export_reconstruction(r, tmp_path / "exp")
    assert set(out) == {"ply", "mesh", "glb", "tum", "colmap", "nerfstudio", "bundle"}
    names = sorted(p.name for p in (tmp_path / "exp").iterdir())
    assert names == ["colmap", "mesh.glb", "mesh.ply", "point_cloud.ply", "reconstruction.json",
                     "reconstruction.npz", "trajectory_tum.txt", "transforms.json"]
    np.testing.assert_array_equal(read_point_cloud(out["ply"]).points, r.points.points)
    np.testing.assert_array_equal(read_mesh_ply(out["mesh"]).faces, r.mesh.faces)
    ts, c2w = read_tum(out["tum"])
    np.testing.assert_allclose(ts, r.timestamps, atol=1e-6)
    np.testing.assert_allclose(c2w, r.c2w, atol=1e-8)
    cs = read_colmap_text(out["colmap"])
    np.testing.assert_allclose(cs.c2w, r.c2w, atol=1e-12)
    assert cs.names == ["img0.png", "img1.png", "img2.png"]  # consistent with nerfstudio images/<name>.png
    ns = read_transforms_json(out["nerfstudio"])
    np.testing.assert_allclose(ns.c2w, r.c2w, atol=1e-12)
    assert ns.extras["ply_file_path"] == "point_cloud.ply"
    _assert_same(r, load_reconstruction(out["bundle"]))


def test_export_point_map_fallback_no_mesh_and_errors(tmp_path):
    r = _full()
    r.points, r.mesh = None, None
    out = export_reconstruction(r, tmp_path, formats=("ply", "mesh", "colmap"),
                                image_paths=[f"/data/rgb/{i}.jpg" for i in range(3)])
    assert set(out) == {"ply", "colmap"}
    pc = read_point_cloud(out["ply"])
    assert len(pc) == 3 * 6 * 8 - 1  # the zero point is dropped
    assert read_colmap_text(out["colmap"]).names == ["0.jpg", "1.jpg", "2.jpg"]
    with pytest.raises(ValueError, match="unknown formats"):
        export_reconstruction(r, tmp_path, formats=("ply", "usd"))


_WRITERS = {
    "ply": lambda p: write_point_cloud(p / "a.ply", PointCloud(np.ones((4, 3)))),
    "mesh_ply": lambda p: write_mesh_ply(p / "a.ply", _full().mesh),
    "glb": lambda p: write_glb(p / "a.glb", _full().mesh),
    "glb_points": lambda p: write_glb_points(p / "a.glb", PointCloud(np.ones((4, 3)))),
    "obj": lambda p: write_obj(p / "a.obj", _full().mesh),
    "tum": lambda p: write_tum(p / "t.txt", [0.0], np.eye(4)[None]),
    "redwood": lambda p: write_redwood_log(p / "t.log", np.eye(4)[None]),
    "colmap": lambda p: write_colmap_text(p / "colmap", _full()),
    "nerfstudio": lambda p: write_transforms_json(p / "t.json", _full()),
    "bundle": lambda p: save_reconstruction(p, _full()),
    "export": lambda p: export_reconstruction(_full(), p),
}


@pytest.mark.parametrize("name", sorted(_WRITERS))
def test_every_writer_is_atomic(tmp_path, monkeypatch, name):
    """If the final rename fails, a writer that goes through atomic_path leaves no file, no temp file."""
    def refuse(src, dst):
        raise OSError("rename refused")

    monkeypatch.setattr(atomic_mod.os, "replace", refuse)
    with pytest.raises(OSError, match="rename refused"):
        _WRITERS[name](tmp_path)
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []
    monkeypatch.undo()
    _WRITERS[name](tmp_path)  # and with a working rename the outputs appear
    assert [p for p in tmp_path.rglob("*") if p.is_file()]
