"""Smoke tests of the compiled kernel: concrete orders through ``Kernel`` and
``ReferenceKernel`` side by side, the C vocabulary against ``fastpath.codes``, the batch
entry point against single calls, and the table validation done at install.

The exhaustive comparison is the hypothesis parity suite (``test_parity.py``); these are
the readable cases that fail first and say why.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from fastpath import codes, kernel
from fastpath.codes import N_CHECKS, Check, ExecStatus, OrderType, Scope, Side, TradingState
from fastpath.kernel import Kernel
from fastpath.reference import CONTENT_MEMORY_PER_POSITION, ReferenceKernel
from fastpath.rules import compile_rules, load_rules

from .harness import T0, px, qty

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "rules.toml"
MS = codes.NS_PER_MS

INLINE = """
[firm]
name = "SMOKE"
max_reference_age_ms = 1000
duplicate_content_window_ms = 50
self_match_prevention = true

[firm.limits]
max_order_qty = 100
max_order_notional = 50_000
max_long_position = 300
max_short_position = 200
price_collar_pct = 10
price_collar_ticks = 50
credit_limit = 100_000
max_working_orders = 5
order_rate_limit = { orders = 3, window_ms = 100 }

[firm.strategy_limits]
order_rate_limit = { orders = 2, window_ms = 100 }

[symbols.AAA]
tick_size = "0.5"
lot_size = 10

[symbols.FUT]
tick_size = "0.25"
lot_size = 1
contract_multiplier = "2.5"

[symbols.FUT.limits]
max_order_qty = 20

[accounts.X]

[accounts.Y]
self_match_prevention = false

[accounts.Y.limits]
max_order_qty = "unlimited"

[accounts.Y.symbols.AAA]
max_order_qty = 40
max_long_position = 60

[strategies.ALGO]

