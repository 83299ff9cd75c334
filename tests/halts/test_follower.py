"""HaltFollower against a real nats-server and a real Engine on the example rules.

Each scope and state blocks exactly what it should (REDUCING lets exits through), changes
arrive live, the kill switch reaches ``on_cancel_all``, overrides reload the rules and
expire by the follower's clock, state survives a NATS restart and the follower fails
closed (``ready`` False) when it cannot stay current.
"""

from __future__ import annotations

import asyncio

import nats.js.errors
import pytest

from fastpath.codes import PRICE_SCALE, QTY_SCALE, Check, OrderType, Scope, Side, TradingState
from fastpath.rules import load_rules
from halts.follower import HaltFollower
from halts.subjects import HALTS_BUCKET, state_key
from pretrade.v1 import gateway_pb2

from .conftest import ALICE, BOB, EXAMPLE_RULES, T0, TcpProxy, connect, eventually, make_engine

pytestmark = [pytest.mark.timeout(60), pytest.mark.integration]

#: Fast failure detection for the outage tests (production defaults are seconds).
FAST = dict(staleness_bound_s=0.5, probe_interval_s=0.05, load_timeout_s=0.5, retry_interval_s=0.05)


class Gateway:
    """What a gateway wires around a follower: an engine, the hooks, and a way to send an
    order by name at a fixed time."""

    def __init__(self, engine) -> None:
        self.engine = engine
        self.cancel_alls: list[gateway_pb2.ControlMessage] = []
        self.ready_changes: list[bool] = []
        self.reloads: list[tuple] = []
        self.now = T0
        self._next_id = 0
        for symbol in ("AAPL", "MSFT", "GME"):
            engine.set_reference_price(symbol, 100 * PRICE_SCALE, T0)

    def reload_rules(self, overrides) -> None:
        self.engine.reload(load_rules(EXAMPLE_RULES, self.engine.interner, overrides))
        self.reloads.append(tuple(overrides))

    def follower(self, nc, **options) -> HaltFollower:
        return HaltFollower(
            nc,
            self.engine,
            gateway_id="gw-follower-test",
            reload_rules=self.reload_rules,
            on_cancel_all=self.cancel_alls.append,
            on_ready_change=self.ready_changes.append,
            **options,
        )

    def order(self, account="ACC1", symbol="AAPL", strategy="MOMO", side=Side.BUY, qty=10, price="99"):
        """One order, 1.1 s after the previous one (outside the duplicate-content window and
        any rate limit), against a reference price of 100 stamped now."""
        self._next_id += 1
        self.now += 1_100_000_000
        self.engine.set_reference_price(symbol, 100 * PRICE_SCALE, self.now)
        price_nanos = int(float(price) * PRICE_SCALE)
        return self.engine.check(
            account,
            symbol,
            strategy,
            side,
            OrderType.LIMIT,
            qty * QTY_SCALE,
            price_nanos,
            f"c{self._next_id}",
            self.now,
        )

    def failed(self, result) -> set[Check]:
        return {failure.code for failure in self.engine.failures(result)}

    def hold_position(self, account="ACC1", symbol="AAPL", strategy="MOMO", qty=10) -> None:
        """A filled buy, so that a sell of ``qty`` is an exit."""
        result = self.order(account, symbol, strategy, Side.BUY, qty)
        assert result.accepted, self.failed(result)
        self.engine.fill(result.handle, qty * QTY_SCALE, 99 * PRICE_SCALE)


@pytest.fixture
def gateway(engine) -> Gateway:
    return Gateway(engine)


@pytest.fixture
async def follower(gateway, nc):
    follower = gateway.follower(nc)
    await follower.start()
    yield follower
    await follower.stop()


# -- each scope and state blocks exactly what it should -------------------------------------------

#: scope -> (its name, the order fields that put an order inside it, an order outside it)
SCOPES = {
    Scope.FIRM: ("", {}, None),
    Scope.ACCOUNT: ("ACC1", {}, dict(account="ACC2")),
    Scope.STRATEGY: ("MOMO", {}, dict(strategy="MM")),
    Scope.SYMBOL: ("AAPL", {}, dict(symbol="MSFT")),
}


