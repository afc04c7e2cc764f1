"""Shared command-line plumbing: logging set-up and the one-line-error, exit-2 convention."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import errno
import logging
import os
import re
import signal
import sys
import tempfile
import threading

log = logging.getLogger("corrfusion")


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows `(default: X)` only where X says something and the help does not already."""

    def _get_help_string(self, action):
        text = action.help or ""
        default = action.default
        # identity, not ==: a default of 0 (--seed) is shown, only None/False/""/[] say nothing
        if (default is None or default is False or default == argparse.SUPPRESS
                or (isinstance(default, str | list | tuple) and not default) or "default" in text):
            return text
        return super()._get_help_string(action)


class UsageError(ValueError):
    """Bad input found after argument parsing (a file, a directory, a value that does not fit).

    The base of every "the user's input is wrong" error (``data.shards.ShardError``,
    ``utils.rundir.RunDirError``): one line on stderr and exit status 2 through ``run_main``."""


#: the one log format of every command (train_cnn, eval, compare, predict, make_shards, figures, ...)
LOG_FORMAT = "%(asctime)s %(levelname)s %(message)s"
LOG_DATEFMT = "%H:%M:%S"

#: TensorFlow's native start-up lines that say nothing to a user (a CPU-only machine has no CUDA
#: driver, the CPU build's instruction-set notice, absl's pre-init banner, duplicate factory
#: registrations); hidden unless --verbose (``quiet_native_stderr``)
TF_STARTUP_NOISE = re.compile(
    r"All log messages before absl::InitializeLog|cudart_stub\.cc|cpu_feature_guard\.cc|"
    r"To enable the following instructions|rebuild TensorFlow with the appropriate compiler|"
    r"failed call to cuInit|cuda_platform\.cc|cuda_executor\.cc|cuda_diagnostics|"
    r"Unable to register cu(DNN|FFT|BLAS) factory|computation_placer\.cc|TF-TRT Warning|"
    r"oneDNN custom operations are on|port\.cc:\d+\] oneDNN|"
    r"successful NUMA node read|gpu_device\.cc.*Skipping registering GPU devices|"
    # a multi-worker (TF_CONFIG) start: the coordination service's and gRPC server's lines
    r"coordination_service(_agent)?\.(cc|h)|grpc_server_lib\.cc|collective_param_resolver|"
    r"^/job:(worker|chief)/replica:\d+/task:\d+\s*$")

#: environment variable that ``configure_logging(verbose=True)`` sets: native start-up lines shown
VERBOSE_ENV = "CORRFUSION_VERBOSE"


def configure_logging(verbose: bool = False, level: int = logging.INFO) -> None:
    """The one log format on stderr at ``level``; DEBUG and TensorFlow's own start-up lines with
    ``verbose`` (``--verbose``)."""
    if verbose:
        os.environ[VERBOSE_ENV] = "1"
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "0")
    else:  # TensorFlow's own errors (level 2) still show; its start-up lines: quiet_native_stderr
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    logging.basicConfig(
        level=logging.DEBUG if verbose else level,
        format=LOG_FORMAT,
        datefmt=LOG_DATEFMT,
        stream=sys.stderr,
    )
    for noisy in ("absl", "matplotlib", "PIL", "h5py", "rasterio"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


@contextlib.contextmanager
def quiet_native_stderr():
    """Hide TensorFlow's native start-up lines (``TF_STARTUP_NOISE``) written to file descriptor
    2 inside the block, e.g. while TensorFlow is imported and finds its devices; every other line
    is written to stderr afterwards. Nothing is hidden with --verbose (``VERBOSE_ENV``) or when
    stderr is not a real file (a test's capture)."""
    try:
        fd = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):
        fd = None
    if os.environ.get(VERBOSE_ENV) or fd != 2:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            kept = [ln for ln in tmp.read().decode(errors="replace").splitlines(keepends=True)
                    if ln.strip() and not TF_STARTUP_NOISE.search(ln)]
            if kept:
                sys.stderr.write("".join(kept))
                sys.stderr.flush()


def progress_verbose() -> int:
    """Keras' ``verbose`` for fit/predict: 1 (a progress bar) when stdout is a terminal, 0 in a
    file or pipe (one log line per epoch instead: ``training.callbacks.EpochSummary``)."""
    try:
        return 1 if sys.stdout.isatty() else 0
    except (AttributeError, ValueError):  # closed or replaced stdout
        return 0


