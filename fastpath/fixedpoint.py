"""Exact fixed-point arithmetic for prices, quantities and notionals.

No binary float ever takes part in a limit comparison: values arrive as ``Decimal``, ``str``
or ``int`` and become int64 counts of a fixed unit (see the scales in
:mod:`fastpath.codes`). The functions here are the *definition* of the arithmetic; the
Cython kernel reimplements :func:`notional_micros` and the saturating helpers with
``__int128`` intermediates and the parity suite proves both give the same integers.
"""

from __future__ import annotations

from decimal import Context, Decimal, Inexact, InvalidOperation, Overflow

from fastpath.codes import INT64_MAX, INT64_MIN, NOTIONAL_SCALE, PRICE_SCALE

_NANOS_PER_NOTIONAL_MICRO_SQUARED = PRICE_SCALE * PRICE_SCALE // NOTIONAL_SCALE  # 1e12

# Scaling must be exact whatever the ambient decimal context: 60 digits hold any int64
# times any of our scales, and an inexact step raises instead of rounding silently.
_EXACT = Context(prec=60, traps=[Inexact, Overflow, InvalidOperation])
_MAX_MAGNITUDE_DIGITS = 19  # no int64 count has a larger decimal exponent


class FixedPointError(ValueError):
    """A value cannot be represented exactly at the requested scale."""


def to_fixed(value: Decimal | str | int, scale: int) -> int:
    """``value`` as an integer count of ``1/scale`` units, exactly, or FixedPointError.

    Refuses floats (they are not exact), non-finite values, values with more decimal
    places than the scale holds, and values outside int64.
    """
    if isinstance(value, bool) or isinstance(value, float):
        raise FixedPointError(f"{value!r} is a binary float; pass a str, Decimal or int")
    try:
        dec = value if isinstance(value, Decimal) else Decimal(value)
    except (InvalidOperation, TypeError, ValueError):
        raise FixedPointError(f"{value!r} is not a number") from None
    if not dec.is_finite():
        raise FixedPointError(f"{value!r} is not finite")
    if dec and dec.adjusted() > _MAX_MAGNITUDE_DIGITS:
        raise FixedPointError(f"{value} is out of range at scale 1/{scale}")
    try:
        scaled = _EXACT.multiply(dec, scale)
    except (Inexact, Overflow, InvalidOperation):
        raise FixedPointError(f"{value} has more precision than 1/{scale}") from None
    if scaled != _EXACT.to_integral_value(scaled):
        raise FixedPointError(f"{value} has more precision than 1/{scale}")
    result = int(scaled)
    if not INT64_MIN <= result <= INT64_MAX:
        raise FixedPointError(f"{value} is out of range at scale 1/{scale}")
    return result


def from_fixed(value: int, scale: int) -> Decimal:
    """The exact Decimal of an integer count of ``1/scale`` units."""
    return Decimal(value) / Decimal(scale)


def ceil_div(numerator: int, denominator: int) -> int:
    """Ceiling of ``numerator / denominator`` for a positive denominator."""
    return -(-numerator // denominator)


def saturate(value: int) -> int:
    """Clamp an integer into int64; the kernel's saturating arithmetic does the same."""
    if value > INT64_MAX:
        return INT64_MAX
    if value < INT64_MIN:
        return INT64_MIN
    return value


def notional_micros(qty_nanos: int, price_nanos: int, multiplier_nanos: int) -> int:
    """Notional of ``qty`` at ``price`` times the contract multiplier, in currency micros.

    Defined in two ceiling steps so that the kernel can compute it with ``__int128``:
    ``ceil(ceil(qty * price / 1e9) * multiplier / 1e12)``. The result is exact whenever the
    true notional has at most six decimals (true for every instrument whose tick x lot x
    multiplier does); otherwise it rounds up, the conservative direction for a limit.
    Arguments must be >= 0 (and the multiplier > 0). A result that does not fit int64
    saturates to INT64_MAX, which no finite limit admits; so does an order whose
    quantity x price alone exceeds ~9.2e9 currency units, whatever its multiplier.
    """
    contract_value = ceil_div(qty_nanos * price_nanos, PRICE_SCALE)  # scale 1e-9
    if contract_value > INT64_MAX:
        return INT64_MAX
    return saturate(ceil_div(contract_value * multiplier_nanos, _NANOS_PER_NOTIONAL_MICRO_SQUARED))
