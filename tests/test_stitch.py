"""The single-image scene loop (Invisible Stitch) on the synthetic room, a real photo, and bad input."""

from __future__ import annotations

import numpy as np
import pytest

from forward3d.data.synthetic import SyntheticScene
from forward3d.data.synthetic_camera import look_at
from forward3d.models.depth_completion import AlignedCompleter
from forward3d.models.inpaint import TeleaInpainter
from forward3d.pipelines.oracle import OracleView
from forward3d.pipelines.stitch import (StitchConfig, render_rgbd, stitch_scene, stitch_yaws, yaw_c2w)
from forward3d.types import Intrinsics

W, H = 64, 48


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: see conftest.one_thread


@pytest.fixture(scope="module")
def room():
    """The synthetic room seen from its centre at 1.5 m, looking horizontally; GT = "monocular" depth."""
    scene = SyntheticScene(num_frames=1, num_boxes=4)
    K = Intrinsics.from_fov(W, H, 70.0).K
    c0 = look_at(np.array([[0.0, 1.5, 0.0]]), np.array([[0.0, 1.5, 1.0]]))[0]
    oracle = OracleView(scene, c0, K, W, H)
    image, depth = oracle.render(np.eye(4))
    return oracle, K, image, depth


def test_schedules():
    assert stitch_yaws("single") == [0.0]
    assert stitch_yaws("stage", 25.0) == [0.0, 25.0, -25.0]
    y = stitch_yaws("360", 25.0)
    assert y[:3] == [0.0, 25.0, -25.0] and y[-3:] == [175.0, -175.0, 180.0] and len(y) == 16
    assert stitch_yaws("360", 30.0)[-1] == 180.0  # the two sides meet once behind the camera
    R = yaw_c2w(90.0)[:3, :3]
    np.testing.assert_allclose(R @ [0, 0, 1.0], [1.0, 0, 0], atol=1e-12)  # + = turn right (OpenCV x)
    with pytest.raises(ValueError, match="mode"):
        stitch_yaws("orbit")


@pytest.mark.parametrize("mode, held_out", [("stage", [12.5, -12.5, -30.0]),
                                            ("360", [12.5, -62.5, 112.5, -150.0, 180.0])])
def test_closed_scene_depth_at_held_out_cameras(room, mode, held_out):
    oracle, K, image, depth = room
    res = stitch_scene(image, K, depth, AlignedCompleter(oracle), oracle, mode=mode, fit_steps=20, progress=False)
    assert [v.yaw for v in res.views] == stitch_yaws(mode)
    assert all(v.num_new > 0 for v in res.views[:3])

    def colour_error(g):  # mean L1 of the renders against the TRUE colours at the held-out cameras
        return np.mean([np.abs(render_rgbd(g, yaw_c2w(y, 3.0), K, W, H)[0].astype(float)
                               - oracle.render(yaw_c2w(y, 3.0))[0]).mean() for y in held_out])

    assert colour_error(res.gaussians) < colour_error(res.gaussians_before_fit)  # the final fit helps
    for yaw in held_out:
        c2w = yaw_c2w(yaw, pitch_deg=3.0)
        _, alpha, d = render_rgbd(res.gaussians, c2w, K, W, H)
        _, gt = oracle.render(c2w)
        covered = (alpha > 0.5) & (gt > 0)
        if mode == "360" or abs(yaw) < 25:
            assert covered.mean() > 0.97, (yaw, covered.mean())  # closed: nothing missing
        err = np.abs(d - gt)[covered]
        assert np.median(err) < 0.02, (yaw, np.median(err))
    # the new regions of the generated views: completed depth against ground truth
    for v in res.views[1:]:
        _, gt = oracle.render(v.c2w)
        new = ~v.known
        if new.any():
            assert np.median(np.abs(v.depth[new] - gt[new])) < 0.02, v.yaw


