"""data.loader: order, shuffling, scaling, label shift, skipping, resize, memory bound, PyDataset."""

import functools
import gc
import tracemalloc
import weakref

import numpy as np
import pytest

from data import loader, shard_rows, shards, split_summary
from tests.data._helpers import make_split

SIZES = (7, 5, 6)
UNDEFINED = (2, 9, 16)
DEFINED = [i for i in range(sum(SIZES)) if i not in UNDEFINED]


@pytest.fixture
def split(tmp_path):
    return make_split(tmp_path / "trn", sizes=SIZES, undefined=UNDEFINED)


def _ids(x1):
    """Pair ids stored in pixel (0, 0, 0) of scaled uint8 images."""
    return np.rint((np.asarray(x1)[:, 0, 0, 0] + 0.5) * 255).astype(int)


def _epoch(ds):
    ids, y1 = [], []
    for (x1, _), (a, _) in ds:
        ids.append(_ids(x1))
        y1.append(np.asarray(a))
    return np.concatenate(ids), np.concatenate(y1)


def _raw_ids(summary, training, seed, epoch, batch_size=4):
    return np.concatenate([b[0][:, 0, 0, 0] for b in loader.iter_batches(
        summary, batch_size, training, seed, epoch)]).astype(int)


def test_eval_order_matches_read_labels(split):
    ds, summary = loader.make_dataset(split, batch_size=4, training=False)
    assert summary.n_pairs == len(DEFINED) and summary.n_skipped == len(UNDEFINED)
    ids, y1 = _epoch(ds)
    np.testing.assert_array_equal(ids, DEFINED)  # undefined pairs skipped, stored order
    labels = split_summary.read_labels(split)
    np.testing.assert_array_equal(y1, labels["label_t1"])
    ids2, _ = _epoch(ds)
    np.testing.assert_array_equal(ids2, ids)  # fixed from epoch to epoch


def test_training_shuffles_per_epoch_deterministically(split):
    ds, _ = loader.make_dataset(split, batch_size=4, training=True, seed=3)
    e0, e1 = _epoch(ds)[0], _epoch(ds)[0]
    assert sorted(e0) == DEFINED and sorted(e1) == DEFINED  # every pair exactly once
    assert not np.array_equal(e0, e1)
    ds_again, _ = loader.make_dataset(split, batch_size=4, training=True, seed=3)
    np.testing.assert_array_equal(_epoch(ds_again)[0], e0)
    ds_again.set_epoch(0)  # resume: the next pass is epoch 0 again
    np.testing.assert_array_equal(_epoch(ds_again)[0], e0)
    np.testing.assert_array_equal(_epoch(ds_again)[0], e1)
    other, _ = loader.make_dataset(split, batch_size=4, training=True, seed=4)
    assert not np.array_equal(_epoch(other)[0], e0)


def test_shuffle_mixes_across_and_within_shards(split):
    summary = split_summary.inspect_split(split)
    orders = [_raw_ids(summary, True, 0, epoch) for epoch in range(6)]
    first_shard = {int(np.searchsorted(np.cumsum(SIZES), o[0], "right")) for o in orders}
    assert len(first_shard) > 1  # shard order changes
    assert any(not np.all(np.diff(o[:4]) > 0) for o in orders)  # order within a shard changes


def test_batch_plan_covers_everything():
    plan = loader.batch_plan([3, 0, 5, 4], batch_size=5, training=True, seed=1, epoch=2)
    seen = [(f, i) for batch in plan for f, a, b in batch for i in range(a, b)]
    assert sorted(seen) == [(f, i) for f, n in enumerate([3, 0, 5, 4]) for i in range(n)]
    assert [sum(b - a for _, a, b in batch) for batch in plan] == [5, 5, 2]
    assert len(loader.batch_plan([3, 0, 5, 4], 5, True, drop_remainder=True)) == 2


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
def test_scaling_and_label_shift(tmp_path, dtype):
    split = make_split(tmp_path / "s", sizes=(5,), dtype=dtype)
    ds, summary = loader.make_dataset(split, batch_size=5, training=False)
    (x1, x2), (y1, y2) = next(iter(ds))
    with np.load(split / "shard_000.npz") as z:
        raw1, raw2, l1, l2 = z["image_t1"], z["image_t2"], z["label_t1"], z["label_t2"]
    assert x1.dtype == np.float32 and summary.dtype == dtype
    np.testing.assert_allclose(x1, shards.scale_images(raw1), atol=1e-6)
    np.testing.assert_allclose(x2, shards.scale_images(raw2), atol=1e-6)
    assert -0.5 <= float(np.min(x1)) and float(np.max(x1)) <= 0.5
    assert np.asarray(y1).dtype == np.int32
    np.testing.assert_array_equal(y1, l1 - 1)
    np.testing.assert_array_equal(y2, l2 - 1)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
