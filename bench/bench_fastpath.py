"""Benchmarks of the compiled kernel against realistic tables, with the reference for scale.

Rules: a generated TOML file with 10 000 accounts and 10 000 symbols (compiled with
``fastpath.rules.compile_rules``, as the gateway would), reference prices for every symbol.
Order flow: a seeded mix over a pool of account x symbol pairs — mostly valid orders, plus
off-tick prices, oversized quantities, collar breaches, unknown symbols, market orders and
futures whose notional trips the order-notional limit — so the kernel both accepts and
rejects, along every branch the gateway meets in practice.

Measured (``--benchmark-only``):

* ``check_batch`` per order (batches of 10 000 orders, GIL released);
* one ``Kernel.check()`` call from Python with interned ids;
* the same call on ``ReferenceKernel``, and the ratio reference / kernel of the two.

The figures go to ``benchmark.extra_info`` and to a table printed at the end of the run
(``bench/conftest.py``). Nothing here asserts a time: the assertions are about behaviour
(batch decisions equal single-call decisions on a twin kernel, equal to the reference's,
and the order mix really accepts and rejects). Under ``--benchmark-disable`` (CI short
mode) every test runs once on small tables.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

from fastpath.codes import N_CHECKS, NS_PER_MS, PRICE_SCALE, QTY_SCALE, Check, OrderType, Side
from fastpath.kernel import Kernel
from fastpath.reference import ReferenceKernel
from fastpath.rules import compile_rules

#: A fixed "now" (Unix epoch ns): the benchmark clock starts here and only moves forward.
T0 = 1_700_000_000 * 1_000_000_000
#: Spacing of consecutive orders on the benchmark clock.
ORDER_SPACING_NS = 1_000


@dataclass(frozen=True)
class Scale:
    accounts: int
    symbols: int
    pairs: int  # distinct account x symbol pairs the order flow trades
    batch: int  # orders per check_batch call
    single_chunk: int  # Kernel.check() calls per timed round
    reference_chunk: int  # ReferenceKernel.check() calls per timed round


FULL = Scale(accounts=10_000, symbols=10_000, pairs=50_000, batch=10_000, single_chunk=2_000, reference_chunk=200)
SHORT = Scale(accounts=200, symbols=300, pairs=1_000, batch=2_000, single_chunk=500, reference_chunk=100)


def rules_text(accounts: int, symbols: int) -> str:
    """A rules file at scale: firm defaults, per-account and per-symbol settings on a
    regular pattern, account x symbol overrides, restrictions and strategies."""
    parts = [
        """[firm]
name = "BENCH"
max_reference_age_ms = 3_600_000
self_match_prevention = true
duplicate_content_window_ms = 100

[firm.limits]
max_order_qty = 1_000
max_order_notional = 500_000
max_long_position = 100_000
max_short_position = 50_000
price_collar_pct = 5
price_collar_ticks = "unlimited"
credit_limit = 1_000_000_000
max_working_orders = 500
order_rate_limit = { orders = 1_000, window_ms = 1_000 }

