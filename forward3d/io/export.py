"""Write the standard set of outputs of a reconstruction, and mesh read/write by suffix.

:func:`export_reconstruction` is what the pipelines and the demo call. It writes, in ``out_dir``:

==============  ======================================  ==========================================
format key      file(s)                                 content
==============  ======================================  ==========================================
``ply``         ``point_cloud.ply``                     fused points (or all valid point-map points)
``mesh``        ``mesh.ply`` + ``mesh.glb``             only when ``recon.mesh`` is set
``tum``         ``trajectory_tum.txt``                  c2w per frame, TUM format
``colmap``      ``colmap/{cameras,images,points3D}.txt``  PINHOLE cameras, w2c poses, points
``nerfstudio``  ``transforms.json``                     OpenGL-axes c2w, intrinsics, ply path
``bundle``      ``reconstruction.npz`` + ``.json``      everything, exact round trip
==============  ======================================  ==========================================
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from forward3d.io.atomic import atomic_write
from forward3d.io.bundle import save_reconstruction
from forward3d.io.colmap import write_colmap_text
from forward3d.io.glb import read_glb, write_glb
from forward3d.io.jsonio import write_json
from forward3d.io.nerfstudio import default_image_paths, write_transforms_json
from forward3d.io.ply import read_mesh_ply, write_mesh_ply, write_point_cloud
from forward3d.io.trajectory import write_tum
from forward3d.types import Mesh, PointCloud, Reconstruction

__all__ = ["export_reconstruction", "write_outputs", "reconstruction_point_cloud", "write_mesh", "read_mesh",
           "write_obj", "read_obj", "FORMATS"]

log = logging.getLogger(__name__)

FORMATS = ("ply", "mesh", "tum", "colmap", "nerfstudio", "bundle")


# --------------------------------------------------------------------------------------------------
# Meshes by suffix
# --------------------------------------------------------------------------------------------------


def write_obj(path: str | os.PathLike, mesh: Mesh) -> Path:
    """Write a Wavefront OBJ: ``v x y z [r g b]`` (colours as 0..1 floats, a common extension),
    ``vn`` when normals are present, 1-based ``f`` lines. Coordinates are written as they are."""
    path = Path(path)
    v = mesh.vertices.astype(np.float64)
    with atomic_write(path, "w") as f:
        f.write("# forward3d mesh\n")
        if mesh.vertex_colors is not None:
            rows = np.concatenate([v, mesh.vertex_colors.astype(np.float64) / 255.0], 1)
            f.write(("v %.9g %.9g %.9g %.6g %.6g %.6g\n" * len(rows)) % tuple(rows.ravel()))
        else:
            f.write(("v %.9g %.9g %.9g\n" * len(v)) % tuple(v.ravel()))
        if mesh.vertex_normals is not None:
            nrm = mesh.vertex_normals.astype(np.float64)
            f.write(("vn %.9g %.9g %.9g\n" * len(nrm)) % tuple(nrm.ravel()))
            fv = np.repeat(mesh.faces + 1, 2, axis=1)
            f.write(("f %d//%d %d//%d %d//%d\n" * len(fv)) % tuple(fv.ravel()))
        else:
            f.write(("f %d %d %d\n" * len(mesh.faces)) % tuple((mesh.faces + 1).ravel()))
    return path


def read_obj(path: str | os.PathLike) -> Mesh:
    """Read vertices (with optional ``r g b`` in 0..1), per-vertex normals (when ``vn`` count matches
    the vertex count) and faces (polygons fan-triangulated, negative indices resolved) of an OBJ."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"OBJ file not found: {path}")
    verts, cols, norms, faces = [], [], [], []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            tok = line.split()
            if not tok:
                continue
            try:
                if tok[0] == "v":
                    verts.append([float(t) for t in tok[1:4]])
                    if len(tok) >= 7:
                        cols.append([float(t) for t in tok[4:7]])
                elif tok[0] == "vn":
                    norms.append([float(t) for t in tok[1:4]])
                elif tok[0] == "f":
                    idx = [int(t.split("/")[0]) for t in tok[1:]]
                    idx = [i - 1 if i > 0 else len(verts) + i for i in idx]
                    if len(idx) < 3:
                        raise ValueError("face with fewer than 3 vertices")
                    faces.extend([idx[0], idx[k], idx[k + 1]] for k in range(1, len(idx) - 1))
            except (ValueError, IndexError) as e:
                raise ValueError(f"OBJ {path}:{lineno}: cannot parse {line.strip()[:80]!r} ({e})") from None
    v = np.asarray(verts, np.float32).reshape(-1, 3)
    colors = None
    if cols and len(cols) == len(verts):
        colors = (np.clip(np.asarray(cols), 0, 1) * 255 + 0.5).astype(np.uint8)
    normals = np.asarray(norms, np.float32) if norms and len(norms) == len(verts) else None
    fa = np.asarray(faces, np.int64).reshape(-1, 3)
    if len(fa) and (fa.min() < 0 or fa.max() >= len(v)):
        raise ValueError(f"OBJ {path}: face indices must be in [1, {len(v)}], found [{fa.min() + 1}, {fa.max() + 1}]")
    return Mesh(v, fa, colors, normals)


