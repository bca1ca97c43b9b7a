"""Hypersim: the file conversions checked by hand (ray distance -> planar depth, M_proj -> K, the tone
map, OpenGL keyframes -> OpenCV c2w), the reader and the dataset on a tiny fake layout the test writes,
and the hypersim-extrapolation protocol on it (oracle ~0, the weight-free completer and ZoeDepth not)."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest

pytest.importorskip("h5py")

from fake_hypersim import ray_distance, shifted_K, write_hypersim_scene  # noqa: E402

from forward3d.data.synthetic import SyntheticScene  # noqa: E402
from forward3d.io.hypersim import (  # noqa: E402
    HypersimSource,
    hypersim_c2w,
    intrinsics_from_projection,
    projection_from_intrinsics,
    ray_distance_to_depth,
    read_meters_per_asset_unit,
    tonemap,
)
from forward3d.types import Intrinsics  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def scene():
    return SyntheticScene(num_frames=24, width=64, height=48, num_boxes=4)


@pytest.fixture
def layout(tmp_path, scene):
    """Two scenes; ai_001_001 with two cameras (the second a shorter trajectory)."""
    K = shifted_K(scene)
    write_hypersim_scene(tmp_path, "ai_001_001", scene, [0, 1, 2, 3, 10], K)
    write_hypersim_scene(tmp_path, "ai_001_001", scene, [5, 6, 7], K, camera="cam_01")
    write_hypersim_scene(tmp_path, "ai_002_001", scene, [12, 13, 14], K, meters_per_asset_unit=1.0)
    return tmp_path, K


# --------------------------------------------------------------------------------------------------
# Conversions, by hand
# --------------------------------------------------------------------------------------------------


def test_ray_distance_to_planar_depth_numerically():
    K = np.array([[100.0, 0, 53.0], [0, 100.0, 38.0], [0, 0, 1]])  # off-centre principal point
    v, u = np.meshgrid(np.arange(80) + 0.5, np.arange(100) + 0.5, indexing="ij")
    dist = 2.0 * np.sqrt(((u - 53) / 100) ** 2 + ((v - 38) / 100) ** 2 + 1)  # a plane z = 2 m
    z = ray_distance_to_depth(dist, K)
    np.testing.assert_allclose(z, 2.0, rtol=1e-6)
    # pixel (row 0, col 0): its ray (-0.525, -0.375, 1) is 1.190 long: the distance is 19% more than the depth
    assert dist[0, 0] == pytest.approx(2.0 * np.sqrt(0.525 ** 2 + 0.375 ** 2 + 1)) and dist[0, 0] > 2.37
    assert z[37, 52] == pytest.approx(2.0, abs=1e-6) and dist[37, 52] == pytest.approx(2.0, abs=1e-3)
    rough = np.random.default_rng(0).uniform(0.5, 8.0, (80, 100))  # any depth map: the fake writer's inverse
    np.testing.assert_allclose(ray_distance_to_depth(ray_distance(rough, K), K), rough, rtol=1e-6)
    bad = dist.copy()
    bad[0, 0], bad[1, 1] = np.nan, -1.0
    zb = ray_distance_to_depth(bad, K)
    assert zb[0, 0] == 0 and zb[1, 1] == 0 and zb.dtype == np.float32
    with pytest.raises(ValueError, match=r"distance \[H, W\]"):
        ray_distance_to_depth(dist[None], K)


def test_intrinsics_from_projection_matches_the_ndc_projection():
    intr = Intrinsics(886.81, 886.81, 530.0, 371.0, 1024, 768)  # a tilt-shift-like off-centre camera
    M = projection_from_intrinsics(intr)
    back = intrinsics_from_projection(M, 1024, 768)
    np.testing.assert_allclose([back.fx, back.fy, back.cx, back.cy], [886.81, 886.81, 530.0, 371.0], rtol=1e-12)
    # a point in OpenGL camera axes, projected as Hypersim does (clip -> NDC -> pixels, v down) ...
    p_gl = np.array([0.4, -0.3, -2.5, 1.0])
    clip = M @ p_gl
    ndc = clip[:3] / clip[3]
    uv_hypersim = [(ndc[0] + 1) / 2 * 1024, (1 - ndc[1]) / 2 * 768]
    # ... lands where K puts the same point in OpenCV axes
    x, y, z = p_gl[0], -p_gl[1], -p_gl[2]
    np.testing.assert_allclose(uv_hypersim, [intr.fx * x / z + intr.cx, intr.fy * y / z + intr.cy], rtol=1e-12)
    skew = M.copy()
    skew[0, 1] = 0.1
    with pytest.raises(ValueError, match="skew"):
        intrinsics_from_projection(skew, 1024, 768)


def test_tonemap_is_the_hypersim_formula():
    rng = np.random.default_rng(0)
    hdr = rng.gamma(2.0, 0.6, (20, 30, 3))
    valid = np.ones((20, 30), bool)
    valid[:2] = False
    hdr[0, 0] = 1e4  # an invalid (no surface) pixel must not change the exposure
    b = 0.3 * hdr[..., 0] + 0.59 * hdr[..., 1] + 0.11 * hdr[..., 2]
    scale = 0.8 ** 2.2 / np.percentile(b[valid], 90)
    ref = np.clip((scale * hdr) ** (1 / 2.2), 0, 1)
    out = tonemap(hdr, valid)
    assert out.dtype == np.uint8 and np.abs(out / 255.0 - ref).max() <= 0.5 / 255 + 1e-9
    tm_b = 0.3 * ref[..., 0] + 0.59 * ref[..., 1] + 0.11 * ref[..., 2]
    assert 0.7 < np.percentile(tm_b[valid], 90) < 0.9
    assert (tonemap(np.zeros((4, 4, 3))) == 0).all()  # dark: scale 0, as Hypersim
    with pytest.raises(ValueError, match=r"rgb \[H, W, 3\]"):
        tonemap(hdr[..., 0])


def test_keyframe_pose_conversion():
    R_cv = np.linalg.qr(np.random.default_rng(1).normal(size=(3, 3)))[0]
    R_cv *= np.sign(np.linalg.det(R_cv))
    R_gl = R_cv @ np.diag([1.0, -1.0, -1.0])
    c2w = hypersim_c2w(np.array([10.0, 20.0, 30.0]), R_gl, 0.0254)
    np.testing.assert_allclose(c2w[:3, :3], R_cv, atol=1e-12)
    np.testing.assert_allclose(c2w[:3, 3], [0.254, 0.508, 0.762])
    # the OpenGL camera looks down its -z: that is the OpenCV +z
    np.testing.assert_allclose(R_gl @ [0, 0, -1.0], c2w[:3, 2], atol=1e-12)


# --------------------------------------------------------------------------------------------------
# Reader
# --------------------------------------------------------------------------------------------------


def test_reader_on_the_fake_layout(layout, scene):
    from forward3d.geometry.camera import depth_to_points, project, world_to_camera

    root, K = layout
    src = HypersimSource(root / "ai_001_001", camera="cam_00")
    assert (src.layout, len(src), src.has_depth, src.has_gt_poses) == ("hypersim", 5, True, True)
    frames = list(src)
    f0, f1 = frames[0], frames[1]
    np.testing.assert_allclose(f0.K, K)  # the per-scene M_proj, off-centre
    np.testing.assert_allclose(f1.c2w, scene.c2w[1], atol=1e-9)  # asset units x meters_per_asset_unit
    img, depth = scene.render(scene.c2w[1], K, 64, 48)
    ok = f1.depth > 0
    assert not ok[2:6, 2:6].any() and ok.mean() > 0.98  # no surface: no depth
    np.testing.assert_allclose(f1.depth[ok], depth[ok], rtol=1.5e-3)  # planar, from float16 distances
    assert np.corrcoef(f1.image.ravel().astype(float), img.ravel().astype(float))[0, 1] > 0.99
    # frame 0's depth, lifted with its pose, lands on frame 1's depth: poses and K are consistent
    pts = depth_to_points(f0.depth, f0.K, f0.c2w)[f0.depth > 0]
    uv, z = project(world_to_camera(pts, f1.c2w), f1.K)
    inside = (z > 0) & (uv[:, 0] >= 0) & (uv[:, 0] < 64) & (uv[:, 1] >= 0) & (uv[:, 1] < 48)
    d1 = f1.depth[uv[inside, 1].astype(int), uv[inside, 0].astype(int)]
    assert np.median(np.abs(d1 - z[inside])[d1 > 0]) < 0.02
    sub = HypersimSource(root / "ai_001_001", camera=1, stride=2, size=32)
    fs = list(sub)
    assert len(fs) == 2 and fs[0].image.shape == (24, 32, 3) and fs[0].K[0, 0] == pytest.approx(K[0, 0] / 2)


def test_open_frames_detects_a_hypersim_scene(layout):
    from forward3d.io.sources import detect_layout, open_frames

    root, K = layout
    assert detect_layout(root / "ai_001_001") == "hypersim"
    src = open_frames(root / "ai_001_001", sequence="cam_01", max_frames=2)
    assert (src.layout, src.camera, len(src)) == ("hypersim", "cam_01", 2)
    assert [f.name for f in src] == ["frame.0000", "frame.0001"]


def test_reader_bad_input_and_fallback_camera(tmp_path, scene, caplog):
    sd = write_hypersim_scene(tmp_path, "ai_003_001", scene, [0, 1], scene.K, camera_csv=False)
    with caplog.at_level(logging.WARNING):
        src = HypersimSource(sd)
    assert "standard Hypersim camera" in caplog.text
    assert src.intrinsics.fx == pytest.approx(32 / np.tan(np.radians(30)))
    with pytest.raises(ValueError, match="camera 'cam_07' not found; available: cam_00"):
        HypersimSource(sd, camera="cam_07")
    with pytest.raises(ValueError, match="not a Hypersim scene"):
        HypersimSource(tmp_path)
    (sd / "_detail" / "metadata_scene.csv").write_text("parameter_name,parameter_value\nfoo,1\n")
    with pytest.raises(ValueError, match=r"metadata_scene.csv: expected a row 'meters_per_asset_unit"):
        read_meters_per_asset_unit(sd / "_detail" / "metadata_scene.csv")
    with pytest.raises(ValueError, match="metadata_scene.csv"):
        HypersimSource(sd)
    (sd / "_detail" / "metadata_scene.csv").write_text("parameter_name,parameter_value\nmeters_per_asset_unit,1\n")
    (sd / "images" / "scene_cam_00_final_hdf5" / "frame.0001.color.hdf5").write_bytes(b"not hdf5")
    with pytest.raises(ValueError, match=r"frame.0001.color.hdf5: cannot read the Hypersim HDF5 file"):
        list(HypersimSource(sd, on_error="raise"))


def test_dataset_scan_split_and_views(layout):
    from forward3d.data import get_dataset_class

    root, _ = layout
    cls = get_dataset_class("Hypersim")
    ds = cls(root=str(root), split=None, num_views=2, resolution=(32, 24))
    assert [s.scene for s in ds.sequences] == ["ai_001_001/cam_00", "ai_001_001/cam_01", "ai_002_001/cam_00"]
    sample = ds[0]
    assert len(sample.views) == 2 and sample.views[0].image.shape[:2] == (24, 32)
    (root / "metadata_images_split_scene_v1.csv").write_text(
        "scene_name,camera_name,frame_id,included_in_public_release,exclude_reason,split_partition_name\n"
        + "".join(f"ai_001_001,cam_00,{i},True,,train\n" for i in range(4))
        + "ai_001_001,cam_00,4,False,bad,train\nai_001_001,cam_01,0,True,,val\nai_002_001,cam_00,0,True,,test\n")
    train = cls(root=str(root), split="train", num_views=2, resolution=(32, 24))
    assert [(s.scene, s.names) for s in train.sequences] == \
        [("ai_001_001/cam_00", ["frame.0000", "frame.0001", "frame.0002", "frame.0003"])]
    with pytest.raises(ValueError, match="no sequence found for split 'val'"):
        cls(root=str(root), split="val", num_views=2, resolution=(32, 24), cameras=("cam_00",))


# --------------------------------------------------------------------------------------------------
# hypersim-extrapolation
# --------------------------------------------------------------------------------------------------


def test_hypersim_extrapolation_protocol(layout, tmp_path):
    from forward3d.bench.protocol import get_protocol
    from forward3d.bench.runner import find_sequences
    from forward3d.cli import main

    root, _ = layout
    p = get_protocol("hypersim-extrapolation")
    assert (p.layouts, p.stride, p.pair_offset, p.min_coverage) == (("hypersim",), 1, 1, 0.8)
    seqs = find_sequences(root, p)
    assert [(s.name, s.sequence) for s in seqs] == [("ai_001_001/cam_00", "cam_00"), ("ai_001_001/cam_01", "cam_01"),
                                                    ("ai_002_001/cam_00", "cam_00")]
    common = ["bench", "hypersim-extrapolation", "--data", str(root), "--no-plots"]
    assert main(common + ["--backend", "oracle", "--out", str(tmp_path / "o")]) == 0
    res = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert res["mean"]["mae"] < 2e-3 and res["mean"]["coverage"] >= 0.8
    cam0 = json.loads((tmp_path / "o" / "sequences" / "ai_001_001__cam_00.json").read_text())["metrics"]
    # frames 0-1-2-3 are neighbours; 3 -> 10 (frame.0004) is a large move: i covers < 80 % of it, left out
    assert cam0["num_pairs"] == 3 and cam0["num_pairs_below_coverage"] == 1
    assert main(common + ["--backend", "aligned", "--out", str(tmp_path / "a")]) == 0
    aligned = json.loads((tmp_path / "a" / "summary.json").read_text())["mean"]["mae"]
    assert aligned > 10 * res["mean"]["mae"] and aligned < 2.0


def test_hypersim_extrapolation_with_a_zoedepth_folder(layout, tmp_path):
    from test_depth_completion import _tiny_zoedepth

    from forward3d.bench.runner import BenchConfig, run_benchmark

    root, _ = layout
    _tiny_zoedepth().save_pretrained(tmp_path / "zoe")  # a 3-channel ZoeDepth: widened to 5 on load
    (tmp_path / "zoe" / "preprocessor_config.json").write_text(json.dumps({"size": {"height": 32, "width": 32}}))
    res = run_benchmark(BenchConfig("hypersim-extrapolation", data=str(root), backend="zoedepth",
                                    out=str(tmp_path / "z"), plots=False, max_sequences=1),
                        {"weights": str(tmp_path / "zoe")})
    m = res.summary["mean"]
    assert res.ran == ["ai_001_001/cam_00"] and np.isfinite(m["mae"]) and m["mae"] > 0.01  # random weights
    assert m["num_pairs"] == 3
