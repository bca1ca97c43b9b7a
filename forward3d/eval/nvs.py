"""Single-view novel-view synthesis on RealEstate10K (the Flash3D / MINE protocol, ``re10k-1view``).

For every line ``seq src +5 +10 rand`` of the split file (frame indices), a predictor turns the source
frame into images of the three targets; each image (network size, 256x384 by default) is cropped by
5% per side (230x344 remain) and scored: PSNR per image (MSE floored at 1e-10, so identical images
score 100 dB instead of infinity), SSIM (11x11 Gaussian window, sigma 1.5, data range 1, valid
filtering) and, when LPIPS weights are given, LPIPS-VGG on inputs mapped to [-1, 1]. Results are
averaged per target kind over lines, and per sequence.

Predictors implement :class:`NVSPredictor` (``predict(sample) -> [V, 3, H, W]``), so the evaluator
is tested with oracles; :class:`Flash3DPredictor` (grey 0.5 background, RANSAC depth scale) and
:class:`UnprojectPredictor` (one Gaussian per source pixel at its depth) are the real methods.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np
import torch
from torch import Tensor

from forward3d.config import option
from forward3d.data.re10k_dataset import TARGET_KINDS, RE10KEvalDataset, RE10KSample, depth_scales, scale_w2c

logger = logging.getLogger(__name__)

__all__ = ["NVSPredictor", "Flash3DPredictor", "UnprojectPredictor", "OraclePredictor", "BlankPredictor",
           "LineResult", "NVSReport", "evaluate_nvs", "score_images", "PUBLISHED_RE10K_1VIEW", "PSNR_MAX",
           "NVSEvalConfig", "run_nvs_eval", "PROTOCOLS"]

PROTOCOLS = ("re10k-1view", "re10k-2view")

PSNR_MAX = 100.0  # dB: MSE floor 1e-10
# published single-view RE10K numbers (PSNR, SSIM, LPIPS) per target kind (Flash3D paper, Table 1)
PUBLISHED_RE10K_1VIEW = {
    "Flash3D": {"+5": (28.46, 0.899, 0.100), "+10": (25.94, 0.857, 0.133), "random": (24.93, 0.833, 0.160)},
    "MINE": {"+5": (28.45, 0.897, 0.111), "+10": (25.89, 0.850, 0.150), "random": (24.75, 0.820, 0.179)},
    "Splatter Image": {"+5": (28.15, 0.894, 0.110), "+10": (25.34, 0.842, 0.144), "random": (24.15, 0.810, 0.177)},
}


@runtime_checkable
class NVSPredictor(Protocol):
    """``predict(sample)`` -> ``[V, 3, H, W]`` images in [0, 1] of ``sample``'s views (unpadded size)."""

    name: str

    def predict(self, sample: RE10KSample) -> Tensor: ...


def _source_depth(sample: RE10KSample, depth_model, device: torch.device) -> Tensor:
    """``[1, 1, Hp, Wp]`` metric depth of the padded source: the dataset's or the depth model's."""
    if depth_model is not None:
        with torch.no_grad():
            d = depth_model.predict(sample.image[None].to(device), sample.K_src[None].to(device))
        return d.clone().reshape(1, 1, *sample.image.shape[-2:]).float()
    if sample.depth is None:
        raise ValueError(f"sequence {sample.seq} frame {sample.frame_ids[0]}: no dataset depth (depth/ folder) and "
                         f"no depth model; pass --depth-model SPEC")
    return sample.depth[None].to(device)


class Flash3DPredictor:
    """Flash3D Gaussians of the source rendered into the targets (grey background, RANSAC scale)."""

    name = "flash3d"

    def __init__(self, model, depth_model=None, background: float = 0.5, device: str | torch.device = "cpu"):
        self.model = model.to(device).eval()
        self.depth_model = depth_model
        self.background = background
        self.device = torch.device(device)

    @torch.no_grad()
    def predict(self, sample: RE10KSample) -> Tensor:
        from forward3d.render.batch import render_views

        dev = self.device
        depth = _source_depth(sample, self.depth_model, dev)
        pad = (sample.image.shape[-1] - sample.views.shape[-1]) // 2
        scale = depth_scales(depth, pad, [sample.sparse_xys], [sample.sparse_z], mode="ransac")
        w2c = scale_w2c(sample.w2c_rel[None].to(dev), scale)
        out = self.model(sample.image[None].to(dev), depth, sample.K_src[None].to(dev))
        h, w = sample.views.shape[-2:]
        bg = torch.full((1, 3), self.background, device=dev)
        return render_views(out, w2c, sample.K_tgt[None].to(dev), w, h, bg)[0].clamp(0, 1).cpu()


