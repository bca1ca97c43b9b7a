"""Hypersim (Roberts et al., ICCV 2021): the files of the official download, and a frame reader.

Layout of one scene (``ai_VVV_NNN``), as the ml-hypersim download scripts write it::

    ai_VVV_NNN/images/scene_cam_XX_final_hdf5/frame.IIII.color.hdf5        HDR linear RGB [H, W, 3]
    ai_VVV_NNN/images/scene_cam_XX_geometry_hdf5/frame.IIII.depth_meters.hdf5
                                             distance in metres from the optical centre ALONG THE RAY
                                             (not planar z-depth), NaN where no surface
    ai_VVV_NNN/images/scene_cam_XX_geometry_hdf5/frame.IIII.render_entity_id.hdf5   -1 = no surface (optional)
    ai_VVV_NNN/_detail/cam_XX/camera_keyframe_positions.hdf5      [N, 3] camera centres, ASSET units
    ai_VVV_NNN/_detail/cam_XX/camera_keyframe_orientations.hdf5   [N, 3, 3] R_world_from_cam; the camera
                                             looks down -z with +y up (OpenGL axes)
    ai_VVV_NNN/_detail/cam_XX/camera_keyframe_frame_indices.hdf5  [N] frame id of each keyframe (optional)
    ai_VVV_NNN/_detail/metadata_scene.csv    ``parameter_name,parameter_value`` rows, ``meters_per_asset_unit``
    metadata_camera_parameters.csv           per-scene camera (ml-hypersim ``contrib/mikeroberts3000``):
                                             ``settings_output_img_width/height`` and the 4x4 ``M_proj_RC``
                                             (the OpenGL projection, modified for tilt-shift lenses)

Every array is the HDF5 dataset named ``"dataset"``. The conversions to forward3d's conventions:

- ``c2w``: position x ``meters_per_asset_unit``, rotation ``R_world_from_cam @ diag(1, -1, -1)`` (OpenGL ->
  OpenCV camera axes); metres.
- ``K`` from ``M_proj``: ``x_ndc = (M00 x + M02 z) / -z`` etc. with pixel ``u = (x_ndc + 1) W / 2`` and
  ``v = (1 - y_ndc) H / 2`` give ``fx = M00 W / 2``, ``cx = (1 - M02) W / 2``, ``fy = M11 H / 2``,
  ``cy = (1 + M12) H / 2`` (:func:`intrinsics_from_projection`). Without the csv: the standard Hypersim
  camera (60 degrees horizontal field of view, centred), with a warning.
- depth: planar ``z = distance / |K^-1 [u, v, 1]|`` at the pixel centres (:func:`ray_distance_to_depth`).
- colour: the Hypersim tone map (``scene_generate_images_tonemap.py``): scale so that the 90th percentile
  of the brightness ``0.3 R + 0.59 G + 0.11 B`` of the valid pixels becomes ``0.8`` after the gamma
  ``1 / 2.2``, clip to ``[0, 1]`` (:func:`tonemap`).

h5py is needed: ``pip install forward3d[data]``.
"""

from __future__ import annotations

import csv
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from forward3d.io.source_base import FrameRecord, IndexedSource, natural_key
from forward3d.types import Frame, Intrinsics

__all__ = ["HypersimSource", "HypersimCamera", "read_hdf5", "read_meters_per_asset_unit", "read_camera_parameters",
           "intrinsics_from_projection", "projection_from_intrinsics", "ray_distance_to_depth", "tonemap",
           "hypersim_c2w", "hypersim_cameras", "is_hypersim_scene", "HYPERSIM_FOV_X_DEG", "GL_TO_CV_ROT"]

log = logging.getLogger(__name__)

HYPERSIM_FOV_X_DEG = 60.0  # the standard Hypersim camera (1024x768, fx = 886.81)
GL_TO_CV_ROT = np.diag([1.0, -1.0, -1.0])  # OpenGL camera axes (y up, -z forward) -> OpenCV (y down, z forward)
CAMERA_PARAMETERS_CSV = "metadata_camera_parameters.csv"
_COLOR = re.compile(r"^frame\.(\d+)\.color\.hdf5$")
_CAM = re.compile(r"^scene_(cam_\d+)_final_hdf5$")


def _h5py():
    try:
        import h5py
    except ImportError as exc:
        raise ImportError(f"reading Hypersim needs h5py: pip install forward3d[data] ({exc})") from exc
    return h5py


