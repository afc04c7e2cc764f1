"""canonical_correlation and dcca_loss against NumPy (§2.1, §2.2), DCCA gradient against finite
differences. Backend-agnostic: also run under KERAS_BACKEND=jax by test_jax_backend.py."""

import keras
import numpy as np
import pytest
from keras import ops

from model.cca import canonical_correlation, dcca_loss
from tests.model._helpers import (
    correlated_views,
    factor_views,
    np_cca,
    np_dcca_grad,
    value_and_grads,
)


@pytest.mark.parametrize("n,d1,d2", [(64, 4, 4), (50, 6, 3), (6, 10, 10), (2, 3, 3), (40, 300, 120),
                                    (300, 40, 25)])
def test_canonical_correlation_matches_numpy(n, d1, d2):
    h1, h2 = correlated_views(np.random.default_rng(n + d1), n, d1, d2)
    _, ref, _ = np_cca(h1, h2)
    got = float(canonical_correlation(h1, h2))
    np.testing.assert_allclose(got, ref, rtol=2e-5)  # both regimes: n - 1 <= d and n - 1 > d


@pytest.mark.parametrize("n,d", [(8, 64), (40, 6)])
def test_canonical_correlation_with_an_unknown_batch_size(n, d):
    """Inside a traced step the batch dimension may be unknown (TensorFlow): the form is then
    chosen at run time (ops.cond) and gives the same value."""
    if keras.backend.backend() != "tensorflow":
        pytest.skip("unknown static batch sizes are a TensorFlow tracing case")
    import tensorflow as tf

    h1, h2 = correlated_views(np.random.default_rng(n), n, d, d)
    fn = tf.function(canonical_correlation, input_signature=[tf.TensorSpec([None, d])] * 2)
    np.testing.assert_allclose(float(fn(h1, h2)), np_cca(h1, h2)[1], rtol=2e-5)


def test_canonical_correlation_scales_like_the_batch_not_the_width():
    """n < d: the views span the whole centred batch space, so trace(T Tᵀ) ≈ n − 1."""
    rng = np.random.default_rng(5)
    h1, h2 = (rng.normal(size=(16, 1024)).astype("float32") for _ in range(2))
    np.testing.assert_allclose(float(canonical_correlation(h1, h2)), np_cca(h1, h2)[1], rtol=2e-5)
    np.testing.assert_allclose(float(canonical_correlation(h1, h2)), np.sqrt(15), rtol=1e-4)
    one = float(canonical_correlation(h1[:1], h2[:1]))  # a single pair: nothing to correlate
    assert 0 <= one < 1e-5
    with pytest.raises(ValueError, match="ridge r > 0; received r=0"):
        canonical_correlation(h1, h2, r=0)


@pytest.mark.parametrize("n,d1,d2", [(64, 4, 4), (50, 6, 3)])
def test_dcca_loss_matches_numpy(n, d1, d2):
    h1, h2 = correlated_views(np.random.default_rng(n * d2), n, d1, d2)
    _, _, ref = np_cca(h1, h2)
    np.testing.assert_allclose(float(dcca_loss(h1, h2)), ref, rtol=2e-4)
    assert ref < 0


def test_dcca_loss_rank_deficient():
    # n < d: rank(T) <= n - 1 canonical correlations, all close to 1.
    h1, h2 = correlated_views(np.random.default_rng(7), 6, 10, 10)
    _, _, ref = np_cca(h1, h2)
    got = float(dcca_loss(h1, h2))
    np.testing.assert_allclose(ref, -5.0, atol=5e-3)
    # no spurious singular values from the null space of S11, S22 (amplified by 1/sqrt(r))
    np.testing.assert_allclose(got, ref, rtol=1e-5)
    assert got >= -5.0


def test_dcca_loss_float32_for_low_precision_inputs():
    h1, h2 = correlated_views(np.random.default_rng(3), 40, 4, 4)
    out = dcca_loss(ops.cast(h1, "bfloat16"), ops.cast(h2, "bfloat16"))
    assert keras.backend.standardize_dtype(out.dtype) == "float32"
    assert keras.backend.standardize_dtype(canonical_correlation(ops.cast(h1, "float16"), h2).dtype) == "float32"


