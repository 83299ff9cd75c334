"""The rules compiler: the example file, inheritance folding, every error, the version
and id stability across reloads.

The folding tests compare the tables against the model (not against hand-copied numbers
only), because that agreement is what lets the reference evaluator and the kernel give the
same decisions.
"""

from __future__ import annotations

import re
from decimal import Decimal
from pathlib import Path

import numpy as np
import pytest

from fastpath.codes import (
    ALL_SIDES_MASK,
    LIMIT_UNLIMITED,
    LIMIT_UNSET,
    N_LIMIT_KINDS,
    NOTIONAL_SCALE,
    NS_PER_MS,
    PRICE_SCALE,
    QTY_SCALE,
    Check,
    LimitKind,
    OrderType,
    Side,
    side_bit,
)
from fastpath.engine import Engine
from fastpath.errors import (
    DuplicateRestrictionError,
    InvalidValueError,
    MissingKeyError,
    RulesError,
    RulesFileError,
    RulesSyntaxError,
    UndeclaredNameError,
    UnknownKeyError,
)
from fastpath.model import STRATEGY_NONE, Interner, RateLimit, Setting
from fastpath.rules import (
    DEFAULT_DUPLICATE_CONTENT_WINDOW_MS,
    DEFAULT_MAX_REFERENCE_AGE_MS,
    LimitOverride,
    check_override,
    compile_rules,
    load_rules,
)

from .harness import T0, px, qty

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "rules.toml"
SOURCE = "test-rules.toml"

#: A small valid file the error cases are appended to (TOML lets later tables extend it).
BASE = """
[firm]
name = "T"

[symbols.AAA]
tick_size = "0.01"
lot_size = 1

[accounts.ACC1]
"""

#: Every scope of the resolution chains, with a different value at each level.
LAYERED = """
[firm]
name = "LAYERS"
max_reference_age_ms = 3000
self_match_prevention = true
duplicate_content_window_ms = 700

[firm.limits]
max_order_qty = 1000
max_order_notional = 50000
max_long_position = 3000
credit_limit = 200000
max_working_orders = 50
order_rate_limit = { orders = 100, window_ms = 1000 }

[firm.strategy_limits]
order_rate_limit = { orders = 40, window_ms = 2000 }

[symbols.AAA]
tick_size = "0.01"
lot_size = 1

[symbols.BBB]
tick_size = "0.05"
lot_size = "0.5"
contract_multiplier = "2.5"
max_reference_age_ms = 250

[symbols.BBB.limits]
max_order_qty = 300
price_collar_ticks = 8

[accounts.PLAIN]

[accounts.OWN]
self_match_prevention = false
duplicate_content_window_ms = 0

[accounts.OWN.limits]
max_order_qty = 500
max_short_position = "unlimited"
credit_limit = "12.5"
order_rate_limit = "unlimited"

[accounts.OWN.symbols.BBB]
max_order_qty = 80
price_collar_pct = "0.25"

[strategies.INHERITS]

[strategies.OWNRATE]
order_rate_limit = { orders = 7, window_ms = 100 }

[[restrictions]]
symbol = "AAA"
sides = ["SELL_SHORT"]
reason = "hard to borrow"

[[restrictions]]
symbol = "AAA"
account = "PLAIN"
sides = ["BUY", "SELL"]
reason = "insider"
"""


def compile_text(text: str, interner: Interner | None = None):
    return compile_rules(text, SOURCE, interner)


# -- the example file ----------------------------------------------------------------------------


def test_example_compiles_with_expected_names():
    rules = load_rules(EXAMPLE)
    assert rules.source == str(EXAMPLE)
    assert rules.interner.account_names == ["ACC1", "ACC2", "ACC3"]
    assert rules.interner.symbol_names == ["AAPL", "BTC-USD", "ESZ5", "GME", "MSFT"]
    assert rules.interner.strategy_names == ["", "MM", "MOMO"]
    assert rules.symbols["ESZ5"].multiplier_nanos == 50 * 10**9
    assert rules.symbols["BTC-USD"].lot_nanos == QTY_SCALE // 10_000


def test_example_resolves_every_limit_for_every_account():
    """Normal orders of every declared account must not fail closed on MISSING_LIMIT."""
    tables = load_rules(EXAMPLE).tables
    assert (tables.account_limits != LIMIT_UNSET).all()
    assert (tables.account_credit_limit != LIMIT_UNSET).all()
    assert (tables.account_max_working != LIMIT_UNSET).all()
    assert (tables.account_rate_orders != LIMIT_UNSET).all()
    assert (tables.strategy_rate_orders[1:] != LIMIT_UNSET).all()


def test_example_comments_name_every_check():
    text = EXAMPLE.read_text()
    assert [check.name for check in Check if not re.search(rf"\b{check.name}\b", text)] == []


def test_example_has_a_no_short_sale_restriction():
    rules = load_rules(EXAMPLE)
    no_short_sale = [
        symbol
        for symbol in rules.symbols.values()
        if symbol.restriction and symbol.restriction.sides_mask == side_bit(Side.SELL_SHORT)
    ]
    assert no_short_sale, "the example should show a firm-wide no-short-sale restriction"


EXPECTED_DTYPES = {
    "account_active": np.uint8,
    "account_limits": np.int64,
    "account_limit_paths": np.int32,
    "account_credit_limit": np.int64,
    "account_credit_path": np.int32,
    "account_max_working": np.int64,
    "account_max_working_path": np.int32,
    "account_rate_orders": np.int64,
    "account_rate_window_ns": np.int64,
    "account_rate_path": np.int32,
    "account_self_match": np.uint8,
    "account_dup_window_ns": np.int64,
    "symbol_active": np.uint8,
    "symbol_tick": np.int64,
    "symbol_tick_path": np.int32,
    "symbol_lot": np.int64,
    "symbol_lot_path": np.int32,
    "symbol_multiplier": np.int64,
    "symbol_max_ref_age_ns": np.int64,
    "symbol_max_ref_age_path": np.int32,
    "symbol_limits": np.int64,
    "symbol_limit_paths": np.int32,
    "symbol_restricted_sides": np.uint8,
    "symbol_restricted_path": np.int32,
    "strategy_active": np.uint8,
    "strategy_rate_orders": np.int64,
    "strategy_rate_window_ns": np.int64,
    "strategy_rate_path": np.int32,
    "override_keys": np.int64,
    "override_limits": np.int64,
    "override_limit_paths": np.int32,
    "override_restricted_sides": np.uint8,
    "override_restricted_path": np.int32,
}


def expected_shape(name: str, rules) -> tuple[int, ...]:
    rows = {
        "account": len(rules.interner.account_names),
        "symbol": len(rules.interner.symbol_names),
        "strategy": len(rules.interner.strategy_names),
        "override": len(rules.tables.override_keys),
    }[name.split("_")[0]]
    return (rows, N_LIMIT_KINDS) if name.endswith(("_limits", "_limit_paths")) else (rows,)


@pytest.mark.parametrize(
    "text", [EXAMPLE.read_text(), LAYERED, BASE], ids=["example", "layered", "no-overrides"]
)
def test_table_dtypes_shapes_and_layout(text):
    rules = compile_text(text)
    assert set(vars(rules.tables)) == set(EXPECTED_DTYPES)
    for name, dtype in EXPECTED_DTYPES.items():
        array = getattr(rules.tables, name)
        assert array.dtype == dtype, name
        assert array.shape == expected_shape(name, rules), name
        assert array.flags.c_contiguous, name


