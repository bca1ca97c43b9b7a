"""numba kernels of :mod:`forward3d.render.numba_prepare` (imported only when numba is installed).

Module-level functions so that numba's on-disk cache (``cache=True``) can store them. Every float constant
comes in ``consts`` in the tensors' dtype, and each formula is written in the operation order of
:func:`forward3d.render.projection.project_gaussians` / :func:`~forward3d.render.projection.screen_extents`
(float32 inputs are computed in float32, as there).
"""

import numpy as np
from numba import njit, prange

CHUNK = 4096  # Gaussians per parallel work item of the projection


@njit(inline="always")
def _rotation(quats, n, R, qeps, one, two):
    """Fill ``R`` with the rotation of quaternion ``quats[n]`` (wxyz, normalised here); return the normalised
    ``(w, x, y, z)``, the norm and the clamped norm."""
    w, x, y, z = quats[n, 0], quats[n, 1], quats[n, 2], quats[n, 3]
    qn = np.sqrt(w * w + x * x + y * y + z * z)
    nrm = max(qn, qeps)
    w, x, y, z = w / nrm, x / nrm, y / nrm, z / nrm
    xx, yy, zz = x * x, y * y, z * z
    xy, xz, yz, wx, wy, wz = x * y, x * z, y * z, w * x, w * y, w * z
    R[0, 0], R[0, 1], R[0, 2] = one - two * (yy + zz), two * (xy - wz), two * (xz + wy)
    R[1, 0], R[1, 1], R[1, 2] = two * (xy + wz), one - two * (xx + zz), two * (yz - wx)
    R[2, 0], R[2, 1], R[2, 2] = two * (xz - wy), two * (yz + wx), one - two * (xx + yy)
    return w, x, y, z, qn, nrm


@njit(inline="always")
def _camera_terms(w2c, K, lims, c, means, scales, n, R, M, A, near, far, one):
    """Camera ``c``'s view of Gaussian ``n``: fills ``M = W R`` and ``A = M S``; returns the camera-space mean
    ``(mx, my, mz)``, ``in_range``, ``rz = 1 / z``, the unclamped and clamped ``x/z, y/z``, the Jacobian entries
    ``j00, j02, j11, j12`` and the rows ``a = J0 A``, ``b = J1 A`` (``Sigma2D = [a.a, a.b; a.b, b.b]``)."""
    for i in range(3):
        for j in range(3):
            M[i, j] = w2c[c, i, 0] * R[0, j] + w2c[c, i, 1] * R[1, j] + w2c[c, i, 2] * R[2, j]
            A[i, j] = M[i, j] * scales[n, j]
    mx = w2c[c, 0, 0] * means[n, 0] + w2c[c, 0, 1] * means[n, 1] + w2c[c, 0, 2] * means[n, 2] + w2c[c, 0, 3]
    my = w2c[c, 1, 0] * means[n, 0] + w2c[c, 1, 1] * means[n, 1] + w2c[c, 1, 2] * means[n, 2] + w2c[c, 1, 3]
    mz = w2c[c, 2, 0] * means[n, 0] + w2c[c, 2, 1] * means[n, 1] + w2c[c, 2, 2] * means[n, 2] + w2c[c, 2, 3]
    in_range = mz > near and mz < far
    zc = mz if in_range else one  # culled: z = 1, so that nothing below is inf/nan
    fx, fy = K[c, 0, 0], K[c, 1, 1]
    rz = one / zc
    ux, uy = mx * rz, my * rz
    tx = min(max(ux, -lims[c, 0]), lims[c, 1])
    ty = min(max(uy, -lims[c, 2]), lims[c, 3])
    j00, j02 = fx * rz, -fx * tx * rz
    j11, j12 = fy * rz, -fy * ty * rz
    a0 = j00 * A[0, 0] + j02 * A[2, 0]
    a1 = j00 * A[0, 1] + j02 * A[2, 1]
    a2 = j00 * A[0, 2] + j02 * A[2, 2]
    b0 = j11 * A[1, 0] + j12 * A[2, 0]
    b1 = j11 * A[1, 1] + j12 * A[2, 1]
    b2 = j11 * A[1, 2] + j12 * A[2, 2]
    return mx, my, mz, in_range, rz, ux, uy, tx, ty, j00, j02, j11, j12, a0, a1, a2, b0, b1, b2


