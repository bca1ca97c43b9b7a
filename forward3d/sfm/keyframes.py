"""Cheap per-frame image statistics for structure from motion: sharpness, image motion, global descriptors.

Everything here works on small grey thumbnails (``[h, w]`` float32 in [0, 1]) so that a long video costs
little before any SIFT runs:

- :func:`sharpness`: variance of the Laplacian (blur makes it small);
- :func:`image_shift`: the dominant 2D translation between two thumbnails by phase correlation, and the
  height of the correlation peak (low = little overlap);
- :func:`select_keyframes`: a new keyframe once the content moved ``min_parallax`` of the image width
  since the last keyframe, choosing the sharpest frame of a short window;
- :func:`global_descriptors` / :func:`loop_pairs`: a tiny zero-mean, unit-norm thumbnail per image and the
  most similar earlier non-neighbour images (loop-closure candidates for sequential matching, without a
  vocabulary tree).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["FrameStats", "thumbnail", "sharpness", "image_shift", "frame_stats", "select_keyframes",
           "global_descriptors", "loop_pairs", "sequential_pairs", "exhaustive_pairs"]

THUMB_WIDTH = 128
_DESC_SIZE = (32, 24)


def thumbnail(image: np.ndarray, width: int = THUMB_WIDTH) -> np.ndarray:
    """``[H, W, 3]`` uint8 RGB -> ``[h, width]`` float32 grey in [0, 1] (area averaging, aspect kept)."""
    from PIL import Image

    h = max(1, round(image.shape[0] * width / image.shape[1]))
    grey = Image.fromarray(np.ascontiguousarray(image)).convert("L").resize((width, h), Image.BOX)
    return np.asarray(grey, np.float32) / 255.0


def sharpness(grey: np.ndarray) -> float:
    """Variance of the 4-neighbour Laplacian of ``[h, w]`` grey (higher = sharper)."""
    g = np.asarray(grey, np.float32)
    if g.shape[0] < 3 or g.shape[1] < 3:
        return 0.0
    lap = g[1:-1, :-2] + g[1:-1, 2:] + g[:-2, 1:-1] + g[2:, 1:-1] - 4.0 * g[1:-1, 1:-1]
    return float(lap.var())


def _window(h: int, w: int) -> np.ndarray:
    return np.outer(np.hanning(h), np.hanning(w)).astype(np.float32)


def image_shift(a: np.ndarray, b: np.ndarray) -> tuple[float, float, float]:
    """Phase correlation of two ``[h, w]`` thumbnails: ``(dx, dy, peak)``, the translation (pixels) that
    maps ``a`` onto ``b`` and the normalised correlation peak in [0, 1] (1 = same content shifted, ~0 =
    no common content)."""
    if a.shape != b.shape:
        raise ValueError(f"image_shift: expected two thumbnails of one size, found {a.shape} and {b.shape}")
    win = _window(*a.shape)
    fa = np.fft.rfft2((a - a.mean()) * win)
    fb = np.fft.rfft2((b - b.mean()) * win)
    cross = fb * np.conj(fa)
    cross /= np.maximum(np.abs(cross), 1e-12)
    corr = np.fft.irfft2(cross, s=a.shape)
    k = int(np.argmax(corr))
    y, x = divmod(k, a.shape[1])
    h, w = a.shape
    dy = y - h if y > h // 2 else y
    dx = x - w if x > w // 2 else x
    return float(dx), float(dy), float(corr.flat[k])


@dataclass
class FrameStats:
    """Per-frame statistics of a sequence (index i = the i-th input frame).

    Attributes:
        thumbs: N ``[h, w]`` float32 grey thumbnails.
        sharpness: ``[N]`` variance of the Laplacian of the thumbnails at twice the size.
        contrast: ``[N]`` standard deviation of the grey thumbnail (0 = a uniform image).
    """

    thumbs: list[np.ndarray]
    sharpness: np.ndarray
    contrast: np.ndarray

    def __len__(self) -> int:
        return len(self.thumbs)


def frame_stats(images) -> FrameStats:
    """:class:`FrameStats` of an iterable of ``[H, W, 3]`` uint8 images."""
    thumbs, sharp, contrast = [], [], []
    for image in images:
        big = thumbnail(image, 2 * THUMB_WIDTH)
        sharp.append(sharpness(big))
        t = thumbnail(image)
        thumbs.append(t)
        contrast.append(float(t.std()))
    return FrameStats(thumbs, np.asarray(sharp, np.float64), np.asarray(contrast, np.float64))


def _parallax(a: np.ndarray, b: np.ndarray, min_peak: float = 0.05) -> float:
    """Image motion from ``a`` to ``b`` as a fraction of the width (inf when the overlap is too small
    for phase correlation to see it)."""
    dx, dy, peak = image_shift(a, b)
    if peak < min_peak:
        return math.inf
    return math.hypot(dx, dy) / a.shape[1]


def select_keyframes(stats: FrameStats, min_parallax: float, window: int = 4, min_contrast: float = 0.01) -> list[int]:
    """Indices of keyframes: the sharpest frame of the first ``window``, then, each time the content moved
    ``min_parallax`` of the width since the last keyframe, the sharpest of the next ``window`` frames.
    Frames with contrast below ``min_contrast`` (uniform images) are never chosen. Sorted, unique."""
    n = len(stats)
    usable = stats.contrast >= min_contrast

    def sharpest(lo: int, hi: int) -> int | None:
        cand = [j for j in range(lo, min(n, hi)) if usable[j]]
        return max(cand, key=lambda j: stats.sharpness[j]) if cand else None

    first = sharpest(0, window)
    if first is None:
        first = next((j for j in range(n) if usable[j]), None)
    if first is None:
        return []
    keys = [first]
    i = first + 1
    while i < n:
        if usable[i] and _parallax(stats.thumbs[keys[-1]], stats.thumbs[i]) >= min_parallax:
            j = sharpest(i, i + window)
            keys.append(j if j is not None else i)
            i = keys[-1] + 1
        else:
            i += 1
    if keys[-1] < n - 1:  # the end of the sequence: a keyframe when it moved at least half the threshold
        last = sharpest(n - window, n)
        if last is not None and last > keys[-1] and \
                _parallax(stats.thumbs[keys[-1]], stats.thumbs[last]) >= 0.5 * min_parallax:
            keys.append(last)
    return sorted(set(keys))


def global_descriptors(thumbs: list[np.ndarray]) -> np.ndarray:
    """``[N, 32 * 24]`` float32 zero-mean, unit-norm tiny thumbnails (a cheap global image descriptor)."""
    from PIL import Image

    out = np.zeros((len(thumbs), _DESC_SIZE[0] * _DESC_SIZE[1]), np.float32)
    for i, t in enumerate(thumbs):
        small = np.array(Image.fromarray(t).resize(_DESC_SIZE, Image.BOX), np.float32).reshape(-1)
        small -= small.mean()
        out[i] = small / max(float(np.linalg.norm(small)), 1e-12)
    return out


def sequential_pairs(n: int, overlap: int) -> set[tuple[int, int]]:
    """``(i, j)`` with ``0 < j - i <= overlap``."""
    return {(i, j) for i in range(n) for j in range(i + 1, min(n, i + overlap + 1))}


def exhaustive_pairs(n: int) -> set[tuple[int, int]]:
    """All ``(i, j)`` with ``i < j``."""
    return {(i, j) for i in range(n) for j in range(i + 1, n)}


def loop_pairs(desc: np.ndarray, overlap: int, per_image: int, min_similarity: float = 0.5) -> set[tuple[int, int]]:
    """Loop-closure candidates: for each image ``j``, the ``per_image`` earlier images ``i < j - overlap``
    whose descriptors (``[N, D]`` unit norm) have the highest cosine similarity, if above ``min_similarity``."""
    pairs: set[tuple[int, int]] = set()
    if per_image <= 0:
        return pairs
    sim = desc @ desc.T
    for j in range(len(desc)):
        earlier = np.arange(0, max(0, j - overlap))
        if len(earlier) == 0:
            continue
        s = sim[j, earlier]
        for k in np.argsort(-s)[:per_image]:
            if s[k] >= min_similarity:
                pairs.add((int(earlier[k]), j))
    return pairs