class UnprojectPredictor:
    """Baseline: one isotropic Gaussian per source pixel (unpadded) at its depth, with the pixel's
    colour, opacity 0.99 and a footprint of ``sigma_px`` pixels (the rasterizer adds its 0.3 px^2
    low-pass on top); no network."""

    name = "unproject"

    def __init__(self, depth_model=None, background: float = 0.5, sigma_px: float = 0.3,
                 device: str | torch.device = "cpu"):
        self.depth_model = depth_model
        self.background = background
        self.sigma_px = sigma_px
        self.device = torch.device(device)

    @torch.no_grad()
    def predict(self, sample: RE10KSample) -> Tensor:
        from forward3d.geometry.camera import depth_to_points_torch
        from forward3d.render import Cameras, rasterize
        from forward3d.types import Gaussians

        dev = self.device
        depth = _source_depth(sample, self.depth_model, dev)
        h, w = sample.views.shape[-2:]
        pad = (sample.image.shape[-1] - w) // 2
        scale = depth_scales(depth, pad, [sample.sparse_xys], [sample.sparse_z], mode="ransac")
        w2c = scale_w2c(sample.w2c_rel[None].to(dev), scale)[0]
        K = sample.K_tgt.to(dev).double()
        z = depth[0, 0, pad:pad + h, pad:pad + w].double()
        img = sample.image[:, pad:pad + h, pad:pad + w].to(dev)
        keep = (z > 0).flatten()
        means = depth_to_points_torch(z, K).reshape(-1, 3)[keep].float()  # pixel centres at +0.5
        n = means.shape[0]
        s = (self.sigma_px * z / K[0, 0]).flatten()[keep].float()
        g = Gaussians.from_activated(means, torch.tensor([1.0, 0, 0, 0], device=dev).expand(n, 4),
                                     s[:, None].expand(n, 3), torch.full((n,), 0.99, device=dev),
                                     colors=img.permute(1, 2, 0).reshape(-1, 3)[keep])
        V = w2c.shape[0]
        cams = Cameras(w2c.float(), sample.K_tgt.to(dev).float().expand(V, 3, 3), w, h)
        r = rasterize(g, cams, background=torch.full((3,), self.background, device=dev))
        return r.colors.permute(0, 3, 1, 2).clamp(0, 1).cpu()


class OraclePredictor:
    """Returns the ground-truth views (the metrics' upper bound; for tests)."""

    name = "oracle"

    def predict(self, sample: RE10KSample) -> Tensor:
        return sample.views.clone()


class BlankPredictor:
    """Returns constant images of ``value`` (a lower bound; for tests)."""

    name = "blank"

    def __init__(self, value: float = 0.0):
        self.value = value

    def predict(self, sample: RE10KSample) -> Tensor:
        return torch.full_like(sample.views, self.value)


def score_images(pred: Tensor, target: Tensor, lpips=None, crop_fraction: float = 0.05) -> dict[str, np.ndarray]:
    """Metrics per image of ``[V, 3, H, W]`` images in [0, 1] after cropping ``crop_fraction`` per side.

    Returns ``{'psnr': [V], 'ssim': [V]}`` (+ ``'lpips'`` when an :class:`~forward3d.eval.lpips.LPIPS` is given).
    """
    from forward3d.eval.image import crop_border, ssim

    if pred.shape != target.shape or pred.ndim != 4 or pred.shape[1] != 3:
        raise ValueError(f"score_images: expected two [V, 3, H, W] tensors of one shape, found {list(pred.shape)} "
                         f"and {list(target.shape)}")
    p = crop_border(pred.float().clamp(0, 1), crop_fraction, channels_last=False)
    t = crop_border(target.float(), crop_fraction, channels_last=False)
    mse = ((p - t) ** 2).flatten(1).mean(1).clamp_min(10 ** (-PSNR_MAX / 10))
    out = {"psnr": (-10.0 * torch.log10(mse)).numpy().astype(np.float64),
           "ssim": ssim(p, t, channels_last=False, padding="valid").numpy().astype(np.float64)}
    if lpips is not None:
        dev = next(lpips.parameters()).device
        with torch.no_grad():
            out["lpips"] = lpips(p.to(dev) * 2 - 1, t.to(dev) * 2 - 1).cpu().numpy().astype(np.float64)
    return out


