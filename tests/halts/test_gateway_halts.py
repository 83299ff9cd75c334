"""Halts through the whole gateway as ``pretrade up`` runs it: HaltService on the gateway's
port, the follower feeding the kernel, and the gateway failing closed when it cannot
follow the halt state. Real nats-server, real LMDB, real gRPC over loopback."""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from clients import make_order
from pretrade.v1 import halts_pb2, halts_pb2_grpc, trading_pb2, types_pb2
from tests.clients.gateway_harness import running_gateway

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

ACCEPT, REJECT = types_pb2.VERDICT_ACCEPT, types_pb2.VERDICT_REJECT


class Operator:
    """A HaltService client holding one operator's token."""

    def __init__(self, gateway, name: str):
        self._channel = grpc.aio.insecure_channel(gateway.target)
        self._stub = halts_pb2_grpc.HaltServiceStub(self._channel)
        self._metadata = (("authorization", f"Bearer {gateway.tokens[name]}"),)

    async def halt(self, scope, name: str = "", state=trading_pb2.TRADING_STATE_HALTED, **fields):
        request = halts_pb2.RequestHaltRequest(scope=scope, name=name, state=state, reason="test", **fields)
        return await self._stub.RequestHalt(request, metadata=self._metadata, timeout=10)

    async def resume(self, scope, name: str = ""):
        request = halts_pb2.RequestResumeRequest(scope=scope, name=name, reason="test")
        return await self._stub.RequestResume(request, metadata=self._metadata, timeout=10)

    async def approve(self, request_id: str):
        request = halts_pb2.ApproveRequest(request_id=request_id)
        return await self._stub.Approve(request, metadata=self._metadata, timeout=10)

    async def close(self):
        await self._channel.close()


async def _order(client, price: str, **fields):
    order = make_order(
        account=fields.pop("account", "ACC1"), symbol=fields.pop("symbol", "AAPL"), side=fields.pop("side", "buy"),
        quantity=fields.pop("quantity", "1"), price=price, **fields,
    )
    return await client.check_order(order)


def _codes(decision) -> set[str]:
    return {failure.code for failure in decision.failures}


async def _health(gateway) -> int:
    async with grpc.aio.insecure_channel(gateway.target) as channel:
        response = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        return response.status


async def _until(predicate, timeout_s: float = 15.0, interval_s: float = 0.05):
    deadline = time.monotonic() + timeout_s
    while True:
        result = await predicate()
        if result:
            return result
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(interval_s)


async def test_halt_resume_and_firm_dual_control_through_the_gateway(tmp_path, nats_server):
    async with running_gateway(tmp_path, nats_url=nats_server.url, host_halt_manager=True) as gateway:
        await gateway.set_reference_prices()
        alice, bob = Operator(gateway, "alice"), Operator(gateway, "bob")
        async with gateway.client() as trader:
            assert (await _order(trader, "100")).verdict == ACCEPT
            await alice.halt(trading_pb2.SCOPE_SYMBOL, "AAPL")
            halted = await _order(trader, "100.01")
            assert halted.verdict == REJECT and _codes(halted) == {"TRADING_HALTED"}
            assert (await _order(trader, "100.01", symbol="LOTS", quantity="10")).verdict == ACCEPT
            await alice.resume(trading_pb2.SCOPE_SYMBOL, "AAPL")
            assert (await _order(trader, "100.02")).verdict == ACCEPT

            await alice.halt(trading_pb2.SCOPE_FIRM, cancel_all=True)
            assert "TRADING_HALTED" in _codes(await _order(trader, "100.03"))
            pending = (await alice.resume(trading_pb2.SCOPE_FIRM)).pending
            assert pending.request_id
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await alice.approve(pending.request_id)
            assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
            assert "TRADING_HALTED" in _codes(await _order(trader, "100.04"))  # still halted
            await bob.approve(pending.request_id)
            assert (await _order(trader, "100.05")).verdict == ACCEPT
        await alice.close()
        await bob.close()


