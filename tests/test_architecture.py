"""The layering rules of issue 8, checked on the source: libraries stay libraries."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "forward3d"


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names)
    return out


def _modules(sub: str | None = None) -> list[Path]:
    root = PKG if sub is None else PKG / sub
    return sorted(p for p in root.rglob("*.py") if "__pycache__" not in p.parts)


def _outside(sub: str) -> list[Path]:
    return [p for p in _modules() if (PKG / sub) not in p.parents]


def test_argparse_only_in_cli():
    offenders = [str(p.relative_to(PKG)) for p in _outside("cli") if "argparse" in _imports(p)]
    assert offenders == []


def test_nothing_outside_cli_imports_cli():
    offenders = [str(p.relative_to(PKG)) for p in _outside("cli") if p.name != "__main__.py"
                 and any(m == "forward3d.cli" or m.startswith("forward3d.cli.") for m in _imports(p))]
    assert offenders == []


def test_eval_does_not_import_train():
    offenders = [str(p.relative_to(PKG)) for p in _modules("eval")
                 if any(m == "forward3d.train" or m.startswith("forward3d.train.") for m in _imports(p))]
    assert offenders == []


def test_every_backend_is_registered_and_documented():
    from forward3d.config import field_help
    from forward3d.pipelines import available_backends, get_backend_class

    names = available_backends()
    assert {"rgbd", "slam3r"} <= set(names)
    for name in names:
        cls = get_backend_class(name)
        assert cls.name == name and cls.description
        helps = field_help(cls.config_cls)
        missing = [f for f, h in helps.items() if not h.strip()]
        assert missing == [], f"{name}: config fields without help text: {missing}"


@pytest.mark.parametrize("module", ["forward3d.demo", "forward3d.api", "forward3d.train.flash3d", "forward3d.viz.render_files",
                                    "forward3d.eval.nvs", "forward3d.eval.traj", "forward3d.eval.recon", "forward3d.bench.runner"])
def test_cli_configs_document_every_field(module):
    import dataclasses
    import importlib

    from forward3d.config import FIELD_META_KEY, field_help

    mod = importlib.import_module(module)
    configs = [v for v in vars(mod).values() if isinstance(v, type) and dataclasses.is_dataclass(v)
               and v.__module__ == mod.__name__ and v.__name__.endswith("Config")]
    assert configs, module
    for cls in configs:
        helps = field_help(cls)
        shown = {f.name for f in dataclasses.fields(cls) if f.metadata.get(FIELD_META_KEY, {}).get("cli", True)}
        missing = sorted(n for n in shown if not helps[n].strip())
        assert missing == [], f"{cls.__name__}: fields without help text: {missing}"


def test_check_shape_helper():
    import numpy as np
    import pytest

    from forward3d.checks import check_shape

    assert check_shape(np.zeros((5, 3)), "N 3", "points") == {"N": 5}
    assert check_shape(np.zeros((2, 7, 3, 3)), "... 3 3", "K") == {}
    assert check_shape(np.zeros((3, 3)), "... 3 3", "K") == {}
    assert check_shape(None, "N 3") == {}
    assert check_shape(np.zeros((2, 4, 4)), "B H H", "x") == {"B": 2, "H": 4}
    with pytest.raises(ValueError, match=r"points \(a.ply\): expected shape \[N, 3\], found \[5, 4\]"):
        check_shape(np.zeros((5, 4)), "N 3", "points", "a.ply")
    with pytest.raises(ValueError, match=r"expected shape \[B, H, H\]"):
        check_shape(np.zeros((2, 4, 5)), "B H H", "x")
    with pytest.raises(ValueError, match=r"K: expected shape \[\.\.\., 3, 3\], found \[3\]"):
        check_shape(np.zeros(3), "... 3 3", "K")
