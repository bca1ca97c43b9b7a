"""The viewer without a browser: OpenCV -> viser conventions, the scene model, the loaders."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from forward3d.data.synthetic import SyntheticScene
from forward3d.io.export import export_reconstruction, write_obj
from forward3d.io.gaussians import write_gaussians_ply, write_splat
from forward3d.io.glb import glb_bytes, read_glb, write_glb, write_glb_points
from forward3d.io.ply import ply_kind, write_mesh_ply, write_point_cloud
from forward3d.io.trajectory import write_tum
from forward3d.types import Gaussians, Mesh, PointCloud, Reconstruction
from forward3d.viz.conventions import (
    c2w_to_viser_pose,
    frustum_fov_aspect,
    gaussians_to_viser,
    initial_view,
    viser_pose_to_c2w,
    world_up,
)
from forward3d.viz.load import attach_ground_truth, load_scene
from forward3d.viz.scene import SceneModel


def _random_c2w(rng: np.random.Generator, n: int) -> np.ndarray:
    q = rng.normal(size=(n, 4))
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    from forward3d.geometry.quaternion import quat_to_rotmat

    c2w = np.tile(np.eye(4), (n, 1, 1))
    c2w[:, :3, :3] = quat_to_rotmat(q)
    c2w[:, :3, 3] = rng.normal(size=(n, 3))
    return c2w


def small_recon(n: int = 6, w: int = 32, h: int = 24, mesh: bool = False, seed: int = 0) -> Reconstruction:
    """A reconstruction of the synthetic room with exact point maps (an oracle back-end)."""
    sc = SyntheticScene(num_frames=n, width=w, height=h, seed=seed)
    frames = [sc.frame(i) for i in range(n)]
    pm = np.stack([sc.point_map(i) for i in range(n)])
    conf = np.random.default_rng(seed).uniform(1.0, 5.0, pm.shape[:3]).astype(np.float32)
    return Reconstruction(c2w=np.stack([f.c2w for f in frames]), K=np.stack([f.K for f in frames]), image_size=(w, h),
                          point_maps=pm, confidences=conf, point_map_colors=np.stack([f.image for f in frames]),
                          timestamps=np.array([f.timestamp for f in frames]),
                          mesh=sc.mesh(0.5) if mesh else None, metadata={"backend": "oracle", "config": {"a": 1}})


# --------------------------------------------------------------------------------------------------
# conventions
# --------------------------------------------------------------------------------------------------


def test_c2w_to_viser_pose_matches_viser_transforms_and_round_trips():
    import viser.transforms as vtf

    c2w = _random_c2w(np.random.default_rng(1), 20)
    wxyz, pos = c2w_to_viser_pose(c2w)
    assert wxyz.shape == (20, 4) and pos.shape == (20, 3)
    for i in range(20):
        ref = vtf.SO3.from_matrix(c2w[i, :3, :3]).wxyz
        assert np.allclose(wxyz[i], ref, atol=1e-9) or np.allclose(wxyz[i], -ref, atol=1e-9)
        # viser's frame of a node maps local -> parent exactly as c2w maps camera -> world
        T = vtf.SE3.from_rotation_and_translation(vtf.SO3(wxyz[i]), pos[i]).as_matrix()
        assert np.allclose(T, c2w[i], atol=1e-9)
    assert np.allclose(viser_pose_to_c2w(wxyz, pos), c2w, atol=1e-9)


def test_c2w_to_viser_pose_camera_looks_along_plus_z():
    """A viser frustum is drawn along its local +z (OpenCV): the camera's viewing direction."""
    c2w = np.eye(4)
    c2w[:3, :3] = np.array([[0, 0, 1], [1, 0, 0], [0, 1, 0]], float)  # camera z -> world x
    wxyz, _ = c2w_to_viser_pose(c2w)
    from forward3d.geometry.quaternion import quat_to_rotmat

    assert np.allclose(quat_to_rotmat(wxyz) @ [0, 0, 1], [1, 0, 0], atol=1e-12)


