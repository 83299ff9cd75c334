"""LedgerStore: an append-only RFC 6962 Merkle-tree ledger stored in LMDB.

On-disk layout: one LMDB environment (a directory holding ``data.mdb`` and ``lock.mdb``)
with four named sub-databases, every integer key a big-endian uint64 so that LMDB's byte
order is numeric order and appends go to the end of the B-tree (``append=True``)::

    meta         b"format_version" -> b"1"
                 b"hash"           -> b"blake3" | b"sha256"   fixed at creation
                 b"tree_size"      -> uint64                   entries committed so far
    entries      leaf index        -> entry bytes
    nodes        storage position  -> 32-byte hash of one perfect subtree
    checkpoints  tree size         -> checkpoint note, UTF-8 (signed when a signer is set)

``nodes`` holds every complete node of the tree -- leaf hashes and interior nodes alike --
in the order they complete while leaves are appended (post-order; the layout of Go's
``sumdb/tlog``). After ``n`` leaves exactly ``2n - popcount(n)`` nodes are stored, so the
node completed by a given append always has the next position and a batch of appends is a
single sequential run of keys. Node ``(level, index)`` completes with leaf
``last = (index + 1) * 2**level - 1``, as the ``level``-th node of that append, hence::

    position(level, index) = stored_node_count(last) + level

Any root, inclusion proof or consistency proof then needs O(log n) point reads
(``ledger.merkle`` assembles ragged ranges from perfect subtrees).

Durability. The environment is opened with ``sync=True`` and ``metasync=True``: a commit
returns only after LMDB has fsync'ed the data pages and then the meta page, so a committed
batch survives a process crash, a kernel crash and a power cut (on storage that honours
flushes). A crash mid-commit leaves the previous commit intact: LMDB is copy-on-write and
switches meta pages atomically, so there is no recovery step and no torn batch.
(``metasync=False`` would skip the second fsync and risk losing, not corrupting, the last
batch on an OS crash; ``sync=False`` would risk far more. Neither is used.) Each
:meth:`LedgerStore.append_batch` is one write transaction and so one pair of fsyncs: that
group commit is what makes durable ingest fast; callers batch accordingly.

Concurrency. One writer process per ledger; within it, appends and checkpoint writes are
serialised by a lock. The writer keeps the tree's right edge (the frontier) in memory and
detects if anything else appended (:class:`ConcurrentWriterError`). Any number of readers
-- threads of the writer, or other processes opening with ``readonly=True`` -- read
consistent snapshots concurrently with the writer (LMDB MVCC: every public read method
runs in one read transaction). A long read (``verify``) pins its snapshot, so pages freed
meanwhile cannot be reused and the file grows until it ends. A reader process that dies
leaves a stale slot in LMDB's reader table that pins pages the same way; the writer clears
such slots whenever it opens the ledger.

Auxiliary databases. Beside its own four sub-databases the environment may hold
:data:`MAX_AUXILIARY_DATABASES` more, named by the caller (the ingest worker keeps its
de-duplication table and the lookup indexes there, ``ledger.index``). They are written
through the ``also_write`` hook of :meth:`LedgerStore.append_batch`, in the same write
transaction as the entries, so an index never names an entry that is not committed and a
committed entry is never missing from an index. The Merkle tree does not cover them: they
are derived data, rebuilt from the entries if ever in doubt.

Map size. LMDB maps the file into memory up to ``map_size`` bytes, a ceiling on the
database size (address space, not RAM; the file only grows as data is written). The
default is :data:`DEFAULT_MAP_SIZE_BYTES`. When a write hits the ceiling the writer
doubles it and retries the batch. Growing needs no reader of this process mid-transaction,
so the writer waits for running reads in its own process; readers in other processes adopt
the new size automatically on their next read (LMDB signals ``MDB_MAP_RESIZED``).
"""

from __future__ import annotations

import os
import struct
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import islice, pairwise
from pathlib import Path
from typing import NoReturn, TypeVar

import lmdb