def test_paths_are_sorted_complete_and_indexed():
    rules = compile_text(LAYERED)
    assert list(rules.paths) == sorted(set(rules.paths))
    assert rules.path_ids == {path: index for index, path in enumerate(rules.paths)}
    for name in vars(rules.tables):
        if name.endswith(("_path", "_paths")):
            ids = getattr(rules.tables, name)
            assert ((ids >= -1) & (ids < len(rules.paths))).all(), name
    assert rules.path(-1) is None
    assert "firm.max_reference_age_ms" in rules.paths
    assert "restrictions[1]" in rules.paths


# -- inheritance folding -------------------------------------------------------------------------


def test_account_limits_fold_firm_defaults_under_account_settings():
    rules = compile_text(LAYERED)
    tables, ids = rules.tables, rules.interner.account_ids
    plain, own = ids["PLAIN"], ids["OWN"]

    qty_kind = LimitKind.MAX_ORDER_QTY
    # PLAIN inherits the firm; OWN's own value wins where it has one.
    assert tables.account_limits[plain, qty_kind] == 1000 * QTY_SCALE
    assert rules.path(tables.account_limit_paths[plain, qty_kind]) == "firm.limits.max_order_qty"
    assert tables.account_limits[own, qty_kind] == 500 * QTY_SCALE
    assert rules.path(tables.account_limit_paths[own, qty_kind]) == "accounts.OWN.limits.max_order_qty"
    assert tables.account_limits[own, LimitKind.MAX_SHORT_POSITION] == LIMIT_UNLIMITED
    # Set nowhere on the chain: unset, no path (the kernel fails closed).
    assert tables.account_limits[plain, LimitKind.MAX_SHORT_POSITION] == LIMIT_UNSET
    assert tables.account_limit_paths[plain, LimitKind.MAX_SHORT_POSITION] == -1
    assert tables.account_limits[plain, LimitKind.PRICE_COLLAR_PPM] == LIMIT_UNSET

    assert tables.account_credit_limit[plain] == 200000 * NOTIONAL_SCALE
    assert tables.account_credit_limit[own] == 12_500_000
    assert rules.path(tables.account_credit_path[own]) == "accounts.OWN.limits.credit_limit"
    assert tables.account_max_working[own] == 50
    assert rules.path(tables.account_max_working_path[own]) == "firm.limits.max_working_orders"
    assert tables.account_rate_orders[plain] == 100
    assert tables.account_rate_window_ns[plain] == 1000 * NS_PER_MS
    assert (tables.account_rate_orders[own], tables.account_rate_window_ns[own]) == (LIMIT_UNLIMITED, 0)
    assert rules.path(tables.account_rate_path[own]) == "accounts.OWN.limits.order_rate_limit"
    assert (tables.account_self_match[plain], tables.account_self_match[own]) == (1, 0)
    assert (tables.account_dup_window_ns[plain], tables.account_dup_window_ns[own]) == (700 * NS_PER_MS, 0)


def test_tables_agree_with_the_model_for_every_account_and_kind():
    """The folding rule, stated once: account chain = account limits, else firm limits."""
    rules = compile_text(LAYERED)
    tables = rules.tables
    for name, account in rules.accounts.items():
        row = rules.interner.account_ids[name]
        for kind in LimitKind:
            setting = account.limits.get(kind) or rules.firm.limits.get(kind)
            expected = (setting.value, rules.path_ids[setting.path]) if setting else (LIMIT_UNSET, -1)
            assert (tables.account_limits[row, kind], tables.account_limit_paths[row, kind]) == expected


def test_model_keeps_each_scope_as_written():
    rules = compile_text(LAYERED)
    own = rules.accounts["OWN"]
    assert set(own.limits) == {LimitKind.MAX_ORDER_QTY, LimitKind.MAX_SHORT_POSITION}
    assert own.max_working_orders is None  # inherited, so not in the account's model
    assert own.credit_limit == Setting(12_500_000, "accounts.OWN.limits.credit_limit")
    assert own.order_rate_limit == RateLimit(LIMIT_UNLIMITED, 0, "accounts.OWN.limits.order_rate_limit")
    assert own.self_match_prevention == Setting(0, "accounts.OWN.self_match_prevention")
    assert own.symbol_limits["BBB"][LimitKind.PRICE_COLLAR_PPM] == Setting(
        2_500, "accounts.OWN.symbols.BBB.price_collar_pct"
    )
    plain = rules.accounts["PLAIN"]
    assert plain.limits == {}
    assert plain.self_match_prevention is None and plain.duplicate_content_window is None
    assert plain.restrictions["AAA"].sides_mask == side_bit(Side.BUY) | side_bit(Side.SELL)
    assert rules.firm.limits[LimitKind.MAX_LONG_POSITION] == Setting(
        3000 * QTY_SCALE, "firm.limits.max_long_position"
    )
    assert rules.firm.max_reference_age == Setting(3000 * NS_PER_MS, "firm.max_reference_age_ms")
    assert rules.firm.duplicate_content_window == Setting(700 * NS_PER_MS, "firm.duplicate_content_window_ms")


def test_symbol_caps_are_not_folded_with_the_firm():
    rules = compile_text(LAYERED)
    tables, ids = rules.tables, rules.interner.symbol_ids
    aaa, bbb = ids["AAA"], ids["BBB"]
    assert (tables.symbol_limits[aaa] == LIMIT_UNSET).all()
    assert tables.symbol_limits[bbb, LimitKind.MAX_ORDER_QTY] == 300 * QTY_SCALE
    ticks_path = tables.symbol_limit_paths[bbb, LimitKind.PRICE_COLLAR_TICKS]
    assert rules.path(ticks_path) == "symbols.BBB.limits.price_collar_ticks"
    assert tables.symbol_tick[bbb] == PRICE_SCALE // 20
    assert tables.symbol_lot[bbb] == QTY_SCALE // 2
    assert tables.symbol_multiplier[bbb] == 2_500_000_000
    assert tables.symbol_multiplier[aaa] == 1_000_000_000
    assert rules.path(tables.symbol_tick_path[bbb]) == "symbols.BBB.tick_size"
    # Reference age: the symbol's own, else the firm's.
    assert tables.symbol_max_ref_age_ns[bbb] == 250 * NS_PER_MS
    assert rules.path(tables.symbol_max_ref_age_path[bbb]) == "symbols.BBB.max_reference_age_ms"
    assert tables.symbol_max_ref_age_ns[aaa] == 3000 * NS_PER_MS
    assert rules.path(tables.symbol_max_ref_age_path[aaa]) == "firm.max_reference_age_ms"
    # Firm-wide restriction.
    assert tables.symbol_restricted_sides[aaa] == side_bit(Side.SELL_SHORT)
    assert rules.path(tables.symbol_restricted_path[aaa]) == "restrictions[0]"
    assert (tables.symbol_restricted_sides[bbb], tables.symbol_restricted_path[bbb]) == (0, -1)


