"""LPIPS-VGG (v0.1) in plain PyTorch, with user-supplied weights.

The metric of Zhang et al. 2018 (the ``lpips`` package, ``net='vgg'``, ``version='0.1'``):

1. inputs in [-1, 1] go through the ImageNet scaling layer ``(x - shift) / scale`` with
   ``shift = [-.030, -.088, -.188]`` and ``scale = [.458, .448, .450]``;
2. VGG16 ``features`` up to relu5_3, read at relu1_2, relu2_2, relu3_3, relu4_3, relu5_3
   (torchvision indices 3, 8, 15, 22, 29);
3. each feature map is unit-normalised over channels (``x / (||x|| + 1e-10)``), the squared
   difference is weighted by a 1x1 convolution without bias (``lin{k}``), averaged over space and
   summed over the five layers.

Nothing is downloaded. Weights come from files the user provides (loaded with
``torch.load(weights_only=True)`` or safetensors, keys checked strictly):

- a VGG16 state_dict with torchvision key names (``features.0.weight`` ...; ``classifier.*`` keys of a
  full ``vgg16`` state_dict are ignored), e.g. torchvision's ``vgg16-397923af.pth``;
- the LPIPS linear layers with the ``lpips`` package's key names (``lin0.model.1.weight`` ...
  ``lin4.model.1.weight``), i.e. ``lpips/weights/v0.1/vgg.pth``;
- or one combined file holding both sets of keys (the ``lpips.LPIPS`` module's own state_dict, with
  ``net.slice{k}.{i}.*`` names, is accepted too).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
from torch import Tensor, nn

logger = logging.getLogger(__name__)

__all__ = ["LPIPS", "VGG16Features", "LPIPS_CHANNELS", "VGG16_CONV_INDICES", "expected_lpips_shapes", "load_lpips"]

# torchvision vgg16 "features": (out channels or "M" for max-pool) per conv block
_VGG16_CFG = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]
# indices of the ReLUs LPIPS reads (end of each slice, exclusive ends 4, 9, 16, 23, 30)
_SLICE_ENDS = (4, 9, 16, 23, 30)
LPIPS_CHANNELS = (64, 128, 256, 512, 512)
_SHIFT = (-0.030, -0.088, -0.188)
_SCALE = (0.458, 0.448, 0.450)

HOW_TO_GET = (
    "LPIPS-VGG needs two weight files that forward3d does not download: (1) torchvision's VGG16 ImageNet "
    "weights (https://download.pytorch.org/models/vgg16-397923af.pth, or "
    "torch.save(torchvision.models.vgg16(weights='IMAGENET1K_V1').state_dict(), 'vgg16.pth')) and (2) the "
    "LPIPS v0.1 linear layers 'lpips/weights/v0.1/vgg.pth' from the lpips package "
    "(https://github.com/richzhang/PerceptualSimilarity); pass them as --lpips-weights VGG16.pth,LIN.pth "
    "(or one file holding both)."
)


def _vgg16_layers() -> list[nn.Module]:
    layers: list[nn.Module] = []
    cin = 3
    for v in _VGG16_CFG:
        if v == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers += [nn.Conv2d(cin, int(v), 3, padding=1), nn.ReLU(inplace=False)]
            cin = int(v)
    return layers


VGG16_CONV_INDICES = tuple(i for i, m in enumerate(_vgg16_layers()) if isinstance(m, nn.Conv2d))


class VGG16Features(nn.Module):
    """torchvision's ``vgg16().features`` (same module indices and key names: ``features.0.weight``)."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(*_vgg16_layers())

    def forward(self, x: Tensor) -> list[Tensor]:
        """``x``: ``[B, 3, H, W]`` (already ImageNet-scaled). Returns the 5 LPIPS feature maps."""
        outs, start = [], 0
        for end in _SLICE_ENDS:
            for i in range(start, end):
                x = self.features[i](x)
            outs.append(x)
            start = end
        return outs


class _Lin(nn.Module):
    """``lin{k}``: Dropout + 1x1 conv without bias (keys ``model.1.weight``, as the lpips package)."""

    def __init__(self, cin: int):
        super().__init__()
        self.model = nn.Sequential(nn.Dropout(0.0), nn.Conv2d(cin, 1, 1, bias=False))

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)


def _normalise(x: Tensor, eps: float = 1e-10) -> Tensor:
    return x / (torch.sqrt((x * x).sum(1, keepdim=True)) + eps)


