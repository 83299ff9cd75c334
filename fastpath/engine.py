"""The fast path as the gateway uses it: names in, decisions and explanations out.

:class:`Engine` owns one kernel (the compiled ``fastpath.kernel.Kernel`` by default, or the
plain-Python ``ReferenceKernel``) and the compiled rules it runs on. It turns names into
interned ids with one dict lookup each, derives the client-order-id key, and turns a
failure bitmask into :class:`Failure` records with the rule path and a ``key=value``
detail. Everything else happens in the kernel.

Threading: an Engine is not thread-safe; call it from one thread (the gateway's event
loop). ``reload`` compiles nothing itself: compile off the loop with
``load_rules(path, engine.interner)`` and hand the result in; the swap is one reference
assignment in the kernel, so the order path never pauses.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from fastpath.codes import (
    CATALOGUE,
    NOTIONAL_SCALE,
    NS_PER_MS,
    PRICE_SCALE,
    QTY_SCALE,
    Check,
    ExecStatus,
    MissingLimit,
    Scope,
    Side,
    TradingState,
)
from fastpath.fixedpoint import from_fixed
from fastpath.model import CompiledRules, Interner
from fastpath.reference import (
    DEFAULT_CLIENT_ORDER_ID_MEMORY,
    DEFAULT_MAX_ORDERS,
    DEFAULT_MAX_POSITIONS,
)

try:  # the compiled kernel; absent only in a source tree that was never built
    from fastpath.kernel import Kernel as CompiledKernel
except ImportError:  # pragma: no cover - exercised only on a broken build
    CompiledKernel = None


class KernelNotBuiltError(RuntimeError):
    """The Cython kernel is not compiled (run ``make install``)."""


@dataclass(frozen=True)
class Failure:
    """One failed check, explained."""

    code: Check
    limit: int
    observed: int
    rule_path: str | None
    detail: str  # key=value pairs in display units


def client_order_key(account_id: int, client_order_id: str) -> int:
    """The 64-bit key of (account, client order id) the kernel's duplicate check uses.

    Python's tuple hash: fast, and good enough because the kernel's memory of ids lives
    and dies with this process (the hash seed may differ between processes; it never
    leaves one).
    """
    return hash((account_id, client_order_id))


class Engine:
    """Compiled rules + one kernel + name interning. See the module docstring."""

    def __init__(
        self,
        rules: CompiledRules,
        *,
        kernel_class: type | None = None,
        max_orders: int = DEFAULT_MAX_ORDERS,
        max_positions: int = DEFAULT_MAX_POSITIONS,
        client_order_id_memory: int = DEFAULT_CLIENT_ORDER_ID_MEMORY,
    ) -> None:
        if kernel_class is None:
            if CompiledKernel is None:
                raise KernelNotBuiltError("fastpath.kernel is not compiled; run `make install`")
            kernel_class = CompiledKernel
        self._rules = rules
        #: The rules version of every decision (a plain attribute: read once per order).
        self.version: str = rules.version
        self.kernel = kernel_class(
            rules,
            max_orders=max_orders,
            max_positions=max_positions,
            client_order_id_memory=client_order_id_memory,
        )
        # The order path's lookups, bound once: the interner's dicts are the same objects for
        # the life of the engine (reloads must use its interner and only add names).
        interner = rules.interner
        self._account_ids = interner.account_ids
        self._symbol_ids = interner.symbol_ids
        self._strategy_ids = interner.strategy_ids
        self._kernel_check = self.kernel.check

    # -- rules ------------------------------------------------------------------------------
    @property
    def rules(self) -> CompiledRules:
        return self._rules

    @property
    def interner(self) -> Interner:
        return self._rules.interner

    def reload(self, rules: CompiledRules) -> None:
        """Swap in rules compiled with this engine's interner; all state is kept."""
        if rules.interner is not self._rules.interner:
            raise ValueError("compile reloaded rules with load_rules(path, engine.interner)")
        self.kernel.install_rules(rules)
        self._rules = rules
        self.version = rules.version

    # -- the order path ---------------------------------------------------------------------
    def check(
        self,
        account: str,
        symbol: str,
        strategy: str,
        side: int,
        order_type: int,
        qty_nanos: int,
        price_nanos: int,
        client_order_id: str,
        now_ns: int,
    ):
        """Decide one order by names. Returns the kernel's result (``.accepted``,
        ``.failed``, ``.handle``); unknown names are rejected by the kernel."""
        account_id = self._account_ids.get(account, -1)
        return self._kernel_check(
            account_id,
            self._symbol_ids.get(symbol, -1),
            self._strategy_ids.get(strategy, -1),
            side,
            order_type,
            qty_nanos,
            price_nanos,
            client_order_key(account_id, client_order_id),
            now_ns,
        )

    def failures(self, result) -> list[Failure]:
        """Every failed check of a result, in code order, with limit, observed value,
        rule path and a readable detail."""
        failures = []
        mask = result.failed
        for info in CATALOGUE:
            if mask >> info.code & 1:
                limit, observed, path_id = result.detail(info.code)
                failures.append(
                    Failure(
                        code=info.code,
                        limit=limit,
                        observed=observed,
                        rule_path=self._rules.path(path_id),
                        detail=describe(info.code, limit, observed),
                    )
                )
        return failures

    # -- executions and market data ---------------------------------------------------------
    def fill(self, handle: int, qty_nanos: int, price_nanos: int) -> ExecStatus:
        return ExecStatus(self.kernel.fill(handle, qty_nanos, price_nanos))

    def release(self, handle: int) -> ExecStatus:
        """End a working order without a fill: cancel, venue reject or expiry."""
        return ExecStatus(self.kernel.release(handle))

    def set_reference_price(self, symbol: str, price_nanos: int, ts_ns: int) -> bool:
        """Record a reference price; False (ignored) for a symbol the rules don't declare."""
        symbol_id = self._rules.interner.symbol_ids.get(symbol, -1)
        if symbol_id < 0 or symbol not in self._rules.symbols or price_nanos <= 0:
            return False
        self.kernel.set_reference_price(symbol_id, price_nanos, ts_ns)
        return True

    def set_trading_state(self, scope: Scope, name: str, state: TradingState) -> None:
        """Set ACTIVE / REDUCING / HALTED for a scope. Names not (yet) in the rules are
        interned, so a halt on an account set before it is declared still holds later."""
        interner = self._rules.interner
        scope = Scope(scope)
        if scope == Scope.FIRM:
            scope_id = 0
        elif scope == Scope.ACCOUNT:
            scope_id = interner.account(name)
        elif scope == Scope.STRATEGY:
            scope_id = interner.strategy(name)
        else:
            scope_id = interner.symbol(name)
        self.kernel.set_trading_state(scope, scope_id, TradingState(state))

    def trading_state(self, scope: Scope, name: str) -> TradingState:
        interner = self._rules.interner
        scope = Scope(scope)
        if scope == Scope.FIRM:
            scope_id = 0
        else:
            ids = {
                Scope.ACCOUNT: interner.account_ids,
                Scope.STRATEGY: interner.strategy_ids,
                Scope.SYMBOL: interner.symbol_ids,
            }[scope]
            scope_id = ids.get(name, -1)
            if scope_id < 0:
                return TradingState.ACTIVE
        return TradingState(self.kernel.trading_state(scope, scope_id))


