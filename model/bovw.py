"""Bag-of-visual-words baselines of the paper's table: BoVW + HIK-SVM (and BoVW + KSFA, see model.ksfa).

Pure NumPy / scikit-learn; nothing here imports Keras. Shards (docs/DESIGN.md §4) are streamed one file
at a time and, inside a file, in chunks of a few dozen images, so memory is bounded by one shard's
images plus the per-image histograms (N x words float32), never by all patches of all images.

Pipeline
--------
1. **Dense local descriptors.** Every image is scaled to [0, 1] (integer dtypes divided by their
   dtype maximum, floats taken as they are; the −0.5 shift of §2 is irrelevant here) and cut into
   ``patch`` x ``patch`` windows every ``stride`` pixels (defaults 10 and 10: the original's
   non-overlapping 10x10 windows). Two descriptors:

   * ``"meanstd"`` (the original's): mean and standard deviation of each channel, 2C values;
   * ``"meanstd_grad"`` (default, richer): the 2C colour values plus gradient statistics of the
     grey image (channel mean; central differences, one-sided at the border): the window's mean
     gradient magnitude and a magnitude-weighted histogram of unsigned gradient orientation in
     ``orient_bins`` (default 8) bins over [0, π), normalised to sum 1 (uniform for a flat
     window) — a small HOG-like texture cue. 2C + 1 + orient_bins values (15 for RGB).

   Window statistics are sums over ``sliding_window_view`` views, computed per chunk of images.

2. **Codebook.** k-means (``MiniBatchKMeans``) on a bounded random sample of training patches
   (both dates): each training image contributes ``ceil(max_samples / n_images)`` random windows,
   so the sample holds at most about ``max_samples`` descriptors whatever the data size. The sample
   is standardised (``StandardScaler``) before k-means. ``words`` (default 1000, the original's) is
   capped at ``sample size // 10`` so that every word is learnt from about ten patches or more.

3. **Histograms.** Every window is assigned its nearest word; the per-image word counts are
   L1-normalised (divided by the number of windows).

4. **HIK-SVM.** ``SVC(kernel="precomputed")`` with the histogram-intersection kernel
   K(a, b) = Σ_d min(a_d, b_d), Gram matrices computed blockwise, exploiting the sparsity of the
   histograms (:func:`hik_gram`); class probabilities from a multinomial logistic regression on
   out-of-fold SVM decision values (:class:`HIKSVM`). One
   classifier is shared by both dates: it is trained on the t1 and the t2 images of the training
   split (at most ``max_train`` of them, a seeded uniform random subset, to bound the O(n²) Gram
   matrix: 8,000 images -> 0.5 GB). It predicts the class probabilities of every test image;
   predicted class = argmax, predicted change = the two dates' classes differ, and the probabilities
   give p_change = 1 − Σ_k p1_k p2_k (utils.metrics).

Entry points: :func:`run_bovw` (library, used by compare.py) and the CLI
``python -m model.bovw --data_dir DIR --out RESULT_DIR`` (see ``-h``).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import pathlib
import sys
import time

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from sklearn import metrics as skm
from sklearn.cluster import MiniBatchKMeans
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedKFold
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC

from data import shards
from data.shards import ShardError
from data.splits import resolve_split_dirs
from model.kernels import hik_gram
from model.ksfa import ksfa_fusion
from utils.metrics import compute_metrics
from utils.rundir import RunDirError, atomic_write_json, atomic_write_npz, check_can_create_dir

__all__ = [
    "DESCRIPTORS",
    "METHODS",
    "BoVWError",
    "Codebook",
    "HIKSVM",
    "SplitHistograms",
    "descriptor_dim",
    "patch_descriptors",
    "iter_split",
    "fit_codebook",
    "split_histograms",
    "hik_gram",
    "basic_metrics",
    "evaluate",
    "run_bovw",
    "write_results",
    "main",
]

log = logging.getLogger("model.bovw")

#: Local descriptors (name -> short description); see the module docstring.
DESCRIPTORS = {
    "meanstd": "per-channel mean and std of the window (the original's)",
    "meanstd_grad": "per-channel mean and std + mean gradient magnitude + orientation histogram",
}

#: Baseline methods of this module (name -> short description).
METHODS = {
    "hik": "BoVW + histogram-intersection-kernel SVM, change = classes differ",
    "ksfa": "BoVW + kernel slow feature analysis change intensity, Bayesian soft fusion",
}

_CHUNK_BYTES = 64 * 2**20  # working-set target of one descriptor chunk


class BoVWError(ShardError):
    """Bad input (a data.shards.ShardError, so CLIs catch one class)."""


# --------------------------------------------------------------------------------------------
# Shard reading
# --------------------------------------------------------------------------------------------


def _load_shard(path):
    """Arrays of one shard, label-0 pairs removed, labels 0-based int32."""
    keys = ("image_t1", "image_t2", "label_t1", "label_t2", "row", "col")
    present = shards.read_headers(path)
    arrays = shards.load_arrays(path, [k for k in keys if k in present])
    for key in keys[:4]:
        if key not in arrays:
            raise BoVWError(f"{path}: {key}: missing; expected docs/DESIGN.md §4 keys")
    keep = (arrays["label_t1"] > 0) & (arrays["label_t2"] > 0)
    out = {k: (v[keep] if k in keys else v) for k, v in arrays.items()}
    for key in ("label_t1", "label_t2"):
        out[key] = (out[key] - 1).astype(np.int32)
    out.setdefault("row", None)
    out.setdefault("col", None)
    out["file"] = path
    return out


def inspect(split_dir, check_values=True):
    """Validate a split with data.shards.inspect_split: (n_pairs, num_classes, names).

    check_values=False: headers and labels only, for a split read through already (compare.py).
    """
    s = shards.inspect_split(split_dir, check_values=check_values)
    return s.n_pairs, s.num_classes, s.class_names


def iter_split(split_dir):
    """Yield one dict per shard of ``split_dir`` (sorted order), undefined pairs removed.

    Keys: ``file``, ``image_t1``, ``image_t2`` (N, H, W, C), ``label_t1``, ``label_t2`` (N,) int32
    0-based, ``row``, ``col`` (N,) or None. Same pair order as data.shards.read_labels. The split
    should have been validated with :func:`inspect` first.
    """
    for path in shards.list_shards(split_dir):
        yield _load_shard(path)


# --------------------------------------------------------------------------------------------
# Descriptors
# --------------------------------------------------------------------------------------------


def descriptor_dim(channels, descriptor="meanstd_grad", orient_bins=8):
    """Length of one window's descriptor."""
    if descriptor == "meanstd":
        return 2 * channels
    if descriptor == "meanstd_grad":
        return 2 * channels + 1 + orient_bins
    raise ValueError(f"descriptor: expected one of {sorted(DESCRIPTORS)}, got {descriptor!r}")


