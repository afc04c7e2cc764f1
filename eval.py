"""Evaluate a CorrFusionNet checkpoint: the paper's metrics, change metrics, figures, predictions.

    python eval.py -m runs/demo/checkpoints/best.keras -tst DATA/tst
    python eval.py -m runs/demo                      # the run's best checkpoint and its test split
    python eval.py -m RUN --data_dir DATA -rpath out/ --threshold 0.3

parse -> one ``EvalConfig`` -> ``evaluation.evaluate.evaluate_checkpoint``. Bad input (a checkpoint for
another class count or image size, a file that is not a Keras model, a run directory without a best
checkpoint, shards that break docs/DESIGN.md §4) leaves one line on stderr, exit status 2 and no
output.
"""

from __future__ import annotations

import sys

from evaluation.config import EvalConfig
from parser import eval_parser
from utils.cli import configure_logging, run_main


def parse_args(argv=None):
    return eval_parser().parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    config = EvalConfig.from_args(args)
    configure_logging(args.verbose)
    # the library after parsing: -h and usage errors are answered without NumPy or TensorFlow
    from evaluation.evaluate import evaluate_checkpoint

    evaluate_checkpoint(config)
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
