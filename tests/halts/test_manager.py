"""HaltManager against a real nats-server: CAS writes, dual control, roles, expiry, events."""

from __future__ import annotations

import asyncio

import pytest

from fastpath.codes import Scope, TradingState
from halts.errors import (
    ConcurrentUpdateError,
    InvalidHaltRequestError,
    NotHaltedError,
    RequestExpiredError,
    RequestNotPendingError,
    RequestSupersededError,
    RevisionConflictError,
    RoleRequiredError,
    SelfApprovalError,
    UnknownRequestError,
    WatchdogNotPermittedError,
    WouldLoosenError,
)
from halts.manager import DEFAULT_REQUEST_TTL_S, HaltManager
from halts.subjects import EVENTS_SUBJECT_WILDCARD, HALTS_BUCKET, state_key
from pretrade.v1 import gateway_pb2, halts_pb2, trading_pb2

from .conftest import ADMIN, ALICE, BOB, TRADER, WATCHDOG, eventually

pytestmark = [pytest.mark.timeout(60), pytest.mark.integration]


class EventLog:
    """Every HaltEvent published on pretrade.v1.halts.*, with its subject."""

    def __init__(self) -> None:
        self.events: list[tuple[str, halts_pb2.HaltEvent]] = []

    async def on_message(self, message) -> None:
        self.events.append((message.subject, halts_pb2.HaltEvent.FromString(message.data)))

    def of_type(self, event_type: int) -> list[halts_pb2.HaltEvent]:
        return [event for _, event in self.events if event.type == event_type]


@pytest.fixture
async def events(nc) -> EventLog:
    log = EventLog()
    subscription = await nc.subscribe(EVENTS_SUBJECT_WILDCARD, cb=log.on_message)
    await nc.flush()
    yield log
    await subscription.unsubscribe()


async def firm_halted(manager: HaltManager, operator=ALICE) -> halts_pb2.HaltState:
    halt, _, _ = await manager.request_halt(operator, Scope.FIRM, "", TradingState.HALTED, "venue outage")
    return halt


# -- halts and single-person resumes -----------------------------------------------------------


async def test_halt_is_written_to_the_bucket_with_who_why_when(manager, store, clock, events):
    halt, previous, _ = await manager.request_halt(
        ALICE, Scope.ACCOUNT, "ACC1", TradingState.HALTED, "fat finger"
    )
    assert previous == TradingState.ACTIVE
    stored = await store.state(Scope.ACCOUNT, "ACC1")
    assert stored.record == halt
    assert (halt.scope, halt.name, halt.state) == (
        trading_pb2.SCOPE_ACCOUNT,
        "ACC1",
        trading_pb2.TRADING_STATE_HALTED,
    )
    assert (halt.set_by, halt.reason, halt.set_ns) == ("alice", "fat finger", clock())
    assert halt.request_id.startswith("halt-")
    assert halt.reset.resume_to == trading_pb2.TRADING_STATE_ACTIVE and not halt.reset.requires_approval

    await eventually(lambda: events.events, what="the state event")
    subject, event = events.events[0]
    assert subject == "pretrade.v1.halts.state"
    assert event.type == halts_pb2.HALT_EVENT_TYPE_STATE_CHANGED
    assert (event.actor, event.reason, event.at_ns) == ("alice", "fat finger", clock())
    assert event.request_id == halt.request_id
    assert (event.scope, event.name, event.state, event.previous_state) == (
        trading_pb2.SCOPE_ACCOUNT,
        "ACC1",
        trading_pb2.TRADING_STATE_HALTED,
        trading_pb2.TRADING_STATE_ACTIVE,
    )
    assert event.halt == halt