@pytest.mark.parametrize("backend", ["tf", "pydataset"])
def test_raw_integers_left_for_the_model(tmp_path, dtype, backend):
    """raw_integers: integer batches leave as stored (the model scales them), floats scaled."""
    split = make_split(tmp_path / "s", sizes=(5,), dtype=dtype)
    if backend == "tf":
        ds, summary = loader.make_dataset(split, batch_size=5, training=False, raw_integers=True)
        (x1, x2), _ = next(iter(ds))
        x1, x2 = np.asarray(x1), np.asarray(x2)
    else:
        summary = split_summary.inspect_split(split)
        (x1, x2), _ = loader.ShardPyDataset(summary, 5, training=False, raw_integers=True)[0]
    with np.load(split / "shard_000.npz") as z:
        raw1, raw2 = z["image_t1"], z["image_t2"]
    if dtype == np.float32:
        assert x1.dtype == np.float32
        np.testing.assert_array_equal(x1, shards.scale_images(raw1))
    else:
        assert x1.dtype == dtype and x2.dtype == dtype
        np.testing.assert_array_equal(x1, raw1)
        np.testing.assert_array_equal(x2, raw2)


def test_raw_integers_still_scaled_when_resized(split):
    ds, _ = loader.make_dataset(split, batch_size=4, training=False, image_size=(6, 8),
                                raw_integers=True)
    (x1, _), _ = next(iter(ds))
    assert x1.dtype == np.float32 and x1.shape == (4, 6, 8, 3)
    assert -0.5 <= float(np.min(x1)) and float(np.max(x1)) <= 0.5
    same, _ = loader.make_dataset(split, batch_size=4, training=False, image_size=(4, 4),
                                  raw_integers=True)  # the stored size: nothing to resize
    assert next(iter(same))[0][0].dtype == np.uint8


def test_resize_and_drop_remainder(split):
    ds, summary = loader.make_dataset(split, batch_size=4, training=True, image_size=(6, 8),
                                      drop_remainder=True)
    assert loader.steps_per_epoch(summary, 4, drop_remainder=True) == len(DEFINED) // 4
    batches = list(ds)
    assert len(batches) == len(DEFINED) // 4
    assert all(b[0][0].shape == (4, 6, 8, 3) for b in batches)
    assert ds.element_spec[0][0].shape.as_list() == [4, 6, 8, 3]
    assert int(ds.cardinality()) == len(DEFINED) // 4


def test_tf_pipeline_known_length_without_autotuning(split):
    """Known length (progress bars) with tf.data autotuning off: Keras drops a used iterator at
    the end of each known-length pass, and with autotuning on that teardown blocks ~0.5 s
    (benchmarks/RESULTS.md 1c). Each pass starts the generator once, at the next epoch."""
    ds, summary = loader.make_dataset(split, batch_size=4, training=True, seed=3)
    assert int(ds.cardinality()) == loader.steps_per_epoch(summary, 4)
    assert ds.options().autotune.enabled is False
    assert len(list(ds)) == int(ds.cardinality())
    it = iter(ds)  # an iterator opened and dropped unread (as Keras does) takes no epoch
    del it
    np.testing.assert_array_equal(_epoch(ds)[0], _raw_ids(summary, True, 3, 1))


def test_pydataset_matches_tf_pipeline(split):
    summary = split_summary.inspect_split(split)
    pyds = loader.ShardPyDataset(summary, 4, training=False)
    assert len(pyds) == loader.steps_per_epoch(summary, 4)
    ids = np.concatenate([_ids(pyds[i][0][0]) for i in range(len(pyds))])
    np.testing.assert_array_equal(ids, DEFINED)
    train = loader.ShardPyDataset(summary, 4, training=True, seed=3, image_size=(2, 2))
    (x1, _), _ = train[0]
    assert x1.shape == (4, 2, 2, 3) and x1.dtype == np.float32
    e0 = np.concatenate([train[i][1][0] for i in range(len(train))])
    train.on_epoch_end()
    e1 = np.concatenate([train[i][1][0] for i in range(len(train))])
    assert sorted(e0) == sorted(e1)
    train.set_epoch(0)
    np.testing.assert_array_equal(np.concatenate([train[i][1][0] for i in range(len(train))]), e0)
    tf_ds, _ = loader.make_dataset(split, 4, training=True, seed=3)
    np.testing.assert_array_equal(_epoch(tf_ds)[1], e0)  # same shuffle as the tf.data pipeline


