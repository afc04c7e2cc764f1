"""training.multiworker and the TF_CONFIG path: batch slices, the cluster from TF_CONFIG, the checks
before TensorFlow starts, and (slow) two worker processes on 127.0.0.1 against one model.fit
process with the same global batch."""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from data.loader import batch_plan
from training import multiworker
from utils import devices
from utils.cli import UsageError, run_main

ROOT = Path(__file__).resolve().parents[2]
#: per-replica figures (docs/DESIGN.md §2.4): not equal to one process's
PER_REPLICA = ("cancorr",)


# ----------------------------------------------------------------------------------- batch slices
def flatten(segments):
    return [(f, i) for f, start, stop in segments for i in range(start, stop)]


@pytest.mark.parametrize("workers", [1, 2, 3])
@pytest.mark.parametrize("training", [True, False])
def test_workers_slices_make_up_each_one_process_batch(workers, training):
    pairs = [7, 5, 6]
    whole = batch_plan(pairs, 4, training, seed=3, epoch=2)
    parts = [batch_plan(pairs, 4, training, seed=3, epoch=2, part=(w, workers))
             for w in range(workers)]
    assert all(len(p) == len(whole) for p in parts)
    for b, batch in enumerate(whole):
        slices = [flatten(p[b]) for p in parts]
        assert sum(slices, []) == flatten(batch)  # in order: worker 0's rows first
        sizes = [len(s) for s in slices]
        assert max(sizes) - min(sizes) <= 1


# ---------------------------------------------------------------------------------------- cluster
def tf_config(monkeypatch, cluster, task_type="worker", index=0):
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": cluster,
                                                "task": {"type": task_type, "index": index}}))