async def test_non_firm_resume_takes_effect_at_once(manager, store):
    await manager.request_halt(ALICE, Scope.SYMBOL, "GME", TradingState.REDUCING, "volatility")
    resumed, _ = await manager.request_resume(ALICE, Scope.SYMBOL, "GME", "calm again")
    assert isinstance(resumed, halts_pb2.HaltState)
    assert resumed.state == trading_pb2.TRADING_STATE_ACTIVE
    assert (await store.state(Scope.SYMBOL, "GME")).record == resumed


async def test_resume_follows_the_halts_reset_policy(manager):
    await manager.request_halt(
        ALICE, Scope.STRATEGY, "MOMO", TradingState.HALTED, "runaway", resume_to=TradingState.REDUCING
    )
    resumed, _ = await manager.request_resume(BOB, Scope.STRATEGY, "MOMO", "fixed")
    assert resumed.state == trading_pb2.TRADING_STATE_REDUCING
    resumed, _ = await manager.request_resume(BOB, Scope.STRATEGY, "MOMO", "positions flat")
    assert resumed.state == trading_pb2.TRADING_STATE_ACTIVE


async def test_resume_of_an_active_scope_is_refused(manager):
    with pytest.raises(NotHaltedError, match="ACCOUNT ACC2 is ACTIVE"):
        await manager.request_resume(ALICE, Scope.ACCOUNT, "ACC2", "nothing to do")


async def test_halting_to_a_looser_state_is_a_resume(manager):
    await manager.request_halt(ALICE, Scope.ACCOUNT, "ACC1", TradingState.HALTED, "stop")
    with pytest.raises(WouldLoosenError, match="is HALTED"):
        await manager.request_halt(ALICE, Scope.ACCOUNT, "ACC1", TradingState.REDUCING, "reduce only")
    # Tightening and re-halting with a new reason are fine.
    halt, previous, _ = await manager.request_halt(BOB, Scope.ACCOUNT, "ACC1", TradingState.HALTED, "still")
    assert previous == TradingState.HALTED and halt.set_by == "bob"


async def test_concurrent_halts_never_overwrite_each_other(manager, nc):
    """Ten halts of one scope at once: each lands on its own revision (or, after every CAS
    attempt lost, fails loudly); none is silently overwritten."""
    outcomes = await asyncio.gather(
        *(
            manager.request_halt(ALICE, Scope.SYMBOL, "AAPL", TradingState.HALTED, f"reason {index}")
            for index in range(10)
        ),
        return_exceptions=True,
    )
    landed = [outcome[0] for outcome in outcomes if not isinstance(outcome, BaseException)]
    assert all(isinstance(o, ConcurrentUpdateError) for o in outcomes if isinstance(o, BaseException))
    assert len(landed) >= 5
    kv = await nc.jetstream().key_value(HALTS_BUCKET)
    entries = await kv.history(state_key(Scope.SYMBOL, "AAPL"))
    history = [halts_pb2.HaltState.FromString(entry.value) for entry in entries]
    assert sorted(h.request_id for h in history) == sorted(h.request_id for h in landed)


async def test_a_stale_revision_loses_the_compare_and_swap(manager, store):
    await manager.request_halt(ALICE, Scope.ACCOUNT, "ACC1", TradingState.REDUCING, "first")
    stale = await store.state(Scope.ACCOUNT, "ACC1")
    await manager.request_halt(BOB, Scope.ACCOUNT, "ACC1", TradingState.HALTED, "second")
    with pytest.raises(RevisionConflictError):
        await store.write_state(stale.record, stale.revision)
    with pytest.raises(RevisionConflictError):
        await store.write_state(stale.record, 0)  # "must not exist yet"


