"""The novel-view protocols ``re10k-1view`` and ``re10k-2view`` in the benchmark harness:
:func:`forward3d.eval.nvs.run_nvs_eval` over the split file / evaluation index, one result JSON per
RealEstate10K sequence (scene), the same summary as the other protocols.

``--backend`` is the method: ``flash3d`` (re10k-1view) or ``depthsplat`` (re10k-2view), both with
``--weights``, or the baselines ``oracle`` and ``blank`` (and ``unproject`` for re10k-1view); the other
options are :class:`forward3d.eval.nvs.NVSEvalConfig`'s. The split runs in this process (one pass over
the split file, not one task per sequence).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

from forward3d.bench.protocol import Protocol

__all__ = ["NVS_METHODS", "NVS_2VIEW_METHODS", "NVS_SKIP_FIELDS", "run_nvs_benchmark"]

log = logging.getLogger(__name__)

NVS_METHODS = ("flash3d", "unproject", "oracle", "blank")
NVS_2VIEW_METHODS = ("depthsplat", "oracle", "blank")
NVS_SKIP_FIELDS = ("protocol", "data", "method", "out", "progress")  # set by the harness


def _flatten(per_kind: dict[str, dict[str, float]]) -> dict[str, float]:
    return {f"{m}_{kind}": float(v) for kind, d in per_kind.items() for m, v in d.items() if m != "count"}


def run_nvs_benchmark(cfg: Any, protocol: Protocol, backend_config: Any = None):
    from forward3d.bench.report import write_summary
    from forward3d.bench.runner import BenchResult, Sequence, run_key, sequence_stem
    from forward3d.eval.nvs import NVSEvalConfig, run_nvs_eval
    from forward3d.io.jsonio import write_json

    two_view = protocol.name == "re10k-2view"
    methods, network = (NVS_2VIEW_METHODS, "depthsplat") if two_view else (NVS_METHODS, "flash3d")
    if cfg.backend not in methods:
        raise ValueError(f"--backend {cfg.backend}: protocol {protocol.name} expects one of {', '.join(methods)}")
    opts = backend_config if isinstance(backend_config, dict) else asdict(backend_config) if backend_config else {}
    known = {f.name for f in fields(NVSEvalConfig)} - set(NVS_SKIP_FIELDS)
    unknown = sorted(set(opts) - known)
    if unknown:
        raise ValueError(f"protocol {protocol.name}: unknown options {unknown}; expected some of {sorted(known)}")
    method = None if cfg.backend == network else cfg.backend
    if method is not None:
        opts = {**opts, "weights": None}
    elif not opts.get("weights"):
        raise ValueError(f"--backend {network}: give the checkpoint with --weights")
    ncfg = NVSEvalConfig(protocol="re10k-2view" if two_view else "re10k-1view", data=cfg.data, method=method,
                         progress=False, **opts)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    key = run_key(protocol.name, cfg.backend, opts)
    report, result = run_nvs_eval(ncfg)
    seqs = []
    for name, per_kind in report.per_sequence().items():
        seq = Sequence(name, cfg.data, "re10k")
        seqs.append(seq)
        write_json(out / "sequences" / f"{sequence_stem(name)}.json",
                   {"protocol": protocol.name, "sequence": name, "backend": cfg.backend, "backend_config": opts,
                    "key": key, "status": "ok", "metrics": per_kind if two_view else _flatten(per_kind)})
    # re10k-2view skips scenes by design (null index entries, other frame sizes): listed, not failures
    failed = [] if two_view else [{"sequence": s, "status": "failed", "attempts": 1, "errors": [s]}
                                  for s in report.skipped]
    summary, files = write_summary(out, protocol, cfg, seqs, key, failed, plots=cfg.plots)
    if two_view:  # the papers' average: over targets per scene, then over scenes (= the summary mean)
        summary["skipped_scenes"] = report.skipped
        files["summary_json"] = write_json(out / "summary.json", summary)
        return BenchResult(summary, [s.name for s in seqs], [], failed, files)
    summary["mean_over_images"] = _flatten(report.mean())  # the paper's average (over images, not sequences)
    files["summary_json"] = write_json(out / "summary.json", summary)
    return BenchResult(summary, [s.name for s in seqs], [], failed, files)
