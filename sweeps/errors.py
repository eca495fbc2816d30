"""The one exception type for expected user errors on the host side.

A UserError becomes one clear line on stderr and a non-zero exit (2), never a
traceback. Raise it with a message that says what is wrong and what to do.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from typing import Any

# The exit codes of every versweep command (run, report, images, schedule, datasets,
# resources, and the scripts that are the same commands):
EXIT_OK = 0  # done; for a sweep: every trial decided (ok, unsupported, diverged are results)
EXIT_FAILED = 1  # something ran and failed: a trial, a build, a pull, a verification
EXIT_USER_ERROR = 2  # bad input: one line on stderr, nothing started, nothing left behind
EXIT_INTERRUPTED = 130  # Ctrl-C


class UserError(Exception):
    """An expected mistake by the user: a bad grid, a missing image, an unknown run."""

    exit_code = 2


class GridError(UserError):
    """A grid file that cannot become a valid sweep; the message names file and key path."""


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose usage errors are one UserError line (exit 2), like every other one.

    ``help_hint`` is the command a user types for help, when it is not ``prog`` (e.g.
    "python sweeps/schedule.py" for prog "schedule.py").
    """

    def __init__(self, *args: Any, help_hint: str | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.help_hint = help_hint

    def error(self, message):  # raises instead of exiting
        raise UserError(f"{message} (see {self.help_hint or self.prog} --help)")


def positive_int(text: str) -> int:
    """An argparse type: a whole number of at least 1 (--max-concurrent, --num-cpus, --limit)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1")
    return value


def run_command(prog: str, body: Callable[[], int]) -> int:
    """Run a command's ``body``: a UserError is one line ``PROG: error: ...`` and exit 2,
    Ctrl-C is ``PROG: interrupted`` and 130, a reader that left the pipe (``| head``) ends
    it quietly."""
    try:
        return body()
    except UserError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - the interpreter flushes it at exit
        return EXIT_OK
