"""Evaluation metrics.

- :mod:`forward3d.eval.recon`: point-cloud accuracy / completion / chamfer / F-score / normal consistency.
- :mod:`forward3d.eval.traj`: ATE, RPE and timestamp association.
- :mod:`forward3d.eval.image`: PSNR / SSIM of rendered views (imported from there, not re-exported,
  so that importing ``forward3d.eval`` stays light).
"""

from forward3d.eval.recon import nearest_distances, recon_metrics, voxel_downsample
from forward3d.eval.traj import associate, ate, rpe

__all__ = ["recon_metrics", "voxel_downsample", "nearest_distances", "ate", "rpe", "associate"]
