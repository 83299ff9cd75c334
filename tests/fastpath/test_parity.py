"""Parity: the Cython kernel and the plain-Python reference evaluator agree on everything.

Hypothesis writes rules files (TOML text, so the compiler's flattening into tables is part
of what is compared: the kernel reads the tables, the reference reads the model), then
drives both implementations through long sequences of orders, fills, releases, reference
prices, trading states, clock moves, resets and hot reloads. Every result — verdict,
failure mask, handle, and (limit, observed, rule path) of every failure — and every state
reader must be identical after every step.
"""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fastpath.codes import NS_PER_MS, PRICE_SCALE, QTY_SCALE, Scope
from fastpath.fixedpoint import to_fixed
from fastpath.reference import ReferenceKernel
from fastpath.rules import compile_rules

from .harness import T0

try:
    from fastpath.kernel import Kernel
except ImportError:  # pragma: no cover - a broken build must fail these tests, not skip them
    Kernel = None

ACCOUNTS = ("A0", "A1", "A2")
SYMBOLS = ("S0", "S1", "S2")
STRATEGIES = ("T0", "T1")
SIDES = ("BUY", "SELL", "SELL_SHORT")
TICKS = ("0.01", "0.25", "1")
LOTS = ("1", "10", "0.5")
MULTIPLIERS = ("1", "2.5", "50")

# -- rules generation --------------------------------------------------------------------------


def _maybe(strategy):
    return st.one_of(st.none(), st.just("unlimited"), strategy)


QTY_LIMIT = _maybe(st.integers(0, 60))
NOTIONAL_LIMIT = _maybe(st.integers(0, 8000))
COLLAR_PCT = _maybe(st.decimals(min_value=0, max_value=25, places=2))
COLLAR_TICKS = _maybe(st.integers(0, 12))
RATE = _maybe(st.tuples(st.integers(1, 4), st.integers(1, 20)))

SYMBOL_LIMITS = {
    "max_order_qty": QTY_LIMIT,
    "max_order_notional": NOTIONAL_LIMIT,
    "max_long_position": QTY_LIMIT,
    "max_short_position": QTY_LIMIT,
    "price_collar_pct": COLLAR_PCT,
    "price_collar_ticks": COLLAR_TICKS,
}
ACCOUNT_LIMITS = SYMBOL_LIMITS | {
    "credit_limit": _maybe(st.integers(0, 30000)),
    "max_working_orders": _maybe(st.integers(0, 6)),
    "order_rate_limit": RATE,
}


def _toml_value(value) -> str:
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):
        return f"{{ orders = {value[0]}, window_ms = {value[1]} }}"
    if isinstance(value, Decimal):
        return f'"{value}"'
    return str(value)


def _table(header: str, values: dict) -> str:
    lines = [f"[{header}]"]
    lines += [f"{key} = {_toml_value(v)}" for key, v in values.items() if v is not None]
    return "\n".join(lines) + "\n"


@st.composite
def limit_tables(draw, vocabulary: dict) -> dict:
    keys = draw(st.sets(st.sampled_from(sorted(vocabulary))))
    return {key: draw(vocabulary[key]) for key in sorted(keys)}


@st.composite
def rules_texts(draw) -> str:
    parts = [
        _table(
            "firm",
            {
                "name": "PARITY",
                "max_reference_age_ms": draw(st.integers(1, 60)),
                "duplicate_content_window_ms": draw(st.integers(0, 40)),
                "self_match_prevention": draw(st.booleans()),
                "require_strategy": draw(st.booleans()),
            },
        ),
        # the firm sets most limits most of the time, so that orders get far enough to
        # exercise the state; the rest is left to the accounts, symbols or nobody
        _table(
            "firm.limits",
            {
                key: draw(st.one_of(vocab, vocab.filter(lambda v: v not in (None, "unlimited"))))
                for key, vocab in ACCOUNT_LIMITS.items()
            },
        ),
        _table("firm.strategy_limits", {"order_rate_limit": draw(RATE)}),
    ]
    for symbol in SYMBOLS:
        parts.append(
            _table(
                f"symbols.{symbol}",
                {
                    "tick_size": draw(st.sampled_from(TICKS)),
                    "lot_size": draw(st.sampled_from(LOTS)),
                    "contract_multiplier": draw(st.sampled_from(MULTIPLIERS)),
                    "max_reference_age_ms": draw(st.one_of(st.none(), st.integers(1, 60))),
                },
            )
        )
        parts.append(_table(f"symbols.{symbol}.limits", draw(limit_tables(SYMBOL_LIMITS))))
    declared_accounts = draw(st.lists(st.sampled_from(ACCOUNTS), min_size=1, unique=True))
    for account in sorted(declared_accounts):
        parts.append(
            _table(
                f"accounts.{account}",
                {
                    "self_match_prevention": draw(st.one_of(st.none(), st.booleans())),
                    "duplicate_content_window_ms": draw(st.one_of(st.none(), st.integers(0, 40))),
                },
            )
        )
        parts.append(_table(f"accounts.{account}.limits", draw(limit_tables(ACCOUNT_LIMITS))))
        for symbol in draw(st.sets(st.sampled_from(SYMBOLS), max_size=2)):
            parts.append(_table(f"accounts.{account}.symbols.{symbol}", draw(limit_tables(SYMBOL_LIMITS))))
    for strategy in draw(st.sets(st.sampled_from(STRATEGIES))):
        parts.append(_table(f"strategies.{strategy}", {"order_rate_limit": draw(RATE)}))
    scopes = draw(
        st.sets(st.tuples(st.one_of(st.none(), st.sampled_from(sorted(declared_accounts))), st.sampled_from(SYMBOLS)))
    )
    for account, symbol in sorted(scopes, key=str):
        sides = draw(st.lists(st.sampled_from(SIDES), min_size=1, max_size=3, unique=True))
        entry = {"symbol": symbol, "sides": None, "reason": "parity"}
        if account is not None:
            entry["account"] = account
        text = _table("[restrictions]", entry)
        parts.append(text + "sides = [" + ", ".join(f'"{s}"' for s in sides) + "]\n")
    return "\n".join(parts)


