"""``pretrade.v1.HaltService`` over a :class:`~halts.manager.HaltManager`.

Hosted on the gateway's gRPC server by ``pretrade up`` (:func:`add_halt_service`). The
caller's identity is the principal the gateway's auth interceptor put in
``gateway.auth.current_principal``; the interceptor's role table must admit the
methods (:data:`HALT_METHOD_ROLES`): operators and admins (watchdogs hold the operator
role) for the changes, every role for ListHalts and WatchHalts. The manager then applies
its own policy (traders, watchdogs, self-approval), so the rules hold even if the table is
configured more loosely.

Status codes: PERMISSION_DENIED (role, watchdog limits, self-approval), INVALID_ARGUMENT
with a ``google.rpc.BadRequest`` (malformed fields), FAILED_PRECONDITION (unknown,
expired, decided or superseded request; nothing to resume; a halt that would loosen),
ABORTED (compare-and-swap contention: retry), UNAVAILABLE (NATS or the bucket),
RESOURCE_EXHAUSTED (a WatchHalts caller that fell behind), UNAUTHENTICATED (no principal).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import grpc

from fastpath.codes import TradingState
from gateway.auth import ROLE_ADMIN, ROLE_OPERATOR, ROLE_TRADER, current_principal, service_method_roles
from gateway.validation import FieldViolation, invalid_argument_status
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
    RoleRequiredError,
    SelfApprovalError,
    UnknownRequestError,
    Violation,
    WatchdogNotPermittedError,
    WatcherTooSlowError,
    WouldLoosenError,
)
from halts.manager import HaltManager
from halts.model import Operator, scope_from_proto, state_from_proto, state_to_proto
from pretrade.v1 import halts_pb2, halts_pb2_grpc

log = logging.getLogger(__name__)

HALT_SERVICE_DESCRIPTOR = halts_pb2.DESCRIPTOR.services_by_name["HaltService"]
HALT_SERVICE_NAME = HALT_SERVICE_DESCRIPTOR.full_name
_READ_METHODS = ("ListHalts", "WatchHalts")

#: Full method name -> roles the gateway's auth interceptor admits; merge into its table
#: (``AuthInterceptor(tokens, {**DEFAULT_METHOD_ROLES, **HALT_METHOD_ROLES})``).
HALT_METHOD_ROLES: dict[str, frozenset[str]] = {
    **service_method_roles(HALT_SERVICE_DESCRIPTOR, frozenset((ROLE_OPERATOR, ROLE_ADMIN))),
    **{
        f"/{HALT_SERVICE_NAME}/{method}": frozenset((ROLE_TRADER, ROLE_OPERATOR, ROLE_ADMIN))
        for method in _READ_METHODS
    },
}

_STATUS_OF_ERROR: dict[type[HaltError], grpc.StatusCode] = {
    RoleRequiredError: grpc.StatusCode.PERMISSION_DENIED,
    WatchdogNotPermittedError: grpc.StatusCode.PERMISSION_DENIED,
    SelfApprovalError: grpc.StatusCode.PERMISSION_DENIED,
    UnknownRequestError: grpc.StatusCode.FAILED_PRECONDITION,
    RequestExpiredError: grpc.StatusCode.FAILED_PRECONDITION,
    RequestNotPendingError: grpc.StatusCode.FAILED_PRECONDITION,
    RequestSupersededError: grpc.StatusCode.FAILED_PRECONDITION,
    NotHaltedError: grpc.StatusCode.FAILED_PRECONDITION,
    WouldLoosenError: grpc.StatusCode.FAILED_PRECONDITION,
    ConcurrentUpdateError: grpc.StatusCode.ABORTED,
    HaltStoreUnavailableError: grpc.StatusCode.UNAVAILABLE,
    CorruptRecordError: grpc.StatusCode.INTERNAL,
    WatcherTooSlowError: grpc.StatusCode.RESOURCE_EXHAUSTED,
}


def principal_from_context() -> Operator | None:
    """The caller, from the gateway's auth interceptor (None when there is none)."""
    principal = current_principal.get()
    if principal is None:
        return None
    return Operator(principal.name, frozenset(principal.roles))


