"""The two-branch CorrFusionNet model and the four method variants (docs/DESIGN.md §2, §2.2).

``CorrFusionNet`` is a subclassed ``keras.Model`` built from one frozen ``model.config.ModelConfig``;
``get_config`` returns it (``{"name", "trainable", "config": {...fields}}``), so a ``.keras`` file
loads back with ``safe_mode=True`` on every backend (``model.load_model``).

Forward pass (``model((x1, x2))`` / ``model.predict``) returns a dict:

* ``prob_t1``, ``prob_t2`` — (N, K) float32 softmax probabilities;
* ``dist``, ``fusion_weight`` — (N,) CorrFusion distance (``config.fusion_distance``) and
  ``1 − tanh(dist)`` (corrfusion);
  ``dist`` is also returned by ``sdcca`` (distance of the two BN views);
* ``view_t1``, ``view_t2`` — the two batch-normalised views that the canonical correlation
  metric (and the DCCA loss) read: (N, hidden/reduction) for corrfusion, (N, hidden) for
  dcca/sdcca;
* ``decov_loss`` — () the soft decorrelation loss (corrfusion, sdcca): returned by the call so that
  ``compute_loss`` logs it by name, left out of ``predict``'s outputs;
* ``logits_t1``, ``logits_t2`` — (N, K) float32 head outputs before the softmax, what the
  cross-entropies are computed from (on every backend); left out of ``predict``'s outputs.

``config.comparators="original"`` builds ``baseline`` and ``sdcca`` as the original's NaiveResNet and
SoftDCCANet (``model.config.COMPARATORS``): a third Dense layer and a BN per date, the heads reading
the BN views (also returned as ``view_t1``/``view_t2`` by sdcca).

Training (``fit``/``evaluate``) takes labels ``(y1, y2)`` (int, 0-based); ``compute_loss`` returns
``CE_t1 + CE_t2 + the method's named losses + Σ model.losses`` and logs every term by name.
"""

import logging

import keras
import numpy as np
from keras import ops

from model.backbones import (
    _TORCH_MEAN,
    _TORCH_STD,
    BACKBONES,
    ImagenetInputMapping,
    build_backbone,
    has_batch_statistics,
)
from model.cca import canonical_correlation
from model.config import LEGACY_INPUT_NORM, ORIGINAL_SOFT_DCCA, STAT_NORMS, MethodInfo, ModelConfig
from model.config import METHODS as METHOD_INFO
from model.corrfusion import CorrFusion
from model.losses import (
    SoftDecorrelation,
    correlation_loss,
    cross_entropy,
    dcca_loss,
    pair_distance,
    replica_sum,
    view_variance_loss,
)
from model.normalization import InputNormalization

log = logging.getLogger(__name__)

__all__ = ["CorrFusionNet", "METHODS", "MethodSpec", "ModelConfig", "build_model", "load_model"]

#: outputs that only feed the loss: returned by ``call`` (so ``compute_loss`` sees them by name),
#: left out of ``predict``
LOSS_OUTPUTS = ("decov_loss", "logits_t1", "logits_t2")
#: ε of the distances (CorrFusion's and sdcca's), the original CorrFusion's ``eps``
DIST_EPSILON = 1e-12


class MethodSpec:
    """One row of the methods table (docs/DESIGN.md §2.2): the layers a method adds, its forward
    step and its named losses. ``info`` is the row of ``model.config.METHODS``."""

    def __init__(self, info: MethodInfo):
        self.info = info

    def build(self, model):
        """Create the method's layers as attributes of ``model``."""

    def forward(self, model, x, y, training):
        """Return ``(h1, h2, outputs)``: what the heads read and the extra outputs."""
        return x, y, {}

    def original(self, config):
        """Whether ``config`` builds this method as the original's comparator (NaiveResNet,
        SoftDCCANet): ``config.comparators == "original"`` for ``baseline`` and ``sdcca``."""
        return False

    def dense_initializer(self, config):
        """Initialiser kind of the per-date Dense kernels and the heads: Glorot normal (the
        original CorrFusionNet's ``tf.glorot_normal_initializer``), Glorot uniform for the
        original's comparators (``tf.contrib.layers.xavier_initializer()``)."""
        return "glorot_uniform" if self.original(config) else "glorot_normal"

    def loss_terms(self, model, y1, y2, y_pred):
        """Return ``{name: scalar}`` of the method's losses (``info.losses``, in that order)."""
        return {}


