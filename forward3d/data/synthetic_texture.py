"""Procedural textures for the synthetic scene (:mod:`forward3d.data.synthetic`).

Every surface gets its own palette and a texture made of multi-scale value noise, a fine
brightness grain and random "stickers" (rectangles, discs, stripes) of different sizes. The result
has strong gradients at every scale from ~3 cm to ~1 m, no large uniform regions and no
periodicity, so that both photometric tracking and feature matching work on rendered frames.

Textures are ``[H, W, 3]`` float32 arrays in ``[0, 1]``; texel ``(j, i)`` covers the surface square
``[i, i+1) x [j, j+1)`` divided by ``texels_per_metre`` (u along the width, v along the height).
"""

from __future__ import annotations

import colorsys
import functools
import math

import numpy as np

__all__ = ["value_noise", "fbm", "make_palette", "make_texture", "texture_atlas", "TEXELS_PER_METRE", "MIP_LEVELS"]

TEXELS_PER_METRE = 100.0  # 1 texel = 1 cm
MIP_LEVELS = 4  # texels of 1, 2, 4, 8 cm: trilinear filtering against aliasing at a distance


def _interp_weights(n_out: int, cell: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, int]:
    """Lattice index ``[n_out]``, smoothstep weight ``[n_out]`` and lattice size for spacing ``cell``."""
    x = (np.arange(n_out) + 0.5) / cell + rng.uniform(0.0, 1.0)
    i0 = np.floor(x).astype(np.int64)
    f = (x - i0).astype(np.float32)
    return i0, f * f * (3.0 - 2.0 * f), int(i0.max()) + 2


def value_noise(rng: np.random.Generator, height: int, width: int, cell: float) -> np.ndarray:
    """``[height, width]`` float32 smooth value noise in ``[0, 1]`` with lattice spacing ``cell`` texels.

    Separable smoothstep interpolation of a random lattice.
    """
    iy, fy, gy = _interp_weights(height, cell, rng)
    ix, fx, gx = _interp_weights(width, cell, rng)
    g = rng.random((gy, gx), dtype=np.float32)
    rows = g[iy] * (1.0 - fy)[:, None] + g[iy + 1] * fy[:, None]  # [height, gx]
    return rows[:, ix] * (1.0 - fx) + rows[:, ix + 1] * fx


def fbm(rng: np.random.Generator, height: int, width: int, cells: tuple[float, ...],
        gains: tuple[float, ...]) -> np.ndarray:
    """``[height, width]`` float32 sum of value-noise octaves, rescaled to ``[0, 1]`` (robustly)."""
    out = np.zeros((height, width), dtype=np.float32)
    for cell, gain in zip(cells, gains):
        out += gain * value_noise(rng, height, width, cell)
    lo, hi = np.percentile(out, [1.0, 99.0]) if out.size > 16 else (out.min(), out.max())
    return np.clip((out - lo) / max(float(hi - lo), 1e-6), 0.0, 1.0)


def make_palette(rng: np.random.Generator, n: int = 4) -> np.ndarray:
    """``[n, 3]`` float32 RGB colours around a random hue, with well separated brightness."""
    h0 = rng.uniform(0.0, 1.0)
    values = np.linspace(0.22, 0.95, n)
    rng.shuffle(values)
    cols = []
    for k in range(n):
        hue = (h0 + rng.choice([0.0, 0.07, -0.07, 0.5, 0.33]) + rng.normal(0.0, 0.02)) % 1.0
        sat = rng.uniform(0.25, 0.85)
        cols.append(colorsys.hsv_to_rgb(hue, sat, float(values[k])))
    return np.asarray(cols, dtype=np.float32)


def _gradient_map(t: np.ndarray, palette: np.ndarray) -> np.ndarray:
    """Map ``t`` ``[H, W]`` in [0, 1] through the palette (piecewise linear) -> ``[H, W, 3]`` float32."""
    xs = np.linspace(0.0, 1.0, len(palette))
    return np.stack([np.interp(t, xs, palette[:, c]).astype(np.float32) for c in range(3)], -1)


