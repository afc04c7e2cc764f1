"""data.stats: the band statistics of a split (input normalisation) against a float64 NumPy
reference at the real regime (200 x 200 tiles, several shards), nodata, errors, memory; the
per-shard maxima of --input_norm shard_max and the loader's scalings."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from data import shards, split_summary, stats
from data.shards import write_shard

SIZE = 200  # the Wuhan tiles


def _images(rng, n, dtype, lo, hi, channels=3):
    """(n, 200, 200, C) images filling lo..hi of their dtype, bands of different mean and spread."""
    base = rng.uniform(0.2, 0.8, (n, 1, 1, channels))
    x = base + rng.normal(0, 0.15, (n, SIZE, SIZE, channels)) * np.linspace(0.5, 1.5, channels)
    x = np.clip(x, 0, 1) * (hi - lo) + lo
    return (x.astype(np.float32) if np.dtype(dtype).kind == "f"
            else np.rint(x).astype(dtype))


def _write_split(split_dir, dtype, lo, hi, sizes=(5, 4, 6), nodata=True, seed=0, undefined=True):
    """Shards of 200 x 200 pairs; returns the reference arrays (data pixels per date)."""
    rng = np.random.default_rng(seed)
    split_dir.mkdir(parents=True)
    ref = {0: [], 1: [], "nodata": [0, 0]}
    for i, n in enumerate(sizes):
        x = [_images(rng, n, dtype, lo, hi), _images(rng, n, dtype, lo, hi)]
        if nodata:  # zero-filled edges of georeferenced tiles: all bands 0
            x[0][0, :, SIZE - 30:] = 0
            x[1][-1, SIZE - 17:, :] = 0
        y1 = rng.integers(1, 4, n).astype(np.int32)
        y2 = y1.copy()
        if undefined:
            y1[1] = 0  # an undefined pair: skipped by training, left out of the statistics
        write_shard(split_dir / f"s{i}.npz", x[0], x[1], y1, y2)
        keep = (y1 > 0) & (y2 > 0)
        for d in range(2):
            flat = x[d][keep].reshape(-1, 3).astype(np.float64)
            valid = np.any(flat != 0, axis=1)
            ref[d].append(flat[valid])
            ref["nodata"][d] += int((~valid).sum())
    return {0: np.concatenate(ref[0]), 1: np.concatenate(ref[1]), "nodata": ref["nodata"]}


@pytest.mark.parametrize("dtype, lo, hi", [
    (np.uint8, 6, 116),        # a dark uint8 scene (SPOT-5 like)
    (np.uint16, 0, 10000),     # Sentinel-2 L2A reflectances
    (np.uint16, 0, 4095),      # 12-bit data in uint16
    (np.float32, 0.0, 1.0),    # float images in [0, 1]
])
def test_band_statistics_match_a_float64_reference(tmp_path, dtype, lo, hi):
    ref = _write_split(tmp_path / "trn", dtype, lo, hi)
    got = stats.band_statistics(tmp_path / "trn")
    for d in range(2):
        np.testing.assert_allclose(got.mean[d], ref[d].mean(0), rtol=1e-12)
        np.testing.assert_allclose(got.std[d], ref[d].std(0), rtol=1e-10)
        assert got.count[d] == len(ref[d])
    both = np.concatenate([ref[0], ref[1]])
    np.testing.assert_allclose(got.pooled_mean, both.mean(0), rtol=1e-12)
    np.testing.assert_allclose(got.pooled_std, both.std(0), rtol=1e-10)
    assert got.nodata.tolist() == ref["nodata"]  # the zero-filled pixels left out
    assert ref["nodata"][0] >= 3 * SIZE * 30 and ref["nodata"][1] >= 3 * SIZE * 17
    mean, var = got.for_mode("bands")
    np.testing.assert_allclose(var, both.var(0), rtol=1e-10)
    mean, var = got.for_mode("bands_per_date")
    assert mean.shape == var.shape == (2, 3)
    assert len(got.lines("bands")) == 3 and "band 3: mean" in got.lines("bands")[2]


def test_the_pass_does_not_depend_on_the_chunking(tmp_path, monkeypatch):
    _write_split(tmp_path / "trn", np.uint16, 0, 10000, sizes=(3, 5))
    a = stats.band_statistics(tmp_path / "trn")
    monkeypatch.setattr(stats, "CHUNK_PAIRS", 3)
    b = stats.band_statistics(tmp_path / "trn")
    np.testing.assert_allclose(a.pooled_std, b.pooled_std, rtol=1e-13)
    np.testing.assert_allclose(a.mean, b.mean, rtol=1e-13)


def test_memory_is_flat_in_the_number_of_shards(tmp_path, monkeypatch):
    """The pass holds one chunk: its peak does not grow with the number of (uncompressed) shards
    and stays below one shard's date in float64."""
    monkeypatch.setattr(stats, "CHUNK_PAIRS", 2)
    peaks = {}
    for n_shards in (2, 6):
        split = tmp_path / f"s{n_shards}"
        _write_split(split, np.uint16, 0, 10000, sizes=(8,) * n_shards, nodata=False)
        summary = split_summary.inspect_split(split, check_values=False)
        tracemalloc.start()
        stats.band_statistics(split, summary=summary)
        peaks[n_shards] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert peaks[6] < 1.1 * peaks[2], peaks
    assert peaks[2] < 8 * SIZE * SIZE * 3 * 8, peaks  # a chunk of 2 pairs, not a shard of 8


