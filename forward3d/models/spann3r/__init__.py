"""Spann3R (spatial-memory 3D reconstruction) in plain PyTorch, checkpoint-compatible with the
official ``spann3r.pth``: the DUSt3R backbone with DPT heads, the memory value encoder, the key heads
and :class:`SpatialMemory`.

>>> from forward3d.models.spann3r import Spann3R
>>> model = Spann3R.from_pretrained("checkpoints/spann3r.pth")  # doctest: +SKIP
>>> out = model(images)  # [N, B, 3, 224, 224] -> out.pts3d [N, B, 224, 224, 3]  # doctest: +SKIP
"""

from .config import SPANN3R_FULL, DPTConfig, DUSt3RConfig, MemoryConfig, Spann3RConfig
from .memory import MemoryEvent, SpatialMemory
from .model import Spann3R, Spann3ROutput, Spann3RSession, Spann3RStep

__all__ = ["Spann3R", "Spann3RConfig", "DUSt3RConfig", "DPTConfig", "MemoryConfig", "SPANN3R_FULL",
           "SpatialMemory", "MemoryEvent", "Spann3RSession", "Spann3RStep", "Spann3ROutput"]
