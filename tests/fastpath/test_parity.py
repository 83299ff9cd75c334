"""Parity: the Cython kernel and the plain-Python reference evaluator agree on everything.

Hypothesis writes rules files (TOML text, so the compiler's flattening into tables is part
of what is compared: the kernel reads the tables, the reference reads the model), then
drives both implementations through long sequences of orders, fills, releases, reference
prices, trading states, clock moves, resets and hot reloads. Every result — verdict,
failure mask, handle, and (limit, observed, rule path) of every failure — and every state
reader must be identical after every step.
"""

from __future__ import annotations

import collections
import random
from decimal import Decimal

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fastpath.codes import NS_PER_MS, PRICE_SCALE, QTY_SCALE, Check, Scope
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


def _mostly(common, rare, rare_percent: int = 5):
    """Draw from ``common`` except ``rare_percent`` % of the time: most orders should be well
    formed so that they reach stage B and move state, a few should not. (Hypothesis does
    not weigh ``one_of`` branches evenly, so the choice is an explicit percentile.)"""
    return st.tuples(st.integers(0, 10**6 + 37), common, rare).map(
        lambda t: t[2] if t[0] % 100 >= 100 - rare_percent else t[1]
    )


def _maybe(strategy):
    return st.one_of(st.none(), st.just("unlimited"), strategy)


QTY_VALUE = st.integers(0, 60)
SYMBOL_LIMIT_VALUES = {
    "max_order_qty": QTY_VALUE,
    "max_order_notional": st.integers(0, 8000),
    "max_long_position": QTY_VALUE,
    "max_short_position": QTY_VALUE,
    "price_collar_pct": st.decimals(min_value=0, max_value=25, places=2),
    "price_collar_ticks": st.integers(0, 12),
}
ACCOUNT_LIMIT_VALUES = SYMBOL_LIMIT_VALUES | {
    "credit_limit": st.integers(0, 30000),
    "max_working_orders": st.integers(0, 6),
    "order_rate_limit": st.tuples(st.integers(1, 4), st.integers(1, 20)),
}
RATE = _maybe(ACCOUNT_LIMIT_VALUES["order_rate_limit"])
SYMBOL_LIMITS = {key: _maybe(value) for key, value in SYMBOL_LIMIT_VALUES.items()}
ACCOUNT_LIMITS = {key: _maybe(value) for key, value in ACCOUNT_LIMIT_VALUES.items()}


