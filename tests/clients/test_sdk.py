"""Tests of the Python SDK: exact conversions, message builders, error mapping, and the
sync client, async client and OrderBatcher against a real gateway (embedded nats-server)."""

from __future__ import annotations

import asyncio
import socket
from decimal import Decimal

import grpc
import pytest
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2

from clients import (
    DeadlineExceeded,
    FieldViolation,
    GatewayClient,
    GatewayInternalError,
    GatewayUnavailable,
    InvalidOrder,
    Overloaded,
    PermissionDenied,
    RulesRejected,
    Unauthenticated,
    make_execution,
    make_order,
    make_reference_price,
    price_from_nanos,
    qty_from_nanos,
    to_price_nanos,
    to_qty_nanos,
)
from clients.errors import GRPC_STATUS_DETAILS_KEY, error_from_rpc
from pretrade.v1 import gateway_pb2, types_pb2
from tests.clients.gateway_harness import running_gateway

ACCEPT = types_pb2.VERDICT_ACCEPT


# -- conversions and builders ---------------------------------------------------------------


@pytest.mark.parametrize("value", [Decimal("12.34"), "12.34", "12.340000000"])
def test_prices_convert_exactly(value):
    assert to_price_nanos(value) == 12_340_000_000
    assert price_from_nanos(to_price_nanos(value)) == Decimal("12.34")


def test_integers_and_fractions_of_a_unit():
    assert to_qty_nanos(100) == 100 * 10**9
    assert to_qty_nanos("0.0001") == 100_000
    assert qty_from_nanos(100_000) == Decimal("0.0001")


@pytest.mark.parametrize(
    "value, words",
    [
        (0.1, "binary float"),
        ("0.0000000001", "more precision"),
        ("abc", "not a number"),
        ("inf", "not finite"),
    ],
)
def test_values_that_are_not_exact_are_refused_naming_the_field(value, words):
    with pytest.raises(InvalidOrder) as caught:
        make_order(account="A", symbol="S", side="buy", quantity=1, price=value)
    assert caught.value.violations == (FieldViolation("price", caught.value.violations[0].description),)
    assert words in caught.value.violations[0].description


def test_make_order_defaults():
    limit = make_order(account="A", symbol="S", side="buy", quantity="1.5", price="10")
    market = make_order(account="A", symbol="S", side="SIDE_SELL", quantity=1)
    assert limit.order_type == types_pb2.ORDER_TYPE_LIMIT and limit.price_nanos == 10 * 10**9
    assert market.order_type == types_pb2.ORDER_TYPE_MARKET and market.price_nanos == 0
    assert market.side == types_pb2.SIDE_SELL
    assert limit.client_order_id.startswith("cl-") and limit.client_order_id != market.client_order_id
    assert limit.time_in_force == types_pb2.TIME_IN_FORCE_UNSPECIFIED


def test_enum_names_are_forgiving_but_unknown_names_are_refused():
    order = make_order(account="A", symbol="S", side="sell-short", quantity=1, order_type="market",
                       time_in_force="immediate_or_cancel")
    assert (order.side, order.time_in_force) == (types_pb2.SIDE_SELL_SHORT,
                                                 types_pb2.TIME_IN_FORCE_IMMEDIATE_OR_CANCEL)
    with pytest.raises(InvalidOrder) as caught:
        make_order(account="A", symbol="S", side="long", quantity=1)
    assert caught.value.violations[0].field == "side"


def test_execution_and_price_builders():
    fill = make_execution(account="A", client_order_id="c", execution_type="partial_fill", execution_id="e",
                          last_quantity="2", last_price="10.5")
    assert (fill.execution_type, fill.last_quantity_nanos, fill.last_price_nanos) == (
        types_pb2.EXECUTION_TYPE_PARTIAL_FILL, 2 * 10**9, 10_500_000_000)
    assert fill.transact_ns > 0
    price = make_reference_price("S", "1.25", timestamp_ns=7)
    assert (price.price_nanos, price.timestamp_ns) == (1_250_000_000, 7)


# -- error mapping --------------------------------------------------------------------------


class FakeRpcError(grpc.RpcError):
    def __init__(self, code, details="", trailing=()):
        self._code, self._details, self._trailing = code, details, trailing

    def code(self):
        return self._code

    def details(self):
        return self._details

    def trailing_metadata(self):
        return self._trailing


@pytest.mark.parametrize(
    "code, error_type",
    [
        (grpc.StatusCode.UNAUTHENTICATED, Unauthenticated),
        (grpc.StatusCode.PERMISSION_DENIED, PermissionDenied),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, Overloaded),
        (grpc.StatusCode.UNAVAILABLE, GatewayUnavailable),
        (grpc.StatusCode.CANCELLED, GatewayUnavailable),
        (grpc.StatusCode.DEADLINE_EXCEEDED, DeadlineExceeded),
        (grpc.StatusCode.FAILED_PRECONDITION, RulesRejected),
        (grpc.StatusCode.INTERNAL, GatewayInternalError),
        (grpc.StatusCode.UNKNOWN, GatewayInternalError),
    ],
)
def test_each_status_code_maps_to_one_exception(code, error_type):
    error = error_from_rpc(FakeRpcError(code, "why"))
    assert type(error) is error_type and error.code == code and error.message == "why"


