"""Fast tiled rasterizer in plain PyTorch (CPU or GPU): vectorised over tiles, pixels and Gaussians.

Algorithm (same maths as :mod:`forward3d.render.reference`, gsplat's tile scheme):

1. Tile intersections: each visible Gaussian covers the tiles overlapping the box of pixel centres where
   its alpha can reach 1/255 (exact half widths ``extent * sqrt(Sigma2D_xx)``, ``extent * sqrt(Sigma2D_yy)``).
   The (tile, Gaussian) pairs are expanded with ``repeat_interleave`` and sorted by one ``argsort`` of the
   key ``tile * N + depth_rank``.
2. Compositing in depth steps: step ``s`` takes the Gaussians ``[s K, (s+1) K)`` of every still-active tile
   (``K = k_step``), in batches of tiles holding at most ``chunk_size`` pixel-Gaussian pairs. For a batch
   the tensors are ``[B tiles, P = tile_size^2 pixels, K Gaussians]``: alpha for all pairs, transmittance by
   one ``cumprod`` seeded with the tile's carried ``T`` (the same multiplication order as the sequential
   loop, so ``T`` is bit-identical), the early stop as the prefix mask ``T_after > 1e-4``, and the colour
   sum as one ``bmm``. A tile drops out when its list ends or all its pixels are saturated.
3. Backward (custom :class:`torch.autograd.Function`): the steps are replayed back to front from the saved
   per-step ``T``; the "colour behind" suffix sums come from a triangular matmul (exact, no cancellation),
   and per-Gaussian gradients are reduced over pixels and scattered with ``index_add_``.

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
    m = means2d.detach().double()
    e = extents.detach().double() + _MARGIN
    # pixel columns j with |j + 0.5 - mx| <= ex, clamped to the image
    j0 = torch.ceil(m[..., 0] - e[..., 0] - 0.5).clamp(0, width - 1)
    j1 = torch.floor(m[..., 0] + e[..., 0] - 0.5).clamp(-1, width - 1)
    i0 = torch.ceil(m[..., 1] - e[..., 1] - 0.5).clamp(0, height - 1)
    i1 = torch.floor(m[..., 1] + e[..., 1] - 0.5).clamp(-1, height - 1)
    ok = visible & (j1 >= j0) & (i1 >= i0)
    tx0 = torch.div(j0, tile_size, rounding_mode="floor").long()
    tx1 = torch.div(j1, tile_size, rounding_mode="floor").long()
    ty0 = torch.div(i0, tile_size, rounding_mode="floor").long()
    ty1 = torch.div(i1, tile_size, rounding_mode="floor").long()
    nx = (tx1 - tx0 + 1).clamp_min(0)
    ny = (ty1 - ty0 + 1).clamp_min(0)
    counts = torch.where(ok, nx * ny, torch.zeros_like(nx)).reshape(-1)  # [C*N]

    # depth rank within each camera (stable: ties by index, as the reference)
    order = torch.argsort(depths.detach(), dim=1, stable=True)
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(N, device=device).expand(C, N).contiguous())

    flat = torch.nonzero(counts).squeeze(1)  # Gaussians with pairs
    cnt = counts[flat]
    M = int(cnt.sum())
    n_tiles = C * tx_n * ty_n
    if M == 0:
        z = torch.zeros(n_tiles, dtype=torch.long, device=device)
        return TileIsects(torch.zeros(0, dtype=torch.long, device=device), z, z.clone(), tile_size, tx_n, ty_n, C)
    gid = torch.repeat_interleave(flat, cnt)  # [M]
    first = torch.cumsum(cnt, 0) - cnt
    local = torch.arange(M, device=device) - torch.repeat_interleave(first, cnt)
    w = nx.reshape(-1)[gid]
    tx = tx0.reshape(-1)[gid] + local % w
    ty = ty0.reshape(-1)[gid] + torch.div(local, w, rounding_mode="floor")
    cam = torch.div(gid, N, rounding_mode="floor")
    tile = (cam * ty_n + ty) * tx_n + tx  # global tile id
    key = tile * N + rank.reshape(-1)[gid]
    perm = torch.argsort(key)
    ids = gid[perm]
    count = torch.bincount(tile, minlength=n_tiles)
    start = torch.cumsum(count, 0) - count
    return TileIsects(ids, start, count, tile_size, tx_n, ty_n, C)


def _tile_pixels(tiles: Tensor, isects: TileIsects, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """Pixel-centre coordinates ``[B, P]`` (x and y) of global tile ids ``[B]``."""
    ts = isects.tile_size
    t = tiles % (isects.tiles_x * isects.tiles_y)
    tx = t % isects.tiles_x
    ty = torch.div(t, isects.tiles_x, rounding_mode="floor")
    p = torch.arange(ts * ts, device=tiles.device)
    px = (tx[:, None] * ts + p % ts).to(dtype) + 0.5
    py = (ty[:, None] * ts + torch.div(p, ts, rounding_mode="floor")).to(dtype) + 0.5
    return px, py


def _gather(isects: TileIsects, tiles: Tensor, step: int, k: int, dummy: int) -> Tensor:
    """Gaussian ids ``[B, K]`` of depth step ``step`` of ``tiles``; ``dummy`` past the end of a list."""
    j = step * k + torch.arange(k, device=tiles.device)
    pos = isects.start[tiles, None] + j
    inside = j < isects.count[tiles, None]
    ids = isects.ids[pos.clamp_max(max(isects.ids.numel() - 1, 0))]
    return torch.where(inside, ids, torch.full_like(ids, dummy))


def _alpha(px: Tensor, py: Tensor, prm: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Pair quantities for pixels ``[B, P]`` and Gaussian parameters ``[B, K, 6]`` (mx, my, a, b, c, o).

    Returns ``dx``, ``dy`` (Gaussian minus pixel), ``vis = exp(-sigma)`` and ``alpha`` (clamped to
    ``MAX_ALPHA``, 0 where skipped), each ``[B, P, K]``. Same operation order as the reference.
    """
    mx, my, a, b, c, o = (prm[..., i, None].transpose(-1, -2) for i in range(6))  # [B, 1, K]
    dx = mx - px[..., None]
    dy = my - py[..., None]
    sigma = a * dx
    sigma *= dx
    t = c * dy
    t *= dy
    sigma += t
    sigma *= 0.5
    torch.mul(b, dx, out=t)
    t *= dy
    sigma += t
    skip = sigma < 0
    vis = torch.neg(sigma, out=sigma).exp_()
    alpha = o * vis
    alpha.clamp_max_(MAX_ALPHA)
    skip |= alpha < ALPHA_THRESHOLD
    alpha.masked_fill_(skip, 0.0)
    return dx, dy, vis, alpha


