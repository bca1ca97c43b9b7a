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

import itertools
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
    """A sparse TSDF (``open3d.t.geometry.VoxelBlockGrid``) with colour, optionally with a block budget.

    Memory grows with the observed surface only (blocks are allocated where depth lands; the hash map
    grows on demand from ``block_count``), never with the number of frames. With ``max_blocks`` the
    resident blocks are bounded too: when the blocks a frame needs would take the grid past
    ``max_blocks``, the blocks updated least recently (the farthest from the camera among equals;
    never those the frame updates) are first written to a
    :class:`~forward3d.pipelines.spool.BlockSpool` on disk and dropped from the grid, so that
    ``keep_fraction * max_blocks`` are resident after the integration. :meth:`point_cloud` and :meth:`mesh` then merge everything back,
    one spatial tile of blocks at a time: a block that was streamed out and later allocated again
    (the camera came back) is combined with its spooled copies by TSDF weight, which is what
    integrating all its frames into one block would have given.

    Args:
        voxel_size: metres per voxel.
        sdf_trunc: truncation distance in metres (>= 2 voxels).
        block_resolution: voxels per block side.
        block_count: initial hash-map capacity in blocks.
        depth_min, depth_max: depth range in metres used for integration.
        device: open3d device string, ``"CPU:0"`` or ``"CUDA:0"``.
        max_blocks: resident block budget (0 = unbounded).
        keep_fraction: streaming out stops at this fraction of ``max_blocks`` (fewer, larger spools).
        spool_dir: folder of the spooled blocks (kept); None = a temporary folder, deleted with the volume.
        spool_tile: blocks per side of a spool tile (the unit of the final merge).
    """

    def __init__(self, voxel_size: float, sdf_trunc: float, block_resolution: int = 8,
                 block_count: int = 4096, depth_min: float = 0.1, depth_max: float = 8.0,
                 device: str = "CPU:0", max_blocks: int = 0, keep_fraction: float = 0.75,
                 spool_dir: str | None = None, spool_tile: int = 16) -> None:
        if int(max_blocks) < 0 or not 0.0 < keep_fraction <= 1.0:
            raise ValueError(f"TSDFVolume: expected max_blocks >= 0 and keep_fraction in (0, 1], found "
                             f"{max_blocks} and {keep_fraction}")
        self.device = _device(device)
        self.voxel_size = float(voxel_size)
        self.trunc_multiplier = float(sdf_trunc) / float(voxel_size)
        self.depth_min = float(depth_min)
        self.depth_max = float(depth_max)
        self.block_resolution = int(block_resolution)
        self.block_count = int(block_count)
        # a budgeted grid's hash map is allocated once for the budget (streaming out keeps it there)
        self.grid = self._new_grid(max(self.block_count, int(max_blocks)))
        self.num_integrated = 0
        self.max_blocks = int(max_blocks)
        self.keep_fraction = float(keep_fraction)
        self.spool_dir = spool_dir
        self.spool_tile = int(spool_tile)
        self.spool = None  # BlockSpool once blocks were streamed out
        self.peak_blocks = 0  # most resident blocks right after an integration
        self.stream_outs = 0  # how many times blocks were streamed out
        self._warned = False
        self._last_used = np.zeros(0, np.int64)  # per hash-map buffer slot: integration of its last update

    def _new_grid(self, block_count: int):
        o3d = import_open3d()
        o3c = o3d.core
        return o3d.t.geometry.VoxelBlockGrid(
            attr_names=("tsdf", "weight", "color"),
            attr_dtypes=(o3c.float32, o3c.float32, o3c.float32),
            attr_channels=((1), (1), (3)),
            voxel_size=self.voxel_size,
            block_resolution=self.block_resolution,
            block_count=max(1, int(block_count)),
            device=self.device,
        )

    @property
    def num_blocks(self) -> int:
        """Voxel blocks in memory (not counting the spooled ones)."""
        return int(self.grid.hashmap().size())

    @property
    def block_size(self) -> float:
        """Side of a voxel block in metres."""
        return self.voxel_size * self.block_resolution

    @property
    def spooled_blocks(self) -> int:
        """Blocks written to the spool so far (a block streamed out twice counts twice)."""
        return 0 if self.spool is None else self.spool.blocks_written

    def _blocks(self) -> tuple[np.ndarray, np.ndarray]:
        """The resident blocks: coordinates ``[n, 3]`` int32 and attributes ``[n, 5 R^3]`` float32
        (per block the tsdf ``R^3``, the weight ``R^3`` and the colour ``3 R^3``, voxel-major)."""
        hm = self.grid.hashmap()
        idx = self._slots(hm)
        keys = hm.key_tensor()[idx].cpu().numpy().astype(np.int32)
        vals = [hm.value_tensor(i)[idx].cpu().numpy().reshape(len(keys), -1) for i in range(3)]
        return keys, np.concatenate(vals, axis=1).astype(np.float32)

    @staticmethod
    def _slots(hm):
        """The hash map's active buffer indices (int64 open3d tensor), in :meth:`_blocks` order."""
        return hm.active_buf_indices().to(import_open3d().core.int64)

    def _stream_out(self, centre: np.ndarray, target: int, protect=None) -> None:
        """Write resident blocks to the spool and drop them until at most ``target`` are resident:
        the least recently updated first, among equals the farthest from ``centre`` ``[3]``;
        ``protect`` (open3d buffer indices: the blocks the next frame updates) are kept."""
        from forward3d.pipelines.spool import BlockSpool

        o3c = import_open3d().core
        hm = self.grid.hashmap()
        slots = self._slots(hm)
        keys = hm.key_tensor()[slots].cpu().numpy().astype(np.int32)
        dist = np.linalg.norm((keys + 0.5) * self.block_size - np.asarray(centre, np.float64), axis=1)
        slot_np = slots.cpu().numpy()
        last = self._used_at(slot_np)
        if protect is not None and len(protect):
            last[np.isin(slot_np, protect)] = np.iinfo(np.int64).max  # the current frame's blocks stay
        # least recently updated first (blocks still in view are not thrashed), the farthest among equals
        order = np.lexsort((-dist, last))[:max(0, len(keys) - max(0, int(target)))]
        far = order[last[order] < np.iinfo(np.int64).max]
        if len(far) == 0:
            return
        if self.spool is None:
            self.spool = BlockSpool(self.spool_dir, self.spool_tile)
        far_slots = slots[_tensor(far.astype(np.int64), device=self.device)]
        self.spool.write(keys[far], [hm.value_tensor(i)[far_slots].cpu().numpy().reshape(len(far), -1)
                                     for i in range(3)])
        # open3d neither clears an erased block's buffer nor a re-used one's: zero it, or a block
        # allocated there later would start from the streamed-out block's tsdf and weight
        for i in range(3):
            values = hm.value_tensor(i)
            values[far_slots] = o3c.Tensor.zeros((len(far),) + tuple(values.shape[1:]), values.dtype, self.device)
        hm.erase(_tensor(keys[far], device=self.device))
        self.stream_outs += 1
        log.debug("tsdf: %d blocks streamed out (last updated %d frames ago or earlier), %d resident",
                  len(far), self.num_integrated - int(last[far].max()), self.num_blocks)

    def _used_at(self, slots: np.ndarray) -> np.ndarray:
        """``[n]`` int64: the integration count at which buffer ``slots`` were last updated."""
        if len(slots) and int(slots.max()) >= len(self._last_used):
            grown = np.zeros(int(slots.max()) + 1, np.int64)
            grown[:len(self._last_used)] = self._last_used
            self._last_used = grown
        return self._last_used[slots].copy()

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
        if self.max_blocks:
            # make room before integrating: the frame's new blocks fit under the budget afterwards
            found_at, found = self.grid.hashmap().find(blocks)
            found = found.cpu().numpy().astype(bool)
            new, need = int((~found).sum()), len(found)
            # open3d grows (doubles) the hash map when resident + the frame's blocks exceed its capacity
            capacity = int(self.grid.hashmap().capacity())
            if self.num_blocks + new > self.max_blocks or self.num_blocks + need > capacity:
                if need > self.max_blocks and not self._warned:
                    log.warning("tsdf: one frame needs %d voxel blocks, more than max_blocks=%d; the budget is "
                                "exceeded by that frame (raise max_blocks or the voxel size)", need, self.max_blocks)
                    self._warned = True
                target = min(int(self.keep_fraction * self.max_blocks) - new, capacity - need)
                self._stream_out(np.asarray(c2w, np.float64)[:3, 3], target,
                                 found_at.cpu().numpy().astype(np.int64)[found])
        self.grid.integrate(blocks, dimg, cimg, Kt, Kt, w2c, 1.0, self.depth_max, self.trunc_multiplier)
        self.num_integrated += 1
        self.peak_blocks = max(self.peak_blocks, self.num_blocks)
        if self.max_blocks:
            at, ok = self.grid.hashmap().find(blocks)
            used = at.cpu().numpy().astype(np.int64)[ok.cpu().numpy().astype(bool)]
            self._used_at(used)  # grows the table when needed
            self._last_used[used] = self.num_integrated

    def _tiles(self):
        """Yield ``(grid, tile)``: per spool tile holding spooled or resident blocks, a grid with the
        tile's blocks and a one-block margin of its neighbours, spooled copies merged by weight.

        Tiles go in ``x, y, z`` order; each tile's files are read and merged once and kept while the
        tiles beside it are processed (three ``x`` slabs of tiles in memory at most)."""
        spool = self.spool
        r3 = self.block_resolution ** 3
        keys, flat = self._blocks()
        tiles = set(spool.files) | set(map(tuple, np.unique(spool.tile_of(keys), axis=0).tolist()))
        cache: dict[tuple[int, int, int], tuple[np.ndarray, np.ndarray]] = {}

        def spooled(tile):
            if tile not in cache:
                k, v = spool.read(tile)
                cache[tile] = _merge_blocks(k, v, r3)
            return cache[tile]

        for tile in sorted(tiles):
            for old in [t for t in cache if t[0] < tile[0] - 1]:
                del cache[old]
            lo = np.asarray(tile, np.int64) * spool.tile - 1
            hi = lo + spool.tile + 1  # inclusive
            ks, vs = [], []
            for off in itertools.product((-1, 0, 1), repeat=3):
                k, v = spooled(tuple(int(a + b) for a, b in zip(tile, off)))
                if off != (0, 0, 0) and len(k):
                    sel = ((k >= lo) & (k <= hi)).all(1)
                    k, v = k[sel], v[sel]
                if len(k):
                    ks.append(k)
                    vs.append(v)
            sel = ((keys >= lo) & (keys <= hi)).all(1)
            ks.append(keys[sel])
            vs.append(flat[sel])
            k, v = _merge_blocks(np.concatenate(ks), np.concatenate(vs), r3)
            if len(k):
                yield self._grid_of(k, v), tile

    def _grid_of(self, keys: np.ndarray, flat: np.ndarray):
        """A new grid holding ``keys`` ``[n, 3]`` with attributes ``flat`` ``[n, 5 R^3]``."""
        R = self.block_resolution
        n, r3 = len(keys), R ** 3
        grid = self._new_grid(n)
        values = [_tensor(flat[:, :r3].reshape(n, R, R, R, 1), device=self.device),
                  _tensor(flat[:, r3:2 * r3].reshape(n, R, R, R, 1), device=self.device),
                  _tensor(flat[:, 2 * r3:].reshape(n, R, R, R, 3), device=self.device)]
        grid.hashmap().insert(_tensor(keys, device=self.device), values)
        return grid

    def _owned(self, points: np.ndarray, tile) -> np.ndarray:
        """``[n]`` bool: ``points`` ``[n, 3]`` that lie in the blocks of spool tile ``tile``."""
        block = np.floor(points / self.block_size).astype(np.int64)
        return (np.floor_divide(block, self.spool.tile) == np.asarray(tile, np.int64)).all(1)

    def point_cloud(self, weight_threshold: float = 1.0, resident_only: bool = False) -> PointCloud:
        """Surface points (zero crossings) with colours and normals, world frame.

        With streamed-out blocks, the whole surface (spooled and resident) unless ``resident_only``.
        """
        if self.num_integrated == 0:
            return PointCloud(np.zeros((0, 3), np.float32))
        if self.spool is None or resident_only:
            return _grid_points(self.grid, weight_threshold)
        return self.surface(weight_threshold, mesh=False)[0]

    def mesh(self, weight_threshold: float = 1.0) -> Mesh:
        """Marching-cubes triangle mesh with vertex colours and normals, world frame.

        With streamed-out blocks, the whole surface: per tile the triangles whose centroid lies in
        the tile, vertices on tile borders welded.
        """
        if self.num_integrated == 0:
            return _empty_mesh()
        if self.spool is None:
            return _grid_mesh(self.grid, weight_threshold)
        return self.surface(weight_threshold, points=False)[1]

    def surface(self, weight_threshold: float = 1.0, points: bool = True,
                mesh: bool = True) -> tuple[PointCloud | None, Mesh | None]:
        """``(point_cloud, mesh)`` as :meth:`point_cloud` and :meth:`mesh` give them (None when not
        asked for), from one pass over the spool when blocks were streamed out."""
        if self.num_integrated == 0 or self.spool is None:
            return (self.point_cloud(weight_threshold) if points else None,
                    self.mesh(weight_threshold) if mesh else None)
        clouds, meshes = [], []
        for grid, tile in self._tiles():
            if points:
                pc = _grid_points(grid, weight_threshold)
                if len(pc):
                    clouds.append(pc.subset(self._owned(pc.points, tile)))
            if mesh:
                m = _grid_mesh(grid, weight_threshold)
                if len(m.faces):
                    meshes.append(_submesh(m, self._owned(m.vertices[m.faces].mean(1), tile)))
        return (_concat_clouds(clouds) if points else None), (_concat_meshes(meshes) if mesh else None)


