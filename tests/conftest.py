"""Shared fixtures of the test suite."""

import logging
import os
import resource
import time

import pytest

# Under pytest-xdist each worker has about one of the machine's cores: TensorFlow's intra-op pool
# and oneDNN's OpenMP threads get one thread each in every worker (and the processes it starts),
# instead of one per core, spinning against the other worker's. Fast tier on 2 cores, 2026-12-06:
# 60.9 s wall / 116 CPU s without, 57.3 s / 109 CPU s with. A value already set is kept.
if int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")) > 1:
    for _var in ("TF_NUM_INTRAOP_THREADS", "OMP_NUM_THREADS"):
        os.environ.setdefault(_var, "1")


@pytest.fixture(scope="session")
def demo_data(tmp_path_factory):
    """A small generated data set: 120 pairs of 32x32 uint8, 4 classes, in trn/ val/ tst/.

    Returns the directory holding the three split directories (each one shard, with row/col and
    class_names; 84/12/24 pairs, about 5 % of pairs change class). Read-only: do not write into it.
    """
    from data import synthetic

    root = tmp_path_factory.mktemp("demo_data")
    synthetic.generate(root, pairs=120, size=32, classes=4, change_rate=0.05, seed=0)
    return root



# Trained once per session, read by many tests: do not write into them (copy with
# tests._runs.copy_run first). Both are train_cnn.py runs of tests._runs.FAST on ``demo_data``,
# with TensorBoard, seed 3.
@pytest.fixture(scope="session")
def trained_run(demo_data, tmp_path_factory):
    """A finished run: 2 epochs, evaluated on tst (results/tst/), checkpoints best/last.keras,
    history.csv, log.txt, tb/{trn,val,tst}. Returns its directory."""
    from tests._runs import WITH_TB_IMAGES, train

    workdir = tmp_path_factory.mktemp("trained_run") / "run"
    assert train(demo_data, workdir, *WITH_TB_IMAGES, epochs=2) == 0
    return workdir


@pytest.fixture(scope="session")
def resumed_run(demo_data, tmp_path_factory):
    """A run trained for 1 epoch, then resumed to 2 (``--resume -e 2``): returns ``(run,
    epoch1)`` where ``epoch1`` is a copy of its checkpoints/ after epoch 1 (last.keras,
    last_state.json, best.keras), to put back for "killed before epoch 2's checkpoint"."""
    import json
    import shutil

    from tests._runs import train

    root = tmp_path_factory.mktemp("resumed_run")
    workdir = root / "run"
    assert train(demo_data, workdir, epochs=1) == 0
    assert json.loads((workdir / "checkpoints" / "last_state.json").read_text())["epoch"] == 1
    shutil.copytree(workdir / "checkpoints", root / "epoch1")
    messages = []
    keep = logging.Handler(logging.INFO)
    keep.emit = lambda record: messages.append(record.getMessage())
    top = logging.getLogger()
    level = top.level
    top.addHandler(keep)
    top.setLevel(logging.INFO)
    try:
        assert train(demo_data, workdir, "--resume", epochs=2) == 0
    finally:
        top.removeHandler(keep)
        top.setLevel(level)
    # the input statistics come from the checkpoint: not computed again
    assert not any("statistics of the training split" in m for m in messages)
    return workdir, root / "epoch1"

# ---------------------------------------------------------------- the longest files start first
# pytest-xdist (-n 2 --dist loadgroup, addopts) hands each worker whole groups: every test is
# marked with an xdist_group of its file, except the files that share a session fixture which
# trains (trained_run, resumed_run: SHARED_RUNS), which form one group, so that those runs are
# trained once per suite and not once per worker (--dist loadfile did: 20 s of CPU twice). A file's
# module fixtures stay on one worker as before. Its default order (most tests first) would start
# the groups of many quick tests and leave the long few-test files (the JAX subprocess is one test
# of 2 min) for the end, where one worker runs them while the other idles. With
# --no-loadscope-reorder (addopts) the groups go out in collection order, and this puts the
# longest files first (longest processing time first); the rest keep their order. The list is the
# full tier's per-file wall time, largest first (tests/README.md "Durations", 2026-12-05).
LONGEST_FIRST = (
    "tests/scripts/test_train.py",
    "tests/model/test_jax_backend.py",
    "tests/training/test_multiworker.py",
    "tests/scripts/test_train_survival.py",
    "tests/benchmarks/test_smoke.py",
    "tests/scripts/test_eval.py",
    "tests/scripts/test_compare.py",
    "tests/model/test_network.py",
    "tests/experiments/test_fusion_degradation.py",
    "tests/model/test_cca.py",
    "tests/evaluation/test_many_classes.py",
    "tests/scripts/test_predict.py",
    "tests/experiments/test_ablation.py",
    "tests/evaluation/test_figures.py",
)
#: files that read the session's trained runs (trained_run, resumed_run): one xdist group
SHARED_RUNS = ("tests/scripts/test_train.py", "tests/scripts/test_train_survival.py",
               "tests/scripts/test_eval.py")


def xdist_group_of(path: str) -> str:
    return "shared_runs" if path in SHARED_RUNS else path


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook, which reads the groups
def pytest_collection_modifyitems(config, items):
    rank = {path: i for i, path in enumerate(LONGEST_FIRST)}
    path = {item: item.nodeid.split("::", 1)[0] for item in items}
    items.sort(key=lambda item: rank.get(path[item], len(rank)))
    for item in items:
        item.add_marker(pytest.mark.xdist_group(xdist_group_of(path[item])))


# ----------------------------------------------------------------- CPU seconds per test (optional)
# On a shared machine wall-clock durations (--durations) mostly measure the neighbours' load.
# CORRFUSION_CPU_DURATIONS=FILE appends one CSV row per test phase: nodeid, phase, wall seconds,
# CPU seconds of this process (every thread) and of the subprocesses it waited for, the xdist
# worker and the Unix time at the phase's end (how the files were spread over the workers). Used for the
# tables in tests/README.md.
_CPU_LOG = os.environ.get("CORRFUSION_CPU_DURATIONS")


def _cpu_now():
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.perf_counter(), own.ru_utime + own.ru_stime, kids.ru_utime + kids.ru_stime


if _CPU_LOG:
    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_setup(item):
        yield from _timed(item, "setup")

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_call(item):
        yield from _timed(item, "call")

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_teardown(item):
        yield from _timed(item, "teardown")


def _timed(item, phase):
    start = _cpu_now()
    yield
    end = _cpu_now()
    with open(_CPU_LOG, "a") as fh:
        fh.write(f"{item.nodeid},{phase},{end[0] - start[0]:.2f},{end[1] - start[1]:.2f},"
                 f"{end[2] - start[2]:.2f},{os.environ.get('PYTEST_XDIST_WORKER', 'main')},"
                 f"{time.time():.1f}\n")
