"""The tree passes ruff (settings in pyproject.toml), so lint is part of the README test command;
the suite's own scheduling table names real files."""

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _ruff():
    if shutil.which("ruff"):
        return [shutil.which("ruff")]
    if importlib.util.find_spec("ruff") is not None:
        return [sys.executable, "-m", "ruff"]
    return None


def test_ruff_is_clean():
    cmd = _ruff()
    if cmd is None:
        pytest.skip("ruff is not installed (pip install -r requirements-dev.txt)")
    proc = subprocess.run([*cmd, "check", "."], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_the_longest_first_order_names_existing_test_files():
    """tests/conftest.py LONGEST_FIRST orders xdist's files: a renamed or deleted file there would
    silently fall back to the end of the queue."""
    from tests.conftest import LONGEST_FIRST

    assert len(set(LONGEST_FIRST)) == len(LONGEST_FIRST)
    missing = [path for path in LONGEST_FIRST if not (ROOT / path).is_file()]
    assert missing == [], missing


def test_every_file_that_reads_the_sessions_trained_runs_is_in_their_xdist_group():
    """A test file that takes trained_run or resumed_run outside tests/conftest.py SHARED_RUNS
    would train them again on the other worker (20 s of CPU): it belongs in that group."""
    import ast

    from tests.conftest import SHARED_RUNS, xdist_group_of

    readers = set()
    for path in sorted((ROOT / "tests").rglob("test_*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef) and {a.arg for a in node.args.args} & {
                    "trained_run", "resumed_run"}:
                readers.add(path.relative_to(ROOT).as_posix())
    assert readers >= {"tests/scripts/test_train.py", "tests/scripts/test_eval.py"}, readers
    assert readers <= set(SHARED_RUNS), readers - set(SHARED_RUNS)
    assert {xdist_group_of(p) for p in SHARED_RUNS} == {"shared_runs"}
    assert xdist_group_of("tests/model/test_cca.py") == "tests/model/test_cca.py"
