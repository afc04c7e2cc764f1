"""The BoVW baselines of the paper's table (the model is :mod:`model.bovw`, KSFA :mod:`model.ksfa`)
run on a dataset: train on trn, evaluate on tst, write ``results.json`` and ``predictions.npz``.

Entry points: :func:`run_bovw` (library, used by compare.py) and the command line
``python -m evaluation.baselines --data_dir DIR --out RESULT_DIR`` (see ``-h``). NumPy and
scikit-learn only; nothing here imports Keras.
"""

from __future__ import annotations

import argparse
import logging
import pathlib
import sys
import time

import numpy as np
from sklearn import metrics as skm
from sklearn.metrics import roc_auc_score

from data.splits import resolve_split_dirs
from evaluation.metrics import compute_metrics
from model.bovw import (
    DESCRIPTORS,
    HIKSVM,
    METHODS,
    BoVWError,
    fit_codebook,
    inspect,
    split_histograms,
)
from model.ksfa import ksfa_fusion
from utils.cli import configure_logging
from utils.rundir import RunDirError, atomic_write_json, atomic_write_npz, check_can_create_dir

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------
# Metrics, run, results
# --------------------------------------------------------------------------------------------


def basic_metrics(y1, y2, pred1, pred2):
    """Fallback metrics with scikit-learn: OA_t1, OA_t2, OA_bi, OA_tr, change precision/recall/F1."""
    y1, y2, pred1, pred2 = map(np.asarray, (y1, y2, pred1, pred2))
    ct, cp = y1 != y2, pred1 != pred2
    prec, rec, f1, _ = skm.precision_recall_fscore_support(
        ct, cp, labels=[True], average="binary", pos_label=True, zero_division=0)
    return {
        "OA_t1": float(skm.accuracy_score(y1, pred1)),
        "OA_t2": float(skm.accuracy_score(y2, pred2)),
        "OA_bi": float(skm.accuracy_score(ct, cp)),
        "OA_tr": float(np.mean((y1 == pred1) & (y2 == pred2))),
        "change_precision": float(prec),
        "change_recall": float(rec),
        "change_f1": float(f1),
        "n_pairs": int(len(y1)),
    }


def evaluate(y1, y2, p1, p2, class_names=None):
    """Metrics of docs/DESIGN.md §3 (evaluation.metrics.compute_metrics)."""
    return compute_metrics(y1, y2, p1, p2, class_names=class_names)


