"""The work behind the app's tabs, without any UI: inputs checked and copied into a session folder,
a reconstruction run in a background thread (progress, streaming updates, stop), the downloads.

The UI (:mod:`forward3d.app.ui`) only turns these into gradio components; everything here raises
``ValueError`` naming the file and the problem for bad input, which the UI shows as one message.
"""

from __future__ import annotations

import logging
import queue
import re
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from forward3d.api import RunResult, SourceConfig, StoppableFrames, open_source, reconstruct
from forward3d.app.session import check_upload_size
from forward3d.io.archive import safe_extract_zip, zip_folder
from forward3d.io.source_base import IMAGE_EXTS, VIDEO_EXTS
from forward3d.types import PointCloud, Update

__all__ = ["VideoInput", "prepare_input", "ReconJob", "JobProgress", "RunDownloads", "make_downloads",
           "preview_glb", "summary_markdown", "STREAM_SCHEMES"]

log = logging.getLogger(__name__)

STREAM_SCHEMES = ("http://", "https://", "rtsp://", "rtsps://", "rtmp://", "udp://", "tcp://")
PREVIEW_POINTS = 200_000  # points in the Model3D preview (the downloads keep every point)


@dataclass
class VideoInput:
    """What the Video -> 3D tab was given (exactly one of them).

    Attributes:
        video: a video file (uploaded or recorded with the webcam).
        images: image files.
        zip: a zip of an RGB-D dataset folder (TUM, Redwood, ScanNet, Replica, 7-Scenes layouts).
        url: a stream URL (http(s)/rtsp MJPEG or video stream).
    """

    video: str | None = None
    images: Sequence[str] | None = None
    zip: str | None = None
    url: str | None = None


def _name(path: str | Path) -> str:
    return Path(str(path)).name


