"""Progress bars: one helper so every loop shows the same tqdm bar (or none).

``progress_bar(total, desc, enabled=False)`` returns a bar whose methods do nothing, so library code
never branches on whether progress is shown. The CLI wraps each command in
``tqdm.contrib.logging.logging_redirect_tqdm`` so that log warnings print above the bar, not glued to it.
The environment variable ``FORWARD3D_NO_PROGRESS=1`` turns every bar off (CI logs, notebooks).
"""

from __future__ import annotations

import os
from typing import Any

__all__ = ["progress_bar", "progress_enabled"]


def progress_enabled(enabled: bool = True) -> bool:
    """``enabled`` unless ``FORWARD3D_NO_PROGRESS=1`` is set."""
    return bool(enabled) and os.environ.get("FORWARD3D_NO_PROGRESS", "") not in ("1", "true", "yes")


def progress_bar(total: int | None = None, desc: str = "", *, unit: str = "it", enabled: bool = True,
                 leave: bool = False, **kwargs: Any):
    """A ``tqdm.auto.tqdm`` bar (``disable=True`` when ``enabled`` is False: same API, prints nothing)."""
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, leave=leave, dynamic_ncols=True,
                disable=not progress_enabled(enabled), **kwargs)
