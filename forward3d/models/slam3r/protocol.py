"""The interface between the SLAM3R reconstruction pipeline and the networks behind it.

The pipeline (``forward3d.pipelines.slam3r``) only talks to an object with this interface. The real
networks implement it in ``forward3d.models.slam3r.engine.SLAM3REngine``; an oracle that returns
ground truth of a synthetic scene implements it for testing the pipeline's own logic.

Shapes: ``H, W`` = ``image_size`` (e.g. 224 x 224), ``T`` = number of patch tokens, ``C`` = token
width. Point maps are ``[..., H, W, 3]`` float32, confidences ``[..., H, W]`` float32 (``1 + exp(x)``,
so always > 1). All tensors live on ``device``.
"""

from __future__ import annotations

from typing import Protocol, Sequence, runtime_checkable

import torch
from torch import Tensor


@runtime_checkable
class SLAM3RModels(Protocol):
    image_size: tuple[int, int]  # (H, W) the models take
    device: torch.device
    # optional: ``depth_channels`` (int, default 0): encode() takes 3 + k channels (RGB + depth planes)

    def encode(self, images: Tensor, ids: Sequence[int] | None = None) -> Tensor:
        """Encode frames once. ``images`` [B, 3, H, W] in [-1, 1] (ImgNorm mean = std = 0.5);
        ``ids``: the frames' indices in the sequence (used by oracles, ignored by networks).
        Returns cached tokens [B, T, C]: the I2P encoder blocks' output BEFORE ``enc_norm``."""
        ...

    def i2p(self, tokens: Tensor, ref_index: int = 0) -> tuple[Tensor, Tensor]:
        """Image-to-points on ``B`` windows of ``V`` views each: ``tokens`` [B, V, T, C].
        View ``ref_index`` of each window is the reference. Returns (pts [B, V, H, W, 3] in the
        reference view's camera frame, conf [B, V, H, W])."""
        ...

    def corr_scores(self, query_tokens: Tensor, cand_tokens: Tensor) -> Tensor:
        """Retrieval scores (I2P ``get_corr_score``, depth 2): queries [Q, T, C] as references,
        candidates [M, T, C] as sources. Returns per-patch scores [M, Q, T'] (``1 + exp(x)``)."""
        ...

    def l2w(self, scene_tokens: Tensor, scene_pts_world: Tensor, frame_tokens: Tensor,
            frame_pts_local: Tensor) -> tuple[Tensor, Tensor]:
        """Local-to-world registration. Scene frames: tokens [R, T, C] with world point maps
        [R, H, W, 3]; frames to register: tokens [S, T, C] with their local (I2P) point maps
        [S, H, W, 3] (invalid points zeroed). Returns (the S frames' world point maps
        [S, H, W, 3], conf [S, H, W])."""
        ...
