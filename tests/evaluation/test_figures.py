"""evaluation.figures: the diagrams need no run; run figures come from history.csv + an eval result dir."""

from pathlib import Path

import numpy as np
import pytest

from evaluation import figures as F
from evaluation.metrics import change_probability, compute_metrics
from tests.evaluation._images import assert_png


@pytest.fixture(scope="module")
def fake_run_master(tmp_path_factory):
    """A run directory as train_cnn.py + eval.py leave it, with made-up predictions (no TensorFlow),
    drawn once per module (write_outputs draws every evaluation figure); tests get copies."""
    from evaluation import evaluate as E

    tmp_path = tmp_path_factory.mktemp("fake_run")

    rng = np.random.default_rng(0)
    n, k = 30, 3
    names = ["water", "farmland", "urban"]
    y1 = rng.integers(0, k, n)
    y2 = np.where(rng.random(n) < 0.2, (y1 + 1) % k, y1)
    p1 = rng.dirichlet(np.ones(k), n) + np.eye(k)[y1]
    p2 = rng.dirichlet(np.ones(k), n) + np.eye(k)[y2]
    p1, p2 = p1 / p1.sum(1, keepdims=True), p2 / p2.sum(1, keepdims=True)
    row, col = np.divmod(np.arange(n), 6)
    preds = {
        "label_t1": y1, "label_t2": y2, "pred_t1": p1.argmax(1), "pred_t2": p2.argmax(1),
        "prob_t1": p1, "prob_t2": p2, "p_change": change_probability(p1, p2),
        "changed_true": y1 != y2, "changed_pred": p1.argmax(1) != p2.argmax(1),
        "changed_pred_threshold": change_probability(p1, p2) >= 0.5, "row": row, "col": col,
        "class_names": names,
    }  # fmt: skip
    run = tmp_path / "run"
    E.write_outputs(
        run / "results" / "tst", compute_metrics(y1, y2, p1, p2, class_names=names), preds
    )
    lines = ["epoch,loss,val_loss,oa_t1,val_oa_t1"] + [
        f"{e},{1 / (e + 1)},{1.1 / (e + 1)},{e / 4},{e / 5}" for e in range(4)
    ]
    (run / "history.csv").write_text("\n".join(lines) + "\n")
    return run


@pytest.fixture
def fake_run(fake_run_master, tmp_path):
    """A private copy of ``fake_run_master`` (tests may change its files)."""
    import shutil

    return Path(shutil.copytree(fake_run_master, tmp_path / "run"))


def test_diagrams_without_run(tmp_path):
    assert F.main(["--dpi", "72", "--out", str(tmp_path)]) == 0
    for name in F.DIAGRAMS:
        assert_png(tmp_path / name, 30_000, min_colors=6)


def test_run_figures(fake_run, tmp_path):
    assert F.find_result_dir(fake_run) == fake_run / "results" / "tst"
    assert F.main(["--dpi", "72", "--run", str(fake_run), "--out", str(tmp_path), "--no-diagrams"]) == 0
    for name in F.RUN_FIGURES:
        assert_png(tmp_path / name)
    assert not (tmp_path / "network.png").exists()


def test_bad_run_dir(tmp_path):
    from utils.cli import UsageError

    with pytest.raises(UsageError, match="no such run directory"):
        F.main(["--dpi", "72", "--run", str(tmp_path / "nope"), "--out", str(tmp_path)])


def run_cli(argv, capsys):
    from utils.cli import run_main

    capsys.readouterr()
    rc = run_main(F.main, [str(a) for a in argv])
    return rc, capsys.readouterr().err


def assert_one_line_error(rc, err, *fragments):
    assert rc == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for f in fragments:
        assert f in lines[0], lines[0]


def test_existing_figures_need_overwrite(fake_run, tmp_path, capsys):
    out = tmp_path / "myfigs"
    out.mkdir()
    (out / "network.png").write_bytes(b"mine")
    (out / "notes.txt").write_text("kept\n")
    rc, err = run_cli(["--dpi", "72", "--run", fake_run, "--out", out], capsys)
    assert_one_line_error(rc, err, str(out), "network.png", "--overwrite")
    assert sorted(p.name for p in out.iterdir()) == ["network.png", "notes.txt"]
    assert (out / "network.png").read_bytes() == b"mine"
    # files of other names are no obstacle; --overwrite replaces
    assert F.main(["--dpi", "72", "--run", str(fake_run), "--out", str(out), "--no-diagrams"]) == 0
    rc, err = run_cli(["--dpi", "72", "--run", fake_run, "--out", out, "--no-diagrams"], capsys)
    assert_one_line_error(rc, err, "training_curves.png", "more", "--overwrite")
    assert F.main(["--dpi", "72", "--run", str(fake_run), "--out", str(out), "--overwrite"]) == 0
    assert_png(out / "network.png", 30_000)
    assert (out / "notes.txt").read_text() == "kept\n"


def test_out_that_is_or_lies_under_a_file(tmp_path, capsys):
    afile = tmp_path / "afile"
    afile.write_text("user file\n")
    for out in (afile, afile / "figs"):
        rc, err = run_cli(["--out", out], capsys)
        assert_one_line_error(rc, err, str(out), "file")
    assert afile.read_text() == "user file\n"


