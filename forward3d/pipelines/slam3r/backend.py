"""The ``slam3r`` back-end: frames -> cameras for every frame + world point maps + a fused point cloud.

Offline mode (all frames known, the reference ``recon.py``) and online mode (frames arrive one at a
time, past frames only, bounded memory), RGB or RGB-D (Slam3DR-style depth correction to metric
scale). The networks plug in through :class:`forward3d.models.slam3r.protocol.SLAM3RModels`: the real
ones (``SLAM3REngine``, loaded from ``config.i2p`` / ``config.l2w`` on first use) or an oracle
(:mod:`forward3d.pipelines.oracle`) for tests.

Example::

    backend = SLAM3RBackend(i2p="siyan824/slam3r_i2p", l2w="siyan824/slam3r_l2w", device="cuda")
    recon = backend.run(open_frames("video.mp4"))                       # offline
    for update in SLAM3RBackend(online=True).stream(open_frames("http://cam/stream")):  # online
        viewer.add(update)
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any, Iterable, Iterator

from forward3d.device import resolve_device
from forward3d.models.slam3r.protocol import SLAM3RModels
from forward3d.pipelines.base import Backend, Capabilities, UpdateCallback
from forward3d.pipelines.slam3r.common import SLAM3RConfig
from forward3d.pipelines.slam3r.offline import run_offline
from forward3d.types import Frame, Reconstruction, Update

logger = logging.getLogger(__name__)

__all__ = ["SLAM3RBackend", "load_models", "DTYPES"]

# config.dtype -> SLAM3REngine's compute dtype name
DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


def load_models(config: SLAM3RConfig) -> SLAM3RModels:
    """The real I2P/L2W networks of ``config.i2p`` / ``config.l2w`` (local paths or hub ids)."""
    from forward3d.models.slam3r.engine import SLAM3REngine

    kwargs: dict[str, Any] = {}
    if config.i2p_config:
        kwargs["i2p_config"] = config.i2p_config
    if config.l2w_config:
        kwargs["l2w_config"] = config.l2w_config
    return SLAM3REngine.from_pretrained(config.i2p, config.l2w, device=resolve_device(config.device),
                                        dtype=DTYPES[config.dtype], **kwargs)


class SLAM3RBackend(Backend):
    """SLAM3R over any :class:`SLAM3RModels` implementation.

    Args:
        config: :class:`SLAM3RConfig` (``config.online`` picks the mode of :meth:`run`).
        models: the networks behind the protocol (``SLAM3REngine``) or an oracle; default: loaded from
            ``config.i2p`` / ``config.l2w`` on first use.
    """

    name = "slam3r"
    description = "SLAM3R-compatible I2P/L2W networks (official checkpoints), offline or online"
    config_cls = SLAM3RConfig
    capabilities = Capabilities(uses_depth=True, needs_weights=True, metric_scale="with_depth", streaming=True,
                                outputs=frozenset({"cameras", "point_maps", "points"}))

    def __init__(self, config: SLAM3RConfig | dict | None = None, *, models: SLAM3RModels | None = None,
                 **overrides: Any) -> None:
        super().__init__(config, **overrides)
        if models is not None and not isinstance(models, SLAM3RModels):
            raise TypeError(f"SLAM3RBackend: expected an object with the SLAM3RModels protocol "
                            f"(image_size, device, encode, i2p, corr_scores, l2w), found {type(models).__name__}")
        self._models = models

    @property
    def models(self) -> SLAM3RModels:
        """The networks (loaded on first access when none were given)."""
        if self._models is None:
            self._models = load_models(self.config)
        return self._models

    def configure_for_source(self, source: Any, config: SLAM3RConfig) -> SLAM3RConfig:
        """Intrinsics given for the input (``--intrinsics``) are used as given, not estimated."""
        if getattr(source, "intrinsics", None) is not None and not config.use_frame_intrinsics:
            return replace(config, use_frame_intrinsics=True)
        return config

    # ------------------------------------------------------------------------------------------
    def run(self, frames: Iterable[Frame], config: SLAM3RConfig | None = None, *, progress: bool = True,
            callback: UpdateCallback | None = None) -> Reconstruction:
        """Reconstruct ``frames`` (any iterable, e.g. ``open_frames(...)``) in the configured mode.

        In online mode ``callback`` receives one :class:`Update` per frame as soon as it is registered.
        If the source reports a dropped stream (``frames.dropped``) or an online run is interrupted
        (Ctrl-C), the reconstruction of the frames so far is returned with ``interrupted`` set.
        """
        cfg = self.resolve_config(config)
        if cfg.online:
            return super().run(frames, cfg, progress=progress, callback=callback)
        rec = run_offline(self.models, frames, cfg, progress=progress)
        self._mark_dropped(frames, rec)
        self.result = rec
        return rec

    def stream(self, frames: Iterable[Frame], config: SLAM3RConfig | None = None, *,
               progress: bool = True) -> Iterator[Update]:
        """Online mode as a generator of per-frame :class:`Update` s (whatever ``config.online`` says);
        :attr:`result` holds the final :class:`Reconstruction` once the generator is exhausted."""
        from forward3d.pipelines.slam3r.online import OnlineSLAM3R

        cfg = self.resolve_config(config)
        self.result = None
        online = OnlineSLAM3R(self.models, cfg, progress=progress)
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
        rec.interrupted = interrupted
        self._mark_dropped(frames, rec)
        self.result = rec

    @staticmethod
    def _mark_dropped(frames: Iterable[Frame], rec: Reconstruction) -> None:
        dropped = bool(getattr(frames, "dropped", False))
        rec.metadata["stream_dropped"] = dropped
        if dropped:
            rec.interrupted = True
            logger.warning("SLAM3R: the input stream dropped; the reconstruction covers the %d frames received",
                           len(rec))
