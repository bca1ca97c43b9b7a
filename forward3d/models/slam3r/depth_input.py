"""RGB-D input of SLAM3R (the Slam3DR depth fusion): extra input channels and the weight surgery.

A model with ``config.depth_channels = k`` takes ``3 + k`` channels: RGB in [-1, 1], then

- ``k >= 1``: the sensor depth in metres (0 where invalid);
- ``k == 2``: its validity (1 valid, 0 invalid), so that "no depth" and "depth 0" differ.

Only the encoder's patch embedding sees the input, so turning an RGB checkpoint into an RGB-D one is
a change of ``patch_embed.proj.weight`` from ``[C, 3, p, p]`` to ``[C, 3 + k, p, p]`` with the new
input channels zero-initialised: the network's output is then exactly the RGB model's, whatever the
depth. :func:`remove_depth_channels` goes back (dropping the depth channels' weights).
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Mapping, TypeVar

import torch
from torch import Tensor

from forward3d.checks import check_shape

from .base import SLAM3RBase

logger = logging.getLogger(__name__)

__all__ = ["PATCH_KEY", "depth_channels_of", "depth_planes", "stack_depth", "add_depth_channels",
           "remove_depth_channels", "with_depth_channels"]

PATCH_KEY = "patch_embed.proj.weight"
M = TypeVar("M", bound=SLAM3RBase)


def depth_channels_of(state_dict: Mapping[str, Tensor]) -> int:
    """Depth channels of a state dict, read off its patch embedding (0 for the published checkpoints)."""
    w = state_dict.get(PATCH_KEY)
    if w is None:
        raise ValueError(f"state dict has no {PATCH_KEY!r}: not a SLAM3R checkpoint")
    k = int(w.shape[1]) - 3
    if k not in (0, 1, 2):
        raise ValueError(f"{PATCH_KEY} has {w.shape[1]} input channels: expected 3 (RGB), 4 or 5 (RGB-D)")
    return k


def depth_planes(depth: Tensor | None, k: int, shape: tuple[int, ...] | None = None,
                 valid: Tensor | None = None) -> Tensor:
    """The ``k`` depth input channels ``[..., k, H, W]`` of ``depth`` ``[..., H, W]`` (metres).

    Invalid pixels (``valid`` False, or depth not finite / <= 0 when ``valid`` is None) are 0 with
    validity 0. ``depth=None`` (a frame without depth) gives zeros; ``shape`` ``(..., H, W)`` is then
    required.
    """
    if k not in (1, 2):
        raise ValueError(f"depth channels: expected 1 or 2, found {k}")
    if depth is None:
        if shape is None:
            raise ValueError("depth_planes: a missing depth needs the shape (..., H, W)")
        return torch.zeros(*shape[:-2], k, *shape[-2:])
    d = depth.float()
    ok = torch.isfinite(d) & (d > 0) if valid is None else valid.bool() & torch.isfinite(d)
    d = torch.where(ok, d, torch.zeros_like(d))
    planes = [d] if k == 1 else [d, ok.to(d.dtype)]
    return torch.stack(planes, dim=-3)


def stack_depth(images: Tensor, depth: Tensor | None, k: int, valid: Tensor | None = None) -> Tensor:
    """``images`` ``[..., 3, H, W]`` (in [-1, 1]) + ``k`` depth channels -> ``[..., 3 + k, H, W]``.

    ``k = 0`` returns ``images`` unchanged; ``depth`` ``[..., H, W]`` in metres or None (no depth)."""
    if k == 0:
        return images
    check_shape(images, "... 3 H W", "images")
    if depth is not None:
        check_shape(depth, "... H W", "depth")
        if depth.shape != images.shape[:-3] + images.shape[-2:]:
            raise ValueError(f"depth: expected {list(images.shape[:-3] + images.shape[-2:])} to match the images "
                             f"{list(images.shape)}, found {list(depth.shape)}")
    planes = depth_planes(depth, k, tuple(images.shape[:-3] + images.shape[-2:]), valid)
    return torch.cat([images, planes.to(images.device, images.dtype)], dim=-3)


def add_depth_channels(state_dict: Mapping[str, Tensor], k: int) -> dict[str, Tensor]:
    """An RGB (3-channel) state dict -> one with ``3 + k`` input channels, the new ones zero.

    Every other tensor is shared (not copied); the keys stay those of the published checkpoints."""
    if k not in (1, 2):
        raise ValueError(f"add_depth_channels: expected k = 1 or 2, found {k}")
    have = depth_channels_of(state_dict)
    if have:
        raise ValueError(f"add_depth_channels: the state dict already has {have} depth channel(s)")
    out = dict(state_dict)
    w = state_dict[PATCH_KEY]
    out[PATCH_KEY] = torch.cat([w, w.new_zeros(w.shape[0], k, *w.shape[2:])], dim=1)
    return out


def remove_depth_channels(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """An RGB-D state dict -> an RGB one (the depth channels' patch-embedding weights dropped).

    When those weights are not zero (a model trained with depth) the RGB model differs from the RGB-D
    one: that is logged with the weights' size."""
    k = depth_channels_of(state_dict)
    out = dict(state_dict)
    if k == 0:
        return out
    w = state_dict[PATCH_KEY]
    extra = w[:, 3:]
    if bool((extra != 0).any()):
        logger.warning("remove_depth_channels: dropping trained depth weights (max |w| %.3g vs RGB %.3g): the "
                       "RGB model's output differs from the RGB-D model's", float(extra.abs().max()),
                       float(w[:, :3].abs().max()))
    out[PATCH_KEY] = w[:, :3].contiguous()
    return out


def with_depth_channels(model: M, k: int) -> M:
    """A copy of ``model`` (Image2Points / Local2World) taking ``3 + k`` input channels (``k = 0``:
    back to RGB). From RGB, the new channels are zero: the outputs equal the RGB model's."""
    sd = model.state_dict()
    have = model.config.depth_channels
    if k == have:
        new_sd = dict(sd)
    else:
        base = remove_depth_channels(sd) if have else dict(sd)
        new_sd = add_depth_channels(base, k) if k else base
    new = type(model)(replace(model.config, depth_channels=k))
    new.load_state_dict({n: t.clone() for n, t in new_sd.items()}, strict=True)
    return new.to(device=model.device, dtype=model.param_dtype).train(model.training)