@pytest.mark.parametrize(
    ("call", "field"),
    [
        (lambda m: m.request_halt(ALICE, Scope.FIRM, "X", TradingState.HALTED, "r"), "name"),
        (lambda m: m.request_halt(ALICE, Scope.ACCOUNT, "", TradingState.HALTED, "r"), "name"),
        (lambda m: m.request_halt(ALICE, Scope.ACCOUNT, "A B", TradingState.HALTED, "r"), "name"),
        (lambda m: m.request_halt(ALICE, None, "", TradingState.HALTED, "r"), "scope"),
        (lambda m: m.request_halt(ALICE, Scope.FIRM, "", TradingState.ACTIVE, "r"), "state"),
        (lambda m: m.request_halt(ALICE, Scope.FIRM, "", None, "r"), "state"),
        (lambda m: m.request_halt(ALICE, Scope.FIRM, "", TradingState.HALTED, "  "), "reason"),
        (lambda m: m.request_halt(ALICE, Scope.FIRM, "", TradingState.HALTED, "a\nb"), "reason"),
        (
            lambda m: m.request_halt(ALICE, Scope.ACCOUNT, "A", TradingState.HALTED, "r", cancel_all=True),
            "cancel_all",
        ),
        (
            lambda m: m.request_halt(ALICE, Scope.FIRM, "", TradingState.REDUCING, "r", cancel_all=True),
            "cancel_all",
        ),
        (
            lambda m: m.request_halt(
                ALICE, Scope.FIRM, "", TradingState.REDUCING, "r", resume_to=TradingState.REDUCING
            ),
            "resume_to",
        ),
        (lambda m: m.request_resume(ALICE, Scope.FIRM, "", "r", state=TradingState.HALTED), "state"),
        (lambda m: m.approve(ALICE, ""), "request_id"),
        (lambda m: m.approve(ALICE, "req.*"), "request_id"),
        (
            lambda m: m.request_override(
                ALICE, account="ACC1", limits={"credit_limit": "1"}, duration_s=0, reason="r"
            ),
            "duration_s",
        ),
    ],
)
async def test_malformed_requests_name_the_field(manager, call, field):
    with pytest.raises(InvalidHaltRequestError) as caught:
        await call(manager)
    assert caught.value.violations[0].field == field


# -- roles ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "call",
    [
        lambda m: m.request_halt(TRADER, Scope.ACCOUNT, "ACC1", TradingState.HALTED, "r"),
        lambda m: m.request_resume(TRADER, Scope.ACCOUNT, "ACC1", "r"),
        lambda m: m.approve(TRADER, "req-1"),
        lambda m: m.request_override(
            TRADER, account="ACC1", throttle_factor="0.5", duration_s=60, reason="r"
        ),
    ],
)
async def test_traders_cannot_halt_resume_approve_or_override(manager, call):
    with pytest.raises(RoleRequiredError, match="trader"):
        await call(manager)


async def test_admins_act_like_operators(manager):
    halt, _, _ = await manager.request_halt(ADMIN, Scope.ACCOUNT, "ACC1", TradingState.HALTED, "admin halt")
    assert halt.set_by == "admin"


async def test_watchdogs_may_ask_for_graduated_responses_only(manager):
    halt, _, _ = await manager.request_halt(
        WATCHDOG, Scope.STRATEGY, "MOMO", TradingState.REDUCING, "loss limit"
    )
    assert halt.set_by == "watchdog:pnl"
    halt, _, _ = await manager.request_halt(WATCHDOG, Scope.FIRM, "", TradingState.HALTED, "firm loss limit")
    throttle = await manager.request_override(
        WATCHDOG, strategy="MM", throttle_factor="0.5", duration_s=60, reason="message rate"
    )
    assert throttle.kind == halts_pb2.OVERRIDE_KIND_THROTTLE
    refused = [
        manager.request_halt(WATCHDOG, Scope.FIRM, "", TradingState.HALTED, "kill", cancel_all=True),
        manager.request_resume(WATCHDOG, Scope.STRATEGY, "MOMO", "recovered"),
        manager.approve(WATCHDOG, "req-1"),
        manager.request_override(
            WATCHDOG, account="ACC1", limits={"credit_limit": "1"}, duration_s=60, reason="r"
        ),
    ]
    for call in refused:
        with pytest.raises(WatchdogNotPermittedError, match="watchdog"):
            await call