def read_hdf5(path: str | Path) -> np.ndarray:
    """The ``"dataset"`` array of a Hypersim HDF5 file (ValueError naming the file when unreadable)."""
    path = Path(path)
    h5py = _h5py()
    try:
        with h5py.File(path, "r") as f:
            if "dataset" not in f:
                raise ValueError(f"expected an HDF5 dataset named 'dataset', found {sorted(f.keys())}")
            return np.asarray(f["dataset"][()])
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from exc
    except OSError as exc:
        raise ValueError(f"{path}: cannot read the Hypersim HDF5 file ({exc})") from exc


def read_meters_per_asset_unit(path: str | Path) -> float:
    """``meters_per_asset_unit`` of a scene's ``_detail/metadata_scene.csv``."""
    path = Path(path)
    try:
        with path.open(newline="", encoding="utf-8") as fh:
            rows = {r[0].strip(): r[1].strip() for r in csv.reader(fh) if len(r) >= 2}
    except OSError as exc:
        raise ValueError(f"{path}: cannot read the Hypersim scene metadata ({exc})") from exc
    try:
        v = float(rows["meters_per_asset_unit"])
    except (KeyError, ValueError):
        raise ValueError(f"{path}: expected a row 'meters_per_asset_unit,<number>', found "
                         f"{rows.get('meters_per_asset_unit', 'none')!r}") from None
    if not np.isfinite(v) or v <= 0:
        raise ValueError(f"{path}: meters_per_asset_unit must be a positive number, found {v}")
    return v


@dataclass(frozen=True)
class HypersimCamera:
    """A scene's camera: ``M_proj`` ``[4, 4]`` (OpenGL-style projection) and the image size."""

    M_proj: np.ndarray
    width: int
    height: int

    @property
    def intrinsics(self) -> Intrinsics:
        return intrinsics_from_projection(self.M_proj, self.width, self.height)


def read_camera_parameters(path: str | Path, scene: str) -> HypersimCamera | None:
    """The row of ``scene`` in ``metadata_camera_parameters.csv`` (None when the scene is not listed)."""
    path = Path(path)
    try:
        with path.open(newline="", encoding="utf-8") as fh:
            for row in csv.DictReader(fh):
                if row.get("scene_name") != scene:
                    continue
                try:
                    M = np.array([[float(row[f"M_proj_{r}{c}"]) for c in range(4)] for r in range(4)])
                    w, h = int(float(row["settings_output_img_width"])), int(float(row["settings_output_img_height"]))
                except (KeyError, ValueError) as exc:
                    raise ValueError(f"{path}: scene {scene}: expected settings_output_img_width/height and "
                                     f"M_proj_00..M_proj_33 numbers ({type(exc).__name__}: {exc})") from None
                return HypersimCamera(M, w, h)
    except OSError as exc:
        raise ValueError(f"{path}: cannot read the Hypersim camera parameters ({exc})") from exc
    return None


def intrinsics_from_projection(M_proj: np.ndarray, width: int, height: int) -> Intrinsics:
    """Pinhole intrinsics (pixels, OpenCV, centres at +0.5) of a Hypersim ``M_proj`` for ``width x height``.

    The skew terms ``M01``/``M10`` are zero in every Hypersim scene; a matrix with them raises."""
    M = np.asarray(M_proj, np.float64)
    if M.shape != (4, 4) or not np.isfinite(M).all():
        raise ValueError(f"intrinsics_from_projection: expected a finite [4, 4] M_proj, found {list(M.shape)}")
    if abs(M[0, 1]) > 1e-9 or abs(M[1, 0]) > 1e-9 or abs(M[3, 2] + 1) > 1e-9:
        raise ValueError(f"intrinsics_from_projection: expected M_proj without skew and with row 3 = [0, 0, -1, 0] "
                         f"(a perspective projection), found {M.tolist()}")
    return Intrinsics(M[0, 0] * width / 2, M[1, 1] * height / 2, (1 - M[0, 2]) * width / 2,
                      (1 + M[1, 2]) * height / 2, int(width), int(height))


def projection_from_intrinsics(intr: Intrinsics, near: float = 0.1, far: float = 1000.0) -> np.ndarray:
    """The ``[4, 4]`` ``M_proj`` of ``intr`` (the inverse of :func:`intrinsics_from_projection`)."""
    W, H = intr.width, intr.height
    M = np.zeros((4, 4))
    M[0, 0], M[0, 2] = 2 * intr.fx / W, 1 - 2 * intr.cx / W
    M[1, 1], M[1, 2] = 2 * intr.fy / H, 2 * intr.cy / H - 1
    M[2, 2], M[2, 3] = -(far + near) / (far - near), -2 * far * near / (far - near)
    M[3, 2] = -1.0
    return M


