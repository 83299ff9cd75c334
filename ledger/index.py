"""Lookup indexes, the de-duplication table and the ingest positions, beside the ledger.

They live in auxiliary sub-databases of the ledger's own LMDB environment
(``ledger.store``, "Auxiliary databases") and are written by :meth:`LedgerIndexes.writer`
inside the same write transaction as the entries they describe: an index never names an
uncommitted entry, a committed entry is never missing from its indexes, and the ingest
position never runs ahead of (or behind) what is committed. Numbers in keys are big-endian,
so byte order is numeric order and a prefix scan returns entries in ledger order::

    dedup      identity (ledger.entries.identity_key)                  -> u64 entry index
    by_order   u16 len, account, u16 len, client_order_id, u64 index   -> b""
    by_trace   u16 len, trace_id, u64 index                            -> b""
    by_time    u64 event_ns, u64 index                                 -> b""
    by_rules   u16 len, rules_version, u64 index                       -> b""  (RulesLoaded)
    by_scope   u8 scope, u16 len, name, u64 index                      -> b""  (halt events)
    positions  source name                                             -> u64 stream sequence

The Merkle tree does not cover these tables: they are derived from the entries (the
positions from the stream) and could be rebuilt from them; they are lookups, not evidence.
A readonly reader opened before the writer first created them sees them as empty.
"""

from __future__ import annotations

import struct
from bisect import bisect_left
from collections.abc import Callable, Iterable, Sequence
from itertools import repeat

import lmdb

from google.protobuf.message import DecodeError

from ledger.entries import EntryKind, decode_payload, encode_entry, event_time_ns, identity_key
from ledger.errors import EntryFormatError
from ledger.store import LedgerStore
from pretrade.v1 import halts_pb2, trading_pb2, types_pb2

DEDUP_DB = b"dedup"
BY_ORDER_DB = b"by_order"
BY_TRACE_DB = b"by_trace"
BY_TIME_DB = b"by_time"
BY_RULES_DB = b"by_rules"
BY_SCOPE_DB = b"by_scope"
POSITIONS_DB = b"positions"
INDEX_DATABASES = (DEDUP_DB, BY_ORDER_DB, BY_TRACE_DB, BY_TIME_DB, BY_RULES_DB, BY_SCOPE_DB, POSITIONS_DB)

_UINT64 = struct.Struct(">Q")
_pack = _UINT64.pack
_LENGTH = struct.Struct(">H")
_INDEX_SIZE_BYTES = _UINT64.size
_MAX_NAME_BYTES = 0xFFFF

# Halt events that change or describe what is in force for a scope.
_OVERRIDE_EVENT_TYPES = frozenset(
    (halts_pb2.HALT_EVENT_TYPE_OVERRIDE_ACTIVATED, halts_pb2.HALT_EVENT_TYPE_OVERRIDE_EXPIRED)
)


def _name(text: str) -> bytes:
    """``u16 length || UTF-8``: an unambiguous key component (names may contain anything)."""
    encoded = text.encode("utf-8")[:_MAX_NAME_BYTES]
    return _LENGTH.pack(len(encoded)) + encoded


def order_prefix(account: str, client_order_id: str) -> bytes:
    return _name(account) + _name(client_order_id)


def trace_prefix(trace_id: str) -> bytes:
    return _name(trace_id)


def rules_prefix(rules_version: str) -> bytes:
    return _name(rules_version)


def scope_prefix(scope: int, name: str) -> bytes:
    """``scope`` is a ``pretrade.v1.Scope`` number; FIRM has the empty name."""
    return bytes((scope,)) + _name(name)


def halt_event_scopes(event: halts_pb2.HaltEvent) -> set[tuple[int, str]]:
    """The (scope, name) pairs a halt event is filed under: its own scope, and for
    override events the override's account and strategy."""
    scopes = set()
    if event.scope != trading_pb2.SCOPE_UNSPECIFIED:
        scopes.add((event.scope, event.name))
    if event.type in _OVERRIDE_EVENT_TYPES:
        if event.override.account:
            scopes.add((trading_pb2.SCOPE_ACCOUNT, event.override.account))
        if event.override.strategy:
            scopes.add((trading_pb2.SCOPE_STRATEGY, event.override.strategy))
    return scopes


def _decision_prefixes(decision) -> list[tuple[bytes, bytes]]:
    order = decision.order
    prefixes = [(BY_ORDER_DB, order_prefix(order.account, order.client_order_id))]
    if order.trace_id:
        prefixes.append((BY_TRACE_DB, trace_prefix(order.trace_id)))
    return prefixes


