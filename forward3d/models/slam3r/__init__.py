"""SLAM3R networks (I2P, L2W) in plain PyTorch, checkpoint-compatible with the published weights.

>>> from forward3d.models.slam3r import Image2Points, Local2World, SLAM3REngine
>>> engine = SLAM3REngine.from_pretrained("path/to/slam3r_i2p", "path/to/slam3r_l2w")  # doctest: +SKIP
"""

from .config import SLAM3RNetConfig
from .i2p import Image2Points
from .l2w import L2WOutput, Local2World

__all__ = ["SLAM3RNetConfig", "Image2Points", "Local2World", "L2WOutput", "SLAM3REngine"]


def __getattr__(name: str):  # lazy: the engine imports the protocol and both models
    if name == "SLAM3REngine":
        from .engine import SLAM3REngine

        return SLAM3REngine
    raise AttributeError(name)