# -- dual control --------------------------------------------------------------------------------


async def test_firm_resume_needs_a_second_operator(manager, store, clock, events):
    halt = await firm_halted(manager)
    request, _ = await manager.request_resume(ALICE, Scope.FIRM, "", "venue back")
    assert isinstance(request, halts_pb2.ApprovalRequest)
    assert request.status == halts_pb2.APPROVAL_STATUS_PENDING
    assert request.expires_ns == clock() + DEFAULT_REQUEST_TTL_S * 1_000_000_000
    assert request.halt_request_id == halt.request_id
    # Still halted until approved.
    assert (await store.state(Scope.FIRM, "")).record.state == trading_pb2.TRADING_STATE_HALTED

    with pytest.raises(SelfApprovalError, match="alice made request"):
        await manager.approve(ALICE, request.request_id)
    clock.advance_s(10)
    approval = await manager.approve(BOB, request.request_id, reason="checked with the venue")
    assert approval.request.status == halts_pb2.APPROVAL_STATUS_APPROVED
    assert (approval.request.decided_by, approval.request.decided_ns) == ("bob", clock())
    firm = (await store.state(Scope.FIRM, "")).record
    assert firm == approval.halt
    assert (firm.state, firm.set_by, firm.approved_by, firm.request_id) == (
        trading_pb2.TRADING_STATE_ACTIVE,
        "alice",
        "bob",
        request.request_id,
    )

    await eventually(lambda: events.of_type(halts_pb2.HALT_EVENT_TYPE_APPROVED), what="the approval event")
    (approved,) = events.of_type(halts_pb2.HALT_EVENT_TYPE_APPROVED)
    assert (approved.actor, approved.requested_by, approved.approved_by, approved.request_id) == (
        "bob",
        "alice",
        "bob",
        request.request_id,
    )
    assert (approved.scope, approved.state) == (trading_pb2.SCOPE_FIRM, trading_pb2.TRADING_STATE_ACTIVE)
    assert approved.reason == "checked with the venue"
    assert [subject for subject, _ in events.events] == [
        "pretrade.v1.halts.state",
        "pretrade.v1.halts.requested",
        "pretrade.v1.halts.approved",
        "pretrade.v1.halts.state",
    ]


async def test_expired_request_is_refused(manager, store, clock, events):
    await firm_halted(manager)
    request, _ = await manager.request_resume(ALICE, Scope.FIRM, "", "venue back")
    clock.advance_s(DEFAULT_REQUEST_TTL_S)
    with pytest.raises(RequestExpiredError, match="expired"):
        await manager.approve(BOB, request.request_id)
    stored = (await store.request(request.request_id)).record
    assert stored.status == halts_pb2.APPROVAL_STATUS_EXPIRED
    assert (await store.state(Scope.FIRM, "")).record.state == trading_pb2.TRADING_STATE_HALTED
    with pytest.raises(RequestNotPendingError, match="EXPIRED"):
        await manager.approve(BOB, request.request_id)
    await eventually(
        lambda: events.of_type(halts_pb2.HALT_EVENT_TYPE_REQUEST_EXPIRED), what="the expiry event"
    )


async def test_sweep_expires_pending_requests_once(manager, store, clock, events):
    await firm_halted(manager)
    request, _ = await manager.request_resume(ALICE, Scope.FIRM, "", "venue back")
    await manager.sweep()
    assert (await store.request(request.request_id)).record.status == halts_pb2.APPROVAL_STATUS_PENDING
    clock.advance_s(DEFAULT_REQUEST_TTL_S + 1)
    listed = await manager.snapshot(include_inactive=True)
    assert listed.requests[0].status == halts_pb2.APPROVAL_STATUS_EXPIRED  # shown expired before the sweep
    await manager.sweep()
    await manager.sweep()
    assert (await store.request(request.request_id)).record.status == halts_pb2.APPROVAL_STATUS_EXPIRED
    await asyncio.sleep(0.1)
    assert len(events.of_type(halts_pb2.HALT_EVENT_TYPE_REQUEST_EXPIRED)) == 1
    assert not (await manager.snapshot()).requests


