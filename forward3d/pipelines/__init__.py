"""Pipelines: turn frames into a :class:`~forward3d.types.Reconstruction`.

Pipelines are found by name in a registry: a plain dict ``name -> factory`` (:data:`PIPELINES`) plus
the ``importlib.metadata`` entry points of the group ``"forward3d.pipelines"`` (what a plug-in package
declares in its ``pyproject.toml``)::

    [project.entry-points."forward3d.pipelines"]
    mybackend = "my_package.pipeline:MyPipeline"

A factory is any callable ``factory(**config) -> pipeline``; a pipeline has
``run(frames, num_frames=None, callback=None) -> Reconstruction`` or ``reconstruct(frames, callback=None)``.
``forward3d recon --backend NAME`` also looks for two optional attributes on the factory:
``add_cli_arguments(parser)`` (backend options) and ``from_cli_args(args) -> pipeline``.

Built-in factories are given as ``"module:attribute"`` references and imported on first use, so that
importing this package never imports open3d or torch models.
"""

from __future__ import annotations

import importlib
import logging
from importlib import metadata
from typing import Any, Callable

__all__ = ["PIPELINES", "ENTRY_POINT_GROUP", "register_pipeline", "available_pipelines", "get_pipeline_factory",
           "get_pipeline"]

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "forward3d.pipelines"

# name -> factory, or a lazy "module:attribute" reference to one (resolved by get_pipeline_factory)
PIPELINES: dict[str, Callable[..., Any] | str] = {
    "rgbd": "forward3d.pipelines.rgbd:RGBDPipeline",
    # get_pipeline("slam3r", i2p_source=..., l2w_source=..., config=SLAM3RConfig(...), device=...)
    "slam3r": "forward3d.pipelines.slam3r:SLAM3RPipeline.from_pretrained",
}


def register_pipeline(name: str, factory: Callable[..., Any] | str, *, overwrite: bool = False) -> None:
    """Register ``factory`` (a callable or a ``"module:attribute"`` reference) under ``name``."""
    if not isinstance(name, str) or not name or not name.replace("_", "").replace("-", "").isalnum():
        raise ValueError(f"register_pipeline: expected a name of letters, digits, '-' or '_', found {name!r}")
    if not (callable(factory) or (isinstance(factory, str) and ":" in factory)):
        raise TypeError(f"register_pipeline({name!r}): expected a callable or 'module:attribute', found {factory!r}")
    if name in PIPELINES and not overwrite and PIPELINES[name] is not factory:
        raise ValueError(f"register_pipeline: {name!r} is already registered (pass overwrite=True to replace it)")
    PIPELINES[name] = factory


def _entry_points() -> dict[str, metadata.EntryPoint]:
    try:
        eps = metadata.entry_points(group=ENTRY_POINT_GROUP)
    except Exception as exc:  # pragma: no cover - broken installations
        log.warning("could not read entry points of %s: %s", ENTRY_POINT_GROUP, exc)
        return {}
    return {ep.name: ep for ep in eps}


def available_pipelines() -> list[str]:
    """Names of the registered and entry-point pipelines, sorted."""
    return sorted(set(PIPELINES) | set(_entry_points()))


def _resolve(ref: str) -> Callable[..., Any]:
    module, _, attr = ref.partition(":")
    obj: Any = importlib.import_module(module)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


def get_pipeline_factory(name: str) -> Callable[..., Any]:
    """The factory registered under ``name`` (the registry dict first, then entry points).

    Raises:
        ValueError: unknown name (the message lists the available ones).
        ImportError: the pipeline's module or an optional dependency is missing.
    """
    if name in PIPELINES:
        factory = PIPELINES[name]
        if isinstance(factory, str):
            factory = _resolve(factory)
            PIPELINES[name] = factory
        return factory
    eps = _entry_points()
    if name in eps:
        factory = eps[name].load()
        PIPELINES[name] = factory
        return factory
    raise ValueError(f"unknown pipeline {name!r}: expected one of {', '.join(available_pipelines())}")


def get_pipeline(name: str, **config: Any) -> Any:
    """Instantiate pipeline ``name`` with ``config`` keyword options, e.g. ``get_pipeline("rgbd", voxel_size=0.01)``."""
    return get_pipeline_factory(name)(**config)
