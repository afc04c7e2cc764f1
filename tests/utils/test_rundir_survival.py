"""utils.rundir: one writer per directory (DirLock, two processes), writable output paths,
temporary files of killed saves, the resume state committed inside last.keras, the --resume
settings check (issue 15 items 3, 4, 8, 9, 12)."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import zipfile
from pathlib import Path
from types import SimpleNamespace

import pytest

from utils import rundir
from utils.cli import UsageError
from utils.rundir import DirLock, RunDirError

ROOT = Path(__file__).resolve().parents[2]

HOLD = """
import sys, time
sys.path.insert(0, {root!r})
from utils.rundir import DirLock
lock = DirLock({d!r}).acquire()
print("locked", flush=True)
time.sleep(60)
"""


def hold_lock(directory):
    """A second process holding the lock of ``directory`` (killed by the caller)."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD.format(root=str(ROOT), d=str(directory))],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_a_second_process_is_refused_naming_the_holder(tmp_path):
    proc = hold_lock(tmp_path / "w")
    try:
        with pytest.raises(RunDirError) as e:
            DirLock(tmp_path / "w").acquire()
        msg = str(e.value)
        assert f"pid {proc.pid}" in msg and socket.gethostname() in msg and str(tmp_path / "w") in msg
        assert "\n" not in msg
    finally:
        proc.kill()
        proc.wait()
    # the holder was killed: its lock file stays, naming a dead process, and does not block
    assert (tmp_path / "w" / ".lock").read_text().startswith(f"pid {proc.pid} ")
    with DirLock(tmp_path / "w"):
        assert (tmp_path / "w" / ".lock").read_text().startswith(f"pid {os.getpid()} ")
    assert not (tmp_path / "w" / ".lock").exists()


def test_release_removes_the_lock_and_a_directory_it_created_empty(tmp_path):
    with DirLock(tmp_path / "new" / "w"):
        assert (tmp_path / "new" / "w").is_dir()
    assert not (tmp_path / "new" / "w").exists()
    (tmp_path / "kept").mkdir()
    with DirLock(tmp_path / "kept"):
        (tmp_path / "kept" / "f").write_text("x")
    assert [p.name for p in (tmp_path / "kept").iterdir()] == ["f"]


def test_a_stale_lock_file_does_not_make_a_directory_non_empty(tmp_path):
    (tmp_path / ".lock").write_text("pid 1 host elsewhere\n")
    assert not rundir.is_nonempty_dir(tmp_path)
    rundir.check_writable_dir(tmp_path, overwrite=False)


@pytest.mark.parametrize("path", ["/sys/x/run", "/proc/x"])
def test_unwritable_system_paths_are_refused(path):
    with pytest.raises(RunDirError, match="cannot write"):
        rundir.check_can_create_dir(path)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a 0o500 directory")
