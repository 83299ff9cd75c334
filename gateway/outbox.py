"""The decision outbox: a local append-only log that makes published decisions survive crashes.

The order path writes every decision here *before* the client sees its response, and the
:class:`~gateway.publisher.DecisionPublisher` later copies entries to JetStream and removes
them once JetStream has acknowledged them. A decision the client has seen is therefore in
this log or in the stream, whatever happens to NATS or to the gateway process.

Why not LMDB (what this module used before)
    An append is on the order path, whose whole in-process budget is about 3 µs per
    decision. One LMDB write transaction for one decision (``writemap``, no sync) costs
    2.2 µs for begin + put + commit alone, and the LMDB outbox's append (two puts) 2.9 µs
    on a quiet 2-CPU development machine, 3.8-4.1 µs p50 (5.6-6.6 µs mean) on the same
    machine under load: every commit copies the touched B-tree pages and updates the
    freelist, however small the write. An append to this log is three stores into a memory
    map (header, payload, commit word) and an array append: 0.50-0.53 µs p50 (0.8 µs mean)
    for one 300-byte decision, measured the same way on the same loaded machine (per-call
    ``perf_counter_ns``, 10 µs of other work between appends, ``sync()`` every second in a
    thread). The outbox needs nothing a B-tree offers: entries are written in sequence order
    and removed as a prefix in the same order.

Durability trade-off (why appends do not fsync)
    Segments are mapped ``MAP_SHARED``: an append writes straight into the kernel's page
    cache and returns, instead of waiting for the disk (milliseconds). The page cache
    belongs to the kernel, not to the process, so an appended entry survives the death of
    the gateway process (``kill -9``, OOM killer, segfault): the same guarantee LMDB gave
    with ``writemap`` and ``sync=False``. It does *not* survive power loss or a kernel
    crash: entries appended since the last completed :meth:`DecisionOutbox.sync` can be
    lost. The publisher calls :meth:`~DecisionOutbox.sync` every ``sync_interval_s``
    (default 1 s) off the event loop, which bounds that window. Hosts that must survive
    power loss on this file alone need an fsync per append, which this class deliberately
    does not offer on the order path.

Layout (one directory per outbox)
    ``writer.lock``
        ``flock``-ed by the owning process (see *Threading and ownership*).
    ``<first sequence, 20 digits>.seg``
        Segments of :data:`DEFAULT_OUTBOX_SEGMENT_BYTES` (less for small map sizes, see
        :func:`segment_bytes_for`): sparse files mapped whole, which get disk blocks
        (``posix_fallocate``) ahead of the writes, so they take disk space as they fill, and
        a full disk is an :class:`OutboxError` from ``append`` (the gateway fails closed)
        rather than a ``SIGBUS`` from writing into a hole of the map. A 64-byte header
        (magic ``PTOBXSG1``, first sequence) is followed by records, each 8-byte aligned::

            u32 size      total record size (24 + payload), written LAST: the commit word
            u32 size      the same value, written with the body
            u64 sequence
            u64 appended  Unix ns, for the publish-lag gauge
            payload       the serialized pretrade.v1.Decision (or GatewayEvent)

        All little-endian. Only the newest segment is written; a record that does not fit
        starts the next segment. A segment is deleted once every entry in it was removed
        (and never while it is the one being written).
    ``spare.seg.tmp``
        The next segment, prepared by :meth:`~DecisionOutbox.sync` (see below) and renamed
        when the order path needs it; removed on close, ignored and replaced on open.
    ``state``
        64 bytes: magic ``PTOBXST1``; ``acked`` (u64: entries up to it were removed, written
        by :meth:`~DecisionOutbox.remove_through`, so removal is O(1)); ``synced`` (u64: every
        entry up to it is on disk, written by :meth:`~DecisionOutbox.sync` only after the
        fsync of the segments completed); the kernel's ``boot_id`` (16 bytes) of the process
        that last opened the outbox.

    ``last_sequence`` is not stored: it is the last valid record, or the first sequence of
    the newest segment - 1 when that segment is still empty, or ``acked``, whichever is
    highest. The newest segment is never deleted, so the sequence survives even after every
    entry was published and removed.

Why no per-record checksum
    ``zlib.crc32`` of a 300-byte decision costs 0.2-0.3 µs from Python, half the append
    budget, and buys nothing the layout does not already give. After a *process* crash the
    page cache holds exactly what the process wrote, in program order: the commit word is
    stored after the body (and the first record of a batch after all the others), so an
    append that was interrupted has no commit word and is not a record, and an aligned
    4-byte store cannot be half done (the second copy of the size catches it anyway). After
    a *power loss*, pages reach the disk in any order and a record can be torn; but
    ``synced`` says which prefix had been fsynced before, and only records up to it are
    trusted when ``boot_id`` shows that the machine restarted since the writer opened the
    outbox. That is precisely the loss the contract allows (appends since the last sync).
    The price: a gateway killed by ``kill -9`` *and* followed by a machine reboot before it
    is restarted also loses the entries appended since its last sync (a checksum would
    have kept them); the publisher has normally copied them to JetStream within
    milliseconds anyway. Disk corruption (bit rot) is not detected; it would show as a
    record that does not parse downstream.

Keeping the file system off the order path
    What remains expensive in an append is the kernel's: the first write into a page of
    the map is a page fault (about 10 µs, so ~1 µs per decision on average), the fsync in
    ``sync()`` write-protects the written pages again, and the first write fault into a new
    file took 2-30 ms on the development machine's ext4. So :meth:`~DecisionOutbox.sync`,
    which runs in a worker thread, also allocates disk blocks ahead of the tail and takes
    their write faults with ``madvise(MADV_POPULATE_WRITE)`` (through ``ctypes``, which
    releases the GIL; it changes no byte, so it may race the appends), 1.25 times what was
    appended in the last interval; and it prepares the next segment (the spare), so that
    starting one on the order path is a ``rename`` (tens of µs) instead of an allocation.
    Without a sync for a while (or on a kernel older than 5.14) appends still work; they
    take the faults themselves and allocate 256 KiB chunks synchronously (~0.1 ms).

Recovery (on open)
    Segments are scanned from the oldest. A record is valid iff both size words agree and
    fit the segment, its sequence is the one expected, and (after a reboot) it is not beyond
    ``synced``. The scan of a segment stops at the first invalid record, and continues in
    the next segment only if that one starts at the expected sequence; otherwise every later
    segment is deleted (the tail of an interrupted batch, or pages lost with the power), and
    the rest of the segment that is written next is zeroed (truncated and extended, which
    leaves a hole), so no stale bytes can later be taken for a record. Opening therefore costs a read of the
    unpublished backlog, about 0.5 µs per entry (a few seconds for millions of entries after
    a long NATS outage), and ends with a :meth:`~DecisionOutbox.sync`.

Migration
    A directory that still holds an LMDB outbox (``data.mdb``, from before this format) is
    converted when opened: its unremoved entries (with their append times) and its
    ``last_sequence`` are copied into a new log, synced, and only then are ``data.mdb`` and
    ``lock.mdb`` renamed to ``*.migrated`` (an interrupted migration starts over).

Other payloads
    The class stores opaque serialized messages by sequence; the gateway keeps a second
    instance in ``<data_dir>/event-outbox`` (:data:`EVENTS_OUTBOX_SUBDIR`) for its ledger
    events (``pretrade.v1.GatewayEvent``), with the same guarantees and its own sequences.

Threading and ownership
    Single writer: one gateway process owns an outbox directory, enforced with an exclusive
    ``flock`` on ``writer.lock`` (a second opener gets :class:`OutboxLockedError`; the kernel
    drops the lock when the owner dies, even by ``kill -9``). Within the process every method
    is called from one thread, the gateway's event loop, except :meth:`~DecisionOutbox.sync`,
    which may run in a worker thread (``asyncio.to_thread``) while the loop appends: it
    fsyncs files by path (releasing the GIL; a segment deleted meanwhile needs no flush),
    writes ``synced``, allocates and prefaults ahead. The few fields it shares with the loop
    thread (the newest segment and its allocated end, the segments sealed since the last
    sync, the spare) are exchanged under a lock that the order path takes only when it
    starts a new segment or allocates; the hot path takes no lock.
"""

