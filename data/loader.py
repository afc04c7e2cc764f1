"""Streaming loader over a split directory of npz shards (docs/DESIGN.md §2 scaling, §4 format).

Yields batches ``((x1, x2), (y1, y2))``: x float32 (B, H, W, C) dtype-scaled per §2, y int32
0-based; with ``raw_integers=True`` integer images stay in their stored dtype (uint8/uint16) and the
model normalises them on the device (``model.normalization.InputNormalization``: a quarter or half
of the bytes to copy to an accelerator and to hold in the prefetch buffers). ``scaling`` says what
the loader does for the model's ``--input_norm`` (``SCALINGS``, ``model.config.INPUT_SCALING``):
the §2 dtype scaling (``dtype``), nothing (``raw``: values as stored, float32 where resized) or the
original's per-shard maximum (``shard_max``: float32, applied per pair in ``_take``).

How it works (the same pure functions serve both backends):

* :func:`batch_plan` lays out one epoch: the order of the shards and, per batch, the segments
  ``(file, start, stop)`` of the per-shard order it takes. Training shuffles the shard order and the
  pairs within each shard from ``(seed, epoch)``; batches that straddle two shards mix them.
  Evaluation keeps sorted-file order and stored pair order (the order of ``read_labels``).
* :func:`load_shard` opens one shard: labels checked, undefined pairs dropped. Shards whose image
  members are stored uncompressed (``ZIP_STORED``, the default of every writer here) are read
  **per batch**: the byte offset of each image array is computed once per shard (zip local
  header + ``.npy`` header) and each batch's pairs are read with ``os.preadv`` (indices sorted
  for locality, consecutive ones in one call, scattered back into batch order), so no shard is
  held in memory: peak memory is a few batches whatever the shard or split size. Float images
  are checked (finite, in [0, 1]) batch by batch. Compressed members cannot be addressed by
  offset; such a shard is decoded whole with ``np.load(allow_pickle=False)`` and checked as it
  is read (logged once per split), and :class:`ShardCache` holds at most ONE of them: the
  previous one is released before the next is read.
* :func:`gather_batch` builds a batch in the stored dtype; the cast to float32, the scaling and
  the optional resize happen on the batch only (tf.data ``map`` on TensorFlow, NumPy/keras.ops in
  the ``PyDataset`` on other backends).
* Pairs with label 0 on either date are skipped (counted and logged once per split).
"""

from __future__ import annotations

import itertools
import logging
import math

import keras
import numpy as np

from data import shard_rows, shards, split_summary
from data.split_summary import input_size
from data.stats import shard_maxima

log = logging.getLogger(__name__)

MAP_PARALLELISM = 2  # batches cast/scaled/resized at once in tf.data (cheap per-batch work)
PREFETCH_BATCHES = 2  # finished batches kept ready ahead of the model


# ----------------------------------------------------------------------------- pure functions


def steps_per_epoch(summary, batch_size, drop_remainder=False) -> int:
    """Batches per epoch for a :class:`data.split_summary.SplitSummary`."""
    if drop_remainder:
        return summary.n_pairs // batch_size
    return math.ceil(summary.n_pairs / batch_size)


def file_order(n_files, training, seed, epoch) -> np.ndarray:
    """Order of the shards in one epoch: sorted for evaluation, shuffled from (seed, epoch) else."""
    if not training:
        return np.arange(n_files)
    return np.random.default_rng([seed, epoch]).permutation(n_files)


def pair_order(n, training, seed, epoch, file_index) -> np.ndarray:
    """Order of the n usable pairs of one shard: stored order, or shuffled from (seed, epoch, file)."""
    if not training:
        return np.arange(n)
    return np.random.default_rng([seed, epoch, file_index + 1]).permutation(n)


def part_range(lo, hi, part):
    """Part ``index`` of ``count`` of the rows ``lo:hi`` of one batch, as ``(start, stop)``:
    consecutive, sizes differing by at most one, the larger ones first (``np.array_split``)."""
    index, count = part
    q, r = divmod(hi - lo, count)
    start = lo + index * q + min(index, r)
    return start, start + q + (index < r)


