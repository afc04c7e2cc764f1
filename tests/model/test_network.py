"""build_model: every backbone x method builds and trains a step; losses/metrics in fit and
evaluate against NumPy; saving/loading; mixed precision. Tiny images and batches throughout."""

import dataclasses

import keras
import numpy as np
import pytest
from keras import ops

from model import BACKBONES, METHODS, CorrFusionNet, ModelConfig, build_model, load_model
from model.cca import canonical_correlation
from tests.model._helpers import np_cca

K = 4
LOSS_KEYS = {
    "corrfusion": {"corr_loss", "decov_loss"},
    "baseline": set(),
    "dcca": {"dcca_loss"},
    "sdcca": {"corr_loss", "decov_loss"},
}
VIEW_METHODS = {"corrfusion", "dcca", "sdcca"}


def _data(n=8, size=16, channels=3, seed=0):
    rng = np.random.default_rng(seed)
    x1 = rng.uniform(-0.5, 0.5, (n, size, size, channels)).astype("float32")
    x2 = rng.uniform(-0.5, 0.5, (n, size, size, channels)).astype("float32")
    y1 = rng.integers(0, K, n).astype("int32")
    y2 = y1.copy()
    y2[: n // 4] = (y2[: n // 4] + 1) % K
    return (x1, x2), (y1, y2)


def _small(method="corrfusion", **kw):
    kw = {"image_size": (16, 16), "hidden": 16, "seed": 1, **kw}
    return build_model(K, backbone="small", method=method, **kw)


def _expected_logs(method):
    keys = {"loss", "ce_t1", "ce_t2", "l2", "oa_t1", "oa_t2", "oa_bi", "oa_tr"} | LOSS_KEYS[method]
    if method in VIEW_METHODS:
        keys.add("cancorr")
    return keys


def test_tables():
    assert set(METHODS) == {"corrfusion", "baseline", "dcca", "sdcca"}
    assert "small" in BACKBONES and "vgg16" in BACKBONES


@pytest.mark.parametrize("method", sorted(METHODS))
def test_small_backbone_every_method_forward_and_train_step(method):
    x, y = _data()
    model = _small(method)
    out = model(x, training=False)
    assert out["prob_t1"].shape == (8, K) and out["prob_t2"].shape == (8, K)
    np.testing.assert_allclose(ops.convert_to_numpy(ops.sum(out["prob_t1"], -1)), 1.0, rtol=1e-5)
    if method == "corrfusion":
        assert out["dist"].shape == (8,) and out["fusion_weight"].shape == (8,)
        np.testing.assert_allclose(
            ops.convert_to_numpy(out["fusion_weight"]),
            1 - np.tanh(ops.convert_to_numpy(out["dist"])), rtol=1e-5,
        )
        assert out["view_t1"].shape == (8, 8)
    if method in ("dcca", "sdcca"):
        assert out["view_t1"].shape == (8, 16)
    model.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9, nesterov=True))
    before = [ops.convert_to_numpy(w) for w in model.trainable_weights]
    logs = model.train_on_batch(x, y, return_dict=True)
    assert set(logs) == _expected_logs(method)
    assert all(np.isfinite(v) for v in logs.values())
    after = [ops.convert_to_numpy(w) for w in model.trainable_weights]
    # every trainable weight receives a gradient (heads, FCs, fusion, backbone)
    moved = [not np.array_equal(a, b) for a, b in zip(before, after, strict=False)]
    assert all(moved), [w.path for w, m in zip(model.trainable_weights, moved, strict=False) if not m]


@pytest.mark.slow  # end to end: many seconds on a CPU
@pytest.mark.parametrize(
    "backbone,size",
    [("vgg16", 32), ("vgg19", 32), ("resnet50", 32), ("inceptionv3", 75), ("densenet121", 32)],
)
def test_big_backbones_forward_backward(backbone, size):
    x, y = _data(n=2, size=size)
    model = build_model(K, image_size=(size, size), backbone=backbone, hidden=8)
    model.compile(optimizer=keras.optimizers.SGD(0.01), run_eagerly=True)
    logs = model.train_on_batch(x, y, return_dict=True)
    assert np.isfinite(logs["loss"])
    out = model(x, training=False)
    assert out["prob_t2"].shape == (2, K)


