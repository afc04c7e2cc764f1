"""Runs that survive (issue 15): --runs N --resume, one writer per directory, the --resume settings
check, a kill between the log rows / checkpoint / state writes, --overwrite and TensorBoard,
unwritable outputs and image sizes that cannot fit, refused before TensorFlow starts."""

from __future__ import annotations

import csv
import json
import shutil
import socket
from pathlib import Path

import numpy as np
import pytest

import eval as eval_script
import train_cnn
from tests._runs import FAST, copy_run  # FAST: TensorBoard without the validation figures
from tests.utils.test_rundir_survival import hold_lock
from utils.cli import run_main


def train(data_dir, workdir, *extra, epochs=1):
    argv = ["--data_dir", str(data_dir), "--workdir", str(workdir), "-e", str(epochs), *FAST,
            *extra]
    return run_main(train_cnn.main, argv)


def one_error_line(capsys):
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def snapshot(root):
    root = Path(root)
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None)
            for p in sorted(root.rglob("*"))}


# ------------------------------------------------------- refused before TensorFlow (not slow)
def test_a_second_training_on_a_workdir_is_refused_naming_the_holder(demo_data, tmp_path, capsys):
    workdir = tmp_path / "w"
    proc = hold_lock(workdir)  # another process writing there
    try:
        assert train(demo_data, workdir) == 2
        err = one_error_line(capsys)
        assert f"pid {proc.pid} host {socket.gethostname()}" in err and str(workdir) in err
    finally:
        proc.kill()
        proc.wait()
    assert [p.name for p in workdir.iterdir()] == [".lock"]  # the holder's; nothing of ours


@pytest.mark.parametrize("flag", ["--workdir", "-rpath"])
def test_an_unwritable_output_is_refused_in_one_line(demo_data, tmp_path, capsys, flag):
    extra = ["-rpath", "/sys/x/res"] if flag == "-rpath" else []
    workdir = "/sys/x" if flag == "--workdir" else tmp_path / "w"
    assert train(demo_data, workdir, *extra) == 2
    err = one_error_line(capsys)
    assert "cannot write" in err and "/sys/x" in err
    assert not (tmp_path / "w").exists()


def test_an_image_size_that_cannot_fit_is_refused_with_the_estimate(demo_data, tmp_path, capsys):
    assert train(demo_data, tmp_path / "w", "--image_size", "4000") == 2
    err = one_error_line(capsys)
    assert err.startswith("error: --image_size 4000,4000: ") and "GiB" in err
    assert not (tmp_path / "w").exists()


def test_eval_into_an_unwritable_result_dir_is_refused_before_reading(demo_data, tmp_path, capsys):
    ckpt = tmp_path / "m.keras"
    ckpt.write_bytes(b"not read yet")
    rc = run_main(eval_script.main, ["-m", str(ckpt), "-tst", str(demo_data / "tst"),
                                     "-rpath", "/sys/x"])
    assert rc == 2 and "cannot write" in one_error_line(capsys)


# ---------------------------------------------------------------------------- training (slow)
def read_history(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def iterations(path):
    import model as cfn

    return int(np.asarray(cfn.load_model(path).optimizer.iterations))


def event_steps(run, split="trn", tag="loss/total"):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run / "tb" / split), size_guidance={"tensors": 0})
    acc.Reload()
    return [e.step for e in acc.Tensors(tag)]


STEPS = 6  # 84 training pairs, batch 16


@pytest.fixture(scope="module")
def two_runs(demo_data, tmp_path_factory):
    """--runs 2, 1 epoch each, with TensorBoard."""
    workdir = tmp_path_factory.mktemp("survive") / "w"
    assert train(demo_data, workdir, "--runs", "2") == 0
    return workdir


@pytest.fixture
def copy_of(tmp_path):
    def copy(run):
        dst = tmp_path / "copy"
        shutil.copytree(run, dst)
        return dst
    return copy


