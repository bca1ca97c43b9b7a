"""The weight-free RGB back-end ``sfm``: structure from motion (pycolmap) + optional dense stereo.

Frames are spooled to a temporary folder; SfM (:mod:`forward3d.sfm`) poses keyframes and registers every
other frame (PnP, else interpolation); with ``--poses FILE`` the known poses are used instead. Dense
geometry comes from :func:`forward3d.mvs.dense_reconstruct` when ``dense`` is ``mvs`` (or ``auto`` and
``forward3d.mvs`` is installed); otherwise the sparse SfM points are the result's ``points``.

Example::

    from forward3d.io.sources import open_frames
    from forward3d.pipelines import get_backend

    recon = get_backend("sfm", dense="none").run(open_frames("video.mp4", size=640))
    recon.c2w, recon.frame_status, recon.points, recon.metadata["mean_reprojection_error_px"]
"""

from __future__ import annotations

import dataclasses
import importlib.util
import logging
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Literal

import numpy as np

from forward3d.config import config_to_dict, option
from forward3d.mvs.config import MVSConfig
from forward3d.pipelines.base import Backend, Capabilities, UpdateCallback
from forward3d.sfm.config import SfMConfig
from forward3d.types import Frame, FrameStatus, Mesh, PointCloud, Reconstruction, Update

__all__ = ["SfMBackendConfig", "SfMBackend", "known_poses", "mvs_available"]

log = logging.getLogger(__name__)


def mvs_available() -> bool:
    """Whether the dense stereo module ``forward3d.mvs`` is installed."""
    return importlib.util.find_spec("forward3d.mvs") is not None


@dataclass
class SfMBackendConfig(SfMConfig):
    """Options of the ``sfm`` back-end (plus every structure-from-motion option below).

    Attributes:
        poses: known poses instead of SfM: a TUM trajectory, a COLMAP text model folder, a nerfstudio
            transforms.json, a Redwood .log or a text file with one row-major 4x4 c2w per line (16
            numbers). Matched to the frames by image name, timestamp, else order; taken as metric.
        dense: dense geometry: ``mvs`` (forward3d.mvs multi-view stereo and fusion), ``none`` (the sparse
            SfM points), ``auto`` (mvs when forward3d.mvs is installed).
        device: dense stereo device: auto (CUDA when torch sees a GPU), cpu or cuda[:N].
        mvs: the dense stereo options (forward3d.mvs.MVSConfig), on the CLI as --mvs-*
            (e.g. --mvs-num-src 5 --mvs-fusion tsdf); --mvs-device, when not auto, wins over --device.
    """

    poses: str | None = option(None, metavar="FILE")
    dense: Literal["auto", "mvs", "none"] = "auto"
    device: str = "auto"
    mvs: MVSConfig = field(default_factory=MVSConfig)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.dense not in ("auto", "mvs", "none"):
            raise ValueError(f"SfMBackendConfig.dense: expected 'auto', 'mvs' or 'none', found {self.dense!r}")


def known_poses(spooled: Any, cfg: SfMBackendConfig) -> tuple[np.ndarray, np.ndarray, PointCloud | None]:
    """``(c2w [N, 4, 4], K [N, 3, 3], points or None)`` of the spooled frames from ``cfg.poses``.

    Intrinsics: the pose file's (rescaled to the frames), else ``intrinsics_file``, else the frames'.

    Raises:
        ValueError: a frame without a pose, or no intrinsics anywhere.
    """
    from forward3d.io.poses import match_poses, read_pose_file
    from forward3d.sfm import read_camera_file

    pf = read_pose_file(cfg.poses)
    idx = match_poses(pf, spooled.frame_names, spooled.timestamps, where=f"--poses {cfg.poses}")
    c2w = pf.c2w[idx]
    w, h = spooled.size
    if pf.K is not None:
        sizes = np.asarray(pf.image_sizes)[idx].astype(np.float64)
        sx, sy = w / np.maximum(sizes[:, 0], 1), h / np.maximum(sizes[:, 1], 1)
        K = pf.K[idx].copy()
        K[:, 0] *= sx[:, None]
        K[:, 1] *= sy[:, None]
    elif cfg.intrinsics_file:
        K = np.tile(read_camera_file(cfg.intrinsics_file, w, h), (len(idx), 1, 1))
    elif all(k is not None for k in spooled.K):
        K = np.stack(spooled.K)
    else:
        raise ValueError(f"--poses {cfg.poses}: the {pf.format} file has no intrinsics and the frames carry none: "
                         "give --intrinsics FX FY CX CY or --intrinsics-file JSON")
    return c2w, K, pf.points


