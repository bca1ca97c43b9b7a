"""``recon --gaussians depthsplat`` on the synthetic room: held-out-view PSNR, Gaussian counts and time.

The ``oracle`` back-end (ground-truth poses and depth) on a synthetic TUM-layout orbit; context views every
``--stride`` frames, scored at the frames midway between them (never used as input):
- the depth-based predictor (no weights): feed-forward, then with 50 / 100 / 200 refinement steps;
- DepthSplat with the parity fixture's random tiny weights (``../shared/fixtures/depthsplat``): the
  pipeline's cost per window (a random network: its PSNR is not a quality number).

    python benchmarks/scene_gaussians.py [--frames 41 --size 160x120 --stride 5]

Prints a table and writes ``benchmarks/results/scene_gaussians.json``. CPU, 1 thread.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import _util  # noqa: E402


def main() -> None:
    import torch

    from forward3d.api import reconstruct
    from forward3d.data.synthetic import SyntheticScene
    from forward3d.io.sources import write_layout
    from forward3d.pipelines.scene_gaussians import SceneGaussiansConfig

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--frames", type=int, default=41)
    ap.add_argument("--size", default="160x120")
    ap.add_argument("--stride", type=int, default=5)
    ap.add_argument("--steps", type=int, nargs="+", default=[0, 50, 100, 200])
    args = ap.parse_args()
    torch.set_num_threads(1)
    w, h = (int(x) for x in args.size.split("x"))
    weights = ROOT.parent / "shared" / "fixtures" / "depthsplat" / "weights.safetensors"
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "rgbd_dataset_freiburg1_synth"
        write_layout(SyntheticScene(num_frames=args.frames, width=w, height=h, seed=0).frames(), root, "tum")
        runs = [("depth", s, None) for s in args.steps]
        if weights.is_file():
            runs.append(("depthsplat (random tiny)", 0, str(weights)))
        for name, steps, wts in runs:
            cfg = SceneGaussiansConfig(method="depthsplat", stride=args.stride, refine_steps=steps, weights=wts,
                                       short_side=0, device="cpu")
            t0 = time.perf_counter()
            run = reconstruct(root, "oracle", {}, out=Path(tmp) / f"out_{len(rows)}", previews=False, progress=False,
                              gaussians=cfg)
            total = time.perf_counter() - t0
            info = run.scene_gaussians.info
            rows.append({"predictor": name, "refine_steps": steps, "context_views": info["context_views"],
                         "windows": info["windows"], "predicted": info["num_predicted"],
                         "kept": info["num_gaussians"], "heldout_views": len(info["heldout_psnr"]),
                         "heldout_psnr_mean": info.get("heldout_psnr_mean"),
                         "heldout_psnr_min": float(np.min(info["heldout_psnr"])) if info["heldout_psnr"] else None,
                         "gaussians_s": run.recon.timings.get("gaussians_s"), "run_s": total})
    cols = list(rows[0])
    _util.print_table(rows, cols)
    path = _util.write_json("scene_gaussians.json", {"machine": _util.machine_info(), "frames": args.frames,
                                                     "size": [w, h], "stride": args.stride, "threads": 1,
                                                     "rows": rows})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
