"""Input normalisation as a part of the model (docs/DESIGN.md §2, ``ModelConfig.input_norm``).

``InputNormalization`` turns the two dates' image batches as the loader hands them over into the
backbone's float32 input. Its statistics are non-trainable weights, so they are saved in the
``.keras`` checkpoint: eval.py, predict.py, compare.py and a checkpoint downloaded alone apply the
transform training used without the training data. The modes (``model.config.INPUT_NORMS``):

* ``bands``: ``(x − mean_c) / std_c`` per band c, with the mean and standard deviation of the
  training split pooled over both dates (``data.stats``); the same for both dates.
* ``bands_per_date``: the same with each date's own statistics (t1's for x1, t2's for x2).
* ``dtype``: ``model.backbones.scale_inputs``: integers ÷ dtype max − 0.5; float batches are taken
  as already scaled (the loader scales float shards and resized batches): the scaling this project
  used before ``input_norm`` existed, bit for bit.
* ``shard_max``: the original code's ``LoadNpy`` (rulixiang/CorrFusionNet ``utils.py`` at
  611d99b / 7a4fe70 / fd37a24): ``image_t.astype(float32) / np.max(image_t) − 0.5``, where the max
  is one number per date and shard file (over all its pairs, pixels and bands). It depends on the
  shard a pair comes from, so the loader applies it (``data.loader``, ``scaling="shard_max"``) and
  this layer passes the float batches through; an integer batch is refused (nothing here could
  scale it like the original).

In the ``bands`` modes the loader hands over raw values: integers as stored, floats as stored
(not shifted), float32 when ``--image_size`` resizes them; the layer casts to float32 first.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

from model.backbones import scale_inputs
from model.config import INPUT_NORMS, STAT_NORMS

__all__ = ["InputNormalization"]


@keras.saving.register_keras_serializable(package="corrfusion")
class InputNormalization(keras.layers.Layer):
    """The input normalisation of both dates (see the module docstring for the modes).

    Args:
        mode: one of ``model.config.INPUT_NORMS``.
        channels: bands C of the images.
        **kwargs: base layer arguments (``name``, ``dtype``, ...). The layer computes in float32
            whatever the policy: a mixed policy's first backbone layer casts its output.

    Weights (``bands``, ``bands_per_date`` only): ``mean`` and ``variance``, (2, C) float32,
    non-trainable, row 0 for t1 and row 1 for t2 (equal rows for ``bands``); mean 0 and variance
    1 until :meth:`set_statistics` is called.

    Call arguments:
        inputs: ``[x1, x2]``, each (N, H, W, C): uint8, uint16 or float.

    Returns:
        ``[y1, y2]``, each (N, H, W, C) float32.
    """

    def __init__(self, mode="bands", channels=3, **kwargs):
        kwargs["dtype"] = "float32"
        super().__init__(**kwargs)
        if mode not in INPUT_NORMS:
            raise ValueError(f"mode must be one of {tuple(INPUT_NORMS)}; received mode={mode!r}.")
        if int(channels) < 1:
            raise ValueError(f"channels must be >= 1; received channels={channels!r}.")
        self.mode = mode
        self.channels = int(channels)
        self.mean = self.variance = None
        if mode in STAT_NORMS:
            self.mean = self.add_weight(shape=(2, self.channels), initializer="zeros",
                                        trainable=False, name="mean")
            self.variance = self.add_weight(shape=(2, self.channels), initializer="ones",
                                            trainable=False, name="variance")

    @property
    def has_statistics(self) -> bool:
        return self.mode in STAT_NORMS

    def set_statistics(self, mean, variance):
        """Set the statistics: ``mean``/``variance`` (C,) for both dates or (2, C) per date."""
        if not self.has_statistics:
            raise ValueError(f"mode {self.mode!r} has no statistics to set.")
        mean = np.broadcast_to(np.asarray(mean, np.float64), (2, self.channels))
        variance = np.broadcast_to(np.asarray(variance, np.float64), (2, self.channels))
        if self.mode == "bands" and not np.array_equal(mean[0], mean[1]):
            raise ValueError("mode 'bands' takes one set of statistics for both dates; received "
                             f"mean={mean.tolist()}.")
        if not (np.all(np.isfinite(mean)) and np.all(np.isfinite(variance)) and np.all(variance > 0)):
            raise ValueError(f"statistics must be finite with variance > 0; received "
                             f"mean={mean.tolist()}, variance={variance.tolist()}.")
        self.mean.assign(mean.astype(np.float32))
        self.variance.assign(variance.astype(np.float32))

    def statistics(self) -> dict | None:
        """``{"mean": [[t1], [t2]], "std": [[t1], [t2]]}`` (lists of floats), or None."""
        if not self.has_statistics:
            return None
        mean = ops.convert_to_numpy(self.mean).astype(np.float64)
        std = np.sqrt(ops.convert_to_numpy(self.variance).astype(np.float64))
        return {"mean": mean.tolist(), "std": std.tolist()}

    def _one(self, x, date):
        dtype = keras.backend.standardize_dtype(x.dtype)
        if self.mode == "dtype":
            return scale_inputs(x)
        if self.mode == "shard_max":
            if "int" in dtype:
                raise ValueError("input_norm 'shard_max' divides each shard by its own maximum in "
                                 "the loader; received an integer batch (dtype "
                                 f"{dtype}) that was not scaled.")
            return ops.cast(x, "float32")
        if "int" in dtype and dtype not in ("uint8", "uint16"):
            raise ValueError(f"integer images must be uint8 or uint16 (docs/DESIGN.md §4); "
                             f"received dtype {dtype}.")
        x = ops.cast(x, "float32")
        return (x - self.mean[date]) * ops.rsqrt(self.variance[date])

    def call(self, inputs):
        if not isinstance(inputs, (list, tuple)) or len(inputs) != 2:
            raise ValueError(f"InputNormalization expects [x1, x2]; received {type(inputs).__name__}.")
        return [self._one(inputs[0], 0), self._one(inputs[1], 1)]

    def compute_output_spec(self, inputs):
        return [keras.KerasTensor(x.shape, dtype="float32") for x in inputs]

    def get_config(self):
        config = super().get_config()
        config.update({"mode": self.mode, "channels": self.channels})
        return config
