"""LedgerWriter, the synchronous half of ingest, on a real LMDB ledger: exactly-once by
identity, indexes and positions committed atomically with the entries, checkpoint policy,
one writer per ledger."""

from __future__ import annotations

import pytest

from ledger.entries import EntryKind, decode_entry, encode_entry
from ledger.errors import LedgerLockedError
from ledger.ingest import DECISIONS_SOURCE, GATEWAY_EVENTS_SOURCE, HALT_EVENTS_SOURCE, LedgerWriter, ReceivedBatch
from pretrade.v1 import trading_pb2
from tests.ledger.ingest_harness import BASE_NS, decision, execution_event, halt_event, rules_event


class ManualClock:
    def __init__(self) -> None:
        self.now_ms = 1_000_000

    def __call__(self) -> int:
        return self.now_ms


def decisions_batch(sequences, last_stream_sequence=None, **options) -> ReceivedBatch:
    payloads = [decision(sequence, **options).SerializeToString() for sequence in sequences]
    return ReceivedBatch(DECISIONS_SOURCE, last_stream_sequence or max(sequences), payloads)


@pytest.fixture
def writer(tmp_path):
    ledger_writer = LedgerWriter.open(tmp_path / "ledger", checkpoint_every_entries=1_000_000, checkpoint_interval_ms=60_000)
    yield ledger_writer
    ledger_writer.close()


def test_commit_appends_the_published_bytes_as_canonical_entries(writer):
    result = writer.commit([decisions_batch(range(1, 6))])
    assert (result.first_index, result.appended, result.duplicates) == (0, 5, 0)
    assert [writer.store.entry(index) for index in range(5)] == [
        encode_entry(EntryKind.DECISION, decision(sequence).SerializeToString()) for sequence in range(1, 6)
    ]


def test_duplicates_within_a_commit_and_across_commits_are_stored_once(writer):
    writer.commit([decisions_batch([1, 2, 3])])
    result = writer.commit([decisions_batch([2, 3, 4, 4, 5])])
    assert (result.appended, result.duplicates, result.conflicts) == (2, 3, 0)
    assert [decode_entry(writer.store.entry(index)).message.sequence for index in range(5)] == [1, 2, 3, 4, 5]
    assert writer.counters.duplicates_dropped == 3


def test_same_identity_with_different_bytes_is_a_conflict_and_kept_out(writer, caplog):
    writer.commit([decisions_batch([1])])
    result = writer.commit([decisions_batch([1], account="OTHER")])
    assert (result.appended, result.duplicates, result.conflicts) == (0, 0, 1)
    assert writer.counters.identity_conflicts == 1
    assert "different bytes" in caplog.text


def test_malformed_payloads_are_skipped_and_counted(writer):
    batch = ReceivedBatch(DECISIONS_SOURCE, 3, [b"\xff\xfe", decision(1).SerializeToString(), b""])
    result = writer.commit([batch])
    assert (result.appended, result.malformed) == (1, 2)
    assert writer.position(DECISIONS_SOURCE.name) == 3


def test_positions_survive_a_reopen(tmp_path):
    path = tmp_path / "ledger"
    writer = LedgerWriter.open(path)
    writer.commit([decisions_batch([1, 2], last_stream_sequence=7)])
    writer.close()
    reopened = LedgerWriter.open(path)
    try:
        assert reopened.position(DECISIONS_SOURCE.name) == 7
        assert reopened.position(HALT_EVENTS_SOURCE.name) == 0
    finally:
        reopened.close()


def test_a_failing_index_write_rolls_back_the_entries_too(writer, monkeypatch):
    writer.commit([decisions_batch([1])])

    def failing_writer(entries, positions):
        def write(txn, first_index):
            raise RuntimeError("disk on fire")

        return write

    monkeypatch.setattr(writer.indexes, "writer", failing_writer)
    with pytest.raises(RuntimeError):
        writer.commit([decisions_batch([2, 3], last_stream_sequence=9)])
    monkeypatch.undo()
    assert writer.store.size() == 1
    assert writer.store.verify().tree_size == 1
    assert writer.indexes.positions() == {DECISIONS_SOURCE.name: 1}  # what a restart reads back
    assert writer.commit([decisions_batch([2, 3])]).appended == 2


def test_indexes_find_orders_traces_times_rules_and_scopes(writer):
    writer.commit(
        [
            ReceivedBatch(GATEWAY_EVENTS_SOURCE, 1, [rules_event(1, version="v1").SerializeToString()]),
            decisions_batch([1], client_order_id="A", trace_id="t-9"),
            decisions_batch([2], client_order_id="B"),
            ReceivedBatch(HALT_EVENTS_SOURCE, 1, [halt_event("h1", at_ns=BASE_NS).SerializeToString()]),
        ]
    )
    writer.commit(
        [ReceivedBatch(GATEWAY_EVENTS_SOURCE, 2, [execution_event(2, client_order_id="A", decision_sequence=1).SerializeToString()])]
    )
    indexes = writer.indexes
    assert indexes.order_entries("ACC1", "A") == [1, 4]
    assert indexes.order_entries("ACC1", "B") == [2]
    assert indexes.order_entries("ACC1", "missing") == []
    assert indexes.order_entries("ACC", "1A") == []  # length-prefixed: no accidental prefix match
    assert indexes.trace_entries("t-9") == [1]
    assert indexes.rules_entries("v1") == [0]
    assert indexes.scope_entries(trading_pb2.SCOPE_SYMBOL, "AAPL") == [3]
    decided_1 = decision(1).decided_ns
    assert indexes.time_entries(decided_1, decided_1 + 1) == [1]
    assert sorted(indexes.time_entries(0, 2**63)) == [0, 1, 2, 3, 4]


