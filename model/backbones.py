"""Backbones: a name → builder table (docs/DESIGN.md §2).

``BACKBONES[name](input_shape, weights=None, name=None, seed=None)`` returns a built Keras model
mapping (N, H, W, C) images to a (N, h, w, F) feature map. The ``keras.applications`` networks
are used with ``include_top=False``; ``small`` is a compact CNN for CPU runs and tests.

Input scaling: the network receives images normalised by ``model.normalization``
(docs/DESIGN.md §2, input normalisation); ``scale_inputs`` is its ``dtype`` mode, the §2 dtype
scaling to [-0.5, 0.5] of integer images on the device (so loaders can feed uint8/uint16 batches, a
quarter/half of the float32 bytes). With random weights that is used as is. With pretrained weights (``"imagenet"`` or a
weights file, which is assumed to hold ImageNet-trained weights of the same architecture), an
``ImagenetInputMapping`` layer first maps [-0.5, 0.5] to what that network was trained on
(the "caffe" BGR mean-subtracted 0–255 range for VGG/ResNet, [-1, 1] for InceptionV3, ImageNet
mean/std normalisation for DenseNet), so ``keras.applications.*.preprocess_input`` is never
needed on the caller's side.
"""

import os
from collections.abc import Callable
from dataclasses import dataclass

import keras
import numpy as np
from keras import ops

from data import shards
from model import config

__all__ = ["BACKBONES", "BackboneSpec", "ImagenetInputMapping", "WeightsError", "build_backbone",
           "check_input_size", "has_batch_statistics", "keras_applications_start", "scale_inputs"]

_CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
_TORCH_MEAN = (0.485, 0.456, 0.406)
_TORCH_STD = (0.229, 0.224, 0.225)
MAPPING_MODES = ("caffe", "tf", "torch", "none")


@keras.saving.register_keras_serializable(package="corrfusion")
class ImagenetInputMapping(keras.layers.Layer):
    """Maps images scaled to [-0.5, 0.5] to the input range of an ImageNet-trained backbone.

    With ``u = x + 0.5`` in [0, 1]: ``"caffe"`` → RGB→BGR, ``255·u − mean_BGR``; ``"tf"`` →
    ``2u − 1``; ``"torch"`` → ``(u − mean)/std`` per channel; ``"none"`` → identity.

    Args:
        mode: one of ``"caffe"``, ``"tf"``, ``"torch"``, ``"none"``.
        **kwargs: base layer arguments.

    Call arguments:
        inputs: (N, H, W, 3) float images in [-0.5, 0.5] (any C for ``"tf"``/``"none"``).

    Returns:
        Tensor of the same shape.
    """

    def __init__(self, mode="caffe", **kwargs):
        super().__init__(**kwargs)
        if mode not in MAPPING_MODES:
            raise ValueError(f"mode must be one of {MAPPING_MODES}; received mode={mode!r}.")
        self.mode = mode

    def build(self, input_shape):
        if self.mode in ("caffe", "torch") and input_shape[-1] != 3:
            raise ValueError(
                f"ImagenetInputMapping(mode={self.mode!r}) needs 3 channels; "
                f"received input shape {tuple(input_shape)}."
            )

    def call(self, inputs):
        u = inputs + 0.5
        if self.mode == "caffe":
            u = ops.flip(u, axis=-1) * 255.0
            return u - ops.convert_to_tensor(_CAFFE_MEAN_BGR, dtype=u.dtype)
        if self.mode == "tf":
            return 2.0 * u - 1.0
        if self.mode == "torch":
            mean = ops.convert_to_tensor(_TORCH_MEAN, dtype=u.dtype)
            std = ops.convert_to_tensor(_TORCH_STD, dtype=u.dtype)
            return (u - mean) / std
        return inputs

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update({"mode": self.mode})
        return config


