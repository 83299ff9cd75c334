"""Integration tests of the gateway over loopback: the real server, engine, outbox,
publisher and nats-server (the ``nats_server`` fixture), through the Python SDK.

Every test has a hard timeout (pytest-timeout) on top of the per-step timeouts of the
harness and of every RPC.
"""

from __future__ import annotations

import asyncio
import time
import urllib.request

import grpc
import nats
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from clients import (
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
)
from fastpath.codes import Check, Scope, TradingState
from gateway.embedded_nats import EmbeddedNats
from gateway.subjects import DECISIONS_STREAM, reference_price_subject
from pretrade.v1 import gateway_pb2, types_pb2
from tests.clients.gateway_harness import CHECKS_RULES, ENGINE_OPTIONS, running_gateway, write_rules

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

ACCEPT = types_pb2.VERDICT_ACCEPT
REJECT = types_pb2.VERDICT_REJECT
#: Checks the API's validation stops before the kernel (INVALID_ARGUMENT instead).
VALIDATED_BEFORE_THE_KERNEL = {Check.INVALID_SIDE, Check.INVALID_ORDER_TYPE, Check.INVALID_QUANTITY,
                               Check.INVALID_PRICE}
#: Codes the gateway sets, never the kernel (INTERNAL_ERROR has a test of its own below;
#: HALT_STATE_UNAVAILABLE belongs to the halts feature).
SET_BY_THE_GATEWAY = {Check.INTERNAL_ERROR, Check.HALT_STATE_UNAVAILABLE}


@pytest.fixture
async def trader(gateway):
    async with gateway.client("trader") as client:
        yield client


def codes(decision) -> set[str]:
    return {failure.code for failure in decision.failures}


async def read_decisions_from_jetstream(nats_url: str) -> list[types_pb2.Decision]:
    nc = await nats.connect(nats_url, connect_timeout=5)
    try:
        js = nc.jetstream(timeout=5)
        info = await js.stream_info(DECISIONS_STREAM)
        messages = [await js.get_msg(DECISIONS_STREAM, seq) for seq in range(1, info.state.last_seq + 1)]
    finally:
        await nc.close()
    return [types_pb2.Decision.FromString(message.data) for message in messages]


async def test_accepted_and_rejected_orders(trader):
    accepted = await trader.check_order(make_order(account="ACC1", symbol="AAPL", side="buy", quantity=10,
                                                   price="100.00", client_order_id="ok-1"))
    assert accepted.verdict == ACCEPT and accepted.order.client_order_id == "ok-1"
    assert accepted.gateway_id == "gwtest" and accepted.sequence > 0 and not accepted.failures
    rejected = await trader.check_order(make_order(account="ACC1", symbol="AAPL", side="buy", quantity=5000,
                                                   price="100.00"))
    assert rejected.verdict == REJECT
    failure = {f.code: f for f in rejected.failures}["MAX_ORDER_QTY_EXCEEDED"]
    assert failure.rule_path == "firm.limits.max_order_qty" and failure.detail == "limit=1000 observed=5000"
    assert rejected.sequence == accepted.sequence + 1


