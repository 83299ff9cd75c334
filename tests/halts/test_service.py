"""HaltService through a real gateway gRPC server (auth interceptor, GatewayService,
HaltService, follower) and a real nats-server: roles and statuses, dual control over the
wire, WatchHalts, the kill switch reaching an open StreamOrders stream, and the CLI."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import shlex
import time

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2

from fastpath.codes import Scope
from gateway.cli import CommandError
from halts import cli
from halts.subjects import HALTS_BUCKET, state_key
from pretrade.v1 import gateway_pb2, gateway_pb2_grpc, halts_pb2, halts_pb2_grpc, trading_pb2, types_pb2

from .conftest import eventually
from .harness import InProcessGateway

pytestmark = [pytest.mark.timeout(60), pytest.mark.integration]

PRICE = 100 * 10**9


@pytest.fixture
async def gateway(tmp_path, nats_server):
    gateway = InProcessGateway(tmp_path, nats_server.url)
    await gateway.start()
    yield gateway
    await gateway.stop()


@pytest.fixture
async def channel(gateway):
    async with grpc.aio.insecure_channel(gateway.target) as channel:
        yield channel


class Caller:
    """Calls HaltService and GatewayService as one principal."""

    def __init__(self, gateway: InProcessGateway, channel, name: str) -> None:
        self.metadata = gateway.metadata(name)
        self.halts = halts_pb2_grpc.HaltServiceStub(channel)
        self.orders = gateway_pb2_grpc.GatewayServiceStub(channel)

    async def halt(self, scope=trading_pb2.SCOPE_SYMBOL, name="AAPL", reason="test", **fields):
        fields.setdefault("state", trading_pb2.TRADING_STATE_HALTED)
        request = halts_pb2.RequestHaltRequest(scope=scope, name=name, reason=reason, **fields)
        return await self.halts.RequestHalt(request, metadata=self.metadata)

    async def resume(self, scope=trading_pb2.SCOPE_FIRM, name="", reason="back"):
        request = halts_pb2.RequestResumeRequest(scope=scope, name=name, reason=reason)
        return await self.halts.RequestResume(request, metadata=self.metadata)

    async def approve(self, request_id: str, **kw):
        request = halts_pb2.ApproveRequest(request_id=request_id, **kw)
        return await self.halts.Approve(request, metadata=self.metadata)

    async def check(self, symbol="AAPL", client_order_id="c1", account="ACC2"):
        price = types_pb2.ReferencePrice(symbol=symbol, price_nanos=PRICE, timestamp_ns=time.time_ns())
        await self.orders.UpdateReferencePrices(
            gateway_pb2.UpdateReferencePricesRequest(prices=[price]), metadata=self.metadata
        )
        request = gateway_pb2.CheckOrderRequest(order=order_message(symbol, client_order_id, account))
        return (await self.orders.CheckOrder(request, metadata=self.metadata)).decision


def order_message(symbol: str, client_order_id: str, account: str = "ACC2") -> types_pb2.Order:
    return types_pb2.Order(
        client_order_id=client_order_id,
        account=account,
        symbol=symbol,
        side=types_pb2.SIDE_BUY,
        order_type=types_pb2.ORDER_TYPE_LIMIT,
        time_in_force=types_pb2.TIME_IN_FORCE_DAY,
        quantity_nanos=10**9,
        price_nanos=PRICE,
    )


def as_(gateway, channel, name: str) -> Caller:
    return Caller(gateway, channel, name)


async def status_of(call) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value


# -- roles and statuses ---------------------------------------------------------------------------


async def test_traders_cannot_halt_or_resume_but_may_list(gateway, channel):
    trader = as_(gateway, channel, "trader")
    assert (await status_of(trader.halt())).code() == grpc.StatusCode.PERMISSION_DENIED
    assert (await status_of(trader.resume())).code() == grpc.StatusCode.PERMISSION_DENIED
    listed = await trader.halts.ListHalts(halts_pb2.ListHaltsRequest(), metadata=trader.metadata)
    assert list(listed.halts) == []


async def test_no_token_is_unauthenticated(gateway, channel):
    stub = halts_pb2_grpc.HaltServiceStub(channel)
    error = await status_of(stub.ListHalts(halts_pb2.ListHaltsRequest()))
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_dual_control_over_the_wire(gateway, channel):
    alice, bob = as_(gateway, channel, "alice"), as_(gateway, channel, "bob")
    await alice.halt(scope=trading_pb2.SCOPE_FIRM, name="")
    pending = (await alice.resume()).pending
    assert pending.status == halts_pb2.APPROVAL_STATUS_PENDING

    error = await status_of(alice.approve(pending.request_id))
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED and "cannot approve" in error.details()
    error = await status_of(bob.approve("req-0000000000000000"))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION

    approved = await bob.approve(pending.request_id)
    assert approved.halt.state == trading_pb2.TRADING_STATE_ACTIVE and approved.halt.approved_by == "bob"
    error = await status_of(bob.approve(pending.request_id))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION


async def test_answers_carry_the_revision_they_were_written_at(gateway, channel, nc):
    """Each change's answer holds the bucket revision of its write (what the gateways'
    applied_revision is compared with); the answers that wrote nothing hold 0."""
    kv = await nc.jetstream().key_value(HALTS_BUCKET)
    alice, bob = as_(gateway, channel, "alice"), as_(gateway, channel, "bob")

    halted = await alice.halt(scope=trading_pb2.SCOPE_FIRM, name="")
    firm = await kv.get(state_key(Scope.FIRM, ""))
    assert halted.revision == firm.revision > 0
    assert [(g.status, g.applied_revision >= halted.revision) for g in halted.gateways] == [
        (halts_pb2.CONFIRMATION_STATUS_CONFIRMED, True)
    ]

    pending = await alice.resume()
    assert pending.HasField("pending") and pending.revision == 0 and not pending.gateways
    rejected = await alice.approve(pending.pending.request_id, reject=True, reason="too early")
    assert rejected.revision == 0 and not rejected.gateways

    pending = await alice.resume()
    approved = await bob.approve(pending.pending.request_id)
    assert approved.revision == (await kv.get(state_key(Scope.FIRM, ""))).revision > halted.revision

    reduced = await alice.halt(state=trading_pb2.TRADING_STATE_REDUCING)
    resumed = await alice.resume(scope=trading_pb2.SCOPE_SYMBOL, name="AAPL")
    assert resumed.HasField("halt")
    assert resumed.revision == (await kv.get(state_key(Scope.SYMBOL, "AAPL"))).revision > reduced.revision > 0


async def test_expired_request_is_failed_precondition(gateway, channel):
    alice, bob = as_(gateway, channel, "alice"), as_(gateway, channel, "bob")
    await alice.halt(scope=trading_pb2.SCOPE_FIRM, name="")
    pending = (await alice.resume()).pending
    gateway.manager._clock = lambda: pending.expires_ns  # the request's last moment has passed
    error = await status_of(bob.approve(pending.request_id))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION and "expired" in error.details()


async def test_watchdog_token_with_operator_role(gateway, channel):
    watchdog = as_(gateway, channel, "watchdog:pnl")
    halted = await watchdog.halt(state=trading_pb2.TRADING_STATE_REDUCING, reason="drawdown")
    assert halted.halt.set_by == "watchdog:pnl"
    error = await status_of(watchdog.resume(scope=trading_pb2.SCOPE_SYMBOL, name="AAPL"))
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED and "watchdog" in error.details()
    throttle = await watchdog.halts.RequestOverride(
        halts_pb2.RequestOverrideRequest(
            account="ACC2", throttle_factor="0.5", duration_s=60, reason="storm"
        ),
        metadata=watchdog.metadata,
    )
    assert throttle.override.kind == halts_pb2.OVERRIDE_KIND_THROTTLE


async def test_malformed_request_is_invalid_argument_with_bad_request(gateway, channel):
    alice = as_(gateway, channel, "alice")
    error = await status_of(alice.halt(scope=trading_pb2.SCOPE_UNSPECIFIED, name="", reason=""))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    details = dict(error.trailing_metadata())["grpc-status-details-bin"]
    bad_request = error_details_pb2.BadRequest()
    status_pb2.Status.FromString(details).details[0].Unpack(bad_request)
    assert [v.field for v in bad_request.field_violations] == ["scope", "reason"]


async def test_watch_halts_sends_a_snapshot_then_events(gateway, channel):
    alice = as_(gateway, channel, "alice")
    await alice.halt(name="GME")
    watch = alice.halts.WatchHalts(halts_pb2.WatchHaltsRequest(), metadata=alice.metadata)
    first = await watch.read()
    assert [h.name for h in first.snapshot.halts] == ["GME"]
    await alice.halt(name="MSFT", reason="second")
    second = await watch.read()
    if second.event.name == "GME":  # at-least-once: the snapshot's own event may follow it
        second = await watch.read()
    assert second.event.type == halts_pb2.HALT_EVENT_TYPE_STATE_CHANGED
    assert (second.event.name, second.event.actor, second.event.reason) == ("MSFT", "alice", "second")
    watch.cancel()


# -- through the order path -----------------------------------------------------------------------


async def test_halt_blocks_orders_at_the_gateway_and_resume_lets_them_through(gateway, channel):
    alice, trader = as_(gateway, channel, "alice"), as_(gateway, channel, "trader")
    assert (await trader.check("AAPL", "c1")).verdict == types_pb2.VERDICT_ACCEPT
    await alice.halt(name="AAPL")
    started = time.monotonic()
    decision = await trader.check("AAPL", "c2")
    while decision.verdict == types_pb2.VERDICT_ACCEPT and time.monotonic() - started < 2:
        decision = await trader.check("AAPL", f"c{time.monotonic_ns()}")
    assert [f.code for f in decision.failures] == ["TRADING_HALTED"]
    assert decision.failures[0].detail == "scope=SYMBOL state=HALTED"
    assert (await trader.check("MSFT", "c3")).verdict == types_pb2.VERDICT_ACCEPT
    await alice.resume(scope=trading_pb2.SCOPE_SYMBOL, name="AAPL")
    await eventually(lambda: gateway.follower.trading_states() == {}, what="the resume")
    assert (await trader.check("AAPL", "c4")).verdict == types_pb2.VERDICT_ACCEPT


async def test_kill_switch_reaches_an_open_stream_as_cancel_all(gateway, channel):
    alice, trader = as_(gateway, channel, "alice"), as_(gateway, channel, "trader")
    requests: asyncio.Queue = asyncio.Queue()

    async def outgoing():
        while (request := await requests.get()) is not None:
            yield request

    stream = trader.orders.StreamOrders(outgoing(), metadata=trader.metadata)
    await trader.check("AAPL", "warm-up")  # sets a fresh reference price
    await requests.put(gateway_pb2.StreamOrdersRequest(batch_id=1, orders=[order_message("AAPL", "s1")]))
    first = await stream.read()
    assert first.decisions.batch_id == 1 and first.decisions.decisions[0].verdict == types_pb2.VERDICT_ACCEPT

    killed = await alice.halt(
        scope=trading_pb2.SCOPE_FIRM, name="", reason="runaway algo", cancel_all=True
    )
    control = (await asyncio.wait_for(stream.read(), 5)).control
    assert control == gateway_pb2.ControlMessage(
        action=gateway_pb2.CONTROL_ACTION_CANCEL_ALL,
        reason="runaway algo",
        requested_by="alice",
        issued_ns=killed.halt.set_ns,
    )
    # Orders on the same stream are now rejected.
    await requests.put(gateway_pb2.StreamOrdersRequest(batch_id=2, orders=[order_message("AAPL", "s2")]))
    after = await stream.read()
    assert [f.code for f in after.decisions.decisions[0].failures] == ["TRADING_HALTED"]
    await requests.put(None)


# -- the CLI --------------------------------------------------------------------------------------


def run_cli(gateway: InProcessGateway, who: str, command_line: str) -> tuple[int, str]:
    """Parse and run one halt command line as ``who``; returns (exit code, stdout)."""
    parser = argparse.ArgumentParser(prog="pretrade")
    cli.register(parser.add_subparsers(dest="command", required=True))
    argv = [*shlex.split(command_line), "--target", gateway.target, "--token", gateway.tokens[who]]
    args = parser.parse_args(argv)
    output = io.StringIO()
    with contextlib.redirect_stdout(output):
        code = args.handler(args)
    return code, output.getvalue()


async def cli_call(gateway, who: str, command_line: str) -> tuple[int, str]:
    """:func:`run_cli` off the event loop, which serves the gateway meanwhile."""
    return await asyncio.to_thread(run_cli, gateway, who, command_line)


async def test_cli_halt_resume_approve_and_list(gateway):
    halt = "halt --scope account --id ACC1 --reason 'fat finger' --reduce-only"
    code, out = await cli_call(gateway, "alice", halt)
    assert code == 0 and out.startswith("REDUCING ACCOUNT ACC1") and "by alice: fat finger" in out
    assert out.splitlines()[1].startswith("  gw-halts CONFIRMED rev ")
    code, out = await cli_call(gateway, "alice", "halt --scope firm --reason outage")
    assert "resume -> ACTIVE, needs a second operator" in out
    code, out = await cli_call(gateway, "alice", "resume --scope firm --reason 'venue back'")
    assert out.startswith("PENDING")
    request_id = out.split()[1].rstrip(":")
    assert f"pretrade approve {request_id}" in out

    with pytest.raises(CommandError, match="PERMISSION_DENIED: alice made request"):
        await cli_call(gateway, "alice", f"approve {request_id}")
    code, out = await cli_call(gateway, "bob", f"approve {request_id}")
    assert out.startswith("APPROVED") and "ACTIVE   FIRM" in out and "approved by bob" in out
    assert out.splitlines()[-1].startswith("  gw-halts CONFIRMED rev ")

    code, out = await cli_call(gateway, "trader", "halts")
    assert out.splitlines()[0].startswith("REDUCING ACCOUNT ACC1")
    code, out = await cli_call(gateway, "trader", "halts --json")
    listed = json.loads(out)
    assert listed["halts"][0]["name"] == "ACC1" and listed["halts"][0]["state"] == "TRADING_STATE_REDUCING"


async def test_cli_errors_are_one_line(gateway):
    with pytest.raises(CommandError) as caught:
        await cli_call(gateway, "trader", "halt --scope symbol --id AAPL --reason r")
    assert "PERMISSION_DENIED" in str(caught.value) and "\n" not in str(caught.value)
    with pytest.raises(CommandError, match="INVALID_ARGUMENT: invalid request: name"):
        await cli_call(gateway, "alice", "halt --scope symbol --reason 'no id'")
    with pytest.raises(CommandError, match="FAILED_PRECONDITION"):
        await cli_call(gateway, "alice", "resume --scope symbol --id AAPL --reason 'not halted'")


async def test_cli_kill_asks_to_type_halt(gateway, monkeypatch):
    monkeypatch.setattr("builtins.input", lambda: "halt please")
    with pytest.raises(CommandError, match="not confirmed"):
        await cli_call(gateway, "alice", "kill --reason runaway")
    assert gateway.follower.trading_states() == {}
    monkeypatch.setattr("builtins.input", lambda: "HALT")
    code, out = await cli_call(gateway, "alice", "kill --reason runaway")
    assert "KILL SWITCH: HALTED   FIRM" in out and "kill switch" in out
    code, out = await cli_call(gateway, "bob", "kill --reason again --yes")
    assert code == 0


async def test_cli_override_needs_approval(gateway):
    override = "override --account ACC1 --set credit_limit=500000 --minutes 10 --reason deposit"
    code, out = await cli_call(gateway, "alice", override)
    assert out.startswith("PENDING") and "credit_limit=500000" in out
    request_id = out.split()[1].rstrip(":")
    code, out = await cli_call(gateway, "bob", f"approve {request_id}")
    assert "OVERRIDE ovr-" in out
    await eventually(lambda: gateway.follower.limit_overrides, what="the override in force")
    code, out = await cli_call(gateway, "admin", "override --strategy MM --throttle 0.5 --reason storm")
    assert out.startswith("THROTTLE thr-")
    with pytest.raises(CommandError, match="--set"):
        await cli_call(gateway, "alice", "override --account ACC1 --set nonsense --reason r")
