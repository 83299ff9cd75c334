"""Prometheus metrics of the gateway, served on their own port.

A dedicated ``CollectorRegistry`` (not the process-global default) so that tests can build
several gateways in one process and so that only gateway metrics are exposed.

Per-order metrics (check latency, decisions by verdict, failed checks by code) are kept by
:class:`DecisionStats`, a collector of plain counters that the order path bumps with a few
integer additions. prometheus-client's own ``Histogram.observe`` and ``Counter.inc`` take
a lock and validate on every call (about 1.2 µs for one decision's metrics, measured with
``bench/bench_gateway.py``), which is a third of the order path's budget; the counters are
turned into Prometheus families only when ``/metrics`` is scraped. Everything else
(per-RPC counts and durations, gauges read at scrape time) uses prometheus-client's types.

Reloads (rules, tokens) are counted by outcome because a failed one changes nothing: the
gateway goes on trading on the old limits, or admitting a token that was meant to be
revoked, and only an alert on ``outcome="failed"`` tells an operator who did not read the log.
"""

from __future__ import annotations

import asyncio
import time
from typing import Callable

import grpc
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, InfoMetricFamily
from prometheus_client.registry import Collector
from prometheus_client.utils import INF, floatToGoString

from fastpath.codes import Check
from gateway.auth import AuthInterceptor, wrap_method_handler
from gateway.config import parse_host_port
from gateway.orderpath import DecisionCounters

#: Check latency buckets, in seconds: 1 us .. 10 ms. A pre-trade check lives in microseconds;
#: anything past the last bucket is an incident, not a distribution.
CHECK_LATENCY_BUCKETS_S = (
    1e-6, 2e-6, 5e-6, 10e-6, 20e-6, 50e-6, 100e-6, 200e-6, 500e-6, 1e-3, 2e-3, 5e-3, 10e-3,
)
RPC_LATENCY_BUCKETS_S = (50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3, 50e-3, 100e-3, 1.0)

VERDICT_ACCEPT = "accept"
VERDICT_REJECT = "reject"

#: The ``outcome`` label values of the reload counters.
OUTCOME_OK = "ok"
OUTCOME_FAILED = "failed"
#: The gateway's metric name prefix (the standalone ledger's is ``pretrade_ledger_``).
GATEWAY_PREFIX = "pretrade_"
#: The status codes a token reload ends streams with (``gateway.auth``), always exported.
STREAM_END_CODES = (grpc.StatusCode.UNAUTHENTICATED.name, grpc.StatusCode.PERMISSION_DENIED.name)


class DecisionStats(Collector):
    """Per-decision metrics as plain counters, exported at scrape time.

    ``pretrade_check_latency_seconds`` (histogram), ``pretrade_decisions_total{verdict}``
    and ``pretrade_check_failures_total{code}``, with the names, buckets and labels
    prometheus-client's own types would give them. The counters are a compiled
    :class:`gateway.orderpath.DecisionCounters` that the order path bumps in C.

    Threading: the order path counts on the event loop thread only (one writer); the
    scrape runs on the HTTP server's thread and reads the counters without a lock. A
    scrape can therefore see one decision counted in the latency histogram but not yet by
    verdict, which the next scrape corrects; Prometheus counters tolerate that, and taking
    a lock per decision is what this class exists to avoid.
    """

    def __init__(self) -> None:
        self.counters = DecisionCounters(CHECK_LATENCY_BUCKETS_S, (code.name for code in Check))

    def collect(self):
        counters = self.counters
        cumulative, buckets = 0, []
        for bound, count in zip((*counters.bucket_bounds, INF), counters.bucket_counts()):
            cumulative += count
            buckets.append((floatToGoString(bound), cumulative))
        yield HistogramMetricFamily(
            "pretrade_check_latency_seconds",
            "Time to decide one order: kernel check and decision build.",
            buckets=buckets,
            sum_value=counters.latency_sum_s,
        )
        decisions = CounterMetricFamily(
            "pretrade_decisions_total", "Decisions by verdict.", labels=["verdict"]
        )
        decisions.add_metric([VERDICT_ACCEPT], counters.accepted)
        decisions.add_metric([VERDICT_REJECT], counters.rejected)
        yield decisions
        failures = CounterMetricFamily(
            "pretrade_check_failures_total",
            "Failed checks of rejected orders, by reason code (an order can fail several).",
            labels=["code"],
        )
        for code, count in counters.failures_by_code.items():
            failures.add_metric([code], count)
        yield failures


