"""Does SLAM3R training learn? A small I2P trained for a few CPU minutes on synthetic sequences vs its
untrained self, and the RGB-D (depth_channels=2) model vs the RGB one trained the same way.

Every model is scored on held-out synthetic rooms (``split='test'``: rooms disjoint from training) with
the same windows: the I2P point maps of all views (reference camera frame) are aligned to the ground
truth by a Sim(3) Umeyama fit on the valid pixels (the prediction's scale is free, as SLAM3R's), then

- ``acc_cm`` / ``comp_cm``: accuracy (pred -> GT) and completion (GT -> pred) nearest-neighbour means;
- ``pix_err_cm``: mean pixel-aligned point error;
- ``fscore_5cm``: F-score at 5 cm;

averaged over the windows. Run: ``python benchmarks/train_slam3r.py [--steps N] [--quick]``; writes
``benchmarks/results/train_slam3r.json``.

``--l2w``: an RGB I2P is trained as above, then an L2W on its frozen encoder (the first view of each
window is the scene frame, the others are registered); scored by the keyframes' world-point error in
cm (``reg_err_cm``, the scene frames fix the scale: no alignment) before and after training; writes
``benchmarks/results/train_slam3r_l2w.json``.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._util import RESULTS, machine_info, print_table, write_json  # noqa: E402
from forward3d.data.mix import build_mixture  # noqa: E402
from forward3d.data.views import collate_views  # noqa: E402
from forward3d.eval.recon import recon_metrics  # noqa: E402
from forward3d.geometry.align import umeyama  # noqa: E402
from forward3d.train.slam3r import SLAM3RTrainer, SLAM3RTrainerConfig, prepare_batch  # noqa: E402
from forward3d.train.slam3r_losses import to_frame  # noqa: E402

MODEL = dict(resolution=64, patch_size=8, enc_embed_dim=128, enc_depth=3, enc_num_heads=4, dec_embed_dim=96,
             dec_depth=2, dec_num_heads=4)
SCENE = "num_views={v}, num_scenes={n}, frames_per_scene=40, width=80, height=64, resolution=64, sample_freq=2"


def evaluate(model, windows: list, depth_channels: int) -> dict:
    """Mean metrics of ``model`` (Image2Points) over the held-out ``windows`` (ViewBatch of one sample each)."""
    rows = []
    model.eval()
    with torch.no_grad():
        for batch in windows:
            x, b = prepare_batch(batch, depth_channels)
            pts, _ = model.forward_images(x, ref_index=0)
            gt = to_frame(torch.linalg.inv(b.c2w[:, 0].double()).float(), b.pts3d_world)
            ok = b.valid[0].numpy()
            p = pts[0].numpy()[ok].astype(np.float64)
            g = gt[0].numpy()[ok].astype(np.float64)
            s, R, t = umeyama(p[::3], g[::3], with_scale=True)
            aligned = s * p @ R.T + t
            m = recon_metrics(aligned[::2], g[::2], thresholds=(0.05,), workers=1)
            rows.append({"acc_cm": 100 * m["accuracy"], "comp_cm": 100 * m["completion"],
                         "pix_err_cm": 100 * float(np.linalg.norm(aligned - g, axis=1).mean()),
                         "fscore_5cm": float(m.get("fscore@0.05", m.get("fscore_0.05", float("nan"))))})
    return {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}


def evaluate_l2w(trainer, windows: list) -> dict:
    """Mean keyframe registration error (cm) of ``trainer.model`` (Local2World) over the held-out windows."""
    errs = []
    trainer.model.eval()
    with torch.no_grad():
        for batch in windows:
            x, b = prepare_batch(batch, 0)
            rt, ref_in, st, src_in, scale = trainer.l2w_inputs(x, b)
            out = trainer.model(rt, ref_in, st, src_in, need_ref_output=False)
            R = rt.shape[1]
            gt = to_frame(torch.linalg.inv(b.c2w[:, 0].double()).float(), b.pts3d_world)[:, R:]
            ok = b.valid[:, R:]
            err = (out.src_pts * scale.view(-1, 1, 1, 1, 1) - gt).norm(dim=-1)[ok]
            errs.append(100 * float(err.mean()))
    return {"reg_err_cm": float(np.mean(errs))}


def run_l2w(args, train_mix: str, windows: list) -> dict:
    common = dict(train_dataset=train_mix, steps=args.steps, batch_size=args.batch_size, lr=1e-3, min_lr=1e-5,
                  warmup_steps=max(args.steps // 20, 1), save_every=10 ** 9, log_every=50, progress=False,
                  device="cpu", seed=0, **MODEL)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        i2p = SLAM3RTrainer(SLAM3RTrainerConfig(out=f"{tmp}/i2p", **common))
        i2p.train()
        trainer = SLAM3RTrainer(SLAM3RTrainerConfig(model="l2w", out=f"{tmp}/l2w", encoder_weights=f"{tmp}/i2p",
                                                    l2w_scene_frames=1, **common))
        before = evaluate_l2w(trainer, windows)
        trainer.model.train()
        t0 = time.perf_counter()
        r = trainer.train()
        minutes = (time.perf_counter() - t0) / 60
        after = evaluate_l2w(trainer, windows)
    rows.append({"model": "L2W untrained", **before})
    rows.append({"model": "L2W trained", **after, "train_min": minutes, "loss_first20": float(np.mean(r.losses[:20])),
                 "loss_last20": float(np.mean(r.losses[-20:]))})
    return {"rows": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=800, help="training steps per model")
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--views", type=int, default=3)
    ap.add_argument("--test-windows", type=int, default=24)
    ap.add_argument("--quick", action="store_true", help="a 40-step check of the script")
    ap.add_argument("--l2w", action="store_true", help="train and score an L2W (on a trained I2P encoder) instead")
    ap.add_argument("--out", default=str(RESULTS / "train_slam3r.json"))
    args = ap.parse_args()
    if args.quick:
        args.steps, args.test_windows = 40, 4
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(1)
    train_mix = f"{max(args.steps * args.batch_size, 64)} @ Synthetic({SCENE.format(v=args.views, n=4)}, transform=ColorJitter)"
    test_mix = f"{args.test_windows} @ Synthetic({SCENE.format(v=args.views, n=4)}, split='test', seed=777)"
    test_set = build_mixture(test_mix)
    windows = [collate_views([test_set[i]]) for i in range(len(test_set))]
    if args.l2w:
        res = run_l2w(args, train_mix, windows)
        print_table(res["rows"], ["model", "reg_err_cm", "train_min", "loss_first20", "loss_last20"])
        out = Path(args.out).with_name("train_slam3r_l2w.json")
        _write(out, {"machine": machine_info(), "model": MODEL, "steps": args.steps, "train_dataset": train_mix,
                     "test_dataset": test_mix, **res})
        return
    results: dict = {"machine": machine_info(), "model": MODEL, "steps": args.steps, "batch_size": args.batch_size,
                     "views": args.views, "train_dataset": train_mix, "test_dataset": test_mix, "rows": []}
    for name, k in (("rgb", 0), ("rgbd", 2)):
        with tempfile.TemporaryDirectory() as tmp:
            cfg = SLAM3RTrainerConfig(train_dataset=train_mix, out=tmp, steps=args.steps, batch_size=args.batch_size,
                                      depth_channels=k, lr=1e-3, min_lr=1e-5, warmup_steps=max(args.steps // 20, 1),
                                      save_every=10 ** 9, log_every=50, progress=False, device="cpu", seed=0,
                                      **MODEL)
            trainer = SLAM3RTrainer(cfg)
            before = evaluate(trainer.model, windows, k)
            trainer.model.train()
            t0 = time.perf_counter()
            r = trainer.train()
            minutes = (time.perf_counter() - t0) / 60
            after = evaluate(trainer.model, windows, k)
        first, last = float(np.mean(r.losses[:20])), float(np.mean(r.losses[-20:]))
        results["rows"].append({"model": f"I2P {name} untrained", **before})
        results["rows"].append({"model": f"I2P {name} trained", **after, "train_min": minutes,
                                "loss_first20": first, "loss_last20": last})
        print(f"{name}: {args.steps} steps in {minutes:.1f} min, loss {first:.3f} -> {last:.3f}", flush=True)
    print_table(results["rows"], ["model", "acc_cm", "comp_cm", "pix_err_cm", "fscore_5cm", "train_min",
                                  "loss_first20", "loss_last20"])
    _write(Path(args.out), results)


def _write(out: Path, results: dict) -> None:
    print(f"wrote {write_json(out, results)}")


if __name__ == "__main__":
    main()