def test_no_tf_config_is_no_cluster(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    assert devices.cluster_from_env("tensorflow") is None


def test_worker_0_is_the_chief_unless_there_is_a_chief(monkeypatch):
    two = {"worker": ["127.0.0.1:1", "127.0.0.1:2"]}
    tf_config(monkeypatch, two, "worker", 0)
    c = devices.cluster_from_env("tensorflow")
    assert (c.num_workers, c.is_chief) == (2, True)
    tf_config(monkeypatch, two, "worker", 1)
    assert not devices.cluster_from_env("tensorflow").is_chief
    with_chief = {"chief": ["127.0.0.1:0"], **two}
    tf_config(monkeypatch, with_chief, "worker", 0)
    c = devices.cluster_from_env("tensorflow")
    assert (c.num_workers, c.is_chief) == (3, False)
    tf_config(monkeypatch, with_chief, "chief", 0)
    assert devices.cluster_from_env("tensorflow").is_chief


@pytest.mark.parametrize("raw, match", [
    ("{not json", "TF_CONFIG: JSONDecodeError"),
    ('{"cluster": {"worker": ["a:1"]}}', "TF_CONFIG: KeyError"),
    ('{"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": 1}}',
     "task worker 1 is not in the cluster"),
])
def test_a_bad_tf_config_is_a_usage_error(monkeypatch, raw, match):
    monkeypatch.setenv("TF_CONFIG", raw)
    with pytest.raises(UsageError, match=match):
        devices.cluster_from_env("tensorflow")


def test_tf_config_on_another_backend_is_a_usage_error(monkeypatch):
    tf_config(monkeypatch, {"worker": ["127.0.0.1:1"]})
    with pytest.raises(UsageError, match="TF_CONFIG: multi-worker training needs the TensorFlow"):
        devices.cluster_from_env("jax")


def test_the_backend_is_known_without_importing_keras(monkeypatch, tmp_path):
    """devices.configured_backend: Keras' own order (KERAS_BACKEND, keras.json in KERAS_HOME,
    tensorflow) while Keras is not loaded; Keras' answer once it is."""
    import keras

    assert devices.configured_backend() == keras.backend.backend() == "tensorflow"
    monkeypatch.delitem(sys.modules, "keras")  # as before anything imported Keras
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    monkeypatch.delenv("KERAS_BACKEND", raising=False)
    assert devices.configured_backend() == "tensorflow"  # no keras.json
    (tmp_path / "keras.json").write_text(json.dumps({"backend": "jax", "floatx": "float32"}))
    assert devices.configured_backend() == "jax"
    monkeypatch.setenv("KERAS_BACKEND", "torch")  # the variable wins, as in Keras
    assert devices.configured_backend() == "torch"
    (tmp_path / "keras.json").write_text("{not json")
    monkeypatch.delenv("KERAS_BACKEND")
    assert devices.configured_backend() == "tensorflow"
    assert "keras" not in sys.modules


def test_a_supervisor_starts_no_tensorflow(tmp_path):
    """With TF_CONFIG, train_cnn.py's process only supervises the worker child that trains: it
    reaches the supervision without importing Keras, TensorFlow or the evaluation's plotting and
    metrics libraries (5 CPU s and their memory per worker saved). One new Python process: the
    suite's own has them loaded."""
    code = ("import sys, json\n"
            "import training.multiworker as mw\n"
            "def supervise(cluster, join_timeout):\n"
            "    print(json.dumps({'heavy': [m for m in ('keras', 'tensorflow', 'jax', 'matplotlib', 'sklearn',"
            " 'pandas') if m in sys.modules],"
            " 'workers': cluster.num_workers, 'timeout': join_timeout}))\n"
            "    return 0\n"
            "mw.supervise = supervise\n"
            "import train_cnn\n"
            "sys.exit(train_cnn.main(sys.argv[1:]))\n")
    from data import synthetic

    synthetic.generate(tmp_path / "d", pairs=12, size=16, classes=2, change_rate=0.2, seed=0)
    env = {**os.environ, "TF_CONFIG": json.dumps({
        "cluster": {"worker": ["127.0.0.1:1", "127.0.0.1:2"]}, "task": {"type": "worker", "index": 0}})}
    env.pop("KERAS_BACKEND", None)
    proc = subprocess.run([sys.executable, "-c", code, "--data_dir", str(tmp_path / "d"), "--workdir",
                           str(tmp_path / "w"), "--join_timeout", "7"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == {"heavy": [], "workers": 2, "timeout": 7}
    assert not (tmp_path / "w").exists()


class Summary:
    def __init__(self, n, split_dir="trn"):
        self.n_pairs, self.split_dir = n, split_dir


class Config:
    batch_size = 16


def test_a_last_batch_smaller_than_the_workers_is_refused():
    multiworker.check_batches(Config, {"trn": Summary(34), "val": Summary(32)}, 2)
    with pytest.raises(UsageError, match="d/val: its last batch of -b 16 holds 1 pair"):
        multiworker.check_batches(Config, {"trn": Summary(34), "val": Summary(33, "d/val")}, 2)


def test_a_non_chief_workdir_is_temporary_and_takes_the_chiefs_resume_files(tmp_path, monkeypatch):
    from training.config import TrainConfig
    from utils.rundir import run_paths

    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)  # re-read TMPDIR
    fields = {f: None for f in TrainConfig.__dataclass_fields__}
    config = TrainConfig(**{**fields, "workdir": str(tmp_path / "run"), "runs": 1, "resume": True,
                            "log_path": str(tmp_path / "logs")})
    chief = run_paths(config, 0)
    chief.ckpt_dir.mkdir(parents=True)
    chief.last.write_bytes(b"last")
    chief.state.write_text("{}")
    with multiworker.temporary_workdir(config) as worker:
        mine = run_paths(worker, 0)
        assert mine.last.read_bytes() == b"last" and mine.state.is_file()
        assert Path(worker.workdir).is_relative_to(tmp_path / "tmp")
        assert worker.log_path is None and mine.log_dir == mine.root
    assert list((tmp_path / "tmp").iterdir()) == []
    assert chief.last.read_bytes() == b"last"


# ----------------------------------------------------------------------------- two workers, slow
def free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


ARGS = ["--backbone", "small", "--hidden", "16", "-b", "16", "--lr", "0.01", "--seed", "3",
        "-e", "2", "-g", "cpu", "-tb", "false"]


def read_history(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.mark.slow
def test_two_workers_on_loopback_train_as_one_process_and_only_the_chief_writes(tmp_path):
    import train_cnn
    from data import synthetic

    data = tmp_path / "data"
    synthetic.generate(data, pairs=80, size=16, classes=4, change_rate=0.1, seed=1)  # 56/8/16
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    cluster = {"worker": [f"127.0.0.1:{p}" for p in free_ports(2)]}
    env = {**os.environ, "TMPDIR": str(tmp), "TF_CPP_MIN_LOG_LEVEL": "2", "MPLBACKEND": "Agg"}
    argv = [sys.executable, str(ROOT / "train_cnn.py"), "--data_dir", str(data), *ARGS]
    workers = [subprocess.Popen(
        [*argv, "--workdir", str(tmp_path / "mw")], cwd=tmp_path, stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE, text=True,
        env={**env, "TF_CONFIG": json.dumps({"cluster": cluster,
                                             "task": {"type": "worker", "index": i}})})
        for i in range(2)]
    try:  # the reference, model.fit in this process, while they train (they wait for each other)
        assert run_main(train_cnn.main, ["--data_dir", str(data), *ARGS, "--workdir",
                                         str(tmp_path / "one")]) == 0
        errs = [w.communicate(timeout=240)[1] for w in workers]
    finally:
        for w in workers:
            w.kill()
    assert [w.returncode for w in workers] == [0, 0], "\n".join(e[-3000:] for e in errs)

    # one run directory, the chief's; nothing left of the other worker's
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "mw", "one", "tmp"]
    assert list(tmp.iterdir()) == []
    assert "writes to" in errs[1] and "writes to" not in errs[0]
    assert (tmp_path / "mw" / "results" / "tst" / "results.json").is_file()
    assert sorted(p.name for p in (tmp_path / "mw" / "checkpoints").iterdir()) == sorted(
        p.name for p in (tmp_path / "one" / "checkpoints").iterdir())
    args = json.loads((tmp_path / "mw" / "args.json").read_text())
    assert "MultiWorkerMirroredStrategy (worker 0 of 2 workers)" in args["devices"]["strategy"]

    # the same history as model.fit in one process with the same global batch
    mw, ref = read_history(tmp_path / "mw" / "history.csv"), read_history(tmp_path / "one" /
                                                                         "history.csv")
    assert len(mw) == len(ref) == 2 and set(mw[0]) == set(ref[0])
    keys = [k for k in ref[0] if not k.endswith(PER_REPLICA)]
    assert {"loss", "ce_t1", "corr_loss", "decov_loss", "oa_t1", "val_loss", "val_oa_t1",
            "tst_loss"} <= set(keys)
    for a, b in zip(mw, ref, strict=True):
        np.testing.assert_allclose([float(a[k]) for k in keys], [float(b[k]) for k in keys],
                                   rtol=1e-4, atol=1e-6, err_msg=str(keys))
    tst = [json.loads((tmp_path / run / "results" / "tst" / "results.json").read_text())["metrics"]
           for run in ("mw", "one")]
    assert tst[0]["OA_t1"] == pytest.approx(tst[1]["OA_t1"])


# ------------------------------------------------------------- a worker that never joins (issue 24)
def start_lonely_worker(tmp_path, demo_data, *extra):
    """Worker 0 of a two-worker TF_CONFIG whose worker 1 never starts."""
    port, never = free_ports(2)
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "-1", "MPLBACKEND": "Agg",
           "TF_CONFIG": json.dumps({"cluster": {"worker": [f"127.0.0.1:{port}",
                                                           f"127.0.0.1:{never}"]},
                                    "task": {"type": "worker", "index": 0}})}
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)  # what a user has: the start-up lines must be hidden
    return subprocess.Popen([sys.executable, str(ROOT / "train_cnn.py"), "--data_dir",
                             str(demo_data), "--workdir", str(tmp_path / "w"), *ARGS, *extra],
                            env=env, cwd=ROOT, stderr=subprocess.PIPE, text=True)


