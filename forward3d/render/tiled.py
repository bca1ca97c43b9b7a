"""Fast tiled rasterizer in plain PyTorch (CPU or GPU): vectorised over tiles, pixels and Gaussians.

Algorithm (same maths as :mod:`forward3d.render.reference`, gsplat's tile scheme):

1. Tile intersections: each visible Gaussian covers the tiles overlapping the box of pixel centres where
   its alpha can reach 1/255 (exact half widths ``extent * sqrt(Sigma2D_xx)``, ``extent * sqrt(Sigma2D_yy)``).
   Gaussians are ordered front to back by a radix sort of the depth's float bits, the (tile, Gaussian)
   pairs expanded with ``repeat_interleave`` and stably sorted by tile (integer keys: radix sort).
2. Compositing in depth steps: step ``s`` takes the Gaussians ``[s K, (s+1) K)`` of every still-active tile
   (``K = k_step``), in batches of tiles holding at most ``chunk_size`` pixel-Gaussian pairs. For a batch
   the tensors are ``[B tiles, P = tile_size^2 pixels, K Gaussians]`` (reused workspace buffers, in-place
   ops): alpha for all pairs, transmittance by one ``cumprod`` seeded with the tile's carried ``T`` (the
   multiplication order of the sequential loop, so ``T`` and the stop decisions are bit-identical to the
   reference), the early stop as the prefix mask ``T_after > 1e-4``, and the feature sum as one ``bmm``.
   A tile drops out when its list ends or all its pixels are saturated.
3. Backward (custom :class:`torch.autograd.Function`), steps replayed back to front: per-pair alpha and T
   are read back (kept by the forward pass within ``SAVE_PAIRS_BUDGET``) or recomputed from the per-step
   ``T``; the "what lies behind" suffix sums come from a triangular matmul (exact, no cancellation); the
   pixel sums of ``dL/dsigma`` times ``1, x, y, x^2, xy, y^2`` (tile-centred) come from one ``bmm`` and give
   the gradients of the 2D mean and conic; per-Gaussian gradients are scattered with ``index_add_``.

The Python loops run over depth steps and tile batches only (tens of iterations), never over Gaussians,
pixels or single tiles.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .common import MAX_ALPHA, T_EPS, Prepared, RenderOutput, finish, make_meta
from .projection import ALPHA_THRESHOLD

__all__ = ["TileIsects", "intersect_tiles", "composite_tiled", "render_tiled"]

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
    # visible Gaussians front to back within each camera (ties by index, as the reference), cameras in order
    flat = torch.nonzero(visible.reshape(-1)).squeeze(1)  # [V]
    key = _sortable(depths.detach().reshape(-1)[flat])
    key = torch.sort(key, stable=True).indices  # radix sort on the float bits: much faster than a float sort
    cam = torch.div(flat[key], N, rounding_mode="floor")
    order = flat[key][torch.sort(cam, stable=True).indices]
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
    """Reusable ``[B, P, K]`` buffers: fresh large allocations page-fault on every touch on CPU."""

    def __init__(self, B: int, P: int, K: int, dtype: torch.dtype, device: torch.device):
        self.P, self.K, self.dtype, self.device = P, K, dtype, device
        self.B = B
        self.one = torch.ones((), dtype=dtype, device=device)
        self._bufs: dict[str, Tensor] = {}

    def get(self, name: str, B: int, extra: int = 0) -> Tensor:
        n = self.B * self.P * (self.K + extra)
        buf = self._bufs.get(name)
        if buf is None:
            buf = self._bufs[name] = torch.empty(n, dtype=self.dtype, device=self.device)
        return buf[: B * self.P * (self.K + extra)].view(B, self.P, self.K + extra)


def _below(x: float, dtype: torch.dtype) -> float:
    """The largest ``dtype`` value below ``x`` (so that ``v > _below(x)`` is ``v >= x`` in ``dtype``)."""
    t = torch.tensor(x, dtype=dtype)
    return float(torch.nextafter(t, torch.tensor(-float("inf"), dtype=dtype)))


class _Batch:
    """Pair quantities ``[B, P, K]`` of one batch of tiles at one depth step: computed, or ``saved`` by the
    forward pass (``alpha``, ``buf``, ``clamped``) and completed."""

    def __init__(self, ws: _Workspace, px: Tensor | None, py: Tensor | None, prm: Tensor, T0: Tensor,
                 saved: tuple[Tensor, Tensor, bool] | None = None):
        B, K = T0.shape[0], ws.K
        self.B, self.K = B, K
        mx, my, a, b, c, o = (prm[i].view(B, 1, K) for i in range(6))
        self.mx, self.my, self.a, self.b, self.c, self.o = mx, my, a, b, c, o
        if saved is None:
            alpha, buf, self.clamped = self._compute(ws, px, py, mx, my, a, b, c, o, T0)
        else:
            alpha, buf, self.clamped = saved
        # composited prefix: T after the Gaussian stays > T_EPS (T is monotone, so this is a prefix)
        mask = torch.gt(buf[..., 1:], T_EPS, out=ws.get("mask", B))  # as 0./1.
        w = torch.mul(buf[..., :-1], alpha, out=ws.get("w", B))
        w *= mask
        self.alpha, self.buf, self.mask, self.w = alpha, buf, mask, w

    @staticmethod
    def _compute(ws: _Workspace, px: Tensor, py: Tensor, mx: Tensor, my: Tensor, a: Tensor, b: Tensor, c: Tensor,
                 o: Tensor, T0: Tensor) -> tuple[Tensor, Tensor, bool]:
        B = T0.shape[0]
        dx = torch.sub(mx, px[..., None], out=ws.get("dx", B))
        dy = torch.sub(my, py[..., None], out=ws.get("dy", B))
        # sigma = 0.5 (a dx^2 + c dy^2) + b dx dy, in the reference's operation order
        vis = torch.mul(a, dx, out=ws.get("vis", B))
        vis *= dx
        alpha = torch.mul(c, dy, out=ws.get("alpha", B))
        alpha *= dy
        vis += alpha
        vis *= 0.5
        torch.mul(b, dx, out=alpha)
        alpha *= dy
        vis += alpha
        negative = vis < 0 if float(vis.min()) < 0 else None  # rare (rounding): skipped pairs
        vis.clamp_max_(60.0)  # exp(-60) > 0 is still a normal float (denormals are slow); alpha < 1/255 there
        vis.neg_().exp_()
        torch.mul(o, vis, out=alpha)  # o exp(-sigma)
        clamped = bool(alpha.max() > MAX_ALPHA)
        alpha.clamp_max_(MAX_ALPHA)
        torch.nn.functional.threshold_(alpha, _below(ALPHA_THRESHOLD, alpha.dtype), 0.0)
        if negative is not None:
            alpha.masked_fill_(negative, 0.0)
        # buf[..., k] = T before Gaussian k (unmasked running product seeded with the carried T)
        buf = ws.get("buf", B, extra=1)
        buf[..., 0] = T0
        torch.sub(ws.one, alpha, out=buf[..., 1:])
        torch.cumprod(buf, -1, out=buf)
        return alpha, buf, clamped

    def keep(self) -> tuple[Tensor, Tensor, bool]:
        """What the backward pass needs to skip the recomputation."""
        return self.alpha.clone(), self.buf.clone(), self.clamped

    def final_T(self, T0: Tensor, T_prev: Tensor) -> Tensor:
        """``[B, P]`` transmittance after the composited prefix (unchanged where already saturated)."""
        n = self.mask.sum(-1, keepdim=True).long()
        return torch.where(T0 > T_EPS, self.buf.gather(-1, n).squeeze(-1), T_prev)


def _compiled_kernels():
    from .tiled_compiled import kernels

    return kernels()


def _positions(isects: TileIsects, tiles: Tensor, step: int, k: int) -> Tensor:
    """Positions ``[B*K]`` in the sorted pair list of depth step ``step`` of ``tiles``; ``M`` (the padding
    slot) past the end of a tile's list."""
    j = step * k + torch.arange(k, device=tiles.device)
    pos = isects.start[tiles, None] + j
    pad = torch.full_like(pos, isects.ids.numel())
    return torch.where(j < isects.count[tiles, None], pos, pad).reshape(-1)


