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
from typing import Any

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
    "Gaussians",
    "SH_C0",
]

SH_C0 = 0.28209479177387814


def _check_shape(name: str, arr: np.ndarray | Tensor | None, shape: tuple, where: str = "") -> None:
    """Raise ValueError unless ``arr`` has ``shape`` (``-1`` matches any size)."""
    if arr is None:
        return
    found = tuple(arr.shape)
    ok = len(found) == len(shape) and all(s == -1 or s == f for s, f in zip(shape, found))
    if not ok:
        exp = "x".join("N" if s == -1 else str(s) for s in shape)
        loc = f" ({where})" if where else ""
        raise ValueError(f"{name}{loc}: expected shape [{exp}], found {list(found)}")


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
        metadata: free-form JSON-serialisable information (backend, options, timings, scales...).
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
