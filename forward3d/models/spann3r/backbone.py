"""DUSt3R's ``AsymmetricCroCo3DStereo`` (``PatchEmbedDust3R``, RoPE, DPT heads), the Spann3R backbone.

Built from forward3d's CroCo pieces (:mod:`forward3d.models.slam3r.layers`): the patch embedding,
the pre-norm ViT :class:`~forward3d.models.slam3r.layers.Block` and the decoder block (SLAM3R's
multiview block with ONE other view is exactly the DUSt3R ``DecoderBlock``: self-attention on
``norm1(x)``, cross-attention of ``norm2(x)`` to ``norm_y(y)``, MLP on ``norm3(x)``). Keys are the
reference's (``patch_embed``, ``mask_token``, ``enc_blocks``, ``enc_norm``, ``decoder_embed``,
``dec_blocks``, ``dec_blocks2``, ``dec_norm``, ``downstream_head{1,2}``).

Shapes: ``B`` batch, ``T`` tokens per image (row-major patch grid), ``C`` encoder width, ``D``
decoder width, ``H, W`` image size.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from forward3d.models.slam3r.base import PatchEmbed
from forward3d.models.slam3r.layers import LN_EPS, Block, MultiviewDecoderBlock, RoPE2D

from .config import DPTConfig, DUSt3RConfig
from .dpt import DPTHead

__all__ = ["DUSt3RBackbone"]


def check_images(images: Tensor, patch_size: int, name: str = "images") -> tuple[int, int]:
    """Validate ``images`` [N, 3, H, W] (H, W multiples of the patch size); returns the patch grid."""
    if not isinstance(images, Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor [N, 3, H, W], found {type(images).__name__}")
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"{name}: expected [N, 3, H, W], found {list(images.shape)}")
    H, W = int(images.shape[2]), int(images.shape[3])
    if H % patch_size or W % patch_size or H == 0 or W == 0:
        raise ValueError(f"{name}: image size {H}x{W} is not a positive multiple of the patch size {patch_size}")
    return H // patch_size, W // patch_size


class DUSt3RBackbone(nn.Module):
    """DUSt3R encoder, the two decoder stacks and the two DPT heads.

    Example::

        net = DUSt3RBackbone(DUSt3RConfig(), DPTConfig(), hooks=(0, 6, 9, 12))
        feat = net.encode(images)                       # [N, T, C] after enc_norm
        dec1, dec2 = net.decode(feat[:1], feat[1:], grid)
        (pts1, conf1), (pts2, conf2) = net.heads(dec1, dec2, (H, W))
    """

    def __init__(self, cfg: DUSt3RConfig, dpt: DPTConfig, hooks: tuple[int, int, int, int]) -> None:
        super().__init__()
        self.config = cfg
        C, D = cfg.enc_embed_dim, cfg.dec_embed_dim
        self.rope = RoPE2D(cfg.rope_base)
        self.patch_embed = PatchEmbed(cfg.patch_size, 3, C)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, D))  # stored in the checkpoint, never used
        self.enc_blocks = nn.ModuleList(Block(C, cfg.enc_num_heads, cfg.mlp_ratio) for _ in range(cfg.enc_depth))
        self.enc_norm = nn.LayerNorm(C, eps=LN_EPS)
        self.decoder_embed = nn.Linear(C, D)
        self.dec_blocks = nn.ModuleList(MultiviewDecoderBlock(D, cfg.dec_num_heads, cfg.mlp_ratio)
                                        for _ in range(cfg.dec_depth))
        self.dec_blocks2 = nn.ModuleList(MultiviewDecoderBlock(D, cfg.dec_num_heads, cfg.mlp_ratio)
                                         for _ in range(cfg.dec_depth))
        self.dec_norm = nn.LayerNorm(D, eps=LN_EPS)
        dims = (C, D, D, D)
        self.downstream_head1 = DPTHead(dpt, dims, hooks, cfg.patch_size, cfg.conf_mode)
        self.downstream_head2 = DPTHead(dpt, dims, hooks, cfg.patch_size, cfg.conf_mode)

    @property
    def device(self) -> torch.device:
        return self.decoder_embed.weight.device

    @property
    def param_dtype(self) -> torch.dtype:
        return self.decoder_embed.weight.dtype

    # ------------------------------------------------------------------ encoder
    def encode(self, images: Tensor, trace: dict[str, Any] | None = None, tag: str = "enc.") -> Tensor:
        """``images`` [N, 3, H, W] in [-1, 1] -> tokens [N, T, C] after ``enc_norm``."""
        grid = check_images(images, self.config.patch_size)
        cfg = self.config
        cos, sin = self.rope.tables(grid, cfg.enc_embed_dim // cfg.enc_num_heads, images.device)
        x = self.patch_embed(images.to(self.param_dtype))
        if trace is not None:
            trace[f"{tag}patch_embed"] = x
        for i, blk in enumerate(self.enc_blocks):
            x = blk(x, cos, sin)
            if trace is not None:
                trace[f"{tag}block{i}"] = x
        x = self.enc_norm(x)
        if trace is not None:
            trace[f"{tag}out"] = x
        return x

    # ------------------------------------------------------------------ decoder
    def decode(self, feat1: Tensor, feat2: Tensor, grid: tuple[int, int],
               trace: dict[str, Any] | None = None) -> tuple[list[Tensor], list[Tensor]]:
        """Both decoder stacks on ``feat1`` / ``feat2`` [B, T, C] of one ``grid`` = (rows, cols).

        Layer ``l`` of each stack reads layer ``l - 1`` of both views. Returns the head input lists
        ``[input tokens (width C), block 1, ..., block D-1, dec_norm(block D)]`` of each view.
        """
        if feat1.shape != feat2.shape or feat1.dim() != 3 or feat1.shape[1] != grid[0] * grid[1]:
            raise ValueError(f"decode: expected two [B, {grid[0] * grid[1]}, C] token sets, found "
                             f"{list(feat1.shape)} and {list(feat2.shape)}")
        cfg = self.config
        cos, sin = self.rope.tables(grid, cfg.dec_embed_dim // cfg.dec_num_heads, feat1.device)
        out1, out2 = [feat1], [feat2]
        x1 = self.decoder_embed(feat1)[:, None]  # [B, 1, T, D]: one view per stack
        x2 = self.decoder_embed(feat2)[:, None]
        if trace is not None:
            trace["dec.embed"] = torch.stack([x1[:, 0], x2[:, 0]])
        for blk1, blk2 in zip(self.dec_blocks, self.dec_blocks2):
            x1, x2 = blk1(x1, x2, cos, sin), blk2(x2, x1, cos, sin)
            out1.append(x1[:, 0])
            out2.append(x2[:, 0])
        if trace is not None:
            trace["dec1.last_prenorm"], trace["dec2.last_prenorm"] = out1[-1], out2[-1]
        out1[-1] = self.dec_norm(out1[-1])
        out2[-1] = self.dec_norm(out2[-1])
        return out1, out2

    # ------------------------------------------------------------------ heads
    def head(self, which: int, dec: list[Tensor], image_size: tuple[int, int],
             trace: dict[str, Any] | None = None) -> tuple[Tensor, Tensor]:
        """DPT head ``which`` (1 or 2) on a head input list -> (pts [B, H, W, 3], conf [B, H, W]), fp32."""
        head = self.downstream_head1 if which == 1 else self.downstream_head2
        return head(dec, image_size, trace, f"head{which}.")

    def forward(self, img1: Tensor, img2: Tensor) -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]]:
        """Plain pairwise DUSt3R: both views encoded together, decoded, both heads.

        ``img1``, ``img2`` [B, 3, H, W] -> ((pts1, conf1) in view 1's camera, (pts2, conf2) in view 1's camera).
        """
        grid = check_images(img1, self.config.patch_size, "img1")
        if img2.shape != img1.shape:
            raise ValueError(f"DUSt3R: expected both views of one shape, found {list(img1.shape)} and {list(img2.shape)}")
        feat = self.encode(torch.cat((img1, img2), 0))
        f1, f2 = feat.chunk(2, dim=0)
        dec1, dec2 = self.decode(f1, f2, grid)
        size = (int(img1.shape[2]), int(img1.shape[3]))
        return self.head(1, dec1, size), self.head(2, dec2, size)