class _Decorrelated(MethodSpec):
    """The soft decorrelation loss on the two views and the correlation loss on unchanged pairs
    (corrfusion, sdcca): one ``SoftDecorrelation`` layer, its loss returned as ``decov_loss``."""

    def decorrelation_settings(self, config):
        """``{lambda1, lambda2, decov_init, decov_penalty}`` of this method under ``config``."""
        return {k: getattr(config, k) for k in ("lambda1", "lambda2", "decov_init", "decov_penalty")}

    def build(self, model):
        c = model.config
        d = self.decorrelation_settings(c)
        model.decorrelation = SoftDecorrelation(
            lambda2=d["lambda2"], rho=c.rho, init=d["decov_init"], penalty=d["decov_penalty"],
            seed=None if c.seed is None else c.seed + 200, name="decorrelation",
        )

    def decorrelate(self, model, out, training):
        out["decov_loss"] = model.decorrelation([out["view_t1"], out["view_t2"]], training=training)
        return out

    def loss_terms(self, model, y1, y2, y_pred):
        c = model.config
        return {"corr_loss": correlation_loss(y_pred["dist"], y1, y2, c.lambda1, c.corr_norm),
                "decov_loss": y_pred["decov_loss"]}


def _build_original_views(model):
    """The original NaiveResNet / SoftDCCANet's third Dense(hidden, ReLU) layer per date (L2,
    Glorot uniform) and the BN after it, whose outputs the heads read."""
    c = model.config
    reg = keras.regularizers.L2(c.l2 / 2) if c.l2 else None
    for t, off in (("t1", 3), ("t2", 13)):
        setattr(model, f"fc3_{t}", keras.layers.Dense(
            c.hidden, activation="relu", kernel_regularizer=reg,
            kernel_initializer=model._initializer(off, "glorot_uniform"), name=f"fc3_{t}"))
    _build_bn_views(model)


def _original_views(model, x, y, training):
    """BN(fc3(X)), BN(fc3(Y)): the original comparators' views, read by the heads."""
    return _bn_views(model, model.fc3_t1(x), model.fc3_t2(y), training)


class _Baseline(MethodSpec):
    """No extra loss. ``comparators="original"``: the original NaiveResNet's network (three Dense
    layers and a BN per date, heads on the BN views) with its "original cnn" loss, the two
    cross-entropies (+ L2)."""

    def original(self, config):
        return config.comparators == "original"

    def build(self, model):
        if self.original(model.config):
            _build_original_views(model)

    def forward(self, model, x, y, training):
        if not self.original(model.config):
            return x, y, {}
        views = _original_views(model, x, y, training)
        return views["view_t1"], views["view_t2"], {}


