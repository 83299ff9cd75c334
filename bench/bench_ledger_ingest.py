"""Ledger ingest through NATS, end to end (pytest-benchmark).

    .venv/bin/python -m pytest bench/bench_ledger_ingest.py --benchmark-only     # measure
    .venv/bin/python -m pytest bench/bench_ledger_ingest.py --benchmark-disable  # quick smoke run

* ``test_ingest_throughput``: decisions already in ``PRETRADE_DECISIONS`` (a local
  nats-server, file storage); timed from the worker's start until every one is committed
  durably (fsync) with its indexes: ``extra_info["entries_per_s"]``. This is what catching
  up after an outage costs, and the ceiling of sustained ingest.
* ``test_lag_under_sustained_rate``: a publisher in another process sends decisions at a
  steady rate while the worker ingests; the lag (published minus committed) is sampled
  every 50 ms. ``extra_info``: ``max_lag_entries``, ``max_lag_s`` (max lag / rate),
  ``catch_up_s`` (from the publisher's last message to the ledger holding it).

The worker runs in the benchmark process with the garbage-collector setting of
``pretrade ledger run`` (``ledger.cli.INGEST_GC_THRESHOLD_OBJECTS``); nats-server, the
publisher and the worker share the machine's cores, as on a single host.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import multiprocessing
import time
from pathlib import Path

import nats
import pytest
from nats.js.api import StorageType, StreamConfig

from gateway.embedded_nats import EmbeddedNats
from gateway.subjects import DECISIONS_STREAM, DECISIONS_STREAM_SUBJECTS, MSG_ID_HEADER, decisions_subject
from ledger.cli import INGEST_GC_THRESHOLD_OBJECTS
from ledger.runtime import LedgerRuntime
from pretrade.v1 import types_pb2

GATEWAY_ID = "gw-bench"
THROUGHPUT_ENTRIES = 200_000
SMOKE_THROUGHPUT_ENTRIES = 5_000
SUSTAINED_RATE_PER_S = 20_000
SUSTAINED_DURATION_S = 10.0
SMOKE_SUSTAINED_RATE_PER_S = 2_000
SMOKE_SUSTAINED_DURATION_S = 1.0
PUBLISH_TICK_S = 0.01
LAG_SAMPLE_INTERVAL_S = 0.05
INGEST_TIMEOUT_S = 300.0
BASE_NS = 1_800_000_000_000_000_000


def decision_payload(sequence: int) -> bytes:
    """A realistic serialized Decision (~140 bytes), as the gateway publishes it."""
    return types_pb2.Decision(
        verdict=types_pb2.VERDICT_ACCEPT,
        sequence=sequence,
        gateway_id=GATEWAY_ID,
        rules_version="3f2a" * 16,
        received_ns=BASE_NS + sequence * 1_000,
        decided_ns=BASE_NS + sequence * 1_000 + 350,
        order=types_pb2.Order(
            client_order_id=f"cl-{sequence}",
            account=f"ACC{sequence % 50}",
            symbol="AAPL",
            side=types_pb2.SIDE_BUY,
            order_type=types_pb2.ORDER_TYPE_LIMIT,
            quantity_nanos=100 * 10**9,
            price_nanos=18_912 * 10**7,
        ),
        order_handle=sequence,
    ).SerializeToString()


def _is_smoke_run(request: pytest.FixtureRequest) -> bool:
    return bool(request.config.getoption("benchmark_disable"))


async def _publish(url: str, first: int, count: int, rate_per_s: float | None) -> None:
    """Publish decisions ``first ..`` with their message ids, at ``rate_per_s`` (None: flat out)."""
    nc = await nats.connect(url)
    subject = decisions_subject(GATEWAY_ID)
    started = time.perf_counter()
    per_tick = max(1, int((rate_per_s or 0) * PUBLISH_TICK_S))
    sequence = first
    while sequence < first + count:
        for _ in range(min(per_tick if rate_per_s else 1_000, first + count - sequence)):
            await nc.publish(subject, decision_payload(sequence), headers={MSG_ID_HEADER: f"{GATEWAY_ID}:{sequence}"})
            sequence += 1
        if rate_per_s:
            await asyncio.sleep(max(0.0, started + (sequence - first) / rate_per_s - time.perf_counter()))
    await nc.flush()
    await nc.close()


def _publisher_process(url: str, first: int, count: int, rate_per_s: float) -> None:
    asyncio.run(_publish(url, first, count, rate_per_s))


async def _stream_messages(js) -> int:
    return (await js.stream_info(DECISIONS_STREAM)).state.messages


@contextlib.contextmanager
def _ingest_gc_setting():
    previous = gc.get_threshold()
    gc.freeze()
    gc.set_threshold(INGEST_GC_THRESHOLD_OBJECTS)
    try:
        yield
    finally:
        gc.set_threshold(*previous)
        gc.unfreeze()


@pytest.fixture
def nats_url(tmp_path: Path):
    server = EmbeddedNats(tmp_path / "nats")
    server.start_blocking()
    try:
        asyncio.run(_create_stream(server.url))
        yield server.url
    finally:
        server.stop_blocking()


async def _create_stream(url: str) -> None:
    nc = await nats.connect(url)
    await nc.jetstream().add_stream(
        StreamConfig(name=DECISIONS_STREAM, subjects=list(DECISIONS_STREAM_SUBJECTS), storage=StorageType.FILE)
    )
    await nc.close()


async def _fill_stream(url: str, count: int) -> None:
    await _publish(url, 1, count, None)
    nc = await nats.connect(url)
    js = nc.jetstream()
    deadline = time.monotonic() + INGEST_TIMEOUT_S
    while await _stream_messages(js) < count:
        assert time.monotonic() < deadline, "stream not filled"
        await asyncio.sleep(0.05)
    await nc.close()


async def _ingest_all(url: str, data_dir: Path, count: int) -> float:
    """Seconds from the worker's start until ``count`` entries are committed."""
    runtime = LedgerRuntime(data_dir)
    store = runtime.writer.store
    started = time.perf_counter()
    await runtime.start(url)
    try:
        deadline = started + INGEST_TIMEOUT_S
        while store.size() < count:
            assert time.perf_counter() < deadline, f"ingested {store.size()} of {count}"
            await asyncio.sleep(0.005)
        return time.perf_counter() - started
    finally:
        await runtime.stop()