def test_c2w_to_viser_pose_sim3_is_projected_to_rotation():
    c2w = _random_c2w(np.random.default_rng(2), 1)[0]
    scaled = c2w.copy()
    scaled[:3, :3] *= 2.5
    wxyz, pos = c2w_to_viser_pose(scaled)
    assert np.allclose(viser_pose_to_c2w(wxyz, pos), c2w, atol=1e-9)


@pytest.mark.parametrize("bad", [np.eye(3), np.full((4, 4), np.nan)])
def test_c2w_to_viser_pose_bad_input(bad):
    with pytest.raises(ValueError, match="c2w_to_viser_pose"):
        c2w_to_viser_pose(bad)


def test_frustum_fov_aspect_analytic():
    K = np.array([[100.0, 0, 160], [0, 120.0, 120], [0, 0, 1]])  # fy = H / 2 -> 90 degrees vertical
    fov, aspect = frustum_fov_aspect(K, (320, 240))
    assert fov == pytest.approx(math.pi / 2)
    assert aspect == pytest.approx(320 / 240)
    with pytest.raises(ValueError, match="positive image size"):
        frustum_fov_aspect(K, (0, 240))
    with pytest.raises(ValueError, match=r"\[3, 3\]"):
        frustum_fov_aspect(np.eye(4), (320, 240))


@pytest.mark.parametrize("n, trajectory", [(8, "orbit"), (30, "handheld"), (60, "walk")])
def test_world_up_of_roll_free_cameras(n, trajectory):
    sc = SyntheticScene(num_frames=n, width=16, height=12, trajectory=trajectory)  # world +y up, cameras pitched
    assert world_up(sc.c2w) @ np.array([0, 1, 0]) > 0.999


def test_world_up_fallbacks():
    c2w = np.eye(4)
    c2w[:3, :3] = [[1, 0, 0], [0, 0.8, -0.6], [0, 0.6, 0.8]]  # one camera pitched: minus its y axis
    assert np.allclose(world_up(c2w[None]), [0, -0.8, -0.6])
    assert np.allclose(world_up(np.zeros((0, 4, 4))), [0, -1, 0])  # no cameras: OpenCV's own up


def test_initial_view_sees_the_scene():
    rng = np.random.default_rng(0)
    pts = rng.uniform(-1, 1, (1000, 3)) + [5, 0, 0]
    c2w = np.eye(4)[None]
    pos, look, up = initial_view(c2w, pts)
    assert np.allclose(look, [5, 0, 0], atol=0.1)
    assert np.linalg.norm(pos - look) > 1.0  # outside the content
    assert np.allclose(up, [0, -1, 0])
    assert (pos - look) @ up > 0  # from above
    pos2, look2, _ = initial_view(np.zeros((0, 4, 4)), pts)  # no cameras (a Gaussian or mesh file)
    assert np.allclose(look2, [5, 0, 0], atol=0.1) and np.linalg.norm(pos2 - look2) > 1.0


def test_sample_points_and_bounds_fall_back_through_the_content():
    s = SceneModel()
    assert len(s.sample_points()) == 0 and s.bounds()[1] == 1.0
    g = Gaussians.from_activated(torch.randn(100, 3) + 7, torch.randn(100, 4), torch.rand(100, 3),
                                 torch.rand(100), colors=torch.rand(100, 3))
    s.set_geometry(gaussians=g)
    centre, radius = s.bounds()
    assert np.allclose(centre, 7, atol=1.0) and 0.5 < radius < 10
    s.set_geometry(mesh=Mesh(np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0]]) - 3.0, np.array([[0, 1, 2]])))
    assert np.allclose(s.sample_points().mean(0), [-2.667, -2.667, -3.0], atol=1e-3)  # the mesh before Gaussians