def test_separate_backbones_per_date():
    model = _small(shared=False)
    assert model.backbone_t1 is not model.backbone_t2
    assert not hasattr(model, "backbone")
    n_shared = _small().count_params()
    assert model.count_params() > n_shared
    x, y = _data()
    model.compile(optimizer="sgd")
    assert np.isfinite(model.train_on_batch(x, y, return_dict=True)["loss"])


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
@pytest.mark.parametrize("training", [False, True])
def test_integer_images_scaled_in_the_graph(dtype, training):
    """--input_norm dtype: uint8/uint16 batches (as the loader leaves them) give the float32
    batch's outputs exactly (tests/model/test_normalization.py: the other modes)."""
    from data.shards import scale_images

    model = _small(input_norm="dtype")
    rng = np.random.default_rng(4)
    raw = tuple(rng.integers(0, int(np.iinfo(dtype).max) + 1, (6, 16, 16, 3)).astype(dtype)
                for _ in range(2))
    a = model(raw, training=training)
    b = model(tuple(scale_images(x) for x in raw), training=training)
    for key in set(a) - {"decov_loss"}:  # decov_loss reads the running covariance, moved by a
        np.testing.assert_array_equal(ops.convert_to_numpy(a[key]), ops.convert_to_numpy(b[key]))
    if training:  # a training step on the integer batch, once per dtype
        y = _data(n=6)[1]
        model.compile(optimizer="sgd")
        assert np.isfinite(model.train_on_batch(raw, y, return_dict=True)["loss"])


def test_one_backbone_pass_only_without_batch_statistics():
    """VGG (no BN) runs both dates as one batch -- same numbers as two passes, also in training;
    a BN backbone or separate backbones keep one pass per date (per-date batch statistics)."""
    assert not _small().one_pass and not _small(shared=False).one_pass
    model = build_model(K, image_size=(32, 32), backbone="vgg16", hidden=8, seed=0)
    assert model.one_pass
    x, _ = _data(n=3, size=32)
    for training in (False, True):
        one = model(x, training=training)
        model.one_pass = False
        two = model(x, training=training)
        model.one_pass = True
        for key in one:
            np.testing.assert_allclose(ops.convert_to_numpy(one[key]), ops.convert_to_numpy(two[key]),
                                       rtol=1e-5, atol=1e-6)


def test_bad_arguments():
    with pytest.raises(ValueError, match="Unknown method 'cca'"):
        _small("cca")
    with pytest.raises(ValueError, match=r"'inceptionv3' needs images of at least 75x75"):
        build_model(K, image_size=(64, 64), backbone="inceptionv3")
    with pytest.raises(ValueError, match="hidden=15, reduction=2"):
        _small(hidden=15)
    with pytest.raises(ValueError, match="corr_norm='sum'"):
        _small(corr_norm="sum")
    with pytest.raises(ValueError, match="fusion_bn='frozen' has no effect with fusion_views='pair'"):
        _small(fusion_bn="frozen")  # the default views have no BN
    with pytest.raises(ValueError, match="change_margin"):
        _small(change_margin=-1.0)
    model = _small()
    with pytest.raises(ValueError, match="labels"):
        model.compute_loss(None, np.zeros(4), model(_data(n=4)[0]))


@pytest.mark.slow  # end to end: many seconds on a CPU
def test_small_model_loss_goes_down():
    x, y = _data(n=16, seed=3)
    model = _small("corrfusion")
    model.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9, nesterov=True))
    history = model.fit(x, y, batch_size=16, epochs=8, shuffle=False, verbose=0)
    losses = history.history["loss"]
    assert losses[-1] < 0.8 * losses[0], losses
    assert set(history.history) == _expected_logs("corrfusion")


