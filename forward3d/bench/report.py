"""The summary of a benchmark run: a table (markdown + JSON) with the published numbers beside ours, and
plots (matplotlib): the primary error per sequence and, for trajectory protocols, each sequence's
aligned trajectory over the ground truth (top view).
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any, Sequence as Seq

import numpy as np

from forward3d.bench.protocol import Protocol

__all__ = ["check_plotting", "write_summary", "summary_table", "load_results"]

log = logging.getLogger(__name__)


def check_plotting() -> None:
    """ImportError naming the extra when matplotlib is missing (checked before any work)."""
    try:
        import matplotlib  # noqa: F401
    except ImportError as exc:
        raise ImportError(f"benchmark plots need matplotlib: pip install forward3d[bench] (or pass --no-plots) ({exc})") from exc


def load_results(out: Path, names: Seq[str], key: str) -> list[dict[str, Any]]:
    """The finished sequence results of this run (same key), in ``names`` order."""
    from forward3d.bench.runner import sequence_stem

    results = []
    for name in names:
        p = Path(out) / "sequences" / f"{sequence_stem(name)}.json"
        if p.is_file():
            data = json.loads(p.read_text(encoding="utf-8"))
            if data.get("key") == key and data.get("status") == "ok":
                results.append(data)
    return results


def _fmt(v: Any) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    if isinstance(v, float):
        return f"{v:.4f}" if abs(v) < 100 else f"{v:.1f}"
    return str(v)


def summary_table(protocol: Protocol, backend: str, rows: list[dict[str, Any]], mean: dict[str, float],
                  failed: list[dict[str, Any]]) -> str:
    """The markdown summary: ours per sequence, our mean, then the published rows (same columns)."""
    cols = list(protocol.metrics)
    head = "| sequence | method | " + " | ".join(cols) + " |"
    lines = [f"## {protocol.name}: {protocol.title}", "", head, "|" + "---|" * (len(cols) + 2)]
    for r in rows:
        lines.append(f"| {r['sequence']} | {backend} | " + " | ".join(_fmt(r["metrics"].get(c)) for c in cols) + " |")
    if rows:
        lines.append(f"| **mean ({len(rows)})** | **{backend}** | " + " | ".join(f"**{_fmt(mean.get(c))}**" for c in cols) + " |")
    for p in protocol.published:
        label = p.method + (f" ({p.note})" if p.note else "")
        lines.append(f"| published: {p.source} | {label} | " + " | ".join(_fmt(p.metrics.get(c)) for c in cols) + " |")
    lines.append("")
    units = {"nvs": "PSNR dB, SSIM, LPIPS", "extrapolation": "metres (mae), fraction of pixels covered (coverage)"
             }.get(protocol.task, "metres")
    lines.append(f"Distances in {units}; compare numbers only within one protocol.")
    if protocol.notes:
        lines.append(f"Notes: {protocol.notes}.")
    if failed:
        lines += ["", f"**{len(failed)} sequence(s) failed:**", ""]
        lines += [f"- {f['sequence']} ({f.get('attempts', 1)} attempts): {(f.get('errors') or ['?'])[-1]}" for f in failed]
    return "\n".join(lines) + "\n"


def _mean(rows: list[dict[str, Any]], keys: Seq[str]) -> dict[str, float]:
    out = {}
    for k in keys:
        vals = [r["metrics"][k] for r in rows if isinstance(r["metrics"].get(k), (int, float))
                and math.isfinite(r["metrics"][k])]
        if vals:
            out[k] = float(np.mean(vals))
    return out


def write_summary(out: Path, protocol: Protocol, cfg: Any, sequences: Seq[Any], key: str,
                  failed: list[dict[str, Any]], plots: bool = True) -> tuple[dict[str, Any], dict[str, Path]]:
    """Write ``summary.json``, ``summary.md`` and ``plots/``; returns the summary and the files."""
    from forward3d.io.atomic import atomic_write
    from forward3d.io.jsonio import write_json

    out = Path(out)
    names = [s.name for s in sequences]
    rows = load_results(out, names, key)
    mean = _mean(rows, list(protocol.metrics) + ["seconds", "frames_per_s"])
    summary = {
        "protocol": protocol.name, "title": protocol.title, "task": protocol.task, "backend": cfg.backend,
        "data": cfg.data, "key": key, "num_sequences": len(names), "num_finished": len(rows),
        "mean": mean, "sequences": {r["sequence"]: r["metrics"] for r in rows},
        "failed": [{k: v for k, v in f.items() if k != "traceback"} for f in failed],
        "published": [{"source": p.source, "method": p.method, "metrics": p.metrics, "note": p.note}
                      for p in protocol.published],
        "sampling": {"stride": protocol.stride, "max_frames": protocol.max_frames, "size": protocol.size,
                     "crop": protocol.crop, "score_crop": protocol.score_crop,
                     **({"pair_offset": protocol.pair_offset, "min_coverage": protocol.min_coverage}
                        if protocol.task == "extrapolation" else {})},
        "notes": protocol.notes,
    }
    files = {"summary_json": write_json(out / "summary.json", summary)}
    with atomic_write(out / "summary.md", "w", encoding="utf-8") as f:
        f.write(summary_table(protocol, cfg.backend, rows, mean, failed))
    files["summary_md"] = out / "summary.md"
    if plots and rows:
        files.update(_plots(out, protocol, rows))
    return summary, files


def _plots(out: Path, protocol: Protocol, rows: list[dict[str, Any]]) -> dict[str, Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from forward3d.bench.runner import sequence_stem
    from forward3d.io.atomic import atomic_path

    plot_dir = out / "plots"
    plot_dir.mkdir(parents=True, exist_ok=True)
    files: dict[str, Path] = {}
    metric = protocol.metrics[0]
    fig, ax = plt.subplots(figsize=(max(4.0, 0.6 * len(rows) + 2), 3.5))
    ax.bar(range(len(rows)), [r["metrics"].get(metric, np.nan) for r in rows], color="tab:blue")
    ax.set_xticks(range(len(rows)), [r["sequence"] for r in rows], rotation=45, ha="right", fontsize=8)
    ax.set_ylabel(metric)
    ax.set_title(f"{protocol.name}: {metric} per sequence ({rows[0]['backend']})", fontsize=9)
    for p in protocol.published:
        if metric in p.metrics:
            ax.axhline(p.metrics[metric], ls="--", lw=1, color="grey")
            ax.text(len(rows) - 0.5, p.metrics[metric], p.method, fontsize=7, ha="right", va="bottom", color="grey")
    fig.tight_layout()
    with atomic_path(plot_dir / "error_per_sequence.png") as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    files["plot_errors"] = plot_dir / "error_per_sequence.png"
    if protocol.task != "trajectory":
        return files
    for r in rows:
        npz = out / "sequences" / f"{sequence_stem(r['sequence'])}.npz"
        if not npz.is_file():
            continue
        with np.load(npz) as z:
            gt, est = z["gt_c2w"][:, :3, 3], z["aligned_c2w"][:, :3, 3]
        # top view: the two axes the ground truth spreads most along
        axes = np.argsort(-np.ptp(gt, axis=0))[:2]
        fig, ax = plt.subplots(figsize=(4.5, 4.5))
        ax.plot(gt[:, axes[0]], gt[:, axes[1]], "k-", lw=1.5, label="ground truth")
        ax.plot(est[:, axes[0]], est[:, axes[1]], "-", color="tab:red", lw=1, label=f"{r['backend']} (aligned)")
        ax.set_aspect("equal", adjustable="datalim")
        ax.set_xlabel("xyz"[axes[0]] + " (m)")
        ax.set_ylabel("xyz"[axes[1]] + " (m)")
        ax.set_title(f"{r['sequence']}: ATE {r['metrics']['ate_rmse']:.4f} m", fontsize=9)
        ax.legend(fontsize=7)
        fig.tight_layout()
        path = plot_dir / f"trajectory_{sequence_stem(r['sequence'])}.png"
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=110, format="png")
        plt.close(fig)
        files[f"plot_trajectory_{r['sequence']}"] = path
    return files
