"""CorrFusion (§2.1) against a NumPy re-computation with the layer's own weights; the running
covariance of the decorrelation loss (EMA in training, untouched in inference, updated inside
``fit``). Backend-agnostic: the fit test also runs under KERAS_BACKEND=jax (test_jax_backend.py)."""

import keras
import numpy as np
import pytest
from keras import ops

from model.corrfusion import CorrFusion
from tests._helpers import run_layer_test

BN_EPS = 1e-3  # keras BatchNormalization default
LN_EPS = 1e-3  # keras LayerNormalization default


def _np(v):
    return ops.convert_to_numpy(v).astype(np.float64)


def _randomize(layer, rng):
    """Random weights everywhere (incl. BN gamma/beta/moving stats) so nothing is trivial."""
    for sub in (layer.squeeze_t1, layer.squeeze_t2, layer.excite_t1, layer.excite_t2):
        sub.kernel.assign(rng.normal(scale=0.3, size=sub.kernel.shape).astype("float32"))
        sub.bias.assign(rng.normal(scale=0.1, size=sub.bias.shape).astype("float32"))
    for bn in (layer.bn_t1, layer.bn_t2):
        m = bn.gamma.shape[0]
        bn.gamma.assign(rng.uniform(0.5, 1.5, m).astype("float32"))
        bn.beta.assign(rng.normal(scale=0.1, size=m).astype("float32"))
        bn.moving_mean.assign(rng.normal(scale=0.2, size=m).astype("float32"))
        bn.moving_variance.assign(rng.uniform(0.5, 2.0, m).astype("float32"))


def np_corrfusion(layer, x, y, training, eps=1e-12):
    """NumPy §2.1 steps 1-6 with the layer's weights (its ``distance`` and ``frozen_bn``); returns
    x_phi, y_phi, dist, x_bn, y_bn."""
    training = training and not layer.frozen_bn

    def dense(sub, v, relu=True):
        out = v @ _np(sub.kernel) + _np(sub.bias)
        return np.maximum(out, 0.0) if relu else out

    def bn(b, v):
        if layer.views == "pair":  # LayerNorm over the features, no scale/offset
            return (v - v.mean(1, keepdims=True)) / np.sqrt(v.var(1, keepdims=True) + LN_EPS)
        if training:
            mean, var = v.mean(0), v.var(0)
        else:
            mean, var = _np(b.moving_mean), _np(b.moving_variance)
        out = (v - mean) / np.sqrt(var + BN_EPS)
        return out if layer.views == "batch" else out * _np(b.gamma) + _np(b.beta)

    relu = layer.views == "paper"
    x_bn = bn(layer.bn_t1, dense(layer.squeeze_t1, x, relu))
    y_bn = bn(layer.bn_t2, dense(layer.squeeze_t2, y, relu))
    x_re, y_re = dense(layer.excite_t1, x_bn), dense(layer.excite_t2, y_bn)
    dist = np.sqrt(((x_bn - y_bn) ** 2).sum(-1) + eps)
    if layer.distance == "rms":
        dist = dist / np.sqrt(x_bn.shape[1])
    w = (1 - np.tanh(dist))[:, None]
    return x + w * y_re, y + w * x_re, dist, x_bn, y_bn


def _data(rng, n=12, d=8):
    return rng.normal(size=(n, d)).astype("float32"), rng.normal(size=(n, d)).astype("float32")


def test_layer_contract():
    x, y = _data(np.random.default_rng(0))
    run_layer_test(
        CorrFusion,
        {"reduction": 2, "lambda2": 1e-3, "rho": 0.8, "epsilon": 1e-12, "return_views": False},
        [x, y],
        [(12, 8), (12, 8), (12,)],
        expected_num_trainable_weights=12,  # 4 dense (kernel, bias) + 2 BN (gamma, beta)
        expected_num_non_trainable_weights=6,  # 2 BN (mean, var) + cov_t1, cov_t2
    )
    run_layer_test(
        CorrFusion, {"reduction": 4, "return_views": True}, [x, y],
        [(12, 8), (12, 8), (12,), (12, 2), (12, 2)], run_training_check=False,
    )


