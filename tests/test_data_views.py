"""Training views: K/c2w-exact crop, resize and rotation (checked by re-rendering the synthetic scene),
colour jitter, collation into tensors."""

from __future__ import annotations

import colorsys
import functools

import numpy as np
import pytest
import torch

from forward3d.data.synthetic import SyntheticScene
from forward3d.data.views import (
    View,
    ViewSample,
    _hsv_to_rgb,
    _rgb_to_hsv,
    collate_views,
    color_jitter,
    crop_resize,
    crop_to_principal_point,
    rotate90,
    valid_mask,
)
from forward3d.geometry.camera import depth_to_points


@functools.lru_cache(maxsize=4)
def _scene(w: int = 96, h: int = 72) -> SyntheticScene:
    return SyntheticScene(num_frames=4, width=w, height=h, seed=5, trajectory="handheld")


def _agree(scene, frame, image_tol=7.0):
    """The frame's image and depth match a fresh render of the scene with the frame's K and c2w.

    Tolerances: nearest-neighbour depth resampling moves samples by up to half a source pixel
    (median ~8 mm here) and Lanczos blurs texture; a focal length 3% off or a principal point half a
    pixel off doubles the errors (checked when the tolerances were set)."""
    rgb, depth = scene.render(frame.c2w, frame.K, frame.width, frame.height)
    both = (depth > 0) & (frame.depth > 0)
    assert both.mean() > 0.9
    err = np.abs(depth - frame.depth)[both]
    assert np.median(err) < 0.011 and err.mean() < 0.03
    assert np.abs(rgb.astype(float) - frame.image.astype(float)).mean() < image_tol


def test_rotate90_is_a_proper_camera():
    scene = _scene()
    f = scene.frame(1)
    r = rotate90(f)
    assert r.image.shape == (96, 72, 3) and r.depth.shape == (96, 72)
    assert np.linalg.det(r.c2w[:3, :3]) == pytest.approx(1.0)
    rgb, depth = scene.render(r.c2w, r.K, r.width, r.height)
    np.testing.assert_allclose(depth, r.depth, atol=1e-4)  # the scene seen by the rotated camera
    assert np.abs(rgb.astype(float) - r.image).mean() < 1.0
    # world points are unchanged by the rotation
    p0 = depth_to_points(f.depth, f.K, f.c2w)
    p1 = depth_to_points(r.depth, r.K, r.c2w)
    np.testing.assert_allclose(np.rot90(p0, -1), p1, atol=1e-4)


@pytest.mark.parametrize("res, aug, tol", [((64, 48), 0, 7), ((48, 48), 8, 7), ((80, 40), 4, 7),
                                          ((224, 168), 16, 12)])  # the last one upsamples: blurrier
def test_crop_resize_keeps_geometry(res, aug, tol):
    scene = _scene()
    rng = np.random.default_rng(0)
    out = crop_resize(scene.frame(2), res, rng, aug)
    assert (out.width, out.height) == res
    _agree(scene, out, tol)


def test_crop_resize_rotates_portrait_frames():
    scene = SyntheticScene(num_frames=2, width=60, height=80, seed=1)
    out = crop_resize(scene.frame(0), (64, 48), np.random.default_rng(0))
    assert (out.width, out.height) == (64, 48)
    _agree(scene, out)
    keep = crop_resize(scene.frame(0), (48, 64), np.random.default_rng(0), landscape=False)
    assert (keep.width, keep.height) == (48, 64)


def test_crop_to_principal_point():
    f = _scene().frame(0)
    K = f.K.copy()
    K[0, 2] = 60.0  # 36 px to the right border of a 96 px image
    c = crop_to_principal_point(f.with_(K=K))
    assert c.width == 72 and c.K[0, 2] == pytest.approx(36.0)
    K[0, 2] = 90.0
    with pytest.raises(ValueError, match="principal point"):
        crop_to_principal_point(f.with_(K=K))
    with pytest.raises(ValueError, match="no intrinsics"):
        crop_resize(f.with_(K=None), (32, 32))
    with pytest.raises(ValueError, match="positive resolution"):
        crop_resize(f, (0, 32))


