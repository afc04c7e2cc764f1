"""InputNormalization (model/normalization.py) and --input_norm inside CorrFusionNet: the layer
contract, the numbers against a float64 reference at 200 x 200, checkpoints that keep the
statistics (reload in a fresh process), checkpoints saved before input_norm existed."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from keras import ops

from model import build_model, load_model
from model.backbones import scale_inputs
from model.config import INPUT_NORMS
from model.normalization import InputNormalization
from tests._helpers import run_layer_test

ROOT = Path(__file__).resolve().parents[2]
K = 4


def _pair(rng, n, size, dtype, lo, hi, c=3):
    out = []
    for _ in range(2):
        x = rng.uniform(lo, hi, (n, size, size, c))
        out.append(x.astype(np.float32) if np.dtype(dtype).kind == "f" else np.rint(x).astype(dtype))
    return out


@pytest.mark.parametrize("mode, non_trainable", [("bands", 2), ("bands_per_date", 2), ("dtype", 0),
                                                 ("shard_max", 0)])
def test_layer_contract(mode, non_trainable):
    rng = np.random.default_rng(0)
    data = _pair(rng, 4, 8, np.float32, -0.5, 0.5) if mode == "shard_max" else \
        _pair(rng, 4, 8, np.uint16, 0, 4095)
    run_layer_test(InputNormalization, {"mode": mode, "channels": 3}, data,
                   [(4, 8, 8, 3), (4, 8, 8, 3)], expected_num_trainable_weights=0,
                   expected_num_non_trainable_weights=non_trainable)


@pytest.mark.parametrize("dtype, lo, hi", [(np.uint8, 6, 116), (np.uint16, 0, 10000),
                                           (np.uint16, 0, 4095), (np.float32, 0.0, 1.0)])
@pytest.mark.parametrize("mode", ["bands", "bands_per_date"])
def test_standardisation_matches_float64_at_200px(mode, dtype, lo, hi):
    rng = np.random.default_rng(1)
    x1, x2 = _pair(rng, 8, 200, dtype, lo, hi)
    ref = [x.astype(np.float64).reshape(-1, 3) for x in (x1, x2)]
    if mode == "bands":
        both = np.concatenate(ref)
        mean, var = both.mean(0), both.var(0)
        per_date = [(mean, var), (mean, var)]
    else:
        mean, var = np.stack([r.mean(0) for r in ref]), np.stack([r.var(0) for r in ref])
        per_date = [(mean[0], var[0]), (mean[1], var[1])]
    layer = InputNormalization(mode, 3)
    layer.set_statistics(mean, var)
    y1, y2 = (ops.convert_to_numpy(y) for y in layer([x1, x2]))
    assert y1.dtype == np.float32
    for x, y, (m, v) in zip((x1, x2), (y1, y2), per_date, strict=True):
        want = (x.astype(np.float64) - m) / np.sqrt(v)
        np.testing.assert_allclose(y, want, rtol=0, atol=2e-5 * np.abs(want).max())
        if mode == "bands_per_date":  # each date standardised with its own statistics
            flat = y.reshape(-1, 3).astype(np.float64)
            np.testing.assert_allclose(flat.mean(0), 0, atol=1e-5)
            np.testing.assert_allclose(flat.std(0), 1, atol=1e-5)
    stats = layer.statistics()
    np.testing.assert_allclose(stats["std"], np.sqrt(np.broadcast_to(var, (2, 3))), rtol=1e-6)


def test_dtype_mode_is_scale_inputs_bit_for_bit_and_shard_max_refuses_integers():
    rng = np.random.default_rng(2)
    for dtype, top in ((np.uint8, 255), (np.uint16, 65535)):
        x1, x2 = _pair(rng, 2, 16, dtype, 0, top)
        y1, y2 = InputNormalization("dtype", 3)([x1, x2])
        np.testing.assert_array_equal(ops.convert_to_numpy(y1), ops.convert_to_numpy(scale_inputs(x1)))
    with pytest.raises(ValueError, match="shard_max"):
        InputNormalization("shard_max", 3)([x1, x2])


def test_bad_arguments_and_statistics():
    with pytest.raises(ValueError, match="mode must be one of"):
        InputNormalization("zscore", 3)
    layer = InputNormalization("bands", 2)
    with pytest.raises(ValueError, match="variance > 0"):
        layer.set_statistics([1.0, 2.0], [1.0, 0.0])
    with pytest.raises(ValueError, match="one set of statistics"):
        layer.set_statistics([[1.0, 2.0], [3.0, 4.0]], [1.0, 1.0])
    with pytest.raises(ValueError, match="no statistics"):
        InputNormalization("dtype", 2).set_statistics([0, 0], [1, 1])


def _small(mode, **kw):
    return build_model(K, backbone="small", image_size=(16, 16), hidden=16, seed=1,
                       input_norm=mode, **kw)


@pytest.mark.parametrize("mode", ["bands", "bands_per_date"])
def test_model_standardises_integers_like_their_float_values(mode):
    """Raw uint16 and the same values as float32 give the same outputs (the loader's resize path
    hands float32 raw values to the model)."""
    net = _small(mode)
    net.set_input_statistics(np.array([[2000.0, 2100, 1900], [1500, 1600, 1400]])[:1 if mode == "bands" else 2].squeeze(),
                             np.array([900.0**2, 800**2, 700**2]))
    x1, x2 = _pair(np.random.default_rng(3), 4, 16, np.uint16, 0, 4095)
    a = net.predict_on_batch((x1, x2))
    b = net.predict_on_batch((x1.astype(np.float32), x2.astype(np.float32)))
    for key in ("prob_t1", "prob_t2", "fusion_weight"):
        np.testing.assert_allclose(a[key], b[key], rtol=1e-6, atol=1e-6)


_RELOAD = """
import sys, numpy as np
from model import load_model
net = load_model(sys.argv[1])
x = np.load(sys.argv[2])
out = net.predict_on_batch((x[0], x[1]))
np.save(sys.argv[3], np.stack([out["prob_t1"], out["prob_t2"]]))
print(net.config.input_norm, net.input_statistics()["mean"][1][0])
"""


@pytest.mark.slow  # a second Python process with TensorFlow: ~10 s
def test_saved_statistics_give_the_same_predictions_in_a_fresh_process(tmp_path):
    net = _small("bands_per_date")
    net.set_input_statistics(np.array([[60.0, 62, 58], [45, 47, 44]]), np.array([[19.0, 18, 18],
                                                                                  [16, 16, 15]]) ** 2)
    x = np.stack(_pair(np.random.default_rng(4), 6, 16, np.uint8, 6, 116))
    want = net.predict_on_batch((x[0], x[1]))
    path = tmp_path / "m.keras"
    net.save(path)
    np.save(tmp_path / "x.npy", x)
    proc = subprocess.run([sys.executable, "-c", _RELOAD, str(path), str(tmp_path / "x.npy"),
                           str(tmp_path / "p.npy")], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["bands_per_date", "45.0"]
    got = np.load(tmp_path / "p.npy")
    np.testing.assert_array_equal(got[0], want["prob_t1"])
    np.testing.assert_array_equal(got[1], want["prob_t2"])


def _strip_input_norm(src, dst):
    """A copy of a .keras archive whose config.json has no input_norm (saved before it existed)."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for item in zin.infolist():
            data = zin.read(item.filename)
            if item.filename == "config.json":
                config = json.loads(data)
                del config["config"]["config"]["input_norm"]
                data = json.dumps(config).encode()
            zout.writestr(item, data)


