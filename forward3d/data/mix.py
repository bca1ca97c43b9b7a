"""The dataset-mixing grammar ``N @ Name(key=value, ...) + M @ Other(...)``, parsed safely.

The reference ``eval()``s this string. Here it is parsed with :mod:`ast` and every node is checked
against a whitelist; nothing is ever evaluated::

    mixture := term ("+" term)*
    term    := [INT "@"] NAME "(" [key "=" value ("," key "=" value)*] ")"
    value   := INT | FLOAT | STRING | True | False | None | "-" number
             | "(" value, ... ")" | "[" value, ... "]"
             | NAME                  (only where the key's type is a Literal naming it: transform=ColorJitter)

``NAME`` is looked up in the dataset registry (:func:`forward3d.data.sequence.get_dataset_class`,
which also knows the reference's names such as ``ScanNetpp_Seq``); every key must be a field of that
dataset's config dataclass (``ROOT`` is accepted for ``root``) and every value must have the field's
type. Anything else -- a call or attribute in a value, an unknown name, ``__import__``, lambdas,
f-strings, comprehensions, operators, ``**kwargs``, numbers beyond 10^12, strings beyond 4096
characters, inputs beyond 20000 characters -- is a :class:`MixtureError` naming the offending token.

``N @ D`` draws ``N`` samples from ``D`` per epoch (the reference's ``ResizedDataset``: a permutation of
``D`` seeded by ``epoch + 777``, repeated until ``N`` long); a term without ``N @`` contributes all of
``D``. ``+`` concatenates (:class:`MixtureDataset`).
"""

from __future__ import annotations

import ast
import difflib
import logging
import types
import typing
from dataclasses import dataclass, fields
from typing import Any, Literal, Union

import numpy as np
from torch.utils.data import Dataset

from forward3d.data.sequence import ALIASES, DATASETS, SequenceDataset, get_dataset_class
from forward3d.data.views import ViewSample

__all__ = ["MixtureError", "MixTerm", "parse_mixture", "build_mixture", "MixtureDataset", "KEY_ALIASES",
           "config_keys", "type_name"]

log = logging.getLogger(__name__)

MAX_TEXT = 20_000
MAX_STRING = 4096
MAX_INT = 10**12
MAX_SIZE = 10**9
MAX_TERMS = 64
MAX_ITEMS = 256
MAX_NESTING = 3
KEY_ALIASES = {"ROOT": "root"}


class MixtureError(ValueError):
    """A dataset-mixture string that is not valid; the message names the offending token."""


@dataclass(frozen=True)
class MixTerm:
    """One ``N @ Name(...)`` term: ``size`` (None without ``N @``), the name as written, the dataset
    class, the checked keyword values (config field names) and the term's source text."""

    size: int | None
    name: str
    dataset: type[SequenceDataset]
    kwargs: dict[str, Any]
    text: str


def _segment(text: str, node: ast.AST) -> str:
    seg = ast.get_source_segment(text, node) or type(node).__name__
    return seg if len(seg) <= 80 else seg[:77] + "..."


def _where(node: ast.AST) -> str:
    col = getattr(node, "col_offset", None)
    return f" (column {col + 1})" if col is not None else ""


