"""Benchmark of the ``rgbd`` pipeline on synthetic rooms: speed, accuracy and peak memory vs length.

Each configuration runs in its own subprocess so that its peak RSS (``resource.getrusage``) is its own.
Frames are rendered lazily inside the loop; their rendering time is measured and reported apart, so
``fps`` is the pipeline alone (tracking + fusion) and ``fps_with_render`` the end-to-end rate.

    python benchmarks/rgbd.py            # 320x240 and 640x480, 100 and 1000 frames
    python benchmarks/rgbd.py --quick    # 320x240, 30 and 100 frames
    python benchmarks/rgbd.py --configs 320x240:100 640x480:1000
    python benchmarks/rgbd.py --loops    # loop closure on/off (synthetic 3 loops + hololens_000),
                                         # and the tracking modes on the real sequence
    python benchmarks/rgbd.py --memory 10000   # peak RSS of a long synthetic stream (160x120), keyframe
                                               # culling on and off, RSS sampled every 1,000 frames
    python benchmarks/rgbd.py --blocks 300 3000  # TSDF block budget: a walk around a 30 m room,
                                                 # max_blocks 0 (unbounded) and 3000
    python benchmarks/rgbd.py --memory 10000 --memory-modes cull --memory-size 320x240 --trace t.jsonl \
        --out benchmarks/results/rgbd_memory_10000.json   # one mode; samples appended to t.jsonl as they come

Writes ``benchmarks/results/rgbd.json`` (``rgbd_loops.json`` with ``--loops``, ``rgbd_blocks.json`` with ``--blocks``; or ``--out``) and prints a table.
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


LOOP_RUNS = ["synthetic:keyframe:off", "synthetic:keyframe:on", "hololens:keyframe:off", "hololens:keyframe:on",
             "hololens:keyframe:off:plain", "hololens:keyframe:on:plain", "hololens:frame:off", "hololens:frame:on",
             "hololens:model:off", "hololens:model:on"]
HOLOLENS = ROOT.parent / "shared" / "data" / "hololens_000"


def _child_loops(spec: str) -> dict:
    """One loop-closure run ``dataset:tracking:on|off[:plain][:tN]`` (``synthetic``: 300 frames = 3 loops at
    320x240, depth noise 0.002, 5 % holes; ``hololens``: ``../shared/data/hololens_000``, ATE against its
    poses; ``plain``: without feature tracking and relocalisation; ``tN``: open3d on N threads, default
    1 = the back-end's default, reproducible; 0 = all cores)."""
    import numpy as np

    from forward3d.eval import ate
    from forward3d.pipelines.rgbd import RGBDBackend

    dataset, tracking, lc, *rest = spec.split(":")
    plain = "plain" in rest
    threads = next((int(r[1:]) for r in rest if r.startswith("t") and r[1:].isdigit()), 1)
    if dataset == "synthetic":
        from forward3d.data.synthetic import SyntheticScene

        scene = SyntheticScene(num_frames=300, width=320, height=240, seed=0, depth_noise=0.002, depth_holes=0.05)
        frames, gt = list(scene.frames()), scene.c2w
    else:
        from forward3d.io.sources import open_frames

        frames = list(open_frames(HOLOLENS, intrinsics=np.loadtxt(HOLOLENS / "K.txt")))
        gt = np.loadtxt(HOLOLENS / "poses.txt").reshape(-1, 4, 4)
    t0 = time.perf_counter()
    rec = RGBDBackend(tracking=tracking, loop_closure=lc == "on", feature_tracking=not plain,
                      relocalize=not plain, threads=threads).run(frames, progress=False)
    wall = time.perf_counter() - t0
    lcm = rec.metadata.get("loop_closure", {})
    return {"config": spec, "frames": len(frames), "ate_rmse_m": ate(rec.c2w, gt)["rmse"], "wall_s": wall,
            "fps": len(frames) / max(rec.timings["total_s"] - rec.timings["extraction_s"], 1e-9),
            "loop_closure_s": rec.timings.get("loop_closure_s", 0.0), "refuse_s": lcm.get("refused_s", 0.0),
            "loops_kept": lcm.get("kept", 0), "loop_candidates": lcm.get("candidates", 0),
            "loops_rejected": lcm.get("rejected", 0), "keyframes": len(rec.keyframes),
            "tracking_failures": len(rec.failures), "keyframe_store_mb": lcm.get("keyframe_store_mb", 0.0),
            "lost": sum(s.state == "lost" for s in rec.frame_status), "threads": threads,
            "lost_frames": [i for i, s in enumerate(rec.frame_status) if s.state == "lost"],
            "relocalised": rec.metadata.get("tracking", {}).get("relocalised", 0),
            "peak_rss_mb": _rss_mb()}


def _child_memory(spec: str, size: tuple[int, int] = (160, 120), trace_file: str | None = None) -> dict:
    """``memory:N:cull|nocull``: N synthetic frames at ``size`` (orbit loops, lazily rendered), loop closure
    on, RSS sampled every ``max(1, N // 10)`` frames; returns the samples, keyframes and stored keyframes.

    With ``trace_file``, every sample is also appended there as it is taken (one JSON line: frame, RSS,
    wall and CPU seconds so far), so a run stopped before its end still says how far it got."""
    from forward3d.data.synthetic import SyntheticScene
    from forward3d.eval import ate
    from forward3d.pipelines.rgbd import RGBDBackend

    _, n, cull = spec.split(":")
    n = int(n)
    scene = SyntheticScene(num_frames=n, width=size[0], height=size[1], seed=0, depth_noise=0.002)
    every = max(1, n // 10)
    trace: list[tuple[int, float]] = []
    render_s = 0.0
    t0, c0 = time.perf_counter(), time.process_time()

    def sample(i: int) -> None:
        trace.append((i, _rss_mb()))
        if trace_file:
            with open(trace_file, "a") as fh:
                fh.write(json.dumps({"config": spec, "frame": i, "rss_mb": trace[-1][1], "peak_rss_mb": _rss_mb(),
                                     "wall_s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0}) + "\n")

    def frames():
        nonlocal render_s
        for i in range(n):
            if i % every == 0:
                sample(i)
            t = time.perf_counter()
            f = scene.frame(i)
            render_s += time.perf_counter() - t
            yield f

    rec = RGBDBackend(keyframe_cull=cull == "cull", mesh=False).run(frames(), progress=False)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    sample(n)
    lcm = rec.metadata.get("loop_closure", {})
    return {"config": spec, "frames": n, "width": size[0], "height": size[1], "wall_s": wall, "cpu_s": cpu,
            "render_s": render_s, "fps": n / wall, "fps_cpu": n / max(cpu, 1e-9),
            "fps_pipeline": n / max(wall - render_s, 1e-9),
            "ate_rmse_m": ate(rec.c2w, scene.c2w)["rmse"],
            "keyframes": len(rec.keyframes), "stored_keyframes": rec.metadata["stored_keyframes"],
            "loops_kept": lcm.get("kept", 0), "reanchored": lcm.get("reanchored", 0),
            "reanchor_inconsistent": lcm.get("reanchor_inconsistent", 0),
            "reanchor_edges": lcm.get("reanchor_edges", 0), "optimizations": lcm.get("optimizations", 0),
            "loop_closure_s": rec.timings.get("loop_closure_s", 0.0), "tracking_s": rec.timings["tracking_s"],
            "fusion_s": rec.timings["fusion_s"], "keyframe_store_mb": lcm.get("keyframe_store_mb", 0.0),
            "rss_trace_mb": trace, "peak_rss_mb": _rss_mb()}


def _child_blocks(spec: str) -> dict:
    """``blocks:N:MAX_BLOCKS``: N frames at 160x120 walking around a 30 x 3 x 8 m room (ground-truth poses,
    lazily rendered), TSDF voxel 4 cm with ``max_blocks`` (0 = unbounded); RSS and resident blocks sampled
    every ``max(1, N // 10)`` frames, the mesh scored against the surface the frames saw."""
    from forward3d.data.synthetic import SyntheticConfig, SyntheticScene
    from forward3d.eval.surface import VisibilityMask, score_surface
    from forward3d.pipelines.rgbd import RGBDBackend
    from forward3d.types import PointCloud

    _, n, budget = spec.split(":")
    n, budget = int(n), int(budget)
    scene = SyntheticScene(SyntheticConfig(num_frames=n, width=160, height=120, room_size=(30.0, 3.0, 8.0),
                                           trajectory="walk", speed=1000.0 / n))
    gt = scene.surface_points(0.04)
    vis = VisibilityMask(gt.points)
    every = max(1, n // 10)
    trace: list[tuple[int, float]] = []

    def frames():
        for i in range(n):
            f = scene.frame(i)
            if i % every == 0:
                trace.append((i, _rss_mb()))
            if i % 5 == 0:
                vis.update(f)
            yield f

    t0 = time.perf_counter()
    backend = RGBDBackend(use_gt_poses=True, voxel_size=0.04, max_blocks=budget, block_count=1024)
    rec = backend.run(frames(), progress=False)
    wall = time.perf_counter() - t0
    m = score_surface(PointCloud(rec.mesh.vertices), gt, vis.seen)
    meta = rec.metadata
    return {"config": spec, "frames": n, "max_blocks": budget, "wall_s": wall, "fps": n / wall,
            "extraction_s": rec.timings["extraction_s"], "resident_blocks": meta["num_voxel_blocks"],
            "peak_blocks": meta["peak_voxel_blocks"], "spooled_blocks": meta["spooled_voxel_blocks"],
            "stream_outs": meta["block_stream_outs"], "triangles": len(rec.mesh.faces),
            "mesh_accuracy_median_m": m["accuracy_median"], "mesh_completion_median_m": m["completion_median"],
            "mesh_recall@0.05": m["recall@0.05"], "rss_trace_mb": trace, "peak_rss_mb": _rss_mb()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help=f"only {', '.join(QUICK)}")
    p.add_argument("--configs", nargs="+", default=None, metavar="WxH:N", help="configurations to run")
    p.add_argument("--voxel-size", type=float, default=0.02)
    p.add_argument("--noise", type=float, default=0.0, help="depth noise coefficient (sigma = K z^2)")
    p.add_argument("--loops", nargs="*", default=None, metavar="DATA:TRACKING:on|off",
                   help=f"loop closure runs (default: {' '.join(LOOP_RUNS)})")
    p.add_argument("--memory", type=int, default=None, metavar="N",
                   help="long-stream memory run: N frames at 160x120, keyframe culling on and off")
    p.add_argument("--blocks", type=int, nargs=2, default=None, metavar=("N", "MAX_BLOCKS"),
                   help="TSDF block budget run: N frames through a 30 m room, max_blocks 0 (unbounded) and MAX_BLOCKS")
    p.add_argument("--memory-modes", nargs="+", default=["cull", "nocull"], choices=["cull", "nocull"],
                   help="--memory: the keyframe culling modes to run")
    p.add_argument("--memory-size", default="160x120", metavar="WxH", help="--memory: frame size")
    p.add_argument("--trace", default=None, metavar="FILE",
                   help="--memory: append each RSS sample to FILE as it is taken (JSON lines)")
    p.add_argument("--out", default=None, help="results JSON (default: benchmarks/results/rgbd.json or rgbd_loops.json)")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child and args.child.startswith("blocks:"):
        print(json.dumps(_child_blocks(args.child)))
        return 0
    if args.child and args.child.startswith("memory:"):
        w, h = (int(v) for v in args.memory_size.split("x"))
        print(json.dumps(_child_memory(args.child, (w, h), args.trace)))
        return 0
    if args.child:
        child = _child_loops(args.child) if args.child.count(":") >= 2 else _child(args.child, args.voxel_size, args.noise)
        print(json.dumps(child))
        return 0
    if args.out is None:
        name = "rgbd_blocks.json" if args.blocks is not None else "rgbd_memory.json" if args.memory is not None else "rgbd_loops.json" if args.loops is not None else "rgbd.json"
        args.out = str(ROOT / "benchmarks" / "results" / name)
    if args.blocks is not None:
        n, budget = args.blocks
        results = _run_children([f"blocks:{n}:0", f"blocks:{n}:{budget}"], [])
        for r in results:
            if "error" not in r:
                print(f"{r['config']:<18} {r['fps']:.1f} frames/s, blocks resident {r['resident_blocks']} (peak "
                      f"{r['peak_blocks']}, spooled {r['spooled_blocks']}), peak RSS {r['peak_rss_mb']:.0f} MB, mesh "
                      f"accuracy {100 * r['mesh_accuracy_median_m']:.2f} cm completion "
                      f"{100 * r['mesh_completion_median_m']:.2f} cm, extraction {r['extraction_s']:.1f} s, "
                      f"RSS every {n // 10} frames: {[round(m) for _, m in r['rss_trace_mb']]}")
        _write(Path(args.out), results)
        return 0
    if args.memory is not None:
        out = Path(args.out)
        extra = ["--memory-size", args.memory_size] + (["--trace", args.trace] if args.trace else [])
        results = _run_children([f"memory:{args.memory}:{m}" for m in args.memory_modes], extra)
        for r in results:
            if "error" not in r:
                print(f"{r['config']:<22} {r['fps']:.1f} frames/s ({r['fps_cpu']:.1f} per CPU second), "
                      f"ATE {100 * r['ate_rmse_m']:.2f} cm, "
                      f"{r['stored_keyframes']} of {r['keyframes']} keyframes stored, peak {r['peak_rss_mb']:.0f} MB, "
                      f"RSS every {args.memory // 10} frames: {[round(m) for _, m in r['rss_trace_mb']]}")
        _write(out, results)
        return 0
    if args.loops is not None:
        return _main_loops(args.loops or LOOP_RUNS, Path(args.out))
    configs = args.configs or (QUICK if args.quick else DEFAULT)
    results = _run_children(configs, ["--voxel-size", str(args.voxel_size), "--noise", str(args.noise)])
    head = f"{'config':<14}{'fps':>7}{'fps+rnd':>9}{'ATE cm':>8}{'acc cm':>8}{'comp cm':>9}{'F@2cm':>7}{'blocks':>8}{'RSS0 MB':>9}{'peak MB':>9}"
    print(head)
    for r in results:
        if "error" in r:
            print(f"{r['config']:<14} failed: {r['error']}")
            continue
        print(f"{r['config']:<14}{r['fps']:>7.1f}{r['fps_with_render']:>9.1f}{100 * r['ate_rmse_m']:>8.2f}"
              f"{100 * r['accuracy_m']:>8.2f}{100 * r['completion_m']:>9.2f}{r['fscore@0.02']:>7.3f}"
              f"{r['voxel_blocks']:>8d}{r['rss_before_mb']:>9.0f}{r['peak_rss_mb']:>9.0f}")
    _write(Path(args.out), results)
    return 0


def _run_children(specs: list[str], extra: list[str]) -> list[dict]:
    """Each spec in its own subprocess (its own peak RSS); a failed one is recorded with its error."""
    results = []
    for spec in specs:
        print(f"running {spec} ...", file=sys.stderr, flush=True)
        env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        proc = subprocess.run([sys.executable, __file__, "--child", spec, *extra], capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            print(proc.stderr[-2000:], file=sys.stderr)
            results.append({"config": spec, "error": proc.stderr.strip().splitlines()[-1:]})
            continue
        results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    return results


def _write(out: Path, results: list[dict]) -> None:
    meta = {"machine": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count(),
            "date": time.strftime("%Y-%m-%d %H:%M:%S"), "note": "2 shared cores, other jobs running"}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")  # atomic: the parent does not import forward3d
    tmp.write_text(json.dumps({"meta": meta, "results": results}, indent=2) + "\n")
    tmp.replace(out)
    print(f"wrote {out}")


def _main_loops(specs: list[str], out: Path) -> int:
    results = _run_children(specs, [])
    print(f"{'run':<30}{'ATE cm':>8}{'wall s':>8}{'fps':>7}{'LC s':>7}{'refuse s':>9}{'loops':>7}{'rej':>6}{'kf':>6}{'fail':>6}{'peak MB':>9}")
    for r in results:
        if "error" in r:
            print(f"{r['config']:<30} failed: {r['error']}")
            continue
        print(f"{r['config']:<30}{100 * r['ate_rmse_m']:>8.2f}{r['wall_s']:>8.1f}{r['fps']:>7.1f}{r['loop_closure_s']:>7.1f}"
              f"{r['refuse_s']:>9.1f}{r['loops_kept']:>7d}{r['loops_rejected']:>6d}{r['keyframes']:>6d}"
              f"{r['tracking_failures']:>6d}{r['peak_rss_mb']:>9.0f}")
    _write(out, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
