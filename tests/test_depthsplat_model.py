"""DepthSplat: numeric parity with ``cvg/depthsplat`` on every fixture case, the released key manifests,
``from_pretrained`` and input checks.

Fixtures: ``../shared/fixtures/depthsplat`` (read in place; 35 MB). Tolerances are the per-tensor ``atol``
of ``cases.json``; integer tensors must match exactly.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from forward3d.geometry.quaternion import quat_to_rotmat_torch
from forward3d.hub import WeightsError
from forward3d.models.depthsplat import DepthSplat, DepthSplatConfig, depthsplat_config
from forward3d.models.depthsplat.gaussians import wigner_d
from forward3d.models.depthsplat.loading import config_from_state_dict
from forward3d.types import Gaussians


@pytest.fixture(scope="module")
def fx(shared_dir) -> Path:
    return shared_dir / "fixtures" / "depthsplat"


@pytest.fixture(scope="module")
def primary_weights(fx) -> dict[str, torch.Tensor]:
    return load_file(str(fx / "weights.safetensors"))


@pytest.fixture(scope="module")
def variant_weights(fx, primary_weights) -> dict[str, torch.Tensor]:
    delta = load_file(str(fx / "variant_tiny_1scale" / "weights_delta.safetensors"))
    keys = json.loads((fx / "variant_tiny_1scale" / "weights_keys.json").read_text())["all_keys_in_state_dict_order"]
    return {k: delta[k] if k in delta else primary_weights[k] for k in keys}


def _model(name: str, weights: dict[str, torch.Tensor]) -> DepthSplat:
    m = DepthSplat(depthsplat_config(name)).eval()
    m.load_state_dict(weights, strict=True)
    return m


@pytest.fixture(scope="module")
def tiny2(primary_weights) -> DepthSplat:
    return _model("tiny_2scale", primary_weights)


@pytest.fixture(scope="module")
def tiny1(variant_weights) -> DepthSplat:
    return _model("tiny_1scale", variant_weights)


def _outputs(model: DepthSplat, case: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], object]:
    n_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.no_grad():
            o = model(case["in/image"], case["in/intrinsics"], case["in/extrinsics"], case["in/near"], case["in/far"])
    finally:
        torch.set_num_threads(n_threads)
    mid, r = o.intermediates, o.raw
    v = case["in/image"].shape[1]
    got = {
        "out/depths": o.depths, "out/means": r.means, "out/opacities": r.opacities, "out/scales": r.scales,
        "out/rotations": r.rotations, "out/covariances": r.covariances, "out/harmonics": r.harmonics,
        "mid/cost_volume_s0": mid.cost_volumes[0], "mid/inv_depth_s0": mid.inv_depths[0],
        "mid/match_prob_s0": mid.match_probs[0], "mid/upsampler_residual": mid.upsampler_residual,
        "mid/inv_depth_s1": mid.inv_depths[-1], "mid/vit_tokens": torch.stack(mid.vit_tokens),
        "mid/mono_intermediate": torch.stack(mid.mono_intermediate), "mid/mono_s0": mid.mono[0],
        "mid/mono_s1_view0": mid.mono[-1][:1], "mid/cnn_s0": mid.cnn[-1], "mid/cnn_layer2_view0": mid.cnn[1][:1],
        "mid/mv_s0": mid.mv[0], "mid/mv_s1_view0": mid.mv[-1][:1], "mid/cost_volume_s1_view0": mid.cost_volumes[-1][:1],
        "mid/match_prob_s1_view0": mid.match_probs[-1][:1], "mid/feature_upsampler_out_view0": mid.features[:1],
        "mid/gaussian_head_out_b0": mid.head_out[:v], "mid/nn_matrix": mid.nn_index,
    }
    return got, o


def _check_case(fx_dir: Path, model: DepthSplat, case_name: str, skip: tuple[str, ...] = ()) -> int:
    cases = load_file(str(fx_dir / "cases.safetensors"))
    meta = json.loads((fx_dir / "cases.json").read_text())
    case = {k[len(case_name) + 1:]: v for k, v in cases.items() if k.startswith(case_name + "/")}
    got, _ = _outputs(model, case)
    checked, failures = 0, []
    for key, ref in case.items():
        if key.startswith("in/") or key in skip:
            continue
        tol = meta[f"{case_name}/{key}"]["tolerance"]
        out = got[key]
        assert out is not None and tuple(out.shape) == tuple(ref.shape), (key, None if out is None else out.shape)
        if tol.get("exact"):
            if not torch.equal(out.to(ref.dtype), ref):
                failures.append(f"{key}: not exact")
        else:
            err = (out.double() - ref.double()).abs().max().item()
            if not err <= tol["atol"]:
                failures.append(f"{key}: max err {err:.3g} > atol {tol['atol']}")
        checked += 1
    assert not failures, failures
    return checked


_WIGNER = ("mid/sh_wigner_D1", "mid/sh_wigner_D2", "mid/sh_e3nn_angles", "mid/vit_pos_embed_interp")


def test_parity_case_a_every_stage(fx, tiny2):
    """2 scenes x 2 views, per-view near/far and intrinsics: all 24 stored outputs and intermediates (+ the
    positional embedding and Wigner-D below)."""
    assert _check_case(fx, tiny2, "A", skip=_WIGNER) == 24


def test_parity_case_b_three_views(fx, tiny2):
    assert _check_case(fx, tiny2, "B") == 9


def test_parity_case_c_four_views_nearest_two(fx, tiny2):
    """V > 3: each view matches its 2 nearest cameras (``nn_matrix`` exact)."""
    assert _check_case(fx, tiny2, "C") == 6


def test_parity_variant_one_scale(fx, tiny1):
    """The one-scale code path of the released small model (DPT branch ``upsample 4, 1 scale``)."""
    assert _check_case(fx / "variant_tiny_1scale", tiny1, "A") == 8


def test_vit_pos_embed_and_wigner_d(fx, tiny2):
    cases = load_file(str(fx / "cases.safetensors"))
    meta = json.loads((fx / "cases.json").read_text())
    pe = tiny2.encoder.depth_predictor.pretrained.pos_embed_for(64 // 14, 96 // 14)
    assert (pe - cases["A/mid/vit_pos_embed_interp"]).abs().max() <= meta["A/mid/vit_pos_embed_interp"]["tolerance"]["atol"]
    R = cases["A/in/extrinsics"][..., :3, :3]
    for l in (1, 2):
        ref = cases[f"A/mid/sh_wigner_D{l}"]
        assert (wigner_d(l, R) - ref).abs().max() <= meta[f"A/mid/sh_wigner_D{l}"]["tolerance"]["atol"]
    # D is a representation: D(R1 R2) = D(R1) D(R2), orthogonal
    R1, R2 = (torch.linalg.qr(torch.randn(3, 3, dtype=torch.float64))[0] for _ in range(2))
    D = lambda r: wigner_d(2, r)  # noqa: E731
    assert torch.allclose(D(R1 @ R2), D(R1) @ D(R2), atol=1e-10)
    assert torch.allclose(D(R1) @ D(R1).T, torch.eye(5, dtype=torch.float64), atol=1e-10)


def test_forward3d_gaussians_match_reference_covariances(fx, tiny2):
    cases = load_file(str(fx / "cases.safetensors"))
    case = {k[2:]: v for k, v in cases.items() if k.startswith("A/")}
    _, o = _outputs(tiny2, case)
    g = o.gaussians(1)
    assert isinstance(g, Gaussians) and len(g) == 2 * 64 * 96 and g.sh_degree == 2
    Rw = quat_to_rotmat_torch(g.quats)
    S = g.scales.diag_embed()
    cov = Rw @ S @ S @ Rw.transpose(-1, -2)
    assert (cov - cases["A/out/covariances"][1]).abs().max() < 3e-5
    assert torch.allclose(g.opacity_logits.sigmoid(), cases["A/out/opacities"][1], atol=3e-5)
    assert torch.allclose(g.sh.transpose(-1, -2), cases["A/out/harmonics"][1], atol=2e-4)
    assert torch.allclose(o.depths, cases["A/out/depths"], atol=6e-5)


# -------------------------------------------------------------------------------------------------
# manifests of the released configurations
# -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["small", "base", "large", "base_dl3dv", "small_highres"])
def test_state_dict_matches_released_manifest(fx, name):
    rows = [ln.rstrip("\n").split("\t") for ln in (fx / f"keys_full_{name}.txt").read_text().splitlines()
            if ln and not ln.startswith("#")]
    with torch.device("meta"):
        m = DepthSplat(depthsplat_config(name))
    mine = [[k, str(list(v.shape)), str(v.dtype).removeprefix("torch.")] for k, v in m.state_dict().items()]
    assert mine == rows  # same keys, shapes, dtypes and order
    cfg = json.loads((fx / f"config_full_{name}.json").read_text())
    assert sum(v.numel() for v in m.state_dict().values()) == cfg["num_params"]
    # the reference encoder_cfg gives the same configuration, and the weights infer it back
    assert DepthSplatConfig.from_dict(cfg["encoder_cfg"]).vit_type == depthsplat_config(name).vit_type
    assert config_from_state_dict(m.state_dict()) == depthsplat_config(name)


# -------------------------------------------------------------------------------------------------
# from_pretrained
# -------------------------------------------------------------------------------------------------
def test_from_pretrained_formats(tmp_path, fx, primary_weights, tiny2):
    x = torch.rand(1, 2, 3, 64, 96)
    K = torch.tensor([[1.0, 0, 0.5], [0, 1.5, 0.5], [0, 0, 1]]).expand(1, 2, 3, 3)
    c2w = torch.eye(4).repeat(1, 2, 1, 1)
    c2w[0, 1, 0, 3] = 0.2
    with torch.no_grad():
        ref = tiny2(x, K, c2w).depths
    enc = {k[len("encoder."):]: v for k, v in primary_weights.items()}
    files = {
        "st": fx / "weights.safetensors",
        "plain": tmp_path / "plain.pth", "sd": tmp_path / "wrapped_sd.pth", "model": tmp_path / "wrapped_model.pth",
        "noprefix": tmp_path / "encoder_only.pth",
    }
    torch.save(primary_weights, files["plain"])
    torch.save({"state_dict": primary_weights, "epoch": 3}, files["sd"])
    torch.save({"model": primary_weights}, files["model"])
    torch.save(enc, files["noprefix"])
    folder = tmp_path / "folder"
    folder.mkdir()
    save_file(primary_weights, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps(depthsplat_config("tiny_2scale").to_dict()))
    for src in [*files.values(), folder]:
        m = DepthSplat.from_pretrained(src)  # architecture inferred from the weights (or folder config)
        assert m.cfg == depthsplat_config("tiny_2scale") and not m.training
        with torch.no_grad():
            assert torch.equal(m(x, K, c2w).depths, ref), src


def test_from_pretrained_errors(tmp_path, primary_weights):
    with pytest.raises(WeightsError, match="no such file"):
        DepthSplat.from_pretrained(tmp_path / "missing.pth")
    with pytest.raises(WeightsError, match="HF_HUB_OFFLINE"):
        DepthSplat.from_pretrained("someone/depthsplat-gs-small")
    bad = dict(primary_weights)
    bad.pop("encoder.gaussian_head.0.bias")
    bad["encoder.extra.weight"] = torch.zeros(1)
    p = tmp_path / "bad.safetensors"
    save_file(bad, str(p))
    with pytest.raises(WeightsError, match=r"missing keys \(1\)[\s\S]*gaussian_head.0.bias[\s\S]*unexpected keys"):
        DepthSplat.from_pretrained(p, config="tiny_2scale")
    with pytest.raises(WeightsError, match="shape mismatches"):
        DepthSplat.from_pretrained(_save(tmp_path, primary_weights), config="tiny_1scale")
    depth_only = {k[len("encoder.depth_predictor."):]: v for k, v in primary_weights.items()
                  if k.startswith("encoder.depth_predictor.")}
    torch.save({"model": depth_only}, tmp_path / "depth.pth")
    with pytest.raises(WeightsError, match="depth-only checkpoint"):
        DepthSplat.from_pretrained(tmp_path / "depth.pth")
    torch.save({"model": {"x": torch.zeros(1)}, "cfg": {"a": 1}}, tmp_path / "other.pth")
    with pytest.raises(WeightsError, match="not a DepthSplat checkpoint"):
        DepthSplat.from_pretrained(tmp_path / "other.pth")


def _save(tmp_path: Path, sd: dict[str, torch.Tensor]) -> Path:
    p = tmp_path / "good.safetensors"
    save_file(sd, str(p))
    return p


# -------------------------------------------------------------------------------------------------
# inputs
# -------------------------------------------------------------------------------------------------
def test_bad_inputs(tiny2):
    x = torch.rand(1, 2, 3, 64, 96)
    K = torch.eye(3).expand(1, 2, 3, 3)
    c2w = torch.eye(4).expand(1, 2, 4, 4)
    with pytest.raises(ValueError, match="multiples of 16"):
        tiny2(torch.rand(1, 2, 3, 60, 96), K, c2w)
    with pytest.raises(ValueError, match="at least 2 views"):
        tiny2(x[:, :1], K[:, :1], c2w[:, :1])
    with pytest.raises(ValueError, match="intrinsics"):
        tiny2(x, torch.eye(3).expand(1, 3, 3, 3), c2w)
    with pytest.raises(ValueError, match="near/far"):
        tiny2(x, K, c2w, near=2.0, far=1.0)
    with pytest.raises(ValueError, match="vit_type"):
        DepthSplatConfig(vit_type="vitx")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="DPT branches"):
        DepthSplatConfig(num_scales=2, upsample_factor=4)
    with pytest.raises(ValueError, match="unknown DepthSplat config"):
        depthsplat_config("huge")


@pytest.mark.slow
def test_bf16_autocast_close_to_fp32(fx, tiny2, one_thread):
    """CPU bf16 autocast (fp32 weights) runs the whole network; depth stays close to fp32 (slow: ~18 s of CPU,
    bf16 matmuls are emulated on CPUs without bf16 units)."""
    cases = load_file(str(fx / "cases.safetensors"))
    args = [cases[f"B/in/{k}"] for k in ("image", "intrinsics", "extrinsics", "near", "far")]
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        o = tiny2(*args)
    d = o.depths.float()
    assert torch.isfinite(d).all() and torch.isfinite(o.raw.means.float()).all()
    rel = ((d - cases["B/out/depths"]).abs() / cases["B/out/depths"]).median()
    assert rel < 0.05
