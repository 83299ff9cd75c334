"""Reloading the token file without a restart (SIGHUP): revoked tokens are refused from
the next call, open streams of revoked tokens (or of principals that lost the method's
roles) are ended, decisions a stream received stay recorded and published, a bad file
changes nothing. A real gateway (GatewayApp, demo token file) on loopback with a real
nats-server, through the Python SDK; every wait has a hard timeout.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Mapping
from types import MappingProxyType

import grpc
import pytest

from clients import PermissionDenied, Unauthenticated, make_order
from gateway.auth import DEMO_PRINCIPALS, generate_token, token_entry_toml
from pretrade.v1 import gateway_pb2, halts_pb2, halts_pb2_grpc, types_pb2
from tests.clients.gateway_harness import running_gateway
from tests.gateway.test_server_integration import read_decisions_from_jetstream

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

ACCEPT = types_pb2.VERDICT_ACCEPT
#: How long a test waits for one response, or for a stream to end, seconds.
WAIT_S = 10.0


def write_token_file(
    gateway, roles_by_name: dict[str, tuple[str, ...]], extra_tokens: Mapping[str, str] = MappingProxyType({})
) -> None:
    """Rewrite the gateway's token file: the demo principals in ``roles_by_name`` (with
    those roles), plus ``extra_tokens`` (name -> token) as traders."""
    tokens = {**gateway.tokens, **extra_tokens}
    roles_by_name = {**roles_by_name, **{name: ("trader",) for name in extra_tokens}}
    text = "\n".join(token_entry_toml(name, roles, tokens[name]) for name, roles in roles_by_name.items())
    with open(gateway.app.config.tokens_path, "w", encoding="utf-8") as handle:
        handle.write(text)


def demo_roles_without(*names: str) -> dict[str, tuple[str, ...]]:
    return {name: roles for name, roles in DEMO_PRINCIPALS if name not in names}


def order(client_order_id: str, price: str = "100"):
    return make_order(account="ACC1", symbol="AAPL", side="buy", quantity=1, price=price,
                      client_order_id=client_order_id)


class OpenStream:
    """A StreamOrders call fed from a queue, so the test decides when each batch goes."""

    def __init__(self, client) -> None:
        self._requests: asyncio.Queue = asyncio.Queue()
        self.responses = client.stream(self._outgoing())

    async def _outgoing(self):
        while (request := await self._requests.get()) is not None:
            yield request

    async def send(self, batch_id: int, *orders) -> gateway_pb2.StreamOrdersResponse:
        await self._requests.put(gateway_pb2.StreamOrdersRequest(batch_id=batch_id, orders=orders))
        return await asyncio.wait_for(anext(self.responses), WAIT_S)

    async def ended_with(self, error_class):
        """The error the stream ends with (without the test sending anything more)."""
        with pytest.raises(error_class) as caught:
            await asyncio.wait_for(anext(self.responses), WAIT_S)
        await self._requests.put(None)
        return caught.value


async def test_a_revoked_token_is_refused_from_the_next_call_and_the_others_still_work(gateway):
    async with gateway.client("trader") as trader, gateway.client("admin") as admin:
        assert (await trader.check_order(order("r1"))).verdict == ACCEPT
        write_token_file(gateway, demo_roles_without("trader"))
        assert await gateway.app.reload_tokens()
        with pytest.raises(Unauthenticated):
            await trader.check_order(order("r2", "100.01"))
        assert (await admin.check_order(order("r3", "100.02"))).verdict == ACCEPT


async def test_sighup_reloads_the_token_file(gateway):
    gateway.app.install_signal_handlers()
    async with gateway.client("trader") as trader:
        assert (await trader.check_order(order("h1"))).verdict == ACCEPT
        write_token_file(gateway, demo_roles_without("trader"))
        os.kill(os.getpid(), signal.SIGHUP)
        deadline = asyncio.get_running_loop().time() + WAIT_S
        while True:
            try:
                await trader.check_order(order("h2", "100.01"))
            except Unauthenticated:
                break
            assert asyncio.get_running_loop().time() < deadline, "SIGHUP did not reload the token file"
            await asyncio.sleep(0.05)


async def test_an_open_stream_of_a_revoked_token_is_ended_and_its_decisions_are_published(gateway, nats_server):
    async with gateway.client("trader") as trader:
        stream = OpenStream(trader)
        first = await stream.send(1, order("s1"), order("s2", "100.01"))
        second = await stream.send(2, order("s3", "100.02"))
        received = [d for r in (first, second) for d in r.decisions.decisions]
        assert [d.verdict for d in received] == [ACCEPT] * 3
        write_token_file(gateway, demo_roles_without("trader"))
        assert await gateway.app.reload_tokens()
        error = await stream.ended_with(Unauthenticated)
        assert "token of trader revoked at token reload" in error.message, error.message
        assert error.code == grpc.StatusCode.UNAUTHENTICATED
    assert gateway.app.gateway_servicer.open_streams == 0 and gateway.app.auth.open_streams == 0
    await gateway.wait_published()
    published = {d.sequence: d for d in await read_decisions_from_jetstream(nats_server.url)}
    for decision in received:
        assert published[decision.sequence].SerializeToString() == decision.SerializeToString()


async def test_a_stream_whose_principal_lost_the_methods_role_is_ended_with_permission_denied(gateway):
    async with gateway.client("trader") as trader:
        stream = OpenStream(trader)
        assert (await stream.send(1, order("p1"))).decisions.decisions[0].verdict == ACCEPT
        write_token_file(gateway, {**demo_roles_without(), "trader": ("operator",)})
        assert await gateway.app.reload_tokens()
        error = await stream.ended_with(PermissionDenied)
        assert "roles changed at token reload" in error.message and "StreamOrders" in error.message, error.message
        with pytest.raises(PermissionDenied):  # and the next call is refused too
            await trader.check_order(order("p2", "100.01"))


async def test_streams_the_new_file_still_admits_stay_open(gateway):
    async with gateway.client("trader") as trader, gateway.client("admin") as admin:
        kept = OpenStream(admin)
        assert (await kept.send(1, order("k1"))).decisions.batch_id == 1
        revoked = OpenStream(trader)
        assert (await revoked.send(1, order("k2", "100.01"))).decisions.batch_id == 1
        write_token_file(gateway, demo_roles_without("trader"))
        assert await gateway.app.reload_tokens()
        await revoked.ended_with(Unauthenticated)
        assert (await kept.send(2, order("k3", "100.02"))).decisions.decisions[0].verdict == ACCEPT
        await kept._requests.put(None)
        assert [response async for response in kept.responses] == []


async def test_a_token_added_to_the_file_works_after_the_reload(gateway):
    token = generate_token()
    async with gateway.client(None) as newcomer:
        newcomer.metadata = (("authorization", f"Bearer {token}"),)
        with pytest.raises(Unauthenticated):
            await newcomer.check_order(order("n1"))
        write_token_file(gateway, demo_roles_without(), {"desk2": token})
        assert await gateway.app.reload_tokens()
        assert (await newcomer.check_order(order("n2"))).verdict == ACCEPT


async def test_a_bad_token_file_keeps_the_tokens_in_force_and_logs_one_error_line(gateway, caplog):
    async with gateway.client("trader") as trader:
        stream = OpenStream(trader)
        assert (await stream.send(1, order("b1"))).decisions.batch_id == 1
        # the trader's entry is gone, and a later entry is malformed: nothing may take effect
        write_token_file(gateway, demo_roles_without("trader"))
        path = gateway.app.config.tokens_path
        with open(path, "a", encoding="utf-8") as handle:
            handle.write('\n[[tokens]]\nname = "broken"\nroles = ["trader"]\nsha256 = "xyz"\n')
        with caplog.at_level(logging.INFO, logger="gateway.auth"):
            assert not await gateway.app.reload_tokens()
        errors = [record.getMessage() for record in caplog.records if record.levelno >= logging.ERROR]
        assert len(errors) == 1 and "\n" not in errors[0], errors
        assert path in errors[0] and "tokens[" in errors[0] and ".sha256" in errors[0], errors[0]
        assert (await trader.check_order(order("b2", "100.01"))).verdict == ACCEPT
        assert (await stream.send(2, order("b3", "100.02"))).decisions.batch_id == 2
        await stream._requests.put(None)
        assert [response async for response in stream.responses] == []


async def test_a_watch_halts_stream_of_a_revoked_token_is_ended(tmp_path, nats_server):
    async with running_gateway(tmp_path / "gw", nats_url=nats_server.url, host_halt_manager=True) as gateway:
        async with grpc.aio.insecure_channel(gateway.target) as channel:
            watch = halts_pb2_grpc.HaltServiceStub(channel).WatchHalts(
                halts_pb2.WatchHaltsRequest(), metadata=(("authorization", f"Bearer {gateway.tokens['alice']}"),)
            )
            first = await asyncio.wait_for(watch.read(), WAIT_S)
            assert first.HasField("snapshot")
            write_token_file(gateway, demo_roles_without("alice"))
            assert await gateway.app.reload_tokens()
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await asyncio.wait_for(watch.read(), WAIT_S)
            assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert "token of alice revoked at token reload" in caught.value.details()
        assert gateway.app.auth.open_streams == 0