def test_hsv_round_trip_matches_colorsys():
    rng = np.random.default_rng(1)
    x = rng.random((200, 3)).astype(np.float32)
    hsv = _rgb_to_hsv(x)
    ref = np.array([colorsys.rgb_to_hsv(*p) for p in x.astype(np.float64)])
    np.testing.assert_allclose(hsv, ref, atol=1e-5)
    np.testing.assert_allclose(_hsv_to_rgb(hsv), x, atol=1e-5)


def test_color_jitter():
    img = _scene().frame(0).image
    a = color_jitter(img, np.random.default_rng(3))
    b = color_jitter(img, np.random.default_rng(3))
    np.testing.assert_array_equal(a, b)  # a function of the generator
    assert a.shape == img.shape and a.dtype == np.uint8 and np.abs(a.astype(int) - img).mean() > 1
    same = color_jitter(img, np.random.default_rng(3), 0, 0, 0, 0)
    assert np.abs(same.astype(int) - img).max() <= 1
    grey = np.full((4, 4, 3), 100, np.uint8)
    g = color_jitter(grey, np.random.default_rng(0), 0, 0, 0, 0.5)  # hue cannot change a grey
    assert np.abs(g.astype(int) - 100).max() <= 1
    bright = color_jitter(grey, np.random.default_rng(0), 0.5, 0, 0, 0)
    assert 50 <= int(bright[0, 0, 0]) <= 150 and (bright == bright[0, 0, 0]).all()
    with pytest.raises(ValueError, match="uint8"):
        color_jitter(img.astype(np.float32), np.random.default_rng(0))
    with pytest.raises(ValueError, match="hue"):
        color_jitter(img, np.random.default_rng(0), hue=0.7)


def _view(scene, i):
    f = crop_resize(scene.frame(i), (64, 48))
    return View(f, valid_mask(f.depth), "Synthetic", "s0")


def test_view_and_collate():
    scene = _scene()
    views = [_view(scene, i) for i in range(3)]
    v = views[0]
    np.testing.assert_allclose(v.points_world(), np.nan_to_num(depth_to_points(v.depth, v.K, v.c2w), nan=0.0),
                               atol=1e-4)
    batch = collate_views([ViewSample(views, 1, index=7), ViewSample(views[::-1], 0, index=8)])
    assert batch.image.shape == (2, 3, 3, 48, 64) and batch.image.dtype == torch.float32
    assert 0.0 <= float(batch.image.min()) and float(batch.image.max()) <= 1.0
    assert batch.normalized().min() >= -1.0
    assert batch.pts3d_world.shape == (2, 3, 48, 64, 3) and batch.valid.dtype == torch.bool
    assert batch.ref_id.tolist() == [1, 0] and batch.index.tolist() == [7, 8]
    np.testing.assert_allclose(batch.pts3d_world[0, 0].numpy(), v.points_world(), atol=1e-4)
    np.testing.assert_allclose(batch.pts3d_cam[1, 2].numpy(), v.points_cam(), atol=1e-4)
    assert batch.names[1] == [views[2].name, views[1].name, views[0].name] and batch.dataset == ["Synthetic"] * 2
    other = View(crop_resize(scene.frame(0), (32, 24)), np.ones((24, 32), bool))
    with pytest.raises(ValueError, match="same number of views and image size"):
        collate_views([ViewSample(views[:1], 0), ViewSample([other], 0)])
    with pytest.raises(ValueError, match="at least one"):
        collate_views([])


def test_view_checks_its_inputs():
    f = _scene().frame(0)
    with pytest.raises(ValueError, match=r"missing \['c2w'\]"):
        View(f.with_(c2w=None), valid_mask(f.depth))
    with pytest.raises(ValueError, match="bool"):
        View(f, valid_mask(f.depth).astype(np.uint8))
