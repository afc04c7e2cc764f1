"""Survival, third pass (issue 24): each hostile case is a command, its exit status, its one line
and nothing written or lost. Everything here is refused before TensorFlow starts, or uses an
untrained small model saved once per module: no training."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import eval as eval_script
import predict
import train_cnn
from data import inspect as inspect_cli
from data import shards
from tests.data import _scenes as scenes
from tests.scripts.test_train_survival import one_error_line, snapshot, train
from utils.cli import run_main


def rewrite_split(data, split, raw=False, **changes):
    """The split's one shard written again with ``changes`` (arrays or class_names)."""
    path = next((Path(data) / split).glob("*.npz"))
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    arrays.update(changes)
    path.unlink()
    if raw:  # what write_shard itself would refuse
        np.savez(path, **{k: v for k, v in arrays.items() if v is not None})
        return
    names = arrays.pop("class_names", None)
    shards.write_shard(path, arrays.pop("image_t1"), arrays.pop("image_t2"),
                       arrays.pop("label_t1"), arrays.pop("label_t2"),
                       class_names=None if names is None else list(names), **arrays)


@pytest.fixture
def data_copy(demo_data, tmp_path):
    dst = tmp_path / "data"
    shutil.copytree(demo_data, dst)
    return dst


def usage_error(capsys, call):
    """argparse's refusal: exit 2, its last line the ``error:``."""
    with pytest.raises(SystemExit) as exc:
        call()
    assert exc.value.code == 2
    return capsys.readouterr().err.strip().splitlines()[-1]


# ------------------------------------------------------------------------------ (3), (4) flags
@pytest.mark.parametrize("lr", ["inf", "1e-3,inf", "-inf"])
def test_an_infinite_learning_rate_is_refused_at_parse_time(demo_data, tmp_path, capsys, lr):
    err = usage_error(capsys, lambda: train(demo_data, tmp_path / "w", f"--lr={lr}",
                                            "--lr_boundaries", "1" if "," in lr else ""))
    assert "argument --lr: expected comma-separated finite positive numbers" in err
    assert not (tmp_path / "w").exists()


def test_boundaries_with_a_single_learning_rate_are_refused(demo_data, tmp_path, capsys):
    err = usage_error(capsys, lambda: train(demo_data, tmp_path / "w", "--lr_boundaries", "30,60"))
    assert err.endswith("error: --lr_boundaries 30,60: needs 3 --lr values (one per period), "
                        "--lr has 1; give the learning rates, or drop --lr_boundaries for a "
                        "constant rate")
    assert not (tmp_path / "w").exists()


# ---------------------------------------------------------------------------- (1) class count
def test_a_label_above_the_class_limit_is_refused_before_training(data_copy, tmp_path, capsys):
    with np.load(next((data_copy / "trn").glob("*.npz"))) as z:
        y = z["label_t1"].copy()
    y[0] = shards.MAX_CLASSES + 1
    rewrite_split(data_copy, "trn", raw=True, label_t1=y, class_names=None)
    before = snapshot(data_copy)
    assert train(data_copy, tmp_path / "w") == 2
    err = one_error_line(capsys)
    assert f"label_t1: label {shards.MAX_CLASSES + 1}; expected class ids 1..K with K <= " \
           f"{shards.MAX_CLASSES}" in err
    assert not (tmp_path / "w").exists() and snapshot(data_copy) == before


def test_a_class_count_above_the_limit_is_refused_before_training(demo_data, tmp_path, capsys):
    assert train(demo_data, tmp_path / "w", "-n", str(shards.MAX_CLASSES + 1)) == 2
    err = one_error_line(capsys)
    assert err == (f"error: -n/--num_classes {shards.MAX_CLASSES + 1}: {shards.MAX_CLASSES + 1} "
                   f"classes; expected at most {shards.MAX_CLASSES} (the K x K confusion and "
                   "transition matrices and their figures are bounded and tested up to that)")
    assert not (tmp_path / "w").exists()


# -------------------------------------------------------------------- (2) class names per split
def test_class_names_that_differ_between_splits_are_refused(data_copy, tmp_path, capsys):
    names = ["a", "b", "c", "d"]
    for split in ("trn", "val", "tst"):
        rewrite_split(data_copy, split, class_names=names[::-1] if split == "val" else names)
    before = snapshot(data_copy)
    assert train(data_copy, tmp_path / "w") == 2
    err = one_error_line(capsys)
    assert str(data_copy / "val") in err and "class_names: ['d', 'c', 'b', 'a']" in err
    assert "(class 1 is 'd' here, 'a' there)" in err
    assert not (tmp_path / "w").exists()

    assert inspect_cli.main([str(data_copy)]) == 2
    err = one_error_line(capsys)
    assert str(data_copy / "val") in err and "class_names" in err
    assert snapshot(data_copy) == before