def test_gaussians_to_viser_analytic():
    g = Gaussians.from_activated(
        means=torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]]),
        quats=torch.tensor([[1.0, 0, 0, 0], [math.cos(math.pi / 4), 0, 0, math.sin(math.pi / 4)]]),
        scales=torch.tensor([[1.0, 2.0, 3.0], [1.0, 2.0, 3.0]]),
        opacities=torch.tensor([0.25, 0.9]),
        colors=torch.tensor([[0.2, 0.4, 0.6], [1.5, -0.2, 0.5]]))
    centers, cov, rgbs, opac = gaussians_to_viser(g)
    assert centers.shape == (2, 3) and cov.shape == (2, 3, 3) and rgbs.shape == (2, 3) and opac.shape == (2, 1)
    assert np.allclose(cov[0], np.diag([1.0, 4.0, 9.0]), atol=1e-5)
    assert np.allclose(cov[1], np.diag([4.0, 1.0, 9.0]), atol=1e-5)  # 90 degrees about z swaps x and y
    assert np.allclose(rgbs[0], [0.2, 0.4, 0.6], atol=1e-5) and rgbs.min() >= 0 and rgbs.max() <= 1
    assert np.allclose(opac[:, 0], [0.25, 0.9], atol=1e-5)
    with pytest.raises(TypeError):
        gaussians_to_viser("not gaussians")


# --------------------------------------------------------------------------------------------------
# scene model
# --------------------------------------------------------------------------------------------------


def test_add_frame_flattens_and_drops_invalid_points():
    s = SceneModel()
    pts = np.ones((4, 5, 3), np.float32)
    pts[0, 0] = 0.0  # "no point"
    pts[1, 1] = np.nan
    conf = np.arange(20, dtype=np.float32).reshape(4, 5)
    cols = np.full((4, 5, 3), 7, np.uint8)
    fv = s.add_frame(3, "f3", np.eye(4), np.eye(3) * [[10], [10], [1]], (5, 4), points=pts, colors=cols, confidence=conf)
    assert fv.points.shape == (18, 3) and fv.colors.shape == (18, 3) and fv.confidence.shape == (18,)
    assert 0.0 not in fv.confidence and 6.0 not in fv.confidence
    assert len(s) == 1 and s.summary()["frame_points"] == 18


@pytest.mark.parametrize("kwargs, match", [
    (dict(c2w=np.eye(3)), "c2w"),
    (dict(K=np.eye(4)), "K"),
    (dict(image_size=(0, 4)), "image size"),
    (dict(points=np.zeros((4, 2))), "points"),
    (dict(points=np.ones((4, 3)), colors=np.zeros((3, 3), np.uint8)), "colours"),
    (dict(points=np.ones((4, 3)), confidence=np.zeros(5)), "confidences"),
    (dict(colors=np.zeros((3, 3), np.uint8)), "without points"),
    (dict(image=np.zeros((4, 4), np.uint8)), "image"),
])
def test_add_frame_bad_input(kwargs, match):
    args = dict(c2w=np.eye(4), K=np.eye(3), image_size=(4, 4))
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        SceneModel().add_frame(0, "x", args.pop("c2w"), args.pop("K"), args.pop("image_size"), **args)


def _scene_with_points(n_frames=4, per_frame=10_000, seed=0) -> SceneModel:
    rng = np.random.default_rng(seed)
    s = SceneModel()
    for i in range(n_frames):
        s.add_frame(i, f"{i}", np.eye(4), np.eye(3), (4, 4), points=rng.normal(size=(per_frame, 3)) + 10,
                    colors=rng.integers(0, 255, (per_frame, 3), dtype=np.uint8),
                    confidence=rng.uniform(0, 1, per_frame))
    return s


def test_select_counts_upto_only_current_confidence():
    s = _scene_with_points()
    assert s.select("frames").total == 40_000 and s.select("frames").shown == 40_000
    assert s.select("frames", upto=1).shown == 20_000
    assert s.select("frames", upto=2, only_current=True).shown == 10_000
    exact = sum(int((f.confidence >= 0.7).sum()) for f in s.frames[:3])
    sel = s.select("frames", upto=2, min_confidence=0.7)
    assert sel.eligible == exact == sel.shown and sel.total == 30_000
    assert sel.colors is not None and len(sel.colors) == sel.shown
    assert s.select("cloud").shown == 0  # no fused cloud
    with pytest.raises(ValueError, match="source"):
        s.select("nope")
    with pytest.raises(ValueError, match="budget"):
        s.select("frames", budget=-1)


