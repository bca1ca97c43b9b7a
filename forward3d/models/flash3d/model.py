"""Flash3D: one image (+ metric depth) -> layered 3D Gaussians, checkpoint-compatible with
``model_re10k_v2.pth`` (eldar/flash3d @ a71c9b9).

State-dict layout (prefix ``models.unidepth_extended.``):

- ``encoder.encoder.*``: torchvision-named ResNet, conv1 = Conv2d(4, 64, 7, 2, 3) WITH bias.
- ``models.depth.decoder.{0..10}``: monodepth2-style decoder, ``num_ch_dec = [16, 32, 64, 128, 256]``,
  head Conv3x3(16, L-1) -> depth increments ``exp(clamp(o, -10, 6))``.
- ``models.gauss_decoder_{l}.decoder.{0..9}`` + ``.out``: one decoder per layer,
  ``num_ch_dec = [32, 32, 64, 128, 256]``, 1x1 conv to 23 channels.
- ``unidepth.*`` (optional, frozen UniDepth V1 weights): kept aside for the ``unidepth`` depth backbone.
- ``backproject_depth.*``: batch-size dependent buffers; ignored on load and rebuilt on the fly.

Shapes: ``B`` images, ``L`` Gaussian layers, ``Hp x Wp`` padded size (e.g. 320 x 448).
"""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from forward3d.device import DTypeArg, resolve_dtype
from forward3d.hub import WeightsError, load_state_dict, read_json_config, resolve_source, strict_load
from forward3d.models.resnet import ResNet
from forward3d.types import Gaussians

logger = logging.getLogger(__name__)

__all__ = ["Flash3DConfig", "Flash3D", "Flash3DOutput", "PREFIX"]

PREFIX = "models.unidepth_extended."
# decoder levels (of 5, finest last) kept in fp32 under a bf16/fp16 dtype: the Gaussian heads read the finest
# level, and a quaternion whose raw norm is small amplifies its rounding (measured: bf16 everywhere gives
# rotation errors of 0.05 on the parity fixture, 0.3 at full size)
FP32_DECODER_LEVELS = 1
IGNORED_PREFIXES = ("backproject_depth.",)