@pytest.mark.parametrize("method", ["corrfusion", "dcca"])
def test_evaluate_matches_numpy_and_metrics_reset(method):
    model = _small(method, corr_norm="unchanged")
    model.compile(optimizer="sgd")
    xa, ya = _data(n=8, seed=4)
    xb, yb = _data(n=8, seed=5)
    model.evaluate(xa, ya, batch_size=8, verbose=0)  # state from A must not leak into B
    logs = model.evaluate(xb, yb, batch_size=8, verbose=0, return_dict=True)
    out = model.predict(xb, batch_size=8, verbose=0)
    y1, y2 = yb
    p1, p2 = out["prob_t1"].argmax(-1), out["prob_t2"].argmax(-1)
    np.testing.assert_allclose(logs["oa_t1"], np.mean(p1 == y1), atol=1e-6)
    np.testing.assert_allclose(logs["oa_t2"], np.mean(p2 == y2), atol=1e-6)
    np.testing.assert_allclose(logs["oa_bi"], np.mean((p1 != p2) == (y1 != y2)), atol=1e-6)
    np.testing.assert_allclose(logs["oa_tr"], np.mean((p1 == y1) & (p2 == y2)), atol=1e-6)
    ce1 = -np.log(out["prob_t1"][np.arange(8), y1]).mean()
    np.testing.assert_allclose(logs["ce_t1"], ce1, rtol=1e-4)
    _, cancorr, dcca = np_cca(out["view_t1"], out["view_t2"])
    np.testing.assert_allclose(logs["cancorr"], cancorr, rtol=1e-3)
    l2 = sum(  # the original's convention: l2·Σw²/2
        0.5 * 1e-4 * float(np.sum(ops.convert_to_numpy(getattr(model, f"fc{i}_{t}").kernel) ** 2))
        for i in (1, 2) for t in ("t1", "t2")
    )
    np.testing.assert_allclose(logs["l2"], l2, rtol=1e-4)
    if method == "corrfusion":
        u = y1 == y2
        # the default RMS distance: the loss sums the Euclidean one, √(d/r) = √8 times larger
        assert model.config.fusion_distance == "rms"
        euclid = np.sqrt(((out["view_t1"] - out["view_t2"]) ** 2).sum(1) + 1e-12)
        np.testing.assert_allclose(euclid, out["dist"] * np.sqrt(8), rtol=1e-4)
        # + the default variance term on the views (γ = 1): γ·Σ_dates mean_j max(0, 1 − std_j)
        assert model.config.view_variance == 1.0
        spread = sum(np.maximum(0.0, 1 - np.sqrt(v.astype(np.float64).var(0) + 1e-4)).mean()
                     for v in (out["view_t1"], out["view_t2"]))
        np.testing.assert_allclose(logs["corr_loss"], 0.1 * euclid[u].sum() / u.sum() + spread,
                                   rtol=1e-4)
        covs = [ops.convert_to_numpy(model.decorrelation.cov_t1), ops.convert_to_numpy(model.decorrelation.cov_t2)]
        assert logs["decov_loss"] > 0 and all(np.allclose(c, np.eye(8)) for c in covs)  # untouched
        total = logs["ce_t1"] + logs["ce_t2"] + logs["corr_loss"] + logs["decov_loss"] + logs["l2"]
    else:
        np.testing.assert_allclose(logs["dcca_loss"], dcca, rtol=2e-3, atol=2e-3)
        total = logs["ce_t1"] + logs["ce_t2"] + logs["dcca_loss"] + logs["l2"]
    np.testing.assert_allclose(logs["loss"], total, rtol=1e-4, atol=1e-5)


@pytest.mark.slow  # end to end: many seconds on a CPU
@pytest.mark.parametrize("method", ["corrfusion", "sdcca"])
def test_save_load_identical_predictions_and_state(tmp_path, method):
    x, y = _data(n=8, seed=6)
    model = _small(method)
    model.compile(optimizer=keras.optimizers.SGD(0.01))
    model.fit(x, y, batch_size=4, epochs=1, verbose=0)
    state = model.decorrelation  # one SoftDecorrelation layer for both methods
    cov = ops.convert_to_numpy(state.cov_t1)
    assert not np.allclose(cov, np.eye(cov.shape[0]))  # the running covariance moved
    path = str(tmp_path / "m.keras")
    model.save(path)
    loaded = load_model(path)
    assert isinstance(loaded, CorrFusionNet)
    saved = model.get_config()
    assert loaded.get_config() == {**saved, "config": {**saved["config"], "weights": None}}
    state2 = loaded.decorrelation
    np.testing.assert_array_equal(ops.convert_to_numpy(state2.cov_t1), cov)
    np.testing.assert_array_equal(ops.convert_to_numpy(state2.cov_t2), ops.convert_to_numpy(state.cov_t2))
    p, q = model.predict(x, verbose=0), loaded.predict(x, verbose=0)
    assert set(p) == set(q)
    for k in p:
        np.testing.assert_allclose(p[k], q[k], rtol=1e-6, atol=1e-6, err_msg=k)
    # and the loaded model keeps training
    loaded.compile(optimizer=keras.optimizers.SGD(0.01))
    assert np.isfinite(loaded.train_on_batch(x, y, return_dict=True)["loss"])


