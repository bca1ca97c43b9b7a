"""``Spann3R.from_pretrained``: the official ``spann3r.pth``, safetensors, a folder or a hub id.

- ``.pth``: ``torch.load(weights_only=True)``; the ``{'model': state_dict, ...}`` wrapper of the
  official checkpoint is unwrapped (:func:`forward3d.hub.load_state_dict`).
- ``.safetensors``: safetensors (tensors only).
- a folder: ``config.json`` (optional) + one weights file (``spann3r.pth``, ``model.safetensors``...).
- a hub id ``owner/name``: through :func:`forward3d.hub.resolve_source` (fails at once with
  ``HF_HUB_OFFLINE=1``); a local path that does not exist is reported as a missing file.

Loading is strict against the reference key layout (1101 keys at full size, the DPT convs under both
``scratch.layerN_rn`` and ``scratch.layer_rn.{N-1}``). Without a config the full-size architecture
is assumed; weights of another size are refused with the sizes read from them.
"""

from __future__ import annotations

import logging
import os
import re
import warnings
from pathlib import Path
from typing import Any, Mapping

import torch

from forward3d.hub import WeightsError, find_weights_file, load_state_dict, resolve_source, strict_load

from .config import Spann3RConfig

logger = logging.getLogger(__name__)

__all__ = ["load_spann3r", "resolve_spann3r_config", "sizes_from_state_dict", "check_duplicate_keys"]

_WEIGHT_NAMES = ("spann3r.pth", "model.safetensors", "spann3r.safetensors", "model.pth", "checkpoint.pth",
                 "pytorch_model.bin")
_HUB_FILES = ("spann3r.pth", "*.safetensors", "config.json")
_DPT_DUP = re.compile(r"^(.*\.dpt\.scratch\.)layer([1-4])_rn\.weight$")


def resolve_spann3r_config(config: Spann3RConfig | Mapping[str, Any] | str | os.PathLike | None,
                           folder: Path | None = None) -> Spann3RConfig | None:
    """The config argument as a :class:`Spann3RConfig` (object, dict or ``config.json`` path), else
    ``folder/config.json`` when present, else None (= the full-size default)."""
    if isinstance(config, Spann3RConfig):
        return config
    if isinstance(config, Mapping):
        return Spann3RConfig.from_dict(config, source="config argument")
    if config is not None:
        return Spann3RConfig.from_json(config)
    if folder is not None and (folder / "config.json").is_file():
        return Spann3RConfig.from_json(folder / "config.json")
    return None


def _count(sd: Mapping[str, torch.Tensor], prefix: str) -> int:
    ids = {int(k[len(prefix):].split(".")[0]) for k in sd if k.startswith(prefix) and k[len(prefix):].split(".")[0].isdigit()}
    return max(ids) + 1 if ids else 0


