"""RealEstate10K in the Flash3D layout: index, frames, sparse COLMAP points, depth-scale estimation.

Layout (``root``)::

    {split}.pickle.gz              {seq: {timestamps [N], intrinsics [N, 4] (fx, fy, cx, cy / W, H),
                                          poses [N, 3, 4] w2c}}
    {split}/{seq}/{timestamp}.jpg  frames (360p)
    pcl.{split}/{seq}.pickle.gz    {xys: [frame] -> [P, 2] pixels (normalised or not, see below),
                                    p3D_ids: [frame] -> [P] (-1 = none), xyz: [M, 3]}
    valid_seq_ids.{split}.pickle.gz  optional list of usable sequences
    depth/{split}/{seq}/{timestamp}.png  optional forward3d extension: metric depth (uint16 mm)

The pickles are read with a restricted unpickler that only rebuilds plain containers and numpy
arrays: nothing else in a pickle is ever executed.
"""

from __future__ import annotations

import gzip
import io
import logging
import os
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

__all__ = ["safe_pickle_load", "RE10KSequence", "RE10KIndex", "estimate_depth_scale", "write_re10k_layout"]

_ALLOWED = {
    ("builtins", "dict"), ("builtins", "list"), ("builtins", "tuple"), ("builtins", "set"), ("builtins", "int"),
    ("builtins", "float"), ("builtins", "str"), ("builtins", "bytes"), ("builtins", "complex"),
    ("collections", "OrderedDict"), ("collections", "defaultdict"),
    ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"), ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"), ("numpy", "float64"), ("numpy", "float32"), ("numpy", "int64"),
    ("numpy", "int32"), ("_codecs", "encode"),
}


class _SafeUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):  # noqa: D102
        if (module, name) in _ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a data pickle")