def test_cca_rejects_bad_shapes():
    with pytest.raises(ValueError, match="same number of rows"):
        dcca_loss(np.zeros((5, 2), "float32"), np.zeros((6, 2), "float32"))
    with pytest.raises(ValueError, match="rank 2"):
        canonical_correlation(np.zeros((5,), "float32"), np.zeros((5, 2), "float32"))


def _fd_grad(f, x, step=1e-5):
    g = np.zeros_like(x, dtype=np.float64)
    it = np.nditer(x, flags=["multi_index"])
    for _ in it:
        i = it.multi_index
        xp, xm = x.astype(np.float64), x.astype(np.float64)
        xp[i] += step
        xm[i] -= step
        g[i] = (f(xp) - f(xm)) / (2 * step)
    return g


@pytest.mark.parametrize("upstream", [1.0, -2.5])
def test_dcca_gradient_matches_finite_differences(upstream):
    # Well-conditioned full-rank case; FD on the float64 NumPy reference.
    h1, h2 = correlated_views(np.random.default_rng(11), 30, 3, 3, noise=1.5)
    value, (g1, g2) = value_and_grads(lambda a, b: upstream * dcca_loss(a, b), h1, h2)
    np.testing.assert_allclose(value, upstream * np_cca(h1, h2)[2], rtol=1e-4)
    fd1 = upstream * _fd_grad(lambda a: np_cca(a, h2)[2], h1)
    fd2 = upstream * _fd_grad(lambda b: np_cca(h1, b)[2], h2)
    # sign and magnitude, elementwise and as a whole
    for g, fd in ((g1, fd1), (g2, fd2)):
        scale = np.abs(fd).max()
        assert scale > 1e-3
        np.testing.assert_allclose(g, fd, atol=2e-3 * scale, rtol=2e-2)
        assert np.sum(g * fd) > 0.99 * np.linalg.norm(g) * np.linalg.norm(fd)


def test_dcca_gradient_descent_increases_correlation():
    h1, h2 = correlated_views(np.random.default_rng(5), 40, 3, 3, noise=2.0)
    loss0, (g1, g2) = value_and_grads(dcca_loss, h1, h2)
    loss1 = float(dcca_loss(h1 - 0.05 * g1, h2 - 0.05 * g2))
    assert loss1 < float(loss0)


def test_non_finite_views_give_nan_instead_of_a_backend_error():
    """A diverged network must surface as a NaN loss (which train_cnn reports), not an eigh crash."""
    rng = np.random.default_rng(0)
    h1 = rng.normal(size=(8, 3)).astype("float32")
    h2 = rng.normal(size=(8, 3)).astype("float32")
    h1[2, 1] = np.nan
    h2[0, 0] = np.inf
    assert np.isnan(float(canonical_correlation(h1, h2)))
    assert np.isnan(float(dcca_loss(h1, h2)))
    ok = rng.normal(size=(8, 3)).astype("float32")
    assert np.isfinite(float(canonical_correlation(ok, ok + 0.1)))


def _directional_fd(f, xs, directions, step=1e-3):
    """Central differences of ``f(*xs)`` along each tuple of directions (float64)."""
    out = []
    for dirs in directions:
        plus = [x + step * v for x, v in zip(xs, dirs, strict=True)]
        minus = [x - step * v for x, v in zip(xs, dirs, strict=True)]
        out.append((f(*plus) - f(*minus)) / (2 * step))
    return np.array(out)


@pytest.mark.parametrize("n,d", [(32, 64), pytest.param(32, 1024, marks=pytest.mark.slow), (64, 16)])
def test_float64_reference_gradient_matches_finite_differences(n, d):
    """The reference the float32 loss is judged by: its closed-form gradient agrees with central
    differences of its own loss along random directions (both views at once)."""
    rng = np.random.default_rng(n + d)
    h1, h2 = (h.astype(np.float64) for h in factor_views(rng, n, d))
    _, g1, g2 = np_dcca_grad(h1, h2)
    directions = [(rng.normal(size=h1.shape), rng.normal(size=h2.shape)) for _ in range(4)]
    fd = _directional_fd(lambda a, b: np_dcca_grad(a, b)[0], (h1, h2), directions)
    analytic = np.array([np.sum(g1 * v1) + np.sum(g2 * v2) for v1, v2 in directions])
    np.testing.assert_allclose(analytic, fd, rtol=1e-3)


