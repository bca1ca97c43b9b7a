"""Config dataclasses: one place for every option's default and help text.

forward3d's configs are plain dataclasses. Their help text is the class docstring's ``Attributes:``
section (Google style, one entry per field, ``a, b: text`` for several fields); the command line is
generated from them (:mod:`forward3d.cli.options`), so ``--help`` is always complete and a default is
written once. A field can carry presentation hints in its metadata with :func:`option`:

    keyframe_translation: float = option(0.1, flag="--keyframe-motion")

Nothing here imports argparse: the hints are plain data that the CLI layer reads.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import re
from dataclasses import MISSING, field
from typing import Any

__all__ = ["option", "field_help", "plain_text", "config_to_dict", "import_reference", "FIELD_META_KEY"]

FIELD_META_KEY = "forward3d"


def option(default: Any = MISSING, *, default_factory: Any = MISSING, flag: str | None = None,
           aliases: tuple[str, ...] = (), const_aliases: dict[str, Any] | None = None,
           choice_aliases: dict[str, str] | None = None, help: str | None = None,  # noqa: A002 - CLI word
           metavar: str | None = None, cli: bool = True, positional: bool = False) -> Any:
    """A dataclass field with CLI hints.

    Args:
        default / default_factory: as :func:`dataclasses.field`.
        flag: the option's name when it is not ``--field-name`` (kept for compatibility), e.g. ``"--bilateral"``.
        aliases: further accepted spellings of the option.
        const_aliases: flags that store a constant, e.g. ``{"--bf16": "bf16"}`` for a precision field.
        choice_aliases: accepted old spellings of ``Literal`` values, e.g. ``{"odometry": "frame"}``.
        help: help text (default: the class docstring's entry for the field).
        metavar: the value's name in ``--help``.
        cli: False hides the field from the command line (Python-only options such as callables).
        positional: a positional argument instead of an option.
    """
    meta = {FIELD_META_KEY: {"flag": flag, "aliases": tuple(aliases), "const_aliases": dict(const_aliases or {}),
                             "choice_aliases": dict(choice_aliases or {}), "help": help, "metavar": metavar,
                             "cli": cli, "positional": positional}}
    if default_factory is not MISSING:
        return field(default_factory=default_factory, metadata=meta)
    return field(default=default, metadata=meta)


_ENTRY = re.compile(r"^(\s*)([A-Za-z_][A-Za-z0-9_]*(?:\s*,\s*[A-Za-z_][A-Za-z0-9_]*)*)\s*:\s*(.*)$")


def _docstring_entries(cls: type) -> dict[str, str]:
    """``field -> text`` from the ``Attributes:`` sections of ``cls`` and its bases (Google style)."""
    out: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        doc = inspect.getdoc(klass) if klass.__dict__.get("__doc__") else None
        if not doc:
            continue
        lines = doc.splitlines()
        try:
            start = next(i for i, ln in enumerate(lines) if ln.strip() in ("Attributes:", "Args:"))
        except StopIteration:
            continue
        names: list[str] = []
        indent = None
        for ln in lines[start + 1:]:
            if not ln.strip():
                continue
            lead = len(ln) - len(ln.lstrip())
            if lead == 0:
                break  # the next section
            m = _ENTRY.match(ln)
            if m and (indent is None or len(m.group(1)) <= indent):
                indent = len(m.group(1))
                names = [n.strip() for n in m.group(2).split(",")]
                for n in names:
                    out[n] = m.group(3).strip()
            elif names:
                for n in names:
                    out[n] = (out[n] + " " + ln.strip()).strip()
    return out


_ROLE = re.compile(r":[a-z]+:`~?([^`]+)`")


def plain_text(text: str) -> str:
    """Docstring markup -> plain text: ``x`` -> x, :class:`~a.b.C` -> C."""
    text = _ROLE.sub(lambda m: m.group(1).rsplit(".", 1)[-1], text)
    return text.replace("``", "")


def field_help(cls: type) -> dict[str, str]:
    """Help text of every field of the dataclass ``cls``: the :func:`option` ``help``, else the docstring
    entry, else ``""`` (as plain text)."""
    doc = _docstring_entries(cls)
    out = {}
    for f in dataclasses.fields(cls):
        hint = f.metadata.get(FIELD_META_KEY, {}).get("help")
        out[f.name] = plain_text(hint or doc.get(f.name, ""))
    return out


def config_to_dict(config: Any) -> dict[str, Any]:
    """A JSON-friendly dict of a config dataclass (tuples -> lists, nested dataclasses -> dicts)."""
    def conv(v: Any) -> Any:
        if dataclasses.is_dataclass(v) and not isinstance(v, type):
            return {f.name: conv(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, (list, tuple)):
            return [conv(x) for x in v]
        if isinstance(v, dict):
            return {str(k): conv(x) for k, x in v.items()}
        if v is None or isinstance(v, (bool, int, float, str)):
            return v
        return str(v)

    return conv(config)


def import_reference(ref: str) -> Any:
    """The object a ``"package.module:attr.sub"`` reference names (registries keep these lazy strings so
    that listing plug-ins imports nothing heavy)."""
    module, sep, attr = str(ref).partition(":")
    if not sep or not module or not attr:
        raise ValueError(f"expected a 'module:attribute' reference, found {ref!r}")
    obj: Any = importlib.import_module(module)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj
