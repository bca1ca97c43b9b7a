"""Sparse feature alignment of RGB-D frames: ORB keypoints lifted with depth, RANSAC rigid 3D-3D.

The dense RGB-D odometry of :mod:`forward3d.pipelines.tsdf` converges from a few centimetres and
degrees; hand-held real sequences move farther between frames (hololens_000: 8 cm / 4 degrees per
frame, up to 16 cm / 13 degrees). Feature matches do not need an initial guess: they give the
coarse pose that the dense refinement starts from (tracking), verify a relocalisation or pre-align a
loop candidate whose drift is beyond the odometry's basin.

- :func:`extract_features`: ORB (OpenCV, ``pip install forward3d[opencv]``) keypoints of the grey
  image, kept where the depth is valid, lifted to camera-frame points (:class:`FrameFeatures`, a few
  tens of KB per frame: keypoints, 32-byte descriptors, 3D points).
- :func:`align_features`: brute-force Hamming matching with Lowe's ratio test and a mutual check,
  then :func:`~forward3d.geometry.align.umeyama_ransac` (SE(3)) on the lifted matches
  (:class:`FeatureAlignment`: ``source -> target`` transform, inliers, RMSE).
- :class:`KeyframeIndex`: the keyframes' features and thumbnail descriptors, queried by appearance
  (relocalisation after tracking is lost), bounded in memory per keyframe.

Example::

    a = extract_features(image_a, depth_a, K)
    b = extract_features(image_b, depth_b, K)
    res = align_features(b, a)          # b's camera -> a's camera
    if res.ok:
        init = res.src_to_tgt           # initial guess for RGBDTracker.align(prep_b, prep_a, init)
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

from forward3d.geometry.align import umeyama_ransac
from forward3d.geometry.camera import unproject

__all__ = ["FrameFeatures", "FeatureAlignment", "KeyframeIndex", "Relocaliser", "extract_features", "align_features"]

log = logging.getLogger(__name__)


def _cv2():
    try:
        import cv2
    except ImportError as exc:
        raise ImportError("feature tracking / relocalisation of the rgbd back-end needs OpenCV: "
                          "pip install forward3d[opencv] (or set --no-feature-tracking)") from exc
    return cv2


@dataclass
class FrameFeatures:
    """ORB features of one RGB-D frame.

    Attributes:
        uv: ``[N, 2]`` float32 pixel positions (pixel centres at +0.5).
        descriptors: ``[N, 32]`` uint8 ORB descriptors.
        points: ``[N, 3]`` float32 camera-frame points (metres) at the keypoints' depth; NaN rows for
            keypoints without usable depth (they still serve as the 2D side of a PnP match). The
            keypoints with depth come first.
        K: ``[3, 3]`` intrinsics of ``uv`` (needed for PnP), or None.
    """

    uv: np.ndarray
    descriptors: np.ndarray
    points: np.ndarray
    K: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.uv)

    @property
    def has_depth(self) -> np.ndarray:
        """``[N]`` bool: the keypoint has a 3D point."""
        return np.isfinite(self.points).all(1)

    def head(self, k: int) -> "FrameFeatures":
        """A copy of the first ``k`` keypoints (those with depth first)."""
        return FrameFeatures(self.uv[:k].copy(), self.descriptors[:k].copy(), self.points[:k].copy(),
                             None if self.K is None else self.K.copy())

    @property
    def nbytes(self) -> int:
        return self.uv.nbytes + self.descriptors.nbytes + self.points.nbytes


@dataclass
class FeatureAlignment:
    """Outcome of :func:`align_features`.

    Attributes:
        ok: enough matches and RANSAC inliers (``min_inliers``, ``min_inlier_ratio``).
        src_to_tgt: ``[4, 4]`` source-camera -> target-camera transform (identity when not ok).
        matches: number of putative matches (ratio + mutual test; with ``method="pnp"`` those whose
            target keypoint has depth).
        inliers: number of RANSAC inliers.
        rmse: inlier 3D residual RMSE (metres; inliers with depth on both sides, inf when none).
        reason: why it failed, "" when ok.
        method: ``"3d"`` (rigid 3D-3D RANSAC) or ``"pnp"`` (target 3D points, source pixels).
        depth_inliers: inliers whose source point (its own depth) also lies within the 3D threshold of
            the target's point: all of them for ``"3d"``; for ``"pnp"`` how far the frame's depth agrees.
    """

    ok: bool
    src_to_tgt: np.ndarray = field(default_factory=lambda: np.eye(4))
    matches: int = 0
    inliers: int = 0
    rmse: float = float("inf")
    reason: str = ""
    method: str = "3d"
    depth_inliers: int = 0


def extract_features(image: np.ndarray, depth: np.ndarray, K: np.ndarray, num_features: int = 1000,
                     depth_max: float = 4.0, keep_2d: bool = False) -> FrameFeatures:
    """ORB features of ``image`` ``[H, W, 3]`` uint8, lifted where ``depth`` ``[H, W]`` (metres, 0 invalid)
    is valid and below ``depth_max``; ``K`` ``[3, 3]``. Keypoints on depth edges (a valid neighbour more
    than 5 % away) or beside a hole get no point: their lifted point is unreliable.

    ``keep_2d``: keep the keypoints without a point too (NaN points, after those with one), for PnP
    (:func:`align_features`); on real sensors most ORB keypoints can lie where the depth is missing
    (hololens_000: about 75 %). Otherwise they are dropped.
    """
    cv2 = _cv2()
    img = np.ascontiguousarray(np.asarray(image, np.uint8))
    grey = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY) if img.ndim == 3 else img
    orb = cv2.ORB_create(nfeatures=int(num_features), scaleFactor=1.2, nlevels=6, edgeThreshold=15,
                         patchSize=15, fastThreshold=10)
    kps, desc = orb.detectAndCompute(grey, None)
    empty = FrameFeatures(np.zeros((0, 2), np.float32), np.zeros((0, 32), np.uint8), np.zeros((0, 3), np.float32))
    if not kps or desc is None:
        return empty
    pts = np.array([k.pt for k in kps], np.float64)
    d = np.asarray(depth, np.float32)
    h, w = d.shape
    c = np.clip(np.round(pts).astype(int), 1, [w - 2, h - 2])
    z = d[c[:, 1], c[:, 0]]
    nb = np.stack([d[c[:, 1] + dy, c[:, 0] + dx] for dy in (-1, 0, 1) for dx in (-1, 0, 1)], -1)
    ok = (z > 0) & (z <= depth_max) & (nb.min(-1) > 0) & (nb.max(-1) - nb.min(-1) <= 0.05 * z)
    K = np.asarray(K, np.float64)
    order = np.concatenate([np.flatnonzero(ok), np.flatnonzero(~ok) if keep_2d else np.zeros(0, int)])
    if not len(order):
        return FrameFeatures(empty.uv, empty.descriptors, empty.points, K)
    uv = pts[order] + 0.5  # OpenCV's keypoints have pixel centres at integers
    xyz = np.full((len(order), 3), np.nan)
    n = int(ok.sum())
    xyz[:n] = unproject(uv[:n], z[order[:n]].astype(np.float64), K)
    return FrameFeatures(uv.astype(np.float32), np.ascontiguousarray(desc[order]), xyz.astype(np.float32), K)


def _match(src: FrameFeatures, tgt: FrameFeatures, ratio: float) -> np.ndarray:
    """``[M, 2]`` (source, target) indices: ratio test on the 2 nearest (Hamming) + mutual nearest."""
    cv2 = _cv2()
    if len(src) < 2 or len(tgt) < 2:
        return np.zeros((0, 2), int)
    bf = cv2.BFMatcher(cv2.NORM_HAMMING)
    fwd = bf.knnMatch(src.descriptors, tgt.descriptors, k=2)
    cand = np.array([(p[0].queryIdx, p[0].trainIdx) for p in fwd
                     if len(p) == 2 and p[0].distance < ratio * p[1].distance], int).reshape(-1, 2)
    if not len(cand):
        return cand
    # mutual check: only the targets that passed the ratio test are matched back
    targets = np.unique(cand[:, 1])
    nearest = np.full(len(tgt), -1)
    for m in bf.match(tgt.descriptors[targets], src.descriptors):
        nearest[targets[m.queryIdx]] = m.trainIdx
    return cand[nearest[cand[:, 1]] == cand[:, 0]]


def align_features(src: FrameFeatures, tgt: FrameFeatures, threshold: float = 0.03, min_inliers: int = 20,
                   min_inlier_ratio: float = 0.3, ratio: float = 0.8, iters: int = 300,
                   pnp_threshold: float | None = 3.0) -> FeatureAlignment:
    """Rigid ``source -> target`` camera transform from feature matches (no initial guess needed).

    Matches with depth on both sides go to a rigid 3D-3D RANSAC (seeded: deterministic). When that
    fails and ``pnp_threshold`` is set, the matches whose target keypoint has depth go to PnP RANSAC
    (the target's 3D points against the source's pixels, OpenCV, seeded): it needs no source depth,
    and its pixel threshold scales with depth (far points are not outliers of a metric threshold).

    Args:
        src, tgt: :class:`FrameFeatures` of the two frames (PnP needs ``src.K``).
        threshold: 3D RANSAC inlier distance in metres (after the transform).
        min_inliers, min_inlier_ratio: acceptance: at least this many inliers and this fraction of
            the putative matches (a wrong pose rarely gathers many consistent matches).
        ratio: Lowe's ratio test.
        iters: RANSAC samples.
        pnp_threshold: PnP inlier reprojection error in pixels; None: no PnP fallback.
    """
    s3, t3 = np.flatnonzero(src.has_depth), np.flatnonzero(tgt.has_depth)
    src3, tgt3 = _select(src, s3), _select(tgt, t3)
    m = _match(src3, tgt3, ratio)  # keypoints with depth only: fewer distractors for the ratio test
    res = _align_3d(src3, tgt3, m, threshold, min_inliers, min_inlier_ratio, iters)
    if res.ok or pnp_threshold is None or src.K is None or len(s3) == len(src):
        return res
    m = _match(src, tgt3, ratio)
    pnp = _align_pnp(src, tgt3, m, float(pnp_threshold), min_inliers, min_inlier_ratio, iters, threshold)
    if pnp.ok:
        return pnp
    pnp.reason = f"3D: {res.reason}; PnP: {pnp.reason}"
    return pnp


def _select(f: FrameFeatures, idx: np.ndarray) -> FrameFeatures:
    return f if len(idx) == len(f) else FrameFeatures(f.uv[idx], f.descriptors[idx], f.points[idx], f.K)


def _align_3d(src: FrameFeatures, tgt: FrameFeatures, m: np.ndarray, threshold: float, min_inliers: int,
              min_inlier_ratio: float, iters: int) -> FeatureAlignment:
    if len(m) < max(3, min_inliers):
        return FeatureAlignment(False, matches=len(m), reason=f"{len(m)} feature matches < {min_inliers}")
    a, b = src.points[m[:, 0]].astype(np.float64), tgt.points[m[:, 1]].astype(np.float64)
    try:
        _, R, t, inl = umeyama_ransac(a, b, threshold, iters=iters, with_scale=False, seed=0, confidence=0.9999)
    except ValueError as exc:
        return FeatureAlignment(False, matches=len(m), reason=f"RANSAC: {exc}")
    n = int(inl.sum())
    T = np.eye(4)
    T[:3, :3], T[:3, 3] = R, t
    rmse = float(np.sqrt(np.mean(((a[inl] @ R.T + t - b[inl]) ** 2).sum(1)))) if n else float("inf")
    if n < min_inliers or n < min_inlier_ratio * len(m):
        return FeatureAlignment(False, T, len(m), n, rmse,
                                reason=f"{n} RANSAC inliers of {len(m)} matches (need {min_inliers} and "
                                       f"{100 * min_inlier_ratio:.0f} %)")
    return FeatureAlignment(True, T, len(m), n, rmse, depth_inliers=n)


def _align_pnp(src: FrameFeatures, tgt: FrameFeatures, m: np.ndarray, threshold: float, min_inliers: int,
               min_inlier_ratio: float, iters: int, threshold_3d: float = 0.03) -> FeatureAlignment:
    """PnP of the target's 3D points against the source's pixels: the source camera in the target frame."""
    from forward3d.geometry.pnp import reprojection_errors, solve_pnp_ransac

    if len(m) < max(4, min_inliers):
        return FeatureAlignment(False, matches=len(m), reason=f"{len(m)} matches with target depth < {min_inliers}",
                                method="pnp")
    X = tgt.points[m[:, 1]].astype(np.float64)
    uv = src.uv[m[:, 0]].astype(np.float64)
    r = solve_pnp_ransac(X, uv, src.K, threshold=threshold, iters=max(iters, 100), confidence=0.999)
    if not r.ok:
        return FeatureAlignment(False, matches=len(m), reason="PnP RANSAC found no pose", method="pnp")
    inl = reprojection_errors(X, uv, src.K, r.c2w) < threshold
    n = int(inl.sum())
    T = r.c2w
    both = inl & src.has_depth[m[:, 0]]
    a = src.points[m[both, 0]].astype(np.float64)
    r2 = ((a @ T[:3, :3].T + T[:3, 3] - X[both]) ** 2).sum(1)
    rmse = float(np.sqrt(np.mean(r2))) if both.any() else float("inf")
    agree = int((r2 < threshold_3d**2).sum())
    if n < min_inliers or n < min_inlier_ratio * len(m):
        return FeatureAlignment(False, T, len(m), n, rmse, method="pnp", depth_inliers=agree,
                                reason=f"{n} PnP inliers of {len(m)} matches (need {min_inliers} and "
                                       f"{100 * min_inlier_ratio:.0f} %)")
    return FeatureAlignment(True, T, len(m), n, rmse, method="pnp", depth_inliers=agree)


class KeyframeIndex:
    """Keyframes for relocalisation: features + a thumbnail descriptor each, queried by appearance.

    Holds only ``FrameFeatures`` (``max_features`` per keyframe) and a 768-float descriptor per
    keyframe: no images, no depth. Poses are not stored (they change when loops close): a query
    returns frame indices, and the caller looks their current poses up.

    Args:
        max_features: features kept per keyframe (the strongest ORB responses come first).
    """

    def __init__(self, max_features: int = 500) -> None:
        self.max_features = int(max_features)
        self.frames: list[int] = []
        self.features: list[FrameFeatures] = []
        self._desc = np.zeros((0, 768), np.float32)

    def __len__(self) -> int:
        return len(self.frames)

    def add(self, frame: int, features: FrameFeatures, descriptor: np.ndarray) -> None:
        """Store keyframe ``frame`` (its features and its thumbnail descriptor ``[768]``)."""
        k = self.max_features
        self.frames.append(int(frame))
        self.features.append(features.head(k))
        self._desc = np.concatenate([self._desc, np.asarray(descriptor, np.float32)[None]])

    def query(self, descriptor: np.ndarray, k: int = 5) -> list[int]:
        """Positions (into :attr:`frames`) of the ``k`` keyframes whose thumbnail correlates best."""
        if not len(self.frames):
            return []
        corr = self._desc @ np.asarray(descriptor, np.float32)
        return [int(j) for j in np.argsort(-corr)[:k]]

    @property
    def nbytes(self) -> int:
        return self._desc.nbytes + sum(f.nbytes for f in self.features)


class Relocaliser:
    """Relocalisation after lost tracking: keyframes by appearance, features + RANSAC, ICP against the model.

    The frame's thumbnail descriptor picks ``candidates`` keyframes of the :class:`KeyframeIndex`
    (and the two newest keyframes are always tried);
    the one with the most RANSAC inliers (:func:`align_features`, at least ``min_inliers``) gives a
    pose, which is accepted only when point-to-plane ICP of the frame's depth against the fused
    surface (:class:`~forward3d.pipelines.tsdf.ModelTracker`) converges near it with enough overlap.

    Args:
        index: the keyframes.
        candidates: keyframes tried per relocalisation.
        min_inliers: feature inliers needed.
        min_fitness, max_rmse: ICP acceptance (inlier fraction, inlier RMSE in metres).
        depth_max: depth beyond this is not used (metres).
        device: open3d device string.
    """

    def __init__(self, index: KeyframeIndex, candidates: int = 5, min_inliers: int = 30, min_fitness: float = 0.5,
                 max_rmse: float = 0.02, depth_max: float = 4.0, device: str = "CPU:0") -> None:
        from forward3d.pipelines.tsdf import ModelTracker

        self.index = index
        self.candidates = int(candidates)
        self.min_inliers = int(min_inliers)
        self.model = ModelTracker(depth_max=depth_max, min_fitness=min_fitness, max_rmse=max_rmse,
                                  max_translation=0.1, max_rotation_deg=6.0, device=device)
        self._refreshed_at = -1

    def relocalise(self, features: FrameFeatures, descriptor: np.ndarray, depth: np.ndarray, K: np.ndarray,
                   pose_of, volume, weight_threshold: float = 1.0) -> tuple[np.ndarray | None, int, str]:
        """Pose of a frame whose tracking is lost, or None.

        Args:
            features, descriptor: the frame's :class:`FrameFeatures` and thumbnail descriptor ``[768]``.
            depth, K: its depth ``[H, W]`` (metres, 0 invalid) and intrinsics ``[3, 3]``.
            pose_of: ``frame index -> [4, 4] c2w`` (the keyframes' current poses).
            volume: the :class:`~forward3d.pipelines.tsdf.TSDFVolume` fused so far (the ICP model).
            weight_threshold: surface weight threshold of the model.

        Returns:
            ``(c2w or None, keyframe frame index or -1, reason)``: ``reason`` says why it failed.
        """
        best: tuple[int, FeatureAlignment] | None = None
        recent = list(range(max(0, len(self.index) - 2), len(self.index)))  # the last keyframes: short losses
        for j in dict.fromkeys(recent + self.index.query(descriptor, self.candidates)):
            fa = align_features(features, self.index.features[j], min_inliers=self.min_inliers)
            if fa.ok and (best is None or fa.inliers > best[1].inliers):
                best = (j, fa)
        if best is None:
            return None, -1, f"no keyframe matched by features (of {min(self.candidates, len(self.index))} tried)"
        frame = self.index.frames[best[0]]
        guess = np.asarray(pose_of(frame), np.float64) @ best[1].src_to_tgt
        if volume.num_integrated != self._refreshed_at:
            self.model.refresh(volume, weight_threshold)
            self._refreshed_at = volume.num_integrated
        res = self.model.refine(depth, K, guess)
        if not res.ok:
            return None, frame, f"keyframe {frame} matched ({best[1].inliers} inliers) but ICP against the model failed ({res.reason})"
        return res.src_to_tgt, frame, ""
