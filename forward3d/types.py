"""The forward3d data model: one typed module every other module speaks.

Conventions (see ``../shared/STYLE.md``):

- OpenCV camera axes: x right, y down, z forward. Intrinsics ``K`` in pixels, pixel centres at +0.5
  (the centre of the top-left pixel is ``(0.5, 0.5)``).
- Poses are named by direction: ``c2w`` maps camera coordinates to world coordinates, ``w2c`` the
  inverse. Both are 4x4 homogeneous matrices. Units are metres.
- Quaternions are ``wxyz``.
- Images are ``uint8`` ``[H, W, 3]`` RGB; depth maps are metric z-depth ``float32`` ``[H, W]`` with 0
  (or non-finite) meaning "no measurement".

Frames, point maps, point clouds, meshes and reconstructions are numpy based (they come from and go
to files); :class:`Gaussians` is torch based (it is rendered and optimised).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any, Literal, get_args

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "Frame",
    "Intrinsics",
    "PointMap",
    "PointCloud",
    "Mesh",
    "Reconstruction",
    "FrameStatus",
    "FRAME_STATES",
    "ATEStats",
    "RPEStats",
    "TrajectoryMetrics",
    "Update",
    "Gaussians",
    "SH_C0",
]

SH_C0 = 0.28209479177387814


def _check_shape(name: str, arr: np.ndarray | Tensor | None, shape: tuple, where: str = "") -> None:
    """Raise ValueError unless ``arr`` has ``shape`` (``-1`` matches any size): :func:`forward3d.checks.check_shape`."""
    from forward3d.checks import check_shape

    check_shape(arr, " ".join("*" if s == -1 else str(s) for s in shape), name, where)


# --------------------------------------------------------------------------------------------------
# Cameras
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Intrinsics:
    """Pinhole intrinsics in pixels, OpenCV convention, pixel centres at +0.5.

    Attributes:
        fx, fy: focal lengths in pixels.
        cx, cy: principal point in pixels (image centre of a W x H image is ``(W/2, H/2)``).
        width, height: image size in pixels.
    """

    fx: float
    fy: float
    cx: float
    cy: float
    width: int
    height: int

    @property
    def K(self) -> np.ndarray:
        """``[3, 3]`` float64 intrinsic matrix."""
        return np.array([[self.fx, 0.0, self.cx], [0.0, self.fy, self.cy], [0.0, 0.0, 1.0]])

    @classmethod
    def from_K(cls, K: np.ndarray, width: int, height: int) -> "Intrinsics":
        K = np.asarray(K, dtype=np.float64)
        _check_shape("K", K, (3, 3))
        return cls(float(K[0, 0]), float(K[1, 1]), float(K[0, 2]), float(K[1, 2]), int(width), int(height))

    @classmethod
    def from_fov(cls, width: int, height: int, fov_x_deg: float) -> "Intrinsics":
        """Centred principal point and square pixels from a horizontal field of view in degrees."""
        if not 0.0 < fov_x_deg < 180.0:
            raise ValueError(f"fov_x_deg must be in (0, 180), found {fov_x_deg}")
        f = 0.5 * width / math.tan(math.radians(fov_x_deg) / 2.0)
        return cls(f, f, width / 2.0, height / 2.0, int(width), int(height))

    @property
    def fov_x(self) -> float:
        """Horizontal field of view in degrees."""
        return math.degrees(2.0 * math.atan(self.width / (2.0 * self.fx)))

    @property
    def fov_y(self) -> float:
        """Vertical field of view in degrees."""
        return math.degrees(2.0 * math.atan(self.height / (2.0 * self.fy)))

    def scaled(self, width: int, height: int) -> "Intrinsics":
        """Intrinsics of the same camera after resizing the image to ``width x height``."""
        sx, sy = width / self.width, height / self.height
        return Intrinsics(self.fx * sx, self.fy * sy, self.cx * sx, self.cy * sy, int(width), int(height))

    def cropped(self, x0: int, y0: int, width: int, height: int) -> "Intrinsics":
        """Intrinsics after cropping the window ``[x0, x0+width) x [y0, y0+height)``."""
        return Intrinsics(self.fx, self.fy, self.cx - x0, self.cy - y0, int(width), int(height))


# --------------------------------------------------------------------------------------------------
# Frames and point maps
# --------------------------------------------------------------------------------------------------


@dataclass
class Frame:
    """One input frame.

    Attributes:
        image: ``[H, W, 3]`` uint8 RGB.
        depth: optional ``[H, W]`` float32 metric z-depth in metres; 0 or non-finite = invalid.
        K: optional ``[3, 3]`` float64 intrinsics for this image size.
        c2w: optional ``[4, 4]`` float64 camera-to-world pose (e.g. ground truth from a dataset).
        timestamp: seconds (dataset timestamps, or index / fps for videos).
        index: position in the source sequence (before any stride).
        name: a short identifier (usually the source file stem).
        source: path of the file the frame came from, for error messages.
    """

    image: np.ndarray
    depth: np.ndarray | None = None
    K: np.ndarray | None = None
    c2w: np.ndarray | None = None
    timestamp: float = 0.0
    index: int = 0
    name: str = ""
    source: str = ""

    def __post_init__(self) -> None:
        where = self.source or self.name
        if not isinstance(self.image, np.ndarray) or self.image.ndim != 3 or self.image.shape[2] != 3:
            raise ValueError(f"Frame image ({where}): expected [H, W, 3] uint8, found "
                             f"{getattr(self.image, 'shape', type(self.image))}")
        if self.image.dtype != np.uint8:
            raise ValueError(f"Frame image ({where}): expected dtype uint8, found {self.image.dtype}")
        if self.depth is not None:
            _check_shape("Frame depth", self.depth, self.image.shape[:2], where)
            if self.depth.dtype != np.float32:
                self.depth = self.depth.astype(np.float32)
        if self.K is not None:
            self.K = np.asarray(self.K, dtype=np.float64)
            _check_shape("Frame K", self.K, (3, 3), where)
        if self.c2w is not None:
            self.c2w = np.asarray(self.c2w, dtype=np.float64)
            _check_shape("Frame c2w", self.c2w, (4, 4), where)

    @property
    def height(self) -> int:
        return int(self.image.shape[0])

    @property
    def width(self) -> int:
        return int(self.image.shape[1])

    @property
    def intrinsics(self) -> Intrinsics | None:
        return None if self.K is None else Intrinsics.from_K(self.K, self.width, self.height)

    def with_(self, **changes: Any) -> "Frame":
        """A copy with some fields replaced (dataclasses.replace)."""
        return replace(self, **changes)


@dataclass
class PointMap:
    """A pixel-aligned point map: one 3D point per pixel, in a named coordinate frame.

    Attributes:
        points: ``[H, W, 3]`` float32 points (metres unless the producer is up-to-scale).
        confidence: ``[H, W]`` float32 confidence (larger is better; SLAM3R uses ``1 + exp(x)``).
        colors: optional ``[H, W, 3]`` uint8 colours.
        frame: the coordinate frame of ``points``: ``"camera"`` (of this view), ``"world"``, or
            ``"camera:<name>"`` (another view's camera).
        valid: optional ``[H, W]`` bool mask; defaults to finite, non-zero points.
    """

    points: np.ndarray
    confidence: np.ndarray
    colors: np.ndarray | None = None
    frame: str = "camera"
    valid: np.ndarray | None = None

    def __post_init__(self) -> None:
        _check_shape("PointMap points", self.points, (-1, -1, 3))
        h, w = self.points.shape[:2]
        _check_shape("PointMap confidence", self.confidence, (h, w))
        _check_shape("PointMap colors", self.colors, (h, w, 3))
        _check_shape("PointMap valid", self.valid, (h, w))

    @property
    def mask(self) -> np.ndarray:
        """``[H, W]`` bool: usable points."""
        if self.valid is not None:
            return self.valid
        return np.isfinite(self.points).all(-1) & (np.abs(self.points).sum(-1) > 0)


def _sim3_parts(T: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(T [4, 4] float64, R [3, 3])``: a Sim(3) and its rotation (scale divided out)."""
    A = np.asarray(T, dtype=np.float64)
    _check_shape("transform T", A, (4, 4))
    return A, A[:3, :3] / np.cbrt(np.linalg.det(A[:3, :3]))


@dataclass
class PointCloud:
    """An unordered point cloud.

    Attributes:
        points: ``[N, 3]`` float32.
        colors: optional ``[N, 3]`` uint8.
        normals: optional ``[N, 3]`` float32 unit normals.
    """

    points: np.ndarray
    colors: np.ndarray | None = None
    normals: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.points = np.asarray(self.points, dtype=np.float32).reshape(-1, 3) if np.size(self.points) == 0 \
            else np.asarray(self.points, dtype=np.float32)
        _check_shape("PointCloud points", self.points, (-1, 3))
        n = len(self.points)
        if self.colors is not None:
            self.colors = np.asarray(self.colors)
            if self.colors.dtype != np.uint8:
                raise ValueError(f"PointCloud colors: expected uint8, found {self.colors.dtype}")
            _check_shape("PointCloud colors", self.colors, (n, 3))
        if self.normals is not None:
            self.normals = np.asarray(self.normals, dtype=np.float32)
            _check_shape("PointCloud normals", self.normals, (n, 3))

    def __len__(self) -> int:
        return len(self.points)

    def subset(self, index: np.ndarray) -> "PointCloud":
        return PointCloud(
            self.points[index],
            None if self.colors is None else self.colors[index],
            None if self.normals is None else self.normals[index],
        )

    def transform(self, T: np.ndarray) -> "PointCloud":
        """Apply a Sim(3) ``T`` ``[4, 4]`` (``x' = s R x + t``); normals are rotated."""
        A, R = _sim3_parts(T)
        p = (self.points @ A[:3, :3].T + A[:3, 3]).astype(np.float32)
        n = None if self.normals is None else (self.normals @ R.T).astype(np.float32)
        return PointCloud(p, self.colors, n)


@dataclass
class Mesh:
    """A triangle mesh.

    Attributes:
        vertices: ``[V, 3]`` float32.
        faces: ``[F, 3]`` int64 vertex indices, counter-clockwise seen from outside.
        vertex_colors: optional ``[V, 3]`` uint8.
        vertex_normals: optional ``[V, 3]`` float32.
    """

    vertices: np.ndarray
    faces: np.ndarray
    vertex_colors: np.ndarray | None = None
    vertex_normals: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.vertices = np.asarray(self.vertices, dtype=np.float32).reshape(-1, 3)
        self.faces = np.asarray(self.faces, dtype=np.int64).reshape(-1, 3)
        v = len(self.vertices)
        if self.vertex_colors is not None:
            _check_shape("Mesh vertex_colors", self.vertex_colors, (v, 3))
            self.vertex_colors = np.asarray(self.vertex_colors, dtype=np.uint8)
        if self.vertex_normals is not None:
            _check_shape("Mesh vertex_normals", self.vertex_normals, (v, 3))
            self.vertex_normals = np.asarray(self.vertex_normals, dtype=np.float32)
        if len(self.faces) and (self.faces.min() < 0 or self.faces.max() >= v):
            raise ValueError(f"Mesh faces index vertices outside [0, {v})")

    def transform(self, T: np.ndarray) -> "Mesh":
        """Apply a Sim(3) ``T`` ``[4, 4]`` (``x' = s R x + t``); normals are rotated."""
        A, R = _sim3_parts(T)
        v = (self.vertices @ A[:3, :3].T + A[:3, 3]).astype(np.float32)
        n = None if self.vertex_normals is None else (self.vertex_normals @ R.T).astype(np.float32)
        return Mesh(v, self.faces, self.vertex_colors, n)


# --------------------------------------------------------------------------------------------------
# Per-frame status, trajectory metrics, streaming updates
# --------------------------------------------------------------------------------------------------

FrameState = Literal["tracked", "registered", "given", "interpolated", "failed", "lost"]
FRAME_STATES: tuple[str, ...] = get_args(FrameState)


@dataclass(frozen=True)
class FrameStatus:
    """How a frame's camera was obtained.

    Attributes:
        state: ``"tracked"`` (odometry / tracking against a reference), ``"registered"`` (registered into
            a global model: SLAM3R L2W, SfM, PnP), ``"given"`` (a known pose: ground truth, ``--poses``),
            ``"interpolated"`` (between neighbours), ``"failed"`` (the pose is a fallback, e.g. the motion
            prediction; the frame's geometry was not used), ``"lost"`` (tracking is lost and the frame
            could not be relocalised yet: the pose is the last known one, the geometry was not used).
        reason: why, for ``"failed"`` (and any other state worth a note), e.g. ``"low overlap (fitness 0.12)"``.
        keyframe: the frame is a keyframe of the back-end.
    """

    state: FrameState = "tracked"
    reason: str = ""
    keyframe: bool = False

    def __post_init__(self) -> None:
        if self.state not in FRAME_STATES:
            raise ValueError(f"FrameStatus.state: expected one of {FRAME_STATES}, found {self.state!r}")
        object.__setattr__(self, "keyframe", bool(self.keyframe))
        object.__setattr__(self, "reason", str(self.reason))

    @property
    def ok(self) -> bool:
        return self.state not in ("failed", "lost")

    def to_dict(self) -> dict[str, Any]:
        return {"state": self.state, "reason": self.reason, "keyframe": self.keyframe}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "FrameStatus":
        return cls(str(d.get("state", "tracked")), str(d.get("reason", "")), bool(d.get("keyframe", False)))  # type: ignore[arg-type]


@dataclass(frozen=True)
class ATEStats:
    """Absolute trajectory error after one alignment (metres; rotation in degrees).

    Attributes:
        rmse, mean, median, max: statistics of the camera-centre distances after alignment.
        rot_rmse_deg: RMSE of the rotation angle of ``inv(gt) @ aligned`` in degrees.
        scale: the scale of the alignment (1 for SE(3)).
    """

    rmse: float
    mean: float
    median: float
    max: float
    rot_rmse_deg: float
    scale: float

    def to_dict(self) -> dict[str, float]:
        return {k: float(getattr(self, k)) for k in ("rmse", "mean", "median", "max", "rot_rmse_deg", "scale")}


@dataclass(frozen=True)
class RPEStats:
    """Relative pose error between consecutive frames: translation in metres, rotation in degrees."""

    trans_rmse: float
    trans_mean: float
    rot_rmse_deg: float
    rot_mean_deg: float

    def to_dict(self) -> dict[str, float]:
        return {k: float(getattr(self, k)) for k in ("trans_rmse", "trans_mean", "rot_rmse_deg", "rot_mean_deg")}


@dataclass
class TrajectoryMetrics:
    """ATE (SE(3) and Sim(3) alignment) and RPE of a reconstruction against ground-truth poses.

    Attributes:
        num_frames_with_gt: frames that had a ground-truth pose (the metrics use only those).
        primary: the alignment that matters for this reconstruction: ``"se3"`` for metric-scale
            back-ends, ``"sim3"`` for up-to-scale ones.
        ate_se3, ate_sim3: :class:`ATEStats` of both alignments.
        rpe: :class:`RPEStats` (None unless the frames with GT are contiguous).
        alignment: ``[4, 4]`` the primary alignment, prediction world -> GT world.
        aligned_c2w: ``[M, 4, 4]`` the predicted poses of the frames with GT after the primary alignment.
        gt_c2w: ``[M, 4, 4]`` their ground-truth poses.
        frame_indices: the M frame indices with ground truth.
        alignment_degenerate: the GT centres are nearly collinear, so the Umeyama alignment's rotation
            (about the path) is undetermined and its rotation error meaningless.
        ate_first_pose: then also the ATE after aligning on the first pose (labelled as such).
    """

    num_frames_with_gt: int
    primary: Literal["se3", "sim3"]
    ate_se3: ATEStats
    ate_sim3: ATEStats
    alignment: np.ndarray
    aligned_c2w: np.ndarray
    gt_c2w: np.ndarray
    frame_indices: list[int] = field(default_factory=list)
    rpe: RPEStats | None = None
    alignment_degenerate: bool = False
    ate_first_pose: ATEStats | None = None

    @property
    def ate(self) -> ATEStats:
        """The ATE of the primary alignment."""
        return self.ate_se3 if self.primary == "se3" else self.ate_sim3

    def to_dict(self) -> dict[str, Any]:
        """The ``metrics.json`` form (arrays of the aligned trajectory left out)."""
        out: dict[str, Any] = {"num_frames_with_gt": self.num_frames_with_gt, "primary_alignment": self.primary,
                               "ate_se3": self.ate_se3.to_dict(), "ate_sim3": self.ate_sim3.to_dict(),
                               "alignment": np.asarray(self.alignment).tolist()}
        if self.rpe is not None:
            out["rpe"] = self.rpe.to_dict()
        if self.alignment_degenerate:
            out["alignment_degenerate"] = True
        if self.ate_first_pose is not None:
            out["ate_first_pose"] = self.ate_first_pose.to_dict()
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any], aligned_c2w: np.ndarray, gt_c2w: np.ndarray,
                  frame_indices: list[int] | None = None) -> "TrajectoryMetrics":
        """Inverse of :meth:`to_dict` given the two pose arrays (as stored in a bundle)."""
        rpe, first = d.get("rpe"), d.get("ate_first_pose")
        return cls(int(d["num_frames_with_gt"]), d.get("primary_alignment", "se3"), ATEStats(**d["ate_se3"]),
                   ATEStats(**d["ate_sim3"]), np.asarray(d["alignment"], np.float64),
                   np.asarray(aligned_c2w, np.float64), np.asarray(gt_c2w, np.float64),
                   list(frame_indices if frame_indices is not None else d.get("frame_indices", [])),
                   None if rpe is None else RPEStats(**rpe), bool(d.get("alignment_degenerate", False)),
                   None if first is None else ATEStats(**first))


