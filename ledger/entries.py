"""The canonical encoding of ledger entries, and what each entry means.

An entry is the leaf data of the Merkle tree, so its bytes must be reproducible by anyone
from what was published on NATS. The encoding is therefore as thin as it can be (the
authoritative description, with examples, is docs/ledger.md, "Entry encoding")::

    entry = version (1 byte, 0x01) || kind (1 byte) || payload (the rest)

    kind 0x01  DECISION       payload = pretrade.v1.Decision      as published on pretrade.v1.decisions.<gw>
    kind 0x02  GATEWAY_EVENT  payload = pretrade.v1.GatewayEvent  as published on pretrade.v1.events.<gw>
    kind 0x03  HALT_EVENT     payload = pretrade.v1.HaltEvent     as published on pretrade.v1.halts.<event>

The payload is the exact message body JetStream delivered, never a re-serialization:
protobuf serialization is not canonical across implementations, the published bytes are.
So ``leaf_hash = H(0x00 || 0x01 || kind || published bytes)`` can be recomputed by an
outside verifier from a copy of the stream, and :func:`encode_entry` is trivially
deterministic. Everything else (identity, event time, index keys) is derived from the
decoded payload; nothing about the ledger (index, ingest time) is inside the entry.

Identity. Each entry has an identity that the ingest worker de-duplicates on:
``(gateway_id, sequence)`` for decisions and for gateway events (separate sequence spaces,
hence separate identity namespaces), ``event_id`` for halt events.
"""

from __future__ import annotations

import enum
import struct

from google.protobuf.message import DecodeError, Message

from ledger.errors import EntryFormatError
from pretrade.v1 import halts_pb2, ledger_pb2, types_pb2

ENTRY_FORMAT_VERSION = 1
ENTRY_HEADER_SIZE_BYTES = 2


class EntryKind(enum.IntEnum):
    """The second byte of an entry; the same numbers as ``pretrade.v1.EntryKind``."""

    DECISION = ledger_pb2.ENTRY_KIND_DECISION
    GATEWAY_EVENT = ledger_pb2.ENTRY_KIND_GATEWAY_EVENT
    HALT_EVENT = ledger_pb2.ENTRY_KIND_HALT_EVENT


_HEADERS = {kind: bytes((ENTRY_FORMAT_VERSION, kind)) for kind in EntryKind}
_KIND_BYTES = {kind: bytes((kind,)) for kind in EntryKind}
_SEQUENCE = struct.Struct(">Q")
_NAME_LENGTH = struct.Struct(">H")

# Lifecycle event names (docs/ledger.md, "Order lifecycle"). Stable: tools match on them.
EVENT_ACCEPTED = "accepted"
EVENT_REJECTED = "rejected"
EVENT_DUPLICATE_PREVENTED = "duplicate_prevented"
EVENT_RULES_LOADED = "rules_loaded"
EVENT_EXECUTION_DUPLICATE = "execution_duplicate"
EVENT_EXECUTION_UNKNOWN_ORDER = "execution_unknown_order"
EVENT_OVERFILLED = "overfilled"

_DUPLICATE_CHECK_CODES = frozenset(("DUPLICATE_CLIENT_ORDER_ID", "DUPLICATE_ORDER_CONTENT"))
_EXECUTION_EVENTS = {
    types_pb2.EXECUTION_TYPE_PARTIAL_FILL: "partially_filled",
    types_pb2.EXECUTION_TYPE_FILL: "filled",
    types_pb2.EXECUTION_TYPE_CANCELLED: "cancelled",
    types_pb2.EXECUTION_TYPE_VENUE_REJECTED: "venue_rejected",
    types_pb2.EXECUTION_TYPE_EXPIRED: "expired",
}
_EXECUTION_STATUS_EVENTS = {
    types_pb2.EXECUTION_STATUS_DUPLICATE: EVENT_EXECUTION_DUPLICATE,
    types_pb2.EXECUTION_STATUS_UNKNOWN_ORDER: EVENT_EXECUTION_UNKNOWN_ORDER,
    types_pb2.EXECUTION_STATUS_OVERFILL: EVENT_OVERFILLED,
}
_HALT_EVENTS = {
    halts_pb2.HALT_EVENT_TYPE_STATE_CHANGED: "trading_state_changed",
    halts_pb2.HALT_EVENT_TYPE_KILL: "kill_switch",
    halts_pb2.HALT_EVENT_TYPE_REJECTED: "request_rejected",
    halts_pb2.HALT_EVENT_TYPE_REQUEST_EXPIRED: "request_expired",
    halts_pb2.HALT_EVENT_TYPE_OVERRIDE_ACTIVATED: "override_activated",
    halts_pb2.HALT_EVENT_TYPE_OVERRIDE_EXPIRED: "override_expired",
}
# Requests and approvals are named after what they are about.
_APPROVAL_SUBJECTS = {halts_pb2.APPROVAL_KIND_OVERRIDE: "override", halts_pb2.APPROVAL_KIND_RESUME: "resume"}
_APPROVAL_VERBS = {halts_pb2.HALT_EVENT_TYPE_APPROVAL_REQUESTED: "requested", halts_pb2.HALT_EVENT_TYPE_APPROVED: "approved"}


def encode_entry(kind: EntryKind, payload: bytes) -> bytes:
    """The canonical entry for ``payload`` (the published message body) of ``kind``."""
    return _HEADERS[kind] + payload


