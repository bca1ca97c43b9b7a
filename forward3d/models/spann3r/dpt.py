"""DUSt3R's DPT prediction head (``PixelwiseTaskWithDPT`` / ``DPTOutputAdapter_fix``) in plain PyTorch.

Parameter names follow the reference (``downstream_head{1,2}.dpt.*``), including its quirks: the four
3x3 "layer_rn" convs are registered twice (``scratch.layerN_rn`` and ``scratch.layer_rn.{N-1}``, the
same modules, so the state_dict holds each tensor under both names) and only ``act_postprocess.*``
exists. ``refinenet4.resConfUnit1`` exists but is unused (refinenet4 has no skip input).

Shapes: ``B`` batch, ``T = (H/p) * (W/p)`` tokens, ``p`` the patch size.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from forward3d.models.slam3r.heads import no_autocast, postprocess

from .config import DPTConfig

__all__ = ["ResidualConvUnit", "FeatureFusionBlock", "DPTAdapter", "DPTHead"]


class ResidualConvUnit(nn.Module):
    """``x + conv2(relu(conv1(relu(x))))`` (keys ``conv1``, ``conv2``)."""

    def __init__(self, features: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(features, features, 3, 1, 1)
        self.conv2 = nn.Conv2d(features, features, 3, 1, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv2(F.relu(self.conv1(F.relu(x)))) + x


class FeatureFusionBlock(nn.Module):
    """``out_conv(up2(RCU2(prev + RCU1(skip))))``; without ``skip``: ``out_conv(up2(RCU2(prev)))``.

    Bilinear x2 upsampling with ``align_corners=True`` (keys ``out_conv``, ``resConfUnit1/2``).
    """

    def __init__(self, features: int) -> None:
        super().__init__()
        self.out_conv = nn.Conv2d(features, features, 1, 1, 0)
        self.resConfUnit1 = ResidualConvUnit(features)
        self.resConfUnit2 = ResidualConvUnit(features)

    def forward(self, x: Tensor, skip: Tensor | None = None) -> Tensor:
        if skip is not None:
            x = x + self.resConfUnit1(skip)
        x = self.resConfUnit2(x)
        x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)
        return self.out_conv(x)


class _Scratch(nn.Module):
    """``layer{1..4}_rn`` (bias-free 3x3 convs to ``feature_dim``; also as ``layer_rn``) and the
    four fusion blocks ``refinenet{1..4}``."""

    def __init__(self, layer_dims: Sequence[int], features: int) -> None:
        super().__init__()
        convs = [nn.Conv2d(d, features, 3, 1, 1, bias=False) for d in layer_dims]
        self.layer1_rn, self.layer2_rn, self.layer3_rn, self.layer4_rn = convs
        self.layer_rn = nn.ModuleList(convs)  # the same modules again: the reference's duplicated keys
        self.refinenet1 = FeatureFusionBlock(features)
        self.refinenet2 = FeatureFusionBlock(features)
        self.refinenet3 = FeatureFusionBlock(features)
        self.refinenet4 = FeatureFusionBlock(features)


class DPTAdapter(nn.Module):
    """``DPTOutputAdapter_fix``: four hooked token maps -> a ``[B, num_channels, H, W]`` map.

    Per hook ``i`` (widths ``dim_tokens[i]``): 1x1 conv to ``layer_dims[i]``, then ConvTranspose 4/4,
    ConvTranspose 2/2, nothing, 3x3 stride-2 conv; then ``scratch.layer_rn[i]``. Fusion from the
    coarsest level (refinenet4 output cropped to level 3's size), output stage ``head``: conv3 to
    ``feature_dim / 2``, bilinear x2, conv3 to ``last_dim``, ReLU, 1x1 conv to ``num_channels``.
    """

    def __init__(self, cfg: DPTConfig, dim_tokens: Sequence[int], hooks: Sequence[int], patch_size: int) -> None:
        super().__init__()
        if len(dim_tokens) != 4 or len(hooks) != 4:
            raise ValueError(f"DPT: expected 4 hooks and 4 token widths, found {list(hooks)} / {list(dim_tokens)}")
        self.hooks = [int(h) for h in hooks]
        self.patch_size = int(patch_size)
        ld, fd = cfg.layer_dims, cfg.feature_dim
        self.scratch = _Scratch(ld, fd)
        self.head = nn.Sequential(
            nn.Conv2d(fd, fd // 2, 3, 1, 1),
            _Upsample2(),
            nn.Conv2d(fd // 2, cfg.last_dim, 3, 1, 1),
            nn.ReLU(True),
            nn.Conv2d(cfg.last_dim, cfg.num_channels, 1, 1, 0),
        )
        self.act_postprocess = nn.ModuleList([
            nn.Sequential(nn.Conv2d(dim_tokens[0], ld[0], 1), nn.ConvTranspose2d(ld[0], ld[0], 4, 4)),
            nn.Sequential(nn.Conv2d(dim_tokens[1], ld[1], 1), nn.ConvTranspose2d(ld[1], ld[1], 2, 2)),
            nn.Sequential(nn.Conv2d(dim_tokens[2], ld[2], 1)),
            nn.Sequential(nn.Conv2d(dim_tokens[3], ld[3], 1), nn.Conv2d(ld[3], ld[3], 3, 2, 1)),
        ])

    def forward(self, tokens: Sequence[Tensor], image_size: tuple[int, int],
                trace: dict[str, Any] | None = None, tag: str = "") -> Tensor:
        """``tokens``: the head input list (each [B, T, C_i]); ``image_size`` (H, W) -> [B, 4, H, W]."""
        H, W = image_size
        gh, gw = H // self.patch_size, W // self.patch_size
        layers = []
        for i, hook in enumerate(self.hooks):
            x = tokens[hook]
            B, T, C = x.shape
            if T != gh * gw:
                raise ValueError(f"DPT head: {T} tokens do not form the {gh}x{gw} grid of a {H}x{W} image")
            x = self.act_postprocess[i](x.transpose(1, 2).reshape(B, C, gh, gw))
            if trace is not None:
                trace[f"{tag}act_postprocess{i}"] = x
            x = self.scratch.layer_rn[i](x)
            if trace is not None:
                trace[f"{tag}layer_rn{i}"] = x
            layers.append(x)
        s = self.scratch
        p4 = s.refinenet4(layers[3])
        if trace is not None:
            trace[f"{tag}refinenet4_precrop"] = p4
        p4 = p4[:, :, :layers[2].shape[2], :layers[2].shape[3]]
        p3 = s.refinenet3(p4, layers[2])
        p2 = s.refinenet2(p3, layers[1])
        p1 = s.refinenet1(p2, layers[0])
        if trace is not None:
            trace[f"{tag}refinenet3"], trace[f"{tag}refinenet2"], trace[f"{tag}refinenet1"] = p3, p2, p1
        out = self.head(p1)
        if trace is not None:
            trace[f"{tag}raw"] = out
        return out


class _Upsample2(nn.Module):
    """Bilinear x2 with ``align_corners=True`` (the reference's ``Interpolate``; no parameters)."""

    def forward(self, x: Tensor) -> Tensor:
        return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)


class DPTHead(nn.Module):
    """``PixelwiseTaskWithDPT``: the DPT adapter (key ``dpt``) plus the pts3d/conf activations.

    Runs in fp32 whatever the autocast state (fp64 when the tokens and parameters are fp64), as the
    reference's ``tok.float()`` under ``autocast(enabled=False)``.
    """

    def __init__(self, cfg: DPTConfig, dim_tokens: Sequence[int], hooks: Sequence[int], patch_size: int,
                 conf_mode: tuple[str, float, float]) -> None:
        super().__init__()
        self.dpt = DPTAdapter(cfg, dim_tokens, hooks, patch_size)
        self.conf_mode = conf_mode

    def forward(self, tokens: Sequence[Tensor], image_size: tuple[int, int],
                trace: dict[str, Any] | None = None, tag: str = "") -> tuple[Tensor, Tensor]:
        """Head input list (each [B, T, C_i]) of an ``image_size`` = (H, W) landscape image ->
        (pts [B, H, W, 3], conf [B, H, W])."""
        H, W = int(image_size[0]), int(image_size[1])
        if H > W:
            raise ValueError(f"DPT head: portrait input {H}x{W} (H > W) is not supported: the reference's "
                             "landscape-only wrapper transposes its predictions; use a landscape or square crop")
        dev = tokens[0].device
        dtype = torch.float64 if tokens[0].dtype == torch.float64 else torch.float32
        with no_autocast(dev):
            w = self.dpt.head[0].weight
            params_ok = w.dtype == dtype
            if params_ok:
                raw = self.dpt([t.to(dtype) for t in tokens], (H, W), trace, tag)
            else:  # low-precision parameters: run an fp32 copy of the head (the reference's fp32 heads)
                raw = torch.func.functional_call(
                    self.dpt, {k: v.to(dtype) for k, v in self.dpt.named_parameters()},
                    ([t.to(dtype) for t in tokens], (H, W), trace, tag))
            return postprocess(raw.permute(0, 2, 3, 1), self.conf_mode)
