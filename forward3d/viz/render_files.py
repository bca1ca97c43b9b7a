"""Render a 3D Gaussian scene file to images and a video along an orbit or along cameras from a file
(``forward3d render`` is :func:`render_scene_file` with a :class:`RenderConfig`)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from forward3d.config import option

__all__ = ["RenderConfig", "render_scene_file", "scene_cameras"]

log = logging.getLogger(__name__)


@dataclass
class RenderConfig:
    """Options of ``forward3d render``.

    Attributes:
        scene: 3DGS .ply or .splat file.
        cameras: 'orbit', a COLMAP text model folder, or a nerfstudio transforms.json.
        out: output folder (replaced as a whole).
        width: image width (orbit default 640; file cameras: their own).
        height: image height (orbit default 480; file cameras: their own).
        frames: orbit: number of frames.
        fov: orbit: horizontal field of view in degrees.
        radius: orbit: radius in scene units (default: twice the 90th-percentile extent of the scene).
        elevation: orbit: elevation in degrees.
        up: orbit: world up vector (OpenCV scenes: 0 -1 0).
        background: background colour R G B in [0, 1].
        sh_degree: spherical-harmonics degree to render (default: the scene's).
        video: video format of the frames (none: PNGs only).
        png: write one PNG per view.
        fps: video frame rate.
        device: auto (CUDA when available), cpu, cuda or cuda:N.
        overwrite: replace --out even when it holds files forward3d did not write.
    """

    scene: str = option("", positional=True)
    cameras: str = option("orbit", metavar="SOURCE")
    out: str = option("forward3d-render", metavar="DIR")
    width: int | None = None
    height: int | None = None
    frames: int = 60
    fov: float = option(60.0, metavar="DEG")
    radius: float | None = None
    elevation: float = option(20.0, metavar="DEG")
    up: tuple[float, float, float] = option((0.0, -1.0, 0.0), metavar=("X", "Y", "Z"))
    background: tuple[float, float, float] = option((0.0, 0.0, 0.0), metavar=("R", "G", "B"))
    sh_degree: int | None = None
    video: Literal["mp4", "gif", "none"] = "mp4"
    png: bool = True
    fps: int = 24
    device: str = "auto"
    overwrite: bool = False

    def __post_init__(self) -> None:
        if self.frames < 1:
            raise ValueError(f"--frames: expected >= 1, found {self.frames}")
        if not 0 < self.fov < 180:
            raise ValueError(f"--fov: expected a value in (0, 180) degrees, found {self.fov}")
        for name in ("width", "height"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise ValueError(f"--{name}: expected >= 1, found {v}")


def scene_cameras(cfg: RenderConfig, means: np.ndarray) -> tuple[np.ndarray, np.ndarray, int, int, list[str]]:
    """``(c2w [N, 4, 4], K [N, 3, 3], width, height, names)`` of the cameras ``cfg.cameras`` names."""
    from forward3d.types import Intrinsics
    from forward3d.viz.paths import orbit_c2w

    if cfg.cameras == "orbit":
        w, h = cfg.width or 640, cfg.height or 480
        center = np.median(means, 0)
        extent = np.percentile(np.linalg.norm(means - center, axis=1), 90) if len(means) else 1.0
        radius = cfg.radius or max(2.0 * extent, 1e-3)
        c2w = orbit_c2w(center, radius, cfg.frames, cfg.elevation, np.asarray(cfg.up))
        K = np.tile(Intrinsics.from_fov(w, h, cfg.fov).K, (len(c2w), 1, 1))
        return c2w, K, w, h, [f"{i:05d}" for i in range(len(c2w))]
    p = Path(cfg.cameras)
    if p.is_dir():
        from forward3d.io.colmap import read_colmap_text

        cams = read_colmap_text(p)
    elif p.suffix == ".json":
        from forward3d.io.nerfstudio import read_transforms_json

        cams = read_transforms_json(p)
    else:
        raise ValueError(f"--cameras {cfg.cameras}: expected 'orbit', a COLMAP text folder or a transforms.json")
    sizes = np.unique(cams.image_sizes, axis=0)
    if len(sizes) != 1:
        raise ValueError(f"--cameras {cfg.cameras}: cameras of different sizes {sizes.tolist()} are not supported")
    w0, h0 = (int(v) for v in sizes[0])
    w, h = cfg.width or w0, cfg.height or h0
    K = np.stack([Intrinsics.from_K(k, w0, h0).scaled(w, h).K for k in cams.K])
    return cams.c2w, K, w, h, [Path(n).stem for n in cams.names]


def render_scene_file(cfg: RenderConfig, progress: bool = True) -> dict[str, Path]:
    """Render ``cfg.scene`` from every camera into ``cfg.out`` (PNGs and/or a video); returns the paths."""
    import torch

    from forward3d.device import resolve_device
    from forward3d.io.atomic import check_output_folder, staged_folder
    from forward3d.io.gaussians import read_gaussians
    from forward3d.io.video import write_png, write_video
    from forward3d.progress import progress_bar
    from forward3d.render import Cameras, rasterize

    if not cfg.scene:
        raise ValueError("render: expected a scene file (.ply / .splat)")
    out = check_output_folder(cfg.out, cfg.overwrite)
    device = resolve_device(cfg.device)
    gaussians = read_gaussians(cfg.scene).to(device)
    c2w, K, w, h, names = scene_cameras(cfg, gaussians.means.detach().cpu().numpy())
    bg = torch.tensor(cfg.background, dtype=torch.float32, device=device)
    files: dict[str, Path] = {}
    with staged_folder(out, cfg.overwrite) as stage:
        frames = []
        bar = progress_bar(len(c2w), "render", unit="view", enabled=progress)
        for i in range(len(c2w)):
            cams = Cameras.from_c2w(torch.as_tensor(c2w[i], dtype=torch.float32),
                                    torch.as_tensor(K[i], dtype=torch.float32), w, h)
            cams = Cameras(cams.w2c.to(device), cams.K.to(device), w, h)
            with torch.no_grad():
                img = rasterize(gaussians, cams, background=bg, sh_degree=cfg.sh_degree).colors[0]
            img = (img.clamp(0, 1) * 255 + 0.5).to(torch.uint8).cpu().numpy()
            if cfg.png:
                write_png(stage / f"{names[i]}.png", img)
            frames.append(img)
            bar.update(1)
        bar.close()
        if cfg.video != "none" and len(frames) > 1:
            files["video"] = out / write_video(stage / f"video.{cfg.video}", frames, fps=cfg.fps).name
        files["views"] = out
    log.info("rendered %d views of %s into %s", len(c2w), cfg.scene, out)
    return files