def _gateway_event_prefixes(event) -> list[tuple[bytes, bytes]]:
    if event.WhichOneof("event") == "rules_loaded":
        return [(BY_RULES_DB, rules_prefix(event.rules_loaded.rules_version))]
    execution = event.execution_reported.execution
    return [(BY_ORDER_DB, order_prefix(execution.account, execution.client_order_id))]


def _halt_event_prefixes(event) -> list[tuple[bytes, bytes]]:
    return [(BY_SCOPE_DB, scope_prefix(scope, name)) for scope, name in sorted(halt_event_scopes(event))]


_PREFIXES_OF = {
    EntryKind.DECISION: _decision_prefixes,
    EntryKind.GATEWAY_EVENT: _gateway_event_prefixes,
    EntryKind.HALT_EVENT: _halt_event_prefixes,
}


class IndexedEntry:
    """One entry on its way into the ledger, with everything its commit writes: the
    canonical bytes, the identity, the event time and its index key prefixes
    (``(database, prefix)``; the entry index completes each key). Every entry is also in
    ``by_time``."""

    __slots__ = ("entry", "identity", "event_ns", "index_prefixes")

    def __init__(self, entry: bytes, identity: bytes, event_ns: int, index_prefixes: list[tuple[bytes, bytes]]) -> None:
        self.entry = entry
        self.identity = identity
        self.event_ns = event_ns
        self.index_prefixes = index_prefixes


def indexed_entry(kind: EntryKind, payload: bytes) -> IndexedEntry:
    """The entry of a published message and its keys; raises ``EntryFormatError`` when
    ``payload`` is not a valid message of ``kind``. (Ingest uses :func:`index_payloads`.)"""
    message = decode_payload(kind, payload)
    return IndexedEntry(
        encode_entry(kind, payload), identity_key(kind, message), event_time_ns(kind, message), _PREFIXES_OF[kind](message)
    )


class IndexedBatch:
    """Entries on their way into the ledger, as columns (one Python object per entry
    less, and the commit's loops become comprehensions): what :class:`IndexedEntry` holds,
    for many entries. ``time_keys`` are the ``by_time`` key prefixes (u64 event time,
    negative times as 0); ``order_prefixes`` the ``by_order`` prefixes (None for an entry
    that is not about an order); any other index key goes to ``other_prefixes`` as
    ``(position, database, prefix)``, since few entries have one."""

    __slots__ = ("entries", "identities", "time_keys", "order_prefixes", "other_prefixes")

    def __init__(self) -> None:
        self.entries: list[bytes] = []
        self.identities: list[bytes] = []
        self.time_keys: list[bytes] = []
        self.order_prefixes: list[bytes | None] = []
        self.other_prefixes: list[tuple[int, bytes, bytes]] = []

    def __len__(self) -> int:
        return len(self.entries)

    def add(self, indexed: IndexedEntry) -> None:
        position = len(self.entries)
        self.entries.append(indexed.entry)
        self.identities.append(indexed.identity)
        self.time_keys.append(_pack(max(indexed.event_ns, 0)))
        order_prefix = None
        for database, prefix in indexed.index_prefixes:
            if database == BY_ORDER_DB and order_prefix is None:
                order_prefix = prefix
            else:
                self.other_prefixes.append((position, database, prefix))
        self.order_prefixes.append(order_prefix)

    def entry(self, position: int) -> IndexedEntry:
        """The entry at ``position`` (0-based, in this batch) as an :class:`IndexedEntry`."""
        order_prefix = self.order_prefixes[position]
        prefixes = [(BY_ORDER_DB, order_prefix)] if order_prefix is not None else []
        prefixes += [(database, prefix) for at, database, prefix in self.other_prefixes if at == position]
        event_ns = _UINT64.unpack(self.time_keys[position])[0]
        return IndexedEntry(self.entries[position], self.identities[position], event_ns, prefixes)

    def select(self, positions: Sequence[int]) -> IndexedBatch:
        """The entries at ``positions`` (increasing), as a new batch."""
        selected = IndexedBatch()
        selected.entries = [self.entries[position] for position in positions]
        selected.identities = [self.identities[position] for position in positions]
        selected.time_keys = [self.time_keys[position] for position in positions]
        selected.order_prefixes = [self.order_prefixes[position] for position in positions]
        renumbered = {position: new for new, position in enumerate(positions)}
        selected.other_prefixes = [
            (renumbered[position], database, prefix)
            for position, database, prefix in self.other_prefixes
            if position in renumbered
        ]
        return selected


