"""DepthSplat's depth UNet: the LDM ``UNetModel`` without time embedding, with cross-view self-attention.

Pre-norm residual blocks (GroupNorm(8) in fp32, SiLU, 3x3 convs), one per level; strided-conv downsampling,
nearest x2 + conv upsampling; self-attention (32 channels per head, fp32 softmax) at the listed
downsampling rates, over the tokens of all views of a scene jointly. Keys follow the reference
(``input_blocks.N.M``, ``middle_block.{0,2}``, ``output_blocks.N.M``, ``out.{0,2}``; ``in_layers``,
``out_layers.{0,3}``, ``skip_connection``, ``op``, ``conv``, ``qkv``, ``norm``, ``proj_out``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["UNet", "GroupNormFP32"]


class GroupNormFP32(nn.GroupNorm):
    """GroupNorm computed in float32 and cast back (the reference's ``GroupNorm8``)."""

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x.float()).type(x.dtype)


def _norm(ch: int) -> nn.GroupNorm:
    return GroupNormFP32(8 if ch % 8 == 0 else 4, ch)


class _ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.in_layers = nn.Sequential(_norm(cin), nn.SiLU(), nn.Conv2d(cin, cout, 3, 1, 1))
        self.out_layers = nn.Sequential(_norm(cout), nn.SiLU(), nn.Dropout(0.0), nn.Conv2d(cout, cout, 3, 1, 1))
        self.skip_connection = nn.Identity() if cin == cout else nn.Conv2d(cin, cout, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.skip_connection(x) + self.out_layers(self.in_layers(x))


class _Attention(nn.Module):
    """Self-attention over the tokens of all ``num_views`` views of each scene (input batch ``(b v)``)."""

    def __init__(self, ch: int, head_channels: int) -> None:
        super().__init__()
        self.num_heads = ch // head_channels
        self.num_views = 1
        self.qkv = nn.Conv1d(ch, ch * 3, 1)
        self.norm = _norm(ch)
        self.proj_out = nn.Conv1d(ch, ch, 1)

    def forward(self, x: Tensor) -> Tensor:
        n, c, *spatial = x.shape
        x = x.reshape(n, c, -1)
        qkv = self.qkv(self.norm(x))  # [(b v), 3C, T]
        v_, t = self.num_views, qkv.shape[-1]
        b = n // v_
        qkv = qkv.view(b, v_, 3 * c, t).permute(0, 2, 1, 3).reshape(b, 3 * c, v_ * t)
        ch = c // self.num_heads
        q, k, v = qkv.reshape(b * self.num_heads, ch * 3, v_ * t).split(ch, dim=1)
        scale = 1 / math.sqrt(math.sqrt(ch))
        w = torch.einsum("bct,bcs->bts", q * scale, k * scale)
        w = torch.softmax(w.float(), dim=-1).type(w.dtype)
        a = torch.einsum("bts,bcs->bct", w, v).reshape(b, c, v_, t).permute(0, 2, 1, 3).reshape(n, c, t)
        return (x + self.proj_out(a)).reshape(n, c, *spatial)


class _Downsample(nn.Module):
    def __init__(self, ch: int) -> None:
        super().__init__()
        self.op = nn.Conv2d(ch, ch, 3, 2, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.op(x)


class _Upsample(nn.Module):
    def __init__(self, ch: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, 1, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


class UNet(nn.Module):
    """``forward(x, num_views)``: ``[B*V, C, h, w]`` (``(b v)`` order; h, w divisible by ``2**(levels-1)``)
    -> ``[B*V, C, h, w]``, computed in float32."""

    def __init__(self, ch: int, channel_mult: tuple[int, ...], attn_resolutions: tuple[int, ...],
                 head_channels: int = 32) -> None:
        super().__init__()
        self.input_blocks = nn.ModuleList([nn.Sequential(nn.Conv2d(ch, ch, 3, 1, 1))])
        chans = [ch]
        cur, ds = ch, 1
        for level, mult in enumerate(channel_mult):
            layers: list[nn.Module] = [_ResBlock(cur, mult * ch)]
            cur = mult * ch
            if ds in attn_resolutions:
                layers.append(_Attention(cur, head_channels))
            self.input_blocks.append(nn.Sequential(*layers))
            chans.append(cur)
            if level != len(channel_mult) - 1:
                self.input_blocks.append(nn.Sequential(_Downsample(cur)))
                chans.append(cur)
                ds *= 2
        self.middle_block = nn.Sequential(_ResBlock(cur, cur), nn.Identity(), _ResBlock(cur, cur))
        self.output_blocks = nn.ModuleList()
        for level, mult in list(enumerate(channel_mult))[::-1]:
            for i in range(2):
                layers = [_ResBlock(cur + chans.pop(), ch * mult)]
                cur = ch * mult
                if ds in attn_resolutions:
                    layers.append(_Attention(cur, head_channels))
                if level and i == 1:
                    layers.append(_Upsample(cur))
                    ds //= 2
                self.output_blocks.append(nn.Sequential(*layers))
        self.out = nn.Sequential(_norm(cur), nn.SiLU(), nn.Conv2d(ch, ch, 3, 1, 1))

    def set_num_views(self, v: int) -> None:
        for m in self.modules():
            if isinstance(m, _Attention):
                m.num_views = v

    def forward(self, x: Tensor, num_views: int) -> Tensor:
        self.set_num_views(num_views)
        h = x.float()
        hs = []
        for blk in self.input_blocks:
            h = blk(h)
            hs.append(h)
        h = self.middle_block(h)
        for blk in self.output_blocks:
            h = blk(torch.cat([h, hs.pop()], dim=1))
        return self.out(h.type(x.dtype))