[[restrictions]]
symbol = "AAA"
account = "Y"
sides = ["SELL_SHORT"]
reason = "smoke"
"""


def decision(result) -> tuple:
    failed = int(result.failed)
    details = tuple(tuple(result.detail(c)) for c in range(N_CHECKS) if failed >> c & 1)
    return bool(result.accepted), failed, int(result.handle), details


class Twins:
    """The compiled kernel and the reference on the same rules; every call goes to both
    and must return the same thing; the state readers are compared after each call."""

    def __init__(self, rules, **capacities):
        self.rules = rules
        self.kernel = Kernel(rules, **capacities)
        self.reference = ReferenceKernel(rules, **capacities)
        self.now = T0

    def call(self, method: str, *args):
        got = getattr(self.kernel, method)(*args)
        want = getattr(self.reference, method)(*args)
        if method == "check":
            assert decision(got) == decision(want), (args, got, want.details)
            got = decision(got)
        else:
            assert got == want, (method, args)
        self.assert_same_state()
        return got

    def order(self, account, symbol, side, quantity, price, *, strategy="", order_type=OrderType.LIMIT, cid):
        interner = self.rules.interner
        return self.call(
            "check",
            interner.account_ids.get(account, -1),
            interner.symbol_ids.get(symbol, -1),
            interner.strategy_ids.get(strategy, -1),
            side,
            order_type,
            qty(quantity),
            0 if order_type == OrderType.MARKET else px(price),
            hash((account, cid)),
            self.now,
        )

    def assert_same_state(self):
        interner = self.rules.interner
        for a in range(len(interner.account_names)):
            assert self.kernel.exposure(a) == self.reference.exposure(a)
            assert self.kernel.working_orders(a) == self.reference.working_orders(a)
            for s in range(len(interner.symbol_names)):
                assert self.kernel.position(a, s) == self.reference.position(a, s)
        assert self.kernel.live_orders() == self.reference.live_orders()


def failed_codes(result: tuple) -> set[codes.Check]:
    return {c for c in codes.Check if result[1] >> c & 1}


# -- vocabulary -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "enum_type",
    [
        codes.Check,
        codes.Side,
        codes.OrderType,
        codes.TradingState,
        codes.Scope,
        codes.ExecStatus,
        codes.LimitKind,
        codes.MissingLimit,
    ],
)
def test_kernel_enums_equal_codes(enum_type):
    assert kernel.ENUMS[enum_type.__name__] == {member.name: int(member.value) for member in enum_type}


def test_kernel_constants_equal_codes():
    assert kernel.CONSTANTS == {
        "N_CHECKS": codes.N_CHECKS,
        "N_LIMIT_KINDS": codes.N_LIMIT_KINDS,
        "LIMIT_UNSET": codes.LIMIT_UNSET,
        "LIMIT_UNLIMITED": codes.LIMIT_UNLIMITED,
        "PPM_SCALE": codes.PPM_SCALE,
        "PRICE_SCALE": codes.PRICE_SCALE,
        "CONTENT_MEMORY_PER_POSITION": CONTENT_MEMORY_PER_POSITION,
    }


# -- concrete orders ----------------------------------------------------------------------------


@pytest.fixture
def example():
    twins = Twins(load_rules(EXAMPLE), max_orders=64, max_positions=32, client_order_id_memory=16)
    for symbol, price in {"AAPL": "187.25", "MSFT": "410", "GME": "25", "ESZ5": "6000", "BTC-USD": "65432.1"}.items():
        twins.call("set_reference_price", twins.rules.interner.symbol_ids[symbol], px(price), T0)
    return twins


def test_example_rules_orders(example):
    accepted = example.order("ACC1", "AAPL", Side.BUY, 100, "187.25", cid="a1")
    assert accepted[0] and accepted[2] == 0  # slot 0, generation 0
    assert failed_codes(example.order("ACC1", "AAPL", Side.BUY, 2_000, "187.25", cid="a2")) >= {
        codes.Check.MAX_ORDER_QTY_EXCEEDED
    }
    assert failed_codes(example.order("ACC1", "AAPL", Side.BUY, 1, "187.255", cid="a3")) == {codes.Check.PRICE_OFF_TICK}
    assert failed_codes(example.order("ACC1", "AAPL", Side.SELL, 1, "187", cid="a4")) >= {
        codes.Check.SELF_MATCH_PREVENTED
    }
    assert failed_codes(example.order("ACC1", "AAPL", Side.BUY, 5, "187", cid="a1")) == {
        codes.Check.DUPLICATE_CLIENT_ORDER_ID
    }
    assert failed_codes(example.order("ACC1", "BTC-USD", Side.BUY, "0.5", "65432", cid="a5")) == {
        codes.Check.SYMBOL_RESTRICTED
    }
    assert failed_codes(example.order("ACC2", "GME", Side.SELL_SHORT, 10, "25", cid="b1")) == {
        codes.Check.SYMBOL_RESTRICTED
    }
    assert failed_codes(example.order("ACC2", "ESZ5", Side.BUY, 1, "6011", cid="b2")) == {
        codes.Check.PRICE_COLLAR_BREACHED
    }
    market = example.order("ACC2", "ESZ5", Side.BUY, 2, 0, order_type=OrderType.MARKET, cid="b3")
    assert market[0]
    assert failed_codes(example.order("ACC3", "MSFT", Side.BUY, 1, "410", strategy="MOMO", cid="c1")) == {
        codes.Check.SYMBOL_RESTRICTED
    }
    assert example.order("ACC3", "AAPL", Side.BUY, 10, "187", strategy="MM", cid="c2")[0]
    assert failed_codes(example.order("NOPE", "AAPL", 7, 0, "187", strategy="??", cid="x")) == {
        codes.Check.INVALID_SIDE,
        codes.Check.INVALID_QUANTITY,
        codes.Check.UNKNOWN_ACCOUNT,
        codes.Check.UNKNOWN_STRATEGY,
    }

    handle = accepted[2]
    assert example.call("fill", handle, qty(40), px("187.2")) == ExecStatus.OK
    assert example.call("fill", handle, qty(70), px("187.3")) == ExecStatus.OVERFILL
    assert example.call("fill", handle, qty(1), px("187.3")) == ExecStatus.UNKNOWN_ORDER
    assert example.call("release", market[2]) == ExecStatus.OK
    assert example.call("release", market[2]) == ExecStatus.UNKNOWN_ORDER
    # the freed slots are handed out again, LIFO, with a new generation
    again = example.order("ACC1", "AAPL", Side.BUY, 1, "187.25", cid="a6")
    assert again[2] == 1 << 32 | (market[2] & 0xFFFFFFFF)
    example.call("reset_filled_exposure", example.rules.interner.account_ids["ACC1"])
    example.call("reset_filled_exposure", -1)


def test_inline_rules_orders():
    twins = Twins(compile_rules(INLINE, "smoke.toml"), max_orders=8, max_positions=2, client_order_id_memory=3)
    ids = twins.rules.interner
    aaa, fut = ids.symbol_ids["AAA"], ids.symbol_ids["FUT"]
    twins.call("set_reference_price", aaa, px(100), T0)
    twins.call("set_reference_price", fut, px(4000), T0)

    # account x symbol override and the long limit it sets
    assert failed_codes(twins.order("Y", "AAA", Side.BUY, 50, 100, cid=1)) == {codes.Check.MAX_ORDER_QTY_EXCEEDED}
    assert twins.order("Y", "AAA", Side.BUY, 40, 100, cid=2)[0]
    assert failed_codes(twins.order("Y", "AAA", Side.BUY, 30, 100, cid=3)) == {
        codes.Check.LONG_POSITION_LIMIT_EXCEEDED
    }
    # the account's own restriction; self-match is off for Y
    assert failed_codes(twins.order("Y", "AAA", Side.SELL_SHORT, 10, 100, cid=4)) == {codes.Check.SYMBOL_RESTRICTED}
    assert twins.order("Y", "AAA", Side.SELL, 10, "99.5", cid=5)[0]
    # duplicate content within the window, then after it
    assert failed_codes(twins.order("Y", "AAA", Side.SELL, 10, "99.5", cid=6)) >= {
        codes.Check.DUPLICATE_ORDER_CONTENT
    }
    twins.now += 60 * MS
    # the multiplier (2.5) and the tick collar (50 ticks = 12.5 < 10 %)
    assert failed_codes(twins.order("X", "FUT", Side.BUY, 1, "4012.75", strategy="ALGO", cid=7)) == {
        codes.Check.PRICE_COLLAR_BREACHED
    }
    assert twins.order("X", "FUT", Side.BUY, 1, "4012.5", strategy="ALGO", cid=8)[0]
    assert failed_codes(twins.order("X", "FUT", Side.BUY, 6, "4000", strategy="ALGO", cid=9)) >= {
        codes.Check.MAX_ORDER_NOTIONAL_EXCEEDED
    }
    # the strategy throttle (2 per 100 ms), then the positions capacity (2 pairs)
    assert twins.order("X", "FUT", Side.BUY, 1, "4000", strategy="ALGO", cid=10)[0]
    assert failed_codes(twins.order("X", "FUT", Side.BUY, 2, "4000", strategy="ALGO", cid=11)) == {
        codes.Check.STRATEGY_ORDER_RATE_EXCEEDED
    }
    assert failed_codes(twins.order("X", "AAA", Side.BUY, 10, "100", cid=12)) == {
        codes.Check.STATE_CAPACITY_EXHAUSTED
    }
    # trading states: a REDUCING symbol, then a HALTED firm
    twins.call("set_trading_state", Scope.SYMBOL, aaa, TradingState.REDUCING)
    assert failed_codes(twins.order("Y", "AAA", Side.BUY, 10, 100, cid=13)) == {codes.Check.REDUCE_ONLY_VIOLATION}
    twins.call("set_trading_state", Scope.FIRM, 0, TradingState.HALTED)
    assert failed_codes(twins.order("Y", "AAA", Side.SELL, 10, 100, cid=14)) == {codes.Check.TRADING_HALTED}
    assert twins.call("trading_state", Scope.SYMBOL, aaa) == TradingState.REDUCING
    twins.call("set_trading_state", Scope.FIRM, 0, TradingState.ACTIVE)
    twins.call("set_trading_state", Scope.SYMBOL, aaa, TradingState.ACTIVE)
    # a stale reference price
    twins.now += 2_000 * MS
    assert failed_codes(twins.order("Y", "AAA", Side.SELL, 10, 100, cid=15)) == {codes.Check.REFERENCE_PRICE_STALE}


def test_reload_keeps_state_and_grows_for_new_ids():
    rules = compile_rules(INLINE, "smoke.toml")
    twins = Twins(rules, max_orders=8, max_positions=4, client_order_id_memory=8)
    aaa = rules.interner.symbol_ids["AAA"]
    twins.call("set_reference_price", aaa, px(100), T0)
    working = twins.order("X", "AAA", Side.BUY, 10, 100, cid=1)
    assert working[0]
    # a halt on an account the rules do not declare yet interns it beyond the tables
    late = rules.interner.account("LATE")
    twins.call("set_trading_state", Scope.ACCOUNT, late, TradingState.HALTED)
    reloaded = compile_rules(INLINE + "\n[accounts.LATE]\n", "smoke.toml", rules.interner)
    twins.call("install_rules", reloaded)
    twins.rules = reloaded
    assert failed_codes(twins.order("LATE", "AAA", Side.BUY, 10, 100, cid=2)) == {codes.Check.TRADING_HALTED}
    assert twins.call("release", working[2]) == ExecStatus.OK


# -- check_batch ----------------------------------------------------------------------------------


def test_check_batch_equals_single_checks():
    rules = compile_rules(INLINE, "smoke.toml")
    ids = rules.interner
    batch_kernel, single_kernel = Kernel(rules), Kernel(rules)
    for k in (batch_kernel, single_kernel):
        k.set_reference_price(ids.symbol_ids["AAA"], px(100), T0)
        k.set_reference_price(ids.symbol_ids["FUT"], px(4000), T0)
    rng = np.random.default_rng(7)
    n = 400
    accounts = rng.integers(-1, 3, n).astype(np.int32)
    symbols = rng.integers(0, 3, n).astype(np.int32)
    strategies = rng.integers(0, 2, n).astype(np.int32)
    sides = rng.integers(-1, 5, n).astype(np.int8)  # negative int8 values stay negative
    types = rng.choice(np.array([1, 1, 1, 2, 0, -1], np.int8), n)
    qtys = rng.integers(1, 8, n) * qty(10)
    prices = px(100) + rng.integers(-40, 40, n) * px("0.25")
    keys = rng.integers(0, 200, n).astype(np.int64)  # repeats: duplicate ids happen
    now = T0 + np.cumsum(rng.integers(0, 20 * MS, n)).astype(np.int64)
    out = (
        np.zeros(n, np.uint64),
        np.zeros(n, np.int64),
        np.zeros((n, N_CHECKS), np.int64),
        np.zeros((n, N_CHECKS), np.int64),
        np.zeros((n, N_CHECKS), np.int32),
    )
    accepted = batch_kernel.check_batch(accounts, symbols, strategies, sides, types, qtys, prices, keys, now, *out)
    failed, handles, limits, observed, paths = out
    for i in range(n):
        want = single_kernel.check(*(int(column[i]) for column in (accounts, symbols, strategies, sides, types, qtys, prices, keys, now)))
        got_details = tuple(
            (int(limits[i, c]), int(observed[i, c]), int(paths[i, c])) for c in range(N_CHECKS) if int(failed[i]) >> c & 1
        )
        assert (int(failed[i]) == 0, int(failed[i]), int(handles[i]), got_details) == decision(want)
    assert 0 < accepted < n
    assert accepted == batch_kernel.live_orders() == single_kernel.live_orders()


def test_check_batch_rejects_mismatched_columns():
    kernel_ = Kernel(compile_rules(INLINE, "smoke.toml"))
    ids = np.zeros(3, np.int32)
    small = np.ones(3, np.int8)
    wide = np.ones(3, np.int64)
    out = (np.zeros(3, np.uint64), np.zeros(3, np.int64), np.zeros((3, N_CHECKS), np.int64), np.zeros((3, N_CHECKS), np.int64))
    with pytest.raises(ValueError, match="prices"):
        kernel_.check_batch(ids, ids, ids, small, small, wide, wide[:2], wide, 0, *out, np.zeros((3, N_CHECKS), np.int32))
    with pytest.raises(ValueError, match="columns"):
        kernel_.check_batch(ids, ids, ids, small, small, wide, wide, wide, 0, *out, np.zeros((3, 4), np.int32))
    with pytest.raises(TypeError, match="sides"):
        kernel_.check_batch(ids, ids, ids, wide, small, wide, wide, wide, 0, *out, np.zeros((3, N_CHECKS), np.int32))


def test_batches_and_single_checks_from_two_threads_are_serialised():
    """check_batch releases the GIL; the state lock keeps decisions serial, so the counts
    add up whatever the interleaving."""
    text = INLINE.replace("order_rate_limit = { orders = 3, window_ms = 100 }", 'order_rate_limit = "unlimited"')
    rules = compile_rules(text.replace("max_working_orders = 5", 'max_working_orders = "unlimited"'), "smoke.toml")
    ids = rules.interner
    x, aaa, fut = ids.account_ids["X"], ids.symbol_ids["AAA"], ids.symbol_ids["FUT"]
    kernel_ = Kernel(rules, max_orders=1 << 16, max_positions=16, client_order_id_memory=1 << 16)
    kernel_.set_reference_price(aaa, px(100), T0)
    kernel_.set_reference_price(fut, px(4000), T0)
    n = 20_000
    columns = (
        np.full(n, x, np.int32),
        np.full(n, aaa, np.int32),
        np.zeros(n, np.int32),
        np.full(n, Side.BUY, np.int8),
        np.full(n, OrderType.LIMIT, np.int8),
        np.full(n, qty(10), np.int64),
        np.full(n, px(100), np.int64),
        np.arange(n, dtype=np.int64),
        T0 + np.arange(n, dtype=np.int64) * 100 * MS,  # beyond the content window
    )
    out = (
        np.zeros(n, np.uint64),
        np.zeros(n, np.int64),
        np.zeros((n, N_CHECKS), np.int64),
        np.zeros((n, N_CHECKS), np.int64),
        np.zeros((n, N_CHECKS), np.int32),
    )
    batch_accepted = []
    worker = threading.Thread(target=lambda: batch_accepted.append(kernel_.check_batch(*columns, *out)))
    worker.start()
    singles = [
        kernel_.check(x, fut, 0, Side.BUY, OrderType.LIMIT, qty(1), px(4000) + i * px("0.25"), -1 - i, T0)
        for i in range(200)
    ]
    worker.join()
    assert batch_accepted[0] > 0 and any(result.accepted for result in singles)
    assert batch_accepted[0] + sum(result.accepted for result in singles) == kernel_.live_orders()
    assert kernel_.working_orders(x) == kernel_.live_orders()


# -- validation at install --------------------------------------------------------------------------


def test_install_refuses_tables_the_core_cannot_run_on():
    rules = compile_rules(INLINE, "smoke.toml")
    kernel_ = Kernel(rules)
    broken = compile_rules(INLINE, "broken.toml", rules.interner)
    broken.tables.symbol_tick[rules.interner.symbol_ids["AAA"]] = 0
    with pytest.raises(ValueError, match="tick"):
        kernel_.install_rules(broken)
    assert kernel_.rules is rules  # nothing half-applied
    broken = compile_rules(INLINE, "broken.toml", rules.interner)
    broken.tables.account_limits = broken.tables.account_limits[:1]
    with pytest.raises(ValueError, match="shape"):
        kernel_.install_rules(broken)


def test_handles_out_of_range_are_unknown_orders():
    twins = Twins(compile_rules(INLINE, "smoke.toml"), max_orders=4)
    for handle in (-1, 1 << 40, (1 << 63) - 1, 1 << 70, -(1 << 70)):
        assert twins.call("release", handle) == ExecStatus.UNKNOWN_ORDER


def _mix64(value: int) -> int:
    """The kernel's hash of a client order key (splitmix64's finalizer)."""
    mask = (1 << 64) - 1
    value &= mask
    value = ((value ^ (value >> 30)) * 0xBF58476D1CE4E5B9) & mask
    value = ((value ^ (value >> 27)) * 0x94D049BB133111EB) & mask
    return value ^ (value >> 31)


def test_client_order_key_memory_with_zero_extremes_and_collisions():
    """The remembered set (8-byte hashes, key 0 kept apart, backward-shift deletion) forgets
    and remembers exactly as the reference's count window, through keys that share a home
    slot and wrap around the table."""
    twins = Twins(compile_rules(INLINE, "smoke.toml"), max_orders=8, max_positions=4, client_order_id_memory=3)
    ids = twins.rules.interner
    aaa = ids.symbol_ids["AAA"]
    twins.call("set_reference_price", aaa, px(100), T0)
    mask = 7  # the set of a memory of 3 has 8 slots
    colliding = [k for k in range(1, 5_000) if _mix64(k) & mask == mask][:5]  # home: the last slot
    keys = [0, 1, -1, 2**63 - 1, -(2**63), 0, *colliding, colliding[0], 0, *colliding[::-1], 1]
    for key in keys * 2:
        twins.now += 200 * MS  # a fresh rate bucket, no content duplicate
        twins.call("set_reference_price", aaa, px(100), twins.now)
        result = twins.call(
            "check", ids.account_ids["X"], aaa, 0, Side.BUY, OrderType.LIMIT, qty(10), px(100), key, twins.now
        )
        if result[0]:
            assert twins.call("release", result[2]) == ExecStatus.OK


def test_records_are_whole_cache_lines_or_halves():
    """The layout kernel.pxd promises: what check_batch prefetches per order is one or two
    lines per record, never a record straddling an extra line."""
    assert kernel.RECORD_SIZES == {
        "AccountRule": 128,
        "SymbolRule": 128,
        "StrategyRule": 32,
        "AccountState": 64,
        "StrategyState": 32,
        "SymbolState": 32,
        "PositionState": 128,
        "OrderSlot": 64,
    }


EXTREME = """
[firm]
name = "EXTREME"
max_reference_age_ms = 9_000_000_000_000
self_match_prevention = true
duplicate_content_window_ms = 1

