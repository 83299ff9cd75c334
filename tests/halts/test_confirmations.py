"""Which gateways enforce a change: the followers' ``HaltsApplied`` reports, the manager's
bounded wait for them, and the per-gateway confirmations in the answers and the CLI.

The integration tests run a gateway hosting HaltService (``InProcessGateway``, real gRPC
on loopback) and further gateways' followers on their own NATS connections, all on a real
nats-server; the timeouts are shortened through constructor parameters.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import shlex
import sys
import time
from pathlib import Path

import grpc
import pytest

from fastpath.codes import Scope, TradingState
from halts.follower import HaltFollower
from halts.manager import GatewayTracker
from halts.subjects import HALTS_BUCKET, state_key
from pretrade.v1 import halts_pb2, halts_pb2_grpc, trading_pb2

from .conftest import TcpProxy, connect, eventually, make_engine
from .harness import InProcessGateway

pytestmark = [pytest.mark.timeout(60), pytest.mark.integration]

CONFIRMED = halts_pb2.CONFIRMATION_STATUS_CONFIRMED
FAILED_CLOSED = halts_pb2.CONFIRMATION_STATUS_FAILED_CLOSED
UNCONFIRMED = halts_pb2.CONFIRMATION_STATUS_UNCONFIRMED

REPO_ROOT = Path(__file__).resolve().parents[2]
#: Longest one ``pretrade`` process may take (start-up included), seconds.
CLI_TIMEOUT_S = 30.0
HOST = "gw-host"
#: Fast reports, a short confirm timeout and liveness window (production: 0.25 s, 1 s, 0.75 s).
HEARTBEAT_S = 0.05
CONFIRM_TIMEOUT_S = 0.3
LIVENESS_S = 0.5


# -- the bookkeeping, with a fake clock ---------------------------------------------------------


class FakeMonotonic:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def applied(gateway_id: str, revision: int, ready: bool = True) -> halts_pb2.HaltsApplied:
    return halts_pb2.HaltsApplied(gateway_id=gateway_id, revision=revision, ready=ready)


def statuses(confirmations) -> dict[str, tuple[int, int]]:
    return {c.gateway_id: (c.status, c.applied_revision) for c in confirmations}


async def test_tracker_sorts_gateways_into_confirmed_failed_closed_and_unconfirmed():
    clock = FakeMonotonic()
    tracker = GatewayTracker(liveness_s=1.0, monotonic=clock)
    tracker.report(applied("gw-c", 7))
    tracker.report(applied("gw-a", 9))
    tracker.report(applied("gw-b", 3, ready=False))
    confirmations = await tracker.confirm(8, timeout_s=0.05)
    assert [c.gateway_id for c in confirmations] == ["gw-a", "gw-b", "gw-c"]
    assert statuses(confirmations) == {
        "gw-a": (CONFIRMED, 9),
        "gw-b": (FAILED_CLOSED, 3),
        "gw-c": (UNCONFIRMED, 7),
    }


async def test_tracker_waits_for_a_report_that_arrives_in_time():
    tracker = GatewayTracker(liveness_s=1.0, monotonic=FakeMonotonic())
    tracker.report(applied("gw-a", 4))
    confirming = asyncio.create_task(tracker.confirm(5, timeout_s=5.0))
    await asyncio.sleep(0.01)
    assert not confirming.done()
    tracker.report(applied("gw-a", 5))
    assert statuses(await asyncio.wait_for(confirming, 5)) == {"gw-a": (CONFIRMED, 5)}


async def test_tracker_stops_waiting_for_a_gateway_that_fails_closed():
    tracker = GatewayTracker(liveness_s=1.0, monotonic=FakeMonotonic())
    tracker.report(applied("gw-a", 4))
    confirming = asyncio.create_task(tracker.confirm(5, timeout_s=5.0))
    await asyncio.sleep(0.01)
    tracker.report(applied("gw-a", 4, ready=False))
    assert statuses(await asyncio.wait_for(confirming, 5)) == {"gw-a": (FAILED_CLOSED, 4)}


async def test_tracker_forgets_a_gateway_silent_past_the_liveness_window():
    clock = FakeMonotonic()
    tracker = GatewayTracker(liveness_s=1.0, monotonic=clock)
    tracker.report(applied("gw-gone", 1))
    clock.now += 0.5
    tracker.report(applied("gw-here", 1))
    clock.now += 0.6  # gw-gone silent for 1.1 s, gw-here for 0.6 s
    # No wait for the silent one, however far behind it is.
    confirmations = await asyncio.wait_for(tracker.confirm(1, timeout_s=5.0), 1.0)
    assert statuses(confirmations) == {"gw-here": (CONFIRMED, 1)}


# -- through the gateway: real NATS, real gRPC --------------------------------------------------


@pytest.fixture
async def host(tmp_path, nats_server):
    """A gateway hosting HaltService, with a short confirm timeout and liveness window."""
    gateway = InProcessGateway(
        tmp_path,
        nats_server.url,
        gateway_id=HOST,
        follower_options=dict(applied_heartbeat_s=HEARTBEAT_S),
        manager_options=dict(confirm_timeout_s=CONFIRM_TIMEOUT_S, gateway_liveness_s=LIVENESS_S),
    )
    await gateway.start()
    yield gateway
    await gateway.stop()


@contextlib.asynccontextmanager
async def other_gateway(url: str, gateway_id: str, **options):
    """Another gateway's halt follower (and engine) on its own NATS connection to ``url``."""
    nc = await connect(url)
    engine = make_engine()
    follower = HaltFollower(
        nc,
        engine,
        gateway_id=gateway_id,
        reload_rules=lambda overrides: None,
        on_cancel_all=lambda message: None,
        applied_heartbeat_s=HEARTBEAT_S,
        **options,
    )
    await follower.start()
    try:
        yield follower, engine
    finally:
        await follower.stop()
        await nc.close()


