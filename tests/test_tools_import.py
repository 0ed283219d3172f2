"""Every Python tool under tools/ still imports against the library (a benchmark whose import broke
when an API moved would otherwise be found only when someone runs it for a table)."""
import importlib.util
import sys
from pathlib import Path

import pytest

TOOLS = Path(__file__).resolve().parents[1] / "tools"


@pytest.mark.parametrize("path", sorted(TOOLS.glob("*.py")), ids=lambda p: p.name)
def test_tool_imports(path, monkeypatch):
    monkeypatch.syspath_prepend(str(TOOLS))
    name = f"_tool_{path.stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, name, module)  # dataclasses look their module up while it loads
    spec.loader.exec_module(module)
    assert callable(getattr(module, "main", None)) or path.stem in ("own_loop_example",), \
        f"{path.name} has no main()"