class SfMBackend(Backend):
    """Structure from motion (+ dense stereo) for RGB input without learned weights.

    Args:
        config: an :class:`SfMBackendConfig`; keyword overrides are applied on top.
    """

    name = "sfm"
    description = "weight-free RGB: structure from motion (pycolmap) + dense multi-view stereo (forward3d.mvs)"
    config_cls = SfMBackendConfig
    capabilities = Capabilities(uses_depth=True, metric_scale="with_depth", outputs=frozenset({"cameras", "points", "mesh"}))

    def run(self, frames: Iterable[Frame], config: SfMBackendConfig | None = None, *, progress: bool = True,
            callback: UpdateCallback | None = None) -> Reconstruction:
        """Reconstruct ``frames`` (consumed once; spooled to a temporary folder).

        Returns:
            a :class:`Reconstruction` with a camera for every frame (``frame_status``: ``registered`` by SfM
            or PnP, ``interpolated``, or ``given`` with ``--poses``; keyframes = the SfM images), ``points``
            (dense with mvs, else the sparse SfM points), ``mesh`` (mvs with a mesh), ``timings`` and
            ``metadata`` (SfM counts, reprojection error, camera, options). ``callback`` receives one
            :class:`Update` per frame (its pose, status and the sparse points it sees) once SfM is done.

        Raises:
            ValueError: too few views, no texture, identical frames, no SfM model, unmatched poses.
            ImportError: pycolmap (``forward3d[sfm]``) or, with ``dense="mvs"``, forward3d.mvs missing.
        """
        from forward3d.sfm import choose_keyframes, run_sfm, spool_frames

        cfg = self.resolve_config(config)
        cfg.validate_sfm()
        dense = cfg.dense
        if dense == "auto":
            dense = "mvs" if mvs_available() else "none"
        elif dense == "mvs" and not mvs_available():
            raise ImportError("sfm --dense mvs: forward3d.mvs (the dense stereo module) is not installed here; "
                              "use --dense none for the sparse points")
        t0 = time.perf_counter()
        where = str(getattr(frames, "path", "") or "input")
        with tempfile.TemporaryDirectory(prefix="forward3d-sfm-") as tmp:
            spooled = spool_frames(frames, tmp, progress, where=where, keep_depth=cfg.fit_depth and not cfg.poses)
            timings = {"read_s": time.perf_counter() - t0}
            meta: dict[str, Any] = {"config": config_to_dict(cfg), "dense": dense}
            if cfg.poses:
                c2w, K, points = known_poses(spooled, cfg)
                keys = choose_keyframes(spooled, cfg)
                status = [FrameStatus("given", f"--poses {Path(cfg.poses).name}", i in keys) for i in range(len(spooled))]
                visibility, metric, depth_scales = None, True, None
                meta["poses"] = str(cfg.poses)
            else:
                res = run_sfm(spooled, cfg, tmp, progress)
                c2w, K, points, keys, status = res.c2w, res.K, res.points, res.keyframes, res.status
                visibility, metric, depth_scales = res.visibility, res.metric, res.depth_scales
                timings.update(res.timings)
                meta.update(res.metadata)
                meta["camera"] = res.camera
            mesh: Mesh | None = None
            sparse = points
            if dense == "mvs":
                points, mesh, dense_meta = self._dense(spooled, keys, status, c2w, K, points, visibility, cfg, progress)
                timings["dense_s"] = dense_meta.pop("seconds")
                meta.update(dense_meta)
        n = len(c2w)
        timings["total_s"] = time.perf_counter() - t0
        timings["frames_per_s"] = n / max(timings["total_s"], 1e-9)
        meta["keyframes"] = list(keys)
        if callback is not None:  # a batch back-end: the per-frame updates come once everything is solved
            for i in range(n):
                seen = None if visibility is None or sparse is None else visibility[i]
                callback(Update(i, spooled.frame_names[i], c2w[i], K[i], spooled.size, status[i],
                                points=None if seen is None else sparse.points[seen],
                                colors=None if seen is None or sparse.colors is None else sparse.colors[seen],
                                num_frames=i + 1, frames_per_s=timings["frames_per_s"],
                                trajectory=c2w if i == n - 1 else None))
        return Reconstruction(c2w, K, spooled.size, frame_names=spooled.frame_names, timestamps=spooled.timestamps,
                              points=points, mesh=mesh, backend=self.name, metric_scale=metric, depth_scales=depth_scales,
                              frame_status=status, timings=timings, interrupted=spooled.interrupted, metadata=meta)

    @staticmethod
    def _dense(spooled: Any, keys: list[int], status: list[FrameStatus], c2w: np.ndarray, K: np.ndarray,
               points: PointCloud | None, visibility: list[np.ndarray] | None, cfg: SfMBackendConfig,
               progress: bool) -> tuple[PointCloud | None, Mesh | None, dict[str, Any]]:
        """Dense stereo over the keyframes with a real pose (not interpolated) through forward3d.mvs."""
        from forward3d.mvs import dense_reconstruct

        views = [k for k in keys if status[k].state != "interpolated"]
        mvs_cfg = cfg.mvs if cfg.mvs.device != "auto" else dataclasses.replace(cfg.mvs, device=cfg.device)
        t = time.perf_counter()
        res = dense_reconstruct([spooled.image(k) for k in views], K[views], c2w[views],
                                sparse_points=None if points is None or not len(points) else points.points.astype(np.float64),
                                sparse_visibility=None if visibility is None else [visibility[k] for k in views],
                                depth_ranges=None, config=mvs_cfg, progress=progress)
        meta = {"seconds": time.perf_counter() - t, "dense_views": len(views),
                "sparse_points": 0 if points is None else len(points)}
        return res.points, res.mesh, meta
