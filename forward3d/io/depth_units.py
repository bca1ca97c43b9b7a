"""Is a depth map in the unit it was declared in? One up-front check with a message that says what fixes it.

A depth map stored in metres, in 0.1 mm or in metres saved as millimetres does not fail where it is
read: it reconstructs nothing (an empty TSDF) or renders black views. :func:`check_depth_units` looks
at the median valid depth of a frame once it is converted to metres and, outside a plausible range
(0.1-50 m), raises a ``ValueError`` that shows the values and the ``--depth-scale`` that brings them
into range. Where the evidence is unambiguous (integers 1-20 on a millimetre layout: whole metres
saved as integers) it says so instead of proposing a scale.
"""

from __future__ import annotations

import logging
import math

import numpy as np

__all__ = ["DepthUnitError", "PLAUSIBLE_DEPTH_M", "COMMON_DEPTH_SCALES", "check_depth_units", "suggest_depth_scale"]

log = logging.getLogger(__name__)

PLAUSIBLE_DEPTH_M = (0.1, 50.0)
"""Median scene depth (metres) accepted without complaint: a tabletop scan to a large hall."""

COMMON_DEPTH_SCALES = (1.0, 1000.0, 4000.0, 5000.0, 10000.0)
"""Raw units per metre in use: metres, millimetres, 0.25 mm (some Kinect exports), TUM's 1/5000 m, 0.1 mm."""


class DepthUnitError(ValueError):
    """The depth values do not fit the declared unit (the message says which scale fits)."""


def suggest_depth_scale(raw_median: float, candidates: tuple[float, ...] = COMMON_DEPTH_SCALES) -> float | None:
    """The common scale that puts ``raw_median`` (in raw units) closest to 2 m inside the plausible range."""
    lo, hi = PLAUSIBLE_DEPTH_M
    fits = [s for s in candidates if lo <= raw_median / s <= hi]
    if not fits:
        return None
    return min(fits, key=lambda s: abs(math.log(raw_median / s / 2.0)))


def check_depth_units(depth_m: np.ndarray, scale: float, where: str, *, raw_integer: bool = True,
                      explicit: bool = False, option: str = "--depth-scale") -> None:
    """Raise when the depth map's median is implausible for the declared scale.

    Args:
        depth_m: ``[H, W]`` depth in metres as read with ``scale`` (0 = invalid).
        scale: raw units per metre that were applied (1.0 for float data read as metres).
        where: the file (or frame) named in the message.
        raw_integer: the file stores integers (``depth_m * scale`` are the raw values).
        explicit: the user chose ``scale``: then only warn (they may know better).
        option: the option named in the message.

    Raises:
        DepthUnitError: (a ``ValueError``) the median valid depth is outside :data:`PLAUSIBLE_DEPTH_M`, with the values seen
            and the scale that fixes it (or why no scale does).
    """
    valid = depth_m[np.isfinite(depth_m) & (depth_m > 0)]
    if valid.size == 0:
        return
    med = float(np.median(valid))
    lo, hi = PLAUSIBLE_DEPTH_M
    if lo <= med <= hi:
        return
    raw = valid.astype(np.float64) * scale
    raw_med = float(np.median(raw))
    unit = f"{scale:g} units per metre" if raw_integer else "metres (float data)"
    msg = (f"{where}: implausible depth for {unit}: the median valid depth is {med:.4g} m "
           f"(raw values {np.percentile(raw, 5):.4g}-{np.percentile(raw, 95):.4g}, median {raw_med:.4g}); "
           f"scenes are {lo:g}-{hi:g} m deep.")
    if raw_integer and scale >= 100 and raw.max() <= 20 and np.allclose(raw, np.round(raw)):
        msg += (f" The raw values are small whole numbers ({int(raw.min())}-{int(raw.max())}): this looks like "
                "depth in metres saved as integers, which keeps 1 m steps only and cannot be reconstructed; "
                "save the depth in millimetres (16-bit) or as float metres")
        if explicit:
            msg += f" ({option} {scale:g} was given)"
    else:
        s = suggest_depth_scale(raw_med)
        if s is None:
            msg += f" No common unit fits; pass the right {option} (raw units per metre)"
        elif s == scale:
            msg += " The declared scale already is the closest common unit: check the file"
        else:
            msg += f" With {option} {s:g} ({_unit_name(s)}) the median would be {raw_med / s:.3g} m: pass that"
    if explicit:
        log.warning("%s; going on because %s was given", msg, option)
        return
    raise DepthUnitError(msg)


def _unit_name(scale: float) -> str:
    return {1.0: "metres", 1000.0: "millimetres", 4000.0: "0.25 mm", 5000.0: "TUM, 0.2 mm",
            10000.0: "0.1 mm"}.get(scale, f"1/{scale:g} m")
