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
from ledger.index import IndexedBatch, index_payloads, indexed_entry
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


@given(
    st.lists(
        st.tuples(
            st.integers(0, 2**64 - 1),  # sequence (0: no identity, malformed)
            st.sampled_from(["gw1", "gw-2", "ゲート"]),
            st.text(max_size=12),  # account
            st.one_of(st.text(max_size=12), st.just("x" * 70_000)),  # client order id (beyond u16)
            st.text(max_size=8),  # trace id
            st.integers(-(2**63), 2**63 - 1),  # decided_ns (negative: clamped in by_time)
        ),
        max_size=12,
    ),
    st.lists(st.integers(0, 12), max_size=3),
)
def test_the_decision_fast_path_derives_what_indexed_entry_derives(rows, garbage_at):
    """index_payloads' own loop for decisions must produce exactly the keys of the generic
    indexed_entry, malformed payloads included (left out, reported in order)."""
    payloads = []
    for sequence, gateway_id, account, client_order_id, trace_id, decided_ns in rows:
        message = decision(max(sequence, 1), gateway_id=gateway_id, account=account, client_order_id=client_order_id or "c",
                           trace_id=trace_id)
        message.sequence = sequence
        message.decided_ns = decided_ns
        message.order.client_order_id = client_order_id
        payloads.append(message.SerializeToString())
    for at in garbage_at:
        payloads.insert(min(at, len(payloads)), b"\xff\xff\xff")
    expected = IndexedBatch()
    expected_errors = []
    for payload in payloads:
        try:
            expected.add(indexed_entry(EntryKind.DECISION, payload))
        except EntryFormatError as exc:
            expected_errors.append(str(exc))
    errors = []
    fast = index_payloads(EntryKind.DECISION, payloads, lambda exc: errors.append(str(exc)))
    assert errors == expected_errors
    for column in IndexedBatch.__slots__:
        assert getattr(fast, column) == getattr(expected, column), column
    for position in range(len(fast)):
        single = indexed_entry(EntryKind.DECISION, fast.entries[position][2:])
        again = fast.entry(position)
        assert (again.entry, again.identity, max(single.event_ns, 0)) == (single.entry, single.identity, again.event_ns)
        assert again.index_prefixes == single.index_prefixes


def test_a_batch_keeps_the_selected_entries_and_their_index_keys():
    batch = index_payloads(EntryKind.DECISION, [decision(n, trace_id=f"t{n}" if n % 2 else "").SerializeToString()
                                                for n in range(1, 6)], pytest.fail)
    index_payloads(EntryKind.HALT_EVENT, [halt_event("h1", at_ns=7).SerializeToString()], pytest.fail, into=batch)
    selected = batch.select([0, 3, 5])
    assert [decode_entry(entry).kind for entry in selected.entries] == [EntryKind.DECISION] * 2 + [EntryKind.HALT_EVENT]
    assert [selected.entry(position).index_prefixes for position in range(3)] == [
        batch.entry(position).index_prefixes for position in (0, 3, 5)
    ]