@pytest.mark.parametrize("state", [TradingState.HALTED, TradingState.REDUCING])
@pytest.mark.parametrize("scope", list(SCOPES))
async def test_each_scope_and_state_blocks_exactly_its_orders(gateway, follower, manager, scope, state):
    name, _, outside = SCOPES[scope]
    gateway.hold_position()  # ACC1 long 10 AAPL via MOMO
    await manager.request_halt(ALICE, scope, name, state, "test")
    await eventually(lambda: gateway.engine.trading_state(scope, name) == state, what="the state to apply")

    increase = gateway.order(side=Side.BUY, qty=5, price="99")
    exit_order = gateway.order(side=Side.SELL, qty=10, price="101")
    if state == TradingState.HALTED:
        assert Check.TRADING_HALTED in gateway.failed(increase)
        assert Check.TRADING_HALTED in gateway.failed(exit_order)
    else:
        assert gateway.failed(increase) == {Check.REDUCE_ONLY_VIOLATION}
        assert exit_order.accepted, "REDUCING must let exits through"
        gateway.engine.release(exit_order.handle)
    if outside is not None:
        unaffected = gateway.order(**outside, side=Side.BUY, qty=5, price="99")
        assert unaffected.accepted, gateway.failed(unaffected)

    if scope != Scope.FIRM:
        await manager.request_resume(BOB, scope, name, "done")
        await eventually(
            lambda: gateway.engine.trading_state(scope, name) == TradingState.ACTIVE, what="resume"
        )
        assert gateway.order(side=Side.BUY, qty=6, price="99").accepted


async def test_a_hosting_manager_returns_only_once_its_gateway_enforces_the_change(gateway, nats_server, manager):
    """With the follower's wait_applied as the manager's wait_applied_locally (what a
    gateway hosting the manager sets), every halt, resume and approval is in force in the
    engine when the call returns, even over a slow link (the follower sees each change
    0.2 s after the manager wrote it): no window in which an order still passes."""
    async with TcpProxy(nats_server.port, delay_s=0.2) as slow_link:
        follower = gateway.follower(await connect(slow_link.url))
        await follower.start()
        try:
            manager.wait_applied_locally = follower.wait_applied
            await manager.request_halt(ALICE, Scope.SYMBOL, "AAPL", TradingState.HALTED, "test")
            assert gateway.engine.trading_state(Scope.SYMBOL, "AAPL") == TradingState.HALTED
            assert Check.TRADING_HALTED in gateway.failed(gateway.order())
            await manager.request_resume(BOB, Scope.SYMBOL, "AAPL", "done")
            assert gateway.engine.trading_state(Scope.SYMBOL, "AAPL") == TradingState.ACTIVE
            await manager.request_halt(ALICE, Scope.FIRM, "", TradingState.HALTED, "test")
            assert gateway.engine.trading_state(Scope.FIRM, "") == TradingState.HALTED
            pending, _ = await manager.request_resume(ALICE, Scope.FIRM, "", "done")
            await manager.approve(BOB, pending.request_id)
            assert gateway.engine.trading_state(Scope.FIRM, "") == TradingState.ACTIVE
        finally:
            await follower.stop()


async def test_waiting_for_a_revision_the_follower_never_sees_times_out(follower):
    assert await follower.wait_applied(0, timeout_s=0.01)
    assert not await follower.wait_applied(10**9, timeout_s=0.05)


async def test_start_applies_existing_state_before_returning(gateway, nc, manager):
    await manager.request_halt(ALICE, Scope.SYMBOL, "GME", TradingState.HALTED, "before the gateway")
    await manager.request_halt(ALICE, Scope.ACCOUNT, "ACC3", TradingState.REDUCING, "before the gateway")
    follower = gateway.follower(nc)
    assert not follower.ready
    await follower.start()
    try:
        # No waiting: start() returned, so the state is in the engine.
        assert follower.ready
        assert gateway.engine.trading_state(Scope.SYMBOL, "GME") == TradingState.HALTED
        assert gateway.engine.trading_state(Scope.ACCOUNT, "ACC3") == TradingState.REDUCING
        assert follower.trading_states() == {
            (Scope.SYMBOL, "GME"): TradingState.HALTED,
            (Scope.ACCOUNT, "ACC3"): TradingState.REDUCING,
        }
        assert gateway.cancel_alls == []
    finally:
        await follower.stop()


