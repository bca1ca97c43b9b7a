"""Loop closure for metric RGB-D tracking: keyframe store, loop candidates, verification, pose graph.

:class:`LoopCloser` is fed every tracked frame (:meth:`LoopCloser.add_frame`). Keyframes are kept
downsampled (depth and colour averaged over ``downsample`` x ``downsample`` blocks, a thumbnail
descriptor) and become nodes of a :class:`~forward3d.pipelines.posegraph.PoseGraph` chained by
odometry edges. Each new keyframe looks for loops:

- by place: older keyframes whose camera centre lies within ``radius`` (a hash grid of keyframe
  centres, so the query costs the neighbouring cells, not the whole map), whose optical axis is
  within ``max_angle_deg`` and whose frustum contains the new keyframe's view point (the point at its
  median depth on its optical axis) and vice versa;
- by appearance: older keyframes whose thumbnail descriptor (a 32x24 grey image, zero-mean,
  unit-norm: no weights, nothing learnt) correlates above ``min_appearance`` with the new one.

Every candidate is verified geometrically before it enters the graph: RGB-D odometry
(:class:`~forward3d.pipelines.tsdf.RGBDTracker`) of the two stored keyframes from their relative
pose under the current estimate, accepted only when the inlier fraction, the inlier RMSE, the
information (smallest eigenvalue of open3d's ``[6, 6]`` odometry information matrix, per 1,000
pixels of the stored keyframe: about the number of correspondences constraining the weakest direction) and the correction size are all plausible (a wrong loop is worse than none).
Accepted loops trigger the robust global optimisation (open3d, line process); every frame's pose
is then its keyframe's corrected pose times the frame's pose relative to it.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from forward3d.geometry.se3 import rotation_angle, slerp_pose
from forward3d.pipelines.posegraph import PoseGraph

__all__ = ["CentreGrid", "LoopClosureOptions", "LoopCloser", "LoopResult", "StoredKeyframe", "downsample_rgbd", "thumbnail_descriptor"]

log = logging.getLogger(__name__)


@dataclass
class LoopClosureOptions:
    """Loop detection, verification and optimisation settings (the rgbd config's ``loop_*`` fields).

    Attributes:
        downsample: keyframes are stored (and verified) at 1/this resolution.
        min_gap: a loop joins keyframes at least this many keyframes apart.
        radius: place candidates: camera centres within this distance (metres).
        max_angle_deg: place candidates: optical axes within this angle.
        min_appearance: appearance candidates: thumbnail correlation above this (in [-1, 1]).
        max_candidates: candidates verified per new keyframe (place first, then appearance).
        min_fitness: verification: inlier fraction at least this.
        max_rmse: verification: inlier RMSE at most this (metres).
        min_information: verification: smallest eigenvalue of the odometry information matrix per
            1,000 stored pixels at least this (rejects loops that constrain some direction poorly).
        max_correction: verification: the loop may move the pose by at most this (metres) ...
        max_correction_deg: ... and this (degrees) from the current estimate.
        max_correspondence_distance: information matrices and the line-process scale (metres).
        edge_prune_threshold: loops whose line-process weight falls below this are dropped.
        optimize_translation, optimize_rotation_deg: accepted loops that differ less than this from
            the current estimate join the graph without an immediate optimisation (the next one, or
            :meth:`LoopCloser.finish`, uses them): revisiting a corrected place costs no optimisation.
        optimize_now, optimize_every: loop edges that disagree more than ``optimize_now`` times those
            thresholds optimise at once; smaller disagreements wait until ``optimize_every`` keyframes
            with new loop edges have passed since the last optimisation (throttling: each optimisation
            costs the whole graph).
        depth_max: depth beyond this is not used for verification (metres).
        features: coarse feature alignment of candidates: when both keyframes have ORB features
            (:func:`~forward3d.pipelines.features.align_features`) and they disagree with the current
            estimate, the odometry also starts from the features' pose (the one that passes, with the
            lower ``rmse / fitness``, is kept), so loops with more drift than the odometry's basin close.
            The correction check then applies to that start, bounded by ``max_feature_correction`` and
            ``max_feature_correction_deg`` from the estimate.
        max_feature_correction, max_feature_correction_deg: see ``features``.
        verify: geometric verification on (off only for diagnostics: every candidate is accepted,
            with the odometry's transform when it converges, else with the proposed guess).
        max_links_per_pair: re-anchored culled keyframes (:meth:`LoopCloser.add_culled`) add at most
            this many edges between the same two stored keyframes.
        max_cover_disagreement, max_cover_disagreement_deg: a culled keyframe verified against two
            covers whose verified poses differ by more than this (metres / degrees) keeps only the one
            that moves it least from its tracked pose (one of them slid: a wall, a floor), and the two
            covers are not joined through it.
    """

    downsample: int = 2
    min_gap: int = 10
    radius: float = 0.5
    max_angle_deg: float = 35.0
    min_appearance: float = 0.85
    max_candidates: int = 3
    min_fitness: float = 0.5
    max_rmse: float = 0.015
    min_information: float = 5.0
    max_correction: float = 0.3
    max_correction_deg: float = 15.0
    max_correspondence_distance: float = 0.03
    edge_prune_threshold: float = 0.25
    optimize_translation: float = 0.003
    optimize_rotation_deg: float = 0.2
    optimize_now: float = 5.0
    optimize_every: int = 5
    depth_max: float = 4.0
    features: bool = True
    max_feature_correction: float = 2.0
    max_feature_correction_deg: float = 60.0
    verify: bool = True
    max_links_per_pair: int = 3
    max_cover_disagreement: float = 0.01
    max_cover_disagreement_deg: float = 1.0


@dataclass
class StoredKeyframe:
    """A keyframe as the loop closer keeps it (downsampled).

    Attributes:
        frame: index of the frame in the sequence.
        node: its pose-graph node.
        depth: ``[h, w]`` float32 metres (0 = invalid), block-averaged.
        image: ``[h, w, 3]`` uint8, block-averaged.
        K: ``[3, 3]`` intrinsics of the stored size.
        descriptor: ``[768]`` float32 unit-norm thumbnail descriptor.
        median_depth: median valid depth (metres; the view point's distance).
        prepared: the tracker's prepared frame while the keyframe is the newest (then dropped: memory).
        features: its :class:`~forward3d.pipelines.features.FrameFeatures` (coarse loop alignment), or None.
    """

    frame: int
    node: int
    depth: np.ndarray
    image: np.ndarray
    K: np.ndarray
    descriptor: np.ndarray
    median_depth: float
    prepared: Any = None
    features: Any = None


@dataclass
class LoopResult:
    """Outcome of verifying one loop candidate.

    Attributes:
        source, target: pose-graph nodes (the new keyframe and the older one).
        kind: ``"place"``, ``"appearance"`` or ``"manual"`` (:meth:`LoopCloser.propose`).
        init: ``"estimate"`` or ``"features"``: the start of the accepted (or last tried) alignment.
        accepted: True when it passed every check (and entered the graph).
        source_to_target: ``[4, 4]`` verified ``w2c_target @ c2w_source`` (the initial guess if the solver failed).
        fitness, rmse, information: the verification numbers (see :class:`LoopClosureOptions`).
        reason: why it was rejected, "" when accepted.
    """

    source: int
    target: int
    kind: str
    accepted: bool
    source_to_target: np.ndarray
    fitness: float = 0.0
    rmse: float = float("inf")
    information: float = 0.0
    reason: str = ""
    init: str = "estimate"

    def summary(self) -> dict[str, Any]:
        return {"source": self.source, "target": self.target, "kind": self.kind, "accepted": self.accepted,
                "fitness": round(self.fitness, 4), "rmse_m": round(self.rmse, 5) if math.isfinite(self.rmse) else None,
                "information": round(self.information, 2), "reason": self.reason,
                "init": self.init}


def downsample_rgbd(depth: np.ndarray, image: np.ndarray, K: np.ndarray, factor: int
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Block-average ``depth`` ``[H, W]`` and ``image`` ``[H, W, 3]`` by ``factor``; returns them and ``K``.

    A depth block is valid only when all its pixels are valid and within 5 % of each other (edges and
    holes become 0). With pixel centres at +0.5 the block average maps ``u -> u / factor`` exactly, so
    ``K`` is divided by ``factor`` (``fx, fy, cx, cy``).
    """
    f = int(factor)
    K2 = np.asarray(K, np.float64).copy()
    if f <= 1:
        return np.asarray(depth, np.float32), np.asarray(image, np.uint8), K2
    h, w = depth.shape[0] // f * f, depth.shape[1] // f * f
    d = np.asarray(depth[:h, :w], np.float32).reshape(h // f, f, w // f, f)
    lo, hi = d.min(axis=(1, 3)), d.max(axis=(1, 3))
    ok = (lo > 0) & (hi <= lo * 1.05)
    dd = np.where(ok, d.mean(axis=(1, 3)), 0.0).astype(np.float32)
    img = np.asarray(image[:h, :w], np.float32).reshape(h // f, f, w // f, f, 3).mean(axis=(1, 3))
    K2[:2] /= f
    return dd, (img + 0.5).astype(np.uint8), K2


def thumbnail_descriptor(image: np.ndarray, size: tuple[int, int] = (32, 24)) -> np.ndarray:
    """A weight-free global descriptor ``[size[0] * size[1]]`` float32 of ``image`` ``[H, W, 3]`` uint8.

    The grey image area-averaged to ``size`` (``(w, h)``), zero-mean and unit-norm: the dot product of
    two descriptors is their normalised cross-correlation.
    """
    from forward3d.io.source_base import resize_rgb

    small = resize_rgb(np.asarray(image, np.uint8), int(size[0]), int(size[1])).astype(np.float32)
    g = small @ np.array([0.299, 0.587, 0.114], np.float32)
    g = g - g.mean()
    n = float(np.linalg.norm(g))
    return (g / n if n > 1e-6 else np.zeros_like(g)).ravel().astype(np.float32)


class CentreGrid:
    """Hash grid of keyframe camera centres (cell = ``cell`` metres): neighbours without a full scan."""

    def __init__(self, cell: float) -> None:
        self.cell = float(cell)
        self.cells: dict[tuple[int, int, int], list[int]] = {}

    def _key(self, p: np.ndarray) -> tuple[int, int, int]:
        return tuple(int(math.floor(v / self.cell)) for v in p)  # type: ignore[return-value]

    def add(self, node: int, centre: np.ndarray) -> None:
        self.cells.setdefault(self._key(centre), []).append(node)

    def near(self, centre: np.ndarray) -> list[int]:
        kx, ky, kz = self._key(centre)
        out: list[int] = []
        for dx in (-1, 0, 1):
            for dy in (-1, 0, 1):
                for dz in (-1, 0, 1):
                    out.extend(self.cells.get((kx + dx, ky + dy, kz + dz), ()))
        return out


def _composed_information(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``[6, 6]`` information of two independent measurements composed (their covariances add)."""
    return np.linalg.inv(np.linalg.inv(a + 1e-9 * np.eye(6)) + np.linalg.inv(b + 1e-9 * np.eye(6)))


def _in_view(point: np.ndarray, c2w: np.ndarray, K: np.ndarray, width: int, height: int) -> bool:
    p = np.linalg.inv(c2w)[:3] @ np.append(point, 1.0)
    if p[2] <= 0.05:
        return False
    u, v = K[0, 0] * p[0] / p[2] + K[0, 2], K[1, 1] * p[1] / p[2] + K[1, 2]
    return 0 <= u < width and 0 <= v < height


class LoopCloser:
    """Keyframe store + loop detection + verification + pose-graph optimisation; see the module docstring.

    Args:
        options: :class:`LoopClosureOptions`.
        device: open3d device string of the verification odometry.

    Attributes:
        graph: the keyframe :class:`PoseGraph`.
        keyframes: the stored keyframes, one per node.
        results: every verified candidate (:class:`LoopResult`), accepted or not.
        optimizations: number of global optimisations run.
    """

    def __init__(self, options: LoopClosureOptions | None = None, device: str = "CPU:0") -> None:
        from forward3d.pipelines.tsdf import RGBDTracker, import_open3d

        self.o = options or LoopClosureOptions()
        self._o3d = import_open3d()
        self.tracker = RGBDTracker(depth_max=self.o.depth_max, iterations=(20, 10, 5), refine_iterations=6,
                                   min_fitness=0.0, device=device)
        self.graph = PoseGraph()
        self.keyframes: list[StoredKeyframe] = []
        self.results: list[LoopResult] = []
        self.optimizations = 0
        self.time_s = 0.0
        self._grid = CentreGrid(self.o.radius)
        self._anchor: list[int] = []  # per frame: its keyframe node (-1 before the first)
        self._rel: list[np.ndarray] = []  # per frame: inverse(c2w_keyframe) @ c2w_frame at tracking time
        self._descriptors = np.zeros((0, 768), np.float32)
        self._pending = False  # loop edges added since the last optimisation
        self._since_optimize = 0  # keyframes with new loop edges since the last optimisation
        self._last: tuple[int, np.ndarray] | None = None  # newest keyframe (stored or culled): (node, c2w rel. to it)
        self._links: dict[tuple[int, int], int] = {}  # re-anchoring edges per node pair
        self.reanchored = 0  # culled keyframes re-anchored on the stored keyframe that covers them
        self.reanchor_rejected = 0  # ... whose verification failed (the caller stores them instead)
        self.reanchor_inconsistent = 0  # ... verified on two covers that disagreed (the worse one dropped)

    # ---------------------------------------------------------------------------------------------
    def add_frame(self, c2w: np.ndarray, keyframe: bool, depth: np.ndarray, image: np.ndarray, K: np.ndarray,
                  tracked: bool = True, features: Any = None, anchor: int | None = None,
                  relocalised_on: int | None = None) -> bool:
        """Record frame ``len(self)`` with its tracked ``c2w``; store it as a keyframe when ``keyframe``.

        Args:
            c2w: ``[4, 4]`` tracked pose.
            keyframe: the frame is a keyframe (a tracking reference, with usable depth).
            depth, image, K: the frame (``[H, W]`` metres, ``[H, W, 3]`` uint8, ``[3, 3]``).
            tracked: False when the keyframe was not tracked from the previous keyframe (tracking failed,
                or it was relocalised): the odometry edge into it is then weak.
            features: the keyframe's :class:`~forward3d.pipelines.features.FrameFeatures` (camera-frame
                points: any resolution), for the coarse alignment of its loop candidates; None: none.
            anchor: a non-keyframe follows this keyframe node (default: the node of the newest keyframe,
                or the stored keyframe a culled newest keyframe was re-anchored on, :meth:`add_culled`).
            relocalised_on: the keyframe's pose comes from a relocalisation against this node: the pair
                is verified like a loop candidate and, when it passes, joins the graph as a loop edge.

        Returns:
            True when a loop was closed and past poses changed (read them with :meth:`trajectory`).
        """
        c2w = np.asarray(c2w, np.float64)
        if not keyframe:
            a = (self._last[0] if self._last is not None else -1) if anchor is None else int(anchor)
            self._anchor.append(a)
            self._rel.append(np.eye(4) if a < 0 else np.linalg.inv(self.graph.c2w[a]) @ c2w)
            return False
        ts = time.perf_counter()
        node = self._store(len(self._anchor), c2w, depth, image, K)
        self.keyframes[node].features = features if self.o.features else None
        self._anchor.append(node)
        self._rel.append(np.eye(4))
        if self._last is not None:
            self._odometry_edge(self._last[0], node, tracked)
        self._last = (node, np.eye(4))
        pairs = self.candidates(node)
        if relocalised_on is not None and 0 <= relocalised_on < node:
            pairs = [(int(relocalised_on), "relocalisation")] + [p for p in pairs if p[0] != relocalised_on]
        accepted = [r for r in (self._verify(node, j, kind) for j, kind in pairs) if r.accepted]
        if node > 0:
            self.keyframes[node - 1].prepared = None  # only the newest keyframe keeps its open3d maps
        changed = False
        if accepted:
            self._pending = True
            changed = self._maybe_optimize(max(self._disagreement(r.source, r.target, r.source_to_target)
                                               for r in accepted))
        self.time_s += time.perf_counter() - ts
        return changed

    def add_culled(self, c2w: np.ndarray, covers: list[int], depth: np.ndarray, image: np.ndarray, K: np.ndarray,
                   tracked: bool = True, features: Any = None) -> tuple[bool, np.ndarray | None]:
        """Record frame ``len(self)``, a culled keyframe (not stored) that the stored keyframes ``covers``
        (nodes, nearest first) cover.

        The frame is verified against each cover like a loop candidate (:class:`LoopClosureOptions`
        thresholds, from the current estimate, then from the features). When one passes, the frame is
        re-anchored on the first that passed: its pose is ``c2w_cover @ verified``, and later frames
        follow that node. Edges join the graph (at most ``max_links_per_pair`` per node pair, so the
        graph grows with the map, not with the sequence), as a stored keyframe's loops would:

        - the previous keyframe's node and the cover, when the frame was tracked from that keyframe
          (tracking odometry composed with the verification);
        - two covers that both verified (the two verifications composed).

        Args:
            c2w: ``[4, 4]`` tracked pose; depth, image, K, tracked, features: as :meth:`add_frame`.
            covers: the covering stored keyframes' nodes.

        Returns:
            ``(changed, c2w)``: changed as :meth:`add_frame`; ``c2w`` the re-anchored ``[4, 4]`` pose, or
            None when no verification passed (nothing was recorded: store the frame as a keyframe).
        """
        ts = time.perf_counter()
        c2w = np.asarray(c2w, np.float64)
        d, img, Ks = downsample_rgbd(depth, image, K, self.o.downsample)
        kf = StoredKeyframe(len(self._anchor), -1, d, img, Ks, np.zeros(0, np.float32), 1.0,
                            features=features if self.o.features else None)
        verified: list[tuple[int, np.ndarray, np.ndarray]] = []  # (node, culled -> node, information)
        for c in covers:
            r, info = self._verify_pair(kf, self.keyframes[c], np.linalg.inv(self.graph.c2w[c]) @ c2w, -1, c, "culled")
            if r.accepted:
                verified.append((c, r.source_to_target, info))
        if not verified:
            self.reanchor_rejected += 1
            self.time_s += time.perf_counter() - ts
            log.debug("culled keyframe %d not re-anchored on nodes %s", kf.frame, covers)
            return False, None
        self.reanchored += 1
        if len(verified) > 1 and not self._covers_agree(verified):
            self.reanchor_inconsistent += 1
            # the one nearer the tracked pose (in optimise-threshold units, as _disagreement)
            verified = [min(verified, key=lambda v: self._moved(c2w, self.graph.c2w[v[0]] @ v[1]))]
            log.debug("culled keyframe %d: covers %s disagree; re-anchored on node %d only", kf.frame, covers,
                      verified[0][0])
        cover, T, info = verified[0]  # the edges use the measured T, the anchor the pose from both covers
        rel = T
        if len(verified) > 1:  # weighted by their translation information
            c2, T2, info2 = verified[1]
            w1, w2 = float(np.trace(info[3:, 3:])), float(np.trace(info2[3:, 3:]))
            both = slerp_pose(self.graph.c2w[cover] @ T, self.graph.c2w[c2] @ T2, w2 / max(w1 + w2, 1e-12))
            rel = np.linalg.inv(self.graph.c2w[cover]) @ both
        edges = []
        if tracked and self._last is not None and self._last[0] != cover:
            a = self._last[0]  # w2c_a @ c2w_cover: the tracked pose in a's frame, then back to the cover
            edges.append((cover, a, np.linalg.inv(self.graph.c2w[a]) @ c2w @ np.linalg.inv(T), 0.5 * info))
        for c, T2, info2 in verified[1:]:  # w2c_cover @ c2w_c
            edges.append((c, cover, T @ np.linalg.inv(T2), _composed_information(info, info2)))
        worst = 0.0
        for src, tgt, meas, inf in edges:
            pair = (min(src, tgt), max(src, tgt))
            if self._links.get(pair, 0) >= self.o.max_links_per_pair:
                continue
            self._links[pair] = self._links.get(pair, 0) + 1
            self.graph.add_edge(src, tgt, meas, inf, loop=True)
            self._pending = True
            worst = max(worst, self._disagreement(src, tgt, meas))
        changed = self._maybe_optimize(worst) if edges else False
        self._anchor.append(cover)
        self._rel.append(rel)
        self._last = (cover, rel)
        self.time_s += time.perf_counter() - ts
        return changed, self.graph.c2w[cover] @ rel

    def _covers_agree(self, verified: list[tuple[int, np.ndarray, np.ndarray]]) -> bool:
        """Whether the culled keyframe's poses verified against two covers (``(node, culled -> node,
        information)``) agree within ``max_cover_disagreement`` / ``max_cover_disagreement_deg``."""
        (a, Ta, _), (b, Tb, _) = verified[:2]
        D = np.linalg.inv(self.graph.c2w[a] @ Ta) @ self.graph.c2w[b] @ Tb
        return (float(np.linalg.norm(D[:3, 3])) <= self.o.max_cover_disagreement
                and float(np.degrees(rotation_angle(D[:3, :3]))) <= self.o.max_cover_disagreement_deg)

    def _moved(self, a: np.ndarray, b: np.ndarray) -> float:
        """How far pose ``b`` is from pose ``a`` (``[4, 4]`` c2w), in units of the optimise thresholds."""
        D = np.linalg.inv(a) @ b
        return max(float(np.linalg.norm(D[:3, 3])) / self.o.optimize_translation,
                   float(np.degrees(rotation_angle(D[:3, :3]))) / self.o.optimize_rotation_deg)

    def _maybe_optimize(self, disagreement: float) -> bool:
        """Optimise after new loop edges that disagree ``disagreement`` (:meth:`_disagreement` units) with
        the estimate: at once beyond ``optimize_now``; above 1, once ``optimize_every`` keyframes have
        passed since the last optimisation (else the edges wait for the next one, or :meth:`finish`)."""
        self._since_optimize += 1
        if disagreement > self.o.optimize_now or (disagreement > 1.0 and self._since_optimize >= self.o.optimize_every):
            return self.optimize()
        return False

    def finish(self) -> bool:
        """Optimise once more if loops joined the graph since the last optimisation; True when poses moved."""
        if not self._pending:
            return False
        ts = time.perf_counter()
        changed = self.optimize()
        self.time_s += time.perf_counter() - ts
        return changed

    def _disagreement(self, source: int, target: int, source_to_target: np.ndarray) -> float:
        """How far an edge's measurement is from the current estimate, in units of the optimise thresholds."""
        return self._moved(np.linalg.inv(self.graph.c2w[target]) @ self.graph.c2w[source], source_to_target)

    def __len__(self) -> int:
        return len(self._anchor)

    def trajectory(self) -> np.ndarray:
        """``[N, 4, 4]`` corrected ``c2w`` of every frame so far (keyframe pose @ relative pose)."""
        out = np.empty((len(self._anchor), 4, 4))
        for i, (a, rel) in enumerate(zip(self._anchor, self._rel)):
            out[i] = rel if a < 0 else self.graph.c2w[a] @ rel
        return out

    def keyframe_c2w(self, node: int) -> np.ndarray:
        return self.graph.c2w[node]

    @property
    def loops(self) -> list[LoopResult]:
        """The accepted loop closures still in the graph."""
        kept = {(e.source, e.target) for e in self.graph.loop_edges}
        return [r for r in self.results if r.accepted and (r.source, r.target) in kept]

    # ---------------------------------------------------------------------------------------------
    def _store(self, frame: int, c2w: np.ndarray, depth: np.ndarray, image: np.ndarray, K: np.ndarray) -> int:
        d, img, Ks = downsample_rgbd(depth, image, K, self.o.downsample)
        valid = d[d > 0]
        node = self.graph.add_node(c2w)
        self.keyframes.append(StoredKeyframe(frame, node, d, img, Ks, thumbnail_descriptor(img),
                                             float(np.median(valid)) if len(valid) else 1.0))
        self._descriptors = np.concatenate([self._descriptors, self.keyframes[-1].descriptor[None]])
        self._grid.add(node, c2w[:3, 3])
        return node

    def _prepared(self, kf: StoredKeyframe, keep: bool = False):
        if kf.prepared is not None:
            return kf.prepared
        prepared = self.tracker.prepare(kf.depth, kf.image, kf.K)
        if keep:
            kf.prepared = prepared
        return prepared

    def _information(self, src: StoredKeyframe, tgt: StoredKeyframe, T: np.ndarray, full: bool = False) -> np.ndarray:
        """``[6, 6]`` information of the pair at ``T`` (source -> target): open3d's odometry information
        with the rotation-translation coupling blocks dropped.

        Measured on the synthetic room (110 frames, 1 loop, ground-truth loop edges): with open3d's full
        matrix the optimised keyframe ATE got worse (0.81 -> 1.05 cm), block-diagonal it halves (0.39 cm);
        the coupling (lever arm of the points about the camera) does not match the frame in which
        open3d's pose graph linearises the edge error.
        """
        from forward3d.pipelines.tsdf import _tensor, open3d_odometry_K

        o3d = self._o3d
        dev = self.tracker.device
        info = o3d.t.pipelines.odometry.compute_odometry_information_matrix(
            o3d.t.geometry.Image(_tensor(src.depth, device=dev)), o3d.t.geometry.Image(_tensor(tgt.depth, device=dev)),
            _tensor(open3d_odometry_K(src.K), o3d.core.float64), _tensor(T, o3d.core.float64),
            self.o.max_correspondence_distance, 1.0, self.o.depth_max)
        info = info.cpu().numpy().astype(np.float64)
        if full:
            return info
        info[:3, 3:] = 0.0
        info[3:, :3] = 0.0
        return info

    def _odometry_edge(self, a: int, b: int, tracked: bool) -> None:
        """Edge from keyframe ``b`` to keyframe ``a`` (the previous one) from the tracked poses."""
        T = np.linalg.inv(self.graph.c2w[a]) @ self.graph.c2w[b]
        info = self._information(self.keyframes[b], self.keyframes[a], T)
        if not tracked or info[5, 5] < 10:  # tracking failed into b: a weak link that loops can bend
            info = 1e-2 * np.eye(6)
        self.graph.add_edge(b, a, T, info)

    def candidates(self, node: int) -> list[tuple[int, str]]:
        """Older keyframes to verify against keyframe ``node``: ``[(node, "place" | "appearance")]``."""
        o = self.o
        kf = self.keyframes[node]
        c2w = self.graph.c2w[node]
        h, w = kf.depth.shape
        newest = node - o.min_gap
        if newest < 0:
            return []
        view = c2w[:3, 3] + kf.median_depth * c2w[:3, 2]
        place: list[tuple[float, int]] = []
        for j in self._grid.near(c2w[:3, 3]):
            if j > newest:
                continue
            cj = self.graph.c2w[j]
            dist = float(np.linalg.norm(cj[:3, 3] - c2w[:3, 3]))
            if dist > o.radius or float(np.degrees(rotation_angle(cj[:3, :3].T @ c2w[:3, :3]))) > o.max_angle_deg:
                continue
            kj = self.keyframes[j]
            view_j = cj[:3, 3] + kj.median_depth * cj[:3, 2]
            if _in_view(view, cj, kj.K, w, h) and _in_view(view_j, c2w, kf.K, w, h):
                place.append((dist, j))
        out = [(j, "place") for _, j in sorted(place)[:o.max_candidates]]
        if len(out) < o.max_candidates and newest >= 0:
            corr = self._descriptors[:newest + 1] @ kf.descriptor
            taken = {j for j, _ in out}
            for j in np.argsort(-corr):
                if len(out) >= o.max_candidates or corr[j] < o.min_appearance:
                    break
                if int(j) not in taken:
                    out.append((int(j), "appearance"))
        return out

    def propose(self, source: int, target: int, init_source_to_target: np.ndarray | None = None,
                kind: str = "manual") -> LoopResult:
        """Verify a loop between keyframe nodes ``source`` and ``target`` (``init``: the guess of
        ``w2c_target @ c2w_source``, default from the current estimate); optimise when it is accepted."""
        r = self._verify(source, target, kind, init_source_to_target)
        if r.accepted:
            self.optimize()
        return r

    def _verify(self, source: int, target: int, kind: str, init: np.ndarray | None = None) -> LoopResult:
        """Verify one candidate pair of nodes (:meth:`_verify_pair`); an accepted one joins the graph."""
        est = np.linalg.inv(self.graph.c2w[target]) @ self.graph.c2w[source] if init is None else np.asarray(init, np.float64)
        best, info = self._verify_pair(self.keyframes[source], self.keyframes[target], est, source, target, kind)
        if best.accepted:
            self.graph.add_edge(source, target, best.source_to_target, info, loop=True)
        self.results.append(best)
        return best

    def _verify_pair(self, src: StoredKeyframe, tgt: StoredKeyframe, est: np.ndarray, source: int, target: int,
                     kind: str) -> tuple[LoopResult, np.ndarray | None]:
        """Verify ``src -> tgt`` from ``est`` (``[4, 4]`` guess of ``w2c_tgt @ c2w_src``) and, when that fails
        and both have features that disagree with it, from the features' pose; returns the result and the
        ``[6, 6]`` information of an accepted one."""
        best, info = self._check(src, tgt, source, target, kind, est)
        if not best.accepted and self.o.features and src.features is not None and tgt.features is not None:
            from forward3d.pipelines.features import align_features

            fa = align_features(src.features, tgt.features)
            if fa.ok:
                d = np.linalg.inv(est) @ fa.src_to_tgt
                dt, dr = float(np.linalg.norm(d[:3, 3])), float(np.degrees(rotation_angle(d[:3, :3])))
                if (0.01 < dt or 1.0 < dr) and dt <= self.o.max_feature_correction and dr <= self.o.max_feature_correction_deg:
                    r, i2 = self._check(src, tgt, source, target, kind, fa.src_to_tgt)
                    r.init = "features"
                    if r.accepted:
                        best, info = r, i2
        log.debug("loop %d -> %d (%s, from the %s): %s fitness %.2f rmse %.4f info %.1f %s", source, target, kind,
                  best.init, "accepted" if best.accepted else "rejected", best.fitness, best.rmse, best.information,
                  best.reason)
        return best, info

    def _check(self, src: StoredKeyframe, tgt: StoredKeyframe, source: int, target: int, kind: str,
               init: np.ndarray) -> tuple[LoopResult, np.ndarray | None]:
        """Odometry of the pair from ``init`` and the acceptance tests: the result and, when it is
        accepted, the ``[6, 6]`` information of its graph edge."""
        o = self.o
        newest = source == len(self.keyframes) - 1
        res = self.tracker.align(self._prepared(src, keep=newest), self._prepared(tgt), init)
        T = res.src_to_tgt
        r = LoopResult(source, target, kind, False, T, res.fitness, res.rmse)
        info = None
        if not o.verify:  # diagnostics: the candidate is trusted (the odometry's result, else the guess)
            r.accepted = True
            r.source_to_target = T if res.ok else init
            info = self._information(src, tgt, r.source_to_target)
        elif not res.ok or not np.isfinite(res.rmse):
            r.reason = res.reason or "odometry failed"
        else:
            full = self._information(src, tgt, T, full=True)
            r.information = float(np.linalg.eigvalsh(full)[0]) * 1000.0 / src.depth.size
            block = full.copy()
            block[:3, 3:] = 0.0  # see _information
            block[3:, :3] = 0.0
            delta = np.linalg.inv(init) @ T
            dt, dr = float(np.linalg.norm(delta[:3, 3])), float(np.degrees(rotation_angle(delta[:3, :3])))
            if res.fitness < o.min_fitness:
                r.reason = f"fitness {res.fitness:.2f} < {o.min_fitness:.2f}"
            elif res.rmse > o.max_rmse:
                r.reason = f"rmse {res.rmse * 1000:.1f} mm > {o.max_rmse * 1000:.1f} mm"
            elif r.information < o.min_information:
                r.reason = f"information {r.information:.1f} < {o.min_information:.1f}"
            elif dt > o.max_correction or dr > o.max_correction_deg:
                r.reason = f"correction {dt * 100:.1f} cm / {dr:.1f} deg too large"
            else:
                r.accepted = True
                info = block
        return r, info

    def optimize(self) -> bool:
        """Run the robust global optimisation; returns True when poses moved."""
        res = self.graph.optimize(self.o.max_correspondence_distance, self.o.edge_prune_threshold)
        self.optimizations += 1
        self._pending = False
        self._since_optimize = 0
        if res.loops_pruned:
            log.info("loop closure: the optimisation dropped %d inconsistent loop(s)", res.loops_pruned)
        self._grid = CentreGrid(self.o.radius)
        for n, T in enumerate(self.graph.c2w):
            self._grid.add(n, T[:3, 3])
        return res.moved_max > 0.0

    def rebuild(self, make_volume: Callable[[], Any], progress: bool = False):
        """A new TSDF (``make_volume()``) with every stored keyframe fused at its corrected pose."""
        from forward3d.progress import progress_bar

        volume = make_volume()
        with progress_bar(len(self.keyframes), "re-fusing keyframes", unit="kf", enabled=progress) as bar:
            for kf in self.keyframes:
                volume.integrate(kf.depth, kf.image, kf.K, self.graph.c2w[kf.node])
                bar.update(1)
        return volume

    def stats(self) -> dict[str, Any]:
        """Summary for a reconstruction's metadata."""
        loops = self.loops
        return {"keyframes": len(self.keyframes), "candidates": len(self.results),
                "accepted": sum(r.accepted for r in self.results), "kept": len(loops),
                "rejected": sum(not r.accepted for r in self.results), "optimizations": self.optimizations,
                "time_s": self.time_s, "loops": [r.summary() for r in loops],
                "reanchored": self.reanchored, "reanchor_rejected": self.reanchor_rejected,
                "reanchor_inconsistent": self.reanchor_inconsistent,
                "reanchor_edges": sum(self._links.values()),
                "keyframe_store_mb": sum(k.depth.nbytes + k.image.nbytes for k in self.keyframes) / 2**20}

