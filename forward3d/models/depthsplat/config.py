"""Configuration of the DepthSplat encoder (``cvg/depthsplat`` ``EncoderDepthSplat`` + ``MultiViewUniMatch``).

The reference reads only a few fields of its yaml (``num_scales``, ``upsample_factor``,
``lowest_feature_resolution``, ``monodepth_vit_type``, ``depth_unet_channels``,
``gaussian_regressor_channels``, the adapter, ``local_mv_match``); the rest of the constructor values are
``MultiViewUniMatch`` defaults (128 candidates, 6 transformer blocks, UNet mult [1, 1, 1] with attention at
ds 4, attention splits 2). :class:`DepthSplatConfig` names all of them, with the released values as
defaults; :func:`depthsplat_config` gives the released ``small`` / ``base`` / ``large`` and the fixture's
``tiny_2scale`` / ``tiny_1scale``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal, Mapping

__all__ = ["ViTConfig", "DPTSizes", "DepthSplatConfig", "depthsplat_config", "PRESETS", "VIT_TABLE"]


@dataclass(frozen=True)
class ViTConfig:
    """A DINOv2 ViT (``dinov2_vit{s,b,l}14`` as built by torch.hub: 518 px, patch 14, LayerScale, MLP FFN).

    Attributes:
        embed_dim: token width.
        depth: number of blocks.
        num_heads: attention heads.
        layers: the blocks whose outputs feed the depth head and the DPTs (0-based).
    """

    embed_dim: int
    depth: int
    num_heads: int
    layers: tuple[int, int, int, int]
    mlp_ratio: float = 4.0
    img_size: int = 518
    patch_size: int = 14
    interpolate_offset: float = 0.1


@dataclass(frozen=True)
class DPTSizes:
    """Widths of the two DPT heads: ``features`` (fusion width) and ``out_channels`` (per-hook widths)."""

    features: int
    out_channels: tuple[int, int, int, int]


VIT_TABLE: dict[str, tuple[ViTConfig, DPTSizes, DPTSizes]] = {
    # name: (vit, depth_predictor.upsampler sizes, feature_upsampler sizes)
    "vits": (ViTConfig(384, 12, 6, (2, 5, 8, 11)), DPTSizes(32, (48, 96, 192, 384)), DPTSizes(64, (48, 96, 192, 384))),
    "vitb": (ViTConfig(768, 12, 12, (2, 5, 8, 11)), DPTSizes(48, (96, 192, 384, 768)),
             DPTSizes(96, (96, 192, 384, 768))),
    "vitl": (ViTConfig(1024, 24, 16, (4, 11, 17, 23)), DPTSizes(64, (128, 256, 512, 1024)),
             DPTSizes(128, (128, 256, 512, 1024))),
    # the parity fixtures' tiny ViT (same DINOv2 class, shrunk)
    "vitt": (ViTConfig(32, 12, 2, (2, 5, 8, 11)), DPTSizes(8, (4, 8, 16, 32)), DPTSizes(16, (4, 8, 16, 32))),
}


# (upsample_factor, num_scales, lowest_feature_resolution) of the released models: small, base/large,
# base DL3DV, small high-res
_BRANCHES = ((4, 1, 4), (2, 2, 4), (4, 2, 8), (8, 1, 8))


@dataclass
class DepthSplatConfig:
    """DepthSplat encoder: multi-view depth (cost volume + monocular ViT) and a per-pixel Gaussian head.

    Attributes:
        vit_type: monocular backbone, ``vits`` / ``vitb`` / ``vitl`` (released) or ``vitt`` (test fixture).
        num_scales: cost-volume scales (1 for small, 2 for base/large).
        upsample_factor: final learned upsampling factor of the inverse depth (4 for small, 2 for base/large).
        lowest_feature_resolution: stride of the coarsest CNN features (4, or 8 for the DL3DV / high-res models).
        num_transformer_layers: multi-view transformer blocks.
        num_depth_candidates: inverse-depth candidates at scale 0 (scale s uses ``D / 4**s``).
        unet_channels: width of the depth UNet at scale 0 (halved per scale).
        gaussian_regressor_channels: width of the Gaussian regressor convs.
        local_mv_match: with more than 3 views, each view matches only this many nearest cameras.
        sh_degree: spherical-harmonics degree of the Gaussians.
        scale_min: lower clamp of the Gaussian scales.
        scale_max: upper clamp of the Gaussian scales (3 for RE10K, 0.1 for the DL3DV/high-res models).
    """

    vit_type: Literal["vits", "vitb", "vitl", "vitt"] = "vits"
    num_scales: int = 1
    upsample_factor: int = 4
    lowest_feature_resolution: int = 4
    num_transformer_layers: int = 6
    num_depth_candidates: int = 128
    unet_channels: int = 128
    gaussian_regressor_channels: int = 64
    local_mv_match: int = 2
    sh_degree: int = 2
    scale_min: float = 1e-10
    scale_max: float = 3.0
    # hard-coded in the reference (MultiViewUniMatch defaults)
    feature_channels: int = field(default=128, repr=False)
    ffn_dim_expansion: int = field(default=4, repr=False)
    attn_splits: int = field(default=2, repr=False)
    unet_channel_mult: tuple[int, ...] = field(default=(1, 1, 1), repr=False)
    unet_attn_resolutions: tuple[int, ...] = field(default=(4,), repr=False)
    unet_head_channels: int = field(default=32, repr=False)

    def __post_init__(self) -> None:
        if self.vit_type not in VIT_TABLE:
            raise ValueError(f"DepthSplatConfig.vit_type: expected one of {sorted(VIT_TABLE)}, found {self.vit_type!r}")
        if self.num_scales not in (1, 2):
            raise ValueError(f"DepthSplatConfig.num_scales: expected 1 or 2, found {self.num_scales!r}")
        combo = (self.upsample_factor, self.num_scales, self.lowest_feature_resolution)
        if combo not in _BRANCHES:
            raise ValueError("DepthSplatConfig: (upsample_factor, num_scales, lowest_feature_resolution) must be one "
                             f"of {list(_BRANCHES)} (the DPT branches of the released models), found {combo}")
        if self.sh_degree < 0 or self.sh_degree > 2:
            raise ValueError(f"DepthSplatConfig.sh_degree: expected 0..2, found {self.sh_degree!r}")
        for s in range(self.num_scales):
            ch = self.unet_channels // 2 ** s
            if ch % self.unet_head_channels or ch % 8:
                raise ValueError(f"DepthSplatConfig.unet_channels: {self.unet_channels} gives {ch} channels at scale {s}, "
                                 f"not a multiple of the {self.unet_head_channels}-channel attention heads")
        self.unet_channel_mult = tuple(self.unet_channel_mult)
        self.unet_attn_resolutions = tuple(self.unet_attn_resolutions)

    @property
    def vit(self) -> ViTConfig:
        return VIT_TABLE[self.vit_type][0]

    @property
    def upsampler_sizes(self) -> DPTSizes:
        return VIT_TABLE[self.vit_type][1]

    @property
    def feature_upsampler_sizes(self) -> DPTSizes:
        return VIT_TABLE[self.vit_type][2]

    @property
    def d_sh(self) -> int:
        return (self.sh_degree + 1) ** 2

    @property
    def head_channels(self) -> int:
        """Raw Gaussian parameters per pixel: opacity, 2 offsets, 3 scales, 4 quaternion, 3 x d_sh SH."""
        return 1 + 2 + 3 + 4 + 3 * self.d_sh

    @property
    def patch_multiple(self) -> int:
        """Image sides must be multiples of this: 16 (the reference's shim) with features at 1/4; 32 at 1/8
        (the scale-0 UNet downsamples twice)."""
        return 4 * self.lowest_feature_resolution

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for k, v in d.items():
            if isinstance(v, tuple):
                d[k] = list(v)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "DepthSplatConfig":
        """Build from our own :meth:`to_dict` or from a reference ``encoder_cfg`` (``EncoderDepthSplatCfg``)."""
        if "monodepth_vit_type" in d:  # reference yaml / fixture encoder_cfg
            ad = d.get("gaussian_adapter", {}) or {}
            return cls(vit_type=d["monodepth_vit_type"], num_scales=int(d["num_scales"]),
                       upsample_factor=int(d["upsample_factor"]),
                       lowest_feature_resolution=int(d["lowest_feature_resolution"]),
                       unet_channels=int(d["depth_unet_channels"]),
                       gaussian_regressor_channels=int(d["gaussian_regressor_channels"]),
                       local_mv_match=int(d.get("local_mv_match", 2)),
                       sh_degree=int(ad.get("sh_degree", 2)), scale_min=float(ad.get("gaussian_scale_min", 1e-10)),
                       scale_max=float(ad.get("gaussian_scale_max", 3.0)))
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"DepthSplatConfig: unknown fields {unknown}")
        return cls(**dict(d))


PRESETS: dict[str, dict[str, Any]] = {
    "small": dict(vit_type="vits", num_scales=1, upsample_factor=4),
    "base": dict(vit_type="vitb", num_scales=2, upsample_factor=2),
    "large": dict(vit_type="vitl", num_scales=2, upsample_factor=2),
    "base_dl3dv": dict(vit_type="vitb", num_scales=2, upsample_factor=4, lowest_feature_resolution=8),
    "small_highres": dict(vit_type="vits", num_scales=1, upsample_factor=8, lowest_feature_resolution=8,
                          scale_max=0.1),
    # the parity fixtures (../shared/fixtures/depthsplat): 2 transformer blocks, tiny ViT and heads
    "tiny_2scale": dict(vit_type="vitt", num_scales=2, upsample_factor=2, num_transformer_layers=2,
                        unet_channels=64, gaussian_regressor_channels=16),
    "tiny_1scale": dict(vit_type="vitt", num_scales=1, upsample_factor=4, num_transformer_layers=2,
                        unet_channels=64, gaussian_regressor_channels=16),
}


def depthsplat_config(name: str, **overrides: Any) -> DepthSplatConfig:
    """A named configuration: ``small``, ``base``, ``large`` (RE10K), ``base_dl3dv``, ``small_highres``
    (``depthsplat-gs-small-re10kdl3dv-448x768``), ``tiny_2scale``, ``tiny_1scale`` (parity fixtures)."""
    if name not in PRESETS:
        raise ValueError(f"unknown DepthSplat config {name!r}; expected one of {sorted(PRESETS)}")
    return DepthSplatConfig(**{**PRESETS[name], **overrides})
