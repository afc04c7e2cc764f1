"""Synthetic bi-temporal GeoTIFF scenes for the raster, scene-map and predict.py tests.

A scene is a grid of ``tile`` × ``tile`` cells, each filled with one of three easily told apart
classes (1: dark water-blue, 2: green, 3: bright grey, plus pixel noise), written in a projected
CRS (UTM 50N, EPSG:32650) with 10 m pixels. Date 2 equals date 1 (other noise) except a block of
cells whose class changes.
"""

import numpy as np

CRS = "EPSG:32650"
ORIGIN = (500000.0, 3400000.0)  # upper-left corner (x, y) in metres
PIXEL = 10.0
COLOURS = {1: (30, 60, 120), 2: (40, 140, 50), 3: (200, 200, 190)}
CLASS_NAMES = ("water", "vegetation", "built-up")


def transform(origin=ORIGIN, pixel=PIXEL):
    from rasterio.transform import from_origin

    return from_origin(origin[0], origin[1], pixel, pixel)


def class_grid(rows, cols, seed=0):
    """(rows, cols) class ids 1..3 in patches (neighbouring cells often alike)."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(1, 4, size=(rows // 2 + 1, cols // 2 + 1))
    grid = np.repeat(np.repeat(coarse, 2, 0), 2, 1)[:rows, :cols]
    flip = rng.random((rows, cols)) < 0.25
    grid[flip] = rng.integers(1, 4, size=int(flip.sum()))
    return grid.astype(np.int32)


def render(grid, tile, height=None, width=None, seed=0, noise=12.0, dtype=np.uint8):
    """(height, width, 3) image of a class grid (cells of ``tile`` pixels), cropped or extended."""
    rng = np.random.default_rng(seed)
    rows, cols = grid.shape
    lut = np.zeros((4, 3), np.float32)
    for k, c in COLOURS.items():
        lut[k] = c
    image = np.repeat(np.repeat(lut[grid], tile, 0), tile, 1)
    height = height or rows * tile
    width = width or cols * tile
    image = np.pad(image, ((0, max(0, height - image.shape[0])), (0, max(0, width - image.shape[1])),
                           (0, 0)), mode="edge")[:height, :width]
    image = image + rng.normal(0, noise, image.shape)
    top = 255 if dtype == np.uint8 else 65535
    scale = 1 if dtype == np.uint8 else 257
    return np.clip(image * scale, 1, top).astype(dtype)


def write_tif(path, image, crs=CRS, tf=None, nodata=None):
    """A (H, W, C) array as a GeoTIFF."""
    import rasterio

    h, w, c = image.shape
    profile = {"driver": "GTiff", "height": h, "width": w, "count": c, "dtype": image.dtype,
               "crs": crs, "transform": tf if tf is not None else transform()}
    if nodata is not None:
        profile["nodata"] = nodata
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(np.moveaxis(image, -1, 0))
    return path


def make_scene(root, rows=8, cols=10, tile=32, changed=(slice(2, 5), slice(3, 7)), height=None,
               width=None, seed=0, dtype=np.uint8, to_class=None):
    """Two GeoTIFFs t1.tif, t2.tif in ``root`` and their class grids (y1, y2).

    ``changed``: the block of cells (row slice, col slice) whose class differs at date 2 (each
    changed cell takes ``to_class``, default the next class).
    """
    y1 = class_grid(rows, cols, seed)
    y2 = y1.copy()
    block = y2[changed]
    y2[changed] = to_class if to_class is not None else block % 3 + 1
    x1 = render(y1, tile, height, width, seed + 1, dtype=dtype)
    x2 = render(y2, tile, height, width, seed + 2, dtype=dtype)
    t1 = write_tif(root / "t1.tif", x1)
    t2 = write_tif(root / "t2.tif", x2)
    return t1, t2, y1, y2