def _merge_blocks(keys: np.ndarray, flat: np.ndarray, r3: int) -> tuple[np.ndarray, np.ndarray]:
    """Combine the copies of a block (same coordinates) by TSDF weight: ``[n, 3]``, ``[n, 5 r3]`` ->
    unique blocks. The tsdf and colour of a voxel become the weight-averaged ones, the weights add
    up (the running averages of an integration, merged)."""
    if len(keys) == 0:
        return keys, flat
    code = ((keys[:, 0].astype(np.int64) + 2**20) << 42) | ((keys[:, 1].astype(np.int64) + 2**20) << 21) \
        | (keys[:, 2].astype(np.int64) + 2**20)  # block coordinates are far inside +-2^20
    uniq, first, inv = np.unique(code, return_index=True, return_inverse=True)
    if len(uniq) == len(keys):
        return keys, flat
    inv = inv.reshape(-1)
    order = np.argsort(inv, kind="stable")
    k, v = keys[first], flat[order]
    starts = np.flatnonzero(np.r_[True, np.diff(inv[order]) != 0])
    w = v[:, r3:2 * r3]
    W = np.add.reduceat(w, starts, axis=0)
    safe = np.where(W > 0, W, 1.0)
    tsdf = np.add.reduceat(v[:, :r3] * w, starts, axis=0) / safe
    color = np.add.reduceat((v[:, 2 * r3:].reshape(len(v), r3, 3) * w[..., None]), starts, axis=0) / safe[..., None]
    return k.astype(np.int32), np.concatenate([tsdf, W, color.reshape(len(k), -1)], axis=1).astype(np.float32)


