"""The Python API of a whole run: input -> back-end -> reconstruction -> scored, exported output folder.

This is what ``forward3d recon`` does, as a library call::

    from forward3d.api import SourceConfig, reconstruct

    run = reconstruct("tum/rgbd_dataset_freiburg1_desk", "rgbd", {"voxel_size": 0.01}, out="out/")
    run.recon.c2w, run.recon.trajectory_metrics.ate.rmse, run.files["mesh"]

Steps: the output folder is checked before any work; the input is opened with
:func:`forward3d.io.sources.open_frames` (:class:`SourceConfig`); the back-end checks it can use it; the
frames stream through the back-end once (ground-truth poses are remembered on the way); the trajectory
is scored when the input has ground truth; the outputs are written into a staging folder that replaces
``out`` as a whole only when everything succeeded.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

from forward3d.config import option
from forward3d.pipelines import auto_backend, get_backend_class
from forward3d.pipelines.base import Backend, UpdateCallback
from forward3d.types import Reconstruction

__all__ = ["SourceConfig", "RunResult", "reconstruct", "parse_size", "open_source", "StoppableFrames", "PredictedDepthFrames",
           "stop_on_sigint"]

log = logging.getLogger(__name__)


def parse_size(text: str | int | tuple[int, int] | None) -> tuple[int, int] | int | None:
    """``"640x480"`` -> ``(640, 480)``; ``"512"`` -> 512 (long side); None -> None."""
    if text is None or isinstance(text, tuple):
        return text
    if isinstance(text, int) and not isinstance(text, bool):
        if text <= 0:
            raise ValueError(f"--size: expected a positive long side, found {text}")
        return text
    t = str(text).lower().strip()
    try:
        if "x" in t:
            w, h = t.split("x", 1)
            size: tuple[int, int] | int = (int(w), int(h))
            ok = min(size) > 0
        else:
            size = int(t)
            ok = size > 0
    except ValueError:
        ok = False
    if not ok:
        raise ValueError(f"--size: expected WxH (e.g. 640x480) or a long side in pixels, found {text!r}")
    return size


@dataclass
class SourceConfig:
    """How the input is read (:func:`forward3d.io.sources.open_frames`).

    Attributes:
        layout: input layout (default: detected): tum, redwood, scannet, replica, 7scenes, images, video, stream.
        depth_scale: raw depth units per metre (default: the layout's, e.g. TUM 5000, others 1000).
        intrinsics: pinhole intrinsics of the native images in pixels (pixel centres at +0.5).
        stride: use every N-th frame.
        max_frames: use at most N frames.
        size: working resolution, WxH or the long side.
        depth_model: metric depth network for frames without depth (a transformers model folder or hub
            id, transformers:PATH, unidepth[:SOURCE]): RGB-only input then works with RGB-D back-ends
            such as rgbd (monocular depth + fusion). Needs --intrinsics when the input has none.
    """

    layout: str = "auto"
    depth_scale: float | None = option(None, metavar="S")
    intrinsics: tuple[float, float, float, float] | None = option(None, metavar=("FX", "FY", "CX", "CY"))
    stride: int = option(1, metavar="N")
    max_frames: int | None = option(None, metavar="N")
    size: str | None = option(None, metavar="WxH")
    depth_model: str | None = option(None, metavar="MODEL")

    def __post_init__(self) -> None:
        if int(self.stride) < 1:
            raise ValueError(f"--stride: expected >= 1, found {self.stride}")
        if self.max_frames is not None and int(self.max_frames) < 1:
            raise ValueError(f"--max-frames: expected >= 1, found {self.max_frames}")
        parse_size(self.size)


class PredictedDepthFrames:
    """Frames whose missing depth is predicted by a metric depth network (``predict(image [1, 3, H, W] in
    [0, 1], K [1, 3, 3] | None) -> depth [1, H, W]``, e.g. :func:`forward3d.models.depth.make_depth_estimator`).

    Frames that carry depth keep it. ``has_depth`` is True; ``len()``, ``layout``, ``dropped``... are the
    wrapped source's.
    """

    def __init__(self, frames: Iterable[Any], estimator: Any) -> None:
        if not getattr(estimator, "metric", True):
            raise ValueError(f"--depth-model {getattr(estimator, 'name', estimator)}: expected a METRIC depth network "
                             "(a relative one gives depth up to an unknown scale and shift per frame)")
        self.frames = frames
        self.estimator = estimator
        self.has_depth = True

    def __len__(self) -> int:
        return len(self.frames)  # type: ignore[arg-type]

    def __getattr__(self, name: str) -> Any:
        if name in ("frames", "estimator"):
            raise AttributeError(name)
        return getattr(self.frames, name)

    def __iter__(self) -> Iterator[Any]:
        import numpy as np
        import torch

        for f in self.frames:
            if f.depth is None:
                img = torch.from_numpy(np.array(f.image)).permute(2, 0, 1)[None].float() / 255.0
                K = None if f.K is None else torch.as_tensor(f.K, dtype=torch.float32)[None]
                with torch.no_grad():
                    d = self.estimator.predict(img, K)
                d = np.asarray(d.detach().float().cpu().numpy()[0], np.float32)
                if d.shape != f.image.shape[:2]:
                    raise ValueError(f"--depth-model: predicted depth {list(d.shape)} for a "
                                     f"{f.width}x{f.height} frame ({f.source or f.name})")
                f = f.with_(depth=d)
            yield f


def open_source(path: str | Path, source: SourceConfig | None = None, depth_estimator: Any = None):
    """``open_frames(path, ...)`` with the options of ``source``; frames without depth get it from
    ``depth_estimator`` (or ``source.depth_model``) when one is given."""
    from forward3d.io.sources import open_frames

    s = source or SourceConfig()
    src = open_frames(path, stride=s.stride, max_frames=s.max_frames, size=parse_size(s.size),
                      depth_scale=s.depth_scale, intrinsics=s.intrinsics, layout=s.layout)
    if depth_estimator is None and s.depth_model:
        from forward3d.device import resolve_device
        from forward3d.models.depth import make_depth_estimator

        depth_estimator = make_depth_estimator(s.depth_model, device=resolve_device("auto"))
    return src if depth_estimator is None else PredictedDepthFrames(src, depth_estimator)


class StoppableFrames:
    """Passes frames through until :meth:`stop` is called; then the iteration ends after the current
    frame and ``dropped`` is True, so every back-end finishes and marks its result as partial (as for a
    live stream that drops). ``len()``, ``layout``, ``has_depth``... are the wrapped source's."""

    def __init__(self, frames: Iterable[Any]) -> None:
        self.frames = frames
        self.stopped = threading.Event()

    def stop(self) -> None:
        self.stopped.set()

    @property
    def dropped(self) -> bool:
        return self.stopped.is_set() or bool(getattr(self.frames, "dropped", False))

    def __len__(self) -> int:
        return len(self.frames)  # type: ignore[arg-type]

    def __getattr__(self, name: str) -> Any:
        if name in ("frames", "stopped"):
            raise AttributeError(name)
        return getattr(self.frames, name)

    def __iter__(self) -> Iterator[Any]:
        for f in self.frames:
            if self.stopped.is_set():
                return
            yield f


@contextlib.contextmanager
def stop_on_sigint(frames: StoppableFrames) -> Iterator[None]:
    """While active (main thread only), the first Ctrl-C / SIGINT stops ``frames`` after the current frame
    (the run then saves a partial result); a second one interrupts at once."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGINT)

    def handler(signum, frame):  # noqa: ARG001
        if frames.stopped.is_set():
            raise KeyboardInterrupt
        log.warning("interrupted: finishing the current frame and saving a partial result "
                    "(press Ctrl-C again to abort without saving)")
        frames.stop()

    signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


@dataclass
class RunResult:
    """What :func:`reconstruct` returns.

    Attributes:
        recon: the reconstruction (``trajectory_metrics`` set when the input had ground truth).
        files: written outputs (``format key -> path`` in the final folder), empty without ``out``.
        out: the output folder, or None.
        seconds: wall time of the whole run.
        source_layout: the input's layout.
        user_interrupted: the run was stopped by Ctrl-C / SIGINT (the result is partial).
        scene_gaussians: the merged 3D Gaussians of the scene
            (:class:`~forward3d.pipelines.scene_gaussians.SceneGaussians`) when ``gaussians`` was asked for.
    """

    recon: Reconstruction
    files: dict[str, Path] = field(default_factory=dict)
    out: Path | None = None
    seconds: float = 0.0
    source_layout: str = ""
    user_interrupted: bool = False
    scene_gaussians: Any = None


def reconstruct(input: str | Path, backend: str | Backend = "auto", config: Any = None, *,  # noqa: A002
                source: SourceConfig | None = None, out: str | Path | None = None, overwrite: bool = False,
                previews: bool = True, progress: bool = True, callback: UpdateCallback | None = None,
                extra_metrics: dict[str, Any] | None = None, depth_estimator: Any = None,
                frames: Any = None, gaussians: Any = None) -> RunResult:
    """Reconstruct ``input`` with ``backend`` and (with ``out``) write the whole output set.

    Args:
        input: dataset folder, image folder, video file or stream URL.
        backend: a registered back-end name, a :class:`Backend` instance, or ``"auto"``: chosen from the
            opened input by :func:`~forward3d.pipelines.auto_backend` (``rgbd`` for input with depth,
            the weight-free ``sfm`` for RGB-only input), with a log line saying which and why.
        config: the back-end's config (instance or dict; a name's default when None). With ``"auto"``
            it must be for the back-end that is chosen (ValueError otherwise).
        source: how to read the input.
        out: output folder (checked before any work; replaced as a whole on success).
        overwrite: allow replacing an ``out`` folder that holds files forward3d did not write.
        previews: render ``previews/*.png``.
        progress: progress bars.
        callback: receives each streaming :class:`~forward3d.types.Update`.
        extra_metrics: more entries for ``metrics.json``.
        depth_estimator: a depth network object for frames without depth (instead of ``source.depth_model``).
        frames: an already opened frame source to read instead of opening ``input`` with ``source``
            (e.g. a layout :func:`~forward3d.io.sources.open_frames` does not detect); ``input`` then only
            names it in messages.
        gaussians: a :class:`~forward3d.pipelines.scene_gaussians.SceneGaussiansConfig` (or dict): after the
            reconstruction, predict 3D Gaussians per window of posed views along the trajectory and write
            ``gaussians.ply`` + ``gaussians.json`` (``run.scene_gaussians`` holds them).

    The first Ctrl-C (SIGINT) during the run stops reading the input after the current frame; what was
    reconstructed so far is scored and written as a partial result (``recon.interrupted``; ``"partial":
    true`` in ``metrics.json``).
    """
    from forward3d.eval.traj import GroundTruthRecorder, trajectory_metrics
    from forward3d.io.atomic import check_output_folder, staged_folder
    from forward3d.io.export import write_outputs

    t0 = time.perf_counter()
    source = source or SourceConfig()
    if out is not None:
        check_output_folder(out, overwrite)
    src = None
    if isinstance(backend, str) and backend == "auto":
        src = open_source(input, source, depth_estimator) if frames is None else frames
        backend, why = auto_backend(src)
        log.info("reconstruct %s: no back-end named, using %s (%s; name one with --backend NAME)",
                 input, backend, why)
        cls = get_backend_class(backend)
        if config is not None and not isinstance(config, (dict, cls.config_cls)):
            raise ValueError(f"{input}: the {backend} back-end was chosen for this input ({why}), but the options "
                             f"given are {type(config).__name__}, not {cls.config_cls.__name__}: name the back-end "
                             f"(--backend NAME) with its options")
    impl = backend if isinstance(backend, Backend) else get_backend_class(backend)(config)
    if isinstance(backend, Backend) and config is not None:
        impl.config = impl.resolve_config(config)
    impl.config = impl.configure_for_source(source, impl.config)
    if src is None:
        src = open_source(input, source, depth_estimator) if frames is None else frames
    impl.check_source(src, str(input))
    gcfg = _gaussians_config(gaussians)
    stoppable = StoppableFrames(src)
    keeper = gmodel = None
    if gcfg is not None:
        from forward3d.pipelines.scene_gaussians import FrameKeeper, load_gaussians_model

        gmodel = load_gaussians_model(gcfg)  # bad weights fail before any work
        keeper = FrameKeeper(stoppable, gcfg.stride, gcfg.heldout)
    frames = GroundTruthRecorder(stoppable if keeper is None else keeper)
    with stop_on_sigint(stoppable):
        recon = impl.run(frames, progress=progress, callback=callback)
    if stoppable.stopped.is_set():
        recon.interrupted = True
    if getattr(src, "has_gt_poses", False):
        recon.trajectory_metrics = trajectory_metrics(recon.c2w, frames.gt, metric_scale=recon.metric_scale)
    scene = None
    if keeper is not None:
        from forward3d.pipelines.scene_gaussians import scene_gaussians

        t1 = time.perf_counter()
        scene = scene_gaussians(recon, keeper.kept, gcfg, gmodel, progress=progress)
        recon.timings["gaussians_s"] = time.perf_counter() - t1
        if scene.heldout_psnr:
            extra_metrics = {**(extra_metrics or {}), "gaussians_heldout_psnr": scene.info["heldout_psnr_mean"]}
    files: dict[str, Path] = {}
    if out is not None:
        out = Path(out)
        with staged_folder(out, overwrite) as stage:
            written = write_outputs(recon, stage, extra_metrics, previews=previews)
            if scene is not None:
                from forward3d.pipelines.scene_gaussians import write_scene_gaussians

                written.update(write_scene_gaussians(scene, stage))
        files = {k: out / Path(v).relative_to(stage) for k, v in written.items()}
    return RunResult(recon, files, None if out is None else Path(out), time.perf_counter() - t0,
                     str(getattr(src, "layout", "")), stoppable.stopped.is_set(), scene)


def _gaussians_config(gaussians: Any):
    """None / a config / a dict -> an enabled :class:`SceneGaussiansConfig` or None."""
    if gaussians is None:
        return None
    from forward3d.pipelines.scene_gaussians import SceneGaussiansConfig

    cfg = SceneGaussiansConfig(**gaussians) if isinstance(gaussians, dict) else gaussians
    if not isinstance(cfg, SceneGaussiansConfig):
        raise TypeError(f"reconstruct: gaussians must be a SceneGaussiansConfig or dict, found {type(cfg).__name__}")
    return cfg if cfg.enabled else None
