"""The live view of a streaming reconstruction: :class:`LiveViewer`, a :class:`~forward3d.viz.viewer.Viewer`
fed with the back-ends' :class:`~forward3d.types.Update` s (``forward3d recon INPUT --view``).

Also importable as ``forward3d.viz.viewer.LiveViewer``. See :class:`LiveViewer` for the example.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from forward3d.config import option
from forward3d.types import Update
from forward3d.viz.scene import SceneModel
from forward3d.viz.viewer import Viewer, ViewerConfig, format_count

__all__ = ["LiveViewer", "LiveViewConfig", "live_status_text"]

log = logging.getLogger(__name__)

_PACE = 4.0  # pause between two live refreshes >= this x the last redraw (drawing <= ~1/5 of a core)


@dataclass
class LiveViewConfig:
    """The live view of ``forward3d recon --view`` (:class:`LiveViewer`).

    Attributes:
        view: open the 3D viewer and show every frame as it is reconstructed (needs forward3d[viewer]);
            after the run it keeps serving the result until Ctrl-C.
        host: address the viewer listens on (127.0.0.1: this machine only).
        port: viewer port (the next free one is taken when it is busy).
        exit: with --view: stop the viewer when the run ends instead of serving the result (scripts, tests).
        interval: seconds between two refreshes of the view at least (frames arriving in between are
            shown together); the pause is also at least 4x the last redraw, so that drawing takes at
            most about a fifth of a core however large the scene grows.
        max_points: point budget of the view (points drawn at most).
        max_points_per_frame: world points kept per frame (a fixed random subset beyond it; bounds memory).
        wait: before the run starts, wait up to this many seconds for a browser to open the view, so that it
            shows the run from its first frame (a demo, a screen recording, a short clip); 0: start at once.
    """

    view: bool = False
    host: str = option("127.0.0.1", flag="--view-host", metavar="HOST")
    port: int = option(8080, flag="--view-port", metavar="PORT")
    exit: bool = option(False, flag="--view-exit")
    interval: float = option(0.5, flag="--view-interval", metavar="S")
    max_points: int = option(500_000, flag="--view-max-points", metavar="N")
    max_points_per_frame: int = option(20_000, flag="--view-max-points-per-frame", metavar="N")
    wait: float = option(0.0, flag="--view-wait", metavar="S")

    def __post_init__(self) -> None:
        if not 0 <= int(self.port) <= 65535:
            raise ValueError(f"--view-port: expected 0..65535, found {self.port}")
        if not self.interval >= 0:
            raise ValueError(f"--view-interval: expected >= 0 seconds, found {self.interval}")
        if not self.wait >= 0:
            raise ValueError(f"--view-wait: expected >= 0 seconds, found {self.wait}")
        for name in ("max_points", "max_points_per_frame"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"--view-{name.replace('_', '-')}: expected >= 1, found {getattr(self, name)}")


def live_status_text(frames: int, fps: float, failures: int, done: bool = False, seconds: float | None = None,
                     behind: int = 0) -> str:
    """The live status line of the GUI (markdown), e.g. ``live: 12 frames, 3.4 frames/s``."""
    head = "**done**" if done else "**live**"
    parts = [f"{head}: {format_count(frames)} frames" + (f" in {seconds:.1f} s" if done and seconds is not None else "")]
    parts.append(f"{fps:.1f} frames/s")
    if failures:
        parts.append(f"tracking failed on {failures}")
    if behind:
        parts.append(f"view {behind} frames behind")
    return ", ".join(parts)


class LiveViewer:
    """A :class:`Viewer` fed with the streaming :class:`~forward3d.types.Update` s of a back-end.

    Each update adds the frame's camera (red when ``update.status`` failed), its world points
    (colours, confidences; at most ``max_points_per_frame``) and its thumbnail to a
    :class:`~forward3d.viz.scene.SceneModel`; the trajectory grows with it; an update that carries a
    corrected ``trajectory`` (loop closure) moves the past cameras and their points. :meth:`push`
    never blocks the producer: it only appends to a list, and a worker thread takes everything that
    arrived since its last pass into the scene in one go (one redraw per pass, coalesced by the
    viewer), pausing between passes ``interval`` seconds or 4x the last redraw, whichever is longer.

    Example::

        live = LiveViewer(LiveViewConfig(view=True, port=8080))
        print(live.url)
        recon = backend.run(frames, callback=live.push)   # or reconstruct(..., callback=live.push)
        live.finish(recon)                                 # the fused cloud, metrics, final poses
        live.serve_forever()                               # until Ctrl-C

    Args:
        config: :class:`LiveViewConfig` (host, port, refresh interval, point limits).
        title: shown at the top of the GUI.
        viewer_config: display settings (default: :class:`ViewerConfig` with ``config.max_points``).
    """

    def __init__(self, config: LiveViewConfig | None = None, *, title: str = "forward3d live",
                 viewer_config: ViewerConfig | None = None) -> None:
        self.config = config or LiveViewConfig(view=True)
        self.scene = SceneModel(title=title)
        self.viewer = Viewer(self.scene, host=self.config.host, port=self.config.port,
                             config=viewer_config or ViewerConfig(max_points=self.config.max_points))
        self._pending: list[Any] = []
        self._pending_lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._rng = np.random.default_rng(0)
        self._fitted = False
        self._last_fps = 0.0
        self._t0 = time.perf_counter()
        self.received = 0  # updates pushed
        self.applied = 0  # updates in the scene
        self.passes = 0  # worker passes that changed the scene
        self.push_seconds = 0.0  # time spent inside push() (what the producer pays)
        self.viewer.set_live_status("**live**: waiting for the first frame")
        self._worker = threading.Thread(target=self._loop, name="forward3d-live-viewer", daemon=True)
        self._worker.start()

    # -- producer side -----------------------------------------------------------------------------
    def push(self, update: Any) -> None:
        """Queue one :class:`~forward3d.types.Update` (returns at once; use as ``callback=``)."""
        t0 = time.perf_counter()
        with self._pending_lock:
            self._pending.append(update)
            self.received += 1
        self._wake.set()
        self.push_seconds += time.perf_counter() - t0

    __call__ = push

    def wait_for_client(self, timeout: float) -> bool:
        """Block until a browser has the view open, at most ``timeout`` seconds; True when one has.
        The run's clock (the fallback of the final frames/s) starts again after the wait."""
        t_end = time.monotonic() + max(0.0, float(timeout))
        while not self.viewer.server.get_clients():
            if time.monotonic() >= t_end:
                return False
            time.sleep(0.05)
        self._t0 = time.perf_counter()
        return True

    # -- worker ------------------------------------------------------------------------------------
    def _loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait()
            self._wake.clear()
            if self._stop.is_set():
                break
            try:
                self._apply_pending()
            except Exception:  # a bad update must not kill the view (the reconstruction goes on)
                log.exception("live viewer: could not show an update")
            self._stop.wait(max(self.config.interval, _PACE * self.viewer.last_redraw_s))

    def _take(self) -> list[Any]:
        with self._pending_lock:
            batch, self._pending = self._pending, []
        return batch

    def _frame_points(self, u: Any) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray | None]:
        if u.points is None:
            return None, None, None
        pts = np.asarray(u.points).reshape(-1, 3)
        cols = None if u.colors is None else np.asarray(u.colors).reshape(-1, 3)
        conf = None if u.confidence is None else np.asarray(u.confidence).reshape(-1)
        valid = np.isfinite(pts).all(-1) & (np.abs(pts).sum(-1) > 0)
        idx = np.flatnonzero(valid)
        cap = int(self.config.max_points_per_frame)
        if len(idx) > cap:
            idx = np.sort(self._rng.choice(idx, cap, replace=False))
        return pts[idx], None if cols is None else cols[idx], None if conf is None else conf[idx]

    def _apply(self, batch: list[Any]) -> None:
        """Add ``batch`` to the scene: frames without events, then one ``"frame"`` event."""
        scene = self.scene
        last = None
        for u in batch:
            if u.trajectory is not None:
                scene.set_poses(u.trajectory, notify=False)
            pts, cols, conf = self._frame_points(u)
            last = scene.add_frame(u.index, u.name, u.c2w, u.K, u.image_size, points=pts, colors=cols,
                                   confidence=conf, image=u.image, tracking_ok=u.status.ok, notify=False)
            self._last_fps = float(u.frames_per_s)
        if any(u.trajectory is not None for u in batch):
            scene.notify("poses", len(scene))
        if not self._fitted and len(scene) >= 2:
            self._fitted = True
            self.viewer.refit(move_cameras=True)
        scene.notify("frame", last)
        self.passes += 1
        self.applied += len(batch)  # last: wait_idle() must not see the batch done before its redraw is asked for

    def _apply_pending(self) -> None:
        batch = self._take()
        if batch:
            self._apply(batch)
        with self._pending_lock:
            behind = len(self._pending)
        fails = sum(not f.tracking_ok for f in self.scene.frames)
        self.viewer.set_live_status(live_status_text(len(self.scene), self._last_fps, fails, behind=behind))

    # -- end of the run ----------------------------------------------------------------------------
    def finish(self, recon: Any = None, *, metrics: dict | None = None, seconds: float | None = None,
               timeout: float = 30.0) -> None:
        """The run is over: show every update still queued, then ``recon`` (a
        :class:`~forward3d.types.Reconstruction`): its final poses (a back-end may have refined them),
        its fused cloud, its settings, ``metrics``. A run that streamed nothing (an offline back-end)
        is shown from ``recon`` itself."""
        self._stop.set()
        self._wake.set()
        self._worker.join(timeout=timeout)
        batch = self._take()
        if batch:
            self._apply(batch)
        scene = self.scene
        if recon is not None:
            n = len(recon)
            if len(scene) == 0:
                for i in range(n):
                    pts = conf = cols = None
                    if recon.point_maps is not None:
                        pts = np.asarray(recon.point_maps[i])
                        conf = None if recon.confidences is None else np.asarray(recon.confidences[i])
                        cols = None if recon.point_map_colors is None else np.asarray(recon.point_map_colors[i])
                    u = Update(i, recon.frame_names[i], recon.c2w[i], recon.K[i], recon.image_size,
                               status=recon.frame_status[i], points=pts, colors=cols, confidence=conf, image=cols)
                    p, c, k = self._frame_points(u)
                    scene.add_frame(i, u.name, u.c2w, u.K, u.image_size, points=p, colors=c, confidence=k, image=u.image,
                                    tracking_ok=u.status.ok, notify=False)
            elif len(scene) == n and not np.allclose(scene.c2w(), recon.c2w, atol=1e-9):
                scene.set_poses(recon.c2w, notify=False)
            if recon.points is not None and len(recon.points):
                scene.set_geometry(cloud=recon.points, mesh=recon.mesh, notify=False)
            elif recon.mesh is not None:
                scene.set_geometry(mesh=recon.mesh, notify=False)
            scene.set_info(metrics=metrics or {}, settings=dict(recon.metadata))
        self.viewer.refit(move_cameras=not self._fitted)
        self._fitted = True
        scene.notify("geometry")
        scene.notify("frame", scene.frames[-1] if len(scene) else None)
        secs = seconds if seconds is not None else time.perf_counter() - self._t0
        fps = len(scene) / max(secs, 1e-9)
        fails = sum(not f.tracking_ok for f in scene.frames)
        self.viewer.set_live_status(live_status_text(len(scene), fps, fails, done=True, seconds=secs))

    # -- server ------------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        return self.viewer.url

    @property
    def port(self) -> int:
        return self.viewer.port

    def wait_idle(self, timeout: float = 10.0) -> bool:
        """Wait until every pushed update is in the scene and drawn (tests, scripts)."""
        t_end = time.monotonic() + timeout
        while time.monotonic() < t_end:
            with self._pending_lock:
                pending = len(self._pending)
            if not pending and self.applied == self.received:
                return self.viewer.wait_idle(max(0.1, t_end - time.monotonic()))
            time.sleep(0.02)
        return False

    def serve_forever(self) -> None:
        """Serve until Ctrl-C, then stop."""
        self.viewer.serve_forever()
        self.stop()

    def stop(self) -> None:
        """Stop the worker and the server (idempotent)."""
        self._stop.set()
        self._wake.set()
        self._worker.join(timeout=5)
        self.viewer.stop()

    def __enter__(self) -> "LiveViewer":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