async def test_halt_of_a_name_the_rules_do_not_declare_holds_once_declared(gateway, follower, manager):
    await manager.request_halt(ALICE, Scope.ACCOUNT, "NEWFUND", TradingState.HALTED, "not onboarded")
    await eventually(
        lambda: gateway.engine.trading_state(Scope.ACCOUNT, "NEWFUND") == TradingState.HALTED, what="the halt"
    )


async def test_kill_switch_calls_on_cancel_all_once(gateway, follower, manager):
    halt, _, _ = await manager.request_halt(
        ALICE, Scope.FIRM, "", TradingState.HALTED, "runaway", cancel_all=True
    )
    await eventually(lambda: gateway.cancel_alls, what="cancel-all")
    assert gateway.engine.trading_state(Scope.FIRM, "") == TradingState.HALTED
    assert gateway.cancel_alls == [
        gateway_pb2.ControlMessage(
            action=gateway_pb2.CONTROL_ACTION_CANCEL_ALL,
            reason="runaway",
            requested_by="alice",
            issued_ns=halt.set_ns,
        )
    ]
    # A plain halt afterwards, or a reload, does not repeat it.
    await manager.request_halt(BOB, Scope.ACCOUNT, "ACC1", TradingState.HALTED, "also")
    await eventually(
        lambda: gateway.engine.trading_state(Scope.ACCOUNT, "ACC1") == TradingState.HALTED, what="halt"
    )
    await follower._try_reload()
    await asyncio.sleep(0.05)
    assert len(gateway.cancel_alls) == 1


async def test_a_kill_before_the_gateway_started_is_not_replayed(gateway, nc, manager):
    await manager.request_halt(ALICE, Scope.FIRM, "", TradingState.HALTED, "earlier", cancel_all=True)
    follower = gateway.follower(nc)
    await follower.start()
    try:
        assert gateway.engine.trading_state(Scope.FIRM, "") == TradingState.HALTED
        await asyncio.sleep(0.05)
        assert gateway.cancel_alls == []
    finally:
        await follower.stop()


async def test_firm_resume_reaches_the_engine_only_when_approved(gateway, follower, manager):
    await manager.request_halt(ALICE, Scope.FIRM, "", TradingState.HALTED, "outage")
    await eventually(lambda: gateway.engine.trading_state(Scope.FIRM, "") == TradingState.HALTED, what="halt")
    request, _ = await manager.request_resume(ALICE, Scope.FIRM, "", "back")
    await asyncio.sleep(0.05)
    assert gateway.engine.trading_state(Scope.FIRM, "") == TradingState.HALTED
    await manager.approve(BOB, request.request_id)
    await eventually(
        lambda: gateway.engine.trading_state(Scope.FIRM, "") == TradingState.ACTIVE, what="resume"
    )


# -- overrides -------------------------------------------------------------------------------------


