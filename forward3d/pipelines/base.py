"""The back-end contract: what a reconstruction back-end declares and implements.

A back-end (nerfstudio's ``MethodSpecification`` habit) is a class with

- ``name``: the registry name (``forward3d recon --backend NAME``);
- ``description``: one line for ``--help``;
- ``config_cls``: a dataclass holding EVERY option with its default and (in the class docstring's
  ``Attributes:`` section) its help text: the CLI flags are generated from it, so a default lives in one
  place;
- ``capabilities``: a :class:`Capabilities` (needs depth / weights, metric scale, streaming, outputs);
- ``run(frames, config=None, progress=True, callback=None) -> Reconstruction``;
- for streaming back-ends, ``stream(frames, config=None, progress=True) -> Iterator[Update]``, after
  which :attr:`Backend.result` holds the final :class:`~forward3d.types.Reconstruction`.

Subclass :class:`Backend`; a streaming back-end implements :meth:`Backend.stream` only and inherits a
``run`` that consumes it. Register it with one line in :data:`forward3d.pipelines.BACKENDS` (or an entry
point of the group ``forward3d.backends``): the class is checked when it is registered/loaded.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, is_dataclass, replace
from typing import Any, Callable, ClassVar, Iterable, Iterator, Literal

from forward3d.types import Frame, Reconstruction, Update

__all__ = ["Backend", "Capabilities", "OUTPUTS", "UpdateCallback", "make_config", "check_backend_class"]

OUTPUTS = frozenset({"cameras", "point_maps", "points", "mesh", "gaussians"})

UpdateCallback = Callable[[Update], None]


@dataclass(frozen=True)
class Capabilities:
    """What a back-end needs and gives.

    Attributes:
        needs_depth: refuses input without depth (RGB-only videos, image folders).
        uses_depth: uses depth when the input has it (e.g. for metric scale), works without.
        needs_weights: needs learned weights (local files or hub ids).
        metric_scale: ``"always"`` (metric output), ``"with_depth"`` (metric when the input has depth or
            metric poses), ``"never"`` (up to scale).
        streaming: implements :meth:`Backend.stream` (live input, per-frame :class:`Update`).
        outputs: a subset of :data:`OUTPUTS`.
    """

    needs_depth: bool = False
    uses_depth: bool = False
    needs_weights: bool = False
    metric_scale: Literal["always", "with_depth", "never"] = "never"
    streaming: bool = False
    outputs: frozenset[str] = field(default_factory=lambda: frozenset({"cameras"}))

    def __post_init__(self) -> None:
        if self.metric_scale not in ("always", "with_depth", "never"):
            raise ValueError(f"Capabilities.metric_scale: expected 'always', 'with_depth' or 'never', "
                             f"found {self.metric_scale!r}")
        unknown = set(self.outputs) - OUTPUTS
        if unknown:
            raise ValueError(f"Capabilities.outputs: unknown {sorted(unknown)}; expected some of {sorted(OUTPUTS)}")
        object.__setattr__(self, "outputs", frozenset(self.outputs))

    def summary(self) -> str:
        """One line for ``--help`` and the README, e.g. ``needs depth; metric; streaming; outputs: mesh, points``."""
        parts = []
        if self.needs_depth:
            parts.append("needs depth")
        elif self.uses_depth:
            parts.append("uses depth when present")
        if self.needs_weights:
            parts.append("needs weights")
        parts.append({"always": "metric scale", "with_depth": "metric with depth", "never": "up to scale"}
                     [self.metric_scale])
        if self.streaming:
            parts.append("streaming")
        parts.append("outputs: " + ", ".join(sorted(self.outputs)))
        return "; ".join(parts)


def make_config(cls: type, config: Any = None, overrides: dict[str, Any] | None = None, where: str = "") -> Any:
    """An instance of the dataclass ``cls``: ``config`` (an instance, a dict, or None = defaults) with
    ``overrides`` applied. Unknown keys are one ``ValueError`` listing the known ones."""
    where = where or cls.__name__
    overrides = dict(overrides or {})
    if isinstance(config, dict):
        overrides = {**config, **overrides}
        config = None
    if config is not None and not isinstance(config, cls):
        raise TypeError(f"{where}: expected a {cls.__name__}, found {type(config).__name__}")
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(f"{where}: unknown options {unknown}; expected some of {sorted(known)}")
    for f in fields(cls):  # a dict for a nested config dataclass field (e.g. ``{"mvs": {"num_src": 3}}``)
        v = overrides.get(f.name)
        if isinstance(v, dict) and isinstance(f.default_factory, type) and is_dataclass(f.default_factory):
            base = getattr(config, f.name) if config is not None else None
            overrides[f.name] = make_config(f.default_factory, base, v, where=f"{where}.{f.name}")
    if config is None:
        return cls(**overrides)
    return replace(config, **overrides) if overrides else config


class Backend:
    """Base class of the reconstruction back-ends (see the module docstring).

    Args:
        config: a ``config_cls`` instance (or a dict of its fields); ``overrides`` are applied on top,
            e.g. ``RGBDBackend(voxel_size=0.01)``.
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    config_cls: ClassVar[type] = object
    capabilities: ClassVar[Capabilities] = Capabilities()

    def __init__(self, config: Any = None, **overrides: Any) -> None:
        self.config = make_config(self.config_cls, config, overrides, where=self.name or type(self).__name__)
        self.result: Reconstruction | None = None

    # -- the contract ------------------------------------------------------------------------------
    def run(self, frames: Iterable[Frame], config: Any = None, *, progress: bool = True,
            callback: UpdateCallback | None = None) -> Reconstruction:
        """Reconstruct ``frames`` (any iterable, consumed once) with ``config`` (default: ``self.config``).

        ``callback`` receives each :class:`Update` of a streaming back-end as it is computed. The base
        implementation consumes :meth:`stream`; non-streaming back-ends override this method.
        """
        if not self.capabilities.streaming:
            raise NotImplementedError(f"{type(self).__name__}: a non-streaming back-end must implement run()")
        for update in self.stream(frames, config, progress=progress):
            if callback is not None:
                callback(update)
        if self.result is None:  # pragma: no cover - a stream() that forgot to set it
            raise RuntimeError(f"{type(self).__name__}.stream() finished without setting .result")
        return self.result

    def stream(self, frames: Iterable[Frame], config: Any = None, *, progress: bool = True) -> Iterator[Update]:
        """Per-frame :class:`Update` s; :attr:`result` holds the :class:`Reconstruction` at the end."""
        raise NotImplementedError(f"back-end {self.name!r} does not stream (capabilities.streaming is False)")

    # -- helpers -------------------------------------------------------------------------------------
    def resolve_config(self, config: Any = None) -> Any:
        """``config`` checked against ``config_cls`` (None = ``self.config``)."""
        return self.config if config is None else make_config(self.config_cls, config, where=self.name)

    def check_source(self, source: Any, where: str = "") -> None:
        """Refuse input this back-end cannot use, before any work (e.g. no depth for ``needs_depth``)."""
        has_depth = getattr(source, "has_depth", None)
        if self.capabilities.needs_depth and has_depth is False:
            from forward3d.pipelines import available_backends, get_backend_class

            others = []
            for name in available_backends():
                try:
                    caps = get_backend_class(name).capabilities
                    if not caps.needs_depth:
                        others.append((caps.needs_weights, name))
                except (ImportError, TypeError, ValueError):  # an optional back-end that cannot load here
                    continue
            others = [name for _, name in sorted(others)]  # weight-free back-ends (sfm) first
            layout = getattr(source, "layout", "this")
            hint = (f"forward3d recon INPUT --backend {others[0]}" + (f" (or {', '.join(others[1:])})"
                                                                      if others[1:] else "")) if others else ""
            raise ValueError(f"{where or 'input'}: the {self.name} back-end needs depth, and this {layout} input "
                             f"has none; RGB-only input (videos, image folders) needs another back-end: {hint}; or predict depth "
                             f"with --depth-model MODEL (a metric depth network) and give --intrinsics")

    def configure_for_source(self, source: Any, config: Any) -> Any:
        """The config to use with input read with ``source`` (a :class:`forward3d.api.SourceConfig`);
        e.g. SLAM3R uses the intrinsics the user gave instead of estimating them. Default: unchanged."""
        return config

    @classmethod
    def describe(cls) -> str:
        """``name: description (capabilities)`` for listings."""
        return f"{cls.name}: {cls.description} ({cls.capabilities.summary()})"


