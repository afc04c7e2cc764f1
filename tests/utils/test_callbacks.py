"""utils.callbacks: the best-checkpoint rule (highest validation OA_t1 + OA_t2, strictly better,
never from a broken epoch), last checkpoint and state every epoch, the epoch log."""

import json

import keras
import numpy as np
import pytest

from utils.callbacks import Checkpoints, EpochLog, FiniteLossGuard, format_epoch_line


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


def test_fusion_histograms_split_changed_and_unchanged_pairs(tmp_path):
    """Per epoch, w and dist of every validation pair as TensorBoard histograms, changed apart."""
    import tensorflow as tf
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    import model as cfn
    from utils.callbacks import FusionHistograms

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
