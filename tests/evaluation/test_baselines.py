"""The BoVW baselines run on a dataset (evaluation.baselines): demo accuracy, KSFA end to end, CLI."""

import json

import numpy as np
import pytest

from evaluation import baselines

FAST = {"patch": 8, "words": 50}  # 32x32 demo tiles -> 16 windows per image


def test_bovw_hik_beats_chance(demo_data):
    from data.split_summary import read_labels

    metrics, preds = baselines.run_bovw(demo_data / "trn", demo_data / "tst", **FAST)
    labels = read_labels(demo_data / "tst")
    np.testing.assert_array_equal(preds["label_t1"], labels["label_t1"])
    np.testing.assert_array_equal(preds["pred_t1"], preds["prob_t1"].argmax(1))
    assert preds["prob_t1"].shape == (len(labels["label_t1"]), 4)
    np.testing.assert_allclose(preds["prob_t1"].sum(1), 1.0, atol=1e-5)
    # 4 classes: chance is 0.25 per date (and the majority class is far below 0.6)
    assert metrics["OA_t1"] >= 0.6 and metrics["OA_t2"] >= 0.6, metrics
    assert metrics["method"] == "bovw_hik"
    assert metrics["OA_t1"] == pytest.approx(np.mean(preds["pred_t1"] == preds["label_t1"]))


def test_cli_writes_results_and_refuses_overwrite(demo_data, tmp_path, capsys):
    out = tmp_path / "res"
    argv = ["--data_dir", str(demo_data), "--patch", "8", "--words", "50", "--out", str(out)]
    assert baselines.main(argv) == 0
    res = json.loads((out / "results.json").read_text())
    with np.load(out / "predictions.npz") as z:
        pred_t1, y1 = z["pred_t1"], z["label_t1"]
        assert {"prob_t1", "prob_t2", "p_change", "row", "col"} <= set(z.files)
    assert res["OA_t1"] == pytest.approx(np.mean(pred_t1 == y1))
    assert res["args"]["words"] == 50
    capsys.readouterr()
    assert baselines.main(argv) == 2  # non-empty result directory
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "res" in err[0]


def test_cli_bad_input_exit_2(tmp_path, capsys):
    out = tmp_path / "res"
    assert baselines.main(["--data_dir", str(tmp_path / "missing"), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ")
    for split in ("trn", "tst"):
        (tmp_path / "bad" / split).mkdir(parents=True)
        (tmp_path / "bad" / split / "a.npz").write_bytes(b"not a zip")
    assert baselines.main(["--data_dir", str(tmp_path / "bad"), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "a.npz" in err[0]
    assert baselines.main(["--data_dir", str(tmp_path / "bad"), "--words", "0",
                      "--out", str(out)]) == 2
    assert not out.exists()


def test_cli_out_that_is_or_lies_under_a_file(demo_data, tmp_path, capsys, monkeypatch):
    """Refused before any fitting: one line naming the path, the file untouched."""
    afile = tmp_path / "afile"
    afile.write_text("user file\n")
    monkeypatch.setattr(baselines, "run_bovw", lambda *a, **k: pytest.fail("fitted before the check"))
    for out in (afile, afile / "x"):
        assert baselines.main(["--data_dir", str(demo_data), "--words", "8", "--out", str(out)]) == 2
        captured = capsys.readouterr()
        err = captured.err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: ") and str(out) in err[0], captured.err
        assert "Traceback" not in captured.err
    assert afile.read_text() == "user file\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]


def test_bovw_ksfa_end_to_end(demo_data):
    metrics, preds = baselines.run_bovw(demo_data / "trn", demo_data / "tst", method="ksfa",
                                   val_dir=demo_data / "val", patch=8, words=50, seed=0)
    assert metrics["method"] == "bovw_ksfa" and "ksfa" in metrics
    assert metrics["OA_t1"] >= 0.6 and metrics["OA_t2"] >= 0.6, metrics
    np.testing.assert_array_equal(preds["pred_t1"], preds["prob_t1"].argmax(1))
    assert preds["intensity"].shape == preds["label_t1"].shape