def test_override_rows_hold_account_symbol_settings_and_account_restrictions():
    rules = compile_text(LAYERED)
    tables, accounts, symbols = rules.tables, rules.interner.account_ids, rules.interner.symbol_ids
    own_bbb = accounts["OWN"] << 32 | symbols["BBB"]
    plain_aaa = accounts["PLAIN"] << 32 | symbols["AAA"]
    assert list(tables.override_keys) == sorted([own_bbb, plain_aaa])
    keys = tables.override_keys.tolist()
    own_row, plain_row = keys.index(own_bbb), keys.index(plain_aaa)

    assert tables.override_limits[own_row, LimitKind.MAX_ORDER_QTY] == 80 * QTY_SCALE
    assert tables.override_limits[own_row, LimitKind.PRICE_COLLAR_PPM] == 2_500
    assert tables.override_limits[own_row, LimitKind.MAX_LONG_POSITION] == LIMIT_UNSET
    qty_path = tables.override_limit_paths[own_row, LimitKind.MAX_ORDER_QTY]
    assert rules.path(qty_path) == "accounts.OWN.symbols.BBB.max_order_qty"
    assert (tables.override_restricted_sides[own_row], tables.override_restricted_path[own_row]) == (0, -1)

    assert (tables.override_limits[plain_row] == LIMIT_UNSET).all()
    assert tables.override_restricted_sides[plain_row] == side_bit(Side.BUY) | side_bit(Side.SELL)
    assert rules.path(tables.override_restricted_path[plain_row]) == "restrictions[1]"


def test_strategies_inherit_the_firm_strategy_limit():
    rules = compile_text(LAYERED)
    tables, ids = rules.tables, rules.interner.strategy_ids
    assert tables.strategy_active[STRATEGY_NONE] == 1
    assert tables.strategy_rate_orders[STRATEGY_NONE] == LIMIT_UNSET
    assert tables.strategy_rate_path[STRATEGY_NONE] == -1
    inherits, own = ids["INHERITS"], ids["OWNRATE"]
    assert tables.strategy_rate_orders[inherits] == 40
    assert tables.strategy_rate_window_ns[inherits] == 2000 * NS_PER_MS
    assert rules.path(tables.strategy_rate_path[inherits]) == "firm.strategy_limits.order_rate_limit"
    assert (tables.strategy_rate_orders[own], tables.strategy_rate_window_ns[own]) == (7, 100 * NS_PER_MS)
    assert rules.path(tables.strategy_rate_path[own]) == "strategies.OWNRATE.order_rate_limit"


def test_require_strategy_deactivates_the_empty_strategy():
    rules = compile_text(BASE.replace('name = "T"', 'name = "T"\nrequire_strategy = true'))
    assert rules.firm.require_strategy is True
    assert rules.tables.strategy_active[STRATEGY_NONE] == 0


def test_firm_defaults_when_not_written():
    rules = compile_text(BASE)
    assert rules.firm.max_reference_age == Setting(
        DEFAULT_MAX_REFERENCE_AGE_MS * NS_PER_MS, "firm.max_reference_age_ms"
    )
    assert rules.firm.duplicate_content_window.value == DEFAULT_DUPLICATE_CONTENT_WINDOW_MS * NS_PER_MS
    assert rules.firm.self_match_prevention == Setting(1, "firm.self_match_prevention")
    assert rules.firm.require_strategy is False
    assert rules.tables.account_self_match[0] == 1
    assert rules.tables.account_rate_window_ns[0] == 0


@pytest.mark.parametrize(
    ("written", "stored"),
    [
        ("5", 50_000),
        ('"0.0001"', 1),
        ("2.5", 25_000),
        ('"12.3456"', 123_456),
        ("0", 0),
    ],
)
def test_price_collar_percent_becomes_ppm(written, stored):
    rules = compile_text(BASE + f"[firm.limits]\nprice_collar_pct = {written}\n")
    assert rules.firm.limits[LimitKind.PRICE_COLLAR_PPM].value == stored


def test_unrestricted_sides_default_to_all():
    rules = compile_text(BASE + '[[restrictions]]\nsymbol = "AAA"\nreason = "r"\n')
    assert rules.symbols["AAA"].restriction.sides_mask == ALL_SIDES_MASK


def test_quoted_names_give_unambiguous_paths():
    rules = compile_text(BASE + '[symbols."BRK.B"]\ntick_size = "0.01"\nlot_size = 1\n')
    assert rules.symbols["BRK.B"].tick_path == 'symbols."BRK.B".tick_size'


# -- errors --------------------------------------------------------------------------------------

