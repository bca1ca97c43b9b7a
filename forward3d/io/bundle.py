"""The :class:`~forward3d.types.Reconstruction` bundle: ``reconstruction.npz`` + ``reconstruction.json``.

The ``.npz`` (``numpy.savez``, no pickled objects; loaded with ``allow_pickle=False``) holds the arrays,
under these names, each only when the field is not None:

==========================  ===========================================================
``c2w``                     ``[N, 4, 4]`` float64 camera-to-world (OpenCV camera axes)
``K``                       ``[N, 3, 3]`` float64 intrinsics for ``image_size``
``timestamps``              ``[N]`` float64 seconds
``point_maps``              ``[N, H, W, 3]`` world point maps
``confidences``             ``[N, H, W]``
``point_map_colors``        ``[N, H, W, 3]`` uint8
``points`` / ``point_colors`` / ``point_normals``      the fused :class:`PointCloud`
``mesh_vertices`` / ``mesh_faces`` / ``mesh_vertex_colors`` / ``mesh_vertex_normals``  the :class:`Mesh`
==========================  ===========================================================

``depth_scales`` and, when the reconstruction was scored, ``traj_aligned_c2w`` / ``traj_gt_c2w`` are
stored the same way. The sibling JSON (same stem) holds ``format``/``version``, ``image_size`` ``[W, H]``,
``frame_names``, the typed fields (``backend``, ``metric_scale``, ``frame_status``, ``timings``,
``interrupted``, ``trajectory_metrics``), ``metadata`` and ``arrays`` (name -> shape and dtype inventory). Arrays keep their dtypes, so a
save/load round trip is exact, None fields included. Metadata must be JSON-serialisable; numpy
scalars/arrays and paths in it are converted to plain numbers, lists and strings (tuples become lists).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from forward3d.io.atomic import atomic_path
from forward3d.types import FrameStatus, Mesh, PointCloud, Reconstruction, TrajectoryMetrics

__all__ = ["save_reconstruction", "load_reconstruction", "bundle_paths"]

log = logging.getLogger(__name__)

FORMAT = "forward3d.reconstruction"
VERSION = 1
_FIELDS = ("c2w", "K", "timestamps", "point_maps", "confidences", "point_map_colors", "depth_scales")
_PC_FIELDS = {"points": "points", "point_colors": "colors", "point_normals": "normals"}
_MESH_FIELDS = {"mesh_vertices": "vertices", "mesh_faces": "faces", "mesh_vertex_colors": "vertex_colors",
                "mesh_vertex_normals": "vertex_normals"}


def bundle_paths(path: str | os.PathLike) -> tuple[Path, Path]:
    """``(npz, json)`` paths for ``path``: a ``.npz`` file, or a folder (-> ``folder/reconstruction.npz``)."""
    path = Path(path)
    npz = path if path.suffix == ".npz" else path / "reconstruction.npz"
    return npz, npz.with_suffix(".json")


def _jsonable(obj: Any, where: str) -> Any:
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            if not isinstance(k, str):
                raise ValueError(f"{where}: metadata keys must be strings, found {k!r}")
            out[k] = _jsonable(v, f"{where}.{k}")
        return out
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v, f"{where}[{i}]") for i, v in enumerate(obj)]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    raise ValueError(f"{where}: expected a JSON-serialisable value, found {type(obj).__name__}")


def _arrays(recon: Reconstruction) -> dict[str, np.ndarray]:
    arrays: dict[str, np.ndarray] = {}
    for name in _FIELDS:
        value = getattr(recon, name)
        if value is not None:
            arrays[name] = np.asarray(value)
    for src, names in ((recon.points, _PC_FIELDS), (recon.mesh, _MESH_FIELDS)):
        if src is None:
            continue
        for key, attr in names.items():
            value = getattr(src, attr)
            if value is not None:
                arrays[key] = np.asarray(value)
    tm = recon.trajectory_metrics
    if tm is not None:
        arrays["traj_aligned_c2w"] = np.asarray(tm.aligned_c2w)
        arrays["traj_gt_c2w"] = np.asarray(tm.gt_c2w)
    for key, arr in arrays.items():
        if arr.dtype == object:
            raise ValueError(f"save_reconstruction: array {key!r} has dtype object (would need pickle)")
    return arrays


def save_reconstruction(path: str | os.PathLike, recon: Reconstruction, compress: bool = False) -> Path:
    """Save ``recon`` as ``<path>.npz`` + ``<path>.json`` (both atomically, together).

    Args:
        path: a ``.npz`` file, or a folder to hold ``reconstruction.npz`` / ``reconstruction.json``.
        recon: the reconstruction.
        compress: use ``numpy.savez_compressed`` (smaller, slower) instead of ``numpy.savez``.

    Returns:
        the ``.npz`` path.
    """
    npz_path, json_path = bundle_paths(path)
    if not isinstance(recon, Reconstruction):
        raise TypeError(f"save_reconstruction {npz_path}: expected a Reconstruction, found {type(recon).__name__}")
    arrays = _arrays(recon)
    header = {
        "format": FORMAT,
        "version": VERSION,
        "image_size": list(recon.image_size),
        "frame_names": list(recon.frame_names),
        "has_points": recon.points is not None,
        "has_mesh": recon.mesh is not None,
        "backend": recon.backend,
        "metric_scale": bool(recon.metric_scale),
        "interrupted": bool(recon.interrupted),
        "frame_status": [st.to_dict() for st in recon.frame_status],
        "timings": recon.timings,
        "trajectory_metrics": None if recon.trajectory_metrics is None else {
            **recon.trajectory_metrics.to_dict(), "frame_indices": list(recon.trajectory_metrics.frame_indices)},
        "arrays": {k: {"shape": list(v.shape), "dtype": v.dtype.str} for k, v in arrays.items()},
        "metadata": _jsonable(recon.metadata, f"save_reconstruction {npz_path}: metadata"),
    }
    text = json.dumps(header, indent=2)
    save = np.savez_compressed if compress else np.savez
    with contextlib.ExitStack() as stack:  # both files appear together or not at all
        tmp_npz = stack.enter_context(atomic_path(npz_path))
        tmp_json = stack.enter_context(atomic_path(json_path))
        with open(tmp_npz, "wb") as f:
            save(f, **arrays)
        tmp_json.write_text(text + "\n", encoding="utf-8")
    log.debug("saved reconstruction (%d frames, arrays %s) to %s", len(recon), sorted(arrays), npz_path)
    return npz_path


def load_reconstruction(path: str | os.PathLike) -> Reconstruction:
    """Load a bundle written by :func:`save_reconstruction` (``.npz`` path or its folder)."""
    npz_path, json_path = bundle_paths(path)
    for p in (npz_path, json_path):
        if not p.is_file():
            raise FileNotFoundError(f"reconstruction bundle: {p} not found")
    try:
        header = json.loads(json_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"reconstruction bundle {json_path}: invalid JSON ({e})") from None
    if header.get("format") != FORMAT or header.get("version") != VERSION:
        raise ValueError(f"reconstruction bundle {json_path}: expected format {FORMAT!r} version {VERSION}, "
                         f"found {header.get('format')!r} version {header.get('version')!r}")
    inventory = header.get("arrays", {})
    with np.load(npz_path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    if sorted(arrays) != sorted(inventory):
        raise ValueError(f"reconstruction bundle {npz_path}: arrays {sorted(arrays)} do not match the inventory "
                         f"{sorted(inventory)} of {json_path.name}")
    for k, info in inventory.items():
        if list(arrays[k].shape) != info["shape"] or arrays[k].dtype.str != info["dtype"]:
            raise ValueError(f"reconstruction bundle {npz_path}: array {k!r}: expected {info}, found shape "
                             f"{list(arrays[k].shape)} dtype {arrays[k].dtype.str}")
    for k in ("c2w", "K"):
        if k not in arrays:
            raise ValueError(f"reconstruction bundle {npz_path}: required array {k!r} missing")
    points = None
    if header.get("has_points"):
        points = PointCloud(arrays["points"], arrays.get("point_colors"), arrays.get("point_normals"))
    mesh = None
    if header.get("has_mesh"):
        mesh = Mesh(arrays["mesh_vertices"], arrays["mesh_faces"], arrays.get("mesh_vertex_colors"),
                    arrays.get("mesh_vertex_normals"))
    tm = header.get("trajectory_metrics")
    if tm is not None:
        if "traj_aligned_c2w" not in arrays or "traj_gt_c2w" not in arrays:
            raise ValueError(f"reconstruction bundle {npz_path}: trajectory metrics without their pose arrays")
        tm = TrajectoryMetrics.from_dict(tm, arrays["traj_aligned_c2w"], arrays["traj_gt_c2w"])
    return Reconstruction(
        c2w=arrays["c2w"],
        K=arrays["K"],
        image_size=tuple(header["image_size"]),
        frame_names=list(header.get("frame_names", [])),
        timestamps=arrays.get("timestamps"),
        point_maps=arrays.get("point_maps"),
        confidences=arrays.get("confidences"),
        point_map_colors=arrays.get("point_map_colors"),
        points=points,
        mesh=mesh,
        backend=str(header.get("backend", "")),
        metric_scale=bool(header.get("metric_scale", False)),
        depth_scales=arrays.get("depth_scales"),
        frame_status=[FrameStatus.from_dict(d) for d in header.get("frame_status", [])],
        timings=dict(header.get("timings", {})),
        trajectory_metrics=tm,
        interrupted=bool(header.get("interrupted", False)),
        metadata=header.get("metadata", {}),
    )
