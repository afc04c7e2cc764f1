"""training.callbacks: the best-checkpoint rule (highest validation OA_t1 + OA_t2, strictly better,
never from a broken epoch), last checkpoint and state every epoch, the epoch log."""

import io
import json

import keras
import numpy as np
import pytest

from tests.evaluation._images import count_colors
from training.callbacks import Checkpoints, EpochLog, FiniteLossGuard, format_epoch_line


def _model():
    inputs = keras.Input((3,))
    return keras.Model(inputs, keras.layers.Dense(2)(inputs))


def _checkpoints(tmp_path, state=None, guard=None):
    guard = guard or FiniteLossGuard()
    cb = Checkpoints(tmp_path / "best.keras", tmp_path / "last.keras", tmp_path / "state.json",
                     guard, state or {"epoch": 0, "best_score": -float("inf"), "best_epoch": None},
                     {"run": 0, "seed": 7})
    cb.set_model(_model())
    return cb


def _epoch(cb, epoch, oa1, oa2):
    cb.on_epoch_end(epoch, {"val_oa_t1": oa1, "val_oa_t2": oa2})
    return json.loads(cb.state_path.read_text())


def test_best_is_the_highest_validation_oa_sum_strictly(tmp_path):
    cb = _checkpoints(tmp_path)
    state = _epoch(cb, 0, 0.5, 0.5)
    assert state["best_score"] == pytest.approx(1.0) and state["best_epoch"] == 1
    assert cb.best.is_file() and cb.last.is_file()
    written = cb.best.stat().st_mtime_ns
    state = _epoch(cb, 1, 0.6, 0.3)  # lower sum: last moves, best stays
    assert state["best_epoch"] == 1 and state["epoch"] == 2
    state = _epoch(cb, 2, 0.4, 0.6)  # equal sum: not better
    assert state["best_epoch"] == 1 and cb.best.stat().st_mtime_ns == written
    state = _epoch(cb, 3, 0.7, 0.4)  # higher sum (1.1): a new best
    assert state["best_epoch"] == 4 and state["best_score"] == pytest.approx(1.1)
    assert state["run"] == 0 and state["seed"] == 7


def test_a_resumed_state_keeps_its_best_score(tmp_path):
    cb = _checkpoints(tmp_path, {"epoch": 5, "best_score": 1.5, "best_epoch": 3})
    state = _epoch(cb, 5, 0.7, 0.7)
    assert not cb.best.exists() and state["best_epoch"] == 3 and state["epoch"] == 6


def test_a_broken_epoch_writes_nothing(tmp_path):
    guard = FiniteLossGuard()
    cb = _checkpoints(tmp_path, guard=guard)
    guard.on_epoch_begin(0)
    guard.set_model(cb.model)
    guard.on_train_batch_end(2, {"loss": float("nan")})
    assert guard.failure and "epoch 1, step 3" in guard.failure and cb.model.stop_training
    cb.on_epoch_end(0, {"val_oa_t1": 1.0, "val_oa_t2": 1.0})
    assert not any(tmp_path.iterdir())


def test_epoch_log_writes_a_line_and_a_csv_row_per_epoch(tmp_path):
    log = EpochLog(tmp_path / "log.txt", tmp_path / "history.csv")
    log.set_model(_model())
    log.set_params({"epochs": 2})
    log.on_train_begin()
    for epoch in range(2):
        log.on_epoch_end(epoch, {"loss": 1.0 / (epoch + 1), "oa_t1": 0.5, "val_oa_t1": 0.25})
    lines = (tmp_path / "log.txt").read_text().splitlines()
    rows = (tmp_path / "history.csv").read_text().splitlines()
    assert len(lines) == 2 and len(rows) == 3 and rows[0].startswith("epoch")
    assert np.isclose(float(rows[2].split(",")[rows[0].split(",").index("loss")]), 0.5)


def test_format_epoch_line_names_the_epoch_and_figures():
    line = format_epoch_line(3, 10, {"loss": 0.5, "oa_t1": 0.25, "val_oa_t1": 0.75,
                                     "learning_rate": 5e-3})
    assert line == "epoch 3/10 | lr 5.0e-03 | trn loss 0.5000 OA_t1 0.2500 | val OA_t1 0.7500"


def _epoch_log(tmp_path, append=False, keep_epochs=0):
    log = EpochLog(tmp_path / "log.txt", tmp_path / "history.csv", append=append,
                   keep_epochs=keep_epochs)
    log.set_model(_model())
    log.set_params({"epochs": 4})
    log.on_train_begin()
    return log