_NODE_WORDS = {
    ast.Call: "a call", ast.Attribute: "an attribute access", ast.Lambda: "a lambda", ast.JoinedStr: "an f-string",
    ast.FormattedValue: "an f-string", ast.ListComp: "a comprehension", ast.SetComp: "a comprehension",
    ast.DictComp: "a comprehension", ast.GeneratorExp: "a generator expression", ast.Subscript: "a subscript",
    ast.BinOp: "an operator expression", ast.BoolOp: "a boolean expression", ast.Compare: "a comparison",
    ast.IfExp: "a conditional expression", ast.NamedExpr: "an assignment expression", ast.Starred: "unpacking",
    ast.Dict: "a dict", ast.Set: "a set", ast.Await: "await", ast.Yield: "yield", ast.YieldFrom: "yield",
    ast.Slice: "a slice",
}


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text

    def error(self, node: ast.AST, msg: str) -> MixtureError:
        return MixtureError(f"dataset mixture: {msg}{_where(node)}")

    def forbidden(self, node: ast.AST, context: str) -> MixtureError:
        what = _NODE_WORDS.get(type(node), f"a {type(node).__name__} node")
        return self.error(node, f"{what} is not allowed {context}: `{_segment(self.text, node)}`")

    # ---------------------------------------------------------------------------------- structure
    def terms(self, node: ast.AST) -> list[ast.AST]:
        """The operands of a chain of '+' (iteratively: a long chain must not exhaust the stack)."""
        out, stack = [], [node]
        while stack:
            n = stack.pop()
            if isinstance(n, ast.BinOp) and isinstance(n.op, ast.Add):
                stack += [n.right, n.left]
            else:
                out.append(n)
            if len(out) + len(stack) > MAX_TERMS:
                raise MixtureError(f"dataset mixture: more than {MAX_TERMS} terms")
        return out

    def term(self, node: ast.AST) -> MixTerm:
        size = None
        call = node
        if isinstance(node, ast.BinOp):
            if not isinstance(node.op, ast.MatMult):
                op = _segment(self.text, node)
                raise self.error(node, f"expected 'N @ Name(...)' terms joined by '+', found the operator "
                                       f"expression `{op}` (only '@' and '+' are allowed)")
            size = self.size(node.left)
            call = node.right
        if not isinstance(call, ast.Call):
            if isinstance(call, ast.Name):
                raise self.error(call, f"expected a dataset call `{call.id}(...)`, found the bare name `{call.id}`")
            raise self.forbidden(call, "as a mixture term (expected 'N @ Name(key=value, ...)')")
        if not isinstance(call.func, ast.Name):
            raise self.forbidden(call.func, "as a dataset name (expected a registered name like ScanNetpp)")
        name = call.func.id
        try:
            cls = get_dataset_class(name)
        except ValueError:
            known = sorted(set(DATASETS) | set(ALIASES))
            close = difflib.get_close_matches(name, known, n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise self.error(call.func, f"unknown dataset `{name}`{hint} (registered: {', '.join(sorted(DATASETS))})") from None
        if call.args:
            raise self.error(call.args[0], f"positional argument `{_segment(self.text, call.args[0])}` in `{name}(...)`: "
                                           f"give every value as key=value")
        hints = config_keys(cls)
        kwargs: dict[str, Any] = {}
        for kw in call.keywords:
            if kw.arg is None:
                raise self.error(kw, f"`**{_segment(self.text, kw.value)}` unpacking is not allowed in `{name}(...)`")
            key = KEY_ALIASES.get(kw.arg, kw.arg)
            if key not in hints:
                close = difflib.get_close_matches(key, list(hints), n=3)
                hint = f"; did you mean {', '.join(close)}?" if close else ""
                raise self.error(kw, f"unknown key `{kw.arg}` for {cls.name}{hint} (keys: {', '.join(sorted(hints))})")
            if key in kwargs:
                raise self.error(kw, f"key `{kw.arg}` given twice in `{name}(...)`")
            raw = self.value(kw.value, hints[key], 0)
            kwargs[key] = self.typed(kw.value, raw, hints[key], f"{cls.name}.{key}")
        try:  # field values (ranges, combinations) are checked now, before any file is read
            cls.config_class(**kwargs).validate()
        except (ValueError, TypeError) as exc:
            raise self.error(call, f"`{name}(...)`: {exc}") from None
        return MixTerm(size, name, cls, kwargs, ast.get_source_segment(self.text, node) or name)

    def size(self, node: ast.AST) -> int:
        if not (isinstance(node, ast.Constant) and type(node.value) is int):
            if isinstance(node, (ast.Constant, ast.UnaryOp)):
                raise self.error(node, f"the sample count before '@' must be a positive integer, found "
                                       f"`{_segment(self.text, node)}`")
            raise self.forbidden(node, "as the sample count before '@'")
        if not 1 <= node.value <= MAX_SIZE:
            raise self.error(node, f"the sample count must be in [1, {MAX_SIZE}], found {_segment(self.text, node)}")
        return int(node.value)

    # ---------------------------------------------------------------------------------- values
    def value(self, node: ast.AST, tp: Any, depth: int) -> Any:
        if isinstance(node, ast.Constant):
            v = node.value
            if v is None or type(v) in (bool, int, float, str):
                return self.bounded(node, v)
            raise self.error(node, f"a {type(v).__name__} literal is not allowed: `{_segment(self.text, node)}`")
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)) \
                and isinstance(node.operand, ast.Constant) and type(node.operand.value) in (int, float):
            v = self.bounded(node.operand, node.operand.value)
            return -v if isinstance(node.op, ast.USub) else v
        if isinstance(node, (ast.Tuple, ast.List)):
            if depth >= MAX_NESTING:
                raise self.error(node, f"values nest deeper than {MAX_NESTING} levels: `{_segment(self.text, node)}`")
            if len(node.elts) > MAX_ITEMS:
                raise self.error(node, f"a sequence of {len(node.elts)} values is longer than {MAX_ITEMS}")
            inner = _element_type(tp)
            return [self.value(e, inner, depth + 1) for e in node.elts]
        if isinstance(node, ast.Name):
            if node.id in _literal_names(tp):
                return node.id
            raise self.error(node, f"the bare name `{node.id}` is not a value (quote strings: '{node.id}')")
        raise self.forbidden(node, "in a value")

    def bounded(self, node: ast.AST, v: Any) -> Any:
        if type(v) is int and abs(v) > MAX_INT:
            raise self.error(node, f"the number {str(v)[:20]}{'...' if len(str(v)) > 20 else ''} exceeds 10^12")
        if type(v) is float and not np.isfinite(v):
            raise self.error(node, f"the number `{_segment(self.text, node)}` is not finite")
        if type(v) is str and len(v) > MAX_STRING:
            raise self.error(node, f"a string of {len(v)} characters is longer than {MAX_STRING}")
        return v

    def typed(self, node: ast.AST, value: Any, tp: Any, where: str) -> Any:
        ok, out = _coerce(value, tp)
        if not ok:
            raise self.error(node, f"`{where}` expects {type_name(tp)}, found `{_segment(self.text, node)}`")
        return out


