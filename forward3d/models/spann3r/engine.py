"""The real Spann3R network behind :class:`forward3d.models.spann3r.protocol.Spann3RModels`.

Every call runs under ``torch.inference_mode`` and, when asked, autocast (bf16 on CPU, bf16/fp16
on GPU); the DPT heads and the spatial memory always run in fp32.
"""

from __future__ import annotations

import contextlib
import logging
import os
from typing import Any, Sequence

import torch
from torch import Tensor
from tqdm.auto import tqdm

from forward3d.models.slam3r.engine import DTypeArg, _resolve_dtype

from .config import MemoryConfig
from .model import Spann3R, Spann3RSession, Spann3RStep
from .protocol import FramePrediction

logger = logging.getLogger(__name__)

__all__ = ["Spann3REngine"]


def _info(step: Spann3RStep, session: Spann3RSession) -> dict:
    ev = step.memory
    return {"step": step.step, "memory_size": ev.size, "skipped": ev.skipped, "pruned": ev.pruned,
            "attn_zeroed": session.memory.last_zeroed, "wm": ev.wm, "lm": ev.lm}


class _Stream:
    """:class:`~forward3d.models.spann3r.protocol.Spann3RStream` over a :class:`Spann3RSession`."""

    def __init__(self, engine: "Spann3REngine", memory: MemoryConfig | None = None) -> None:
        self.engine = engine
        self.session = engine.model.session(memory or engine.memory)
        self.pending: tuple[int, Tensor, Tensor, dict] | None = None  # provisional last-frame result
        self.last_id: int | None = None
        self.count = 0

    def push(self, image: Tensor, frame_id: int) -> list[FramePrediction]:
        e = self.engine
        H, W = e.image_size
        if not isinstance(image, Tensor) or tuple(image.shape) != (3, H, W):
            found = list(image.shape) if isinstance(image, Tensor) else type(image).__name__
            raise ValueError(f"Spann3R frame {frame_id}: expected an image [3, {H}, {W}], found {found}")
        with torch.inference_mode(), e.autocast():
            step = self.session.push(image[None].to(e.device))
        self.count += 1
        prev, self.last_id = self.last_id, int(frame_id)
        if step is None:
            return []
        info = _info(step, self.session)
        self.pending = (int(frame_id), step.pts2[0].float().cpu(), step.conf2[0].float().cpu(), info)
        return [FramePrediction(int(prev), step.pts1[0].float().cpu(), step.conf1[0].float().cpu(), info)]

    def finish(self) -> list[FramePrediction]:
        if self.pending is None:
            raise ValueError(f"Spann3R: expected at least 2 frames, found {self.count}")
        fid, pts, conf, info = self.pending
        self.pending = None
        return [FramePrediction(fid, pts, conf, dict(info, head=2))]


