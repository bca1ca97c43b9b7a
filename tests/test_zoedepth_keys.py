"""The official ZoeDepth (isl-org) key names mapped onto transformers' ZoeDepth: a checkpoint generated
with the original names (from a tiny random model, the inverse map written here by hand) loads and
predicts exactly as the model it came from, 3- and 5-channel; unknown and missing keys are named."""

from __future__ import annotations

import re

import pytest
import torch

transformers = pytest.importorskip("transformers")

from test_depth_completion import _tiny_zoedepth  # noqa: E402

from forward3d.models.depth_completion import ZoeDepthCompleter, expand_input_channels  # noqa: E402
from forward3d.models.zoedepth_keys import ZOEDEPTH_KEY_MAP, convert_zoedepth_state_dict  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

_INVERSE = (  # transformers module names (as installed) -> isl-org ZoeDepth names
    (r"backbone\.(?:beit\.)?embeddings\.cls_token", "core.core.pretrained.model.cls_token"),
    (r"backbone\.(?:beit\.)?embeddings\.patch_embeddings\.projection\.(.+)", r"core.core.pretrained.model.patch_embed.proj.\1"),
    (r"backbone\.beit\.layers\.(\d+)\.layernorm_before\.(.+)", r"core.core.pretrained.model.blocks.\1.norm1.\2"),
    (r"backbone\.beit\.layers\.(\d+)\.layernorm_after\.(.+)", r"core.core.pretrained.model.blocks.\1.norm2.\2"),
    (r"backbone\.beit\.layers\.(\d+)\.lambda_(\d)", r"core.core.pretrained.model.blocks.\1.gamma_\2"),
    (r"backbone\.beit\.layers\.(\d+)\.attention\.q_proj\.bias", r"core.core.pretrained.model.blocks.\1.attn.q_bias"),
    (r"backbone\.beit\.layers\.(\d+)\.attention\.v_proj\.bias", r"core.core.pretrained.model.blocks.\1.attn.v_bias"),
    (r"backbone\.beit\.layers\.(\d+)\.attention\.o_proj\.(.+)", r"core.core.pretrained.model.blocks.\1.attn.proj.\2"),
    (r"backbone\.beit\.layers\.(\d+)\.mlp\.(fc\d)\.(.+)", r"core.core.pretrained.model.blocks.\1.mlp.\2.\3"),
    (r"backbone\.beit\.layers\.(\d+)\.relative_position_bias\.relative_position_bias_table",
     r"core.core.pretrained.model.blocks.\1.attn.relative_position_bias_table"),
    (r"neck\.reassemble_stage\.readout_projects\.(\d)\.(.+)", lambda m: f"core.core.pretrained.act_postprocess{int(m[1]) + 1}.0.project.{m[2]}"),
    (r"neck\.reassemble_stage\.layers\.(\d)\.projection\.(.+)", lambda m: f"core.core.pretrained.act_postprocess{int(m[1]) + 1}.3.{m[2]}"),
    (r"neck\.reassemble_stage\.layers\.(\d)\.resize\.(.+)", lambda m: f"core.core.pretrained.act_postprocess{int(m[1]) + 1}.4.{m[2]}"),
    (r"neck\.convs\.(\d)\.weight", lambda m: f"core.core.scratch.layer{int(m[1]) + 1}_rn.weight"),
    (r"neck\.fusion_stage\.layers\.(\d)\.projection\.(.+)", lambda m: f"core.core.scratch.refinenet{4 - int(m[1])}.out_conv.{m[2]}"),
    (r"neck\.fusion_stage\.layers\.(\d)\.residual_layer(\d)\.convolution(\d)\.(.+)",
     lambda m: f"core.core.scratch.refinenet{4 - int(m[1])}.resConfUnit{m[2]}.conv{m[3]}.{m[4]}"),
    (r"relative_head\.conv(\d)\.(.+)", lambda m: f"core.core.scratch.output_conv.{2 * (int(m[1]) - 1)}.{m[2]}"),
    (r"metric_head\.conv2\.(.+)", r"conv2.\1"),
    (r"metric_head\.(seed_bin_regressor|seed_projector)\.conv(\d)\.(.+)", lambda m: f"{m[1]}._net.{2 * (int(m[2]) - 1)}.{m[3]}"),
    (r"metric_head\.(projectors|attractors)\.(\d+)\.conv(\d)\.(.+)", lambda m: f"{m[1]}.{m[2]}._net.{2 * (int(m[3]) - 1)}.{m[4]}"),
    (r"metric_head\.conditional_log_binomial\.(.+)", r"conditional_log_binomial.\1"),
)


