"""evaluation.scene_map on synthetic GeoTIFF scenes, with a stub model that tells classes by colour.

The stub makes the expected maps exact (the changed block is exactly where the scene put it);
predict.py with a real (trained) model is tested in tests/scripts/test_predict.py.
"""

import json

import numpy as np
import pytest
import rasterio
from affine import Affine

from data import rasters
from evaluation import map_files, scene_map
from tests.data import _scenes as scenes
from utils.cli import UsageError

NAMES = list(scenes.CLASS_NAMES)


class ColourNet:
    """Stands in for a CorrFusionNet: p(class) from the distance of a tile's mean colour to the
    scene's class colours. ``fail_at``: raise on that call (1-based)."""

    def __init__(self, fail_at=None):
        self.calls, self.fail_at = 0, fail_at
        self.colours = np.array([scenes.COLOURS[k] for k in (1, 2, 3)], np.float32)

    def probs(self, x):
        mean = np.asarray(x, np.float32).mean(axis=(1, 2))
        d = ((mean[:, None, :] - self.colours[None]) ** 2).sum(-1)
        e = np.exp(-(d - d.min(axis=1, keepdims=True)) / 50.0)
        return e / e.sum(axis=1, keepdims=True)

    def predict_on_batch(self, inputs):
        self.calls += 1
        if self.calls == self.fail_at:
            raise RuntimeError("device lost")
        x1, x2 = inputs
        assert x1.dtype == np.uint8  # integer tiles go to the model as stored
        return {"prob_t1": self.probs(x1), "prob_t2": self.probs(x2), "dist": np.zeros(len(x1))}


def run_map(tmp_path, t1, t2, net=None, **kw):
    config = scene_map.MapConfig(t1=t1, t2=t2, out=tmp_path / "maps", progress=False,
                                 **{"tile": 32, **kw})
    with rasters.open_pair(t1, t2, align=config.align) as pair:
        return scene_map.map_scene(net or ColourNet(), config, pair, NAMES), config.out


def read(path):
    """Band 1 and what the tests ask of the file (read while it is open)."""
    from types import SimpleNamespace

    with rasterio.open(path) as src:
        meta = SimpleNamespace(crs=src.crs, dtypes=src.dtypes, nodata=src.nodata,
                               transform=src.transform, width=src.width, height=src.height,
                               descriptions=src.descriptions, tags=src.tags)
        try:
            cmap = src.colormap(1)
        except ValueError:  # no colour table
            cmap = None
        meta.colormap = lambda band: cmap
        meta.band_tags = src.tags(1)
        return src.read(1), meta


@pytest.fixture
def scene(tmp_path):
    return scenes.make_scene(tmp_path, rows=8, cols=10, tile=32)


def test_tile_resolution_maps_put_the_change_where_it_was_made(tmp_path, scene):
    t1, t2, y1, y2 = scene
    summary, out = run_map(tmp_path, t1, t2)
    assert sorted(p.name for p in out.iterdir()) == sorted(summary["files"])
    c1, src = read(out / "class_t1.tif")
    assert src.crs.to_epsg() == 32650 and src.dtypes[0] == "uint8" and src.nodata == 0
    assert src.transform == Affine(320.0, 0, scenes.ORIGIN[0], 0, -320.0, scenes.ORIGIN[1])
    assert (src.width, src.height) == (10, 8)
    assert src.descriptions[0].startswith("scene class at date 1: 1=water, 2=vegetation")
    assert src.colormap(1)[1][:3] == map_files.PALETTE[0]
    assert src.band_tags["CLASS_3"] == "built-up"
    np.testing.assert_array_equal(c1, y1)
    np.testing.assert_array_equal(read(out / "class_t2.tif")[0], y2)
    change, src = read(out / "change.tif")
    assert src.dtypes[0] == "uint8" and src.nodata == 255
    np.testing.assert_array_equal(change, (y1 != y2).astype(np.uint8))
    p, src = read(out / "p_change.tif")
    assert src.dtypes[0] == "float32"
    assert p[y1 != y2].min() > 0.5 > p[y1 == y2].max()
    codes, _ = read(out / "from_to.tif")
    np.testing.assert_array_equal(codes, (y1 - 1) * 3 + y2)
    legend = json.loads((out / "from_to.json").read_text())["legend"]
    assert legend["2"] == {"from": "water", "to": "vegetation", "from_id": 1, "to_id": 2,
                           "changed": True}
    n = int((y1 != y2).sum())
    assert summary["changed"] == {"cells": n, "area": n * 320.0 ** 2, "fraction": n / 80}
    assert summary["map_units"] == "metre" and summary["pairs"] == 80
    counts = {(t["from"], t["to"]): t["cells"] for t in summary["transitions"]}
    assert sum(v for (a, b), v in counts.items() if a != b) == n
    assert json.loads((out / "summary.json").read_text())["changed"]["cells"] == n