def ray_distance_to_depth(distance: np.ndarray, K: np.ndarray) -> np.ndarray:
    """``[H, W]`` distances from the optical centre along each pixel's ray -> planar z-depth ``[H, W]``
    float32 (non-finite or non-positive -> 0)."""
    from forward3d.geometry.camera import pixel_grid, unproject

    d = np.asarray(distance, np.float64)
    if d.ndim != 2:
        raise ValueError(f"ray_distance_to_depth: expected distance [H, W], found {list(d.shape)}")
    rays = unproject(pixel_grid(*d.shape), np.ones(d.shape), K)  # z = 1
    z = d / np.linalg.norm(rays, axis=-1)
    z[~np.isfinite(z) | (z <= 0)] = 0.0
    return z.astype(np.float32)


def tonemap(rgb: np.ndarray, valid: np.ndarray | None = None, gamma: float = 1.0 / 2.2, percentile: float = 90.0,
            target: float = 0.8) -> np.ndarray:
    """The Hypersim tone map of linear HDR ``rgb`` ``[H, W, 3]`` -> ``[H, W, 3]`` uint8 (module docstring).

    ``valid``: ``[H, W]`` pixels with a surface (``render_entity_id != -1``); default all finite pixels."""
    x = np.asarray(rgb, np.float64)
    if x.ndim != 3 or x.shape[2] != 3:
        raise ValueError(f"tonemap: expected rgb [H, W, 3], found {list(x.shape)}")
    x = np.where(np.isfinite(x), x, 0.0)
    m = np.ones(x.shape[:2], bool) if valid is None else np.asarray(valid, bool)
    if not m.any():
        scale = 1.0
    else:
        brightness = 0.3 * x[..., 0] + 0.59 * x[..., 1] + 0.11 * x[..., 2]
        current = float(np.percentile(brightness[m], percentile))
        scale = 0.0 if current < 1e-4 else target ** (1.0 / gamma) / current
    out = np.clip(np.power(np.maximum(scale * x, 0.0), gamma), 0.0, 1.0)
    return np.round(out * 255.0).astype(np.uint8)


def hypersim_c2w(position: np.ndarray, R_world_from_cam: np.ndarray, meters_per_asset_unit: float) -> np.ndarray:
    """``[4, 4]`` OpenCV ``c2w`` in metres of a Hypersim keyframe (position in asset units, OpenGL axes)."""
    c2w = np.eye(4)
    c2w[:3, :3] = np.asarray(R_world_from_cam, np.float64) @ GL_TO_CV_ROT
    c2w[:3, 3] = np.asarray(position, np.float64) * float(meters_per_asset_unit)
    return c2w


def is_hypersim_scene(path: str | Path) -> bool:
    p = Path(path)
    return (p / "_detail").is_dir() and (p / "images").is_dir() and bool(hypersim_cameras(p))


def hypersim_cameras(scene_dir: str | Path) -> list[str]:
    """Camera names (``cam_00``...) of a scene with rendered colour frames, in natural order."""
    images = Path(scene_dir) / "images"
    if not images.is_dir():
        return []
    cams = [m.group(1) for d in images.iterdir() if d.is_dir() and (m := _CAM.match(d.name))]
    return sorted(cams, key=natural_key)


def _find_camera_csv(scene_dir: Path) -> Path | None:
    for folder in (scene_dir, scene_dir.parent, scene_dir.parent.parent):
        p = folder / CAMERA_PARAMETERS_CSV
        if p.is_file():
            return p
    return None


