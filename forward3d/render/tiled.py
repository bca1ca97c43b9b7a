"""Fast tiled rasterizer in plain PyTorch (CPU or GPU): vectorised over tiles, pixels and Gaussians.

Algorithm (same maths as :mod:`forward3d.render.reference`, gsplat's tile scheme):

1. Tile intersections: each visible Gaussian covers the tiles overlapping the box of pixel centres where
   its alpha can reach 1/255 (exact half widths ``extent * sqrt(Sigma2D_xx)``, ``extent * sqrt(Sigma2D_yy)``).
   Gaussians are ordered front to back by a radix sort of the depth's float bits, the (tile, Gaussian)
   pairs expanded with ``repeat_interleave`` and stably sorted by tile (integer keys: radix sort).
2. Compositing in depth steps: step ``s`` takes the Gaussians ``[s K, (s+1) K)`` of every still-active tile
   (``K = k_step``), in batches of tiles holding at most ``chunk_size`` pixel-Gaussian pairs. For a batch
   the tensors are ``[B tiles, P = tile_size^2 pixels, K Gaussians]`` (reused workspace buffers, in-place
   ops): ``log(o) - sigma`` is a quadratic in the tile-centred pixel offset, so all pairs come from one
   ``bmm`` of 6 per-pair coefficients with the 6 monomials ``1, u, v, u^2, uv, v^2``; then alpha, the
   transmittance by one ``cumprod`` seeded with the tile's carried ``T`` (the multiplication order of the
   sequential loop), the early stop as the prefix mask ``T_after > 1e-4``, and the feature sum as one
   ``bmm``. A tile drops out when its list ends or all its pixels are saturated.
   Threads: the tiles are dealt to ``workers`` Python threads (default: the intra-op thread count), each
   running its own step loop with one intra-op thread. Torch releases the GIL inside its kernels, so
   the threads run in parallel on large batches instead of synchronising OpenMP teams on every small op
   (which made 2 intra-op threads slower than 1).
3. Backward (custom :class:`torch.autograd.Function`), steps replayed back to front: per-pair alpha and T
   are read back (kept by the forward pass within ``SAVE_PAIRS_BUDGET``) or recomputed from the per-step
   ``T``; the "what lies behind" suffix sums come from a triangular matmul (exact, no cancellation); the
   pixel sums of ``dL/dsigma`` times ``1, x, y, x^2, xy, y^2`` (tile-centred) come from one ``bmm`` and give
   the gradients of the 2D mean and conic; per-Gaussian gradients are scattered with ``index_add_``.

The Python loops run over depth steps and tile batches only (tens of iterations), never over Gaussians,
pixels or single tiles.

On CPU, :func:`render_tiled` replaces steps 2-3 by the compiled numba kernel of
:mod:`forward3d.render.tiled_numba` when numba is installed (``cpu_kernel="auto"``, see
:func:`resolve_cpu_kernel`); step 1 is shared.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from forward3d.threads import run_workers

from .common import MAX_ALPHA, T_EPS, Prepared, RenderOutput, finish, make_meta
from .projection import ALPHA_THRESHOLD

__all__ = ["CpuKernel", "TileIsects", "depth_order", "intersect_tiles", "composite_tiled", "render_tiled", "resolve_cpu_kernel"]

_MARGIN = 1e-3  # pixels added to the exact box, against rounding
SAVE_PAIRS_BUDGET = 1 << 26  # pairs whose alpha and T the forward keeps for the backward (8 bytes each)


@dataclass
class TileIsects:
    """Gaussian-tile intersections of ``C`` cameras, sorted by (camera, tile, depth).

    Attributes:
        ids: ``[M]`` int64 index into the flattened ``[C * N]`` Gaussians, front to back within each tile.
        start: ``[C * TH * TW]`` int64 offset of each tile's list in ``ids``.
        count: ``[C * TH * TW]`` int64 length of each tile's list.
        tile_size, tiles_x, tiles_y, n_cams: the tiling.
    """

    ids: Tensor
    start: Tensor
    count: Tensor
    tile_size: int
    tiles_x: int
    tiles_y: int
    n_cams: int

    @property
    def n_tiles(self) -> int:
        return self.n_cams * self.tiles_x * self.tiles_y


def _sortable(x: Tensor) -> Tensor:
    """Integers ordered like the floats ``x`` (IEEE bits, negative values flipped): ints sort by radix."""
    bits = x.contiguous().view(torch.int32 if x.dtype == torch.float32 else torch.int64) if x.dtype in (
        torch.float32, torch.float64) else x.double().view(torch.int64)
    flip = torch.iinfo(bits.dtype).max
    return torch.where(bits < 0, bits ^ flip, bits)


@torch.no_grad()
def depth_order(depths: Tensor, visible: Tensor) -> Tensor:
    """``[V]`` flat (``camera * N + Gaussian``) indices of the ``visible`` ``[C, N]`` Gaussians, front to back
    by ``depths`` ``[C, N]`` within each camera (ties by index, as the reference), cameras in order."""
    N = depths.shape[1]
    flat = torch.nonzero(visible.reshape(-1)).squeeze(1)  # [V]
    key = _sortable(depths.detach().reshape(-1)[flat])
    key = torch.sort(key, stable=True).indices  # radix sort on the float bits: much faster than a float sort
    cam = torch.div(flat[key], N, rounding_mode="floor")
    return flat[key][torch.sort(cam, stable=True).indices]


@torch.no_grad()
def intersect_tiles(
    means2d: Tensor,  # [C, N, 2]
    extents: Tensor,  # [C, N, 2]
    depths: Tensor,  # [C, N]
    visible: Tensor,  # [C, N] bool
    width: int,
    height: int,
    tile_size: int,
) -> TileIsects:
    """Gaussian-tile pairs sorted by (camera, tile, depth); see the module docstring."""
    C, N = depths.shape
    device = means2d.device
    tx_n = (width + tile_size - 1) // tile_size
    ty_n = (height + tile_size - 1) // tile_size
    n_tiles = C * tx_n * ty_n
    order = depth_order(depths, visible)
    m = means2d.detach().reshape(-1, 2).index_select(0, order).double()
    e = extents.detach().reshape(-1, 2).index_select(0, order).double() + _MARGIN
    # pixel columns j with |j + 0.5 - mx| <= ex, clamped to the image; then their tiles
    j0 = torch.ceil(m[:, 0] - e[:, 0] - 0.5).clamp(0, width - 1).int()
    j1 = torch.floor(m[:, 0] + e[:, 0] - 0.5).clamp(-1, width - 1).int()
    i0 = torch.ceil(m[:, 1] - e[:, 1] - 0.5).clamp(0, height - 1).int()
    i1 = torch.floor(m[:, 1] + e[:, 1] - 0.5).clamp(-1, height - 1).int()
    ok = (j1 >= j0) & (i1 >= i0)
    tx0, ty0 = j0 // tile_size, i0 // tile_size
    nx = (j1 // tile_size - tx0 + 1) * ok
    ny = (i1 // tile_size - ty0 + 1) * ok
    cnt = nx * ny  # [V] tiles per Gaussian
    M = int(cnt.sum())
    if M == 0:
        z = torch.zeros(n_tiles, dtype=torch.long, device=device)
        return TileIsects(torch.zeros(0, dtype=torch.long, device=device), z, z.clone(), tile_size, tx_n, ty_n, C)
    src = torch.repeat_interleave(torch.arange(len(cnt), device=device, dtype=torch.int32), cnt).long()  # [M]
    first = torch.cumsum(cnt, 0, dtype=torch.int32) - cnt
    local = torch.arange(M, device=device, dtype=torch.int32) - first.index_select(0, src)
    w = nx.index_select(0, src)
    ty = torch.div(local, w, rounding_mode="floor")
    tx = local - ty * w
    ids = order.index_select(0, src)
    base = (torch.div(order, N, rounding_mode="floor").int() * ty_n + ty0) * tx_n + tx0  # first tile, [V]
    tile = base.index_select(0, src) + ty * tx_n + tx  # global tile id [M]
    # pairs were generated front to back: a stable sort by tile keeps depth order (int16 keys sort faster)
    perm = torch.sort(tile.to(torch.int16) if n_tiles <= 32767 else tile, stable=True).indices
    tile = tile.index_select(0, perm)
    ids = ids.index_select(0, perm)
    count = torch.bincount(tile, minlength=n_tiles)
    start = torch.cumsum(count, 0) - count
    return TileIsects(ids, start, count, tile_size, tx_n, ty_n, C)


class _Workspace:
    """Reusable ``[B, P, K]`` buffers of one worker: fresh large allocations page-fault on every touch on CPU."""

    def __init__(self, B: int, P: int, K: int, dtype: torch.dtype, device: torch.device):
        self.B, self.P, self.K, self.dtype, self.device = B, P, K, dtype, device
        self._bufs: dict[str, Tensor] = {}

    def get(self, name: str, B: int, extra: int = 0) -> Tensor:
        buf = self._bufs.get(name)
        if buf is None:
            buf = self._bufs[name] = torch.empty(self.B * self.P * (self.K + extra), dtype=self.dtype,
                                                 device=self.device)
        return buf[: B * self.P * (self.K + extra)].view(B, self.P, self.K + extra)


def _below(x: float, dtype: torch.dtype) -> float:
    """The largest ``dtype`` value below ``x`` (so that ``v > _below(x)`` is ``v >= x`` in ``dtype``)."""
    t = torch.tensor(x, dtype=dtype)
    return float(torch.nextafter(t, torch.tensor(-float("inf"), dtype=dtype)))


def _pair_alpha(ws: _Workspace | None, rows: Tensor, ctr: Tensor, basis: Tensor, T0: Tensor
                ) -> tuple[Tensor, Tensor]:
    """``alpha`` ``[B, P, K]`` (0 where below 1/255) and ``buf`` ``[B, P, K+1]`` (T before each Gaussian,
    ``buf[..., 0] = T0``) of a batch: ``rows`` ``[B, K, 6+F]`` (mx, my, a, b, c, o, features), ``ctr``
    ``[B, 2]`` tile centres, ``basis`` ``[P, 6]`` = (1, u, v, u^2, uv, v^2) of the tile-centred pixels.

    ``log(o) - sigma`` is a quadratic in the pixel offset ``(u, v)``: its 6 coefficients per pair times
    ``basis`` is one ``bmm`` instead of ~10 elementwise passes over the pairs. ``ws=None`` allocates (the
    forward pass keeps these for the backward)."""
    B, K = rows.shape[:2]
    mx = rows[..., 0] - ctr[:, 0, None]  # [B, K] offsets of the means from the tile centre
    my = rows[..., 1] - ctr[:, 1, None]
    a, b, c, o = rows[..., 2], rows[..., 3], rows[..., 4], rows[..., 5]
    ax, cy = a * mx, c * my
    coef = torch.stack([torch.log(o) - (0.5 * (ax * mx + cy * my) + b * mx * my), ax + b * my, cy + b * mx,
                        -0.5 * a, -b, -0.5 * c], 1)  # [B, 6, K]
    if ws is None:
        alpha = torch.empty(B, basis.shape[0], K, dtype=rows.dtype, device=rows.device)
        buf = torch.empty(B, basis.shape[0], K + 1, dtype=rows.dtype, device=rows.device)
    else:
        alpha, buf = ws.get("alpha", B), ws.get("buf", B, extra=1)
    torch.bmm(basis.expand(B, -1, -1), coef, out=alpha)  # log(o) - sigma
    alpha.clamp_min_(-60.0)  # exp underflow (and -inf) takes a slow path in the vectorised exp; alpha < 1/255 there
    alpha.exp_().clamp_max_(MAX_ALPHA)
    torch.nn.functional.threshold_(alpha, _below(ALPHA_THRESHOLD, alpha.dtype), 0.0)
    buf[..., 0] = T0
    torch.sub(1.0, alpha, out=buf[..., 1:])
    torch.cumprod(buf, -1, out=buf)
    return alpha, buf


def _weights(ws: _Workspace, alpha: Tensor, buf: Tensor) -> tuple[Tensor, Tensor]:
    """``mask`` (1. on the composited prefix: T after the Gaussian stays > T_EPS; T is monotone, so this is
    a prefix) and the compositing weights ``w = T alpha mask``, both ``[B, P, K]``."""
    B = alpha.shape[0]
    mask = torch.gt(buf[..., 1:], T_EPS, out=ws.get("mask", B))
    w = torch.mul(buf[..., :-1], alpha, out=ws.get("w", B))
    w *= mask
    return mask, w


def _compiled_kernels():
    from .tiled_compiled import kernels

    return kernels()


def _positions(start: Tensor, count: Tensor, step: int, k: int, pad: int) -> Tensor:
    """Positions ``[B*K]`` in the sorted pair list of depth step ``step`` of tiles with list ``start`` and
    ``count`` ``[B]``; ``pad`` (the padding slot) past the end of a tile's list."""
    j = step * k + torch.arange(k, device=start.device)
    pos = start[:, None] + j
    return torch.where(j < count[:, None], pos, torch.full_like(pos, pad)).reshape(-1)


