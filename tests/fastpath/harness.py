"""A small driver for the fast path in tests: orders by name and decimal strings.

Used by the boundary tests and parity tests against both implementations (the compiled
kernel and the reference evaluator), uvloop-style.
"""

from __future__ import annotations

import itertools
from decimal import Decimal

from fastpath.codes import NS_PER_MS, PRICE_SCALE, QTY_SCALE, Check, OrderType, Side
from fastpath.engine import Engine
from fastpath.fixedpoint import to_fixed
from fastpath.rules import compile_rules

#: A fixed "now" (Unix epoch ns) so tests are deterministic; time is always an argument.
T0 = 1_700_000_000 * 1_000_000_000


def qty(value: str | int) -> int:
    return to_fixed(Decimal(str(value)), QTY_SCALE)


def px(value: str | int) -> int:
    return to_fixed(Decimal(str(value)), PRICE_SCALE)


class Harness:
    """An engine on an inline rules text, with reference prices set at ``T0``."""

    def __init__(self, rules_text: str, kernel_class, *, prices: dict[str, str] | None = None, **capacities):
        self.rules = compile_rules(rules_text, "test-rules.toml")
        self.engine = Engine(self.rules, kernel_class=kernel_class, **capacities)
        self.now = T0
        self._ids = itertools.count(1)
        for symbol, price in (prices or {}).items():
            self.engine.set_reference_price(symbol, px(price), T0)

    def advance_ms(self, ms: int) -> None:
        self.now += ms * NS_PER_MS

    def order(
        self,
        account: str = "ACC1",
        symbol: str = "AAA",
        side: Side = Side.BUY,
        quantity: str | int = "1",
        price: str | int = "100",
        order_type: OrderType = OrderType.LIMIT,
        strategy: str = "",
        client_order_id: str | None = None,
    ):
        cid = client_order_id or f"c{next(self._ids)}"
        p = 0 if order_type == OrderType.MARKET else px(price)
        return self.engine.check(account, symbol, strategy, side, order_type, qty(quantity), p, cid, self.now)

    def failed(self, result) -> set[Check]:
        return {f.code for f in self.engine.failures(result)}

    def failure(self, result, code: Check):
        return next(f for f in self.engine.failures(result) if f.code == code)
