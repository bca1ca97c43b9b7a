"""DepthSplat-compatible multi-view depth + Gaussian model (``cvg/depthsplat``, released checkpoints)."""

from .config import DepthSplatConfig, depthsplat_config
from .model import DepthSplat, DepthSplatOutput

__all__ = ["DepthSplat", "DepthSplatConfig", "DepthSplatOutput", "depthsplat_config"]