def write_mesh(path: str | os.PathLike, mesh: Mesh) -> Path:
    """Write ``mesh`` by suffix: ``.ply`` (binary), ``.glb`` (glTF axes, see :mod:`forward3d.io.glb`), ``.obj``."""
    path = Path(path)
    suffix = path.suffix.lower()
    writers = {".ply": write_mesh_ply, ".glb": write_glb, ".obj": write_obj}
    if suffix not in writers:
        raise ValueError(f"write_mesh {path}: expected a suffix in {sorted(writers)}, found {suffix!r}")
    return writers[suffix](path, mesh)


def read_mesh(path: str | os.PathLike) -> Mesh:
    """Read a mesh by suffix: ``.ply``, ``.glb`` (back to forward3d axes), ``.obj``."""
    path = Path(path)
    suffix = path.suffix.lower()
    readers = {".ply": read_mesh_ply, ".glb": read_glb, ".obj": read_obj}
    if suffix not in readers:
        raise ValueError(f"read_mesh {path}: expected a suffix in {sorted(readers)}, found {suffix!r}")
    return readers[suffix](path)


# --------------------------------------------------------------------------------------------------
# Standard outputs
# --------------------------------------------------------------------------------------------------


def reconstruction_point_cloud(recon: Reconstruction) -> PointCloud | None:
    """``recon.points``, else all valid (finite, non-zero) points of ``recon.point_maps``, else None."""
    if recon.points is not None:
        return recon.points
    if recon.point_maps is None:
        return None
    pts = recon.point_maps.reshape(-1, 3)
    valid = np.isfinite(pts).all(-1) & (np.abs(pts).sum(-1) > 0)
    colors = None if recon.point_map_colors is None else recon.point_map_colors.reshape(-1, 3)[valid]
    return PointCloud(pts[valid], colors)


