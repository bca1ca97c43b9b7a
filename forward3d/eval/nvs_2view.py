"""Two-view novel-view synthesis on RealEstate10K (the pixelSplat / MVSplat / DepthSplat protocol, ``re10k-2view``).

For every scene of the evaluation index (2 context + 3 target frames; null entries, scenes missing
from the chunks, frames that are not 360x640 and fields of view over 100 degrees are skipped and
listed), the frames are resized with PIL Lanczos to cover 256x256 (360x640 -> 256x455) and
centre-cropped to 256x256; as in pixelSplat's crop shim only the normalised ``fx``/``fy`` are rescaled
(``fx * 455 / 256``), the principal point stays. A predictor renders the targets from the two context
views; each target is scored: PSNR on the prediction clipped to [0, 1] (MSE floored at 1e-10, so
identical images score 100 dB), SSIM (11x11 Gaussian window, sigma 1.5, data range 1, valid filtering,
on the unclipped prediction) and, with LPIPS weights, LPIPS-VGG on inputs mapped to [-1, 1]. Scores are
averaged per scene, then over scenes. Published numbers: ``shared/specs/benchmarks.md`` and
``depthsplat.md``.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from torch import Tensor

from forward3d.data.re10k_chunks import RE10KChunks, read_evaluation_index

logger = logging.getLogger(__name__)

__all__ = ["TwoViewSample", "RE10K2ViewDataset", "TwoViewPredictor", "DepthSplatPredictor", "OracleTwoView",
           "BlankTwoView", "score_targets", "TwoViewReport", "evaluate_2view", "run_2view_eval",
           "PUBLISHED_RE10K_2VIEW", "TWO_VIEW_METHODS"]

PSNR_MAX = 100.0
NEAR, FAR = 0.5, 100.0  # the released RE10K configs
MAX_FOV_DEG = 100.0
TWO_VIEW_METHODS = ("oracle", "blank")
# (PSNR, SSIM, LPIPS): shared/specs/benchmarks.md and depthsplat.md
PUBLISHED_RE10K_2VIEW = {
    "pixelSplat": (26.09, 0.863, 0.136),
    "MVSplat": (26.39, 0.869, 0.128),
    "DepthSplat-S": (26.84, 0.878, 0.122),
    "DepthSplat-L": (27.47, 0.889, 0.114),
}


@dataclass
class TwoViewSample:
    """One scene of the index, preprocessed.

    Attributes:
        scene: scene key; context, target: frame indices.
        images: ``[2 + T, 3, S, S]`` float in [0, 1], the context views first.
        K_norm: ``[2 + T, 3, 3]`` normalised intrinsics after the crop shim.
        c2w: ``[2 + T, 4, 4]`` OpenCV camera-to-world.
    """

    scene: str
    context: list[int]
    target: list[int]
    images: Tensor
    K_norm: Tensor
    c2w: Tensor

    @property
    def targets(self) -> Tensor:
        """``[T, 3, S, S]`` ground-truth target views."""
        return self.images[len(self.context):]


class RE10K2ViewDataset:
    """The scenes of an evaluation index in a pixelSplat chunk folder (see the module docstring).

    Args:
        root: the layout root (``root/split/*.torch``); index: the evaluation index JSON.
        size: side of the square crop; frame_shape: ``(H, W)`` of usable frames (others skipped).
        max_scenes: at most N usable scenes (in index order).
    """

    def __init__(self, root: str | Path, index: str | Path, split: str = "test", size: int = 256,
                 frame_shape: tuple[int, int] = (360, 640), max_scenes: int | None = None):
        self.chunks = RE10KChunks(root, split)
        self.index_path = Path(index)
        self.size = int(size)
        self.frame_shape = (int(frame_shape[0]), int(frame_shape[1]))
        self.skipped: list[str] = []
        self.entries: list[tuple[str, list[int], list[int]]] = []
        for key, e in read_evaluation_index(index).items():
            if e is None:
                self.skipped.append(f"{key}: null in the index")
            elif key not in self.chunks:
                self.skipped.append(f"{key}: not in the chunks")
            elif len(e["context"]) != 2 or not e["target"]:
                self.skipped.append(f"{key}: {len(e['context'])} context and {len(e['target'])} target views")
            else:
                self.entries.append((key, [int(i) for i in e["context"]], [int(i) for i in e["target"]]))
        if max_scenes is not None:
            self.entries = self.entries[:max_scenes]

    def __len__(self) -> int:
        return len(self.entries)

    def load(self, i: int) -> TwoViewSample | None:
        """Scene ``i`` preprocessed, or None (the reason appended to ``skipped``) when the protocol skips it."""
        from forward3d.pipelines.depthsplat import prepare_views

        key, context, target = self.entries[i]
        sc = self.chunks.scene(key)
        ids = context + target
        bad = [j for j in ids if not 0 <= j < len(sc)]
        if bad:
            raise ValueError(f"{self.index_path}: scene {key} asks for frames {bad} of {len(sc)}")
        images = [sc.image(j) for j in ids]
        if any(im.shape[:2] != self.frame_shape for im in images):
            self.skipped.append(f"{key}: frames {list(images[0].shape[:2])}, not {list(self.frame_shape)}")
            return None
        K = sc.K_norm[ids].copy()
        fov = np.degrees(2 * np.arctan(0.5 / K[:, 0, 0]))
        if (fov > MAX_FOV_DEG).any():
            self.skipped.append(f"{key}: field of view {float(fov.max()):.0f} > {MAX_FOV_DEG:.0f} degrees")
            return None
        h0, w0 = self.frame_shape
        crops, _ = prepare_views(images, np.eye(3), multiple=1, short_side=None, size=(self.size, self.size))
        s = max(self.size / h0, self.size / w0)
        K[:, 0, 0] *= round(w0 * s) / self.size  # pixelSplat's crop shim: fx, fy only
        K[:, 1, 1] *= round(h0 * s) / self.size
        t = lambda a: torch.as_tensor(np.ascontiguousarray(a), dtype=torch.float32)  # noqa: E731
        return TwoViewSample(key, context, target, t(crops).permute(0, 3, 1, 2) / 255.0, t(K), t(sc.c2w[ids]))


@runtime_checkable
class TwoViewPredictor(Protocol):
    """``predict(sample)`` -> ``[T, 3, S, S]`` images of the targets (values outside [0, 1] allowed)."""

    name: str

    def predict(self, sample: TwoViewSample) -> Tensor: ...


class DepthSplatPredictor:
    """DepthSplat Gaussians of the two context views rendered at the targets (black background)."""

    name = "depthsplat"

    def __init__(self, model, device: str | torch.device = "cpu", near: float = NEAR, far: float = FAR):
        self.model = model.to(device).eval()
        self.device = torch.device(device)
        self.near, self.far = near, far

    @torch.no_grad()
    def predict(self, sample: TwoViewSample) -> Tensor:
        from forward3d.render import Cameras, rasterize

        dev, nc = self.device, len(sample.context)
        s = sample.images.shape[-1]
        out = self.model(sample.images[None, :nc].to(dev), sample.K_norm[None, :nc].to(dev),
                         sample.c2w[None, :nc].to(dev), near=self.near, far=self.far)
        K = sample.K_norm[nc:].clone()
        K[:, :2] *= s
        cams = Cameras.from_c2w(sample.c2w[nc:].to(dev), K.to(dev), s, s)
        r = rasterize(out.gaussians(0), cams, background=torch.zeros(3, device=dev))
        return r.colors.permute(0, 3, 1, 2).float().cpu()


class OracleTwoView:
    """The ground-truth targets (the metrics' upper bound: 100 dB)."""

    name = "oracle"

    def predict(self, sample: TwoViewSample) -> Tensor:
        return sample.targets.clone()


class BlankTwoView:
    """Constant images of ``value`` (a broken method)."""

    name = "blank"

    def __init__(self, value: float = 0.0):
        self.value = value

    def predict(self, sample: TwoViewSample) -> Tensor:
        return torch.full_like(sample.targets, self.value)


def score_targets(pred: Tensor, target: Tensor, lpips=None) -> dict[str, np.ndarray]:
    """Per-image metrics of ``[T, 3, H, W]`` predictions against targets in [0, 1] (module docstring)."""
    from forward3d.eval.image import ssim

    if pred.shape != target.shape or pred.ndim != 4 or pred.shape[1] != 3:
        raise ValueError(f"score_targets: expected two [T, 3, H, W] tensors of one shape, found {list(pred.shape)} "
                         f"and {list(target.shape)}")
    p, t = pred.float(), target.float()
    mse = ((p.clamp(0, 1) - t) ** 2).flatten(1).mean(1).clamp_min(10 ** (-PSNR_MAX / 10))
    out = {"psnr": (-10.0 * torch.log10(mse)).numpy().astype(np.float64),
           "ssim": ssim(p, t, channels_last=False, padding="valid").numpy().astype(np.float64)}
    if lpips is not None:
        dev = next(lpips.parameters()).device
        with torch.no_grad():
            out["lpips"] = lpips(p.clamp(0, 1).to(dev) * 2 - 1, t.to(dev) * 2 - 1).cpu().numpy().astype(np.float64)
    return out


@dataclass
class TwoViewReport:
    """Per-scene means (over the scene's targets) and their mean over scenes."""

    method: str
    scenes: dict[str, dict[str, float]] = field(default_factory=dict)
    per_target: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)
    protocol: str = "re10k-2view"

    def per_sequence(self) -> dict[str, dict[str, float]]:
        return dict(self.scenes)

    def mean(self) -> dict[str, float]:
        keys = sorted({k for v in self.scenes.values() for k in v})
        return {k: float(np.mean([v[k] for v in self.scenes.values() if k in v])) for k in keys}

    def to_dict(self) -> dict:
        return {"protocol": self.protocol, "method": self.method, "num_scenes": len(self.scenes),
                "skipped_scenes": self.skipped, "psnr_max_db": PSNR_MAX, "mean": self.mean(),
                "per_scene": self.scenes, "per_target": self.per_target,
                "published": {m: dict(zip(("psnr", "ssim", "lpips"), v)) for m, v in PUBLISHED_RE10K_2VIEW.items()}}

    def table(self) -> str:
        m = self.mean()
        rows = [f"RE10K two views ({self.protocol}), {self.method}: {len(self.scenes)} scenes "
                f"({len(self.skipped)} skipped)", f"{'method':<24} {'PSNR':>7} {'SSIM':>7} {'LPIPS':>7}", "-" * 48]
        lp = f"{m['lpips']:>7.3f}" if "lpips" in m else f"{'-':>7}"
        if self.scenes:
            rows.append(f"{self.method + ' (ours)':<24} {m['psnr']:>7.2f} {m['ssim']:>7.3f} {lp}")
        for name, (p, s, lpv) in PUBLISHED_RE10K_2VIEW.items():
            rows.append(f"{name + ' (published)':<24} {p:>7.2f} {s:>7.3f} {lpv:>7.3f}")
        return "\n".join(rows)


def evaluate_2view(dataset: RE10K2ViewDataset, predictor: TwoViewPredictor, lpips=None,
                   progress: bool = False) -> TwoViewReport:
    """Run ``predictor`` on every scene of ``dataset`` and score its targets."""
    from forward3d.progress import progress_bar

    if not isinstance(predictor, TwoViewPredictor):
        raise TypeError(f"evaluate_2view: predictor must have a name and predict(sample), found {type(predictor).__name__}")
    report = TwoViewReport(predictor.name)
    with progress_bar(len(dataset), f"eval {predictor.name}", unit="scene", enabled=progress) as bar:
        for i in range(len(dataset)):
            sample = dataset.load(i)
            bar.update(1)
            if sample is None:
                continue
            pred = predictor.predict(sample)
            if tuple(pred.shape) != tuple(sample.targets.shape):
                raise ValueError(f"predictor {predictor.name}: expected images {list(sample.targets.shape)}, found "
                                 f"{list(pred.shape)}")
            m = score_targets(pred.cpu(), sample.targets, lpips)
            report.per_target[sample.scene] = {k: [float(x) for x in v] for k, v in m.items()}
            report.scenes[sample.scene] = {k: float(np.mean(v)) for k, v in m.items()}
            if not all(math.isfinite(x) for x in m["psnr"]):
                logger.warning("scene %s: non-finite PSNR", sample.scene)
    report.skipped = dataset.skipped + []
    return report


def run_2view_eval(cfg: Any) -> tuple[TwoViewReport, dict[str, Any]]:
    """``forward3d eval nvs --protocol re10k-2view`` (a :class:`forward3d.eval.nvs.NVSEvalConfig`)."""
    from forward3d.device import resolve_device

    if not cfg.data:
        raise ValueError("eval nvs --protocol re10k-2view: --data DIR (the pixelSplat chunk folder root) is required")
    index = cfg.index or str(Path(cfg.data) / "evaluation_index_re10k.json")
    if (cfg.weights is None) == (cfg.method is None):
        raise ValueError("eval nvs: give exactly one of --weights DEPTHSPLAT_CHECKPOINT or --method oracle|blank")
    if cfg.method is not None and cfg.method not in TWO_VIEW_METHODS:
        raise ValueError(f"--method {cfg.method}: protocol re10k-2view has the baselines {', '.join(TWO_VIEW_METHODS)}")
    if cfg.max_lines is not None and cfg.max_lines < 1:
        raise ValueError(f"--max-lines: expected >= 1, found {cfg.max_lines}")
    if cfg.depth_model:
        raise ValueError("--depth-model: not used by protocol re10k-2view (the context views give the depth)")
    size = cfg.height or 256
    if cfg.width is not None and cfg.width != size:
        raise ValueError(f"protocol re10k-2view: square crops, found --height {size} --width {cfg.width}")
    device = str(resolve_device(cfg.device))
    predictor: TwoViewPredictor
    if cfg.weights is not None:
        from forward3d.models.depthsplat import DepthSplat

        predictor = DepthSplatPredictor(DepthSplat.from_pretrained(cfg.weights), device=device)
    elif cfg.method == "oracle":
        predictor = OracleTwoView()
    else:
        predictor = BlankTwoView()
    frame_shape = tuple(cfg.frame_shape) if getattr(cfg, "frame_shape", None) else (360, 640)
    dataset = RE10K2ViewDataset(cfg.data, index, split=cfg.index_split, size=size, frame_shape=frame_shape,
                                max_scenes=cfg.max_lines)
    lpips = None
    if cfg.lpips_weights:
        from forward3d.eval.lpips import load_lpips

        lpips = load_lpips(cfg.lpips_weights, device=device)
    else:
        logger.info("LPIPS not computed: no --lpips-weights given")
    report = evaluate_2view(dataset, predictor, lpips, progress=cfg.progress)
    result = report.to_dict()
    result.update({"data": cfg.data, "index": index, "weights": cfg.weights, "image_size": [size, size],
                   "frame_shape": list(frame_shape), "near": NEAR, "far": FAR})
    if cfg.out is not None:
        from forward3d.io.jsonio import write_json

        write_json(Path(cfg.out), result)
        logger.info("wrote %s", cfg.out)
    return report, result
