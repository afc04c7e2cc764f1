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
from pathlib import Path

import keras
import numpy as np

from utils.rundir import atomic_save_model, atomic_write_bytes, atomic_write_json

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
        if best_score is None or not math.isfinite(best_score) or score > best_score:
            atomic_save_model(self.model, self.best)
            self.state.update(best_score=score, best_epoch=epoch + 1)
            log.info("epoch %d: new best val OA_t1+OA_t2 = %.4f -> %s", epoch + 1, score, self.best)
        self.state.update(epoch=epoch + 1, **self.run_info)
        atomic_save_model(self.model, self.last, state=self.state)
        atomic_write_json(self.state_path, self.state)


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



def truncate_event_files(tb_dir: Path, epoch: int) -> None:
    """--resume after ``epoch``: drop the events of later epochs (written before a kill that came
    ahead of their checkpoint) and a record cut by the kill from the event files of
    ``tb/{trn,val,tst}``, so each epoch is in TensorBoard once. A file is rewritten atomically,
    and only when something is dropped."""
    import tensorflow as tf

    for split in ("trn", "val", "tst"):
        for f in sorted((Path(tb_dir) / split).glob("events.out.tfevents.*")):
            kept, dropped = [], 0
            try:
                for record in tf.data.TFRecordDataset(str(f)):
                    raw = record.numpy()
                    event = tf.compat.v1.Event.FromString(raw)
                    if event.step > epoch:
                        dropped += 1
                    else:
                        kept.append(raw)
            except tf.errors.DataLossError:  # the last record was cut
                dropped += 1
            if not dropped:
                continue
            tmp = f.with_name(f".{f.name}.tmp")
            with tf.io.TFRecordWriter(str(tmp)) as writer:
                for raw in kept:
                    writer.write(raw)
            tmp.replace(f)
            log.info("%s: dropped %d event(s) after epoch %d", f, dropped, epoch)