def test_edges_are_padded_not_dropped(tmp_path):
    t1, t2, y1, y2 = scenes.make_scene(tmp_path, rows=8, cols=11, tile=32, height=8 * 32 - 10,
                                       width=10 * 32 + 7)
    summary, out = run_map(tmp_path, t1, t2)
    c1, src = read(out / "class_t1.tif")
    assert (src.width, src.height) == (11, 8)
    assert summary["grid"]["padded_bottom_right"] == [10, 25]
    np.testing.assert_array_equal(c1, y1)  # the 7-pixel-wide last column mapped too


def test_stride_below_tile_gives_pixel_resolution(tmp_path, scene):
    t1, t2, y1, y2 = scene
    summary, out = run_map(tmp_path, t1, t2, stride=16)
    c1, src = read(out / "class_t1.tif")
    assert (src.width, src.height) == (320, 256)
    assert src.transform == scenes.transform()
    assert summary["grid"]["resolution"] == "pixel"
    change = read(out / "change.tif")[0]
    # a cell's centre is covered by tiles reaching into its 8 neighbours: where those are of the
    # cell's class at both dates, the averaged probabilities give the cell's class
    same = uniform(y1) & uniform(y2)
    assert same.sum() >= 4
    centre = (slice(16, None, 32), slice(16, None, 32))
    np.testing.assert_array_equal(c1[centre][same], y1[same])
    np.testing.assert_array_equal(change[centre][same], (y1 != y2)[same].astype(np.uint8))
    inside = np.kron(y1 != y2, np.ones((32, 32), bool))  # the changed block, in pixels
    assert change[inside].mean() > 0.8 and change[~inside].mean() < 0.1
    assert summary["changed"]["area"] == summary["changed"]["cells"] * 100.0


def uniform(y):
    """Cells whose 8 neighbours (inside the grid) all have the cell's class."""
    p = np.pad(y, 1, mode="edge")
    h, w = y.shape
    return np.all([p[1 + dr:1 + dr + h, 1 + dc:1 + dc + w] == y
                   for dr in (-1, 0, 1) for dc in (-1, 0, 1)], axis=0)


def test_nodata_stays_nodata(tmp_path):
    y = scenes.class_grid(8, 10)
    x1 = scenes.render(y, 32, seed=1)
    x2 = scenes.render(y, 32, seed=2)
    x1[:64, :96] = 0  # 2 x 3 tiles without data at date 1 (nodata value 0)
    t1 = scenes.write_tif(tmp_path / "t1.tif", x1, nodata=0)
    t2 = scenes.write_tif(tmp_path / "t2.tif", x2)
    summary, out = run_map(tmp_path, t1, t2)
    c1, c2 = read(out / "class_t1.tif")[0], read(out / "class_t2.tif")[0]
    change, p, codes = (read(out / f)[0] for f in ("change.tif", "p_change.tif", "from_to.tif"))
    assert (c1[:2, :3] == 0).all() and (c1[2:] > 0).all()
    np.testing.assert_array_equal(c2, y)  # date 2 has data there
    assert (change[:2, :3] == 255).all() and (p[:2, :3] == -1).all() and (codes[:2, :3] == 0).all()
    assert (change[2:] == 0).all()
    assert summary["cells"]["nodata"] == 6 and summary["pairs"] == 74


