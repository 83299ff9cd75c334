"""Fixtures of the watchdog tests: the gateway tests' real nats-server."""

from tests.gateway.conftest import NatsServerHandle, nats_server  # noqa: F401 (the fixture)
