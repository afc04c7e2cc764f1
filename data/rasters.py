"""Two co-registered rasters as a grid of tile pairs: alignment checks, tiling grid, windowed reads.

Shared by ``predict.py`` (mapping a whole scene) and ``python -m data.make_shards raster`` (cutting
labelled shards), so that both accept and refuse the same pairs of images:

* :func:`open_pair` opens the two dates with rasterio and checks them against each other
  (:func:`alignment_problem`: the same CRS, the same transform within half a pixel, the same size);
  with ``align=True`` date 2 is instead resampled onto date 1's grid on the fly (a
  ``rasterio.vrt.WarpedVRT``, i.e. GDAL's warper, the engine of ``rasterio.warp.reproject``).
* :class:`TileGrid` lays tiles of ``tile`` pixels every ``stride`` pixels over the raster. Tiles
  start at the top-left corner; the last row and column of tiles reach past the right and bottom
  edges, which are padded (mirrored) rather than dropped.
* :func:`iter_tile_rows` reads one row of tiles at a time with windowed reads (a strip of ``tile``
  pixel rows, all columns), so memory is bounded by one row of tiles whatever the scene size.

Nodata: a pixel is nodata at a date when rasterio masks it (the raster's nodata value, an internal
mask or alpha band; outside date 2's footprint after ``--align``) or when all its bands are 0. A
tile holds no data at a date when fewer than ``min_valid`` of its in-raster pixels hold data (an
all-zero tile always; the mirrored padding never counts).

Bad input raises :class:`RasterError`, one line ``<file>: <what>; expected ...``. Only NumPy and
rasterio are imported (no TensorFlow).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import pathlib
import re
import warnings

import numpy as np

from data.shards import ShardError

PIXEL_TOLERANCE = 0.5  # the two dates' grids may differ by at most half a pixel
SUPPORTED_DTYPES = ("uint8", "uint16", "float32", "float64")


class RasterError(ShardError):
    """A raster, or a pair of rasters, that cannot be tiled (one line naming the file(s))."""


# ----------------------------------------------------------------------------- tiling grid


@dataclasses.dataclass(frozen=True)
class TileGrid:
    """Tiles of ``tile`` × ``tile`` pixels every ``stride`` pixels over a ``height`` × ``width`` raster.

    Tile (r, c) covers pixel rows ``r*stride .. r*stride+tile`` and columns
    ``c*stride .. c*stride+tile``; ``rows``/``cols`` are the fewest tiles that cover every pixel
    (the last ones reach past the edge, which is padded).
    """

    height: int
    width: int
    tile: int
    stride: int

    def __post_init__(self):
        if self.tile < 1:
            raise ValueError(f"--tile {self.tile}: expected >= 1")
        if not 1 <= self.stride <= self.tile:
            raise ValueError(f"--stride {self.stride}: expected 1..{self.tile} (at most the tile)")
        if self.height < 1 or self.width < 1:
            raise ValueError(f"raster of {self.width}x{self.height} pixels: expected at least 1x1")

    @property
    def rows(self) -> int:
        return 1 + math.ceil(max(0, self.height - self.tile) / self.stride)

    @property
    def cols(self) -> int:
        return 1 + math.ceil(max(0, self.width - self.tile) / self.stride)

    @property
    def n_tiles(self) -> int:
        return self.rows * self.cols

    @property
    def padded_height(self) -> int:
        return (self.rows - 1) * self.stride + self.tile

    @property
    def padded_width(self) -> int:
        return (self.cols - 1) * self.stride + self.tile

    @property
    def pads(self) -> tuple[int, int]:
        """Pixels of padding below and to the right of the raster (0, 0 when the tiles fit)."""
        return self.padded_height - self.height, self.padded_width - self.width

    @property
    def tile_resolution(self) -> bool:
        """One output cell per tile (stride == tile); else one per pixel (overlapping tiles)."""
        return self.stride == self.tile

    def strip(self, r) -> tuple[int, int]:
        """Pixel rows ``(start, stop)`` inside the raster that tile row ``r`` reads."""
        start = r * self.stride
        return start, min(start + self.tile, self.height)


def tile_transform(transform, grid: TileGrid):
    """The affine transform of a raster with one cell per tile (``grid.tile_resolution``)."""
    from affine import Affine  # deferred: rasterio's affine loads on first use

    return transform @ Affine.scale(grid.stride)


# ----------------------------------------------------------------------------- alignment


def crs_label(crs) -> str:
    """A short name of a CRS for messages: ``EPSG:32650``, the WKT's name, or ``none``."""
    if crs is None or not crs:
        return "none"
    epsg = crs.to_epsg()
    if epsg:
        return f"EPSG:{epsg}"
    m = re.search(r'"([^"]+)"', crs.to_wkt())
    return m.group(1) if m else crs.to_string()[:60]


