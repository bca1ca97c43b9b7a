"""SLAM3R Local-to-World (L2W) network, checkpoint-compatible with ``siyan824/slam3r_l2w``.

Registers keyframes (sources, with local point maps) into the world frame given scene frames
(references, with world point maps). Built without encoder blocks: it takes the I2P encoder's
cached tokens and applies its own ``enc_norm``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import Tensor, nn

from .base import SLAM3RBase, _check, check_ref_ids, merge_views, split_views
from .config import SLAM3RNetConfig
from .precision import autocast_active, conv2d

__all__ = ["Local2World", "L2WOutput"]


@dataclass(frozen=True, kw_only=True)
class L2WOutput:
    """World point maps [B, R|S, H, W, 3] and confidences [B, R|S, H, W]; ``ref_*`` are None when
    ``need_ref_output=False``.

    Fields are keyword-only and the object does not unpack: ``forward`` takes the scene frames first
    (``ref_*``) and the keyframes second (``src_*``), so a positional ``a, b, c, d = out`` would read
    them in an order easy to get wrong. Read ``out.src_pts`` etc.
    """

    src_pts: Tensor
    src_conf: Tensor
    ref_pts: Tensor | None = None
    ref_conf: Tensor | None = None


class Local2World(SLAM3RBase):
    """L2W: point-map embedding (``ponit_embedder``, sic) added to the input of every decoder layer,
    two multiview decoder stacks (scene frames / keyframes) and linear heads."""

    def __init__(self, config: SLAM3RNetConfig | None = None) -> None:
        super().__init__()
        cfg = config if config is not None else SLAM3RNetConfig(need_encoder=False)
        D = cfg.dec_embed_dim
        self.void_pe_token = nn.Parameter(torch.zeros(1, 1, D))  # registered first, as the reference
        self._build(cfg)
        self.ponit_embedder = nn.Conv2d(3, D, cfg.patch_size, cfg.patch_size)

    def init_weights(self) -> None:
        super().init_weights()
        nn.init.normal_(self.void_pe_token, std=0.02)

    @classmethod
    def from_pretrained(cls, source: str | os.PathLike, **kwargs: Any) -> "Local2World":
        """Load published weights; see :func:`forward3d.models.slam3r.loading.load_pretrained`."""
        from .loading import load_pretrained

        return load_pretrained(cls, source, **kwargs)  # type: ignore[return-value]

    def embed_points(self, pts: Tensor, patch_mask: Tensor | None = None) -> Tensor:
        """Point-map embedding. ``pts`` [N, H, W, 3] -> [N, T, D]; patches where ``patch_mask``
        [N, H/p, W/p] (bool) is True get ``void_pe_token`` instead (training path)."""
        x = pts.permute(0, 3, 1, 2)
        x = conv2d(self.ponit_embedder, x if autocast_active(x) else x.to(self.param_dtype), self.precision.embed)
        pe = x.flatten(2).transpose(1, 2)
        if patch_mask is not None:
            m = patch_mask.reshape(pe.shape[0], -1, 1).to(pe.device)
            if m.shape[1] != pe.shape[1]:
                raise ValueError(f"patch_mask {tuple(patch_mask.shape)} does not match the {tuple(x.shape[-2:])} patch grid")
            pe = torch.where(m, self.void_pe_token.to(pe.dtype), pe)
        return pe

    def _pe(self, pts: Tensor, mask: Tensor | None, H: int, W: int, name: str) -> Tensor:
        _check(name, pts, 5, 3, f" [B, V, {H}, {W}, 3]")
        B, V = pts.shape[:2]
        if tuple(pts.shape[2:4]) != (H, W):
            raise ValueError(f"{name}: expected [B, V, {H}, {W}, 3], found {tuple(pts.shape)}")
        m = None if mask is None else mask.flatten(0, 1)
        return self.embed_points(pts.flatten(0, 1), m).unflatten(0, (B, V))

    def forward(self, ref_tokens: Tensor, ref_pts: Tensor, src_tokens: Tensor, src_pts: Tensor, *,
                ref_mask: Tensor | None = None, src_mask: Tensor | None = None, need_ref_output: bool = True,
                image_size: tuple[int, int] | None = None, trace: dict[str, Any] | None = None) -> L2WOutput:
        """Register ``S`` keyframes against ``R`` scene frames, for ``B`` windows at once.

        Args:
            ref_tokens: [B, R, T, C] scene frames' cached tokens (no enc_norm).
            ref_pts: [B, R, H, W, 3] their world point maps (invalid points zeroed).
            src_tokens: [B, S, T, C] keyframes' cached tokens.
            src_pts: [B, S, H, W, 3] their local (I2P) point maps.
            ref_mask, src_mask: optional [B, R|S, H/p, W/p] bool patch masks (void_pe_token).
            need_ref_output: False skips the scene frames' last decoder block and head.

        Returns:
            :class:`L2WOutput` with the keyframes' world points [B, S, H, W, 3] and conf [B, S, H, W]
            (head 2), and the scene frames' (head 1) when requested. fp32.
        """
        C = self.config.enc_embed_dim
        _check("ref_tokens", ref_tokens, 4, C, f" [B, R, T, {C}]")
        _check("src_tokens", src_tokens, 4, C, f" [B, S, T, {C}]")
        if ref_tokens.shape[0] != src_tokens.shape[0] or ref_tokens.shape[2] != src_tokens.shape[2]:
            raise ValueError(f"ref_tokens {tuple(ref_tokens.shape)} and src_tokens {tuple(src_tokens.shape)} "
                             "must share B and T")
        if ref_tokens.shape[1] < 1 or src_tokens.shape[1] < 1:
            raise ValueError("L2W needs at least one scene frame and one keyframe")
        grid, (H, W) = self._grid_for(ref_tokens.shape[2], image_size)
        pe_r = self._pe(ref_pts, ref_mask, H, W, "ref_pts")
        pe_s = self._pe(src_pts, src_mask, H, W, "src_pts")
        if pe_r.shape[:2] != ref_tokens.shape[:2] or pe_s.shape[:2] != src_tokens.shape[:2]:
            raise ValueError("point maps must match their tokens in [B, V]: "
                             f"ref {tuple(ref_pts.shape)} vs {tuple(ref_tokens.shape)}, src {tuple(src_pts.shape)} vs {tuple(src_tokens.shape)}")
        xr = self._embed(ref_tokens, trace, "_ref")
        xs = self._embed(src_tokens, trace, "_src")
        if trace is not None:
            trace.update({"dec/embed_ref": xr, "dec/embed_src": xs, "pe/ref": pe_r, "pe/src": pe_s})
        r, s = self._decode(xr, xs, grid, pe_r, pe_s, need_ref=need_ref_output, trace=trace)
        ps, cs = self._head(cast(Tensor, s), 2, grid, trace, "src")
        if not need_ref_output:
            return L2WOutput(src_pts=ps, src_conf=cs)
        pr, cr = self._head(cast(Tensor, r), 1, grid, trace, "ref")
        return L2WOutput(src_pts=ps, src_conf=cs, ref_pts=pr, ref_conf=cr)

    def forward_views(self, tokens: Tensor, pts: Tensor, ref_ids: list[int], *, patch_mask: Tensor | None = None,
                      image_size: tuple[int, int] | None = None, trace: dict[str, Any] | None = None) -> tuple[Tensor, Tensor]:
        """The reference call ``l2w(views, ref_ids)``: views [B, V, T, C] with point maps [B, V, H, W, 3]
        (world for ``ref_ids``, local for the others), optional patch_mask [B, V, H/p, W/p].
        Returns pts [B, V, H, W, 3] and conf [B, V, H, W] in view order."""
        _check("tokens", tokens, 4, self.config.enc_embed_dim, " [B, V, T, C]")
        ids = check_ref_ids(list(ref_ids), tokens.shape[1])
        tr, ts, src_ids = split_views(tokens, ids)
        pr, ps, _ = split_views(pts, ids)
        mr = ms = None
        if patch_mask is not None:
            mr, ms, _ = split_views(patch_mask, ids)
        out = self.forward(tr, pr, ts, ps, ref_mask=mr, src_mask=ms, image_size=image_size, trace=trace)
        return (merge_views(cast(Tensor, out.ref_pts), out.src_pts, ids, src_ids),
                merge_views(cast(Tensor, out.ref_conf), out.src_conf, ids, src_ids))
