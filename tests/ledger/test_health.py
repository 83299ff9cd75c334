"""The ledger's health metrics (ledger.health) against a real nats-server and a real LMDB
ledger: ``ledger_lag_s`` and ``ledger_verified`` arrive on ``pretrade.v1.metrics.strategy.firm``
with the right values and event timestamps, a tampered entry turns ``ledger_verified`` to 0,
db_watchdog fires on what the ledger publishes, and failures to publish never stop ingest."""

from __future__ import annotations

import asyncio
import logging
import threading
import time

import nats.errors
import pytest

from ledger import ingest as ingest_module
from ledger.health import (
    DEFAULT_HEALTH_INTERVAL_S,
    HEALTH_INTERVAL_ENV,
    HEALTH_SUBJECT,
    METRIC_LEDGER_LAG_S,
    METRIC_LEDGER_VERIFIED,
    TailVerifier,
    health_metric,
)
from ledger.ingest import LedgerIngestWorker, LedgerWriter
from ledger.runtime import LedgerRuntime, health_interval
from ledger.store import LedgerStore
from pretrade.v1 import trading_pb2, watchdogs_pb2
from tests.ledger.ingest_harness import FAST_WORKER, connect, decision, ensure_streams, publish_decisions, wait_for_size
from tests.ledger.lmdb_tamper import key, raw_ledger
from watchdogs import portfolio
from watchdogs.config import parse_config
from watchdogs.core import FIRM, Action, EventKind
from watchdogs.subjects import strategy_metric_subject
from watchdogs.worker import WatchdogEngine

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

INTERVAL_S = 0.2
WAIT_S = 20.0
STOP_TIMEOUT_S = 10.0
WRITER_OPTIONS = {"checkpoint_every_entries": 1_000_000, "checkpoint_interval_ms": 100}


class MetricInbox:
    """Every StrategyMetric the ledger publishes, decoded, with the raw bytes for the watchdog."""

    def __init__(self) -> None:
        self.received: list[tuple[watchdogs_pb2.StrategyMetric, bytes]] = []
        self._arrived = asyncio.Event()

    async def subscribe(self, nc) -> None:
        async def on_message(msg) -> None:
            self.received.append((watchdogs_pb2.StrategyMetric.FromString(msg.data), msg.data))
            self._arrived.set()

        await nc.subscribe(HEALTH_SUBJECT, cb=on_message)
        await nc.flush()

    async def wait_for(self, predicate, timeout_s: float = WAIT_S) -> watchdogs_pb2.StrategyMetric:
        """The first metric received from now on that satisfies ``predicate``."""
        seen = len(self.received)
        deadline = time.monotonic() + timeout_s
        while True:
            for metric, _ in self.received[seen:]:
                if predicate(metric):
                    return metric
            seen = len(self.received)
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"no matching metric within {timeout_s} s; got {[str(m) for m, _ in self.received[-6:]]}"
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), remaining)
            except TimeoutError:
                pass


def is_metric(name: str, value: float | None = None):
    return lambda metric: metric.metric == name and (value is None or metric.value == value)


def db_watchdog_engine(**params) -> WatchdogEngine:
    """db_watchdog as the watchdog tests build it (tests/watchdogs/test_watchdogs.py)."""
    config = parse_config({"watchdogs": {"db_watchdog": {"consecutive": 3, "cooldown_s": 1e9, **params}}})
    return WatchdogEngine(config.build())


async def start_worker(writer: LedgerWriter, url: str, **options) -> LedgerIngestWorker:
    worker = LedgerIngestWorker(writer, **{**FAST_WORKER, "health_interval_s": INTERVAL_S, **options})
    await worker.start(url)
    assert await worker.wait_connected(10)
    return worker


async def stop(worker: LedgerIngestWorker) -> None:
    await asyncio.wait_for(worker.stop(), STOP_TIMEOUT_S)


def test_the_metrics_are_what_db_watchdog_reads():
    assert HEALTH_SUBJECT == strategy_metric_subject("firm") == "pretrade.v1.metrics.strategy.firm"
    assert (METRIC_LEDGER_LAG_S, METRIC_LEDGER_VERIFIED) == (portfolio.METRIC_LEDGER_LAG_S, portfolio.METRIC_LEDGER_VERIFIED)
    metric = watchdogs_pb2.StrategyMetric.FromString(health_metric(METRIC_LEDGER_VERIFIED, 1, 123))
    assert (metric.scope, metric.name, metric.metric, metric.value, metric.timestamp_ns) == (
        trading_pb2.SCOPE_FIRM, "", METRIC_LEDGER_VERIFIED, 1.0, 123)
    assert portfolio.metric_target(metric) == FIRM


