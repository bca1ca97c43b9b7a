"""The SLAM3R back-end (see :mod:`forward3d.pipelines.slam3r.backend`).

- :mod:`.common`: the config, preprocessing (crop transform), point-map normalisation, depth fit,
  retrieval and point-cloud fusion shared by both modes;
- :mod:`.offline` / :mod:`.online`: the two reconstruction modes;
- :mod:`.buffer`: the buffering set of scene-frame candidates;
- :mod:`.cameras` / :mod:`.result`: cameras for every frame from the point maps.

:mod:`forward3d.pipelines.oracle` holds ground-truth stand-ins for the networks (tests, benchmarks of
the pipeline logic).
"""

from forward3d.pipelines.slam3r.backend import SLAM3RBackend, load_models
from forward3d.pipelines.slam3r.common import (
    CropTransform,
    PreparedFrame,
    SLAM3RConfig,
    crop_transform,
    fit_depth_scale,
    prepare_frame,
)

__all__ = ["SLAM3RBackend", "SLAM3RConfig", "load_models", "CropTransform", "PreparedFrame", "crop_transform",
           "prepare_frame", "fit_depth_scale"]
