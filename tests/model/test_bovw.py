"""BoVW + HIK-SVM baseline (model.bovw): kernel, descriptors, demo accuracy, CLI."""

import json

import numpy as np
import pytest

from model import bovw

FAST = {"patch": 8, "words": 50}  # 32x32 demo tiles -> 16 windows per image


def _hik_direct(a, b):
    return np.minimum(a[:, None, :], b[None, :, :]).sum(-1)


@pytest.mark.parametrize("density", [0.05, 0.9])  # sparse and dense code paths
def test_hik_gram_matches_numpy(density):
    rng = np.random.default_rng(0)
    a = rng.random((23, 40)) * (rng.random((23, 40)) < density)
    b = rng.random((17, 40)) * (rng.random((17, 40)) < density)
    np.testing.assert_allclose(bovw.hik_gram(a, b), _hik_direct(a, b), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(bovw.hik_gram(a), _hik_direct(a, a), rtol=1e-5, atol=1e-6)
    # tiny blocks exercise the block loops
    np.testing.assert_allclose(bovw.hik_gram(a, b, max_elements=50), _hik_direct(a, b),
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(bovw.hik_gram(a, max_elements=50), _hik_direct(a, a),
                               rtol=1e-5, atol=1e-6)


def test_patch_descriptors_match_numpy():
    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, (3, 21, 26, 3), dtype=np.uint8)
    d = bovw.patch_descriptors(x, patch=10, stride=10, descriptor="meanstd_grad")
    assert d.shape == (3, 2 * 2, bovw.descriptor_dim(3, "meanstd_grad")) == (3, 4, 15)
    win = x[2, 10:20, 0:10].astype(np.float64) / 255.0  # window (row 1, col 0) of image 2
    np.testing.assert_allclose(d[2, 2, :3], win.mean((0, 1)), atol=1e-5)
    np.testing.assert_allclose(d[2, 2, 3:6], win.std((0, 1)), atol=1e-4)
    np.testing.assert_allclose(d[..., 7:].sum(-1), 1.0, atol=1e-5)  # orientation histogram
    # overlapping windows: same values at the shared positions
    d5 = bovw.patch_descriptors(x, patch=10, stride=5)
    assert d5.shape[1] == 3 * 4
    np.testing.assert_allclose(d5[:, 2 * 4 + 0], d[:, 2], atol=1e-6)
    assert bovw.patch_descriptors(x, 10, descriptor="meanstd").shape == (3, 4, 6)


def test_bovw_hik_beats_chance(demo_data):
    from data.shards import read_labels

    metrics, preds = bovw.run_bovw(demo_data / "trn", demo_data / "tst", **FAST)
    labels = read_labels(demo_data / "tst")
    np.testing.assert_array_equal(preds["label_t1"], labels["label_t1"])
    np.testing.assert_array_equal(preds["pred_t1"], preds["prob_t1"].argmax(1))
    assert preds["prob_t1"].shape == (len(labels["label_t1"]), 4)
    np.testing.assert_allclose(preds["prob_t1"].sum(1), 1.0, atol=1e-5)
    # 4 classes: chance is 0.25 per date (and the majority class is far below 0.6)
    assert metrics["OA_t1"] >= 0.6 and metrics["OA_t2"] >= 0.6, metrics
    assert metrics["method"] == "bovw_hik"
    assert metrics["OA_t1"] == pytest.approx(np.mean(preds["pred_t1"] == preds["label_t1"]))


def test_codebook_sample_is_bounded(demo_data):
    cb = bovw.fit_codebook(demo_data / "trn", words=1000, patch=8, max_samples=300, seed=0)
    # 168 training images x ceil(300 / 168) = 2 windows -> 336 windows -> words capped at 33
    assert cb.words == 33
    h = cb.histograms(np.zeros((2, 32, 32, 3), np.uint8))
    np.testing.assert_allclose(h.sum(1), 1.0, atol=1e-6)


def test_cli_writes_results_and_refuses_overwrite(demo_data, tmp_path, capsys):
    out = tmp_path / "res"
    argv = ["--data_dir", str(demo_data), "--patch", "8", "--words", "50", "--out", str(out)]
    assert bovw.main(argv) == 0
    res = json.loads((out / "results.json").read_text())
    with np.load(out / "predictions.npz") as z:
        pred_t1, y1 = z["pred_t1"], z["label_t1"]
        assert {"prob_t1", "prob_t2", "p_change", "row", "col"} <= set(z.files)
    assert res["OA_t1"] == pytest.approx(np.mean(pred_t1 == y1))
    assert res["args"]["words"] == 50
    capsys.readouterr()
    assert bovw.main(argv) == 2  # non-empty result directory
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "res" in err[0]


def test_cli_bad_input_exit_2(tmp_path, capsys):
    out = tmp_path / "res"
    assert bovw.main(["--data_dir", str(tmp_path / "missing"), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ")
    for split in ("trn", "tst"):
        (tmp_path / "bad" / split).mkdir(parents=True)
        (tmp_path / "bad" / split / "a.npz").write_bytes(b"not a zip")
    assert bovw.main(["--data_dir", str(tmp_path / "bad"), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "a.npz" in err[0]
    assert bovw.main(["--data_dir", str(tmp_path / "bad"), "--words", "0",
                      "--out", str(out)]) == 2
    assert not out.exists()


def test_cli_out_that_is_or_lies_under_a_file(demo_data, tmp_path, capsys, monkeypatch):
    """Refused before any fitting: one line naming the path, the file untouched."""
    afile = tmp_path / "afile"
    afile.write_text("user file\n")
    monkeypatch.setattr(bovw, "run_bovw", lambda *a, **k: pytest.fail("fitted before the check"))
    for out in (afile, afile / "x"):
        assert bovw.main(["--data_dir", str(demo_data), "--words", "8", "--out", str(out)]) == 2
        captured = capsys.readouterr()
        err = captured.err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: ") and str(out) in err[0], captured.err
        assert "Traceback" not in captured.err
    assert afile.read_text() == "user file\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]
