"""Statistics of a split for the input normalisation (docs/DESIGN.md §2, ``--input_norm``).

* :func:`band_statistics`: per-band mean and standard deviation of each date over a split's
  usable pairs (labels defined on both dates), in one streaming pass: each shard is opened as the
  loader opens it (uncompressed image arrays are read ``CHUNK_PAIRS`` pairs at a time with
  positioned reads; a compressed shard is decoded whole, one at a time), and each chunk's count,
  mean and sum of squared deviations (float64, two passes over the chunk) are merged into the
  running ones with Chan et al.'s parallel formula. Memory: one chunk (and at most one
  compressed shard), whatever the number of shards; the result does not depend on the chunking
  beyond float64 rounding.
* **Nodata**: a pixel of one date whose bands are all 0 is left out of that date's statistics.
  That is the rule ``data.rasters`` applies to GeoTIFFs (where a masked pixel is also written as
  0 in every band by ``make_shards raster --align``), and what zero-filled edges of georeferenced
  tiles hold. (A real all-black pixel is left out too; in imagery it is rare.) Mirrored edge
  padding repeats real pixels and counts as data.
* The pooled statistics (``bands``) merge the two dates' (count, mean, M2) the same way.
* :func:`shard_maxima`: the largest value of each date's image array in each shard (all its
  pairs, pixels and bands), one streaming pass: the divisors of ``--input_norm shard_max``.

A band with standard deviation 0 (constant) or a split without any data pixel cannot be
standardised: :class:`StatsError` (a ``ShardError``: one ``error:`` line, exit status 2) names
the split, the date and the band.

Command line (prints the statistics of a split, nothing written)::

    python -m data.stats SPLIT_DIR
"""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import dataclass

import numpy as np

from data import shard_rows, shards, split_summary
from utils.cli import configure_logging

log = logging.getLogger(__name__)

CHUNK_PAIRS = 16  # pairs per step of the pass: 16 x 200 x 200 x 4 bands x 8 bytes = 20 MiB float64
DATES = ("t1", "t2")


class StatsError(shards.ShardError):
    """The statistics of a split cannot be used to standardise it (constant band, no data)."""


@dataclass(frozen=True)
class BandStatistics:
    """Per-band statistics of one split: ``mean``/``std`` (2, C) float64 per date (t1, t2),
    ``count`` (2,) data pixels per date; ``pooled_mean``/``pooled_std`` (C,) over both dates;
    ``nodata`` (2,) pixels left out per date."""

    mean: np.ndarray
    std: np.ndarray
    count: np.ndarray
    pooled_mean: np.ndarray
    pooled_std: np.ndarray
    nodata: np.ndarray

    def for_mode(self, mode) -> tuple[np.ndarray, np.ndarray]:
        """``(mean, variance)`` for ``InputNormalization.set_statistics``: (C,) pooled for
        ``bands``, (2, C) for ``bands_per_date``."""
        if mode == "bands":
            return self.pooled_mean, self.pooled_std ** 2
        if mode == "bands_per_date":
            return self.mean, self.std ** 2
        raise ValueError(f"input_norm {mode!r} has no band statistics")

    def lines(self, mode="bands") -> list[str]:
        """One line per band (what training logs)."""
        out = []
        for c in range(self.mean.shape[1]):
            if mode == "bands":
                out.append(f"band {c + 1}: mean {self.pooled_mean[c]:.6g}, std {self.pooled_std[c]:.6g}")
            else:
                out.append(f"band {c + 1}: " + ", ".join(
                    f"{t} mean {self.mean[i, c]:.6g} std {self.std[i, c]:.6g}"
                    for i, t in enumerate(DATES)))
        return out

    def to_dict(self, mode="bands") -> dict:
        """JSON-ready: the statistics the mode uses (``mean``/``std``) and the per-date ones."""
        mean, variance = self.for_mode(mode)
        return {"input_norm": mode, "mean": np.asarray(mean).tolist(),
                "std": np.sqrt(variance).tolist(),
                "per_date": {t: {"mean": self.mean[i].tolist(), "std": self.std[i].tolist(),
                                 "pixels": int(self.count[i]), "nodata_pixels": int(self.nodata[i])}
                             for i, t in enumerate(DATES)}}


class _Moments:
    """Running (count, mean, M2) per band, merged chunk by chunk (Chan et al.)."""

    def __init__(self, channels):
        self.n = np.zeros(channels, np.float64)
        self.mean = np.zeros(channels, np.float64)
        self.m2 = np.zeros(channels, np.float64)

    def add_moments(self, n, mean, m2):
        total = self.n + n
        safe = np.where(total > 0, total, 1)
        delta = mean - self.mean
        self.mean = self.mean + delta * (n / safe)
        self.m2 = self.m2 + m2 + delta ** 2 * (self.n * n / safe)
        self.n = total

    def add(self, pixels):
        """``pixels`` (P, C) float64 of data pixels."""
        if len(pixels) == 0:
            return
        mean = pixels.mean(axis=0)
        self.add_moments(float(len(pixels)), mean, ((pixels - mean) ** 2).sum(axis=0))