@pytest.mark.parametrize("method", ["corrfusion", "dcca"])
def test_mixed_precision(method):
    policy = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        model = _small(method)
        x, y = _data(n=8)
        out = model(x, training=False)
        assert keras.backend.standardize_dtype(out["prob_t1"].dtype) == "float32"
        assert keras.backend.standardize_dtype(model.fc1_t1.compute_dtype) == "bfloat16"
        model.compile(optimizer=keras.optimizers.SGD(0.01))
        logs = model.train_on_batch(x, y, return_dict=True)
        assert all(np.isfinite(v) for v in logs.values())
        assert np.isfinite(float(canonical_correlation(out["view_t1"], out["view_t2"])))
    finally:
        keras.config.set_dtype_policy(policy)


def test_active_backend_is_the_requested_one():
    import os

    assert keras.backend.backend() == os.environ.get("KERAS_BACKEND", "tensorflow")


def test_imagenet_input_mapping_inside_the_model():
    # weights=None -> no mapping; pretrained weights (or input_mapping=True) -> mapping in front
    assert not _small().config.input_mapping
    model = CorrFusionNet(ModelConfig(K, image_size=(32, 32), backbone="vgg16", hidden=8, input_mapping=True))
    assert model.mapping.mode == "caffe"
    x = _data(n=2, size=32)[0]
    feats = model.backbone(model.mapping(x[0]))
    np.testing.assert_allclose(
        ops.convert_to_numpy(feats),
        ops.convert_to_numpy(model.backbone(keras.applications.vgg16.preprocess_input(255.0 * (x[0] + 0.5)))),
        rtol=1e-4, atol=1e-4,
    )
    assert CorrFusionNet.from_config(model.get_config()).config.input_mapping


def _bn_layers(model):
    """Every BatchNormalization layer of the model (backbones, CorrFusion, views)."""
    out = []
    stack = [model]
    while stack:
        layer = stack.pop()
        if isinstance(layer, keras.layers.BatchNormalization):
            out.append(layer)
        stack.extend(getattr(layer, "_layers", []) or [])
        if hasattr(layer, "layers") and layer is not model:
            stack.extend(layer.layers)
    return list({id(b): b for b in out}.values())


@pytest.mark.parametrize("method", ["corrfusion", "sdcca"])
def test_the_original_codes_options(method):
    """--preset original's model options: two backbones, flatten, frozen BN (moving statistics stay
    0 / 1, γ and β still train), orthogonal covariance start with the original's penalty,
    Glorot-uniform squeeze/excite kernels, L2 as l2·Σw²/2."""
    x, y = _data()
    model = _small(method, shared=False, bn="frozen", pooling="flatten", decov_init="orthogonal",
                   decov_penalty="original", fusion_init="glorot_uniform", fusion_bn="frozen",
                   fusion_views="paper")
    assert isinstance(model.pool, keras.layers.Flatten)
    assert model.backbone_t1 is not model.backbone_t2
    bns = _bn_layers(model)
    assert len(bns) >= 4  # 2 x small backbone's BNs and CorrFusion's (or the views')
    cov0 = ops.convert_to_numpy(model.decorrelation.cov_t1)
    np.testing.assert_allclose(cov0 @ cov0.T, np.eye(len(cov0)), atol=1e-5)  # orthogonal start
    assert not np.allclose(cov0, np.eye(len(cov0)))
    if method == "corrfusion":
        assert isinstance(model.corrfusion.squeeze_t1.kernel_initializer, keras.initializers.GlorotUniform)
        assert model.corrfusion.frozen_bn
    gammas = [ops.convert_to_numpy(b.gamma).copy() for b in bns]
    model.compile(optimizer=keras.optimizers.SGD(0.1))
    logs = model.fit(x, y, batch_size=8, epochs=1, verbose=0).history
    for b, g in zip(bns, gammas, strict=True):
        np.testing.assert_array_equal(ops.convert_to_numpy(b.moving_mean), 0.0)
        np.testing.assert_array_equal(ops.convert_to_numpy(b.moving_variance), 1.0)
        assert not np.allclose(ops.convert_to_numpy(b.gamma), g)  # still trained
    assert not np.allclose(ops.convert_to_numpy(model.decorrelation.cov_t1), cov0)  # really moves
    # frozen BN in training mode is the affine map γ·x/√(1 + ε) + β
    bn = bns[0]
    z = np.random.default_rng(0).normal(size=(4, bn.gamma.shape[0])).astype("float32")
    want = ops.convert_to_numpy(bn.gamma) * z / np.sqrt(1 + bn.epsilon) + ops.convert_to_numpy(bn.beta)
    layer_out = model.bn_training(True)
    assert layer_out is False
    np.testing.assert_allclose(ops.convert_to_numpy(bn(z, training=False)), want, rtol=1e-5, atol=1e-6)
    l2 = sum(0.5 * 1e-4 * float(np.sum(ops.convert_to_numpy(getattr(model, f"fc{i}_{t}").kernel) ** 2))
             for i in (1, 2) for t in ("t1", "t2"))
    np.testing.assert_allclose(float(ops.convert_to_numpy(model.regularization_loss())), l2, rtol=1e-4)
    assert np.isfinite(logs["loss"][0])


