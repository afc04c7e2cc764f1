"""Keras callbacks used by train_cnn.py.

Order matters: the guard and the split evaluation come first, because they add to the epoch's
`logs` (`tst_*`, `trn_*`, `learning_rate`) what the checkpoint, log and TensorBoard callbacks read.
"""

from __future__ import annotations

import csv
import logging
import math
from pathlib import Path

import keras
import numpy as np

from utils.rundir import atomic_save_model, atomic_write_json

log = logging.getLogger("corrfusion.train")

#: the four accuracy figures of docs/DESIGN.md §3, as the model's metrics name them
OA_KEYS = ("oa_t1", "oa_t2", "oa_bi", "oa_tr")


def current_learning_rate(optimizer) -> float:
    lr = optimizer.learning_rate
    if callable(lr):  # a schedule
        lr = lr(optimizer.iterations)
    return float(keras.ops.convert_to_numpy(lr))


class FiniteLossGuard(keras.callbacks.Callback):
    """Stops training at the first NaN/inf loss, naming epoch and step; later callbacks check
    `failure` so that no checkpoint of the broken epoch is written.

    ``async_safe``: on backends whose callbacks may run in a worker thread (JAX), Keras then checks
    each step's loss there instead of fetching it in the training loop, so the loop keeps
    dispatching steps instead of waiting for every one to finish (a per-step device sync). The stop
    may come a few steps after the bad one; the message still names the bad step, and Keras
    finishes the pending checks before ``on_epoch_end``, so the checkpoint callbacks see
    ``failure`` in time. TensorFlow runs callbacks synchronously either way.
    """

    async_safe = True

    def __init__(self):
        super().__init__()
        self.failure: str | None = None
        self.epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is None or self.failure:
            return
        loss = float(loss)
        if not math.isfinite(loss):
            self.failure = (f"non-finite loss ({loss}) at epoch {self.epoch + 1}, step {batch + 1}: "
                            "training stopped; checkpoints of earlier epochs are kept")
            log.error("%s", self.failure)
            self.model.stop_training = True


class SplitEvaluation(keras.callbacks.Callback):
    """After each epoch: evaluate the extra splits (tst, optionally the whole trn) and add their
    figures to the logs with a `tst_`/`trn_` prefix, plus the learning rate."""

    def __init__(self, splits: dict, guard: FiniteLossGuard):
        super().__init__()
        self.splits = splits
        self.guard = guard

    def on_epoch_end(self, epoch, logs=None):
        if logs is None:
            return
        logs["learning_rate"] = current_learning_rate(self.model.optimizer)
        if self.guard.failure:
            return
        for name, ds in self.splits.items():
            res = self.model.evaluate(ds, verbose=0, return_dict=True)
            logs.update({f"{name}_{k}": float(v) for k, v in res.items()})


class Checkpoints(keras.callbacks.Callback):
    """`best.keras` (highest val OA_t1 + OA_t2, as the original) and `last.keras` every epoch with
    the optimiser state, both written atomically; `last_state.json` holds the epoch and best score."""

    def __init__(self, best: Path, last: Path, state_path: Path, guard: FiniteLossGuard,
                 state: dict, run_info: dict):
        super().__init__()
        self.best, self.last, self.state_path = Path(best), Path(last), Path(state_path)
        self.guard = guard
        self.state = dict(state)
        self.run_info = run_info

    def on_epoch_end(self, epoch, logs=None):
        if self.guard.failure:
            return
        logs = logs or {}
        score = float(logs.get("val_oa_t1", 0.0)) + float(logs.get("val_oa_t2", 0.0))
        best_score = self.state.get("best_score")
        if best_score is None or not math.isfinite(best_score) or score > best_score:
            atomic_save_model(self.model, self.best)
            self.state.update(best_score=score, best_epoch=epoch + 1)
            log.info("epoch %d: new best val OA_t1+OA_t2 = %.4f -> %s", epoch + 1, score, self.best)
        atomic_save_model(self.model, self.last)
        self.state.update(epoch=epoch + 1, **self.run_info)
        atomic_write_json(self.state_path, self.state)


class EpochLog(keras.callbacks.Callback):
    """The original's per-epoch lines in log.txt and a CSV history (one row per epoch)."""

    def __init__(self, log_txt: Path, history_csv: Path, append: bool = False):
        super().__init__()
        self.log_txt, self.history_csv = Path(log_txt), Path(history_csv)
        self.append = append
        self.keys: list[str] | None = None

    def on_train_begin(self, logs=None):
        self.log_txt.parent.mkdir(parents=True, exist_ok=True)
        if self.append and self.history_csv.is_file():
            with open(self.history_csv, newline="") as fh:
                header = next(csv.reader(fh), None)
            self.keys = header[1:] if header else None
        elif not self.append:
            self.log_txt.write_text("")
            self.history_csv.unlink(missing_ok=True)

    def on_epoch_end(self, epoch, logs=None):
        logs = {k: float(v) for k, v in (logs or {}).items()}
        with open(self.log_txt, "a") as fh:
            fh.write(format_epoch_line(epoch + 1, self.params.get("epochs"), logs) + "\n")
        if self.keys is None:
            self.keys = sorted(logs)
        new = not self.history_csv.is_file()
        with open(self.history_csv, "a", newline="") as fh:
            writer = csv.writer(fh)
            if new:
                writer.writerow(["epoch", *self.keys])
            writer.writerow([epoch + 1, *(repr(logs.get(k, float("nan"))) for k in self.keys)])


