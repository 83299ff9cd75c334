"""Prometheus metrics of the ledger's ingest worker, read at scrape time.

:class:`LedgerCollector` turns the worker's plain attributes (``LedgerWriter.counters``,
the ledger's size and last checkpoint, the last health measurement) into Prometheus
families only when ``/metrics`` is scraped, so ingest does no extra work per entry; the
one thing measured for it is the commit duration, two clock reads and one bucket increment
per commit (:class:`DurationHistogram`).

Where they are served:

* ``pretrade ledger run`` serves them on ``--metrics-listen`` (:data:`DEFAULT_METRICS_LISTEN`;
  ``off``: no endpoint) with :class:`MetricsHttpServer`, from a registry of their own;
* inside ``pretrade up`` the gateway passes its own registry to ``LedgerRuntime``
  (``metrics_registry``), so the ledger's metrics appear on the gateway's ``/metrics``
  and no second port is opened.

Threading: the counters are written by the committer's thread and the event loop and read
by the HTTP server's thread without a lock (as ``gateway.metrics.DecisionStats``); a scrape
may see a batch counted in one metric and not yet in another, which the next scrape
corrects.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Sequence
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector
from prometheus_client.utils import INF, floatToGoString

if TYPE_CHECKING:
    from ledger.ingest import LedgerIngestWorker

#: ``pretrade ledger run``'s /metrics address: the port after the gateway's (9464), so a
#: gateway and a ledger running as its own process on one host do not collide.
DEFAULT_METRICS_LISTEN = "127.0.0.1:9465"
#: The ``--metrics-listen`` value that turns the endpoint off.
METRICS_OFF = "off"

#: Commit duration buckets, in seconds: 0.1 ms .. 5 s. A commit is one LMDB write
#: transaction with its fsync pair, from a handful of entries (well under a millisecond
#: without a real fsync, a few ms with one) to ``commit_batch_max_entries`` under a backlog
#: (about 5 µs of CPU each: 100 ms for 20 000).
COMMIT_DURATION_BUCKETS_S = (
    0.1e-3, 0.25e-3, 0.5e-3, 1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3, 50e-3, 100e-3, 250e-3, 500e-3, 1.0, 2.5, 5.0,
)

PREFIX = "pretrade_ledger_"


class DurationHistogram:
    """A histogram as plain counters: :meth:`observe` is one bisect and two additions.

    One writer (the committer's thread); read by :class:`LedgerCollector` at scrape time.
    """

    def __init__(self, bounds: Sequence[float] = COMMIT_DURATION_BUCKETS_S) -> None:
        self.bounds = tuple(bounds)
        #: Observations per bucket (not cumulative); the last one is +Inf.
        self.counts = [0] * (len(self.bounds) + 1)
        self.sum_s = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect_left(self.bounds, seconds)] += 1
        self.sum_s += seconds

    def buckets(self) -> list[tuple[str, int]]:
        """Cumulative ``(le, count)`` pairs, as ``HistogramMetricFamily`` takes them."""
        cumulative, result = 0, []
        for bound, count in zip((*self.bounds, INF), self.counts):
            cumulative += count
            result.append((floatToGoString(bound), cumulative))
        return result


class LedgerCollector(Collector):
    """Every ``pretrade_ledger_*`` metric of one ingest worker (docs/ledger.md, "Metrics").

    Gauges that have no value yet are left out rather than exported as 0: the lag and
    ``verified`` until the first health measurement (never when health is off), the last
    checkpoint while the ledger has none.
    """

    def __init__(self, worker: LedgerIngestWorker) -> None:
        self._worker = worker

    def collect(self):
        worker = self._worker
        writer = worker.writer
        counters = writer.counters
        for name, value, documentation in (
            ("entries_appended", counters.entries_appended, "Entries appended since the worker started."),
            (
                "batches_committed",
                counters.batches_committed,
                "Commits: what the committer took at once, one LMDB write transaction (none if nothing was new).",
            ),
            (
                "duplicates_skipped",
                counters.duplicates_dropped,
                "Messages left out: their identity is in the ledger with the same bytes.",
            ),
            (
                "malformed_skipped",
                counters.malformed_skipped,
                "Messages left out: not a valid entry of their stream.",
            ),
            (
                "identity_conflicts",
                counters.identity_conflicts,
                "Messages left out: their identity is in the ledger with different bytes.",
            ),
            ("checkpoints_created", counters.checkpoints_created, "Checkpoints the worker stored."),
        ):
            yield CounterMetricFamily(PREFIX + name, documentation, value=value)
        yield GaugeMetricFamily(
            PREFIX + "size_entries", "Entries in the ledger (its tree size).", value=writer.store.written_size
        )
        checkpoint = writer.last_checkpoint
        if checkpoint is not None:
            yield GaugeMetricFamily(
                PREFIX + "last_checkpoint_size_entries",
                "Tree size of the latest checkpoint.",
                value=checkpoint.tree_size,
            )
            if checkpoint.timestamp_ms is not None:
                yield GaugeMetricFamily(
                    PREFIX + "last_checkpoint_timestamp_seconds",
                    "Time of the latest checkpoint (its time-unix-ms line), Unix seconds.",
                    value=checkpoint.timestamp_ms / 1000,
                )
        lag = worker.last_lag  # (lag_s, measured at, Unix ns) or None
        if lag is not None:
            yield GaugeMetricFamily(
                PREFIX + "lag_seconds",
                "Age of the oldest message not committed yet, as last measured for ledger_lag_s.",
                value=lag[0],
            )
            yield GaugeMetricFamily(
                PREFIX + "lag_measured_timestamp_seconds",
                "When pretrade_ledger_lag_seconds was measured, Unix seconds.",
                value=lag[1] / 1e9,
            )
        verifier = worker.verifier
        if verifier is not None and verifier.passed is not None:
            yield GaugeMetricFamily(
                PREFIX + "verified",
                "1 when the last incremental verify of the ledger's tail passed, 0 if it failed (ledger_verified).",
                value=1.0 if verifier.passed else 0.0,
            )
        durations = writer.commit_durations
        yield HistogramMetricFamily(
            PREFIX + "commit_duration_seconds",
            "Time of one commit (one LMDB write transaction): decode, de-duplicate, hash, write, fsync.",
            buckets=durations.buckets(),
            sum_value=durations.sum_s,
        )


class MetricsHttpServer:
    """A /metrics HTTP endpoint for ``registry`` (prometheus-client's threaded server).

    ``listen`` is ``host:port`` (port 0: any free port, see :attr:`port`); a value that is
    not, or an address that cannot be bound, is a ``ValueError`` naming ``--metrics-listen``.
    """

    def __init__(self, registry: CollectorRegistry, listen: str) -> None:
        host, port = parse_metrics_listen(listen)
        try:
            self._server, self._thread = start_http_server(port, addr=host, registry=registry)
        except OSError as exc:
            raise ValueError(f"--metrics-listen {listen}: cannot listen: {exc.strerror or exc}") from None
        self.host = host
        self.port = self._server.server_port

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()


def parse_metrics_listen(listen: str) -> tuple[str, int]:
    """``host:port`` (``[v6]:port``) as a tuple, else a ``ValueError`` naming ``--metrics-listen``."""
    host, sep, port = listen.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"--metrics-listen: expected host:port or '{METRICS_OFF}', got {listen!r}")
    return host.strip("[]"), int(port)