from __future__ import annotations

import bisect
import contextlib
import ctypes
import fcntl
import logging
import mmap
import os
import re
import struct
import threading
import time
import uuid
from array import array
from collections.abc import Sequence
from errno import EINVAL
from pathlib import Path

log = logging.getLogger(__name__)

#: Most bytes of unremoved entries the outbox holds before it raises
#: :class:`OutboxFullError` (counted in whole segments). At ~330 bytes per decision
#: 8 GiB holds ~25 million unpublished decisions, i.e. hours of a NATS outage at full rate.
#: The name is LMDB's; the log maps each live segment, so it also bounds the address space.
DEFAULT_OUTBOX_MAP_SIZE_BYTES = 8 * 1024**3

#: Size of one segment file (when the map size is at least 4 times that; a sparse file
#: that takes disk space as it fills). Large enough that starting a segment (on the order
#: path: a rename of the spare, tens of µs, or milliseconds without one) happens every
#: ~200 000 decisions; small enough that the space of published decisions comes back soon
#: after a NATS outage ends (a segment is deleted when all its entries are removed).
DEFAULT_OUTBOX_SEGMENT_BYTES = 64 * 1024**2

#: Directory of the gateway-event outbox under the data dir (the decision outbox is
#: ``gateway.config.OUTBOX_SUBDIR``).
EVENTS_OUTBOX_SUBDIR = "event-outbox"

#: Smallest accepted ``map_size_bytes``: a few one-page segments.
MIN_OUTBOX_MAP_SIZE_BYTES = 4 * mmap.PAGESIZE

_SEGMENTS_PER_MAP_MIN = 4
_WRITER_LOCK_FILE = "writer.lock"
_STATE_FILE = "state"
_SEGMENT_SUFFIX = ".seg"
_SEGMENT_NAME = re.compile(r"^(\d{20})\.seg$")
_SPARE_SEGMENT_FILE = "spare.seg.tmp"
_LMDB_DATA_FILE = "data.mdb"
_LMDB_LOCK_FILE = "lock.mdb"
_MIGRATED_SUFFIX = ".migrated"
_BOOT_ID_PATH = "/proc/sys/kernel/random/boot_id"

_SEGMENT_MAGIC = b"PTOBXSG1"
_SEGMENT_HEADER = struct.Struct("<8sQ")  # magic, first sequence
_SEGMENT_HEADER_BYTES = 64
_NO_SEGMENT_HEADER = (b"\0" * 8, 0)  # created, but the process died before writing it

_RECORD_HEADER = struct.Struct("<IIQQ")  # size (commit word), size copy, sequence, appended ns
_RECORD_HEADER_BYTES = _RECORD_HEADER.size
_RECORD_ALIGN_MASK = -8
_pack_record_body_header = struct.Struct("<IQQ").pack_into  # at offset 4: size copy, seq, ns
_pack_commit = struct.Struct("<I").pack_into  # at offset 0, last
_unpack_commit = struct.Struct("<I").unpack_from
_pack_record_header = _RECORD_HEADER.pack
_PADDING = tuple(bytes(n) for n in range(8))
_unpack_appended_ns = struct.Struct("<Q").unpack_from
_APPENDED_NS_OFFSET = 16
_time_ns = time.time_ns

_STATE_MAGIC = b"PTOBXST1"
_STATE = struct.Struct("<8sQQ16s")  # magic, acked, synced, boot id
_STATE_BYTES = 64
_STATE_ACKED_OFFSET = 8
_STATE_SYNCED_OFFSET = 16
_STATE_BOOT_ID_OFFSET = 24
_UINT64 = struct.Struct("<Q")
# The LMDB outbox (migrated on open): key = big-endian u64 sequence, value = big-endian u64
# appended ns + payload; meta key last_sequence = big-endian u64.
_LMDB_UINT64 = struct.Struct(">Q")
_LMDB_APPENDED_NS_BYTES = 8

