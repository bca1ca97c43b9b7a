"""The key names of the official ZoeDepth checkpoints (isl-org/ZoeDepth, ``ZoeD_M12_N.pt`` and the models
fine-tuned from it, such as Invisible Stitch's 5-channel depth completion) mapped onto transformers'
ZoeDepth modules.

The target names are those of the published transformers ZoeDepth checkpoints (``Intel/zoedepth-nyu``),
which every transformers version >= 4.40 loads (newer versions rename them on load). The table, in
order (``{i}`` a block / stage index, ``{k}`` 1..4):

====================================================================  =====================================================
original (isl-org)                                                    transformers ZoeDepth
====================================================================  =====================================================
``core.core.pretrained.model.cls_token``                              ``backbone.embeddings.cls_token``
``core.core.pretrained.model.patch_embed.proj.*``                     ``backbone.embeddings.patch_embeddings.projection.*``
``core.core.pretrained.model.blocks.{i}.norm1/norm2.*``               ``backbone.encoder.layer.{i}.layernorm_before/after.*``
``...blocks.{i}.gamma_1/gamma_2``                                     ``...layer.{i}.lambda_1/lambda_2``
``...blocks.{i}.attn.qkv.weight`` (rows q, k, v)                       ``...layer.{i}.attention.attention.query/key/value.weight``
``...blocks.{i}.attn.q_bias / v_bias`` (no key bias)                   ``...attention.attention.query.bias / value.bias``
``...blocks.{i}.attn.proj.*``                                         ``...layer.{i}.attention.output.dense.*``
``...blocks.{i}.attn.relative_position_bias_table``                   ``...attention.attention.relative_position_bias.relative_position_bias_table``
``...blocks.{i}.mlp.fc1/fc2.*``                                       ``...layer.{i}.intermediate.dense/output.dense.*``
``core.core.pretrained.act_postprocess{k}.0.project.*``               ``neck.reassemble_stage.readout_projects.{k-1}.*``
``core.core.pretrained.act_postprocess{k}.3.*``                       ``neck.reassemble_stage.layers.{k-1}.projection.*``
``core.core.pretrained.act_postprocess{k}.4.*`` (k = 1, 2, 4)         ``neck.reassemble_stage.layers.{k-1}.resize.*``
``core.core.scratch.layer{k}_rn.weight``                              ``neck.convs.{k-1}.weight``
``core.core.scratch.refinenet{k}.out_conv.*``                         ``neck.fusion_stage.layers.{4-k}.projection.*``
``core.core.scratch.refinenet{k}.resConfUnit{1,2}.conv{1,2}.*``       ``neck.fusion_stage.layers.{4-k}.residual_layer{1,2}.convolution{1,2}.*``
``core.core.scratch.output_conv.{0,2,4}.*``                           ``relative_head.conv{1,2,3}.*``
``conv2.*``                                                           ``metric_head.conv2.*``
``seed_bin_regressor._net.{0,2}.*``                                   ``metric_head.seed_bin_regressor.conv{1,2}.*``
``seed_projector._net.{0,2}.*``                                       ``metric_head.seed_projector.conv{1,2}.*``
``projectors.{i}._net.{0,2}.*``                                       ``metric_head.projectors.{i}.conv{1,2}.*``
``attractors.{i}._net.{0,2}.*``                                       ``metric_head.attractors.{i}.conv{1,2}.*``
``conditional_log_binomial.mlp.{0,2}.*``                              ``metric_head.conditional_log_binomial.mlp.{0,2}.*``
====================================================================  =====================================================

Dropped (recomputed or unused by transformers): ``*.relative_position_index``, ``*.fc_norm.*``,
``core.core.pretrained.model.head.*``, ``*.k_idx``, ``*.K_minus_1``. A ``{"model": ...}`` wrapper and
``module.`` prefixes (DataParallel) are removed first. The mapping is strict: a key that matches no row,
and every key transformers reports missing, unexpected or of another shape, is named in the ValueError.
Only the single-head models (ZoeD_N / ZoeD_K; Invisible Stitch) are covered: ZoeD_NK's patch
transformer and head router are not mapped (their keys are reported as unknown).
"""

from __future__ import annotations

import re
from typing import Mapping

import torch

__all__ = ["ZOEDEPTH_KEY_MAP", "IGNORED_KEYS", "convert_zoedepth_state_dict", "unwrap_checkpoint",
           "load_original_zoedepth", "zoedepth_n_config"]

_BB = r"core\.core\.pretrained\.model\."
_BLK = _BB + r"blocks\.(\d+)\."
_L = r"backbone.encoder.layer.\1."

