"""eval.py end to end on the demo data: every output exists and loads, numbers agree, errors exit 2."""

import csv
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
PNG = b"\x89PNG\r\n\x1a\n"
SPLIT_FILES = (
    "results.json",
    "metrics.txt",
    "per_class.csv",
    "predictions.npz",
    "predictions.mat",
    "predictions.csv",
    "confusion_t1.png",
    "confusion_t2.png",
    "transitions.png",
    "pr_curve.png",
    "class_maps.png",
    "change_map.png",
    "change_map_threshold.png",
    "fusion_weight.png",  # the model is a corrfusion one
)
NPZ_KEYS = {
    "label_t1", "label_t2", "pred_t1", "pred_t2", "prob_t1", "prob_t2", "p_change", "changed_true",
    "changed_pred", "changed_pred_threshold", "fusion_weight", "dist", "row", "col", "class_names",
}  # fmt: skip


def run_eval(*args, timeout=300):
    env = {
        **os.environ,
        "TF_CPP_MIN_LOG_LEVEL": "3",
        "MPLBACKEND": "Agg",
        "CUDA_VISIBLE_DEVICES": "-1",
    }
    return subprocess.run(
        [sys.executable, str(ROOT / "eval.py"), *map(str, args)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


def tiny_model(num_classes, size=32):
    import model as cfn

    return cfn.build_model(
        num_classes, image_size=(size, size), backbone="small", hidden=16, seed=0
    )


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, demo_data):
    """A run directory whose best checkpoint is a small model trained for two steps."""
    import keras

    from data.loader import make_dataset

    keras.utils.set_random_seed(0)
    net = tiny_model(4)
    net.compile(optimizer=keras.optimizers.SGD(0.01))
    ds, _ = make_dataset(demo_data / "trn", 16, training=True)
    net.fit(ds, epochs=1, steps_per_epoch=2, shuffle=False, verbose=0)
    run = tmp_path_factory.mktemp("run")
    (run / "checkpoints").mkdir()
    net.save(run / "checkpoints" / "best.keras")
    return run


@pytest.fixture(scope="module")
def evaluated(run_dir, demo_data):
    """`eval.py -m RUN --data_dir DATA`: the default result directory RUN/results/eval."""
    proc = run_eval("-m", run_dir, "--data_dir", demo_data, "-b", 8)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run_dir / "results" / "eval", proc


def test_help_is_fast_and_imports_no_tensorflow():
    """One new process: importing eval.py loads neither TensorFlow nor Keras, and `eval.py -h`
    (run as __main__) answers with exit status 0."""
    code = ("import runpy, sys, eval\n"
            "print('HEAVY', 'tensorflow' in sys.modules, 'keras' in sys.modules, flush=True)\n"
            "sys.argv = ['eval.py', '-h']\n"
            "runpy.run_path('eval.py', run_name='__main__')\n")
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert "HEAVY False False" in proc.stdout, proc.stderr
    assert proc.returncode == 0 and "--threshold" in proc.stdout and "-tst" in proc.stdout


def test_every_output_exists_and_loads(evaluated):
    import scipy.io

    out, proc = evaluated
    assert "OA_t1" in proc.stdout and "tst" in proc.stdout
    top = json.loads((out / "results.json").read_text())
    assert set(top["splits"]) == {"val", "tst"}
    assert top["info"]["checkpoint"].endswith("best.keras")
    rows = list(csv.DictReader((out / "per_class.csv").open()))
    assert {r["split"] for r in rows} == {"val", "tst"} and len(rows) == 2 * 2 * 4
    for split in ("val", "tst"):
        d = out / split
        for name in SPLIT_FILES:
            assert (d / name).is_file(), d / name
            if name.endswith(".png"):
                data = (d / name).read_bytes()
                assert data[:8] == PNG and len(data) > 5_000, name
        doc = json.loads((d / "results.json").read_text())
        m = doc["metrics"]
        for key in ("OA_t1", "OA_t2", "OA_bi", "OA_tr", "kappa_t1", "kappa_t2", "change_precision",
                    "change_recall", "change_f1", "change_kappa", "p_change_roc_auc", "p_change_ap",
                    "change_at_threshold", "per_class", "confusion_t1", "confusion_t2",
                    "transition_true", "transition_pred", "class_names", "fusion_weight_mean"):  # fmt: skip
            assert key in m, key
        assert m == top["splits"][split]
        with np.load(d / "predictions.npz", allow_pickle=False) as z:
            assert set(z.files) == NPZ_KEYS
            n, k = z["prob_t1"].shape
            assert k == 4 and n == m["n_pairs"]
            np.testing.assert_allclose(z["prob_t1"].sum(1), 1, atol=1e-4)
            np.testing.assert_allclose(
                z["p_change"], 1 - (z["prob_t1"] * z["prob_t2"]).sum(1), atol=1e-5
            )
            np.testing.assert_array_equal(z["pred_t1"], z["prob_t1"].argmax(1))
            # recomputed from the saved predictions = the reported numbers
            assert np.mean(z["pred_t1"] == z["label_t1"]) == pytest.approx(m["OA_t1"])
            assert np.mean(z["pred_t2"] == z["label_t2"]) == pytest.approx(m["OA_t2"])
            changed = z["label_t1"] != z["label_t2"]
            assert np.mean((z["pred_t1"] != z["pred_t2"]) == changed) == pytest.approx(m["OA_bi"])
            assert list(z["class_names"]) == m["class_names"]
            labels, pred2 = z["label_t1"], z["pred_t2"]
        mat = scipy.io.loadmat(d / "predictions.mat")
        assert NPZ_KEYS <= set(mat)
        np.testing.assert_array_equal(mat["label_t1"].ravel(), labels)
        csv_rows = list(csv.DictReader((d / "predictions.csv").open()))
        assert len(csv_rows) == n
        assert {"row", "col", "p_change", "fusion_weight", "prob_t1_1", "prob_t2_4",
                "label_t1_name", "pred_t2_name"} <= set(csv_rows[0])
        assert "prob_t1_0" not in csv_rows[0]
        # the shards' 1-based class ids, with their names
        assert [int(r["label_t1"]) for r in csv_rows] == (labels + 1).tolist()
        assert [r["label_t1_name"] for r in csv_rows] == [m["class_names"][i] for i in labels]
        assert [r["pred_t2_name"] for r in csv_rows] == [m["class_names"][i]
                                                         for i in pred2]


def test_in_process_api_matches_cli(run_dir, demo_data, evaluated, tmp_path):
    """evaluate_split / write_outputs (train_cnn.py's path) give the CLI's numbers."""
    import model as cfn
    from evaluation import evaluate as E
    from evaluation.metrics import format_table

    net = cfn.load_model(run_dir / "checkpoints" / "best.keras")
    metrics, preds = E.evaluate_split(net, demo_data / "tst", batch_size=5, threshold=0.5)
    cli = json.loads((evaluated[0] / "tst" / "results.json").read_text())["metrics"]
    for key in ("OA_t1", "OA_t2", "OA_bi", "OA_tr"):
        assert metrics[key] == pytest.approx(cli[key]), key
    for key in ("n_pairs", "confusion_t1", "transition_pred"):
        assert metrics[key] == cli[key], key
    E.write_outputs(tmp_path / "tst", metrics, preds, overwrite=False)
    assert (tmp_path / "tst" / "change_map.png").is_file()
    with pytest.raises(ValueError, match="not empty"):
        E.write_outputs(tmp_path / "tst", metrics, preds, overwrite=False)
    assert "OA_t1" in format_table(metrics)


def assert_one_line_error(proc, *fragments):
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("error:")]
    assert len(errors) == 1 and lines[-1] == errors[0], proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    for f in fragments:
        assert f in errors[0], errors[0]


