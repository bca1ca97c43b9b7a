"""SLAM3R Image-to-Points (I2P) network, checkpoint-compatible with ``siyan824/slam3r_i2p``.

A window of views -> point maps of every view in the reference view's camera frame, plus the
retrieval score (``get_corr_score``) used to pick scene frames.
"""

from __future__ import annotations

import os
from typing import Any, cast

import torch
from torch import Tensor

from .base import SLAM3RBase, _check, check_ref_ids, merge_views, split_views
from .config import SLAM3RNetConfig
from .layers import LayerNorm, Mlp
from .precision import autocast_active, fp32, linear

__all__ = ["Image2Points"]

# Elements of the largest activation (MLP hidden) per candidate chunk in corr_scores.
_CORR_CHUNK_ELEMENTS = 1 << 26


class Image2Points(SLAM3RBase):
    """I2P: ViT encoder, two multiview decoder stacks (reference / sources), linear heads and the
    retrieval-score MLP. State-dict keys equal those of the published checkpoint.

    Example::

        i2p = Image2Points.from_pretrained("path/to/slam3r_i2p")  # folder with config.json + model.safetensors
        tokens = i2p.encode(images)                               # [N, T, C], no enc_norm
        pts, conf = i2p(tokens[None, :11], ref_index=5)           # [1, 11, H, W, 3], [1, 11, H, W]
    """

    def __init__(self, config: SLAM3RNetConfig | None = None) -> None:
        super().__init__()
        cfg = config if config is not None else SLAM3RNetConfig()
        self._build(cfg)
        D = cfg.dec_embed_dim
        self.corr_score_norm = LayerNorm(D)  # eps 1e-5, as the reference
        self.corr_score_proj = Mlp(D, D, 1)

    @classmethod
    def from_pretrained(cls, source: str | os.PathLike, **kwargs: Any) -> "Image2Points":
        """Load published weights; see :func:`forward3d.models.slam3r.loading.load_pretrained`."""
        from .loading import load_pretrained

        return load_pretrained(cls, source, **kwargs)  # type: ignore[return-value]

    # ------------------------------------------------------------------ point maps
    def forward(self, tokens: Tensor, ref_index: int = 0, *, image_size: tuple[int, int] | None = None,
                trace: dict[str, Any] | None = None) -> tuple[Tensor, Tensor]:
        """I2P on ``B`` windows of ``V`` views from cached tokens.

        Args:
            tokens: [B, V, T, C] encoder-block outputs WITHOUT enc_norm (see :meth:`encode`).
            ref_index: the reference view of every window.
            image_size: (H, W); defaults to ``config.img_size``.
            trace: if a dict, intermediate tensors are stored in it (parity debugging).

        Returns:
            pts [B, V, H, W, 3] (fp32) in the reference view's camera frame (view ``ref_index``:
            head 1 ``pts3d``; the others: head 2 ``pts3d_in_other_view``) and conf [B, V, H, W] (> 1).
        """
        _check("tokens", tokens, 4, self.config.enc_embed_dim, f" [B, V, T, {self.config.enc_embed_dim}]")
        B, V, T, _ = tokens.shape
        ids = check_ref_ids(ref_index, V)
        grid, _ = self._grid_for(T, image_size)
        x = self._embed(tokens, trace)
        xr, xs, src_ids = split_views(x, ids)
        if trace is not None:
            trace["dec/embed_ref"], trace["dec/embed_src"] = xr, xs
        r, s = self._decode(xr, xs, grid, trace=trace)
        pr, cr = self._head(cast(Tensor, r), 1, grid, trace, "ref")
        ps, cs = self._head(cast(Tensor, s), 2, grid, trace, "src")
        return merge_views(pr, ps, ids, src_ids), merge_views(cr, cs, ids, src_ids)

    def forward_images(self, images: Tensor, ref_index: int = 0, trace: dict[str, Any] | None = None) -> tuple[Tensor, Tensor]:
        """I2P from images [B, V, 3 + k, H, W] (RGB in [-1, 1] + ``config.depth_channels`` depth
        channels): encode every view, then :meth:`forward`."""
        _check("images", images, 5, None, f" [B, V, {self.config.in_chans}, H, W]")
        B, V = images.shape[:2]
        tok = self.encode(images.flatten(0, 1))
        if trace is not None:
            trace["enc/tokens_raw"] = tok.unflatten(0, (B, V))
        return self.forward(tok.unflatten(0, (B, V)), ref_index, image_size=tuple(images.shape[-2:]), trace=trace)

    # ------------------------------------------------------------------ retrieval
    def _score(self, s: Tensor, trace: dict[str, Any] | None = None) -> Tensor:
        """[..., T, D] -> 1 + exp(Mlp(LN(s))) [..., T] (fp32; LN and MLP in fp32 under autocast when
        ``precision.heads``)."""
        on = self.precision.heads
        n = self.corr_score_norm(fp32(s, on))
        if autocast_active(s) and on:
            mlp = self.corr_score_proj
            logits = linear(mlp.fc2, mlp.act(linear(mlp.fc1, n, True)), True).squeeze(-1)
        else:
            logits = self.corr_score_proj(n).squeeze(-1).float()
        if trace is not None:
            trace["corr/norm"], trace["corr/logits"] = n, logits
        return 1.0 + logits.exp()

    def _corr(self, xr: Tensor, xs: Tensor, grid: tuple[int, int], depth: int,
              cand_chunk: int | None, trace: dict[str, Any] | None = None) -> Tensor:
        """Retrieval core: ``xr`` [Bq, 1, T, D] embedded queries (references), ``xs`` [Bc, M, T, D]
        embedded candidates (sources), ``Bc`` in {1, Bq} (1: the same candidates for every query,
        their first self-attention is then computed once). Returns scores [B, M, T]."""
        cos, sin = self._dec_tables(grid, xr.device)
        b1, b2 = self.mv_dec_blocks1, self.mv_dec_blocks2
        B, M = max(xr.shape[0], xs.shape[0]), xs.shape[1]
        if depth > 2:  # general case: the query stack needs every candidate at each layer
            r, s = xr, xs
            for i in range(depth):
                nr = b1[i](r, s, cos, sin) if i < depth - 1 else r
                s = b2[i](s, r, cos, sin)
                r = nr
            return self._score(s, trace)
        refs = [xr]
        if depth == 2:
            refs.append(b1[0](xr, xs, cos, sin))
            if trace is not None:
                trace["dec/block0_ref"] = refs[1]
        T, D = xs.shape[2], xs.shape[3]
        chunk = cand_chunk or max(1, _CORR_CHUNK_ELEMENTS // max(1, B * T * 4 * D))
        out = []
        for m0 in range(0, M, chunk):
            s = xs[:, m0:m0 + chunk]
            for i in range(depth):
                s = b2[i](s, refs[i], cos, sin)
                if trace is not None and chunk >= M:
                    trace[f"dec/block{i}_src"] = s
            out.append(self._score(s, trace if chunk >= M else None))
        return torch.cat(out, dim=1)

    def get_corr_score(self, tokens: Tensor, ref_index: int = 0, depth: int | None = None, *,
                       image_size: tuple[int, int] | None = None, trace: dict[str, Any] | None = None) -> Tensor:
        """The reference ``get_corr_score``: view ``ref_index`` of each window is the query, the others
        are candidates. ``tokens`` [B, V, T, C] (no enc_norm) -> scores [V - 1, B, T] = 1 + exp(x).

        The query runs blocks 0..depth-2 of stack 1, the candidates blocks 0..depth-1 of stack 2;
        no ``dec_norm``. ``depth`` defaults to ``config.corr_depth`` (2).
        """
        _check("tokens", tokens, 4, self.config.enc_embed_dim, f" [B, V, T, {self.config.enc_embed_dim}]")
        B, V, T, _ = tokens.shape
        ids = check_ref_ids(ref_index, V)
        if len(ids) != 1:
            raise ValueError(f"get_corr_score takes one query view per window, found ref ids {ids}")
        depth = self._depth(depth)
        grid, _ = self._grid_for(T, image_size)
        x = self._embed(tokens, trace)
        xr, xs, _ = split_views(x, ids)
        if trace is not None:
            trace["dec/embed_ref"], trace["dec/embed_src"] = xr, xs
        return self._corr(xr, xs, grid, depth, None, trace).permute(1, 0, 2)

    def corr_scores(self, query_tokens: Tensor, cand_tokens: Tensor, depth: int | None = None, *,
                    image_size: tuple[int, int] | None = None, cand_chunk: int | None = None) -> Tensor:
        """Retrieval scores of ``M`` candidates for each of ``Q`` queries, the candidates shared by all
        queries (the pipeline's case; equal to ``get_corr_score`` on windows [query_q] + candidates).

        ``query_tokens`` [Q, T, C], ``cand_tokens`` [M, T, C] (no enc_norm) -> [M, Q, T].
        Candidates run in chunks of ``cand_chunk`` (auto) to bound memory when depth <= 2.
        """
        C = self.config.enc_embed_dim
        _check("query_tokens", query_tokens, 3, C, f" [Q, T, {C}]")
        _check("cand_tokens", cand_tokens, 3, C, f" [M, T, {C}]")
        if query_tokens.shape[1] != cand_tokens.shape[1] or cand_tokens.shape[0] < 1:
            raise ValueError(f"query tokens {tuple(query_tokens.shape)} and candidate tokens "
                             f"{tuple(cand_tokens.shape)} must have the same T and at least one candidate")
        depth = self._depth(depth)
        grid, _ = self._grid_for(query_tokens.shape[1], image_size)
        xr = self._embed(query_tokens)[:, None]
        xs = self._embed(cand_tokens)[None]
        return self._corr(xr, xs, grid, depth, cand_chunk).permute(1, 0, 2)

    def _depth(self, depth: int | None) -> int:
        d = self.config.corr_depth if depth is None else int(depth)
        if not 1 <= d <= self.config.dec_depth:
            raise ValueError(f"corr depth: expected 1..{self.config.dec_depth}, found {d}")
        return d
