"""Kernel slow feature analysis (KSFA) change intensity and Bayesian soft fusion for BoVW.

After Wu, Zhang, Du, "Kernel slow feature analysis for scene change detection", IEEE TGRS 2017.
Pure NumPy / SciPy / scikit-learn; used by :func:`evaluation.baselines.run_bovw` with ``method="ksfa"``.

Formulation implemented
-----------------------
Inputs: the BoVW histograms x_i (t1) and y_i (t2) of the training pairs.

*Kernel basis.* A random subset Z = {z_1..z_m} of the training histograms (both dates,
``n_basis`` = m, default 500) spans the projection: f(x) = Σ_j α_j k(z_j, x) − μ_f, i.e. each
histogram is represented by its centred empirical kernel map φ(x) = k(Z, x) − mean over all
training images (both dates). The kernel is ``"rbf"`` (default; exp(−γ‖a − b‖²), γ = 1 / median
squared distance in the basis) or ``"hik"`` (histogram intersection). Using m basis vectors instead
of all n training samples bounds the cost at O(n·m) kernel values and an m x m eigenproblem.

*Slow features.* With Φ1, Φ2 the (n, m) maps of the two dates and U the unchanged training pairs,

    A = (Φ1 − Φ2)_Uᵀ (Φ1 − Φ2)_U / |U| + r·(tr A / m)·I   (temporal-difference variance on the
                                                           unchanged pairs, plus a ridge)
    B = (Φ1ᵀΦ1 + Φ2ᵀΦ2) / (2n)                            (variance of the data, both dates)

and the slow features are the generalised eigenvectors A α_k = λ_k B α_k (scipy.linalg.eigh),
ascending λ, normalised to unit variance αᵀ B α = 1: the projections along which unchanged pairs
move least relative to the spread of the data. The ridge r (``reg``, default 0.1, relative to the
mean eigenvalue of A) sits on the minimised term: directions the few training pairs happen not to
move along (A is rank-deficient when m approaches |U|) are not taken as slow, and directions with
little data variance become fast, not slow. (A ridge on B instead pushes the solution into such
dead directions; on the toy data it generalised much worse.) B gets a 1e-9 relative jitter only.

*Change intensity.* For a pair (x, y), with the d slowest features, I = Σ_k (f_k(x) − f_k(y))² / λ_k:
the squared slow-feature difference, each feature normalised by its (regularised) difference
variance on unchanged training pairs, so that I is ~ χ²(d) for unchanged pairs as in SFA change
detection. d = ``n_components``; default ``"auto"`` = K − 1 for K classes: when the changes to
detect are class changes, slowness on unchanged pairs is a within- versus total-scatter criterion
(as in LDA) with at most K − 1 informative directions; more features add in-sample noise (the
toy data confirmed it: AUC of the intensity 0.84 with K − 1 features, 0.64 with all).

*Change probability.* P(changed | I) = σ(a + b·log I), a logistic calibration fitted on pairs the
slow features were *not* learnt on: the validation split when given and holding both changed and
unchanged pairs, else a held-out
``cal_fraction`` (default 0.3, stratified on change) of the training pairs, the KSFA then being
learnt on the rest. If the calibration pairs hold a single change state the probability is the
constant change rate of the training pairs (logged, reported in ``info``).

*Bayesian soft fusion.* With P(c|x) the shared HIK-SVM's per-date posteriors, the joint posterior
of a label pair is

    P(c1, c2 | x, y) ∝ P(c1 | x) · P(c2 | y) · P(s(c1, c2) | I),   s = [c1 ≠ c2],

and the predicted labels are its maximiser (ĉ1, ĉ2). Outputs: the fused p_change = Σ_{c1≠c2}
P(c1, c2 | ·) and, per date, the conditional posterior at the MAP pair, P(c1 | c2 = ĉ2, ·) and
P(c2 | c1 = ĉ1, ·), whose argmax is exactly ĉ1 and ĉ2 (so evaluation.metrics, which takes argmax of
per-date probabilities, scores the fused labels).

Behaviour of the fusion: the plain rule (argmax per date, changed if they differ) over-predicts
change whenever a date is misclassified; the joint MAP removes most of those false alarms, so
OA_bi and change precision rise, and change recall falls where the intensity is not convincing. On
toy histograms with a well-separating intensity (AUC ~0.9) change F1 rose (0.71 -> 0.76; 0.30 ->
0.45 and 0.52 -> 0.82 on two synthetic shard sets); with a weak intensity (AUC ~0.8, per-date
accuracy ~0.7) it fell (0.57 -> 0.33: precision 0.42 -> 0.79, recall 0.89 -> 0.21). MAP decoding
does not maximise F1; thresholding the fused ``p_change`` is the knob for that trade-off.

Departures from the paper
-------------------------
* The paper's KSFA is unsupervised (slowness over all pairs, change being rare); here the
  difference term A uses only the training pairs labelled unchanged — the labels exist, and this
  keeps the rare changed pairs from being made "slow". ``pairs="all"`` gives the unsupervised form.
* The dual expansion is restricted to a random basis of m training samples (a Nyström-style
  reduced set) with a ridge regulariser on B, instead of the full n x n kernel problem.
* The paper turns the intensity into a change probability with its own thresholding / EM-style
  modelling; here a logistic calibration on held-out labelled pairs is used.
* The fusion multiplies the two per-date posteriors as if independent and uses P(s | I) directly
  as the third factor (no division by the prior P(s)); that is the rule written above, a
  simplified form of the paper's Bayesian soft fusion.
"""

