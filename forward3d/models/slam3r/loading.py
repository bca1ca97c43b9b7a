"""``from_pretrained`` for the SLAM3R networks.

Sources: a local folder laid out like the HF repo (``config.json`` + ``model.safetensors``), a single
``.safetensors`` / ``.pth`` file (config from ``config=``, a sibling ``config.json`` or the published
full-size default), or a hub id (``siyan824/slam3r_i2p``) through :func:`forward3d.hub.resolve_source`.
Loading is strict: any missing, unexpected or mis-shaped key raises :class:`WeightsError`, except in
the explicit ``init_from_dust3r`` mode.
"""

from __future__ import annotations

import logging
import os
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from forward3d.hub import WeightsError, find_weights_file, load_state_dict, resolve_source, strict_load

from .config import SLAM3RNetConfig

logger = logging.getLogger(__name__)

__all__ = ["load_pretrained", "dust3r_to_slam3r", "resolve_config"]

_WEIGHT_NAMES = ("model.safetensors", "pytorch_model.bin", "model.pth", "checkpoint.pth")


def dust3r_to_slam3r(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a DUSt3R state_dict for SLAM3R: ``dec_blocks.`` -> ``mv_dec_blocks1.``,
    ``dec_blocks2.`` -> ``mv_dec_blocks2.`` (heads ``downstream_head1/2`` keep their names)."""
    out = {}
    for k, v in state_dict.items():
        if k.startswith("dec_blocks."):
            k = "mv_dec_blocks1." + k[len("dec_blocks."):]
        elif k.startswith("dec_blocks2."):
            k = "mv_dec_blocks2." + k[len("dec_blocks2."):]
        out[k] = v
    return out


def _default_config(cls: type) -> SLAM3RNetConfig:
    return SLAM3RNetConfig(need_encoder=cls.__name__ != "Local2World")


def resolve_config(cls: type, weights: Path, config: SLAM3RNetConfig | Mapping[str, Any] | str | os.PathLike | None) -> SLAM3RNetConfig:
    """Config for ``weights``: the ``config`` argument, else ``config.json`` beside it, else the
    published full-size default of ``cls``."""
    if isinstance(config, SLAM3RNetConfig):
        return config
    if isinstance(config, Mapping):
        return SLAM3RNetConfig.from_dict(config, source="config argument")
    if config is not None:
        return SLAM3RNetConfig.from_json(config)
    sibling = weights.parent / "config.json"
    if sibling.is_file():
        return SLAM3RNetConfig.from_json(sibling)
    logger.info("%s: no config given and no config.json beside it; using the published full-size %s config",
                weights, cls.__name__)
    return _default_config(cls)


def _depth(sd: Mapping[str, Any], prefix: str) -> int:
    return len({k[len(prefix):].split(".")[0] for k in sd if k.startswith(prefix)})


def _check_default_fits(cls: type, cfg: SLAM3RNetConfig, sd: Mapping[str, Any], name: str) -> None:
    """A bare weights file (no config.json) gets the published full-size config only when every tensor
    fits it; otherwise refuse, saying what the weights look like (head counts and the image size cannot
    be read off the tensors, so no config is guessed)."""
    with torch.device("meta"):
        own = cls(cfg).state_dict()
    bad = [k for k in own if k in sd and tuple(sd[k].shape) != tuple(own[k].shape)]
    if not bad and set(own) == set(sd):
        return
    pe = sd.get("patch_embed.proj.weight")
    de = sd.get("decoder_embed.weight")
    seen = []
    if pe is not None:
        seen.append(f"encoder width {pe.shape[0]}, patch {pe.shape[-1]}, {_depth(sd, 'enc_blocks.')} encoder blocks")
    if de is not None:
        seen.append(f"decoder width {de.shape[0]}, {_depth(sd, 'mv_dec_blocks1.')} decoder blocks")
    raise WeightsError(
        f"{name}: no config.json beside these weights and they do not fit the published full-size "
        f"{cls.__name__} config ({len(bad)} tensors of another shape, e.g. {bad[:2]}; "
        f"{len(set(own) ^ set(sd))} keys differ){': ' + '; '.join(seen) if seen else ''}. "
        "Put the model's config.json beside the file or pass config= (head counts and the image size "
        "cannot be read off the tensors)")


def _find_weights(folder: Path) -> Path:
    return find_weights_file(folder, _WEIGHT_NAMES)


def load_pretrained(cls: type, source: str | os.PathLike, *, config: Any = None, device: str | torch.device = "cpu",
                    dtype: torch.dtype = torch.float32, init_from_dust3r: bool = False) -> nn.Module:
    """Build ``cls`` (Image2Points or Local2World) and load weights from ``source`` strictly.

    Args:
        source: folder (``config.json`` + ``model.safetensors``), weights file (``.safetensors``;
            ``.pth`` loaded with ``weights_only=True``, ``{'model': ...}`` unwrapped), or hub id.
        config: :class:`SLAM3RNetConfig`, a dict or a path to a ``config.json``; overrides the folder's.
        device, dtype: where and in which parameter dtype the model ends up (checkpoints are fp32).
        init_from_dust3r: the source is a DUSt3R checkpoint: rename its decoder keys, initialise the
            keys it lacks (e.g. ``corr_score_*``), drop the ones SLAM3R lacks; both are logged and
            stored in ``model.load_report``.

    Raises:
        WeightsError: unreadable file, hub unreachable/offline, or mismatching keys (listed).
    """
    path = resolve_source(source)
    weights = _find_weights(path) if path.is_dir() else path
    if path.is_dir() and config is None and (path / "config.json").is_file():
        cfg = SLAM3RNetConfig.from_json(path / "config.json")
    else:
        cfg = resolve_config(cls, weights, config)
    sd = load_state_dict(weights)
    name = str(weights)
    if not init_from_dust3r and config is None and not (weights.parent / "config.json").is_file() and not (
            path.is_dir() and (path / "config.json").is_file()):
        from .depth_input import PATCH_KEY, depth_channels_of

        if PATCH_KEY in sd:  # an RGB-D checkpoint (3 + k input channels) of the published architecture
            cfg = replace(cfg, depth_channels=depth_channels_of(sd))
        _check_default_fits(cls, cfg, sd, name)
    if init_from_dust3r:
        sd = dust3r_to_slam3r(sd)
        model = cls(cfg)
        model.init_weights()
        own = model.state_dict()
        missing = sorted(set(own) - set(sd))
        unexpected = sorted(set(sd) - set(own))
        shapes = [f"{k}: checkpoint {list(sd[k].shape)} vs model {list(own[k].shape)}"
                  for k in sorted(set(own) & set(sd)) if sd[k].shape != own[k].shape]
        if shapes:
            raise WeightsError(f"{name}: DUSt3R checkpoint shapes do not match {cls.__name__}: {shapes[:20]}")
        model.load_state_dict({k: v for k, v in sd.items() if k in own}, strict=False)
        model.load_report = {"initialised": missing, "ignored": unexpected}
        logger.warning("%s: DUSt3R init of %s: %d keys initialised (%s), %d checkpoint keys ignored (%s)",
                       name, cls.__name__, len(missing), _short(missing), len(unexpected), _short(unexpected))
    else:
        with torch.device("meta"):
            model = cls(cfg)
        with warnings.catch_warnings():  # strict_load's copy into meta tensors is a deliberate no-op
            warnings.filterwarnings("ignore", message=".*copying from a non-meta parameter.*")
            strict_load(model, sd, source=name)  # raises WeightsError listing every mismatch
        model.load_state_dict(sd, strict=True, assign=True)
        model.load_report = {"initialised": [], "ignored": []}
    model.to(device=device, dtype=dtype)
    model.eval()
    return model


def _short(keys: list[str]) -> str:
    prefixes = sorted({k.split(".")[0] for k in keys})
    return ", ".join(prefixes) if prefixes else "none"