class HypersimSource(IndexedSource):
    """One camera trajectory of a Hypersim scene (see the module docstring): tone-mapped uint8 colour,
    planar metric depth, OpenCV ``c2w`` in metres, the scene's ``K``.

    Args:
        path: the scene folder ``ai_VVV_NNN``.
        camera: ``cam_XX`` (or its number); default the first camera.
        camera_parameters: ``metadata_camera_parameters.csv`` (default: searched in the scene folder and
            the two above it).
        **kwargs: :class:`~forward3d.io.source_base.IndexedSource` options (stride, max_frames, size, ...).
    """

    layout = "hypersim"

    def __init__(self, path: str | Path, *, camera: str | int | None = None,
                 camera_parameters: str | Path | None = None, **kwargs) -> None:
        super().__init__(path, **kwargs)
        root = Path(path)
        cams = hypersim_cameras(root)
        if not (root / "_detail").is_dir() or not cams:
            raise ValueError(f"{root}: not a Hypersim scene: expected images/scene_cam_XX_final_hdf5/ and _detail/")
        if camera is None:
            cam = cams[0]
        else:
            want = f"cam_{int(camera):02d}" if str(camera).isdigit() else str(camera)
            if want not in cams:
                raise ValueError(f"{root}: camera {want!r} not found; available: {', '.join(cams)}")
            cam = want
        self.scene, self.camera = root.name, cam
        self.sequence_dir = root / "images" / f"scene_{cam}_final_hdf5"
        self.geometry_dir = root / "images" / f"scene_{cam}_geometry_hdf5"
        detail = root / "_detail" / cam
        self.meters_per_asset_unit = read_meters_per_asset_unit(root / "_detail" / "metadata_scene.csv")
        positions = read_hdf5(detail / "camera_keyframe_positions.hdf5").astype(np.float64)
        orientations = read_hdf5(detail / "camera_keyframe_orientations.hdf5").astype(np.float64)
        if positions.ndim != 2 or positions.shape[1] != 3 or orientations.shape != (len(positions), 3, 3):
            raise ValueError(f"{detail}: expected keyframe positions [N, 3] and orientations [N, 3, 3], found "
                             f"{list(positions.shape)} and {list(orientations.shape)}")
        idx_file = detail / "camera_keyframe_frame_indices.hdf5"
        frame_ids = read_hdf5(idx_file).astype(np.int64).reshape(-1) if idx_file.is_file() else np.arange(len(positions))
        keyframe = {int(f): k for k, f in enumerate(frame_ids)}
        colors = sorted((p for p in self.sequence_dir.iterdir() if _COLOR.match(p.name)), key=lambda p: natural_key(p.name))
        records = []
        for c in colors:
            fid = int(_COLOR.match(c.name).group(1))
            k = keyframe.get(fid)
            if k is None or k >= len(positions):
                log.warning("%s: frame %d has no camera keyframe in %s; skipped", root, fid, detail)
                continue
            d = self.geometry_dir / f"frame.{fid:04d}.depth_meters.hdf5"
            c2w = hypersim_c2w(positions[k], orientations[k], self.meters_per_asset_unit)
            records.append(FrameRecord(len(records), f"frame.{fid:04d}", fid / 30.0, c, d if d.is_file() else None, c2w))
        if not records:
            raise ValueError(f"{self.sequence_dir}: no frame.IIII.color.hdf5 with a camera keyframe")
        self.records = records
        self.has_depth = any(r.depth_path is not None for r in records)
        self.has_gt_poses = True
        csv_path = Path(camera_parameters) if camera_parameters is not None else _find_camera_csv(root)
        cam_params = read_camera_parameters(csv_path, root.name) if csv_path is not None else None
        if cam_params is None:
            first = read_hdf5(records[0].image_path)
            h, w = first.shape[:2]
            log.warning("%s: no row for this scene in %s: using the standard Hypersim camera (%g degrees, centred); "
                        "scenes with tilt-shift lenses are then off by a few pixels", root,
                        csv_path or CAMERA_PARAMETERS_CSV, HYPERSIM_FOV_X_DEG)
            self.intrinsics = Intrinsics.from_fov(w, h, HYPERSIM_FOV_X_DEG)
        else:
            self.intrinsics = cam_params.intrinsics

    def load(self, rec: FrameRecord) -> Frame:
        """Read, tone-map and convert one frame (ValueError naming the file on bad data)."""
        hdr = read_hdf5(rec.image_path)
        if hdr.ndim != 3 or hdr.shape[2] != 3:
            raise ValueError(f"{rec.image_path}: expected an HDR colour image [H, W, 3], found {list(hdr.shape)}")
        h, w = hdr.shape[:2]
        valid = None
        ent = self.geometry_dir / f"{rec.name}.render_entity_id.hdf5"
        if ent.is_file():
            valid = read_hdf5(ent).reshape(h, w) != -1
        image = tonemap(hdr, valid)
        intr = self._native_intrinsics(w, h)
        depth = None
        if rec.depth_path is not None:
            dist = read_hdf5(rec.depth_path)
            if dist.shape != (h, w):
                raise ValueError(f"{rec.depth_path}: depth size {list(dist.shape)} does not match the colour "
                                 f"{rec.image_path} ({h}x{w})")
            depth = ray_distance_to_depth(dist, intr.K)
            if valid is not None:
                depth[~valid] = 0.0
        image, depth = self._to_native_size(rec, image, depth)
        return self._finish(image, depth, self._native_intrinsics(*image.shape[1::-1]), c2w=rec.c2w.copy(),
                            timestamp=float(rec.timestamp), index=rec.index, name=rec.name, source=str(rec.image_path))
