"""Spann3R benchmark: per-frame time of the FULL-size network and peak RSS vs sequence length.

Part ``model``: the official architecture (``SPANN3R_FULL``, 658.7M parameters, random weights) at
224 x 224 on the CPU, one streaming step per frame (encode the new frame, memory read, both decoder
stacks, both DPT heads, keys, value encoder, memory write), for fp32, bf16 autocast (fp32 weights)
and bf16 weights, with an almost empty memory (2 frames) and a full one (4000 + 5 x 196 slots, the
eval cap); plus the per-component split of one fp32 step. Each dtype runs in its own subprocess.

Part ``rss``: the whole streaming ``spann3r`` back-end (crop, model, cameras, spool, fused cloud) over a
synthetic 80 x 64 video of 200 and of 2,000 frames, each in its own subprocess, with the fixture's
SMALL random-weight network (``../shared/fixtures/spann3r``; the full-size model would take hours
for 2,000 frames on this CPU; its memory is forced to fill and prune: every write kept, cap 150 +
2 x 20 slots) and with the ground-truth oracle. Target: peak RSS at 2,000 frames
<= 1.1 x at 200 frames.

    python benchmarks/spann3r.py                       # both parts, 2 threads (~25 min on 2 cores)
    python benchmarks/spann3r.py --part model --steps 2
    python benchmarks/spann3r.py --part rss --frames 200 2000

Prints tables and writes ``benchmarks/results/spann3r.json``. Timings on a shared machine are noisy:
the load average is recorded with each run.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import _util  # noqa: E402

FIXTURE = ROOT.parent / "shared" / "fixtures" / "spann3r"
DTYPES = ("fp32", "bf16_autocast", "bf16_weights")


def _median(xs: list[float]) -> float:
    xs = sorted(xs)
    return xs[len(xs) // 2] if len(xs) % 2 else 0.5 * (xs[len(xs) // 2 - 1] + xs[len(xs) // 2])


# ---------------------------------------------------------------------------------------- model part
def child_model(dtype: str, threads: int, steps: int) -> dict:
    import torch

    from forward3d.models.spann3r import SPANN3R_FULL, Spann3R

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    t0 = time.perf_counter()
    model = Spann3R(SPANN3R_FULL()).eval()
    if dtype == "bf16_weights":
        model = model.to(torch.bfloat16)
    build_s = time.perf_counter() - t0
    ctx = torch.autocast("cpu", dtype=torch.bfloat16) if dtype == "bf16_autocast" else torch.autocast("cpu", enabled=False)
    g = torch.Generator().manual_seed(1)
    frames = [torch.rand(1, 3, 224, 224, generator=g) * 2 - 1 for _ in range(steps + 3)]
    out: dict = {"dtype": dtype, "threads": threads, "build_s": build_s,
                 "params_m": sum(p.numel() for p in model.parameters()) / 1e6}

    def run_steps(sess, imgs) -> list[float]:
        times = []
        for img in imgs:
            t = time.perf_counter()
            sess.push(img)
            times.append(time.perf_counter() - t)
        return times

    with torch.inference_mode(), ctx:
        sess = model.session()
        sess.push(frames[0])
        first = run_steps(sess, frames[1:2])  # step 0: the pair encoded jointly, no memory read
        run_steps(sess, frames[2:3])  # warm-up (first memory read)
        times = run_steps(sess, frames[3:])
        out["step0_s"] = first[0]
        out["s_per_frame_empty_memory"] = _median(times)
        out["s_per_frame_empty_memory_all"] = times
        # a full memory: 4000 long-term + 5 working-memory frames of 196 tokens (the eval cap)
        mem = sess.memory
        S, C = 4000 + 5 * 196, 1024
        mem.keys = torch.randn(1, S, C, generator=g)
        mem.values = torch.randn(1, S, C, generator=g)
        mem.attn = torch.rand(1, S, 1, generator=g)
        mem.count = torch.full((1, S, 1), 20.0)
        mem.wm, mem.lm = 5, 4000 - 196  # the next write appends 196 slots and prunes back to 4000
        times = run_steps(sess, frames[3:])
        out["s_per_frame_full_memory"] = _median(times)
        out["s_per_frame_full_memory_all"] = times
        out["memory_slots_after"] = mem.size
        out["memory_mib"] = mem.nbytes() / 2**20
        if dtype == "fp32":
            out["components_s"] = components(model, frames[2])
    out["peak_rss_mib"] = _util.peak_rss_mib()
    out["loadavg"] = os.getloadavg()[0]
    return out


def components(model, img) -> dict:
    """One fp32 step split into its parts (memory of 4000 + 980 slots)."""
    import torch

    def timed(fn, reps: int = 2):
        fn()
        ts = []
        for _ in range(reps):
            t = time.perf_counter()
            r = fn()
            ts.append(time.perf_counter() - t)
        return _median(ts), r

    g = torch.Generator().manual_seed(2)
    res = {}
    res["encode"], feat = timed(lambda: model.encode(img))
    mem = model.new_memory()
    k = torch.randn(1, 4980, 1024, generator=g)
    mem.keys, mem.values = k, torch.randn(1, 4980, 1024, generator=g)
    mem.attn, mem.count = torch.zeros(1, 4980, 1), torch.full((1, 4980, 1), 20.0)
    q = torch.randn(1, 196, 1024, generator=g)
    res["memory_read_4980_slots"], fuse = timed(lambda: mem.read(q))
    res["decode_both_stacks"], (d1, d2) = timed(lambda: model.dust3r.decode(fuse, feat, (14, 14)))
    res["dpt_heads_both"], (p1, _) = timed(lambda: (model.dust3r.head(1, d1, (224, 224)), model.dust3r.head(2, d2, (224, 224))))
    res["keys_both"], _ = timed(lambda: (model.key(1, feat, d1[-1]), model.key(2, feat, d2[-1])))
    res["value_encoder"], _ = timed(lambda: model.value(p1[0]))
    return res


# ---------------------------------------------------------------------------------------- rss part
def child_rss(models: str, frames: int, threads: int) -> dict:
    import torch

    from forward3d.data.synthetic import SyntheticConfig, SyntheticScene
    from forward3d.pipelines.spann3r import Spann3RPipeline, Spann3RPipelineConfig

    torch.set_num_threads(threads)
    scene = SyntheticScene(SyntheticConfig(seed=0, num_frames=frames, width=80, height=64, trajectory="handheld",
                                           speed=0.5))
    # sim_thresh=1.0 (never skip a write): the random small model, fed similar frames, would skip
    # almost every write; forcing every write makes the memory reach its cap and prune all along
    cfg = Spann3RPipelineConfig(num_points=200_000, image_size=(64, 80), long_mem_size=150, work_mem_size=2,
                                attn_thresh=5e-4, sim_thresh=1.0)
    if models == "oracle":
        from forward3d.pipelines.oracle import OracleSpann3R

        pipe = Spann3RPipeline(cfg, models=OracleSpann3R(scene, image_size=(64, 80), cache_frames=8))
    else:  # the back-end loads the weights itself, as `forward3d recon --backend spann3r --weights ...` does
        import tempfile

        from forward3d.models.spann3r import Spann3RConfig

        tmp = Path(tempfile.mkdtemp(prefix="forward3d-bench-"))
        (tmp / "config.json").write_text(json.dumps(
            Spann3RConfig.from_json(FIXTURE / "config.json", section="small").to_dict()))
        pipe = Spann3RPipeline(cfg, weights=str(FIXTURE / "weights.safetensors"), model_config=str(tmp / "config.json"),
                               device="cpu")
    t0 = time.perf_counter()
    count = 0
    for _ in pipe.stream(scene.frames(), progress=False):
        count += 1
    seconds = time.perf_counter() - t0
    rec = pipe.result
    md = rec.metadata
    return {"models": models, "frames": frames, "updates": count, "seconds": seconds, "fps": frames / seconds,
            "max_frames_held": md["max_frames_held"], "max_memory_slots": max(x or 0 for x in md["memory_size"]),
            "prunes": len(md["memory_prunes"]), "points": len(rec.points), "peak_rss_mib": _util.peak_rss_mib(),
            "loadavg": os.getloadavg()[0]}


# ---------------------------------------------------------------------------------------- main
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--child", choices=("model", "rss"), help=argparse.SUPPRESS)
    ap.add_argument("--part", choices=("model", "rss", "all"), default="all")
    ap.add_argument("--dtypes", nargs="+", default=list(DTYPES), choices=DTYPES)
    ap.add_argument("--steps", type=int, default=4, help="timed steps per configuration (model part)")
    ap.add_argument("--models", nargs="+", default=["small", "oracle"], choices=("small", "oracle"))
    ap.add_argument("--frames", nargs="+", type=int, default=[200, 2000])
    ap.add_argument("--threads", type=int, default=2, help="threads of the model part")
    ap.add_argument("--rss-threads", type=int, default=1,
                    help="threads of the rss part (the small model's tiny tensors: 1 thread is fastest)")
    ap.add_argument("--out", default="spann3r.json")
    args = ap.parse_args()
    if args.child == "model":
        print(json.dumps(child_model(args.dtypes[0], args.threads, args.steps)))
        return
    if args.child == "rss":
        print(json.dumps(child_rss(args.models[0], args.frames[0], args.threads)))
        return
    result: dict = {"machine": _util.machine_info(), "threads": args.threads, "rss_threads": args.rss_threads}
    if args.part in ("model", "all"):
        rows = []
        for dt in args.dtypes:
            r = _util.run_in_subprocess(__file__, ["model", "--dtypes", dt, "--threads", str(args.threads),
                                                   "--steps", str(args.steps)])  # runs "--child model ..."
            rows.append({"dtype": dt, **r})
            print(json.dumps(rows[-1]), flush=True)
        print("\nFull-size Spann3R, 224 x 224, CPU, %d threads, seconds per frame (median of %d steps)"
              % (args.threads, args.steps))
        _util.print_table(rows, ["dtype", "step0_s", "s_per_frame_empty_memory", "s_per_frame_full_memory",
                                 "peak_rss_mib", "loadavg"])
        comp = next((r.get("components_s") for r in rows if r.get("components_s")), None)
        if comp:
            print("\nfp32 step split (seconds):")
            _util.print_table([{"part": k, "seconds": v} for k, v in comp.items()], ["part", "seconds"])
        result["model"] = rows
    if args.part in ("rss", "all"):
        rows = []
        for m in args.models:
            for n in args.frames:
                r = _util.run_in_subprocess(__file__, ["rss", "--models", m, "--frames", str(n),
                                                       "--threads", str(args.rss_threads)])
                rows.append({"models": m, "frames": n, **r})
                print(json.dumps(rows[-1]), flush=True)
        lo, hi = min(args.frames), max(args.frames)
        for m in args.models:
            rss = {r["frames"]: r.get("peak_rss_mib") for r in rows if r["models"] == m}
            if rss.get(lo) and rss.get(hi):
                for r in rows:
                    if r["models"] == m and r["frames"] == hi:
                        r["rss_ratio"] = rss[hi] / rss[lo]
                        r["pass_1.1x"] = r["rss_ratio"] <= 1.1
        print("\nStreaming pipeline, 80 x 64 synthetic RGB-D video, %d thread(s), peak RSS vs sequence length"
              % args.rss_threads)
        _util.print_table(rows, ["models", "frames", "seconds", "fps", "max_frames_held", "max_memory_slots", "prunes",
                                 "peak_rss_mib", "rss_ratio", "pass_1.1x"])
        result["rss"] = rows
    path = _util.write_json(args.out, result)
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