def test_layer_contract_of_the_fusion_variants():
    x, y = _data(np.random.default_rng(0))
    for kwargs in ({"distance": "rms"}, {"distance": "rms", "frozen_bn": True}):
        run_layer_test(
            CorrFusion, {"reduction": 2, "lambda2": 1e-3, **kwargs}, [x, y],
            [(12, 8), (12, 8), (12,)],
            expected_num_trainable_weights=12, expected_num_non_trainable_weights=6,
        )
    # views without BN scale/offset: 4 dense (kernel, bias); batch keeps BN's moving statistics
    for views, non_trainable in (("batch", 6), ("pair", 2)):
        run_layer_test(
            CorrFusion, {"reduction": 2, "lambda2": 1e-3, "distance": "rms", "views": views,
                         "tied_start": True}, [x, y], [(12, 8), (12, 8), (12,)],
            expected_num_trainable_weights=8, expected_num_non_trainable_weights=non_trainable,
        )
    assert CorrFusion(distance="rms").get_config()["distance"] == "rms"
    assert CorrFusion().get_config()["distance"] == "euclidean"  # the paper's by default


def _randomize_wide(layer, rng):
    """Weights of a training-sized layer (d = 1024): kernels ~ N(0, 1/fan_in), random BN state."""
    for sub in (layer.squeeze_t1, layer.squeeze_t2, layer.excite_t1, layer.excite_t2):
        fan_in = sub.kernel.shape[0]
        sub.kernel.assign(rng.normal(scale=fan_in ** -0.5, size=sub.kernel.shape).astype("float32"))
        sub.bias.assign(rng.normal(scale=0.1, size=sub.bias.shape).astype("float32"))
    for bn in (layer.bn_t1, layer.bn_t2):
        if layer.views == "pair":
            continue  # LayerNorm without scale/offset: no weights
        m = bn.moving_mean.shape[0]
        if layer.views == "paper":
            bn.gamma.assign(rng.uniform(0.5, 1.5, m).astype("float32"))
            bn.beta.assign(rng.normal(scale=0.1, size=m).astype("float32"))
        bn.moving_mean.assign(rng.uniform(0.0, 0.5, m).astype("float32"))
        bn.moving_variance.assign(rng.uniform(0.05, 0.5, m).astype("float32"))


@pytest.mark.parametrize("distance,views", [("euclidean", "paper"), ("rms", "paper"),
                                            ("rms", "batch"), ("rms", "pair")])
@pytest.mark.parametrize("frozen_bn,training", [(False, True), (False, False), (True, True)])
def test_fusion_variants_match_float64_at_training_size(distance, views, frozen_bn, training):
    """Batch 32, d = 1024, r = 2 (512 squeezed features): distance, w and the fused features
    against a float64 NumPy reference, for the paper's distance and the RMS one, with batch
    statistics and with the module's BN frozen (training mode then uses the layer's moving
    statistics, never the batch's)."""
    rng = np.random.default_rng(5)
    x = np.abs(rng.normal(size=(32, 1024))).astype("float32")
    y = (0.9 * x + 0.45 * np.abs(rng.normal(size=(32, 1024)))).astype("float32")
    layer = CorrFusion(reduction=2, lambda2=0.0, return_views=True, distance=distance,
                       frozen_bn=frozen_bn, views=views)
    layer.build([x.shape, y.shape])
    _randomize_wide(layer, rng)
    # date 2's weights close to date 1's: the distances lie where tanh is not saturated
    pairs = [("squeeze_t1", "squeeze_t2")] + ([("bn_t1", "bn_t2")] if views != "pair" else [])
    for a, b in pairs:
        getattr(layer, b).set_weights([w + rng.normal(scale=0.01, size=w.shape).astype("float32")
                                       for w in getattr(layer, a).get_weights()])
    got = [_np(v) for v in layer([x, y], training=training)]
    ref = np_corrfusion(layer, x.astype(np.float64), y.astype(np.float64), training)
    for g, r, name in zip(got, ref, ("x_phi", "y_phi", "dist", "x_bn", "y_bn"), strict=True):
        np.testing.assert_allclose(g, r, rtol=2e-4, atol=2e-4, err_msg=name)
    if distance == "rms":
        assert 0.02 < (1 - np.tanh(ref[2])).mean() < 0.98  # a weight, neither 0 nor 1
        np.testing.assert_allclose(
            got[2], np.sqrt(((ref[3] - ref[4]) ** 2).mean(-1)), rtol=1e-4)  # the RMS difference