def _to_unit(images):
    return shards.scale_images(images, unit=True)  # §2 scaling without the −0.5 shift


def _window_means(maps, patch, stride):
    """(N, H, W, F) -> (N, P, F): mean of every patch x patch window, windows every stride px."""
    n, h, w, f = maps.shape
    if stride == patch:  # non-overlapping windows: a reshape, no strided view
        nr, nc = h // patch, w // patch
        v = maps[:, :nr * patch, :nc * patch].reshape(n, nr, patch, nc, patch, f)
        return v.mean(axis=(2, 4), dtype=np.float32).reshape(n, nr * nc, f)
    v = sliding_window_view(maps, (patch, patch), axis=(1, 2))[:, ::stride, ::stride]
    out = v.mean(axis=(-2, -1), dtype=np.float32)  # (N, nr, nc, F)
    return out.reshape(n, -1, f)


def patch_descriptors(images, patch=10, stride=None, descriptor="meanstd_grad", orient_bins=8):
    """Dense local descriptors of a batch of images.

    Args:
        images: (N, H, W, C) array (integer dtypes scaled by their maximum, floats taken as [0, 1]).
        patch: window side in pixels (<= H and W).
        stride: step between windows (default: ``patch``, non-overlapping).
        descriptor: a key of :data:`DESCRIPTORS`.
        orient_bins: orientation bins of ``"meanstd_grad"``.

    Returns:
        float32 array (N, P, D), P = ((H − patch) // stride + 1) · ((W − patch) // stride + 1),
        D = :func:`descriptor_dim`; windows in row-major order.
    """
    x = _to_unit(images)
    if x.ndim != 4:
        raise ValueError(f"images: expected shape (N, H, W, C), got {x.shape}")
    n, h, w, c = x.shape
    stride = patch if stride is None else stride
    if not (1 <= patch <= min(h, w)) or stride < 1:
        raise ValueError(f"patch/stride: expected 1 <= patch <= {min(h, w)} and stride >= 1, "
                         f"got patch={patch} stride={stride}")
    descriptor_dim(c, descriptor, orient_bins)  # validates the name
    maps = [x, x * x]
    if descriptor == "meanstd_grad":
        g = x.mean(axis=-1)
        gy = np.empty_like(g)
        gx = np.empty_like(g)
        if h > 1:
            gy[:, 1:-1] = (g[:, 2:] - g[:, :-2]) * 0.5
            gy[:, 0] = g[:, 1] - g[:, 0]
            gy[:, -1] = g[:, -1] - g[:, -2]
        else:
            gy[:] = 0
        if w > 1:
            gx[:, :, 1:-1] = (g[:, :, 2:] - g[:, :, :-2]) * 0.5
            gx[:, :, 0] = g[:, :, 1] - g[:, :, 0]
            gx[:, :, -1] = g[:, :, -1] - g[:, :, -2]
        else:
            gx[:] = 0
        mag = np.hypot(gx, gy)
        theta = np.mod(np.arctan2(gy, gx), np.pi)  # unsigned orientation in [0, pi)
        b = np.minimum((theta * (orient_bins / np.pi)).astype(np.int64), orient_bins - 1)
        hist = np.zeros((n, h, w, orient_bins), np.float32)
        np.put_along_axis(hist, b[..., None], mag[..., None], axis=-1)
        maps += [mag[..., None], hist]
    means = _window_means(np.concatenate(maps, axis=-1), patch, stride)
    mean = means[..., :c]
    std = np.sqrt(np.maximum(means[..., c:2 * c] - mean * mean, 0.0))
    parts = [mean, std]
    if descriptor == "meanstd_grad":
        m = means[..., 2 * c:2 * c + 1]
        oh = means[..., 2 * c + 1:]
        eps = np.float32(1e-6)
        parts += [m, (oh + eps / orient_bins) / (oh.sum(-1, keepdims=True) + eps)]
    return np.concatenate(parts, axis=-1).astype(np.float32, copy=False)


