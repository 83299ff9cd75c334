"""Publish decisions from the outbox to JetStream, off the order path.

The order path never talks to NATS. It appends each decision to the
:class:`~gateway.outbox.DecisionOutbox` (durable against a process crash once the call
returns) and calls :meth:`DecisionPublisher.notify`, which only sets an event. A background
task of this class then reads the outbox in order and publishes each decision on
``pretrade.v1.decisions.<gateway_id>`` with ``Nats-Msg-Id: <gateway_id>:<sequence>`` into
the ``PRETRADE_DECISIONS`` stream; entries leave the outbox only after JetStream acked them.

Delivery guarantee
    At-least-once from the outbox, exactly-once in the stream within its duplicate window:
    anything not acked (NATS down, ack lost, publisher stopped, gateway killed) is published
    again later, and JetStream drops re-publishes whose ``Nats-Msg-Id`` it has stored within
    ``duplicate_window_s``. Only an ack lost *and* retried after longer than the window
    stores a second copy; consumers can drop it by ``(gateway_id, sequence)``, which the
    payload carries too. Sequences are contiguous per gateway, so a consumer detects loss as
    a gap.

Order
    The stream holds a gateway's decisions in sequence order, except around a reconnect:
    publishes nats-py had buffered but not yet written when the connection dropped are
    sent on the new connection before the publisher re-sends the unacked ones, so up to
    ``batch_max * max_inflight_batches`` decisions can be stored ahead of earlier ones.
    Consumers that need strict order sort by ``sequence`` within that window.

Pipelining and the event loop
    Decisions go out as JetStream publishes (a core publish with a reply subject, which
    the stream answers with a ``PubAck``) in batches of ``batch_max``; up to
    ``max_inflight_batches`` batches await their acks at once, and a batch is removed from
    the outbox (one O(1) ``remove_through``) as soon as it and every earlier batch are
    acked. Replies arrive on one wildcard inbox subscription and are matched by the
    sequence at the end of the reply subject; this costs half the CPU of nats-py's
    ``js.publish_async`` (a future, a NUID and a full JSON/dataclass parse per message),
    which matters because the publisher shares the event loop, and so the CPU, with the
    order path. The loop yields after every batch, so the order path waits at most one
    batch's worth of publishing. A batch goes to the connection as one buffer of ``HPUB``
    commands built here (the client protocol: subject, reply, header and total sizes, the
    ``NATS/1.0`` header block, the payload), handed to nats-py's write buffer with its
    ``_send_command`` and ``_flush_pending``: ``Client.publish`` validates the subjects
    and builds the header per message, ~3 µs each, a quarter of the publisher's CPU per
    decision. Those two methods are nats-py internals, which is why nats-py is pinned to a
    minor version (as for ``ledger.natsraw``); the publisher and outage tests exercise them.

Sequence continuity
    JetStream de-duplicates by ``Nats-Msg-Id`` (``<gateway_id>:<sequence>``) within its
    duplicate window, so a gateway whose outbox restarts at sequence 1 under an id that
    already published (a lost or wiped data directory, a second gateway with the same id)
    would have its new decisions dropped as "duplicates" of the old ones: lost. Before it
    publishes on a connection, the publisher therefore reads the stream's last message on
    its subject; if that message's sequence is beyond the outbox's ``last_sequence``, it
    stops for good with :class:`DecisionSequenceConflictError` (the outbox keeps every
    decision) and calls ``on_fatal``; the gateway then shuts down with that message rather
    than decide orders it cannot publish. :meth:`wait_connected` returns True only once
    this check has passed on the current connection. (Two gateways started from copies
    of one data directory share a sequence space too; that the check cannot see: gateway
    ids must be unique per running gateway, see docs/nats.md.)

NATS outages
    The connection reconnects forever. A dropped connection cancels the running publish
    attempt at once (replies sent to a dead connection never come); while disconnected
    nothing is published and decisions accumulate in the outbox, so ``outbox_depth`` and
    ``publish_lag_s`` grow, which is what to alert on. A failed or timed-out batch is retried
    with exponential backoff from the first unacked sequence; the stream is re-ensured
    after every failure (it may have been deleted or the server replaced).

Outbox sync
    The publisher also owns the outbox's periodic ``sync()`` (fsync, in a worker thread every
    ``sync_interval_s``), which bounds what power loss can take; see :mod:`gateway.outbox`.

Other streams
    The same machinery publishes the gateway's ledger events (executions applied, rules
    loaded) from a second outbox into ``PRETRADE_EVENTS`` on ``pretrade.v1.events.<gateway_id>``:
    pass ``target=EVENTS_TARGET``. Everything above holds for it too, per stream.

Threading: all methods are called from the event loop thread the publisher was started on.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import nats.errors
import nats.js.errors
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import StorageType, StreamConfig

from gateway.aio import cancel_until_done
from gateway.outbox import DecisionOutbox, OutboxError
from gateway.subjects import (
    DECISIONS_STREAM,
    DECISIONS_STREAM_SUBJECTS,
    EVENTS_STREAM,
    EVENTS_STREAM_SUBJECTS,
    MSG_ID_HEADER,
    decisions_subject,
    events_subject,
    validate_gateway_id,
)

log = logging.getLogger(__name__)

#: Decisions per publish batch, which is also the unit of outbox removal (one O(1)
#: ``remove_through``) and the most the order path waits while the publisher runs.
DEFAULT_PUBLISH_BATCH_MAX = 64
#: Batches published and awaiting their acks at once; bounds memory and re-publishes.
DEFAULT_MAX_INFLIGHT_BATCHES = 16
#: Longest a decision sits in the outbox unnoticed if ``notify()`` was not called, seconds.
DEFAULT_FLUSH_INTERVAL_S = 0.05
#: Seconds the publisher lets new decisions gather before it publishes them. A publish
#: cycle (outbox read, socket write, nats-server storing and acking, ack handling, outbox
#: removal) costs ~0.3 ms of gateway CPU and as much of nats-server's on a small VM whatever
#: its size: mostly the wake-ups of the processes on either side of the loopback socket.
#: With sequential CheckOrder calls ~0.5 ms apart, a 1 ms linger added ~100 µs to the p50
#: round trip, 5 ms ~45 µs, 20 ms ~25 µs (``bench/bench_gateway.py``; the rest is the
#: per-decision cost of publishing). The price: a decision reaches JetStream, and so the
#: ledger and the watchdogs (event time: what they conclude is the same, only later), up
#: to this much later. The order path never waits for it, and under a steady stream the
#: publisher never goes idle and so never lingers. ``pretrade serve --publish-linger-ms``.
DEFAULT_PUBLISH_LINGER_S = 0.02
#: A batch whose acks have not all arrived after this long is published again, seconds.
DEFAULT_ACK_TIMEOUT_S = 5.0
#: Backoff after a failed batch, doubling from min to max, seconds.
DEFAULT_RETRY_BACKOFF_MIN_S = 0.05
DEFAULT_RETRY_BACKOFF_MAX_S = 2.0
#: How often the outbox is fsynced (bounds what power loss can take), seconds.
DEFAULT_OUTBOX_SYNC_INTERVAL_S = 1.0
#: JetStream de-duplication window of the decisions stream, seconds. The server keeps every
#: message id of the window in memory (~100 bytes each), so at 10k decisions/s 2 minutes
#: cost ~120 MB; a longer window covers longer outages-with-lost-acks.
DEFAULT_DUPLICATE_WINDOW_S = 120.0
#: Wait between reconnect attempts, seconds.
DEFAULT_RECONNECT_WAIT_S = 0.5
#: Ping interval, seconds, and unanswered pings before the connection is declared dead:
#: a silently dead server is detected within their product (15 s).
DEFAULT_PING_INTERVAL_S = 5
DEFAULT_MAX_OUTSTANDING_PINGS = 3
#: Default time ``stop()`` spends publishing what is pending, seconds.
DEFAULT_STOP_FLUSH_TIMEOUT_S = 5.0
#: Timeout of JetStream API requests (stream info/create/update), seconds.
DEFAULT_JETSTREAM_API_TIMEOUT_S = 5.0

_STOP_POLL_INTERVAL_S = 0.01
_CLOSE_TIMEOUT_S = 2.0


@dataclass(frozen=True)
class PublishTarget:
    """Where a publisher sends its outbox: the stream (created or updated on connect) and
    the subject of one gateway's messages."""

    stream: str
    stream_subjects: tuple[str, ...]
    subject: Callable[[str], str]  # gateway id -> subject
    description: str


