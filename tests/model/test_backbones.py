"""Backbone table, input-size checks, the ImageNet input mapping against keras.applications."""

import keras
import numpy as np
import pytest
from keras import ops

from data.shards import scale_images
from model.backbones import (
    BACKBONES,
    ImagenetInputMapping,
    WeightsError,
    build_backbone,
    has_batch_statistics,
    scale_inputs,
)
from tests._helpers import run_layer_test


def test_table():
    assert set(BACKBONES) == {"vgg16", "vgg19", "resnet50", "inceptionv3", "densenet121", "small"}


@pytest.mark.parametrize(
    "name,size,match",
    [
        ("inceptionv3", (64, 64), r"at least 75x75; received image_size=\(64, 64\)"),
        ("vgg16", (16, 40), r"at least 32x32"),
        ("small", (4, 4), r"at least 8x8"),
        ("alexnet", (64, 64), "Unknown backbone 'alexnet'"),
    ],
)
def test_too_small_or_unknown(name, size, match):
    with pytest.raises(ValueError, match=match):
        build_backbone(name, size, 3)


def test_weights_argument_checked():
    with pytest.raises(ValueError, match="no 'imagenet' weights"):
        build_backbone("small", (16, 16), 3, weights="imagenet")
    with pytest.raises(ValueError, match="existing weights file"):
        build_backbone("small", (16, 16), 3, weights="/nonexistent/w.weights.h5")
    with pytest.raises(ValueError, match="need 3 channels; received channels=4"):
        build_backbone("vgg16", (32, 32), 4, weights="imagenet")


@pytest.mark.parametrize("name", ["small", "vgg16"])
@pytest.mark.parametrize("file,content,match", [
    ("afile", b"not weights\n", "not a Keras weights file"),
    ("junk.weights.h5", b"not hdf5\n", "cannot load it into backbone"),
])
def test_unusable_weights_file_is_a_weights_error_naming_the_file(tmp_path, name, file, content,
                                                                  match):
    path = tmp_path / file
    path.write_bytes(content)
    with pytest.raises(WeightsError, match=match) as exc:
        build_backbone(name, (32, 32), 3, weights=str(path))
    assert exc.value.path == str(path) and str(path) in str(exc.value)
    assert len(str(exc.value).splitlines()) == 1


def test_small_backbone_weights_file(tmp_path):
    a = build_backbone("small", (16, 16), 4, seed=1)
    path = str(tmp_path / "small.weights.h5")
    a.save_weights(path)
    b = build_backbone("small", (16, 16), 4, weights=path, seed=2)
    x = np.random.default_rng(0).uniform(-0.5, 0.5, (2, 16, 16, 4)).astype("float32")
    np.testing.assert_allclose(ops.convert_to_numpy(a(x)), ops.convert_to_numpy(b(x)), rtol=1e-6)
    assert tuple(a.output_shape) == (None, 4, 4, 128)


@pytest.mark.parametrize(
    "mode,preprocess",
    [
        ("caffe", keras.applications.vgg16.preprocess_input),
        ("tf", keras.applications.inception_v3.preprocess_input),
        ("torch", keras.applications.densenet.preprocess_input),
    ],
)
def test_imagenet_mapping_equals_preprocess_input(mode, preprocess):
    x = np.random.default_rng(1).uniform(-0.5, 0.5, (2, 5, 5, 3)).astype("float32")
    got = ops.convert_to_numpy(ImagenetInputMapping(mode)(x))
    ref = preprocess(255.0 * (x + 0.5))
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-3)