def read_until_waiting(proc, timeout=240):
    """stderr lines up to the 'waiting for workers' log line."""
    lines, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        lines.append(line.rstrip("\n"))
        if "waiting for workers" in line:
            return lines
    proc.kill()
    raise AssertionError(f"no 'waiting for workers' line: {lines}")


def only_log_lines(lines):
    """Nothing but the log format's lines (HH:MM:SS LEVEL ...) and the last words: no TensorFlow
    start-up line."""
    pattern = re.compile(r"^\d\d:\d\d:\d\d (INFO|WARNING|ERROR) |^error: |^interrupted$|^terminated$")
    return [ln for ln in lines if ln.strip() and not pattern.match(ln)]


@pytest.mark.slow
def test_a_worker_waiting_for_its_peers_says_so_without_tensorflows_lines(demo_data, tmp_path):
    """The wait for a worker that never starts is logged, TensorFlow's start-up lines stay
    hidden, and nothing is written before the workers have joined (the process is killed)."""
    proc = start_lonely_worker(tmp_path, demo_data)
    try:
        lines = read_until_waiting(proc)
        time.sleep(3.0)  # inside TensorFlow's native wait
        assert proc.poll() is None and not (tmp_path / "w").exists()
    finally:
        proc.kill()  # SIGKILL: the supervised child dies with it (PR_SET_PDEATHSIG)
        _, rest = proc.communicate(timeout=60)
    lines += rest.splitlines()
    assert not child_alive(tmp_path)
    assert "waiting for workers: worker 0 of 2, for the 1 other(s) in TF_CONFIG to join" \
        in lines[-1], lines
    assert only_log_lines(lines) == [], lines
    assert not (tmp_path / "w").exists()