#: (id, snippet appended to BASE, error class, key path, value or None, message fragment)
ERROR_CASES = [
    (
        "unknown-firm-limits",
        "[firm.limits]\nmax_order_qtty = 5",
        UnknownKeyError, "firm.limits.max_order_qtty", 5, "unknown key",
    ),
    (
        "unknown-strategy-limits",
        "[firm.strategy_limits]\ncredit_limit = 5",
        UnknownKeyError, "firm.strategy_limits.credit_limit", 5, "unknown key",
    ),
    (
        "unknown-symbol",
        '[symbols.BBB]\ntick_size = "0.01"\nlot_size = 1\nlots = 2',
        UnknownKeyError, "symbols.BBB.lots", 2, "unknown key",
    ),
    (
        "unknown-symbol-limits",
        "[symbols.AAA.limits]\ncredit_limit = 5",
        UnknownKeyError, "symbols.AAA.limits.credit_limit", 5, "unknown key",
    ),
    (
        "unknown-account",
        "[accounts.ACC2]\nlimit = 1",
        UnknownKeyError, "accounts.ACC2.limit", 1, "unknown key",
    ),
    (
        "unknown-account-limits",
        "[accounts.ACC1.limits]\nmax_position = 1",
        UnknownKeyError, "accounts.ACC1.limits.max_position", 1, "unknown key",
    ),
    (
        "unknown-override",
        "[accounts.ACC1.symbols.AAA]\ncredit_limit = 1",
        UnknownKeyError, "accounts.ACC1.symbols.AAA.credit_limit", 1, "unknown key",
    ),
    (
        "unknown-strategy",
        "[strategies.S1]\nrate = 1",
        UnknownKeyError, "strategies.S1.rate", 1, "unknown key",
    ),
    (
        "unknown-rate",
        "[firm.limits]\norder_rate_limit = { orders = 1, window_ms = 1, burst = 2 }",
        UnknownKeyError, "firm.limits.order_rate_limit.burst", 2, "unknown key",
    ),
    (
        "unknown-restriction",
        '[[restrictions]]\nsymbol = "AAA"\nreason = "r"\nuntil = "2025"',
        UnknownKeyError, "restrictions[0].until", "2025", "unknown key",
    ),
    (
        "missing-tick-size",
        "[symbols.BBB]\nlot_size = 1",
        MissingKeyError, "symbols.BBB.tick_size", None, "missing",
    ),
    (
        "missing-lot-size",
        '[symbols.BBB]\ntick_size = "0.01"',
        MissingKeyError, "symbols.BBB.lot_size", None, "missing",
    ),
    (
        "missing-rate-orders",
        "[firm.limits]\norder_rate_limit = { window_ms = 1 }",
        MissingKeyError, "firm.limits.order_rate_limit.orders", None, "missing",
    ),
    (
        "missing-restriction-reason",
        '[[restrictions]]\nsymbol = "AAA"',
        MissingKeyError, "restrictions[0].reason", None, "reason",
    ),
    (
        "missing-restriction-symbol",
        '[[restrictions]]\nreason = "r"',
        MissingKeyError, "restrictions[0].symbol", None, "symbol",
    ),
    (
        "negative-limit",
        "[firm.limits]\nmax_order_qty = -5",
        InvalidValueError, "firm.limits.max_order_qty", -5, "negative",
    ),
    (
        "negative-string",
        '[accounts.ACC1.limits]\ncredit_limit = "-0.5"',
        InvalidValueError, "accounts.ACC1.limits.credit_limit", "-0.5", "negative",
    ),
    (
        "price-10-decimals",
        '[symbols.BBB]\ntick_size = "0.0000000001"\nlot_size = 1',
        InvalidValueError, "symbols.BBB.tick_size", "0.0000000001", "9 decimal places",
    ),
    (
        "price-10-decimals-float",
        "[symbols.BBB]\ntick_size = 0.0000000001\nlot_size = 1",
        InvalidValueError, "symbols.BBB.tick_size", None, "9 decimal places",
    ),
    (
        "notional-7-decimals",
        "[firm.limits]\nmax_order_notional = 0.0000001",
        InvalidValueError, "firm.limits.max_order_notional", None, "6 decimal places",
    ),
    (
        "percent-5-decimals",
        '[symbols.AAA.limits]\nprice_collar_pct = "0.00001"',
        InvalidValueError, "symbols.AAA.limits.price_collar_pct", "0.00001", "4 decimal places",
    ),
    (
        "beyond-context-precision",
        "[firm.limits]\nmax_order_qty = 1.0000000000000000000000000000001",
        InvalidValueError, "firm.limits.max_order_qty", None, "9 decimal places",
    ),
    (
        "tiny-exponent",
        "[firm.limits]\nmax_order_qty = 1e-999999",
        InvalidValueError, "firm.limits.max_order_qty", None, "9 decimal places",
    ),
    (
        "huge-exponent",
        "[firm.limits]\nmax_order_qty = 1e999999",
        InvalidValueError, "firm.limits.max_order_qty", None, "too large",
    ),
    (
        "int64-overflow",
        "[firm.limits]\ncredit_limit = 9223372036854775807",
        InvalidValueError, "firm.limits.credit_limit", 9223372036854775807, "too large",
    ),
    (
        "reserved-unlimited-value",
        "[firm.limits]\nmax_order_qty = 9223372036.854775807",
        InvalidValueError, "firm.limits.max_order_qty", None, "unlimited",
    ),
    (
        "bool-as-number",
        "[firm.limits]\nmax_order_qty = true",
        InvalidValueError, "firm.limits.max_order_qty", True, "boolean",
    ),
    (
        "bool-as-tick",
        "[symbols.BBB]\ntick_size = false\nlot_size = 1",
        InvalidValueError, "symbols.BBB.tick_size", False, "boolean",
    ),
    (
        "string-not-a-number",
        '[firm.limits]\nmax_order_qty = "lots"',
        InvalidValueError, "firm.limits.max_order_qty", "lots", "expected",
    ),
    (
        "exponent-string",
        '[firm.limits]\nmax_order_qty = "1e3"',
        InvalidValueError, "firm.limits.max_order_qty", "1e3", "expected",
    ),
    (
        "unlimited-tick",
        '[symbols.BBB]\ntick_size = "unlimited"\nlot_size = 1',
        InvalidValueError, "symbols.BBB.tick_size", "unlimited", "expected",
    ),
    (
        "nan",
        "[firm.limits]\nmax_order_qty = nan",
        InvalidValueError, "firm.limits.max_order_qty", None, "finite",
    ),
    (
        "inf",
        "[firm.limits]\nmax_order_qty = inf",
        InvalidValueError, "firm.limits.max_order_qty", None, "finite",
    ),
    (
        "zero-tick",
        "[symbols.BBB]\ntick_size = 0\nlot_size = 1",
        InvalidValueError, "symbols.BBB.tick_size", 0, "greater than 0",
    ),
    (
        "zero-lot",
        '[symbols.BBB]\ntick_size = "0.01"\nlot_size = "0.0"',
        InvalidValueError, "symbols.BBB.lot_size", "0.0", "greater than 0",
    ),
    (
        "zero-multiplier",
        '[symbols.BBB]\ntick_size = "0.01"\nlot_size = 1\ncontract_multiplier = 0',
        InvalidValueError, "symbols.BBB.contract_multiplier", 0, "greater than 0",
    ),
    (
        "fractional-ticks",
        "[firm.limits]\nprice_collar_ticks = 2.5",
        InvalidValueError, "firm.limits.price_collar_ticks", None, "whole number",
    ),
    (
        "fractional-working",
        '[accounts.ACC1.limits]\nmax_working_orders = "1.5"',
        InvalidValueError, "accounts.ACC1.limits.max_working_orders", "1.5", "whole number",
    ),
    (
        "fractional-orders",
        "[firm.limits]\norder_rate_limit = { orders = 1.5, window_ms = 1000 }",
        InvalidValueError, "firm.limits.order_rate_limit.orders", None, "whole number",
    ),
    (
        "zero-orders",
        "[firm.limits]\norder_rate_limit = { orders = 0, window_ms = 1000 }",
        InvalidValueError, "firm.limits.order_rate_limit.orders", 0, "greater than 0",
    ),
    (
        "zero-window",
        "[strategies.S1]\norder_rate_limit = { orders = 1, window_ms = 0 }",
        InvalidValueError, "strategies.S1.order_rate_limit.window_ms", 0, "greater than 0",
    ),
    (
        "rate-overflow",
        "[firm.limits]\norder_rate_limit = { orders = 9223372036854, window_ms = 1000 }",
        InvalidValueError, "firm.limits.order_rate_limit", None, "int64",
    ),
    (
        "rate-not-a-table",
        "[firm.limits]\norder_rate_limit = 100",
        InvalidValueError, "firm.limits.order_rate_limit", 100, "expected a table",
    ),
    (
        "flag-not-bool",
        '[accounts.ACC2]\nself_match_prevention = "yes"',
        InvalidValueError, "accounts.ACC2.self_match_prevention", "yes", "true or false",
    ),
    (
        "limits-not-a-table",
        "[accounts.ACC2]\nlimits = 5",
        InvalidValueError, "accounts.ACC2.limits", 5, "expected a table",
    ),
    (
        "bad-side",
        '[[restrictions]]\nsymbol = "AAA"\nsides = ["SHORT"]\nreason = "r"',
        InvalidValueError, "restrictions[0].sides", "SHORT", "unknown side",
    ),
    (
        "lowercase-side",
        '[[restrictions]]\nsymbol = "AAA"\nsides = ["buy"]\nreason = "r"',
        InvalidValueError, "restrictions[0].sides", "buy", "unknown side",
    ),
    (
        "repeated-side",
        '[[restrictions]]\nsymbol = "AAA"\nsides = ["BUY", "BUY"]\nreason = "r"',
        InvalidValueError, "restrictions[0].sides", "BUY", "twice",
    ),
    (
        "empty-sides",
        '[[restrictions]]\nsymbol = "AAA"\nsides = []\nreason = "r"',
        InvalidValueError, "restrictions[0].sides", [], "non-empty",
    ),
    (
        "empty-reason",
        '[[restrictions]]\nsymbol = "AAA"\nreason = " "',
        InvalidValueError, "restrictions[0].reason", " ", "non-empty",
    ),
    (
        "restricted-undeclared-symbol",
        '[[restrictions]]\nsymbol = "ZZZ"\nreason = "r"',
        UndeclaredNameError, "restrictions[0].symbol", "ZZZ", "not declared",
    ),
    (
        "restricted-undeclared-account",
        '[[restrictions]]\nsymbol = "AAA"\naccount = "NOPE"\nreason = "r"',
        UndeclaredNameError, "restrictions[0].account", "NOPE", "not declared",
    ),
    (
        "override-undeclared-symbol",
        "[accounts.ACC1.symbols.ZZZ]\nmax_order_qty = 1",
        UndeclaredNameError, "accounts.ACC1.symbols.ZZZ", "ZZZ", "not declared",
    ),
    (
        "duplicate-firm-restriction",
        (
            '[[restrictions]]\nsymbol = "AAA"\nreason = "a"\n[[restrictions]]\nsymbol = "AAA"\n'
            'sides = ["BUY"]\nreason = "b"'
        ),
        DuplicateRestrictionError, "restrictions[1]", "AAA", "restrictions[0]",
    ),
    (
        "duplicate-account-restriction",
        (
            '[[restrictions]]\nsymbol = "AAA"\naccount = "ACC1"\nreason = "a"\n[[restrictions]]\n'
            'symbol = "AAA"\naccount = "ACC1"\nreason = "b"'
        ),
        DuplicateRestrictionError, "restrictions[1]", "AAA", "restrictions[0]",
    ),
    (
        "name-with-space",
        '[accounts."ACC 2"]',
        InvalidValueError, 'accounts."ACC 2"', "ACC 2", "whitespace",
    ),
    (
        "name-with-control",
        '[symbols."A\\tB"]\ntick_size = "0.01"\nlot_size = 1',
        InvalidValueError, 'symbols."A\\u0009B"', "A\tB", "control",
    ),
    (
        "name-with-wildcard",
        '[strategies."S*"]',
        InvalidValueError, 'strategies."S*"', "S*", "'*'",
    ),
    (
        "name-with-gt",
        '[accounts."A>B"]',
        InvalidValueError, 'accounts."A>B"', "A>B", "'>'",
    ),
    (
        "name-too-long",
        "[accounts." + "A" * 65 + "]",
        InvalidValueError,
        "accounts." + "A" * 65,
        "A" * 65,
        "64",
    ),
    (
        "empty-strategy-name",
        '[strategies.""]',
        InvalidValueError, 'strategies.""', "", "reserved",
    ),
    (
        "empty-account-name",
        '[accounts.""]',
        InvalidValueError, 'accounts.""', "", "1 to 64",
    ),
]

