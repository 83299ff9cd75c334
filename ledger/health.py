"""The ledger's health as watchdog metrics: ``ledger_lag_s`` and ``ledger_verified``.

Every ``health_interval_s`` (:data:`DEFAULT_HEALTH_INTERVAL_S`) the ingest worker publishes
two ``pretrade.v1.StrategyMetric`` messages on :data:`HEALTH_SUBJECT`
(``pretrade.v1.metrics.strategy.firm``; scope ``SCOPE_FIRM``, empty name), the input of the
``db_watchdog`` (``watchdogs/portfolio.py``, docs/watchdogs.md). ``timestamp_ns`` is the
wall clock when the value was measured: the watchdog's event time.

``ledger_lag_s``
    The age, in seconds, of the oldest message the ledger has not committed: per source,
    the first message of its stream after the stream sequence the ledger holds as committed
    (``LedgerWriter.position``, stored with the entries) that matches the source's filter;
    ``now - its JetStream timestamp``, 0 when there is none. The metric is the maximum over
    the sources. One JetStream ``STREAM.MSG.GET`` (``next_by_subj``) per source and tick,
    answered from the stream's index. It does not depend on the consumer's state, so it is
    right after a restart too, and it is 0 when the stream is idle however long ago the
    last message came (unlike "age of the newest committed message").

``ledger_verified``
    1.0 when an incremental ``LedgerStore.verify(from_index=v)`` of the entries appended
    since the last verified index ``v`` passed, 0.0 when it failed (a stored entry, leaf,
    node or checkpoint that does not match; the error is logged). ``v`` is kept in memory:
    it starts at ``verify_from`` (None: the ledger's size when the worker starts, i.e. only
    what this process appends is verified; 0: the whole ledger once, then the tail) and
    moves to the verified tree size after each pass that succeeds. After a failure ``v``
    stays, so every later pass fails again and the metric stays 0.0 until an operator
    intervenes. The verify runs in a worker thread in its own LMDB read transaction (a
    snapshot: LMDB lets readers run beside the writer), so ingest goes on; a pass still
    running at the next tick is not restarted, and the last completed result is published.
    Nothing is published for ``ledger_verified`` until the first pass has completed.

Publishing is core NATS (at most once), like the watchdogs' other inputs. A failure to
measure or to publish is logged in one line and never stops ingest.
"""

from __future__ import annotations

import logging
import threading
import time

from ledger.errors import LedgerError
from ledger.store import LedgerStore
from pretrade.v1 import trading_pb2, watchdogs_pb2
from watchdogs.subjects import strategy_metric_subject

log = logging.getLogger(__name__)

#: Seconds between two publications of the ledger's health metrics.
DEFAULT_HEALTH_INTERVAL_S = 5.0
#: Environment variable overriding it for ``LedgerRuntime`` (``pretrade up``,
#: ``pretrade ledger run``); 0 switches health publishing off.
HEALTH_INTERVAL_ENV = "PRETRADE_LEDGER_HEALTH_INTERVAL_S"
#: Longest wait for JetStream's answer when measuring the lag, seconds.
HEALTH_QUERY_TIMEOUT_S = 2.0

#: The metric names db_watchdog reads (watchdogs.portfolio.METRIC_LEDGER_*).
METRIC_LEDGER_LAG_S = "ledger_lag_s"
METRIC_LEDGER_VERIFIED = "ledger_verified"
#: ``pretrade.v1.metrics.strategy.firm``: the ledger's health is the firm's.
HEALTH_SUBJECT = strategy_metric_subject("firm")


def health_metric(metric: str, value: float, timestamp_ns: int) -> bytes:
    """One serialized FIRM-scope ``StrategyMetric``, as db_watchdog expects it."""
    return watchdogs_pb2.StrategyMetric(
        scope=trading_pb2.SCOPE_FIRM, name="", metric=metric, value=float(value), timestamp_ns=timestamp_ns
    ).SerializeToString()


class VerifyCancelled(Exception):
    """Raised inside a verify pass that was asked to stop (the worker is stopping)."""


class TailVerifier:
    """Incremental verification of the ledger's tail (see the module docstring).

    :meth:`run` is blocking and meant for a worker thread, one pass at a time; the other
    members are read from the event loop.
    """

    def __init__(self, store: LedgerStore, verify_from: int | None = None) -> None:
        self.store = store
        self.verified_index = store.size() if verify_from is None else verify_from
        self.passed: bool | None = None  # result of the last completed pass; None: none yet
        self.passes = 0
        self.last_error: str | None = None
        self._cancel = threading.Event()

    def due(self) -> bool:
        """Whether a pass has something to do: none ran yet, the last one failed (it is
        repeated), or entries were appended since the last verified index."""
        return self.passed is not True or self.store.size() > self.verified_index

    def run(self) -> bool:
        """Verify entries ``verified_index ..`` in one read transaction; record and return
        whether that passed. Raises :class:`VerifyCancelled` after :meth:`cancel`."""
        started = time.monotonic()
        try:
            report = self.store.verify(from_index=self.verified_index, progress=self._check_cancel)
        except VerifyCancelled:
            raise
        except LedgerError as exc:  # integrity errors, and a verified index beyond the tree
            self._fail(f"{type(exc).__name__}: {exc}")
            return False
        except Exception as exc:  # an LMDB read error: the tail could not be verified
            self._fail(f"{type(exc).__name__}: {exc}")
            return False
        self.verified_index = report.tree_size
        self.passed, self.last_error = True, None
        self.passes += 1
        log.debug(
            "ledger tail verified: %d entries up to %d in %.3f s",
            report.entries_verified,
            report.tree_size,
            time.monotonic() - started,
        )
        return True

    def _fail(self, reason: str) -> None:
        self.passed, self.last_error = False, reason
        self.passes += 1
        log.error("ledger verification from entry %d failed: %s", self.verified_index, reason)

    def cancel(self) -> None:
        """Make a running pass stop at its next chunk (between 64k-entry chunks)."""
        self._cancel.set()

    def _check_cancel(self, _done: int, _total: int) -> None:
        if self._cancel.is_set():
            raise VerifyCancelled()
