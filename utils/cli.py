"""Shared command-line plumbing: logging set-up and the one-line-error, exit-2 convention."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading

log = logging.getLogger("corrfusion")


class UsageError(ValueError):
    """Bad input found after argument parsing (a file, a directory, a value that does not fit).

    The base of every "the user's input is wrong" error (``data.shards.ShardError``,
    ``utils.rundir.RunDirError``): one line on stderr and exit status 2 through ``run_main``."""


def configure_logging(verbose: bool = False) -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )
    for noisy in ("absl", "matplotlib", "PIL", "h5py", "rasterio"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


#: exceptions that mean "the user's input is wrong": one line and exit status 2
BAD_INPUT = (UsageError, FileNotFoundError)


class Terminated(BaseException):
    """SIGTERM arrived (``run_main``): unwinds like Ctrl-C, so that ``finally`` blocks remove
    temporary files and release locks; a BaseException, so no ``except Exception`` swallows it."""


def _raise_terminated(signum, frame):
    raise Terminated


@contextlib.contextmanager
def sigterm_unwinds():
    """While inside: SIGTERM raises ``Terminated`` in the main thread (elsewhere: unchanged)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_main(main, argv=None) -> int:
    """Call main(argv); bad input -> 'error: ...' on stderr and exit status 2, no traceback;
    Ctrl-C -> "interrupted", 130; SIGTERM -> "terminated", 143 (128 + 15), after the same
    clean-up (temporary files removed, locks released; checkpoints are whole files)."""
    try:
        with sigterm_unwinds():
            rc = main(argv)
    except BAD_INPUT as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print(f"error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Terminated:
        print("terminated", file=sys.stderr)
        return 128 + signal.SIGTERM
    return int(rc or 0)