def batch_plan(pairs_per_file, batch_size, training, seed=0, epoch=0, drop_remainder=False,
               part=None):
    """One epoch as a list of batches, each a list of segments ``(file_index, start, stop)``.

    ``start:stop`` index the shard's :func:`pair_order`. Every usable pair appears exactly once
    (except the last partial batch when ``drop_remainder``).

    part: ``(index, count)``: only part ``index`` of each batch (:func:`part_range`): ``count``
    multi-worker processes together read the batches of one process, each its slice of every
    batch (``training.multiworker``).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size}: expected >= 1")
    order = [int(f) for f in file_order(len(pairs_per_file), training, seed, epoch)]
    counts = np.array([pairs_per_file[f] for f in order], dtype=np.int64)
    ends = np.cumsum(counts)
    total = int(ends[-1]) if len(ends) else 0
    n_batches = total // batch_size if drop_remainder else math.ceil(total / batch_size)
    plan = []
    for b in range(n_batches):
        lo, hi = b * batch_size, min((b + 1) * batch_size, total)
        if part is not None:
            lo, hi = part_range(lo, hi, part)
        segments = []
        j = int(np.searchsorted(ends, lo, side="right"))
        while lo < hi:
            begin = int(ends[j] - counts[j])
            stop = min(hi, int(ends[j]))
            segments.append((order[j], lo - begin, stop - begin))
            lo = stop
            j += 1
        plan.append(segments)
    return plan


def load_shard(path, summary, num_classes=None, per_batch=None) -> dict:
    """Open and check one shard: labels, ``defined`` (usable indices) and the way to its images.

    Shards whose image members are stored uncompressed (what the project's writers produce) are
    read per batch: the dict holds each member's :class:`data.shard_rows.MemberLayout` under
    ``layouts`` and :func:`take_images` reads a batch's pairs with ``os.preadv`` (values of float
    images checked per batch). Compressed members cannot be addressed by offset, so they are
    decoded whole into the dict (``image_t1``/``image_t2``, stored dtype, values checked now).

    Args:
        per_batch: None: per batch when possible; False: always decode whole (tests, A/B).
    """
    info, arrays = shards.check_shard(path, summary.num_classes if num_classes is None
                                      else num_classes)
    first = shards.ShardInfo(summary.files[0], 0, summary.image_shape, summary.dtype,
                             summary.class_names, summary.has_rowcol, 0, summary.geo)
    shards.check_consistent(first, info)
    data = {"path": path, "label_t1": arrays["label_t1"], "label_t2": arrays["label_t2"]}
    data["defined"] = np.flatnonzero(shards.defined_mask(data["label_t1"], data["label_t2"]))
    layouts = per_batch_layouts(path) if per_batch is not False else None
    if layouts is not None:
        data["layouts"] = layouts
        return data
    images = shards.load_arrays(path, shards.IMAGE_KEYS)
    for key in shards.IMAGE_KEYS:
        shards.check_image_values(path, key, images[key])
    data.update(images)
    return data


def take_images(data, key, idx) -> np.ndarray:
    """Images ``idx`` of one shard opened by :func:`load_shard`, in that order (stored dtype)."""
    if "layouts" in data:
        return shard_rows.read_rows(data["path"], data["layouts"][key], idx)
    return data[key][idx]


class ShardCache:
    """Holds at most one opened shard; opening another releases the current one first.

    With per-batch reads the opened shard is its labels and byte layout only (no images).

    Args:
        summary: the split's :class:`data.split_summary.SplitSummary`.
        num_classes: K to check labels against (default ``summary.num_classes``).
        load_fn: ``load_fn(path, summary, num_classes) -> dict`` (default :func:`load_shard`);
            tests pass an instrumented one.
    """

    def __init__(self, summary, num_classes=None, load_fn=None, divisors=None):
        self.summary = summary
        self.num_classes = num_classes
        self.load_fn = load_fn or load_shard
        #: (n_files, 2) per-shard, per-date divisors of ``scaling="shard_max"``, or None
        self.divisors = divisors
        self.index = None
        self.data = None
        self.loads = 0

    def get(self, file_index) -> dict:
        data = self.data
        if file_index != self.index:
            self.index, self.data, data = None, None, None  # release before reading the next
            data = self.load_fn(self.summary.files[file_index], self.summary, self.num_classes)
            self.index, self.data = file_index, data
            self.loads += 1
        return data


def _take(cache, f, start, stop, training, seed, epoch):
    """Pairs ``start:stop`` of shard f's epoch order (copies; no reference to the shard is kept)."""
    data = cache.get(f)
    if data.get("order_epoch") != epoch:
        data["order"] = pair_order(len(data["defined"]), training, seed, epoch, f)
        data["order_epoch"] = epoch
    idx = data["defined"][data["order"][start:stop]]
    x1, x2 = take_images(data, "image_t1", idx), take_images(data, "image_t2", idx)
    if cache.divisors is not None:
        x1, x2 = (shard_max_scale(x, cache.divisors[f, d]) for d, x in enumerate((x1, x2)))
    return [x1, x2, data["label_t1"][idx].astype(np.int32) - 1,
            data["label_t2"][idx].astype(np.int32) - 1]


