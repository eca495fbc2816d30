"""The one exception type for expected user errors on the host side.

A UserError becomes one clear line on stderr and a non-zero exit (2), never a
traceback. Raise it with a message that says what is wrong and what to do.
"""

from __future__ import annotations


class UserError(Exception):
    """An expected mistake by the user: a bad grid, a missing image, an unknown run."""

    exit_code = 2


class GridError(UserError):
    """A grid file that cannot become a valid sweep; the message names file and key path."""
