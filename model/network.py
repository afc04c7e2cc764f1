"""The two-branch CorrFusionNet model and the four method variants (DESIGN.md §2, §2.2).

``CorrFusionNet`` is a subclassed ``keras.Model`` whose constructor arguments are the
``build_model`` arguments; ``get_config`` returns them, so a ``.keras`` file loads back with
``safe_mode=True`` on every backend (``model.load_model``).

Forward pass (``model((x1, x2))`` / ``model.predict``) returns a dict:

* ``prob_t1``, ``prob_t2`` — (N, K) float32 softmax probabilities;
* ``dist``, ``fusion_weight`` — (N,) CorrFusion distance and ``1 − tanh(dist)`` (corrfusion);
  ``dist`` is also returned by ``sdcca`` (distance of the two BN views);
* ``view_t1``, ``view_t2`` — the two batch-normalised views that the canonical correlation
  metric (and the DCCA loss) read: (N, hidden/reduction) for corrfusion, (N, hidden) for
  dcca/sdcca.

Training (``fit``/``evaluate``) takes labels ``(y1, y2)`` (int, 0-based); ``compute_loss`` returns
``CE_t1 + CE_t2 + extras + Σ model.losses`` and logs every term.
"""

import keras
from keras import ops

from model.backbones import (
    BACKBONES,
    ImagenetInputMapping,
    build_backbone,
    has_batch_statistics,
    scale_inputs,
)
from model.cca import canonical_correlation
from model.corrfusion import CorrFusion
from model.losses import (
    CORR_NORMS,
    SoftDecorrelation,
    correlation_loss,
    cross_entropy,
    dcca_loss,
    pair_distance,
)

__all__ = ["CorrFusionNet", "METHODS", "MethodSpec", "build_model", "load_model"]

PUBLIC_OUTPUTS = ("prob_t1", "prob_t2", "dist", "fusion_weight", "view_t1", "view_t2")


class MethodSpec:
    """One row of the §2.2 table: the layers a method adds, its forward step and its losses.

    Attributes:
        added_loss: log name of the ``add_loss`` term of the method's layers (``"decov_loss"``)
            or None.
        extra_losses: log names of the label-dependent terms returned by ``loss_terms``.
        has_views: whether the method has two BN views (``cancorr`` metric).
    """

    added_loss = None
    extra_losses = ()
    has_views = False

    def build(self, model):
        """Create the method's layers as attributes of ``model``."""

    def forward(self, model, x, y, training):
        """Return ``(h1, h2, outputs)``: what the heads read and the extra outputs."""
        return x, y, {}

    def loss_terms(self, model, y1, y2, y_pred):
        """Return ``{name: scalar}`` of the label-dependent extra losses."""
        return {}


class _Baseline(MethodSpec):
    pass


class _CorrFusionMethod(MethodSpec):
    added_loss = "decov_loss"
    extra_losses = ("corr_loss",)
    has_views = True

    def build(self, model):
        model.corrfusion = CorrFusion(
            reduction=model.reduction,
            lambda2=model.lambda2,
            rho=model.rho,
            return_views=True,
            kernel_initializer=model._initializer(100),
            name="corrfusion",
        )

    def forward(self, model, x, y, training):
        x_phi, y_phi, dist, vx, vy = model.corrfusion([x, y], training=training)
        out = {"dist": dist, "fusion_weight": 1.0 - ops.tanh(dist), "view_t1": vx, "view_t2": vy}
        return x_phi, y_phi, out

    def loss_terms(self, model, y1, y2, y_pred):
        return {"corr_loss": correlation_loss(y_pred["dist"], y1, y2, model.lambda1, model.corr_norm)}


class _BNViews(MethodSpec):
    """BN(X), BN(Y): a plain BatchNormalization on each date's 1024-d feature (no projection)."""

    has_views = True

    def build(self, model):
        model.view_bn_t1 = keras.layers.BatchNormalization(name="view_bn_t1")
        model.view_bn_t2 = keras.layers.BatchNormalization(name="view_bn_t2")

    def forward(self, model, x, y, training):
        vx = model.view_bn_t1(x, training=training)
        vy = model.view_bn_t2(y, training=training)
        return x, y, {"view_t1": vx, "view_t2": vy}


