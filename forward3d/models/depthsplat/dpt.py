"""DepthSplat's DPT heads: ViT maps fused with CNN / multi-view features (and the low-res inverse depth).

Four branches, chosen by (upsample factor, scales) as in the released models (hooks at 1/2, 1/4, 1/8, 1/16;
CNN maps 64 / 96 / 128 channels, high to low resolution; "depth" only in the depth upsampler):

* ``(2, 2)`` (base / large, lowest 1/4): 1/2 level [cnn0, cnn1, mv 1/2, depth, vit], 1/4 level [cnn2, vit, mv 1/4].
* ``(4, 1)`` (small, lowest 1/4): 1/2 level [cnn0, cnn1, vit], 1/4 level [cnn2, vit, mv, depth].
* ``(4, 2)`` (base DL3DV, lowest 1/8): 1/2 [cnn0, vit], 1/4 [cnn1, vit, mv 1/4, depth], 1/8 [cnn2, vit, mv 1/8].
* ``(8, 1)`` (small high-res, lowest 1/8): 1/2 [cnn0, vit], 1/4 [cnn1, vit], 1/8 [cnn2, vit, mv, depth].

The depth upsampler (``depth_predictor.upsampler``) ends in ``output_conv`` (a full-resolution inverse-depth
residual); the feature upsampler (``feature_upsampler``) returns the fused full-resolution features.
Fusion blocks are :class:`forward3d.models.spann3r.dpt.FeatureFusionBlock` (the same function; the
reference's ``refinenet4`` has no ``resConfUnit1``).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from forward3d.models.spann3r.dpt import FeatureFusionBlock

__all__ = ["DepthSplatDPT"]

CNN_CHANNELS = (64, 96, 128)
BRANCHES = ((2, 2), (4, 1), (4, 2), (8, 1))


class _Scratch(nn.Module):
    def __init__(self, out_channels: tuple[int, ...], features: int, with_output: bool) -> None:
        super().__init__()
        for i, c in enumerate(out_channels):
            setattr(self, f"layer{i + 1}_rn", nn.Conv2d(c, features, 3, 1, 1, bias=False))
        for i in range(1, 5):
            setattr(self, f"refinenet{i}", FeatureFusionBlock(features))
        del self.refinenet4.resConfUnit1  # refinenet4 has no skip input
        if with_output:
            self.output_conv = nn.Sequential(
                nn.Conv2d(features, features // 2, 3, 1, 1, padding_mode="replicate"), nn.GELU(),
                nn.Conv2d(features // 2, 16, 3, 1, 1, padding_mode="replicate"), nn.GELU(),
                nn.Conv2d(16, 1, 1))


class DepthSplatDPT(nn.Module):
    """``forward(vit, cnn, mv, depth=None)``.

    Args (``N`` images, ``H x W`` the input size):
        vit: 4 maps ``[N, vit_dim, H/8, W/8]``.
        cnn: the CNN maps, high to low resolution (64, 96, 128 channels).
        mv: multi-view features, high to low resolution (two scales: 64 then 128 channels; one: 128).
        depth: low-res inverse depth ``[N, 1, H/uf, W/uf]`` (the depth upsampler only).

    Returns:
        ``[N, 1, H, W]`` inverse-depth residual, or ``[N, features, H, W]`` features (``return_feature``).
    """

    def __init__(self, vit_dim: int, features: int, out_channels: tuple[int, int, int, int], upsample_factor: int,
                 num_scales: int, return_feature: bool) -> None:
        super().__init__()
        self.mode = (upsample_factor, num_scales)
        if self.mode not in BRANCHES:
            raise ValueError(f"DepthSplatDPT: unsupported (upsample_factor, num_scales) = {self.mode}")
        self.return_feature = return_feature
        dc = 0 if return_feature else 1
        c0, c1, c2 = CNN_CHANNELS
        oc = out_channels
        ins = {(2, 2): (c0 + c1 + oc[0] + 64 + dc, c2 + oc[1] + 128, oc[2]),
               (4, 1): (c0 + c1 + oc[0], c2 + oc[1] + 128 + dc, oc[2]),
               (4, 2): (c0 + oc[0], c1 + oc[1] + 64 + dc, c2 + oc[2] + 128),
               (8, 1): (c0 + oc[0], c1 + oc[1], c2 + oc[2] + 128 + dc)}[self.mode]
        self.concat_projects = nn.ModuleList(nn.Conv2d(i, o, 1) for i, o in zip(ins, oc[:3]))
        self.projects = nn.ModuleList(nn.Conv2d(vit_dim, o, 1) for o in oc)
        self.resize_layers = nn.ModuleList([nn.ConvTranspose2d(oc[0], oc[0], 4, 4), nn.ConvTranspose2d(oc[1], oc[1], 2, 2),
                                            nn.Identity(), nn.Conv2d(oc[3], oc[3], 3, 2, 1)])
        self.scratch = _Scratch(oc, features, with_output=not return_feature)

    def forward(self, vit: list[Tensor], cnn: list[Tensor], mv: list[Tensor], depth: Tensor | None = None) -> Tensor:
        if not self.return_feature and depth is None:
            raise ValueError("DepthSplatDPT: the depth upsampler needs the low-resolution inverse depth")
        l1, l2, l3, l4 = (r(p(x)) for p, r, x in zip(self.projects, self.resize_layers, vit))
        d = [] if depth is None or self.return_feature else [depth]
        cp = self.concat_projects
        if self.mode == (2, 2):
            l1 = cp[0](torch.cat([cnn[0], cnn[1], mv[0], *d, l1], dim=1))
            l2 = cp[1](torch.cat([cnn[2], l2, mv[1]], dim=1))
            l3 = cp[2](l3)
        elif self.mode == (4, 1):
            l1 = cp[0](torch.cat([cnn[0], cnn[1], l1], dim=1))
            l2 = cp[1](torch.cat([cnn[2], l2, mv[0], *d], dim=1))
            l3 = cp[2](l3)
        elif self.mode == (4, 2):
            l1 = cp[0](torch.cat([cnn[0], l1], dim=1))
            l2 = cp[1](torch.cat([cnn[1], l2, mv[0], *d], dim=1))
            l3 = cp[2](torch.cat([cnn[2], l3, mv[1]], dim=1))
        else:
            l1 = cp[0](torch.cat([cnn[0], l1], dim=1))
            l2 = cp[1](torch.cat([cnn[1], l2], dim=1))
            l3 = cp[2](torch.cat([cnn[2], l3, mv[0], *d], dim=1))
        s = self.scratch
        p4 = s.refinenet4(s.layer4_rn(l4))
        p3 = s.refinenet3(p4, s.layer3_rn(l3))
        p2 = s.refinenet2(p3, s.layer2_rn(l2))
        p1 = s.refinenet1(p2, s.layer1_rn(l1))
        return p1 if self.return_feature else s.output_conv(p1)
