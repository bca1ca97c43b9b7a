"""Depth completion: ``complete(image, sparse_depth, mask) -> depth`` consistent with known depth.

Invisible Stitch completes the depth of an outpainted view so that it joins the depth already known
(rendered from the scene so far) without a step at the seam. Two completers share one interface:

- :class:`ZoeDepthCompleter`: the ZoeDepth network with 5 input channels
  ``[RGB, sparse_depth / 10, mask]`` (the published depth-completion model), built with transformers'
  ZoeDepth modules from a local folder (``config.json`` + weights) or from an original isl-org ZoeDepth
  checkpoint whose key names :mod:`forward3d.models.zoedepth_keys` maps. The channel surgery
  (:func:`expand_input_channels`) widens the BEiT patch embedding from 3 to 5 input channels; the two
  new channels start at zero, so a plain 3-channel ZoeDepth checkpoint loads and predicts exactly as
  the monocular model until fine-tuned.
- :class:`AlignedCompleter`: the weight-free fallback. A monocular depth (any
  :class:`~forward3d.models.depth.DepthEstimator`, or a callable of the view) is aligned to the sparse
  depth by a robust scale + shift in inverse depth (RANSAC, :func:`forward3d.geometry.depth_fit.
  fit_scale_shift_ransac`), then the remaining residual at the seam is propagated into the unknown
  region and faded out over ``seam_width`` pixels. Without a monocular source, the known inverse depth
  itself is extended into the unknown region (the "previous step's depth").

Arrays: ``image [H, W, 3]`` uint8, ``sparse_depth [H, W]`` metric z-depth (0 = unknown), ``mask
[H, W]`` bool (True = known depth), result ``[H, W]`` float32 metres, equal to ``sparse_depth`` where
``mask`` is set.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from forward3d.models.depth import DepthEstimator

logger = logging.getLogger(__name__)

__all__ = ["DepthCompleter", "AlignedCompleter", "ZoeDepthCompleter", "expand_input_channels",
           "check_completion_inputs", "make_depth_completer"]

MIN_INV_DEPTH = 1e-3  # 1 km: the farthest depth a completion returns


def check_completion_inputs(image: np.ndarray, sparse_depth: np.ndarray, mask: np.ndarray, where: str = "complete"):
    """Validate shapes/dtypes; returns ``(sparse float64, mask bool)`` with ``mask`` limited to valid depth."""
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"{where}: expected image [H, W, 3], found {list(image.shape)}")
    h, w = image.shape[:2]
    sparse = np.asarray(sparse_depth, np.float64)
    m = np.asarray(mask)
    if sparse.shape != (h, w) or m.shape != (h, w):
        raise ValueError(f"{where}: expected sparse_depth and mask of shape [{h}, {w}] (the image's), found "
                         f"{list(sparse.shape)} and {list(m.shape)}")
    m = m.astype(bool) & np.isfinite(sparse) & (sparse > 0)
    return sparse, m


class DepthCompleter:
    """Interface: ``complete(image, sparse_depth, mask, K=None, c2w=None) -> depth [H, W]``.

    ``K`` (``[3, 3]``) and ``c2w`` (``[4, 4]``) describe the view; completers that do not need them
    ignore them (an oracle in the tests uses them)."""

    name = "completer"

    def complete(self, image: np.ndarray, sparse_depth: np.ndarray, mask: np.ndarray,
                 K: np.ndarray | None = None, c2w: np.ndarray | None = None) -> np.ndarray:
        raise NotImplementedError

    def __call__(self, image, sparse_depth, mask, K=None, c2w=None) -> np.ndarray:
        return self.complete(image, sparse_depth, mask, K=K, c2w=c2w)


def _cv2():
    from forward3d.io._cv import import_cv2

    return import_cv2()


def _extend(values: np.ndarray, known: np.ndarray, smooth_iters: int = 30) -> np.ndarray:
    """Fill the pixels outside ``known`` smoothly from the known ones.

    Push-pull: mask-weighted 2x2 averages down a pyramid until every cell has a value, then each level
    fills its holes from the (bilinearly upsampled) coarser one; then ``smooth_iters`` Jacobi steps of
    the Laplace equation on the filled pixels (the known ones stay fixed)."""
    v = np.where(known, values, 0.0).astype(np.float64)
    if known.all():
        return v
    if not known.any():
        raise ValueError("extend: no known value to extend from")
    out = _push_pull(v, known.astype(np.float64))
    free = ~known
    for _ in range(smooth_iters):
        p = np.pad(out, 1, mode="edge")
        avg = 0.25 * (p[:-2, 1:-1] + p[2:, 1:-1] + p[1:-1, :-2] + p[1:-1, 2:])
        out = np.where(free, avg, out)
    return out


def _push_pull(v: np.ndarray, w: np.ndarray) -> np.ndarray:
    h, wd = v.shape
    if (w > 0).all() or (h <= 1 and wd <= 1):
        return np.where(w > 0, v, v[w > 0].mean() if (w > 0).any() else 0.0)
    ph, pw = h + h % 2, wd + wd % 2
    vp = np.pad(v * w, ((0, ph - h), (0, pw - wd)))
    wp = np.pad(w, ((0, ph - h), (0, pw - wd)))
    sv = vp.reshape(ph // 2, 2, pw // 2, 2).sum((1, 3))
    sw = wp.reshape(ph // 2, 2, pw // 2, 2).sum((1, 3))
    coarse = _push_pull(np.where(sw > 0, sv / np.maximum(sw, 1e-12), 0.0), (sw > 0).astype(np.float64))
    up = F.interpolate(torch.from_numpy(coarse)[None, None], scale_factor=2, mode="bilinear",
                       align_corners=False)[0, 0].numpy()[:h, :wd]
    return np.where(w > 0, v, up)


def _distance_to_known(known: np.ndarray) -> np.ndarray:
    """Pixel distance of every pixel to the nearest known pixel (0 on known pixels)."""
    cv2 = _cv2()
    return cv2.distanceTransform((~known).astype(np.uint8), cv2.DIST_L2, 5).astype(np.float64)


MonocularSource = DepthEstimator | Callable[[np.ndarray, np.ndarray | None, np.ndarray | None], np.ndarray]


class AlignedCompleter(DepthCompleter):
    """Weight-free completion: aligned monocular depth (or the known depth extended), blended at the seam.

    Args:
        monocular: a :class:`~forward3d.models.depth.DepthEstimator` (``metric`` says whether it
            predicts depth or relative inverse depth), or a callable ``(image, K, c2w) -> depth [H, W]``;
            ``None``: extend the known inverse depth into the unknown region.
        seam_width: pixels over which the residual at the seam fades out (0 = no seam blend).
        threshold: RANSAC inlier bound, relative error in inverse depth (1 %: inliers at depth edges
            would bias the fit, and the bias would add up view after view).
        min_known: fewest known pixels to fit scale and shift; below it a metric estimate is used as is.
    """

    name = "aligned"

    def __init__(self, monocular: MonocularSource | None = None, seam_width: float = 8.0, threshold: float = 0.01,
                 min_known: int = 20):
        self.monocular = monocular
        self.seam_width = float(seam_width)
        self.threshold = float(threshold)
        self.min_known = int(min_known)
        self.last_fit: tuple[float, float] | None = None  # (scale, shift) of the last alignment

    def _inverse_estimate(self, image: np.ndarray, K, c2w) -> tuple[np.ndarray, bool]:
        """``(x, metric)``: the monocular estimate as inverse depth (metric) or relative inverse depth."""
        if isinstance(self.monocular, DepthEstimator):
            img = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float() / 255.0
            Kt = None if K is None else torch.as_tensor(K, dtype=torch.float32)[None]
            with torch.inference_mode():
                d = self.monocular.predict(img, Kt)[0].cpu().double().numpy()
            metric = bool(getattr(self.monocular, "metric", True))
        else:
            d = np.asarray(self.monocular(image, K, c2w), np.float64)
            metric = True
        if d.shape != image.shape[:2]:
            raise ValueError(f"AlignedCompleter: the monocular depth has shape {list(d.shape)}, expected "
                             f"{list(image.shape[:2])}")
        if not metric:
            return d, False
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(np.isfinite(d) & (d > 0), 1.0 / d, 0.0), True

    def complete(self, image, sparse_depth, mask, K=None, c2w=None) -> np.ndarray:
        from forward3d.geometry.depth_fit import fit_scale_shift_ransac

        sparse, known = check_completion_inputs(image, sparse_depth, mask, "AlignedCompleter.complete")
        inv_known = np.where(known, 1.0 / np.where(known, sparse, 1.0), 0.0)
        if known.all():
            return sparse.astype(np.float32)
        if self.monocular is None:
            if not known.any():
                raise ValueError("AlignedCompleter: no known depth and no monocular depth source: give a depth "
                                 "map or a depth model")
            inv = _extend(inv_known, known)
            self.last_fit = None
        else:
            x, metric = self._inverse_estimate(np.asarray(image), K, c2w)
            anchor = known  # known pixels the seam correction is taken from (RANSAC inliers when fitted)
            if int(known.sum()) >= self.min_known:
                # fit in inverse depth: s * x + t ~ 1 / sparse (relative residual thresholds)
                s, t, inl = fit_scale_shift_ransac(x, np.where(known, inv_known, 0.0), known, threshold=self.threshold)
                anchor = inl if inl.any() else known
                inv = s * x + t
                self.last_fit = (s, t)
            elif metric:
                inv = x
                self.last_fit = (1.0, 0.0)
            else:
                raise ValueError(f"AlignedCompleter: the monocular depth is relative and only {int(known.sum())} "
                                 f"known pixels can scale it (need >= {self.min_known})")
            bad = ~(np.isfinite(inv) & (inv > 0))
            if bad.any():  # pixels the estimate has no (positive) depth for: extend the rest
                inv = _extend(np.where(bad, 0.0, inv), ~bad & np.isfinite(inv))
            if anchor.any() and self.seam_width > 0:
                # outliers (occlusion edges, the estimate's mistakes) must not bend the seam
                resid = _extend(np.where(anchor, inv_known - inv, 0.0), anchor)
                fade = np.exp(-_distance_to_known(known) / self.seam_width)
                inv = inv + fade * resid
        inv = np.maximum(inv, MIN_INV_DEPTH)
        return np.where(known, sparse, 1.0 / inv).astype(np.float32)


# ---------------------------------------------------------------------------------------------------
# ZoeDepth with 5 input channels
# ---------------------------------------------------------------------------------------------------


def _patch_embeddings(model):
    """The BEiT patch embedding module of a transformers ZoeDepth model (``backbone.<beit>.embeddings``)."""
    for name, mod in model.named_modules():
        if name.endswith("embeddings.patch_embeddings") and hasattr(mod, "projection"):
            return mod
    raise ValueError(f"expand_input_channels: no BEiT patch embedding found in {type(model).__name__}")


def expand_input_channels(model, num_channels: int = 5):
    """Widen a ZoeDepth model's input from 3 (RGB) to ``num_channels`` in place (the channel surgery).

    The BEiT patch embedding ``Conv2d(3, D, p, p)`` becomes ``Conv2d(num_channels, D, p, p)``: its RGB
    filters are copied, the filters of the new channels (sparse depth / 10, mask) are zero, so the
    widened model computes exactly the 3-channel model's output until it is trained. The configs'
    ``num_channels`` are updated so a saved model reloads with 5 channels. Returns ``model``.
    """
    emb = _patch_embeddings(model)
    old = emb.projection
    if old.in_channels == num_channels:
        return model
    if old.in_channels > num_channels:
        raise ValueError(f"expand_input_channels: the model already has {old.in_channels} input channels "
                         f"(> {num_channels})")
    new = torch.nn.Conv2d(num_channels, old.out_channels, old.kernel_size, old.stride, old.padding,
                          bias=old.bias is not None).to(old.weight.device, old.weight.dtype)
    with torch.no_grad():
        new.weight.zero_()
        new.weight[:, :old.in_channels] = old.weight
        if old.bias is not None:
            new.bias.copy_(old.bias)
    emb.projection = new
    emb.num_channels = num_channels
    bb = getattr(model.config, "backbone_config", None)
    if bb is not None:
        bb.num_channels = num_channels
    return model


class ZoeDepthCompleter(DepthCompleter):
    """The Invisible Stitch depth-completion network: ZoeDepth over ``[RGB, sparse / 10, mask]``.

    Build with :meth:`from_pretrained` (a local transformers ZoeDepth folder whose patch embedding has
    5 input channels, or a 3-channel ZoeDepth that is widened with :func:`expand_input_channels`), or
    from a model directly (tests use a tiny random config). RGB is normalised with ``mean``/``std``
    (ZoeDepth's 0.5 / 0.5 unless the folder's preprocessor config says otherwise); the input is resized
    to ``size`` (a multiple of the patch size), the prediction back to the image size. Known pixels
    keep their sparse depth.
    """

    name = "zoedepth-completion"

    def __init__(self, model, size: tuple[int, int] = (384, 512), mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5),
                 device: str | torch.device = "cpu"):
        expand_input_channels(model, 5)
        self.model = model.to(device).eval()
        self.size = (int(size[0]), int(size[1]))
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
        self.device = torch.device(device)

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, device: str | torch.device = "cpu") -> "ZoeDepthCompleter":
        """Load a local transformers folder (``config.json`` + ``model.safetensors``/``pytorch_model.bin``), or
        an original isl-org ZoeDepth checkpoint (``.pt``/``.pth``/``.ckpt``: a file, or the one such file of a
        folder; its ``config.json`` if beside it, else ZoeD_N's), with the key names mapped by
        :mod:`forward3d.models.zoedepth_keys`."""
        p = Path(path)
        original = p if p.is_file() else None
        if p.is_dir() and not any((p / n).is_file() for n in ("model.safetensors", "pytorch_model.bin")):
            found = sorted(f for ext in ("*.pt", "*.pth", "*.ckpt") for f in p.glob(ext))
            if len(found) > 1:
                raise ValueError(f"{p}: several ZoeDepth checkpoints ({', '.join(f.name for f in found)}): give one file")
            original = found[0] if found else None
        folder = p.parent if original is not None and p.is_file() else p
        if original is None and not (folder / "config.json").is_file():
            raise ValueError(f"{p}: expected a local ZoeDepth folder with config.json (and model weights) or an "
                             "original ZoeDepth checkpoint file (.pt)")
        try:
            from transformers import ZoeDepthConfig, ZoeDepthForDepthEstimation
        except ImportError as exc:
            raise ImportError("the ZoeDepth depth-completion model needs: pip install 'forward3d[depth]'") from exc
        config = ZoeDepthConfig.from_pretrained(folder) if (folder / "config.json").is_file() else None
        if original is not None:
            from forward3d.models.zoedepth_keys import load_original_zoedepth

            model = load_original_zoedepth(original, config)
            config = model.config
        channels = getattr(getattr(config, "backbone_config", None), "num_channels", 3)
        if channels not in (3, 5):
            raise ValueError(f"{p}: expected a ZoeDepth with 3 (RGB) or 5 (RGB, sparse depth, mask) input "
                             f"channels, found {channels}")
        if original is None:
            try:  # transformers maps the checkpoint's key names; a 3-channel model is widened afterwards
                model = ZoeDepthForDepthEstimation.from_pretrained(p, config=config)
            except (OSError, RuntimeError) as exc:
                raise ValueError(f"{p}: cannot load the ZoeDepth weights ({str(exc).splitlines()[0]})") from exc
        if channels == 3:
            logger.info("%s: a 3-channel ZoeDepth: widened to [RGB, sparse depth, mask] with zero filters "
                        "(it predicts as the monocular model until fine-tuned)", p)
        mean, std, size = (0.5,) * 3, (0.5,) * 3, (384, 512)
        pp = folder / "preprocessor_config.json"
        if pp.is_file():
            from forward3d.io.jsonio import read_json

            d = read_json(pp)
            mean, std = tuple(d.get("image_mean", mean)), tuple(d.get("image_std", std))
            s = d.get("size", {})
            size = (int(s.get("height", size[0])), int(s.get("width", size[1])))
        return cls(model, size=size, mean=mean, std=std, device=device)

    def network_input(self, image: np.ndarray, sparse: np.ndarray, known: np.ndarray) -> torch.Tensor:
        """``[1, 5, h, w]``: normalised RGB, sparse depth / 10 (0 where unknown), mask (1 = known)."""
        h, w = self.size
        rgb = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float() / 255.0
        rgb = F.interpolate(rgb, size=(h, w), mode="bilinear", align_corners=False)
        rgb = (rgb - self.mean) / self.std
        sd = torch.from_numpy(np.where(known, sparse, 0.0).astype(np.float32))[None, None]
        m = torch.from_numpy(known.astype(np.float32))[None, None]
        sd = F.interpolate(sd, size=(h, w), mode="nearest") / 10.0
        m = F.interpolate(m, size=(h, w), mode="nearest")
        return torch.cat([rgb, sd, m], 1)

    @torch.inference_mode()
    def complete(self, image, sparse_depth, mask, K=None, c2w=None) -> np.ndarray:
        sparse, known = check_completion_inputs(image, sparse_depth, mask, "ZoeDepthCompleter.complete")
        x = self.network_input(np.asarray(image), sparse, known).to(self.device)
        pred = self.model(pixel_values=x).predicted_depth
        if pred.ndim == 3:
            pred = pred[:, None]
        d = F.interpolate(pred.float(), size=sparse.shape, mode="bilinear", align_corners=False)[0, 0]
        d = d.cpu().double().numpy()
        return np.where(known, sparse, np.maximum(d, 1e-3)).astype(np.float32)


def make_depth_completer(spec: str | None = None, monocular: MonocularSource | None = None,
                         device: str | torch.device = "cpu", seam_width: float = 8.0) -> DepthCompleter:
    """``spec``: a local ZoeDepth depth-completion folder, or ``None``/``"aligned"`` for the fallback
    (aligned ``monocular`` depth, or the known depth extended)."""
    if spec in (None, "", "aligned"):
        return AlignedCompleter(monocular, seam_width=seam_width)
    return ZoeDepthCompleter.from_pretrained(spec, device=device)