def grid_offset(transform1, transform2, width, height) -> float:
    """Largest distance, in date-1 pixels, between the same corner of two ``width`` × ``height`` grids."""
    inv = ~transform1
    worst = 0.0
    for col, row in ((0, 0), (width, 0), (0, height), (width, height)):
        x, y = transform2 @ (col, row)
        c1, r1 = inv @ (x, y)
        worst = max(worst, abs(c1 - col), abs(r1 - row))
    return worst


def alignment_problem(a, b) -> str | None:
    """What keeps two datasets (anything with crs, transform, width, height) off one grid, else None.

    The same CRS, the same size and the same transform within half a pixel at every corner.
    """
    if (a.crs or None) != (b.crs or None):
        return f"CRS {crs_label(a.crs)} vs {crs_label(b.crs)}"
    if (a.width, a.height) != (b.width, b.height):
        return f"size {a.width}x{a.height} vs {b.width}x{b.height} pixels (width x height)"
    off = grid_offset(a.transform, b.transform, a.width, a.height)
    if off > PIXEL_TOLERANCE:
        ta, tb = a.transform, b.transform
        if not (math.isclose(ta.a, tb.a, rel_tol=1e-9) and math.isclose(ta.e, tb.e, rel_tol=1e-9)
                and math.isclose(ta.b, tb.b, abs_tol=1e-12)
                and math.isclose(ta.d, tb.d, abs_tol=1e-12)):
            return (f"pixel size {ta.a:g} x {ta.e:g} vs {tb.a:g} x {tb.e:g} "
                    f"(grids {off:.1f} pixels apart at a corner)")
        dx, dy = tb.c - ta.c, tb.f - ta.f
        return (f"transform: origin ({ta.c:.6g}, {ta.f:.6g}) vs ({tb.c:.6g}, {tb.f:.6g}), "
                f"shifted by ({dx:.6g}, {dy:.6g}) map units = {off:.1f} pixels")
    return None


def check_aligned(a, b, path1, path2, hint="") -> None:
    """RasterError naming both files when :func:`alignment_problem` finds one."""
    problem = alignment_problem(a, b)
    if problem:
        raise RasterError(f"{path1}, {path2}: {problem}; expected both dates on the same grid "
                          f"(CRS, transform within half a pixel, size){hint}")


# ----------------------------------------------------------------------------- opening


def parse_bands(text):
    """``"1,2,3"`` -> [1, 2, 3] (1-based, like rasterio); None stays None."""
    if text in (None, ""):
        return None
    try:
        bands = [int(b) for b in str(text).split(",")]
    except ValueError:
        raise ValueError(f"--bands {text!r}: expected 1-based band numbers like 1,2,3") from None
    if min(bands) < 1:
        raise ValueError(f"--bands {text!r}: expected 1-based band numbers (>= 1)")
    return bands


def open_raster(path):
    """``rasterio.open`` with a missing or unreadable file as a one-line RasterError."""
    import rasterio  # deferred: rasterio loads on first use

    path = pathlib.Path(path)
    if not path.is_file():
        what = "not a file" if path.exists() else "no such file"
        raise RasterError(f"{path}: {what}; expected a raster (GeoTIFF)")
    try:
        with warnings.catch_warnings():  # plain TIFFs without georeferencing are fine
            warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
            return rasterio.open(path)
    except Exception as e:  # noqa: BLE001 - any reader failure is bad input, reported in one line
        first = (str(e).strip().splitlines() or [""])[0][:200]
        raise RasterError(f"{path}: unreadable ({type(e).__name__}: {first}); expected a raster "
                          "(GeoTIFF)") from None


def select_bands(src, path, bands, channels=None) -> list[int]:
    """The 1-based bands to read: ``bands`` (checked against the raster), else all of them.

    ``channels``: the number the model expects; a different count is an error suggesting --bands.
    """
    count = src.count
    if bands is None:
        bands = list(range(1, count + 1))
    elif max(bands) > count:
        raise RasterError(f"{path}: --bands {','.join(map(str, bands))}: the raster has {count} "
                          f"band(s); expected band numbers 1..{count}")
    if channels is not None and len(bands) != channels:
        raise RasterError(f"{path}: {len(bands)} band(s) selected; expected {channels}, the bands "
                          "of the model's input (choose them with --bands, e.g. --bands 1,2,3)")
    return bands