#: Decisions: ``pretrade.v1.decisions.<gateway_id>`` into ``PRETRADE_DECISIONS``.
DECISIONS_TARGET = PublishTarget(
    DECISIONS_STREAM, DECISIONS_STREAM_SUBJECTS, decisions_subject, "pretrade risk decisions, one subject per gateway"
)
#: Gateway events for the ledger: ``pretrade.v1.events.<gateway_id>`` into ``PRETRADE_EVENTS``.
EVENTS_TARGET = PublishTarget(
    EVENTS_STREAM,
    EVENTS_STREAM_SUBJECTS,
    events_subject,
    "pretrade gateway events for the ledger (pretrade.v1.GatewayEvent), one subject per gateway",
)


class DecisionPublisherError(Exception):
    """Base class of the publisher's own errors (all are retried by the publish loop)."""


class PublishAckTimeoutError(DecisionPublisherError):
    """JetStream did not ack a published batch within ``ack_timeout_s``."""


class PublishInterruptedError(DecisionPublisherError):
    """The NATS connection dropped during a publish attempt; what was not acked is published
    again after the reconnect (JetStream drops the copies it had stored)."""


class PublishRejectedError(DecisionPublisherError):
    """JetStream answered a publish with an error, or nothing captured the subject (no
    stream: it is re-ensured before the retry)."""