def _transmittance(alpha: Tensor, T0: Tensor) -> Tensor:
    """``buf`` ``[B, P, K+1]``: ``buf[..., k]`` = T before Gaussian k (``buf[..., 0] = T0``), unmasked."""
    B, P, K = alpha.shape
    buf = torch.empty(B, P, K + 1, dtype=alpha.dtype, device=alpha.device)
    buf[..., 0] = T0
    v = buf[..., 1:]
    torch.neg(alpha, out=v)
    v += 1.0
    torch.cumprod(buf, -1, out=buf)
    return buf


def _batches(tiles: Tensor, per_batch: int) -> list[Tensor]:
    return list(torch.split(tiles, per_batch)) if tiles.numel() else []


class _Composite(torch.autograd.Function):
    """``(params [CN, 6], feats [CN, F]) -> (acc [n_tiles, P, F], T [n_tiles, P])``."""

    @staticmethod
    def forward(ctx, params: Tensor, feats: Tensor, isects: TileIsects, T_init: Tensor, k_step: int,
                chunk_size: int):
        dtype, device = params.dtype, params.device
        F = feats.shape[-1]
        P = isects.tile_size**2
        dummy = params.shape[0]
        prm_t = torch.cat([params, params.new_zeros(1, 6)], 0)  # dummy Gaussian: opacity 0
        feat_t = torch.cat([feats, feats.new_zeros(1, F)], 0)
        acc = torch.zeros(isects.n_tiles, P, F, dtype=dtype, device=device)
        T_run = T_init.clone()
        T_fin = T_init.clone()
        per_batch = max(1, chunk_size // (P * k_step))
        active = torch.nonzero(isects.count > 0).squeeze(1)
        steps: list[tuple[Tensor, Tensor]] = []  # (active tiles, T at step start)
        step = 0
        while active.numel():
            steps.append((active, T_run[active].clone()))
            for tiles in _batches(active, per_batch):
                gid = _gather(isects, tiles, step, k_step, dummy)  # [B, K]
                px, py = _tile_pixels(tiles, isects, dtype)
                T0 = T_run[tiles]  # [B, P]
                _, _, _, alpha = _alpha(px, py, prm_t[gid])
                buf = _transmittance(alpha, T0)
                n = (buf[..., 1:] > T_EPS).sum(-1, keepdim=True)  # composited prefix length [B, P, 1]
                w = buf[..., :-1] * alpha
                w *= torch.arange(k_step, device=device) < n
                acc[tiles] += torch.bmm(w, feat_t[gid])
                T_fin[tiles] = torch.where(T0 > T_EPS, buf.gather(-1, n).squeeze(-1), T_fin[tiles])
                T_run[tiles] = buf[..., -1]
            step += 1
            more = isects.count[active] > step * k_step
            active = active[more]
            active = active[(T_run[active] > T_EPS).any(1)]
        ctx.isects, ctx.steps, ctx.k_step, ctx.per_batch = isects, steps, k_step, per_batch
        ctx.save_for_backward(prm_t, feat_t, T_fin)
        return acc, T_fin

    @staticmethod
    def backward(ctx, g_acc: Tensor, g_T: Tensor):
        prm_t, feat_t, T_fin = ctx.saved_tensors
        isects, k_step = ctx.isects, ctx.k_step
        dtype, device = prm_t.dtype, prm_t.device
        dummy = prm_t.shape[0] - 1
        g_acc = g_acc.contiguous()
        g_prm = torch.zeros_like(prm_t)
        g_feat = torch.zeros_like(feat_t)
        # "what lies behind": sum_{j later} w_j G_j + T_fin dL/dT, per pixel
        S = T_fin * g_T if g_T is not None else torch.zeros_like(T_fin)
        K = k_step
        upper = torch.triu(torch.ones(K, K, dtype=dtype, device=device), diagonal=1).T  # [j, k] = j > k
        kk = torch.arange(K, device=device)
        for step in range(len(ctx.steps) - 1, -1, -1):
            active, T_start = ctx.steps[step]
            pos = 0
            for tiles in _batches(active, ctx.per_batch):
                T0 = T_start[pos: pos + tiles.numel()]
                pos += tiles.numel()
                gid = _gather(isects, tiles, step, K, dummy)
                prm = prm_t[gid]  # [B, K, 6]
                f = feat_t[gid]  # [B, K, F]
                px, py = _tile_pixels(tiles, isects, dtype)
                dx, dy, vis, alpha = _alpha(px, py, prm)
                buf = _transmittance(alpha, T0)
                Tex = buf[..., :-1]
                n = (buf[..., 1:] > T_EPS).sum(-1, keepdim=True)
                mask = kk < n  # [B, P, K]
                w = Tex * alpha
                w *= mask
                ga = g_acc[tiles]  # [B, P, F]
                G = torch.bmm(ga, f.transpose(1, 2))  # [B, P, K]
                g_feat.index_add_(0, gid.reshape(-1), torch.bmm(w.transpose(1, 2), ga).reshape(-1, f.shape[-1]))
                wG = w * G
                S_t = S[tiles]  # [B, P]
                behind = (wG.reshape(-1, K) @ upper).reshape(wG.shape)
                behind += S_t[..., None]
                S[tiles] = S_t + wG.sum(-1)
                # dL/dalpha = T G - behind / (1 - alpha), on composited pairs where alpha is not clamped
                torch.neg(alpha, out=wG)
                wG += 1.0
                behind /= wG
                G *= Tex
                G -= behind
                raw = vis * prm[:, None, :, 5]  # o exp(-sigma)
                G *= mask & (alpha > 0) & (raw <= MAX_ALPHA)
                g_o = (G * vis).sum(1)  # [B, K]
                G *= raw
                G.neg_()  # dL/dsigma
                u = G * dx
                v = G * dy
                s_x, s_y = u.sum(1), v.sum(1)
                s_xx, s_xy, s_yy = (u * dx).sum(1), (u * dy).sum(1), (v * dy).sum(1)
                a, b, c = prm[..., 2], prm[..., 3], prm[..., 4]
                g = torch.stack([a * s_x + b * s_y, c * s_y + b * s_x, 0.5 * s_xx, s_xy, 0.5 * s_yy, g_o], -1)
                g_prm.index_add_(0, gid.reshape(-1), g.reshape(-1, 6))
        return g_prm[:-1], g_feat[:-1], None, None, None, None


def composite_tiled(
    params: Tensor,  # [C*N, 6]: mx, my, conic a, b, c, opacity
    feats: Tensor,  # [C*N, F]
    isects: TileIsects,
    width: int,
    height: int,
    k_step: int = 64,
    chunk_size: int = 1 << 20,
) -> tuple[Tensor, Tensor]:
    """Composite features ``[C, H, W, F]`` and final transmittance ``[C, H, W]`` (differentiable)."""
    ts = isects.tile_size
    C, TH, TW = isects.n_cams, isects.tiles_y, isects.tiles_x
    # pixels outside the image start saturated (T = 0): never composited, never keep a tile alive
    ys = torch.arange(TH * ts, device=params.device)[:, None] < height
    xs = torch.arange(TW * ts, device=params.device)[None, :] < width
    inside = (ys & xs).reshape(TH, ts, TW, ts).permute(0, 2, 1, 3).reshape(1, TH * TW, ts * ts)
    T_init = inside.expand(C, -1, -1).reshape(C * TH * TW, ts * ts).to(params.dtype)
    acc, T = _Composite.apply(params, feats, isects, T_init, k_step, chunk_size)

    def untile(x: Tensor) -> Tensor:
        x = x.reshape(C, TH, TW, ts, ts, *x.shape[2:]).transpose(2, 3)
        return x.reshape(C, TH * ts, TW * ts, *x.shape[5:])[:, :height, :width]

    return untile(acc), untile(T)


def render_tiled(prep: Prepared, width: int, height: int, tile_size: int = 16, chunk_size: int = 1 << 20,
                 k_step: int = 64) -> RenderOutput:
    """Render every camera of ``prep`` with the tiled path."""
    p = prep.proj
    C, N = p.depths.shape
    isects = intersect_tiles(p.means2d, p.extents, p.depths, p.radii > 0, width, height, tile_size)
    params = torch.cat([p.means2d, p.conics, p.opacities[..., None]], -1).reshape(C * N, 6)
    feats = prep.features.reshape(C * N, -1)
    acc, T = composite_tiled(params, feats, isects, width, height, k_step=k_step, chunk_size=chunk_size)
    return finish(prep, acc, T, make_meta(prep, "torch", n_isects=int(isects.ids.numel()), tile_size=tile_size))