def shard_max_scale(x, divisor) -> np.ndarray:
    """``--input_norm shard_max``: the original's ``x.astype(float32) / np.max(x) − 0.5`` with the
    max of the shard's whole array (``divisor``, from ``data.stats.shard_maxima``)."""
    return x.astype(np.float32) / np.float32(divisor) - np.float32(shards.IMAGE_OFFSET)


def gather_batch(segments, cache, training, seed, epoch):
    """Batch ``(x1, x2, y1, y2)`` for one plan entry: images in stored dtype, labels 0-based int32."""
    parts = [_take(cache, f, start, stop, training, seed, epoch) for f, start, stop in segments]
    if len(parts) == 1:
        return tuple(parts[0])
    return tuple(np.concatenate(arrays) for arrays in zip(*parts, strict=True))


def iter_batches(summary, batch_size, training, seed=0, epoch=0, drop_remainder=False,
                 num_classes=None, load_fn=None, part=None, divisors=None):
    """Generator of one epoch of raw batches ``(x1, x2, y1, y2)`` (images in stored dtype; with
    ``divisors`` float32 scaled per shard, see :func:`shard_max_scale`)."""
    cache = ShardCache(summary, num_classes, load_fn, divisors)
    for segments in batch_plan(summary.pairs_per_file, batch_size, training, seed, epoch,
                               drop_remainder, part):
        yield gather_batch(segments, cache, training, seed, epoch)


# ----------------------------------------------------------------------------- backends


def per_batch_layouts(path):
    """Byte layouts of the image members of one shard, or None when they must be decoded whole
    (compressed or Fortran-ordered members, or no positioned reads on this platform)."""
    if not shard_rows.per_batch_reads_supported():
        return None
    layouts = {key: shard_rows.stored_layout(path, key) for key in shards.IMAGE_KEYS}
    return None if any(v is None for v in layouts.values()) else layouts


def warn_if_decoded_whole(summary) -> None:
    """One warning per dataset when the split's shards cannot be read per batch."""
    if summary.files and per_batch_layouts(summary.files[0]) is None:
        mib = 2 * max(summary.pairs_per_file) * int(np.prod(summary.image_shape)) * \
            np.dtype(summary.dtype).itemsize / 2**20
        log.warning("%s: compressed (or Fortran-ordered) image arrays: each shard is decoded "
                    "whole while it is read (up to %.0f MiB); shards written uncompressed (the "
                    "default of data.make_shards / data.synthetic / write_shard) are read per "
                    "batch and never held", summary.split_dir, mib)


#: what the loader does to the images before the model (``ModelConfig.input_norm`` picks one via
#: ``model.config.INPUT_SCALING``): ``dtype``: the §2 dtype scaling (integer batches left to the
#: model with ``raw_integers``); ``raw``: values as stored (cast to float32 only to resize or when
#: integers are not wanted); ``shard_max``: each date of each shard divided by its maximum − 0.5
SCALINGS = ("dtype", "raw", "shard_max")


def keeps_raw(summary, image_size, raw_integers, scaling="dtype") -> bool:
    """Whether batches leave the loader as they are read: no resize and, for ``dtype``, integer
    images with ``raw_integers`` (``raw``: integers with ``raw_integers``, or float images;
    ``shard_max``: always, the batches are scaled float32 already)."""
    same = input_size(summary, image_size) == tuple(summary.image_shape[:2])
    kind = np.dtype(summary.dtype).kind
    if scaling == "shard_max":
        return same
    if scaling == "raw":
        return same and (bool(raw_integers) or kind == "f")
    return bool(raw_integers) and kind == "u" and same


