"""PNG previews without a GUI or matplotlib: point clouds / meshes rendered with a numpy z-buffer and
trajectory plots drawn with PIL.

- :func:`render_points`: splat coloured points into one pinhole camera (nearest wins), optional
  back-face culling with normals (a closed room seen from outside shows its inside: "dollhouse").
- :func:`preview_cameras`: a few viewpoints around and above a cloud.
- :func:`trajectory_plot`: estimated vs ground-truth camera centres, top and side views.
- :func:`write_previews`: all of the above as PNGs in a folder.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
import numpy as np
from PIL import Image, ImageDraw

from forward3d.io.atomic import atomic_path
from forward3d.types import Mesh, PointCloud

__all__ = ["render_points", "preview_cameras", "render_previews", "trajectory_plot", "write_previews",
           "cloud_of"]

_BG = (245, 245, 245)
_EST = (220, 60, 40)
_GT = (40, 90, 200)


def cloud_of(geometry: PointCloud | Mesh, max_points: int = 400_000, seed: int = 0) -> PointCloud:
    """A :class:`PointCloud` of a cloud or of a mesh's vertices, randomly thinned to ``max_points``."""
    if isinstance(geometry, Mesh):
        pc = PointCloud(geometry.vertices, geometry.vertex_colors, geometry.vertex_normals)
    elif isinstance(geometry, PointCloud):
        pc = geometry
    else:
        raise TypeError(f"preview: expected a PointCloud or Mesh, found {type(geometry).__name__}")
    if len(pc) > max_points:
        idx = np.random.default_rng(seed).choice(len(pc), max_points, replace=False)
        pc = pc.subset(np.sort(idx))
    return pc


def _shade(pc: PointCloud) -> np.ndarray:
    """``[N, 3]`` uint8 colours: the cloud's own, else a normal-based grey, else a height ramp."""
    if pc.colors is not None:
        return pc.colors
    if pc.normals is not None:
        light = np.array([0.3, -0.8, -0.5]) / np.linalg.norm([0.3, -0.8, -0.5])
        g = 0.35 + 0.6 * np.abs(pc.normals @ light)
        return (np.clip(g, 0, 1)[:, None] * np.array([230, 230, 230])).astype(np.uint8)
    y = pc.points[:, 1]
    t = (y - y.min()) / max(float(np.ptp(y)), 1e-9)
    return (np.stack([t, 0.5 + 0.0 * t, 1 - t], 1) * 255).astype(np.uint8)


def render_points(pc: PointCloud, c2w: np.ndarray, K: np.ndarray, width: int, height: int,
                  point_size: int = 2, cull_backfaces: bool = True,
                  background: tuple[int, int, int] = _BG) -> np.ndarray:
    """Render a point cloud into a pinhole camera with a z-buffer.

    Args:
        pc: points ``[N, 3]`` (colours and normals optional).
        c2w: ``[4, 4]`` camera-to-world (OpenCV axes); K: ``[3, 3]`` (pixel centres at +0.5).
        point_size: splat side in pixels.
        cull_backfaces: drop points whose normal faces away from the camera.

    Returns:
        ``[H, W, 3]`` uint8 image.
    """
    img = np.empty((height, width, 3), np.uint8)
    img[:] = background
    if len(pc) == 0:
        return img
    w2c = np.linalg.inv(c2w)
    pts = pc.points.astype(np.float64) @ w2c[:3, :3].T + w2c[:3, 3]
    colors = _shade(pc)
    keep = pts[:, 2] > 1e-3
    if cull_backfaces and pc.normals is not None:
        view = pc.points.astype(np.float64) - c2w[:3, 3]
        keep &= (np.einsum("ij,ij->i", pc.normals.astype(np.float64), view) < 0) | (np.abs(pc.normals).sum(1) == 0)
    pts, colors = pts[keep], colors[keep]
    if len(pts) == 0:
        return img
    u = K[0, 0] * pts[:, 0] / pts[:, 2] + K[0, 2]
    v = K[1, 1] * pts[:, 1] / pts[:, 2] + K[1, 2]
    ui, vi, z = np.floor(u).astype(np.int64), np.floor(v).astype(np.int64), pts[:, 2]
    depth = np.full(height * width, np.inf)
    index = np.full(height * width, -1, np.int64)
    order = np.argsort(-z)  # far first; later (nearer) writes win
    r = max(1, int(point_size))
    for dy in range(r):
        for dx in range(r):
            x, y = ui + dx - r // 2, vi + dy - r // 2
            ok = (x >= 0) & (x < width) & (y >= 0) & (y < height)
            o = order[ok[order]]
            flat = y[o] * width + x[o]
            # fancy assignment keeps the last write: nearest point per pixel since o is far-to-near
            closer = z[o] < depth[flat]
            o, flat = o[closer], flat[closer]
            depth[flat] = z[o]
            index[flat] = o
    hit = index >= 0
    img.reshape(-1, 3)[hit] = colors[index[hit]]
    return img