from ledger import merkle
from ledger.checkpoint import (
    Checkpoint,
    NoteSigner,
    NoteVerifier,
    checkpoint_from_note,
    sign_checkpoint,
    verify_checkpoint,
)
from ledger.errors import (
    CheckpointIntegrityError,
    ConcurrentWriterError,
    LeafHashMismatchError,
    LeafIndexOutOfRangeError,
    LedgerExistsError,
    LedgerFormatError,
    LedgerHashMismatchError,
    LedgerNotFoundError,
    LedgerReadOnlyError,
    MissingEntryError,
    MissingNodeError,
    NodeHashMismatchError,
    NoteError,
    TrailingDataError,
    TreeSizeOutOfRangeError,
)

DEFAULT_MAP_SIZE_BYTES = 64 << 30  # 64 GiB of address space; doubled whenever a write hits it
DEFAULT_VERIFY_CHUNK_ENTRIES = 1 << 16  # entries hashed per step of verify(): bounds its memory
MAX_AUXILIARY_DATABASES = 12  # named sub-databases callers may add beside the ledger's own four
FORMAT_VERSION = b"1"
LMDB_DATA_FILE = "data.mdb"

_ENTRIES_DB = b"entries"
_NODES_DB = b"nodes"
_META_DB = b"meta"
_CHECKPOINTS_DB = b"checkpoints"
_META_FORMAT_VERSION = b"format_version"
_META_HASH = b"hash"
_META_TREE_SIZE = b"tree_size"

_LEDGER_DATABASES = (_ENTRIES_DB, _NODES_DB, _META_DB, _CHECKPOINTS_DB)

_T = TypeVar("_T")
_UINT64 = struct.Struct(">Q")
_pack = _UINT64.pack


def _unpack(key: bytes) -> int:
    return _UINT64.unpack(key)[0]


def stored_node_count(tree_size: int) -> int:
    """How many nodes (leaf hashes included) a tree of ``tree_size`` leaves has stored."""
    return 2 * tree_size - tree_size.bit_count()


def stored_node_position(level: int, index: int) -> int:
    """The ``nodes`` key of perfect subtree ``(level, index)``.

    ``stored_node_count(last) + level`` with ``last = (index + 1) * 2**level - 1`` (module
    docstring); as ``popcount(last) = popcount(index) + level`` this simplifies to the form
    computed here.
    """
    return ((index + 1) << (level + 1)) - 2 - index.bit_count()


def _node_at_position(position: int) -> tuple[int, int]:
    """Inverse of :func:`stored_node_position`: ``(last leaf index covered, level)``."""
    low, high = 0, position  # find the largest leaf count n with stored_node_count(n) <= position
    while low < high:
        middle = (low + high + 1) // 2
        if stored_node_count(middle) <= position:
            low = middle
        else:
            high = middle - 1
    return low, position - stored_node_count(low)


@dataclass(frozen=True)
class StoredCheckpoint:
    """A checkpoint as kept in the ledger: parsed, plus the exact note text stored."""

    checkpoint: Checkpoint
    note: str


@dataclass(frozen=True)
class VerifyReport:
    """What a successful :meth:`LedgerStore.verify` checked."""

    tree_size: int
    root_hash: bytes
    from_index: int
    entries_verified: int
    nodes_verified: int
    checkpoints_verified: int


def _read_consecutive(cursor: lmdb.Cursor, first: int, count: int) -> tuple[list[bytes], int | None]:
    """Values stored under keys ``first .. first+count-1``, read by cursor scans.

    Returns ``(values, None)`` when exactly those keys are present, else ``(values before
    the gap, first absent key)``; a renamed or foreign key counts as a gap. Keys and values
    are scanned separately because py-lmdb yields bare values or keys about three times
    faster than ``(key, value)`` tuples. The key check is exact without comparing every key:
    LMDB keys are unique and sorted, so ``count`` 8-byte keys running from ``first`` to
    ``first + count - 1`` can only be those numbers.
    """
    if count == 0:
        return [], None
    first_key = _pack(first)
    if not cursor.set_range(first_key):
        return [], first
    keys = list(islice(cursor.iternext(keys=True, values=False), count))
    cursor.set_range(first_key)
    values = list(islice(cursor.iternext(keys=False, values=True), count))
    if (
        len(keys) == count
        and keys[0] == first_key
        and keys[-1] == _pack(first + count - 1)
        and set(map(len, keys)) == {_UINT64.size}
    ):
        return values, None
    for offset, key in enumerate(keys):
        if key != _pack(first + offset):
            return values[:offset], first + offset
    return values, first + len(keys)


