"""Canonical correlation (DESIGN.md §2.1) and the DCCA loss with its closed-form gradient (§2.2).

Both functions take two views ``h1`` (n, d1) and ``h2`` (n, d2), compute in float32 whatever the
input dtype (mixed precision safe) and use only ``keras.ops``, so they run on every backend.

With centred views H̄1, H̄2 and ridge ``r``::

    S11 = H̄1ᵀH̄1/(n−1) + rI,  S22 = H̄2ᵀH̄2/(n−1) + rI,  S12 = H̄1ᵀH̄2/(n−1)
    T   = S11^{-1/2} S12 S22^{-1/2}

The inverse square roots come from an eigen-decomposition in which eigenvalues ``<= eps`` are
dropped (a pseudo-inverse square root), as in the original code.

``canonical_correlation`` (a metric, logged every training step) does not form T: with the ridge
``r > 0`` every eigenvalue of S11, S22 is at least r, so nothing is dropped and

    trace(T Tᵀ) = trace(S11⁻¹ S12 S22⁻¹ S21)                               (d-space)
                = trace(M1 M2),   Mi = Gi (Gi + rI)⁻¹,  Gi = H̄iH̄iᵀ/(n−1)     (n-space)

(push-through identity ``(AᵀA + rI)⁻¹Aᵀ = Aᵀ(AAᵀ + rI)⁻¹``): linear solves instead of two
eigen-decompositions of d × d matrices. The n-space form is used when n − 1 <= min(d1, d2) (the
training case: a batch of 32–64 pairs, views 512–1024 wide), the d-space form otherwise; each is the
one whose float32 round-off stays second order (the other one divides the round-off in the null
directions of the wider Gram matrices by r). On this project's CPU the metric went from ~25–250 ms
to about 1 ms per training step (benchmarks/cancorr_cost.py); eigen-decompositions are slow on GPUs
too.
"""

from keras import ops

__all__ = ["canonical_correlation", "dcca_loss", "inverse_sqrt", "cca_matrices", "finite_views"]


def _check_views(h1, h2):
    s1, s2 = tuple(h1.shape), tuple(h2.shape)
    if len(s1) != 2 or len(s2) != 2:
        raise ValueError(
            f"CCA views must be rank 2 (n, d); received shapes h1={s1}, h2={s2}."
        )
    if s1[0] is not None and s2[0] is not None and s1[0] != s2[0]:
        raise ValueError(
            f"CCA views must have the same number of rows; received h1={s1}, h2={s2}."
        )


def inverse_sqrt(s, eps=1e-12):
    """Pseudo inverse square root of a symmetric PSD matrix, eigenvalues ``<= eps`` dropped."""
    e, v = ops.eigh(s)
    keep = ops.greater(e, eps)
    inv = ops.where(keep, ops.reciprocal(ops.sqrt(ops.where(keep, e, ops.ones_like(e)))), 0.0)
    return ops.matmul(v * inv[None, :], ops.transpose(v))


def finite_views(h1, h2):
    """``(h1, h2, ok)`` with non-finite entries zeroed and ``ok`` true when there were none.

    A diverged network (NaN/inf features) would make the eigen-decomposition fail and abort the
    step with a backend error; zeroing keeps the step running so that the NaN loss is reported
    (callers return NaN when ``ok`` is false) and training can stop with a clear message.
    """
    ok = ops.logical_and(ops.all(ops.isfinite(h1)), ops.all(ops.isfinite(h2)))
    return ops.where(ok, h1, 0.0), ops.where(ok, h2, 0.0), ok


def cca_matrices(h1, h2, r=1e-4, eps=1e-12):
    """Return ``(T, K11, K22, h1c, h2c, n)`` for float32 views (see module docstring)."""
    n = ops.shape(h1)[0]
    nm1 = ops.maximum(ops.cast(n, "float32") - 1.0, 1.0)
    h1c = h1 - ops.mean(h1, axis=0, keepdims=True)
    h2c = h2 - ops.mean(h2, axis=0, keepdims=True)
    d1, d2 = h1.shape[-1], h2.shape[-1]
    s11 = ops.matmul(ops.transpose(h1c), h1c) / nm1 + r * ops.eye(d1, dtype="float32")
    s22 = ops.matmul(ops.transpose(h2c), h2c) / nm1 + r * ops.eye(d2, dtype="float32")
    s12 = ops.matmul(ops.transpose(h1c), h2c) / nm1
    k11 = inverse_sqrt(s11, eps)
    k22 = inverse_sqrt(s22, eps)
    t = ops.matmul(ops.matmul(k11, s12), k22)
    return t, k11, k22, h1c, h2c, nm1


