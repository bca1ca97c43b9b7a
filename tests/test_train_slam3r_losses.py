"""SLAM3R training losses on analytic cases: perfect prediction, scale invariance, masks, frames."""

import math

import pytest
import torch

from forward3d.train.slam3r_losses import (ALPHA, avg_dis_scale, conf_regression_loss, i2p_loss, l2w_loss,
                                           normalize_joint, to_frame)

pytestmark = pytest.mark.usefixtures("one_thread")


def _pts(B=2, V=3, H=4, W=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    p = torch.randn(B, V, H, W, 3, generator=g)
    p[..., 2] = p[..., 2].abs() + 1.0
    return p


def test_perfect_prediction_leaves_the_conf_term():
    gt = _pts()
    valid = torch.ones(gt.shape[:-1], dtype=torch.bool)
    conf = torch.full(gt.shape[:-1], 3.0)
    r = conf_regression_loss(gt.clone(), conf, gt, valid)
    V = gt.shape[1]
    assert r.loss.item() == pytest.approx(-ALPHA * math.log(3.0) * V, rel=1e-6)
    assert max(r.regr) < 1e-6
    # alpha scales the confidence term only
    r2 = conf_regression_loss(gt.clone(), conf, gt, valid, alpha=0.5)
    assert r2.loss.item() == pytest.approx(-0.5 * math.log(3.0) * V, rel=1e-6)


def test_scale_invariance_and_the_regression_value():
    gt = _pts()
    valid = torch.ones(gt.shape[:-1], dtype=torch.bool)
    conf = torch.ones(gt.shape[:-1])  # log 1 = 0: loss = sum over views of the mean distance
    # a prediction at another scale per sample is perfect after the joint normalisation
    scaled = gt * torch.tensor([0.1, 7.0]).view(2, 1, 1, 1, 1)
    assert conf_regression_loss(scaled, conf, gt, valid).loss.item() == pytest.approx(0.0, abs=1e-5)
    # ... but not when the prediction keeps its scale (the L2W mode)
    assert conf_regression_loss(scaled, conf, gt, valid, norm_pred=False).loss.item() > 0.1
    # a per-view offset is measured in units of the ground truth's mean distance
    off = gt.clone()
    off[..., 0] += 0.5
    r = conf_regression_loss(off, conf, gt, valid, norm_pred=False, norm_scale=torch.ones(2))
    assert r.loss.item() == pytest.approx(0.5 * gt.shape[1], rel=1e-5)
    s = avg_dis_scale(gt, valid)
    torch.testing.assert_close(s, gt.norm(dim=-1).flatten(1).mean(1))
    n, s2 = normalize_joint(gt, valid)
    torch.testing.assert_close(avg_dis_scale(n, valid), torch.ones(2))


def test_masks_exclude_invalid_pixels_everywhere():
    gt = _pts()
    valid = torch.rand(gt.shape[:-1], generator=torch.Generator().manual_seed(1)) > 0.3
    conf = torch.full(gt.shape[:-1], 2.0)
    pred = gt.clone()
    pred[~valid] = 1e6  # garbage where the depth is invalid
    gt_bad = gt.clone()
    gt_bad[~valid] = -1e6  # also in the ground truth (e.g. zero/NaN depth): ignored in the scale too
    r = conf_regression_loss(pred, conf, gt_bad, valid)
    assert r.loss.item() == pytest.approx(-ALPHA * math.log(2.0) * gt.shape[1], rel=1e-5)
    # a view without any valid pixel contributes nothing (no NaN)
    valid[:, 1] = False
    r = conf_regression_loss(pred, conf, gt_bad, valid)
    assert torch.isfinite(r.loss) and r.loss.item() == pytest.approx(-ALPHA * math.log(2.0) * 2, rel=1e-5)
    # gradients reach conf and pred on valid pixels only
    p = pred.clone().requires_grad_(True)
    c = conf.clone().requires_grad_(True)
    conf_regression_loss(p, c, gt_bad, valid).loss.backward()
    assert (c.grad[~valid] == 0).all() and (c.grad[valid] != 0).any()


def test_confidence_optimum_is_alpha_over_distance():
    """d c - alpha log c is minimal at c = alpha / d."""
    gt = _pts(B=1, V=1)
    valid = torch.ones(gt.shape[:-1], dtype=torch.bool)
    pred = gt.clone()
    pred[..., 0] += 0.1  # distance 0.1 everywhere at a fixed unit scale
    one = torch.ones(1)
    vals = {c: conf_regression_loss(pred, torch.full(gt.shape[:-1], c), gt, valid, norm_pred=False,
                                    norm_scale=one).loss.item()
            for c in (1.0, 1.5, 2.0, 2.5, 3.0)}
    assert min(vals, key=vals.get) == 2.0  # alpha / d = 0.2 / 0.1


def test_i2p_and_l2w_frames():
    B, V, H, W = 2, 3, 4, 5
    cam = _pts(B, V, H, W)  # points in the reference camera frame
    c2w = torch.eye(4).repeat(B, 1, 1)
    ang = 0.3
    c2w[:, :3, :3] = torch.tensor([[math.cos(ang), 0, math.sin(ang)], [0, 1, 0], [-math.sin(ang), 0, math.cos(ang)]])
    c2w[:, :3, 3] = torch.tensor([1.0, -2.0, 0.5])
    world = to_frame(c2w, cam)
    valid = torch.ones(B, V, H, W, dtype=torch.bool)
    conf = torch.ones(B, V, H, W)
    # I2P: a prediction in the reference camera frame (any scale) is perfect
    assert i2p_loss(cam * 3.0, conf, world, valid, c2w).loss.item() == pytest.approx(0.0, abs=1e-4)
    assert i2p_loss(world, conf, world, valid, c2w).loss.item() > 0.05
    # L2W: the prediction must come in the scene frames' scale
    s = torch.tensor([2.0, 0.5])
    pred = cam / s.view(-1, 1, 1, 1, 1)
    assert l2w_loss(pred, conf, world, valid, c2w, s).loss.item() == pytest.approx(0.0, abs=1e-4)
    assert l2w_loss(cam, conf, world, valid, c2w, s).loss.item() > 0.1


def test_shape_errors_name_the_input():
    gt = _pts()
    valid = torch.ones(gt.shape[:-1], dtype=torch.bool)
    with pytest.raises(ValueError, match="conf"):
        conf_regression_loss(gt, torch.ones(2, 3, 4), gt, valid)