def _look_at(eye: np.ndarray, target: np.ndarray, up: np.ndarray) -> np.ndarray:
    z = target - eye
    z = z / max(np.linalg.norm(z), 1e-12)
    x = np.cross(z, up)
    if np.linalg.norm(x) < 1e-6:
        x = np.cross(z, np.array([1.0, 0.0, 0.0]) if abs(z[0]) < 0.9 else np.array([0.0, 0.0, 1.0]))
    x = x / np.linalg.norm(x)
    y = np.cross(z, x)
    c2w = np.eye(4)
    c2w[:3, 0], c2w[:3, 1], c2w[:3, 2], c2w[:3, 3] = x, y, z, eye
    return c2w


def preview_cameras(pc: PointCloud, num_views: int = 4, width: int = 480, height: int = 360,
                    up: np.ndarray | None = None, fov_deg: float = 60.0) -> list[tuple[np.ndarray, np.ndarray]]:
    """``num_views`` ``(c2w, K)`` pairs: one from straight above, the rest around and above the cloud.

    ``up`` is the world up vector (default: the axis of least spread of the points).
    """
    pts = pc.points.astype(np.float64)
    if len(pts) == 0:
        pts = np.zeros((1, 3))
    lo, hi = np.percentile(pts, 1, axis=0), np.percentile(pts, 99, axis=0)
    centre = 0.5 * (lo + hi)
    if up is None:
        spread = hi - lo
        up = np.zeros(3)
        up[int(np.argmin(spread))] = 1.0  # sign unknown: pass ``up`` when it matters
    up = np.asarray(up, np.float64) / np.linalg.norm(up)
    radius = 0.5 * float(np.linalg.norm(hi - lo)) + 1e-6
    f = 0.5 * width / math.tan(math.radians(fov_deg) / 2)
    K = np.array([[f, 0, width / 2], [0, f, height / 2], [0, 0, 1.0]])
    dist = radius / math.sin(math.radians(fov_deg) / 2) * 0.95
    a = np.cross(up, [1.0, 0, 0] if abs(up[0]) < 0.9 else [0, 0, 1.0])
    a /= np.linalg.norm(a)
    b = np.cross(up, a)
    cams = [(_look_at(centre + up * dist, centre, a), K)]
    for k in range(max(0, num_views - 1)):
        ang = 2 * math.pi * k / max(1, num_views - 1) + math.pi / 4
        d = math.cos(ang) * a + math.sin(ang) * b
        eye = centre + dist * (0.75 * d + 0.66 * up)
        cams.append((_look_at(eye, centre, up), K))
    return cams


def render_previews(geometry: PointCloud | Mesh, num_views: int = 4, width: int = 480, height: int = 360,
                    up: np.ndarray | None = None) -> list[np.ndarray]:
    """Images ``[H, W, 3]`` uint8 of ``geometry`` from :func:`preview_cameras`."""
    pc = cloud_of(geometry)
    size = max(2, int(round(width / 320)) + 1)
    return [render_points(pc, c2w, K, width, height, point_size=size)
            for c2w, K in preview_cameras(pc, num_views, width, height, up)]


# --------------------------------------------------------------------------------------------------
# Trajectory plot
# --------------------------------------------------------------------------------------------------


def _plot_axes(centres: list[np.ndarray]) -> np.ndarray:
    """``[3, 3]`` rows = plot axes (PCA of all centres): top view uses rows 0-1, side view rows 0-2."""
    allc = np.concatenate([c for c in centres if len(c)], 0)
    if len(allc) < 3:
        return np.eye(3)
    _, _, vt = np.linalg.svd(allc - allc.mean(0), full_matrices=False)
    if np.linalg.det(vt) < 0:
        vt[2] *= -1
    return vt