def _run_groups(fn, n_groups: int, device: torch.device) -> list:
    """``[fn(0), ..., fn(n_groups - 1)]``, on ``n_groups`` threads with one intra-op thread each (CPU;
    :func:`forward3d.threads.run_workers`). Each group is a disjoint set of tiles with its own buffers, so the
    groups share nothing they write."""
    return run_workers(fn, list(range(n_groups)), n_groups)


def _n_groups(device: torch.device, n_tiles: int, workers: int | None) -> int:
    """Worker threads for the compositing: ``workers``, by default the intra-op thread count on CPU and one
    on GPUs (whose kernels are asynchronous anyway)."""
    if workers is None:
        workers = torch.get_num_threads() if device.type == "cpu" else 1
    if workers <= 0:
        raise ValueError(f"composite_tiled: workers must be positive, found {workers}")
    return max(1, min(workers, n_tiles))


class _Composite(torch.autograd.Function):
    """``(params [CN, 6], feats [CN, F]) -> (acc [n_tiles, F, P], T [n_tiles, P])``.

    Per batch, the rows of its Gaussians are gathered from ``tab`` ``[CN + 1, 6 + F]`` (the last row a
    transparent padding Gaussian). The tiles are dealt to ``_n_groups`` worker threads (tile ``t`` to
    group ``t % n``: neighbouring tiles have similar list lengths, so the groups get similar work).
    """

    @staticmethod
    def forward(ctx, params: Tensor, feats: Tensor, isects: TileIsects, ctr: Tensor, basis: Tensor,
                T_init: Tensor, k_step: int, chunk_size: int, compiled: bool = False, workers: int | None = None):
        dtype, device = params.dtype, params.device
        kern = _compiled_kernels() if compiled else None
        F = feats.shape[1]
        P, K = basis.shape[0], k_step
        tab = torch.cat([torch.cat([params, feats], 1), params.new_zeros(1, 6 + F)], 0)  # [CN+1, 6+F]
        ids = isects.ids
        pad = ids.numel()
        ids = torch.cat([ids, ids.new_full((1,), params.shape[0])])  # pair -> Gaussian, pad last
        acc = torch.zeros(isects.n_tiles, F, P, dtype=dtype, device=device)
        T_fin = T_init.clone()
        per_batch = max(1, chunk_size // (P * K))
        save = any(ctx.needs_input_grad[:2])
        # keep alpha and T of every pair for the backward pass when that fits the budget, else recompute
        keep = save and int(((isects.count + K - 1) // K).sum()) * K * P <= SAVE_PAIRS_BUDGET
        # the compiled kernels run their own OpenMP loops (and dynamo's caches are not meant for concurrent
        # first calls): one group
        n_groups = 1 if kern is not None else _n_groups(device, isects.n_tiles, workers)
        tiles_all = torch.arange(isects.n_tiles, device=device)
        groups = [tiles_all[g::n_groups] for g in range(n_groups)]

        def run(g: int) -> list:
            gt = groups[g]
            start, count = isects.start[gt], isects.count[gt]
            T_run = T_init[gt].clone()
            T_end = T_run.clone()
            acc_g = torch.zeros(gt.numel(), F, P, dtype=dtype, device=device)
            ctr_g = ctr[gt]
            ws = _Workspace(per_batch, P, K, dtype, device)
            steps: list[tuple[Tensor, Tensor, list]] = []  # (active tiles, T at step start, kept batches)
            active = torch.nonzero(count > 0).squeeze(1)
            step = 0
            while active.numel():
                kept: list = []
                if save:
                    steps.append((active, T_run[active], kept))
                for loc in torch.split(active, per_batch):
                    B = loc.numel()
                    rows = tab.index_select(0, ids.index_select(0, _positions(start[loc], count[loc], step, K, pad)))
                    rows = rows.view(B, K, 6 + F)
                    T0 = T_run[loc]
                    if kern is not None:
                        ux, uy = basis[:, 1], basis[:, 2]
                        c = ctr_g[loc]
                        acc_b, T_after, T_last, alpha, buf = kern["forward"](
                            c[:, 0, None] + ux, c[:, 1, None] + uy, rows[..., :6].permute(2, 0, 1), T0,
                            rows[..., 6:].transpose(1, 2))
                        acc_g.index_add_(0, loc, acc_b)
                        T_end[loc] = torch.where(T0 > T_EPS, T_after, T_end[loc])
                        T_run[loc] = T_last
                        if keep:
                            kept.append((alpha, buf))
                        continue
                    alpha, buf = _pair_alpha(None if keep else ws, rows, ctr_g[loc], basis, T0)
                    mask, w = _weights(ws, alpha, buf)
                    f = rows[..., 6:].transpose(1, 2).contiguous()  # [B, F, K]
                    acc_g.index_add_(0, loc, torch.bmm(f, w.transpose(1, 2)))  # [B, F, P]
                    n = mask.sum(-1, keepdim=True).long()
                    T_end[loc] = torch.where(T0 > T_EPS, buf.gather(-1, n).squeeze(-1), T_end[loc])
                    T_run[loc] = buf[..., -1]
                    if keep:
                        kept.append((alpha, buf))
                step += 1
                active = active[count[active] > step * K]
                active = active[(T_run[active] > T_EPS).any(1)]
            acc[gt] = acc_g
            T_fin[gt] = T_end
            return steps

        group_steps = _run_groups(run, n_groups, device)
        ctx.isects, ctx.groups, ctx.group_steps, ctx.k_step, ctx.per_batch, ctx.kern = (
            isects, groups, group_steps, K, per_batch, kern)
        ctx.save_for_backward(tab, ids, T_fin, ctr, basis)
        return acc, T_fin

    @staticmethod
    def backward(ctx, g_acc: Tensor, g_T: Tensor):
        tab, ids, T_fin, ctr, basis = ctx.saved_tensors
        isects, K, per_batch = ctx.isects, ctx.k_step, ctx.per_batch
        F = tab.shape[1] - 6
        P = basis.shape[0]
        pad = ids.numel() - 1
        dtype, device = tab.dtype, tab.device
        g_acc = g_acc.contiguous()
        # what lies behind each pair, per pixel: sum_{j later} w_j G_j + T_fin dL/dT
        S_all = T_fin * g_T
        upper = torch.triu(torch.ones(K, K, dtype=dtype, device=device), diagonal=1).T  # [j, k] = j > k
        basis_t = basis.T.contiguous()[None]  # [1, 6, P]

        def run(g: int) -> Tensor:
            gt = ctx.groups[g]
            start, count = isects.start[gt], isects.count[gt]
            S = S_all[gt]
            ga_g, ctr_g = g_acc[gt], ctr[gt]
            ws = _Workspace(per_batch, P, K, dtype, device)
            g_tab = torch.zeros(tab.shape[0], 6 + F, dtype=dtype, device=device)
            steps = ctx.group_steps[g]
            for step in range(len(steps) - 1, -1, -1):
                active, T_start, kept = steps[step]
                for i, (loc, T0) in enumerate(zip(torch.split(active, per_batch), torch.split(T_start, per_batch))):
                    B = loc.numel()
                    gid = ids.index_select(0, _positions(start[loc], count[loc], step, K, pad))
                    rows = tab.index_select(0, gid).view(B, K, 6 + F)
                    c = ctr_g[loc]
                    if ctx.kern is not None:
                        prm = rows[..., :6].permute(2, 0, 1)
                        if kept:
                            alpha, buf = kept[i]
                        else:
                            alpha, buf = ctx.kern["alpha"](c[:, 0, None] + basis[:, 1], c[:, 1, None] + basis[:, 2],
                                                           prm, T0)
                        gg, g_f, S[loc] = ctx.kern["backward"](prm, alpha, buf, rows[..., 6:].transpose(1, 2),
                                                               ga_g[loc], S[loc], upper, basis_t,
                                                               c.T)
                        g_tab.index_add_(0, gid, torch.cat([gg.reshape(-1, 6), g_f.reshape(-1, F)], 1))
                        continue
                    alpha, buf = kept[i] if kept else _pair_alpha(ws, rows, c, basis, T0)
                    mask, w = _weights(ws, alpha, buf)
                    ga = ga_g[loc]  # [B, F, P]
                    g_f = torch.bmm(ga, w)  # [B, F, K]
                    f = rows[..., 6:].transpose(1, 2).contiguous()  # [B, F, K]
                    G = torch.bmm(ga.transpose(1, 2), f, out=ws.get("G", B))  # [B, P, K]: dL/dw
                    wG = G.mul_(w)
                    behind = torch.mm(wG.view(-1, K), upper, out=ws.get("behind", B).view(-1, K)).view(B, P, K)
                    S_t = S[loc]
                    behind += S_t[..., None]
                    S[loc] = S_t + wG.sum(-1)
                    # -dL/dsigma = alpha (T dL/dw - behind / (1 - alpha)) on composited pairs = wG - behind r
                    # with r = mask alpha / (1 - alpha); no gradient where alpha was clamped to MAX_ALPHA
                    r = torch.sub(1.0, alpha, out=ws.get("r", B))
                    torch.div(alpha, r, out=r)
                    r *= mask
                    behind *= r
                    H = wG.sub_(behind)
                    if bool(alpha.max() >= MAX_ALPHA):
                        H.masked_fill_(alpha >= MAX_ALPHA, 0.0)
                    # sums over pixels of dL/dsigma times 1, x, y, x^2, xy, y^2 (tile-centred coordinates) in
                    # one bmm; then sum dL/dsigma * (dx, dy, dx^2, dx dy, dy^2) follow with dx = mx - x
                    mom = torch.bmm(basis_t.expand(B, -1, -1), H).neg_()  # [B, 6, K]
                    S0, Sx, Sy, Sxx, Sxy, Syy = mom.unbind(1)
                    mx, my = rows[..., 0] - c[:, 0, None], rows[..., 1] - c[:, 1, None]  # [B, K]
                    s_x = mx * S0 - Sx
                    s_y = my * S0 - Sy
                    s_xx = mx * mx * S0 - 2 * mx * Sx + Sxx
                    s_xy = mx * my * S0 - mx * Sy - my * Sx + Sxy
                    s_yy = my * my * S0 - 2 * my * Sy + Syy
                    a, b, cc, o = rows[..., 2], rows[..., 3], rows[..., 4], rows[..., 5]
                    g_o = torch.where(o > 0, -S0 / o.clamp_min(1e-30), torch.zeros_like(o))  # sum dL/dalpha e^-sigma
                    gg = torch.stack([a * s_x + b * s_y, cc * s_y + b * s_x, 0.5 * s_xx, s_xy, 0.5 * s_yy, g_o], -1)
                    g_tab.index_add_(0, gid, torch.cat([gg, g_f.transpose(1, 2)], -1).view(-1, 6 + F))
            return g_tab

        parts = _run_groups(run, len(ctx.groups), device)
        g_tab = parts[0]
        for p in parts[1:]:
            g_tab += p
        return g_tab[:-1, :6], g_tab[:-1, 6:], None, None, None, None, None, None, None, None


def composite_tiled(
    params: Tensor,  # [C*N, 6]: mx, my, conic a, b, c, opacity
    feats: Tensor,  # [C*N, F]
    isects: TileIsects,
    width: int,
    height: int,
    k_step: int = 64,
    chunk_size: int = 1 << 18,
    compiled: bool = False,
    workers: int | None = None,
) -> tuple[Tensor, Tensor]:
    """Composite features ``[C, H, W, F]`` and final transmittance ``[C, H, W]`` (differentiable).

    ``compiled`` uses the ``torch.compile`` kernels of :mod:`forward3d.render.tiled_compiled`. ``workers``
    threads composite disjoint sets of tiles, each with one intra-op thread (default: the intra-op thread
    count on CPU, 1 on GPUs); the result does not depend on it beyond float summation order."""
    ts = isects.tile_size
    C, TH, TW = isects.n_cams, isects.tiles_y, isects.tiles_x
    dtype, device = params.dtype, params.device
    # tile centres [n_tiles, 2] and tile-centred pixel offsets (u, v) -> basis [P, 6] = 1, u, v, u^2, uv, v^2
    t = torch.arange(TH * TW, device=device)
    ctr = (torch.stack([t % TW, torch.div(t, TW, rounding_mode="floor")], 1) * ts + 0.5 * ts).to(dtype).repeat(C, 1)
    pc = torch.arange(ts, dtype=dtype, device=device) + 0.5 - 0.5 * ts
    vv, uu = torch.meshgrid(pc, pc, indexing="ij")
    uu, vv = uu.reshape(-1), vv.reshape(-1)
    basis = torch.stack([torch.ones_like(uu), uu, vv, uu * uu, uu * vv, vv * vv], 1)  # [P, 6]
    # pixels outside the image start saturated (T = 0): never composited, never keep a tile alive
    px, py = ctr[:, 0, None] + uu, ctr[:, 1, None] + vv  # [n_tiles, P]
    T_init = ((px < width) & (py < height)).to(dtype)
    acc, T = _Composite.apply(params, feats, isects, ctr, basis, T_init, k_step, chunk_size, compiled, workers)

    def untile(x: Tensor) -> Tensor:
        x = x.reshape(C, TH, TW, ts, ts, *x.shape[2:]).transpose(2, 3)
        return x.reshape(C, TH * ts, TW * ts, *x.shape[5:])[:, :height, :width]

    return untile(acc.transpose(1, 2)), untile(T)


CpuKernel = Literal["auto", "numba", "torch"]
CPU_KERNELS = ("auto", "numba", "torch")


def resolve_cpu_kernel(cpu_kernel: str, params: Tensor, compiled: bool = False) -> str:
    """The compositing kernel for tensors like ``params``: ``"numba"`` (the compiled CPU kernel of
    :mod:`forward3d.render.tiled_numba`) or ``"torch"``. ``"auto"`` picks numba for CPU float32/float64
    tensors when numba is installed and ``compiled`` (the ``torch.compile`` kernels) is off; ``"numba"``
    forces it (error when impossible); ``"torch"`` forces the vectorised torch path."""
    if cpu_kernel not in CPU_KERNELS:
        raise ValueError(f"rasterize: cpu_kernel expected one of {CPU_KERNELS}, found {cpu_kernel!r}")
    if cpu_kernel == "torch":
        return "torch"
    from .tiled_numba import numba_available

    fits = params.device.type == "cpu" and params.dtype in (torch.float32, torch.float64)
    if cpu_kernel == "numba":
        if not fits:
            raise ValueError(f"rasterize: cpu_kernel='numba' needs CPU float32/float64 tensors, found "
                             f"{params.device} {params.dtype}")
        if compiled:
            raise ValueError("rasterize: cpu_kernel='numba' and compile=True exclude each other")
        if not numba_available():
            raise ImportError("rasterize: cpu_kernel='numba' needs numba: pip install forward3d[fast]")
        return "numba"
    return "numba" if fits and not compiled and numba_available() else "torch"


def render_tiled(prep: Prepared, width: int, height: int, tile_size: int = 16, chunk_size: int = 1 << 18,
                 k_step: int = 64, compiled: bool = False, workers: int | None = None,
                 cpu_kernel: CpuKernel = "auto") -> RenderOutput:
    """Render every camera of ``prep`` with the tiled path (compositing kernel: :func:`resolve_cpu_kernel`;
    ``chunk_size``, ``k_step``, ``workers`` and ``compiled`` concern the torch kernel only)."""
    p = prep.proj
    C, N = p.depths.shape
    kernel = resolve_cpu_kernel(cpu_kernel, p.means2d, compiled)
    packed = p.packed.reshape(C * N, 8) if kernel == "numba" and p.packed is not None else None
    if packed is not None:  # the compiled projection's rows, used as they are (no gradient flows through them)
        params = packed[:, :6]
    else:
        params = torch.cat([p.means2d, p.conics, p.opacities[..., None]], -1).reshape(C * N, 6)
    feats = prep.features.reshape(C * N, prep.features.shape[-1])
    if kernel == "numba":
        from .numba_prepare import intersect_tiles_numba

        isects = intersect_tiles_numba(p.means2d, p.extents, p.depths, p.radii > 0, width, height, tile_size)
    else:
        isects = intersect_tiles(p.means2d, p.extents, p.depths, p.radii > 0, width, height, tile_size)
    if kernel == "numba":
        from .tiled_numba import composite_numba

        acc, T = composite_numba(params, feats, p.extents.reshape(C * N, 2), isects, width, height, packed=packed)
    else:
        acc, T = composite_tiled(params, feats, isects, width, height, k_step=k_step, chunk_size=chunk_size,
                                 compiled=compiled, workers=workers)
    return finish(prep, acc, T, make_meta(prep, "torch", n_isects=int(isects.ids.numel()), tile_size=tile_size,
                                          kernel=kernel))
