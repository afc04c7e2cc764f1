"""The CorrFusion module (docs/DESIGN.md §2.1)."""

import keras
from keras import ops

from model.config import FUSION_DISTANCES
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
        self.distance = distance
        self.reduction = int(reduction)
        self.lambda2 = float(lambda2)
        self.rho = float(rho)
        self.epsilon = float(epsilon)
        self.return_views = bool(return_views)
        self.frozen_bn = bool(frozen_bn)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)
        self.kernel_regularizer = keras.regularizers.get(kernel_regularizer)

    def _dense(self, units, name, index):
        return keras.layers.Dense(
            units,
            activation="relu",
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
        self.squeeze_t1 = self._dense(m, "squeeze_t1", 0)
        self.squeeze_t2 = self._dense(m, "squeeze_t2", 1)
        self.bn_t1 = keras.layers.BatchNormalization(dtype=self.dtype_policy, name="bn_t1")
        self.bn_t2 = keras.layers.BatchNormalization(dtype=self.dtype_policy, name="bn_t2")
        self.excite_t1 = self._dense(d, "excite_t1", 2)
        self.excite_t2 = self._dense(d, "excite_t2", 3)
        self.squeeze_t1.build(sx)
        self.squeeze_t2.build(sy)
        self.bn_t1.build((sx[0], m))
        self.bn_t2.build((sy[0], m))
        self.excite_t1.build((sx[0], m))
        self.excite_t2.build((sy[0], m))
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
        bn_training = False if self.frozen_bn else training
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
                "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
                "bias_initializer": keras.initializers.serialize(self.bias_initializer),
                "kernel_regularizer": keras.regularizers.serialize(self.kernel_regularizer),
            }
        )
        return config
