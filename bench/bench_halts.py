"""Halt latency: from RequestHalt returning to the first rejected order at the gateway.

    .venv/bin/python -m pytest bench/bench_halts.py --benchmark-only -s     # measure (500 halts)
    .venv/bin/python -m pytest bench/bench_halts.py --benchmark-disable -s  # quick smoke (20 halts)

Setup: a local file-backed nats-server and, in a process of its own on uvloop, a gateway
assembled as ``pretrade up`` wires it (``tests/halts/harness.py``: GatewayService +
HaltService + manager + HaltFollower on one gRPC server), called over loopback by
synchronous gRPC clients in this process: an operator (``alice``) and a trader.

One cycle: alice halts SYMBOL AAPL (RequestHalt); right after it returns (wall clock
``t_return``) the trader sends CheckOrder for AAPL until one is rejected with
TRADING_HALTED; the latency is that decision's ``decided_ns`` (the gateway's clock, the
same host clock) minus ``t_return``. Then alice resumes AAPL and the next cycle starts once
an order passes again. ``extra_info`` records p50/p99/max of the latency, of the
RequestHalt call itself and how many orders were still accepted after RequestHalt returned
(0 means the follower had applied the halt before the call returned). Goal: p99 <= 2 ms.
"""

from __future__ import annotations

import itertools
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest

from gateway.embedded_nats import EmbeddedNats
from pretrade.v1 import gateway_pb2, gateway_pb2_grpc, halts_pb2, halts_pb2_grpc, trading_pb2, types_pb2

REPO_ROOT = Path(__file__).resolve().parents[1]
HALT_CYCLES = 500
SMOKE_HALT_CYCLES = 20
PRICE_NANOS = 100 * 10**9
#: Give up on one cycle after this long without a rejection, seconds.
CYCLE_TIMEOUT_S = 5.0


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


class HaltLatencyProbe:
    """The two clients of one benchmark run and the cycle they repeat."""

    def __init__(self, tokens: dict[str, str], channel) -> None:
        self.halts = halts_pb2_grpc.HaltServiceStub(channel)
        self.orders = gateway_pb2_grpc.GatewayServiceStub(channel)
        self.alice = (("authorization", f"Bearer {tokens['alice']}"),)
        self.trader = (("authorization", f"Bearer {tokens['trader']}"),)
        self.ids = itertools.count()
        self.latencies_us: list[float] = []
        self.request_halt_us: list[float] = []
        self.accepted_after_return = 0

    def order(self) -> types_pb2.Decision:
        order = types_pb2.Order(
            client_order_id=f"b{next(self.ids)}",
            account="ACC2",
            symbol="AAPL",
            side=types_pb2.SIDE_BUY,
            order_type=types_pb2.ORDER_TYPE_LIMIT,
            quantity_nanos=10**9,
            price_nanos=PRICE_NANOS,
        )
        request = gateway_pb2.CheckOrderRequest(order=order)
        decision = self.orders.CheckOrder(request, metadata=self.trader).decision
        if decision.verdict == types_pb2.VERDICT_ACCEPT:  # keep the account's working orders low
            self.orders.ReportExecutions(
                gateway_pb2.ReportExecutionsRequest(
                    executions=[
                        types_pb2.Execution(
                            account="ACC2",
                            client_order_id=order.client_order_id,
                            execution_type=types_pb2.EXECUTION_TYPE_CANCELLED,
                            execution_id=f"x{order.client_order_id}",
                        )
                    ]
                ),
                metadata=self.trader,
            )
        return decision

    def refresh_reference_price(self) -> None:
        price = types_pb2.ReferencePrice(symbol="AAPL", price_nanos=PRICE_NANOS, timestamp_ns=time.time_ns())
        self.orders.UpdateReferencePrices(
            gateway_pb2.UpdateReferencePricesRequest(prices=[price]), metadata=self.trader
        )

    def cycle(self) -> None:
        self.refresh_reference_price()
        halt = halts_pb2.RequestHaltRequest(
            scope=trading_pb2.SCOPE_SYMBOL,
            name="AAPL",
            state=trading_pb2.TRADING_STATE_HALTED,
            reason="bench",
        )
        called_ns = time.time_ns()
        self.halts.RequestHalt(halt, metadata=self.alice)
        returned_ns = time.time_ns()
        self.request_halt_us.append((returned_ns - called_ns) / 1000)
        deadline = time.monotonic() + CYCLE_TIMEOUT_S
        while True:
            decision = self.order()
            if decision.verdict == types_pb2.VERDICT_REJECT:
                assert [f.code for f in decision.failures] == ["TRADING_HALTED"], decision
                self.latencies_us.append((decision.decided_ns - returned_ns) / 1000)
                break
            self.accepted_after_return += 1
            assert time.monotonic() < deadline, "the halt never reached the gateway"
        resume = halts_pb2.RequestResumeRequest(scope=trading_pb2.SCOPE_SYMBOL, name="AAPL", reason="bench")
        self.halts.RequestResume(resume, metadata=self.alice)
        while self.order().verdict != types_pb2.VERDICT_ACCEPT:  # the resume is in force
            assert time.monotonic() < deadline, "the resume never reached the gateway"


@pytest.fixture
def gateway(tmp_path):
    """The gateway process: (target, tokens)."""
    with EmbeddedNats(tmp_path / "nats") as nats_server:
        process = subprocess.Popen(
            [sys.executable, "-m", "tests.halts.harness", nats_server.url, str(tmp_path / "gateway")],
            cwd=REPO_ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            started = json.loads(process.stdout.readline())
            yield started["target"], started["tokens"]
        finally:
            process.stdin.close()
            process.wait(10)


def test_halt_to_first_rejected_order(benchmark, gateway):
    target, tokens = gateway
    cycles = SMOKE_HALT_CYCLES if benchmark.disabled else HALT_CYCLES
    with grpc.insecure_channel(target) as channel:
        probe = HaltLatencyProbe(tokens, channel)
        probe.cycle()  # warm-up: channel, streams and caches; left out of the figures

        def run() -> None:
            for _ in range(cycles):
                probe.cycle()

        benchmark.pedantic(run, rounds=1, iterations=1)
    latencies = probe.latencies_us[1:]
    calls = probe.request_halt_us[1:]
    summary = {
        "halts": len(latencies),
        "latency_p50_us": round(statistics.median(latencies), 1),
        "latency_p99_us": round(percentile(latencies, 0.99), 1),
        "latency_max_us": round(max(latencies), 1),
        "request_halt_p50_us": round(statistics.median(calls), 1),
        "request_halt_p99_us": round(percentile(calls, 0.99), 1),
        "orders_accepted_after_return": probe.accepted_after_return,
    }
    benchmark.extra_info.update(summary)
    print("\nhalt -> first rejected order: " + ", ".join(f"{key}={value}" for key, value in summary.items()))
