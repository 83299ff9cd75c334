"""The ingest worker against a real nats-server and a real LMDB ledger: every stream,
exactly once through redelivery and re-publication, resume from LMDB, ack after commit,
late streams, NATS restarts, signed checkpoints published on NATS, lag."""

from __future__ import annotations

import asyncio

import pytest

from gateway.subjects import DECISIONS_STREAM, LEDGER_CHECKPOINT_SUBJECT
from ledger.checkpoint import verify_checkpoint
from ledger.entries import EntryKind, encode_entry
from ledger.ingest import DECISIONS_SOURCE, LedgerIngestWorker, LedgerWriter
from ledger.layout import write_key_pair
from ledger.runtime import LedgerRuntime
from tests.ledger.ingest_harness import (
    BASE_NS,
    FAST_WORKER,
    GATEWAY_ID,
    connect,
    decision,
    ensure_streams,
    execution_event,
    halt_event,
    identities_by_kind,
    publish_decisions,
    publish_gateway_events,
    publish_halt_events,
    rules_event,
    wait_for_size,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

STOP_TIMEOUT_S = 10.0


def writer_options(**overrides):
    return {"checkpoint_every_entries": 1_000_000, "checkpoint_interval_ms": 100, **overrides}


async def run_worker(writer: LedgerWriter, url: str) -> LedgerIngestWorker:
    worker = LedgerIngestWorker(writer, **FAST_WORKER)
    await worker.start(url)
    assert await worker.wait_connected(10)
    return worker


async def stop(worker: LedgerIngestWorker) -> None:
    await asyncio.wait_for(worker.stop(), STOP_TIMEOUT_S)


async def test_every_stream_becomes_canonical_entries(nats_server, tmp_path):
    nc, js = await connect(nats_server.url)
    await ensure_streams(js)
    decisions = [decision(sequence, trace_id=f"t{sequence}") for sequence in range(1, 51)]
    events = [rules_event(1), execution_event(2, client_order_id="cl-1", decision_sequence=1)]
    halts = [halt_event(f"h{number}", at_ns=BASE_NS + number) for number in range(3)]
    await publish_decisions(js, decisions)
    await publish_gateway_events(js, events)
    await publish_halt_events(js, halts)
    writer = LedgerWriter.open(tmp_path / "ledger", **writer_options())
    worker = await run_worker(writer, nats_server.url)
    try:
        await wait_for_size(writer.store, 55)
        stored = {writer.store.entry(index) for index in range(55)}
        assert stored == (
            {encode_entry(EntryKind.DECISION, message.SerializeToString()) for message in decisions}
            | {encode_entry(EntryKind.GATEWAY_EVENT, message.SerializeToString()) for message in events}
            | {encode_entry(EntryKind.HALT_EVENT, message.SerializeToString()) for message in halts}
        )
        assert len(writer.indexes.order_entries("ACC1", "cl-1")) == 2  # the decision and its fill
        assert len(writer.indexes.trace_entries("t7")) == 1
        await asyncio.sleep(0.3)  # one checkpoint interval
        assert writer.store.latest_checkpoint().checkpoint.tree_size == 55
        assert all(lag.pending_messages == 0 for lag in worker.lag().values())
        assert await worker.consumer_lag() == {"decisions": 0, "gateway-events": 0, "halt-events": 0}
    finally:
        await stop(worker)
        writer.close()
        await nc.close()


async def test_republished_messages_are_stored_once(nats_server, tmp_path):
    """Copies published without a Nats-Msg-Id (as after the duplicate window) are dropped."""
    nc, js = await connect(nats_server.url)
    await ensure_streams(js)
    await publish_decisions(js, [decision(sequence) for sequence in range(1, 101)])
    await publish_decisions(js, [decision(sequence) for sequence in range(1, 21)], with_msg_id=False)
    writer = LedgerWriter.open(tmp_path / "ledger", **writer_options())
    worker = await run_worker(writer, nats_server.url)
    try:
        await wait_for_size(writer.store, 100)
        await asyncio.sleep(0.3)
        assert writer.store.size() == 100
        assert writer.counters.duplicates_dropped == 20
        assert identities_by_kind(writer.store)[EntryKind.DECISION] == [(GATEWAY_ID, sequence) for sequence in range(1, 101)]
        assert writer.position(DECISIONS_SOURCE.name) == 120
    finally:
        await stop(worker)
        writer.close()
        await nc.close()


async def test_a_restart_resumes_from_the_ledger_even_without_its_consumer(nats_server, tmp_path):
    nc, js = await connect(nats_server.url)
    await ensure_streams(js)
    await publish_decisions(js, [decision(sequence) for sequence in range(1, 101)])
    path = tmp_path / "ledger"
    writer = LedgerWriter.open(path, **writer_options())
    worker = await run_worker(writer, nats_server.url)
    await wait_for_size(writer.store, 100)
    await stop(worker)
    writer.close()

    await js.delete_consumer(DECISIONS_STREAM, DECISIONS_SOURCE.durable_name)  # consumer state lost
    await publish_decisions(js, [decision(sequence) for sequence in range(101, 201)])
    writer = LedgerWriter.open(path, **writer_options())
    worker = await run_worker(writer, nats_server.url)
    try:
        await wait_for_size(writer.store, 200)
        await asyncio.sleep(0.3)
        assert writer.store.size() == 200
        assert writer.counters.duplicates_dropped == 0  # resumed after entry 100, not from the start
        assert identities_by_kind(writer.store)[EntryKind.DECISION] == [(GATEWAY_ID, sequence) for sequence in range(1, 201)]
        assert writer.store.verify().tree_size == 200
    finally:
        await stop(worker)
        writer.close()
        await nc.close()


async def test_nothing_is_acknowledged_unless_committed(nats_server, tmp_path, monkeypatch):
    nc, js = await connect(nats_server.url)
    await ensure_streams(js)
    await publish_decisions(js, [decision(sequence) for sequence in range(1, 31)])
    path = tmp_path / "ledger"
    writer = LedgerWriter.open(path, **writer_options())

    def full_disk(batches):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(writer, "commit", full_disk)
    worker = LedgerIngestWorker(writer, **FAST_WORKER)
    running = asyncio.create_task(worker.run(nats_server.url))
    done, _ = await asyncio.wait([running], timeout=60)
    assert done, f"the worker did not stop after its commit failed: {asyncio.all_tasks()}"
    with pytest.raises(OSError, match="No space"):
        running.result()
    info = await js.consumer_info(DECISIONS_STREAM, DECISIONS_SOURCE.durable_name)
    assert info.ack_floor.stream_seq == 0
    assert writer.store.size() == 0
    monkeypatch.undo()
    writer.close()

    writer = LedgerWriter.open(path, **writer_options())
    worker = await run_worker(writer, nats_server.url)
    try:
        await wait_for_size(writer.store, 30)
        info = await js.consumer_info(DECISIONS_STREAM, DECISIONS_SOURCE.durable_name)
        for _ in range(50):
            if info.ack_floor.stream_seq == 30:
                break
            await asyncio.sleep(0.05)
            info = await js.consumer_info(DECISIONS_STREAM, DECISIONS_SOURCE.durable_name)
        assert info.ack_floor.stream_seq == 30
    finally:
        await stop(worker)
        writer.close()
        await nc.close()


async def test_streams_created_after_the_worker_started_are_ingested(nats_server, tmp_path):
    writer = LedgerWriter.open(tmp_path / "ledger", **writer_options())
    worker = await run_worker(writer, nats_server.url)
    nc, js = await connect(nats_server.url)
    try:
        await asyncio.sleep(0.3)
        await ensure_streams(js)
        await publish_decisions(js, [decision(sequence) for sequence in range(1, 11)])
        await publish_halt_events(js, [halt_event("late", at_ns=BASE_NS)])
        await wait_for_size(writer.store, 11)
    finally:
        await stop(worker)
        writer.close()
        await nc.close()


async def test_ingest_survives_a_nats_restart(nats_server, tmp_path):
    nc, js = await connect(nats_server.url)
    await ensure_streams(js)
    await publish_decisions(js, [decision(sequence) for sequence in range(1, 51)])
    await nc.close()
    writer = LedgerWriter.open(tmp_path / "ledger", **writer_options())
    worker = await run_worker(writer, nats_server.url)
    try:
        await wait_for_size(writer.store, 50)
        await asyncio.to_thread(nats_server.restart)
        nc, js = await connect(nats_server.url)
        await publish_decisions(js, [decision(sequence) for sequence in range(51, 101)])
        await wait_for_size(writer.store, 100)
        await asyncio.sleep(0.3)
        assert identities_by_kind(writer.store)[EntryKind.DECISION] == [(GATEWAY_ID, sequence) for sequence in range(1, 101)]
    finally:
        await stop(worker)
        writer.close()
        await nc.close()


async def test_checkpoints_are_signed_and_published(nats_server, tmp_path):
    data_dir = tmp_path / "data"
    signer = write_key_pair(data_dir, "test.example/ledger")
    nc, js = await connect(nats_server.url)
    await ensure_streams(js)
    notes: asyncio.Queue[str] = asyncio.Queue()

    async def on_checkpoint(msg):
        await notes.put(msg.data.decode("utf-8"))

    await nc.subscribe(LEDGER_CHECKPOINT_SUBJECT, cb=on_checkpoint)
    runtime = LedgerRuntime(
        data_dir,
        origin="test.example/ledger",
        writer_options={"checkpoint_every_entries": 10, "checkpoint_interval_ms": 60_000},
        worker_options=FAST_WORKER,
    )
    await runtime.start(nats_server.url)
    try:
        await publish_decisions(js, [decision(sequence) for sequence in range(1, 11)])
        note = await asyncio.wait_for(notes.get(), 20)
        checkpoint = verify_checkpoint(note, [signer.verifier()])
        assert (checkpoint.origin, checkpoint.tree_size) == ("test.example/ledger", 10)
        assert checkpoint.root_hash == runtime.writer.store.root(10)
        assert runtime.writer.store.verify(checkpoint_verifiers=[signer.verifier()]).checkpoints_verified == 1
        await publish_decisions(js, [decision(sequence) for sequence in range(11, 14)])
        await wait_for_size(runtime.writer.store, 13)
    finally:
        await asyncio.wait_for(runtime.stop(), STOP_TIMEOUT_S)
    # Stopping checkpoints what the interval had not covered yet.
    final = verify_checkpoint(await asyncio.wait_for(notes.get(), 5), [signer.verifier()])
    assert final.tree_size == 13
    await nc.close()
