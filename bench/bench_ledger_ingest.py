"""Ledger ingest through NATS, end to end (pytest-benchmark).

    .venv/bin/python -m pytest bench/bench_ledger_ingest.py --benchmark-only     # measure
    .venv/bin/python -m pytest bench/bench_ledger_ingest.py --benchmark-disable  # quick smoke run

* ``test_ingest_throughput``: decisions already in ``PRETRADE_DECISIONS`` (a local
  nats-server, file storage); timed from the worker's start until every one is committed
  durably (fsync) with its indexes: ``extra_info["entries_per_s"]`` (best of 3 rounds) and
  ``cpu_us_per_entry`` (the benchmark process's CPU, all threads). This is what catching
  up after an outage costs, and the ceiling of sustained ingest.
* ``test_lag_under_sustained_rate`` (20k decisions/s for 10 s) and
  ``test_lag_at_gateway_peak_rate`` (``GATEWAY_PEAK_RATE_PER_S``, the gateway's peak
  StreamOrders rate, for ``PEAK_DURATION_S``): a publisher in another process sends
  decisions at a steady rate (serialized before the clock starts, written as NATS
  protocol to a plain socket, so that it takes little of the shared CPU) while the worker
  ingests. The lag is sampled in entries (published minus committed) every 50 ms and in
  seconds (``ledger_lag_s``: the age of the oldest message not committed, as db_watchdog
  sees it) every 250 ms. Reported (``extra_info``, and printed with ``-s``):
  ``max_lag_entries``, ``max_lag_s``, ``final_lag_entries`` and ``final_lag_s`` (when
  the publisher's last message was processed by NATS), ``max_lag_entries_by_quarter``
  (bounded lag does not grow from quarter to quarter), ``catch_up_s`` (from then until
  the ledger holds every message), ``published_per_s`` (the rate achieved) and
  ``worker_cpu_us_per_entry``. Asserted: every decision is in the ledger exactly once,
  in stream order.

The worker runs in the benchmark process with the garbage-collector setting of
``pretrade ledger run`` (``ledger.cli.INGEST_GC_THRESHOLD_OBJECTS``); nats-server, the
publisher and the worker share the machine's cores, as on a single host.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import multiprocessing
import socket
import time
import urllib.parse
from pathlib import Path

import nats
import pytest
from nats.js.api import StorageType, StreamConfig

from gateway.embedded_nats import EmbeddedNats
from gateway.subjects import DECISIONS_STREAM, DECISIONS_STREAM_SUBJECTS, MSG_ID_HEADER, decisions_subject
from ledger.cli import INGEST_GC_THRESHOLD_OBJECTS
from ledger.runtime import LedgerRuntime
from ledger.store import LedgerStore
from pretrade.v1 import types_pb2

GATEWAY_ID = "gw-bench"
THROUGHPUT_ENTRIES = 200_000
SMOKE_THROUGHPUT_ENTRIES = 5_000
SUSTAINED_RATE_PER_S = 20_000
SUSTAINED_DURATION_S = 10.0
#: The most decisions per second one gateway puts into JetStream: its publisher's ceiling
#: (bench_gateway "decision publishing", 84.9k/s on the development machine). The gateway
#: decides faster in bursts (StreamOrders with batches of 512: ~96k/s) but publishes on the
#: same event loop, so it sustains ~37k/s decided and published; after a burst its outbox
#: drains into the stream at this rate. README "Benchmarks" has the figures.
GATEWAY_PEAK_RATE_PER_S = 85_000
PEAK_DURATION_S = 20.0
SMOKE_SUSTAINED_RATE_PER_S = 2_000
SMOKE_SUSTAINED_DURATION_S = 1.0
PUBLISH_TICK_S = 0.01
LAG_SAMPLE_INTERVAL_S = 0.05
LAG_S_SAMPLE_EVERY = 5  # ledger_lag_s every 5th sample (250 ms)
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


async def _publish(url: str, first: int, count: int) -> None:
    """Publish decisions ``first ..`` with their message ids, flat out."""
    nc = await nats.connect(url)
    subject = decisions_subject(GATEWAY_ID)
    for sequence in range(first, first + count):
        await nc.publish(subject, decision_payload(sequence), headers={MSG_ID_HEADER: f"{GATEWAY_ID}:{sequence}"})
    await nc.flush()
    await nc.close()


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
    await _publish(url, 1, count)
    nc = await nats.connect(url)
    js = nc.jetstream()
    deadline = time.monotonic() + INGEST_TIMEOUT_S
    while await _stream_messages(js) < count:
        assert time.monotonic() < deadline, "stream not filled"
        await asyncio.sleep(0.05)
    await nc.close()


async def _ingest_all(url: str, data_dir: Path, count: int) -> tuple[float, float]:
    """Seconds from the worker's start until ``count`` entries are committed, and the
    benchmark process's CPU seconds meanwhile (every thread: receiving and committing)."""
    runtime = LedgerRuntime(data_dir)
    store = runtime.writer.store
    started = time.perf_counter()
    cpu_started = time.process_time()
    await runtime.start(url)
    try:
        deadline = started + INGEST_TIMEOUT_S
        while store.size() < count:
            assert time.perf_counter() < deadline, f"ingested {store.size()} of {count}"
            await asyncio.sleep(0.005)
        return time.perf_counter() - started, time.process_time() - cpu_started
    finally:
        await runtime.stop()


