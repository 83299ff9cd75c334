"""The ledger's ingest worker: JetStream streams -> canonical entries -> LMDB, off the order path.

Sources. One durable pull consumer per stream (:data:`DEFAULT_SOURCES`): gateway decisions
(``PRETRADE_DECISIONS``), gateway events (``PRETRADE_EVENTS``: executions applied, rules
loaded) and halt events (``PRETRADE_HALT_EVENTS``). A stream that does not exist yet is
waited for, so the worker can start before the gateway or the halt manager.

Exactly once. Every message becomes at most one entry:

* **ack after commit**: a batch is acknowledged (``AckPolicy.ALL``: one ack for the whole
  batch) only after the LMDB transaction holding its entries has been fsync'ed, so a crash
  at any point loses nothing; what was not acknowledged is delivered again;
* **de-duplication** by identity (``ledger.entries``: gateway id and sequence, or the halt
  event id) in a table written in the same transaction as the entries, so whatever is
  delivered again -- after a crash between commit and ack, a lost ack, or a gateway
  re-publishing beyond JetStream's duplicate window -- is recognised and dropped;
* **resume from LMDB**: the last stream sequence committed per source is stored in the
  same transaction too. On every (re)subscription the worker re-creates its durable
  consumer to start right after that position, so a restart neither waits for the
  server's ack timeout nor depends on consumer state that may be lost or stale. If the
  stream has been reset below that position, the worker starts again from the beginning
  (de-duplication absorbs the overlap) and logs it.

A payload that is not a valid message of its stream's kind is skipped, counted
(``counters.malformed_skipped``) and logged; the same identity arriving with different
bytes is kept out (it cannot be two entries), counted (``counters.identity_conflicts``) and
logged as an error: a gateway whose outbox was reset under the same gateway id.

Group commit. Pull requests run ahead of commits (up to ``max_uncommitted`` messages per
source requested, buffered or committing); a single committer takes whatever the sources
have buffered, up to ``commit_batch_max_entries``, into ONE write transaction (entries,
tree nodes, indexes, de-duplication table and positions; one fsync pair), so durable
ingest costs one fsync per commit, not per entry, and commits grow with the load.
Decoding, hashing and the transaction run in a worker thread, keeping the event loop free
for NATS I/O; they are CPU-bound Python, so the loop and the commit share one core. What
each entry costs is therefore what bounds ingest (docs/ledger.md, "Throughput"): the
connection hands the pull consumers' deliveries over as bare bodies and reply subjects
(``ledger.natsraw``), decisions are decoded into index keys in one loop per batch
(``ledger.index.index_payloads``), and one ack per source and commit covers the batch.

Checkpoints. After ``checkpoint_every_entries`` new entries, or ``checkpoint_interval_ms``
after the last checkpoint when there are new entries, the committer stores a checkpoint
(signed when the ledger has a signer) and publishes its note on
``pretrade.v1.ledger.checkpoint`` (core NATS; the ledger keeps every checkpoint itself).
Stopping checkpoints whatever is not covered yet.

Lag. ``lag()`` reports, per source, the messages not committed yet (the server's pending
count at the last batch taken, plus what is received but uncommitted) and the wall-clock
age of the newest committed message when it was committed; ``consumer_lag()`` asks the
server (pending plus unacknowledged).

Health. Every ``health_interval_s`` (``ledger.health``, default 5 s) the worker publishes
``ledger_lag_s`` (age of the oldest message not committed yet) and ``ledger_verified`` (1.0
when an incremental verify of the entries appended since the last verified index passed,
0.0 when it failed; the verify runs in a thread with its own read transaction) as FIRM
``StrategyMetric`` messages on ``pretrade.v1.metrics.strategy.firm``, for ``db_watchdog``.
A failure to measure or publish is logged and never stops ingest.

Metrics. ``ledger.metrics.LedgerCollector`` exports the counters, the ledger's size, the
last checkpoint, the last health figures and the commit durations to Prometheus, reading
them when scraped; the only work ingest does for it is timing each commit.

Failure. If a commit fails (disk full, LMDB error) nothing of that batch is acknowledged
and the worker stops (``run()`` raises): a ledger that cannot write must not pretend to
ingest. Restarting resumes from what is committed.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import logging
import os
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from gateway.subjects import (
    DECISIONS_STREAM,
    DECISIONS_STREAM_SUBJECTS,
    EVENTS_STREAM,
    EVENTS_STREAM_SUBJECTS,
    LEDGER_CHECKPOINT_SUBJECT,
)
from halts.subjects import EVENTS_STREAM as HALT_EVENTS_STREAM
from halts.subjects import EVENTS_SUBJECT_WILDCARD as HALT_EVENTS_SUBJECTS
from gateway.aio import cancel_until_done
from ledger.entries import EntryKind
from ledger.errors import EntryFormatError, LedgerLockedError
from ledger.health import (
    DEFAULT_HEALTH_INTERVAL_S,
    HEALTH_QUERY_TIMEOUT_S,
    HEALTH_SUBJECT,
    METRIC_LEDGER_LAG_S,
    METRIC_LEDGER_VERIFIED,
    TailVerifier,
    health_metric,
)
from ledger.index import IndexedBatch, LedgerIndexes, index_payloads
from ledger.checkpoint import Checkpoint, NoteSigner
from ledger.merkle import DEFAULT_HASH_NAME
from ledger.metrics import DurationHistogram
from ledger.natsraw import RawDeliveryParser
from ledger.store import LMDB_DATA_FILE, LedgerStore, StoredCheckpoint

log = logging.getLogger(__name__)

#: Checkpoint after this many new entries ...
DEFAULT_CHECKPOINT_EVERY_ENTRIES = 10_000
#: ... or this long after the last checkpoint when there are new entries, milliseconds.
DEFAULT_CHECKPOINT_INTERVAL_MS = 1_000
#: Origin line of the checkpoints (c2sp.org/tlog-checkpoint): names the log.
DEFAULT_ORIGIN = "pretrade/ledger"
#: Messages asked for per pull request.
DEFAULT_FETCH_BATCH_MAX = 5_000
#: Messages of one source requested, buffered or being committed at most (bounds memory;
#: also the consumer's max_ack_pending, since acknowledgement follows commit).
DEFAULT_MAX_UNCOMMITTED = 50_000
#: Entries merged into one write transaction (one fsync pair) at most.
DEFAULT_COMMIT_BATCH_MAX_ENTRIES = 20_000
#: How long one pull request waits for messages when the stream is idle, seconds; a
#: consumer silent for twice this while owed messages is re-created.
DEFAULT_PULL_EXPIRES_S = 5.0
#: The server redelivers a message not acknowledged within this long, seconds (only
#: matters within one run: a restart re-creates the consumer from the LMDB position).
DEFAULT_ACK_WAIT_S = 60.0
#: Wait between attempts while a stream does not exist or NATS fails, seconds.
DEFAULT_RETRY_INTERVAL_S = 1.0
#: Wait between reconnect attempts, seconds.
DEFAULT_RECONNECT_WAIT_S = 0.5

WRITER_LOCK_FILE = "writer.lock"
CONSUMER_NAME_PREFIX = "pretrade-ledger-"


@dataclass(frozen=True)
class IngestSource:
    """One stream the ledger ingests, and what its messages are."""

    name: str  # also the durable consumer's suffix and the position key in LMDB
    stream: str
    filter_subject: str
    kind: EntryKind

    @property
    def durable_name(self) -> str:
        return CONSUMER_NAME_PREFIX + self.name


DECISIONS_SOURCE = IngestSource("decisions", DECISIONS_STREAM, DECISIONS_STREAM_SUBJECTS[0], EntryKind.DECISION)
GATEWAY_EVENTS_SOURCE = IngestSource("gateway-events", EVENTS_STREAM, EVENTS_STREAM_SUBJECTS[0], EntryKind.GATEWAY_EVENT)
HALT_EVENTS_SOURCE = IngestSource("halt-events", HALT_EVENTS_STREAM, HALT_EVENTS_SUBJECTS, EntryKind.HALT_EVENT)
DEFAULT_SOURCES = (DECISIONS_SOURCE, GATEWAY_EVENTS_SOURCE, HALT_EVENTS_SOURCE)


@dataclass(frozen=True)
class ReceivedBatch:
    """Messages of one source as the writer needs them: their bodies, and the stream
    sequence that is the source's position once they are committed (the last one's)."""

    source: IngestSource
    last_stream_sequence: int
    payloads: Sequence[bytes]


@dataclass
class IngestCounters:
    """Running totals since the worker started (read them, do not write them)."""

    entries_appended: int = 0
    duplicates_dropped: int = 0
    malformed_skipped: int = 0
    identity_conflicts: int = 0
    batches_committed: int = 0
    checkpoints_created: int = 0


@dataclass(frozen=True)
class CommitResult:
    first_index: int
    appended: int
    duplicates: int
    malformed: int
    conflicts: int


@dataclass(frozen=True)
class SourceLag:
    """How far one source's ledger is behind its stream."""

    pending_messages: int  # in the stream (or fetched) and not yet committed
    last_stream_sequence: int  # of the newest message committed
    last_committed_age_s: float | None  # wall-clock age of that message when committed