@njit(parallel=True, cache=True, nogil=True)
def project(means, quats, scales, opac, w2c, K, lims, consts, width, height, antialiased, n_threads,
            means2d, depths, conics, covars2d, opac_out, radii, extents):
    # means [N, 3], quats [N, 4] wxyz (raw), scales [N, 3], opac [N]; w2c [C, 4, 4], K [C, 3, 3];
    # lims [C, 4] (x neg, x pos, y neg, y pos) of the x/z, y/z clamp; consts (near, far, eps2d, 1e-12, 1e-10,
    # ALPHA_THRESHOLD, MAX_EXTENT, 0, 0.5, 1, 2) in the dtype. Outputs: means2d [C, N, 2], depths [C, N],
    # conics [C, N, 3], covars2d [C, N, 2, 2], opac_out [C, N], radii [C, N] int32, extents [C, N, 2].
    near, far, eps2d, qeps, deps = consts[0], consts[1], consts[2], consts[3], consts[4]
    thr, max_ext, zero, half, one, two = consts[5], consts[6], consts[7], consts[8], consts[9], consts[10]
    N = means.shape[0]
    C = w2c.shape[0]
    n_chunks = (N + CHUNK - 1) // CHUNK
    for ch in prange(n_chunks):
        R = np.empty((3, 3), means.dtype)
        M = np.empty((3, 3), means.dtype)
        A = np.empty((3, 3), means.dtype)
        for n in range(ch * CHUNK, min(N, (ch + 1) * CHUNK)):
            _rotation(quats, n, R, qeps, one, two)
            o = opac[n]
            for c in range(C):
                mx, my, mz, in_range, rz, _, _, _, _, _, _, _, _, a0, a1, a2, b0, b1, b2 = _camera_terms(
                    w2c, K, lims, c, means, scales, n, R, M, A, near, far, one)
                depths[c, n] = mz
                fx, fy, cx, cy = K[c, 0, 0], K[c, 1, 1], K[c, 0, 2], K[c, 1, 2]
                c00 = a0 * a0 + a1 * a1 + a2 * a2
                c01 = a0 * b0 + a1 * b1 + a2 * b2
                c11 = b0 * b0 + b1 * b1 + b2 * b2
                det_orig = c00 * c11 - c01 * c01
                c00 = c00 + eps2d
                c11 = c11 + eps2d
                det = c00 * c11 - c01 * c01
                valid = in_range and det > zero
                rdet = one / max(det, deps)
                conics[c, n, 0] = c11 * rdet
                conics[c, n, 1] = -c01 * rdet
                conics[c, n, 2] = c00 * rdet
                covars2d[c, n, 0, 0] = c00
                covars2d[c, n, 0, 1] = c01
                covars2d[c, n, 1, 0] = c01
                covars2d[c, n, 1, 1] = c11
                u = fx * mx * rz + cx
                v = fy * my * rz + cy
                means2d[c, n, 0] = u
                means2d[c, n, 1] = v
                oc = o
                if antialiased:
                    oc = o * np.sqrt(max(det_orig * rdet, zero))
                opac_out[c, n] = oc
                # screen_extents
                valid = valid and oc >= thr
                extent = min(np.sqrt(two * np.log(max(oc, thr) / thr)), max_ext)
                b = half * (c00 + c11)
                lam = b + np.sqrt(max(b * b - det, zero))
                radius = np.ceil(extent * np.sqrt(lam))
                inside = u + radius > zero and u - radius < width and v + radius > zero and v - radius < height
                valid = valid and inside and radius > zero and np.isfinite(u) and np.isfinite(v)
                if valid:
                    radii[c, n] = np.int32(radius)
                    extents[c, n, 0] = extent * np.sqrt(max(c00, zero))
                    extents[c, n, 1] = extent * np.sqrt(max(c11, zero))
                else:
                    radii[c, n] = 0
                    extents[c, n, 0] = zero
                    extents[c, n, 1] = zero


