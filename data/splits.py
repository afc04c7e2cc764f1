"""Splits: where a command finds trn/val/tst (``resolve_split_dirs``), and the shard writers' shared
steps: random trn/val/tst split and safe writing of split dirs.

Writers never replace anything a user made: an output split directory that exists and is not empty
is refused before any work is done, and shards are written into a temporary directory inside the
output directory that is renamed into place only when every shard is written (removed on error,
with the output directory and any of its parents that the writer created). What was written is
logged only once everything is in place, so a failed run prints nothing but its error.
"""

from __future__ import annotations

import logging
import math
import pathlib
import shutil
import tempfile

import numpy as np

from data import shards

log = logging.getLogger(__name__)

SPLITS = ("trn", "val", "tst")
DEFAULT_FRACTIONS = (0.7, 0.1, 0.2)
SPLIT_MODES = ("random", "block")


def resolve_split_dirs(data_dir, given: dict, fill=SPLITS, optional=()) -> dict:
    """The split directories a command reads: ``{"trn", "val", "tst"}`` -> path string or None.

    The one rule for train_cnn.py, eval.py, compare.py and ``python -m evaluation.baselines``: a split given
    explicitly (``given[split]``) wins; otherwise ``DATA_DIR/split`` for the splits in ``fill``,
    and for those in ``optional`` only where that directory exists.
    """
    out = {s: (str(given[s]) if given.get(s) else None) for s in SPLITS}
    if data_dir:
        for s in fill:
            path = pathlib.Path(data_dir) / s
            if out[s] is None and (s not in optional or path.is_dir()):
                out[s] = str(path)
    return out


def parse_fractions(text) -> tuple[float, float, float]:
    """``"0.7,0.1,0.2"`` -> fractions of trn, val, tst (non-negative, summing to 1)."""
    try:
        values = tuple(float(v) for v in str(text).split(","))
    except ValueError:
        raise ValueError(f"--split {text!r}: expected three numbers like 0.7,0.1,0.2") from None
    if len(values) != 3 or min(values) < 0 or not math.isclose(sum(values), 1.0, abs_tol=1e-6):
        raise ValueError(f"--split {text!r}: expected three non-negative fractions summing to 1")
    return values


def split_indices(n, fractions=DEFAULT_FRACTIONS, seed=0) -> dict:
    """Random split of ``range(n)`` into ``{"trn", "val", "tst"}`` sorted index arrays.

    Sizes are ``round(fraction * n)`` for val and tst (at least 1 when the fraction is > 0 and
    n >= 3), trn takes the rest.
    """
    perm = np.random.default_rng(seed).permutation(n)
    sizes = []
    for f in fractions[1:]:
        k = int(round(f * n))
        if f > 0 and k == 0 and n >= 3:
            k = 1
        sizes.append(k)
    n_val, n_tst = sizes
    n_trn = n - n_val - n_tst
    if n_trn < 0 or (fractions[0] > 0 and n_trn == 0):
        raise ValueError(f"{n} pairs are too few for the split fractions {fractions}")
    parts = (perm[:n_trn], perm[n_trn:n_trn + n_val], perm[n_trn + n_val:])
    return {name: np.sort(p) for name, p in zip(SPLITS, parts, strict=True)}