#: Cases that need a [firm] or a top-level layout of their own rather than BASE.
FULL_TEXT_CASES = [
    (
        "missing-firm",
        '[symbols.AAA]\ntick_size = "0.01"\nlot_size = 1',
        MissingKeyError, "firm", None, "required",
    ),
    (
        "missing-firm-name",
        "[firm]\nrequire_strategy = true",
        MissingKeyError, "firm.name", None, "required",
    ),
    (
        "empty-firm-name",
        '[firm]\nname = ""',
        InvalidValueError, "firm.name", "", "non-empty",
    ),
    (
        "unknown-firm-key",
        '[firm]\nname = "T"\nhalted = true',
        UnknownKeyError, "firm.halted", True, "unknown key",
    ),
    (
        "zero-reference-age",
        '[firm]\nname = "T"\nmax_reference_age_ms = 0',
        InvalidValueError, "firm.max_reference_age_ms", 0, "greater than 0",
    ),
    (
        "negative-dup-window",
        '[firm]\nname = "T"\nduplicate_content_window_ms = -1',
        InvalidValueError, "firm.duplicate_content_window_ms", -1, "negative",
    ),
    (
        "fractional-ms",
        (
            '[firm]\nname = "T"\n[symbols.AAA]\ntick_size = "0.01"\nlot_size = 1\n'
            "max_reference_age_ms = 1.5"
        ),
        InvalidValueError, "symbols.AAA.max_reference_age_ms", None, "whole number",
    ),
    (
        "symbols-array",
        '[firm]\nname = "T"\n[[symbols]]\ntick_size = "0.01"',
        InvalidValueError, "symbols", None, "expected a table",
    ),
    (
        "restrictions-table",
        '[firm]\nname = "T"\n[restrictions]\nsymbol = "AAA"',
        InvalidValueError, "restrictions", None, "array of tables",
    ),
]


@pytest.mark.parametrize(
    ("text", "error_class", "key_path", "value", "fragment"),
    [pytest.param(BASE + snippet, *rest, id=case_id) for case_id, snippet, *rest in ERROR_CASES]
    + [pytest.param(text, *rest, id=case_id) for case_id, text, *rest in FULL_TEXT_CASES],
)
def test_errors_name_file_key_path_and_value(text, error_class, key_path, value, fragment):
    with pytest.raises(error_class) as caught:
        compile_text(text)
    error = caught.value
    message = str(error)
    assert isinstance(error, RulesError) and isinstance(error, ValueError)
    assert "\n" not in message
    assert message.startswith(f"{SOURCE}: ")
    assert error.source == SOURCE
    assert error.key_path == key_path
    if key_path is not None:
        assert message.startswith(f"{SOURCE}: {key_path}: ")
    if value is not None:
        assert error.value == value
        assert message.endswith(f"(got {value!r})")
    assert fragment in error.message


def test_unknown_top_level_key_is_reported_first():
    with pytest.raises(UnknownKeyError, match=r"^test-rules.toml: bogus: unknown key"):
        compile_text("bogus = 1\n" + BASE)


def test_syntax_error_gives_line_and_column():
    with pytest.raises(RulesSyntaxError) as caught:
        compile_text(BASE + "x = = 1\n")
    error = caught.value
    assert (error.line, error.column) == (BASE.count("\n") + 1, 5)
    assert str(error) == f"{SOURCE}: line {error.line}, column 5: invalid TOML: Invalid value"


def test_deep_nesting_is_a_syntax_error_not_a_crash():
    with pytest.raises(RulesSyntaxError, match="nested too deeply"):
        compile_text("x = " + "[" * 5000 + "]" * 5000)


def test_decimal_values_are_quoted_as_written():
    with pytest.raises(InvalidValueError) as caught:
        compile_text(BASE + "[firm.limits]\nmax_order_notional = 1.1234567")
    assert str(caught.value).endswith("(got 1.1234567)")


def test_first_error_wins_in_file_order():
    text = BASE + "[accounts.ACC2.limits]\nmax_order_qty = -1\n[accounts.ACC3.limits]\nmax_order_qty = -2\n"
    with pytest.raises(InvalidValueError, match="accounts.ACC2.limits.max_order_qty"):
        compile_text(text)


def test_unreadable_file_names_the_file(tmp_path):
    missing = tmp_path / "nope.toml"
    with pytest.raises(RulesFileError) as caught:
        load_rules(missing)
    assert str(caught.value).startswith(f"{missing}: cannot read the rules file")
    assert "\n" not in str(caught.value)


def test_non_utf8_file_is_a_syntax_error(tmp_path):
    path = tmp_path / "latin1.toml"
    path.write_bytes(BASE.encode() + b'[symbols.CAF\xc9]\ntick_size = "0.01"\nlot_size = 1\n')
    with pytest.raises(RulesSyntaxError, match="not valid UTF-8") as caught:
        load_rules(path)
    assert caught.value.line == BASE.count("\n") + 1


def test_failed_compile_leaves_the_interner_untouched():
    interner = compile_text(BASE).interner
    before = (list(interner.account_names), list(interner.symbol_names), list(interner.strategy_names))
    with pytest.raises(UndeclaredNameError):
        compile_text(BASE + '[accounts.NEW]\n[[restrictions]]\nsymbol = "ZZZ"\nreason = "r"\n', interner)
    assert (interner.account_names, interner.symbol_names, interner.strategy_names) == before