#: exceptions that mean "the user's input is wrong": one line and exit status 2
BAD_INPUT = (UsageError, FileNotFoundError)

#: exit status of a command stopped by a full disk, a quota or a file-size limit (``ulimit -f``):
#: sysexits' EX_IOERR; its one line says what happened and how to go on (``DiskFull``)
DISK_FULL_STATUS = 74
#: a multi-worker run whose peers did not join within --join_timeout (EX_TEMPFAIL: try again)
JOIN_TIMEOUT_STATUS = 75
#: the errors a write gets from a full disk (ENOSPC), a file-size limit (EFBIG), a quota (EDQUOT)
DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EFBIG, errno.EDQUOT})


class DiskFull(Exception):
    """A write failed for want of space (``DISK_FULL_ERRNOS``): the message says where and how to
    go on; ``run_main`` prints it as one line and exits with ``DISK_FULL_STATUS``."""


def is_disk_full(e: BaseException) -> bool:
    return isinstance(e, OSError) and e.errno in DISK_FULL_ERRNOS


def disk_full(e: OSError, then: str = "free space and run the command again") -> DiskFull:
    """The ``DiskFull`` of a write's OSError: the file (when known), the system's reason, that
    every file written before is whole (they are replaced only once complete) and ``then``."""
    where = f"{e.filename}: " if e.filename else ""
    reason = e.strerror or errno.errorcode.get(e.errno, str(e.errno))
    return DiskFull(f"{where}disk full, write failed ({reason}, errno {e.errno}); files written "
                    f"before are whole (each is replaced only once complete): {then}")


class JoinTimeout(Exception):
    """The other workers of TF_CONFIG did not join in time (``run_main``: one line, status 75)."""


class Terminated(BaseException):
    """SIGTERM arrived (``run_main``): unwinds like Ctrl-C, so that ``finally`` blocks remove
    temporary files and release locks; a BaseException, so no ``except Exception`` swallows it."""


def _raise_terminated(signum, frame):
    raise Terminated


@contextlib.contextmanager
def signals_handled(signals, handler):
    """While inside (main thread): ``handler`` handles each of ``signals``; the previous handlers
    come back on leaving (elsewhere: unchanged, as only the main thread may set handlers)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, handler) for sig in signals}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def sigterm_unwinds():
    """While inside: SIGTERM raises ``Terminated`` in the main thread (elsewhere: unchanged)."""
    return signals_handled((signal.SIGTERM,), _raise_terminated)


def run_main(main, argv=None) -> int:
    """Call main(argv); bad input -> 'error: ...' on stderr and exit status 2, no traceback; a
    full disk (``DISK_FULL_ERRNOS``) -> one 'error:' line and ``DISK_FULL_STATUS`` (74);
    the other workers of a multi-worker run not joining in time -> one 'error:' line and
    ``JOIN_TIMEOUT_STATUS`` (75); Ctrl-C -> "interrupted", 130; SIGTERM -> "terminated", 143
    (128 + 15), after the same clean-up (temporary files removed, locks released; checkpoints are whole files)."""
    try:
        with sigterm_unwinds():
            rc = main(argv)
    except BAD_INPUT as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print(f"error: {msg}", file=sys.stderr)
        return 2
    except (DiskFull, OSError) as e:
        if not isinstance(e, DiskFull):
            if not is_disk_full(e):
                raise
            e = disk_full(e)
        print(f"error: {str(e).strip().splitlines()[0]}", file=sys.stderr)
        return DISK_FULL_STATUS
    except JoinTimeout as e:
        print(f"error: {e}", file=sys.stderr)
        return JOIN_TIMEOUT_STATUS
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Terminated:
        print("terminated", file=sys.stderr)
        return 128 + signal.SIGTERM
    return int(rc or 0)


def from_namespace(cls, namespace, **values):
    """``cls(**fields)`` from the namespace's attributes of the same names (lists become tuples);
    ``values`` win; a field the namespace lacks keeps its default (an error if it has none)."""
    for f in dataclasses.fields(cls):
        if f.name not in values and hasattr(namespace, f.name):
            v = getattr(namespace, f.name)
            values[f.name] = tuple(v) if isinstance(v, list) else v
    return cls(**values)
