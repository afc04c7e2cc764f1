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
   give p_change = 1 − Σ_k p1_k p2_k (evaluation.metrics).

This module is the model (descriptors, codebook, histograms, classifier); the run on a dataset, its
result files and its command line are :mod:`evaluation.baselines` (``run_bovw``, used by compare.py,
and ``python -m evaluation.baselines --data_dir DIR --out RESULT_DIR``, see ``-h``).
"""

from __future__ import annotations

import dataclasses
import logging
import math

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from sklearn.cluster import MiniBatchKMeans
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC

from data import shards, split_summary
from data.shards import ShardError
from model.kernels import hik_gram

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
    """Validate a split with data.split_summary.inspect_split: (n_pairs, num_classes, names).

    check_values=False: headers and labels only, for a split read through already (compare.py).
    """
    s = split_summary.inspect_split(split_dir, check_values=check_values)
    return s.n_pairs, s.num_classes, s.class_names


def iter_split(split_dir):
    """Yield one dict per shard of ``split_dir`` (sorted order), undefined pairs removed.

    Keys: ``file``, ``image_t1``, ``image_t2`` (N, H, W, C), ``label_t1``, ``label_t2`` (N,) int32
    0-based, ``row``, ``col`` (N,) or None. Same pair order as data.split_summary.read_labels. The split
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
