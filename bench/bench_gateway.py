"""What the gateway adds to an order's round trip, measured against a no-op on the same stack.

Run: ``.venv/bin/python -m pytest bench/bench_gateway.py --benchmark-only -s`` (``-s`` prints
the tables; the figures are also in ``benchmark.extra_info`` and in the summary table at the
end of the run). ``--benchmark-disable`` (``make test``) runs every benchmark once with tiny
counts and keeps only the behavioural asserts: every decision accepted, counts match, every
decision published.

The stack
    One server process (this module run as ``python -m bench.bench_gateway``) hosts two
    gRPC servers on one uvloop: the real gateway (:class:`gateway.app.GatewayApp`, so
    validation, kernel, decision serialization, outbox append, publisher to a real
    nats-server, metrics) and a no-op :class:`NoopGatewayServicer` served by the same
    :func:`gateway.server.create_server` (same auth and metrics interceptors, same
    options). The client is the SDK in this process. Both are called alternately in rounds
    (ABBA) in the same run, with the gateway's outbox drained before every round, so drift
    and background publishing do not favour either; their difference is what the gateway
    adds. That includes the publisher: it shares the gateway's event loop (and, on a small
    host, the CPUs with nats-server), so its per-decision work is part of the gateway's cost.

Measured
    * CheckOrder round trip p50 / p99 / p99.9 for both, the ratio gateway / no-op at p50 and
      the microseconds added (sequential calls from the blocking SDK client).
    * In process, proto in -> decision out: a serialized CheckOrderRequest read and
      validated (gateway.orders), then ``OrderGate.decide`` (kernel, decision build,
      outbox append, publisher notify, metrics; publisher connected to nats-server),
      p50 / p99; and the same order path step by step.
    * StreamOrders throughput in orders/s with batches of 1, 64 and 512, for both; and the
      rate one gateway sustains into JetStream (batches of 512 until every decision is acked).
    * Decision publishing: decisions/s from the outbox to JetStream acks, and the gateway
      process's CPU per published decision (nats-server's own CPU not included).

Targets (from the issue; read them off the figures, nothing asserts a time): the gateway
adds < 10 % to the no-op's CheckOrder p50, and in process one order takes <= 3 µs p50.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import select
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
import uvloop
from grpc_health.v1 import health

from clients import AsyncGatewayClient, GatewayClient, make_reference_price
from fastpath.engine import Engine
from fastpath.rules import load_rules
from gateway.app import GatewayApp
from gateway.auth import AuthInterceptor, TokenStore, ensure_demo_tokens
from gateway.config import GatewayConfig
from gateway.embedded_nats import EmbeddedNats
from gateway.metrics import GatewayMetrics
from gateway.orders import OrderReader, WireOrder
from gateway.outbox import DecisionOutbox
from gateway.publisher import DecisionPublisher
from gateway.server import create_server, gateway_method_roles
from gateway.servicer import GatewayServicer, OrderGate
from gateway.validation import ValidationLimits
from pretrade.v1 import gateway_pb2, gateway_pb2_grpc, types_pb2
from tests.clients.gateway_harness import accept_all_rules

REPO_ROOT = Path(__file__).resolve().parents[1]

BENCH_ACCOUNTS = 16
#: Every benchmark order is accepted however many are working, so that every call takes the
#: accept path, the one that records a working order.
BENCH_RULES = accept_all_rules(
    "BENCH", [f"ACC{index}" for index in range(BENCH_ACCOUNTS)], max_reference_age_ms=86_400_000
)
REFERENCE_PRICE = "100"
BENCH_MAX_WORKING_ORDERS = 1 << 20
SERVED_GATEWAY_ID = "gwbench"
DECIDE_GATEWAY_ID = "gwdecide"  # one gateway id per outbox: JetStream de-duplicates by id:sequence
STEPS_GATEWAY_ID = "gwsteps"
PUBLISH_GATEWAY_ID = "gwpublish"
ACCEPT = types_pb2.VERDICT_ACCEPT
ORDER_READER = OrderReader(ValidationLimits())
#: Orders decided before the timed in-process calls (first allocations, caches).
DECIDE_WARMUP_CALLS = 100

#: StreamOrders batch sizes compared, and how many orders each keeps in flight at most.
STREAM_BATCH_SIZES = (1, 64, 512)
STREAM_INFLIGHT_ORDERS = 2_048

STACK_START_TIMEOUT_S = 60.0
STACK_STOP_TIMEOUT_S = 20.0
DRAIN_TIMEOUT_S = 60.0
RPC_TIMEOUT_S = 30.0
NATS_CONNECT_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class Scale:
    check_order_rounds: int  # alternating gateway / no-op rounds (even: ABBA)
    check_order_calls: int  # sequential CheckOrder calls per round and target
    check_order_warmup: int  # untimed calls per target first
    stream_messages: dict[int, int]  # StreamOrders messages per run, by batch size
    stream_rounds: int  # alternating runs per target and batch size
    decide_rounds: int  # timed OrderGate.decide calls (one order each)
    step_calls: int  # calls per step of the order-path breakdown
    publish_decisions: int  # decisions per publish drain
    publish_rounds: int
    sustained_messages: int  # StreamOrders messages of 512 in the sustained run


FULL = Scale(
    check_order_rounds=10,
    check_order_calls=2_000,
    check_order_warmup=1_000,
    stream_messages={1: 5_000, 64: 320, 512: 60},
    stream_rounds=3,
    decide_rounds=20_000,
    step_calls=20_000,
    publish_decisions=20_000,
    publish_rounds=3,
    sustained_messages=600,  # ~300k decisions: ~5 s of deciding, then the outbox drains
)
SHORT = Scale(
    check_order_rounds=2,
    check_order_calls=20,
    check_order_warmup=5,
    stream_messages={1: 16, 64: 4, 512: 2},
    stream_rounds=1,
    decide_rounds=50,
    step_calls=50,
    publish_decisions=200,
    publish_rounds=1,
    sustained_messages=4,
)


# -- orders ------------------------------------------------------------------------------------


class OrderSource:
    """Orders the bench rules accept, each with a fresh client order id, spread over the
    accounts, alternating sides and with varying prices inside the collar."""

    def __init__(self, prefix: str) -> None:
        self._prefix = prefix
        self._numbers = itertools.count(1)

    def take(self, count: int) -> list[types_pb2.Order]:
        return [self._order(next(self._numbers)) for _ in range(count)]

    def requests(self, count: int) -> list[bytes]:
        """Serialized CheckOrderRequests, as CheckOrder receives them."""
        return [gateway_pb2.CheckOrderRequest(order=order).SerializeToString() for order in self.take(count)]

    def wire_orders(self, count: int) -> list[WireOrder]:
        """Orders as the order path holds them: read from their bytes by gateway.orders."""
        return [ORDER_READER.order(order.SerializeToString()) for order in self.take(count)]

    def _order(self, number: int) -> types_pb2.Order:
        return types_pb2.Order(
            client_order_id=f"{self._prefix}-{number}",
            account=f"ACC{number % BENCH_ACCOUNTS}",
            symbol="AAPL",
            side=types_pb2.SIDE_BUY if number % 2 else types_pb2.SIDE_SELL,
            order_type=types_pb2.ORDER_TYPE_LIMIT,
            time_in_force=types_pb2.TIME_IN_FORCE_DAY,
            quantity_nanos=(1 + number % 100) * 10**9,
            price_nanos=(9_500 + number % 1_000) * 10**7,  # 95.00 .. 104.99
        )


# -- the served stack ----------------------------------------------------------------------------


def _fixed_decision() -> types_pb2.Decision:
    """An accepted decision the size of the gateway's (same fields, a typical order)."""
    (order,) = OrderSource("noop").take(1)
    return types_pb2.Decision(
        verdict=ACCEPT,
        sequence=1_000_000,
        gateway_id=SERVED_GATEWAY_ID,
        rules_version="0" * 64,
        received_ns=time.time_ns(),
        decided_ns=time.time_ns(),
        order=order,
        order_handle=1_000,
    )


