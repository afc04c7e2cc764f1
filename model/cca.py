"""Canonical correlation (docs/DESIGN.md §2.1) and the DCCA loss with its closed-form gradient (§2.2).

Both functions take two views ``h1`` (n, d1) and ``h2`` (n, d2), compute in float32 whatever the
input dtype (mixed precision safe) and use only ``keras.ops``, so they run on every backend.

With centred views H̄1, H̄2 and ridge ``r``::

    S11 = H̄1ᵀH̄1/(n−1) + rI,  S22 = H̄2ᵀH̄2/(n−1) + rI,  S12 = H̄1ᵀH̄2/(n−1)
    T   = S11^{-1/2} S12 S22^{-1/2}

Neither function forms a d × d matrix. In the training regime n − 1 < d (a batch of 32 pairs, views
512–1024 wide) S11 and S22 have d − n + 1 null directions whose float32 round-off ``S^{-1/2}``
amplifies by 1/√r; forming T in d-space (as the original did, by eigen-decomposition) turns each into
a spurious ≈1e-3 canonical correlation. Both functions work in the n-sized bases instead.

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

__all__ = ["canonical_correlation", "dcca_loss", "finite_views"]

_EPS32 = 1.1920929e-07  # float32 machine epsilon


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


def finite_views(h1, h2):
    """``(h1, h2, ok)`` with non-finite entries zeroed and ``ok`` true when there were none.

    A diverged network (NaN/inf features) would make the eigen-decomposition fail and abort the
    step with a backend error; zeroing keeps the step running so that the NaN loss is reported
    (callers return NaN when ``ok`` is false) and training can stop with a clear message.
    """
    ok = ops.logical_and(ops.all(ops.isfinite(h1)), ops.all(ops.isfinite(h2)))
    return ops.where(ok, h1, 0.0), ops.where(ok, h2, 0.0), ok


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


def _truncated_basis(h, nm1, r):
    """Thin SVD of one centred view ``H̄/√(n−1) = U Σ Vᵀ`` with numerically-zero directions removed.

    Returns ``(U, D, E, C, Vᵀ)`` with ``D = Σ/√(Σ² + r)``, ``E = 1/√(Σ² + r)`` and ``C = 1 − D²
    = r·E²`` (computed without cancellation). Directions whose singular value is below
    ``max(n, d) · ε_float32 · σ_max`` (NumPy's rank rule) get ``D = E = 0`` and ``C = 1``: the
    centring direction, and any direction in which the view is rank deficient. Those are where
    float32 round-off lives; with ``E ≈ 1/√r`` they would otherwise be amplified into spurious
    canonical correlations.
    """
    hc = (h - ops.mean(h, axis=0, keepdims=True)) / ops.sqrt(nm1)
    u, s, vh = ops.svd(hc, full_matrices=False)
    size = ops.cast(ops.maximum(ops.shape(h)[0], h.shape[-1]), "float32")
    keep = ops.greater(s, ops.max(s) * size * _EPS32)
    e = ops.where(keep, ops.reciprocal(ops.sqrt(ops.square(s) + r)), 0.0)
    return u, s * e, e, ops.where(keep, r * ops.square(e), 1.0), vh


def _complement(u, c, p):
    """``(I − U D² Uᵀ) P`` for ``P`` in the centred n-space, without cancellation.

    ``I − U D² Uᵀ = (I − U Uᵀ) + U C Uᵀ``. When ``U`` is square (n <= d: the thin SVD spans the
    whole n-space) the first term is exactly 0 and is not formed: computing it as ``P − U Uᵀ P``
    would leave float32 round-off of the size of the whole answer once every canonical correlation
    is close to 1 (C ≈ r/σ² ~ 1e-7).
    """
    kept = ops.matmul(u, c[:, None] * ops.matmul(ops.transpose(u), p))
    n, k = ops.shape(u)[0], ops.shape(u)[1]
    if isinstance(n, int) and isinstance(k, int) and n == k:
        return kept
    outside = p - ops.matmul(u, ops.matmul(ops.transpose(u), p))
    return kept + ops.where(ops.equal(n, k), 0.0, outside)


def _dcca_core(r, eps):
    @ops.custom_gradient
    def core(h1, h2):
        nm1 = ops.maximum(ops.cast(ops.shape(h1)[0], "float32") - 1.0, 1.0)
        u1, d1, e1, c1, v1h = _truncated_basis(h1, nm1, r)
        u2, d2, e2, c2, v2h = _truncated_basis(h2, nm1, r)
        # T = V1 A V2ᵀ with A = D1 U1ᵀ U2 D2: the same non-zero singular values, k1 x k2 <= n x n.
        a = d1[:, None] * ops.matmul(ops.transpose(u1), u2) * d2[None, :]
        ua, s, vah = ops.svd(a, full_matrices=False)
        keep = ops.cast(ops.greater(ops.square(s), eps), "float32")
        loss = -ops.sum(s * keep)

        def grad(*args, upstream=None):
            # TF and JAX call grad(upstream); torch passes (*args, upstream=...).
            if upstream is None:
                (upstream,) = args
            upstream = ops.cast(upstream, "float32")
            # docs/DESIGN.md §2.2's closed form with T's singular vectors V1·Ua, V2·Va: the gradient of the
            # correlation w.r.t. the centred views is (P2 − P1 S) Uaᵀ E1 V1ᵀ / √(n−1) and
            # (P1 − P2 S) Vaᵀ E2 V2ᵀ / √(n−1), with P1 = U1 D1 Ua, P2 = U2 D2 Va. Since
            # A Va = Ua S, P1 S = U1 D1² U1ᵀ P2 (and P2 S = U2 D2² U2ᵀ P1): the differences are
            # formed as (I − U D² Uᵀ) P, which does not cancel when the correlations approach 1.
            ua_k = ua * keep[None, :]
            va_k = ops.transpose(vah) * keep[None, :]
            p1 = ops.matmul(u1, d1[:, None] * ua_k)
            p2 = ops.matmul(u2, d2[:, None] * va_k)
            g1 = ops.matmul(ops.matmul(_complement(u1, c1, p2), ops.transpose(ua_k) * e1[None, :]), v1h)
            g2 = ops.matmul(ops.matmul(_complement(u2, c2, p1), ops.transpose(va_k) * e2[None, :]), v2h)

            def to_views(g):
                # the views are centred inside: project on the centred space, then scale
                g = g - ops.mean(g, axis=0, keepdims=True)
                return -upstream * g / ops.sqrt(nm1)

            # ... and the loss is minus the correlation, scaled by the upstream gradient.
            return to_views(g1), to_views(g2)

        return loss, grad

    return core


def dcca_loss(h1, h2, r=1e-4, eps=1e-12):
    """DCCA loss ``-Σ σ_k(T)`` (minus the total canonical correlation, §2.2), a float32 scalar.

    Computed without any d × d matrix: each centred view is reduced to its thin SVD
    ``H̄i/√(n−1) = Ui Σi Viᵀ`` (numerically-zero directions dropped), and ``T`` has the same
    non-zero singular values as the small ``A = D1 U1ᵀ U2 D2`` with ``Di = Σi/√(Σi² + r)``. In the
    training regime n − 1 < d (batch 32, views 1024 wide) T has at most n − 1 non-zero singular
    values, so the loss is >= −(n − 1); forming T in d-space in float32 instead adds one spurious
    ≈1e-3 singular value per null direction (about d − n of them) and drowns the gradient in noise.

    The gradient is the closed form of Andrew et al. (2013), written in the same reduced bases and
    implemented with ``keras.ops.custom_gradient``: it is the gradient of the *loss* (the negated
    correlation gradient) and it is multiplied by the upstream gradient.

    Args:
        h1: (n, d1) first view (any float dtype; computed in float32).
        h2: (n, d2) second view.
        r: ridge added to the diagonal of the covariance matrices.
        eps: singular values of T with ``σ² <= eps`` are left out of the sum and the gradient.
    """
    _check_views(h1, h2)
    h1, h2, ok = finite_views(ops.cast(h1, "float32"), ops.cast(h2, "float32"))
    return ops.where(ok, _dcca_core(float(r), float(eps))(h1, h2), float("nan"))
