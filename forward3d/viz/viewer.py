"""``forward3d view``: an interactive 3D viewer in the browser, built on viser (extra ``[viewer]``).

:class:`Viewer` draws a :class:`~forward3d.viz.scene.SceneModel`: the coloured point cloud (point size,
a confidence threshold where there are confidences, a point budget), the mesh, 3D Gaussians, a camera
frustum with its thumbnail for every (k-th) frame, the trajectory and the ground-truth trajectory, a
frame timeline (slider + play) replaying the per-frame point maps, the metrics and the run's settings,
and buttons to download the PLY / GLB files. It listens to the scene, so frames added while it runs
(a live reconstruction) appear as they come; redraws run on one worker thread and are coalesced (a
burst of changes costs one redraw), so the producer never waits for the browser.
:class:`~forward3d.viz.live.LiveViewer` (also importable from here) feeds one with a back-end's
streaming updates (``forward3d recon INPUT --view``).

Camera conventions are converted in :mod:`forward3d.viz.conventions` only. The server binds
127.0.0.1 unless told otherwise.

Example::

    from forward3d.viz.load import load_scene
    from forward3d.viz.viewer import Viewer

    viewer = Viewer(load_scene("out/"), port=8080)
    print(viewer.url)
    viewer.serve_forever()  # until Ctrl-C
"""

from __future__ import annotations

import contextlib
import io
import logging
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from forward3d.viz.conventions import (
    c2w_to_viser_pose,
    frustum_fov_aspect,
    gaussians_to_viser,
    initial_view,
    world_up,
)
from forward3d.viz.scene import SceneModel, Selection

__all__ = ["Viewer", "ViewerConfig", "stats_text", "format_count"]  # + LiveViewer, LiveViewConfig (module __getattr__)

log = logging.getLogger(__name__)

_TRAJ_COLOR = (235, 90, 30)
_GT_COLOR = (40, 110, 240)
_CAM_COLOR = (70, 70, 70)
_FAIL_COLOR = (225, 30, 30)
_CURRENT_COLOR = (255, 160, 0)
_POINT_COLOR = (150, 160, 175)
_MESH_COLOR = (180, 190, 205)


def _import_viser():
    try:
        import viser
    except ImportError:
        raise ImportError("the 3D viewer needs viser: pip install forward3d[viewer]") from None
    return viser


@contextlib.contextmanager
def _quiet():
    """Silence viser's own banner / "Server stopped" lines (rich prints to ``sys.stdout``)."""
    with contextlib.redirect_stdout(io.StringIO()):
        yield


def format_count(n: int) -> str:
    """``12345`` -> ``"12,345"`` (how the GUI prints counts)."""
    return f"{int(n):,}"


def stats_text(frame: int, num_frames: int, frame_name: str, sel: Selection | None, failures: int = 0) -> str:
    """The status line of the GUI (markdown): the frame shown and the point counts."""
    lines = []
    if num_frames:
        lines.append(f"**frame {frame + 1} / {num_frames}** (`{frame_name}`)")
    if sel is not None:
        lines.append(f"points shown: {format_count(sel.shown)} of {format_count(sel.eligible)}"
                     + (f" (of {format_count(sel.total)} before the confidence threshold)"
                        if sel.eligible != sel.total else ""))
    if failures:
        lines.append(f"tracking failed on {failures} frames (red cameras)")
    return "  \n".join(lines) if lines else "empty scene"


def _flatten(d: dict, prefix: str = "", depth: int = 0) -> list[tuple[str, str]]:
    rows: list[tuple[str, str]] = []
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and depth < 2:
            rows += _flatten(v, key + ".", depth + 1)
        elif isinstance(v, (list, tuple)):
            if len(v) <= 6 and all(isinstance(x, (int, float, str, bool)) or x is None for x in v):
                rows.append((key, ", ".join(_fmt(x) for x in v)))
            else:
                rows.append((key, f"[{len(v)} items]"))
        else:
            rows.append((key, _fmt(v)))
    return rows


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    s = str(v)
    return s if len(s) <= 60 else s[:57] + "..."


def _table(d: dict, empty: str) -> str:
    rows = _flatten(d)
    if not rows:
        return empty
    esc = lambda s: s.replace("|", "\\|")  # noqa: E731
    return "| | |\n|---|---|\n" + "\n".join(f"| {esc(k)} | {esc(v)} |" for k, v in rows)