class Spann3REngine:
    """A :class:`Spann3R` network implementing the pipeline protocol.

    Args:
        model: the network (moved to ``device``, ``eval()``).
        device: default: where the model's parameters are.
        dtype: compute dtype: ``torch.float32`` (default, exact), ``torch.bfloat16`` /
            ``torch.float16`` (autocast; fp16 GPU only) or ``"auto"``.
        memory: :class:`MemoryConfig` overriding the model's eval memory (sizes, thresholds).
        image_size: (H, W) the frames are cropped to (224 x 224: what the official model was
            trained on); landscape or square, multiples of the patch size.
        progress: tqdm bars in the offline mode's pairwise pass.
    """

    def __init__(self, model: Spann3R, device: torch.device | str | None = None, dtype: DTypeArg = torch.float32,
                 memory: MemoryConfig | None = None, image_size: tuple[int, int] = (224, 224),
                 progress: bool = False) -> None:
        if not isinstance(model, Spann3R):
            raise TypeError(f"Spann3REngine: expected a Spann3R model, found {type(model).__name__}")
        self.device = torch.device(device) if device is not None else model.device
        self.model = model.to(self.device).eval()
        self.dtype = _resolve_dtype(dtype, self.device)
        self.memory = memory or model.config.memory
        h, w = int(image_size[0]), int(image_size[1])
        p = model.config.dust3r.patch_size
        if h % p or w % p or h > w or h <= 0:
            raise ValueError(f"Spann3REngine.image_size: expected a landscape or square (H, W) of multiples of {p}, "
                             f"found {image_size}")
        self.image_size: tuple[int, int] = (h, w)
        self.progress = bool(progress)

    @classmethod
    def from_pretrained(cls, source: str | os.PathLike, *, device: torch.device | str | None = None,
                        dtype: DTypeArg = torch.float32, weights_dtype: torch.dtype = torch.float32,
                        config: Any = None, **kwargs: Any) -> "Spann3REngine":
        """Load the network (``Spann3R.from_pretrained``) and wrap it; ``kwargs``: ``memory``,
        ``image_size``, ``progress``. ``weights_dtype=torch.bfloat16`` stores the parameters in bf16."""
        dev = torch.device(device) if device is not None else torch.device("cpu")
        model = Spann3R.from_pretrained(source, config=config, device=dev, dtype=weights_dtype)
        return cls(model, device=dev, dtype=dtype, **kwargs)

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.dtype in (torch.float32, torch.float64):
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    # ------------------------------------------------------------------ protocol
    def start(self, memory: MemoryConfig | None = None) -> _Stream:
        """A new sequence (see :class:`~forward3d.models.spann3r.protocol.Spann3RStream`);
        ``memory`` overrides the engine's memory config for it."""
        return _Stream(self, memory)

    def pair_confidences(self, tokens: Tensor, batch: int = 8) -> Tensor:
        """The reference offline graph: plain DUSt3R on every ordered pair ``(i, j)`` of encoded
        frames ``tokens`` [N, T, C]; ``[N, N]`` = mean ``(c - 1) / c`` of view 1 + of view 2
        (0 on the diagonal). ``N (N - 1)`` decoder + head runs."""
        n = int(tokens.shape[0])
        H, W = self.image_size
        p = self.model.config.dust3r.patch_size
        grid = (H // p, W // p)
        pairs = [(i, j) for i in range(n) for j in range(n) if i != j]
        out = torch.zeros(n, n)
        bb = self.model.dust3r
        with torch.inference_mode(), self.autocast():
            for k in tqdm(range(0, len(pairs), batch), desc="Spann3R pairs", disable=not self.progress):
                chunk = pairs[k:k + batch]
                i = torch.tensor([a for a, _ in chunk], device=tokens.device)
                j = torch.tensor([b for _, b in chunk], device=tokens.device)
                dec1, dec2 = bb.decode(tokens[i], tokens[j], grid)
                _, c1 = bb.head(1, dec1, (H, W))
                _, c2 = bb.head(2, dec2, (H, W))
                score = ((c1 - 1) / c1).mean(dim=(1, 2)) + ((c2 - 1) / c2).mean(dim=(1, 2))
                for (a, b), sc in zip(chunk, score.float().cpu().tolist()):
                    out[a, b] = sc
        return out

    def offline(self, images: Tensor, frame_ids: Sequence[int],
                memory: MemoryConfig | None = None) -> tuple[list[int], list[FramePrediction]]:
        """The reference ``offline_reconstruction`` (demo/eval ``--offline``): the pair with the
        highest pairwise confidence starts; then, after each memory read, the remaining frame whose
        decoding against the memory gives the highest confidence is added. ``N^2`` decodes: for
        short (keyframe) sequences."""
        H, W = self.image_size
        if not isinstance(images, Tensor) or images.dim() != 4 or tuple(images.shape[1:]) != (3, H, W):
            found = list(images.shape) if isinstance(images, Tensor) else type(images).__name__
            raise ValueError(f"Spann3R offline: expected images [N, 3, {H}, {W}], found {found}")
        ids = [int(i) for i in frame_ids]
        n = len(ids)
        if n != images.shape[0] or n < 2:
            raise ValueError(f"Spann3R offline: expected >= 2 images with one id each, found {images.shape[0]} "
                             f"images and {n} ids")
        m = self.model
        with torch.inference_mode(), self.autocast():
            tokens = torch.cat([m.encode(images[k:k + 8].to(self.device)) for k in range(0, n, 8)])
        conf = self.pair_confidences(tokens)
        first = int(torch.argmax(conf))  # row-major first maximum, as np.unravel_index(argmax)
        i0, j0 = divmod(first, n)
        order = [i0, j0]
        todo = [k for k in range(n) if k not in (i0, j0)]
        sess = m.session(memory or self.memory)
        preds: list[FramePrediction] = []
        with torch.inference_mode(), self.autocast():
            sess.push_tokens(tokens[i0:i0 + 1], (H, W))
            step = sess.push_tokens(tokens[j0:j0 + 1], (H, W))
            assert step is not None
            for _ in tqdm(range(len(todo) + 1), desc="Spann3R offline", disable=not self.progress):
                preds.append(FramePrediction(ids[order[len(preds)]], step.pts1[0].float().cpu(),
                                             step.conf1[0].float().cpu(), _info(step, sess)))
                if not todo:
                    break
                k, step = sess.push_best([tokens[c:c + 1] for c in todo], (H, W))
                order.append(todo.pop(k))
        preds.append(FramePrediction(ids[order[-1]], step.pts2[0].float().cpu(), step.conf2[0].float().cpu(),
                                     dict(_info(step, sess), head=2)))
        return [ids[k] for k in order], preds
