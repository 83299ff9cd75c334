"""Every decision a client received is published, across outages: NATS killed and restarted
mid-stream, and the gateway process itself killed with SIGKILL right after answering.

"Published" is checked the way a consumer of ``PRETRADE_DECISIONS`` sees it: every decision
the client received is in the stream exactly once by ``(gateway_id, sequence)``, with the
content the client received, the stream holds nothing else, and sequences are contiguous.
Verdicts do not matter for that: an outage longer than the halt follower's staleness bound
turns orders into HALT_STATE_UNAVAILABLE rejects, which must be published like any decision,
so only decisions made while NATS is up are required to be accepts.
Everything is real (nats-server killed with SIGKILL, the mmap outbox, gRPC over loopback, the
``pretrade serve`` process); every step has a hard timeout and processes are cleaned up in
``finally`` blocks.
"""

from __future__ import annotations

import asyncio
import collections
import json
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import nats
import nats.js.errors
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from clients import AsyncGatewayClient, GatewayClient, make_order, make_reference_price
from gateway.auth import ensure_demo_tokens
from gateway.config import GATEWAY_ID_FILE, OUTBOX_SUBDIR, GatewayIdMismatchError
from gateway.app import GatewayApp
from gateway.outbox import DecisionOutbox
from gateway.publisher import DecisionSequenceConflictError
from gateway.subjects import DECISIONS_STREAM, decisions_subject
from pretrade.v1 import gateway_pb2, types_pb2
from tests.clients.gateway_harness import (
    GATEWAY_ID,
    accept_all_rules,
    gateway_config,
    running_gateway,
    write_rules,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

REPO_ROOT = Path(__file__).resolve().parents[2]

#: Every order of these tests is accepted however many are working.
ACCEPT_ALL_RULES = accept_all_rules("OUTAGES", ["ACC1"])
REFERENCE_PRICE = "100"
ACCEPT = types_pb2.VERDICT_ACCEPT
SERVING = health_pb2.HealthCheckResponse.SERVING

#: Orders per StreamOrders message, and the pause between messages (keeps the stream, and
#: so the number of decisions to read back, moderate).
STREAM_BATCH_SIZE = 8
STREAM_PAUSE_S = 0.004
#: Batches decided before NATS is killed, while it is down, and after it is back.
BATCHES_BEFORE_OUTAGE = 20
BATCHES_DURING_OUTAGE = 40
BATCHES_AFTER_OUTAGE = 20
#: A batch answered during the outage must not wait for NATS: its round trip is about a
#: millisecond; this bound only catches an order path that blocks on the bus (reconnect
#: waits are 0.5 s, publish timeouts 5 s).
OUTAGE_MAX_ROUND_TRIP_S = 0.4

STEP_TIMEOUT_S = 20.0
PUBLISH_TIMEOUT_S = 30.0
RPC_TIMEOUT_S = 10.0
GATEWAY_START_TIMEOUT_S = 30.0
GATEWAY_STOP_TIMEOUT_S = 10.0


def order(number: int) -> types_pb2.Order:
    """An order every test rule accepts; a distinct client order id and price per number."""
    cents = 9_500 + number % 1_000  # 95.00 .. 104.99, inside the 10 % collar around 100
    return make_order(account="ACC1", symbol="AAPL", side="buy" if number % 2 else "sell", quantity=1,
                      price=f"{cents // 100}.{cents % 100:02d}", client_order_id=f"o-{number}")


async def published_decisions(nats_url: str, gateway_id: str) -> list[types_pb2.Decision]:
    """Every decision of ``gateway_id`` in PRETRADE_DECISIONS, in stream order."""
    nc = await nats.connect(nats_url, connect_timeout=5, allow_reconnect=False)
    try:
        js = nc.jetstream(timeout=5)
        try:
            state = (await js.stream_info(DECISIONS_STREAM)).state
        except nats.js.errors.NotFoundError:
            return []
        if state.messages == 0:
            return []
        subject = decisions_subject(gateway_id)
        sequences = range(state.first_seq, state.last_seq + 1)
        messages = [await js.get_msg(DECISIONS_STREAM, seq) for seq in sequences]
    finally:
        await nc.close()
    return [types_pb2.Decision.FromString(message.data) for message in messages if message.subject == subject]


def assert_published_exactly_once(
    published: list[types_pb2.Decision], received: list[types_pb2.Decision]
) -> None:
    """Each received decision is in the stream once, unchanged; nothing else is; no gaps."""
    keys = [(decision.gateway_id, decision.sequence) for decision in published]
    duplicated = sorted(key for key, count in collections.Counter(keys).items() if count > 1)
    assert not duplicated, f"published more than once: {duplicated[:10]}"
    by_key = dict(zip(keys, published))
    missing = [d.sequence for d in received if (d.gateway_id, d.sequence) not in by_key]
    assert not missing, f"{len(missing)} received decisions never published, e.g. sequences {missing[:10]}"
    changed = [d.sequence for d in received if by_key[(d.gateway_id, d.sequence)] != d]
    assert not changed, f"published content differs from what the client received: {changed[:10]}"
    assert len(published) == len(received), "the stream holds decisions no client received"
    sequences = sorted(decision.sequence for decision in received)
    assert sequences == list(range(sequences[0], sequences[0] + len(sequences))), "a gap in the sequences"


async def until(condition: Callable[[], bool], what: str, worker: asyncio.Task | None = None) -> None:
    """Poll ``condition`` for up to STEP_TIMEOUT_S; fail at once if ``worker`` ended."""
    deadline = time.monotonic() + STEP_TIMEOUT_S
    while not condition():
        if worker is not None and worker.done():
            worker.result()  # its exception, if it failed
            pytest.fail(f"the order stream ended before {what}")
        assert time.monotonic() < deadline, f"timed out after {STEP_TIMEOUT_S} s waiting until {what}"
        await asyncio.sleep(0.01)


# -- NATS killed and restarted mid-stream -----------------------------------------------------


@dataclass
class StreamedBatch:
    decisions: list[types_pb2.Decision]
    round_trip_s: float
    during_outage: bool  # NATS was disconnected when the batch was sent and when it was answered


@dataclass
class OrderStreamDriver:
    """Sends numbered orders on one StreamOrders call, one batch at a time, until stopped."""

    client: AsyncGatewayClient
    nats_connected: Callable[[], bool]
    batches: list[StreamedBatch] = field(default_factory=list)
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self) -> None:
        requests: asyncio.Queue[gateway_pb2.StreamOrdersRequest | None] = asyncio.Queue()

        async def request_stream():
            while (request := await requests.get()) is not None:
                yield request

        responses = self.client.stream(request_stream()).__aiter__()
        next_number = 1
        try:
            while not self.stop.is_set():
                batch_id = len(self.batches) + 1
                orders = [order(number) for number in range(next_number, next_number + STREAM_BATCH_SIZE)]
                next_number += STREAM_BATCH_SIZE
                disconnected_at_send = not self.nats_connected()
                sent = time.perf_counter()
                await requests.put(gateway_pb2.StreamOrdersRequest(batch_id=batch_id, orders=orders))
                response = await asyncio.wait_for(responses.__anext__(), RPC_TIMEOUT_S)
                round_trip_s = time.perf_counter() - sent
                assert response.decisions.batch_id == batch_id
                decisions = list(response.decisions.decisions)
                assert [d.order.client_order_id for d in decisions] == [o.client_order_id for o in orders]
                self.batches.append(
                    StreamedBatch(decisions, round_trip_s, disconnected_at_send and not self.nats_connected())
                )
                await asyncio.sleep(STREAM_PAUSE_S)
        finally:
            await requests.put(None)
            await responses.aclose()

    @property
    def received(self) -> list[types_pb2.Decision]:
        return [decision for batch in self.batches for decision in batch.decisions]

    def batches_during_outage(self) -> list[StreamedBatch]:
        return [batch for batch in self.batches if batch.during_outage]