class _Composite(torch.autograd.Function):
    """``(params [6, CN], feats [F, CN]) -> (acc [n_tiles, F, P], T [n_tiles, P])``.

    Per batch, the parameters of its Gaussians are gathered from ``tab`` ``[6 + F, CN + 1]`` (the last
    column a transparent padding Gaussian).
    """

    @staticmethod
    def forward(ctx, params: Tensor, feats: Tensor, isects: TileIsects, pix: Tensor, T_init: Tensor,
                k_step: int, chunk_size: int, compiled: bool = False):
        dtype, device = params.dtype, params.device
        kern = _compiled_kernels() if compiled else None
        F = feats.shape[0]
        P = isects.tile_size**2
        K = k_step
        tab = torch.cat([torch.cat([params, feats], 0), params.new_zeros(6 + F, 1)], 1)  # [6+F, CN+1]
        ids = torch.cat([isects.ids, isects.ids.new_full((1,), params.shape[1])])  # pair -> Gaussian, pad last
        acc = torch.zeros(isects.n_tiles, F, P, dtype=dtype, device=device)
        T_run = T_init.clone()
        T_fin = T_init.clone()
        per_batch = max(1, chunk_size // (P * K))
        ws = _Workspace(per_batch, P, K, dtype, device)
        save = any(ctx.needs_input_grad[:2])
        # keep alpha and T of every pair for the backward pass when that fits the budget, else recompute
        keep = save and int(((isects.count + K - 1) // K).sum()) * K * P <= SAVE_PAIRS_BUDGET
        active = torch.nonzero(isects.count > 0).squeeze(1)
        steps: list[tuple[Tensor, Tensor, list]] = []  # (active tiles, T at step start, kept batches)
        step = 0
        while active.numel():
            if save:
                steps.append((active, T_run[active], []))
            for tiles in torch.split(active, per_batch):
                B = tiles.numel()
                sub = tab.index_select(1, ids.index_select(0, _positions(isects, tiles, step, K)))  # [6+F, B*K]
                T0 = T_run[tiles]
                f = sub[6:].view(F, B, K).transpose(0, 1)  # [B, F, K]
                if kern is not None:
                    acc_b, T_after, T_last, alpha, buf = kern["forward"](
                        pix[0][tiles], pix[1][tiles], sub[:6].view(6, B, K), T0, f)
                    acc[tiles] += acc_b
                    T_fin[tiles] = torch.where(T0 > T_EPS, T_after, T_fin[tiles])
                    T_run[tiles] = T_last
                    if keep:
                        steps[-1][2].append((alpha, buf, True))
                    continue
                bt = _Batch(ws, pix[0][tiles], pix[1][tiles], sub, T0)
                acc[tiles] += torch.bmm(f, bt.w.transpose(1, 2))  # [B, F, P]
                T_fin[tiles] = bt.final_T(T0, T_fin[tiles])
                T_run[tiles] = bt.buf[..., -1]
                if keep:
                    steps[-1][2].append(bt.keep())
            step += 1
            active = active[isects.count[active] > step * K]
            active = active[(T_run[active] > T_EPS).any(1)]
        ctx.isects, ctx.steps, ctx.k_step, ctx.per_batch, ctx.kern = isects, steps, K, per_batch, kern
        ctx.save_for_backward(tab, ids, T_fin, pix)
        ctx.sizes = (params.shape[1], F)
        return acc, T_fin

    @staticmethod
    def backward(ctx, g_acc: Tensor, g_T: Tensor):
        tab, ids, T_fin, pix = ctx.saved_tensors
        isects, K = ctx.isects, ctx.k_step
        n_gauss, F = ctx.sizes
        dtype, device = tab.dtype, tab.device
        P = isects.tile_size**2
        ws = _Workspace(ctx.per_batch, P, K, dtype, device)
        g_acc = g_acc.contiguous()
        g_tab = torch.zeros(tab.shape[1], 6 + F, dtype=dtype, device=device)
        # what lies behind each pair, per pixel: sum_{j later} w_j G_j + T_fin dL/dT
        S = T_fin * g_T
        upper = torch.triu(torch.ones(K, K, dtype=dtype, device=device), diagonal=1).T  # [j, k] = j > k
        ts = isects.tile_size
        pc = torch.arange(ts, dtype=dtype, device=device) + 0.5 - 0.5 * ts  # pixel offsets from the tile centre
        yy, xx = torch.meshgrid(pc, pc, indexing="ij")
        xx, yy = xx.reshape(-1), yy.reshape(-1)
        basis = torch.stack([torch.ones_like(xx), xx, yy, xx * xx, xx * yy, yy * yy])[None]  # [1, 6, P]
        pix_c = pix[:, :, 0] - pc[0]  # [2, n_tiles] tile centres
        for step in range(len(ctx.steps) - 1, -1, -1):
            active, T_start, kept = ctx.steps[step]
            batches = zip(torch.split(active, ctx.per_batch), torch.split(T_start, ctx.per_batch))
            for i, (tiles, T0) in enumerate(batches):
                B = tiles.numel()
                gid = ids.index_select(0, _positions(isects, tiles, step, K))
                sub = tab.index_select(1, gid)
                if ctx.kern is not None:
                    prm = sub[:6].view(6, B, K)
                    f = sub[6:].view(F, B, K).transpose(0, 1)
                    if kept:
                        alpha, buf = kept[i][:2]
                    else:
                        alpha, buf = ctx.kern["alpha"](pix[0][tiles], pix[1][tiles], prm, T0)
                    g, g_f, S[tiles] = ctx.kern["backward"](prm, alpha, buf, f, g_acc[tiles], S[tiles], upper, basis,
                                                            pix_c[:, tiles])
                    g_tab.index_add_(0, gid, torch.cat([g.reshape(-1, 6), g_f.reshape(-1, F)], 1))
                    continue
                if kept:
                    bt = _Batch(ws, None, None, sub, T0, saved=kept[i])
                else:
                    bt = _Batch(ws, pix[0][tiles], pix[1][tiles], sub, T0)
                f = sub[6:].view(F, B, K).transpose(0, 1)  # [B, F, K]
                ga = g_acc[tiles]  # [B, F, P]
                g_f = torch.bmm(ga, bt.w)  # [B, F, K]
                G = torch.bmm(ga.transpose(1, 2), f, out=ws.get("G", B))  # [B, P, K]: dL/dw
                wG = torch.mul(bt.w, G, out=ws.get("wG", B))
                behind = torch.mm(wG.view(-1, K), upper, out=ws.get("behind", B).view(-1, K)).view(B, P, K)
                S_t = S[tiles]
                behind += S_t[..., None]
                S[tiles] = S_t + wG.sum(-1)
                # dL/dalpha = T G - behind / (1 - alpha) on composited pairs (alpha > 0 there)
                torch.neg(bt.alpha, out=wG)
                wG += 1.0
                behind /= wG
                G *= bt.buf[..., :-1]
                G -= behind
                G *= bt.mask
                if bt.clamped:  # clamp_max passes no gradient where o exp(-sigma) > MAX_ALPHA
                    G.masked_fill_(bt.alpha >= MAX_ALPHA, 0.0)
                G *= bt.alpha  # d alpha / d sigma = -o exp(-sigma) = -alpha where it passes; 0 where skipped
                G.neg_()  # dL/dsigma [B, P, K]
                # sums over pixels of dL/dsigma times 1, x, y, x^2, xy, y^2 (tile-centred coordinates) in one
                # bmm; then sum dL/dsigma * (dx, dy, dx^2, dx dy, dy^2) follow with dx = mx - x
                mom = torch.bmm(basis.expand(B, -1, -1), G)  # [B, 6, K]
                S0, Sx, Sy, Sxx, Sxy, Syy = mom.unbind(1)
                ctr = pix_c[:, tiles]  # [2, B]
                mx, my = bt.mx[:, 0] - ctr[0][:, None], bt.my[:, 0] - ctr[1][:, None]  # [B, K]
                s_x = mx * S0 - Sx
                s_y = my * S0 - Sy
                s_xx = mx * mx * S0 - 2 * mx * Sx + Sxx
                s_xy = mx * my * S0 - mx * Sy - my * Sx + Sxy
                s_yy = my * my * S0 - 2 * my * Sy + Syy
                o = bt.o[:, 0]
                g_o = torch.where(o > 0, -S0 / o.clamp_min(1e-30), torch.zeros_like(o))  # sum dL/dalpha exp(-sigma)
                a, b, c = bt.a[:, 0], bt.b[:, 0], bt.c[:, 0]
                g = torch.stack([a * s_x + b * s_y, c * s_y + b * s_x, 0.5 * s_xx, s_xy, 0.5 * s_yy, g_o], -1)
                g_tab.index_add_(0, gid, torch.cat([g.reshape(-1, 6), g_f.transpose(1, 2).reshape(-1, F)], 1))
        return g_tab[:-1, :6].T, g_tab[:-1, 6:].T, None, None, None, None, None, None


def composite_tiled(
    params: Tensor,  # [C*N, 6]: mx, my, conic a, b, c, opacity
    feats: Tensor,  # [C*N, F]
    isects: TileIsects,
    width: int,
    height: int,
    k_step: int = 64,
    chunk_size: int = 1 << 18,
    compiled: bool = False,
) -> tuple[Tensor, Tensor]:
    """Composite features ``[C, H, W, F]`` and final transmittance ``[C, H, W]`` (differentiable).

    ``compiled`` uses the ``torch.compile`` kernels of :mod:`forward3d.render.tiled_compiled`."""
    ts = isects.tile_size
    C, TH, TW = isects.n_cams, isects.tiles_y, isects.tiles_x
    device = params.device
    # pixel centres of every tile [2, n_tiles, P]
    t = torch.arange(TH * TW, device=device)
    p = torch.arange(ts * ts, device=device)
    px = ((t % TW)[:, None] * ts + p % ts).to(params.dtype) + 0.5
    py = (torch.div(t, TW, rounding_mode="floor")[:, None] * ts + torch.div(p, ts, rounding_mode="floor")).to(
        params.dtype) + 0.5
    pix = torch.stack([px, py]).repeat(1, C, 1)
    # pixels outside the image start saturated (T = 0): never composited, never keep a tile alive
    T_init = ((pix[0] < width) & (pix[1] < height)).to(params.dtype)
    acc, T = _Composite.apply(params.T, feats.T, isects, pix, T_init, k_step, chunk_size, compiled)

    def untile(x: Tensor) -> Tensor:
        x = x.reshape(C, TH, TW, ts, ts, *x.shape[2:]).transpose(2, 3)
        return x.reshape(C, TH * ts, TW * ts, *x.shape[5:])[:, :height, :width]

    return untile(acc.transpose(1, 2)), untile(T)


def render_tiled(prep: Prepared, width: int, height: int, tile_size: int = 16, chunk_size: int = 1 << 18,
                 k_step: int = 64, compiled: bool = False) -> RenderOutput:
    """Render every camera of ``prep`` with the tiled path."""
    p = prep.proj
    C, N = p.depths.shape
    isects = intersect_tiles(p.means2d, p.extents, p.depths, p.radii > 0, width, height, tile_size)
    params = torch.cat([p.means2d, p.conics, p.opacities[..., None]], -1).reshape(C * N, 6)
    feats = prep.features.reshape(C * N, prep.features.shape[-1])
    acc, T = composite_tiled(params, feats, isects, width, height, k_step=k_step, chunk_size=chunk_size,
                             compiled=compiled)
    return finish(prep, acc, T, make_meta(prep, "torch", n_isects=int(isects.ids.numel()), tile_size=tile_size))
