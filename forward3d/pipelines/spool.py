"""Results spooled to disk, so that a long sequence's memory stays flat.

:class:`FrameSpool` is used by the streaming back-ends (SLAM3R online, Spann3R): every frame's
model-resolution world point map, confidence and colours are appended to three flat files; the final
:class:`~forward3d.types.Reconstruction` maps them read-only (``numpy.memmap``).

:class:`BlockSpool` holds the TSDF voxel blocks that a budgeted
:class:`~forward3d.pipelines.tsdf.TSDFVolume` streamed out, filed by spatial tile so that the final
extraction reads one tile (and its neighbours) at a time.
"""

from __future__ import annotations

import ctypes
import shutil
import tempfile
from pathlib import Path

import numpy as np

from forward3d.types import PointCloud

__all__ = ["BlockSpool", "FrameSpool", "trim_heap"]

_LIBC = None


def trim_heap() -> None:
    """Give freed heap memory back to the OS (glibc ``malloc_trim``): without it the many per-frame
    allocations of varying sizes fragment the heap and the RSS creeps up with the frame count."""
    global _LIBC
    if _LIBC is None:
        try:
            _LIBC = ctypes.CDLL("libc.so.6")
            _LIBC.malloc_trim.argtypes = [ctypes.c_size_t]
        except (OSError, AttributeError):
            _LIBC = False
    if _LIBC:
        _LIBC.malloc_trim(0)


