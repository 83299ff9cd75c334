"""The ledger's Prometheus metrics, scraped over HTTP: ``pretrade ledger run`` as a process of
its own (real nats-server, real LMDB) with the values matching what it ingested, the lag and
verified figures equal to what health published, ``--metrics-listen off`` opening no port,
bad values refused in one line, and the ledger hosted in the gateway (``pretrade up``)
exporting through the gateway's own /metrics."""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import signal
import socket
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from clients import make_order
from gateway.subjects import DECISIONS_STREAM, EVENTS_STREAM, decisions_subject
from ledger.cli import EXIT_ERROR, EXIT_OK, main, register
from ledger.health import HEALTH_INTERVAL_ENV, HEALTH_SUBJECT, METRIC_LEDGER_LAG_S, METRIC_LEDGER_VERIFIED
from ledger.layout import ledger_path
from ledger.metrics import COMMIT_DURATION_BUCKETS_S, DEFAULT_METRICS_LISTEN, MetricsHttpServer
from ledger.runtime import LedgerRuntime
from ledger.store import LedgerStore
from pretrade.v1 import watchdogs_pb2
from tests.clients.gateway_harness import running_gateway
from tests.ledger.ingest_harness import (
    FAST_WORKER,
    GATEWAY_ID,
    connect,
    decision,
    ensure_streams,
    publish_decisions,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

REPO_ROOT = Path(__file__).resolve().parents[2]
WAIT_S = 60.0
PROCESS_START_S = 60.0
PROCESS_STOP_S = 30.0
LEDGER = "pretrade_ledger_"


# --- helpers -----------------------------------------------------------------------------------


def scrape_text(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.read().decode()


def samples(text: str) -> dict[str, float]:
    """Every sample of an exposition, by name (and ``{le="..."}`` for histogram buckets)."""
    result = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f'{key}="{value}"' for key, value in sorted(sample.labels.items()))
            result[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return result


async def scrape(url: str) -> dict[str, float]:
    return samples(await asyncio.to_thread(scrape_text, url))


async def scrape_until(url: str, expected: dict[str, float], timeout_s: float = WAIT_S) -> dict[str, float]:
    """Scrape until every ``expected`` sample has its value; the last scrape either way (the
    caller asserts, so a mismatch shows every value)."""
    deadline = time.monotonic() + timeout_s
    while True:
        values = await scrape(url)
        if all(values.get(name) == value for name, value in expected.items()) or time.monotonic() > deadline:
            return values
        await asyncio.sleep(0.1)


def ledger_values(values: dict[str, float]) -> dict[str, float]:
    return {name: value for name, value in values.items() if name.startswith(LEDGER)}


def listening_tcp_ports(pid: int) -> set[int]:
    """The TCP ports process ``pid`` listens on (its socket inodes in LISTEN state)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:["):-1])
    ports = set()
    for table in ("tcp", "tcp6"):
        path = Path(f"/proc/{pid}/net/{table}")
        if not path.exists():
            continue
        for line in path.read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


class LedgerProcess:
    """``pretrade ledger run --json`` in a subprocess; :attr:`info` is its start-up line."""

    def __init__(self, data_dir: Path, nats_url: str, *arguments: str) -> None:
        self._stderr = open(data_dir.parent / "ledger-run.stderr", "wb")  # noqa: SIM115 - closed in stop()
        self.stderr_path = Path(self._stderr.name)
        self.arguments = ["ledger", "run", "--data-dir", str(data_dir), "--nats-url", nats_url, "--json", *arguments]
        self.process = None
        self.info: dict = {}

    async def start(self) -> None:
        import subprocess

        self.process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "ledger.cli", *self.arguments,
            cwd=REPO_ROOT, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
            stdout=subprocess.PIPE, stderr=self._stderr,
        )
        try:
            line = await asyncio.wait_for(self.process.stdout.readline(), PROCESS_START_S)
        except TimeoutError:
            raise AssertionError(f"ledger run did not start: {self.stderr_path.read_text()}") from None
        assert line, f"ledger run exited: {self.stderr_path.read_text()}"
        self.info = json.loads(line)

    async def stop(self) -> int:
        try:
            if self.process is None:
                return EXIT_OK
            if self.process.returncode is None:
                self.process.send_signal(signal.SIGTERM)
            try:
                return await asyncio.wait_for(self.process.wait(), PROCESS_STOP_S)
            except TimeoutError:
                self.process.kill()
                await self.process.wait()
                raise AssertionError("ledger run did not stop on SIGTERM") from None
        finally:
            self._stderr.close()


async def wait_for_ledger_size(data_dir: Path, size: int, timeout_s: float = WAIT_S) -> None:
    """Until the ledger in ``data_dir`` (read beside the running worker) holds ``size`` entries."""
    path = ledger_path(data_dir)
    deadline = time.monotonic() + timeout_s
    store = None
    try:
        while True:
            if store is None and (path / "data.mdb").exists():
                store = LedgerStore.open(path, readonly=True)
            held = store.size() if store is not None else 0
            if held >= size:
                return
            assert time.monotonic() < deadline, f"the ledger holds {held} entries, {size} expected"
            await asyncio.sleep(0.05)
    finally:
        if store is not None:
            store.close()


# --- pretrade ledger run -----------------------------------------------------------------------


async def test_ledger_run_serves_what_it_ingested(nats_server, tmp_path):
    nc, js = await connect(nats_server.url)
    await ensure_streams(js)
    await publish_decisions(js, [decision(sequence) for sequence in range(1, 41)])
    await publish_decisions(js, [decision(sequence) for sequence in range(1, 6)], with_msg_id=False)  # duplicates
    await js.publish(decisions_subject(GATEWAY_ID), b"\xff not a decision")  # malformed
    await publish_decisions(js, [decision(7, trace_id="other bytes")], with_msg_id=False)  # identity conflict
    started_s = time.time()
    ledger = LedgerProcess(tmp_path / "data", nats_server.url, "--metrics-listen", "127.0.0.1:0",
                           "--health-interval", "0.2", "--checkpoint-interval-ms", "100")
    try:
        await ledger.start()
        url = ledger.info["metrics"]
        port = int(url.rsplit(":", 1)[1].split("/")[0])
        assert url == f"http://127.0.0.1:{port}/metrics"
        assert listening_tcp_ports(ledger.process.pid) == {port}
        await wait_for_ledger_size(tmp_path / "data", 40)
        values = await scrape_until(url, {
            LEDGER + "entries_appended_total": 40,
            LEDGER + "duplicates_skipped_total": 5,
            LEDGER + "malformed_skipped_total": 1,
            LEDGER + "identity_conflicts_total": 1,
            LEDGER + "size_entries": 40,
            LEDGER + "last_checkpoint_size_entries": 40,
            LEDGER + "lag_seconds": 0.0,
            LEDGER + "verified": 1.0,
        })
        ledger_only = ledger_values(values)
        assert ledger_only[LEDGER + "entries_appended_total"] == 40, ledger_only
        assert ledger_only[LEDGER + "duplicates_skipped_total"] == 5, ledger_only
        assert ledger_only[LEDGER + "malformed_skipped_total"] == 1, ledger_only
        assert ledger_only[LEDGER + "identity_conflicts_total"] == 1, ledger_only
        assert ledger_only[LEDGER + "size_entries"] == 40, ledger_only
        assert ledger_only[LEDGER + "last_checkpoint_size_entries"] == 40, ledger_only
        assert started_s <= ledger_only[LEDGER + "last_checkpoint_timestamp_seconds"] <= time.time()
        assert ledger_only[LEDGER + "checkpoints_created_total"] >= 1
        assert ledger_only[LEDGER + "lag_seconds"] == 0.0, ledger_only  # caught up
        assert started_s <= ledger_only[LEDGER + "lag_measured_timestamp_seconds"] <= time.time()
        assert ledger_only[LEDGER + "verified"] == 1.0, ledger_only
        batches = ledger_only[LEDGER + "batches_committed_total"]
        assert batches >= 1
        # One commit-duration observation per batch, in cumulative buckets ending at +Inf.
        histogram = LEDGER + "commit_duration_seconds"
        assert ledger_only[f"{histogram}_count"] == batches
        assert ledger_only[f'{histogram}_bucket{{le="+Inf"}}'] == batches
        bucket_counts = [ledger_only[f'{histogram}_bucket{{le="{bound}"}}'] for bound in COMMIT_DURATION_BUCKETS_S]
        assert bucket_counts == sorted(bucket_counts)
        assert 0 < ledger_only[f"{histogram}_sum"] < 60
        assert not [name for name in ledger_only if "token" in name]  # no --listen: no token file to reload
    finally:
        code = await ledger.stop()
        await nc.close()
    assert code == EXIT_OK, ledger.stderr_path.read_text()
    assert "Traceback" not in ledger.stderr_path.read_text()


async def test_metrics_listen_off_opens_no_port(nats_server, tmp_path):
    nc, js = await connect(nats_server.url)
    await ensure_streams(js)
    await publish_decisions(js, [decision(sequence) for sequence in range(1, 4)])
    ledger = LedgerProcess(tmp_path / "data", nats_server.url, "--metrics-listen", "off", "--health-interval", "0")
    try:
        await ledger.start()
        assert "metrics" not in ledger.info
        await wait_for_ledger_size(tmp_path / "data", 3)  # up and ingesting
        assert listening_tcp_ports(ledger.process.pid) == set()
    finally:
        code = await ledger.stop()
        await nc.close()
    assert code == EXIT_OK, ledger.stderr_path.read_text()


def test_the_default_metrics_address():
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    assert parser.parse_args(["ledger", "run"]).metrics_listen == DEFAULT_METRICS_LISTEN == "127.0.0.1:9465"


@pytest.mark.parametrize("value", ["nonsense", "127.0.0.1", "127.0.0.1:99999", ":9465", "127.0.0.1:port"])
def test_a_bad_metrics_listen_is_one_line(tmp_path, capsys, value):
    code = main(["ledger", "run", "--data-dir", str(tmp_path / "data"), "--metrics-listen", value])
    err = capsys.readouterr().err
    assert code == EXIT_ERROR
    assert err.startswith("pretrade: error: --metrics-listen") and err.count("\n") == 1 and repr(value) in err, err
    assert not (tmp_path / "data").exists()  # refused before opening anything


def test_a_metrics_port_in_use_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(gc, "freeze", lambda: None)  # what `ledger run` does to its own process
    monkeypatch.setattr(gc, "set_threshold", lambda *threshold: None)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        listen = f"127.0.0.1:{taken.getsockname()[1]}"
        code = main(["ledger", "run", "--data-dir", str(tmp_path / "data"), "--nats-url", "nats://127.0.0.1:1",
                     "--metrics-listen", listen, "--health-interval", "0"])
    err = capsys.readouterr().err
    assert code == EXIT_ERROR
    assert err.startswith(f"pretrade: error: --metrics-listen {listen}: cannot listen") and err.count("\n") == 1, err
    runtime = LedgerRuntime(tmp_path / "data", health_interval_s=0)  # the ledger was closed: its lock is free
    runtime.close()


# --- the runtime's collector -------------------------------------------------------------------


async def test_lag_and_verified_are_the_figures_health_published(nats_server, tmp_path, monkeypatch):
    """Commits held back: health measures a real lag once (long interval), and the scrape
    shows exactly the value published on NATS; then the commits go through."""
    nc, js = await connect(nats_server.url)
    await ensure_streams(js)
    await publish_decisions(js, [decision(sequence) for sequence in range(1, 21)])
    published: dict[str, float] = {}
    both_published = asyncio.Event()

    async def on_metric(msg) -> None:
        metric = watchdogs_pb2.StrategyMetric.FromString(msg.data)
        published[metric.metric] = metric.value
        if len(published) == 2:
            both_published.set()

    await nc.subscribe(HEALTH_SUBJECT, cb=on_metric)
    await nc.flush()
    registry = CollectorRegistry()
    runtime = LedgerRuntime(tmp_path / "data", worker_options=FAST_WORKER, health_interval_s=600,
                            metrics_registry=registry)
    release = threading.Event()
    commit = runtime.writer.commit

    def held_commit(batches):
        assert release.wait(WAIT_S), "commit never released"
        return commit(batches)

    monkeypatch.setattr(runtime.writer, "commit", held_commit)
    http = MetricsHttpServer(registry, "127.0.0.1:0")
    try:
        before = ledger_values(await scrape(http.url))
        assert LEDGER + "lag_seconds" not in before and LEDGER + "verified" not in before  # not measured yet
        assert LEDGER + "last_checkpoint_size_entries" not in before  # no checkpoint yet
        assert before[LEDGER + "size_entries"] == 0
        await runtime.start(nats_server.url)
        await asyncio.wait_for(both_published.wait(), WAIT_S)
        values = ledger_values(await scrape(http.url))
        assert published[METRIC_LEDGER_LAG_S] > 0
        assert values[LEDGER + "lag_seconds"] == published[METRIC_LEDGER_LAG_S]
        assert values[LEDGER + "verified"] == published[METRIC_LEDGER_VERIFIED] == 1.0
        assert values[LEDGER + "entries_appended_total"] == 0
        release.set()
        values = await scrape_until(http.url, {LEDGER + "entries_appended_total": 20, LEDGER + "size_entries": 20})
        assert values[LEDGER + "entries_appended_total"] == 20 and values[LEDGER + "size_entries"] == 20
        assert values[LEDGER + "commit_duration_seconds_count"] == values[LEDGER + "batches_committed_total"] >= 1
    finally:
        release.set()
        await asyncio.wait_for(runtime.stop(), 30)
        http.stop()
        await nc.close()
    assert not [family for family in registry.collect() if family.name.startswith(LEDGER)]  # unregistered


# --- hosted in the gateway (pretrade up) -------------------------------------------------------


async def test_the_gateway_exports_the_hosted_ledgers_metrics(tmp_path, nats_server, monkeypatch):
    monkeypatch.setenv(HEALTH_INTERVAL_ENV, "0.2")
    async with running_gateway(tmp_path / "gw", nats_url=nats_server.url, host_ledger=True) as gateway:
        runtime = gateway.app.ledger
        assert runtime is not None and runtime.metrics_registry is gateway.app.metrics.registry
        await gateway.set_reference_prices()
        verdicts = {"accept": 0, "reject": 0}
        async with gateway.client() as trader:
            for number, quantity in enumerate(("10", "10", "10", "5000")):
                result = await trader.check_order(make_order(account="ACC1", symbol="AAPL", side="buy",
                                                             quantity=quantity, price="100",
                                                             client_order_id=f"order-{number}"))
                verdicts["reject" if result.failures else "accept"] += 1
        assert verdicts["accept"] and verdicts["reject"]
        await gateway.wait_published()
        nc, js = await connect(nats_server.url)
        published = 0
        for stream in (DECISIONS_STREAM, EVENTS_STREAM):  # decisions, and the RulesLoaded at startup
            published += (await js.stream_info(stream)).state.messages
        await nc.close()
        assert published >= 5
        url = f"http://127.0.0.1:{gateway.app.metrics_port}/metrics"
        values = await scrape_until(url, {
            LEDGER + "entries_appended_total": published,
            LEDGER + "size_entries": published,
            LEDGER + "verified": 1.0,
            LEDGER + "lag_seconds": 0.0,
        })
        for verdict, count in verdicts.items():  # the gateway's own metrics, on the same page
            assert values[f'pretrade_decisions_total{{verdict="{verdict}"}}'] == count
        ledger_only = ledger_values(values)
        assert ledger_only[LEDGER + "entries_appended_total"] == published, ledger_only
        assert ledger_only[LEDGER + "size_entries"] == published == runtime.writer.store.size(), ledger_only
        assert ledger_only[LEDGER + "verified"] == 1.0 and ledger_only[LEDGER + "lag_seconds"] == 0.0, ledger_only
        assert ledger_only[LEDGER + "duplicates_skipped_total"] == 0
        assert ledger_only[LEDGER + "commit_duration_seconds_count"] == ledger_only[LEDGER + "batches_committed_total"]
        registry = gateway.app.metrics.registry
    assert not [family for family in registry.collect() if family.name.startswith(LEDGER)]  # gone with the ledger
