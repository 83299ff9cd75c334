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
from collections.abc import Callable, Iterable, Sequence

import lmdb

from ledger.entries import EntryKind, decode_payload, encode_entry, event_time_ns, identity_key
from ledger.store import LedgerStore
from pretrade.v1 import halts_pb2, trading_pb2

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
    """An entry on its way into the ledger, with everything its commit writes: the
    canonical bytes, the identity, the event time and its index key prefixes (``(database,
    prefix)``; the entry index completes each key). Every entry is in ``by_time``."""

    __slots__ = ("entry", "identity", "event_ns", "index_prefixes")

    def __init__(self, entry: bytes, identity: bytes, event_ns: int, index_prefixes: list[tuple[bytes, bytes]]) -> None:
        self.entry = entry
        self.identity = identity
        self.event_ns = event_ns
        self.index_prefixes = index_prefixes


def indexed_entry(kind: EntryKind, payload: bytes) -> IndexedEntry:
    """The entry of a published message and its keys; raises ``EntryFormatError`` when
    ``payload`` is not a valid message of ``kind``. The ingest hot path: kept lean."""
    message = decode_payload(kind, payload)
    return IndexedEntry(
        encode_entry(kind, payload), identity_key(kind, message), event_time_ns(kind, message), _PREFIXES_OF[kind](message)
    )


class LedgerIndexes:
    """The indexes of one open :class:`LedgerStore` (writable: created if missing)."""

    def __init__(self, store: LedgerStore) -> None:
        self.store = store
        self._databases = {name: store.auxiliary_database(name) for name in INDEX_DATABASES}

    # --- writing (the ingest worker's commit) ---------------------------------------------

    def writer(self, entries: Sequence[IndexedEntry], positions: dict[str, int]) -> Callable[[lmdb.Transaction, int], None]:
        """The ``also_write`` hook of ``store.append_batch`` for ``entries`` (in append
        order): file them in every index and record the new ingest ``positions``."""

        def write(txn: lmdb.Transaction, first_index: int) -> None:
            keyed: dict[bytes, list[tuple[bytes, bytes]]] = {name: [] for name in INDEX_DATABASES}
            dedup, by_time = keyed[DEDUP_DB], keyed[BY_TIME_DB]
            for index, indexed in enumerate(entries, first_index):
                packed_index = _pack(index)
                dedup.append((indexed.identity, packed_index))
                by_time.append((_pack(max(indexed.event_ns, 0)) + packed_index, b""))
                for database, prefix in indexed.index_prefixes:
                    keyed[database].append((prefix + packed_index, b""))
            keyed[POSITIONS_DB].extend((source.encode("utf-8"), _pack(position)) for source, position in positions.items())
            for name, items in keyed.items():
                if items:
                    items.sort()  # sorted puts touch each B-tree page once
                    txn.cursor(self._databases[name]).putmulti(items)

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
        """Identity -> entry index for the identities already in the ledger."""
        database = self._database(txn, DEDUP_DB)
        if database is None:
            return {}
        found = {}
        for identity in identities:
            value = txn.get(identity, db=database)
            if value is not None:
                found[identity] = _UINT64.unpack(value)[0]
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
