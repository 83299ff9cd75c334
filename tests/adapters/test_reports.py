"""The adapters' execution queue (clients/adapters/reports.py) on its own, with a stand-in for
``ReportExecutions``: order, retries until an answer, idempotence on the execution id, what a
restart reads back, the exclusive lock, a refused token (backoff, logged once), a malformed
execution (quarantined, not blocking the others). The MT5 bridge and FIX adapter tests run it against a
real gateway."""

from __future__ import annotations

import asyncio
import logging
import sqlite3

import pytest

from clients import GatewayUnavailable, InvalidOrder, Unauthenticated
from clients.errors import FieldViolation
from clients.adapters.reports import (
    OUTCOMES_SCHEMA,
    REPORTS_SCHEMA,
    ExecutionReporter,
    ReportStore,
    open_state_db,
)
from pretrade.v1 import gateway_pb2, types_pb2

pytestmark = pytest.mark.timeout(30)

log = logging.getLogger("test.reports")
WAIT_S = 10.0


def execution(execution_id: str) -> types_pb2.Execution:
    return types_pb2.Execution(account="A", client_order_id="o1", execution_id=execution_id,
                               execution_type=types_pb2.EXECUTION_TYPE_CANCELLED)


class Gateway:
    """``send`` fails while ``down``; records every delivered batch (execution ids)."""

    def __init__(self) -> None:
        self.down = True
        self.batches: list[list[str]] = []
        self.attempts = 0

    async def send(self, executions):
        self.attempts += 1
        if self.down:
            raise GatewayUnavailable("down")
        self.batches.append([e.execution_id for e in executions])
        return [gateway_pb2.ExecutionResult(status=types_pb2.EXECUTION_STATUS_APPLIED) for _ in executions]


def store(path, keep_outcomes=True) -> ReportStore:
    return ReportStore(open_state_db(path, REPORTS_SCHEMA + OUTCOMES_SCHEMA), keep_outcomes=keep_outcomes)


async def test_kept_in_order_retried_until_answered_once_each_and_read_back_after_a_restart(tmp_path):
    path = tmp_path / "r" / "reports.sqlite"
    gateway = Gateway()
    reporter = ExecutionReporter(store(path), gateway.send, log=log, dedup=True, retry_min_s=0.01, retry_max_s=0.02)
    reporter.start()
    first = reporter.submit(execution("x1"))
    assert await reporter.outcome(first, WAIT_S) is None  # the attempt failed: not delivered (yet)
    assert reporter.failing is not None
    second = reporter.submit(execution("x2"))
    assert await reporter.outcome(second, WAIT_S) is None  # at once: the gateway is failing
    repeat = reporter.submit(execution("x1"))
    assert repeat.repeat and reporter.pending_ids() == ["x1", "x2"]
    await reporter.stop()
    assert first.done.result() is None
    reporter.store._db.close()

    reporter = ExecutionReporter(store(path), gateway.send, log=log, dedup=True, retry_min_s=0.01, retry_max_s=0.02)
    assert reporter.start() == 2
    again = reporter.submit(execution("x2"))  # a repeat of a queued one: not stored twice
    assert again.repeat and reporter.pending_ids() == ["x1", "x2"]
    gateway.down = False
    assert await reporter.outcome(again, WAIT_S) == types_pb2.EXECUTION_STATUS_APPLIED
    assert sum(gateway.batches, []) == ["x1", "x2"]  # in order, each once
    assert reporter.pending_ids() == [] and reporter.store.outcome("x1") == "APPLIED"
    late = reporter.submit(execution("x1"))  # delivered already: answered from the record
    assert late.repeat and late.recorded == "APPLIED" and late.done.result() == types_pb2.EXECUTION_STATUS_APPLIED
    assert sum(gateway.batches, []) == ["x1", "x2"]
    await reporter.stop()
    reporter.store._db.close()


async def test_without_dedup_every_submission_is_delivered_like_the_fix_adapter_always_did():
    gateway = Gateway()
    gateway.down = False
    reporter = ExecutionReporter(ReportStore(open_state_db(None, REPORTS_SCHEMA)), gateway.send, log=log)
    reporter.start()
    deliveries = [reporter.submit(execution("f1")), reporter.submit(execution("f1"))]
    await asyncio.wait_for(asyncio.gather(*(d.done for d in deliveries)), WAIT_S)
    assert sum(gateway.batches, []) == ["f1", "f1"] and reporter.store.outcome("f1") is None
    await reporter.stop()
    # stopped: a submission stays stored for the next start, its delivery resolved None
    stopped = reporter.submit(execution("f2"))
    assert stopped.done.result() is None and reporter.pending_ids() == ["f2"]