def acquire_writer_lock(ledger_path: str | os.PathLike[str]) -> int:
    """Exclusively ``flock`` ``<ledger>/writer.lock``; return the fd (closing it unlocks;
    the kernel drops it when the process dies, even by ``kill -9``)."""
    directory = Path(ledger_path)
    directory.mkdir(parents=True, exist_ok=True)
    fd = os.open(directory / WRITER_LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise LedgerLockedError(f"ledger {directory} is in use by another ingest worker: one writer per ledger") from None
    return fd


class LedgerWriter:
    """The synchronous half of ingest: turn received messages into committed entries.

    One thread at a time (the worker's committer); readers may run concurrently in other
    threads or processes. Usable without NATS (tests, tools that replay a stream copy).
    """

    def __init__(
        self,
        store: LedgerStore,
        *,
        origin: str = DEFAULT_ORIGIN,
        checkpoint_every_entries: int = DEFAULT_CHECKPOINT_EVERY_ENTRIES,
        checkpoint_interval_ms: int = DEFAULT_CHECKPOINT_INTERVAL_MS,
        clock_ms=lambda: time.time_ns() // 1_000_000,
    ) -> None:
        if checkpoint_every_entries < 1 or checkpoint_interval_ms < 0:
            raise ValueError("checkpoint_every_entries must be >= 1 and checkpoint_interval_ms >= 0")
        self.store = store
        self.indexes = LedgerIndexes(store)
        self.origin = origin
        self.counters = IngestCounters()
        #: Seconds per :meth:`commit`, for ``pretrade_ledger_commit_duration_seconds``.
        self.commit_durations = DurationHistogram()
        self._checkpoint_every_entries = checkpoint_every_entries
        self._checkpoint_interval_ms = checkpoint_interval_ms
        self._clock_ms = clock_ms
        self._positions = self.indexes.positions()
        latest = store.latest_checkpoint()
        #: The latest checkpoint (None while the ledger has none), for the metrics.
        self.last_checkpoint: Checkpoint | None = latest.checkpoint if latest else None
        self._checkpointed_size = latest.checkpoint.tree_size if latest else 0
        self._checkpointed_ms = self._clock_ms()
        self._lock_fd: int | None = None

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        *,
        signer: NoteSigner | None = None,
        hash_name: str = DEFAULT_HASH_NAME,
        **options,
    ) -> LedgerWriter:
        """The writer of the ledger in directory ``path``, created (hashing with
        ``hash_name``) if there is none yet. Holds the directory's writer lock
        (:class:`LedgerLockedError` if another worker has it) until :meth:`close`."""
        lock_fd = acquire_writer_lock(path)
        try:
            if (Path(path) / LMDB_DATA_FILE).exists():
                store = LedgerStore.open(path, signer=signer)
            else:
                store = LedgerStore.create(path, hash_name=hash_name, signer=signer)
            try:
                writer = cls(store, **options)
            except BaseException:
                store.close()
                raise
        except BaseException:
            os.close(lock_fd)
            raise
        writer._lock_fd = lock_fd
        return writer

    def close(self) -> None:
        """Close the store and release the writer lock (when :meth:`open` took it)."""
        self.store.close()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def position(self, source_name: str) -> int:
        """The last stream sequence of ``source_name`` committed (0: none)."""
        return self._positions.get(source_name, 0)

    def commit(self, batches: Sequence[ReceivedBatch]) -> CommitResult:
        """Append the new entries among ``batches`` and advance the positions, in one
        durable transaction. Duplicates (in the ledger or within ``batches``) and malformed
        payloads are counted and left out.

        Positions advance even when nothing new was appended: those messages are handled.
        Such a commit writes nothing to LMDB (no fsync for nothing), so after a restart the
        same duplicates are delivered and dropped again.
        """
        started = time.perf_counter()
        indexed = IndexedBatch()
        positions = dict(self._positions)
        duplicates = malformed = conflicts = 0
        for batch in batches:
            source = batch.source
            positions[source.name] = max(positions.get(source.name, 0), batch.last_stream_sequence)
            errors: list[EntryFormatError] = []
            index_payloads(source.kind, batch.payloads, errors.append, into=indexed)
            for exc in errors:
                malformed += 1
                log.warning(
                    "%s: a message up to sequence %d is not a valid entry, skipped: %s",
                    source.stream,
                    batch.last_stream_sequence,
                    exc,
                )
        entries, identities = indexed.entries, indexed.identities
        kept: list[int] | None = None  # positions of the entries to append (None: all)
        if len(set(identities)) != len(identities):  # the same identity twice: keep the first
            first_at: dict[bytes, int] = {}
            kept = []
            for position, identity in enumerate(identities):
                earlier = first_at.setdefault(identity, position)
                if earlier == position:
                    kept.append(position)
                elif self._is_same(identity, entries[position], entries[earlier], "an earlier message of the batch"):
                    duplicates += 1
                else:
                    conflicts += 1
        with self.store.read_transaction() as txn:
            existing = self.indexes.find_identities(txn, identities)
        if existing:
            still_kept = []
            for position in range(len(identities)) if kept is None else kept:
                index = existing.get(identities[position])
                if index is None:
                    still_kept.append(position)
                elif self._is_same(identities[position], entries[position], self.store.entry(index), f"entry {index}"):
                    duplicates += 1
                else:
                    conflicts += 1
            kept = still_kept
        if kept is not None:
            indexed = indexed.select(kept)
        first_index = self.store.append_batch(indexed.entries, also_write=self.indexes.writer(indexed, positions))
        appended = len(indexed)
        self._positions = positions
        counters = self.counters
        counters.entries_appended += appended
        counters.duplicates_dropped += duplicates
        counters.identity_conflicts += conflicts
        counters.malformed_skipped += malformed
        counters.batches_committed += 1
        self.commit_durations.observe(time.perf_counter() - started)
        return CommitResult(first_index, appended, duplicates, malformed, conflicts)

    @staticmethod
    def _is_same(identity: bytes, entry: bytes, stored_entry: bytes, where: str) -> bool:
        """Whether a repeated identity is a true duplicate; logs a conflict if not."""
        if entry == stored_entry:
            return True
        log.error(
            "identity %r arrived with different bytes than %s: kept out (was the gateway's outbox "
            "reset under the same gateway id?)",
            identity,
            where,
        )
        return False

    def checkpoint_due_in_ms(self) -> float | None:
        """Milliseconds until a checkpoint is due by time (0: now), None if none is pending."""
        if self.store.size() == self._checkpointed_size:
            return None
        return max(0, self._checkpointed_ms + self._checkpoint_interval_ms - self._clock_ms())

    def checkpoint_due(self, now_ms: int | None = None) -> bool:
        """Whether enough entries or enough time passed for a checkpoint (module docstring);
        a read, cheap enough for the event loop."""
        size = self.store.size()
        if size == self._checkpointed_size:
            return False
        now_ms = self._clock_ms() if now_ms is None else now_ms
        return (
            size - self._checkpointed_size >= self._checkpoint_every_entries
            or now_ms - self._checkpointed_ms >= self._checkpoint_interval_ms
        )

    def checkpoint_if_due(self, *, now: bool = False) -> StoredCheckpoint | None:
        """Create a checkpoint if :meth:`checkpoint_due`, or with ``now`` whenever there are
        uncheckpointed entries (at shutdown)."""
        now_ms = self._clock_ms()
        if now:
            if self.store.size() == self._checkpointed_size:
                return None
        elif not self.checkpoint_due(now_ms):
            return None
        checkpoint = self.store.create_checkpoint(self.origin, timestamp_ms=now_ms)
        self._checkpointed_size = checkpoint.checkpoint.tree_size
        self._checkpointed_ms = now_ms
        self.last_checkpoint = checkpoint.checkpoint
        self.counters.checkpoints_created += 1
        return checkpoint


