"""Training: Flash3D on RealEstate10K (:mod:`forward3d.train.flash3d`), losses, EMA, DDP helpers.

Import the submodules directly (``from forward3d.train.flash3d import Flash3DTrainer``); this package
imports nothing heavy.
"""

__all__ = ["flash3d", "losses", "ema", "distributed"]
