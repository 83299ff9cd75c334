"""The stable vocabulary of the fast path: check codes, enums and fixed-point scales.

Everything here is *data the outside world relies on*: reason codes appear in decisions on
the wire, in the ledger and in operators' dashboards, so a code's name and number never
change once released. New checks get new numbers at the end.

The numeric values are mirrored as C enums in ``fastpath/kernel.pxd``; a unit test
(``tests/fastpath/test_codes.py``) proves the two agree, so the kernel and this module
cannot drift apart silently.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

# ---------------------------------------------------------------------------------------
# Fixed-point scales. Prices and quantities are int64 counts of 1e-9 units ("nanos") on the
# wire and in the kernel; notionals and exposures are int64 counts of 1e-6 currency units
# ("micros") so that a single account can carry up to ~9.2e12 currency units of exposure.
# Percentages (price collars) are parts per million of 1.0.
# ---------------------------------------------------------------------------------------
PRICE_SCALE = 1_000_000_000  # price nanos per currency unit
QTY_SCALE = 1_000_000_000  # quantity nanos per unit (share, contract, coin, lot)
MULTIPLIER_SCALE = 1_000_000_000  # contract multiplier nanos per 1.0
NOTIONAL_SCALE = 1_000_000  # notional micros per currency unit
PPM_SCALE = 1_000_000  # parts per million of 1.0 (5 % == 50_000 ppm)
NS_PER_MS = 1_000_000

INT64_MAX = (1 << 63) - 1
INT64_MIN = -(1 << 63)

#: A limit that is not configured at a scope (inheritance continues to the next scope).
LIMIT_UNSET = -1
#: A limit explicitly configured as ``"unlimited"`` (the check passes, by choice).
LIMIT_UNLIMITED = INT64_MAX


class Side(enum.IntEnum):
    """Order side. ``SELL_SHORT`` is a sale the account declares it does not hold."""

    UNSPECIFIED = 0
    BUY = 1
    SELL = 2
    SELL_SHORT = 3


def side_bit(side: int) -> int:
    """Bit of ``side`` in a restricted-sides mask (``1 << side``)."""
    return 1 << side


ALL_SIDES_MASK = side_bit(Side.BUY) | side_bit(Side.SELL) | side_bit(Side.SELL_SHORT)


class OrderType(enum.IntEnum):
    UNSPECIFIED = 0
    LIMIT = 1
    MARKET = 2


class TradingState(enum.IntEnum):
    """Trading state of a scope. The effective state of an order is the most restrictive
    state of its firm, account, strategy and symbol (the highest value)."""

    ACTIVE = 0
    REDUCING = 1  # only orders that reduce the position pass; exits are never trapped
    HALTED = 2


class Scope(enum.IntEnum):
    """Scopes a trading state can be set for."""

    FIRM = 0
    ACCOUNT = 1
    STRATEGY = 2
    SYMBOL = 3


class LimitKind(enum.IntEnum):
    """Limits resolved per account x symbol (column index in the limit tables).

    Resolution: the *account chain* (``accounts.A.symbols.S`` > ``accounts.A.limits`` >
    ``firm.limits``, first one set wins) and the *symbol cap* (``symbols.S.limits``) are
    both applied: the effective limit is the smaller of the two that are set.
    """

    MAX_ORDER_QTY = 0
    MAX_ORDER_NOTIONAL = 1
    MAX_LONG_POSITION = 2
    MAX_SHORT_POSITION = 3
    PRICE_COLLAR_PPM = 4
    PRICE_COLLAR_TICKS = 5


N_LIMIT_KINDS = len(LimitKind)


class MissingLimit(enum.IntFlag):
    """Bits of the observed value of a ``MISSING_LIMIT`` failure: which limits resolved to
    nothing for the order's account, symbol and strategy."""

    MAX_ORDER_QTY = 1 << 0
    MAX_ORDER_NOTIONAL = 1 << 1
    MAX_LONG_POSITION = 1 << 2
    MAX_SHORT_POSITION = 1 << 3
    PRICE_COLLAR = 1 << 4  # neither price_collar_pct nor price_collar_ticks resolved
    CREDIT_LIMIT = 1 << 5
    MAX_WORKING_ORDERS = 1 << 6
    ACCOUNT_ORDER_RATE = 1 << 7
    STRATEGY_ORDER_RATE = 1 << 8