# --------------------------------------------------------------------------------------------------
# Types of config fields
# --------------------------------------------------------------------------------------------------


def config_keys(cls: type[SequenceDataset]) -> dict[str, Any]:
    """``{key: type annotation}`` of a dataset's config fields (the keys a mixture term accepts).

    Resolved once per config class (``typing.get_type_hints`` evaluates the annotation strings of
    OUR config modules; the mixture text itself is never evaluated)."""
    cfg = cls.config_class
    if cfg not in _HINTS:
        hints = typing.get_type_hints(cfg)
        _HINTS[cfg] = {f.name: hints[f.name] for f in fields(cfg) if not f.name.startswith("_")}
    return _HINTS[cfg]


_HINTS: dict[type, dict[str, Any]] = {}


def _is_union(tp: Any) -> bool:
    return typing.get_origin(tp) in (Union, types.UnionType)


def _literal_names(tp: Any) -> set[str]:
    if typing.get_origin(tp) is Literal:
        return {a for a in typing.get_args(tp) if isinstance(a, str) and a.isidentifier()}
    if _is_union(tp):
        return set().union(*(_literal_names(a) for a in typing.get_args(tp)))
    return set()


def _element_type(tp: Any) -> Any:
    if typing.get_origin(tp) in (tuple, list):
        args = typing.get_args(tp)
        return args[0] if args else Any
    if _is_union(tp):
        inner = [_element_type(a) for a in typing.get_args(tp) if typing.get_origin(a) in (tuple, list)]
        return inner[0] if len(inner) == 1 else Any
    return Any


def _coerce(value: Any, tp: Any) -> tuple[bool, Any]:
    """``(ok, value)``: ``value`` checked against the annotation ``tp`` (lists become tuples)."""
    if tp is Any:
        return True, value
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if _is_union(tp):
        for a in args:
            ok, out = _coerce(value, a)
            if ok:
                return True, out
        return False, None
    if origin is Literal:
        return (any(type(value) is type(a) and value == a for a in args), value)
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            return False, None
        if len(args) == 2 and args[1] is Ellipsis:
            items = [_coerce(v, args[0]) for v in value]
        elif args:
            if len(args) != len(value):
                return False, None
            items = [_coerce(v, a) for v, a in zip(value, args)]
        else:
            items = [(True, v) for v in value]
        if not all(ok for ok, _ in items):
            return False, None
        return True, tuple(v for _, v in items)
    if tp is type(None):
        return value is None, None
    if tp is bool:
        return type(value) is bool, value
    if tp is int:
        return type(value) is int, value
    if tp is float:
        return type(value) in (int, float), float(value) if type(value) in (int, float) else None
    if tp is str:
        return type(value) is str, value
    return False, None


def type_name(tp: Any) -> str:
    """A readable name of a config field's type annotation."""
    if _is_union(tp):
        return " or ".join(type_name(a) for a in typing.get_args(tp))
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin in (tuple, list):
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a tuple of {type_name(args[0])}"
        return "a tuple (" + ", ".join(type_name(a) for a in args) + ")"
    if tp is type(None):
        return "None"
    return getattr(tp, "__name__", str(tp))


# --------------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------------


def parse_mixture(text: str) -> list[MixTerm]:
    """Parse and check a mixture string (nothing is instantiated or evaluated)."""
    if not isinstance(text, str):
        raise MixtureError(f"dataset mixture: expected a string, found {type(text).__name__}")
    if len(text) > MAX_TEXT:
        raise MixtureError(f"dataset mixture: {len(text)} characters is longer than the limit of {MAX_TEXT}")
    # shell-style continuations and line breaks are spaces (the reference's strings span lines);
    # columns in the messages count in this one-line form
    src = text.replace("\\\n", " ").replace("\r", " ").replace("\n", " ").strip()
    if not src:
        raise MixtureError("dataset mixture: empty string (expected 'N @ Name(key=value, ...) + ...')")
    bad = next((c for c in src if ord(c) < 32 and c != "\t"), None)
    if bad is not None:
        raise MixtureError(f"dataset mixture: control character {bad!r} is not allowed")
    try:
        tree = ast.parse(src, mode="eval")
    except SyntaxError as exc:
        raise MixtureError(f"dataset mixture: invalid syntax at column {exc.offset or '?'}: {exc.msg}") from None
    except (ValueError, RecursionError, MemoryError, OverflowError) as exc:
        raise MixtureError(f"dataset mixture: cannot parse ({type(exc).__name__}: {str(exc)[:200]})") from None
    parser = _Parser(src)
    nodes = parser.terms(tree.body)
    return [parser.term(n) for n in nodes]