def scale_inputs(x):
    """docs/DESIGN.md §2 input scaling of integer images, in the graph: ``x / dtype max − 0.5`` (float32).

    Integer images (uint8, uint16 as the shards store them) are cast to float32, multiplied by
    ``1 / max`` and shifted by 0.5 -- the same operations, in the same order and precision, as
    ``data.shards.scale_images``, so the result is the loader's float32 batch bit for bit. Float
    images are returned unchanged: they are taken as already scaled to [-0.5, 0.5]. Under a mixed
    policy the first layer of the backbone casts the float32 result to its compute dtype, as it
    does for a float32 batch from the loader.
    """
    dtype = keras.backend.standardize_dtype(x.dtype)
    if "int" not in dtype:
        return x
    if dtype not in ("uint8", "uint16"):
        raise ValueError(f"integer images must be uint8 or uint16 (docs/DESIGN.md §4); received dtype {dtype}.")
    scale = np.float32(shards.scale_factor(dtype))
    return ops.cast(x, "float32") * scale - np.float32(shards.IMAGE_OFFSET)


def has_batch_statistics(backbone) -> bool:
    """Whether any layer of ``backbone`` normalises over the batch (BatchNormalization).

    Such a backbone must see each date as its own batch (per-date batch statistics and moving
    averages, as the original); one without may run both dates as one batch (same numbers).
    """
    return any(isinstance(layer, keras.layers.BatchNormalization)
               for layer in backbone._flatten_layers(include_self=False, recursive=True))


@dataclass(frozen=True)
class BackboneSpec:
    """How to build one backbone: the builder, the smallest legal input side, the ImageNet mode."""

    build: Callable
    min_size: int
    mapping: str


def check_input_size(name, image_size, channels, weights=None):
    """Raise a ValueError naming the backbone when (H, W, C) cannot be used with it."""
    if name not in BACKBONES:
        raise ValueError(f"Unknown backbone {name!r}; choose one of {sorted(BACKBONES)}.")
    spec = BACKBONES[name]
    h, w = (int(s) for s in image_size)
    if h < spec.min_size or w < spec.min_size:
        raise ValueError(
            f"Backbone {name!r} needs images of at least {spec.min_size}x{spec.min_size}; "
            f"received image_size={(h, w)}."
        )
    if int(channels) < 1:
        raise ValueError(f"channels must be >= 1; received channels={channels!r}.")
    if weights is not None and name != "small" and int(channels) != 3:
        raise ValueError(
            f"Pretrained weights for backbone {name!r} need 3 channels; received channels={channels} "
            "(use weights=None for other band counts)."
        )


class WeightsError(ValueError):
    """A weights file that cannot be used: ``path`` and ``reason``; the message names the file."""

    def __init__(self, path, reason):
        super().__init__(f"weights file {path}: {reason}")
        self.path, self.reason = str(path), reason


WEIGHTS_SUFFIXES = (".weights.h5", ".h5", ".hdf5", ".keras")


def _check_weights(name, weights):
    if weights is None or weights == "imagenet":
        if weights == "imagenet" and name == "small":
            raise ValueError("Backbone 'small' has no 'imagenet' weights; use weights=None or a file path.")
        return
    if not isinstance(weights, (str, os.PathLike)):
        raise ValueError(f"weights must be None, 'imagenet' or a file path; received weights={weights!r}.")
    if not os.path.isfile(weights):
        raise WeightsError(
            weights, "no such file; weights must be None, 'imagenet' or the path of an existing weights file"
        )
    if not str(weights).lower().endswith(WEIGHTS_SUFFIXES):
        raise WeightsError(
            weights, f"not a Keras weights file; expected a name ending in {', '.join(WEIGHTS_SUFFIXES)}"
        )


def _load_weights_file(model, weights):
    """``model.load_weights`` with every failure turned into a one-line WeightsError."""
    try:
        model.load_weights(str(weights))
    except Exception as e:  # noqa: BLE001 - any failure to read means "not usable weights"
        first = (str(e).strip().splitlines() or [""])[0][:200]
        raise WeightsError(
            weights, f"cannot load it into backbone {model.name!r} ({type(e).__name__}: {first})"
        ) from None


#: BatchNormalization's ε in keras_applications' ``resnet50.py`` (Keras 2's default; Keras 3's
#: ResNet50 uses 1.001e-5)
KERAS_APPLICATIONS_BN_EPSILON = 1e-3