@dataclass
class LineResult:
    """Metrics of one split-file line: one value per view (``kinds``)."""

    seq: str
    frame_ids: list[int]
    kinds: list[str]
    psnr: list[float]
    ssim: list[float]
    lpips: list[float] | None = None


@dataclass
class NVSReport:
    """All line results plus the aggregates (:meth:`mean`, :meth:`per_sequence`)."""

    method: str
    protocol: str = "re10k-1view"
    lines: list[LineResult] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    def _aggregate(self, lines: list[LineResult]) -> dict[str, dict[str, float]]:
        out: dict[str, dict[str, float]] = {}
        kinds = [k for k in TARGET_KINDS if any(k in ln.kinds for ln in lines)]
        kinds += sorted({k for ln in lines for k in ln.kinds} - set(kinds))
        for kind in kinds:
            vals: dict[str, list[float]] = {"psnr": [], "ssim": [], "lpips": []}
            for ln in lines:
                for j, k in enumerate(ln.kinds):
                    if k == kind:
                        vals["psnr"].append(ln.psnr[j])
                        vals["ssim"].append(ln.ssim[j])
                        if ln.lpips is not None:
                            vals["lpips"].append(ln.lpips[j])
            out[kind] = {m: float(np.mean(v)) for m, v in vals.items() if v}
            out[kind]["count"] = len(vals["psnr"])
        return out

    def mean(self) -> dict[str, dict[str, float]]:
        """``{kind: {'psnr', 'ssim', ['lpips'], 'count'}}`` averaged over images."""
        return self._aggregate(self.lines)

    def per_sequence(self) -> dict[str, dict[str, dict[str, float]]]:
        seqs = sorted({ln.seq for ln in self.lines})
        return {s: self._aggregate([ln for ln in self.lines if ln.seq == s]) for s in seqs}

    def to_dict(self) -> dict:
        return {
            "protocol": self.protocol, "method": self.method, "num_lines": len(self.lines),
            "skipped_lines": self.skipped, "psnr_max_db": PSNR_MAX, "crop_fraction": 0.05,
            "mean": self.mean(), "per_sequence": self.per_sequence(),
            "published": {m: {k: dict(zip(("psnr", "ssim", "lpips"), v)) for k, v in d.items()}
                          for m, d in PUBLISHED_RE10K_1VIEW.items()},
            "lines": [ln.__dict__ for ln in self.lines],
        }

    def table(self) -> str:
        """A plain-text table of the means beside the published Flash3D numbers."""
        mean = self.mean()
        has_lpips = any("lpips" in v for v in mean.values())
        head = f"{'target':<8} {'n':>6} {'PSNR':>8} {'SSIM':>7}" + (f" {'LPIPS':>7}" if has_lpips else "")
        head += "   | Flash3D (paper) PSNR/SSIM/LPIPS"
        rows = [f"RE10K single view, {self.method}: {len(self.lines)} lines", head, "-" * len(head)]
        for kind, v in mean.items():
            r = f"{kind:<8} {v['count']:>6d} {v['psnr']:>8.2f} {v['ssim']:>7.3f}"
            if has_lpips:
                r += f" {v['lpips']:>7.3f}" if "lpips" in v else f" {'-':>7}"
            pub = PUBLISHED_RE10K_1VIEW["Flash3D"].get(kind)
            r += f"   | {pub[0]:.2f} / {pub[1]:.3f} / {pub[2]:.3f}" if pub else "   |"
            rows.append(r)
        return "\n".join(rows)