def format_epoch_line(epoch: int, epochs, logs: dict) -> str:
    """`epoch 3/100 lr 5.0e-03 | trn loss .. OA_t1 .. | val ... | tst ...`"""

    def part(prefix: str, label: str) -> str | None:
        keys = ["loss", *OA_KEYS]
        vals = [(k, logs.get(prefix + k)) for k in keys]
        if all(v is None for _, v in vals):
            return None
        return label + " " + " ".join(f"{k.replace('oa', 'OA')} {v:.4f}" for k, v in vals
                                      if v is not None)

    parts = [f"epoch {epoch}/{epochs}", f"lr {logs.get('learning_rate', float('nan')):.1e}"]
    parts += [p for p in (part("", "trn"), part("trn_", "trn(full)"), part("val_", "val"),
                          part("tst_", "tst")) if p]
    return " | ".join(parts)


class TensorBoardLogger(keras.callbacks.Callback):
    """TensorBoard event files in trn/, val/, tst/: every loss term and OA figure, the learning
    rate, the canonical correlation, a histogram of the fusion weights, and the model graph."""

    @classmethod
    def create(cls, tb_dir: Path, sample=None):
        if keras.backend.backend() != "tensorflow":
            log.warning("TensorBoard logging needs the TensorFlow backend (this is %s): skipped",
                        keras.backend.backend())
            return None
        return cls(tb_dir, sample)

    def __init__(self, tb_dir: Path, sample=None):
        super().__init__()
        import tensorflow as tf

        self.tf = tf
        self.tb_dir = Path(tb_dir)
        self.writers = {}
        self.sample = None
        if sample is not None:  # one fixed batch for the fusion-weight histogram and the graph
            for (x1, x2), _ in sample:
                self.sample = (np.asarray(x1), np.asarray(x2))
                break

    def writer(self, split: str):
        if split not in self.writers:
            self.writers[split] = self.tf.summary.create_file_writer(str(self.tb_dir / split))
        return self.writers[split]

    def on_train_begin(self, logs=None):
        if self.sample is None:
            return
        tf, net = self.tf, self.model

        @tf.function
        def forward(x1, x2):
            return net((x1, x2), training=False)

        graph = forward.get_concrete_function(*self.sample).graph
        with self.writer("trn").as_default():
            tf.summary.graph(graph)

    def on_epoch_end(self, epoch, logs=None):
        tf = self.tf
        step = epoch + 1
        for key, value in (logs or {}).items():
            split, name = "trn", key
            for prefix, target in (("val_", "val"), ("tst_", "tst"), ("trn_", "trn")):
                if key.startswith(prefix):
                    split, name = target, key[len(prefix):] + ("_full" if prefix == "trn_" else "")
                    break
            with self.writer(split).as_default():
                tf.summary.scalar(name, float(value), step=step)
        if self.sample is not None:
            out = self.model(self.sample, training=False)
            if isinstance(out, dict):
                with self.writer("val").as_default():
                    for key in ("fusion_weight", "dist"):
                        if key in out:
                            tf.summary.histogram(key, keras.ops.convert_to_numpy(out[key]),
                                                 step=step)
        for w in self.writers.values():
            w.flush()

    def on_train_end(self, logs=None):
        for w in self.writers.values():
            w.close()



class FusionHistograms(keras.callbacks.Callback):
    """Per epoch, over the whole validation split: TensorBoard histograms of CorrFusion's fusion
    weight w = 1 − tanh(dist) and of dist, for unchanged and for changed pairs apart
    (``fusion_weight/unchanged``, ``fusion_weight/changed``, ``dist/unchanged``, ``dist/changed``
    in ``TB_DIR/val``), and the group means as scalars. The module is meant to give w near 1 for
    unchanged and near 0 for changed pairs; these show whether it does. TensorFlow backend only.
    """

    KEYS = ("fusion_weight", "dist")

    @classmethod
    def create(cls, tb_dir: Path, val, method: str):
        """None (with a message) when there is nothing to log or no TensorFlow backend."""
        if method != "corrfusion" or val is None:
            return None
        if keras.backend.backend() != "tensorflow":
            log.warning("fusion weight histograms need the TensorFlow backend (this is %s): skipped",
                        keras.backend.backend())
            return None
        return cls(tb_dir, val)

    def __init__(self, tb_dir: Path, val):
        super().__init__()
        import tensorflow as tf

        self.tf = tf
        self.val = val
        self.writer = tf.summary.create_file_writer(str(Path(tb_dir) / "val"))

    def collect(self) -> dict[str, np.ndarray]:
        """w, dist and the changed flag of every validation pair (labels > 0 on both dates)."""
        parts: dict[str, list] = {k: [] for k in (*self.KEYS, "changed")}
        for (x1, x2), (y1, y2) in self.val:  # a tf.data.Dataset (TensorFlow backend)
            out = self.model((x1, x2), training=False)
            y1, y2 = np.asarray(y1).reshape(-1), np.asarray(y2).reshape(-1)
            for key in self.KEYS:
                parts[key].append(keras.ops.convert_to_numpy(out[key]).reshape(-1))
            parts["changed"].append(y1 != y2)
        return {k: np.concatenate(v) for k, v in parts.items()}

    def on_epoch_end(self, epoch, logs=None):
        tf = self.tf
        values = self.collect()
        changed = values["changed"]
        with self.writer.as_default():
            for key in self.KEYS:
                for group, mask in (("unchanged", ~changed), ("changed", changed)):
                    if mask.any():
                        tf.summary.histogram(f"{key}/{group}", values[key][mask], step=epoch + 1)
                        tf.summary.scalar(f"{key}_mean/{group}", float(values[key][mask].mean()),
                                          step=epoch + 1)
        self.writer.flush()

    def on_train_end(self, logs=None):
        self.writer.close()
