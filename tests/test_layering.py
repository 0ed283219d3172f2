"""The layering DESIGN.md asks for: compress (training time) never imports deploy (after training)."""
import ast

from conftest import REPO


def imported_modules(path):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.module


def test_compress_never_imports_deploy():
    offenders = [f"{p.relative_to(REPO)} imports {m}" for p in sorted((REPO / "compress").rglob("*.py"))
                 for m in imported_modules(p) if m == "deploy" or m.startswith("deploy.")]
    assert not offenders, offenders


def test_the_layering_check_sees_imports_inside_functions(tmp_path):
    f = tmp_path / "m.py"
    f.write_text("def f():\n    from deploy.flops import count_macs\n")
    assert "deploy.flops" in set(imported_modules(f))
