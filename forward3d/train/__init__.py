"""Training: Flash3D on RealEstate10K (:mod:`forward3d.train.flash3d`), SLAM3R I2P/L2W on dataset
mixtures, RGB or RGB-D (:mod:`forward3d.train.slam3r`, losses in :mod:`forward3d.train.slam3r_losses`),
the loop both share (:mod:`forward3d.train.loop`), losses, EMA, DDP helpers.

Import the submodules directly (``from forward3d.train.slam3r import SLAM3RTrainer``); this package
imports nothing heavy.
"""

__all__ = ["flash3d", "slam3r", "slam3r_losses", "loop", "losses", "ema", "distributed"]