def test_ingest_throughput(benchmark, request, nats_url, tmp_path_factory) -> None:
    count = SMOKE_THROUGHPUT_ENTRIES if _is_smoke_run(request) else THROUGHPUT_ENTRIES
    asyncio.run(_fill_stream(nats_url, count))
    rates = []
    cpu_us = []

    def ingest(data_dir: Path) -> None:
        with _ingest_gc_setting():
            wall_s, cpu_s = asyncio.run(_ingest_all(nats_url, data_dir, count))
        rates.append(count / wall_s)
        cpu_us.append(cpu_s / count * 1e6)

    benchmark.pedantic(ingest, setup=lambda: ((tmp_path_factory.mktemp("ledger"),), {}), rounds=3 if not _is_smoke_run(request) else 1)
    benchmark.extra_info["entries"] = count
    benchmark.extra_info["entries_per_s"] = round(max(rates))
    benchmark.extra_info["cpu_us_per_entry"] = round(min(cpu_us), 2)
    _report(
        f"ingest of {count} decisions",
        {"entries_per_s": [round(rate) for rate in rates], "cpu_us_per_entry": [round(us, 2) for us in cpu_us]},
    )


def _publication_ticks(first: int, count: int, rate_per_s: float) -> list[bytes]:
    """The NATS protocol bytes of decisions ``first ..``, one blob per publishing tick:
    ``HPUB`` frames with the gateway's ``Nats-Msg-Id`` header, as nats-py would send them."""
    subject = decisions_subject(GATEWAY_ID).encode()
    per_tick = max(1, int(rate_per_s * PUBLISH_TICK_S))
    ticks = []
    for tick_first in range(first, first + count, per_tick):
        frames = []
        for sequence in range(tick_first, min(tick_first + per_tick, first + count)):
            headers = f"NATS/1.0\r\n{MSG_ID_HEADER}: {GATEWAY_ID}:{sequence}\r\n\r\n".encode()
            payload = decision_payload(sequence)
            sizes = b"%d %d" % (len(headers), len(headers) + len(payload))
            frames.append(b"HPUB %s %s\r\n%s%s\r\n" % (subject, sizes, headers, payload))
        ticks.append(b"".join(frames))
    return ticks


def _paced_publisher_process(url: str, first: int, count: int, rate_per_s: float, control, published) -> None:
    """Publish decisions at ``rate_per_s`` on a plain socket: every message is serialized
    before the clock starts, so the publisher costs the shared cores little (a gateway's
    own CPU is not what is measured). Handshake on ``control``: "ready", then wait for
    "go"; ``published`` (a shared integer) counts what was handed to the socket."""
    ticks = _publication_ticks(first, count, rate_per_s)
    per_tick = max(1, int(rate_per_s * PUBLISH_TICK_S))
    address = urllib.parse.urlsplit(url)
    with socket.create_connection((address.hostname, address.port)) as sock, sock.makefile("rb") as replies:
        replies.readline()  # INFO
        sock.sendall(b'CONNECT {"verbose":false,"pedantic":false,"headers":true,"protocol":1}\r\nPING\r\n')
        assert replies.readline().startswith(b"PONG"), "NATS refused the publisher"
        control.send("ready")
        control.recv()
        started = time.perf_counter()
        for number, blob in enumerate(ticks, 1):
            sock.sendall(blob)
            published.value = min(count, number * per_tick)
            time.sleep(max(0.0, started + number / rate_per_s * per_tick - time.perf_counter()))
        sock.sendall(b"PING\r\n")
        while not (line := replies.readline()).startswith(b"PONG"):  # everything sent was processed
            assert line and not line.startswith(b"-ERR"), f"NATS dropped the publisher: {line!r}"
            if line.startswith(b"PING"):
                sock.sendall(b"PONG\r\n")
        control.send(time.perf_counter() - started)


