"""Every training reader on a tiny fake copy of its dataset's published layout.

Each fake copy is written from a synthetic scene (tests/fake_layouts.py, or forward3d's own layout
writers for the inference layouts); a view read back must agree with a fresh render of that scene
with the view's K and c2w: that checks file names, units, depth encodings, pose conventions and the
intrinsics of every reader against ground truth.
"""

from __future__ import annotations

import functools
import logging

import numpy as np
import pytest

from fake_layouts import (
    write_arkitscenes_video,
    write_co3d_category,
    write_habitat_sequence,
    write_sens,
)
from forward3d.data.sequence import get_dataset_class
from forward3d.data.synthetic import SyntheticScene
from forward3d.io.layout_writers import write_layout

W, H = 64, 48


@functools.lru_cache(maxsize=8)
def _scene(seed: int = 0, n: int = 8, w: int = W, h: int = H) -> SyntheticScene:
    return SyntheticScene(num_frames=n, width=w, height=h, seed=seed, trajectory="handheld")


@functools.lru_cache(maxsize=8)
def _frames(seed: int = 0, n: int = 8, w: int = W, h: int = H):
    return tuple(_scene(seed, n, w, h).frames())


def agree(view, scene, image_tol=8.0, min_valid=0.8, depth_median=0.011, depth_mean=0.03):
    """The view matches the scene rendered with the view's camera (see test_data_views._agree)."""
    rgb, depth = scene.render(view.c2w, view.K, view.width, view.height)
    both = (depth > 0) & view.valid
    assert both.mean() > min_valid, both.mean()
    err = np.abs(depth - view.depth)[both]
    assert np.median(err) < depth_median and err.mean() < depth_mean, (np.median(err), err.mean())
    assert np.abs(rgb.astype(float) - view.image.astype(float))[both].mean() < image_tol
    return both


def _sample_ok(ds, n_views):
    s = ds[0]
    assert len(s.views) == n_views and all(v.image.shape == (H, W, 3) for v in s.views)
    assert all(v.valid.any() for v in s.views)
    return s


# --------------------------------------------------------------------------------------------------


def test_scannet_sens_and_split(tmp_path):
    write_sens(tmp_path / "scans" / "scene0000_00" / "scene0000_00.sens", _frames(0), invalid_pose={2})
    write_sens(tmp_path / "scans" / "scene0001_00" / "scene0001_00.sens", _frames(1))
    (tmp_path / "scannetv2_train.txt").write_text("scene0000_00\n")
    (tmp_path / "scannetv2_val.txt").write_text("scene0001_00\n")
    D = get_dataset_class("ScanNet")
    ds = D(root=str(tmp_path), split="train", num_views=3, sample_freq=2, resolution=(W, H))
    assert [s.scene for s in ds.sequences] == ["scene0000_00"] and len(ds) == 8 - 4
    for i in (0, 5):
        agree(ds.view("scene0000_00", i), _scene(0))
    with pytest.raises(ValueError, match="no valid pose"):
        ds.view("scene0000_00", 2)
    # a sample that needs frame 2 gets a neighbour with a valid pose instead
    s = ds[1]  # frames 1, 3, 5 ... window 1
    assert "2" not in [v.name for v in s.views]
    val = D(root=str(tmp_path), split="val", num_views=2, resolution=(W, H))
    assert [s.scene for s in val.sequences] == ["scene0001_00"]
    agree(val.view("scene0001_00", 3), _scene(1))


def test_scannet_export_layout(tmp_path):
    write_layout(_frames(0), tmp_path / "scene0000_00", "scannet", color_size=(96, 72))
    ds = get_dataset_class("ScanNet_Seq")(root=str(tmp_path), split=None, num_views=2, resolution=(W, H))
    agree(ds.view("scene0000_00", 4), _scene(0))
    _sample_ok(ds, 2)


@pytest.mark.parametrize("layout, name", [("tum", "TUM"), ("replica", "Replica"), ("7scenes", "SevenScenes")])
def test_inference_layouts(tmp_path, layout, name):
    kw = {"sequence": "seq-01"} if layout == "7scenes" else {}
    sub = tmp_path / ("chess" if layout == "7scenes" else "seqA")
    write_layout(_frames(0), sub, layout, **kw)
    if layout == "7scenes":
        write_layout(_frames(1), sub, layout, sequence="seq-02")
        (sub / "TrainSplit.txt").write_text("sequence2\n")
        (sub / "TestSplit.txt").write_text("sequence1\n")
    ds = get_dataset_class(name)(root=str(tmp_path), split="train", num_views=3, resolution=(W, H))
    scene = ds.sequences[0].scene
    assert scene == ("chess/seq-02" if layout == "7scenes" else "seqA") and len(ds.sequences) == 1
    agree(ds.view(scene, 6), _scene(1 if layout == "7scenes" else 0), image_tol=8.0)
    _sample_ok(ds, 3)