def split_blocks(row, col, block_size, fractions=DEFAULT_FRACTIONS, seed=0) -> dict:
    """Spatial split: the tiles of each block of ``block_size`` x ``block_size`` grid cells go to
    one split, so that neighbouring tiles do not leak between trn and tst.

    Blocks are shuffled from ``seed`` and handed out in that order: a block goes to the split in
    whose share of the pairs (trn, then val, then tst) its middle pair falls, so each split gets
    close to its fraction of the pairs. Returns ``{"trn", "val", "tst"}`` sorted index arrays.
    """
    if block_size < 1:
        raise ValueError(f"--block_size {block_size}: expected >= 1")
    row, col = np.asarray(row, np.int64), np.asarray(col, np.int64)
    keys = np.stack([row // block_size, col // block_size], axis=1)
    blocks, which = np.unique(keys, axis=0, return_inverse=True)
    which = which.reshape(-1)
    sizes = np.bincount(which, minlength=len(blocks))
    order = np.random.default_rng(seed).permutation(len(blocks))
    middle = np.cumsum(sizes[order]) - sizes[order] / 2.0
    bounds = np.cumsum(fractions) * len(row)
    part = np.empty(len(blocks), np.int64)
    part[order] = np.minimum(np.searchsorted(bounds, middle, side="right"), 2)
    for i, f in enumerate(fractions):  # a split asked for gets at least one block when possible
        if f > 0 and not (part == i).any() and len(blocks) >= 3:
            donor = np.bincount(part, minlength=3).argmax()
            part[order[np.flatnonzero(part[order] == donor)[-1]]] = i
    if fractions[0] > 0 and not (part == 0).any():
        raise ValueError(f"{len(blocks)} block(s) of {block_size}x{block_size} tiles are too few "
                         f"for the split fractions {tuple(fractions)}; use a smaller --block_size")
    pair_part = part[which]
    return {name: np.flatnonzero(pair_part == i) for i, name in enumerate(SPLITS)}


def check_output_dir(out_dir, splits=SPLITS) -> pathlib.Path:
    """Refuse an output whose split directories exist and are not empty (or that is a file)."""
    out_dir = pathlib.Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise shards.ShardError(f"{out_dir}: --out: exists and is not a directory; expected a new "
                                "or empty directory")
    for name in splits:
        d = out_dir / name
        if d.exists() and (not d.is_dir() or any(d.iterdir())):
            raise shards.ShardError(f"{d}: --out: exists and is not empty; expected a new or empty "
                                    "directory (nothing is overwritten)")
    return out_dir


def write_splits(out_dir, splits: dict, get_pairs, shard_size=None, class_names=None,
                 compress=False) -> dict:
    """Write ``out_dir/<split>/shard_NNN.npz`` for each split.

    Args:
        out_dir: output directory (checked with :func:`check_output_dir`).
        splits: ``{name: index array}`` into the pairs.
        get_pairs: ``get_pairs(indices) -> dict`` with ``image_t1``, ``image_t2``, ``label_t1``,
            ``label_t2`` and optionally ``row``, ``col`` for those pairs (called once per shard,
            so only one shard of images is in memory at a time).
        shard_size: at most this many pairs per shard (None: one shard per split).
        class_names: names of classes 1..K, stored in every shard.
        compress: ``np.savez_compressed`` instead of ``np.savez``. Off by default: the loader
            reads uncompressed shards per batch (no shard held in memory) but must decode
            compressed ones whole.

    Returns:
        ``{name: [shard paths]}``.
    """
    out_dir = check_output_dir(out_dir, splits)
    created = _missing_dirs(out_dir)  # out_dir and the parents that mkdir will make, deepest first
    out_dir.mkdir(parents=True, exist_ok=True)
    written, empty = {}, []
    try:
        tmp = pathlib.Path(tempfile.mkdtemp(prefix=".incomplete-", dir=out_dir))
    except BaseException:
        _remove_created(created)
        raise
    try:
        for name, idx in splits.items():
            if len(idx) == 0:
                empty.append(name)
                continue
            (tmp / name).mkdir()
            size = len(idx) if not shard_size else int(shard_size)
            paths = []
            for i, start in enumerate(range(0, len(idx), size)):
                arrays = get_pairs(idx[start:start + size])
                path = tmp / name / f"shard_{i:03d}.npz"
                shards.write_shard(path, class_names=class_names, compress=compress, **arrays)
                paths.append(out_dir / name / path.name)
            written[name] = paths
        for name in written:
            target = out_dir / name
            if target.exists():
                target.rmdir()  # empty (checked above)
            (tmp / name).rename(target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if created:
            shutil.rmtree(out_dir, ignore_errors=True)
            _remove_created(created[1:])
        raise
    tmp.rmdir()
    for name in empty:
        log.warning("split %s is empty; not written", name)
    for name, paths in written.items():
        log.info("%s: %d pairs in %d shard(s)", out_dir / name, len(splits[name]), len(paths))
    return written


def _missing_dirs(path) -> list[pathlib.Path]:
    """``path`` and those of its parents that do not exist yet, deepest first."""
    missing = []
    path = pathlib.Path(path)
    while not path.exists() and path != path.parent:
        missing.append(path)
        path = path.parent
    return missing


def _remove_created(dirs) -> None:
    """Remove directories a failed writer created (deepest first), each only while it is empty."""
    for d in dirs:
        try:
            d.rmdir()
        except OSError:
            break
