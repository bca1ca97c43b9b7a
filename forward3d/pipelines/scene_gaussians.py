"""Video -> 3D Gaussians: windows of posed views along a back-end's trajectory -> one merged 3DGS scene.

``forward3d recon INPUT --gaussians depthsplat [--gaussians-weights CKPT]`` runs any back-end, then:

1. context views: every ``stride``-th input frame (kept while the frames stream through the back-end,
   :class:`FrameKeeper`; with ``heldout`` also the frame midway between two context views, for scoring);
2. windows: ``window`` consecutive context views, overlapping by one view;
3. per window, Gaussians in the world frame of the back-end's poses: DepthSplat
   (:func:`forward3d.pipelines.depthsplat.splat_multiview`) with weights, else one Gaussian per pixel at
   the back-end's depth (:func:`forward3d.pipelines.splat.unproject_gaussians`; sensor depth when the
   reconstruction is metric, else its point maps);
4. merge and prune (:func:`merge_gaussians`): opacity threshold, one Gaussian per voxel (the most opaque),
   a budget of the most opaque;
5. optional photometric refinement against the context views (:func:`forward3d.train.fit.fit_gaussians`);
6. ``gaussians.ply`` (3DGS PLY), ``gaussians.json`` (counts, settings, held-out-view PSNR) and
   ``gaussians_views/heldout_*.png`` (render | input).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Literal

import numpy as np
import torch

from forward3d.config import option
from forward3d.types import Frame, Gaussians, Reconstruction

logger = logging.getLogger(__name__)

# in-plane std of the depth predictor's discs in pixel footprints: with the rasterizer's 0.3 px^2 low-pass
# this covers the image without holes and blurs it less than unproject's default 0.5 (+2 dB held out)
UNPROJECT_FOOTPRINT = 0.3
MAX_PREVIEWS = 8  # held-out views written as render | input PNGs

__all__ = ["SceneGaussiansConfig", "SceneGaussians", "FrameKeeper", "merge_gaussians", "context_windows",
           "scene_gaussians", "write_scene_gaussians", "load_gaussians_model"]


@dataclass
class SceneGaussiansConfig:
    """3D Gaussians of the whole scene from windows of posed views (``forward3d recon --gaussians``).

    Attributes:
        method: none, or depthsplat: after the reconstruction, predict 3D Gaussians per window of posed views
            along the trajectory (DepthSplat with --gaussians-weights; without weights one Gaussian per
            pixel at the back-end's depth) and write gaussians.ply.
        weights: DepthSplat checkpoint (.pth / .safetensors / folder / hub id); none: the depth-based predictor.
        stride: a context view every N-th input frame (after the input's own --stride).
        window: context views per window (>= 2; windows overlap by one view).
        short_side: DepthSplat input short side in pixels (resize, crop to a multiple of 16; 0: native size).
        near: DepthSplat nearest depth in pose units (default: from the back-end's depth, else 0.5).
        far: DepthSplat farthest depth in pose units (default: from the back-end's depth, else 100).
        min_opacity: drop Gaussians below this opacity.
        voxel_size: keep the most opaque Gaussian per voxel of this edge in pose units (default: half the
            pixel footprint at the median depth; 0: no de-duplication).
        budget: keep at most the N most opaque Gaussians (0: no budget).
        heldout: score the frames midway between context views (PSNR in gaussians.json).
        refine_steps: Adam steps of photometric refinement against the context views (0: none).
        device: auto (CUDA when available), cpu or cuda.
    """

    method: Literal["none", "depthsplat"] = option("none", flag="--gaussians")
    weights: str | None = option(None, metavar="CKPT")
    stride: int = option(5, metavar="N")
    window: int = option(2, metavar="N")
    short_side: int = option(256, metavar="PX")
    near: float | None = None
    far: float | None = None
    min_opacity: float = 0.05
    voxel_size: float | None = None
    budget: int = option(2_000_000, metavar="N")
    heldout: bool = True
    refine_steps: int = option(0, metavar="N")
    device: str = "auto"

    def __post_init__(self) -> None:
        if self.stride < 1:
            raise ValueError(f"--gaussians-stride: expected >= 1, found {self.stride}")
        if self.window < 2:
            raise ValueError(f"--gaussians-window: expected >= 2 views, found {self.window}")
        if self.budget < 0 or self.refine_steps < 0 or self.short_side < 0:
            raise ValueError("--gaussians-budget, --gaussians-refine-steps and --gaussians-short-side "
                             "must be >= 0")
        if self.method == "none" and self.weights:
            raise ValueError("--gaussians-weights: given without --gaussians depthsplat")
        if not 0.0 <= self.min_opacity < 1.0:
            raise ValueError(f"--gaussians-min-opacity: expected in [0, 1), found {self.min_opacity}")

    @property
    def enabled(self) -> bool:
        return self.method != "none"


class FrameKeeper:
    """Passes frames through, keeping the context frames (every ``stride``-th) and, with ``heldout``, the
    frames midway between two of them. ``kept``: ``{stream index: Frame}``. ``len()``, ``layout``,
    ``has_depth``... are the wrapped source's."""

    def __init__(self, frames: Iterable[Frame], stride: int, heldout: bool = True) -> None:
        self.frames = frames
        self.stride = int(stride)
        self.heldout = bool(heldout) and self.stride >= 2
        self.kept: dict[int, Frame] = {}

    def __len__(self) -> int:
        return len(self.frames)  # type: ignore[arg-type]

    def __getattr__(self, name: str) -> Any:
        if name in ("frames", "stride", "heldout", "kept"):
            raise AttributeError(name)
        return getattr(self.frames, name)

    def is_context(self, i: int) -> bool:
        return i % self.stride == 0

    def __iter__(self) -> Iterator[Frame]:
        for i, f in enumerate(self.frames):
            if self.is_context(i) or (self.heldout and i % self.stride == self.stride // 2):
                self.kept[i] = f
            yield f


def context_windows(indices: list[int], window: int) -> list[list[int]]:
    """Windows of ``window`` consecutive ``indices`` overlapping by one (the last one ends at the last index).

    >>> context_windows([0, 5, 10, 15], 2)
    [[0, 5], [5, 10], [10, 15]]
    """
    if len(indices) < window:
        return [list(indices)] if len(indices) >= 2 else []
    starts = list(range(0, len(indices) - window + 1, window - 1))
    if starts[-1] + window < len(indices):
        starts.append(len(indices) - window)
    return [list(indices[s:s + window]) for s in starts]


def merge_gaussians(items: list[Gaussians], min_opacity: float = 0.0, voxel_size: float = 0.0,
                    max_gaussians: int = 0) -> Gaussians:
    """Concatenate world-frame Gaussians and prune them.

    Args:
        items: Gaussians of each window (SH degrees padded to the largest).
        min_opacity: drop those below this opacity.
        voxel_size: keep only the most opaque Gaussian of each voxel of this edge (0: keep all).
        max_gaussians: keep the N most opaque (0: no budget).

    Returns:
        the merged Gaussians, most opaque first.
    """
    g = Gaussians.concat(items)
    finite = torch.stack([torch.isfinite(t.flatten(1)).all(1) for t in
                          (g.means, g.quats, g.log_scales, g.opacity_logits[:, None], g.sh)]).all(0)
    g = g.subset(finite & (g.opacities >= min_opacity))
    g = g.subset(torch.argsort(g.opacity_logits, descending=True, stable=True))
    if voxel_size > 0 and len(g):
        keys = np.floor(g.means.detach().double().cpu().numpy() / voxel_size).astype(np.int64)
        _, first = np.unique(keys, axis=0, return_index=True)  # first = most opaque of its voxel
        g = g.subset(torch.from_numpy(np.sort(first)))
    if max_gaussians > 0 and len(g) > max_gaussians:
        g = g.subset(slice(0, max_gaussians))
    return g


@dataclass
class SceneGaussians:
    """What :func:`scene_gaussians` returns.

    Attributes:
        gaussians: the merged world-frame Gaussians.
        context: stream indices of the context views; windows: the windows (lists of indices).
        heldout: stream indices of the scored held-out views; heldout_psnr: their PSNR (dB).
        previews: ``{held-out index: [H, 2W, 3] uint8}`` render | input, for at most
            :data:`MAX_PREVIEWS` evenly spaced held-out views.
        info: numbers for ``gaussians.json`` (predictor, counts, near/far, voxel size, refinement).
    """

    gaussians: Gaussians
    context: list[int]
    windows: list[list[int]]
    heldout: list[int] = field(default_factory=list)
    heldout_psnr: list[float] = field(default_factory=list)
    previews: dict[int, np.ndarray] = field(default_factory=dict)
    info: dict = field(default_factory=dict)


def load_gaussians_model(cfg: SceneGaussiansConfig):
    """The DepthSplat of ``cfg.weights`` on ``cfg.device`` (None without weights: the depth-based predictor)."""
    if not cfg.weights:
        return None
    from forward3d.device import resolve_device
    from forward3d.models.depthsplat import DepthSplat

    return DepthSplat.from_pretrained(cfg.weights).to(resolve_device(cfg.device)).eval()


def _frame_K(recon: Reconstruction, i: int, frame: Frame) -> np.ndarray:
    """The back-end's intrinsics of frame ``i`` at the frame's own image size."""
    from forward3d.geometry.camera import scale_K

    rw, rh = recon.image_size
    return scale_K(recon.K[i], frame.width / rw, frame.height / rh)


def _backend_depth(recon: Reconstruction, i: int, frame: Frame) -> np.ndarray | None:
    """``[H, W]`` z-depth of frame ``i`` in pose units: the sensor's when the reconstruction is metric,
    else the back-end's point map seen from its camera (nearest-upsampled), else None."""
    if frame.depth is not None and recon.metric_scale:
        return np.asarray(frame.depth, np.float32)
    if recon.point_maps is None:
        return None
    pts = recon.point_maps[i].astype(np.float64)
    w2c = np.linalg.inv(recon.c2w[i])
    z = pts @ w2c[2, :3] + w2c[2, 3]
    ok = np.isfinite(z) & (z > 0) & (recon.confidences[i] > 0)
    z = np.where(ok, z, 0.0)
    hh, ww = z.shape
    rows = np.minimum((np.arange(frame.height) + 0.5) * hh / frame.height, hh - 1).astype(np.int64)
    cols = np.minimum((np.arange(frame.width) + 0.5) * ww / frame.width, ww - 1).astype(np.int64)
    return z[rows][:, cols].astype(np.float32)


def _render(g: Gaussians, c2w: np.ndarray, K: np.ndarray, width: int, height: int) -> torch.Tensor:
    """``[H, W, 3]`` render in [0, 1] on a black background."""
    from forward3d.render import Cameras, rasterize

    cams = Cameras.from_c2w(torch.as_tensor(c2w, dtype=torch.float32), torch.as_tensor(K, dtype=torch.float32),
                            width, height)
    with torch.no_grad():
        return rasterize(g, cams, background=torch.zeros(3)).colors[0].clamp(0, 1)


def scene_gaussians(recon: Reconstruction, kept: dict[int, Frame], cfg: SceneGaussiansConfig, model=None,
                    progress: bool = False) -> SceneGaussians:
    """Gaussians of the whole scene from the kept frames (:class:`FrameKeeper`) and ``recon``'s cameras.

    Args:
        recon: the back-end's reconstruction (a camera per input frame, in stream order).
        kept: ``{stream index: Frame}`` of the context and held-out frames.
        cfg: the options; ``model``: a loaded DepthSplat (default: loaded from ``cfg.weights`` when given).
    """
    from forward3d.eval.image import psnr
    from forward3d.pipelines.splat import unproject_gaussians
    from forward3d.progress import progress_bar

    stride = cfg.stride
    context = sorted(i for i in kept if i % stride == 0 and i < len(recon) and recon.frame_status[i].ok)
    if len(context) < 2:
        raise ValueError(f"--gaussians: {len(context)} context view(s) with a camera (every {stride}-th of "
                         f"{len(recon)} frames); lower --gaussians-stride or give more frames")
    windows = context_windows(context, cfg.window)
    if model is None:
        model = load_gaussians_model(cfg)
    depths = {}
    for i in context:
        d = _backend_depth(recon, i, kept[i])
        if d is not None:
            depths[i] = d
    near, far = cfg.near, cfg.far
    valid = np.concatenate([d[np.isfinite(d) & (d > 0)].ravel() for d in depths.values()] or [np.zeros(0)])
    if valid.size:
        near = near if near is not None else float(np.percentile(valid, 1)) * 0.5
        far = far if far is not None else float(np.percentile(valid, 99)) * 2.0
    near, far = (0.5 if near is None else near), (100.0 if far is None else far)
    parts: list[Gaussians] = []
    if model is not None:
        device = next(model.parameters()).device
        short = cfg.short_side or None
        with progress_bar(len(windows), "gaussians (depthsplat)", unit="window", enabled=progress) as bar:
            for win in windows:
                from forward3d.pipelines.depthsplat import splat_multiview

                res = splat_multiview(model, [kept[i].image for i in win], np.stack([_frame_K(recon, i, kept[i])
                                      for i in win]), recon.c2w[win], near=near, far=far, short_side=short,
                                      min_opacity=cfg.min_opacity, device=device)
                parts.append(res.gaussians)
                bar.update(1)
        predictor = "depthsplat"
    else:
        missing = [i for i in context if i not in depths]
        if missing:
            raise ValueError(f"--gaussians depthsplat without --gaussians-weights needs the back-end's depth: the "
                             f"{recon.backend} reconstruction has no metric sensor depth or point maps for frame "
                             f"{missing[0]}; give --gaussians-weights CKPT")
        for i in context:  # per-view predictor: each context view once
            f = kept[i]
            g = unproject_gaussians(f.image, depths[i], _frame_K(recon, i, f), footprint=UNPROJECT_FOOTPRINT)
            parts.append(g.transform(recon.c2w[i]))
        predictor = "depth"
    pix = np.median([float(np.median(d[d > 0])) / _frame_K(recon, i, kept[i])[0, 0]
                     for i, d in depths.items() if (d > 0).any()]) if depths else 0.0
    voxel = cfg.voxel_size if cfg.voxel_size is not None else 0.5 * float(pix)
    g = merge_gaussians(parts, cfg.min_opacity, voxel, cfg.budget)
    n_predicted = int(sum(len(p) for p in parts))
    heldout = sorted(i for i in kept if i % stride != 0 and i < len(recon) and recon.frame_status[i].ok
                     and context[0] < i < context[-1])
    info: dict[str, Any] = {"predictor": predictor, "num_predicted": n_predicted, "num_gaussians": len(g),
                            "context_views": len(context), "windows": len(windows), "near": near, "far": far,
                            "voxel_size": voxel, "config": asdict(cfg)}
    if cfg.refine_steps > 0:
        g, info["refine"] = _refine(g, recon, kept, context, cfg.refine_steps, progress)
    result = SceneGaussians(g, context, windows, heldout, info=info)
    to01 = lambda im: torch.from_numpy(np.array(im)).float() / 255.0  # noqa: E731
    shown = set(np.asarray(heldout)[np.unique(np.linspace(0, len(heldout) - 1, MAX_PREVIEWS).round().astype(int))]
                .tolist()) if heldout else set()
    for i in heldout:
        f = kept[i]
        img = _render(g, recon.c2w[i], _frame_K(recon, i, f), f.width, f.height)
        result.heldout_psnr.append(float(psnr(img, to01(f.image))))
        if i in shown:
            result.previews[i] = np.concatenate([(img.numpy() * 255 + 0.5).astype(np.uint8), f.image], 1)
    if result.heldout_psnr:
        info["heldout_psnr_mean"] = float(np.mean(result.heldout_psnr))
    info["heldout_frames"] = heldout
    info["heldout_psnr"] = result.heldout_psnr
    return result


def _refine(g: Gaussians, recon: Reconstruction, kept: dict[int, Frame], context: list[int], steps: int,
            progress: bool) -> tuple[Gaussians, dict]:
    """A few Adam steps of :func:`forward3d.train.fit.fit_gaussians` against the context views."""
    from forward3d.render import Cameras
    from forward3d.train.fit import FitConfig, fit_gaussians

    f0 = kept[context[0]]
    images = torch.stack([torch.from_numpy(np.array(kept[i].image)).float() / 255.0 for i in context])
    K = torch.as_tensor(np.stack([_frame_K(recon, i, kept[i]) for i in context]), dtype=torch.float32)
    cams = Cameras.from_c2w(torch.as_tensor(recon.c2w[context], dtype=torch.float32), K, f0.width, f0.height)
    fit = fit_gaussians(g.to(dtype=torch.float32), images, cams, FitConfig(steps=steps, progress=progress,
                                                                           eval_every=max(1, steps)),
                        eval_images=images, eval_cameras=cams)
    return fit.gaussians, {"steps": steps, "context_psnr_before": fit.eval_psnr[0][1],
                           "context_psnr_after": fit.eval_psnr[-1][1]}


def write_scene_gaussians(result: SceneGaussians, out_dir: str | Path) -> dict[str, Path]:
    """``gaussians.ply`` (3DGS PLY, world frame of the reconstruction), ``gaussians.json`` and
    ``gaussians_views/heldout_{index}.png`` (render | input of some held-out views)."""
    from forward3d.io.gaussians import write_gaussians_ply
    from forward3d.io.jsonio import write_json
    from forward3d.io.video import write_png

    out = Path(out_dir)
    ply = out / "gaussians.ply"
    write_gaussians_ply(ply, result.gaussians)
    info = {**result.info, "context_frames": result.context, "window_frames": result.windows}
    files = {"gaussians": ply, "gaussians_info": write_json(out / "gaussians.json", info)}
    if result.previews:
        (out / "gaussians_views").mkdir(parents=True, exist_ok=True)
        for i, im in result.previews.items():
            write_png(out / "gaussians_views" / f"heldout_{i:06d}.png", im)
        files["gaussians_views"] = out / "gaussians_views"
    return files
