"""The watchdog worker: NATS in, watchdogs in the middle, alerts, webhooks and halt
requests out (``pretrade watchdogs run``; ``pretrade up`` runs one too).

* :func:`decode` turns one NATS message into an :class:`~watchdogs.core.Event` or raises
  :class:`MalformedMessageError`; the worker counts and skips those, it never crashes on
  input.
* :class:`WatchdogEngine` routes events to the watchdogs that take them and collects their
  findings. It is pure (no I/O), so replays and tests use it directly. A watchdog that
  raises is counted and skipped for that event; the others go on.
* :class:`WatchdogWorker` wires it to NATS, publishes each finding on
  ``pretrade.v1.alerts.<watchdog>``, asks the halt manager (HaltService over gRPC, with the
  worker's ``watchdog:<name>`` token) for the finding's graduated response, posts it to the
  configured webhooks, publishes heartbeats and serves ``GET /status`` and ``/metrics``.

Inputs: JetStream where the input is stored, core NATS otherwise
---------------------------------------------------------------
Decisions (``PRETRADE_DECISIONS``) and gateway events (``PRETRADE_EVENTS``) are in
JetStream (:data:`watchdogs.subjects.JETSTREAM_INPUTS`). The worker reads them through a
**durable pull consumer per stream**, named after its worker id
(:func:`watchdogs.subjects.consumer_name`), with explicit acks. Market data, news counts,
strategy metrics and service health are core NATS only (no stream) and stay core
subscriptions: what is published while the worker is away is gone. The halt manager's
``PRETRADE_HALT_EVENTS`` is not an input of any watchdog.

Why durable and pull, and how far back:

* *Nothing missed across a reconnect or a NATS restart.* The consumer lives on the
  server (file-backed stream), so after an outage the worker fetches from its ack floor
  and sees the burst that was published meanwhile, in stream order. The flow statistics
  (order rate, reject rate, notional velocity, concentration ...) are event-time windows,
  so a late burst is judged at the time it happened.
* *Also across a worker restart, but bounded.* A restart within ``replay_bound_s``
  (``[worker]``, default 300 s) resumes where the previous process acked. The consumer is
  created with ``inactive_threshold = replay_bound_s``: a worker (or its connection) gone
  for longer loses its consumer, and the new one starts at ``now - replay_bound_s``
  (``DeliverPolicy.BY_START_TIME``), as does a first start. So a worker never replays
  hours of stale history into windows of seconds, yet the last minutes before a start -
  the longest default flow window is 60 s - are seen.
* *Pull, not the ordered push consumer:* an ordered consumer is ephemeral, so a restarted
  worker would start from nothing (or from a guess); a durable pull consumer keeps the
  position on the server and lets the worker pace itself.
* *At least once, counted once.* A message whose ack was lost is redelivered. Each stream's
  reader remembers the last ``DEFAULT_DEDUP_MEMORY`` message ids (``Nats-Msg-Id`` =
  ``<gateway_id>:<sequence>``, else the stream sequence within the consumer's lifetime, as
  a stream deleted and made again starts its sequences anew) and drops a repeat
  (``pretrade_watchdog_duplicates_dropped_total``). A process that crashes between
  observing and acking observes those few messages again after its restart.
* *Streams that do not exist yet.* The gateway creates the streams on its first connect;
  until then (or after a stream is deleted) the reader retries every
  ``DEFAULT_JETSTREAM_RETRY_S`` without failing the worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import itertools
import json
import logging
import time
import urllib.error
import urllib.request
from collections import OrderedDict
from typing import Hashable, Iterable

import grpc
from google.protobuf import json_format
from google.protobuf.message import DecodeError
from nats.aio.client import Client as NatsClient
from nats.js import api as js_api
from nats.js.errors import NotFoundError
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from gateway.aio import cancel_until_done
from pretrade.v1 import halts_pb2, halts_pb2_grpc, ledger_pb2, trading_pb2, types_pb2, watchdogs_pb2
from watchdogs import subjects
from watchdogs.config import WatchdogsConfig, WebhookConfig
from watchdogs.core import Action, Event, EventKind, Finding, ScopeKind, Watchdog

log = logging.getLogger(__name__)

#: Seconds a HaltService call may take.
DEFAULT_HALT_CALL_TIMEOUT_S = 5.0
#: NATS reconnect wait, seconds (the worker reconnects forever).
DEFAULT_RECONNECT_WAIT_S = 0.5
#: Findings waiting for the output task before new ones are dropped (and counted).
DEFAULT_FINDINGS_QUEUE_SIZE = 10_000
#: Webhook posts waiting before new ones are dropped (and counted).
DEFAULT_WEBHOOK_QUEUE_SIZE = 1_000
#: Upper bound of the webhook retry backoff, seconds.
DEFAULT_WEBHOOK_MAX_BACKOFF_S = 30.0
#: Seconds :meth:`WatchdogWorker.stop` waits for NATS to drain before closing.
DEFAULT_DRAIN_TIMEOUT_S = 2.0
#: Messages one JetStream pull asks for.
DEFAULT_FETCH_BATCH = 256
#: Seconds one JetStream pull waits for a message (then the consumer is checked).
DEFAULT_FETCH_TIMEOUT_S = 1.0
#: Seconds between attempts while a stream is missing or NATS is unreachable.
DEFAULT_JETSTREAM_RETRY_S = 0.25
#: Seconds JetStream waits for an ack before it redelivers.
DEFAULT_ACK_WAIT_S = 5.0
#: Unacked messages a consumer may have out at once.
DEFAULT_MAX_ACK_PENDING = 20_000
#: Message ids each JetStream reader remembers to drop redeliveries.
DEFAULT_DEDUP_MEMORY = 100_000

_INPUT_SUBJECTS: dict[str, EventKind] = {
    subjects.DECISIONS_WILDCARD: EventKind.DECISION,
    subjects.EVENTS_WILDCARD: EventKind.EXECUTION,
    subjects.REFERENCE_PRICE_WILDCARD: EventKind.REFERENCE_PRICE,
    subjects.TRADE_WILDCARD: EventKind.TRADE,
    subjects.NEWS_COUNT_WILDCARD: EventKind.NEWS,
    subjects.STRATEGY_METRIC_WILDCARD: EventKind.METRIC,
    subjects.SERVICE_HEALTH_WILDCARD: EventKind.HEALTH,
}


class RecentIds:
    """The last ``capacity`` ids seen (insertion order): bounded memory for de-duplication."""

    def __init__(self, capacity: int = DEFAULT_DEDUP_MEMORY) -> None:
        self.capacity = capacity
        self._ids: OrderedDict[Hashable, None] = OrderedDict()

    def add(self, key: Hashable) -> bool:
        """True if ``key`` is new (and now remembered), False for a repeat."""
        if key in self._ids:
            return False
        self._ids[key] = None
        if len(self._ids) > self.capacity:
            self._ids.popitem(last=False)
        return True

    def __len__(self) -> int:
        return len(self._ids)


class MalformedMessageError(ValueError):
    """A message on an input subject that does not parse or lacks required fields."""


class NotAnInputError(ValueError):
    """A well-formed message no watchdog observes (e.g. a RulesLoaded gateway event)."""


def decode(kind: EventKind, data: bytes) -> Event:
    """The event of one message of ``kind``: MalformedMessageError if it is not one,
    NotAnInputError if it is well formed but carries nothing to observe."""
    try:
        if kind is EventKind.DECISION:
            decision = types_pb2.Decision.FromString(data)
            if not decision.HasField("order") or decision.received_ns <= 0:
                raise MalformedMessageError("decision without order or received_ns")
            return Event(kind, decision.received_ns, decision)
        if kind is EventKind.EXECUTION:
            event = ledger_pb2.GatewayEvent.FromString(data)
            if event.WhichOneof("event") is None or event.occurred_ns <= 0:
                raise MalformedMessageError("gateway event without event or occurred_ns")
            if event.WhichOneof("event") != "execution_reported":
                raise NotAnInputError("not an execution")
            reported = event.execution_reported
            return Event(kind, reported.execution.transact_ns or event.occurred_ns, reported)
        if kind is EventKind.REFERENCE_PRICE:
            price = types_pb2.ReferencePrice.FromString(data)
            if not price.symbol or price.timestamp_ns <= 0 or price.price_nanos <= 0:
                raise MalformedMessageError("reference price without symbol, price or timestamp")
            return Event(kind, price.timestamp_ns, price)
        if kind is EventKind.TRADE:
            trade = watchdogs_pb2.Trade.FromString(data)
            if not trade.symbol or trade.timestamp_ns <= 0:
                raise MalformedMessageError("trade without symbol or timestamp")
            return Event(kind, trade.timestamp_ns, trade)
        if kind is EventKind.NEWS:
            news = watchdogs_pb2.NewsCount.FromString(data)
            if not news.topic or news.interval_end_ns <= 0:
                raise MalformedMessageError("news count without topic or interval_end_ns")
            return Event(kind, news.interval_end_ns, news)
        if kind is EventKind.METRIC:
            metric = watchdogs_pb2.StrategyMetric.FromString(data)
            if not metric.metric or metric.timestamp_ns <= 0 or metric.scope == trading_pb2.SCOPE_UNSPECIFIED:
                raise MalformedMessageError("strategy metric without metric, scope or timestamp")
            return Event(kind, metric.timestamp_ns, metric)
        health = watchdogs_pb2.ServiceHealth.FromString(data)
        if not health.service or health.timestamp_ns <= 0:
            raise MalformedMessageError("service health without service or timestamp")
        return Event(kind, health.timestamp_ns, health)
    except DecodeError as exc:
        raise MalformedMessageError(f"not a protobuf of {kind.value}: {exc}") from None


class WatchdogMetrics:
    """The worker's Prometheus metrics, in their own registry (served on /metrics)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.events = Counter(
            "pretrade_watchdog_events", "input events observed", ["kind"], registry=self.registry
        )
        self.malformed = Counter(
            "pretrade_watchdog_malformed_messages", "input messages skipped as malformed", ["kind"],
            registry=self.registry,
        )
        self.errors = Counter(
            "pretrade_watchdog_errors", "exceptions raised by a watchdog (event skipped)", ["watchdog"],
            registry=self.registry,
        )
        self.findings = Counter(
            "pretrade_watchdog_findings", "findings emitted", ["watchdog", "action"], registry=self.registry
        )
        self.actions = Counter(
            "pretrade_watchdog_halt_requests",
            "halt manager requests by outcome",
            ["watchdog", "action", "outcome"],
            registry=self.registry,
        )
        self.webhooks = Counter(
            "pretrade_watchdog_webhook_posts", "webhook posts by outcome", ["outcome"], registry=self.registry
        )
        self.dropped = Counter(
            "pretrade_watchdog_dropped", "findings, alerts or webhook posts dropped", ["queue"],
            registry=self.registry,
        )
        self.duplicates = Counter(
            "pretrade_watchdog_duplicates_dropped", "JetStream redeliveries dropped (already observed)",
            ["kind"], registry=self.registry,
        )
        self.detection_lag = Histogram(
            "pretrade_watchdog_emit_lag_seconds", "wall clock at emission minus the finding's event time",
            registry=self.registry,
        )
        self.last_heartbeat = Gauge(
            "pretrade_watchdog_last_heartbeat_timestamp_seconds", "when the last heartbeat was sent",
            registry=self.registry,
        )


