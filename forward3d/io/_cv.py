"""The optional OpenCV import (``pip install forward3d[data]``), with OpenEXR decoding enabled."""

from __future__ import annotations

import os

__all__ = ["import_cv2"]


def import_cv2():
    """``cv2`` (opencv-python-headless), or ImportError naming the extra that installs it.

    OpenCV decodes OpenEXR only when ``OPENCV_IO_ENABLE_OPENEXR`` is set before its first import;
    it is set here (unless the caller chose a value) so Habitat ``*_depth.exr`` files can be read.
    """
    from forward3d.optional import import_optional

    os.environ.setdefault("OPENCV_IO_ENABLE_OPENEXR", "1")
    return import_optional("cv2", "data", "this step (fisheye undistortion, EXR depth, inpainting)")