def run_bovw(trn_dir, tst_dir, method="hik", val_dir=None, words=1000, patch=10, stride=None,
             descriptor="meanstd_grad", orient_bins=8, max_samples=200_000, max_train=8000,
             C=10.0, seed=0, ksfa_options=None, check_values=True):
    """Train a BoVW baseline on ``trn_dir`` and evaluate it on ``tst_dir``.

    Args:
        trn_dir, tst_dir: split directories of npz shards (docs/DESIGN.md §4).
        method: ``"hik"`` or ``"ksfa"`` (:data:`METHODS`).
        val_dir: optional; KSFA calibrates its change probability on it (else on held-out
            training pairs); unused by ``"hik"``.
        words, patch, stride, descriptor, orient_bins, max_samples: codebook settings
            (:func:`fit_codebook`).
        max_train, C: HIK-SVM settings (:class:`HIKSVM`).
        seed: seed of every random choice (sample, k-means, subset, calibration).
        ksfa_options: dict of keyword arguments for :func:`model.ksfa.ksfa_fusion`.
        check_values: read the splits' image data through in the up-front check (see
            :func:`inspect`); False when the caller has done so already.

    Returns:
        ``(metrics, predictions)``: metrics a JSON-able dict (evaluation.metrics.compute_metrics of the
        test split, plus ``method``, ``n_words`` and, for KSFA, ``ksfa`` diagnostics);
        predictions a dict of arrays: ``label_t1``, ``label_t2``, ``pred_t1``, ``pred_t2``,
        ``prob_t1``, ``prob_t2``, ``p_change`` (+ ``row``, ``col`` when the shards have them; KSFA
        adds ``intensity``, ``classifier_prob_t1``, ``classifier_prob_t2``).
    """
    if method not in METHODS:
        raise ValueError(f"method: expected one of {sorted(METHODS)}, got {method!r}")
    t0 = time.time()
    n_trn, k, names = inspect(trn_dir, check_values)  # validate every split before any work
    _, k_tst, tst_names = inspect(tst_dir, check_values)
    if method == "ksfa" and val_dir is not None:
        inspect(val_dir, check_values)
    if n_trn == 0:
        raise BoVWError(f"{trn_dir}: label_t1/label_t2: expected at least one usable pair")
    k, names = max(k, k_tst), names or tst_names
    codebook = fit_codebook(trn_dir, words, patch, stride, descriptor, orient_bins, max_samples,
                            seed, n_pairs=n_trn)
    trn = split_histograms(trn_dir, codebook, names)
    tst = split_histograms(tst_dir, codebook, names)
    if tst.image_shape != trn.image_shape:
        raise BoVWError(f"{tst_dir}: image_t1: expected image shape {trn.image_shape} as in "
                        f"{trn_dir}, got {tst.image_shape}")
    clf = HIKSVM(C=C, max_train=max_train, seed=seed).fit(
        np.concatenate([trn.h1, trn.h2]), np.concatenate([trn.y1, trn.y2]), num_classes=k)
    p1, p2 = clf.predict_proba(tst.h1), clf.predict_proba(tst.h2)
    extra = {}
    preds = {}
    if method == "ksfa":
        val = split_histograms(val_dir, codebook, names) if val_dir is not None else None
        fused = ksfa_fusion(trn, tst, p1, p2, cal=val, seed=seed, **(ksfa_options or {}))
        preds.update(classifier_prob_t1=p1.astype(np.float32),
                     classifier_prob_t2=p2.astype(np.float32),
                     intensity=fused["intensity"].astype(np.float32))
        p1, p2 = fused["prob_t1"], fused["prob_t2"]
        extra["ksfa"] = fused["info"]
    metrics = evaluate(tst.y1, tst.y2, p1, p2, class_names=names)
    pred1, pred2 = np.argmax(p1, 1), np.argmax(p2, 1)
    if method == "ksfa":
        # The fused labels are the joint MAP pair; p_change is the fused joint P(c1 != c2).
        p_change = fused["p_change"]
        extra["ksfa"]["fused_change_metrics"] = basic_metrics(tst.y1, tst.y2, pred1, pred2)
        truth = tst.y1 != tst.y2
        if 0 < truth.sum() < len(truth):  # ROC-AUC of the fused joint p_change (predictions.npz)
            extra["ksfa"]["fused_p_change_roc_auc"] = float(roc_auc_score(truth, p_change))
    else:
        p_change = np.clip(1.0 - np.sum(p1 * p2, axis=1), 0.0, 1.0)
    metrics = dict(metrics)
    metrics.update(method=f"bovw_{method}", n_words=codebook.words, descriptor=descriptor,
                   seconds=round(time.time() - t0, 2), **extra)
    preds.update(label_t1=tst.y1, label_t2=tst.y2, pred_t1=pred1.astype(np.int32),
                 pred_t2=pred2.astype(np.int32), prob_t1=p1.astype(np.float32),
                 prob_t2=p2.astype(np.float32), p_change=np.asarray(p_change, np.float32))
    if tst.row is not None:
        preds.update(row=tst.row, col=tst.col)
    return metrics, preds


def write_results(out_dir, metrics, predictions, args=None):
    """Write ``results.json`` (metrics, + ``args``) and ``predictions.npz`` into ``out_dir``.

    Refuses (BoVWError) a non-empty existing ``out_dir``; files are written atomically.
    """
    out = _check_out_dir(out_dir)
    payload = dict(metrics)
    if args is not None:
        payload["args"] = args
    atomic_write_json(out / "results.json", payload)
    atomic_write_npz(out / "predictions.npz", predictions)
    return out


def _check_out_dir(out_dir) -> pathlib.Path:
    """Refuse (BoVWError) a result directory that exists and is not empty, is a file, or cannot be
    created because a parent is a file."""
    out = pathlib.Path(out_dir)
    try:
        check_can_create_dir(out)
    except RunDirError as e:
        raise BoVWError(str(e)) from None
    if out.is_dir() and any(out.iterdir()):
        raise BoVWError(f"{out}: directory: expected a new or empty result directory")
    return out


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------