def test_pair_views_give_a_correlation_distance_independent_of_the_batch():
    """views="pair" at batch 32, d = 1024: dist = √(2(1 − r)) with r the Pearson correlation of
    the pair's two squeezed vectors (float64 reference), identical in training and inference
    mode and for a pair alone or in a batch (no batch statistics)."""
    rng = np.random.default_rng(7)
    x = rng.normal(size=(32, 1024)).astype("float32")
    y = (0.8 * x + 0.6 * rng.normal(size=(32, 1024))).astype("float32")
    y[16:] = rng.normal(size=(16, 1024))  # half the pairs unrelated
    layer = CorrFusion(reduction=2, lambda2=0.0, return_views=True, distance="rms", views="pair")
    layer.build([x.shape, y.shape])
    fx = x.astype(np.float64) @ _np(layer.squeeze_t1.kernel) + _np(layer.squeeze_t1.bias)
    fy = y.astype(np.float64) @ _np(layer.squeeze_t2.kernel) + _np(layer.squeeze_t2.bias)
    r = np.array([np.corrcoef(a, b)[0, 1] for a, b in zip(fx, fy, strict=True)])
    dist_train = _np(layer([x, y], training=True)[2])
    dist_infer = _np(layer([x, y], training=False)[2])
    np.testing.assert_allclose(dist_train, np.sqrt(2 * (1 - r)), rtol=2e-3, atol=2e-4)
    np.testing.assert_array_equal(dist_train, dist_infer)
    np.testing.assert_allclose(_np(layer([x[:1], y[:1]], training=True)[2]), dist_train[:1],
                               rtol=1e-5)
    assert layer.bn_t1.name == "ln_t1" and not layer.bn_t1.weights  # no scale, offset or stats


def test_tied_start_copies_date_one_and_trains_apart():
    """tied_start: date 2's squeeze and excite start equal to date 1's (so identical inputs give
    w = 1 with every view), separate variables that move apart under different gradients."""
    rng = np.random.default_rng(8)
    x = rng.normal(size=(32, 64)).astype("float32")
    for views in ("paper", "batch", "pair"):
        layer = CorrFusion(reduction=2, lambda2=0.0, views=views, distance="rms", tied_start=True)
        layer.build([x.shape, x.shape])
        for a, b in ((layer.squeeze_t1, layer.squeeze_t2), (layer.excite_t1, layer.excite_t2)):
            np.testing.assert_array_equal(_np(a.kernel), _np(b.kernel))
            assert a.kernel is not b.kernel
        w = 1 - np.tanh(_np(layer([x, x], training=True)[2]))
        np.testing.assert_allclose(w, 1.0, atol=1e-5)
        untied = CorrFusion(reduction=2, lambda2=0.0, views=views, distance="rms")
        untied.build([x.shape, x.shape])
        assert np.abs(_np(untied.squeeze_t1.kernel) - _np(untied.squeeze_t2.kernel)).max() > 0.01
    layer.squeeze_t2.kernel.assign(layer.squeeze_t2.kernel + 1.0)
    assert not np.allclose(_np(layer.squeeze_t1.kernel), _np(layer.squeeze_t2.kernel))
    cfg = layer.get_config()
    assert cfg["views"] == "pair" and cfg["tied_start"] is True
    assert CorrFusion.from_config(cfg).get_config() == cfg


