"""The one exception type for expected user errors on the host side.

A UserError becomes one clear line on stderr and a non-zero exit (2), never a
traceback. Raise it with a message that says what is wrong and what to do.
"""

from __future__ import annotations

import argparse
import os
import re
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


class ArtifactStoreFull(UserError):
    """An artifact write found no space left (ENOSPC, EDQUOT; sweeps/records/store.py):
    the trial is interrupted, not decided, and --resume, once there is space, runs it
    again."""


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

    def parse_known_args(self, args=None, namespace=None):
        # argparse takes "--every -5m" for two options and says "expected one argument";
        # passed as "--every=-5m", the value reaches its check, which says what is wrong.
        if args is not None:
            args = _join_negative_values(self, list(args))
        return super().parse_known_args(args, namespace)


_NEGATIVE = re.compile(r"^-\.?\d")


def _join_negative_values(parser: argparse.ArgumentParser, args: list[str]) -> list[str]:
    """``--opt -5m`` -> ``--opt=-5m`` for each option of ``parser`` that takes one value."""
    takes_value = {option for action in parser._actions  # argparse has no public list
                   if action.nargs is None and action.option_strings
                   and not isinstance(action, (argparse._StoreConstAction,
                                               argparse._CountAction))
                   for option in action.option_strings}
    joined: list[str] = []
    index = 0
    while index < len(args):
        item = args[index]
        if (item in takes_value and index + 1 < len(args)
                and _NEGATIVE.match(args[index + 1])):
            joined.append(f"{item}={args[index + 1]}")
            index += 2
            continue
        if item == "--":
            joined.extend(args[index:])
            break
        joined.append(item)
        index += 1
    return joined


# The most a count on the command line takes (--max-concurrent, --num-cpus, --limit): far
# beyond any machine or cluster, so only a typo is refused.
MAX_COUNT = 1_000_000


def positive_int(text: str) -> int:
    """An argparse type: a whole number from 1 to MAX_COUNT (--max-concurrent, --num-cpus,
    --limit)."""
    try:
        value = int(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{one_line(text)}' is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1")
    if value > MAX_COUNT:
        raise argparse.ArgumentTypeError(f"{value} is more than {MAX_COUNT:,}")
    return value


# Characters that would break a message's one line (or hide in it): C0 and C1 controls,
# and Unicode's line and paragraph separators.
CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def one_line(text: object) -> str:
    """A message as one line: line breaks and other control characters escaped (a value a
    user typed on several lines shows as 'a\\nb')."""
    return CONTROL_CHARACTERS.sub(
        lambda found: found.group(0).encode("unicode_escape").decode("ascii"), str(text).strip())


def run_command(prog: str, body: Callable[[], int]) -> int:
    """Run a command's ``body``: a UserError is one line ``PROG: error: ...`` and exit 2,
    Ctrl-C is ``PROG: interrupted`` and 130, a reader that left the pipe (``| head``) ends
    it quietly."""
    try:
        return body()
    except UserError as exc:
        print(f"{prog}: error: {one_line(exc)}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - the interpreter flushes it at exit
        return EXIT_OK
