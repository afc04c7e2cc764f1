"""End to end: train_cnn.py on generated shards with the small backbone and tiny images."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import train_cnn
from tests._runs import FAST, read_history, train
from utils.cli import run_main

pytestmark = pytest.mark.slow  # every test here trains, or needs a trained run

ROOT = Path(__file__).resolve().parents[2]


def weights_of(path):
    import model as cfn

    return [np.asarray(w) for w in cfn.load_model(path).weights]


@pytest.fixture
def trained(trained_run):
    """The session's finished 2-epoch run (tests/conftest.py): read-only."""
    return trained_run


def test_run_directory_holds_what_a_user_looks_at(trained, demo_data):
    from data.stats import band_statistics

    args = json.loads((trained / "args.json").read_text())
    # --input_norm bands (the default): the trn statistics, in the checkpoint and in args.json
    want = band_statistics(demo_data / "trn")
    assert args["args"]["input_norm"] == args["input_norm"]["mode"] == "bands"
    for row in range(2):
        np.testing.assert_allclose(args["input_norm"]["mean"][row], want.pooled_mean, rtol=1e-6)
        np.testing.assert_allclose(args["input_norm"]["std"][row], want.pooled_std, rtol=1e-6)
    assert args["args"]["epochs"] == 2 and args["args"]["backbone"] == "small"
    assert args["num_classes"] >= 2 and "keras" in args["versions"]
    assert args["devices"]["backend"] == "tensorflow"

    lines = (trained / "log.txt").read_text().splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("epoch 1/2") and "val loss" in lines[0] and "tst loss" in lines[0]
    for key in ("OA_t1", "OA_t2", "OA_bi", "OA_tr"):
        assert key in lines[1]

    rows = read_history(trained / "history.csv")
    assert [r["epoch"] for r in rows] == ["1", "2"]
    for key in ("loss", "ce_t1", "ce_t2", "corr_loss", "decov_loss", "oa_t1", "oa_bi", "oa_tr",
                "val_oa_t1", "val_oa_t2", "tst_oa_t1", "tst_oa_tr", "learning_rate"):
        assert key in rows[0], key
        assert np.isfinite(float(rows[1][key])), key

    state = json.loads((trained / "checkpoints" / "last_state.json").read_text())
    assert state["epoch"] == 2 and state["best_epoch"] in (1, 2)
    best_row = rows[state["best_epoch"] - 1]
    assert float(best_row["val_oa_t1"]) + float(best_row["val_oa_t2"]) == pytest.approx(
        state["best_score"], abs=1e-6)
    for name in ("best.keras", "last.keras"):
        weights_of(trained / "checkpoints" / name)  # loads with safe_mode

    results = json.loads((trained / "results" / "tst" / "results.json").read_text())
    assert 0.0 <= results["metrics"]["OA_t1"] <= 1.0


def test_tensorboard_event_files_have_the_tags(trained):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import metadata as hp_metadata

    tags, plugins = {}, {}
    for split in ("trn", "val", "tst"):
        acc = EventAccumulator(str(trained / "tb" / split), size_guidance={"tensors": 0})
        acc.Reload()
        tags[split] = set(acc.Tags()["tensors"])
        plugins[split] = {t: acc.SummaryMetadata(t).plugin_data.plugin_name for t in tags[split]}
    for tag in ("loss/total", "loss/ce_t1", "loss/ce_t2", "loss/corr", "loss/decov",
                "accuracy/oa_t1", "accuracy/oa_t2", "accuracy/oa_bi", "accuracy/oa_tr",
                "cca/cancorr", "optim/learning_rate"):
        assert tag in tags["trn"], tag
    for tag in ("loss/total", "accuracy/oa_t1", "accuracy/oa_t2", "change/f1",
                "fusion_weight/unchanged", "dist/unchanged"):  # the whole val split, by change
        assert tag in tags["val"], tag
    for tag, plugin in (("confusion/t1", "images"), ("confusion/t2", "images"),
                        ("transitions/from_to", "images"),
                        ("change/p_change/pr_curves", "pr_curves")):
        assert plugins["val"].get(tag) == plugin, tag
    for tag in ("loss/total", "accuracy/oa_t1", "accuracy/oa_tr"):
        assert tag in tags["tst"], tag
    acc = EventAccumulator(str(trained / "tb" / "val"))
    acc.Reload()
    start = hp_metadata.parse_session_start_info_plugin_data(
        acc.PluginTagToContent(hp_metadata.PLUGIN_NAME)[hp_metadata.SESSION_START_INFO_TAG])
    assert start.hparams["backbone"].string_value == "small"
    assert start.hparams["hidden"].number_value == 32


