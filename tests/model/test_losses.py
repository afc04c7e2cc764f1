"""Loss terms (§2.1, §2.2) against NumPy; the SoftDecorrelation layer."""

import numpy as np
import pytest
from keras import ops

from model.losses import (
    SoftDecorrelation,
    correlation_loss,
    cross_entropy,
    decorrelation_penalty,
    pair_distance,
    running_covariance,
    view_variance_loss,
)
from tests._helpers import run_layer_test
from tests.model._helpers import value_and_grads


def _np(v):
    return ops.convert_to_numpy(v).astype(np.float64)


def test_cross_entropy_matches_numpy():
    rng = np.random.default_rng(0)
    p = rng.dirichlet(np.ones(5), size=7).astype("float32")
    y = rng.integers(0, 5, 7)
    np.testing.assert_allclose(_np(cross_entropy(y, p)), -np.log(p[np.arange(7), y]).mean(), rtol=1e-5)


def test_pair_distance():
    a = np.array([[0.0, 0.0], [3.0, 4.0]], "float32")
    b = np.zeros((2, 2), "float32")
    np.testing.assert_allclose(_np(pair_distance(a, b, eps=0.0)), [0.0, 5.0])
    np.testing.assert_allclose(_np(pair_distance(a, b)), [1e-6, 5.0], rtol=1e-5)


@pytest.mark.parametrize("corr_norm", ["batch", "unchanged"])
def test_correlation_loss_on_unchanged_pairs(corr_norm):
    dist = np.array([1.0, 2.0, 3.0, 4.0], "float32")
    y1 = np.array([0, 1, 2, 3])
    y2 = np.array([0, 2, 2, 1])  # unchanged: pairs 0 and 2
    got = _np(correlation_loss(dist, y1, y2, lambda1=0.1, corr_norm=corr_norm))
    np.testing.assert_allclose(got, 0.1 * 4.0 / (4 if corr_norm == "batch" else 2), rtol=1e-6)
    # no unchanged pair -> 0 (no division by zero)
    assert _np(correlation_loss(dist, y1, (y1 + 1) % 4, corr_norm=corr_norm)) == 0.0
    with pytest.raises(ValueError, match="corr_norm='mean'"):
        correlation_loss(dist, y1, y2, corr_norm="mean")


@pytest.mark.parametrize("corr_norm", ["batch", "unchanged"])
def test_correlation_loss_margin_against_float64_at_training_size(corr_norm):
    """The changed pairs' hinge λ1·max(0, m − dist) at batch 32 (rms distances of 512-wide views,
    3 changed pairs), value and gradient against a float64 reference; margin 0 is the paper's."""
    rng = np.random.default_rng(5)
    a, b = rng.normal(size=(2, 32, 512))
    b[:29] = a[:29] + 0.3 * b[:29]  # unchanged pairs close, changed pairs independent
    dist = (np.sqrt(((a - b) ** 2).sum(1)) / np.sqrt(512)).astype("float32")
    y1 = np.arange(32) % 6
    y2 = y1.copy()
    y2[29:] = (y1[29:] + 1) % 6
    u = (y1 == y2).astype(np.float64)
    d = dist.astype(np.float64)
    margin, lam = 2.0, 0.1
    hinge = np.maximum(0.0, margin - d) * (1 - u)
    if corr_norm == "batch":
        ref = lam * ((d * u).sum() + hinge.sum()) / 32
        ref_grad = lam * (u - (1 - u) * (margin > d)) / 32
    else:
        ref = lam * ((d * u).sum() / u.sum() + hinge.sum() / (1 - u).sum())
        ref_grad = lam * (u / u.sum() - (1 - u) * (margin > d) / (1 - u).sum())
    assert hinge.sum() > 0 and (d[29:] < margin).all()
    value, (grad,) = value_and_grads(
        lambda t: correlation_loss(t, y1, y2, lam, corr_norm, margin=margin), dist)
    np.testing.assert_allclose(_np(value), ref, rtol=1e-6)
    np.testing.assert_allclose(grad, ref_grad, rtol=1e-6, atol=1e-9)
    # margin 0: exactly the unchanged-pairs loss; changed pairs beyond the margin cost nothing
    np.testing.assert_allclose(_np(correlation_loss(dist, y1, y2, lam, corr_norm)),
                               _np(correlation_loss(dist, y1, y2, lam, corr_norm, margin=0.0)))
    far = np.where(u > 0, d, margin + 1.0).astype("float32")
    np.testing.assert_allclose(_np(correlation_loss(far, y1, y2, lam, corr_norm, margin=margin)),
                               _np(correlation_loss(far, y1, y2, lam, corr_norm)), rtol=1e-6)
    with pytest.raises(ValueError, match="margin"):
        correlation_loss(dist, y1, y2, lam, corr_norm, margin=-1.0)