#: Index compaction: drop the removed prefix of the offset index once it is this long and
#: at least half the index (amortised O(1) per removed entry).
_INDEX_COMPACT_MIN = 4096
#: Prefaulting ahead of the tail (see DecisionOutbox._prefault_ahead), bytes.
_PREFAULT_MIN_BYTES = 256 * 1024
#: Unit of disk allocation in a segment (the order path allocates one when sync() did not
#: allocate ahead far enough: ~0.1 ms).
_ALLOCATION_CHUNK_BYTES = 256 * 1024
_PREFAULT_MAX_BYTES = 64 * 1024**2
_MADV_POPULATE_WRITE = 23  # linux/mman.h, Linux >= 5.14
_libc = ctypes.CDLL(None, use_errno=True)
_madvise = _libc.madvise
_madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
_madvise.restype = ctypes.c_int
_populate_supported = hasattr(mmap, "MADV_DONTNEED") and os.uname().sysname == "Linux"
# Where there is no posix_fallocate (macOS), segments stay sparse and a full disk would
# be a SIGBUS on a write into the map, as it was with LMDB's writemap.
_allocate_range = getattr(os, "posix_fallocate", lambda fd, offset, length: None)

#: Entries copied per append while migrating an LMDB outbox.
_MIGRATION_BATCH = 4096


class OutboxError(Exception):
    """The outbox cannot be opened or written (I/O error, corrupt file, bad path)."""


class OutboxLockedError(OutboxError):
    """Another process (or another open instance in this one) owns the outbox directory."""


class OutboxSequenceError(OutboxError):
    """An append whose sequences do not continue ``last_sequence + 1, + 2, ...``."""


class OutboxFullError(OutboxError):
    """The outbox reached its map size: JetStream has not acknowledged decisions for long
    enough to fill it. Decisions can no longer be made durable; the gateway must fail
    closed (reject orders) until the publisher drains the outbox."""


