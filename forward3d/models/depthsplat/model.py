"""DepthSplat (Xu et al., CVPR 2025): posed images -> per-view depth -> per-pixel 3D Gaussians.

A checkpoint-compatible re-implementation of ``cvg/depthsplat``'s ``EncoderDepthSplat`` (model code of
commit 1f5e548, the released ``depthsplat-gs-{small,base,large}`` checkpoints). :class:`DepthSplat` holds
the encoder under ``encoder`` so that ``state_dict()`` has exactly the released keys (``encoder.``-prefixed;
``tests/test_depthsplat_parity.py`` checks them against the manifests of the fixtures).

Data flow (``B`` scenes, ``V`` views, ``N = B*V`` images in ``(b v)`` order, ``H x W`` multiples of 16):

1. :class:`MultiViewDepth` (``encoder.depth_predictor``): CNN features at 1/2, 1/2, 1/4; multi-view
   transformer on the 1/4 features; DINOv2 intermediates at 1/8; per scale a plane-sweep cost volume in
   inverse depth, a UNet regressor and a softmax over candidates; a DPT upsampler adds a full-resolution
   inverse-depth residual.
2. ``feature_upsampler`` (a DPT) gives full-resolution features; ``gaussian_regressor`` and ``gaussian_head``
   turn [image, depth, match confidence, features] into 37 raw channels per pixel.
3. :func:`~.gaussians.adapt_gaussians` makes world-frame Gaussians (reference layout) and
   :meth:`DepthSplatOutput.gaussians` forward3d :class:`~forward3d.types.Gaussians`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from forward3d.geometry.quaternion import rotmat_to_quat_torch
from forward3d.types import Gaussians

from .config import DepthSplatConfig
from .dinov2 import DinoV2
from .dpt import DepthSplatDPT
from .gaussians import RawGaussians, adapt_gaussians
from .matching import CNNEncoder, FeaturePyramid, MultiViewTransformer, add_window_position, gather_views, plane_sweep_warp
from .unet import UNet

__all__ = ["DepthSplat", "DepthSplatEncoder", "MultiViewDepth", "DepthSplatOutput", "DepthIntermediates",
           "nearest_views", "IMAGENET_MEAN", "IMAGENET_STD"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class DepthIntermediates:
    """Per-stage tensors of one forward pass (for parity tests and inspection). Lists run over scales.

    Attributes:
        cnn: CNN features, high to low resolution ``[[N,64,H/2,W/2], [N,96,H/2,W/2], [N,128,H/4,W/4]]``.
        mv: multi-view features per scale, low to high (``[N,128,H/4,W/4]``, ``[N,64,H/2,W/2]``).
        vit_tokens: 4 x ``[N, h14*w14, C]`` normalised DINOv2 tokens.
        mono_intermediate: 4 x ``[N, C, H/8, W/8]``.
        mono: monocular features per scale.
        cost_volumes: ``[N, D_s, h_s, w_s]`` per scale (candidates ascending in inverse depth).
        match_probs: softmax over the candidates, per scale.
        inv_depths: ``[N, 1, h_s, w_s]`` expected inverse depth per scale.
        upsampler_residual: ``[N, 1, H, W]``.
        nn_index: ``[B, V, 1+M]`` source views used with V > 3 (None otherwise).
        features: ``[N, F, H, W]`` feature-upsampler output (encoder only).
        head_out: ``[N, 37, H, W]`` raw Gaussian-head output (encoder only).
    """

    cnn: list[Tensor] = field(default_factory=list)
    mv: list[Tensor] = field(default_factory=list)
    vit_tokens: list[Tensor] = field(default_factory=list)
    mono_intermediate: list[Tensor] = field(default_factory=list)
    mono: list[Tensor] = field(default_factory=list)
    cost_volumes: list[Tensor] = field(default_factory=list)
    match_probs: list[Tensor] = field(default_factory=list)
    inv_depths: list[Tensor] = field(default_factory=list)
    upsampler_residual: Tensor | None = None
    nn_index: Tensor | None = None
    features: Tensor | None = None
    head_out: Tensor | None = None


class _Regressor(nn.Sequential):
    """conv3x3, GroupNorm(8), GELU, :class:`UNet`, conv3x3 (keys ``0``, ``1``, ``3``, ``4``)."""

    def __init__(self, cin: int, ch: int, mult: tuple[int, ...], attn: tuple[int, ...], head_ch: int) -> None:
        super().__init__(nn.Conv2d(cin, ch, 3, 1, 1), nn.GroupNorm(8, ch), nn.GELU(), UNet(ch, mult, attn, head_ch),
                         nn.Conv2d(ch, ch, 3, 1, 1))

    def forward(self, x: Tensor, num_views: int) -> Tensor:  # type: ignore[override]
        x = self[2](self[1](self[0](x)))
        return self[4](self[3](x, num_views))


def nearest_views(c2w: Tensor, k: int) -> Tensor:
    """``[B, V, 4, 4]`` -> ``[B, V, 1+k]`` int64: each view, then its ``k`` nearest camera centres."""
    xyz = c2w[:, :, :3, 3].detach()
    return torch.argsort(torch.cdist(xyz, xyz, p=2))[:, :, :k + 1]


def _bilinear(x: Tensor, size: tuple[int, int] | None = None, scale: float | None = None) -> Tensor:
    return F.interpolate(x, size=size, scale_factor=scale, mode="bilinear", align_corners=True)


class MultiViewDepth(nn.Module):
    """``encoder.depth_predictor``: multi-view + monocular inverse-depth estimation (``MultiViewUniMatch``)."""

    def __init__(self, cfg: DepthSplatConfig) -> None:
        super().__init__()
        self.cfg = cfg
        vit = cfg.vit
        fc = cfg.feature_channels
        self.backbone = CNNEncoder(fc, cfg.lowest_feature_resolution)
        self.transformer = MultiViewTransformer(cfg.num_transformer_layers, fc, cfg.ffn_dim_expansion, cfg.attn_splits)
        if cfg.num_scales > 1:
            self.mv_pyramid = FeaturePyramid(fc, cfg.num_scales)
        self.pretrained = DinoV2(vit)
        if cfg.num_scales > 1:
            self.mono_pyramid = FeaturePyramid(vit.embed_dim, cfg.num_scales)
        self.regressor = nn.ModuleList()
        self.regressor_residual = nn.ModuleList()
        self.depth_head = nn.ModuleList()
        mult, attn = tuple(cfg.unet_channel_mult), tuple(cfg.unet_attn_resolutions)
        for i in range(cfg.num_scales):
            d = cfg.num_depth_candidates // 4 ** i
            cin = d + (128 - 32 * i) + fc // 2 ** i + vit.embed_dim // 2 ** i
            ch = cfg.unet_channels // 2 ** i
            if i > 0:
                mult = mult + (1,)
                attn = tuple(a * 2 for a in attn)
            self.regressor.append(_Regressor(cin, ch, mult, attn, cfg.unet_head_channels))
            self.regressor_residual.append(nn.Conv2d(cin, ch, 1))
            self.depth_head.append(nn.Sequential(nn.Conv2d(ch, ch * 2, 3, 1, 1, padding_mode="replicate"), nn.GELU(),
                                                 nn.Conv2d(ch * 2, d, 3, 1, 1, padding_mode="replicate")))
        up = cfg.upsampler_sizes
        self.upsampler = DepthSplatDPT(vit.embed_dim, up.features, up.out_channels, cfg.upsample_factor,
                                       cfg.num_scales, return_feature=False)

    def forward(self, images: Tensor, intrinsics: Tensor, extrinsics: Tensor, inv_min: Tensor, inv_max: Tensor,
                nn_index: Tensor | None = None) -> tuple[Tensor, DepthIntermediates]:
        """Inverse-depth estimation.

        Args:
            images: ``[B, V, 3, H, W]`` RGB in [0, 1].
            intrinsics: ``[B, V, 3, 3]`` normalised K.
            extrinsics: ``[B, V, 4, 4]`` camera-to-world.
            inv_min, inv_max: ``[B, V]`` inverse-depth range (``1/far``, ``1/near``).
            nn_index: ``[B, V, 1+M]`` source views per view (all others when None).

        Returns:
            ``[B, V, H, W]`` metric depth and the intermediates.
        """
        cfg = self.cfg
        b, v, _, H, W = images.shape
        n = b * v
        mean = images.new_tensor(IMAGENET_MEAN).view(3, 1, 1)
        std = images.new_tensor(IMAGENET_STD).view(3, 1, 1)
        x = ((images - mean) / std).reshape(n, 3, H, W)
        K = intrinsics.clone()
        K[:, :, 0] *= W
        K[:, :, 1] *= H
        inv_min, inv_max = inv_min.reshape(n), inv_max.reshape(n)
        out = DepthIntermediates(nn_index=nn_index)

        cnn = self.backbone(x)  # high -> low
        out.cnn = cnn
        low = add_window_position(cnn[-1], cfg.attn_splits)
        mv0 = self.transformer(low.view(b, v, *low.shape[1:]), nn_index).reshape(n, *low.shape[1:])
        mv = self.mv_pyramid(mv0) if cfg.num_scales > 1 else [mv0]  # low -> high
        out.mv = mv

        p = cfg.vit.patch_size
        rh, rw = H // p * p, W // p * p
        tokens = self.pretrained(_bilinear(x, (rh, rw)))
        out.vit_tokens = tokens
        mono_int = [_bilinear(t.reshape(n, rh // p, rw // p, -1).permute(0, 3, 1, 2), (H // 8, W // 8)) for t in tokens]
        out.mono_intermediate = mono_int
        mono_last = mono_int[-1]
        if cfg.lowest_feature_resolution == 4:
            mono_last = _bilinear(mono_last, scale=2)
        mono = self.mono_pyramid(mono_last) if cfg.num_scales > 1 else [mono_last]
        out.mono = mono

        cnn_low_to_high = cnn[::-1]
        depth = None
        D0 = cfg.num_depth_candidates
        lin = None
        for s in range(cfg.num_scales):
            ds = cfg.upsample_factor * 2 ** (cfg.num_scales - 1 - s)
            Ks = K.clone()
            Ks[:, :, :2] = Ks[:, :, :2] / ds
            feat = mv[s]
            c, h, w = feat.shape[1:]
            d = D0 // 4 ** s
            lin = torch.linspace(0, 1, d, dtype=feat.dtype, device=feat.device).view(1, d, 1, 1)
            if s == 0:
                cand = inv_min.view(-1, 1, 1, 1) + lin * (inv_max - inv_min).view(-1, 1, 1, 1)  # [N, D, 1, 1]
                cand = cand.expand(-1, -1, h, w)
            else:
                assert depth is not None
                depth = _bilinear(depth, scale=2).detach()
                step = ((inv_max - inv_min) / (D0 - 1) / 2 ** s).view(-1, 1, 1, 1)
                lo = (depth - step * (d // 2)).clamp(min=inv_min.view(-1, 1, 1, 1))
                hi = (depth + step * (d // 2 - 1)).clamp(max=inv_max.view(-1, 1, 1, 1))
                cand = lo + lin * (hi - lo)  # [N, D, h, w]
            # sources per reference view, (b v) order: features, relative poses
            fv = feat.view(b, v, c, h, w)
            src = gather_views(fv, nn_index)  # [B, V, M, C, h, w]
            m = src.shape[2]
            src_c2w = gather_views(extrinsics, nn_index)  # [B, V, M, 4, 4]
            rel = torch.linalg.inv(src_c2w) @ extrinsics[:, :, None]  # ref cam -> src cam
            Kr = Ks.reshape(n, 1, 3, 3).expand(-1, m, -1, -1).reshape(n * m, 3, 3)
            candm = cand.reshape(n, 1, d, h, w).expand(-1, m, -1, -1, -1).reshape(n * m, d, h, w)
            warped = plane_sweep_warp(src.reshape(n * m, c, h, w), Kr, rel.reshape(n * m, 4, 4), 1.0 / candm)
            warped = warped.view(n, m, c, d, h, w)
            cost = ((feat.view(n, 1, c, 1, h, w) * warped).sum(2) / c ** 0.5).mean(1)  # [N, D, h, w]
            out.cost_volumes.append(cost)

            cat = torch.cat([cost, cnn_low_to_high[s], feat, mono[s]], dim=1)
            o = self.regressor[s](cat, v) + self.regressor_residual[s](cat)
            prob = torch.softmax(self.depth_head[s](o), dim=1)
            out.match_probs.append(prob)
            depth = (prob * cand).sum(dim=1, keepdim=True)
            out.inv_depths.append(depth)

        assert depth is not None
        mv_high_to_low = mv[::-1]
        residual = self.upsampler(mono_int, cnn, mv_high_to_low, depth)
        out.upsampler_residual = residual
        inv = (_bilinear(depth, scale=cfg.upsample_factor) + residual).clamp(
            min=inv_min.view(-1, 1, 1, 1), max=inv_max.view(-1, 1, 1, 1))
        return (1.0 / inv.squeeze(1)).view(b, v, H, W), out


class DepthSplatEncoder(nn.Module):
    """``EncoderDepthSplat``: depth predictor, feature upsampler, Gaussian regressor and head."""

    def __init__(self, cfg: DepthSplatConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.depth_predictor = MultiViewDepth(cfg)
        fu = cfg.feature_upsampler_sizes
        self.feature_upsampler = DepthSplatDPT(cfg.vit.embed_dim, fu.features, fu.out_channels, cfg.upsample_factor,
                                               cfg.num_scales, return_feature=True)
        rc = cfg.gaussian_regressor_channels
        self.gaussian_regressor = nn.Sequential(nn.Conv2d(3 + 1 + 1 + fu.features, rc, 3, 1, 1), nn.GELU(),
                                                nn.Conv2d(rc, rc, 3, 1, 1))
        hc = cfg.head_channels
        self.gaussian_head = nn.Sequential(nn.Conv2d(rc + 3 + fu.features + 1, hc, 3, 1, 1, padding_mode="replicate"),
                                           nn.GELU(), nn.Conv2d(hc, hc, 3, 1, 1, padding_mode="replicate"))

    def forward(self, images: Tensor, intrinsics: Tensor, extrinsics: Tensor, near: Tensor, far: Tensor
                ) -> tuple[Tensor, RawGaussians, DepthIntermediates]:
        """``[B, V, 3, H, W]``, ``[B, V, 3, 3]`` normalised K, ``[B, V, 4, 4]`` c2w, ``[B, V]`` near / far ->
        depth ``[B, V, H, W]``, Gaussians (reference layout), intermediates."""
        cfg = self.cfg
        b, v, _, H, W = images.shape
        nn_index = nearest_views(extrinsics, cfg.local_mv_match) if v > 3 else None
        depth, mid = self.depth_predictor(images, intrinsics, extrinsics, 1.0 / far, 1.0 / near, nn_index)
        n = b * v
        cnn, mv = mid.cnn, mid.mv[::-1]
        feats = self.feature_upsampler(mid.mono_intermediate, cnn, mv)
        mid.features = feats
        conf = mid.match_probs[-1].max(dim=1, keepdim=True)[0]
        conf = F.interpolate(conf, size=(H, W), mode="nearest")
        img = images.reshape(n, 3, H, W)
        r = self.gaussian_regressor(torch.cat([img, depth.reshape(n, 1, H, W), conf, feats], dim=1))
        raw = self.gaussian_head(torch.cat([r, img, feats, conf], dim=1))
        mid.head_out = raw
        g = adapt_gaussians(raw.view(b, v, -1, H, W), depth, images, intrinsics, extrinsics, cfg.sh_degree,
                            cfg.scale_min, cfg.scale_max)
        return depth, g, mid


@dataclass
class DepthSplatOutput:
    """Result of :meth:`DepthSplat.forward`.

    Attributes:
        depths: ``[B, V, H, W]`` metric z-depth per view.
        raw: the Gaussians in the reference layout (``[B, V*H*W, ...]``).
        intermediates: per-stage tensors.
    """

    depths: Tensor
    raw: RawGaussians
    intermediates: DepthIntermediates

    def gaussians(self, b: int = 0) -> Gaussians:
        """Scene ``b`` as forward3d :class:`~forward3d.types.Gaussians` (world frame, ``N = V*H*W``)."""
        r = self.raw
        return Gaussians(means=r.means[b], quats=rotmat_to_quat_torch(r.world_rotations[b]),
                         log_scales=r.scales[b].log(), opacity_logits=r.opacity_logits[b],
                         sh=r.harmonics[b].transpose(-1, -2).contiguous())


def _check_inputs(images: Tensor, intrinsics: Tensor, extrinsics: Tensor, near: Tensor, far: Tensor,
                  multiple: int) -> None:
    if images.ndim != 5 or images.shape[2] != 3:
        raise ValueError(f"DepthSplat images: expected [B, V, 3, H, W], found {list(images.shape)}")
    b, v, _, h, w = images.shape
    if v < 2:
        raise ValueError(f"DepthSplat images: needs at least 2 views, found {v}")
    if h % 16 or w % 16:
        raise ValueError(f"DepthSplat images: H and W must be multiples of 16, found {h} x {w} "
                         "(crop, and rescale the intrinsics, first)")
    if tuple(intrinsics.shape) != (b, v, 3, 3):
        raise ValueError(f"DepthSplat intrinsics: expected {[b, v, 3, 3]} (normalised K), found {list(intrinsics.shape)}")
    if tuple(extrinsics.shape) != (b, v, 4, 4):
        raise ValueError(f"DepthSplat extrinsics: expected {[b, v, 4, 4]} (camera-to-world), found {list(extrinsics.shape)}")
    for name, t in (("near", near), ("far", far)):
        if tuple(t.shape) != (b, v):
            raise ValueError(f"DepthSplat {name}: expected {[b, v]}, found {list(t.shape)}")
    if not bool((near > 0).all()) or not bool((far > near).all()):
        raise ValueError("DepthSplat near/far: expected 0 < near < far")


class DepthSplat(nn.Module):
    """The DepthSplat network; ``state_dict()`` keys are those of the released ``depthsplat-gs-*.pth``.

    ``forward(images, intrinsics, extrinsics, near, far)``:

    Args:
        images: ``[B, V, 3, H, W]`` RGB in [0, 1]; ``V >= 2``, H and W multiples of ``cfg.patch_multiple``
            (16; 32 for the models with 1/8 features).
        intrinsics: ``[B, V, 3, 3]`` K normalised by the image size (row 0 / W, row 1 / H).
        extrinsics: ``[B, V, 4, 4]`` camera-to-world, OpenCV axes.
        near, far: ``[B, V]`` tensors or floats (depth range; the sweep is linear in inverse depth).

    Returns:
        :class:`DepthSplatOutput`.
    """

    def __init__(self, cfg: DepthSplatConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg or DepthSplatConfig()
        self.encoder = DepthSplatEncoder(self.cfg)

    @classmethod
    def from_pretrained(cls, source, config: DepthSplatConfig | str | None = None, map_location="cpu") -> "DepthSplat":
        """Load released or converted weights; see :func:`forward3d.models.depthsplat.loading.load_depthsplat`."""
        from .loading import load_depthsplat

        return load_depthsplat(source, config, map_location)

    def forward(self, images: Tensor, intrinsics: Tensor, extrinsics: Tensor, near: Tensor | float = 0.5,
                far: Tensor | float = 100.0) -> DepthSplatOutput:
        b, v = images.shape[:2]
        near_t = torch.as_tensor(near, dtype=images.dtype, device=images.device)
        far_t = torch.as_tensor(far, dtype=images.dtype, device=images.device)
        if near_t.ndim == 0:
            near_t = near_t.expand(b, v)
        if far_t.ndim == 0:
            far_t = far_t.expand(b, v)
        _check_inputs(images, intrinsics, extrinsics, near_t, far_t, self.cfg.patch_multiple)
        depth, raw, mid = self.encoder(images, intrinsics, extrinsics, near_t, far_t)
        return DepthSplatOutput(depths=depth, raw=raw, intermediates=mid)
