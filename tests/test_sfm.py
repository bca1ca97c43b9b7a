"""Structure from motion (forward3d.sfm) and the ``sfm`` back-end: keyframes, pose files, bad input,
synthetic RGB room end to end, the fern photos, known poses, the CLI and the demo."""

from __future__ import annotations

import json

import numpy as np
import pytest

from forward3d.data.synthetic import SyntheticConfig, SyntheticScene
from forward3d.eval.traj import ate
from forward3d.io.poses import match_poses, read_pose_file
from forward3d.sfm.config import SfMConfig
from forward3d.sfm.keyframes import (
    FrameStats,
    global_descriptors,
    image_shift,
    loop_pairs,
    select_keyframes,
    sequential_pairs,
    sharpness,
    thumbnail,
)
from forward3d.types import Frame


def _texture(h: int, w: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = rng.random((h // 4 + 1, w // 4 + 1))
    return np.kron(base, np.ones((4, 4)))[:h, :w].astype(np.float32)


def _room_frames(n: int, size=(320, 240), seed: int = 0, speed: float = 1.0) -> list[Frame]:
    scene = SyntheticScene(SyntheticConfig(seed=seed, num_frames=n, width=size[0], height=size[1], speed=speed))
    return [f.with_(depth=None) for f in scene.frames()]


# -- keyframes / pairs (no pycolmap) --------------------------------------------------------------

def test_image_shift_recovers_translation():
    big = _texture(200, 260)
    a, b = big[20:116, 20:148], big[27:123, 11:139]  # content moves by (+9, -7) px from a to b
    dx, dy, peak = image_shift(a, b)
    assert (dx, dy) == (9.0, -7.0) and peak > 0.3
    _, _, low = image_shift(a, _texture(96, 128, seed=5))
    assert low < peak / 3
    with pytest.raises(ValueError, match="one size"):
        image_shift(a, b[:50])


def test_sharpness_drops_with_blur():
    img = _texture(96, 128)
    blurred = (img + np.roll(img, 1, 0) + np.roll(img, 1, 1) + np.roll(img, (1, 1), (0, 1))) / 4
    assert sharpness(blurred) < 0.5 * sharpness(img)
    assert thumbnail((np.stack([img] * 3, -1) * 255).astype(np.uint8), 64).shape == (48, 64)


def test_select_keyframes_by_parallax_and_sharpness():
    big = _texture(120, 600)
    thumbs = [big[10:106, 4 * i:4 * i + 128] for i in range(40)]  # 4 px (3 % of the width) per frame
    sharp = np.ones(40)
    sharp[12] = 5.0  # the sharpest of its window wins
    keys = select_keyframes(FrameStats(thumbs, sharp, np.full(40, 0.2)), min_parallax=0.06, window=3)
    assert keys[0] in (0, 1, 2) and 12 in keys
    steps = np.diff(keys)
    assert steps.min() >= 1 and steps.max() <= 5 and len(keys) >= 8
    static = select_keyframes(FrameStats([thumbs[0]] * 20, np.ones(20), np.full(20, 0.2)), 0.06, 3)
    assert len(static) == 1  # no parallax: one keyframe
    assert select_keyframes(FrameStats([thumbs[0]] * 5, np.ones(5), np.zeros(5)), 0.06, 3) == []


def test_loop_pairs_find_a_revisit():
    views = [_texture(96, 128, seed=s) for s in range(12)]
    views[11] = views[1] + 0.01  # the end revisits the start
    desc = global_descriptors(views)
    loops = loop_pairs(desc, overlap=3, per_image=1)
    assert (1, 11) in loops and all(j - i > 3 for i, j in loops)
    assert sequential_pairs(4, 2) == {(0, 1), (0, 2), (1, 2), (1, 3), (2, 3)}


def test_config_validation():
    with pytest.raises(ValueError, match="min_parallax"):
        SfMConfig(min_parallax=0.0)
    with pytest.raises(ValueError, match="mapper"):
        SfMConfig(mapper="magic")  # type: ignore[arg-type]


# -- pose files ---------------------------------------------------------------------------------

def test_pose_files_all_formats(tmp_path):
    from forward3d.io.colmap import write_colmap_text
    from forward3d.io.nerfstudio import write_transforms_json
    from forward3d.io.trajectory import write_tum
    from forward3d.types import Reconstruction

    frames = _room_frames(4, size=(64, 48))
    c2w = np.stack([f.c2w for f in frames])
    names = [f.name for f in frames]
    (tmp_path / "m.txt").write_text("# c2w per line\n" + "".join(" ".join(f"{v:.12g}" for v in T.reshape(-1)) + "\n"
                                                                for T in c2w))
    write_tum(tmp_path / "t.txt", np.arange(4) * 0.1, c2w)
    K = np.stack([f.K for f in frames])
    rec = Reconstruction(c2w, K, (64, 48), frame_names=names)
    write_colmap_text(tmp_path / "colmap", rec, image_names=[n + ".png" for n in names])
    write_transforms_json(tmp_path / "transforms.json", rec)
    for path, fmt in ((tmp_path / "m.txt", "matrices"), (tmp_path / "t.txt", "tum"), (tmp_path / "colmap", "colmap"),
                      (tmp_path / "transforms.json", "transforms")):
        pf = read_pose_file(path)
        assert pf.format == fmt
        np.testing.assert_allclose(pf.c2w, c2w, atol=1e-5)
        if fmt in ("colmap", "transforms"):
            np.testing.assert_allclose(pf.K, K, atol=1e-6)
            assert match_poses(pf, names[::-1], np.zeros(4)).tolist() == [3, 2, 1, 0]  # by image name
    pf = read_pose_file(tmp_path / "t.txt")
    idx = match_poses(pf, names[::-1], np.arange(4)[::-1] * 0.1)
    assert idx.tolist() == [3, 2, 1, 0]  # by timestamp
    with pytest.raises(ValueError, match="4 poses for 5 frames"):
        match_poses(read_pose_file(tmp_path / "m.txt"), names + ["x"], np.zeros(5))
    (tmp_path / "bad.txt").write_text("1 2 3\n")
    with pytest.raises(ValueError, match="bad.txt:1: expected 16 numbers"):
        read_pose_file(tmp_path / "bad.txt")


# -- end to end (pycolmap) ----------------------------------------------------------------------

pycolmap = pytest.importorskip("pycolmap")

from forward3d.pipelines.sfm import SfMBackend, mvs_available  # noqa: E402


def _fast(**kw) -> SfMBackend:
    return SfMBackend(dense="none", threads=1, max_features=2048, **kw)


def test_synthetic_room_every_frame_posed():
    """Textured room, RGB only, 20 frames 256x192: keyframes by parallax, the rest by PnP; ATE after Sim(3)."""
    frames = _room_frames(20, size=(256, 192))
    updates = []
    recon = _fast(keyframes="select").run(frames, progress=False, callback=updates.append)
    gt = np.stack([f.c2w for f in frames])
    assert [u.index for u in updates] == list(range(20)) and updates[-1].trajectory.shape == (20, 4, 4)
    states = [s.state for s in recon.frame_status]
    assert len(recon) == 20 and set(states) <= {"registered", "interpolated"}
    assert 3 <= len(recon.keyframes) < 20
    assert any("PnP" in s.reason for s in recon.frame_status)  # non-keyframes registered against the model
    assert recon.metadata["sfm_registered"] == recon.metadata["sfm_images"]
    assert recon.metadata["mean_reprojection_error_px"] < 0.5
    a = ate(recon.c2w, gt, align="sim3")
    assert a["rmse"] < 0.01, a["rmse"]  # metres, room ~6 x 3 x 5 m
    np.testing.assert_allclose(recon.K, np.stack([f.K for f in frames]))  # known intrinsics kept fixed
    assert recon.points is not None and len(recon.points) > 300 and not recon.metric_scale


def test_rgbd_input_is_scaled_to_metric():
    """Frames with depth: the SfM result is scaled to the sensor depth (metric, ATE after SE(3))."""
    scene = SyntheticScene(SyntheticConfig(seed=1, num_frames=10, width=192, height=144))
    frames = list(scene.frames())
    recon = _fast().run(frames, progress=False)
    gt = np.stack([f.c2w for f in frames])
    assert recon.metric_scale and abs(recon.metadata["depth_scale"]) > 0
    assert ate(recon.c2w, gt, align="se3")["rmse"] < 0.01
    np.testing.assert_allclose(np.nanmedian(recon.depth_scales), 1.0, atol=0.01)


@pytest.mark.parametrize("n, make, match", [
    (2, lambda i: _texture(96, 128, seed=i), "at least 3 views, found 2"),
    (5, lambda i: np.ones((96, 128), np.float32), "uniform images"),
    (6, lambda i: _texture(96, 128), "same image"),
])
def test_bad_input_one_clear_error(n, make, match):
    frames = [Frame((np.stack([make(i)] * 3, -1) * 255).astype(np.uint8), index=i, name=f"{i:03d}") for i in range(n)]
    with pytest.raises(ValueError, match=match):
        _fast().run(frames, progress=False)


def test_known_poses_skip_sfm(tmp_path):
    frames = _room_frames(6, size=(96, 72))
    c2w = np.stack([f.c2w for f in frames])
    (tmp_path / "poses.txt").write_text("".join(" ".join(f"{v:.15g}" for v in T.reshape(-1)) + "\n" for T in c2w))
    recon = _fast(poses=str(tmp_path / "poses.txt")).run(frames, progress=False)
    assert all(s.state == "given" for s in recon.frame_status) and recon.metric_scale
    np.testing.assert_allclose(recon.c2w, c2w, atol=1e-9)
    bare = [f.with_(K=None) for f in frames]
    with pytest.raises(ValueError, match="no intrinsics"):
        _fast(poses=str(tmp_path / "poses.txt")).run(bare, progress=False)


def _fern_check(recon, shared):
    from forward3d.geometry.align import umeyama

    pb = np.load(shared / "data" / "fern" / "poses_bounds.npy")
    gt_centres = pb[:, :15].reshape(-1, 3, 5)[:, :, 3]
    assert len(recon) == 20 and all(s.state == "registered" and s.reason == "SfM" for s in recon.frame_status)
    assert recon.metadata["mean_reprojection_error_px"] < 1.0
    s, R, t = umeyama(recon.c2w[:, :3, 3], gt_centres, with_scale=True)
    aligned = s * recon.c2w[:, :3, 3] @ R.T + t
    scene = float(pb[:, 16].max())  # the far depth bound: the scene's depth extent, in poses_bounds units
    err = np.linalg.norm(aligned - gt_centres, axis=1)
    assert err.max() < 0.01 * scene, (err.max(), scene)
    return err, scene


def test_fern_reduced_resolution(shared_dir):
    """The 20 fern photos at 252x189: all registered, reprojection < 1 px, centres within 1 % of the scene."""
    from forward3d.io.sources import open_frames

    recon = _fast().run(open_frames(shared_dir / "data" / "fern" / "images_8", size=252), progress=False)
    _fern_check(recon, shared_dir)


@pytest.mark.slow
def test_fern_native_resolution_cli(shared_dir, tmp_path):
    """``forward3d recon fern --backend sfm`` at 504x378: the whole output set and the same checks."""
    from forward3d.api import reconstruct

    run = reconstruct(shared_dir / "data" / "fern" / "images_8", "sfm", {"dense": "none", "threads": 1},
                      out=tmp_path / "out", progress=False, previews=False)
    _fern_check(run.recon, shared_dir)
    assert (tmp_path / "out" / "colmap" / "images.txt").is_file() and (tmp_path / "out" / "point_cloud.ply").is_file()


def test_cli_help_lists_sfm_options(capsys):
    from forward3d.cli import main

    with pytest.raises(SystemExit):
        main(["recon", "x", "--backend", "sfm", "--help"])
    out = capsys.readouterr().out
    for flag in ("--mapper", "--poses", "--dense", "--intrinsics-file", "--matching", "--keyframes"):
        assert flag in out


def test_rgb_refusal_points_to_sfm(tmp_path):
    from forward3d.pipelines import get_backend

    class Src:
        has_depth = False
        layout = "video"

    with pytest.raises(ValueError, match="--backend sfm"):
        get_backend("rgbd").check_source(Src(), "clip.mp4")


def test_auto_backend_by_input_kind():
    from forward3d.pipelines import DEFAULT_BACKEND, auto_backend

    class Src:
        def __init__(self, has_depth):
            self.has_depth = has_depth

    assert auto_backend(Src(True))[0] == DEFAULT_BACKEND == "rgbd"
    assert auto_backend(object())[0] == "rgbd"  # unknown kind: the default, whose own checks apply
    name, why = auto_backend(Src(False))
    assert name == "sfm" and "no depth" in why  # weight-free and depth-free; slam3r/spann3r need weights


def test_rgb_only_input_without_backend_runs_sfm(tmp_path, caplog, capsys):
    """``forward3d recon FOLDER`` (no --backend) on RGB-only images: the sfm back-end is chosen, a log
    line says so, and the whole output set is written; rgbd options given without --backend are refused."""
    import logging

    from forward3d.cli import main
    from forward3d.io.sources import write_layout

    scene = SyntheticScene(SyntheticConfig(seed=0, num_frames=10, width=160, height=120))
    write_layout((f.with_(depth=None, c2w=None) for f in scene.frames()), tmp_path / "imgs", "images")
    out = tmp_path / "out"
    with caplog.at_level(logging.INFO, logger="forward3d.api"):
        assert main(["recon", str(tmp_path / "imgs"), "--out", str(out), "--no-previews", "--no-progress"]) == 0
    assert "no back-end named, using sfm (the input has no depth and no weights were given" in caplog.text
    meta = json.loads((out / "reconstruction.json").read_text())
    assert meta["backend"] == "sfm" and (out / "point_cloud.ply").stat().st_size > 1000
    assert (out / "trajectory_tum.txt").read_text().count("\n") >= 10
    assert main(["recon", str(tmp_path / "imgs"), "--out", str(tmp_path / "o2"), "--voxel-size", "0.05"]) == 2
    assert "options given are RGBDConfig" in capsys.readouterr().err and not (tmp_path / "o2").exists()


@pytest.mark.slow
def test_demo_rgb(tmp_path):
    from forward3d.demo import DemoConfig, run_demo

    res = run_demo(DemoConfig(out=str(tmp_path / "demo"), frames=24, rgb=True, previews=False), progress=False)
    assert res.recon.backend == "sfm" and res.recon.trajectory_metrics.ate_sim3.rmse < 0.01
    assert json.loads((tmp_path / "demo" / "metrics.json").read_text())


@pytest.mark.slow
def test_synthetic_rgb_60_frames_tsdf_mesh_under_2cm():
    """Issue 10's synthetic RGB target: textured room, 60 frames at 320x240, SfM + dense MVS + TSDF
    fusion; after Sim(3) ATE < 1 cm and the fused MESH's accuracy and completion medians < 2 cm
    (measured 0.23 cm, 1.05 / 1.75 cm; the completion was 2.12 cm when a mesh voxel needed two fused
    views). 3-6 min on one thread."""
    from forward3d.eval.surface import VisibilityMask, score_surface
    from forward3d.mvs import MVSConfig
    from forward3d.types import PointCloud

    scene = SyntheticScene(SyntheticConfig(num_frames=60, width=320, height=240))
    frames = list(scene.frames())
    gt = scene.surface_points(0.01)
    vis = VisibilityMask(gt.points)
    for f in frames:
        vis.update(f)
    recon = SfMBackend(threads=1, mvs=MVSConfig(fusion="tsdf")).run([f.with_(depth=None) for f in frames],
                                                                    progress=False)
    a = ate(recon.c2w, np.stack([f.c2w for f in frames]), align="sim3")
    assert a["rmse"] < 0.01, a["rmse"]
    assert recon.mesh is not None and len(recon.mesh.faces) > 10000
    m = score_surface(PointCloud(recon.mesh.vertices).transform(a["alignment"]), gt, vis.seen)
    print({k: round(float(m[k]), 4) for k in ("accuracy_median", "completion_median", "fscore@0.02", "fscore@0.05")})
    assert m["accuracy_median"] < 0.02 and m["completion_median"] < 0.02, m


@pytest.mark.skipif(not mvs_available(), reason="forward3d.mvs (dense stereo, branch mvs) is not on this branch yet")
def test_sfm_with_dense_mvs():
    """SfM poses -> forward3d.mvs.dense_reconstruct -> dense points after Sim(3) close to the true surface."""
    from forward3d.eval.surface import score_surface

    scene = SyntheticScene(SyntheticConfig(seed=0, num_frames=12, width=160, height=120))
    frames = [f.with_(depth=None) for f in scene.frames()]
    recon = SfMBackend(dense="mvs", threads=1).run(frames, progress=False)
    gt = np.stack([f.c2w for f in frames])
    # the first-pose Sim(3), not the position-only Umeyama fit: on this short, nearly straight path the
    # latter leaves the rotation about the path free (2.5 degrees here, 6 cm at the walls)
    a = ate(recon.c2w, gt, align="first-sim3")
    assert recon.points is not None and len(recon.points) > 1000
    scores = score_surface(recon.points.transform(a["alignment"]), scene.surface_points(0.02))
    assert scores["accuracy_median"] < 0.04 and scores["accuracy"] < 0.06, scores