@pytest.mark.parametrize("compressed", [False, True])
@pytest.mark.parametrize("bad,expected", [(2.0, r"values in \[.*, 2\] in pair 3"),
                                          (np.nan, "NaN or inf in pair 3"),
                                          (-0.5, r"values in \[-0.5, .*\] in pair 3")])
def test_float_values_checked_when_read(tmp_path, bad, expected, compressed):
    split = make_split(tmp_path / "s", sizes=(4, 6), dtype=np.float32)
    with np.load(split / "shard_001.npz") as z:
        arrays = dict(z)
    arrays["image_t2"][3, 0, 0, 0] = bad
    (np.savez_compressed if compressed else np.savez)(split / "shard_001.npz", **arrays)
    ds, _ = loader.make_dataset(split, 4, training=False)  # header checks only
    if compressed:  # decoded whole: the whole-array check names the pair as well
        expected = expected.replace("in pair 3", "(in|near) pair [03]")
    with pytest.raises(Exception, match=r"shard_001\.npz: image_t2: " + expected):
        list(ds)
    summary = split_summary.inspect_split(split, check_values=False)
    batches = loader.iter_batches(summary, 4, training=False)
    assert next(batches)[0].shape[0] == 4  # the good batch of shard_000 comes out first
    with pytest.raises(shards.ShardError, match=r"shard_001\.npz: image_t2: " + expected):
        list(batches)


def _compress_split(split_dir):
    """Rewrite every shard of a split with np.savez_compressed (members deflated)."""
    for path in shards.list_shards(split_dir):
        with np.load(path) as z:
            arrays = dict(z)
        np.savez_compressed(path, **arrays)
    return split_dir


def _batches(summary, load_fn=None, training=True, epoch=0, batch_size=4):
    return list(loader.iter_batches(summary, batch_size, training, seed=5, epoch=epoch,
                                    load_fn=load_fn))


def _assert_same_batches(got, expected):
    assert len(got) == len(expected)
    for g, e in zip(got, expected, strict=True):
        for a, b in zip(g, e, strict=True):
            assert a.dtype == b.dtype and a.shape == b.shape
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
def test_per_batch_reads_equal_whole_shard_reads(tmp_path, dtype):
    """Stored shards are read per batch (no images in the opened shard) and give exactly the
    batches of the whole-shard reader: same pairs, same order, undefined pairs skipped."""
    split = make_split(tmp_path / "s", sizes=SIZES, undefined=UNDEFINED, dtype=dtype, size=5)
    summary = split_summary.inspect_split(split)
    opened = loader.load_shard(summary.files[0], summary)
    assert "layouts" in opened and "image_t1" not in opened
    whole = functools.partial(loader.load_shard, per_batch=False)
    assert "image_t1" in whole(summary.files[0], summary)
    for training, epoch, batch_size in ((False, 0, 4), (True, 0, 4), (True, 1, 5), (True, 2, 1)):
        _assert_same_batches(_batches(summary, None, training, epoch, batch_size),
                             _batches(summary, whole, training, epoch, batch_size))
    x1 = np.concatenate([b[0] for b in _batches(summary, training=False)])
    with np.load(split / "shard_001.npz") as z:  # spot check against the file: ids 7, 8 (9 undefined)
        np.testing.assert_array_equal(x1[DEFINED.index(7):DEFINED.index(9 - 1) + 1],
                                      z["image_t1"][:2])


def test_per_batch_read_scatters_into_batch_order(tmp_path):
    path = make_split(tmp_path / "s", sizes=(20,), size=3)
    layout = shard_rows.stored_layout(path / "shard_000.npz", "image_t2")
    with np.load(path / "shard_000.npz") as z:
        ref = z["image_t2"]
    for idx in ([7, 3, 4, 5, 19, 0, 1, 6], [2], [], list(range(20))[::-1]):
        got = shard_rows.read_rows(path / "shard_000.npz", layout, np.array(idx, dtype=np.int64))
        np.testing.assert_array_equal(got, ref[idx])


