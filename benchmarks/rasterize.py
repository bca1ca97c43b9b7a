"""Benchmark forward3d's Gaussian rasterizer (torch backend, CPU) against the targets of issue 17.

Two compositing kernels, each a row: ``numba`` (the compiled kernel, the CPU default when numba is
installed; the targets are checked on it) and ``torch`` (the vectorised torch kernel).

Scenes (../shared/specs/splatting.md, gsplat's garden test recipe): the 138,766 garden Gaussians
restricted to [-2, 2]^3 (111,785), seed 42, quats = normalised standard normal, scales U[1e-4, 0.02],
opacities U[0, 1], colours = file colours / 255 (SH degree 0), black background, camera 0 at 1/4
(162x105) and 1/2 (324x210) resolution with K scaled alike. ``1M@1024``: 1,000,000 Gaussians drawn from
all the garden means (with replacement, jittered by N(0, 0.01)), same recipe otherwise, camera 0 resized
to 1024x1024.

All thread counts run in ONE process (``torch.set_num_threads``), interleaved repeat by repeat, so that a
ratio compares like with like on a shared machine (OpenMP's default wait policy unless
``--omp-wait-policy`` says otherwise). Reported per (case, threads): median and minimum wall
time, median process CPU time (on a loaded machine CPU time is the steadier single-thread figure), the
load average. Each target is printed beside its measured figure with pass/fail; JSON goes to
``benchmarks/results/rasterize.json``.

    .venv/bin/python benchmarks/rasterize.py                   # every case, 1 and 2 threads
    .venv/bin/python benchmarks/rasterize.py --cases half-fwd half-fwdbwd --repeats 7
    .venv/bin/python benchmarks/rasterize.py --kernels numba               # only the compiled kernel

``first`` is the first call of the process (numba: compilation, or loading numba's on-disk cache).
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _util  # noqa: E402


ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("FORWARD3D_SHARED", ROOT.parent / "shared")) / "data" / "garden" / "test_garden.npz"

# case -> (scene, backward)
CASES = {
    "quarter-fwd": ("1/4", False),
    "quarter-fwdbwd": ("1/4", True),
    "half-fwd": ("1/2", False),
    "half-fwdbwd": ("1/2", True),
    "1M@1024-fwdbwd": ("1M@1024", True),
}
# issue 17: (name, case, threads, kind, bound); kind "max_s" = wall median <= bound, "min_speedup" =
# wall(1 thread) / wall(2 threads) >= bound
TARGETS = [
    ("2 threads >= 1.7x 1 thread, 1/2 fwd", "half-fwd", 2, "min_speedup", 1.7),
    ("2 threads >= 1.7x 1 thread, 1/2 fwd+bwd", "half-fwdbwd", 2, "min_speedup", 1.7),
    ("1/2 res fwd <= 60 ms (2 threads)", "half-fwd", 2, "max_s", 0.060),
    ("1/2 res fwd+bwd <= 180 ms (2 threads)", "half-fwdbwd", 2, "max_s", 0.180),
    ("1M Gaussians 1024^2 fwd+bwd <= 4 s (2 threads)", "1M@1024-fwdbwd", 2, "max_s", 4.0),
]


def load_scene(res: int | str, data: Path = DATA):
    """The gsplat test recipe: Gaussians and camera 0 at ``1/res`` resolution (``res`` 4, 2, "1/4", "1/2"),
    or ``"1M@1024"`` (one million Gaussians, 1024x1024)."""
    import numpy as np
    import torch

    from forward3d.render import Cameras
    from forward3d.types import Gaussians

    d = np.load(data)
    means = torch.from_numpy(d["means3d"]).float()
    colors = torch.from_numpy(d["colors"]).float() / 255.0
    torch.manual_seed(42)
    if res == "1M@1024":
        pick = torch.randint(len(means), (1_000_000,))
        means, colors = means[pick] + 0.01 * torch.randn(len(pick), 3), colors[pick]
    else:
        keep = ((means > -2) & (means < 2)).all(-1)
        means, colors = means[keep], colors[keep]
    n = len(means)
    quats = torch.nn.functional.normalize(torch.randn(n, 4), dim=-1)
    scales = torch.rand(n, 3) * (0.02 - 1e-4) + 1e-4
    opacities = torch.rand(n)
    g = Gaussians.from_activated(means, quats, scales, opacities, colors=colors)
    W, H = int(d["width"]), int(d["height"])
    cams = Cameras(torch.from_numpy(d["viewmats"][:1]), torch.from_numpy(d["Ks"][:1]), W, H)
    if res == "1M@1024":
        return g, cams.resized(1024, 1024)
    f = int(str(res).split("/")[-1])
    return g, cams.resized(W // f, H // f)


def bench_case(case: str, threads: list[int], repeats: int, tile_size: int | None, compile: bool,
               kernel: str = "numba") -> list[dict]:
    import torch

    from forward3d.render import rasterize

    scene, backward = CASES[case]
    g, cams = load_scene(scene)
    leaves = (g.means, g.quats, g.log_scales, g.opacity_logits, g.sh)
    if backward:
        for t in leaves:
            t.requires_grad_(True)

    def run():
        for t in leaves:
            t.grad = None
        with torch.set_grad_enabled(backward):
            out = rasterize(g, cams, backend="torch", tile_size=tile_size, compile=compile, cpu_kernel=kernel)
            if backward:
                out.colors.sum().backward()
        return out

    n0 = torch.get_num_threads()
    samples: dict[int, list[tuple[float, float]]] = {t: [] for t in threads}
    first: dict[int, float] = {}
    try:
        for rep in range(repeats + 1):  # rep 0: warm-up of every thread count
            for t in threads:
                torch.set_num_threads(t)
                c0, t0 = time.process_time(), time.perf_counter()
                out = run()
                wall, cpu = time.perf_counter() - t0, time.process_time() - c0
                if rep == 0:
                    first[t] = wall
                else:
                    samples[t].append((wall, cpu))
    finally:
        torch.set_num_threads(n0)
    rows = []
    for t in threads:
        walls = [s[0] for s in samples[t]]
        rows.append({
            "case": case, "kernel": kernel, "tile_size": out.meta.tile_size, "width": cams.width, "height": cams.height, "n_gaussians": len(g),
            "n_isects": int(out.meta.n_isects), "threads": t, "backward": backward,
            "wall_s": statistics.median(walls), "wall_min_s": min(walls), "walls": walls,
            "cpu_s": statistics.median(s[1] for s in samples[t]), "first_call_s": first[t],
            "loadavg": os.getloadavg()[0],
        })
    return rows


def check_targets(rows: list[dict], kernel: str = "numba") -> list[dict]:
    """Each target of :data:`TARGETS` with its measured figure (rows of ``kernel``) and pass/fail (``None``
    when not measured)."""
    by = {(r["case"], r["threads"]): r for r in rows if r.get("kernel", "torch") == kernel}
    out = []
    for name, case, threads, kind, bound in TARGETS:
        r, r1 = by.get((case, threads)), by.get((case, 1))
        if kind == "max_s":
            value = r["wall_s"] if r else None
            ok = None if value is None else value <= bound
        else:
            value = r1["wall_s"] / r["wall_s"] if r and r1 else None
            ok = None if value is None else value >= bound
        cpu_ratio = r1["cpu_s"] / r["cpu_s"] if kind == "min_speedup" and r and r1 else None
        # loaded machine: the CPU time of the row (all threads together) beside the wall time
        cpu = r["cpu_s"] if kind == "max_s" and r else None
        out.append({"target": name, "kernel": kernel, "kind": kind, "bound": bound, "measured": value, "pass": ok,
                    "cpu_s": cpu, "cpu_ratio_1t_over_2t": cpu_ratio})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--repeats-1m", type=int, default=3, help="repeats of the 1M@1024 case (a few seconds each)")
    ap.add_argument("--tile-size", type=int, default=None)
    ap.add_argument("--compile", action="store_true", help="rasterize(..., compile=True) (opt-in torch.compile kernels)")
    ap.add_argument("--kernels", nargs="+", default=["numba", "torch"], choices=["numba", "torch"],
                    help="compositing kernels to measure (targets: the first)")
    ap.add_argument("--out", default="rasterize.json", help="file name under benchmarks/results/")
    _util.add_omp_wait_policy_arg(ap)
    args = ap.parse_args()
    omp_policy = _util.apply_omp_wait_policy(args.omp_wait_policy)
    if not DATA.exists():
        sys.exit(f"{DATA} not found (set FORWARD3D_SHARED to the shared folder)")
    if args.compile and "numba" in args.kernels:
        sys.exit("--compile is for the torch kernel: add --kernels torch")
    rows = []
    for case in args.cases:
        repeats = args.repeats_1m if case.startswith("1M") else args.repeats
        for kernel in args.kernels:
            for r in bench_case(case, args.threads, repeats, args.tile_size, args.compile, kernel):
                rows.append(r)
                print(f"{r['case']:16s} {r['kernel']:5s} tile {r['tile_size']:2d} {r['width']}x{r['height']} "
                      f"N={r['n_gaussians']:>8d} threads={r['threads']} "
                      f"wall med {r['wall_s'] * 1e3:8.1f} ms  min {r['wall_min_s'] * 1e3:8.1f} ms  "
                      f"cpu {r['cpu_s'] * 1e3:8.1f} ms  first {r['first_call_s']:.2f} s  load {r['loadavg']:.1f}",
                      flush=True)
    targets = check_targets(rows, args.kernels[0])
    print()
    _util.print_table(
        [{**t, "measured": t["measured"], "pass": {True: "PASS", False: "FAIL", None: "n/a"}[t["pass"]]}
         for t in targets], ["target", "kernel", "bound", "measured", "cpu_s", "cpu_ratio_1t_over_2t", "pass"])
    path = _util.write_json(args.out, {
        "benchmark": "rasterize", "machine": _util.machine_info(),
        "recipe": "gsplat garden test recipe, camera 0, ../shared/specs/splatting.md; 1M@1024 see docstring",
        "note": "one process, thread counts interleaved; shared machine: wall depends on the load (loadavg)",
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "tile_size": args.tile_size,
        "compile": args.compile, "kernels": args.kernels, "omp_wait_policy": omp_policy, "rows": rows,
        "targets": targets})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
