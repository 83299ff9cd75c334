"""Executions an adapter owes the gateway: written to SQLite before the adapter acknowledges
them, then delivered with ``ReportExecutions`` in order by one worker that retries until the
gateway answers; those not acknowledged when the adapter stops are delivered after its next
start. Shared by the FIX adapter (the ``reports`` table of its order book,
:mod:`clients.adapters.fix.book`) and the MT5 bridge (its own file,
``<data dir>/mt5/reports.sqlite``).

* :func:`open_state_db` opens (creates) a state file with an exclusive lock: a second
  process on the same file fails at once (``sqlite3.OperationalError``; the callers turn
  it into a one-line error). WAL journal, ``synchronous=NORMAL``: a process crash loses
  nothing, a power loss can lose the last transactions. ``None``: in memory.
* :class:`ReportStore`: the ``reports`` table (execution id → the serialized
  ``pretrade.v1.Execution``) and, with ``keep_outcomes``, the ``delivered`` table (execution
  id → the gateway's answer) that makes the queue idempotent on the execution id.
* :class:`ExecutionReporter`: the worker. Any answer of the gateway (``APPLIED``,
  ``DUPLICATE``, ``UNKNOWN_ORDER``, ``OVERFILL``) ends a report (logged, recorded with
  ``keep_outcomes``, removed from the queue). A batch the gateway does not answer — a
  transport error, or a refusal of the whole call such as a revoked token
  (UNAUTHENTICATED, PERMISSION_DENIED): :class:`clients.GatewayError` — is retried, never
  dropped, with a backoff from ``retry_min_s`` doubling to ``retry_max_s``; the reports
  behind it wait (order is kept). That is logged once when it starts (an ERROR for a
  refusal, which needs an operator, a WARNING otherwise) and once when the gateway answers
  again, not at every attempt; :attr:`ExecutionReporter.failing` says it meanwhile.
  A batch refused as malformed (INVALID_ARGUMENT: the gateway validates a whole
  batch and refuses it for one bad execution, e.g. an id longer than its name limit) is
  sent again one execution at a time, and an execution refused on its own is moved to the
  ``quarantined`` table with the gateway's answer (logged as an ERROR, listed by
  :meth:`ReportStore.quarantined`): kept, not delivered, and no longer blocking the
  others, which no retry could have delivered otherwise.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from clients import GatewayError, InvalidOrder, PermissionDenied, Unauthenticated
from pretrade.v1 import gateway_pb2, types_pb2

#: Executions go to the gateway in batches of at most this many.
REPORT_BATCH_MAX = 64
#: A batch the gateway did not answer is sent again after this, doubling up to the max: at
#: most one attempt per max once an outage or refusal lasts, and an answer within it once
#: the gateway (or the token) is back.
DEFAULT_REPORT_RETRY_MIN_S = 0.1
DEFAULT_REPORT_RETRY_MAX_S = 2.0
#: Outcomes of delivered executions (``keep_outcomes``) are kept this long (seconds).
DEFAULT_OUTCOME_RETENTION_S = 7 * 24 * 3600

REPORTS_SCHEMA = """
CREATE TABLE IF NOT EXISTS reports (
    execution_id TEXT PRIMARY KEY,     -- an execution the gateway has not acknowledged yet
    execution BLOB NOT NULL            -- pretrade.v1.Execution, serialized
);
CREATE TABLE IF NOT EXISTS quarantined (
    execution_id TEXT PRIMARY KEY,     -- an execution the gateway refused as malformed: kept, not delivered
    execution BLOB NOT NULL,           -- pretrade.v1.Execution, serialized
    error TEXT NOT NULL,               -- the gateway's answer (INVALID_ARGUMENT and its field violations)
    quarantined_ns INTEGER NOT NULL
);
"""
OUTCOMES_SCHEMA = """
CREATE TABLE IF NOT EXISTS delivered (
    execution_id TEXT PRIMARY KEY,     -- an execution the gateway answered
    status TEXT NOT NULL,              -- its answer: APPLIED, DUPLICATE, UNKNOWN_ORDER, OVERFILL
    delivered_ns INTEGER NOT NULL
);
"""

class StateFileError(RuntimeError):
    """A state file cannot be opened (locked by another process, unreadable): one line."""


Send = Callable[[Sequence[types_pb2.Execution]], Awaitable[list[gateway_pb2.ExecutionResult]]]


def open_state_db(path: Path | None, schema: str) -> sqlite3.Connection:
    """The SQLite state file ``path`` (its directory is made; ``None``: in memory), locked
    exclusively and with ``schema`` applied. Raises ``sqlite3.OperationalError`` when it is
    locked by another process (or cannot be opened)."""
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(str(path) if path is not None else ":memory:", isolation_level=None,
                         check_same_thread=False)
    try:
        db.execute("PRAGMA locking_mode=EXCLUSIVE")
        if path is not None:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
        db.executescript(schema)  # also takes the exclusive lock
    except sqlite3.Error:
        db.close()
        raise
    return db


def status_name(status: int) -> str:
    """``EXECUTION_STATUS_APPLIED`` → ``APPLIED``."""
    return types_pb2.ExecutionStatus.Name(status).removeprefix("EXECUTION_STATUS_")


class ReportStore:
    """Executions not acknowledged by the gateway yet (table ``reports``, in arrival order),
    on an open connection (:func:`open_state_db` with :data:`REPORTS_SCHEMA`, plus
    :data:`OUTCOMES_SCHEMA` when ``keep_outcomes``). Every call commits."""

    def __init__(self, db: sqlite3.Connection, *, keep_outcomes: bool = False) -> None:
        self._db = db
        self.keep_outcomes = keep_outcomes

    def add(self, execution_id: str, execution: bytes) -> None:
        self._db.execute("INSERT OR REPLACE INTO reports VALUES (?, ?)", (execution_id, execution))

    def remove(self, execution_id: str, status: int | None = None) -> None:
        """The gateway answered ``execution_id`` (``status``, recorded with ``keep_outcomes``)."""
        if self.keep_outcomes and status is not None:
            with self._db:  # one transaction: never in neither table
                self._db.execute("BEGIN")
                self._db.execute("DELETE FROM reports WHERE execution_id = ?", (execution_id,))
                self._db.execute("INSERT OR REPLACE INTO delivered VALUES (?, ?, ?)",
                                 (execution_id, status_name(status), time.time_ns()))
        else:
            self._db.execute("DELETE FROM reports WHERE execution_id = ?", (execution_id,))

    def quarantine(self, execution_id: str, execution: bytes, error: str) -> None:
        """The gateway refused ``execution_id`` as malformed: out of the queue, into the
        ``quarantined`` table with ``error`` (one transaction: never in neither table)."""
        with self._db:
            self._db.execute("BEGIN")
            self._db.execute("DELETE FROM reports WHERE execution_id = ?", (execution_id,))
            self._db.execute("INSERT OR REPLACE INTO quarantined VALUES (?, ?, ?, ?)",
                             (execution_id, execution, error, time.time_ns()))

    def quarantined(self) -> list[tuple[str, str]]:
        """(execution id, the gateway's answer) of each quarantined execution, oldest first."""
        return list(self._db.execute("SELECT execution_id, error FROM quarantined ORDER BY quarantined_ns"))

    def pending(self) -> list[bytes]:
        """The serialized executions not acknowledged yet, oldest first."""
        return [row[0] for row in self._db.execute("SELECT execution FROM reports ORDER BY rowid")]

    def pending_ids(self) -> list[str]:
        return [row[0] for row in self._db.execute("SELECT execution_id FROM reports ORDER BY rowid")]

    def outcome(self, execution_id: str) -> str | None:
        """The gateway's answer to a delivered execution (``keep_outcomes``), e.g. ``APPLIED``."""
        if not self.keep_outcomes:
            return None
        row = self._db.execute("SELECT status FROM delivered WHERE execution_id = ?",
                               (execution_id,)).fetchone()
        return row[0] if row else None

    def prune_outcomes(self, retention_s: float) -> None:
        if self.keep_outcomes:
            horizon = time.time_ns() - int(retention_s * 1e9)
            self._db.execute("DELETE FROM delivered WHERE delivered_ns < ?", (horizon,))


@dataclass
class Delivery:
    """One submitted execution. ``done`` resolves with the gateway's ``ExecutionStatus`` once
    it answered, or ``None`` when the reporter stopped first (the execution stays stored and
    is delivered after the next start), or ``None`` with ``refused`` set when the gateway
    refused it as malformed (quarantined). ``repeat``: its execution id was submitted before
    (``dedup`` reporters only: it is not delivered again)."""

    execution: types_pb2.Execution
    done: asyncio.Future
    repeat: bool = False
    recorded: str | None = field(default=None)  # the stored outcome of an earlier delivery (repeat)
    refused: str | None = field(default=None)  # the gateway's answer when it refused it (quarantined)


class ExecutionReporter:
    """``ExecutionReporter(store, send)``; ``start()`` (on the loop; queues what the store
    holds), ``submit(execution)``, ``await outcome(delivery, timeout_s)``, ``await stop()``.

    ``send(executions)`` is the ``ReportExecutions`` call (raising :class:`clients.GatewayError`
    when the gateway cannot be reached). With ``dedup`` a submitted execution id that is
    queued or was delivered already is not stored or delivered again (the FIX adapter does not
    dedup: the venue's ExecIDs reach the gateway, which answers a repeat ``DUPLICATE``)."""

    def __init__(
        self,
        store: ReportStore,
        send: Send,
        *,
        log: logging.Logger,
        name: str = "report-executions",
        dedup: bool = False,
        batch_max: int = REPORT_BATCH_MAX,
        retry_min_s: float = DEFAULT_REPORT_RETRY_MIN_S,
        retry_max_s: float = DEFAULT_REPORT_RETRY_MAX_S,
    ) -> None:
        self.store = store
        self._send = send
        self._log = log
        self._name = name
        self._dedup = dedup
        self._batch_max = batch_max
        self._retry_min_s = retry_min_s
        self._retry_max_s = retry_max_s
        self._queue: asyncio.Queue[Delivery] | None = None
        self._task: asyncio.Task | None = None
        self._pending: dict[str, Delivery] = {}  # dedup: queued execution id -> its first delivery
        self._failing: GatewayError | None = None
        self._failed_attempts = 0  # since the gateway last answered
        self._failed: asyncio.Future | None = None  # resolved at the next failed attempt

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    @property
    def failing(self) -> GatewayError | None:
        """The last attempt's error while the gateway is not answering (unreachable, or
        refusing the calls: a revoked token), else None."""
        return self._failing

    def start(self) -> int:
        """Start the worker and queue the executions left in the store (oldest first);
        returns how many there were."""
        loop = asyncio.get_running_loop()
        self._queue = asyncio.Queue()
        self._task = loop.create_task(self._run(), name=self._name)
        pending = self.store.pending()
        for data in pending:  # not acknowledged by the gateway before the last stop
            execution = types_pb2.Execution.FromString(data)
            delivery = Delivery(execution, loop.create_future())
            if self._dedup:
                self._pending.setdefault(execution.execution_id, delivery)
            self._queue.put_nowait(delivery)
        return len(pending)

    def submit(self, execution: types_pb2.Execution) -> Delivery:
        """Store ``execution`` (committed when this returns) and queue it for the worker. When
        the worker is not running (stopping), it stays stored for the next start and the
        delivery is resolved with ``None``."""
        loop = asyncio.get_running_loop()
        execution_id = execution.execution_id
        if self._dedup:
            first = self._pending.get(execution_id)
            if first is not None:
                return Delivery(execution, first.done, repeat=True)
            recorded = self.store.outcome(execution_id)
            if recorded is not None:
                done = loop.create_future()
                done.set_result(types_pb2.ExecutionStatus.Value(f"EXECUTION_STATUS_{recorded}"))
                return Delivery(execution, done, repeat=True, recorded=recorded)
        self.store.add(execution_id, execution.SerializeToString())
        delivery = Delivery(execution, loop.create_future())
        if not self.running:
            delivery.done.set_result(None)  # stays in the store: delivered after the next start
            return delivery
        if self._dedup:
            self._pending[execution_id] = delivery
        self._queue.put_nowait(delivery)
        return delivery

    async def outcome(self, delivery: Delivery, timeout_s: float) -> int | None:
        """The gateway's answer to ``delivery`` if it comes within ``timeout_s``; ``None`` at
        once when the gateway is not answering (the last attempt failed), when an attempt fails
        meanwhile, or at the timeout (the execution stays queued and is delivered later)."""
        if not delivery.done.done() and self._failing is None and self.running:
            if self._failed is None or self._failed.done():
                self._failed = asyncio.get_running_loop().create_future()
            await asyncio.wait({delivery.done, self._failed}, timeout=timeout_s,
                               return_when=asyncio.FIRST_COMPLETED)
        return delivery.done.result() if delivery.done.done() else None

    def pending_ids(self) -> list[str]:
        """Execution ids not acknowledged by the gateway yet (oldest first)."""
        return self.store.pending_ids()

    async def stop(self) -> None:
        """Stop the worker; executions not delivered stay in the store (their deliveries are
        resolved with ``None``). Idempotent."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._queue is not None:
            while not self._queue.empty():  # left in the store for the next start
                delivery = self._queue.get_nowait()
                if not delivery.done.done():
                    delivery.done.set_result(None)
        self._pending.clear()
        if self._failed is not None and not self._failed.done():
            self._failed.set_result(None)

    def _attempt_failed(self, error: GatewayError) -> None:
        """Log the first failure of a run of them (and a change of kind, e.g. an outage that
        turns into a refused token), not every attempt."""
        self._failed_attempts += 1
        if self._failing is None or type(self._failing) is not type(error):
            refused = isinstance(error, Unauthenticated | PermissionDenied)
            self._log.log(
                logging.ERROR if refused else logging.WARNING,
                "execution reports not delivered: %s%s: %s; they stay queued and are retried every %.1f s "
                "at most until the gateway answers", "the gateway refuses them, " if refused else "",
                type(error).__name__, error.message, self._retry_max_s,
            )
        self._failing = error
        if self._failed is not None and not self._failed.done():
            self._failed.set_result(None)

    def _answered(self) -> None:
        if self._failing is not None:
            self._log.warning("execution reports delivered again, after %d failed attempt(s) (last: %s: %s)",
                              self._failed_attempts, type(self._failing).__name__, self._failing.message)
        self._failing = None
        self._failed_attempts = 0

    async def _run(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while not self._queue.empty() and len(batch) < self._batch_max:
                batch.append(self._queue.get_nowait())
            try:
                await self._deliver(batch)
            except asyncio.CancelledError:  # stopping: the batch stays in the store for the next start
                for delivery in batch:
                    if not delivery.done.done():
                        delivery.done.set_result(None)
                raise

    async def _deliver(self, batch: list[Delivery]) -> None:
        """Send ``batch`` until the gateway answers it. Refused as malformed, it is sent again
        one execution at a time (in order), and one refused on its own is quarantined."""
        answer = await self._send_until_answered([delivery.execution for delivery in batch])
        if isinstance(answer, InvalidOrder):
            if len(batch) > 1:
                for delivery in batch:
                    await self._deliver([delivery])
            else:
                self._quarantine(batch[0], answer)
            return
        for delivery, result in zip(batch, answer, strict=False):
            execution = delivery.execution
            self._log.info("execution %s of %s: %s", execution.execution_id, execution.client_order_id,
                           types_pb2.ExecutionStatus.Name(result.status))
            self.store.remove(execution.execution_id, result.status)
            self._settle(delivery, result.status)

    async def _send_until_answered(
        self, executions: list[types_pb2.Execution]
    ) -> list[gateway_pb2.ExecutionResult] | InvalidOrder:
        """The gateway's results, or its INVALID_ARGUMENT (an answer too: no retry could
        change it); any other error is retried with the backoff."""
        delay = self._retry_min_s
        while True:
            try:
                results = await self._send(executions)
            except InvalidOrder as exc:
                self._answered()
                return exc
            except GatewayError as exc:
                self._attempt_failed(exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self._retry_max_s)
                continue
            self._answered()
            return results

    def _quarantine(self, delivery: Delivery, error: InvalidOrder) -> None:
        execution = delivery.execution
        violations = "; ".join(f"{v.field}: {v.description}" for v in error.violations)
        reason = f"INVALID_ARGUMENT: {error.message}" + (f" ({violations})" if violations else "")
        self.store.quarantine(execution.execution_id, execution.SerializeToString(), reason)
        self._log.error("execution %s of %s refused by the gateway and quarantined (kept in the state file, "
                        "not delivered): %s", execution.execution_id, execution.client_order_id, reason)
        delivery.refused = reason
        self._settle(delivery, None)

    def _settle(self, delivery: Delivery, status: int | None) -> None:
        execution_id = delivery.execution.execution_id
        if self._dedup and self._pending.get(execution_id) is delivery:
            del self._pending[execution_id]
        if not delivery.done.done():
            delivery.done.set_result(status)