def _stickers(rng: np.random.Generator, tex: np.ndarray, palette: np.ndarray, count: int,
              min_size: float, max_size: float) -> None:
    """Paint ``count`` random rectangles, discs and stripe patches into ``tex`` ``[H, W, 3]`` in place."""
    h, w = tex.shape[:2]
    for _ in range(count):
        largest = max(min(min(h, w) * 0.35, max_size), min_size + 1.0)
        size = float(np.exp(rng.uniform(np.log(min_size), np.log(largest))))
        sh = max(int(size * rng.uniform(0.5, 1.5)), 2)
        sw = max(int(size * rng.uniform(0.5, 1.5)), 2)
        y0 = int(rng.integers(-sh // 2, h))
        x0 = int(rng.integers(-sw // 2, w))
        ya, yb, xa, xb = max(y0, 0), min(y0 + sh, h), max(x0, 0), min(x0 + sw, w)
        if ya >= yb or xa >= xb:
            continue
        if rng.random() < 0.7:
            col = palette[rng.integers(len(palette))] * rng.uniform(0.6, 1.25)
        else:
            col = rng.random(3, dtype=np.float32)
        col = np.clip(col, 0.0, 1.0)
        kind = rng.integers(3)
        yy, xx = np.mgrid[ya:yb, xa:xb]
        if kind == 0:  # rectangle
            mask = np.ones((yb - ya, xb - xa), dtype=bool)
        elif kind == 1:  # disc / ellipse
            cy, cx = y0 + sh / 2.0, x0 + sw / 2.0
            mask = ((yy + 0.5 - cy) / (sh / 2.0)) ** 2 + ((xx + 0.5 - cx) / (sw / 2.0)) ** 2 <= 1.0
        else:  # stripes at a random angle and period, inside the rectangle
            ang = rng.uniform(0.0, np.pi)
            period = rng.uniform(2.0 * min_size, max(size / 2.0, 2.0 * min_size + 1.0))
            proj = (xx * np.cos(ang) + yy * np.sin(ang)) / period
            mask = (proj - np.floor(proj)) < 0.5
        tex[ya:yb, xa:xb][mask] = col


def make_texture(rng: np.random.Generator, height: int, width: int, texels_per_metre: float = 100.0,
                 palette: np.ndarray | None = None) -> np.ndarray:
    """``[height, width, 3]`` float32 procedural texture in ``[0, 1]``.

    Scales are given in metres and converted with ``texels_per_metre`` so that the look does not
    depend on the texture resolution.
    """
    if height < 1 or width < 1:
        raise ValueError(f"make_texture: expected a positive size, found {height}x{width}")
    tpm = float(texels_per_metre)
    if palette is None:
        palette = make_palette(rng)
    # colour layout: large blobs of palette colours with mid-size detail
    base = fbm(rng, height, width, (0.8 * tpm, 0.3 * tpm, 0.1 * tpm, 0.04 * tpm), (1.0, 0.6, 0.35, 0.2))
    base = np.clip(0.5 + 1.5 * (base - 0.5), 0.0, 1.0)  # contrast: use the whole palette
    tex = _gradient_map(base, palette).astype(np.float32)
    # stickers: sharp edges and corners, density per square metre
    area = height * width / tpm**2
    _stickers(rng, tex, palette, int(np.ceil(area * 16.0)), 0.04 * tpm, 0.45 * tpm)
    # fine brightness grain (3-8 cm) so that no region is flat at the pixel scale
    grain = fbm(rng, height, width, (0.08 * tpm, 0.035 * tpm), (1.0, 0.8))
    tex *= (0.72 + 0.56 * grain)[..., None]
    return np.clip(tex, 0.0, 1.0).astype(np.float32)


def _downsample2(tex: np.ndarray) -> np.ndarray:
    """``[H, W, 3]`` -> ``[ceil(H/2), ceil(W/2), 3]`` 2x2 box filter (edge replicated), at least 2x2."""
    h, w = tex.shape[:2]
    t = np.pad(tex, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")
    t = 0.25 * (t[0::2, 0::2] + t[1::2, 0::2] + t[0::2, 1::2] + t[1::2, 1::2])
    if t.shape[0] < 2 or t.shape[1] < 2:
        t = np.pad(t, ((0, max(0, 2 - t.shape[0])), (0, max(0, 2 - t.shape[1])), (0, 0)), mode="edge")
    return t


@functools.lru_cache(maxsize=4)
def texture_atlas(seed: int, extents: tuple[tuple[float, float], ...]
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Mip-mapped textures of all surfaces packed in one atlas.

    Cached: scenes that differ only in their cameras share it. Returns, read-only,
    ``(atlas [T] uint32 packed RGBA8, offset [L, S], width [L, S], height [L, S])`` for
    ``L = MIP_LEVELS`` levels (level ``l`` has texels of ``2**l`` cm).
    """
    n = len(extents)
    offs = np.zeros((MIP_LEVELS, n), dtype=np.int64)
    ws, hs = np.zeros_like(offs), np.zeros_like(offs)
    chunks = []
    off = 0
    for k, (eu, ev) in enumerate(extents):
        w = int(math.ceil(eu * TEXELS_PER_METRE)) + 1
        h = int(math.ceil(ev * TEXELS_PER_METRE)) + 1
        sub = np.random.default_rng([seed, 100 + k])
        tex = make_texture(sub, h, w, TEXELS_PER_METRE, make_palette(sub))
        for level in range(MIP_LEVELS):
            if level:
                tex = _downsample2(tex)
            chunks.append(tex.reshape(-1, 3))
            offs[level, k], hs[level, k], ws[level, k] = off, tex.shape[0], tex.shape[1]
            off += tex.shape[0] * tex.shape[1]
    rgba = np.zeros((off, 4), dtype=np.uint8)
    rgba[:, :3] = (np.concatenate(chunks, 0) * 255.0 + 0.5).astype(np.uint8)
    out = (rgba.view(np.uint32).reshape(-1), offs, ws, hs)
    for arr in out:
        arr.flags.writeable = False
    return out
