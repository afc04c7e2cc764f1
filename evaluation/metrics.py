"""Metrics of docs/DESIGN.md §3: scene classification per date, change detection, transitions.

Everything is computed with scikit-learn from four arrays per split:

* ``y1``, ``y2``: true classes at t1 and t2, 0-based integers, shape (N,);
* ``p1``, ``p2``: predicted class probabilities at t1 and t2, shape (N, K).

Predicted classes are the argmax of the probabilities. A pair is *changed* when its two classes
differ; the positive class of every change metric is "changed". Besides the argmax rule
(predicted changed ⇔ argmax p1 ≠ argmax p2) the change probability

    p_change = 1 − Σ_k p1_k · p2_k

(the probability that two independent draws from the two predicted distributions disagree) gives a
second rule, predicted changed ⇔ p_change ≥ threshold, and the ROC / precision–recall curves.

Degenerate cases are defined, never NaN and never a warning:

* precision / recall / F1 with an empty denominator (no predicted changes, no true changes) are 0
  (scikit-learn's ``zero_division=0``); the raw counts ``tp, fp, fn, tn`` are reported alongside so a
  reader can tell "0 because undefined" from "0 because wrong";
* Cohen's kappa is (p_o − p_e) / (1 − p_e). When both label vectors are the same single constant
  (p_e = 1, hence p_o = 1, e.g. no changed pair and no predicted change) it is undefined; it is
  reported as 1.0, the value for perfect agreement;
* ROC-AUC and average precision of p_change are ``None`` when the true change labels hold only one
  class (no changed pair, or every pair changed).

All results are plain Python types (JSON-able).
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Mapping

import numpy as np
from sklearn import metrics as skm

__all__ = [
    "mean_std",
    "change_probability",
    "cohen_kappa",
    "binary_change_metrics",
    "compute_metrics",
    "headline",
    "HEADLINE_KEYS",
    "format_table",
    "per_class_rows",
    "PER_CLASS_FIELDS",
    "per_class_csv",
]

#: Scalar metrics shown in the terminal table and compared between runs, in display order.
HEADLINE_KEYS = (
    "OA_t1",
    "OA_t2",
    "kappa_t1",
    "kappa_t2",
    "OA_bi",
    "OA_tr",
    "change_precision",
    "change_recall",
    "change_f1",
    "change_kappa",
    "p_change_roc_auc",
    "p_change_ap",
)

#: Columns of per_class.csv.
PER_CLASS_FIELDS = (
    "split",
    "date",
    "class_id",
    "class_name",
    "precision",
    "recall",
    "f1",
    "support",
)


def mean_std(values):
    """``(mean, std)`` over runs, the std the sample standard deviation (ddof = 1, as the paper's
    ± over independent runs); ``std`` is None for fewer than two values, both None for none."""
    vals = np.asarray([float(v) for v in values], dtype=np.float64)
    if not len(vals):
        return None, None
    return float(vals.mean()), (float(vals.std(ddof=1)) if len(vals) > 1 else None)


def change_probability(p1, p2):
    """Probability that the two dates' predicted classes differ: ``1 − Σ_k p1_k · p2_k``.

    Args:
        p1, p2: class probabilities, shape (N, K) each (rows summing to 1).

    Returns:
        float64 array of shape (N,), clipped to [0, 1] against round-off.
    """
    p1 = np.asarray(p1, dtype=np.float64)
    p2 = np.asarray(p2, dtype=np.float64)
    if p1.ndim != 2 or p1.shape != p2.shape:
        raise ValueError(
            f"p1, p2: expected two arrays of the same shape (N, K), got {p1.shape} and {p2.shape}"
        )
    return np.clip(1.0 - np.sum(p1 * p2, axis=1), 0.0, 1.0)


def cohen_kappa(y_true, y_pred, labels=None):
    """Cohen's kappa from the confusion matrix; 1.0 when both labelings are one identical constant.

    Equal to ``sklearn.metrics.cohen_kappa_score`` wherever that one is defined.
    """
    cm = skm.confusion_matrix(y_true, y_pred, labels=labels).astype(np.float64)
    n = cm.sum()
    if n == 0:
        raise ValueError("cohen_kappa: expected at least one sample, got 0")
    po = np.trace(cm) / n
    pe = float(np.dot(cm.sum(axis=0), cm.sum(axis=1))) / (n * n)
    if math.isclose(pe, 1.0):
        return 1.0
    return float((po - pe) / (1.0 - pe))


def binary_change_metrics(changed_true, changed_pred):
    """Accuracy, precision, recall, F1, kappa and counts of a change rule (positive = changed).

    Args:
        changed_true, changed_pred: boolean arrays, shape (N,).

    Returns:
        dict with ``OA_bi``, ``precision``, ``recall``, ``f1``, ``kappa``, ``tp``, ``fp``, ``fn``,
        ``tn``, ``n_changed`` (true), ``n_pred_changed``.
    """
    t = np.asarray(changed_true, dtype=bool)
    p = np.asarray(changed_pred, dtype=bool)
    tn, fp, fn, tp = skm.confusion_matrix(t, p, labels=[False, True]).ravel()
    precision, recall, f1, _ = skm.precision_recall_fscore_support(
        t, p, labels=[True], average="binary", pos_label=True, zero_division=0
    )
    return {
        "OA_bi": float(skm.accuracy_score(t, p)),
        "precision": float(precision),
        "recall": float(recall),
        "f1": float(f1),
        "kappa": cohen_kappa(t, p, labels=[False, True]),
        "tp": int(tp),
        "fp": int(fp),
        "fn": int(fn),
        "tn": int(tn),
        "n_changed": int(t.sum()),
        "n_pred_changed": int(p.sum()),
    }


def _per_class(y, pred, k):
    precision, recall, f1, support = skm.precision_recall_fscore_support(
        y, pred, labels=list(range(k)), average=None, zero_division=0
    )
    return {
        "precision": [float(v) for v in precision],
        "recall": [float(v) for v in recall],
        "f1": [float(v) for v in f1],
        "support": [int(v) for v in support],
    }


def _transition_matrix(a, b, k):
    """Counts of pairs going from class a (row) to class b (column), shape (K, K)."""
    m = np.zeros((k, k), dtype=np.int64)
    np.add.at(m, (a, b), 1)
    return m.tolist()


def _check_inputs(y1, y2, p1, p2, class_names):
    y1 = np.asarray(y1)
    y2 = np.asarray(y2)
    p1 = np.asarray(p1, dtype=np.float64)
    p2 = np.asarray(p2, dtype=np.float64)
    if p1.ndim != 2 or p1.shape != p2.shape:
        raise ValueError(
            f"p1, p2: expected two arrays of the same shape (N, K), got {p1.shape} and {p2.shape}"
        )
    n, k = p1.shape
    if n == 0:
        raise ValueError("compute_metrics: expected at least one pair, got 0")
    if y1.shape != (n,) or y2.shape != (n,):
        raise ValueError(
            f"y1, y2: expected shape ({n},) to match the probabilities, got {y1.shape} and {y2.shape}"
        )
    for name, y in (("y1", y1), ("y2", y2)):
        if not np.issubdtype(y.dtype, np.integer):
            raise ValueError(f"{name}: expected integer class ids, got dtype {y.dtype}")
        if y.min() < 0 or y.max() >= k:
            raise ValueError(
                f"{name}: expected 0-based class ids in [0, {k - 1}], got range "
                f"[{int(y.min())}, {int(y.max())}]"
            )
    if class_names is None:
        class_names = [str(i) for i in range(k)]
    else:
        class_names = [str(c) for c in class_names]
        if len(class_names) != k:
            raise ValueError(
                f"class_names: expected {k} names (one per probability column), got {len(class_names)}"
            )
    return y1.astype(np.int64), y2.astype(np.int64), p1, p2, class_names


def compute_metrics(y1, y2, p1, p2, threshold=0.5, class_names=None):
    """All metrics of docs/DESIGN.md §3 for one split.

    Args:
        y1, y2: true classes at t1 / t2, 0-based ints, shape (N,).
        p1, p2: class probabilities at t1 / t2, shape (N, K).
        threshold: p_change threshold of the second change rule (changed ⇔ p_change ≥ threshold).
        class_names: K names, or None for "0".."K-1".

    Returns:
        JSON-able dict:

        * ``n_pairs``, ``num_classes``, ``class_names``, ``threshold``, ``n_changed``;
        * ``OA_t1``, ``OA_t2``, ``kappa_t1``, ``kappa_t2``: scene classification per date;
        * ``OA_bi``: change accuracy of the argmax rule; ``OA_tr``: fraction of pairs with both dates
          right;
        * ``change_precision``, ``change_recall``, ``change_f1``, ``change_kappa``: argmax rule,
          positive = changed;
        * ``change``: the argmax rule in full (``binary_change_metrics``: the above plus counts);
        * ``change_at_threshold``: the same for the rule p_change ≥ threshold, plus ``threshold``;
        * ``p_change_roc_auc``, ``p_change_ap``: ROC-AUC / average precision of p_change against the
          true change (None when only one class is present);
        * ``per_class``: ``{"t1": {...}, "t2": {...}}`` each with lists ``precision``, ``recall``,
          ``f1``, ``support`` indexed by class;
        * ``confusion_t1``, ``confusion_t2``: K×K counts, rows = true, columns = predicted;
        * ``transition_true``, ``transition_pred``: K×K counts of from (t1, row) → to (t2, column),
          from the labels and from the predictions.
    """
    y1, y2, p1, p2, class_names = _check_inputs(y1, y2, p1, p2, class_names)
    threshold = float(threshold)
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold: expected a probability in [0, 1], got {threshold}")
    n, k = p1.shape
    labels = list(range(k))
    pred1 = p1.argmax(axis=1)
    pred2 = p2.argmax(axis=1)
    p_change = change_probability(p1, p2)
    changed = y1 != y2

    argmax_rule = binary_change_metrics(changed, pred1 != pred2)
    thr_rule = binary_change_metrics(changed, p_change >= threshold)
    thr_rule["threshold"] = threshold

    if changed.all() or not changed.any():
        auc = ap = None
    else:
        auc = float(skm.roc_auc_score(changed, p_change))
        ap = float(skm.average_precision_score(changed, p_change))

    return {
        "n_pairs": int(n),
        "num_classes": int(k),
        "class_names": class_names,
        "threshold": threshold,
        "n_changed": int(changed.sum()),
        "OA_t1": float(skm.accuracy_score(y1, pred1)),
        "OA_t2": float(skm.accuracy_score(y2, pred2)),
        "kappa_t1": cohen_kappa(y1, pred1, labels=labels),
        "kappa_t2": cohen_kappa(y2, pred2, labels=labels),
        "OA_bi": argmax_rule["OA_bi"],
        "OA_tr": float(np.mean((y1 == pred1) & (y2 == pred2))),
        "change_precision": argmax_rule["precision"],
        "change_recall": argmax_rule["recall"],
        "change_f1": argmax_rule["f1"],
        "change_kappa": argmax_rule["kappa"],
        "p_change_roc_auc": auc,
        "p_change_ap": ap,
        "change": argmax_rule,
        "change_at_threshold": thr_rule,
        "per_class": {"t1": _per_class(y1, pred1, k), "t2": _per_class(y2, pred2, k)},
        "confusion_t1": skm.confusion_matrix(y1, pred1, labels=labels).tolist(),
        "confusion_t2": skm.confusion_matrix(y2, pred2, labels=labels).tolist(),
        "transition_true": _transition_matrix(y1, y2, k),
        "transition_pred": _transition_matrix(pred1, pred2, k),
    }


def headline(metrics):
    """The scalar metrics of ``HEADLINE_KEYS`` plus the threshold rule's, as a flat dict."""
    out = {key: metrics[key] for key in HEADLINE_KEYS}
    thr = metrics["change_at_threshold"]
    out["thr_OA_bi"] = thr["OA_bi"]
    out["thr_change_precision"] = thr["precision"]
    out["thr_change_recall"] = thr["recall"]
    out["thr_change_f1"] = thr["f1"]
    out["thr_change_kappa"] = thr["kappa"]
    return out


