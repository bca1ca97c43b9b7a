"""``forward3d data prepare|check|list|mix``: dataset preprocessing, integrity checks, the registry, mixtures.

The logic lives in :mod:`forward3d.data.prepare` and :mod:`forward3d.data.mix`; the options of
``prepare`` are built from :class:`forward3d.data.prepare.PrepareConfig` (one place for defaults).
"""

from __future__ import annotations

import argparse
import dataclasses
import typing

_HELP = {
    "scenes": "only these scene ids",
    "frame_skip": "ScanNet: export every k-th frame",
    "iphone_every": "ScanNet++: decode every k-th iPhone video frame (10 = the COLMAP frames)",
    "resize": "write colour at the depth size, depth at the colour size, or neither",
    "dslr": "ScanNet++: undistort the DSLR images / masks / rendered depth",
    "iphone": "ScanNet++: decode the iPhone video and depth.bin",
    "render_dir": "ScanNet++: the toolbox's render output folder (default RAW/data/<scene>/dslr/render_depth)",
    "overwrite": "redo scenes that are already finished",
    "verify": "check the files of finished scenes before skipping them",
    "jpeg_quality": "quality of re-encoded JPEGs",
    "progress": "progress bars",
}


def _add_prepare(p: argparse.ArgumentParser) -> None:
    from forward3d.data.prepare import PREPARERS, PrepareConfig

    p.add_argument("dataset", choices=sorted(PREPARERS), help="dataset to preprocess")
    p.add_argument("raw", help="the downloaded dataset folder")
    p.add_argument("out", help="output folder (resumable; holds forward3d_index.json)")
    hints = typing.get_type_hints(PrepareConfig)
    for f in dataclasses.fields(PrepareConfig):
        if f.name in ("dataset", "raw", "out"):
            continue
        tp, flag = hints[f.name], "--" + f.name.replace("_", "-")
        kw: dict = {"default": f.default, "dest": f.name, "help": f"{_HELP.get(f.name, f.name)} (default {f.default!r})"}
        if tp is bool:
            p.add_argument(flag, action=argparse.BooleanOptionalAction, **kw)
        elif typing.get_origin(tp) is typing.Literal:
            p.add_argument(flag, choices=typing.get_args(tp), **kw)
        elif typing.get_origin(tp) is tuple:
            p.add_argument(flag, nargs="+", **{**kw, "default": list(f.default)})
        else:
            p.add_argument(flag, type=tp, **kw)


def _run_prepare(args: argparse.Namespace) -> int:
    from forward3d.data.prepare import PrepareConfig, prepare

    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(PrepareConfig)}
    values["scenes"] = tuple(values["scenes"])
    report = prepare(PrepareConfig(**values))
    print(report.summary())
    return 1 if report.failed else 0


def _add_check(p: argparse.ArgumentParser) -> None:
    p.add_argument("out", help="a folder written by 'forward3d data prepare'")
    p.add_argument("--quick", action="store_true", help="compare file sizes only (no SHA-256)")
    p.add_argument("--decode", action="store_true", help="also decode every image and JSON file")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _run_check(args: argparse.Namespace) -> int:
    from forward3d.data.prepare import check

    report = check(args.out, checksums=not args.quick, decode=args.decode, progress=not args.no_progress)
    print(report.summary())
    return 0 if report.ok else 1


def _add_list(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", nargs="?", help="show the config keys of this dataset")


def _run_list(args: argparse.Namespace) -> int:
    from forward3d.data.mix import config_keys, type_name
    from forward3d.data.sequence import ALIASES, dataset_names, get_dataset_class

    if args.name:
        cls = get_dataset_class(args.name)
        defaults = {f.name: f.default for f in dataclasses.fields(cls.config_class)}
        print(f"{cls.name} ({cls.__name__}): {(cls.__doc__ or '').strip().splitlines()[0]}")
        for key, tp in config_keys(cls).items():
            print(f"  {key} = {defaults[key]!r}  ({type_name(tp)})")
        return 0
    for name in dataset_names():
        aliases = sorted(a for a, n in ALIASES.items() if n == name)
        print(f"{name}" + (f"  (also: {', '.join(aliases)})" if aliases else ""))
    return 0


def _add_mix(p: argparse.ArgumentParser) -> None:
    p.add_argument("mixture", help="a mixture string, e.g. \"1000 @ ScanNetpp(root='data/scannetpp', num_views=11)\"")
    p.add_argument("--build", action="store_true", help="also open the datasets and print their sizes")


def _run_mix(args: argparse.Namespace) -> int:
    from forward3d.data.mix import build_mixture, parse_mixture

    for t in parse_mixture(args.mixture):
        size = "all" if t.size is None else t.size
        print(f"{size} @ {t.dataset.name}({', '.join(f'{k}={v!r}' for k, v in t.kwargs.items())})")
    if args.build:
        mix = build_mixture(args.mixture)
        for (n, ds), size in zip(mix.terms, mix.sizes):
            print(f"  {ds!r}: {size} samples per epoch")
        print(f"total: {len(mix)} samples per epoch")
    return 0


_COMMANDS = {
    "prepare": ("preprocess a downloaded dataset (resumable, checksummed)", _add_prepare, _run_prepare),
    "check": ("report missing / corrupt files of a prepared folder", _add_check, _run_check),
    "list": ("list the registered datasets (or one dataset's config keys)", _add_list, _run_list),
    "mix": ("check a dataset-mixture string", _add_mix, _run_mix),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    for name, (help_, add, run_) in _COMMANDS.items():
        p = sub.add_parser(name, help=help_, description=help_)
        add(p)
        p.set_defaults(_data_run=run_)


def run(args: argparse.Namespace) -> int:
    fn = getattr(args, "_data_run", None)
    if fn is None:
        raise ValueError(f"expected an action: {', '.join(_COMMANDS)}")
    return int(fn(args) or 0)