async def halt(host: InProcessGateway, name: str, who: str = "alice", scope=trading_pb2.SCOPE_SYMBOL):
    async with grpc.aio.insecure_channel(host.target) as channel:
        request = halts_pb2.RequestHaltRequest(
            scope=scope, name=name, state=trading_pb2.TRADING_STATE_HALTED, reason="test"
        )
        stub = halts_pb2_grpc.HaltServiceStub(channel)
        return await stub.RequestHalt(request, metadata=host.metadata(who), timeout=10)


async def until_listed(host: InProcessGateway, gateway_ids: set[str], timeout_s: float = 10.0):
    """Halt a scope nobody trades until the answer lists exactly ``gateway_ids``; returns it."""
    deadline = time.monotonic() + timeout_s
    while True:
        answer = await halt(host, "WARMUP")
        if {c.gateway_id for c in answer.gateways} == gateway_ids:
            return answer
        assert time.monotonic() < deadline, f"answer lists {statuses(answer.gateways)}, not {gateway_ids}"
        await asyncio.sleep(HEARTBEAT_S)


async def test_a_gateway_behind_a_slow_link_is_unconfirmed_then_enforces(host, nats_server):
    """The slow gateway receives everything 0.5 s late, past the 0.3 s confirm timeout: the
    answer returns with it UNCONFIRMED (the host CONFIRMED and enforcing), and the halt
    reaches it afterwards."""
    async with TcpProxy(nats_server.port, delay_s=0.5) as slow_link:
        slow_options = dict(staleness_bound_s=30.0, load_timeout_s=10.0)  # slow, not failing closed
        async with other_gateway(slow_link.url, "gw-slow", **slow_options) as (slow, slow_engine):
            await until_listed(host, {HOST, "gw-slow"})
            answer = await halt(host, "AAPL")
            assert host.engine.trading_state(Scope.SYMBOL, "AAPL") == TradingState.HALTED
            confirmations = statuses(answer.gateways)
            assert confirmations[HOST][0] == CONFIRMED
            assert confirmations[HOST][1] >= answer.revision > 0  # the revision the halt waited for
            status, slow_revision = confirmations["gw-slow"]
            assert status == UNCONFIRMED
            assert slow_revision < answer.revision
            await eventually(
                lambda: slow_engine.trading_state(Scope.SYMBOL, "AAPL") == TradingState.HALTED,
                what="the halt to reach the slow gateway",
            )
            assert slow.ready