def test_arkitscenes_raw(tmp_path):
    write_arkitscenes_video(tmp_path / "raw" / "Training", "41069021", _frames(0))
    write_arkitscenes_video(tmp_path / "raw" / "Validation", "42444946", _frames(1))
    D = get_dataset_class("ARKitScenes")
    ds = D(root=str(tmp_path / "raw"), split="train", num_views=2, resolution=(W, H))
    assert [s.scene for s in ds.sequences] == ["41069021"] and ds.sequences[0].names[0] == "41069021_6845.800"
    for i in (0, 7):
        agree(ds.view("41069021", i), _scene(0))
    val = D(root=str(tmp_path / "raw"), split="val", num_views=2, resolution=(W, H))
    agree(val.view("42444946", 3), _scene(1))
    # frames whose timestamp has no trajectory sample near it are dropped
    with pytest.raises(ValueError, match="no sequence found"):  # 0.4 ms between frames and poses > 0.1 ms
        D(root=str(tmp_path / "raw"), split="train", num_views=2, resolution=(W, H), max_time_diff=1e-4)


def test_arkitscenes_drops_frames_without_pose(tmp_path):
    vd = write_arkitscenes_video(tmp_path, "41069021", _frames(0))
    lines = (vd / "lowres_wide.traj").read_text().splitlines()
    (vd / "lowres_wide.traj").write_text("\n".join(lines[:4]) + "\n")  # the trajectory stops after 4 frames
    ds = get_dataset_class("ARKitScenes")(root=str(vd), num_views=2, resolution=(W, H))
    assert len(ds.sequences[0]) == 4
    (vd / "lowres_wide.traj").write_text("1.0 0 0\n")
    with pytest.raises(ValueError, match="expected 7 numbers"):
        get_dataset_class("ARKitScenes")(root=str(vd), num_views=2, resolution=(W, H))


@pytest.mark.parametrize("sky, turns_written", [("Left", 3), ("Down", 2), ("Right", 1)])
def test_arkitscenes_sky_direction(tmp_path, sky, turns_written):
    """A video recorded with the device turned (sky on the left, ...): the files hold the turned
    frames, metadata.csv names the sky direction; the reader turns them back, K and c2w included."""
    from forward3d.data.views import rotate90

    def turned(f):
        for _ in range(turns_written):
            f = rotate90(f)
        return f

    frames = _frames(0)
    write_arkitscenes_video(tmp_path / "raw" / "Training", "41069021", [turned(f) for f in frames])
    (tmp_path / "raw" / "metadata.csv").write_text(f"video_id,visit_id,sky_direction\n41069021,1,{sky}\n")
    D = get_dataset_class("ARKitScenes")
    ds = D(root=str(tmp_path / "raw" / "Training"), num_views=2, resolution=(W, H))
    seq = ds.sequences[0]
    f = ds.load_frame(seq, 2)
    assert f.image.shape == frames[2].image.shape
    np.testing.assert_array_equal(f.image, frames[2].image)
    np.testing.assert_allclose(f.K, frames[2].K, atol=1e-4)
    np.testing.assert_allclose(f.c2w, frames[2].c2w, atol=1e-3)  # interpolated: samples 0.4 ms off
    agree(ds.view("41069021", 2), _scene(0))
    # sky_up=False keeps the files as they are
    raw = D(root=str(tmp_path / "raw" / "Training"), num_views=2, resolution=(W, H), sky_up=False)
    assert raw.load_frame(raw.sequences[0], 2).image.shape == turned(frames[2]).image.shape
    (tmp_path / "raw" / "metadata.csv").write_text("video_id,visit_id,sky_direction\n41069021,1,Sideways\n")
    with pytest.raises(ValueError, match=r"metadata.csv:2: sky_direction"):
        D(root=str(tmp_path / "raw" / "Training"), num_views=2, resolution=(W, H))


