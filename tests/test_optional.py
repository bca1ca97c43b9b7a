"""The one helper behind every optional import (``forward3d.optional.import_optional``)."""

import pytest

from forward3d.optional import import_optional


def test_missing_module_names_the_extra():
    with pytest.raises(ImportError, match=r"^the widget needs no_such_pkg_f3d: pip install 'forward3d\[extra9\]'"):
        import_optional("no_such_pkg_f3d.sub", "extra9", "the widget")
    assert import_optional("json", "none", "x").dumps([1]) == "[1]"