async def test_override_raises_a_limit_and_expires_by_itself(gateway, nc, manager, clock):
    follower = gateway.follower(nc, clock=clock)
    await follower.start()
    try:
        big = dict(qty=900, price="99")  # 89,100 per order: ACC1's credit limit of 250,000 takes two
        for _ in range(2):
            assert gateway.order(**big).accepted
        over = gateway.order(**big)
        assert Check.CREDIT_LIMIT_EXCEEDED in gateway.failed(over)

        request = await manager.request_override(
            ALICE, account="ACC1", limits={"credit_limit": "1000000"}, duration_s=600, reason="deposit"
        )
        approval = await manager.approve(BOB, request.request_id)
        override_id = approval.override.override_id
        await eventually(lambda: follower.limit_overrides, what="the override reload")
        assert [o.override_id for o in follower.limit_overrides] == [override_id]
        assert gateway.order(**big).accepted
        assert gateway.engine.version != load_rules(EXAMPLE_RULES).version

        clock.advance_s(600)
        follower.expire_overrides()
        await eventually(lambda: not follower.limit_overrides, what="the expiry reload")
        result = gateway.order(**big)
        failures = {f.code: f for f in gateway.engine.failures(result)}
        assert failures[Check.CREDIT_LIMIT_EXCEEDED].rule_path == "accounts.ACC1.limits.credit_limit"
        assert gateway.engine.version == load_rules(EXAMPLE_RULES).version
    finally:
        await follower.stop()


async def test_override_timer_fires_on_the_real_clock(gateway, follower, manager):
    throttle = await manager.request_override(
        ALICE, strategy="MM", throttle_factor="0.5", duration_s=1, reason="storm"
    )
    await eventually(lambda: follower.limit_overrides, what="the throttle")
    strategy_id = gateway.engine.interner.strategy_ids["MM"]
    assert gateway.engine.rules.tables.strategy_rate_orders[strategy_id] == 250
    assert gateway.engine.rules.path(gateway.engine.rules.tables.strategy_rate_path[strategy_id]) == (
        f"overrides.{throttle.override_id}.order_rate_limit"
    )
    # The manager stamped the expiry 1 s after its (fake) now; the follower's real clock passes it.
    await eventually(lambda: not follower.limit_overrides, timeout_s=5, what="the timer to expire it")


async def test_override_this_gateway_cannot_apply_is_left_out(gateway, follower, manager):
    limits = {"credit_limit": "1"}
    first = await manager.request_override(ALICE, account="ACC1", limits=limits, duration_s=600, reason="a")
    second = await manager.request_override(
        ALICE, account="NOT_HERE", limits=limits, duration_s=600, reason="b"
    )
    await manager.approve(BOB, first.request_id)
    await manager.approve(BOB, second.request_id)
    await eventually(
        lambda: [o.account for o in follower.limit_overrides] == ["ACC1"] and len(gateway.reloads) >= 2,
        what="the applicable override only",
    )


# -- durability and failing closed ----------------------------------------------------------------


async def test_state_survives_a_nats_restart_and_the_follower_resyncs(
    gateway, nats_server, follower, manager, nc
):
    await manager.request_halt(ALICE, Scope.SYMBOL, "AAPL", TradingState.HALTED, "before restart")
    await eventually(
        lambda: gateway.engine.trading_state(Scope.SYMBOL, "AAPL") == TradingState.HALTED, what="halt"
    )

    reconnects = nc.stats["reconnects"]
    nats_server.restart()
    await eventually(lambda: nc.stats["reconnects"] > reconnects and nc.is_connected, what="reconnect")
    # Changes made after the restart still arrive (the follower re-watched the bucket).
    await manager.request_halt(ALICE, Scope.ACCOUNT, "ACC2", TradingState.REDUCING, "after restart")
    await eventually(
        lambda: gateway.engine.trading_state(Scope.ACCOUNT, "ACC2") == TradingState.REDUCING, what="halt"
    )
    assert gateway.engine.trading_state(Scope.SYMBOL, "AAPL") == TradingState.HALTED

    # A new gateway (fresh engine) after the restart loads the surviving state.
    fresh = Gateway(make_engine())
    other = fresh.follower(nc)
    await other.start()
    try:
        assert fresh.engine.trading_state(Scope.SYMBOL, "AAPL") == TradingState.HALTED
        assert fresh.engine.trading_state(Scope.ACCOUNT, "ACC2") == TradingState.REDUCING
    finally:
        await other.stop()


