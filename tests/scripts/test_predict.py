"""predict.py end to end on synthetic UTM scenes: GeoTIFF outputs, alignment refusals, --align,
--stride, nodata, bad input (one line, exit 2, nothing written), and a trained small model that
finds the changed block."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine

from tests.data import _scenes as scenes
from utils.cli import run_main

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "MPLBACKEND": "Agg", "CUDA_VISIBLE_DEVICES": "-1"}


def run(script, *args, timeout=300):
    return subprocess.run([sys.executable, *script, *map(str, args)], cwd=ROOT, env=ENV,
                          capture_output=True, text=True, timeout=timeout)


def predict(*args, timeout=300):
    """predict.py in a new Python process: the command line itself (start-up, exit status)."""
    return run([str(ROOT / "predict.py")], *args, timeout=timeout)


def predict_here(capfd, *args):
    """predict.py's ``main`` through the same CLI wrapper (``run_main``: exit status, one
    ``error:`` line) in this process, without another Python + TensorFlow start-up; ``capfd``
    reads file descriptors 1 and 2, so GDAL's or TensorFlow's native lines would count too."""
    import predict as script

    capfd.readouterr()
    rc = run_main(script.main, [str(a) for a in args])
    out = capfd.readouterr()
    return subprocess.CompletedProcess(args, rc, out.out, out.err)


def refused(proc, *words):
    """Exit 2, one 'error:' line naming what is wrong, no traceback."""
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    for w in words:
        assert w in lines[0], lines[0]
    return lines[0]


def tif(path):
    with rasterio.open(path) as src:
        return src.read(1), {"crs": src.crs, "transform": src.transform, "dtype": src.dtypes[0],
                             "nodata": src.nodata, "size": (src.width, src.height)}


@pytest.fixture(scope="module")
def model_200(tmp_path_factory):
    """A random-weight small CorrFusionNet for 200 x 200 x 3 tiles, 3 classes."""
    import model as cfn

    net = cfn.build_model(num_classes=3, image_size=(200, 200), backbone="small",
                          method="corrfusion", hidden=16, seed=0)
    path = tmp_path_factory.mktemp("model") / "m200.keras"
    net.save(path)
    return path


@pytest.fixture(scope="module")
def scene_1100(tmp_path_factory):
    """1100 x 850 px (not a multiple of 200), date 1 without data (nodata 0) in its first tile."""
    root = tmp_path_factory.mktemp("scene")
    y = scenes.class_grid(5, 6)
    x1 = scenes.render(y, 200, height=850, width=1100, seed=1)
    x1[:200, :200] = 0
    t1 = scenes.write_tif(root / "t1.tif", x1, nodata=0)
    t2 = scenes.write_tif(root / "t2.tif", scenes.render(y, 200, height=850, width=1100, seed=2))
    return root, t1, t2


@pytest.mark.slow
def test_maps_are_georeferenced_geotiffs(tmp_path, model_200, scene_1100):
    _, t1, t2 = scene_1100
    out = tmp_path / "maps"
    proc = predict("-m", model_200, "--t1", t1, "--t2", t2, "--out", out, "-b", 8)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    summary = json.loads((out / "summary.json").read_text())
    tile_tf = Affine(2000.0, 0, scenes.ORIGIN[0], 0, -2000.0, scenes.ORIGIN[1])
    for name, dtype, nodata in (("class_t1.tif", "uint8", 0), ("class_t2.tif", "uint8", 0),
                                ("p_change.tif", "float32", -1), ("change.tif", "uint8", 255),
                                ("from_to.tif", "uint8", 0)):
        data, meta = tif(out / name)
        assert meta["crs"].to_epsg() == 32650, name
        assert meta["transform"] == tile_tf, name
        assert meta["size"] == (6, 5), name  # 1100 x 850 px: edges padded, not dropped
        assert (meta["dtype"], meta["nodata"]) == (dtype, nodata), name
    c1, c2 = tif(out / "class_t1.tif")[0], tif(out / "class_t2.tif")[0]
    change, p = tif(out / "change.tif")[0], tif(out / "p_change.tif")[0]
    assert c1[0, 0] == 0 and (c1.ravel()[1:] > 0).all() and (c2 > 0).all()  # nodata stays nodata
    assert change[0, 0] == 255 and p[0, 0] == -1
    np.testing.assert_array_equal(change.ravel()[1:], (c1 != c2).ravel()[1:])
    assert summary["pairs"] == 29 and summary["cells"]["nodata"] == 1
    assert summary["grid"]["padded_bottom_right"] == [150, 100]
    assert summary["changed"]["area"] == summary["changed"]["cells"] * 2000.0 ** 2
    assert (out / "quicklook.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow
def test_stride_below_the_tile_maps_pixels(tmp_path, model_200, scene_1100, capfd):
    _, t1, t2 = scene_1100
    out = tmp_path / "maps"
    proc = predict_here(capfd, "-m", model_200, "--t1", t1, "--t2", t2, "--out", out, "--stride", 100,
                   "--threshold", 0.3)
    assert proc.returncode == 0, proc.stderr
    change, meta = tif(out / "change.tif")
    assert meta["size"] == (1100, 850) and meta["transform"] == scenes.transform()
    assert (change[:200, :200] == 255).all()  # date 1 without data there
    p = tif(out / "p_change.tif")[0]
    ok = change != 255
    np.testing.assert_array_equal(change[ok], (p[ok] >= 0.3).astype(np.uint8))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["grid"]["resolution"] == "pixel" and summary["cell_area"] == 100.0


@pytest.fixture(scope="module")
def small_pair(tmp_path_factory):
    root = tmp_path_factory.mktemp("pair")
    y = scenes.class_grid(4, 5)
    return root, scenes.write_tif(root / "a.tif", scenes.render(y, 40, seed=1)), y


def shifted_date2(root, y, **kw):
    return scenes.write_tif(root / "b.tif", scenes.render(y, 40, seed=2), **kw)


@pytest.mark.parametrize("kw, words", [
    (dict(tf=scenes.transform((scenes.ORIGIN[0] + 5000, scenes.ORIGIN[1]))),
     ["shifted by (5000, 0) map units = 500.0 pixels", "--align"]),
    (dict(crs="EPSG:32651"), ["CRS EPSG:32650 vs EPSG:32651"]),
    (dict(size=(160, 150)), ["size 200x160 vs 150x160 pixels"]),
])
def test_misaligned_pairs_are_refused(tmp_path, model_200, small_pair, kw, words, capfd):
    root, t1, y = small_pair
    if "size" in kw:
        t2 = scenes.write_tif(tmp_path / "b.tif", scenes.render(y, 40, seed=2)[:, :150])
    else:
        t2 = scenes.write_tif(tmp_path / "b.tif", scenes.render(y, 40, seed=2), **kw)
    out = tmp_path / "maps"
    line = refused(predict_here(capfd, "-m", model_200, "--t1", t1, "--t2", t2, "--out", out, "--tile", 40),
                   str(t1), str(t2), *words)
    assert "expected both dates on the same grid" in line
    assert not out.exists()


@pytest.mark.slow
def test_align_resamples_date_2(tmp_path, model_200, small_pair, capfd):
    root, t1, y = small_pair
    x2 = scenes.render(y, 40, seed=2)
    shifted = np.zeros_like(x2)
    shifted[:, :-3] = x2[:, 3:]
    t2 = scenes.write_tif(tmp_path / "b.tif", shifted,
                          tf=scenes.transform((scenes.ORIGIN[0] + 30, scenes.ORIGIN[1])))
    args = ("-m", model_200, "--t1", t1, "--t2", t2, "--tile", 40)
    refused(predict_here(capfd, *args, "--out", tmp_path / "no"), "3.0 pixels")
    proc = predict_here(capfd, *args, "--out", tmp_path / "maps", "--align")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((tmp_path / "maps" / "summary.json").read_text())
    assert summary["inputs"]["date2_resampled"] is True
    _, meta = tif(tmp_path / "maps" / "change.tif")
    assert meta["transform"] == Affine(400.0, 0, scenes.ORIGIN[0], 0, -400.0, scenes.ORIGIN[1])
    assert meta["size"] == (5, 4)


def test_bad_input_is_one_line_and_writes_nothing(tmp_path, model_200, small_pair, capfd):
    root, t1, y = small_pair
    t2 = shifted_date2(tmp_path, y)
    out = tmp_path / "maps"
    base = ("--t1", t1, "--t2", t2, "--tile", 40)
    refused(predict_here(capfd, "-m", model_200, "--t1", t1, "--t2", tmp_path / "nope.tif", "--out", out,
                    "--tile", 40), "nope.tif: no such file")
    refused(predict_here(capfd, "-m", model_200, *base, "--out", out, "--bands", "1,2,5"),
            "--bands 1,2,5: the raster has 3 band(s)")
    refused(predict_here(capfd, "-m", model_200, *base, "--out", out, "--bands", "1,2"),
            "2 band(s) selected; expected 3")
    refused(predict_here(capfd, "-m", model_200, *base, "--out", out, "--stride", 50),
            "--stride 50: expected at most the tile (40)")
    refused(predict_here(capfd, "-m", tmp_path / "none.keras", *base, "--out", out), "none.keras")
    refused(predict_here(capfd, "-m", model_200, *base, "--out", out, "--class_names", "a,b"),
            "--class_names: 2 names; expected 3")
    assert not out.exists()
    out.mkdir()
    (out / "mine.txt").write_text("keep")
    refused(predict_here(capfd, "-m", model_200, *base, "--out", out), "exists and is not empty")
    assert [p.name for p in out.iterdir()] == ["mine.txt"]
    junk = tmp_path / "junk.tif"
    junk.write_bytes(b"II*\x00 not really")
    refused(predict_here(capfd, "-m", model_200, "--t1", junk, "--t2", t2, "--out", tmp_path / "m2"),
            "junk.tif: unreadable")
    assert not (tmp_path / "m2").exists()


@pytest.mark.slow
def test_a_trained_model_finds_the_changed_block(tmp_path, capfd):
    """Shards cut from the scene by make_shards, a few epochs of the small backbone, then the
    scene mapped: the changed block is where the scene put it."""
    import keras

    import model as cfn
    from data.loader import make_dataset

    t1, t2, y1, y2 = scenes.make_scene(tmp_path, rows=12, cols=16, tile=32,
                                       changed=(slice(3, 7), slice(5, 10)))
    np.save(tmp_path / "y1.npy", y1)
    np.save(tmp_path / "y2.npy", y2)
    data = tmp_path / "shards"
    from data import make_shards

    assert make_shards.main([str(a) for a in (
        "raster", "--t1", t1, "--t2", t2, "--labels1", tmp_path / "y1.npy", "--labels2",
        tmp_path / "y2.npy", "--tile", 32, "--out", data, "--split", "0.8,0.1,0.1",
        "--class_names", ",".join(scenes.CLASS_NAMES))]) == 0
    keras.utils.set_random_seed(0)
    net = cfn.build_model(3, image_size=(32, 32), backbone="small", hidden=32, seed=0)
    net.compile(optimizer=keras.optimizers.Adam(3e-3))
    ds, _ = make_dataset(data / "trn", 16, training=True, raw_integers=True)
    net.fit(ds, epochs=6, verbose=0)
    net.save(tmp_path / "m.keras")
    out = tmp_path / "maps"
    proc = predict_here(capfd, "-m", tmp_path / "m.keras", "--t1", t1, "--t2", t2, "--out", out,
                        "--class_names", ",".join(scenes.CLASS_NAMES))
    assert proc.returncode == 0, proc.stderr
    change, meta = tif(out / "change.tif")
    assert meta["crs"].to_epsg() == 32650 and meta["size"] == (16, 12)
    truth = y1 != y2
    assert change[truth].mean() >= 0.9  # the block is found ...
    assert change[~truth].mean() <= 0.05  # ... and little else
    assert (tif(out / "class_t1.tif")[0] == y1).mean() >= 0.9


def test_run_directory_gives_checkpoint_input_and_class_names(tmp_path, model_200):
    """-m RUN: its checkpoints/best.keras, the model's input and K from config.json (no
    TensorFlow), the class names from the run's args.json; --class_names overrides them."""
    import shutil

    import predict

    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    shutil.copy(model_200, run_dir / "checkpoints" / "best.keras")
    (run_dir / "args.json").write_text(json.dumps({"class_names": ["water", "crops", "town"]}))
    ckpt, shape, k, saved = predict.read_model_card(run_dir)
    assert ckpt == run_dir / "checkpoints" / "best.keras" and shape == (200, 200, 3) and k == 3
    assert predict.class_names(None, saved, k, ckpt) == ["water", "crops", "town"]
    assert predict.class_names("a,b,c", saved, k, ckpt) == ["a", "b", "c"]
    assert predict.class_names(None, None, k, ckpt) == ["class 1", "class 2", "class 3"]
    args = predict.parse_args(["-m", str(run_dir), "--t1", "a.tif", "--t2", "b.tif", "--out", "o"])
    config = predict.make_config(args, ckpt, shape)
    assert (config.tile, config.stride, config.threshold) == (200, 200, None)
