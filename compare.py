"""Compare methods on the same data and seeds, and lay out a table like the paper's.

    python compare.py --data_dir DATA --methods baseline,corrfusion,dcca,sdcca,bovw \\
        --backbone vgg16 --runs 3 --workdir runs/compare -- -e 100 -b 32

Every CNN run goes through ``training.fit.train`` with train_cnn.py's config (training, best
checkpoint, test evaluation with ``evaluation.evaluate``); the BoVW baselines through
``evaluation.baselines.run_bovw`` and ``evaluation.evaluate.write_bovw_outputs``; the table is
``evaluation.comparison``'s. Run k
of every method uses seed SEED + k. Each run lives in WORKDIR/METHOD/k/ with the usual run-directory
layout; a run whose results/tst/results.json exists is not redone, and a CNN run that stopped
half-way resumes from its last checkpoint, so an interrupted comparison is continued by running the
same command again. Options after `--` (or not known here) go to train_cnn.py unchanged.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from data.split_summary import inspect_split
from data.splits import resolve_split_dirs
from evaluation import baselines
from evaluation.comparison import bar_chart, csv_table, markdown_table, summarize
from evaluation.evaluate import write_bovw_outputs
from parser import (
    BACKBONE_NAMES,
    METHOD_NAMES,
    check_train_args,
    given_dests,
    positive_int,
    train_parser,
)
from training.config import TrainConfig
from training.fit import train
from utils.cli import UsageError, configure_logging, run_main
from utils.devices import select_devices, start_backend
from utils.rundir import (
    atomic_write_bytes,
    atomic_write_json,
    check_can_create_dir,
    is_nonempty_dir,
)

log = logging.getLogger("corrfusion.compare")

BOVW_METHODS = {"bovw": "hik", "bovw_hik": "hik", "bovw_ksfa": "ksfa"}
ALL_METHODS = (*METHOD_NAMES, *BOVW_METHODS)
#: train_cnn.py options (their dest) that compare sets itself; refused after `--`
RESERVED = ("method", "runs", "workdir", "seed", "resume", "overwrite", "backbone", "data_dir",
            "trn_dir", "val_dir", "tst_dir", "demo")


# --------------------------------------------------------------------------------------- arguments
def method_list(value: str) -> list[str]:
    """``--methods a,b``: known names, each once, no empty item (a typo is refused, not dropped)."""
    parts = [m.strip().lower() for m in value.split(",")]
    names = [m for m in parts if m]
    bad = [m for m in names if m not in ALL_METHODS]
    if not names or bad:
        raise argparse.ArgumentTypeError(
            f"unknown method(s) {', '.join(bad) or value!r}; choose from {', '.join(ALL_METHODS)}")
    if len(names) != len(parts):
        raise argparse.ArgumentTypeError(f"an empty method name in {value!r}; expected "
                                         "comma-separated names, e.g. baseline,corrfusion")
    repeated = sorted({m for m in names if names.count(m) > 1})
    if repeated:
        raise argparse.ArgumentTypeError(f"{', '.join(repeated)} given more than once in "
                                         f"{value!r}; name each method once")
    return names


def compare_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="compare.py", description=__doc__.split("\n\n")[0],
        epilog="Options not listed here (e.g. -e 10 -b 16 --image_size 64 -g 0) are passed to "
               "train_cnn.py for every CNN run.")
    data = p.add_argument_group("data")
    data.add_argument("--data_dir", default=None, help="directory holding trn/ val/ tst/")
    data.add_argument("-trn", "--trn_dir", default=None)
    data.add_argument("-val", "--val_dir", default=None)
    data.add_argument("-tst", "--tst_dir", default=None)
    runs = p.add_argument_group("comparison")
    runs.add_argument("--methods", type=method_list,
                      default=["baseline", "corrfusion", "dcca", "sdcca", "bovw"],
                      help=f"comma-separated, from {', '.join(ALL_METHODS)} "
                           "(default baseline,corrfusion,dcca,sdcca,bovw)")
    runs.add_argument("--backbone", choices=BACKBONE_NAMES, default=None,
                      help="backbone of every CNN method (default vgg16, or the forwarded "
                           "--preset's: resnet50 for --preset original)")
    runs.add_argument("--runs", type=positive_int, default=3, help="runs per method (default 3)")
    runs.add_argument("--seed", type=int, default=0, help="seed of run 0; run k uses seed + k")
    runs.add_argument("--workdir", default="runs/compare", help="default runs/compare")
    bovw = p.add_argument_group("BoVW baselines")
    bovw.add_argument("--bovw_words", type=positive_int, default=1000, help="visual words (1000)")
    bovw.add_argument("--bovw_patch", type=positive_int, default=10, help="window side (10)")
    return p


def parse_args(argv=None):
    parser = compare_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--" in argv:
        i = argv.index("--")
        argv, forward = argv[:i], argv[i + 1:]
    else:
        forward = []
    args, unknown = parser.parse_known_args(argv)
    args.forward = unknown + forward
    tparser = train_parser()
    # every spelling argparse accepts (abbreviations, --flag=value), as train_cnn.py would read it
    given = given_dests(tparser, args.forward) & set(RESERVED)
    reserved = sorted(max(a.option_strings, key=len) for a in tparser._actions if a.dest in given)
    if reserved:
        parser.error(f"{', '.join(reserved)}: set by compare.py itself; use its own options")
    if not (args.data_dir or (args.trn_dir and args.tst_dir)):
        parser.error("give --data_dir (holding trn/ val/ tst/) or -trn, -val and -tst")
    dirs = resolve_split_dirs(args.data_dir, {"trn": args.trn_dir, "val": args.val_dir,
                                              "tst": args.tst_dir})
    args.trn_dir, args.val_dir, args.tst_dir = dirs["trn"], dirs["val"], dirs["tst"]
    # The forwarded options are train_cnn.py's: usage errors now, not in the first run.
    targv = ["-trn", args.trn_dir] + args.forward
    targs = check_train_args(tparser, tparser.parse_args(targv), targv)
    if args.backbone is not None:
        targs.backbone = args.backbone
    args.backbone = targs.backbone
    args.verbose = targs.verbose
    args.train = TrainConfig.from_args(targs).replace(
        trn_dir=args.trn_dir, val_dir=args.val_dir, tst_dir=args.tst_dir)
    return args


# -------------------------------------------------------------------------------------------- runs
def run_dir_of(args, method: str, k: int) -> Path:
    return Path(args.workdir) / method / str(k)


def result_file(run_dir: Path) -> Path:
    return run_dir / "results" / "tst" / "results.json"


def check_settings(args) -> None:
    """The work directory must be new, empty, or a comparison compare.py started (its compare.json);
    an existing comparison is continued only with the same settings."""
    settings = {"data": [args.trn_dir, args.val_dir, args.tst_dir], "backbone": args.backbone,
                "seed": args.seed, "forward": args.forward, "bovw_words": args.bovw_words,
                "bovw_patch": args.bovw_patch}
    workdir = Path(args.workdir)
    check_can_create_dir(workdir)
    path = workdir / "compare.json"
    if path.exists() or path.is_symlink():
        try:
            doc = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            first = (str(e).strip().splitlines() or [""])[0]
            raise UsageError(f"{path}: unreadable ({type(e).__name__}: {first}); not a comparison "
                             "compare.py can continue: use another --workdir") from None
        if not isinstance(doc, dict) or not isinstance(doc.get("settings"), dict):
            raise UsageError(f"{path}: settings: missing; not a comparison compare.py can "
                             "continue: use another --workdir")
        old = doc["settings"]
        if old != settings:
            raise UsageError(f"{path}: this comparison was started with other settings ({old}); "
                             "use another --workdir")
    elif is_nonempty_dir(workdir):
        raise UsageError(f"{workdir}: work directory is not empty and holds no compare.json (not "
                         "a comparison started by compare.py); use a new --workdir")
    args.settings = settings


def write_settings(args) -> None:
    atomic_write_json(Path(args.workdir) / "compare.json",
                      {"settings": args.settings, "methods": args.methods, "runs": args.runs,
                       "command": sys.argv})


def run_cnn(args, method: str, k: int, run_dir: Path) -> int:
    """One CNN run through ``training.fit.train``: fresh, or resumed from its last checkpoint."""
    resume = (run_dir / "checkpoints" / "last.keras").is_file()  # its state is inside it
    if resume:
        log.info("%s run %d: resuming in %s", method, k, run_dir)
    config = args.train.replace(
        method=method, seed=args.seed + k, workdir=str(run_dir), resume=resume,
        # compare's own run that stopped before its first epoch ended
        overwrite=not resume and (run_dir / "checkpoints").is_dir())
    return train(config, checked_splits=args.checked_splits)


def run_bovw(args, method: str, k: int, run_dir: Path) -> int:
    """One BoVW run: evaluation.baselines for the classifier, the same output files as a CNN run's."""
    metrics, preds = baselines.run_bovw(args.trn_dir, args.tst_dir, method=BOVW_METHODS[method],
                                   val_dir=args.val_dir, words=args.bovw_words,
                                   patch=args.bovw_patch, seed=args.seed + k,
                                   check_values=False)  # main read the splits through
    atomic_write_json(run_dir / "args.json", {"method": method, "seed": args.seed + k,
                                              "settings": args.settings})
    write_bovw_outputs(run_dir / "results" / "tst", metrics, preds,
                       info={"method": method, "run": k, "split_dir": args.tst_dir})
    return 0