def test_health_interval_configuration(monkeypatch, tmp_path):
    monkeypatch.delenv(HEALTH_INTERVAL_ENV, raising=False)
    assert health_interval() == DEFAULT_HEALTH_INTERVAL_S == 5.0
    monkeypatch.setenv(HEALTH_INTERVAL_ENV, "0.5")
    assert health_interval() == 0.5
    assert health_interval(2.0) == 2.0
    monkeypatch.setenv(HEALTH_INTERVAL_ENV, "soon")
    with pytest.raises(ValueError, match=HEALTH_INTERVAL_ENV):
        health_interval()
    with pytest.raises(ValueError):
        health_interval(-1.0)
    monkeypatch.setenv(HEALTH_INTERVAL_ENV, "0")
    runtime = LedgerRuntime(tmp_path / "data")
    try:
        assert runtime.worker.verifier is None  # 0: health off
    finally:
        runtime.close()
    runtime = LedgerRuntime(tmp_path / "data", health_interval_s=1.0)
    try:
        assert runtime.worker.verifier is not None
    finally:
        runtime.close()


def test_tail_verifier_without_nats(tmp_path):
    """Incremental: each pass starts at the last verified index; a failure sticks."""
    store = LedgerStore.create(tmp_path / "ledger")
    try:
        store.append_batch([b"a", b"b"])
        verifier = TailVerifier(store, verify_from=0)
        assert verifier.due() and verifier.run() and verifier.verified_index == 2
        assert not verifier.due()
        store.append_batch([b"c"])
        assert verifier.due() and verifier.run() and verifier.verified_index == 3
        fresh = TailVerifier(store)  # default: from the size at start
        assert fresh.verified_index == 3 and fresh.run()
    finally:
        store.close()
    with raw_ledger(tmp_path / "ledger") as (txn, databases):
        txn.put(key(1), b"B", db=databases["entries"])
    store = LedgerStore.open(tmp_path / "ledger")
    try:
        verifier = TailVerifier(store, verify_from=0)
        assert verifier.run() is False and verifier.passed is False
        assert "LeafHashMismatchError" in verifier.last_error
        assert verifier.due() and verifier.run() is False and verifier.verified_index == 0  # sticks
        assert TailVerifier(store, verify_from=2).run()  # what lies before the index is trusted
    finally:
        store.close()


async def test_metrics_arrive_with_correct_values(nats_server, tmp_path):
    nc, js = await connect(nats_server.url)
    inbox = MetricInbox()
    await inbox.subscribe(nc)
    await ensure_streams(js)
    await publish_decisions(js, [decision(sequence) for sequence in range(1, 51)])
    writer = LedgerWriter.open(tmp_path / "ledger", **WRITER_OPTIONS)
    started_ns = time.time_ns()
    worker = await start_worker(writer, nats_server.url)
    try:
        await wait_for_size(writer.store, 50)
        verified = await inbox.wait_for(lambda m: is_metric(METRIC_LEDGER_VERIFIED)(m) and worker.verifier.verified_index == 50)
        assert verified.value == 1.0
        lag = await inbox.wait_for(is_metric(METRIC_LEDGER_LAG_S))
        assert lag.value == 0.0  # everything committed
        for metric in (verified, lag):
            assert (metric.scope, metric.name) == (trading_pb2.SCOPE_FIRM, "")
            assert started_ns <= metric.timestamp_ns <= time.time_ns()
        # Published every interval, the verify only covering what was appended since.
        count = len(inbox.received)
        await asyncio.sleep(6 * INTERVAL_S)
        assert len(inbox.received) - count >= 6
        assert {m.value for m, _ in inbox.received[count:] if m.metric == METRIC_LEDGER_VERIFIED} == {1.0}
    finally:
        await stop(worker)
        writer.close()
        await nc.close()


async def test_lag_is_the_age_of_the_oldest_uncommitted_message_and_db_watchdog_fires(nats_server, tmp_path):
    nc, js = await connect(nats_server.url)
    inbox = MetricInbox()
    await inbox.subscribe(nc)
    await ensure_streams(js)
    writer = LedgerWriter.open(tmp_path / "ledger", **WRITER_OPTIONS)
    gate = threading.Event()
    commit = writer.commit
    writer.commit = lambda batches: (gate.wait(WAIT_S), commit(batches))[1]  # a stalled disk
    worker = await start_worker(writer, nats_server.url)
    engine = db_watchdog_engine(max_lag_s=1.0)
    try:
        published_ns = time.time_ns()
        await publish_decisions(js, [decision(sequence) for sequence in range(1, 21)])
        findings = []
        while not findings:
            metric = await inbox.wait_for(is_metric(METRIC_LEDGER_LAG_S))
            assert metric.value <= (time.time_ns() - published_ns) / 1e9 + 0.01
            findings = engine.observe_message(EventKind.METRIC, metric.SerializeToString())
        assert metric.value > 1.0
        (finding,) = findings
        assert (finding.watchdog, finding.target, finding.action, finding.consecutive) == (
            "db_watchdog", FIRM, Action.REDUCE_ONLY, 3)
        assert writer.store.size() == 0
        gate.set()
        await wait_for_size(writer.store, 20)
        await inbox.wait_for(is_metric(METRIC_LEDGER_LAG_S, 0.0))
    finally:
        gate.set()
        await stop(worker)
        writer.close()
        await nc.close()


