"""The halt vocabulary shared by the manager, the follower, the service and the CLI.

Records on the wire and in the KV bucket are the protobuf messages of
``pretrade/v1/halts.proto``; this module holds what is not a message: who is acting
(:class:`Operator`), the mapping between the proto enums and the kernel's
(:class:`~fastpath.codes.Scope`, :class:`~fastpath.codes.TradingState`), and the
translation of an ``Override`` record into the rules compiler's
:class:`~fastpath.rules.LimitOverride`.
"""

from __future__ import annotations

import tomllib
from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from fastpath.codes import Scope, TradingState
from fastpath.rules import FORBIDDEN_NAME_CHARACTERS, MAX_NAME_LENGTH, LimitOverride
from gateway.auth import ROLE_ADMIN, ROLE_OPERATOR
from pretrade.v1 import gateway_pb2, halts_pb2, trading_pb2

#: Roles that may halt, resume, approve and override.
OPERATING_ROLES = frozenset((ROLE_OPERATOR, ROLE_ADMIN))
#: Principals whose name starts with this are automated watchdogs: they hold the operator
#: role but may only ask for graduated responses (REDUCING, HALTED, throttles).
WATCHDOG_PREFIX = "watchdog:"
#: Longest reason accepted, in characters (reasons go into every event and the ledger).
MAX_REASON_LENGTH = 500

_SCOPE_TO_PROTO = {
    Scope.FIRM: trading_pb2.SCOPE_FIRM,
    Scope.ACCOUNT: trading_pb2.SCOPE_ACCOUNT,
    Scope.STRATEGY: trading_pb2.SCOPE_STRATEGY,
    Scope.SYMBOL: trading_pb2.SCOPE_SYMBOL,
}
_SCOPE_FROM_PROTO = {proto: scope for scope, proto in _SCOPE_TO_PROTO.items()}
_STATE_TO_PROTO = {
    TradingState.ACTIVE: trading_pb2.TRADING_STATE_ACTIVE,
    TradingState.REDUCING: trading_pb2.TRADING_STATE_REDUCING,
    TradingState.HALTED: trading_pb2.TRADING_STATE_HALTED,
}
_STATE_FROM_PROTO = {proto: state for state, proto in _STATE_TO_PROTO.items()}


@dataclass(frozen=True)
class Operator:
    """Who is acting: a principal's name and roles (from the caller's bearer token)."""

    name: str
    roles: frozenset[str]

    @property
    def may_operate(self) -> bool:
        return not self.roles.isdisjoint(OPERATING_ROLES)

    @property
    def is_watchdog(self) -> bool:
        return self.name.startswith(WATCHDOG_PREFIX)


def scope_to_proto(scope: Scope) -> int:
    return _SCOPE_TO_PROTO[Scope(scope)]


def scope_from_proto(value: int) -> Scope | None:
    """The kernel scope of a proto ``Scope``, or None for UNSPECIFIED or an unknown number."""
    return _SCOPE_FROM_PROTO.get(value)


def state_to_proto(state: TradingState) -> int:
    return _STATE_TO_PROTO[TradingState(state)]


def state_from_proto(value: int) -> TradingState | None:
    """The kernel state of a proto ``TradingState``, or None for UNSPECIFIED or unknown."""
    return _STATE_FROM_PROTO.get(value)


def scope_label(scope: Scope, name: str) -> str:
    """``FIRM`` or ``ACCOUNT ACC1``: how messages and the CLI name a scope."""
    scope = Scope(scope)
    return scope.name if scope == Scope.FIRM else f"{scope.name} {name}"


def name_problem(name: str) -> str | None:
    """What is wrong with an account, strategy or symbol name (the rules file's own rules),
    or None when it is fine."""
    if not 1 <= len(name) <= MAX_NAME_LENGTH:
        return f"must be 1 to {MAX_NAME_LENGTH} characters long"
    if any(character.isspace() or not character.isprintable() for character in name):
        return "must not contain whitespace or control characters"
    if any(character in FORBIDDEN_NAME_CHARACTERS for character in name):
        return f"must not contain any of {FORBIDDEN_NAME_CHARACTERS!r}"
    return None


def reason_problem(reason: str) -> str | None:
    """What is wrong with a reason, or None: every action must say why, on one line."""
    if not reason.strip():
        return "is required: every halt, resume and override says why"
    if len(reason) > MAX_REASON_LENGTH:
        return f"must be at most {MAX_REASON_LENGTH} characters"
    if not reason.isprintable():
        return "must be one line of printable characters"
    return None


def control_message(halt: halts_pb2.HaltState) -> gateway_pb2.ControlMessage:
    """The CANCEL_ALL instruction of a kill-switch halt, as order streams receive it."""
    return gateway_pb2.ControlMessage(
        action=gateway_pb2.CONTROL_ACTION_CANCEL_ALL,
        reason=halt.reason,
        requested_by=halt.set_by,
        issued_ns=halt.set_ns,
    )


def limit_value(text: str) -> Any:
    """A value of ``Override.limits`` as the rules file's TOML parser would read it:
    ``"500000"`` -> 500000, ``"2.5"`` -> Decimal, ``"{ orders = 5, window_ms = 1000 }"`` ->
    a table. Anything that is not one TOML value (``unlimited``, ``1e`` ...) stays the string,
    for the rules compiler to accept (``"unlimited"``) or reject with its usual message."""
    if "\n" in text or "\r" in text:
        return text
    try:
        return tomllib.loads(f"value = {text}", parse_float=Decimal)["value"]
    except tomllib.TOMLDecodeError:
        return text


def limit_override(override: halts_pb2.Override) -> LimitOverride:
    """The rules compiler's view of an ``Override`` record."""
    return LimitOverride(
        override_id=override.override_id,
        limits={key: limit_value(value) for key, value in sorted(override.limits.items())},
        account=override.account or None,
        symbol=override.symbol or None,
        strategy=override.strategy or None,
        throttle_factor=override.throttle_factor or None,
    )


def overrides_in_force(overrides: Iterable[halts_pb2.Override], now_ns: int) -> list[halts_pb2.Override]:
    """The overrides not yet expired at ``now_ns``, oldest first (so that the newest wins
    where two set the same limit)."""
    live = [override for override in overrides if override.expires_ns > now_ns]
    return sorted(live, key=lambda override: (override.starts_ns, override.override_id))
