"""A split directory of npz shards (docs/DESIGN.md §4) checked and summarised: :func:`inspect_split`
(every shard's headers and labels, the values of float and compressed images, the shards agreeing
with each other) into a :class:`SplitSummary`, the checks across splits (class names and counts,
labels required for a use) and :func:`read_labels`. NumPy only."""

from __future__ import annotations

import dataclasses
import logging
import pathlib

import numpy as np

from data import shards
from data.shards import (
    GRID_KEYS,
    IMAGE_KEYS,
    LABEL_KEYS,
    MAX_CLASSES,
    ShardError,
    check_consistent,
    check_shard,
    defined_mask,
    list_shards,
    shard_error,
)

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- summary


@dataclasses.dataclass
class SplitSummary:
    """Summary of a validated split directory (see :func:`inspect_split`)."""

    split_dir: pathlib.Path
    files: list
    n_pairs: int
    n_skipped: int
    image_shape: tuple
    dtype: np.dtype
    num_classes: int
    class_names: list | None
    hist_t1: np.ndarray
    hist_t2: np.ndarray
    n_changed: int
    has_rowcol: bool
    pairs_per_file: list  # usable pairs per file (undefined ones skipped)
    geo: dict | None = None  # crs (WKT), transform (6 floats), tile_size; None: not georeferenced
    labelled: bool = True  # False: label 0 everywhere (make_shards raster without labels)

    def to_dict(self) -> dict:
        """JSON-able form."""
        return {
            "split_dir": str(self.split_dir), "files": [str(f) for f in self.files],
            "n_pairs": self.n_pairs, "n_skipped": self.n_skipped,
            "image_shape": list(self.image_shape), "dtype": str(self.dtype),
            "num_classes": self.num_classes, "class_names": self.class_names,
            "hist_t1": self.hist_t1.tolist(), "hist_t2": self.hist_t2.tolist(),
            "n_changed": self.n_changed, "has_rowcol": self.has_rowcol,
            "pairs_per_file": list(self.pairs_per_file),
            "georeferencing": None if self.geo is None else {
                "crs": self.geo["crs"], "crs_name": crs_name(self.geo["crs"]),
                "transform": None if self.geo["transform"] is None else list(self.geo["transform"]),
                "tile_size": self.geo["tile_size"]},
        }

    def format(self) -> str:
        """Human-readable multi-line summary."""
        h, w, c = self.image_shape
        lines = [
            f"{self.split_dir}: {len(self.files)} shard(s), {self.n_pairs} pairs "
            f"({self.n_skipped} undefined pairs skipped)",
            f"  images: {h}x{w}x{c} {self.dtype}; row/col: {'yes' if self.has_rowcol else 'no'}",
            f"  georeferenced: {self.format_geo()}",
            f"  changed pairs: {self.n_changed} "
            f"({100.0 * self.n_changed / max(1, self.n_pairs):.1f} %)",
            f"  {'id':>3}  {'class':<24} {'t1':>8} {'t2':>8}",
        ]
        names = self.class_names or [f"class {k + 1}" for k in range(self.num_classes)]
        for k in range(self.num_classes):
            lines.append(f"  {k + 1:>3}  {names[k]:<24} {self.hist_t1[k]:>8} {self.hist_t2[k]:>8}")
        return "\n".join(lines)

    def format_geo(self) -> str:
        g = self.geo
        if g is None:
            return "no"
        parts = [crs_name(g["crs"]) or "no CRS"]
        if g["tile_size"] is not None:
            parts.append(f"tiles of {g['tile_size']} px")
        if g["transform"] is not None:
            a, b, c, d, e, f = g["transform"]
            parts.append(f"tile grid origin ({c:.10g}, {f:.10g}), cell {a:g} x {e:g} map units")
        return "; ".join(parts)

    __str__ = format


def crs_name(wkt) -> str | None:
    """The name of a WKT CRS (its first quoted string, e.g. 'WGS 84 / UTM zone 50N')."""
    if not wkt:
        return None
    start = wkt.find('"')
    end = wkt.find('"', start + 1)
    return wkt[start + 1:end] if 0 <= start < end else wkt[:60]


def _scan_split(split_dir, num_classes):
    files = list_shards(split_dir)
    infos, labels = [], []
    for path in files:
        info, arrays = check_shard(path, num_classes)
        if infos:
            check_consistent(infos[0], info)
        infos.append(info)
        labels.append(arrays)
    names = next((i.class_names for i in infos if i.class_names is not None), None)
    if names is not None and num_classes is not None and len(names) != num_classes:
        raise shard_error(infos[0].path, "class_names", f"{len(names)} names; expected num_classes={num_classes}")
    return files, infos, labels, names


