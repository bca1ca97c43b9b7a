"""Shared helpers for the benchmark scripts: run a config in a fresh subprocess (so that its peak
RSS is its own), median timings, table printing and atomic JSON output."""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def peak_rss_mib() -> float:
    """Peak resident set size of this process in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def median_time(fn, repeats: int = 3, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def run_in_subprocess(script: str, args: list[str], timeout: float = 3600) -> dict:
    """Run ``python script --child args...``; the child prints one JSON line last."""
    cmd = [sys.executable, script, "--child", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env={**os.environ})
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit {proc.returncode}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def machine_info() -> dict:
    import torch

    return {"python": platform.python_version(), "torch": torch.__version__, "cpu_count": os.cpu_count(),
            "machine": platform.machine(), "cuda": torch.cuda.is_available(),
            "time": time.strftime("%Y-%m-%dT%H:%M:%S")}


def print_table(rows: list[dict], columns: list[str]) -> None:
    """Print ``rows`` as an aligned text table of ``columns`` (a missing value prints empty; no rows: the
    header only)."""
    widths = {c: max([len(c), *(len(_fmt(r.get(c))) for r in rows)]) for c in columns}
    print("  ".join(c.ljust(widths[c]) for c in columns))
    print("  ".join("-" * widths[c] for c in columns))
    for r in rows:
        print("  ".join(_fmt(r.get(c)).ljust(widths[c]) for c in columns))


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "" if v is None else str(v)


def results_path(out: str | os.PathLike) -> Path:
    """Where ``out`` is written: a bare file name goes under ``benchmarks/results/``; a path with a folder
    part (``results/x.json``, ``/tmp/x.json``) is used as given (relative to the current folder)."""
    p = Path(out)
    return RESULTS / p if len(p.parts) == 1 and not p.is_absolute() else p


def write_json(out: str | os.PathLike, payload: dict) -> Path:
    """Write ``payload`` as indented JSON to :func:`results_path` ``(out)``, atomically (a killed run never
    leaves half a file); numpy values and Paths are converted, anything else unknown is written as ``str``."""
    from forward3d.io.atomic import atomic_write
    from forward3d.io.jsonio import to_jsonable

    path = results_path(out)
    with atomic_write(path, "w") as f:
        json.dump(to_jsonable(payload), f, indent=2, default=str)
        f.write("\n")
    return path


def add_omp_wait_policy_arg(ap) -> None:
    """``--omp-wait-policy``: the OpenMP wait policy of the run (set before torch is imported)."""
    ap.add_argument("--omp-wait-policy", choices=["default", "ACTIVE", "PASSIVE"], default="default",
                    help="OMP_WAIT_POLICY for this run; default: the runtime's (what a user gets). PASSIVE keeps "
                         "idle threads from spinning on a loaded machine but makes every parallel region wake "
                         "sleeping threads (the rasterizer's 2-thread speed-up fell from 1.6x to 1.1x with it)")


def apply_omp_wait_policy(policy: str) -> str:
    """Set ``OMP_WAIT_POLICY`` from :func:`add_omp_wait_policy_arg`'s value (``"default"`` leaves the
    environment as it is) and return the effective value for the JSON. Must run before torch is imported."""
    if "torch" in sys.modules:
        raise RuntimeError("apply_omp_wait_policy: torch is already imported (OpenMP read its settings)")
    if policy != "default":
        os.environ["OMP_WAIT_POLICY"] = policy
    return os.environ.get("OMP_WAIT_POLICY", "(runtime default)")