def test_known_identities_are_found_among_many_gateways_and_gaps(writer):
    """The de-duplication lookup merges sorted identities with the table: identities of
    several gateways, interleaved, below, between and above what is stored."""
    for gateway_id in ("gw-a", "gw-c"):
        writer.commit([decisions_batch([2, 4, 6], gateway_id=gateway_id)])
    batch = [
        decision(sequence, gateway_id=gateway_id).SerializeToString()
        for gateway_id in ("gw-c", "gw-b", "gw-a", "gw-d")
        for sequence in range(1, 9)
    ]
    result = writer.commit([ReceivedBatch(DECISIONS_SOURCE, 99, batch)])
    assert (result.appended, result.duplicates, result.conflicts) == (32 - 6, 6, 0)
    stored = [decode_entry(writer.store.entry(index)).message for index in range(writer.store.size())]
    assert sorted((message.gateway_id, message.sequence) for message in stored) == sorted(
        (gateway_id, sequence) for gateway_id in ("gw-a", "gw-b", "gw-c", "gw-d") for sequence in range(1, 9)
    )


def test_entries_left_out_of_a_commit_take_their_index_keys_with_them(writer):
    """Duplicates and conflicts dropped from the middle of a commit: every remaining entry
    is filed under its own order, trace and time keys."""
    writer.commit([decisions_batch([2], client_order_id="two", trace_id="t-2")])
    batch = [
        decision(1, client_order_id="one", trace_id="t-1").SerializeToString(),
        decision(2, client_order_id="two", trace_id="t-2").SerializeToString(),  # in the ledger
        decision(3, client_order_id="three", trace_id="t-3").SerializeToString(),
        decision(3, client_order_id="three", trace_id="t-3").SerializeToString(),  # repeated
        decision(4, client_order_id="four", trace_id="t-4").SerializeToString(),
        decision(4, client_order_id="other", trace_id="t-x").SerializeToString(),  # conflict
        decision(5, client_order_id="five").SerializeToString(),
    ]
    result = writer.commit([ReceivedBatch(DECISIONS_SOURCE, 7, batch)])
    assert (result.appended, result.duplicates, result.conflicts) == (4, 2, 1)
    indexes = writer.indexes
    for index, (sequence, client_order_id) in enumerate([(2, "two"), (1, "one"), (3, "three"), (4, "four"), (5, "five")]):
        assert decode_entry(writer.store.entry(index)).message.sequence == sequence
        assert indexes.order_entries("ACC1", client_order_id) == [index]
        decided_ns = decision(sequence).decided_ns
        assert indexes.time_entries(decided_ns, decided_ns + 1) == [index]
    assert [indexes.trace_entries(f"t-{n}") for n in range(1, 5)] == [[1], [0], [2], [3]]
    assert indexes.order_entries("ACC1", "other") == indexes.trace_entries("t-x") == []


def test_checkpoints_every_n_entries(tmp_path):
    writer = LedgerWriter.open(tmp_path / "ledger", checkpoint_every_entries=3, checkpoint_interval_ms=60_000)
    try:
        writer.commit([decisions_batch([1, 2])])
        assert writer.checkpoint_if_due() is None
        writer.commit([decisions_batch([3])])
        assert writer.checkpoint_if_due().checkpoint.tree_size == 3
        assert writer.checkpoint_if_due() is None  # nothing new
    finally:
        writer.close()


def test_checkpoints_after_the_interval_and_on_demand(tmp_path):
    clock = ManualClock()
    writer = LedgerWriter.open(tmp_path / "ledger", checkpoint_every_entries=1000, checkpoint_interval_ms=500, clock_ms=clock)
    try:
        assert writer.checkpoint_due_in_ms() is None
        writer.commit([decisions_batch([1])])
        assert writer.checkpoint_due_in_ms() == 500
        clock.now_ms += 499
        assert writer.checkpoint_if_due() is None
        clock.now_ms += 1
        checkpoint = writer.checkpoint_if_due()
        assert (checkpoint.checkpoint.tree_size, checkpoint.checkpoint.timestamp_ms) == (1, clock.now_ms)
        writer.commit([decisions_batch([2])])
        assert writer.checkpoint_if_due(now=True).checkpoint.tree_size == 2
    finally:
        writer.close()


def test_one_writer_per_ledger(writer):
    with pytest.raises(LedgerLockedError):
        LedgerWriter.open(writer.store._env.path())
