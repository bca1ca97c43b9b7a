"""novel-view synthesis from one image: RealEstate10K single-view protocol (PSNR/SSIM/LPIPS)

``forward3d eval nvs --protocol re10k-1view --data ROOT --split test_files.txt --weights model.pth``
renders the +5, +10 and random targets of every line from the source's Gaussians, crops 5% per side and
prints the means beside the published Flash3D numbers; ``--out`` writes everything as JSON.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

log = logging.getLogger(__name__)

PROTOCOLS = ("re10k-1view",)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    p = parser
    p.add_argument("--protocol", choices=PROTOCOLS, default="re10k-1view", help="evaluation protocol")
    p.add_argument("--data", type=Path, required=True, help="RealEstate10K root in the Flash3D layout")
    p.add_argument("--split", type=Path, required=True,
                   help="split file with lines 'seq src +5 +10 rand' (frame indices), e.g. test_files.txt")
    p.add_argument("--index-split", default="test", help="which {split}.pickle.gz / frame folder (default test)")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--weights", type=Path, help="Flash3D checkpoint (.pth / .safetensors / folder)")
    g.add_argument("--method", choices=("unproject", "oracle", "blank"),
                   help="a baseline instead of a network: unproject (one Gaussian per pixel at its depth), "
                        "oracle (ground truth) or blank")
    p.add_argument("--depth-model", default=None,
                   help="metric depth network for the source (unidepth[:SRC] | transformers:PATH); default: the "
                        "dataset's depth/ folder")
    p.add_argument("--lpips-weights", default=None, help="LPIPS-VGG weights 'VGG16.pth,LIN.pth' or one combined file")
    p.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    p.add_argument("--max-lines", type=int, default=None, help="evaluate only the first N lines")
    p.add_argument("--height", type=int, default=None, help="network height (default: the model's, else 256)")
    p.add_argument("--width", type=int, default=None, help="network width (default: the model's, else 384)")
    p.add_argument("--pad", type=int, default=None, help="padding per side (default: the model's, else 32)")
    p.add_argument("--skip-bad-lines", action="store_true",
                   help="log and skip lines whose frames cannot be read instead of stopping (listed in the JSON)")
    p.add_argument("--device", default="auto", help="cpu, cuda or auto (default)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    import torch

    from forward3d.data.re10k_dataset import RE10KEvalDataset
    from forward3d.eval import nvs

    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    if args.max_lines is not None and args.max_lines < 1:
        raise ValueError(f"--max-lines: expected >= 1, found {args.max_lines}")
    depth_model = None
    if args.depth_model:
        from forward3d.models.depth import make_depth_estimator

        depth_model = make_depth_estimator(args.depth_model, device=device)
        if not getattr(depth_model, "metric", True):
            raise ValueError(f"--depth-model {args.depth_model}: expected a metric depth network, found a relative one")
    size = (256, 384, 32)
    if args.weights is not None:
        from forward3d.models.flash3d import Flash3D

        model = Flash3D.from_pretrained(args.weights, device=device)
        c = model.config
        size = (c.height, c.width, c.pad_border)
        predictor = nvs.Flash3DPredictor(model, depth_model, device=device)
    elif args.method == "unproject":
        predictor = nvs.UnprojectPredictor(depth_model, device=device)
    elif args.method == "oracle":
        predictor = nvs.OraclePredictor()
    else:
        predictor = nvs.BlankPredictor()
    h = args.height or size[0]
    w = args.width or size[1]
    pad = size[2] if args.pad is None else args.pad
    dataset = RE10KEvalDataset(args.data, args.split, split=args.index_split, height=h, width=w, pad=pad,
                               max_lines=args.max_lines, use_dataset_depth=depth_model is None)
    lpips = None
    if args.lpips_weights:
        from forward3d.eval.lpips import load_lpips

        lpips = load_lpips(args.lpips_weights, device=device)
    else:
        log.info("LPIPS not computed: no --lpips-weights given")
    report = nvs.evaluate_nvs(dataset, predictor, lpips=lpips, progress=not args.no_progress,
                              skip_bad_lines=args.skip_bad_lines)
    print(report.table())
    if args.out is not None:
        from forward3d.io.atomic import atomic_write

        result = report.to_dict()
        result.update({"data": str(args.data), "split_file": str(args.split), "weights": str(args.weights) if
                       args.weights else None, "depth_model": args.depth_model, "image_size": [h, w], "pad": pad})
        with atomic_write(args.out, "w") as f:
            json.dump(result, f, indent=2)
            f.write("\n")
        log.info("wrote %s", args.out)
    return 0