def test_threshold_rule(tmp_path, scene):
    t1, t2, y1, y2 = scene
    summary, out = run_map(tmp_path, t1, t2, threshold=0.9)
    change, src = read(out / "change.tif")
    p = read(out / "p_change.tif")[0]
    np.testing.assert_array_equal(change, (p >= 0.9).astype(np.uint8))
    assert "p_change >= 0.9" in src.descriptions[0]
    assert summary["change_rule"] == "p_change >= 0.9"
    assert summary["changed"]["cells"] == summary["changed_threshold"]


def test_quicklook_is_a_png_of_bounded_size(tmp_path, scene):
    from PIL import Image

    t1, t2, *_ = scene
    _, out = run_map(tmp_path, t1, t2, quicklook_size=100)
    with Image.open(out / "quicklook.png") as im:
        assert im.format == "PNG" and max(im.size) == 100


def test_a_failure_mid_scene_leaves_nothing(tmp_path, scene):
    t1, t2, *_ = scene
    with pytest.raises(RuntimeError, match="device lost"):
        run_map(tmp_path, t1, t2, net=ColourNet(fail_at=3), batch_size=4)
    assert not (tmp_path / "maps").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".maps")]


def test_output_dir_new_or_empty(tmp_path, scene):
    t1, t2, *_ = scene
    out = tmp_path / "maps"
    out.mkdir()
    scene_map.check_output_dir(out)  # empty: fine, and used
    run_map(tmp_path, t1, t2)
    with pytest.raises(UsageError, match="maps: --out: exists and is not empty"):
        scene_map.check_output_dir(out)
    with pytest.raises(UsageError, match="exists and is not a directory"):
        scene_map.check_output_dir(t1)
    with pytest.raises(UsageError, match="its parent .*t1.tif is a file"):
        scene_map.check_output_dir(t1 / "maps")


def test_pixel_rows_average_overlapping_tiles():
    """Two tiles overlap on 2 of 4 columns: those pixels get the mean of both tiles' p."""
    from types import SimpleNamespace

    grid = rasters.TileGrid(4, 6, 4, 2)
    acc = scene_map.PixelRows(grid, 2)
    valid = np.ones(2, bool)
    row = SimpleNamespace(index=0, valid1=valid, valid2=valid, pixels1=np.ones((4, 6), bool),
                          pixels2=np.ones((4, 6), bool))
    p = np.array([[1.0, 0.0], [0.0, 1.0]], np.float32)
    (block,) = acc.add(row, np.arange(2), p, p)
    assert block.p1.shape == (4, 6, 2) and block.row_off == 0
    np.testing.assert_allclose(block.p1[0, :, 0], [1, 1, 0.5, 0.5, 0, 0])


# ----------------------------------------------------------------------------- input_norm
class _Net:
    """Stands for a CorrFusionNet: its config's input_norm and a record of what it was fed."""

    def __init__(self, input_norm):
        from model.config import ModelConfig

        self.config = ModelConfig(num_classes=2, input_norm=input_norm)
        self.fed = []

    def predict_on_batch(self, x):
        self.fed.append(x)
        n = len(x[0])
        return {"prob_t1": np.full((n, 2), 0.5, np.float32), "prob_t2": np.full((n, 2), 0.5, np.float32)}


@pytest.mark.parametrize("input_norm", ["bands", "bands_per_date", "dtype"])
def test_tiles_are_handed_over_as_the_loader_hands_batches(input_norm):
    """As the loader: integers as stored; resized tiles float32, raw values for the bands modes
    (the model standardises them), dtype-scaled for dtype."""
    from data.shards import scale_images

    x = np.random.default_rng(0).integers(0, 4096, (3, 8, 8, 3)).astype(np.uint16)
    same = scene_map.TilePredictor(_Net(input_norm), 4, (8, 8))
    assert same.prepare(x) is x
    resized = scene_map.TilePredictor(_Net(input_norm), 4, (16, 16)).prepare(x)
    assert resized.dtype == np.float32 and resized.shape == (3, 16, 16, 3)
    want = scale_images(x) if input_norm == "dtype" else x.astype(np.float32)
    np.testing.assert_allclose(resized.mean(), want.mean(), rtol=1e-3)


def test_a_shard_max_model_is_refused_in_one_line():
    with pytest.raises(UsageError, match="--input_norm shard_max.*a scene has no shards"):
        scene_map.TilePredictor(_Net("shard_max"))