async def test_every_check_the_kernel_can_produce_is_reachable_through_the_api(gateway, trader):
    seen: set[str] = set()

    async def expect(code: Check, **fields):
        fields.setdefault("symbol", "AAPL")
        fields.setdefault("side", "buy")
        fields.setdefault("quantity", 1)
        fields.setdefault("price", "100")
        decision = await trader.check_order(make_order(**fields))
        assert decision.verdict == REJECT and code.name in codes(decision), (code.name, decision)
        seen.add(code.name)

    async def accept(**fields):
        fields.setdefault("symbol", "AAPL")
        fields.setdefault("side", "buy")
        fields.setdefault("quantity", 1)
        decision = await trader.check_order(make_order(**fields))
        assert decision.verdict == ACCEPT, decision

    await expect(Check.UNKNOWN_ACCOUNT, account="NOPE")
    await expect(Check.UNKNOWN_SYMBOL, account="ACC1", symbol="NOPE")
    await expect(Check.UNKNOWN_STRATEGY, account="ACC1", strategy="NOPE")
    await expect(Check.PRICE_OFF_TICK, account="ACC1", price="100.005")
    await expect(Check.QUANTITY_OFF_LOT, account="ACC1", symbol="LOTS", quantity=5)
    await expect(Check.REFERENCE_PRICE_MISSING, account="ACC1", symbol="NOREF")
    await expect(Check.REFERENCE_PRICE_STALE, account="ACC1", symbol="FAST")
    await expect(Check.MISSING_LIMIT, account="NOLIMIT")
    gateway.app.engine.set_trading_state(Scope.ACCOUNT, "HALTACC", TradingState.HALTED)
    await expect(Check.TRADING_HALTED, account="HALTACC")
    gateway.app.engine.set_trading_state(Scope.ACCOUNT, "REDUCE", TradingState.REDUCING)
    await expect(Check.REDUCE_ONLY_VIOLATION, account="REDUCE")
    await expect(Check.SYMBOL_RESTRICTED, account="ACC1", symbol="HTB", side="sell_short")
    await expect(Check.MAX_ORDER_QTY_EXCEEDED, account="ACC1", quantity=1001)
    await expect(Check.MAX_ORDER_NOTIONAL_EXCEEDED, account="ACC1", quantity=999, price="101")
    await expect(Check.PRICE_COLLAR_BREACHED, account="ACC1", price="110")
    await accept(account="CREDIT", quantity=900, price="100.00")
    await accept(account="CREDIT", quantity=900, price="100.01")
    await expect(Check.CREDIT_LIMIT_EXCEEDED, account="CREDIT", quantity=900, price="100.02")
    await expect(Check.LONG_POSITION_LIMIT_EXCEEDED, account="LONG", quantity=11)
    await expect(Check.SHORT_POSITION_LIMIT_EXCEEDED, account="ACC1", side="sell", quantity=101)
    await accept(account="SLOW", price="100")
    await expect(Check.ACCOUNT_ORDER_RATE_EXCEEDED, account="SLOW", price="100.01")
    await accept(account="STRAT", strategy="ALGO", price="100.00")
    await accept(account="STRAT", strategy="ALGO", price="100.01")
    await expect(Check.STRATEGY_ORDER_RATE_EXCEEDED, account="STRAT", strategy="ALGO", price="100.02")
    await accept(account="DUP", client_order_id="dup-1", price="100")
    await expect(Check.DUPLICATE_CLIENT_ORDER_ID, account="DUP", client_order_id="dup-1", price="100.01")
    await expect(Check.DUPLICATE_ORDER_CONTENT, account="DUP", client_order_id="dup-2", price="100")
    for index in range(5):
        await accept(account="WORK", price=f"100.0{index}")
    await expect(Check.MAX_WORKING_ORDERS_EXCEEDED, account="WORK", price="100.05")
    await accept(account="SMP", price="100")
    await expect(Check.SELF_MATCH_PREVENTED, account="SMP", side="sell", price="99.99")

    not_from_the_kernel = VALIDATED_BEFORE_THE_KERNEL | SET_BY_THE_GATEWAY
    kernel_codes = {c.name for c in Check} - {c.name for c in not_from_the_kernel}
    kernel_codes.remove(Check.STATE_CAPACITY_EXHAUSTED.name)  # a test of its own (needs a tiny kernel)
    assert seen == kernel_codes


async def test_state_capacity_exhausted(tmp_path, nats_server):
    async with running_gateway(tmp_path / "gw", nats_url=nats_server.url,
                               engine_options={**ENGINE_OPTIONS, "max_orders": 1}) as gateway:
        await gateway.set_reference_prices()
        async with gateway.client() as trader:
            first = await trader.check_order(_good_order(client_order_id="cap-1"))
            second = await trader.check_order(
                _good_order(client_order_id="cap-2", price_nanos=100_01 * 10**7)
            )
    assert first.verdict == ACCEPT
    assert codes(second) == {"STATE_CAPACITY_EXHAUSTED"}


async def test_an_exception_on_the_order_path_is_a_recorded_internal_error_reject(
    gateway, trader, monkeypatch
):
    def broken(*args):
        raise RuntimeError("boom")

    monkeypatch.setattr(gateway.app.engine, "check", broken)
    decision = await trader.check_order(make_order(account="ACC1", symbol="AAPL", side="buy", quantity=1,
                                                   price="100"))
    assert decision.verdict == REJECT and codes(decision) == {"INTERNAL_ERROR"} and decision.sequence > 0
    await gateway.wait_published()
    published = await read_decisions_from_jetstream(gateway.app.nats_url)
    assert published[-1] == decision


