"""utils.devices (-g, precision policy, strategy) and utils.rundir (atomic writes, refusals)."""

import json
import os
import stat

import keras
import pytest

from utils import devices, rundir


@pytest.mark.parametrize("gpu,expected", [("cpu", "-1"), ("0", "0"), ("0,1", "0,1")])
def test_select_devices_sets_cuda_visible_devices(monkeypatch, gpu, expected):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    devices.select_devices(gpu)
    assert os.environ["CUDA_VISIBLE_DEVICES"] == expected


def test_select_devices_none_keeps_the_environment(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")
    devices.select_devices(None)
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "3"


def test_setup_backend_sets_and_resets_the_precision_policy():
    try:
        info = devices.setup_backend(mixed_precision=True)
        assert info["precision"] == "mixed_bfloat16"  # no GPU here: bfloat16
        assert keras.mixed_precision.global_policy().name == "mixed_bfloat16"
        info = devices.setup_backend(mixed_precision=False)
        assert info["precision"] == "float32" and info["backend"] == "tensorflow"
    finally:
        keras.mixed_precision.set_global_policy("float32")


def test_strategy_without_gpus_is_the_default_one(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    info = {"backend": "tensorflow", "gpus": [], "precision": "float32"}
    strategy = devices.make_strategy(info)
    assert strategy.num_replicas_in_sync == 1 and info["strategy"] == "default (CPU)"
    with strategy.scope():
        pass


def test_other_backends_get_a_no_op_strategy_and_a_warning(caplog):
    info = {"backend": "jax", "gpus": ["gpu:0", "gpu:1"], "precision": "float32"}
    strategy = devices.make_strategy(info)
    assert isinstance(strategy, devices.NoStrategy) and info["strategy"] == "none"
    assert any("need the TensorFlow backend" in r.message for r in caplog.records)
    with strategy.scope():
        pass


def test_atomic_write_leaves_the_usual_mode_and_no_temporary_file(tmp_path):
    path = tmp_path / "sub" / "a.json"
    rundir.atomic_write_json(path, {"x": 1})
    assert json.loads(path.read_text()) == {"x": 1}
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~mask
    assert [p.name for p in path.parent.iterdir()] == ["a.json"]


def test_json_text_writes_each_row_of_numbers_on_one_line_and_reads_back_the_same():
    """results.json: indented, keys sorted, a K x K matrix as K lines of numbers; NumPy values,
    paths, empty lists, strings holding NUL (one shaped like a row marker) and nested dicts read back as json.dumps gives them."""
    import pathlib

    import numpy as np

    obj = {"confusion": np.arange(6).reshape(2, 3), "names": ["a", "b"], "empty": [],
           "nested": [{"w": np.float32(0.25), "p": pathlib.Path("/x")}], "nul": "a\x00b", "marker_like": "\x000\x00",
           "nan": float("nan"), "k": np.int64(7), "mixed": [1, "u", None, True]}
    text = rundir.json_text(obj)
    assert text.endswith("}\n") and "\n  \"confusion\": [\n    [0, 1, 2],\n    [3, 4, 5]\n  ]," in text
    assert '"names": ["a", "b"]' in text and '"mixed": [1, "u", null, true]' in text
    ref = json.loads(json.dumps(obj, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o)))
    back = json.loads(text)
    assert np.isnan(back.pop("nan")) and np.isnan(ref.pop("nan"))  # NaN != NaN: apart
    assert back == ref
    assert list(back) == sorted(back)
    big = np.random.default_rng(0).integers(0, 9, (1000, 1000))
    text = rundir.json_text({"m": big})
    assert text.count("\n") == 1000 + 4 and json.loads(text)["m"] == big.tolist()


def test_check_writable_dir_refuses_what_a_user_made(tmp_path):
    rundir.check_writable_dir(tmp_path / "new", overwrite=False)  # does not exist: fine
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("mine")
    with pytest.raises(rundir.RunDirError, match="not empty"):
        rundir.check_writable_dir(tmp_path / "full", overwrite=False)
    rundir.check_writable_dir(tmp_path / "full", overwrite=True)
    (tmp_path / "file").write_text("x")
    with pytest.raises(rundir.RunDirError, match="not a directory"):
        rundir.check_writable_dir(tmp_path / "file", overwrite=True)
    assert (tmp_path / "full" / "x").read_text() == "mine"


def test_a_directory_under_a_file_is_refused_before_any_work(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(rundir.RunDirError, match=r"cannot create the directory \(its parent .*file is a file\)"):
        rundir.check_writable_dir(tmp_path / "file" / "sub" / "out", overwrite=True)
    with pytest.raises(rundir.RunDirError, match="cannot create"):
        rundir.check_can_create_dir(tmp_path / "file" / "x")
    rundir.check_can_create_dir(tmp_path / "new" / "deep")  # nothing in the way: fine
    assert not (tmp_path / "new").exists() and (tmp_path / "file").read_text() == "x"


@pytest.mark.parametrize("visible", ["0", "0,1", "7"])
def test_requested_gpus_that_are_not_there_are_said(monkeypatch, caplog, visible):
    """issue 15 item 10: -g 0 / 0,1 / 7 on a machine without those GPUs used to train on the CPU
    without a word."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    with caplog.at_level("WARNING", logger=devices.log.name):
        devices.setup_backend()
    assert f"GPU {visible} requested" in caplog.text and "running on the CPU" in caplog.text
    caplog.clear()
    devices.warn_missing_gpus(["GPU:0", "GPU:1"], "tensorflow")  # as many as asked: silent
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "-1")
    devices.warn_missing_gpus([], "tensorflow")  # -g cpu: silent
    assert "requested" not in caplog.text


def test_jit_defaults_to_on_for_jax_and_off_for_tensorflow():
    # Keras' JAX trainer runs the step op by op without jit_compile (issue 25)
    assert devices.resolve_jit(None, "jax") is True
    assert devices.resolve_jit(None, "tensorflow") is False
    assert devices.resolve_jit(False, "jax") is False and devices.resolve_jit(True, "tensorflow") is True
    assert devices.resolve_jit(None) is (keras.backend.backend() == "jax")
