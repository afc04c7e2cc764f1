"""The layering of the code, read from the source (AST; imports inside functions count too).

The library is built in floors (docs/architecture.md); a module imports its own package and the
floors below it, never one above:

    scripts (train_cnn, eval, compare, predict), parser.py, benchmarks/, experiments/
    training/     the fit loop, multi-worker, callbacks, optimisers and class weights, TrainConfig
    evaluation/   metrics, evaluation, plots, figures, scene maps, comparison, BoVW runs
    model/        layers, losses, network, checkpoint loading, the BoVW/KSFA models
    data/         the shard format, loader, converters
    utils/        command-line errors and logging, run directories and locks, devices

Training may use evaluation (it evaluates and plots during and after fitting); evaluation never
imports training. No project modules import each other in a cycle."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = {"train_cnn", "eval", "compare", "predict", "parser"}
#: the library's floors, lowest first: each package may import its own modules and lower floors
FLOORS = ("utils", "data", "model", "evaluation", "training")
LIBRARY = FLOORS
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


def floor_violations(graph: dict[str, set[str]]) -> dict[str, list[str]]:
    """``{module: [imported modules on a higher floor]}`` for every library module of ``graph``;
    scripts count as the top floor."""
    def floor(module):
        top = module.split(".")[0]
        return FLOORS.index(top) if top in FLOORS else len(FLOORS)

    bad = {}
    for m, deps in graph.items():
        if m.split(".")[0] in FLOORS:
            up = sorted(d for d in deps if floor(d) > floor(m))
            if up:
                bad[m] = up
    return bad


def test_no_import_runs_up_the_floors():
    bad = floor_violations(import_graph())
    assert not bad, f"imports of a higher floor (see this file's docstring): {bad}"


def test_the_floor_check_catches_a_planted_violation(tmp_path):
    """The check is not vacuous: an upward arrow planted into the real graph, and one parsed
    from a planted source file, are both reported."""
    graph = import_graph()
    assert {"utils.cli", "data.shards", "model.network", "evaluation.metrics",
            "training.fit"} <= set(graph)  # the graph holds every floor
    planted = {m: set(d) for m, d in graph.items()}
    planted["utils.cli"].add("data.shards")
    planted["evaluation.metrics"].add("training.fit")
    planted["model.network"].add("train_cnn")
    assert floor_violations(planted) == {"utils.cli": ["data.shards"],
                                         "evaluation.metrics": ["training.fit"],
                                         "model.network": ["train_cnn"]}
    src = tmp_path / "planted.py"
    src.write_text("def f():\n    from training.fit import train\n    return train\n")
    deps = imports_of(src, project_modules())
    assert deps == {"training.fit"}
    assert floor_violations({"data.planted": deps}) == {"data.planted": ["training.fit"]}


def test_utils_is_the_ground_floor():
    """utils/ imports no other project package (it is plumbing every package may use)."""
    graph = import_graph()
    bad = {m: sorted(d for d in deps if not d.startswith("utils"))
           for m, deps in graph.items() if m.split(".")[0] == "utils"}
    assert not {m: d for m, d in bad.items() if d}, bad


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


# ------------------------------------------------------------------------ function-level imports
#: third-party packages slow enough to import that a module may defer them to first use
HEAVY = {"keras", "tensorflow", "jax", "torch", "tensorboard", "rasterio", "affine", "matplotlib",
         "seaborn", "PIL", "scipy", "sklearn", "numpy"}
#: light modules a function may still import, and why
DEFERRED_LIGHT = {"fcntl": "POSIX only: the lock falls back when it is missing"}


def _top_level_imports(path: Path, modules: dict) -> set[str]:
    out = set()
    for node in ast.parse(path.read_text(), str(path)).body:
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.add(node.module)
            out |= {f"{node.module}.{a.name}" for a in node.names
                    if f"{node.module}.{a.name}" in modules}
    return out


def heavy_at_import(name: str, modules: dict, memo: dict) -> set[str]:
    """The HEAVY packages importing ``name`` loads (its top-level imports, followed through the
    project's modules and parent packages)."""
    if name in memo:
        return memo[name]
    memo[name] = set()  # a cycle (there is none: test_no_import_cycles) would end here
    found = name
    while found and found not in modules:
        found = found.rpartition(".")[0]
    if not found:
        memo[name] = {name.split(".")[0]} & HEAVY
        return memo[name]
    parts = found.split(".")
    out = set()
    for i in range(1, len(parts)):
        out |= heavy_at_import(".".join(parts[:i]), modules, memo)
    for dep in _top_level_imports(modules[found], modules):
        out |= heavy_at_import(dep, modules, memo)
    memo[name] = out
    return out


def light_deferred_imports(path: Path, module: str, modules: dict, memo: dict) -> list[str]:
    """``file:line target`` of each import inside a function of ``path`` that defers nothing: the
    target loads no HEAVY package the module's own top-level imports do not load already."""
    own = heavy_at_import(module, modules, memo)
    bad = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        for sub in ast.walk(node):
            if isinstance(sub, ast.Import):
                targets = [a.name for a in sub.names]
            elif isinstance(sub, ast.ImportFrom) and sub.level == 0 and sub.module:
                targets = [sub.module] + [f"{sub.module}.{a.name}" for a in sub.names
                                          if f"{sub.module}.{a.name}" in modules]
            else:
                continue
            if targets[0].split(".")[0] in DEFERRED_LIGHT:
                continue
            loads = set().union(*(heavy_at_import(t, modules, memo) for t in targets))
            if not loads - own:
                bad.append(f"{path.name}:{sub.lineno} {targets[0]}")
    return bad


def test_function_level_imports_only_defer_heavy_ones():
    """An import inside a function is there to defer Keras, TensorFlow, rasterio, ... (start-up
    time; ``select_devices`` before TensorFlow): anything else belongs at the top of the module."""
    modules = project_modules()
    memo: dict = {}
    bad = []
    for m, path in sorted(modules.items()):
        if m.split(".")[0] in LIBRARY or m in SCRIPTS:
            bad += light_deferred_imports(path, m, modules, memo)
    assert not bad, f"function-level imports that defer nothing heavy: {bad}"


def test_the_deferred_import_check_catches_a_planted_one(tmp_path):
    modules = project_modules()
    src = tmp_path / "planted.py"
    src.write_text("import numpy as np\n\n\ndef f():\n    import json\n    from utils.cli import "
                   "UsageError\n    import keras\n    from data.loader import make_dataset\n"
                   "    import numpy\n    return json, UsageError, keras, make_dataset, np, numpy\n")
    modules = {**modules, "planted": src}
    bad = light_deferred_imports(src, "planted", modules, {})
    assert bad == ["planted.py:5 json", "planted.py:6 utils.cli", "planted.py:9 numpy"]


def test_no_library_file_over_600_lines():
    """A file that outgrows 600 lines holds more than one concern: split it by concern."""
    long = {str(p.relative_to(ROOT)): n for pkg in LIBRARY for p in (ROOT / pkg).rglob("*.py")
            if (n := len(p.read_text().splitlines())) > 600}
    assert not long, long
