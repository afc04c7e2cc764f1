"""Build §4 npz shards (trn/val/tst) from one's own bi-temporal data.

Two inputs are understood::

    # (a) two class-folder trees, one per date, tiles paired by file name (<col>_<row>.png, ...)
    python -m data.make_shards folders --t1 DATE1_DIR --t2 DATE2_DIR --out DIR [options]

    # (b) two co-registered images plus, per date, a label grid (one class per tile) or raster
    #     (no labels: unlabelled shards, every label 0, for predicting only)
    python -m data.make_shards raster --t1 IMG1 --t2 IMG2 [--labels1 L1 --labels2 L2] \\
        --tile 150 --out DIR [--bands 1,2,3] [--mat_key KEY] [options]

Common options: ``--split 0.7,0.1,0.2 --split_mode {random,block} --block_size 4 --seed 0
--shard_size 5000 --class_names a,b,c|FILE --compress``.

Rasters: the two dates must share CRS, transform (within half a pixel) and size (the check of
``data.rasters``, as in predict.py); georeferenced ones give the shards ``crs``, ``transform``
(of the tile grid) and ``tile_size``. Edge tiles are padded (mirrored), not dropped.

Shards are written uncompressed by default (``--compress`` to zip them): the loader reads the
pairs of each batch straight from an uncompressed shard at their byte offsets and never holds a
shard in memory, while a compressed shard must be decoded whole (1.1 GB for 5,000 pairs of
200x200x3 uint8) each time it is read, on every epoch. ``--no_compress``, the switch of earlier
versions, is still accepted and does nothing.

Images keep their dtype (uint8, uint16; float must lie in [0, 1]). GeoTIFF and other rasters are
read with rasterio, PNG/JPEG/BMP with Pillow. Nothing is written when the input is bad, and an
output split directory that exists and is not empty is refused.

Bad input: exactly one line ``error: <file>: <what>: <what was expected>`` on stderr, exit status 2,
and nothing left behind. Log lines (warnings such as skipped unpaired tiles, the shards written) are
held back until the shards are in place, so a failed run prints its error only.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import pathlib
import re
import sys
from collections.abc import Callable
from typing import NamedTuple

import numpy as np

from data import rasters, shards, splits
from data.image_files import (
    IMAGE_SUFFIXES,
    PILLOW_SUFFIXES,
    WindowedRaster,
    check_file,
    open_windowed,
    read_image,
)
from data.shards import shard_error
from utils.cli import configure_logging

log = logging.getLogger(__name__)

GRID_STEM = re.compile(r"^(-?\d+)_(-?\d+)$")  # <col>_<row>


class Pairs(NamedTuple):
    """What the writer needs: n pairs, ``get_pairs(indices) -> arrays``, the class names and,
    when known, each pair's tile grid row and column (for ``--split_mode block``)."""

    n: int
    get_pairs: Callable
    class_names: list | None
    row: np.ndarray | None = None
    col: np.ndarray | None = None


# ----------------------------------------------------------------------------- class names


def _names_file_like(text) -> bool:
    """A --class_names value meant as a file: ends in .txt, or a path (separator, no comma)."""
    seps = {"/", os.sep} | ({os.altsep} if os.altsep else set())
    return text.lower().endswith(".txt") or (any(c in text for c in seps) and "," not in text)


def parse_class_names(text):
    """``--class_names``: a file with one name per line, or a comma-separated list; None stays.

    A value that exists as a file is read as one; a value that looks like a file (ends in .txt,
    or a path without commas) but is none is an error, not a single class name.
    """
    if text is None:
        return None
    path = pathlib.Path(text)
    if path.is_file():
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as e:
            raise shard_error(path, "--class_names", f"unreadable ({e}); expected a text file with one "
                                              "class name per line") from None
        names = [line.strip() for line in lines if line.strip()]
        if not names or len(set(names)) != len(names):
            dups = sorted({n for n in names if names.count(n) > 1})
            what = f"duplicate names {dups}" if dups else "no names"
            raise shard_error(path, "--class_names", f"{what}; expected distinct class names, one per line")
        return names
    if _names_file_like(str(text)):
        what = "not a file" if path.exists() else "no such file"
        raise shard_error(path, "--class_names", f"{what}; expected a file with one class name per line "
                                          "(or a comma-separated list of names)")
    names = [n.strip() for n in str(text).split(",") if n.strip()]
    if not names or len(set(names)) != len(names):
        raise ValueError(f"--class_names {text!r}: expected distinct names (list or file)")
    return names


