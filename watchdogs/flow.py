"""Pre-trade flow watchdogs: windowed detectors over decisions, executions and market data.

Every window is in event time (the decision's ``received_ns``, the execution's
``transact_ns``, the price's ``timestamp_ns``), so a replay at any speed finds the same
breaches. Money here is floating point in currency units: these are monitors that ask for
a halt, not the risk decision itself (that stays fixed-point in the kernel).
"""

from __future__ import annotations

import abc
from collections import OrderedDict, deque
from dataclasses import dataclass, field

from pretrade.v1 import types_pb2
from watchdogs.core import (
    FIRM,
    NANOS_PER_SECOND,
    Action,
    Event,
    EventKind,
    Finding,
    ScopeKind,
    Target,
    Watchdog,
    WindowedWatchdog,
)

NANOS_PER_UNIT = 1_000_000_000
#: Orders (and early fills) remembered to attribute executions to a symbol, side and strategy.
DEFAULT_JOIN_CAPACITY = 100_000

_SELLS = (types_pb2.SIDE_SELL, types_pb2.SIDE_SELL_SHORT)
_FILLS = (types_pb2.EXECUTION_TYPE_FILL, types_pb2.EXECUTION_TYPE_PARTIAL_FILL)
#: Execution statuses that changed a position (unknown orders and duplicates did not).
_APPLIED = (types_pb2.EXECUTION_STATUS_APPLIED, types_pb2.EXECUTION_STATUS_OVERFILL)


def order_notional(order: types_pb2.Order, reference_price_nanos: int = 0) -> float:
    """quantity x price in currency units (the reference price for market orders)."""
    price_nanos = order.price_nanos or reference_price_nanos
    return (order.quantity_nanos / NANOS_PER_UNIT) * (price_nanos / NANOS_PER_UNIT)


def order_target(order: types_pb2.Order, scope: ScopeKind) -> Target | None:
    """The order's account, strategy or symbol as a target (None when the field is empty)."""
    if scope is ScopeKind.FIRM:
        return FIRM
    name = {
        ScopeKind.ACCOUNT: order.account,
        ScopeKind.STRATEGY: order.strategy,
        ScopeKind.SYMBOL: order.symbol,
    }[scope]
    return Target(scope, name) if name else None


def applied_fill(reported) -> bool:
    """Whether an ExecutionReported is a fill the gateway applied to a position."""
    return reported.execution.execution_type in _FILLS and reported.status in _APPLIED


class ExecutionJoin:
    """Joins each applied fill to its accepted order, whichever arrives first.

    Executions name only (account, client_order_id); the watchdogs need the order's symbol,
    side and strategy. Decisions and gateway events travel on different streams, so a fill
    can arrive before its decision: it then waits (bounded) and is released when the
    decision comes. Both tables forget their oldest entries first.
    """

    def __init__(self, max_orders: int = DEFAULT_JOIN_CAPACITY) -> None:
        self._orders: OrderedDict[tuple[str, str], types_pb2.Order] = OrderedDict()
        self._waiting: OrderedDict[tuple[str, str], list[Event]] = OrderedDict()
        self._max_orders = max_orders

    def join(self, event: Event) -> list[tuple[types_pb2.Order, Event]]:
        """The (order, fill event) pairs this event completes."""
        if event.kind is EventKind.DECISION:
            decision = event.payload
            if decision.verdict != types_pb2.VERDICT_ACCEPT:
                return []
            order = decision.order
            key = (order.account, order.client_order_id)
            self._orders[key] = order
            _bound(self._orders, self._max_orders)
            return [(order, fill) for fill in self._waiting.pop(key, [])]
        if not applied_fill(event.payload):
            return []
        execution = event.payload.execution
        key = (execution.account, execution.client_order_id)
        order = self._orders.get(key)
        if order is not None:
            return [(order, event)]
        self._waiting.setdefault(key, []).append(event)
        _bound(self._waiting, self._max_orders)
        return []


def _bound(table: OrderedDict, max_entries: int) -> None:
    while len(table) > max_entries:
        table.popitem(last=False)


