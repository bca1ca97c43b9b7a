"""Benchmark forward3d's Gaussian rasterizer on gsplat's garden recipe (../shared/specs/splatting.md).

Recipe: the 138,766 garden Gaussians restricted to [-2, 2]^3 (111,785), seed 42, quats = normalised standard
normal, scales U[1e-4, 0.02], opacities U[0, 1], colours = file colours / 255 (SH degree 0), black background,
camera 0 at 1/4 (162x105) and 1/2 (324x210) resolution with K scaled alike.

Each (resolution, threads, pass) runs in its own subprocess so that its peak resident memory (ru_maxrss) is
its own; ``peak_rss_mb`` is the whole process (torch, data) and ``render_rss_mb`` the growth over the
state just before the first render. Times: wall clock (perf_counter) and process CPU time, median of
``--repeats`` after one warm-up. Wall time on a shared machine depends on the load (recorded as loadavg):
compare ratios within one run, and prefer CPU time for single-threaded figures.

    .venv/bin/python benchmarks/rasterize.py                 # full table, writes benchmarks/results/rasterize.json
    .venv/bin/python benchmarks/rasterize.py --res 4 --threads 1 --tile-size 4 8 16
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "garden" / "test_garden.npz"
RESULTS = ROOT / "benchmarks" / "results" / "rasterize.json"

# the spec's figures for a pure-PyTorch gsplat port (16x16 tiles, per-tile Python loop), 2 threads
PEERS = {
    4: {"fwd_s": 0.75, "fwdbwd_s": 1.75, "fwdbwd_gib": 2.7},
    2: {"fwd_s": 0.98, "fwdbwd_s": 2.76, "fwdbwd_gib": 4.1},
}


def load_scene(res: int, data: Path = DATA):
    """The gsplat test recipe: Gaussians and camera 0 at ``1/res`` resolution."""
    import numpy as np
    import torch

    from forward3d.render import Cameras
    from forward3d.types import Gaussians

    d = np.load(data)
    means = torch.from_numpy(d["means3d"]).float()
    colors = torch.from_numpy(d["colors"]).float() / 255.0
    keep = ((means > -2) & (means < 2)).all(-1)
    means, colors = means[keep], colors[keep]
    n = len(means)
    torch.manual_seed(42)
    quats = torch.nn.functional.normalize(torch.randn(n, 4), dim=-1)
    scales = torch.rand(n, 3) * (0.02 - 1e-4) + 1e-4
    opacities = torch.rand(n)
    g = Gaussians.from_activated(means, quats, scales, opacities, colors=colors)
    W, H = int(d["width"]), int(d["height"])
    cams = Cameras(torch.from_numpy(d["viewmats"][:1]), torch.from_numpy(d["Ks"][:1]), W, H)
    return g, cams.resized(W // res, H // res)


def worker(args: argparse.Namespace) -> dict:
    import torch

    from forward3d.render import rasterize

    torch.set_num_threads(args.threads)
    g, cams = load_scene(args.res)
    backward = args.mode == "fwdbwd"
    if backward:
        for t in (g.means, g.quats, g.log_scales, g.opacity_logits, g.sh):
            t.requires_grad_(True)
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    def run():
        for t in (g.means, g.quats, g.log_scales, g.opacity_logits, g.sh):
            t.grad = None
        with torch.set_grad_enabled(backward):
            out = rasterize(g, cams, backend=args.backend, tile_size=args.tile_size, chunk_size=args.chunk_size,
                            compile=args.compile)
            if backward:
                out.colors.sum().backward()
        return out

    t0 = time.perf_counter()
    out = run()  # warm-up (includes torch.compile's compilation with --compile)
    first = time.perf_counter() - t0
    walls, cpus = [], []
    for _ in range(args.repeats):
        c0, t0 = time.process_time(), time.perf_counter()
        run()
        walls.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    wall = statistics.median(walls)
    return {
        "res": f"1/{args.res}",
        "width": cams.width,
        "height": cams.height,
        "threads": args.threads,
        "mode": args.mode,
        "backend": args.backend,
        "tile_size": args.tile_size,
        "compile": args.compile,
        "first_call_s": first,
        "n_gaussians": len(g),
        "n_isects": int(out.meta.n_isects),
        "wall_s": wall,
        "cpu_s": statistics.median(cpus),
        "walls": walls,
        "peak_rss_mb": peak,
        "render_rss_mb": peak - base_rss,
        "gauss_pixels_per_s": len(g) * cams.width * cams.height / wall,
        "loadavg": os.getloadavg()[0],
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "default"),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--res", type=int, nargs="+", default=[4, 2], help="downscale factors (4 = 1/4 resolution)")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--modes", nargs="+", default=["fwd", "fwdbwd"], choices=["fwd", "fwdbwd"])
    ap.add_argument("--tile-size", type=int, nargs="+", default=[None])
    ap.add_argument("--chunk-size", type=int, default=None)
    ap.add_argument("--backend", default="torch")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--compile", action="store_true", help="rasterize(..., compile=True) (opt-in torch.compile kernels)")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--append", action="store_true", help="add the rows to an existing --out file")
    ap.add_argument("--omp-wait-policy", default="PASSIVE", choices=["PASSIVE", "ACTIVE", "default"],
                    help="OMP_WAIT_POLICY of the workers: on a loaded shared machine spinning OpenMP threads wait "
                         "for descheduled siblings, so PASSIVE (default here) gives fairer 2-thread figures")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--mode", default="fwd", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        args.res, args.threads, args.tile_size = args.res[0], args.threads[0], args.tile_size[0]
        if args.chunk_size is None:
            from forward3d.render.rasterizer import DEFAULT_CHUNK_SIZE

            args.chunk_size = DEFAULT_CHUNK_SIZE
        print(json.dumps(worker(args)))
        return
    if not DATA.exists():
        sys.exit(f"{DATA} not found")
    rows = []
    for res in args.res:
        for ts in args.tile_size:
            for threads in args.threads:
                for mode in args.modes:
                    cmd = [sys.executable, __file__, "--worker", "--res", str(res), "--threads", str(threads),
                           "--mode", mode, "--backend", args.backend, "--repeats", str(args.repeats)]
                    if ts is not None:
                        cmd += ["--tile-size", str(ts)]
                    if args.chunk_size is not None:
                        cmd += ["--chunk-size", str(args.chunk_size)]
                    if args.compile:
                        cmd += ["--compile"]
                    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
                    if args.omp_wait_policy != "default":
                        env["OMP_WAIT_POLICY"] = args.omp_wait_policy
                    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
                    if proc.returncode != 0:
                        sys.exit(f"worker failed: {' '.join(cmd)}\n{proc.stderr}")
                    row = json.loads(proc.stdout.strip().splitlines()[-1])
                    rows.append(row)
                    peer = PEERS.get(res, {}).get(f"{mode}_s")
                    print(f"{row['res']:>4} {row['width']}x{row['height']} compile={int(args.compile)} threads={threads} "
                          f"{mode:6s} wall {row['wall_s'] * 1e3:8.1f} ms  cpu {row['cpu_s'] * 1e3:8.1f} ms  "
                          f"peak {row['peak_rss_mb']:7.0f} MB (+{row['render_rss_mb']:.0f})  "
                          f"{row['gauss_pixels_per_s'] / 1e9:6.1f} G gauss*px/s  "
                          f"peer {peer if peer else '-'} s  load {row['loadavg']:.1f}", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"recipe": "gsplat garden test recipe, camera 0, ../shared/specs/splatting.md", "peers_2threads": PEERS,
            "cpu_count": os.cpu_count(), "note": "shared machine: wall times depend on the load; compare ratios"}
    if args.append and args.out.exists():
        rows = json.loads(args.out.read_text())["rows"] + rows
    args.out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