# -- operation generation ----------------------------------------------------------------------

ORDER = st.tuples(
    st.just("order"),
    st.integers(-1, len(ACCOUNTS)),  # account id (-1 and len are unknown)
    st.integers(-1, len(SYMBOLS)),
    st.integers(-1, len(STRATEGIES) + 1),  # 0 = no strategy
    st.sampled_from((1, 1, 2, 2, 3, 0)),  # side, sometimes invalid
    st.sampled_from((1, 1, 1, 2, 0)),  # order type
    st.integers(-1, 40),  # quantity in half-lots (odd = off a whole lot)
    st.integers(-8, 8),  # price offset from the reference in quarter ticks
    st.integers(0, 6),  # client order id from a small pool: duplicates happen
)
OPERATION = st.one_of(
    ORDER,
    ORDER,
    ORDER,
    st.tuples(st.just("fill"), st.integers(0, 30), st.integers(1, 30), st.integers(-4, 4)),
    st.tuples(st.just("release"), st.integers(0, 30)),
    st.tuples(st.just("ref"), st.integers(0, len(SYMBOLS) - 1), st.integers(0, 300), st.integers(-5, 30)),
    st.tuples(st.just("state"), st.sampled_from(list(Scope)), st.integers(0, 2), st.integers(0, 2)),
    st.tuples(st.just("advance"), st.integers(0, 40)),
    st.tuples(st.just("reset"), st.integers(-1, len(ACCOUNTS) - 1)),
    st.tuples(st.just("reload")),
    st.tuples(st.just("stale_handle"), st.integers(0, 1 << 40)),
)


def _result_tuple(result) -> tuple:
    details = tuple(result.detail(code) for code in range(64) if result.failed >> code & 1)
    return bool(result.accepted), int(result.failed), int(result.handle), details


def _state_tuple(kernel, n_accounts: int, n_symbols: int) -> tuple:
    return (
        tuple(tuple(kernel.exposure(a)) for a in range(n_accounts)),
        tuple(kernel.working_orders(a) for a in range(n_accounts)),
        tuple(tuple(kernel.position(a, s)) for a in range(n_accounts) for s in range(n_symbols)),
        kernel.live_orders(),
    )