def test_frozen_bn_runs_a_shared_backbone_once_for_both_dates():
    """Frozen BN has no batch statistics: a shared backbone runs both dates as one batch."""
    assert not _small().one_pass  # the small CNN has BN layers
    model = _small(bn="frozen")
    assert model.one_pass
    x, _ = _data()
    out = model(x, training=True)
    single = _small(bn="frozen")
    single.one_pass = False
    single.set_weights(model.get_weights())
    np.testing.assert_allclose(ops.convert_to_numpy(out["prob_t1"]),
                               ops.convert_to_numpy(single(x, training=True)["prob_t1"]), atol=1e-5)


def test_original_options_survive_save_and_load(tmp_path):
    model = _small(shared=False, bn="frozen", pooling="flatten", decov_init="orthogonal",
                   decov_penalty="original", fusion_init="glorot_uniform")
    model.save(tmp_path / "m.keras")
    back = load_model(tmp_path / "m.keras")
    assert back.config == model.config
    x, _ = _data()
    np.testing.assert_allclose(ops.convert_to_numpy(back(x)["prob_t1"]),
                               ops.convert_to_numpy(model(x)["prob_t1"]), atol=1e-6)
    np.testing.assert_allclose(ops.convert_to_numpy(back.decorrelation.cov_t1),
                               ops.convert_to_numpy(model.decorrelation.cov_t1))


def test_the_module_bn_is_independent_of_the_backbone_bn():
    """issue 23: --fusion_bn sets CorrFusion's own BN; --bn the backbone's and the views'."""
    a = _small("corrfusion", bn="batch", fusion_bn="frozen", fusion_distance="rms",
               fusion_views="paper")
    assert a.corrfusion.frozen_bn and a.corrfusion.distance == "rms" and not a.one_pass
    b = _small("corrfusion", bn="frozen", fusion_bn="batch")
    assert not b.corrfusion.frozen_bn and b.bn_training(True) is False


def test_a_checkpoint_from_before_the_module_settings_keeps_its_module():
    """A saved config without fusion_bn / fusion_distance (before issue 23) had the module's BN
    follow ``bn`` and the paper's distance: it loads so, whatever today's defaults are."""
    for bn in ("batch", "frozen"):
        saved = _small("corrfusion", bn=bn).get_config()
        for key in ("fusion_bn", "fusion_distance", "fusion_views", "tied_start", "change_margin"):
            saved["config"].pop(key)
        net = CorrFusionNet.from_config(saved)
        assert (net.config.fusion_bn, net.config.fusion_distance) == (bn, "euclidean")
        assert net.corrfusion.frozen_bn == (bn == "frozen")


