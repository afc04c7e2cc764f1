"""utils.cli: bad input is one 'error:' line and exit status 2; other outcomes pass through."""

import logging
import os

import pytest

from data.shards import ShardError
from utils.cli import UsageError, configure_logging, run_main
from utils.rundir import RunDirError


@pytest.mark.parametrize("error", [UsageError("a.npz: image_t1: bad\nsecond line"),
                                   ShardError("a.npz: image_t1: bad"),
                                   RunDirError("out: exists and is not a directory"),
                                   FileNotFoundError("missing.txt")])
def test_bad_input_is_one_line_and_exit_2(error, capsys):
    def main(argv):
        raise error

    assert run_main(main) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1
    assert str(error).splitlines()[0] in err


def test_an_empty_message_names_the_error(capsys):
    def main(argv):
        raise UsageError("")

    assert run_main(main) == 2
    assert capsys.readouterr().err == "error: UsageError\n"


def test_return_codes_and_interrupts(capsys):
    assert run_main(lambda argv: None) == 0
    assert run_main(lambda argv: 1) == 1

    def interrupted(argv):
        raise KeyboardInterrupt

    assert run_main(interrupted) == 130
    assert "interrupted" in capsys.readouterr().err


def test_programming_errors_are_not_swallowed():
    def main(argv):
        raise KeyError("bug")

    with pytest.raises(KeyError):
        run_main(main)


def test_argv_is_passed_to_main():
    seen = []
    run_main(lambda argv: seen.append(argv), ["-e", "3"])
    assert seen == [["-e", "3"]]


def test_configure_logging_sets_the_level_and_quiets_noisy_loggers(monkeypatch):
    monkeypatch.delenv("TF_CPP_MIN_LOG_LEVEL", raising=False)
    configure_logging()
    assert logging.getLogger("matplotlib").level == logging.WARNING
    assert os.environ["TF_CPP_MIN_LOG_LEVEL"] == "2"


def test_sigterm_is_terminated_and_exit_143(capsys):
    import signal

    def main(argv):
        os.kill(os.getpid(), signal.SIGTERM)
        for _ in range(10**7):  # the handler runs between bytecodes
            pass
        return 0

    before = signal.getsignal(signal.SIGTERM)
    assert run_main(main) == 143
    assert capsys.readouterr().err == "terminated\n"
    assert signal.getsignal(signal.SIGTERM) == before


ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _stderr_of(code: str, **env) -> list[str]:
    import subprocess
    import sys

    environ = {k: v for k, v in os.environ.items()
               if k not in ("TF_CPP_MIN_LOG_LEVEL", "CORRFUSION_VERBOSE")}
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                          env={**environ, **env}, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return [ln for ln in proc.stderr.splitlines() if ln.strip()]


NATIVE = ("import os\n"
          "os.write(2, b'I0000 cudart_stub.cc:31] Could not find cuda drivers on your machine\\n')\n"
          "os.write(2, b'E0000 cuda_platform.cc:52] failed call to cuInit: UNKNOWN ERROR (303)\\n')\n"
          "os.write(2, b'a line a user needs\\n')\n")


def test_native_startup_noise_is_hidden_and_other_lines_kept():
    code = ("from utils.cli import configure_logging, quiet_native_stderr\n"
            "configure_logging({verbose})\n"
            "with quiet_native_stderr():\n" + "".join("    " + ln + "\n" for ln in NATIVE.splitlines()))
    assert _stderr_of(code.format(verbose=False)) == ["a line a user needs"]
    assert len(_stderr_of(code.format(verbose=True))) == 3  # --verbose: everything


@pytest.mark.slow  # three Python + TensorFlow start-ups
def test_tensorflow_starts_without_its_startup_lines():
    code = ("from utils.cli import configure_logging\n"
            "configure_logging()\n"
            "from utils.devices import start_backend\n"
            "start_backend()\n"
            "import tensorflow as tf\n"
            "print(float(tf.reduce_sum(tf.ones(3))))\n")
    assert _stderr_of(code, KERAS_BACKEND="tensorflow") == []


def test_progress_bars_only_on_a_terminal(monkeypatch):
    import io
    import sys

    from utils.cli import progress_verbose

    class Tty(io.StringIO):
        def isatty(self):
            return True

    monkeypatch.setattr(sys, "stdout", Tty())
    assert progress_verbose() == 1
    monkeypatch.setattr(sys, "stdout", io.StringIO())
    assert progress_verbose() == 0