async def test_nats_killed_and_restarted_mid_stream_every_decision_is_published_once(tmp_path, nats_server):
    rules = write_rules(tmp_path, ACCEPT_ALL_RULES)
    async with running_gateway(tmp_path / "gw", rules, nats_url=nats_server.url) as gateway:
        publisher = gateway.app.publisher
        async with gateway.client() as trader:
            await trader.update_reference_prices([make_reference_price("AAPL", REFERENCE_PRICE)])
            driver = OrderStreamDriver(trader, lambda: publisher.connected)
            streaming = asyncio.create_task(driver.run())
            try:
                await until(
                    lambda: len(driver.batches) >= BATCHES_BEFORE_OUTAGE
                    and publisher.counters.decisions_published > 0,
                    "decisions flow and some are published",
                    streaming,
                )
                await asyncio.wait_for(asyncio.to_thread(nats_server.kill), STEP_TIMEOUT_S)
                await until(lambda: not publisher.connected, "the gateway notices NATS is gone", streaming)
                await until(
                    lambda: len(driver.batches_during_outage()) >= BATCHES_DURING_OUTAGE,
                    "orders are decided while NATS is down",
                    streaming,
                )
                assert publisher.outbox_depth > 0, "decisions of the outage wait in the outbox"
                await asyncio.wait_for(asyncio.to_thread(nats_server.start), STEP_TIMEOUT_S)
                await until(lambda: publisher.connected, "the gateway reconnects", streaming)
                back = len(driver.batches)
                resumed = back + BATCHES_AFTER_OUTAGE
                await until(lambda: len(driver.batches) >= resumed, "decisions flow again", streaming)
            finally:
                driver.stop.set()
                await asyncio.wait_for(streaming, RPC_TIMEOUT_S)
        await gateway.wait_published(PUBLISH_TIMEOUT_S)
        published = await published_decisions(nats_server.url, GATEWAY_ID)

    received = driver.received
    before_outage = driver.batches[:BATCHES_BEFORE_OUTAGE]
    assert all(decision.verdict == ACCEPT for batch in before_outage for decision in batch.decisions)
    slowest_during_outage_s = max(batch.round_trip_s for batch in driver.batches_during_outage())
    assert slowest_during_outage_s < OUTAGE_MAX_ROUND_TRIP_S, f"waited {slowest_during_outage_s:.3f} s"
    assert publisher.counters.disconnects >= 1
    assert_published_exactly_once(published, received)


