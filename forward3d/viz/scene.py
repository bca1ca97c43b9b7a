"""The viewer's scene model: what is shown, independent of viser (numpy only, thread safe).

A :class:`SceneModel` holds cameras (:class:`FrameView`: pose, intrinsics, optional world points
with colours and confidences, an optional thumbnail, the tracking status), a fused point cloud, a
mesh, 3D Gaussians, a ground-truth trajectory, metrics, the run's settings and files to download.

It is filled either at once from a :class:`~forward3d.types.Reconstruction`
(:meth:`SceneModel.from_reconstruction`) or frame by frame (:meth:`SceneModel.add_frame`, what a
live reconstruction feeds it); listeners registered with :meth:`SceneModel.subscribe` hear about
every change, so a viewer can redraw incrementally. Selection for display (the frames up to a
timeline position, a confidence threshold, a point budget) is done here, vectorised, so that it is
tested without a browser and stays interactive for tens of millions of points: each point gets a
fixed random key when it is added, and a budget ``B`` out of ``n`` eligible points keeps those with
``key < B / n`` (the same subset every time, nested as the budget grows, no concatenation of the
full cloud).
"""

from __future__ import annotations

import logging
import math
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

import numpy as np

from forward3d.types import Gaussians, Mesh, PointCloud, Reconstruction

__all__ = ["FrameView", "SceneModel", "Selection", "SceneEvent"]

log = logging.getLogger(__name__)

SceneEvent = Literal["frame", "frame_updated", "poses", "geometry", "info"]
_KEY_SEED = 20240917


@dataclass
class FrameView:
    """One camera of the scene.

    Attributes:
        index: position of the frame in the source sequence.
        name: short identifier (file stem).
        c2w: ``[4, 4]`` float64 camera-to-world (OpenCV axes).
        K: ``[3, 3]`` float64 intrinsics for ``image_size``.
        image_size: ``(width, height)`` in pixels.
        points: optional ``[M, 3]`` float32 WORLD points seen by this frame (valid ones only).
        colors: optional ``[M, 3]`` uint8 colours of ``points``.
        confidence: optional ``[M]`` float32 confidences of ``points`` (larger is better).
        image: optional ``[h, w, 3]`` uint8 thumbnail (any size; the viewer downsizes it).
        image_path: optional image file to read the thumbnail from when ``image`` is None.
        tracking_ok: False when the back-end lost tracking on this frame (drawn in red).
        timestamp: optional time in seconds (matches ground-truth trajectories).
        keys: ``[M]`` float32 fixed random keys of the points (budget subsampling; set by the scene).
    """

    index: int
    name: str
    c2w: np.ndarray
    K: np.ndarray
    image_size: tuple[int, int]
    points: np.ndarray | None = None
    colors: np.ndarray | None = None
    confidence: np.ndarray | None = None
    image: np.ndarray | None = None
    image_path: str | None = None
    tracking_ok: bool = True
    timestamp: float | None = None
    keys: np.ndarray | None = field(default=None, repr=False)

    @property
    def num_points(self) -> int:
        return 0 if self.points is None else len(self.points)

    @property
    def center(self) -> np.ndarray:
        return self.c2w[:3, 3]


@dataclass
class Selection:
    """Points chosen for display, and the counts the GUI reports.

    Attributes:
        points: ``[S, 3]`` float32.
        colors: ``[S, 3]`` uint8, or None when the source has no colours.
        total: points in the chosen frames / cloud before any filtering.
        eligible: points passing the confidence threshold.
    """

    points: np.ndarray
    colors: np.ndarray | None
    total: int
    eligible: int

    @property
    def shown(self) -> int:
        return len(self.points)


