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
from dataclasses import dataclass
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
    from utils.rundir import atomic_write_bytes, read_embedded_state

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


#: TensorBoard's scalar tags: the logged name (without its ``val_``/``tst_``/``trn_`` prefix) ->
#: (group/tag, one-line description). A name not listed goes to ``other/NAME``.
TB_SCALARS = {
    "loss": ("loss/total", "the loss that is minimised: CE_t1 + CE_t2 + the method's terms + L2 "
                           "(docs/DESIGN.md §2.1)"),
    "ce_t1": ("loss/ce_t1", "cross-entropy of the t1 scene head (class-weighted in training with "
                            "--class_weight; val/tst are plain means)"),
    "ce_t2": ("loss/ce_t2", "cross-entropy of the t2 scene head (class-weighted in training with "
                            "--class_weight; val/tst are plain means)"),
    "corr_loss": ("loss/corr", "correlation loss: lambda1 x the mean distance of unchanged pairs' "
                               "views"),
    "decov_loss": ("loss/decov", "soft decorrelation: lambda2 x the off-diagonal mass of the "
                                 "running covariances"),
    "dcca_loss": ("loss/dcca", "DCCA loss: minus the sum of the canonical correlations of the "
                               "two views"),
    "l2": ("loss/l2", "L2 penalty of the Dense kernels, l2 x sum(w^2) / 2"),
    "oa_t1": ("accuracy/oa_t1", "overall accuracy of the t1 scene classes"),
    "oa_t2": ("accuracy/oa_t2", "overall accuracy of the t2 scene classes"),
    "oa_bi": ("accuracy/oa_bi", "accuracy of changed / unchanged (predicted classes differ vs "
                                "labels differ)"),
    "oa_tr": ("accuracy/oa_tr", "fraction of pairs with both dates right (transition accuracy)"),
    "cancorr": ("cca/cancorr", "canonical correlation of the two dates' views per batch, "
                               "sqrt(sum of squared canonical correlations), averaged over "
                               "batches: between 0 and sqrt(min(n - 1, d)) for batch size n "
                               "(5.57 at n = 32). trn comes from training-mode batches of the net "
                               "while it is being fitted, val/tst from the end-of-epoch net in "
                               "inference mode, so the two differ; compare trends, not levels"),
    "learning_rate": ("optim/learning_rate", "the optimiser's learning rate at the end of the "
                                             "epoch (--lr, --lr_boundaries)"),
}

#: the validation figures and scalars written every ``--tb_images`` epochs
TB_CHANGE = {
    "change_f1": ("change/f1", "change F1 of the argmax rule (t1 class != t2 class) on the "
                               "validation split, positive = changed"),
    "change_precision": ("change/precision", "change precision of the argmax rule (val)"),
    "change_recall": ("change/recall", "change recall of the argmax rule (val)"),
    "p_change_ap": ("change/p_change_ap", "average precision of p_change = 1 - sum_k p1_k p2_k "
                                          "(val)"),
}


def tb_scalar_tag(name: str) -> tuple[str, str]:
    """The TensorBoard tag and description of a logged figure (``name`` without its split
    prefix; ``_full`` marks the whole training split of ``--eval_trn``)."""
    full = name.endswith("_full")
    base = name[: -len("_full")] if full else name
    tag, description = TB_SCALARS.get(base, (f"other/{base}", ""))
    if full:
        return tag + "_full", description + " (whole training split in inference mode, --eval_trn)"
    return tag, description


def tb_hparams(config, seed: int) -> dict:
    """The hparams plugin's row of one run: what compare.py varies and what a reader sorts by."""
    schedule = ",".join(f"{v:g}" for v in config.lr)
    if config.lr_boundaries:
        schedule += " @ " + ",".join(str(b) for b in config.lr_boundaries)
    return {
        "method": config.method, "backbone": config.backbone, "shared": bool(config.shared),
        "hidden": int(config.hidden), "reduction": int(config.reduction),
        "lambda1": float(config.lambda1), "lambda2": float(config.lambda2), "bn": config.bn,
        "pooling": config.pooling, "optimizer": config.optimizer, "lr": float(config.lr[0]),
        "lr_schedule": schedule, "batch_size": int(config.batch_size),
        "epochs": int(config.epochs), "class_weight": config.class_weight, "seed": int(seed),
    }


