"""Keras callbacks used by train_cnn.py.

Order matters: the guard and the split evaluation come first, because they add to the epoch's
`logs` (`tst_*`, `trn_*`, `learning_rate`) what the checkpoint, log and TensorBoard callbacks read.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import re
import time
from pathlib import Path

import keras
import numpy as np

from utils.rundir import (
    atomic_save_model,
    atomic_write_bytes,
    atomic_write_json,
    read_embedded_state,
)

log = logging.getLogger("corrfusion.train")

#: the four accuracy figures of docs/DESIGN.md §3, as the model's metrics name them
OA_KEYS = ("oa_t1", "oa_t2", "oa_bi", "oa_tr")


def current_learning_rate(optimizer) -> float:
    lr = optimizer.learning_rate
    if callable(lr):  # a schedule
        lr = lr(optimizer.iterations)
    return float(keras.ops.convert_to_numpy(lr))


#: the per-batch hooks after which Keras' fit reads the step's logs back in the training loop
BATCH_END_HOOKS = ("on_batch_end", "on_train_batch_end")


def per_step_waits(callbacks) -> list[str]:
    """Names of the callbacks that make ``fit`` on JAX wait for every step: those that override a
    batch-end hook without declaring ``async_safe``. With any of them Keras runs every callback in
    the training loop after reading the step's logs back to Python floats, a device sync per step
    that keeps the host from dispatching the next step while the device runs this one
    (``keras.callbacks.CallbackList``; the cost ``train_on_batch`` pays on every call, issue 25)."""
    out = []
    for cb in callbacks:
        if getattr(cb, "async_safe", False):
            continue
        if any(getattr(type(cb), hook) is not getattr(keras.callbacks.Callback, hook)
               for hook in BATCH_END_HOOKS):
            out.append(type(cb).__name__)
    return out


class FiniteLossGuard(keras.callbacks.Callback):
    """Stops training at the first NaN/inf loss, naming epoch and step; later callbacks check
    `failure` so that no checkpoint of the broken epoch is written.

    ``async_safe``: on backends whose callbacks may run in a worker thread (JAX), Keras then checks
    each step's loss there instead of fetching it in the training loop, so the loop keeps
    dispatching steps instead of waiting for every one to finish (a per-step device sync). The stop
    may come a few steps after the bad one; the message still names the bad step, and Keras
    finishes the pending checks before ``on_epoch_end``, so the checkpoint callbacks see
    ``failure`` in time. TensorFlow runs callbacks synchronously either way.

    The stop flag is set on ``self._model``, not through Keras' ``Callback.model`` property: on
    JAX that property first syncs the training state into the model's variables, and from the
    callback thread that races the loop, which has already donated those buffers to the next
    step (the model is left holding deleted arrays: ``RuntimeError: Array has been deleted`` in
    fit, and a second training in the same process fails the same way).
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
            self._model.stop_training = True  # not self.model: see the class docstring


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
    the optimiser state, both written atomically. The epoch and best score are stored inside
    `last.keras` (one rename commits weights, optimiser and state: what --resume reads) and, for
    people and tools, in `last_state.json` after it."""

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
        new_best = best_score is None or not math.isfinite(best_score) or score > best_score
        if new_best:
            self.state.update(best_score=score, best_epoch=epoch + 1)
        self.state.update(epoch=epoch + 1, **self.run_info)
        # last.keras first: a kill before best.keras lands leaves a state whose best epoch is
        # last.keras's own, from which the resume restores best.keras (restore_best)
        atomic_save_model(self.model, self.last, state=self.state)
        atomic_write_json(self.state_path, self.state)
        if new_best:
            atomic_save_model(self.model, self.best, state={"epoch": epoch + 1,
                                                            "best_score": score,
                                                            "best_epoch": epoch + 1})
            log.info("epoch %d: new best val OA_t1+OA_t2 = %.4f -> %s", epoch + 1, score, self.best)


def restore_best(best: Path, last: Path, state: dict) -> bool:
    """--resume after a kill between an epoch's ``last.keras`` and its new ``best.keras``
    (``Checkpoints`` writes them in that order): the state's best epoch is last.keras's own epoch,
    and best.keras is missing or holds another epoch (its embedded ``epoch``); then last.keras is
    that best, and is copied to best.keras (atomically). A best.keras of an older version, without
    an embedded epoch, is left as it is. Returns whether it was restored."""

    best_epoch = state.get("best_epoch")
    if best_epoch is None or best_epoch != state.get("epoch") or not Path(last).is_file():
        return False
    if Path(best).is_file():
        saved = read_embedded_state(best)
        if saved is None or saved.get("epoch") == best_epoch:
            return False
    atomic_write_bytes(best, Path(last).read_bytes())
    log.warning("%s: restored from %s (epoch %d, the best, was cut off before its best "
                "checkpoint was written)", best, last, best_epoch)
    return True


class EpochLog(keras.callbacks.Callback):
    """The original's per-epoch lines in log.txt and a CSV history (one row per epoch).

    Both files are rewritten whole and atomically each epoch (they are small), never appended to:
    a kill or a full disk leaves the previous epoch's complete files. With ``append`` (--resume)
    the rows of epochs 1..``keep_epochs`` (the checkpoint's) are read back, complete rows only:
    a row cut by an older version's interrupted append, or written for an epoch after the
    checkpoint, is dropped."""

    def __init__(self, log_txt: Path, history_csv: Path, append: bool = False,
                 keep_epochs: int = 0):
        super().__init__()
        self.log_txt, self.history_csv = Path(log_txt), Path(history_csv)
        self.append = append
        self.keep_epochs = keep_epochs
        self.keys: list[str] | None = None
        self.rows: list[list[str]] = []
        self.lines: list[str] = []

    def on_train_begin(self, logs=None):
        self.log_txt.parent.mkdir(parents=True, exist_ok=True)
        if self.append:
            self.keys, self.rows = read_history_rows(self.history_csv, self.keep_epochs)
            self.lines = read_log_lines(self.log_txt, self.keep_epochs)
        self.write()  # a resume drops what lies past the checkpoint; a new run starts empty

    def on_epoch_end(self, epoch, logs=None):
        logs = {k: float(v) for k, v in (logs or {}).items()}
        self.lines.append(format_epoch_line(epoch + 1, self.params.get("epochs"), logs))
        if self.keys is None:
            self.keys = sorted(logs)
        self.rows.append([str(epoch + 1), *(repr(logs.get(k, float("nan"))) for k in self.keys)])
        self.write()

    def write(self):
        atomic_write_bytes(self.log_txt, "".join(f"{ln}\n" for ln in self.lines).encode())
        if self.keys is None:
            self.history_csv.unlink(missing_ok=True)
            return
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(["epoch", *self.keys])
        writer.writerows(self.rows)
        atomic_write_bytes(self.history_csv, buf.getvalue().encode())


def read_history_rows(path: Path, keep_epochs: int) -> tuple[list[str] | None, list[list[str]]]:
    """history.csv's columns (without ``epoch``) and its complete rows of epochs 1..keep_epochs:
    as many fields as the header, a whole epoch number, the file's last line ended by a newline."""
    if not path.is_file():
        return None, []
    text = path.read_text(errors="replace")
    lines = text.split("\n")
    if lines and lines[-1] != "":  # the last line was cut
        log.warning("%s: dropped an incomplete last line", path)
    complete = lines[:-1]
    rows = list(csv.reader(complete))
    if not rows:
        return None, []
    header, kept = rows[0], []
    for row in rows[1:]:
        ok = len(row) == len(header) and row[0].isdigit() and 1 <= int(row[0]) <= keep_epochs
        if ok and int(row[0]) == len(kept) + 1:
            kept.append(row)
        elif row:
            log.warning("%s: dropped row %r... (cut short, or past the checkpoint's epoch %d)",
                        path, ",".join(row)[:40], keep_epochs)
    return header[1:], kept


def read_log_lines(path: Path, keep_epochs: int) -> list[str]:
    """log.txt's complete lines (newline-ended) of epochs 1..keep_epochs."""
    if not path.is_file():
        return []
    kept = []
    for line in path.read_text(errors="replace").split("\n")[:-1]:
        m = re.match(r"epoch (\d+)/", line)
        if m and int(m.group(1)) == len(kept) + 1 and len(kept) < keep_epochs:
            kept.append(line)
    return kept


class EpochSummary(keras.callbacks.Callback):
    """One concise log line per epoch (``format_epoch_summary``), whatever the progress bar does."""

    def __init__(self):
        super().__init__()
        self.started = time.monotonic()

    def on_epoch_begin(self, epoch, logs=None):
        self.started = time.monotonic()

    def on_epoch_end(self, epoch, logs=None):
        log.info("%s", format_epoch_summary(epoch + 1, self.params.get("epochs"), logs or {},
                                            time.monotonic() - self.started))


def format_epoch_summary(epoch: int, epochs, logs: dict, seconds: float) -> str:
    """`epoch 3/100: loss 0.512 OA_t1 81.2% OA_t2 79.0% | val OA_t1 75.0% OA_t2 70.1% | lr 1e-03 | 12.3 s`"""

    def pct(key):
        v = logs.get(key)
        return None if v is None else f"{100.0 * float(v):.1f}%"

    parts = []
    trn = [f"loss {float(logs['loss']):.4g}"] if "loss" in logs else []
    trn += [f"{name} {pct(k)}" for k, name in (("oa_t1", "OA_t1"), ("oa_t2", "OA_t2")) if k in logs]
    parts.append(" ".join(trn))
    val = [f"{name} {pct(k)}" for k, name in (("val_oa_t1", "OA_t1"), ("val_oa_t2", "OA_t2"))
           if k in logs]
    if val:
        parts.append("val " + " ".join(val))
    if "learning_rate" in logs:
        parts.append(f"lr {float(logs['learning_rate']):.1e}")
    parts.append(f"{seconds:.1f} s")
    return f"epoch {epoch}/{epochs}: " + " | ".join(p for p in parts if p)


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


class FusionHistograms(keras.callbacks.Callback):
    """Per epoch, over the whole validation split: TensorBoard histograms of CorrFusion's fusion
    weight w = 1 − tanh(dist) and of dist, for unchanged and for changed pairs apart
    (``fusion_weight/unchanged``, ``fusion_weight/changed``, ``dist/unchanged``, ``dist/changed``
    in ``TB_DIR/val``), and the group means as scalars. The module is meant to give w near 1 for
    unchanged and near 0 for changed pairs; these show whether it does. TensorFlow backend only.
    """

    KEYS = ("fusion_weight", "dist")
    DESCRIPTIONS = {
        "fusion_weight": "fusion weight w = 1 - tanh(dist) of the {group} validation pairs "
                         "(meant to be near 1 for unchanged, near 0 for changed pairs)",
        "dist": "distance of the two dates' normalised features of the {group} validation pairs "
                "(w = 1 - tanh(dist))",
    }

    @classmethod
    def create(cls, tb_dir: Path, val, method: str, writer=None):
        """None (with a message) when there is nothing to log or no TensorFlow backend. writer:
        the TensorBoard logger's val writer, shared (one event file per split; its owner closes
        it); without one, a writer of its own in TB_DIR/val."""
        if method != "corrfusion" or val is None:
            return None
        if keras.backend.backend() != "tensorflow":
            log.warning("fusion weight histograms need the TensorFlow backend (this is %s): skipped",
                        keras.backend.backend())
            return None
        return cls(tb_dir, val, writer)

    def __init__(self, tb_dir: Path, val, writer=None):
        super().__init__()
        import tensorflow as tf  # deferred: TensorFlow loads on first use

        self.tf = tf
        self.val = val
        self.owns_writer = writer is None
        self.writer = writer or tf.summary.create_file_writer(str(Path(tb_dir) / "val"))

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
                        what = self.DESCRIPTIONS[key].format(group=group)
                        tf.summary.histogram(f"{key}/{group}", values[key][mask], step=epoch + 1,
                                             description=what)
                        tf.summary.scalar(f"{key}_mean/{group}", float(values[key][mask].mean()),
                                          step=epoch + 1, description=f"mean of the {what}")
        self.writer.flush()

    def on_train_end(self, logs=None):
        if self.owns_writer:
            self.writer.close()