def test_compressed_shards_decoded_whole_and_warned_once_per_dataset(tmp_path, caplog):
    split = make_split(tmp_path / "s", sizes=SIZES, undefined=UNDEFINED)
    summary = split_summary.inspect_split(split)
    stored = _batches(summary)
    _compress_split(split)
    summary = split_summary.inspect_split(split)
    opened = loader.load_shard(summary.files[0], summary)
    assert "layouts" not in opened and "image_t1" in opened
    _assert_same_batches(_batches(summary), stored)
    with caplog.at_level("WARNING", logger="data.loader"):
        ds, _ = loader.make_dataset(split, batch_size=4, training=False)
        assert len(_epoch(ds)[0]) == len(DEFINED)
        _epoch(ds)
    msgs = [r.getMessage() for r in caplog.records if "decoded whole" in r.getMessage()]
    assert len(msgs) == 1  # once per dataset, not per shard or epoch


def test_holds_at_most_one_shard(tmp_path):
    """Instrumented loader on compressed shards (decoded whole): when a shard is read, no
    earlier shard's images are still alive."""
    split = _compress_split(make_split(tmp_path / "trn", sizes=SIZES, undefined=UNDEFINED))
    summary = split_summary.inspect_split(split)
    alive, peak = [], []

    def load(path, summary, num_classes):
        gc.collect()
        peak.append(sum(r() is not None for r in alive))
        data = loader.load_shard(path, summary, num_classes)
        alive.append(weakref.ref(data["image_t1"]))
        return data

    for epoch in range(2):
        batches = loader.iter_batches(summary, 4, True, seed=0, epoch=epoch, load_fn=load)
        for _ in batches:
            pass
    assert len(alive) == 2 * len(SIZES)  # each shard read once per epoch
    assert max(peak) == 0


def _epoch_peak(summary, batch_size):
    tracemalloc.start()
    try:
        for _ in loader.iter_batches(summary, batch_size, True, seed=0):
            pass
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak


def test_peak_memory_stored_shards_is_about_one_batch(tmp_path):
    """tracemalloc: an epoch over 6 stored shards allocates about one batch, no shard at all."""
    split = make_split(tmp_path / "big", sizes=(400,) * 6, size=32)
    summary = split_summary.inspect_split(split)
    shard_bytes = 2 * 400 * 32 * 32 * 3  # 2.4 MB of images per shard
    batch_bytes = 2 * 16 * 32 * 32 * 3  # 98 KB per batch
    peak = _epoch_peak(summary, 16)
    assert peak < 4 * batch_bytes + 64 * 1024 < shard_bytes / 5, (peak, batch_bytes, shard_bytes)


def test_peak_memory_compressed_shards_bounded_by_one_shard(tmp_path):
    """tracemalloc: compressed shards are decoded whole, but never more than one at a time.

    (Besides the shard, np.load needs a fixed ~256 KiB read buffer per array, so shards are made
    large enough here for that constant not to matter.)
    """
    split = _compress_split(make_split(tmp_path / "big", sizes=(400,) * 6, size=32))
    summary = split_summary.inspect_split(split)
    shard_bytes = 2 * 400 * 32 * 32 * 3
    peak = _epoch_peak(summary, 16)
    assert shard_bytes < peak < 2 * shard_bytes, (peak, shard_bytes)


def test_georeferenced_shards_load(tmp_path):
    """Shards with the optional crs/transform/tile_size keys (make_shards raster) are read."""
    from data.loader import make_dataset
    from tests.data._helpers import shard_arrays, write_npz

    for i in range(2):
        write_npz(tmp_path / "split" / f"s{i}.npz", **shard_arrays(seed=i),
                  crs=np.asarray('PROJCS["WGS 84 / UTM zone 50N"]'),
                  transform=np.array([80.0, 0, 5e5, 0, -80.0, 3.4e6]),
                  tile_size=np.asarray(4, np.int64))
    ds, summary = make_dataset(tmp_path / "split", 4, training=True)
    assert summary.geo["tile_size"] == 4
    assert sum(len(y1) for _, (y1, _) in ds) == 12


def test_undefined_pairs_are_reported_once(split, caplog):
    """inspect, loader and labels each read the split: the count reaches the log once (the split
    summary, ``SplitSummary.format``), not once per reader."""
    with caplog.at_level("INFO"):
        summary = split_summary.inspect_split(split)
        loader.make_dataset(split, 4, training=False)
        split_summary.read_labels(split)
        text = summary.format()
    said = [r.getMessage() for r in caplog.records
            if r.levelname == "INFO" and "undefined" in r.getMessage()]
    assert said == [] and f"{len(UNDEFINED)} undefined pairs skipped" in text
