"""Per-batch reads of uncompressed (ZIP_STORED) shard members (docs/DESIGN.md §4): where a
member's array data lies in the file (:func:`stored_layout`) and the rows of a batch read at their
byte offsets (:func:`read_rows`, one vectored read where the system has ``os.preadv``), and the
value check of the rows read that way (:func:`check_image_rows`). NumPy only."""

from __future__ import annotations

import dataclasses
import os
import struct
import zipfile

import numpy as np

from data.shards import READ_ERRORS, REQUIRED_KEYS, open_zip, shard_error

# ----------------------------------------------------------------------------- per-batch reads


@dataclasses.dataclass(frozen=True)
class MemberLayout:
    """Where the array data of one uncompressed (``ZIP_STORED``) npz member lies in the file."""

    key: str
    offset: int  # byte offset of element [0, ...] in the .npz file
    shape: tuple
    dtype: np.dtype

    @property
    def row_bytes(self) -> int:
        """Bytes of one pair (one image)."""
        return int(np.prod(self.shape[1:], dtype=np.int64)) * self.dtype.itemsize


def stored_layout(path, key) -> MemberLayout | None:
    """Byte layout of an image member stored uncompressed in C order, or None (compressed/Fortran).

    Reads the zip local file header (its name and extra fields may differ from the central
    directory's, so the local one is parsed) and the member's ``.npy`` header. ShardError if the
    header is damaged or the file is too short for the array it announces.
    """
    with open_zip(path) as zf:
        try:
            info = zf.getinfo(key + ".npy")
        except KeyError:
            raise shard_error(path, key, f"missing; expected keys {', '.join(REQUIRED_KEYS)}") from None
    if info.compress_type != zipfile.ZIP_STORED:
        return None
    try:
        with open(path, "rb") as f:
            f.seek(info.header_offset)
            head = f.read(30)
            if len(head) != 30 or head[:4] != b"PK\x03\x04":
                raise ValueError("bad zip local file header")
            name_len, extra_len = struct.unpack("<HH", head[26:30])
            start = info.header_offset + 30 + name_len + extra_len
            f.seek(start)
            version = np.lib.format.read_magic(f)
            reader = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                      else np.lib.format.read_array_header_2_0)
            shape, fortran, dtype = reader(f)
            offset = f.tell()
            size = os.fstat(f.fileno()).st_size
    except READ_ERRORS as e:
        raise shard_error(path, key, f"unreadable .npy member ({e}); the file looks truncated or "
                              "corrupt") from None
    if fortran:
        return None
    layout = MemberLayout(key, offset, tuple(shape), np.dtype(dtype))
    nbytes = layout.row_bytes * (shape[0] if shape else 1)
    if offset - start + nbytes != info.file_size or offset + nbytes > size:
        raise shard_error(path, key, f"member of {info.file_size} bytes in a file of {size} bytes; "
                              f"expected {offset - start + nbytes} bytes of header and array "
                              "data (the file looks truncated or corrupt)")
    return layout


def read_rows(path, layout: MemberLayout, idx) -> np.ndarray:
    """Images ``idx`` (in that order) of a stored member, read with positional reads.

    Indices are visited in ascending order (file locality); each run of consecutive indices is
    one ``os.preadv`` scattering straight into the rows of the output, so the batch comes out in
    the order asked for without an extra copy. Float images are value-checked (finite, in
    [0, 1]); errors name the file, the key and the pair.
    """
    idx = np.asarray(idx, dtype=np.int64)
    out = np.empty((len(idx),) + layout.shape[1:], layout.dtype)
    if len(idx) == 0:
        return out
    n = layout.shape[0]
    if idx.min() < 0 or idx.max() >= n:
        raise IndexError(f"{path}: {layout.key}: pair index out of range 0..{n - 1}")
    row = layout.row_bytes
    order = np.argsort(idx, kind="stable")
    ids = idx[order]
    breaks = np.flatnonzero(np.diff(ids) != 1) + 1
    starts = np.concatenate(([0], breaks)).tolist()
    stops = np.concatenate((breaks, [len(ids)])).tolist()
    rows = out.reshape(len(idx), -1).view(np.uint8)  # (B, row) bytes view of the output
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
    except OSError as e:
        raise shard_error(path, layout.key, f"unreadable ({e})") from None
    try:
        for a, b in zip(starts, stops, strict=True):
            offset = layout.offset + int(ids[a]) * row
            for c in range(a, b, _IOV_MAX):  # preadv takes at most IOV_MAX buffers
                d = min(b, c + _IOV_MAX)
                got = _pread_into(fd, [rows[int(j)] for j in order[c:d]], offset + (c - a) * row)
                if got != (d - c) * row:
                    raise EOFError(f"read {got} of {(d - c) * row} bytes")
    except (OSError, EOFError) as e:
        raise shard_error(path, layout.key, f"unreadable ({e}); the file looks truncated or "
                                     "corrupt") from None
    finally:
        os.close(fd)
    if layout.dtype.kind == "f":
        check_image_rows(path, layout.key, out, idx)
    return out


_IOV_MAX = 1024  # POSIX minimum is 16, Linux/macOS allow 1024


def _pread_into(fd, buffers, offset) -> int:
    if hasattr(os, "preadv"):
        return os.preadv(fd, buffers, offset)
    got = 0  # platforms without preadv: one pread per row
    for buf in buffers:
        data = os.pread(fd, len(buf), offset + got)
        buf[:len(data)] = np.frombuffer(data, np.uint8)
        got += len(data)
        if len(data) < len(buf):
            break
    return got


def per_batch_reads_supported() -> bool:
    """Positional reads exist on this platform (POSIX); elsewhere shards are decoded whole."""
    return hasattr(os, "pread")


def check_image_rows(path, key, images: np.ndarray, pair_ids) -> None:
    """Value check of float images read per batch; errors name the shard's pair index."""
    if images.dtype.kind != "f" or images.size == 0:
        return
    flat = images.reshape(len(images), -1)
    finite = np.isfinite(flat).all(axis=1)
    if not finite.all():
        i = int(pair_ids[int(np.argmin(finite))])
        raise shard_error(path, key, f"NaN or inf in pair {i}; expected float images in [0, 1]")
    lo, hi = flat.min(axis=1), flat.max(axis=1)
    bad = (lo < 0.0) | (hi > 1.0)
    if bad.any():
        j = int(np.argmax(bad))
        raise shard_error(path, key, f"values in [{float(lo[j]):g}, {float(hi[j]):g}] in pair "
                              f"{int(pair_ids[j])}; expected float images in [0, 1] (store "
                              "integers as uint8/uint16)")