def _empty_mesh() -> Mesh:
    return Mesh(np.zeros((0, 3), np.float32), np.zeros((0, 3), np.int64))


def _grid_points(grid, weight_threshold: float) -> PointCloud:
    pc = grid.extract_point_cloud(float(weight_threshold))
    pts = pc.point.positions.cpu().numpy().astype(np.float32)
    if len(pts) == 0:
        return PointCloud(np.zeros((0, 3), np.float32))
    return PointCloud(pts, *_colors_normals(pc.point))


def _grid_mesh(grid, weight_threshold: float) -> Mesh:
    m = grid.extract_triangle_mesh(float(weight_threshold))
    verts = m.vertex.positions.cpu().numpy().astype(np.float32)
    if len(verts) == 0 or "indices" not in m.triangle:
        return _empty_mesh()
    faces = m.triangle.indices.cpu().numpy().astype(np.int64)
    return Mesh(verts, faces, *_colors_normals(m.vertex))


def _concat_clouds(parts: list[PointCloud]) -> PointCloud:
    parts = [p for p in parts if len(p)]
    if not parts:
        return PointCloud(np.zeros((0, 3), np.float32))
    cat = (lambda name: None if getattr(parts[0], name) is None else np.concatenate([getattr(p, name) for p in parts]))
    return PointCloud(np.concatenate([p.points for p in parts]), cat("colors"), cat("normals"))


