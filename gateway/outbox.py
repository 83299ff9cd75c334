"""The decision outbox: a local LMDB queue that makes published decisions survive crashes.

The order path writes every decision here *before* the client sees its response, and the
:class:`~gateway.publisher.DecisionPublisher` later copies entries to JetStream and removes
them once JetStream has acknowledged them. A decision the client has seen is therefore in
this file or in the stream, whatever happens to NATS or to the gateway process.

Durability trade-off (why commits do not fsync)
    The environment is opened with ``sync=False, metasync=False, writemap=True``: a commit
    writes the pages straight into a shared memory map of the file, i.e. into the OS page
    cache, and returns (about 2.5 µs for one decision; 8 µs without ``writemap``, which
    copies every page with ``pwrite``) instead of waiting for the disk (milliseconds). The
    page cache belongs to the kernel, not to the process, so a committed entry survives the
    death of the gateway process (``kill -9``, OOM killer, segfault). ``writemap`` gives up
    LMDB's protection against this process scribbling over the map through a wild pointer;
    the only code in this process writing raw memory is our own Cython kernel, which never
    touches this map. It does *not* survive power loss or a kernel
    crash: entries committed since the last :meth:`DecisionOutbox.sync` can be lost and,
    per the LMDB documentation for ``MDB_NOSYNC``, the file can be left corrupt (opening it
    then raises :class:`OutboxError`). The publisher calls :meth:`~DecisionOutbox.sync`
    every ``sync_interval_s`` (default 1 s) off the event loop, which bounds that window.
    Hosts that must survive power loss on this file alone need fsync per commit, which this
    class deliberately does not offer on the order path.

Layout
    Named database ``entries``: key = sequence as big-endian uint64 (so byte order is
    numeric order and ``append=True`` can skip the B-tree search), value = the append time
    as big-endian uint64 Unix nanoseconds followed by the serialized ``pretrade.v1.Decision``.
    Named database ``meta``: ``last_sequence`` as big-endian uint64, written in the same
    transaction as the entries, so the sequence survives even after every entry was
    published and removed.

Other payloads
    The class stores opaque serialized messages by sequence; the gateway keeps a second
    instance in ``<data_dir>/event-outbox`` (:data:`EVENTS_OUTBOX_SUBDIR`) for its ledger
    events (``pretrade.v1.GatewayEvent``), with the same guarantees and its own sequences.

Threading and ownership
    Single writer: one gateway process owns an outbox directory, enforced with an exclusive
    ``flock`` on ``writer.lock`` (a second opener gets :class:`OutboxLockedError`; the kernel
    drops the lock when the owner dies, even by ``kill -9``). Within the process every method
    is called from one thread, the gateway's event loop, except :meth:`sync`, which may run
    in a worker thread (``asyncio.to_thread``) because it only flushes the file.
"""

from __future__ import annotations

import fcntl
import os
import struct
import time
from collections.abc import Sequence
from pathlib import Path

import lmdb

#: Upper bound of the memory map and so of the file, in bytes. The file is sparse and grows
#: with use; at ~300 bytes per decision 8 GiB holds ~25 million unpublished decisions,
#: i.e. hours of a NATS outage at full rate.
DEFAULT_OUTBOX_MAP_SIZE_BYTES = 8 * 1024**3

#: Directory of the gateway-event outbox under the data dir (the decision outbox is
#: ``gateway.config.OUTBOX_SUBDIR``).
EVENTS_OUTBOX_SUBDIR = "event-outbox"

_ENTRIES_DB = b"entries"
_META_DB = b"meta"
_LAST_SEQUENCE_KEY = b"last_sequence"
_WRITER_LOCK_FILE = "writer.lock"

_UINT64 = struct.Struct(">Q")
_pack_uint64 = _UINT64.pack
_unpack_uint64 = _UINT64.unpack
_APPENDED_NS_SIZE = _UINT64.size