def test_refusals_write_nothing(run_dir, demo_data, tmp_path, capfd):
    import keras

    other = tiny_model(5)
    other((keras.ops.zeros((1, 32, 32, 3)), keras.ops.zeros((1, 32, 32, 3))))
    other.save(tmp_path / "k5.keras")
    (tmp_path / "garbage.keras").write_bytes(b"not a model")
    with zipfile.ZipFile(tmp_path / "noconfig.keras", "w") as zf:
        zf.writestr("metadata.json", "{}")
    (tmp_path / "norun").mkdir()
    (tmp_path / "empty_split").mkdir()
    full = tmp_path / "full"
    full.mkdir()
    (full / "keep.txt").write_text("x")
    tst = demo_data / "tst"
    best = run_dir / "checkpoints" / "best.keras"
    out = tmp_path / "out"
    cases = [
        (("-m", tmp_path / "k5.keras", "-tst", tst), ("class_names", "expected 5")),
        (("-m", best, "-tst", tst, "--image_size", "16"), ("16x16x3", "expected 32x32x3")),
        (("-m", tmp_path / "garbage.keras", "-tst", tst), ("garbage.keras", "not a Keras")),
        (("-m", tmp_path / "noconfig.keras", "-tst", tst), ("config.json",)),
        (("-m", tmp_path / "norun", "-tst", tst), ("norun", "best.keras")),
        (("-m", tmp_path / "missing.keras", "-tst", tst), ("missing.keras",)),
        (("-m", best, "-tst", tmp_path / "empty_split"), ("empty_split",)),
        (("-m", best), ("no data",)),
    ]
    for args, fragments in cases:  # eval.py's main in this process; capfd: fd 2 as a whole
        proc = run_in_process([*args, "-rpath", out], capfd)
        assert_one_line_error(proc, *fragments)
        assert not out.exists(), args
    proc = run_in_process(["-m", best, "-tst", tst, "-rpath", full], capfd)
    assert_one_line_error(proc, "--overwrite")
    assert [p.name for p in full.iterdir()] == ["keep.txt"]


