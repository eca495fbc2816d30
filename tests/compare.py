"""Compare what the code produced with what a test expects, by kind.

``pytest.approx`` is for numbers and flat sequences of numbers; handed a string, a nested
tuple or a mix it fails (pytest >= 9.2 refuses them outright) or, in older releases,
compares what it should not. ``assert_same`` compares

- numbers as numbers: two ints exactly, otherwise within ``rel`` / ``abs`` (NaN only
  matches NaN); a bool is matched exactly and never passes for a number, nor a number
  for a bool;
- strings, None and anything else as themselves (``==``);
- sequences element by element (same length; a list and a tuple count as sequences alike);
- mappings key by key (the same keys).

A difference is reported with the path to it (``[2][1]``, ``['lr']``), so a long curve or
a nested config says where it differs, not only that it does.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any


def differences(actual: Any, expected: Any, *, rel: float = 1e-9, abs: float = 0.0,
                path: str = "") -> list[str]:
    """Every place where ``actual`` is not ``expected``, as 'path: actual != expected'."""
    where = path or "value"
    if isinstance(expected, bool) or isinstance(actual, bool):
        same = type(actual) is type(expected) and actual == expected
        return [] if same else [f"{where}: {actual!r} != {expected!r}"]
    if isinstance(expected, int | float) and not isinstance(expected, bool):
        if not isinstance(actual, int | float):
            return [f"{where}: {actual!r} is not a number (expected {expected!r})"]
        if isinstance(expected, int) and isinstance(actual, int):
            return [] if actual == expected else [f"{where}: {actual!r} != {expected!r}"]
        if math.isnan(expected) or math.isnan(actual):
            both = math.isnan(expected) and math.isnan(actual)
            return [] if both else [f"{where}: {actual!r} != {expected!r}"]
        if math.isclose(actual, expected, rel_tol=rel, abs_tol=abs):
            return []
        return [f"{where}: {actual!r} != {expected!r} (rel={rel:g}, abs={abs:g})"]
    if isinstance(expected, str | bytes) or expected is None:
        return [] if actual == expected else [f"{where}: {actual!r} != {expected!r}"]
    if isinstance(expected, Mapping):
        if not isinstance(actual, Mapping):
            return [f"{where}: {type(actual).__name__} is not a mapping"]
        if set(actual) != set(expected):
            return [f"{where}: keys {sorted(map(str, actual))} != {sorted(map(str, expected))}"]
        found: list[str] = []
        for key in expected:
            found += differences(actual[key], expected[key], rel=rel, abs=abs,
                                 path=f"{path}[{key!r}]")
        return found
    if isinstance(expected, Sequence):
        if not isinstance(actual, Sequence) or isinstance(actual, str | bytes):
            return [f"{where}: {type(actual).__name__} is not a sequence"]
        if len(actual) != len(expected):
            return [f"{where}: {len(actual)} elements != {len(expected)}"]
        found = []
        for index, (got, want) in enumerate(zip(actual, expected, strict=True)):
            found += differences(got, want, rel=rel, abs=abs, path=f"{path}[{index}]")
        return found
    return [] if actual == expected else [f"{where}: {actual!r} != {expected!r}"]


def assert_same(actual: Any, expected: Any, *, rel: float = 1e-9, abs: float = 0.0,
                what: str = "") -> None:
    """Fail with every difference (at most 10 shown) unless ``actual`` is ``expected``."""
    found = differences(actual, expected, rel=rel, abs=abs)
    if found:
        more = f"\n... and {len(found) - 10} more" if len(found) > 10 else ""
        raise AssertionError((f"{what}: " if what else "") + "\n".join(found[:10]) + more)