@dataclass
class Flash3DConfig:
    """Hyper-parameters of the Gaussian predictor (defaults: the released ``layered_re10k`` model)."""

    num_layers: int = 50  # ResNet depth of the encoder
    gaussians_per_pixel: int = 2  # L
    sh_degree: int = 1
    height: int = 256  # network input before padding
    width: int = 384
    pad_border: int = 32
    depth_input_scale: float = 20.0  # encoder sees depth / 20
    norm_mean: float = 0.45
    norm_std: float = 0.225
    scale_lambda: float = 0.01
    depth_clamp: tuple[float, float] = (-10.0, 6.0)
    num_ch_dec_depth: tuple[int, ...] = (16, 32, 64, 128, 256)
    num_ch_dec_gauss: tuple[int, ...] = (32, 32, 64, 128, 256)

    def __post_init__(self) -> None:
        if self.gaussians_per_pixel < 1:
            raise ValueError(f"Flash3DConfig: gaussians_per_pixel must be >= 1, found {self.gaussians_per_pixel}")
        if self.sh_degree not in (0, 1, 2, 3):
            raise ValueError(f"Flash3DConfig: sh_degree must be 0..3, found {self.sh_degree}")
        self.depth_clamp = tuple(self.depth_clamp)
        self.num_ch_dec_depth = tuple(self.num_ch_dec_depth)
        self.num_ch_dec_gauss = tuple(self.num_ch_dec_gauss)

    @property
    def padded_size(self) -> tuple[int, int]:
        """``(Hp, Wp)``."""
        return self.height + 2 * self.pad_border, self.width + 2 * self.pad_border

    @property
    def num_gauss_channels(self) -> int:
        return 3 + 1 + 3 + 4 + 3 * (self.sh_degree + 1) ** 2

    @classmethod
    def from_dict(cls, d: dict) -> "Flash3DConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"Flash3DConfig: unknown keys {unknown}")
        return cls(**d)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def infer_from_state_dict(cls, sd: dict[str, Tensor], **overrides) -> "Flash3DConfig":
        """Read the ResNet depth, L, SH degree and the network input size (from the reference's
        ``backproject_depth.0.id_coords`` buffer, padded size minus the border) off a checkpoint."""
        enc = PREFIX + "encoder.encoder."
        if enc + "conv1.weight" not in sd:
            raise WeightsError(f"not a Flash3D checkpoint: no '{enc}conv1.weight'")
        bottleneck = any(k.startswith(enc + "layer1.0.conv3") for k in sd)
        n3 = len({k.split(".")[4] for k in sd if k.startswith(enc + "layer3.")})
        n4 = len({k.split(".")[4] for k in sd if k.startswith(enc + "layer2.")})
        if bottleneck:
            num_layers = {6: 50, 23: 101, 36: 152}.get(n3, 50)
        else:
            num_layers = 34 if (n3, n4) == (6, 4) else 18
        L = len({k.split(".")[3] for k in sd if k.startswith(PREFIX + "models.gauss_decoder_")})
        out = sd.get(PREFIX + "models.gauss_decoder_0.out.weight")
        sh_degree = 1
        if out is not None:
            k = (out.shape[0] - 11) // 3
            sh_degree = int(round(k**0.5)) - 1
        kw = dict(num_layers=num_layers, gaussians_per_pixel=max(L, 1), sh_degree=sh_degree)
        ids = sd.get("backproject_depth.0.id_coords")  # [.., Hp, Wp]: the padded network input size
        if ids is not None and ids.ndim >= 2 and "height" not in overrides and "width" not in overrides:
            pad = int(overrides.get("pad_border", cls.pad_border))
            hp, wp = int(ids.shape[-2]), int(ids.shape[-1])
            if hp > 2 * pad and wp > 2 * pad:
                kw.update(height=hp - 2 * pad, width=wp - 2 * pad)
        elif "height" not in overrides:
            logger.warning("Flash3D checkpoint: no backproject_depth buffers, so the network input size is not "
                           "known; using %dx%d (pass a config with height/width if it was trained at another size)",
                           cls.width, cls.height)
        kw.update(overrides)
        return cls(**kw)


class _Conv3x3(nn.Module):
    """Reflection pad 1 + 3x3 conv (monodepth2's Conv3x3); keys ``conv.weight``/``conv.bias``."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.pad = nn.ReflectionPad2d(1)
        self.conv = nn.Conv2d(cin, cout, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(self.pad(x))


class _ConvBlock(nn.Module):
    """Conv3x3 + ELU; keys ``conv.conv.*``."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv = _Conv3x3(cin, cout)
        self.nonlin = nn.ELU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.nonlin(self.conv(x))


class _UNetDecoder(nn.Module):
    """monodepth2 decoder body: for i = 4..0: upconv(i,0), x2 nearest, cat skip i-1, upconv(i,1).

    ``decoder`` ModuleList order: upconv(4,0), upconv(4,1), ..., upconv(0,0), upconv(0,1), then
    the subclass appends its head.
    """

    def __init__(self, num_ch_enc: list[int], num_ch_dec: tuple[int, ...]):
        super().__init__()
        convs = []
        for i in range(4, -1, -1):
            cin = num_ch_enc[-1] if i == 4 else num_ch_dec[i + 1]
            convs.append(_ConvBlock(cin, num_ch_dec[i]))
            cin = num_ch_dec[i] + (num_ch_enc[i - 1] if i > 0 else 0)
            convs.append(_ConvBlock(cin, num_ch_dec[i]))
        self.decoder = nn.ModuleList(convs)

    def body(self, feats: list[Tensor], fp32_levels: int = 0) -> Tensor:
        """The decoder body; under autocast its last ``fp32_levels`` levels (of 5) still run in fp32."""
        x = feats[-1]
        for j, i in enumerate(range(4, -1, -1)):
            with contextlib.nullcontext() if i >= fp32_levels else _fp32(x.device):
                if i < fp32_levels:
                    x = x.float()
                x = self.decoder[2 * j](x)
                x = F.interpolate(x, scale_factor=2.0, mode="nearest")
                if i > 0:
                    x = torch.cat([x, feats[i - 1].to(x.dtype)], 1)
                x = self.decoder[2 * j + 1](x)
        return x