class _DecisionWindowWatchdog(WindowedWatchdog):
    """Base of the watchdogs that judge a sliding window of decisions per order target: the
    order's account, strategy or symbol, as the watchdog's ``scope`` says (or the firm).

    A replayed decision repeats one already watched, so it adds nothing; neither does an
    order without a name at the scope. Subclasses say what a decision adds in
    :meth:`window_value` and what breaches in :meth:`judge_window`.
    """

    inputs = frozenset({EventKind.DECISION})

    def observe(self, event: Event) -> list[Finding]:
        decision = event.payload
        if decision.replayed:
            return []
        value = self.window_value(decision)
        if value is None:
            return []
        target = order_target(decision.order, self.scope)
        if target is None:
            return []
        return self._add_to_window(target, event.time_ns, value)

    def window_value(self, decision: types_pb2.Decision) -> float | None:
        """What the decision adds to its target's window (None: it does not count). Each
        decision counts one unless a subclass says otherwise."""
        return 1.0


class _FillWatchdog(Watchdog):
    """Base of the watchdogs fed by applied fills, each joined to its accepted order
    (:class:`ExecutionJoin`): an execution alone names neither symbol, side nor strategy.
    Subclasses judge each joined fill in :meth:`observe_fill`.
    """

    inputs = frozenset({EventKind.DECISION, EventKind.EXECUTION})

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._fills = ExecutionJoin()

    def observe(self, event: Event) -> list[Finding]:
        findings: list[Finding] = []
        for order, fill in self._fills.join(event):
            findings += self.observe_fill(order, fill)
        return findings

    @abc.abstractmethod
    def observe_fill(self, order: types_pb2.Order, fill: Event) -> list[Finding]:
        """The findings of one fill joined with the order it fills."""


class OrderRateWatchdog(_DecisionWindowWatchdog):
    """Orders per strategy (or account) in a sliding window: a runaway algo (Knight Capital,
    2012, sent millions of orders in 45 minutes) shows up here first."""

    kind = "order_rate"
    default_action = Action.HALT
    default_scope = ScopeKind.STRATEGY

    @dataclass(frozen=True)
    class Params:
        window_s: float = 1.0
        max_orders: int = 100

    def judge_window(self, target, params, window, time_ns):
        count = len(window)
        return self._judge(
            target, count > params.max_orders, time_ns, count, params.max_orders,
            f"{count} orders in {params.window_s:g} s on {target.label()} (limit {params.max_orders})",
        )


class RejectRateWatchdog(_DecisionWindowWatchdog):
    """Share of rejected orders in a sliding window: an algo hammering a limit, or a broken
    order generator."""

    kind = "reject_rate"
    default_action = Action.THROTTLE
    default_scope = ScopeKind.ACCOUNT

    @dataclass(frozen=True)
    class Params:
        window_s: float = 10.0
        max_reject_ratio: float = 0.5
        #: Fewer decisions than this in the window never breach (one reject is not a spike).
        min_decisions: int = 20

    def window_value(self, decision):
        # every decision counts, a reject as 1: the window's total over its length is the ratio
        return 1.0 if decision.verdict == types_pb2.VERDICT_REJECT else 0.0

    def judge_window(self, target, params, window, time_ns):
        ratio = window.total / len(window)
        breached = len(window) >= params.min_decisions and ratio > params.max_reject_ratio
        return self._judge(
            target, breached, time_ns, ratio, params.max_reject_ratio,
            f"{ratio:.0%} of {len(window)} orders rejected in {params.window_s:g} s on {target.label()}",
        )