@pytest.mark.slow
def test_runs_resume_continues_starts_and_skips(two_runs, demo_data, copy_of):
    """Interrupted before run 1 began: --resume -e 2 continues run 0, starts run 1 and writes the
    summary; a second --resume finds both finished and trains nothing (issue 15 item 1)."""
    w = copy_of(two_runs)
    shutil.rmtree(w / "1")
    for name in ("summary.json", "summary.csv"):
        (w / "results" / name).unlink()
    assert train(demo_data, w, "--runs", "2", "--resume", epochs=2) == 0
    for k in ("0", "1"):
        assert [r["epoch"] for r in read_history(w / k / "history.csv")] == ["1", "2"]
        assert iterations(w / k / "checkpoints" / "last.keras") == 2 * STEPS
        assert json.loads((w / k / "args.json").read_text())["seed"] == 3 + int(k)
    summary = json.loads((w / "results" / "summary.json").read_text())
    assert len(summary["OA_t1"]["runs"]) == 2

    lasts = {k: (w / k / "checkpoints" / "last.keras").stat().st_mtime_ns for k in ("0", "1")}
    (w / "results" / "summary.json").unlink()
    assert train(demo_data, w, "--runs", "2", "--resume", epochs=2) == 0
    assert lasts == {k: (w / k / "checkpoints" / "last.keras").stat().st_mtime_ns
                     for k in ("0", "1")}
    assert json.loads((w / "results" / "summary.json").read_text()) == summary


@pytest.mark.slow
def test_resume_with_other_settings_is_refused_and_args_json_kept(two_runs, demo_data, copy_of,
                                                                 capsys):
    w = copy_of(two_runs)
    before = snapshot(w)
    assert train(demo_data, w, "--runs", "2", "--resume", "--lr", "0.1", "--hidden", "64",
                 epochs=2) == 2
    err = one_error_line(capsys)
    assert "--lr 0.1 (run: 0.01)" in err and "--hidden 64 (run: 32)" in err
    assert snapshot(w) == before


@pytest.mark.slow
def test_overwrite_replaces_the_old_runs_event_files(two_runs, demo_data, copy_of):
    w = copy_of(two_runs)
    assert train(demo_data, w, "--runs", "2", "--overwrite") == 0
    for split in ("trn", "val", "tst"):
        assert len(list((w / "0" / "tb" / split).glob("events.out.tfevents.*"))) == 1
    assert event_steps(w / "0") == [1]


@pytest.mark.slow
def test_a_kill_between_the_writes_of_an_epoch_resumes_exactly(resumed_run, demo_data, tmp_path):
    """Issue 15 item 8: (a) killed after epoch 2's log rows and TensorBoard events but before its
    checkpoint: the resume trains epoch 2 again and every file has each epoch once; (b) killed
    between last.keras and last_state.json: the resume goes on after the epoch last.keras holds
    (the optimiser's step count says so), not one epoch early. Starts from a copy of the session's
    ``resumed_run`` (1 epoch, then --resume -e 2; its checkpoints after epoch 1 kept)."""
    run, epoch1 = resumed_run
    w = copy_run(run, tmp_path / "w")
    for name in ("last.keras", "last_state.json"):  # (a): epoch 2's checkpoint never landed
        shutil.copy(epoch1 / name, w / "checkpoints" / name)
    assert train(demo_data, w, "--resume", epochs=2) == 0
    assert [r["epoch"] for r in read_history(w / "history.csv")] == ["1", "2"]
    assert [ln.split()[1] for ln in (w / "log.txt").read_text().splitlines()] == ["1/1", "2/2"]
    for split, tag in (("trn", "loss/total"), ("val", "accuracy/oa_t1"), ("tst", "loss/total")):
        assert event_steps(w, split, tag) == [1, 2], split
    assert iterations(w / "checkpoints" / "last.keras") == 2 * STEPS

    shutil.copy(epoch1 / "last_state.json", w / "checkpoints" / "last_state.json")  # (b)
    assert train(demo_data, w, "--resume", epochs=3) == 0
    assert iterations(w / "checkpoints" / "last.keras") == 3 * STEPS
    assert [r["epoch"] for r in read_history(w / "history.csv")] == ["1", "2", "3"]
    assert json.loads((w / "checkpoints" / "last_state.json").read_text())["epoch"] == 3
    assert not [p for p in w.rglob(".*") if p.is_file()]  # no temporary or lock files left


@pytest.mark.slow
def test_a_second_eval_into_a_result_dir_is_refused(two_runs, demo_data, tmp_path, capsys):
    out = tmp_path / "res"
    proc = hold_lock(out)
    try:
        rc = run_main(eval_script.main, ["-m", str(two_runs / "0"), "-tst", str(demo_data / "tst"),
                                         "-rpath", str(out), "--overwrite"])
        assert rc == 2
        assert f"pid {proc.pid}" in one_error_line(capsys)
    finally:
        proc.kill()
        proc.wait()
    assert [p.name for p in out.iterdir()] == [".lock"]