def test_ingest_throughput(benchmark, request, nats_url, tmp_path_factory) -> None:
    count = SMOKE_THROUGHPUT_ENTRIES if _is_smoke_run(request) else THROUGHPUT_ENTRIES
    asyncio.run(_fill_stream(nats_url, count))
    rates = []

    def ingest(data_dir: Path) -> None:
        with _ingest_gc_setting():
            rates.append(count / asyncio.run(_ingest_all(nats_url, data_dir, count)))

    benchmark.pedantic(ingest, setup=lambda: ((tmp_path_factory.mktemp("ledger"),), {}), rounds=3 if not _is_smoke_run(request) else 1)
    benchmark.extra_info["entries"] = count
    benchmark.extra_info["entries_per_s"] = round(max(rates))


async def _ingest_at_rate(url: str, data_dir: Path, rate_per_s: float, duration_s: float) -> dict[str, float]:
    count = int(rate_per_s * duration_s)
    runtime = LedgerRuntime(data_dir)
    store = runtime.writer.store
    await runtime.start(url)
    publisher = multiprocessing.get_context("fork").Process(
        target=_publisher_process, args=(url, 1, count, rate_per_s), daemon=True
    )
    started = time.perf_counter()
    publisher.start()
    max_lag = 0
    try:
        while publisher.is_alive():
            expected = min(count, int((time.perf_counter() - started) * rate_per_s))
            max_lag = max(max_lag, expected - store.size())
            await asyncio.sleep(LAG_SAMPLE_INTERVAL_S)
        published_at = time.perf_counter()
        deadline = published_at + INGEST_TIMEOUT_S
        while store.size() < count:
            assert time.perf_counter() < deadline, f"ingested {store.size()} of {count}"
            await asyncio.sleep(0.005)
        catch_up_s = time.perf_counter() - published_at
    finally:
        publisher.join(10)
        await runtime.stop()
    return {"max_lag_entries": max_lag, "max_lag_s": round(max_lag / rate_per_s, 3), "catch_up_s": round(catch_up_s, 3)}


def test_lag_under_sustained_rate(benchmark, request, nats_url, tmp_path) -> None:
    smoke = _is_smoke_run(request)
    rate = SMOKE_SUSTAINED_RATE_PER_S if smoke else SUSTAINED_RATE_PER_S
    duration = SMOKE_SUSTAINED_DURATION_S if smoke else SUSTAINED_DURATION_S
    figures = {}

    def run() -> None:
        with _ingest_gc_setting():
            figures.update(asyncio.run(_ingest_at_rate(nats_url, tmp_path / "ledger", rate, duration)))

    benchmark.pedantic(run, rounds=1)
    benchmark.extra_info.update(figures, rate_per_s=rate, duration_s=duration)
    # Bounded: the ledger never falls more than a few seconds behind the stream.
    assert figures["max_lag_s"] < 5.0, figures
