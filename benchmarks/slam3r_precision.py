"""SLAM3R bf16 precision at FULL size: scaled point error of bf16 autocast against fp32, per part.

Models: the published I2P / L2W configs (ViT-L encoder 24 x 1024, decoders 12 x 768, 224 x 224) with
the reference (CroCo) init: xavier-uniform Linear / Conv weights, zero biases, unit LayerNorms.
Inputs: real images (``--images``, default the fern frames of /work/shared/data), short side to 224
and centre crop, as the pipeline prepares them. ``--qk-gain g`` multiplies the q and k projection
weights by ``g`` (attention logits x g^2) to emulate the peaky attention of trained ViTs (random
weights give logits of std ~1; the activation statistics are printed). ``--point-range r`` (default 5)
scales the heads' xyz outputs so that the fp32 point maps span max / median norm = r, as real scenes do
(2-5 for the HoloLens depth maps in /work/shared/data): random init gives ~13 (reduced size) and ~16
(full size, 4 views), far-out points whose bf16 error dominates a worst-case measure.

Errors (``forward3d.models.slam3r.precision.point_error``): per point ``|p_bf16 - p_fp32| / median
|p_fp32|``, worst and median over all points of a call; ``legacy`` = max per coordinate of
``|x - x_ref| / (1 + |x_ref|)`` (the parity tests' measure). Calls, as the pipeline makes them:
I2P on a window of ``--views`` views from the cached tokens that encode() made in the same precision,
L2W with ``--scene`` scene frames + ``--keyframes`` keyframes (tokens from that precision's encode,
point maps = the fp32 I2P output, the same for every variant).

Variants: the policy (all parts fp32), each part switched to bf16 alone (leave-one-out), all bf16
(plain autocast), each part alone in fp32 on top of all-bf16, and the code before issue 17 (plain
autocast with fp32 heads). Prints the table, the targets (worst <= 0.05) with PASS/FAIL and the timing of fp32 vs
the policy (encode + I2P + L2W). Writes ``benchmarks/results/slam3r_precision.json``.

    python benchmarks/slam3r_precision.py --views 4 --scene 2 --keyframes 2 --variants "policy;all-bf16"
    python benchmarks/slam3r_precision.py --size reduced --threads 1     # every variant, ~3 min
    # one full-size bf16 variant at 4 views: ~4 min CPU on this AVX2 box (bf16 GEMMs are 5x slower than fp32)
    python benchmarks/slam3r_precision.py --variants "policy;all-bf16" --views 11 --scene 10 --keyframes 1
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from _bf16_study import (POINT_RANGE, REDUCED, WORST_TARGET, activation_stats, build_models, compare,  # noqa: E402
                         head_gain_for_range, run_calls, scale_heads, variants)
from _util import write_json  # noqa: E402
from forward3d.models.slam3r import SLAM3REngine  # noqa: E402
from forward3d.pipelines.slam3r.common import prepare_frame  # noqa: E402
from forward3d.io.sources import open_frames  # noqa: E402

logger = logging.getLogger("benchmarks.slam3r_precision")

IMAGES = Path("/work/shared/data/fern/images_8")


def load_images(folder: Path, n: int, size: tuple[int, int]) -> torch.Tensor:
    """The first ``n`` frames of ``folder``, prepared like the pipeline: [n, 3, H, W] in [-1, 1]."""
    frames = list(open_frames(folder, max_frames=n))
    if len(frames) < n:
        raise ValueError(f"{folder}: need {n} images, found {len(frames)}")
    return torch.stack([prepare_frame(f, size).image for f in frames])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=Path, default=IMAGES)
    ap.add_argument("--size", choices=["full", "reduced"], default="full",
                    help="full: the published configs; reduced: the tests' config (encoder 6 x 256, decoders 4 x 192, 96 x 128)")
    ap.add_argument("--views", type=int, default=6, help="I2P window size (reference view: the middle one)")
    ap.add_argument("--scene", type=int, default=4, help="L2W scene frames (the first views)")
    ap.add_argument("--keyframes", type=int, default=2, help="L2W keyframes (the next views)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--qk-gain", type=float, default=1.0, help="q/k projection gain (attention logits x gain^2)")
    ap.add_argument("--point-range", type=float, default=POINT_RANGE,
                    help="scale the heads' xyz outputs so that max / median point norm (fp32, I2P) is this "
                         "(real scenes: 2-5; 0: keep the raw random-init range)")
    ap.add_argument("--variants", type=lambda s: [v.strip() for v in s.split(";")], default=None,
                    help="';'-separated names (default: all; 'policy' and 'all-bf16' are the short run)")
    ap.add_argument("--out", default="slam3r_precision.json",
                    help="results JSON: a file name goes under benchmarks/results/, a path is used as given")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.scene + args.keyframes > args.views:
        ap.error("--scene + --keyframes must be <= --views")
    torch.set_num_threads(args.threads)
    all_v = variants()
    names = args.variants or list(all_v)
    unknown = [n for n in names if n not in all_v]
    if unknown:
        ap.error(f"unknown variants {unknown}; known: {list(all_v)}")
    i2p, l2w = build_models(args.seed, args.qk_gain, REDUCED() if args.size == "reduced" else None)
    images = load_images(args.images, args.views, i2p.config.img_size)
    fp32 = SLAM3REngine(i2p, l2w)
    ref = run_calls(fp32, images, args.views, args.scene, args.keyframes)
    raw_range = float((n := ref["pts"].norm(dim=-1)).max() / n.median())
    gain = 1.0
    if args.point_range > 0:
        gain = head_gain_for_range(ref["pts"], args.point_range)
        for m in (i2p, l2w):
            scale_heads(m, gain)
        ref = run_calls(fp32, images, args.views, args.scene, args.keyframes)
    logger.info("point range (max / median norm) of the random-init heads %.1f; head xyz gain %.3f", raw_range, gain)
    stats = activation_stats(i2p, ref["tok"], ref["pts"])
    logger.info("fp32: %s  activations %s", {k: round(v, 2) for k, v in ref["seconds"].items()},
                {k: round(v, 3) for k, v in stats.items()})
    rows = []
    for name in names:
        eng = SLAM3REngine(i2p, l2w, dtype=torch.bfloat16, precision=all_v[name])
        out = run_calls(eng, images, args.views, args.scene, args.keyframes, ref["pts"])
        row = {"variant": name, **compare(out, ref), "seconds": out["seconds"]}
        rows.append(row)
        logger.info("%-34s worst %.4f median %.5f (I2P %.4f / L2W %.4f)  tokens rel %.2e  conf %.3f  %s", name,
                    row["worst"], row["median"], row["i2p"]["worst"], row["l2w"]["worst"], row["tokens_rel_l2"],
                    row["conf_max_rel"], {k: round(v, 2) for k, v in out["seconds"].items()})
    print(f"\nbf16 autocast vs fp32, {args.size} size {i2p.config.img_size}, I2P {args.views} views, L2W {args.scene}+"
          f"{args.keyframes}, qk gain {args.qk_gain}, head gain {gain:.3f} (point range {raw_range:.1f} -> "
          f"{args.point_range or raw_range:.1f}), {args.threads} threads")
    hdr = (f"{'variant':<34} {'I2P worst':>9} {'I2P med':>8} {'L2W worst':>9} {'L2W med':>8} {'legacy':>7} "
           f"{'tok rel':>8} {'conf':>6} {'s':>6}  target worst <= {WORST_TARGET}")
    print(hdr + "\n" + "-" * len(hdr))
    for r in rows:
        s = sum(r["seconds"].values())
        legacy = max(r["i2p"]["legacy"], r["l2w"]["legacy"])
        print(f"{r['variant']:<34} {r['i2p']['worst']:>9.4f} {r['i2p']['median']:>8.5f} {r['l2w']['worst']:>9.4f} "
              f"{r['l2w']['median']:>8.5f} {legacy:>7.4f} {r['tokens_rel_l2']:>8.1e} {r['conf_max_rel']:>6.3f} {s:>6.2f}  "
              f"{'PASS' if r['pass'] else 'FAIL'}")
    print(f"{'fp32':<34} {'':>9} {'':>8} {'':>9} {'':>8} {'':>7} {'':>8} {'':>6} {sum(ref['seconds'].values()):>6.2f}")
    result = {"meta": {"torch": torch.__version__, "threads": args.threads, "load_avg": os.getloadavg(),
                       "size": args.size, "args": {k: str(v) for k, v in vars(args).items()}, "target_worst": WORST_TARGET,
                       "activations_fp32": stats, "head_gain": gain,
                       "raw_point_range": raw_range, "fp32_seconds": ref["seconds"]}, "rows": rows}
    logger.info("wrote %s", write_json(args.out, result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
