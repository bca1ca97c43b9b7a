"""Options and result type of the dense multi-view stereo (:func:`forward3d.mvs.dense_reconstruct`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from forward3d.types import Mesh, PointCloud

__all__ = ["DenseResult", "MVSConfig"]


@dataclass
class MVSConfig:
    """Options of the dense multi-view stereo.

    Attributes:
        num_src: source views per reference view (the best by the view-selection score).
        min_triangulation_deg: pairs whose triangulation angle (median over the shared points) is
            below this are not used as sources (too little parallax).
        view_score_deg: preferred triangulation angle of the view-selection score (MVSNet's piecewise
            Gaussian around it, steeper below than above).
        num_depths: plane-sweep hypotheses (uniform in inverse depth) at the coarsest scale.
        num_scales: image pyramid levels (coarse to fine, factor 2); the finer levels refine the
            upsampled inverse depth around its value.
        refine_hypotheses: hypotheses per pixel at each finer level (odd), spaced half of the previous
            level's spacing.
        refine_iterations: refinement passes per finer level (each halves the spacing again).
        window_radius: NCC window half-size in taps.
        window_step: pixel distance between window taps (2: a 5x5-tap window covers 9x9 pixels).
        sigma_color: bilateral weight, grey-level sigma (images in [0, 1]).
        sigma_spatial: bilateral weight, spatial sigma in taps.
        min_variance: below this weighted grey variance of a window the pixel has no texture (NCC -1).
        top_k: the matching cost of a hypothesis is the mean of its ``top_k`` best source costs
            (robust to occlusion in the other sources; 2 lets surfaces that only two sources see match).
        min_ncc: depths whose aggregated NCC is below this are dropped before the consistency filter.
        depth_margin: depth range from the sparse points: their 1st-99th z percentiles widened by this
            fraction on each side.
        baseline_depth_range: depth range without sparse points nor given ranges, in multiples of the
            median distance to the source cameras (up-to-scale heuristic).
        filter: run the geometric-consistency filter across views.
        max_reproj_px: consistency: forward-backward reprojection error below this (pixels).
        max_rel_depth: consistency: relative depth difference below this.
        min_consistent: consistency: a depth is kept when at least this many source views agree.
        single_view_ncc: consistency: a depth that only one source view confirms is still kept when
            its aggregated NCC is at least this (above 1: never).
        fusion: ``points`` (consistent pixels merged across views) or ``tsdf`` (the rgbd back-end's
            TSDF: mesh and surface points; needs ``forward3d[rgbd]``).
        voxel_size: TSDF voxel size in scene units (0 = the median depth / 250).
        tsdf_weight_threshold: TSDF fusion: mesh vertices and surface points need a TSDF weight above
            this (each fused view adds 1). 0 keeps voxels one filtered depth map saw: the consistency
            filter has already asked for a second view (1 asked again: completion 2.15 -> 1.57 cm).
        tsdf_fill_radius: TSDF fusion: before integration, a pixel the filter removed gets its raw
            depth back when that depth agrees (``max_rel_depth``) with the kept depths within this
            many pixels and they lie on one smooth surface (0 = off); closes the small holes in the
            filtered depth maps that become holes in the mesh.
        normals: compute per-view normals from the depth maps (world frame, facing the camera).
        max_batch_pixels: memory bound: warped source pixels scored at once (rows are tiled to fit);
            the default 2^18 keeps a tile's working set in the CPU caches (1.3x faster than 2^22).
        device: compute device: auto (CUDA when available, else CPU), cpu, cuda or cuda:N.
        workers: CPU worker threads for the stereo and the consistency filter, each on its own reference
            views with ONE torch intra-op thread (0 = the torch thread count on the CPU, 1 on a GPU). Scales
            on a loaded machine where 2 intra-op threads are slower than 1; results equal one thread's.
    """

    num_src: int = 5
    min_triangulation_deg: float = 1.0
    view_score_deg: float = 5.0
    num_depths: int = 64
    num_scales: int = 3
    refine_hypotheses: int = 5
    refine_iterations: int = 1
    window_radius: int = 2
    window_step: int = 2
    sigma_color: float = 0.2
    sigma_spatial: float = 2.0
    min_variance: float = 1e-5
    top_k: int = 2
    min_ncc: float = 0.3
    depth_margin: float = 0.25
    baseline_depth_range: tuple[float, float] = (2.0, 200.0)
    filter: bool = True
    max_reproj_px: float = 1.0
    max_rel_depth: float = 0.01
    min_consistent: int = 2
    single_view_ncc: float = 0.8
    fusion: Literal["points", "tsdf"] = "points"
    voxel_size: float = 0.0
    tsdf_weight_threshold: float = 0.0
    tsdf_fill_radius: int = 1
    normals: bool = True
    max_batch_pixels: int = 1 << 18
    device: str = "auto"
    workers: int = 0

    def validate(self) -> None:
        """Raise ValueError naming the field, the expected and the found value."""
        def bad(name: str, expected: str) -> ValueError:
            return ValueError(f"MVSConfig.{name}: expected {expected}, found {getattr(self, name)!r}")

        for name in ("num_src", "num_depths", "num_scales", "refine_hypotheses", "top_k", "min_consistent",
                     "window_step", "max_batch_pixels"):
            if int(getattr(self, name)) < 1:
                raise bad(name, ">= 1")
        if self.num_depths < 3:
            raise bad("num_depths", ">= 3")
        if self.refine_hypotheses % 2 == 0 or self.refine_hypotheses < 3:
            raise bad("refine_hypotheses", "an odd number >= 3")
        if self.refine_iterations < 1:
            raise bad("refine_iterations", ">= 1")
        if self.window_radius < 1:
            raise bad("window_radius", ">= 1")
        for name in ("sigma_color", "sigma_spatial", "max_reproj_px", "max_rel_depth"):
            if not float(getattr(self, name)) > 0:
                raise bad(name, "> 0")
        if not -1.0 <= self.min_ncc < 1.0:
            raise bad("min_ncc", "a value in [-1, 1)")
        if self.depth_margin < 0:
            raise bad("depth_margin", ">= 0")
        lo, hi = self.baseline_depth_range
        if not 0 < lo < hi:
            raise bad("baseline_depth_range", "(near, far) with 0 < near < far")
        if self.fusion not in ("points", "tsdf"):
            raise bad("fusion", "'points' or 'tsdf'")
        if self.voxel_size < 0:
            raise bad("voxel_size", ">= 0 (0 = auto)")
        if self.workers < 0:
            raise bad("workers", ">= 0 (0 = auto)")
        if not self.tsdf_weight_threshold >= 0:
            raise bad("tsdf_weight_threshold", ">= 0")
        if int(self.tsdf_fill_radius) < 0:
            raise bad("tsdf_fill_radius", ">= 0 (0 = off)")


@dataclass
class DenseResult:
    """Output of :func:`forward3d.mvs.dense_reconstruct` for ``N`` views of ``H_i x W_i`` pixels.

    Attributes:
        depths: per view ``[H, W]`` float32 z-depth after the consistency filter, 0 = invalid.
        confidences: per view ``[H, W]`` float32 in ``[0, 1]``: the aggregated NCC of the chosen depth
            (0 where invalid).
        normals: per view ``[H, W, 3]`` float32 world-frame unit normals facing the camera, from the
            depth map's neighbours (the direction to the camera for isolated depths; 0 where invalid),
            or None when ``MVSConfig.normals`` is False.
        points: the fused coloured point cloud (world frame).
        mesh: the TSDF mesh (``fusion="tsdf"``) or None.
        raw_depths: per view ``[H, W]`` float32 depth before the consistency filter (0 = no match).
        source_views: per view the ``int`` indices of its source views, best first.
        depth_ranges: ``[N, 2]`` float64 ``(near, far)`` depth range swept per view.
        consistent_views: per view ``[H, W]`` int16 number of source views agreeing with the depth.
        timings: seconds per stage (``views``, ``stereo``, ``filter``, ``fusion``).
    """

    depths: list[np.ndarray]
    confidences: list[np.ndarray]
    normals: list[np.ndarray] | None
    points: PointCloud
    mesh: Mesh | None = None
    raw_depths: list[np.ndarray] = field(default_factory=list)
    source_views: list[np.ndarray] = field(default_factory=list)
    depth_ranges: np.ndarray | None = None
    consistent_views: list[np.ndarray] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
