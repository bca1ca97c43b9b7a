"""Frames -> a camera for every frame + sparse points: spooling, keyframes, pycolmap SfM, registration
of the other frames (PnP against the model's points, else interpolation).

Example::

    import tempfile
    from forward3d.io.sources import open_frames
    from forward3d.sfm import SfMConfig, run_sfm, spool_frames

    with tempfile.TemporaryDirectory() as tmp:
        spooled = spool_frames(open_frames("video.mp4", size=640), tmp)
        res = run_sfm(spooled, SfMConfig(), tmp)
    res.c2w, res.K, res.status, res.points, res.mean_reprojection_error
"""

from __future__ import annotations

import logging
import math
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from forward3d.geometry.pnp import reprojection_errors
from forward3d.geometry.se3 import slerp_pose
from forward3d.progress import progress_bar
from forward3d.sfm.colmap_sfm import CameraPrior, SiftMatcher, run_colmap
from forward3d.sfm.config import SfMConfig
from forward3d.sfm.keyframes import (
    FrameStats,
    exhaustive_pairs,
    frame_stats,
    global_descriptors,
    loop_pairs,
    select_keyframes,
    sequential_pairs,
)
from forward3d.types import Frame, FrameStatus, PointCloud

__all__ = ["SpooledFrames", "SfMResult", "spool_frames", "camera_prior", "read_camera_file", "choose_keyframes",
           "choose_pairs", "fit_depth_scale", "run_sfm", "MIN_VIEWS"]

log = logging.getLogger(__name__)

MIN_VIEWS = 3


@dataclass
class SpooledFrames:
    """Input frames written to ``folder/images`` as PNG (the SfM and dense stages read them back).

    Attributes:
        folder: the image folder; ``names[i]`` is frame i's file in it.
        names: N file names; frame_names: N frame names (the source's); timestamps: ``[N]`` seconds.
        size: ``(width, height)`` of every frame.
        K: N ``[3, 3]`` intrinsics carried by the frames (None where a frame has none).
        sources: N source paths (for messages and EXIF).
        stats: thumbnails, sharpness and contrast per frame.
        has_depth: N bools: the frame carried depth (kept as ``folder/../depth/NAME.npy``).
        where: a label of the input for messages.
        interrupted: the input stopped early (a dropped stream).
    """

    folder: Path
    names: list[str]
    frame_names: list[str]
    timestamps: np.ndarray
    size: tuple[int, int]
    K: list[np.ndarray | None]
    sources: list[str]
    stats: FrameStats
    has_depth: list[bool] = field(default_factory=list)
    where: str = "input"
    interrupted: bool = False

    def __len__(self) -> int:
        return len(self.names)

    def depth(self, i: int) -> np.ndarray | None:
        """Frame ``i``'s ``[H, W]`` float32 metric depth, or None."""
        if not self.has_depth or not self.has_depth[i]:
            return None
        return np.load(self.folder.parent / "depth" / (Path(self.names[i]).stem + ".npy"))

    def image(self, i: int) -> np.ndarray:
        """Frame ``i``'s ``[H, W, 3]`` uint8 RGB."""
        from forward3d.io.source_base import read_rgb

        return read_rgb(self.folder / self.names[i])