def _seam_jump(view, depth=None) -> float:
    """Median |log depth step| between a new pixel and its known 4-neighbours."""
    d, k = (view.depth if depth is None else depth).astype(np.float64), view.known
    steps = []
    for a, b, ka, kb in ((d[:, 1:], d[:, :-1], k[:, 1:], k[:, :-1]), (d[1:], d[:-1], k[1:], k[:-1])):
        pair = ka != kb
        steps.append(np.abs(np.log(a[pair] / b[pair])))
    return float(np.median(np.concatenate(steps)))


def test_seams_are_continuous_and_unaligned_are_not(room):
    """Depth discontinuity along the inpainting mask boundary: the aligned completion joins the known
    depth (as the true surface does); an unaligned monocular estimate steps."""
    oracle, K, image, depth = room
    wrong = OracleView(oracle.scene, oracle.source_c2w, K, W, H, depth_scale=1.3, depth_shift=0.2)
    aligned = stitch_scene(image, K, depth, AlignedCompleter(wrong), oracle, mode="stage", fit_steps=0, progress=False)

    class Unaligned(AlignedCompleter):  # the raw estimate pasted in: no alignment, no seam blend
        def complete(self, image, sparse_depth, mask, K=None, c2w=None):
            return np.where(mask, sparse_depth, wrong(image, K, c2w)).astype(np.float32)

    raw = stitch_scene(image, K, depth, Unaligned(), oracle, mode="stage", fit_steps=0, progress=False)
    for va, vr in zip(aligned.views[1:], raw.views[1:]):
        ja, jr = _seam_jump(va), _seam_jump(vr)
        jt = _seam_jump(va, oracle.render(va.c2w)[1])  # the true surface's own step across the same pixels
        assert ja < 1.2 * jt + 0.002 and jr > 10 * ja, (va.yaw, ja, jr, jt)


def test_real_photo_with_fallbacks(shared_dir, tmp_path):
    """hololens_000 colour + depth: the whole loop with Telea and the weight-free completion."""
    from forward3d.geometry.camera import scale_K
    from forward3d.models.depth import read_image_and_depth
    from forward3d.pipelines.stitch import resize_input, save_stitch_outputs

    root = shared_dir / "data" / "hololens_000"
    image, depth = read_image_and_depth(root / "images" / "00003.png", root / "depth" / "00003.png")
    K = np.loadtxt(root / "K.txt").reshape(3, 3)
    image, depth, K2 = resize_input(image, depth, K, 72)
    assert image.shape == (48, 72, 3) and depth.shape == (48, 72)
    np.testing.assert_allclose(K2, scale_K(K, 72 / 540, 48 / 360))
    assert (depth == 0).mean() > 0.05  # the sensor's holes are completed like unseen regions
    res = stitch_scene(image, K2, depth, AlignedCompleter(None), TeleaInpainter(), mode="stage", fit_steps=10,
                       progress=False)
    valid = depth[depth > 0]
    lo, hi = valid.min() * 0.8, valid.max() * 1.2
    for v in res.views:
        assert np.isfinite(v.depth).all() and (v.depth > lo).all() and (v.depth < hi).all()
    assert res.views[0].num_new == 48 * 72  # every pixel lifted, holes included
    assert min(v.num_new for v in res.views[1:]) > 300  # the turns added scene beside the photo
    for yaw in (20.0, -20.0):  # a scene, not a card: the turned views are covered
        _, alpha, d = render_rgbd(res.gaussians, yaw_c2w(yaw), K2, 72, 48)
        assert (alpha > 0.5).mean() > 0.95
    paths = save_stitch_outputs(res, tmp_path / "out", orbit_frames=2, video="gif", max_side=72, orbit_size=48)
    for key in ("ply", "splat", "depth", "video", "generated_1", "turn_+20"):
        assert paths[key].is_file(), key