class DecisionSequenceConflictError(Exception):
    """The stream already holds a message of this gateway id with a sequence beyond the
    outbox's last one: publishing would collide with it (see "Sequence continuity" in the
    module docstring). Not retried: it needs an operator (a new gateway id, or the data
    directory that belongs to this one)."""


class DecisionStreamConfigError(DecisionPublisherError):
    """The existing target stream (``PRETRADE_DECISIONS``, ``PRETRADE_EVENTS``) cannot hold
    messages durably (e.g. memory storage) and cannot be changed in place; an operator must
    recreate it."""


# Errors after which publishing is retried (after backoff) rather than fatal: NATS and
# JetStream errors (includes nats.errors.TimeoutError), our ack timeout, and outbox errors
# (a failed removal only means re-publishing, which dedup absorbs).
_RETRIED_ERRORS = (nats.errors.Error, DecisionPublisherError, OutboxError)

CountHook = Callable[[float], object]


@dataclass(frozen=True)
class PublisherMetricHooks:
    """Optional metric sinks the publisher calls as it works; it creates no metrics itself.

    Each field takes a callable receiving an amount, or a prometheus-client ``Counter`` (its
    ``inc`` is used), e.g.::

        PublisherMetricHooks(decisions_published=Counter("pretrade_decisions_published", "...", registry=r))

    Levels are read, not pushed: use ``Gauge.set_function(lambda: publisher.outbox_depth)``
    and the same for ``publish_lag_s`` and ``connected``.
    """

    #: Called with the number of decisions JetStream newly stored.
    decisions_published: CountHook | object | None = None
    #: Called with the number of re-published decisions JetStream dropped as duplicates.
    duplicates_dropped: CountHook | object | None = None
    #: Called with 1 per failed publish attempt (batch error, ack timeout, stream error).
    publish_failures: CountHook | object | None = None


@dataclass
class PublisherCounters:
    """Running totals since the publisher was created (read them, do not write them)."""

    decisions_published: int = 0
    duplicates_dropped: int = 0
    publish_failures: int = 0
    disconnects: int = 0


class _InflightBatch:
    """Decisions ``first_sequence ..`` published and awaiting JetStream's replies."""

    __slots__ = ("first_sequence", "replies", "outstanding", "all_replied")

    def __init__(self, first_sequence: int, size: int) -> None:
        self.first_sequence = first_sequence
        self.replies: list[Msg | None] = [None] * size
        self.outstanding = size
        self.all_replied = asyncio.Event()