# -- version -------------------------------------------------------------------------------------

REORDERED_LAYERED = """
# the same rules as LAYERED, tables and keys in another order, numbers spelled differently

[[restrictions]]
reason = "hard to borrow"
sides = ["SELL_SHORT"]
symbol = "AAA"

[[restrictions]]
account = "PLAIN"
sides = ["SELL", "BUY"]      # same mask, other order
symbol = "AAA"
reason = "insider"

[strategies.OWNRATE]
order_rate_limit = { window_ms = 100, orders = 7 }

[strategies.INHERITS]

[accounts.OWN.symbols.BBB]
price_collar_pct = 0.25
max_order_qty = "80"

[accounts.OWN.limits]
order_rate_limit = "unlimited"
credit_limit = 12.50
max_short_position = "unlimited"
max_order_qty = 500.0

[accounts.OWN]
duplicate_content_window_ms = 0
self_match_prevention = false

[accounts.PLAIN]

[symbols.BBB.limits]
price_collar_ticks = 8
max_order_qty = 300

[symbols.BBB]
max_reference_age_ms = 250
contract_multiplier = 2.5
lot_size = 0.5
tick_size = 0.05

[symbols.AAA]
lot_size = 1
tick_size = 0.010

[firm.strategy_limits]
order_rate_limit = { orders = 40, window_ms = 2000 }

[firm.limits]
order_rate_limit = { orders = 100, window_ms = 1000 }
max_working_orders = 50
credit_limit = 200_000
max_long_position = 3000
max_order_notional = 50000
max_order_qty = 1000

[firm]
duplicate_content_window_ms = 700
self_match_prevention = true
max_reference_age_ms = 3000
name = "LAYERS"
"""


def test_version_is_a_sha256_hex():
    assert re.fullmatch(r"[0-9a-f]{64}", compile_text(LAYERED).version)


def test_version_ignores_order_comments_spelling_and_source():
    assert compile_text(REORDERED_LAYERED).version == compile_text(LAYERED).version
    assert compile_rules(LAYERED, "other-name.toml").version == compile_text(LAYERED).version


def test_version_counts_defaults_as_values():
    explicit = BASE.replace(
        'name = "T"', 'name = "T"\nmax_reference_age_ms = 5000\nself_match_prevention = true'
    )
    assert compile_text(explicit).version == compile_text(BASE).version


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ('name = "LAYERS"', 'name = "LAYERS2"'),
        ("max_order_qty = 1000", "max_order_qty = 1001"),
        ("max_order_qty = 80", "max_order_qty = 81"),
        ("max_order_qty = 300", 'max_order_qty = "unlimited"'),
        ('credit_limit = "12.5"', 'credit_limit = "12.500001"'),
        ('price_collar_pct = "0.25"', 'price_collar_pct = "0.2501"'),
        ("{ orders = 7, window_ms = 100 }", "{ orders = 7, window_ms = 101 }"),
        ("{ orders = 40, window_ms = 2000 }", "{ orders = 41, window_ms = 2000 }"),
        ("duplicate_content_window_ms = 700", "duplicate_content_window_ms = 701"),
        ("self_match_prevention = false", "self_match_prevention = true"),
        ('lot_size = "0.5"', 'lot_size = "0.25"'),
        ('contract_multiplier = "2.5"', 'contract_multiplier = "2"'),
        ("max_reference_age_ms = 250", "max_reference_age_ms = 251"),
        ('reason = "insider"', 'reason = "insider list"'),
        ('sides = ["BUY", "SELL"]', 'sides = ["BUY"]'),
        ('account = "PLAIN"\n', 'account = "OWN"\n'),
        ("[strategies.INHERITS]", "[strategies.INHERITS2]"),
        ("[accounts.PLAIN]\n", "[accounts.PLAIN]\n[accounts.PLAIN.limits]\nmax_order_qty = 1000\n"),
        ("max_reference_age_ms = 3000", "max_reference_age_ms = 3000\nrequire_strategy = true"),
    ],
)
def test_version_changes_with_any_value(old, new):
    assert LAYERED.count(old) == 1, old
    assert compile_text(LAYERED.replace(old, new)).version != compile_text(LAYERED).version


def test_inheriting_a_value_is_not_the_same_rules_as_writing_it():
    """A value written at account scope carries another path (decisions name another rule)."""
    inherited = compile_text(BASE + "[firm.limits]\nmax_order_qty = 5\n")
    written = compile_text(
        BASE + "[firm.limits]\nmax_order_qty = 5\n[accounts.ACC1.limits]\nmax_order_qty = 5\n"
    )
    assert inherited.version != written.version


# -- ids across reloads --------------------------------------------------------------------------


def test_names_are_interned_in_sorted_order():
    rules = compile_text(BASE + "[accounts.ZED]\n[accounts.ALPHA]\n[strategies.Y]\n[strategies.X]\n")
    assert rules.interner.account_names == ["ACC1", "ALPHA", "ZED"]
    assert rules.interner.strategy_names == ["", "X", "Y"]


def test_reload_keeps_ids_and_appends_new_names():
    first = compile_text(BASE + "[accounts.MID]\n[strategies.S1]\n")
    interner = first.interner
    ids_before = dict(interner.account_ids)
    second = compile_text(
        BASE
        + "[accounts.MID]\n[accounts.AAA0]\n[accounts.ZZZ]\n"
        + '[symbols.BBB]\ntick_size = "1"\nlot_size = 1\n[strategies.S1]\n',
        interner,
    )
    assert second.interner is interner
    assert {name: interner.account_ids[name] for name in ids_before} == ids_before
    # New names are appended after the known ones, sorted among themselves.
    assert interner.account_names == ["ACC1", "MID", "AAA0", "ZZZ"]
    assert interner.symbol_names == ["AAA", "BBB"]
    assert len(second.tables.account_active) == 4
    assert second.tables.account_active.tolist() == [1, 1, 1, 1]


def test_removed_names_become_inactive_rows():
    first = compile_text(LAYERED)
    interner = first.interner
    second = compile_text(BASE, interner)  # drops PLAIN, OWN, BBB and both strategies
    tables = second.tables
    own, bbb = interner.account_ids["OWN"], interner.symbol_ids["BBB"]
    ownrate = interner.strategy_ids["OWNRATE"]
    assert len(tables.account_active) == len(interner.account_names) == 3
    assert tables.account_active[own] == 0
    assert (tables.account_limits[own] == LIMIT_UNSET).all() and (tables.account_limit_paths[own] == -1).all()
    assert (tables.account_credit_limit[own], tables.account_credit_path[own]) == (LIMIT_UNSET, -1)
    assert (tables.account_rate_orders[own], tables.account_rate_path[own]) == (LIMIT_UNSET, -1)
    assert tables.symbol_active[bbb] == 0
    assert (tables.symbol_limits[bbb] == LIMIT_UNSET).all() and tables.symbol_tick_path[bbb] == -1
    assert tables.symbol_max_ref_age_path[bbb] == -1 and tables.symbol_restricted_path[bbb] == -1
    assert tables.strategy_active[ownrate] == 0
    assert (tables.strategy_rate_orders[ownrate], tables.strategy_rate_path[ownrate]) == (LIMIT_UNSET, -1)
    assert tables.account_active[interner.account_ids["ACC1"]] == 1
    assert "OWN" not in second.accounts and len(tables.override_keys) == 0


# -- overrides: the run-time overlay -------------------------------------------------------------