def run_in_process(argv, capsys):
    """eval.py's main through the CLI wrapper, in this process (TensorFlow is already loaded).
    ``capsys``, or ``capfd`` to read file descriptor 2 (native lines) as well."""
    import eval as E
    from utils.cli import run_main

    capsys.readouterr()
    rc = run_main(E.main, [str(a) for a in argv])
    captured = capsys.readouterr()
    return subprocess.CompletedProcess(argv, rc, captured.out, captured.err)


def test_unloadable_weights_write_nothing(run_dir, demo_data, tmp_path, capsys):
    """A .keras archive with a valid config but broken weights fails at load time: still one line."""
    src = run_dir / "checkpoints" / "best.keras"
    bad = tmp_path / "broken.keras"
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(bad, "w") as zout:
        for item in zin.namelist():
            zout.writestr(item, b"garbage" if item.endswith(".h5") else zin.read(item))
    out = tmp_path / "out"
    proc = run_in_process(["-m", bad, "-tst", demo_data / "tst", "-rpath", out], capsys)
    assert_one_line_error(proc, "broken.keras", "not a readable Keras checkpoint")
    assert not out.exists()


def test_a_compressed_split_is_read_through_once_before_predicting(run_dir, tmp_path, capsys,
                                                                  monkeypatch):
    """check_before_loading reads every image member (CRC-32); evaluate_split does not again."""
    from data import shards

    rng = np.random.default_rng(0)
    split = tmp_path / "zipped"
    split.mkdir()
    images = rng.integers(0, 256, (2, 6, 32, 32, 3), dtype=np.uint8)
    shards.write_shard(split / "a.npz", images[0], images[1], [1, 2, 3, 4, 1, 2],
                       [1, 2, 4, 4, 1, 3], compress=True)
    reads = []
    verify = shards.verify_member
    monkeypatch.setattr(shards, "verify_member", lambda path, key: (reads.append(key),
                                                                    verify(path, key))[1])
    best = run_dir / "checkpoints" / "best.keras"
    proc = run_in_process(["-m", best, "-tst", split, "-rpath", tmp_path / "out", "-b", 4], capsys)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert sorted(reads) == ["image_t1", "image_t2"]


def test_overwrite_and_threshold(run_dir, demo_data, tmp_path, capsys):
    out = tmp_path / "o"
    shutil.copytree(run_dir / "checkpoints", tmp_path / "ck")
    out.mkdir()
    (out / "old.txt").write_text("x")
    argv = ["-m", tmp_path / "ck" / "best.keras", "-tst", demo_data / "tst", "-rpath", out, "-b", 8]
    proc = run_in_process([*argv, "--overwrite", "--threshold", "0.3"], capsys)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "OA_t1" in proc.stdout
    m = json.loads((out / "tst" / "results.json").read_text())["metrics"]
    assert m["change_at_threshold"]["threshold"] == 0.3
    assert sorted(p.name for p in out.iterdir()) == [
        "metrics.txt",
        "old.txt",
        "per_class.csv",
        "results.json",
        "tst",
    ]
    # default result path of a bare checkpoint: next to it
    proc = run_in_process(argv[:4] + ["-b", 8], capsys)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp_path / "ck" / "best_eval" / "tst" / "predictions.npz").is_file()