def canonical_correlation(h1, h2, r=1e-4, eps=1e-12):
    """Instance-level canonical correlation ``sqrt(trace(T Tᵀ) + eps)`` (§2.1), a float32 scalar.

    Computed in the n × n Gram space (see the module docstring): the same value as forming T,
    without a d × d eigen-decomposition.

    Args:
        h1: (n, d1) first view.
        h2: (n, d2) second view.
        r: ridge added to the diagonal of the covariance matrices (> 0).
        eps: added under the square root.
    """
    _check_views(h1, h2)
    if not float(r) > 0:
        raise ValueError(f"canonical_correlation needs a ridge r > 0; received r={r!r}.")
    h1, h2, ok = finite_views(ops.cast(h1, "float32"), ops.cast(h2, "float32"))
    n = ops.shape(h1)[0]
    nm1 = ops.maximum(ops.cast(n, "float32") - 1.0, 1.0)
    h1c = h1 - ops.mean(h1, axis=0, keepdims=True)
    h2c = h2 - ops.mean(h2, axis=0, keepdims=True)
    d_min = min(int(h1.shape[-1]), int(h2.shape[-1]))

    def n_space():
        ridge = r * ops.eye(n, dtype="float32")

        def hat(hc):
            g = ops.matmul(hc, ops.transpose(hc)) / nm1
            return ops.solve(g + ridge, g)  # G (G + rI)⁻¹ = (G + rI)⁻¹ G: they commute

        return ops.sum(hat(h1c) * ops.transpose(hat(h2c)))

    def d_space():
        def cov(a, b):
            return ops.matmul(ops.transpose(a), b) / nm1

        s12 = cov(h1c, h2c)
        a = ops.solve(cov(h1c, h1c) + r * ops.eye(h1.shape[-1], dtype="float32"), s12)
        b = ops.solve(cov(h2c, h2c) + r * ops.eye(h2.shape[-1], dtype="float32"), ops.transpose(s12))
        return ops.sum(a * ops.transpose(b))

    if isinstance(n, int):  # static batch size (JAX, fixed-size batches): pick the form now
        trace = n_space() if n - 1 <= d_min else d_space()
    else:
        trace = ops.cond(n - 1 <= d_min, n_space, d_space)
    return ops.where(ok, ops.sqrt(ops.maximum(trace, 0.0) + eps), float("nan"))


def _dcca_core(r, eps):
    @ops.custom_gradient
    def core(h1, h2):
        t, k11, k22, h1c, h2c, nm1 = cca_matrices(h1, h2, r, eps)
        u, s, vh = ops.svd(t, full_matrices=False)
        # singular values whose square is <= eps are dropped (as the eigenvalues of T Tᵀ were
        # thresholded in the original); the gradient uses the same set.
        keep = ops.cast(ops.greater(ops.square(s), eps), "float32")
        loss = -ops.sum(s * keep)

        def grad(*args, upstream=None):
            # TF and JAX call grad(upstream); torch passes (*args, upstream=...).
            if upstream is None:
                (upstream,) = args
            upstream = ops.cast(upstream, "float32")
            m1 = ops.matmul(k11, u)
            m2 = ops.matmul(k22, ops.transpose(vh))
            delta12 = ops.matmul(m1 * keep[None, :], ops.transpose(m2))
            delta11 = -0.5 * ops.matmul(m1 * (s * keep)[None, :], ops.transpose(m1))
            delta22 = -0.5 * ops.matmul(m2 * (s * keep)[None, :], ops.transpose(m2))
            # gradient of the *correlation* w.r.t. the views ...
            g1 = (2.0 * ops.matmul(h1c, delta11) + ops.matmul(h2c, ops.transpose(delta12))) / nm1
            g2 = (ops.matmul(h1c, delta12) + 2.0 * ops.matmul(h2c, delta22)) / nm1
            # ... and the loss is minus the correlation, scaled by the upstream gradient.
            return -upstream * g1, -upstream * g2

        return loss, grad

    return core


def dcca_loss(h1, h2, r=1e-4, eps=1e-12):
    """DCCA loss ``-Σ σ_k(T)`` (minus the total canonical correlation, §2.2), a float32 scalar.

    The gradient is the closed form of Andrew et al. (2013), implemented with
    ``keras.ops.custom_gradient``: it is the gradient of the *loss* (the negated correlation
    gradient) and it is multiplied by the upstream gradient.

    Args:
        h1: (n, d1) first view (any float dtype; computed in float32).
        h2: (n, d2) second view.
        r: ridge added to the diagonal of the covariance matrices.
        eps: eigenvalues ``<= eps`` are dropped in the inverse square roots, and singular values
            with ``σ² <= eps`` are left out of the sum.
    """
    _check_views(h1, h2)
    h1, h2, ok = finite_views(ops.cast(h1, "float32"), ops.cast(h2, "float32"))
    return ops.where(ok, _dcca_core(float(r), float(eps))(h1, h2), float("nan"))