def check_backend_class(obj: Any, name: str | None = None) -> type[Backend]:
    """Check that ``obj`` is a valid back-end class (the registration check); returns it.

    Raises:
        TypeError: not a :class:`Backend` subclass, no dataclass config, no :class:`Capabilities`, a
            streaming back-end without ``stream``, or a non-streaming one without ``run``.
        ValueError: a name that is not letters/digits/``-``/``_`` or differs from the registry name.
    """
    label = name or getattr(obj, "__name__", repr(obj))
    if not (isinstance(obj, type) and issubclass(obj, Backend)):
        raise TypeError(f"back-end {label!r}: expected a subclass of forward3d.pipelines.base.Backend, found {obj!r}")
    bname = obj.name
    if not isinstance(bname, str) or not bname or not bname.replace("_", "").replace("-", "").isalnum():
        raise ValueError(f"back-end {label!r}: expected a name of letters, digits, '-' or '_', found {bname!r}")
    if name is not None and bname != name:
        raise ValueError(f"back-end registered as {name!r} declares name {bname!r}")
    if not (isinstance(obj.config_cls, type) and is_dataclass(obj.config_cls)):
        raise TypeError(f"back-end {bname!r}: config_cls must be a dataclass, found {obj.config_cls!r}")
    if not isinstance(obj.capabilities, Capabilities):
        raise TypeError(f"back-end {bname!r}: capabilities must be a Capabilities, found {obj.capabilities!r}")
    overrides_stream = obj.stream is not Backend.stream
    overrides_run = obj.run is not Backend.run
    if obj.capabilities.streaming and not overrides_stream:
        raise TypeError(f"back-end {bname!r}: declares streaming but does not implement stream()")
    if not obj.capabilities.streaming and not overrides_run:
        raise TypeError(f"back-end {bname!r}: a non-streaming back-end must implement run()")
    try:
        obj.config_cls()
    except TypeError as exc:
        raise TypeError(f"back-end {bname!r}: every field of {obj.config_cls.__name__} needs a default ({exc})") from None
    return obj

