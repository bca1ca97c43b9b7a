"""Depth completion: the aligned fallback and the ZoeDepth 5-channel surgery (tiny random config)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from forward3d.models.depth import DepthEstimator
from forward3d.models.depth_completion import (AlignedCompleter, ZoeDepthCompleter, expand_input_channels,
                                               make_depth_completer)


def _planes(h=48, w=64):
    """A slanted plane (depth 2..3 m) and an image; the right third is unknown."""
    u = np.arange(w)[None, :].repeat(h, 0)
    depth = 2.0 + u / w
    image = np.full((h, w, 3), 128, np.uint8)
    known = u < 2 * w // 3
    return image, depth, known


def test_aligned_fallback_seam_far_below_unaligned():
    image, gt, known = _planes()
    sparse = np.where(known, gt, 0.0)
    wrong = lambda img, K, c2w: 1.4 * gt + 0.3  # noqa: E731  a monocular estimate with the wrong scale and shift
    comp = AlignedCompleter(wrong)
    out = comp.complete(image, sparse, known)
    np.testing.assert_array_equal(out[known], sparse[known].astype(np.float32))
    seam = ~known & (np.arange(64)[None, :] < 2 * 64 // 3 + 3)  # the 3 unknown columns at the seam
    err_aligned = np.abs(out - gt)[seam].mean()
    err_raw = np.abs(wrong(None, None, None) - gt)[seam].mean()
    assert err_aligned < 0.02 * err_raw, (err_aligned, err_raw)
    assert comp.last_fit is not None
    # no monocular source: the known inverse depth extended, continuous at the seam
    ext = AlignedCompleter(None).complete(image, sparse, known)
    first = 2 * 64 // 3  # the first unknown column: one pixel's step of the true surface away
    assert np.abs(ext - gt)[:, first].max() < 0.025 and np.isfinite(ext).all() and (ext > 0).all()


class _Relative(DepthEstimator):
    """A relative model: predicts 5 * inverse depth + 1 (affine-invariant disparity)."""

    name, metric = "relative", False

    def __init__(self, gt):
        self.gt = torch.as_tensor(gt, dtype=torch.float32)

    def predict(self, image, K=None):
        return (5.0 / self.gt + 1.0)[None].expand(image.shape[0], -1, -1)


def test_aligned_relative_estimator_is_scaled():
    image, gt, known = _planes()
    out = AlignedCompleter(_Relative(gt)).complete(image, np.where(known, gt, 0.0), known)
    np.testing.assert_allclose(out, gt, rtol=1e-4)
    with pytest.raises(ValueError, match="relative"):  # nothing to scale it with
        AlignedCompleter(_Relative(gt)).complete(image, np.zeros_like(gt), np.zeros_like(known))


def test_completion_bad_input():
    image, gt, known = _planes()
    with pytest.raises(ValueError, match="shape"):
        AlignedCompleter(None).complete(image, gt[:, :5], known)
    with pytest.raises(ValueError, match="image"):
        AlignedCompleter(None).complete(image[..., 0], gt, known)
    with pytest.raises(ValueError, match="no known depth"):
        AlignedCompleter(None).complete(image, gt, np.zeros_like(known))
    with pytest.raises(ValueError, match="config.json"):
        make_depth_completer("/nonexistent/zoe")


def _tiny_zoedepth():
    transformers = pytest.importorskip("transformers")
    bb = transformers.BeitConfig(image_size=32, patch_size=8, num_hidden_layers=4, hidden_size=32,
                                 num_attention_heads=2, intermediate_size=37,
                                 out_features=["stage1", "stage2", "stage3", "stage4"], out_indices=[1, 2, 3, 4],
                                 use_relative_position_bias=True, reshape_hidden_states=False)
    cfg = transformers.ZoeDepthConfig(
        backbone_config=bb, neck_hidden_sizes=[16, 16, 16, 16], fusion_hidden_size=16, bottleneck_features=16,
        num_relative_features=8, bin_configurations=[{"n_bins": 8, "min_depth": 1e-3, "max_depth": 10.0, "name": "nyu"}],
        num_attractors=[4, 4, 2, 1], bin_embedding_dim=16, reassemble_factors=[4, 2, 1, 0.5], hidden_size=32,
        patch_size=8)
    torch.manual_seed(0)
    return transformers.ZoeDepthForDepthEstimation(cfg).eval()


def test_zoedepth_channel_surgery_keeps_the_monocular_output(tmp_path):
    model = _tiny_zoedepth()
    rgb = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        ref = model(pixel_values=rgb).predicted_depth
    model.save_pretrained(tmp_path / "rgb")  # a plain 3-channel ZoeDepth checkpoint
    expand_input_channels(model, 5)
    proj = model.backbone.beit.embeddings.patch_embeddings.projection
    assert proj.in_channels == 5 and model.config.backbone_config.num_channels == 5
    extra = torch.cat([rgb, torch.rand(1, 1, 32, 32), torch.ones(1, 1, 32, 32)], 1)
    with torch.no_grad():
        out = model(pixel_values=extra).predicted_depth
    torch.testing.assert_close(out, ref)  # the new channels start at zero
    with pytest.raises(ValueError, match="already has 5"):
        expand_input_channels(model, 4)
    # a 5-channel folder and a 3-channel one both load; known pixels keep their depth
    model.save_pretrained(tmp_path / "rgbd")
    for name in ("rgbd", "rgb"):
        comp = ZoeDepthCompleter.from_pretrained(tmp_path / name)
        comp.size = (32, 32)
        image = (np.random.default_rng(0).random((24, 40, 3)) * 255).astype(np.uint8)
        known = np.zeros((24, 40), bool)
        known[:, :20] = True
        sparse = np.where(known, 2.0, 0.0)
        d = comp.complete(image, sparse, known)
        assert d.shape == (24, 40) and np.isfinite(d).all() and (d > 0).all()
        assert (d[known] == 2.0).all()
        x = comp.network_input(image, sparse, known)
        assert x.shape == (1, 5, 32, 32)
        assert torch.allclose(x[0, 3].max(), torch.tensor(0.2)) and set(x[0, 4].unique().tolist()) == {0.0, 1.0}