def with_overrides(*overrides: LimitOverride, text: str = LAYERED, interner: Interner | None = None):
    return compile_rules(text, SOURCE, interner, overrides)


def test_no_overrides_is_the_file_itself():
    assert with_overrides().version == compile_text(LAYERED).version
    assert load_rules(EXAMPLE, overrides=()).version == load_rules(EXAMPLE).version


def test_account_override_takes_precedence_and_names_itself():
    raised = LimitOverride(
        "ovr-1",
        {
            "credit_limit": "500000",
            "max_order_qty": 2000,
            "order_rate_limit": {"orders": 5, "window_ms": 250},
        },
        account="PLAIN",
    )
    rules = with_overrides(raised)
    tables, row = rules.tables, rules.interner.account_ids["PLAIN"]
    assert tables.account_credit_limit[row] == 500_000 * NOTIONAL_SCALE
    assert rules.path(tables.account_credit_path[row]) == "overrides.ovr-1.credit_limit"
    assert tables.account_limits[row, LimitKind.MAX_ORDER_QTY] == 2000 * QTY_SCALE
    qty_path = rules.path(tables.account_limit_paths[row, LimitKind.MAX_ORDER_QTY])
    assert qty_path == "overrides.ovr-1.max_order_qty"
    assert (tables.account_rate_orders[row], tables.account_rate_window_ns[row]) == (5, 250 * NS_PER_MS)
    assert rules.path(tables.account_rate_path[row]) == "overrides.ovr-1.order_rate_limit"
    # The model carries the override too (the reference evaluator reads the model).
    credit = rules.accounts["PLAIN"].credit_limit
    assert credit == Setting(500_000 * NOTIONAL_SCALE, "overrides.ovr-1.credit_limit")
    # What the override does not set still comes from the file.
    assert rules.path(tables.account_max_working_path[row]) == "firm.limits.max_working_orders"
    # Other accounts are untouched, and the version shows the override in force.
    own = rules.interner.account_ids["OWN"]
    assert rules.path(tables.account_credit_path[own]) == "accounts.OWN.limits.credit_limit"
    assert rules.version != compile_text(LAYERED).version
    assert rules.source == SOURCE


def test_account_override_does_not_beat_the_files_account_symbol_setting():
    """Precedence is per scope: accounts.A.symbols.S stays more specific than an account override."""
    rules = with_overrides(LimitOverride("wide", {"max_order_qty": 900}, account="OWN"))
    own, bbb = rules.interner.account_ids["OWN"], rules.interner.symbol_ids["BBB"]
    key = own << 32 | bbb
    row = int(np.searchsorted(rules.tables.override_keys, key))
    assert rules.tables.override_keys[row] == key
    assert rules.tables.override_limits[row, LimitKind.MAX_ORDER_QTY] == 80 * QTY_SCALE
    assert rules.tables.account_limits[own, LimitKind.MAX_ORDER_QTY] == 900 * QTY_SCALE


def test_account_symbol_override_adds_an_override_row():
    rules = with_overrides(
        LimitOverride("sym", {"max_long_position": "unlimited"}, account="PLAIN", symbol="BBB")
    )
    plain, bbb = rules.interner.account_ids["PLAIN"], rules.interner.symbol_ids["BBB"]
    row = rules.tables.override_keys.tolist().index(plain << 32 | bbb)
    assert rules.tables.override_limits[row, LimitKind.MAX_LONG_POSITION] == LIMIT_UNLIMITED
    assert rules.path(rules.tables.override_limit_paths[row, LimitKind.MAX_LONG_POSITION]) == (
        "overrides.sym.max_long_position"
    )
    assert rules.accounts["PLAIN"].symbol_limits["BBB"][LimitKind.MAX_LONG_POSITION].path == (
        "overrides.sym.max_long_position"
    )


def test_later_override_wins_at_the_same_scope():
    rules = with_overrides(
        LimitOverride("first", {"credit_limit": 1}, account="PLAIN"),
        LimitOverride("second", {"credit_limit": 2}, account="PLAIN"),
    )
    row = rules.interner.account_ids["PLAIN"]
    assert rules.tables.account_credit_limit[row] == 2 * NOTIONAL_SCALE
    assert rules.path(rules.tables.account_credit_path[row]) == "overrides.second.credit_limit"


@pytest.mark.parametrize(
    ("override", "scope_row", "expected_orders", "window_ms"),
    [
        # PLAIN inherits the firm's 100 / 1000 ms.
        (LimitOverride("t", throttle_factor="0.25", account="PLAIN"), ("account", "PLAIN"), 25, 1000),
        # INHERITS takes firm.strategy_limits 40 / 2000 ms; OWNRATE its own 7 / 100 ms.
        (
            LimitOverride("t", throttle_factor=Decimal("0.5"), strategy="INHERITS"),
            ("strategy", "INHERITS"),
            20,
            2000,
        ),
        (LimitOverride("t", throttle_factor="0.1", strategy="OWNRATE"), ("strategy", "OWNRATE"), 1, 100),
        (LimitOverride("t", throttle_factor=1, strategy="OWNRATE"), ("strategy", "OWNRATE"), 7, 100),
    ],
)
def test_throttle_scales_the_rate_in_force(override, scope_row, expected_orders, window_ms):
    rules = with_overrides(override)
    scope, name = scope_row
    tables = rules.tables
    ids = rules.interner.account_ids if scope == "account" else rules.interner.strategy_ids
    row = ids[name]
    orders = getattr(tables, f"{scope}_rate_orders")[row]
    window_ns = getattr(tables, f"{scope}_rate_window_ns")[row]
    path_id = getattr(tables, f"{scope}_rate_path")[row]
    assert (orders, window_ns) == (expected_orders, window_ms * NS_PER_MS)
    assert rules.path(path_id) == "overrides.t.order_rate_limit"


def test_override_limits_accept_every_spelling_the_file_accepts():
    spellings = [5, Decimal("5"), "5", "5.0"]
    overrides = [LimitOverride("o", {"credit_limit": value}, account="PLAIN") for value in spellings]
    assert len({with_overrides(override).version for override in overrides}) == 1