# ------------------------------------------------------------------------------------------
# Explanations: the unit of each failure's limit and observed value.
# ------------------------------------------------------------------------------------------


def _qty(value: int) -> str:
    return _plain(from_fixed(value, QTY_SCALE))


def _price(value: int) -> str:
    return _plain(from_fixed(value, PRICE_SCALE))


def _notional(value: int) -> str:
    return _plain(from_fixed(value, NOTIONAL_SCALE))


def _plain(value: Decimal) -> str:
    return format(value.normalize(), "f")


def _ms(value_ns: int) -> str:
    return _plain(from_fixed(value_ns, NS_PER_MS))


def _enum_name(enum_type, value: int) -> str:
    try:
        return enum_type(value).name
    except ValueError:
        return str(value)


def _sides(mask: int) -> str:
    return ",".join(side.name for side in (Side.BUY, Side.SELL, Side.SELL_SHORT) if mask >> side & 1)


def _missing(mask: int) -> str:
    return ",".join(flag.name.lower() for flag in MissingLimit if mask & flag)


def describe(code: Check, limit: int, observed: int) -> str:
    """``key=value`` detail of one failure in display units (decimal quantities and
    prices, currency notionals, milliseconds)."""
    if code == Check.INVALID_SIDE:
        return f"side={observed}"
    if code == Check.INVALID_ORDER_TYPE:
        return f"order_type={observed}"
    if code == Check.INVALID_QUANTITY:
        return f"quantity={_qty(observed)}"
    if code == Check.INVALID_PRICE:
        return f"price={_price(observed)}"
    if code in (Check.UNKNOWN_ACCOUNT, Check.UNKNOWN_SYMBOL, Check.UNKNOWN_STRATEGY):
        return "not_declared_in_rules=true"
    if code == Check.PRICE_OFF_TICK:
        return f"tick_size={_price(limit)} price={_price(observed)}"
    if code == Check.QUANTITY_OFF_LOT:
        return f"lot_size={_qty(limit)} quantity={_qty(observed)}"
    if code == Check.REFERENCE_PRICE_MISSING:
        return "reference_price=none"
    if code == Check.REFERENCE_PRICE_STALE:
        return f"max_age_ms={_ms(limit)} age_ms={_ms(observed)}"
    if code == Check.MISSING_LIMIT:
        return f"missing={_missing(observed)}"
    if code == Check.TRADING_HALTED:
        return f"scope={_enum_name(Scope, limit)} state={_enum_name(TradingState, observed)}"
    if code == Check.REDUCE_ONLY_VIOLATION:
        return f"reducible={_qty(limit)} after={_qty(observed)}"
    if code == Check.SYMBOL_RESTRICTED:
        return f"restricted_sides={_sides(limit)} side={_enum_name(Side, observed)}"
    if code in (
        Check.MAX_ORDER_QTY_EXCEEDED,
        Check.LONG_POSITION_LIMIT_EXCEEDED,
        Check.SHORT_POSITION_LIMIT_EXCEEDED,
    ):
        return f"limit={_qty(limit)} observed={_qty(observed)}"
    if code in (Check.MAX_ORDER_NOTIONAL_EXCEEDED, Check.CREDIT_LIMIT_EXCEEDED):
        return f"limit={_notional(limit)} observed={_notional(observed)}"
    if code == Check.PRICE_COLLAR_BREACHED:
        return f"band_edge={_price(limit)} price={_price(observed)}"
    if code in (Check.ACCOUNT_ORDER_RATE_EXCEEDED, Check.STRATEGY_ORDER_RATE_EXCEEDED):
        return f"orders_per_window={limit} retry_after_ms={_ms(observed)}"
    if code == Check.DUPLICATE_CLIENT_ORDER_ID:
        return "client_order_id=seen"
    if code == Check.DUPLICATE_ORDER_CONTENT:
        return f"window_ms={_ms(limit)} previous_age_ms={_ms(observed)}"
    if code == Check.MAX_WORKING_ORDERS_EXCEEDED:
        return f"limit={limit} observed={observed}"
    if code == Check.SELF_MATCH_PREVENTED:
        return f"own_opposite_price={_price(limit)} price={_price(observed)}"
    if code == Check.STATE_CAPACITY_EXHAUSTED:
        return f"capacity={limit} in_use={observed}"
    if code == Check.HALT_STATE_UNAVAILABLE:
        return "halt_state=unavailable"
    if code == Check.INTERNAL_ERROR:
        return "error=internal"
    return f"limit={limit} observed={observed}"