class DecisionPublisher:
    """Copies the outbox to the ``PRETRADE_DECISIONS`` JetStream stream (or another
    ``target``); see the module docstring for guarantees and trade-offs.

    Usage::

        publisher = DecisionPublisher(outbox, "gw1")
        await publisher.start("nats://127.0.0.1:4222")   # returns at once, connects in background
        ...                                             # order path: outbox.append(...); publisher.notify()
        await publisher.stop(flush_timeout_s=5)          # then outbox.close()

    The publisher does not own the outbox: close it after :meth:`stop`.
    """

    def __init__(
        self,
        outbox: DecisionOutbox,
        gateway_id: str,
        *,
        target: PublishTarget = DECISIONS_TARGET,
        batch_max: int = DEFAULT_PUBLISH_BATCH_MAX,
        max_inflight_batches: int = DEFAULT_MAX_INFLIGHT_BATCHES,
        flush_interval_s: float = DEFAULT_FLUSH_INTERVAL_S,
        linger_s: float = DEFAULT_PUBLISH_LINGER_S,
        ack_timeout_s: float = DEFAULT_ACK_TIMEOUT_S,
        retry_backoff_min_s: float = DEFAULT_RETRY_BACKOFF_MIN_S,
        retry_backoff_max_s: float = DEFAULT_RETRY_BACKOFF_MAX_S,
        sync_interval_s: float = DEFAULT_OUTBOX_SYNC_INTERVAL_S,
        duplicate_window_s: float = DEFAULT_DUPLICATE_WINDOW_S,
        reconnect_wait_s: float = DEFAULT_RECONNECT_WAIT_S,
        metric_hooks: PublisherMetricHooks | None = None,
        on_fatal: Callable[[BaseException], object] | None = None,
    ) -> None:
        """``on_fatal(error)`` is called (on the loop) if publishing stops for good, e.g.
        with :class:`DecisionSequenceConflictError`; the gateway shuts down on it."""
        if batch_max < 1 or max_inflight_batches < 1:
            raise ValueError("batch_max and max_inflight_batches must be at least 1")
        self._outbox = outbox
        self._gateway_id = validate_gateway_id(gateway_id)
        self._target = target
        self._subject = target.subject(gateway_id)
        self._batch_max = batch_max
        self._max_inflight_batches = max_inflight_batches
        self._flush_interval_s = flush_interval_s
        self._linger_s = linger_s
        self._ack_timeout_s = ack_timeout_s
        self._retry_backoff_min_s = retry_backoff_min_s
        self._retry_backoff_max_s = retry_backoff_max_s
        self._sync_interval_s = sync_interval_s
        self._duplicate_window_s = duplicate_window_s
        self._reconnect_wait_s = reconnect_wait_s
        hooks = metric_hooks or PublisherMetricHooks()
        self._on_published = _count_hook(hooks.decisions_published)
        self._on_duplicates = _count_hook(hooks.duplicates_dropped)
        self._on_failure = _count_hook(hooks.publish_failures)
        self.counters = PublisherCounters()
        self._on_fatal = on_fatal
        #: Why publishing stopped for good (None while it runs or stopped normally).
        self.fatal_error: BaseException | None = None

        self._nc: NatsClient | None = None
        self._js: JetStreamContext | None = None
        self._connected = asyncio.Event()
        #: Set once the stream is ensured and the sequence check passed on this connection.
        self._stream_verified = asyncio.Event()
        self._wakeup = asyncio.Event()
        self._stop_syncing = asyncio.Event()
        self._stream_ready = False
        self._stopping = False
        self._attempt: asyncio.Task[None] | None = None
        self._awaiting_reply: dict[int, _InflightBatch] = {}
        self._ack_inbox = ""
        self._ack_inbox_prefix_length = 0
        self._publish_task: asyncio.Task[None] | None = None
        self._sync_task: asyncio.Task[None] | None = None

    # ----------------------------------------------------------------- order path

    def notify(self) -> None:
        """Wake the publish loop after ``outbox.append``. Never blocks, never fails."""
        self._wakeup.set()

    # ----------------------------------------------------------------- observability

    @property
    def gateway_id(self) -> str:
        return self._gateway_id

    @property
    def connected(self) -> bool:
        """True while the NATS connection is up (decisions can be published)."""
        return self._nc is not None and self._nc.is_connected

    @property
    def outbox_depth(self) -> int:
        """Decisions appended but not yet acknowledged by JetStream."""
        return self._outbox.depth

    @property
    def publish_lag_s(self) -> float:
        """Age in seconds of the oldest decision not yet acknowledged by JetStream (wall
        clock since it was appended to the outbox), 0.0 when everything is acknowledged.

        It is the staleness of the stream relative to the gateway: near 0 in steady state,
        growing during an outage, and it keeps its meaning across restarts because the
        append time is stored with each entry.
        """
        oldest_appended_ns = self._outbox.oldest_appended_ns()
        if oldest_appended_ns is None:
            return 0.0
        return max(0.0, (time.time_ns() - oldest_appended_ns) / 1e9)

    # ----------------------------------------------------------------- lifecycle

    async def start(self, nats_url: str | Sequence[str]) -> None:
        """Start connecting to ``nats_url`` (one URL or a list) and publishing.

        Returns at once: connecting, ensuring the stream and publishing happen in background
        tasks that retry forever, so a gateway starts (and keeps deciding) while NATS is
        down. Use :meth:`wait_connected` to wait for the connection.
        """
        if self._publish_task is not None:
            raise RuntimeError("DecisionPublisher.start() called twice")
        servers = [nats_url] if isinstance(nats_url, str) else list(nats_url)
        self._publish_task = asyncio.create_task(self._run(servers), name=f"publisher-{self._target.stream}-{self._gateway_id}")
        self._publish_task.add_done_callback(self._on_publish_task_end)
        self._sync_task = asyncio.create_task(self._sync_periodically(), name=f"outbox-sync-{self._target.stream}")
        self._sync_task.add_done_callback(_log_unexpected_end)

    async def wait_connected(self, timeout_s: float) -> bool:
        """Wait up to ``timeout_s`` for the NATS connection, with the stream ensured and the
        sequence continuity checked on it (module docstring); return whether it is up."""
        try:
            await asyncio.wait_for(self._stream_verified.wait(), timeout_s)
        except TimeoutError:
            return False
        return self.connected

    async def stop(self, flush_timeout_s: float = DEFAULT_STOP_FLUSH_TIMEOUT_S) -> None:
        """Publish what is pending for up to ``flush_timeout_s``, then stop and disconnect.

        Whatever is not acknowledged by then stays in the outbox and is published by the
        next publisher on it (after a restart). Call after the order path stopped appending.
        Fsyncs the outbox once more; does not close it.
        """
        if self._publish_task is None:
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + flush_timeout_s
        while self._outbox.depth > 0 and not self._publish_task.done() and loop.time() < deadline:
            self.notify()
            await asyncio.sleep(_STOP_POLL_INTERVAL_S)
        remaining = self._outbox.depth
        if remaining:
            log.warning(
                "decision publisher stopping with %d decisions unpublished; they stay in the outbox "
                "and are published after the next start",
                remaining,
            )
        self._stopping = True
        self._stop_syncing.set()
        await cancel_until_done([self._publish_task])
        if self._sync_task is not None:
            # asyncio.wait, not await: a cancelled task must not cancel stop() itself.
            await asyncio.wait([self._sync_task])
        await asyncio.to_thread(self._outbox.sync)
        if self._nc is not None:
            try:
                await asyncio.wait_for(self._nc.close(), _CLOSE_TIMEOUT_S)
            except TimeoutError:
                log.warning("NATS connection did not close within %s s", _CLOSE_TIMEOUT_S)
            except (OSError, nats.errors.Error) as error:
                # Closing a connection that is already broken (NATS down at shutdown); the
                # outbox keeps whatever was not acked.
                log.info("NATS connection closed with %s: %s", type(error).__name__, error)
        self._connected.clear()

    # ----------------------------------------------------------------- publish loop

    async def _run(self, servers: list[str]) -> None:
        nc = NatsClient()
        self._nc = nc
        await nc.connect(
            servers=servers,
            name=f"pretrade-gateway-{self._gateway_id}-{self._target.stream}",
            allow_reconnect=True,
            max_reconnect_attempts=-1,
            reconnect_time_wait=self._reconnect_wait_s,
            ping_interval=DEFAULT_PING_INTERVAL_S,
            max_outstanding_pings=DEFAULT_MAX_OUTSTANDING_PINGS,
            error_cb=self._on_nats_error,
            disconnected_cb=self._on_disconnected,
            reconnected_cb=self._on_reconnected,
            closed_cb=self._on_closed,
        )
        self._js = nc.jetstream(timeout=DEFAULT_JETSTREAM_API_TIMEOUT_S)
        # One wildcard subscription receives every publish reply; the reply subject ends
        # with the decision's sequence (nats-py re-subscribes it after a reconnect).
        self._ack_inbox = nc.new_inbox()
        self._ack_inbox_prefix_length = len(self._ack_inbox) + 1
        self._hpub_prefix = f"HPUB {self._subject} {self._ack_inbox}.".encode()
        self._header_start = f"NATS/1.0\r\n{MSG_ID_HEADER}: {self._gateway_id}:".encode()
        await nc.subscribe(f"{self._ack_inbox}.*", cb=self._on_ack)
        self._connected.set()
        log.info("decision publisher connected to %s", nc.connected_url.netloc if nc.connected_url else servers)
        backoff_s = self._retry_backoff_min_s
        while True:
            await self._connected.wait()
            error = await self._attempt_publishing()
            if error is not None:
                self._stream_ready = False
                self.counters.publish_failures += 1
                self._on_failure(1)
                log.warning(
                    "publishing decisions failed (%s: %s); retrying in %.2f s, %d decisions in the outbox",
                    type(error).__name__,
                    error,
                    backoff_s,
                    self._outbox.depth,
                )
                await asyncio.sleep(backoff_s)
                backoff_s = min(backoff_s * 2, self._retry_backoff_max_s)
                continue
            backoff_s = self._retry_backoff_min_s
            await self._wait_for_work()

    async def _attempt_publishing(self) -> BaseException | None:
        """Ensure the stream and publish until the outbox is empty, as a task that a dropped
        connection cancels (requests and acks sent on a dead connection never complete).
        Return the retriable error that ended the attempt, None on success."""
        attempt = asyncio.create_task(self._ensure_stream_and_publish())
        self._attempt = attempt
        try:
            await asyncio.wait([attempt])
        finally:
            if not attempt.done():  # stop() cancelled the loop: end the attempt with it
                attempt.cancel()
                await asyncio.wait([attempt])
            self._attempt = None
        if attempt.cancelled():
            return PublishInterruptedError("the NATS connection dropped before JetStream acked every decision sent")
        error = attempt.exception()
        if error is not None and not isinstance(error, _RETRIED_ERRORS):
            raise error
        return error

    async def _ensure_stream_and_publish(self) -> None:
        if not self._stream_ready:
            await self._ensure_stream()
            await self._check_sequence_continuity()
            self._stream_ready = True
            self._stream_verified.set()
        await self._publish_until_idle()

    async def _check_sequence_continuity(self) -> None:
        """Raise :class:`DecisionSequenceConflictError` if the stream's last message on our
        subject carries a sequence beyond the outbox's last one (module docstring)."""
        assert self._js is not None
        try:
            last = await self._js.get_last_msg(self._target.stream, self._subject)
        except nats.js.errors.NotFoundError:
            return  # nothing published under this gateway id (or the stream was purged)
        message_id = (last.headers or {}).get(MSG_ID_HEADER, "")
        gateway_id, _, sequence = message_id.rpartition(":")
        if gateway_id != self._gateway_id or not sequence.isdigit():
            return  # not written by a pretrade gateway under this id: nothing to collide with
        if int(sequence) > self._outbox.last_sequence:
            raise DecisionSequenceConflictError(
                f"gateway id {self._gateway_id!r} already has sequence {int(sequence)} in JetStream stream "
                f"{self._target.stream}, but its outbox {self._outbox.path} ends at {self._outbox.last_sequence}: "
                "another gateway uses this id, or this is not its data directory. Start with a new "
                "--gateway-id, or with the data directory that belongs to this id"
            )

    async def _wait_for_work(self) -> None:
        """Until ``notify()`` (or, at the latest, ``flush_interval_s``: a periodic look at
        the outbox in case an append was not notified), then the linger. A timer setting
        the event rather than ``asyncio.wait_for``, which costs a task per cycle."""
        self._wakeup.clear()
        if self._outbox.depth == 0:
            look = asyncio.get_running_loop().call_later(self._flush_interval_s, self._wakeup.set)
            try:
                await self._wakeup.wait()
            finally:
                look.cancel()
            if self._outbox.depth == 0:
                return
        if self._linger_s > 0:
            await asyncio.sleep(self._linger_s)

    async def _publish_until_idle(self) -> None:
        """Publish the outbox with up to ``max_inflight_batches`` batches awaiting acks,
        removing each fully acked prefix; return when the outbox is empty."""
        nc = self._nc
        assert nc is not None
        inflight: deque[_InflightBatch] = deque()
        awaiting_reply: dict[int, _InflightBatch] = {}
        self._awaiting_reply = awaiting_reply  # replies to an abandoned attempt find nothing
        published_through = 0  # everything in the outbox is unacked: start from its head
        while True:
            while len(inflight) < self._max_inflight_batches:
                entries = self._outbox.pending(published_through, self._batch_max)
                if not entries:
                    break
                batch = _InflightBatch(entries[0][0], len(entries))
                inflight.append(batch)
                for sequence, _ in entries:
                    awaiting_reply[sequence] = batch
                await nc._send_command(self._publish_commands(entries))
                await nc._flush_pending()
                published_through = entries[-1][0]
                await asyncio.sleep(0)  # let the order path run between batches
            if not inflight:
                return
            await self._settle(inflight[0])
            inflight.popleft()

    def _publish_commands(self, entries) -> bytes:
        """HPUB commands for ``entries``: each decision on the subject, with the ack inbox
        ``<inbox>.<sequence>`` as reply and ``Nats-Msg-Id: <gateway_id>:<sequence>``."""
        prefix = self._hpub_prefix
        header_start = self._header_start
        max_payload = self._nc.max_payload
        commands = []
        for sequence, payload in entries:
            if len(payload) > max_payload:
                raise nats.errors.MaxPayloadError(f"decision {sequence}: {len(payload)} bytes > {max_payload}")
            number = b"%d" % sequence
            header = header_start + number + b"\r\n\r\n"
            commands.append(
                b"%s%s %d %d\r\n%s%s\r\n"
                % (prefix, number, len(header), len(header) + len(payload), header, payload)
            )
        return b"".join(commands)

    async def _on_ack(self, msg: Msg) -> None:
        """Record JetStream's reply to the decision whose sequence ends the reply subject."""
        sequence = int(msg.subject[self._ack_inbox_prefix_length :])
        # None: a second reply (a copy nats-py re-sent after a reconnect) or a reply to an
        # attempt abandoned when the connection dropped.
        batch = self._awaiting_reply.pop(sequence, None)
        if batch is not None:
            batch.replies[sequence - batch.first_sequence] = msg
            batch.outstanding -= 1
            if batch.outstanding == 0:
                batch.all_replied.set()

    async def _settle(self, batch: _InflightBatch) -> None:
        """Wait for ``batch``'s acks, remove its acked prefix from the outbox, and raise if
        any decision of it was not stored."""
        # A timer ends the wait after ack_timeout_s (the replies that came are still used
        # below); cheaper than asyncio.wait_for, which costs a task per batch.
        timeout = asyncio.get_running_loop().call_later(self._ack_timeout_s, batch.all_replied.set)
        try:
            await batch.all_replied.wait()
        finally:
            timeout.cancel()
        stored = duplicates = 0
        failure: DecisionPublisherError | None = None
        for reply in batch.replies:
            sequence = batch.first_sequence + stored + duplicates
            if reply is None:
                failure = PublishAckTimeoutError(f"no JetStream ack within {self._ack_timeout_s} s for decision {sequence}")
                break
            try:
                duplicate = _is_duplicate_ack(reply)
            except PublishRejectedError as error:
                failure = PublishRejectedError(f"decision {sequence}: {error}")
                break
            if duplicate:
                duplicates += 1
            else:
                stored += 1
        acked = stored + duplicates
        if acked:
            self._outbox.remove_through(batch.first_sequence + acked - 1)
            self.counters.decisions_published += stored
            self.counters.duplicates_dropped += duplicates
            self._on_published(stored)
            if duplicates:
                self._on_duplicates(duplicates)
        if failure is not None:
            raise failure

    async def _ensure_stream(self) -> None:
        """Create the target stream or bring an existing one up to what we need, without
        undoing an operator's other settings (limits, replicas, a longer window)."""
        assert self._js is not None
        stream = self._target.stream
        try:
            info = await self._js.stream_info(stream)
        except nats.js.errors.NotFoundError:
            try:
                await self._js.add_stream(
                    StreamConfig(
                        name=stream,
                        description=self._target.description,
                        subjects=list(self._target.stream_subjects),
                        storage=StorageType.FILE,
                        duplicate_window=self._duplicate_window_s,
                    )
                )
                log.info("created JetStream stream %s", stream)
                return
            except nats.js.errors.BadRequestError:
                # Another gateway created it first with a different configuration.
                info = await self._js.stream_info(stream)
        config = info.config
        if config.storage != StorageType.FILE:
            raise DecisionStreamConfigError(
                f"stream {stream} uses {config.storage} storage; it needs file storage (recreate the stream)"
            )
        subjects = list(config.subjects or [])
        missing_subjects = [subject for subject in self._target.stream_subjects if subject not in subjects]
        if missing_subjects or config.duplicate_window < self._duplicate_window_s:
            config.subjects = subjects + missing_subjects
            config.duplicate_window = max(config.duplicate_window, self._duplicate_window_s)
            await self._js.update_stream(config)
            log.info("updated JetStream stream %s (subjects, duplicate window)", stream)

    async def _sync_periodically(self) -> None:
        synced_sequence = self._outbox.last_sequence
        while not self._stop_syncing.is_set():
            try:
                await asyncio.wait_for(self._stop_syncing.wait(), self._sync_interval_s)
            except TimeoutError:
                pass
            if self._outbox.last_sequence == synced_sequence:
                continue
            synced_sequence = self._outbox.last_sequence
            try:
                # Not cancelled by stop(): the outbox must not be closed under a running sync.
                await asyncio.to_thread(self._outbox.sync)
            except OutboxError:
                log.exception("outbox fsync failed; decisions are safe from a process crash, not from power loss")

    # ----------------------------------------------------------------- NATS callbacks

    async def _on_disconnected(self) -> None:
        if self._connected.is_set() and not self._stopping:
            self.counters.disconnects += 1
            log.warning(
                "NATS disconnected; decisions accumulate in the outbox (%d unpublished)", self._outbox.depth
            )
        self._connected.clear()
        self._stream_verified.clear()
        self._stream_ready = False  # the server may have been replaced: ensure and check again
        # Replies to what was sent on the lost connection will never come: end the attempt
        # now and retry after the reconnect instead of waiting for timeouts.
        if self._attempt is not None:
            self._attempt.cancel()

    async def _on_reconnected(self) -> None:
        self._connected.set()
        self.notify()
        log.info("NATS reconnected; publishing %d decisions from the outbox", self._outbox.depth)

    async def _on_closed(self) -> None:
        self._connected.clear()
        self._stream_verified.clear()

    def _on_publish_task_end(self, task: asyncio.Task[None]) -> None:
        _log_unexpected_end(task)
        if task.cancelled() or task.exception() is None:
            return
        self.fatal_error = task.exception()
        if self._on_fatal is not None:
            self._on_fatal(self.fatal_error)

    async def _on_nats_error(self, error: Exception) -> None:
        # Called on every failed (re)connect attempt; the disconnect itself is logged once.
        log.debug("NATS client error: %s: %s", type(error).__name__, error)


