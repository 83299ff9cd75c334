"""Watchdog engine throughput: one decision through every pre-trade flow watchdog.

    .venv/bin/python -m pytest bench/bench_watchdogs.py --benchmark-only      # measure
    .venv/bin/python -m pytest bench/bench_watchdogs.py --benchmark-disable   # quick smoke

The worker decodes each NATS message and hands it to :class:`WatchdogEngine`; the engine's
cost per event bounds how many decisions a second one worker can watch. Decisions come
from 50 strategies over 4 accounts and 3 symbols, a tenth rejected, none breaching (the
common case: watching, not acting).
"""

from __future__ import annotations

from pretrade.v1 import types_pb2
from watchdogs.config import default_config
from watchdogs.core import NANOS_PER_SECOND, EventKind
from watchdogs.worker import WatchdogEngine

T0_NS = 1_700_000_000 * NANOS_PER_SECOND
DECISIONS_PER_SECOND = 2_000  # event-time spacing of the stream
DECISIONS = 200_000


def _decision_payloads(count: int) -> list[bytes]:
    payloads = []
    for index in range(count):
        decision = types_pb2.Decision(
            verdict=types_pb2.VERDICT_REJECT if index % 10 == 0 else types_pb2.VERDICT_ACCEPT,
            sequence=index + 1, gateway_id="gw",
            received_ns=T0_NS + index * NANOS_PER_SECOND // DECISIONS_PER_SECOND,
            order=types_pb2.Order(
                client_order_id=f"cl-{index}", account=f"ACC{index % 4}", strategy=f"S{index % 50}",
                symbol=("AAPL", "MSFT", "IBM")[index % 3], side=types_pb2.SIDE_BUY,
                order_type=types_pb2.ORDER_TYPE_LIMIT, quantity_nanos=NANOS_PER_SECOND,
                price_nanos=100 * NANOS_PER_SECOND,
            ),
        )
        payloads.append(decision.SerializeToString())
    return payloads


def test_engine_decision_throughput(benchmark):
    engine = WatchdogEngine(default_config().build())
    # more than the rounds pytest-benchmark runs, so event time only moves forward
    payloads = iter(_decision_payloads(DECISIONS))

    def observe_one():
        engine.observe_message(EventKind.DECISION, next(payloads))

    benchmark(observe_one)
    assert engine.malformed_messages == 0