@dataclass
class Update:
    """One frame's result as soon as a streaming back-end has it (what a live viewer consumes).

    Attributes:
        index: position of the frame in the processed sequence (0-based).
        name: the frame's name.
        c2w: ``[4, 4]`` float64 camera-to-world.
        K: ``[3, 3]`` float64 intrinsics for ``image_size``.
        image_size: ``(width, height)`` of the frame.
        status: how the pose was obtained (:class:`FrameStatus`; ``status.ok`` False = tracking failed).
        points: optional world points of this frame, ``[N, 3]`` or ``[H', W', 3]`` float32.
        colors: optional uint8 colours of ``points`` (``[N, 3]`` or ``[H', W', 3]``).
        confidence: optional confidences of ``points`` (``[N]`` or ``[H', W']``).
        image: optional ``[h, w, 3]`` uint8 picture of the frame (may be a thumbnail).
        num_frames: frames with results so far (including this one).
        frames_per_s: processing rate so far.
        trajectory: optional ``[M, 4, 4]`` corrected camera-to-world of ALL frames so far, set when the
            back-end changed past poses (loop closure, global optimisation).
        metadata: back-end specific extras (depth scale, buffer membership, fitness...).
    """

    index: int
    name: str
    c2w: np.ndarray
    K: np.ndarray
    image_size: tuple[int, int]
    status: FrameStatus = field(default_factory=FrameStatus)
    points: np.ndarray | None = None
    colors: np.ndarray | None = None
    confidence: np.ndarray | None = None
    image: np.ndarray | None = None
    num_frames: int = 0
    frames_per_s: float = 0.0
    trajectory: np.ndarray | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.c2w = np.asarray(self.c2w, dtype=np.float64)
        self.K = np.asarray(self.K, dtype=np.float64)
        _check_shape("Update c2w", self.c2w, (4, 4))
        _check_shape("Update K", self.K, (3, 3))
        if self.points is not None and self.points.shape[-1] != 3:
            raise ValueError(f"Update points: expected [N, 3] or [H, W, 3], found {list(self.points.shape)}")

    @property
    def tracking_ok(self) -> bool:
        return self.status.ok

    @property
    def keyframe(self) -> bool:
        return self.status.keyframe