def test_bad_input(room):
    oracle, K, image, depth = room
    comp, inp = AlignedCompleter(oracle), oracle
    with pytest.raises(ValueError, match="uint8 image"):
        stitch_scene(image.astype(np.float32), K, depth, comp, inp)
    with pytest.raises(ValueError, match="differs from the image"):
        stitch_scene(image, K, depth[:, :10], comp, inp)
    with pytest.raises(ValueError, match="positive focal"):
        stitch_scene(image, np.zeros((3, 3)), depth, comp, inp)
    with pytest.raises(ValueError, match="no known depth"):
        stitch_scene(image, K, None, AlignedCompleter(None), inp, mode="single", fit_steps=0, progress=False)
    with pytest.raises(ValueError, match="--mode"):
        StitchConfig(image="x.png", mode="orbit")
    with pytest.raises(ValueError, match="--step-deg"):
        StitchConfig(image="x.png", step_deg=0)
    with pytest.raises(ValueError, match="give one of them"):
        StitchConfig(image="x.png", depth="d.png", depth_model="m")
    with pytest.raises(ValueError, match="whole image"):
        TeleaInpainter().inpaint(image, np.ones((H, W), bool))
    with pytest.raises(ValueError, match="mask of shape"):
        TeleaInpainter().inpaint(image, np.ones((3, 3), bool))
    from forward3d.models.inpaint import make_inpainter

    # without diffusers: the extra to install; with it: the folder that is not a diffusers folder
    with pytest.raises((ImportError, ValueError), match=r"forward3d\[gen\]|model_index.json"):
        make_inpainter("/nonexistent/sd2-inpainting")


def test_cli_scene(room, tmp_path):
    from forward3d.cli import main
    from forward3d.io.video import write_png

    oracle, K, image, depth = room
    write_png(tmp_path / "room.png", image)
    np.save(tmp_path / "room.npy", depth)
    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
    out = tmp_path / "scene"
    rc = main(["scene", str(tmp_path / "room.png"), "--mode", "stage", "--depth", str(tmp_path / "room.npy"),
               "--intrinsics", str(fx), str(fy), str(cx), str(cy), "--fit-steps", "5", "--orbit-frames", "2",
               "--video", "gif", "--view-size", "64", "--orbit-size", "48", "--out", str(out), "--no-progress"])
    assert rc == 0
    import json

    summary = json.loads((out / "summary.json").read_text())
    assert summary["mode"] == "stage" and summary["yaws"] == [0.0, 25.0, -25.0]
    assert summary["num_gaussians"] > W * H
    assert (out / "scene.ply").is_file() and (out / "orbit.gif").is_file()
    assert len(list((out / "generated").glob("*_yaw*.png"))) == 6  # 3 views + their depth
    # bad input: one line, exit status 2
    assert main(["scene", str(tmp_path / "missing.png"), "--depth", str(tmp_path / "room.npy"),
                 "--out", str(tmp_path / "x")]) == 2


def test_plane_depth_is_unbiased_where_expected_depth_is_not(room):
    """The rasterizer's centre depth leans toward the camera on slanted surfaces; the plane depth of
    surface-aligned discs is exact on the room's planes (the loop would otherwise drift)."""
    from forward3d.pipelines.stitch import lift_view

    oracle, K, image, depth = room
    g = lift_view(image, depth, np.ones((H, W), bool), K, np.eye(4))
    c2w = yaw_c2w(15.0)
    _, gt = oracle.render(c2w)
    _, a, plane = render_rgbd(g, c2w, K, W, H, depth_mode="plane")
    _, _, expected = render_rgbd(g, c2w, K, W, H, depth_mode="expected")
    cov = (a > 0.5) & (gt > 0)
    bias_plane, bias_exp = np.median((plane - gt)[cov]), np.median((expected - gt)[cov])
    assert abs(bias_plane) < 1e-3 and bias_exp < -3e-3, (bias_plane, bias_exp)
    assert np.median(np.abs(plane - gt)[cov]) < 1e-3


def test_loop_on_every_device(room, device):
    """The loop renders and fits where the Gaussians live (CUDA when a GPU is present)."""
    oracle, K, image, depth = room
    res = stitch_scene(image, K, depth, AlignedCompleter(oracle), oracle, mode="stage", fit_steps=3,
                       progress=False, device=device)
    assert res.gaussians.means.device.type == "cpu" and len(res.views) == 3
    _, alpha, d = render_rgbd(res.gaussians, yaw_c2w(12.5), K, W, H)
    _, gt = oracle.render(yaw_c2w(12.5))
    assert np.median(np.abs(d - gt)[alpha > 0.5]) < 0.02
