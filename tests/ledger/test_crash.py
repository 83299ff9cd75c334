"""Crash the ingest worker with SIGKILL, mid-ingest and between commit and ack; restart it:
no gap, no duplicate, and the ledger verifies. The worker runs as a real separate process
(tests/ledger/ingest_process.py); this process reads the same ledger readonly beside it."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gateway.subjects import MSG_ID_HEADER, decisions_subject
from ledger.entries import EntryKind
from ledger.errors import LedgerFormatError, LedgerNotFoundError
from ledger.index import LedgerIndexes
from ledger.layout import ledger_path
from ledger.store import LedgerStore
from tests.ledger.ingest_harness import GATEWAY_ID, connect, decision, ensure_streams, identities_by_kind

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

DECISIONS = 20_000
REPO_ROOT = Path(__file__).resolve().parents[2]
PROCESS_START_TIMEOUT_S = 30.0
INGEST_TIMEOUT_S = 90.0


async def fill_stream(url: str, count: int) -> None:
    """``count`` decisions in the stream (core publishes, then wait until all are stored)."""
    nc, js = await connect(url)
    await ensure_streams(js)
    subject = decisions_subject(GATEWAY_ID)
    for sequence in range(1, count + 1):
        await nc.publish(subject, decision(sequence).SerializeToString(), headers={MSG_ID_HEADER: f"{GATEWAY_ID}:{sequence}"})
    await nc.flush()
    deadline = time.monotonic() + 30
    while (await js.stream_info("PRETRADE_DECISIONS")).state.messages < count:
        assert time.monotonic() < deadline, "stream not filled"
        await asyncio.sleep(0.05)
    await nc.close()


class WorkerProcess:
    def __init__(self, data_dir: Path, url: str, log_path: Path, *extra: str) -> None:
        self._log = open(log_path, "ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.ledger.ingest_process", str(data_dir), url, *extra],
            cwd=REPO_ROOT,
            env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def kill(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
        code = self.process.wait(10)
        self._log.close()
        return code

    def wait(self, timeout_s: float) -> int:
        code = self.process.wait(timeout_s)
        self._log.close()
        return code


def wait_until(condition, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.005)


def open_reader(data_dir: Path) -> LedgerStore:
    """A readonly reader, once the worker has created the ledger (file and metadata)."""
    readers: list[LedgerStore] = []

    def opened() -> bool:
        try:
            readers.append(LedgerStore.open(ledger_path(data_dir), readonly=True))
        except (LedgerNotFoundError, LedgerFormatError):
            return False
        return True

    wait_until(opened, PROCESS_START_TIMEOUT_S, "the worker to create the ledger")
    return readers[0]


def assert_exactly_once(store: LedgerStore, count: int) -> None:
    assert store.size() == count
    identities = identities_by_kind(store)[EntryKind.DECISION]
    assert sorted(identities) == [(GATEWAY_ID, sequence) for sequence in range(1, count + 1)]
    indexes = LedgerIndexes(store)
    for sequence in (1, count // 2, count):
        assert len(indexes.order_entries("ACC1", f"cl-{sequence}")) == 1
    report = store.verify()
    assert report.tree_size == count


def test_kill_minus_9_mid_ingest_then_restart(nats_server, tmp_path):
    asyncio.run(fill_stream(nats_server.url, DECISIONS))
    data_dir = tmp_path / "data"
    log_path = tmp_path / "worker.log"
    reader = None
    try:
        for kill_at in (2_000, 9_000, 15_000):
            worker = WorkerProcess(data_dir, nats_server.url, log_path)
            try:
                reader = reader or open_reader(data_dir)
                # (the lambda runs inside this iteration: binding the loop variables late is right)
                wait_until(lambda: reader.size() >= kill_at, INGEST_TIMEOUT_S, f"{kill_at} entries")  # noqa: B023
            finally:
                assert worker.kill() == -signal.SIGKILL, log_path.read_text()[-3000:]
            assert reader.size() < DECISIONS, "the kill came too late to interrupt ingest"
            reader.verify()  # whatever was committed before the kill is intact
        worker = WorkerProcess(data_dir, nats_server.url, log_path)
        try:
            wait_until(lambda: reader.size() >= DECISIONS, INGEST_TIMEOUT_S, "the whole stream")
            time.sleep(0.5)  # anything more would be a duplicate
        finally:
            worker.kill()
        assert_exactly_once(reader, DECISIONS)
    finally:
        if reader is not None:
            reader.close()


def test_kill_between_commit_and_ack_then_restart(nats_server, tmp_path):
    asyncio.run(fill_stream(nats_server.url, 5_000))
    data_dir = tmp_path / "data"
    log_path = tmp_path / "worker.log"
    dying = WorkerProcess(data_dir, nats_server.url, log_path, "--die-after-commits", "2")
    assert dying.wait(PROCESS_START_TIMEOUT_S) == -signal.SIGKILL, log_path.read_text()[-3000:]
    reader = open_reader(data_dir)
    try:
        committed = reader.size()
        assert 0 < committed < 5_000
        worker = WorkerProcess(data_dir, nats_server.url, log_path)
        try:
            wait_until(lambda: reader.size() >= 5_000, INGEST_TIMEOUT_S, "the whole stream")
            time.sleep(0.5)
        finally:
            worker.kill()
        assert_exactly_once(reader, 5_000)
    finally:
        reader.close()