def run_all(args) -> dict:
    """Every method x run not finished yet; returns {method: [metrics of each finished run]}."""

    keras = start_backend()  # TensorFlow starts with the first run, after every check

    results: dict[str, list] = {}
    failed = []
    for method in args.methods:
        for k in range(args.runs):
            run_dir = run_dir_of(args, method, k)
            if not result_file(run_dir).is_file():
                log.info("=== %s, run %d/%d -> %s", method, k + 1, args.runs, run_dir)
                keras.backend.clear_session()
                runner = run_bovw if method in BOVW_METHODS else run_cnn
                if runner(args, method, k, run_dir) != 0:
                    failed.append(f"{method}/{k}")
                    continue
            else:
                log.info("%s run %d: done already (%s)", method, k, result_file(run_dir))
            results.setdefault(method, []).append(
                json.loads(result_file(run_dir).read_text())["metrics"])
    if failed:
        log.error("runs that failed (left out of the table): %s", ", ".join(failed))
    args.failed = failed
    return results


def write_table(args, rows: list[dict]) -> None:
    out = Path(args.workdir)
    table = markdown_table(rows)
    atomic_write_bytes(out / "comparison.md", table.encode())
    atomic_write_bytes(out / "comparison.csv", csv_table(rows).encode())
    bar_chart(rows, out / "comparison.png")
    sys.stdout.write(table)
    log.info("table: %s (and .csv, .png)", out / "comparison.md")


# -------------------------------------------------------------------------------------------- main
def main(argv=None) -> int:
    args = parse_args(argv)
    configure_logging(args.verbose)
    select_devices(args.train.gpu)  # before TensorFlow starts
    check_settings(args)
    checked = [d for d in (args.trn_dir, args.val_dir, args.tst_dir) if d]
    for split in checked:
        inspect_split(split)  # bad data: one line, exit 2, before anything is written
    args.checked_splits = checked  # read through once: the runs check headers and labels only
    write_settings(args)
    results = run_all(args)
    write_table(args, summarize(results))
    return 1 if args.failed else 0


if __name__ == "__main__":
    sys.exit(run_main(main))
