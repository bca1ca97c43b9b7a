"""``forward3d bench PROTOCOL --data DIR --backend NAME [backend options] --out DIR``: a back-end over a
dataset under a published protocol (:mod:`forward3d.bench`), locally or on Ray.

The options come from :class:`forward3d.bench.runner.BenchConfig` and from the chosen back-end's config
dataclass (``forward3d bench PROTOCOL --backend NAME --help`` lists them); for the novel-view protocol
``re10k-1view`` and ``re10k-2view`` they are :class:`forward3d.eval.nvs.NVSEvalConfig`'s.
"""

from __future__ import annotations

import argparse

from forward3d.cli.options import add_config_arguments, config_from_args
from forward3d.cli.recon import selected_backend

__all__ = ["add_arguments", "run"]


def _protocol_listing() -> str:
    from forward3d.bench.protocol import available_protocols, get_protocol

    return "\n".join(f"  {n}: {get_protocol(n).title}" for n in available_protocols())


def _selected_protocol(argv: list[str]) -> str | None:
    rest = [a for a in argv if not a.startswith("-")]
    return rest[1] if len(rest) > 1 and rest[0] == "bench" else None


def add_arguments(parser: argparse.ArgumentParser, argv: list[str] | None = None) -> None:
    from forward3d.bench.protocol import PROTOCOLS, get_protocol
    from forward3d.bench.runner import BenchConfig

    argv = argv or []
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = "protocols:\n" + _protocol_listing()
    dests = add_config_arguments(parser, BenchConfig)
    parser.set_defaults(_bench_dests=dests)
    name = _selected_protocol(argv)
    backend = selected_backend(argv, BenchConfig.backend)
    if name in PROTOCOLS and get_protocol(name).task == "nvs":
        from forward3d.bench.nvs import NVS_SKIP_FIELDS
        from forward3d.eval.nvs import NVSEvalConfig

        d = add_config_arguments(parser, NVSEvalConfig, skip=NVS_SKIP_FIELDS, prefix="backend_",
                                 title=f"{name} options")
        parser.set_defaults(_backend_dests=d, _backend_cls=NVSEvalConfig)
        return
    if name in PROTOCOLS and get_protocol(name).task == "extrapolation":
        from forward3d.bench.extrapolation import ExtrapolationOptions

        d = add_config_arguments(parser, ExtrapolationOptions, prefix="backend_",
                                 title=f"{name} options (--backend aligned | zoedepth | oracle)")
        parser.set_defaults(_backend_dests=d, _backend_cls=ExtrapolationOptions)
        return
    from forward3d.config import import_reference
    from forward3d.pipelines import get_backend_class

    try:
        cls = import_reference(backend) if ":" in backend else get_backend_class(backend)
    except (ValueError, ImportError, TypeError) as exc:  # reported by run() with the same message
        parser.set_defaults(_backend_error=str(exc))
        return
    d = add_config_arguments(parser, cls.config_cls, prefix="backend_",
                             title=f"{backend} back-end ({cls.capabilities.summary()})")
    parser.set_defaults(_backend_dests=d, _backend_cls=cls.config_cls)


def run(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from forward3d.bench.runner import BenchConfig, run_benchmark

    cfg = config_from_args(BenchConfig, args, args._bench_dests)
    if getattr(args, "_backend_error", None):
        raise ValueError(f"--backend {cfg.backend}: {args._backend_error}")
    if not cfg.data:
        raise ValueError("--data DIR is required")
    backend_config = None
    if getattr(args, "_backend_cls", None) is not None:
        values = asdict(config_from_args(args._backend_cls, args, args._backend_dests))
        backend_config = {k: v for k, v in values.items() if k in args._backend_dests}
    result = run_benchmark(cfg, backend_config)
    s = result.summary
    print(f"forward3d bench {cfg.protocol}: {s['num_finished']}/{s['num_sequences']} sequences with {cfg.backend} "
          f"({len(result.ran)} run, {len(result.skipped)} skipped as finished, {len(result.failed)} failed) -> {cfg.out}")
    print((result.files.get("summary_md") or "").read_text(encoding="utf-8") if result.files.get("summary_md") else "")
    return 1 if result.failed else 0
