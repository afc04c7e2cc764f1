"""Map a whole scene: stream tile pairs of two rasters through a model, write georeferenced maps.

The library behind ``predict.py``; the steps, each a function or a small class:

* :class:`MapConfig`: everything one mapping needs (inputs, grid, rule, output), built once.
* :func:`check_output_dir` / :func:`staging_dir` / :func:`publish`: the output directory must be
  new or empty; every file is written into a hidden sibling directory that is renamed into place at
  the end, so a failed run (bad pixels found mid-scene, interruption) leaves nothing behind.
* :class:`TilePredictor`: ``predict_on_batch`` over the tiles of one row (those holding data),
  resized to the model's input when the tile size differs; returns prob_t1, prob_t2 per tile.
* :class:`TileRows` (stride == tile: one output cell per tile) and :class:`PixelRows` (stride <
  tile: one output cell per pixel, class probabilities of overlapping tiles averaged; a rolling
  buffer of ``tile`` pixel rows) turn predicted rows into finished :class:`Block` s of output rows.
* :class:`MapWriter`: the GeoTIFFs (class_t1, class_t2, p_change, change, from_to), written in
  blocks of whole output rows, plus the counts for summary.json; :func:`write_grid_maps` writes
  them for predictions at tile grid positions (eval.py on georeferenced shards).
* :func:`write_quicklook`: a PNG of the change map over the date-2 image (decimated reads).
* :func:`map_scene`: all of it for an open :class:`data.rasters.RasterPair`.

Memory is bounded by two rows of tiles (the one being predicted and the next, read in a
background thread; each two strips of ``tile`` pixel rows and their tiles), the rolling buffer
and one block of output rows, whatever the scene size.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import pathlib
import shutil
import sys
import tempfile
import time

import numpy as np

from data.rasters import RasterPair, TileGrid, read_tile_row, tile_transform
from utils.cli import UsageError

log = logging.getLogger(__name__)

CLASS_FILES = ("class_t1.tif", "class_t2.tif")
MAP_FILES = (*CLASS_FILES, "p_change.tif", "change.tif", "from_to.tif")
OTHER_FILES = ("from_to.json", "quicklook.png", "summary.json")
P_NODATA = -1.0  # p_change where either date has no data
CHANGE_NODATA = 255  # change.tif: 0 unchanged, 1 changed, 255 no data
BLOCK = 256  # GeoTIFF block size; output rows are written in whole blocks of rows
QUICKLOOK_SIZE = 1024  # longest side of quicklook.png in pixels
# tab20, reordered so that the first classes get distinct hues (RGB)
PALETTE = [
    (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
    (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207),
    (174, 199, 232), (255, 187, 120), (152, 223, 138), (255, 152, 150), (197, 176, 213),
    (196, 156, 148), (247, 182, 210), (199, 199, 199), (219, 219, 141), (158, 218, 229),
]
CHANGE_COLOURS = {0: (210, 210, 210, 255), 1: (220, 20, 60, 255), CHANGE_NODATA: (0, 0, 0, 0)}


# ----------------------------------------------------------------------------- configuration


@dataclasses.dataclass
class MapConfig:
    """One scene mapping, resolved from the command line (see predict.py's options)."""

    t1: pathlib.Path
    t2: pathlib.Path
    out: pathlib.Path
    checkpoint: pathlib.Path | None = None
    tile: int | None = None  # default: the model's input size
    stride: int | None = None  # default: the tile
    bands: list | None = None  # 1-based; default all
    batch_size: int = 32
    threshold: float | None = None  # change.tif from p_change >= threshold instead of argmax
    align: bool = False
    min_valid: float = 0.5
    class_names: list | None = None
    quicklook_size: int = QUICKLOOK_SIZE
    progress: bool = True

    def to_dict(self) -> dict:
        return {k: (str(v) if isinstance(v, pathlib.Path) else v)
                for k, v in dataclasses.asdict(self).items()}


# ----------------------------------------------------------------------------- output directory


def check_output_dir(out) -> pathlib.Path:
    """``--out`` must be new or an empty directory (nothing a user made is ever replaced)."""
    out = pathlib.Path(out)
    for q in (out, *out.parents):
        if q.exists() or q.is_symlink():
            if not q.is_dir():
                where = "exists and is not a directory" if q == out else f"its parent {q} is a file"
                raise UsageError(f"{out}: --out: {where}; expected a new or empty directory")
            break
    if out.is_dir() and any(out.iterdir()):
        raise UsageError(f"{out}: --out: exists and is not empty; expected a new or empty "
                         "directory (nothing is replaced)")
    check_can_stage(out)
    return out


def check_can_stage(out) -> None:
    """The maps are written beside ``out`` (``staging_dir``): refuse, before any work, a
    location where no file can be created (read-only mount, permissions, /sys, /proc)."""
    from utils.rundir import check_can_write_in

    parent = pathlib.Path(out).absolute().parent
    for q in (parent, *parent.parents):
        if q.exists():
            try:
                check_can_write_in(q, pathlib.Path(out))
            except UsageError as e:
                raise UsageError(f"--out {e}") from None
            return


def staging_dir(out) -> tuple[pathlib.Path, list[pathlib.Path]]:
    """A hidden directory beside ``out`` to write into; returns it and the parents it created."""
    out = pathlib.Path(out).absolute()
    created, p = [], out.parent
    while not p.exists():
        created.append(p)
        p = p.parent
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = pathlib.Path(tempfile.mkdtemp(prefix=f".{out.name}.incomplete-", dir=out.parent))
    mask = os.umask(0)
    os.umask(mask)
    staging.chmod(0o777 & ~mask)  # mkdtemp makes 0700; give the directory the usual mode
    return staging, created


def publish(staging, out) -> None:
    """Rename the finished staging directory to ``out`` (an empty ``out`` is replaced)."""
    out = pathlib.Path(out)
    if out.is_dir():
        out.rmdir()  # empty: checked before any work, and again here by rmdir itself
    os.rename(staging, out)


def discard(staging, created) -> None:
    shutil.rmtree(staging, ignore_errors=True)
    for d in created:  # deepest first, each only while empty
        try:
            d.rmdir()
        except OSError:
            break


# ----------------------------------------------------------------------------- prediction


class TilePredictor:
    """Class probabilities of tile pairs from a two-date model, batch by batch.

    Args:
        net: a model whose ``predict_on_batch((x1, x2))`` returns a dict with ``prob_t1``,
            ``prob_t2`` (N, K).
        batch_size: tiles per call.
        image_size: (H, W) of the model's input; tiles of another size are resized (bilinear),
            after scaling, as the loader does with ``--image_size``.
    """

    def __init__(self, net, batch_size=32, image_size=None):
        from model.config import INPUT_SCALING, LEGACY_INPUT_NORM

        self.net = net
        config = getattr(net, "config", None)
        #: what is done to the tiles before the model (``data.loader.SCALINGS``)
        self.scaling = INPUT_SCALING[getattr(config, "input_norm", LEGACY_INPUT_NORM)]
        if self.scaling == "shard_max":
            raise UsageError("the model was trained with --input_norm shard_max (each shard "
                             "divided by its own maximum, as the original code): a scene has no "
                             "shards to take that maximum from; map scenes with a model trained "
                             "with --input_norm bands, bands_per_date or dtype")
        self.batch_size = int(batch_size)
        self.image_size = None if image_size is None else tuple(int(s) for s in image_size)
        self.seconds = 0.0  # time inside the model
        self.tiles = 0

    def prepare(self, x):
        """As the loader hands batches to the model: uint8/uint16 tiles as stored (the model
        normalises them); float or resized ones dtype-scaled (``dtype``) or cast to float32 as
        they are (``bands``/``bands_per_date``: raw values, the model standardises them)."""
        from data.shards import scale_images

        resize = self.image_size is not None and tuple(x.shape[1:3]) != self.image_size
        if (x.dtype.kind == "u" or self.scaling == "raw") and not resize:
            return x
        x = scale_images(x) if self.scaling == "dtype" else x.astype(np.float32)
        if resize:
            import keras

            x = keras.ops.convert_to_numpy(keras.ops.image.resize(x, self.image_size))
        return x

    def __call__(self, x1, x2):
        """(p1, p2), each (N, K) float32, for tiles x1, x2 (N, h, w, C)."""
        out1, out2 = [], []
        for start in range(0, len(x1), self.batch_size):
            a = self.prepare(x1[start:start + self.batch_size])
            b = self.prepare(x2[start:start + self.batch_size])
            t = time.perf_counter()
            out = self.net.predict_on_batch((a, b))
            self.seconds += time.perf_counter() - t
            if not isinstance(out, dict) or "prob_t1" not in out or "prob_t2" not in out:
                got = sorted(out) if isinstance(out, dict) else type(out).__name__
                raise UsageError(f"model output: expected a dict with prob_t1, prob_t2; got {got}")
            out1.append(np.asarray(out["prob_t1"], np.float32))
            out2.append(np.asarray(out["prob_t2"], np.float32))
        self.tiles += len(x1)
        if not out1:
            return None, None
        return np.concatenate(out1), np.concatenate(out2)


# ----------------------------------------------------------------------------- accumulation


@dataclasses.dataclass
class Block:
    """Finished output rows ``row_off .. row_off + h``: mean class probabilities (h, w, K) per date
    and where each date holds data (h, w)."""

    row_off: int
    p1: np.ndarray
    p2: np.ndarray
    v1: np.ndarray
    v2: np.ndarray


class TileRows:
    """stride == tile: output row r is tile row r; one cell per tile."""

    def __init__(self, grid: TileGrid, k: int):
        self.grid, self.k = grid, k
        self.shape = (grid.rows, grid.cols)

    def add(self, row, idx, p1, p2) -> list[Block]:
        cols = self.grid.cols
        q1 = np.zeros((1, cols, self.k), np.float32)
        q2 = np.zeros((1, cols, self.k), np.float32)
        done = np.zeros(cols, bool)
        if idx.size:
            q1[0, idx], q2[0, idx], done[idx] = p1, p2, True
        return [Block(row.index, q1, q2, (row.valid1 & done)[None], (row.valid2 & done)[None])]


class PixelRows:
    """stride < tile: one cell per pixel, class probabilities of the tiles covering it averaged
    (per date, over the tiles holding data at that date); a pixel without data stays nodata.

    Keeps a rolling buffer of ``tile`` pixel rows: after tile row r, pixel rows
    ``r*stride .. (r+1)*stride`` are covered by no later tile and are handed out.
    """

    def __init__(self, grid: TileGrid, k: int):
        self.grid, self.k = grid, k
        self.shape = (grid.height, grid.width)
        t, w = grid.tile, grid.width
        self.sum1 = np.zeros((t, w, k), np.float32)
        self.sum2 = np.zeros((t, w, k), np.float32)
        self.n1 = np.zeros((t, w), np.float32)
        self.n2 = np.zeros((t, w), np.float32)

    def add(self, row, idx, p1, p2) -> list[Block]:
        g = self.grid
        t, s, w = g.tile, g.stride, g.width
        top, stop = g.strip(row.index)
        h = stop - top
        for j, c in enumerate(idx):
            a, b = c * s, min(c * s + t, w)
            if row.valid1[c]:
                self.sum1[:h, a:b] += p1[j]
                self.n1[:h, a:b] += 1
            if row.valid2[c]:
                self.sum2[:h, a:b] += p2[j]
                self.n2[:h, a:b] += 1
        last = row.index == g.rows - 1
        n = h if last else s
        block = Block(top, self._mean(self.sum1[:n], self.n1[:n]),
                      self._mean(self.sum2[:n], self.n2[:n]),
                      row.pixels1[:n] & (self.n1[:n] > 0), row.pixels2[:n] & (self.n2[:n] > 0))
        if not last:
            for a in (self.sum1, self.sum2, self.n1, self.n2):
                a[:-s] = a[s:].copy()
                a[-s:] = 0
        return [block]

    @staticmethod
    def _mean(total, count):
        return total / np.maximum(count, 1)[..., None]


# ----------------------------------------------------------------------------- writing


def class_colormap(k) -> dict:
    cmap = {0: (0, 0, 0, 0)}
    for i in range(k):
        cmap[i + 1] = (*PALETTE[i % len(PALETTE)], 255)
    return cmap


def from_to_legend(names) -> dict:
    """``{code: {"from", "to", "changed"}}`` with code = (from - 1) * K + to, classes 1-based."""
    k = len(names)
    return {str(a * k + b + 1): {"from": names[a], "to": names[b], "from_id": a + 1,
                                 "to_id": b + 1, "changed": a != b}
            for a in range(k) for b in range(k)}


def from_to_colormap(k) -> dict:
    cmap = {0: (0, 0, 0, 0)}
    for a in range(k):
        for b in range(k):
            cmap[a * k + b + 1] = (215, 215, 215, 255) if a == b else (
                *PALETTE[b % len(PALETTE)], 255)
    return cmap


class MapWriter:
    """The five GeoTIFFs of a scene map, written in blocks of whole output rows, and their counts.

    Args:
        out_dir: directory to write into.
        crs, transform: georeferencing of the output grid.
        shape: (rows, cols) of the output grid.
        names: the K class names.
        threshold: change.tif from p_change >= threshold; None: argmax t1 != argmax t2.
    """

    def __init__(self, out_dir, crs, transform, shape, names, threshold=None):
        import rasterio

        self.out_dir = pathlib.Path(out_dir)
        self.shape, self.names, self.threshold = shape, list(names), threshold
        k = self.k = len(self.names)
        self.code_dtype = np.uint8 if k * k < 256 else np.uint16
        h, w = shape
        base = {"driver": "GTiff", "height": h, "width": w, "count": 1, "crs": crs,
                "transform": transform, "compress": "deflate", "BIGTIFF": "IF_SAFER"}
        if h >= BLOCK and w >= BLOCK:
            base.update(tiled=True, blockxsize=BLOCK, blockysize=BLOCK)
        specs = {
            "class_t1.tif": ("uint8", 0), "class_t2.tif": ("uint8", 0),
            "p_change.tif": ("float32", P_NODATA), "change.tif": ("uint8", CHANGE_NODATA),
            "from_to.tif": (np.dtype(self.code_dtype).name, 0),
        }
        self.dst = {}
        try:
            for name, (dtype, nodata) in specs.items():
                self.dst[name] = rasterio.open(self.out_dir / name, "w", dtype=dtype,
                                               nodata=nodata, **base)
        except BaseException:
            self.close()
            raise
        self._describe()
        self.pending: list[dict] = []
        self.pending_rows = 0
        self.next_row = 0
        self.hist1 = np.zeros(k, np.int64)
        self.hist2 = np.zeros(k, np.int64)
        self.transitions = np.zeros((k, k), np.int64)
        self.changed_argmax = 0
        self.changed_threshold = 0
        self.cells_nodata = 0

    def _describe(self):
        legend = ", ".join(f"{i + 1}={n}" for i, n in enumerate(self.names))
        tags = {f"CLASS_{i + 1}": n for i, n in enumerate(self.names)}
        for t in (1, 2):
            d = self.dst[f"class_t{t}.tif"]
            d.set_band_description(1, f"scene class at date {t}: {legend}; 0 = nodata")
            d.update_tags(1, **tags)
            d.write_colormap(1, class_colormap(self.k))
        self.dst["p_change.tif"].set_band_description(
            1, f"p_change = 1 - sum_k p1_k p2_k; {P_NODATA:g} = nodata")
        rule = (f"p_change >= {self.threshold:g}" if self.threshold is not None
                else "argmax t1 != argmax t2")
        self.dst["change.tif"].set_band_description(
            1, f"change ({rule}): 0 = unchanged, 1 = changed, {CHANGE_NODATA} = nodata")
        self.dst["change.tif"].write_colormap(1, CHANGE_COLOURS)
        self.dst["from_to.tif"].set_band_description(
            1, f"from-to transition code (from - 1) * {self.k} + to, legend in from_to.json; "
               "0 = nodata")
        if self.code_dtype == np.uint8:
            self.dst["from_to.tif"].write_colormap(1, from_to_colormap(self.k))

    def maps(self, block: Block) -> dict:
        """The five arrays of a block, and the counts updated."""
        k = self.k
        c1 = np.where(block.v1, block.p1.argmax(-1) + 1, 0).astype(np.uint8)
        c2 = np.where(block.v2, block.p2.argmax(-1) + 1, 0).astype(np.uint8)
        both = block.v1 & block.v2
        pc = np.where(both, 1.0 - (block.p1 * block.p2).sum(-1), P_NODATA).astype(np.float32)
        argmax = both & (c1 != c2)
        thresh = both & (pc >= self.threshold) if self.threshold is not None else argmax
        change = np.where(both, (thresh if self.threshold is not None else argmax), 0)
        change = np.where(both, change, CHANGE_NODATA).astype(np.uint8)
        codes = np.where(both, (c1.astype(np.int64) - 1) * k + c2, 0).astype(self.code_dtype)
        self.hist1 += np.bincount(c1[block.v1].ravel() - 1, minlength=k)[:k]
        self.hist2 += np.bincount(c2[block.v2].ravel() - 1, minlength=k)[:k]
        if both.any():
            self.transitions += np.bincount(codes[both].ravel().astype(np.int64) - 1,
                                            minlength=k * k)[:k * k].reshape(k, k)
        self.changed_argmax += int(argmax.sum())
        self.changed_threshold += int(thresh.sum())
        self.cells_nodata += int((~both).sum())
        return {"class_t1.tif": c1, "class_t2.tif": c2, "p_change.tif": pc,
                "change.tif": change, "from_to.tif": codes}

    def write(self, block: Block) -> None:
        """Add finished rows (in order); whole blocks of BLOCK rows are written as they fill."""
        if block.row_off != self.next_row:
            raise RuntimeError(f"rows out of order: got {block.row_off}, expected {self.next_row}")
        self.next_row += block.v1.shape[0]
        self.pending.append(self.maps(block))
        self.pending_rows += block.v1.shape[0]
        if self.pending_rows >= BLOCK or self.next_row >= self.shape[0]:
            self.flush()

    def flush(self) -> None:
        from rasterio.windows import Window

        if not self.pending:
            return
        h, top = self.pending_rows, self.next_row - self.pending_rows
        for name, dst in self.dst.items():
            data = np.concatenate([p[name] for p in self.pending])
            dst.write(data, 1, window=Window(0, top, self.shape[1], h))
        self.pending, self.pending_rows = [], 0

    def close(self) -> None:
        for d in self.dst.values():
            d.close()


def write_from_to_legend(out_dir, names) -> pathlib.Path:
    """from_to.json: the legend of from_to.tif's codes."""
    from utils.rundir import atomic_write_json

    path = pathlib.Path(out_dir) / "from_to.json"
    atomic_write_json(path, {"code": f"(from - 1) * {len(names)} + to; 0 = nodata",
                             "legend": from_to_legend(names)})
    return path


def write_grid_maps(out_dir, crs, transform, row, col, p1, p2, names,
                    threshold=None) -> list[pathlib.Path]:
    """The GeoTIFFs of :class:`MapWriter` (and from_to.json) for tile pairs predicted at tile grid
    positions ``row``, ``col`` (eval.py on georeferenced shards): one cell per tile, the grid's
    rows 0..max(row) and columns 0..max(col), so that ``transform`` (the shards' tile grid
    transform, 6 floats or an ``Affine``) is the files' transform; cells without a pair are nodata.
    ``p1``, ``p2``: (N, K) class probabilities. Written in blocks of rows (bounded memory).
    """
    from affine import Affine

    row, col = np.asarray(row, np.int64), np.asarray(col, np.int64)
    p1, p2 = np.asarray(p1, np.float32), np.asarray(p2, np.float32)
    shape = (int(row.max()) + 1, int(col.max()) + 1) if row.size else (1, 1)
    k = p1.shape[1]
    order = np.argsort(row, kind="stable")
    row, col, p1, p2 = row[order], col[order], p1[order], p2[order]
    out_dir = pathlib.Path(out_dir)
    writer = MapWriter(out_dir, crs, Affine(*list(transform)[:6]), shape, names, threshold)
    try:
        for top in range(0, shape[0], BLOCK):
            h = min(BLOCK, shape[0] - top)
            a, b = np.searchsorted(row, (top, top + h))
            q1 = np.zeros((h, shape[1], k), np.float32)
            q2 = np.zeros((h, shape[1], k), np.float32)
            valid = np.zeros((h, shape[1]), bool)
            q1[row[a:b] - top, col[a:b]] = p1[a:b]
            q2[row[a:b] - top, col[a:b]] = p2[a:b]
            valid[row[a:b] - top, col[a:b]] = True
            writer.write(Block(top, q1, q2, valid, valid))
    finally:
        writer.close()
    return [*(out_dir / name for name in MAP_FILES), write_from_to_legend(out_dir, names)]


# ----------------------------------------------------------------------------- quick-look


def stretch(image, mask) -> np.ndarray:
    """(h, w, C) to uint8 RGB with a 2-98 % stretch per band over the pixels holding data."""
    rgb = image[..., :3] if image.shape[-1] >= 3 else np.repeat(image[..., :1], 3, axis=-1)
    out = np.zeros(rgb.shape, np.uint8)
    for b in range(3):
        band = rgb[..., b].astype(np.float32)
        vals = band[mask] if mask.any() else band.ravel()
        lo, hi = np.percentile(vals, (2, 98)) if vals.size else (0.0, 1.0)
        out[..., b] = np.clip((band - lo) / max(hi - lo, 1e-6) * 255, 0, 255).astype(np.uint8)
    return out


def write_quicklook(path, pair: RasterPair, change_path, cell, size=QUICKLOOK_SIZE) -> pathlib.Path:
    """quicklook.png: the date-2 image (decimated, stretched), changed cells in red, nodata dimmed.

    ``cell``: raster pixels per cell of change.tif (the tile for tile-resolution maps, else 1).
    """
    import rasterio
    from PIL import Image, ImageDraw
    from rasterio.enums import Resampling
    from rasterio.windows import Window

    h, w = pair.height, pair.width
    f = max(1.0, max(h, w) / size)
    qh, qw = max(1, round(h / f)), max(1, round(w / f))
    bands = pair.bands[:3]
    image = pair.src2.read(bands, out_shape=(len(bands), qh, qw), resampling=Resampling.average)
    image = np.moveaxis(image, 0, -1)
    with rasterio.open(change_path) as src:
        change = src.read(1, window=Window(0, 0, w / cell, h / cell), out_shape=(qh, qw),
                          resampling=Resampling.nearest)
    rgb = stretch(image, change != CHANGE_NODATA).astype(np.float32)
    red = np.array([230, 20, 40], np.float32)
    changed = change == 1
    rgb[changed] = 0.45 * rgb[changed] + 0.55 * red
    rgb[change == CHANGE_NODATA] *= 0.35
    img = Image.fromarray(rgb.astype(np.uint8))
    legend = Image.new("RGB", (qw, 18), (255, 255, 255))
    draw = ImageDraw.Draw(legend)
    draw.rectangle((4, 4, 14, 14), fill=(230, 20, 40))
    draw.text((18, 3), "changed", fill=(0, 0, 0))
    draw.rectangle((84, 4, 94, 14), fill=(60, 60, 60))
    draw.text((98, 3), "no data", fill=(0, 0, 0))
    canvas = Image.new("RGB", (qw, qh + 18), (255, 255, 255))
    canvas.paste(img, (0, 0))
    canvas.paste(legend, (0, qh))
    canvas.save(path, compress_level=3)
    return pathlib.Path(path)


# ----------------------------------------------------------------------------- summary


def cell_area(transform) -> float:
    return abs(transform.a * transform.e - transform.b * transform.d)


def map_units(crs) -> str:
    if not crs:
        return "pixels"
    if crs.is_geographic:
        return "degrees"
    return crs.linear_units or "map units"


def make_summary(config: MapConfig, pair: RasterPair, grid: TileGrid, writer: MapWriter,
                 transform, predictor: TilePredictor, seconds, pairs, tiles_nodata) -> dict:
    area = cell_area(transform)
    names, k = writer.names, writer.k
    rule = "argmax" if config.threshold is None else f"p_change >= {config.threshold:g}"
    changed = writer.changed_argmax if config.threshold is None else writer.changed_threshold
    rows, cols = writer.shape
    valid = rows * cols - writer.cells_nodata
    transitions = [
        {"code": a * k + b + 1, "from": names[a], "to": names[b], "changed": a != b,
         "cells": int(writer.transitions[a, b]), "area": float(writer.transitions[a, b] * area)}
        for a in range(k) for b in range(k) if writer.transitions[a, b]
    ]
    return {
        "inputs": {"t1": str(pair.path1), "t2": str(pair.path2), "bands": pair.bands,
                   "dtype": str(pair.dtype), "size": [pair.width, pair.height],
                   "date2_resampled": pair.aligned},
        "checkpoint": str(config.checkpoint) if config.checkpoint else None,
        "crs": pair.crs.to_wkt() if pair.crs else None,
        "crs_name": str(pair.crs.to_string()) if pair.crs else None,
        "transform": list(transform)[:6],
        "grid": {"tile": grid.tile, "stride": grid.stride, "rows": grid.rows, "cols": grid.cols,
                 "tiles": grid.n_tiles, "padded_bottom_right": list(grid.pads),
                 "resolution": "tile" if grid.tile_resolution else "pixel",
                 "output_size": [cols, rows]},
        "pairs": pairs,
        "tiles_nodata": tiles_nodata,
        "cells": {"total": rows * cols, "with_data": valid, "nodata": writer.cells_nodata},
        "map_units": map_units(pair.crs),
        "cell_area": area,
        "change_rule": rule,
        "changed": {"cells": changed, "area": changed * area,
                    "fraction": changed / valid if valid else 0.0},
        "changed_argmax": writer.changed_argmax,
        "changed_threshold": writer.changed_threshold if config.threshold is not None else None,
        "class_names": names,
        "class_cells": {"t1": dict(zip(names, map(int, writer.hist1), strict=True)),
                        "t2": dict(zip(names, map(int, writer.hist2), strict=True))},
        "transitions": transitions,
        "files": sorted([*MAP_FILES, *OTHER_FILES]),
        "seconds": round(seconds, 3),
        "model_seconds": round(predictor.seconds, 3),
        "tiles_per_second": round(predictor.tiles / seconds, 2) if seconds else None,
        "config": config.to_dict(),
    }


# ----------------------------------------------------------------------------- the whole scene


def map_scene(net, config: MapConfig, pair: RasterPair, names, image_size=None) -> dict:
    """Map ``pair`` with ``net`` into ``config.out``; returns the summary (also summary.json).

    Everything is written into a staging directory renamed to ``config.out`` at the end; on any
    error it is removed and the error raised (nothing written).
    """
    import rasterio

    from data.rasters import block_cache_mb

    grid = pair.grid(config.tile, config.stride)
    with rasterio.Env(GDAL_CACHEMAX=block_cache_mb(pair, grid)):
        return _map_scene(net, config, pair, names, image_size, grid)


def _map_scene(net, config, pair, names, image_size, grid) -> dict:
    from utils.rundir import atomic_write_json

    k = len(names)
    acc = (TileRows if grid.tile_resolution else PixelRows)(grid, k)
    transform = tile_transform(pair.transform, grid) if grid.tile_resolution else pair.transform
    predictor = TilePredictor(net, config.batch_size, image_size)
    staging, created = staging_dir(config.out)
    start = time.perf_counter()
    try:
        writer = MapWriter(staging, pair.crs, transform, acc.shape, names, config.threshold)
        try:
            pairs, nodata = stream(pair, grid, acc, predictor, writer, config)
        finally:
            writer.close()
        write_quicklook(staging / "quicklook.png", pair, staging / "change.tif",
                        grid.tile if grid.tile_resolution else 1, config.quicklook_size)
        write_from_to_legend(staging, names)
        summary = make_summary(config, pair, grid, writer, transform, predictor,
                               time.perf_counter() - start, pairs, nodata)
        atomic_write_json(staging / "summary.json", summary)
        publish(staging, config.out)
    except BaseException:
        discard(staging, created)
        raise
    return summary


def stream(pair, grid, acc, predictor, writer, config) -> tuple[int, int]:
    """Read, predict and write every row of tiles; returns (pairs predicted, tiles without data).

    The next row of tiles is read in a background thread while the model predicts the current one
    (the model releases the GIL), so at most two rows of tiles are in memory.
    """
    import concurrent.futures

    import keras

    bar = keras.utils.Progbar(grid.n_tiles, unit_name="tile",
                              verbose=(1 if sys.stdout.isatty() else 2) if config.progress else 0)
    pairs = nodata = done = 0
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="read-tiles") as pool:
        ahead = pool.submit(read_tile_row, pair, grid, 0, config.min_valid)
        for r in range(grid.rows):
            row = ahead.result()
            if r + 1 < grid.rows:
                ahead = pool.submit(read_tile_row, pair, grid, r + 1, config.min_valid)
            idx = np.flatnonzero(row.valid1 | row.valid2)
            p1, p2 = predictor(row.x1[idx], row.x2[idx]) if idx.size else (None, None)
            for block in acc.add(row, idx, p1, p2):
                writer.write(block)
            pairs += int((row.valid1 & row.valid2).sum())
            nodata += int(grid.cols - idx.size)
            done += grid.cols
            bar.update(done)
            del row
    return pairs, nodata