def inspect_split(split_dir, num_classes=None, check_values=True, check_stored=False) -> SplitSummary:
    """Validate every §4 rule on every shard of ``split_dir`` and summarise it.

    Args:
        split_dir: directory of ``.npz`` shards.
        num_classes: K if known; labels above it are an error. Default: ``len(class_names)`` when
            the shards carry names, else the largest label seen.
        check_values: also read image data that the loader cannot check before it is in the
            middle of an epoch: float images are value-checked (finite, in [0, 1]) by streaming
            each array in chunks, and compressed image members are read through once so that
            their CRC-32 is verified (see ``data.shards.check_image_data``). The loader passes False and
            checks each shard as it reads it.
        check_stored: also read uncompressed integer image members through to verify their
            CRC-32 (every byte of the split is read; ``python -m data.inspect`` does this).

    Raises:
        ShardError: one line naming file, key and what was expected.
    """
    split_dir = pathlib.Path(split_dir)
    files, infos, labels, names = _scan_split(split_dir, num_classes)
    if check_values or check_stored:
        for path in files:
            for key in IMAGE_KEYS:
                shards.check_image_data(path, key, values=check_values, stored=check_stored)
    k = num_classes if num_classes is not None else (len(names) if names else
                                                     max(i.max_label for i in infos))
    hist1, hist2 = np.zeros(k, np.int64), np.zeros(k, np.int64)
    n_pairs = n_skipped = n_changed = 0
    per_file = []
    for arrays in labels:
        y1, y2 = arrays["label_t1"], arrays["label_t2"]
        ok = defined_mask(y1, y2)
        y1, y2 = y1[ok].astype(np.int64), y2[ok].astype(np.int64)
        hist1 += np.bincount(y1 - 1, minlength=k)[:k]
        hist2 += np.bincount(y2 - 1, minlength=k)[:k]
        n_changed += int((y1 != y2).sum())
        n_pairs += int(ok.sum())
        n_skipped += int((~ok).sum())
        per_file.append(int(ok.sum()))
    if n_skipped:
        log.debug("%s: skipping %d undefined pair(s) (label 0 on a date)", split_dir, n_skipped)
    return SplitSummary(split_dir, files, n_pairs, n_skipped, infos[0].image_shape, infos[0].dtype,
                        k, names, hist1, hist2, n_changed, infos[0].has_rowcol, per_file,
                        infos[0].geo, any(i.max_label > 0 for i in infos))


def check_class_names(summaries, reference=None, reference_name=None) -> None:
    """Refuse splits whose ``class_names`` differ (names in another order put every class under
    another's name): every summary with names (``{split: SplitSummary}``, or a list) against the
    first one's, or against ``reference`` (a checkpoint's names, ``reference_name`` saying whose)
    when given. Splits without names are not compared."""
    items = list(summaries.values()) if isinstance(summaries, dict) else list(summaries)
    if reference is not None:
        ref, ref_where = list(reference), reference_name or "the checkpoint's"
    else:
        first = next((s for s in items if s.class_names is not None), None)
        if first is None:
            return
        ref, ref_where = first.class_names, f"those of {first.split_dir}"
    for s in items:
        if s.class_names is not None and list(s.class_names) != ref:
            diff = next(i for i, (a, b) in enumerate(zip(s.class_names, ref, strict=True)) if a != b) \
                if len(s.class_names) == len(ref) else None
            at = "" if diff is None else (f" (class {diff + 1} is {s.class_names[diff]!r} here, "
                                          f"{ref[diff]!r} there)")
            raise ShardError(f"{s.split_dir}: class_names: {list(s.class_names)}; expected "
                             f"{ref_where}, {ref}{at}")


def check_class_count(k: int, where: str) -> None:
    """Refuse more than ``MAX_CLASSES`` classes (``where`` names the flag, file or checkpoint that
    sets K) before anything is written or TensorFlow starts."""
    if k > MAX_CLASSES:
        raise ShardError(f"{where}: {k} classes; expected at most {MAX_CLASSES} (the K x K "
                         "confusion and transition matrices and their figures are bounded and "
                         "tested up to that)")


def require_labels(summary: SplitSummary, split: str, use: str) -> None:
    """Refuse a split whose shards carry no labels at all (label 0 everywhere, as ``make_shards
    raster`` writes without --labels1/--labels2) for ``use`` (training, evaluation)."""
    if summary.n_pairs + summary.n_skipped == 0:
        raise ShardError(f"{summary.split_dir}: {split} split: 0 pairs in "
                         f"{len(summary.files)} shard(s); expected at least one pair for {use}")
    if not summary.labelled:
        raise ShardError(f"{summary.split_dir}: {split} split: label_t1/label_t2 are 0 everywhere: "
                         f"the shards have no labels (make_shards raster without --labels1/--labels2; "
                         f"to map unlabelled rasters use predict.py); expected labelled shards for {use}")


def read_labels(split_dir, num_classes=None) -> dict:
    """Labels of a split in fixed (sorted file) order with undefined pairs removed.

    Returns ``{"label_t1", "label_t2"}`` 0-based int32, ``"row"``/``"col"`` int64 or None and
    ``"class_names"`` (list or None). Same order as the evaluation loader.
    """
    _, infos, labels, names = _scan_split(split_dir, num_classes)
    out = {"label_t1": [], "label_t2": [], "row": [], "col": []}
    for arrays in labels:
        ok = defined_mask(arrays["label_t1"], arrays["label_t2"])
        for key in LABEL_KEYS:
            out[key].append(arrays[key][ok].astype(np.int32) - 1)
        for key in GRID_KEYS:
            if key in arrays:
                out[key].append(arrays[key][ok].astype(np.int64))
    result = {key: np.concatenate(out[key]) for key in LABEL_KEYS}
    for key in GRID_KEYS:
        result[key] = np.concatenate(out[key]) if infos[0].has_rowcol else None
    result["class_names"] = names
    return result


def input_size(summary: SplitSummary, image_size=None) -> tuple[int, int]:
    """The (H, W) a model sees of this split's images: ``image_size`` (``--image_size``: a resize)
    or, when None, the split's own size. The one home of the rule "None means the data's size";
    the resolved value is what flows on (``training.run_data.DataPlan.image_size``)."""
    if image_size:
        return int(image_size[0]), int(image_size[1])
    return int(summary.image_shape[0]), int(summary.image_shape[1])
