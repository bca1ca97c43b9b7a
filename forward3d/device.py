"""One device rule for every command and back-end.

``"auto"`` (the default everywhere) means CUDA when torch sees a GPU, else the CPU; anything else is a
torch device string (``"cpu"``, ``"cuda"``, ``"cuda:1"``) and is checked here, so a typo or a missing GPU
is one clear error before any work starts.
"""

from __future__ import annotations

from typing import Literal

import torch

__all__ = ["resolve_device", "resolve_dtype", "DTypeArg", "DEVICE_HELP"]

DTypeArg = torch.dtype | Literal["auto", "float32", "bfloat16", "float16"]

DEVICE_HELP = "compute device: auto (CUDA when available, else CPU), cpu, cuda or cuda:N"


def resolve_device(spec: str | torch.device | None = "auto") -> torch.device:
    """``"auto" | None | "cpu" | "cuda" | "cuda:N" | torch.device`` -> a usable :class:`torch.device`.

    Raises:
        ValueError: an unknown device string, or CUDA asked for when torch has no GPU.
    """
    if isinstance(spec, torch.device):
        dev = spec
    else:
        text = "auto" if spec is None else str(spec).strip().lower()
        if text in ("", "auto"):
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        try:
            dev = torch.device(text)
        except (RuntimeError, ValueError):
            raise ValueError(f"device: expected auto, cpu, cuda or cuda:N, found {spec!r}") from None
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"device: expected auto, cpu, cuda or cuda:N, found {spec!r}")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {spec!r}: torch sees no CUDA GPU on this machine (use --device cpu or auto)")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"device {spec!r}: only {torch.cuda.device_count()} CUDA device(s) present")
    return dev


def resolve_dtype(dtype: DTypeArg, device: torch.device) -> torch.dtype:
    """A compute (autocast) dtype: ``torch.float32 | bfloat16 | float16`` or their names, or ``"auto"``
    (bf16 on a GPU that supports it, else fp16; fp32 on the CPU).

    Raises:
        ValueError: an unknown name or dtype, or float16 on the CPU.
    """
    if isinstance(dtype, str):
        if dtype == "auto":
            if device.type == "cuda":
                return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
            return torch.float32
        names = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
        if dtype not in names:
            raise ValueError(f"dtype: expected one of {sorted(names) + ['auto']}, found {dtype!r}")
        dtype = names[dtype]
    if dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise ValueError(f"dtype: expected float32, bfloat16 or float16, found {dtype}")
    if dtype == torch.float16 and device.type == "cpu":
        raise ValueError("dtype float16 is not supported on CPU; use bfloat16 or float32")
    return dtype
