"""JSON output: numpy/Path-aware conversion and atomic writing (metrics, summaries, configs)."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from forward3d.io.atomic import atomic_write

__all__ = ["to_jsonable", "write_json", "read_json"]


def to_jsonable(x: Any) -> Any:
    """Convert numpy arrays/scalars, tuples and Paths to plain JSON values; non-finite floats become
    ``null`` (JSON has no NaN/inf)."""
    if isinstance(x, dict):
        return {str(k): to_jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [to_jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return to_jsonable(x.tolist())
    if isinstance(x, (np.floating, float)):
        return float(x) if math.isfinite(float(x)) else None
    if isinstance(x, (np.integer, np.bool_)):
        return x.item()
    if isinstance(x, Path):
        return str(x)
    return x


def write_json(path: str | os.PathLike, data: Any) -> Path:
    """Write ``data`` (converted with :func:`to_jsonable`) as indented JSON, atomically."""
    p = Path(path)
    with atomic_write(p, "w") as f:
        json.dump(to_jsonable(data), f, indent=2)
        f.write("\n")
    return p


def read_json(path: str | os.PathLike, what: str = "JSON file", expect: type = dict) -> Any:
    """Parse a JSON file whose top level must be ``expect`` (dict by default); ValueError naming the
    file and ``what`` it should be when it cannot be read, is not JSON or has another top level."""
    p = Path(path)
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ValueError(f"{p}: not a readable {what} ({type(exc).__name__}: {exc})") from exc
    if not isinstance(data, expect):
        raise ValueError(f"{p}: expected the {what} to hold a JSON {expect.__name__}, found {type(data).__name__}")
    return data