class _DroppedConv(nn.Module):
    """Stands in for a decoder body convolution dropped by ``fuse_for_inference(keep_reference=False)``."""

    def forward(self, x: Tensor) -> Tensor:
        raise RuntimeError("Flash3D: this decoder body was dropped by fuse_for_inference(keep_reference=False); "
                           "its weights live only in the fast decoders (fuse with keep_reference=True to keep it)")


def _cpu_has_fast_bf16() -> bool:
    """Whether oneDNN runs bf16 convolutions natively on this CPU."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def _fp32(device: torch.device) -> contextlib.AbstractContextManager:
    """Autocast off (fp32) inside an autocast region."""
    return torch.autocast(device.type, enabled=False)


def _normalize4(q: Tensor) -> Tensor:
    """``F.normalize(q, dim=1)`` for ``[N, 4, H, W]`` as channel slices (the strided norm over dim 1 costs
    ~20x more on the CPU)."""
    n = q[:, 0:1] * q[:, 0:1]
    for i in range(1, 4):
        n = n.addcmul(q[:, i:i + 1], q[:, i:i + 1])
    return q / n.sqrt_().clamp_min_(1e-12)


class _DepthDecoder(_UNetDecoder):
    def __init__(self, num_ch_enc: list[int], num_ch_dec: tuple[int, ...], num_out: int):
        super().__init__(num_ch_enc, num_ch_dec)
        self.decoder.append(_Conv3x3(num_ch_dec[0], num_out))

    def head(self, x: Tensor) -> Tensor:
        return self.decoder[10](x)

    def forward(self, feats: list[Tensor]) -> Tensor:
        return self.head(self.body(feats))


class _GaussDecoder(_UNetDecoder):
    def __init__(self, num_ch_enc: list[int], num_ch_dec: tuple[int, ...], num_out: int):
        super().__init__(num_ch_enc, num_ch_dec)
        self.out = nn.Conv2d(num_ch_dec[0], num_out, 1)

    def head(self, x: Tensor) -> Tensor:
        return self.out(x)

    def forward(self, feats: list[Tensor]) -> Tensor:
        return self.head(self.body(feats))


class _ResnetEncoder(nn.Module):
    """Keys ``encoder.*``; returns [conv1 output BEFORE BN, layer1, layer2, layer3, layer4]."""

    def __init__(self, num_layers: int):
        super().__init__()
        self.encoder = ResNet(num_layers, in_channels=4, conv1_bias=True)
        self.num_ch_enc = self.encoder.num_ch_enc

    def forward(self, x: Tensor) -> list[Tensor]:
        e = self.encoder
        f0 = e.conv1(x)
        x = e.maxpool(e.relu(e.bn1(f0)))
        f1 = e.layer1(x)
        f2 = e.layer2(f1)
        f3 = e.layer3(f2)
        f4 = e.layer4(f3)
        return [f0, f1, f2, f3, f4]


class _UniDepthExtended(nn.Module):
    def __init__(self, cfg: Flash3DConfig):
        super().__init__()
        self.encoder = _ResnetEncoder(cfg.num_layers)
        enc = self.encoder.num_ch_enc
        models: dict[str, nn.Module] = {}
        if cfg.gaussians_per_pixel > 1:
            models["depth"] = _DepthDecoder(enc, cfg.num_ch_dec_depth, cfg.gaussians_per_pixel - 1)
        for layer in range(cfg.gaussians_per_pixel):
            models[f"gauss_decoder_{layer}"] = _GaussDecoder(enc, cfg.num_ch_dec_gauss, cfg.num_gauss_channels)
        self.models = nn.ModuleDict(models)


@dataclass
class Flash3DOutput:
    """Outputs in the reference layout (rows ordered ``b * L + l``).

    Attributes:
        depth: ``[B*L, 1, Hp, Wp]`` per-layer metric z-depth (layer 0 = the input depth).
        opacity: ``[B*L, 1, Hp, Wp]`` sigmoid-activated. ``opacity_logit`` keeps the raw value.
        scaling: ``[B*L, 3, Hp, Wp]`` = exp(raw) * scale_lambda.
        rotation: ``[B*L, 4, Hp, Wp]`` unit wxyz quaternion.
        features_dc: ``[B*L, 3, Hp, Wp]`` SH DC.
        features_rest: ``[B*L, 3*(K-1), Hp, Wp]`` SH rest, channel = 3*k + rgb (coefficient-major).
        offset: ``[B*L, 3, Hp, Wp]`` camera-space offsets (metres).
        means: ``[B*L, 4, Hp*Wp]`` homogeneous camera-space means (back-projection + offset).
        inv_K: ``[B, 3, 3]``.
        raw: ``[B, L, C, Hp, Wp]`` raw Gaussian-decoder outputs; ``depth_raw``: ``[B, L-1, Hp, Wp]``.
        features: the encoder's skip features (for inspection; in the compute dtype).
    """

    depth: Tensor
    opacity: Tensor
    opacity_logit: Tensor
    scaling: Tensor
    rotation: Tensor
    features_dc: Tensor
    features_rest: Tensor
    offset: Tensor
    means: Tensor
    inv_K: Tensor
    raw: Tensor
    depth_raw: Tensor | None
    encoder_input: Tensor
    features: list[Tensor] = field(default_factory=list)

    def gaussians(self, b: int = 0, crop_border: int = 0) -> Gaussians:
        """The Gaussians of image ``b`` in its camera frame (OpenCV axes, metres).

        ``crop_border`` drops Gaussians whose pixel lies within that many pixels of the padded
        border (0 keeps all, as the reference renders them).
        """
        L = self.depth.shape[0] // self.inv_K.shape[0]
        rows = slice(b * L, (b + 1) * L)
        hp, wp = self.depth.shape[-2:]
        sel = torch.ones(hp, wp, dtype=torch.bool, device=self.depth.device)
        if crop_border > 0:
            sel[:crop_border] = sel[-crop_border:] = False
            sel[:, :crop_border] = sel[:, -crop_border:] = False
        sel = sel.flatten().repeat(L)

        def flat(t: Tensor) -> Tensor:  # [L, C, Hp, Wp] -> [L*Hp*Wp, C]
            return t[rows].flatten(2).permute(0, 2, 1).reshape(-1, t.shape[1])

        k = self.features_rest.shape[1] // 3 + 1
        dc = flat(self.features_dc)
        rest = flat(self.features_rest).reshape(-1, k - 1, 3)
        sh = torch.cat([dc[:, None, :], rest], 1)
        means = self.means[rows, :3].permute(0, 2, 1).reshape(-1, 3)
        g = Gaussians(means, flat(self.rotation), torch.log(flat(self.scaling)), flat(self.opacity_logit)[:, 0], sh)
        return g.subset(sel)


class Flash3D(nn.Module):
    """The Flash3D Gaussian predictor (the part on top of a metric depth network).

    Call with the padded image, the padded metric depth and ``K_src`` (see
    :func:`forward3d.models.flash3d.preprocess.prepare_input`).

    Args:
        config: the architecture (default: the released ``layered_re10k`` model).
        dtype: compute dtype: ``torch.float32`` (default), ``torch.bfloat16`` / ``torch.float16`` (fp16 GPU
            only) or ``"auto"`` (see :func:`forward3d.device.resolve_dtype`): autocast over the encoder and
            the decoder bodies; the output convolutions (1x1 Gaussian heads, depth head) and everything
            after them (activations, quaternion normalisation, back-projection) run in fp32, so every
            output is fp32. Settable later via :attr:`dtype`.
    """

    def __init__(self, config: Flash3DConfig | None = None, dtype: DTypeArg = torch.float32):
        super().__init__()
        self.config = config or Flash3DConfig()
        self.models = nn.ModuleDict({"unidepth_extended": _UniDepthExtended(self.config)})
        self.unidepth_state_dict: dict[str, Tensor] = {}
        self.dtype = dtype
        self.fp32_levels = FP32_DECODER_LEVELS
        self.fused = False
        self.reference_dropped = False  # fuse_for_inference(keep_reference=False): decoder bodies dropped
        self._warned = False  # the slow-bf16-CPU warning, once per model

    @property
    def dtype(self) -> torch.dtype:
        """The compute dtype on the model's device (see the class docstring); assign a dtype or its name."""
        return resolve_dtype(self._dtype_arg, self._device())

    @dtype.setter
    def dtype(self, value: DTypeArg) -> None:
        if value != "auto":
            resolve_dtype(value, torch.device("cuda"))  # checks the name; fp16 on the CPU fails at the call
        self._dtype_arg = value

    def _device(self) -> torch.device:
        p = next(self.parameters(), None)
        return p.device if p is not None else torch.device("cpu")

    def _autocast(self, device: torch.device) -> contextlib.AbstractContextManager:
        dtype = resolve_dtype(self._dtype_arg, device)
        if dtype == torch.float32:
            return contextlib.nullcontext()
        if device.type == "cpu" and dtype == torch.bfloat16 and not _cpu_has_fast_bf16() and not self._warned:
            self._warned = True
            logger.warning("Flash3D dtype=bfloat16 on a CPU without AVX512-BF16/AMX: oneDNN has no bf16 "
                           "convolutions here and torch falls back to a slow path (measured 29x slower than "
                           "fp32 on an AVX2 CPU); use float32")
        return torch.autocast(device.type, dtype=dtype)

    @torch.no_grad()
    def fuse_for_inference(self, channels_last: bool = True, keep_reference: bool = True) -> "Flash3D":
        """Speed up inference in place (returns ``self``): fold every BatchNorm that follows a conv in the
        encoder's residual blocks into that conv (eval statistics: ``w' = w g / sqrt(v + eps)``,
        ``b' = (b - m) g / sqrt(v + eps) + beta``), run the decoders through their fast form
        (:class:`forward3d.models.flash3d.fast.FastDecoders`: convs over a shared input stacked into one,
        Winograd F(2x2, 3x3) at the coarse levels, nearest-upsample + 3x3 conv as four 2x2 convs at the
        coarse resolution, channels_last) and normalise the quaternions without a strided norm. With
        ``channels_last`` (default) the encoder's weights are stored NHWC too (its 1x1 convs then run in
        oneDNN: measured 8-10% less CPU time than NCHW weights at 320x448). ``encoder.bn1`` stays: the first
        skip feature is read before it.

        Outputs equal the unfused model's to float rounding (tested, and at parity with the reference
        fixture). Afterwards the model is for inference only: it cannot be trained and its state_dict no
        longer has the reference layout (fuse after loading; the fast decoders' weights are derived buffers,
        not saved). Measured: 1.21-1.50x less CPU time than the unfused model at 320x448 across runs on a
        loaded 2-core CPU (docs/flash3d_fast_mvs_threads.md).

        ``keep_reference=False`` drops the decoders' original body convolutions once their fast copies are
        built (the heads stay): the fused model then holds one set of decoder weights instead of two, the
        outputs are the same (every ``dtype``, its fp32 levels included, runs through the fast decoders),
        and calling a dropped body (``decoder.body(...)``) raises a RuntimeError. Keep the default (True)
        to compare against the reference operations or to read the decoder weights.
        """
        from torch.nn.utils.fusion import fuse_conv_bn_eval

        from forward3d.models.resnet import BasicBlock, Bottleneck

        if self.fused:
            if not keep_reference:
                self._drop_reference_decoders()
            return self
        self.eval()
        for m in self.core.encoder.modules():
            if isinstance(m, (BasicBlock, Bottleneck)):
                for i in (1, 2, 3):
                    conv, bn = getattr(m, f"conv{i}", None), getattr(m, f"bn{i}", None)
                    if conv is not None and isinstance(bn, nn.BatchNorm2d):
                        setattr(m, f"conv{i}", fuse_conv_bn_eval(conv, bn))
                        setattr(m, f"bn{i}", nn.Identity())
                ds = m.downsample
                if isinstance(ds, nn.Sequential) and len(ds) == 2 and isinstance(ds[1], nn.BatchNorm2d):
                    m.downsample = nn.Sequential(fuse_conv_bn_eval(ds[0], ds[1]), nn.Identity())
        if channels_last:
            self.to(memory_format=torch.channels_last)
        from forward3d.models.flash3d.fast import FastDecoders

        decoders, widths = self._decoders()
        self.fast_decoders = FastDecoders(decoders, widths)
        if not keep_reference:
            self._drop_reference_decoders()
        self.fused = True
        for p in self.parameters():
            p.requires_grad_(False)
        return self

    def _drop_reference_decoders(self) -> None:
        """Replace the decoders' body convolutions (their weights now live in ``fast_decoders`` only) by
        :class:`_DroppedConv`; the heads stay, the forward uses them."""
        for d in self._decoders()[0]:
            for j in range(10):  # upconv(4, 0) ... upconv(0, 1); index 10 is the depth decoder's head
                d.decoder[j] = _DroppedConv()
        self.reference_dropped = True

    def _decoders(self) -> tuple[list[nn.Module], list[tuple[int, ...]]]:
        """The L Gaussian decoders then the depth decoder (if L > 1), and their channel widths."""
        c, L = self.config, self.config.gaussians_per_pixel
        decoders = [self.core.models[f"gauss_decoder_{layer}"] for layer in range(L)]
        widths = [c.num_ch_dec_gauss] * L
        if L > 1:
            decoders.append(self.core.models["depth"])
            widths.append(c.num_ch_dec_depth)
        return decoders, widths

    @property
    def core(self) -> _UniDepthExtended:
        return self.models["unidepth_extended"]

    def normalise_input(self, image: Tensor, depth: Tensor) -> Tensor:
        c = self.config
        x = torch.cat([image, depth / c.depth_input_scale], 1)
        return (x - c.norm_mean) / c.norm_std

    def forward(self, image: Tensor, depth: Tensor, K_src: Tensor) -> Flash3DOutput:
        """The network (the reference's function) on prepared inputs; preprocessing (resize, pad,
        depth) is :func:`forward3d.models.flash3d.preprocess.prepare_input`, a whole photo ->
        Gaussians is :func:`forward3d.pipelines.splat.predict_flash3d`.

        Args:
            image: ``[B, 3, Hp, Wp]`` RGB in [0, 1], zero-padded.
            depth: ``[B, 1, Hp, Wp]`` metric z-depth on the padded grid.
            K_src: ``[B, 3, 3]`` intrinsics of the padded image in pixels.
        """
        c = self.config
        if image.ndim != 4 or image.shape[1] != 3:
            raise ValueError(f"Flash3D: image must be [B, 3, Hp, Wp], found {list(image.shape)}")
        B, _, Hp, Wp = image.shape
        if depth.shape != (B, 1, Hp, Wp):
            raise ValueError(f"Flash3D: depth must be [{B}, 1, {Hp}, {Wp}], found {list(depth.shape)}")
        if K_src.shape != (B, 3, 3):
            raise ValueError(f"Flash3D: K_src must be [{B}, 3, 3], found {list(K_src.shape)}")
        if Hp % 32 or Wp % 32:
            raise ValueError(f"Flash3D: padded size must be a multiple of 32, found {Hp}x{Wp}")
        L = c.gaussians_per_pixel
        x = self.normalise_input(image, depth)
        decoders, _ = self._decoders()
        with self._autocast(image.device):  # encoder and decoder bodies in the compute dtype
            if self.fused:  # the fast path (fast.py), tested equal to the reference operations below
                feats = self.core.encoder(x.contiguous(memory_format=torch.channels_last))
                bodies = self.fast_decoders(feats, self.fp32_levels)
            else:
                feats = self.core.encoder(x)
                bodies = [d.body(feats, self.fp32_levels) for d in decoders]
        # the output convolutions and everything after them in fp32 (quaternions, scales, depths)
        heads = [d.head(y.float()) for d, y in zip(decoders, bodies)]
        if self.fused:
            heads = [h.contiguous() for h in heads]  # NCHW outputs, as the reference path's
        depth_raw = heads[L].contiguous() if L > 1 else None  # [B, L-1, Hp, Wp]
        depths = [depth]
        if depth_raw is not None:
            inc = torch.exp(depth_raw.clamp(*c.depth_clamp))
            for layer in range(L - 1):
                depths.append(depths[-1] + inc[:, layer:layer + 1])
        depth_all = torch.stack(depths, 1).reshape(B * L, 1, Hp, Wp)
        raw = torch.stack(heads[:L], 1)
        r = raw.reshape(B * L, -1, Hp, Wp)
        k = (c.sh_degree + 1) ** 2
        offset, opac, scale, rot, dc, rest = torch.split(r, [3, 1, 3, 4, 3, 3 * (k - 1)], 1)
        inv_K = torch.linalg.inv(K_src.float()).to(K_src.dtype)
        # back-projection on the padded grid, pixel centres at +0.5
        v, u = torch.meshgrid(torch.arange(Hp, device=image.device, dtype=image.dtype),
                              torch.arange(Wp, device=image.device, dtype=image.dtype), indexing="ij")
        pix = torch.stack([u.flatten() + 0.5, v.flatten() + 0.5, torch.ones_like(u).flatten()], 0)  # [3, HW]
        inv_K_l = inv_K.repeat_interleave(L, 0)  # [B*L, 3, 3]
        cam = depth_all.flatten(2) * (inv_K_l @ pix)  # [B*L, 3, HW]
        means3 = cam + offset.flatten(2)
        means = torch.cat([means3, torch.ones_like(means3[:, :1])], 1)
        return Flash3DOutput(
            depth=depth_all, opacity=torch.sigmoid(opac), opacity_logit=opac,
            scaling=torch.exp(scale) * c.scale_lambda, rotation=_normalize4(rot) if self.fused else F.normalize(rot, dim=1),
            features_dc=dc, features_rest=rest, offset=offset, means=means, inv_K=inv_K,
            raw=raw, depth_raw=depth_raw, encoder_input=x, features=feats,
        )

    # loading ------------------------------------------------------------------------------------
    def load_checkpoint_state_dict(self, sd: dict[str, Tensor], source: str = "checkpoint") -> None:
        """Strictly load a reference-layout state_dict (``backproject_depth.*`` ignored,
        ``unidepth.*`` kept aside in ``self.unidepth_state_dict``)."""
        uni = PREFIX + "unidepth."
        self.unidepth_state_dict = {k[len(uni):]: v for k, v in sd.items() if k.startswith(uni)}
        if self.unidepth_state_dict:
            logger.info("%s: %d frozen UniDepth tensors kept for the 'unidepth' depth backbone",
                        source, len(self.unidepth_state_dict))
        ours = {k: v for k, v in sd.items() if not k.startswith(uni)}
        ignored = sorted(k for k in ours if k.startswith(IGNORED_PREFIXES))
        if ignored:
            logger.debug("%s: ignoring batch-size dependent buffers %s", source, ignored)
        strict_load(self, ours, source=source, ignore_prefixes=IGNORED_PREFIXES)

    @classmethod
    def from_pretrained(cls, source: str | os.PathLike, config: Flash3DConfig | None = None,
                        device: str | torch.device = "cpu", dtype: DTypeArg = torch.float32) -> "Flash3D":
        """Load a Flash3D checkpoint.

        ``source``: a ``.pth`` (``{'model': state_dict, ...}``, loaded with ``weights_only=True``),
        a ``.safetensors`` file, a folder with ``model.safetensors``/``model.pth`` (+ optional
        ``config.json``), or a hub id when online. The ResNet depth, L and SH degree are read off the
        checkpoint unless ``config`` is given. ``dtype``: the compute dtype (see :class:`Flash3D`).
        """
        path = resolve_source(source, filenames=("*.safetensors", "*.pth", "config.json"))
        cfg_dict = None
        if path.is_dir():
            cands = [path / n for n in ("model.safetensors", "model.pth", "model_re10k_v2.pth")]
            cands += sorted(path.glob("*.safetensors")) + sorted(path.glob("*.pth"))
            weights = next((p for p in cands if p.is_file()), None)
            if weights is None:
                raise WeightsError(f"{path}: no .safetensors or .pth checkpoint in this folder")
            if (path / "config.json").is_file():
                cfg_dict = read_json_config(path / "config.json")
        else:
            weights = path
            if (path.parent / "config.json").is_file():
                cfg_dict = read_json_config(path.parent / "config.json")
        sd = load_state_dict(weights)
        if config is None:
            try:
                config = Flash3DConfig.from_dict(cfg_dict) if cfg_dict else Flash3DConfig.infer_from_state_dict(sd)
            except WeightsError as exc:
                some = ", ".join(sorted(sd)[:3]) + (", ..." if len(sd) > 3 else "")
                raise WeightsError(f"{weights}: {exc} (its {len(sd)} keys start: {some})") from None
        model = cls(config, dtype=dtype)
        model.load_checkpoint_state_dict(sd, source=str(weights))
        return model.to(device).eval()

    def reference_state_dict(self, batch_size: int = 1) -> dict[str, Tensor]:
        """The state_dict in the reference layout, including the ``backproject_depth.0.*`` buffers
        the reference checkpoint carries (for saving checkpoints the reference code can load)."""
        if self.reference_dropped:
            raise ValueError("Flash3D.reference_state_dict: the decoder bodies were dropped by "
                             "fuse_for_inference(keep_reference=False); save the model before fusing it")
        sd = dict(self.state_dict())
        hp, wp = self.config.padded_size
        L = self.config.gaussians_per_pixel
        n = batch_size * L
        v, u = torch.meshgrid(torch.arange(hp, dtype=torch.float32), torch.arange(wp, dtype=torch.float32), indexing="ij")
        sd["backproject_depth.0.id_coords"] = torch.stack([u, v], 0).repeat(n, 1, 1)[:n]
        pix = torch.stack([u.flatten() + 0.5, v.flatten() + 0.5, torch.ones(hp * wp)], 0)
        sd["backproject_depth.0.pix_coords"] = pix[None].repeat(n, 1, 1)
        sd["backproject_depth.0.ones"] = torch.ones(n, 1, hp * wp)
        for k, t in self.unidepth_state_dict.items():
            sd[PREFIX + "unidepth." + k] = t
        return sd


def save_checkpoint(path: str | os.PathLike, model: Flash3D, optimiser_state: dict | None = None, step: int = 0,
                    ema_state: dict[str, Tensor] | None = None) -> None:
    """Save in the reference format ``{'model': state_dict, 'version': '1.0', 'optimiser': ..., 'step': int}``
    (``model`` holds the EMA weights when given, as the reference saves them)."""
    from forward3d.io.atomic import atomic_path

    sd = model.reference_state_dict()
    if ema_state is not None:
        sd.update({k: v for k, v in ema_state.items() if k in sd})
    with atomic_path(Path(path)) as tmp:
        torch.save({"model": sd, "version": "1.0", "optimiser": optimiser_state or {}, "step": int(step)}, tmp)