def _as_points(name: str, where: str, points: np.ndarray | None, colors: np.ndarray | None,
               confidence: np.ndarray | None) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray | None]:
    """Flatten ``[H, W, 3]`` / ``[N, 3]`` points (+ colours, confidences) and drop invalid ones
    (non-finite, or exactly zero: the "no point" value of point maps)."""
    if points is None:
        if colors is not None or confidence is not None:
            raise ValueError(f"{where}: {name} colours/confidences given without points")
        return None, None, None
    p = np.asarray(points)
    if p.ndim < 2 or p.shape[-1] != 3:
        raise ValueError(f"{where}: expected {name} of shape [N, 3] or [H, W, 3], found {list(p.shape)}")
    lead = p.shape[:-1]
    p = p.reshape(-1, 3)
    c = None
    if colors is not None:
        c = np.asarray(colors)
        if c.shape != (*lead, 3):
            raise ValueError(f"{where}: expected {name} colours of shape {[*lead, 3]}, found {list(c.shape)}")
        if c.dtype != np.uint8:
            if np.issubdtype(c.dtype, np.floating) and (c.size == 0 or np.nanmax(c) <= 1.0):
                c = (np.clip(np.nan_to_num(c), 0, 1) * 255 + 0.5).astype(np.uint8)
            else:
                raise ValueError(f"{where}: expected uint8 (or float in [0, 1]) colours, found {c.dtype}")
        c = c.reshape(-1, 3)
    conf = None
    if confidence is not None:
        conf = np.asarray(confidence, dtype=np.float32)
        if conf.shape != lead:
            raise ValueError(f"{where}: expected {name} confidences of shape {list(lead)}, found {list(conf.shape)}")
        conf = conf.reshape(-1)
    valid = np.isfinite(p).all(-1) & (np.abs(p).sum(-1) > 0)
    if conf is not None:
        valid &= np.isfinite(conf)
    if not valid.all():
        p = p[valid]
        c = None if c is None else c[valid]
        conf = None if conf is None else conf[valid]
    return (np.ascontiguousarray(p, dtype=np.float32), None if c is None else np.ascontiguousarray(c),
            None if conf is None else np.ascontiguousarray(conf))


def _check_camera(where: str, c2w: np.ndarray, K: np.ndarray, image_size) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
    c2w = np.asarray(c2w, dtype=np.float64)
    K = np.asarray(K, dtype=np.float64)
    if c2w.shape != (4, 4) or not np.isfinite(c2w).all():
        raise ValueError(f"{where}: expected a finite c2w of shape [4, 4], found shape {list(c2w.shape)}")
    if K.shape != (3, 3) or not np.isfinite(K).all():
        raise ValueError(f"{where}: expected a finite K of shape [3, 3], found shape {list(K.shape)}")
    try:
        w, h = (int(v) for v in image_size)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: expected image_size (width, height), found {image_size!r}") from None
    if w <= 0 or h <= 0:
        raise ValueError(f"{where}: expected a positive image size, found {w}x{h}")
    return c2w, K, (w, h)


def _subsample_mask(keys: np.ndarray, eligible: np.ndarray | None, p: float) -> np.ndarray:
    m = keys < p
    return m if eligible is None else m & eligible


