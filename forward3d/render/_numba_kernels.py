"""numba kernels of :mod:`forward3d.render.tiled_numba` (imported only when numba is installed).

Module-level functions so that numba's on-disk cache (``cache=True``) can store them. Every float
constant comes in ``consts`` in the tensors' dtype, so float32 inputs are computed in float32 throughout
(as the torch path and the reference).
"""

import numpy as np
from numba import njit, prange

BOX_MARGIN = 1e-3  # pixels added to the Gaussian's box, as the tile intersection does (against rounding)
GATHER = 32  # Gaussians of a tile list gathered per block (forward and backward)
FEAT = 4  # feature channels of the kernels (callers pad to it): a compile-time loop bound, unrolled
# fastmath (reassociation, FMA contraction, no NaN/inf inputs: the projection culls those) on the kernels:
# ~10% less time; the results stay within float rounding of the torch kernel and independent of threads
FASTMATH = True
LEVEL_SLACK = 1e-4  # relative enlargement of the ellipse sigma <= s that bounds each row's pixels


@njit(inline="always")
def _box(mx, my, ex, ey, x0, x1, y0, y1, margin):
    # pixel columns j with |j + 0.5 - mx| <= ex (+ margin), clipped to [x0, x1); rows alike
    j0 = max(x0, int(np.ceil(mx - ex - margin - 0.5)))
    j1 = min(x1 - 1, int(np.floor(mx + ex + margin - 0.5)))
    i0 = max(y0, int(np.ceil(my - ey - margin - 0.5)))
    i1 = min(y1 - 1, int(np.floor(my + ey + margin - 0.5)))
    return j0, j1, i0, i1


@njit(inline="always")
def _level(o, thr):
    """The level ``s`` with ``o exp(-sigma) >= thr`` iff ``sigma <= s`` (float64, slightly enlarged against
    rounding; enlarging only adds pixels that the exact per-pixel test then rejects)."""
    s = np.log(np.float64(o) / np.float64(thr))
    return s + LEVEL_SLACK * (1.0 + abs(s))


@njit(inline="always")
def _row_span(a, b, c, s, mx, dy, j0, j1, margin):
    """Columns ``[j0', j1']`` (within ``[j0, j1]``) of one pixel row whose centres ``x`` can satisfy
    ``0.5 (a dx^2 + c dy^2) + b dx dy <= s`` (``dx = mx - x``): the chord of the ellipse, in float64."""
    a64, b64, c64 = np.float64(a), np.float64(b), np.float64(c)
    if a64 <= 0.0:
        return j0, j1
    q = b64 * dy
    disc = q * q - a64 * (c64 * dy * dy - 2.0 * s)
    if disc < 0.0:
        return j0, j0 - 1
    r = np.sqrt(disc)
    lo = np.float64(mx) + (q - r) / a64  # x = mx - dx, dx in [(-q - r) / a, (-q + r) / a]
    hi = np.float64(mx) + (q + r) / a64
    return max(j0, int(np.ceil(lo - margin - 0.5))), min(j1, int(np.floor(hi + margin - 0.5)))


@njit(inline="always")
def _sigma(a, b, c, dx, dy, half):
    """The Mahalanobis exponent ``0.5 (a dx^2 + c dy^2) + b dx dy`` (one definition for both kernels)."""
    return half * (a * dx * dx + c * dy * dy) + b * dx * dy


@njit(inline="always")
def _row_start(a, b, c, mx, x, dy, half, one):
    """``exp(-sigma)`` along a pixel row from its first centre ``x``: ``(e, g) = (exp(-sigma(x)), exp(-d1))`` with
    ``d1 = sigma(x + 1) - sigma(x)``. Along the row ``sigma`` is a quadratic in ``x`` with second difference
    ``a``, so ``e`` advances by products (:func:`_row_step`): one ``exp`` per row and Gaussian instead of one
    per pixel (relative error ~1e-7 per step in float32). The forward and the backward kernels start every
    row at the same column and step alike, so they compute the same alphas. (The ``sigma < 0`` test stays
    on the directly computed ``sigma``, as the reference.)"""
    dx = mx - x
    sig = _sigma(a, b, c, dx, dy, half)
    d1 = half * a * (one - dx - dx) - b * dy
    return np.exp(-sig), np.exp(-d1)


