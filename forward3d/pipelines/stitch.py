"""Single image -> an extrapolated 3D scene (Invisible Stitch): lift, turn, render, inpaint, complete, add.

The loop (Engstler et al., "Invisible Stitch"): lift the photo with its depth to 3D Gaussians (one
per pixel, :func:`~forward3d.pipelines.splat.unproject_gaussians`); for each new camera (rotations
about the source camera's vertical axis in ``step_deg`` steps) render what is known with our
rasterizer (colour, alpha, expected depth), inpaint the pixels no Gaussian covers
(:mod:`forward3d.models.inpaint`), complete their depth consistently with the rendered depth
(:mod:`forward3d.models.depth_completion`), add Gaussians for the NEW pixels only, repeat; finally
fit all Gaussians to all generated views (:func:`~forward3d.train.fit.fit_gaussians`).

Frame: the source camera is the world origin (``c2w = I``, OpenCV axes, metres), as in ``splat``.
Modes: ``single`` (the source view only), ``stage`` (0, +step, -step), ``360`` (0, +step, -step,
+2 step, ... until the full turn is covered).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch

from forward3d.config import option
from forward3d.pipelines.splat import check_camera_inputs
from forward3d.types import Gaussians

logger = logging.getLogger(__name__)

__all__ = ["StitchConfig", "StitchView", "resize_input", "StitchResult", "stitch_yaws", "yaw_c2w", "render_rgbd", "lift_view", "stitch_scene",
           "save_stitch_outputs"]

Mode = Literal["single", "stage", "360"]


@dataclass
class StitchConfig:
    """Options of ``forward3d scene`` (one photo -> a 3D scene larger than the photo).

    Attributes:
        image: input photo (jpg/png/webp; EXIF orientation applied).
        mode: camera schedule: single (the photo only), stage (0 and +-step degrees), 360 (the full turn).
        depth: metric depth map of the photo: 16-bit PNG (divided by --depth-scale, default millimetres),
            .npy or float TIFF (metres). Holes are completed like unseen regions.
        depth_model: monocular depth network for the photo and the new views: a transformers model
            folder or hub id, 'transformers:PATH' or 'unidepth[:SOURCE]'.
        depth_scale: raw depth units per metre (default 1000 for 16-bit files, 1 for float files).
        completion: depth completion: 'aligned' (weight-free: the monocular depth aligned by scale and
            shift in inverse depth, or the known depth extended, blended at the seam) or a local
            ZoeDepth depth-completion folder (5 input channels).
        inpainter: 'telea' (OpenCV, weight-free) or a local diffusers SD-2 inpainting folder (needs
            pip install 'forward3d[gen]').
        prompt: text prompt of the diffusion inpainter (ignored by telea).
        inpaint_steps: denoising steps of the diffusion inpainter.
        inpaint_size: square side in pixels the diffusion inpainter works at (a multiple of 8; SD-2
            inpainting was trained at 512).
        inpaint_guidance: classifier-free guidance scale of the diffusion inpainter.
        seed: random seed of the diffusion inpainter (runs are repeatable).
        intrinsics: pinhole intrinsics of the image in pixels.
        fov: horizontal field of view in degrees when --intrinsics is not given (default 60, with a warning).
        max_size: long side in pixels the photo is resized to before the loop (0 = as is).
        step_deg: rotation between consecutive views in degrees.
        known_alpha: a pixel is known when the render's opacity is at least this.
        seam_width: pixels over which the aligned completion fades its seam correction.
        fit_steps: photometric Gaussian fitting steps over all generated views (0 = no fit).
        device: auto (CUDA when available), cpu, cuda or cuda:N.
        out: output folder (replaced as a whole).
        overwrite: replace --out even when it holds files forward3d did not write.
        view_size: long side in pixels of the preview renders (views/*.png).
        orbit_frames: frames of the orbit video (0 = no video).
        orbit_size: long side in pixels of the orbit video frames.
        video: orbit video format (none: no video).
        fps: orbit video frame rate.
    """

    image: str = option("", positional=True)
    mode: Mode = "stage"
    depth: str | None = option(None, metavar="FILE")
    depth_model: str | None = option(None, metavar="MODEL")
    depth_scale: float | None = option(None, metavar="S")
    completion: str = option("aligned", metavar="SPEC")
    inpainter: str = option("telea", metavar="SPEC")
    prompt: str | None = option(None, metavar="TEXT")
    inpaint_steps: int = 30
    inpaint_size: int = option(512, metavar="PX")
    inpaint_guidance: float = 7.5
    seed: int = 0
    intrinsics: tuple[float, float, float, float] | None = option(None, metavar=("FX", "FY", "CX", "CY"))
    fov: float | None = option(None, metavar="DEG")
    max_size: int = option(256, metavar="PX")
    step_deg: float = option(25.0, metavar="DEG")
    known_alpha: float = 0.5
    seam_width: float = option(8.0, metavar="PX")
    fit_steps: int = 200
    device: str = "auto"
    out: str = option("forward3d-scene", metavar="DIR")
    overwrite: bool = False
    view_size: int = option(512, metavar="PX")
    orbit_frames: int = 24
    orbit_size: int = option(320, metavar="PX")
    video: Literal["mp4", "gif", "none"] = "mp4"
    fps: int = 24

    def __post_init__(self) -> None:
        if self.depth is not None and self.depth_model is not None:
            raise ValueError("--depth and --depth-model: give one of them")
        if self.intrinsics is not None and self.fov is not None:
            raise ValueError("--intrinsics and --fov: give one of them")
        if self.fov is not None and not 0 < self.fov < 180:
            raise ValueError(f"--fov: expected a value in (0, 180) degrees, found {self.fov}")
        if self.mode not in ("single", "stage", "360"):
            raise ValueError(f"--mode: expected single, stage or 360, found {self.mode!r}")
        if not 0 < self.step_deg <= 90:
            raise ValueError(f"--step-deg: expected a value in (0, 90], found {self.step_deg}")
        if not 0 < self.known_alpha < 1:
            raise ValueError(f"--known-alpha: expected a value in (0, 1), found {self.known_alpha}")
        for name in ("max_size", "fit_steps", "orbit_frames"):
            if getattr(self, name) < 0:
                raise ValueError(f"--{name.replace('_', '-')}: expected >= 0, found {getattr(self, name)}")
        if self.inpaint_size < 8 or self.inpaint_size % 8:
            raise ValueError(f"--inpaint-size: expected a multiple of 8 (>= 8), found {self.inpaint_size}")
        for name in ("view_size", "orbit_size", "fps", "inpaint_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')}: expected >= 1, found {getattr(self, name)}")


def resize_input(image: np.ndarray, depth: np.ndarray | None, K: np.ndarray, max_size: int
                 ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """Shrink the photo (area filter) and its depth (nearest: holes stay holes) so the long side is at
    most ``max_size`` pixels (0 = as is); ``K`` is rescaled (:func:`forward3d.geometry.camera.scale_K`)."""
    from PIL import Image

    from forward3d.geometry.camera import scale_K

    h, w = image.shape[:2]
    if max_size <= 0 or max(h, w) <= max_size:
        return image, depth, np.asarray(K, np.float64)
    s = max_size / max(h, w)
    nw, nh = max(1, round(w * s)), max(1, round(h * s))
    img = np.asarray(Image.fromarray(image).resize((nw, nh), Image.BOX))
    d = None
    if depth is not None:
        d = np.asarray(Image.fromarray(np.asarray(depth, np.float32), mode="F").resize((nw, nh), Image.NEAREST))
    return img, d, scale_K(np.asarray(K, np.float64), nw / w, nh / h)


def stitch_yaws(mode: str, step_deg: float = 25.0) -> list[float]:
    """The yaw angles (degrees, + = turn right) of the views of ``mode``, in loop order."""
    if mode == "single":
        return [0.0]
    if mode == "stage":
        return [0.0, step_deg, -step_deg]
    if mode == "360":
        n = math.ceil(180.0 / step_deg)  # per side; the two sides meet behind the source camera
        yaws = [0.0]
        for k in range(1, n + 1):
            a = min(k * step_deg, 180.0)
            yaws += [a, -a] if a < 180.0 else [a]
        return yaws
    raise ValueError(f"stitch: mode expected single, stage or 360, found {mode!r}")


def yaw_c2w(yaw_deg: float, pitch_deg: float = 0.0) -> np.ndarray:
    """``[4, 4]`` camera at the origin turned by ``yaw_deg`` about the source camera's y axis (+ = right)
    then ``pitch_deg`` about its own x axis (+ = up)."""
    a, b = math.radians(yaw_deg), math.radians(pitch_deg)
    Ry = np.array([[math.cos(a), 0, math.sin(a)], [0, 1, 0], [-math.sin(a), 0, math.cos(a)]])
    Rx = np.array([[1, 0, 0], [0, math.cos(b), math.sin(b)], [0, -math.sin(b), math.cos(b)]])
    T = np.eye(4)
    T[:3, :3] = Ry @ Rx
    return T


def render_rgbd(gaussians: Gaussians, c2w: np.ndarray, K: np.ndarray, width: int, height: int,
                depth_mode: Literal["plane", "expected"] = "plane") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Render ``(rgb [H, W, 3] uint8, alpha [H, W], depth [H, W] (0 where alpha = 0))``.

    ``depth_mode="expected"``: the rasterizer's alpha-blended centre depth. It is biased toward the
    camera on surfaces seen at a slant (front Gaussians dominate the blend), by a fraction of the pixel
    footprint times the slope, which the loop would accumulate view after view. ``"plane"`` (default):
    each Gaussian stands for the plane through its mean normal to its thinnest axis; the planes'
    parameters ``(n, n . mean)`` are alpha-blended like colours (two more passes of the rasterizer) and
    each pixel's depth is its ray's intersection with the blended plane: exact on planar surfaces.
    """
    from forward3d.geometry.quaternion import quat_to_rotmat_torch
    from forward3d.render import SH_C0, Cameras, rasterize

    dev = gaussians.means.device
    cams = Cameras.from_c2w(torch.as_tensor(c2w, dtype=torch.float32)[None],
                            torch.as_tensor(K, dtype=torch.float32)[None], width, height).to(dev)
    with torch.no_grad():
        out = rasterize(gaussians, cams, render_mode="RGB+ED")
        rgb = (out.colors[0].clamp(0, 1) * 255 + 0.5).to(torch.uint8).cpu().numpy()
        alpha = out.alphas[0].double().cpu().numpy()
        depth = out.depths[0].double().cpu().numpy()
        if depth_mode == "plane":
            R = quat_to_rotmat_torch(gaussians.quats / gaussians.quats.norm(dim=-1, keepdim=True))  # [N, 3, 3]
            thin = gaussians.log_scales.argmin(-1)
            n = R[torch.arange(len(R)), :, thin]  # world normal [N, 3]
            w2c = torch.linalg.inv(torch.as_tensor(c2w, dtype=torch.float32, device=dev))
            n_cam = n @ w2c[:3, :3].T
            m_cam = gaussians.means @ w2c[:3, :3].T + w2c[:3, 3]
            c = (n_cam * m_cam).sum(-1)
            sign = torch.where(c < 0, -1.0, 1.0)
            n_cam, c = n_cam * sign[:, None], c * sign

            def blend(feat: torch.Tensor) -> np.ndarray:  # feat [N, 3] >= 0: the colour channels carry it
                g = Gaussians(gaussians.means, gaussians.quats, gaussians.log_scales, gaussians.opacity_logits,
                              ((feat - 0.5) / SH_C0)[:, None, :])
                o = rasterize(g, cams, render_mode="RGB")
                return (o.colors[0] / o.alphas[0].clamp_min(1e-6)[..., None]).double().cpu().numpy()

            nb = blend(n_cam + 1.0) - 1.0
            cb = blend(torch.stack([c, torch.zeros_like(c), torch.zeros_like(c)], -1))[..., 0]
            from forward3d.geometry.camera import pixel_grid

            uv = pixel_grid(height, width)  # pixel centres (+0.5)
            Kd = np.asarray(K, np.float64)
            rx, ry = (uv[..., 0] - Kd[0, 2]) / Kd[0, 0], (uv[..., 1] - Kd[1, 2]) / Kd[1, 1]
            den = nb[..., 0] * rx + nb[..., 1] * ry + nb[..., 2]
            with np.errstate(divide="ignore", invalid="ignore"):
                plane = cb / den
            # at depth edges the blended plane is meaningless: keep the expected depth there
            good = np.isfinite(plane) & (plane > 0) & (np.abs(plane - depth) < 0.1 * np.abs(depth) + 0.05)
            depth = np.where(good, plane, depth)
    depth = np.where((alpha > 1e-4) & np.isfinite(depth), depth, 0.0)
    return rgb, alpha, depth


@dataclass
class StitchView:
    """One generated view.

    Attributes:
        yaw: degrees. c2w: ``[4, 4]`` in the source camera frame.
        image: ``[H, W, 3]`` uint8 (rendered known pixels + inpainted new ones; the photo for view 0).
        depth: ``[H, W]`` completed depth. known: ``[H, W]`` bool, pixels the scene covered before.
        rendered_depth: ``[H, W]`` the scene's depth before the new points (0 = none).
        num_new: Gaussians the view added.
    """

    yaw: float
    c2w: np.ndarray
    image: np.ndarray
    depth: np.ndarray
    known: np.ndarray
    rendered_depth: np.ndarray
    num_new: int


@dataclass
class StitchResult:
    """Attributes:
        gaussians: the scene (source camera frame) after the fit; ``gaussians_before_fit`` the lifted points.
        K: ``[3, 3]``; ``width``/``height``: the loop's image size. views: the generated views.
    """

    gaussians: Gaussians
    gaussians_before_fit: Gaussians
    K: np.ndarray
    width: int
    height: int
    views: list[StitchView]
    info: dict = field(default_factory=dict)


def lift_view(image: np.ndarray, depth: np.ndarray, new: np.ndarray, K: np.ndarray, c2w: np.ndarray) -> Gaussians | None:
    """Gaussians (scene frame) for the pixels ``new`` (``[H, W]`` bool) of a view with ``depth``
    ``[H, W]``: one surface-aligned disc per pixel (normals from the full depth map); ``None`` if no
    new pixel has depth."""
    from forward3d.geometry.camera import depth_to_points
    from forward3d.geometry.normals import normals_from_point_map
    from forward3d.pipelines.splat import unproject_gaussians

    d = np.where(new, depth, 0.0)
    if not (np.isfinite(d) & (d > 0)).any():
        return None
    normals = normals_from_point_map(depth_to_points(np.asarray(depth, np.float64), K, fill=np.nan))
    return unproject_gaussians(image, d, K, normals=normals).transform(c2w)


def stitch_scene(image: np.ndarray, K: np.ndarray, depth: np.ndarray | None, completer, inpainter,
                 mode: str = "stage", step_deg: float = 25.0, prompt: str | None = None, known_alpha: float = 0.5,
                 fit_steps: int = 200, progress: bool = True, seed: int = 0,
                 device: str | torch.device = "cpu") -> StitchResult:
    """Run the Invisible Stitch loop.

    Args:
        image: ``[H, W, 3]`` uint8 photo. K: ``[3, 3]`` its intrinsics.
        depth: ``[H, W]`` metric depth of the photo (0 = hole, completed by ``completer``); ``None``: the
            completer's monocular source estimates it (no known pixel).
        completer: a :class:`~forward3d.models.depth_completion.DepthCompleter`.
        inpainter: a :class:`~forward3d.models.inpaint.Inpainter`.
        mode, step_deg: camera schedule (:func:`stitch_yaws`).
        known_alpha: render opacity from which a pixel counts as known.
        fit_steps: photometric fitting steps over all views (0 = none).
        device: where the Gaussians are rendered and fitted (the result is on the CPU).
    Returns:
        :class:`StitchResult` in the source camera frame.
    """
    from forward3d.progress import progress_bar

    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"stitch: expected a uint8 image [H, W, 3], found {image.dtype} {list(image.shape)}")
    h, w = image.shape[:2]
    K = check_camera_inputs("stitch", image, K, depth)
    yaws = stitch_yaws(mode, step_deg)
    views: list[StitchView] = []
    parts: list[Gaussians] = []
    scene: Gaussians | None = None
    with progress_bar(len(yaws), "scene", unit="view", enabled=progress) as bar:
        for yaw in yaws:
            c2w = yaw_c2w(yaw)
            if scene is None:  # the photo: its own depth, holes completed
                sparse = np.zeros((h, w)) if depth is None else np.asarray(depth, np.float64)
                known = np.isfinite(sparse) & (sparse > 0)
                rendered = np.where(known, sparse, 0.0)
                img = image
                new = np.ones((h, w), bool)
            else:
                rgb, alpha, rendered = render_rgbd(scene, c2w, K, w, h)
                known = (alpha >= known_alpha) & (rendered > 0)
                new = ~known
                if not new.any():  # nothing unseen: the view is kept (a render) for the fit
                    views.append(StitchView(yaw, c2w, rgb, rendered, known, rendered, 0))
                    bar.update(1)
                    continue
                img = inpainter.inpaint(rgb, new, prompt=prompt, c2w=c2w)
            full = completer.complete(img, np.where(known, rendered, 0.0), known, K=K, c2w=c2w)
            g = lift_view(img, full, new, K, c2w)
            n_new = 0 if g is None else len(g)
            if g is not None:
                parts.append(g.to(device))
                scene = Gaussians.concat(parts)
            views.append(StitchView(yaw, c2w, img, full, known, rendered, n_new))
            bar.update(1)
            bar.set_postfix(gaussians=0 if scene is None else len(scene))
    if scene is None:
        raise ValueError("stitch: no valid depth anywhere: nothing to lift")
    before = scene
    info = {"mode": mode, "yaws": [v.yaw for v in views], "num_gaussians": len(scene),
            "new_per_view": [v.num_new for v in views]}
    if fit_steps > 0:
        from forward3d.render import Cameras
        from forward3d.train.fit import FitConfig, fit_gaussians

        imgs = (torch.from_numpy(np.stack([v.image for v in views])).float() / 255.0).to(device)
        cams = Cameras.from_c2w(torch.as_tensor(np.stack([v.c2w for v in views]), dtype=torch.float32),
                                torch.as_tensor(np.broadcast_to(K, (len(views), 3, 3)).copy(), dtype=torch.float32),
                                w, h).to(device)
        fit = fit_gaussians(scene, imgs, cams, FitConfig(steps=fit_steps, progress=progress, seed=seed))
        scene = fit.gaussians
        info["fit_loss"] = [fit.losses[0], fit.losses[-1]]
    return StitchResult(scene.to("cpu"), before.to("cpu"), K, w, h, views, info)


def save_stitch_outputs(result: StitchResult, out_dir, orbit_frames: int = 24, video: str = "mp4",
                        max_side: int | None = 512, orbit_size: int | None = 320, fps: int = 24,
                        progress: bool = False) -> dict:
    """``splat``'s outputs (scene.ply, scene.splat, depth.png, views/*.png, orbit video) plus the
    generated views (``generated/NN_yaw*.png`` and their depth) and a 360 turn ``views/turn_*.png``."""
    from pathlib import Path

    from forward3d.io.video import write_png
    from forward3d.pipelines.splat import SplatResult, colorize_depth, render_views, save_outputs

    sr = SplatResult(result.gaussians, result.K, result.width, result.height, result.views[0].depth, "stitch",
                     dict(result.info))
    paths = save_outputs(sr, out_dir, orbit_frames=orbit_frames, video=video, max_side=max_side,
                         orbit_size=orbit_size, fps=fps, progress=progress)
    out = Path(out_dir)
    (out / "generated").mkdir(exist_ok=True)
    for i, v in enumerate(result.views):
        stem = f"{i:02d}_yaw{v.yaw:+04.0f}"
        write_png(out / "generated" / f"{stem}.png", v.image)
        paths[f"generated_{i}"] = out / "generated" / f"{stem}.png"
        write_png(out / "generated" / f"{stem}_depth.png", colorize_depth(v.depth))
    turn = [0.0, 45.0, -45.0, 90.0, -90.0, 180.0] if result.info.get("mode") == "360" else [0.0, 20.0, -20.0]
    imgs = render_views(sr, np.stack([yaw_c2w(a) for a in turn]), max_side=max_side, progress=progress, desc="turn")
    for a, img in zip(turn, imgs):
        p = out / "views" / f"turn_{a:+04.0f}.png"
        write_png(p, img)
        paths[f"turn_{a:+.0f}"] = p
    return paths