class Check(enum.IntEnum):
    """Reason codes of failed checks; bit ``1 << code`` in a decision's failure mask."""

    INVALID_SIDE = 0
    INVALID_ORDER_TYPE = 1
    INVALID_QUANTITY = 2
    INVALID_PRICE = 3
    UNKNOWN_ACCOUNT = 4
    UNKNOWN_SYMBOL = 5
    UNKNOWN_STRATEGY = 6
    PRICE_OFF_TICK = 7
    QUANTITY_OFF_LOT = 8
    REFERENCE_PRICE_MISSING = 9
    REFERENCE_PRICE_STALE = 10
    MISSING_LIMIT = 11
    TRADING_HALTED = 12
    REDUCE_ONLY_VIOLATION = 13
    SYMBOL_RESTRICTED = 14
    MAX_ORDER_QTY_EXCEEDED = 15
    MAX_ORDER_NOTIONAL_EXCEEDED = 16
    PRICE_COLLAR_BREACHED = 17
    CREDIT_LIMIT_EXCEEDED = 18
    LONG_POSITION_LIMIT_EXCEEDED = 19
    SHORT_POSITION_LIMIT_EXCEEDED = 20
    ACCOUNT_ORDER_RATE_EXCEEDED = 21
    STRATEGY_ORDER_RATE_EXCEEDED = 22
    DUPLICATE_CLIENT_ORDER_ID = 23
    DUPLICATE_ORDER_CONTENT = 24
    MAX_WORKING_ORDERS_EXCEEDED = 25
    SELF_MATCH_PREVENTED = 26
    STATE_CAPACITY_EXHAUSTED = 27
    #: Set by the gateway, never by the kernel: an exception on the order path. Fail closed.
    INTERNAL_ERROR = 28
    #: Set by the gateway, never by the kernel: the halt state could not be read or is no
    #: longer being followed, so no order may pass (a halt might be in force).
    HALT_STATE_UNAVAILABLE = 29


N_CHECKS = len(Check)

#: Failures that make the rest of the catalogue meaningless (stage A). When any of these
#: fails, no further check is evaluated and no detail beyond these is reported.
STAGE_A_MASK = sum(
    1 << c
    for c in (
        Check.INVALID_SIDE,
        Check.INVALID_ORDER_TYPE,
        Check.INVALID_QUANTITY,
        Check.INVALID_PRICE,
        Check.UNKNOWN_ACCOUNT,
        Check.UNKNOWN_SYMBOL,
        Check.UNKNOWN_STRATEGY,
    )
)


class ExecStatus(enum.IntEnum):
    """Outcome of applying an execution report to kernel state."""

    OK = 0
    UNKNOWN_ORDER = 1  # the handle is not a working order (ended, or never existed)
    OVERFILL = 2  # filled more than the remaining quantity; applied, flagged
    INVALID_QUANTITY = 3  # fill quantity <= 0
    INVALID_PRICE = 4  # fill price <= 0


@dataclass(frozen=True)
class CheckInfo:
    code: Check
    category: str
    clause: str
    summary: str


