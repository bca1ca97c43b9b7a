"""A deterministic synthetic room with exact ground truth: RGB, depth, poses, point maps, mesh.

The scene is a closed box-shaped room (floor, ceiling, four walls) with ``num_boxes`` boxes standing
on the floor, axis-aligned or rotated about the vertical axis. Every surface carries its own
procedural texture (:mod:`forward3d.data.synthetic_texture`) and a constant Lambert shade, so that
colours are view independent (photometrically consistent across frames).

World frame (right-handed, metres):

- ``+y`` points UP (gravity along ``-y``); the floor is ``y = 0`` and the ceiling ``y = room_size[1]``.
- The room spans ``x in [-X/2, X/2]`` and ``z in [-Z/2, Z/2]`` with ``(X, Y, Z) = room_size``.

Cameras use OpenCV axes (x right, y down, z forward); a camera looking horizontally has its y axis
along world ``-y``. Pixel ``(u, v)`` is the ray through ``(u + 0.5, v + 0.5)``. Rendering is exact ray
casting in numpy (ray-plane for the room, slab test for the boxes, each box only over its
projected bounding rectangle), vectorised over all pixels; depth is metric z-depth along the camera
axis; colours are trilinearly mip-mapped texture lookups (1 cm texels), so that distant and
grazing surfaces do not alias. Any camera can be rendered as long as its centre is inside the room
and outside the boxes (otherwise ValueError).

Ground truth: :meth:`SyntheticScene.surface_points` (dense samples with colours and normals;
``visible_only=True`` keeps what the trajectory sees, the reference for completion metrics) and
:meth:`SyntheticScene.mesh`.

Example::

    scene = SyntheticScene(num_frames=50, trajectory="handheld", depth_noise=0.002)
    for frame in scene.frames():
        ...  # frame.image, frame.depth (with sensor noise), frame.K, frame.c2w (ground truth)
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, fields, replace
from typing import Iterator, Literal

import numpy as np

from forward3d.data.synthetic_camera import TRAJECTORIES, make_trajectory, random_views, rot_y
from forward3d.data.synthetic_texture import MIP_LEVELS, TEXELS_PER_METRE, texture_atlas, value_noise
from forward3d.types import Frame, Intrinsics, Mesh, PointCloud

__all__ = ["SyntheticConfig", "SyntheticScene"]

log = logging.getLogger(__name__)

_TRAJECTORIES = TRAJECTORIES
_TEXELS_PER_METRE = TEXELS_PER_METRE
_MIP_LEVELS = MIP_LEVELS
_LIGHT = np.array([0.35, 1.0, 0.2]) / np.linalg.norm([0.35, 1.0, 0.2])  # towards the light, world


@dataclass
class SyntheticConfig:
    """Configuration of :class:`SyntheticScene`.

    Attributes:
        seed: everything (layout, textures, trajectory, sensor noise) is a function of the seed.
        num_frames: number of frames of the trajectory (>= 1).
        width, height: image size in pixels of :meth:`SyntheticScene.frame`.
        fov_x_deg: horizontal field of view in degrees (square pixels, centred principal point).
        room_size: ``(X, Y, Z)`` room extent in metres; ``Y`` is the height (world ``+y`` is up).
        num_boxes: boxes standing on the floor (fewer are placed, with a warning, if they do not fit).
        trajectory: ``"orbit"`` (loop around the room centre looking across it), ``"walk"``
            (forward-looking walk along an ellipse) or ``"handheld"`` (orbit plus smooth shake).
        speed: scales the per-frame motion (1.0: ~5 cm and 3.6 degrees per frame for ``orbit``).
        depth_noise: sensor-like depth noise, ``sigma = depth_noise * z**2`` metres (0 = exact).
        depth_holes: fraction of depth pixels dropped (in blobs and at grazing angles), in ``[0, 1)``.
        max_depth: depth beyond this is set to 0 like a sensor's range limit (0 = unlimited).
    """

    seed: int = 0
    num_frames: int = 100
    width: int = 320
    height: int = 240
    fov_x_deg: float = 70.0
    room_size: tuple[float, float, float] = (6.0, 3.0, 5.0)
    num_boxes: int = 6
    trajectory: Literal["orbit", "walk", "handheld"] = "orbit"
    speed: float = 1.0
    depth_noise: float = 0.0
    depth_holes: float = 0.0
    max_depth: float = 0.0

    def __post_init__(self) -> None:
        self.room_size = tuple(float(s) for s in self.room_size)  # type: ignore[assignment]
        self.validate()

    def validate(self) -> None:
        """Raise ValueError naming the expected and the found value for any bad field."""
        def bad(name: str, expected: str) -> ValueError:
            return ValueError(f"SyntheticConfig.{name}: expected {expected}, found {getattr(self, name)!r}")

        if not isinstance(self.seed, (int, np.integer)):
            raise bad("seed", "an int")
        if int(self.num_frames) < 1:
            raise bad("num_frames", ">= 1")
        if int(self.width) <= 0:
            raise bad("width", "> 0")
        if int(self.height) <= 0:
            raise bad("height", "> 0")
        if not 1.0 <= float(self.fov_x_deg) <= 170.0:
            raise bad("fov_x_deg", "a value in [1, 170]")
        if len(self.room_size) != 3 or min(self.room_size) < 1.5:
            raise bad("room_size", "three extents (X, Y, Z) of at least 1.5 m")
        if int(self.num_boxes) < 0:
            raise bad("num_boxes", ">= 0")
        if self.trajectory not in _TRAJECTORIES:
            raise bad("trajectory", f"one of {_TRAJECTORIES}")
        if not (math.isfinite(self.speed) and self.speed >= 0.0):
            raise bad("speed", ">= 0")
        if not (math.isfinite(self.depth_noise) and self.depth_noise >= 0.0):
            raise bad("depth_noise", ">= 0")
        if not 0.0 <= float(self.depth_holes) < 1.0:
            raise bad("depth_holes", "a fraction in [0, 1)")
        if not (math.isfinite(self.max_depth) and self.max_depth >= 0.0):
            raise bad("max_depth", ">= 0 (0 = unlimited)")


# --------------------------------------------------------------------------------------------------
# the scene
# --------------------------------------------------------------------------------------------------


@dataclass
class _Hits:
    """Ray-casting result for ``P`` pixels: ``t`` z-depth (inf = miss), ``sid`` surface ids, ``points``."""

    t: np.ndarray  # [P] float32
    sid: np.ndarray  # [P] int64 (-1 = miss)
    points: np.ndarray  # [3, P] float32 world
    dirs: np.ndarray  # [3, P] float32 world ray directions with unit camera z


class SyntheticScene:
    """A textured room with boxes, a camera trajectory and exact ground truth.

    Attributes:
        config: the :class:`SyntheticConfig`.
        num_frames: number of frames.
        K: ``[3, 3]`` float64 intrinsics for ``(config.width, config.height)``.
        c2w: ``[N, 4, 4]`` float64 ground-truth camera-to-world poses (OpenCV axes).
        boxes: list of ``(centre [3], half_extents [3], yaw)`` in world coordinates, centre at half
            height, ``yaw`` in radians about world +y.
        room: ``[3]`` float64 room extent ``(X, Y, Z)``.
    """

    def __init__(self, config: SyntheticConfig | None = None, **overrides) -> None:
        if config is None:
            config = SyntheticConfig(**overrides)
        elif overrides:
            unknown = set(overrides) - {f.name for f in fields(SyntheticConfig)}
            if unknown:
                raise ValueError(f"SyntheticScene: unknown config fields {sorted(unknown)}")
            config = replace(config, **overrides)
        else:
            config.validate()
        self.config = config
        self.num_frames = int(config.num_frames)
        self.room = np.asarray(config.room_size, dtype=np.float64)
        self._lo = np.array([-self.room[0] / 2, 0.0, -self.room[2] / 2])
        self._hi = np.array([self.room[0] / 2, self.room[1], self.room[2] / 2])
        self.K = Intrinsics.from_fov(int(config.width), int(config.height), float(config.fov_x_deg)).K
        self.boxes = self._place_boxes(np.random.default_rng([int(config.seed), 1]))
        self._build_surfaces()
        self.c2w = make_trajectory(config.trajectory, self.num_frames, config.room_size, config.speed,
                                   np.random.default_rng([int(config.seed), 2]))

    # ---------------------------------------------------------------------------------- layout
    def _place_boxes(self, rng: np.random.Generator) -> list[tuple[np.ndarray, np.ndarray, float]]:
        X, Y, Z = self.room
        margin = 0.35
        boxes: list[tuple[np.ndarray, np.ndarray, float]] = []
        circles: list[tuple[float, float, float]] = []
        want = int(self.config.num_boxes)
        for _ in range(want * 200):
            if len(boxes) == want:
                break
            hx, hz = rng.uniform(0.12, 0.42, size=2) * min(1.0, min(X, Z) / 4.0)
            hy = rng.uniform(0.08, 0.175) * Y  # top at most 0.35 Y: cameras fly above the boxes
            yaw = 0.0 if rng.random() < 0.4 else float(rng.uniform(0.0, np.pi / 2))
            r = math.hypot(hx, hz)
            lim_x, lim_z = X / 2 - margin - r, Z / 2 - margin - r
            if lim_x <= 0 or lim_z <= 0:
                continue
            cx, cz = rng.uniform(-lim_x, lim_x), rng.uniform(-lim_z, lim_z)
            if any(math.hypot(cx - ox, cz - oz) < r + orr + 0.15 for ox, oz, orr in circles):
                continue
            circles.append((cx, cz, r))
            boxes.append((np.array([cx, hy, cz]), np.array([hx, hy, hz]), yaw))
        if len(boxes) < want:
            log.warning("SyntheticScene: placed %d of %d boxes (room %s too small)", len(boxes), want,
                        self.config.room_size)
        return boxes

    def _build_surfaces(self) -> None:
        """Rectangles: ids 0-5 room faces (2*axis + [lo, hi]), then 6 per box (2*axis + [-, +])."""
        origin, au, av, normal, extent, visible = [], [], [], [], [], []
        eye = np.eye(3)
        for a in range(3):
            b, c = [k for k in range(3) if k != a]
            for side in (0, 1):
                o = self._lo.copy()
                o[a] = self._hi[a] if side else self._lo[a]
                origin.append(o)
                au.append(eye[b])
                av.append(eye[c])
                normal.append(eye[a] * (-1.0 if side else 1.0))  # into the room
                extent.append((self.room[b], self.room[c]))
                visible.append(True)
        for centre, half, yaw in self.boxes:
            R = rot_y(yaw)
            for a in range(3):
                b, c = [k for k in range(3) if k != a]
                for side in (0, 1):
                    s = 1.0 if side else -1.0
                    face_c = centre + s * half[a] * R[:, a]
                    origin.append(face_c - half[b] * R[:, b] - half[c] * R[:, c])
                    au.append(R[:, b])
                    av.append(R[:, c])
                    normal.append(s * R[:, a])
                    extent.append((2 * half[b], 2 * half[c]))
                    visible.append(not (a == 1 and side == 0))  # the bottom stands on the floor
        self._origin = np.asarray(origin, dtype=np.float32)
        self._au = np.asarray(au, dtype=np.float32)
        self._av = np.asarray(av, dtype=np.float32)
        self._normal = np.asarray(normal, dtype=np.float32)
        self._extent = np.asarray(extent, dtype=np.float64)
        self._visible = np.asarray(visible, dtype=bool)
        self._shade = (0.6 + 0.4 * (0.5 + 0.5 * self._normal.astype(np.float64) @ _LIGHT)).astype(np.float32)

        key = (int(self.config.seed), tuple((float(eu), float(ev)) for eu, ev in self._extent))
        self._atlas, self._tex_off, self._tex_w, self._tex_h = texture_atlas(*key)
        tpm = _TEXELS_PER_METRE
        ou = -np.einsum("sk,sk->s", self._origin.astype(np.float64), self._au) * tpm - 0.5
        ov = -np.einsum("sk,sk->s", self._origin.astype(np.float64), self._av) * tpm - 0.5
        cu = np.concatenate([self._au * tpm, ou[:, None]], 1).astype(np.float32)  # [S, 4]
        cv = np.concatenate([self._av * tpm, ov[:, None]], 1).astype(np.float32)
        self._tex_cols = (tuple(np.ascontiguousarray(c) for c in cu.T), tuple(np.ascontiguousarray(c) for c in cv.T))
        self._normal_cols = tuple(np.ascontiguousarray(c) for c in self._normal.T)
        self._shade_255 = (self._shade / 255.0).astype(np.float32)

    # ---------------------------------------------------------------------------------- casting
    def _cast(self, c2w: np.ndarray, K: np.ndarray, width: int, height: int) -> _Hits:
        """Cast one ray per pixel (row-major); arrays are structure-of-arrays for speed."""
        c2w = np.asarray(c2w, dtype=np.float64)
        K = np.asarray(K, dtype=np.float64)
        if c2w.shape != (4, 4):
            raise ValueError(f"SyntheticScene: c2w expected shape [4, 4], found {list(c2w.shape)}")
        if K.shape != (3, 3):
            raise ValueError(f"SyntheticScene: K expected shape [3, 3], found {list(K.shape)}")
        if int(width) <= 0 or int(height) <= 0:
            raise ValueError(f"SyntheticScene: expected a positive image size, found {width}x{height}")
        width, height = int(width), int(height)
        R, o = c2w[:3, :3], c2w[:3, 3]
        if not (np.all(np.isfinite(c2w)) and np.all(o > self._lo) and np.all(o < self._hi)):
            raise ValueError(f"SyntheticScene: expected a camera centre inside the room {self._lo.tolist()} - "
                             f"{self._hi.tolist()}, found {o.tolist()}")
        inside = self._inside_boxes(o[None].astype(np.float64), eps=0.0)
        if inside[0]:
            raise ValueError(f"SyntheticScene: expected a camera centre outside the boxes, found {o.tolist()}")
        # ray directions with unit camera z, so that the ray parameter t is the z-depth: d = R [x, y, 1]
        u = ((np.arange(width) + 0.5 - K[0, 2]) / K[0, 0]).astype(np.float32)
        v = ((np.arange(height) + 0.5 - K[1, 2]) / K[1, 1]).astype(np.float32)
        R32 = R.astype(np.float32)
        d = (R32[:, 0, None, None] * u[None, None, :] + R32[:, 1, None, None] * v[None, :, None]
             + R32[:, 2, None, None]).reshape(3, -1)  # [3, P]
        n = d.shape[1]
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            inv = 1.0 / d
            # room, seen from inside: the nearest exit plane
            t = np.full(n, np.inf, dtype=np.float32)
            sid = np.zeros(n, dtype=np.int64)
            for a in range(3):
                pos = d[a] > 0
                ta = np.where(pos, np.float32(self._hi[a] - o[a]), np.float32(self._lo[a] - o[a])) * inv[a]
                ta = np.where(ta > 0, ta, np.inf)
                better = ta < t
                t = np.where(better, ta, t)
                sid = np.where(better, 2 * a + pos, sid)
            # boxes: slab test in each box's local frame, only over the pixels its projection covers
            w2c_R = R.T
            signs = np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)], dtype=np.float64)
            for b, (centre, half, yaw) in enumerate(self.boxes):
                Rb64 = rot_y(yaw)
                corners = centre + (signs * half) @ Rb64.T  # [8, 3] world
                cam = (corners - o) @ w2c_R.T
                rows = cols = slice(None)
                if np.all(cam[:, 2] > 1e-3):
                    px = cam[:, 0] / cam[:, 2] * K[0, 0] + K[0, 2]
                    py = cam[:, 1] / cam[:, 2] * K[1, 1] + K[1, 2]
                    u0, u1 = max(int(np.floor(px.min())) - 1, 0), min(int(np.ceil(px.max())) + 1, width)
                    v0, v1 = max(int(np.floor(py.min())) - 1, 0), min(int(np.ceil(py.max())) + 1, height)
                    if u0 >= u1 or v0 >= v1:
                        continue
                    rows, cols = slice(v0, v1), slice(u0, u1)
                pix = np.arange(n).reshape(height, width)[rows, cols].reshape(-1)
                db = d.reshape(3, height, width)[:, rows, cols].reshape(3, -1)
                m = db.shape[1]
                Rb = Rb64.astype(np.float32)
                ol = Rb.T @ (o - centre).astype(np.float32)
                tnear = np.full(m, -np.inf, dtype=np.float32)
                tfar = np.full(m, np.inf, dtype=np.float32)
                near_axis = np.zeros(m, dtype=np.int64)
                dls = []
                for a in range(3):
                    dl = Rb[0, a] * db[0] + Rb[1, a] * db[1] + Rb[2, a] * db[2]  # (Rb^T d)_a
                    il = 1.0 / dl
                    t1 = (np.float32(-half[a]) - ol[a]) * il
                    t2 = (np.float32(half[a]) - ol[a]) * il
                    tn = np.minimum(t1, t2)
                    upd = tn > tnear
                    tnear = np.where(upd, tn, tnear)
                    near_axis = np.where(upd, a, near_axis)
                    tfar = np.minimum(tfar, np.maximum(t1, t2))
                    dls.append(dl)
                hit = (tnear <= tfar) & (tnear > 1e-6) & (tnear < t[pix])
                if not hit.any():
                    continue
                idx = np.nonzero(hit)[0]
                ax = near_axis[idx]
                dl_ax = np.stack(dls)[ax, idx]
                t[pix[idx]] = tnear[idx]
                sid[pix[idx]] = 6 + 6 * b + 2 * ax + (dl_ax < 0)  # moving towards -axis: entered the + face
        miss = ~np.isfinite(t)
        sid[miss] = -1
        tt = np.where(miss, np.float32(0.0), t)
        points = o.astype(np.float32)[:, None] + tt[None, :] * d
        return _Hits(t, sid, points, d)

    def _sample_level(self, su: np.ndarray, sv: np.ndarray, sid: np.ndarray, level: np.ndarray | int
                      ) -> np.ndarray:
        """Bilinear lookup ``[P, 3]`` float32 (0-255) at level-0 texel coordinates ``su, sv`` ``[P]``."""
        if np.ndim(level) == 0:
            scale = np.float32(2.0 ** -int(level))
            li = sid + int(level) * self._tex_w.shape[1]
        else:
            scale = np.exp2(-level.astype(np.float32))
            li = sid + level * self._tex_w.shape[1]
        su = (su + 0.5) * scale - 0.5
        sv = (sv + 0.5) * scale - 0.5
        w, h, off = np.take(self._tex_w, li), np.take(self._tex_h, li), np.take(self._tex_off, li)
        x0 = np.minimum(np.maximum(np.floor(su).astype(np.int64), 0), w - 2)
        y0 = np.minimum(np.maximum(np.floor(sv).astype(np.int64), 0), h - 2)
        fx = np.minimum(np.maximum(su - x0, 0.0), 1.0).astype(np.float32)[:, None]
        fy = np.minimum(np.maximum(sv - y0, 0.0), 1.0).astype(np.float32)[:, None]
        i00 = off + y0 * w + x0
        at = self._atlas  # [T] uint32 packed RGBA8: one cheap gather per corner

        def texel(i: np.ndarray) -> np.ndarray:
            return np.take(at, i).view(np.uint8).reshape(-1, 4)[:, :3].astype(np.float32)

        c00, c01 = texel(i00), texel(i00 + 1)
        c10, c11 = texel(i00 + w), texel(i00 + w + 1)
        top = c00 + (c01 - c00) * fx
        bot = c10 + (c11 - c10) * fx
        return top + (bot - top) * fy

    def _shade_colors(self, points: np.ndarray, sid: np.ndarray, footprint: np.ndarray | None = None
                      ) -> np.ndarray:
        """``[P, 3]`` float32 colours in [0, 1] of surface points ``[3, P]`` on surfaces ``sid`` ``[P]``.

        ``footprint`` ``[P]``: size of a pixel on the surface in metres; selects the mip level
        (trilinear). ``None``: the finest level (exact texture colour at the point).
        """
        # texel coordinates are affine in the point: su = p . au * tpm - origin . au * tpm - 0.5
        cu, cv = self._tex_cols
        x, y, z = points[0], points[1], points[2]
        su = np.take(cu[0], sid) * x + np.take(cu[1], sid) * y + np.take(cu[2], sid) * z + np.take(cu[3], sid)
        sv = np.take(cv[0], sid) * x + np.take(cv[1], sid) * y + np.take(cv[2], sid) * z + np.take(cv[3], sid)
        if footprint is None:
            col = self._sample_level(su, sv, sid, 0)
        else:
            lam = np.clip(np.log2(np.maximum(footprint * _TEXELS_PER_METRE, 1e-6)), 0.0, _MIP_LEVELS - 1.0)
            lo = np.minimum(lam.astype(np.int64), _MIP_LEVELS - 2)
            f = (lam - lo).astype(np.float32)
            col = self._sample_level(su, sv, sid, lo)
            blend = np.nonzero(f > 1e-3)[0]  # near pixels sit exactly on level 0: one lookup is enough
            if len(blend):
                fine = col[blend]
                col[blend] = fine + (self._sample_level(su[blend], sv[blend], sid[blend], lo[blend] + 1) - fine) \
                    * f[blend, None]
        return col * np.take(self._shade_255, sid)[:, None]

    def _pixel_colors(self, hits: _Hits, K: np.ndarray) -> np.ndarray:
        """``[P, 3]`` float32 colours in [0, 1] of a cast (0 where no surface), mip-mapped."""
        valid = hits.sid >= 0
        everything = bool(valid.all())
        sid = hits.sid if everything else hits.sid[valid]
        d = hits.dirs if everything else hits.dirs[:, valid]
        nx, ny, nz = self._normal_cols
        dn = np.abs(np.take(nx, sid) * d[0] + np.take(ny, sid) * d[1] + np.take(nz, sid) * d[2])
        cos = dn / np.sqrt(d[0] * d[0] + d[1] * d[1] + d[2] * d[2])
        # pixel footprint on the surface: z / f across the ray, stretched by 1 / cos along the slope;
        # the geometric mean of both directions trades a little blur for little aliasing
        t = hits.t if everything else hits.t[valid]
        footprint = t * np.float32(2.0 / (K[0, 0] + K[1, 1])) / np.sqrt(np.maximum(cos, np.float32(0.05)))
        if everything:
            return self._shade_colors(hits.points, sid, footprint)
        rgb = np.zeros((len(hits.t), 3), dtype=np.float32)
        rgb[valid] = self._shade_colors(hits.points[:, valid], sid, footprint)
        return rgb

    # ---------------------------------------------------------------------------------- public API
    def render(self, c2w: np.ndarray, K: np.ndarray, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
        """Render any camera inside the room.

        Args:
            c2w: ``[4, 4]`` camera-to-world (OpenCV axes); the camera centre must be inside the room
                and outside every box.
            K: ``[3, 3]`` intrinsics for ``width x height``.

        Returns:
            ``(rgb, depth)``: ``[H, W, 3]`` uint8 and exact z-depth ``[H, W]`` float32 (0 where no surface).
        """
        hits = self._cast(c2w, K, width, height)
        valid = hits.sid >= 0
        rgb = self._pixel_colors(hits, K)
        rgb8 = (np.clip(rgb, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8).reshape(height, width, 3)
        depth = np.where(valid, hits.t, 0.0).astype(np.float32).reshape(height, width)
        return rgb8, depth

    def render_normals(self, c2w: np.ndarray, K: np.ndarray, width: int, height: int) -> np.ndarray:
        """``[H, W, 3]`` float32 unit WORLD normals of the visible surfaces (facing the camera), 0 = none."""
        hits = self._cast(c2w, K, width, height)
        out = np.zeros((len(hits.t), 3), dtype=np.float32)
        valid = hits.sid >= 0
        out[valid] = self._normal[hits.sid[valid]]
        return out.reshape(int(height), int(width), 3)

    def _check_index(self, i: int) -> int:
        if not -self.num_frames <= int(i) < self.num_frames:
            raise IndexError(f"SyntheticScene: frame index {i} outside [0, {self.num_frames})")
        return int(i) % self.num_frames

    def sample_views(self, n: int, seed: int = 0) -> np.ndarray:
        """``[n, 4, 4]`` float64 random valid cameras (inside the room, above the boxes, looking at content).

        Deterministic from ``(config.seed, seed)``; e.g. novel views for single-image training data.
        """
        return random_views(n, self.config.room_size, np.random.default_rng([int(self.config.seed), 4, int(seed)]))

    def intrinsics(self, width: int | None = None, height: int | None = None) -> np.ndarray:
        """``[3, 3]`` float64 intrinsics of the scene camera resized to ``width x height``."""
        w = int(self.config.width if width is None else width)
        h = int(self.config.height if height is None else height)
        return Intrinsics.from_K(self.K, self.config.width, self.config.height).scaled(w, h).K

    def frame(self, i: int) -> Frame:
        """Frame ``i`` with sensor effects on the depth (noise, holes, range); ``c2w`` is ground truth."""
        i = self._check_index(i)
        cfg = self.config
        w, h = int(cfg.width), int(cfg.height)
        hits = self._cast(self.c2w[i], self.K, w, h)
        valid = hits.sid >= 0
        rgb = self._pixel_colors(hits, self.K)
        image = (np.clip(rgb, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8).reshape(h, w, 3)
        depth = np.where(valid, hits.t, 0.0).astype(np.float32)
        if cfg.depth_noise > 0 or cfg.depth_holes > 0 or cfg.max_depth > 0:
            depth = self._sensor(depth, hits, i, w, h)
        return Frame(image=image, depth=depth.reshape(h, w), K=self.K.copy(), c2w=self.c2w[i].copy(),
                     timestamp=i / 30.0, index=i, name=f"{i:06d}")

    def _sensor(self, depth: np.ndarray, hits: _Hits, i: int, w: int, h: int) -> np.ndarray:
        """Apply noise, range limit and holes to a flat exact depth ``[H*W]`` (deterministic per frame).

        Order: noise (``sigma = depth_noise * z**2``), range cut at ``max_depth``, then
        ``round(depth_holes * H * W)`` holes among the remaining valid pixels: up to a quarter at the
        most grazing angles (``|cos| < 0.3``), the rest in smooth random blobs.
        """
        cfg = self.config
        rng = np.random.default_rng([int(cfg.seed), 3, i])
        valid = depth > 0
        out = depth.copy()
        if cfg.depth_noise > 0:
            sigma = cfg.depth_noise * depth.astype(np.float64) ** 2
            out = out + (rng.standard_normal(len(out)) * sigma).astype(np.float32)
            out = np.where(valid, np.maximum(out, 1e-4), 0.0).astype(np.float32)
        if cfg.max_depth > 0:
            out[out > cfg.max_depth] = 0.0
            valid = out > 0
        if cfg.depth_holes > 0:
            n_drop = min(int(round(cfg.depth_holes * len(out))), int(valid.sum()))
            drop = np.zeros(len(out), dtype=bool)
            cos = np.ones(len(out), dtype=np.float32)
            dv = hits.dirs[:, valid]
            cos[valid] = np.abs(np.einsum("pk,kp->p", self._normal[hits.sid[valid]], dv)) / np.linalg.norm(dv, axis=0)
            graze = np.nonzero(valid & (cos < 0.3))[0]
            k = min(len(graze), n_drop // 4)
            if k > 0:
                drop[graze[np.argsort(cos[graze], kind="stable")[:k]]] = True
            rest = n_drop - int(drop.sum())
            if rest > 0:
                field = value_noise(rng, h, w, max(4.0, min(w, h) / 16.0)) \
                    + 0.5 * value_noise(rng, h, w, max(2.0, min(w, h) / 40.0))
                field = field.reshape(-1)
                field[drop | ~valid] = -np.inf
                drop[np.argsort(-field, kind="stable")[:rest]] = True
            out[drop] = 0.0
        return out

    def frames(self) -> Iterator[Frame]:
        """All frames in order, rendered lazily."""
        for i in range(self.num_frames):
            yield self.frame(i)

    def __len__(self) -> int:
        return self.num_frames

    def point_map(self, i: int, width: int | None = None, height: int | None = None) -> np.ndarray:
        """``[H, W, 3]`` float32 exact WORLD points of frame ``i`` (0 where no surface).

        ``width``/``height`` default to the config size; other sizes use the resized intrinsics.
        """
        i = self._check_index(i)
        w = int(self.config.width if width is None else width)
        h = int(self.config.height if height is None else height)
        hits = self._cast(self.c2w[i], self.intrinsics(w, h), w, h)
        pts = np.where((hits.sid >= 0)[:, None], hits.points.T, 0.0).astype(np.float32)
        return pts.reshape(h, w, 3)

    def _inside_boxes(self, p: np.ndarray, eps: float = 1e-5) -> np.ndarray:
        """``[P]`` bool for points ``[P, 3]``: strictly inside a box, or on the floor under one."""
        inside = np.zeros(len(p), dtype=bool)
        for centre, half, yaw in self.boxes:
            r = math.hypot(half[0], half[2])
            near = np.nonzero((np.abs(p[:, 0] - centre[0]) < r) & (np.abs(p[:, 2] - centre[2]) < r)
                              & (p[:, 1] < centre[1] + half[1]))[0]
            if not len(near):
                continue
            loc = (p[near] - centre) @ rot_y(yaw)  # Rb^T (p - c)
            inside[near] |= (np.abs(loc[:, 0]) < half[0] - eps) & (np.abs(loc[:, 2]) < half[2] - eps) \
                & (loc[:, 1] >= -half[1] - eps) & (loc[:, 1] < half[1] - eps)
        return inside

    def _face_grid(self, k: int, spacing: float, centred: bool) -> tuple[np.ndarray, int, int]:
        """Grid points on surface ``k``: cell centres (``centred``) or the ``(nu+1) x (nv+1)`` corners."""
        eu, ev = self._extent[k]
        nu, nv = self._grid_size(k, spacing)
        if centred:
            su, sv = (np.arange(nu) + 0.5) * (eu / nu), (np.arange(nv) + 0.5) * (ev / nv)
        else:
            su, sv = np.linspace(0.0, eu, nu + 1), np.linspace(0.0, ev, nv + 1)
        gv, gu = np.meshgrid(sv, su, indexing="ij")  # [nv', nu']
        pts = self._origin[k].astype(np.float64) + gu.reshape(-1, 1) * self._au[k] + gv.reshape(-1, 1) * self._av[k]
        return pts, nu, nv

    def _grid_size(self, k: int, spacing: float) -> tuple[int, int]:
        eu, ev = self._extent[k]
        return max(1, int(math.ceil(eu / spacing - 1e-9))), max(1, int(math.ceil(ev / spacing - 1e-9)))

    def observed_cells(self, spacing: float, frame_stride: int = 1) -> list[np.ndarray]:
        """Per surface, the ``[nv, nu]`` bool grid of ``spacing`` cells seen by the trajectory's frames.

        Cells hit by a pixel ray of frames ``0, frame_stride, ...`` at the config resolution are marked;
        gaps between pixel footprints are closed (2 cells) and the result dilated by one cell, so the
        mask may reach ~2 cells beyond the truly visible area at occlusion borders.
        """
        from scipy import ndimage

        if not spacing > 0:
            raise ValueError(f"observed_cells: expected spacing > 0, found {spacing}")
        if int(frame_stride) < 1:
            raise ValueError(f"observed_cells: expected frame_stride >= 1, found {frame_stride}")
        sizes = [self._grid_size(k, spacing) for k in range(len(self._extent))]
        nu = np.array([s[0] for s in sizes])
        nv = np.array([s[1] for s in sizes])
        off = np.concatenate([[0], np.cumsum(nu * nv)[:-1]])
        cell_u, cell_v = self._extent[:, 0] / nu, self._extent[:, 1] / nv
        seen = np.zeros(int((nu * nv).sum()), dtype=bool)
        w, h = int(self.config.width), int(self.config.height)
        for i in range(0, self.num_frames, int(frame_stride)):
            hits = self._cast(self.c2w[i], self.K, w, h)
            ok = hits.sid >= 0
            sid, p = hits.sid[ok], hits.points[:, ok].T.astype(np.float64)
            rel = p - self._origin[sid]
            iu = np.clip(np.floor(np.einsum("pk,pk->p", rel, self._au[sid]) / cell_u[sid]), 0, nu[sid] - 1)
            iv = np.clip(np.floor(np.einsum("pk,pk->p", rel, self._av[sid]) / cell_v[sid]), 0, nv[sid] - 1)
            seen[off[sid] + iv.astype(np.int64) * nu[sid] + iu.astype(np.int64)] = True
        masks = []
        for k in range(len(sizes)):
            m = seen[off[k]: off[k] + nu[k] * nv[k]].reshape(nv[k], nu[k])
            if m.any():
                m = ndimage.binary_closing(np.pad(m, 2), iterations=2)[2:-2, 2:-2]
                m = ndimage.binary_dilation(m)
            masks.append(m)
        return masks

    def surface_points(self, spacing: float = 0.01, visible_only: bool = False,
                       frame_stride: int = 1) -> PointCloud:
        """Dense ground-truth surface samples (room + boxes, hidden parts removed).

        Points lie at the centres of a regular grid of ``spacing`` metres on every face, with the
        rendered colour (textured, shaded, filtered at ``spacing``) and the outward normal (pointing
        into the free space).
        With ``visible_only``, only cells seen by the trajectory (see :meth:`observed_cells`) are kept:
        the reference for completion metrics of a reconstruction from these frames.
        """
        if not spacing > 0:
            raise ValueError(f"surface_points: expected spacing > 0, found {spacing}")
        masks = self.observed_cells(spacing, frame_stride) if visible_only else None
        pts, cols, nrm = [], [], []
        for k in np.nonzero(self._visible)[0]:
            p, _, _ = self._face_grid(int(k), float(spacing), centred=True)
            keep = ~self._inside_boxes(p)
            if masks is not None:
                keep &= masks[k].reshape(-1)
            p = p[keep].astype(np.float32)
            sid = np.full(len(p), k, dtype=np.int64)
            pts.append(p)
            # colour filtered at the sample spacing (exact texel colour at 1 cm), like a rendered pixel
            cols.append(self._shade_colors(np.ascontiguousarray(p.T), sid, np.full(len(p), spacing, np.float32)))
            nrm.append(np.broadcast_to(self._normal[k], p.shape))
        colors = (np.clip(np.concatenate(cols), 0, 1) * 255.0 + 0.5).astype(np.uint8)
        return PointCloud(np.concatenate(pts), colors, np.concatenate(nrm).astype(np.float32))

    def mesh(self, resolution: float = 0.05) -> Mesh:
        """Ground-truth triangle mesh of all visible surfaces, ``resolution`` metres per grid cell.

        Faces are counter-clockwise seen from the free space; vertex colours come from the textures
        (shaded, filtered at ``resolution``); triangles under the boxes are removed.
        """
        if not resolution > 0:
            raise ValueError(f"mesh: expected resolution > 0, found {resolution}")
        verts, faces, cols, nrm = [], [], [], []
        base = 0
        for k in np.nonzero(self._visible)[0]:
            k = int(k)
            p, nu, nv = self._face_grid(k, float(resolution), centred=False)
            grid = np.arange((nu + 1) * (nv + 1)).reshape(nv + 1, nu + 1)
            a, b = grid[:-1, :-1].reshape(-1), grid[:-1, 1:].reshape(-1)
            c, d = grid[1:, 1:].reshape(-1), grid[1:, :-1].reshape(-1)
            tri = np.concatenate([np.stack([a, b, c], -1), np.stack([a, c, d], -1)])
            if np.dot(np.cross(self._au[k], self._av[k]), self._normal[k]) < 0:
                tri = tri[:, ::-1]
            centroid = p[tri].mean(1)
            tri = tri[~self._inside_boxes(centroid)]
            p32 = p.astype(np.float32)
            verts.append(p32)
            faces.append(tri + base)
            cols.append(self._shade_colors(np.ascontiguousarray(p32.T), np.full(len(p32), k, dtype=np.int64),
                                           np.full(len(p32), resolution, np.float32)))
            nrm.append(np.broadcast_to(self._normal[k], p32.shape))
            base += len(p32)
        colors = (np.clip(np.concatenate(cols), 0, 1) * 255.0 + 0.5).astype(np.uint8)
        return Mesh(np.concatenate(verts), np.concatenate(faces), colors, np.concatenate(nrm))