# (regex on the original name, replacement): the first full match wins
ZOEDEPTH_KEY_MAP: tuple[tuple[str, str], ...] = (
    (_BB + r"cls_token", "backbone.embeddings.cls_token"),
    (_BB + r"patch_embed\.proj\.(weight|bias)", r"backbone.embeddings.patch_embeddings.projection.\1"),
    (_BLK + r"norm1\.(weight|bias)", _L + r"layernorm_before.\2"),
    (_BLK + r"norm2\.(weight|bias)", _L + r"layernorm_after.\2"),
    (_BLK + r"gamma_([12])", _L + r"lambda_\2"),
    (_BLK + r"attn\.q_bias", _L + "attention.attention.query.bias"),
    (_BLK + r"attn\.v_bias", _L + "attention.attention.value.bias"),
    (_BLK + r"attn\.proj\.(weight|bias)", _L + r"attention.output.dense.\2"),
    (_BLK + r"attn\.relative_position_bias_table",
     _L + "attention.attention.relative_position_bias.relative_position_bias_table"),
    (_BLK + r"mlp\.fc1\.(weight|bias)", _L + r"intermediate.dense.\2"),
    (_BLK + r"mlp\.fc2\.(weight|bias)", _L + r"output.dense.\2"),
    (r"core\.core\.pretrained\.act_postprocess([1-4])\.0\.project\.(.+)", "neck.reassemble_stage.readout_projects.{k-1}.\\2"),
    (r"core\.core\.pretrained\.act_postprocess([1-4])\.3\.(weight|bias)", "neck.reassemble_stage.layers.{k-1}.projection.\\2"),
    (r"core\.core\.pretrained\.act_postprocess([124])\.4\.(weight|bias)", "neck.reassemble_stage.layers.{k-1}.resize.\\2"),
    (r"core\.core\.scratch\.layer([1-4])_rn\.weight", "neck.convs.{k-1}.weight"),
    (r"core\.core\.scratch\.refinenet([1-4])\.out_conv\.(weight|bias)", "neck.fusion_stage.layers.{4-k}.projection.\\2"),
    (r"core\.core\.scratch\.refinenet([1-4])\.resConfUnit([12])\.conv([12])\.(weight|bias)",
     "neck.fusion_stage.layers.{4-k}.residual_layer\\2.convolution\\3.\\4"),
    (r"core\.core\.scratch\.output_conv\.0\.(weight|bias)", r"relative_head.conv1.\1"),
    (r"core\.core\.scratch\.output_conv\.2\.(weight|bias)", r"relative_head.conv2.\1"),
    (r"core\.core\.scratch\.output_conv\.4\.(weight|bias)", r"relative_head.conv3.\1"),
    (r"conv2\.(weight|bias)", r"metric_head.conv2.\1"),
    (r"(seed_bin_regressor|seed_projector)\._net\.0\.(weight|bias)", r"metric_head.\1.conv1.\2"),
    (r"(seed_bin_regressor|seed_projector)\._net\.2\.(weight|bias)", r"metric_head.\1.conv2.\2"),
    (r"(projectors|attractors)\.(\d+)\._net\.0\.(weight|bias)", r"metric_head.\1.\2.conv1.\3"),
    (r"(projectors|attractors)\.(\d+)\._net\.2\.(weight|bias)", r"metric_head.\1.\2.conv2.\3"),
    (r"conditional_log_binomial\.mlp\.([02])\.(weight|bias)", r"metric_head.conditional_log_binomial.mlp.\1.\2"),
)

IGNORED_KEYS: tuple[str, ...] = (r".*\.relative_position_index", r".*fc_norm\..*", _BB + r"head\..*",
                                 r".*\.k_idx", r".*\.K_minus_1")

_QKV = re.compile(_BLK + r"attn\.qkv\.weight")
_COMPILED = tuple((re.compile(p), r) for p, r in ZOEDEPTH_KEY_MAP)
_IGNORED = tuple(re.compile(p) for p in IGNORED_KEYS)


def unwrap_checkpoint(obj) -> dict[str, torch.Tensor]:
    """The state dict of a loaded checkpoint: ``{"model": sd}`` / ``{"state_dict": sd}`` unwrapped,
    ``module.`` prefixes removed."""
    sd = obj
    for key in ("model", "state_dict"):
        if isinstance(sd, Mapping) and key in sd and isinstance(sd[key], Mapping):
            sd = sd[key]
    if not isinstance(sd, Mapping):
        raise ValueError(f"expected a state dict (a mapping of names to tensors), found {type(sd).__name__}")
    return {(k[len("module."):] if k.startswith("module.") else k): v for k, v in sd.items()}


def _rename(name: str) -> str | None:
    for pat, rep in _COMPILED:
        m = pat.fullmatch(name)
        if m:
            if "{k-1}" in rep or "{4-k}" in rep:
                k = int(m.group(1))
                rep = rep.replace("{k-1}", str(k - 1)).replace("{4-k}", str(4 - k))
            return m.expand(rep)
    return None