@pytest.mark.parametrize("batch_sum", [None, lambda x: x], ids=["one_batch", "replica_sums"])
def test_view_variance_loss_against_float64_at_training_size(batch_sum):
    """VICReg's variance hinge on the two views at batch 32, 512 view features (d/r of the
    1024-wide default), value and gradients against a float64 reference: collapsed views (one
    pattern for every pair, the failure it is there for) cost about γ per date, spread ones
    nothing. ``replica_sums``: the path tf.distribute takes (Σv, Σ(v − mean)², n summed over the
    replicas by ``batch_sum``), here with one replica."""
    rng = np.random.default_rng(11)
    n, m, gamma, eps = 32, 512, 0.7, 1e-4
    pattern = rng.normal(size=m)
    vx = pattern + 0.05 * rng.normal(size=(n, m))  # date 1 nearly collapsed
    vy = rng.normal(size=(n, m)) * np.where(np.arange(m) < 256, 1.5, 0.5)  # half the features spread

    def ref(v):
        std = np.sqrt(v.var(0) + eps)
        active = std < 1
        grad = -(active / std) * (v - v.mean(0)) / (n * m)
        return np.maximum(0, 1 - std).mean(), grad

    (rx, gx), (ry, gy) = ref(vx), ref(vy)
    value, (got_x, got_y) = value_and_grads(
        lambda a, b: view_variance_loss(a, b, gamma, eps, batch_sum), vx.astype("float32"),
        vy.astype("float32"))
    np.testing.assert_allclose(_np(value), gamma * (rx + ry), rtol=1e-5)
    np.testing.assert_allclose(got_x, gamma * gx, rtol=1e-4, atol=1e-9)
    np.testing.assert_allclose(got_y, gamma * gy, rtol=1e-4, atol=1e-9)
    assert 0.9 * gamma < gamma * rx < gamma  # collapsed: about the full γ
    assert abs(ry - 0.5 * (1 - np.sqrt(0.25 + eps))) < 0.05  # the narrow half only
    spread = rng.normal(size=(n, m)) * 3
    assert _np(view_variance_loss(spread, spread, gamma)) == 0.0