class FrameSpool:
    """Append-only per-frame result files (no memory mapping while writing: RSS stays flat).

    Args:
        folder: where the files go (kept afterwards); None = a temporary folder, deleted once the
            final arrays are mapped (the maps stay valid) or on :meth:`discard`.
        h, w: the point-map size.
        prefix: name prefix of the temporary folder.
    """

    def __init__(self, folder: str | None, h: int, w: int, prefix: str = "forward3d-spool-") -> None:
        self.temporary = folder is None
        self.dir = Path(tempfile.mkdtemp(prefix=prefix)) if folder is None else Path(folder)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.h, self.w = h, w
        self.files = {name: open(self.dir / f"{name}.bin", "wb") for name in ("points", "conf", "colors")}
        self.n = 0

    def write(self, points: np.ndarray, conf: np.ndarray, colors: np.ndarray) -> None:
        """Append one frame: points ``[h, w, 3]`` float32, conf ``[h, w]`` float32, colours ``[h, w, 3]`` uint8."""
        for name, arr, dt in (("points", points, np.float32), ("conf", conf, np.float32), ("colors", colors, np.uint8)):
            self.files[name].write(memoryview(np.ascontiguousarray(arr, dtype=dt)).cast("B"))
        self.n += 1

    def close(self) -> None:
        for f in self.files.values():
            f.close()

    def discard(self) -> None:
        """Close and, for a temporary spool, delete the files (after a failed run)."""
        self.close()
        if self.temporary:
            shutil.rmtree(self.dir, ignore_errors=True)

    def read(self, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Frame ``i``'s (points, conf, colours), read from the files (flushed with :meth:`close`)."""
        hw = self.h * self.w
        pts = np.fromfile(self.dir / "points.bin", np.float32, hw * 3, offset=i * hw * 12).reshape(self.h, self.w, 3)
        conf = np.fromfile(self.dir / "conf.bin", np.float32, hw, offset=i * hw * 4).reshape(self.h, self.w)
        col = np.fromfile(self.dir / "colors.bin", np.uint8, hw * 3, offset=i * hw * 3).reshape(self.h, self.w, 3)
        return pts, conf, col

    def fuse(self, total_valid: int, conf_min: float, num_points: int, seed: int) -> PointCloud:
        """Uniform sample of at most ``num_points`` of the spooled points with confidence above
        ``conf_min`` (``total_valid`` of them), read frame by frame (:func:`fuse_point_cloud`)."""
        from forward3d.pipelines.slam3r.common import fuse_point_cloud
        from forward3d.pipelines.slam3r.result import valid_world_mask

        def chunks():
            for i in range(self.n):
                pts, conf, col = self.read(i)
                m = valid_world_mask(pts, conf, conf_min)
                yield pts[m], col[m]

        return fuse_point_cloud(chunks, int(total_valid), num_points, seed)

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Read-only memory maps ``[N, H, W, 3]``, ``[N, H, W]``, ``[N, H, W, 3]`` of everything written."""
        n, h, w = self.n, self.h, self.w
        if n == 0:
            return np.zeros((0, h, w, 3), np.float32), np.zeros((0, h, w), np.float32), np.zeros((0, h, w, 3), np.uint8)
        out = (np.memmap(self.dir / "points.bin", np.float32, "r", shape=(n, h, w, 3)),
               np.memmap(self.dir / "conf.bin", np.float32, "r", shape=(n, h, w)),
               np.memmap(self.dir / "colors.bin", np.uint8, "r", shape=(n, h, w, 3)))
        if self.temporary:  # the maps stay valid after the files are unlinked
            shutil.rmtree(self.dir, ignore_errors=True)
        return out


class BlockSpool:
    """Voxel blocks written to disk, filed by tile (``tile`` blocks per side).

    Every :meth:`write` adds one ``.npz`` file per tile it touches, holding the block coordinates
    ``keys`` ``[n, 3]`` int32 and the flattened attributes ``values`` ``[n, C]`` float32; a block
    streamed out twice (the camera came back) is in two files and :meth:`read` returns both.

    Args:
        folder: where the files go (kept afterwards); None = a temporary folder, deleted by
            :meth:`discard` or when the spool is garbage-collected.
        tile: tile side in blocks.
    """

    def __init__(self, folder: str | None = None, tile: int = 16) -> None:
        self.temporary = folder is None
        self.dir = Path(tempfile.mkdtemp(prefix="forward3d-tsdf-spool-")) if folder is None else Path(folder)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.tile = int(tile)
        self.files: dict[tuple[int, int, int], list[Path]] = {}
        self.blocks_written = 0
        self.bytes_written = 0
        self._count = 0

    def tile_of(self, keys: np.ndarray) -> np.ndarray:
        """``[n, 3]`` int64 tile of each block coordinate in ``keys`` ``[n, 3]``."""
        return np.floor_divide(np.asarray(keys, np.int64), self.tile)

    def write(self, keys: np.ndarray, values: list[np.ndarray]) -> None:
        """Append blocks: ``keys`` ``[n, 3]`` int32 and per attribute ``[n, ...]`` float32 values."""
        keys = np.asarray(keys, np.int32)
        flat = np.concatenate([np.asarray(v, np.float32).reshape(len(keys), -1) for v in values], axis=1)
        uniq, inv = np.unique(self.tile_of(keys), axis=0, return_inverse=True)
        inv = inv.reshape(-1)
        for t, tile in enumerate(map(tuple, uniq.tolist())):
            path = self.dir / f"blocks_{self._count:07d}.npz"
            self._count += 1
            sel = inv == t
            np.savez(path, keys=keys[sel], values=flat[sel])
            self.files.setdefault(tile, []).append(path)
            self.bytes_written += int(sel.sum()) * (12 + flat.shape[1] * 4)
        self.blocks_written += len(keys)

    def read(self, tile: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
        """Every block spooled in ``tile``: keys ``[n, 3]`` int32 and the flattened attributes ``[n, C]``."""
        keys, values = [], []
        for p in self.files.get(tuple(tile), []):
            with np.load(p) as z:
                keys.append(z["keys"])
                values.append(z["values"])
        if not keys:
            return np.zeros((0, 3), np.int32), np.zeros((0, 0), np.float32)
        return np.concatenate(keys), np.concatenate(values)

    def discard(self) -> None:
        """Delete the files of a temporary spool."""
        if self.temporary:
            shutil.rmtree(self.dir, ignore_errors=True)
        self.files = {}

    def __del__(self) -> None:
        try:
            self.discard()
        except Exception:  # pragma: no cover - interpreter shutdown
            pass
