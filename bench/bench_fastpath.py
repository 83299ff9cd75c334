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
* the same call on ``ReferenceKernel``, and the ratio reference / kernel of the two;
* the state floor of check_batch (``bench/state_floor.c``: only the per-order state work
  the catalogue requires, in lean C, over the same order flow), measured in the same run
  as the kernel, and the ratio check_batch / state floor.

The figures go to ``benchmark.extra_info`` and to a table printed at the end of the run
(``bench/conftest.py``). Nothing here asserts a time: the assertions are about behaviour
(batch decisions equal single-call decisions on a twin kernel, equal to the reference's,
the order mix really accepts and rejects, and the state floor's state-check failures equal
the kernel's order by order). Under ``--benchmark-disable`` (CI short
mode) every test runs once on small tables.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sysconfig
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from fastpath.codes import (
    LIMIT_UNLIMITED,
    LIMIT_UNSET,
    N_CHECKS,
    QTY_SCALE,
    STAGE_A_MASK,
    Check,
    OrderType,
    Side,
)
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


# -- the state floor -----------------------------------------------------------------------

STATE_FLOOR_SOURCE = Path(__file__).with_name("state_floor.c")
#: Batches per run (benchmarks enabled / CI short mode) and the first ones left out of the
#: figures on both sides (caches, page faults and branch predictors still warming up).
FLOOR_BATCHES, FLOOR_BATCHES_SHORT, FLOOR_WARMUP_BATCHES = 12, 3, 2
#: The checks the floor evaluates: those that read or write per-order state. The rest of the
#: catalogue is stateless (validity, tick, lot, restrictions, order size and notional,
#: collar, missing limits) and the floor leaves it out, so only these bits are compared;
#: max_order_qty in particular differs by design (the floor ignores account x symbol
#: override rows, which only touch that stateless limit in these rules).
STATE_CHECKS = (
    Check.REFERENCE_PRICE_MISSING,
    Check.REFERENCE_PRICE_STALE,
    Check.TRADING_HALTED,
    Check.CREDIT_LIMIT_EXCEEDED,
    Check.LONG_POSITION_LIMIT_EXCEEDED,
    Check.SHORT_POSITION_LIMIT_EXCEEDED,
    Check.ACCOUNT_ORDER_RATE_EXCEEDED,
    Check.STRATEGY_ORDER_RATE_EXCEEDED,
    Check.DUPLICATE_CLIENT_ORDER_ID,
    Check.DUPLICATE_ORDER_CONTENT,
    Check.MAX_WORKING_ORDERS_EXCEEDED,
    Check.SELF_MATCH_PREVENTED,
    Check.STATE_CAPACITY_EXHAUSTED,
)


def _mask(checks) -> np.uint64:
    return np.uint64(sum(1 << int(c) for c in checks))


def compile_state_floor(directory: Path) -> Path:
    """Build bench/state_floor.c with the compiler Python was built with (the one that
    builds the kernel)."""
    binary = directory / "state_floor"
    command = [*shlex.split(sysconfig.get_config_var("CC") or "cc"), "-O2", str(STATE_FLOOR_SOURCE), "-o", str(binary)]
    built = subprocess.run(command, capture_output=True, text=True)
    if built.returncode != 0:
        pytest.fail(f"compiling the state floor failed ({shlex.join(command)}):\n{built.stderr}")
    return binary


def dump_floor_rules(market: Market, directory: Path) -> None:
    """The rule columns state_floor.c reads (file names and units: its header comment)."""
    tables = market.rules.tables

    def bounded(column) -> np.ndarray:  # the floor reads "no limit" as INT64_MAX
        values = np.array(column, np.int64)
        values[values == LIMIT_UNSET] = LIMIT_UNLIMITED
        return values

    def rate_orders(column) -> np.ndarray:  # the floor reads "no bucket" as 0
        values = np.array(column, np.int64)
        values[(values == LIMIT_UNSET) | (values == LIMIT_UNLIMITED)] = 0
        return values

    n_symbols = len(tables.symbol_limits)
    reference_prices = np.zeros(n_symbols, np.int64)
    reference_prices[market.symbol_ids] = market.reference_prices[market.symbol_ids]
    columns = {
        "account_limits.i64": bounded(tables.account_limits),
        "account_credit_limit.i64": bounded(tables.account_credit_limit),
        "account_max_working.i64": bounded(tables.account_max_working),
        "account_rate_orders.i64": rate_orders(tables.account_rate_orders),
        "account_rate_window_ns.i64": np.asarray(tables.account_rate_window_ns, np.int64),
        "account_dup_window_ns.i64": np.asarray(tables.account_dup_window_ns, np.int64),
        "account_self_match.u8": np.asarray(tables.account_self_match, np.uint8),
        "symbol_limits.i64": bounded(tables.symbol_limits),
        "symbol_multiplier.i64": np.asarray(tables.symbol_multiplier, np.int64),
        "symbol_max_ref_age_ns.i64": np.asarray(tables.symbol_max_ref_age_ns, np.int64),
        "symbol_reference_price.i64": reference_prices,
        "symbol_reference_ts_ns.i64": np.full(n_symbols, T0, np.int64),  # as Market.kernel() sets them
        "strategy_rate_orders.i64": rate_orders(tables.strategy_rate_orders),
        "strategy_rate_window_ns.i64": np.asarray(tables.strategy_rate_window_ns, np.int64),
    }
    for name, values in columns.items():
        np.ascontiguousarray(values).astype(values.dtype.newbyteorder("<")).tofile(directory / name)