def sizes_from_state_dict(sd: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """The sizes that can be read off a Spann3R state_dict (NOT the attention head counts)."""
    def shape(k: str) -> list[int] | None:
        return list(sd[k].shape) if k in sd else None

    pe = shape("dust3r.patch_embed.proj.weight")
    de = shape("dust3r.decoder_embed.weight")
    l1 = [shape(f"dust3r.downstream_head1.dpt.act_postprocess.{i}.0.weight") for i in range(4)]
    h0 = shape("dust3r.downstream_head1.dpt.head.0.weight")
    h2 = shape("dust3r.downstream_head1.dpt.head.2.weight")
    ah = shape("attn_head_1.0.weight")
    return {
        "enc_embed_dim": pe[0] if pe else None, "patch_size": pe[2] if pe else None,
        "enc_depth": _count(sd, "dust3r.enc_blocks."), "dec_embed_dim": de[0] if de else None,
        "dec_depth": _count(sd, "dust3r.dec_blocks."), "value_depth": _count(sd, "value_encoder."),
        "dpt_layer_dims": [s[0] if s else None for s in l1], "dpt_feature_dim": h0[1] if h0 else None,
        "dpt_last_dim": h2[0] if h2 else None, "attn_head_hidden": ah[0] if ah else None,
    }


def check_duplicate_keys(sd: Mapping[str, torch.Tensor], source: str) -> None:
    """The DPT convs are stored twice (``layerN_rn`` and ``layer_rn.{N-1}``): both must be equal."""
    for k in sd:
        m = _DPT_DUP.match(k)
        if m is None:
            continue
        twin = f"{m.group(1)}layer_rn.{int(m.group(2)) - 1}.weight"
        if twin in sd and (sd[twin].shape != sd[k].shape or not torch.equal(sd[twin], sd[k])):
            raise WeightsError(f"{source}: '{k}' and '{twin}' must hold the same tensor (the reference stores "
                               "each DPT conv under both names); the checkpoint is inconsistent")


def _size_diff(sd: Mapping[str, torch.Tensor], cfg: Spann3RConfig) -> dict[str, tuple[Any, Any]]:
    """``{size: (config value, weights value)}`` for every size on which they disagree."""
    found = sizes_from_state_dict(sd)
    bb = cfg.dust3r
    expected = {"enc_embed_dim": bb.enc_embed_dim, "patch_size": bb.patch_size, "enc_depth": bb.enc_depth,
                "dec_embed_dim": bb.dec_embed_dim, "dec_depth": bb.dec_depth, "value_depth": cfg.value_depth,
                "dpt_layer_dims": list(cfg.dpt.layer_dims), "dpt_feature_dim": cfg.dpt.feature_dim,
                "dpt_last_dim": cfg.dpt.last_dim, "attn_head_hidden": cfg.attn_head_hidden}
    return {k: (expected[k], found[k]) for k in expected if expected[k] != found[k]}


def _mismatch_message(source: str, sd: Mapping[str, torch.Tensor], cfg: Spann3RConfig, given: bool) -> str:
    diff = _size_diff(sd, cfg)
    what = "the given config" if given else "the full-size Spann3R config (no config was given)"
    lines = ", ".join(f"{k}: config {e} vs weights {f}" for k, (e, f) in diff.items())
    return (f"{source}: the weights do not match {what}: {lines or 'same sizes, other keys differ'}. "
            "Pass config= (a Spann3RConfig, a dict or a config.json path); the attention head counts "
            "cannot be read from the weights.")


def load_spann3r(source: str | os.PathLike, *, config: Any = None, device: str | torch.device = "cpu",
                 dtype: torch.dtype = torch.float32):
    """Build :class:`~forward3d.models.spann3r.Spann3R` and load ``source`` strictly.

    Args:
        source: ``spann3r.pth`` (the official ``{'model': ...}``), a ``.safetensors`` file, a folder,
            or a hub id.
        config: :class:`Spann3RConfig`, dict or ``config.json`` path; default: the folder's
            ``config.json``, else the full-size architecture.
        device, dtype: where and in which parameter dtype the model ends up (the checkpoint is fp32).

    Raises:
        WeightsError: missing/unreadable file, hub unreachable or offline, or mismatching keys.
    """
    from .model import Spann3R

    path = resolve_source(source, filenames=_HUB_FILES)
    weights = find_weights_file(path, _WEIGHT_NAMES) if path.is_dir() else path
    cfg_given = resolve_spann3r_config(config, path if path.is_dir() else None)
    cfg = cfg_given or Spann3RConfig()
    sd = load_state_dict(weights)
    name = str(weights)
    check_duplicate_keys(sd, name)
    with torch.device("meta"):
        model = Spann3R(cfg)
    own = model.state_dict()
    shape_ok = set(own) == set(sd) and all(tuple(own[k].shape) == tuple(sd[k].shape) for k in own)
    if not shape_ok and _size_diff(sd, cfg):
        raise WeightsError(_mismatch_message(name, sd, cfg, cfg_given is not None))
    with warnings.catch_warnings():  # strict_load's copy into meta tensors is a deliberate no-op
        warnings.filterwarnings("ignore", message=".*copying from a non-meta parameter.*")
        strict_load(model, sd, source=name)  # lists every missing / unexpected / mis-shaped key
    model.load_state_dict(sd, strict=True, assign=True)
    model.to(device=device, dtype=dtype)
    model.eval()
    return model

