"""The npz shard format of docs/DESIGN.md §4: reading, validation, summary and writing.

A split (``trn``, ``val``, ``tst``) is a directory of ``.npz`` files read in sorted name order.
Each file holds ``image_t1``/``image_t2`` (N, H, W, C) uint8, uint16 or float32 (same shape and
dtype), ``label_t1``/``label_t2`` (N,) integer class ids 1..K (0 = undefined), optionally
``row``/``col`` (N,) integer grid positions and ``class_names`` (K,) str, and (``make_shards
raster`` on georeferenced images) ``crs`` () str (WKT), ``transform`` (6,) float (the affine
transform of the tile grid: map x, y of tile corner (col, row)) and ``tile_size`` () integer.

Files are opened with ``allow_pickle=False``. Every rule broken raises :class:`ShardError` with one
line ``<file>: <key>: <what was expected>``.

Uncompressed (``ZIP_STORED``) image members, the default of :func:`write_shard`, can be read pair
by pair at their byte offsets (:mod:`data.shard_rows`); compressed ones only whole.

Cheap checks only read the ``.npy`` headers inside the zip (shape, dtype) and the small label
arrays; the value check of float images (finite, inside [0, 1]) streams each image array through in
chunks, so validating a 5,000-pair shard never holds more than one chunk of decoded pixels.
Reading a member to its end makes :mod:`zipfile` verify its CRC-32: ``data.split_summary.inspect_split`` does so
for float and compressed image members (the ones the loader would otherwise decode mid-epoch) and,
with ``check_stored=True`` (``python -m data.inspect``), for uncompressed ones too.
This module imports only NumPy (no TensorFlow), so the command-line tools start quickly.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import pathlib
import zipfile
import zlib

import numpy as np

from utils.cli import UsageError

log = logging.getLogger(__name__)

IMAGE_KEYS = ("image_t1", "image_t2")
LABEL_KEYS = ("label_t1", "label_t2")
GRID_KEYS = ("row", "col")
GEO_KEYS = ("crs", "transform", "tile_size")  # optional georeferencing of the tile grid
REQUIRED_KEYS = IMAGE_KEYS + LABEL_KEYS
IMAGE_DTYPES = (np.dtype(np.uint8), np.dtype(np.uint16), np.dtype(np.float32))
#: the most classes K a training or an evaluation accepts (and the largest label without
#: ``class_names``/``num_classes``): the K x K confusion and transition matrices, their figures and
#: TensorBoard images are tested up to it (tests/evaluation/test_many_classes.py: results of K = 1000
#: written in under 1 GiB since 2026-12-06, 3.9 GiB before); K = 5000 grew past 23 GB before then
MAX_CLASSES = 1_000
CHUNK_BYTES = 64 * 2**20  # decoded bytes per chunk when checking float image values
VERIFY_CHUNK_BYTES = 16 * 2**20  # bytes per read when reading a member through for its CRC-32
READ_ERRORS = (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error, KeyError)


class ShardError(UsageError):
    """A shard or split directory breaks the format of docs/DESIGN.md §4 (message: file: key: expected)."""


def shard_error(path, key, expected) -> ShardError:
    """The one-line error ``<file>: <key>: <what was expected>`` of every data module."""
    return ShardError(f"{path}: {key}: {expected}")


# ----------------------------------------------------------------------------- files


def list_shards(split_dir) -> list[pathlib.Path]:
    """Sorted ``.npz`` files of a split directory; ShardError if it is missing or holds none."""
    split_dir = pathlib.Path(split_dir)
    if not split_dir.is_dir():
        what = "not a directory" if split_dir.exists() else "no such directory"
        raise shard_error(split_dir, "split", f"{what}; expected a directory of .npz shards")
    candidates = sorted(p for p in split_dir.iterdir() if p.suffix == ".npz")
    for p in candidates:
        if p.is_symlink() and not p.exists():
            raise shard_error(p, "file", f"dangling symbolic link (to {os.readlink(p)}); expected a .npz "
                                  "shard (remove the link or restore its target)")
    files = [p for p in candidates if p.is_file()]
    if not files:
        raise shard_error(split_dir, "split", "no .npz files; expected at least one shard")
    return files


def open_zip(path) -> zipfile.ZipFile:
    if not zipfile.is_zipfile(path):
        raise shard_error(path, "file", "not a zip/npz archive (wrong format or truncated)")
    try:
        return zipfile.ZipFile(path)
    except READ_ERRORS as e:
        raise shard_error(path, "file", f"unreadable npz archive ({e})") from None


def _read_header(path, zf: zipfile.ZipFile, key: str):
    """(shape, dtype) of one array in the npz from its .npy header, without decoding the data."""
    try:
        with zf.open(key + ".npy") as f:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
            else:
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
    except READ_ERRORS as e:
        raise shard_error(path, key, f"unreadable .npy member ({e}); expected a NumPy array") from None
    if dtype.hasobject:
        raise shard_error(path, key, "object (pickled) array; expected a plain numeric/str array "
                              "(files are read with allow_pickle=False)")
    return tuple(shape), dtype


def read_headers(path) -> dict:
    """``{key: (shape, dtype)}`` for every array of one npz file (only the headers are read)."""
    with open_zip(path) as zf:
        keys = [n[:-4] for n in zf.namelist() if n.endswith(".npy")]
        return {k: _read_header(path, zf, k) for k in keys}


def load_arrays(path, keys) -> dict:
    """Decode the named arrays of one npz file (``allow_pickle=False``), errors as ShardError."""
    open_zip(path).close()
    out, key = {}, "file"
    try:
        with np.load(path, allow_pickle=False) as npz:
            for key in keys:
                out[key] = npz[key]
    except ValueError as e:
        if "pickle" in str(e):
            raise shard_error(path, key, "object (pickled) array; expected a plain numeric/str array "
                                  "(files are read with allow_pickle=False)") from None
        raise shard_error(path, key, f"unreadable ({e}); the file looks truncated or corrupt") from None
    except READ_ERRORS as e:
        raise shard_error(path, key, f"unreadable ({e}); the file looks truncated or corrupt") from None
    return out


# ----------------------------------------------------------------------------- validation


@dataclasses.dataclass
class ShardInfo:
    """What the header and label checks of one shard found."""

    path: pathlib.Path
    n: int
    image_shape: tuple
    dtype: np.dtype
    class_names: list | None
    has_rowcol: bool
    max_label: int
    geo: dict | None = None


def check_header(path, headers: dict) -> tuple[int, tuple, np.dtype]:
    """Check keys, shapes and dtypes of one shard from its headers; return (N, (H, W, C), dtype)."""
    for key in REQUIRED_KEYS:
        if key not in headers:
            raise shard_error(path, key, f"missing; expected keys {', '.join(REQUIRED_KEYS)}")
    (s1, d1), (s2, d2) = headers["image_t1"], headers["image_t2"]
    for key, (shape, dtype) in zip(IMAGE_KEYS, ((s1, d1), (s2, d2)), strict=True):
        if len(shape) != 4 or min(shape[1:], default=0) < 1:
            raise shard_error(path, key, f"shape {shape}; expected (N, H, W, C) with H, W, C >= 1")
        if dtype not in IMAGE_DTYPES:
            raise shard_error(path, key, f"dtype {dtype}; expected uint8, uint16 or float32")
    if s1 != s2:
        raise shard_error(path, "image_t2", f"shape {s2}; expected the shape of image_t1 {s1}")
    if d1 != d2:
        raise shard_error(path, "image_t2", f"dtype {d2}; expected the dtype of image_t1 ({d1})")
    n = s1[0]
    for key in LABEL_KEYS + GRID_KEYS:
        if key not in headers:
            continue
        shape, dtype = headers[key]
        if shape != (n,):
            raise shard_error(path, key, f"shape {shape}; expected ({n},), one entry per image pair")
        if dtype.kind not in "iu":
            raise shard_error(path, key, f"dtype {dtype}; expected an integer dtype")
    if ("row" in headers) != ("col" in headers):
        missing = "col" if "row" in headers else "row"
        raise shard_error(path, missing, "missing; expected row and col together or neither")
    if "class_names" in headers:
        shape, dtype = headers["class_names"]
        if len(shape) != 1 or dtype.kind not in "US":
            raise shard_error(path, "class_names", f"shape {shape} dtype {dtype}; expected a 1-D str array")
    check_geo_header(path, headers)
    return n, tuple(s1[1:]), d1


def check_geo_header(path, headers: dict) -> None:
    """Optional georeferencing keys: crs () str, transform (6,) float, tile_size () integer; a
    transform needs row/col (it maps grid positions to map coordinates)."""
    expected = {"crs": ((), "US", "a str scalar (WKT)"),
                "transform": ((6,), "f", "6 floats (a, b, c, d, e, f of the tile grid's affine "
                                         "transform)"),
                "tile_size": ((), "iu", "an integer scalar")}
    for key, (shape_ok, kinds, what) in expected.items():
        if key in headers:
            shape, dtype = headers[key]
            if shape != shape_ok or dtype.kind not in kinds:
                raise shard_error(path, key, f"shape {shape} dtype {dtype}; expected {what}")
    if "transform" in headers and "row" not in headers:
        raise shard_error(path, "transform", "present without row/col; expected row and col with it")


def check_geo_values(path, arrays: dict) -> dict | None:
    """The georeferencing of a shard as ``{"crs", "transform", "tile_size"}`` (None where absent),
    values checked; None when the shard has none of the keys."""
    if not any(k in arrays for k in GEO_KEYS):
        return None
    geo = {"crs": str(arrays["crs"]) if "crs" in arrays else None,
           "transform": None, "tile_size": None}
    if "transform" in arrays:
        t = np.asarray(arrays["transform"], np.float64)
        if not np.isfinite(t).all() or t[0] * t[4] - t[1] * t[3] == 0:
            raise shard_error(path, "transform", f"{t.tolist()}; expected a finite, invertible affine "
                                          "transform")
        geo["transform"] = tuple(float(v) for v in t)
    if "tile_size" in arrays:
        size = int(arrays["tile_size"])
        if size < 1:
            raise shard_error(path, "tile_size", f"{size}; expected >= 1")
        geo["tile_size"] = size
    return geo


def check_labels(path, labels: dict, num_classes: int | None) -> int:
    """Labels non-negative and <= num_classes (if known); return the largest label."""
    top = 0
    for key in LABEL_KEYS:
        y = labels[key]
        if y.size and y.min() < 0:
            raise shard_error(path, key, f"negative label {int(y.min())}; expected class ids 1..K, 0 = undefined")
        if y.size:
            top = max(top, int(y.max()))
        if num_classes is not None and y.size and y.max() > num_classes:
            raise shard_error(path, key, f"label {int(y.max())} > {num_classes}; expected class ids 1..{num_classes}")
        if num_classes is None and top > MAX_CLASSES:
            raise shard_error(path, key, f"label {top}; expected class ids 1..K with K <= {MAX_CLASSES} "
                                  "(the most classes training and evaluation support)")
    return top


def check_image_values(path, key, images: np.ndarray) -> None:
    """Float images must be finite and inside [0, 1]; checked in chunks (no full-size temporaries)."""
    if images.dtype.kind != "f" or images.size == 0:
        return
    rows = max(1, CHUNK_BYTES // max(1, images[0].nbytes))
    for start in range(0, len(images), rows):
        _check_float_chunk(path, key, images[start:start + rows], start)


def _check_float_chunk(path, key, chunk, start):
    if not np.isfinite(chunk).all():
        i = start + int(np.argmax(~np.isfinite(chunk).reshape(len(chunk), -1).all(axis=1)))
        raise shard_error(path, key, f"NaN or inf in pair {i}; expected float images in [0, 1]")
    lo, hi = float(chunk.min()), float(chunk.max())
    if lo < 0.0 or hi > 1.0:
        raise shard_error(path, key, f"values in [{lo:g}, {hi:g}] near pair {start}; expected float images "
                              "in [0, 1] (store integers as uint8/uint16)")


def stream_check_image_values(path, key) -> None:
    """Value check of a float image array straight from the zip, one chunk of rows at a time."""
    with open_zip(path) as zf:
        shape, dtype = _read_header(path, zf, key)
        if dtype.kind != "f" or 0 in shape:
            return
        row_bytes = int(np.prod(shape[1:])) * dtype.itemsize
        rows = max(1, CHUNK_BYTES // row_bytes)
        try:
            with zf.open(key + ".npy") as f:
                version = np.lib.format.read_magic(f)
                reader = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                          else np.lib.format.read_array_header_2_0)
                _, fortran, _ = reader(f)
                if fortran:  # rare; fall back to decoding the whole array
                    raise NotImplementedError
                for start in range(0, shape[0], rows):
                    k = min(rows, shape[0] - start)
                    buf = f.read(k * row_bytes)
                    if len(buf) != k * row_bytes:
                        raise EOFError("array data ends early")
                    chunk = np.frombuffer(buf, dtype=dtype).reshape((k,) + tuple(shape[1:]))
                    _check_float_chunk(path, key, chunk, start)
                while f.read(VERIFY_CHUNK_BYTES):  # to the member's end: zipfile checks the CRC-32
                    pass
        except NotImplementedError:
            check_image_values(path, key, load_arrays(path, [key])[key])
        except ShardError:  # a value error found above (ShardError is a ValueError): as it is
            raise
        except READ_ERRORS as e:
            raise shard_error(path, key, f"unreadable ({e}); the file looks truncated or corrupt") from None


def verify_member(path, key) -> None:
    """Read one array of the npz to its end, a chunk at a time, so that zipfile checks its CRC-32.

    Decompresses a compressed member once (nothing is kept); for an uncompressed one it is a plain
    read of its bytes. ShardError naming the file and key if the data is damaged or cut short.
    """
    with open_zip(path) as zf:
        try:
            with zf.open(key + ".npy") as f:
                while f.read(VERIFY_CHUNK_BYTES):
                    pass
        except READ_ERRORS as e:
            raise shard_error(path, key, f"damaged data ({e}); expected data that matches the zip's "
                                  "CRC-32 checksum (the file looks truncated or corrupt: copy or "
                                  "write it again)") from None


def check_image_data(path, key, values=True, stored=False) -> None:
    """Read the image array ``key`` through where that is needed to trust it before training.

    Float images (with ``values``) are value-checked chunk by chunk, which reads the member to its
    end (CRC-32 checked). Other compressed members are read through once (the loader would
    decode them whole anyway, on every epoch). Uncompressed integer members, which the loader
    reads per batch at their byte offsets, are read through only with ``stored`` (a full read of
    the data, for an explicit validation such as ``python -m data.inspect``).
    """
    with open_zip(path) as zf:
        try:
            compressed = zf.getinfo(key + ".npy").compress_type != zipfile.ZIP_STORED
        except KeyError:
            raise shard_error(path, key, f"missing; expected keys {', '.join(REQUIRED_KEYS)}") from None
        dtype = _read_header(path, zf, key)[1]
    if values and dtype.kind == "f":
        stream_check_image_values(path, key)
    elif stored or compressed:
        verify_member(path, key)


def check_shard(path, num_classes=None) -> tuple[ShardInfo, dict]:
    """Header + label checks of one shard (images not decoded). Returns (info, small arrays)."""
    path = pathlib.Path(path)
    headers = read_headers(path)
    n, image_shape, dtype = check_header(path, headers)
    keys = [k for k in LABEL_KEYS + GRID_KEYS + ("class_names",) + GEO_KEYS if k in headers]
    arrays = load_arrays(path, keys)
    geo = check_geo_values(path, arrays)
    names = [str(s) if not isinstance(s, bytes) else s.decode() for s in arrays["class_names"]] \
        if "class_names" in arrays else None
    if num_classes is None and names is not None:
        num_classes = len(names)
    top = check_labels(path, arrays, num_classes)
    info = ShardInfo(path, n, image_shape, dtype, names, "row" in headers, top, geo)
    return info, arrays


def check_consistent(first: ShardInfo, info: ShardInfo) -> None:
    """Shards of one split agree on image size, channels, dtype, row/col and class names."""
    if info.image_shape != first.image_shape:
        raise shard_error(info.path, "image_t1", f"image shape (H, W, C) {info.image_shape}; expected "
                   f"{first.image_shape} as in {first.path.name} (all shards of a split alike)")
    if info.dtype != first.dtype:
        raise shard_error(info.path, "image_t1", f"dtype {info.dtype}; expected {first.dtype} as in "
                   f"{first.path.name} (all shards of a split alike)")
    if info.has_rowcol != first.has_rowcol:
        raise shard_error(info.path, "row", f"{'present' if info.has_rowcol else 'absent'}; expected "
                   f"{'present' if first.has_rowcol else 'absent'} as in {first.path.name}")
    if first.class_names is not None and info.class_names is not None \
            and info.class_names != first.class_names:
        raise shard_error(info.path, "class_names", f"{info.class_names}; expected {first.class_names} "
                   f"as in {first.path.name}")
    for key in GEO_KEYS:
        a, b = ((g or {}).get(key) for g in (first.geo, info.geo))
        if a != b:
            what = "present" if b is not None else "absent"
            raise shard_error(info.path, key, f"{what if (a is None) != (b is None) else 'differs'}; "
                       f"expected the {key} of {first.path.name} (all shards of a split on one grid)")


def defined_mask(label_t1, label_t2) -> np.ndarray:
    """Pairs whose class is defined on both dates (label 0 = undefined is skipped)."""
    return (np.asarray(label_t1) > 0) & (np.asarray(label_t2) > 0)


# ----------------------------------------------------------------------------- scaling


def scale_factor(dtype) -> float:
    """Multiplier of docs/DESIGN.md §2: 1 / dtype max for integer images, 1 for float images."""
    dtype = np.dtype(dtype)
    if dtype.kind in "iu":
        return 1.0 / float(np.iinfo(dtype).max)
    if dtype.kind == "f":
        return 1.0
    raise ValueError(f"image dtype {dtype}: expected an integer or float dtype")


#: what is subtracted after the division (images in [-0.5, 0.5])
IMAGE_OFFSET = 0.5


def scale_images(x, unit=False) -> np.ndarray:
    """§2 input scaling: integer images / dtype max, float images as they are; then minus 0.5.

    The one definition of the scaling: ``model.backbones.scale_inputs`` (on the device) and the
    loader's tf.data path apply ``scale_factor`` and ``IMAGE_OFFSET`` in the same order and
    precision. ``unit=True`` stops before the shift (images in [0, 1], what BoVW describes).
    """
    x = np.asarray(x)
    out = x.astype(np.float32) * np.float32(scale_factor(x.dtype))
    return out if unit else (out - np.float32(IMAGE_OFFSET)).astype(np.float32)


# ----------------------------------------------------------------------------- writing


def write_shard(path, image_t1, image_t2, label_t1, label_t2, row=None, col=None,
                class_names=None, compress=False, crs=None, transform=None,
                tile_size=None) -> pathlib.Path:
    """Write one §4 shard atomically (temporary file, then rename). Labels are 1-based, 0 = undefined.

    ``compress=False`` (the default of every writer here) stores the arrays uncompressed: the
    loader then reads each batch's pairs at their byte offsets (``os.preadv``) and never holds a
    shard in memory. ``compress=True`` gives smaller files (real imagery compresses well), but
    such a shard can only be decoded whole, on every read of it (one shard in memory at a time).
    """
    path = pathlib.Path(path)
    arrays = {"image_t1": np.asarray(image_t1), "image_t2": np.asarray(image_t2),
              "label_t1": np.asarray(label_t1), "label_t2": np.asarray(label_t2)}
    if row is not None:
        arrays["row"], arrays["col"] = np.asarray(row), np.asarray(col)
    if class_names is not None:
        arrays["class_names"] = np.asarray([str(s) for s in class_names], dtype=str)
    if crs is not None:
        arrays["crs"] = np.asarray(str(crs))
    if transform is not None:
        arrays["transform"] = np.asarray(transform, np.float64)
    if tile_size is not None:
        arrays["tile_size"] = np.asarray(int(tile_size), np.int64)
    check_header(path, {k: (v.shape, v.dtype) for k, v in arrays.items()})
    check_geo_values(path, arrays)
    check_labels(path, arrays, None if class_names is None else len(class_names))
    for key in IMAGE_KEYS:
        check_image_values(path, key, arrays[key])
    tmp = path.parent / f".{path.name}.{os.getpid()}.tmp"
    try:
        with open(tmp, "xb") as f:
            (np.savez_compressed if compress else np.savez)(f, **arrays)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    return path