def test_tied_start_views_and_margin_reach_the_model(tmp_path):
    """tied_start: date 2's Dense layers, head and CorrFusion squeeze/excite start as copies of
    date 1's (separate variables); a saved model keeps its trained weights on load (no re-tying).
    change_margin reaches corrfusion's correlation loss (the hinge on changed pairs); the
    views and the start survive save/load."""
    net = _small("corrfusion", tied_start=True, fusion_views="pair", fusion_distance="rms",
                 change_margin=1.5, view_variance=0.0)  # the hinge alone in the loss
    for name in ("fc1", "fc2", "head"):
        a, b = getattr(net, f"{name}_t1"), getattr(net, f"{name}_t2")
        for wa, wb in zip(a.get_weights(), b.get_weights(), strict=True):
            np.testing.assert_array_equal(wa, wb)
        assert a.kernel is not b.kernel
    np.testing.assert_array_equal(_np64(net.corrfusion.squeeze_t1.kernel),
                                  _np64(net.corrfusion.squeeze_t2.kernel))
    x, (y1, _) = _data()
    same = net((x[0], x[0]), training=False)  # the same image on both dates: w = 1 at the start
    np.testing.assert_allclose(_np64(same["fusion_weight"]), 1.0, atol=1e-4)
    untied = _small("corrfusion")
    assert not np.allclose(untied.fc1_t1.get_weights()[0], untied.fc1_t2.get_weights()[0])

    out = net(x, training=False)
    y2 = (y1 + 1) % K  # every pair changed: only the hinge counts
    terms = net.spec.loss_terms(net, ops.convert_to_tensor(y1), ops.convert_to_tensor(y2), out)
    dist = _np64(out["dist"])
    # the RMS distance: the loss is on the Euclidean scale, λ1·√(d/r) = 0.1·√8
    np.testing.assert_allclose(_np64(terms["corr_loss"]),
                               0.1 * np.sqrt(8) * np.maximum(0.0, 1.5 - dist).mean(), rtol=1e-5)
    assert dist.min() < 1.5  # the hinge is active for some pair

    net.fc1_t2.kernel.assign(net.fc1_t2.kernel + 0.5)  # trained apart
    net.save(tmp_path / "m.keras")
    back = load_model(tmp_path / "m.keras")
    assert back.config == net.config
    np.testing.assert_array_equal(back.fc1_t2.get_weights()[0], net.fc1_t2.get_weights()[0])
    assert back.corrfusion.views == "pair" and back.corrfusion.tied_start


def test_a_checkpoint_from_before_the_views_and_margin_loads_as_the_paper():
    saved = _small("corrfusion", fusion_views="batch", change_margin=2.0, tied_start=True,
                   view_variance=0.5).get_config()
    for key in ("fusion_views", "change_margin", "tied_start", "view_variance"):
        saved["config"].pop(key)
    net = CorrFusionNet.from_config(saved)
    assert (net.config.fusion_views, net.config.change_margin, net.config.tied_start,
            net.config.view_variance) == ("paper", 0.0, False, 0.0)


