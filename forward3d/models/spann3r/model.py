"""The Spann3R network (reference ``spann3r.model.Spann3R``, eval mode), checkpoint-compatible with
the official ``spann3r.pth``.

Per step ``s`` (frames ``s`` and ``s + 1``; ``../shared/specs/spann3r.md``):

1. encode: the pair jointly at ``s = 0``; afterwards the previous view-2 tokens become view 1 and
   only frame ``s + 1`` is encoded;
2. memory read (``s >= 1``): ``feat_fuse = read(query = previous feat_k2) + query``; at ``s = 0``
   ``feat_fuse = feat1``;
3. decode ``(feat_fuse, feat2)``; head 1 (frame ``s``) and head 2 (frame ``s + 1``), both in frame
   0's camera coordinates;
4. keys ``feat_k1 = attn_head_1(cat(feat1, dec1[-1]))`` (RAW encoder tokens of view 1) and
   ``feat_k2 = attn_head_2(cat(feat2, dec2[-1]))``;
5. write ``value = value_encoder(head-1 pts3d) + feat_k1`` with the similarity check.

Frame 0's result is head 1 of step 0, frame ``j`` (``1..N-2``) head 1 of step ``j``, the last frame
head 2 of the last step. :class:`Spann3RSession` runs this one frame at a time (streaming);
:meth:`Spann3R.forward` runs a whole sequence.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from forward3d.models.slam3r.base import PatchEmbed
from forward3d.models.slam3r.heads import no_autocast
from forward3d.models.slam3r.layers import LN_EPS, Block

from .backbone import DUSt3RBackbone, check_images
from .config import MemoryConfig, Spann3RConfig
from .memory import MemoryEvent, SpatialMemory

__all__ = ["Spann3R", "Spann3RSession", "Spann3RStep", "Spann3ROutput"]


@dataclass
class Spann3RStep:
    """The result of one step (frames ``step`` and ``step + 1``).

    Attributes:
        step: the step index ``s``.
        pts1, conf1: head 1, frame ``s``: ``[B, H, W, 3]``, ``[B, H, W]`` (fp32, frame-0 camera).
        pts2, conf2: head 2, frame ``s + 1`` (the final result of the last frame only).
        memory: what the memory write did.
        trace: intermediates, when the session was created with ``trace=True``.
    """

    step: int
    pts1: Tensor
    conf1: Tensor
    pts2: Tensor
    conf2: Tensor
    memory: MemoryEvent
    trace: dict[str, Any] = field(default_factory=dict)


@dataclass
class Spann3ROutput:
    """A whole sequence (the reference ``preds`` / ``preds_all``).

    Attributes:
        pts3d: ``[N, B, H, W, 3]`` every frame's point map in frame 0's camera.
        conf: ``[N, B, H, W]``.
        view2_pts3d, view2_conf: ``[N-1, B, H, W, 3]``, ``[N-1, B, H, W]`` head 2 of each step.
        steps: the per-step records (memory events, traces).
    """

    pts3d: Tensor
    conf: Tensor
    view2_pts3d: Tensor
    view2_conf: Tensor
    steps: list[Spann3RStep]


def _as_input_dtype(ln: nn.LayerNorm):
    """``ln`` computed in its input's dtype (parameters cast)."""
    def norm(x: Tensor) -> Tensor:
        return F.layer_norm(x, ln.normalized_shape, ln.weight.to(x.dtype), ln.bias.to(x.dtype), ln.eps)

    return norm


