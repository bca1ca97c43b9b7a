"""SLAM3R reconstruction: frames -> cameras for every frame + world point maps + a fused point cloud.

Offline mode (all frames known, the reference ``recon.py``) and online mode (frames arrive one at a
time, past frames only, bounded memory), RGB or RGB-D (Slam3DR-style depth correction to metric
scale). The networks plug in through :class:`forward3d.models.slam3r.protocol.SLAM3RModels`: the real
ones (``SLAM3REngine``) or an oracle (``forward3d.pipelines.oracle``) for tests.

Example::

    pipe = SLAM3RPipeline.from_pretrained("siyan824/slam3r_i2p", "siyan824/slam3r_l2w", device="cuda")
    recon = pipe.reconstruct(open_frames("video.mp4"))          # offline
    for update in pipe.stream(open_frames("http://cam/stream")):  # online
        viewer.add(update.points, update.colors, update.c2w)
    recon = pipe.result                                           # after the stream ends
"""

from __future__ import annotations

import logging
from typing import Callable, Iterable, Iterator

import torch

from forward3d.models.slam3r.protocol import SLAM3RModels
from forward3d.pipelines.slam3r_common import (
    CropTransform,
    PreparedFrame,
    SLAM3RConfig,
    SLAM3RUpdate,
    crop_transform,
    fit_depth_scale,
    prepare_frame,
)
from forward3d.pipelines.slam3r_offline import run_offline
from forward3d.types import Frame, Reconstruction

logger = logging.getLogger(__name__)

__all__ = [
    "SLAM3RConfig",
    "SLAM3RPipeline",
    "SLAM3RUpdate",
    "CropTransform",
    "PreparedFrame",
    "crop_transform",
    "prepare_frame",
    "fit_depth_scale",
    "reconstruct",
]


class SLAM3RPipeline:
    """SLAM3R over any :class:`SLAM3RModels` implementation.

    Args:
        models: the I2P/L2W networks behind the protocol (``SLAM3REngine``) or an oracle.
        config: :class:`SLAM3RConfig` (``config.online`` picks the mode of :meth:`reconstruct`).
    """

    name = "slam3r"

    def __init__(self, models: SLAM3RModels, config: SLAM3RConfig | None = None) -> None:
        if not isinstance(models, SLAM3RModels):
            raise TypeError(f"SLAM3RPipeline: expected an object with the SLAM3RModels protocol "
                            f"(image_size, device, encode, i2p, corr_scores, l2w), found {type(models).__name__}")
        self.models = models
        self.config = config or SLAM3RConfig()
        self.result: Reconstruction | None = None

    @classmethod
    def from_pretrained(cls, i2p_source: str, l2w_source: str, config: SLAM3RConfig | None = None,
                        device: str | torch.device | None = None, dtype: str | torch.dtype | None = None,
                        **engine_kwargs) -> "SLAM3RPipeline":
        """Load the real networks (local paths or hub ids) with ``SLAM3REngine.from_pretrained``."""
        from forward3d.models.slam3r.engine import SLAM3REngine

        kwargs = dict(engine_kwargs)
        if device is not None:
            kwargs["device"] = device
        if dtype is not None:
            kwargs["dtype"] = dtype
        return cls(SLAM3REngine.from_pretrained(i2p_source, l2w_source, **kwargs), config)

    # ------------------------------------------------------------------------------------------
    def reconstruct(self, frames: Iterable[Frame],
                    callback: Callable[[SLAM3RUpdate], None] | None = None) -> Reconstruction:
        """Reconstruct ``frames`` (any iterable, e.g. ``open_frames(...)``) in the configured mode.

        In online mode ``callback`` receives one :class:`SLAM3RUpdate` per frame as soon as it is
        registered. If the source reports a dropped stream (``frames.dropped``) or the run is
        interrupted (Ctrl-C, online mode), the reconstruction of the frames so far is returned with
        ``metadata["stream_dropped"]`` / ``metadata["interrupted"]`` set.
        """
        if self.config.online:
            for update in self.stream(frames):
                if callback is not None:
                    callback(update)
            return self.result  # type: ignore[return-value]  # set by stream()
        rec = run_offline(self.models, frames, self.config)
        self._mark_dropped(frames, rec)
        self.result = rec
        return rec

    def stream(self, frames: Iterable[Frame]) -> Iterator[SLAM3RUpdate]:
        """Online mode as a generator of per-frame updates; :attr:`result` holds the final
        :class:`Reconstruction` once the generator is exhausted."""
        from forward3d.pipelines.slam3r_online import OnlineSLAM3R

        online = OnlineSLAM3R(self.models, self.config)
        interrupted = False
        try:
            try:
                for frame in frames:
                    yield from online.push(frame)
            except KeyboardInterrupt:
                interrupted = True
                logger.warning("SLAM3R: interrupted; keeping the %d frames processed so far", online.num_frames)
            yield from online.flush()
            rec = online.finish()
        except BaseException:
            online.spool.discard()
            raise
        rec.metadata["interrupted"] = interrupted
        self._mark_dropped(frames, rec)
        self.result = rec

    @staticmethod
    def _mark_dropped(frames: Iterable[Frame], rec: Reconstruction) -> None:
        dropped = bool(getattr(frames, "dropped", False))
        rec.metadata["stream_dropped"] = dropped
        if dropped:
            logger.warning("SLAM3R: the input stream dropped; the reconstruction covers the %d frames received",
                           len(rec))


def reconstruct(models: SLAM3RModels, frames: Iterable[Frame], config: SLAM3RConfig | None = None,
                callback: Callable[[SLAM3RUpdate], None] | None = None) -> Reconstruction:
    """Functional form of :meth:`SLAM3RPipeline.reconstruct`."""
    return SLAM3RPipeline(models, config).reconstruct(frames, callback)