@dataclass
class ViewerConfig:
    """Display limits and defaults of :class:`Viewer` (the CLI takes its defaults from here).

    Attributes:
        max_points: point budget (points drawn at most; a fixed random subset beyond it).
        max_frustums: cameras drawn at most (every k-th frame beyond it).
        max_gaussians: Gaussians drawn at most (the most opaque).
        point_size: world units; None = 1/400 of the scene radius.
        thumbnail_size: largest side of the frustum thumbnails, pixels.
        fps: timeline playback speed, frames per second.
    """

    max_points: int = 2_000_000
    max_frustums: int = 100
    max_gaussians: int = 1_000_000
    point_size: float | None = None
    thumbnail_size: int = 160
    fps: float = 10.0

    def __post_init__(self) -> None:
        for name in ("max_points", "max_frustums", "max_gaussians", "thumbnail_size"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                raise ValueError(f"ViewerConfig: expected {name} a positive integer, found {v!r}")
        if self.point_size is not None and not self.point_size > 0:
            raise ValueError(f"ViewerConfig: expected point_size > 0, found {self.point_size}")
        if not self.fps > 0:
            raise ValueError(f"ViewerConfig: expected fps > 0, found {self.fps}")


class Viewer:
    """A viser server showing ``scene`` (see the module docstring).

    Args:
        scene: what to show; frames and geometry added to it later are shown as they arrive.
        host, port: where to listen (viser takes the next free port when ``port`` is taken; see
            :attr:`url`).
        config: display limits (:class:`ViewerConfig`).
    """

    def __init__(self, scene: SceneModel, host: str = "127.0.0.1", port: int = 8080,
                 config: ViewerConfig | None = None) -> None:
        viser = _import_viser()
        if not isinstance(scene, SceneModel):
            raise TypeError(f"Viewer: expected a SceneModel, found {type(scene).__name__}")
        self.scene = scene
        self.config = config or ViewerConfig()
        self._lock = threading.RLock()
        self._dirty = threading.Event()
        self._closed = threading.Event()
        self._playing = False
        self._frustums: dict[int, Any] = {}
        self._static: dict[str, Any] = {}
        self._frustum_scale = 0.1
        self._static_version = -1
        self._geometry_version = 0
        self.redraws = 0
        self.last_redraw_s = 0.0  # seconds the last redraw took (the live view paces itself on it)
        self.last_selection: Selection | None = None
        self._known_frames = len(scene)  # frames the GUI knows of (the timeline follows the last one)
        with _quiet():  # viser prints its own banner; the caller prints :attr:`url`
            self.server = viser.ViserServer(host=host, port=port, label="forward3d", verbose=False)
        self._host = host
        self._setup_world()
        self._build_gui()
        self._redraw()
        self._worker = threading.Thread(target=self._redraw_loop, name="forward3d-viewer-redraw", daemon=True)
        self._worker.start()
        self._player = threading.Thread(target=self._play_loop, name="forward3d-viewer-play", daemon=True)
        self._player.start()
        self._unsubscribe = scene.subscribe(self._on_scene_event)

    # -- server ------------------------------------------------------------------------------------
    @property
    def port(self) -> int:
        return int(self.server.get_port())

    @property
    def url(self) -> str:
        host = self._host if self._host not in ("0.0.0.0", "") else "127.0.0.1"
        return f"http://{host}:{self.port}"

    def stop(self) -> None:
        """Stop the server and the worker threads (idempotent)."""
        if self._closed.is_set():
            return
        self._closed.set()
        self._unsubscribe()
        self._dirty.set()
        self._worker.join(timeout=5)
        self._player.join(timeout=5)
        with _quiet():
            self.server.stop()

    def serve_forever(self) -> None:
        """Block until Ctrl-C (KeyboardInterrupt) or :meth:`stop`, then stop cleanly."""
        try:
            while not self._closed.wait(0.25):
                pass
        except KeyboardInterrupt:
            pass
        finally:
            self.stop()

    def __enter__(self) -> "Viewer":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- world and GUI -----------------------------------------------------------------------------
    def _setup_world(self) -> None:
        scene = self.scene
        c2w = scene.c2w()
        up = world_up(c2w)
        self._up = up
        self.server.scene.set_up_direction(tuple(float(v) for v in up))
        centre, radius = scene.bounds()
        self._radius = radius
        if len(c2w) > 1:
            steps = np.linalg.norm(np.diff(c2w[:, :3, 3], axis=0), axis=1)
            step = float(np.median(steps)) if len(steps) else 0.0
            self._frustum_scale = float(np.clip(max(step * 2.0, radius * 0.04), radius * 0.02, radius * 0.08))
        else:
            self._frustum_scale = radius * 0.05
        sample = scene.sample_points(50_000)
        pos, look, up_v = initial_view(c2w, sample if len(sample) else None, up)
        self._view = tuple(tuple(float(v) for v in x) for x in (pos, look, up_v))
        cam = self.server.initial_camera
        cam.position, cam.look_at, cam.up = self._view

    def refit(self, move_cameras: bool = False) -> None:
        """Fit the world to the scene as it is now (a live scene that started empty or has grown): up
        direction, frustum size, point size and confidence ranges, the initial camera; with
        ``move_cameras`` the connected browsers' cameras too. Redraws every camera."""
        with self._lock:
            self._setup_world()
            size = self.config.point_size or self._radius / 400.0
            self.point_size.min, self.point_size.max, self.point_size.step = size / 10, size * 10, size / 10
            self.point_size.value = size
            rng = self.scene.confidence_range()
            if rng is not None:
                lo, hi = rng
                first = not self.min_conf.visible
                self.min_conf.min, self.min_conf.max, self.min_conf.step = lo, hi, (hi - lo) / 100
                if first:
                    self.min_conf.value = lo
                self.min_conf.visible = True
            self.points_source.visible = self.scene.has_frame_points and self.scene.cloud is not None
            for pos in list(self._frustums):
                self._frustums.pop(pos).remove()
            if move_cameras:
                for client in self.server.get_clients().values():
                    client.camera.position, client.camera.look_at, client.camera.up = self._view
        self.request_redraw()

    def set_live_status(self, text: str) -> None:
        """Show ``text`` (markdown) under the frame / point counts; empty hides it."""
        self.live_md.content = text or " "
        self.live_md.visible = bool(text)

    def _build_gui(self) -> None:
        gui = self.server.gui
        scene = self.scene
        cfg = self.config
        gui.configure_theme(control_width="medium", show_logo=False, show_share_button=False)
        self.title_md = gui.add_markdown(f"### {scene.title or 'forward3d'}")
        self.stats_md = gui.add_markdown("loading ...")
        self.live_md = gui.add_markdown(" ", visible=False)
        with gui.add_folder("Display"):
            self.show_points = gui.add_checkbox("points", True)
            both = scene.has_frame_points and scene.cloud is not None
            self.points_source = gui.add_dropdown("points from", ("per-frame maps", "fused cloud"),
                                                  initial_value="per-frame maps", visible=both)
            size = cfg.point_size or self._radius / 400.0
            self.point_size = gui.add_slider("point size", min=size / 10, max=size * 10, step=size / 10,
                                             initial_value=size)
            rng = scene.confidence_range()
            lo, hi = rng if rng is not None else (0.0, 1.0)
            self.min_conf = gui.add_slider("min confidence", min=lo, max=hi, step=(hi - lo) / 100,
                                           initial_value=lo, visible=rng is not None)
            self.budget = gui.add_number("point budget", initial_value=cfg.max_points, min=1000, step=100_000)
            self.show_mesh = gui.add_checkbox("mesh", True, visible=scene.mesh is not None)
            self.show_gaussians = gui.add_checkbox("gaussians", True, visible=scene.gaussians is not None)
            self.show_cameras = gui.add_checkbox("cameras", True, visible=len(scene) > 0)
            self.show_traj = gui.add_checkbox("trajectory", True, visible=len(scene) > 1)
            self.show_gt = gui.add_checkbox("ground truth", True, visible=scene.gt_c2w is not None)
        n = len(scene)
        with gui.add_folder("Timeline", visible=True) as self.timeline_folder:
            self.frame_slider = gui.add_slider("frame", min=0, max=max(n - 1, 1), step=1, initial_value=max(n - 1, 0),
                                               disabled=n < 2)
            self.accumulate = gui.add_checkbox("accumulate", True, hint="points of all frames up to this one")
            self.play_button = gui.add_button("play", disabled=n < 2)
            self.fps = gui.add_number("frames / s", initial_value=cfg.fps, min=0.5, max=60.0, step=0.5)
        self.timeline_folder.visible = n > 1
        with gui.add_folder("Metrics", expand_by_default=bool(scene.metrics)):
            self.metrics_md = gui.add_markdown(_table(scene.metrics, "no metrics"))
        with gui.add_folder("Settings", expand_by_default=False):
            self.settings_md = gui.add_markdown(_table(scene.settings, "no settings"))
        with gui.add_folder("Download"):
            self._download_folder_buttons: list[Any] = []
            self._build_downloads()

        for h in (self.show_points, self.points_source, self.point_size, self.min_conf, self.budget,
                  self.show_cameras, self.show_traj, self.frame_slider, self.accumulate):
            h.on_update(lambda _e: self.request_redraw())
        for h in (self.show_mesh, self.show_gaussians, self.show_gt):
            h.on_update(lambda _e: self._apply_visibility())

        @self.play_button.on_click
        def _(_e) -> None:
            self.set_playing(not self._playing)

    def _build_downloads(self) -> None:
        gui = self.server.gui
        items: list[tuple[str, Any]] = [(label, path) for label, path in self.scene.downloads.items()]
        if not items:  # nothing on disk: offer what the scene holds, written on demand
            if self.scene.cloud is not None or self.scene.has_frame_points:
                items.append(("points (PLY)", "ply"))
                items.append(("points (GLB)", "glb_points"))
            if self.scene.mesh is not None:
                items.append(("mesh (GLB)", "glb_mesh"))
        if not items:
            self._download_folder_buttons.append(gui.add_markdown("nothing to download"))
        for label, target in items:
            b = gui.add_button(label, icon=None)
            b.on_click(lambda e, t=target: self._send_download(e.client, t))
            self._download_folder_buttons.append(b)

    def download_bytes(self, target: Path | str) -> tuple[str, bytes]:
        """``(file name, content)`` of a download: a file path, or ``"ply"`` / ``"glb_points"`` /
        ``"glb_mesh"`` for the scene's current points / mesh encoded on demand."""
        if isinstance(target, Path):
            return target.name, target.read_bytes()
        from forward3d.types import PointCloud

        if target == "glb_mesh":
            from forward3d.io.glb import glb_bytes

            return "mesh.glb", glb_bytes(self.scene.mesh)
        sel = self.scene.select("cloud" if self.scene.cloud is not None else "frames", budget=self.config.max_points)
        pc = PointCloud(sel.points, sel.colors)
        if target == "glb_points":
            from forward3d.io.glb import glb_bytes

            return "points.glb", glb_bytes(pc)
        if target == "ply":
            from forward3d.io.ply import write_point_cloud

            with tempfile.TemporaryDirectory() as tmp:
                p = write_point_cloud(Path(tmp) / "points.ply", pc)
                return "points.ply", p.read_bytes()
        raise ValueError(f"Viewer.download_bytes: unknown target {target!r}")

    def _send_download(self, client, target) -> None:
        if client is None:
            return
        try:
            name, data = self.download_bytes(target)
        except OSError as exc:
            client.add_notification("download failed", str(exc), color="red")
            return
        client.send_file_download(name, data, save_immediately=True)

    # -- scene events ------------------------------------------------------------------------------
    def _on_scene_event(self, event: str, payload: Any) -> None:
        if event == "frame":
            n = len(self.scene)
            prev, self._known_frames = self._known_frames, n
            follow = prev == 0 or self.frame_slider.value >= prev - 1 or n <= 2  # it showed the last frame
            self.frame_slider.max = max(n - 1, 1)
            self.frame_slider.disabled = n < 2
            self.play_button.disabled = n < 2
            self.timeline_folder.visible = n > 1
            self.show_cameras.visible = True
            self.show_traj.visible = n > 1
            if follow:
                self.frame_slider.value = n - 1  # triggers a redraw
            else:
                self.request_redraw()
        elif event == "frame_updated":
            if payload is not None:
                pos = next((i for i, f in enumerate(self.scene.frames) if f is payload), None)
                if pos is not None and pos in self._frustums:
                    self._frustums.pop(pos).remove()
            self.request_redraw()
        elif event == "poses":
            with self._lock:
                for pos in list(self._frustums):
                    self._frustums.pop(pos).remove()
            self.request_redraw()
        elif event == "geometry":
            self._geometry_version += 1
            self.show_mesh.visible = self.scene.mesh is not None
            self.show_gaussians.visible = self.scene.gaussians is not None
            self.show_gt.visible = self.scene.gt_c2w is not None
            self.points_source.visible = self.scene.has_frame_points and self.scene.cloud is not None
            self.request_redraw()
        elif event == "info":
            self.metrics_md.content = _table(self.scene.metrics, "no metrics")
            self.settings_md.content = _table(self.scene.settings, "no settings")

    # -- drawing -----------------------------------------------------------------------------------
    def request_redraw(self) -> None:
        """Ask the worker thread for a redraw (returns at once; bursts are coalesced)."""
        self._dirty.set()

    def _redraw_loop(self) -> None:
        while not self._closed.is_set():
            self._dirty.wait()
            if self._closed.is_set():
                return
            self._dirty.clear()
            try:
                self._redraw()
            except Exception:  # keep the viewer alive; the error is in the log
                log.exception("viewer redraw failed")

    def wait_idle(self, timeout: float = 10.0) -> bool:
        """Wait until no redraw is pending (tests, scripts); True when idle."""
        t_end = time.monotonic() + timeout
        while time.monotonic() < t_end:
            if not self._dirty.is_set():
                with self._lock:  # a redraw in progress holds the lock
                    if not self._dirty.is_set():
                        return True
            time.sleep(0.02)
        return False

    def current_frame(self) -> int:
        n = len(self.scene)
        return min(int(self.frame_slider.value), n - 1) if n else -1

    def _redraw(self) -> None:
        t0 = time.perf_counter()
        with self._lock:
            scene = self.scene
            srv = self.server.scene
            n = len(scene)
            t = self.current_frame()
            if self._static_version != self._geometry_version:
                self._draw_static()
                self._static_version = self._geometry_version
            source = "cloud" if (not scene.has_frame_points or self.points_source.value == "fused cloud") else "frames"
            if source == "cloud" and scene.cloud is None:
                sel = None
            else:
                sel = scene.select(source, upto=t if source == "frames" else None,
                                   only_current=source == "frames" and not self.accumulate.value,
                                   min_confidence=float(self.min_conf.value) if self.min_conf.visible else None,
                                   budget=max(int(self.budget.value), 0))
            self.last_selection = sel
            if sel is not None and sel.shown:
                colors = sel.colors if sel.colors is not None else np.array(_POINT_COLOR, np.uint8)
                srv.add_point_cloud("/points", sel.points, colors, point_size=float(self.point_size.value),
                                    point_shape="rounded", precision="float32", point_shading="flat",
                                    visible=bool(self.show_points.value))
            else:
                srv.add_point_cloud("/points", np.zeros((1, 3), np.float32), np.array(_POINT_COLOR, np.uint8),
                                    point_size=0.0, visible=False)
            self._draw_cameras(t)
            fails = sum(not f.tracking_ok for f in scene.frames[: t + 1]) if n else 0
            name = scene.frames[t].name if n else ""
            self.stats_md.content = stats_text(t, n, name, sel, fails)
            self.redraws += 1
            self.last_redraw_s = time.perf_counter() - t0

    def _draw_cameras(self, t: int) -> None:
        scene, srv = self.scene, self.server.scene
        n = len(scene)
        show = bool(self.show_cameras.value)
        wanted = set(scene.frustum_positions(self.config.max_frustums, upto=t)) if n and show else set()
        for pos in list(self._frustums):
            if pos not in wanted:
                self._frustums.pop(pos).remove()
        for pos in sorted(wanted - set(self._frustums)):
            self._frustums[pos] = self._add_frustum(f"/cameras/{pos:06d}", pos, _CAM_COLOR)
        if n and show:
            self._add_frustum("/current_camera", t, _CURRENT_COLOR, thumbnail=False, scale=1.3)
        else:
            srv.add_frame("/current_camera", show_axes=False, visible=False)
        if n > 1 and self.show_traj.value and t >= 1:
            centres = scene.c2w(upto=t)[:, :3, 3]
            segs = np.stack([centres[:-1], centres[1:]], axis=1).astype(np.float32)
            srv.add_line_segments("/trajectory", segs, _TRAJ_COLOR, thickness=3.0, thickness_units="screen")
        else:
            srv.add_line_segments("/trajectory", np.zeros((1, 2, 3), np.float32), _TRAJ_COLOR, visible=False)

    def _add_frustum(self, name: str, pos: int, color, thumbnail: bool = True, scale: float = 1.0):
        fv = self.scene.frames[pos]
        fov, aspect = frustum_fov_aspect(fv.K, fv.image_size)
        wxyz, position = c2w_to_viser_pose(fv.c2w)
        image = self.scene.thumbnail(pos, self.config.thumbnail_size) if thumbnail else None
        return self.server.scene.add_camera_frustum(
            name, fov=fov, aspect=aspect, scale=self._frustum_scale * scale,
            thickness=2.0, thickness_units="screen", color=color if fv.tracking_ok else _FAIL_COLOR,
            image=image, format="jpeg", jpeg_quality=85, wxyz=wxyz, position=position)

    def _draw_static(self) -> None:
        """Mesh, Gaussians and the ground-truth trajectory (they do not change with the timeline)."""
        scene, srv = self.scene, self.server.scene
        if scene.mesh is not None and len(scene.mesh.faces):
            m = scene.mesh
            if m.vertex_colors is not None:
                from forward3d.io.glb import glb_bytes

                # forward3d world coordinates as they are: viser's world is ours (see conventions)
                self._static["mesh"] = srv.add_glb("/mesh", glb_bytes(m, to_gltf_axes=False),
                                                   visible=bool(self.show_mesh.value))
            else:
                self._static["mesh"] = srv.add_mesh_simple(
                    "/mesh", m.vertices, m.faces.astype(np.uint32), color=_MESH_COLOR, side="double",
                    visible=bool(self.show_mesh.value))
        g = scene.select_gaussians(self.config.max_gaussians)
        if g is not None and len(g):
            centers, cov, rgbs, opac = gaussians_to_viser(g)
            self._static["gaussians"] = srv.add_gaussian_splats("/gaussians", centers, cov, rgbs, opac,
                                                                visible=bool(self.show_gaussians.value))
        if scene.gt_c2w is not None and len(scene.gt_c2w) > 1:
            c = scene.gt_c2w[:, :3, 3]
            segs = np.stack([c[:-1], c[1:]], axis=1).astype(np.float32)
            self._static["gt"] = srv.add_line_segments("/gt_trajectory", segs, _GT_COLOR, thickness=3.0,
                                                       thickness_units="screen", visible=bool(self.show_gt.value))

    def _apply_visibility(self) -> None:
        with self._lock:
            for name, toggle in (("mesh", self.show_mesh), ("gaussians", self.show_gaussians),
                                 ("gt", self.show_gt)):
                node = self._static.get(name)
                if node is not None:
                    node.visible = bool(toggle.value)

    # -- timeline playback -------------------------------------------------------------------------
    def set_playing(self, playing: bool) -> None:
        """Start / stop replaying the frames (from the first when at the end)."""
        n = len(self.scene)
        if playing and n > 1 and self.current_frame() >= n - 1:
            self.frame_slider.value = 0
        self._playing = bool(playing) and n > 1
        self.play_button.label = "pause" if self._playing else "play"

    def _play_loop(self) -> None:
        while not self._closed.is_set():
            if not self._playing:
                time.sleep(0.05)
                continue
            t0 = time.monotonic()
            n = len(self.scene)
            t = self.current_frame()
            if t >= n - 1:
                self.set_playing(False)
                continue
            self.frame_slider.value = t + 1
            dt = 1.0 / max(float(self.fps.value), 0.1)
            self._closed.wait(max(0.0, dt - (time.monotonic() - t0)))



def __getattr__(name: str) -> Any:
    """``LiveViewer``, ``LiveViewConfig``, ``live_status_text`` live in :mod:`forward3d.viz.live`
    (imported on first use; ``from forward3d.viz.viewer import LiveViewer`` works)."""
    if name in ("LiveViewer", "LiveViewConfig", "live_status_text"):
        from forward3d.viz import live

        return getattr(live, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