def build_parser():
    p = argparse.ArgumentParser(
        prog="python -m evaluation.baselines",
        description="BoVW baselines (HIK-SVM, KSFA) on npz shards: train on trn, report on tst.")
    g = p.add_argument_group("data")
    g.add_argument("--data_dir", help="directory holding trn/, val/, tst/")
    g.add_argument("--trn", help="training split (default DATA_DIR/trn)")
    g.add_argument("--val", help="validation split (default DATA_DIR/val if present; KSFA only)")
    g.add_argument("--tst", help="test split (default DATA_DIR/tst)")
    g = p.add_argument_group("method")
    g.add_argument("--method", choices=sorted(METHODS), default="hik")
    g.add_argument("--C", type=float, default=10.0, help="SVM regularisation (default 10)")
    g.add_argument("--max_train", type=int, default=8000,
                   help="at most this many training images for the SVM (default 8000)")
    g.add_argument("--ksfa_basis", type=int, default=500,
                   help="KSFA kernel basis size (default 500)")
    g.add_argument("--ksfa_reg", type=float, default=0.1, help="KSFA ridge (default 0.1)")
    g.add_argument("--ksfa_kernel", choices=("rbf", "hik"), default="rbf",
                   help="KSFA kernel (default rbf)")
    g = p.add_argument_group("codebook")
    g.add_argument("--words", type=int, default=1000, help="visual words (default 1000)")
    g.add_argument("--patch", type=int, default=10, help="window side in px (default 10)")
    g.add_argument("--stride", type=int, default=None, help="window step (default: --patch)")
    g.add_argument("--descriptor", choices=sorted(DESCRIPTORS), default="meanstd_grad")
    g.add_argument("--max_samples", type=int, default=200_000,
                   help="windows sampled for k-means (default 200000)")
    g = p.add_argument_group("run")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--out", required=True, help="result directory (new or empty)")
    g.add_argument("-v", "--verbose", action="store_true")
    return p


def _resolve(args):
    dirs = resolve_split_dirs(args.data_dir, {"trn": args.trn, "val": args.val, "tst": args.tst},
                              optional=("val",))
    for name in ("trn", "tst"):
        if dirs[name] is None:
            raise BoVWError(f"--{name}: split: expected --data_dir or --{name}")
    for path in dirs.values():
        if path is not None and not pathlib.Path(path).is_dir():
            raise BoVWError(f"{path}: directory: expected a split directory of .npz shards")

    for name in ("words", "patch", "max_samples", "max_train", "ksfa_basis"):
        if getattr(args, name) < 1:
            raise BoVWError(f"--{name}: value: expected a positive integer")
    if args.stride is not None and args.stride < 1:
        raise BoVWError("--stride: value: expected a positive integer")
    if args.C <= 0 or args.ksfa_reg <= 0:
        raise BoVWError("--C/--ksfa_reg: value: expected a positive number")
    _check_out_dir(args.out)
    return tuple(None if d is None else pathlib.Path(d) for d in dirs.values())


def main(argv=None):
    args = build_parser().parse_args(argv)
    configure_logging(args.verbose)
    try:
        trn, val, tst = _resolve(args)
        metrics, preds = run_bovw(
            trn, tst, method=args.method, val_dir=val, words=args.words, patch=args.patch,
            stride=args.stride, descriptor=args.descriptor, max_samples=args.max_samples,
            max_train=args.max_train, C=args.C, seed=args.seed,
            ksfa_options={"n_basis": args.ksfa_basis, "reg": args.ksfa_reg,
                          "kernel": args.ksfa_kernel})
        write_results(args.out, metrics, preds, args={k: (str(v) if isinstance(v, pathlib.Path)
                                                         else v) for k, v in vars(args).items()})
    except ValueError as exc:  # BoVWError / ShardError / bad values
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        sys.stderr.write((msg if msg.startswith("error:") else f"error: {msg}") + "\n")
        return 2
    keys = ("OA_t1", "OA_t2", "OA_bi", "OA_tr", "change_f1")
    sys.stdout.write(" ".join(f"{k}={metrics[k]:.4f}" for k in keys if k in metrics) + "\n")
    log.info("results in %s", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