async def test_unknown_and_already_decided_requests_are_refused(manager):
    with pytest.raises(UnknownRequestError):
        await manager.approve(BOB, "req-0000000000000000")
    await firm_halted(manager)
    request, _ = await manager.request_resume(ALICE, Scope.FIRM, "", "venue back")
    await manager.approve(BOB, request.request_id)
    with pytest.raises(RequestNotPendingError, match="APPROVED by bob"):
        await manager.approve(ADMIN, request.request_id)


async def test_requester_may_withdraw_and_anyone_may_reject(manager, store):
    await firm_halted(manager)
    first, _ = await manager.request_resume(ALICE, Scope.FIRM, "", "venue back")
    withdrawn = await manager.approve(ALICE, first.request_id, reject=True, reason="too early")
    assert withdrawn.request.status == halts_pb2.APPROVAL_STATUS_REJECTED
    assert withdrawn.request.decided_by == "alice"
    second, _ = await manager.request_resume(ALICE, Scope.FIRM, "", "venue back")
    rejected = await manager.approve(BOB, second.request_id, reject=True, reason="not yet")
    assert rejected.request.decision_reason == "not yet"
    assert (await store.state(Scope.FIRM, "")).record.state == trading_pb2.TRADING_STATE_HALTED


async def test_a_new_halt_supersedes_a_pending_resume(manager, store):
    await firm_halted(manager)
    request, _ = await manager.request_resume(ALICE, Scope.FIRM, "", "venue back")
    await manager.request_halt(ADMIN, Scope.FIRM, "", TradingState.HALTED, "second outage")
    with pytest.raises(RequestSupersededError, match="changed after it was made"):
        await manager.approve(BOB, request.request_id)
    assert (await store.request(request.request_id)).record.status == halts_pb2.APPROVAL_STATUS_REJECTED
    assert (await store.state(Scope.FIRM, "")).record.reason == "second outage"


async def test_kill_switch_halts_the_firm_and_publishes_cancel_all(manager, clock, events):
    halt, _, _ = await manager.request_halt(
        ALICE, Scope.FIRM, "", TradingState.HALTED, "runaway algo", cancel_all=True
    )
    assert halt.cancel_all and halt.request_id.startswith("kill-") and halt.reset.requires_approval
    await eventually(lambda: events.events, what="the kill event")
    subject, event = events.events[0]
    assert subject == "pretrade.v1.halts.kill"
    assert event.type == halts_pb2.HALT_EVENT_TYPE_KILL
    assert event.control == gateway_pb2.ControlMessage(
        action=gateway_pb2.CONTROL_ACTION_CANCEL_ALL,
        reason="runaway algo",
        requested_by="alice",
        issued_ns=clock(),
    )


# -- overrides -----------------------------------------------------------------------------------


async def test_limit_override_needs_approval_and_expires(manager, store, clock, events, nc):
    request = await manager.request_override(
        ALICE, account="ACC1", limits={"credit_limit": "500000"}, duration_s=600, reason="client deposit"
    )
    assert request.kind == halts_pb2.APPROVAL_KIND_OVERRIDE
    assert (await manager.snapshot()).overrides == []
    with pytest.raises(SelfApprovalError):
        await manager.approve(ALICE, request.request_id)
    approval = await manager.approve(BOB, request.request_id)
    override = approval.override
    assert (override.account, dict(override.limits)) == ("ACC1", {"credit_limit": "500000"})
    assert (override.requested_by, override.approved_by) == ("alice", "bob")
    assert override.request_id == request.request_id
    assert (override.starts_ns, override.expires_ns) == (clock(), clock() + 600 * 1_000_000_000)
    assert list((await manager.snapshot()).overrides) == [override]

    clock.advance_s(600)
    assert (await manager.snapshot()).overrides == []
    await manager.sweep()
    kv = await nc.jetstream().key_value(HALTS_BUCKET)
    assert "override." + override.override_id not in await kv.keys()
    await eventually(
        lambda: events.of_type(halts_pb2.HALT_EVENT_TYPE_OVERRIDE_EXPIRED), what="the override expiry event"
    )