async def test_an_entry_tampered_in_the_tail_turns_verified_to_zero(nats_server, tmp_path):
    """The tamper lands in the same write transaction as its entry, so the next verify pass
    sees the tail with it."""
    nc, js = await connect(nats_server.url)
    inbox = MetricInbox()
    await inbox.subscribe(nc)
    await ensure_streams(js)
    await publish_decisions(js, [decision(sequence) for sequence in range(1, 31)])
    writer = LedgerWriter.open(tmp_path / "ledger", **WRITER_OPTIONS)
    worker = await start_worker(writer, nats_server.url)
    engine = db_watchdog_engine()
    try:
        await wait_for_size(writer.store, 30)
        await inbox.wait_for(lambda m: is_metric(METRIC_LEDGER_VERIFIED, 1.0)(m) and worker.verifier.verified_index == 30)
        store = writer.store

        def alter_the_new_entry(txn, first_index):
            txn.put(key(first_index), b"not what was hashed", db=store._entries)

        await asyncio.to_thread(store.append_batch, [b"an entry"], also_write=alter_the_new_entry)
        findings = []
        for _ in range(3):
            metric = await inbox.wait_for(is_metric(METRIC_LEDGER_VERIFIED))
            assert metric.value == 0.0
            findings += engine.observe_message(EventKind.METRIC, metric.SerializeToString())
        assert worker.verifier.verified_index == 30 and "entry 30" in worker.verifier.last_error
        (finding,) = findings
        assert (finding.watchdog, finding.target, finding.action) == ("db_watchdog", FIRM, Action.REDUCE_ONLY)
        assert finding.observed == 0.0
        # Ingest goes on beside the failing verification.
        await publish_decisions(js, [decision(sequence) for sequence in range(31, 41)])
        await wait_for_size(store, 41)
    finally:
        await stop(worker)
        writer.close()
        await nc.close()


async def test_an_entry_tampered_while_stopped_is_found_when_verifying_from_zero(nats_server, tmp_path):
    nc, js = await connect(nats_server.url)
    inbox = MetricInbox()
    await inbox.subscribe(nc)
    await ensure_streams(js)
    await publish_decisions(js, [decision(sequence) for sequence in range(1, 21)])
    path = tmp_path / "ledger"
    writer = LedgerWriter.open(path, **WRITER_OPTIONS)
    worker = await start_worker(writer, nats_server.url)
    await wait_for_size(writer.store, 20)
    await stop(worker)
    writer.close()
    with raw_ledger(path) as (txn, databases):  # the lmdb_tamper helpers need the ledger closed
        entry = txn.get(key(7), db=databases["entries"])
        txn.put(key(7), entry[:-1] + bytes([entry[-1] ^ 1]), db=databases["entries"])

    engine = db_watchdog_engine()
    writer = LedgerWriter.open(path, **WRITER_OPTIONS)
    worker = await start_worker(writer, nats_server.url, health_verify_from=0)
    try:
        findings = []
        for _ in range(3):
            metric = await inbox.wait_for(is_metric(METRIC_LEDGER_VERIFIED))
            assert metric.value == 0.0
            findings += engine.observe_message(EventKind.METRIC, metric.SerializeToString())
        assert len(findings) == 1 and findings[0].action is Action.REDUCE_ONLY
        assert "entry 7" in worker.verifier.last_error
    finally:
        await stop(worker)
        writer.close()
    # By default only what this run appends is verified: the old tamper goes unseen.
    writer = LedgerWriter.open(path, **WRITER_OPTIONS)
    worker = await start_worker(writer, nats_server.url)
    try:
        assert (await inbox.wait_for(is_metric(METRIC_LEDGER_VERIFIED))).value == 1.0
    finally:
        await stop(worker)
        writer.close()
        await nc.close()


async def test_failures_to_measure_or_publish_never_stop_ingest(nats_server, tmp_path, monkeypatch, caplog):
    nc, js = await connect(nats_server.url)
    await ensure_streams(js)

    def broken_metric(*args):
        raise nats.errors.ConnectionClosedError()

    async def broken_lag(*args):
        raise RuntimeError("jetstream exploded")

    monkeypatch.setattr(ingest_module, "health_metric", broken_metric)
    writer = LedgerWriter.open(tmp_path / "ledger", **WRITER_OPTIONS)
    worker = await start_worker(writer, nats_server.url)
    try:
        with caplog.at_level(logging.WARNING, logger="ledger.ingest"):
            await publish_decisions(js, [decision(sequence) for sequence in range(1, 21)])
            await wait_for_size(writer.store, 20)
            await asyncio.sleep(3 * INTERVAL_S)
            worker.oldest_pending_age_s = broken_lag
            await asyncio.sleep(3 * INTERVAL_S)
            await publish_decisions(js, [decision(sequence) for sequence in range(21, 41)])
            await wait_for_size(writer.store, 40)
        assert worker.failed is None and worker.health_published == 0
        messages = [record.getMessage() for record in caplog.records]
        assert any(message.startswith("ledger_verified = 1 not published: ConnectionClosedError") for message in messages)
        assert any("jetstream exploded" in message for message in messages)
        assert all("\n" not in message for message in messages)
    finally:
        await stop(worker)
        writer.close()
        await nc.close()
