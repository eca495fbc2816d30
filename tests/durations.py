"""The suite's own record of how long each test takes, used to order it (tests/conftest.py).

The suite runs in several processes (pytest-xdist, ``-n`` in pyproject.toml). Each
process takes the next test, or the next module that shares a module-scoped fixture, in
collection order; a long test collected last leaves one process running alone at the end.
So conftest.py puts the longest first (longest-processing-time-first scheduling), by the
seconds recorded in ``tests/durations.json``. A test the file does not know counts as
``DEFAULT_S``: only the order depends on this file, never what runs or passes.

Refresh it after a full run (setup, call and teardown of each test are summed)::

    python -m pytest --durations=0 | tee run.log
    python tests/durations.py run.log          # rewrites tests/durations.json
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

FILE = Path(__file__).with_name("durations.json")
# Seconds assumed for a test the file does not know (most tests take well under a second).
DEFAULT_S = 0.5
GROUP_SUFFIX = re.compile(r"@module:tests/[^@]*$")
LINE = re.compile(r"^\s*([0-9.]+)s\s+(setup|call|teardown)\s+(tests/\S.*?)\s*$")


def load() -> dict[str, float]:
    """nodeid -> seconds; empty where the file is missing or unreadable."""
    try:
        data = json.loads(FILE.read_text())
    except (OSError, ValueError):
        return {}
    return {str(k): float(v) for k, v in data.items()} if isinstance(data, dict) else {}


def parse(text: str) -> dict[str, float]:
    """The ``--durations`` lines of a pytest run: nodeid -> setup + call + teardown seconds."""
    found: dict[str, float] = {}
    for line in text.splitlines():
        match = LINE.match(line)
        if match:
            # xdist names a grouped test "<nodeid>@<group>" (conftest.py's module groups)
            nodeid = GROUP_SUFFIX.sub("", match.group(3))
            found[nodeid] = found.get(nodeid, 0.0) + float(match.group(1))
    return found


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python tests/durations.py PYTEST_OUTPUT (a run with --durations=0)",
              file=sys.stderr)
        return 2
    try:
        found = parse(Path(argv[0]).read_text(errors="replace"))
    except OSError as error:
        print(f"tests/durations.py: cannot read {argv[0]}: {error.strerror}", file=sys.stderr)
        return 2
    if not found:
        print(f"tests/durations.py: {argv[0]} has no --durations lines (run pytest with "
              "--durations=0)", file=sys.stderr)
        return 2
    kept = {k: round(v, 1) for k, v in sorted(found.items()) if v >= DEFAULT_S}
    FILE.write_text(json.dumps(kept, indent=0, sort_keys=True) + "\n")
    print(f"{len(kept)} tests of {DEFAULT_S} s or more -> {FILE}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