#: the hparams plugin's metric columns: (tag in the val run, column title)
TB_HPARAM_METRICS = (("accuracy/oa_t1", "val OA_t1"), ("accuracy/oa_t2", "val OA_t2"),
                     ("change/f1", "val change F1"), ("loss/total", "val loss"))


@dataclass
class ValidationFigures:
    """What the validation figures are made from: the val loader, its labels (0-based, in the
    loader's fixed order), the class names, and every how many epochs (``--tb_images``)."""

    dataset: object
    label_t1: np.ndarray
    label_t2: np.ndarray
    class_names: list
    every: int = 1


class TensorBoardLogger(keras.callbacks.Callback):
    """TensorBoard event files in trn/, val/, tst/ (the original's run names).

    Scalars grouped by kind (``loss/``, ``accuracy/``, ``cca/``, ``optim/``, ``change/``) with a
    one-line description each; every ``figures.every`` epochs the
    validation confusion matrices, the from → to transition matrices and the PR curve of p_change;
    the hparams plugin's row of the run (in val/, so ``tensorboard --logdir`` over several runs
    lists and sorts them). No graph: the Keras 3 model traces to one opaque function, which the
    graph tab draws as a single unlabelled box (docs/DESIGN.md §2 draws the network)."""

    @classmethod
    def create(cls, tb_dir: Path, figures: ValidationFigures | None = None,
               hparams: dict | None = None):
        if keras.backend.backend() != "tensorflow":
            log.warning("TensorBoard logging needs the TensorFlow backend (this is %s): skipped",
                        keras.backend.backend())
            return None
        return cls(tb_dir, figures, hparams)

    def __init__(self, tb_dir: Path, figures: ValidationFigures | None = None,
                 hparams: dict | None = None):
        super().__init__()
        import tensorflow as tf

        self.tf = tf
        self.tb_dir = Path(tb_dir)
        self.writers = {}
        self.figures = figures
        self.hparams = hparams

    def writer(self, split: str):
        if split not in self.writers:
            self.writers[split] = self.tf.summary.create_file_writer(str(self.tb_dir / split))
        return self.writers[split]

    def on_train_begin(self, logs=None):
        if not self.hparams or hparams_sessions(self.tb_dir / "val"):
            return  # a resumed run has its session already: one row per run in the HParams tab
        from tensorboard.plugins.hparams import api as hp

        with self.writer("val").as_default():
            hp.hparams_config(
                hparams=[hp.HParam(name) for name in self.hparams],
                metrics=[hp.Metric(tag, display_name=title) for tag, title in TB_HPARAM_METRICS])
            hp.hparams(self.hparams, trial_id=str(self.tb_dir.parent))

    def write_scalars(self, step: int, logs: dict) -> None:
        tf = self.tf
        for key, value in logs.items():
            split, name = "trn", key
            for prefix, target in (("val_", "val"), ("tst_", "tst"), ("trn_", "trn")):
                if key.startswith(prefix):
                    split, name = target, key[len(prefix):] + ("_full" if prefix == "trn_" else "")
                    break
            tag, description = tb_scalar_tag(name)
            with self.writer(split).as_default():
                tf.summary.scalar(tag, float(value), step=step, description=description)

    def write_figures(self, step: int) -> None:
        """Predict the validation split once; its change scores, matrices and PR curve."""
        from tensorboard.plugins.pr_curve import summary as pr_summary

        from evaluation import plots
        from evaluation.metrics import change_probability, compute_metrics

        tf, fig = self.tf, self.figures
        out = self.model.predict(fig.dataset, verbose=0)
        p1 = np.asarray(out["prob_t1"], np.float32)
        p2 = np.asarray(out["prob_t2"], np.float32)
        if not (np.isfinite(p1).all() and np.isfinite(p2).all()):  # a diverged epoch
            log.warning("epoch %d: non-finite validation probabilities: no TensorBoard figures",
                        step)
            return
        m = compute_metrics(fig.label_t1, fig.label_t2, p1, p2, 0.5, fig.class_names)
        changed = np.asarray(fig.label_t1) != np.asarray(fig.label_t2)
        p_change = np.clip(change_probability(p1, p2), 0.0, 1.0).astype(np.float32)

        def png(draw, *args, **kwargs):
            buf = io.BytesIO()
            draw(*args, buf, **kwargs)
            return tf.image.decode_png(buf.getvalue(), channels=3)[None]

        images = {
            "confusion/t1": (png(plots.plot_confusion_matrix, m["confusion_t1"], fig.class_names,
                                 title=f"val t1, epoch {step}: OA {m['OA_t1']:.3f}"),
                             "validation confusion matrix at t1: counts and row % (recall)"),
            "confusion/t2": (png(plots.plot_confusion_matrix, m["confusion_t2"], fig.class_names,
                                 title=f"val t2, epoch {step}: OA {m['OA_t2']:.3f}"),
                             "validation confusion matrix at t2: counts and row % (recall)"),
            "transitions/from_to": (png(plots.plot_transition_matrices, m["transition_true"],
                                        m["transition_pred"], fig.class_names,
                                        title=f"val from → to transitions, epoch {step}"),
                                    "validation pairs per (t1 class, t2 class): true and predicted"),
        }
        pb = pr_summary.pb("change/p_change", changed, p_change,
                           description="precision-recall of p_change = 1 - sum_k p1_k p2_k "
                                       "against the true change (val, positive = changed)")
        value = pb.value[0]
        with self.writer("val").as_default():
            for key, (tag, description) in TB_CHANGE.items():
                if m.get(key) is not None:
                    tf.summary.scalar(tag, float(m[key]), step=step, description=description)
            for tag, (image, description) in images.items():
                tf.summary.image(tag, image, step=step, description=description)
            tf.summary.write(value.tag, tf.make_ndarray(value.tensor), step=step,
                             metadata=value.metadata.SerializeToString())

    def on_epoch_end(self, epoch, logs=None):
        step = epoch + 1
        self.write_scalars(step, logs or {})
        if self.figures is not None and self.figures.every and step % self.figures.every == 0:
            self.write_figures(step)
        for w in self.writers.values():
            w.flush()

    def on_train_end(self, logs=None):
        for w in self.writers.values():
            w.close()



def remove_event_files(tb_dir: Path) -> None:
    """The TensorBoard event files train_cnn.py wrote in ``tb/{trn,val,tst}`` (only those: a
    new run started with --overwrite, or a run --resume starts again, does not add to them)."""
    for split in ("trn", "val", "tst"):
        for f in (tb_dir / split).glob("events.out.tfevents.*"):
            if f.is_file():
                f.unlink()
                log.info("removed the old run's %s", f)


#: the tag of the hparams plugin's session record (``hp.hparams``), one per run
HPARAMS_SESSION_TAG = "_hparams_/session_start_info"


def hparams_sessions(split_dir: Path) -> int:
    """How many hparams session records the event files of ``split_dir`` hold (a cut record ends
    the count of its file)."""
    import tensorflow as tf

    count = 0
    for f in sorted(Path(split_dir).glob("events.out.tfevents.*")):
        try:
            for record in tf.data.TFRecordDataset(str(f)):
                event = tf.compat.v1.Event.FromString(record.numpy())
                count += sum(v.tag == HPARAMS_SESSION_TAG for v in event.summary.value)
        except tf.errors.DataLossError:
            continue
    return count


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
        import tensorflow as tf

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