@njit(cache=True, nogil=True)
def _radix_pass(key_of, shift, mask, n_buckets, dst):
    """``dst``: the positions ``0 .. len(key_of) - 1`` stably sorted by the digit ``(key_of >> shift) & mask``."""
    hist = np.zeros(n_buckets + 1, np.int64)
    for v in range(key_of.shape[0]):
        hist[((key_of[v] >> shift) & mask) + 1] += 1
    for b in range(n_buckets):
        hist[b + 1] += hist[b]
    for v in range(key_of.shape[0]):
        d = (key_of[v] >> shift) & mask
        dst[hist[d]] = v
        hist[d] += 1


@njit(cache=True, nogil=True)
def depth_order(bits, radii, N):
    """``bits`` [C * N] int32 (the float32 depths' bits), ``radii`` [C * N] -> [V] flat indices of the
    Gaussians with ``radii > 0``, front to back by depth within each camera (ties by index), cameras in
    order: LSD radix sort (16-bit digits) of the order-preserving integer keys, then by camera."""
    V = 0
    for g in range(radii.shape[0]):
        if radii[g] > 0:
            V += 1
    flat = np.empty(V, np.int64)
    key = np.empty(V, np.int64)  # float order as unsigned 32-bit integers
    v = 0
    for g in range(radii.shape[0]):
        if radii[g] > 0:
            b = np.int64(bits[g])
            if b < 0:
                b = b ^ 0x7FFFFFFF  # negative floats: reverse their order (as tiled._sortable)
            flat[v] = g
            key[v] = b + 2147483648
            v += 1
    perm = np.empty(V, np.int64)
    keys = np.empty(V, np.int64)
    idx = np.arange(V)
    for shift in (0, 16):
        for u in range(V):
            keys[u] = key[idx[u]]
        _radix_pass(keys, shift, 0xFFFF, 65536, perm)
        for u in range(V):
            perm[u] = idx[perm[u]]
        idx, perm = perm, idx
    # by camera (stable): the flat index // N, already grouped when the cameras' visible sets are in order
    C = radii.shape[0] // N if N > 0 else 0
    if C > 1:
        for u in range(V):
            keys[u] = flat[idx[u]] // N
        _radix_pass(keys, 0, 0x7FFFFFFFFFFFFFFF, C, perm)
        for u in range(V):
            perm[u] = idx[perm[u]]
        idx = perm
    out = np.empty(V, np.int64)
    for u in range(V):
        out[u] = flat[idx[u]]
    return out


@njit(parallel=True, cache=True, nogil=True)
def tile_boxes(means2d, extents, radii, width, height, tile, margin, box):
    """``box`` [C * N, 4] int32: the tile range (tx0, tx1, ty0, ty1) of each visible Gaussian's pixel box
    (``tx1 < tx0``: none), computed in float64 as :func:`forward3d.render.tiled.intersect_tiles`."""
    n = means2d.shape[0]
    n_chunks = (n + CHUNK - 1) // CHUNK
    for ch in prange(n_chunks):
        for g in range(ch * CHUNK, min(n, (ch + 1) * CHUNK)):
            box[g, 0], box[g, 1], box[g, 2], box[g, 3] = 0, -1, 0, -1
            if radii[g] <= 0:
                continue
            mx, my = np.float64(means2d[g, 0]), np.float64(means2d[g, 1])
            ex, ey = np.float64(extents[g, 0]) + margin, np.float64(extents[g, 1]) + margin
            # pixel columns j with |j + 0.5 - mx| <= ex, clamped to the image; then their tiles
            j0 = int(min(max(np.ceil(mx - ex - 0.5), 0.0), width - 1.0))
            j1 = int(min(max(np.floor(mx + ex - 0.5), -1.0), width - 1.0))
            i0 = int(min(max(np.ceil(my - ey - 0.5), 0.0), height - 1.0))
            i1 = int(min(max(np.floor(my + ey - 0.5), -1.0), height - 1.0))
            if j1 >= j0 and i1 >= i0:
                box[g, 0], box[g, 1], box[g, 2], box[g, 3] = j0 // tile, j1 // tile, i0 // tile, i1 // tile