def spool_frames(frames: Iterable[Frame], workdir: str | Path, progress: bool = True, where: str = "input",
                 keep_depth: bool = True) -> SpooledFrames:
    """Write every frame to ``workdir/images`` (PNG; its depth, if any and ``keep_depth``, to
    ``workdir/depth`` as .npy) and compute its :class:`FrameStats`, holding only thumbnails in memory.

    Raises:
        ValueError: frames of different sizes, or fewer than :data:`MIN_VIEWS` frames.
    """
    from forward3d.io.video import write_png

    folder = Path(workdir) / "images"
    folder.mkdir(parents=True, exist_ok=True)
    names, fnames, stamps, Ks, sources, stats = [], [], [], [], [], []
    has_depth: list[bool] = []
    size = None
    try:
        total = len(frames)  # type: ignore[arg-type]
    except TypeError:
        total = None
    with progress_bar(total, "sfm: reading frames", unit="frame", enabled=progress) as bar:
        for f in frames:
            if size is None:
                size = (f.width, f.height)
            elif (f.width, f.height) != size:
                raise ValueError(f"{f.source or where}: frame {f.index} is {f.width}x{f.height}, the first frame "
                                 f"{size[0]}x{size[1]}; give --size WxH to read every frame at one size")
            name = f"{len(names):06d}.png"
            write_png(folder / name, f.image)
            if f.depth is not None and keep_depth:
                (folder.parent / "depth").mkdir(exist_ok=True)
                np.save(folder.parent / "depth" / (Path(name).stem + ".npy"), f.depth.astype(np.float32))
            has_depth.append(f.depth is not None and keep_depth)
            names.append(name)
            fnames.append(f.name or f"{f.index:06d}")
            stamps.append(float(f.timestamp))
            Ks.append(None if f.K is None else np.asarray(f.K, np.float64))
            sources.append(f.source)
            stats.append(frame_stats([f.image]))
            bar.update(1)
    if len(names) < MIN_VIEWS:
        raise ValueError(f"{where}: structure from motion needs at least {MIN_VIEWS} views, found {len(names)}; "
                         "give a longer video or more photos (or known poses with --poses)")
    merged = FrameStats([s.thumbs[0] for s in stats], np.concatenate([s.sharpness for s in stats]),
                        np.concatenate([s.contrast for s in stats]))
    return SpooledFrames(folder, names, fnames, np.asarray(stamps), size, Ks, sources, merged, has_depth, where,
                         bool(getattr(frames, "dropped", False)))


def _exif_focal(path: str, width: int, height: int) -> float | None:
    """Focal length in pixels at ``width x height`` from an image file's EXIF 35 mm equivalent focal."""
    if not path or not Path(path).is_file():
        return None
    try:
        from PIL import Image

        with Image.open(path) as im:
            exif = im.getexif()
            f35 = exif.get_ifd(0x8769).get(0xA405) or exif.get(0xA405)
    except (OSError, ValueError, AttributeError):
        return None
    if not f35 or float(f35) <= 0:
        return None
    return float(f35) / 36.0 * max(width, height)