@njit(inline="always")
def _row_step(e, g, h):
    """One pixel to the right: ``e *= g``, ``g *= h`` (``h = exp(-a)``, the second difference)."""
    return e * g, g * h


@njit(inline="always")
def _gather(rows, prm, feat, ids, first, n_rows, step):
    """``rows[u] = (prm[g], feat[g])`` for ``g = ids[first + step * u]``, ``u < n_rows``: the next Gaussians of a
    tile list in one block of independent loads (their cache misses on the Gaussian table overlap)."""
    for u in range(n_rows):
        g = ids[first + step * u]
        for v in range(8):
            rows[u, v] = prm[g, v]
        for f in range(FEAT):
            rows[u, 8 + f] = feat[g, f]


@njit(inline="always")
def _tile_rect(t, tiles_x, tiles_y, tile, width, height):
    per_cam = tiles_x * tiles_y
    cam = t // per_cam
    r = t - cam * per_cam
    ty = r // tiles_x
    tx = r - ty * tiles_x
    x0, y0 = tx * tile, ty * tile
    return cam, x0, min(x0 + tile, width), y0, min(y0 + tile, height)


@njit(parallel=True, cache=True, nogil=True, fastmath=FASTMATH)
def forward(prm, feat, ids, start, count, xs, ys, consts, tile, tiles_x, tiles_y, n_threads, acc, T_out, last):
    # prm [CN, 8] (mx, my, a, b, c, o, ex, ey); feat [CN, F]; xs [W], ys [H] pixel centres;
    # consts (0.5, 1, MAX_ALPHA, T_EPS, ALPHA_THRESHOLD, 0) in the dtype; acc [C, H, W, F]; T_out, last [C, H, W]
    half, one, max_a, t_eps, thr, zero = consts[0], consts[1], consts[2], consts[3], consts[4], consts[5]
    F = FEAT  # feat.shape[1] == FEAT
    height, width = T_out.shape[1], T_out.shape[2]
    n_tiles = start.shape[0]
    P = tile * tile
    margin = BOX_MARGIN
    for th in prange(n_threads):
        Tl = np.empty(P, prm.dtype)
        al = np.empty((P, F), prm.dtype)
        rows = np.empty((GATHER, 8 + F), prm.dtype)  # the next GATHER Gaussians of the list, gathered at once
        done = np.empty(P, np.bool_)
        lst = np.empty(P, np.int32)
        row_lo = np.empty(tile, np.int64)  # per row of the tile: first and last column not yet stopped
        row_hi = np.empty(tile, np.int64)
        for t in range(th, n_tiles, n_threads):
            n = count[t]
            if n == 0:
                continue
            cam, x0, x1, y0, y1 = _tile_rect(t, tiles_x, tiles_y, tile, width, height)
            tw = x1 - x0
            n_pix = tw * (y1 - y0)
            row_lo[:] = x0
            row_hi[:] = x1 - 1
            for p in range(n_pix):
                Tl[p] = one
                done[p] = False
                lst[p] = 0
                for f in range(F):
                    al[p, f] = zero
            n_done = 0
            s0 = start[t]
            for k in range(n):
                q = k % GATHER
                if q == 0:  # independent loads: the cache misses on the Gaussian table overlap
                    _gather(rows, prm, feat, ids, s0 + k, min(GATHER, n - k), 1)
                mx, my, a, b, c, o = rows[q, 0], rows[q, 1], rows[q, 2], rows[q, 3], rows[q, 4], rows[q, 5]
                if o < thr:  # alpha <= o < 1/255 everywhere
                    continue
                j0, j1, i0, i1 = _box(mx, my, rows[q, 6], rows[q, 7], x0, x1, y0, y1, margin)
                lv = _level(o, thr)
                h = np.exp(-a)
                for i in range(i0, i1 + 1):
                    r = i - y0
                    if row_lo[r] > row_hi[r]:  # every pixel of the row has stopped
                        continue
                    dy = my - ys[i]
                    row = r * tw - x0
                    # the chord from the unclipped box (the backward starts there too), cut at the row's end
                    c0, c1 = _row_span(a, b, c, lv, mx, np.float64(dy), j0, j1, margin)
                    c1 = min(c1, row_hi[r])
                    if c0 > c1:
                        continue
                    e, g = _row_start(a, b, c, mx, xs[c0], dy, half, one)
                    for j in range(c0, c1 + 1):
                        p = row + j
                        vis = e
                        e, g = _row_step(e, g, h)
                        if done[p]:
                            continue
                        dx = mx - xs[j]
                        sigma = _sigma(a, b, c, dx, dy, half)
                        if sigma < zero:
                            continue
                        alpha = min(max_a, o * vis)
                        if alpha < thr:
                            continue
                        T = Tl[p]
                        nt = T * (one - alpha)
                        if nt <= t_eps:  # stop before this Gaussian
                            done[p] = True
                            n_done += 1
                            while row_lo[r] <= row_hi[r] and done[row + row_lo[r]]:
                                row_lo[r] += 1
                            while row_hi[r] >= row_lo[r] and done[row + row_hi[r]]:
                                row_hi[r] -= 1
                            continue
                        w = T * alpha
                        for f in range(F):
                            al[p, f] += w * rows[q, 8 + f]
                        Tl[p] = nt
                        lst[p] = k + 1
                if n_done == n_pix:
                    break
            for i in range(y0, y1):
                for j in range(x0, x1):
                    p = (i - y0) * tw + (j - x0)
                    T_out[cam, i, j] = Tl[p]
                    last[cam, i, j] = lst[p]
                    for f in range(F):
                        acc[cam, i, j, f] = al[p, f]