def evaluate_nvs(dataset: RE10KEvalDataset, predictor: NVSPredictor, lpips=None, progress: bool = False,
                 crop_fraction: float = 0.05, skip_bad_lines: bool = False) -> NVSReport:
    """Run ``predictor`` on every line of ``dataset`` and score its target views.

    ``skip_bad_lines``: a line whose frames cannot be read (missing or corrupt files, frame index out of
    range, no sparse points) is logged and listed in ``report.skipped`` instead of stopping the run
    (RealEstate10K downloads often miss a few frames).
    """
    if not isinstance(predictor, NVSPredictor):
        raise TypeError(f"evaluate_nvs: predictor must have a name and predict(sample), found {type(predictor).__name__}")
    report = NVSReport(method=predictor.name,
                       skipped=[f"{ln.seq} {ln.src} {' '.join(map(str, ln.targets))}" for ln in dataset.skipped])
    it = range(len(dataset))
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(dataset), desc=f"eval {predictor.name}", dynamic_ncols=True)
    for i in it:
        try:
            sample = dataset[i]
        except (ValueError, FileNotFoundError) as exc:
            if not skip_bad_lines:
                raise
            ln = dataset.lines[i]
            logger.warning("skipping line %d (%s): %s", ln.line_no, ln.seq, exc)
            report.skipped.append(f"{ln.seq} {ln.src} {' '.join(map(str, ln.targets))}: {exc}")
            if bar is not None:
                bar.update(1)
            continue
        pred = predictor.predict(sample)
        if tuple(pred.shape) != tuple(sample.views.shape):
            raise ValueError(f"predictor {predictor.name}: expected images {list(sample.views.shape)}, found "
                             f"{list(pred.shape)}")
        m = score_images(pred.cpu(), sample.views, lpips, crop_fraction)
        report.lines.append(LineResult(sample.seq, list(sample.frame_ids), list(sample.kinds),
                                       [float(x) for x in m["psnr"]], [float(x) for x in m["ssim"]],
                                       [float(x) for x in m["lpips"]] if "lpips" in m else None))
        if bar is not None:
            bar.update(1)
            bar.set_postfix(psnr=f"{np.mean([x for ln in report.lines for x in ln.psnr]):.2f}")
        if not all(math.isfinite(x) for x in m["psnr"]):
            logger.warning("%s frame %d: non-finite PSNR", sample.seq, sample.frame_ids[0])
    if bar is not None:
        bar.close()
    return report


@dataclass
class NVSEvalConfig:
    """Options of ``forward3d eval nvs`` (novel-view synthesis on RealEstate10K).

    Attributes:
        protocol: evaluation protocol: re10k-1view (Flash3D, one source image) or re10k-2view (pixelSplat /
            DepthSplat, two context views: forward3d.eval.nvs_2view).
        data: RealEstate10K root: the Flash3D layout (re10k-1view) or the pixelSplat chunks {data}/test/*.torch
            (re10k-2view).
        split: re10k-1view: split file with lines 'seq src +5 +10 rand' (frame indices), e.g. test_files.txt.
        index: re10k-2view: evaluation index JSON (pixelSplat evaluation_index_re10k.json; default:
            {data}/evaluation_index_re10k.json).
        frame_shape: re10k-2view: height and width of usable frames (others are skipped).
        index_split: which {split}.pickle.gz / frame folder (re10k-1view) or chunk folder (re10k-2view).
        weights: Flash3D (re10k-1view) or DepthSplat (re10k-2view) checkpoint (.pth / .safetensors / folder);
            give this or --method.
        method: a baseline instead of a network: unproject (one Gaussian per pixel at its depth; re10k-1view),
            oracle (ground truth) or blank.
        depth_model: metric depth network for the source (unidepth[:SRC] | transformers:PATH); default:
            the dataset's depth/ folder.
        lpips_weights: LPIPS-VGG weights 'VGG16.pth,LIN.pth' or one combined file.
        out: write the results as JSON here.
        max_lines: evaluate only the first N lines (re10k-2view: scenes).
        height: network height (default: the model's, else 256; re10k-2view: the square crop side).
        width: network width (default: the model's, else 384).
        pad: padding per side (default: the model's, else 32).
        skip_bad_lines: log and skip lines whose frames cannot be read instead of stopping (listed in the JSON).
        device: auto (CUDA when available), cpu or cuda.
        progress: progress bar.
    """

    protocol: Literal["re10k-1view", "re10k-2view"] = "re10k-1view"
    data: str = option("", metavar="DIR")
    split: str = option("", metavar="FILE")
    index: str = option("", metavar="JSON")
    frame_shape: tuple[int, int] = option((360, 640), metavar=("H", "W"))
    index_split: str = "test"
    weights: str | None = option(None, metavar="WEIGHTS")
    method: Literal["unproject", "oracle", "blank"] | None = None
    depth_model: str | None = option(None, metavar="SPEC")
    lpips_weights: str | None = option(None, metavar="FILES")
    out: str | None = option(None, metavar="JSON")
    max_lines: int | None = None
    height: int | None = None
    width: int | None = None
    pad: int | None = None
    skip_bad_lines: bool = False
    device: str = "auto"
    progress: bool = True


