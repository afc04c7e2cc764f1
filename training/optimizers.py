"""The optimisers and class-weight modes a run can ask for: one table each, whose names are
parser.py's ``--optimizer`` and ``--class_weight`` choices and whose entries the fit code calls.
A new optimiser (or class-weight mode) is one entry here and its test.

Standard library only at import: parser.py imports this module, and ``-h`` and usage errors are
answered without NumPy, Keras or TensorFlow loaded.
"""

from __future__ import annotations

import logging

log = logging.getLogger("corrfusion.train")


def _sgd(config, lr):
    return keras_optimizers().SGD(learning_rate=lr, momentum=config.momentum,
                                  nesterov=config.nesterov)


def _adam(config, lr):
    return keras_optimizers().Adam(learning_rate=lr)


def _adamw(config, lr):
    return keras_optimizers().AdamW(learning_rate=lr)


#: --optimizer name -> builder ``(config, learning rate or schedule) -> keras optimizer``;
#: parser.py's choices are this table's names
OPTIMIZERS = {"sgd": _sgd, "adam": _adam, "adamw": _adamw}


def keras_optimizers():
    """``keras.optimizers``, imported on first use: parser.py reads this module's tables, and
    ``-h`` is answered without Keras (and TensorFlow) loaded."""
    import keras  # deferred: Keras loads on first use

    return keras.optimizers


def build_optimizer(config, steps_per_epoch: int):
    """``--optimizer`` with ``--lr`` (one value: constant; several: piecewise constant, stepping
    at the ``--lr_boundaries`` epochs)."""
    if len(config.lr) == 1:
        lr = config.lr[0]
    else:
        boundaries = [b * steps_per_epoch for b in config.lr_boundaries]
        lr = keras_optimizers().schedules.PiecewiseConstantDecay(boundaries, list(config.lr))
    return OPTIMIZERS[config.optimizer](config, lr)


def balanced_class_weights(hist) -> tuple[tuple[float, ...], list[int]]:
    """scikit-learn's "balanced" weights n / (K · count_k) of one date's class histogram, K the
    number of classes present; a class with no pair gets 0. Returns (weights, absent class ids
    0-based)."""
    import numpy as np  # here, not at the top: parser.py reads this module (-h without NumPy)

    hist = np.asarray(hist, np.float64)
    present = hist > 0
    weights = np.zeros_like(hist)
    weights[present] = hist.sum() / (present.sum() * hist[present])
    return tuple(float(w) for w in weights), [int(k) for k in np.flatnonzero(~present)]


#: --class_weight name -> builder of one date's weights from its trn histogram (None: no weights)
CLASS_WEIGHTS = {"none": None, "balanced": balanced_class_weights}


def class_weights(name: str, plan):
    """``ModelConfig.ce_weights`` for ``--class_weight name``: per date, from the trn split's
    class histogram (``plan``: the run's ``training.run_data.DataPlan``) (padded to the run's class count); None for ``none``."""
    builder = CLASS_WEIGHTS[name]
    if builder is None:
        return None
    trn = plan.summaries["trn"]
    names = plan.class_names or [f"class {k + 1}" for k in range(plan.num_classes)]
    import numpy as np  # see balanced_class_weights

    out = []
    for date, hist in (("t1", trn.hist_t1), ("t2", trn.hist_t2)):
        hist = np.pad(np.asarray(hist, np.int64), (0, plan.num_classes - len(hist)))
        weights, absent = builder(hist)
        if absent:
            log.warning("--class_weight %s: %s at %s absent from the training split: weight 0",
                        name, ", ".join(names[k] for k in absent), date)
        log.info("--class_weight %s, %s: %s", name, date,
                 ", ".join(f"{names[k]} {w:.3g}" for k, w in enumerate(weights)))
        out.append(weights)
    return tuple(out)
