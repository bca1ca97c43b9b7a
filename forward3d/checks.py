"""Input checks with one message format (kornia's ``KORNIA_CHECK_SHAPE`` habit).

``check_shape(x, "B 3 H W", "image")`` raises ``ValueError("image: expected shape [B, 3, H, W], found
[2, 4, 8, 8]")``. A spec is a space-separated list of dimensions: an integer must match exactly, a name
matches any size (the same name twice must have the same size), ``*`` matches any size, and a leading
``...`` matches any number of leading dimensions (including none). It returns the sizes bound to the
names, so callers can check that two arrays agree::

    dims = check_shape(points, "N 3", "points")
    check_shape(colors, f"{dims['N']} 3", "colors")
"""

from __future__ import annotations

from typing import Any

__all__ = ["check_shape", "shape_text"]


def shape_text(spec: str) -> str:
    """``"... 3 3"`` -> ``"[..., 3, 3]"`` (for messages)."""
    return "[" + ", ".join(spec.split()) + "]"


def check_shape(x: Any, spec: str, name: str = "input", where: str = "") -> dict[str, int]:
    """Raise ``ValueError`` unless ``x.shape`` matches ``spec``; returns ``{dim name: size}``.

    Args:
        x: anything with a ``.shape`` (numpy array, tensor) or ``None`` (accepted: optional inputs).
        spec: e.g. ``"N 3"``, ``"B 3 H W"``, ``"... 4 4"``, ``"* 2"``.
        name: what ``x`` is, first in the message.
        where: optional context (a file name) shown in brackets after ``name``.
    """
    if x is None:
        return {}
    found = tuple(int(s) for s in getattr(x, "shape", ()))
    dims = spec.split()
    leading = bool(dims) and dims[0] == "..."
    if leading:
        dims = dims[1:]
    loc = f" ({where})" if where else ""

    def fail() -> ValueError:
        return ValueError(f"{name}{loc}: expected shape {shape_text(spec)}, found {list(found)}")

    if (len(found) < len(dims)) if leading else (len(found) != len(dims)):
        raise fail()
    bound: dict[str, int] = {}
    for d, f in zip(dims, found[len(found) - len(dims):]):
        if d == "*":
            continue
        if d.lstrip("-").isdigit():
            if int(d) != f:
                raise fail()
        elif bound.setdefault(d, f) != f:
            raise fail()
    return bound