def export_reconstruction(
    recon: Reconstruction,
    out_dir: str | os.PathLike,
    formats: Iterable[str] = FORMATS,
    image_paths: list[str] | None = None,
) -> dict[str, Path]:
    """Write the standard outputs of ``recon`` into ``out_dir`` (see the module table).

    Args:
        recon: the reconstruction.
        out_dir: output folder (created).
        formats: any of ``FORMATS``; ``mesh`` is skipped when there is no mesh, ``ply`` when there
            are no points.
        image_paths: N image paths for COLMAP ``NAME`` and nerfstudio ``file_path`` (relative to the
            image folder / ``out_dir``); defaults to frame names (nerfstudio: ``images/<name>.png``).

    Returns:
        written outputs: keys ``ply``, ``mesh`` (mesh.ply), ``glb``, ``tum``, ``colmap`` (the folder),
        ``nerfstudio``, ``bundle`` (the .npz).
    """
    formats = tuple(formats)
    unknown = sorted(set(formats) - set(FORMATS))
    if unknown:
        raise ValueError(f"export_reconstruction: unknown formats {unknown}, expected some of {list(FORMATS)}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    pc = reconstruction_point_cloud(recon) if ("ply" in formats or "colmap" in formats) else None
    if "ply" in formats:
        if pc is None:
            log.warning("export_reconstruction: no points or point maps, point_cloud.ply not written")
        else:
            written["ply"] = write_point_cloud(out / "point_cloud.ply", pc)
    if "mesh" in formats and recon.mesh is not None:
        written["mesh"] = write_mesh_ply(out / "mesh.ply", recon.mesh)
        written["glb"] = write_glb(out / "mesh.glb", recon.mesh)
    if "tum" in formats:
        written["tum"] = write_tum(out / "trajectory_tum.txt", recon.timestamps, recon.c2w)
    # COLMAP NAME is relative to the image folder: the file name of each image path, by default
    # "<frame name>.png" as in the nerfstudio default "images/<frame name>.png"
    colmap_names = [Path(p).name for p in (image_paths or default_image_paths(recon.frame_names))]
    if "colmap" in formats:
        written["colmap"] = write_colmap_text(out / "colmap", recon, pc, colmap_names)
    if "nerfstudio" in formats:
        ply_rel = "point_cloud.ply" if "ply" in written else None
        written["nerfstudio"] = write_transforms_json(out / "transforms.json", recon, image_paths, ply_rel)
    if "bundle" in formats:
        written["bundle"] = save_reconstruction(out / "reconstruction.npz", recon)
    log.info("exported %s to %s", ", ".join(sorted(written)), out)
    return written


def write_outputs(recon: Reconstruction, out_dir: str | os.PathLike, extra_metrics: dict[str, Any] | None = None,
                  previews: bool = True, up: np.ndarray | None = None,
                  formats: Iterable[str] = FORMATS) -> dict[str, Path]:
    """The whole output set of a run: :func:`export_reconstruction`, ``previews/*.png`` and ``metrics.json``.

    Previews show the geometry and the trajectory; when ``recon.trajectory_metrics`` is set they show the
    estimate aligned to the ground truth (red vs blue). ``metrics.json`` is written when there is
    something to score (trajectory metrics or ``extra_metrics``): backend, frame count, ATE/RPE, the
    extras, timings and the number of failed frames.

    Args:
        recon: the reconstruction (``trajectory_metrics`` set by :func:`forward3d.eval.traj.trajectory_metrics`).
        out_dir: the output folder (usually a staging folder of :func:`forward3d.io.atomic.staged_folder`).
        extra_metrics: more entries for ``metrics.json`` (e.g. surface scores).
        previews: render ``previews/*.png``.
        up: world up direction for the previews (default: the GT's or minus the first camera's y axis).
    """
    out = Path(out_dir)
    written = export_reconstruction(recon, out, formats)
    traj = recon.trajectory_metrics
    if previews:
        from forward3d.viz import write_previews

        geometry = recon.mesh if recon.mesh is not None and len(recon.mesh.faces) else recon.points
        if traj is not None:
            est, gt = traj.aligned_c2w, traj.gt_c2w
            if geometry is not None:
                geometry = geometry.transform(traj.alignment)
            up = up if up is not None else -gt[0][:3, 1]
        else:
            est, gt = recon.c2w, None
            up = up if up is not None else -recon.c2w[0][:3, 1]  # OpenCV y points down in the image
        if geometry is not None and len(getattr(geometry, "faces", getattr(geometry, "points", []))) == 0:
            geometry = None
        title = (f"{recon.backend} trajectory (red) vs ground truth (blue)" if gt is not None
                 else "estimated trajectory")
        if write_previews(out / "previews", geometry, est, gt, up=up, title=title):
            written["previews"] = out / "previews"
    if traj is not None or extra_metrics:
        metrics: dict[str, Any] = {"backend": recon.backend, "num_frames": len(recon),
                                   "metric_scale": recon.metric_scale}
        if traj is not None:
            metrics.update(traj.to_dict())
        metrics.update(extra_metrics or {})
        if recon.timings:
            metrics["timings"] = recon.timings
        metrics["tracking_failures"] = len(recon.failures)
        if recon.interrupted:
            metrics["partial"] = True
        written["metrics"] = write_json(out / "metrics.json", metrics)
    return written