def test_a_read_only_directory_is_refused(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        with pytest.raises(RunDirError, match="cannot write"):
            rundir.check_can_create_dir(ro / "run")
    finally:
        ro.chmod(0o700)


def test_the_write_test_leaves_nothing(tmp_path):
    rundir.check_can_create_dir(tmp_path / "a" / "b")
    assert list(tmp_path.iterdir()) == []


def test_stale_temp_files_of_dead_processes_are_removed(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = [tmp_path / f".best.tmp{dead.pid}.keras", tmp_path / f".history.csv.tmp{dead.pid}.ab_12"]
    live = tmp_path / f".last.tmp{os.getpid()}.keras"
    user = tmp_path / "notes.tmp123.txt"  # not a hidden temp file of ours
    for f in (*stale, live, user):
        f.write_bytes(b"")
    assert sorted(rundir.remove_stale_temp_files(tmp_path)) == sorted(stale)
    assert live.exists() and user.exists()


class Interrupted(BaseException):
    pass


class FakeModel:
    def __init__(self, fail=False):
        self.fail = fail

    def save(self, path):
        Path(path).write_bytes(b"")  # a save cut short leaves a 0-byte file
        if self.fail:
            raise Interrupted


def test_an_interrupted_save_removes_its_temp_file(tmp_path):
    with pytest.raises(Interrupted):
        rundir.atomic_save_model(FakeModel(fail=True), tmp_path / "best.keras")
    assert list(tmp_path.iterdir()) == []


def test_an_interrupted_write_removes_its_temp_file(tmp_path, monkeypatch):
    def boom(*a):
        raise Interrupted

    monkeypatch.setattr(rundir.os, "replace", boom)
    with pytest.raises(Interrupted):
        rundir.atomic_write_bytes(tmp_path / "history.csv", b"x")
    assert list(tmp_path.iterdir()) == []


def _keras_like(path, state=None):
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("config.json", "{}")
        if state is not None:
            zf.writestr(rundir.STATE_MEMBER, json.dumps(state))


def _paths(tmp_path):
    ckpt = tmp_path / "checkpoints"
    ckpt.mkdir(exist_ok=True)
    return rundir.RunPaths(tmp_path, tmp_path, ckpt, tmp_path / "tb", tmp_path / "results")


def test_the_state_inside_last_keras_wins_over_a_lagging_last_state_json(tmp_path):
    """A kill between the rename of last.keras and the write of last_state.json."""
    paths = _paths(tmp_path)
    _keras_like(paths.last, {"epoch": 2, "best_score": 1.0, "best_epoch": 2})
    paths.state.write_text(json.dumps({"epoch": 1, "best_score": 0.5, "best_epoch": 1}))
    assert rundir.resume_state(paths)["epoch"] == 2
    # the first epoch: last.keras committed, last_state.json not yet written
    paths.state.unlink()
    assert rundir.resume_state(paths)["epoch"] == 2
    # a checkpoint of an older version, without the state inside: last_state.json
    _keras_like(paths.last)
    paths.state.write_text(json.dumps({"epoch": 1, "best_score": 0.5}))
    assert rundir.resume_state(paths)["epoch"] == 1


def test_atomic_save_model_stores_the_state_in_the_file(tmp_path):
    class Model:
        def save(self, path):
            _keras_like(path)

    rundir.atomic_save_model(Model(), tmp_path / "last.keras", state={"epoch": 3, "best_score": None})
    assert rundir.read_embedded_state(tmp_path / "last.keras") == {"epoch": 3, "best_score": None}


def _config(**kw):
    from parser import train_parser
    from training.config import TrainConfig

    argv = ["--data_dir", "d", "--backbone", "small", "--hidden", "64", "--lr", "0.01"]
    for k, v in kw.items():
        argv += [k, v]
    return TrainConfig.from_args(train_parser().parse_args(argv))


def test_resume_with_other_settings_is_refused_listing_each(tmp_path):
    paths = _paths(tmp_path)
    (tmp_path / "args.json").write_text(json.dumps({"args": _config().to_args()}))
    # may differ: the epochs, the devices, what TensorBoard shows
    rundir.check_resume_settings(_config(**{"-e": "50", "-g": "cpu", "--tb_images": "0"}), paths)
    with pytest.raises(UsageError) as e:
        rundir.check_resume_settings(_config(**{"--backbone": "vgg16", "--method": "baseline",
                                                "--hidden": "512", "--lr": "0.1"}), paths)
    msg = str(e.value)
    assert msg.startswith(str(tmp_path / "args.json"))
    for part in ("--backbone vgg16 (run: small)", "--method baseline (run: corrfusion)",
                 "--hidden 512 (run: 64)", "--lr 0.1 (run: 0.01)"):
        assert part in msg
    with pytest.raises(UsageError, match=r"--batch_size 8 \(run: 32\)"):
        rundir.check_resume_settings(_config(**{"-b": "8"}), paths)


def test_resume_modes_of_several_runs(tmp_path):
    config = SimpleNamespace(resume=True, runs=3, epochs=2, tst_dir="tst", workdir=str(tmp_path),
                             method="m", backbone="b", log_path=None, model_path=None,
                             tb_path=None, result_path=None)
    done, half = rundir.run_paths(config, 0), rundir.run_paths(config, 1)
    for paths, epoch in ((done, 2), (half, 1)):
        paths.ckpt_dir.mkdir(parents=True)
        _keras_like(paths.last, {"epoch": epoch, "best_score": 1.0})
    (done.result_dir / "tst").mkdir(parents=True)
    (done.result_dir / "tst" / "results.json").write_text("{}")
    assert rundir.resume_modes(config) == ["done", "resume", "fresh"]
    # trained all epochs but not evaluated (killed in the test evaluation): resumed
    (done.result_dir / "tst" / "results.json").unlink()
    assert rundir.resume_modes(config)[0] == "resume"


def test_resume_with_nothing_trained_is_refused(tmp_path):
    config = SimpleNamespace(resume=True, runs=2, epochs=2, tst_dir=None, workdir=str(tmp_path),
                             method="m", backbone="b", log_path=None, model_path=None,
                             tb_path=None, result_path=None)
    with pytest.raises(UsageError, match="no last checkpoint to resume from"):
        rundir.resume_modes(config)


SIGTERM_MAIN = """
import sys, time
sys.path.insert(0, {root!r})
from utils.cli import run_main
from utils.rundir import DirLock

def main(argv):
    with DirLock({d!r}):
        print("ready", flush=True)
        time.sleep(60)

sys.exit(run_main(main))
"""


def test_sigterm_is_one_line_exit_143_and_releases_the_lock(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", SIGTERM_MAIN.format(root=str(ROOT),
                                                                      d=str(tmp_path / "w"))],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 143
    assert err.strip().splitlines() == ["terminated"]
    assert not (tmp_path / "w").exists()  # lock released, the empty directory it made removed