async def test_cli_lists_each_gateway_and_warns_about_an_unconfirmed_one(host, nats_server, nc):
    kv = await nc.jetstream().key_value(HALTS_BUCKET)
    async with TcpProxy(nats_server.port, delay_s=0.5) as slow_link:
        slow_options = dict(staleness_bound_s=30.0, load_timeout_s=10.0)
        async with other_gateway(slow_link.url, "gw-slow", **slow_options):
            await until_listed(host, {HOST, "gw-slow"})
            code, out, err = await run_cli(host, "alice", "halt --scope symbol --id AAPL --reason test")
            assert code == 0
            lines = out.splitlines()
            assert lines[0].startswith("HALTED   SYMBOL AAPL")
            host_line = re.fullmatch(rf"  {HOST} CONFIRMED rev (\d+) of (\d+)", lines[1])
            slow_line = re.fullmatch(r"  gw-slow UNCONFIRMED \(last applied rev (\d+) of (\d+)\)", lines[2])
            host_applied, host_waited_for = map(int, host_line.groups())
            slow_applied, slow_waited_for = map(int, slow_line.groups())
            assert slow_applied < slow_waited_for == host_waited_for <= host_applied
            assert slow_waited_for == (await kv.get(state_key(Scope.SYMBOL, "AAPL"))).revision
            assert err.startswith("pretrade: warning: not confirmed in time by gw-slow:")
            assert len(err.splitlines()) == 1

            code, out, _ = await run_cli(host, "alice", "halt --scope symbol --id MSFT --reason test --json")
            answer = json.loads(out)
            gateways = {g["gateway_id"]: g["status"] for g in answer["gateways"]}
            assert code == 0 and gateways == {
                HOST: "CONFIRMATION_STATUS_CONFIRMED",
                "gw-slow": "CONFIRMATION_STATUS_UNCONFIRMED",
            }
            assert int(answer["revision"]) == (await kv.get(state_key(Scope.SYMBOL, "MSFT"))).revision


async def test_a_stopped_gateway_drops_out_of_the_answers(host, nats_server):
    async with other_gateway(nats_server.url, "gw-2") as (follower, _):
        answer = await until_listed(host, {HOST, "gw-2"})
        assert {c.status for c in answer.gateways} == {CONFIRMED}
        await follower.stop()  # no more reports: the gateway is down
    answer = await until_listed(host, {HOST})
    assert statuses(answer.gateways)[HOST][0] == CONFIRMED


async def test_a_gateway_failing_closed_is_reported_failed_closed(host, nats_server, nc):
    """An unreadable FIRM state makes every follower fail closed (it rejects every order):
    a halt then reports FAILED_CLOSED for each at once, not UNCONFIRMED after the timeout;
    once the FIRM state is overwritten they reload and confirm again."""
    async with other_gateway(nats_server.url, "gw-2") as (follower, _):
        await until_listed(host, {HOST, "gw-2"})
        kv = await nc.jetstream().key_value(HALTS_BUCKET)
        await kv.put(state_key(Scope.FIRM, ""), b"\xff\xff not a HaltState")
        await eventually(lambda: not follower.ready and not host.follower.ready, what="fail closed")

        answer = await halt(host, "AAPL")
        assert {c.gateway_id: c.status for c in answer.gateways} == {HOST: FAILED_CLOSED, "gw-2": FAILED_CLOSED}

        await halt(host, "", scope=trading_pb2.SCOPE_FIRM)  # overwrites the unreadable value
        await eventually(lambda: follower.ready and host.follower.ready, what="the reload")
        answer = await halt(host, "MSFT")
        assert {c.gateway_id: c.status for c in answer.gateways} == {HOST: CONFIRMED, "gw-2": CONFIRMED}


async def run_cli(gateway: InProcessGateway, who: str, command_line: str) -> tuple[int, str, str]:
    """``pretrade <command_line>`` as ``who``, in a process of its own as an operator runs it
    (in a thread of this process it would take turns on the GIL with the gateway, which can
    then miss a short confirm timeout); returns (exit code, stdout, stderr)."""
    argv = [*shlex.split(command_line), "--target", gateway.target, "--token", gateway.tokens[who]]
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gateway.cli",
        *argv,
        cwd=REPO_ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), CLI_TIMEOUT_S)
    return process.returncode, out.decode(), err.decode()
