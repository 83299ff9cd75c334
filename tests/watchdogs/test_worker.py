"""The worker on a real nats-server: inputs from NATS, alerts, heartbeats, the status and
metrics endpoint, webhooks with retries, malformed input, and halt requests through a real
gateway with a watchdog token."""

from __future__ import annotations

import asyncio
import json
import socket
import time

import grpc
import nats
import pytest

from gateway.auth import ROLE_OPERATOR, ensure_demo_tokens, generate_token, token_entry_toml
from pretrade.v1 import halts_pb2, halts_pb2_grpc, watchdogs_pb2
from tests.clients.gateway_harness import running_gateway
from tests.watchdogs import events as ev
from watchdogs import subjects
from watchdogs.config import parse_config
from watchdogs.core import FIRM, Action, Finding, ScopeKind, Target
from watchdogs.worker import HaltRequester, WatchdogMetrics, WatchdogWorker

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

#: Generous: a loaded CI host (or a paused VM) must not turn a slow pass into a failure.
WAIT_S = 30.0


async def _until(predicate, timeout_s: float = WAIT_S, describe=lambda: ""):
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"condition not reached in time {describe()}"
        await asyncio.sleep(0.02)


class WebhookServer:
    """A local HTTP endpoint that answers 503 to the first ``failures`` posts, then 200."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.bodies: list[dict] = []
        self.attempts = 0
        self._server = None

    async def __aenter__(self):
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}/hook"
        return self

    async def __aexit__(self, *exc_info):
        self._server.close()
        await self._server.wait_closed()

    async def _handle(self, reader, writer):
        headers = (await reader.readuntil(b"\r\n\r\n")).decode()
        length = next(
            int(line.split(":")[1])
            for line in headers.split("\r\n")
            if line.lower().startswith("content-length")
        )
        body = await reader.readexactly(length)
        self.attempts += 1
        status = "503 Service Unavailable" if self.attempts <= self.failures else "200 OK"
        if self.attempts > self.failures:
            self.bodies.append(json.loads(body))
        writer.write(f"HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".encode())
        await writer.drain()
        writer.close()


async def _http_get(port: int, path: str) -> tuple[int, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    await writer.drain()
    response = await reader.read()
    writer.close()
    head, _, body = response.partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), body


async def test_worker_alerts_heartbeats_status_webhooks_and_survives_garbage(nats_server):
    async with WebhookServer(failures=2) as webhook:
        config = parse_config({
            "worker": {"worker_id": "wd-test", "heartbeat_interval_s": 0.1, "status_listen": "127.0.0.1:0"},
            "webhooks": [{"url": webhook.url, "backoff_s": 0.01, "max_attempts": 5}],
            "watchdogs": {"theta_watchdog": {"max_abs_theta": 500.0, "consecutive": 2, "action": "warn"}},
        })
        worker = WatchdogWorker(config, nats_server.url)
        nc = await nats.connect(nats_server.url)
        alerts, heartbeats = [], []
        await nc.subscribe(subjects.ALERTS_WILDCARD, cb=_collector(alerts, watchdogs_pb2.Finding))
        await nc.subscribe(
            subjects.heartbeat_subject("wd-test"), cb=_collector(heartbeats, watchdogs_pb2.WatchdogHeartbeat)
        )
        await worker.start()
        try:
            subject = subjects.strategy_metric_subject("ALGO")
            handshakes = await _until_the_worker_hears(nc, worker, subject)
            await nc.publish(subject, b"\xff\xfe garbage")
            await nc.publish(subject, b"")
            for t, theta in ((0, -100), (1, -600), (2, 50), (3, -600), (4, -700)):
                await nc.publish(subject, ev.metric(t, "net_theta", theta).payload.SerializeToString())
            await nc.flush()
            await _until(
                lambda: alerts and webhook.bodies and heartbeats,
                describe=lambda: (
                    f"alerts={len(alerts)} webhook_attempts={webhook.attempts} heartbeats={len(heartbeats)} "
                    f"status={worker.status()}"
                ),
            )
            finding = alerts[0]
            assert (finding.watchdog, finding.name, finding.action) == (
                "theta_watchdog", "ALGO", watchdogs_pb2.WATCHDOG_ACTION_WARN)
            assert finding.event_ns == ev.at(4) and finding.breach_started_ns == ev.at(3)
            assert webhook.attempts == 3, "two 503s retried, then delivered"
            assert webhook.bodies[0]["finding"]["watchdog"] == "theta_watchdog"
            assert "[WARN] theta_watchdog" in webhook.bodies[0]["text"]
            await _until(lambda: heartbeats[-1].events_observed >= handshakes + 5)
            assert heartbeats[-1].malformed_messages == 2

            status_code, body = await _http_get(worker.status_port, "/status")
            status = json.loads(body)
            assert status_code == 200 and status["nats_connected"] and status["malformed_messages"] == "2"
            assert status["recent_findings"][0]["outcome"] == "alert_only"
            status_code, body = await _http_get(worker.status_port, "/metrics")
            assert status_code == 200
            assert b'pretrade_watchdog_malformed_messages_total{kind="metric"} 2.0' in body
            assert (await _http_get(worker.status_port, "/nope"))[0] == 404
        finally:
            await worker.stop()
            await nc.close()


async def _until_the_worker_hears(nc, worker: WatchdogWorker, subject: str) -> int:
    """Publish a harmless metric (another strategy, far below any limit) until the worker
    has observed one: core NATS delivers at most once, so the test first makes sure the
    path is live. Returns how many the worker observed."""
    harmless = ev.metric(-1, "net_theta", 0.0, target="HANDSHAKE").payload.SerializeToString()
    deadline = time.monotonic() + WAIT_S
    while worker.engine.events_observed == 0:
        assert time.monotonic() < deadline, "the worker never received a message"
        await nc.publish(subject, harmless)
        await nc.flush()
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.1)  # let any handshake still in flight arrive before counting
    return worker.engine.events_observed


def _collector(sink: list, message_type):
    async def collect(msg) -> None:
        sink.append(message_type.FromString(msg.data))

    return collect


def _finding(target: Target, action: Action) -> Finding:
    return Finding("test", target, action, 1.0, 0.0, "test finding", ev.at(0), ev.at(0), 1)


async def test_halt_requests_as_the_watchdog_principal(tmp_path, nats_server):
    # the harness reuses demo token files that still admit every demo principal, so an
    # extra entry appended to them admits the watchdog too
    demo = ensure_demo_tokens(tmp_path)
    watchdog_token = generate_token()
    with open(demo.hashes_path, "a") as hashes:
        hashes.write("\n" + token_entry_toml("watchdog:test", (ROLE_OPERATOR,), watchdog_token))
    async with running_gateway(tmp_path, nats_url=nats_server.url, host_halt_manager=True) as gateway:
        requester = HaltRequester(gateway.target, watchdog_token, WatchdogMetrics())
        try:
            algo = Target(ScopeKind.STRATEGY, "ALGO")
            assert await requester.act(_finding(algo, Action.THROTTLE), "0.5", 60) == "ok"
            assert await requester.act(_finding(FIRM, Action.THROTTLE), "0.5", 60) == "not_applicable"
            assert await requester.act(_finding(algo, Action.HALT), "0.5", 60) == "ok"
            assert await requester.act(_finding(algo, Action.REDUCE_ONLY), "0.5", 60) == "already_stricter"
            bad = HaltRequester(gateway.target, "pt_not-a-token", WatchdogMetrics())
            assert await bad.act(_finding(algo, Action.HALT), "0.5", 60) == "unauthenticated"
            await bad.close()
        finally:
            await requester.close()
        async with grpc.aio.insecure_channel(gateway.target) as channel:
            metadata = (("authorization", f"Bearer {gateway.tokens['alice']}"),)
            listed = await halts_pb2_grpc.HaltServiceStub(channel).ListHalts(
                halts_pb2.ListHaltsRequest(), metadata=metadata, timeout=5
            )
        assert [(h.name, h.set_by) for h in listed.halts] == [("ALGO", "watchdog:test")]
        assert [(o.strategy, o.throttle_factor) for o in listed.overrides] == [("ALGO", "0.5")]


async def test_a_failed_start_leaves_nothing_running(nats_server):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = parse_config({"worker": {"status_listen": f"127.0.0.1:{port}"}, "watchdogs": {"vpin": {}}})
        worker = WatchdogWorker(config, nats_server.url)
        with pytest.raises(OSError):
            await worker.start()
    assert worker.status()["nats_connected"] is False
    await worker.stop()


async def test_stop_after_nats_is_gone_returns_promptly(nats_server):
    config = parse_config({"worker": {"status_listen": "off"}, "watchdogs": {"vpin": {}}})
    worker = WatchdogWorker(config, nats_server.url)
    await worker.start()
    nats_server.stop()
    started = time.monotonic()
    await asyncio.wait_for(worker.stop(), WAIT_S)
    assert time.monotonic() - started < WAIT_S