OVERRIDE_ERROR_CASES = [
    # (id, override, error class, key path, value, message fragment)
    ("both-scopes", LimitOverride("o", {"credit_limit": 1}, account="PLAIN", strategy="INHERITS"),
     InvalidValueError, "overrides.o.strategy", "INHERITS", "not both"),
    ("no-scope", LimitOverride("o", {"credit_limit": 1}),
     MissingKeyError, "overrides.o.account", None, "names an account"),
    ("undeclared-account", LimitOverride("o", {"credit_limit": 1}, account="NOPE"),
     UndeclaredNameError, "overrides.o.account", "NOPE", "not declared"),
    ("undeclared-symbol", LimitOverride("o", {"max_order_qty": 1}, account="PLAIN", symbol="ZZZ"),
     UndeclaredNameError, "overrides.o.symbol", "ZZZ", "not declared"),
    ("undeclared-strategy", LimitOverride("o", throttle_factor="0.5", strategy="NOPE"),
     UndeclaredNameError, "overrides.o.strategy", "NOPE", "not declared"),
    ("strategy-symbol", LimitOverride("o", throttle_factor="0.5", strategy="INHERITS", symbol="AAA"),
     InvalidValueError, "overrides.o.symbol", "AAA", "names its account"),
    ("unknown-key", LimitOverride("o", {"credit_limt": 1}, account="PLAIN"),
     UnknownKeyError, "overrides.o.credit_limt", 1, "unknown key"),
    ("account-key-on-symbol", LimitOverride("o", {"credit_limit": 1}, account="PLAIN", symbol="AAA"),
     UnknownKeyError, "overrides.o.credit_limit", 1, "unknown key"),
    ("strategy-only-rate", LimitOverride("o", {"max_order_qty": 1}, strategy="INHERITS"),
     UnknownKeyError, "overrides.o.max_order_qty", 1, "unknown key"),
    ("negative", LimitOverride("o", {"credit_limit": -1}, account="PLAIN"),
     InvalidValueError, "overrides.o.credit_limit", -1, "negative"),
    ("inexact", LimitOverride("o", {"credit_limit": "0.0000001"}, account="PLAIN"),
     InvalidValueError, "overrides.o.credit_limit", "0.0000001", "decimal places"),
    ("float-string", LimitOverride("o", {"max_order_qty": "1e3"}, account="PLAIN"),
     InvalidValueError, "overrides.o.max_order_qty", "1e3", "expected a number"),
    ("bad-rate", LimitOverride("o", {"order_rate_limit": {"orders": 0, "window_ms": 1}}, account="PLAIN"),
     InvalidValueError, "overrides.o.order_rate_limit.orders", 0, "greater than 0"),
    ("limits-not-a-table", LimitOverride("o", ["credit_limit"], account="PLAIN"),
     InvalidValueError, "overrides.o", ["credit_limit"], "expected a table"),
    ("empty", LimitOverride("o", {}, account="PLAIN"),
     InvalidValueError, "overrides.o", {}, "at least one limit"),
    ("bad-id", LimitOverride("o p", {"credit_limit": 1}, account="PLAIN"),
     InvalidValueError, 'overrides."o p"', "o p", "whitespace"),
    ("factor-zero", LimitOverride("o", throttle_factor="0", account="PLAIN"),
     InvalidValueError, "overrides.o.throttle_factor", "0", "greater than 0"),
    ("factor-above-one", LimitOverride("o", throttle_factor="1.5", account="PLAIN"),
     InvalidValueError, "overrides.o.throttle_factor", "1.5", "at most 1"),
    ("factor-too-fine", LimitOverride("o", throttle_factor="0.0000001", account="PLAIN"),
     InvalidValueError, "overrides.o.throttle_factor", "0.0000001", "decimal places"),
    ("factor-and-rate",
     LimitOverride("o", {"order_rate_limit": "unlimited"}, throttle_factor="0.5", account="PLAIN"),
     InvalidValueError, "overrides.o.throttle_factor", "0.5", "not both"),
    ("factor-on-symbol", LimitOverride("o", throttle_factor="0.5", account="PLAIN", symbol="AAA"),
     InvalidValueError, "overrides.o.throttle_factor", "0.5", "names no symbol"),
    ("factor-of-unlimited", LimitOverride("o", throttle_factor="0.5", account="OWN"),
     InvalidValueError, "overrides.o.throttle_factor", "0.5", "unlimited"),
]


@pytest.mark.parametrize(
    ("override", "error_class", "key_path", "value", "fragment"),
    [pytest.param(override, *rest, id=case_id) for case_id, override, *rest in OVERRIDE_ERROR_CASES],
)
def test_override_errors_name_the_override_key_path_and_value(
    override, error_class, key_path, value, fragment
):
    with pytest.raises(error_class) as caught:
        with_overrides(override)
    error = caught.value
    assert error.source == f"override {override.override_id}"
    assert str(error).startswith(f"override {override.override_id}: {key_path}: ")
    assert "\n" not in str(error)
    assert error.key_path == key_path
    if value is not None:
        assert error.value == value
    assert fragment in error.message


@pytest.mark.parametrize(
    ("override", "error_class", "key_path"),
    [
        pytest.param(override, error_class, key_path, id=case_id)
        for case_id, override, error_class, key_path, *_ in OVERRIDE_ERROR_CASES
        if error_class is not UndeclaredNameError and case_id != "factor-of-unlimited"
    ],
)
def test_check_override_finds_every_error_that_needs_no_rules_file(override, error_class, key_path):
    with pytest.raises(error_class) as caught:
        check_override(override)
    assert (caught.value.source, caught.value.key_path) == (override.source, key_path)


def test_check_override_accepts_undeclared_names_and_valid_values():
    check_override(
        LimitOverride("o", {"credit_limit": "2.5", "order_rate_limit": "unlimited"}, account="ANY")
    )
    check_override(LimitOverride("t", throttle_factor="0.5", strategy="ANY"))


def test_throttle_of_a_missing_rate_is_an_error():
    with pytest.raises(InvalidValueError, match="nothing to scale"):
        with_overrides(LimitOverride("o", throttle_factor="0.5", account="ACC1"), text=BASE)


def test_duplicate_override_id_is_an_error():
    with pytest.raises(InvalidValueError, match="earlier override") as caught:
        with_overrides(
            LimitOverride("same", {"credit_limit": 1}, account="PLAIN"),
            LimitOverride("same", {"credit_limit": 2}, account="OWN"),
        )
    assert caught.value.source == "override same"


def test_file_errors_come_before_override_errors():
    with pytest.raises(UnknownKeyError) as caught:
        with_overrides(LimitOverride("o", {"nope": 1}, account="ACC1"), text=BASE + "typo = 1\n")
    assert caught.value.source == SOURCE


def test_failed_override_leaves_the_interner_untouched():
    interner = compile_text(BASE).interner
    before = list(interner.account_names)
    with pytest.raises(UndeclaredNameError):
        with_overrides(
            LimitOverride("o", {"credit_limit": 1}, account="NEW1"),
            text=BASE + "[accounts.NEW2]\n",
            interner=interner,
        )
    assert interner.account_names == before


def test_override_raises_a_limit_for_both_implementations(kernel_class):
    """The overlay end to end: an order over the file's credit limit is rejected naming the
    file's rule, accepted under a raised override, and rejected naming the override once the
    override is lowered; the kernel and the reference evaluator agree."""
    text = BASE + "[firm.limits]\n" + "\n".join(
        (
            "max_order_qty = 1000",
            "max_order_notional = 1000000",
            "max_long_position = 1000",
            "max_short_position = 0",
            "price_collar_pct = 50",
            "credit_limit = 5000",
            "max_working_orders = 10",
            'order_rate_limit = "unlimited"',
        )
    )
    base = compile_text(text)
    engine = Engine(base, kernel_class=kernel_class)
    engine.set_reference_price("AAA", px("100"), T0)

    def order(cid: str):
        return engine.check("ACC1", "AAA", "", Side.BUY, OrderType.LIMIT, qty(60), px("100"), cid, T0)

    def credit_rule(result) -> str:
        failures = {failure.code: failure for failure in engine.failures(result)}
        return failures[Check.CREDIT_LIMIT_EXCEEDED].rule_path

    assert credit_rule(order("c1")) == "firm.limits.credit_limit"

    raised = LimitOverride("up", {"credit_limit": 10_000}, account="ACC1")
    engine.reload(compile_rules(text, SOURCE, engine.interner, [raised]))
    assert order("c2").accepted

    lowered = LimitOverride("down", {"credit_limit": 100}, account="ACC1")
    engine.reload(compile_rules(text, SOURCE, engine.interner, [lowered]))
    assert credit_rule(order("c3")) == "overrides.down.credit_limit"

    engine.reload(base)  # the override expired: the file's limit is back
    assert credit_rule(order("c4")) == "firm.limits.credit_limit"
