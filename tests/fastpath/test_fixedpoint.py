"""Exact fixed-point conversion and notional arithmetic."""

from decimal import Decimal
from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fastpath.codes import INT64_MAX, MULTIPLIER_SCALE, NOTIONAL_SCALE, PRICE_SCALE, QTY_SCALE
from fastpath.fixedpoint import FixedPointError, from_fixed, notional_micros, to_fixed


@pytest.mark.parametrize(
    ("value", "expected"),
    [("12.34", 12_340_000_000), (Decimal("0.000000001"), 1), (7, 7_000_000_000), ("-5.5", -5_500_000_000), ("0", 0)],
)
def test_to_fixed_exact(value, expected):
    assert to_fixed(value, PRICE_SCALE) == expected


@pytest.mark.parametrize(
    "value",
    [
        1.5,  # binary float
        True,
        "abc",
        "NaN",
        "Infinity",
        "0.0000000001",  # finer than 1e-9
        "1.0000000000000000000000000000001",  # beyond the default 28-digit context
        "1e-999999999",
        "1e999999999",
        "9223372036.854775808",  # one nano past int64
    ],
)
def test_to_fixed_refuses(value):
    with pytest.raises(FixedPointError):
        to_fixed(value, PRICE_SCALE)


@given(st.integers(-(2**63), 2**63 - 1))
def test_round_trip(nanos):
    assert to_fixed(from_fixed(nanos, PRICE_SCALE), PRICE_SCALE) == nanos


@given(
    st.integers(0, 10**15),
    st.integers(0, 10**15),
    st.integers(1, 10**12),  # the compiler requires contract_multiplier > 0
)
def test_notional_is_the_exact_value_rounded_up(qty, price, multiplier):
    exact = Fraction(qty, QTY_SCALE) * Fraction(price, PRICE_SCALE) * Fraction(multiplier, MULTIPLIER_SCALE)
    micros = notional_micros(qty, price, multiplier)
    if micros < INT64_MAX:
        # two ceiling steps: never below the exact value, less than two micros above it
        assert Fraction(micros, NOTIONAL_SCALE) >= exact
        assert Fraction(micros, NOTIONAL_SCALE) - exact < Fraction(2, NOTIONAL_SCALE)
    else:  # saturated: the value, or quantity x price before the multiplier, exceeds int64
        assert exact * NOTIONAL_SCALE >= INT64_MAX - 1 or qty * price > INT64_MAX * PRICE_SCALE


def test_notional_exact_for_real_instruments():
    # 300 shares at 187.25: 56 175.00
    assert notional_micros(to_fixed(300, QTY_SCALE), to_fixed("187.25", PRICE_SCALE), MULTIPLIER_SCALE) == 56_175 * NOTIONAL_SCALE
    # 2 E-mini contracts at 5 000.25, multiplier 50: 500 025.00
    assert notional_micros(2 * QTY_SCALE, to_fixed("5000.25", PRICE_SCALE), 50 * MULTIPLIER_SCALE) == 500_025 * NOTIONAL_SCALE
    # 0.00012345 BTC at 65 432.1: 8.07759... -> rounded up at the micro
    assert notional_micros(to_fixed("0.00012345", QTY_SCALE), to_fixed("65432.1", PRICE_SCALE), MULTIPLIER_SCALE) == 8_077_593


def test_notional_saturates():
    assert notional_micros(INT64_MAX, INT64_MAX, MULTIPLIER_SCALE) == INT64_MAX
