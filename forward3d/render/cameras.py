"""Batched pinhole cameras for the rasterizer (OpenCV axes, ``w2c`` + ``K`` in pixels)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

__all__ = ["Cameras"]


def _as_tensor(x: Tensor | np.ndarray, name: str, shape_tail: tuple[int, int]) -> Tensor:
    t = x if isinstance(x, Tensor) else torch.as_tensor(np.asarray(x), dtype=torch.float32)
    if t.ndim == 2:
        t = t[None]
    if t.ndim != 3 or tuple(t.shape[1:]) != shape_tail:
        raise ValueError(
            f"Cameras {name}: expected shape [C, {shape_tail[0]}, {shape_tail[1]}], found {list(t.shape)}"
        )
    if not t.is_floating_point():
        t = t.float()
    return t


@dataclass
class Cameras:
    """``C`` pinhole cameras sharing one image size.

    Attributes:
        w2c: ``[C, 4, 4]`` world-to-camera transforms (OpenCV axes: x right, y down, z forward).
            May require grad (the rasterizer differentiates through it).
        K: ``[C, 3, 3]`` intrinsics in pixels for a ``width x height`` image, pixel centres at +0.5.
        width, height: image size in pixels.

    A single ``[4, 4]`` / ``[3, 3]`` pair is promoted to ``C = 1``; numpy arrays become float32 tensors.
    """

    w2c: Tensor
    K: Tensor
    width: int
    height: int

    def __post_init__(self) -> None:
        self.w2c = _as_tensor(self.w2c, "w2c", (4, 4))
        self.K = _as_tensor(self.K, "K", (3, 3))
        if self.K.shape[0] != self.w2c.shape[0]:
            raise ValueError(
                f"Cameras: expected as many K as w2c, found {self.K.shape[0]} K for {self.w2c.shape[0]} w2c"
            )
        self.width, self.height = int(self.width), int(self.height)
        if self.width <= 0 or self.height <= 0:
            raise ValueError(f"Cameras: expected a positive image size, found {self.width}x{self.height}")

    def __len__(self) -> int:
        return int(self.w2c.shape[0])

    @classmethod
    def from_c2w(cls, c2w: Tensor | np.ndarray, K: Tensor | np.ndarray, width: int, height: int) -> "Cameras":
        """Cameras from camera-to-world poses ``[C, 4, 4]`` (or ``[4, 4]``)."""
        c2w = _as_tensor(c2w, "c2w", (4, 4))
        return cls(torch.linalg.inv(c2w), K, width, height)

    @classmethod
    def from_reconstruction(cls, rec, index=None, dtype: torch.dtype = torch.float32) -> "Cameras":
        """Cameras of a :class:`forward3d.types.Reconstruction` (all frames, or ``rec.c2w[index]``)."""
        c2w = np.asarray(rec.c2w if index is None else rec.c2w[index]).reshape(-1, 4, 4)
        K = np.asarray(rec.K if index is None else rec.K[index]).reshape(-1, 3, 3)
        w, h = rec.image_size
        w2c = torch.as_tensor(np.linalg.inv(c2w), dtype=dtype)
        return cls(w2c, torch.as_tensor(K, dtype=dtype), w, h)

    @property
    def c2w(self) -> Tensor:
        """``[C, 4, 4]`` camera-to-world transforms."""
        return torch.linalg.inv(self.w2c)

    @property
    def centers(self) -> Tensor:
        """``[C, 3]`` camera centres in world coordinates (as gsplat: ``inv(w2c)[:, :3, 3]``)."""
        return self.c2w[:, :3, 3]

    @property
    def device(self) -> torch.device:
        return self.w2c.device

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> "Cameras":
        return Cameras(self.w2c.to(device=device, dtype=dtype), self.K.to(device=device, dtype=dtype),
                       self.width, self.height)

    def __getitem__(self, index: int | slice | Tensor) -> "Cameras":
        """A subset of the cameras (an int keeps the batch dimension)."""
        if isinstance(index, int):
            index = slice(index, index + 1 if index != -1 else None)
        return Cameras(self.w2c[index], self.K[index], self.width, self.height)

    def resized(self, width: int, height: int) -> "Cameras":
        """The same cameras for a resized image: ``K`` rows scaled by ``width / self.width`` etc."""
        sx, sy = width / self.width, height / self.height
        scale = torch.tensor([sx, sy, 1.0], dtype=self.K.dtype, device=self.K.device)
        return Cameras(self.w2c, self.K * scale[:, None], width, height)
