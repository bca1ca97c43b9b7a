"""The pycolmap boundary: SIFT extraction, pair matching, mapping, and the conversion of pycolmap's
model into forward3d types (:class:`SfMModel`). Nothing outside this module touches pycolmap objects.

COLMAP speaks the OpenCV camera axes and puts pixel centres at +0.5 like forward3d, and its images hold
``cam_from_world`` (a ``w2c``), so the conversion is an inverse and a quaternion order (pycolmap's
``Rigid3d`` matrices are used directly, no quaternion crosses this boundary).
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from forward3d.sfm.config import SfMConfig
from forward3d.types import PointCloud

__all__ = ["CameraPrior", "SfMModel", "import_pycolmap", "run_colmap", "SiftMatcher"]

log = logging.getLogger(__name__)


def import_pycolmap() -> Any:
    """``pycolmap``, or an ImportError naming the extra that installs it."""
    from forward3d.optional import import_optional

    return import_optional("pycolmap", "sfm", "structure from motion")


@dataclass(frozen=True)
class CameraPrior:
    """What is known about the camera before SfM.

    Attributes:
        K: ``[3, 3]`` intrinsics (for the SfM image size), or None (unknown: COLMAP's default focal guess).
        fixed: ``K`` is known exactly and kept fixed in bundle adjustment; else it is a starting value.
        source: where it came from (``"frames"``, ``"file PATH"``, ``"EXIF"``, ``"default"``), for the log.
    """

    K: np.ndarray | None = None
    fixed: bool = False
    source: str = "default"


@dataclass
class SfMModel:
    """The SfM result for the M SfM images (keyframes), in the order given to :func:`run_colmap`.

    Attributes:
        registered: ``[M]`` bool: the image is in the (largest) model.
        c2w: ``[M, 4, 4]`` float64 camera-to-world (identity where not registered).
        K: ``[M, 3, 3]`` float64 pinhole intrinsics (the shared camera's for unregistered images).
        points: sparse world points with colours (``[P, 3]``).
        point_errors: ``[P]`` mean reprojection error of each point in pixels.
        visibility: M int64 arrays: indices into ``points`` seen by each image (empty if unregistered).
        mean_reprojection_error: over all observations, pixels.
        num_features: ``[M]`` SIFT features per image.
        num_models: models COLMAP found (this is the largest; the others are in ``others``).
        camera: the estimated camera: COLMAP model name and parameters of the first registered image.
        features: M tuples ``(uv [k, 2], descriptors [k, 128] float32 unit norm, point index [k])`` of
            the keypoints of each registered image that have a 3D point (for PnP of other frames).
        timings: seconds per stage (``extract_s``, ``match_s``, ``map_s``).
        others: the smaller models of the same run (at least 3 images each, largest first), in their own
            worlds and scales (:func:`forward3d.sfm.merge.join_models` maps them into this one).
    """

    registered: np.ndarray
    c2w: np.ndarray
    K: np.ndarray
    points: PointCloud
    point_errors: np.ndarray
    visibility: list[np.ndarray]
    mean_reprojection_error: float
    num_features: np.ndarray
    num_models: int
    camera: dict[str, Any]
    features: list[tuple[np.ndarray, np.ndarray, np.ndarray]]
    timings: dict[str, float] = field(default_factory=dict)
    others: list["SfMModel"] = field(default_factory=list)


def _unit_rows(d: np.ndarray) -> np.ndarray:
    d = np.asarray(d, np.float32)
    return d / np.maximum(np.linalg.norm(d, axis=1, keepdims=True), 1e-12)


def _camera_params(model: str, K: np.ndarray) -> list[float]:
    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
    if model == "PINHOLE":
        return [fx, fy, cx, cy]
    f = 0.5 * (fx + fy)
    return [f, cx, cy] + ([0.0] if model == "SIMPLE_RADIAL" else [])


def extraction_options(pycolmap: Any, cfg: SfMConfig) -> Any:
    """pycolmap's SIFT extraction options from the SfM options (one place for the SfM images and PnP)."""
    opts = pycolmap.FeatureExtractionOptions()
    opts.num_threads = cfg.threads
    opts.max_image_size = cfg.max_image_size if cfg.max_image_size > 0 else -1
    opts.sift.max_num_features = cfg.max_features
    opts.sift.peak_threshold = float(cfg.sift_peak_threshold)
    opts.sift.domain_size_pooling = bool(cfg.sift_dsp)
    opts.sift.estimate_affine_shape = bool(cfg.sift_affine)
    return opts


def run_colmap(image_dir: Path, names: list[str], pairs: set[tuple[int, int]], prior: CameraPrior, cfg: SfMConfig,
               workdir: Path, progress: bool = True) -> SfMModel:
    """Extract SIFT on ``image_dir/names``, match the index ``pairs``, map and bundle-adjust.

    COLMAP's own log (glog) is limited to warnings unless this module's logger is at DEBUG.

    Raises:
        ValueError: too few images with texture (SIFT features), or no model (what to try is in the message).
    """
    pycolmap = import_pycolmap()
    with quiet_colmap(pycolmap):
        return _run_colmap(pycolmap, image_dir, names, pairs, prior, cfg, workdir)


@contextlib.contextmanager
def quiet_colmap(pycolmap: Any) -> Iterator[None]:
    """COLMAP's log (glog) at warnings and above while active, unless this module logs at DEBUG."""
    glog = pycolmap.logging
    previous = glog.minloglevel
    glog.minloglevel = 0 if log.isEnabledFor(logging.DEBUG) else 1
    try:
        yield
    finally:
        glog.minloglevel = previous


def _run_colmap(pycolmap: Any, image_dir: Path, names: list[str], pairs: set[tuple[int, int]], prior: CameraPrior,
                cfg: SfMConfig, workdir: Path) -> SfMModel:
    workdir.mkdir(parents=True, exist_ok=True)
    db_path = workdir / "database.db"
    timings: dict[str, float] = {}
    model = "PINHOLE" if prior.fixed else cfg.camera_model
    reader = pycolmap.ImageReaderOptions()
    reader.camera_model = model
    if prior.K is not None:
        reader.camera_params = ",".join(f"{v:.10g}" for v in _camera_params(model, prior.K))
    extraction = extraction_options(pycolmap, cfg)
    mode = pycolmap.CameraMode.SINGLE if cfg.shared_camera else pycolmap.CameraMode.PER_IMAGE
    t = time.perf_counter()
    pycolmap.extract_features(db_path, image_dir, image_names=names, camera_mode=mode, reader_options=reader,
                              extraction_options=extraction, device=pycolmap.Device.cpu)
    timings["extract_s"] = time.perf_counter() - t

    db = pycolmap.Database.open(db_path)
    try:
        ids = {im.name: im.image_id for im in db.read_all_images()}
        num_features = np.array([db.num_keypoints_for_image(ids[n]) if n in ids else 0 for n in names], np.int64)
    finally:
        db.close()
    textured = num_features >= max(cfg.min_features, 1)
    if textured.sum() < 3:
        raise ValueError(f"structure from motion: only {int(textured.sum())} of {len(names)} images have at least "
                         f"{cfg.min_features} SIFT features (found {num_features.tolist()[:10]}...): the input has "
                         "no texture (a white wall, a dark or blurred video); film textured surfaces, or give "
                         "known poses with --poses")

    pair_file = workdir / "pairs.txt"
    pair_file.write_text("".join(f"{names[i]} {names[j]}\n" for i, j in sorted(pairs)
                                 if textured[i] and textured[j]), encoding="utf-8")
    matching = pycolmap.FeatureMatchingOptions()
    matching.num_threads = cfg.threads
    pairing = pycolmap.ImportedPairingOptions()
    pairing.match_list_path = str(pair_file)
    t = time.perf_counter()
    pycolmap.match_image_pairs(db_path, matching_options=matching, pairing_options=pairing, device=pycolmap.Device.cpu)
    timings["match_s"] = time.perf_counter() - t

    t = time.perf_counter()
    out = workdir / "sparse"
    out.mkdir(exist_ok=True)
    if cfg.mapper == "global":
        gopts = pycolmap.GlobalPipelineOptions()
        gopts.num_threads = cfg.threads
        gopts.random_seed = cfg.seed
        gopts.min_model_size = 3
        ba = gopts.mapper.bundle_adjustment
        ba.refine_focal_length = ba.refine_extra_params = not prior.fixed
        gopts.mapper.global_positioning.use_gpu = False
        ba.ceres.use_gpu = False
        models = pycolmap.global_mapping(db_path, image_dir, out, gopts)
    else:
        iopts = pycolmap.IncrementalPipelineOptions()
        iopts.num_threads = cfg.threads
        iopts.random_seed = cfg.seed
        iopts.min_model_size = 3
        iopts.ba_refine_focal_length = iopts.ba_refine_extra_params = not prior.fixed
        iopts.mapper.abs_pose_refine_focal_length = iopts.mapper.abs_pose_refine_extra_params = not prior.fixed
        models = pycolmap.incremental_mapping(db_path, image_dir, out, iopts)
    timings["map_s"] = time.perf_counter() - t
    if not models:
        raise ValueError(f"structure from motion: no model from {len(names)} images ({int(textured.sum())} textured): "
                         "too little overlap between views, too little camera translation (a pure rotation or "
                         "a camera that does not move) or repeated texture; move the camera sideways, lower "
                         "--min-parallax, use --matching exhaustive, or give known poses with --poses")
    recs = sorted(models.values(), key=lambda r: -r.num_reg_images())
    log.info("sfm: %d model(s) with %s registered images", len(recs), [r.num_reg_images() for r in recs])
    main = _convert(pycolmap, recs[0], names, ids, num_features, len(models), db_path, timings)
    main.others = [_convert(pycolmap, r, names, ids, num_features, len(models), db_path, {})
                   for r in recs[1:] if r.num_reg_images() >= 3]
    return main


def _convert(pycolmap: Any, rec: Any, names: list[str], ids: dict[str, int], num_features: np.ndarray,
             num_models: int, db_path: Path, timings: dict[str, float]) -> SfMModel:
    """pycolmap Reconstruction -> :class:`SfMModel` (the one place pycolmap types are read)."""
    m = len(names)
    point_ids = sorted(rec.points3D.keys())
    index = {pid: k for k, pid in enumerate(point_ids)}
    xyz = np.array([rec.points3D[p].xyz for p in point_ids], np.float64).reshape(-1, 3)
    rgb = np.array([rec.points3D[p].color for p in point_ids], np.uint8).reshape(-1, 3)
    err = np.array([rec.points3D[p].error for p in point_ids], np.float64)
    by_name = {im.name: im for im in rec.images.values()}
    registered = np.zeros(m, bool)
    c2w = np.tile(np.eye(4), (m, 1, 1))
    K = np.zeros((m, 3, 3))
    visibility: list[np.ndarray] = [np.zeros(0, np.int64) for _ in range(m)]
    features: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = [
        (np.zeros((0, 2)), np.zeros((0, 128), np.float32), np.zeros(0, np.int64)) for _ in range(m)]
    first_cam = None
    db = pycolmap.Database.open(db_path)
    try:
        for k, name in enumerate(names):
            im = by_name.get(name)
            if im is None or not im.has_pose:
                continue
            registered[k] = True
            w2c = np.eye(4)
            w2c[:3, :] = im.cam_from_world().matrix()
            c2w[k] = np.linalg.inv(w2c)
            cam = rec.cameras[im.camera_id]
            K[k] = cam.calibration_matrix()
            if first_cam is None:
                first_cam = cam
            idx2d = [j for j, p in enumerate(im.points2D) if p.has_point3D()]
            pidx = np.array([index[im.points2D[j].point3D_id] for j in idx2d], np.int64)
            visibility[k] = np.unique(pidx)
            kp = db.read_keypoints(ids[name])[:, :2].astype(np.float64)
            desc = np.asarray(db.read_descriptors(ids[name]).data)
            sel = np.array(idx2d, np.int64)
            features[k] = (kp[sel], _unit_rows(desc[sel]), pidx)
    finally:
        db.close()
    if first_cam is None:  # pragma: no cover - a model always has registered images
        raise ValueError("structure from motion: the model has no registered image")
    K[~registered] = first_cam.calibration_matrix()
    camera = {"model": str(first_cam.model.name), "params": [float(v) for v in first_cam.params],
              "width": int(first_cam.width), "height": int(first_cam.height)}
    extra = np.asarray(first_cam.params)[3:] if camera["model"] == "SIMPLE_RADIAL" else np.zeros(0)
    if extra.size and abs(float(extra[0])) > 0.02:
        log.warning("structure from motion: radial distortion k1=%.3f is dropped (forward3d cameras are pinhole); "
                    "use --camera-model SIMPLE_PINHOLE to fit a pinhole model instead", float(extra[0]))
    return SfMModel(registered, c2w, K, PointCloud(xyz.astype(np.float32), rgb), err, visibility,
                    float(rec.compute_mean_reprojection_error()), num_features, num_models, camera, features, timings)


class SiftMatcher:
    """SIFT on single images (pycolmap, the SfM settings) and mutual nearest-neighbour matching with
    Lowe's ratio test, for registering frames outside the SfM model.

    Args:
        cfg: the SfM options (``max_features``, ``max_image_size``, ``threads``).
    """

    def __init__(self, cfg: SfMConfig) -> None:
        pycolmap = import_pycolmap()
        self._pycolmap = pycolmap
        opts = extraction_options(pycolmap, cfg)
        with quiet_colmap(pycolmap):
            self._extractor = pycolmap.FeatureExtractor.create(opts, pycolmap.Device.cpu)

    def extract(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``[H, W, 3]`` uint8 RGB -> keypoints ``[k, 2]`` (pixels, centres at +0.5) and unit descriptors ``[k, 128]``."""
        grey = np.ascontiguousarray((image.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32))
                                    .round().clip(0, 255).astype(np.uint8))
        kp, desc = self._extractor.extract_from_uint8_array(grey)
        kp = np.asarray(self._pycolmap.keypoints_to_matrix(kp), np.float64).reshape(-1, 4)
        desc = np.asarray(desc.data).reshape(len(kp), -1)
        return kp[:, :2].copy(), _unit_rows(desc)

    @staticmethod
    def match(desc_a: np.ndarray, desc_b: np.ndarray, ratio: float = 0.8) -> np.ndarray:
        """``[m, 2]`` index pairs ``(i in a, j in b)``: mutual nearest neighbours passing the ratio test."""
        if len(desc_a) < 2 or len(desc_b) < 2:
            return np.zeros((0, 2), np.int64)
        sim = desc_a @ desc_b.T  # unit descriptors: distance^2 = 2 - 2 sim, so rank by similarity
        i = np.arange(len(sim))
        first = np.argmax(sim, axis=1)
        s1 = sim[i, first]
        sim[i, first] = -np.inf
        s2 = sim.max(axis=1)
        best, second = np.sqrt(np.maximum(2.0 - 2.0 * s1, 0.0)), np.sqrt(np.maximum(2.0 - 2.0 * s2, 0.0))
        back = np.argmax(desc_b @ desc_a.T, axis=1)  # row-wise (contiguous) is much faster than axis=0
        keep = (best < ratio * second) & (back[first] == i)
        nn = first[:, None]
        return np.stack([i[keep], nn[keep, 0]], 1).astype(np.int64)

    def absolute_pose(self, uv: np.ndarray, xyz: np.ndarray, K: np.ndarray, width: int, height: int
                      ) -> tuple[np.ndarray, np.ndarray] | None:
        """LO-RANSAC PnP + refinement (pycolmap) with the pinhole ``K`` fixed: ``(c2w [4, 4], inlier mask [k])``
        or None when it fails."""
        pycolmap = self._pycolmap
        cam = pycolmap.Camera(model="PINHOLE", width=int(width), height=int(height),
                              params=[K[0, 0], K[1, 1], K[0, 2], K[1, 2]])
        refine = pycolmap.AbsolutePoseRefinementOptions()
        refine.refine_focal_length = False
        refine.refine_extra_params = False
        res = pycolmap.estimate_and_refine_absolute_pose(np.asarray(uv, np.float64), np.asarray(xyz, np.float64),
                                                         cam, refinement_options=refine)
        if res is None:
            return None
        w2c = np.eye(4)
        w2c[:3, :] = res["cam_from_world"].matrix()
        return np.linalg.inv(w2c), np.asarray(res["inlier_mask"], bool)