[firm.strategy_limits]
order_rate_limit = { orders = 100_000, window_ms = 1_000 }
"""
    ]
    for s in range(symbols):
        if s % 10 == 9:  # a future: coarse tick, multiplier, an instrument cap and a tick collar
            parts.append(
                f'[symbols.S{s:05d}]\ntick_size = "0.25"\nlot_size = 1\ncontract_multiplier = 50\n'
                f"[symbols.S{s:05d}.limits]\nmax_order_qty = 100\nprice_collar_ticks = 40\n"
            )
        else:
            parts.append(f'[symbols.S{s:05d}]\ntick_size = "0.01"\nlot_size = 1\n')
    for a in range(accounts):
        parts.append(f"[accounts.A{a:05d}]\n")
        if a % 5 == 0:
            parts.append(
                f"[accounts.A{a:05d}.limits]\nmax_order_qty = 800\ncredit_limit = 50_000_000\n"
                "order_rate_limit = { orders = 5_000, window_ms = 1_000 }\n"
            )
        if a % 20 == 0:
            parts.append(f"[accounts.A{a:05d}.symbols.S{(a * 7) % symbols:05d}]\nmax_order_qty = 200\n")
    for strategy in range(10):
        parts.append(f"[strategies.ALGO{strategy}]\n")
    for r in range(0, symbols, 97):
        parts.append(f'[[restrictions]]\nsymbol = "S{r:05d}"\nsides = ["SELL_SHORT"]\nreason = "hard to borrow"\n')
    return "\n".join(parts)


@dataclass
class OrderFlow:
    """Columns of a batch of orders, as check_batch takes them."""

    account_ids: np.ndarray
    symbol_ids: np.ndarray
    strategy_ids: np.ndarray
    sides: np.ndarray
    order_types: np.ndarray
    qtys: np.ndarray
    prices: np.ndarray
    keys: np.ndarray
    now_ns: np.ndarray

    def __len__(self) -> int:
        return len(self.keys)

    def order(self, i: int) -> tuple[int, ...]:
        """Order ``i`` as the Python ints of a ``check()`` call."""
        return (
            int(self.account_ids[i]),
            int(self.symbol_ids[i]),
            int(self.strategy_ids[i]),
            int(self.sides[i]),
            int(self.order_types[i]),
            int(self.qtys[i]),
            int(self.prices[i]),
            int(self.keys[i]),
            int(self.now_ns[i]),
        )

    def orders(self) -> list[tuple[int, ...]]:
        return [self.order(i) for i in range(len(self))]


class Market:
    """Compiled rules at one scale, reference prices, and a seeded order-flow generator
    whose clock and client order keys keep moving forward across batches."""

    def __init__(self, scale: Scale) -> None:
        self.scale = scale
        self.rules = compile_rules(rules_text(scale.accounts, scale.symbols), "bench-rules.toml")
        interner = self.rules.interner
        self.account_ids = np.array([interner.account_ids[f"A{a:05d}"] for a in range(scale.accounts)], np.int32)
        self.symbol_ids = np.array([interner.symbol_ids[f"S{s:05d}"] for s in range(scale.symbols)], np.int32)
        self.strategy_ids = np.array([0] + [interner.strategy_ids[f"ALGO{i}"] for i in range(10)], np.int32)
        self.tick = self.rules.tables.symbol_tick
        rng = np.random.default_rng(20_251_121)
        self.reference_prices = np.zeros(len(interner.symbol_names), np.int64)  # by symbol id
        self.reference_prices[self.symbol_ids] = self.tick[self.symbol_ids] * rng.integers(
            1_000, 40_000, len(self.symbol_ids)
        )
        self.pairs = (
            rng.choice(self.account_ids, scale.pairs),
            rng.choice(self.symbol_ids, scale.pairs),
        )
        self.rng = rng
        self.next_key = 1
        self.now = T0

    def kernel(self, kernel_class=Kernel):
        kernel = kernel_class(self.rules)
        for symbol_id in self.symbol_ids:
            kernel.set_reference_price(int(symbol_id), int(self.reference_prices[symbol_id]), T0)
        return kernel

    def flow(self, n: int) -> OrderFlow:
        rng = self.rng
        pick = rng.integers(0, self.scale.pairs, n)
        accounts = self.pairs[0][pick]
        symbols = self.pairs[1][pick].copy()
        unknown = rng.random(n) < 0.01
        symbols[unknown] = len(self.rules.interner.symbol_names) + 7  # never declared
        sides = rng.choice(np.array([Side.BUY, Side.SELL, Side.SELL_SHORT], np.int8), n, p=[0.48, 0.47, 0.05])
        order_types = np.where(rng.random(n) < 0.9, OrderType.LIMIT, OrderType.MARKET).astype(np.int8)
        qtys = rng.integers(1, 1_200, n, dtype=np.int64) * QTY_SCALE  # some above max_order_qty
        known = np.where(unknown, self.symbol_ids[0], symbols)
        ticks = self.tick[known]
        references = self.reference_prices[known]
        prices = references + ticks * rng.integers(-300, 300, n)  # some outside the collar
        prices = np.where(rng.random(n) < 0.02, prices + ticks // 2, prices)  # off tick
        prices = np.where(order_types == OrderType.MARKET, 0, prices)
        keys = np.arange(self.next_key, self.next_key + n, dtype=np.int64)
        now = self.now + ORDER_SPACING_NS * np.arange(n, dtype=np.int64)
        self.next_key += n
        self.now += ORDER_SPACING_NS * n
        return OrderFlow(
            accounts.astype(np.int32),
            symbols.astype(np.int32),
            rng.choice(self.strategy_ids, n),
            sides,
            order_types,
            qtys,
            prices.astype(np.int64),
            keys,
            now,
        )


@dataclass
class BatchOutput:
    failed: np.ndarray
    handles: np.ndarray
    limits: np.ndarray
    observed: np.ndarray
    paths: np.ndarray

    @classmethod
    def empty(cls, n: int) -> BatchOutput:
        return cls(
            np.zeros(n, np.uint64),
            np.zeros(n, np.int64),
            np.zeros((n, N_CHECKS), np.int64),
            np.zeros((n, N_CHECKS), np.int64),
            np.zeros((n, N_CHECKS), np.int32),
        )

    def decision(self, i: int) -> tuple:
        """Order ``i`` in the shape of ``decision(result)``."""
        failed = int(self.failed[i])
        details = tuple(
            (int(self.limits[i, c]), int(self.observed[i, c]), int(self.paths[i, c]))
            for c in range(N_CHECKS)
            if failed >> c & 1
        )
        return failed == 0, failed, int(self.handles[i]), details


def decision(result) -> tuple:
    """A CheckResult / ReferenceResult as a comparable tuple."""
    failed = int(result.failed)
    details = tuple(tuple(result.detail(c)) for c in range(N_CHECKS) if failed >> c & 1)
    return bool(result.accepted), failed, int(result.handle), details


def run_batch(kernel: Kernel, flow: OrderFlow, out: BatchOutput) -> int:
    return kernel.check_batch(
        flow.account_ids,
        flow.symbol_ids,
        flow.strategy_ids,
        flow.sides,
        flow.order_types,
        flow.qtys,
        flow.prices,
        flow.keys,
        flow.now_ns,
        out.failed,
        out.handles,
        out.limits,
        out.observed,
        out.paths,
    )


def release_all(kernel, handles) -> None:
    """End the orders a round accepted, so every round starts from comparable state."""
    for handle in handles:
        kernel.release(int(handle))


# -- fixtures ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def scale(request) -> Scale:
    return SHORT if request.config.getoption("benchmark_disable") else FULL


@pytest.fixture(scope="module")
def market(scale) -> Market:
    return Market(scale)


def _round_ns(benchmark) -> tuple[float, float] | None:
    """(median, min) of the timed rounds in ns, or None when benchmarks are disabled."""
    if benchmark.disabled or benchmark.stats is None:
        return None
    return benchmark.stats.stats.median * 1e9, benchmark.stats.stats.min * 1e9


# -- behaviour at scale (also what CI runs in short mode) ------------------------------------


def test_batch_matches_single_checks_and_reference(market):
    """One flow through check_batch, through check() on a twin kernel, and (a prefix)
    through the reference: identical decisions, details and handles, and the flow both
    accepts and rejects for the reasons it was built to exercise."""
    flow = market.flow(market.scale.batch)
    batch_kernel, single_kernel = market.kernel(), market.kernel()
    out = BatchOutput.empty(len(flow))
    accepted = run_batch(batch_kernel, flow, out)
    singles = [decision(single_kernel.check(*order)) for order in flow.orders()]
    assert [out.decision(i) for i in range(len(flow))] == singles
    assert accepted == sum(d[0] for d in singles)

    reference = market.kernel(ReferenceKernel)
    prefix = min(len(flow), 1_000)
    assert [decision(reference.check(*flow.order(i))) for i in range(prefix)] == singles[:prefix]

    assert 0.2 * len(flow) < accepted < 0.95 * len(flow)
    seen = np.bitwise_or.reduce(out.failed)
    for code in (
        Check.UNKNOWN_SYMBOL,
        Check.PRICE_OFF_TICK,
        Check.MAX_ORDER_QTY_EXCEEDED,
        Check.MAX_ORDER_NOTIONAL_EXCEEDED,
        Check.PRICE_COLLAR_BREACHED,
    ):
        assert int(seen) >> code & 1, code.name
    for account in range(0, market.scale.accounts, max(1, market.scale.accounts // 50)):
        assert batch_kernel.exposure(account) == single_kernel.exposure(account)
        assert batch_kernel.working_orders(account) == single_kernel.working_orders(account)
    assert batch_kernel.live_orders() == single_kernel.live_orders() == accepted


def test_batch_with_scalar_clock_and_unsigned_sides_matches(market):
    """The other accepted input forms (one ``now_ns`` for the batch, uint8 sides and
    types) decide exactly as the per-order forms."""
    flow = market.flow(min(market.scale.batch, 2_000))
    now = int(flow.now_ns[-1])
    same_clock_flow = OrderFlow(**{**flow.__dict__, "now_ns": np.full(len(flow), now, np.int64)})
    clock_column, clock_scalar = BatchOutput.empty(len(flow)), BatchOutput.empty(len(flow))
    run_batch(market.kernel(), same_clock_flow, clock_column)
    market.kernel().check_batch(
        flow.account_ids,
        flow.symbol_ids,
        flow.strategy_ids,
        flow.sides.view(np.uint8),
        flow.order_types.view(np.uint8),
        flow.qtys,
        flow.prices,
        flow.keys,
        now,
        clock_scalar.failed,
        clock_scalar.handles,
        clock_scalar.limits,
        clock_scalar.observed,
        clock_scalar.paths,
    )
    assert [clock_scalar.decision(i) for i in range(len(flow))] == [
        clock_column.decision(i) for i in range(len(flow))
    ]


# -- timings -----------------------------------------------------------------------------


def test_check_batch_per_order(benchmark, market, fastpath_figures):
    """(a) check_batch: ns per order over batches of realistic orders."""
    kernel = market.kernel()
    n = market.scale.batch
    out = BatchOutput.empty(n)
    accepted_handles: list[np.ndarray] = []

    def next_batch():
        if accepted_handles:
            release_all(kernel, accepted_handles.pop())
        return (kernel, market.flow(n), out), {}

    def decide(kernel, flow, out):
        accepted = run_batch(kernel, flow, out)
        accepted_handles.append(out.handles[out.handles >= 0].copy())
        return accepted

    accepted = benchmark.pedantic(decide, setup=next_batch, rounds=30, warmup_rounds=3)
    assert 0 < accepted < n
    timings = _round_ns(benchmark)
    if timings is not None:
        median, fastest = (t / n for t in timings)
        benchmark.extra_info.update(
            batch_orders=n,
            ns_per_order=round(median, 1),
            ns_per_order_min=round(fastest, 1),
            accepted_last_batch=accepted,
        )
        fastpath_figures["check_batch ns/order (median round)"] = median
        fastpath_figures["check_batch ns/order (fastest round)"] = fastest


def _single_checks(benchmark, market, kernel, chunk: int, rounds: int):
    """Time ``chunk`` single check() calls per round; accepted orders are released
    between rounds (untimed)."""
    accepted_handles: list[int] = []

    def next_chunk():
        release_all(kernel, accepted_handles)
        accepted_handles.clear()
        return (market.flow(chunk).orders(),), {}

    def decide(orders):
        check = kernel.check
        for order in orders:
            result = check(*order)
            if result.accepted:
                accepted_handles.append(result.handle)

    benchmark.pedantic(decide, setup=next_chunk, rounds=rounds, warmup_rounds=2)
    assert accepted_handles, "the order flow must accept orders"
    timings = _round_ns(benchmark)
    return None if timings is None else timings[0] / chunk


def test_single_check_kernel(benchmark, market, fastpath_figures):
    """(b) one Kernel.check() call from Python with interned ids (Python loop included)."""
    chunk = market.scale.single_chunk
    per_check = _single_checks(benchmark, market, market.kernel(), chunk, rounds=50)
    if per_check is not None:
        benchmark.extra_info.update(calls_per_round=chunk, ns_per_check=round(per_check, 1))
        fastpath_figures["Kernel.check() ns/call (median round)"] = per_check


def test_single_check_reference(benchmark, market, fastpath_figures):
    """(c) the same call on ReferenceKernel, and the ratio reference / kernel."""
    chunk = market.scale.reference_chunk
    per_check = _single_checks(benchmark, market, market.kernel(ReferenceKernel), chunk, rounds=15)
    if per_check is not None:
        benchmark.extra_info.update(calls_per_round=chunk, ns_per_check=round(per_check, 1))
        fastpath_figures["ReferenceKernel.check() ns/call (median round)"] = per_check
        kernel_per_check = fastpath_figures.get("Kernel.check() ns/call (median round)")
        if kernel_per_check:
            ratio = per_check / kernel_per_check
            benchmark.extra_info["reference_over_kernel"] = round(ratio, 1)
            fastpath_figures["ratio reference / kernel (single check)"] = ratio
