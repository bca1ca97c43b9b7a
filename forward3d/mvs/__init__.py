"""Dense multi-view stereo of posed images (PyTorch, CPU or CUDA), no learned weights.

``dense_reconstruct(images, K, c2w, sparse_points=..., sparse_visibility=..., config=MVSConfig())``:
source views by baseline and overlap (:mod:`.views`), a bilaterally weighted NCC cost (:mod:`.cost`),
a coarse-to-fine plane sweep over inverse depth (:mod:`.sweep`), a geometric-consistency filter across
views and point or TSDF fusion (:mod:`.consistency`, :mod:`.dense`).
"""

from forward3d.mvs.config import DenseResult, MVSConfig
from forward3d.mvs.dense import dense_reconstruct

__all__ = ["DenseResult", "MVSConfig", "dense_reconstruct"]
