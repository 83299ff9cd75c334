"""Unit tests of the order path (OrderGate) without gRPC: the real rules compiler, engine
(reference kernel: deterministic, no build needed) and the mmap outbox; the publisher is a
stand-in that counts wake-ups. Faults are injected by patching single methods."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry

from fastpath.codes import Check
from fastpath.engine import Engine
from fastpath.reference import ReferenceKernel
from fastpath.rules import compile_rules
from gateway.metrics import GatewayMetrics
from gateway.orders import OrderReader
from gateway.outbox import OutboxFullError
from gateway.servicer import UNRECORDED_SEQUENCE, OrderGate, OrderStream
from gateway.validation import ValidationLimits
from pretrade.v1 import types_pb2
from tests.clients.gateway_harness import CHECKS_RULES


READER = OrderReader(ValidationLimits())


def decide(gate, orders, stream=None) -> list[types_pb2.Decision]:
    """``OrderGate.decide`` of order messages, read as the servicer reads them, with its
    serialized decisions parsed."""
    wire_orders = [READER.order(order.SerializeToString()) for order in orders]
    assert None not in wire_orders, "the test meant to send well-formed orders"
    return [types_pb2.Decision.FromString(payload) for payload in gate.decide(wire_orders, stream)]


NOW_NS = 1_800_000_000_000_000_000
PRICE = 100 * 10**9
QTY = 10**9


class CountingPublisher:
    """Stands in for DecisionPublisher on the order path: only ``notify`` is called there."""

    def __init__(self) -> None:
        self.notified = 0
        self.connected = True
        self.outbox_depth = 0

    def notify(self) -> None:
        self.notified += 1


class Clock:
    def __init__(self) -> None:
        self.now = NOW_NS

    def __call__(self) -> int:
        self.now += 1_000
        return self.now


@pytest.fixture
def engine():
    engine = Engine(compile_rules(CHECKS_RULES, "test-rules.toml"), kernel_class=ReferenceKernel)
    engine.set_reference_price("AAPL", PRICE, NOW_NS)
    return engine


@pytest.fixture
def metrics():
    return GatewayMetrics(CollectorRegistry())


@pytest.fixture
def gate(engine, outbox, metrics):
    return OrderGate(engine, outbox, CountingPublisher(), "gwtest", metrics=metrics, clock=Clock(),
                     idempotency_capacity=4, execution_dedup_capacity=4)


def order(client_order_id="c1", account="ACC1", quantity=QTY, price=PRICE, side=types_pb2.SIDE_BUY, **extra):
    return types_pb2.Order(
        client_order_id=client_order_id,
        account=account,
        symbol="AAPL",
        side=side,
        order_type=types_pb2.ORDER_TYPE_LIMIT,
        quantity_nanos=quantity,
        price_nanos=price,
        **extra,
    )


def working_orders(engine, account="ACC1") -> int:
    return engine.kernel.working_orders(engine.interner.account_ids[account])


def recorded(outbox) -> list[types_pb2.Decision]:
    return [types_pb2.Decision.FromString(payload) for _, payload in outbox.pending(0, 1000)]


def test_an_accepted_order_is_decided_recorded_and_announced(gate, engine, outbox):
    (decision,) = decide(gate, [order(trace_id="t-1")])
    assert decision.verdict == types_pb2.VERDICT_ACCEPT
    assert (decision.sequence, decision.gateway_id, decision.rules_version) == (1, "gwtest", engine.version)
    assert NOW_NS < decision.received_ns < decision.decided_ns
    assert decision.order.trace_id == "t-1" and decision.order.client_order_id == "c1"
    assert not decision.failures and not decision.replayed
    assert recorded(outbox) == [decision]
    assert gate.publisher.notified == 1
    assert working_orders(engine) == 1
    assert gate.working[("ACC1", "c1")].handle == decision.order_handle


def test_a_rejected_order_carries_explained_failures(gate, engine):
    (decision,) = decide(gate, [order(quantity=2_000 * QTY)])
    assert decision.verdict == types_pb2.VERDICT_REJECT
    failure = {f.code: f for f in decision.failures}["MAX_ORDER_QTY_EXCEEDED"]
    assert (failure.limit, failure.observed) == (1_000 * QTY, 2_000 * QTY)
    assert failure.rule_path == "firm.limits.max_order_qty"
    assert failure.detail == "limit=1000 observed=2000"
    assert working_orders(engine) == 0 and not gate.working


def test_sequences_continue_after_the_outbox(engine, outbox, make_decision_payload):
    outbox.append([(1, make_decision_payload(1)), (2, make_decision_payload(2))])
    gate = OrderGate(engine, outbox, CountingPublisher(), "gwtest")
    decisions = decide(gate, [order("a"), order("b", price=PRICE + 10**7)])
    assert [d.sequence for d in decisions] == [3, 4]
    assert gate.last_sequence == outbox.last_sequence == 4


def test_a_retry_with_the_same_request_id_replays_without_deciding_again(
    gate, engine, outbox, monkeypatch, metrics
):
    (first,) = decide(gate, [order(request_id="r1")])
    monkeypatch.setattr(engine, "check", lambda *args: pytest.fail("the kernel must not see a replay"))
    (again,) = decide(gate, [order(request_id="r1")])
    assert again.replayed and not first.replayed
    again.replayed = False
    assert again == first
    assert outbox.last_sequence == 1 and gate.publisher.notified == 1
    assert metrics.registry.get_sample_value("pretrade_decision_replays_total") == 1


def test_request_ids_are_per_account_and_replays_work_within_a_batch(gate):
    decisions = decide(gate, [order("a", request_id="r"), order("a", request_id="r"),
                             order("b", account="DUP", request_id="r")])
    assert [d.replayed for d in decisions] == [False, True, False]
    assert [d.sequence for d in decisions] == [1, 1, 2]


def test_the_idempotency_memory_is_bounded(gate):
    for index in range(5):
        decide(gate, [order(f"c{index}", price=PRICE + index * 10**7, request_id=f"r{index}")])
    (oldest,) = decide(gate, [order("c0", price=PRICE, request_id="r0")])
    assert not oldest.replayed  # forgotten (capacity 4): decided again, here a duplicate id
    assert "DUPLICATE_CLIENT_ORDER_ID" in [f.code for f in oldest.failures]


def test_an_exception_in_the_kernel_rejects_with_internal_error_and_is_recorded(
    gate, engine, outbox, monkeypatch
):
    def explode(*args):
        raise RuntimeError("kernel bug")

    monkeypatch.setattr(engine, "check", explode)
    decisions = decide(gate, [order("a"), order("b")])
    assert [d.verdict for d in decisions] == [types_pb2.VERDICT_REJECT] * 2
    assert [[f.code for f in d.failures] for d in decisions] == [["INTERNAL_ERROR"]] * 2
    assert decisions[0].failures[0].detail == "error=RuntimeError"
    assert [d.sequence for d in decisions] == [1, 2]
    assert recorded(outbox) == decisions


class BrokenWorkingOrders(dict):
    """The gate's table of working orders, failing to take a new one (a bookkeeping bug
    after the kernel has accepted)."""

    def __setitem__(self, key, value):
        raise ValueError("bookkeeping bug")


def test_an_accepted_order_whose_decision_cannot_be_built_is_released(gate, engine):
    gate.working = BrokenWorkingOrders()
    (decision,) = decide(gate, [order()])
    assert [f.code for f in decision.failures] == ["INTERNAL_ERROR"]
    assert working_orders(engine) == 0


def test_a_failing_decision_log_rejects_unrecorded_and_undoes_the_batch(gate, engine, outbox, monkeypatch):
    decide(gate, [order("before", request_id="r0")])

    def full(entries):
        raise OutboxFullError("outbox full")

    monkeypatch.setattr(outbox, "append", full)
    decisions = decide(gate, [order("a", request_id="r1", price=PRICE + 10**7), order("a", request_id="r1"),
                             order("before", request_id="r0")])
    assert [d.sequence for d in decisions] == [UNRECORDED_SEQUENCE, UNRECORDED_SEQUENCE, 1]
    assert [f.code for f in decisions[0].failures] == ["INTERNAL_ERROR"]
    assert decisions[2].replayed and decisions[2].verdict == types_pb2.VERDICT_ACCEPT
    assert working_orders(engine) == 1  # only "before" still works
    assert ("ACC1", "a") not in gate.working
    monkeypatch.undo()
    # The retry is decided afresh and numbered contiguously. The kernel has no "un-accept":
    # the released order's client order id (and rate-limit charge) stays remembered, so the
    # retry needs a new client order id.
    (retry,) = decide(gate, [order("a2", request_id="r1", price=PRICE + 2 * 10**7)])
    assert not retry.replayed and retry.sequence == 2 and retry.verdict == types_pb2.VERDICT_ACCEPT


def execution(kind, execution_id, client_order_id="c1", quantity=0, price=0, account="ACC1"):
    return types_pb2.Execution(
        account=account,
        client_order_id=client_order_id,
        execution_type=kind,
        execution_id=execution_id,
        last_quantity_nanos=quantity,
        last_price_nanos=price,
    )


def statuses(results) -> list[str]:
    return [types_pb2.ExecutionStatus.Name(r.status).removeprefix("EXECUTION_STATUS_") for r in results]


def test_executions_reach_the_kernel_by_client_order_id(gate, engine):
    decide(gate, [order("c1", quantity=10 * QTY)])
    results = gate.apply_executions([
        execution(types_pb2.EXECUTION_TYPE_PARTIAL_FILL, "e1", quantity=4 * QTY, price=PRICE),
        execution(types_pb2.EXECUTION_TYPE_PARTIAL_FILL, "e1", quantity=4 * QTY, price=PRICE),
        execution(types_pb2.EXECUTION_TYPE_PARTIAL_FILL, "e2", quantity=6 * QTY, price=PRICE),
        execution(types_pb2.EXECUTION_TYPE_CANCELLED, "e3"),
        execution(types_pb2.EXECUTION_TYPE_FILL, "e4", client_order_id="never", quantity=QTY, price=PRICE),
    ])
    assert statuses(results) == ["APPLIED", "DUPLICATE", "APPLIED", "UNKNOWN_ORDER", "UNKNOWN_ORDER"]
    assert [r.execution_id for r in results] == ["e1", "e1", "e2", "e3", "e4"]
    assert working_orders(engine) == 0 and not gate.working


def test_a_final_fill_below_the_order_quantity_releases_the_rest(gate, engine):
    decide(gate, [order("c1", quantity=10 * QTY)])
    fill = execution(types_pb2.EXECUTION_TYPE_FILL, "e1", quantity=3 * QTY, price=PRICE)
    results = gate.apply_executions([fill])
    assert statuses(results) == ["APPLIED"]
    assert working_orders(engine) == 0 and not gate.working


def test_overfills_are_applied_and_flagged(gate, engine):
    decide(gate, [order("c1", quantity=QTY)])
    fill = execution(types_pb2.EXECUTION_TYPE_FILL, "e1", quantity=2 * QTY, price=PRICE)
    results = gate.apply_executions([fill])
    assert statuses(results) == ["OVERFILL"]
    assert not gate.working


@pytest.mark.parametrize(
    "kind",
    [
        types_pb2.EXECUTION_TYPE_CANCELLED,
        types_pb2.EXECUTION_TYPE_VENUE_REJECTED,
        types_pb2.EXECUTION_TYPE_EXPIRED,
    ],
)
def test_order_ends_without_fill_release_the_reservation(gate, engine, kind):
    decide(gate, [order("c1")])
    assert statuses(gate.apply_executions([execution(kind, "e1")])) == ["APPLIED"]
    assert working_orders(engine) == 0 and not gate.working


def test_cancel_on_disconnect_releases_only_the_streams_working_orders(gate, engine):
    stream = OrderStream(1, "trader", context=None)
    decide(gate, [order("s1"), order("s2", price=PRICE + 10**7)], stream)
    decide(gate, [order("u1", price=PRICE + 2 * 10**7)])
    gate.apply_executions([execution(types_pb2.EXECUTION_TYPE_FILL, "e1", client_order_id="s2", quantity=QTY,
                                     price=PRICE)])
    assert working_orders(engine) == 2
    assert gate.release_stream_orders(stream) == 1
    assert working_orders(engine) == 1 and set(gate.working) == {("ACC1", "u1")}
    assert not stream.working


def test_decisions_are_counted_by_verdict_and_code(gate, metrics):
    decide(gate, [order("a"), order("b", quantity=2_000 * QTY)])
    registry = metrics.registry
    assert registry.get_sample_value("pretrade_decisions_total", {"verdict": "accept"}) == 1
    assert registry.get_sample_value("pretrade_decisions_total", {"verdict": "reject"}) == 1
    labels = {"code": Check.MAX_ORDER_QTY_EXCEEDED.name}
    assert registry.get_sample_value("pretrade_check_failures_total", labels) == 1
    assert registry.get_sample_value("pretrade_check_latency_seconds_count") == 2


def test_reference_prices_for_unknown_symbols_are_refused(gate):
    assert gate.apply_reference_price("AAPL", PRICE, NOW_NS)
    assert not gate.apply_reference_price("NOPE", PRICE, NOW_NS)
