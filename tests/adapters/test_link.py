"""clients/adapters/link.py without a gateway: a link to nothing fails closed at once and
within its timeout."""

from __future__ import annotations

import socket
import time

import pytest

from clients import GatewayError, GatewayUnavailable, make_order
from clients.adapters.link import GatewayLink

pytestmark = pytest.mark.timeout(60)


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]  # nothing listens once the socket is closed


async def test_a_link_to_nothing_fails_closed_quickly_and_does_not_storm():
    link = GatewayLink(f"127.0.0.1:{closed_port()}", "t", 2.0, retry_interval_s=30.0)
    order = make_order(account="A", symbol="S", side="buy", quantity="1", price="1")
    try:
        started = time.monotonic()
        with pytest.raises(GatewayError):
            await link.decide(order)
        assert time.monotonic() - started < 2.0 + 1.0
        started = time.monotonic()
        with pytest.raises(GatewayUnavailable, match="the order stream is down"):
            await link.decide(order)  # within retry_interval_s: refused at once, no new attempt
        assert time.monotonic() - started < 0.5
        assert not link.stream_open
    finally:
        await link.close()