def run_nvs_eval(cfg: NVSEvalConfig) -> tuple[NVSReport, dict[str, Any]]:
    """Evaluate ``cfg.weights`` (or a baseline ``cfg.method``) with ``cfg.protocol``; write ``cfg.out``.

    Returns:
        ``(report, result)``: the :class:`NVSReport` (re10k-2view: a
        :class:`~forward3d.eval.nvs_2view.TwoViewReport`) and its JSON form with the run's settings.
    """
    from forward3d.device import resolve_device

    if cfg.protocol == "re10k-2view":
        from forward3d.eval.nvs_2view import run_2view_eval

        return run_2view_eval(cfg)  # type: ignore[return-value]
    if not cfg.data or not cfg.split:
        raise ValueError("eval nvs: --data DIR and --split FILE are required")
    if (cfg.weights is None) == (cfg.method is None):
        raise ValueError("eval nvs: give exactly one of --weights CHECKPOINT or --method unproject|oracle|blank")
    if cfg.max_lines is not None and cfg.max_lines < 1:
        raise ValueError(f"--max-lines: expected >= 1, found {cfg.max_lines}")
    device = str(resolve_device(cfg.device))
    depth_model = None
    if cfg.depth_model:
        from forward3d.models.depth import make_depth_estimator

        depth_model = make_depth_estimator(cfg.depth_model, device=device)
        if not getattr(depth_model, "metric", True):
            raise ValueError(f"--depth-model {cfg.depth_model}: expected a metric depth network, found a relative one")
    size = (256, 384, 32)
    predictor: NVSPredictor
    if cfg.weights is not None:
        from forward3d.models.flash3d import Flash3D

        model = Flash3D.from_pretrained(cfg.weights, device=device).fuse_for_inference(keep_reference=False)
        c = model.config
        size = (c.height, c.width, c.pad_border)
        predictor = Flash3DPredictor(model, depth_model, device=device)
    elif cfg.method == "unproject":
        predictor = UnprojectPredictor(depth_model, device=device)
    elif cfg.method == "oracle":
        predictor = OraclePredictor()
    else:
        predictor = BlankPredictor()
    h = cfg.height or size[0]
    w = cfg.width or size[1]
    pad = size[2] if cfg.pad is None else cfg.pad
    dataset = RE10KEvalDataset(Path(cfg.data), Path(cfg.split), split=cfg.index_split, height=h, width=w, pad=pad,
                               max_lines=cfg.max_lines, use_dataset_depth=depth_model is None)
    lpips = None
    if cfg.lpips_weights:
        from forward3d.eval.lpips import load_lpips

        lpips = load_lpips(cfg.lpips_weights, device=device)
    else:
        logger.info("LPIPS not computed: no --lpips-weights given")
    report = evaluate_nvs(dataset, predictor, lpips=lpips, progress=cfg.progress, skip_bad_lines=cfg.skip_bad_lines)
    result = report.to_dict()
    result.update({"protocol": cfg.protocol, "data": cfg.data, "split_file": cfg.split, "weights": cfg.weights,
                   "depth_model": cfg.depth_model, "image_size": [h, w], "pad": pad})
    if cfg.out is not None:
        from forward3d.io.jsonio import write_json

        write_json(Path(cfg.out), result)
        logger.info("wrote %s", cfg.out)
    return report, result
