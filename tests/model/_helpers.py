"""Backend-agnostic helpers for the model tests (value and gradient on TF or JAX)."""

import functools

import keras
import numpy as np
from threadpoolctl import threadpool_limits


def value_and_grads(fn, *args):
    """``fn(*args)`` and its gradients w.r.t. every arg, as NumPy, on the active backend."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        xs = [tf.convert_to_tensor(a) for a in args]
        with tf.GradientTape() as tape:
            for x in xs:
                tape.watch(x)
            value = fn(*xs)
        grads = tape.gradient(value, xs)
        grads = [np.zeros(np.shape(x), np.float32) if g is None else np.asarray(g) for x, g in zip(xs, grads, strict=False)]
        return np.asarray(value), grads
    if backend == "jax":
        import jax

        value, grads = jax.value_and_grad(fn, argnums=tuple(range(len(args))))(*args)
        return np.asarray(value), [np.asarray(g) for g in grads]
    raise NotImplementedError(backend)


def one_blas_thread(fn):
    """Run a float64 NumPy reference on one BLAS thread: beside another pytest-xdist worker (and
    TensorFlow's threads) OpenBLAS's spinning threads made the d = 1024 references several times
    slower than on one idle core."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with threadpool_limits(limits=1):
            return fn(*args, **kwargs)

    return wrapper


@one_blas_thread
def np_cca(h1, h2, r=1e-4, eps=1e-12):
    """NumPy float64 reference of §2.1/§2.2: returns (T, canonical_correlation, dcca_loss)."""
    h1 = np.asarray(h1, np.float64)
    h2 = np.asarray(h2, np.float64)
    n = h1.shape[0]
    a = h1 - h1.mean(0)
    b = h2 - h2.mean(0)
    s11 = a.T @ a / (n - 1) + r * np.eye(a.shape[1])
    s22 = b.T @ b / (n - 1) + r * np.eye(b.shape[1])
    s12 = a.T @ b / (n - 1)

    def inv_sqrt(s):
        e, v = np.linalg.eigh(s)
        keep = e > eps
        return (v[:, keep] / np.sqrt(e[keep])) @ v[:, keep].T

    t = inv_sqrt(s11) @ s12 @ inv_sqrt(s22)
    sv = np.linalg.svd(t, compute_uv=False)
    return t, np.sqrt((t**2).sum() + eps), -sv[sv**2 > eps].sum()


@one_blas_thread
def np_dcca_grad(h1, h2, r=1e-4):
    """Float64 reference of the DCCA loss and the closed-form gradient of the *loss* (§2.2), formed
    in d-space as docs/DESIGN.md §2.2 writes it: returns (loss, dloss/dh1, dloss/dh2).

    T has rank <= min(n − 1, d1, d2) in exact arithmetic; the singular values beyond that are
    float64 round-off (~1e-12 each, up to d of them) and are left out, so that the loss is smooth
    enough for finite differences at d = 1024."""
    h1 = np.asarray(h1, np.float64)
    h2 = np.asarray(h2, np.float64)
    n = h1.shape[0]
    a = h1 - h1.mean(0)
    b = h2 - h2.mean(0)

    def inv_sqrt(s):
        e, v = np.linalg.eigh(s)
        return (v / np.sqrt(e)) @ v.T

    k11 = inv_sqrt(a.T @ a / (n - 1) + r * np.eye(a.shape[1]))
    k22 = inv_sqrt(b.T @ b / (n - 1) + r * np.eye(b.shape[1]))
    u, s, vh = np.linalg.svd(k11 @ (a.T @ b / (n - 1)) @ k22, full_matrices=False)
    rank = min(n - 1, a.shape[1], b.shape[1])
    u, s, vh = u[:, :rank], s[:rank], vh[:rank]
    m1, m2 = k11 @ u, k22 @ vh.T
    d12 = m1 @ m2.T
    d11 = -0.5 * (m1 * s) @ m1.T
    d22 = -0.5 * (m2 * s) @ m2.T
    g1 = (2 * a @ d11 + b @ d12.T) / (n - 1)
    g2 = (a @ d12 + 2 * b @ d22) / (n - 1)
    return -s.sum(), -g1, -g2


def factor_views(rng, n, d, factors=8, noise=0.5):
    """Two views sharing ``factors`` latent factors, plus independent noise (float32)."""
    z = rng.normal(size=(n, factors))
    h1 = z @ rng.normal(size=(factors, d)) + noise * rng.normal(size=(n, d))
    h2 = z @ rng.normal(size=(factors, d)) + noise * rng.normal(size=(n, d))
    return h1.astype("float32"), h2.astype("float32")


def correlated_views(rng, n, d1, d2, noise=1.0):
    h1 = rng.normal(size=(n, d1))
    h2 = h1[:, : min(d1, d2)] @ rng.normal(size=(min(d1, d2), d2)) * 0.5 + noise * rng.normal(size=(n, d2))
    return h1.astype("float32"), h2.astype("float32")