def _tf_dataset(summary, batch_size, training, seed, image_size, num_classes, drop_remainder,
                raw_integers=False, part=None, scaling="dtype", divisors=None):
    import tensorflow as tf  # deferred: TensorFlow loads on first use

    epochs = {"next": itertools.count()}  # the n-th iteration over the dataset is epoch n

    def generate():
        yield from iter_batches(summary, batch_size, training, seed, next(epochs["next"]),
                                drop_remainder, num_classes, part=part, divisors=divisors)

    def set_epoch(epoch):
        """The next iteration over the dataset is epoch ``epoch`` (for resuming a run)."""
        epochs["next"] = itertools.count(int(epoch))

    h, w, c = summary.image_shape
    b = batch_size if drop_remainder and part is None else None
    stored = tf.float32 if scaling == "shard_max" else tf.as_dtype(summary.dtype)
    image_spec = tf.TensorSpec((b, h, w, c), stored)
    label_spec = tf.TensorSpec((b,), tf.int32)
    scale = shards.scale_factor(summary.dtype)
    raw = keeps_raw(summary, image_size, raw_integers, scaling)

    def finish(x):
        if raw:
            return x
        if scaling == "dtype":
            x = tf.cast(x, tf.float32) * scale - shards.IMAGE_OFFSET
        else:  # raw values (the model normalises them) or scaled per shard already
            x = tf.cast(x, tf.float32)
        if image_size is not None:
            x = tf.image.resize(x, image_size)
        return x

    ds = tf.data.Dataset.from_generator(
        generate, output_signature=(image_spec, image_spec, label_spec, label_spec))
    ds = ds.apply(tf.data.experimental.assert_cardinality(
        steps_per_epoch(summary, batch_size, drop_remainder)))
    ds = ds.map(lambda x1, x2, y1, y2: ((finish(x1), finish(x2)), (y1, y2)),
                num_parallel_calls=MAP_PARALLELISM, deterministic=True)
    ds = ds.prefetch(PREFETCH_BATCHES)
    ds = ds.with_options(_tf_options(tf))
    ds.set_epoch = set_epoch
    return ds


def _tf_options(tf):
    """tf.data options of the loader: fixed parallelism and buffers, autotuning off.

    Why: Keras (3.15, ``trainers/epoch_iterator.py``) opens a fresh iterator at the end of every
    pass over a dataset of known length (predict, evaluate, each fit epoch) and drops the one it
    has just used. With tf.data autotuning on, tearing that used iterator down blocks the caller
    for about 0.5 s on this CPU (measured: ``del`` of the iterator 0.5-0.6 s with autotuning,
    <= 1 ms without; benchmarks/RESULTS.md 1c) -- a fixed cost per ``predict``/``evaluate`` call
    and per epoch. The pipeline has nothing to tune anyway: one Python generator, a cheap map
    and a short prefetch, so fixed values cost no throughput and also bound the memory of the
    buffers (autotuning may grow them up to its RAM budget).
    """
    options = tf.data.Options()
    options.autotune.enabled = False
    return options


class ShardPyDataset(keras.utils.PyDataset):
    """The same reader as a ``keras.utils.PyDataset`` (any Keras backend).

    Batches are read in index order within an epoch (one shard held at a time); ``on_epoch_end``
    advances the epoch and so the shuffle. Keep ``workers=1`` / no multiprocessing so that the shard
    cache sees batches in order.
    """

    def __init__(self, summary, batch_size, training, seed=0, image_size=None, num_classes=None,
                 drop_remainder=False, raw_integers=False, part=None, scaling="dtype",
                 divisors=None, load_fn=None, **kwargs):
        super().__init__(**kwargs)
        self.part = part
        self.summary = summary
        self.scaling = scaling
        self.raw = keeps_raw(summary, image_size, raw_integers, scaling)
        self.batch_size = batch_size
        self.training = training
        self.seed = seed
        self.image_size = None if image_size is None else tuple(image_size)
        self.num_classes = num_classes
        self.drop_remainder = drop_remainder
        self.epoch = 0
        self._cache = ShardCache(summary, num_classes, load_fn, divisors)
        self._plan = self._make_plan()

    def _make_plan(self):
        return batch_plan(self.summary.pairs_per_file, self.batch_size, self.training, self.seed,
                          self.epoch, self.drop_remainder, self.part)

    def __len__(self):
        return len(self._plan)

    def _finish(self, x):
        if self.raw:
            return x
        x = shards.scale_images(x) if self.scaling == "dtype" else x.astype(np.float32)
        if self.image_size is not None and x.shape[1:3] != self.image_size:
            x = keras.ops.convert_to_numpy(keras.ops.image.resize(x, self.image_size))
        return x

    def __getitem__(self, index):
        if index >= len(self._plan):
            raise IndexError(f"batch {index} of {len(self._plan)}")
        x1, x2, y1, y2 = gather_batch(self._plan[index], self._cache, self.training, self.seed,
                                      self.epoch)
        return (self._finish(x1), self._finish(x2)), (y1, y2)

    def set_epoch(self, epoch):
        """Continue with the order of epoch ``epoch`` (for resuming a run)."""
        self.epoch = int(epoch)
        self._plan = self._make_plan()

    def on_epoch_end(self):
        self.epoch += 1
        self._plan = self._make_plan()


