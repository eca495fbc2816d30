"""Version strings as numbers, in one place: torch, CUDA, cuDNN, driver and Python versions.

    version_tuple("1.13.1")      -> (1, 13, 1)
    version_tuple("2.13.0+cpu")  -> (2, 13, 0)      local build labels are not numbers
    version_tuple("535.104.05")  -> (535, 104, 5)   driver versions
    version_tuple("2.6.0a0")     -> (2, 6, 0)       stops at the first part that is not one
    version_tuple(None)          -> ()              unknown sorts first
"""

from __future__ import annotations

import re

_LEADING_NUMBERS = re.compile(r"\d+(?:\.\d+)*")


def version_tuple(text: str | None) -> tuple[int, ...]:
    """The leading dotted numbers of a version string, as a tuple of ints (see above)."""
    found = _LEADING_NUMBERS.match((text or "").strip())
    return tuple(int(part) for part in found.group(0).split(".")) if found else ()