def _fmt(value):
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def _render(rows, n_left, rule):
    """Text lines of a table: the first n_left columns left-aligned, the others right-aligned."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for j, r in enumerate(rows):
        cells = [
            c.ljust(w) if i < n_left else c.rjust(w)
            for i, (c, w) in enumerate(zip(r, widths, strict=True))
        ]
        lines.append("  ".join(cells).rstrip())
        if rule and j == 0:
            lines.append("  ".join("-" * w for w in widths))
    return lines


def format_table(results, per_class=False):
    """A readable text table of one or several splits.

    Args:
        results: ``{split_name: compute_metrics(...) dict}`` (or a single metrics dict).
        per_class: also list per-class precision / recall / F1 per date.

    Returns:
        str (no trailing newline).
    """
    if "OA_t1" in results:
        results = {"": results}
    splits = list(results)
    rows = [("metric", *splits)]
    first = results[splits[0]]
    rows.append(("pairs", *(str(results[s]["n_pairs"]) for s in splits)))
    rows.append(("changed pairs", *(str(results[s]["n_changed"]) for s in splits)))
    for key in HEADLINE_KEYS:
        rows.append((key, *(_fmt(results[s][key]) for s in splits)))
    thr = first["change_at_threshold"]["threshold"]
    for key, label in (
        ("OA_bi", "OA_bi"),
        ("precision", "change_precision"),
        ("recall", "change_recall"),
        ("f1", "change_f1"),
        ("kappa", "change_kappa"),
    ):
        rows.append(
            (
                f"{label} @p>={thr:g}",
                *(_fmt(results[s]["change_at_threshold"][key]) for s in splits),
            )
        )
    lines = _render(rows, n_left=1, rule=True)
    if per_class:
        for s in splits:
            lines.append("")
            lines.append(f"per class{(' (' + s + ')') if s else ''}:")
            pc_rows = [("date", "class", "precision", "recall", "f1", "support")]
            for r in per_class_rows(results[s]):
                pc_rows.append(
                    (
                        r["date"],
                        r["class_name"],
                        _fmt(r["precision"]),
                        _fmt(r["recall"]),
                        _fmt(r["f1"]),
                        str(r["support"]),
                    )
                )
            lines.extend(_render(pc_rows, n_left=2, rule=False))
    return "\n".join(lines)


def per_class_rows(metrics, split=""):
    """Rows (dicts with ``PER_CLASS_FIELDS``) of per-class precision / recall / F1 per date."""
    rows = []
    names = metrics["class_names"]
    for date in ("t1", "t2"):
        pc = metrics["per_class"][date]
        for i, name in enumerate(names):
            rows.append(
                {
                    "split": split,
                    "date": date,
                    "class_id": i,
                    "class_name": name,
                    "precision": pc["precision"][i],
                    "recall": pc["recall"][i],
                    "f1": pc["f1"][i],
                    "support": pc["support"][i],
                }
            )
    return rows


def per_class_csv(results):
    """per_class.csv text for ``{split: metrics}`` (or a single metrics dict)."""
    if isinstance(results, Mapping) and "OA_t1" in results:
        results = {"": results}
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=PER_CLASS_FIELDS, lineterminator="\n")
    writer.writeheader()
    for split, m in results.items():
        writer.writerows(per_class_rows(m, split=split))
    return buf.getvalue()
