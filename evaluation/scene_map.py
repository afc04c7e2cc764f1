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
  buffer of ``tile`` pixel rows) turn predicted rows into finished :class:`evaluation.map_files.Block` s of output rows.
* :class:`evaluation.map_files.MapWriter`: the GeoTIFFs (class_t1, class_t2, p_change, change, from_to), written in
  blocks of whole output rows, plus the counts for summary.json; :func:`write_grid_maps` writes
  them for predictions at tile grid positions (eval.py on georeferenced shards).
* :func:`evaluation.map_files.write_quicklook`: a PNG of the change map over the date-2 image (decimated reads).
* :func:`map_scene`: all of it for an open :class:`data.rasters.RasterPair`.

Memory is bounded by two rows of tiles (the one being predicted and the next, read in a
background thread; each two strips of ``tile`` pixel rows and their tiles), the rolling buffer
and one block of output rows, whatever the scene size.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import logging
import os
import pathlib
import shutil
import sys
import tempfile
import time

import numpy as np

from data.rasters import RasterPair, TileGrid, block_cache_mb, read_tile_row, tile_transform
from data.shards import scale_images
from evaluation.map_files import (
    MAP_FILES,
    OTHER_FILES,
    QUICKLOOK_SIZE,
    Block,
    MapWriter,
    write_from_to_legend,
    write_quicklook,
)
from model.config import INPUT_SCALING, LEGACY_INPUT_NORM
from utils.cli import UsageError
from utils.rundir import atomic_write_json, check_can_write_in

log = logging.getLogger(__name__)

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

        resize = self.image_size is not None and tuple(x.shape[1:3]) != self.image_size
        if (x.dtype.kind == "u" or self.scaling == "raw") and not resize:
            return x
        x = scale_images(x) if self.scaling == "dtype" else x.astype(np.float32)
        if resize:
            import keras  # deferred: Keras loads on first use

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
    import rasterio  # deferred: rasterio loads on first use

    grid = pair.grid(config.tile, config.stride)
    with rasterio.Env(GDAL_CACHEMAX=block_cache_mb(pair, grid)):
        return _map_scene(net, config, pair, names, image_size, grid)


def _map_scene(net, config, pair, names, image_size, grid) -> dict:

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

    import keras  # deferred: Keras loads on first use

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