class NoopGatewayServicer(gateway_pb2_grpc.GatewayServiceServicer):
    """GatewayService without a gateway behind it: CheckOrder answers a fixed decision,
    StreamOrders answers every message with as many fixed decisions as it had orders.
    Responses are the size of the gateway's, so the wire and (de)serialization costs match
    and the difference to the gateway is its own work. Served by the same
    :func:`gateway.server.create_server`, it receives its order requests as bytes and
    parses them with the generated message classes, as a generated gRPC service's
    deserializer would (the gateway reads them itself, with gateway.orders)."""

    def __init__(self) -> None:
        self._decision = _fixed_decision()
        self._check_order_response = gateway_pb2.CheckOrderResponse(decision=self._decision)

    async def CheckOrder(self, request: bytes, context):  # noqa: N802 (gRPC method name)
        gateway_pb2.CheckOrderRequest.FromString(request)
        return self._check_order_response

    async def StreamOrders(self, request_iterator, context):  # noqa: N802
        async for serialized in request_iterator:
            request = gateway_pb2.StreamOrdersRequest.FromString(serialized)
            decisions = [self._decision] * len(request.orders)
            batch = gateway_pb2.DecisionBatch(batch_id=request.batch_id, decisions=decisions)
            await context.write(gateway_pb2.StreamOrdersResponse(decisions=batch))