class WatchdogEngine:
    """Routes events to the watchdogs that take their kind; pure and synchronous."""

    def __init__(self, watchdogs: Iterable[Watchdog], metrics: WatchdogMetrics | None = None) -> None:
        self.watchdogs = list(watchdogs)
        self.metrics = metrics if metrics is not None else WatchdogMetrics()
        self._routes: dict[EventKind, list[Watchdog]] = {kind: [] for kind in EventKind}
        for watchdog in self.watchdogs:
            for kind in watchdog.inputs:
                self._routes[kind].append(watchdog)
        self.events_observed = 0
        self.malformed_messages = 0
        self.findings_emitted = 0

    @property
    def input_kinds(self) -> frozenset[EventKind]:
        return frozenset(kind for kind, routed in self._routes.items() if routed)

    def observe(self, event: Event) -> list[Finding]:
        self.events_observed += 1
        self.metrics.events.labels(event.kind.value).inc()
        findings: list[Finding] = []
        for watchdog in self._routes[event.kind]:
            try:
                findings += watchdog.observe(event)
            except Exception:  # a bug in one watchdog must not blind the others
                self.metrics.errors.labels(watchdog.kind).inc()
                log.exception("watchdog %s failed on a %s event; skipped", watchdog.kind, event.kind.value)
        for finding in findings:
            self.findings_emitted += 1
            self.metrics.findings.labels(finding.watchdog, finding.action.name.lower()).inc()
        return findings

    def observe_message(self, kind: EventKind, data: bytes) -> list[Finding]:
        """Decode and observe one raw message; malformed ones are counted and skipped."""
        try:
            event = decode(kind, data)
        except NotAnInputError:
            return []
        except MalformedMessageError as exc:
            self.malformed_messages += 1
            self.metrics.malformed.labels(kind.value).inc()
            log.debug("skipped a malformed %s message: %s", kind.value, exc)
            return []
        return self.observe(event)


