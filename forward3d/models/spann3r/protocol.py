"""The interface between the Spann3R reconstruction pipeline and the network behind it.

The pipeline (``forward3d.pipelines.spann3r``) only talks to an object with this interface: the real
network (:class:`forward3d.models.spann3r.engine.Spann3REngine`) or an oracle that returns the ground
truth of a synthetic scene (``forward3d.pipelines.oracle``) for testing the pipeline's logic.

Shapes: ``H, W`` = ``image_size`` (224 x 224 for the official model). Point maps are ``[H, W, 3]``
float32 in the camera frame of the sequence's FIRST frame (the first one pushed, or the first of the
offline order), confidences ``[H, W]`` float32 (``1 + exp(x)``, always > 1).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, Sequence, runtime_checkable

import torch
from torch import Tensor

__all__ = ["FramePrediction", "Spann3RStream", "Spann3RModels"]


@dataclass
class FramePrediction:
    """The final prediction of one frame.

    Attributes:
        frame_id: the id the frame was pushed with.
        points: ``[H, W, 3]`` float32 (CPU) in the first frame's camera coordinates.
        confidence: ``[H, W]`` float32 (CPU).
        info: memory information of the step that produced it (``memory_size``, ``skipped``,
            ``pruned``, ...).
    """

    frame_id: int
    points: Tensor
    confidence: Tensor
    info: dict = field(default_factory=dict)


class Spann3RStream(Protocol):
    """One sequence, frame by frame."""

    def push(self, image: Tensor, frame_id: int) -> list[FramePrediction]:
        """Add a frame ``image`` [3, H, W] in [-1, 1]. Returns the predictions that became final:
        none for the first frame, then the PREVIOUS frame's (a frame is final once the next one
        has been decoded against it)."""
        ...

    def finish(self) -> list[FramePrediction]:
        """End of the sequence: the last frame's prediction. Raises ValueError with < 2 frames."""
        ...


@runtime_checkable
class Spann3RModels(Protocol):
    image_size: tuple[int, int]  # (H, W) the model takes
    device: torch.device

    def start(self, memory: Any = None) -> Spann3RStream:
        """A new sequence (empty memory); ``memory``: a :class:`~forward3d.models.spann3r.config.MemoryConfig`
        overriding the model's (None = the model's own)."""
        ...

    def offline(self, images: Tensor, frame_ids: Sequence[int],
                memory: Any = None) -> tuple[list[int], list[FramePrediction]]:
        """All frames at once (``images`` [N, 3, H, W]): the reference's offline reconstruction
        (initial pair from pairwise confidences, then greedy next-best view). Returns the
        processing order (frame ids) and the predictions in that order."""
        ...
