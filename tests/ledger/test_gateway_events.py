"""The gateway's ledger events: execution reports and rules loads recorded in the event
outbox before the call returns, and published to PRETRADE_EVENTS like decisions."""

from __future__ import annotations

import asyncio

import pytest

from fastpath.engine import Engine
from fastpath.reference import ReferenceKernel
from fastpath.rules import compile_rules
from gateway.outbox import DecisionOutbox
from gateway.publisher import EVENTS_TARGET, DecisionPublisher
from fastpath.rules import load_rules_with_text
from gateway.servicer import GatewayEventLog, OrderGate, RulesReloader
from gateway.subjects import EVENTS_STREAM, MSG_ID_HEADER, events_subject
from pretrade.v1 import ledger_pb2, types_pb2
from tests.clients.gateway_harness import CHECKS_RULES, write_rules
from tests.gateway.test_server_unit import PRICE, QTY, Clock, CountingPublisher, decide, order
from tests.ledger.ingest_harness import connect


GATEWAY_ID = "gwtest"


@pytest.fixture
def engine():
    engine = Engine(compile_rules(CHECKS_RULES, "test-rules.toml"), kernel_class=ReferenceKernel)
    engine.set_reference_price("AAPL", PRICE, Clock().now)
    return engine


@pytest.fixture
def outbox(tmp_path):
    box = DecisionOutbox(tmp_path / "outbox")
    yield box
    box.close()


@pytest.fixture
def event_outbox(tmp_path):
    box = DecisionOutbox(tmp_path / "event-outbox")
    yield box
    box.close()


@pytest.fixture
def gate(engine, outbox, event_outbox):
    return OrderGate(
        engine, outbox, CountingPublisher(), GATEWAY_ID, clock=Clock(),
        events=GatewayEventLog(event_outbox, CountingPublisher(), GATEWAY_ID),
    )


def recorded_events(event_outbox) -> list[ledger_pb2.GatewayEvent]:
    return [ledger_pb2.GatewayEvent.FromString(payload) for _, payload in event_outbox.pending(0, 1_000)]


def execution(client_order_id: str, execution_id: str, execution_type=types_pb2.EXECUTION_TYPE_FILL, quantity=QTY):
    return types_pb2.Execution(
        account="ACC1", client_order_id=client_order_id, execution_type=execution_type,
        last_quantity_nanos=quantity, last_price_nanos=PRICE, execution_id=execution_id,
    )


def test_every_execution_report_is_recorded_with_its_status_and_decision(gate, event_outbox):
    (accepted,) = decide(gate, [order("c1")])
    reports = [execution("c1", "ex-1", types_pb2.EXECUTION_TYPE_PARTIAL_FILL, QTY // 2), execution("c1", "ex-1"),
               execution("nope", "ex-2")]
    results = gate.apply_executions(reports)
    events = recorded_events(event_outbox)
    assert [event.sequence for event in events] == [1, 2, 3]
    assert {event.gateway_id for event in events} == {GATEWAY_ID}
    assert [event.execution_reported.execution for event in events] == reports
    assert [event.execution_reported.status for event in events] == [result.status for result in results] == [
        types_pb2.EXECUTION_STATUS_APPLIED, types_pb2.EXECUTION_STATUS_DUPLICATE, types_pb2.EXECUTION_STATUS_UNKNOWN_ORDER,
    ]
    assert [event.execution_reported.decision_sequence for event in events] == [accepted.sequence, 0, 0]
    assert gate.events.publisher.notified == 1


async def test_rules_loads_are_recorded_at_start_and_on_reload(tmp_path, engine, gate, event_outbox):
    path = write_rules(tmp_path)
    rules, text = load_rules_with_text(path, engine.interner)
    assert text == CHECKS_RULES
    gate.record_rules_loaded(rules, text)
    reloader = RulesReloader(engine, on_loaded=gate.record_rules_loaded)
    path.write_text(CHECKS_RULES.replace("max_order_qty = 1_000", "max_order_qty = 900"))
    previous, current = await reloader.reload(str(path))
    started, reloaded = (event.rules_loaded for event in recorded_events(event_outbox))
    assert (started.rules_version, started.previous_version, started.cause) == (
        rules.version, "", ledger_pb2.RULES_LOAD_CAUSE_STARTUP
    )
    assert (reloaded.rules_version, reloaded.previous_version, reloaded.cause) == (
        current, previous, ledger_pb2.RULES_LOAD_CAUSE_RELOAD
    )
    assert reloaded.text == path.read_text() and reloaded.source == str(path)
    assert engine.version == current


async def test_rules_that_cannot_be_recorded_are_not_put_in_force(tmp_path, engine):
    path = write_rules(tmp_path, CHECKS_RULES.replace("max_order_qty = 1_000", "max_order_qty = 900"))

    def unrecordable(*args):
        raise OSError("event outbox full")

    reloader = RulesReloader(engine, on_loaded=unrecordable)
    before = engine.version
    with pytest.raises(OSError):
        await reloader.reload(str(path))
    assert engine.version == before


@pytest.mark.integration
@pytest.mark.timeout(60)
async def test_events_are_published_to_their_own_stream(nats_server, event_outbox):
    log = GatewayEventLog(event_outbox, None, GATEWAY_ID)
    publisher = DecisionPublisher(event_outbox, GATEWAY_ID, target=EVENTS_TARGET, flush_interval_s=0.01)
    log.publisher = publisher
    await publisher.start(nats_server.url)
    try:
        log.record([ledger_pb2.GatewayEvent(rules_loaded=ledger_pb2.RulesLoaded(rules_version="v1", text="x"))])
        log.record([ledger_pb2.GatewayEvent(rules_loaded=ledger_pb2.RulesLoaded(rules_version="v2", text="y"))])
        for _ in range(500):
            if event_outbox.depth == 0:
                break
            await asyncio.sleep(0.01)
        assert event_outbox.depth == 0
    finally:
        await publisher.stop(2.0)
    nc, js = await connect(nats_server.url)
    try:
        info = await js.stream_info(EVENTS_STREAM)
        assert info.state.messages == 2
        first = await js.get_msg(EVENTS_STREAM, 1)
        assert first.subject == events_subject(GATEWAY_ID)
        assert first.headers[MSG_ID_HEADER] == f"{GATEWAY_ID}:1"
        assert ledger_pb2.GatewayEvent.FromString(first.data).rules_loaded.rules_version == "v1"
    finally:
        await nc.close()
