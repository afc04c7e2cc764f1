"""The layering of the code, read from the source (AST): the library never imports a script, and
no project modules import each other in a cycle (imports inside functions count too)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = {"train_cnn", "eval", "compare", "predict", "parser"}
LIBRARY = ("model", "data", "utils", "training", "evaluation")
PACKAGES = (*LIBRARY, "benchmarks")


def project_modules() -> dict[str, Path]:
    mods = {p.stem: p for p in ROOT.glob("*.py") if p.stem != "conftest"}
    for pkg in PACKAGES:
        for p in (ROOT / pkg).rglob("*.py"):
            parts = p.relative_to(ROOT).with_suffix("").parts
            mods[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = p
    return mods


def imports_of(path: Path, modules: dict) -> set[str]:
    """Project modules ``path`` imports (``from pkg import name`` counts as ``pkg.name`` when that
    is a module, else ``pkg``)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules
                     else node.module for a in node.names]
        else:
            continue
        for name in names:
            while name and name not in modules:
                name = name.rpartition(".")[0]
            if name:
                out.add(name)
    return out


def import_graph() -> dict[str, set[str]]:
    modules = project_modules()
    return {m: imports_of(p, modules) - {m} for m, p in modules.items()}


def test_the_library_never_imports_a_script():
    graph = import_graph()
    bad = {m: sorted(deps & SCRIPTS) for m, deps in graph.items()
           if m.split(".")[0] in LIBRARY and deps & SCRIPTS}
    assert not bad, f"library modules importing scripts: {bad}"


def test_benchmarks_do_not_import_the_training_or_evaluation_scripts():
    graph = import_graph()
    bad = {m: sorted(deps & (SCRIPTS - {"parser"})) for m, deps in graph.items()
           if m.startswith("benchmarks") and deps & (SCRIPTS - {"parser"})}
    assert not bad, bad


def _cycle(graph):
    """One import cycle as a list of modules, or None (depth-first search)."""
    state, stack = {}, []

    def visit(m):
        state[m] = "open"
        stack.append(m)
        for d in sorted(graph.get(m, ())):
            if state.get(d) == "open":
                return stack[stack.index(d):] + [d]
            if d not in state:
                found = visit(d)
                if found:
                    return found
        stack.pop()
        state[m] = "done"
        return None

    for m in sorted(graph):
        if m not in state:
            found = visit(m)
            if found:
                return found
    return None


def test_no_import_cycles():
    graph = import_graph()
    # a package's __init__ is imported before its modules; only real module-to-module edges count
    packages = {m for m, p in project_modules().items() if p.name == "__init__.py"}
    graph = {m: {d for d in deps if d not in packages} for m, deps in graph.items()}
    cycle = _cycle(graph)
    assert cycle is None, " -> ".join(cycle)


def test_the_cycle_finder_finds_cycles():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_scripts_stay_thin():
    for script in ("train_cnn.py", "eval.py", "compare.py", "predict.py"):
        path = ROOT / script
        if path.exists():
            assert len(path.read_text().splitlines()) <= 300, script
