"""Open anything ``forward3d view`` accepts as a :class:`~forward3d.viz.scene.SceneModel`.

Accepted (every format is read by :mod:`forward3d.io`; this module only decides which reader):

- a ``forward3d recon`` output folder (``reconstruction.npz`` + ``.json``, with ``metrics.json``,
  ``point_cloud.ply``, ``mesh.glb`` ... beside it), or the ``.npz`` / its ``.json`` directly;
- a point-cloud or mesh ``.ply`` / ``.glb`` / ``.obj``; a 3DGS ``.ply`` or ``.splat``;
- a COLMAP model folder, text (``cameras.txt``, ``images.txt``, ``points3D.txt``) or binary (``.bin``,
  read with pycolmap, extra ``[sfm]``); also a folder holding ``colmap/``, ``sparse/0/`` or ``sparse/`` with one;
- a nerfstudio ``transforms.json`` (or its folder).

A ground-truth trajectory (TUM or Redwood ``.log``) can be added with :func:`attach_ground_truth`:
it is associated to the frames by timestamp (TUM, when the scene has timestamps) or by index,
aligned to the scene's world (SE(3), or Sim(3) for up-to-scale reconstructions) and stored in the
scene frame, so that the viewer draws both trajectories on top of each other.
"""

from __future__ import annotations

import json
import logging
import os
import struct
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from forward3d.viz.scene import SceneModel

__all__ = ["load_scene", "attach_ground_truth", "attach_images", "SUPPORTED"]

log = logging.getLogger(__name__)

SUPPORTED = ("a forward3d recon output folder (reconstruction.npz), a reconstruction .npz, a point-cloud or mesh "
             ".ply/.glb/.obj, a 3DGS .ply or .splat, a COLMAP model folder (text or binary), a nerfstudio transforms.json")
_RECON_FILES = {"point cloud (PLY)": "point_cloud.ply", "mesh (GLB)": "mesh.glb", "mesh (PLY)": "mesh.ply",
                "trajectory (TUM)": "trajectory_tum.txt"}


