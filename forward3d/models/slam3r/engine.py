"""The real SLAM3R networks behind :class:`forward3d.models.slam3r.protocol.SLAM3RModels`.

The reconstruction pipeline encodes every frame once (:meth:`SLAM3REngine.encode`), then calls
:meth:`i2p`, :meth:`corr_scores` and :meth:`l2w` on cached tokens. Every call runs under
``torch.inference_mode`` and, when asked, autocast (bf16 on CPU, bf16/fp16 on GPU).
"""

from __future__ import annotations

import contextlib
import logging
import os
from typing import Any, Sequence

import torch
from torch import Tensor

from forward3d.device import DTypeArg, resolve_dtype

from .i2p import Image2Points
from .l2w import Local2World
from .precision import MixedPrecision

logger = logging.getLogger(__name__)

__all__ = ["SLAM3REngine"]

_resolve_dtype = resolve_dtype  # the one definition lives in forward3d.device


class SLAM3REngine:
    """I2P + L2W networks implementing :class:`forward3d.models.slam3r.protocol.SLAM3RModels`.

    Args:
        i2p, l2w: the two networks (e.g. from ``from_pretrained``); moved to ``device`` and ``eval()``.
        device: default: where ``i2p``'s parameters are.
        dtype: compute dtype: ``torch.float32`` (default, exact), ``torch.bfloat16`` /
            ``torch.float16`` (autocast; fp16 GPU only), or ``"auto"`` (bf16 autocast on a GPU that
            supports it, else fp16; fp32 on CPU). Models whose parameters are already bf16 / fp16
            run under autocast in that dtype.
        precision: the parts kept in fp32 under autocast (default: all of
            :class:`~forward3d.models.slam3r.precision.MixedPrecision`: residual stream, attention,
            RoPE, final norms, embeddings, heads; the large matmuls run in the low precision). Set
            on both networks.

    Shapes: T = (H/16) * (W/16) tokens of width C (1024 for the published models); H, W =
    :attr:`image_size`. Cached tokens are fp32 (``precision.residual``, the default) or in the
    compute dtype.
    """

    def __init__(self, i2p: Image2Points, l2w: Local2World, device: torch.device | str | None = None,
                 dtype: DTypeArg = torch.float32, precision: MixedPrecision | None = None) -> None:
        if not isinstance(i2p, Image2Points) or not isinstance(l2w, Local2World):
            raise TypeError(f"SLAM3REngine: expected (Image2Points, Local2World), found "
                            f"({type(i2p).__name__}, {type(l2w).__name__})")
        ci, cl = i2p.config, l2w.config
        if ci.enc_embed_dim != cl.enc_embed_dim or ci.img_size != cl.img_size or ci.patch_size != cl.patch_size:
            raise ValueError(f"I2P and L2W configs disagree: enc_embed_dim {ci.enc_embed_dim}/{cl.enc_embed_dim}, "
                             f"img_size {ci.img_size}/{cl.img_size}, patch_size {ci.patch_size}/{cl.patch_size}")
        self.device = torch.device(device) if device is not None else i2p.device
        self.i2p_model = i2p.to(self.device).eval()
        self.l2w_model = l2w.to(self.device).eval()
        self.dtype = _resolve_dtype(dtype, self.device)
        pdt = self.i2p_model.param_dtype
        # autocast dtype: the compute dtype, else the parameters' low precision (bf16-weight models)
        self._amp_dtype = (self.dtype if self.dtype != torch.float32 else
                           pdt if pdt in (torch.bfloat16, torch.float16) else None)
        if precision is not None:
            self.i2p_model.set_precision(precision)
            self.l2w_model.set_precision(precision)
        self.precision = self.i2p_model.precision
        self.image_size: tuple[int, int] = (int(ci.img_size[0]), int(ci.img_size[1]))
        self.num_tokens = ci.grid[0] * ci.grid[1]
        self.token_dim = ci.enc_embed_dim
        # RGB-D checkpoints (Slam3DR depth fusion): the I2P encoder takes 3 + k channels
        self.depth_channels = int(ci.depth_channels)

    @classmethod
    def from_pretrained(cls, i2p_source: str | os.PathLike = "siyan824/slam3r_i2p",
                        l2w_source: str | os.PathLike = "siyan824/slam3r_l2w", *,
                        device: torch.device | str | None = None, dtype: DTypeArg = torch.float32,
                        weights_dtype: torch.dtype = torch.float32, precision: MixedPrecision | None = None,
                        **kwargs: Any) -> "SLAM3REngine":
        """Load both networks (folders, files or hub ids; see ``Image2Points.from_pretrained``).

        ``dtype`` is the compute (autocast) dtype; ``weights_dtype=torch.bfloat16`` stores the
        parameters in bf16 instead (half the memory, no per-call weight casts; fastest on CPUs with
        AVX512-BF16/AMX; run under bf16 autocast). ``precision``: see the class. ``kwargs``: ``i2p_config=``, ``l2w_config=`` (config objects, dicts or paths).
        """
        dev = torch.device(device) if device is not None else torch.device("cpu")
        i2p = Image2Points.from_pretrained(i2p_source, device=dev, dtype=weights_dtype,
                                           config=kwargs.pop("i2p_config", None))
        l2w = Local2World.from_pretrained(l2w_source, device=dev, dtype=weights_dtype,
                                          config=kwargs.pop("l2w_config", None))
        if kwargs:
            raise TypeError(f"SLAM3REngine.from_pretrained: unexpected arguments {sorted(kwargs)}")
        return cls(i2p, l2w, device=dev, dtype=dtype, precision=precision)

    # ------------------------------------------------------------------ helpers
    def _ctx(self) -> contextlib.AbstractContextManager:
        if self._amp_dtype is None or self.device.type == "meta":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self._amp_dtype)

    def _tokens(self, name: str, x: Tensor, ndim: int) -> Tensor:
        if not isinstance(x, Tensor):
            raise TypeError(f"{name}: expected a torch.Tensor, found {type(x).__name__}")
        if x.dim() != ndim or x.shape[-2:] != (self.num_tokens, self.token_dim):
            want = ("[B, V, " if ndim == 4 else "[N, ") + f"{self.num_tokens}, {self.token_dim}]"
            raise ValueError(f"{name}: expected {want}, found {tuple(x.shape)}")
        return x.to(self.device)

    def _points(self, name: str, x: Tensor, n: int) -> Tensor:
        H, W = self.image_size
        if not isinstance(x, Tensor) or tuple(x.shape) != (n, H, W, 3):
            found = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"{name}: expected [{n}, {H}, {W}, 3], found {found}")
        return x.to(self.device, torch.float32)

    # ------------------------------------------------------------------ protocol
    @torch.inference_mode()
    def encode(self, images: Tensor, ids: Sequence[int] | None = None) -> Tensor:
        """``images`` [B, 3 + k, H, W] (RGB in [-1, 1], then the ``k =`` :attr:`depth_channels` depth
        channels of :func:`~forward3d.models.slam3r.depth_input.stack_depth`) -> cached tokens
        [B, T, C] (before ``enc_norm``)."""
        H, W = self.image_size
        c = 3 + self.depth_channels
        if not isinstance(images, Tensor) or images.dim() != 4 or tuple(images.shape[1:]) != (c, H, W):
            found = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
            raise ValueError(f"images: expected [B, {c}, {H}, {W}], found {found}")
        with self._ctx():
            return self.i2p_model.encode(images.to(self.device))

    @torch.inference_mode()
    def i2p(self, tokens: Tensor, ref_index: int = 0) -> tuple[Tensor, Tensor]:
        """``tokens`` [B, V, T, C] -> (pts [B, V, H, W, 3] in the reference camera frame, conf [B, V, H, W])."""
        tokens = self._tokens("tokens", tokens, 4)
        with self._ctx():
            return self.i2p_model(tokens, ref_index)

    @torch.inference_mode()
    def corr_scores(self, query_tokens: Tensor, cand_tokens: Tensor) -> Tensor:
        """queries [Q, T, C], candidates [M, T, C] -> per-patch scores [M, Q, T] (``1 + exp(x)``)."""
        q = self._tokens("query_tokens", query_tokens, 3)
        c = self._tokens("cand_tokens", cand_tokens, 3)
        with self._ctx():
            return self.i2p_model.corr_scores(q, c)

    @torch.inference_mode()
    def l2w(self, scene_tokens: Tensor, scene_pts_world: Tensor, frame_tokens: Tensor,
            frame_pts_local: Tensor) -> tuple[Tensor, Tensor]:
        """Scene frames: tokens [R, T, C] + world points [R, H, W, 3]; frames: tokens [S, T, C] + local
        points [S, H, W, 3] -> (world points [S, H, W, 3], conf [S, H, W])."""
        st = self._tokens("scene_tokens", scene_tokens, 3)
        ft = self._tokens("frame_tokens", frame_tokens, 3)
        sp = self._points("scene_pts_world", scene_pts_world, st.shape[0])
        fp = self._points("frame_pts_local", frame_pts_local, ft.shape[0])
        with self._ctx():
            out = self.l2w_model(st[None], sp[None], ft[None], fp[None], need_ref_output=False)
        return out.src_pts[0], out.src_conf[0]
