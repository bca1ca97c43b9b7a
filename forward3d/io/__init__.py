"""forward3d.io: every file format lives here.

The common entry points are re-exported lazily (importing ``forward3d.io`` stays cheap):
``open_frames``, ``detect_layout``, ``write_layout`` (inputs), ``export_reconstruction``,
``save_reconstruction``/``load_reconstruction``, ``read_point_cloud``/``write_point_cloud``,
``read_mesh``/``write_mesh``, ``read_tum``/``write_tum``, ``read_gaussians``/``write_gaussians``.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "open_frames": "sources", "detect_layout": "sources", "write_layout": "sources", "FrameSource": "sources",
    "export_reconstruction": "export", "read_mesh": "export", "write_mesh": "export",
    "save_reconstruction": "bundle", "load_reconstruction": "bundle",
    "read_point_cloud": "ply", "write_point_cloud": "ply",
    "read_tum": "trajectory", "write_tum": "trajectory",
    "read_gaussians": "gaussians", "write_gaussians": "gaussians",
    "atomic_write": "atomic", "atomic_path": "atomic",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"forward3d.io.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'forward3d.io' has no attribute {name!r}")
