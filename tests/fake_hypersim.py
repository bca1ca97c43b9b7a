"""A tiny Hypersim scene in the official layout, written from a synthetic scene independently of the
reader: HDR colour, ray distances (not planar depth), keyframe positions in asset units with OpenGL
orientations, metadata_scene.csv and a metadata_camera_parameters.csv row (off-centre principal point,
as the tilt-shift scenes have)."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np

GL = np.diag([1.0, -1.0, -1.0])


def _h5(path: Path, a: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        f.create_dataset("dataset", data=a)


def shifted_K(scene, dx: float = 3.0, dy: float = -2.0) -> np.ndarray:
    K = np.array(scene.K, np.float64)
    K[0, 2] += dx
    K[1, 2] += dy
    return K


def ray_distance(depth: np.ndarray, K: np.ndarray) -> np.ndarray:
    """Planar z-depth -> distance from the optical centre along each pixel-centre ray."""
    h, w = depth.shape
    v, u = np.meshgrid(np.arange(h) + 0.5, np.arange(w) + 0.5, indexing="ij")
    x, y = (u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1]
    return depth * np.sqrt(x * x + y * y + 1.0)


def write_hypersim_scene(root: Path, name: str, scene, frames: list[int], K: np.ndarray, *, camera: str = "cam_00",
                         meters_per_asset_unit: float = 0.0254, hdr_gain: float = 3.0, hole: bool = True,
                         camera_csv: bool = True, dtype=np.float16) -> Path:
    """Write ``frames`` of ``scene`` (rendered with ``K``) as scene ``root/name``; returns the scene folder.

    The colour is linear HDR ``(srgb ** 2.2) * hdr_gain``; ``hole``: a 4x4 block without surface (NaN
    distance, render entity -1) in every frame."""
    sd = root / name
    w, h = scene.config.width, scene.config.height
    img_dir = sd / "images" / f"scene_{camera}_final_hdf5"
    geo_dir = sd / "images" / f"scene_{camera}_geometry_hdf5"
    positions, orientations = [], []
    for k, i in enumerate(frames):
        c2w = scene.c2w[i]
        image, depth = scene.render(c2w, K, w, h)
        hdr = (np.asarray(image, np.float64) / 255.0) ** 2.2 * hdr_gain
        dist = ray_distance(np.asarray(depth, np.float64), K)
        ent = np.ones((h, w), np.int32)
        if hole:
            dist[2:6, 2:6] = np.nan
            ent[2:6, 2:6] = -1
        _h5(img_dir / f"frame.{k:04d}.color.hdf5", hdr.astype(np.float16))
        _h5(geo_dir / f"frame.{k:04d}.depth_meters.hdf5", dist.astype(dtype))
        _h5(geo_dir / f"frame.{k:04d}.render_entity_id.hdf5", ent)
        positions.append(c2w[:3, 3] / meters_per_asset_unit)
        orientations.append(c2w[:3, :3] @ GL)  # R_world_from_cam with OpenGL camera axes
    detail = sd / "_detail" / camera
    _h5(detail / "camera_keyframe_positions.hdf5", np.asarray(positions))
    _h5(detail / "camera_keyframe_orientations.hdf5", np.asarray(orientations))
    _h5(detail / "camera_keyframe_frame_indices.hdf5", np.arange(len(frames)))
    (sd / "_detail" / "metadata_scene.csv").write_text(
        f"parameter_name,parameter_value\nmeters_per_asset_unit,{meters_per_asset_unit!r}\n")
    (sd / "_detail" / "metadata_cameras.csv").write_text(f"camera_name\n{camera}\n")
    if camera_csv:
        M = np.zeros((4, 4))
        M[0, 0], M[0, 2] = 2 * K[0, 0] / w, 1 - 2 * K[0, 2] / w
        M[1, 1], M[1, 2] = 2 * K[1, 1] / h, 2 * K[1, 2] / h - 1
        M[2, 2], M[2, 3], M[3, 2] = -1.0002, -0.2, -1.0
        csv_path = root / "metadata_camera_parameters.csv"
        cols = ["scene_name", "settings_output_img_width", "settings_output_img_height"] + \
            [f"M_proj_{r}{c}" for r in range(4) for c in range(4)]
        rows = [] if not csv_path.is_file() else csv_path.read_text().splitlines()[1:]
        rows.append(",".join([name, str(w), str(h)] + [repr(float(M[r, c])) for r in range(4) for c in range(4)]))
        csv_path.write_text(",".join(cols) + "\n" + "\n".join(rows) + "\n")
    return sd
