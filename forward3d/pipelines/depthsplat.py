"""Posed images -> one 3DGS scene with DepthSplat (``forward3d splat --multiview``).

The views are resized (short side to ``short_side``, intrinsics scaled with them) and centre-cropped to the
model's 16-pixel multiple (principal point shifted), the network predicts per-view depth and per-pixel
Gaussians in the world frame of the given poses, Gaussians below ``min_opacity`` are dropped, and the scene
is rendered back at every input camera (PSNR against the cropped inputs) and along an orbit.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from forward3d.types import Gaussians

logger = logging.getLogger(__name__)

__all__ = ["MultiViewSplatResult", "prepare_views", "splat_multiview", "save_multiview_outputs"]


@dataclass
class MultiViewSplatResult:
    """Attributes:
        gaussians: world-frame Gaussians of all views (``N <= V*H*W``).
        images: ``[V, H, W, 3]`` uint8 model inputs (resized and cropped).
        depths: ``[V, H, W]`` predicted metric z-depth.
        K: ``[V, 3, 3]`` pixel intrinsics of ``images``.
        c2w: ``[V, 4, 4]`` camera-to-world poses.
        info: numbers for the summary (sizes, counts).
    """

    gaussians: Gaussians
    images: np.ndarray
    depths: np.ndarray
    K: np.ndarray
    c2w: np.ndarray
    info: dict = field(default_factory=dict)

    @property
    def height(self) -> int:
        return int(self.images.shape[1])

    @property
    def width(self) -> int:
        return int(self.images.shape[2])


def prepare_views(images: list[np.ndarray], K: np.ndarray, multiple: int = 16, short_side: int | None = 256,
                  size: tuple[int, int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Resize and centre-crop views to a size the model accepts.

    Args:
        images: V ``[H, W, 3]`` uint8 images of one size.
        K: ``[3, 3]`` or ``[V, 3, 3]`` pixel intrinsics of the inputs.
        multiple: output sides are multiples of this.
        short_side: resize so the short side is this (None: keep the scale) ...
        size: ... or resize to cover ``(H, W)`` and crop to exactly it.

    Returns:
        ``[V, h, w, 3]`` uint8 and ``[V, 3, 3]`` intrinsics of the outputs.
    """
    if not images:
        raise ValueError("multiview splat: no images")
    h0, w0 = images[0].shape[:2]
    for i, im in enumerate(images):
        if im.shape[:2] != (h0, w0) or im.ndim != 3 or im.shape[2] != 3:
            raise ValueError(f"multiview splat: view {i} is {list(im.shape)}, expected {[h0, w0, 3]} like view 0")
    K = np.asarray(K, np.float64)
    K = np.broadcast_to(K, (len(images), 3, 3)).copy() if K.shape == (3, 3) else K.copy()
    if K.shape != (len(images), 3, 3):
        raise ValueError(f"multiview splat: intrinsics {list(K.shape)} for {len(images)} views")
    if size is not None:
        th, tw = (int(s) for s in size)
        if th % multiple or tw % multiple or th <= 0 or tw <= 0:
            raise ValueError(f"multiview splat: size {th}x{tw} must be positive multiples of {multiple}")
        s = max(th / h0, tw / w0)
    else:
        s = 1.0 if short_side is None else short_side / min(h0, w0)
    rh, rw = max(multiple, round(h0 * s)), max(multiple, round(w0 * s))
    if size is None:
        th, tw = rh // multiple * multiple, rw // multiple * multiple
    y0, x0 = (rh - th) // 2, (rw - tw) // 2
    out = []
    for im in images:
        r = im if (rh, rw) == (h0, w0) else np.asarray(Image.fromarray(im).resize((rw, rh), Image.LANCZOS))
        out.append(r[y0:y0 + th, x0:x0 + tw])
    K[:, 0] *= rw / w0
    K[:, 1] *= rh / h0
    K[:, 0, 2] -= x0
    K[:, 1, 2] -= y0
    return np.stack(out), K


