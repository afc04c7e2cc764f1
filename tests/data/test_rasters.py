"""data.rasters: tile grid, alignment of the two dates, windowed reads with padding and nodata."""

import numpy as np
import pytest
from affine import Affine

from data import rasters
from tests.data import _scenes as scenes


def info(width=100, height=80, crs="EPSG:32650", tf=None):
    from types import SimpleNamespace

    from rasterio.crs import CRS

    return SimpleNamespace(width=width, height=height, crs=CRS.from_user_input(crs) if crs else None,
                           transform=tf if tf is not None else scenes.transform())


# ----------------------------------------------------------------------------- grid


@pytest.mark.parametrize("h, w, tile, stride, rows, cols, pads", [
    (800, 1000, 200, 200, 4, 5, (0, 0)),
    (855, 1141, 150, 150, 6, 8, (45, 59)),
    (100, 100, 64, 32, 3, 3, (28, 28)),
    (50, 40, 64, 64, 1, 1, (14, 24)),  # smaller than one tile: padded, not dropped
])
def test_tile_grid_covers_every_pixel(h, w, tile, stride, rows, cols, pads):
    g = rasters.TileGrid(h, w, tile, stride)
    assert (g.rows, g.cols, g.pads) == (rows, cols, pads)
    assert g.padded_height >= h and g.padded_width >= w
    assert g.padded_height - stride < h  # no row of tiles lies wholly in the padding
    assert g.tile_resolution == (tile == stride)


def test_tile_grid_refuses_stride_above_tile():
    with pytest.raises(ValueError, match="--stride 80: expected 1..64"):
        rasters.TileGrid(100, 100, 64, 80)


def test_tile_transform_scales_the_pixel_to_the_tile():
    g = rasters.TileGrid(800, 1000, 200, 200)
    t = rasters.tile_transform(scenes.transform(), g)
    assert t == Affine(2000.0, 0, scenes.ORIGIN[0], 0, -2000.0, scenes.ORIGIN[1])


# ----------------------------------------------------------------------------- alignment


def test_same_grid_and_sub_half_pixel_shift_are_aligned():
    assert rasters.alignment_problem(info(), info()) is None
    shifted = scenes.transform((scenes.ORIGIN[0] + 4.0, scenes.ORIGIN[1] - 3.0))  # 0.4 px
    assert rasters.alignment_problem(info(), info(tf=shifted)) is None


@pytest.mark.parametrize("other, words", [
    (dict(crs="EPSG:32651"), ["CRS EPSG:32650 vs EPSG:32651"]),
    (dict(crs=None), ["CRS EPSG:32650 vs none"]),
    (dict(width=101), ["size 100x80 vs 101x80 pixels (width x height)"]),
    (dict(tf=scenes.transform((scenes.ORIGIN[0] + 5000, scenes.ORIGIN[1]))),
     ["shifted by (5000, 0) map units = 500.0 pixels"]),
    (dict(tf=scenes.transform((scenes.ORIGIN[0] + 6, scenes.ORIGIN[1]))), ["0.6 pixels"]),
    (dict(tf=scenes.transform(pixel=20.0)), ["pixel size 10 x -10 vs 20 x -20"]),
])
def test_misaligned_grids_are_named(other, words):
    problem = rasters.alignment_problem(info(), info(**other))
    for w in words:
        assert w in problem


def write_pair(tmp_path, x1=None, x2=None, tf2=None, crs2=scenes.CRS, nodata=None):
    x1 = scenes.render(scenes.class_grid(3, 4), 20, seed=1) if x1 is None else x1
    x2 = scenes.render(scenes.class_grid(3, 4), 20, seed=2) if x2 is None else x2
    p1 = scenes.write_tif(tmp_path / "a.tif", x1, nodata=nodata)
    p2 = scenes.write_tif(tmp_path / "b.tif", x2, crs=crs2, tf=tf2, nodata=nodata)
    return p1, p2


def test_open_pair_refuses_a_shifted_date_naming_both_files(tmp_path):
    p1, p2 = write_pair(tmp_path, tf2=scenes.transform((scenes.ORIGIN[0] + 5000, scenes.ORIGIN[1])))
    with pytest.raises(rasters.RasterError) as e, rasters.open_pair(p1, p2, hint="; use --align"):
        pass
    msg = str(e.value)
    assert msg.startswith(f"{p1}, {p2}: transform") and msg.endswith("; use --align")
    assert "\n" not in msg


def test_open_pair_checks_bands_and_dtypes(tmp_path):
    p1, p2 = write_pair(tmp_path)
    with pytest.raises(rasters.RasterError, match=r"a.tif: --bands 1,4: the raster has 3 band"):
        with rasters.open_pair(p1, p2, bands=[1, 4]):
            pass
    with pytest.raises(rasters.RasterError, match=r"3 band\(s\) selected; expected 4"):
        with rasters.open_pair(p1, p2, channels=4):
            pass
    x16 = scenes.render(scenes.class_grid(3, 4), 20, seed=2, dtype=np.uint16)
    p3 = scenes.write_tif(tmp_path / "c.tif", x16)
    with pytest.raises(rasters.RasterError, match="dtype uint8 vs uint16"):
        with rasters.open_pair(p1, p3):
            pass
    with pytest.raises(rasters.RasterError, match="missing.tif: no such file"):
        with rasters.open_pair(p1, tmp_path / "missing.tif"):
            pass
    (tmp_path / "junk.tif").write_bytes(b"not a tiff")
    with pytest.raises(rasters.RasterError, match="junk.tif: unreadable"):
        with rasters.open_pair(p1, tmp_path / "junk.tif"):
            pass


