"""The halt manager: who may change trading states, dual control, expiry and events.

Every decision of the manager is written to the ``PRETRADE_HALTS`` KV bucket (with a
compare-and-swap on the revision it read, :mod:`halts.store`) and announced as a
``HaltEvent`` on ``pretrade.v1.halts.<event>``. Gateways never talk to the manager: they
follow the bucket (:mod:`halts.follower`) and report what they enforce on
``pretrade.v1.halts.applied.<gateway_id>`` (``HaltsApplied``), which the manager collects
(:class:`GatewayTracker`) so that a change's answer says, gateway by gateway, whether it
holds there. Several managers (one per ``pretrade up``) may serve the same bucket at once;
the CAS writes keep them consistent.

Time comes from an injectable ``clock`` (Unix epoch ns), so expiry is testable without
sleeping.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import re
import secrets
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import NoReturn

from google.protobuf.message import DecodeError

from fastpath.codes import Scope, TradingState
from fastpath.errors import RulesError
from fastpath.rules import LimitOverride, check_override
from gateway.aio import cancel_until_done, wait_until
from halts.errors import (
    ConcurrentUpdateError,
    CorruptRecordError,
    HaltError,
    HaltStoreUnavailableError,
    InvalidHaltRequestError,
    NotHaltedError,
    RequestExpiredError,
    RequestNotPendingError,
    RequestSupersededError,
    RevisionConflictError,
    RoleRequiredError,
    SelfApprovalError,
    UnknownRequestError,
    Violation,
    WatchdogNotPermittedError,
    WatcherTooSlowError,
    WouldLoosenError,
)
from halts.model import (
    Operator,
    control_message,
    limit_override,
    name_problem,
    reason_problem,
    scope_from_proto,
    scope_label,
    scope_to_proto,
    state_from_proto,
    state_to_proto,
)
from halts.store import HaltStore, Versioned
from halts.subjects import (
    EVENT_APPROVAL_REQUESTED,
    EVENT_APPROVED,
    EVENT_KILL,
    EVENT_OVERRIDE_ACTIVATED,
    EVENT_OVERRIDE_EXPIRED,
    EVENT_REJECTED,
    EVENT_REQUEST_EXPIRED,
    EVENT_STATE_CHANGED,
    APPLIED_SUBJECT_WILDCARD,
    DEFAULT_APPLIED_HEARTBEAT_S,
    EVENTS_SUBJECT_WILDCARD,
    event_subject,
    override_key,
    request_key,
)
from pretrade.v1 import halts_pb2

log = logging.getLogger(__name__)

NS_PER_S = 1_000_000_000

#: Seconds a two-person request waits for its approval before it expires.
DEFAULT_REQUEST_TTL_S = 300
#: Longest an override or throttle may stay in force, seconds (one day).
DEFAULT_MAX_OVERRIDE_DURATION_S = 86_400
#: Seconds between sweeps (expiring requests and overrides, re-publishing events).
DEFAULT_SWEEP_INTERVAL_S = 1.0
#: Compare-and-swap attempts on a key that keeps changing before giving up (ABORTED).
DEFAULT_CAS_ATTEMPTS = 8
#: Longest random pause after a lost compare-and-swap, seconds (spreads racing writers).
DEFAULT_CAS_BACKOFF_MAX_S = 0.002
#: Seconds decided requests stay in the bucket before the sweep removes them (7 days);
#: their events stay in the events stream.
DEFAULT_DECIDED_REQUEST_RETENTION_S = 7 * 86_400
#: Events a WatchHalts caller may fall behind by before its stream is ended.
DEFAULT_WATCH_QUEUE_EVENTS = 1_024
#: Events kept for re-publishing while the events stream cannot be reached.
DEFAULT_UNPUBLISHED_EVENTS_MAX = 10_000
#: Longest a state change waits for the hosting gateway's follower to apply it, seconds.
DEFAULT_LOCAL_APPLY_TIMEOUT_S = 1.0
#: Longest a change waits for every live gateway to confirm it, seconds. Past it the answer
#: lists the laggards UNCONFIRMED; the change stands.
DEFAULT_CONFIRM_TIMEOUT_S = 1.0
#: A gateway not heard from for this long is taken to be down and left out of the answers,
#: seconds (three missed heartbeats).
DEFAULT_GATEWAY_LIVENESS_S = 3 * DEFAULT_APPLIED_HEARTBEAT_S
#: The actor of events the manager causes by itself (expiries).
MANAGER_ACTOR = "halt-manager"

_APPROVAL_STATUS_NAMES = {
    value: name.removeprefix("APPROVAL_STATUS_") for name, value in halts_pb2.ApprovalStatus.items()
}
_EVENT_SUBJECT_TOKENS = {
    halts_pb2.HALT_EVENT_TYPE_STATE_CHANGED: EVENT_STATE_CHANGED,
    halts_pb2.HALT_EVENT_TYPE_KILL: EVENT_KILL,
    halts_pb2.HALT_EVENT_TYPE_APPROVAL_REQUESTED: EVENT_APPROVAL_REQUESTED,
    halts_pb2.HALT_EVENT_TYPE_APPROVED: EVENT_APPROVED,
    halts_pb2.HALT_EVENT_TYPE_REJECTED: EVENT_REJECTED,
    halts_pb2.HALT_EVENT_TYPE_REQUEST_EXPIRED: EVENT_REQUEST_EXPIRED,
    halts_pb2.HALT_EVENT_TYPE_OVERRIDE_ACTIVATED: EVENT_OVERRIDE_ACTIVATED,
    halts_pb2.HALT_EVENT_TYPE_OVERRIDE_EXPIRED: EVENT_OVERRIDE_EXPIRED,
}
_OVERRIDE_SCOPE_FIELDS = ("account", "symbol", "strategy", "throttle_factor")
#: What an id made by :func:`new_id` looks like (and all a KV key token may hold).
_REQUEST_ID = re.compile(r"[A-Za-z0-9_-]+")


def new_id(kind: str) -> str:
    """``<kind>-<16 hex digits>``: unique, a valid KV key token and a bare TOML key (so it
    reads plainly in rule paths such as ``overrides.ovr-1a2b....credit_limit``)."""
    return f"{kind}-{secrets.token_hex(8)}"


#: Per live gateway, whether it enforces a change, ordered by gateway id.
GatewayConfirmations = tuple[halts_pb2.GatewayConfirmation, ...]


@dataclass(frozen=True)
class Confirmations:
    """The answer to a change of the halts bucket: the ``revision`` its write made, which
    the gateways' ``applied_revision`` is compared with (so an operator sees what a laggard
    is behind), and where each live gateway stands. The empty default (revision 0, no
    gateways) is the answer when nothing was written: a pending request, a rejection."""

    revision: int = 0
    gateways: GatewayConfirmations = ()


@dataclass(frozen=True)
class Approval:
    """The outcome of :meth:`HaltManager.approve`: the decided request, what it put in
    force (the resumed scope's state, or the override), if anything, and then which
    gateways confirmed it."""

    request: halts_pb2.ApprovalRequest
    halt: halts_pb2.HaltState | None = None
    override: halts_pb2.Override | None = None
    confirmations: Confirmations = Confirmations()


@dataclass(frozen=True)
class _Report:
    revision: int
    ready: bool
    heard_at: float  # the tracker's monotonic clock, seconds


class GatewayTracker:
    """What each gateway's follower last reported (``HaltsApplied``), by gateway id.

    A gateway is live while it was heard from within ``liveness_s``; one silent for longer
    is down (it accepts no orders) or cut off from NATS (its follower fails closed within
    its staleness bound), and is forgotten. :meth:`confirm` waits, bounded, until every
    live gateway has reported a revision or that it is failing closed.
    """

    def __init__(
        self, *, liveness_s: float = DEFAULT_GATEWAY_LIVENESS_S, monotonic: Callable[[], float] = time.monotonic
    ) -> None:
        self._liveness_s = liveness_s
        self._monotonic = monotonic
        self._reports: dict[str, _Report] = {}
        #: Set, then replaced, on every report (wakes confirm).
        self._reported = asyncio.Event()

    def report(self, applied: halts_pb2.HaltsApplied) -> None:
        """Record a gateway's latest report."""
        self._reports[applied.gateway_id] = _Report(applied.revision, applied.ready, self._monotonic())
        self._reported.set()
        self._reported = asyncio.Event()

    def _live(self) -> dict[str, _Report]:
        now = self._monotonic()
        for gateway_id in [g for g, r in self._reports.items() if now - r.heard_at > self._liveness_s]:
            del self._reports[gateway_id]
        return self._reports

    async def confirm(self, revision: int, timeout_s: float) -> GatewayConfirmations:
        """Wait at most ``timeout_s`` until every live gateway has applied ``revision`` or
        reported that it fails closed; then say where each stands."""
        await wait_until(
            lambda: all(not r.ready or r.revision >= revision for r in self._live().values()),
            lambda: self._reported,
            timeout_s,
        )
        return tuple(
            halts_pb2.GatewayConfirmation(
                gateway_id=gateway_id, status=_confirmation_status(report, revision), applied_revision=report.revision
            )
            for gateway_id, report in sorted(self._live().items())
        )


def _confirmation_status(report: _Report, revision: int) -> int:
    if not report.ready:
        return halts_pb2.CONFIRMATION_STATUS_FAILED_CLOSED
    if report.revision >= revision:
        return halts_pb2.CONFIRMATION_STATUS_CONFIRMED
    return halts_pb2.CONFIRMATION_STATUS_UNCONFIRMED


class HaltManager:
    """Trading states per scope, and the two-person requests that loosen the firm's.

    Halt states (per scope: the FIRM, an account, a strategy, a symbol)::

        ACTIVE --halt(REDUCING)--> REDUCING --halt(HALTED)--> HALTED
          ^  ^----------------resume--------------------------|  |
          |------------------resume(to ACTIVE)-------------------'

    Tightening (to REDUCING or HALTED, or the same state again with a new reason) is one
    person's decision and takes effect at once; so is loosening (resume) of an account,
    strategy or symbol. Loosening the FIRM needs a second person: the resume becomes an
    approval request. A halt request for a looser state than the current one is refused
    (:class:`WouldLoosenError`): loosening is always a resume. Every state records who, why,
    when, the action's id and what a reset does (``ResetPolicy``).

    Approval requests (FIRM resumes, limit overrides)::

        PENDING --approve by another operator--> APPROVED (the change is applied)
        PENDING --reject (anyone, incl. the requester)--> REJECTED
        PENDING --the scope changed meanwhile, found on approval--> REJECTED (superseded)
        PENDING --expires_ns passes (on approval or in the sweep)--> EXPIRED

    Nobody approves their own request (:class:`SelfApprovalError`); an approval after
    ``expires_ns`` is refused (:class:`RequestExpiredError`) whether or not the sweep ran.

    Overrides: a limit override (LIMITS) is an approval request until approved, then an
    ``override.<id>`` record in force for its duration; a throttle (THROTTLE) is a graduated
    response and is in force at once. Gateways drop an override by their own clock when it
    expires; the sweep then deletes its record and announces OVERRIDE_EXPIRED.

    Who: operators and admins act; traders cannot (:class:`RoleRequiredError`); principals
    named ``watchdog:*`` may only ask for graduated responses (REDUCING, HALTED, throttles),
    not resumes, approvals, limit raises or the kill switch
    (:class:`WatchdogNotPermittedError`).
    """

    def __init__(
        self,
        store: HaltStore,
        *,
        clock: Callable[[], int] = time.time_ns,
        request_ttl_s: float = DEFAULT_REQUEST_TTL_S,
        max_override_duration_s: int = DEFAULT_MAX_OVERRIDE_DURATION_S,
        sweep_interval_s: float = DEFAULT_SWEEP_INTERVAL_S,
        cas_attempts: int = DEFAULT_CAS_ATTEMPTS,
        decided_request_retention_s: float = DEFAULT_DECIDED_REQUEST_RETENTION_S,
        validate_override: Callable[[LimitOverride], None] = check_override,
        confirm_timeout_s: float = DEFAULT_CONFIRM_TIMEOUT_S,
        gateway_liveness_s: float = DEFAULT_GATEWAY_LIVENESS_S,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        """``validate_override`` raises a ``RulesError`` for an override the gateways would
        refuse; the default checks everything but the names and rates of a rules file
        (``pretrade up`` compiles the override against its own rules file instead).
        ``monotonic``: seconds, for the gateways' liveness."""
        self.store = store
        self._clock = clock
        self._request_ttl_ns = int(request_ttl_s * NS_PER_S)
        self._max_override_duration_s = max_override_duration_s
        self._sweep_interval_s = sweep_interval_s
        self._cas_attempts = cas_attempts
        self._retention_ns = int(decided_request_retention_s * NS_PER_S)
        self._validate_override = validate_override
        self._unpublished: deque[tuple[str, halts_pb2.HaltEvent]] = deque(
            maxlen=DEFAULT_UNPUBLISHED_EVENTS_MAX
        )
        self._sweeper: asyncio.Task | None = None
        self._confirm_timeout_s = confirm_timeout_s
        self._gateways = GatewayTracker(liveness_s=gateway_liveness_s, monotonic=monotonic)
        self._applied_subscription = None
        #: Set by a gateway that hosts this manager to its halt follower's ``wait_applied``:
        #: every state change then returns only once that gateway enforces it (bounded by
        #: DEFAULT_LOCAL_APPLY_TIMEOUT_S), without depending on that gateway's report
        #: reaching the manager. Every gateway's report (including that one's) is then
        #: awaited by :class:`GatewayTracker` and listed in the answer.
        self.wait_applied_locally: Callable[[int, float], Awaitable[bool]] | None = None

    # -- lifecycle ------------------------------------------------------------------------------
    async def start(self) -> None:
        """Start the periodic sweep and collect the gateways' ``HaltsApplied`` reports."""
        if self._sweeper is None:
            self._sweeper = asyncio.create_task(self._sweep_forever(), name="halt-manager-sweep")
        if self._applied_subscription is None:
            self._applied_subscription = await self.store.subscribe_events(
                APPLIED_SUBJECT_WILDCARD, self._on_applied
            )

    async def stop(self) -> None:
        if self._sweeper is not None:
            await cancel_until_done([self._sweeper])
            self._sweeper = None
        if self._applied_subscription is not None:
            with contextlib.suppress(Exception):
                await self._applied_subscription.unsubscribe()
            self._applied_subscription = None

    async def _on_applied(self, message) -> None:
        try:
            applied = halts_pb2.HaltsApplied.FromString(message.data)
        except DecodeError:
            log.warning("ignoring an unreadable halt applied report on %s", message.subject)
            return
        self._gateways.report(applied)

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(self._sweep_interval_s)
            try:
                await self.sweep()
            except HaltError as exc:
                log.warning("halt sweep failed, retrying in %.1f s: %s", self._sweep_interval_s, exc)

    # -- halts ----------------------------------------------------------------------------------
    async def request_halt(
        self,
        operator: Operator,
        scope: Scope | None,
        name: str,
        state: TradingState | None,
        reason: str,
        *,
        cancel_all: bool = False,
        resume_to: TradingState | None = TradingState.ACTIVE,
    ) -> tuple[halts_pb2.HaltState, TradingState, Confirmations]:
        """Put ``scope`` into REDUCING or HALTED now; with ``cancel_all`` (FIRM, HALTED) this
        is the kill switch. Returns the new state record, the state it replaced and which
        gateways confirmed it (:meth:`_confirmed`)."""
        self._authorize(operator, "halt with cancel-all (kill switch)" if cancel_all else None)
        violations = self._scope_violations(scope, name) + _reason_violations(reason)
        if state not in (TradingState.REDUCING, TradingState.HALTED):
            violations.append(Violation("state", "must be REDUCING or HALTED"))
        if cancel_all and (scope != Scope.FIRM or state != TradingState.HALTED):
            violations.append(
                Violation("cancel_all", "the kill switch halts the FIRM scope: FIRM and HALTED only")
            )
        if resume_to not in (TradingState.ACTIVE, TradingState.REDUCING) or (
            state is not None and resume_to is not None and resume_to >= state
        ):
            violations.append(Violation("resume_to", "must be ACTIVE, or REDUCING for a HALTED scope"))
        _raise_if(violations)

        for _ in range(self._cas_attempts):
            current = await self._state_to_tighten(scope, name)
            previous = _state_of(current)
            if state < previous:
                raise WouldLoosenError(
                    f"{scope_label(scope, name)} is {previous.name}; loosening it to {state.name} is a resume"
                )
            halt = halts_pb2.HaltState(
                scope=scope_to_proto(scope),
                name=name,
                state=state_to_proto(state),
                reason=reason,
                set_by=operator.name,
                set_ns=self._clock(),
                request_id=new_id("kill" if cancel_all else "halt"),
                reset=halts_pb2.ResetPolicy(
                    resume_to=state_to_proto(resume_to), requires_approval=scope == Scope.FIRM
                ),
                cancel_all=cancel_all,
            )
            try:
                revision = await self.store.write_state(halt, _revision(current))
            except RevisionConflictError:
                await _backoff()
                continue
            await self._applied_locally(revision)
            event = self._state_event(
                halts_pb2.HALT_EVENT_TYPE_KILL if cancel_all else halts_pb2.HALT_EVENT_TYPE_STATE_CHANGED,
                operator.name,
                halt,
                previous,
            )
            if cancel_all:
                event.control.CopyFrom(control_message(halt))
            await self._publish(event)
            log.warning(
                "%s %s by %s: %s%s",
                scope_label(scope, name),
                state.name,
                operator.name,
                reason,
                " (kill switch: cancel-all sent)" if cancel_all else "",
            )
            return halt, previous, await self._confirmed(revision)
        raise self._contended(scope_label(scope, name))

    async def _applied_locally(self, revision: int) -> None:
        """Wait (bounded) for the hosting gateway to enforce a state write; see
        :attr:`wait_applied_locally`. A follower that lags past the bound is logged, not
        fatal: the write stands and the follower applies it when its watch delivers it."""
        wait = self.wait_applied_locally
        if wait is not None and not await wait(revision, DEFAULT_LOCAL_APPLY_TIMEOUT_S):
            log.warning(
                "halt state revision %d not applied by this gateway within %.1f s; returning anyway",
                revision,
                DEFAULT_LOCAL_APPLY_TIMEOUT_S,
            )

    async def _confirmed(self, revision: int) -> Confirmations:
        """Wait (bounded by the confirm timeout) until every live gateway has reported
        ``revision`` applied or that it fails closed. A laggard is logged and listed
        UNCONFIRMED, not an error: the write stands, and the gateway applies it when its
        watch delivers it or fails closed within its staleness bound."""
        gateways = await self._gateways.confirm(revision, self._confirm_timeout_s)
        lagging = [c.gateway_id for c in gateways if c.status == halts_pb2.CONFIRMATION_STATUS_UNCONFIRMED]
        if lagging:
            log.warning(
                "halt bucket revision %d not confirmed within %.1f s by gateway(s) %s",
                revision,
                self._confirm_timeout_s,
                ", ".join(lagging),
            )
        return Confirmations(revision, gateways)

    async def _state_to_tighten(self, scope: Scope, name: str) -> Versioned[halts_pb2.HaltState] | None:
        """The scope's state, or for a corrupt value a stand-in that is HALTED at the corrupt
        revision: any halt may overwrite it (which is how an operator repairs it), nothing
        may loosen it."""
        try:
            return await self.store.state(scope, name)
        except CorruptRecordError as exc:
            log.error("%s: overwriting it with the new halt", exc)
            stand_in = halts_pb2.HaltState(state=state_to_proto(TradingState.HALTED))
            return Versioned(stand_in, exc.revision)

    async def request_resume(
        self,
        operator: Operator,
        scope: Scope | None,
        name: str,
        reason: str,
        state: TradingState | None = None,
    ) -> tuple[halts_pb2.HaltState | halts_pb2.ApprovalRequest, Confirmations]:
        """Loosen ``scope`` to ``state`` (default: the halt's ``reset.resume_to``). Applied at
        once and returned as the new state record with the gateways' confirmations, except
        for FIRM: then the pending approval request is returned (with the empty
        :class:`Confirmations`, revision 0: nothing was written yet)."""
        self._authorize(operator, "resume")
        violations = self._scope_violations(scope, name) + _reason_violations(reason)
        if state not in (None, TradingState.ACTIVE, TradingState.REDUCING):
            violations.append(
                Violation("state", "must be ACTIVE or REDUCING (or unset: the halt's resume_to)")
            )
        _raise_if(violations)

        for _ in range(self._cas_attempts):
            current = await self.store.state(scope, name)
            previous = _state_of(current)
            target = state
            if target is None and current is not None:
                target = state_from_proto(current.record.reset.resume_to)
            if target is None:
                target = TradingState.ACTIVE
            if current is None or target >= previous:
                raise NotHaltedError(
                    f"{scope_label(scope, name)} is {previous.name}: nothing to resume to {target.name}"
                )
            now = self._clock()
            if scope == Scope.FIRM:
                request = halts_pb2.ApprovalRequest(
                    request_id=new_id("req"),
                    kind=halts_pb2.APPROVAL_KIND_RESUME,
                    status=halts_pb2.APPROVAL_STATUS_PENDING,
                    requested_by=operator.name,
                    reason=reason,
                    requested_ns=now,
                    expires_ns=now + self._request_ttl_ns,
                    scope=scope_to_proto(scope),
                    name=name,
                    resume_to=state_to_proto(target),
                    halt_request_id=current.record.request_id,
                )
                await self.store.write_request(request, 0)
                await self._publish(
                    self._request_event(halts_pb2.HALT_EVENT_TYPE_APPROVAL_REQUESTED, operator.name, request)
                )
                log.warning(
                    "FIRM resume to %s requested by %s (request %s): %s",
                    target.name,
                    operator.name,
                    request.request_id,
                    reason,
                )
                return request, Confirmations()
            halt = halts_pb2.HaltState(
                scope=scope_to_proto(scope),
                name=name,
                state=state_to_proto(target),
                reason=reason,
                set_by=operator.name,
                set_ns=now,
                request_id=new_id("resume"),
                reset=halts_pb2.ResetPolicy(resume_to=state_to_proto(TradingState.ACTIVE)),
            )
            try:
                revision = await self.store.write_state(halt, current.revision)
            except RevisionConflictError:
                await _backoff()
                continue
            await self._applied_locally(revision)
            await self._publish(
                self._state_event(halts_pb2.HALT_EVENT_TYPE_STATE_CHANGED, operator.name, halt, previous)
            )
            log.warning(
                "%s resumed to %s by %s: %s", scope_label(scope, name), target.name, operator.name, reason
            )
            return halt, await self._confirmed(revision)
        raise self._contended(scope_label(scope, name))

    # -- approvals ------------------------------------------------------------------------------
    async def approve(
        self, operator: Operator, request_id: str, *, reject: bool = False, reason: str = ""
    ) -> Approval:
        """Approve (or reject) a pending request. Approving applies it: the FIRM resume or the
        override. The requester may reject (withdraw) but never approve their own request."""
        self._authorize(operator, "reject requests" if reject else "approve requests")
        violations = []
        if not request_id.strip():
            violations.append(Violation("request_id", "is required"))
        elif not _REQUEST_ID.fullmatch(request_id):
            violations.append(Violation("request_id", "is not a request id (req-<16 hex digits>)"))
        if reason and reason_problem(reason):
            violations.append(Violation("reason", reason_problem(reason)))
        _raise_if(violations)

        found = await self.store.request(request_id)
        if found is None:
            raise UnknownRequestError(f"no approval request {request_id!r}")
        request = found.record
        if request.status != halts_pb2.APPROVAL_STATUS_PENDING:
            decided = f" by {request.decided_by}" if request.decided_by else ""
            raise RequestNotPendingError(
                f"request {request_id} is {_APPROVAL_STATUS_NAMES[request.status]}{decided}, not pending"
            )
        now = self._clock()
        if now >= request.expires_ns:
            await self._expire_request(found, now)
            raise RequestExpiredError(f"request {request_id} expired; ask again (pretrade resume / override)")
        if reject:
            status = halts_pb2.APPROVAL_STATUS_REJECTED
            rejected = (await self._decide(found, status, operator.name, now, reason)).record
            await self._publish(
                self._request_event(halts_pb2.HALT_EVENT_TYPE_REJECTED, operator.name, rejected, reason)
            )
            return Approval(rejected)
        if operator.name == request.requested_by:
            raise SelfApprovalError(
                f"{operator.name} made request {request_id} and cannot approve it: a different operator must"
            )
        if request.kind == halts_pb2.APPROVAL_KIND_RESUME:
            return await self._approve_resume(found, operator, now, reason)
        return await self._approve_override(found, operator, now, reason)

    async def _approve_resume(
        self, found: Versioned[halts_pb2.ApprovalRequest], operator: Operator, now: int, reason: str
    ) -> Approval:
        request = found.record
        scope = scope_from_proto(request.scope)
        current = await self.store.state(scope, request.name)
        if current is None or current.record.request_id != request.halt_request_id:
            await self._supersede(found, now)
        decided = await self._decide(found, halts_pb2.APPROVAL_STATUS_APPROVED, operator.name, now, reason)
        approved = decided.record
        halt = halts_pb2.HaltState(
            scope=request.scope,
            name=request.name,
            state=request.resume_to,
            reason=request.reason,
            set_by=request.requested_by,
            approved_by=operator.name,
            set_ns=now,
            request_id=request.request_id,
            reset=halts_pb2.ResetPolicy(resume_to=state_to_proto(TradingState.ACTIVE)),
        )
        try:
            revision = await self.store.write_state(halt, current.revision)
        except RevisionConflictError:
            # The scope changed between our read and our write: the approval is void.
            await self._supersede(decided, now)
        await self._applied_locally(revision)
        previous = _state_of(current)
        await self._publish(
            self._request_event(
                halts_pb2.HALT_EVENT_TYPE_APPROVED, operator.name, approved, reason, halt=halt
            )
        )
        await self._publish(
            self._state_event(halts_pb2.HALT_EVENT_TYPE_STATE_CHANGED, operator.name, halt, previous)
        )
        log.warning(
            "FIRM resumed to %s: requested by %s, approved by %s (request %s)",
            state_from_proto(halt.state).name,
            request.requested_by,
            operator.name,
            request.request_id,
        )
        return Approval(approved, halt=halt, confirmations=await self._confirmed(revision))

    async def _approve_override(
        self, found: Versioned[halts_pb2.ApprovalRequest], operator: Operator, now: int, reason: str
    ) -> Approval:
        decided = await self._decide(found, halts_pb2.APPROVAL_STATUS_APPROVED, operator.name, now, reason)
        approved = decided.record
        override = halts_pb2.Override()
        override.CopyFrom(approved.override)
        override.approved_by = operator.name
        override.starts_ns = now
        override.expires_ns = now + override.duration_s * NS_PER_S
        revision = await self.store.write_override(override, 0)
        await self._publish(
            self._request_event(
                halts_pb2.HALT_EVENT_TYPE_APPROVED, operator.name, approved, reason, override=override
            )
        )
        await self._publish(
            self._override_event(halts_pb2.HALT_EVENT_TYPE_OVERRIDE_ACTIVATED, operator.name, override)
        )
        log.warning(
            "override %s in force until %d: requested by %s, approved by %s",
            override.override_id,
            override.expires_ns,
            override.requested_by,
            operator.name,
        )
        return Approval(approved, override=override, confirmations=await self._confirmed(revision))

    async def _decide(
        self, found: Versioned[halts_pb2.ApprovalRequest], status: int, actor: str, now: int, reason: str
    ) -> Versioned[halts_pb2.ApprovalRequest]:
        """Move a pending request to ``status`` with a CAS on the revision read, so that two
        approvers racing decide it once."""
        decided = halts_pb2.ApprovalRequest()
        decided.CopyFrom(found.record)
        decided.status = status
        decided.decided_by = actor
        decided.decided_ns = now
        decided.decision_reason = reason
        try:
            revision = await self.store.write_request(decided, found.revision)
        except RevisionConflictError:
            raise RequestNotPendingError(
                f"request {decided.request_id} was decided by someone else meanwhile"
            ) from None
        return Versioned(decided, revision)

    async def _supersede(self, found: Versioned[halts_pb2.ApprovalRequest], now: int) -> NoReturn:
        """Reject a request whose scope changed since it was made, then refuse the approval."""
        request = found.record
        reason = "superseded: the scope changed after the request was made"
        with contextlib.suppress(RevisionConflictError):
            rejected = halts_pb2.ApprovalRequest()
            rejected.CopyFrom(request)
            rejected.status = halts_pb2.APPROVAL_STATUS_REJECTED
            rejected.decided_by = MANAGER_ACTOR
            rejected.decided_ns = now
            rejected.decision_reason = reason
            await self.store.write_request(rejected, found.revision)
            await self._publish(
                self._request_event(halts_pb2.HALT_EVENT_TYPE_REJECTED, MANAGER_ACTOR, rejected, reason)
            )
        raise RequestSupersededError(
            f"request {request.request_id} is void: "
            f"{scope_label(scope_from_proto(request.scope), request.name)} changed after it was made; "
            "ask again if the resume is still wanted"
        )

    async def _expire_request(self, found: Versioned[halts_pb2.ApprovalRequest], now: int) -> None:
        expired = halts_pb2.ApprovalRequest()
        expired.CopyFrom(found.record)
        expired.status = halts_pb2.APPROVAL_STATUS_EXPIRED
        expired.decided_ns = now
        try:
            await self.store.write_request(expired, found.revision)
        except RevisionConflictError:
            return  # another manager (or approver) got there first
        event = self._request_event(halts_pb2.HALT_EVENT_TYPE_REQUEST_EXPIRED, MANAGER_ACTOR, expired)
        event.event_id = f"{expired.request_id}.expired"
        await self._publish(event)

    # -- overrides ------------------------------------------------------------------------------
    async def request_override(
        self,
        operator: Operator,
        *,
        account: str = "",
        symbol: str = "",
        strategy: str = "",
        limits: Mapping[str, str] | None = None,
        throttle_factor: str = "",
        duration_s: int,
        reason: str,
    ) -> halts_pb2.Override | halts_pb2.ApprovalRequest:
        """A throttle (only ``throttle_factor``) is in force at once and returned as the
        override; limits make an approval request, returned pending."""
        limits = dict(limits or {})
        is_throttle = bool(throttle_factor) and not limits
        self._authorize(operator, None if is_throttle else "override limits")
        violations = _reason_violations(reason)
        for field_name, value in (("account", account), ("symbol", symbol), ("strategy", strategy)):
            if value and name_problem(value):
                violations.append(Violation(field_name, name_problem(value)))
        if not 1 <= duration_s <= self._max_override_duration_s:
            violations.append(
                Violation("duration_s", f"must be 1 to {self._max_override_duration_s} seconds")
            )
        now = self._clock()
        override = halts_pb2.Override(
            override_id=new_id("thr" if is_throttle else "ovr"),
            kind=halts_pb2.OVERRIDE_KIND_THROTTLE if is_throttle else halts_pb2.OVERRIDE_KIND_LIMITS,
            account=account,
            symbol=symbol,
            strategy=strategy,
            limits=limits,
            throttle_factor=throttle_factor,
            duration_s=duration_s,
            requested_by=operator.name,
            reason=reason,
        )
        if not violations:
            violations = self._override_violations(override)
        _raise_if(violations)

        if is_throttle:
            override.request_id = override.override_id
            override.starts_ns = now
            override.expires_ns = now + duration_s * NS_PER_S
            await self.store.write_override(override, 0)
            await self._publish(
                self._override_event(halts_pb2.HALT_EVENT_TYPE_OVERRIDE_ACTIVATED, operator.name, override)
            )
            log.warning(
                "throttle %s in force for %d s by %s: %s",
                override.override_id,
                duration_s,
                operator.name,
                reason,
            )
            return override
        request_id = new_id("req")
        override.request_id = request_id
        request = halts_pb2.ApprovalRequest(
            request_id=request_id,
            kind=halts_pb2.APPROVAL_KIND_OVERRIDE,
            status=halts_pb2.APPROVAL_STATUS_PENDING,
            requested_by=operator.name,
            reason=reason,
            requested_ns=now,
            expires_ns=now + self._request_ttl_ns,
            override=override,
        )
        await self.store.write_request(request, 0)
        await self._publish(
            self._request_event(halts_pb2.HALT_EVENT_TYPE_APPROVAL_REQUESTED, operator.name, request)
        )
        return request

    def _override_violations(self, override: halts_pb2.Override) -> list[Violation]:
        """The rules compiler's verdict on the override, as field violations of the request
        (``account``, ``throttle_factor``, ``limits.credit_limit`` ...)."""
        compiled = limit_override(override)
        try:
            self._validate_override(compiled)
        except RulesError as exc:
            key = (exc.key_path or "").removeprefix(compiled.path).removeprefix(".")
            if key.partition(".")[0] in _OVERRIDE_SCOPE_FIELDS:
                field_name = key.partition(".")[0]
            else:
                field_name = f"limits.{key}" if key else "limits"
            return [Violation(field_name, str(exc).removeprefix(f"{exc.source}: "))]
        return []

    # -- reading --------------------------------------------------------------------------------
    async def snapshot(self, include_inactive: bool = False) -> halts_pb2.ListHaltsResponse:
        """States that are not ACTIVE, pending requests (shown EXPIRED once past their
        expiry, even before the sweep) and overrides in force; with ``include_inactive``
        also ACTIVE states and decided requests."""
        snapshot = await self.store.snapshot()
        now = self._clock()
        response = halts_pb2.ListHaltsResponse(as_of_ns=now)
        for versioned in sorted(snapshot.states.values(), key=lambda v: (v.record.scope, v.record.name)):
            if include_inactive or versioned.record.state != state_to_proto(TradingState.ACTIVE):
                response.halts.append(versioned.record)
        for versioned in sorted(snapshot.requests.values(), key=lambda v: v.record.requested_ns):
            request = halts_pb2.ApprovalRequest()
            request.CopyFrom(versioned.record)
            if request.status == halts_pb2.APPROVAL_STATUS_PENDING and now >= request.expires_ns:
                request.status = halts_pb2.APPROVAL_STATUS_EXPIRED
            if include_inactive or request.status == halts_pb2.APPROVAL_STATUS_PENDING:
                response.requests.append(request)
        for versioned in sorted(snapshot.overrides.values(), key=lambda v: v.record.starts_ns):
            if versioned.record.expires_ns > now:
                response.overrides.append(versioned.record)
        return response

    @contextlib.asynccontextmanager
    async def event_feed(self) -> AsyncIterator[AsyncIterator[halts_pb2.HaltEvent]]:
        """Subscribe to every event (of every manager) for as long as the context is open;
        the iterator raises :class:`WatcherTooSlowError` if its reader falls too far behind.
        Subscribe first, then take a snapshot, so that nothing falls between the two."""
        queue: asyncio.Queue[bytes | None] = asyncio.Queue(maxsize=DEFAULT_WATCH_QUEUE_EVENTS)

        async def on_event(message) -> None:
            try:
                queue.put_nowait(message.data)
            except asyncio.QueueFull:
                queue.get_nowait()
                queue.put_nowait(None)  # the reader finds the overflow marker next

        subscription = await self.store.subscribe_events(EVENTS_SUBJECT_WILDCARD, on_event)

        async def events() -> AsyncIterator[halts_pb2.HaltEvent]:
            while True:
                data = await queue.get()
                if data is None:
                    raise WatcherTooSlowError(
                        f"fell more than {DEFAULT_WATCH_QUEUE_EVENTS} events behind; "
                        "watch again for a fresh snapshot"
                    )
                yield halts_pb2.HaltEvent.FromString(data)

        try:
            yield events()
        finally:
            with contextlib.suppress(Exception):
                await subscription.unsubscribe()

    # -- expiry ---------------------------------------------------------------------------------
    async def sweep(self) -> None:
        """Expire pending requests past their expiry, delete expired overrides (announcing
        OVERRIDE_EXPIRED once, whichever manager wins the CAS), remove long-decided requests,
        and re-publish events the events stream missed."""
        await self._republish()
        snapshot = await self.store.snapshot()
        now = self._clock()
        for versioned in snapshot.requests.values():
            request = versioned.record
            if request.status == halts_pb2.APPROVAL_STATUS_PENDING:
                if now >= request.expires_ns:
                    await self._expire_request(versioned, now)
            elif now - request.decided_ns >= self._retention_ns:
                with contextlib.suppress(RevisionConflictError):
                    await self.store.remove(request_key(request.request_id), versioned.revision)
        for versioned in snapshot.overrides.values():
            override = versioned.record
            if override.expires_ns > now:
                continue
            try:
                await self.store.remove(override_key(override.override_id), versioned.revision)
            except RevisionConflictError:
                continue
            event = self._override_event(halts_pb2.HALT_EVENT_TYPE_OVERRIDE_EXPIRED, MANAGER_ACTOR, override)
            event.event_id = f"{override.override_id}.expired"
            await self._publish(event)

    # -- events ---------------------------------------------------------------------------------
    def _base_event(self, event_type: int, actor: str, reason: str) -> halts_pb2.HaltEvent:
        return halts_pb2.HaltEvent(
            event_id=new_id("evt"), type=event_type, at_ns=self._clock(), actor=actor, reason=reason
        )

    def _state_event(
        self, event_type: int, actor: str, halt: halts_pb2.HaltState, previous: TradingState
    ) -> halts_pb2.HaltEvent:
        event = self._base_event(event_type, actor, halt.reason)
        event.scope = halt.scope
        event.name = halt.name
        event.state = halt.state
        event.previous_state = state_to_proto(previous)
        event.request_id = halt.request_id
        event.requested_by = halt.set_by
        event.approved_by = halt.approved_by
        event.halt.CopyFrom(halt)
        return event

    def _request_event(
        self,
        event_type: int,
        actor: str,
        request: halts_pb2.ApprovalRequest,
        reason: str = "",
        *,
        halt: halts_pb2.HaltState | None = None,
        override: halts_pb2.Override | None = None,
    ) -> halts_pb2.HaltEvent:
        event = self._base_event(event_type, actor, reason or request.reason)
        event.scope = request.scope
        event.name = request.name
        event.state = request.resume_to
        event.request_id = request.request_id
        event.requested_by = request.requested_by
        if request.status == halts_pb2.APPROVAL_STATUS_APPROVED:
            event.approved_by = request.decided_by
        event.approval.CopyFrom(request)
        if halt is not None:
            event.halt.CopyFrom(halt)
        if override is not None:
            event.override.CopyFrom(override)
        return event

    def _override_event(
        self, event_type: int, actor: str, override: halts_pb2.Override
    ) -> halts_pb2.HaltEvent:
        event = self._base_event(event_type, actor, override.reason)
        event.request_id = override.request_id
        event.requested_by = override.requested_by
        event.approved_by = override.approved_by
        event.override.CopyFrom(override)
        return event

    async def _publish(self, event: halts_pb2.HaltEvent) -> None:
        """Publish an event; if the events stream cannot take it, keep it for the sweep to
        re-publish (the state change itself is already in the bucket)."""
        subject = event_subject(_EVENT_SUBJECT_TOKENS[event.type])
        try:
            await self.store.publish_event(subject, event)
        except HaltStoreUnavailableError as exc:
            log.error("event %s not published yet (will retry): %s", event.event_id, exc)
            self._unpublished.append((subject, event))

    async def _republish(self) -> None:
        while self._unpublished:
            subject, event = self._unpublished[0]
            await self.store.publish_event(subject, event)
            self._unpublished.popleft()

    # -- policy ---------------------------------------------------------------------------------
    def _authorize(self, operator: Operator, person_only_action: str | None) -> None:
        """Operators and admins only; watchdogs only for graduated responses (when
        ``person_only_action`` is None)."""
        if not operator.may_operate:
            roles = ", ".join(sorted(operator.roles)) or "none"
            raise RoleRequiredError(
                f"{operator.name} (roles: {roles}) may not change trading states: "
                "needs the operator or admin role"
            )
        if operator.is_watchdog and person_only_action is not None:
            raise WatchdogNotPermittedError(
                f"{operator.name} is a watchdog and may only ask for REDUCING, HALTED or a throttle, "
                f"not {person_only_action}"
            )

    @staticmethod
    def _scope_violations(scope: Scope | None, name: str) -> list[Violation]:
        if scope is None:
            return [Violation("scope", "must be FIRM, ACCOUNT, STRATEGY or SYMBOL")]
        if scope == Scope.FIRM:
            return [Violation("name", "must be empty for the FIRM scope")] if name else []
        problem = name_problem(name)
        return [Violation("name", f"{scope.name.lower()} name {problem}")] if problem else []

    def _contended(self, what: str) -> ConcurrentUpdateError:
        return ConcurrentUpdateError(f"{what} kept changing during {self._cas_attempts} attempts; try again")


async def _backoff() -> None:
    await asyncio.sleep(random.uniform(0, DEFAULT_CAS_BACKOFF_MAX_S))


def _reason_violations(reason: str) -> list[Violation]:
    problem = reason_problem(reason)
    return [Violation("reason", problem)] if problem else []


def _raise_if(violations: list[Violation]) -> None:
    if violations:
        raise InvalidHaltRequestError(violations)


def _state_of(current: Versioned[halts_pb2.HaltState] | None) -> TradingState:
    state = state_from_proto(current.record.state) if current is not None else None
    return TradingState.ACTIVE if state is None else state


def _revision(current: Versioned | None) -> int:
    return 0 if current is None else current.revision