DEMO_NAMES = ["water", "farmland", "dense_residential", "sparse_residential"]


@pytest.fixture(scope="module")
def named_run(tmp_path_factory):
    """A run directory: an untrained small model for the demo data (4 classes, 32 x 32) as
    checkpoints/best.keras and an args.json naming the classes as the demo data does."""
    import model as cfn

    run = tmp_path_factory.mktemp("named_run")
    (run / "checkpoints").mkdir()
    cfn.build_model(4, image_size=(32, 32), backbone="small", hidden=16, seed=0).save(
        run / "checkpoints" / "best.keras")
    (run / "args.json").write_text(json.dumps({"class_names": DEMO_NAMES}))
    return run


def test_eval_refuses_a_split_naming_the_classes_unlike_the_checkpoint(named_run, data_copy,
                                                                      tmp_path, capsys):
    rewrite_split(data_copy, "tst", class_names=[DEMO_NAMES[i] for i in (1, 0, 2, 3)])
    rc = run_main(eval_script.main, ["-m", str(named_run), "-tst", str(data_copy / "tst"),
                                     "-rpath", str(tmp_path / "res")])
    assert rc == 2
    err = one_error_line(capsys)
    assert str(data_copy / "tst") in err and "(class 1 is 'farmland' here, 'water' there)" in err
    assert "args.json" in err and not (tmp_path / "res").exists()


def test_predict_refuses_the_runs_class_names_in_another_order(named_run):
    ckpt = named_run / "checkpoints" / "best.keras"
    saved = ["a", "b", "c", "d"]
    with pytest.raises(predict.UsageError, match=r"--class_names: class 1 is 'b', the run "
                                                 r"\(args.json\) trained it as 'a'"):
        predict.class_names("b,a,c,d", saved, 4, ckpt)
    assert predict.class_names("a,b,c,d", saved, 4, ckpt) == saved
    assert predict.class_names("w,x,y,z", saved, 4, ckpt) == ["w", "x", "y", "z"]  # a renaming


# ------------------------------------------------------------------------ weak message: 0 pairs
def test_a_split_of_zero_pairs_says_so(data_copy, tmp_path, capsys):
    with np.load(next((data_copy / "val").glob("*.npz"))) as z:
        empty = {k: z[k][:0] for k in ("image_t1", "image_t2", "label_t1", "label_t2", "row", "col")}
    rewrite_split(data_copy, "val", **empty)
    assert train(data_copy, tmp_path / "w") == 2
    err = one_error_line(capsys)
    assert err == f"error: {data_copy / 'val'}: val split: 0 pairs in 1 shard(s); expected at " \
                  "least one pair for training"
    assert not (tmp_path / "w").exists()


# ------------------------------------------------------------------ (6), (7) predict.py rasters
@pytest.fixture(scope="module")
def model_32(tmp_path_factory):
    """An untrained small model for 32 x 32 x 3 tiles, 3 classes."""
    import model as cfn

    path = tmp_path_factory.mktemp("m32") / "m32.keras"
    cfn.build_model(3, image_size=(32, 32), backbone="small", hidden=16, seed=0).save(path)
    return path


@pytest.mark.parametrize("width, height", [(128, 96), (1, 1), (20, 200)])
def test_predict_maps_a_raster_narrower_than_one_tile(model_32, tmp_path, capsys, width, height):
    import rasterio

    image = scenes.render(scenes.class_grid(1, 1), 256, height=height, width=width, seed=1)
    t1 = scenes.write_tif(tmp_path / "t1.tif", image)
    t2 = scenes.write_tif(tmp_path / "t2.tif", image)
    out = tmp_path / "maps"
    assert run_main(predict.main, ["-m", str(model_32), "--t1", str(t1), "--t2", str(t2),
                                   "--out", str(out), "--tile", "256", "-g", "cpu"]) == 0
    with rasterio.open(out / "change.tif") as src:
        assert (src.width, src.height) == (1, 1)  # one tile covers the raster
    summary = json.loads((out / "summary.json").read_text())
    assert summary["pairs"] == 1