def convert_zoedepth_state_dict(sd: Mapping[str, torch.Tensor], where: str = "checkpoint") -> dict[str, torch.Tensor]:
    """Original ZoeDepth names -> transformers ZoeDepth names (the table of the module docstring).

    ``qkv`` weights ``[3D, D]`` are split into query, key and value. Raises ValueError naming every key
    that matches no row (and is not one of :data:`IGNORED_KEYS`)."""
    out: dict[str, torch.Tensor] = {}
    unknown = []
    for name, value in unwrap_checkpoint(sd).items():
        m = _QKV.fullmatch(name)
        if m:
            if value.ndim != 2 or value.shape[0] % 3:
                raise ValueError(f"{where}: {name}: expected a [3 D, D] qkv weight, found {list(value.shape)}")
            d = value.shape[0] // 3
            base = f"backbone.encoder.layer.{m.group(1)}.attention.attention."
            for j, part in enumerate(("query", "key", "value")):
                out[base + part + ".weight"] = value[j * d:(j + 1) * d].clone()
            continue
        if any(p.fullmatch(name) for p in _IGNORED):
            continue
        new = _rename(name)
        if new is None:
            unknown.append(name)
        else:
            out[new] = value
    if unknown:
        raise ValueError(f"{where}: {len(unknown)} key(s) of the original ZoeDepth checkpoint match no row of the key "
                         f"map (forward3d.models.zoedepth_keys): {', '.join(sorted(unknown)[:20])}"
                         + (" ..." if len(unknown) > 20 else ""))
    return out


def zoedepth_n_config():
    """The transformers config of ZoeD_N (BEiT-L 384 backbone, one NYU bin head of 64 bins in 1 mm - 10 m),
    for an original checkpoint given without a ``config.json``."""
    from transformers import BeitConfig, ZoeDepthConfig

    bb = BeitConfig(image_size=384, num_hidden_layers=24, hidden_size=1024, intermediate_size=4096,
                    num_attention_heads=16, use_relative_position_bias=True, reshape_hidden_states=False,
                    out_features=["stage6", "stage12", "stage18", "stage24"])
    return ZoeDepthConfig(backbone_config=bb, neck_hidden_sizes=[256, 512, 1024, 1024], bin_centers_type="softplus",
                          bin_configurations=[{"name": "nyu", "n_bins": 64, "min_depth": 1e-3, "max_depth": 10.0}])


def load_original_zoedepth(checkpoint, config=None):
    """A transformers ``ZoeDepthForDepthEstimation`` with the weights of an original ZoeDepth checkpoint file
    (``torch.load(weights_only=True)``; names mapped by :func:`convert_zoedepth_state_dict`).

    ``config``: the transformers ``ZoeDepthConfig`` (default :func:`zoedepth_n_config`); its input channels
    follow the checkpoint's patch embedding (3 = RGB, 5 = Invisible Stitch's RGB + sparse depth + mask).
    Strict: keys transformers reports missing, unexpected or of another shape raise ValueError naming them."""
    import tempfile
    from pathlib import Path

    from safetensors.torch import save_file
    from transformers import ZoeDepthForDepthEstimation

    path = Path(checkpoint)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle errors, truncated files: one message naming the file
        raise ValueError(f"{path}: cannot load the ZoeDepth checkpoint ({type(exc).__name__}: {exc})") from exc
    sd = convert_zoedepth_state_dict(obj, where=str(path))
    config = zoedepth_n_config() if config is None else config
    proj = sd.get("backbone.embeddings.patch_embeddings.projection.weight")
    if proj is None:
        raise ValueError(f"{path}: no patch embedding (core.core.pretrained.model.patch_embed.proj.weight): not a "
                         "ZoeDepth checkpoint")
    config.backbone_config.num_channels = int(proj.shape[1])
    with tempfile.TemporaryDirectory() as tmp:  # transformers' loader maps these names onto its current modules
        config.save_pretrained(tmp)
        save_file({k: v.contiguous() for k, v in sd.items()}, str(Path(tmp) / "model.safetensors"),
                  metadata={"format": "pt"})
        try:
            model, info = ZoeDepthForDepthEstimation.from_pretrained(tmp, output_loading_info=True)
        except RuntimeError as exc:  # shape mismatches
            raise ValueError(f"{path}: the weights do not fit the ZoeDepth config ({str(exc).splitlines()[0]})") from exc
    problems = {k: sorted(info.get(k) or []) for k in ("missing_keys", "unexpected_keys", "mismatched_keys")}
    if any(problems.values()):
        raise ValueError(f"{path}: the converted checkpoint does not fit the ZoeDepth config: "
                         + "; ".join(f"{k.replace('_', ' ')}: {', '.join(map(str, v[:10]))}"
                                     for k, v in problems.items() if v))
    return model.eval()
