"""The SDK's channel across a gateway outage, for both clients: it retries the connection at
most about a second apart however long the outage (gRPC's default backoff grows to 120 s),
so calls pass again within about a second of the gateway's return; ``channel_options`` a
user gives win over the SDK's defaults.

While the gateway is down its port is held by :class:`DownGateway`, which accepts each
connection and closes it at once: to the channel that is a failed attempt like a refused
one, and the test can count the attempts instead of timing them.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import socket

import pytest

from clients import AsyncGatewayClient, GatewayClient, GatewayUnavailable, make_order
from clients.sync_client import (
    DEFAULT_CHANNEL_OPTIONS,
    DEFAULT_INITIAL_RECONNECT_BACKOFF_MS,
    merged_channel_options,
)
from gateway.auth import ensure_demo_tokens
from pretrade.v1 import types_pb2
from tests.clients.gateway_harness import running_gateway

pytestmark = pytest.mark.timeout(120)

ACCEPT = types_pb2.VERDICT_ACCEPT
#: Connection attempts the channel must make while the gateway is down, and the bound on
#: the wait for them. With the SDK's backoff (100 ms ×1.6 up to 1 s, ±20 % jitter) the 8th
#: attempt starts at most 4.3 s after the first; with gRPC's defaults (1 s ×1.6 up to 120 s)
#: at least 0.8 × (1 + 1.6 + ... + 1.6**6) = 34 s after it, so the old channel fails here.
RECONNECT_ATTEMPTS = 8
OUTAGE_TIMEOUT_S = 15.0
#: Bound on the wait for a call to pass once the restarted gateway serves (the SDK's next
#: attempt comes within 1.2 s of the last one).
RECOVERY_TIMEOUT_S = 10.0
#: A user's reconnect backoff in test_user_channel_options_win..., and how long the test
#: watches for a retry that the user's backoff forbids and the SDK's would make 6 times.
USER_BACKOFF_MS = 60_000
QUIET_S = 3.0
CALL_TIMEOUT_S = 2.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class DownGateway:
    """A gateway that is down, on ``port``: every connection is accepted and closed at once,
    and counted."""

    def __init__(self) -> None:
        self.attempts = 0
        self._changed = asyncio.Event()
        self._server: asyncio.Server | None = None

    @classmethod
    async def start(cls, port: int) -> DownGateway:
        down = cls()
        down._server = await asyncio.start_server(down._refuse, "127.0.0.1", port)
        return down

    async def _refuse(self, _reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.attempts += 1
        self._changed.set()
        writer.close()

    async def wait_attempts(self, count: int, timeout_s: float) -> None:
        async def reached() -> None:
            while self.attempts < count:
                self._changed.clear()
                await self._changed.wait()

        try:
            await asyncio.wait_for(reached(), timeout_s)
        except TimeoutError:
            pytest.fail(f"{self.attempts} connection attempts within {timeout_s} s, expected {count}")

    async def stop(self) -> None:
        self._server.close()
        await self._server.wait_closed()


@contextlib.asynccontextmanager
async def sdk_check_order(kind: str, target: str, token: str, **options):
    """``check_order`` of a client of ``kind``; the blocking client's runs in a worker thread
    so that the event loop (the gateway, DownGateway) keeps serving."""
    if kind == "async":
        async with AsyncGatewayClient(target, token, **options) as client:
            yield client.check_order
    else:
        with GatewayClient(target, token, **options) as client:
            async def check_order(order, **kwargs):
                return await asyncio.to_thread(client.check_order, order, **kwargs)

            yield check_order


def order(client_order_id: str):
    return make_order(account="ACC1", symbol="AAPL", side="buy", quantity=1, price="100",
                      client_order_id=client_order_id)


def test_user_options_come_after_the_defaults_and_win_per_key():
    assert merged_channel_options() == DEFAULT_CHANNEL_OPTIONS
    merged = merged_channel_options((
        ("grpc.max_reconnect_backoff_ms", 5000),
        ("grpc.keepalive_time_ms", 10_000),
        ("grpc.max_reconnect_backoff_ms", 7000),
    ))
    assert merged == (
        ("grpc.initial_reconnect_backoff_ms", DEFAULT_INITIAL_RECONNECT_BACKOFF_MS),
        ("grpc.max_reconnect_backoff_ms", 7000),
        ("grpc.keepalive_time_ms", 10_000),
    )


@pytest.mark.integration
@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_after_a_long_outage_calls_pass_within_about_a_second_of_the_gateways_return(tmp_path, kind):
    data_dir = tmp_path / "gw"  # the same data dir (and demo tokens) for both gateway runs
    data_dir.mkdir()
    port = free_port()
    target = f"127.0.0.1:{port}"
    async with sdk_check_order(kind, target, ensure_demo_tokens(data_dir).tokens["trader"]) as check_order:
        async with running_gateway(data_dir, listen=target) as gateway:
            await gateway.set_reference_prices()
            assert (await check_order(order("before"))).verdict == ACCEPT
        down = await DownGateway.start(port)
        try:
            with pytest.raises(GatewayUnavailable):
                await check_order(order("down"))
            await down.wait_attempts(RECONNECT_ATTEMPTS, OUTAGE_TIMEOUT_S)
        finally:
            await down.stop()
        async with running_gateway(data_dir, listen=target) as gateway:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + RECOVERY_TIMEOUT_S
            for attempt in itertools.count():
                try:
                    # any decision will do: the restarted gateway has no reference price yet
                    await check_order(order(f"after-{attempt}"))
                    break
                except GatewayUnavailable:  # between two reconnect attempts: refused at once
                    assert loop.time() < deadline, "the client did not reconnect to the restarted gateway"
                    await asyncio.sleep(0.05)
            await gateway.set_reference_prices()
            assert (await check_order(order("priced"))).verdict == ACCEPT


@pytest.mark.integration
@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_user_channel_options_win_over_the_sdk_backoff(kind):
    port = free_port()
    down = await DownGateway.start(port)
    user_backoff = (
        ("grpc.initial_reconnect_backoff_ms", USER_BACKOFF_MS),
        ("grpc.max_reconnect_backoff_ms", USER_BACKOFF_MS),
    )
    try:
        async with sdk_check_order(kind, f"127.0.0.1:{port}", "pt_x", timeout_s=CALL_TIMEOUT_S,
                                   channel_options=user_backoff) as check_order:
            with pytest.raises(GatewayUnavailable):
                await check_order(order("down"))
            await down.wait_attempts(1, CALL_TIMEOUT_S)
            await asyncio.sleep(QUIET_S)  # the SDK's backoff would have retried about 6 times
            assert down.attempts == 1, "the channel retried before the user's backoff"
    finally:
        await down.stop()
