"""SLAM3R online mode: peak memory must not grow with the number of frames.

Runs the online pipeline over a synthetic sequence of 200 and of 2,000 frames (80 x 64, the small
model's size), each in its own subprocess so that its peak RSS is its own, with the ground-truth
oracle and/or the small random-weight networks (``../shared/fixtures/slam3r/small``). Per-frame
results go to a spool folder on disk; the device keeps the buffering set and the last frames only.
Target: peak RSS at 2,000 frames <= 1.1 x peak RSS at 200 frames.

    python benchmarks/slam3r_online.py [--models oracle small] [--frames 200 2000] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _util  # noqa: E402

SMALL = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures" / "slam3r" / "small"


def child(models: str, frames: int, threads: int) -> dict:
    import torch

    from forward3d.data.synthetic import SyntheticConfig, SyntheticScene
    from forward3d.pipelines.slam3r import SLAM3RBackend, SLAM3RConfig

    torch.set_num_threads(threads)
    scene = SyntheticScene(SyntheticConfig(seed=0, num_frames=frames, width=80, height=64, trajectory="handheld",
                                           speed=0.5))
    if models == "oracle":
        from forward3d.pipelines.oracle import OracleSLAM3R

        net = OracleSLAM3R(scene, image_size=(64, 80), cache_frames=192)
    else:
        from forward3d.models.slam3r.engine import SLAM3REngine

        net = SLAM3REngine.from_pretrained(SMALL / "i2p_weights.safetensors", SMALL / "l2w_weights.safetensors",
                                           i2p_config=SMALL / "i2p_config.json", l2w_config=SMALL / "l2w_config.json")
    cfg = SLAM3RConfig(online=True, num_points_save=200_000)
    pipe = SLAM3RBackend(cfg, models=net)
    t0 = time.perf_counter()
    count = 0
    for _ in pipe.stream(scene.frames(), progress=False):
        count += 1
    seconds = time.perf_counter() - t0
    rec = pipe.result
    return {"models": models, "frames": frames, "updates": count, "seconds": seconds, "fps": frames / seconds,
            "keyframe_stride": rec.metadata["keyframe_stride"], "max_frames_held": rec.metadata["max_frames_held"],
            "points": len(rec.points), "peak_rss_mib": _util.peak_rss_mib()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--models", nargs="+", default=["oracle", "small"], choices=("oracle", "small"))
    ap.add_argument("--frames", nargs="+", type=int, default=[200, 2000])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(_util.RESULTS / "slam3r_online.json"))
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.models[0], args.frames[0], args.threads)))
        return
    rows = []
    for m in args.models:
        for n in args.frames:
            r = _util.run_in_subprocess(__file__, ["--models", m, "--frames", str(n), "--threads", str(args.threads)])
            rows.append({"models": m, "frames": n, **r})
            print(json.dumps(rows[-1]), flush=True)
    for m in args.models:
        rss = {r["frames"]: r.get("peak_rss_mib") for r in rows if r["models"] == m}
        lo, hi = min(args.frames), max(args.frames)
        if rss.get(lo) and rss.get(hi):
            ratio = rss[hi] / rss[lo]
            for r in rows:
                if r["models"] == m and r["frames"] == hi:
                    r["rss_ratio_vs_%d" % lo] = ratio
                    r["pass_1.1x"] = ratio <= 1.1
    _util.print_table(rows, ["models", "frames", "seconds", "fps", "keyframe_stride", "max_frames_held", "peak_rss_mib",
                             "rss_ratio_vs_%d" % min(args.frames), "pass_1.1x"])
    RESULT = {"machine": _util.machine_info(), "rows": rows}
    print(f"wrote {_util.write_json(Path(args.out), RESULT)}")


if __name__ == "__main__":
    main()
