"""The DINOv2 ViT of DepthSplat's monocular branch, with DINOv2's own parameter names (no torch.hub).

Built as ``torch.hub.load('facebookresearch/dinov2', 'dinov2_vit{s,b,l}14')`` builds it (518 px, patch 14,
LayerScale ``init_values=1``, MLP FFN, no register tokens, ``interpolate_offset=0.1``, no antialias),
minus ``mask_token`` (DepthSplat deletes it). Keys: ``cls_token``, ``pos_embed``, ``patch_embed.proj``,
``blocks.N.{norm1, attn.qkv, attn.proj, ls1.gamma, norm2, mlp.fc1, mlp.fc2, ls2.gamma}``, ``norm``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from forward3d.models.slam3r.layers import Mlp

from .config import ViTConfig

__all__ = ["DinoV2", "interpolate_pos_embed"]

LN_EPS = 1e-6


class _PatchEmbed(nn.Module):
    def __init__(self, patch: int, dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, dim, patch, patch)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)  # [B, h*w, C]


class _Attention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.num_heads = heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        B, T, C = x.shape
        qkv = self.qkv(x).view(B, T, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0] * (C // self.num_heads) ** -0.5, qkv[1], qkv[2]
        attn = (q @ k.transpose(-2, -1)).softmax(dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(B, T, C))


class _LayerScale(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gamma


class _Block(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=LN_EPS)
        self.attn = _Attention(dim, heads)
        self.ls1 = _LayerScale(dim)
        self.norm2 = nn.LayerNorm(dim, eps=LN_EPS)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.ls2 = _LayerScale(dim)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.ls1(self.attn(self.norm1(x)))
        return x + self.ls2(self.mlp(self.norm2(x)))


def interpolate_pos_embed(pos_embed: Tensor, h: int, w: int, offset: float = 0.1) -> Tensor:
    """DINOv2's positional-embedding resize: ``[1, 1+M*M, C]`` -> ``[1, 1+h*w, C]`` (h, w in patches).

    Bicubic, no antialias, by *scale factor* ``(n + offset) / M`` (not by target size), as the hub code does.
    """
    n = pos_embed.shape[1] - 1
    M = int(math.sqrt(n))
    if n == h * w and h == w:
        return pos_embed
    dim = pos_embed.shape[-1]
    cls, patch = pos_embed[:, :1].float(), pos_embed[:, 1:].float()
    patch = F.interpolate(patch.reshape(1, M, M, dim).permute(0, 3, 1, 2), mode="bicubic", antialias=False,
                          scale_factor=((h + offset) / M, (w + offset) / M))
    if tuple(patch.shape[-2:]) != (h, w):
        raise ValueError(f"DINOv2 position embedding: resize gave {tuple(patch.shape[-2:])}, expected {(h, w)}")
    patch = patch.permute(0, 2, 3, 1).reshape(1, h * w, dim)
    return torch.cat([cls, patch], dim=1).to(pos_embed.dtype)


class DinoV2(nn.Module):
    """DINOv2 ViT returning normalised intermediate patch tokens.

    ``forward(x)``: ``x`` ``[N, 3, H, W]`` (ImageNet-normalised, H and W multiples of 14) -> list of
    ``[N, (H/14)*(W/14), C]`` tokens of the blocks ``cfg.layers``, each through the final LayerNorm, cls removed.
    """

    def __init__(self, cfg: ViTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        m = cfg.img_size // cfg.patch_size
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + m * m, cfg.embed_dim))
        self.patch_embed = _PatchEmbed(cfg.patch_size, cfg.embed_dim)
        self.blocks = nn.ModuleList(_Block(cfg.embed_dim, cfg.num_heads, cfg.mlp_ratio) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(cfg.embed_dim, eps=LN_EPS)

    def pos_embed_for(self, h: int, w: int) -> Tensor:
        """``[1, 1 + h*w, C]`` positional embedding for an ``h x w`` patch grid."""
        return interpolate_pos_embed(self.pos_embed, h, w, self.cfg.interpolate_offset)

    def forward(self, x: Tensor) -> list[Tensor]:
        p = self.cfg.patch_size
        h, w = x.shape[-2] // p, x.shape[-1] // p
        t = self.patch_embed(x)
        t = torch.cat([self.cls_token.expand(t.shape[0], -1, -1), t], dim=1) + self.pos_embed_for(h, w)
        out = []
        for i, blk in enumerate(self.blocks):
            t = blk(t)
            if i in self.cfg.layers:
                out.append(self.norm(t)[:, 1:])
        return out