def test_view_variance_reaches_the_correlation_loss_and_survives_save_load(tmp_path):
    """view_variance γ adds γ·Σ_dates mean_j max(0, 1 − std_i) of the two views to corrfusion's
    correlation loss (the same views the distance reads); 0 adds nothing; negative is refused."""
    from model.losses import view_variance_loss

    x, (y1, y2) = _data()
    with_term = _small("corrfusion", view_variance=2.0)
    out = with_term(x, training=False)
    t1, t2 = ops.convert_to_tensor(y1), ops.convert_to_tensor(y2)
    got = _np64(with_term.spec.loss_terms(with_term, t1, t2, out)["corr_loss"])
    without = dataclasses.replace(with_term.config, view_variance=0.0)
    with_term.config = without  # the same weights and outputs, the term off
    base = _np64(with_term.spec.loss_terms(with_term, t1, t2, out)["corr_loss"])
    vx, vy = _np64(out["view_t1"]), _np64(out["view_t2"])
    ref = 2.0 * sum(np.maximum(0.0, 1.0 - np.sqrt(v.var(axis=0) + 1e-4)).mean() for v in (vx, vy))
    assert ref > 0.01  # the term is active at the start
    np.testing.assert_allclose(got - base, ref, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(_np64(view_variance_loss(vx, vy, 2.0)), ref, rtol=1e-5)
    with pytest.raises(ValueError, match="view_variance"):
        _small(view_variance=-0.1)
    net = _small("corrfusion", view_variance=0.7)
    net.save(tmp_path / "m.keras")
    assert load_model(tmp_path / "m.keras").config.view_variance == 0.7


# ------------------------------------------------------------------ issue 22: the original's comparators
def _np64(v):
    return ops.convert_to_numpy(v).astype(np.float64)


def _features(model, x):
    """The per-date Dense features (after fc2) the method's forward step receives."""
    b1 = model.backbone if model.config.shared else model.backbone_t1
    b2 = model.backbone if model.config.shared else model.backbone_t2
    return (model._fc(model._pooled(x[0], b1, False), "t1"),
            model._fc(model._pooled(x[1], b2, False), "t2"))


@pytest.mark.parametrize("method", ["baseline", "sdcca"])
def test_original_comparators_structure_and_what_the_heads_read(method):
    """issue 22.2: comparators="original" builds NaiveResNet / SoftDCCANet (1c33068): a third
    Dense(hidden, ReLU) with L2 and a BN per date, heads reading the BN views, Glorot-uniform Dense
    and head kernels; "project" (the default) keeps two Dense layers and heads on them."""
    x, _ = _data()
    orig = _small(method, comparators="original", l2=1e-4)
    proj = _small(method)
    assert proj.config.comparators == "project" and not hasattr(proj, "fc3_t1")
    for t in ("t1", "t2"):
        fc3, bn = getattr(orig, f"fc3_{t}"), getattr(orig, f"view_bn_{t}")
        assert fc3.units == 16 and fc3.activation is keras.activations.relu
        assert fc3.kernel_regularizer is not None and isinstance(bn, keras.layers.BatchNormalization)
        for name in ("fc1", "fc2", "fc3", "head"):
            assert isinstance(getattr(orig, f"{name}_{t}").kernel_initializer, keras.initializers.GlorotUniform)
            if name != "fc3":
                assert isinstance(getattr(proj, f"{name}_{t}").kernel_initializer, keras.initializers.GlorotNormal)
    assert len(orig.losses) == 6 and len(proj.losses) == 4  # L2 on fc1..fc3 per date
    # the heads read BN(fc3(fc2 ...)) (original) or fc2 ... (project): logits recomputed from them
    fx, fy = _features(orig, x)
    vx = orig.view_bn_t1(orig.fc3_t1(fx), training=False)
    vy = orig.view_bn_t2(orig.fc3_t2(fy), training=False)
    out = orig(x, training=False)
    np.testing.assert_allclose(_np64(out["logits_t1"]), _np64(vx) @ _np64(orig.head_t1.kernel), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(_np64(out["logits_t2"]), _np64(vy) @ _np64(orig.head_t2.kernel), rtol=1e-4, atol=1e-5)
    if method == "sdcca":
        np.testing.assert_allclose(_np64(out["view_t1"]), _np64(vx), rtol=1e-5, atol=1e-6)
    fx, _ = _features(proj, x)
    np.testing.assert_allclose(_np64(proj(x, training=False)["logits_t1"]),
                               _np64(fx) @ _np64(proj.head_t1.kernel), rtol=1e-4, atol=1e-5)
    # both train: every weight, fc3 and the view BNs included, gets a gradient
    orig.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9, nesterov=True))
    before = [ops.convert_to_numpy(w) for w in orig.trainable_weights]
    logs = orig.train_on_batch(*_data(), return_dict=True)
    assert set(logs) == _expected_logs(method) and all(np.isfinite(v) for v in logs.values())
    moved = [not np.array_equal(a, ops.convert_to_numpy(b)) for a, b in zip(before, orig.trainable_weights, strict=True)]
    assert all(moved), [w.path for w, m in zip(orig.trainable_weights, moved, strict=True) if not m]


def test_original_soft_dcca_loss_on_all_pairs():
    """issue 22.2: the original SoftDCCANet's Soft_DCCA_loss: η1 = 1e-2 times the mean distance of
    the BN views over every pair (changed ones too), η2 = 1e-3 times Σ|C| − Σ diag C of running
    covariances that start at zeros; --lambda1/--lambda2 do not reach it. The project's sdcca
    keeps the unchanged pairs only."""
    x, (y1, _) = _data()
    y2 = (y1 + 1) % K  # every pair changed
    orig = _small("sdcca", comparators="original", lambda1=0.5, lambda2=0.5, decov_init="orthogonal")
    proj = _small("sdcca")
    assert orig.decorrelation.init == "zeros" and orig.decorrelation.lambda2 == 1e-3
    np.testing.assert_array_equal(_np64(orig.decorrelation.cov_t1), 0.0)
    out = orig(x, training=False)
    v1, v2 = _np64(out["view_t1"]), _np64(out["view_t2"])
    dist = np.sqrt(((v1 - v2) ** 2).sum(1) + 1e-12)
    terms = orig.spec.loss_terms(orig, ops.convert_to_tensor(y1), ops.convert_to_tensor(y2), out)
    np.testing.assert_allclose(_np64(terms["corr_loss"]), 1e-2 * dist.mean(), rtol=1e-5)
    c1, c2 = (0.1 * v.T @ v / 7 for v in (v1, v2))  # ρ·0 + (1 − ρ)·VᵀV/(n − 1)
    ref = 1e-3 * sum(np.abs(c).sum() - np.trace(c) for c in (c1, c2))
    np.testing.assert_allclose(_np64(terms["decov_loss"]), ref, rtol=1e-4)
    # the project's sdcca: no unchanged pair, no correlation loss
    out = proj(x, training=False)
    terms = proj.spec.loss_terms(proj, ops.convert_to_tensor(y1), ops.convert_to_tensor(y2), out)
    assert _np64(terms["corr_loss"]) == 0.0