def test_rms_distance_does_not_grow_with_the_width():
    """With batch-statistics BN the Euclidean distance of views that agree to a correlation ρ
    grows like √(2·m·(1 − ρ)) with the width m = d/r; the RMS distance stays near √(2(1 − ρ))."""
    rng = np.random.default_rng(3)
    out = {}
    for d in (64, 1024):
        x = rng.normal(size=(32, d)).astype("float32")
        y = (0.95 * x + np.sqrt(1 - 0.95 ** 2) * rng.normal(size=(32, d))).astype("float32")
        for distance in ("euclidean", "rms"):
            layer = CorrFusion(reduction=1, lambda2=0.0, distance=distance)
            layer.build([x.shape, y.shape])
            eye = np.eye(d, dtype="float32")
            for sub in (layer.squeeze_t1, layer.squeeze_t2):  # identity squeeze: ReLU(x)
                sub.kernel.assign(eye)
            out[d, distance] = float(_np(layer([x, y], training=True)[2]).mean())
    assert out[1024, "euclidean"] / out[64, "euclidean"] == pytest.approx(4.0, rel=0.1)
    assert out[1024, "rms"] == pytest.approx(out[64, "rms"], rel=0.1)
    assert 1 - np.tanh(out[1024, "euclidean"]) < 1e-6 < 0.3 < 1 - np.tanh(out[1024, "rms"])


def test_sublayer_names_and_covariance_weights():
    layer = CorrFusion(reduction=2)
    layer.build([(None, 8), (None, 8)])
    for name in ("squeeze_t1", "squeeze_t2", "bn_t1", "bn_t2", "excite_t1", "excite_t2"):
        assert getattr(layer, name).name == name
    assert layer.squeeze_t1.units == 4 and layer.excite_t2.units == 8
    assert tuple(layer.cov_t1.shape) == (4, 4) and not layer.cov_t1.trainable
    np.testing.assert_array_equal(_np(layer.cov_t2), np.eye(4))


def test_rejects_bad_arguments_and_shapes():
    with pytest.raises(ValueError, match="reduction=0"):
        CorrFusion(reduction=0)
    with pytest.raises(ValueError, match="rho=1.5"):
        CorrFusion(rho=1.5)
    with pytest.raises(ValueError, match="distance='cosine'"):
        CorrFusion(distance="cosine")
    with pytest.raises(ValueError, match="views='layer'"):
        CorrFusion(views="layer")
    with pytest.raises(ValueError, match=r"x=\(None, 8\), y=\(None, 6\)"):
        CorrFusion().build([(None, 8), (None, 6)])
    with pytest.raises(ValueError, match="d=9 is not divisible by reduction=2"):
        CorrFusion(reduction=2).build([(None, 9), (None, 9)])


@pytest.mark.parametrize("training", [True, False])
def test_forward_matches_numpy(training):
    rng = np.random.default_rng(1)
    x, y = _data(rng)
    layer = CorrFusion(reduction=2, return_views=True)
    layer.build([x.shape, y.shape])
    _randomize(layer, rng)
    got = layer([x, y], training=training)
    ref = np_corrfusion(layer, x.astype(np.float64), y.astype(np.float64), training)
    for g, r, name in zip(got, ref, ("x_phi", "y_phi", "dist", "x_bn", "y_bn"), strict=False):
        np.testing.assert_allclose(_np(g), r, rtol=1e-4, atol=1e-4, err_msg=name)
    assert keras.backend.standardize_dtype(got[2].dtype) == "float32"


def test_identical_inputs_and_weights_give_unit_fusion_weight():
    rng = np.random.default_rng(2)
    x, _ = _data(rng)
    layer = CorrFusion(reduction=2)
    layer.build([x.shape, x.shape])
    _randomize(layer, rng)
    for a, b in (("squeeze_t1", "squeeze_t2"), ("bn_t1", "bn_t2"), ("excite_t1", "excite_t2")):
        getattr(layer, b).set_weights(getattr(layer, a).get_weights())
    x_phi, y_phi, dist = layer([x, x], training=False)
    w = 1 - np.tanh(_np(dist))
    np.testing.assert_allclose(w, 1.0, atol=1e-5)
    np.testing.assert_allclose(_np(x_phi), _np(y_phi), atol=1e-6)
    # X_phi = X + 1 * X_re
    ref = np_corrfusion(layer, x.astype(np.float64), x.astype(np.float64), False)
    np.testing.assert_allclose(_np(x_phi), ref[0], rtol=1e-4, atol=1e-4)
    # and a very different pair gets a small weight
    _, _, dist2 = layer([x, x + 5.0 * rng.normal(size=x.shape).astype("float32")], training=False)
    assert np.mean(1 - np.tanh(_np(dist2))) < 0.3


