"""Validate and summarise split directories of npz shards (docs/DESIGN.md §4).

Command line::

    python -m data.inspect DIR [DIR ...] [--num_classes K] [--json]

A DIR is a split directory of ``.npz`` files, or a data directory whose ``trn``/``val``/``tst``
(or any) subdirectories hold the shards; each split is checked in full (every rule of §4, float
image values included, and every image array read through once so that a damaged byte fails its
zip CRC-32 check: this reads the whole split) and summarised: pairs, image shape and dtype,
row/col, changed pairs, skipped undefined pairs and the class histogram per date with class names.
Bad input: one line ``error: <file>: <key>: <what was expected>`` on stderr, exit status 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import pathlib
import sys

from data import shards, split_summary
from utils.cli import configure_logging

log = logging.getLogger(__name__)


def split_dirs(path) -> list[pathlib.Path]:
    """The split directories under ``path``: itself if it holds .npz files, else its subdirectories
    that do (sorted, trn/val/tst first); itself otherwise, so that the error names it."""
    path = pathlib.Path(path)
    if not path.is_dir() or any(p.suffix == ".npz" for p in path.iterdir()):
        return [path]
    subs = [d for d in path.iterdir() if d.is_dir() and any(p.suffix == ".npz" for p in d.iterdir())]
    order = {name: i for i, name in enumerate(("trn", "val", "tst"))}
    subs.sort(key=lambda d: (order.get(d.name, len(order)), d.name))
    return subs or [path]


def inspect_all(paths, num_classes=None) -> list[split_summary.SplitSummary]:
    """Validate every split found under ``paths`` (all of them, before anything is printed); every
    byte of the image data is read (CRC-32 checked), uncompressed members included."""
    out = []
    for p in paths:
        found = [split_summary.inspect_split(d, num_classes, check_stored=True) for d in split_dirs(p)]
        split_summary.check_class_names(found)  # the splits of one data directory name classes alike
        out += found
    return out


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m data.inspect",
                                description="Validate and summarise npz shard directories.")
    p.add_argument("dirs", nargs="+", metavar="DIR",
                   help="split directory of .npz shards, or a directory holding trn/ val/ tst/")
    opts = p.add_argument_group("options")
    opts.add_argument("--num_classes", type=int, default=None,
                      help="number of classes K; labels above K are an error")
    opts.add_argument("--json", action="store_true", help="print the summaries as JSON")
    return p.parse_args(argv)


def main(argv=None):
    configure_logging(level=logging.WARNING)
    args = parse_args(argv)
    try:
        summaries = inspect_all(args.dirs, args.num_classes)
    except (shards.ShardError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.json:
        sys.stdout.write(json.dumps([s.to_dict() for s in summaries], indent=2) + "\n")
    else:
        sys.stdout.write("\n\n".join(s.format() for s in summaries) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
