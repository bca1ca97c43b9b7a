"""``dense_reconstruct``: posed images -> per-view depth, normals, confidence -> fused cloud / mesh."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from forward3d.device import resolve_device
from forward3d.mvs.config import DenseResult, MVSConfig
from forward3d.mvs.consistency import consistency_filter, fuse_points, refill_holes
from forward3d.mvs.sweep import build_pyramid, estimate_view_depth
from forward3d.mvs.views import _visibility, estimate_depth_ranges, select_source_views
from forward3d.progress import progress_bar
from forward3d.threads import default_workers, intra_op_threads, run_workers
from forward3d.types import PointCloud

__all__ = ["check_inputs", "dense_reconstruct"]

log = logging.getLogger(__name__)

_GREY = (0.299, 0.587, 0.114)


def check_inputs(images, K, c2w, sparse_points, sparse_visibility, depth_ranges):
    """Validate and convert the inputs of :func:`dense_reconstruct` (ValueError naming the argument)."""
    where = "dense_reconstruct"
    if not isinstance(images, (list, tuple)) or len(images) < 2:
        n = len(images) if hasattr(images, "__len__") else type(images).__name__
        raise ValueError(f"{where} images: expected a list of at least 2 views (stereo needs a second view), "
                         f"found {n}")
    imgs = []
    for i, im in enumerate(images):
        a = np.asarray(im)
        if a.ndim != 3 or a.shape[2] != 3 or a.dtype != np.uint8 or min(a.shape[:2]) < 8:
            raise ValueError(f"{where} images[{i}]: expected an [H, W, 3] uint8 RGB image of at least 8x8 "
                             f"pixels, found shape {list(a.shape)} dtype {a.dtype}")
        imgs.append(a)
    n = len(imgs)
    K = np.asarray(K, np.float64)
    if K.shape == (3, 3):
        K = np.broadcast_to(K, (n, 3, 3)).copy()
    if K.shape != (n, 3, 3) or not np.isfinite(K).all() or (K[:, 0, 0] <= 0).any() or (K[:, 1, 1] <= 0).any():
        raise ValueError(f"{where} K: expected [{n}, 3, 3] finite intrinsics with positive focal lengths "
                         f"(one per image), found shape {list(K.shape)}")
    c2w = np.asarray(c2w, np.float64)
    if c2w.shape != (n, 4, 4) or not np.isfinite(c2w).all():
        raise ValueError(f"{where} c2w: expected [{n}, 4, 4] finite camera-to-world matrices (one per image), "
                         f"found shape {list(c2w.shape)}")
    pts = None
    if sparse_points is not None:
        pts = np.asarray(sparse_points, np.float64)
        if pts.ndim != 2 or pts.shape[1] != 3:
            raise ValueError(f"{where} sparse_points: expected [M, 3] world points, found shape {list(pts.shape)}")
        good = np.isfinite(pts).all(1)
        if not good.all():
            raise ValueError(f"{where} sparse_points: {int((~good).sum())} non-finite points")
    vis = None
    if sparse_visibility is not None:
        if pts is None:
            raise ValueError(f"{where} sparse_visibility: given without sparse_points")
        if len(sparse_visibility) != n:
            raise ValueError(f"{where} sparse_visibility: expected one index array per image ({n}), "
                             f"found {len(sparse_visibility)}")
        vis = []
        for i, v in enumerate(sparse_visibility):
            v = np.asarray(v).reshape(-1)
            if v.size and (not np.issubdtype(v.dtype, np.integer) or v.min() < 0 or v.max() >= len(pts)):
                raise ValueError(f"{where} sparse_visibility[{i}]: expected integer indices in [0, {len(pts)}), "
                                 f"found dtype {v.dtype} range [{v.min()}, {v.max()}]")
            vis.append(v.astype(np.int64))
    ranges = None
    if depth_ranges is not None:
        ranges = np.asarray(depth_ranges, np.float64)
        if ranges.shape != (n, 2) or not np.isfinite(ranges).all() or not ((0 < ranges[:, 0]) & (ranges[:, 0] < ranges[:, 1])).all():
            raise ValueError(f"{where} depth_ranges: expected [{n}, 2] (near, far) with 0 < near < far, "
                             f"found shape {list(ranges.shape)}")
    return imgs, K, c2w, pts, vis, ranges


def dense_reconstruct(images: Sequence[np.ndarray], K, c2w, sparse_points=None, sparse_visibility=None,
                      depth_ranges=None, config: MVSConfig | None = None, progress: bool = True) -> DenseResult:
    """Dense multi-view stereo of posed images.

    Args:
        images: ``N >= 2`` images ``[H, W, 3]`` uint8 RGB (sizes may differ).
        K: ``[N, 3, 3]`` (or one ``[3, 3]``) intrinsics in pixels, pixel centres at +0.5.
        c2w: ``[N, 4, 4]`` camera-to-world, OpenCV axes; any consistent scale (up-to-scale SfM works).
        sparse_points: optional ``[M, 3]`` world points (SfM): depth ranges and source views come from them.
        sparse_visibility: optional, per view an int array of the indices of ``sparse_points`` it sees
            (without it a point is seen where it projects).
        depth_ranges: optional ``[N, 2]`` ``(near, far)`` per view; overrides the sparse points' ranges.
        config: :class:`MVSConfig` (defaults when None).
        progress: show a progress bar per stage.

    Returns:
        :class:`DenseResult`.

    Raises:
        ValueError: fewer than 2 views, mismatched shapes, bad options, cameras without parallax.
    """
    cfg = config or MVSConfig()
    cfg.validate()
    imgs, Kn, c2wn, pts, vis, ranges = check_inputs(images, K, c2w, sparse_points, sparse_visibility, depth_ranges)
    device = resolve_device(cfg.device)
    n = len(imgs)
    sizes = [im.shape[:2] for im in imgs]
    timings: dict[str, float] = {}

    t0 = time.perf_counter()
    V = _visibility(pts, vis, Kn, c2wn, sizes)
    if ranges is None:
        ranges, how = estimate_depth_ranges(Kn, c2wn, sizes, pts, vis, cfg, vis_matrix=V)
        if "baseline" in how:
            log.info("dense_reconstruct: %d of %d views have no sparse points; their depth range is %g-%g x "
                     "the camera baseline", how.count("baseline"), n, *cfg.baseline_depth_range)
    sources = select_source_views(Kn, c2wn, sizes, pts, vis, ranges, cfg, vis_matrix=V)
    timings["views"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    dt = torch.float32
    Kt = torch.as_tensor(Kn, dtype=dt, device=device)
    Ct = torch.as_tensor(c2wn, dtype=dt, device=device)
    grey_w = torch.tensor(_GREY, dtype=dt, device=device)
    rgb = [torch.tensor(im, dtype=dt, device=device) for im in imgs]  # a copy: inputs may be read-only
    pyramids = [build_pyramid((im @ grey_w) / 255.0, Kt[i], cfg.num_scales) for i, im in enumerate(rgb)]
    workers = default_workers(device, cfg.workers, "MVSConfig.workers")

    def stereo(i: int) -> tuple[Tensor, Tensor]:
        src = [int(j) for j in sources[i]]
        if not src:
            z = torch.zeros(sizes[i], dtype=dt, device=device)
            return z, z.clone()
        with torch.inference_mode():
            d, ncc = estimate_view_depth(pyramids[i], Ct[i], [pyramids[j] for j in src], Ct[src],
                                         tuple(ranges[i]), cfg)
            return d, torch.where(d > 0, ncc.clamp(0.0, 1.0), torch.zeros_like(ncc))

    # workers > 1: the views on worker threads with one intra-op thread each, and the rest of the torch
    # work on one thread too (on a loaded CPU two OpenMP threads are slower than one: forward3d.threads)
    with torch.inference_mode(), intra_op_threads(1) if workers > 1 else contextlib.nullcontext():
        bar = progress_bar(n, "mvs depth", unit="view", enabled=progress)
        res = run_workers(stereo, list(range(n)), workers, on_done=lambda _: bar.update(1))
        bar.close()
        raw, conf = [d for d, _ in res], [c for _, c in res]
        timings["stereo"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        if cfg.filter:
            confident = [c >= cfg.single_view_ncc for c in conf] if cfg.single_view_ncc <= 1.0 else None
            depths, counts = consistency_filter(raw, Kt, Ct, sources, cfg.max_reproj_px, cfg.max_rel_depth,
                                                cfg.min_consistent, confident, workers=workers)
        else:
            depths, counts = list(raw), [torch.zeros(d.shape, dtype=torch.int16, device=device) for d in raw]
        conf = [torch.where(d > 0, c, torch.zeros_like(c)) for d, c in zip(depths, conf)]
        timings["filter"] = time.perf_counter() - t0

        depths_np = [d.cpu().numpy().astype(np.float32) for d in depths]
        normals_np = None
        if cfg.normals:
            from forward3d.geometry.camera import depth_to_points
            from forward3d.geometry.normals import normals_from_point_map

            normals_np = []
            for i, d in enumerate(depths_np):
                X = depth_to_points(d, Kn[i], c2wn[i])
                nm = normals_from_point_map(X, camera_center=c2wn[i, :3, 3])
                # isolated depths (no valid neighbour): the normal faces the camera
                to_cam = c2wn[i, :3, 3] - X
                to_cam /= np.linalg.norm(to_cam, axis=-1, keepdims=True).clip(1e-12)
                nm = np.where(np.isfinite(nm).all(-1, keepdims=True), nm, to_cam)
                normals_np.append(np.where((d > 0)[..., None], nm, 0.0).astype(np.float32))

        t0 = time.perf_counter()
        mesh = None
        if cfg.fusion == "points":
            nt = None if normals_np is None else [torch.as_tensor(x, device=device) for x in normals_np]
            P, C, N = fuse_points(depths, rgb, Kt, Ct, sources, cfg.max_reproj_px, cfg.max_rel_depth, nt)
            cloud = PointCloud(P.cpu().numpy(), np.clip(C.cpu().numpy() + 0.5, 0, 255).astype(np.uint8),
                               None if N is None else N.cpu().numpy())
        else:
            fused = depths_np
            if cfg.tsdf_fill_radius > 0 and cfg.filter:
                fused = [refill_holes(d, r, int(cfg.tsdf_fill_radius), cfg.max_rel_depth).cpu().numpy()
                         .astype(np.float32) for d, r in zip(depths, raw)]
            cloud, mesh = _tsdf_fusion(fused, imgs, Kn, c2wn, cfg, progress)
        timings["fusion"] = time.perf_counter() - t0

    kept = sum(int((d > 0).sum()) for d in depths_np)
    total = sum(int((d.cpu() > 0).sum()) for d in raw)
    log.info("dense_reconstruct: %d views, %d of %d matched depths consistent, %d fused points",
             n, kept, total, len(cloud))
    return DenseResult(depths=depths_np, confidences=[c.cpu().numpy().astype(np.float32) for c in conf],
                       normals=normals_np, points=cloud, mesh=mesh,
                       raw_depths=[d.cpu().numpy().astype(np.float32) for d in raw], source_views=sources,
                       depth_ranges=np.asarray(ranges, np.float64),
                       consistent_views=[c.cpu().numpy() for c in counts], timings=timings)


def _tsdf_fusion(depths: list[np.ndarray], images: list[np.ndarray], K: np.ndarray, c2w: np.ndarray,
                 cfg: MVSConfig, progress: bool = True):
    """Integrate the filtered depth maps into the rgbd back-end's TSDF: ``(surface points, mesh)``."""
    try:
        from forward3d.pipelines.tsdf import TSDFVolume, import_open3d

        import_open3d()
    except ImportError as exc:
        raise ImportError("dense_reconstruct fusion='tsdf' needs open3d: pip install 'forward3d[rgbd]' "
                          "(or use fusion='points')") from exc
    valid = np.concatenate([d[d > 0] for d in depths]) if depths else np.zeros(0)
    if len(valid) == 0:
        raise ValueError("dense_reconstruct: no consistent depth in any view, nothing to fuse (the views may "
                         "lack texture or parallax; try more views, or filter=False to inspect raw depths)")
    voxel = cfg.voxel_size if cfg.voxel_size > 0 else float(np.median(valid)) / 250.0
    vol = TSDFVolume(voxel_size=voxel, sdf_trunc=4.0 * voxel, depth_min=float(valid.min()) * 0.99,
                     depth_max=float(valid.max()) * 1.01, block_count=16384)
    bar = progress_bar(len(depths), "mvs tsdf", unit="view", enabled=progress)
    for i, d in enumerate(depths):
        vol.integrate(d, images[i], K[i], c2w[i])
        bar.update(1)
    bar.close()
    return vol.point_cloud(cfg.tsdf_weight_threshold), vol.mesh(cfg.tsdf_weight_threshold)