def _open(path, summary) -> dict:
    """One shard as ``data.loader.load_shard`` opens it, without Keras (this pass runs before
    TensorFlow starts): labels checked, ``defined`` indices, and per image key either its byte
    layout (uncompressed: read per chunk) or its whole array (compressed: decoded, one shard)."""
    _, arrays = shards.check_shard(path, summary.num_classes)
    data = {"path": path, "n": len(arrays["label_t1"]),
            "defined": np.flatnonzero(shards.defined_mask(arrays["label_t1"], arrays["label_t2"]))}
    layouts = ({key: shard_rows.stored_layout(path, key) for key in shards.IMAGE_KEYS}
               if shard_rows.per_batch_reads_supported() else {})
    for key in shards.IMAGE_KEYS:
        if layouts.get(key) is None:
            images = shards.load_arrays(path, [key])[key]
            shards.check_image_values(path, key, images)
            data[key] = images
        else:
            data[key + "_layout"] = layouts[key]
    return data


def _chunks(data, key, idx):
    """Images ``idx`` of one shard opened by :func:`_open`, ``CHUNK_PAIRS`` at a time."""
    for start in range(0, len(idx), CHUNK_PAIRS):
        part = idx[start:start + CHUNK_PAIRS]
        if key in data:
            yield data[key][part]
        else:
            yield shard_rows.read_rows(data["path"], data[key + "_layout"], part)


def band_statistics(split_dir, split="trn", summary=None) -> BandStatistics:
    """Per-band mean/std of each date and pooled, over the split's usable pairs, nodata excluded.

    Raises:
        StatsError: no data pixel at a date, or a band with standard deviation 0 (names the split,
            the directory, the date and the band).
        data.shards.ShardError: the split breaks the §4 format.
    """
    summary = summary or split_summary.inspect_split(split_dir, check_values=False)
    channels = summary.image_shape[-1]
    moments = [_Moments(channels), _Moments(channels)]
    nodata = np.zeros(2, np.int64)
    for path in summary.files:
        data = _open(path, summary)
        idx = data["defined"]
        for d, key in enumerate(shards.IMAGE_KEYS):
            for x in _chunks(data, key, idx):
                flat = x.reshape(-1, channels)
                valid = np.any(flat != 0, axis=1)
                nodata[d] += int(np.count_nonzero(~valid))
                moments[d].add(flat[valid].astype(np.float64))
        del data
    pooled = _Moments(channels)
    for m in moments:
        pooled.add_moments(m.n, m.mean, m.m2)
    for d, m in enumerate(moments):
        if m.n[0] == 0:
            raise StatsError(f"{split_dir}: {split} split, image_{DATES[d]}: no data pixels (every "
                             "pixel is 0 in all bands, i.e. nodata); expected imagery to compute "
                             "the input normalisation's statistics from")
    mean = np.stack([m.mean for m in moments])
    std = np.sqrt(np.stack([m.m2 / m.n for m in moments]))
    pooled_std = np.sqrt(pooled.m2 / pooled.n)
    for d in range(2):
        for c in range(channels):
            if not std[d, c] > 0:
                raise StatsError(
                    f"{split_dir}: {split} split, image_{DATES[d]} band {c + 1}: constant "
                    f"(every data pixel is {mean[d, c]:g}, standard deviation 0); expected a band "
                    "that varies (use --input_norm dtype to scale it by the dtype's maximum, or "
                    "drop the band)")
    return BandStatistics(mean, std, np.stack([m.n[0] for m in moments]).astype(np.int64),
                          pooled.mean, pooled_std, nodata)


def shard_maxima(summary) -> np.ndarray:
    """(n_files, 2) float64: the largest value of ``image_t1`` and ``image_t2`` of each shard of a
    :class:`data.split_summary.SplitSummary` (every pair, undefined ones included, as the original's
    ``np.max(image_t1)``), read in chunks. A shard whose array is all 0 gets 0 (the loader
    refuses to divide by it, naming the shard)."""
    out = np.zeros((len(summary.files), 2), np.float64)
    for f, path in enumerate(summary.files):
        data = _open(path, summary)
        idx = np.arange(data["n"])
        for d, key in enumerate(shards.IMAGE_KEYS):
            for x in _chunks(data, key, idx):
                out[f, d] = max(out[f, d], float(x.max()) if x.size else 0.0)
        del data
    return out


# ----------------------------------------------------------------------------- command line
def main(argv=None) -> int:

    configure_logging()
    p = argparse.ArgumentParser(prog="python -m data.stats", description=__doc__.split("\n")[0])
    p.add_argument("split_dir", help="a split directory of .npz shards (e.g. data/trn)")
    args = p.parse_args(argv)
    try:
        stats = band_statistics(args.split_dir, split=str(args.split_dir))
    except shards.ShardError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for mode in ("bands", "bands_per_date"):
        for line in stats.lines(mode):
            log.info("%s: %s", mode, line)
    log.info("data pixels t1 %d, t2 %d; nodata pixels left out t1 %d, t2 %d", *stats.count,
             *stats.nodata)
    return 0


if __name__ == "__main__":
    sys.exit(main())
