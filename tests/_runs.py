"""The small training every end-to-end test uses, and readers of a run directory.

``FAST`` + ``demo_data`` (84 / 12 / 24 pairs of 32x32, 4 classes): the small backbone, 6 steps of
-b 16 per epoch. ``train`` calls train_cnn.py's main through the CLI wrapper in this process (the
exit status and the one ``error:`` line, without another Python + TensorFlow start-up); the
session fixtures in tests/conftest.py (``trained_run``, ``resumed_run``) are runs of it.
"""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

FAST = ["--backbone", "small", "--hidden", "32", "-b", "16", "--lr", "0.01", "--seed", "3",
        "--tb_images", "0"]
#: TensorBoard's validation figures (three matplotlib figures per epoch, ~1 CPU s) only where a
#: test reads them: ``trained_run`` and tests/training/test_callbacks.py draw them; the other
#: trainings keep TensorBoard on (scalars, hparams, event files), without the figures
WITH_TB_IMAGES = ["--tb_images", "1"]
STEPS = 6  # 84 training pairs, batch 16


def train(data_dir, workdir, *extra, epochs=2):
    """``train_cnn.py --data_dir DATA --workdir W -e EPOCHS FAST... EXTRA...``; its exit status."""
    import train_cnn
    from utils.cli import run_main

    argv = ["--data_dir", str(data_dir), "--workdir", str(workdir), "-e", str(epochs), *FAST,
            *extra]
    return run_main(train_cnn.main, argv)


def read_history(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def copy_run(run, dst):
    """A writable copy of a shared (read-only) run directory; returns ``dst``."""
    shutil.copytree(run, dst)
    return Path(dst)
