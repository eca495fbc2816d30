"""tests/compare.py: numbers as numbers, strings as strings, sequences element by element."""

from __future__ import annotations

import math

import pytest
from compare import assert_same, differences


@pytest.mark.parametrize("actual, expected, rel", [
    (1.0 / 1.15, 1 / 1.15, 1e-12),
    (0.1 + 0.2, 0.3, 1e-12),
    (200, 200, 0.0),
    (200.0, 200, 1e-12),
    ("tf", "tf", 1e-12),
    (None, None, 1e-12),
    (True, True, 1e-12),
    (float("nan"), math.nan, 1e-12),
    ([(1, 5.0000001), (2, 4.5)], [(1, 5.0), (2, 4.5)], 1e-6),
    ((1, 2.0), [1, 2.0], 0.0),
    ({"lr": 20.0, "init": "tf", "steps": [1, 2]}, {"lr": 20.0, "init": "tf", "steps": (1, 2)},
     1e-12),
])
def test_equal_by_kind(actual, expected, rel):
    assert differences(actual, expected, rel=rel) == []
    assert_same(actual, expected, rel=rel)


@pytest.mark.parametrize("actual, expected, where", [
    (0.35000001, 0.35, "value: 0.35000001 != 0.35"),
    (201, 200, "value: 201 != 200"),
    ("compound", "tf", "value: 'compound' != 'tf'"),
    ("1.0", 1.0, "value: '1.0' is not a number"),
    (1, True, "value: 1 != True"),
    (True, 1, "value: True != 1"),
    (None, 0.0, "value: None is not a number"),
    (float("nan"), 1.0, "value: nan != 1.0"),
    ([(1, 5.0), (2, 4.6)], [(1, 5.0), (2, 4.5)], "[1][1]: 4.6 != 4.5"),
    ([(1, 5.0)], [(1, 5.0), (2, 4.5)], "value: 1 elements != 2"),
    ("ab", ["a", "b"], "value: str is not a sequence"),
    ({"lr": 1.0}, {"lr": 1.0, "clip": 5.0}, "value: keys ['lr'] != ['clip', 'lr']"),
    ({"lr": [1.0, 2.0]}, {"lr": [1.0, 3.0]}, "['lr'][1]: 2.0 != 3.0"),
])
def test_a_difference_is_found_and_says_where(actual, expected, where):
    found = differences(actual, expected, rel=1e-12)
    assert found and found[0].startswith(where), found
    with pytest.raises(AssertionError, match=r"^curve: "):
        assert_same(actual, expected, rel=1e-12, what="curve")


def test_many_differences_are_cut_to_ten():
    with pytest.raises(AssertionError) as raised:
        assert_same(list(range(20)), [n + 1 for n in range(20)])
    message = str(raised.value)
    assert message.count("!=") == 10 and message.endswith("... and 10 more")
