"""canonical_correlation and dcca_loss against NumPy (§2.1, §2.2), DCCA gradient against finite
differences. Backend-agnostic: also run under KERAS_BACKEND=jax by test_jax_backend.py."""

import keras
import numpy as np
import pytest
from keras import ops

from model.cca import canonical_correlation, dcca_loss
from tests.model._helpers import correlated_views, np_cca, value_and_grads


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
    # float32 leaves ~1e-3 singular values in the null space (amplified by S^{-1/2} ~ 1/sqrt(r))
    np.testing.assert_allclose(got, ref, rtol=2e-3)
    assert np.isfinite(got)


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