async def test_traders_cannot_halt(tmp_path, nats_server):
    async with running_gateway(tmp_path, nats_url=nats_server.url, host_halt_manager=True) as gateway:
        trader = Operator(gateway, "trader")
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await trader.halt(trading_pb2.SCOPE_FIRM)
        assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
        await trader.close()


async def test_halts_survive_a_gateway_restart(tmp_path, nats_server):
    async with running_gateway(tmp_path / "first", nats_url=nats_server.url, host_halt_manager=True) as gateway:
        alice = Operator(gateway, "alice")
        await alice.halt(trading_pb2.SCOPE_ACCOUNT, "ACC1", state=trading_pb2.TRADING_STATE_REDUCING)
        await alice.close()
    # a fresh gateway process (new engine, new data dir) loads the halt before serving
    async with running_gateway(tmp_path / "second", nats_url=nats_server.url) as gateway:
        await gateway.set_reference_prices()
        async with gateway.client() as trader:
            assert "REDUCE_ONLY_VIOLATION" in _codes(await _order(trader, "100"))
            assert (await _order(trader, "100", account="CREDIT")).verdict == ACCEPT


async def test_a_gateway_that_cannot_follow_the_halt_state_serves_no_orders(tmp_path, nats_server):
    async with running_gateway(tmp_path, nats_url=nats_server.url) as gateway:
        await gateway.set_reference_prices()
        assert await _health(gateway) == health_pb2.HealthCheckResponse.SERVING
        async with gateway.client() as trader:
            assert (await _order(trader, "100")).verdict == ACCEPT
            nats_server.kill()

            async def failing_closed():
                decision = await _order(trader, "100.01")
                return decision.verdict == REJECT and _codes(decision) == {"HALT_STATE_UNAVAILABLE"}

            await _until(failing_closed)
            assert await _health(gateway) == health_pb2.HealthCheckResponse.NOT_SERVING
            nats_server.start()

            async def accepting_again():
                return (await _order(trader, "100.02")).verdict == ACCEPT

            await _until(accepting_again, timeout_s=30)
            assert await _health(gateway) == health_pb2.HealthCheckResponse.SERVING


async def test_a_halt_answers_once_every_gateway_enforces_it(tmp_path, nats_server):
    """Two gateways (`pretrade up` hosting HaltService, and a plain gateway) on one NATS:
    RequestHalt's answer lists both CONFIRMED, and neither accepts an order of the halted
    symbol once it has returned."""
    host_options = dict(host_halt_manager=True, gateway_id="gw-1")
    async with running_gateway(tmp_path / "gw-1", nats_url=nats_server.url, **host_options) as first, \
            running_gateway(tmp_path / "gw-2", nats_url=nats_server.url, gateway_id="gw-2") as second:
        await first.set_reference_prices()
        await second.set_reference_prices()
        alice = Operator(first, "alice")

        async def both_reporting():
            answer = await alice.halt(trading_pb2.SCOPE_SYMBOL, "WARMUP")
            return {c.gateway_id for c in answer.gateways} == {"gw-1", "gw-2"}

        await _until(both_reporting)
        answer = await alice.halt(trading_pb2.SCOPE_SYMBOL, "AAPL")
        assert [(c.gateway_id, c.status) for c in answer.gateways] == [
            ("gw-1", halts_pb2.CONFIRMATION_STATUS_CONFIRMED),
            ("gw-2", halts_pb2.CONFIRMATION_STATUS_CONFIRMED),
        ]
        assert answer.gateways[0].applied_revision == answer.gateways[1].applied_revision
        for gateway in (first, second):
            async with gateway.client() as trader:
                decision = await _order(trader, "100")
                assert decision.verdict == REJECT and _codes(decision) == {"TRADING_HALTED"}
        await alice.close()