def _original_names(model) -> dict[str, torch.Tensor]:
    """The model's weights under the isl-org names (qkv fused, no key bias), with the buffers the original
    checkpoints carry and transformers drops, in a {"model": ...} wrapper with DataParallel prefixes."""
    sd = model.state_dict()
    if not any(".beit.layers." in k for k in sd):
        pytest.skip("the hand-written inverse map is for transformers >= 5 module names")
    out, qkv = {}, {}
    for k, v in sd.items():
        m = re.fullmatch(r"backbone\.beit\.layers\.(\d+)\.attention\.([qkv])_proj\.weight", k)
        if m:
            qkv.setdefault(int(m[1]), {})[m[2]] = v
            continue
        for pat, rep in _INVERSE:
            m = re.fullmatch(pat, k)
            if m:
                out[m.expand(rep) if isinstance(rep, str) else rep(m)] = v.clone()
                break
        else:
            raise AssertionError(f"test inverse map: no row for {k}")
    for i, d in qkv.items():
        out[f"core.core.pretrained.model.blocks.{i}.attn.qkv.weight"] = torch.cat([d["q"], d["k"], d["v"]], 0)
        out[f"core.core.pretrained.model.blocks.{i}.attn.relative_position_index"] = torch.zeros(3, dtype=torch.long)
    out["conditional_log_binomial.log_binomial_transform.k_idx"] = torch.arange(4)
    return {"model": {("module." + k if i % 2 else k): v for i, (k, v) in enumerate(out.items())}}


def _predict(model, x):
    with torch.no_grad():
        return model(pixel_values=x).predicted_depth


@pytest.mark.parametrize("channels", [3, 5])
def test_original_checkpoint_loads_and_predicts_the_same(tmp_path, channels):
    model = _tiny_zoedepth()
    if channels == 5:  # Invisible Stitch's model: [RGB, sparse / 10, mask]
        expand_input_channels(model, 5)
        with torch.no_grad():  # non-zero filters on the new channels, so that they are checked too
            model.backbone.beit.embeddings.patch_embeddings.projection.weight[:, 3:].normal_(0, 0.02)
    x = torch.rand(1, channels, 32, 32)
    ref = _predict(model, x)
    folder = tmp_path / "zoe"
    folder.mkdir()
    model.config.save_pretrained(folder)  # the architecture; the weights are the original checkpoint only
    (folder / "config.json").write_text((folder / "config.json").read_text().replace('"num_channels": 5', '"num_channels": 3'))
    torch.save(_original_names(model), folder / "ZoeD_tiny.pt")
    comp = ZoeDepthCompleter.from_pretrained(folder)
    assert comp.model.config.backbone_config.num_channels == 5  # 3-channel checkpoints are widened on load
    x5 = x if channels == 5 else torch.cat([x, torch.rand(1, 2, 32, 32)], 1)  # the new channels start at zero
    torch.testing.assert_close(_predict(comp.model, x5), ref)
    # the file itself works too (config.json beside it)
    assert ZoeDepthCompleter.from_pretrained(folder / "ZoeD_tiny.pt").model.config.backbone_config.num_channels == 5


def test_key_map_rows_and_strictness(tmp_path):
    sd = _original_names(_tiny_zoedepth())["model"]
    conv = convert_zoedepth_state_dict(sd)
    assert "backbone.encoder.layer.0.attention.attention.key.weight" in conv
    assert "backbone.encoder.layer.0.attention.attention.key.bias" not in conv  # BEiT has no key bias
    assert "neck.fusion_stage.layers.3.residual_layer1.convolution2.weight" in conv  # refinenet1 -> layer 3
    assert not any("relative_position_index" in k or "k_idx" in k for k in conv)
    assert len(ZOEDEPTH_KEY_MAP) >= 20
    bad = dict(sd)
    bad["core.core.pretrained.model.extra_token"] = torch.zeros(1)
    bad["patch_transformer.embedding_convPxP.weight"] = torch.zeros(1)  # ZoeD_NK: not covered
    with pytest.raises(ValueError, match=r"2 key\(s\).*core.core.pretrained.model.extra_token.*patch_transformer"):
        convert_zoedepth_state_dict(bad, where="x.pt")
    model = _tiny_zoedepth()
    model.config.save_pretrained(tmp_path)
    missing = _original_names(model)
    key = next(k for k in missing["model"] if k.endswith("scratch.layer2_rn.weight"))
    del missing["model"][key]
    torch.save(missing, tmp_path / "ZoeD_tiny.pt")
    with pytest.raises(ValueError, match=r"ZoeD_tiny.pt: the converted checkpoint does not fit.*missing keys: .*convs"):
        ZoeDepthCompleter.from_pretrained(tmp_path / "ZoeD_tiny.pt")
    (tmp_path / "other.pth").write_bytes(b"")
    with pytest.raises(ValueError, match="several ZoeDepth checkpoints"):
        ZoeDepthCompleter.from_pretrained(tmp_path)
    (tmp_path / "other.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="other.pth: cannot load the ZoeDepth checkpoint"):
        ZoeDepthCompleter.from_pretrained(tmp_path / "other.pth")
