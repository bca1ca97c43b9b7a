"""``forward3d train MODEL ...``: train a model (``flash3d``, ``slam3r``; more models register in ``TRAINERS``).

Every option comes from the trainer's config dataclass (:class:`forward3d.train.flash3d.Flash3DTrainerConfig`).
Launch on several GPUs/processes with torchrun, e.g.
``torchrun --nproc_per_node 4 -m forward3d train flash3d --data RE10K --batch-size 16`` (16 is global).
"""

from __future__ import annotations

import argparse
import logging
from typing import Any, Callable

from forward3d.cli.options import add_config_arguments, config_from_args
from forward3d.config import import_reference

log = logging.getLogger(__name__)


def _report_flash3d(result: Any) -> None:
    if result.checkpoint is not None:
        tail = f", final loss {result.losses[-1]:.4f}" if result.losses else ""
        print(f"flash3d: step {result.step}{tail}; checkpoint {result.checkpoint} (resume: {result.resume_checkpoint})")


def _report_slam3r(result: Any) -> None:
    if result.checkpoint is not None:
        tail = f", final loss {result.losses[-1]:.4f}" if result.losses else ""
        best = f", best test loss {result.best:.4f}" if result.best is not None else ""
        print(f"slam3r: step {result.step}{tail}{best}; checkpoint {result.checkpoint}")


# model name -> (help, "module:ConfigClass", "module:train_function", report, required fields)
TRAINERS: dict[str, tuple[str, str, str, Callable[[Any], None], tuple[str, ...]]] = {
    "flash3d": ("Flash3D single image -> 3D Gaussians on RealEstate10K",
                "forward3d.train.flash3d:Flash3DTrainerConfig", "forward3d.train.flash3d:train_flash3d",
                _report_flash3d, ("data",)),
    "slam3r": ("SLAM3R I2P / L2W (RGB or RGB-D input) on dataset mixtures",
               "forward3d.train.slam3r:SLAM3RTrainerConfig", "forward3d.train.slam3r:train_slam3r",
               _report_slam3r, ("train_dataset",)),
}


def add_arguments(parser: argparse.ArgumentParser, argv: list[str] | None = None) -> None:
    sub = parser.add_subparsers(dest="train_model", metavar="MODEL", required=True)
    argv = argv or []
    for name, (help_, cfg_ref, _, _, required) in TRAINERS.items():
        p = sub.add_parser(name, help=help_, description=help_)
        if name in argv:  # only the chosen trainer's module is imported
            cls = import_reference(cfg_ref)
            dests = add_config_arguments(p, cls)
            p.set_defaults(_train_dests=dests, _train_required=required)
        p.set_defaults(_train_name=name)


def run(args: argparse.Namespace) -> int:
    name = getattr(args, "_train_name", None)
    if name is None:
        raise ValueError(f"expected a model to train: {', '.join(TRAINERS)}")
    _, cfg_ref, fn_ref, report, required = TRAINERS[name]
    cls = import_reference(cfg_ref)
    for field_name in required:
        if not getattr(args, field_name, None):
            raise ValueError(f"forward3d train {name}: --{field_name.replace('_', '-')} is required")
    cfg = config_from_args(cls, args, args._train_dests)
    report(import_reference(fn_ref)(cfg))
    return 0
