"""Open3D building blocks of the ``rgbd`` pipeline: a TSDF voxel-block grid and RGB-D odometry.

Both wrap the tensor API of open3d >= 0.17 (``open3d.t``); the legacy ``ScalableTSDFVolume`` is not
used (it returns empty meshes in open3d-cpu 0.20).

Pixel conventions (measured on open3d 0.20, see ``tests/test_rgbd.py``): ``VoxelBlockGrid.integrate``
projects a voxel to ``(u, v)`` and reads pixel ``floor(u), floor(v)``, i.e. pixel centres at +0.5 as in
forward3d, so it takes forward3d's ``K`` unchanged. The odometry kernels (vertex maps) put pixel
``(i, j)`` at ``(j, i)``, i.e. centres at integers, so they take ``K`` with ``cx, cy`` shifted by -0.5
(:func:`open3d_odometry_K`). Mixing the two up biases every pose by half a pixel.
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from forward3d.geometry.camera import unproject
from forward3d.types import Mesh, PointCloud

__all__ = ["import_open3d", "open3d_odometry_K", "TSDFVolume", "RGBDTracker", "ModelTracker", "TrackResult"]

log = logging.getLogger(__name__)


def import_open3d():
    """Import open3d, or raise ImportError naming the extra that installs it (open3d-cpu or open3d)."""
    from forward3d.optional import import_optional

    return import_optional("open3d", "rgbd", "the rgbd backend")


def _device(name: str):
    o3d = import_open3d()
    dev = o3d.core.Device(name)
    if dev.get_type() == o3d.core.Device.DeviceType.CUDA and not o3d.core.cuda.is_available():
        raise ValueError(f"rgbd device: {name!r} requested but this open3d build has no CUDA device; "
                         "use device='CPU:0'")
    return dev


def _tensor(x: np.ndarray, dtype=None, device=None):
    o3d = import_open3d()
    t = o3d.core.Tensor(np.ascontiguousarray(x))
    if dtype is not None:
        t = t.to(dtype)
    return t if device is None else t.to(device)


def open3d_odometry_K(K: np.ndarray) -> np.ndarray:
    """``[3, 3]`` forward3d ``K`` (pixel centres at +0.5) -> the ``K`` open3d's odometry expects."""
    Ko = np.array(K, dtype=np.float64, copy=True)
    Ko[0, 2] -= 0.5
    Ko[1, 2] -= 0.5
    return Ko


# --------------------------------------------------------------------------------------------------
# TSDF fusion
# --------------------------------------------------------------------------------------------------