def check_dtype(src, path, bands) -> np.dtype:
    dtypes = {src.dtypes[b - 1] for b in bands}
    if len(dtypes) != 1:
        raise RasterError(f"{path}: bands of dtypes {sorted(dtypes)}; expected one dtype")
    dtype = dtypes.pop()
    if dtype not in SUPPORTED_DTYPES:
        raise RasterError(f"{path}: dtype {dtype}; expected uint8, uint16 or float in [0, 1] "
                          "(as the shards the model was trained on)")
    return np.dtype(dtype)


@dataclasses.dataclass
class RasterPair:
    """Two open datasets on one grid (date 2 possibly a WarpedVRT onto date 1's grid)."""

    path1: pathlib.Path
    path2: pathlib.Path
    src1: object
    src2: object
    bands: list
    dtype: np.dtype
    aligned: bool  # date 2 resampled onto date 1's grid

    @property
    def crs(self):
        return self.src1.crs

    @property
    def transform(self):
        return self.src1.transform

    @property
    def width(self) -> int:
        return self.src1.width

    @property
    def height(self) -> int:
        return self.src1.height

    def grid(self, tile, stride=None) -> TileGrid:
        return TileGrid(self.height, self.width, int(tile), int(stride or tile))


@contextlib.contextmanager
def open_pair(path1, path2, bands=None, channels=None, align=False, hint=""):
    """Open and check two dates; yields a :class:`RasterPair`, closes both on exit.

    Args:
        path1, path2: rasters of date 1 and date 2.
        bands: 1-based bands to read (default all; both dates must have them).
        channels: bands the model expects (checked), or None.
        align: resample date 2 onto date 1's grid (bilinear) instead of refusing a mismatch.
        hint: appended to the misalignment error (e.g. "; pass --align to resample date 2").

    Raises:
        RasterError: a file is missing or unreadable, the bands or dtypes do not fit, or the grids
            differ (without ``align``).
    """
    path1, path2 = pathlib.Path(path1), pathlib.Path(path2)
    with contextlib.ExitStack() as stack:
        src1 = stack.enter_context(open_raster(path1))
        src2 = stack.enter_context(open_raster(path2))
        b = select_bands(src1, path1, bands, channels)
        select_bands(src2, path2, b if bands is not None else None, len(b))
        d1, d2 = check_dtype(src1, path1, b), check_dtype(src2, path2, b)
        if d1 != d2:
            raise RasterError(f"{path1}, {path2}: dtype {d1} vs {d2}; expected the same dtype at "
                              "both dates")
        problem = alignment_problem(src1, src2)
        if problem and align:
            src2 = stack.enter_context(warp_onto(src2, src1, path2))
        elif problem:
            check_aligned(src1, src2, path1, path2, hint)
        yield RasterPair(path1, path2, src1, src2, b, d1, bool(problem and align))


def warp_onto(src, ref, path):
    """``src`` resampled (bilinear) onto ``ref``'s CRS, transform and size, as a WarpedVRT.

    Pixels outside ``src``'s footprint are masked (its nodata value, else an added alpha band).
    """
    from rasterio.enums import Resampling  # deferred: rasterio loads on first use
    from rasterio.vrt import WarpedVRT

    if not src.crs:
        raise RasterError(f"{path}: no CRS; --align needs both dates georeferenced")
    if not ref.crs:
        raise RasterError(f"{ref.name}: no CRS; --align needs both dates georeferenced")
    extra = {"add_alpha": True} if src.nodata is None else {"nodata": src.nodata}
    return WarpedVRT(src, crs=ref.crs, transform=ref.transform, width=ref.width,
                     height=ref.height, resampling=Resampling.bilinear, **extra)


# ----------------------------------------------------------------------------- reading


@dataclasses.dataclass
class TileRow:
    """One row of tiles of both dates.

    Attributes:
        index: tile row r.
        x1, x2: (cols, tile, tile, C) tiles in the raster's dtype, mirrored past the edges.
        valid1, valid2: (cols,) whether the tile holds data at that date (``min_valid``).
        pixels1, pixels2: (rows, width) per-pixel data masks of the strip inside the raster.
    """

    index: int
    x1: np.ndarray
    x2: np.ndarray
    valid1: np.ndarray
    valid2: np.ndarray
    pixels1: np.ndarray
    pixels2: np.ndarray