@pytest.mark.parametrize(
    "name, content, fragment",
    [
        ("results.json", b"{bad", "unreadable"),
        ("results.json", b'{"metrics": {"OA_t1": 1.0}}', "class_names"),
        ("predictions.npz", b"not a zip", "unreadable"),
        ("history.csv", b"", "unreadable"),
        # a row cut by a full disk, the next one appended onto it (issue 15 item 5)
        ("history.csv", b"epoch,loss,oa_t1\n1,0.5,0.1\n2,0.4,3,0.3,0.2\n", "line 3: 5 fields, expected 3"),
        ("history.csv", b"epoch,loss,oa_t1\n1,0.5,0.1\n2,0.4\n", "line 3: 2 fields, expected 3"),
    ],
)
def test_bad_run_files_are_refused_before_drawing(
    fake_run, tmp_path, capsys, name, content, fragment
):
    path = fake_run / name if name == "history.csv" else fake_run / "results" / "tst" / name
    path.write_bytes(content)
    out = tmp_path / "figs"
    rc, err = run_cli(["--dpi", "72", "--run", fake_run, "--out", out], capsys)
    assert_one_line_error(rc, err, str(path), fragment)
    assert not out.exists()


def test_map_coordinates_skip_the_maps(fake_run, tmp_path, caplog):
    """row/col far apart (map coordinates): every figure but the maps, and a warning saying why."""
    import json

    from evaluation import evaluate as E

    res = fake_run / "results" / "tst"
    metrics = json.loads((res / "results.json").read_text())["metrics"]
    with np.load(res / "predictions.npz") as z:
        preds = {k: z[k] for k in z.files}
    preds["row"] = preds["row"] * 150 + 3_400_000
    preds["col"] = preds["col"] * 150 + 500_000
    preds["row"][0] = 0
    metrics["split_dir"] = "data/tst"
    E.write_outputs(res, metrics, preds, overwrite=True)
    out = tmp_path / "figs"
    assert F.main(["--dpi", "72", "--run", str(fake_run), "--out", str(out), "--no-diagrams"]) == 0
    assert sorted(p.name for p in out.iterdir()) == sorted({"training_curves.png", *E.FIGURE_FILES})
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any("data/tst: row/col" in m and "tile grid indices" in m for m in warned), warned


def test_an_eval_directory_of_several_splits_names_the_one_to_pass(fake_run, tmp_path, capsys):
    import shutil

    results = fake_run / "results"
    shutil.copytree(results / "tst", results / "val")
    (results / "results.json").write_text('{"splits": {}}')  # eval.py's top level
    out = tmp_path / "figs"
    rc, err = run_cli(["--result", results, "--out", out, "--no-diagrams"], capsys)
    assert_one_line_error(rc, err, str(results), "tst, val", f"--result {results / 'val'}")
    assert not out.exists()


def test_formats_dpi_colours_and_the_runs_diagram_settings(fake_run, tmp_path):
    import json

    (fake_run / "args.json").write_text(json.dumps({"args": {"hidden": 64, "reduction": 4}}))
    out = tmp_path / "figs"
    assert F.main(["--dpi", "72", "--run", str(fake_run), "--out", str(out), "--format", "png,svg",
                   "--dpi", "60", "--colors", "water=#000000"]) == 0
    for name in (*F.DIAGRAMS, *F.RUN_FIGURES):
        assert (out / name).is_file() and (out / name).with_suffix(".svg").is_file(), name
    net = (out / "network.svg").read_text()
    assert "FC 64" in net and "r = 4" in net and "FC 1024" not in net
    assert "n×16" in (out / "corrfusion_module.svg").read_text()  # d / r
    assert "#000000" in (out / "class_maps.svg").read_text()
    curves = (out / "training_curves.svg").read_text()
    assert "OA t1" in curves and "train" not in curves and "val" in curves
    assert F.main(["--dpi", "72", "--out", str(tmp_path / "d"), "--hidden", "128", "--format", "svg"]) == 0
    assert "FC 128" in (tmp_path / "d" / "network.svg").read_text()


@pytest.mark.parametrize("argv", [["--format", "png,gif"], ["--colors", "water"],
                                  ["--colors", "water=notacolour"], ["--dpi", "0"]])
def test_bad_figure_options_are_usage_errors(argv, tmp_path):
    with pytest.raises(SystemExit) as exc:
        F.main(["--dpi", "72", "--out", str(tmp_path / "x"), *argv])
    assert exc.value.code == 2 and not (tmp_path / "x").exists()


def test_overlay_needs_the_evaluated_split(fake_run, tmp_path, capsys):
    import json

    from data import synthetic

    out = tmp_path / "figs"
    rc, err = run_cli(["--dpi", "72", "--run", fake_run, "--out", out, "--overlay",
                       "--no-diagrams"], capsys)
    assert_one_line_error(rc, err, "--overlay", "split_dir")
    assert not out.exists()
    # with the split that was evaluated: the maps are drawn over its date-2 tiles
    synthetic.generate(tmp_path / "data", pairs=40, size=16, classes=3, seed=0)
    split = tmp_path / "data" / "tst"
    from data.split_summary import read_labels

    labels = read_labels(split)
    res = fake_run / "results" / "tst"
    with np.load(res / "predictions.npz") as z:
        preds = {k: z[k] for k in z.files}
    n = len(labels["label_t1"])
    preds = {k: (v[:n] if v.ndim and len(v) == len(preds["p_change"]) else v)
             for k, v in preds.items()}
    preds["row"], preds["col"] = labels["row"], labels["col"]
    np.savez(res / "predictions.npz", **preds)
    doc = json.loads((res / "results.json").read_text())
    doc["metrics"]["split_dir"] = str(split)
    (res / "results.json").write_text(json.dumps(doc))
    assert F.main(["--dpi", "72", "--run", str(fake_run), "--out", str(out), "--overlay",
                   "--no-diagrams"]) == 0
    assert_png(out / "change_map.png")