class HaltRequester:
    """Turns a finding's action into a HaltService request, as the watchdog principal."""

    def __init__(self, target: str, token: str, metrics: WatchdogMetrics,
                 timeout_s: float = DEFAULT_HALT_CALL_TIMEOUT_S,
                 credentials: grpc.ChannelCredentials | None = None) -> None:
        """``credentials``: TLS to the gateway (``clients.tls_credentials``); None: plaintext."""
        self._channel = (
            grpc.aio.secure_channel(target, credentials)
            if credentials is not None
            else grpc.aio.insecure_channel(target)
        )
        self._stub = halts_pb2_grpc.HaltServiceStub(self._channel)
        self._metadata = (("authorization", f"Bearer {token}"),)
        self._metrics = metrics
        self._timeout_s = timeout_s

    async def act(self, finding: Finding, throttle_factor: str, throttle_duration_s: int) -> str:
        """Ask for the finding's response; returns the outcome label (also counted)."""
        outcome = await self._request(finding, throttle_factor, throttle_duration_s)
        self._metrics.actions.labels(finding.watchdog, finding.action.name.lower(), outcome).inc()
        return outcome

    async def _request(self, finding: Finding, throttle_factor: str, throttle_duration_s: int) -> str:
        target = finding.target
        reason = f"watchdog {finding.watchdog}: {finding.message}"
        try:
            if finding.action is Action.THROTTLE:
                if target.scope not in (ScopeKind.ACCOUNT, ScopeKind.STRATEGY):
                    log.warning(
                        "cannot throttle %s (only accounts and strategies): alert only", target.label()
                    )
                    return "not_applicable"
                request = halts_pb2.RequestOverrideRequest(
                    throttle_factor=throttle_factor, duration_s=throttle_duration_s, reason=reason,
                    **{"account" if target.scope is ScopeKind.ACCOUNT else "strategy": target.name},
                )
                await self._stub.RequestOverride(request, metadata=self._metadata, timeout=self._timeout_s)
                return "ok"
            state = (
                trading_pb2.TRADING_STATE_HALTED
                if finding.action is Action.HALT
                else trading_pb2.TRADING_STATE_REDUCING
            )
            request = halts_pb2.RequestHaltRequest(
                scope=int(target.scope), name=target.name, state=state, reason=reason
            )
            await self._stub.RequestHalt(request, metadata=self._metadata, timeout=self._timeout_s)
            return "ok"
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.FAILED_PRECONDITION:
                # a stricter state is already in force: nothing to tighten
                return "already_stricter"
            log.error("halt request for %s by %s failed: %s %s", target.label(), finding.watchdog,
                      exc.code().name, exc.details())
            return exc.code().name.lower()

    async def close(self) -> None:
        await self._channel.close()


