"""Parts shared by the I2P and L2W networks: patch embedding, ViT encoder, two-stack multiview
decoder and the linear heads.

Shapes: ``B`` = windows (batch), ``V`` = views per window, ``R`` / ``S`` = reference / source views,
``T`` = patch tokens per view (``rows * cols``), ``C`` = encoder width, ``D`` = decoder width,
``H, W`` = image size.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import Tensor, nn

from .config import SLAM3RNetConfig
from .heads import LinearHead
from .layers import LN_EPS, Block, LayerNorm, MultiviewDecoderBlock, RoPE2D
from .precision import MixedPrecision, autocast_active, conv2d, fp32, linear

logger = logging.getLogger(__name__)

__all__ = ["PatchEmbed", "SLAM3RBase"]


class PatchEmbed(nn.Module):
    """Conv2d(in_chans, C, p, stride p) -> tokens [N, T, C] in row-major patch order (key ``proj``);
    ``in_chans`` is 3 (RGB) or 3 + depth channels; fp32 under autocast when ``precision.embed``."""

    precision: MixedPrecision = MixedPrecision()

    def __init__(self, patch_size: int, in_chans: int, dim: int) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, dim, patch_size, patch_size)

    def forward(self, img: Tensor) -> Tensor:
        """``img`` [N, in_chans, H, W] -> [N, (H/p) * (W/p), C]."""
        return conv2d(self.proj, img, self.precision.embed).flatten(2).transpose(1, 2)


def _check(name: str, x: Tensor, ndim: int, last: int | None = None, what: str = "") -> None:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor{what}, found {type(x).__name__}")
    if x.dim() != ndim or (last is not None and x.shape[-1] != last):
        raise ValueError(f"{name}: expected shape{what}, found {tuple(x.shape)}")


class SLAM3RBase(nn.Module):
    """Encoder + multiview decoder + heads (subclassed by :class:`Image2Points` / :class:`Local2World`).

    ``precision`` (:class:`~forward3d.models.slam3r.precision.MixedPrecision`, set with
    :meth:`set_precision`): the parts kept in fp32 under bf16 / fp16 autocast.
    """

    config: SLAM3RNetConfig
    precision: MixedPrecision = MixedPrecision()

    def _build(self, cfg: SLAM3RNetConfig) -> None:
        self.config = cfg
        self.rope = RoPE2D(cfg.rope_base)
        C, D = cfg.enc_embed_dim, cfg.dec_embed_dim
        self.patch_embed = PatchEmbed(cfg.patch_size, cfg.in_chans, C)
        if cfg.need_encoder:
            self.enc_blocks = nn.ModuleList(Block(C, cfg.enc_num_heads, cfg.mlp_ratio) for _ in range(cfg.enc_depth))
        self.enc_norm = LayerNorm(C, eps=LN_EPS)
        self.decoder_embed = nn.Linear(C, D)
        self.mv_dec_blocks1 = nn.ModuleList(
            MultiviewDecoderBlock(D, cfg.dec_num_heads, cfg.mlp_ratio) for _ in range(cfg.dec_depth))
        self.mv_dec_blocks2 = nn.ModuleList(
            MultiviewDecoderBlock(D, cfg.dec_num_heads, cfg.mlp_ratio) for _ in range(cfg.dec_depth))
        self.dec_norm = LayerNorm(D, eps=LN_EPS)
        self.downstream_head1 = LinearHead(D, cfg.patch_size, cfg.conf_mode)
        self.downstream_head2 = LinearHead(D, cfg.patch_size, cfg.conf_mode)

    # ------------------------------------------------------------------ init / misc
    def init_weights(self) -> None:
        """CroCo-style init: xavier-uniform Linear weights, zero biases, unit LayerNorms."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Conv2d):
                nn.init.xavier_uniform_(m.weight.view(m.weight.shape[0], -1))
                nn.init.zeros_(m.bias)

    def set_precision(self, precision: MixedPrecision) -> "SLAM3RBase":
        """Parts kept in fp32 under autocast, for this model and all its blocks and heads (in place)."""
        if not isinstance(precision, MixedPrecision):
            raise TypeError(f"precision: expected MixedPrecision, found {type(precision).__name__}")
        for m in self.modules():
            if hasattr(m, "precision"):
                m.precision = precision
        return self

    @property
    def device(self) -> torch.device:
        return self.decoder_embed.weight.device

    @property
    def param_dtype(self) -> torch.dtype:
        return self.decoder_embed.weight.dtype

    @property
    def grid(self) -> tuple[int, int]:
        return self.config.grid

    def _grid_for(self, T: int, image_size: tuple[int, int] | None) -> tuple[tuple[int, int], tuple[int, int]]:
        size = tuple(image_size) if image_size is not None else self.config.img_size
        p = self.config.patch_size
        if size[0] % p or size[1] % p:
            raise ValueError(f"image size {size} is not a multiple of the patch size {p}")
        grid = (size[0] // p, size[1] // p)
        if grid[0] * grid[1] != T:
            raise ValueError(f"{T} tokens per view do not match image size {size} ({grid[0]}x{grid[1]} patches)")
        return grid, (int(size[0]), int(size[1]))

    # ------------------------------------------------------------------ encoder
    def encode(self, images: Tensor, minibatch: int | None = None) -> Tensor:
        """Encoder blocks' output WITHOUT ``enc_norm`` (the cached tokens of the pipeline).

        ``images`` [N, 3 + k, H, W]: RGB in [-1, 1], then the ``k = config.depth_channels`` depth
        channels of :func:`forward3d.models.slam3r.depth_input.stack_depth`; H and W multiples of the
        patch size -> [N, T, C].
        Runs in minibatches of ``minibatch`` (default ``config.enc_minibatch``) frames.
        """
        if not self.config.need_encoder:
            raise ValueError(f"{type(self).__name__} was built without encoder blocks (need_encoder=False); "
                             "encode with the I2P model and pass the cached tokens")
        cin = self.config.in_chans
        _check("images", images, 4, None, f" [N, {cin}, H, W]")
        N, ch, H, W = images.shape
        p = self.config.patch_size
        if ch != cin or H % p or W % p:
            hint = (" (this model takes RGB + depth: see forward3d.models.slam3r.depth_input.stack_depth)"
                    if ch == 3 and cin > 3 else "")
            raise ValueError(f"images: expected [N, {cin}, H, W] with H, W multiples of {p}, found "
                             f"{tuple(images.shape)}{hint}")
        grid = (H // p, W // p)
        hd = self.config.enc_embed_dim // self.config.enc_num_heads
        cos, sin = self.rope.tables(grid, hd, images.device)
        mb = max(1, int(minibatch or self.config.enc_minibatch))
        dtype = None if autocast_active(images) else self.param_dtype
        outs = []
        for i in range(0, N, mb):
            x = self.patch_embed(images[i:i + mb].to(dtype))
            for blk in self.enc_blocks:
                x = blk(x, cos, sin)
            outs.append(x)
        return outs[0] if len(outs) == 1 else torch.cat(outs, 0)

    # ------------------------------------------------------------------ decoder
    def _embed(self, tokens: Tensor, trace: dict[str, Any] | None = None, tag: str = "") -> Tensor:
        """Cached tokens [..., T, C] -> this model's enc_norm -> decoder_embed -> [..., T, D]."""
        p = self.precision
        x = self.enc_norm(fp32(tokens, p.final_norms) if autocast_active(tokens) else tokens.to(self.param_dtype))
        if trace is not None:
            trace[f"enc/tokens{tag}"] = x
        return linear(self.decoder_embed, x, p.embed)

    def _dec_tables(self, grid: tuple[int, int], device: torch.device) -> tuple[Tensor, Tensor]:
        return self.rope.tables(grid, self.config.dec_embed_dim // self.config.dec_num_heads, device)

    def _decode(self, xr: Tensor, xs: Tensor, grid: tuple[int, int], pe_r: Tensor | None = None,
                pe_s: Tensor | None = None, need_ref: bool = True, need_src: bool = True,
                trace: dict[str, Any] | None = None) -> tuple[Tensor | None, Tensor | None]:
        """Run both decoder stacks. ``xr`` [B, R, T, D] (references, ``mv_dec_blocks1``), ``xs``
        [B, S, T, D] (sources, ``mv_dec_blocks2``); each block of one stack reads the other stack's
        previous-layer output. ``pe_*`` (L2W point embeddings, same shapes) are added to the input
        of every layer. Returns the last-layer outputs (before ``dec_norm``); a stack whose output
        is not needed skips its last block."""
        cos, sin = self._dec_tables(grid, xr.device)
        depth = self.config.dec_depth
        r, s = xr, xs
        for i in range(depth):
            if pe_r is not None and pe_s is not None:
                r, s = r + pe_r, s + pe_s
            if i == depth - 1:  # the last layer: skip a stack whose output is not needed
                nr = self.mv_dec_blocks1[i](r, s, cos, sin) if need_ref else None
                ns = self.mv_dec_blocks2[i](s, r, cos, sin) if need_src else None
            else:
                nr, ns = self.mv_dec_blocks1[i](r, s, cos, sin), self.mv_dec_blocks2[i](s, r, cos, sin)
            if trace is not None:
                trace[f"dec/block{i}_ref"], trace[f"dec/block{i}_src"] = nr, ns
            if i == depth - 1:
                return nr, ns
            r, s = nr, ns
        raise ValueError("dec_depth must be >= 1")

    def _head(self, x: Tensor, which: int, grid: tuple[int, int], trace: dict[str, Any] | None = None,
              tag: str = "") -> tuple[Tensor, Tensor]:
        """dec_norm + head ``which`` (1 = references, 2 = sources) on [B, V, T, D] -> pts [B, V, H, W, 3], conf [B, V, H, W]."""
        B, V, T, D = x.shape
        x = self.dec_norm(fp32(x, self.precision.final_norms))
        head = self.downstream_head1 if which == 1 else self.downstream_head2
        if trace is not None:
            trace[f"dec/final_norm_{tag}"] = x
            trace[f"head/proj_{tag}"] = head.raw(x.reshape(B * V, T, D))
        pts, conf = head(x.reshape(B * V, T, D), grid)
        return pts.unflatten(0, (B, V)), conf.unflatten(0, (B, V))


def split_views(x: Tensor, ref_ids: list[int]) -> tuple[Tensor, Tensor, list[int]]:
    """Split views [B, V, ...] into references (in ``ref_ids`` order) and sources (ascending)."""
    V = x.shape[1]
    src_ids = [i for i in range(V) if i not in set(ref_ids)]
    return x[:, ref_ids], x[:, src_ids], src_ids


def merge_views(ref: Tensor, src: Tensor, ref_ids: list[int], src_ids: list[int]) -> Tensor:
    """Inverse of :func:`split_views`: [B, R, ...] + [B, S, ...] -> [B, R + S, ...] in view order."""
    out = ref.new_empty((ref.shape[0], ref.shape[1] + src.shape[1]) + tuple(ref.shape[2:]))
    out[:, ref_ids] = ref
    out[:, src_ids] = src
    return out


def check_ref_ids(ref_ids: Any, V: int) -> list[int]:
    ids = [int(i) for i in (ref_ids if isinstance(ref_ids, (list, tuple)) else [ref_ids])]
    if not ids or len(set(ids)) != len(ids) or any(not 0 <= i < V for i in ids) or len(ids) >= V:
        raise ValueError(f"reference ids {ids}: expected distinct indices in [0, {V}) leaving at least one source view")
    return ids