async def test_decisions_are_published_to_jetstream_and_decode(gateway, trader):
    orders = [_good_order(quantity_nanos=quantity * 10**9) for quantity in (1, 2, 5000)]
    batch = await trader.check_orders(orders)
    single = await trader.check_order(make_order(account="ACC1", symbol="AAPL", side="sell", quantity=1,
                                                 price="100.50"))
    await gateway.wait_published()
    published = await read_decisions_from_jetstream(gateway.app.nats_url)
    assert published == [*batch, single]
    assert [d.sequence for d in published] == [1, 2, 3, 4]
    assert [d.verdict for d in published] == [ACCEPT, ACCEPT, REJECT, ACCEPT]


async def test_an_idempotent_retry_returns_the_original_decision(gateway, trader):
    order = make_order(account="ACC1", symbol="AAPL", side="buy", quantity=3, price="100", request_id="req-7")
    first = await trader.check_order(order)
    retry = await trader.check_order(order)
    assert retry.replayed and not first.replayed
    assert (retry.sequence, retry.order_handle, retry.decided_ns) == (first.sequence, first.order_handle,
                                                                       first.decided_ns)
    await gateway.wait_published()
    assert len(await read_decisions_from_jetstream(gateway.app.nats_url)) == 1
    async with gateway.client("admin") as admin:
        assert (await admin.get_status()).last_sequence == 1


async def test_executions_reduce_exposure(gateway, trader):
    def credit_order(client_order_id, price):
        return make_order(account="CREDIT", symbol="AAPL", side="buy", quantity=900, price=price,
                          client_order_id=client_order_id)

    assert (await trader.check_order(credit_order("o1", "100.00"))).verdict == ACCEPT
    assert (await trader.check_order(credit_order("o2", "100.01"))).verdict == ACCEPT
    blocked = await trader.check_order(credit_order("o3", "100.02"))
    assert codes(blocked) == {"CREDIT_LIMIT_EXCEEDED"}
    results = await trader.report_executions([
        make_execution(account="CREDIT", client_order_id="o1", execution_type="cancelled", execution_id="x1"),
        make_execution(account="CREDIT", client_order_id="o1", execution_type="cancelled", execution_id="x1"),
        make_execution(account="CREDIT", client_order_id="gone", execution_type="expired", execution_id="x2"),
        make_execution(
            account="CREDIT",
            client_order_id="o2",
            execution_type="partial_fill",
            execution_id="x3",
            last_quantity=100,
            last_price="100.01",
        ),
    ])
    assert [r.status for r in results] == [
        types_pb2.EXECUTION_STATUS_APPLIED,
        types_pb2.EXECUTION_STATUS_DUPLICATE,
        types_pb2.EXECUTION_STATUS_UNKNOWN_ORDER,
        types_pb2.EXECUTION_STATUS_APPLIED,
    ]
    assert (await trader.check_order(credit_order("o4", "100.03"))).verdict == ACCEPT


async def test_reference_prices_via_rpc(gateway, trader):
    order = dict(account="ACC1", symbol="FAST", side="buy", quantity=1, price="100")
    assert codes(await trader.check_order(make_order(**order))) == {"REFERENCE_PRICE_STALE"}
    response = await trader.update_reference_prices([make_reference_price("FAST", "100"),
                                                     make_reference_price("NOPE", "1")])
    assert response.applied == 1 and list(response.unknown_symbols) == ["NOPE"]
    assert (await trader.check_order(make_order(**order))).verdict == ACCEPT


async def test_reference_prices_via_nats(gateway, trader, nats_server):
    nc = await nats.connect(nats_server.url, connect_timeout=5)
    try:
        deadline = time.monotonic() + 10
        while True:
            price = make_reference_price("NOREF", "50")
            await nc.publish(reference_price_subject("NOREF"), price.SerializeToString())
            await nc.flush(timeout=5)
            decision = await trader.check_order(_good_order(symbol="NOREF", price_nanos=50 * 10**9))
            if decision.verdict == ACCEPT:
                break
            assert codes(decision) == {"REFERENCE_PRICE_MISSING"}
            assert time.monotonic() < deadline, "reference price from NATS never arrived"
            await asyncio.sleep(0.05)
    finally:
        await nc.close()