def test_running_covariance_and_penalty():
    rng = np.random.default_rng(1)
    c = rng.normal(size=(3, 3)).astype("float32")
    b = rng.normal(size=(9, 3)).astype("float32")
    ref = 0.9 * c + 0.1 * b.T.astype(np.float64) @ b / 8
    np.testing.assert_allclose(_np(running_covariance(c, b, 0.9)), ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(_np(decorrelation_penalty(ref)), np.abs(ref).sum() - np.abs(np.diag(ref)).sum(), rtol=1e-5)


def test_running_covariance_gradient_only_through_batch_term():
    rng = np.random.default_rng(2)
    c = rng.normal(size=(3, 3)).astype("float32")
    b = rng.normal(size=(9, 3)).astype("float32")
    _, (gc, gb) = value_and_grads(lambda cc, bb: ops.sum(running_covariance(cc, bb, 0.9)), c, b)
    np.testing.assert_array_equal(np.nan_to_num(gc), 0.0)
    # d/dB Σ_jk (0.1 BᵀB/8)_jk = 0.1 * 2/8 * B·1·1ᵀ
    np.testing.assert_allclose(gb, 0.1 * 2 / 8 * b.sum(1, keepdims=True) * np.ones((1, 3)), rtol=1e-5)


@pytest.mark.filterwarnings("ignore:The model does not have any trainable weights")
def test_soft_decorrelation_layer():
    rng = np.random.default_rng(3)
    a = rng.normal(size=(10, 4)).astype("float32")
    b = rng.normal(size=(10, 3)).astype("float32")
    run_layer_test(
        SoftDecorrelation, {"lambda2": 1e-2, "rho": 0.5}, [a, b], (),
        expected_num_trainable_weights=0, expected_num_non_trainable_weights=2,
    )
    layer = SoftDecorrelation(lambda2=1e-2, rho=0.5)
    loss = layer([a, b], training=True)
    c1 = 0.5 * np.eye(4) + 0.5 * a.T.astype(np.float64) @ a / 9
    c2 = 0.5 * np.eye(3) + 0.5 * b.T.astype(np.float64) @ b / 9
    np.testing.assert_allclose(_np(layer.cov_t1), c1, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(_np(layer.cov_t2), c2, rtol=1e-5, atol=1e-6)
    ref = 1e-2 * (decorrelation_penalty(c1) + decorrelation_penalty(c2))
    np.testing.assert_allclose(_np(loss), _np(ref), rtol=1e-5)
    layer([a, b], training=False)
    np.testing.assert_allclose(_np(layer.cov_t1), c1, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="rho=1.0"):
        SoftDecorrelation(rho=1.0)


def test_the_original_decorrelation_start_and_penalty():
    """--decov_init orthogonal / --decov_penalty original: the original's tf.orthogonal_initializer
    start and Σ|C| − Σ diag(C), which differs from Σ_{j≠k}|C_jk| only where the diagonal is
    negative (possible from an orthogonal start, never from the identity)."""
    rng = np.random.default_rng(4)
    c = rng.normal(size=(5, 5))
    np.testing.assert_allclose(_np(decorrelation_penalty(c, "original")),
                               np.abs(c).sum() - np.trace(c), rtol=1e-5)
    psd = c @ c.T
    np.testing.assert_allclose(_np(decorrelation_penalty(psd, "original")),
                               _np(decorrelation_penalty(psd)), rtol=1e-5)
    with pytest.raises(ValueError, match="form='l1'"):
        decorrelation_penalty(c, "l1")

    a = rng.normal(size=(10, 4)).astype("float32")
    b = rng.normal(size=(10, 3)).astype("float32")
    kwargs = {"lambda2": 1e-2, "rho": 0.5, "init": "orthogonal", "penalty": "original", "seed": 7}
    run_layer_test(SoftDecorrelation, kwargs, [a, b], (),
                   expected_num_trainable_weights=0, expected_num_non_trainable_weights=2)
    layer = SoftDecorrelation(**kwargs)
    layer.build([a.shape, b.shape])
    c1, c2 = _np(layer.cov_t1), _np(layer.cov_t2)
    np.testing.assert_allclose(c1 @ c1.T, np.eye(4), atol=1e-5)
    np.testing.assert_allclose(c2 @ c2.T, np.eye(3), atol=1e-5)
    np.testing.assert_array_equal(_np(SoftDecorrelation(**kwargs)([a, b])), _np(layer([a, b])))  # seeded
    loss = layer([a, b], training=True)
    r1 = 0.5 * c1 + 0.5 * a.T.astype(np.float64) @ a / 9
    r2 = 0.5 * c2 + 0.5 * b.T.astype(np.float64) @ b / 9
    ref = 1e-2 * sum(np.abs(r).sum() - np.trace(r) for r in (r1, r2))
    np.testing.assert_allclose(_np(loss), ref, rtol=1e-5)
    with pytest.raises(ValueError, match="init='eye'"):
        SoftDecorrelation(init="eye")


def test_class_weighted_cross_entropy_matches_numpy():
    rng = np.random.default_rng(3)
    p = rng.dirichlet(np.ones(4), size=9).astype("float32")
    y = rng.integers(0, 4, 9)
    w = np.array([0.5, 2.0, 0.0, 1.25], "float32")
    ce = -np.log(p[np.arange(9), y].astype(np.float64))
    ref = (w[y] * ce).sum() / w[y].sum()
    np.testing.assert_allclose(_np(cross_entropy(y, p, w)), ref, rtol=1e-5)
    # equal weights: the plain mean; a batch of weight-0 classes only: 0, not NaN
    np.testing.assert_allclose(_np(cross_entropy(y, p, np.full(4, 3.0))), ce.mean(), rtol=1e-5)
    assert _np(cross_entropy(np.array([2, 2]), p[:2], w)) == 0.0


def _gap_logits(n=32, k=14, gap=100.0, seed=5):
    """Training-size logits (batch 32, 14 classes): a third confidently wrong (another class
    ``gap`` above the label's), a third confidently right (the label ``gap`` above the rest), a
    third ordinary; returns (labels, logits)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    z = rng.normal(scale=3.0, size=(n, k))
    third = n // 3
    wrong = (y[:third] + 1 + rng.integers(0, k - 1, third)) % k
    z[np.arange(third), wrong] = z[np.arange(third), y[:third]] + gap
    z[np.arange(third, 2 * third), y[third:2 * third]] = z[third:2 * third].max(1) + gap
    return y, z.astype("float32")


def _np_ce_from_logits(y, z, w=None):
    """Float64 reference: CE_i = logsumexp(z_i) − z_iy and its gradient (softmax − one-hot) · weights."""
    z = z.astype(np.float64)
    m = z.max(1, keepdims=True)
    lse = m[:, 0] + np.log(np.exp(z - m).sum(1))
    ce = lse - z[np.arange(len(y)), y]
    sw = np.ones(len(y)) if w is None else np.asarray(w, np.float64)[y]
    grad = np.exp(z - lse[:, None])
    grad[np.arange(len(y)), y] -= 1.0
    return (sw * ce).sum() / sw.sum(), grad * (sw / sw.sum())[:, None]


@pytest.mark.parametrize("weighted", [False, True])
def test_cross_entropy_from_logits_with_a_gap_of_100(weighted):
    """issue 22.5: from logits, a confidently wrong pair costs its gap (~100) and keeps its
    gradient (softmax − one-hot), on TF and JAX (test_jax_backend.py runs this again); clipped
    probabilities would give −log 1e-7 ≈ 16.1 and a zero gradient."""
    y, z = _gap_logits()
    w = np.linspace(0.5, 2.0, 14).astype("float32") if weighted else None
    value, (grad,) = value_and_grads(lambda zz: cross_entropy(y, zz, w, from_logits=True), z)
    ref, ref_grad = _np_ce_from_logits(y, z, w)
    assert np.isfinite(value) and np.all(np.isfinite(grad))
    assert ref > 30  # the wrong third alone adds ~100 / 3
    np.testing.assert_allclose(value, ref, rtol=1e-5)
    np.testing.assert_allclose(grad, ref_grad, rtol=1e-4, atol=1e-7)
    # each confidently wrong row keeps its full gradient: −(its share of the mean) on the label
    share = (np.ones(32) if w is None else w[y].astype(np.float64)) / (32 if w is None else w[y].sum())
    np.testing.assert_allclose(grad[np.arange(10), y[:10]], -share[:10], rtol=1e-5)


def test_soft_decorrelation_zero_start():
    """The original SoftDCCANet's covariances start at zeros (tf.zeros_like): the first step's
    covariance is (1 − ρ)·BᵀB/(n − 1), and Σ|C| − Σ diag C equals Σ_{j≠k}|C_jk| from there."""
    rng = np.random.default_rng(6)
    a = rng.normal(size=(32, 6)).astype("float32")
    b = rng.normal(size=(32, 5)).astype("float32")
    layer = SoftDecorrelation(lambda2=1e-3, rho=0.9, init="zeros", penalty="original")
    layer.build([a.shape, b.shape])
    np.testing.assert_array_equal(_np(layer.cov_t1), 0.0)
    loss = layer([a, b], training=True)
    r1 = 0.1 * a.T.astype(np.float64) @ a / 31
    r2 = 0.1 * b.T.astype(np.float64) @ b / 31
    np.testing.assert_allclose(_np(layer.cov_t1), r1, rtol=1e-5, atol=1e-7)
    ref = 1e-3 * sum(np.abs(r).sum() - np.trace(r) for r in (r1, r2))
    np.testing.assert_allclose(_np(loss), ref, rtol=1e-5)