def _decode_kind(entry: bytes) -> EntryKind:
    if len(entry) < ENTRY_HEADER_SIZE_BYTES:
        raise EntryFormatError(f"entry of {len(entry)} bytes is shorter than its {ENTRY_HEADER_SIZE_BYTES}-byte header")
    if entry[0] != ENTRY_FORMAT_VERSION:
        raise EntryFormatError(f"entry encoding version {entry[0]}, this code reads {ENTRY_FORMAT_VERSION}")
    try:
        return EntryKind(entry[1])
    except ValueError:
        raise EntryFormatError(f"unknown entry kind {entry[1]}") from None


def _check_gateway_identity(kind: EntryKind, message: Message) -> Message:
    if not message.gateway_id or not message.sequence:
        raise EntryFormatError(f"{kind.name} payload lacks its gateway_id or sequence")
    return message


def _decode_decision(payload: bytes) -> types_pb2.Decision:
    return _check_gateway_identity(EntryKind.DECISION, types_pb2.Decision.FromString(payload))


def _decode_gateway_event(payload: bytes) -> ledger_pb2.GatewayEvent:
    message = _check_gateway_identity(EntryKind.GATEWAY_EVENT, ledger_pb2.GatewayEvent.FromString(payload))
    if message.WhichOneof("event") is None:
        raise EntryFormatError("GATEWAY_EVENT payload carries no event")
    return message


def _decode_halt_event(payload: bytes) -> halts_pb2.HaltEvent:
    message = halts_pb2.HaltEvent.FromString(payload)
    if not message.event_id:
        raise EntryFormatError("HALT_EVENT payload has no event_id")
    return message


_DECODERS = {
    EntryKind.DECISION: _decode_decision,
    EntryKind.GATEWAY_EVENT: _decode_gateway_event,
    EntryKind.HALT_EVENT: _decode_halt_event,
}


def decode_payload(kind: EntryKind, payload: bytes) -> Message:
    """The payload as its message type; raises :class:`EntryFormatError` if it does not
    decode or lacks its identity (protobuf alone would accept many wrong byte strings)."""
    try:
        return _DECODERS[kind](payload)
    except DecodeError as exc:
        raise EntryFormatError(f"{kind.name} payload does not decode: {exc}") from None


def identity_key(kind: EntryKind, message: Message) -> bytes:
    """The de-duplication key of an entry: kind byte, then ``u16 length || gateway id ||
    u64 sequence`` (decisions, gateway events) or the event id (halt events)."""
    if kind is EntryKind.HALT_EVENT:
        return _KIND_BYTES[kind] + message.event_id.encode("utf-8")
    gateway_id = message.gateway_id.encode("utf-8")
    return _KIND_BYTES[kind] + _NAME_LENGTH.pack(len(gateway_id)) + gateway_id + _SEQUENCE.pack(message.sequence)


def event_time_ns(kind: EntryKind, message: Message) -> int:
    """When the recorded thing happened, from the payload (Unix epoch ns)."""
    if kind is EntryKind.DECISION:
        return message.decided_ns
    if kind is EntryKind.GATEWAY_EVENT:
        return message.occurred_ns
    return message.at_ns


def lifecycle_event(kind: EntryKind, message: Message) -> str:
    """The order-lifecycle event an entry records (docs/ledger.md, "Order lifecycle")."""
    if kind is EntryKind.DECISION:
        if message.verdict == types_pb2.VERDICT_ACCEPT:
            return EVENT_ACCEPTED
        if any(failure.code in _DUPLICATE_CHECK_CODES for failure in message.failures):
            return EVENT_DUPLICATE_PREVENTED
        return EVENT_REJECTED
    if kind is EntryKind.GATEWAY_EVENT:
        if message.WhichOneof("event") == "rules_loaded":
            return EVENT_RULES_LOADED
        reported = message.execution_reported
        return _EXECUTION_STATUS_EVENTS.get(reported.status) or _EXECUTION_EVENTS.get(
            reported.execution.execution_type, "execution_reported"
        )
    verb = _APPROVAL_VERBS.get(message.type)
    if verb is not None:
        return f"{_APPROVAL_SUBJECTS.get(message.approval.kind, 'request')}_{verb}"
    return _HALT_EVENTS.get(message.type, "halt_event")


class DecodedEntry:
    """One entry, decoded: its bytes, its kind and its message."""

    __slots__ = ("entry", "kind", "message")

    def __init__(self, entry: bytes, kind: EntryKind, message: Message) -> None:
        self.entry = entry
        self.kind = kind
        self.message = message

    @property
    def payload(self) -> bytes:
        return self.entry[ENTRY_HEADER_SIZE_BYTES:]

    @property
    def event_ns(self) -> int:
        return event_time_ns(self.kind, self.message)

    @property
    def event(self) -> str:
        return lifecycle_event(self.kind, self.message)


def decode_entry(entry: bytes) -> DecodedEntry:
    """Decode a canonical entry; raises :class:`EntryFormatError` for anything else."""
    kind = _decode_kind(entry)
    return DecodedEntry(entry, kind, decode_payload(kind, entry[ENTRY_HEADER_SIZE_BYTES:]))


_PAYLOAD_FIELDS = {EntryKind.DECISION: "decision", EntryKind.GATEWAY_EVENT: "gateway_event", EntryKind.HALT_EVENT: "halt_event"}


def to_proto(index: int, decoded: DecodedEntry, leaf_hash: bytes) -> ledger_pb2.LedgerEntry:
    """The entry as the ``pretrade.v1.LedgerEntry`` of the LedgerService and the CLI."""
    message = ledger_pb2.LedgerEntry(
        index=index,
        kind=int(decoded.kind),
        entry=decoded.entry,
        leaf_hash=leaf_hash,
        event=decoded.event,
        event_ns=decoded.event_ns,
    )
    getattr(message, _PAYLOAD_FIELDS[decoded.kind]).CopyFrom(decoded.message)
    return message