class Pair:
    """The two implementations side by side on the same rules."""

    def __init__(self, text_a: str, text_b: str, capacities: dict):
        assert Kernel is not None, "fastpath.kernel is not compiled"
        self.rules_a = compile_rules(text_a, "parity-a.toml")
        self.rules_b = compile_rules(text_b, "parity-b.toml", self.rules_a.interner)
        self.current = "a"
        self.kernel = Kernel(self.rules_a, **capacities)
        self.reference = ReferenceKernel(self.rules_a, **capacities)
        self.handles: list[int] = []
        self.now = T0
        self.ref_prices: dict[int, int] = {}

    def both(self, method: str, *args):
        got = getattr(self.kernel, method)(*args)
        want = getattr(self.reference, method)(*args)
        return got, want

    def tick(self, symbol_id: int) -> int:
        rules = self.rules_a if self.current == "a" else self.rules_b
        return rules.symbols[SYMBOLS[symbol_id]].tick_nanos

    def lot(self, symbol_id: int) -> int:
        rules = self.rules_a if self.current == "a" else self.rules_b
        return rules.symbols[SYMBOLS[symbol_id]].lot_nanos

    def apply(self, op: tuple) -> None:
        kind = op[0]
        if kind == "order":
            _, account, symbol, strategy, side, order_type, half_lots, quarter_ticks, cid = op
            known_symbol = 0 <= symbol < len(SYMBOLS)
            lot = self.lot(symbol) if known_symbol else QTY_SCALE
            tick = self.tick(symbol) if known_symbol else PRICE_SCALE
            quantity = half_lots * lot // 2
            reference = self.ref_prices.get(symbol, 100 * tick)
            price = reference + quarter_ticks * tick // 4
            key = hash((account, cid))
            got, want = self.both("check", account, symbol, strategy, side, order_type, quantity, price, key, self.now)
            assert _result_tuple(got) == _result_tuple(want), op
            if want.accepted:
                self.handles.append(want.handle)
        elif kind == "fill":
            _, pick, units, price_offset = op
            if self.handles:
                handle = self.handles[pick % len(self.handles)]
                got, want = self.both("fill", handle, units * QTY_SCALE // 2, (100 + price_offset) * PRICE_SCALE // 4)
                assert int(got) == int(want), op
        elif kind == "release":
            if self.handles:
                got, want = self.both("release", self.handles[op[1] % len(self.handles)])
                assert int(got) == int(want), op
        elif kind == "ref":
            _, symbol, ticks, age_ms = op
            price = ticks * self.tick(symbol)
            self.ref_prices[symbol] = price
            self.both("set_reference_price", symbol, price, self.now - age_ms * NS_PER_MS)
        elif kind == "state":
            _, scope, scope_id, state = op
            self.both("set_trading_state", scope, scope_id, state)
            got, want = self.both("trading_state", scope, scope_id)
            assert int(got) == int(want)
        elif kind == "advance":
            self.now += op[1] * NS_PER_MS // 2
        elif kind == "reset":
            self.both("reset_filled_exposure", op[1])
        elif kind == "reload":
            self.current = "b" if self.current == "a" else "a"
            rules = self.rules_a if self.current == "a" else self.rules_b
            self.both("install_rules", rules)
        elif kind == "stale_handle":
            got, want = self.both("release", op[1])
            assert int(got) == int(want), op

    def assert_same_state(self) -> None:
        n_accounts = len(self.rules_a.interner.account_names)
        n_symbols = len(self.rules_a.interner.symbol_names)
        assert _state_tuple(self.kernel, n_accounts, n_symbols) == _state_tuple(
            self.reference, n_accounts, n_symbols
        )


CAPACITIES = st.fixed_dictionaries(
    {
        "max_orders": st.sampled_from((1, 3, 8, 64)),
        "max_positions": st.sampled_from((1, 2, 9)),
        "client_order_id_memory": st.sampled_from((1, 3, 50)),
    }
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(
    text_a=rules_texts(),
    text_b=rules_texts(),
    capacities=CAPACITIES,
    operations=st.lists(OPERATION, min_size=1, max_size=120),
)
def test_kernel_matches_reference(text_a, text_b, capacities, operations):
    pair = Pair(text_a, text_b, capacities)
    for symbol in range(len(SYMBOLS)):  # most orders should meet a fresh price
        pair.apply(("ref", symbol, 100, 0))
    for op in operations:
        pair.apply(op)
        pair.assert_same_state()


@pytest.mark.parametrize("seed_ops", [400, 1500])
def test_long_sequences_keep_state_identical(seed_ops):
    """A long deterministic walk (no shrinking budget needed) with generous limits, so
    that thousands of orders are accepted and state evolves far."""
    text = "\n".join(
        [
            _table("firm", {"name": "LONG", "max_reference_age_ms": 10_000, "duplicate_content_window_ms": 3}),
            _table(
                "firm.limits",
                {
                    "max_order_qty": 50,
                    "max_order_notional": 1_000_000,
                    "max_long_position": 400,
                    "max_short_position": 300,
                    "price_collar_pct": Decimal("7.5"),
                    "credit_limit": 2_000_000,
                    "max_working_orders": 40,
                    "order_rate_limit": (50, 10),
                },
            ),
            *(_table(f"symbols.{s}", {"tick_size": t, "lot_size": "1"}) for s, t in zip(SYMBOLS, TICKS)),
            *(_table(f"accounts.{a}", {}) for a in ACCOUNTS),
            _table("strategies.T0", {"order_rate_limit": (20, 5)}),
        ]
    )
    import random

    rng = random.Random(seed_ops)
    pair = Pair(text, text.replace("max_order_qty = 50", "max_order_qty = 30"), {"max_orders": 128, "max_positions": 16, "client_order_id_memory": 64})
    for symbol in range(len(SYMBOLS)):
        pair.apply(("ref", symbol, 100, 0))
    for step in range(seed_ops):
        roll = rng.random()
        if roll < 0.6:
            op = ("order", rng.randrange(3), rng.randrange(3), rng.randrange(2), rng.choice((1, 2, 3)), rng.choice((1, 1, 2)), rng.randrange(1, 60), rng.randrange(-8, 9), rng.randrange(1000))
        elif roll < 0.8:
            op = ("fill", rng.randrange(1000), rng.randrange(1, 40), rng.randrange(-4, 5))
        elif roll < 0.9:
            op = ("release", rng.randrange(1000))
        elif roll < 0.97:
            op = ("advance", rng.randrange(40))
        elif roll < 0.99:
            op = ("ref", rng.randrange(3), rng.randrange(90, 110), 0)
        else:
            op = ("reload",)
        pair.apply(op)
        if step % 50 == 0:
            pair.assert_same_state()
    pair.assert_same_state()
    assert pair.reference.live_orders() > 0 or len(pair.handles) > 50
