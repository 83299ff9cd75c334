"""Errors of the halt manager, the store and the follower: one class per condition.

The gRPC service maps each class to one status code (``halts.servicer``); the CLI prints
the message as one line. Messages name the request, scope or principal concerned.
"""

from __future__ import annotations

from dataclasses import dataclass


class HaltError(Exception):
    """Base class. ``str(error)`` is one line an operator can act on."""


# -- who may do what (PERMISSION_DENIED) -----------------------------------------------------
class RoleRequiredError(HaltError):
    """The caller has neither the operator nor the admin role (traders cannot halt,
    resume, approve or override)."""


class WatchdogNotPermittedError(HaltError):
    """A ``watchdog:`` principal asked for more than a graduated response (REDUCING,
    HALTED, throttle): resumes, approvals, limit raises and the kill switch need a person."""


class SelfApprovalError(HaltError):
    """The approver is the requester: dual control needs a different person."""


# -- malformed requests (INVALID_ARGUMENT) ----------------------------------------------------
@dataclass(frozen=True)
class Violation:
    """One malformed field of a request and what is wrong with it."""

    field: str
    description: str


class InvalidHaltRequestError(HaltError):
    """A request with malformed fields; ``violations`` names each one."""

    def __init__(self, violations: list[Violation]) -> None:
        self.violations = tuple(violations)
        first = violations[0]
        more = f" (and {len(violations) - 1} more)" if len(violations) > 1 else ""
        super().__init__(f"invalid request: {first.field}: {first.description}{more}")


# -- the state does not allow it (FAILED_PRECONDITION) ---------------------------------------
class UnknownRequestError(HaltError):
    """No approval request with that id."""


class RequestExpiredError(HaltError):
    """The approval request passed its expiry before it was approved."""


class RequestNotPendingError(HaltError):
    """The approval request was already approved, rejected or expired."""


class RequestSupersededError(HaltError):
    """The scope changed after the request was made (a new halt, or another approved
    resume), so approving it would act on a state nobody asked about; it is rejected."""


class NotHaltedError(HaltError):
    """A resume of a scope that is already at (or looser than) the state asked for."""


class WouldLoosenError(HaltError):
    """A halt request for a looser state than the scope is in (HALTED -> REDUCING is a
    resume, which for FIRM needs a second operator)."""


# -- concurrency and availability -------------------------------------------------------------
class RevisionConflictError(HaltError):
    """A compare-and-swap write lost: the key changed since it was read (retried by the
    manager; surfaces only as :class:`ConcurrentUpdateError`)."""


class ConcurrentUpdateError(HaltError):
    """The key kept changing under every compare-and-swap attempt (ABORTED: retry)."""


class HaltStoreUnavailableError(HaltError):
    """NATS or the JetStream KV bucket could not be reached or answered with an error
    (UNAVAILABLE). The state may or may not have changed: list the halts to see."""


class CorruptRecordError(HaltError):
    """A KV value that is not the protobuf record its key promises. For a state or
    override key the follower fails closed on it; a new halt of the scope overwrites it
    (``revision`` is the corrupt value's, for that compare-and-swap)."""

    def __init__(self, message: str, revision: int = 0) -> None:
        super().__init__(message)
        self.revision = revision


class WatcherTooSlowError(HaltError):
    """A WatchHalts caller did not keep up with the events; its stream is ended so that it
    reconnects and starts again from a fresh snapshot instead of missing events silently."""