def test_reproduces_training_scripts_test_oa(trained_run, tmp_path, capsys):
    """train_cnn.py's logged test OA of the best epoch = eval.py's OA on the best checkpoint
    (a copy of the session's 2-epoch ``trained_run``)."""
    from tests._runs import copy_run

    work = copy_run(trained_run, tmp_path / "w")
    assert not (work / "results" / "eval").exists()
    proc = run_in_process(["-m", work, "-b", 8], capsys)  # splits from the run's args.json
    assert proc.returncode == 0, proc.stderr[-2000:]
    ours = json.loads((work / "results" / "eval" / "results.json").read_text())["splits"]
    assert set(ours) == {"val", "tst"}
    history = list(csv.DictReader((work / "history.csv").open()))
    state = json.loads((work / "checkpoints" / "last_state.json").read_text())
    best = next(r for r in history if int(float(r["epoch"])) == int(state.get("best_epoch") or 1))
    for key in ("oa_t1", "oa_t2", "oa_bi", "oa_tr"):
        name = "OA" + key[2:]
        assert ours["tst"][name] == pytest.approx(float(best[f"tst_{key}"]), abs=1e-5), key
        assert ours["val"][name] == pytest.approx(float(best[f"val_{key}"]), abs=1e-5), key
    trained = json.loads((work / "results" / "tst" / "results.json").read_text())["metrics"]
    assert trained["OA_t1"] == ours["tst"]["OA_t1"] and trained["OA_t2"] == ours["tst"]["OA_t2"]


def test_split_without_rowcol_or_names(run_dir, tmp_path):
    """No row/col: no maps, no row/col keys; no class_names: "class k" names; label 0 skipped."""
    import model as cfn
    from data.shards import write_shard
    from evaluation import evaluate as E

    rng = np.random.default_rng(0)
    split = tmp_path / "plain"
    split.mkdir()
    images = rng.integers(0, 256, (2, 7, 32, 32, 3), dtype=np.uint8)
    write_shard(split / "a.npz", images[0], images[1], [1, 2, 3, 4, 0, 2, 3], [1, 2, 4, 4, 1, 2, 3])
    net = cfn.load_model(run_dir / "checkpoints" / "best.keras")
    metrics, preds = E.evaluate_split(net, split, batch_size=4)
    assert metrics["n_pairs"] == 6 and metrics["n_changed"] == 1
    assert metrics["class_names"] == ["class 1", "class 2", "class 3", "class 4"]
    assert "row" not in preds and preds["label_t1"].tolist() == [0, 1, 2, 3, 1, 2]
    E.write_outputs(tmp_path / "out", metrics, preds)
    assert not (tmp_path / "out" / "change_map.png").exists()
    assert (tmp_path / "out" / "pr_curve.png").is_file()
    with np.load(tmp_path / "out" / "predictions.npz") as z:
        assert "row" not in z.files and "fusion_weight" in z.files


def test_bad_checkpoints_give_one_clean_line(run_dir, demo_data, tmp_path, capfd):
    """No config.json: the message once, not wrapped in itself; a plain Keras model: refused from
    its config.json, without Keras' warning block; -rpath under a file: refused, file untouched."""
    import keras

    with zipfile.ZipFile(tmp_path / "noconfig.keras", "w") as zf:
        zf.writestr("foo.txt", "x")
    plain = keras.Sequential(
        [
            keras.Input((32, 32, 3)),
            keras.layers.Flatten(),
            keras.layers.Dense(4, activation="softmax"),
        ]
    )
    plain.save(tmp_path / "plain.keras")
    afile = tmp_path / "afile"
    afile.write_text("user file\n")
    tst = demo_data / "tst"
    out = tmp_path / "out"
    proc = run_in_process(["-m", tmp_path / "noconfig.keras", "-tst", tst, "-rpath", out], capfd)
    assert_one_line_error(proc, "config.json: missing")
    assert proc.stderr.count("noconfig.keras") == 1 and "unreadable" not in proc.stderr
    # a new process: Keras' warnings reach stderr there (pytest records them in this one)
    proc = run_eval("-m", tmp_path / "plain.keras", "-tst", tst, "-rpath", out, timeout=120)
    assert_one_line_error(proc, "plain.keras", "Sequential", "prob_t1")
    assert "Warning" not in proc.stderr and "warn" not in proc.stderr
    assert not out.exists()
    best = run_dir / "checkpoints" / "best.keras"
    proc = run_in_process(["-m", best, "-tst", tst, "-rpath", afile / "out"], capfd)
    assert_one_line_error(proc, str(afile / "out"), "is a file")
    assert afile.read_text() == "user file\n"