def test_select_budget_is_a_fixed_nested_random_subset():
    s = _scene_with_points(per_frame=50_000)
    small = s.select("frames", budget=20_000)
    big = s.select("frames", budget=60_000)
    assert abs(small.shown - 20_000) < 5 * math.sqrt(20_000)  # binomial around the budget
    assert abs(big.shown - 60_000) < 5 * math.sqrt(60_000)
    assert small.eligible == big.eligible == 200_000
    # the same subset every time, and the small one inside the big one
    again = s.select("frames", budget=20_000)
    assert np.array_equal(small.points, again.points)
    big_set = {tuple(p) for p in big.points.tolist()}
    assert all(tuple(p) in big_set for p in small.points.tolist())
    # unbiased over frames: each frame contributes about a quarter
    per = [s.select("frames", upto=i, only_current=True, budget=5_000).shown for i in range(4)]
    assert max(per) - min(per) < 5 * math.sqrt(5_000)


def test_fused_cloud_with_confidence():
    s = SceneModel()
    rng = np.random.default_rng(0)
    s.set_geometry(cloud=PointCloud(rng.normal(size=(1000, 3)).astype(np.float32)),
                   cloud_confidence=np.linspace(0, 1, 1000))
    sel = s.select("cloud", min_confidence=0.5)
    assert sel.eligible == 500 and sel.colors is None
    assert s.has_confidence and s.confidence_range() is not None
    with pytest.raises(ValueError, match="without cloud"):
        s.set_geometry(cloud_confidence=np.ones(3))
    with pytest.raises(TypeError, match="PointCloud"):
        s.set_geometry(cloud=np.zeros((3, 3)))


def test_frustum_positions_every_kth_last_and_failures():
    s = SceneModel()
    for i in range(25):
        s.add_frame(i, str(i), np.eye(4), np.eye(3), (4, 4), tracking_ok=i != 7)
    assert s.frustum_positions(100) == list(range(25))
    pos = s.frustum_positions(5)  # k = 5
    assert pos == [0, 5, 7, 10, 15, 20, 24]
    assert s.frustum_positions(5, upto=12) == [0, 5, 7, 10, 12]
    assert s.frustum_positions(0) == []


def test_listeners_hear_frames_geometry_info():
    s = SceneModel()
    events = []
    unsub = s.subscribe(lambda e, p: events.append(e))
    s.add_frame(0, "a", np.eye(4), np.eye(3), (4, 4))
    s.set_geometry(mesh=Mesh(np.zeros((3, 3)), np.array([[0, 1, 2]])))
    s.set_info(metrics={"ate": 0.1})
    s.set_tracking(0, False)
    s.subscribe(lambda e, p: 1 / 0)  # a broken listener does not break the producer
    s.add_frame(1, "b", np.eye(4), np.eye(3), (4, 4))
    unsub()
    s.add_frame(2, "c", np.eye(4), np.eye(3), (4, 4))
    assert events == ["frame", "geometry", "info", "frame_updated", "frame"]
    assert not s.frames[0].tracking_ok and s.summary()["tracking_failures"] == 1


def test_from_reconstruction():
    recon = small_recon(n=5, mesh=True)
    recon.metadata["tracking_failures"] = [{"index": 2, "name": "000002", "reason": "icp"}, 9]
    s = SceneModel.from_reconstruction(recon, title="t")
    assert len(s) == 5 and s.mesh is recon.mesh and s.cloud is None
    assert [f.tracking_ok for f in s.frames] == [True, True, False, True, True]
    valid = int((np.abs(recon.point_maps).sum(-1) > 0).sum())
    assert s.summary()["frame_points"] == valid
    assert s.settings["backend"] == "oracle"
    assert np.allclose(s.timestamps(), recon.timestamps)
    thumb = s.thumbnail(0, max_side=16)  # point-map colours double as the thumbnail
    assert thumb.shape == (12, 16, 3) and thumb.dtype == np.uint8
    with pytest.raises(ValueError, match="images"):
        SceneModel.from_reconstruction(recon, images=[None])
    with pytest.raises(TypeError):
        SceneModel.from_reconstruction("recon")


