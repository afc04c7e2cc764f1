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