class TokenReloadCollector(Collector):
    """The token reloads of one :class:`~gateway.auth.AuthInterceptor` (its
    ``reload_stats``) and what is in force now, read at scrape time: the gateway exports it
    with ``pretrade_``, ``pretrade ledger run --listen`` with ``pretrade_ledger_``, so both
    ports that reload a token file on SIGHUP are watched the same way.

    ``<prefix>token_reloads_total{outcome}``, ``<prefix>token_last_reload_success_timestamp_seconds``
    (0 until a reload took effect), ``<prefix>tokens_in_force``,
    ``<prefix>token_reload_ended_streams_total{code}`` and ``<prefix>authenticated_streams``.
    """

    def __init__(self, interceptor: AuthInterceptor, prefix: str) -> None:
        self._interceptor = interceptor
        self._prefix = prefix

    def collect(self):
        prefix, interceptor = self._prefix, self._interceptor
        stats = interceptor.reload_stats
        reloads = CounterMetricFamily(
            prefix + "token_reloads_total",
            "Token file reloads (SIGHUP) by outcome; a failed one keeps the tokens in force.",
            labels=["outcome"],
        )
        reloads.add_metric([OUTCOME_OK], stats.succeeded)
        reloads.add_metric([OUTCOME_FAILED], stats.failed)
        yield reloads
        yield GaugeMetricFamily(
            prefix + "token_last_reload_success_timestamp_seconds",
            "Unix time of the last token reload that took effect (0: none since start).",
            value=stats.last_success_unix_s,
        )
        yield GaugeMetricFamily(
            prefix + "tokens_in_force", "Tokens admitted now (entries of the token file in force).",
            value=len(interceptor.store),
        )
        ended = CounterMetricFamily(
            prefix + "token_reload_ended_streams_total",
            "Open streams ended by token reloads, by status code (token gone: UNAUTHENTICATED; "
            "roles lost: PERMISSION_DENIED).",
            labels=["code"],
        )
        for code in STREAM_END_CODES:
            ended.add_metric([code], stats.streams_ended[code])
        yield ended
        yield GaugeMetricFamily(
            prefix + "authenticated_streams",
            "Authenticated streaming calls open now: the streams a token reload checks again.",
            value=interceptor.open_streams,
        )


class RulesVersionCollector(Collector):
    """``pretrade_rules_info{version}``: the rules version in force, read at scrape time
    from ``version()`` (so every reload, by SIGHUP, ReloadRules or an override, shows)."""

    def __init__(self, version: Callable[[], str]) -> None:
        self._version = version

    def collect(self):
        yield InfoMetricFamily(
            "pretrade_rules",
            "The rules version in force (the hash GetStatus and every decision carry).",
            value={"version": self._version()},
        )


