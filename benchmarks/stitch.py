"""Single image -> extrapolated scene (Invisible Stitch): geometry on the synthetic room, the
extrapolation protocol, and a real photo with the weight-free fallbacks.

Measures, on CPU at 1 thread:
- synthetic room (GT depth as the "monocular" input, ground-truth inpainting): median |depth error| of
  the final Gaussians at held-out cameras (stage / 360), coverage, seam step vs the true surface's;
- the extrapolation protocol (frame i -> i + 10 of the synthetic orbit, several pairs): MAE on the
  uncovered pixels for an oracle completion, the aligned fallback fed a wrong-scale estimate, and that
  estimate unaligned (no sparse input);
- hololens_000 frame 00003 with its depth, Telea + aligned extension: wall time per mode;
and writes docs/images/stitch_hololens.png (input | generated views | renders of the fitted scene).

    python benchmarks/stitch.py [--size 128]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _util  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def synthetic(mode: str, width: int, height: int, fit_steps: int) -> dict:
    from forward3d.data.synthetic import SyntheticScene
    from forward3d.data.synthetic_camera import look_at
    from forward3d.models.depth_completion import AlignedCompleter
    from forward3d.pipelines.oracle import OracleView
    from forward3d.pipelines.stitch import render_rgbd, stitch_scene, yaw_c2w
    from forward3d.types import Intrinsics

    scene = SyntheticScene(num_frames=1, num_boxes=4)
    K = Intrinsics.from_fov(width, height, 70.0).K
    c0 = look_at(np.array([[0.0, 1.5, 0.0]]), np.array([[0.0, 1.5, 1.0]]))[0]
    oracle = OracleView(scene, c0, K, width, height)
    image, depth = oracle.render(np.eye(4))
    t0 = time.perf_counter()
    res = stitch_scene(image, K, depth, AlignedCompleter(oracle), oracle, mode=mode, fit_steps=fit_steps,
                       progress=False)
    wall = time.perf_counter() - t0
    held = [12.5, -12.5] if mode == "stage" else [12.5, -62.5, 112.5, -150.0, 180.0]
    per = {}
    for yaw in held:
        c2w = yaw_c2w(yaw, pitch_deg=3.0)
        _, alpha, d = render_rgbd(res.gaussians, c2w, K, width, height)
        _, gt = oracle.render(c2w)
        cov = (alpha > 0.5) & (gt > 0)
        per[str(yaw)] = {"median_abs_m": float(np.median(np.abs(d - gt)[cov])), "coverage": float(cov.mean())}
    return {"mode": mode, "size": [width, height], "views": len(res.views), "gaussians": len(res.gaussians),
            "fit_steps": fit_steps, "wall_s": round(wall, 2), "held_out": per}


def protocol(pairs: int = 5) -> dict:
    from forward3d.data.synthetic import SyntheticScene
    from forward3d.eval.extrapolation import evaluate_extrapolation_pair
    from forward3d.models.depth_completion import AlignedCompleter
    from forward3d.pipelines.oracle import OracleView

    scene = SyntheticScene(num_frames=10 + 5 * pairs, width=64, height=48, num_boxes=4)
    exact = OracleView(scene, np.eye(4), scene.K, 64, 48)
    wrong = OracleView(scene, np.eye(4), scene.K, 64, 48, depth_scale=1.3, depth_shift=0.2)
    rows = {"oracle completion (sparse)": [], "aligned wrong-scale estimate (sparse)": [],
            "wrong-scale estimate, no sparse input": []}
    for p in range(pairs):
        fi, fj = scene.frame(5 * p), scene.frame(5 * p + 10)
        args = (fj.image, fj.depth, fi.depth, fi.K, fi.c2w, fj.K, fj.c2w)
        rows["oracle completion (sparse)"].append(evaluate_extrapolation_pair(AlignedCompleter(exact), *args).mae)
        rows["aligned wrong-scale estimate (sparse)"].append(evaluate_extrapolation_pair(AlignedCompleter(wrong), *args).mae)
        rows["wrong-scale estimate, no sparse input"].append(
            evaluate_extrapolation_pair(AlignedCompleter(wrong), *args, use_sparse=False).mae)
    return {k: round(float(np.mean(v)), 4) for k, v in rows.items()} | {"pairs": pairs}


def real_photo(size: int, picture: Path | None) -> dict:
    from forward3d.models.depth import read_image_and_depth
    from forward3d.models.depth_completion import AlignedCompleter
    from forward3d.models.inpaint import TeleaInpainter
    from forward3d.pipelines.splat import SplatResult, render_views
    from forward3d.pipelines.stitch import resize_input, stitch_scene, yaw_c2w

    root = ROOT.parent / "shared" / "data" / "hololens_000"
    image, depth = read_image_and_depth(root / "images" / "00003.png", root / "depth" / "00003.png")
    K = np.loadtxt(root / "K.txt").reshape(3, 3)
    image, depth, K = resize_input(image, depth, K, size)
    out = {"size": list(image.shape[1::-1])}
    for mode in ("stage", "360"):
        t0 = time.perf_counter()
        res = stitch_scene(image, K, depth, AlignedCompleter(None), TeleaInpainter(), mode=mode, fit_steps=100,
                           progress=False)
        out[mode] = {"wall_s": round(time.perf_counter() - t0, 2), "gaussians": len(res.gaussians),
                     "views": len(res.views)}
        if mode == "stage" and picture is not None:
            from forward3d.io.video import write_png

            sr = SplatResult(res.gaussians, K, res.width, res.height, res.views[0].depth, "stitch")
            renders = render_views(sr, np.stack([yaw_c2w(a) for a in (-35.0, 0.0, 35.0)]))
            gen = [v.image for v in sorted(res.views, key=lambda v: v.yaw)]
            gap = np.full((image.shape[0], 4, 3), 255, np.uint8)
            top = np.concatenate(sum(([g, gap] for g in gen), [])[:-1], 1)
            bottom = np.concatenate(sum(([r, gap] for r in renders), [])[:-1], 1)
            picture.parent.mkdir(parents=True, exist_ok=True)
            write_png(picture, np.concatenate([top, np.full((4, top.shape[1], 3), 255, np.uint8), bottom], 0))
            out["picture"] = str(picture.relative_to(ROOT))
    return out


def main() -> None:
    import torch

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=160, help="long side of the real photo run")
    args = ap.parse_args()
    torch.set_num_threads(1)
    result = {
        "synthetic": [synthetic("stage", 64, 48, 100), synthetic("360", 64, 48, 100), synthetic("360", 128, 96, 100)],
        "protocol_mae_m": protocol(),
        "hololens_000": real_photo(args.size, ROOT / "docs" / "images" / "stitch_hololens.png"),
    }
    result["machine"] = _util.machine_info()
    path = _util.write_json("stitch.json", result)
    import json

    print(json.dumps(result, indent=1))
    print(f"-> {path}")


if __name__ == "__main__":
    main()
