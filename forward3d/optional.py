"""Optional dependencies: one import helper, so every missing extra gives the same kind of message."""

from __future__ import annotations

import importlib
from types import ModuleType

__all__ = ["import_optional"]


def import_optional(module: str, extra: str, needed_for: str) -> ModuleType:
    """``import module``, or an ImportError saying what needs it and which extra installs it.

    Example: ``import_optional("pycolmap", "sfm", "structure from motion")`` ->
    ``ImportError: structure from motion needs pycolmap: pip install 'forward3d[sfm]' (...)``.
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ImportError(f"{needed_for} needs {module.split('.')[0]}: pip install 'forward3d[{extra}]' ({exc})") from exc