def splat_multiview(model, images: list[np.ndarray], K: np.ndarray, c2w: np.ndarray, near: float = 0.5,
                    far: float = 100.0, short_side: int | None = 256, size: tuple[int, int] | None = None,
                    min_opacity: float = 0.0, device: str | torch.device = "cpu") -> MultiViewSplatResult:
    """Posed views -> world-frame Gaussians with a :class:`~forward3d.models.depthsplat.DepthSplat`.

    Args:
        images: V >= 2 ``[H, W, 3]`` uint8 views.
        K: ``[3, 3]`` or ``[V, 3, 3]`` pixel intrinsics; ``c2w``: ``[V, 4, 4]`` OpenCV camera-to-world.
        near, far: depth range of the plane sweep (in the units of the poses).
        min_opacity: drop Gaussians below this opacity.
    """
    c2w = np.asarray(c2w, np.float64)
    if c2w.shape != (len(images), 4, 4) or not np.isfinite(c2w).all():
        raise ValueError(f"multiview splat: expected {len(images)} finite 4x4 poses, found {list(c2w.shape)}")
    if len(images) < 2:
        raise ValueError(f"multiview splat: DepthSplat needs at least 2 views, found {len(images)}")
    imgs, Kp = prepare_views(images, K, model.cfg.patch_multiple, short_side, size)
    v, h, w = imgs.shape[:3]
    Kn = Kp.copy()
    Kn[:, 0] /= w
    Kn[:, 1] /= h
    t = lambda a: torch.as_tensor(np.ascontiguousarray(a), dtype=torch.float32, device=device)[None]  # noqa: E731
    x = t(imgs).permute(0, 1, 4, 2, 3) / 255.0
    with torch.inference_mode():
        out = model(x, t(Kn), t(c2w), near=near, far=far)
    g = out.gaussians(0).to("cpu")
    n_all = len(g)
    if min_opacity > 0:
        g = g.subset(g.opacity_logits.sigmoid() >= min_opacity)
    info = {"views": v, "size": [w, h], "num_gaussians": len(g), "num_predicted": n_all, "near": near, "far": far}
    return MultiViewSplatResult(g, imgs, out.depths[0].float().cpu().numpy(), Kp, c2w, info)


def save_multiview_outputs(result: MultiViewSplatResult, out_dir: str | Path, orbit_frames: int = 24,
                           video: str = "mp4", orbit_size: int | None = 320, fps: int = 24,
                           background: float | tuple[float, float, float] = 0.0, progress: bool = False) -> dict:
    """Write scene.ply, scene.splat, depth_{i}.png, views/view_{i}.png (renders at the input cameras) and an
    orbit around the first camera; adds ``psnr_input_views`` to ``result.info``. Returns the paths."""
    from forward3d.eval.image import psnr
    from forward3d.io.gaussians import write_gaussians_ply, write_splat
    from forward3d.io.video import write_png, write_video
    from forward3d.viz.paths import orbit_around_camera

    from .splat import SplatResult, colorize_depth, render_views

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths: dict = {"ply": out / "scene.ply", "splat": out / "scene.splat"}
    write_gaussians_ply(paths["ply"], result.gaussians)
    write_splat(paths["splat"], result.gaussians)
    scores = []
    for i in range(len(result.c2w)):
        sr = SplatResult(result.gaussians, result.K[i], result.width, result.height, result.depths[i], "depthsplat")
        img = render_views(sr, result.c2w[i][None], background)[0]
        (out / "views").mkdir(exist_ok=True)
        paths[f"view_{i}"] = out / "views" / f"view_{i}.png"
        write_png(paths[f"view_{i}"], img)
        paths[f"depth_{i}"] = out / f"depth_{i}.png"
        write_png(paths[f"depth_{i}"], colorize_depth(result.depths[i]))
        t = lambda a: torch.from_numpy(a).permute(2, 0, 1).float() / 255.0  # noqa: E731
        scores.append(float(psnr(t(img), t(result.images[i]))))
    result.info["psnr_input_views"] = scores
    if orbit_frames > 0 and video != "none":
        d = result.depths[0]
        m = float(np.median(d[np.isfinite(d) & (d > 0)])) if np.isfinite(d).any() else 1.0
        sr = SplatResult(result.gaussians, result.K[0], result.width, result.height, d, "depthsplat")
        poses = orbit_around_camera(m, n=orbit_frames, radius_fraction=0.08, c2w=result.c2w[0])
        frames = render_views(sr, poses, background, max_side=orbit_size, progress=progress, desc="orbit")
        paths["video"] = write_video(out / f"orbit.{video}", frames, fps=fps)
    return paths
