"""Structure from motion (extra ``[sfm]``: pycolmap): frames -> a pose and intrinsics for every frame.

- :mod:`.keyframes`: thumbnails, sharpness, phase-correlation parallax, keyframe selection, a cheap
  global descriptor for loop candidates and the pair schemes;
- :mod:`.colmap_sfm`: the pycolmap boundary (SIFT, matching, incremental or global mapping, bundle
  adjustment, conversion to forward3d types; SIFT + PnP for frames outside the model);
- :mod:`.pipeline`: :func:`spool_frames` + :func:`run_sfm` (keyframes, SfM, PnP / interpolation of the
  other frames) -> :class:`SfMResult`.

pycolmap is imported only when SfM runs (a missing one -> ``pip install 'forward3d[sfm]'``).
"""

from forward3d.sfm.config import SfMConfig
from forward3d.sfm.pipeline import (
    MIN_VIEWS,
    SfMResult,
    SpooledFrames,
    camera_prior,
    choose_keyframes,
    choose_pairs,
    read_camera_file,
    run_sfm,
    spool_frames,
)

__all__ = ["SfMConfig", "SfMResult", "SpooledFrames", "spool_frames", "run_sfm", "camera_prior", "read_camera_file",
           "choose_keyframes", "choose_pairs", "MIN_VIEWS"]