def test_align_resamples_date_2_onto_date_1(tmp_path):
    """Date 2 covers the same ground on a grid shifted by 3 pixels: aligned, it matches date 1."""
    x = scenes.render(scenes.class_grid(3, 4), 20, seed=1, noise=0)
    shifted = np.zeros_like(x)
    shifted[:, :-3] = x[:, 3:]  # date-2 pixel (r, c) is date-1 pixel (r, c + 3)
    tf2 = scenes.transform((scenes.ORIGIN[0] + 3 * scenes.PIXEL, scenes.ORIGIN[1]))
    p1, p2 = write_pair(tmp_path, x1=x, x2=shifted, tf2=tf2)
    with rasters.open_pair(p1, p2, align=True) as pair:
        assert pair.aligned and (pair.src2.width, pair.src2.height) == (80, 60)
        grid = pair.grid(20)
        rows = list(rasters.iter_tile_rows(pair, grid))
    got = np.concatenate([np.concatenate(list(r.x2), axis=1) for r in rows], axis=0)
    np.testing.assert_array_equal(got[:, 3:], x[:, 3:])
    assert not rows[0].pixels2[:, :3].any()  # west of date 2's footprint: no data
    assert rows[0].pixels2[:, 3:].all()


def test_align_refuses_a_date_without_crs(tmp_path):
    p1, p2 = write_pair(tmp_path, crs2=None)
    with pytest.raises(rasters.RasterError, match="b.tif: no CRS; --align"):
        with rasters.open_pair(p1, p2, align=True):
            pass


# ----------------------------------------------------------------------------- reading


def test_tiles_are_the_raster_windows_and_edges_are_mirrored(tmp_path):
    x1 = scenes.render(scenes.class_grid(3, 4), 20, height=55, width=70, seed=1)
    p1, p2 = write_pair(tmp_path, x1=x1, x2=x1)
    with rasters.open_pair(p1, p2) as pair:
        grid = pair.grid(20)
        rows = list(rasters.iter_tile_rows(pair, grid))
    assert len(rows) == 3 and rows[0].x1.shape == (4, 20, 20, 3)
    np.testing.assert_array_equal(rows[1].x1[2], x1[20:40, 40:60])
    # last column: 10 real pixel columns, then the same mirrored
    np.testing.assert_array_equal(rows[0].x1[3][:, :10], x1[:20, 60:70])
    np.testing.assert_array_equal(rows[0].x1[3][:, 10:], x1[:20, 60:70][:, ::-1])
    # last row: 15 real rows, mirrored below
    np.testing.assert_array_equal(rows[2].x1[0][:15], x1[40:55, :20])
    np.testing.assert_array_equal(rows[2].x1[0][15:], x1[50:55, :20][::-1])
    assert all(r.valid1.all() for r in rows)  # edge tiles are kept


def test_overlapping_tiles_with_stride(tmp_path):
    x1 = scenes.render(scenes.class_grid(3, 4), 20, seed=1)
    p1, p2 = write_pair(tmp_path, x1=x1, x2=x1)
    with rasters.open_pair(p1, p2) as pair:
        grid = pair.grid(20, 10)
        row = rasters.read_tile_row(pair, grid, 3)
    assert (grid.rows, grid.cols) == (5, 7)
    np.testing.assert_array_equal(row.x1[5], x1[30:50, 50:70])
    assert row.pixels1.shape == (20, 80)


def test_nodata_value_and_all_zero_tiles(tmp_path):
    x1 = scenes.render(scenes.class_grid(3, 4), 20, seed=1)
    x2 = scenes.render(scenes.class_grid(3, 4), 20, seed=2)
    x1[:20, :20] = 7  # tile (0, 0) of date 1: all nodata (value 7)
    x1[:20, 20:32] = 7  # tile (0, 1) of date 1: 60 % nodata
    x1[:20, 40:45] = 7  # tile (0, 2): 25 % nodata, kept
    x2[20:40, 60:80] = 0  # tile (1, 3) of date 2: all zero
    p1 = scenes.write_tif(tmp_path / "a.tif", x1, nodata=7)
    p2 = scenes.write_tif(tmp_path / "b.tif", x2)
    with rasters.open_pair(p1, p2) as pair:
        r0, r1 = (rasters.read_tile_row(pair, pair.grid(20), r) for r in (0, 1))
    assert r0.valid1.tolist() == [False, False, True, True]
    assert r1.valid2.tolist() == [True, True, True, False]
    assert not r0.pixels1[:, :20].any() and r0.pixels1[:, 45:].all()
    with rasters.open_pair(p1, p2) as pair:
        r0 = rasters.read_tile_row(pair, pair.grid(20), 0, min_valid=0.0)
    assert r0.valid1.tolist() == [False, True, True, True]  # any data pixel will do


def test_float_rasters_outside_0_1_are_refused(tmp_path):
    x = np.full((20, 20, 3), 0.5, np.float32)
    x[3, 4, 1] = 7.0
    p1 = scenes.write_tif(tmp_path / "a.tif", x)
    p2 = scenes.write_tif(tmp_path / "b.tif", np.full((20, 20, 3), 0.5, np.float32))
    with rasters.open_pair(p1, p2) as pair, pytest.raises(
            rasters.RasterError, match=r"a.tif: pixel \(row 3, col 4\): value outside \[0, 1\]"):
        rasters.read_tile_row(pair, pair.grid(20), 0)


def test_other_dtypes_are_refused(tmp_path):
    x = np.ones((20, 20, 3), np.int16)
    p1 = scenes.write_tif(tmp_path / "a.tif", x)
    with pytest.raises(rasters.RasterError, match="a.tif: dtype int16; expected uint8, uint16"):
        with rasters.open_pair(p1, p1):
            pass
