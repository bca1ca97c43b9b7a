"""Command-line options generated from config dataclasses (forward3d.cli.options, forward3d.config)."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from typing import Literal

import pytest

from forward3d.cli.options import add_config_arguments, config_from_args
from forward3d.config import config_to_dict, field_help, option, plain_text


@dataclass
class Example:
    """An example config.

    Attributes:
        name: the input file.
        size: a size in ``pixels`` (see :class:`~forward3d.types.Intrinsics`).
        ratio: a ratio
            spanning two lines.
        lo, hi: a range in metres.
        mode: how to do it.
        flag: turn it on.
        enabled: on by default.
        K: four numbers.
        thresholds: any number of thresholds.
        precision: fp32 or bf16.
        secret: not on the command line.
        old: kept under its old option name.
    """

    name: str = option("", positional=True)
    size: int = 3
    ratio: float | None = None
    lo: float = 0.5
    hi: float = 2.0
    mode: Literal["fast", "frame"] = option("fast", choice_aliases={"odometry": "frame"})
    flag: bool = False
    enabled: bool = True
    K: tuple[float, float, float, float] | None = option(None, metavar=("FX", "FY", "CX", "CY"))
    thresholds: list[float] = option(default_factory=lambda: [0.1, 0.2])
    precision: Literal["fp32", "bf16"] = option("fp32", const_aliases={"--bf16": "bf16"})
    secret: object = option(None, cli=False)
    old: int = option(1, flag="--legacy-name", aliases=("--older-name",))


def _parse(argv):
    p = argparse.ArgumentParser()
    dests = add_config_arguments(p, Example, prefix="x_")
    return p, config_from_args(Example, p.parse_args(argv), dests)


def test_help_text_from_the_docstring():
    h = field_help(Example)
    assert h["ratio"] == "a ratio spanning two lines."
    assert h["lo"] == h["hi"] == "a range in metres."
    assert h["size"] == "a size in pixels (see Intrinsics)."
    assert plain_text(":func:`forward3d.api.reconstruct` ``x``") == "reconstruct x"


def test_defaults_round_trip():
    _, cfg = _parse(["in.png"])
    assert cfg == Example(name="in.png")


def test_every_kind_of_option():
    _, cfg = _parse(["in.png", "--size", "7", "--ratio", "0.25", "--mode", "odometry", "--flag", "--no-enabled",
                     "--K", "1", "2", "3", "4", "--thresholds", "0.5", "--bf16", "--older-name", "9"])
    assert (cfg.size, cfg.ratio, cfg.mode, cfg.flag, cfg.enabled) == (7, 0.25, "frame", True, False)
    assert cfg.K == (1.0, 2.0, 3.0, 4.0) and isinstance(cfg.K, tuple)
    assert cfg.thresholds == [0.5] and cfg.precision == "bf16" and cfg.old == 9


def test_bad_values_are_argparse_errors(capsys):
    with pytest.raises(SystemExit):
        _parse(["in.png", "--mode", "slow"])
    assert "invalid choice 'slow'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        _parse(["in.png", "--size", "x"])
    with pytest.raises(SystemExit):
        _parse(["in.png", "--secret", "1"])  # hidden


def test_help_shows_defaults_and_texts(capsys):
    p, _ = _parse(["in.png"])
    text = p.format_help()
    assert "a size in pixels (see Intrinsics) (default: 3)" in " ".join(text.split())
    assert "turn it on (default: off)" in " ".join(text.split())
    assert "FX FY CX CY" in text and "--legacy-name" in text and "--bf16" in text


def test_unsupported_field_type_is_a_clear_error():
    @dataclass
    class Bad:
        """Attributes:
            x: a mapping."""
        x: dict = option(default_factory=dict)

    with pytest.raises(TypeError, match="Bad.x"):
        add_config_arguments(argparse.ArgumentParser(), Bad)


def test_config_to_dict_is_json_friendly():
    import json

    d = config_to_dict(Example(K=(1, 2, 3, 4)))
    assert d["K"] == [1, 2, 3, 4] and json.dumps(d)


@dataclass
class _Inner:
    """Attributes:
        num_src: source views.
        fusion: how.
    """
    num_src: int = 5
    fusion: str = "points"


@dataclass
class _Outer:
    """Attributes:
        dense: on.
        inner: the inner options.
    """
    dense: bool = True
    inner: _Inner = field(default_factory=_Inner)


def test_nested_config_dataclass_options():
    """A config field that is itself a config (sfm's ``mvs: MVSConfig``) becomes --mvs-* options."""
    import argparse

    from forward3d.cli.options import add_config_arguments, config_from_args

    p = argparse.ArgumentParser()
    dests = add_config_arguments(p, _Outer, prefix="b_")
    cfg = config_from_args(_Outer, p.parse_args(["--inner-num-src", "3", "--no-dense"]), dests)
    assert cfg == _Outer(dense=False, inner=_Inner(num_src=3))
    assert config_from_args(_Outer, p.parse_args([]), dests) == _Outer()
    from forward3d.pipelines import get_backend

    assert get_backend("sfm", {"mvs": {"num_src": 3}}).config.mvs.num_src == 3