[firm.limits]
max_order_qty = "unlimited"
max_order_notional = "unlimited"
max_long_position = "unlimited"
max_short_position = "unlimited"
price_collar_pct = 100_000
price_collar_ticks = 9_000_000_000_000
credit_limit = "unlimited"
max_working_orders = "unlimited"
order_rate_limit = { orders = 9_000_000_000, window_ms = 1_000 }

[symbols.NANO]
tick_size = "0.000000001"
lot_size = "0.000000001"
contract_multiplier = "0.000000007"

[symbols.WIDE]
tick_size = 1
lot_size = 1
contract_multiplier = 1_000_000

[symbols.WIDE.limits]
price_collar_ticks = 9_000_000_000

[accounts.A]

[accounts.B.limits]
credit_limit = 9_000_000_000
max_long_position = 9_000_000_000
max_short_position = 1
price_collar_pct = 1
"""


def test_extreme_values_take_the_exact_long_ways():
    """Values at the edges of int64 (products beyond 64 bits, clocks that overflow a
    subtraction, bands wider than any price distance, a multiplier that does not reduce)
    decide exactly as the reference's arbitrary-precision integers."""
    big = (1 << 63) - 1
    twins = Twins(compile_rules(EXTREME, "extreme.toml"), max_orders=64, max_positions=16, client_order_id_memory=64)
    ids = twins.rules.interner
    cid = iter(range(1, 10_000))

    def check(account, symbol, side, order_type, quantity, price, now):
        result = twins.call(
            "check", ids.account_ids[account], ids.symbol_ids[symbol], 0, side, order_type, quantity, price, next(cid), now
        )
        if result[0]:
            handles.append(result[2])

    handles: list[int] = []
    for symbol in ("NANO", "WIDE"):
        for ref_price, ref_ts in ((big, T0), (3, T0), (big // 7, -(1 << 63)), (123_456_789_123, big)):
            twins.call("set_reference_price", ids.symbol_ids[symbol], ref_price, ref_ts)
            for account in ("A", "B"):
                for now in (T0, big, -(1 << 63) + 5, T0 + 7):
                    for quantity in (1, 999_999_999, 10**9, 123_456_789_123, big // 3, big):
                        for price in (1, 3, 10**9 + 1, ref_price, big // 2, big):
                            for side in (Side.BUY, Side.SELL, Side.SELL_SHORT):
                                check(account, symbol, side, OrderType.LIMIT, quantity, price, now)
                            check(account, symbol, Side.BUY, OrderType.MARKET, quantity, 0, now)
                    # fills move positions and filled exposure to extremes; the rest is released
                    for n, handle in enumerate(handles):
                        if n % 2:
                            twins.call("fill", handle, big // (n + 2), big // (n + 3))
                        twins.call("release", handle)
                    handles.clear()
    assert next(cid) > 9_000



WIDE_BUCKETS = """
[firm]
name = "WIDEBUCKETS"
max_reference_age_ms = 9_000_000_000_000

[firm.limits]
max_order_qty = "unlimited"
max_order_notional = "unlimited"
max_long_position = "unlimited"
max_short_position = "unlimited"
price_collar_pct = "unlimited"
credit_limit = "unlimited"
max_working_orders = "unlimited"
order_rate_limit = { orders = 2, window_ms = 5_000 }

[firm.strategy_limits]
order_rate_limit = { orders = 3, window_ms = 4_000 }

[symbols.S]
tick_size = 1
lot_size = 1

[accounts.A]

[accounts.B.limits]
order_rate_limit = { orders = 9_000_000, window_ms = 1_000 }

[strategies.T]
"""


def _widened_rate_windows(rules, windows_ns: dict[int, int]):
    """The rules with rate windows replaced (old window ns -> new) in both the model and
    the tables: capacities beyond int64, which the rules compiler refuses but the kernel
    must still evaluate exactly (in 128 bits) when handed such tables."""
    seen = [rules.firm, *rules.accounts.values(), *rules.strategies.values()]
    for owner in seen:
        for name in ("order_rate_limit", "strategy_order_rate_limit"):
            rate = getattr(owner, name, None)
            if rate is not None and rate.window_ns in windows_ns:
                object.__setattr__(rate, "window_ns", windows_ns[rate.window_ns])
    for name in ("account_rate_window_ns", "strategy_rate_window_ns"):
        column = np.array(getattr(rules.tables, name))
        for old, new in windows_ns.items():
            column[column == old] = new
        object.__setattr__(rules.tables, name, column)
    return rules


def test_order_rate_buckets_beyond_int64_charge_and_refill_exactly():
    """Rate buckets whose capacity (orders x window) exceeds int64 take the 128-bit way
    on check and on accept: charges, rejects with their retry-after and refills match the
    reference at clocks from far past to far future."""
    big = (1 << 63) - 1
    rules = _widened_rate_windows(
        compile_rules(WIDE_BUCKETS, "wide-buckets.toml"),
        # capacities 2 x 5e18, 3 x 4e18 and 9e6 x 1e18 token-ns
        {5_000 * 10**6: 5 * 10**18, 4_000 * 10**6: 4 * 10**18, 1_000 * 10**6: 10**18},
    )
    twins = Twins(rules, max_orders=256, max_positions=8, client_order_id_memory=256)
    ids = rules.interner
    twins.call("set_reference_price", ids.symbol_ids["S"], 100 * 10**9, T0)
    cid = iter(range(1, 10_000))
    accepted = rejected_by_rate = 0
    clocks = (T0, T0, T0, T0 + 10**18, T0 + 2 * 10**18, T0 + 2 * 10**18, T0 + 7 * 10**18, big, big,
              -(1 << 63) + 5, T0, T0 + 3 * 10**18)
    for now in clocks:
        for account in ("A", "B"):
            for strategy in ("", "T"):
                result = twins.call(
                    "check", ids.account_ids[account], ids.symbol_ids["S"], ids.strategy_ids[strategy],
                    Side.BUY, OrderType.LIMIT, 10**9, 100 * 10**9, next(cid), now,
                )
                accepted += result[0]
                rejected_by_rate += bool(result[1] >> Check.ACCOUNT_ORDER_RATE_EXCEEDED & 1)
                rejected_by_rate += bool(result[1] >> Check.STRATEGY_ORDER_RATE_EXCEEDED & 1)
    assert accepted and rejected_by_rate