STATUS_HEADER = "Status"
#: Pull-request status codes (JetStream): an idle heartbeat, and a request that is over
#: (nothing to deliver now, or expired). Any other status (409: consumer deleted,
#: leadership change, limits; 503: no JetStream) re-creates the consumer.
_STATUS_HEARTBEAT = "100"
_STATUS_REQUEST_ENDED = frozenset(("404", "408"))


class _PullConsumer:
    """The messages of one durable pull consumer, flowing into a buffer the committer takes.

    nats-py's ``fetch()`` waits for each message with its own timer and costs about 40 µs
    a message, and even a plain subscription builds a ``Msg`` (parsed headers, decoded
    subjects) and queues it for a task, about 10 µs; here the connection's
    :class:`~ledger.natsraw.RawDeliveryParser` appends each delivered body and reply subject
    straight to this consumer's two lists (a ``Msg`` callback is the fallback on a client
    without it), and pull requests are kept outstanding ahead of need.
    A request asks for ``batch_max`` messages and expires after ``expires_s``; a new one
    goes out whenever fewer than half a batch of requested messages are still to come,
    provided that buffered, committing and requested messages stay within
    ``max_uncommitted`` (bounded memory, and within the consumer's max_ack_pending).
    Requests are served in order, so delivered messages count against the oldest one.
    """

    def __init__(
        self, nc, source: IngestSource, *, batch_max: int, max_uncommitted: int, expires_s: float, wake: asyncio.Event
    ) -> None:
        self.source = source
        self._nc = nc
        self._request_subject = f"$JS.API.CONSUMER.MSG.NEXT.{source.stream}.{source.durable_name}"
        self._request = json.dumps({"batch": batch_max, "expires": int(expires_s * 1e9)}).encode()
        self._batch_max = batch_max
        self._max_uncommitted = max_uncommitted
        self._inbox = nc.new_inbox()
        self._wake = wake
        self._owed: deque[int] = deque()  # per outstanding request, messages still to come
        self._owed_total = 0
        #: Received, not taken yet: bodies and reply subjects (RawSink; appended in place).
        self.payloads: list[bytes] = []
        self.replies: list[bytes] = []
        self._counted = 0  # of the buffered messages, how many were counted as delivered
        self._committing = 0
        self._subscription = None
        self._parser: RawDeliveryParser | None = None
        self._stopped = False
        self.broken = asyncio.Event()  # set when the consumer must be re-created
        self.last_heard = time.monotonic()
        self.server_pending = 0  # the server's pending count at the last message taken

    @property
    def awaiting_requested(self) -> bool:
        return self._owed_total > 0

    @property
    def uncommitted(self) -> int:
        return len(self.payloads) + self._committing

    async def start(self) -> None:
        self._subscription = await self._nc.subscribe(self._inbox, cb=self._on_message)
        parser = getattr(self._nc, "_ps", None)
        if isinstance(parser, RawDeliveryParser):
            self._parser = parser
            parser.attach(self._subscription._id, self)
        await self._request_more()

    async def stop(self) -> None:
        self._stopped = True
        if self._parser is not None:
            self._parser.detach(self._subscription._id)
        if self._subscription is not None:
            try:
                await self._subscription.unsubscribe()
            except (nats.errors.Error, OSError):
                pass  # the connection is gone, and the subscription with it

    async def _on_message(self, msg: Msg) -> None:
        """The fallback path: a client without :class:`RawDeliveryParser`."""
        status = msg.headers.get(STATUS_HEADER) if msg.headers else None
        if status is None:
            self.payloads.append(msg.data)
            self.replies.append(msg.reply.encode())
            await self.delivered()
        else:
            await self.status(status, msg.headers.get("Description", ""))

    async def delivered(self) -> None:
        """Messages were appended to the buffer (RawSink)."""
        self.last_heard = time.monotonic()
        count = len(self.payloads) - self._counted
        self._counted += count
        owed = self._owed
        while count and owed:
            settled = min(count, owed[0])
            count -= settled
            self._owed_total -= settled
            if settled == owed[0]:
                owed.popleft()
            else:
                owed[0] -= settled
        self._wake.set()
        await self._request_more()

    async def status(self, code: str, description: str) -> None:
        """A status message on the inbox (RawSink)."""
        self.last_heard = time.monotonic()
        if code in _STATUS_REQUEST_ENDED:
            if self._owed:
                self._owed_total -= self._owed.popleft()
        elif code != _STATUS_HEARTBEAT:
            log.warning("%s consumer: %s %s; re-creating it", self.source.stream, code, description)
            self.broken.set()
            return
        await self._request_more()

    async def _request_more(self) -> None:
        while (
            not self._stopped
            and self._owed_total < self._batch_max // 2
            and self.uncommitted + self._owed_total + self._batch_max <= self._max_uncommitted
        ):
            self._owed.append(self._batch_max)
            self._owed_total += self._batch_max
            try:
                await self._nc.publish(self._request_subject, self._request, reply=self._inbox)
            except (nats.errors.Error, OSError) as exc:
                log.warning("%s consumer: pull request failed (%s); re-creating it", self.source.stream, exc)
                self.broken.set()
                return

    def take(self, limit: int) -> tuple[list[bytes], bytes | None]:
        """Up to ``limit`` buffered bodies, oldest first, handed to the committer, and the
        reply subject of the last one (None when nothing was buffered)."""
        count = min(limit, len(self.payloads))
        if count == 0:
            return [], None
        if count == len(self.payloads):
            taken = self.payloads
            last_reply = self.replies[-1]
            self.payloads = []
            self.replies = []
        else:
            taken = self.payloads[:count]
            last_reply = self.replies[count - 1]
            del self.payloads[:count], self.replies[:count]
        self._counted -= count
        self._committing += count
        return taken, last_reply

    async def committed(self, count: int) -> None:
        """``count`` taken messages are committed (or given up): make room for more."""
        self._committing -= count
        await self._request_more()