def test_compute_loss_reads_the_logits():
    """issue 22.5: the cross-entropies come from the logits on every backend: a confidently wrong
    pair (logit gap 100) costs ~100, not the −log 1e-7 ≈ 16.1 of clipped probabilities."""
    model = _small("baseline", l2=0.0)
    z = np.zeros((4, K), "float32")
    z[:, 1] = 100.0
    y = (np.array([0, 1, 2, 3], "int32"), np.array([1, 1, 1, 1], "int32"))
    probs = ops.softmax(ops.convert_to_tensor(z))
    y_pred = {"prob_t1": probs, "prob_t2": probs, "logits_t1": ops.convert_to_tensor(z),
              "logits_t2": ops.convert_to_tensor(z)}
    total = _np64(model.compute_loss(y=y, y_pred=y_pred))
    lse = 100.0 + np.log1p((K - 1) * np.exp(-100.0))
    ce1 = np.mean([lse - z[i, y[0][i]] for i in range(4)])  # three pairs wrong by 100
    np.testing.assert_allclose(total, ce1 + (lse - 100.0), rtol=1e-6)
    assert ce1 > 70
    out = model(_data(n=4)[0], training=False)
    assert {"logits_t1", "logits_t2"} <= set(out) and out["logits_t1"].dtype == "float32"
    assert not {"logits_t1", "logits_t2", "decov_loss"} & set(model.predict(_data(n=4)[0], verbose=0))


@pytest.mark.parametrize("dist_epsilon", ["once", "per_feature"])
def test_corrfusion_distance_epsilon(dist_epsilon):
    """issue 22.5: the original adds ε to every squared difference, sqrt(reduce_sum(square(Δ) + eps)),
    i.e. √(ΣΔ² + (d/r)·ε) over the d/r = 512 view features; the project adds it once. At training
    size (batch 32, d = 1024) against a float64 reference, with identical dates for half the batch
    (Δ = 0: dist = √(512·1e-12) = 2.3e-5 against √1e-12 = 1e-6)."""
    model = build_model(K, backbone="small", image_size=(16, 16), hidden=1024, seed=2,
                        dist_epsilon=dist_epsilon, fusion_distance="euclidean")
    for a, b in (("fc1_t1", "fc1_t2"), ("fc2_t1", "fc2_t2")):
        getattr(model, b).set_weights(getattr(model, a).get_weights())
    cf = model.corrfusion
    for a, b in (("squeeze_t1", "squeeze_t2"), ("bn_t1", "bn_t2")):
        getattr(cf, b).set_weights(getattr(cf, a).get_weights())
    (x1, x2), _ = _data(n=32)
    x2[:16] = x1[:16]
    out = model((x1, x2), training=False)
    delta2 = (_np64(out["view_t1"]) - _np64(out["view_t2"])) ** 2
    assert delta2.shape == (32, 512) and np.all(delta2[:16] == 0.0)
    ref = np.sqrt((delta2 + 1e-12).sum(1)) if dist_epsilon == "per_feature" else np.sqrt(delta2.sum(1) + 1e-12)
    np.testing.assert_allclose(_np64(out["dist"]), ref, rtol=1e-5)
    np.testing.assert_allclose(_np64(out["dist"])[:16], np.sqrt(512e-12) if dist_epsilon == "per_feature" else 1e-6,
                               rtol=1e-5)