def dump_floor_batch(directory: Path, index: int, flow: OrderFlow, accepted: np.ndarray) -> None:
    suffixes = {np.dtype(np.int32): "i32", np.dtype(np.int8): "i8", np.dtype(np.int64): "i64"}
    for name, column in flow.__dict__.items():
        column = np.ascontiguousarray(column)
        column.astype(column.dtype.newbyteorder("<")).tofile(directory / f"batch_{index:02d}_{name}.{suffixes[column.dtype]}")
    accepted.astype(np.uint8).tofile(directory / f"batch_{index:02d}_accepted.u8")


def test_state_floor_same_run(benchmark, scale, fastpath_figures, tmp_path):
    """(d) the state floor: bench/state_floor.c does only the per-order state work of the
    catalogue over the same flow, applying the kernel's accepts; its failures of the state
    checks equal the kernel's, order by order, and check_batch is timed in the same run."""
    binary = compile_state_floor(tmp_path)
    market = Market(scale)  # its own: the module's market rng stays as the other tests expect
    kernel = market.kernel()
    n_batches = FLOOR_BATCHES_SHORT if benchmark.disabled else FLOOR_BATCHES
    n = scale.batch
    out = BatchOutput.empty(n)
    dump_floor_rules(market, tmp_path)
    kernel_ns_per_order, kernel_failed = [], []
    previous_handles = np.empty(0, np.int64)
    for index in range(n_batches):
        release_all(kernel, previous_handles)  # as test_check_batch_per_order: untimed
        flow = market.flow(n)
        start = time.perf_counter_ns()
        run_batch(kernel, flow, out)
        kernel_ns_per_order.append((time.perf_counter_ns() - start) / n)
        previous_handles = out.handles[out.handles >= 0].copy()
        kernel_failed.append(out.failed.copy())
        dump_floor_batch(tmp_path, index, flow, out.failed == 0)

    # The floor times itself (CLOCK_MONOTONIC around each batch); pedantic runs the process
    # once, in both modes, so the test also runs under --benchmark-only (which skips tests
    # without the benchmark fixture). pytest-benchmark's own figure is that process's wall
    # time, start-up and file reading included: the table's figures are the in-run ones.
    def run_floor():
        return subprocess.run(
            [str(binary), str(tmp_path), str(n_batches)], capture_output=True, text=True, timeout=300, check=True
        )

    report = json.loads(benchmark.pedantic(run_floor, rounds=1, iterations=1).stdout)
    assert report["orders_per_batch"] == n and len(report["ns_per_order"]) == n_batches

    state_bits, stage_a_bits = _mask(STATE_CHECKS), np.uint64(STAGE_A_MASK)
    for index, failed in enumerate(kernel_failed):
        floor_failed = np.fromfile(tmp_path / f"batch_{index:02d}_floor_failed.u64", np.dtype("<u8"))
        decided_by_state = (failed & stage_a_bits) == 0  # stage A decides alone: no state check ran
        assert decided_by_state.sum() > 0.9 * n
        differ = np.flatnonzero(decided_by_state & (((floor_failed ^ failed) & state_bits) != 0))
        assert differ.size == 0, (
            f"batch {index}: {differ.size} orders differ on state checks, first #{differ[0]}: "
            f"kernel {int(failed[differ[0]]):#x}, floor {int(floor_failed[differ[0]]):#x}"
        )
    # the comparison bites: state checks fail in this flow
    assert int(np.bitwise_or.reduce(np.concatenate(kernel_failed))) & int(state_bits)

    if not benchmark.disabled:
        floor = np.array(report["ns_per_order"][FLOOR_WARMUP_BATCHES:])
        checked = np.array(kernel_ns_per_order[FLOOR_WARMUP_BATCHES:])
        figures = {
            "state floor ns/order (median batch)": float(np.median(floor)),
            "state floor ns/order (fastest batch)": float(floor.min()),
            "check_batch ns/order, same run (median batch)": float(np.median(checked)),
            "check_batch ns/order, same run (fastest batch)": float(checked.min()),
        }
        figures["check_batch / state floor (median batches)"] = (
            figures["check_batch ns/order, same run (median batch)"] / figures["state floor ns/order (median batch)"]
        )
        fastpath_figures.update(figures)
        benchmark.extra_info.update(
            batch_orders=n,
            batches_timed=len(floor),
            floor_ns_per_order=round(figures["state floor ns/order (median batch)"], 1),
            floor_ns_per_order_min=round(figures["state floor ns/order (fastest batch)"], 1),
            check_batch_ns_per_order=round(figures["check_batch ns/order, same run (median batch)"], 1),
            check_batch_ns_per_order_min=round(figures["check_batch ns/order, same run (fastest batch)"], 1),
            check_batch_over_floor=round(figures["check_batch / state floor (median batches)"], 2),
        )
