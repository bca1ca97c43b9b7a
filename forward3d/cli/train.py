"""``forward3d train MODEL ...``: train a model (``flash3d``; more models register in ``TRAINERS``).

Launch on several GPUs/processes with torchrun, e.g.
``torchrun --nproc_per_node 4 -m forward3d train flash3d --data RE10K --batch-size 16`` (16 is global).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Callable

log = logging.getLogger(__name__)


def _add_flash3d(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", type=Path, required=True, help="RealEstate10K root in the Flash3D layout")
    p.add_argument("--split", default="train", help="split name ({split}.pickle.gz, default train)")
    p.add_argument("--steps", type=int, default=100_000, help="optimiser steps (default 100000)")
    p.add_argument("--batch-size", type=int, default=16, help="global batch size over all processes (default 16)")
    p.add_argument("--num-layers", type=int, choices=(18, 34, 50), default=50, help="ResNet depth (default 50)")
    p.add_argument("--gaussians-per-pixel", type=int, default=2, help="Gaussian layers L (default 2)")
    p.add_argument("--weights", type=Path, default=None, help="initial Flash3D checkpoint (.pth/.safetensors/folder)")
    p.add_argument("--depth-model", default=None,
                   help="frozen metric depth network (unidepth[:SRC] | transformers:PATH); default: the dataset's depth/ folder")
    p.add_argument("--lpips-weights", default=None,
                   help="LPIPS-VGG weights 'VGG16.pth,LIN.pth' or one combined file (LPIPS term off without them)")
    p.add_argument("--lpips-after-step", type=int, default=50_000, help="LPIPS term from this step (default 50000)")
    p.add_argument("--out", type=Path, default=Path("runs/flash3d"), help="output folder (default runs/flash3d)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/resume.pth")
    p.add_argument("--bf16", action="store_true", help="bfloat16 autocast for the network (rendering stays fp32)")
    p.add_argument("--freeze-encoder", action="store_true", help="do not train the ResNet encoder")
    p.add_argument("--height", type=int, default=256, help="network image height before padding (default 256)")
    p.add_argument("--width", type=int, default=384, help="network image width before padding (default 384)")
    p.add_argument("--pad", type=int, default=32, help="zero padding per side (default 32)")
    p.add_argument("--num-targets", type=int, default=3, help="target frames per source (default 3)")
    p.add_argument("--max-frame-offset", type=int, default=30, help="targets within +-N frames (default 30)")
    p.add_argument("--lr", type=float, default=1e-4, help="Adam learning rate (default 1e-4)")
    p.add_argument("--save-every", type=int, default=5000, help="checkpoint every N steps (default 5000)")
    p.add_argument("--log-every", type=int, default=50, help="log the loss every N steps (default 50)")
    p.add_argument("--num-workers", type=int, default=0, help="data-loader worker processes (default 0)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="device (default auto)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _run_flash3d(args: argparse.Namespace) -> int:
    from forward3d.train.flash3d import Flash3DTrainerConfig, train_flash3d

    cfg = Flash3DTrainerConfig(
        data=str(args.data), split=args.split, out=str(args.out), steps=args.steps, batch_size=args.batch_size,
        num_layers=args.num_layers, gaussians_per_pixel=args.gaussians_per_pixel,
        init_weights=str(args.weights) if args.weights else None, depth_model=args.depth_model,
        lpips_weights=args.lpips_weights, lpips_after_step=args.lpips_after_step, resume=args.resume,
        precision="bf16" if args.bf16 else "fp32", freeze_encoder=args.freeze_encoder, height=args.height,
        width=args.width, pad_border=args.pad, num_targets=args.num_targets,
        max_frame_offset=args.max_frame_offset, lr=args.lr, save_every=args.save_every, log_every=args.log_every,
        num_workers=args.num_workers, seed=args.seed, device=args.device, progress=not args.no_progress,
    )
    result = train_flash3d(cfg)
    if result.checkpoint is not None:
        tail = f", final loss {result.losses[-1]:.4f}" if result.losses else ""
        print(f"flash3d: step {result.step}{tail}; checkpoint {result.checkpoint} (resume: {result.resume_checkpoint})")
    return 0


# model name -> (help, add_arguments, run)
TRAINERS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]] = {
    "flash3d": ("Flash3D single image -> 3D Gaussians on RealEstate10K", _add_flash3d, _run_flash3d),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="train_model", metavar="MODEL", required=True)
    for name, (help_, add, run_) in TRAINERS.items():
        p = sub.add_parser(name, help=help_, description=help_)
        add(p)
        p.set_defaults(_train_run=run_)


def run(args: argparse.Namespace) -> int:
    fn = getattr(args, "_train_run", None)
    if fn is None:
        raise ValueError(f"expected a model to train: {', '.join(TRAINERS)}")
    return int(fn(args) or 0)