def post_json(url: str, body: bytes, timeout_s: float) -> int:
    """One blocking HTTP POST (run in a thread); the status code, or raises OSError."""
    request = urllib.request.Request(
        url, data=body, method="POST", headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=timeout_s) as response:  # noqa: S310 (configured URL)
        return response.status


class WebhookSender:
    """Posts findings to webhooks (Slack/Telegram-style ``{"text": ...}`` plus the finding),
    each with retries and exponential backoff, from its own task so alerting never delays
    the watchdogs."""

    def __init__(self, webhooks: Iterable[WebhookConfig], metrics: WatchdogMetrics) -> None:
        self._webhooks = tuple(webhooks)
        self._metrics = metrics
        self._queue: asyncio.Queue[tuple[WebhookConfig, bytes]] = asyncio.Queue(DEFAULT_WEBHOOK_QUEUE_SIZE)
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        if self._webhooks:
            self._task = asyncio.create_task(self._run(), name="watchdog-webhooks")

    def submit(self, finding: watchdogs_pb2.Finding) -> None:
        for webhook in self._webhooks:
            if finding.action < webhook.min_action:
                continue
            text = f"[{Action(finding.action).name}] {finding.watchdog}: {finding.message}"
            body = json.dumps({"text": text, "finding": json_format.MessageToDict(finding)}).encode()
            try:
                self._queue.put_nowait((webhook, body))
            except asyncio.QueueFull:
                self._metrics.dropped.labels("webhooks").inc()

    async def _run(self) -> None:
        while True:
            webhook, body = await self._queue.get()
            await self._deliver(webhook, body)

    async def _deliver(self, webhook: WebhookConfig, body: bytes) -> None:
        backoff_s = webhook.backoff_s
        for attempt in range(1, webhook.max_attempts + 1):
            try:
                status = await asyncio.to_thread(post_json, webhook.url, body, webhook.timeout_s)
                if 200 <= status < 300:
                    self._metrics.webhooks.labels("ok").inc()
                    return
            except urllib.error.HTTPError as exc:
                if 400 <= exc.code < 500 and exc.code != 429:
                    self._metrics.webhooks.labels("refused").inc()
                    log.error("webhook %s refused a finding: HTTP %d", webhook.url, exc.code)
                    return
            except (OSError, ValueError) as exc:
                log.debug("webhook %s attempt %d failed: %s", webhook.url, attempt, exc)
            if attempt < webhook.max_attempts:
                self._metrics.webhooks.labels("retried").inc()
                await asyncio.sleep(backoff_s)
                backoff_s = min(backoff_s * 2, DEFAULT_WEBHOOK_MAX_BACKOFF_S)
        self._metrics.webhooks.labels("failed").inc()
        log.error("webhook %s: finding not delivered after %d attempts", webhook.url, webhook.max_attempts)

    async def stop(self) -> None:
        if self._task is not None:
            await cancel_until_done([self._task])


