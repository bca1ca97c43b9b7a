"""Reconstruction back-ends: frames -> :class:`~forward3d.types.Reconstruction`.

Back-ends are :class:`~forward3d.pipelines.base.Backend` subclasses found by name in a registry: the
dict :data:`BACKENDS` (``name -> class`` or a lazy ``"module:Class"`` reference, imported on first use so
that importing this package never imports open3d or the networks) plus the ``importlib.metadata`` entry
points of the group ``"forward3d.backends"``, which a plug-in package declares in its ``pyproject.toml``::

    [project.entry-points."forward3d.backends"]
    mybackend = "my_package.backend:MyBackend"

Every class is checked (:func:`~forward3d.pipelines.base.check_backend_class`) when it is registered
or first loaded. Adding a built-in back-end is one file under ``forward3d/pipelines/`` plus one line
below. Example::

    from forward3d.pipelines import get_backend
    from forward3d.io.sources import open_frames

    recon = get_backend("rgbd", voxel_size=0.01).run(open_frames("tum/rgbd_dataset_freiburg1_desk"))
"""

from __future__ import annotations

import logging
from importlib import metadata
from typing import Any

from forward3d.config import import_reference
from forward3d.pipelines.base import Backend, Capabilities, check_backend_class

__all__ = ["BACKENDS", "DEFAULT_BACKEND", "ENTRY_POINT_GROUP", "Backend", "Capabilities", "auto_backend",
           "register_backend", "available_backends", "get_backend_class", "get_backend"]

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "forward3d.backends"

# the back-end of input with depth when the user names none (see auto_backend)
DEFAULT_BACKEND = "rgbd"

# name -> Backend subclass, or a lazy "module:Class" reference to one (resolved by get_backend_class)
BACKENDS: dict[str, type[Backend] | str] = {
    "rgbd": "forward3d.pipelines.rgbd:RGBDBackend",
    "slam3r": "forward3d.pipelines.slam3r:SLAM3RBackend",
    "spann3r": "forward3d.pipelines.spann3r:Spann3RPipeline",
    "sfm": "forward3d.pipelines.sfm:SfMBackend",
    "oracle": "forward3d.pipelines.oracle:GroundTruthBackend",
}


def register_backend(cls: type[Backend] | str, name: str | None = None, *, overwrite: bool = False) -> None:
    """Register a back-end class (checked now) or a lazy ``"module:Class"`` reference (checked when loaded).

    Raises:
        TypeError / ValueError: the class breaks the contract, or the name is taken (``overwrite=False``).
    """
    if isinstance(cls, str):
        if ":" not in cls or not name:
            raise ValueError(f"register_backend: a lazy reference needs 'module:Class' and a name, found {cls!r}")
        key = name
    else:
        check_backend_class(cls, name)
        key = cls.name
    if key in BACKENDS and not overwrite and BACKENDS[key] is not cls:
        raise ValueError(f"register_backend: {key!r} is already registered (pass overwrite=True to replace it)")
    BACKENDS[key] = cls


def _entry_points() -> dict[str, metadata.EntryPoint]:
    try:
        eps = metadata.entry_points(group=ENTRY_POINT_GROUP)
    except Exception as exc:  # pragma: no cover - broken installations
        log.warning("could not read entry points of %s: %s", ENTRY_POINT_GROUP, exc)
        return {}
    return {ep.name: ep for ep in eps}


def available_backends() -> list[str]:
    """Names of the registered and entry-point back-ends, sorted."""
    return sorted(set(BACKENDS) | set(_entry_points()))


def get_backend_class(name: str) -> type[Backend]:
    """The back-end class registered under ``name`` (the registry dict first, then entry points).

    Raises:
        ValueError: unknown name (the message lists the available ones).
        ImportError: the back-end's module or one of its optional dependencies is missing.
        TypeError: the loaded class breaks the contract.
    """
    if name in BACKENDS:
        entry = BACKENDS[name]
        cls = import_reference(entry) if isinstance(entry, str) else entry
    else:
        eps = _entry_points()
        if name not in eps:
            raise ValueError(f"unknown back-end {name!r}: expected one of {', '.join(available_backends())}")
        cls = eps[name].load()
    cls = check_backend_class(cls, name)
    BACKENDS[name] = cls
    return cls


def get_backend(name: str, config: Any = None, **overrides: Any) -> Backend:
    """An instance of back-end ``name``, e.g. ``get_backend("rgbd", voxel_size=0.01)``."""
    return get_backend_class(name)(config, **overrides)


def auto_backend(source: Any) -> tuple[str, str]:
    """The back-end for an opened frame source when the user names none: ``(name, reason)``.

    Input with depth (or of unknown kind) -> :data:`DEFAULT_BACKEND`. RGB-only input (``has_depth`` is
    False: a video, an image folder) -> the first registered back-end, by name, that needs neither depth
    nor learned weights (``sfm``): with no back-end named, no weights were given either. When none
    loads here, :data:`DEFAULT_BACKEND`, whose source check then refuses the input with the hint to use.
    """
    if getattr(source, "has_depth", None) is not False:
        return DEFAULT_BACKEND, "the input has depth"
    for name in available_backends():
        try:
            caps = get_backend_class(name).capabilities
        except (ImportError, TypeError, ValueError):  # an optional back-end that cannot load here
            continue
        if not caps.needs_depth and not caps.needs_weights:
            return name, "the input has no depth and no weights were given"
    return DEFAULT_BACKEND, "no weight-free back-end for RGB-only input is available"
