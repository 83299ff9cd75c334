"""Typed exceptions of the SDK: one class per condition a caller handles differently.

Every gRPC error of a call is turned into one of these by :func:`error_from_rpc`, so
callers never have to inspect status codes. ``InvalidOrder`` carries the gateway's
``google.rpc.BadRequest`` field violations (or the SDK's own, for values it cannot convert
to fixed point before sending).
"""

from __future__ import annotations

from dataclasses import dataclass

import grpc
from google.rpc import error_details_pb2, status_pb2

GRPC_STATUS_DETAILS_KEY = "grpc-status-details-bin"


@dataclass(frozen=True)
class FieldViolation:
    """One malformed field: its path in the request (``orders[3].quantity_nanos``) and why."""

    field: str
    description: str


class GatewayError(Exception):
    """Base class: the gateway (or the transport to it) did not produce an answer."""

    def __init__(self, message: str, code: grpc.StatusCode | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


class Unauthenticated(GatewayError):
    """No token, or a token the gateway does not know (UNAUTHENTICATED)."""


class PermissionDenied(GatewayError):
    """The token's principal lacks a role the method needs (PERMISSION_DENIED)."""


class InvalidOrder(GatewayError):
    """The request was malformed (INVALID_ARGUMENT): an order, execution or price field is
    missing, out of range or unknown. ``violations`` names each field and why. A well-formed
    order that breaks a risk rule is not an error: it comes back as a REJECT decision."""

    def __init__(self, message: str, violations: tuple[FieldViolation, ...] = ()) -> None:
        super().__init__(message, grpc.StatusCode.INVALID_ARGUMENT)
        self.violations = violations


class Overloaded(GatewayError):
    """The gateway refused the call for capacity (RESOURCE_EXHAUSTED); retry with backoff."""


class GatewayUnavailable(GatewayError):
    """The gateway cannot be reached or went away (UNAVAILABLE, CANCELLED, or a stream that
    ended with orders still waiting for their decisions)."""


class DeadlineExceeded(GatewayError):
    """No answer within the call's deadline. The order may or may not have been decided:
    retry with the same ``request_id`` to get the original decision."""


class RulesRejected(GatewayError):
    """ReloadRules refused the rules file (FAILED_PRECONDITION); the old rules stay."""


class GatewayInternalError(GatewayError):
    """The gateway failed unexpectedly (INTERNAL, UNKNOWN or any other status)."""


_BY_CODE: dict[grpc.StatusCode, type[GatewayError]] = {
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.RESOURCE_EXHAUSTED: Overloaded,
    grpc.StatusCode.UNAVAILABLE: GatewayUnavailable,
    grpc.StatusCode.CANCELLED: GatewayUnavailable,  # e.g. a stream cut at gateway shutdown
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
    grpc.StatusCode.FAILED_PRECONDITION: RulesRejected,
}


def _field_violations(trailing_metadata) -> tuple[FieldViolation, ...]:
    for key, value in trailing_metadata or ():
        if key != GRPC_STATUS_DETAILS_KEY:
            continue
        status = status_pb2.Status.FromString(value)
        violations: list[FieldViolation] = []
        for detail in status.details:
            if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                bad_request = error_details_pb2.BadRequest()
                detail.Unpack(bad_request)
                violations.extend(
                    FieldViolation(violation.field, violation.description)
                    for violation in bad_request.field_violations
                )
        return tuple(violations)
    return ()


def error_from_rpc(error: grpc.RpcError) -> GatewayError:
    """The SDK exception for a failed call (sync ``grpc.RpcError`` or ``grpc.aio.AioRpcError``)."""
    code = error.code()
    message = error.details() or (code.name if code is not None else "gRPC error")
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        return InvalidOrder(message, _field_violations(error.trailing_metadata()))
    return _BY_CODE.get(code, GatewayInternalError)(message, code)