class _CorrFusionMethod(_Decorrelated):
    def build(self, model):
        super().build(model)
        c = model.config
        model.corrfusion = CorrFusion(
            reduction=c.reduction,
            lambda2=0.0,  # the decorrelation is applied on the returned views (_Decorrelated)
            rho=c.rho,
            # the original adds ε to each of the d/r squared differences: √(ΣΔ² + (d/r)·ε)
            epsilon=DIST_EPSILON * (c.hidden // c.reduction if c.dist_epsilon == "per_feature" else 1),
            return_views=True,
            frozen_bn=model.config.fusion_bn == "frozen",
            distance=model.config.fusion_distance,
            views=model.config.fusion_views,
            tied_start=model.config.tied_start,
            kernel_initializer=model._initializer(100, model.config.fusion_init),
            name="corrfusion",
        )

    def forward(self, model, x, y, training):
        x_phi, y_phi, dist, vx, vy = model.corrfusion([x, y], training=training)
        out = {"dist": dist, "fusion_weight": 1.0 - ops.tanh(dist), "view_t1": vx, "view_t2": vy}
        return x_phi, y_phi, self.decorrelate(model, out, training)

    def loss_terms(self, model, y1, y2, y_pred):
        c = model.config
        # The RMS distance is the Euclidean one ÷ √(d/r): the loss multiplies it back, so that
        # λ1 weighs the same Euclidean distance as the paper's loss and only w reads the RMS.
        scale = (c.hidden // c.reduction) ** 0.5 if c.fusion_distance == "rms" else 1.0
        corr = correlation_loss(y_pred["dist"], y1, y2, c.lambda1 * scale, c.corr_norm,
                                c.change_margin)
        if c.view_variance:  # the spread over the global batch under tf.distribute
            corr = corr + view_variance_loss(y_pred["view_t1"], y_pred["view_t2"], c.view_variance,
                                             batch_sum=replica_sum if model.synchronized else None)
        return {"corr_loss": corr, "decov_loss": y_pred["decov_loss"]}


def _bn_views(model, x, y, training):
    """BN(X), BN(Y): a plain BatchNormalization on each date's feature (no projection)."""
    training = model.bn_training(training)
    return {"view_t1": model.view_bn_t1(x, training=training),
            "view_t2": model.view_bn_t2(y, training=training)}


def _build_bn_views(model):
    model.view_bn_t1 = keras.layers.BatchNormalization(name="view_bn_t1")
    model.view_bn_t2 = keras.layers.BatchNormalization(name="view_bn_t2")


class _DCCA(MethodSpec):
    def build(self, model):
        _build_bn_views(model)

    def forward(self, model, x, y, training):
        return x, y, _bn_views(model, x, y, training)

    def loss_terms(self, model, y1, y2, y_pred):
        return {"dcca_loss": dcca_loss(y_pred["view_t1"], y_pred["view_t2"])}


class _SoftDCCA(_Decorrelated):
    """Soft DCCA on BN(X), BN(Y): the distance on unchanged pairs (λ1) and the soft decorrelation
    (λ2), heads on X, Y. ``comparators="original"``: the original SoftDCCANet, heads on the BN views
    of a third Dense layer, ``Soft_DCCA_loss`` on all pairs with ``ORIGINAL_SOFT_DCCA``'s constants
    (the committed call passes ``labels=None``, which that function does not take: it is run
    without, i.e. on all pairs, the only reading under which it runs)."""

    def original(self, config):
        return config.comparators == "original"

    def decorrelation_settings(self, config):
        if self.original(config):
            return dict(ORIGINAL_SOFT_DCCA)
        return super().decorrelation_settings(config)

    def build(self, model):
        if self.original(model.config):
            _build_original_views(model)
        else:
            _build_bn_views(model)
        super().build(model)

    def forward(self, model, x, y, training):
        if self.original(model.config):
            out = _original_views(model, x, y, training)
            h1, h2 = out["view_t1"], out["view_t2"]
        else:
            out = _bn_views(model, x, y, training)
            h1, h2 = x, y
        out["dist"] = pair_distance(out["view_t1"], out["view_t2"], DIST_EPSILON)
        return h1, h2, self.decorrelate(model, out, training)

    def loss_terms(self, model, y1, y2, y_pred):
        if not self.original(model.config):
            return super().loss_terms(model, y1, y2, y_pred)
        # Soft_DCCA_loss: eta1 * mean over the batch of every pair's distance
        lambda1 = self.decorrelation_settings(model.config)["lambda1"]
        return {"corr_loss": lambda1 * ops.mean(ops.cast(y_pred["dist"], "float32")),
                "decov_loss": y_pred["decov_loss"]}


_IMPLEMENTATIONS = {
    "corrfusion": _CorrFusionMethod,
    "baseline": _Baseline,
    "dcca": _DCCA,
    "sdcca": _SoftDCCA,
}
#: name -> MethodSpec, one per row of ``model.config.METHODS`` (the names' one source)
METHODS = {name: _IMPLEMENTATIONS[name](info) for name, info in METHOD_INFO.items()}


@keras.saving.register_keras_serializable(package="corrfusion")
class CorrFusionNet(keras.Model):
    """Two-date scene classifier with CorrFusion (or a §2.2 variant).

    Args:
        config: a ``model.config.ModelConfig`` (every hyperparameter; see its docstring), or a
            dict of its fields.
        **kwargs: ``name``, ``trainable``; or ``ModelConfig`` fields when ``config`` is None
            (``CorrFusionNet(num_classes=6, backbone="small")``).

    Call arguments:
        inputs: ``(x1, x2)`` (N, H, W, C) images as the loader hands them over for
            ``config.input_norm``, normalised in the graph by the ``input_norm`` layer
            (``model.normalization.InputNormalization``, docs/DESIGN.md §2): uint8/uint16 as
            stored, or float (raw values for ``bands``/``bands_per_date``, already scaled to
            [-0.5, 0.5] for ``dtype`` and ``shard_max``).
        training: bool.

    Returns:
        dict, see the module docstring.
    """

    def __init__(self, config=None, **kwargs):
        base = {k: kwargs.pop(k) for k in ("name", "trainable", "dtype") if k in kwargs}
        if config is None:
            config = ModelConfig(**kwargs)
        elif isinstance(config, dict):
            config = ModelConfig.from_dict(config)
        elif kwargs:
            raise ValueError(f"Give a ModelConfig or its fields, not both; received {sorted(kwargs)}.")
        config = config.check()
        base.setdefault("name", f"corrfusionnet_{config.method}")
        super().__init__(**base)
        self.config = config
        self.spec = METHODS[config.method]
        #: terms of the whole batch over every replica (training.multiworker sets it; not saved)
        self.synchronized = False
        c = config

        input_shape = (*c.image_size, c.channels)
        self.input_norm = InputNormalization(c.input_norm, c.channels, name="input_norm")
        if c.input_mapping:
            self.mapping = ImagenetInputMapping(BACKBONES[c.backbone].mapping, name="input_mapping")
        if c.shared:
            self.backbone = build_backbone(c.backbone, c.image_size, c.channels, c.weights, "backbone", c.seed,
                                           c.resnet_init)
        else:
            self.backbone_t1 = build_backbone(c.backbone, c.image_size, c.channels, c.weights, "backbone_t1", c.seed,
                                              c.resnet_init)
            self.backbone_t2 = build_backbone(
                c.backbone, c.image_size, c.channels, c.weights, "backbone_t2",
                None if c.seed is None else c.seed + 1000, c.resnet_init,
            )
        #: run both dates through the backbone as one batch (shared and no batch statistics)
        self.one_pass = c.shared and (c.bn == "frozen" or not has_batch_statistics(self.backbone))
        if c.pooling == "flatten":
            self.pool = keras.layers.Flatten(name="flatten")
        else:
            self.pool = keras.layers.GlobalAveragePooling2D(name="gap")
        # the original's convention (tf.contrib.layers.l2_regularizer): l2·Σw²/2
        reg = keras.regularizers.L2(c.l2 / 2) if c.l2 else None
        kind = self.spec.dense_initializer(c)
        for t, off in (("t1", 0), ("t2", 10)):
            for i in (1, 2):
                setattr(self, f"fc{i}_{t}", keras.layers.Dense(
                    c.hidden, activation="relu", kernel_regularizer=reg,
                    kernel_initializer=self._initializer(off + i, kind), name=f"fc{i}_{t}",
                ))
            setattr(self, f"head_{t}", keras.layers.Dense(
                c.num_classes, use_bias=False, kernel_initializer=self._initializer(off + 5, kind),
                name=f"head_{t}",
            ))
        self.softmax = keras.layers.Activation("softmax", dtype="float32", name="softmax")
        self.spec.build(self)
        self._trackers = {}
        names = ["ce_t1", "ce_t2", *self.spec.info.losses, "l2", "oa_t1", "oa_t2", "oa_bi", "oa_tr"]
        if self.spec.info.has_views:
            names.append("cancorr")
        for n in names:
            tracker = keras.metrics.Mean(name=n)
            setattr(self, f"tracker_{n}", tracker)
            self._trackers[n] = tracker
        self.build(((None, *input_shape), (None, *input_shape)))

    def _initializer(self, offset, kind="glorot_normal"):
        seed = self.config.seed
        cls = keras.initializers.GlorotUniform if kind == "glorot_uniform" else keras.initializers.GlorotNormal
        return cls(seed=None if seed is None else seed + offset)

    def bn_training(self, training):
        """The ``training`` flag the BatchNormalization layers get: always False with
        ``bn="frozen"`` (the original's TF1 graph: moving mean 0 and variance 1 for ever)."""
        return False if self.config.bn == "frozen" else training

    # ------------------------------------------------------------------ build / forward
    def build(self, input_shape):
        if self.built:
            return
        shapes = tuple(tuple(s) for s in input_shape)
        want = (*self.config.image_size, self.config.channels)
        if len(shapes) != 2 or any(tuple(s[1:]) != want for s in shapes):
            raise ValueError(
                f"CorrFusionNet expects two inputs of shape (N, {want[0]}, {want[1]}, {want[2]}); "
                f"received {input_shape!r}."
            )
        x1 = keras.KerasTensor((None, *want))
        x2 = keras.KerasTensor((None, *want))
        # One symbolic pass creates every sublayer's weights (shape inference only).
        self._forward((x1, x2), training=False)
        if self.config.tied_start:  # date 2's Dense layers and head start as copies of date 1's
            for name in ("fc1", "fc2", "head"):
                getattr(self, f"{name}_t2").set_weights(getattr(self, f"{name}_t1").get_weights())
        self.built = True

    def set_input_statistics(self, mean, variance):
        """The input normalisation's statistics (``bands``: (C,); ``bands_per_date``: (2, C))."""
        self.input_norm.set_statistics(mean, variance)

    def input_statistics(self) -> dict | None:
        """``{"mean", "std"}`` per date of the input normalisation (None for dtype/shard_max)."""
        return self.input_norm.statistics()

    def _pooled(self, x, backbone, training):
        if self.config.input_mapping:
            if self.config.input_norm in STAT_NORMS:
                # standardised bands -> ImageNet's per-channel mean and std in [0, 1] (as the
                # mapping's [-0.5, 0.5] input): what the pretrained weights saw
                c = self.config.channels
                mean = np.asarray(_TORCH_MEAN if c == 3 else [np.mean(_TORCH_MEAN)] * c, "float32")
                std = np.asarray(_TORCH_STD if c == 3 else [np.mean(_TORCH_STD)] * c, "float32")
                x = x * std + (mean - np.float32(0.5))
            x = self.mapping(x)
        return self.pool(backbone(x, training=self.bn_training(training)))

    def _fc(self, f, t):
        return getattr(self, f"fc2_{t}")(getattr(self, f"fc1_{t}")(f))

    def _forward(self, inputs, training=None):
        if isinstance(inputs, dict):
            inputs = (inputs["x1"], inputs["x2"])
        if not isinstance(inputs, (list, tuple)) or len(inputs) != 2:
            raise ValueError(
                f"CorrFusionNet expects inputs (x1, x2); received {type(inputs).__name__} "
                f"of length {len(inputs) if hasattr(inputs, '__len__') else '?'}."
            )
        x1, x2 = self.input_norm(list(inputs))  # raw uint8/uint16 batches are normalised here
        if self.one_pass:
            # A shared backbone without batch statistics gives the same features for both dates
            # run as one batch of 2N: half the kernel launches, larger matrix products.
            f1, f2 = ops.split(self._pooled(ops.concatenate([x1, x2], axis=0), self.backbone,
                                            training), 2, axis=0)
        else:
            b1 = self.backbone if self.config.shared else self.backbone_t1
            b2 = self.backbone if self.config.shared else self.backbone_t2
            f1, f2 = self._pooled(x1, b1, training), self._pooled(x2, b2, training)
        fx, fy = self._fc(f1, "t1"), self._fc(f2, "t2")
        h1, h2, out = self.spec.forward(self, fx, fy, training)
        z1, z2 = self.head_t1(h1), self.head_t2(h2)
        outputs = {
            "prob_t1": self.softmax(z1),
            "prob_t2": self.softmax(z2),
            "logits_t1": ops.cast(z1, "float32"),
            "logits_t2": ops.cast(z2, "float32"),
        }
        outputs.update(out)
        return outputs

    def call(self, inputs, training=None):
        return self._forward(inputs, training=training)

    # ------------------------------------------------------------------ losses / metrics
    def _split_labels(self, y):
        if isinstance(y, dict):
            y = (y["y1"], y["y2"])
        if not isinstance(y, (list, tuple)) or len(y) != 2:
            raise ValueError(f"CorrFusionNet expects labels (y1, y2); received {type(y).__name__}.")
        return ops.cast(ops.reshape(y[0], (-1,)), "int32"), ops.cast(ops.reshape(y[1], (-1,)), "int32")

    def regularization_loss(self):
        """Σ of the weight regularizers (the L2 term), computed from the current weights."""
        terms = [v.regularizer(v) for v in self.trainable_weights if v.regularizer is not None]
        if not terms:
            return ops.zeros((), "float32")
        return ops.sum(ops.stack([ops.cast(t, "float32") for t in terms]))

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        """``CE_t1 + CE_t2 + the method's named losses + Σ model.losses``; every term is logged
        by its name (``model.losses`` holds the weight regularizers, logged as ``l2``).
        With ``config.ce_weights`` the cross-entropies are class-weighted means in training only;
        evaluation (``training=False``) logs the plain means. Sample weights are not supported."""
        y1, y2 = self._split_labels(y)
        w1, w2 = self.config.ce_weights if training and self.config.ce_weights else (None, None)
        terms = {  # from the logits: exact for any logit gap, on every backend
            "ce_t1": cross_entropy(y1, y_pred["logits_t1"], w1, from_logits=True),
            "ce_t2": cross_entropy(y2, y_pred["logits_t2"], w2, from_logits=True),
        }
        terms.update(self.spec.loss_terms(self, y1, y2, y_pred))
        total = ops.sum(ops.stack([ops.cast(v, "float32") for v in terms.values()]))
        added = [ops.cast(v, "float32") for v in self.losses]
        if added:
            total = total + ops.sum(ops.stack(added))
        terms["l2"] = self.regularization_loss()
        # batch-size weighted, like Keras' own "loss" tracker, so epoch values are per-pair means
        n = ops.cast(ops.shape(y1)[0], "float32")
        for name, value in terms.items():
            self._trackers[name].update_state(ops.stop_gradient(value), sample_weight=n)
        return total

    def predict_step(self, *args):
        """Keras' predict step without the loss-only outputs (``LOSS_OUTPUTS``)."""
        result = super().predict_step(*args)
        if isinstance(result, tuple):  # JAX: (outputs, state)
            return (_public(result[0]), *result[1:])
        return _public(result)

    def compute_metrics(self, x, y, y_pred, sample_weight=None):
        y1, y2 = self._split_labels(y)
        p1 = ops.cast(ops.argmax(y_pred["prob_t1"], axis=-1), "int32")
        p2 = ops.cast(ops.argmax(y_pred["prob_t2"], axis=-1), "int32")
        ok1, ok2 = ops.equal(p1, y1), ops.equal(p2, y2)
        self._trackers["oa_t1"].update_state(ops.cast(ok1, "float32"))
        self._trackers["oa_t2"].update_state(ops.cast(ok2, "float32"))
        self._trackers["oa_bi"].update_state(
            ops.cast(ops.equal(ops.not_equal(p1, p2), ops.not_equal(y1, y2)), "float32")
        )
        self._trackers["oa_tr"].update_state(ops.cast(ops.logical_and(ok1, ok2), "float32"))
        if self.spec.info.has_views:
            self._trackers["cancorr"].update_state(
                canonical_correlation(ops.stop_gradient(y_pred["view_t1"]), ops.stop_gradient(y_pred["view_t2"]))
            )
        return self.get_metrics_result()

    # ------------------------------------------------------------------ serialisation
    def get_config(self):
        return {"name": self.name, "trainable": self.trainable, "config": self.config.to_dict()}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        fields = dict(config.pop("config"))
        if "input_norm" not in fields:  # saved before input_norm existed: its inputs were dtype-scaled
            log.warning("checkpoint saved before input normalisation was a model option: its "
                        "inputs are scaled as it was trained (input_norm %s: integers / dtype max "
                        "- 0.5)", LEGACY_INPUT_NORM)
            fields["input_norm"] = LEGACY_INPUT_NORM
        # Weights come from the saved file; never re-download or re-read the original source.
        saved = dict(fields, weights=None)
        # Saved before the module had its own settings: its BN followed ``bn``, the distance was
        # the paper's; keep what the checkpoint was trained with (not today's defaults).
        saved.setdefault("fusion_bn", saved.get("bn", "batch"))
        saved.setdefault("fusion_distance", "euclidean")
        # Saved before the views, the start and the hinge were options: the paper's.
        saved.setdefault("change_margin", 0.0)
        saved.setdefault("view_variance", 0.0)
        saved.setdefault("fusion_views", "paper")
        saved.setdefault("tied_start", False)
        model_config = ModelConfig.from_dict(saved)
        return cls(model_config, **config)

    def get_build_config(self):
        return None

    def build_from_config(self, config):
        return None


def _public(outputs):
    if isinstance(outputs, dict):
        return {k: v for k, v in outputs.items() if k not in LOSS_OUTPUTS}
    return outputs


def build_model(config=None, **fields):
    """Build an (uncompiled) ``CorrFusionNet``.

    ``config``: a ``ModelConfig`` (``fields`` replace some of its values), or the number of
    classes with the other ``ModelConfig`` fields as keywords: ``build_model(6, backbone="small")``.
    """
    if isinstance(config, ModelConfig):
        return CorrFusionNet(config.replace(**fields))
    if config is not None:
        fields["num_classes"] = config
    return CorrFusionNet(ModelConfig(**fields))


def load_model(path, compile=True):
    """Load a ``.keras`` file saved from a ``CorrFusionNet`` (``safe_mode=True``)."""
    return keras.saving.load_model(path, compile=compile, safe_mode=True)