def test_model_without_two_date_outputs_warns_nothing(demo_data):
    """A single-input model reaching evaluate_split: the UsageError alone, no Keras input warning."""
    import warnings

    import keras

    from evaluation import evaluate as E
    from utils.cli import UsageError

    plain = keras.Sequential(
        [
            keras.Input((32, 32, 3)),
            keras.layers.Flatten(),
            keras.layers.Dense(4, activation="softmax"),
        ]
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(UsageError, match="prob_t1"):
            E.evaluate_split(plain, demo_data / "tst", batch_size=8)
    assert not [w for w in caught if issubclass(w.category, UserWarning)], caught


def test_map_coordinates_skip_the_maps_and_write_the_rest(run_dir, demo_data, tmp_path, caplog):
    """row/col far apart (a tile at 200000, 200000): no 298 GiB grid; every other file is written
    and a warning names the split and explains row/col (train_cnn's end-of-run path as well)."""
    import model as cfn
    from data.shards import write_shard
    from evaluation import evaluate as E

    with np.load(next((demo_data / "tst").glob("*.npz"))) as z:
        a = {k: z[k] for k in z.files}
    row, col = a["row"].astype(np.int64), a["col"].astype(np.int64)
    row[-1] = col[-1] = 200_000
    split = tmp_path / "far_rowcol"
    split.mkdir()
    write_shard(
        split / "a.npz",
        a["image_t1"],
        a["image_t2"],
        a["label_t1"],
        a["label_t2"],
        row=row,
        col=col,
        class_names=a["class_names"],
    )
    net = cfn.load_model(run_dir / "checkpoints" / "best.keras")
    metrics, preds = E.evaluate_split(net, split, batch_size=8)
    E.write_outputs(tmp_path / "out", metrics, preds)
    written = {p.name for p in (tmp_path / "out").iterdir()}
    assert written == set(SPLIT_FILES) - set(E.MAP_FILES)
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any(
        f"{split}: row/col" in m and "tile grid indices" in m and "skipped" in m for m in warned
    ), warned
    with np.load(tmp_path / "out" / "predictions.npz") as z:
        np.testing.assert_array_equal(z["row"], row)


def test_a_tensorflow1_checkpoint_is_named_and_refused(demo_data, tmp_path, capsys):
    """The original's evaluate_model.py took -m/--model_dir holding model.ckpt.meta/.index/.data:
    the same flag here, and one line saying what such a checkpoint is and that it cannot load."""
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    for name in ("checkpoint", "model.ckpt.meta", "model.ckpt.index", "model.ckpt.data-00000-of-00001"):
        (model_dir / name).write_bytes(b"\x00tf1")
    out = tmp_path / "out"
    for target in (model_dir, model_dir / "model.ckpt", model_dir / "model.ckpt.meta"):
        proc = run_in_process(["--model_dir", target, "-val", demo_data / "val",
                               "-tst", demo_data / "tst", "-rpath", out], capsys)
        assert_one_line_error(proc, str(target), "TensorFlow 1 checkpoint", "cannot load")
        assert not out.exists()


def test_model_dir_evaluates_val_and_tst(run_dir, demo_data, tmp_path, capsys):
    """`eval.py --model_dir RUN -val V -tst T` (the original's flags) reports both splits' OA_t1,
    OA_t2, OA_bi and OA_tr."""
    out = tmp_path / "both"
    proc = run_in_process(["--model_dir", run_dir, "-val", demo_data / "val", "-tst", demo_data / "tst",
                           "-rpath", out], capsys)
    assert proc.returncode == 0, proc.stderr
    results = json.loads((out / "results.json").read_text())
    for split in ("val", "tst"):
        assert {"OA_t1", "OA_t2", "OA_bi", "OA_tr"} <= set(results["splits"][split])
    table = proc.out if hasattr(proc, "out") else proc.stdout
    assert "val" in table and "tst" in table and "OA_tr" in table


def test_fusion_weight_figure_is_drawn(evaluated):
    import matplotlib.image as mpimg

    out, _ = evaluated
    for split in ("val", "tst"):
        pixels = mpimg.imread(out / split / "fusion_weight.png")[..., :3]
        drawn = (np.abs(pixels - pixels[0, 0]).sum(axis=-1) > 0.1).mean()
        assert pixels.std() > 0.05 and drawn > 0.02, split
