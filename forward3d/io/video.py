"""Writing frame sequences as videos (mp4 through PyAV) or animated GIFs (Pillow), atomically."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Iterable

import numpy as np

from forward3d.io.atomic import atomic_path

logger = logging.getLogger(__name__)

__all__ = ["write_video", "write_png"]


def write_png(path: str | os.PathLike, image: np.ndarray) -> None:
    """Write an ``[H, W, 3]`` uint8 (or ``[H, W]`` uint8/uint16) image as PNG, atomically."""
    from PIL import Image

    with atomic_path(path) as tmp:
        Image.fromarray(np.ascontiguousarray(image)).save(tmp, format="PNG")


def write_video(path: str | os.PathLike, frames: Iterable[np.ndarray], fps: float = 24.0) -> Path:
    """Write ``[H, W, 3]`` uint8 frames to ``.mp4`` (H.264 via PyAV, falling back to MPEG-4 Part 2) or
    ``.gif`` (Pillow). Odd sizes are padded to even for H.264. Returns the path written."""
    p = Path(path)
    suffix = p.suffix.lower()
    frames = list(frames)
    if not frames:
        raise ValueError(f"{p}: no frames to write")
    shape = frames[0].shape
    if any(f.shape != shape for f in frames) or len(shape) != 3 or shape[2] != 3:
        raise ValueError(f"{p}: frames must all be [H, W, 3] uint8 of one size, found {shape} first")
    if suffix == ".gif":
        from PIL import Image

        imgs = [Image.fromarray(f) for f in frames]
        with atomic_path(p) as tmp:
            imgs[0].save(tmp, format="GIF", save_all=True, append_images=imgs[1:], duration=int(1000 / fps), loop=0)
        return p
    if suffix not in (".mp4", ".mov", ".mkv", ".avi"):
        raise ValueError(f"{p}: unsupported video type '{suffix}' (use .mp4 or .gif)")
    import av

    h, w = shape[:2]
    H, W = h + h % 2, w + w % 2
    with atomic_path(p) as tmp:
        last_exc: Exception | None = None
        for codec in ("libx264", "h264", "mpeg4"):
            try:
                with av.open(str(tmp), mode="w") as container:
                    stream = container.add_stream(codec, rate=int(round(fps)))
                    stream.width, stream.height, stream.pix_fmt = W, H, "yuv420p"
                    for f in frames:
                        if (H, W) != (h, w):
                            f = np.pad(f, ((0, H - h), (0, W - w), (0, 0)), mode="edge")
                        for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")):
                            container.mux(packet)
                    for packet in stream.encode():
                        container.mux(packet)
                last_exc = None
                break
            except Exception as exc:  # noqa: BLE001 - codec availability differs between PyAV builds
                last_exc = exc
                logger.debug("codec %s failed: %s", codec, exc)
        if last_exc is not None:
            raise ValueError(f"{p}: no usable video encoder in this PyAV build ({last_exc})") from last_exc
    return p