@njit(parallel=True, cache=True, nogil=True)
def tile_lists(order, box, N, C, tiles_x, tiles_y, n_threads):
    """``order`` [V] flat (camera * N + Gaussian) indices front to back per camera, cameras in order; ``box``
    from :func:`tile_boxes` -> (``ids`` [M], ``start``, ``count`` [C * tiles_y * tiles_x]): the Gaussians of
    each tile in ``order``'s order. A stable counting sort of the pairs by tile, in parallel: thread ``th``
    counts and then fills the pairs of its contiguous part of ``order``, at offsets after those of the
    threads before it, so the lists are the same for any thread count."""
    V = order.shape[0]
    n_tiles = C * tiles_x * tiles_y
    hist = np.zeros((n_threads, n_tiles), np.int64)
    rect = np.empty((V, 4), np.int32)  # the boxes in order with the camera's row offset
    for th in prange(n_threads):
        lo, hi = th * V // n_threads, (th + 1) * V // n_threads
        cam = order[lo] // N if lo < hi else 0  # order is camera-major: the camera then only advances
        for v in range(lo, hi):
            g = order[v]
            while g >= (cam + 1) * N:
                cam += 1
            tx0, tx1 = box[g, 0], box[g, 1]
            ty0, ty1 = box[g, 2] + cam * tiles_y, box[g, 3] + cam * tiles_y
            rect[v, 0], rect[v, 1], rect[v, 2], rect[v, 3] = tx0, tx1, ty0, ty1
            for ty in range(ty0, ty1 + 1):
                for tx in range(tx0, tx1 + 1):
                    hist[th, ty * tiles_x + tx] += 1
    count = np.zeros(n_tiles, np.int64)
    start = np.empty(n_tiles, np.int64)
    offset = np.empty((n_threads, n_tiles), np.int64)
    total = 0
    for t in range(n_tiles):
        start[t] = total
        for th in range(n_threads):
            offset[th, t] = total
            total += hist[th, t]
        count[t] = total - start[t]
    ids = np.empty(total, np.int64)
    for th in prange(n_threads):
        lo, hi = th * V // n_threads, (th + 1) * V // n_threads
        for v in range(lo, hi):
            g = order[v]
            for ty in range(rect[v, 2], rect[v, 3] + 1):
                for tx in range(rect[v, 0], rect[v, 1] + 1):
                    t = ty * tiles_x + tx
                    ids[offset[th, t]] = g
                    offset[th, t] += 1
    return ids, start, count