from __future__ import annotations

import logging

import numpy as np
import scipy.linalg
from sklearn.linear_model import LogisticRegression

from model.kernels import hik_gram

__all__ = ["KERNELS", "KSFA", "ChangeCalibrator", "joint_fusion", "ksfa_fusion", "rbf_kernel"]

log = logging.getLogger(__name__)

_EPS = 1e-12


def _sqdist(a, b):
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    return np.maximum((a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T, 0.0)


def rbf_kernel(a, b, gamma):
    """exp(−γ‖a_i − b_j‖²), float64 (n, m)."""
    return np.exp(-gamma * _sqdist(a, b))


def _hik(a, b, gamma=None):
    return hik_gram(a, b)


#: kernels (name -> function(a, b, gamma)).
KERNELS = {"rbf": rbf_kernel, "hik": _hik}


class KSFA:
    """Kernel slow feature analysis on a random kernel basis (see the module docstring).

    Args:
        n_basis: basis size m (capped at the number of training images).
        reg: ridge regulariser r of the variance constraint.
        kernel: ``"rbf"`` or ``"hik"``.
        n_components: slow features used in the intensity: an int, ``"auto"`` (K − 1, K given to
            :meth:`fit`, else 10) or None (all m).
        pairs: ``"unchanged"`` (default; labelled unchanged pairs in the slowness term) or
            ``"all"`` (every training pair, the paper's unsupervised form).
        seed: seed of the basis choice.
    """

    def __init__(self, n_basis=500, reg=0.1, kernel="rbf", n_components="auto",
                 pairs="unchanged", seed=0):
        if kernel not in KERNELS:
            raise ValueError(f"kernel: expected one of {sorted(KERNELS)}, got {kernel!r}")
        if pairs not in ("unchanged", "all"):
            raise ValueError(f"pairs: expected 'unchanged' or 'all', got {pairs!r}")
        if n_basis < 1 or reg <= 0:
            raise ValueError(f"n_basis, reg: expected >= 1 and > 0, got {n_basis}, {reg}")
        self.n_basis = n_basis
        self.reg = reg
        self.kernel = kernel
        self.n_components = n_components
        self.pairs = pairs
        self.seed = seed

    def _map(self, h):
        return KERNELS[self.kernel](h, self.basis_, self.gamma_) - self.mean_

    def fit(self, h1, h2, changed=None, num_classes=None):
        """Learn the slow features from paired histograms (n, D); ``changed`` (n,) bool or None."""
        h1 = np.asarray(h1, np.float64)
        h2 = np.asarray(h2, np.float64)
        n = len(h1)
        if h1.shape != h2.shape or n < 2:
            raise ValueError(f"h1, h2: expected two (n >= 2, D) arrays, got {h1.shape}, {h2.shape}")
        both = np.concatenate([h1, h2])
        rng = np.random.default_rng(self.seed)
        m = min(self.n_basis, len(both))
        self.basis_ = both[np.sort(rng.choice(len(both), m, replace=False))]
        if self.kernel == "rbf":
            d2 = _sqdist(self.basis_, self.basis_)
            med = np.median(d2[np.triu_indices(m, 1)]) if m > 1 else 1.0
            self.gamma_ = 1.0 / med if med > 0 else 1.0
        else:
            self.gamma_ = None
        self.mean_ = 0.0
        k1 = KERNELS[self.kernel](h1, self.basis_, self.gamma_)
        k2 = KERNELS[self.kernel](h2, self.basis_, self.gamma_)
        self.mean_ = np.concatenate([k1, k2]).mean(0)
        f1, f2 = k1 - self.mean_, k2 - self.mean_
        slow = np.ones(n, bool) if (changed is None or self.pairs == "all") else ~np.asarray(changed)
        if slow.sum() < 1:
            raise ValueError("changed: expected at least one unchanged training pair")
        diff = f1[slow] - f2[slow]
        a = diff.T @ diff / slow.sum()
        b = (f1.T @ f1 + f2.T @ f2) / (2.0 * n)
        a += self.reg * (np.trace(a) / m + _EPS) * np.eye(m)
        b += 1e-9 * (np.trace(b) / m + _EPS) * np.eye(m)
        lam, vec = scipy.linalg.eigh(a, b)  # ascending; vecᵀ b vec = I
        d = self.n_components
        if d == "auto":
            d = num_classes - 1 if num_classes else 10
        d = m if d is None else max(1, min(int(d), m))
        self.eigenvalues_ = lam[:d]
        self.alpha_ = vec[:, :d]
        # regularised variance of each slow feature's difference on the slow pairs = λ_k
        self.scale_ = np.maximum(self.eigenvalues_, _EPS)
        return self

    def transform(self, h):
        """(N, D) histograms -> (N, d) slow features."""
        return self._map(np.asarray(h, np.float64)) @ self.alpha_

    def intensity(self, h1, h2):
        """Change intensity Σ_k (f_k(x) − f_k(y))² / λ_k of each pair, shape (N,)."""
        d = self.transform(h1) - self.transform(h2)
        return np.sum(d * d / self.scale_, axis=1)


class ChangeCalibrator:
    """P(changed | intensity) = σ(a + b·log I), fitted by logistic regression."""

    def fit(self, intensity, changed):
        changed = np.asarray(changed, bool)
        self.rate_ = float(changed.mean()) if len(changed) else 0.0
        if changed.all() or not changed.any():
            log.warning("KSFA calibration: one change state only (%d pairs); P(change) = %.3g",
                        len(changed), self.rate_)
            self.lr_ = None
            return self
        self.lr_ = LogisticRegression(C=1e3, solver="newton-cholesky").fit(self._x(intensity), changed)
        return self

    @staticmethod
    def _x(intensity):
        return np.log(np.asarray(intensity, np.float64) + _EPS)[:, None]

    def predict(self, intensity):
        """Change probability of each intensity, shape (N,)."""
        if self.lr_ is None:
            return np.full(len(intensity), self.rate_)
        return self.lr_.predict_proba(self._x(intensity))[:, 1]


def joint_fusion(p1, p2, p_change):
    """Bayesian soft fusion of per-date posteriors with a change probability.

    Args:
        p1, p2: (N, K) class posteriors per date; p_change: (N,) P(changed | intensity).

    Returns:
        dict: ``pred_t1``, ``pred_t2`` (N,) the joint MAP pair; ``prob_t1`` = P(c1 | c2 = ĉ2, ·),
        ``prob_t2`` = P(c2 | c1 = ĉ1, ·) (N, K); ``p_change`` (N,) fused Σ_{c1≠c2} P(c1, c2 | ·).
    """
    p1 = np.asarray(p1, np.float64)
    p2 = np.asarray(p2, np.float64)
    pc = np.clip(np.asarray(p_change, np.float64), 1e-9, 1 - 1e-9)
    n, k = p1.shape
    same = np.eye(k, dtype=bool)
    joint = p1[:, :, None] * p2[:, None, :]
    joint = joint * np.where(same[None], (1.0 - pc)[:, None, None], pc[:, None, None])
    joint /= np.maximum(joint.sum(axis=(1, 2), keepdims=True), 1e-300)
    flat = joint.reshape(n, -1).argmax(1)
    c1, c2 = flat // k, flat % k
    rows = np.arange(n)
    q1 = joint[rows, :, c2]
    q2 = joint[rows, c1, :]
    q1 = q1 / np.maximum(q1.sum(1, keepdims=True), 1e-300)
    q2 = q2 / np.maximum(q2.sum(1, keepdims=True), 1e-300)
    return {"pred_t1": c1, "pred_t2": c2, "prob_t1": q1, "prob_t2": q2,
            "p_change": np.clip(1.0 - joint[:, same].sum(1), 0.0, 1.0)}


def _split_calibration(changed, fraction, seed):
    """Stratified split of training pairs into (fit, calibration) index arrays."""
    rng = np.random.default_rng(seed)
    fit, cal = [], []
    for state in (False, True):
        idx = np.flatnonzero(changed == state)
        rng.shuffle(idx)
        k = int(round(fraction * len(idx)))
        if len(idx) >= 2:
            k = min(max(k, 1), len(idx) - 1)
        else:
            k = 0
        cal.append(idx[:k])
        fit.append(idx[k:])
    return np.sort(np.concatenate(fit)), np.sort(np.concatenate(cal))


def ksfa_fusion(trn, tst, p1, p2, cal=None, n_basis=500, reg=0.1, kernel="rbf",
                n_components="auto", pairs="unchanged", cal_fraction=0.3, seed=0):
    """Learn KSFA on ``trn``, calibrate, and fuse with the test posteriors ``p1``, ``p2``.

    Args:
        trn, tst, cal: objects with ``h1``, ``h2`` (N, D) histograms and ``y1``, ``y2`` labels
            (model.bovw.SplitHistograms); ``cal`` (validation split) may be None, then a
            held-out ``cal_fraction`` of the training pairs calibrates.
        p1, p2: (N_tst, K) per-date class posteriors of the test pairs.
        n_basis, reg, kernel, n_components, pairs: :class:`KSFA` settings.
        seed: random seed.

    Returns:
        dict with ``intensity`` (N_tst,), ``p_change_ksfa`` (N_tst,) P(changed | intensity),
        the :func:`joint_fusion` outputs, and ``info`` (JSON-able diagnostics).
    """
    changed = np.asarray(trn.y1) != np.asarray(trn.y2)
    if cal is not None and len(np.unique(np.asarray(cal.y1) != np.asarray(cal.y2))) < 2:
        log.warning("KSFA: the validation pairs hold one change state only; calibrating on "
                    "held-out training pairs instead")
        cal = None
    if cal is None:
        fit_idx, cal_idx = _split_calibration(changed, cal_fraction, seed)
        cal_h1, cal_h2, cal_changed = trn.h1[cal_idx], trn.h2[cal_idx], changed[cal_idx]
        source = f"held-out {len(cal_idx)} training pairs"
    else:
        fit_idx = np.arange(len(changed))
        cal_h1, cal_h2 = cal.h1, cal.h2
        cal_changed = np.asarray(cal.y1) != np.asarray(cal.y2)
        source = f"{len(cal_changed)} validation pairs"
    model = KSFA(n_basis, reg, kernel, n_components, pairs, seed).fit(
        trn.h1[fit_idx], trn.h2[fit_idx], changed[fit_idx], num_classes=np.shape(p1)[1])
    calib = ChangeCalibrator().fit(model.intensity(cal_h1, cal_h2), cal_changed)
    if calib.lr_ is None and cal is None:
        calib.rate_ = float(changed.mean())
    intensity = model.intensity(tst.h1, tst.h2)
    p_ch = calib.predict(intensity)
    out = joint_fusion(p1, p2, p_ch)
    out.update(intensity=intensity, p_change_ksfa=p_ch)
    out["info"] = {
        "n_fit_pairs": int(len(fit_idx)),
        "n_basis": int(len(model.basis_)),
        "n_components": int(model.alpha_.shape[1]),
        "kernel": kernel,
        "reg": reg,
        "pairs": pairs,
        "calibration": source,
        "calibration_changed": int(np.sum(cal_changed)),
        "calibration_coef": (None if calib.lr_ is None else
                             [float(calib.lr_.intercept_[0]), float(calib.lr_.coef_[0, 0])]),
        "smallest_eigenvalues": [float(v) for v in model.eigenvalues_[:5]],
    }
    log.info("KSFA: %d basis, %d slow features, calibrated on %s", out["info"]["n_basis"],
             out["info"]["n_components"], source)
    return out
