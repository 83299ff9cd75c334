"""Event builders for the watchdog unit tests (times in event-time seconds from T0)."""

from __future__ import annotations

from pretrade.v1 import ledger_pb2, trading_pb2, types_pb2, watchdogs_pb2
from watchdogs.core import Event, EventKind

T0_NS = 1_700_000_000_000_000_000
NANOS = 1_000_000_000


def at(seconds: float) -> int:
    return T0_NS + int(seconds * NANOS)


def decision(t: float, *, account="ACC1", strategy="ALGO", symbol="AAPL", accept=True, qty=1.0, price=100.0,
             side=types_pb2.SIDE_BUY, client_order_id=None, sequence=1) -> Event:
    message = types_pb2.Decision(
        verdict=types_pb2.VERDICT_ACCEPT if accept else types_pb2.VERDICT_REJECT,
        sequence=sequence, gateway_id="gw", received_ns=at(t), decided_ns=at(t),
        order=types_pb2.Order(
            client_order_id=client_order_id or f"cl-{t}-{sequence}", account=account, strategy=strategy,
            symbol=symbol, side=side, order_type=types_pb2.ORDER_TYPE_LIMIT,
            quantity_nanos=int(qty * NANOS), price_nanos=int(price * NANOS),
        ),
    )
    return Event(EventKind.DECISION, at(t), message)


def fill(t: float, *, account="ACC1", client_order_id: str, qty=1.0, price=100.0, execution_id=None) -> Event:
    execution = types_pb2.Execution(
        account=account, client_order_id=client_order_id, execution_type=types_pb2.EXECUTION_TYPE_FILL,
        last_quantity_nanos=int(qty * NANOS), last_price_nanos=int(price * NANOS),
        execution_id=execution_id or f"x-{client_order_id}-{t}", transact_ns=at(t),
    )
    reported = ledger_pb2.ExecutionReported(execution=execution, status=types_pb2.EXECUTION_STATUS_APPLIED)
    return Event(EventKind.EXECUTION, at(t), reported)


def reference(t: float, symbol: str, price: float) -> Event:
    return Event(EventKind.REFERENCE_PRICE, at(t),
                 types_pb2.ReferencePrice(symbol=symbol, price_nanos=int(price * NANOS), timestamp_ns=at(t)))


def trade(t: float, symbol: str, price: float, qty: float) -> Event:
    return Event(EventKind.TRADE, at(t), watchdogs_pb2.Trade(
        symbol=symbol, price_nanos=int(price * NANOS), quantity_nanos=int(qty * NANOS), timestamp_ns=at(t)))


def news(t: float, topic: str, count: int) -> Event:
    return Event(EventKind.NEWS, at(t), watchdogs_pb2.NewsCount(
        topic=topic, count=count, interval_start_ns=at(t) - 3600 * NANOS, interval_end_ns=at(t)))


def metric(
    t: float, name: str, value: float, *, scope=trading_pb2.SCOPE_STRATEGY, target="ALGO", symbol=""
) -> Event:
    return Event(EventKind.METRIC, at(t), watchdogs_pb2.StrategyMetric(
        scope=scope, name=target, metric=name, value=value, timestamp_ns=at(t), symbol=symbol))


def health(t: float, service: str, red: bool) -> Event:
    status = watchdogs_pb2.HEALTH_STATUS_RED if red else watchdogs_pb2.HEALTH_STATUS_GREEN
    message = watchdogs_pb2.ServiceHealth(service=service, status=status, timestamp_ns=at(t))
    return Event(EventKind.HEALTH, at(t), message)