def _safe_name(name: str, fallback: str) -> str:
    """A file name made of ``[A-Za-z0-9._-]`` only (the client's name, kept readable for messages)."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", Path(name).name)[-100:].lstrip(".")
    return safe or fallback


def prepare_input(inp: VideoInput, run_dir: str | Path, max_bytes: int, max_zip_bytes: int | None = None) -> str:
    """Check ``inp`` and copy it into ``run_dir/input``; returns what to give :func:`open_source`
    (a video file, an image folder, a dataset folder or the URL).

    Raises:
        ValueError: none or several inputs, an unsupported or unreadable file, an upload over
            ``max_bytes``, an unsafe zip (or over ``max_zip_bytes`` uncompressed), a bad URL.
    """
    given = [k for k in ("video", "images", "zip", "url") if getattr(inp, k)]
    if not given:
        raise ValueError("no input: upload a video (or record one with the webcam), images, a zip of an RGB-D "
                         "dataset, or give a stream URL")
    if len(given) > 1:
        raise ValueError(f"several inputs given ({', '.join(given)}): give exactly one")
    dst = Path(run_dir) / "input"
    dst.mkdir(parents=True, exist_ok=True)
    if inp.url:
        url = inp.url.strip()
        if not url.lower().startswith(STREAM_SCHEMES):
            raise ValueError(f"stream URL {url!r}: expected one starting with "
                             f"{', '.join(s[:-3] for s in STREAM_SCHEMES)}")
        return url
    if inp.video:
        src = Path(inp.video)
        if src.suffix.lower() not in VIDEO_EXTS:
            raise ValueError(f"{src.name}: unsupported file type {src.suffix or '(none)'}; expected a video "
                             f"({', '.join(VIDEO_EXTS)})")
        check_upload_size(src, max_bytes)
        return str(shutil.copy(src, dst / _safe_name(src.name, f"video{src.suffix.lower()}")))
    if inp.zip:
        src = Path(inp.zip)
        if src.suffix.lower() != ".zip":
            raise ValueError(f"{src.name}: unsupported file type {src.suffix or '(none)'}; expected a .zip of an "
                             "RGB-D dataset folder")
        check_upload_size(src, max_bytes)
        return str(safe_extract_zip(src, dst / "dataset", max_bytes=max_zip_bytes or 4 * max_bytes))
    from PIL import Image, UnidentifiedImageError

    folder = dst / "images"
    folder.mkdir()
    total = 0
    files = sorted((Path(p) for p in inp.images or ()), key=lambda p: p.name)
    for i, src in enumerate(files):
        if src.suffix.lower() not in IMAGE_EXTS:
            raise ValueError(f"{src.name}: unsupported file type {src.suffix or '(none)'}; expected images "
                             f"({', '.join(IMAGE_EXTS)})")
        total += src.stat().st_size
        if total > max_bytes:
            raise ValueError(f"{src.name}: the images add up to more than the {max_bytes / 1e6:.0f} MB upload limit "
                             "(--max-upload-mb)")
        try:
            with Image.open(src) as im:
                im.verify()
        except (UnidentifiedImageError, OSError, SyntaxError) as exc:
            raise ValueError(f"{src.name}: not a readable image ({exc})") from None
        shutil.copy(src, folder / f"{i:05d}{src.suffix.lower()}")  # our names: nothing of the client's path
    return str(folder)


@dataclass
class JobProgress:
    """A snapshot of a running job (what the UI polls).

    Attributes:
        frames: frames read from the input so far.
        total: frames in the input (None for a live stream).
        updates: streaming updates received since the last snapshot.
        done: the run has ended (``result`` or ``error`` is set).
        result: the run's :class:`~forward3d.api.RunResult` when it succeeded.
        error: the error message when it failed.
    """

    frames: int
    total: int | None
    updates: list[Update] = field(default_factory=list)
    done: bool = False
    result: RunResult | None = None
    error: str | None = None


class _CountingFrames(StoppableFrames):
    """:class:`StoppableFrames` that counts the frames it has passed (progress for every back-end)."""

    def __init__(self, frames: Any) -> None:
        super().__init__(frames)
        self.count = 0

    def __iter__(self) -> Iterator[Any]:
        for f in super().__iter__():
            self.count += 1
            yield f


class ReconJob:
    """One :func:`forward3d.api.reconstruct` run in a background thread.

    Args:
        input: what :func:`prepare_input` returned.
        backend: a registered back-end name.
        config: the back-end's config (a dict of non-default values, or an instance).
        source: how to read the input.
        out: the output folder (written as a whole at the end).
        viewer: an object with ``push(update)`` and ``finish(recon, metrics=...)`` (a
            :class:`~forward3d.viz.live.LiveViewer`), fed as the run goes, or None.
    """

    def __init__(self, input: str, backend: str, config: Any, source: SourceConfig, out: str | Path,  # noqa: A002
                 viewer: Any = None) -> None:
        self.input, self.backend, self.config, self.source = input, backend, config, source
        self.out = Path(out)
        self.viewer = viewer
        self._updates: queue.SimpleQueue[Update] = queue.SimpleQueue()
        self._frames: _CountingFrames | None = None
        self._total: int | None = None
        self.result: RunResult | None = None
        self.error: str | None = None
        self.stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="forward3d-app-job", daemon=True)

    def start(self) -> "ReconJob":
        self._thread.start()
        return self

    def _on_update(self, u: Update) -> None:
        self._updates.put(u)
        if self.viewer is not None:
            self.viewer.push(u)

    def _run(self) -> None:
        where = self.input if "://" in self.input else Path(self.input).name
        try:
            src = open_source(self.input, self.source)
            try:
                self._total = len(src)
            except TypeError:  # a live stream
                self._total = None
            self._frames = _CountingFrames(src)
            if self.stopped.is_set():
                self._frames.stop()
            self.result = reconstruct(self.input, self.backend, self.config, source=self.source, out=self.out,
                                      overwrite=True, progress=False, callback=self._on_update, frames=self._frames)
            if self.viewer is not None:
                self.viewer.finish(self.result.recon, metrics=_metrics(self.result))
        except ImportError as exc:
            self.error = f"{self.backend}: missing dependency: {exc}"
        except Exception as exc:  # shown in the app as one message; the log has the traceback
            log.debug("job failed", exc_info=True)
            msg = str(exc) if "://" in self.input else str(exc).replace(str(Path(self.input)), where)
            self.error = msg if msg.startswith(where) else f"{where}: {msg}"

    def stop(self) -> None:
        """Stop after the current frame (the result so far is kept as a partial run)."""
        self.stopped.set()
        if self._frames is not None:
            self._frames.stop()

    def join(self, timeout: float | None = None) -> bool:
        self._thread.join(timeout)
        return not self._thread.is_alive()

    @property
    def done(self) -> bool:
        return self._thread.ident is not None and not self._thread.is_alive()

    def poll(self) -> JobProgress:
        """What happened since the last poll."""
        ups = []
        while True:
            try:
                ups.append(self._updates.get_nowait())
            except queue.Empty:
                break
        n = self._frames.count if self._frames is not None else 0
        return JobProgress(n, self._total, ups, self.done, self.result, self.error)

    def progress_stream(self, interval: float = 0.2) -> Iterator[JobProgress]:
        """Snapshots every ``interval`` seconds until the run ends (the last one has ``done``)."""
        while True:
            done = self.done
            p = self.poll()
            yield p
            if done:
                return
            time.sleep(interval)


def _metrics(run: RunResult) -> dict[str, Any]:
    recon = run.recon
    m: dict[str, Any] = {"backend": recon.backend, "frames": len(recon), "tracking failures": len(recon.failures),
                         "seconds": round(run.seconds, 2)}
    if recon.points is not None:
        m["points"] = len(recon.points)
    if recon.mesh is not None:
        m["mesh triangles"] = len(recon.mesh.faces)
    if recon.trajectory_metrics is not None:
        m["ATE RMSE (m)"] = round(float(recon.trajectory_metrics.ate.rmse), 4)
    if recon.interrupted:
        m["partial"] = True
    return m


def summary_markdown(run: RunResult) -> str:
    """A short Markdown table of a run's numbers."""
    rows = "\n".join(f"| {k} | {v} |" for k, v in _metrics(run).items())
    return "| | |\n|---|---|\n" + rows