class SceneModel:
    """Everything the viewer shows (see the module docstring). All methods are thread safe."""

    def __init__(self, title: str = "", source: str = "") -> None:
        self.title = title
        self.source = source
        self.frames: list[FrameView] = []
        self.cloud: PointCloud | None = None
        self.cloud_confidence: np.ndarray | None = None
        self.mesh: Mesh | None = None
        self.gaussians: Gaussians | None = None
        self.gt_c2w: np.ndarray | None = None
        self.metrics: dict[str, Any] = {}
        self.settings: dict[str, Any] = {}
        self.downloads: dict[str, Path] = {}
        self.notes: list[str] = []
        self._cloud_keys: np.ndarray | None = None
        self._rng = np.random.default_rng(_KEY_SEED)
        self._lock = threading.RLock()
        self._listeners: list[Callable[[SceneEvent, Any], None]] = []

    # -- listeners ---------------------------------------------------------------------------------
    def subscribe(self, listener: Callable[[SceneEvent, Any], None]) -> Callable[[], None]:
        """Call ``listener(event, payload)`` after every change; returns a function that unsubscribes.

        Events: ``"frame"`` (a new :class:`FrameView`), ``"frame_updated"`` (an existing one changed),
        ``"poses"`` (the poses of frames ``0..M-1`` were corrected; payload M),
        ``"geometry"`` (cloud / mesh / Gaussians / GT replaced; payload None), ``"info"`` (metrics,
        settings, downloads). Listeners run on the caller's thread and must not block.
        """
        with self._lock:
            self._listeners.append(listener)

        def unsubscribe() -> None:
            with self._lock:
                if listener in self._listeners:
                    self._listeners.remove(listener)
        return unsubscribe

    def _emit(self, event: SceneEvent, payload: Any = None) -> None:
        with self._lock:
            listeners = list(self._listeners)
        for fn in listeners:
            try:
                fn(event, payload)
            except Exception:  # a broken listener must not break the producer (the reconstruction)
                log.exception("scene listener failed on %s", event)

    def notify(self, event: SceneEvent, payload: Any = None) -> None:
        """Tell the listeners about changes made with ``notify=False`` (a batch of frames: one event)."""
        self._emit(event, payload)

    # -- filling -----------------------------------------------------------------------------------
    def _keys(self, n: int) -> np.ndarray:
        return self._rng.random(n, dtype=np.float32)

    def add_frame(self, index: int, name: str, c2w: np.ndarray, K: np.ndarray, image_size: tuple[int, int], *,
                  points: np.ndarray | None = None, colors: np.ndarray | None = None,
                  confidence: np.ndarray | None = None, image: np.ndarray | None = None,
                  image_path: str | None = None, tracking_ok: bool = True, timestamp: float | None = None,
                  notify: bool = True) -> FrameView:
        """Append one camera (and the world points it saw).

        Args:
            index, name: the frame's position in the source and its name.
            c2w: ``[4, 4]`` camera-to-world; ``K``: ``[3, 3]`` for ``image_size`` ``(width, height)``.
            points: ``[N, 3]`` or ``[H, W, 3]`` WORLD points; invalid (non-finite, all-zero) ones dropped.
            colors: uint8 (or float in [0, 1]) colours shaped like ``points``.
            confidence: confidences shaped like ``points`` without the last axis.
            image: a thumbnail ``[h, w, 3]`` uint8; ``image_path``: read it from there instead, lazily.
            tracking_ok: False when tracking failed on this frame.
            timestamp: seconds, optional.
            notify: emit a ``"frame"`` event.
        """
        where = f"SceneModel.add_frame {name or index}"
        c2w, K, size = _check_camera(where, c2w, K, image_size)
        pts, cols, conf = _as_points("points", where, points, colors, confidence)
        if image is not None:
            image = np.asarray(image)
            if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
                raise ValueError(f"{where}: expected an [h, w, 3] uint8 image, found {list(image.shape)} {image.dtype}")
        with self._lock:
            fv = FrameView(int(index), str(name), c2w, K, size, pts, cols, conf, image, image_path, bool(tracking_ok),
                           None if timestamp is None else float(timestamp),
                           None if pts is None else self._keys(len(pts)))
            self.frames.append(fv)
        if notify:
            self._emit("frame", fv)
        return fv

    def set_tracking(self, position: int, ok: bool) -> None:
        """Mark frame ``position`` (its place in :attr:`frames`) as tracked or lost."""
        with self._lock:
            fv = self.frames[position]
            fv.tracking_ok = bool(ok)
        self._emit("frame_updated", fv)

    def set_poses(self, c2w: np.ndarray, *, move_points: bool = True, notify: bool = True) -> int:
        """Correct the poses of the first ``M`` frames (a loop closure, a global optimisation).

        Args:
            c2w: ``[M, 4, 4]`` camera-to-world of frames ``0..M-1`` (positions in :attr:`frames`);
                ``M`` may be smaller than the number of frames (later frames keep theirs).
            move_points: move each frame's world points rigidly with its camera
                (``new_c2w @ inv(old_c2w)``), as the back-end's corrected map would be.

        Returns:
            the number of frames changed.
        """
        c2w = np.asarray(c2w, dtype=np.float64)
        if c2w.ndim != 3 or c2w.shape[1:] != (4, 4) or not np.isfinite(c2w).all():
            raise ValueError(f"SceneModel.set_poses: expected finite c2w of shape [M, 4, 4], found {list(c2w.shape)}")
        with self._lock:
            m = min(len(c2w), len(self.frames))
            for fv, new in zip(self.frames[:m], c2w[:m]):
                if move_points and fv.points is not None and len(fv.points):
                    delta = new @ np.linalg.inv(fv.c2w)
                    fv.points = (fv.points @ delta[:3, :3].T.astype(np.float32) + delta[:3, 3].astype(np.float32))
                fv.c2w = new.copy()
        if notify and m:
            self._emit("poses", m)
        return m

    def set_geometry(self, *, cloud: PointCloud | None = None, cloud_confidence: np.ndarray | None = None,
                     mesh: Mesh | None = None, gaussians: Gaussians | None = None,
                     gt_c2w: np.ndarray | None = None, notify: bool = True) -> None:
        """Replace the fused cloud (+ its ``[N]`` confidences), mesh, Gaussians and/or GT poses
        (``[M, 4, 4]``, already in the scene's world frame); arguments left None are kept."""
        if cloud is not None and not isinstance(cloud, PointCloud):
            raise TypeError(f"SceneModel.set_geometry: cloud: expected a PointCloud, found {type(cloud).__name__}")
        if mesh is not None and not isinstance(mesh, Mesh):
            raise TypeError(f"SceneModel.set_geometry: mesh: expected a Mesh, found {type(mesh).__name__}")
        if gaussians is not None and not isinstance(gaussians, Gaussians):
            raise TypeError(f"SceneModel.set_geometry: gaussians: expected Gaussians, found {type(gaussians).__name__}")
        with self._lock:
            if cloud is not None:
                pts, cols, conf = _as_points("cloud", "SceneModel.set_geometry", cloud.points, cloud.colors,
                                             cloud_confidence)
                self.cloud = PointCloud(pts, cols)
                self.cloud_confidence = conf
                self._cloud_keys = self._keys(len(pts))
            elif cloud_confidence is not None:
                raise ValueError("SceneModel.set_geometry: cloud_confidence given without cloud")
            if mesh is not None:
                self.mesh = mesh
            if gaussians is not None:
                self.gaussians = gaussians.detach().to("cpu")
            if gt_c2w is not None:
                gt = np.asarray(gt_c2w, dtype=np.float64)
                if gt.ndim != 3 or gt.shape[1:] != (4, 4):
                    raise ValueError(f"SceneModel.set_geometry: expected gt_c2w [M, 4, 4], found {list(gt.shape)}")
                self.gt_c2w = gt
        if notify:
            self._emit("geometry")

    def set_info(self, *, metrics: dict | None = None, settings: dict | None = None,
                 downloads: dict[str, Path] | None = None, notes: list[str] | None = None) -> None:
        """Replace the metrics, the settings, the downloadable files (label -> path) and/or notes."""
        with self._lock:
            if metrics is not None:
                self.metrics = dict(metrics)
            if settings is not None:
                self.settings = dict(settings)
            if downloads is not None:
                self.downloads = {str(k): Path(v) for k, v in downloads.items()}
            if notes is not None:
                self.notes = list(notes)
        self._emit("info")

    @classmethod
    def from_reconstruction(cls, recon: Reconstruction, *, images: list[np.ndarray | None] | None = None,
                            image_paths: list[str | None] | None = None, gt_c2w: np.ndarray | None = None,
                            title: str = "", source: str = "") -> "SceneModel":
        """A scene showing ``recon``: a camera per frame, its point map (when ``recon.point_maps`` is
        set: world points, colours, confidences; the colours double as the thumbnail), the fused cloud,
        the mesh, tracking failures from ``metadata["tracking_failures"]``, and ``metadata`` as settings.

        Args:
            images / image_paths: optional per-frame thumbnails or image files (N entries, None allowed).
            gt_c2w: optional ground-truth poses ``[M, 4, 4]`` already aligned to ``recon``'s world.
        """
        if not isinstance(recon, Reconstruction):
            raise TypeError(f"SceneModel.from_reconstruction: expected a Reconstruction, found {type(recon).__name__}")
        n = len(recon)
        for what, lst in (("images", images), ("image_paths", image_paths)):
            if lst is not None and len(lst) != n:
                raise ValueError(f"SceneModel.from_reconstruction: {len(lst)} {what} for {n} frames")
        scene = cls(title=title, source=source)
        failed = _failed_positions(recon.metadata.get("tracking_failures"), n)
        for i in range(n):
            pts = conf = cols = None
            if recon.point_maps is not None:
                pts = recon.point_maps[i]
                conf = None if recon.confidences is None else recon.confidences[i]
                cols = None if recon.point_map_colors is None else recon.point_map_colors[i]
            thumb = images[i] if images is not None else None
            if thumb is None and image_paths is None and cols is not None:
                thumb = np.asarray(cols)
            scene.add_frame(i, recon.frame_names[i], recon.c2w[i], recon.K[i], recon.image_size, points=pts,
                            colors=cols, confidence=conf, image=thumb,
                            image_path=None if image_paths is None else image_paths[i],
                            tracking_ok=i not in failed, timestamp=float(recon.timestamps[i]), notify=False)
        scene.set_geometry(cloud=recon.points, mesh=recon.mesh, gt_c2w=gt_c2w, notify=False)
        scene.settings = dict(recon.metadata)
        return scene

    # -- queries -----------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.frames)

    @property
    def has_frame_points(self) -> bool:
        return any(f.points is not None and len(f.points) for f in self.frames)

    @property
    def has_confidence(self) -> bool:
        return self.cloud_confidence is not None or any(f.confidence is not None for f in self.frames)

    def c2w(self, upto: int | None = None) -> np.ndarray:
        """``[M, 4, 4]`` poses of frames ``0..upto`` (all when None)."""
        with self._lock:
            frames = self.frames if upto is None else self.frames[: upto + 1]
            return np.stack([f.c2w for f in frames]) if frames else np.zeros((0, 4, 4))

    def timestamps(self) -> np.ndarray | None:
        """``[N]`` frame timestamps, None unless every frame has one."""
        with self._lock:
            ts = [f.timestamp for f in self.frames]
        return None if not ts or any(t is None for t in ts) else np.asarray(ts, np.float64)

    def confidence_range(self) -> tuple[float, float] | None:
        """``(low, high)``: the 1st and 99th percentile of all confidences, None without any."""
        with self._lock:
            parts = [f.confidence for f in self.frames if f.confidence is not None and len(f.confidence)]
            if self.cloud_confidence is not None and len(self.cloud_confidence):
                parts.append(self.cloud_confidence)
        if not parts:
            return None
        sample = np.concatenate([p[:: max(1, len(p) // 20000)] for p in parts])
        lo, hi = np.percentile(sample, [1, 99])
        return float(lo), float(max(hi, lo + 1e-6))

    def select(self, source: Literal["frames", "cloud"] = "frames", *, upto: int | None = None,
               only_current: bool = False, min_confidence: float | None = None,
               budget: int = 2_000_000) -> Selection:
        """The points to draw.

        Args:
            source: ``"frames"`` (the per-frame points of frames ``0..upto``, or only frame ``upto``
                with ``only_current``) or ``"cloud"`` (the fused cloud; ``upto`` ignored).
            min_confidence: keep points whose confidence is at least this (points without
                confidences are kept).
            budget: at most about this many points are returned (a fixed random subset).
        """
        if budget < 0:
            raise ValueError(f"SceneModel.select: expected budget >= 0, found {budget}")
        with self._lock:
            if source == "cloud":
                parts = [] if self.cloud is None else [(self.cloud.points, self.cloud.colors,
                                                        self.cloud_confidence, self._cloud_keys)]
            elif source == "frames":
                n = len(self.frames)
                hi = n - 1 if upto is None else min(max(int(upto), -1), n - 1)
                lo = hi if only_current else 0
                parts = [(f.points, f.colors, f.confidence, f.keys) for f in self.frames[max(lo, 0): hi + 1]
                         if f.points is not None]
            else:
                raise ValueError(f"SceneModel.select: expected source 'frames' or 'cloud', found {source!r}")
        total = sum(len(p[0]) for p in parts)
        masks = []
        eligible = 0
        for pts, _, conf, _ in parts:
            m = None if (min_confidence is None or conf is None) else conf >= min_confidence
            masks.append(m)
            eligible += len(pts) if m is None else int(m.sum())
        p = 1.0 if eligible <= budget else budget / eligible
        out_p, out_c = [], []
        has_colors = bool(parts) and all(c is not None for _, c, _, _ in parts)
        for (pts, cols, _, keys), m in zip(parts, masks):
            if p >= 1.0:
                sel = m
            else:
                sel = _subsample_mask(keys, m, p)
            out_p.append(pts if sel is None else pts[sel])
            if has_colors:
                out_c.append(cols if sel is None else cols[sel])
        points = np.concatenate(out_p) if out_p else np.zeros((0, 3), np.float32)
        colors = (np.concatenate(out_c) if out_c else np.zeros((0, 3), np.uint8)) if has_colors else None
        return Selection(points, colors, total, eligible)

    def select_gaussians(self, budget: int = 1_000_000) -> Gaussians | None:
        """The Gaussians to draw: at most ``budget``, the most opaque first (None without Gaussians)."""
        with self._lock:
            g = self.gaussians
        if g is None or len(g) <= budget:
            return g
        import torch

        order = torch.argsort(g.opacity_logits, descending=True)[:budget]
        return g.subset(order)

    def frustum_positions(self, max_frustums: int, upto: int | None = None) -> list[int]:
        """Positions (in :attr:`frames`) of the cameras to draw: every k-th of frames ``0..upto``,
        ``k = ceil(N / max_frustums)`` over the whole sequence, plus the last one shown, plus every
        frame whose tracking failed."""
        with self._lock:
            n = len(self.frames)
            failed = [i for i, f in enumerate(self.frames) if not f.tracking_ok]
        if n == 0 or max_frustums <= 0:
            return []
        hi = n - 1 if upto is None else min(int(upto), n - 1)
        k = max(1, math.ceil(n / max_frustums))
        keep = set(range(0, hi + 1, k)) | {hi} | {i for i in failed if i <= hi}
        return sorted(keep)

    def sample_points(self, n: int = 200_000) -> np.ndarray:
        """About ``n`` points ``[M, 3]`` of the content: the fused cloud, else the frames' points, else
        the mesh vertices, else the Gaussian centres, else the camera centres (may be empty)."""
        sel = self.select("cloud" if self.cloud is not None and len(self.cloud) else "frames", budget=n)
        pts = sel.points
        if len(pts) == 0 and self.mesh is not None and len(self.mesh.vertices):
            pts = self.mesh.vertices[:: max(1, len(self.mesh.vertices) // n)]
        if len(pts) == 0 and self.gaussians is not None and len(self.gaussians):
            pts = self.gaussians.means.numpy()[:: max(1, len(self.gaussians) // n)]
        if len(pts) == 0:
            pts = self.c2w()[:, :3, 3]
        return np.asarray(pts, np.float32).reshape(-1, 3)

    def bounds(self, sample: int = 200_000) -> tuple[np.ndarray, float]:
        """``(centre [3], radius)`` of the content (2nd-98th percentile box of :meth:`sample_points`)."""
        pts = self.sample_points(sample)
        if len(pts) == 0:
            return np.zeros(3), 1.0
        lo, hi = np.percentile(pts, [2, 98], axis=0)
        return (lo + hi) / 2.0, max(float(np.linalg.norm(hi - lo)) / 2.0, 1e-3)

    def thumbnail(self, position: int, max_side: int = 160) -> np.ndarray | None:
        """Frame ``position``'s thumbnail, at most ``max_side`` pixels wide/high (None without one).

        An ``image_path`` that cannot be read gives None (logged once), never an exception: a missing
        picture must not stop the viewer.
        """
        with self._lock:
            fv = self.frames[position]
        img = fv.image
        if img is None and fv.image_path:
            from forward3d.io.source_base import read_rgb

            try:
                img = read_rgb(Path(fv.image_path))
            except (OSError, ValueError) as exc:
                log.warning("thumbnail of frame %s: %s", fv.name, exc)
                fv.image_path = None
                return None
        if img is None:
            return None
        h, w = img.shape[:2]
        s = max(h, w) / max_side
        if s <= 1.0:
            return np.ascontiguousarray(img)
        from PIL import Image

        size = (max(1, round(w / s)), max(1, round(h / s)))
        return np.asarray(Image.fromarray(np.ascontiguousarray(img)).resize(size, Image.BILINEAR))

    def summary(self) -> dict[str, int]:
        """Counts: frames, frame points, cloud points, mesh vertices/faces, Gaussians, GT poses."""
        with self._lock:
            return {
                "frames": len(self.frames),
                "frame_points": sum(f.num_points for f in self.frames),
                "cloud_points": 0 if self.cloud is None else len(self.cloud),
                "mesh_vertices": 0 if self.mesh is None else len(self.mesh.vertices),
                "mesh_faces": 0 if self.mesh is None else len(self.mesh.faces),
                "gaussians": 0 if self.gaussians is None else len(self.gaussians),
                "gt_poses": 0 if self.gt_c2w is None else len(self.gt_c2w),
                "tracking_failures": sum(not f.tracking_ok for f in self.frames),
            }


def _failed_positions(failures: Any, n: int) -> set[int]:
    """Positions of frames whose tracking failed, from ``metadata["tracking_failures"]`` (a list of
    indices or of ``{"index": i, ...}`` records)."""
    out: set[int] = set()
    for item in failures or []:
        i = item.get("index") if isinstance(item, dict) else item
        if isinstance(i, (int, np.integer)) and 0 <= int(i) < n:
            out.add(int(i))
    return out
