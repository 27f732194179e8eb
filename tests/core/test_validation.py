"""Tests for datarax.core.validation: the argument validators every constructor uses."""

import numpy as np
import pytest

from datarax.core.validation import (
    boolean,
    int_in_range,
    is_int,
    non_negative_int,
    optional_callable,
    optional_non_negative_int,
    optional_positive_int,
    positive_int,
)


@pytest.mark.parametrize("value", [0, 7, -3, np.int8(1), np.uint64(5)])
def test_is_int_accepts_python_and_numpy_integers(value):
    assert is_int(value)


@pytest.mark.parametrize("value", [True, False, np.bool_(True), 1.0, "1", None, np.array([1])])
def test_is_int_rejects_bools_floats_and_others(value):
    assert not is_int(value)


@pytest.mark.parametrize(
    "validator, good, bad",
    [
        (positive_int, [1, 9, np.int32(3)], [0, -1, True, 1.5, None]),
        (non_negative_int, [0, 4, np.int64(0)], [-1, False, 0.0, "0"]),
        (optional_positive_int, [None, 2], [0, True, 2.0]),
        (optional_non_negative_int, [None, 0, 3], [-1, True, 0.5]),
    ],
)
def test_int_validators(validator, good, bad):
    for value in good:
        out = validator("Owner", "arg", value)
        assert out == value and (out is None or type(out) is int)
    for value in bad:
        with pytest.raises(ValueError, match=rf"^Owner: arg must be .*, got {value!r}$".replace("(", r"\(")):
            validator("Owner", "arg", value)


def test_int_in_range_bounds_and_message():
    assert int_in_range("O", "i", 3, low=0, high=4, what="an int in [0, 4)") == 3
    with pytest.raises(ValueError, match=r"^O: i must be an int in \[0, 4\), got 4$"):
        int_in_range("O", "i", 4, low=0, high=4, what="an int in [0, 4)")
    # Without an owner the message starts with the argument.
    with pytest.raises(ValueError, match=r"^i must be at least 2, got 1$"):
        int_in_range("", "i", 1, low=2, what="at least 2")


def test_boolean():
    assert boolean("O", "flag", np.bool_(True)) is True
    for bad in (1, "yes", None):
        with pytest.raises(ValueError, match=rf"O: flag must be a bool, got {bad!r}"):
            boolean("O", "flag", bad)


def test_optional_callable():
    assert optional_callable("O", "fn", None) is None
    assert optional_callable("O", "fn", len) is len
    with pytest.raises(TypeError, match=r"^O: fn must be a callable or None, got 3 \(int\)$"):
        optional_callable("O", "fn", 3)