# ----------------------------------------------------------------------------- (a) class folders


def scan_class_tree(date_dir) -> dict:
    """``{stem: (class_name, path)}`` of ``DATE_DIR/CLASS_NAME/<stem>.<image suffix>``."""
    date_dir = pathlib.Path(date_dir)
    if not date_dir.is_dir():
        what = "not a directory" if date_dir.exists() else "missing"
        raise shard_error(date_dir, "directory", f"{what}; expected DATE_DIR/CLASS_NAME/<col>_<row>.png")
    tiles = {}
    for class_dir in sorted(d for d in date_dir.iterdir() if d.is_dir()):
        for path in sorted(class_dir.iterdir()):
            if path.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            if path.stem in tiles:
                raise shard_error(path, "tile", f"stem {path.stem!r} also in {tiles[path.stem][1]}; "
                                         "expected each tile in one class folder per date")
            tiles[path.stem] = (class_dir.name, path)
    if not tiles:
        raise shard_error(date_dir, "directory", "no image tiles; expected DATE_DIR/CLASS_NAME/<col>_<row>.png")
    return tiles


def class_folder_names(*date_dirs) -> list:
    """Sorted union of the class folder names of the date directories."""
    return sorted({d.name for root in date_dirs for d in pathlib.Path(root).iterdir() if d.is_dir()})


def pair_tiles(tiles1, tiles2, t1, t2, skip_unpaired=False) -> list:
    """Stems present at both dates (sorted by grid position or name); unpaired: error or skipped."""
    only1 = sorted(set(tiles1) - set(tiles2))
    only2 = sorted(set(tiles2) - set(tiles1))
    if (only1 or only2) and not skip_unpaired:
        stem, here, there = (only1[0], tiles1, t2) if only1 else (only2[0], tiles2, t1)
        raise shard_error(here[stem][1], "pair", f"no tile {stem!r} under {there}; expected the same "
                   f"tiles at both dates ({len(only1) + len(only2)} unpaired; --skip_unpaired "
                   "skips them)")
    if only1 or only2:
        log.warning("skipping %d unpaired tile(s) (%d only at t1, %d only at t2)",
                    len(only1) + len(only2), len(only1), len(only2))
    stems = sorted(set(tiles1) & set(tiles2))
    if all(GRID_STEM.match(s) for s in stems):
        stems.sort(key=lambda s: tuple(int(v) for v in GRID_STEM.match(s).groups()[::-1]))
    return stems


def folder_pairs(t1, t2, class_names=None, skip_unpaired=False):
    """Everything the writer needs for (a): (n, get_pairs, class_names)."""
    tiles1, tiles2 = scan_class_tree(t1), scan_class_tree(t2)
    folders = class_folder_names(t1, t2)
    names = class_names or folders
    unknown = sorted(set(folders) - set(names))
    if unknown:
        raise shard_error(t1, "--class_names", f"class folder(s) {unknown} not listed; expected every "
                                        f"folder name among {names}")
    ids = {name: i + 1 for i, name in enumerate(names)}
    stems = pair_tiles(tiles1, tiles2, t1, t2, skip_unpaired)
    label_t1 = np.array([ids[tiles1[s][0]] for s in stems], np.int32)
    label_t2 = np.array([ids[tiles2[s][0]] for s in stems], np.int32)
    grid = all(GRID_STEM.match(s) for s in stems)
    if grid:
        col_row = np.array([[int(v) for v in GRID_STEM.match(s).groups()] for s in stems], np.int64)
    else:
        log.info("tile names are not all <col>_<row>: no row/col stored")
    first = {}

    def get_pairs(idx):
        images = {"image_t1": [], "image_t2": []}
        for i in idx:
            for key, tiles in (("image_t1", tiles1), ("image_t2", tiles2)):
                path = tiles[stems[i]][1]
                image = read_image(path)
                ref = first.setdefault("ref", (path, image.shape, image.dtype))
                if (image.shape, image.dtype) != ref[1:]:
                    raise shard_error(path, "image", f"{image.shape} {image.dtype}; expected "
                               f"{ref[1]} {ref[2]} as {ref[0]} (all tiles alike)")
                images[key].append(image)
        out = {k: np.stack(v) for k, v in images.items()}
        out.update(label_t1=label_t1[idx], label_t2=label_t2[idx])
        if grid:
            out.update(row=col_row[idx, 1], col=col_row[idx, 0])
        return out

    if grid:
        return Pairs(len(stems), get_pairs, names, col_row[:, 1], col_row[:, 0])
    return Pairs(len(stems), get_pairs, names)