def load_scene(path: str | os.PathLike, gt: str | os.PathLike | None = None,
               images: str | os.PathLike | None = None) -> SceneModel:
    """Read ``path`` (see the module docstring) into a scene; ``gt``: optional ground-truth trajectory;
    ``images``: optional folder of the input images, for the camera thumbnails (see :func:`attach_images`).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: an unsupported or corrupt input, naming the file and what was expected.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or folder")
    try:
        scene = _load_folder(path) if path.is_dir() else _load_file(path)
    except (struct.error, IndexError, KeyError, UnicodeDecodeError, OverflowError, EOFError, zipfile.BadZipFile) as exc:
        # a reader tripped over a damaged file in a way it does not check for: still one clear line
        raise ValueError(f"{path}: corrupt or unreadable file ({type(exc).__name__}: {exc})") from exc
    if images is not None:
        attach_images(scene, images)
    if gt is not None:
        attach_ground_truth(scene, gt)
    s = scene.summary()
    log.info("%s: %d frames, %d frame points, %d cloud points, %d mesh faces, %d Gaussians", path, s["frames"],
             s["frame_points"], s["cloud_points"], s["mesh_faces"], s["gaussians"])
    return scene


# --------------------------------------------------------------------------------------------------
# Folders
# --------------------------------------------------------------------------------------------------


def _colmap_folder(path: Path) -> Path | None:
    for cand in (path, path / "colmap", path / "sparse" / "0", path / "sparse"):
        if (cand / "cameras.txt").is_file() and (cand / "images.txt").is_file():
            return cand
    return None


def _colmap_binary(path: Path) -> Path | None:
    for cand in (path, path / "colmap", path / "sparse" / "0", path / "sparse"):
        if (cand / "cameras.bin").is_file():
            return cand
    return None


def _load_folder(path: Path) -> SceneModel:
    if (path / "reconstruction.npz").is_file():
        return _load_bundle(path / "reconstruction.npz")
    colmap = _colmap_folder(path)
    if colmap is not None:
        return _load_colmap(colmap)
    if (path / "transforms.json").is_file():
        return _load_transforms(path / "transforms.json")
    binary = _colmap_binary(path)
    if binary is not None:
        return _load_colmap(binary, binary=True)
    raise ValueError(f"{path}: a folder with nothing forward3d view can show; expected {SUPPORTED}")


# --------------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------------


def _load_file(path: Path) -> SceneModel:
    suffix = path.suffix.lower()
    if path.stat().st_size == 0:
        raise ValueError(f"{path}: empty file")
    if suffix == ".npz":
        return _load_bundle(path)
    if suffix == ".json":
        return _load_json(path)
    if suffix == ".ply":
        return _load_ply(path)
    if suffix == ".splat":
        from forward3d.io.gaussians import read_splat

        return _single(path, gaussians=read_splat(path))
    if suffix == ".glb":
        from forward3d.io.glb import read_glb

        return _mesh_or_points(path, read_glb(path))
    if suffix == ".obj":
        from forward3d.io.export import read_obj

        return _mesh_or_points(path, read_obj(path))
    raise ValueError(f"{path}: unsupported file type {suffix or '(no suffix)'!r}; expected {SUPPORTED}")


def _single(path: Path, **geometry: Any) -> SceneModel:
    scene = SceneModel(title=path.name, source=str(path))
    scene.set_geometry(notify=False, **geometry)
    scene.downloads = {f"{path.name}": path}
    return scene


def _mesh_or_points(path: Path, mesh) -> SceneModel:
    from forward3d.types import PointCloud

    if len(mesh.vertices) == 0:
        raise ValueError(f"{path}: no vertices")
    if len(mesh.faces):
        return _single(path, mesh=mesh)
    return _single(path, cloud=PointCloud(mesh.vertices, mesh.vertex_colors))


def _load_ply(path: Path) -> SceneModel:
    from forward3d.io.ply import ply_kind, read_mesh_ply, read_point_cloud

    kind = ply_kind(path)
    if kind == "gaussians":
        from forward3d.io.gaussians import read_gaussians_ply

        return _single(path, gaussians=read_gaussians_ply(path))
    if kind == "mesh":
        return _mesh_or_points(path, read_mesh_ply(path))
    cloud = read_point_cloud(path)
    if len(cloud) == 0:
        raise ValueError(f"{path}: the PLY file has no vertices")
    return _single(path, cloud=cloud)


def _load_json(path: Path) -> SceneModel:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: invalid JSON ({e})") from None
    if isinstance(data, dict) and isinstance(data.get("frames"), list):
        return _load_transforms(path)
    from forward3d.io.bundle import FORMAT

    if isinstance(data, dict) and data.get("format") == FORMAT:
        return _load_bundle(path.with_suffix(".npz"))
    raise ValueError(f"{path}: expected a nerfstudio transforms.json (a 'frames' list) or a reconstruction.json")


# --------------------------------------------------------------------------------------------------
# Readers of the structured formats
# --------------------------------------------------------------------------------------------------


def _read_metrics(folder: Path) -> dict:
    p = folder / "metrics.json"
    if not p.is_file():
        return {}
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        log.warning("%s: invalid JSON (%s); metrics not shown", p, e)
        return {}
    return data if isinstance(data, dict) else {}


def _load_bundle(npz: Path) -> SceneModel:
    from forward3d.io.bundle import load_reconstruction

    recon = load_reconstruction(npz)
    folder = npz.parent
    image_paths = _bundle_image_paths(recon, folder)
    scene = SceneModel.from_reconstruction(recon, image_paths=image_paths, title=folder.name, source=str(folder))
    scene.metrics = _read_metrics(folder)
    scene.downloads = {label: folder / name for label, name in _RECON_FILES.items() if (folder / name).is_file()}
    return scene


def _bundle_image_paths(recon, folder: Path) -> list[str | None] | None:
    """Image files for the thumbnails of a bundle without point-map colours: ``metadata["image_paths"]``
    (absolute, or relative to the bundle folder) when those files exist."""
    if recon.point_map_colors is not None:
        return None
    paths = recon.metadata.get("image_paths")
    if not isinstance(paths, list) or len(paths) != len(recon):
        return None
    out = [str(p if Path(p).is_absolute() else folder / p) for p in map(str, paths)]
    return out if any(Path(p).is_file() for p in out) else None


def _load_colmap(folder: Path, binary: bool = False) -> SceneModel:
    from forward3d.io.colmap import read_colmap_binary, read_colmap_text

    cams = read_colmap_binary(folder) if binary else read_colmap_text(folder)
    roots = [folder / "images", folder.parent / "images", folder.parent.parent / "images"]
    root = next((r for r in roots if r.is_dir()), None)
    paths = [None if root is None else str(root / n) for n in cams.names]
    return _camera_set_scene(cams, paths, folder, "COLMAP")


def _load_transforms(path: Path) -> SceneModel:
    from forward3d.io.nerfstudio import read_transforms_json

    cams = read_transforms_json(path)
    base = path.parent
    paths = [str(base / n) for n in cams.names]
    ply = cams.extras.get("ply_file_path")
    if ply and (base / ply).is_file():
        from forward3d.io.ply import read_point_cloud

        cams.points = read_point_cloud(base / ply)
    scene = _camera_set_scene(cams, paths, base, "nerfstudio")
    if ply and (base / ply).is_file():
        scene.downloads[Path(ply).name] = base / ply
    return scene


def _camera_set_scene(cams, image_paths: list[str | None], folder: Path, kind: str) -> SceneModel:
    scene = SceneModel(title=f"{folder.name} ({kind})", source=str(folder))
    stamps = cams.extras.get("timestamps")
    for i in range(len(cams)):
        w, h = (int(v) for v in cams.image_sizes[i])
        p = image_paths[i]
        scene.add_frame(i, Path(cams.names[i]).stem, cams.c2w[i], cams.K[i], (w, h),
                        image_path=p if p and Path(p).is_file() else None,
                        timestamp=None if stamps is None else float(stamps[i]), notify=False)
    if cams.points is not None and len(cams.points):
        scene.set_geometry(cloud=cams.points, notify=False)
    scene.settings = {"format": kind, "cameras": len(cams)}
    return scene


def attach_images(scene: SceneModel, folder: str | os.PathLike) -> int:
    """Use the pictures in ``folder`` as the thumbnails of the frames with the same name (file stem),
    for frames that have none (a ``forward3d recon`` output keeps no images). Returns how many matched.

    Raises:
        ValueError: ``folder`` is not a folder, or no picture in it matches a frame name.
    """
    from forward3d.io.source_base import list_images

    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"--images {folder}: expected a folder of images")
    by_stem = {p.stem: p for p in list_images(folder)}
    matched = 0
    for f in scene.frames:
        p = by_stem.get(f.name)
        if p is not None:
            matched += 1
            if f.image is None:
                f.image_path = str(p)
    if scene.frames and matched == 0:
        raise ValueError(f"--images {folder}: no picture named like the frames (e.g. {scene.frames[0].name!r}) "
                         f"among its {len(by_stem)} pictures")
    return matched


# --------------------------------------------------------------------------------------------------
# Ground truth
# --------------------------------------------------------------------------------------------------


def _read_gt(path: Path) -> tuple[np.ndarray | None, np.ndarray]:
    if path.suffix.lower() == ".log":
        from forward3d.io.trajectory import read_redwood_log

        return None, read_redwood_log(path)
    from forward3d.io.trajectory import read_tum

    return read_tum(path)


def attach_ground_truth(scene: SceneModel, gt_path: str | os.PathLike, metric_scale: bool | None = None) -> None:
    """Read a ground-truth trajectory, align it to the scene's cameras and store it in ``scene.gt_c2w``.

    Frames are matched by timestamp when both sides have them (within 20 ms), else by index (the
    shorter of the two). ``metric_scale``: SE(3) alignment when True, Sim(3) when False; by default
    ``settings["metric_scale"]`` (True when absent). The ATE of the fit goes into ``scene.metrics``
    when there is no ATE there yet.
    """
    from forward3d.eval import ate
    from forward3d.eval.traj import associate
    from forward3d.geometry.se3 import inverse_sim3, split_sim3, transform_points

    gt_path = Path(gt_path)
    gt_ts, gt_c2w = _read_gt(gt_path)
    pred = scene.c2w()
    if len(gt_c2w) < 3 or len(pred) < 3:
        raise ValueError(f"{gt_path}: aligning a ground-truth trajectory needs at least 3 poses on both sides, "
                         f"found {len(gt_c2w)} ground-truth and {len(pred)} scene poses")
    stamps = scene.timestamps()
    ia = ib = np.zeros(0, np.int64)
    if gt_ts is not None and stamps is not None:
        ia, ib = associate(stamps, gt_ts)
        if len(ia) < 3 and len(pred) == len(gt_c2w):
            log.warning("%s: the timestamps do not match the scene's; matching the %d poses by index",
                        gt_path, len(pred))
            ia = ib = np.arange(len(pred))
    else:
        n = min(len(pred), len(gt_c2w))
        ia = ib = np.arange(n)
    if len(ia) < 3:
        raise ValueError(f"{gt_path}: only {len(ia)} ground-truth poses match the scene's frames by timestamp "
                         "(need 3); are the timestamps in the same clock?")
    if metric_scale is None:
        metric_scale = scene.settings.get("metric_scale", True) is not False
    r = ate(pred[ia], gt_c2w[ib], align="se3" if metric_scale else "sim3")
    to_scene = inverse_sim3(r["alignment"])  # ground-truth world -> scene world
    _, R, _ = split_sim3(to_scene)
    gt_scene = gt_c2w.copy()
    gt_scene[:, :3, :3] = R @ gt_c2w[:, :3, :3]
    gt_scene[:, :3, 3] = transform_points(to_scene, gt_c2w[:, :3, 3])
    scene.set_geometry(gt_c2w=gt_scene, notify=False)
    if not any(k.startswith("ate") for k in scene.metrics):
        scene.metrics[f"ate_{'se3' if metric_scale else 'sim3'}_rmse_m"] = float(r["rmse"])
        scene.metrics["num_frames_with_gt"] = int(len(ia))