def segment_bytes_for(map_size_bytes: int) -> int:
    """Segment size for a map size: :data:`DEFAULT_OUTBOX_SEGMENT_BYTES`, or a quarter of
    the map (whole pages) when that is smaller, so that a small outbox (tests) still holds
    several segments and frees space segment by segment as entries are removed."""
    quarter = (map_size_bytes // _SEGMENTS_PER_MAP_MIN) // mmap.PAGESIZE * mmap.PAGESIZE
    return max(mmap.PAGESIZE, min(DEFAULT_OUTBOX_SEGMENT_BYTES, quarter))


class _Segment:
    """One mapped segment file. ``size`` is the file's (sparse) size, which is the mapped
    length; ``allocated``: bytes from its start that have disk blocks (``posix_fallocate``),
    the only part that may be written through the map."""

    __slots__ = ("first_sequence", "path", "mm", "size", "address", "allocated")

    def __init__(self, first_sequence: int, path: Path, mm: mmap.mmap, allocated: int) -> None:
        self.first_sequence = first_sequence
        self.path = path
        self.mm = mm
        self.size = len(mm)
        self.address = _map_address(mm)
        self.allocated = allocated


class DecisionOutbox:
    """A crash-safe, append-only queue of serialized decisions keyed by sequence.

    See the module docstring for the durability trade-off (process crash: safe; power loss:
    up to one sync interval at risk), the file layout and the single-writer rule.

    Sequences are contiguous: the first entry ever is 1 and every append continues at
    :attr:`last_sequence` + 1, so a consumer of the stream can detect a missing decision as
    a gap. The order path therefore numbers decisions ``last_sequence + 1, ...`` before
    serializing them, then appends them in one call.
    """

    def __init__(self, path: str | os.PathLike[str], map_size_bytes: int = DEFAULT_OUTBOX_MAP_SIZE_BYTES) -> None:
        self._path = Path(path)
        if map_size_bytes < MIN_OUTBOX_MAP_SIZE_BYTES:
            raise OutboxError(
                f"outbox {self._path}: map_size_bytes={map_size_bytes} is below the minimum "
                f"{MIN_OUTBOX_MAP_SIZE_BYTES}"
            )
        try:
            self._path.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise OutboxError(f"outbox {self._path}: cannot create directory: {error}") from error
        self._map_size_bytes = map_size_bytes
        self._segment_bytes = segment_bytes_for(map_size_bytes)
        self._closed = False
        self._released = False
        self._state_fd = -1
        # Written on the loop thread only:
        self._segments: list[_Segment] = []  # oldest first; the last one is written
        self._firsts: list[int] = []  # first_sequence of each segment, for bisect
        self._live_bytes = 0  # sum of the segments' sizes, for OutboxFullError
        self._mm: mmap.mmap | None = None  # the segment written
        self._tail = 0  # where the next record starts in it
        # Its allocated end: appends beyond it take the slow path, which allocates or starts
        # a segment; -1 when closed. Raised by sync() (worker thread, under _lock) too.
        self._limit = -1
        self._last_sequence = 0
        self._acked = 0  # entries up to this sequence were removed
        # Offset within its segment of the record of sequence _index_base + 1 + i.
        self._offsets = array("I")
        self._index_base = 0
        # Shared with sync() in a worker thread, under _lock:
        self._lock = threading.Lock()
        self._sync_lock = threading.Lock()  # one sync at a time (periodic, stop, close)
        self._current_path: Path | None = None
        self._unsynced_paths: list[Path] = []  # segments sealed since the last sync
        self._dir_dirty = True  # segment files created or deleted since the last sync
        self._spare: _Segment | None = None  # the next segment (first_sequence 0), by sync()
        self._prefault_mark = (0, 0)  # (segment, tail) at the last prefault, for its rate

        self._lock_fd = _acquire_writer_lock(self._path / _WRITER_LOCK_FILE)
        try:
            if (self._path / _LMDB_DATA_FILE).exists():
                self._migrate_from_lmdb()
            else:
                self._recover()
            self.sync()
        except BaseException as error:
            self._release()
            if isinstance(error, OSError):
                raise OutboxError(f"outbox {self._path}: cannot open: {error}") from error
            raise

    # ------------------------------------------------------------------ public interface

    @property
    def path(self) -> Path:
        return self._path

    @property
    def last_sequence(self) -> int:
        """The sequence of the last decision ever appended (0 for a new outbox). Monotonic
        across restarts even when the outbox is empty (see *Layout* in the module doc)."""
        return self._last_sequence

    def append(self, entries: Sequence[tuple[int, bytes]]) -> None:
        """Durably (see module docstring) add ``(sequence, serialized decision)`` pairs.

        All or nothing, also across a process crash (the first record of the batch is
        committed last); sequences must be ``last_sequence + 1``, ``+ 2``, ... or
        :class:`OutboxSequenceError` is raised and nothing is written. Raises
        :class:`OutboxFullError` when the entries would take the unremoved data beyond the
        map size. Call from the event loop thread, then wake the publisher with
        ``DecisionPublisher.notify()``.

        Cost: 0.5 µs p50 for one 300-byte decision (the LMDB outbox: 4 µs), see the module
        docstring; a batch writes each record, then the first record's commit word.
        """
        if len(entries) == 1:
            # The common case (one order per RPC), without the loops: ~0.15 µs less.
            ((sequence, payload),) = entries
            if sequence != self._last_sequence + 1:
                raise self._sequence_error(sequence, self._last_sequence + 1)
            offset = self._tail
            size = _RECORD_HEADER_BYTES + len(payload)
            end = (offset + size + 7) & _RECORD_ALIGN_MASK
            if end <= self._limit:
                mm = self._mm
                _pack_record_body_header(mm, offset + 4, size, sequence, _time_ns())
                mm[offset + _RECORD_HEADER_BYTES : offset + size] = payload
                _pack_commit(mm, offset, size)  # the commit word, last
                self._offsets.append(offset)
                self._tail = end
                self._last_sequence = sequence
                return
            self._append_rolling(entries, sequence, None)
            return
        if not entries:
            return
        # A batch: build all records in one buffer (header, payload, padding each), the
        # first record's commit word left 0, copy it into the map at once, then commit the
        # first record. Fewer calls into the map than record by record: ~0.25 µs a record.
        expected = self._last_sequence
        first = offset = self._tail
        now = _time_ns()
        parts: list[bytes] = []
        record_offsets: list[int] = []
        for sequence, payload in entries:
            expected += 1
            if sequence != expected:
                raise self._sequence_error(sequence, expected)
            size = _RECORD_HEADER_BYTES + len(payload)
            padded = (size + 7) & _RECORD_ALIGN_MASK
            parts += (_pack_record_header(size, size, sequence, now), payload, _PADDING[padded - size])
            record_offsets.append(offset)
            offset += padded
        if offset > self._limit:
            self._append_rolling(entries, expected, None)
            return
        first_size = _RECORD_HEADER_BYTES + len(entries[0][1])
        parts[0] = _pack_record_header(0, first_size, expected - len(entries) + 1, now)
        mm = self._mm
        mm[first:offset] = b"".join(parts)
        _pack_commit(mm, first, first_size)  # the batch's commit word, last
        self._offsets.extend(record_offsets)
        self._tail = offset
        self._last_sequence = expected

    def pending(self, after_sequence: int, limit: int) -> list[tuple[int, bytes]]:
        """Up to ``limit`` entries with a sequence greater than ``after_sequence``, oldest
        first, as ``(sequence, serialized decision)``."""
        result: list[tuple[int, bytes]] = []
        if limit < 1:
            return result
        sequence = max(after_sequence, self._acked) + 1
        stop = min(self._last_sequence, sequence + limit - 1)
        offsets = self._offsets
        base = self._index_base + 1
        firsts = self._firsts
        while sequence <= stop:
            index = bisect.bisect_right(firsts, sequence) - 1
            mm = self._segments[index].mm
            segment_stop = stop if index + 1 == len(firsts) else min(stop, firsts[index + 1] - 1)
            for in_segment in range(sequence, segment_stop + 1):
                offset = offsets[in_segment - base]
                end = offset + _unpack_commit(mm, offset)[0]
                result.append((in_segment, mm[offset + _RECORD_HEADER_BYTES : end]))
            sequence = segment_stop + 1
        return result

    def oldest_appended_ns(self) -> int | None:
        """Wall-clock Unix ns when the oldest entry still in the outbox was appended, or
        ``None`` when the outbox is empty (everything appended has been acknowledged)."""
        sequence = self._acked + 1
        if sequence > self._last_sequence:
            return None
        mm = self._segments[bisect.bisect_right(self._firsts, sequence) - 1].mm
        offset = self._offsets[sequence - self._index_base - 1]
        return _unpack_appended_ns(mm, offset + _APPENDED_NS_OFFSET)[0]

    def remove_through(self, sequence: int) -> int:
        """Remove every entry with a sequence up to and including ``sequence`` (called once
        JetStream acknowledged them); return how many were removed.

        O(1) plus deleting the segments that no longer hold an unremoved entry: one 8-byte
        ``pwrite`` of ``acked`` (about 1 µs), so the publisher may call it per batch.
        """
        if self._closed:
            raise OutboxError(f"outbox {self._path}: closed")
        acked = min(sequence, self._last_sequence)
        if acked <= self._acked:
            return 0
        try:
            os.pwrite(self._state_fd, _UINT64.pack(acked), _STATE_ACKED_OFFSET)
        except OSError as error:
            raise OutboxError(f"outbox {self._path}: remove through {sequence} failed: {error}") from error
        removed = acked - self._acked
        self._acked = acked
        # Segments whose entries are all removed go, except the one being written, whose
        # name keeps last_sequence when the outbox is empty.
        while len(self._segments) > 1 and self._firsts[1] <= acked + 1:
            with self._lock:
                segment = self._segments.pop(0)
                self._firsts.pop(0)
                self._live_bytes -= segment.size
                self._dir_dirty = True
            self._close_segment(segment, unlink=True)
        dropped = acked - self._index_base
        if dropped >= _INDEX_COMPACT_MIN and 2 * dropped >= len(self._offsets):
            del self._offsets[:dropped]
            self._index_base = acked
        return removed

    @property
    def depth(self) -> int:
        """Number of decisions appended but not yet removed (i.e. not yet acknowledged)."""
        return self._last_sequence - self._acked

    def sync(self) -> None:
        """Flush appended entries to disk (fsync): after this, power loss cannot lose them.

        Takes milliseconds; safe to call from a worker thread while the event loop appends
        (see *Threading* in the module docstring). Raises :class:`OutboxError` if the disk
        reports an error; the next call retries what was not flushed.
        """
        with self._sync_lock:
            with self._lock:
                if self._released:
                    raise OutboxError(f"outbox {self._path}: closed")
                # Every entry up to `through` is in one of these files (the loop thread
                # only appends to _current_path, and seals a segment under _lock).
                through = self._last_sequence
                paths = [*self._unsynced_paths, self._current_path]
                self._unsynced_paths = []
                dir_dirty, self._dir_dirty = self._dir_dirty, False
            try:
                for path in paths:
                    _fsync_path(path)
                if dir_dirty:
                    _fsync_path(self._path)
                # Only now: `synced` must never claim an entry that is not on disk.
                os.pwrite(self._state_fd, _UINT64.pack(through), _STATE_SYNCED_OFFSET)
                os.fsync(self._state_fd)
            except OSError as error:
                with self._lock:
                    self._unsynced_paths[:0] = paths[:-1]
                    self._dir_dirty = self._dir_dirty or dir_dirty
                raise OutboxError(f"outbox {self._path}: fsync failed: {error}") from error
            self._prefault_ahead()
            try:
                self._prepare_spare()
            except OSError as error:  # the order path will allocate the segment itself
                log.warning("outbox %s: cannot preallocate the next segment: %s", self._path, error)

    def close(self) -> None:
        """Flush to disk, unmap the segments and release the writer lock. Idempotent."""
        if self._closed:
            return
        with self._lock:  # (sync() in a worker raises _limit under this lock)
            self._closed = True
            self._limit = -1
        try:
            self.sync()
        finally:
            self._release()

    def __enter__(self) -> DecisionOutbox:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"DecisionOutbox({str(self._path)!r}, last_sequence={self._last_sequence})"

    # ------------------------------------------------------------------ appending

    def _sequence_error(self, sequence: int, expected: int) -> OutboxSequenceError:
        return OutboxSequenceError(
            f"outbox {self._path}: sequence {sequence} appended where {expected} was due "
            f"(last_sequence={self._last_sequence})"
        )

    def _append_rolling(
        self,
        entries: Sequence[tuple[int, bytes]],
        expected: int,
        appended_ns: Sequence[int] | None,
    ) -> None:
        """The general append: entries that do not all fit in the segment being written
        start new segments. Checks room for all of them before writing anything."""
        if self._closed:
            raise OutboxError(f"outbox {self._path}: closed")
        segment_bytes = self._segment_bytes
        largest = segment_bytes - _SEGMENT_HEADER_BYTES
        new_firsts: list[int] = []
        placements: list[tuple[int, int]] = []  # (0 = current, n = n-th new segment), offset
        current = self._segments[-1]
        offset = self._tail
        limit = current.size
        for sequence, payload in entries:
            size = _RECORD_HEADER_BYTES + len(payload)
            if offset + size > limit:
                if size > largest:
                    raise OutboxError(
                        f"outbox {self._path}: entry {sequence} of {len(payload)} bytes does not fit in "
                        f"a segment of {segment_bytes} bytes"
                    )
                new_firsts.append(sequence)
                offset = _SEGMENT_HEADER_BYTES
                limit = segment_bytes
            placements.append((len(new_firsts), offset))
            offset = (offset + size + 7) & _RECORD_ALIGN_MASK
        tail = offset
        if self._live_bytes + len(new_firsts) * segment_bytes > self._map_size_bytes:
            raise OutboxFullError(
                f"outbox {self._path}: full ({self._map_size_bytes} bytes in {len(self._segments)} segments, "
                f"{self.depth} unpublished decisions)"
            )
        # Disk blocks for every byte about to be written (a write into a hole of the map on
        # a full disk would be a SIGBUS); usually sync() has allocated ahead already.
        needed = [_SEGMENT_HEADER_BYTES] * (len(new_firsts) + 1)
        for (slot, start), (_, payload) in zip(placements, entries, strict=True):
            needed[slot] = start + _RECORD_HEADER_BYTES + len(payload)
        created: list[_Segment] = []
        try:
            self._allocate(current, needed[0])
            for first, end in zip(new_firsts, needed[1:], strict=True):
                created.append(self._create_segment(first, end))
        except OSError as error:
            for segment in created:
                self._close_segment(segment, unlink=True)
            raise OutboxError(f"outbox {self._path}: cannot allocate disk space: {error}") from error
        maps = [current.mm, *(segment.mm for segment in created)]
        offsets = self._offsets
        now = _time_ns() if appended_ns is None else 0
        commit_first: tuple[mmap.mmap, int, int] | None = None
        for i, ((sequence, payload), (slot, offset)) in enumerate(zip(entries, placements, strict=True)):
            mm = maps[slot]
            size = _RECORD_HEADER_BYTES + len(payload)
            when = now if appended_ns is None else appended_ns[i]
            _pack_record_body_header(mm, offset + 4, size, sequence, when)
            mm[offset + _RECORD_HEADER_BYTES : offset + size] = payload
            if i:
                _pack_commit(mm, offset, size)
            else:
                commit_first = (mm, offset, size)
            offsets.append(offset)
        assert commit_first is not None
        _pack_commit(*commit_first)
        if created:
            with self._lock:
                self._unsynced_paths.append(self._segments[-1].path)
                self._unsynced_paths.extend(segment.path for segment in created[:-1])
                self._segments.extend(created)
                self._firsts.extend(segment.first_sequence for segment in created)
                self._live_bytes += sum(segment.size for segment in created)
                self._current_path = created[-1].path
                self._dir_dirty = True
                self._mm = created[-1].mm
                self._limit = created[-1].allocated
        self._tail = tail
        self._last_sequence = expected

    # ------------------------------------------------------------------ segments

    def _segment_path(self, first_sequence: int) -> Path:
        return self._path / f"{first_sequence:020d}{_SEGMENT_SUFFIX}"

    def _create_segment(self, first_sequence: int, needed_bytes: int = _SEGMENT_HEADER_BYTES) -> _Segment:
        """A new mapped segment starting at ``first_sequence``, zeroed, with at least
        ``needed_bytes`` allocated: the spare that :meth:`sync` prepared (a rename), or else
        a new file, which costs the order path milliseconds (the file system's first write
        fault into a new file took 2-30 ms on the development machine)."""
        path = self._segment_path(first_sequence)
        with self._lock:
            # Under the lock: sync() must not start a new spare under the same name
            # before this one is renamed.
            segment, self._spare = self._spare, None
            if segment is not None:
                try:
                    os.rename(segment.path, path)
                except OSError:
                    segment.mm.close()
                    segment = None
        if segment is None:
            segment = _Segment(first_sequence, path, _new_sparse_map(path, self._segment_bytes), 0)
        segment.first_sequence = first_sequence
        segment.path = path
        try:
            self._allocate(segment, needed_bytes)
        except OSError:
            self._close_segment(segment, unlink=True)
            raise
        _SEGMENT_HEADER.pack_into(segment.mm, 0, _SEGMENT_MAGIC, first_sequence)
        return segment

    def _allocate(self, segment: _Segment, end: int) -> None:
        """Give ``segment`` disk blocks up to ``end`` (rounded up to
        :data:`_ALLOCATION_CHUNK_BYTES`), raising ``_limit`` if it is the segment being
        written. Either thread; the file is opened by path, so a segment deleted meanwhile
        (by the loop thread, while sync() works on it) raises FileNotFoundError."""
        end = min(segment.size, -(-end // _ALLOCATION_CHUNK_BYTES) * _ALLOCATION_CHUNK_BYTES)
        start = segment.allocated
        if end <= start:
            return
        fd = os.open(segment.path, os.O_RDWR | os.O_CLOEXEC)
        try:
            _allocate_range(fd, start, end - start)
        finally:
            os.close(fd)
        with self._lock:
            if end > segment.allocated:
                segment.allocated = end
                if not self._closed and self._segments and self._segments[-1] is segment:
                    self._limit = end

    def _prepare_spare(self) -> None:
        """Create, map and allocate the start of the next segment, and take its first write
        faults (worker thread, from :meth:`sync`, the GIL released), so that starting a
        segment on the order path is a rename."""
        with self._lock:
            if self._spare is not None or self._closed:
                return  # (closing: no use for one)
        path = self._path / _SPARE_SEGMENT_FILE
        spare = _Segment(0, path, _new_sparse_map(path, self._segment_bytes), 0)
        try:
            self._allocate(spare, _PREFAULT_MIN_BYTES)
        except OSError:
            self._close_segment(spare, unlink=True)
            raise
        _populate_write(spare.address, spare.allocated)
        with self._lock:
            if self._closed:
                self._close_segment(spare, unlink=True)
            else:
                self._spare = spare

    def _prefault_ahead(self) -> None:
        """Allocate and take the write faults of the pages the next appends will write, in
        the worker thread (GIL released) instead of on the order path: a first write into a
        page of the map costs ~10 µs (~1 µs per decision), and the fsync that sync() just
        ran made every written page fault again on its next write. Covers 1.25 times what
        was appended since the last call (at least 256 KiB), up to the segment's end."""
        with self._lock:
            if self._closed:
                return
            segment = self._segments[-1]
            tail = self._tail
        last_first, last_tail = self._prefault_mark
        written = tail - last_tail if segment.first_sequence == last_first else tail
        self._prefault_mark = (segment.first_sequence, tail)
        ahead = min(max(written + written // 4, _PREFAULT_MIN_BYTES), _PREFAULT_MAX_BYTES)
        try:
            self._allocate(segment, tail + ahead)
        except FileNotFoundError:
            return  # no longer the segment written, and already removed
        except OSError as error:  # a full disk: the order path will find out and fail
            log.warning("outbox %s: cannot allocate disk space ahead: %s", self._path, error)
        start = tail & -mmap.PAGESIZE
        end = min(segment.allocated, tail + ahead)
        if end > start:
            _populate_write(segment.address + start, end - start)

    def _map_segment(self, first_sequence: int, path: Path) -> _Segment:
        """Map an existing segment and check its header."""
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        try:
            size = os.fstat(fd).st_size
            if size < _SEGMENT_HEADER_BYTES + _RECORD_HEADER_BYTES:
                # Created by a process that died before sizing it: nothing is in it.
                size = self._segment_bytes
                os.ftruncate(fd, size)
            if size >= 1 << 32:
                raise OutboxError(f"outbox segment {path}: {size} bytes, more than a segment can have")
            _allocate_range(fd, 0, _SEGMENT_HEADER_BYTES)  # (the header may be rewritten)
            mm = mmap.mmap(fd, size, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ | mmap.PROT_WRITE)
        finally:
            os.close(fd)
        header = _SEGMENT_HEADER.unpack_from(mm, 0)
        if header == _NO_SEGMENT_HEADER:
            _SEGMENT_HEADER.pack_into(mm, 0, _SEGMENT_MAGIC, first_sequence)
        elif header != (_SEGMENT_MAGIC, first_sequence):
            mm.close()
            raise OutboxError(
                f"outbox segment {path}: not a segment of this format, or its header does not match its name"
            )
        # Only the segment that will be written needs `allocated`; _zero_tail sets it.
        return _Segment(first_sequence, path, mm, _SEGMENT_HEADER_BYTES)

    def _close_segment(self, segment: _Segment, *, unlink: bool) -> None:
        segment.mm.close()
        if unlink:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(segment.path)

    def _zero_tail(self, segment: _Segment, offset: int) -> None:
        """Zero ``segment`` from ``offset`` to its end without writing megabytes: truncate to
        the next page boundary and extend again (a hole reads as zeros), allocate the start
        of what will be written, then zero the rest of the page through the map."""
        page_end = min(segment.size, -(-offset // mmap.PAGESIZE) * mmap.PAGESIZE)
        fd = os.open(segment.path, os.O_RDWR | os.O_CLOEXEC)
        try:
            if page_end < segment.size:
                os.ftruncate(fd, page_end)
                os.ftruncate(fd, segment.size)
            _allocate_range(fd, 0, page_end)  # blocks for the page zeroed below
        finally:
            os.close(fd)
        segment.allocated = page_end
        segment.mm[offset:page_end] = bytes(page_end - offset)

    # ------------------------------------------------------------------ opening

    def _open_state(self) -> tuple[int, int, bytes | None]:
        """Open (or create) the state file; return ``(acked, synced, boot_id)``, the boot id
        ``None`` for a new file."""
        state_path = self._path / _STATE_FILE
        self._state_fd = os.open(state_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        raw = os.pread(self._state_fd, _STATE.size, 0)
        if len(raw) < _STATE.size or raw == bytes(_STATE.size):
            fresh = _STATE.pack(_STATE_MAGIC, 0, 0, bytes(16)).ljust(_STATE_BYTES, b"\0")
            os.pwrite(self._state_fd, fresh, 0)
            return 0, 0, None
        magic, acked, synced, boot_id = _STATE.unpack(raw)
        if magic != _STATE_MAGIC:
            raise OutboxError(f"outbox {state_path}: not an outbox state file")
        return acked, synced, boot_id

    def _segment_files(self) -> list[tuple[int, Path]]:
        found = []
        for name in os.listdir(self._path):
            match = _SEGMENT_NAME.match(name)
            if match:
                found.append((int(match.group(1)), self._path / name))
        found.sort()
        return found

    def _recover(self) -> None:
        """Rebuild the in-memory state from the files; see *Recovery* in the module doc."""
        acked, synced, stored_boot_id = self._open_state()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._path / _SPARE_SEGMENT_FILE)  # from a previous process
        boot_id = _boot_id()
        # After a reboot only what a completed sync() flushed is known to be whole.
        rebooted = stored_boot_id is not None and boot_id is not None and stored_boot_id != boot_id
        trusted_through = synced if rebooted else None
        segments: list[_Segment] = []
        offsets = array("I")
        expected = 0  # next sequence; 0: no segment yet
        tail = 0
        files = self._segment_files()
        for position, (first, path) in enumerate(files):
            if segments and first != expected:
                for _, later in files[position:]:
                    log.warning(
                        "outbox %s: deleting %s, which does not continue the log at %d",
                        self._path,
                        later,
                        expected,
                    )
                    os.unlink(later)
                break
            if not segments:
                # Entries before the oldest segment were removed, even if `acked` says
                # otherwise (its update did not reach the disk before a power loss).
                acked = max(acked, first - 1)
                expected = first
            segment = self._map_segment(first, path)
            segments.append(segment)
            tail, expected = _scan(segment, expected, acked, trusted_through, offsets)
        last_sequence = expected - 1 if segments else acked
        if acked > last_sequence:
            # Only after a reboot: entries acked by JetStream are lost from the disk. Every
            # segment holds removed entries only; start afresh after `acked`, so that no
            # sequence JetStream has seen is used again.
            log.warning(
                "outbox %s: entries %d..%d were lost (not synced before a reboot); they were acked",
                self._path,
                last_sequence + 1,
                acked,
            )
            for segment in segments:
                self._close_segment(segment, unlink=True)
            segments = []
            offsets = array("I")
            last_sequence = acked
        if segments:
            if trusted_through is not None and last_sequence < synced:
                log.warning(
                    "outbox %s: recovered through %d after a reboot (synced: %d)",
                    self._path,
                    last_sequence,
                    synced,
                )
            self._zero_tail(segments[-1], tail)
        else:
            segments.append(self._create_segment(last_sequence + 1))
            tail = _SEGMENT_HEADER_BYTES
        self._install(segments, tail, last_sequence, acked, offsets)
        os.pwrite(self._state_fd, _UINT64.pack(acked), _STATE_ACKED_OFFSET)
        os.pwrite(self._state_fd, boot_id or bytes(16), _STATE_BOOT_ID_OFFSET)

    def _install(
        self, segments: list[_Segment], tail: int, last_sequence: int, acked: int, offsets: array
    ) -> None:
        self._segments = segments
        self._firsts = [segment.first_sequence for segment in segments]
        self._live_bytes = sum(segment.size for segment in segments)
        self._mm = segments[-1].mm
        self._limit = segments[-1].allocated
        self._tail = tail
        self._last_sequence = last_sequence
        self._acked = acked
        self._offsets = offsets
        self._index_base = acked
        self._current_path = segments[-1].path
        # The first sync flushes everything: what the previous process wrote may not be
        # on disk yet.
        self._unsynced_paths = [segment.path for segment in segments[:-1]]
        self._dir_dirty = True

    def _migrate_from_lmdb(self) -> None:
        """Copy an LMDB outbox (the format before this one) into a new log; see
        *Migration* in the module docstring."""
        import lmdb  # only for directories written by older versions

        # Anything in the new format here is from an interrupted migration: start over.
        for _, path in self._segment_files():
            os.unlink(path)
        for name in (_STATE_FILE, _SPARE_SEGMENT_FILE):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._path / name)
        try:
            env = lmdb.open(str(self._path), max_dbs=2, readonly=True, lock=False)
        except lmdb.Error as error:
            raise OutboxError(f"outbox {self._path}: cannot open the old LMDB outbox: {error}") from error
        try:
            with env.begin() as txn:
                try:
                    entries_db = env.open_db(b"entries", txn=txn, create=False)
                    meta_db = env.open_db(b"meta", txn=txn, create=False)
                except lmdb.NotFoundError:  # created, never written
                    entries_db = meta_db = None
                stored = txn.get(b"last_sequence", db=meta_db) if meta_db is not None else None
                last_sequence = _LMDB_UINT64.unpack(stored)[0] if stored is not None else 0
                cursor = txn.cursor(db=entries_db) if entries_db is not None else None
                has_entries = cursor is not None and cursor.first()
                acked = _LMDB_UINT64.unpack(cursor.key())[0] - 1 if has_entries else last_sequence
                self._open_state()
                os.pwrite(self._state_fd, _UINT64.pack(acked), _STATE_ACKED_OFFSET)
                first_segment = self._create_segment(acked + 1)
                self._install([first_segment], _SEGMENT_HEADER_BYTES, acked, acked, array("I"))
                batch: list[tuple[int, bytes]] = []
                appended: list[int] = []
                for key, value in cursor if has_entries else ():
                    sequence = _LMDB_UINT64.unpack(key)[0]
                    if sequence != self._last_sequence + len(batch) + 1:
                        raise OutboxError(f"outbox {self._path}: the LMDB outbox has a gap before {sequence}")
                    batch.append((sequence, value[_LMDB_APPENDED_NS_BYTES:]))
                    appended.append(_LMDB_UINT64.unpack(value[:_LMDB_APPENDED_NS_BYTES])[0])
                    if len(batch) == _MIGRATION_BATCH:
                        self._append_rolling(batch, sequence, appended)
                        batch, appended = [], []
                if batch:
                    self._append_rolling(batch, batch[-1][0], appended)
        except lmdb.Error as error:
            raise OutboxError(f"outbox {self._path}: cannot read the old LMDB outbox: {error}") from error
        finally:
            env.close()
        if self._last_sequence < last_sequence:
            raise OutboxError(
                f"outbox {self._path}: LMDB outbox ends at entry {self._last_sequence} but its last_sequence "
                f"is {last_sequence}"
            )
        os.pwrite(self._state_fd, _boot_id() or bytes(16), _STATE_BOOT_ID_OFFSET)
        self.sync()
        for name in (_LMDB_DATA_FILE, _LMDB_LOCK_FILE):
            with contextlib.suppress(FileNotFoundError):
                os.replace(self._path / name, self._path / (name + _MIGRATED_SUFFIX))
        _fsync_path(self._path)
        log.info(
            "outbox %s: migrated from LMDB (last_sequence %d, %d entries pending)",
            self._path,
            self._last_sequence,
            self.depth,
        )

    def _release(self) -> None:
        """Unmap and close everything, release the lock. Idempotent."""
        with self._lock:
            if self._released:
                return
            self._released = True
        self._closed = True
        self._limit = -1
        self._mm = None
        for segment in self._segments:
            with contextlib.suppress(Exception):
                segment.mm.close()
        if self._spare is not None:
            self._close_segment(self._spare, unlink=True)
        if self._state_fd >= 0:
            os.close(self._state_fd)
        os.close(self._lock_fd)


def _scan(
    segment: _Segment, expected: int, acked: int, trusted_through: int | None, offsets: array
) -> tuple[int, int]:
    """Walk ``segment``'s valid records from its start, appending the offsets of those
    after ``acked`` to ``offsets``; return ``(offset after the last valid record, next
    expected sequence)``."""
    mm = segment.mm
    size = segment.size
    offset = _SEGMENT_HEADER_BYTES
    unpack = _RECORD_HEADER.unpack_from
    limit = trusted_through if trusted_through is not None else 1 << 64
    while offset + _RECORD_HEADER_BYTES <= size:
        record_size, size_copy, sequence, _ = unpack(mm, offset)
        if (
            record_size != size_copy
            or record_size < _RECORD_HEADER_BYTES
            or offset + record_size > size
            or sequence != expected
            or sequence > limit
        ):
            break
        if sequence > acked:
            offsets.append(offset)
        expected += 1
        offset = (offset + record_size + 7) & _RECORD_ALIGN_MASK
    return offset, expected


def _new_sparse_map(path: Path, size: int) -> mmap.mmap:
    """Create (or truncate) ``path`` as a sparse file of ``size`` bytes and map it shared
    (allocate before writing through the map)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        os.ftruncate(fd, size)
        return mmap.mmap(fd, size, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ | mmap.PROT_WRITE)
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(path)
        raise
    finally:
        os.close(fd)


def _map_address(mm: mmap.mmap) -> int:
    """The address of a map (for madvise); the temporary buffer export is released at once,
    so the map can still be closed."""
    view = ctypes.c_char.from_buffer(mm)
    try:
        return ctypes.addressof(view)
    finally:
        del view


def _populate_write(address: int, length: int) -> None:
    """``madvise(MADV_POPULATE_WRITE)``: take the write faults of a range without writing
    to it (so it is safe while the loop thread appends there), through ctypes, which
    releases the GIL. Best effort: a kernel before 5.14 (EINVAL) just faults on first
    write, as without it."""
    global _populate_supported
    if not _populate_supported or length <= 0:
        return
    if _madvise(address, length, _MADV_POPULATE_WRITE) != 0:
        errno = ctypes.get_errno()
        if errno == EINVAL:
            _populate_supported = False
        else:
            log.debug("madvise(MADV_POPULATE_WRITE) failed: %s", os.strerror(errno))


def _fsync_path(path: Path) -> None:
    """fsync a file or directory by path (a file removed meanwhile needs no flush)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _boot_id() -> bytes | None:
    """The kernel's id of this boot (Linux), or None where there is none: then a reboot
    cannot be told from a process restart, and the unsynced tail is trusted as after a
    process crash."""
    try:
        with open(_BOOT_ID_PATH, encoding="ascii") as file:
            return uuid.UUID(file.read().strip()).bytes
    except (OSError, ValueError):
        return None


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
