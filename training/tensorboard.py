"""TensorBoard for a training run: scalar tags and hparams (``tb_scalar_tag``, ``tb_hparams``), the
per-epoch logger with validation figures (:class:`TensorBoardLogger`), and the event files of a
resumed run (``remove_event_files``, ``truncate_event_files``, ``hparams_sessions``).
TensorFlow/TensorBoard are imported where used (the logger runs on TensorFlow only)."""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np

log = logging.getLogger("corrfusion.train")


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
        import tensorflow as tf  # deferred: TensorFlow loads on first use

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
        from tensorboard.plugins.hparams import (
            api as hp,  # deferred: TensorBoard loads on first use
        )

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
        from tensorboard.plugins.pr_curve import (
            summary as pr_summary,  # deferred: TensorBoard loads on first use
        )

        from evaluation import plots  # deferred: evaluation imports matplotlib/scikit-learn
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
    import tensorflow as tf  # deferred: TensorFlow loads on first use

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
    import tensorflow as tf  # deferred: TensorFlow loads on first use

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
