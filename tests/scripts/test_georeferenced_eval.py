"""Georeferenced shards through eval.py (GeoTIFF maps on the shards' grid), and unlabelled shards
refused by train_cnn.py and eval.py (issue 12)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio

import eval as E
import train_cnn
from data import make_shards, split_summary
from tests.data import _scenes as scenes
from utils.cli import run_main

T = 16  # tile size = the model's input


@pytest.fixture(scope="module")
def scene_shards(tmp_path_factory):
    """``make_shards raster`` on a synthetic GeoTIFF pair: labelled/ and unlabelled/ shard sets."""
    root = tmp_path_factory.mktemp("scene")
    t1, t2, y1, y2 = scenes.make_scene(root, rows=6, cols=8, tile=T)
    np.save(root / "y1.npy", y1)
    np.save(root / "y2.npy", y2)
    base = ["raster", "--t1", str(t1), "--t2", str(t2), "--tile", str(T)]
    assert make_shards.main([*base, "--labels1", str(root / "y1.npy"), "--labels2",
                             str(root / "y2.npy"), "--out", str(root / "labelled")]) == 0
    assert make_shards.main([*base, "--out", str(root / "unlabelled")]) == 0
    return root


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A random-weight small model for the scene's 3 classes and T x T tiles, saved as .keras."""
    import keras

    import model as cfn

    net = cfn.build_model(3, image_size=(T, T), backbone="small", hidden=16, seed=0)
    net((keras.ops.zeros((1, T, T, 3)), keras.ops.zeros((1, T, T, 3))))
    path = tmp_path_factory.mktemp("model") / "m.keras"
    net.save(path)
    return path


def one_error_line(capsys) -> str:
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1 and err[0].startswith("error: ") and "Traceback" not in err[0], err
    return err[0]


def test_training_on_unlabelled_shards_is_refused(scene_shards, tmp_path, capsys):
    data = scene_shards / "unlabelled"
    work = tmp_path / "w"
    rc = run_main(train_cnn.main, ["--data_dir", str(data), "--workdir", str(work),
                                   "--backbone", "small", "-e", "1"])
    assert rc == 2
    err = one_error_line(capsys)
    assert err.startswith(f"error: {data / 'trn'}: trn split: ")
    assert "the shards have no labels (make_shards raster without --labels1/--labels2" in err and "training" in err
    assert not work.exists()


@pytest.mark.slow
def test_eval_on_an_unlabelled_split_is_refused(scene_shards, checkpoint, tmp_path, capsys):
    tst = scene_shards / "unlabelled" / "tst"
    out = tmp_path / "out"
    assert run_main(E.main, ["-m", str(checkpoint), "-tst", str(tst), "-rpath", str(out)]) == 2
    err = one_error_line(capsys)
    assert err.startswith(f"error: {tst}: tst split: ")
    assert "the shards have no labels (make_shards raster without --labels1/--labels2" in err and "evaluation" in err
    assert not out.exists()


@pytest.mark.slow
def test_eval_writes_geotiffs_on_the_shards_grid(scene_shards, checkpoint, tmp_path):
    data = scene_shards / "labelled"
    out = tmp_path / "out"
    assert run_main(E.main, ["-m", str(checkpoint), "--data_dir", str(data), "-rpath",
                             str(out), "-b", "8"]) == 0
    for split in ("val", "tst"):
        summary = split_summary.inspect_split(data / split)
        geo = summary.geo
        with np.load(out / split / "predictions.npz") as z:
            row, col = z["row"], z["col"]
            pred1, pred2, p_change = z["pred_t1"], z["pred_t2"], z["p_change"]
        shape = (row.max() + 1, col.max() + 1)
        empty = np.ones(shape, bool)
        empty[row, col] = False
        assert empty.any()  # a split holds some tiles of the grid: the others are nodata
        expect = {"class_t1.tif": ("uint8", 0, pred1 + 1), "class_t2.tif": ("uint8", 0, pred2 + 1),
                  "change.tif": ("uint8", 255, (pred1 != pred2).astype(int)),
                  "p_change.tif": ("float32", -1.0, p_change)}
        for name, (dtype, nodata, values) in expect.items():
            with rasterio.open(out / split / name) as src:
                assert src.crs == rasterio.crs.CRS.from_wkt(geo["crs"])
                assert src.crs.to_epsg() == 32650
                assert src.transform == rasterio.Affine(*geo["transform"])
                assert src.transform == scenes.transform() @ rasterio.Affine.scale(T)
                assert (src.height, src.width) == shape and src.count == 1
                assert src.dtypes[0] == dtype and src.nodata == nodata
                band = src.read(1)
            np.testing.assert_allclose(band[row, col], values, rtol=1e-6)
            assert (band[empty] == nodata).all()
        legend = json.loads((out / split / "from_to.json").read_text())["legend"]
        assert legend["2"] == {"from": "class 1", "to": "class 2", "from_id": 1, "to_id": 2,
                               "changed": True}


@pytest.mark.slow
def test_eval_without_georeferencing_writes_no_geotiff(checkpoint, tmp_path):
    from data import synthetic

    synthetic.generate(tmp_path / "d", pairs=40, size=T, classes=3, seed=0)
    out = tmp_path / "out"
    assert run_main(E.main, ["-m", str(checkpoint), "-tst", str(tmp_path / "d" / "tst"), "-rpath",
                             str(out)]) == 0
    assert (out / "tst" / "change_map.png").is_file()
    assert not list(Path(out).rglob("*.tif"))