# --------------------------------------------------------------------------------------------------
# Reconstruction
# --------------------------------------------------------------------------------------------------


@dataclass
class Reconstruction:
    """The result of a reconstruction: a camera for EVERY input frame plus the geometry.

    Attributes:
        c2w: ``[N, 4, 4]`` float64 camera-to-world poses, one per input frame.
        K: ``[N, 3, 3]`` float64 intrinsics, one per input frame, for ``image_size``.
        image_size: ``(width, height)`` the intrinsics refer to.
        frame_names: N names (file stems or indices).
        timestamps: ``[N]`` float64 seconds.
        point_maps: optional ``[N, H', W', 3]`` float32 per-frame WORLD point maps (H', W' may differ
            from ``image_size``, e.g. a model's working resolution).
        confidences: optional ``[N, H', W']`` float32 confidences of ``point_maps``.
        point_map_colors: optional ``[N, H', W', 3]`` uint8 colours of ``point_maps``.
        points: optional fused :class:`PointCloud` (world frame).
        mesh: optional :class:`Mesh` (world frame).
        backend: name of the back-end that made it.
        metric_scale: True when the geometry is in metres (RGB-D input, metric poses), False when it is
            up to an unknown scale.
        depth_scales: optional ``[N]`` float64 per-frame scales fitted to sensor depth (NaN = no fit).
        frame_status: N :class:`FrameStatus` (default: all ``"tracked"``).
        timings: seconds per stage (keys ending in ``_s``) and ``frames_per_s``.
        trajectory_metrics: :class:`TrajectoryMetrics` against ground truth, when it was scored.
        interrupted: the run stopped early (Ctrl-C, a dropped stream): a partial result.
        metadata: free-form JSON-serialisable, back-end specific information (options, keyframes...).
    """

    c2w: np.ndarray
    K: np.ndarray
    image_size: tuple[int, int]
    frame_names: list[str] = field(default_factory=list)
    timestamps: np.ndarray | None = None
    point_maps: np.ndarray | None = None
    confidences: np.ndarray | None = None
    point_map_colors: np.ndarray | None = None
    points: PointCloud | None = None
    mesh: Mesh | None = None
    backend: str = ""
    metric_scale: bool = False
    depth_scales: np.ndarray | None = None
    frame_status: list[FrameStatus] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    trajectory_metrics: TrajectoryMetrics | None = None
    interrupted: bool = False
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.c2w = np.asarray(self.c2w, dtype=np.float64)
        self.K = np.asarray(self.K, dtype=np.float64)
        _check_shape("Reconstruction c2w", self.c2w, (-1, 4, 4))
        n = len(self.c2w)
        _check_shape("Reconstruction K", self.K, (n, 3, 3))
        self.image_size = (int(self.image_size[0]), int(self.image_size[1]))
        if not self.frame_names:
            self.frame_names = [f"{i:06d}" for i in range(n)]
        if len(self.frame_names) != n:
            raise ValueError(f"Reconstruction: {len(self.frame_names)} frame names for {n} poses")
        if self.timestamps is None:
            self.timestamps = np.arange(n, dtype=np.float64)
        self.timestamps = np.asarray(self.timestamps, dtype=np.float64)
        _check_shape("Reconstruction timestamps", self.timestamps, (n,))
        if self.point_maps is not None:
            _check_shape("Reconstruction point_maps", self.point_maps, (n, -1, -1, 3))
            hw = self.point_maps.shape[1:3]
            _check_shape("Reconstruction confidences", self.confidences, (n, *hw))
            _check_shape("Reconstruction point_map_colors", self.point_map_colors, (n, *hw, 3))
        if not self.frame_status:
            self.frame_status = [FrameStatus() for _ in range(n)]
        if len(self.frame_status) != n:
            raise ValueError(f"Reconstruction: {len(self.frame_status)} frame statuses for {n} poses")
        if self.depth_scales is not None:
            self.depth_scales = np.asarray(self.depth_scales, dtype=np.float64)
            _check_shape("Reconstruction depth_scales", self.depth_scales, (n,))
        self.timings = {str(k): float(v) for k, v in self.timings.items()}

    @property
    def failures(self) -> list[tuple[int, FrameStatus]]:
        """``(frame index, status)`` of the frames whose camera is a fallback (``"failed"`` or ``"lost"``)."""
        return [(i, s) for i, s in enumerate(self.frame_status) if not s.ok]

    @property
    def keyframes(self) -> list[int]:
        """Indices of the frames marked as keyframes."""
        return [i for i, s in enumerate(self.frame_status) if s.keyframe]

    def __len__(self) -> int:
        return len(self.c2w)

    @property
    def w2c(self) -> np.ndarray:
        """``[N, 4, 4]`` world-to-camera poses."""
        return np.linalg.inv(self.c2w)

    @property
    def intrinsics(self) -> list[Intrinsics]:
        w, h = self.image_size
        return [Intrinsics.from_K(k, w, h) for k in self.K]