class NotionalVelocityWatchdog(_DecisionWindowWatchdog):
    """Accepted notional per account in a sliding window: a fat-finger burst moves more money
    in seconds than the desk does in an hour."""

    kind = "notional_velocity"
    inputs = frozenset({EventKind.DECISION, EventKind.REFERENCE_PRICE})
    default_action = Action.REDUCE_ONLY
    default_scope = ScopeKind.ACCOUNT

    @dataclass(frozen=True)
    class Params:
        window_s: float = 10.0
        max_notional: float = 10_000_000.0

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        # a market order has no price of its own: its notional is at the reference price
        self._reference_nanos: dict[str, int] = {}

    def observe(self, event: Event) -> list[Finding]:
        if event.kind is EventKind.REFERENCE_PRICE:
            self._reference_nanos[event.payload.symbol] = event.payload.price_nanos
            return []
        return super().observe(event)

    def window_value(self, decision):
        if decision.verdict != types_pb2.VERDICT_ACCEPT:
            return None  # a rejected order moves no money
        reference_nanos = self._reference_nanos.get(decision.order.symbol, 0)
        return order_notional(decision.order, reference_nanos)

    def judge_window(self, target, params, window, time_ns):
        return self._judge(
            target, window.total > params.max_notional, time_ns, window.total, params.max_notional,
            f"{window.total:,.0f} accepted notional in {params.window_s:g} s on {target.label()}",
        )


class ConcentrationWatchdog(_FillWatchdog):
    """Share of an account's gross filled exposure in its largest symbol."""

    kind = "concentration"
    default_action = Action.WARN
    default_scope = ScopeKind.ACCOUNT

    @dataclass(frozen=True)
    class Params:
        max_share: float = 0.5
        #: Below this gross exposure (currency units) concentration is not judged.
        min_gross_notional: float = 1_000_000.0

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._positions: dict[str, dict[str, float]] = {}
        self._prices: dict[str, float] = {}

    def observe_fill(self, order: types_pb2.Order, fill: Event) -> list[Finding]:
        execution = fill.payload.execution
        quantity = execution.last_quantity_nanos / NANOS_PER_UNIT
        positions = self._positions.setdefault(order.account, {})
        positions[order.symbol] = positions.get(order.symbol, 0.0) + (
            -quantity if order.side in _SELLS else quantity
        )
        self._prices[order.symbol] = execution.last_price_nanos / NANOS_PER_UNIT
        exposures = {
            symbol: abs(position) * self._prices.get(symbol, 0.0) for symbol, position in positions.items()
        }
        gross = sum(exposures.values())
        top_symbol = max(exposures, key=exposures.get)
        share = exposures[top_symbol] / gross if gross else 0.0
        target = Target(ScopeKind.ACCOUNT, order.account)
        params = self.params_for(target)
        breached = gross >= params.min_gross_notional and share > params.max_share
        return self._judge(
            target, breached, fill.time_ns, share, params.max_share,
            f"{share:.0%} of {gross:,.0f} gross exposure of {target.label()} in {top_symbol}",
        )


class RepeatedExecutionsWatchdog(_FillWatchdog, WindowedWatchdog):
    """Executions per strategy in a window (MiFID II RTS 6 Art. 15(3)): after N repeated
    automated executions the strategy is halted until a person resumes it."""

    kind = "repeated_executions"
    default_action = Action.HALT
    default_scope = ScopeKind.STRATEGY

    @dataclass(frozen=True)
    class Params:
        window_s: float = 60.0
        max_executions: int = 100

    def observe_fill(self, order: types_pb2.Order, fill: Event) -> list[Finding]:
        target = order_target(order, self.scope)
        if target is None:
            return []
        return self._add_to_window(target, fill.time_ns)

    def judge_window(self, target, params, window, time_ns):
        count = len(window)
        return self._judge(
            target, count > params.max_executions, time_ns, count, params.max_executions,
            f"{count} executions in {params.window_s:g} s on {target.label()} "
            f"(limit {params.max_executions})",
        )