#: The check catalogue with the rule clause each check serves. Rendered in docs/checks.md.
CATALOGUE: tuple[CheckInfo, ...] = (
    CheckInfo(Check.INVALID_SIDE, "validity", "15c3-5 (c)(1)(ii)", "side is BUY, SELL or SELL_SHORT"),
    CheckInfo(Check.INVALID_ORDER_TYPE, "validity", "15c3-5 (c)(1)(ii)", "order type is LIMIT or MARKET"),
    CheckInfo(Check.INVALID_QUANTITY, "validity", "15c3-5 (c)(1)(ii)", "quantity > 0"),
    CheckInfo(Check.INVALID_PRICE, "validity", "15c3-5 (c)(1)(ii)", "a limit order's price > 0"),
    CheckInfo(Check.UNKNOWN_ACCOUNT, "validity", "15c3-5 (c)(1)(i); FIA §1.1", "account is declared in the rules"),
    CheckInfo(Check.UNKNOWN_SYMBOL, "validity", "15c3-5 (c)(1)(ii); FIA §1.1", "symbol is declared in the rules"),
    CheckInfo(Check.UNKNOWN_STRATEGY, "validity", "FIA §1.1", "strategy is declared (or empty when allowed)"),
    CheckInfo(Check.PRICE_OFF_TICK, "validity", "15c3-5 (c)(1)(ii)", "limit price is a multiple of the tick size"),
    CheckInfo(Check.QUANTITY_OFF_LOT, "validity", "15c3-5 (c)(1)(ii)", "quantity is a multiple of the lot size"),
    CheckInfo(Check.REFERENCE_PRICE_MISSING, "market data", "FIA §1.3; RTS 6 Art. 15(1)(a)", "a reference price exists"),
    CheckInfo(Check.REFERENCE_PRICE_STALE, "market data", "FIA §1.3", "the reference price is younger than max_reference_age_ms"),
    CheckInfo(Check.MISSING_LIMIT, "configuration", "FIA §1.1; 15c3-5 (c)(1)(i)", "every limit the order needs is configured (or explicitly unlimited)"),
    CheckInfo(Check.TRADING_HALTED, "trading state", "RTS 6 Art. 12 (kill functionality)", "no scope of the order is HALTED"),
    CheckInfo(Check.REDUCE_ONLY_VIOLATION, "trading state", "RTS 6 Art. 12 (kill functionality)", "under REDUCING, the order only reduces the position"),
    CheckInfo(Check.SYMBOL_RESTRICTED, "restricted list", "15c3-5 (c)(2)(ii)", "symbol/side is not restricted for the firm or account"),
    CheckInfo(Check.MAX_ORDER_QTY_EXCEEDED, "order size", "15c3-5 (c)(1)(ii); RTS 6 Art. 15(1)(c)", "quantity <= max_order_qty"),
    CheckInfo(Check.MAX_ORDER_NOTIONAL_EXCEEDED, "order size", "15c3-5 (c)(1)(ii); RTS 6 Art. 15(1)(b)", "notional <= max_order_notional"),
    CheckInfo(Check.PRICE_COLLAR_BREACHED, "price", "15c3-5 (c)(1)(ii); RTS 6 Art. 15(1)(a); FIA §1.3", "limit price within the collar around the reference price"),
    CheckInfo(Check.CREDIT_LIMIT_EXCEEDED, "credit", "15c3-5 (c)(1)(i); RTS 6 Art. 15(2)", "working + filled notional + order notional <= credit_limit"),
    CheckInfo(Check.LONG_POSITION_LIMIT_EXCEEDED, "position", "15c3-5 (c)(1)(i)", "position + working buys + order <= max_long_position"),
    CheckInfo(Check.SHORT_POSITION_LIMIT_EXCEEDED, "position", "15c3-5 (c)(1)(i); 15c3-5 (c)(2)(i)", "-(position - working sells - order) <= max_short_position"),
    CheckInfo(Check.ACCOUNT_ORDER_RATE_EXCEEDED, "throttle", "RTS 6 Art. 15(1)(d)", "account order rate within order_rate_limit"),
    CheckInfo(Check.STRATEGY_ORDER_RATE_EXCEEDED, "throttle", "RTS 6 Art. 15(1)(d)", "strategy order rate within order_rate_limit"),
    CheckInfo(Check.DUPLICATE_CLIENT_ORDER_ID, "duplicates", "15c3-5 (c)(1)(ii)", "client order id not seen among recent accepted orders of the account"),
    CheckInfo(Check.DUPLICATE_ORDER_CONTENT, "duplicates", "15c3-5 (c)(1)(ii)", "no identical order within duplicate_content_window_ms"),
    CheckInfo(Check.MAX_WORKING_ORDERS_EXCEEDED, "order count", "15c3-5 (c)(1)(ii); RTS 6 Art. 15(1)(d)", "working orders + 1 <= max_working_orders"),
    CheckInfo(Check.SELF_MATCH_PREVENTED, "self-match", "MAR Art. 12(1)(a) (wash trades)", "the order does not cross the account's own working order"),
    CheckInfo(Check.STATE_CAPACITY_EXHAUSTED, "system", "FIA §1.1 (fail closed)", "the kernel has room to track the order"),
    CheckInfo(Check.INTERNAL_ERROR, "system", "FIA §1.1 (fail closed)", "no exception on the order path"),
    CheckInfo(
        Check.HALT_STATE_UNAVAILABLE,
        "trading state",
        "RTS 6 Art. 12 (kill functionality); FIA §1.1",
        "the gateway is following the current halt state",
    ),
)

assert tuple(info.code for info in CATALOGUE) == tuple(Check), "catalogue order must match Check"


def failure_names(mask: int) -> list[str]:
    """Names of the checks set in a failure mask, in code order."""
    return [c.name for c in Check if mask >> c & 1]