def read_camera_file(path: str | Path, width: int, height: int) -> np.ndarray:
    """``[3, 3]`` K for ``width x height`` from a camera JSON (``fx, fy, cx, cy, width, height``; or
    ``"K"`` with ``width, height``; or an Open3D intrinsic JSON), rescaled when its size differs."""
    from forward3d.io.jsonio import read_json
    from forward3d.io.source_base import read_open3d_intrinsics
    from forward3d.types import Intrinsics

    path = Path(path)
    d = read_json(path, "camera JSON")
    try:
        if "intrinsic_matrix" in d:
            intr = read_open3d_intrinsics(path)
        elif "K" in d:
            intr = Intrinsics.from_K(np.asarray(d["K"], np.float64), int(d["width"]), int(d["height"]))
        else:
            intr = Intrinsics(float(d["fx"]), float(d["fy"]), float(d["cx"]), float(d["cy"]), int(d["width"]),
                              int(d["height"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"camera JSON {path}: expected fx, fy, cx, cy, width, height (or K with width and height, "
                         f"or an Open3D intrinsic_matrix), found keys {sorted(d)} ({exc})") from None
    if (intr.width, intr.height) != (width, height):
        if abs(intr.width / intr.height - width / height) > 0.01:
            raise ValueError(f"camera JSON {path}: the camera is {intr.width}x{intr.height}, the frames "
                             f"{width}x{height} (another aspect ratio)")
        intr = intr.scaled(width, height)
    return intr.K


def camera_prior(spooled: SpooledFrames, cfg: SfMConfig) -> CameraPrior:
    """Known intrinsics (file, then the frames' own), else an EXIF focal, else none."""
    w, h = spooled.size
    if cfg.intrinsics_file:
        return CameraPrior(read_camera_file(cfg.intrinsics_file, w, h), True, f"file {cfg.intrinsics_file}")
    Ks = [k for k in spooled.K if k is not None]
    if len(Ks) == len(spooled) and not cfg.refine_intrinsics:
        spread = max(float(np.abs(k - Ks[0]).max()) for k in Ks)
        if spread < 1e-6 or not cfg.shared_camera:
            return CameraPrior(Ks[0], True, "frames")
        log.warning("sfm: the frames carry %s different intrinsics; estimating one shared camera", "several")
    if cfg.exif:
        f = _exif_focal(spooled.sources[0], w, h)
        if f is not None:
            return CameraPrior(np.array([[f, 0, w / 2], [0, f, h / 2], [0, 0, 1.0]]), False, "EXIF")
    if Ks:
        return CameraPrior(Ks[0], False, "frames (refined)")
    return CameraPrior(None, False, "default")


@dataclass
class SfMResult:
    """A camera for every input frame and the sparse model.

    Attributes:
        c2w: ``[N, 4, 4]`` float64 camera-to-world (OpenCV axes), world = COLMAP's (up to scale).
        K: ``[N, 3, 3]`` float64 pinhole intrinsics for ``size``.
        size: ``(width, height)``.
        status: N :class:`FrameStatus`: ``registered`` (SfM or PnP; the reason says which) or
            ``interpolated``; ``keyframe`` = an SfM image.
        keyframes: indices of the SfM images (input order).
        points: sparse world points (colours).
        visibility: N int64 arrays indexing ``points``: the model points each frame sees (SfM
            observations for registered keyframes, PnP inliers for PnP frames, empty otherwise).
        mean_reprojection_error: COLMAP's, over the model's observations (pixels).
        camera: the estimated (or fixed) camera: model, parameters, where the prior came from.
        timings: seconds per stage.
        metadata: counts and options (JSON-serialisable).
        metric: the result was scaled to the frames' depth (:func:`fit_depth_scale`).
        depth_scales: ``[N]`` per-frame least-squares scale of the (scaled) sparse depths to the sensor
            depth (about 1 when consistent; NaN without depth), or None.
    """

    c2w: np.ndarray
    K: np.ndarray
    size: tuple[int, int]
    status: list[FrameStatus]
    keyframes: list[int]
    points: PointCloud
    visibility: list[np.ndarray]
    mean_reprojection_error: float
    camera: dict[str, Any]
    timings: dict[str, float] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)
    metric: bool = False
    depth_scales: np.ndarray | None = None


def _check_content(spooled: SpooledFrames) -> None:
    st = spooled.stats
    if float(st.contrast.max()) < 0.01:
        raise ValueError(f"{spooled.where}: all {len(spooled)} frames are uniform images (contrast "
                         f"{float(st.contrast.max()):.4f}): there is no texture to match; film textured surfaces")
    ref = st.thumbs[0]
    diff = max(float(np.abs(t - ref).mean()) for t in st.thumbs[1:])
    if diff < 0.5 / 255.0:
        raise ValueError(f"{spooled.where}: all {len(spooled)} frames show the same image (mean difference "
                         f"{diff * 255:.2f} grey levels): structure from motion needs views from different positions; "
                         "move the camera (sideways, not only rotating)")


def choose_keyframes(spooled: SpooledFrames, cfg: SfMConfig) -> list[int]:
    """The SfM images (input indices, sorted): every frame, or a selection by parallax and sharpness."""
    n = len(spooled)
    if cfg.keyframes == "all" or (cfg.keyframes == "auto" and n <= cfg.all_keyframes_max):
        keys = list(range(n))
    else:
        keys = select_keyframes(spooled.stats, cfg.min_parallax, cfg.blur_window)
        if len(keys) < MIN_VIEWS:
            log.warning("sfm: only %d keyframes by parallax %.3f; using %d evenly spaced frames", len(keys),
                        cfg.min_parallax, min(n, cfg.all_keyframes_max))
            keys = sorted(set(np.linspace(0, n - 1, min(n, cfg.all_keyframes_max)).round().astype(int).tolist()))
    if len(keys) > cfg.max_keyframes:
        pick = np.linspace(0, len(keys) - 1, cfg.max_keyframes).round().astype(int)
        keys = [keys[i] for i in sorted(set(pick.tolist()))]
    return keys


def choose_pairs(spooled: SpooledFrames, keys: list[int], cfg: SfMConfig) -> tuple[set[tuple[int, int]], str]:
    """Index pairs (into ``keys``) to match and the scheme's name."""
    m = len(keys)
    if cfg.matching == "exhaustive" or (cfg.matching == "auto" and m <= cfg.exhaustive_max):
        return exhaustive_pairs(m), "exhaustive"
    pairs = sequential_pairs(m, cfg.overlap)
    loops = loop_pairs(global_descriptors([spooled.stats.thumbs[k] for k in keys]), cfg.overlap, cfg.loop_candidates)
    return pairs | loops, f"sequential (overlap {cfg.overlap}, {len(loops)} loop candidates)"


def _register_pnp(spooled: SpooledFrames, i: int, model: Any, key_pos: dict[int, int], keys: list[int],
                  K: np.ndarray, matcher: SiftMatcher, cfg: SfMConfig
                  ) -> tuple[np.ndarray, np.ndarray, str] | None:
    """PnP of frame ``i`` against the 3D points of the two nearest registered keyframes:
    ``(c2w, visible point indices, reason)`` or None."""
    reg = [k for k in keys if model.registered[key_pos[k]] and k != i]
    if not reg:
        return None
    near = sorted(reg, key=lambda k: abs(k - i))[:2]
    uv_f, desc_f = matcher.extract(spooled.image(i))
    uv_list, pidx_list = [], []
    for k in near:
        uv_k, desc_k, pidx_k = model.features[key_pos[k]]
        pairs = matcher.match(desc_f, desc_k)
        uv_list.append(uv_f[pairs[:, 0]])
        pidx_list.append(pidx_k[pairs[:, 1]])
    uv = np.concatenate(uv_list)
    pidx = np.concatenate(pidx_list)
    _, first = np.unique(np.stack([pidx, np.round(uv[:, 0]), np.round(uv[:, 1])], 1), axis=0, return_index=True)
    uv, pidx = uv[first], pidx[first]
    if len(uv) < cfg.pnp_min_inliers:
        return None
    xyz = model.points.points[pidx].astype(np.float64)
    res = matcher.absolute_pose(uv, xyz, K, *spooled.size)
    if res is None:
        return None
    c2w, inl = res
    if int(inl.sum()) < cfg.pnp_min_inliers:
        return None
    err = float(np.median(reprojection_errors(xyz[inl], uv[inl], K, c2w)))
    return c2w, np.unique(pidx[inl]), f"PnP: {int(inl.sum())} inliers of {len(uv)} matches, median error {err:.2f} px"


def _interpolate(c2w: np.ndarray, posed: np.ndarray, i: int) -> tuple[np.ndarray, str]:
    before = np.flatnonzero(posed[:i])
    after = i + 1 + np.flatnonzero(posed[i + 1:])
    if len(before) and len(after):
        a, b = int(before[-1]), int(after[0])
        return slerp_pose(c2w[a], c2w[b], (i - a) / (b - a)), f"interpolated between frames {a} and {b}"
    k = int(before[-1]) if len(before) else int(after[0])
    return c2w[k].copy(), f"copied from the nearest posed frame {k} (outside the registered range)"


def fit_depth_scale(spooled: SpooledFrames, c2w: np.ndarray, K: np.ndarray, points: np.ndarray,
                    visibility: list[np.ndarray]) -> tuple[float, np.ndarray] | None:
    """Scale that maps the SfM reconstruction to the frames' metric depth: a RANSAC fit (5 % relative
    inliers, :func:`forward3d.geometry.depth_fit.fit_scale_ransac`) of the sensor depth at the pixels of
    the sparse points each frame sees to the points' SfM depths. Returns ``(scale, [N] per-frame
    least-squares scales after it, NaN = no depth)`` or None without enough depth samples."""
    from forward3d.geometry.camera import project, world_to_camera
    from forward3d.geometry.depth_fit import fit_scale_ransac

    w, h = spooled.size
    z_all, d_all, frame_of = [], [], []
    for i in range(len(spooled)):
        depth = spooled.depth(i)
        if depth is None or len(visibility[i]) == 0:
            continue
        cam = world_to_camera(points[visibility[i]], c2w[i])
        uv, z = project(cam, K[i])
        col, row = np.floor(uv[:, 0]).astype(int), np.floor(uv[:, 1]).astype(int)
        ok = (z > 0) & (col >= 0) & (col < w) & (row >= 0) & (row < h)
        d = np.zeros(len(z))
        d[ok] = depth[row[ok], col[ok]]
        ok &= np.isfinite(d) & (d > 0)
        z_all.append(z[ok])
        d_all.append(d[ok])
        frame_of.append(np.full(int(ok.sum()), i))
    if not z_all or sum(len(z) for z in z_all) < 20:
        return None
    z, d, fi = np.concatenate(z_all), np.concatenate(d_all), np.concatenate(frame_of)
    s, inl = fit_scale_ransac(z, d)
    per = np.full(len(spooled), np.nan)
    for i in np.unique(fi[inl]):
        m = inl & (fi == i)
        zs = z[m] * s
        per[i] = float((zs * d[m]).sum() / max(float((zs * zs).sum()), 1e-12))
    return float(s), per


def run_sfm(spooled: SpooledFrames, cfg: SfMConfig, workdir: str | Path, progress: bool = True) -> SfMResult:
    """Keyframes -> pycolmap SfM -> every other frame registered by PnP (else interpolated).

    Raises:
        ValueError: uniform or identical frames, no texture, no model (the message says what to try).
    """
    cfg.validate_sfm()
    timings: dict[str, float] = {}
    _check_content(spooled)
    t = time.perf_counter()
    keys = choose_keyframes(spooled, cfg)
    pairs, scheme = choose_pairs(spooled, keys, cfg)
    timings["keyframes_s"] = time.perf_counter() - t
    prior = camera_prior(spooled, cfg)
    log.info("sfm: %d of %d frames are SfM images; %d pairs, %s matching; camera: %s", len(keys), len(spooled),
             len(pairs), scheme, prior.source)
    model = run_colmap(spooled.folder, [spooled.names[k] for k in keys], pairs, prior, cfg, Path(workdir) / "colmap",
                       progress)
    timings.update(model.timings)
    matcher = None
    join_reports: list[dict[str, Any]] = []
    if model.others and cfg.join_models:
        from forward3d.sfm.merge import join_models

        t = time.perf_counter()
        matcher = SiftMatcher(cfg)
        model, join_reports = join_models(model, keys, spooled.image, matcher)
        timings["join_s"] = time.perf_counter() - t
    elif model.others:
        log.warning("sfm: %d smaller sub-model(s) (%s images) are left out (--no-join-models)", len(model.others),
                    [int(m.registered.sum()) for m in model.others])
    n = len(spooled)
    key_pos = {k: p for p, k in enumerate(keys)}
    c2w = np.tile(np.eye(4), (n, 1, 1))
    shared_K = model.K[int(np.flatnonzero(model.registered)[0])]
    K = np.tile(shared_K, (n, 1, 1))
    posed = np.zeros(n, bool)
    reason = [""] * n
    state = ["interpolated"] * n
    visibility = [np.zeros(0, np.int64) for _ in range(n)]
    for k, p in key_pos.items():
        if model.registered[p]:
            c2w[k], K[k], posed[k], state[k] = model.c2w[p], model.K[p], True, "registered"
            reason[k] = "SfM"
            visibility[k] = model.visibility[p]
    t = time.perf_counter()
    todo = [i for i in range(n) if not posed[i]]
    n_pnp = 0
    if cfg.register_others == "pnp" and todo:
        matcher = matcher or SiftMatcher(cfg)
        with progress_bar(len(todo), "sfm: PnP of other frames", unit="frame", enabled=progress) as bar:
            for i in todo:
                Ki = K[i] if cfg.shared_camera else model.K[key_pos[min(key_pos, key=lambda k: abs(k - i))]]
                got = _register_pnp(spooled, i, model, key_pos, keys, Ki, matcher, cfg)
                if got is not None:
                    c2w[i], visibility[i], reason[i] = got
                    posed[i], state[i] = True, "registered"
                    n_pnp += 1
                bar.update(1)
    timings["register_s"] = time.perf_counter() - t
    sfm_posed = posed.copy()
    for i in range(n):
        if not sfm_posed[i]:
            if state[i] == "interpolated":
                c2w[i], why = _interpolate(c2w, sfm_posed, i)
                lost = " (an SfM image the mapper did not register)" if i in key_pos else ""
                reason[i] = why + lost
    status = [FrameStatus(state[i], reason[i], i in key_pos) for i in range(n)]  # type: ignore[arg-type]
    points = model.points
    scale_fit = None
    if cfg.fit_depth and any(spooled.has_depth):
        scale_fit = fit_depth_scale(spooled, c2w, K, model.points.points.astype(np.float64), visibility)
        if scale_fit is None:
            log.warning("sfm: the frames carry depth but too few sparse points fall on valid depth: the result "
                        "stays up to scale")
        else:
            c2w[:, :3, 3] *= scale_fit[0]
            points = PointCloud((points.points * scale_fit[0]).astype(np.float32), points.colors)
            log.info("sfm: scaled to the input depth (x %.4g)", scale_fit[0])
    n_reg = int(model.registered.sum())
    meta = {"sfm_images": len(keys), "sfm_registered": n_reg, "pnp_registered": n_pnp,
            "interpolated": int(n - sfm_posed.sum()), "pairs": len(pairs), "matching": scheme, "mapper": cfg.mapper,
            "camera_prior": prior.source, "num_models": model.num_models, "num_points": len(model.points),
            "mean_reprojection_error_px": model.mean_reprojection_error,
            "features_per_image_median": float(np.median(model.num_features)),
            "joined_models": sum(r["joined"] for r in join_reports), "sub_models": join_reports}
    counts = Counter(s.state + (", keyframe" if s.keyframe else "") for s in status)
    meta["status_counts"] = dict(counts)
    log.info("sfm: %d/%d SfM images registered (%d models), %d points, reprojection error %.2f px; %d frames by PnP, "
             "%d interpolated", n_reg, len(keys), model.num_models, len(model.points), model.mean_reprojection_error,
             n_pnp, meta["interpolated"])
    log.info("sfm: frame status counts: %s", ", ".join(f"{k}: {v}" for k, v in sorted(counts.items())))
    if not math.isfinite(model.mean_reprojection_error):  # pragma: no cover - defensive
        log.warning("sfm: the model has no observations")
    if scale_fit is not None:
        meta["depth_scale"] = scale_fit[0]
    return SfMResult(c2w, K, spooled.size, status, keys, points, visibility, model.mean_reprojection_error,
                     {**model.camera, "prior": prior.source}, timings, meta,
                     metric=scale_fit is not None, depth_scales=None if scale_fit is None else scale_fit[1])

