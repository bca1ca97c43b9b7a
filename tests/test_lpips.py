"""LPIPS-VGG (v0.1) in plain torch: key names/shapes, metric properties, loading, gradients."""

import pytest
import torch
from safetensors.torch import save_file

from forward3d.eval.lpips import LPIPS, VGG16_CONV_INDICES, expected_lpips_shapes, load_lpips

# torchvision vgg16().features (conv layers up to relu5_3) + lpips v0.1 linear layers
EXPECTED_SHAPES = {
    "features.0.weight": (64, 3, 3, 3), "features.0.bias": (64,),
    "features.2.weight": (64, 64, 3, 3), "features.2.bias": (64,),
    "features.5.weight": (128, 64, 3, 3), "features.5.bias": (128,),
    "features.7.weight": (128, 128, 3, 3), "features.7.bias": (128,),
    "features.10.weight": (256, 128, 3, 3), "features.10.bias": (256,),
    "features.12.weight": (256, 256, 3, 3), "features.12.bias": (256,),
    "features.14.weight": (256, 256, 3, 3), "features.14.bias": (256,),
    "features.17.weight": (512, 256, 3, 3), "features.17.bias": (512,),
    "features.19.weight": (512, 512, 3, 3), "features.19.bias": (512,),
    "features.21.weight": (512, 512, 3, 3), "features.21.bias": (512,),
    "features.24.weight": (512, 512, 3, 3), "features.24.bias": (512,),
    "features.26.weight": (512, 512, 3, 3), "features.26.bias": (512,),
    "features.28.weight": (512, 512, 3, 3), "features.28.bias": (512,),
    "lin0.model.1.weight": (1, 64, 1, 1), "lin1.model.1.weight": (1, 128, 1, 1),
    "lin2.model.1.weight": (1, 256, 1, 1), "lin3.model.1.weight": (1, 512, 1, 1),
    "lin4.model.1.weight": (1, 512, 1, 1),
}


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: see conftest.one_thread


@pytest.fixture(scope="module")
def random_lpips():
    torch.manual_seed(0)
    m = LPIPS()
    sd = m.state_dict_flat()
    for k in sd:  # lpips' learned linear weights are non-negative
        if k.startswith("lin"):
            sd[k] = torch.rand_like(sd[k])
    m.load_flat(sd)
    return m


def _images(n=1, size=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, size, size, generator=g) * 2 - 1


def test_key_names_and_shapes():
    assert expected_lpips_shapes() == EXPECTED_SHAPES
    assert VGG16_CONV_INDICES == (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)


def test_identity_symmetry_and_monotonic(random_lpips):
    x = _images()
    assert torch.allclose(random_lpips(x, x), torch.zeros(1), atol=1e-7)
    y = (x + 0.3 * _images(seed=1)).clamp(-1, 1)
    torch.testing.assert_close(random_lpips(x, y), random_lpips(y, x))
    d = [random_lpips(x, (x + s * _images(seed=2)).clamp(-1, 1)) for s in (0.05, 0.2, 0.8)]
    assert (d[0] > 0).all() and (d[0] < d[1]).all() and (d[1] < d[2]).all()
    # normalize=True maps [0, 1] inputs to [-1, 1]
    torch.testing.assert_close(random_lpips((x + 1) / 2, (y + 1) / 2, normalize=True), random_lpips(x, y))


def test_gradients_flow_to_inputs_not_weights(random_lpips):
    x = _images(1)
    y = _images(1, seed=3).requires_grad_()
    random_lpips(x, y).sum().backward()
    assert y.grad is not None and y.grad.abs().sum() > 0
    assert all(not p.requires_grad for p in random_lpips.parameters())


def test_load_from_separate_and_combined_files(tmp_path, random_lpips):
    sd = random_lpips.state_dict_flat()
    vgg = {k: v for k, v in sd.items() if k.startswith("features.")}
    vgg["classifier.0.weight"] = torch.zeros(4, 4)  # full torchvision vgg16 state_dict: ignored
    lin = {k: v for k, v in sd.items() if k.startswith("lin")}
    torch.save(vgg, tmp_path / "vgg16.pth")
    torch.save(lin, tmp_path / "vgg_lin.pth")
    save_file({k: v.contiguous() for k, v in sd.items()}, str(tmp_path / "combined.safetensors"))
    # the lpips.LPIPS module's own naming: net.slice{k}.{i}.*
    slices = {1: range(0, 4), 2: range(4, 9), 3: range(9, 16), 4: range(16, 23), 5: range(23, 30)}
    lp = {f"net.slice{s}.{k.split('.')[1]}.{k.split('.')[2]}": v for k, v in vgg.items() if k.startswith("features.")
          for s, r in slices.items() if int(k.split(".")[1]) in r}
    lp.update(lin)
    lp["scaling_layer.shift"] = torch.tensor([-0.030, -0.088, -0.188])[None, :, None, None]
    torch.save(lp, tmp_path / "lpips_full.pth")
    x, y = _images(), _images(seed=5)
    ref = random_lpips(x, y)
    for paths in ([tmp_path / "vgg16.pth", tmp_path / "vgg_lin.pth"], [f"{tmp_path / 'vgg_lin.pth'},{tmp_path / 'vgg16.pth'}"],
                  [tmp_path / "combined.safetensors"], [tmp_path / "lpips_full.pth"]):
        torch.testing.assert_close(load_lpips(*paths)(x, y), ref)


def test_missing_files_and_keys(tmp_path, random_lpips):
    with pytest.raises(FileNotFoundError, match="vgg16-397923af"):
        load_lpips(tmp_path / "nope.pth")
    lin = {k: v for k, v in random_lpips.state_dict_flat().items() if k.startswith("lin")}
    torch.save(lin, tmp_path / "lin.pth")
    with pytest.raises(ValueError, match="VGG16 features missing"):
        load_lpips(tmp_path / "lin.pth")
    with pytest.raises(ValueError, match="shapes differ|expected two"):
        random_lpips(_images(1), _images(2))