@dataclass
class _TakenBatch:
    """Messages of one consumer in one commit."""

    consumer: _PullConsumer
    count: int
    last_message: Msg  # the last message (its reply subject): acknowledges the whole batch
    received: ReceivedBatch
    published_ns: int  # stream time of the last message


@dataclass
class _SourceLagState:
    last_stream_sequence: int = 0
    last_committed_age_s: float | None = None


class LedgerIngestWorker:
    """Runs the ingest of :data:`DEFAULT_SOURCES` into a ledger (see the module docstring).

    Usage::

        worker = LedgerIngestWorker(LedgerWriter(store))
        await worker.start("nats://127.0.0.1:4222")   # returns at once; connects in background
        ...
        await worker.stop()                           # then close the writer

    or ``await worker.run(url)`` until cancelled. Call from one event loop.
    """

    def __init__(
        self,
        writer: LedgerWriter,
        *,
        sources: Sequence[IngestSource] = DEFAULT_SOURCES,
        fetch_batch_max: int = DEFAULT_FETCH_BATCH_MAX,
        max_uncommitted: int = DEFAULT_MAX_UNCOMMITTED,
        commit_batch_max_entries: int = DEFAULT_COMMIT_BATCH_MAX_ENTRIES,
        pull_expires_s: float = DEFAULT_PULL_EXPIRES_S,
        ack_wait_s: float = DEFAULT_ACK_WAIT_S,
        retry_interval_s: float = DEFAULT_RETRY_INTERVAL_S,
        client_name: str = "pretrade-ledger",
        health_interval_s: float | None = DEFAULT_HEALTH_INTERVAL_S,
        health_verify_from: int | None = None,
    ) -> None:
        if max_uncommitted < 2 * fetch_batch_max:
            raise ValueError("max_uncommitted must be at least twice fetch_batch_max")
        if health_interval_s is not None and health_interval_s < 0:
            raise ValueError("health_interval_s must be >= 0 (0 or None: no health metrics)")
        self.writer = writer
        self.sources = tuple(sources)
        self._fetch_batch_max = fetch_batch_max
        self._max_uncommitted = max_uncommitted
        self._commit_batch_max_entries = commit_batch_max_entries
        self._pull_expires_s = pull_expires_s
        self._ack_wait_s = ack_wait_s
        self._retry_interval_s = retry_interval_s
        self._client_name = client_name
        self._nc = None
        self._consumers: dict[str, _PullConsumer] = {}
        self._lag_states = {source.name: _SourceLagState() for source in self.sources}
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task] = []
        self._thread_work: asyncio.Future | None = None
        self._failure: BaseException | None = None
        self._stopped = asyncio.Event()
        self._connected = asyncio.Event()
        self._health_interval_s = health_interval_s or None
        #: The incremental verifier behind ``ledger_verified`` (None: health is off).
        self.verifier = TailVerifier(writer.store, health_verify_from) if self._health_interval_s else None
        self._verify_work: asyncio.Future | None = None
        self.health_published = 0  # metric messages published
        #: The last ``ledger_lag_s`` measured, and when (Unix ns): ``(lag_s, measured_ns)``,
        #: None before the first measurement (and always when health is off).
        self.last_lag: tuple[float, int] | None = None

    @property
    def counters(self) -> IngestCounters:
        return self.writer.counters

    @property
    def failed(self) -> BaseException | None:
        """The commit error that stopped the worker, if any."""
        return self._failure

    # --- lifecycle ----------------------------------------------------------------------------

    async def start(self, nats_url: str | Sequence[str]) -> None:
        """Connect (in the background, retrying forever) and start ingesting."""
        if self._tasks:
            raise RuntimeError("LedgerIngestWorker.start() called twice")
        servers = [nats_url] if isinstance(nats_url, str) else list(nats_url)
        self._tasks.append(asyncio.create_task(self._connect_and_ingest(servers), name="ledger-ingest"))

    async def wait_connected(self, timeout_s: float) -> bool:
        try:
            await asyncio.wait_for(self._connected.wait(), timeout_s)
        except TimeoutError:
            return False
        return True

    async def run(self, nats_url: str | Sequence[str]) -> None:
        """Ingest until cancelled or until a commit fails (then raise its error)."""
        await self.start(nats_url)
        try:
            await self._stopped.wait()
        finally:
            await self.stop()
        if self._failure is not None:
            raise self._failure

    async def stop(self) -> None:
        """Stop pulling and committing, close the connection. Messages not committed are
        not acknowledged (they are delivered again next time). Idempotent."""
        tasks, self._tasks = self._tasks, []
        await cancel_until_done(tasks)
        work = self._thread_work
        if work is not None:  # the store must outlive a transaction in progress
            await asyncio.wait([work])
            if not work.cancelled():
                work.exception()  # retrieved: the commit loop already reported it
        await self._stop_verify()
        for consumer in self._consumers.values():
            await consumer.stop()
        self._consumers.clear()
        if self._failure is None and self._nc is not None:
            # Cover the last entries: a stopped ledger should not leave them unprovable
            # until the next start.
            checkpoint = await asyncio.to_thread(self.writer.checkpoint_if_due, now=True)
            if checkpoint is not None and self._nc.is_connected:
                await self._publish_checkpoint(checkpoint)
        if self._nc is not None and not self._nc.is_closed:
            try:
                await asyncio.wait_for(self._nc.close(), self._retry_interval_s * 2)
            except (TimeoutError, nats.errors.Error, OSError) as exc:
                log.info("NATS connection closed with %s", exc)
        self._stopped.set()

    # --- observability ------------------------------------------------------------------------

    def lag(self) -> dict[str, SourceLag]:
        """Per source, how far the ledger is behind (see the module docstring)."""
        result = {}
        for name, state in self._lag_states.items():
            consumer = self._consumers.get(name)
            pending = consumer.server_pending + consumer.uncommitted if consumer is not None else 0
            result[name] = SourceLag(pending, state.last_stream_sequence, state.last_committed_age_s)
        return result

    async def consumer_lag(self) -> dict[str, int]:
        """Per source, the server's count of messages the ledger has not acknowledged
        (pending + delivered-unacknowledged); sources without a consumer are left out."""
        if self._nc is None:
            return {}
        js = self._nc.jetstream()
        result = {}
        for source in self.sources:
            try:
                info = await js.consumer_info(source.stream, source.durable_name)
            except nats.js.errors.NotFoundError:
                continue
            result[source.name] = info.num_pending + info.num_ack_pending
        return result

    # --- connection and sources ---------------------------------------------------------------

    async def _connect_and_ingest(self, servers: list[str]) -> None:
        nc = NATS()
        nc._ps = RawDeliveryParser(nc)  # the fast receive path of the pull consumers (ledger.natsraw)
        await nc.connect(
            servers=servers,
            name=self._client_name,
            allow_reconnect=True,
            max_reconnect_attempts=-1,
            reconnect_time_wait=DEFAULT_RECONNECT_WAIT_S,
            error_cb=self._on_nats_error,
            reconnected_cb=self._on_reconnected,
        )
        self._nc = nc
        self._connected.set()
        log.info("ledger ingest connected to %s", self._nc.connected_url.netloc if self._nc.connected_url else servers)
        self._tasks.append(asyncio.create_task(self._commit_loop(), name="ledger-commit"))
        if self._health_interval_s:
            self._tasks.append(asyncio.create_task(self._health_loop(), name="ledger-health"))
        for source in self.sources:
            self._tasks.append(asyncio.create_task(self._run_source(source), name=f"ledger-source-{source.name}"))

    async def _on_nats_error(self, error: Exception) -> None:
        log.debug("NATS client error: %s: %s", type(error).__name__, error)

    async def _on_reconnected(self) -> None:
        # Pull requests do not survive a reconnect: start every consumer afresh.
        log.info("NATS reconnected; re-creating the ledger's consumers")
        for consumer in self._consumers.values():
            consumer.broken.set()

    async def _run_source(self, source: IngestSource) -> None:
        """Keep a healthy consumer for ``source``, re-creating it after any trouble."""
        waiting_logged = False
        while True:
            consumer = None
            try:
                if not await self._create_consumer(source):
                    if not waiting_logged:
                        log.info("stream %s does not exist yet; waiting for it", source.stream)
                        waiting_logged = True
                    await asyncio.sleep(self._retry_interval_s)
                    continue
                waiting_logged = False
                consumer = _PullConsumer(
                    self._nc,
                    source,
                    batch_max=self._fetch_batch_max,
                    max_uncommitted=self._max_uncommitted,
                    expires_s=self._pull_expires_s,
                    wake=self._wake,
                )
                self._consumers[source.name] = consumer
                await consumer.start()
                await self._supervise(consumer)
            except (nats.errors.Error, nats.js.errors.Error, OSError, TimeoutError) as exc:
                log.warning("ingest of %s interrupted (%s: %s); retrying", source.stream, type(exc).__name__, exc)
                await asyncio.sleep(self._retry_interval_s)
            finally:
                if consumer is not None:
                    if self._consumers.get(source.name) is consumer:
                        del self._consumers[source.name]
                    await consumer.stop()

    async def _supervise(self, consumer: _PullConsumer) -> None:
        """Return when ``consumer`` broke, or went silent although it is owed messages
        (every pull request ends with messages or a status within its expiry)."""
        while not consumer.broken.is_set():
            try:
                # asyncio.timeout, not wait_for: wait_for can swallow a cancellation that
                # coincides with the wait ending (Python 3.11), and stop() would hang.
                async with asyncio.timeout(self._pull_expires_s):
                    await consumer.broken.wait()
            except TimeoutError:
                silent_s = time.monotonic() - consumer.last_heard
                if consumer.awaiting_requested and silent_s > 2 * self._pull_expires_s:
                    log.warning("%s consumer silent for %.1f s; re-creating it", consumer.source.stream, silent_s)
                    return

    async def _create_consumer(self, source: IngestSource) -> bool:
        """(Re-)create the durable consumer to start after the position LMDB holds; False
        while the stream does not exist."""
        js = self._nc.jetstream()
        try:
            stream_info = await js.stream_info(source.stream)
        except nats.js.errors.NotFoundError:
            return False
        position = self.writer.position(source.name)
        last_sequence = stream_info.state.last_seq
        if position > last_sequence:
            log.error(
                "stream %s ends at sequence %d but the ledger has ingested up to %d: the stream was "
                "reset; ingesting it again from the start (duplicates are dropped)",
                source.stream,
                last_sequence,
                position,
            )
            position = 0
        elif position + 1 < stream_info.state.first_seq:
            log.error(
                "stream %s starts at sequence %d but the ledger has ingested only up to %d: messages "
                "%d..%d were removed from the stream before the ledger saw them",
                source.stream,
                stream_info.state.first_seq,
                position,
                position + 1,
                stream_info.state.first_seq - 1,
            )
        try:
            await js.delete_consumer(source.stream, source.durable_name)
        except nats.js.errors.NotFoundError:
            pass
        await js.add_consumer(
            source.stream,
            ConsumerConfig(
                durable_name=source.durable_name,
                description=f"pretrade ledger ingest of {source.stream}",
                deliver_policy=DeliverPolicy.BY_START_SEQUENCE if position else DeliverPolicy.ALL,
                opt_start_seq=position + 1 if position else None,
                ack_policy=AckPolicy.ALL,
                ack_wait=self._ack_wait_s,
                max_ack_pending=self._max_uncommitted,
                filter_subject=source.filter_subject,
            ),
        )
        log.info("ingesting %s from stream sequence %d", source.stream, position + 1)
        return True

    # --- committing ---------------------------------------------------------------------------

    async def _commit_loop(self) -> None:
        writer = self.writer
        try:
            while True:
                due_ms = writer.checkpoint_due_in_ms()
                try:
                    async with asyncio.timeout(None if due_ms is None else due_ms / 1000):  # see _supervise
                        await self._wake.wait()
                except TimeoutError:
                    pass
                self._wake.clear()
                batches = self._take_batches()
                if batches:
                    await self._in_thread(writer.commit, [batch.received for batch in batches])
                    await self._acknowledge(batches)
                    if any(consumer.uncommitted for consumer in self._consumers.values()):
                        self._wake.set()  # more arrived while committing, or over the batch limit
                # A checkpoint is a write transaction of its own: only then a thread.
                checkpoint = await self._in_thread(writer.checkpoint_if_due) if writer.checkpoint_due() else None
                if checkpoint is not None:
                    await self._publish_checkpoint(checkpoint)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            log.critical("ledger commit failed; ingest stops, nothing uncommitted was acknowledged", exc_info=True)
            self._failure = exc
            self._stopped.set()
            raise

    def _take_batches(self) -> list[_TakenBatch]:
        """What the consumers have buffered, up to ``commit_batch_max_entries`` in all."""
        batches = []
        room = self._commit_batch_max_entries
        for consumer in list(self._consumers.values()):
            if room <= 0:
                break
            payloads, last_reply = consumer.take(room)
            if not payloads:
                continue
            room -= len(payloads)
            # Only the last message's metadata is parsed (deliveries come in stream order,
            # and an older redelivered message last only makes the position lag, never skip).
            last_message = Msg(self._nc, reply=last_reply.decode())
            metadata = last_message.metadata
            consumer.server_pending = metadata.num_pending
            received = ReceivedBatch(consumer.source, metadata.sequence.stream, payloads)
            batches.append(
                _TakenBatch(consumer, len(payloads), last_message, received, int(metadata.timestamp.timestamp() * 1e9))
            )
        return batches

    async def _in_thread(self, function, *args):
        """Run a store operation in a worker thread. Cancelling the caller does not cancel
        the operation (a thread cannot be interrupted); :meth:`stop` waits for it."""
        self._thread_work = asyncio.ensure_future(asyncio.to_thread(function, *args))
        return await asyncio.shield(self._thread_work)

    async def _acknowledge(self, batches: list[_TakenBatch]) -> None:
        """After the commit: acknowledge each batch (its last message acknowledges all of
        it, ``AckPolicy.ALL``) and make room for more. A failed ack only means a
        redelivery, which is dropped as a duplicate."""
        now_ns = time.time_ns()
        for batch in batches:
            source = batch.received.source
            try:
                await batch.last_message.ack()
            except (nats.errors.Error, OSError) as exc:
                log.debug("ack of a %s batch failed (%s); it will be delivered again", source.stream, exc)
            await batch.consumer.committed(batch.count)
            state = self._lag_states[source.name]
            state.last_stream_sequence = max(state.last_stream_sequence, batch.received.last_stream_sequence)
            state.last_committed_age_s = max(0.0, (now_ns - batch.published_ns) / 1e9)

    async def _publish_checkpoint(self, checkpoint: StoredCheckpoint) -> None:
        try:
            await self._nc.publish(LEDGER_CHECKPOINT_SUBJECT, checkpoint.note.encode("utf-8"))
        except (nats.errors.Error, OSError) as exc:
            log.warning("checkpoint at size %d not published: %s", checkpoint.checkpoint.tree_size, exc)

    # --- health (ledger.health) ---------------------------------------------------------------

    async def oldest_pending_age_s(self, now_ns: int | None = None) -> float:
        """``ledger_lag_s``: over the sources, the largest age (seconds, by JetStream's
        timestamp) of the first message after the committed position that matches the
        source's filter; 0 when every source is caught up (or its stream does not exist).
        Raises the NATS error (or TimeoutError) when JetStream does not answer."""
        if self._nc is None:
            raise nats.errors.ConnectionClosedError()
        js = self._nc.jetstream(timeout=HEALTH_QUERY_TIMEOUT_S)
        now_ns = time.time_ns() if now_ns is None else now_ns

        async def age_s(source: IngestSource) -> float:
            try:
                message = await js.get_msg(
                    source.stream, seq=self.writer.position(source.name) + 1, subject=source.filter_subject, next=True
                )
            except nats.js.errors.NotFoundError:  # nothing after the position, or no stream
                return 0.0
            if message.time is None:
                return 0.0
            return max(0.0, (now_ns - int(message.time.timestamp() * 1e9)) / 1e9)

        ages = await asyncio.gather(*(age_s(source) for source in self.sources))
        return max(ages, default=0.0)

    async def _health_loop(self) -> None:
        """Publish the health metrics every interval, the first right after connecting."""
        interval_s = self._health_interval_s
        next_tick = time.monotonic()
        while True:
            try:
                await self._publish_health(interval_s)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # never let health stop ingest
                log.warning("ledger health not published: %s: %s", type(exc).__name__, exc)
            next_tick += interval_s
            await asyncio.sleep(max(0.0, next_tick - time.monotonic()))
            next_tick = max(next_tick, time.monotonic() - interval_s)  # no burst after a stall

    async def _publish_health(self, interval_s: float) -> None:
        verifier = self.verifier
        work = self._verify_work
        if (work is None or work.done()) and verifier.due():
            self._verify_work = work = asyncio.ensure_future(asyncio.to_thread(verifier.run))
        try:
            lag_s = await self.oldest_pending_age_s()
            self.last_lag = (lag_s, time.time_ns())
        except (nats.errors.Error, nats.js.errors.Error, OSError, TimeoutError) as exc:
            lag_s = None
            log.warning("ledger_lag_s not measured: %s: %s", type(exc).__name__, exc)
        if work is not None and not work.done():  # usually a short tail: publish its result now
            await asyncio.wait([work], timeout=interval_s / 2)
        if work is not None and work.done() and not work.cancelled() and work.exception() is not None:
            log.warning("ledger verification did not run: %s", work.exception())
        if lag_s is not None:
            await self._publish_metric(METRIC_LEDGER_LAG_S, lag_s)
        if verifier.passed is not None:
            await self._publish_metric(METRIC_LEDGER_VERIFIED, 1.0 if verifier.passed else 0.0)

    async def _publish_metric(self, metric: str, value: float) -> None:
        try:
            await self._nc.publish(HEALTH_SUBJECT, health_metric(metric, value, time.time_ns()))
            self.health_published += 1
        except (nats.errors.Error, OSError) as exc:
            log.warning("%s = %g not published: %s: %s", metric, value, type(exc).__name__, exc)

    async def _stop_verify(self) -> None:
        """Stop a verify pass in progress (at its next chunk) and wait for it: the store
        must outlive its read transaction."""
        work, self._verify_work = self._verify_work, None
        if work is None:
            return
        self.verifier.cancel()
        await asyncio.wait([work])
        if not work.cancelled():
            work.exception()  # retrieved (VerifyCancelled, or already logged)