@njit(parallel=True, cache=True, nogil=True)
def project_backward(means, quats, scales, opac, w2c, K, lims, consts, antialiased, g_means2d, g_depths,
                     g_conics, g_opac, g_means, g_quats, g_scales, g_opacities):
    # The backward of :func:`project` for the Gaussians' parameters (the cameras get no gradient here):
    # upstream g_means2d [C, N, 2], g_depths [C, N], g_conics [C, N, 3], g_opac [C, N] -> g_means [N, 3],
    # g_quats [N, 4], g_scales [N, 3], g_opacities [N] (written, summed over the cameras in camera order).
    # The forward's intermediates are recomputed per Gaussian.
    near, far, eps2d, qeps, deps = consts[0], consts[1], consts[2], consts[3], consts[4]
    zero, half, one, two = consts[7], consts[8], consts[9], consts[10]
    N = means.shape[0]
    C = w2c.shape[0]
    n_chunks = (N + CHUNK - 1) // CHUNK
    for ch in prange(n_chunks):
        R = np.empty((3, 3), means.dtype)
        M = np.empty((3, 3), means.dtype)  # W R (before the scales)
        A = np.empty((3, 3), means.dtype)
        dA = np.empty((3, 3), means.dtype)
        dR = np.empty((3, 3), means.dtype)
        for n in range(ch * CHUNK, min(N, (ch + 1) * CHUNK)):
            w, x, y, z, qn, nrm = _rotation(quats, n, R, qeps, one, two)
            o = opac[n]
            gm0 = gm1 = gm2 = zero
            gs0 = gs1 = gs2 = zero
            go = zero
            for i in range(3):
                for j in range(3):
                    dR[i, j] = zero
            for c in range(C):
                mx, my, _, in_range, rz, ux, uy, tx, ty, j00, j02, j11, j12, a0, a1, a2, b0, b1, b2 = _camera_terms(
                    w2c, K, lims, c, means, scales, n, R, M, A, near, far, one)
                fx, fy = K[c, 0, 0], K[c, 1, 1]
                p00 = a0 * a0 + a1 * a1 + a2 * a2  # before the dilation
                c01 = a0 * b0 + a1 * b1 + a2 * b2
                p11 = b0 * b0 + b1 * b1 + b2 * b2
                c00 = p00 + eps2d
                c11 = p11 + eps2d
                det = c00 * c11 - c01 * c01
                rdet = one / max(det, deps)
                # conic = Sigma^-1 (a, b, c): dL/dSigma = -Sigma^-1 G Sigma^-1, G = [[ga, gb / 2], [gb / 2, gc]]
                ia, ib, ic = c11 * rdet, -c01 * rdet, c00 * rdet
                ga, gb, gc = g_conics[c, n, 0], g_conics[c, n, 1] * half, g_conics[c, n, 2]
                # H = Sigma^-1 G; dSigma = -(H Sigma^-1)
                h00 = ia * ga + ib * gb
                h01 = ia * gb + ib * gc
                h10 = ib * ga + ic * gb
                h11 = ib * gb + ic * gc
                d00 = -(h00 * ia + h01 * ib)
                d01 = -(h00 * ib + h01 * ic)
                d10 = -(h10 * ia + h11 * ib)
                d11 = -(h10 * ib + h11 * ic)
                g00, g01, g11 = d00, d01 + d10, d11
                oc_g = g_opac[c, n]
                if antialiased:
                    det_orig = p00 * p11 - c01 * c01
                    r = det_orig * rdet
                    comp = np.sqrt(max(r, zero))
                    go += oc_g * comp
                    if r > zero:
                        g_r = oc_g * o * half / comp
                        g_do = g_r * rdet  # d r / d det_orig
                        g_det = -g_r * det_orig * rdet * rdet
                        # det_orig = p00 p11 - c01^2, det = c00 c11 - c01^2 (c00 = p00 + eps, ...)
                        g00 += g_do * p11 + g_det * c11
                        g11 += g_do * p00 + g_det * c00
                        g01 += -two * c01 * (g_do + g_det)
                else:
                    go += oc_g
                # c00 = a.a, c01 = a.b, c11 = b.b
                da0 = two * g00 * a0 + g01 * b0
                da1 = two * g00 * a1 + g01 * b1
                da2 = two * g00 * a2 + g01 * b2
                db0 = two * g11 * b0 + g01 * a0
                db1 = two * g11 * b1 + g01 * a1
                db2 = two * g11 * b2 + g01 * a2
                # a = j00 A0 + j02 A2, b = j11 A1 + j12 A2
                dA[0, 0], dA[0, 1], dA[0, 2] = j00 * da0, j00 * da1, j00 * da2
                dA[1, 0], dA[1, 1], dA[1, 2] = j11 * db0, j11 * db1, j11 * db2
                dA[2, 0] = j02 * da0 + j12 * db0
                dA[2, 1] = j02 * da1 + j12 * db1
                dA[2, 2] = j02 * da2 + j12 * db2
                g_j00 = da0 * A[0, 0] + da1 * A[0, 1] + da2 * A[0, 2]
                g_j02 = da0 * A[2, 0] + da1 * A[2, 1] + da2 * A[2, 2]
                g_j11 = db0 * A[1, 0] + db1 * A[1, 1] + db2 * A[1, 2]
                g_j12 = db0 * A[2, 0] + db1 * A[2, 1] + db2 * A[2, 2]
                # j00 = fx rz, j02 = -fx tx rz, j11 = fy rz, j12 = -fy ty rz
                g_rz = fx * g_j00 - fx * tx * g_j02 + fy * g_j11 - fy * ty * g_j12
                g_tx = -fx * rz * g_j02
                g_ty = -fy * rz * g_j12
                # means2d = (fx x rz + cx, fy y rz + cy)
                gu, gv = g_means2d[c, n, 0], g_means2d[c, n, 1]
                g_x = fx * rz * gu
                g_y = fy * rz * gv
                g_rz += fx * mx * gu + fy * my * gv
                # tx = clamp(x rz), ty = clamp(y rz): the gradient passes where not clamped
                if ux > -lims[c, 0] and ux < lims[c, 1]:
                    g_x += rz * g_tx
                    g_rz += mx * g_tx
                if uy > -lims[c, 2] and uy < lims[c, 3]:
                    g_y += rz * g_ty
                    g_rz += my * g_ty
                g_z = g_depths[c, n]
                if in_range:
                    g_z += -rz * rz * g_rz
                # camera-space mean = W mean + t
                gm0 += w2c[c, 0, 0] * g_x + w2c[c, 1, 0] * g_y + w2c[c, 2, 0] * g_z
                gm1 += w2c[c, 0, 1] * g_x + w2c[c, 1, 1] * g_y + w2c[c, 2, 1] * g_z
                gm2 += w2c[c, 0, 2] * g_x + w2c[c, 1, 2] * g_y + w2c[c, 2, 2] * g_z
                # A = M S, M = W R
                gs0 += dA[0, 0] * M[0, 0] + dA[1, 0] * M[1, 0] + dA[2, 0] * M[2, 0]
                gs1 += dA[0, 1] * M[0, 1] + dA[1, 1] * M[1, 1] + dA[2, 1] * M[2, 1]
                gs2 += dA[0, 2] * M[0, 2] + dA[1, 2] * M[1, 2] + dA[2, 2] * M[2, 2]
                for k in range(3):
                    for j in range(3):
                        dR[k, j] += (w2c[c, 0, k] * dA[0, j] + w2c[c, 1, k] * dA[1, j] + w2c[c, 2, k] * dA[2, j]) * scales[n, j]
            g_means[n, 0], g_means[n, 1], g_means[n, 2] = gm0, gm1, gm2
            g_scales[n, 0], g_scales[n, 1], g_scales[n, 2] = gs0, gs1, gs2
            g_opacities[n] = go
            # R(w, x, y, z) of the normalised quaternion
            gw = two * (-z * dR[0, 1] + y * dR[0, 2] + z * dR[1, 0] - x * dR[1, 2] - y * dR[2, 0] + x * dR[2, 1])
            gx = two * (y * dR[0, 1] + z * dR[0, 2] + y * dR[1, 0] - two * x * dR[1, 1] - w * dR[1, 2]
                        + z * dR[2, 0] + w * dR[2, 1] - two * x * dR[2, 2])
            gy = two * (-two * y * dR[0, 0] + x * dR[0, 1] + w * dR[0, 2] + x * dR[1, 0] + z * dR[1, 2]
                        - w * dR[2, 0] + z * dR[2, 1] - two * y * dR[2, 2])
            gz = two * (-two * z * dR[0, 0] - w * dR[0, 1] + x * dR[0, 2] + w * dR[1, 0] - two * z * dR[1, 1]
                        + y * dR[1, 2] + x * dR[2, 0] + y * dR[2, 1])
            # q / max(|q|, eps): the tangential part over the norm (no gradient through the clamp)
            if qn > qeps:
                dot = w * gw + x * gx + y * gy + z * gz
                g_quats[n, 0] = (gw - w * dot) / nrm
                g_quats[n, 1] = (gx - x * dot) / nrm
                g_quats[n, 2] = (gy - y * dot) / nrm
                g_quats[n, 3] = (gz - z * dot) / nrm
            else:
                g_quats[n, 0], g_quats[n, 1] = gw / nrm, gx / nrm
                g_quats[n, 2], g_quats[n, 3] = gy / nrm, gz / nrm