def index_payloads(
    kind: EntryKind,
    payloads: Iterable[bytes],
    on_malformed: Callable[[EntryFormatError], object],
    into: IndexedBatch | None = None,
) -> IndexedBatch:
    """Append :func:`indexed_entry` of each payload to ``into`` (default: a new batch), in
    order, and return it; a payload that is not a valid message of ``kind`` is left out
    and its error passed to ``on_malformed``. The ingest hot path: decisions, the bulk of
    any ledger, take a loop of their own that derives the same keys with less interpreter
    work (``tests/ledger/test_entries.py`` compares the two)."""
    batch = IndexedBatch() if into is None else into
    if kind is EntryKind.DECISION:
        _index_decisions(payloads, on_malformed, batch)
        return batch
    for payload in payloads:
        try:
            indexed = indexed_entry(kind, payload)
        except EntryFormatError as exc:
            on_malformed(exc)
            continue
        batch.add(indexed)
    return batch


_DECISION_HEADER = encode_entry(EntryKind.DECISION, b"")
_decode_decision = types_pb2.Decision.FromString


def _index_decisions(
    payloads: Iterable[bytes], on_malformed: Callable[[EntryFormatError], object], batch: IndexedBatch
) -> None:
    add_entry = batch.entries.append
    add_identity = batch.identities.append
    add_time_key = batch.time_keys.append
    add_order_prefix = batch.order_prefixes.append
    entries = batch.entries
    identity_prefixes: dict[str, bytes] = {}  # gateway id -> identity key up to the sequence
    account_names: dict[str, bytes] = {}  # account -> _name(account)
    pack_length = _LENGTH.pack
    for payload in payloads:
        try:
            message = _decode_decision(payload)
        except DecodeError as exc:
            on_malformed(EntryFormatError(f"DECISION payload does not decode: {exc}"))
            continue
        gateway_id = message.gateway_id
        sequence = message.sequence
        if not gateway_id or not sequence:
            on_malformed(EntryFormatError("DECISION payload lacks its gateway_id or sequence"))
            continue
        identity_prefix = identity_prefixes.get(gateway_id)
        if identity_prefix is None:
            identity_prefix = identity_key(EntryKind.DECISION, message)[: -_SEQUENCE_SIZE_BYTES]
            identity_prefixes[gateway_id] = identity_prefix
        decided_ns = message.decided_ns
        order = message.order
        account = order.account
        account_name = account_names.get(account)
        if account_name is None:
            account_name = account_names[account] = _name(account)
        client_order_id = order.client_order_id.encode("utf-8")
        if len(client_order_id) > _MAX_NAME_BYTES:
            client_order_id = client_order_id[:_MAX_NAME_BYTES]
        trace_id = order.trace_id
        if trace_id:
            batch.other_prefixes.append((len(entries), BY_TRACE_DB, _name(trace_id)))
        add_entry(_DECISION_HEADER + payload)
        add_identity(identity_prefix + _pack(sequence))
        add_time_key(_pack(decided_ns) if decided_ns > 0 else _ZERO_TIME_KEY)
        add_order_prefix(account_name + pack_length(len(client_order_id)) + client_order_id)


_ZERO_TIME_KEY = _pack(0)
_SEQUENCE_SIZE_BYTES = 8  # the u64 sequence that ends a gateway identity (ledger.entries.identity_key)


def _put_sorted(
    txn: lmdb.Transaction, database, keys: list[bytes], values: Iterable[bytes] | None = None
) -> None:
    """Put ``keys`` (unique; ``values`` parallel to them, or every value empty) in key
    order, so that each B-tree page is touched once; when they all sort after the
    database's last key, as ledger-ordered keys usually do, append them without searching
    the tree."""
    if values is None:
        keys.sort()
        first_key = keys[0]
        items = zip(keys, repeat(b""))
    else:
        items = sorted(zip(keys, values))
        first_key = items[0][0]
    cursor = txn.cursor(database)
    append = not cursor.last() or cursor.key() < first_key
    added = cursor.putmulti(items, append=append)[1]
    if added != len(keys):
        raise lmdb.Error(f"{added} of {len(keys)} index keys written: the index already holds some of them")