@pytest.mark.parametrize("isotropic", [True, False])
def test_co3d(tmp_path, isotropic):
    write_co3d_category(tmp_path, "apple", {"110_13051_23361": _frames(0)}, isotropic=isotropic)
    write_co3d_category(tmp_path, "ball", {"123_4_5": _frames(1)}, isotropic=isotropic)
    D = get_dataset_class("Co3d_Seq")
    ds = D(root=str(tmp_path), split="train", num_views=3, degree=270, frames_per_turn=8, sel_num=2,
           resolution=(W, H), mask_bg=False)
    assert [s.scene for s in ds.sequences] == ["apple/110_13051_23361"]
    v = ds.view("apple/110_13051_23361", 3)
    agree(v, _scene(0), min_valid=0.7)  # depth units restored by scale_adjustment
    assert not v.valid[: H // 8].any()  # the depth mask
    masked = D(root=str(tmp_path), split="train", num_views=3, degree=270, frames_per_turn=8, resolution=(W, H))
    mv = masked.view("apple/110_13051_23361", 3)
    assert mv.valid.sum() < 0.3 * v.valid.sum() and not mv.valid[:, : W // 4].any()  # background removed
    test = D(root=str(tmp_path), split="test", num_views=3, degree=270, frames_per_turn=8, resolution=(W, H))
    assert [s.scene for s in test.sequences] == ["ball/123_4_5"]
    sub = D(root=str(tmp_path), split="train", set_list="fewview_dev", degree=0, num_views=2, resolution=(W, H))
    assert sub.sequences[0].names == [f"frame{n:06d}" for n in (1, 2, 3, 5, 6, 7)]
    rand = D(root=str(tmp_path), split="train", num_views=3, degree=270, frames_per_turn=8, sel_num=5, resolution=(W, H),
             mask_bg="rand")
    fractions = {round(float(np.mean([v.valid.mean() for v in rand[i].views])), 2) for i in range(len(rand))}
    assert len(fractions) > 1  # some samples masked, some not
    _sample_ok(ds, 3)


@pytest.mark.parametrize("fmt", ["exr", "npy"])
def test_habitat(tmp_path, fmt):
    write_habitat_sequence(tmp_path / "train" / "scene_a" / "seq0", _frames(0), fmt)
    ds = get_dataset_class("Habitat")(root=str(tmp_path), split="train", num_views=4, resolution=(W, H))
    assert [s.scene for s in ds.sequences] == ["scene_a/seq0"]
    agree(ds.view("scene_a/seq0", 5), _scene(0))
    _sample_ok(ds, 4)


def test_realestate10k(tmp_path):
    from forward3d.data.re10k import write_re10k_layout

    write_re10k_layout(tmp_path / "with", {"seqA": _scene(0)}, split="train", colmap_scale=1.0, write_depth=True)
    ds = get_dataset_class("RE10K")(root=str(tmp_path / "with"), num_views=2, resolution=(W, H))
    assert ds.has_depth
    agree(ds.view("seqA", 2), _scene(0), image_tol=10)
    write_re10k_layout(tmp_path / "without", {"seqA": _scene(0)}, split="train", colmap_scale=2.0, write_depth=False)
    nd = get_dataset_class("RealEstate10K")(root=str(tmp_path / "without"), num_views=2, resolution=(W, H))
    v = nd.view("seqA", 2)
    assert not nd.has_depth and not v.valid.any() and (v.depth == 0).all()
    np.testing.assert_allclose(v.c2w[:3, 3] * 2.0, _scene(0).c2w[2, :3, 3], atol=1e-4)  # COLMAP units
    s = nd[0]
    assert len(s.views) == 2 and not s.views[0].has_depth


def test_synthetic_reader_geometry():
    ds = get_dataset_class("Synthetic")(num_scenes=2, frames_per_scene=8, width=W, height=H, num_views=3,
                                       resolution=(W, H), split="val")
    assert [s.scene for s in ds.sequences] == ["synthetic_1000000", "synthetic_1000001"]
    agree(ds.view("synthetic_1000001", 4), ds.scene(1))


def test_reader_errors(tmp_path):
    D = get_dataset_class("ScanNet")
    with pytest.raises(ValueError, match="root is not set"):
        D(num_views=2)
    with pytest.raises(ValueError, match="is not a folder"):
        D(root=str(tmp_path / "nope"))
    with pytest.raises(ValueError, match="no sequence found"):
        D(root=str(tmp_path))
    write_sens(tmp_path / "scans" / "scene0000_00" / "scene0000_00.sens", _frames(0))
    with pytest.raises(ValueError, match=r"scenes \['scene9'\] not found"):
        D(root=str(tmp_path), split=None, scenes=("scene9",))
    with pytest.raises(ValueError, match="enough frames for a window of 21"):
        D(root=str(tmp_path), split=None, num_views=11, sample_freq=2)
    with pytest.raises(ValueError, match="num_views"):
        D(root=str(tmp_path), num_views=0)
    with pytest.raises(ValueError, match="unknown config fields"):
        D(D.config_class(root=str(tmp_path)), bogus=1)
    with pytest.raises(ValueError, match="unknown dataset 'Nope'"):
        get_dataset_class("Nope")


def test_unreadable_frames(tmp_path, caplog):
    write_layout(_frames(0), tmp_path / "seqA", "tum")
    bad = sorted((tmp_path / "seqA" / "rgb").iterdir())[3]
    bad.write_bytes(b"xx")
    D = get_dataset_class("TUM")
    strict = D(root=str(tmp_path), split=None, num_views=8, resolution=(W, H))
    with pytest.raises(ValueError, match="not a readable colour image"):
        strict[0]
    lenient = D(root=str(tmp_path), split=None, num_views=8, resolution=(W, H), on_error="skip")
    with caplog.at_level(logging.WARNING):
        s = lenient[0]
    assert len(s.views) == 8 and "skipping unreadable frame" in caplog.text
    names = [v.name for v in s.views]
    assert bad.stem not in names and len(set(names)) == 7  # the bad frame replaced by a neighbour