def safe_pickle_load(path: str | os.PathLike):
    """Load a (gzipped) data pickle allowing only containers, numbers, strings and numpy arrays."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: not found")
    try:
        raw = p.read_bytes()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
        return _SafeUnpickler(io.BytesIO(raw)).load()
    except (pickle.UnpicklingError, EOFError, OSError, ValueError) as exc:
        raise ValueError(f"{p}: cannot read data pickle ({exc})") from exc


def _dump(obj, path: Path) -> None:
    from forward3d.io.atomic import atomic_write

    with atomic_write(path, "wb") as f:
        f.write(gzip.compress(pickle.dumps(obj, protocol=4)))


@dataclass
class RE10KSequence:
    """One sequence. ``K_norm``: ``[N, 4]`` (fx, fy, cx, cy) / (W, H); ``w2c``: ``[N, 4, 4]``."""

    name: str
    timestamps: np.ndarray
    K_norm: np.ndarray
    w2c: np.ndarray

    def __len__(self) -> int:
        return len(self.timestamps)

    def K(self, i: int, width: int, height: int) -> np.ndarray:
        fx, fy, cx, cy = self.K_norm[i]
        return np.array([[fx * width, 0, cx * width], [0, fy * height, cy * height], [0, 0, 1.0]])

    @property
    def c2w(self) -> np.ndarray:
        return np.linalg.inv(self.w2c)


class RE10KIndex:
    """The sequences of one split, with frame paths and sparse points."""

    def __init__(self, root: str | os.PathLike, split: str = "test"):
        self.root = Path(root)
        self.split = split
        index = self.root / f"{split}.pickle.gz"
        data = safe_pickle_load(index)
        if not isinstance(data, dict):
            raise ValueError(f"{index}: expected a dict of sequences, found {type(data).__name__}")
        self.sequences: dict[str, RE10KSequence] = {}
        for name, seq in data.items():
            try:
                ts = np.asarray(seq["timestamps"]).reshape(-1)
                K = np.asarray(seq["intrinsics"], np.float64).reshape(len(ts), -1)[:, :4]
                poses = np.asarray(seq["poses"], np.float64).reshape(len(ts), 3, 4)
            except (KeyError, ValueError, TypeError) as exc:
                raise ValueError(f"{index}: sequence {name!r} is malformed ({exc})") from exc
            w2c = np.tile(np.eye(4), (len(ts), 1, 1))
            w2c[:, :3, :] = poses
            self.sequences[str(name)] = RE10KSequence(str(name), ts, K, w2c)
        valid = self.root / f"valid_seq_ids.{split}.pickle.gz"
        if valid.is_file():
            keep = {str(s) for s in safe_pickle_load(valid)}
            self.sequences = {k: v for k, v in self.sequences.items() if k in keep}
        if not self.sequences:
            raise ValueError(f"{index}: no sequences")

    def __len__(self) -> int:
        return len(self.sequences)

    def names(self) -> list[str]:
        return sorted(self.sequences)

    def frame_path(self, seq: str, i: int) -> Path:
        return self.root / self.split / seq / f"{int(self.sequences[seq].timestamps[i])}.jpg"

    def depth_path(self, seq: str, i: int) -> Path:
        return self.root / "depth" / self.split / seq / f"{int(self.sequences[seq].timestamps[i])}.png"

    def load_image(self, seq: str, i: int) -> np.ndarray:
        from PIL import Image

        p = self.frame_path(seq, i)
        try:
            with Image.open(p) as im:
                return np.asarray(im.convert("RGB"))
        except (OSError, ValueError) as exc:
            raise ValueError(f"{p}: cannot read frame ({exc})") from exc

    def _pcl(self, seq: str) -> dict:
        """The sequence's sparse-point pickle, cached (the most recently used few sequences)."""
        cache = self.__dict__.setdefault("_pcl_cache", {})
        if seq not in cache:
            if len(cache) >= 8:
                cache.pop(next(iter(cache)))
            cache[seq] = safe_pickle_load(self.root / f"pcl.{self.split}" / f"{seq}.pickle.gz")
        return cache[seq]

    def sparse_points(self, seq: str, i: int, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
        """COLMAP points seen in frame ``i``: pixels ``[P, 2]`` (in a ``width x height`` image) and
        their z-depth in that camera (COLMAP units) ``[P]``."""
        data = self._pcl(seq)
        ids = np.asarray(data["p3D_ids"][i]).reshape(-1)
        xys = np.asarray(data["xys"][i], np.float64).reshape(-1, 2)
        xyz = np.asarray(data["xyz"], np.float64).reshape(-1, 3)
        keep = ids >= 0
        ids, xys = ids[keep], xys[keep]
        if len(ids) == 0:
            return np.zeros((0, 2)), np.zeros(0)
        pts = xyz[ids]
        w2c = self.sequences[seq].w2c[i]
        z = pts @ w2c[:3, :3].T[:, 2] + w2c[2, 3]
        if xys.size and xys.max() <= 1.5:  # normalised coordinates
            xys = xys * np.array([width, height])
        return xys, z


def estimate_depth_scale(pred_depth: np.ndarray, xys: np.ndarray, z_sparse: np.ndarray, mode: str = "mean_log",
                         iters: int = 1000, sample: int = 5, threshold: float = 0.1, seed: int = 0) -> float:
    """Scale from sparse-point units to metres: ``exp(mean(log d_pred - log z_sparse))``.

    ``mode='mean_log'`` uses all points (training); ``'ransac'`` (evaluation) draws ``sample``-point
    subsets ``iters`` times, scores each by the number of points with ``|log residual| < threshold``
    and re-estimates on the best inliers.
    """
    h, w = pred_depth.shape
    u = np.clip(np.floor(xys[:, 0]).astype(int), 0, w - 1)
    v = np.clip(np.floor(xys[:, 1]).astype(int), 0, h - 1)
    d = pred_depth[v, u]
    ok = (z_sparse > 0) & (d > 0) & np.isfinite(d) & np.isfinite(z_sparse)
    if ok.sum() < 1:
        raise ValueError("depth scale: no sparse point with valid predicted depth")
    r = np.log(d[ok]) - np.log(z_sparse[ok])
    if mode == "mean_log":
        return float(np.exp(r.mean()))
    if mode != "ransac":
        raise ValueError(f"depth scale: mode must be 'mean_log' or 'ransac', found {mode!r}")
    rng = np.random.default_rng(seed)
    best, best_count = r.mean(), -1
    for _ in range(iters):
        cand = r[rng.choice(len(r), size=min(sample, len(r)), replace=False)].mean()
        count = int((np.abs(r - cand) < threshold).sum())
        if count > best_count:
            best, best_count = cand, count
    inl = np.abs(r - best) < threshold
    return float(np.exp(r[inl].mean() if inl.any() else best))


def write_re10k_layout(root: str | os.PathLike, scenes: dict[str, "object"], split: str = "train",
                       num_points: int = 400, colmap_scale: float = 1.0, seed: int = 0, write_depth: bool = True) -> Path:
    """Write synthetic sequences (``name -> SyntheticScene``) in the RE10K/Flash3D layout.

    Poses are stored in "COLMAP units" = metres / ``colmap_scale`` (RE10K's are up to scale); the
    sparse points are surface points seen by each frame, in the same units. With ``write_depth`` the
    metric depth of each frame goes to ``depth/`` (forward3d extension used by the smoke tests).
    """
    from PIL import Image

    root = Path(root)
    rng = np.random.default_rng(seed)
    index = {}
    for name, scene in scenes.items():
        w, h = scene.config.width, scene.config.height
        K = scene.K
        ts = (np.arange(scene.num_frames) * 33333 + 1000000).astype(np.int64)
        w2c = np.linalg.inv(scene.c2w)
        w2c[:, :3, 3] /= colmap_scale
        index[name] = {"timestamps": ts, "intrinsics": np.tile([K[0, 0] / w, K[1, 1] / h, K[0, 2] / w, K[1, 2] / h],
                                                               (len(ts), 1)), "poses": w2c[:, :3, :]}
        surf = scene.surface_points(spacing=0.1).points.astype(np.float64)
        xys_all, ids_all = [], []
        (root / split / name).mkdir(parents=True, exist_ok=True)
        for i in range(scene.num_frames):
            frame = scene.frame(i)
            Image.fromarray(frame.image).save(root / split / name / f"{ts[i]}.jpg", quality=95)
            if write_depth:
                dp = root / "depth" / split / name
                dp.mkdir(parents=True, exist_ok=True)
                Image.fromarray(np.clip(frame.depth * 1000, 0, 65535).astype(np.uint16)).save(dp / f"{ts[i]}.png")
            # visible surface points: project and z-test against the rendered depth
            wc = np.linalg.inv(scene.c2w[i])
            pc = surf @ wc[:3, :3].T + wc[:3, 3]
            z = pc[:, 2]
            uv = (pc @ K.T)[:, :2] / np.maximum(z[:, None], 1e-9)
            inside = (z > 0.1) & (uv[:, 0] >= 0) & (uv[:, 0] < w) & (uv[:, 1] >= 0) & (uv[:, 1] < h)
            idx = np.flatnonzero(inside)
            if len(idx):
                dz = frame.depth[uv[idx, 1].astype(int), uv[idx, 0].astype(int)]
                idx = idx[np.abs(dz - z[idx]) < 0.05]
            idx = rng.permutation(idx)[:num_points]
            xys_all.append(uv[idx].astype(np.float32))
            ids_all.append(idx.astype(np.int64))
        pdir = root / f"pcl.{split}"
        pdir.mkdir(parents=True, exist_ok=True)
        _dump({"xys": xys_all, "p3D_ids": ids_all, "xyz": (surf / colmap_scale).astype(np.float32)}, pdir / f"{name}.pickle.gz")
    _dump(index, root / f"{split}.pickle.gz")
    return root