def test_resume_drops_a_cut_row_and_rows_past_the_checkpoint(tmp_path):
    """Disk full cut epoch 3's row; a kill after epoch 4's row came before its checkpoint: resuming
    after epoch 2 keeps rows 1-2 and appends whole rows only (issue 15 items 5 and 8)."""
    log = _epoch_log(tmp_path)
    for epoch in range(2):
        log.on_epoch_end(epoch, {"loss": 1.0, "oa_t1": 0.5, "val_oa_t1": 0.25})
    with open(tmp_path / "history.csv", "a") as fh:
        fh.write("3,0.5,0.5,")  # cut, no newline
    with open(tmp_path / "log.txt", "a") as fh:
        fh.write("epoch 3/4 | lr 1.0e-03 | trn lo")
    log = _epoch_log(tmp_path, append=True, keep_epochs=2)
    log.on_epoch_end(2, {"loss": 0.25, "oa_t1": 0.75, "val_oa_t1": 0.5})
    rows = (tmp_path / "history.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows] == ["epoch", "1", "2", "3"]
    assert all(len(r.split(",")) == len(rows[0].split(",")) for r in rows)
    lines = (tmp_path / "log.txt").read_text().splitlines()
    assert [ln.split()[1] for ln in lines] == ["1/4", "2/4", "3/4"] and "0.2500" in lines[2]

    # rows of epochs after the checkpoint's (written before a kill ahead of its checkpoint)
    log = _epoch_log(tmp_path, append=True, keep_epochs=1)
    log.on_epoch_end(1, {"loss": 0.125, "oa_t1": 0.75, "val_oa_t1": 0.5})
    rows = (tmp_path / "history.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows] == ["epoch", "1", "2"] and "0.125" in rows[2]
    assert len((tmp_path / "log.txt").read_text().splitlines()) == 2


def test_epoch_log_never_leaves_a_partial_file(tmp_path, monkeypatch):
    """The files are replaced whole: a write that fails (disk full) leaves the last epoch's."""
    from utils import rundir

    log = _epoch_log(tmp_path)
    log.on_epoch_end(0, {"loss": 1.0})
    before = (tmp_path / "history.csv").read_bytes()

    def full(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(rundir.os, "replace", full)
    with pytest.raises(OSError):
        log.on_epoch_end(1, {"loss": 0.5})
    assert (tmp_path / "history.csv").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["history.csv", "log.txt"]


def test_last_keras_holds_the_state_it_was_saved_with(tmp_path):
    from utils.rundir import read_embedded_state

    cb = _checkpoints(tmp_path)
    _epoch(cb, 0, 0.5, 0.5)
    _epoch(cb, 1, 0.25, 0.25)
    state = read_embedded_state(cb.last)
    assert state["epoch"] == 2 and state["best_epoch"] == 1 and state == json.loads(
        cb.state_path.read_text())


# ------------------------------------------------------------------------------------ TensorBoard
def _two_date_model(k=3):
    """A stand-in for CorrFusionNet: (x1, x2) -> {prob_t1, prob_t2}."""
    x1, x2 = keras.Input((4,)), keras.Input((4,))
    return keras.Model([x1, x2], {"prob_t1": keras.layers.Dense(k, activation="softmax")(x1),
                                  "prob_t2": keras.layers.Dense(k, activation="softmax")(x2)})


def _events(run_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir), size_guidance={"tensors": 0, "images": 0, "scalars": 0})
    acc.Reload()
    return acc


def test_tensorboard_groups_tags_describes_them_and_draws_validation_figures(tmp_path):
    import tensorflow as tf
    from PIL import Image
    from tensorboard.plugins.hparams import metadata as hp_metadata

    from training.tensorboard import TensorBoardLogger, ValidationFigures

    rng = np.random.default_rng(0)
    n = 24
    x = (rng.normal(size=(n, 4)).astype("float32"), rng.normal(size=(n, 4)).astype("float32"))
    y1 = rng.integers(0, 3, n).astype("int32")
    y2 = np.where(rng.random(n) < 0.3, (y1 + 1) % 3, y1).astype("int32")
    ds = tf.data.Dataset.from_tensor_slices((x, (y1, y2))).batch(8)
    figures = ValidationFigures(ds, y1, y2, ["water", "bare_soil", "forest"], every=2)
    tb = TensorBoardLogger(tmp_path, figures=figures,
                           hparams={"method": "corrfusion", "hidden": 32, "lr": 1e-3})
    tb.set_model(_two_date_model())
    tb.on_train_begin()
    for epoch in range(2):
        tb.on_epoch_end(epoch, {"loss": 1.0, "ce_t1": 0.5, "corr_loss": 0.1, "oa_t1": 0.5,
                                "cancorr": 3.0, "learning_rate": 1e-3, "val_loss": 1.2,
                                "val_oa_t1": 0.4, "tst_oa_t1": 0.3, "trn_oa_t1": 0.6})
    tb.on_train_end()

    trn, val, tst = (_events(tmp_path / s) for s in ("trn", "val", "tst"))
    assert {"loss/total", "loss/ce_t1", "loss/corr", "accuracy/oa_t1", "cca/cancorr",
            "optim/learning_rate", "accuracy/oa_t1_full"} <= set(trn.Tags()["tensors"])
    assert not any("/" not in t for t in trn.Tags()["tensors"]), "an ungrouped tag"
    assert "sqrt(min(n - 1, d))" in trn.SummaryMetadata("cca/cancorr").summary_description
    assert trn.SummaryMetadata("loss/corr").summary_description
    assert {"loss/total", "accuracy/oa_t1", "change/f1"} <= set(val.Tags()["tensors"])
    assert "accuracy/oa_t1" in tst.Tags()["tensors"]
    # figures only every 2nd epoch: at step 2
    assert [e.step for e in val.Tensors("change/f1")] == [2]
    for tag in ("confusion/t1", "confusion/t2", "transitions/from_to"):
        events = val.Tensors(tag)  # TF2 image summaries: [width, height, PNG] strings
        assert [e.step for e in events] == [2], tag
        assert val.SummaryMetadata(tag).plugin_data.plugin_name == "images", tag
        png = tf.make_ndarray(events[0].tensor_proto)[2]
        img = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
        assert img.shape[0] > 100 and count_colors(img) > 10, tag
    pr = val.Tensors("change/p_change/pr_curves")
    assert len(pr) == 1 and tf.make_ndarray(pr[0].tensor_proto).shape[0] == 6
    assert val.SummaryMetadata("change/p_change/pr_curves").plugin_data.plugin_name == "pr_curves"
    # the hparams plugin's experiment and session rows live in val/
    plugin = val.PluginTagToContent(hp_metadata.PLUGIN_NAME)
    start = hp_metadata.parse_session_start_info_plugin_data(
        plugin[hp_metadata.SESSION_START_INFO_TAG])
    assert start.hparams["method"].string_value == "corrfusion"
    assert start.hparams["hidden"].number_value == 32
    experiment = hp_metadata.parse_experiment_plugin_data(plugin[hp_metadata.EXPERIMENT_TAG])
    assert "accuracy/oa_t1" in {m.name.tag for m in experiment.metric_infos}
    assert not trn.Tags()["graph"]


def test_every_logged_name_has_a_group_and_description():
    from training.tensorboard import TB_SCALARS, tb_scalar_tag

    for name in ("loss", "ce_t1", "ce_t2", "corr_loss", "decov_loss", "dcca_loss", "l2", "oa_t1",
                 "oa_t2", "oa_bi", "oa_tr", "cancorr", "learning_rate"):
        tag, description = tb_scalar_tag(name)
        assert name in TB_SCALARS and "/" in tag and description, name
    assert tb_scalar_tag("oa_t1_full")[0] == "accuracy/oa_t1_full"
    assert tb_scalar_tag("something_new")[0] == "other/something_new"


def test_epoch_summary_is_one_concise_line(caplog):
    from training.callbacks import EpochSummary, format_epoch_summary

    logs = {"loss": 0.51234, "oa_t1": 0.8125, "oa_t2": 0.79, "ce_t1": 0.3, "corr_loss": 0.01,
            "val_loss": 0.7, "val_oa_t1": 0.75, "val_oa_t2": 0.701, "val_oa_bi": 0.9,
            "tst_oa_t1": 0.6, "learning_rate": 1e-3}
    line = format_epoch_summary(3, 100, logs, 12.34)
    assert line == ("epoch 3/100: loss 0.5123 OA_t1 81.2% OA_t2 79.0% | val OA_t1 75.0% "
                    "OA_t2 70.1% | lr 1.0e-03 | 12.3 s")
    cb = EpochSummary()
    cb.set_params({"epochs": 2})
    with caplog.at_level("INFO", logger="corrfusion.train"):
        cb.on_epoch_begin(0)
        cb.on_epoch_end(0, logs)
    assert [r.getMessage().startswith("epoch 1/2: loss") for r in caplog.records] == [True]


def test_fusion_histograms_split_changed_and_unchanged_pairs(tmp_path):
    """Per epoch, w and dist of every validation pair as TensorBoard histograms, changed apart."""
    import tensorflow as tf
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    import model as cfn
    from training.callbacks import FusionHistograms

    assert FusionHistograms.create(tmp_path, [], "baseline") is None  # no fusion module
    net = cfn.build_model(3, image_size=(16, 16), backbone="small", hidden=8, seed=0)
    rng = np.random.default_rng(0)
    y1, y2 = np.array([0, 1, 2, 0, 1, 2, 0]), np.array([0, 2, 2, 0, 1, 0, 1])  # 3 changed, 4 not
    x1, x2 = (rng.integers(0, 255, (7, 16, 16, 3), dtype=np.uint8) for _ in range(2))
    val = tf.data.Dataset.from_tensor_slices(((x1, x2), (y1, y2))).batch(4)  # as train's loader
    cb = FusionHistograms.create(tmp_path, val, "corrfusion")
    cb.set_model(net)
    cb.on_epoch_end(0)
    cb.on_epoch_end(1)
    cb.on_train_end()
    acc = EventAccumulator(str(tmp_path / "val"), size_guidance={"tensors": 0})
    acc.Reload()
    tags = set(acc.Tags()["tensors"])
    assert {"fusion_weight/unchanged", "fusion_weight/changed", "dist/unchanged",
            "dist/changed", "fusion_weight_mean/changed"} <= tags, tags
    events = acc.Tensors("fusion_weight/changed")
    assert [e.step for e in events] == [1, 2]
    def value(tag):
        return tf.make_ndarray(acc.Tensors(tag)[0].tensor_proto)

    # histogram buckets are (left, right, count) rows
    assert {g: value(f"dist/{g}")[:, 2].sum() for g in ("changed", "unchanged")} == {
        "changed": 3, "unchanged": 4}
    assert 0 <= float(value("fusion_weight_mean/unchanged")) <= 1


def test_a_kill_before_a_new_best_checkpoint_is_restored_on_resume(tmp_path, monkeypatch):
    """Issue 24: killed after epoch 2's last.keras (a new best) but before its best.keras: the
    state names epoch 2 as the best, best.keras still holds epoch 1; the resume copies last.keras
    (epoch 2's weights) to best.keras. Without the kill nothing is restored."""
    from training import callbacks
    from training.callbacks import restore_best
    from utils.rundir import read_embedded_state

    cb = _checkpoints(tmp_path)
    _epoch(cb, 0, 0.5, 0.5)
    assert read_embedded_state(cb.best)["epoch"] == 1
    assert not restore_best(cb.best, cb.last, json.loads(cb.state_path.read_text()))
    epoch1 = cb.best.read_bytes()
    cb.model.layers[-1].kernel.assign(np.ones((3, 2), "float32"))  # epoch 2 trains on

    real = callbacks.atomic_save_model

    def killed_before_best(model, path, state=None):
        if path == cb.best:
            raise KeyboardInterrupt
        real(model, path, state=state)

    monkeypatch.setattr(callbacks, "atomic_save_model", killed_before_best)
    with pytest.raises(KeyboardInterrupt):
        _epoch(cb, 1, 0.7, 0.7)
    state = json.loads(cb.state_path.read_text())
    assert state["epoch"] == state["best_epoch"] == 2 and cb.best.read_bytes() == epoch1

    assert restore_best(cb.best, cb.last, state)
    assert cb.best.read_bytes() == cb.last.read_bytes()
    restored = keras.saving.load_model(cb.best)
    np.testing.assert_array_equal(restored.layers[-1].kernel.numpy(), np.ones((3, 2)))
    assert not restore_best(cb.best, cb.last, state)  # once is enough


def test_a_resumed_run_writes_its_hparams_session_once(tmp_path):
    """Issue 24: the HParams tab has one row per run: a second TensorBoardLogger on the same
    tb/ directory (a --resume) finds the session and writes none."""
    from training.tensorboard import TensorBoardLogger, hparams_sessions

    for _ in range(2):
        tb = TensorBoardLogger(tmp_path / "tb", hparams={"method": "corrfusion", "lr": 0.01})
        tb.on_train_begin()
        for w in tb.writers.values():
            w.close()
    assert hparams_sessions(tmp_path / "tb" / "val") == 1
    assert len(list((tmp_path / "tb" / "val").glob("events.out.tfevents.*"))) == 1


def test_no_callback_of_ours_makes_fit_wait_for_every_step():
    """Keras' fit on JAX dispatches the next step while the device runs this one unless a callback
    with a batch-end hook is not ``async_safe``: then every step's logs are read back first, the
    per-call sync that makes ``train_on_batch`` slow (issue 25)."""
    import inspect

    from training import callbacks

    ours = [c for _, c in inspect.getmembers(callbacks, inspect.isclass)
            if issubclass(c, keras.callbacks.Callback) and c.__module__ == callbacks.__name__]
    assert FiniteLossGuard in ours and len(ours) >= 6
    for cls in ours:
        cb = object.__new__(cls)  # the hooks and the flag are class attributes
        assert callbacks.per_step_waits([cb]) == [], cls.__name__

    class Printer(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            print(logs)

    class SafePrinter(Printer):
        async_safe = True

    assert callbacks.per_step_waits([Printer(), SafePrinter(), keras.callbacks.History()]) == ["Printer"]
