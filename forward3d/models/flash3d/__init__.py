"""Flash3D: single image -> layered 3D Gaussians (checkpoint-compatible with eldar/flash3d)."""

from forward3d.models.flash3d.model import Flash3D, Flash3DConfig, Flash3DOutput, save_checkpoint
from forward3d.models.flash3d.preprocess import Flash3DInput, prepare_input

__all__ = ["Flash3D", "Flash3DConfig", "Flash3DOutput", "Flash3DInput", "prepare_input", "save_checkpoint"]