def preview_glb(points: np.ndarray, colors: np.ndarray | None, path: str | Path,
                max_points: int = PREVIEW_POINTS, seed: int = 0) -> Path:
    """A point-cloud GLB for the ``Model3D`` preview (a fixed random subset of at most ``max_points``)."""
    from forward3d.io.glb import write_glb_points

    pts = np.asarray(points, np.float64).reshape(-1, 3)
    cols = None if colors is None else np.asarray(colors, np.uint8).reshape(-1, 3)
    if len(pts) > max_points:
        idx = np.sort(np.random.default_rng(seed).choice(len(pts), max_points, replace=False))
        pts, cols = pts[idx], None if cols is None else cols[idx]
    return write_glb_points(path, PointCloud(pts, cols))


def update_points(updates: Sequence[Update], per_frame: int = 5000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The world points (and uint8 colours, grey where absent) of streaming updates, at most
    ``per_frame`` per frame: ``([N, 3] float64, [N, 3] uint8)``."""
    rng = np.random.default_rng(seed)
    pts, cols = [], []
    for u in updates:
        if u.points is None:
            continue
        p = np.asarray(u.points, np.float64).reshape(-1, 3)
        c = (np.full((len(p), 3), 160, np.uint8) if u.colors is None
             else np.asarray(u.colors, np.uint8).reshape(-1, 3))
        ok = np.isfinite(p).all(1) & (np.abs(p).sum(1) > 0)
        if u.confidence is not None:
            ok &= np.asarray(u.confidence).reshape(-1) > 0
        p, c = p[ok], c[ok]
        if len(p) > per_frame:
            idx = rng.choice(len(p), per_frame, replace=False)
            p, c = p[idx], c[idx]
        pts.append(p)
        cols.append(c)
    if not pts:
        return np.zeros((0, 3)), np.zeros((0, 3), np.uint8)
    return np.concatenate(pts), np.concatenate(cols)


@dataclass
class RunDownloads:
    """The files the Video -> 3D tab offers (paths inside the session folder; None when absent).

    Attributes:
        model: the GLB shown in the ``Model3D`` (the mesh when there is one, else the points).
        ply: the point cloud PLY.
        glb: the mesh GLB.
        colmap: the COLMAP text model, zipped.
        trajectory: the TUM trajectory.
        archive: the whole output folder, zipped.
    """

    model: Path | None = None
    ply: Path | None = None
    glb: Path | None = None
    colmap: Path | None = None
    trajectory: Path | None = None
    archive: Path | None = None

    def files(self) -> list[Path]:
        return [p for p in (self.ply, self.glb, self.colmap, self.trajectory, self.archive) if p is not None]


def make_downloads(run: RunResult, folder: str | Path) -> RunDownloads:
    """Zip and gather a finished run's outputs into ``folder`` (beside the output folder)."""
    from forward3d.io.export import reconstruction_point_cloud

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    files = run.files
    d = RunDownloads(ply=files.get("ply"), glb=files.get("glb"), trajectory=files.get("tum"))
    if files.get("colmap") is not None:
        d.colmap = zip_folder(files["colmap"], folder / "colmap.zip", arcname="colmap")
    if run.out is not None:
        d.archive = zip_folder(run.out, folder / "forward3d-output.zip", arcname="forward3d-output")
    if d.glb is not None:
        d.model = d.glb
    else:
        pc = reconstruction_point_cloud(run.recon)
        if pc is not None and len(pc):
            d.model = preview_glb(pc.points, pc.colors, folder / "points.glb")
    return d