def test_imagenet_mapping_layer_contract():
    x = np.zeros((2, 4, 4, 3), "float32")
    run_layer_test(ImagenetInputMapping, {"mode": "caffe"}, x, (2, 4, 4, 3),
                   expected_num_trainable_weights=0, run_training_check=False)
    with pytest.raises(ValueError, match="mode='bgr'"):
        ImagenetInputMapping("bgr")


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_scale_inputs_equals_the_loader_scaling_bit_for_bit(dtype):
    info = np.iinfo(dtype)
    x = np.random.default_rng(2).integers(0, int(info.max) + 1, (3, 4, 5, 2)).astype(dtype)
    x[0, 0, 0] = (0, info.max)  # both ends of the range: -0.5 and +0.5
    got = ops.convert_to_numpy(scale_inputs(ops.convert_to_tensor(x)))
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, scale_images(x))
    assert got[0, 0, 0, 0] == -0.5 and got[0, 0, 0, 1] == 0.5


def test_scale_inputs_leaves_floats_and_refuses_other_integers():
    x = np.random.default_rng(3).uniform(-0.5, 0.5, (2, 3, 3, 1)).astype("float32")
    np.testing.assert_array_equal(ops.convert_to_numpy(scale_inputs(ops.convert_to_tensor(x))), x)
    with pytest.raises(ValueError, match="uint8 or uint16.*received dtype int32"):
        scale_inputs(ops.convert_to_tensor(np.zeros((1, 2, 2, 1), "int32")))


@pytest.mark.parametrize("name,size,expected", [("small", 16, True), ("vgg16", 32, False),
                                                 ("resnet50", 32, True)])
def test_has_batch_statistics(name, size, expected):
    assert has_batch_statistics(build_backbone(name, (size, size), 3)) is expected


def _layers(model, cls):
    return [la for la in model._flatten_layers(include_self=False, recursive=True) if isinstance(la, cls)]


def _kernel_scale_over_he(conv):
    """Sample std of a conv kernel over He-normal's sqrt(2 / fan_in)."""
    kernel = ops.convert_to_numpy(conv.kernel).astype(np.float64)
    return kernel.std() / np.sqrt(2.0 / np.prod(kernel.shape[:-1]))


def test_resnet50_starts_as_keras_applications_under_the_original_preset():
    """issue 22.1: the original's TF 1.11 tf.keras.applications.ResNet50 came from keras_applications'
    resnet50.py (1.0.6-1.0.8): He-normal kernels, BN with Keras' default eps 1e-3. Checked on the
    built CorrFusionNet; the project's default stays Keras 3's (Glorot uniform, eps 1.001e-5)."""
    from model import build_model

    net = build_model(4, backbone="resnet50", image_size=(32, 32), hidden=16, shared=True, seed=3,
                      resnet_init="keras_applications")
    convs, bns = _layers(net.backbone, keras.layers.Conv2D), _layers(net.backbone, keras.layers.BatchNormalization)
    assert len(convs) == 53 and len(bns) == 53  # every conv and BN of the 16 blocks, stem, shortcuts
    assert all(isinstance(c.kernel_initializer, keras.initializers.HeNormal) for c in convs)
    assert all(bn.epsilon == 1e-3 for bn in bns)
    # the kernels drawn really have He-normal's scale (truncated normal, std sqrt(2 / fan_in))
    np.testing.assert_allclose([_kernel_scale_over_he(c) for c in convs], 1.0, atol=0.05)
    assert len({float(ops.convert_to_numpy(c.kernel).ravel()[0]) for c in convs}) == 53  # own draws

    default = build_backbone("resnet50", (32, 32), 3, seed=3)
    convs = _layers(default, keras.layers.Conv2D)
    assert all(isinstance(c.kernel_initializer, keras.initializers.GlorotUniform) for c in convs)
    assert all(bn.epsilon == 1.001e-5 for bn in _layers(default, keras.layers.BatchNormalization))
    assert _kernel_scale_over_he(convs[0]) < 0.3  # the stem: Glorot's scale is far below He's
    # the same network otherwise: the same weights, by name and shape
    assert [(w.path, w.shape) for w in default.weights] == [(w.path, w.shape) for w in net.backbone.weights]
    with pytest.raises(ValueError, match="resnet_init must be one of"):
        build_backbone("resnet50", (32, 32), 3, resnet_init="tf1")
