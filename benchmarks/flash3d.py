"""Flash3D forward time and peak memory on CPU (full-size released architecture, random weights).

Times the Gaussian predictor (ResNet-50 encoder, depth decoder and the L = 2 Gaussian decoders, on a
320 x 448 padded input with a given depth map: the part the reference runs after UniDepth) in fp32
and bf16 at 1 and 2 threads, each configuration in its own process so that its peak RSS is its own.
Reference figure on this CPU: 1.1-1.4 s per image for the Gaussian heads.

    python benchmarks/flash3d.py [--repeats 3] [--quick]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _util  # noqa: E402


def child(threads: int, dtype: str, repeats: int, height: int, width: int) -> dict:
    import torch

    from forward3d.models.flash3d import Flash3D, Flash3DConfig

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    cfg = Flash3DConfig(height=height - 64, width=width - 64)
    model = Flash3D(cfg).eval()
    img = torch.rand(1, 3, height, width)
    depth = 1.0 + 4.0 * torch.rand(1, 1, height, width)
    K = torch.tensor([[[0.7 * width, 0, width / 2], [0, 0.7 * width, height / 2], [0, 0, 1.0]]])

    def run():
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bf16"):
            out = model(img, depth, K)
        return out

    t = _util.median_time(run, repeats=repeats, warmup=1)
    n = cfg.gaussians_per_pixel * height * width
    return {"threads": threads, "dtype": dtype, "size": f"{height}x{width}", "seconds": t,
            "gaussians_per_s": n / t, "peak_rss_mib": _util.peak_rss_mib()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--dtype", default="fp32")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--size", default="320x448", help="padded input HxW")
    ap.add_argument("--quick", action="store_true", help="fp32 at 2 threads only")
    a = ap.parse_args()
    h, w = (int(s) for s in a.size.split("x"))
    if a.child:
        print(json.dumps(child(a.threads, a.dtype, a.repeats, h, w)))
        return
    configs = [(2, "fp32")] if a.quick else [(1, "fp32"), (2, "fp32"), (1, "bf16"), (2, "bf16")]
    rows = []
    for threads, dtype in configs:
        r = _util.run_in_subprocess(__file__, ["--threads", str(threads), "--dtype", dtype, "--repeats",
                                               str(a.repeats), "--size", a.size])
        r.setdefault("threads", threads)
        r.setdefault("dtype", dtype)
        rows.append(r)
        print(f"  threads={threads} {dtype}: {r.get('seconds', r.get('error'))}", flush=True)
    _util.print_table(rows, ["threads", "dtype", "size", "seconds", "gaussians_per_s", "peak_rss_mib", "error"])
    path = _util.write_json("flash3d.json", {"benchmark": "flash3d_forward", "reference_seconds": [1.1, 1.4],
                                             "machine": _util.machine_info(), "results": rows})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