class LPIPS(nn.Module):
    """LPIPS-VGG v0.1. Parameters are frozen; gradients flow to the inputs.

    State-dict keys: ``features.*`` (torchvision VGG16) and ``lin{0..4}.model.1.weight`` (lpips).
    Build with random weights (tests) or load with :meth:`from_files`.
    """

    def __init__(self) -> None:
        super().__init__()
        self.vgg = VGG16Features()
        for k, c in enumerate(LPIPS_CHANNELS):
            self.add_module(f"lin{k}", _Lin(c))
        self.register_buffer("shift", torch.tensor(_SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(_SCALE).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()

    # keys without the "vgg." prefix: torchvision features.* + lpips lin*
    def state_dict_flat(self) -> dict[str, Tensor]:
        """The weights under the public key names (``features.N.*`` and ``linK.model.1.weight``)."""
        return {k[len("vgg."):] if k.startswith("vgg.") else k: v for k, v in self.state_dict().items()}

    def load_flat(self, sd: dict[str, Tensor], source: str = "LPIPS weights") -> None:
        """Strictly load public-name weights (see :meth:`state_dict_flat`)."""
        from forward3d.hub import strict_load

        strict_load(self, {("vgg." + k if k.startswith("features.") else k): v for k, v in sd.items()}, source=source)

    def forward(self, x: Tensor, y: Tensor, normalize: bool = False) -> Tensor:
        """LPIPS distance per image ``[B]``.

        Args:
            x, y: ``[B, 3, H, W]`` images in [-1, 1] (or in [0, 1] with ``normalize=True``).
        """
        if x.shape != y.shape or x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"LPIPS: expected two [B, 3, H, W] images of one shape, found {list(x.shape)} and "
                             f"{list(y.shape)}")
        if normalize:
            x, y = 2 * x - 1, 2 * y - 1
        dtype = self.shift.dtype
        fx = self.vgg((x.to(dtype) - self.shift) / self.scale)
        fy = self.vgg((y.to(dtype) - self.shift) / self.scale)
        total = x.new_zeros(x.shape[0], dtype=dtype)
        for k, (a, b) in enumerate(zip(fx, fy)):
            d = (_normalise(a) - _normalise(b)) ** 2
            total = total + getattr(self, f"lin{k}")(d).mean(dim=(1, 2, 3))
        return total

    @classmethod
    def from_files(cls, *paths: str | os.PathLike) -> "LPIPS":
        """Load from one combined file or from a VGG16 file and a linear-layers file (any order)."""
        return load_lpips(*paths)


def expected_lpips_shapes() -> dict[str, tuple[int, ...]]:
    """The public key -> shape listing (torchvision VGG16 features up to relu5_3 + lpips lin layers)."""
    return {k: tuple(v.shape) for k, v in LPIPS().state_dict_flat().items()}


def _read(path: Path) -> dict[str, Tensor]:
    from forward3d.hub import WeightsError, load_state_dict

    if not path.is_file():
        raise FileNotFoundError(f"{path}: LPIPS weight file not found. {HOW_TO_GET}")
    try:
        return load_state_dict(path)
    except WeightsError as exc:
        raise ValueError(f"{exc}. {HOW_TO_GET}") from exc


def _canonical(sd: dict[str, Tensor], source: str) -> dict[str, Tensor]:
    """Map accepted spellings to the public names; drop VGG ``classifier.*`` and lpips buffers."""
    out: dict[str, Tensor] = {}
    for k, v in sd.items():
        if k.startswith("classifier.") or k in ("scaling_layer.shift", "scaling_layer.scale"):
            continue
        if k.startswith("net.slice"):  # lpips.LPIPS state_dict: net.slice{s}.{i}.weight keeps torchvision indices
            k = "features." + k.split(".", 2)[2]
        elif k.startswith("vgg.features."):
            k = k[len("vgg."):]
        elif k.startswith("module."):
            k = k[len("module."):]
        if k.startswith("features."):
            idx = int(k.split(".")[1])
            if idx >= _SLICE_ENDS[-1]:
                raise ValueError(f"{source}: unexpected VGG key {k!r} (LPIPS uses features.0 .. features.29)")
        out[k] = v
    return out


def load_lpips(*paths: str | os.PathLike, device: str | torch.device = "cpu") -> LPIPS:
    """Build :class:`LPIPS` from user files (see the module docstring); keys are checked strictly.

    ``paths`` may also be one string ``"VGG.pth,LIN.pth"`` (the CLI form).
    """
    flat: list[Path] = []
    for p in paths:
        flat += [Path(s) for s in str(p).split(",") if s] if isinstance(p, str) else [Path(p)]
    if not flat:
        raise ValueError(f"LPIPS: no weight file given. {HOW_TO_GET}")
    sd: dict[str, Tensor] = {}
    for p in flat:
        part = _canonical(_read(p), str(p))
        dup = sorted(set(part) & set(sd))
        if dup:
            raise ValueError(f"{p}: keys {dup[:4]} also given by another LPIPS weight file")
        sd.update(part)
    model = LPIPS()
    want = set(model.state_dict_flat())
    missing = sorted(want - set(sd))
    if missing:
        have_vgg = any(k.startswith("features.") for k in sd)
        have_lin = any(k.startswith("lin") for k in sd)
        what = "the VGG16 features" if not have_vgg else "the LPIPS linear layers" if not have_lin else "some keys"
        raise ValueError(f"{', '.join(map(str, flat))}: {what} missing (expected {len(want)} keys, missing "
                         f"{missing[:5]}{' ...' if len(missing) > 5 else ''}). {HOW_TO_GET}")
    model.load_flat(sd, source=", ".join(map(str, flat)))
    logger.info("LPIPS-VGG loaded from %s", ", ".join(map(str, flat)))
    return model.to(device)