async def test_authentication_and_roles(gateway):
    order = make_order(account="ACC1", symbol="AAPL", side="buy", quantity=1, price="100")
    async with gateway.client(None) as anonymous:
        with pytest.raises(Unauthenticated):
            await anonymous.check_order(order)
    async with gateway.client(None) as forged:
        forged.metadata = (("authorization", "Bearer pt_forged"),)
        with pytest.raises(Unauthenticated):
            await forged.check_order(order)
    async with gateway.client("alice") as operator:
        with pytest.raises(PermissionDenied):
            await operator.check_order(order)
    async with gateway.client("trader") as trader:
        with pytest.raises(PermissionDenied):
            await trader.get_status()
    async with gateway.client("admin") as admin:
        assert (await admin.check_order(order)).verdict == ACCEPT


def _good_order(**changes) -> types_pb2.Order:
    order = make_order(account="ACC1", symbol="AAPL", side="buy", quantity=1, price="100")
    for name, value in changes.items():
        setattr(order, name, value)
    return order


MALFORMED_ORDERS = [
    ({"client_order_id": ""}, "client_order_id"),
    ({"account": ""}, "account"),
    ({"symbol": ""}, "symbol"),
    ({"account": "A" * 65}, "account"),
    ({"strategy": "S" * 65}, "strategy"),
    ({"request_id": "R" * 65}, "request_id"),
    ({"trace_id": "T" * 129}, "trace_id"),
    ({"side": types_pb2.SIDE_UNSPECIFIED}, "side"),
    ({"side": 17}, "side"),
    ({"order_type": types_pb2.ORDER_TYPE_UNSPECIFIED}, "order_type"),
    ({"order_type": 9}, "order_type"),
    ({"time_in_force": 99}, "time_in_force"),
    ({"quantity_nanos": 0}, "quantity_nanos"),
    ({"quantity_nanos": -1}, "quantity_nanos"),
    ({"price_nanos": 0}, "price_nanos"),
    ({"order_type": types_pb2.ORDER_TYPE_MARKET}, "price_nanos"),
]


async def test_malformed_input_is_invalid_argument_naming_the_field(gateway, trader):
    with pytest.raises(InvalidOrder) as caught:
        await trader._call(trader.gateway_stub.CheckOrder, gateway_pb2.CheckOrderRequest(), None)
    assert [v.field for v in caught.value.violations] == ["order"]
    for changes, field in MALFORMED_ORDERS:
        with pytest.raises(InvalidOrder) as caught:
            await trader.check_order(_good_order(**changes))
        assert [v.field for v in caught.value.violations] == [f"order.{field}"], changes
        with pytest.raises(InvalidOrder) as caught:
            await trader.check_orders([_good_order(), _good_order(**changes)])
        assert [v.field for v in caught.value.violations] == [f"orders[1].{field}"], changes
    with pytest.raises(InvalidOrder) as caught:
        await trader.check_orders([_good_order()] * 1001)
    assert [v.field for v in caught.value.violations] == ["orders"]
    with pytest.raises(InvalidOrder) as caught:
        await trader.report_executions([types_pb2.Execution(account="ACC1", client_order_id="c",
                                                            execution_type=types_pb2.EXECUTION_TYPE_FILL,
                                                            execution_id="e")])
    assert {v.field for v in caught.value.violations} == {"executions[0].last_quantity_nanos",
                                                         "executions[0].last_price_nanos"}
    with pytest.raises(InvalidOrder) as caught:
        await trader.update_reference_prices([types_pb2.ReferencePrice(symbol="AAPL", price_nanos=1)])
    assert [v.field for v in caught.value.violations] == ["prices[0].timestamp_ns"]
    async with gateway.client("admin") as admin:
        with pytest.raises(InvalidOrder) as caught:
            await admin.reload_rules("x\x00y")
    assert [v.field for v in caught.value.violations] == ["path"]
    # Nothing malformed reached the kernel or the decision log.
    await gateway.wait_published()
    assert await read_decisions_from_jetstream(gateway.app.nats_url) == []


