"""Helpers of the ingest tests: realistic payloads, the three streams, publishing, waiting.

Payloads are built the way their producers build them (the gateway's Decision and
GatewayEvent, the halt manager's HaltEvent) and published raw into JetStream with the
producers' ``Nats-Msg-Id`` convention, so the ledger sees exactly what production sends.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable

import nats
import nats.js.errors
from nats.js.api import StorageType, StreamConfig

from gateway.subjects import (
    DECISIONS_STREAM,
    DECISIONS_STREAM_SUBJECTS,
    EVENTS_STREAM,
    EVENTS_STREAM_SUBJECTS,
    MSG_ID_HEADER,
    decisions_subject,
    events_subject,
)
from halts.subjects import EVENTS_STREAM as HALT_EVENTS_STREAM
from halts.subjects import EVENTS_STREAM_SUBJECTS as HALT_EVENTS_STREAM_SUBJECTS
from halts.subjects import event_subject
from ledger.entries import EntryKind, decode_entry
from ledger.store import LedgerStore
from pretrade.v1 import halts_pb2, ledger_pb2, trading_pb2, types_pb2

GATEWAY_ID = "gw1"
BASE_NS = 1_800_000_000_000_000_000
WAIT_TIMEOUT_S = 30.0
DUPLICATE_WINDOW_S = 120.0

#: Worker settings that keep tests quick: small pulls, short expiry, fast retries.
FAST_WORKER = {"fetch_batch_max": 200, "max_uncommitted": 2_000, "pull_expires_s": 1.0, "retry_interval_s": 0.1}

STREAMS = (
    (DECISIONS_STREAM, DECISIONS_STREAM_SUBJECTS),
    (EVENTS_STREAM, EVENTS_STREAM_SUBJECTS),
    (HALT_EVENTS_STREAM, HALT_EVENTS_STREAM_SUBJECTS),
)


def decision(sequence: int, *, gateway_id: str = GATEWAY_ID, account: str = "ACC1", client_order_id: str | None = None,
             trace_id: str = "", rejected_with: str | None = None) -> types_pb2.Decision:
    result = types_pb2.Decision(
        verdict=types_pb2.VERDICT_REJECT if rejected_with else types_pb2.VERDICT_ACCEPT,
        sequence=sequence,
        gateway_id=gateway_id,
        rules_version="c0ffee" * 10,
        received_ns=BASE_NS + sequence % 10**9 * 1_000,
        decided_ns=BASE_NS + sequence % 10**9 * 1_000 + 400,
        order=types_pb2.Order(
            client_order_id=client_order_id or f"cl-{sequence}",
            account=account,
            symbol="AAPL",
            side=types_pb2.SIDE_BUY,
            order_type=types_pb2.ORDER_TYPE_LIMIT,
            quantity_nanos=100 * 10**9,
            price_nanos=189 * 10**9,
            trace_id=trace_id,
        ),
    )
    if rejected_with:
        result.failures.add(code=rejected_with, limit=10, observed=100, rule_path="firm.limits.max_order_qty")
    else:
        result.order_handle = sequence
    return result


def execution_event(sequence: int, *, client_order_id: str, account: str = "ACC1", decision_sequence: int = 0,
                    execution_type: int = types_pb2.EXECUTION_TYPE_FILL,
                    status: int = types_pb2.EXECUTION_STATUS_APPLIED) -> ledger_pb2.GatewayEvent:
    return ledger_pb2.GatewayEvent(
        gateway_id=GATEWAY_ID,
        sequence=sequence,
        occurred_ns=BASE_NS + 10_000_000 + sequence,
        execution_reported=ledger_pb2.ExecutionReported(
            execution=types_pb2.Execution(
                account=account,
                client_order_id=client_order_id,
                execution_type=execution_type,
                last_quantity_nanos=100 * 10**9,
                last_price_nanos=189 * 10**9,
                execution_id=f"ex-{sequence}",
            ),
            status=status,
            decision_sequence=decision_sequence,
        ),
    )


def rules_event(sequence: int, version: str = "c0ffee" * 10, text: str = "[firm]\nname = \"T\"\n") -> ledger_pb2.GatewayEvent:
    return ledger_pb2.GatewayEvent(
        gateway_id=GATEWAY_ID,
        sequence=sequence,
        occurred_ns=BASE_NS + sequence,
        rules_loaded=ledger_pb2.RulesLoaded(
            rules_version=version, source="/etc/pretrade/rules.toml", text=text, cause=ledger_pb2.RULES_LOAD_CAUSE_STARTUP
        ),
    )


def halt_event(event_id: str, *, at_ns: int, scope: int = trading_pb2.SCOPE_SYMBOL, name: str = "AAPL",
               state: int = trading_pb2.TRADING_STATE_HALTED) -> halts_pb2.HaltEvent:
    return halts_pb2.HaltEvent(
        event_id=event_id,
        type=halts_pb2.HALT_EVENT_TYPE_STATE_CHANGED,
        at_ns=at_ns,
        actor="alice",
        reason="news pending",
        scope=scope,
        name=name,
        state=state,
        previous_state=trading_pb2.TRADING_STATE_ACTIVE,
        requested_by="alice",
    )


async def ensure_streams(js) -> None:
    """The three streams as their producers create them (file storage, dedup window)."""
    for name, subjects in STREAMS:
        try:
            await js.stream_info(name)
        except nats.js.errors.NotFoundError:
            await js.add_stream(StreamConfig(name=name, subjects=list(subjects), storage=StorageType.FILE,
                                             duplicate_window=DUPLICATE_WINDOW_S))


async def publish(js, subject: str, messages: Iterable, msg_id=None) -> None:
    """Publish serialized ``messages`` on ``subject`` and wait for JetStream's acks;
    ``msg_id(message)`` gives the ``Nats-Msg-Id`` (None: no header)."""
    for message in messages:
        headers = {MSG_ID_HEADER: msg_id(message)} if msg_id else None
        await js.publish(subject, message.SerializeToString(), headers=headers)


async def publish_decisions(js, decisions: Iterable[types_pb2.Decision], *, with_msg_id: bool = True) -> None:
    await publish(js, decisions_subject(GATEWAY_ID), decisions,
                  (lambda d: f"{d.gateway_id}:{d.sequence}") if with_msg_id else None)


async def publish_gateway_events(js, events: Iterable[ledger_pb2.GatewayEvent]) -> None:
    await publish(js, events_subject(GATEWAY_ID), events, lambda e: f"{e.gateway_id}:{e.sequence}")


async def publish_halt_events(js, events: Iterable[halts_pb2.HaltEvent]) -> None:
    await publish(js, event_subject("state"), events, lambda e: e.event_id)


async def connect(url: str):
    nc = await nats.connect(url)
    return nc, nc.jetstream()


async def wait_for_size(store: LedgerStore, size: int, timeout_s: float = WAIT_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while store.size() < size:
        assert time.monotonic() < deadline, f"ledger holds {store.size()} entries, {size} expected"
        await asyncio.sleep(0.02)


def decoded_entries(store: LedgerStore) -> list:
    return [decode_entry(store.entry(index)) for index in range(store.size())]


def identities_by_kind(store: LedgerStore) -> dict[EntryKind, list]:
    """Every entry's (gateway id, sequence) or event id, by kind, in ledger order."""
    result: dict[EntryKind, list] = {kind: [] for kind in EntryKind}
    for decoded in decoded_entries(store):
        message = decoded.message
        key = message.event_id if decoded.kind is EntryKind.HALT_EVENT else (message.gateway_id, message.sequence)
        result[decoded.kind].append(key)
    return result
