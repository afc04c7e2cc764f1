"""A 2×2 / stride-2 max-pool whose gradient goes through an equality mask (JAX), for the GPU
profile's ``maxpool_mask_vjp`` variant (benchmarks/RESULTS.md §4d: the keras-jax step spends its
extra time against ``torch.compile`` in the max-pool backward, XLA's ``select_and_scatter``, and the
ReLU-backward fusions next to it).

Forward: ``lax.reduce_window`` with ``max`` (what Keras does). Backward: the output gradient
repeated over each 2×2 window where the input equals the window's maximum,
``g_x = [x == up(y)] · up(g_y)`` (zero in the rows/columns a VALID pool drops), which is
elementwise and can fuse with the ReLU backward before it. It differs from ``select_and_scatter``
only where a window holds its maximum more than once: then every tied position gets the gradient
instead of one. In VGG every pooled tensor comes out of a ReLU, whose backward zeroes the gradient
at the tied zeros; a tie between two equal positive activations is the only difference left.

``patch_keras_max_pool()`` routes Keras' JAX ``max_pool`` (``MaxPooling2D``) through it for 2×2,
stride 2, VALID, channels-last pools, the only kind VGG16 has; other pools keep Keras' own.
"""

from __future__ import annotations

__all__ = ["max_pool_2x2", "patch_keras_max_pool"]


def _build():
    import jax
    import jax.numpy as jnp
    from jax import lax

    def forward(x):
        init = jnp.array(-jnp.inf, x.dtype)
        return lax.reduce_window(x, init, lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")

    @jax.custom_vjp
    def pool(x):
        return forward(x)

    def fwd(x):
        y = forward(x)
        return y, (x, y)

    def bwd(res, g):
        x, y = res
        h, w = y.shape[1], y.shape[2]
        up = jnp.repeat(jnp.repeat(y, 2, axis=1), 2, axis=2)
        gu = jnp.repeat(jnp.repeat(g, 2, axis=1), 2, axis=2)
        gx = jnp.where(x[:, : 2 * h, : 2 * w, :] == up, gu, jnp.zeros_like(gu))
        pad = ((0, 0), (0, x.shape[1] - 2 * h), (0, x.shape[2] - 2 * w), (0, 0))
        return (jnp.pad(gx, pad),)

    pool.defvjp(fwd, bwd)
    return pool


_POOL = None


def max_pool_2x2(x):
    """2×2, stride 2, VALID max-pool of an NHWC array with the mask gradient (JAX)."""
    global _POOL
    if _POOL is None:
        _POOL = _build()
    return _POOL(x)


def _pair(v):
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v)


def patch_keras_max_pool() -> None:
    """Keras' JAX ``max_pool`` uses ``max_pool_2x2`` for 2×2 / stride 2 / VALID / channels-last
    pools (a measurement variant; other pools are left to Keras)."""
    import keras

    if keras.backend.backend() != "jax":  # refused before touching Keras' JAX backend
        raise RuntimeError("patch_keras_max_pool needs KERAS_BACKEND=jax")
    from keras.src import backend
    from keras.src.backend.jax import nn as jax_nn
    original = jax_nn.max_pool

    def max_pool(inputs, pool_size, strides=None, padding="valid", data_format=None):
        fmt = backend.standardize_data_format(data_format)
        size = _pair(pool_size)
        step = size if strides is None else _pair(strides)
        if (inputs.ndim == 4 and fmt == "channels_last" and size == (2, 2) and step == (2, 2)
                and str(padding).lower() == "valid"):
            return max_pool_2x2(inputs)
        return original(inputs, pool_size, strides, padding, data_format)

    jax_nn.max_pool = max_pool