async def test_requests_in_any_valid_encoding_are_decided_and_malformed_bytes_are_invalid_argument(
    gateway, trader
):
    """The server reads order requests from their bytes (gateway.orders): an order in two
    parts (protobuf merges them) or with unknown fields is decided like its canonical
    form, with the known fields echoed; bytes that are not a CheckOrderRequest are
    INVALID_ARGUMENT."""
    check_order = trader._channel.unary_unary(
        "/pretrade.v1.GatewayService/CheckOrder",
        request_serializer=None,
        response_deserializer=gateway_pb2.CheckOrderResponse.FromString,
    )
    whole = _good_order(client_order_id="parts-1")
    first = types_pb2.Order(client_order_id="parts-1", account=whole.account, symbol=whole.symbol)
    rest = types_pb2.Order(side=whole.side, order_type=whole.order_type, quantity_nanos=whole.quantity_nanos,
                           price_nanos=whole.price_nanos)  # fmt: skip
    in_two_parts = b"".join(
        b"\x0a" + bytes([len(part)]) + part for part in (first.SerializeToString(), rest.SerializeToString())
    )
    unknown_field = b"\xa8\x06\x01"  # field 101, varint 1
    second = _good_order(client_order_id="unknown-1", quantity_nanos=2 * whole.quantity_nanos)  # not a duplicate
    with_unknown_field = gateway_pb2.CheckOrderRequest(
        order=types_pb2.Order.FromString(second.SerializeToString() + unknown_field)
    ).SerializeToString()
    for request, expected in ((in_two_parts, whole), (with_unknown_field, second)):
        response = await check_order(request, timeout=10, metadata=trader.metadata)
        assert response.decision.verdict == ACCEPT, response
        # the known fields, in canonical form: no unknown field echoed
        assert response.decision.order.SerializeToString() == expected.SerializeToString()
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await check_order(b"\x0a\x05ab", timeout=10, metadata=trader.metadata)  # truncated
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "not a valid pretrade.v1.CheckOrderRequest" in caught.value.details()


async def test_a_malformed_stream_batch_ends_the_stream_with_invalid_argument(gateway, trader):
    requests = [gateway_pb2.StreamOrdersRequest(batch_id=1, orders=[_good_order(), _good_order(side=0)])]
    with pytest.raises(InvalidOrder) as caught:
        async for _ in trader.stream(requests, timeout_s=10):
            pass
    assert [v.field for v in caught.value.violations] == ["orders[1].side"]


async def test_health_is_not_serving_until_nats_is_connected(tmp_path):
    nats_later = EmbeddedNats(tmp_path / "late-nats", port=_free_port(), startup_timeout_s=10)
    async with running_gateway(tmp_path / "gw", nats_url=nats_later.url, wait_ready=False) as gateway:
        async with grpc.aio.insecure_channel(gateway.target) as channel:
            health = health_pb2_grpc.HealthStub(channel)

            async def status(service: str = ""):
                return (await health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)).status

            assert await status() == health_pb2.HealthCheckResponse.NOT_SERVING
            assert await status("pretrade.v1.GatewayService") == health_pb2.HealthCheckResponse.NOT_SERVING
            async with nats_later:
                deadline = time.monotonic() + 15
                while await status() != health_pb2.HealthCheckResponse.SERVING:
                    assert time.monotonic() < deadline, "health never turned SERVING"
                    await asyncio.sleep(0.05)
                assert await status("pretrade.v1.AdminService") == health_pb2.HealthCheckResponse.SERVING
                await gateway.app.stop()


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


async def test_reload_rules_via_rpc(gateway, trader, tmp_path):
    big = dict(account="ACC1", symbol="AAPL", side="buy", quantity=1500, price="100")
    assert "MAX_ORDER_QTY_EXCEEDED" in codes(await trader.check_order(make_order(**big)))
    looser_text = CHECKS_RULES.replace("max_order_qty = 1_000", "max_order_qty = 2_000").replace(
        "max_order_notional = 100_000", "max_order_notional = 200_000"
    )
    looser = write_rules(tmp_path, looser_text, "looser.toml")
    broken_text = CHECKS_RULES.replace("max_order_qty = 1_000", "max_order_qty = -3")
    broken = write_rules(tmp_path, broken_text, "broken.toml")
    async with gateway.client("admin") as admin:
        before = await admin.get_status()
        with pytest.raises(RulesRejected) as caught:
            await admin.reload_rules(str(broken))
        assert str(broken) in caught.value.message and "max_order_qty" in caught.value.message
        assert "\n" not in caught.value.message
        assert (await admin.get_status()).rules_version == before.rules_version
        reloaded = await admin.reload_rules(str(looser))
        assert reloaded.previous_version == before.rules_version != reloaded.rules_version
        status = await admin.get_status()
        assert (status.rules_version, status.rules_path) == (reloaded.rules_version, str(looser))
    decision = await trader.check_order(make_order(**big))
    assert decision.verdict == ACCEPT and decision.rules_version == reloaded.rules_version
    with pytest.raises(PermissionDenied):
        await trader.reload_rules()


