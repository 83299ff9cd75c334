"""Every NATS name the halt manager and the gateways' followers share, in one place.

The manager and the followers meet only here and at the protobuf messages of
``pretrade/v1/halts.proto``; docs/halts.md renders this table.

=============================================  ==========================  ========================
name                                           payload                     kind
=============================================  ==========================  ========================
``PRETRADE_HALTS`` key ``state.firm``          ``pretrade.v1.HaltState``   KV (authoritative state)
``state.account.<name>`` / ``state.strategy.<name>`` / ``state.symbol.<name>``  ``HaltState``  KV
``request.<request_id>``                       ``ApprovalRequest``         KV (two-person flow)
``override.<override_id>``                     ``Override``                KV (overlay in force)
``pretrade.v1.halts.<event>``                  ``pretrade.v1.HaltEvent``   stream ``PRETRADE_HALT_EVENTS``
``pretrade.v1.halts.kill``                     ``HaltEvent`` with ``control`` = CANCEL_ALL   same stream
``pretrade.v1.halts.applied.<gateway_id>``     ``pretrade.v1.HaltsApplied``  core NATS (no stream)
=============================================  ==========================  ========================

Every gateway's follower publishes ``HaltsApplied`` on its ``applied`` subject right after it
applies a change and every ``DEFAULT_APPLIED_HEARTBEAT_S``; the manager subscribes to
``pretrade.v1.halts.applied.*`` to confirm its changes gateway by gateway. The subject has
one token more than the events, so the events stream (``pretrade.v1.halts.*``) does not
capture these reports and ``WatchHalts`` does not see them.

Names in keys: an account, strategy or symbol name that is made of ``A-Z a-z 0-9 _ -`` only
is used as is (readable with ``nats kv ls``); any other name (dots, unicode, ``=``) is
written ``b64=<urlsafe base64 of its UTF-8, unpadded>``, which cannot collide with a
literal name because literal names never contain ``=``. The name inside the value is the
authoritative one.
"""

from __future__ import annotations

import base64
import re

from fastpath.codes import Scope
from gateway.subjects import validate_gateway_id

SUBJECT_ROOT = "pretrade.v1"

#: The KV bucket holding the authoritative halt state, requests and overrides.
HALTS_BUCKET = "PRETRADE_HALTS"
#: The JetStream stream behind the bucket (nats-py's ``KV_<bucket>`` convention).
HALTS_BUCKET_STREAM = f"KV_{HALTS_BUCKET}"
#: Revisions kept per key: enough to read the recent history of a scope with ``nats kv history``;
#: the latest revision is what counts.
DEFAULT_HALTS_BUCKET_HISTORY = 16

STATE_KEY_PREFIX = "state"
REQUEST_KEY_PREFIX = "request"
OVERRIDE_KEY_PREFIX = "override"

#: Events: ``pretrade.v1.halts.<event>``, captured by the ``PRETRADE_HALT_EVENTS`` stream
#: for the ledger.
EVENTS_SUBJECT_PREFIX = f"{SUBJECT_ROOT}.halts"
EVENTS_SUBJECT_WILDCARD = f"{EVENTS_SUBJECT_PREFIX}.*"
EVENTS_STREAM = "PRETRADE_HALT_EVENTS"
EVENTS_STREAM_SUBJECTS = (EVENTS_SUBJECT_WILDCARD,)

#: The event subject tokens, by meaning (see ``HaltEventType`` in halts.proto).
EVENT_STATE_CHANGED = "state"
EVENT_KILL = "kill"
EVENT_APPROVAL_REQUESTED = "requested"
EVENT_APPROVED = "approved"
EVENT_REJECTED = "rejected"
EVENT_REQUEST_EXPIRED = "expired"
EVENT_OVERRIDE_ACTIVATED = "override"
EVENT_OVERRIDE_EXPIRED = "override_expired"

#: Where the kill switch's cancel-all instruction is published (a HaltEvent of type KILL
#: whose ``control`` is the ControlMessage every order stream receives).
KILL_SUBJECT = f"{EVENTS_SUBJECT_PREFIX}.{EVENT_KILL}"

#: What each gateway enforces: ``pretrade.v1.halts.applied.<gateway_id>`` (HaltsApplied).
APPLIED_SUBJECT_PREFIX = f"{EVENTS_SUBJECT_PREFIX}.applied"
APPLIED_SUBJECT_WILDCARD = f"{APPLIED_SUBJECT_PREFIX}.*"
#: Seconds between a follower's HaltsApplied heartbeats. The manager counts a gateway as
#: live for a few of these (``halts.manager.DEFAULT_GATEWAY_LIVENESS_S``), so it is part of
#: what the two sides agree on.
DEFAULT_APPLIED_HEARTBEAT_S = 0.25

#: JetStream's de-duplication header; the value is the event id.
MSG_ID_HEADER = "Nats-Msg-Id"

_SCOPE_TOKENS = {
    Scope.FIRM: "firm",
    Scope.ACCOUNT: "account",
    Scope.STRATEGY: "strategy",
    Scope.SYMBOL: "symbol",
}
_LITERAL_NAME = re.compile(r"[A-Za-z0-9_-]+")
_ENCODED_NAME_PREFIX = "b64="


def event_subject(event: str) -> str:
    """``pretrade.v1.halts.<event>``."""
    return f"{EVENTS_SUBJECT_PREFIX}.{event}"


def applied_subject(gateway_id: str) -> str:
    """``pretrade.v1.halts.applied.<gateway_id>`` (a gateway id is one subject token)."""
    return f"{APPLIED_SUBJECT_PREFIX}.{validate_gateway_id(gateway_id)}"


def encode_name(name: str) -> str:
    """``name`` as one KV key token (see the module docstring)."""
    if _LITERAL_NAME.fullmatch(name):
        return name
    encoded = base64.urlsafe_b64encode(name.encode("utf-8")).decode("ascii").rstrip("=")
    return _ENCODED_NAME_PREFIX + encoded


def state_key(scope: Scope, name: str) -> str:
    """``state.firm`` or ``state.<account|strategy|symbol>.<encoded name>``."""
    scope = Scope(scope)
    if scope == Scope.FIRM:
        return f"{STATE_KEY_PREFIX}.{_SCOPE_TOKENS[scope]}"
    return f"{STATE_KEY_PREFIX}.{_SCOPE_TOKENS[scope]}.{encode_name(name)}"


def request_key(request_id: str) -> str:
    return f"{REQUEST_KEY_PREFIX}.{request_id}"


def override_key(override_id: str) -> str:
    return f"{OVERRIDE_KEY_PREFIX}.{override_id}"


def key_kind(key: str) -> str:
    """The prefix of a key (``state``, ``request`` or ``override``)."""
    return key.partition(".")[0]