# ----------------------------------------------------------------------------- (b) rasters


def load_label_array(path, mat_key=None) -> np.ndarray:
    """2-D label array from .npy, .mat (the single 2-D numeric variable, or ``mat_key``) or a raster."""
    path = check_file(path, "a label grid (.npy, .mat) or raster")
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            array = np.load(path, allow_pickle=False)
        elif suffix == ".mat":
            import scipy.io  # deferred: SciPy loads on first use

            variables = {k: v for k, v in scipy.io.loadmat(path).items() if not k.startswith("__")}
            if mat_key is not None:
                if mat_key not in variables:
                    raise shard_error(path, mat_key, f"missing; expected one of {sorted(variables)}")
                array = variables[mat_key]
            else:
                cands = [k for k, v in variables.items()
                         if isinstance(v, np.ndarray) and v.ndim == 2 and v.dtype.kind in "biuf"
                         and min(v.shape) > 1]
                if len(cands) != 1:
                    raise shard_error(path, "--mat_key", f"{len(cands)} 2-D numeric variables {cands}; "
                                                  "expected exactly one or --mat_key")
                array = variables[cands[0]]
        else:
            array = read_image(path, expected="a label grid (.npy, .mat) or single-band raster")
            if array.shape[-1] != 1:
                raise shard_error(path, "bands", f"{array.shape[-1]}; expected a single-band label raster")
            array = array[..., 0]
    except shards.ShardError:
        raise
    except Exception as e:  # noqa: BLE001
        raise shard_error(path, "file", f"unreadable ({type(e).__name__}: {e}); expected a label grid") from None
    array = np.asarray(array)
    if array.ndim != 2 or array.dtype.kind not in "biuf":
        raise shard_error(path, "labels", f"shape {array.shape} dtype {array.dtype}; expected a 2-D numeric array")
    if array.dtype.kind == "f":
        if not (np.isfinite(array).all() and (array == np.round(array)).all()):
            raise shard_error(path, "labels", "non-integer values; expected integer class ids")
    labels = array.astype(np.int64)
    if labels.size and labels.min() < 0:
        raise shard_error(path, "labels", f"negative value {labels.min()}; expected class ids 1..K, 0 = undefined")
    return labels


def tile_labels(path, labels, grid, image_hw, tile, transpose=False) -> np.ndarray:
    """Labels per tile: the grid itself, or the majority class of the in-image pixels of each
    tile of a full-size label raster (tiles past the right and bottom edges included)."""
    if transpose:
        labels = labels.T
    if labels.shape == grid:
        return labels
    if labels.shape == tuple(image_hw):
        rows, cols = grid
        h, w = image_hw
        padded = np.full((rows * tile, cols * tile), -1, np.int64)  # -1: outside the image
        padded[:min(h, rows * tile), :min(w, cols * tile)] = labels[:rows * tile, :cols * tile]
        blocks = padded.reshape(rows, tile, cols, tile)
        values = np.unique(labels)
        counts = np.stack([(blocks == v).sum(axis=(1, 3)) for v in values])
        return values[np.argmax(counts, axis=0)]
    raise shard_error(path, "labels", f"shape {labels.shape}; expected the tile grid {grid} (rows, cols) or "
                               f"the image size {tuple(image_hw)} (--transpose_labels flips a grid)")