def keras_applications_start(model, seed=None):
    """``model`` rebuilt the way keras_applications' ``resnet50.py`` (1.0.6–1.0.8, what the
    original's TF 1.11 ``tf.keras.applications.ResNet50`` ran) started it: every Conv2D kernel
    He-normal (``keras.initializers.HeNormal``: truncated normal, fan-in, scale 2, as TF 1.11's
    ``he_normal``), every BatchNormalization with ε = 1e-3. The same layers, names and weight
    shapes; freshly initialised (conv ``i`` with ``seed + i`` when ``seed`` is given)."""
    convs = iter(range(10**6))

    def clone(layer):
        config = layer.get_config()
        if isinstance(layer, keras.layers.Conv2D):
            i = next(convs)
            config["kernel_initializer"] = keras.initializers.HeNormal(
                seed=None if seed is None else seed + i)
        elif isinstance(layer, keras.layers.BatchNormalization):
            config["epsilon"] = KERAS_APPLICATIONS_BN_EPSILON
        return layer.__class__.from_config(config)

    return keras.models.clone_model(model, clone_function=clone)


def _application(info):
    def build(input_shape, weights=None, name=None, seed=None, resnet_init="keras"):
        # keras.applications has no seed argument; use keras.utils.set_random_seed for that.
        model = getattr(keras.applications, info.application)(
            include_top=False,
            weights=None if weights is None else str(weights),
            input_shape=tuple(input_shape),
            name=name or info.model_name,
        )
        if info.application == "ResNet50" and resnet_init == "keras_applications":
            rebuilt = keras_applications_start(model, seed)
            if weights is not None:  # pretrained: the weights stay, the BN ε is keras_applications'
                rebuilt.set_weights(model.get_weights())
            model = rebuilt
        return model

    return build


def _small_cnn(input_shape, weights=None, name=None, seed=None, resnet_init="keras",
               filters=(32, 64, 128)):
    """Three conv blocks (3x3 conv, BN, ReLU; 2x2 max-pool after the first two)."""
    inputs = keras.Input(shape=tuple(input_shape))
    x = inputs
    for i, f in enumerate(filters):
        x = keras.layers.Conv2D(
            f, 3, padding="same", use_bias=False,
            kernel_initializer=keras.initializers.HeNormal(seed=None if seed is None else seed + i),
            name=f"conv{i + 1}",
        )(x)
        x = keras.layers.BatchNormalization(name=f"bn{i + 1}")(x)
        x = keras.layers.ReLU(name=f"relu{i + 1}")(x)
        if i < len(filters) - 1:
            x = keras.layers.MaxPooling2D(2, name=f"pool{i + 1}")(x)
    model = keras.Model(inputs, x, name=name or "small_cnn")
    if weights is not None:
        model.load_weights(str(weights))
    return model


#: name -> BackboneSpec, one per row of ``model.config.BACKBONES`` (the names' one source)
BACKBONES = {
    name: BackboneSpec(_application(info) if info.application else _small_cnn, info.min_size,
                       info.mapping)
    for name, info in config.BACKBONES.items()
}


def build_backbone(name, image_size, channels=3, weights=None, model_name=None, seed=None,
                   resnet_init="keras"):
    """Build backbone ``name`` for (H, W, C) inputs; see the module docstring for ``weights``.
    ``resnet_init`` (``model.config.RESNET_INITS``): ``"keras_applications"`` starts ``resnet50``
    as the original's TF 1.11 did (``keras_applications_start``); other backbones ignore it."""
    if resnet_init not in config.RESNET_INITS:
        raise ValueError(f"resnet_init must be one of {config.RESNET_INITS}; "
                         f"received resnet_init={resnet_init!r}.")
    check_input_size(name, image_size, channels, weights)
    _check_weights(name, weights)
    shape = (int(image_size[0]), int(image_size[1]), int(channels))
    if weights is None or weights == "imagenet":
        return BACKBONES[name].build(shape, weights=weights, name=model_name, seed=seed,
                                     resnet_init=resnet_init)
    model = BACKBONES[name].build(shape, weights=None, name=model_name, seed=seed,
                                  resnet_init=resnet_init)
    _load_weights_file(model, weights)
    return model