class WatchdogWorker:
    """The running worker. ``gateway_target``/``token`` may be None: findings are then
    alerts and webhooks only (no halt requests). ``credentials`` make the halt requests
    go over TLS (a gateway started with ``--tls-cert``)."""

    def __init__(
        self,
        config: WatchdogsConfig,
        nats_url: str,
        gateway_target: str | None = None,
        token: str | None = None,
        *,
        registry: CollectorRegistry | None = None,
        credentials: grpc.ChannelCredentials | None = None,
    ) -> None:
        self.config = config
        self._credentials = credentials
        self._nats_url = nats_url
        self.metrics = WatchdogMetrics(registry)
        self._common = {spec.kind: spec.common for spec in config.watchdogs}
        self.engine = WatchdogEngine(config.build(), self.metrics)
        self._gateway_target = gateway_target
        self._token = token
        self._halts: HaltRequester | None = None
        self._webhooks = WebhookSender(config.webhooks, self.metrics)
        self._nc: NatsClient | None = None
        self._findings: asyncio.Queue[Finding] = asyncio.Queue(DEFAULT_FINDINGS_QUEUE_SIZE)
        self._tasks: list[asyncio.Task] = []
        self._status_server: asyncio.Server | None = None
        self._finding_ids = itertools.count(1)
        self.started_ns = 0
        self.recent_findings: list[dict] = []
        self.status_port: int | None = None
        #: JetStream input stream -> whether its consumer is bound (False: waiting for it).
        self.jetstream_bound: dict[str, bool] = {}
        self._pulls: dict[str, object] = {}

    async def start(self) -> None:
        """Connect, subscribe and serve; on any failure everything started is stopped again."""
        try:
            await self._start()
        except BaseException:
            await self.stop()
            raise

    async def _start(self) -> None:
        self.started_ns = time.time_ns()
        if self._gateway_target and self._token:
            self._halts = HaltRequester(
                self._gateway_target, self._token, self.metrics, credentials=self._credentials
            )
        nc = NatsClient()
        await nc.connect(
            servers=[self._nats_url], name=f"pretrade-watchdogs-{self.config.worker_id}",
            allow_reconnect=True, max_reconnect_attempts=-1, reconnect_time_wait=DEFAULT_RECONNECT_WAIT_S,
        )
        self._nc = nc
        js = nc.jetstream()
        for subject, kind in _INPUT_SUBJECTS.items():
            if kind not in self.engine.input_kinds:
                continue
            stream = subjects.JETSTREAM_INPUTS.get(subject)
            if stream is None:
                await nc.subscribe(subject, cb=self._handler(kind), pending_msgs_limit=1_000_000)
            else:
                self.jetstream_bound[stream] = False
                self._tasks.append(asyncio.create_task(
                    self._consume(js, stream, subject, kind), name=f"watchdog-{stream}"
                ))
        await nc.flush()
        self._webhooks.start()
        self._tasks.append(asyncio.create_task(self._emit_findings(), name="watchdog-findings"))
        self._tasks.append(asyncio.create_task(self._heartbeats(), name="watchdog-heartbeats"))
        if self.config.status_listen != "off":
            host, _, port = self.config.status_listen.rpartition(":")
            self._status_server = await asyncio.start_server(
                self._serve_status, host or "127.0.0.1", int(port)
            )
            self.status_port = self._status_server.sockets[0].getsockname()[1]
        log.info("watchdog worker %s watching with %s", self.config.worker_id,
                 ", ".join(w.kind for w in self.engine.watchdogs) or "no watchdogs")

    def _handler(self, kind: EventKind):
        async def on_message(msg) -> None:
            self._observe(kind, msg.data)

        return on_message

    def _observe(self, kind: EventKind, data: bytes) -> None:
        for finding in self.engine.observe_message(kind, data):
            try:
                self._findings.put_nowait(finding)
            except asyncio.QueueFull:
                self.metrics.dropped.labels("findings").inc()

    async def _consume(self, js, stream: str, subject: str, kind: EventKind) -> None:
        """Read one stream through the worker's durable consumer until cancelled: binds
        (creating the consumer if needed) and re-binds after the stream or the consumer
        went away; retries while NATS is down. See the module docstring."""
        durable = subjects.consumer_name(self.config.worker_id)
        seen = RecentIds()
        pull = None
        generation = None  # the consumer's creation time: stream sequences are ids within it
        while True:
            try:
                if pull is None:
                    pull, generation = await self._bind(js, stream, subject, durable)
                    self._pulls[stream] = pull
                    self.jetstream_bound[stream] = True
                    log.info("reading %s through consumer %s", stream, durable)
                try:
                    messages = await pull.fetch(DEFAULT_FETCH_BATCH, timeout=DEFAULT_FETCH_TIMEOUT_S)
                except asyncio.TimeoutError:
                    # idle (or NATS away): make sure the consumer still exists
                    await js.consumer_info(stream, durable, timeout=DEFAULT_FETCH_TIMEOUT_S)
                    continue
                for msg in messages:
                    msg_id = msg.headers.get(subjects.MSG_ID_HEADER) if msg.headers else None
                    if seen.add(msg_id or (generation, msg.metadata.sequence.stream)):
                        self._observe(kind, msg.data)
                    else:
                        self.metrics.duplicates.labels(kind.value).inc()
                    await msg.ack()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # NotFoundError: no stream yet (the gateway creates it), or the stream or the
                # consumer went away; otherwise NATS is down or refused a request (a pull on
                # a deleted consumer has no responders). Either way: bind again, until it works.
                if not isinstance(exc, NotFoundError):
                    log.debug("reading %s: %r; binding again", stream, exc)
                self.jetstream_bound[stream] = False
                if pull is not None:
                    self._pulls.pop(stream, None)
                    with contextlib.suppress(Exception):
                        await pull.unsubscribe()
                    pull = None
                await asyncio.sleep(DEFAULT_JETSTREAM_RETRY_S)

    async def _bind(self, js, stream: str, subject: str, durable: str):
        """The pull subscription of ``durable`` on ``stream`` and the consumer's creation
        time; creates the consumer, starting ``replay_bound_s`` back, if it does not exist.
        NotFoundError while the stream is missing."""
        try:
            info = await js.consumer_info(stream, durable, timeout=DEFAULT_FETCH_TIMEOUT_S)
        except NotFoundError:
            bound_s = self.config.replay_bound_s
            start = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(seconds=bound_s)
            info = await js.add_consumer(stream, js_api.ConsumerConfig(
                durable_name=durable, filter_subject=subject,
                deliver_policy=js_api.DeliverPolicy.BY_START_TIME, opt_start_time=start,
                ack_policy=js_api.AckPolicy.EXPLICIT, ack_wait=DEFAULT_ACK_WAIT_S,
                max_ack_pending=DEFAULT_MAX_ACK_PENDING, inactive_threshold=bound_s,
            ), timeout=DEFAULT_FETCH_TIMEOUT_S)
        return await js.pull_subscribe_bind(durable=durable, stream=stream), info.created

    async def _emit_findings(self) -> None:
        while True:
            finding = await self._findings.get()
            try:
                await self._emit(finding)
            except Exception:
                log.exception("emitting a finding of %s failed", finding.watchdog)

    async def _emit(self, finding: Finding) -> None:
        emitted_ns = time.time_ns()
        finding_id = f"{self.config.worker_id}-{self.started_ns}-{next(self._finding_ids)}"
        message = finding.to_proto(
            finding_id=finding_id, worker_id=self.config.worker_id, emitted_ns=emitted_ns
        )
        self.metrics.detection_lag.observe(max(0, emitted_ns - finding.event_ns) / 1e9)
        log.warning("finding %s: %s -> %s on %s", finding.watchdog, finding.message, finding.action.name,
                    finding.target.label())
        try:
            await self._nc.publish(
                subjects.alerts_subject(finding.watchdog), message.SerializeToString(),
                headers={"Nats-Msg-Id": finding_id},
            )
        except Exception:  # NATS down: the webhooks and the halt request must still go out
            self.metrics.dropped.labels("alerts").inc()
            log.exception("publishing the alert of %s failed", finding.watchdog)
        self._webhooks.submit(message)
        outcome = "alert_only"
        if finding.action is not Action.WARN and self._halts is not None:
            common = self._common[finding.watchdog]
            outcome = await self._halts.act(finding, common.throttle_factor, common.throttle_duration_s)
        record = json_format.MessageToDict(message, preserving_proto_field_name=True)
        record["outcome"] = outcome
        self.recent_findings = (self.recent_findings + [record])[-50:]

    def heartbeat(self) -> watchdogs_pb2.WatchdogHeartbeat:
        return watchdogs_pb2.WatchdogHeartbeat(
            worker_id=self.config.worker_id, sent_ns=time.time_ns(), started_ns=self.started_ns,
            events_observed=self.engine.events_observed, malformed_messages=self.engine.malformed_messages,
            findings_emitted=self.engine.findings_emitted, watchdogs=[w.kind for w in self.engine.watchdogs],
        )

    async def _heartbeats(self) -> None:
        subject = subjects.heartbeat_subject(self.config.worker_id)
        while True:
            beat = self.heartbeat()
            with contextlib.suppress(Exception):
                await self._nc.publish(subject, beat.SerializeToString())
                self.metrics.last_heartbeat.set(beat.sent_ns / 1e9)
            await asyncio.sleep(self.config.heartbeat_interval_s)

    def status(self) -> dict:
        """What GET /status returns."""
        document = json_format.MessageToDict(self.heartbeat(), preserving_proto_field_name=True)
        document["nats_connected"] = bool(self._nc is not None and self._nc.is_connected)
        document["halt_requests"] = bool(self._gateway_target and self._token)
        document["jetstream_inputs"] = dict(self.jetstream_bound)
        document["recent_findings"] = self.recent_findings
        return document

    async def _serve_status(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request_line = await asyncio.wait_for(reader.readline(), 5.0)
            path = request_line.decode("latin-1").split(" ")[1] if request_line.count(b" ") >= 2 else ""
            if path == "/status":
                status, content_type, body = 200, "application/json", json.dumps(self.status()).encode()
            elif path == "/metrics":
                body = generate_latest(self.metrics.registry)
                status, content_type = 200, "text/plain; version=0.0.4"
            else:
                status, content_type, body = 404, "text/plain", b"GET /status or /metrics\n"
            reason = "OK" if status == 200 else "Not Found"
            writer.write(
                f"HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
                + body
            )
            await writer.drain()
        except (asyncio.TimeoutError, OSError, IndexError):
            pass
        finally:
            writer.close()

    async def stop(self) -> None:
        """Stop everything :meth:`start` started (safe to call more than once)."""
        if self._status_server is not None:
            self._status_server.close()
            await self._status_server.wait_closed()
            self._status_server = None
        await cancel_until_done(self._tasks)
        self._tasks.clear()
        for pull in self._pulls.values():
            # a pull subscription may hold messages no fetch will take: drain would wait for
            # them until its timeout. Unfetched messages are not acked, so they are redelivered.
            with contextlib.suppress(Exception):
                await pull.unsubscribe()
        self._pulls.clear()
        await self._webhooks.stop()
        if self._nc is not None:
            try:  # drain delivers what is pending; a NATS that is gone gets a plain close
                await asyncio.wait_for(self._nc.drain(), DEFAULT_DRAIN_TIMEOUT_S)
            except Exception:
                with contextlib.suppress(Exception):
                    await self._nc.close()
            self._nc = None
        if self._halts is not None:
            await self._halts.close()
            self._halts = None
