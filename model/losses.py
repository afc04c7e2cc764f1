"""Loss terms of CorrFusionNet (docs/DESIGN.md §2.1, §2.2), as pure ``keras.ops`` functions plus the
``SoftDecorrelation`` layer that keeps the running covariances of the soft-DCCA variant.

* ``cross_entropy(labels, values, class_weights, from_logits)`` — mean sparse categorical
  cross-entropy from logits (what the network uses) or probabilities, or its class-weighted mean.
* ``pair_distance(a, b, eps)`` — ``sqrt(Σ_j (a_ij − b_ij)² + eps)`` per row.
* ``correlation_loss(dist, y1, y2, lambda1, corr_norm, margin)`` — λ1 · Σ dist_i u_i / n (or / Σu),
  plus a hinge max(0, margin − dist_i) on changed pairs when margin > 0.
* ``view_variance_loss(vx, vy, gamma)`` — γ · Σ_dates mean_j max(0, 1 − std_i(v_ij)): the views'
  spread over the batch (VICReg's variance term), against views that collapse to one pattern.
* ``running_covariance(cov, b, rho)`` — ρ·C + (1 − ρ)·BᵀB/(n − 1), gradient only through B.
* ``decorrelation_penalty(cov, form)`` — Σ_{j≠k} |C_jk| (or the original's Σ|C| − Σ diag C).
* ``dcca_loss`` — re-exported from ``model.cca``.
* ``SoftDecorrelation`` — layer holding one running covariance per date (SDL, soft DCCA).
"""

import keras
from keras import ops

from model.cca import dcca_loss
from model.config import CORR_NORMS, DECOV_INITS, DECOV_PENALTIES

__all__ = [
    "CORR_NORMS",
    "cross_entropy",
    "pair_distance",
    "correlation_loss",
    "view_variance_loss",
    "running_covariance",
    "decorrelation_penalty",
    "replica_sum",
    "dcca_loss",
    "SoftDecorrelation",
]



def cross_entropy(labels, values, class_weights=None, from_logits=False):
    """Mean sparse categorical cross-entropy; ``labels`` (n,) int 0-based, ``values`` (n, K).

    ``from_logits=True``: ``values`` are logits and the loss is ``logsumexp(z) − z_y`` in float32 on
    every backend, exact for any logit gap (a confidently wrong pair costs its gap and keeps the
    gradient softmax − one-hot). ``from_logits=False``: ``values`` are probabilities, which Keras
    clips to [1e-7, 1 − 1e-7] (the loss saturates at −log 1e-7 ≈ 16.1 and the gradient at zero
    there), unless the TensorFlow backend recovers the logits of a softmax output; the network
    uses the logits.

    ``class_weights`` (K,) floats: the weighted mean ``Σ_i w_{y_i}·CE_i / Σ_i w_{y_i}`` instead (0
    when every pair of the batch has weight 0).
    """
    values = ops.cast(values, "float32")
    labels = ops.cast(labels, "int32")
    ce = ops.sparse_categorical_crossentropy(labels, values, from_logits=from_logits)
    if class_weights is None:
        return ops.mean(ce)
    w = ops.take(ops.convert_to_tensor(class_weights, "float32"), labels, axis=0)
    return ops.sum(w * ce) / ops.maximum(ops.sum(w), 1e-12)


def pair_distance(a, b, eps=1e-12):
    """Per-row Euclidean distance ``sqrt(Σ_j (a_ij − b_ij)² + eps)`` in float32, shape (n,)."""
    a = ops.cast(a, "float32")
    b = ops.cast(b, "float32")
    return ops.sqrt(ops.sum(ops.square(a - b), axis=-1) + eps)


def correlation_loss(dist, y1, y2, lambda1=0.1, corr_norm="batch", margin=0.0):
    """Correlation loss on unchanged pairs: ``λ1 · Σ_i dist_i · u_i / n`` (§2.1), with an optional
    hinge on changed pairs: ``λ1 · Σ_i [u_i·dist_i + (1 − u_i)·max(0, margin − dist_i)] / n``.

    The hinge (``margin > 0``, a contrastive loss in the sense of Hadsell et al. 2006) pushes the
    distance of changed pairs up to ``margin``, so that CorrFusion's w = 1 − tanh(dist) is small
    where the class changed; ``margin = 0`` is the paper's loss exactly.

    Args:
        dist: (n,) per-pair distances.
        y1, y2: (n,) integer labels; ``u_i = 1`` where they are equal (unchanged pair).
        lambda1: weight λ1.
        corr_norm: ``"batch"`` divides by n (the original), ``"unchanged"`` divides the unchanged
            pairs' sum by Σu and the changed pairs' hinge sum by Σ(1 − u) (0 when a batch has
            none of a kind).
        margin: distance below which a changed pair is penalised (0: no hinge term).
    """
    if corr_norm not in CORR_NORMS:
        raise ValueError(f"corr_norm must be one of {CORR_NORMS}; received corr_norm={corr_norm!r}.")
    if not float(margin) >= 0:
        raise ValueError(f"margin must be >= 0; received margin={margin!r}.")
    dist = ops.cast(dist, "float32")
    u = ops.cast(ops.equal(ops.cast(y1, "int32"), ops.cast(y2, "int32")), "float32")
    total = ops.sum(dist * u)
    hinge = ops.sum(ops.relu(float(margin) - dist) * (1.0 - u)) if margin else None
    if corr_norm == "batch":
        n = ops.maximum(ops.cast(ops.shape(dist)[0], "float32"), 1.0)
        return lambda1 * (total if hinge is None else total + hinge) / n
    loss = total / ops.maximum(ops.sum(u), 1.0)
    if hinge is not None:
        loss = loss + hinge / ops.maximum(ops.sum(1.0 - u), 1.0)
    return lambda1 * loss


