"""The CorrFusion module (docs/DESIGN.md §2.1)."""

import keras
from keras import ops

from model.config import FUSION_DISTANCES, FUSION_VIEWS
from model.losses import SoftDecorrelation, pair_distance

__all__ = ["CorrFusion", "clone_initializer"]


def clone_initializer(initializer, offset=0):
    """A fresh copy of ``initializer``; an integer seed is shifted by ``offset``.

    Keras 3 random initializers return the same values on every call of one instance, so each
    sublayer gets its own copy (and, with a fixed seed, its own seed).
    """
    config = keras.initializers.serialize(initializer)
    inner = config.get("config") if isinstance(config, dict) else None
    if isinstance(inner, dict) and isinstance(inner.get("seed"), int):
        inner = dict(inner, seed=inner["seed"] + offset)
        config = dict(config, config=inner)
    return keras.initializers.deserialize(config)


@keras.saving.register_keras_serializable(package="corrfusion")
class CorrFusion(keras.layers.Layer):
    """Correlation based fusion of two feature vectors (docs/DESIGN.md §2.1, steps 1–6).

    For a batch of n pairs X, Y ∈ R^{n×d}::

        X_fc = ReLU(X·A1 + a1)              (squeeze_t1, d → d/r)   Y likewise (squeeze_t2)
        X_bn = BN1(X_fc)                     (bn_t1)                 Y_bn = BN2(Y_fc) (bn_t2)
        (views="batch": X_fc = X·A1 + a1, BN without scale and offset; views="pair": X_fc likewise,
         X_bn = LayerNorm(X_fc) over its own features, without scale and offset)
        X_re = ReLU(X_bn·B1 + b1)           (excite_t1, d/r → d)    Y likewise (excite_t2)
        dist = sqrt(Σ_j (X_bn − Y_bn)² + ε)          (distance="euclidean", the paper's)
        dist = sqrt(Σ_j (X_bn − Y_bn)² + ε) / √(d/r) (distance="rms": per-feature RMS difference)
        w    = 1 − tanh(dist)
        X_phi = X + w ⊙ Y_re,  Y_phi = Y + w ⊙ X_re

    With ``lambda2 > 0`` the layer holds a ``model.losses.SoftDecorrelation`` sublayer
    (``decorrelation``) on ``X_bn``, ``Y_bn``, whose running covariances ``cov_t1``, ``cov_t2``
    (d/r × d/r, float32, non-trainable, identity at first) move in training mode by
    ``C ← ρ·C + (1 − ρ)·X_bnᵀX_bn/(n − 1)`` (a real variable update, unlike the original code);
    its loss ``λ2 · Σ_dates Σ_{j≠k} |C_jk|`` is added with ``add_loss``. Outside training the state
    is left untouched; the loss is still computed so evaluation reports it. ``CorrFusionNet``
    builds this layer with ``lambda2=0`` and applies its own ``SoftDecorrelation`` to the returned
    views, so that it can log the term by name (one code path with the soft-DCCA method).

    Args:
        reduction: reduction ratio r of the squeeze layers (d/r units). ``d`` must be divisible.
        lambda2: weight λ2 of the soft decorrelation loss (0: no decorrelation sublayer).
        rho: running-average factor ρ in [0, 1).
        epsilon: ε under the square root of the distance.
        return_views: also return the batch-normalised views ``X_bn``, ``Y_bn``.
        frozen_bn: run BN1, BN2 in inference mode always (moving mean 0, variance 1 for ever: a
            trainable affine map γ·x/√(1 + ε) + β), as the original's TF1 graph did.
        distance: ``"euclidean"`` (the paper's) or ``"rms"`` (÷ √(d/r): with batch-statistics BN
            every feature has unit variance, so the Euclidean distance grows like √(d/r) and w
            vanishes at the paper's width; the RMS difference does not depend on the width).
        views: ``"paper"``: X_fc = ReLU(X·A1 + a1), X_bn = BN(X_fc) with a trainable scale and
            offset, as the paper. ``"batch"``: X_fc = X·A1 + a1 (no ReLU) and BN without scale or
            offset, so that in training every view feature has zero mean and unit variance over
            the batch. ``"pair"``: X_fc = X·A1 + a1 and each view standardised over its own d/r
            features (``LayerNormalization`` without scale or offset, sublayers ``ln_t1``,
            ``ln_t2``), so that Σ_j (X_bn − Y_bn)² = 2·(d/r)·(1 − r_xy) with r_xy the Pearson
            correlation of the pair's two squeezed vectors: with ``distance="rms"``,
            dist = √(2(1 − r_xy)) ∈ [0, 2], which depends on the pair alone (no batch statistics,
            no moving averages: training and inference agree). With ``"batch"`` and ``"pair"``
            the correlation loss cannot shrink dist by killing features (a ReLU that outputs 0 for
            every pair, which BN maps to the same constant in both dates) or by scaling them down.
        tied_start: date 2's squeeze and excite layers start as copies of date 1's (separate
            weights that then train apart), so that the two views of an unchanged pair agree from
            the first step, as the shared backbone's features do; False: four independent draws
            (the original's), whose views start uncorrelated.
        kernel_initializer: initializer of the four Dense kernels.
        bias_initializer: initializer of the four Dense biases.
        kernel_regularizer: optional regularizer of the four Dense kernels.
        **kwargs: base layer arguments (``name``, ``dtype``, ...).

    Call arguments:
        inputs: list ``[x, y]`` of two (n, d) tensors.
        training: bool; batch statistics and the covariance update are used only when True.

    Returns:
        ``(x_phi, y_phi, dist)`` with shapes (n, d), (n, d), (n,); ``dist`` is float32. With
        ``return_views=True`` also ``x_bn``, ``y_bn``, each (n, d/r).
    """

    def __init__(
        self,
        reduction=2,
        lambda2=1e-4,
        rho=0.9,
        epsilon=1e-12,
        return_views=False,
        frozen_bn=False,
        distance="euclidean",
        views="paper",
        tied_start=False,
        kernel_initializer="glorot_normal",
        bias_initializer="zeros",
        kernel_regularizer=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if int(reduction) != reduction or int(reduction) < 1:
            raise ValueError(f"reduction must be a positive integer; received reduction={reduction!r}.")
        if not 0.0 <= float(rho) < 1.0:
            raise ValueError(f"rho must be in [0, 1); received rho={rho!r}.")
        if float(lambda2) < 0:
            raise ValueError(f"lambda2 must be >= 0; received lambda2={lambda2!r}.")
        if float(epsilon) < 0:
            raise ValueError(f"epsilon must be >= 0; received epsilon={epsilon!r}.")
        if distance not in FUSION_DISTANCES:
            raise ValueError(f"distance must be one of {FUSION_DISTANCES}; received distance={distance!r}.")
        if views not in FUSION_VIEWS:
            raise ValueError(f"views must be one of {tuple(FUSION_VIEWS)}; received views={views!r}.")
        self.distance = distance
        self.views = views
        self.tied_start = bool(tied_start)
        self.reduction = int(reduction)
        self.lambda2 = float(lambda2)
        self.rho = float(rho)
        self.epsilon = float(epsilon)
        self.return_views = bool(return_views)
        self.frozen_bn = bool(frozen_bn)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)
        self.kernel_regularizer = keras.regularizers.get(kernel_regularizer)

    def _dense(self, units, name, index, activation="relu"):
        return keras.layers.Dense(
            units,
            activation=activation,
            kernel_initializer=clone_initializer(self.kernel_initializer, index),
            bias_initializer=clone_initializer(self.bias_initializer, index),
            kernel_regularizer=self.kernel_regularizer,
            dtype=self.dtype_policy,
            name=name,
        )

    def _check_shapes(self, input_shape):
        if not isinstance(input_shape, (list, tuple)) or len(input_shape) != 2:
            raise ValueError(f"CorrFusion expects a list of two shapes [x, y]; received {input_shape!r}.")
        sx, sy = (tuple(s) for s in input_shape)
        if len(sx) != 2 or len(sy) != 2 or sx[-1] != sy[-1] or sx[-1] is None:
            raise ValueError(
                "CorrFusion expects two (n, d) inputs with the same known d; "
                f"received shapes x={sx}, y={sy}."
            )
        d = sx[-1]
        if d % self.reduction:
            raise ValueError(
                f"Feature size d={d} is not divisible by reduction={self.reduction}."
            )
        return sx, sy, d

    def build(self, input_shape):
        sx, sy, d = self._check_shapes(input_shape)
        m = d // self.reduction
        paper = self.views == "paper"
        squeeze = "relu" if paper else None
        self.squeeze_t1 = self._dense(m, "squeeze_t1", 0, squeeze)
        self.squeeze_t2 = self._dense(m, "squeeze_t2", 1, squeeze)
        if self.views == "pair":
            norm = dict(axis=-1, center=False, scale=False, dtype=self.dtype_policy)
            self.bn_t1 = keras.layers.LayerNormalization(name="ln_t1", **norm)
            self.bn_t2 = keras.layers.LayerNormalization(name="ln_t2", **norm)
        else:
            norm = dict(center=paper, scale=paper, dtype=self.dtype_policy)
            self.bn_t1 = keras.layers.BatchNormalization(name="bn_t1", **norm)
            self.bn_t2 = keras.layers.BatchNormalization(name="bn_t2", **norm)
        self.excite_t1 = self._dense(d, "excite_t1", 2)
        self.excite_t2 = self._dense(d, "excite_t2", 3)
        self.squeeze_t1.build(sx)
        self.squeeze_t2.build(sy)
        self.bn_t1.build((sx[0], m))
        self.bn_t2.build((sy[0], m))
        self.excite_t1.build((sx[0], m))
        self.excite_t2.build((sy[0], m))
        if self.tied_start:  # date 2's squeeze and excite start as copies of date 1's
            for a, b in ((self.squeeze_t1, self.squeeze_t2), (self.excite_t1, self.excite_t2)):
                b.kernel.assign(a.kernel)
                b.bias.assign(a.bias)
        if self.lambda2:
            self.decorrelation = SoftDecorrelation(
                lambda2=self.lambda2, rho=self.rho, name="decorrelation"
            )
            self.decorrelation.build([(sx[0], m), (sy[0], m)])

    @property
    def cov_t1(self):
        """Running covariance of date 1 (the ``decorrelation`` sublayer's)."""
        return self.decorrelation.cov_t1

    @property
    def cov_t2(self):
        return self.decorrelation.cov_t2

    def call(self, inputs, training=None):
        x, y = inputs
        bn_training = False if self.frozen_bn else training  # (LayerNorm ignores it)
        x_bn = self.bn_t1(self.squeeze_t1(x), training=bn_training)
        y_bn = self.bn_t2(self.squeeze_t2(y), training=bn_training)
        x_re = self.excite_t1(x_bn)
        y_re = self.excite_t2(y_bn)
        dist = pair_distance(x_bn, y_bn, self.epsilon)
        if self.distance == "rms":
            dist = dist / float(x_bn.shape[-1]) ** 0.5
        w = ops.cast(1.0 - ops.tanh(dist), x_re.dtype)[:, None]
        x_phi = x + w * y_re
        y_phi = y + w * x_re
        if self.lambda2:
            self.add_loss(self.decorrelation([x_bn, y_bn], training=training))
        if self.return_views:
            return x_phi, y_phi, dist, x_bn, y_bn
        return x_phi, y_phi, dist

    def compute_output_shape(self, input_shape):
        sx, sy, d = self._check_shapes(input_shape)
        out = (sx, sy, (sx[0],))
        if self.return_views:
            out += ((sx[0], d // self.reduction), (sy[0], d // self.reduction))
        return out

    def compute_output_spec(self, inputs, training=None):
        x, y = inputs
        sx, sy, d = self._check_shapes([x.shape, y.shape])
        dt = self.compute_dtype
        out = (
            keras.KerasTensor(sx, dtype=dt),
            keras.KerasTensor(sy, dtype=dt),
            keras.KerasTensor((sx[0],), dtype="float32"),
        )
        if self.return_views:
            m = d // self.reduction
            out += (keras.KerasTensor((sx[0], m), dtype=dt), keras.KerasTensor((sy[0], m), dtype=dt))
        return out

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "reduction": self.reduction,
                "lambda2": self.lambda2,
                "rho": self.rho,
                "epsilon": self.epsilon,
                "return_views": self.return_views,
                "frozen_bn": self.frozen_bn,
                "distance": self.distance,
                "views": self.views,
                "tied_start": self.tied_start,
                "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
                "bias_initializer": keras.initializers.serialize(self.bias_initializer),
                "kernel_regularizer": keras.regularizers.serialize(self.kernel_regularizer),
            }
        )
        return config