class StaleMarketDataWatchdog(Watchdog):
    """A symbol whose reference price stopped moving while the rest of the feed goes on.

    Event time is the newest timestamp seen on any input, so a symbol is stale when the
    feed as a whole has moved on ``max_age_s`` past its last price. The default response
    is an alert: the gateway already refuses orders against a reference price older than
    ``max_reference_age_ms``, and an illiquid symbol that rarely ticks must not be halted
    by default.
    """

    kind = "stale_market_data"
    inputs = frozenset({EventKind.REFERENCE_PRICE, EventKind.TRADE})
    default_action = Action.WARN
    default_scope = ScopeKind.SYMBOL

    @dataclass(frozen=True)
    class Params:
        max_age_s: float = 5.0

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._last_price_ns: dict[str, int] = {}
        self._clock_ns = 0

    def observe(self, event: Event) -> list[Finding]:
        self._clock_ns = max(self._clock_ns, event.time_ns)
        if event.kind is EventKind.REFERENCE_PRICE:
            self._last_price_ns[event.payload.symbol] = max(
                event.time_ns, self._last_price_ns.get(event.payload.symbol, 0)
            )
        findings: list[Finding] = []
        for symbol, last_ns in self._last_price_ns.items():
            target = Target(ScopeKind.SYMBOL, symbol)
            max_age_s = self.params_for(target).max_age_s
            age_s = (self._clock_ns - last_ns) / NANOS_PER_SECOND
            findings += self._judge(
                target, age_s > max_age_s, self._clock_ns, age_s, max_age_s,
                f"reference price of {symbol} is {age_s:.1f} s old while the feed moves on",
            )
        return findings


class PriceDivergenceWatchdog(Watchdog):
    """Reference price and traded price of a symbol drifting apart: one of the two feeds is
    wrong, and the price collar is checking orders against it."""

    kind = "price_divergence"
    inputs = frozenset({EventKind.REFERENCE_PRICE, EventKind.TRADE})
    default_action = Action.HALT
    default_scope = ScopeKind.SYMBOL

    @dataclass(frozen=True)
    class Params:
        max_divergence_pct: float = 2.0

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._reference_nanos: dict[str, int] = {}

    def observe(self, event: Event) -> list[Finding]:
        message = event.payload
        if event.kind is EventKind.REFERENCE_PRICE:
            self._reference_nanos[message.symbol] = message.price_nanos
            return []
        reference = self._reference_nanos.get(message.symbol)
        if not reference or message.price_nanos <= 0:
            return []
        target = Target(ScopeKind.SYMBOL, message.symbol)
        limit = self.params_for(target).max_divergence_pct
        divergence_pct = abs(message.price_nanos / reference - 1.0) * 100.0
        return self._judge(
            target, divergence_pct > limit, event.time_ns, divergence_pct, limit,
            f"{message.symbol} trades {divergence_pct:.2f} % away from its reference price",
        )


class PriceShockWatchdog(Watchdog):
    """A market-wide crash: at least ``min_symbols`` symbols down more than ``max_drop_pct``
    from their high of the last ``window_s``. Acts on the FIRM by default."""

    kind = "price_shock"
    inputs = frozenset({EventKind.REFERENCE_PRICE})
    default_action = Action.REDUCE_ONLY
    default_scope = ScopeKind.FIRM

    @dataclass(frozen=True)
    class Params:
        window_s: float = 3600.0
        max_drop_pct: float = 10.0
        min_symbols: int = 3

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        # per symbol, the candidates for the window's high: (time, price) with prices
        # strictly decreasing, so the high is the first one (amortised O(1) per price)
        self._highs: dict[str, deque[tuple[int, int]]] = {}
        self._drops_pct: dict[str, float] = {}

    def observe(self, event: Event) -> list[Finding]:
        price = event.payload
        if price.price_nanos <= 0:
            return []
        params = self.params
        highs = self._highs.setdefault(price.symbol, deque())
        while highs and highs[-1][1] <= price.price_nanos:
            highs.pop()
        highs.append((event.time_ns, price.price_nanos))
        horizon = event.time_ns - int(params.window_s * NANOS_PER_SECOND)
        while highs[0][0] < horizon:
            highs.popleft()
        high = highs[0][1]
        self._drops_pct[price.symbol] = (1.0 - price.price_nanos / high) * 100.0
        shocked = sorted(symbol for symbol, drop in self._drops_pct.items() if drop > params.max_drop_pct)
        return self._judge(
            FIRM, len(shocked) >= params.min_symbols, event.time_ns, len(shocked), params.min_symbols,
            f"{len(shocked)} symbols down more than {params.max_drop_pct:g} % within "
            f"{params.window_s:g} s: {', '.join(shocked[:10])}",
        )