def test_thumbnail_from_path_and_unreadable_path(tmp_path):
    from PIL import Image

    img = np.zeros((300, 400, 3), np.uint8)
    img[:, :200] = 255
    Image.fromarray(img).save(tmp_path / "a.png")
    (tmp_path / "bad.png").write_bytes(b"not a png")
    s = SceneModel()
    s.add_frame(0, "a", np.eye(4), np.eye(3), (400, 300), image_path=str(tmp_path / "a.png"))
    s.add_frame(1, "b", np.eye(4), np.eye(3), (400, 300), image_path=str(tmp_path / "bad.png"))
    t = s.thumbnail(0, max_side=100)
    assert t.shape == (75, 100, 3) and t[:, :40].mean() > 250 and t[:, 60:].mean() < 5
    assert s.thumbnail(1) is None  # logged, not raised


# --------------------------------------------------------------------------------------------------
# loaders
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def recon_folder(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("recon")
    recon = small_recon(n=6, mesh=True)
    export_reconstruction(recon, out)
    (out / "metrics.json").write_text('{"ate_se3": {"rmse": 0.012}, "num_frames": 6}')
    return out


def test_load_recon_folder(recon_folder):
    s = load_scene(recon_folder)
    assert len(s) == 6 and s.has_frame_points and s.mesh is not None
    assert s.metrics["ate_se3"]["rmse"] == 0.012
    assert set(s.downloads) >= {"point cloud (PLY)", "mesh (GLB)"}
    s2 = load_scene(recon_folder / "reconstruction.npz")
    s3 = load_scene(recon_folder / "reconstruction.json")
    assert s2.summary() == s.summary() == s3.summary()


def test_load_colmap_and_nerfstudio(recon_folder, tmp_path):
    for p in (recon_folder / "colmap", recon_folder / "transforms.json"):
        s = load_scene(p)
        assert len(s) == 6 and s.cloud is not None and len(s.cloud) > 0
        ref = small_recon(n=6)
        assert np.allclose(s.c2w(), ref.c2w, atol=1e-5)
        assert np.allclose(s.frames[0].K, ref.K[0], atol=1e-6)
    # a folder with only the COLMAP model below it, and the nerfstudio images as thumbnails
    (tmp_path / "colmap").mkdir()
    for f in (recon_folder / "colmap").iterdir():
        (tmp_path / "colmap" / f.name).write_bytes(f.read_bytes())
    assert len(load_scene(tmp_path)) == 6


def test_load_colmap_binary_model_with_pycolmap(recon_folder, tmp_path):
    pycolmap = pytest.importorskip("pycolmap")
    rec = pycolmap.Reconstruction()
    rec.read_text(str(recon_folder / "colmap"))
    (tmp_path / "sparse" / "0").mkdir(parents=True)
    rec.write_binary(str(tmp_path / "sparse" / "0"))
    assert {"cameras.bin", "images.bin", "points3D.bin"} <= {p.name for p in (tmp_path / "sparse" / "0").iterdir()}
    assert not list(tmp_path.rglob("*.txt"))  # binary only
    text, binary = load_scene(recon_folder / "colmap"), load_scene(tmp_path)
    assert len(binary) == len(text) == 6 and binary.summary() == text.summary()
    assert np.allclose(binary.c2w(), text.c2w(), atol=1e-9)
    assert np.allclose(binary.frames[0].K, text.frames[0].K) and binary.frames[0].image_size == text.frames[0].image_size
    assert np.allclose(binary.cloud.points, text.cloud.points) and np.array_equal(binary.cloud.colors, text.cloud.colors)
    assert np.allclose(binary.c2w(), small_recon(n=6).c2w, atol=1e-5)


def test_load_single_files(tmp_path):
    rng = np.random.default_rng(0)
    pc = PointCloud(rng.normal(size=(500, 3)).astype(np.float32), rng.integers(0, 255, (500, 3), dtype=np.uint8))
    mesh = SyntheticScene(num_frames=1, width=8, height=6).mesh(1.0)
    g = Gaussians.from_activated(torch.randn(50, 3), torch.randn(50, 4), torch.rand(50, 3) * 0.1 + 0.01,
                                 torch.rand(50) * 0.9 + 0.05, colors=torch.rand(50, 3))
    write_point_cloud(tmp_path / "pc.ply", pc)
    write_mesh_ply(tmp_path / "mesh.ply", mesh)
    write_gaussians_ply(tmp_path / "g.ply", g)
    write_splat(tmp_path / "g.splat", g)
    write_glb(tmp_path / "mesh.glb", mesh)
    write_glb_points(tmp_path / "pc.glb", pc)
    write_obj(tmp_path / "mesh.obj", mesh)
    assert [ply_kind(tmp_path / n) for n in ("pc.ply", "mesh.ply", "g.ply")] == ["points", "mesh", "gaussians"]
    assert load_scene(tmp_path / "pc.ply").summary()["cloud_points"] == 500
    assert load_scene(tmp_path / "pc.glb").summary()["cloud_points"] == 500
    for name in ("mesh.ply", "mesh.glb", "mesh.obj"):
        s = load_scene(tmp_path / name)
        assert s.summary()["mesh_faces"] == len(mesh.faces), name
        assert np.allclose(s.mesh.vertices, mesh.vertices, atol=1e-5), name  # back in forward3d world axes
    for name in ("g.ply", "g.splat"):
        s = load_scene(tmp_path / name)
        assert s.summary()["gaussians"] == 50 and s.downloads == {name: tmp_path / name}


def test_glb_bytes_equals_the_file(tmp_path):
    mesh = SyntheticScene(num_frames=1, width=8, height=6).mesh(1.0)
    write_glb(tmp_path / "m.glb", mesh)
    assert glb_bytes(mesh) == (tmp_path / "m.glb").read_bytes()
    (tmp_path / "raw.glb").write_bytes(glb_bytes(mesh, to_gltf_axes=False))
    assert np.allclose(read_glb(tmp_path / "raw.glb", from_gltf_axes=False).vertices, mesh.vertices)
    with pytest.raises(TypeError):
        glb_bytes("mesh")


def _corrupt_plys(folder: Path) -> dict[str, Path]:
    pc = PointCloud(np.random.default_rng(0).normal(size=(100, 3)).astype(np.float32))
    good = write_point_cloud(folder / "good.ply", pc).read_bytes()
    files = {
        "truncated": good[: len(good) // 2],
        "garbage": b"\x00\x01\x02garbage" * 100,
        "bad header": b"ply\nformat binary_little_endian 1.0\nelement vertex ten\nend_header\n",
        "no end_header": b"ply\nformat ascii 1.0\nelement vertex 3\nproperty float x\n",
        "ascii junk": b"ply\nformat ascii 1.0\nelement vertex 2\nproperty float x\nproperty float y\nproperty float z\n"
                      b"end_header\n1 2 three\n",
    }
    out = {}
    for k, data in files.items():
        p = folder / f"{k.replace(' ', '_')}.ply"
        p.write_bytes(data)
        out[k] = p
    return out


def test_load_bad_input(tmp_path, recon_folder):
    for kind, p in _corrupt_plys(tmp_path).items():
        with pytest.raises(ValueError, match=str(p.name).replace(".", r"\.")) as e:
            load_scene(p)
        assert "\n" not in str(e.value), kind
    (tmp_path / "a.xyz").write_text("1 2 3\n")
    with pytest.raises(ValueError, match="unsupported file type '.xyz'"):
        load_scene(tmp_path / "a.xyz")
    (tmp_path / "empty.ply").write_bytes(b"")
    with pytest.raises(ValueError, match="empty file"):
        load_scene(tmp_path / "empty.ply")
    with pytest.raises(FileNotFoundError):
        load_scene(tmp_path / "missing.ply")
    (tmp_path / "nothing").mkdir()
    with pytest.raises(ValueError, match="nothing forward3d view can show"):
        load_scene(tmp_path / "nothing")
    (tmp_path / "bin" / "sparse" / "0").mkdir(parents=True)
    (tmp_path / "bin" / "sparse" / "0" / "cameras.bin").write_bytes(b"\x00" * 8)
    (tmp_path / "bin" / "sparse" / "0" / "images.bin").write_bytes(b"\x00" * 3)
    with pytest.raises(ValueError, match=r"0: corrupt or incomplete binary COLMAP model"):
        load_scene(tmp_path / "bin")
    (tmp_path / "x.json").write_text("{}")
    with pytest.raises(ValueError, match="transforms.json"):
        load_scene(tmp_path / "x.json")
    (tmp_path / "bad.npz").write_bytes(b"PK\x03\x04 not a zip")
    with pytest.raises((ValueError, FileNotFoundError)):
        load_scene(tmp_path / "bad.npz")


def test_attach_ground_truth_index_and_timestamps(tmp_path):
    recon = small_recon(n=8)
    gt = recon.c2w.copy()
    # the estimate lives in another world: a similarity away from the ground truth
    from forward3d.geometry.se3 import make_sim3

    A = make_sim3(_random_c2w(np.random.default_rng(3), 1)[0, :3, :3], np.array([1.0, -2.0, 0.5]), 0.5)
    est = recon.c2w.copy()
    est[:, :3, 3] = recon.c2w[:, :3, 3] @ A[:3, :3].T + A[:3, 3]
    est[:, :3, :3] = (A[:3, :3] / 0.5) @ recon.c2w[:, :3, :3]
    recon.c2w = est
    recon.metadata["metric_scale"] = False
    s = SceneModel.from_reconstruction(recon)
    write_tum(tmp_path / "gt.txt", recon.timestamps + 1e-3, gt)  # matched by timestamp
    attach_ground_truth(s, tmp_path / "gt.txt")
    assert np.allclose(s.gt_c2w[:, :3, 3], est[:, :3, 3], atol=1e-6)
    assert np.allclose(s.gt_c2w[:, :3, :3], est[:, :3, :3], atol=1e-6)
    assert s.metrics["ate_sim3_rmse_m"] < 1e-6
    # other clock: falls back to matching by index (same count)
    write_tum(tmp_path / "gt2.txt", recon.timestamps + 1000.0, gt)
    s2 = SceneModel.from_reconstruction(recon)
    attach_ground_truth(s2, tmp_path / "gt2.txt")
    assert np.allclose(s2.gt_c2w[:, :3, 3], est[:, :3, 3], atol=1e-6)
    write_tum(tmp_path / "short.txt", recon.timestamps[:2], gt[:2])
    with pytest.raises(ValueError, match="at least 3 poses"):
        attach_ground_truth(s2, tmp_path / "short.txt")


def test_attach_images_by_frame_name(tmp_path):
    from PIL import Image

    from forward3d.viz.load import attach_images

    s = SceneModel()
    for name in ("00003", "00007", "00011"):
        s.add_frame(0, name, np.eye(4), np.eye(3), (8, 6))
    (tmp_path / "imgs").mkdir()
    for name in ("00003", "00011", "99999"):
        Image.fromarray(np.full((6, 8, 3), 200, np.uint8)).save(tmp_path / "imgs" / f"{name}.png")
    assert attach_images(s, tmp_path / "imgs") == 2
    assert s.thumbnail(0).shape == (6, 8, 3) and s.thumbnail(1) is None and s.thumbnail(2).mean() == 200
    (tmp_path / "other").mkdir()
    Image.fromarray(np.zeros((6, 8, 3), np.uint8)).save(tmp_path / "other" / "x.png")
    with pytest.raises(ValueError, match="no picture named like the frames"):
        attach_images(s, tmp_path / "other")
    with pytest.raises(ValueError, match="expected a folder"):
        attach_images(s, tmp_path / "missing")