class Spann3R(nn.Module):
    """DUSt3R backbone (key ``dust3r``), memory value encoder (``value_encoder``, ``value_norm``,
    ``value_out``, ``pos_patch_embed``), ``norm_q/k/v`` and the key heads ``attn_head_{1,2}``.

    Example::

        model = Spann3R.from_pretrained("checkpoints/spann3r.pth")
        out = model(images)                        # images [N, B, 3, 224, 224] in [-1, 1]
        session = model.session()                  # streaming
        for img in stream:
            step = session.push(img[None])         # None for the first frame
    """

    def __init__(self, config: Spann3RConfig | None = None) -> None:
        super().__init__()
        cfg = config if config is not None else Spann3RConfig()
        self.config = cfg
        bb = cfg.dust3r
        C, D = bb.enc_embed_dim, bb.dec_embed_dim
        self.dust3r = DUSt3RBackbone(bb, cfg.dpt, cfg.hooks)
        self.value_encoder = nn.ModuleList(Block(C, cfg.value_num_heads, 4.0) for _ in range(cfg.value_depth))
        self.value_norm = nn.LayerNorm(C, eps=LN_EPS)
        self.value_out = nn.Linear(C, C)
        self.pos_patch_embed = PatchEmbed(bb.patch_size, 3, C)
        self.norm_q = nn.LayerNorm(C)  # eps 1e-5, as the reference
        self.norm_k = nn.LayerNorm(C)
        self.norm_v = nn.LayerNorm(C)
        self.attn_head_1 = nn.Sequential(nn.Linear(C + D, cfg.attn_head_hidden), nn.GELU(),
                                         nn.Linear(cfg.attn_head_hidden, C))
        self.attn_head_2 = nn.Sequential(nn.Linear(C + D, cfg.attn_head_hidden), nn.GELU(),
                                         nn.Linear(cfg.attn_head_hidden, C))

    @classmethod
    def from_pretrained(cls, source: str | os.PathLike, **kwargs: Any) -> "Spann3R":
        """Load weights; see :func:`forward3d.models.spann3r.loading.load_spann3r`."""
        from .loading import load_spann3r

        return load_spann3r(source, **kwargs)

    # ------------------------------------------------------------------ properties
    @property
    def device(self) -> torch.device:
        return self.value_out.weight.device

    @property
    def param_dtype(self) -> torch.dtype:
        return self.value_out.weight.dtype

    # ------------------------------------------------------------------ pieces
    def encode(self, images: Tensor, trace: dict[str, Any] | None = None) -> Tensor:
        """``images`` [N, 3, H, W] in [-1, 1] -> encoder tokens [N, T, C] (after ``enc_norm``)."""
        return self.dust3r.encode(images, trace)

    def key(self, which: int, feat: Tensor, dec_last: Tensor) -> Tensor:
        """Memory key ``attn_head_{which}(cat(feat, dec_last))``: [B, T, C] + [B, T, D] -> [B, T, C]."""
        head = self.attn_head_1 if which == 1 else self.attn_head_2
        dtype = self.param_dtype
        return head(torch.cat((feat.to(dtype), dec_last.to(dtype)), dim=-1))

    def value(self, pts3d: Tensor, trace: dict[str, Any] | None = None) -> Tensor:
        """Memory value encoder of head 1's point map ``pts3d`` [B, H, W, 3] -> ``cur_v`` [B, T, C]."""
        x = self.pos_patch_embed(pts3d.permute(0, 3, 1, 2).to(self.param_dtype))
        if trace is not None:
            trace["value.patch_embed"] = x
        cos = sin = None
        if self.config.mem_pos_enc:
            p = self.config.dust3r.patch_size
            grid = (pts3d.shape[1] // p, pts3d.shape[2] // p)
            cos, sin = self.dust3r.rope.tables(grid, x.shape[-1] // self.config.value_num_heads, x.device)
        for i, blk in enumerate(self.value_encoder):
            x = blk(x, cos, sin)
            if trace is not None:
                trace[f"value.block{i}"] = x
        x = self.value_norm(x)
        if trace is not None:
            trace["value.norm"] = x
        return self.value_out(x)

    def new_memory(self, config: MemoryConfig | None = None, track_sources: bool = False) -> SpatialMemory:
        """An empty :class:`SpatialMemory` reading through this model's ``norm_q/k/v`` (their
        parameters cast to the memory's dtype, so bf16 weights work with the fp32 memory)."""
        return SpatialMemory(_as_input_dtype(self.norm_q), _as_input_dtype(self.norm_k), _as_input_dtype(self.norm_v),
                             config or self.config.memory, track_sources)

    def session(self, memory: MemoryConfig | None = None, trace: bool = False,
                track_sources: bool = False) -> "Spann3RSession":
        """A streaming session over one sequence (see :class:`Spann3RSession`)."""
        return Spann3RSession(self, memory, trace=trace, track_sources=track_sources)

    # ------------------------------------------------------------------ sequence
    def forward(self, images: Tensor | Sequence[Tensor], memory: MemoryConfig | None = None,
                trace: bool = False, track_sources: bool = False) -> Spann3ROutput:
        """Spann3R over a sequence: ``images`` [N, B, 3, H, W] (or N tensors [B, 3, H, W]), N >= 2,
        in [-1, 1], landscape or square, H and W multiples of 16.

        Returns every frame's point map and confidence in frame 0's camera (:class:`Spann3ROutput`).
        """
        frames = list(images.unbind(0)) if isinstance(images, Tensor) else list(images)
        if len(frames) < 2:
            raise ValueError(f"Spann3R: expected at least 2 frames, found {len(frames)}")
        sess = self.session(memory, trace=trace, track_sources=track_sources)
        steps = [s for s in (sess.push(f) for f in frames) if s is not None]
        pts = [steps[0].pts1] + [s.pts1 for s in steps[1:]] + [steps[-1].pts2]
        conf = [steps[0].conf1] + [s.conf1 for s in steps[1:]] + [steps[-1].conf2]
        return Spann3ROutput(torch.stack(pts), torch.stack(conf), torch.stack([s.pts2 for s in steps]),
                             torch.stack([s.conf2 for s in steps]), steps)


class Spann3RSession:
    """Spann3R one frame at a time; memory stays bounded by the :class:`MemoryConfig` sizes.

    :meth:`push` the frames in order: the first call only stores the image and returns None; every
    later call runs one step and returns its :class:`Spann3RStep` (head 1 = the FINAL result of the
    previous frame, head 2 = a provisional result of the new frame, final for the last frame).

    Memory tensors are kept in fp32 (fp64 for an fp64 model) and the read runs outside autocast, so
    that bf16 autocast does not move the attention threshold or the similarity check.

    Args:
        model: the network (``eval()`` is not forced; dropout is not used in any case).
        memory: :class:`MemoryConfig` (default: the model config's eval memory).
        trace: keep the intermediates of each step in :attr:`Spann3RStep.trace`.
        track_sources: record (frame, patch) per memory slot (tests / inspection).
    """

    def __init__(self, model: Spann3R, memory: MemoryConfig | None = None, trace: bool = False,
                 track_sources: bool = False) -> None:
        self.model = model
        self.memory = model.new_memory(memory, track_sources)
        self.trace = bool(trace)
        self.num_frames = 0
        self._first: Tensor | None = None
        self._feat2: Tensor | None = None
        self._feat_k2: Tensor | None = None
        self._shape: tuple[int, ...] | None = None

    @property
    def steps(self) -> int:
        return max(0, self.num_frames - 1)

    def _mem_dtype(self) -> torch.dtype:
        return torch.float64 if self.model.param_dtype == torch.float64 else torch.float32

    def _check(self, x: Tensor, what: str) -> tuple[int, int]:
        """Validate a frame [B, 3, H, W] against the sequence; returns (H, W)."""
        check_images(x, self.model.config.dust3r.patch_size, what)
        if self._shape is None:
            self._shape = tuple(x.shape)
        elif tuple(x.shape) != self._shape:
            raise ValueError(f"{what}: expected the sequence's shape {list(self._shape)}, found {list(x.shape)}")
        H, W = int(x.shape[2]), int(x.shape[3])
        if H > W:
            raise ValueError(f"{what}: portrait input {H}x{W} is not supported (landscape-only heads); "
                             "crop to landscape or square")
        return H, W

    def _check_tokens(self, tokens: Tensor, image_size: tuple[int, int], what: str) -> tuple[int, int]:
        cfg = self.model.config.dust3r
        H, W = int(image_size[0]), int(image_size[1])
        p = cfg.patch_size
        if H % p or W % p or H > W:
            raise ValueError(f"{what}: image size {H}x{W} must be landscape (or square) multiples of {p}")
        T = (H // p) * (W // p)
        if not isinstance(tokens, Tensor) or tokens.dim() != 3 or tuple(tokens.shape[1:]) != (T, cfg.enc_embed_dim):
            found = list(tokens.shape) if isinstance(tokens, Tensor) else type(tokens).__name__
            raise ValueError(f"{what}: expected encoder tokens [B, {T}, {cfg.enc_embed_dim}], found {found}")
        if self._shape is None:
            self._shape = (tokens.shape[0], 3, H, W)
        elif self._shape != (tokens.shape[0], 3, H, W):
            raise ValueError(f"{what}: expected the sequence's shape {list(self._shape)}, found tokens of "
                             f"{tokens.shape[0]} x {H}x{W}")
        return H, W

    def push(self, image: Tensor) -> Spann3RStep | None:
        """Add the next frame ``image`` [B, 3, H, W] (in [-1, 1]); see the class docstring."""
        m = self.model
        H, W = self._check(image, f"Spann3R frame {self.num_frames}")
        image = image.to(m.device)
        self.num_frames += 1
        if self._first is None and self._feat2 is None:
            self._first = image
            return None
        tr: dict[str, Any] | None = {} if self.trace else None
        if self._first is not None:  # step 0: the pair is encoded jointly
            feat1, feat2 = m.encode(torch.cat((self._first, image), 0), tr).chunk(2, dim=0)
            self._first = None
        else:
            feat1, feat2 = self._feat2, m.encode(image, tr)
        return self._step(feat1, [feat2], (H, W), tr)[1]

    def push_tokens(self, tokens: Tensor, image_size: tuple[int, int]) -> Spann3RStep | None:
        """:meth:`push` for a frame already encoded (:meth:`Spann3R.encode`): ``tokens`` [B, T, C]."""
        H, W = self._check_tokens(tokens, image_size, f"Spann3R frame {self.num_frames}")
        tokens = tokens.to(self.model.device)
        self.num_frames += 1
        if self._feat2 is None and self._first is None:
            self._feat2 = tokens
            return None
        tr: dict[str, Any] | None = {} if self.trace else None
        return self._step(self._feat2, [tokens], (H, W), tr)[1]

    def push_best(self, candidates: Sequence[Tensor], image_size: tuple[int, int]) -> tuple[int, Spann3RStep]:
        """The offline reconstruction's next-best-view step (reference ``find_next_best_view``):
        read the memory once, decode every candidate (encoder tokens [B, T, C]) against it and keep
        the one with the highest mean ``(c - 1) / c`` of both heads (first maximum). Returns
        (index into ``candidates``, its step). Needs a previous frame."""
        if self._feat2 is None:
            raise ValueError("Spann3RSession.push_best: push the first frame(s) before choosing the next")
        if not candidates:
            raise ValueError("Spann3RSession.push_best: expected at least one candidate")
        size = (0, 0)
        for k, c in enumerate(candidates):
            size = self._check_tokens(c, image_size, f"Spann3R candidate {k}")
        self.num_frames += 1
        tr: dict[str, Any] | None = {} if self.trace else None
        return self._step(self._feat2, [c.to(self.model.device) for c in candidates], size, tr)

    def _step(self, feat1: Tensor, cands: list[Tensor], size: tuple[int, int],
              tr: dict[str, Any] | None) -> tuple[int, Spann3RStep]:
        m = self.model
        s = self.num_frames - 2
        p = m.config.dust3r.patch_size
        grid = (size[0] // p, size[1] // p)
        dev = feat1.device
        mdt = self._mem_dtype()
        if self._feat_k2 is not None:
            with no_autocast(dev):
                feat_fuse = self.memory.read(self._feat_k2)
            if tr is not None:
                tr["query"], tr["read_attn"] = self._feat_k2, self.memory.last_read_attn
                tr["attn_zeroed"] = self.memory.last_zeroed
        else:
            feat_fuse = feat1
        best: tuple | None = None
        best_score = 0.0
        for k, feat2 in enumerate(cands):
            dec1, dec2 = m.dust3r.decode(feat_fuse.to(feat2.dtype), feat2, grid, tr)
            pts1, conf1 = m.dust3r.head(1, dec1, size, tr)
            pts2, conf2 = m.dust3r.head(2, dec2, size, tr)
            if len(cands) == 1:
                best = (k, feat2, dec1, dec2, pts1, conf1, pts2, conf2)
                break
            score = float(((conf1 - 1) / conf1).mean() + ((conf2 - 1) / conf2).mean())
            if score > best_score or best is None:  # the reference's strict '>' from 0: first maximum
                best, best_score = (k, feat2, dec1, dec2, pts1, conf1, pts2, conf2), max(score, best_score)
        assert best is not None
        k, feat2, dec1, dec2, pts1, conf1, pts2, conf2 = best
        feat_k1 = m.key(1, feat1, dec1[-1])
        feat_k2 = m.key(2, feat2, dec2[-1])
        cur_v = m.value(pts1, tr)
        with no_autocast(dev):
            k1 = feat_k1.to(mdt)
            event = self.memory.add_checked(k1, cur_v.to(mdt) + k1, frame_id=s)
        if tr is not None:
            tr["feat1"], tr["feat2"], tr["feat_fuse"] = feat1, feat2, feat_fuse
            tr["dec1"], tr["dec2"] = dec1, dec2
            tr["feat_k1"], tr["feat_k2"], tr["cur_v"] = feat_k1, feat_k2, cur_v
        self._feat2 = feat2
        self._feat_k2 = feat_k2.to(mdt)
        return k, Spann3RStep(s, pts1, conf1, pts2, conf2, event, tr or {})
