"""training.optimizers: the --optimizer table (each name builds its Keras optimiser, a learning-rate
schedule steps at the epoch boundaries, parser.py offers exactly the table's names) and --class_weight
balanced (the weights from a known histogram, and where the network uses them)."""

import numpy as np
import pytest
from sklearn.utils.class_weight import compute_class_weight

from data.split_summary import SplitSummary
from training.optimizers import (
    CLASS_WEIGHTS,
    OPTIMIZERS,
    balanced_class_weights,
    build_optimizer,
    class_weights,
)
from training.run_data import DataPlan


def _opt_config(**kw):
    from types import SimpleNamespace

    return SimpleNamespace(**{"optimizer": "sgd", "lr": (0.01,), "lr_boundaries": (),
                              "momentum": 0.9, "nesterov": True, **kw})


@pytest.mark.parametrize("name,cls", [("sgd", "SGD"), ("adam", "Adam"), ("adamw", "AdamW")])
def test_each_optimizer_name_builds_its_keras_optimizer(name, cls):
    opt = build_optimizer(_opt_config(optimizer=name), steps_per_epoch=10)
    assert type(opt).__name__ == cls
    assert float(opt.learning_rate) == pytest.approx(0.01)
    if name == "sgd":
        assert float(opt.momentum) == pytest.approx(0.9) and opt.nesterov is True


def test_a_learning_rate_schedule_steps_at_the_epoch_boundaries():
    opt = build_optimizer(_opt_config(lr=(0.1, 0.01, 0.001), lr_boundaries=(2, 5)),
                          steps_per_epoch=10)
    import keras

    schedule = keras.optimizers.schedules.deserialize(opt.get_config()["learning_rate"])
    assert type(schedule).__name__ == "PiecewiseConstantDecay"
    got = [float(schedule(step)) for step in (0, 20, 21, 50, 51)]  # steps: boundaries x 10
    np.testing.assert_allclose(got, [0.1, 0.1, 0.01, 0.01, 0.001], rtol=1e-6)


def test_the_parser_offers_exactly_the_tables_names():
    from parser import train_parser

    actions = {a.dest: a for a in train_parser()._actions}
    assert tuple(actions["optimizer"].choices) == tuple(OPTIMIZERS) == ("sgd", "adam", "adamw")
    assert tuple(actions["class_weight"].choices) == tuple(CLASS_WEIGHTS) == ("none", "balanced")


def test_balanced_weights_of_a_known_histogram():
    # 10 pairs: class 1 x5, class 2 x3, class 3 x2 -> n / (K count_k) with K = 3
    weights, absent = balanced_class_weights([5, 3, 2])
    np.testing.assert_allclose(weights, [10 / 15, 10 / 9, 10 / 6])
    assert absent == []
    y = np.repeat([0, 1, 2], [5, 3, 2])
    np.testing.assert_allclose(weights, compute_class_weight("balanced", classes=np.arange(3), y=y))


def test_a_class_absent_from_training_gets_weight_zero():
    weights, absent = balanced_class_weights([4, 0, 2, 0])
    y = np.repeat([0, 2], [4, 2])  # scikit-learn over the classes present
    np.testing.assert_allclose(np.asarray(weights)[[0, 2]],
                               compute_class_weight("balanced", classes=np.array([0, 2]), y=y))
    assert weights[1] == weights[3] == 0.0 and absent == [1, 3]


def _plan(hist_t1, hist_t2, num_classes):
    trn = SplitSummary("trn", [], int(sum(hist_t1)), 0, (8, 8, 3), np.uint8, len(hist_t1), None,
                       np.asarray(hist_t1), np.asarray(hist_t2), 0, False, [])
    return DataPlan({"trn": "trn"}, {"trn": trn}, num_classes, (8, 8), 3, ["a", "b", "c", "d"])


def test_weights_per_date_padded_to_the_class_count_and_absent_classes_logged(caplog):
    plan = _plan([6, 2, 0], [2, 2, 4], num_classes=4)  # trn's labels reach 3 of 4 classes
    assert class_weights("none", plan) is None
    with caplog.at_level("WARNING"):
        w1, w2 = class_weights("balanced", plan)
    np.testing.assert_allclose(w1, [8 / 12, 8 / 4, 0, 0])
    np.testing.assert_allclose(w2, [8 / 6, 8 / 6, 8 / 12, 0])
    assert "c, d at t1 absent from the training split: weight 0" in caplog.text
    assert "d at t2 absent" in caplog.text


@pytest.mark.parametrize("bad", [((1.0, 1.0), (1.0,)), ((1.0, -1.0), (1.0, 1.0)),
                                 ((0.0, 0.0), (1.0, 1.0)), ((1.0, 1.0),)])
def test_model_config_refuses_bad_weights(bad):
    from model.config import ModelConfig

    with pytest.raises(ValueError, match="ce_weights"):
        ModelConfig(num_classes=2, ce_weights=bad).check()


def test_the_network_weights_training_ce_only_and_round_trips(tmp_path):
    import keras

    import model as cfn

    w = ((0.5, 2.0, 1.0), (1.0, 1.0, 3.0))
    net = cfn.build_model(3, image_size=(8, 8), backbone="small", hidden=8, seed=0, ce_weights=w)
    rng = np.random.default_rng(0)
    x = (rng.integers(0, 255, (6, 8, 8, 3)).astype("uint8"),) * 2
    y1, y2 = np.array([0, 1, 2, 1, 0, 2]), np.array([2, 2, 1, 0, 0, 1])
    out = net(x, training=False)
    # the float64 reference from the logits (what the loss reads): raw uint8 bands through the
    # untrained model's default (unit) input statistics saturate the float32 softmax
    z1, z2 = (keras.ops.convert_to_numpy(out[k]).astype(np.float64) for k in ("logits_t1", "logits_t2"))

    def nll(z, y):
        z = z - z.max(axis=1, keepdims=True)
        return np.log(np.exp(z).sum(axis=1)) - z[np.arange(len(y)), y]

    ce1, ce2 = nll(z1, y1), nll(z2, y2)
    wa, wb = np.asarray(w[0])[y1], np.asarray(w[1])[y2]
    for training, ref in ((True, (wa @ ce1 / wa.sum(), wb @ ce2 / wb.sum())),
                          (False, (ce1.mean(), ce2.mean()))):
        for t in net._trackers.values():
            t.reset_state()
        net.compute_loss(x, (y1, y2), out, training=training)
        np.testing.assert_allclose([float(net._trackers["ce_t1"].result()),
                                    float(net._trackers["ce_t2"].result())], ref, rtol=1e-5)
    net.save(tmp_path / "w.keras")
    assert cfn.load_model(tmp_path / "w.keras").config.ce_weights == w
