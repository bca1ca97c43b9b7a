"""Benchmark of the ``rgbd`` pipeline on synthetic rooms: speed, accuracy and peak memory vs length.

Each configuration runs in its own subprocess so that its peak RSS (``resource.getrusage``) is its own.
Frames are rendered lazily inside the loop; their rendering time is measured and reported apart, so
``fps`` is the pipeline alone (tracking + fusion) and ``fps_with_render`` the end-to-end rate.

    python benchmarks/rgbd.py            # 320x240 and 640x480, 100 and 1000 frames
    python benchmarks/rgbd.py --quick    # 320x240, 30 and 100 frames
    python benchmarks/rgbd.py --configs 320x240:100 640x480:1000

Writes ``benchmarks/results/rgbd.json`` (or ``--out``) and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT = ["320x240:100", "640x480:100", "320x240:1000", "640x480:1000"]
QUICK = ["320x240:30", "320x240:100"]


def _rss_mb() -> float:
    """Peak resident set size of this process in MiB (Linux reports KiB, macOS bytes)."""
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / 1024.0 / (1024.0 if sys.platform == "darwin" else 1.0)


def _child(spec: str, voxel: float, noise: float) -> dict:
    """Run one configuration in this process and return its numbers."""

    from forward3d.eval.surface import VisibilityMask, score_surface
    from forward3d.data.synthetic import SyntheticScene
    from forward3d.eval import ate
    from forward3d.pipelines.rgbd import RGBDBackend
    from forward3d.types import PointCloud

    size, n = spec.split(":")
    w, h = (int(v) for v in size.split("x"))
    n = int(n)
    scene = SyntheticScene(num_frames=n, width=w, height=h, depth_noise=noise)
    gt = scene.surface_points(0.01)
    vis = VisibilityMask(gt.points, noise=noise)
    every = max(1, n // 25)
    rss_start = _rss_mb()
    render_s = score_s = 0.0
    rss_trace: list[tuple[int, float]] = []

    def frames():
        nonlocal render_s, score_s
        for i in range(n):
            t = time.perf_counter()
            f = scene.frame(i)
            render_s += time.perf_counter() - t
            if i % every == 0:
                t = time.perf_counter()
                vis.update(f)  # scoring only: excluded from both rates
                score_s += time.perf_counter() - t
            if i % max(1, n // 10) == 0:
                rss_trace.append((i, _rss_mb()))
            yield f

    t0 = time.perf_counter()
    rec = RGBDBackend(voxel_size=voxel).run(frames(), progress=False)
    wall = time.perf_counter() - t0
    a = ate(rec.c2w, scene.c2w)
    A = a["alignment"]
    pts = PointCloud(rec.points.points).transform(A)
    m = score_surface(pts, gt, vis.seen)
    t = rec.timings
    loop = t["total_s"] - t["extraction_s"]
    return {
        "config": spec, "width": w, "height": h, "frames": n, "voxel_size": voxel, "depth_noise": noise,
        "fps": n / max(loop - render_s - score_s, 1e-9), "fps_with_render": n / max(wall - score_s, 1e-9),
        "tracking_ms_per_frame": 1000 * t["tracking_s"] / n, "fusion_ms_per_fused_frame":
            1000 * t["fusion_s"] / max(1, rec.metadata["num_integrated"]),
        "extraction_s": t["extraction_s"], "render_s": render_s, "wall_s": wall,
        "ate_rmse_m": a["rmse"], "accuracy_m": m["accuracy"], "completion_m": m["completion"],
        "fscore@0.02": m["fscore@0.02"], "tracking_failures": len(rec.failures),
        "keyframes": len(rec.keyframes), "voxel_blocks": rec.metadata["num_voxel_blocks"],
        "points": len(rec.points), "triangles": 0 if rec.mesh is None else len(rec.mesh.faces),
        "rss_before_mb": rss_start, "rss_trace_mb": rss_trace, "peak_rss_mb": _rss_mb(),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help=f"only {', '.join(QUICK)}")
    p.add_argument("--configs", nargs="+", default=None, metavar="WxH:N", help="configurations to run")
    p.add_argument("--voxel-size", type=float, default=0.02)
    p.add_argument("--noise", type=float, default=0.0, help="depth noise coefficient (sigma = K z^2)")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "rgbd.json"))
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(_child(args.child, args.voxel_size, args.noise)))
        return 0
    configs = args.configs or (QUICK if args.quick else DEFAULT)
    results = []
    for spec in configs:
        print(f"running {spec} ...", file=sys.stderr, flush=True)
        env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        cmd = [sys.executable, __file__, "--child", spec, "--voxel-size", str(args.voxel_size), "--noise", str(args.noise)]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            print(proc.stderr[-2000:], file=sys.stderr)
            results.append({"config": spec, "error": proc.stderr.strip().splitlines()[-1:]})
            continue
        results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    head = f"{'config':<14}{'fps':>7}{'fps+rnd':>9}{'ATE cm':>8}{'acc cm':>8}{'comp cm':>9}{'F@2cm':>7}{'blocks':>8}{'RSS0 MB':>9}{'peak MB':>9}"
    print(head)
    for r in results:
        if "error" in r:
            print(f"{r['config']:<14} failed: {r['error']}")
            continue
        print(f"{r['config']:<14}{r['fps']:>7.1f}{r['fps_with_render']:>9.1f}{100 * r['ate_rmse_m']:>8.2f}"
              f"{100 * r['accuracy_m']:>8.2f}{100 * r['completion_m']:>9.2f}{r['fscore@0.02']:>7.3f}"
              f"{r['voxel_blocks']:>8d}{r['rss_before_mb']:>9.0f}{r['peak_rss_mb']:>9.0f}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"machine": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count(),
            "date": time.strftime("%Y-%m-%d %H:%M:%S"), "note": "2 shared cores, other jobs running"}
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps({"meta": meta, "results": results}, indent=2) + "\n")
    tmp.replace(out)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
