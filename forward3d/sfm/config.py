"""Options of the structure-from-motion module (:func:`forward3d.sfm.run_sfm`).

The ``sfm`` back-end's config (:class:`forward3d.pipelines.sfm.SfMBackendConfig`) extends
:class:`SfMConfig`, so every default lives here once and ``forward3d recon --backend sfm --help``
lists them all.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from forward3d.config import option

__all__ = ["SfMConfig"]


@dataclass
class SfMConfig:
    """Structure from motion (pycolmap SIFT + matching + mapping + bundle adjustment).

    Attributes:
        keyframes: which frames go into SfM: ``auto`` (all of them up to ``all_keyframes_max`` frames,
            else a selection), ``all``, or ``select`` (sharp frames with enough parallax).
        all_keyframes_max: ``keyframes=auto``: inputs of at most this many frames use every frame.
        min_parallax: keyframe selection: a new keyframe once the image content moved this fraction of
            the image width since the last one (estimated by phase correlation of thumbnails).
        blur_window: keyframe selection: the sharpest frame (variance of the Laplacian) among this many
            candidates past the parallax threshold becomes the keyframe.
        max_keyframes: at most this many SfM images (a uniform subset of the selection beyond it).
        matching: ``auto`` (exhaustive for at most ``exhaustive_max`` SfM images, else sequential),
            ``exhaustive`` (all pairs) or ``sequential`` (neighbours + loop candidates).
        exhaustive_max: ``matching=auto``: the largest image set matched exhaustively.
        overlap: sequential matching: each image is matched with this many following images.
        loop_candidates: sequential matching: per image, this many earlier non-neighbour images
            most similar in a global descriptor (a tiny normalised thumbnail) are matched too (0 = none).
        mapper: ``global`` (GLOMAP, pycolmap's global_mapping: rotation averaging + global positioning, then
            bundle adjustment; the default: robust on hand-held video where the incremental mapper bent the
            model) or ``incremental`` (COLMAP).
        camera_model: COLMAP camera model estimated when the intrinsics are unknown; forward3d keeps the
            pinhole part (radial distortion is dropped, with a warning when it is large).
        shared_camera: one camera (intrinsics) for all frames (a video, one camera); off: one per image.
        intrinsics_file: known intrinsics (a camera JSON: fx, fy, cx, cy, width, height, or "K" with
            width/height, or an Open3D intrinsic JSON), kept fixed in bundle adjustment. Frames that carry
            intrinsics (``--intrinsics``, datasets) use theirs unless ``refine_intrinsics`` is on.
        refine_intrinsics: estimate the intrinsics even when the frames carry them.
        exif: use the EXIF focal length (35 mm equivalent) of image files as the starting focal length.
        max_features: SIFT features per image.
        max_image_size: SIFT runs on images downscaled to this long side (0 = native).
        sift_peak_threshold: SIFT's difference-of-Gaussians peak threshold (COLMAP's default is
            0.0067); lower finds more features on low-contrast or blurred video frames.
        sift_dsp: domain-size pooling of the SIFT descriptors (more robust matches, slower extraction).
        sift_affine: estimate an affine shape per feature (more robust to oblique views, slower).
        join_models: when the mapper splits into several models, map the smaller ones into the largest
            (a Sim(3) fitted to 3D points seen through shared frames) instead of dropping them.
        register_others: frames outside the SfM model: ``pnp`` (SIFT matches against the nearest
            registered keyframes' 3D points, then LO-RANSAC PnP; else interpolation) or ``interpolate``.
        pnp_min_inliers: a PnP pose needs this many inlier 2D-3D matches (else the frame is interpolated).
        min_features: an SfM image with fewer SIFT features counts as textureless.
        fit_depth: when the frames carry depth (RGB-D input), scale the SfM result to it (a robust fit of
            the sparse points' depths to the sensor depth): metric output.
        threads: CPU threads of pycolmap (-1 = all).
        seed: random seed of pycolmap's RANSAC and mapping.
    """

    keyframes: Literal["auto", "all", "select"] = "auto"
    all_keyframes_max: int = option(40, metavar="N")
    min_parallax: float = option(0.06, metavar="F")
    blur_window: int = option(4, metavar="N")
    max_keyframes: int = option(300, metavar="N")
    matching: Literal["auto", "exhaustive", "sequential"] = "auto"
    exhaustive_max: int = option(40, metavar="N")
    overlap: int = option(8, metavar="N")
    loop_candidates: int = option(2, metavar="N")
    mapper: Literal["incremental", "global"] = "global"
    camera_model: Literal["SIMPLE_PINHOLE", "PINHOLE", "SIMPLE_RADIAL"] = "SIMPLE_PINHOLE"
    shared_camera: bool = True
    intrinsics_file: str | None = option(None, metavar="JSON")
    refine_intrinsics: bool = False
    exif: bool = True
    max_features: int = option(4096, metavar="N")
    max_image_size: int = option(1600, metavar="PX")
    sift_peak_threshold: float = option(0.002, metavar="F")
    sift_dsp: bool = False
    sift_affine: bool = False
    join_models: bool = True
    register_others: Literal["pnp", "interpolate"] = "pnp"
    pnp_min_inliers: int = option(30, metavar="N")
    min_features: int = option(50, metavar="N")
    fit_depth: bool = True
    threads: int = option(-1, metavar="N")
    seed: int = 0

    def __post_init__(self) -> None:
        self.validate_sfm()

    def validate_sfm(self) -> None:
        """Raise ValueError naming the field, the expected and the found value."""
        def bad(name: str, expected: str) -> ValueError:
            return ValueError(f"{type(self).__name__}.{name}: expected {expected}, found {getattr(self, name)!r}")

        choices = {"keyframes": ("auto", "all", "select"), "matching": ("auto", "exhaustive", "sequential"),
                   "mapper": ("incremental", "global"), "camera_model": ("SIMPLE_PINHOLE", "PINHOLE", "SIMPLE_RADIAL"),
                   "register_others": ("pnp", "interpolate")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise bad(name, f"one of {allowed}")
        for name, lo in (("all_keyframes_max", 3), ("blur_window", 1), ("max_keyframes", 3), ("exhaustive_max", 2),
                         ("overlap", 1), ("loop_candidates", 0), ("max_features", 100), ("max_image_size", 0),
                         ("pnp_min_inliers", 4), ("min_features", 0)):
            v = getattr(self, name)
            if not (isinstance(v, int) and not isinstance(v, bool) and v >= lo):
                raise bad(name, f"an integer >= {lo}")
        if not (isinstance(self.threads, int) and (self.threads == -1 or self.threads >= 1)):
            raise bad("threads", "-1 (all) or an integer >= 1")
        if not (isinstance(self.sift_peak_threshold, (int, float)) and 0.0 < self.sift_peak_threshold < 1.0):
            raise bad("sift_peak_threshold", "a number in (0, 1)")
        if not (isinstance(self.min_parallax, (int, float)) and math.isfinite(self.min_parallax)
                and 0.0 < self.min_parallax < 1.0):
            raise bad("min_parallax", "a fraction of the image width in (0, 1)")
