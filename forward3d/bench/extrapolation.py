"""The Invisible Stitch scene-geometry protocols in the benchmark harness (``scannet-extrapolation``,
``hypersim-extrapolation``, ``extrapolation``): :func:`forward3d.eval.extrapolation.evaluate_extrapolation_pair`
over the pairs ``(i, i + pair_offset)`` for ``i`` every ``stride``-th frame of each sequence; pairs where
frame ``i`` covers less than ``min_coverage`` of the target are left out (counted in
``num_pairs_below_coverage``). Frames are read once, in order, and only the pending ones are kept.

``--backend`` is the depth-completion method: ``aligned`` (the weight-free completer: with
``depth_model`` a monocular network aligned by scale and shift in inverse depth, else the known depth
extended), ``zoedepth`` (a ZoeDepth depth-completion folder in ``weights``), or ``oracle`` (the target's
ground-truth depth: the protocol's ~0 reference). ``sparse=False`` is the variant without sparse input.
Sequences run in this process, one result JSON each, the same summary as the other protocols.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

from forward3d.bench.protocol import Protocol
from forward3d.config import option

__all__ = ["EXTRAPOLATION_METHODS", "ExtrapolationOptions", "run_extrapolation_benchmark"]

log = logging.getLogger(__name__)

EXTRAPOLATION_METHODS = ("aligned", "zoedepth", "oracle")


@dataclass
class ExtrapolationOptions:
    """Options of the extrapolation protocols (``forward3d bench scannet-extrapolation ...``).

    Attributes:
        sparse: give the completer the depth rendered from frame i (False: the no-sparse-input variant).
        depth_model: ``aligned``: a monocular depth network (see forward3d splat --depth-model); none:
            the known depth is extended into the unseen part.
        weights: ``zoedepth``: the local depth-completion model (a transformers folder, or an original ZoeDepth
            .pt checkpoint, see forward3d.models.zoedepth_keys).
        device: auto (CUDA when available), cpu, cuda or cuda:N.
    """

    sparse: bool = True
    depth_model: str | None = option(None, metavar="MODEL")
    weights: str | None = option(None, metavar="PATH")
    device: str = "auto"


class _GroundTruthCompleter:
    """The ``oracle`` method: the target frame's ground-truth depth."""

    name = "oracle"

    def __init__(self) -> None:
        self.depth: np.ndarray | None = None

    def complete(self, image, sparse_depth, mask, K=None, c2w=None) -> np.ndarray:
        return np.asarray(self.depth, np.float64)


def _completer(method: str, opts: ExtrapolationOptions):
    from forward3d.device import resolve_device
    from forward3d.models.depth_completion import AlignedCompleter, ZoeDepthCompleter

    device = str(resolve_device(opts.device))
    if method == "oracle":
        return _GroundTruthCompleter()
    if method == "zoedepth":
        if not opts.weights:
            raise ValueError("--backend zoedepth: give the depth-completion model (folder or .pt) with --weights")
        return ZoeDepthCompleter.from_pretrained(opts.weights, device=device)
    mono = None
    if opts.depth_model:
        from forward3d.models.depth import make_depth_estimator

        mono = make_depth_estimator(opts.depth_model, device=device)
    return AlignedCompleter(mono)