def test_predict_into_an_unwritable_location_is_refused(model_32, tmp_path, capsys):
    image = scenes.render(scenes.class_grid(1, 1), 32, seed=1)
    t1 = scenes.write_tif(tmp_path / "t1.tif", image)
    rc = run_main(predict.main, ["-m", str(model_32), "--t1", str(t1), "--t2", str(t1),
                                 "--out", "/sys/x/maps"])
    assert rc == 2
    assert one_error_line(capsys) == ("error: --out /sys/x/maps: cannot write (in /sys): "
                                      "Permission denied; expected a writable directory")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t1.tif"]


# ------------------------------------------------------------------------------- (5) disk full
def no_temporary_files(root):
    return not [p for p in Path(root).rglob("*") if ".tmp" in p.name or ".incomplete" in p.name]


def test_a_full_disk_in_training_is_one_line_and_a_distinct_status(demo_data, tmp_path, capsys,
                                                                   monkeypatch):
    """ENOSPC from a write of the run (injected into args.json's): one line naming the file,
    that nothing written is lost and that --resume continues; exit status 74, no traceback."""
    import errno

    from training import fit as training
    from utils.cli import DISK_FULL_STATUS

    def full(path, obj):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(training, "atomic_write_json", full)
    assert train(demo_data, tmp_path / "w") == DISK_FULL_STATUS == 74
    err = one_error_line(capsys)
    assert err == (f"error: {tmp_path / 'w' / 'args.json'}: disk full, write failed (No space "
                   "left on device, errno 28); files written before are whole (each is replaced "
                   "only once complete): free space, then run the same command with --resume to "
                   "continue after the last finished epoch")
    assert no_temporary_files(tmp_path)


@pytest.fixture
def small_tmpfs(tmp_path):
    """A 96 KiB tmpfs (needs root; skipped where mount is refused), unmounted afterwards."""
    import subprocess

    mnt = tmp_path / "full"
    mnt.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=96k", "tmpfs", str(mnt)],
                          capture_output=True, text=True)
    if proc.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


def test_eval_onto_a_full_disk_is_one_line_and_a_distinct_status(named_run, demo_data,
                                                                 small_tmpfs, capsys):
    """A real ENOSPC: eval.py's results (figures of hundreds of KiB) into a 96 KiB tmpfs."""
    rc = run_main(eval_script.main, ["-m", str(named_run), "-tst", str(demo_data / "tst"),
                                     "-rpath", str(small_tmpfs / "res"), "-g", "cpu"])
    assert rc == 74
    err = one_error_line(capsys)
    assert "disk full, write failed (No space left on device, errno 28)" in err
    assert err.endswith("free space and run the command again")
    assert no_temporary_files(small_tmpfs)


