"""experiments/change_information.py: the ablation's pairs, the bounds' table, a tiny run."""

from pathlib import Path

import numpy as np
import pytest

from tests.experiments._scripts import load

ROOT = Path(__file__).resolve().parents[2]


def _module():
    return load("change_information")


def test_the_pairs_are_the_ablations_shards(tmp_path):
    """The bounds are measured on the very pairs and split the ablation trains on (its
    ensure_data with the ablation's data defaults), degraded at the same strength."""
    ab = load("ablation")
    ci = _module()
    args = ab.parse_args(["--out", str(tmp_path), "--pairs", "40"])
    shards = ab.ensure_data(args, 0.8)
    ours = ci.pairs_of(40, 0.8)
    for split in ("trn", "tst"):
        with np.load(sorted((shards / split).glob("*.npz"))[0]) as z:
            for key in ("image_t1", "image_t2", "label_t1", "label_t2"):
                np.testing.assert_array_equal(z[key], ours[split][key], err_msg=f"{split} {key}")
    assert ours["trn"]["image_t2"].dtype == np.uint16


def test_standardise_uses_the_training_split_per_band_and_date():
    ci = _module()
    rng = np.random.default_rng(0)
    trn = {"image_t1": rng.normal(5, 2, (20, 4, 4, 3)), "image_t2": rng.normal(-1, 3, (20, 4, 4, 3))}
    out = ci.standardise(trn, trn)
    for key in ("image_t1", "image_t2"):
        np.testing.assert_allclose(out[key].mean((0, 1, 2)), 0, atol=1e-5)
        np.testing.assert_allclose(out[key].std((0, 1, 2)), 1, atol=1e-5)
    other = {"image_t1": trn["image_t1"] + 1, "image_t2": trn["image_t2"]}
    shifted = ci.standardise(trn, other)["image_t1"]  # the training statistics, not the other's
    np.testing.assert_allclose(shifted.mean((0, 1, 2)), 1 / trn["image_t1"].std((0, 1, 2)), rtol=1e-4)


def test_table_is_mean_and_sample_std_per_size_and_level():
    ci = _module()
    rows = [{"pairs": "480", "strength": "0.8", "seed": str(k), "change_auc": str(0.6 + 0.1 * k),
             "siamese_auc": "0.5", "t2_oa": "0.2", "pixel_auc": "0.57", "changed_test": "11",
             "test_pairs": "96", "finished": ""} for k in range(3)]
    text = ci.table(rows)
    assert "| 480 (336 / 96, 11) | 0.8 | 3 | 0.70 ± 0.10 | 0.50 ± 0.00 | 20.0 ± 0.0 | 0.57 ± 0.00 |" in text


@pytest.mark.slow
def test_tiny_run_writes_a_row_per_level_and_resumes(tmp_path):
    ci = _module()
    argv = ["--out", str(tmp_path), "--levels", "0.8", "--pairs", "40", "--large", "0",
            "--seeds", "1", "--epochs", "1"]
    assert ci.main(argv) == 0
    rows = ci.read_rows(tmp_path / "results.csv")
    assert len(rows) == 1 and rows[0]["strength"] == "0.8" and rows[0]["test_pairs"] == "8"
    for key in ("change_auc", "siamese_auc", "t2_oa", "pixel_auc"):
        assert 0.0 <= float(rows[0][key]) <= 1.0, key
    assert "| 40 (28 / 8," in (tmp_path / "table.md").read_text()
    assert ci.main(argv) == 0  # finished: the row is not computed again
    assert len(ci.read_rows(tmp_path / "results.csv")) == 1


def test_docs_table_is_the_committed_results():
    table = (ROOT / "experiments" / "change_information" / "table.md").read_text()
    assert table.strip() and table.strip() in (ROOT / "docs" / "experiments.md").read_text()
