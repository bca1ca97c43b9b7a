"""Depth backbones with tiny random transformers configs (no downloads)."""

import numpy as np
import pytest
import torch
from PIL import Image

from forward3d.models.depth import (ScaledDepth, SensorDepth, TransformersDepth, fit_inverse_depth_affine,
                                    make_depth_estimator, read_depth_file)

transformers = pytest.importorskip("transformers", reason="the [depth] extra is not installed")


def _tiny_depth_anything(path, metric: bool):
    from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation, Dinov2Config, DPTImageProcessor

    backbone = Dinov2Config(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=64,
                            patch_size=14, image_size=28, out_features=["stage1", "stage2", "stage3", "stage4"],
                            reshape_hidden_states=False)
    cfg = DepthAnythingConfig(backbone_config=backbone, fusion_hidden_size=16, head_hidden_size=8, reassemble_hidden_size=32,
                              neck_hidden_sizes=[8, 16, 32, 32], reassemble_factors=[4, 2, 1, 0.5],
                              depth_estimation_type="metric" if metric else "relative", max_depth=10)
    torch.manual_seed(0)
    DepthAnythingForDepthEstimation(cfg).save_pretrained(path)
    DPTImageProcessor(size={"height": 28, "width": 28}, keep_aspect_ratio=False, ensure_multiple_of=14,
                      do_normalize=True).save_pretrained(path)


@pytest.mark.parametrize("metric", [True, False])
def test_transformers_depth_anything_tiny(tmp_path, metric):
    _tiny_depth_anything(tmp_path, metric)
    est = make_depth_estimator(str(tmp_path))
    assert isinstance(est, TransformersDepth) and est.metric is metric
    img = torch.rand(2, 3, 40, 56)
    d = est.predict(img)
    assert d.shape == (2, 40, 56) and torch.isfinite(d).all()


def test_relative_depth_made_metric_with_reference():
    # relative inverse depth that is an exact affine function of the true inverse depth
    true = torch.linspace(1.0, 4.0, 48 * 64).reshape(1, 48, 64)

    class Rel:
        name, metric = "rel", False

        def predict(self, image, K=None):
            return 3.0 * (1.0 / true) - 0.2

    s, t = fit_inverse_depth_affine((3.0 / true - 0.2)[0], true[0])
    assert s == pytest.approx(1 / 3, rel=1e-6) and t == pytest.approx(0.2 / 3, rel=1e-5)
    sparse = true[0].clone()
    sparse[::2] = 0  # half the reference missing
    est = ScaledDepth(Rel(), sparse)
    out = est.predict(torch.rand(1, 3, 48, 64))
    assert torch.allclose(out, true, rtol=1e-4)
    with pytest.raises(ValueError, match="scale"):
        fit_inverse_depth_affine(true[0], torch.zeros(48, 64))


def test_sensor_and_file_depth(tmp_path):
    d = np.full((6, 8), 1.5, np.float32)
    Image.fromarray((d * 1000).astype(np.uint16)).save(tmp_path / "d.png")
    got = read_depth_file(tmp_path / "d.png")
    assert np.allclose(got, 1.5)
    out = SensorDepth(got).predict(torch.zeros(1, 3, 12, 16))
    assert out.shape == (1, 12, 16) and torch.allclose(out, torch.full_like(out, 1.5))
    Image.fromarray(np.zeros((4, 4), np.uint16)).save(tmp_path / "z.png")
    with pytest.raises(ValueError, match="z.png"):
        read_depth_file(tmp_path / "z.png")


def test_offline_hub_id_and_missing_unidepth():
    with pytest.raises(ValueError, match="HF_HUB_OFFLINE"):
        make_depth_estimator("depth-anything/Depth-Anything-V2-Small-hf")
    with pytest.raises(ImportError, match="UniDepth"):
        make_depth_estimator("unidepth")