async def _serve_stack(data_dir: str, rules_path: str, nats_url: str) -> None:
    tokens = ensure_demo_tokens(data_dir)
    config = GatewayConfig(
        rules_path=rules_path,
        tokens_path=str(tokens.hashes_path),
        listen="127.0.0.1:0",
        nats_url=nats_url,
        data_dir=data_dir,
        gateway_id=SERVED_GATEWAY_ID,
        metrics_listen=None,
        # Every benchmark order stays working (no executions): room for all of them, ~500k.
        engine_options={"max_orders": BENCH_MAX_WORKING_ORDERS},
    )
    gateway = GatewayApp(config)
    await gateway.start()
    noop_server = None
    try:
        if not await gateway.wait_ready(NATS_CONNECT_TIMEOUT_S):
            raise RuntimeError(f"the gateway did not connect to NATS at {nats_url}")
        noop_server, noop_port = create_server(
            config,
            gateway_servicer=NoopGatewayServicer(),
            admin_servicer=gateway_pb2_grpc.AdminServiceServicer(),
            health_servicer=health.aio.HealthServicer(),
            auth=AuthInterceptor(TokenStore.load(config.tokens_path), gateway_method_roles()),
            metrics=GatewayMetrics(),
        )
        await noop_server.start()
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        print(json.dumps({"gateway_port": gateway.port, "noop_port": noop_port}), flush=True)
        await stop.wait()
    finally:
        if noop_server is not None:
            await noop_server.stop(0)
        await gateway.stop()


@dataclass
class BenchStack:
    """The server process's two targets and the demo tokens that admit the SDK."""

    gateway_target: str
    noop_target: str
    trader_token: str
    admin_token: str

    def wait_outbox_drained(self) -> None:
        """Until the gateway's publisher has JetStream's ack for every decision so far."""
        deadline = time.monotonic() + DRAIN_TIMEOUT_S
        with GatewayClient(self.gateway_target, self.admin_token, RPC_TIMEOUT_S) as admin:
            while admin.get_status().outbox_depth > 0:
                assert time.monotonic() < deadline, f"decisions not published within {DRAIN_TIMEOUT_S} s"
                time.sleep(0.005)


@pytest.fixture(scope="module")
def bench_nats(tmp_path_factory):
    with EmbeddedNats(tmp_path_factory.mktemp("bench-nats")) as server:
        yield server


