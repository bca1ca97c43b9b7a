"""DepthSplat benchmark: one forward of the FULL-size released architectures (random weights), 2 views at
256 x 256 (the RE10K protocol), on the CPU in fp32 and in bf16 autocast (fp32 weights), and on CUDA
when present; peak memory (RSS on the CPU, ``max_memory_allocated`` on CUDA) and the bf16 depth error
against fp32 on the same inputs and weights.

Each (model, device, dtype) runs in its own subprocess so that its peak RSS is its own.

    python benchmarks/depthsplat.py                              # small + base, CPU, 2 threads
    python benchmarks/depthsplat.py --models small base large --repeats 3
    python benchmarks/depthsplat.py --devices cuda               # on a machine with a GPU

Prints a table and writes ``benchmarks/results/depthsplat.json`` (``--out`` to change). Timings on a
shared machine are noisy: the load average is recorded with each run.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import _util  # noqa: E402


def _inputs(v: int, size: int):
    import torch

    g = torch.Generator().manual_seed(0)
    images = torch.rand(1, v, 3, size, size, generator=g)
    K = torch.tensor([[0.86, 0.0, 0.5], [0.0, 0.86, 0.5], [0.0, 0.0, 1.0]]).expand(1, v, 3, 3).clone()
    c2w = torch.eye(4).repeat(1, v, 1, 1)
    c2w[0, :, 0, 3] = torch.linspace(0, 0.2, v)  # a 20 cm baseline along x
    return images, K, c2w


def child(model: str, device: str, dtype: str, threads: int, repeats: int, size: int, ref_path: str,
          warmup: int = 1) -> dict:
    import torch

    from forward3d.models.depthsplat import DepthSplat, depthsplat_config

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    t0 = time.perf_counter()
    net = DepthSplat(depthsplat_config(model)).eval().to(device)
    build_s = time.perf_counter() - t0
    images, K, c2w = (t.to(device) for t in _inputs(2, size))
    ctx = (torch.autocast(device_type=device.split(":")[0], dtype=torch.bfloat16) if dtype == "bf16"
           else torch.autocast(device_type=device.split(":")[0], enabled=False))
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    times = []
    with torch.inference_mode(), ctx:
        for i in range(repeats + warmup):  # the first `warmup` runs are not timed
            sync()
            t = time.perf_counter()
            out = net(images, K, c2w, near=0.5, far=100.0)
            sync()
            if i >= warmup:
                times.append(time.perf_counter() - t)
    depth = out.depths.float().cpu()
    res = {"model": model, "device": device, "dtype": dtype, "threads": threads, "size": size, "views": 2, "warmup": warmup,
           "params_m": sum(p.numel() for p in net.parameters()) / 1e6, "build_s": build_s,
           "s_per_forward": sorted(times)[len(times) // 2], "s_all": times,
           "gaussians": int(out.raw.means.shape[1]), "finite": bool(torch.isfinite(out.raw.means).all()),
           "loadavg": os.getloadavg()[0]}
    if device.startswith("cuda"):
        res["peak_mib"] = torch.cuda.max_memory_allocated() / 2**20
        res["gpu"] = torch.cuda.get_device_name()
    else:
        res["peak_mib"] = _util.peak_rss_mib()
    ref = Path(ref_path)
    if dtype == "fp32":
        torch.save(depth, ref)
    elif ref.is_file():
        d32 = torch.load(ref, weights_only=True)
        rel = ((depth - d32).abs() / d32).flatten()
        res["bf16_depth_rel_err_median"] = float(rel.median())
        res["bf16_depth_rel_err_p99"] = float(rel.quantile(0.99))
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--models", nargs="+", default=["small", "base"], help="presets: small base large")
    ap.add_argument("--devices", nargs="+", default=["cpu"], help="cpu and/or cuda")
    ap.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=1, help="untimed forwards before the timed ones")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--out", default="depthsplat.json")
    ap.add_argument("--ref", default="")
    args = ap.parse_args()
    if args.child:
        r = child(args.models[0], args.devices[0], args.dtypes[0], args.threads, args.repeats, args.size, args.ref,
                  args.warmup)
        print(json.dumps(r))
        return
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for dev in args.devices:
            for model in args.models:
                ref = str(Path(tmp) / f"{model}_{dev}.pt")
                for dt in sorted(args.dtypes, key=lambda d: d != "fp32"):  # fp32 first: the bf16 reference
                    r = _util.run_in_subprocess(__file__, ["--models", model, "--devices", dev, "--dtypes", dt,
                                                           "--threads", str(args.threads), "--repeats",
                                                           str(args.repeats), "--warmup", str(args.warmup),
                                                           "--size", str(args.size), "--ref", ref])
                    r.setdefault("model", model)
                    r.setdefault("device", dev)
                    r.setdefault("dtype", dt)
                    rows.append(r)
                    print(json.dumps(r), flush=True)
    _util.print_table(rows, ["model", "device", "dtype", "threads", "params_m", "s_per_forward", "peak_mib",
                             "bf16_depth_rel_err_median", "bf16_depth_rel_err_p99", "loadavg", "error"])
    path = _util.write_json(args.out, {"machine": _util.machine_info(), "rows": rows})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