def make_dataset(split_dir, batch_size, training, seed=0, image_size=None, num_classes=None,
                 drop_remainder=False, raw_integers=False, part=None, scaling="dtype"):
    """Streaming dataset over a split directory of §4 shards.

    Args:
        split_dir: directory of ``.npz`` shards.
        batch_size: pairs per batch.
        training: shuffle shards and pairs from ``seed`` (new order each epoch, deterministic);
            False keeps the fixed order of :func:`data.split_summary.read_labels`.
        seed: shuffle seed.
        image_size: optional ``(height, width)`` to resize batches to (bilinear).
        num_classes: K; labels above it are an error (default: from the shards).
        drop_remainder: drop the last partial batch (fixed batch dimension).
        raw_integers: yield uint8/uint16 images as stored, for a model that scales them itself
            (``CorrFusionNet`` does); float images and resized batches are scaled here either way.
        part: ``(index, count)``: yield only part ``index`` of ``count`` of every batch (same
            batches, same order; see :func:`batch_plan`), for multi-worker training.
        scaling: ``SCALINGS``: ``dtype`` (§2 dtype scaling, the default), ``raw`` (values as
            stored: the model normalises them; float32 where resized) or ``shard_max`` (float32,
            each date of each shard divided by its maximum − 0.5, as the original code; one
            extra pass over the split finds the maxima).

    Returns:
        ``(dataset, summary)``: a ``tf.data.Dataset`` on the TensorFlow backend, else a
        :class:`ShardPyDataset`, yielding ``((x1, x2), (y1, y2))``; and the split's SplitSummary.
        Both have ``set_epoch(epoch)``: the next pass uses that epoch's shuffle (resuming a run).

    Raises:
        data.shards.ShardError: the split breaks the §4 format (file, key, expectation).
    """
    summary = split_summary.inspect_split(split_dir, num_classes, check_values=False)
    if summary.n_pairs == 0:
        raise shards.ShardError(f"{split_dir}: label_t1/label_t2: no usable pairs; expected at "
                                "least one pair with labels > 0 on both dates")
    log.debug("%s: %d pairs in %d shard(s), %d undefined pair(s) skipped, %s %s", split_dir,
             summary.n_pairs, len(summary.files), summary.n_skipped, summary.image_shape,
             summary.dtype)
    warn_if_decoded_whole(summary)
    size = input_size(summary, image_size)
    image_size = None if size == tuple(summary.image_shape[:2]) else size  # None: no resize
    if scaling not in SCALINGS:
        raise ValueError(f"scaling must be one of {SCALINGS}; received scaling={scaling!r}")
    divisors = shard_divisors(summary) if scaling == "shard_max" else None
    args = (summary, batch_size, training, seed, image_size, num_classes, drop_remainder,
            raw_integers, part, scaling, divisors)
    if keras.backend.backend() == "tensorflow":
        return _tf_dataset(*args), summary
    return ShardPyDataset(*args), summary


def shard_divisors(summary) -> np.ndarray:
    """(n_files, 2) maxima of each shard's two image arrays (``data.stats.shard_maxima``); a
    shard whose array holds only zeros is a ShardError naming it (nothing to divide by)."""

    maxima = shard_maxima(summary)
    for f, d in zip(*np.nonzero(maxima <= 0), strict=True):
        raise shards.ShardError(f"{summary.files[f]}: {shards.IMAGE_KEYS[d]}: every value is 0; "
                                "expected imagery (--input_norm shard_max divides each shard by "
                                "its maximum)")
    log.info("%s: --input_norm shard_max: each shard's image_t1/image_t2 divided by its maximum "
             "(%s)", summary.split_dir, "; ".join(f"{p.name} {a:g}/{b:g}" for p, (a, b)
                                                 in zip(summary.files, maxima, strict=True)))
    return maxima
