"""Single image (+ depth) -> 3D Gaussians: the no-network "unproject" baseline and Flash3D.

Both return Gaussians in the source camera's frame (OpenCV axes, metres): the source camera is the
world origin with ``c2w = I``.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from typing import Literal

from forward3d.config import option
from forward3d.geometry.camera import unproject
from forward3d.types import SH_C0, Gaussians

logger = logging.getLogger(__name__)

__all__ = ["SplatConfig", "predict_flash3d", "unproject_gaussians", "SplatResult", "splat_image", "splat_image_file", "camera_K", "render_views", "colorize_depth"]


def unproject_gaussians(image: np.ndarray, depth: np.ndarray, K: np.ndarray, footprint: float = 0.5,
                        thickness: float = 0.1, opacity: float = 0.99, stride: int = 1,
                        normals: np.ndarray | None = None, max_slant_deg: float = 70.0) -> Gaussians:
    """One Gaussian per valid pixel at its depth (the no-network baseline).

    Args:
        image: ``[H, W, 3]`` uint8.
        depth: ``[H, W]`` metric z-depth (0 / non-finite = no Gaussian).
        K: ``[3, 3]`` intrinsics of ``image``.
        footprint: in-plane standard deviation as a fraction of the pixel footprint ``z / f``
            (0.5 leaves no holes between neighbours; the rasterizer adds its 0.3 px^2 dilation).
        thickness: standard deviation along the viewing axis as a fraction of the in-plane one
            (flat discs facing the camera).
        opacity: of every Gaussian.
        stride: use every ``stride``-th pixel (footprint scaled accordingly).
        normals: optional ``[H, W, 3]`` camera-frame unit surface normals (e.g.
            :func:`forward3d.geometry.normals.normals_from_point_map`): each disc then lies in its
            surface (in-plane size divided by the cosine of the slant, so the pixel stays covered)
            instead of facing the camera, which keeps the depth right from other viewpoints. Pixels
            whose normal is more than ``max_slant_deg`` from the ray (depth edges) face the camera.
    Returns:
        Gaussians in the camera frame, SH degree 0, colour from the pixel.
    """
    h, w = depth.shape
    if image.shape[:2] != (h, w):
        raise ValueError(f"unproject: image {image.shape[:2]} and depth {depth.shape} differ in size")
    K = np.asarray(K, np.float64)
    vs, us = np.mgrid[0:h:stride, 0:w:stride]
    d = depth[vs, us].astype(np.float64)
    ok = np.isfinite(d) & (d > 0)
    if not ok.any():
        raise ValueError("unproject: the depth map has no valid pixel")
    z = d[ok]
    means = unproject(np.stack([us[ok] + 0.5, vs[ok] + 0.5], -1), z, K)  # pixel centres at +0.5
    sx = footprint * stride * z / K[0, 0]
    sy = footprint * stride * z / K[1, 1]
    scales = np.stack([sx, sy, thickness * np.minimum(sx, sy)], -1)
    # rotate each disc so its thin axis points along the viewing ray
    ray = means / np.linalg.norm(means, axis=-1, keepdims=True)
    axis = ray
    if normals is not None:
        if np.shape(normals) != (h, w, 3):
            raise ValueError(f"unproject: normals {np.shape(normals)} must be [H, W, 3] = [{h}, {w}, 3]")
        n = np.asarray(normals, np.float64)[vs, us][ok]
        n = np.where(np.isfinite(n), n, 0.0)
        n = n * np.where(np.einsum("ij,ij->i", n, ray) > 0, 1.0, -1.0)[:, None]  # along the ray's side
        cos = np.einsum("ij,ij->i", n, ray)
        use = cos >= math.cos(math.radians(max_slant_deg))
        axis = np.where(use[:, None], n, ray)
        grow = np.where(use, 1.0 / np.maximum(cos, 1e-6), 1.0)
        scales[:, :2] *= grow[:, None]
    quats = _quat_from_z_to(axis)
    colors = image[vs, us][ok].astype(np.float64) / 255.0
    t = lambda a: torch.as_tensor(a, dtype=torch.float32)  # noqa: E731
    n = len(z)
    logit = math.log(opacity / (1 - opacity))
    return Gaussians(t(means), t(quats), t(np.log(scales)), torch.full((n,), logit),
                     t(((colors - 0.5) / SH_C0)[:, None, :]))


def _quat_from_z_to(v: np.ndarray) -> np.ndarray:
    """wxyz quaternions rotating +z onto unit vectors ``v`` ``[N, 3]``."""
    z = np.array([0.0, 0.0, 1.0])
    axis = np.cross(z, v)
    w = 1.0 + v @ z
    q = np.concatenate([w[:, None], axis], -1)
    bad = w < 1e-8  # v = -z: rotate by pi about x
    q[bad] = [0.0, 1.0, 0.0, 0.0]
    return q / np.linalg.norm(q, axis=-1, keepdims=True)


def colorize_depth(depth: np.ndarray) -> np.ndarray:
    """``[H, W]`` depth -> ``[H, W, 3]`` uint8 (near = bright yellow, far = dark purple; invalid black)."""
    d = np.asarray(depth, np.float64)
    ok = np.isfinite(d) & (d > 0)
    out = np.zeros((*d.shape, 3), np.uint8)
    if not ok.any():
        return out
    inv = 1.0 / d[ok]
    lo, hi = np.percentile(inv, 2), np.percentile(inv, 98)
    t = np.clip((inv - lo) / max(hi - lo, 1e-9), 0, 1)
    # a compact magma-like ramp
    stops = np.array([[0, 0, 4], [80, 18, 123], [182, 54, 121], [251, 136, 97], [252, 253, 191]], np.float64)
    pos = t * (len(stops) - 1)
    i = np.minimum(pos.astype(int), len(stops) - 2)
    f = (pos - i)[:, None]
    out[ok] = (stops[i] * (1 - f) + stops[i + 1] * f).astype(np.uint8)
    return out


@dataclass
class SplatResult:
    """Attributes:
        gaussians: in the source camera frame.
        K: ``[3, 3]`` intrinsics of the rendered views; ``width``/``height`` their size.
        depth: ``[H, W]`` the depth used (at the rendered size).
        method: ``"unproject"`` or ``"flash3d"``.
    """

    gaussians: Gaussians
    K: np.ndarray
    width: int
    height: int
    depth: np.ndarray
    method: str
    info: dict = field(default_factory=dict)


DEFAULT_MAX_GAUSSIANS = 1_000_000


@dataclass
class SplatConfig:
    """Options of ``forward3d splat`` (single image + depth -> 3D Gaussians, renders, orbit video).

    Attributes:
        image: input photo (jpg/png/webp; EXIF orientation applied); or use --multiview.
        multiview: two or more posed views of one scene -> one 3DGS scene with DepthSplat (needs --poses,
            --intrinsics or --fov, and --weights: a depthsplat-gs-* checkpoint).
        poses: --multiview: camera-to-world poses, one per image in order: a TUM trajectory
            (timestamp tx ty tz qx qy qz qw) or a Redwood .log.
        near: --multiview: nearest depth of the plane sweep, in pose units.
        far: --multiview: farthest depth of the plane sweep, in pose units.
        short_side: --multiview: resize the views so their short side is this before the centre crop.
        crop: --multiview: resize to cover and centre-crop to exactly H x W (multiples of 16) instead.
        min_opacity: --multiview: drop Gaussians below this opacity.
        depth: metric depth map of the image: 16-bit PNG (divided by --depth-scale, default millimetres),
            .npy or float TIFF (metres).
        depth_model: depth network instead of --depth: a transformers model folder or hub id,
            'transformers:PATH' or 'unidepth[:SOURCE]' (needs the UniDepth package).
        depth_scale: raw depth units per metre (default 1000 for 16-bit files, 1 for float files).
        intrinsics: pinhole intrinsics of the image in pixels.
        fov: horizontal field of view in degrees when --intrinsics is not given (default 60, with a warning).
        weights: Flash3D checkpoint (.pth / .safetensors / folder / hub id); without it the no-network
            unproject baseline (one Gaussian per pixel) is used. With --multiview: the DepthSplat checkpoint.
        device: auto (CUDA when available), cpu, cuda or cuda:N.
        dtype: Flash3D compute dtype: float32, bfloat16 (autocast; heads, quaternions and geometry stay fp32;
            slow on CPUs without AVX512-BF16), float16 (GPU only) or auto (bf16/fp16 on a GPU, fp32 on the CPU).
        out: output folder (replaced as a whole).
        overwrite: replace --out even when it holds files forward3d did not write.
        max_gaussians: unproject baseline: cap on the number of Gaussians (every n-th pixel above it;
            0 = no cap).
        view_size: long side in pixels of the six preview renders (views/*.png).
        orbit_frames: frames of the orbit video (0 = no video).
        orbit_size: long side in pixels of the orbit video frames (small, so a CPU run takes seconds;
            full quality: 1024 with --orbit-frames 48).
        video: orbit video format (none: no video).
        fps: orbit video frame rate.
        background: background colour R G B in [0, 1] of the renders.
    """

    image: str | None = option(None, positional=True)
    multiview: list[str] | None = option(None, metavar="IMG")
    poses: str | None = option(None, metavar="FILE")
    near: float = 0.5
    far: float = 100.0
    short_side: int = option(256, metavar="PX")
    crop: tuple[int, int] | None = option(None, metavar=("H", "W"))
    min_opacity: float = 0.0
    depth: str | None = option(None, metavar="FILE")
    depth_model: str | None = option(None, metavar="MODEL")
    depth_scale: float | None = option(None, metavar="S")
    intrinsics: tuple[float, float, float, float] | None = option(None, metavar=("FX", "FY", "CX", "CY"))
    fov: float | None = option(None, metavar="DEG")
    weights: str | None = option(None, metavar="CKPT")
    device: str = "auto"
    dtype: Literal["float32", "bfloat16", "float16", "auto"] = "float32"
    out: str = option("forward3d-splat", metavar="DIR")
    overwrite: bool = False
    max_gaussians: int = DEFAULT_MAX_GAUSSIANS
    view_size: int = option(512, metavar="PX")
    orbit_frames: int = 24
    orbit_size: int = option(320, metavar="PX")
    video: Literal["mp4", "gif", "none"] = "mp4"
    fps: int = 24
    background: tuple[float, float, float] = option((0.0, 0.0, 0.0), metavar=("R", "G", "B"))

    def __post_init__(self) -> None:
        if self.multiview is not None:
            if self.image:
                raise ValueError("splat: give either IMAGE or --multiview, not both")
            if len(self.multiview) < 2:
                raise ValueError(f"splat --multiview: needs at least 2 images, found {len(self.multiview)}")
            if not self.poses:
                raise ValueError("splat --multiview: --poses POSES.txt (TUM) or POSES.log (Redwood) is required")
            if not self.weights:
                raise ValueError("splat --multiview: --weights is required (a depthsplat-gs-* checkpoint, "
                                 ".pth/.safetensors/folder/hub id)")
            if not 0 < self.near < self.far:
                raise ValueError(f"--near/--far: expected 0 < near < far, found {self.near}, {self.far}")
        if self.depth is not None and self.depth_model is not None:
            raise ValueError("--depth and --depth-model: give one of them")
        if self.intrinsics is not None and self.fov is not None:
            raise ValueError("--intrinsics and --fov: give one of them")
        if self.fov is not None and not 0 < self.fov < 180:
            raise ValueError(f"--fov: expected a value in (0, 180) degrees, found {self.fov}")
        for name in ("view_size", "orbit_size", "fps"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')}: expected >= 1, found {getattr(self, name)}")
        for name in ("orbit_frames", "max_gaussians"):
            if getattr(self, name) < 0:
                raise ValueError(f"--{name.replace('_', '-')}: expected >= 0, found {getattr(self, name)}")
        if not all(0.0 <= c <= 1.0 for c in self.background):
            raise ValueError(f"--background: expected R G B in [0, 1], found {self.background}")
"""The unproject baseline's default cap: one Gaussian per pixel of a 12 MP photo would need ~3 GB and
seconds per rendered view; above the cap every ``stride``-th pixel is used (logged)."""


def unproject_stride(num_pixels: int, max_gaussians: int | None) -> int:
    """Smallest pixel stride that keeps ``num_pixels / stride^2`` at or below ``max_gaussians``."""
    if max_gaussians is None or max_gaussians <= 0 or num_pixels <= max_gaussians:
        return 1
    stride = max(1, math.ceil(math.sqrt(num_pixels / max_gaussians)))
    while math.ceil(num_pixels / stride ** 2) > max_gaussians:
        stride += 1
    return stride


def check_camera_inputs(what: str, image: np.ndarray, K: np.ndarray, depth: np.ndarray | None = None) -> np.ndarray:
    """Check a photo's ``K`` (finite ``[3, 3]``, positive focal lengths) and that ``depth`` (optional)
    has the image's size; returns ``K`` as float64. Raises ``ValueError`` naming ``what``."""
    h, w = np.shape(image)[:2]
    Karr = np.asarray(K, np.float64)
    if Karr.shape != (3, 3) or not np.isfinite(Karr).all() or Karr[0, 0] <= 0 or Karr[1, 1] <= 0:
        raise ValueError(f"{what}: expected a finite [3, 3] K with positive focal lengths, found {Karr.tolist()}")
    if depth is not None and np.shape(depth) != (h, w):
        raise ValueError(f"{what}: depth size {np.shape(depth)[1]}x{np.shape(depth)[0]} differs from the image "
                         f"size {w}x{h}")
    return Karr


def predict_flash3d(model, image, K, depth=None, depth_model=None):
    """A photo -> Flash3D outputs: preprocessing (resize, pad, depth), then ``model(...)``.

    Args:
        model: a :class:`~forward3d.models.flash3d.Flash3D`.
        image: ``[H, W, 3]`` uint8 (any size; resized to the network size) or ``[3, H, W]`` float.
        K: ``[3, 3]`` intrinsics of ``image`` in pixels.
        depth: optional ``[H, W]`` metric z-depth of ``image`` (holes filled); without it
            ``depth_model`` (a :class:`~forward3d.models.depth.DepthEstimator`) estimates it on the
            padded network input.

    Returns:
        ``(Flash3DOutput, Flash3DInput)``; ``out.gaussians(0)`` are Gaussians in the camera frame of
        ``image`` (OpenCV axes, metres).
    """
    from forward3d.models.flash3d.preprocess import prepare_input

    c = model.config
    device = next(model.parameters()).device
    inp = prepare_input(image, K, c.height, c.width, c.pad_border, depth)
    if inp.depth is None:
        if depth_model is None:
            raise ValueError("Flash3D needs metric depth: pass depth=... or a depth_model (see forward3d.models.depth)")
        d = depth_model.predict(inp.image.to(device), inp.K_src.to(device))
        inp.depth = d.reshape(1, 1, *inp.image.shape[-2:]).float()
    return model(inp.image.to(device), inp.depth.to(device), inp.K_src.to(device)), inp


def splat_image(image: np.ndarray, K: np.ndarray, depth: np.ndarray | None = None, model=None,
                depth_model=None, max_gaussians: int | None = DEFAULT_MAX_GAUSSIANS) -> SplatResult:
    """Single image -> Gaussians. With ``model`` (a :class:`~forward3d.models.flash3d.Flash3D`)
    runs Flash3D, else the unproject baseline. Depth comes from ``depth`` or ``depth_model``.
    ``max_gaussians`` caps the unproject baseline (pixel stride chosen to fit; ``None`` = no cap)."""
    h, w = image.shape[:2]
    check_camera_inputs("splat", image, K, depth)
    if depth is None and depth_model is None:
        raise ValueError("splat needs depth: give a depth map (--depth) or a depth model (--depth-model)")
    if model is not None:
        with torch.inference_mode():
            out, inp = predict_flash3d(model, image, K, depth, depth_model)
        g = out.gaussians(0)
        c = model.config
        d = out.depth[0, 0, c.pad_border:c.pad_border + c.height, c.pad_border:c.pad_border + c.width].cpu().numpy()
        return SplatResult(g.to("cpu"), inp.K_tgt[0].double().numpy(), c.width, c.height, d, "flash3d",
                           {"num_gaussians": len(g), "padded_size": list(c.padded_size)})
    if depth is None:
        img = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255.0
        with torch.inference_mode():
            depth = depth_model.predict(img, torch.as_tensor(K, dtype=torch.float32)[None])[0].cpu().numpy()
        if not getattr(depth_model, "metric", True):
            raise ValueError(f"depth model '{depth_model.name}' predicts relative depth: give a metric model, "
                             "or a sensor depth map to scale it")
    stride = unproject_stride(h * w, max_gaussians)
    if stride > 1:
        logger.info("unproject: %dx%d = %d pixels is over the %d Gaussian cap: using every %d-th pixel",
                    w, h, h * w, max_gaussians, stride)
    g = unproject_gaussians(image, depth, K, stride=stride)
    return SplatResult(g, np.asarray(K, np.float64), w, h, np.asarray(depth, np.float32), "unproject",
                       {"num_gaussians": len(g), "stride": stride})


def render_views(result: SplatResult, c2w: np.ndarray, background: float | tuple[float, float, float] = 0.0,
                 max_side: int | None = None, progress: bool = False, desc: str = "render") -> np.ndarray:
    """Render ``[V, 4, 4]`` camera poses (source camera = identity) -> ``[V, H, W, 3]`` uint8.

    ``max_side``: render at most this many pixels along the long side (K scaled; previews of a
    12 MP photo need not be 12 MP). ``progress``: a progress bar over the views."""
    from forward3d.geometry.camera import scale_K
    from forward3d.progress import progress_bar
    from forward3d.render import Cameras, rasterize

    c2w = np.asarray(c2w, np.float64).reshape(-1, 4, 4)
    K, w, h = np.asarray(result.K, np.float64).copy(), result.width, result.height
    if max_side is not None and max(w, h) > max_side:
        s = max_side / max(w, h)
        w, h = max(1, round(w * s)), max(1, round(h * s))
        K = scale_K(K, w / result.width, h / result.height)
    bg = torch.as_tensor(np.broadcast_to(np.asarray(background, np.float32), (3,)).copy())
    frames = []
    with progress_bar(len(c2w), desc, unit="view", enabled=progress) as bar:
        for i in range(len(c2w)):  # one camera at a time keeps memory bounded
            cams = Cameras.from_c2w(torch.as_tensor(c2w[i], dtype=torch.float32),
                                    torch.as_tensor(K, dtype=torch.float32), w, h)
            with torch.no_grad():
                out = rasterize(result.gaussians, cams, background=bg)
            frames.append((out.colors[0].clamp(0, 1) * 255 + 0.5).to(torch.uint8).numpy())
            bar.update(1)
    return np.stack(frames)


def default_novel_views(depth: np.ndarray) -> dict[str, np.ndarray]:
    """Small camera moves for previews, scaled by the scene's median depth."""
    from forward3d.viz.paths import novel_view_c2w

    valid = depth[np.isfinite(depth) & (depth > 0)]
    m = float(np.median(valid)) if valid.size else 1.0
    step = 0.1 * m
    eye = np.eye(4)
    return {
        "source": eye,
        "forward": novel_view_c2w(eye, forward=step),
        "left": novel_view_c2w(eye, right=-step),
        "right": novel_view_c2w(eye, right=step),
        "up": novel_view_c2w(eye, down=-step),
        "turn_left": novel_view_c2w(eye, yaw_deg=-8.0),
    }


def save_outputs(result: SplatResult, out_dir: str | Path, orbit_frames: int = 24, video: str = "mp4",
                 max_side: int | None = 512, orbit_size: int | None = 320, fps: int = 24,
                 background: float | tuple[float, float, float] = 0.0, progress: bool = False) -> dict:
    """Write scene.ply, scene.splat, depth.png, views/*.png and an orbit video; returns the paths.
    Views are rendered at most ``max_side`` pixels along the long side, the orbit at ``orbit_size``."""
    from forward3d.io.gaussians import write_gaussians_ply, write_splat
    from forward3d.io.video import write_png, write_video
    from forward3d.viz.paths import orbit_around_camera

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"ply": out / "scene.ply", "splat": out / "scene.splat", "depth": out / "depth.png"}
    write_gaussians_ply(paths["ply"], result.gaussians)
    write_splat(paths["splat"], result.gaussians)
    write_png(paths["depth"], colorize_depth(result.depth))
    views = default_novel_views(result.depth)
    imgs = render_views(result, np.stack(list(views.values())), background, max_side=max_side, progress=progress,
                        desc="views")
    for name, img in zip(views, imgs):
        p = out / "views" / f"{name}.png"
        p.parent.mkdir(exist_ok=True)
        write_png(p, img)
        paths[f"view_{name}"] = p
    if orbit_frames > 0 and video != "none":
        valid = result.depth[np.isfinite(result.depth) & (result.depth > 0)]
        m = float(np.median(valid)) if valid.size else 1.0
        frames = render_views(result, orbit_around_camera(m, n=orbit_frames, radius_fraction=0.08), background,
                              max_side=orbit_size, progress=progress, desc="orbit")
        paths["video"] = write_video(out / f"orbit.{video}", frames, fps=fps)
    return paths


def camera_K(cfg: SplatConfig, w: int, h: int) -> np.ndarray:
    """``[3, 3]`` intrinsics of a ``w`` x ``h`` image from ``cfg.intrinsics``, else ``cfg.fov`` (default 60
    degrees, with a warning)."""
    from forward3d.types import Intrinsics

    if cfg.intrinsics:
        fx, fy, cx, cy = cfg.intrinsics
        return np.array([[fx, 0, cx], [0, fy, cy], [0, 0, 1.0]])
    if cfg.fov is None:
        logger.warning("no --intrinsics or --fov given: assuming a 60 degree horizontal field of view")
    return Intrinsics.from_fov(w, h, 60.0 if cfg.fov is None else cfg.fov).K


def splat_image_file(cfg: SplatConfig, progress: bool = True) -> tuple[SplatResult, dict[str, Path]]:
    """What ``forward3d splat IMAGE`` does: read ``cfg.image`` (+ ``cfg.depth`` or ``cfg.depth_model``),
    run Flash3D (``cfg.weights``) or the unproject baseline, and write ``cfg.out`` as a whole (scene.ply,
    scene.splat, depth.png, views/, the orbit video, summary.json). Returns the result and the written
    paths (in ``cfg.out``)."""
    import json

    from forward3d.device import resolve_device
    from forward3d.io.atomic import staged_folder
    from forward3d.models.depth import make_depth_estimator, read_image_and_depth

    if not cfg.image:
        raise ValueError("splat: give an IMAGE, or --multiview IMG1 IMG2 ... --poses ... for posed views")
    device = str(resolve_device(cfg.device))
    image, depth = read_image_and_depth(cfg.image, cfg.depth, cfg.depth_scale)
    h, w = image.shape[:2]
    K = camera_K(cfg, w, h)
    depth_model = make_depth_estimator(cfg.depth_model, device=device) if cfg.depth_model else None
    if depth is None and depth_model is None:
        raise ValueError("splat needs depth: pass --depth DEPTH.png or --depth-model MODEL")
    model = None
    if cfg.weights:
        from forward3d.models.flash3d import Flash3D

        # inference only: conv+BN folded and the fast decoders (same outputs to float rounding, >= 1.3x less CPU);
        # the original decoder bodies are dropped (one copy of their weights in memory)
        model = Flash3D.from_pretrained(cfg.weights, device=device, dtype=cfg.dtype).fuse_for_inference(
            keep_reference=False)
    else:
        logger.warning("no --weights: using the no-network unproject baseline (one Gaussian per pixel)")
    result = splat_image(image, K, depth=depth, model=model, depth_model=depth_model,
                         max_gaussians=cfg.max_gaussians or None)
    with staged_folder(cfg.out, cfg.overwrite) as stage:  # an error leaves --out as it was, never half-written
        paths = save_outputs(result, stage, orbit_frames=cfg.orbit_frames, video=cfg.video, max_side=cfg.view_size,
                             orbit_size=cfg.orbit_size, fps=cfg.fps, background=cfg.background, progress=progress)
        paths = {k: Path(cfg.out) / Path(v).relative_to(stage) for k, v in paths.items()}
        summary = {"method": result.method, "image": str(cfg.image), "num_gaussians": len(result.gaussians),
                   "K": result.K.tolist(), "size": [result.width, result.height], **result.info,
                   "files": {k: str(v) for k, v in paths.items()}}
        with open(stage / "summary.json", "w", encoding="utf-8") as f:
            json.dump(summary, f, indent=2)
    return result, paths
