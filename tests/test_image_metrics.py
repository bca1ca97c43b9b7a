import math

import numpy as np

import pytest
import torch

from forward3d.eval.image import crop_border, psnr, ssim


def test_psnr_known_values():
    a = torch.zeros(2, 8, 8, 3)
    b = a + 0.1
    assert torch.allclose(psnr(b, a), torch.full((2,), 20.0))
    assert math.isinf(psnr(a, a)[0].item())


def test_ssim_identity_and_ordering():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(1, 32, 32, 3, generator=g)
    assert torch.allclose(ssim(x, x), torch.ones(1), atol=1e-6)
    small = ssim(x, (x + 0.05 * torch.randn(x.shape, generator=g)).clamp(0, 1))
    big = ssim(x, (x + 0.3 * torch.randn(x.shape, generator=g)).clamp(0, 1))
    assert 1 > small.item() > big.item()


def test_ssim_matches_closed_form_for_constant_images():
    # constant images: sigma terms vanish, SSIM = (2 mx my + c1) / (mx^2 + my^2 + c1)
    x = torch.full((1, 16, 16, 3), 0.2, dtype=torch.float64)
    y = torch.full((1, 16, 16, 3), 0.6, dtype=torch.float64)
    c1 = 0.01**2
    expected = (2 * 0.2 * 0.6 + c1) / (0.2**2 + 0.6**2 + c1)
    assert ssim(x, y).item() == pytest.approx(expected, rel=1e-5)


def test_ssim_gradient_flows():
    x = torch.rand(1, 16, 16, 3, requires_grad=True)
    (1 - ssim(x, torch.rand(1, 16, 16, 3), padding="same").mean()).backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_crop_border_flash3d_size():
    assert crop_border(torch.zeros(256, 384, 3)).shape == (230, 344, 3)


@pytest.mark.parametrize("shape", [(40, 56, 3), (256, 256, 3), (33, 47, 1)])
def test_ssim_equals_scikit_image(shape):
    """Our SSIM (11x11 Gaussian, sigma 1.5, valid region) is skimage's with gaussian_weights=True,
    use_sample_covariance=False, data_range=1: the settings of the re10k-1view / re10k-2view protocols."""
    skm = pytest.importorskip("skimage.metrics")
    rng = np.random.default_rng(shape[0])
    a = rng.random(shape)
    b = np.clip(a + 0.1 * rng.standard_normal(shape), 0, 1)
    ref = skm.structural_similarity(a, b, channel_axis=2, gaussian_weights=True, sigma=1.5,
                                    use_sample_covariance=False, data_range=1.0)
    ours = ssim(torch.tensor(b)[None], torch.tensor(a)[None]).item()
    assert abs(ours - ref) < 1e-9, (ours, ref)