def _score_sequence(seq, protocol: Protocol, completer) -> dict[str, Any]:
    from forward3d.bench.runner import _open
    from forward3d.eval.extrapolation import evaluate_extrapolation_pair

    plain = Protocol(protocol.name, "trajectory", protocol.title, layouts=protocol.layouts, metrics=("x",))
    src = _open(seq, plain)  # every frame: the pairs are (i, i + offset) in the native numbering
    offset, n = protocol.pair_offset, len(src)
    starts = set(range(0, n - offset, protocol.stride))
    if not starts:
        raise ValueError(f"{seq.path}: {n} frames: too few for a pair (i, i + {offset})")
    maes, coverage, pixels, below = [], [], 0, 0
    kept: dict[int, Any] = {}  # the frames a later pair still needs (at most offset + 1)
    t0 = time.perf_counter()
    for j, fj in enumerate(src):
        if j in starts:
            kept[j] = fj
        i = j - offset
        fi = kept.pop(i, None)
        for k in [k for k in kept if k < i]:
            kept.pop(k)
        if fi is None:
            continue
        for f in (fi, fj):
            if f.depth is None or f.c2w is None or f.K is None:
                raise ValueError(f"{seq.path}: frame {f.name or f.index} lacks depth, pose or intrinsics: the "
                                 "extrapolation protocol needs all three")
        if isinstance(completer, _GroundTruthCompleter):
            completer.depth = fj.depth
        s = evaluate_extrapolation_pair(completer, fj.image, fj.depth, fi.depth, fi.K, fi.c2w, fj.K, fj.c2w,
                                        use_sparse=protocol_sparse(completer), min_coverage=protocol.min_coverage)
        if s.coverage < protocol.min_coverage:
            below += 1
            continue
        if s.num_pixels:
            maes.append(s.mae)
            pixels += s.num_pixels
        coverage.append(s.coverage)
    seconds = time.perf_counter() - t0
    if not coverage:
        raise ValueError(f"{seq.path}: no pair (i, i + {offset}) where frame i covers at least "
                         f"{protocol.min_coverage:.0%} of frame i + {offset} ({below} below)")
    return {"mae": float(np.mean(maes)) if maes else float("nan"), "coverage": float(np.mean(coverage)),
            "num_pairs": len(coverage), "num_pairs_below_coverage": below, "num_pixels": pixels,
            "seconds": seconds}


def protocol_sparse(completer) -> bool:
    return bool(getattr(completer, "_forward3d_sparse", True))


def run_extrapolation_benchmark(cfg: Any, protocol: Protocol, backend_config: Any = None):
    """Run the depth-completion method ``cfg.backend`` under ``protocol`` over ``cfg.data``."""
    from forward3d.bench.report import write_summary
    from forward3d.bench.runner import BenchResult, _finished, find_sequences, run_key, sequence_stem
    from forward3d.io.jsonio import write_json

    if cfg.backend not in EXTRAPOLATION_METHODS:
        raise ValueError(f"--backend {cfg.backend}: protocol {protocol.name} expects a depth-completion method: "
                         f"{', '.join(EXTRAPOLATION_METHODS)}")
    raw = backend_config if isinstance(backend_config, dict) else asdict(backend_config) if backend_config else {}
    known = {f.name for f in fields(ExtrapolationOptions)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ValueError(f"protocol {protocol.name}: unknown options {unknown}; expected some of {sorted(known)}")
    opts = ExtrapolationOptions(**raw)
    if cfg.backend == "aligned" and not opts.sparse and not opts.depth_model:
        raise ValueError("--backend aligned --no-sparse needs --depth-model: without sparse input the weight-free "
                         "completer has nothing to extend")
    completer = _completer(cfg.backend, opts)
    completer._forward3d_sparse = opts.sparse
    seqs = find_sequences(cfg.data, protocol)
    if cfg.max_sequences is not None:
        seqs = seqs[: cfg.max_sequences]
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    key = run_key(protocol.name, cfg.backend, asdict(opts))
    ran, skipped, failed = [], [], []
    for seq in seqs:
        if not cfg.rerun and _finished(out, seq, key):
            skipped.append(seq.name)
            continue
        try:
            metrics = _score_sequence(seq, protocol, completer)
        except Exception as exc:  # reported in the summary, like the other protocols' failed sequences
            log.error("sequence %s failed: %s", seq.name, exc)
            failed.append({"sequence": seq.name, "status": "failed", "attempts": 1, "errors": [str(exc)]})
            continue
        write_json(out / "sequences" / f"{sequence_stem(seq.name)}.json",
                   {"protocol": protocol.name, "sequence": seq.name, "backend": cfg.backend,
                    "backend_config": asdict(opts), "key": key, "status": "ok", "metrics": metrics})
        ran.append(seq.name)
    summary, files = write_summary(out, protocol, cfg, seqs, key, failed, plots=cfg.plots)
    return BenchResult(summary, ran, skipped, failed, files)
