"""Command-line options generated from config dataclasses (the config is the CLI, as in nerfstudio).

:func:`add_config_arguments` turns every field of a dataclass into an option with the field's type,
default and help text (from :func:`forward3d.config.field_help`), so ``--help`` is always complete and
a default is written in one place; :func:`config_from_args` builds the dataclass back from the parsed
arguments. Type mapping:

- ``bool``: ``--name`` / ``--no-name`` (``argparse.BooleanOptionalAction``);
- ``Literal[...]``: ``choices`` (old spellings through ``option(choice_aliases=...)``);
- ``int``, ``float``, ``str`` and their ``| None`` forms: a typed value;
- ``tuple[float, ...]`` of fixed length: ``nargs`` = its length; ``list[X]``: ``nargs="+"``.

Field hints from :func:`forward3d.config.option`: ``flag`` (another option name), ``aliases``,
``const_aliases`` (``--bf16`` storing ``"bf16"``), ``metavar``, ``cli=False`` (hidden), ``positional``.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from typing import Any, Iterable, Literal, get_args, get_origin

from forward3d.config import FIELD_META_KEY, field_help

__all__ = ["add_config_arguments", "config_from_args", "config_dests"]

_MISSING = dataclasses.MISSING


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _strip_optional(tp: Any) -> tuple[Any, bool]:
    origin = get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


def _choice_type(choices: tuple[str, ...], aliases: dict[str, str], flag: str):
    def conv(text: str) -> str:
        value = aliases.get(text, text)
        if value not in choices:
            shown = ", ".join(choices) + (f" (aliases: {', '.join(f'{k}={v}' for k, v in aliases.items())})"
                                          if aliases else "")
            raise argparse.ArgumentTypeError(f"invalid choice {text!r} (choose from {shown})")
        return value
    conv.__name__ = flag
    return conv


def _default_text(value: Any) -> str:
    if isinstance(value, (tuple, list)):
        return " ".join(str(v) for v in value)
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _with_default(help_text: str, default: Any, kind: str) -> str:
    text = (help_text.strip() or "(no description)").replace("%", "%%").rstrip(".")
    if "default" in text.lower() or default is None or default == "":
        return text
    if kind == "flag":
        return f"{text} (default: {'on' if default else 'off'})"
    return f"{text} (default: {_default_text(default).replace('%', '%%')})"


def config_dests(cls: type, prefix: str = "") -> dict[str, str]:
    """``field name -> argparse dest`` of the fields :func:`add_config_arguments` adds."""
    return {f.name: prefix + f.name for f in dataclasses.fields(cls)
            if f.metadata.get(FIELD_META_KEY, {}).get("cli", True)}


def add_config_arguments(parser: argparse.ArgumentParser | argparse._ArgumentGroup, cls: type, *,
                         skip: Iterable[str] = (), prefix: str = "", defaults: Any = None,
                         title: str | None = None, flag_prefix: str = "") -> dict[str, Any]:
    """Add one option per field of the dataclass ``cls`` to ``parser`` (or a new group ``title``).

    Args:
        parser: a parser or an argument group.
        cls: the config dataclass.
        skip: field names to leave out (options the command defines itself).
        prefix: prepended to every dest (namespacing two configs in one parser).
        defaults: an instance whose values are the defaults (default: the dataclass defaults).
        title: add the options to a new argument group with this title.
        flag_prefix: prepended to every generated flag name (``"mvs-"``: ``--mvs-num-src``).

    A field whose type is itself a config dataclass (e.g. ``mvs: MVSConfig``) adds that config's
    options with its name as flag prefix (``--mvs-num-src``); its entry in the result is the nested
    ``field name -> dest`` mapping.

    Returns:
        ``field name -> dest`` of the added options (for :func:`config_from_args`).
    """
    if title is not None:
        parser = parser.add_argument_group(title)
    helps = field_help(cls)
    hints = _hints(cls)
    skip = set(skip)
    inst = defaults if defaults is not None else None
    added: dict[str, str] = {}
    for f in dataclasses.fields(cls):
        meta = f.metadata.get(FIELD_META_KEY, {})
        if f.name in skip or not meta.get("cli", True):
            continue
        if inst is not None:
            default = getattr(inst, f.name)
        elif f.default is not _MISSING:
            default = f.default
        elif f.default_factory is not _MISSING:  # type: ignore[misc]
            default = f.default_factory()  # type: ignore[misc]
        else:
            default = None
        dest = prefix + f.name
        flag = meta.get("flag") or "--" + flag_prefix + f.name.replace("_", "-")
        names = [flag, *meta.get("aliases", ())]
        tp, optional = _strip_optional(hints[f.name])
        if dataclasses.is_dataclass(tp):
            added[f.name] = add_config_arguments(parser, tp, prefix=dest + "__", defaults=default,
                                                 flag_prefix=flag_prefix + f.name.replace("_", "-") + "-")
            continue
        kwargs: dict[str, Any] = {"dest": dest, "default": default}
        if meta.get("metavar"):
            kwargs["metavar"] = meta["metavar"]
        else:
            kwargs["metavar"] = {int: "N", float: "X"}.get(_strip_optional(hints[f.name])[0],
                                                          f.name.upper())
        help_text = helps.get(f.name, "")
        if meta.get("positional"):
            kwargs.pop("dest")
            if optional:  # ``X | None`` positional: may be left out
                kwargs["nargs"] = "?"
            else:
                kwargs.pop("default")
            kwargs["type"] = tp if tp in (int, float, str) else str
            parser.add_argument(dest, help=(help_text or "").replace("%", "%%") or None, **kwargs)
            added[f.name] = dest
            continue
        if tp is bool:
            kwargs.pop("metavar", None)
            kwargs["action"] = argparse.BooleanOptionalAction
            kwargs["help"] = _with_default(help_text, default, "flag")
        elif get_origin(tp) is Literal and all(isinstance(c, int) for c in get_args(tp)):
            kwargs["type"] = int
            kwargs["choices"] = get_args(tp)
            kwargs.pop("metavar", None)
            kwargs["help"] = _with_default(help_text, default, "choice")
        elif get_origin(tp) is Literal:
            choices = tuple(str(c) for c in get_args(tp))
            aliases = meta.get("choice_aliases", {})
            kwargs["type"] = _choice_type(choices, aliases, flag)
            if not meta.get("metavar"):
                kwargs["metavar"] = "{" + ",".join(choices) + "}"
            kwargs["help"] = _with_default(help_text, default, "choice")
        elif get_origin(tp) is tuple:
            args = [a for a in get_args(tp) if a is not Ellipsis]
            kwargs["type"] = args[0] if args and args[0] in (int, float, str) else str
            kwargs["nargs"] = len(get_args(tp)) if Ellipsis not in get_args(tp) else "+"
            kwargs["help"] = _with_default(help_text, default, "tuple")
        elif get_origin(tp) is list:
            args = get_args(tp)
            kwargs["type"] = args[0] if args and args[0] in (int, float, str) else str
            kwargs["nargs"] = "+"
            kwargs["help"] = _with_default(help_text, default, "list")
        elif tp in (int, float, str):
            kwargs["type"] = tp
            kwargs["help"] = _with_default(help_text, default, "value")
        else:
            raise TypeError(f"add_config_arguments: {cls.__name__}.{f.name} has type {tp!r}, which has no CLI "
                            "form; hide it with option(cli=False)")
        parser.add_argument(*names, **kwargs)
        for alias, const in meta.get("const_aliases", {}).items():
            parser.add_argument(alias, dest=dest, action="store_const", const=const,
                                help=f"same as {flag} {const}")
        added[f.name] = dest
    return added


def config_from_args(cls: type, args: argparse.Namespace, dests: dict[str, str] | None = None,
                     **fixed: Any) -> Any:
    """The dataclass ``cls`` from parsed arguments (``dests`` from :func:`add_config_arguments`), plus
    ``fixed`` values for fields the command sets itself. Fields without a parsed value keep their default.
    Tuples are converted back from argparse's lists."""
    dests = dests if dests is not None else config_dests(cls)
    hints = _hints(cls)
    values: dict[str, Any] = {}
    for name, dest in dests.items():
        tp, _ = _strip_optional(hints[name])
        if isinstance(dest, dict):  # a nested config dataclass
            values[name] = config_from_args(tp, args, dest)
            continue
        if not hasattr(args, dest):
            continue
        v = getattr(args, dest)
        if v is not None and get_origin(tp) is tuple:
            v = tuple(v)
        values[name] = v
    values.update(fixed)
    return cls(**values)