def test_a_checkpoint_from_before_input_norm_evaluates_with_dtype_scaling(tmp_path, caplog):
    """Its inputs were dtype-scaled: it loads as input_norm dtype with one log line, and gives
    the predictions it gave before (checked by hand against a checkpoint saved by the code before
    this change; its weights file holds no input_norm weights, as a dtype model's)."""
    net = _small("dtype")
    x = _pair(np.random.default_rng(5), 3, 16, np.uint8, 0, 255)
    want = net.predict_on_batch(tuple(x))
    net.save(tmp_path / "new.keras")
    _strip_input_norm(tmp_path / "new.keras", tmp_path / "old.keras")
    caplog.set_level("WARNING")
    old = load_model(tmp_path / "old.keras")
    assert old.config.input_norm == "dtype"
    lines = [r.message for r in caplog.records if "before input normalisation" in r.message]
    assert len(lines) == 1 and "dtype" in lines[0]
    np.testing.assert_array_equal(old.predict_on_batch(tuple(x))["prob_t1"], want["prob_t1"])


def test_every_mode_is_offered_and_the_original_preset_sets_shard_max():
    from parser import PRESETS, train_parser

    assert set(INPUT_NORMS) == {"bands", "bands_per_date", "dtype", "shard_max"}
    assert PRESETS["original"]["input_norm"] == "shard_max"
    args = train_parser().parse_args(["--data_dir", "d"])
    assert args.input_norm == "bands"