def trajectory_plot(est_c2w: np.ndarray, gt_c2w: np.ndarray | None = None, width: int = 960, height: int = 480,
                    title: str = "") -> np.ndarray:
    """Top and side views of estimated (red) and ground-truth (blue) camera centres.

    Args:
        est_c2w: ``[N, 4, 4]`` estimated poses (align them to the ground truth first, e.g. with
            ``forward3d.eval.ate(...)["aligned_c2w"]``).
        gt_c2w: optional ``[M, 4, 4]`` ground truth.

    The plot axes are the principal axes of the camera centres (top view: the two largest, side view:
    largest and smallest), with equal scale and a metric scale bar.

    Returns:
        ``[height, width, 3]`` uint8 image.
    """
    est = np.asarray(est_c2w, np.float64)[:, :3, 3]
    gt = None if gt_c2w is None else np.asarray(gt_c2w, np.float64)[:, :3, 3]
    series = [c for c in (gt, est) if c is not None]
    axes = _plot_axes(series)
    mean = np.concatenate(series, 0).mean(0)
    img = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    margin, header = 30, 40
    panel_w = (width - 3 * margin) // 2
    panel_h = height - header - 2 * margin
    views = [("top view", (0, 1)), ("side view", (0, 2))]
    proj_all = [(c - mean) @ axes.T for c in series]
    ext = max(float(np.abs(p[:, :3]).max()) for p in proj_all) if proj_all else 1.0
    ext = max(ext, 1e-3) * 1.1
    scale = min(panel_w, panel_h) / (2 * ext)
    draw.text((margin, 10), title or "camera trajectory", fill=(0, 0, 0))
    draw.text((width - 260, 10), "estimated", fill=_EST)
    if gt is not None:
        draw.text((width - 160, 10), "ground truth", fill=_GT)
    for k, (name, (i, j)) in enumerate(views):
        x0 = margin + k * (panel_w + margin)
        y0 = header + margin
        cx, cy = x0 + panel_w / 2, y0 + panel_h / 2
        draw.rectangle([x0, y0, x0 + panel_w, y0 + panel_h], outline=(180, 180, 180))
        draw.text((x0 + 4, y0 + 4), name, fill=(90, 90, 90))
        for c, colour in ((gt, _GT), (est, _EST)):
            if c is None or len(c) == 0:
                continue
            p = (c - mean) @ axes.T
            xy = [(cx + scale * a, cy - scale * b) for a, b in zip(p[:, i], p[:, j])]
            if len(xy) > 1:
                draw.line(xy, fill=colour, width=2)
            sx, sy = xy[0]
            draw.ellipse([sx - 4, sy - 4, sx + 4, sy + 4], outline=colour, width=2)
        # scale bar: a round length about a fifth of the panel
        target = panel_w / 5 / scale
        bar = 10 ** math.floor(math.log10(target))
        for m in (5, 2, 1):
            if m * bar <= target:
                bar *= m
                break
        bx, by = x0 + 10, y0 + panel_h - 14
        draw.line([(bx, by), (bx + bar * scale, by)], fill=(0, 0, 0), width=2)
        draw.text((bx + bar * scale + 6, by - 6), f"{bar:g} m", fill=(0, 0, 0))
    return np.asarray(img)


def _save_png(path: Path, image: np.ndarray) -> Path:
    with atomic_path(path) as tmp:
        Image.fromarray(image).save(tmp, format="PNG")
    return path


def write_previews(out_dir: str | os.PathLike, geometry: PointCloud | Mesh | None = None,
                   est_c2w: np.ndarray | None = None, gt_c2w: np.ndarray | None = None,
                   num_views: int = 4, size: tuple[int, int] = (480, 360), up: np.ndarray | None = None,
                   title: str = "") -> list[Path]:
    """Write ``view_<k>.png`` renders of ``geometry`` and ``trajectory.png`` into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    if geometry is not None:
        for k, im in enumerate(render_previews(geometry, num_views, size[0], size[1], up)):
            written.append(_save_png(out / f"view_{k}.png", im))
    if est_c2w is not None and len(est_c2w):
        written.append(_save_png(out / "trajectory.png", trajectory_plot(est_c2w, gt_c2w, title=title)))
    return written

