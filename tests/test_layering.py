"""The layering DESIGN.md asks for: compress (training time) never imports deploy (after training),
no import cycles, and no pipeline stage imports another stage's module."""
import ast

from conftest import REPO


def _type_checking_only(node, parents) -> bool:
    """Is `node` inside an `if TYPE_CHECKING:` block (never executed)?"""
    while node in parents:
        node = parents[node]
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            return True
    return False


def imported_modules(path, package: str = "", known: frozenset = frozenset()):
    """Every module `path` imports, at its top or inside functions (not under TYPE_CHECKING). With
    `package` (the module's own package), relative imports are resolved, and `from pkg import name`
    counts as importing pkg.name when that is one of the `known` modules."""
    tree = ast.parse(path.read_text())
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    for node in ast.walk(tree):
        if _type_checking_only(node, parents):
            continue
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                if not package:
                    continue
                parts = package.split(".")
                base = ".".join(parts[:len(parts) - node.level + 1] + ([node.module] if node.module else []))
            else:
                base = node.module
            subs = [f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in known]
            yield from subs
            if len(subs) < len(node.names):
                yield base


def module_graph() -> dict[str, set[str]]:
    """Import edges between the modules of compress and deploy."""
    files = {}
    for p in sorted((REPO / "compress").rglob("*.py")) + sorted((REPO / "deploy").rglob("*.py")):
        parts = list(p.relative_to(REPO).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        name = ".".join(parts[:-1] if is_package else parts)
        files[name] = (p, name if is_package else ".".join(parts[:-1]))
    known = frozenset(files)
    return {name: {m for m in imported_modules(path, package, known) if m in known and m != name}
            for name, (path, package) in files.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                out.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_compress_never_imports_deploy():
    offenders = [f"{p.relative_to(REPO)} imports {m}" for p in sorted((REPO / "compress").rglob("*.py"))
                 for m in imported_modules(p) if m == "deploy" or m.startswith("deploy.")]
    assert not offenders, offenders


def test_the_layering_check_sees_imports_inside_functions(tmp_path):
    f = tmp_path / "m.py"
    f.write_text("def f():\n    from deploy.flops import count_macs\n")
    assert "deploy.flops" in set(imported_modules(f))


def test_no_import_cycles():
    assert cycles(module_graph()) == []


def test_the_cycle_check_finds_a_cycle_through_a_function_level_import(tmp_path):
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "a.py").write_text("from .b import x\n")
    (pkg / "b.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .c import y\n"
                              "def f():\n    from .a import z\n")
    (pkg / "c.py").write_text("from . import b\n")
    known = frozenset({"pkg.a", "pkg.b", "pkg.c"})
    graph = {f"pkg.{n}": set(imported_modules(pkg / f"{n}.py", "pkg", known)) & known for n in "abc"}
    assert graph == {"pkg.a": {"pkg.b"}, "pkg.b": {"pkg.a"}, "pkg.c": {"pkg.b"}}
    assert cycles(graph) == [["pkg.a", "pkg.b"]]


def test_no_stage_imports_another_stage():
    from deploy.pipeline.stage import STAGES
    stages = {s.function.partition(":")[0] for s in STAGES}
    graph = module_graph()
    offenders = [f"{m} imports {n}" for m in sorted(stages) for n in sorted(graph[m] & stages)]
    assert not offenders, offenders