# -- the gateway process killed with SIGKILL ----------------------------------------------------


class GatewayProcess:
    """``pretrade serve`` in a subprocess on its own data dir; ``target`` once it listens."""

    def __init__(self, data_dir: Path, rules: Path, tokens: Path, nats_url: str, stderr_path: Path) -> None:
        self._stderr = open(stderr_path, "ab")  # noqa: SIM115 (closed in stop)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "gateway.cli", "serve", "--rules", str(rules), "--tokens", str(tokens),
             "--nats-url", nats_url, "--data-dir", str(data_dir), "--gateway-id", KILLED_GATEWAY_ID,
             "--listen", "127.0.0.1:0", "--metrics-listen", "off", "--json", "--log-level", "WARNING"],
            cwd=REPO_ROOT,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
        )
        try:
            ready, _, _ = select.select([self.process.stdout], [], [], GATEWAY_START_TIMEOUT_S)
            assert ready, f"pretrade serve did not start within {GATEWAY_START_TIMEOUT_S} s"
            announced = self.process.stdout.readline()
            assert announced, f"pretrade serve exited: {stderr_path.read_text()}"
            self.target = json.loads(announced)["target"]
            self._wait_serving()
        except BaseException:
            self.stop()
            raise

    def _wait_serving(self) -> None:
        """Until health says SERVING (NATS connected, halt state loaded), as a client would."""
        deadline = time.monotonic() + GATEWAY_START_TIMEOUT_S
        with grpc.insecure_channel(self.target) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            while health.Check(health_pb2.HealthCheckRequest(), timeout=RPC_TIMEOUT_S).status != SERVING:
                assert time.monotonic() < deadline, f"not SERVING within {GATEWAY_START_TIMEOUT_S} s"
                time.sleep(0.02)

    def kill(self) -> None:
        """SIGKILL, as a crash would; returns once the process is gone."""
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(GATEWAY_STOP_TIMEOUT_S)

    def stop(self) -> None:
        """SIGTERM (graceful), SIGKILL after the timeout. Idempotent."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(GATEWAY_STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process.stdout.close()
        self._stderr.close()


KILLED_GATEWAY_ID = "gwkilled"
#: Orders the first gateway answers before it is killed: single calls, a batch, a stream.
SINGLE_ORDERS = 20
BATCH_ORDERS = 300
STREAM_BATCHES = 5


def send_orders(client: GatewayClient, first_number: int) -> list[types_pb2.Decision]:
    """CheckOrder, CheckOrders and StreamOrders: every decision received, in order."""
    number = first_number
    decisions = []
    for _ in range(SINGLE_ORDERS):
        decisions.append(client.check_order(order(number)))
        number += 1
    decisions += client.check_orders([order(n) for n in range(number, number + BATCH_ORDERS)])
    number += BATCH_ORDERS
    requests = []
    for batch_id in range(1, STREAM_BATCHES + 1):
        requests.append(gateway_pb2.StreamOrdersRequest(
            batch_id=batch_id, orders=[order(n) for n in range(number, number + STREAM_BATCH_SIZE)]))
        number += STREAM_BATCH_SIZE
    for response in client.stream(requests, timeout_s=RPC_TIMEOUT_S):
        decisions += response.decisions.decisions
    return decisions


async def wait_until_published(nats_url: str, expected: int) -> list[types_pb2.Decision]:
    deadline = time.monotonic() + PUBLISH_TIMEOUT_S
    while len(published := await published_decisions(nats_url, KILLED_GATEWAY_ID)) < expected:
        assert time.monotonic() < deadline, f"{len(published)} of {expected} decisions published"
        await asyncio.sleep(0.1)
    return published


@pytest.mark.parametrize("nats_while_answering", ["up", "down"])
def test_gateway_killed_with_sigkill_publishes_every_answered_decision_after_restart(
    tmp_path, nats_server, nats_while_answering
):
    """With NATS up, the kill races the publisher (whatever is not acked yet is left in the
    outbox); with NATS down while orders are answered, every decision is still only in the
    outbox when the process dies."""
    data_dir = tmp_path / "gw"
    rules = write_rules(tmp_path, ACCEPT_ALL_RULES)
    tokens = ensure_demo_tokens(data_dir)
    trader_token = tokens.tokens["trader"]
    stderr_path = tmp_path / "serve.stderr"
    received: list[types_pb2.Decision] = []

    first = GatewayProcess(data_dir, rules, tokens.hashes_path, nats_server.url, stderr_path)
    try:
        with GatewayClient(first.target, trader_token, RPC_TIMEOUT_S) as client:
            client.update_reference_prices([make_reference_price("AAPL", REFERENCE_PRICE)])
            if nats_while_answering == "down":
                nats_server.stop()
            received += send_orders(client, first_number=1)
        first.kill()
    finally:
        first.stop()
    if nats_while_answering == "up":
        assert all(decision.verdict == ACCEPT for decision in received)
    last_before_kill = received[-1].sequence
    with DecisionOutbox(data_dir / OUTBOX_SUBDIR) as outbox:  # the killed process's lock is gone
        assert outbox.last_sequence == last_before_kill, "every answered decision was recorded"
        if nats_while_answering == "down":
            assert outbox.depth == len(received), "nothing was published before the kill"
    if nats_while_answering == "down":
        nats_server.start()
        assert asyncio.run(published_decisions(nats_server.url, KILLED_GATEWAY_ID)) == []

    second = GatewayProcess(data_dir, rules, tokens.hashes_path, nats_server.url, stderr_path)
    try:
        with GatewayClient(second.target, trader_token, RPC_TIMEOUT_S) as client:
            client.update_reference_prices([make_reference_price("AAPL", REFERENCE_PRICE)])
            after_restart = send_orders(client, first_number=len(received) + 1)
        published = asyncio.run(wait_until_published(nats_server.url, len(received) + len(after_restart)))
    finally:
        second.stop()
    assert after_restart[0].sequence == last_before_kill + 1, "sequences continue after the last one answered"
    assert_published_exactly_once(published, received + after_restart)


async def test_a_second_life_under_a_used_gateway_id_refuses_to_run(tmp_path, nats_server):
    """A gateway started with a fresh data directory under an id whose decisions are in the
    stream would restart sequences at 1, and JetStream would drop its decisions as
    duplicates of the old ones. It shuts down instead, naming the conflict, before it
    becomes ready (health SERVING waits for the check); the first life's decisions stay as
    they were."""
    rules_path = write_rules(tmp_path, ACCEPT_ALL_RULES)
    async with running_gateway(tmp_path / "first-life", rules_path, nats_url=nats_server.url) as gateway:
        await gateway.set_reference_prices(symbols=("AAPL",), stale=())
        async with gateway.client() as client:
            answered = [await client.check_order(order(number)) for number in range(3)]
        await gateway.wait_published()
    wiped = tmp_path / "wiped"
    wiped.mkdir()
    config = gateway_config(
        wiped, rules_path, nats_url=nats_server.url, tokens_path=ensure_demo_tokens(wiped).hashes_path
    )
    app = GatewayApp(config)
    with pytest.raises(DecisionSequenceConflictError, match=f"gateway id '{GATEWAY_ID}' already has sequence"):
        await asyncio.wait_for(app.run(), GATEWAY_START_TIMEOUT_S)
    assert app.fatal_error is not None and app.publisher.fatal_error is app.fatal_error
    published = await published_decisions(nats_server.url, GATEWAY_ID)
    assert [decision.sequence for decision in published] == [decision.sequence for decision in answered]


async def test_a_data_directory_is_refused_under_another_gateway_id(tmp_path, nats_server):
    """The outbox holds one gateway id's sequence space: started under another id (a changed
    --gateway-id, or the host-name default on a new host) the gateway would publish the old
    id's decisions as the new one's. It refuses, naming both ids; the rightful id starts."""
    rules_path = write_rules(tmp_path, ACCEPT_ALL_RULES)
    data_dir = tmp_path / "data"
    async with running_gateway(data_dir, rules_path, nats_url=nats_server.url) as gateway:
        await gateway.set_reference_prices(symbols=("AAPL",), stale=())
        async with gateway.client() as client:
            await client.check_order(order(1))
    with pytest.raises(GatewayIdMismatchError, match=f"belongs to gateway id '{GATEWAY_ID}', not 'gw-other'"):
        async with running_gateway(data_dir, rules_path, nats_url=nats_server.url, gateway_id="gw-other"):
            pass
    async with running_gateway(data_dir, rules_path, nats_url=nats_server.url) as gateway:
        assert gateway.app.gate.last_sequence == 1
    assert (data_dir / GATEWAY_ID_FILE).read_text() == f"{GATEWAY_ID}\n"