def _cosine_and_ratio(got, ref):
    g = np.concatenate([np.ravel(x) for x in got])
    r = np.concatenate([np.ravel(x) for x in ref])
    return float(g @ r / (np.linalg.norm(g) * np.linalg.norm(r))), float(np.linalg.norm(g) / np.linalg.norm(r))


@pytest.mark.parametrize("n,d", [(32, 64), (32, 256), (32, 1024), (64, 16), (300, 40)])
@pytest.mark.parametrize("upstream", [1.0, -2.5])
def test_dcca_loss_and_gradient_match_float64_reference(n, d, upstream):
    """The training regime (batch 32, views up to 1024 wide: n − 1 < d) and n > d: the loss within
    1 %, the gradient with cosine >= 0.99 and norm within 2 % of the float64 reference. The
    d-space float32 form this replaced gave −273 instead of −31 at d = 1024, with cosine 0.003."""
    h1, h2 = factor_views(np.random.default_rng(3 * n + d), n, d)
    ref, r1, r2 = np_dcca_grad(h1, h2)
    value, (g1, g2) = value_and_grads(lambda a, b: upstream * dcca_loss(a, b), h1, h2)
    np.testing.assert_allclose(float(value), upstream * ref, rtol=1e-2)
    cosine, ratio = _cosine_and_ratio((g1, g2), (upstream * r1, upstream * r2))
    assert cosine >= 0.99, cosine
    assert abs(ratio - 1) <= 0.02, ratio
    if n - 1 < d:  # at most n − 1 canonical correlations, each below 1
        assert float(dcca_loss(h1, h2)) >= -(n - 1)


def test_dcca_in_the_training_regime_under_mixed_precision():
    """float16 / bfloat16 views (mixed precision) are computed in float32: the loss and gradient
    match the float64 reference of the same rounded views at batch 32, width 1024. The gradient
    reaching a float16 view is float16; its entries here are ~1e-7, below float16's normal range,
    so float16 training needs the loss scaling Keras applies under ``mixed_float16``
    (LossScaleOptimizer, 2**15 to start): the test scales the loss the same way."""
    h1, h2 = factor_views(np.random.default_rng(8), 32, 1024)
    for dtype, scale in (("float16", 2.0**15), ("bfloat16", 1.0)):
        a, b = ops.cast(h1, dtype), ops.cast(h2, dtype)
        ref, r1, r2 = np_dcca_grad(ops.convert_to_numpy(ops.cast(a, "float32")),
                                   ops.convert_to_numpy(ops.cast(b, "float32")))
        value, grads = value_and_grads(lambda x, y, s=scale: s * dcca_loss(x, y), a, b)
        np.testing.assert_allclose(float(value) / scale, ref, rtol=1e-2)
        cosine, ratio = _cosine_and_ratio([np.asarray(g, np.float32) / scale for g in grads], (r1, r2))
        assert cosine >= 0.99 and abs(ratio - 1) <= 0.02, (dtype, cosine, ratio)


def test_dcca_with_an_unknown_batch_size():
    """Inside a traced training step the batch dimension is unknown (TensorFlow): same loss and
    gradient as with a static batch."""
    if keras.backend.backend() != "tensorflow":
        pytest.skip("unknown static batch sizes are a TensorFlow tracing case")
    import tensorflow as tf

    for n, d in ((32, 1024), (64, 16)):
        h1, h2 = factor_views(np.random.default_rng(d), n, d)

        @tf.function(input_signature=[tf.TensorSpec([None, d])] * 2)
        def step(a, b):
            with tf.GradientTape() as tape:
                tape.watch([a, b])
                loss = dcca_loss(a, b)
            return loss, tape.gradient(loss, [a, b])

        loss, grads = step(h1, h2)
        ref, r1, r2 = np_dcca_grad(h1, h2)
        np.testing.assert_allclose(float(loss), ref, rtol=1e-2)
        cosine, ratio = _cosine_and_ratio([g.numpy() for g in grads], (r1, r2))
        assert cosine >= 0.99 and abs(ratio - 1) <= 0.02, (n, d, cosine, ratio)