@pytest.fixture(scope="module")
def rules_path(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("bench-rules") / "rules.toml"
    path.write_text(BENCH_RULES)
    return path


@pytest.fixture(scope="module")
def bench_stack(tmp_path_factory, rules_path, bench_nats) -> Iterator[BenchStack]:
    data_dir = tmp_path_factory.mktemp("bench-gateway")
    tokens = ensure_demo_tokens(data_dir).tokens
    stderr_path = data_dir / "server.stderr"
    with open(stderr_path, "wb") as stderr:
        server = subprocess.Popen(
            [sys.executable, "-m", "bench.bench_gateway", str(data_dir), str(rules_path), bench_nats.url],
            cwd=REPO_ROOT,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
        )
    try:
        ready, _, _ = select.select([server.stdout], [], [], STACK_START_TIMEOUT_S)
        ports = json.loads(server.stdout.readline() or "null") if ready else None
        assert ports, f"bench server did not start: {stderr_path.read_text()[-2000:]}"
        stack = BenchStack(
            gateway_target=f"127.0.0.1:{ports['gateway_port']}",
            noop_target=f"127.0.0.1:{ports['noop_port']}",
            trader_token=tokens["trader"],
            admin_token=tokens["admin"],
        )
        with GatewayClient(stack.gateway_target, stack.trader_token, RPC_TIMEOUT_S) as trader:
            trader.update_reference_prices([make_reference_price("AAPL", REFERENCE_PRICE)])
        yield stack
    finally:
        server.terminate()
        try:
            server.wait(STACK_STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        server.stdout.close()


@pytest.fixture(scope="module")
def scale(request) -> Scale:
    return SHORT if request.config.getoption("benchmark_disable") else FULL


@pytest.fixture(scope="module")
def served_orders() -> OrderSource:
    """One source for everything sent to the served gateway: ids never repeat there."""
    return OrderSource("served")


# -- statistics and reporting ----------------------------------------------------------------------


def percentile_us(sorted_ns: Sequence[int], fraction: float) -> float:
    """Nearest-rank percentile of sorted nanosecond samples, in microseconds."""
    rank = max(0, min(len(sorted_ns) - 1, round(fraction * len(sorted_ns)) - 1))
    return sorted_ns[rank] / 1_000


def _format(value: object) -> str:
    if isinstance(value, float):
        return f"{value:,.2f}" if abs(value) < 100 else f"{value:,.0f}"
    return str(value)


def print_table(title: str, header: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    cells = [list(map(str, header))] + [[_format(value) for value in row] for row in rows]
    widths = [max(len(row[column]) for row in cells) for column in range(len(header))]
    print(f"\n{title}")
    for row in cells:
        print("  " + "  ".join(cell.rjust(width) for cell, width in zip(row, widths)))


# -- CheckOrder latency over loopback ------------------------------------------------------------------


def timed_check_orders(client: GatewayClient, orders: Sequence[types_pb2.Order]) -> tuple[list[int], list]:
    """Round trip of each sequential CheckOrder call in ns, and the decisions."""
    latencies, decisions = [], []
    clock = time.perf_counter_ns
    for order in orders:
        started = clock()
        decision = client.check_order(order)
        latencies.append(clock() - started)
        decisions.append(decision)
    return latencies, decisions


def test_check_order_latency_gateway_vs_noop(benchmark, bench_stack, scale, served_orders, fastpath_figures):
    """Sequential CheckOrder calls, gateway and no-op in alternating rounds: p50/p99/p99.9."""
    rounds, calls = scale.check_order_rounds, scale.check_order_calls
    latencies: dict[str, list[int]] = {"gateway": [], "no-op": []}
    gateway_decisions: list[types_pb2.Decision] = []
    with (
        GatewayClient(bench_stack.gateway_target, bench_stack.trader_token, RPC_TIMEOUT_S) as gateway,
        GatewayClient(bench_stack.noop_target, bench_stack.trader_token, RPC_TIMEOUT_S) as noop,
    ):
        clients = {"gateway": gateway, "no-op": noop}

        def alternate_rounds() -> None:
            for name, client in clients.items():
                _, decisions = timed_check_orders(client, served_orders.take(scale.check_order_warmup))
                if name == "gateway":
                    gateway_decisions.extend(decisions)
            for round_index in range(rounds):
                orders = served_orders.take(calls)  # both targets get the same requests
                # ABBA order: a linear drift of the machine costs both targets the same.
                names = ["gateway", "no-op"] if round_index % 4 in (0, 3) else ["no-op", "gateway"]
                for name in names:
                    bench_stack.wait_outbox_drained()
                    round_latencies, decisions = timed_check_orders(clients[name], orders)
                    latencies[name] += round_latencies
                    if name == "gateway":
                        gateway_decisions.extend(decisions)

        benchmark.pedantic(alternate_rounds, rounds=1, iterations=1)

    expected = rounds * calls + scale.check_order_warmup
    assert len(gateway_decisions) == expected
    assert all(decision.verdict == ACCEPT for decision in gateway_decisions)
    assert len({decision.sequence for decision in gateway_decisions}) == expected
    assert len(latencies["gateway"]) == len(latencies["no-op"]) == rounds * calls
    bench_stack.wait_outbox_drained()  # every decision reached JetStream

    figures = {}
    for name, samples in latencies.items():
        ordered = sorted(samples)
        figures[name] = {"p50": percentile_us(ordered, 0.50), "p99": percentile_us(ordered, 0.99),
                         "p99.9": percentile_us(ordered, 0.999)}
    ratio = figures["gateway"]["p50"] / figures["no-op"]["p50"]
    added_us = figures["gateway"]["p50"] - figures["no-op"]["p50"]
    benchmark.extra_info.update(
        calls_per_target=rounds * calls,
        **{f"{name}_{q}_us": round(value, 1) for name, qs in figures.items() for q, value in qs.items()},
        gateway_over_noop_p50=round(ratio, 3),
        gateway_added_p50_us=round(added_us, 1),
    )
    if not benchmark.disabled:
        print_table(
            f"CheckOrder round trip over loopback, µs ({rounds * calls} sequential calls per target)",
            ["target", "p50", "p99", "p99.9"],
            [[name, qs["p50"], qs["p99"], qs["p99.9"]] for name, qs in figures.items()],
        )
        print(f"  gateway / no-op at p50: {ratio:.2f} (+{added_us:.1f} µs; target < 1.10)")
        fastpath_figures["gateway CheckOrder p50 µs"] = figures["gateway"]["p50"]
        fastpath_figures["no-op CheckOrder p50 µs"] = figures["no-op"]["p50"]
        fastpath_figures["gateway / no-op CheckOrder p50 %"] = ratio * 100


# -- StreamOrders throughput -----------------------------------------------------------------------------


async def stream_orders(target: str, token: str, requests: Sequence[gateway_pb2.StreamOrdersRequest],
                        window: int) -> tuple[float, list[types_pb2.Decision]]:
    """Send ``requests`` on one stream with at most ``window`` unanswered; (seconds from the
    first write to the last answer, decisions)."""
    async with AsyncGatewayClient(target, token, RPC_TIMEOUT_S) as client:
        credits = asyncio.Semaphore(window)

        async def within_window():
            for request in requests:
                await credits.acquire()
                yield request

        decisions: list[types_pb2.Decision] = []
        started = time.perf_counter()
        async for response in client.stream(within_window(), timeout_s=RPC_TIMEOUT_S):
            decisions.extend(response.decisions.decisions)
            credits.release()
        return time.perf_counter() - started, decisions


@pytest.mark.parametrize("batch_size", STREAM_BATCH_SIZES)
def test_stream_orders_throughput(benchmark, bench_stack, scale, served_orders, batch_size, fastpath_figures):
    """Orders/s on one StreamOrders call, gateway and no-op in alternating runs."""
    messages = scale.stream_messages[batch_size]
    window = max(2, STREAM_INFLIGHT_ORDERS // batch_size)
    orders_per_s: dict[str, list[float]] = {"gateway": [], "no-op": []}
    gateway_decisions: list[types_pb2.Decision] = []
    targets = {"gateway": bench_stack.gateway_target, "no-op": bench_stack.noop_target}

    def batches() -> list[gateway_pb2.StreamOrdersRequest]:
        return [gateway_pb2.StreamOrdersRequest(batch_id=batch_id, orders=served_orders.take(batch_size))
                for batch_id in range(1, messages + 1)]

    def alternate_runs() -> None:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            for run_index in range(scale.stream_rounds):
                requests = batches()
                names = ["gateway", "no-op"] if run_index % 2 == 0 else ["no-op", "gateway"]
                for name in names:
                    bench_stack.wait_outbox_drained()
                    elapsed_s, decisions = runner.run(
                        stream_orders(targets[name], bench_stack.trader_token, requests, window)
                    )
                    assert len(decisions) == messages * batch_size
                    orders_per_s[name].append(len(decisions) / elapsed_s)
                    if name == "gateway":
                        gateway_decisions.extend(decisions)

    benchmark.pedantic(alternate_runs, rounds=1, iterations=1)

    assert len(gateway_decisions) == scale.stream_rounds * messages * batch_size
    assert all(decision.verdict == ACCEPT for decision in gateway_decisions)
    bench_stack.wait_outbox_drained()
    gateway_rate = statistics.median(orders_per_s["gateway"])
    noop_rate = statistics.median(orders_per_s["no-op"])
    benchmark.extra_info.update(
        batch_size=batch_size,
        orders_per_run=messages * batch_size,
        gateway_orders_per_s=round(gateway_rate),
        noop_orders_per_s=round(noop_rate),
        gateway_over_noop=round(gateway_rate / noop_rate, 3),
    )
    if not benchmark.disabled:
        print_table(
            f"StreamOrders, batches of {batch_size} ({messages * batch_size} orders per run, "
            f"{window} batches in flight, median of {scale.stream_rounds} runs)",
            ["target", "orders/s", "µs/order"],
            [[name, rate, 1e6 / rate] for name, rate in (("gateway", gateway_rate), ("no-op", noop_rate))],
        )
        fastpath_figures[f"gateway StreamOrders x{batch_size} orders/s"] = gateway_rate
        fastpath_figures[f"no-op StreamOrders x{batch_size} orders/s"] = noop_rate


def test_stream_orders_sustained_into_jetstream(benchmark, bench_stack, scale, served_orders, fastpath_figures):
    """What one gateway sustains end to end: StreamOrders batches of 512 as fast as it
    answers them, timed until JetStream has acknowledged every decision. Deciding and
    publishing share the gateway's event loop, so this is below both the burst rate of
    ``test_stream_orders_throughput`` and the publisher's own ceiling; it is the rate at
    which a gateway can feed the decisions stream (and so the ledger) for long."""
    batch_size = STREAM_BATCH_SIZES[-1]
    requests = [gateway_pb2.StreamOrdersRequest(batch_id=batch_id, orders=served_orders.take(batch_size))
                for batch_id in range(1, scale.sustained_messages + 1)]
    figures = {}

    def run() -> None:
        bench_stack.wait_outbox_drained()
        started = time.perf_counter()
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            deciding_s, decisions = runner.run(stream_orders(
                bench_stack.gateway_target, bench_stack.trader_token, requests,
                max(2, STREAM_INFLIGHT_ORDERS // batch_size),
            ))
        with GatewayClient(bench_stack.gateway_target, bench_stack.admin_token, RPC_TIMEOUT_S) as admin:
            figures["outbox_depth_when_decided"] = admin.get_status().outbox_depth
        bench_stack.wait_outbox_drained()
        figures.update(decisions=len(decisions), decided_per_s=len(decisions) / deciding_s,
                       sustained_per_s=len(decisions) / (time.perf_counter() - started))
        assert all(decision.verdict == ACCEPT for decision in decisions)

    benchmark.pedantic(run, rounds=1, iterations=1)
    assert figures["decisions"] == scale.sustained_messages * batch_size
    benchmark.extra_info.update({key: round(value) for key, value in figures.items()})
    if not benchmark.disabled:
        print_table(
            f"StreamOrders x{batch_size} sustained into JetStream ({figures['decisions']} decisions)",
            ["decided/s", "outbox depth when decided", "decided and acked by JetStream/s"],
            [[figures["decided_per_s"], figures["outbox_depth_when_decided"], figures["sustained_per_s"]]],
        )
        fastpath_figures["gateway sustained into JetStream decisions/s"] = figures["sustained_per_s"]


# -- in process: the order path without the network ------------------------------------------------------


@contextlib.contextmanager
def in_process_gate(directory: Path, rules_path: Path, nats_url: str, gateway_id: str):
    """(OrderGate, its event loop) as the gateway builds it: compiled kernel, outbox,
    metrics, a publisher connected to nats-server. The loop runs only when the caller runs
    it: decisions made meanwhile wait in the outbox."""
    loop = uvloop.new_event_loop()
    outbox = DecisionOutbox(directory / "outbox")
    publisher = DecisionPublisher(outbox, gateway_id)
    try:
        engine = Engine(load_rules(rules_path))
        gate = OrderGate(engine, outbox, publisher, gateway_id, metrics=GatewayMetrics())
        gate.apply_reference_price("AAPL", 100 * 10**9, time.time_ns())
        loop.run_until_complete(publisher.start(nats_url))
        assert loop.run_until_complete(publisher.wait_connected(NATS_CONNECT_TIMEOUT_S))
        yield gate, loop
    finally:
        loop.run_until_complete(publisher.stop())
        outbox.close()
        loop.close()


def drain_to_jetstream(gate: OrderGate, loop) -> None:
    async def drained() -> None:
        deadline = time.monotonic() + DRAIN_TIMEOUT_S
        while gate.publisher.outbox_depth:
            assert time.monotonic() < deadline, f"{gate.publisher.outbox_depth} decisions not acked in time"
            await asyncio.sleep(0.0005)

    gate.publisher.notify()
    loop.run_until_complete(drained())


def test_in_process_decide(benchmark, tmp_path, rules_path, bench_nats, scale, fastpath_figures):
    """One order in process, proto in -> decision out: a serialized CheckOrderRequest read
    and validated (gateway.orders), then ``OrderGate.decide`` (kernel, decision
    serialized, recorded in the outbox, publisher woken, metrics). p50 / p99 over single
    calls, each timed alone with ``perf_counter_ns`` around exactly that work (the
    requests are serialized beforehand, as a client would have sent them)."""
    source = OrderSource("decide")
    decisions: list[bytes] = []
    samples_ns: list[int] = []
    with in_process_gate(tmp_path, rules_path, bench_nats.url, DECIDE_GATEWAY_ID) as (gate, loop):
        read, clock = ORDER_READER.check_order_request, time.perf_counter_ns
        for request in source.requests(DECIDE_WARMUP_CALLS):
            decisions.extend(gate.decide((read(request),)))
        requests = source.requests(scale.decide_rounds)

        def decide_each() -> None:
            for request in requests:
                started = clock()
                payloads = gate.decide((read(request),))
                samples_ns.append(clock() - started)
                decisions.extend(payloads)

        benchmark.pedantic(decide_each, rounds=1, iterations=1)
        drain_to_jetstream(gate, loop)
        published = gate.publisher.counters.decisions_published
    decisions = [types_pb2.Decision.FromString(payload) for payload in decisions]
    assert len(decisions) == DECIDE_WARMUP_CALLS + len(samples_ns)
    assert all(decision.verdict == ACCEPT for decision in decisions)
    assert [decision.sequence for decision in decisions] == list(range(1, len(decisions) + 1))
    assert published == len(decisions)
    if not benchmark.disabled:
        samples_ns.sort()
        p50_us, p99_us = statistics.median(samples_ns) / 1e3, samples_ns[int(0.99 * len(samples_ns))] / 1e3
        benchmark.extra_info.update(p50_us=round(p50_us, 2), p99_us=round(p99_us, 2))
        print_table("in process, request bytes -> decision, one order, µs (target p50 <= 3)", ["p50", "p99"],
                    [[p50_us, p99_us]])
        fastpath_figures["in process (read + decide) p50 µs"] = p50_us


def median_call_us(call: Callable[[object], object], arguments: Sequence[object]) -> float:
    """Median µs of ``call(argument)`` over ``arguments``, one timed call each."""
    clock = time.perf_counter_ns
    samples = []
    for argument in arguments:
        started = clock()
        call(argument)
        samples.append(clock() - started)
    return statistics.median(samples) / 1_000


def test_in_process_order_path_by_step(benchmark, tmp_path, rules_path, bench_nats, scale, fastpath_figures):
    """Where the in-process time of a CheckOrder goes: each step of the servicer's hot
    path timed alone on the real objects (p50 µs). "decide, other" is decide minus the
    steps timed inside it: decision serialization (gateway.wire), sequence and bookkeeping."""
    steps: dict[str, float] = {}
    calls = scale.step_calls
    source = OrderSource("steps")
    with (
        in_process_gate(tmp_path, rules_path, bench_nats.url, STEPS_GATEWAY_ID) as (gate, loop),
        DecisionOutbox(tmp_path / "append-only-outbox") as outbox,  # the gate's must stay in step with it
    ):
        servicer = GatewayServicer(gate, metrics=GatewayMetrics())
        engine, metrics = gate.engine, GatewayMetrics()
        sample_decision = gate.decide(source.wire_orders(1))[0]  # serialized, as the outbox holds it

        def check(order):
            engine.check(order.account, order.symbol, order.strategy, order.side, order.order_type,
                         order.quantity_nanos, order.price_nanos, order.client_order_id, time.time_ns())

        def append(payload):
            outbox.append([(outbox.last_sequence + 1, payload)])

        def handle_check_order(request):
            coroutine = servicer.CheckOrder(request, None)  # never suspends on a valid order
            with contextlib.suppress(StopIteration):
                coroutine.send(None)

        def measure() -> None:
            steps["read and validate request"] = median_call_us(servicer.reader.check_order_request,
                                                                source.requests(calls))
            steps["kernel check"] = median_call_us(check, source.wire_orders(calls))
            steps["outbox append (1 decision)"] = median_call_us(append, [sample_decision] * calls)
            steps["decision metrics"] = median_call_us(
                lambda failure_codes: metrics.decision_counters.observe(failure_codes, 1e-6), [()] * calls
            )
            steps["publisher notify"] = median_call_us(lambda _: gate.publisher.notify(), range(calls))
            single_order_batches = [(order,) for order in source.wire_orders(calls)]
            steps["OrderGate.decide"] = median_call_us(gate.decide, single_order_batches)
            steps["CheckOrder handler"] = median_call_us(handle_check_order, source.requests(calls))

        benchmark.pedantic(measure, rounds=1, iterations=1)
        drain_to_jetstream(gate, loop)
        assert gate.publisher.outbox_depth == 0 and gate.last_sequence == 1 + 2 * calls
        assert gate.publisher.counters.decisions_published == gate.last_sequence

    inside_decide = ("kernel check", "outbox append (1 decision)", "decision metrics", "publisher notify")
    steps["decide, other"] = steps["OrderGate.decide"] - sum(steps[name] for name in inside_decide)
    benchmark.extra_info.update({f"{name} µs": round(value, 2) for name, value in steps.items()})
    if not benchmark.disabled:
        print_table(f"in-process order path by step, p50 µs ({calls} calls each)", ["step", "µs"],
                    [[name, round(value, 2)] for name, value in steps.items()])
        fastpath_figures["CheckOrder handler (in process) p50 µs"] = steps["CheckOrder handler"]


# -- decision publishing -----------------------------------------------------------------------------------


def test_decision_publish_cost(benchmark, tmp_path, rules_path, bench_nats, scale, fastpath_figures):
    """Decisions made one at a time (as CheckOrder makes them) wait in the outbox; then the
    publisher drains them to JetStream. Timed: the drain, wall clock and this process's CPU."""
    source = OrderSource("publish")
    drains: list[tuple[float, float]] = []  # (wall s, CPU s) per drain
    with in_process_gate(tmp_path, rules_path, bench_nats.url, PUBLISH_GATEWAY_ID) as (gate, loop):

        def decide_untimed():
            for order in source.wire_orders(scale.publish_decisions):
                gate.decide((order,))
            return (), {}

        def drain() -> None:
            wall, cpu = time.perf_counter(), time.process_time()
            drain_to_jetstream(gate, loop)
            drains.append((time.perf_counter() - wall, time.process_time() - cpu))

        benchmark.pedantic(drain, setup=decide_untimed, rounds=scale.publish_rounds, iterations=1)
        assert gate.publisher.counters.decisions_published == len(drains) * scale.publish_decisions
        assert gate.publisher.counters.duplicates_dropped == 0

    wall_s = statistics.median(wall for wall, _ in drains)
    cpu_s = statistics.median(cpu for _, cpu in drains)
    per_s, cpu_us = scale.publish_decisions / wall_s, cpu_s / scale.publish_decisions * 1e6
    benchmark.extra_info.update(decisions_per_drain=scale.publish_decisions, decisions_per_s=round(per_s),
                                cpu_us_per_decision=round(cpu_us, 2))
    if not benchmark.disabled:
        print_table(f"decision publishing, outbox -> JetStream ack ({scale.publish_decisions} per drain)",
                    ["decisions/s", "gateway CPU µs/decision"], [[per_s, round(cpu_us, 2)]])
        fastpath_figures["publish decisions/s"] = per_s
        fastpath_figures["publish CPU µs/decision"] = cpu_us


if __name__ == "__main__":
    # The bench server process: python -m bench.bench_gateway DATA_DIR RULES_PATH NATS_URL
    uvloop.run(_serve_stack(*sys.argv[1:]))