def choose_grid(image_hw, tile, label_arrays, transpose=False) -> tuple[int, int]:
    """(rows, cols) of tiles: every pixel covered, the last row and column of tiles padded past
    the edge; a label grid given for the whole tiles only (the shape of earlier versions) keeps
    that grid and leaves the edge pixels out, with a warning."""
    h, w = image_hw
    full = (h // tile, w // tile)
    padded = (-(-h // tile), -(-w // tile))
    shapes = [(a.T if transpose else a).shape for a in label_arrays]
    if full != padded and full in shapes and padded not in shapes:
        log.warning("image %dx%d (width x height) is not a multiple of --tile %d and the label "
                    "grid has %dx%d tiles (cols x rows): the last %d column(s) and %d row(s) of "
                    "pixels are left out (a %dx%d grid would keep them, padded)", w, h, tile,
                    full[1], full[0], w % tile, h % tile, padded[1], padded[0])
        return full
    return padded


def georeference(t1, t2, tile) -> dict:
    """Shard keys ``crs`` (WKT), ``transform`` (of the tile grid) and ``tile_size`` for rasters
    read with rasterio, after checking that the two dates share one grid (as predict.py does);
    only ``tile_size`` for images without a CRS (PNG/JPEG, plain TIFF)."""
    from affine import Affine  # deferred: rasterio's affine loads on first use


    keys = {"tile_size": np.asarray(tile, np.int64)}
    if pathlib.Path(t1).suffix.lower() in PILLOW_SUFFIXES \
            or pathlib.Path(t2).suffix.lower() in PILLOW_SUFFIXES:
        return keys
    check_file(t1, "an image")
    check_file(t2, "an image")
    with rasters.open_raster(t1) as a, rasters.open_raster(t2) as b:
        rasters.check_aligned(a, b, t1, t2)
        if a.crs:
            keys["crs"] = np.asarray(a.crs.to_wkt())
            keys["transform"] = np.asarray(list(a.transform @ Affine.scale(tile))[:6], np.float64)
    return keys


def check_label_names(path, labels, class_names) -> None:
    """Class ids of a label file within the ``--class_names`` given (before anything is written)."""
    if class_names is None or labels.size == 0:
        return
    k, top = len(class_names), int(labels.max())
    if top > k:
        raise shard_error(path, "labels", f"class id {top} but --class_names gives {k} name(s); expected "
                                   f"class ids 1..{k} (0 = undefined) or a name for every class")


def raster_pairs(t1, t2, labels1, labels2, tile, bands=None, mat_key=None, transpose=False,
                 class_names=None, stream=True):
    """Everything the writer needs for (b): a :class:`Pairs`.

    ``labels1``/``labels2``: label files, or both None for unlabelled shards (every label 0, for
    predicting only). ``class_names``: the ``--class_names`` given; a tile label above their
    number is an error naming the label file. Tiles past the right and bottom edges are padded
    (each mirrors its own pixels, as predict.py's tiles do) rather than dropped. ``stream``:
    rasters that rasterio reads are read tile by tile when the shards are written
    (``WindowedRaster``: memory flat in the scene size), not whole; the shards are the same.
    """

    if tile < 1:
        raise ValueError(f"--tile {tile}: expected >= 1")
    if (labels1 is None) != (labels2 is None):
        given = "--labels1" if labels1 is not None else "--labels2"
        raise ValueError(f"{given} without {'--labels2' if labels1 is not None else '--labels1'}: "
                         "expected labels for both dates, or neither (unlabelled shards)")
    if stream and not any(pathlib.Path(t).suffix.lower() in PILLOW_SUFFIXES for t in (t1, t2)):
        x1, x2 = open_windowed(t1, bands), open_windowed(t2, bands)  # read tile by tile
    else:
        x1, x2 = read_image(t1, bands), read_image(t2, bands)
    georef = georeference(t1, t2, tile)
    if x1.shape != x2.shape or x1.dtype != x2.dtype:
        raise shard_error(t2, "image", f"{x2.shape} {x2.dtype}; expected {x1.shape} {x1.dtype} as {t1} "
                                "(co-registered images)")
    if isinstance(x1, WindowedRaster):
        x1.check_values()
        x2.check_values()
    h, w = x1.shape[:2]
    raw = [] if labels1 is None else [load_label_array(labels1, mat_key),
                                      load_label_array(labels2, mat_key)]
    grid = choose_grid((h, w), tile, raw, transpose)
    rows, cols = grid
    if raw:
        y1 = tile_labels(labels1, raw[0], grid, (h, w), tile, transpose)
        y2 = tile_labels(labels2, raw[1], grid, (h, w), tile, transpose)
        check_label_names(labels1, y1, class_names)
        check_label_names(labels2, y2, class_names)
    else:
        y1 = y2 = np.zeros(grid, np.int32)
        log.info("no --labels1/--labels2: unlabelled shards (every label 0), for predicting only")
    row, col = np.divmod(np.arange(rows * cols), cols)

    def cut(x, r, c):
        return rasters.pad_tile(x[r * tile:(r + 1) * tile, c * tile:(c + 1) * tile], tile)

    def tiles(x, r, c):
        if isinstance(x, WindowedRaster):
            return x.read_tiles(r, c, tile)
        return np.stack([cut(x, a, b) for a, b in zip(r, c, strict=True)])

    def get_pairs(idx):
        r, c = row[idx], col[idx]
        out = {"image_t1": tiles(x1, r, c), "image_t2": tiles(x2, r, c),
               "label_t1": y1[r, c].astype(np.int32), "label_t2": y2[r, c].astype(np.int32),
               "row": r, "col": c}
        out.update(georef)
        return out

    return Pairs(rows * cols, get_pairs, class_names, row, col)


# ----------------------------------------------------------------------------- command line


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m data.make_shards",
                                description="Build trn/val/tst npz shards (docs/DESIGN.md §4) from your own data.")
    sub = p.add_subparsers(dest="mode", required=True)
    fold = sub.add_parser("folders", help="two class-folder trees DATE_DIR/CLASS_NAME/<col>_<row>.png")
    g = fold.add_argument_group("input")
    g.add_argument("--t1", required=True, help="class-folder tree of date 1")
    g.add_argument("--t2", required=True, help="class-folder tree of date 2")
    g.add_argument("--skip_unpaired", action="store_true",
                   help="skip tiles present at one date only (default: error)")
    ras = sub.add_parser("raster", help="two co-registered images + per-date label grids/rasters")
    g = ras.add_argument_group("input")
    g.add_argument("--t1", required=True, help="image of date 1 (GeoTIFF or PNG/JPEG)")
    g.add_argument("--t2", required=True, help="image of date 2, co-registered with --t1")
    g.add_argument("--labels1", default=None,
                   help="labels of date 1: tile grid (.npy, .mat) or full-size label raster "
                        "(leave out both --labels1 and --labels2 for unlabelled shards: every "
                        "label 0, for predicting only)")
    g.add_argument("--labels2", default=None, help="labels of date 2, as --labels1")
    g.add_argument("--tile", type=int, required=True, help="tile size in pixels (e.g. 150)")
    g.add_argument("--bands", default=None, help="1-based bands to keep, e.g. 1,2,3 (default all)")
    g.add_argument("--mat_key", default=None,
                   help="variable of a .mat label file (default: its single 2-D numeric variable)")
    g.add_argument("--transpose_labels", action="store_true",
                   help="the label grids are stored (cols, rows): transpose them")
    for sp in (fold, ras):
        g = sp.add_argument_group("output")
        g.add_argument("--out", required=True, help="output directory; trn/ val/ tst/ are created")
        g.add_argument("--shard_size", type=int, default=5000, help="max pairs per shard (default 5000)")
        g.add_argument("--compress", action="store_true",
                       help="zip-compress the arrays (smaller files, but the loader must then "
                            "decode each shard whole; default: stored uncompressed, read per batch)")
        g.add_argument("--no_compress", action="store_true",
                       help="the default (kept so that older command lines still work)")
        g = sp.add_argument_group("split and classes")
        g.add_argument("--split", default="0.7,0.1,0.2", help="trn,val,tst fractions (default 0.7,0.1,0.2)")
        g.add_argument("--split_mode", choices=splits.SPLIT_MODES, default="random",
                       help="random: pairs drawn one by one (default); block: spatial blocks of "
                            "--block_size x --block_size tiles go to one split, so that "
                            "neighbouring tiles do not leak between trn and tst")
        g.add_argument("--block_size", type=int, default=4,
                       help="tiles per side of a block of --split_mode block (default 4)")
        g.add_argument("--seed", type=int, default=0, help="seed of the random split (default 0)")
        g.add_argument("--class_names", default=None,
                       help="names of classes 1..K: comma-separated or a file with one per line "
                            "(folders: default the sorted folder names)")
    return p.parse_args(argv)


def load_pairs(args) -> Pairs:
    """Step 1: the pairs of the chosen input mode."""
    names = parse_class_names(args.class_names)
    if args.mode == "folders":
        return folder_pairs(args.t1, args.t2, names, args.skip_unpaired)
    return raster_pairs(args.t1, args.t2, args.labels1, args.labels2, args.tile,
                        rasters.parse_bands(args.bands), args.mat_key, args.transpose_labels, names)


def split_pairs(args, pairs: Pairs) -> dict:
    """Step 2: trn/val/tst index arrays, random or by spatial blocks."""
    fractions = splits.parse_fractions(args.split)
    if args.split_mode == "random":
        return splits.split_indices(pairs.n, fractions, args.seed)
    if pairs.row is None:
        raise ValueError(f"{args.t1}: --split_mode block: the tiles have no grid position "
                         "(name them <col>_<row>); expected tiles on a grid")
    return splits.split_blocks(pairs.row, pairs.col, args.block_size, fractions, args.seed)


def build(args) -> dict:
    """Check the output, read the pairs, split them and write the shards."""
    if args.shard_size < 1:
        raise ValueError(f"--shard_size {args.shard_size}: expected >= 1")
    splits.parse_fractions(args.split)
    if args.block_size < 1:
        raise ValueError(f"--block_size {args.block_size}: expected >= 1")
    splits.check_output_dir(args.out)
    pairs = load_pairs(args)
    parts = split_pairs(args, pairs)
    return splits.write_splits(args.out, parts, pairs.get_pairs, args.shard_size,
                               pairs.class_names, compress=args.compress and not args.no_compress)


class _Held(logging.Handler):
    """Keeps log records instead of printing them."""

    def __init__(self):
        super().__init__(logging.NOTSET)
        self.records = []

    def emit(self, record):
        self.records.append(record)


@contextlib.contextmanager
def held_logging():
    """Hold back every log record (Python warnings included) while the block runs: replayed to
    the usual handlers if it succeeds, dropped if it raises (its error is then the only line)."""
    root = logging.getLogger()
    held, saved = _Held(), root.handlers[:]
    root.handlers = [held]
    logging.captureWarnings(True)
    try:
        yield
    except BaseException:
        held.records.clear()
        raise
    finally:
        logging.captureWarnings(False)
        root.handlers = saved
        for record in held.records:
            for handler in saved:
                if record.levelno >= handler.level:
                    handler.handle(record)


def main(argv=None):
    configure_logging()
    args = parse_args(argv)
    try:
        with held_logging():  # what was written is logged by splits.write_splits
            build(args)
    except (ValueError, OSError) as e:
        lines = [line.strip() for line in str(e).strip().splitlines() if line.strip()]
        print(f"error: {' '.join(lines) or type(e).__name__}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
