"""experiments/ablation.py: each variant's train_cnn.py options, the AUC of w, the table, a tiny run."""

import json
from pathlib import Path

import numpy as np
import pytest

from tests.experiments._scripts import load

ROOT = Path(__file__).resolve().parents[2]


def _module():
    return load("ablation")


def test_each_variant_changes_one_thing_from_its_base(tmp_path, demo_data):
    import compare

    ab = _module()
    args = ab.parse_args(["--out", str(tmp_path)])
    parsed = {v: compare.parse_args(ab.compare_argv(args, v, demo_data, 0.8)).train
              for v in ("project/base", "project/fusion_bn=frozen", "original/base",
                        "original/fusion_distance=rms", "project/optimizer=sgd")}
    base, frozen = parsed["project/base"], parsed["project/fusion_bn=frozen"]
    fields = ("input_norm", "fusion_distance", "fusion_bn", "bn", "pooling", "fusion_init",
              "decov_init", "decov_penalty", "optimizer", "backbone", "epochs")
    diff = {f for f in fields if getattr(base, f) != getattr(frozen, f)}
    assert diff == {"fusion_bn"} and base.fusion_bn == "batch" and base.input_norm == "bands"
    assert (base.optimizer, base.backbone, base.epochs, base.batch_size) == ("adam", "small", 6, 16)
    orig, rms = parsed["original/base"], parsed["original/fusion_distance=rms"]
    assert orig.preset == "original" and orig.backbone == "small"  # --backbone wins over the preset
    assert (orig.fusion_distance, orig.fusion_bn, orig.input_norm) == ("euclidean", "frozen", "shard_max")
    assert {f for f in fields if getattr(orig, f) != getattr(rms, f)} == {"fusion_distance"}
    assert parsed["project/optimizer=sgd"].optimizer == "sgd"  # the variant's options win
    assert ab.CHOSEN in ab.VARIANTS
    assert ab.methods("project/base") == ["corrfusion", "baseline"]
    assert ab.methods("project/bn=frozen") == ["corrfusion"]
    assert ab.workdir(args, "project/bn=frozen", 0.8) == tmp_path / "runs" / "project__bn=frozen" / "s0.8"


def test_w_auc_and_table(tmp_path):
    ab = _module()
    npz = tmp_path / "predictions.npz"
    changed = np.array([0, 0, 0, 1, 1, 0], bool)
    np.savez(npz, changed_true=changed, fusion_weight=np.array([0.9, 0.8, 0.3, 0.2, 0.5, 0.7]))
    # unchanged pairs are the positives: 7 of the 4 x 2 (unchanged, changed) pairs ordered right
    assert ab.w_auc(npz) == pytest.approx(7 / 8)
    np.savez(npz, changed_true=changed, prob_t1=np.zeros((6, 2)))
    assert ab.w_auc(npz) is None  # a method without w
    rows = [{"variant": "project/base", "strength": 0.0, "method": "corrfusion", "seed": k,
             "OA_t1": 0.5 + 0.1 * k, "OA_t2": 0.4, "change_f1": 0.2, "w_unchanged": 0.6,
             "w_changed": 0.3, "w_auc": 0.8} for k in range(3)]
    summary = ab.summarize(rows)
    assert summary[0]["OA_t1_mean"] == pytest.approx(0.6)
    assert summary[0]["OA_t1_std"] == pytest.approx(0.1)  # ddof = 1
    assert "| project/base | 0 | corrfusion | 3 | 60.0 ± 10.0 | 40.0 ± 0.0 |" in ab.table(summary)


def test_a_partial_rerun_keeps_the_earlier_rows(tmp_path):
    """OUT/runs is not committed: a row of results.csv whose run directory is gone is kept (with
    its values and finished time) unless that run is collected again; rows outside the selection
    (another variant, level or seed) stay in the record too: running a few variants adds to
    results.csv, it does not erase the others' rows."""
    ab = _module()
    head = "variant,strength,method,seed,OA_t1,OA_t2,change_f1,w_unchanged,w_changed,w_auc,finished"
    (tmp_path / "results.csv").write_text("\n".join([
        head,
        "project/base,0.0,corrfusion,0,0.7,0.6,0.3,0.05,0.01,0.6,",
        "project/base,0.0,baseline,1,0.5,0.4,0.2,,,,2026-12-04 17:00",
        "project/bn=frozen,0.0,corrfusion,0,0.1,0.1,0.1,0.1,0.1,0.5,",
        "project/base,0.8,corrfusion,0,0.1,0.1,0.1,0.1,0.1,0.5,",
        "project/base,0.0,corrfusion,5,0.1,0.1,0.1,0.1,0.1,0.5,"]) + "\n")
    args = ab.parse_args(["--out", str(tmp_path), "--variants", "project/base", "--levels", "0",
                          "--seeds", "2"])
    rows = ab.collect(args)
    assert [(r["variant"], r["strength"], r["method"], r["seed"]) for r in rows] == [
        ("project/base", 0.0, "baseline", 1), ("project/base", 0.0, "corrfusion", 0),
        ("project/base", 0.0, "corrfusion", 5), ("project/base", 0.8, "corrfusion", 0),
        ("project/bn=frozen", 0.0, "corrfusion", 0)]
    assert rows[1]["OA_t1"] == 0.7 and rows[1]["w_auc"] == 0.6 and rows[1]["finished"] == ""
    assert rows[0]["w_unchanged"] is None and rows[0]["finished"] == "2026-12-04 17:00"
    ab.report(args)  # the record on disk keeps all five
    assert len((tmp_path / "results.csv").read_text().splitlines()) == 6