class HaltServicer(halts_pb2_grpc.HaltServiceServicer):
    """pretrade.v1.HaltService; see the module docstring."""

    def __init__(
        self, manager: HaltManager, *, caller: Callable[[], Operator | None] = principal_from_context
    ) -> None:
        self.manager = manager
        self._caller = caller

    async def RequestHalt(self, request, context):  # noqa: N802 (gRPC method name)
        operator = await self._operator(context)
        # Unset resume_to means ACTIVE; an unknown number becomes None, which the manager refuses.
        resume_to = state_from_proto(request.resume_to) if request.resume_to else TradingState.ACTIVE
        try:
            halt, previous, confirmations = await self.manager.request_halt(
                operator,
                scope_from_proto(request.scope),
                request.name,
                state_from_proto(request.state),
                request.reason,
                cancel_all=request.cancel_all,
                resume_to=resume_to,
            )
        except HaltError as exc:
            await _abort(context, exc)
        return halts_pb2.RequestHaltResponse(
            halt=halt,
            previous_state=state_to_proto(previous),
            revision=confirmations.revision,
            gateways=confirmations.gateways,
        )

    async def RequestResume(self, request, context):  # noqa: N802
        operator = await self._operator(context)
        state = state_from_proto(request.state) if request.state else None
        if request.state and state is None:
            await _abort(context, InvalidHaltRequestError([Violation("state", "must be ACTIVE or REDUCING")]))
        try:
            outcome, confirmations = await self.manager.request_resume(
                operator, scope_from_proto(request.scope), request.name, request.reason, state
            )
        except HaltError as exc:
            await _abort(context, exc)
        if isinstance(outcome, halts_pb2.ApprovalRequest):
            return halts_pb2.RequestResumeResponse(pending=outcome)
        return halts_pb2.RequestResumeResponse(
            halt=outcome, revision=confirmations.revision, gateways=confirmations.gateways
        )

    async def Approve(self, request, context):  # noqa: N802
        operator = await self._operator(context)
        try:
            approval = await self.manager.approve(
                operator, request.request_id, reject=request.reject, reason=request.reason
            )
        except HaltError as exc:
            await _abort(context, exc)
        response = halts_pb2.ApproveResponse(
            request=approval.request,
            revision=approval.confirmations.revision,
            gateways=approval.confirmations.gateways,
        )
        if approval.halt is not None:
            response.halt.CopyFrom(approval.halt)
        if approval.override is not None:
            response.override.CopyFrom(approval.override)
        return response

    async def RequestOverride(self, request, context):  # noqa: N802
        operator = await self._operator(context)
        try:
            outcome = await self.manager.request_override(
                operator,
                account=request.account,
                symbol=request.symbol,
                strategy=request.strategy,
                limits=dict(request.limits),
                throttle_factor=request.throttle_factor,
                duration_s=request.duration_s,
                reason=request.reason,
            )
        except HaltError as exc:
            await _abort(context, exc)
        if isinstance(outcome, halts_pb2.ApprovalRequest):
            return halts_pb2.RequestOverrideResponse(pending=outcome)
        return halts_pb2.RequestOverrideResponse(override=outcome)

    async def ListHalts(self, request, context):  # noqa: N802
        await self._operator(context)
        try:
            return await self.manager.snapshot(include_inactive=request.include_inactive)
        except HaltError as exc:
            await _abort(context, exc)

    async def WatchHalts(self, request, context):  # noqa: N802
        """The current picture, then every event, until the caller goes away."""
        await self._operator(context)
        try:
            async with self.manager.event_feed() as events:
                yield halts_pb2.WatchHaltsResponse(snapshot=await self.manager.snapshot())
                async for event in events:
                    yield halts_pb2.WatchHaltsResponse(event=event)
        except HaltError as exc:
            await _abort(context, exc)

    async def _operator(self, context) -> Operator:
        operator = self._caller()
        if operator is None:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "no authenticated caller")
        return operator


async def _abort(context, error: HaltError) -> None:
    if isinstance(error, InvalidHaltRequestError):
        violations = [FieldViolation(v.field, v.description) for v in error.violations]
        await context.abort_with_status(invalid_argument_status(violations))
    code = _STATUS_OF_ERROR.get(type(error), grpc.StatusCode.INTERNAL)
    if code in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.INTERNAL):
        log.warning("halt service refused a call (%s): %s", code.name, error)
    await context.abort(code, str(error))


def add_halt_service(server: grpc.aio.Server, manager: HaltManager) -> HaltServicer:
    """Register HaltService on ``server`` (before it starts); returns the servicer."""
    servicer = HaltServicer(manager)
    halts_pb2_grpc.add_HaltServiceServicer_to_server(servicer, server)
    return servicer
