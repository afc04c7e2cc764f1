"""Reading the image files that data.make_shards converts: one image whole (:func:`read_image`; Pillow
for PNG/JPEG/BMP/GIF, rasterio for GeoTIFF and other rasters) or a raster window by window
(:class:`WindowedRaster`, :func:`open_windowed`: memory flat in the scene size), in a dtype the
shard format stores (:func:`as_shard_dtype`). rasterio and Pillow are imported where used."""

from __future__ import annotations

import contextlib
import dataclasses
import pathlib
import warnings

import numpy as np

from data import rasters, shards
from data.shards import shard_error

PILLOW_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif"}
RASTER_SUFFIXES = {".tif", ".tiff", ".img", ".vrt", ".jp2"}
IMAGE_SUFFIXES = PILLOW_SUFFIXES | RASTER_SUFFIXES


# ----------------------------------------------------------------------------- reading images


def as_shard_dtype(path, image):
    """uint8/uint16 as they are, float as float32 when inside [0, 1]; anything else refused."""
    if image.dtype in (np.uint8, np.uint16):
        return image
    if image.dtype == bool:
        return image.astype(np.uint8)
    if image.dtype.kind == "f":
        image = image.astype(np.float32)
        if np.isfinite(image).all() and image.min() >= 0 and image.max() <= 1:
            return image
        raise shard_error(path, "pixels", "float values outside [0, 1] or not finite; expected uint8, "
                                   "uint16 or float in [0, 1]")
    raise shard_error(path, "dtype", f"{image.dtype}; expected uint8, uint16 or float in [0, 1]")


def check_file(path, expected) -> pathlib.Path:
    """ShardError unless ``path`` is an existing file: 'no such file' or 'not a file'."""
    path = pathlib.Path(path)
    if not path.is_file():
        what = "not a file" if path.exists() else "no such file"
        raise shard_error(path, "file", f"{what}; expected {expected}")
    return path


def read_image(path, bands=None, expected="an image") -> np.ndarray:
    """(H, W, C) array of an image file; ``bands`` are 1-based band numbers to keep."""
    path = check_file(path, expected)
    try:
        if path.suffix.lower() in PILLOW_SUFFIXES:
            from PIL import Image  # deferred: Pillow loads on first use

            with Image.open(path) as img:
                if img.mode in ("P", "PA", "CMYK", "YCbCr", "LAB", "HSV", "1"):
                    img = img.convert("RGBA" if "A" in img.mode else "RGB")
                array = np.asarray(img)
            array = array[..., None] if array.ndim == 2 else array
        else:
            import rasterio  # deferred: rasterio loads on first use

            with warnings.catch_warnings():  # plain (non-georeferenced) TIFFs are fine here
                warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
                with rasterio.open(path) as src:
                    array = np.moveaxis(src.read(), 0, -1)
    except shards.ShardError:
        raise
    except Exception as e:  # noqa: BLE001 - any reader failure is bad input, reported in one line
        raise shard_error(path, "file", f"unreadable ({type(e).__name__}: {e}); expected {expected}") from None
    if bands is not None:
        if max(bands) > array.shape[-1]:
            raise shard_error(path, "--bands", f"{bands}; the image has {array.shape[-1]} band(s) "
                                        f"(1..{array.shape[-1]})")
        array = array[..., [b - 1 for b in bands]]
    return as_shard_dtype(path, array)


# ------------------------------------------------------------------- windowed raster reads
#: GDAL's block cache while tiles are read by windows (MB; a tile touches a few blocks, read in
#: random order: a larger cache hardly hits): without a bound GDAL keeps up to 5 %
#: of the RAM of blocks read, so memory would grow with the scene
WINDOW_CACHE_MB = 8


@dataclasses.dataclass(frozen=True)
class WindowedRaster:
    """A raster read tile by tile (``read_tiles``) instead of whole: its (H, W, C) shape, dtype
    and the 0-based bands kept. Made by ``open_windowed`` after the checks ``read_image`` makes."""

    path: pathlib.Path
    shape: tuple
    dtype: np.dtype
    bands: tuple

    def read_tiles(self, rows, cols, tile) -> np.ndarray:
        """(n, tile, tile, C) tiles (r, c) of the grid, each mirrored past the edges by its own
        pixels (``data.rasters.pad_tile``), as the whole image cut in memory gives."""
        import rasterio  # deferred: rasterio loads on first use
        from rasterio.windows import Window

        h, w = self.shape[:2]
        out = np.empty((len(rows), tile, tile, self.shape[2]),
                       np.float32 if self.dtype.kind == "f" else self.dtype)
        with rasterio.Env(GDAL_CACHEMAX=WINDOW_CACHE_MB), _quiet_georef(), \
                rasterio.open(self.path) as src:
            for i, (r, c) in enumerate(zip(rows, cols, strict=True)):
                top, left = int(r) * tile, int(c) * tile
                window = Window(left, top, min(tile, w - left), min(tile, h - top))
                x = np.moveaxis(src.read([b + 1 for b in self.bands], window=window), 0, -1)
                out[i] = rasters.pad_tile(as_shard_dtype(self.path, x), tile)
        return out

    def check_values(self, strip_rows=256) -> None:
        """Float images: every value in [0, 1], read by strips of rows (before anything is
        written, as the whole image's read did)."""
        if self.dtype.kind != "f":
            return
        import rasterio  # deferred: rasterio loads on first use
        from rasterio.windows import Window

        h, w = self.shape[:2]
        with rasterio.Env(GDAL_CACHEMAX=WINDOW_CACHE_MB), _quiet_georef(), \
                rasterio.open(self.path) as src:
            for top in range(0, h, strip_rows):
                window = Window(0, top, w, min(strip_rows, h - top))
                as_shard_dtype(self.path, src.read([b + 1 for b in self.bands], window=window))


@contextlib.contextmanager
def _quiet_georef():
    """Plain (non-georeferenced) TIFFs are fine here: rasterio's warning about them is hidden."""
    import rasterio  # deferred: rasterio loads on first use

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
        yield


def open_windowed(path, bands=None, expected="an image") -> WindowedRaster:
    """The header of a raster that rasterio reads (not PNG/JPEG/...), checked as ``read_image``
    checks the whole image: readable, ``bands`` within its band count, a dtype the shards take
    (float values are checked by ``WindowedRaster.check_values``)."""
    path = check_file(path, expected)
    try:
        import rasterio  # deferred: rasterio loads on first use

        with _quiet_georef(), rasterio.open(path) as src:
            shape, dtype = (src.height, src.width, src.count), np.dtype(src.dtypes[0])
    except Exception as e:  # noqa: BLE001 - any reader failure is bad input, reported in one line
        raise shard_error(path, "file", f"unreadable ({type(e).__name__}: {e}); expected {expected}") from None
    if bands is not None and max(bands) > shape[-1]:
        raise shard_error(path, "--bands", f"{bands}; the image has {shape[-1]} band(s) (1..{shape[-1]})")
    keep = tuple(b - 1 for b in bands) if bands is not None else tuple(range(shape[-1]))
    if dtype not in (np.uint8, np.uint16) and dtype.kind != "f":
        raise shard_error(path, "dtype", f"{dtype}; expected uint8, uint16 or float in [0, 1]")
    return WindowedRaster(path, (shape[0], shape[1], len(keep)), dtype, keep)