def _chunks(n_images, image_shape, n_maps):
    h, w = image_shape[:2]
    size = max(1, int(_CHUNK_BYTES // max(1, h * w * n_maps * 4)))
    for start in range(0, n_images, size):
        yield slice(start, min(n_images, start + size))


def _n_maps(channels, descriptor, orient_bins):
    return 2 * channels + (1 + orient_bins if descriptor == "meanstd_grad" else 0) + channels


# --------------------------------------------------------------------------------------------
# Codebook and histograms
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Codebook:
    """A fitted visual vocabulary: descriptor settings, scaler and k-means centres."""

    patch: int
    stride: int
    descriptor: str
    orient_bins: int
    scaler: StandardScaler
    kmeans: MiniBatchKMeans

    @property
    def words(self):
        return int(self.kmeans.n_clusters)

    def histograms(self, images):
        """(N, H, W, C) images -> (N, words) float32 L1-normalised word histograms."""
        images = np.asarray(images)
        n_maps = _n_maps(images.shape[-1], self.descriptor, self.orient_bins)
        out = np.empty((len(images), self.words), np.float32)
        for sl in _chunks(len(images), images.shape[1:], n_maps):
            d = patch_descriptors(images[sl], self.patch, self.stride, self.descriptor,
                                  self.orient_bins)
            n, p, dim = d.shape
            words = self.kmeans.predict(self.scaler.transform(d.reshape(-1, dim)))
            idx = np.repeat(np.arange(n), p) * self.words + words
            counts = np.bincount(idx, minlength=n * self.words).reshape(n, self.words)
            out[sl] = counts / np.float32(p)
        return out


def fit_codebook(trn_dir, words=1000, patch=10, stride=None, descriptor="meanstd_grad",
                 orient_bins=8, max_samples=200_000, seed=0, n_pairs=None):
    """Learn a :class:`Codebook` on a bounded random sample of training windows (both dates).

    Every usable training image contributes ``ceil(max_samples / n_images)`` random windows;
    ``words`` is capped at ``sample size // 10`` (at least 2). ``n_pairs``: usable training pairs
    if already known (else :func:`inspect` counts them).
    """
    stride = patch if stride is None else stride
    if words < 2:
        raise ValueError(f"words: expected >= 2, got {words}")
    n_images = 2 * (inspect(trn_dir)[0] if n_pairs is None else n_pairs)
    if n_images == 0:
        raise BoVWError(f"{trn_dir}: label_t1/label_t2: expected at least one usable pair")
    per_image = max(1, math.ceil(max_samples / n_images))
    rng = np.random.default_rng(seed)
    sample = []
    for shard in iter_split(trn_dir):
        for key in ("image_t1", "image_t2"):
            x = shard[key]
            n_maps = _n_maps(x.shape[-1], descriptor, orient_bins)
            for sl in _chunks(len(x), x.shape[1:], n_maps):
                d = patch_descriptors(x[sl], patch, stride, descriptor, orient_bins)
                n, p, dim = d.shape
                k = min(per_image, p)
                pick = np.argsort(rng.random((n, p)), axis=1)[:, :k]
                sample.append(np.take_along_axis(d, pick[..., None], axis=1).reshape(-1, dim))
    sample = np.concatenate(sample)
    cap = max(2, len(sample) // 10)
    if words > cap:
        log.warning("words: %d requested, only %d sampled windows; using %d words",
                    words, len(sample), cap)
        words = cap
    scaler = StandardScaler().fit(sample)
    z = scaler.transform(sample)
    kmeans = MiniBatchKMeans(n_clusters=words, batch_size=max(1024, 2 * words), n_init=1,
                             compute_labels=False, random_state=seed).fit(z)
    log.info("codebook: %d words from %d windows of %d training images (%s, %dx%d every %d px)",
             words, len(sample), n_images, descriptor, patch, patch, stride)
    return Codebook(patch, stride, descriptor, orient_bins, scaler, kmeans)


@dataclasses.dataclass
class SplitHistograms:
    """Word histograms and labels of one split, pairs in read_labels order."""

    h1: np.ndarray  # (N, words) float32, date t1
    h2: np.ndarray  # (N, words) float32, date t2
    y1: np.ndarray  # (N,) int32 0-based
    y2: np.ndarray
    row: np.ndarray | None
    col: np.ndarray | None
    class_names: list | None
    image_shape: tuple


def split_histograms(split_dir, codebook, class_names=None):
    """Stream a split through ``codebook``: one :class:`SplitHistograms`."""
    h1, h2, y1, y2, rows, cols = [], [], [], [], [], []
    shape = None
    for shard in iter_split(split_dir):
        if shape is None:
            shape = shard["image_t1"].shape[1:]
        elif shard["image_t1"].shape[1:] != shape:
            raise BoVWError(f"{shard['file']}: image_t1: expected image shape {shape}, "
                            f"got {shard['image_t1'].shape[1:]}")
        h1.append(codebook.histograms(shard["image_t1"]))
        h2.append(codebook.histograms(shard["image_t2"]))
        y1.append(shard["label_t1"])
        y2.append(shard["label_t2"])
        rows.append(shard["row"])
        cols.append(shard["col"])
    has_rc = all(r is not None for r in rows) and all(c is not None for c in cols)
    out = SplitHistograms(np.concatenate(h1), np.concatenate(h2), np.concatenate(y1),
                          np.concatenate(y2), np.concatenate(rows) if has_rc else None,
                          np.concatenate(cols) if has_rc else None, class_names,
                          tuple(shape))
    if len(out.y1) == 0:
        raise BoVWError(f"{split_dir}: label_t1/label_t2: expected at least one usable pair")
    log.info("%s: %d pairs -> histograms", split_dir, len(out.y1))
    return out


# --------------------------------------------------------------------------------------------
# Histogram-intersection kernel SVM
# --------------------------------------------------------------------------------------------


class HIKSVM:
    """SVC on a precomputed histogram-intersection kernel, with calibrated class probabilities.

    Probabilities come from a multinomial logistic regression on the SVM's one-vs-rest decision
    values, fitted on out-of-fold decision values of a 3-fold stratified cross-validation on the
    training Gram matrix (the idea of ``CalibratedClassifierCV(ensemble=False)``, which cannot
    split a precomputed kernel; ``SVC(probability=True)`` is deprecated in scikit-learn 1.9).
    The predicted class is the argmax of these probabilities.

    Args:
        C: SVM regularisation.
        max_train: at most this many training samples (seeded uniform random subset).
        seed: random seed (subset and folds).
    """

    def __init__(self, C=10.0, max_train=8000, seed=0):
        self.C = C
        self.max_train = max_train
        self.seed = seed

    def _svc(self):
        return SVC(kernel="precomputed", C=self.C, decision_function_shape="ovr")

    @staticmethod
    def _decision(svc, gram):
        d = svc.decision_function(gram)
        return d.reshape(len(gram), -1)

    def fit(self, h, y, num_classes=None):
        """Fit on (n, D) histograms and 0-based labels ``y``; ``num_classes`` K (default max + 1)."""
        h = np.asarray(h, np.float32)
        y = np.asarray(y)
        if len(h) > self.max_train:
            idx = np.sort(np.random.default_rng(self.seed).choice(len(h), self.max_train,
                                                                   replace=False))
            log.info("HIK-SVM: training on a random %d of %d images", self.max_train, len(h))
            h, y = h[idx], y[idx]
        self.num_classes_ = int(num_classes if num_classes is not None else y.max() + 1)
        self.classes_, counts = np.unique(y, return_counts=True)
        if len(self.classes_) < 2:
            self.svc_ = None  # one class seen: constant prediction
            self.train_ = h[:0]
            return self
        gram = hik_gram(h)
        folds = min(3, int(counts.min()))
        if folds >= 2:
            oof = np.zeros((len(y), len(self.classes_) if len(self.classes_) > 2 else 1))
            cv = StratifiedKFold(folds, shuffle=True, random_state=self.seed)
            for tr, te in cv.split(h, y):
                svc = self._svc().fit(gram[np.ix_(tr, tr)], y[tr])
                oof[te] = self._decision(svc, gram[np.ix_(te, tr)])
        else:  # a class with a single sample: calibrate in-sample
            oof = None
        self.svc_ = self._svc().fit(gram, y)
        if oof is None:
            oof = self._decision(self.svc_, gram)
        self.calibrator_ = LogisticRegression(C=1.0, solver="newton-cholesky", max_iter=200).fit(
            oof, y)
        # only the support vectors' kernel columns matter at prediction time
        self.train_ = h[self.svc_.support_]
        self.n_train_ = len(h)
        log.info("HIK-SVM: %d training images, %d support vectors, %d classes",
                 len(h), len(self.train_), len(self.classes_))
        return self

    def decision_function(self, h, batch=2048):
        """(N, D) histograms -> one-vs-rest decision values (N, classes seen) of the SVM."""
        h = np.asarray(h, np.float32)
        out = []
        for s in range(0, len(h), batch):
            gram = np.zeros((len(h[s:s + batch]), self.n_train_))
            gram[:, self.svc_.support_] = hik_gram(h[s:s + batch], self.train_)
            out.append(self._decision(self.svc_, gram))
        return np.concatenate(out) if out else np.zeros((0, len(self.classes_)))

    def predict_proba(self, h, batch=2048):
        """(N, D) histograms -> (N, num_classes) probabilities (0 for classes never trained)."""
        h = np.asarray(h, np.float32)
        out = np.zeros((len(h), self.num_classes_), np.float64)
        if self.svc_ is None:
            out[:, self.classes_[0]] = 1.0
            return out
        if len(h):
            out[:, self.calibrator_.classes_] = self.calibrator_.predict_proba(
                self.decision_function(h, batch))
        return out


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
    """Metrics of docs/DESIGN.md §3 (utils.metrics.compute_metrics)."""
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
        ``(metrics, predictions)``: metrics a JSON-able dict (utils.metrics.compute_metrics of the
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
        prog="python -m model.bovw",
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
    from utils.cli import configure_logging

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