def test_resume_matches_an_uninterrupted_run(trained, resumed_run):
    """1 epoch, then --resume -e 2 (the session's ``resumed_run``, which checks that the first
    call stopped at epoch 1 and that the resume did not compute the input statistics again) =
    2 epochs straight."""
    workdir, _ = resumed_run
    # the input statistics come from the checkpoint: the same in args.json
    saved = json.loads((workdir / "args.json").read_text())["input_norm"]
    assert saved == json.loads((trained / "args.json").read_text())["input_norm"]
    rows = read_history(workdir / "history.csv")
    assert [r["epoch"] for r in rows] == ["1", "2"]
    assert len((workdir / "log.txt").read_text().splitlines()) == 2
    resumed = weights_of(workdir / "checkpoints" / "last.keras")
    straight = weights_of(trained / "checkpoints" / "last.keras")
    assert len(resumed) == len(straight)
    for a, b in zip(resumed, straight, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_existing_run_is_refused_and_left_untouched(trained, demo_data, capsys):
    before = {p: p.stat().st_mtime_ns for p in trained.rglob("*") if p.is_file()}
    assert train(demo_data, trained, epochs=1) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "already holds checkpoints" in err[0] and "--resume" in err[0]
    after = {p: p.stat().st_mtime_ns for p in trained.rglob("*") if p.is_file()}
    assert before == after


def test_no_tensorboard_several_runs_and_balanced_class_weight(trained, demo_data, tmp_path):
    """-tb false --runs 2 --no-eval_tst --class_weight balanced in one training (two runs of one
    epoch): no event files, each run seeded and evaluated, the summary over the runs; the class
    weights computed from the training split's histograms, recorded in args.json and in the
    checkpoint's config, and the weighted cross-entropies finite."""
    import model as cfn
    from training.optimizers import balanced_class_weights

    plain = json.loads((trained / "args.json").read_text())["args"]
    assert plain["class_weight"] == "none" and plain["ce_weights"] is None
    workdir = tmp_path / "runs2"
    assert train(demo_data, workdir, "-tb", "false", "--runs", "2", "--no-eval_tst",
                 "--class_weight", "balanced", epochs=1) == 0
    assert not list(workdir.rglob("*tfevents*"))
    # --no-eval_tst: no test figures per epoch, the final test evaluation still runs
    assert not any(k.startswith("tst_") for k in read_history(workdir / "0" / "history.csv")[0])
    for k in ("0", "1"):
        assert (workdir / k / "checkpoints" / "best.keras").is_file()
        assert json.loads((workdir / k / "args.json").read_text())["seed"] == 3 + int(k)
    summary = json.loads((workdir / "results" / "summary.json").read_text())
    run_oa = [json.loads((workdir / k / "results" / "tst" / "results.json").read_text())["metrics"]["OA_t1"]
              for k in ("0", "1")]
    assert summary["OA_t1"]["runs"] == pytest.approx(run_oa)
    assert summary["OA_t1"]["mean"] == pytest.approx(np.mean(run_oa))
    assert (workdir / "results" / "summary.csv").read_text().startswith("metric,mean,std")

    run = workdir / "0"
    saved = json.loads((run / "args.json").read_text())
    assert saved["args"]["class_weight"] == "balanced"
    trn = saved["data"]["trn"]
    want = [list(balanced_class_weights(trn[f"hist_{t}"])[0]) for t in ("t1", "t2")]
    np.testing.assert_allclose(saved["args"]["ce_weights"], want)
    assert cfn.load_model(run / "checkpoints" / "best.keras").config.ce_weights == \
        tuple(map(tuple, saved["args"]["ce_weights"]))
    rows = read_history(run / "history.csv")
    for key in ("ce_t1", "ce_t2", "val_ce_t1", "val_ce_t2"):
        assert np.isfinite(float(rows[0][key])), key
    assert (run / "results" / "tst" / "results.json").is_file()


def test_non_finite_loss_stops_with_epoch_and_step(demo_data, tmp_path, caplog):
    workdir = tmp_path / "nan"
    rc = train(demo_data, workdir, "--lr", "1e30", "-sm", "true", epochs=2)
    assert rc == 1
    assert any("non-finite loss" in r.message and "epoch 1, step" in r.message
               for r in caplog.records)
    assert not (workdir / "checkpoints" / "last.keras").exists()


def test_bad_data_exits_2_with_one_line(tmp_path):
    split = tmp_path / "data" / "trn"
    split.mkdir(parents=True)
    (split / "a.npz").write_bytes(b"not a zip")
    (tmp_path / "data" / "val").mkdir()
    proc = subprocess.run([sys.executable, "train_cnn.py", "--data_dir", str(tmp_path / "data"),
                           "--workdir", str(tmp_path / "w"), "--backbone", "small"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]  # no TensorFlow start-up lines
    assert len(lines) == 1 and lines[0].startswith("error:") and "a.npz" in lines[0], lines
    assert not (tmp_path / "w").exists()


def test_a_constant_band_exits_2_with_one_line_naming_split_and_band(tmp_path):
    """--input_norm bands (the default) cannot standardise a constant band: one line naming the
    split and the band, exit 2, before any run directory is written."""
    from data.shards import write_shard

    rng = np.random.default_rng(0)
    for split in ("trn", "val", "tst"):
        (tmp_path / "data" / split).mkdir(parents=True)
        x1 = rng.integers(6, 117, (6, 16, 16, 3)).astype(np.uint8)
        x2 = x1.copy()
        x2[..., 2] = 40  # band 3 of date 2 constant
        y = np.arange(6, dtype=np.int32) % 2 + 1
        write_shard(tmp_path / "data" / split / "a.npz", x1, x2, y, y)
    proc = subprocess.run([sys.executable, "train_cnn.py", "--data_dir", str(tmp_path / "data"),
                           "--workdir", str(tmp_path / "w"), "--backbone", "small"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, lines
    assert lines[0].startswith("error:") and "trn split, image_t2 band 3: constant" in lines[0]
    assert not (tmp_path / "w").exists()


def test_help_is_fast_and_imports_no_tensorflow():
    code = ("import runpy, sys\nsys.argv = ['train_cnn.py', '-h']\n"
            "try:\n    runpy.run_path('train_cnn.py', run_name='__main__')\n"
            "except SystemExit:\n    pass\n"
            "print('HEAVY', [m for m in ('tensorflow', 'keras', 'jax') if m in sys.modules])")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                          timeout=60)
    assert "--epoches" in proc.stdout and "--use_tfboard" in proc.stdout
    assert "HEAVY []" in proc.stdout


def test_a_split_of_another_image_size_is_named(demo_data, tmp_path, capsys):
    from data import synthetic

    other = tmp_path / "other"
    synthetic.generate(other, pairs=40, size=24, classes=4, seed=1)
    workdir = tmp_path / "w"
    rc = run_main(train_cnn.main, ["-trn", str(demo_data / "trn"), "-val", str(demo_data / "val"),
                                   "-tst", str(other / "tst"), "--workdir", str(workdir), *FAST])
    assert rc == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith(f"error: {other / 'tst'}: image shape (24, 24, 3)")
    assert "--image_size" in err and not workdir.exists()


# ------------------------------------------------------------------ bad input: nothing replaced
def snapshot(root):
    """Every file under root with its bytes, and every directory (to compare before/after)."""
    root = Path(root)
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None)
            for p in sorted(root.rglob("*"))}


def one_error_line(capsys):
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1 and err[0].startswith("error: "), err
    assert "Traceback" not in err[0]
    return err[0]


@pytest.mark.parametrize("where,flags,name", [
    ("w", [], "args.json"),
    ("w", [], "log.txt"),
    ("w", [], "history.csv"),
    ("logs", ["-lpath", "{logs}"], "history.csv"),
    ("ckpt", ["-mpath", "{ckpt}"], "last_state.json"),
    ("tb", ["-tbpath", "{tb}"], "val/events.out"),
    ("w", [], "results/mine.txt"),
])
def test_a_users_files_where_a_run_writes_are_refused_and_kept(demo_data, tmp_path, capsys,
                                                               where, flags, name):
    user = tmp_path / where / name
    user.parent.mkdir(parents=True)
    user.write_bytes(b"mine\n")
    before = snapshot(tmp_path)
    flags = [f.format(logs=tmp_path / "logs", ckpt=tmp_path / "ckpt", tb=tmp_path / "tb")
             for f in flags]
    assert train(demo_data, tmp_path / "w", *flags, epochs=1) == 2
    err = one_error_line(capsys)
    assert str(user if "/" not in name else user.parent) in err
    assert "--resume" in err or "--overwrite" in err
    assert snapshot(tmp_path) == before


def test_several_runs_refuse_a_users_summary_files(demo_data, tmp_path, capsys):
    res = tmp_path / "userres"
    res.mkdir()
    (res / "summary.json").write_text('{"mine": 1}\n')
    before = snapshot(tmp_path)
    assert train(demo_data, tmp_path / "w", "--runs", "2", "-rpath", str(res), "-tb", "false",
                 epochs=1) == 2
    assert str(res / "summary.json") in one_error_line(capsys)
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("flag,value", [("--workdir", "afile"), ("-rpath", "afile/res"),
                                        ("-lpath", "afile"), ("-mpath", "afile/ckpt"),
                                        ("-tbpath", "afile/tb")])
def test_output_paths_that_are_files_are_refused_before_any_work(demo_data, tmp_path, capsys,
                                                                 flag, value):
    (tmp_path / "afile").write_text("a user's file\n")
    workdir = tmp_path / "afile" if flag == "--workdir" else tmp_path / "w"
    extra = [] if flag == "--workdir" else [flag, str(tmp_path / value)]
    before = snapshot(tmp_path)
    assert train(demo_data, workdir, *extra, epochs=1) == 2
    err = one_error_line(capsys)
    assert str(tmp_path / "afile") in err
    assert snapshot(tmp_path) == before


@pytest.fixture
def resumable(trained, tmp_path):
    """A copy of the trained run (2 epochs) to break."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(trained, run)
    return run


def other_data(tmp_path, **kw):
    from data import synthetic

    root = tmp_path / "other"
    synthetic.generate(root, **{"pairs": 60, "size": 32, "classes": 6, "seed": 1, **kw})
    return root


@pytest.mark.parametrize("epochs", [3, 2])  # 2: already trained that far
def test_resume_with_a_checkpoint_for_other_data_writes_nothing(resumable, tmp_path, capsys,
                                                                 epochs):
    data6 = other_data(tmp_path)
    before = snapshot(resumable)
    assert train(data6, resumable, "--resume", epochs=epochs) == 2
    err = one_error_line(capsys)
    assert str(resumable / "checkpoints" / "last.keras") in err and "6 classes" in err
    assert snapshot(resumable) == before


def test_resume_with_another_image_size_writes_nothing(resumable, demo_data, capsys):
    before = snapshot(resumable)
    assert train(demo_data, resumable, "--resume", "--image_size", "40,40", epochs=3) == 2
    err = one_error_line(capsys)
    assert str(resumable / "checkpoints" / "last.keras") in err and "40x40x3" in err
    assert snapshot(resumable) == before


def break_last_uncompiled(run):
    import model as cfn

    last = run / "checkpoints" / "last.keras"
    cfn.load_model(last, compile=False).save(last)


@pytest.mark.parametrize("file,breaker,match", [
    ("last.keras", lambda p: p.write_bytes(b"junk\n"), "not a Keras .keras archive"),
    ("last_state.json", lambda p: p.write_text('{"epoch": 1,'), "unreadable (JSONDecodeError"),
    ("last_state.json", lambda p: p.write_text('{"epoch": "two"}'), "epoch: 'two'"),
    ("last_state.json", lambda p: p.write_text('{"epoch": 1, "best_score": "x"}'), "best_score"),
    ("last.keras", lambda p: break_last_uncompiled(p.parents[1]), "without an optimiser"),
    ("best.keras", lambda p: p.write_bytes(b"junk\n"), "not a Keras .keras archive"),
])
def test_bad_resume_files_are_one_line_errors(resumable, demo_data, capsys, file, breaker, match):
    path = resumable / "checkpoints" / file
    breaker(path)
    before = snapshot(resumable)
    assert train(demo_data, resumable, "--resume", epochs=3) == 2
    err = one_error_line(capsys)
    assert err.startswith(f"error: {path}: ") and match in err
    assert snapshot(resumable) == before


def test_resume_truncated_last_checkpoint_is_one_line(resumable, demo_data, capsys):
    """A zip with config.json whose weights are missing: caught when loading, before writing."""
    import zipfile

    last = resumable / "checkpoints" / "last.keras"
    with zipfile.ZipFile(last) as zf:
        keep = {n: zf.read(n) for n in zf.namelist() if not n.endswith(".h5")}
    with zipfile.ZipFile(last, "w") as zf:
        for n, b in keep.items():
            zf.writestr(n, b)
    before = snapshot(resumable)
    assert train(demo_data, resumable, "--resume", epochs=3) == 2
    err = one_error_line(capsys)
    assert err.startswith(f"error: {last}: not a readable Keras checkpoint")
    assert snapshot(resumable) == before


def test_weights_file_that_is_not_weights_names_the_flag_and_file(demo_data, tmp_path, capsys):
    afile = tmp_path / "afile"
    afile.write_text("not weights\n")
    assert train(demo_data, tmp_path / "w", "--weights", str(afile), epochs=1) == 2
    err = one_error_line(capsys)
    assert err.startswith(f"error: {afile}: --weights: ") and "--backbone" not in err
    assert not (tmp_path / "w").exists()
    assert train(demo_data, tmp_path / "w", "--weights", str(tmp_path / "nope.weights.h5")) == 2
    assert one_error_line(capsys).startswith(f"error: {tmp_path / 'nope.weights.h5'}: --weights")


def test_the_original_preset_trains_resnet50_per_date(tmp_path, monkeypatch):
    """issue 11: --preset original builds the original's network (ResNet50 per date, flatten,
    frozen BN, Glorot-uniform CorrFusion kernels, orthogonal SDL start) and trains a step
    with constant 1e-3 Nesterov SGD; args.json records the preset and every resolved value.
    On 22 pairs (16 / 2 / 4: one training step of -b 16): two ResNet50s cost their build, trace
    and checkpoints whatever the data, the steps are what a smaller set saves. The network
    checked at the end is the one the final evaluation loaded from best.keras (captured, not
    loaded a second time: two ResNet-50s take seconds to build and load)."""
    import zipfile

    from data import synthetic
    from training import fit as fit_module

    loaded = []

    def load_and_keep(path, *a, **kw):
        net = load_checkpoint(path, *a, **kw)
        loaded.append((Path(path), net))
        return net

    load_checkpoint = fit_module.load_checkpoint
    monkeypatch.setattr(fit_module, "load_checkpoint", load_and_keep)

    data = tmp_path / "data"
    synthetic.generate(data, pairs=22, size=32, classes=4, change_rate=0.05, seed=0)
    workdir = tmp_path / "orig"
    argv = ["--data_dir", str(data), "--workdir", str(workdir), "--preset", "original",
            "-e", "1", "-b", "16", "--hidden", "64", "-tb", "false"]
    assert run_main(train_cnn.main, argv) == 0
    saved = json.loads((workdir / "args.json").read_text())["args"]
    assert saved["preset"] == "original" and saved["backbone"] == "resnet50"
    assert (saved["optimizer"], saved["lr"], saved["lr_boundaries"]) == ("sgd", [0.001], [])
    assert (saved["momentum"], saved["nesterov"]) == (0.9, True)
    assert (saved["shared"], saved["bn"], saved["pooling"], saved["l2"]) == (False, "frozen", "flatten", 1e-4)
    assert (saved["decov_init"], saved["decov_penalty"], saved["fusion_init"]) == (
        "orthogonal", "original", "glorot_uniform")
    assert saved["hidden"] == 64 and saved["batch_size"] == 16  # given explicitly: kept
    # issue 22: keras_applications' ResNet-50 start, the original's comparators, eps per feature,
    # trn evaluated every epoch, one run
    assert (saved["resnet_init"], saved["comparators"], saved["dist_epsilon"]) == (
        "keras_applications", "original", "per_feature")
    assert (saved["eval_trn"], saved["runs"]) == (True, 1)
    with zipfile.ZipFile(workdir / "checkpoints" / "last.keras") as zf:
        compiled = json.loads(zf.read("config.json"))["compile_config"]["optimizer"]["config"]
    assert compiled["nesterov"] is True and compiled["momentum"] == 0.9
    assert compiled["learning_rate"] == pytest.approx(1e-3)  # a constant rate, not a schedule
    history = read_history(workdir / "history.csv")
    assert len(history) == 1 and np.isfinite(float(history[0]["loss"]))
    assert [path for path, _ in loaded] == [workdir / "checkpoints" / "best.keras"]
    net = loaded[0][1]  # as model.load_model restored it from best.keras
    assert net.backbone_t1.name != net.backbone_t2.name and net.pool.name == "flatten"
    assert any(layer.name.startswith("conv5") for layer in net.backbone_t1.layers)  # ResNet50
    bns = [la for la in net.backbone_t2.layers if type(la).__name__ == "BatchNormalization"]
    assert len(bns) == 53 and all(bn.epsilon == 1e-3 for bn in bns)  # restored as it was built


def _as_before_input_norm(run):
    """Make a run look like one trained before --input_norm existed (dtype scaling): no
    input_norm in its checkpoints' config.json nor in args.json."""
    import zipfile

    for ckpt in (run / "checkpoints").glob("*.keras"):
        tmp = ckpt.with_suffix(".tmp")
        with zipfile.ZipFile(ckpt) as zin, zipfile.ZipFile(tmp, "w") as zout:
            for item in zin.infolist():
                data = zin.read(item.filename)
                if item.filename == "config.json":
                    config = json.loads(data)
                    del config["config"]["config"]["input_norm"]
                    data = json.dumps(config).encode()
                zout.writestr(item, data)
        tmp.replace(ckpt)
    args = json.loads((run / "args.json").read_text())
    del args["args"]["input_norm"], args["input_norm"]
    (run / "args.json").write_text(json.dumps(args))


def test_overwrite_then_resuming_a_run_from_before_input_norm_keeps_its_dtype_scaling(demo_data, tmp_path,
                                                                        caplog):
    workdir = tmp_path / "old"
    # its first training also shows that --overwrite replaces what a user left in the workdir
    # (refused without it: test_a_users_files_where_a_run_writes_are_refused_and_kept)
    workdir.mkdir()
    (workdir / "log.txt").write_text("mine\n")
    assert train(demo_data, workdir, "--input_norm", "dtype", "--overwrite", "-tb", "false",
                 epochs=1) == 0
    assert (workdir / "log.txt").read_text().startswith("epoch 1/1")
    _as_before_input_norm(workdir)
    caplog.set_level("INFO")
    assert train(demo_data, workdir, "--resume", "-tb", "false", epochs=2) == 0  # default: bands
    said = [r.getMessage() for r in caplog.records if "before input normalisation" in r.getMessage()]
    assert said and "resuming with their dtype scaling" in said[0]
    assert not any("statistics of the training split" in r.getMessage() for r in caplog.records)
    assert [r["epoch"] for r in read_history(workdir / "history.csv")] == ["1", "2"]
    assert json.loads((workdir / "args.json").read_text())["input_norm"] == {"mode": "dtype"}
