"""Monocular depth backbones behind one small interface.

A :class:`DepthEstimator` maps an image (+ optional intrinsics) to z-depth. ``metric`` says whether
that depth is in metres; relative models (DPT, Depth Anything "relative", MiDaS...) predict affine-
invariant inverse depth and need a scale from somewhere: sensor points, a user scale, or a clear error.

Back-ends:

- ``sensor`` / ``file``: a given depth map (an RGB-D camera, a depth PNG/NPY file).
- ``transformers``: any depth model of the ``transformers`` library (Depth Anything V1/V2, DPT,
  ZoeDepth, Depth Pro, GLPN...) from a local folder or a hub id when online
  (``pip install 'forward3d[depth]'``).
- ``unidepth``: UniDepth, when the user has the ``unidepth`` package installed (the reference
  Flash3D backbone).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

logger = logging.getLogger(__name__)

__all__ = [
    "DepthEstimator", "SensorDepth", "TransformersDepth", "UniDepthEstimator", "ScaledDepth",
    "read_depth_file", "read_image_and_depth", "make_depth_estimator", "fit_inverse_depth_affine",
]

# transformers model_type -> metric by default (depth_estimation_type in the config wins)
_METRIC_MODEL_TYPES = {"zoedepth": True, "depth_pro": True, "glpn": True, "dpt": False, "depth_anything": False}


class DepthEstimator:
    """Interface: ``predict(image [B,3,H,W] in [0,1], K [B,3,3] | None) -> depth [B,H,W]``."""

    name: str = "depth"
    metric: bool = True

    def predict(self, image: Tensor, K: Tensor | None = None) -> Tensor:
        raise NotImplementedError

    def __call__(self, image: Tensor, K: Tensor | None = None) -> Tensor:
        return self.predict(image, K)


def read_depth_file(path: str | os.PathLike, scale: float | None = None) -> np.ndarray:
    """Read a depth map: integer data (16-bit PNG/TIFF, integer ``.npy``) divided by ``scale`` (default
    1000 = millimetres), float data (``.npy``, 32-bit TIFF) in metres (divided by ``scale`` when given).
    Returns ``[H, W]`` float32, 0 = invalid. A median depth implausible for the unit is refused with the
    ``--depth-scale`` that fits (a warning only when ``scale`` was given):
    :func:`forward3d.io.depth_units.check_depth_units`."""
    from forward3d.io.source_base import read_depth

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: depth file not found")
    return read_depth(p, 1000.0 if scale is None else scale, float_scale=1.0 if scale is None else scale,
                      check_units=True, explicit_scale=scale is not None)


def read_image_and_depth(image_path: str | os.PathLike, depth_path: str | os.PathLike | None = None,
                         depth_scale: float | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """Read a photo (``[H, W, 3]`` uint8, EXIF orientation applied, 16-bit images rescaled) and
    optionally its depth map (:func:`read_depth_file`).

    Depth maps carry no EXIF: the depth is taken to be in the orientation the photo is SHOWN in (what
    a depth network run on the upright photo produces). A depth map in the stored (sensor) orientation
    of an EXIF-rotated photo (its size is the stored size) gets the same rotation, with a log note.
    Any other size mismatch is a ``ValueError`` naming the depth file.
    """
    from forward3d.io.source_base import apply_exif_orientation, exif_orientation, read_rgb

    p = Path(image_path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: image not found")
    image = read_rgb(p)
    if depth_path is None:
        return image, None
    depth = read_depth_file(depth_path, depth_scale)
    h, w = image.shape[:2]
    if depth.shape != (h, w):
        orient = exif_orientation(p)
        if orient in (5, 6, 7, 8) and depth.shape == (w, h) or orient in (2, 3, 4) and depth.shape == (h, w):
            logger.info("%s: depth is in the stored orientation of %s (EXIF orientation %d): rotating it the "
                        "same way", depth_path, p.name, orient)
            depth = apply_exif_orientation(depth, orient)
        else:
            raise ValueError(f"{depth_path}: depth size {depth.shape[1]}x{depth.shape[0]} differs from the image "
                             f"size {w}x{h} of {p.name} (expected the same size)")
    return image, depth


class SensorDepth(DepthEstimator):
    """A given metric depth map (``[H, W]``) for one image; resized with nearest neighbour."""

    name = "sensor"
    metric = True

    def __init__(self, depth: np.ndarray | Tensor):
        self.depth = torch.as_tensor(np.asarray(depth, np.float32) if isinstance(depth, np.ndarray) else depth).float()
        if self.depth.ndim != 2:
            raise ValueError(f"SensorDepth: expected [H, W], found {list(self.depth.shape)}")

    def predict(self, image: Tensor, K: Tensor | None = None) -> Tensor:
        h, w = image.shape[-2:]
        d = F.interpolate(self.depth[None, None], size=(h, w), mode="nearest")[:, 0]
        return d.expand(image.shape[0], h, w).to(image.device)


def fit_inverse_depth_affine(rel: Tensor, ref_depth: Tensor, mask: Tensor | None = None) -> tuple[float, float]:
    """Fit ``1 / depth = s * rel + t`` (least squares on valid pixels, then one trimmed refit)."""
    valid = torch.isfinite(rel) & torch.isfinite(ref_depth) & (ref_depth > 0)
    if mask is not None:
        valid &= mask
    if int(valid.sum()) < 10:
        raise ValueError(f"relative depth needs a scale: only {int(valid.sum())} valid reference depth pixels (need >= 10)")
    x = rel[valid].double()
    y = 1.0 / ref_depth[valid].double()
    for _ in range(2):
        A = torch.stack([x, torch.ones_like(x)], 1)
        sol = torch.linalg.lstsq(A, y[:, None]).solution[:, 0]
        r = (A @ sol - y).abs()
        keep = r <= torch.quantile(r, 0.9)
        x, y = x[keep], y[keep]
    return float(sol[0]), float(sol[1])


class ScaledDepth(DepthEstimator):
    """Makes a relative (inverse-depth) estimator metric with reference depth (sparse sensor points
    or a full depth map of the same image): ``1/depth = s * rel + t``."""

    def __init__(self, base: DepthEstimator, reference: np.ndarray | Tensor):
        self.base = base
        self.name = f"{base.name}+scaled"
        self.metric = True
        self.reference = SensorDepth(reference)

    def predict(self, image: Tensor, K: Tensor | None = None) -> Tensor:
        rel = self.base.predict(image, K)
        ref = self.reference.predict(image, K)
        out = []
        for b in range(rel.shape[0]):
            s, t = fit_inverse_depth_affine(rel[b], ref[b])
            inv = (s * rel[b] + t).clamp_min(1e-3)
            out.append(1.0 / inv)
        return torch.stack(out)


class TransformersDepth(DepthEstimator):
    """A ``transformers`` depth-estimation model (``AutoModelForDepthEstimation``).

    ``metric`` defaults to the config's ``depth_estimation_type`` (Depth Anything metric variants)
    or the model type (ZoeDepth, Depth Pro, GLPN metric; DPT and relative Depth Anything predict
    relative inverse depth).
    """

    def __init__(self, source: str | os.PathLike, device: str | torch.device = "cpu", metric: bool | None = None):
        try:
            from transformers import AutoImageProcessor, AutoModelForDepthEstimation
        except ImportError as exc:
            raise ImportError("the 'transformers' depth backbone needs: pip install 'forward3d[depth]'") from exc
        src = os.fspath(source)
        if not Path(src).exists() and os.environ.get("HF_HUB_OFFLINE", "0") in ("1", "true", "True"):
            raise ValueError(f"{src}: not a local folder and HF_HUB_OFFLINE is set; download the model on a "
                             f"machine with network access and pass its folder")
        try:
            self.model = AutoModelForDepthEstimation.from_pretrained(src).to(device).eval()
            self.processor = AutoImageProcessor.from_pretrained(src)
        except OSError as exc:
            raise ValueError(f"{src}: cannot load a transformers depth model ({str(exc).splitlines()[0]})") from exc
        cfg = self.model.config
        if metric is None:
            det = getattr(cfg, "depth_estimation_type", None)
            metric = det == "metric" if det is not None else _METRIC_MODEL_TYPES.get(cfg.model_type, False)
        self.metric = bool(metric)
        self.name = f"transformers:{cfg.model_type}"
        self.device = torch.device(device)

    @torch.inference_mode()
    def predict(self, image: Tensor, K: Tensor | None = None) -> Tensor:
        h, w = image.shape[-2:]
        imgs = [(im.permute(1, 2, 0).clamp(0, 1).cpu().numpy() * 255).astype(np.uint8) for im in image]
        inputs = self.processor(images=imgs, return_tensors="pt").to(self.device)
        pred = self.model(**inputs).predicted_depth  # [B, h', w']
        if pred.ndim == 4:
            pred = pred[:, 0]
        return F.interpolate(pred[:, None].float(), size=(h, w), mode="bilinear", align_corners=False)[:, 0].to(image.device)


class UniDepthEstimator(DepthEstimator):
    """UniDepth (V1/V2) from the user's ``unidepth`` package; metric z-depth, uses K when given."""

    name = "unidepth"
    metric = True

    def __init__(self, source: str = "lpiccinelli/unidepth-v1-vitl14", device: str | torch.device = "cpu",
                 state_dict: dict[str, Tensor] | None = None):
        try:
            from unidepth.models import UniDepthV1  # type: ignore[import-not-found]
        except ImportError as exc:
            raise ImportError("the 'unidepth' backbone needs the UniDepth package "
                              "(https://github.com/lpiccinelli-eth/UniDepth); install it, or use "
                              "--depth-model with a transformers model or --depth with a depth map") from exc
        if state_dict:
            self.model = UniDepthV1.from_pretrained(source) if Path(str(source)).exists() else None
            if self.model is None:
                raise ValueError("UniDepth: pass a local UniDepth folder to build the model for the checkpoint's weights")
            self.model.load_state_dict(state_dict, strict=True)
        else:
            self.model = UniDepthV1.from_pretrained(source)
        self.model = self.model.to(device).eval()

    @torch.inference_mode()
    def predict(self, image: Tensor, K: Tensor | None = None) -> Tensor:
        out = self.model.infer((image * 255).clamp(0, 255), K)
        return out["depth"][:, 0]


def make_depth_estimator(spec: str, device: str | torch.device = "cpu", **kwargs) -> DepthEstimator:
    """Build an estimator from a CLI string: ``unidepth[:SOURCE]``, ``transformers:PATH_OR_ID`` or just
    a local transformers model folder / hub id."""
    if spec == "unidepth" or spec.startswith("unidepth:"):
        src = spec.split(":", 1)[1] if ":" in spec else "lpiccinelli/unidepth-v1-vitl14"
        return UniDepthEstimator(src, device=device, **kwargs)
    if spec.startswith("transformers:"):
        spec = spec.split(":", 1)[1]
    return TransformersDepth(spec, device=device, **kwargs)