async def test_throttle_is_in_force_at_once(manager, clock):
    throttle = await manager.request_override(
        ALICE, account="ACC2", throttle_factor="0.25", duration_s=30, reason="message storm"
    )
    assert throttle.kind == halts_pb2.OVERRIDE_KIND_THROTTLE
    assert throttle.override_id.startswith("thr-") and throttle.request_id == throttle.override_id
    assert throttle.expires_ns == clock() + 30 * 1_000_000_000
    assert [o.override_id for o in (await manager.snapshot()).overrides] == [throttle.override_id]


@pytest.mark.parametrize(
    ("kwargs", "field", "fragment"),
    [
        (dict(account="ACC1", limits={"credit_limit": "-5"}), "limits.credit_limit", "negative"),
        (dict(account="ACC1", limits={"credit_limt": "5"}), "limits.credit_limt", "unknown key"),
        (
            dict(account="ACC1", limits={"order_rate_limit": "{ orders = 0, window_ms = 1 }"}),
            "limits.order_rate_limit.orders",
            "greater than 0",
        ),
        (dict(account="ACC1", throttle_factor="2"), "throttle_factor", "at most 1"),
        (dict(strategy="MM", limits={"credit_limit": "5"}), "limits.credit_limit", "unknown key"),
        (dict(account="ACC1", strategy="MM", throttle_factor="0.5"), "strategy", "not both"),
        (dict(account="ACC1"), "limits", "at least one limit"),
    ],
)
async def test_override_values_are_validated_like_the_rules_file(manager, kwargs, field, fragment):
    with pytest.raises(InvalidHaltRequestError) as caught:
        await manager.request_override(ALICE, duration_s=60, reason="r", **kwargs)
    (violation,) = caught.value.violations
    assert violation.field == field
    assert fragment in violation.description


async def test_pretrade_up_can_validate_overrides_against_its_rules(store, clock):
    from fastpath.rules import load_rules

    from .conftest import EXAMPLE_RULES

    def compile_against_the_rules(override) -> None:
        load_rules(EXAMPLE_RULES, overrides=[override])

    manager = HaltManager(store, clock=clock, validate_override=compile_against_the_rules)
    with pytest.raises(InvalidHaltRequestError) as caught:
        await manager.request_override(
            ALICE, account="NOPE", limits={"credit_limit": "5"}, duration_s=60, reason="r"
        )
    assert caught.value.violations[0].field == "account"
    assert "not declared" in caught.value.violations[0].description


async def test_list_shows_what_is_in_force(manager):
    await manager.request_halt(ALICE, Scope.ACCOUNT, "ACC1", TradingState.HALTED, "a")
    await manager.request_halt(ALICE, Scope.SYMBOL, "GME", TradingState.REDUCING, "b")
    await manager.request_resume(ALICE, Scope.SYMBOL, "GME", "c")
    await firm_halted(manager)
    pending, _ = await manager.request_resume(ALICE, Scope.FIRM, "", "d")
    listed = await manager.snapshot()
    assert [(h.scope, h.name) for h in listed.halts] == [
        (trading_pb2.SCOPE_FIRM, ""),
        (trading_pb2.SCOPE_ACCOUNT, "ACC1"),
    ]
    assert [r.request_id for r in listed.requests] == [pending.request_id]
    everything = await manager.snapshot(include_inactive=True)
    assert len(everything.halts) == 3