def view_variance_loss(vx, vy, gamma=1.0, eps=1e-4, batch_sum=None):
    """``γ · Σ_{v ∈ (vx, vy)} mean_j max(0, 1 − √(Var_i(v_ij) + eps))``: the variance term of
    VICReg (Bardes et al. 2022) on the two (n, m) views.

    The correlation loss alone is cheapest to satisfy by mapping every pair of both dates to one
    and the same view pattern (dist ≈ 0 for every pair, changed or not, so w is the same for all):
    a per-pair standardised view (``fusion_views="pair"``) keeps unit variance over its own
    features but may have none over the batch. This hinge keeps each view feature's standard
    deviation over the batch at 1 or above, so the two views of a pair can only agree by carrying
    something of that pair. Needs n ≥ 2 (the variance over a batch of one is 0).

    ``batch_sum``: a function summing n, Σv and then Σ(v − mean)² over the parts of a batch split
    across replicas (``replica_sum``), so that every replica gets the variance of the whole batch.
    """
    total = 0.0
    for v in (vx, vy):
        v = ops.cast(v, "float32")
        if batch_sum is None:
            var = ops.var(v, axis=0)
        else:
            n = batch_sum(ops.cast(ops.shape(v)[0], "float32"))
            mean = batch_sum(ops.sum(v, axis=0)) / n  # two passes: no cancellation in float32
            var = batch_sum(ops.sum(ops.square(v - mean), axis=0)) / n
        std = ops.sqrt(var + eps)
        total = total + ops.mean(ops.relu(1.0 - std))
    return gamma * total


def running_covariance(cov, b, rho=0.9, batch_sum=None):
    """``ρ·C + (1 − ρ)·BᵀB/(n − 1)`` in float32; ``C`` enters without gradient.

    ``b`` is the (n, m) batch-normalised projection (not re-centred, as in the original).
    ``batch_sum``: a function summing BᵀB and n over the parts of a batch split across replicas
    (``replica_sum``), so that every replica gets the whole batch's covariance.
    """
    b = ops.cast(b, "float32")
    n = ops.cast(ops.shape(b)[0], "float32")
    gram = ops.matmul(ops.transpose(b), b)
    if batch_sum is not None:
        gram, n = batch_sum(gram), batch_sum(n)
    batch_cov = gram / ops.maximum(n - 1.0, 1.0)
    return rho * ops.stop_gradient(ops.cast(cov, "float32")) + (1.0 - rho) * batch_cov


def replica_sum(x):
    """Σ of ``x`` over the replicas of a ``tf.distribute`` strategy, differentiable (the
    gradient of an all-reduce sum is an all-reduce sum); ``x`` itself on other backends, outside a
    replica context or with one replica."""
    if keras.backend.backend() != "tensorflow":
        return x
    import tensorflow as tf  # deferred: TensorFlow loads on first use

    ctx = tf.distribute.get_replica_context()
    if ctx is None or ctx.num_replicas_in_sync == 1:
        return x
    return ctx.all_reduce(tf.distribute.ReduceOp.SUM, x)


def decorrelation_penalty(cov, form="offdiag"):
    """``Σ_{j≠k} |C_jk|`` of a square matrix (float32 scalar); ``form="original"``: the original
    code's ``Σ|C| − Σ diag(C)``, which adds 2·|C_jj| for every negative diagonal entry."""
    if form not in DECOV_PENALTIES:
        raise ValueError(f"form must be one of {DECOV_PENALTIES}; received form={form!r}.")
    cov = ops.cast(cov, "float32")
    diagonal = ops.diagonal(cov)
    return ops.sum(ops.abs(cov)) - ops.sum(ops.abs(diagonal) if form == "offdiag" else diagonal)