async def test_get_status(gateway, trader):
    await trader.check_order(make_order(account="ACC1", symbol="AAPL", side="buy", quantity=1, price="100"))
    async with gateway.client("admin") as admin:
        status = await admin.get_status()
    assert status.gateway_id == "gwtest" and status.nats_connected and status.last_sequence == 1
    assert status.rules_version == gateway.app.engine.version and status.started_ns <= time.time_ns()


async def test_stream_orders_batches_and_control_messages(gateway, trader):
    requests: asyncio.Queue = asyncio.Queue()

    async def outgoing():
        while (request := await requests.get()) is not None:
            yield request

    responses = trader.stream(outgoing())
    await requests.put(gateway_pb2.StreamOrdersRequest(batch_id=41, orders=[
        _good_order(client_order_id="s1"), _good_order(client_order_id="s2", quantity_nanos=5000 * 10**9)]))
    first = await asyncio.wait_for(anext(responses), 10)
    assert first.decisions.batch_id == 41
    assert [(d.order.client_order_id, d.verdict) for d in first.decisions.decisions] == [("s1", ACCEPT),
                                                                                        ("s2", REJECT)]
    reached = await gateway.app.gateway_servicer.broadcast_control(
        gateway_pb2.ControlMessage(
            action=gateway_pb2.CONTROL_ACTION_CANCEL_ALL, reason="test", requested_by="alice"
        )
    )
    assert reached == 1
    control = await asyncio.wait_for(anext(responses), 10)
    assert control.control.action == gateway_pb2.CONTROL_ACTION_CANCEL_ALL
    assert control.control.reason == "test"
    third = _good_order(client_order_id="s3", price_nanos=100_01 * 10**7)
    await requests.put(gateway_pb2.StreamOrdersRequest(batch_id=42, orders=[third]))
    second = await asyncio.wait_for(anext(responses), 10)
    assert second.decisions.batch_id == 42 and second.decisions.decisions[0].order.client_order_id == "s3"
    await requests.put(None)
    assert [response async for response in responses] == []
    assert gateway.app.gateway_servicer.open_streams == 0


async def test_cancel_on_disconnect_releases_the_streams_working_orders(gateway, trader):
    def credit_order(client_order_id, price):
        return make_order(account="CREDIT", symbol="AAPL", side="buy", quantity=900, price=price,
                          client_order_id=client_order_id)

    orders = [credit_order("c1", "100.00"), credit_order("c2", "100.01")]
    batches = [gateway_pb2.StreamOrdersRequest(batch_id=1, cancel_on_disconnect=True, orders=orders)]
    async for response in trader.stream(batches, timeout_s=10):
        assert [d.verdict for d in response.decisions.decisions] == [ACCEPT, ACCEPT]
    # The stream ended: both orders were released, so the full credit is available again.
    third = await trader.check_order(credit_order("c3", "100.02"))
    fourth = await trader.check_order(credit_order("c4", "100.03"))
    assert (third.verdict, fourth.verdict) == (ACCEPT, ACCEPT)
    cancel = make_execution(
        account="CREDIT", client_order_id="c1", execution_type="cancelled", execution_id="z1"
    )
    assert (await trader.report_executions([cancel]))[0].status == types_pb2.EXECUTION_STATUS_UNKNOWN_ORDER


async def test_too_many_open_streams_is_resource_exhausted(tmp_path, nats_server):
    async with running_gateway(tmp_path / "gw", nats_url=nats_server.url, max_open_streams=1) as gateway:
        async with gateway.client() as trader:
            requests: asyncio.Queue = asyncio.Queue()

            async def outgoing():
                while (request := await requests.get()) is not None:
                    yield request

            first = trader.stream(outgoing())
            await requests.put(gateway_pb2.StreamOrdersRequest(batch_id=1))
            assert (await asyncio.wait_for(anext(first), 10)).decisions.batch_id == 1
            with pytest.raises(Overloaded):
                async for _ in trader.stream([gateway_pb2.StreamOrdersRequest(batch_id=2)], timeout_s=10):
                    pass
            await requests.put(None)
            assert [response async for response in first] == []