def _colors_normals(attrs) -> tuple[np.ndarray | None, np.ndarray | None]:
    """uint8 colours and unit float32 normals (zero where degenerate) of an open3d tensor attribute
    map (``PointCloud.point`` or ``TriangleMesh.vertex``), each None when absent."""
    colors = normals = None
    if "colors" in attrs:
        colors = (np.clip(attrs.colors.cpu().numpy(), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    if "normals" in attrs:
        normals = attrs.normals.cpu().numpy().astype(np.float32)
        norm = np.linalg.norm(normals, axis=1, keepdims=True)
        normals = np.where(norm > 0, normals / np.maximum(norm, 1e-12), 0.0).astype(np.float32)
    return colors, normals


class TSDFVolume:
    """A sparse TSDF (``open3d.t.geometry.VoxelBlockGrid``) with colour.

    Memory grows with the observed surface only (blocks are allocated where depth lands; the hash map
    grows on demand from ``block_count``), never with the number of frames.

    Args:
        voxel_size: metres per voxel.
        sdf_trunc: truncation distance in metres (>= 2 voxels).
        block_resolution: voxels per block side.
        block_count: initial hash-map capacity in blocks.
        depth_min, depth_max: depth range in metres used for integration.
        device: open3d device string, ``"CPU:0"`` or ``"CUDA:0"``.
    """

    def __init__(self, voxel_size: float, sdf_trunc: float, block_resolution: int = 8,
                 block_count: int = 4096, depth_min: float = 0.1, depth_max: float = 8.0,
                 device: str = "CPU:0") -> None:
        o3d = import_open3d()
        o3c = o3d.core
        self.device = _device(device)
        self.voxel_size = float(voxel_size)
        self.trunc_multiplier = float(sdf_trunc) / float(voxel_size)
        self.depth_min = float(depth_min)
        self.depth_max = float(depth_max)
        self.grid = o3d.t.geometry.VoxelBlockGrid(
            attr_names=("tsdf", "weight", "color"),
            attr_dtypes=(o3c.float32, o3c.float32, o3c.float32),
            attr_channels=((1), (1), (3)),
            voxel_size=self.voxel_size,
            block_resolution=int(block_resolution),
            block_count=int(block_count),
            device=self.device,
        )
        self.num_integrated = 0

    @property
    def num_blocks(self) -> int:
        return int(self.grid.hashmap().size())

    def integrate(self, depth: np.ndarray, image: np.ndarray, K: np.ndarray, c2w: np.ndarray) -> None:
        """Fuse one frame.

        Args:
            depth: ``[H, W]`` float32 metric depth, 0 = invalid.
            image: ``[H, W, 3]`` uint8 RGB.
            K: ``[3, 3]`` forward3d intrinsics (pixel centres at +0.5).
            c2w: ``[4, 4]`` camera-to-world.
        """
        o3d = import_open3d()
        o3c = o3d.core
        dimg = o3d.t.geometry.Image(_tensor(depth.astype(np.float32), device=self.device))
        cimg = o3d.t.geometry.Image(_tensor(image.astype(np.float32) / 255.0, device=self.device))
        Kt = _tensor(K, o3c.float64)
        w2c = _tensor(np.linalg.inv(c2w), o3c.float64)
        blocks = self.grid.compute_unique_block_coordinates(dimg, Kt, w2c, 1.0, self.depth_max,
                                                            self.trunc_multiplier)
        self.grid.integrate(blocks, dimg, cimg, Kt, Kt, w2c, 1.0, self.depth_max, self.trunc_multiplier)
        self.num_integrated += 1

    def point_cloud(self, weight_threshold: float = 1.0) -> PointCloud:
        """Surface points (zero crossings) with colours and normals, world frame."""
        if self.num_integrated == 0:
            return PointCloud(np.zeros((0, 3), np.float32))
        pc = self.grid.extract_point_cloud(float(weight_threshold))
        pts = pc.point.positions.cpu().numpy().astype(np.float32)
        if len(pts) == 0:
            return PointCloud(np.zeros((0, 3), np.float32))
        return PointCloud(pts, *_colors_normals(pc.point))

    def mesh(self, weight_threshold: float = 1.0) -> Mesh:
        """Marching-cubes triangle mesh with vertex colours and normals, world frame."""
        if self.num_integrated == 0:
            return Mesh(np.zeros((0, 3), np.float32), np.zeros((0, 3), np.int64))
        m = self.grid.extract_triangle_mesh(float(weight_threshold))
        verts = m.vertex.positions.cpu().numpy().astype(np.float32)
        if len(verts) == 0 or "indices" not in m.triangle:
            return Mesh(np.zeros((0, 3), np.float32), np.zeros((0, 3), np.int64))
        faces = m.triangle.indices.cpu().numpy().astype(np.int64)
        return Mesh(verts, faces, *_colors_normals(m.vertex))


# --------------------------------------------------------------------------------------------------
# Tracking
# --------------------------------------------------------------------------------------------------


@dataclass
class TrackResult:
    """Outcome of aligning a source frame to a target frame.

    Attributes:
        ok: False when the solver failed (singular system) or the fitness is below the threshold.
        src_to_tgt: ``[4, 4]`` source-camera -> target-camera transform (``w2c_tgt @ c2w_src``).
        fitness: fraction of source pixels with an inlier correspondence after refinement.
        rmse: inlier residual RMSE (metres) of the final step.
        reason: why it failed, "" when ok.
    """

    ok: bool
    src_to_tgt: np.ndarray
    fitness: float = 0.0
    rmse: float = float("inf")
    reason: str = ""


def _odometry_rmse(result) -> float:
    """Inlier RMSE (metres) of an open3d odometry result: its ``inlier_rmse`` is the mean *squared*
    residual (measured with open3d 0.20: Gaussian depth noise of 2 and 5 mm gives 1.5e-6 and 9.4e-6,
    a ratio of 6.25 = 2.5^2), so its square root is the RMSE."""
    return math.sqrt(max(float(result.inlier_rmse), 0.0))


class RGBDTracker:
    """Projective point-to-plane RGB-D odometry: open3d multi-scale odometry, then a fine refinement.

    The multi-scale step (``rgbd_odometry_multi_scale``, coarse to fine, loose outlier thresholds)
    gives a robust initial alignment; a few extra full-resolution point-to-plane steps with tight
    thresholds remove its silhouette bias (measured on the synthetic room: 2 mm -> 0.2 mm per pair).

    Args:
        depth_max: depth beyond this is ignored for tracking (metres).
        iterations: Gauss-Newton iterations per pyramid level, coarse to fine.
        refine_iterations: extra full-resolution steps with ``refine_trunc`` / ``refine_huber``.
        refine_trunc, refine_huber: outlier cut-off and Huber delta (metres) of the refinement.
        min_fitness: below this inlier fraction the result is a failure.
        bilateral: optional ``(kernel, sigma_depth, sigma_space)`` bilateral filter of the depth used
            for tracking (noisy sensors); None = raw depth.
        device: open3d device string.
    """

    def __init__(self, depth_max: float = 4.0, iterations: tuple[int, ...] = (10, 5, 3),
                 refine_iterations: int = 6, refine_trunc: float = 0.03, refine_huber: float = 0.01,
                 min_fitness: float = 0.25, bilateral: tuple[int, float, float] | None = None,
                 normal_sigma_depth: float = 0.1, device: str = "CPU:0") -> None:
        o3d = import_open3d()
        self._od = o3d.t.pipelines.odometry
        self.device = _device(device)
        self.depth_max = float(depth_max)
        self.criteria = [self._od.OdometryConvergenceCriteria(int(n)) for n in iterations]
        self.refine_iterations = int(refine_iterations)
        self.refine_trunc = float(refine_trunc)
        self.refine_huber = float(refine_huber)
        self.min_fitness = float(min_fitness)
        self.bilateral = bilateral
        self.normal_sigma_depth = float(normal_sigma_depth)
        self._K_cache: tuple[bytes, object] | None = None

    def _K(self, K: np.ndarray):
        key = np.asarray(K, np.float64).tobytes()
        if self._K_cache is None or self._K_cache[0] != key:
            o3c = import_open3d().core
            self._K_cache = (key, _tensor(open3d_odometry_K(K), o3c.float64))
        return self._K_cache[1]

    def prepare(self, depth: np.ndarray, image: np.ndarray, K: np.ndarray):
        """Build the open3d RGB-D image and vertex/normal maps of a frame (done once per frame).

        Returns an opaque object for :meth:`align` (as source or target).
        """
        o3d = import_open3d()
        d = np.where(depth <= self.depth_max, depth, 0.0).astype(np.float32)
        dimg = o3d.t.geometry.Image(_tensor(d, device=self.device))
        if self.bilateral is not None:
            k, sd, ss = self.bilateral
            dimg = dimg.filter_bilateral(int(k), float(sd), float(ss))
        cimg = o3d.t.geometry.Image(_tensor(image.astype(np.float32) / 255.0, device=self.device))
        Ko = self._K(K)
        vmap = dimg.create_vertex_map(Ko)
        # normals from a smoothed depth: raw-depth normals of noisy sensors bias the refinement
        smooth = dimg.filter_bilateral(5, self.normal_sigma_depth, 10.0) if self.normal_sigma_depth > 0 else dimg
        nmap = smooth.create_vertex_map(Ko).create_normal_map()
        return {"rgbd": o3d.t.geometry.RGBDImage(cimg, dimg), "vertex": vmap.as_tensor(),
                "normal": nmap.as_tensor(), "K": Ko}

    def align(self, source, target, init_src_to_tgt: np.ndarray) -> TrackResult:
        """Align ``source`` to ``target`` (both from :meth:`prepare`) from an initial guess."""
        o3c = import_open3d().core
        od = self._od
        T = _tensor(init_src_to_tgt, o3c.float64)
        try:
            res = od.rgbd_odometry_multi_scale(source["rgbd"], target["rgbd"], source["K"], T, 1.0,
                                               self.depth_max, self.criteria, od.Method.PointToPlane)
            T = res.transformation
            fitness, rmse = float(res.fitness), _odometry_rmse(res)
            for _ in range(self.refine_iterations):
                step = od.compute_odometry_result_point_to_plane(
                    source["vertex"], target["vertex"], target["normal"], source["K"], T,
                    self.refine_trunc, self.refine_huber)
                T = step.transformation @ T
                fitness, rmse = float(step.fitness), _odometry_rmse(step)
        except RuntimeError as exc:  # "Singular 6x6 linear system detected, tracking failed."
            msg = re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).strip()
            reason = ("singular system (too few correspondences)" if "Singular" in msg
                      else f"open3d error: {msg.splitlines()[-1][-160:] if msg else type(exc).__name__}")
            return TrackResult(False, np.asarray(init_src_to_tgt, np.float64), reason=reason)
        X = T.cpu().numpy().astype(np.float64)
        if not np.isfinite(X).all():
            return TrackResult(False, np.asarray(init_src_to_tgt, np.float64), reason="non-finite transform")
        if fitness < self.min_fitness:
            return TrackResult(False, X, fitness, rmse, reason=f"fitness {fitness:.2f} < {self.min_fitness:.2f}")
        return TrackResult(True, X, fitness, rmse)


class ModelTracker:
    """Frame-to-model refinement: point-to-plane ICP of a frame's depth against the fused surface.

    The model is the TSDF's zero-crossing point cloud with normals (``VoxelBlockGrid.extract_point_cloud``,
    unbiased, see ``tests/test_rgbd.py``), cached and refreshed by the caller (:meth:`refresh`) and
    cropped per frame to the predicted frustum. ``VoxelBlockGrid.ray_cast`` is not used: in open3d 0.20
    its first call on a grid under-allocates the range map (part of the image comes back empty or
    wrong), it takes pixel centres at integers (forward3d's ``K`` must be shifted by -0.5 as for the
    odometry) and even then its depth lies 2-3 mm behind a fused plane.

    Args:
        voxel_sizes: model downsampling per ICP scale, coarse to fine (metres; the source is the
            frame's depth sub-sampled by ``stride * 2**k`` pixels, ``k = 0`` at the finest scale).
        distance_factor: correspondence distance = this * the scale's voxel size.
        iterations: ICP iterations per scale.
        depth_max: depth beyond this is not used (metres).
        source_points: the finest-scale pixel stride is chosen for about this many source points
            (``round(sqrt(H * W / source_points))``, at least 1).
        min_fitness: below this inlier fraction (of the source points) the refinement is rejected.
        max_rmse: above this inlier RMSE (metres) of the finest scale the refinement is rejected.
        max_translation, max_rotation_deg: corrections larger than this are rejected.
        min_model_points: fewer model points in the frustum than this: no refinement.
        device: open3d device string.
    """

    def __init__(self, voxel_sizes: tuple[float, ...] = (0.04, 0.02, 0.01), distance_factor: float = 1.5,
                 iterations: tuple[int, ...] = (10, 6, 4), depth_max: float = 4.0, source_points: int = 4800,
                 min_fitness: float = 0.3, max_rmse: float = 0.02, max_translation: float = 0.05,
                 max_rotation_deg: float = 3.0, min_model_points: int = 500, device: str = "CPU:0") -> None:
        if len(voxel_sizes) != len(iterations) or not voxel_sizes:
            raise ValueError(f"ModelTracker: expected as many iterations as voxel_sizes, found "
                             f"{len(iterations)} and {len(voxel_sizes)}")
        o3d = import_open3d()
        self._reg = o3d.t.pipelines.registration
        self.device = _device(device)
        self.voxel_sizes = [float(v) for v in voxel_sizes]
        self.distances = [float(distance_factor) * v for v in self.voxel_sizes]
        self.criteria = [self._reg.ICPConvergenceCriteria(1e-6, 1e-6, int(n)) for n in iterations]
        self.depth_max = float(depth_max)
        self.source_points = int(source_points)
        self.min_fitness = float(min_fitness)
        self.max_rmse = float(max_rmse)
        self.max_translation = float(max_translation)
        self.max_rotation_deg = float(max_rotation_deg)
        self.min_model_points = int(min_model_points)
        self.levels: list[tuple[np.ndarray, np.ndarray]] = []  # per scale: [M, 3] points, [M, 3] normals (world)

    def refresh(self, volume: TSDFVolume, weight_threshold: float = 1.0) -> None:
        """Re-extract the model surface from ``volume`` (points with a TSDF weight above the threshold).

        The surface is voxel-downsampled once here to every ICP scale (the per-frame work is a
        frustum crop of these levels).
        """
        o3d = import_open3d()
        pc = volume.point_cloud(weight_threshold)
        self.levels = []
        if pc.normals is None or len(pc) == 0:
            return
        keep = np.linalg.norm(pc.normals, axis=1) > 0.5
        cloud = o3d.t.geometry.PointCloud()
        cloud.point.positions = _tensor(pc.points[keep])
        cloud.point.normals = _tensor(pc.normals[keep])
        made: dict[float, tuple[np.ndarray, np.ndarray]] = {}
        for vs in self.voxel_sizes:
            # never finer than the TSDF voxel (its zero crossings are up to 3 per voxel); equal levels are shared
            key = max(vs, volume.voxel_size)
            if key not in made:
                down = cloud.voxel_down_sample(key)
                p = down.point.positions.numpy().astype(np.float32)
                n = down.point.normals.numpy().astype(np.float32)
                norm = np.linalg.norm(n, axis=1, keepdims=True)
                ok = norm[:, 0] > 0.5
                made[key] = (p[ok], n[ok] / norm[ok])
            self.levels.append(made[key])

    @property
    def num_points(self) -> int:
        """Model points at the finest scale."""
        return len(self.levels[-1][0]) if self.levels else 0

    def _frustum(self, points: np.ndarray, K: np.ndarray, w2c: np.ndarray, width: int, height: int,
                 zmax: float, margin: float = 0.1) -> np.ndarray:
        """``[M]`` bool: ``points`` ``[M, 3]`` inside the (slightly enlarged) frustum of ``w2c`` up to ``zmax``."""
        p = points @ w2c[:3, :3].T.astype(np.float32) + w2c[:3, 3].astype(np.float32)
        z = p[:, 2]
        ok = (z > 0.05) & (z < zmax)
        zs = np.where(ok, z, 1.0)
        u = K[0, 0] * p[:, 0] / zs + K[0, 2]
        v = K[1, 1] * p[:, 1] / zs + K[1, 2]
        mu, mv = margin * width, margin * height
        return ok & (u > -mu) & (u < width + mu) & (v > -mv) & (v < height + mv)

    def refine(self, depth: np.ndarray, K: np.ndarray, c2w_init: np.ndarray) -> TrackResult:
        """Refine ``c2w_init`` ``[4, 4]`` of a frame (``depth`` ``[H, W]``, 0 = invalid; forward3d ``K``).

        Returns a :class:`TrackResult` whose ``src_to_tgt`` is the refined camera-to-world; ``ok`` is
        False (with the reason) when there is too little model or the result fails the checks.
        """
        o3d = import_open3d()
        o3c = o3d.core
        reg = self._reg
        h, w = depth.shape
        init = np.asarray(c2w_init, np.float64)
        if not self.levels:
            return TrackResult(False, init, reason="no model surface yet")
        valid = (depth > 0) & (depth <= self.depth_max)
        if int(valid.sum()) < self.min_model_points:
            return TrackResult(False, init, reason=f"{int(valid.sum())} valid depth pixels")
        stride = max(1, int(round(float(np.sqrt(h * w / max(self.source_points, 1))))))
        w2c = np.linalg.inv(init)
        zmax = float(depth[valid].max()) + 2 * self.distances[0]
        T = _tensor(init, o3c.float64)
        fitness, rmse = 0.0, float("inf")
        n = len(self.levels)
        crops: dict[int, tuple[Any, Any]] = {}  # per shared level: the cropped target
        try:
            for i, ((pts, nrm), dist, crit) in enumerate(zip(self.levels, self.distances, self.criteria)):
                # source pyramid: the depth sub-sampled by `stride` at the finest scale, x2 per coarser one
                s = stride * 2 ** (n - 1 - i)
                v, u = np.nonzero(valid[s // 2::s, s // 2::s])
                z = depth[v * s + s // 2, u * s + s // 2].astype(np.float64)
                uv = np.stack([u * s + s // 2 + 0.5, v * s + s // 2 + 0.5], 1)  # pixel centres at +0.5
                source = o3d.t.geometry.PointCloud(self.device)
                source.point.positions = _tensor(unproject(uv, z, K), o3c.float32, self.device)
                if id(pts) not in crops:
                    sel = self._frustum(pts, K, w2c, w, h, zmax)
                    if int(sel.sum()) < self.min_model_points:
                        return TrackResult(False, init, reason=f"{int(sel.sum())} model points in view")
                    target = o3d.t.geometry.PointCloud(self.device)
                    target.point.positions = _tensor(pts[sel], o3c.float32, self.device)
                    target.point.normals = _tensor(nrm[sel], o3c.float32, self.device)
                    crops[id(pts)] = (pts, target)
                target = crops[id(pts)][1]
                res = reg.icp(source, target, dist, T,
                              reg.TransformationEstimationPointToPlane(), crit)
                T, fitness, rmse = res.transformation, float(res.fitness), float(res.inlier_rmse)
        except RuntimeError as exc:
            msg = re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).strip()
            return TrackResult(False, init, reason=f"icp: {msg.splitlines()[-1][-160:] if msg else type(exc).__name__}")
        X = T.cpu().numpy().astype(np.float64)
        if not np.isfinite(X).all():
            return TrackResult(False, init, reason="non-finite transform")
        delta = np.linalg.inv(init) @ X
        dt = float(np.linalg.norm(delta[:3, 3]))
        dr = float(np.degrees(np.arccos(np.clip((np.trace(delta[:3, :3]) - 1.0) / 2.0, -1.0, 1.0))))
        if fitness < self.min_fitness or rmse > self.max_rmse:
            return TrackResult(False, init, fitness, rmse, reason=f"icp fitness {fitness:.2f}, rmse {rmse * 1000:.1f} mm")
        if dt > self.max_translation or dr > self.max_rotation_deg:
            return TrackResult(False, init, fitness, rmse, reason=f"correction {dt * 100:.1f} cm / {dr:.1f} deg too large")
        return TrackResult(True, X, fitness, rmse)
