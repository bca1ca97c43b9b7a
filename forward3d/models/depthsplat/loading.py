"""``DepthSplat.from_pretrained``: released ``depthsplat-gs-*.pth``, safetensors, a folder or a hub id.

- ``.pth``: ``torch.load(weights_only=True)``; a ``state_dict`` / ``model`` wrapper is unwrapped
  (:func:`forward3d.hub.load_state_dict`). Keys are the reference's ``encoder.``-prefixed ones; an
  encoder-level state_dict (``depth_predictor.*``, no prefix) is accepted too.
- ``.safetensors``: tensors only.
- a folder: ``config.json`` (optional, :meth:`DepthSplatConfig.to_dict` or a reference ``encoder_cfg``) +
  one weights file.
- a hub id ``owner/name``: through :func:`forward3d.hub.resolve_source` (fails at once offline).

Without a config the architecture is read off the weights (ViT width and depth, scales, DPT branch, UNet
and head widths, transformer depth); the Gaussian scale clamp, which the weights do not show, is that of
the released model with the same architecture (0.1 for the small high-res model, 3 otherwise). Loading is
strict: every missing, unexpected or mis-shaped key is listed.
"""

from __future__ import annotations

import logging
import os
import re
import warnings
from pathlib import Path
from typing import Any, Mapping

import torch

from forward3d.hub import WeightsError, find_weights_file, load_state_dict, read_json_config, resolve_source, strict_load

from .config import PRESETS, VIT_TABLE, DepthSplatConfig, depthsplat_config

logger = logging.getLogger(__name__)

__all__ = ["load_depthsplat", "config_from_state_dict", "normalise_keys"]

_WEIGHT_NAMES = ("model.safetensors", "depthsplat.safetensors", "depthsplat.pth", "model.pth", "checkpoint.pth")
_HUB_FILES = ("*.safetensors", "*.pth", "config.json")
_P = "encoder.depth_predictor."


