"""App controls generated from config dataclasses (the config is the UI, as it is the CLI).

:func:`control_specs` reads a config dataclass (a back-end's ``config_cls``, :class:`~forward3d.api.
SourceConfig`) into :class:`ControlSpec` s: the field's kind, default, choices and help text (the class
docstring's ``Attributes:`` section). :func:`make_component` turns a spec into a gradio component and
:func:`config_values` turns the components' values back into keyword arguments of the dataclass, so a
default lives in one place and a new option of a back-end appears in the app with no app code.

Kinds: ``bool`` (checkbox), ``choice`` (``Literal``: dropdown), ``int``/``float`` (number), ``str``
(text), ``tuple`` (text: the numbers separated by spaces). ``| None`` fields accept an empty value
(optional numbers are text boxes: a number box cannot be empty).
Fields hidden from the CLI (``option(cli=False)``) and nested dataclasses are not shown.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass
from typing import Any, Literal, get_args, get_origin

from forward3d.config import FIELD_META_KEY, field_help

__all__ = ["ControlSpec", "control_specs", "config_values", "make_component"]

Kind = Literal["bool", "choice", "int", "float", "str", "tuple"]


@dataclass(frozen=True)
class ControlSpec:
    """One control of a config field.

    Attributes:
        name: the field name.
        kind: bool, choice, int, float, str or tuple.
        default: the field's default.
        optional: the field accepts None (an empty control).
        choices: the ``Literal`` values of a choice.
        length: the number of items of a fixed-length tuple (0: any).
        item: ``int`` or ``float``: the type of a tuple's items.
        help: the field's help text.
    """

    name: str
    kind: Kind
    default: Any
    optional: bool = False
    choices: tuple[Any, ...] = ()
    length: int = 0
    item: type = float
    help: str = ""

    @property
    def label(self) -> str:
        return self.name.replace("_", " ")


def _strip_optional(tp: Any) -> tuple[Any, bool]:
    if get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


def control_specs(cls: type, exclude: typing.Iterable[str] = ()) -> list[ControlSpec]:
    """The controls of the dataclass ``cls``'s fields (in field order), except ``exclude``."""
    if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
        raise TypeError(f"control_specs: expected a dataclass type, found {cls!r}")
    hints = typing.get_type_hints(cls)
    helps = field_help(cls)
    skip = set(exclude)
    out = []
    for f in dataclasses.fields(cls):
        if f.name in skip or not f.metadata.get(FIELD_META_KEY, {}).get("cli", True):
            continue
        tp, optional = _strip_optional(hints[f.name])
        default = _default(f)
        common = {"name": f.name, "default": default, "optional": optional or default is None, "help": helps[f.name]}
        origin = get_origin(tp)
        if tp is bool:
            spec = ControlSpec(kind="bool", **common)
        elif origin is Literal:
            spec = ControlSpec(kind="choice", choices=get_args(tp), **common)
        elif tp is int:
            spec = ControlSpec(kind="int", **common)
        elif tp is float:
            spec = ControlSpec(kind="float", **common)
        elif tp is str:
            spec = ControlSpec(kind="str", **common)
        elif origin is tuple and get_args(tp) and all(a in (int, float) for a in get_args(tp) if a is not Ellipsis):
            args = [a for a in get_args(tp) if a is not Ellipsis]
            length = 0 if Ellipsis in get_args(tp) else len(args)
            spec = ControlSpec(kind="tuple", length=length, item=int if all(a is int for a in args) else float,
                               **common)
        else:  # nested configs, lists, callables: Python / CLI only
            continue
        out.append(spec)
    return out


def _parse(spec: ControlSpec, value: Any, where: str) -> Any:
    empty = value is None or (isinstance(value, str) and not value.strip())
    if empty:
        if spec.optional:
            return None
        if spec.kind == "str":
            return ""
        raise ValueError(f"{where}{spec.label}: a value is required")
    try:
        if spec.kind == "bool":
            return bool(value)
        if spec.kind == "choice":
            if value not in spec.choices:
                raise ValueError(f"expected one of {', '.join(map(str, spec.choices))}, found {value!r}")
            return value
        if spec.kind == "int":
            f = float(value)
            if f != int(f):
                raise ValueError(f"expected an integer, found {value!r}")
            return int(f)
        if spec.kind == "float":
            return float(value)
        if spec.kind == "str":
            return str(value).strip()
        items = str(value).replace(",", " ").split()
        if spec.length and len(items) != spec.length:
            raise ValueError(f"expected {spec.length} numbers separated by spaces, found {value!r}")
        return tuple(spec.item(float(x)) if spec.item is int else float(x) for x in items)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{where}{spec.label}: {exc}") from None


def config_values(specs: list[ControlSpec], values: typing.Sequence[Any], where: str = "") -> dict[str, Any]:
    """The control values (one per spec, in order) -> ``{field: parsed value}`` for the fields that
    differ from their default (ValueError naming the option for a bad value)."""
    if len(values) != len(specs):
        raise ValueError(f"config_values: {len(values)} values for {len(specs)} controls")
    out = {}
    for spec, value in zip(specs, values):
        v = _parse(spec, value, where)
        default = tuple(spec.default) if isinstance(spec.default, list) else spec.default
        if v != default:
            out[spec.name] = v
    return out


def component_value(spec: ControlSpec) -> Any:
    """The initial value of a spec's component."""
    if spec.kind == "tuple":
        return "" if spec.default is None else " ".join(str(x) for x in spec.default)
    if spec.optional and spec.kind in ("int", "float", "str"):
        return "" if spec.default is None else str(spec.default)
    return spec.default


def make_component(spec: ControlSpec, **kwargs: Any):
    """A gradio component for ``spec`` (needs gradio: ``pip install forward3d[app]``)."""
    import gradio as gr

    info = spec.help or None
    value = component_value(spec)
    if spec.kind == "bool":
        return gr.Checkbox(value=bool(value), label=spec.label, info=info, **kwargs)
    if spec.kind == "choice":
        return gr.Dropdown(choices=list(spec.choices), value=value, label=spec.label, info=info, **kwargs)
    if spec.kind in ("int", "float") and not spec.optional:  # gr.Number has no empty value: optional ones are text
        return gr.Number(value=value, label=spec.label, info=info, precision=0 if spec.kind == "int" else None,
                         **kwargs)
    placeholder = "empty: default" if spec.optional else None
    return gr.Textbox(value=value, label=spec.label, info=info, placeholder=placeholder, max_lines=1, **kwargs)
