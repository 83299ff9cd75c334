"""Benchmarks of the decision outbox (order-path cost) and of publishing to JetStream.

Run: ``.venv/bin/python -m pytest bench/bench_publish.py --benchmark-only``
(``--benchmark-disable`` runs every benchmark once, as a quick smoke test).

* ``test_outbox_append_single`` / ``_batch_64``: what the order path pays per ``append``
  (one LMDB write transaction without fsync); divide the batch figure by 64 for the cost
  per decision.
* ``test_publish_throughput``: decisions/s from outbox to JetStream acks (``extra_info``
  holds ``decisions_per_s``) against a local nats-server with a file-backed stream.
"""

from __future__ import annotations

import asyncio
import itertools
import time

import pytest

from gateway.embedded_nats import EmbeddedNats
from gateway.outbox import DecisionOutbox
from gateway.publisher import DecisionPublisher
from pretrade.v1 import types_pb2

PUBLISH_ROUND_DECISIONS = 20_000
ORDER_PATH_BATCH = 64
DRAIN_TIMEOUT_S = 60.0


def decision_payload(sequence: int) -> bytes:
    """A realistic serialized accepted Decision (~110 bytes)."""
    return types_pb2.Decision(
        verdict=types_pb2.VERDICT_ACCEPT,
        sequence=sequence,
        gateway_id="gw-bench",
        rules_version="b3:0f3c2a9d41e07b55",
        received_ns=1_700_000_000_000_000_000 + sequence,
        decided_ns=1_700_000_000_000_004_000 + sequence,
        order=types_pb2.Order(
            client_order_id=f"cl-{sequence}",
            account="ACC1",
            symbol="AAPL",
            side=types_pb2.SIDE_BUY,
            order_type=types_pb2.ORDER_TYPE_LIMIT,
            time_in_force=types_pb2.TIME_IN_FORCE_DAY,
            quantity_nanos=100 * 10**9,
            price_nanos=18_912 * 10**7,
        ),
        order_handle=sequence,
    ).SerializeToString()


PAYLOAD = decision_payload(123_456)


@pytest.fixture
def outbox(tmp_path):
    box = DecisionOutbox(tmp_path / "outbox")
    yield box
    box.close()


def test_outbox_append_single(benchmark, outbox):
    sequences = itertools.count(1)

    def append_one() -> None:
        outbox.append([(next(sequences), PAYLOAD)])

    benchmark(append_one)


def test_outbox_append_batch_64(benchmark, outbox):
    sequences = itertools.count(1)

    def append_batch() -> None:
        outbox.append([(next(sequences), PAYLOAD) for _ in range(ORDER_PATH_BATCH)])

    benchmark(append_batch)
    benchmark.extra_info["decisions_per_call"] = ORDER_PATH_BATCH


def test_outbox_remove_batch_64(benchmark, outbox):
    """What the publisher pays on the event loop per acked batch."""
    removed_through = 0

    def setup() -> None:
        outbox.append(
            [(sequence, PAYLOAD) for sequence in range(outbox.last_sequence + 1, outbox.last_sequence + 65)]
        )

    def remove_batch() -> None:
        nonlocal removed_through
        removed_through += ORDER_PATH_BATCH
        outbox.remove_through(removed_through)

    benchmark.pedantic(remove_batch, setup=setup, rounds=2_000, iterations=1)


@pytest.fixture
def event_loop_for_bench():
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


def test_publish_throughput(benchmark, tmp_path, event_loop_for_bench):
    """Order path appends batches of 64 and notifies; time until JetStream acked all."""
    loop = event_loop_for_bench
    server = EmbeddedNats(tmp_path / "nats-data")
    server.start_blocking()
    outbox = DecisionOutbox(tmp_path / "outbox")
    publisher = DecisionPublisher(outbox, "gw-bench")
    payloads = [decision_payload(sequence) for sequence in range(1, PUBLISH_ROUND_DECISIONS + 1)]
    elapsed: list[float] = []

    async def publish_round() -> None:
        started = time.perf_counter()
        first = outbox.last_sequence + 1
        for offset in range(0, PUBLISH_ROUND_DECISIONS, ORDER_PATH_BATCH):
            chunk = payloads[offset : offset + ORDER_PATH_BATCH]
            outbox.append([(first + offset + index, payload) for index, payload in enumerate(chunk)])
            publisher.notify()
            await asyncio.sleep(0)  # the order path yields between requests
        deadline = time.monotonic() + DRAIN_TIMEOUT_S
        while outbox.depth:
            assert time.monotonic() < deadline, f"{outbox.depth} decisions not acked in {DRAIN_TIMEOUT_S} s"
            await asyncio.sleep(0.001)
        elapsed.append(time.perf_counter() - started)

    try:
        loop.run_until_complete(publisher.start(server.url))
        assert loop.run_until_complete(publisher.wait_connected(10))
        benchmark.pedantic(lambda: loop.run_until_complete(publish_round()), rounds=3, iterations=1)
        assert publisher.counters.decisions_published == PUBLISH_ROUND_DECISIONS * len(elapsed)
        benchmark.extra_info["decisions_per_round"] = PUBLISH_ROUND_DECISIONS
        benchmark.extra_info["decisions_per_s"] = round(PUBLISH_ROUND_DECISIONS / min(elapsed))
    finally:
        loop.run_until_complete(publisher.stop())
        outbox.close()
        server.stop_blocking()
