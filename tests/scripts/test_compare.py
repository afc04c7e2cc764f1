"""compare.py on tiny demo data: one table row per method, values equal to each run's results."""

from __future__ import annotations

import csv
import json

import pytest

import compare
from utils.cli import run_main

pytestmark = pytest.mark.slow  # the comparison trains every method

METHODS = ["baseline", "corrfusion", "bovw"]


def argv(data, workdir, *extra):
    return ["--data_dir", str(data), "--methods", ",".join(METHODS), "--backbone", "small",
            "--runs", "2", "--workdir", str(workdir), "--bovw_words", "50", *extra,
            "--", "-e", "1", "--hidden", "32", "-b", "16", "-tb", "false"]


@pytest.fixture(scope="module")
def compare_run(demo_data, tmp_path_factory):
    """compare.py of METHODS, 2 runs each, on ``demo_data``: ``(workdir, reads)`` where ``reads``
    lists every (split, shard, key) whose image data was checked (shards.check_image_data)."""
    from data import shards

    workdir = tmp_path_factory.mktemp("compare") / "cmp"
    reads = []
    check = shards.check_image_data

    def counted(path, key, **kwargs):
        reads.append((path.parent.name, path.name, key))
        return check(path, key, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(shards, "check_image_data", counted)
        assert run_main(compare.main, argv(demo_data, workdir)) == 0
    return workdir, reads


@pytest.fixture(scope="module")
def compared(compare_run):
    return compare_run[0]


def run_metrics(workdir, method):
    return [json.loads((workdir / method / str(k) / "results" / "tst" / "results.json")
                       .read_text())["metrics"] for k in range(2)]


def test_table_has_one_row_per_method_matching_the_runs(compared):
    with open(compared / "comparison.csv", newline="") as fh:
        rows = {r["method"]: r for r in csv.DictReader(fh)}
    assert list(rows) == METHODS
    for method in METHODS:
        runs = run_metrics(compared, method)
        assert rows[method]["runs"] == "2"
        for key in ("OA_t1", "OA_t2", "OA_bi", "OA_tr", "change_f1"):
            vals = [r[key] for r in runs]
            mean = sum(vals) / 2
            std = abs(vals[0] - vals[1]) / 2**0.5  # the sample standard deviation (ddof = 1)
            assert float(rows[method][f"{key}_mean"]) == pytest.approx(mean, abs=1e-6)
            assert float(rows[method][f"{key}_std"]) == pytest.approx(std, abs=1e-6)
    md = (compared / "comparison.md").read_text().splitlines()
    assert md[0].startswith("| method | runs | OA_t1 | OA_t2 | OA_bi | OA_tr | change F1 |")
    assert len(md) == 2 + len(METHODS)
    bovw = next(line for line in md if line.startswith("| bovw "))
    oa = run_metrics(compared, "bovw")
    assert f"{100 * (oa[0]['OA_t1'] + oa[1]['OA_t1']) / 2:.2f} ±" in bovw
    assert (compared / "comparison.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_runs_use_the_same_seeds_across_methods(compared):
    for k in range(2):
        seeds = {json.loads((compared / m / str(k) / "args.json").read_text())["seed"]
                 for m in METHODS}
        assert seeds == {k}


def test_bovw_beats_chance_and_writes_the_eval_files(compared):
    for m in run_metrics(compared, "bovw"):
        assert m["OA_t1"] > 0.5 and m["OA_t2"] > 0.5  # 4 classes: chance is 0.25
    out = compared / "bovw" / "0" / "results" / "tst"
    for name in ("predictions.npz", "predictions.mat", "predictions.csv", "confusion_t1.png",
                 "change_map.png"):
        assert (out / name).is_file(), name


def test_rerun_continues_without_redoing_finished_runs(compared, demo_data):
    results = sorted(compared.rglob("results.json"))
    before = {p: p.stat().st_mtime_ns for p in results}
    # an interrupted comparison: one run's results are missing
    lost = compared / "baseline" / "1" / "results" / "tst" / "results.json"
    lost.unlink()
    assert run_main(compare.main, argv(demo_data, compared)) == 0
    assert lost.is_file()
    for p, t in before.items():
        if p != lost:
            assert p.stat().st_mtime_ns == t, f"{p} was redone"


def test_other_settings_in_the_same_workdir_are_refused(compared, demo_data, capsys):
    bad = argv(demo_data, compared)
    bad[bad.index("--bovw_words") + 1] = "60"
    assert run_main(compare.main, bad) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "compare.json" in err[0] and "other settings" in err[0]


def snapshot(root):
    """{relative path: bytes} of every file under root (a file root: {"": bytes})."""
    if root.is_file():
        return {"": root.read_bytes()}
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def assert_refused(capsys, rc, *fragments):
    assert rc == 2
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), captured.err
    assert "Traceback" not in captured.err
    for f in fragments:
        assert f in err[0], err[0]


def test_corrupt_compare_json_is_one_line(demo_data, tmp_path, capsys):
    workdir = tmp_path / "cmp"
    workdir.mkdir()
    for text in ("{broken", "[1]", '{"methods": []}'):
        (workdir / "compare.json").write_text(text)
        rc = run_main(compare.main, argv(demo_data, workdir))
        assert_refused(capsys, rc, str(workdir / "compare.json"), "another --workdir")
        assert snapshot(workdir) == {"compare.json": text.encode()}


def test_foreign_nonempty_workdir_is_refused_untouched(demo_data, tmp_path, capsys):
    """A directory compare.py did not start (no compare.json) is never resumed or overwritten."""
    workdir = tmp_path / "mine"
    (workdir / "baseline" / "0" / "checkpoints").mkdir(parents=True)
    (workdir / "baseline" / "0" / "checkpoints" / "best.keras").write_bytes(b"my model")
    (workdir / "comparison.md").write_text("my table\n")
    before = snapshot(workdir)
    rc = run_main(compare.main, argv(demo_data, workdir))
    assert_refused(capsys, rc, str(workdir), "compare.json", "new --workdir")
    assert snapshot(workdir) == before


def test_workdir_that_is_or_lies_under_a_file(demo_data, tmp_path, capsys):
    afile = tmp_path / "afile"
    afile.write_text("user file\n")
    for workdir in (afile, afile / "cmp"):
        rc = run_main(compare.main, argv(demo_data, workdir))
        assert_refused(capsys, rc, str(workdir), "file")
        assert afile.read_text() == "user file\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]


def test_empty_workdir_is_used(demo_data, tmp_path):
    """An empty existing directory is a fresh comparison (settings written; checks pass)."""
    workdir = tmp_path / "empty"
    workdir.mkdir()
    args = compare.parse_args(argv(demo_data, workdir))
    compare.check_settings(args)
    compare.write_settings(args)
    compare.check_settings(compare.parse_args(argv(demo_data, workdir)))  # now compare's own


def test_each_split_is_read_through_once_for_all_runs(compare_run):
    """compare.py reads every split's image data once, before anything is written; its CNN and
    BoVW runs (2 each of baseline, corrfusion, bovw) check the headers and labels again, not the
    image data."""
    _, reads = compare_run
    assert {split for split, _, _ in reads} == {"trn", "val", "tst"}
    assert len(reads) == len(set(reads)), sorted(reads)
