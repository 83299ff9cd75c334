"""The canonical entry encoding: round trips, determinism, leaf hashes anyone can recompute,
refusal of anything else, identities and lifecycle names."""

from __future__ import annotations

import hashlib

import pytest
from blake3 import blake3
from hypothesis import given
from hypothesis import strategies as st

from ledger.entries import (
    ENTRY_FORMAT_VERSION,
    EntryKind,
    decode_entry,
    encode_entry,
    identity_key,
    lifecycle_event,
)
from ledger.errors import EntryFormatError
from ledger.index import indexed_entry
from ledger.merkle import hasher_for
from pretrade.v1 import halts_pb2, ledger_pb2, types_pb2
from tests.ledger.ingest_harness import decision, execution_event, halt_event, rules_event

names = st.text(min_size=1, max_size=20)


@given(
    sequence=st.integers(1, 2**64 - 1),
    gateway_id=names,
    account=names,
    client_order_id=names,
    trace_id=st.text(max_size=20),
    rejected=st.booleans(),
)
def test_decision_entries_round_trip_and_are_deterministic(sequence, gateway_id, account, client_order_id, trace_id, rejected):
    published = decision(
        sequence, gateway_id=gateway_id, account=account, client_order_id=client_order_id, trace_id=trace_id,
        rejected_with="MAX_ORDER_QTY_EXCEEDED" if rejected else None,
    ).SerializeToString()
    entry = encode_entry(EntryKind.DECISION, published)
    assert entry == bytes((ENTRY_FORMAT_VERSION, EntryKind.DECISION)) + published
    assert encode_entry(EntryKind.DECISION, published) == entry
    decoded = decode_entry(entry)
    assert decoded.kind is EntryKind.DECISION
    assert decoded.payload == published
    assert decoded.message == types_pb2.Decision.FromString(published)
    assert decoded.event == ("rejected" if rejected else "accepted")
    assert indexed_entry(EntryKind.DECISION, published).entry == entry


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        (EntryKind.GATEWAY_EVENT, execution_event(3, client_order_id="cl-1", decision_sequence=1)),
        (EntryKind.GATEWAY_EVENT, rules_event(1)),
        (EntryKind.HALT_EVENT, halt_event("evt-1", at_ns=5)),
    ],
)
def test_event_entries_round_trip(kind, message):
    published = message.SerializeToString()
    decoded = decode_entry(encode_entry(kind, published))
    assert (decoded.kind, decoded.payload, decoded.message) == (kind, published, message)


@pytest.mark.parametrize("hash_name", ["sha256", "blake3"])
def test_anyone_can_recompute_the_leaf_hash_from_the_published_bytes(hash_name):
    published = decision(42).SerializeToString()
    new = {"sha256": hashlib.sha256, "blake3": blake3}[hash_name]
    by_hand = new(b"\x00" + b"\x01" + b"\x01" + published).digest()
    assert hasher_for(hash_name).hash_leaf(encode_entry(EntryKind.DECISION, published)) == by_hand


@pytest.mark.parametrize(
    ("entry", "reason"),
    [
        (b"", "shorter"),
        (b"\x01", "shorter"),
        (b"\x02\x01" + decision(1).SerializeToString(), "version"),
        (b"\x01\x09" + decision(1).SerializeToString(), "kind"),
        (b"\x01\x01" + b"\xff\xff\xff", "decode"),
        (b"\x01\x01" + types_pb2.Decision(sequence=1).SerializeToString(), "gateway_id"),
        (b"\x01\x01" + types_pb2.Decision(gateway_id="gw").SerializeToString(), "gateway_id"),
        (b"\x01\x02" + ledger_pb2.GatewayEvent(gateway_id="gw", sequence=1).SerializeToString(), "no event"),
        (b"\x01\x03" + halts_pb2.HaltEvent(at_ns=1).SerializeToString(), "event_id"),
    ],
)
def test_anything_but_a_canonical_entry_is_refused(entry, reason):
    with pytest.raises(EntryFormatError, match=reason):
        decode_entry(entry)


def test_identities_are_unambiguous_across_kinds_gateways_and_sequences():
    identities = {
        identity_key(EntryKind.DECISION, decision(1, gateway_id="gw")),
        identity_key(EntryKind.DECISION, decision(1, gateway_id="gw1")),
        identity_key(EntryKind.DECISION, decision(2, gateway_id="gw")),
        identity_key(EntryKind.GATEWAY_EVENT, ledger_pb2.GatewayEvent(gateway_id="gw", sequence=1)),
        identity_key(EntryKind.HALT_EVENT, halt_event("gw", at_ns=1)),
    }
    assert len(identities) == 5


@pytest.mark.parametrize(
    ("kind", "message", "event"),
    [
        (EntryKind.DECISION, decision(1), "accepted"),
        (EntryKind.DECISION, decision(1, rejected_with="CREDIT_LIMIT_EXCEEDED"), "rejected"),
        (EntryKind.DECISION, decision(1, rejected_with="DUPLICATE_CLIENT_ORDER_ID"), "duplicate_prevented"),
        (EntryKind.GATEWAY_EVENT, execution_event(1, client_order_id="c"), "filled"),
        (EntryKind.GATEWAY_EVENT, execution_event(1, client_order_id="c", execution_type=types_pb2.EXECUTION_TYPE_PARTIAL_FILL), "partially_filled"),
        (EntryKind.GATEWAY_EVENT, execution_event(1, client_order_id="c", execution_type=types_pb2.EXECUTION_TYPE_CANCELLED), "cancelled"),
        (EntryKind.GATEWAY_EVENT, execution_event(1, client_order_id="c", execution_type=types_pb2.EXECUTION_TYPE_VENUE_REJECTED), "venue_rejected"),
        (EntryKind.GATEWAY_EVENT, execution_event(1, client_order_id="c", status=types_pb2.EXECUTION_STATUS_DUPLICATE), "execution_duplicate"),
        (EntryKind.GATEWAY_EVENT, rules_event(1), "rules_loaded"),
        (EntryKind.HALT_EVENT, halt_event("e", at_ns=1), "trading_state_changed"),
        (EntryKind.HALT_EVENT, halts_pb2.HaltEvent(event_id="e", type=halts_pb2.HALT_EVENT_TYPE_APPROVAL_REQUESTED,
                                                  approval=halts_pb2.ApprovalRequest(kind=halts_pb2.APPROVAL_KIND_OVERRIDE)),
         "override_requested"),
        (EntryKind.HALT_EVENT, halts_pb2.HaltEvent(event_id="e", type=halts_pb2.HALT_EVENT_TYPE_APPROVED,
                                                  approval=halts_pb2.ApprovalRequest(kind=halts_pb2.APPROVAL_KIND_OVERRIDE)),
         "override_approved"),
        (EntryKind.HALT_EVENT, halts_pb2.HaltEvent(event_id="e", type=halts_pb2.HALT_EVENT_TYPE_KILL), "kill_switch"),
    ],
)
def test_every_entry_names_its_lifecycle_event(kind, message, event):
    assert lifecycle_event(kind, message) == event