def test_a_file_size_limit_is_one_line_and_a_distinct_status(named_run, demo_data, tmp_path,
                                                              capsys):
    """``ulimit -f`` (EFBIG; Python ignores SIGXFSZ) while eval.py writes its results."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, hard))
    try:
        rc = run_main(eval_script.main, ["-m", str(named_run), "-tst", str(demo_data / "tst"),
                                         "-rpath", str(tmp_path / "res"), "-g", "cpu"])
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    assert rc == 74
    assert "disk full, write failed (File too large, errno 27)" in one_error_line(capsys)
    assert no_temporary_files(tmp_path)


# ------------------------------------------------------------------------------ weak messages
def test_an_unsafe_lambda_checkpoint_is_refused_by_name(tmp_path):
    import keras

    from model.checkpoints import load_checkpoint
    from utils.cli import UsageError

    inp = keras.Input((3,))
    keras.Model(inp, keras.layers.Lambda(lambda x: x * 2)(inp)).save(tmp_path / "lam.keras")
    with pytest.raises(UsageError) as exc:
        load_checkpoint(tmp_path / "lam.keras")
    assert str(exc.value) == (f"{tmp_path / 'lam.keras'}: refused: it holds a `Lambda` layer "
                              "(Python code that loading would run; unsafe, Keras safe_mode); "
                              "expected a CorrFusionNet checkpoint, which holds none")


def test_a_batch_too_large_for_memory_names_the_batch_not_an_image_size(demo_data, tmp_path,
                                                                        capsys):
    assert train(demo_data, tmp_path / "w", "-b", "100000000") == 2
    err = one_error_line(capsys)
    assert err.startswith("error: -b/--batch_size 100000000: a training batch of 100000000 pairs "
                          "of 32x32 (the shards' size) needs at least ") and "--image_size 32" not in err
    assert not (tmp_path / "w").exists()


@pytest.mark.parametrize("methods, words", [("baseline,,baseline", "an empty method name"),
                                            ("baseline,corrfusion,baseline",
                                             "baseline given more than once")])
def test_compare_refuses_an_empty_or_repeated_method(demo_data, tmp_path, capsys, methods, words):
    import compare

    with pytest.raises(SystemExit) as exc:
        compare.parse_args(["--data_dir", str(demo_data), "--workdir", str(tmp_path / "w"),
                            "--methods", methods])
    assert exc.value.code == 2
    assert words in capsys.readouterr().err.strip().splitlines()[-1]
    assert not (tmp_path / "w").exists()


# ------------------------------------------------------------------------- left open: resume
def test_a_resume_with_another_class_weight_is_refused(tmp_path):
    from training.config import TrainConfig
    from utils.cli import UsageError
    from utils.rundir import check_resume_settings, run_paths

    def config(*extra):
        return TrainConfig.from_args(train_cnn.parse_args(
            ["--data_dir", "d", "--workdir", str(tmp_path), *extra]))

    (tmp_path / "args.json").write_text(json.dumps({"args": config().to_args()}))
    before = snapshot(tmp_path)
    resumed = config("--resume", "--class_weight", "balanced")
    with pytest.raises(UsageError, match=r"--class_weight balanced \(run: none\)"):
        check_resume_settings(resumed, run_paths(resumed, 0))
    assert snapshot(tmp_path) == before


# ------------------------------------------------------------------- a downloaded checkpoint
@pytest.fixture
def served(named_run, tmp_path, monkeypatch):
    """best.keras of ``named_run`` served as /m.keras by an HTTP server on 127.0.0.1 (stopped
    after the test); Keras' download cache in tmp_path. Returns (base URL, the file's SHA-256)."""
    import functools
    import hashlib
    import http.server
    import threading

    root = tmp_path / "www"
    root.mkdir()
    shutil.copy(named_run / "checkpoints" / "best.keras", root / "m.keras")
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras_home"))

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0),
                                             functools.partial(Quiet, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1},
                              daemon=True)
    thread.start()
    try:
        yield (f"http://127.0.0.1:{server.server_address[1]}",
               hashlib.sha256((root / "m.keras").read_bytes()).hexdigest())
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@pytest.mark.slow  # downloads and evaluates a checkpoint end to end
def test_eval_evaluates_a_checkpoint_at_a_url_once_downloaded(served, demo_data, tmp_path,
                                                              capsys):
    base, sha = served
    argv = ["-m", f"{base}/m.keras", "--sha256", sha, "-tst", str(demo_data / "tst"), "-g", "cpu"]
    assert run_main(eval_script.main, [*argv, "-rpath", str(tmp_path / "res")]) == 0
    assert (tmp_path / "res" / "tst" / "results.json").is_file()
    cached = list((tmp_path / "keras_home" / "corrfusion_checkpoints").rglob("m.keras"))
    assert len(cached) == 1
    (tmp_path / "www" / "m.keras").unlink()  # a second evaluation reads the cache
    assert run_main(eval_script.main, [*argv, "-rpath", str(tmp_path / "res2")]) == 0


@pytest.mark.parametrize("case", ["wrong hash", "404", "no server", "bad hash text"])
def test_a_download_that_fails_is_one_line_and_writes_nothing(served, demo_data, tmp_path,
                                                              capsys, case):
    import socket

    base, sha = served
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    url, digest, words = {
        "wrong hash": (f"{base}/m.keras", "0" * 64, "SHA-256 differs from --sha256"),
        "404": (f"{base}/none.keras", None, "download failed (Exception: URL fetch failure"),
        "no server": (f"http://127.0.0.1:{closed}/m.keras", None, "Connection refused"),
        "bad hash text": (f"{base}/m.keras", "abc", "--sha256 abc: expected 64 hexadecimal"),
    }[case]
    argv = ["-m", url, "-tst", str(demo_data / "tst"), "-rpath", str(tmp_path / "res")]
    assert run_main(eval_script.main, [*argv, *(["--sha256", digest] if digest else [])]) == 2
    assert words in one_error_line(capsys)
    assert not (tmp_path / "res").exists()
    assert not list((tmp_path / "keras_home").rglob("*.keras"))
    image = scenes.render(scenes.class_grid(1, 1), 32, seed=1)
    t1 = scenes.write_tif(tmp_path / "t1.tif", image)
    rc = run_main(predict.main, ["-m", url, *(["--sha256", digest] if digest else []),
                                 "--t1", str(t1), "--t2", str(t1), "--out", str(tmp_path / "maps")])
    assert rc == 2 and words in one_error_line(capsys)
    assert not (tmp_path / "maps").exists()