def _np_ema(layer, batches, rho):
    c1, c2 = np.eye(layer.cov_t1.shape[0]), np.eye(layer.cov_t2.shape[0])
    for x, y in batches:
        *_, xb, yb = np_corrfusion(layer, x.astype(np.float64), y.astype(np.float64), True)
        n = x.shape[0]
        c1 = rho * c1 + (1 - rho) * xb.T @ xb / (n - 1)
        c2 = rho * c2 + (1 - rho) * yb.T @ yb / (n - 1)
    return c1, c2


def _offdiag(c):
    return np.abs(c).sum() - np.abs(np.diag(c)).sum()


def test_running_covariance_is_the_ema_of_batch_covariances():
    rng = np.random.default_rng(3)
    rho, lam = 0.7, 1e-2
    batches = [_data(rng) for _ in range(4)]
    layer = CorrFusion(reduction=2, rho=rho, lambda2=lam)
    layer.build([(None, 8), (None, 8)])
    _randomize(layer, rng)
    for k, (x, y) in enumerate(batches, start=1):
        layer([x, y], training=True)
        c1, c2 = _np_ema(layer, batches[:k], rho)
        np.testing.assert_allclose(_np(layer.cov_t1), c1, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(_np(layer.cov_t2), c2, rtol=1e-4, atol=1e-5)
        # the decorrelation loss reads the updated covariances
        np.testing.assert_allclose(_np(layer.losses[0]), lam * (_offdiag(c1) + _offdiag(c2)), rtol=1e-4)
    assert not np.allclose(_np(layer.cov_t1), np.eye(4))


@pytest.mark.parametrize("training", [False, None])
def test_inference_leaves_covariance_untouched(training):
    rng = np.random.default_rng(4)
    layer = CorrFusion(reduction=2)
    x, y = _data(rng)
    layer([x, y], training=True)
    before = _np(layer.cov_t1), _np(layer.cov_t2)
    layer([x + 1.0, y - 1.0], training=training)
    np.testing.assert_array_equal(_np(layer.cov_t1), before[0])
    np.testing.assert_array_equal(_np(layer.cov_t2), before[1])


class FitModel(keras.Model):
    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        return ops.mean(ops.square(y_pred[0])) + ops.mean(ops.square(y_pred[1])) + ops.sum(ops.stack(self.losses))


def test_covariance_updates_inside_fit():
    """Within ``fit`` (tf.function on TF, stateless jit on JAX) the state really moves: with a zero
    learning rate the weights stay fixed, so the result must equal the NumPy EMA."""
    rng = np.random.default_rng(5)
    rho = 0.8
    batches = [_data(rng, n=6) for _ in range(3)]
    x = np.concatenate([b[0] for b in batches])
    y = np.concatenate([b[1] for b in batches])
    inputs = [keras.Input((8,)), keras.Input((8,))]
    layer = CorrFusion(reduction=2, rho=rho, lambda2=1e-3)
    model = FitModel(inputs, layer(inputs))
    _randomize(layer, rng)
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=0.0))
    model.fit([x, y], None, batch_size=6, epochs=1, shuffle=False, verbose=0)
    c1, c2 = _np_ema(layer, batches, rho)
    np.testing.assert_allclose(_np(layer.cov_t1), c1, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(_np(layer.cov_t2), c2, rtol=1e-4, atol=1e-5)
    before = _np(layer.cov_t1)
    model.evaluate([x, y], None, batch_size=6, verbose=0)
    model.predict([x, y], batch_size=6, verbose=0)
    np.testing.assert_array_equal(_np(layer.cov_t1), before)
