"""Fixed-point rules against Python's exact integer / Fraction arithmetic."""

from fractions import Fraction
import math

import numpy as np
import pytest
from hypothesis import given, strategies as st

from host.fixedpoint import Format, quantize, requantize, round_shift, saturate, wrap


@pytest.mark.parametrize("width, frac, message", [
    (1, 0, "`width` must be between 2 and 48 bits, not 1"),
    (16, 16, "`frac` must be between 0 and width - 1 = 15, not 16"),
    (16, -1, "`frac` must be between 0 and width - 1 = 15, not -1"),
])
def test_format_rejects_bad_parameters(width, frac, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        Format(width, frac)


def test_format_rejects_non_integers():
    with pytest.raises(TypeError, match="`width` must be an integer, not 16.0"):
        Format(16.0, 8)


@given(st.integers(-2**40, 2**40), st.integers(0, 20))
def test_round_shift_is_round_half_up(value, shift):
    expected = math.floor(Fraction(value, 2**shift) + Fraction(1, 2))
    assert int(round_shift(np.array([value]), shift)[0]) == expected


@given(st.integers(-2**45, 2**45), st.integers(2, 40))
def test_wrap_is_twos_complement(value, width):
    got = int(wrap(np.array([value]), width)[0])
    assert -(2**(width - 1)) <= got < 2**(width - 1)
    assert (got - value) % 2**width == 0


@given(st.floats(-1e6, 1e6, allow_nan=False), st.integers(2, 32), st.data())
def test_quantize_rounds_half_up_and_saturates(x, width, data):
    frac = data.draw(st.integers(0, width - 1))
    fmt = Format(width, frac)
    exact = math.floor(Fraction(x) * 2**frac + Fraction(1, 2))
    expected = min(max(exact, fmt.min_int), fmt.max_int)
    assert int(quantize(np.array([x]), fmt)[0]) == expected


def test_requantize_saturates_both_ends():
    fmt = Format(8, 4)
    assert list(requantize(np.array([10**6, -10**6, 24]), 4, fmt)) == [127, -128, 2]
    assert list(saturate(np.array([200, -200]), fmt)) == [127, -128]


def test_quantize_refuses_nan():
    with pytest.raises(ValueError, match="NaN"):
        quantize(np.array([np.nan]), Format(16, 8))