class LedgerIndexes:
    """The indexes of one open :class:`LedgerStore` (writable: created if missing)."""

    def __init__(self, store: LedgerStore) -> None:
        self.store = store
        self._databases = {name: store.auxiliary_database(name) for name in INDEX_DATABASES}

    # --- writing (the ingest worker's commit) ---------------------------------------------

    def writer(self, batch: IndexedBatch, positions: dict[str, int]) -> Callable[[lmdb.Transaction, int], None]:
        """The ``also_write`` hook of ``store.append_batch`` for ``batch`` (in append
        order): file its entries in every index and record the new ingest ``positions``."""

        def write(txn: lmdb.Transaction, first_index: int) -> None:
            databases = self._databases
            packed = list(map(_pack, range(first_index, first_index + len(batch))))
            if packed:
                _put_sorted(txn, databases[DEDUP_DB], batch.identities, packed)
            keyed: dict[bytes, list[bytes]] = {
                BY_TIME_DB: [time_key + index for time_key, index in zip(batch.time_keys, packed)],
                BY_ORDER_DB: [
                    prefix + index for prefix, index in zip(batch.order_prefixes, packed) if prefix is not None
                ],
            }
            for position, database, prefix in batch.other_prefixes:
                keyed.setdefault(database, []).append(prefix + packed[position])
            for name, keys in keyed.items():
                if keys:
                    _put_sorted(txn, databases[name], keys)
            if positions:
                txn.cursor(databases[POSITIONS_DB]).putmulti(
                    sorted((source.encode("utf-8"), _pack(position)) for source, position in positions.items())
                )

        return write

    # --- reading -----------------------------------------------------------------------------

    def _database(self, txn: lmdb.Transaction, name: bytes):
        database = self._databases.get(name)
        if database is None:  # a reader opened before the writer created the indexes
            database = self.store.auxiliary_database(name)
            if database is None:
                return None
            self._databases[name] = database
        return database

    def find_identities(self, txn: lmdb.Transaction, identities: Iterable[bytes]) -> dict[bytes, int]:
        """Identity -> entry index for the identities already in the ledger.

        A merge of the sorted identities with a cursor over ``dedup``: one seek per run of
        identities that are absent together, so a batch of new entries whose identities
        sort after everything stored (a gateway's sequences only grow) costs one seek."""
        database = self._database(txn, DEDUP_DB)
        if database is None:
            return {}
        wanted = sorted(identities)
        found = {}
        cursor = txn.cursor(database)
        position = 0
        count = len(wanted)
        while position < count:
            identity = wanted[position]
            if not cursor.set_range(identity):
                break  # everything left sorts after the last stored identity
            key = cursor.key()
            if key == identity:
                found[identity] = _UINT64.unpack(cursor.value())[0]
                position += 1
            else:  # every wanted identity below the next stored one is absent
                position = bisect_left(wanted, key, position + 1)
        return found

    def positions(self) -> dict[str, int]:
        """Source name -> last stream sequence committed (the ingest resume points)."""
        with self.store.read_transaction() as txn:
            database = self._database(txn, POSITIONS_DB)
            if database is None:
                return {}
            return {key.decode("utf-8"): _UINT64.unpack(value)[0] for key, value in txn.cursor(database)}

    def _scan_prefix(self, name: bytes, prefix: bytes) -> list[int]:
        with self.store.read_transaction() as txn:
            database = self._database(txn, name)
            if database is None:
                return []
            cursor = txn.cursor(database)
            indices = []
            if cursor.set_range(prefix):
                for key in cursor.iternext(keys=True, values=False):
                    if not key.startswith(prefix) or len(key) != len(prefix) + _INDEX_SIZE_BYTES:
                        break
                    indices.append(_UINT64.unpack_from(key, len(prefix))[0])
            return indices

    def order_entries(self, account: str, client_order_id: str) -> list[int]:
        """Indices of the decisions and execution reports of one order, in ledger order."""
        return self._scan_prefix(BY_ORDER_DB, order_prefix(account, client_order_id))

    def trace_entries(self, trace_id: str) -> list[int]:
        """Indices of the decisions whose order carried ``trace_id``."""
        return self._scan_prefix(BY_TRACE_DB, trace_prefix(trace_id))

    def rules_entries(self, rules_version: str) -> list[int]:
        """Indices of the RulesLoaded events of ``rules_version``."""
        return self._scan_prefix(BY_RULES_DB, rules_prefix(rules_version))

    def scope_entries(self, scope: int, name: str) -> list[int]:
        """Indices of the halt events filed under (scope, name)."""
        return self._scan_prefix(BY_SCOPE_DB, scope_prefix(scope, name))

    def time_entries(self, start_ns: int, end_ns: int) -> list[int]:
        """Indices of the entries with ``start_ns <= event time < end_ns``, by event time."""
        with self.store.read_transaction() as txn:
            database = self._database(txn, BY_TIME_DB)
            if database is None:
                return []
            cursor = txn.cursor(database)
            indices = []
            end_key = _pack(max(end_ns, 0))
            if cursor.set_range(_pack(max(start_ns, 0))):
                for key in cursor.iternext(keys=True, values=False):
                    if key[:_INDEX_SIZE_BYTES] >= end_key:
                        break
                    indices.append(_UINT64.unpack_from(key, _INDEX_SIZE_BYTES)[0])
            return indices