class MixtureDataset(Dataset):
    """Concatenation of ``N @ dataset`` terms with the reference's per-epoch resampling.

    ``len`` is the sum of the terms' sizes; call :meth:`set_epoch` at the start of every epoch (it
    redraws the ``N @`` subsets and forwards the epoch to the datasets, whose per-sample randomness
    depends on it). Batch with :func:`forward3d.data.views.collate_views`; for several processes use
    ``torch.utils.data.DistributedSampler(mixture, num_replicas, rank, seed=...)`` and call its
    ``set_epoch`` too.
    """

    def __init__(self, terms: list[tuple[int | None, Dataset]], allow_mixed: bool = False) -> None:
        if not terms:
            raise ValueError("MixtureDataset: expected at least one term")
        self.terms = [(None if n is None else int(n), ds) for n, ds in terms]
        for n, ds in self.terms:
            if len(ds) == 0:
                raise ValueError(f"MixtureDataset: {ds!r} is empty")
        if not allow_mixed:
            shapes = {(getattr(ds.config, "num_views", None), getattr(ds.config, "size", None))
                      for _, ds in self.terms if hasattr(ds, "config")}
            if len(shapes) > 1:
                raise ValueError(f"MixtureDataset: terms mix different (num_views, resolution) {sorted(shapes, key=str)}; "
                                 f"batches need one shape (pass allow_mixed=True to build it anyway)")
        self.sizes = [len(ds) if n is None else n for n, ds in self.terms]
        self.cumsum = np.cumsum(self.sizes)
        self.epoch = 0
        self._maps: list[np.ndarray | None] = [None] * len(self.terms)
        self.set_epoch(0)

    @property
    def datasets(self) -> list[Dataset]:
        return [ds for _, ds in self.terms]

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        for k, (n, ds) in enumerate(self.terms):
            if hasattr(ds, "set_epoch"):
                ds.set_epoch(self.epoch)
            if n is not None:
                perm = np.random.default_rng(self.epoch + 777).permutation(len(ds))
                reps = 1 + (n - 1) // len(ds)
                self._maps[k] = np.concatenate([perm] * reps)[:n]

    def __len__(self) -> int:
        return int(self.cumsum[-1])

    def locate(self, index: int) -> tuple[int, int]:
        """``(term, index inside that term's dataset)`` of mixture sample ``index``."""
        if not 0 <= int(index) < len(self):
            raise IndexError(f"MixtureDataset: sample {index} outside [0, {len(self)})")
        t = int(np.searchsorted(self.cumsum, index, side="right"))
        local = int(index) - (int(self.cumsum[t - 1]) if t else 0)
        m = self._maps[t]
        return t, int(m[local]) if m is not None else local

    def __getitem__(self, index: int) -> ViewSample:
        t, i = self.locate(index)
        return self.terms[t][1][i]

    def __repr__(self) -> str:
        parts = [f"{n if n is not None else len(ds)} @ {ds!r}" for n, ds in self.terms]
        return " + ".join(parts)


def build_mixture(text: str, *, roots: dict[str, str] | None = None, defaults: dict[str, Any] | None = None,
                  allow_mixed: bool = False) -> MixtureDataset:
    """Parse ``text`` and instantiate its datasets.

    Args:
        roots: ``{dataset name: folder}`` used for terms that set no ``root`` (names as registered
            or as written).
        defaults: config values applied to every term that does not set them (e.g. ``resolution``),
            when the dataset's config has that field.
        allow_mixed: allow terms of different ``num_views`` / ``resolution``.
    """
    roots = roots or {}
    defaults = defaults or {}
    built = []
    for term in parse_mixture(text):
        kwargs = dict(term.kwargs)
        names = {f.name for f in fields(term.dataset.config_class)}
        for k, v in defaults.items():
            if k in names and k not in kwargs:
                kwargs[k] = v
        if "root" not in kwargs:
            root = roots.get(term.name) or roots.get(term.dataset.name)
            if root is not None:
                kwargs["root"] = str(root)
        try:
            ds = term.dataset(**kwargs)
        except (ValueError, TypeError) as exc:
            raise MixtureError(f"dataset mixture: `{term.text}`: {exc}") from exc
        built.append((term.size, ds))
    return MixtureDataset(built, allow_mixed=allow_mixed)