class _DCCA(_BNViews):
    extra_losses = ("dcca_loss",)

    def loss_terms(self, model, y1, y2, y_pred):
        return {"dcca_loss": dcca_loss(y_pred["view_t1"], y_pred["view_t2"])}


class _SoftDCCA(_BNViews):
    added_loss = "decov_loss"
    extra_losses = ("corr_loss",)

    def build(self, model):
        super().build(model)
        model.decorrelation = SoftDecorrelation(lambda2=model.lambda2, rho=model.rho, name="decorrelation")

    def forward(self, model, x, y, training):
        x, y, out = super().forward(model, x, y, training)
        model.decorrelation([out["view_t1"], out["view_t2"]], training=training)
        out["dist"] = pair_distance(out["view_t1"], out["view_t2"], 1e-12)
        return x, y, out

    def loss_terms(self, model, y1, y2, y_pred):
        return {"corr_loss": correlation_loss(y_pred["dist"], y1, y2, model.lambda1, model.corr_norm)}


METHODS = {
    "corrfusion": _CorrFusionMethod(),
    "baseline": _Baseline(),
    "dcca": _DCCA(),
    "sdcca": _SoftDCCA(),
}


@keras.saving.register_keras_serializable(package="corrfusion")
class CorrFusionNet(keras.Model):
    """Two-date scene classifier with CorrFusion (or a §2.2 variant); see ``build_model``.

    Args:
        num_classes: number of scene classes K.
        image_size: (H, W) of the inputs.
        channels: number of bands C.
        backbone: key of ``model.BACKBONES``.
        method: key of ``model.METHODS``.
        shared: one backbone for both dates (siamese) or one per date.
        weights: backbone weights: None (random), ``"imagenet"`` or a weights file path. Only used
            at construction; a model restored with ``from_config`` gets its weights from the file.
        hidden: units d of the two per-date Dense layers.
        reduction: CorrFusion reduction ratio r.
        lambda1: weight of the correlation loss on unchanged pairs (corrfusion, sdcca).
        lambda2: weight of the soft decorrelation loss (corrfusion, sdcca).
        rho: running covariance factor ρ.
        corr_norm: ``"batch"`` (÷ n, the original) or ``"unchanged"`` (÷ Σu).
        l2: L2 factor on the per-date Dense kernels.
        seed: seed of the head/fusion initializers and of the small CNN (keras.applications
            networks: use ``keras.utils.set_random_seed``).
        input_mapping: add ``ImagenetInputMapping`` before the backbone; None → when ``weights``
            is not None.
        **kwargs: ``name``, ``trainable``.

    Call arguments:
        inputs: ``(x1, x2)`` (N, H, W, C) images: float, scaled to [-0.5, 0.5]; or uint8/uint16
            as stored, scaled in the graph (``model.backbones.scale_inputs``, DESIGN.md §2).
        training: bool.

    Returns:
        dict, see the module docstring.
    """

    def __init__(
        self,
        num_classes,
        image_size=(64, 64),
        channels=3,
        backbone="small",
        method="corrfusion",
        shared=True,
        weights=None,
        hidden=1024,
        reduction=2,
        lambda1=0.1,
        lambda2=1e-4,
        rho=0.9,
        corr_norm="batch",
        l2=1e-4,
        seed=None,
        input_mapping=None,
        **kwargs,
    ):
        kwargs.setdefault("name", f"corrfusionnet_{method}")
        super().__init__(**kwargs)
        if method not in METHODS:
            raise ValueError(f"Unknown method {method!r}; choose one of {sorted(METHODS)}.")
        if backbone not in BACKBONES:
            raise ValueError(f"Unknown backbone {backbone!r}; choose one of {sorted(BACKBONES)}.")
        if int(num_classes) < 2:
            raise ValueError(f"num_classes must be >= 2; received num_classes={num_classes!r}.")
        if len(tuple(image_size)) != 2:
            raise ValueError(f"image_size must be (H, W); received image_size={image_size!r}.")
        if int(hidden) < 1 or int(hidden) % int(reduction):
            raise ValueError(
                f"hidden must be a positive multiple of reduction; received hidden={hidden!r}, "
                f"reduction={reduction!r}."
            )
        if corr_norm not in CORR_NORMS:
            raise ValueError(f"corr_norm must be one of {CORR_NORMS}; received corr_norm={corr_norm!r}.")
        for key, val in (("lambda1", lambda1), ("lambda2", lambda2), ("l2", l2)):
            if float(val) < 0:
                raise ValueError(f"{key} must be >= 0; received {key}={val!r}.")
        self.num_classes = int(num_classes)
        self.image_size = tuple(int(s) for s in image_size)
        self.channels = int(channels)
        self.backbone_name = backbone
        self.method = method
        self.shared = bool(shared)
        self.weights_source = None if weights is None else str(weights)
        self.hidden = int(hidden)
        self.reduction = int(reduction)
        self.lambda1 = float(lambda1)
        self.lambda2 = float(lambda2)
        self.rho = float(rho)
        self.corr_norm = corr_norm
        self.l2 = float(l2)
        self.seed = None if seed is None else int(seed)
        if input_mapping is None:
            input_mapping = weights is not None and BACKBONES[backbone].mapping != "none"
        self.input_mapping = bool(input_mapping)
        self.spec = METHODS[method]

        input_shape = (*self.image_size, self.channels)
        if self.input_mapping:
            self.mapping = ImagenetInputMapping(BACKBONES[backbone].mapping, name="input_mapping")
        if self.shared:
            self.backbone = build_backbone(backbone, self.image_size, self.channels, weights, "backbone", seed)
        else:
            self.backbone_t1 = build_backbone(backbone, self.image_size, self.channels, weights, "backbone_t1", seed)
            self.backbone_t2 = build_backbone(
                backbone, self.image_size, self.channels, weights, "backbone_t2",
                None if seed is None else seed + 1000,
            )
        #: run both dates through the backbone as one batch (shared and no batch statistics)
        self.one_pass = self.shared and not has_batch_statistics(self.backbone)
        self.pool = keras.layers.GlobalAveragePooling2D(name="gap")
        reg = keras.regularizers.L2(self.l2) if self.l2 else None
        for t, off in (("t1", 0), ("t2", 10)):
            for i in (1, 2):
                setattr(self, f"fc{i}_{t}", keras.layers.Dense(
                    self.hidden, activation="relu", kernel_regularizer=reg,
                    kernel_initializer=self._initializer(off + i), name=f"fc{i}_{t}",
                ))
            setattr(self, f"head_{t}", keras.layers.Dense(
                self.num_classes, use_bias=False, kernel_initializer=self._initializer(off + 5),
                name=f"head_{t}",
            ))
        self.softmax = keras.layers.Activation("softmax", dtype="float32", name="softmax")
        self.spec.build(self)
        self._trackers = {}
        names = ["ce_t1", "ce_t2", *self.spec.extra_losses]
        if self.spec.added_loss:
            names.append(self.spec.added_loss)
        names += ["l2", "oa_t1", "oa_t2", "oa_bi", "oa_tr"]
        if self.spec.has_views:
            names.append("cancorr")
        for n in names:
            tracker = keras.metrics.Mean(name=n)
            setattr(self, f"tracker_{n}", tracker)
            self._trackers[n] = tracker
        self.build(((None, *input_shape), (None, *input_shape)))

    def _initializer(self, offset):
        return keras.initializers.GlorotNormal(seed=None if self.seed is None else self.seed + offset)

    # ------------------------------------------------------------------ build / forward
    def build(self, input_shape):
        if self.built:
            return
        shapes = tuple(tuple(s) for s in input_shape)
        want = (*self.image_size, self.channels)
        if len(shapes) != 2 or any(tuple(s[1:]) != want for s in shapes):
            raise ValueError(
                f"CorrFusionNet expects two inputs of shape (N, {want[0]}, {want[1]}, {want[2]}); "
                f"received {input_shape!r}."
            )
        x1 = keras.KerasTensor((None, *want))
        x2 = keras.KerasTensor((None, *want))
        # One symbolic pass creates every sublayer's weights (shape inference only).
        self._forward((x1, x2), training=False)
        self.built = True

    def _pooled(self, x, backbone, training):
        if self.input_mapping:
            x = self.mapping(x)
        return self.pool(backbone(x, training=training))

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
        x1, x2 = (scale_inputs(x) for x in inputs)  # uint8/uint16 batches are scaled here
        if self.one_pass:
            # A shared backbone without batch statistics gives the same features for both dates
            # run as one batch of 2N: half the kernel launches, larger matrix products.
            f1, f2 = ops.split(self._pooled(ops.concatenate([x1, x2], axis=0), self.backbone,
                                            training), 2, axis=0)
        else:
            b1 = self.backbone if self.shared else self.backbone_t1
            b2 = self.backbone if self.shared else self.backbone_t2
            f1, f2 = self._pooled(x1, b1, training), self._pooled(x2, b2, training)
        fx, fy = self._fc(f1, "t1"), self._fc(f2, "t2")
        h1, h2, out = self.spec.forward(self, fx, fy, training)
        outputs = {
            "prob_t1": self.softmax(self.head_t1(h1)),
            "prob_t2": self.softmax(self.head_t2(h2)),
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
        """``CE_t1 + CE_t2 + method extras + Σ model.losses``; sample weights are not supported."""
        y1, y2 = self._split_labels(y)
        terms = {
            "ce_t1": cross_entropy(y1, y_pred["prob_t1"]),
            "ce_t2": cross_entropy(y2, y_pred["prob_t2"]),
        }
        terms.update(self.spec.loss_terms(self, y1, y2, y_pred))
        total = ops.sum(ops.stack(list(terms.values())))
        losses = [ops.cast(v, "float32") for v in self.losses]
        added = ops.sum(ops.stack(losses)) if losses else ops.zeros((), "float32")
        total = total + added
        l2 = self.regularization_loss()
        terms["l2"] = l2
        if self.spec.added_loss:
            # model.losses = the decorrelation loss (add_loss) + the weight regularizers.
            terms[self.spec.added_loss] = added - l2
        # batch-size weighted, like Keras' own "loss" tracker, so epoch values are per-pair means
        n = ops.cast(ops.shape(y1)[0], "float32")
        for name, value in terms.items():
            self._trackers[name].update_state(ops.stop_gradient(value), sample_weight=n)
        return total

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
        if self.spec.has_views:
            self._trackers["cancorr"].update_state(
                canonical_correlation(ops.stop_gradient(y_pred["view_t1"]), ops.stop_gradient(y_pred["view_t2"]))
            )
        return self.get_metrics_result()

    # ------------------------------------------------------------------ serialisation
    def get_config(self):
        return {
            "name": self.name,
            "trainable": self.trainable,
            "num_classes": self.num_classes,
            "image_size": list(self.image_size),
            "channels": self.channels,
            "backbone": self.backbone_name,
            "method": self.method,
            "shared": self.shared,
            "weights": self.weights_source,
            "hidden": self.hidden,
            "reduction": self.reduction,
            "lambda1": self.lambda1,
            "lambda2": self.lambda2,
            "rho": self.rho,
            "corr_norm": self.corr_norm,
            "l2": self.l2,
            "seed": self.seed,
            "input_mapping": self.input_mapping,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        # Weights come from the saved file; never re-download or re-read the original source.
        config["weights"] = None
        return cls(**config)

    def get_build_config(self):
        return None

    def build_from_config(self, config):
        return None


def build_model(
    num_classes,
    image_size=(64, 64),
    channels=3,
    backbone="small",
    method="corrfusion",
    shared=True,
    weights=None,
    hidden=1024,
    reduction=2,
    lambda1=0.1,
    lambda2=1e-4,
    rho=0.9,
    corr_norm="batch",
    l2=1e-4,
    seed=None,
):
    """Build an (uncompiled) ``CorrFusionNet``; see its docstring for the arguments."""
    return CorrFusionNet(
        num_classes=num_classes,
        image_size=image_size,
        channels=channels,
        backbone=backbone,
        method=method,
        shared=shared,
        weights=weights,
        hidden=hidden,
        reduction=reduction,
        lambda1=lambda1,
        lambda2=lambda2,
        rho=rho,
        corr_norm=corr_norm,
        l2=l2,
        seed=seed,
    )


def load_model(path, compile=True):
    """Load a ``.keras`` file saved from a ``CorrFusionNet`` (``safe_mode=True``)."""
    return keras.saving.load_model(path, compile=compile, safe_mode=True)