@keras.saving.register_keras_serializable(package="corrfusion")
class SoftDecorrelation(keras.layers.Layer):
    """Soft decorrelation loss (SDL, Chang et al. 2018) on two views, with running covariances.

    The one home of the running covariances (``model.corrfusion.CorrFusion`` holds one of these
    layers): one non-trainable float32 weight per view (``cov_t1``, ``cov_t2``, initialised to the
    identity, to a random orthogonal matrix as the original CorrFusion did, or to zeros as the
    original SoftDCCANet did). In training mode each call
    updates ``C ← ρ·C + (1 − ρ)·BᵀB/(n − 1)`` and returns ``λ2 · Σ_views Σ_{j≠k} |C_jk|`` (or the
    original's ``Σ|C| − Σ diag C``; gradients only through the current batch term). In inference
    the same value is computed without touching the state. The caller decides where the loss goes
    (``CorrFusion`` adds it with ``add_loss``; ``CorrFusionNet`` logs it as ``decov_loss``).

    Args:
        lambda2: weight λ2 of the loss.
        rho: running-average factor ρ in [0, 1).
        init: ``"identity"``, ``"orthogonal"`` or ``"zeros"`` (``model.config.DECOV_INITS``): the
            covariances' start.
        penalty: ``"offdiag"`` or ``"original"`` (``model.config.DECOV_PENALTIES``), see
            ``decorrelation_penalty``.
        seed: seed of the orthogonal start (date 2 uses seed + 1).
        **kwargs: base layer arguments (``name``, ``dtype``, ...).

    Call arguments:
        inputs: list ``[a, b]`` of (n, m1) and (n, m2) tensors.
        training: bool; the running covariances move only when True.

    Attribute ``synchronized`` (False; not part of the config): with the TensorFlow backend under
    a ``tf.distribute`` strategy the batch covariance is summed over the replicas
    (``replica_sum``), so each replica uses the covariance of the whole (global) batch, as
    synchronised batch normalisation does; ``training.multiworker`` sets it.

    Returns:
        The float32 scalar loss (shape ``()``).
    """

    def __init__(self, lambda2=1e-4, rho=0.9, init="identity", penalty="offdiag", seed=None,
                 **kwargs):
        super().__init__(**kwargs)
        if not 0.0 <= float(rho) < 1.0:
            raise ValueError(f"rho must be in [0, 1); received rho={rho!r}.")
        if float(lambda2) < 0:
            raise ValueError(f"lambda2 must be >= 0; received lambda2={lambda2!r}.")
        if init not in DECOV_INITS:
            raise ValueError(f"init must be one of {DECOV_INITS}; received init={init!r}.")
        if penalty not in DECOV_PENALTIES:
            raise ValueError(f"penalty must be one of {DECOV_PENALTIES}; received penalty={penalty!r}.")
        self.lambda2 = float(lambda2)
        self.rho = float(rho)
        self.init = init
        self.penalty = penalty
        self.seed = None if seed is None else int(seed)
        self.synchronized = False

    def _initializer(self, offset):
        if self.init in ("identity", "zeros"):
            return self.init
        return keras.initializers.Orthogonal(seed=None if self.seed is None else self.seed + offset)

    def build(self, input_shape):
        if not isinstance(input_shape, (list, tuple)) or len(input_shape) != 2:
            raise ValueError(
                f"SoftDecorrelation expects a list of two shapes; received {input_shape!r}."
            )
        s1, s2 = input_shape
        self.cov_t1 = self.add_weight(
            name="cov_t1", shape=(s1[-1], s1[-1]), initializer=self._initializer(0),
            dtype="float32", trainable=False, aggregation="mean",
        )
        self.cov_t2 = self.add_weight(
            name="cov_t2", shape=(s2[-1], s2[-1]), initializer=self._initializer(1),
            dtype="float32", trainable=False, aggregation="mean",
        )

    def call(self, inputs, training=None):
        a, b = inputs
        batch_sum = replica_sum if self.synchronized else None
        c1 = running_covariance(self.cov_t1, a, self.rho, batch_sum)
        c2 = running_covariance(self.cov_t2, b, self.rho, batch_sum)
        if training:
            self.cov_t1.assign(ops.stop_gradient(c1))
            self.cov_t2.assign(ops.stop_gradient(c2))
        return self.lambda2 * (decorrelation_penalty(c1, self.penalty)
                               + decorrelation_penalty(c2, self.penalty))

    def compute_output_shape(self, input_shape):
        return ()

    def compute_output_spec(self, inputs, training=None):
        return keras.KerasTensor((), dtype="float32")

    def get_config(self):
        config = super().get_config()
        config.update({"lambda2": self.lambda2, "rho": self.rho, "init": self.init,
                       "penalty": self.penalty, "seed": self.seed})
        return config
