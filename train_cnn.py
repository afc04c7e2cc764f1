"""Train CorrFusionNet on bi-temporal npz shards.

    python train_cnn.py --data_dir DATA --backbone vgg16 --method corrfusion -g 0
    python train_cnn.py --demo

parse -> one ``TrainConfig`` -> ``training.fit.train``: the checks (before TensorFlow starts and
before anything is written), the loaders, the runs and their evaluation live in the library
(docs/DESIGN.md §6); this script only turns the command line into the config.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from parser import apply_defaults, check_train_args, train_parser
from training.config import TrainConfig
from training.presets import DEMO_TRAIN, PRESETS
from utils.cli import configure_logging, run_main


def parse_args(argv=None):
    parser = train_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    args = check_train_args(parser, parser.parse_args(argv), argv)
    if args.demo:
        apply_demo_defaults(parser, args, argv)
    elif not (args.data_dir or args.trn_dir):
        parser.error("give --data_dir (holding trn/ val/ tst/) or -trn/-val/-tst, or use --demo")
    return args


def apply_demo_defaults(parser, args, argv) -> None:
    """--demo: small backbone, few epochs, cached demo data; flags given explicitly still win."""
    preset = PRESETS.get(args.preset, {})  # a --preset's values stay (it was asked for)
    apply_defaults(parser, args, argv, {k: v for k, v in DEMO_TRAIN.items() if k not in preset})
    if args.workdir is None:
        args.workdir = str(Path("runs") / time.strftime("demo-%Y%m%d-%H%M%S"))


def main(argv=None, checked_splits=()) -> int:
    """checked_splits: see ``training.fit.train``."""
    args = parse_args(argv)
    config = TrainConfig.from_args(args)
    configure_logging(args.verbose)
    # the library after parsing: -h and usage errors are answered without NumPy or TensorFlow
    from training.multiworker import supervise_join

    supervise_join(config)  # TF_CONFIG: this process supervises a worker child (--join_timeout)
    from training.fit import train

    return train(config, checked_splits)


if __name__ == "__main__":
    sys.exit(run_main(main))