async def test_lost_nats_fails_closed_and_recovers(gateway, nats_server, nc, manager):
    follower = gateway.follower(nc, **FAST)
    await follower.start()
    try:
        await eventually(lambda: gateway.ready_changes == [True], what="ready")
        nats_server.kill()
        await eventually(lambda: not follower.ready, timeout_s=5, what="fail closed")
        assert gateway.ready_changes[-1] is False
        nats_server.start()
        await eventually(lambda: follower.ready, timeout_s=10, what="recovery")
        await eventually(lambda: gateway.ready_changes[-1] is True, what="ready again")
        await manager.request_halt(ALICE, Scope.SYMBOL, "MSFT", TradingState.HALTED, "after the outage")
        await eventually(
            lambda: gateway.engine.trading_state(Scope.SYMBOL, "MSFT") == TradingState.HALTED, what="halt"
        )
    finally:
        await follower.stop()


async def test_changes_during_an_outage_arrive_with_the_resync(gateway, nats_server, manager):
    """The gateway's link to NATS is cut while the manager (on its own link) halts and
    kills: the follower fails closed, and on reconnect applies both and sends cancel-all."""
    async with TcpProxy(nats_server.port) as proxy:
        gateway_nc = await connect(proxy.url)
        follower = gateway.follower(gateway_nc, **FAST)
        await follower.start()
        try:
            await proxy.cut()
            await manager.request_halt(ALICE, Scope.ACCOUNT, "ACC1", TradingState.HALTED, "during the outage")
            await manager.request_halt(BOB, Scope.FIRM, "", TradingState.HALTED, "kill", cancel_all=True)
            await eventually(lambda: not follower.ready, timeout_s=5, what="fail closed")
            assert gateway.engine.trading_state(Scope.FIRM, "") == TradingState.ACTIVE
            proxy.restore()
            await eventually(lambda: follower.ready, timeout_s=10, what="the resync")
            assert gateway.engine.trading_state(Scope.ACCOUNT, "ACC1") == TradingState.HALTED
            assert gateway.engine.trading_state(Scope.FIRM, "") == TradingState.HALTED
            await eventually(lambda: gateway.cancel_alls, what="the missed cancel-all")
            assert gateway.cancel_alls[0].reason == "kill"
        finally:
            await follower.stop()
            await gateway_nc.close()


async def test_start_waits_for_nats(gateway, nats_server, nc):
    nats_server.stop()
    follower = gateway.follower(nc, **FAST)
    starting = asyncio.create_task(follower.start())
    try:
        await asyncio.sleep(0.5)
        assert not starting.done() and not follower.ready
        nats_server.start()
        await asyncio.wait_for(starting, 10)
        assert follower.ready
    finally:
        starting.cancel()
        await follower.stop()


async def test_corrupt_state_fails_closed(gateway, nc, manager):
    follower = gateway.follower(nc, **FAST)
    await follower.start()
    try:
        kv = await nc.jetstream().key_value(HALTS_BUCKET)
        await kv.put(state_key(Scope.FIRM, ""), b"\xff\xff not a HaltState")
        await eventually(lambda: not follower.ready, what="fail closed on a corrupt state")
        await asyncio.sleep(0.3)
        assert not follower.ready  # reloading finds the same corrupt value
        await manager.request_halt(ALICE, Scope.FIRM, "", TradingState.HALTED, "overwrite the bad value")
        await eventually(lambda: follower.ready, what="recovery")
        assert gateway.engine.trading_state(Scope.FIRM, "") == TradingState.HALTED
    finally:
        await follower.stop()


async def test_removed_state_key_means_active(gateway, follower, manager, nc):
    await manager.request_halt(ALICE, Scope.SYMBOL, "GME", TradingState.HALTED, "x")
    await eventually(
        lambda: gateway.engine.trading_state(Scope.SYMBOL, "GME") == TradingState.HALTED, what="halt"
    )
    kv = await nc.jetstream().key_value(HALTS_BUCKET)
    await kv.delete(state_key(Scope.SYMBOL, "GME"))
    await eventually(
        lambda: gateway.engine.trading_state(Scope.SYMBOL, "GME") == TradingState.ACTIVE, what="active"
    )
    with pytest.raises(nats.js.errors.KeyNotFoundError):
        await kv.get(state_key(Scope.SYMBOL, "GME"))
