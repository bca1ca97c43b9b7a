"""Small private helpers shared by the geometry and eval modules."""

from __future__ import annotations

import numpy as np


def to_numpy64(name: str, x) -> np.ndarray:
    """numpy array / torch tensor / sequence -> float64 numpy array (tensors are detached, moved to CPU)."""
    if hasattr(x, "detach") and hasattr(x, "cpu"):
        x = x.detach().cpu().numpy()
    try:
        return np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{name}: expected an array or tensor of numbers, found {type(x).__name__}") from exc