class GatewayMetrics:
    """Every metric the gateway exports, registered in one dedicated registry."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.decision_stats = DecisionStats()
        self.registry.register(self.decision_stats)
        #: What the order path counts each decision in (gateway.orderpath).
        self.decision_counters = self.decision_stats.counters
        self.replays = Counter(
            "pretrade_decision_replays_total",
            "Idempotent retries answered with the original decision.",
            registry=self.registry,
        )
        self.rpcs = Counter(
            "pretrade_rpcs_total",
            "Completed RPCs by method and status code.",
            ["method", "code"],
            registry=self.registry,
        )
        self.rpc_latency = Histogram(
            "pretrade_rpc_duration_seconds",
            "RPC duration by method (streams: lifetime).",
            ["method"],
            buckets=RPC_LATENCY_BUCKETS_S,
            registry=self.registry,
        )
        self.open_streams = Gauge(
            "pretrade_open_streams", "Open StreamOrders streams.", registry=self.registry
        )
        self.publish_lag = Gauge(
            "pretrade_publish_lag_seconds",
            "Age of the oldest decision not yet acknowledged by JetStream.",
            registry=self.registry,
        )
        self.outbox_depth = Gauge(
            "pretrade_outbox_depth",
            "Decisions in the outbox not yet acknowledged by JetStream.",
            registry=self.registry,
        )
        self.nats_connected = Gauge(
            "pretrade_nats_connected", "1 while connected to NATS.", registry=self.registry
        )
        self.decisions_published = Counter(
            "pretrade_decisions_published_total", "Decisions JetStream newly stored.", registry=self.registry
        )
        self.publish_failures = Counter(
            "pretrade_publish_failures_total",
            "Failed attempts to publish a batch of decisions.",
            registry=self.registry,
        )
        self.rules_reloads = Counter(
            "pretrade_rules_reloads_total",
            "Rules recompiles (SIGHUP, AdminService.ReloadRules, a limit override) by outcome; "
            "a failed one keeps the rules in force.",
            ["outcome"],
            registry=self.registry,
        )
        for outcome in (OUTCOME_OK, OUTCOME_FAILED):
            self.rules_reloads.labels(outcome)  # exported as 0 before the first reload
        self.rules_last_reload_success = Gauge(
            "pretrade_rules_last_reload_success_timestamp_seconds",
            "Unix time of the last rules reload that took effect (0: none since start).",
            registry=self.registry,
        )

    def count_rules_reload(self, succeeded: bool) -> None:
        """One rules reload (``gateway.servicer.RulesReloader``) and its outcome."""
        self.rules_reloads.labels(OUTCOME_OK if succeeded else OUTCOME_FAILED).inc()
        if succeeded:
            self.rules_last_reload_success.set_to_current_time()

    def watch_rules(self, version: Callable[[], str]) -> None:
        """Export the rules version in force, read at scrape time."""
        self.registry.register(RulesVersionCollector(version))

    def watch_auth(self, interceptor: AuthInterceptor) -> None:
        """Export the token reloads and the tokens and streams in force of the port's interceptor."""
        self.registry.register(TokenReloadCollector(interceptor, GATEWAY_PREFIX))

    def watch_publisher(
        self,
        publish_lag_s: Callable[[], float],
        outbox_depth: Callable[[], int],
        connected: Callable[[], bool],
    ) -> None:
        """Read publisher state at scrape time (no work on the order path)."""
        self.publish_lag.set_function(publish_lag_s)
        self.outbox_depth.set_function(outbox_depth)
        self.nats_connected.set_function(lambda: 1.0 if connected() else 0.0)


def _status_name(context: grpc.aio.ServicerContext, error: BaseException | None) -> str:
    code = context.code()
    if code is not None:
        return code.name
    if error is None:
        return grpc.StatusCode.OK.name
    if isinstance(error, (GeneratorExit, asyncio.CancelledError)):
        return grpc.StatusCode.CANCELLED.name
    return grpc.StatusCode.UNKNOWN.name


class MetricsInterceptor(grpc.aio.ServerInterceptor):
    """Counts every RPC by method and final status code and times it. Placed first (outermost)
    so that calls refused by authentication are counted too."""

    def __init__(self, metrics: GatewayMetrics) -> None:
        self._metrics = metrics

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        rpcs = self._metrics.rpcs
        latency = self._metrics.rpc_latency.labels(method)

        def after(context, started: float, error: BaseException | None) -> None:
            latency.observe(time.perf_counter() - started)
            rpcs.labels(method, _status_name(context, error)).inc()

        return wrap_method_handler(handler, lambda _context: time.perf_counter(), after)


class MetricsHttpServer:
    """The /metrics HTTP endpoint (prometheus-client's threaded server)."""

    def __init__(self, metrics: GatewayMetrics, listen: str) -> None:
        host, port = parse_host_port(listen, "--metrics-listen")
        self._server, self._thread = start_http_server(port, addr=host, registry=metrics.registry)
        self.port = self._server.server_port

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()