def _submesh(m: Mesh, keep: np.ndarray) -> Mesh:
    """The faces ``keep`` ``[F]`` bool of ``m`` and the vertices they use."""
    faces = m.faces[keep]
    used, inv = np.unique(faces.reshape(-1), return_inverse=True)
    pick = (lambda a: None if a is None else a[used])
    return Mesh(m.vertices[used], inv.reshape(-1, 3).astype(np.int64), pick(m.vertex_colors), pick(m.vertex_normals))


def _concat_meshes(parts: list[Mesh]) -> Mesh:
    """One mesh of ``parts``; vertices at the same position (tile borders) are welded."""
    parts = [p for p in parts if len(p.faces)]
    if not parts:
        return _empty_mesh()
    offsets = np.cumsum([0] + [len(p.vertices) for p in parts[:-1]])
    verts = np.concatenate([p.vertices for p in parts])
    faces = np.concatenate([p.faces + o for p, o in zip(parts, offsets)])
    uniq, first, inv = np.unique(verts, axis=0, return_index=True, return_inverse=True)
    cat = (lambda name: None if getattr(parts[0], name) is None
           else np.concatenate([getattr(p, name) for p in parts])[first])
    return Mesh(uniq, inv.reshape(-1)[faces].astype(np.int64), cat("vertex_colors"), cat("vertex_normals"))


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
        pc = volume.point_cloud(weight_threshold, resident_only=True)  # the blocks near the camera
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
