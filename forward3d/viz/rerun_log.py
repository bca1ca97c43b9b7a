"""A reconstruction as a rerun recording (``forward3d recon ... --rerun out.rrd``, extra ``[rerun]``).

:class:`RerunRecorder` takes the same streaming :class:`~forward3d.types.Update` s as the live viewer
(``push``) and the final :class:`~forward3d.types.Reconstruction` (``finish``) and writes them on a
``frame`` timeline (sequence = frame index) plus a ``time`` timeline (seconds, when the frames have
timestamps):

- ``world``: OpenCV axes declared as rerun's RDF (X right, Y down, Z forward), so no axis is flipped;
- ``world/camera``: the frame's pose (``Transform3D`` = c2w), its ``Pinhole`` (K for the logged image
  size), its picture (``world/camera/image``) and its depth (``world/camera/depth``, metres along the
  optical axis, computed from the frame's world point map when the back-end gives one as ``[H, W, 3]``);
- ``world/points``: the frame's world points (colours, at most ``max_points_per_frame``);
- ``world/trajectory``: the camera path so far (re-logged whole when loop closure moves past poses);
- ``status/...``: frames/s and tracking (1 = tracked, 0 = lost) as scalars, failures as a warning log;
- after the run, static: ``world/reconstruction/points`` and ``world/reconstruction/mesh`` (the fused
  geometry) and ``world/reconstruction/trajectory`` (the final poses of every frame).

The file is written to a temporary name next to ``path`` and renamed when the recording is complete,
so an interrupted run never leaves a half-written ``.rrd`` under the final name.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from forward3d.types import Reconstruction, Update

__all__ = ["RerunRecorder", "import_rerun"]

logger = logging.getLogger(__name__)


def import_rerun() -> Any:
    """``rerun`` or an ImportError naming the extra to install."""
    from forward3d.optional import import_optional

    return import_optional("rerun", "rerun", "--rerun")


def _depth_from_point_map(points: np.ndarray, c2w: np.ndarray) -> np.ndarray:
    """``[H, W, 3]`` world points + ``[4, 4]`` c2w -> ``[H, W]`` float32 z in the camera (0 = invalid)."""
    from forward3d.geometry.camera import world_to_camera

    z = world_to_camera(points, c2w)[..., 2]
    z[~np.isfinite(z) | (z < 0)] = 0.0
    return z.astype(np.float32)


class RerunRecorder:
    """Write the updates and the final result of a run to ``path`` (an ``.rrd`` rerun recording).

    Args:
        path: output ``.rrd`` file.
        app_id: the recording's application id (shown by the rerun viewer).
        max_points_per_frame: a frame's points beyond this are subsampled (fixed seed) to bound the file.
    """

    def __init__(self, path: str | os.PathLike, app_id: str = "forward3d", max_points_per_frame: int = 50_000):
        rr = import_rerun()
        self.rr = rr
        self.path = Path(path)
        if self.path.suffix != ".rrd":
            raise ValueError(f"--rerun {self.path}: expected a file name ending in .rrd")
        if not self.path.parent.is_dir():
            raise ValueError(f"--rerun {self.path}: the folder {self.path.parent} does not exist")
        self._tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        self.max_points_per_frame = int(max_points_per_frame)
        self.rec = rr.RecordingStream(app_id)
        self.rec.save(str(self._tmp))
        self.rec.log("world", rr.ViewCoordinates.RDF, static=True)
        self._positions: list[np.ndarray] = []
        self._rng = np.random.default_rng(0)
        self.num_updates = 0
        self._closed = False

    # -- streaming ---------------------------------------------------------------------------------
    def push(self, update: Update) -> None:
        """Log one frame's result on the timeline (the callback of :func:`forward3d.api.reconstruct`)."""
        rr, rec = self.rr, self.rec
        rec.set_time("frame", sequence=int(update.index))
        c2w = update.c2w
        rec.log("world/camera", rr.Transform3D(translation=c2w[:3, 3], mat3x3=c2w[:3, :3]))
        w, h = update.image_size
        K = update.K
        if update.image is not None:
            ih, iw = update.image.shape[:2]
            if (iw, ih) != (w, h):  # a thumbnail: the pinhole must describe the logged image
                from forward3d.geometry.camera import scale_K

                K = scale_K(K, iw / w, ih / h)
                w, h = iw, ih
        rec.log("world/camera", rr.Pinhole(image_from_camera=K, resolution=[w, h], camera_xyz=rr.ViewCoordinates.RDF))
        if update.image is not None:
            rec.log("world/camera/image", rr.Image(np.ascontiguousarray(update.image)))
        if update.points is not None:
            pts = np.asarray(update.points, np.float32)
            cols = None if update.colors is None else np.asarray(update.colors, np.uint8)
            if pts.ndim == 3:
                rec.log("world/camera/depth", rr.DepthImage(_depth_from_point_map(pts, c2w), meter=1.0))
                pts = pts.reshape(-1, 3)
                cols = None if cols is None else cols.reshape(-1, 3)
            keep = np.isfinite(pts).all(axis=1)
            if update.confidence is not None:
                keep &= np.asarray(update.confidence).reshape(-1) > 0
            idx = np.flatnonzero(keep)
            if len(idx) > self.max_points_per_frame:
                idx = np.sort(self._rng.choice(idx, self.max_points_per_frame, replace=False))
            rec.log("world/points", rr.Points3D(pts[idx], colors=None if cols is None else cols[idx]))
        if update.trajectory is not None:  # loop closure moved past poses: the corrected path replaces ours
            self._positions = [p[:3, 3].copy() for p in np.asarray(update.trajectory)]
        else:
            self._positions.append(c2w[:3, 3].copy())
        if len(self._positions) > 1:
            rec.log("world/trajectory", rr.LineStrips3D([np.asarray(self._positions)], colors=[[255, 140, 0]]))
        rec.log("status/frames_per_s", rr.Scalars(float(update.frames_per_s)))
        rec.log("status/tracking_ok", rr.Scalars(1.0 if update.tracking_ok else 0.0))
        if not update.tracking_ok:
            rec.log("status/log", rr.TextLog(f"frame {update.index} ({update.name}): tracking failed"
                                             f"{': ' + update.status.reason if update.status.reason else ''}", level="WARN"))
        self.num_updates += 1

    # -- end of the run ------------------------------------------------------------------------------
    def finish(self, recon: Reconstruction) -> Path:
        """Log the final geometry and trajectory (static), close the recording and move it to ``path``."""
        rr, rec = self.rr, self.rec
        if self.num_updates == 0:  # a non-streaming back-end: its frames on the timeline now
            self._log_frames(recon)
        if recon.points is not None and len(recon.points):
            pc = recon.points
            rec.log("world/reconstruction/points", rr.Points3D(pc.points, colors=pc.colors), static=True)
        if recon.mesh is not None and len(recon.mesh.faces):
            m = recon.mesh
            rec.log("world/reconstruction/mesh",
                    rr.Mesh3D(vertex_positions=m.vertices, triangle_indices=m.faces,
                              vertex_colors=m.vertex_colors, vertex_normals=m.vertex_normals), static=True)
        if len(recon.c2w) > 1:
            rec.log("world/reconstruction/trajectory",
                    rr.LineStrips3D([recon.c2w[:, :3, 3]], colors=[[0, 160, 255]]), static=True)
        return self.close()

    def _log_frames(self, recon: Reconstruction) -> None:
        for i in range(len(recon.c2w)):
            pts = cols = conf = None
            if recon.point_maps is not None:
                pts = recon.point_maps[i]
                cols = None if recon.point_map_colors is None else recon.point_map_colors[i]
                conf = None if recon.confidences is None else recon.confidences[i]
            status = recon.frame_status[i] if i < len(recon.frame_status) else None
            name = recon.frame_names[i] if i < len(recon.frame_names) else str(i)
            kwargs = {} if status is None else {"status": status}
            self.push(Update(index=i, name=name, c2w=recon.c2w[i], K=recon.K[i], image_size=recon.image_size,
                             points=pts, colors=cols, confidence=conf, num_frames=i + 1, **kwargs))

    def close(self) -> Path:
        """Flush and close the recording; the complete file is renamed to ``path``."""
        if self._closed:
            return self.path
        self._closed = True
        self.rec.flush()
        self.rec.disconnect()  # closes the file sink
        os.replace(self._tmp, self.path)
        logger.info("rerun recording: %s (%d frames)", self.path, self.num_updates)
        return self.path

    def abort(self) -> None:
        """Drop the recording (the run failed): the temporary file is removed, ``path`` is not written."""
        if self._closed:
            return
        self._closed = True
        try:
            self.rec.disconnect()
        finally:
            self._tmp.unlink(missing_ok=True)