def test_a_constant_band_is_a_one_line_error_naming_split_date_and_band(tmp_path):
    rng = np.random.default_rng(0)
    split = tmp_path / "trn"
    split.mkdir()
    x1 = _images(rng, 3, np.uint8, 6, 116)
    x2 = _images(rng, 3, np.uint8, 6, 116)
    x2[..., 1] = 77  # band 2 of date 2 constant
    write_shard(split / "a.npz", x1, x2, np.ones(3, np.int32), np.ones(3, np.int32))
    with pytest.raises(stats.StatsError) as e:
        stats.band_statistics(split, "trn")
    msg = str(e.value)
    assert "\n" not in msg and f"{split}: trn split, image_t2 band 2: constant" in msg
    assert "standard deviation 0" in msg


def test_a_split_without_data_pixels_is_an_error(tmp_path):
    split = tmp_path / "trn"
    split.mkdir()
    x = np.zeros((2, 8, 8, 3), np.uint16)
    write_shard(split / "a.npz", x, x + 5, np.ones(2, np.int32), np.ones(2, np.int32))
    with pytest.raises(stats.StatsError, match=r"trn split, image_t1: no data pixels"):
        stats.band_statistics(split, "trn")


def test_cli_prints_the_statistics_and_refuses_a_constant_band(tmp_path, capsys, caplog):
    _write_split(tmp_path / "ok", np.uint8, 6, 116, sizes=(2,), nodata=False)
    caplog.set_level("INFO")
    assert stats.main([str(tmp_path / "ok")]) == 0
    assert any("bands: band 1: mean" in r.message for r in caplog.records)
    bad = tmp_path / "bad"
    bad.mkdir()
    x = np.full((2, 8, 8, 3), 9, np.uint8)
    write_shard(bad / "a.npz", x, x, np.ones(2, np.int32), np.ones(2, np.int32))
    assert stats.main([str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "band 1: constant" in err[0]


# ----------------------------------------------------------------------------- shard_max
def test_shard_maxima_and_the_loaders_shard_max_batches_are_the_originals(tmp_path):
    """The original's LoadNpy: ``image_t.astype(float32) / np.max(image_t) - 0.5`` per shard and
    date; the loader gives those numbers bit for bit for every pair, batches across shards."""
    from data.loader import iter_batches, shard_divisors

    split = tmp_path / "trn"
    split.mkdir()
    rng = np.random.default_rng(3)
    arrays = []
    for i, top in enumerate((200, 4000, 900)):
        x1 = rng.integers(0, top, (4, 16, 16, 3)).astype(np.uint16)
        x2 = rng.integers(0, top // 2, (4, 16, 16, 3)).astype(np.uint16)
        y = np.arange(1, 5, dtype=np.int32)
        y[2] = 0 if i == 1 else y[2]  # an undefined pair still counts for the max (as the original)
        write_shard(split / f"s{i}.npz", x1, x2, y, np.ones(4, np.int32) * 2)
        arrays.append((x1, x2, y))
    summary = split_summary.inspect_split(split)
    maxima = shard_divisors(summary)
    np.testing.assert_array_equal(maxima, [[x1.max(), x2.max()] for x1, x2, _ in arrays])
    want1 = np.concatenate([(x1.astype(np.float32) / np.max(x1) - 0.5)[y > 0]
                            for x1, _, y in arrays])
    want2 = np.concatenate([(x2.astype(np.float32) / np.max(x2) - 0.5)[y > 0]
                            for _, x2, y in arrays])
    got = list(iter_batches(summary, 5, training=False, divisors=maxima))
    got1 = np.concatenate([b[0] for b in got])
    got2 = np.concatenate([b[1] for b in got])
    assert got1.dtype == np.float32
    np.testing.assert_array_equal(got1, want1)
    np.testing.assert_array_equal(got2, want2)


def test_shard_max_refuses_an_all_zero_shard(tmp_path):
    from data.loader import shard_divisors

    split = tmp_path / "trn"
    split.mkdir()
    x = np.zeros((2, 8, 8, 3), np.uint8)
    write_shard(split / "a.npz", x + 3, x, np.ones(2, np.int32), np.ones(2, np.int32))
    with pytest.raises(shards.ShardError, match=r"a\.npz: image_t2: every value is 0"):
        shard_divisors(split_summary.inspect_split(split))


@pytest.mark.parametrize("dtype", [np.uint16, np.float32])
def test_raw_scaling_hands_over_stored_values(tmp_path, dtype):
    """scaling="raw" (--input_norm bands*): values as stored; resized batches float32, unscaled."""
    from data.loader import make_dataset

    _write_split(tmp_path / "trn", dtype, 0, 4095 if dtype == np.uint16 else 1.0, sizes=(3,),
                 nodata=False, undefined=False)
    stored = np.load(tmp_path / "trn" / "s0.npz")["image_t1"]
    ds, _ = make_dataset(tmp_path / "trn", 3, training=False, raw_integers=True, scaling="raw")
    (x1, _), _ = next(iter(ds))
    x1 = np.asarray(x1)
    assert x1.dtype == stored.dtype
    np.testing.assert_array_equal(x1, stored)
    ds, _ = make_dataset(tmp_path / "trn", 3, training=False, raw_integers=True, scaling="raw",
                         image_size=(100, 100))
    (x1, _), _ = next(iter(ds))
    x1 = np.asarray(x1)
    assert x1.dtype == np.float32 and x1.shape == (3, 100, 100, 3)
    assert abs(x1.mean() - stored.astype(np.float64).mean()) < 1e-3 * max(1, stored.max())