@njit(parallel=True, cache=True, nogil=True, fastmath=FASTMATH)
def backward(prm, feat, ids, start, count, xs, ys, consts, tile, tiles_x, tiles_y, n_threads, T_out, last,
             g_acc, g_T, g_pair):
    # g_acc [C, H, W, F], g_T [C, H, W] -> g_pair [M, 6 + F]: the gradient of every (tile, Gaussian) pair
    half, one, max_a, thr, zero = consts[0], consts[1], consts[2], consts[4], consts[5]
    F = FEAT  # feat.shape[1] == FEAT
    height, width = T_out.shape[1], T_out.shape[2]
    n_tiles = start.shape[0]
    P = tile * tile
    margin = BOX_MARGIN
    for th in prange(n_threads):
        Tl = np.empty(P, prm.dtype)
        S = np.empty(P, prm.dtype)
        ga = np.empty((P, F), prm.dtype)
        lst = np.empty(P, np.int32)
        gf = np.empty(F, prm.dtype)
        rows = np.empty((GATHER, 8 + F), prm.dtype)  # the next GATHER Gaussians (back to front), gathered at once
        row_last = np.empty(tile, np.int64)  # the largest ``last`` of each row: rows past it are skipped
        for t in range(th, n_tiles, n_threads):
            n = count[t]
            if n == 0:
                continue
            cam, x0, x1, y0, y1 = _tile_rect(t, tiles_x, tiles_y, tile, width, height)
            tw = x1 - x0
            kmax = 0
            row_last[:] = 0
            for i in range(y0, y1):
                for j in range(x0, x1):
                    p = (i - y0) * tw + (j - x0)
                    T = T_out[cam, i, j]
                    Tl[p] = T
                    S[p] = T * g_T[cam, i, j]
                    lst[p] = last[cam, i, j]
                    row_last[i - y0] = max(row_last[i - y0], lst[p])
                    for f in range(F):
                        ga[p, f] = g_acc[cam, i, j, f]
                kmax = max(kmax, row_last[i - y0])
            s0 = start[t]
            for k in range(kmax, n):
                for q in range(6 + F):
                    g_pair[s0 + k, q] = zero
            for k in range(kmax - 1, -1, -1):
                q = (kmax - 1 - k) % GATHER
                if q == 0:
                    _gather(rows, prm, feat, ids, s0 + k, min(GATHER, k + 1), -1)
                mx, my, a, b, c, o = rows[q, 0], rows[q, 1], rows[q, 2], rows[q, 3], rows[q, 4], rows[q, 5]
                j0, j1, i0, i1 = _box(mx, my, rows[q, 6], rows[q, 7], x0, x1, y0, y1, margin)
                if o < thr:
                    i1 = i0 - 1
                lv = _level(o, thr)
                h = np.exp(-a)
                g_mx = g_my = g_a = g_b = g_c = g_o = zero
                for f in range(F):
                    gf[f] = zero
                for i in range(i0, i1 + 1):
                    if k >= row_last[i - y0]:
                        continue
                    dy = my - ys[i]
                    row = (i - y0) * tw - x0
                    c0, c1 = _row_span(a, b, c, lv, mx, np.float64(dy), j0, j1, margin)
                    if c0 > c1:
                        continue
                    e, g = _row_start(a, b, c, mx, xs[c0], dy, half, one)
                    for j in range(c0, c1 + 1):
                        p = row + j
                        vis = e
                        e, g = _row_step(e, g, h)
                        if k >= lst[p]:
                            continue
                        dx = mx - xs[j]
                        sigma = _sigma(a, b, c, dx, dy, half)
                        if sigma < zero:
                            continue
                        raw = o * vis
                        alpha = min(max_a, raw)
                        if alpha < thr:
                            continue
                        ra = one / (one - alpha)
                        T = Tl[p] * ra  # T before this Gaussian
                        G = zero
                        for f in range(F):
                            G += ga[p, f] * rows[q, 8 + f]
                        w = T * alpha
                        d_alpha = T * G - S[p] * ra
                        S[p] += w * G
                        Tl[p] = T
                        for f in range(F):
                            gf[f] += w * ga[p, f]
                        if raw < max_a:  # no gradient through the clamp
                            g_o += d_alpha * vis
                            d_sigma = -d_alpha * alpha
                            g_mx += d_sigma * (a * dx + b * dy)
                            g_my += d_sigma * (c * dy + b * dx)
                            g_a += d_sigma * half * dx * dx
                            g_b += d_sigma * dx * dy
                            g_c += d_sigma * half * dy * dy
                r = s0 + k
                g_pair[r, 0] = g_mx
                g_pair[r, 1] = g_my
                g_pair[r, 2] = g_a
                g_pair[r, 3] = g_b
                g_pair[r, 4] = g_c
                g_pair[r, 5] = g_o
                for f in range(F):
                    g_pair[r, 6 + f] = gf[f]


@njit(parallel=True, cache=True, nogil=True)
def reduce_pairs(ids, g_pair, n_threads, out):
    """``out[ids[m]] += g_pair[m]`` for every pair ``m`` (``out`` zeroed by the caller): the per-Gaussian sums
    of the pair gradients. Thread ``th`` owns the Gaussians of one contiguous id range and adds their pairs in
    list order, so each sum has the same order for any thread count (bit-identical results)."""
    n = out.shape[0]
    Q = g_pair.shape[1]
    for th in prange(n_threads):
        lo = th * n // n_threads
        hi = (th + 1) * n // n_threads
        for m in range(ids.shape[0]):
            g = ids[m]
            if g >= lo and g < hi:
                for q in range(Q):
                    out[g, q] += g_pair[m, q]
