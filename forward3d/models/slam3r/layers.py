"""Building blocks of the SLAM3R ViTs in plain PyTorch: RoPE-2D, attention, MLP and blocks.

Parameter names follow the reference (CroCo/DUSt3R/SLAM3R) so published state_dicts load as is.
Attention goes through :func:`torch.nn.functional.scaled_dot_product_attention`. Under bf16 / fp16
autocast, the parts named by each module's ``precision`` (:class:`~.precision.MixedPrecision`; residual
stream, attention, RoPE) run in fp32; without autocast the flags change nothing.

Shapes: ``N`` = batch of views, ``T`` = tokens per view, ``C`` = width, ``h`` = heads,
``d`` = head dim (``C / h``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .precision import MixedPrecision, autocast_active, fp32, no_autocast

__all__ = ["RoPE2D", "apply_rope", "rope_tables", "Mlp", "Attention", "CrossAttention", "Block",
           "MultiviewDecoderBlock", "grid_positions", "LayerNorm", "attend"]

LN_EPS = 1e-6
# Max elements of one expanded (target view, other view) pair tensor in the multiview cross-attention;
# larger products are processed in chunks of other views (running max), which bounds peak memory.
PAIR_CHUNK_ELEMENTS = 1 << 24


def grid_positions(rows: int, cols: int, device: torch.device | str | None = None) -> Tensor:
    """Integer (row, col) positions of a ``rows x cols`` patch grid in row-major order: [T, 2] int64."""
    r = torch.arange(rows, device=device)
    c = torch.arange(cols, device=device)
    return torch.cartesian_prod(r, c)


def rope_tables(pos: Tensor, head_dim: int, base: float = 100.0) -> tuple[Tensor, Tensor]:
    """cos/sin tables of RoPE-2D for integer positions ``pos`` [..., T, 2] (row, col).

    Returns two fp32 tensors [..., T, head_dim]: channels [0, d/2) use the row, [d/2, d) the column;
    inside a half of size D = d/2, channel j and j + D/2 share the frequency ``base^(-2j/D)``
    (rotate-half pairing). Computed in fp32 exactly as the reference does.
    """
    if head_dim % 4:
        raise ValueError(f"RoPE-2D: head_dim must be a multiple of 4, found {head_dim}")
    if pos.shape[-1] != 2:
        raise ValueError(f"RoPE-2D: pos must be [..., T, 2], found {tuple(pos.shape)}")
    D = head_dim // 2
    inv_freq = 1.0 / (base ** (torch.arange(0, D, 2, device=pos.device).float() / D))  # [D/2]
    fr = pos[..., 0:1].float() * inv_freq  # [..., T, D/2]
    fc = pos[..., 1:2].float() * inv_freq
    freqs = torch.cat((fr, fr, fc, fc), dim=-1)  # [..., T, d]
    return freqs.cos(), freqs.sin()


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor, dtype: torch.dtype | None = None) -> Tensor:
    """Rotate ``x`` [..., T, d] with tables [..., T, d] (broadcast); computed in fp32 (fp64 for fp64
    inputs), returned in x.dtype. ``dtype``: compute in and return that dtype instead (tables cast).

    Equals ``x * cos + rotate_half(x) * sin`` per axis half, written as one multiply, one flip (the
    half swap) and one fused multiply-add.
    """
    d = x.shape[-1]
    if dtype is not None:
        xf, cos, sin = x.to(dtype), cos.to(dtype), sin.to(dtype)
    else:
        xf = x if x.dtype == torch.float64 else x.float()
    sign = ((torch.arange(d, device=x.device) // (d // 4) % 2) * 2 - 1).to(sin.dtype)  # -1: first quarter-pairs
    swapped = xf.unflatten(-1, (2, 2, d // 4)).flip(-2).flatten(-3)
    return torch.addcmul(xf * cos, swapped, sin * sign).to(dtype or x.dtype)


def rope_qk(x: Tensor, cos: Tensor, sin: Tensor, precision: MixedPrecision) -> Tensor:
    """RoPE on q / k under ``precision``: without autocast, :func:`apply_rope`; under autocast, fp32 in
    and out (``precision.rope``) or computed in the autocast dtype."""
    if not autocast_active(x):
        return apply_rope(x, cos, sin)
    return apply_rope(x, cos, sin, torch.float32 if precision.rope else torch.get_autocast_dtype(x.device.type))


def attend(q: Tensor, k: Tensor, v: Tensor, precision: MixedPrecision) -> Tensor:
    """SDPA; under autocast with ``precision.attention`` from fp32 q, k, v with autocast off (fp32
    scores, softmax and weighted sum; fp32 output)."""
    if precision.attention and autocast_active(q):
        with no_autocast(q.device):
            return F.scaled_dot_product_attention(q.float(), k.float(), v.float())
    return F.scaled_dot_product_attention(q, k, v)


class LayerNorm(nn.LayerNorm):
    """``nn.LayerNorm`` that also takes fp32 inputs when its parameters are bf16 / fp16 (computed in
    fp32 then); otherwise identical (same keys, same results)."""

    def forward(self, x: Tensor) -> Tensor:
        if x.dtype == torch.float32 and self.weight is not None and self.weight.dtype != torch.float32:
            return F.layer_norm(x, self.normalized_shape, self.weight.float(),
                                None if self.bias is None else self.bias.float(), self.eps)
        return super().forward(x)


class RoPE2D:
    """RoPE-2D with a small cache of tables for patch grids (no parameters, no buffers)."""

    def __init__(self, base: float = 100.0) -> None:
        self.base = float(base)
        self._cache: dict[tuple, tuple[Tensor, Tensor]] = {}

    def tables(self, grid: tuple[int, int] | Tensor, head_dim: int, device: torch.device) -> tuple[Tensor, Tensor]:
        """Tables for a (rows, cols) grid ([T, d], cached) or for explicit positions [..., T, 2]."""
        if isinstance(grid, Tensor):
            return rope_tables(grid.to(device), head_dim, self.base)
        key = (int(grid[0]), int(grid[1]), head_dim, str(device))
        if key not in self._cache:
            if len(self._cache) > 32:
                self._cache.clear()
            with torch.inference_mode(False), torch.no_grad():
                self._cache[key] = rope_tables(grid_positions(grid[0], grid[1], device), head_dim, self.base)
        return self._cache[key]

    def __call__(self, x: Tensor, pos: Tensor) -> Tensor:
        """Standalone RoPE: ``x`` [B, h, T, d], ``pos`` [B, T, 2] or [T, 2] -> [B, h, T, d]."""
        cos, sin = rope_tables(pos.to(x.device), x.shape[-1], self.base)
        if cos.dim() == 3:
            cos, sin = cos[:, None], sin[:, None]
        return apply_rope(x, cos, sin)


class Mlp(nn.Module):
    """fc1 -> exact GELU -> fc2."""

    def __init__(self, dim: int, hidden: int, out: int | None = None) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, out or dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


def _heads(x: Tensor, h: int) -> Tensor:
    """[..., T, C] -> [..., h, T, C/h]."""
    return x.unflatten(-1, (h, x.shape[-1] // h)).transpose(-3, -2)


class Attention(nn.Module):
    """Self-attention with RoPE on q and k (keys ``qkv``, ``proj``); no RoPE when the tables are None.

    ``precision`` (attribute, set by ``SLAM3RBase.set_precision``): fp32 parts under autocast.
    """

    precision: MixedPrecision = MixedPrecision()

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor, cos: Tensor | None = None, sin: Tensor | None = None) -> Tensor:
        """``x`` [N, T, C], tables [T, d] (or None: no RoPE) -> [N, T, C]."""
        N, T, C = x.shape
        h = self.num_heads
        qkv = self.qkv(x).view(N, T, 3, h, C // h).permute(2, 0, 3, 1, 4)  # [3, N, h, T, d]
        if cos is None or sin is None:
            q, k = qkv[0], qkv[1]
        else:
            q, k = rope_qk(qkv[:2], cos, sin, self.precision).unbind(0)  # q and k rotated in one pass
        v = qkv[2]
        o = attend(q, k, v, self.precision)
        return self.proj(o.transpose(1, 2).reshape(N, T, C))


class CrossAttention(nn.Module):
    """Cross-attention projections (keys ``projq``, ``projk``, ``projv``, ``proj``).

    The attention itself is computed by :class:`MultiviewDecoderBlock`, batched over view pairs.
    """

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.projq = nn.Linear(dim, dim)
        self.projk = nn.Linear(dim, dim)
        self.projv = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)


class Block(nn.Module):
    """Pre-norm ViT encoder block (keys ``norm1``, ``attn``, ``norm2``, ``mlp``).

    ``precision.residual``: under autocast the residual stream (input, output) is fp32.
    """

    precision: MixedPrecision = MixedPrecision()

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.norm1 = LayerNorm(dim, eps=LN_EPS)
        self.attn = Attention(dim, num_heads)
        self.norm2 = LayerNorm(dim, eps=LN_EPS)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: Tensor, cos: Tensor | None = None, sin: Tensor | None = None) -> Tensor:
        """``x`` [N, T, C] -> [N, T, C] (RoPE tables [T, d], or None for no RoPE)."""
        r = self.precision.residual
        x = fp32(x, r)
        x = fp32(x + self.attn(self.norm1(x), cos, sin), r)
        return fp32(x + self.mlp(self.norm2(x)), r)


class MultiviewDecoderBlock(nn.Module):
    """SLAM3R ``MultiviewDecoderBlock_max``: self-attention, cross-attention of each target view
    against EACH view of the other stack separately (each result through ``cross_attn.proj``),
    element-wise max over those views, then the MLP.

    Keys: ``norm1``, ``attn``, ``cross_attn.{projq,projk,projv,proj}``, ``norm2``, ``norm3``,
    ``mlp``, ``norm_y`` (the reference registration order). ``precision``: fp32 parts under autocast
    (residual stream of ``x``, attention, RoPE).
    """

    precision: MixedPrecision = MixedPrecision()

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.norm1 = LayerNorm(dim, eps=LN_EPS)
        self.attn = Attention(dim, num_heads)
        self.cross_attn = CrossAttention(dim, num_heads)
        self.norm2 = LayerNorm(dim, eps=LN_EPS)
        self.norm3 = LayerNorm(dim, eps=LN_EPS)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.norm_y = LayerNorm(dim, eps=LN_EPS)

    def self_part(self, x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        """``x + SelfAttn(norm1 x)`` for ``x`` [B, V, T, C]."""
        B, V, T, C = x.shape
        x = fp32(x, self.precision.residual)
        return fp32(x + self.attn(self.norm1(x).reshape(B * V, T, C), cos, sin).view(B, V, T, C),
                    self.precision.residual)

    def cross_part(self, x: Tensor, y: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        """``max_m proj(CrossAttn(norm2 x, norm_y y_m))`` for ``x`` [Bx, Vx, T, C] and ``y`` [By, Vy, S, C].

        ``Bx`` and ``By`` are equal or one of them is 1 (broadcast). Returns [max(Bx, By), Vx, T, C].
        All (target, other) view pairs go through one batched SDPA call (in chunks of other views
        when the pair tensor is large, keeping a running max).
        """
        Bx, Vx, T, C = x.shape
        By, Vy, S, _ = y.shape
        if Bx != By and 1 not in (Bx, By):
            raise ValueError(f"cross-attention batch sizes differ: x {tuple(x.shape)}, y {tuple(y.shape)}")
        if Vy < 1:
            raise ValueError(f"cross-attention needs at least one other view, found y {tuple(y.shape)}")
        B = max(Bx, By)
        h = self.num_heads
        d = C // h
        ca = self.cross_attn
        prec = self.precision
        q = rope_qk(_heads(ca.projq(self.norm2(x)), h), cos, sin, prec)  # [Bx, Vx, h, T, d]
        yn = self.norm_y(fp32(y, prec.residual))
        k = rope_qk(_heads(ca.projk(yn), h), cos, sin, prec)  # [By, Vy, h, S, d]
        v = _heads(ca.projv(yn), h)
        if prec.attention and autocast_active(q):  # expand fp32 copies once (not per chunk and call)
            q, k, v = q.float(), k.float(), v.float()
        per_other = B * Vx * T * C
        chunk = max(1, PAIR_CHUNK_ELEMENTS // max(per_other, 1))
        out = q.new_empty(0)
        for s0 in range(0, Vy, chunk):
            c = min(chunk, Vy - s0)
            qe = q[:, :, None].expand(B, Vx, c, h, T, d).reshape(B * Vx * c, h, T, d)
            ke = k[:, None, s0:s0 + c].expand(B, Vx, c, h, S, d).reshape(B * Vx * c, h, S, d)
            ve = v[:, None, s0:s0 + c].expand(B, Vx, c, h, S, d).reshape(B * Vx * c, h, S, d)
            o = attend(qe, ke, ve, prec)  # [B*Vx*c, h, T, d]
            o = o.view(B, Vx, c, h, T, d).permute(0, 1, 2, 4, 3, 5).reshape(B, Vx, c, T, C)
            o = ca.proj(o).amax(dim=2)
            out = o if s0 == 0 else torch.maximum(out, o)
        return out

    def mlp_part(self, x: Tensor) -> Tensor:
        return fp32(x + self.mlp(self.norm3(x)), self.precision.residual)

    def forward(self, x: Tensor, y: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        """Target views ``x`` [Bx, Vx, T, C] query the other stack's views ``y`` [By, Vy, S, C]
        (previous-layer outputs). Returns [max(Bx, By), Vx, T, C]."""
        x = self.self_part(x, cos, sin)
        x = fp32(x + self.cross_part(x, y, cos, sin), self.precision.residual)
        return self.mlp_part(x)