@pytest.mark.parametrize("value", ["-1", "inf", "nan", "soon"])
def test_a_bad_join_timeout_is_a_usage_error_in_one_line(value, capsys):
    from parser import train_parser

    with pytest.raises(SystemExit) as e:
        train_parser().parse_args(["--join_timeout", value])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "--join_timeout" in err and "a finite number >= 0" in err, err


def test_join_timeout_defaults_to_600_s_and_0_is_no_limit():
    from parser import train_parser

    assert train_parser().parse_args([]).join_timeout == 600
    assert train_parser().parse_args(["--join_timeout", "0"]).join_timeout == 0


@pytest.mark.slow  # a real worker process waits out its join timeout
def test_a_worker_whose_peer_never_joins_gives_up_after_join_timeout(demo_data, tmp_path):
    """--join_timeout 5: one 'error:' line naming TF_CONFIG and the timeout, exit status 75
    (README), no process left, nothing written."""
    from utils.cli import JOIN_TIMEOUT_STATUS

    start = time.monotonic()
    proc = start_lonely_worker(tmp_path, demo_data, "--join_timeout", "5")
    try:
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    lines = err.strip().splitlines()
    assert proc.returncode == JOIN_TIMEOUT_STATUS == 75, err
    assert lines[-1] == ("error: TF_CONFIG: the other 1 worker(s) did not join worker 0 within "
                         "5 s (--join_timeout); nothing was written"), err
    assert any("waiting for workers" in ln for ln in lines), err
    assert only_log_lines(lines) == [], lines
    assert time.monotonic() - start < 90
    assert not (tmp_path / "w").exists()


@pytest.mark.parametrize("sig, status, word", [
    pytest.param(signal.SIGTERM, 143, "terminated", marks=pytest.mark.slow),  # waits for a peer
    pytest.param(signal.SIGINT, 130, "interrupted", marks=pytest.mark.slow),  # the same path
])
def test_sigterm_or_ctrl_c_while_waiting_for_workers_ends_it(demo_data, tmp_path, sig, status,
                                                             word):
    """SIGTERM/SIGINT during TensorFlow's join: 143/130 within seconds with the single-worker
    run's line, the training child gone too, nothing written."""
    proc = start_lonely_worker(tmp_path, demo_data)
    try:
        read_until_waiting(proc)
        time.sleep(1.0)  # inside TensorFlow's native wait
        sent = time.monotonic()
        proc.send_signal(sig)
        _, rest = proc.communicate(timeout=30)
        elapsed = time.monotonic() - sent
    finally:
        proc.kill()
    assert proc.returncode == status, rest
    assert rest.strip().splitlines()[-1] == word, rest
    assert elapsed < 10, elapsed
    assert not (tmp_path / "w").exists()
    # the supervised child (same command line, with the marker) has not outlived it
    assert not child_alive(tmp_path)


def child_alive(tmp_path) -> bool:
    """A process of start_lonely_worker's command line (the supervised child has the same)."""
    out = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    return str(tmp_path / "w") in out


def test_the_supervisors_poll_loop_notes_signals_instead_of_raising_inside_it():
    """While the supervisor polls its child, SIGINT/SIGTERM are noted, not raised: an exception
    raised inside Popen.poll could leave its wait lock held and the clean-up's child.wait() would
    hang (seen once under xdist: a Ctrl-C test waited 30 s). Afterwards the handlers are back."""
    from training.multiworker import _signals_noted
    from utils.cli import Terminated, sigterm_unwinds

    with sigterm_unwinds():
        before = (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM))
        with _signals_noted() as noted:
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.05)  # handlers run between bytecodes
        assert noted == [signal.SIGINT, signal.SIGTERM]
        assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before
        with pytest.raises(Terminated):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.05)
