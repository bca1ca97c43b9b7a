"""Run a back-end over every sequence of a dataset under a protocol; one task per sequence.

- :func:`find_sequences`: the sequences under ``--data`` (the folder itself, or its sub-folders, that
  one of the protocol's layouts reads; 7-Scenes scenes give one sequence per ``seq-XX``, Hypersim scenes
  one per camera ``cam_XX``).
- :func:`run_sequence`: one task: open the sequence with the protocol's sampling, run the back-end
  through :func:`forward3d.api.reconstruct`, score it, write ``sequences/NAME.json`` (+ ``NAME.npz``
  with the trajectories) atomically. Picklable arguments only, so it runs in a process pool or on Ray.
- :func:`run_benchmark`: finished sequences (their JSON exists for the same protocol, back-end and
  options) are skipped; the rest run on the executor (``local``: a process pool; ``ray``: one remote
  task per sequence with its CPUs/GPUs declared); a sequence that raises is retried once, then reported
  with its errors (a task whose Ray worker dies is re-run by Ray); the
  summary (:mod:`forward3d.bench.report`) gathers every finished sequence.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from forward3d.bench.protocol import Protocol, get_protocol
from forward3d.config import option

__all__ = ["BenchConfig", "Sequence", "SequenceTask", "find_sequences", "open_sequence", "run_sequence",
           "run_benchmark", "BenchResult", "sequence_stem", "run_key"]

log = logging.getLogger(__name__)


@dataclass
class BenchConfig:
    """Options of ``forward3d bench PROTOCOL --data DIR --backend NAME --out DIR``.

    Attributes:
        protocol: benchmark protocol (forward3d bench --help lists them).
        data: dataset folder: one sequence, or a folder of sequences.
        backend: reconstruction back-end (registered name, or module:Class of a plug-in back-end).
        out: results folder (sequences/*.json, summary.md/json, plots/); finished sequences are skipped.
        executor: where the sequences run: a local process pool, or Ray (pip install forward3d[ray]).
        workers: processes of the local pool.
        address: Ray cluster address (auto: the running cluster; default: a local Ray instance).
        num_cpus: CPUs each sequence task declares (Ray).
        num_gpus: GPUs each sequence task declares (Ray).
        retries: times a failed sequence is run again before it is reported as failed.
        rerun: run finished sequences again instead of skipping them.
        max_sequences: run only the first N sequences (sorted by name).
        plots: write plots/ (matplotlib: pip install forward3d[bench]).
    """

    protocol: str = option("", positional=True)
    data: str = option("", metavar="DIR")
    backend: str = option("rgbd", metavar="NAME")
    out: str = option("forward3d-bench", metavar="DIR")
    executor: Literal["local", "ray"] = "local"
    workers: int = 1
    address: str | None = option(None, metavar="ADDR")
    num_cpus: float = 1.0
    num_gpus: float = 0.0
    retries: int = 1
    rerun: bool = False
    max_sequences: int | None = option(None, metavar="N")
    plots: bool = True


@dataclass(frozen=True)
class Sequence:
    """One sequence: ``name`` (unique in the run), its folder, layout and (7-Scenes) ``seq-XX`` or (Hypersim)
    ``cam_XX``."""

    name: str
    path: str
    layout: str
    sequence: str | None = None


@dataclass
class SequenceTask:
    """Everything one task needs (picklable)."""

    protocol: str
    sequence: Sequence
    backend: str
    backend_config: dict[str, Any]
    out: str
    key: str


@dataclass
class BenchResult:
    """What :func:`run_benchmark` returns: the summary, the finished / skipped / failed sequences."""

    summary: dict[str, Any]
    ran: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[dict[str, Any]] = field(default_factory=list)
    files: dict[str, Path] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------------
# Sequences
# --------------------------------------------------------------------------------------------------


def _layout_of(p: Path) -> str | None:
    from forward3d.io import layouts
    from forward3d.io.posed_folders import detect_posed_folder

    posed = detect_posed_folder(p)
    if posed is not None:
        return posed
    try:
        return layouts.detect_dataset(p)
    except OSError:
        return None


def find_sequences(data: str | Path, protocol: Protocol, max_depth: int = 3) -> list[Sequence]:
    """Sequences under ``data`` in one of ``protocol.layouts``, sorted by name (ValueError when none)."""
    from forward3d.io.hypersim import hypersim_cameras
    from forward3d.io.layouts import _SEQ_DIR

    root = Path(data)
    if not root.is_dir():
        raise ValueError(f"--data {root}: expected a dataset folder, found {'a file' if root.exists() else 'nothing'}")
    found: list[Sequence] = []

    def visit(p: Path, depth: int) -> None:
        layout = _layout_of(p)
        if layout in protocol.layouts:
            name = p.relative_to(root).as_posix() if p != root else p.name
            seqs = sorted(d.name for d in p.iterdir() if d.is_dir() and _SEQ_DIR.match(d.name)) \
                if layout == "7scenes" else hypersim_cameras(p) if layout == "hypersim" else []
            if seqs:
                found.extend(Sequence(f"{name}/{s}", str(p), layout, s) for s in seqs)
            else:
                found.append(Sequence(name, str(p), layout))
            return
        if depth < max_depth:
            for d in sorted(p.iterdir()):
                if d.is_dir() and not d.name.startswith("."):
                    visit(d, depth + 1)

    visit(root, 0)
    if not found:
        raise ValueError(f"--data {root}: no sequence in a layout of protocol {protocol.name} "
                         f"({', '.join(protocol.layouts)}) in the folder or its sub-folders")
    return sorted(found, key=lambda s: s.name)


class CropResizedFrames:
    """Frames through :func:`forward3d.data.views.crop_resize` to ``(W, H)`` (the DUSt3R / Spann3R input
    crop); ``len()``, ``layout``, ``has_depth``... are the wrapped source's."""

    def __init__(self, frames, size: tuple[int, int]) -> None:
        self.frames = frames
        self.size = (int(size[0]), int(size[1]))

    def __len__(self) -> int:
        return len(self.frames)

    def __getattr__(self, name: str) -> Any:
        if name in ("frames", "size"):
            raise AttributeError(name)
        return getattr(self.frames, name)

    def __iter__(self):
        from forward3d.data.views import crop_resize

        for f in self.frames:
            yield crop_resize(f, self.size, landscape=False)


def open_sequence(seq: Sequence, protocol: Protocol):
    """The frames of ``seq`` with the protocol's stride, frame cap, input size and crop."""
    src = _open(seq, protocol)
    return src if protocol.crop is None else CropResizedFrames(src, protocol.crop)


def _open(seq: Sequence, protocol: Protocol):
    from forward3d.api import parse_size
    from forward3d.io.posed_folders import NRGBDSource, PosedFolderSource
    from forward3d.io.sources import open_frames

    common = dict(stride=protocol.stride, max_frames=protocol.max_frames, size=parse_size(protocol.size))
    if seq.layout == "posed":
        return PosedFolderSource(seq.path, **common)
    if seq.layout == "nrgbd":
        return NRGBDSource(seq.path, **common)
    return open_frames(seq.path, layout=seq.layout, sequence=seq.sequence, on_error="raise", **common)


def sequence_stem(name: str) -> str:
    """The file name stem of sequence ``name`` in ``sequences/`` (``chess/seq-01`` -> ``chess__seq-01``)."""
    return name.replace("/", "__")


# --------------------------------------------------------------------------------------------------
# One task
# --------------------------------------------------------------------------------------------------


def run_sequence(task: SequenceTask) -> dict[str, Any]:
    """Run and score one sequence; writes ``sequences/NAME.json`` (+ ``.npz``); returns the JSON dict."""
    from forward3d.api import reconstruct
    from forward3d.bench.scoring import GroundTruthCollector, score_reconstruction, score_trajectory
    from forward3d.config import import_reference
    from forward3d.io.atomic import atomic_path
    from forward3d.io.jsonio import write_json
    from forward3d.pipelines import get_backend_class

    protocol = get_protocol(task.protocol)
    seq = task.sequence
    t0 = time.perf_counter()
    cls = import_reference(task.backend) if ":" in task.backend else get_backend_class(task.backend)
    backend = cls(task.backend_config)
    src = open_sequence(seq, protocol)
    gt = GroundTruthCollector(src, points=protocol.task == "reconstruction", max_points=protocol.recon.max_gt_points,
                              window=protocol.score_crop)
    run = reconstruct(seq.path, backend, frames=gt, previews=False, progress=False)
    seconds = time.perf_counter() - t0
    recon = run.recon
    if protocol.task == "trajectory":
        metrics, arrays = score_trajectory(recon, gt.gt, protocol.trajectory_alignment)
    else:
        metrics, arrays = score_reconstruction(recon, gt, protocol)
    metrics["seconds"] = seconds
    metrics["frames_per_s"] = len(recon.c2w) / max(seconds, 1e-9)
    result = {"protocol": protocol.name, "sequence": seq.name, "path": seq.path, "layout": seq.layout,
              "backend": task.backend, "backend_config": task.backend_config,
              "key": task.key, "status": "ok", "metrics": metrics,
              "failed_frames": len(recon.failures), "partial": bool(recon.interrupted)}
    seq_dir = Path(task.out) / "sequences"
    seq_dir.mkdir(parents=True, exist_ok=True)
    stem = sequence_stem(seq.name)
    with atomic_path(seq_dir / f"{stem}.npz") as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)
    write_json(seq_dir / f"{stem}.json", result)  # last: its presence marks the sequence finished
    return result


def _run_with_retries(task: SequenceTask, retries: int) -> dict[str, Any]:
    """In-worker wrapper of the local pool: one try plus ``retries``; a failure is returned, not raised."""
    errors = []
    for attempt in range(retries + 1):
        try:
            return run_sequence(task)
        except Exception as exc:  # reported in the summary; the other sequences go on
            errors.append(f"{type(exc).__name__}: {exc}")
            log.warning("sequence %s failed (attempt %d of %d): %s", task.sequence.name, attempt + 1,
                        retries + 1, errors[-1])
            last_tb = traceback.format_exc()
    return {"sequence": task.sequence.name, "status": "failed", "attempts": len(errors), "errors": errors,
            "traceback": last_tb}


# --------------------------------------------------------------------------------------------------
# Executors
# --------------------------------------------------------------------------------------------------


def _run_local(tasks: list[SequenceTask], cfg: BenchConfig) -> list[dict[str, Any]]:
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor, as_completed

    from forward3d.progress import progress_bar

    results = []
    bar = progress_bar(len(tasks), f"bench {cfg.protocol}", unit="seq")
    with ProcessPoolExecutor(max_workers=max(1, cfg.workers), mp_context=mp.get_context("spawn")) as pool:
        futures = {pool.submit(_run_with_retries, t, cfg.retries): t for t in tasks}
        for fut in as_completed(futures):
            try:
                results.append(fut.result())
            except Exception as exc:  # the worker process itself died (out of memory, a crash)
                t = futures[fut]
                results.append({"sequence": t.sequence.name, "status": "failed", "attempts": 1,
                                "errors": [f"worker process died: {type(exc).__name__}: {exc}"]})
            bar.update(1)
    bar.close()
    return results


def _run_ray(tasks: list[SequenceTask], cfg: BenchConfig) -> list[dict[str, Any]]:
    try:
        import ray
    except ImportError as exc:
        raise ImportError(f"--executor ray needs Ray: pip install forward3d[ray] ({exc})") from exc
    if not ray.is_initialized():
        ray.init(address=cfg.address, log_to_driver=False)
    # exceptions are retried (and counted) inside the task, as on the local pool; Ray re-runs a task whose
    # worker or node died (max_retries)
    remote = ray.remote(_run_with_retries).options(num_cpus=cfg.num_cpus, num_gpus=cfg.num_gpus,
                                                   max_retries=cfg.retries)
    refs = {remote.remote(t, cfg.retries): t for t in tasks}
    results = []
    for ref, t in refs.items():
        try:
            results.append(ray.get(ref))
        except Exception as exc:  # the task's worker died on every try (ray.exceptions.WorkerCrashedError, ...)
            results.append({"sequence": t.sequence.name, "status": "failed", "attempts": cfg.retries + 1,
                            "errors": [f"worker died: {type(exc).__name__}: {exc}"]})
    return results


# --------------------------------------------------------------------------------------------------
# A whole benchmark
# --------------------------------------------------------------------------------------------------


def run_key(protocol: str, backend: str, backend_config: dict[str, Any]) -> str:
    """A short hash of what makes two runs the same (finished sequences of the same key are skipped)."""
    blob = json.dumps({"protocol": protocol, "backend": backend, "config": backend_config}, sort_keys=True,
                      default=str)
    return hashlib.sha1(blob.encode()).hexdigest()[:12]


def _finished(out: Path, seq: Sequence, key: str) -> bool:
    p = out / "sequences" / f"{sequence_stem(seq.name)}.json"
    if not p.is_file():
        return False
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return data.get("key") == key and data.get("status") == "ok"


def run_benchmark(cfg: BenchConfig, backend_config: Any = None) -> BenchResult:
    """Run ``cfg.backend`` over the sequences of ``cfg.data`` under ``cfg.protocol``; write the summary.

    Args:
        cfg: the run's options.
        backend_config: the back-end's options (its config dataclass or a dict; default: its defaults).
    """
    from forward3d.bench.report import check_plotting, write_summary

    protocol = get_protocol(cfg.protocol)
    if cfg.workers < 1 or cfg.retries < 0:
        raise ValueError(f"--workers must be >= 1 and --retries >= 0, found {cfg.workers}, {cfg.retries}")
    if cfg.plots:
        check_plotting()
    if protocol.task == "nvs":
        from forward3d.bench.nvs import run_nvs_benchmark

        return run_nvs_benchmark(cfg, protocol, backend_config)
    if protocol.task == "extrapolation":
        from forward3d.bench.extrapolation import run_extrapolation_benchmark

        return run_extrapolation_benchmark(cfg, protocol, backend_config)
    from forward3d.config import import_reference
    from forward3d.pipelines import get_backend_class
    from forward3d.pipelines.base import make_config

    cls = import_reference(cfg.backend) if ":" in cfg.backend else get_backend_class(cfg.backend)
    # every option with its value (defaults included): the same run has the same key from Python and the CLI
    bc: dict[str, Any] = asdict(make_config(cls.config_cls, backend_config, where=f"--backend {cfg.backend}"))
    seqs = find_sequences(cfg.data, protocol)
    if cfg.max_sequences is not None:
        seqs = seqs[: cfg.max_sequences]
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    key = run_key(protocol.name, cfg.backend, bc)
    todo = [s for s in seqs if cfg.rerun or not _finished(out, s, key)]
    skipped = [s.name for s in seqs if s not in todo]
    if skipped:
        log.info("%d finished sequences skipped (--rerun runs them again): %s", len(skipped), ", ".join(skipped))
    tasks = [SequenceTask(protocol.name, s, cfg.backend, bc, str(out), key) for s in todo]
    results = (_run_ray if cfg.executor == "ray" else _run_local)(tasks, cfg) if tasks else []
    failed = [r for r in results if r.get("status") != "ok"]
    for r in failed:
        log.error("sequence %s failed after %d attempts: %s", r["sequence"], r.get("attempts", 1),
                  r["errors"][-1] if r.get("errors") else "?")
    summary, files = write_summary(out, protocol, cfg, seqs, key, failed, plots=cfg.plots)
    return BenchResult(summary, [r["sequence"] for r in results if r.get("status") == "ok"], skipped, failed, files)