def read_strip(src, path, bands, grid: TileGrid, r, dtype):
    """Pixel rows of tile row ``r`` (all columns): image (h, width, C) and data mask (h, width)."""
    from rasterio.windows import Window  # deferred: rasterio loads on first use

    start, stop = grid.strip(r)
    window = Window(0, start, grid.width, stop - start)
    try:
        image = src.read(bands, window=window)
        mask = src.read_masks(bands, window=window).any(axis=0)
    except Exception as e:  # noqa: BLE001 - a damaged block
        first = (str(e).strip().splitlines() or [""])[0][:200]
        raise RasterError(f"{path}: pixel rows {start}..{stop}: unreadable ({type(e).__name__}: "
                          f"{first})") from None
    mask &= image.any(axis=0)  # all bands 0: no data
    image = np.moveaxis(image, 0, -1)
    if image.dtype.kind == "f":
        image = image.astype(np.float32, copy=False)
        bad = ~(np.isfinite(image) & (image >= 0) & (image <= 1)).all(axis=-1) & mask
        if bad.any():
            rr, cc = np.argwhere(bad)[0]
            raise RasterError(f"{path}: pixel (row {start + rr}, col {cc}): value outside [0, 1]; "
                              "expected uint8, uint16 or float images in [0, 1]")
    return image, mask


def pad_tile(x, tile) -> np.ndarray:
    """A (h, w, C) piece of a tile cut at the raster's right or bottom edge, mirrored to tile x tile
    (its own pixels only, as :func:`cut_tiles` pads)."""
    h, w = x.shape[:2]
    if (h, w) == (tile, tile):
        return x
    return np.pad(x, ((0, tile - h), (0, tile - w), (0, 0)), mode="symmetric")


def cut_tiles(strip, mask, grid: TileGrid, min_valid):
    """(cols, tile, tile, C) tiles of a strip (mirrored past the edges) and their (cols,) validity."""
    t, s = grid.tile, grid.stride
    h, w = strip.shape[:2]
    pad_h, pad_w = t - h, grid.padded_width - w
    if pad_h or pad_w:  # below: the tiles' own rows mirrored; right: zeros, mirrored per tile below
        strip = np.pad(strip, ((0, pad_h), (0, 0), (0, 0)), mode="symmetric")
        strip = np.pad(strip, ((0, 0), (0, pad_w), (0, 0)))
    tiles = np.lib.stride_tricks.sliding_window_view(strip, (t, t), axis=(0, 1))[0, ::s]
    # a copy (never the read-only view: one column of tiles is already contiguous)
    tiles = np.array(np.moveaxis(tiles, 1, -1), order="C")  # (cols, t, t, C)
    cols = grid.cols
    starts = np.arange(cols) * s
    widths = np.minimum(starts + t, w) - starts  # in-raster columns of each tile
    for c in np.flatnonzero(widths < t):  # a tile past the right edge sees only its own pixels
        tiles[c] = np.pad(tiles[c][:, :widths[c]], ((0, 0), (0, t - widths[c]), (0, 0)),
                          mode="symmetric")
    csum = np.concatenate([[0], np.cumsum(mask.sum(axis=0))])  # data pixels per column prefix
    counts = csum[starts + widths] - csum[starts]
    valid = counts >= np.maximum(1, min_valid * widths * h)
    return tiles, valid


def read_tile_row(pair: RasterPair, grid: TileGrid, r, min_valid=0.5) -> TileRow:
    """Row ``r`` of tiles of both dates (see :class:`TileRow`)."""
    s1, m1 = read_strip(pair.src1, pair.path1, pair.bands, grid, r, pair.dtype)
    s2, m2 = read_strip(pair.src2, pair.path2, pair.bands, grid, r, pair.dtype)
    x1, v1 = cut_tiles(s1, m1, grid, min_valid)
    x2, v2 = cut_tiles(s2, m2, grid, min_valid)
    return TileRow(r, x1, x2, v1, v2, m1, m2)


def block_cache_mb(pair: RasterPair, grid: TileGrid) -> int:
    """A GDAL block cache (MB) that holds what one row of tiles touches at both dates, the next
    row read ahead, and the output blocks being written, and no more: GDAL's default (5 % of the
    RAM) would otherwise keep every block read until it fills, so memory grew with the scene."""
    total = 0
    for src in (pair.src1, pair.src2):
        block_h = max(h for h, _ in src.block_shapes)
        rows = 2 * grid.tile + 2 * block_h  # two strips, each possibly straddling block rows
        total += rows * grid.width * len(pair.bands) * np.dtype(pair.dtype).itemsize
    return int(total / 2**20) + 64


def iter_tile_rows(pair: RasterPair, grid: TileGrid, min_valid=0.5):
    """Every row of tiles, top to bottom (one strip per date in memory at a time)."""
    for r in range(grid.rows):
        yield read_tile_row(pair, grid, r, min_valid)