def _usually_set(value):
    """A limit value nine times out of ten, else anything (absent, unlimited, a value)."""
    return _mostly(value, _maybe(value), 10)


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
                "require_strategy": draw(_mostly(st.just(False), st.just(True), 20)),
            },
        ),
        # the firm sets most limits most of the time, so that orders get far enough to
        # exercise the state; the rest is left to the accounts, symbols or nobody
        _table(
            "firm.limits",
            {key: draw(_usually_set(value)) for key, value in ACCOUNT_LIMIT_VALUES.items()},
        ),
        _table(
            "firm.strategy_limits",
            {"order_rate_limit": draw(_usually_set(ACCOUNT_LIMIT_VALUES["order_rate_limit"]))},
        ),
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
    # every account and strategy is declared (unknown ids come from out-of-range ids), so
    # that most orders pass stage A and exercise the limits and the state
    declared_accounts = ACCOUNTS
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
    for strategy in STRATEGIES:
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
    _mostly(st.sampled_from((0, 1, 2)), st.sampled_from((-1, len(ACCOUNTS)))),  # ids beyond are unknown
    _mostly(st.sampled_from((0, 1, 2)), st.sampled_from((-1, len(SYMBOLS)))),
    _mostly(st.sampled_from((0, 0, 1, 2)), st.sampled_from((-1, len(STRATEGIES) + 1))),  # 0 = none
    _mostly(st.sampled_from((1, 2, 3)), st.sampled_from((0, 4))),  # side
    _mostly(st.sampled_from((1, 1, 2)), st.just(0)),  # order type
    _mostly(st.integers(1, 30).map(lambda n: 2 * n), st.integers(-1, 9), 10),  # half-lots; odd = off lot
    _mostly(st.integers(-3, 3).map(lambda n: 4 * n), st.integers(-14, 14), 10),  # quarter ticks off the reference
    _mostly(st.integers(100, 10**9), st.integers(0, 3), 10),  # client order id; a small pool repeats
)
OPERATION = st.one_of(
    ORDER,
    ORDER,
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
        self.last_failed = 0

    def both(self, method: str, *args):
        got = getattr(self.kernel, method)(*args)
        want = getattr(self.reference, method)(*args)
        return got, want

    def _recent_handle(self, pick: int) -> int:
        """One of the last 16 accepted handles: mostly still working, sometimes ended."""
        return self.handles[-1 - pick % min(16, len(self.handles))]

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
            self.last_failed = want.failed
            if want.accepted:
                self.handles.append(want.handle)
        elif kind == "fill":
            _, pick, units, price_offset = op
            if self.handles:
                handle = self._recent_handle(pick)
                got, want = self.both("fill", handle, units * QTY_SCALE // 2, (100 + price_offset) * PRICE_SCALE // 4)
                assert int(got) == int(want), op
        elif kind == "release":
            if self.handles:
                got, want = self.both("release", self._recent_handle(op[1]))
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
    operations=st.lists(OPERATION, min_size=10, max_size=150),
)
def test_kernel_matches_reference(text_a, text_b, capacities, operations):
    pair = Pair(text_a, text_b, capacities)
    for symbol in range(len(SYMBOLS)):  # most orders should meet a fresh price
        pair.apply(("ref", symbol, 100, 0))
    for op in operations:
        pair.apply(op)
        pair.assert_same_state()


WALK_RULES = """
[firm]
name = "WALK"
max_reference_age_ms = 40
duplicate_content_window_ms = 20

[firm.limits]
max_order_qty = 50
max_order_notional = 1500
max_long_position = 120
max_short_position = 90
price_collar_pct = "7.5"
credit_limit = 20000
max_working_orders = 12
order_rate_limit = { orders = 6, window_ms = 10 }

[firm.strategy_limits]
order_rate_limit = { orders = 8, window_ms = 5 }

[symbols.S0]
tick_size = "0.01"
lot_size = 1

[symbols.S1]
tick_size = "0.25"
lot_size = 1
contract_multiplier = 2
[symbols.S1.limits]
price_collar_ticks = 30

[symbols.S2]
tick_size = "1"
lot_size = "0.5"
max_reference_age_ms = 15

[accounts.A0]

[accounts.A1]
self_match_prevention = false
[accounts.A1.limits]
credit_limit = 8000
max_working_orders = 4
[accounts.A1.symbols.S0]
max_order_qty = 20

[accounts.A2]
[accounts.A2.limits]
max_short_position = "unlimited"
price_collar_pct = "unlimited"

[strategies.T0]
order_rate_limit = { orders = 3, window_ms = 5 }

[strategies.T1]

[[restrictions]]
symbol = "S2"
sides = ["SELL_SHORT"]
reason = "no short sales"

[[restrictions]]
symbol = "S1"
account = "A2"
sides = ["BUY"]
reason = "blackout"
"""

#: Every code the kernel itself can produce (the last two are the gateway's).
KERNEL_CODES = set(range(Check.INTERNAL_ERROR))


def _walk(seed: int, capacities: dict, steps: int) -> tuple[collections.Counter, int]:
    """A long seeded random walk over both implementations; returns the failure codes
    seen and the number of accepted orders."""
    rng = random.Random(seed)
    tighter = WALK_RULES.replace("max_order_qty = 50", "max_order_qty = 30").replace(
        "credit_limit = 20000", "credit_limit = 9000"
    )
    without_limits = WALK_RULES.replace("max_order_notional = 1500\n", "")
    pair = Pair(WALK_RULES, tighter if seed % 2 else without_limits, capacities)
    seen: collections.Counter = collections.Counter()
    accepted = 0
    for symbol in range(len(SYMBOLS)):
        pair.apply(("ref", symbol, 100, 0))
    def pick(common, rare, p_rare=0.04):
        return rng.choice(rare) if rng.random() < p_rare else rng.choice(common)

    for step in range(steps):
        roll = rng.random()
        if roll < 0.66:
            op = (
                "order",
                pick((0, 1, 2), (-1, 3)),
                pick((0, 1, 2), (-1, 3)),
                pick((0, 0, 1, 2), (-1, 3)),
                pick((1, 2, 3), (0, 4)),
                pick((1, 1, 1, 2), (0,)),
                pick(range(2, 50, 4), range(-1, 80)),
                pick(range(-40, 41, 4), range(-40, 41), p_rare=0.1),
                pick(range(10**9), range(4), p_rare=0.06),
            )
        elif roll < 0.8:
            op = ("fill", rng.randrange(1000), rng.randrange(1, 60), rng.randrange(-4, 5))
        elif roll < 0.9:
            op = ("release", rng.randrange(1000))
        elif roll < 0.93:
            op = ("advance", rng.randrange(12))
        elif roll < 0.975:
            op = ("ref", rng.randrange(3), pick(range(90, 110), (0,), p_rare=0.03), pick(range(0, 10), range(40, 60), 0.05))
        elif roll < 0.985:  # halts are rare and usually lifted soon: set ACTIVE most of the time
            op = ("state", rng.choice(list(Scope)), rng.randrange(3), pick((0,), (1, 2), p_rare=0.2))
        elif roll < 0.997:
            op = ("reset", rng.randrange(-1, 3))
        else:
            op = ("reload",)
        before = len(pair.handles)
        pair.apply(op)
        if op[0] == "order":
            accepted += len(pair.handles) - before
            seen.update(code for code in range(64) if pair.last_failed >> code & 1)
        if step % 25 == 0:
            pair.assert_same_state()
        if step % 60 == 0:  # operators lift every halt now and then
            for scope in Scope:
                for scope_id in range(3):
                    pair.apply(("state", scope, scope_id, 0))
    pair.assert_same_state()
    return seen, accepted


def test_long_walks_agree_and_reach_every_check():
    """Seeded walks of thousands of steps: both implementations agree at every step, and
    together the walks accept many orders and make every kernel check fail at least once
    (so parity cannot silently become vacuous)."""
    seen: collections.Counter = collections.Counter()
    accepted = 0
    for seed, capacities in (
        (1, {"max_orders": 256, "max_positions": 16, "client_order_id_memory": 64}),
        (2, {"max_orders": 256, "max_positions": 16, "client_order_id_memory": 64}),
        (3, {"max_orders": 6, "max_positions": 3, "client_order_id_memory": 4}),
        (4, {"max_orders": 40, "max_positions": 5, "client_order_id_memory": 9}),
    ):
        walk_seen, walk_accepted = _walk(seed, capacities, steps=10_000)
        seen += walk_seen
        accepted += walk_accepted
    missing = {Check(code).name for code in KERNEL_CODES - set(seen)}
    assert not missing, f"walks never failed: {sorted(missing)}"
    assert accepted > 1000