async def _ingest_at_rate(url: str, data_dir: Path, rate_per_s: float, duration_s: float) -> dict[str, object]:
    """Ingest while a publisher process sends ``rate_per_s`` decisions for ``duration_s``;
    sample the lag in entries (published minus committed) every ``LAG_SAMPLE_INTERVAL_S``
    and in seconds (``ledger_lag_s``, the age of the oldest message not committed) every
    ``LAG_S_SAMPLE_EVERY``-th time."""
    count = int(rate_per_s * duration_s)
    context = multiprocessing.get_context("fork")
    control, child_control = context.Pipe()
    published = context.Value("q", 0, lock=False)
    publisher = context.Process(
        target=_paced_publisher_process, args=(url, 1, count, rate_per_s, child_control, published), daemon=True
    )
    publisher.start()
    assert await asyncio.to_thread(control.poll, INGEST_TIMEOUT_S) and control.recv() == "ready"
    runtime = LedgerRuntime(data_dir)
    store = runtime.writer.store
    worker = runtime.worker
    await runtime.start(url)
    assert await worker.wait_connected(10)
    lag_entries: list[int] = []
    lag_s: list[float] = []
    try:
        control.send("go")
        cpu_started = time.process_time()
        while not control.poll():
            lag_entries.append(published.value - store.size())
            if (len(lag_entries) - 1) % LAG_S_SAMPLE_EVERY == 0:  # a JetStream request per source
                lag_s.append(await worker.oldest_pending_age_s())
            await asyncio.sleep(LAG_SAMPLE_INTERVAL_S)
        publish_s = control.recv()
        published_at = time.perf_counter()
        final_lag_entries = count - store.size()
        final_lag_s = await worker.oldest_pending_age_s()
        deadline = published_at + INGEST_TIMEOUT_S
        while store.size() < count:
            assert time.perf_counter() < deadline, f"ingested {store.size()} of {count}"
            await asyncio.sleep(0.005)
        catch_up_s = time.perf_counter() - published_at
        cpu_per_entry_us = (time.process_time() - cpu_started) / count * 1e6
    finally:
        publisher.join(10)
        await runtime.stop()
    counters = worker.counters  # after stop(): the commit thread counts after the commit is visible
    assert (counters.entries_appended, counters.malformed_skipped, counters.identity_conflicts) == (count, 0, 0), counters
    quarter = max(1, len(lag_entries) // 4)
    return {
        "published_per_s": round(count / publish_s),
        "max_lag_entries": max(lag_entries, default=0),
        "max_lag_s": round(max(lag_s, default=0.0), 3),
        "final_lag_entries": final_lag_entries,
        "final_lag_s": round(final_lag_s, 3),
        "max_lag_entries_by_quarter": [max(lag_entries[i : i + quarter]) for i in range(0, len(lag_entries), quarter)][:4],
        "catch_up_s": round(catch_up_s, 3),
        "worker_cpu_us_per_entry": round(cpu_per_entry_us, 2),
    }


def _assert_each_decision_once(data_dir: Path, count: int) -> None:
    """The ledger holds decisions 1..count, each exactly once, in stream order."""
    with LedgerStore.open(data_dir / "ledger", readonly=True) as store:
        assert store.size() == count
        sequences = [types_pb2.Decision.FromString(store.entry(index)[2:]).sequence for index in range(count)]
    assert sequences == list(range(1, count + 1))


def _report(name: str, figures: dict[str, object]) -> None:
    print(f"\n{name}: " + ", ".join(f"{key}={value}" for key, value in figures.items()))


def test_lag_under_sustained_rate(benchmark, request, nats_url, tmp_path) -> None:
    smoke = _is_smoke_run(request)
    rate = SMOKE_SUSTAINED_RATE_PER_S if smoke else SUSTAINED_RATE_PER_S
    duration = SMOKE_SUSTAINED_DURATION_S if smoke else SUSTAINED_DURATION_S
    figures = {}

    def run() -> None:
        with _ingest_gc_setting():
            figures.update(asyncio.run(_ingest_at_rate(nats_url, tmp_path, rate, duration)))

    benchmark.pedantic(run, rounds=1)
    benchmark.extra_info.update(figures, rate_per_s=rate, duration_s=duration)
    _report(f"lag at {rate}/s for {duration} s", figures)
    _assert_each_decision_once(tmp_path, int(rate * duration))


def test_lag_at_gateway_peak_rate(benchmark, request, nats_url, tmp_path) -> None:
    """Decisions at the gateway's peak StreamOrders rate (``GATEWAY_PEAK_RATE_PER_S``) for
    ``PEAK_DURATION_S``: the figures show whether the lag stays bounded (the per-quarter
    maxima do not grow) and how it ends. Times are reported, not asserted (shared cores);
    what is asserted is that every decision is in the ledger exactly once."""
    smoke = _is_smoke_run(request)
    rate = SMOKE_SUSTAINED_RATE_PER_S if smoke else GATEWAY_PEAK_RATE_PER_S
    duration = SMOKE_SUSTAINED_DURATION_S if smoke else PEAK_DURATION_S
    figures = {}

    def run() -> None:
        with _ingest_gc_setting():
            figures.update(asyncio.run(_ingest_at_rate(nats_url, tmp_path, rate, duration)))

    benchmark.pedantic(run, rounds=1)
    benchmark.extra_info.update(figures, rate_per_s=rate, duration_s=duration)
    _report(f"lag at the gateway's peak, {rate}/s for {duration} s", figures)
    _assert_each_decision_once(tmp_path, int(rate * duration))