def test_a_second_process_on_the_state_file_is_refused_and_outcomes_expire(tmp_path):
    path = tmp_path / "reports.sqlite"
    first = store(path)
    first.add("y1", b"data")
    first.remove("y1", types_pb2.EXECUTION_STATUS_DUPLICATE)
    assert first.outcome("y1") == "DUPLICATE" and first.pending_ids() == []
    with pytest.raises(sqlite3.OperationalError, match="locked"):
        open_state_db(path, REPORTS_SCHEMA)
    first.prune_outcomes(0)
    assert first.outcome("y1") is None
    first._db.close()
    store(path)._db.close()  # free again


class RefusingGateway(Gateway):
    """Refuses every call while ``refusing`` (a revoked token: UNAUTHENTICATED), and, like the
    gateway's validator, a whole batch holding an execution whose id starts with ``bad``."""

    def __init__(self) -> None:
        super().__init__()
        self.down = False
        self.refusing = True

    async def send(self, executions):
        self.attempts += 1
        if self.refusing:
            raise Unauthenticated("invalid bearer token")
        bad = [i for i, e in enumerate(executions) if e.execution_id.startswith("bad")]
        if bad:
            raise InvalidOrder("invalid request", tuple(
                FieldViolation(f"executions[{i}].execution_id", "longer than 64 characters") for i in bad))
        return await super().send(executions)


async def test_a_refused_batch_backs_off_is_logged_once_and_is_delivered_once_the_token_is_fixed(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger=log.name)
    gateway = RefusingGateway()
    retry_max_s = 0.05
    reporter = ExecutionReporter(store(tmp_path / "reports.sqlite"), gateway.send, log=log, dedup=True,
                                 retry_min_s=0.01, retry_max_s=retry_max_s)
    reporter.start()
    deliveries = [reporter.submit(execution(f"x{i}")) for i in range(1, 4)]
    window_s = 0.5
    await asyncio.sleep(window_s)
    # backing off: at most one attempt per retry_max_s once the delay is at its max (a hot
    # loop would make thousands), and retried all along
    assert 3 <= gateway.attempts <= window_s / retry_max_s + 4, gateway.attempts
    assert isinstance(reporter.failing, Unauthenticated)
    assert reporter.pending_ids() == ["x1", "x2", "x3"] and not any(d.done.done() for d in deliveries)
    refusals = [r for r in caplog.records if "not delivered" in r.getMessage()]
    assert [(r.levelname, r.getMessage().split(";")[0]) for r in refusals] == [
        ("ERROR", "execution reports not delivered: the gateway refuses them, Unauthenticated: invalid bearer token")
    ]

    gateway.refusing = False  # the token is fixed
    statuses = await asyncio.wait_for(asyncio.gather(*(d.done for d in deliveries)), WAIT_S)
    assert statuses == [types_pb2.EXECUTION_STATUS_APPLIED] * 3
    assert sum(gateway.batches, []) == ["x1", "x2", "x3"]  # all of them, in order, once each
    assert reporter.failing is None and reporter.pending_ids() == []
    recovered = [r.getMessage() for r in caplog.records if "delivered again" in r.getMessage()]
    assert len(recovered) == 1 and "Unauthenticated" in recovered[0]
    assert len([r for r in caplog.records if "not delivered" in r.getMessage()]) == 1
    await reporter.stop()
    reporter.store._db.close()


async def test_a_malformed_execution_is_quarantined_and_does_not_block_the_others(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger=log.name)
    path = tmp_path / "reports.sqlite"
    gateway = RefusingGateway()
    reporter = ExecutionReporter(store(path), gateway.send, log=log, dedup=True, retry_min_s=0.01, retry_max_s=0.02)
    reporter.start()
    ids = ["g1", "bad-1", "g2", "g3"]
    deliveries = [reporter.submit(execution(execution_id)) for execution_id in ids]  # one batch: no await between
    gateway.refusing = False
    statuses = await asyncio.wait_for(asyncio.gather(*(d.done for d in deliveries)), WAIT_S)
    applied = types_pb2.EXECUTION_STATUS_APPLIED
    assert statuses == [applied, None, applied, applied]
    assert sum(gateway.batches, []) == ["g1", "g2", "g3"]  # the others, in order, once each
    refused = deliveries[1].refused
    assert refused.startswith("INVALID_ARGUMENT: invalid request") and "longer than 64" in refused
    assert reporter.pending_ids() == [] and reporter.store.quarantined() == [("bad-1", refused)]
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and "bad-1" in errors[0] and "quarantined" in errors[0]
    later = reporter.submit(execution("g4"))  # the queue flows on
    assert await reporter.outcome(later, WAIT_S) == applied
    await reporter.stop()
    reporter.store._db.close()

    restarted = store(path)  # kept across a restart, and not queued again
    assert restarted.quarantined() == [("bad-1", refused)] and restarted.pending_ids() == []
    restarted._db.close()