@pytest.mark.slow
def test_tiny_ablation_end_to_end(tmp_path):
    """One variant, one level, one seed, one epoch on 40 uint16 pairs of 16 px; resumable."""
    ab = _module()
    out = tmp_path / "abl"
    argv = ["--out", str(out), "--levels", "0.8", "--pairs", "40", "--size", "16", "--classes", "3",
            "--seeds", "1", "--epochs", "1", "--variants", "project/base"]
    assert ab.main(argv) == 0
    rows = (out / "results.csv").read_text().splitlines()
    assert rows[0] == ("variant,strength,method,seed,OA_t1,OA_t2,change_f1,w_unchanged,w_changed,"
                       "w_auc,finished")
    assert sorted(r.split(",")[2] for r in rows[1:]) == ["baseline", "corrfusion"]
    cf = next(r for r in json.loads((out / "results.json").read_text())["runs"]
              if r["method"] == "corrfusion")
    assert 0 <= cf["w_unchanged"] <= 1 and 0 <= cf["OA_t2"] <= 1
    assert "| project/base | 0.8 | corrfusion | 1 |" in (out / "table.md").read_text()
    data = np.load(sorted((out / "data" / "s0.8" / "trn").glob("*.npz"))[0])
    assert data["image_t1"].dtype == np.uint16 and data["image_t1"].max() <= 10000
    mtime = (out / "runs" / "project__base" / "s0.8" / "corrfusion" / "0" / "results" / "tst"
             / "results.json").stat().st_mtime
    assert ab.main(argv) == 0  # finished: nothing is trained again
    assert (out / "runs" / "project__base" / "s0.8" / "corrfusion" / "0" / "results" / "tst"
            / "results.json").stat().st_mtime == mtime


def test_readme_tables_are_the_committed_results():
    """docs/experiments.md "Choosing the defaults" shows the script's defaults.md and table.md, not
    typed by hand."""
    readme = (ROOT / "docs" / "experiments.md").read_text()
    for name in ("defaults.md", "table.md"):
        table = (ROOT / "experiments" / "ablation" / name).read_text()
        assert table.strip() and table.strip() in readme, name
    rows = (ROOT / "experiments" / "ablation" / "results.csv").read_text().splitlines()
    assert len(rows) > 1
    # the same ablation trained to convergence (--epochs 20), which decided --view_variance
    e20 = (ROOT / "experiments" / "ablation_e20" / "table.md").read_text()
    assert e20.strip() and e20.strip() in readme
    assert '"epochs": 20' in (ROOT / "experiments" / "ablation_e20" / "results.json").read_text()


def test_the_defaults_table_shows_extra_levels_only_where_measured():
    """A level outside MAIN_LEVELS (--levels 0.4 for a few variants) adds the rows measured there
    and no "not run" rows; a main level without runs still says "not run"."""
    ab = _module()
    rows = [{"variant": v, "strength": 0.4, "method": "corrfusion", "seed": k, "OA_t1": 0.7,
             "OA_t2": 0.6 + 0.1 * (v == ab.PREVIOUS), "change_f1": 0.3, "w_unchanged": 0.8,
             "w_changed": 0.7, "w_auc": 0.6} for v in (ab.PREVIOUS, "project/base") for k in range(2)]
    lines = ab.defaults_table(rows).splitlines()
    at_04 = [ln for ln in lines if "| 0.4 |" in ln]
    assert len(at_04) == 1 and "| 2 | +0.0 ± 0.0 | -10.0 ± 0.0 |" in at_04[0], at_04
    assert all("not run" in ln for ln in lines[2:] if "| 0.4 |" not in ln)
    assert len(lines) == 2 + 1 + 2 * len(ab.DEFAULT_ROWS)