# --------------------------------------------------------------------------------------------------
# Gaussians
# --------------------------------------------------------------------------------------------------


def _quat_to_rotmat(q: Tensor) -> Tensor:
    """``[..., 4]`` wxyz (normalised inside) -> ``[..., 3, 3]``."""
    q = q / q.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    w, x, y, z = q.unbind(-1)
    return torch.stack(
        [
            1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
            2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
            2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
        ],
        dim=-1,
    ).reshape(*q.shape[:-1], 3, 3)


def _rotmat_to_quat(R: Tensor) -> Tensor:
    """``[..., 3, 3]`` rotation -> ``[..., 4]`` wxyz with w >= 0 (Shepperd's method, branch-free)."""
    m = R
    t = m[..., 0, 0] + m[..., 1, 1] + m[..., 2, 2]
    cands = torch.stack(
        [
            torch.stack([1 + t, m[..., 2, 1] - m[..., 1, 2], m[..., 0, 2] - m[..., 2, 0], m[..., 1, 0] - m[..., 0, 1]], -1),
            torch.stack([m[..., 2, 1] - m[..., 1, 2], 1 + 2 * m[..., 0, 0] - t, m[..., 0, 1] + m[..., 1, 0], m[..., 0, 2] + m[..., 2, 0]], -1),
            torch.stack([m[..., 0, 2] - m[..., 2, 0], m[..., 0, 1] + m[..., 1, 0], 1 + 2 * m[..., 1, 1] - t, m[..., 1, 2] + m[..., 2, 1]], -1),
            torch.stack([m[..., 1, 0] - m[..., 0, 1], m[..., 0, 2] + m[..., 2, 0], m[..., 1, 2] + m[..., 2, 1], 1 + 2 * m[..., 2, 2] - t], -1),
        ],
        dim=-2,
    )  # [..., 4, 4]: candidate k has the k-th component largest
    diag = torch.stack([t, m[..., 0, 0], m[..., 1, 1], m[..., 2, 2]], -1)
    best = diag.argmax(-1)
    q = torch.gather(cands, -2, best[..., None, None].expand(*best.shape, 1, 4)).squeeze(-2)
    q = q / q.norm(dim=-1, keepdim=True)
    return torch.where(q[..., :1] < 0, -q, q)