def _is_duplicate_ack(reply: Msg) -> bool:
    """Whether JetStream's ``PubAck`` says "duplicate" (stored earlier under the same
    Nats-Msg-Id) rather than "stored now"; raises :class:`PublishRejectedError` for an
    error reply or a no-responders status (no stream captures the subject).

    Fast path without JSON parsing for the common reply ``{"stream":"...","seq":N}``: the
    server puts ``error`` first when there is one, so a reply starting with ``"stream"`` and
    without a ``duplicate`` field is a fresh ack. Anything else is parsed in full.
    """
    data = reply.data
    if data.startswith(b'{"stream"') and b'"duplicate"' not in data:
        return False
    if not data:
        status = reply.headers.get("Status") if reply.headers else None
        raise PublishRejectedError(f"no stream captures the subject (status {status})")
    try:
        response = json.loads(data)
    except ValueError:
        raise PublishRejectedError(f"unreadable JetStream reply {data[:200]!r}") from None
    error = response.get("error")
    if error or "stream" not in response:
        raise PublishRejectedError(f"JetStream error {error or response}")
    return bool(response.get("duplicate"))


def _count_hook(metric: CountHook | object | None) -> Callable[[float], object]:
    """A callable for a metric hook: itself, a prometheus ``Counter``'s ``inc``, or a no-op."""
    if metric is None:
        return _ignore
    if callable(metric):
        return metric
    increment = getattr(metric, "inc", None)
    if not callable(increment):
        raise TypeError(f"metric hook {metric!r} is neither callable nor has an inc() method")
    return increment


def _ignore(amount: float) -> None:
    """The hook used when no metric was given."""


def _log_unexpected_end(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.critical(
            "%s stopped: decisions are kept in the outbox but no longer published",
            task.get_name(),
            exc_info=task.exception(),
        )