def test_invalid_argument_carries_the_field_violations():
    detail = any_pb2.Any()
    detail.Pack(error_details_pb2.BadRequest(field_violations=[
        error_details_pb2.BadRequest.FieldViolation(
            field="orders[3].quantity_nanos", description="must be > 0"
        )
    ]))
    status = status_pb2.Status(code=3, message="invalid request", details=[detail])
    error = error_from_rpc(FakeRpcError(grpc.StatusCode.INVALID_ARGUMENT, "invalid request",
                                        ((GRPC_STATUS_DETAILS_KEY, status.SerializeToString()),)))
    assert isinstance(error, InvalidOrder)
    assert error.violations == (FieldViolation("orders[3].quantity_nanos", "must be > 0"),)


def test_an_unreachable_gateway_is_unavailable():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with GatewayClient(f"127.0.0.1:{port}", "pt_x", timeout_s=3) as client, pytest.raises(GatewayUnavailable):
        client.get_status()


# -- against a real gateway -----------------------------------------------------------------


@pytest.fixture
async def gateway(tmp_path):
    async with running_gateway(tmp_path / "gw") as running:
        await running.set_reference_prices()
        yield running


def order(client_order_id=None, quantity=1, price="100", account="ACC1", **extra):
    return make_order(account=account, symbol="AAPL", side="buy", quantity=quantity, price=price,
                      client_order_id=client_order_id, **extra)


@pytest.mark.integration
@pytest.mark.timeout(60)
async def test_sync_client_covers_the_api(gateway):
    def exercise():
        with GatewayClient(gateway.target, gateway.tokens["trader"]) as trader:
            accepted = trader.check_order(order("s1", request_id="r1"))
            assert accepted.verdict == ACCEPT
            assert trader.check_order(order("s1", request_id="r1")).replayed
            batch = trader.check_orders([order("s2", price="100.01"), order("s3", quantity=5000)])
            assert [d.order.client_order_id for d in batch] == ["s2", "s3"]
            responses = list(trader.stream([gateway_pb2.StreamOrdersRequest(batch_id=9, orders=[
                order("s4", price="100.02")])], timeout_s=10))
            assert responses[0].decisions.batch_id == 9
            results = trader.report_executions([make_execution(account="ACC1", client_order_id="s1",
                                                               execution_type="fill", execution_id="x1",
                                                               last_quantity=1, last_price="100")])
            assert results[0].status == types_pb2.EXECUTION_STATUS_APPLIED
            assert trader.update_reference_prices([make_reference_price("AAPL", "100")]).applied == 1
            with pytest.raises(PermissionDenied):
                trader.get_status()
            with pytest.raises(InvalidOrder) as caught:
                trader.check_order(order("s5", quantity=0))
            assert caught.value.violations[0].field == "order.quantity_nanos"
        with GatewayClient(gateway.target, gateway.tokens["admin"]) as admin:
            assert admin.get_status().last_sequence == 4  # s1 (and its replay), s2, s3, s4
            with pytest.raises(RulesRejected):
                admin.reload_rules("/nonexistent/rules.toml")
            assert admin.reload_rules().rules_version == admin.get_status().rules_version
        with GatewayClient(gateway.target, None) as anonymous, pytest.raises(Unauthenticated):
            anonymous.check_order(order())
        with GatewayClient(gateway.target, gateway.tokens["trader"]) as trader:
            with pytest.raises(DeadlineExceeded):
                trader.check_orders([order(f"d{i}", price="100.03") for i in range(1000)], timeout_s=1e-6)

    await asyncio.wait_for(asyncio.to_thread(exercise), 30)


@pytest.mark.integration
@pytest.mark.timeout(60)
async def test_batcher_coalesces_orders_and_matches_decisions(gateway):
    async with gateway.client() as trader:
        async with trader.batcher(max_batch_size=16, max_delay_s=0.005) as batcher:
            orders = [
                order(f"b{i}", price=f"100.{i:02d}", account="ACC1" if i % 2 else "DUP") for i in range(40)
            ]
            decisions = await asyncio.gather(*(batcher.submit(o) for o in orders))
    assert [d.order.client_order_id for d in decisions] == [o.client_order_id for o in orders]
    assert all(d.verdict == ACCEPT for d in decisions[:10])
    batches = {d.received_ns for d in decisions}  # one received_ns per StreamOrders message
    assert 3 <= len(batches) < 40


@pytest.mark.integration
@pytest.mark.timeout(60)
async def test_batcher_delivers_control_messages(gateway):
    received = asyncio.Queue()
    async with gateway.client() as trader:
        async with trader.batcher(on_control=received.put_nowait) as batcher:
            assert (await batcher.submit(order("c1"))).verdict == ACCEPT
            await gateway.app.gateway_servicer.broadcast_control(
                gateway_pb2.ControlMessage(action=gateway_pb2.CONTROL_ACTION_CANCEL_ALL, reason="kill switch")
            )
            message = await asyncio.wait_for(received.get(), 10)
    assert message.action == gateway_pb2.CONTROL_ACTION_CANCEL_ALL and message.reason == "kill switch"


@pytest.mark.integration
@pytest.mark.timeout(60)
async def test_batcher_fails_waiters_with_typed_errors(gateway):
    async with gateway.client("alice") as operator:
        async with operator.batcher() as batcher:
            with pytest.raises(PermissionDenied):
                await batcher.submit(order("p1"))
            with pytest.raises(PermissionDenied):
                await batcher.submit(order("p2"))
    async with gateway.client() as trader:
        async with trader.batcher() as batcher:
            with pytest.raises(InvalidOrder) as caught:
                await batcher.submit(order("bad", quantity=1, price="100", account=""))
    assert caught.value.violations[0].field == "orders[0].account"
