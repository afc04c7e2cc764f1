"""Shared keras-hub style layer test helper (docs/DESIGN.md §6), and ``xla_flags_without_llvm_opt``
for the tests' JAX processes.

``run_layer_test`` checks, for one layer class and one set of constructor arguments:

1. config round trip: every constructor argument is in ``get_config()``; ``from_config`` and
   ``serialize_keras_object``/``deserialize_keras_object`` give back the same config;
2. symbolic call on ``KerasTensor``s gives the expected output shapes (batch dim None);
3. eager call on the given data gives the expected output shapes, all values finite;
4. the expected numbers of trainable / non-trainable weights;
5. one ``fit`` step of a model wrapping the layer (loss: mean square of every float output plus
   the layer's ``add_loss`` terms) runs, gives a finite loss and moves the trainable weights.
"""

import os

import keras
import numpy as np
from keras import ops, tree


def _shape_of(x):
    return tuple(x.shape)


def _is_shape(s):
    return isinstance(s, tuple) and all(isinstance(d, (int, type(None))) for d in s)


_KEEP = object()


def _check_shapes(outputs, expected, batch=_KEEP, where=""):
    outs = outputs if isinstance(outputs, (list, tuple)) else [outputs]
    exp = [expected] if _is_shape(expected) else list(expected)
    assert len(outs) == len(exp), f"{where}: {len(outs)} outputs, expected {len(exp)}"
    for i, (o, e) in enumerate(zip(outs, exp, strict=False)):
        e = tuple(e)
        if batch is not _KEEP and len(e) > 0:
            e = (batch,) + e[1:]
        assert _shape_of(o) == e, f"{where}: output {i} has shape {_shape_of(o)}, expected {e}"


class WrapModel(keras.Model):
    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        terms = [
            ops.mean(ops.square(ops.cast(o, "float32")))
            for o in tree.flatten(y_pred)
            if "float" in str(o.dtype)
        ]
        terms += [ops.cast(v, "float32") for v in self.losses]
        return ops.sum(ops.stack(terms))


def run_layer_test(
    layer_cls,
    init_kwargs,
    input_data,
    expected_output_shape,
    expected_num_trainable_weights=None,
    expected_num_non_trainable_weights=None,
    call_kwargs=None,
    run_training_check=True,
):
    """Run the checks of the module docstring; returns the eager outputs.

    Args:
        layer_cls: the layer class.
        init_kwargs: dict of constructor arguments.
        input_data: array or list of arrays (batch first).
        expected_output_shape: shape tuple, or list of shape tuples, with the batch dimension of
            ``input_data`` (the symbolic check replaces it by None).
        expected_num_trainable_weights: int or None (not checked).
        expected_num_non_trainable_weights: int or None.
        call_kwargs: extra call arguments.
        run_training_check: run the ``fit`` step.
    """
    call_kwargs = dict(call_kwargs or {})

    # 1. config round trip
    layer = layer_cls(**init_kwargs)
    config = layer.get_config()
    for key, value in init_kwargs.items():
        assert key in config, f"constructor argument {key!r} missing from get_config()"
        if isinstance(value, (int, float, str, bool, type(None))):
            assert config[key] == value, f"get_config()[{key!r}]={config[key]!r}, expected {value!r}"
    revived = layer_cls.from_config(config)
    assert revived.get_config() == config, "from_config(get_config()) changed the config"
    serialized = keras.saving.serialize_keras_object(layer)
    deserialized = keras.saving.deserialize_keras_object(serialized)
    assert type(deserialized) is layer_cls
    assert deserialized.get_config() == config

    # 2. symbolic call
    sym_inputs = tree.map_structure(
        lambda a: keras.KerasTensor((None,) + tuple(np.shape(a))[1:], dtype=str(np.asarray(a).dtype)),
        input_data,
    )
    sym_out = layer_cls(**init_kwargs)(sym_inputs, **call_kwargs)
    _check_shapes(sym_out, expected_output_shape, batch=None, where="symbolic call")

    # 3. eager call
    layer = layer_cls(**init_kwargs)
    out = layer(input_data, **call_kwargs)
    _check_shapes(out, expected_output_shape, where="eager call")
    for o in tree.flatten(out):
        assert np.all(np.isfinite(ops.convert_to_numpy(ops.cast(o, "float32")))), "non-finite output"

    # 4. weight counts
    if expected_num_trainable_weights is not None:
        assert len(layer.trainable_weights) == expected_num_trainable_weights, (
            f"{len(layer.trainable_weights)} trainable weights, expected {expected_num_trainable_weights}"
        )
    if expected_num_non_trainable_weights is not None:
        assert len(layer.non_trainable_weights) == expected_num_non_trainable_weights, (
            f"{len(layer.non_trainable_weights)} non-trainable weights, "
            f"expected {expected_num_non_trainable_weights}"
        )

    # 5. one fit step
    if run_training_check:
        inputs = tree.map_structure(
            lambda a: keras.Input(shape=tuple(np.shape(a))[1:], dtype=str(np.asarray(a).dtype)),
            input_data,
        )
        inner = layer_cls(**init_kwargs)
        model = WrapModel(inputs=inputs, outputs=inner(inputs, **call_kwargs))
        model.compile(optimizer=keras.optimizers.SGD(0.01))
        before = [ops.convert_to_numpy(w) for w in inner.trainable_weights]
        n = len(tree.flatten(input_data)[0])
        history = model.fit(input_data, None, batch_size=n, epochs=1, verbose=0)
        assert np.isfinite(history.history["loss"][0]), f"fit loss {history.history['loss']}"
        after = [ops.convert_to_numpy(w) for w in inner.trainable_weights]
        if before:
            assert any(not np.allclose(a, b) for a, b in zip(before, after, strict=False)), "fit did not move any weight"
    return out


def xla_flags_without_llvm_opt() -> str:
    """``XLA_FLAGS`` for a JAX process a test starts: the caller's flags plus XLA's LLVM
    optimisation off. Those processes compile far more than they run (eager Keras on JAX compiles
    every operation's shape once; a benchmark child its one step); what they compute, and the HLO a
    profile classes, are the same (the JAX subprocess's 40 tests: 126 CPU s with it, 101 without,
    2026-12-06)."""
    return f"{os.environ.get('XLA_FLAGS', '')} --xla_backend_optimization_level=0".strip()