class LedgerStore:
    """An append-only Merkle-tree ledger in one LMDB directory.

    Make one with :meth:`create` and reopen it with :meth:`open`; the two are separate so
    that a mistyped path can never silently start a new, empty ledger. Use as a context
    manager or call :meth:`close`.
    """

    def __init__(
        self,
        env: lmdb.Environment,
        hasher: merkle.Hasher,
        *,
        readonly: bool,
        signer: NoteSigner | None,
    ) -> None:
        self._env = env
        self._hasher = hasher
        self._readonly = readonly
        self._signer = signer
        self._entries = env.open_db(_ENTRIES_DB, create=False)
        self._nodes = env.open_db(_NODES_DB, create=False)
        self._meta = env.open_db(_META_DB, create=False)
        self._checkpoints = env.open_db(_CHECKPOINTS_DB, create=False)
        self._auxiliary: dict[bytes, lmdb._Database] = {}
        self._write_lock = threading.Lock()
        self._read_gate = threading.Condition()  # guards _active_reads; map resizes wait on it
        self._active_reads = 0
        self._frontier: list[bytes] = []
        self._tree_size = 0
        if not readonly:
            env.reader_check()  # free reader slots of crashed processes (see module docstring)
            with self._read_txn() as txn:
                self._tree_size = self._stored_tree_size(txn)
                get_subtree = self._subtree_getter(txn)
                self._frontier = [get_subtree(level, index) for level, index in merkle.frontier_subtrees(self._tree_size)]

    # --- opening ----------------------------------------------------------------------------

    @staticmethod
    def _open_env(path: Path, *, readonly: bool, map_size_bytes: int) -> lmdb.Environment:
        return lmdb.open(
            str(path),
            map_size=map_size_bytes,
            max_dbs=len(_LEDGER_DATABASES) + MAX_AUXILIARY_DATABASES,
            readonly=readonly,
            create=False,
            sync=True,
            metasync=True,
            writemap=False,  # a stray pointer write cannot reach the file
            readahead=True,  # verify() scans sequentially
        )

    @classmethod
    def create(
        cls,
        path: str | os.PathLike[str],
        *,
        hash_name: str = merkle.DEFAULT_HASH_NAME,
        map_size_bytes: int = DEFAULT_MAP_SIZE_BYTES,
        signer: NoteSigner | None = None,
    ) -> LedgerStore:
        """Create a new, empty ledger in directory ``path`` hashing with ``hash_name``.

        The hash is recorded in the ledger's metadata and fixed for its lifetime. Raises
        :class:`LedgerExistsError` if the directory already holds a ledger.
        """
        hasher = merkle.hasher_for(hash_name)
        directory = Path(path)
        if (directory / LMDB_DATA_FILE).exists():
            raise LedgerExistsError(f"{directory} already holds a ledger; use LedgerStore.open")
        directory.mkdir(parents=True, exist_ok=True)
        env = cls._open_env(directory, readonly=False, map_size_bytes=map_size_bytes)
        with env.begin(write=True) as txn:
            for name in (_ENTRIES_DB, _NODES_DB, _CHECKPOINTS_DB):
                env.open_db(name, txn=txn)
            meta = env.open_db(_META_DB, txn=txn)
            txn.put(_META_FORMAT_VERSION, FORMAT_VERSION, db=meta)
            txn.put(_META_HASH, hasher.name.encode("ascii"), db=meta)
            txn.put(_META_TREE_SIZE, _pack(0), db=meta)
        return cls(env, hasher, readonly=False, signer=signer)

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        *,
        hash_name: str | None = None,
        readonly: bool = False,
        map_size_bytes: int = DEFAULT_MAP_SIZE_BYTES,
        signer: NoteSigner | None = None,
    ) -> LedgerStore:
        """Open the existing ledger in directory ``path``.

        ``hash_name`` None accepts the ledger's hash; a name checks it and raises
        :class:`LedgerHashMismatchError` if the ledger was created with another.
        ``readonly=True`` is for reader processes beside the one writer. Raises
        :class:`LedgerNotFoundError` if there is no ledger at ``path``.
        """
        if hash_name is not None:
            merkle.hasher_for(hash_name)  # an unknown name is its own error, not a mismatch
        directory = Path(path)
        if not (directory / LMDB_DATA_FILE).exists():
            raise LedgerNotFoundError(f"no ledger in {directory}; use LedgerStore.create")
        env = cls._open_env(directory, readonly=readonly, map_size_bytes=map_size_bytes)
        try:
            with env.begin() as txn:
                meta = env.open_db(_META_DB, txn=txn, create=False)
                format_version = txn.get(_META_FORMAT_VERSION, db=meta)
                stored_hash = txn.get(_META_HASH, db=meta)
            if format_version != FORMAT_VERSION or stored_hash is None:
                raise LedgerFormatError(f"{directory}: ledger format {format_version!r}, this code reads {FORMAT_VERSION!r}")
            stored_hash_name = stored_hash.decode("ascii")
            if hash_name is not None and hash_name != stored_hash_name:
                raise LedgerHashMismatchError(f"{directory} was created with hash {stored_hash_name!r}, opened with {hash_name!r}")
            return cls(env, merkle.hasher_for(stored_hash_name), readonly=readonly, signer=signer)
        except lmdb.NotFoundError:
            env.close()
            raise LedgerFormatError(f"{directory} is an LMDB environment without ledger metadata") from None
        except BaseException:
            env.close()
            raise

    def close(self) -> None:
        """Close the environment. No method may be running or called afterwards."""
        self._env.close()

    def __enter__(self) -> LedgerStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def hasher(self) -> merkle.Hasher:
        return self._hasher

    @property
    def hash_name(self) -> str:
        return self._hasher.name

    # --- auxiliary databases -------------------------------------------------------------------

    def auxiliary_database(self, name: bytes) -> lmdb._Database | None:
        """The caller's named sub-database ``name`` in this ledger's environment.

        A writable store creates it if needed; a readonly one returns None while the writer
        has not created it yet. Write to it only through ``append_batch(also_write=...)``;
        read it in :meth:`read_transaction`. See the module docstring.
        """
        if name in _LEDGER_DATABASES:
            raise ValueError(f"{name!r} is one of the ledger's own databases")
        database = self._auxiliary.get(name)
        if database is not None:
            return database
        if self._readonly:
            try:  # py-lmdb opens it in a transaction it commits: the handle outlives it
                database = self._env.open_db(name, create=False)
            except lmdb.NotFoundError:
                return None
        else:
            with self._write_lock:
                database = self._write(lambda txn: self._env.open_db(name, txn=txn))
        self._auxiliary[name] = database
        return database

    @contextmanager
    def read_transaction(self) -> Iterator[lmdb.Transaction]:
        """One consistent snapshot of the whole environment (entries, tree size and the
        auxiliary databases alike), for readers that need several lookups to agree."""
        with self._read_txn() as txn:
            yield txn

    # --- transactions and map growth ----------------------------------------------------------

    @contextmanager
    def _read_txn(self) -> Iterator[lmdb.Transaction]:
        with self._read_gate:
            try:
                txn = self._env.begin(write=False)
            except lmdb.MapResizedError:
                # Another process grew the map past our mapping: adopt its size (needs no
                # running transaction in this process) and start again.
                self._read_gate.wait_for(lambda: self._active_reads == 0)
                self._env.set_mapsize(0)
                txn = self._env.begin(write=False)
            self._active_reads += 1
        try:
            yield txn
        finally:
            txn.abort()
            with self._read_gate:
                self._active_reads -= 1
                self._read_gate.notify_all()

    def _write(self, operation: Callable[[lmdb.Transaction], _T]) -> _T:
        """Run ``operation`` in one write transaction and commit; when the map is full, grow
        it and run the whole transaction again. Caller holds the write lock."""
        while True:
            try:
                with self._env.begin(write=True) as txn:
                    return operation(txn)
            except lmdb.MapFullError:
                self._grow_map()

    def _grow_map(self) -> None:
        """Double the map size. Caller holds the write lock, so no write is running; new
        reads are held off by the gate until the running ones finish."""
        with self._read_gate:
            self._read_gate.wait_for(lambda: self._active_reads == 0)
            self._env.set_mapsize(self._env.info()["map_size"] * 2)

    def _require_writable(self) -> None:
        if self._readonly:
            raise LedgerReadOnlyError("this ledger was opened readonly")

    def _stored_tree_size(self, txn: lmdb.Transaction) -> int:
        value = txn.get(_META_TREE_SIZE, db=self._meta)
        if value is None or len(value) != _UINT64.size:
            raise LedgerFormatError(f"ledger metadata holds no valid tree size ({value!r})")
        return _unpack(value)

    def _subtree_getter(self, txn: lmdb.Transaction) -> merkle.SubtreeHashGetter:
        nodes = self._nodes

        def subtree_hash(level: int, index: int) -> bytes:
            node_hash = txn.get(_pack(stored_node_position(level, index)), db=nodes)
            if node_hash is None:
                raise MissingNodeError(((index + 1) << level) - 1, f"stored node level {level} index {index} is missing")
            return node_hash

        return subtree_hash

    def _checked_tree_size(self, txn: lmdb.Transaction, tree_size: int | None) -> int:
        current = self._stored_tree_size(txn)
        if tree_size is None:
            return current
        if not 0 <= tree_size <= current:
            raise TreeSizeOutOfRangeError(f"tree size {tree_size} is outside 0..{current}")
        return tree_size

    # --- writing ------------------------------------------------------------------------------

    def append_batch(
        self, entries: Sequence[bytes], *, also_write: Callable[[lmdb.Transaction, int], object] | None = None
    ) -> int:
        """Append ``entries`` durably in ONE write transaction; return the index of the first.

        The entries, their leaf hashes and every interior node they complete are written
        together and fsync'ed once, so after a crash either the whole batch is in the ledger
        or none of it is. An empty batch writes nothing and returns the current size.

        ``also_write(txn, first_index)`` runs inside that transaction after the entries are
        written, to put derived data (indexes) into auxiliary databases atomically with
        them. If the map has to grow, the transaction is run again from the start, so
        ``also_write`` must only write through ``txn``.
        """
        self._require_writable()
        with self._write_lock:
            first_index = self._tree_size
            if not entries:
                return first_index
            leaf_hashes = self._hasher.hash_leaves(entries)
            frontier = list(self._frontier)
            completed_nodes = merkle.append_leaf_hashes(self._hasher, frontier, first_index, leaf_hashes)

            def write(txn: lmdb.Transaction) -> None:
                self._write_batch(txn, first_index, entries, completed_nodes)
                if also_write is not None:
                    also_write(txn, first_index)

            self._write(write)
            self._frontier = frontier
            self._tree_size = first_index + len(entries)
            return first_index

    def _write_batch(
        self, txn: lmdb.Transaction, first_index: int, entries: Sequence[bytes], completed_nodes: list[bytes]
    ) -> None:
        new_size = first_index + len(entries)
        first_position = stored_node_count(first_index)
        stored_size = self._stored_tree_size(txn)
        if stored_size != first_index:
            raise ConcurrentWriterError(f"ledger holds {stored_size} entries, this writer expected {first_index}")
        entries_written = txn.cursor(self._entries).putmulti(
            zip(map(_pack, range(first_index, new_size)), entries), append=True
        )[1]
        nodes_written = txn.cursor(self._nodes).putmulti(
            zip(map(_pack, range(first_position, first_position + len(completed_nodes))), completed_nodes), append=True
        )[1]
        # append=True skips (does not overwrite) a key that is not past the end, i.e. stray
        # data beyond the tree size. Refuse to commit on top of it.
        if entries_written != len(entries) or nodes_written != len(completed_nodes):
            raise TrailingDataError(first_index, "entries or nodes already exist beyond the recorded tree size")
        txn.put(_META_TREE_SIZE, _pack(new_size), db=self._meta)

    # --- reading ------------------------------------------------------------------------------

    @property
    def written_size(self) -> int:
        """A writable store's tree size after its last append, without a read transaction
        (cheap from any thread, e.g. a metrics scrape); 0 for a readonly store: use
        :meth:`size`."""
        return self._tree_size

    def size(self) -> int:
        """Number of entries committed (the current tree size)."""
        with self._read_txn() as txn:
            return self._stored_tree_size(txn)

    def entry(self, index: int) -> bytes:
        """Entry ``index`` exactly as appended."""
        with self._read_txn() as txn:
            if not 0 <= index < self._stored_tree_size(txn):
                raise LeafIndexOutOfRangeError(f"entry {index} is not in the ledger")
            value = txn.get(_pack(index), db=self._entries)
            if value is None:
                raise MissingEntryError(index, "entry is missing from the entries database")
            return value

    def leaf_hash(self, index: int) -> bytes:
        """The stored leaf hash H(0x00 || entry) of entry ``index``."""
        with self._read_txn() as txn:
            if not 0 <= index < self._stored_tree_size(txn):
                raise LeafIndexOutOfRangeError(f"entry {index} is not in the ledger")
            return self._subtree_getter(txn)(0, index)

    def root(self, tree_size: int | None = None) -> bytes:
        """The Merkle tree hash of the first ``tree_size`` entries (default: all), O(log n) reads."""
        with self._read_txn() as txn:
            tree_size = self._checked_tree_size(txn, tree_size)
            return merkle.root(self._hasher, tree_size, self._subtree_getter(txn))

    def inclusion_proof(self, leaf_index: int, tree_size: int | None = None) -> list[bytes]:
        """RFC 6962 audit path of entry ``leaf_index`` in the tree of ``tree_size`` (default: current)."""
        with self._read_txn() as txn:
            tree_size = self._checked_tree_size(txn, tree_size)
            return merkle.inclusion_proof(self._hasher, leaf_index, tree_size, self._subtree_getter(txn))

    def consistency_proof(self, old_size: int, new_size: int | None = None) -> list[bytes]:
        """RFC 6962 consistency proof from ``old_size`` (> 0) to ``new_size`` (default: current)."""
        with self._read_txn() as txn:
            new_size = self._checked_tree_size(txn, new_size)
            return merkle.consistency_proof(self._hasher, old_size, new_size, self._subtree_getter(txn))

    # --- checkpoints --------------------------------------------------------------------------

    def create_checkpoint(
        self, origin: str, *, timestamp_ms: int | None = None, extension_lines: Sequence[str] = ()
    ) -> StoredCheckpoint:
        """Commit to the current tree: build a checkpoint, sign it if a signer is configured,
        store it under its tree size.

        One checkpoint per tree size: if this size already has one it is returned unchanged,
        so its time stays the time the size was first checkpointed. ``timestamp_ms``
        defaults to now (Unix milliseconds).
        """
        self._require_writable()
        with self._write_lock:
            return self._write(lambda txn: self._store_checkpoint(txn, origin, timestamp_ms, tuple(extension_lines)))

    def _store_checkpoint(
        self, txn: lmdb.Transaction, origin: str, timestamp_ms: int | None, extension_lines: tuple[str, ...]
    ) -> StoredCheckpoint:
        tree_size = self._stored_tree_size(txn)
        key = _pack(tree_size)
        existing = txn.get(key, db=self._checkpoints)
        if existing is not None:
            note = existing.decode("utf-8")
            return StoredCheckpoint(checkpoint_from_note(note), note)
        checkpoint = Checkpoint(
            origin=origin,
            tree_size=tree_size,
            root_hash=merkle.root(self._hasher, tree_size, self._subtree_getter(txn)),
            timestamp_ms=time.time_ns() // 1_000_000 if timestamp_ms is None else timestamp_ms,
            extension_lines=extension_lines,
        )
        note = sign_checkpoint(checkpoint, [self._signer]) if self._signer else checkpoint.body()
        txn.put(key, note.encode("utf-8"), db=self._checkpoints)
        return StoredCheckpoint(checkpoint, note)

    def checkpoint(self, tree_size: int) -> StoredCheckpoint | None:
        """The checkpoint stored for ``tree_size``, or None."""
        with self._read_txn() as txn:
            value = txn.get(_pack(tree_size), db=self._checkpoints)
        if value is None:
            return None
        note = value.decode("utf-8")
        return StoredCheckpoint(checkpoint_from_note(note), note)

    def latest_checkpoint(self) -> StoredCheckpoint | None:
        """The checkpoint with the largest tree size, or None if there is none."""
        with self._read_txn() as txn:
            cursor = txn.cursor(self._checkpoints)
            if not cursor.last():
                return None
            note = cursor.value().decode("utf-8")
        return StoredCheckpoint(checkpoint_from_note(note), note)

    def checkpoints(self) -> list[StoredCheckpoint]:
        """Every stored checkpoint, by increasing tree size."""
        with self._read_txn() as txn:
            notes = [value.decode("utf-8") for value in txn.cursor(self._checkpoints).iternext(keys=False, values=True)]
        return [StoredCheckpoint(checkpoint_from_note(note), note) for note in notes]

    # --- full verification --------------------------------------------------------------------

    def verify(
        self,
        from_index: int = 0,
        *,
        checkpoint_verifiers: Sequence[NoteVerifier] = (),
        chunk_entries: int = DEFAULT_VERIFY_CHUNK_ENTRIES,
        progress: Callable[[int, int], object] | None = None,
    ) -> VerifyReport:
        """Recompute the tree from the entries and compare it with everything stored.

        Streams entries ``from_index ..`` in chunks (memory bounded by ``chunk_entries``),
        recomputes every leaf hash and every interior node completed from ``from_index`` on,
        and compares them with the stored nodes; then checks that nothing is stored beyond
        the tree size, and that every checkpoint at a size >= ``from_index`` has the root of
        the recomputed tree at that size. With ``checkpoint_verifiers``, each of those
        checkpoints must also carry a valid signature by one of these keys.

        ``from_index > 0`` verifies a tail incrementally, trusting the stored perfect
        subtrees left of ``from_index`` (verified by an earlier run).

        ``progress(entries_verified, entries_to_verify)`` is called after every chunk (a
        progress bar); it runs on the verifying thread, so it should be quick.

        All reads happen in one snapshot, so a concurrent writer does not disturb the run.
        Returns a :class:`VerifyReport`; raises a :class:`LedgerIntegrityError` subclass
        naming the first bad entry index and why.
        """
        with self._read_txn() as txn:
            tree_size = self._stored_tree_size(txn)
            if not 0 <= from_index <= tree_size:
                raise TreeSizeOutOfRangeError(f"from_index {from_index} is outside 0..{tree_size}")
            get_subtree = self._subtree_getter(txn)
            frontier = [get_subtree(level, index) for level, index in merkle.frontier_subtrees(from_index)]
            checkpoints = self._checkpoints_from(txn, from_index)
            checkpoint_sizes = {size for size in checkpoints if size <= tree_size}
            entries_cursor = txn.cursor(self._entries)
            nodes_cursor = txn.cursor(self._nodes)

            def check_checkpoint_at(size: int) -> None:
                if size in checkpoint_sizes:
                    root_hash = merkle.root_from_frontier(self._hasher, frontier)
                    self._verify_checkpoint(size, checkpoints[size], root_hash, checkpoint_verifiers)

            # Chunks end at every checkpoint size too, where the frontier gives the root.
            boundaries = sorted({from_index, tree_size, *range(from_index, tree_size, chunk_entries), *checkpoint_sizes})
            check_checkpoint_at(from_index)
            for start, stop in pairwise(boundaries):
                self._verify_entries(entries_cursor, nodes_cursor, frontier, start, stop)
                check_checkpoint_at(stop)
                if progress is not None:
                    progress(stop - from_index, tree_size - from_index)
            self._check_last_key(entries_cursor, tree_size, tree_size, "entries")
            self._check_last_key(nodes_cursor, stored_node_count(tree_size), tree_size, "nodes")
            sizes_beyond = sorted(size for size in checkpoints if size > tree_size)
            if sizes_beyond:
                raise CheckpointIntegrityError(
                    sizes_beyond[0], tree_size, f"commits to {sizes_beyond[0]} entries but the ledger holds {tree_size}"
                )
            return VerifyReport(
                tree_size=tree_size,
                root_hash=merkle.root_from_frontier(self._hasher, frontier),
                from_index=from_index,
                entries_verified=tree_size - from_index,
                nodes_verified=stored_node_count(tree_size) - stored_node_count(from_index),
                checkpoints_verified=len(checkpoint_sizes),
            )

    def _verify_entries(
        self, entries_cursor: lmdb.Cursor, nodes_cursor: lmdb.Cursor, frontier: list[bytes], start: int, stop: int
    ) -> None:
        """Verify entries ``start .. stop-1`` and the nodes they complete; advance ``frontier``."""
        entries, missing_entry = _read_consecutive(entries_cursor, start, stop - start)
        leaf_hashes = self._hasher.hash_leaves(entries)
        expected_nodes = merkle.append_leaf_hashes(self._hasher, frontier, start, leaf_hashes)
        first_position = stored_node_count(start)
        stored_nodes, _ = _read_consecutive(nodes_cursor, first_position, len(expected_nodes))
        if stored_nodes != expected_nodes:
            self._raise_node_mismatch(first_position, expected_nodes, stored_nodes)
        if missing_entry is not None:
            raise MissingEntryError(missing_entry, "entry is missing below the recorded tree size")

    @staticmethod
    def _raise_node_mismatch(first_position: int, expected_nodes: list[bytes], stored_nodes: list[bytes]) -> NoReturn:
        offset = next(
            (offset for offset, (expected, stored) in enumerate(zip(expected_nodes, stored_nodes)) if expected != stored),
            len(stored_nodes),
        )
        last_leaf, level = _node_at_position(first_position + offset)
        node_index = ((last_leaf + 1) >> level) - 1
        if offset == len(stored_nodes):
            raise MissingNodeError(last_leaf, f"stored node level {level} index {node_index} is missing")
        if level == 0:
            raise LeafHashMismatchError(last_leaf, "stored leaf hash differs from H(0x00 || entry): entry or leaf hash altered")
        raise NodeHashMismatchError(
            last_leaf,
            level,
            node_index,
            f"stored node level {level} index {node_index} (entries {node_index << level}..{last_leaf}) "
            "differs from the hash of its recomputed children",
        )

    @staticmethod
    def _check_last_key(cursor: lmdb.Cursor, key_count: int, tree_size: int, database: str) -> None:
        """After keys ``0 .. key_count-1`` were checked present, the last key must be
        ``key_count - 1``: anything after it was stored beyond the tree size."""
        expected_last = _pack(key_count - 1) if key_count else None
        actual_last = cursor.key() if cursor.last() else None
        if actual_last != expected_last:
            found = actual_last.hex() if actual_last is not None else "nothing"
            raise TrailingDataError(tree_size, f"{database} database ends with key {found}, beyond the tree size")

    def _checkpoints_from(self, txn: lmdb.Transaction, from_size: int) -> dict[int, bytes]:
        cursor = txn.cursor(self._checkpoints)
        if not cursor.set_range(_pack(from_size)):
            return {}
        return {_unpack(key): value for key, value in cursor.iternext()}

    def _verify_checkpoint(
        self, tree_size: int, note_bytes: bytes, root_hash: bytes, checkpoint_verifiers: Sequence[NoteVerifier]
    ) -> None:
        try:
            note = note_bytes.decode("utf-8")
            checkpoint = verify_checkpoint(note, checkpoint_verifiers) if checkpoint_verifiers else checkpoint_from_note(note)
        except (UnicodeDecodeError, NoteError) as exc:
            raise CheckpointIntegrityError(tree_size, None, f"note does not verify: {exc}") from exc
        if checkpoint.tree_size != tree_size:
            raise CheckpointIntegrityError(tree_size, None, f"note states tree size {checkpoint.tree_size}")
        if checkpoint.root_hash != root_hash:
            raise CheckpointIntegrityError(
                tree_size, None, f"note root {checkpoint.root_hash.hex()} differs from the recomputed root {root_hash.hex()}"
            )