async def test_metrics_endpoint_exports_latency_decisions_and_rpcs(gateway, trader):
    await trader.check_order(_good_order(client_order_id="m1"))
    await trader.check_order(_good_order(client_order_id="m2", quantity_nanos=5000 * 10**9))
    url = f"http://127.0.0.1:{gateway.app.metrics_port}/metrics"
    text = await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=5).read().decode())
    assert 'pretrade_check_latency_seconds_bucket{le="1e-06"}' in text
    assert 'pretrade_decisions_total{verdict="accept"} 1.0' in text
    assert 'pretrade_check_failures_total{code="MAX_ORDER_QTY_EXCEEDED"} 1.0' in text
    assert 'pretrade_rpcs_total{code="OK",method="/pretrade.v1.GatewayService/CheckOrder"}' in text
    method = "/pretrade.v1.GatewayService/UpdateReferencePrices"
    assert f'pretrade_rpcs_total{{code="OK",method="{method}"}} 1.0' in text
    for name in ("pretrade_publish_lag_seconds", "pretrade_outbox_depth", "pretrade_nats_connected 1.0"):
        assert name in text


async def test_a_stream_cut_at_shutdown_fails_the_clients_waiters(tmp_path, nats_server):
    async with running_gateway(tmp_path / "gw", nats_url=nats_server.url, shutdown_grace_s=0.2) as gateway:
        async with gateway.client() as trader:
            async with trader.batcher() as batcher:
                await gateway.set_reference_prices()
                decision = await batcher.submit(_good_order(client_order_id="b1"))
                assert decision.verdict == ACCEPT
                await gateway.app.stop()
                deadline = time.monotonic() + 10
                while batcher.failure is None:
                    assert time.monotonic() < deadline, "the batcher did not notice the stream was cut"
                    await asyncio.sleep(0.01)
                with pytest.raises(GatewayUnavailable):
                    await batcher.submit(_good_order(client_order_id="b2"))


async def test_reflection_lists_and_describes_the_services_without_a_token(gateway):
    from google.protobuf.descriptor_pool import DescriptorPool
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

    def describe():
        with grpc.insecure_channel(gateway.target) as channel:
            database = ProtoReflectionDescriptorDatabase(channel)
            services = set(database.get_services())
            service = DescriptorPool(database).FindServiceByName("pretrade.v1.GatewayService")
            method = service.methods_by_name["CheckOrder"]
            return services, method.input_type.full_name

    services, input_type = await asyncio.wait_for(asyncio.to_thread(describe), 10)
    assert {"pretrade.v1.GatewayService", "pretrade.v1.AdminService", "grpc.health.v1.Health"} <= services
    assert input_type == "pretrade.v1.CheckOrderRequest"


async def test_too_many_calls_in_flight_is_resource_exhausted(tmp_path, nats_server):
    async with running_gateway(tmp_path / "gw", nats_url=nats_server.url, max_concurrent_rpcs=1) as gateway:
        async with gateway.client() as trader:
            requests: asyncio.Queue = asyncio.Queue()

            async def outgoing():
                while (request := await requests.get()) is not None:
                    yield request

            holding = trader.stream(outgoing())
            await requests.put(gateway_pb2.StreamOrdersRequest(batch_id=1))
            assert (await asyncio.wait_for(anext(holding), 10)).decisions.batch_id == 1
            with pytest.raises(Overloaded):
                await trader.check_order(_good_order())
            await requests.put(None)
            assert [response async for response in holding] == []


async def test_an_unexpected_error_outside_the_order_path_is_internal_with_a_log_reference(
    gateway, trader, monkeypatch
):
    def broken(executions):
        raise KeyError("bookkeeping")

    monkeypatch.setattr(gateway.app.gate, "apply_executions", broken)
    with pytest.raises(GatewayInternalError) as caught:
        await trader.report_executions([make_execution(account="ACC1", client_order_id="c", execution_id="e",
                                                       execution_type="cancelled")])
    assert caught.value.code == grpc.StatusCode.INTERNAL
    assert "internal error in ReportExecutions: KeyError (gateway log ref " in caught.value.message