def normalise_keys(sd: Mapping[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
    """The encoder's ``encoder.``-prefixed keys of a checkpoint (other top-level entries are dropped)."""
    if any(k.startswith("encoder.") for k in sd):
        rest = sorted({k.split(".")[0] for k in sd if not k.startswith("encoder.")})
        if rest:
            logger.info("%s: ignoring non-encoder entries %s", source, rest)
        return {k: v for k, v in sd.items() if k.startswith("encoder.")}
    if any(k.startswith("depth_predictor.") for k in sd):
        return {"encoder." + k: v for k, v in sd.items()}
    if any(k.startswith(("backbone.", "pretrained.", "transformer.")) for k in sd):
        raise WeightsError(f"{source}: this is a depth-only checkpoint (depthsplat-depth-*.pth: the depth predictor "
                           "without the Gaussian head); DepthSplat needs a depthsplat-gs-* checkpoint")
    raise WeightsError(f"{source}: not a DepthSplat checkpoint (no 'encoder.depth_predictor.*' keys; found e.g. "
                       f"{sorted(sd)[:3]})")


def _shape(sd: Mapping[str, torch.Tensor], key: str, source: str) -> tuple[int, ...]:
    if key not in sd:
        raise WeightsError(f"{source}: missing key '{key}', cannot infer the DepthSplat architecture; pass config=")
    return tuple(sd[key].shape)


def _count(sd: Mapping[str, torch.Tensor], prefix: str) -> int:
    ids = {int(m.group(1)) for k in sd if (m := re.match(re.escape(prefix) + r"(\d+)\.", k))}
    return max(ids) + 1 if ids else 0


def config_from_state_dict(sd: Mapping[str, torch.Tensor], source: str = "checkpoint") -> DepthSplatConfig:
    """Infer the :class:`DepthSplatConfig` of ``encoder.``-prefixed weights."""
    dim = _shape(sd, _P + "pretrained.patch_embed.proj.weight", source)[0]
    depth = _count(sd, _P + "pretrained.blocks.")
    vit = next((name for name, (v, _, _) in VIT_TABLE.items() if v.embed_dim == dim and v.depth == depth), None)
    if vit is None:
        raise WeightsError(f"{source}: DINOv2 width {dim} with {depth} blocks is none of the known ViTs "
                           f"({', '.join(f'{n}: {v.embed_dim}/{v.depth}' for n, (v, _, _) in VIT_TABLE.items())})")
    scales = 2 if any(k.startswith(_P + "mv_pyramid.") for k in sd) else 1
    cp0 = _shape(sd, _P + "upsampler.concat_projects.0.weight", source)
    extra = cp0[1] - cp0[0]  # CNN (+ mv, depth) channels joined at the 1/2 level
    branch = {(1, 160): (4, 4), (2, 225): (2, 4), (1, 64): (8, 8), (2, 64): (4, 8)}.get((scales, extra))
    if branch is None:
        raise WeightsError(f"{source}: the depth upsampler's first projection ({list(cp0)}) matches no known DPT branch")
    head = _shape(sd, "encoder.gaussian_head.2.weight", source)[0]
    sh = {10 + 3 * (d + 1) ** 2: d for d in range(3)}.get(head)
    if sh is None:
        raise WeightsError(f"{source}: Gaussian head with {head} channels (expected 13, 22 or 37)")
    kw: dict[str, Any] = dict(
        vit_type=vit, num_scales=scales, upsample_factor=branch[0], lowest_feature_resolution=branch[1],
        num_transformer_layers=_count(sd, _P + "transformer.layers."),
        num_depth_candidates=_shape(sd, _P + "depth_head.0.2.weight", source)[0],
        unet_channels=_shape(sd, _P + "regressor.0.0.weight", source)[0],
        gaussian_regressor_channels=_shape(sd, "encoder.gaussian_regressor.0.weight", source)[0], sh_degree=sh)
    arch = ("vit_type", "num_scales", "upsample_factor", "lowest_feature_resolution")
    for name, preset in PRESETS.items():
        ref = depthsplat_config(name)
        if all(getattr(ref, a) == kw[a] for a in arch):
            kw.setdefault("scale_max", preset.get("scale_max", ref.scale_max))
            break
    return DepthSplatConfig(**kw)


def _resolve_config(config: Any, folder: Path | None) -> DepthSplatConfig | None:
    if isinstance(config, DepthSplatConfig):
        return config
    if isinstance(config, Mapping):
        return DepthSplatConfig.from_dict(config)
    if isinstance(config, str) and config in PRESETS:
        return depthsplat_config(config)
    if config is not None:
        d = read_json_config(config)
        return DepthSplatConfig.from_dict(d.get("encoder_cfg", d))
    if folder is not None and (folder / "config.json").is_file():
        d = read_json_config(folder / "config.json")
        return DepthSplatConfig.from_dict(d.get("encoder_cfg", d))
    return None


def load_depthsplat(source: str | os.PathLike, config: Any = None, map_location: str | torch.device = "cpu"):
    """Build :class:`~forward3d.models.depthsplat.DepthSplat` and load ``source`` strictly (eval mode, fp32).

    Args:
        source: a ``.pth`` / ``.safetensors`` file, a folder, or a hub id.
        config: a :class:`DepthSplatConfig`, a preset name (``small``, ``base``...), a dict or a
            ``config.json`` path; default: the folder's ``config.json``, else read off the weights.
        map_location: device of the loaded model.

    Raises:
        WeightsError: missing/unreadable file, hub unreachable or offline, or mismatching keys.
    """
    from .model import DepthSplat

    path = resolve_source(source, filenames=_HUB_FILES)
    weights = find_weights_file(path, _WEIGHT_NAMES) if path.is_dir() else path
    name = str(weights)
    sd = normalise_keys(load_state_dict(weights), name)
    cfg = _resolve_config(config, path if path.is_dir() else None) or config_from_state_dict(sd, name)
    with torch.device("meta"):
        model = DepthSplat(cfg)
    with warnings.catch_warnings():  # strict_load's copy into meta tensors is a deliberate no-op
        warnings.filterwarnings("ignore", message=".*copying from a non-meta parameter.*")
        strict_load(model, sd, source=name)
    model.load_state_dict({k: v.float() for k, v in sd.items()}, strict=True, assign=True)
    return model.to(map_location).eval()
