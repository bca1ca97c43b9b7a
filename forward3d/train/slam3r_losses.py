"""Training losses of SLAM3R (I2P and L2W), as the reference's ``Jointnorm_ConfLoss(Jointnorm_Regr3D(L21))``.

For a window of ``V`` views with ground-truth points ``X`` and a validity mask (invalid depth):

1. the ground truth is expressed in one frame (I2P: the reference view's camera; L2W: the world frame
   given by the scene frames);
2. scale normalisation (``norm_mode='avg_dis'``): ``X / (sum_valid |X| / n_valid)`` where the sum runs
   jointly over the valid points of all views of a sample; the prediction is normalised the same way
   with the ground truth's masks, so the loss is invariant to the scale of either. With a fixed
   ``norm_scale`` (L2W: the scene frames fix the scale of the input) the ground truth is divided by
   it and the prediction is left as it is;
3. per pixel ``d = |P - X|_2`` (L21), confidence weighting ``c d - alpha log c`` (``alpha = 0.2``);
   the mean over the valid pixels of each view (all samples of the batch), summed over the views.

A perfect prediction leaves ``-alpha * sum_v mean_valid(log c_v)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from forward3d.checks import check_shape

__all__ = ["ConfLossResult", "avg_dis_scale", "normalize_joint", "conf_regression_loss", "i2p_loss", "l2w_loss",
           "to_frame"]

ALPHA = 0.2  # the reference's ConfLoss alpha


@dataclass
class ConfLossResult:
    """``loss`` (scalar), per-view ``regr`` (mean L21 distance over valid pixels) and ``conf_loss`` terms."""

    loss: Tensor
    regr: list[float] = field(default_factory=list)
    conf_loss: list[float] = field(default_factory=list)

    def parts(self) -> dict[str, float]:
        n = max(len(self.regr), 1)
        return {"regr": sum(self.regr) / n, "conf_loss": sum(self.conf_loss) / n}


def avg_dis_scale(pts: Tensor, valid: Tensor, eps: float = 1e-8) -> Tensor:
    """Mean distance to the origin of the valid points of each sample, over all its views.

    ``pts`` [B, V, H, W, 3], ``valid`` [B, V, H, W] bool -> [B] (clamped at ``eps``)."""
    check_shape(pts, "B V H W 3", "pts")
    check_shape(valid, "B V H W", "valid")
    d = pts.norm(dim=-1) * valid
    n = valid.flatten(1).sum(1).clamp_min(1)
    return (d.flatten(1).sum(1) / n).clamp_min(eps)


def normalize_joint(pts: Tensor, valid: Tensor) -> tuple[Tensor, Tensor]:
    """``pts / avg_dis_scale`` per sample (``[B, V, H, W, 3]``) and the scale ``[B]``."""
    s = avg_dis_scale(pts, valid)
    return pts / s.view(-1, 1, 1, 1, 1), s


def to_frame(w2c: Tensor, pts: Tensor) -> Tensor:
    """Apply one ``w2c`` per sample ``[B, 4, 4]`` to points ``[B, V, H, W, 3]``."""
    R, t = w2c[:, None, None, None, :3, :3], w2c[:, None, None, None, :3, 3]
    return (R @ pts.unsqueeze(-1)).squeeze(-1) + t


def conf_regression_loss(pred: Tensor, conf: Tensor, gt: Tensor, valid: Tensor, alpha: float = ALPHA,
                         norm_pred: bool = True, norm_scale: Tensor | None = None) -> ConfLossResult:
    """Confidence-weighted 3D regression of ``V`` views.

    Args:
        pred: ``[B, V, H, W, 3]`` predicted points, in the frame of ``gt``.
        conf: ``[B, V, H, W]`` confidences (> 0; the heads give ``1 + exp(x)``).
        gt: ``[B, V, H, W, 3]`` ground-truth points.
        valid: ``[B, V, H, W]`` bool (False: no depth / invalid depth; those pixels never count).
        alpha: weight of the ``- alpha log conf`` term.
        norm_pred: normalise the prediction by its own ``avg_dis`` (I2P); False keeps its scale (L2W).
        norm_scale: ``[B]`` fixed ground-truth scale; None: the ground truth's own ``avg_dis``.

    Returns:
        :class:`ConfLossResult`; ``loss`` is the sum over views of the mean over the valid pixels.
    """
    check_shape(pred, "B V H W 3", "pred")
    check_shape(gt, "B V H W 3", "gt")
    check_shape(conf, "B V H W", "conf")
    check_shape(valid, "B V H W", "valid")
    if pred.shape != gt.shape or conf.shape != valid.shape or conf.shape != pred.shape[:-1]:
        raise ValueError(f"conf_regression_loss: shapes differ: pred {list(pred.shape)}, gt {list(gt.shape)}, "
                         f"conf {list(conf.shape)}, valid {list(valid.shape)}")
    valid = valid.bool()
    pred, conf, gt = pred.float(), conf.float(), gt.float()
    if norm_pred:
        pred, _ = normalize_joint(pred, valid)
    if norm_scale is not None:
        gt = gt / norm_scale.float().view(-1, 1, 1, 1, 1)
    else:
        gt, _ = normalize_joint(gt, valid)
    dist = (pred - gt).norm(dim=-1)
    total = pred.new_zeros(())
    out = ConfLossResult(total)
    for v in range(pred.shape[1]):
        m = valid[:, v]
        if not bool(m.any()):
            out.regr.append(0.0)
            out.conf_loss.append(0.0)
            continue
        d, c = dist[:, v][m], conf[:, v][m]
        term = (d * c - alpha * torch.log(c)).mean()
        total = total + term
        out.regr.append(float(d.detach().mean()))
        out.conf_loss.append(float(term.detach()))
    out.loss = total
    return out


def i2p_loss(pred: Tensor, conf: Tensor, pts_world: Tensor, valid: Tensor, c2w_ref: Tensor,
             alpha: float = ALPHA) -> ConfLossResult:
    """I2P: every view's points (reference view: head 1, sources: head 2) against the ground truth in
    the reference camera frame, both scale-normalised jointly over the window.

    ``pts_world`` [B, V, H, W, 3], ``c2w_ref`` [B, 4, 4] (the reference view's camera-to-world)."""
    check_shape(c2w_ref, "B 4 4", "c2w_ref")
    gt = to_frame(torch.linalg.inv(c2w_ref.double()).float(), pts_world.float())
    return conf_regression_loss(pred, conf, gt, valid, alpha=alpha, norm_pred=True)


def l2w_loss(pred: Tensor, conf: Tensor, pts_world: Tensor, valid: Tensor, c2w_world: Tensor, scene_scale: Tensor,
             alpha: float = ALPHA) -> ConfLossResult:
    """L2W: the registered points (scene frames: head 1, keyframes: head 2) against the ground truth in the
    world frame (camera ``c2w_world`` [B, 4, 4]) divided by ``scene_scale`` [B], the scale the scene
    frames' input point maps were given (so the prediction is not renormalised: registration has to
    land in the scene frames' scale)."""
    check_shape(c2w_world, "B 4 4", "c2w_world")
    gt = to_frame(torch.linalg.inv(c2w_world.double()).float(), pts_world.float())
    return conf_regression_loss(pred, conf, gt, valid, alpha=alpha, norm_pred=False, norm_scale=scene_scale)