class DepegWatchdog(Watchdog):
    """A pegged instrument (stablecoin, pegged FX) trading away from its peg."""

    kind = "depeg"
    inputs = frozenset({EventKind.REFERENCE_PRICE, EventKind.TRADE})
    default_action = Action.REDUCE_ONLY
    default_scope = ScopeKind.SYMBOL

    @dataclass(frozen=True)
    class Params:
        #: symbol -> peg price; symbols not listed are not watched.
        pegs: dict = field(default_factory=dict)
        max_deviation_bps: float = 50.0

    def observe(self, event: Event) -> list[Finding]:
        message = event.payload
        peg = self.params.pegs.get(message.symbol)
        if not peg or message.price_nanos <= 0:
            return []
        target = Target(ScopeKind.SYMBOL, message.symbol)
        limit = self.params_for(target).max_deviation_bps
        deviation_bps = abs(message.price_nanos / NANOS_PER_UNIT / float(peg) - 1.0) * 10_000.0
        return self._judge(
            target, deviation_bps > limit, event.time_ns, deviation_bps, limit,
            f"{message.symbol} at {message.price_nanos / NANOS_PER_UNIT:g}, "
            f"{deviation_bps:.0f} bp off its peg {peg}",
        )


#: StrategyMetric name: cumulative notional of an account's fills confirmed settled by the
#: back office or custodian (currency units, ACCOUNT scope).
METRIC_SETTLED_NOTIONAL = "settled_notional"


class SettlementWatchdog(Watchdog):
    """Fills that never settle: an account's filled notional (from the gateway's execution
    events) minus what the back office confirms settled (``settled_notional`` metric).
    Exposure that builds up unsettled is counterparty and funding risk the position limits
    do not see."""

    kind = "settlement"
    inputs = frozenset({EventKind.EXECUTION, EventKind.METRIC})
    default_action = Action.REDUCE_ONLY
    default_scope = ScopeKind.ACCOUNT

    @dataclass(frozen=True)
    class Params:
        max_unsettled_notional: float = 10_000_000.0

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._filled: dict[str, float] = {}
        self._settled: dict[str, float] = {}

    def observe(self, event: Event) -> list[Finding]:
        if event.kind is EventKind.METRIC:
            metric = event.payload
            is_settlement = metric.metric == METRIC_SETTLED_NOTIONAL
            if not is_settlement or metric.scope != int(ScopeKind.ACCOUNT) or not metric.name:
                return []
            self._settled[metric.name] = metric.value
            account = metric.name
        else:
            if not applied_fill(event.payload):
                return []
            execution = event.payload.execution
            account = execution.account
            self._filled[account] = self._filled.get(account, 0.0) + (
                execution.last_quantity_nanos / NANOS_PER_UNIT
            ) * (execution.last_price_nanos / NANOS_PER_UNIT)
        target = Target(ScopeKind.ACCOUNT, account)
        limit = self.params_for(target).max_unsettled_notional
        unsettled = self._filled.get(account, 0.0) - self._settled.get(account, 0.0)
        return self._judge(
            target, unsettled > limit, event.time_ns, unsettled, limit,
            f"{unsettled:,.0f} of filled notional on {target.label()} not settled",
        )


FLOW_WATCHDOGS: tuple[type[Watchdog], ...] = (
    OrderRateWatchdog,
    RejectRateWatchdog,
    NotionalVelocityWatchdog,
    ConcentrationWatchdog,
    RepeatedExecutionsWatchdog,
    StaleMarketDataWatchdog,
    PriceDivergenceWatchdog,
    PriceShockWatchdog,
    DepegWatchdog,
    SettlementWatchdog,
)