@dataclass
class Gaussians:
    """A set of 3D Gaussians (3DGS parameterisation, raw/unactivated values, torch tensors).

    Attributes:
        means: ``[N, 3]`` centres (world frame, or the source camera frame for single-image models).
        quats: ``[N, 4]`` rotations, wxyz, not necessarily normalised.
        log_scales: ``[N, 3]`` log of the standard deviations along the local axes.
        opacity_logits: ``[N]`` logit of the opacity.
        sh: ``[N, K, 3]`` spherical-harmonics coefficients, ``K = (degree + 1)^2``; ``sh[:, 0]`` is the
            DC term (``colour = 0.5 + SH_C0 * sh[:, 0]`` at degree 0). Coefficient-major, RGB last.
    """

    means: Tensor
    quats: Tensor
    log_scales: Tensor
    opacity_logits: Tensor
    sh: Tensor

    def __post_init__(self) -> None:
        n = self.means.shape[0] if self.means.ndim == 2 else -1
        _check_shape("Gaussians means", self.means, (-1, 3))
        _check_shape("Gaussians quats", self.quats, (n, 4))
        _check_shape("Gaussians log_scales", self.log_scales, (n, 3))
        _check_shape("Gaussians opacity_logits", self.opacity_logits, (n,))
        _check_shape("Gaussians sh", self.sh, (n, -1, 3))
        k = self.sh.shape[1]
        if int(round(math.sqrt(k))) ** 2 != k or k > 16:
            raise ValueError(f"Gaussians sh: K must be 1, 4, 9 or 16 coefficients, found {k}")

    def __len__(self) -> int:
        return int(self.means.shape[0])

    # activated values --------------------------------------------------------------------------
    @property
    def sh_degree(self) -> int:
        return int(round(math.sqrt(self.sh.shape[1]))) - 1

    @property
    def scales(self) -> Tensor:
        """``[N, 3]`` standard deviations."""
        return self.log_scales.exp()

    @property
    def opacities(self) -> Tensor:
        """``[N]`` opacities in (0, 1)."""
        return torch.sigmoid(self.opacity_logits)

    @property
    def rotations(self) -> Tensor:
        """``[N, 3, 3]`` rotation matrices of the normalised quaternions."""
        return _quat_to_rotmat(self.quats)

    @property
    def colors(self) -> Tensor:
        """``[N, 3]`` view-independent (DC) colour, ``max(0.5 + SH_C0 * dc, 0)``."""
        return (0.5 + SH_C0 * self.sh[:, 0]).clamp_min(0.0)

    def covariances(self) -> Tensor:
        """``[N, 3, 3]`` world covariances ``R diag(s)^2 R^T``."""
        R = self.rotations
        s2 = self.scales**2
        return (R * s2[:, None, :]) @ R.transpose(-1, -2)

    # construction ------------------------------------------------------------------------------
    @classmethod
    def from_activated(
        cls,
        means: Tensor,
        quats: Tensor,
        scales: Tensor,
        opacities: Tensor,
        colors: Tensor | None = None,
        sh: Tensor | None = None,
        eps: float = 1e-6,
    ) -> "Gaussians":
        """Build from activated values (scales = std devs, opacities in [0, 1], colours in [0, 1]).

        Give either ``colors`` ``[N, 3]`` (stored as SH degree 0) or ``sh`` ``[N, K, 3]``.
        """
        if (colors is None) == (sh is None):
            raise ValueError("Gaussians.from_activated: give exactly one of colors or sh")
        if sh is None:
            sh = ((colors - 0.5) / SH_C0)[:, None, :]
        o = opacities.clamp(eps, 1 - eps)
        return cls(means, quats, scales.clamp_min(1e-12).log(), torch.log(o) - torch.log1p(-o), sh)

    @classmethod
    def empty(cls, sh_degree: int = 0, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> "Gaussians":
        k = (sh_degree + 1) ** 2
        z = lambda *s: torch.zeros(*s, device=device, dtype=dtype)  # noqa: E731
        return cls(z(0, 3), z(0, 4), z(0, 3), z(0), z(0, k, 3))

    # manipulation ------------------------------------------------------------------------------
    def _map(self, fn) -> "Gaussians":
        return Gaussians(fn(self.means), fn(self.quats), fn(self.log_scales), fn(self.opacity_logits), fn(self.sh))

    def subset(self, index: Tensor | slice | np.ndarray) -> "Gaussians":
        """Select Gaussians by index, slice or boolean mask."""
        if isinstance(index, np.ndarray):
            index = torch.from_numpy(index)
        return self._map(lambda t: t[index])

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> "Gaussians":
        return self._map(lambda t: t.to(device=device, dtype=dtype))

    def detach(self) -> "Gaussians":
        return self._map(lambda t: t.detach())

    def clone(self) -> "Gaussians":
        return self._map(lambda t: t.clone())

    def parameters(self) -> list[Tensor]:
        """The five raw tensors (for optimisers)."""
        return [self.means, self.quats, self.log_scales, self.opacity_logits, self.sh]

    def requires_grad_(self, requires_grad: bool = True) -> "Gaussians":
        """Set ``requires_grad`` on every tensor in place; returns ``self``."""
        for t in self.parameters():
            t.requires_grad_(requires_grad)
        return self

    def with_sh_degree(self, degree: int) -> "Gaussians":
        """Truncate or zero-pad the SH coefficients to ``degree``."""
        k = (degree + 1) ** 2
        sh = self.sh[:, :k]
        if sh.shape[1] < k:
            sh = torch.cat([sh, sh.new_zeros(len(self), k - sh.shape[1], 3)], 1)
        return Gaussians(self.means, self.quats, self.log_scales, self.opacity_logits, sh)

    @staticmethod
    def concat(items: list["Gaussians"]) -> "Gaussians":
        """Concatenate; SH degrees are padded to the largest."""
        if not items:
            raise ValueError("Gaussians.concat: empty list")
        deg = max(g.sh_degree for g in items)
        items = [g.with_sh_degree(deg) for g in items]
        cat = lambda name: torch.cat([getattr(g, name) for g in items], 0)  # noqa: E731
        return Gaussians(cat("means"), cat("quats"), cat("log_scales"), cat("opacity_logits"), cat("sh"))

    def transform(self, T: Tensor | np.ndarray) -> "Gaussians":
        """Apply a Sim(3) ``T`` ``[4, 4]`` (``x' = s R x + t``; scale is read off ``T[:3, :3]``).

        Means, rotations and scales are transformed. SH coefficients of degree > 0 are NOT rotated
        (they are left as they are, which is exact for degree 0).
        """
        T = torch.as_tensor(T, dtype=self.means.dtype, device=self.means.device)
        _check_shape("transform T", T, (4, 4))
        A = T[:3, :3]
        s = torch.linalg.det(A).abs().pow(1.0 / 3.0)
        R = A / s
        means = self.means @ A.T + T[:3, 3]
        qR = _rotmat_to_quat(R[None])[0]
        q = self.quats / self.quats.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        w1, x1, y1, z1 = qR.unbind(-1)
        w2, x2, y2, z2 = q.unbind(-1)
        quats = torch.stack(
            [
                w1 * w2 - x1 * x2 - y1 * y2 - z1 * z2,
                w1 * x2 + x1 * w2 + y1 * z2 - z1 * y2,
                w1 * y2 - x1 * z2 + y1 * w2 + z1 * x2,
                w1 * z2 + x1 * y2 - y1 * x2 + z1 * w2,
            ],
            -1,
        )
        return Gaussians(means, quats, self.log_scales + torch.log(s), self.opacity_logits, self.sh)