class OutboxError(Exception):
    """The outbox cannot be opened or written (LMDB error, corrupt file, bad path)."""


class OutboxLockedError(OutboxError):
    """Another process (or another open instance in this one) owns the outbox directory."""


class OutboxSequenceError(OutboxError):
    """An append whose sequences do not continue ``last_sequence + 1, + 2, ...``."""


class OutboxFullError(OutboxError):
    """The outbox reached its map size: JetStream has not acknowledged decisions for long
    enough to fill it. Decisions can no longer be made durable; the gateway must fail
    closed (reject orders) until the publisher drains the outbox."""


class DecisionOutbox:
    """A crash-safe, append-only queue of serialized decisions keyed by sequence.

    See the module docstring for the durability trade-off (process crash: safe; power loss:
    up to one sync interval at risk) and the single-writer rule.

    Sequences are contiguous: the first entry ever is 1 and every append continues at
    :attr:`last_sequence` + 1, so a consumer of the stream can detect a missing decision as
    a gap. The order path therefore numbers decisions ``last_sequence + 1, ...`` before
    serializing them, then appends them in one call.
    """

    def __init__(self, path: str | os.PathLike[str], map_size_bytes: int = DEFAULT_OUTBOX_MAP_SIZE_BYTES) -> None:
        self._path = Path(path)
        try:
            self._path.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise OutboxError(f"outbox {self._path}: cannot create directory: {error}") from error
        self._lock_fd = _acquire_writer_lock(self._path / _WRITER_LOCK_FILE)
        env: lmdb.Environment | None = None
        try:
            env = lmdb.open(
                str(self._path),
                map_size=map_size_bytes,
                max_dbs=2,
                sync=False,
                metasync=False,
                writemap=True,
                readahead=False,
            )
            entries_db = env.open_db(_ENTRIES_DB)
            meta_db = env.open_db(_META_DB)
            with env.begin() as txn:
                stored = txn.get(_LAST_SEQUENCE_KEY, db=meta_db)
        except lmdb.Error as error:
            if env is not None:
                env.close()
            os.close(self._lock_fd)
            raise OutboxError(f"outbox {self._path}: cannot open LMDB environment: {error}") from error
        self._env = env
        self._entries = entries_db
        self._meta = meta_db
        self._last_sequence = _unpack_uint64(stored)[0] if stored is not None else 0
        self._closed = False

    @property
    def path(self) -> Path:
        return self._path

    @property
    def last_sequence(self) -> int:
        """The sequence of the last decision ever appended (0 for a new outbox). Persisted
        with the entries, so it is monotonic across restarts even when the outbox is empty."""
        return self._last_sequence

    def append(self, entries: Sequence[tuple[int, bytes]]) -> None:
        """Durably (see module docstring) add ``(sequence, serialized decision)`` pairs.

        One write transaction for the whole batch; sequences must be ``last_sequence + 1``,
        ``+ 2``, ... or :class:`OutboxSequenceError` is raised and nothing is written. Raises
        :class:`OutboxFullError` when the map is full. Call from the event loop thread, then
        wake the publisher with ``DecisionPublisher.notify()``.
        """
        if not entries:
            return
        expected = self._last_sequence
        for sequence, _ in entries:
            expected += 1
            if sequence != expected:
                raise OutboxSequenceError(
                    f"outbox {self._path}: sequence {sequence} appended where {expected} was due "
                    f"(last_sequence={self._last_sequence})"
                )
        appended_ns = _pack_uint64(time.time_ns())
        items = [(_pack_uint64(sequence), appended_ns + payload) for sequence, payload in entries]
        try:
            with self._env.begin(write=True) as txn:
                _, added = txn.cursor(db=self._entries).putmulti(items, append=True)
                if added != len(items):
                    # Cannot happen while this process is the only writer (the lock says so)
                    # and sequences are checked above; raising aborts the transaction.
                    raise OutboxSequenceError(
                        f"outbox {self._path}: only {added} of {len(items)} entries appended: "
                        "an entry with a higher sequence already exists"
                    )
                txn.put(_LAST_SEQUENCE_KEY, _pack_uint64(expected), db=self._meta)
        except lmdb.MapFullError as error:
            raise OutboxFullError(
                f"outbox {self._path}: full ({self._env.info()['map_size']} bytes, "
                f"{self.depth} unpublished decisions)"
            ) from error
        except lmdb.Error as error:
            raise OutboxError(f"outbox {self._path}: append failed: {error}") from error
        self._last_sequence = expected

    def pending(self, after_sequence: int, limit: int) -> list[tuple[int, bytes]]:
        """Up to ``limit`` entries with a sequence greater than ``after_sequence``, oldest
        first, as ``(sequence, serialized decision)``."""
        result: list[tuple[int, bytes]] = []
        if limit < 1:
            return result
        with self._env.begin(db=self._entries) as txn:
            cursor = txn.cursor()
            if not cursor.set_range(_pack_uint64(max(after_sequence, 0) + 1)):
                return result
            for key, value in cursor:
                result.append((_unpack_uint64(key)[0], value[_APPENDED_NS_SIZE:]))
                if len(result) >= limit:
                    break
        return result

    def oldest_appended_ns(self) -> int | None:
        """Wall-clock Unix ns when the oldest entry still in the outbox was appended, or
        ``None`` when the outbox is empty (everything appended has been acknowledged)."""
        with self._env.begin(db=self._entries) as txn:
            cursor = txn.cursor()
            if not cursor.first():
                return None
            return _unpack_uint64(cursor.value()[:_APPENDED_NS_SIZE])[0]

    def remove_through(self, sequence: int) -> int:
        """Delete every entry with a sequence up to and including ``sequence`` (called once
        JetStream acknowledged them); return how many were deleted.

        Costs about 0.3 µs per entry in one write transaction, on the event loop: the
        publisher calls it per acknowledged batch so the pause stays short.
        """
        if sequence < 1:
            return 0
        last_key = _pack_uint64(sequence)
        removed = 0
        try:
            with self._env.begin(write=True, db=self._entries) as txn:
                cursor = txn.cursor()
                if cursor.first():
                    # delete() moves the cursor to the next entry; key() is b"" past the end.
                    while (key := cursor.key()) and key <= last_key:
                        cursor.delete()
                        removed += 1
        except lmdb.Error as error:
            raise OutboxError(f"outbox {self._path}: remove through {sequence} failed: {error}") from error
        return removed

    @property
    def depth(self) -> int:
        """Number of decisions appended but not yet removed (i.e. not yet acknowledged)."""
        with self._env.begin() as txn:
            return txn.stat(self._entries)["entries"]

    def sync(self) -> None:
        """Flush committed entries to disk (fsync): after this, power loss cannot lose them.

        Takes milliseconds; safe to call from a worker thread while the event loop appends.
        Raises :class:`OutboxError` if the disk reports an error.
        """
        try:
            self._env.sync(True)
        except lmdb.Error as error:
            raise OutboxError(f"outbox {self._path}: fsync failed: {error}") from error

    def close(self) -> None:
        """Flush to disk, close the environment and release the writer lock. Idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            self.sync()
        finally:
            self._env.close()
            os.close(self._lock_fd)

    def __enter__(self) -> DecisionOutbox:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"DecisionOutbox({str(self._path)!r}, last_sequence={self._last_sequence})"


def _acquire_writer_lock(lock_path: Path) -> int:
    """Open and exclusively ``flock`` ``lock_path``; return the fd (closing it unlocks)."""
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as error:
        raise OutboxError(f"outbox lock {lock_path}: cannot open: {error}") from error
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError as error:
        os.close(fd)
        raise OutboxLockedError(
            f"outbox {lock_path.parent} is in use by another gateway process (or is already open "
            "in this one): one writer per outbox"
        ) from error
    return fd
