"""Every check at its boundary: just inside accepts, just outside rejects, both sides.

Each test runs twice, against the compiled kernel and the reference evaluator (the
``kernel_class`` fixture), and asserts the reason code, the limit, the observed value and
the rule path a risk engineer would read in the decision.
"""

from __future__ import annotations

import pytest

from fastpath.codes import (
    NOTIONAL_SCALE,
    Check,
    ExecStatus,
    MissingLimit,
    OrderType,
    Scope,
    Side,
    TradingState,
)
from .harness import Harness, px, qty

RULES = """
[firm]
name = "TEST"
max_reference_age_ms = 1000
duplicate_content_window_ms = 500

[firm.limits]
max_order_qty = 1000
max_order_notional = 50000
max_long_position = 3000
max_short_position = 2000
price_collar_pct = 10
credit_limit = 200000
max_working_orders = 50
order_rate_limit = { orders = 1000, window_ms = 1000 }

[firm.strategy_limits]
order_rate_limit = { orders = 1000, window_ms = 1000 }

[symbols.AAA]
tick_size = "0.01"
lot_size = 1

[symbols.FUT]
tick_size = "0.25"
lot_size = 1
contract_multiplier = 50
max_reference_age_ms = 200

[symbols.FUT.limits]
max_order_qty = 10
price_collar_ticks = 8

[symbols.RST]
tick_size = "0.01"
lot_size = 100

[accounts.ACC1]

[accounts.ACC2]
self_match_prevention = false
duplicate_content_window_ms = 0

[accounts.ACC2.limits]
max_order_qty = 500
credit_limit = 20000
max_working_orders = 2

[accounts.ACC2.symbols.AAA]
max_order_qty = 800

[accounts.NOLIM]

[accounts.NOLIM.limits]
max_order_qty = "unlimited"

[strategies.S1]
order_rate_limit = { orders = 3, window_ms = 1000 }

[strategies.S2]

[[restrictions]]
symbol = "RST"
sides = ["SELL_SHORT"]
reason = "hard to borrow"

[[restrictions]]
symbol = "AAA"
account = "ACC2"
sides = ["BUY"]
reason = "research blackout"
"""

PRICES = {"AAA": "100", "FUT": "4000", "RST": "10"}


@pytest.fixture
def h(kernel_class) -> Harness:
    return Harness(RULES, kernel_class, prices=PRICES)


def test_plain_order_is_accepted(h):
    result = h.order()
    assert result.accepted and result.failed == 0 and result.handle >= 0


# -- stage A: validity and identity -----------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "code"),
    [
        ({"side": 0}, Check.INVALID_SIDE),
        ({"side": 7}, Check.INVALID_SIDE),
        ({"order_type": 0}, Check.INVALID_ORDER_TYPE),
        ({"quantity": "0"}, Check.INVALID_QUANTITY),
        ({"quantity": "-1"}, Check.INVALID_QUANTITY),
        ({"price": "0"}, Check.INVALID_PRICE),
        ({"price": "-0.01"}, Check.INVALID_PRICE),
        ({"account": "NOPE"}, Check.UNKNOWN_ACCOUNT),
        ({"symbol": "NOPE"}, Check.UNKNOWN_SYMBOL),
        ({"strategy": "NOPE"}, Check.UNKNOWN_STRATEGY),
    ],
)
def test_stage_a_failure_stops_evaluation(h, overrides, code):
    # a quantity far above every limit would fail stage B too; stage A must mask it
    result = h.order(**({"quantity": "999999"} | overrides))
    assert not result.accepted
    assert h.failed(result) == {code}
    assert result.handle == -1


def test_all_stage_a_failures_are_reported_together(h):
    result = h.order(account="X", symbol="Y", strategy="Z", quantity="0", price="0")
    assert h.failed(result) == {
        Check.UNKNOWN_ACCOUNT,
        Check.UNKNOWN_SYMBOL,
        Check.UNKNOWN_STRATEGY,
        Check.INVALID_QUANTITY,
        Check.INVALID_PRICE,
    }


def test_market_order_needs_no_price(h):
    assert h.order(order_type=OrderType.MARKET).accepted


# -- tick, lot, reference price ---------------------------------------------------------------


def test_tick_size(h):
    assert h.order(price="100.01").accepted
    result = h.order(price="100.005")
    assert h.failed(result) == {Check.PRICE_OFF_TICK}
    failure = h.failure(result, Check.PRICE_OFF_TICK)
    assert (failure.limit, failure.observed, failure.rule_path) == (px("0.01"), px("100.005"), "symbols.AAA.tick_size")


def test_lot_size(h):
    assert h.order(symbol="RST", quantity="200", price="10").accepted
    result = h.order(symbol="RST", quantity="150", price="10")
    assert h.failed(result) == {Check.QUANTITY_OFF_LOT}
    assert h.failure(result, Check.QUANTITY_OFF_LOT).rule_path == "symbols.RST.lot_size"


def test_reference_price_missing_rejects_limit_and_market(kernel_class):
    h = Harness(RULES, kernel_class, prices={})
    for order_type in (OrderType.LIMIT, OrderType.MARKET):
        result = h.order(order_type=order_type)
        assert Check.REFERENCE_PRICE_MISSING in h.failed(result)


def test_reference_price_staleness_boundary(h):
    h.advance_ms(1000)  # age == max_reference_age_ms: still fresh
    assert h.order().accepted
    h.now += 1
    result = h.order(price="100.01")
    assert h.failed(result) == {Check.REFERENCE_PRICE_STALE}
    failure = h.failure(result, Check.REFERENCE_PRICE_STALE)
    assert (failure.limit, failure.observed) == (1000 * 1_000_000, 1000 * 1_000_000 + 1)
    assert failure.rule_path == "firm.max_reference_age_ms"


def test_symbol_staleness_overrides_firm(h):
    h.advance_ms(201)
    result = h.order(symbol="FUT", price="4000")
    assert h.failure(result, Check.REFERENCE_PRICE_STALE).rule_path == "symbols.FUT.max_reference_age_ms"


# -- missing limits: fail closed ----------------------------------------------------------------


def test_missing_limits_reject_and_name_what_is_missing(kernel_class):
    rules = """
[firm]
name = "T"
[firm.limits]
max_order_qty = 10
[symbols.AAA]
tick_size = "0.01"
lot_size = 1
[accounts.ACC1]
[strategies.S1]
"""
    h = Harness(rules, kernel_class, prices={"AAA": "100"})
    result = h.order(strategy="S1")
    assert h.failed(result) == {Check.MISSING_LIMIT}
    missing = MissingLimit(h.failure(result, Check.MISSING_LIMIT).observed)
    assert missing == (
        MissingLimit.MAX_ORDER_NOTIONAL
        | MissingLimit.MAX_LONG_POSITION
        | MissingLimit.MAX_SHORT_POSITION
        | MissingLimit.PRICE_COLLAR
        | MissingLimit.CREDIT_LIMIT
        | MissingLimit.MAX_WORKING_ORDERS
        | MissingLimit.ACCOUNT_ORDER_RATE
        | MissingLimit.STRATEGY_ORDER_RATE
    )
    assert "missing=max_order_notional" in h.failure(result, Check.MISSING_LIMIT).detail


def test_explicit_unlimited_is_not_missing(h):
    result = h.order(account="NOLIM", quantity="999999", price="100")
    assert Check.MAX_ORDER_QTY_EXCEEDED not in h.failed(result)
    assert Check.MISSING_LIMIT not in h.failed(result)


# -- order size -------------------------------------------------------------------------------


def test_max_order_qty_account_chain_and_symbol_cap(h):
    assert h.order(symbol="RST", quantity="500", price="10").accepted  # firm 1000
    result = h.order(account="ACC2", symbol="RST", quantity="600", price="10")  # account 500
    failure = h.failure(result, Check.MAX_ORDER_QTY_EXCEEDED)
    assert (failure.limit, failure.observed, failure.rule_path) == (
        qty(500),
        qty(600),
        "accounts.ACC2.limits.max_order_qty",
    )
    # account x symbol override (800) beats the account's 500
    result = h.order(account="ACC2", side=Side.SELL, quantity="801", price="10")
    assert h.failure(result, Check.MAX_ORDER_QTY_EXCEEDED).rule_path == "accounts.ACC2.symbols.AAA.max_order_qty"
    # the symbol cap (10) is smaller than the firm's 1000
    assert Check.MAX_ORDER_QTY_EXCEEDED not in h.failed(h.order(symbol="FUT", quantity="10", price="4000"))
    result = h.order(symbol="FUT", quantity="11", price="4000")
    failure = h.failure(result, Check.MAX_ORDER_QTY_EXCEEDED)
    assert (failure.limit, failure.rule_path) == (qty(10), "symbols.FUT.limits.max_order_qty")


def test_max_order_qty_boundary(h):
    assert h.order(quantity="100", price="100").accepted
    assert Check.MAX_ORDER_QTY_EXCEEDED not in h.failed(h.order(quantity="1000", price="1"))
    assert Check.MAX_ORDER_QTY_EXCEEDED in h.failed(h.order(quantity="1001", price="1"))


def test_max_order_notional_boundary_with_multiplier(h):
    # AAA: 500 x 100 = 50 000 == limit
    assert h.order(quantity="500", price="100").accepted
    result = h.order(quantity="500", price="100.01")
    failure = h.failure(result, Check.MAX_ORDER_NOTIONAL_EXCEEDED)
    assert (failure.limit, failure.observed) == (50_000 * NOTIONAL_SCALE, 50_005 * NOTIONAL_SCALE)
    assert failure.rule_path == "firm.limits.max_order_notional"
    # FUT: 1 contract x 4000 x 50 = 200 000 > 50 000
    result = h.order(symbol="FUT", quantity="1", price="4000")
    assert h.failure(result, Check.MAX_ORDER_NOTIONAL_EXCEEDED).observed == 200_000 * NOTIONAL_SCALE


def test_market_order_notional_uses_reference_price(h):
    result = h.order(order_type=OrderType.MARKET, quantity="501")
    assert h.failure(result, Check.MAX_ORDER_NOTIONAL_EXCEEDED).observed == 50_100 * NOTIONAL_SCALE


# -- price collar ------------------------------------------------------------------------------


@pytest.mark.parametrize(("inside", "outside"), [("110", "110.01"), ("90", "89.99")])
def test_percentage_collar_both_sides(h, inside, outside):
    assert h.order(side=Side.BUY, price=inside).accepted
    result = h.order(side=Side.SELL, price=outside)
    failure = h.failure(result, Check.PRICE_COLLAR_BREACHED)
    assert failure.limit == px(inside) and failure.observed == px(outside)
    assert failure.rule_path == "firm.limits.price_collar_pct"


def test_tick_collar_is_tighter_than_percentage(h):
    # FUT ref 4000, 8 ticks of 0.25 = 2.00 (10 % would be 400)
    h.engine.set_reference_price("FUT", px("4000"), h.now)
    small = dict(symbol="FUT", quantity="1")
    assert Check.PRICE_COLLAR_BREACHED not in h.failed(h.order(**small, price="4002"))
    result = h.order(**small, price="3997.75")
    failure = h.failure(result, Check.PRICE_COLLAR_BREACHED)
    assert (failure.limit, failure.rule_path) == (px("3998"), "symbols.FUT.limits.price_collar_ticks")


# -- restricted list ---------------------------------------------------------------------------


def test_no_short_sale_restriction_allows_other_sides(h):
    assert h.order(symbol="RST", side=Side.BUY, quantity="100", price="10").accepted
    assert h.order(symbol="RST", side=Side.SELL, quantity="100", price="10.01").accepted
    result = h.order(symbol="RST", side=Side.SELL_SHORT, quantity="100", price="10.02")
    assert h.failed(result) == {Check.SYMBOL_RESTRICTED}
    assert h.failure(result, Check.SYMBOL_RESTRICTED).rule_path == "restrictions[0]"


def test_account_restriction_only_for_that_account(h):
    assert h.order(account="ACC1", side=Side.BUY, quantity="1").accepted
    result = h.order(account="ACC2", side=Side.BUY, quantity="1")
    failure = h.failure(result, Check.SYMBOL_RESTRICTED)
    assert failure.rule_path == "restrictions[1]" and failure.observed == Side.BUY
    assert h.order(account="ACC2", side=Side.SELL, quantity="1").accepted


# -- credit ------------------------------------------------------------------------------------


def test_credit_counts_every_accepted_order_and_falls_when_orders_end(h):
    # ACC2 credit 20 000; notional limit 50 000; qty limit 800 on AAA
    first = h.order(account="ACC2", side=Side.SELL, quantity="150", price="100")  # 15 000
    assert first.accepted
    inside = h.order(account="ACC2", side=Side.SELL, quantity="50", price="100")  # 20 000 total
    assert inside.accepted
    result = h.order(account="ACC2", symbol="RST", side=Side.SELL, quantity="100", price="10")
    failure = h.failure(result, Check.CREDIT_LIMIT_EXCEEDED)
    assert (failure.limit, failure.observed) == (20_000 * NOTIONAL_SCALE, 21_000 * NOTIONAL_SCALE)
    assert failure.rule_path == "accounts.ACC2.limits.credit_limit"
    assert h.engine.release(first.handle) == ExecStatus.OK
    assert h.order(account="ACC2", symbol="RST", side=Side.SELL, quantity="100", price="10").accepted


def test_fills_move_reservation_to_filled_exposure(h):
    kernel = h.engine.kernel
    acc = h.rules.interner.account_ids["ACC1"]
    result = h.order(quantity="100", price="100")
    assert kernel.exposure(acc) == (10_000 * NOTIONAL_SCALE, 0)
    assert h.engine.fill(result.handle, qty(40), px("99.5")) == ExecStatus.OK
    assert kernel.exposure(acc) == (6_000 * NOTIONAL_SCALE, 3_980 * NOTIONAL_SCALE)
    assert h.engine.fill(result.handle, qty(60), px("100")) == ExecStatus.OK
    assert kernel.exposure(acc) == (0, 9_980 * NOTIONAL_SCALE)
    assert h.engine.fill(result.handle, qty(1), px("100")) == ExecStatus.UNKNOWN_ORDER
    kernel.reset_filled_exposure(acc)
    assert kernel.exposure(acc) == (0, 0)


def test_overfill_is_applied_and_flagged(h):
    kernel = h.engine.kernel
    acc, sym = h.rules.interner.account_ids["ACC1"], h.rules.interner.symbol_ids["AAA"]
    result = h.order(quantity="10", price="100")
    assert h.engine.fill(result.handle, qty(12), px("100")) == ExecStatus.OVERFILL
    assert kernel.position(acc, sym) == (qty(12), 0, 0)
    assert kernel.working_orders(acc) == 0


def test_invalid_fills_change_nothing(h):
    result = h.order(quantity="10", price="100")
    assert h.engine.fill(result.handle, 0, px("100")) == ExecStatus.INVALID_QUANTITY
    assert h.engine.fill(result.handle, qty(1), 0) == ExecStatus.INVALID_PRICE
    assert h.engine.release(result.handle) == ExecStatus.OK
    assert h.engine.release(result.handle) == ExecStatus.UNKNOWN_ORDER


# -- positions ---------------------------------------------------------------------------------


def test_long_limit_counts_position_and_working_buys(h):
    rst = dict(symbol="RST", quantity="1000")
    first = h.order(**rst, price="10")  # working buy 1000
    assert first.accepted
    h.engine.fill(first.handle, qty(1000), px("10"))  # position 1000
    assert h.order(**rst, price="10.01").accepted  # 1000 + 1000 working
    assert h.order(**rst, price="10.02").accepted  # 3000 == limit
    result = h.order(symbol="RST", quantity="100", price="10.03")
    failure = h.failure(result, Check.LONG_POSITION_LIMIT_EXCEEDED)
    assert (failure.limit, failure.observed) == (qty(3000), qty(3100))


def test_short_limit_counts_sells_against_position(h):
    assert h.order(symbol="RST", side=Side.SELL, quantity="1000", price="10").accepted
    assert h.order(symbol="RST", side=Side.SELL, quantity="1000", price="10.01").accepted  # 2000 == limit
    result = h.order(symbol="RST", side=Side.SELL, quantity="100", price="10.02")
    failure = h.failure(result, Check.SHORT_POSITION_LIMIT_EXCEEDED)
    assert (failure.limit, failure.observed, failure.rule_path) == (
        qty(2000),
        qty(2100),
        "firm.limits.max_short_position",
    )


# -- rates -------------------------------------------------------------------------------------


def test_strategy_throttle_refills_over_time(h):
    for i in range(3):
        assert h.order(strategy="S1", price=f"{100 + i}").accepted
    result = h.order(strategy="S1", price="104")
    failure = h.failure(result, Check.STRATEGY_ORDER_RATE_EXCEEDED)
    assert failure.limit == 3 and failure.rule_path == "strategies.S1.order_rate_limit"
    assert failure.observed == 1_000_000_000 // 3 + 1  # ceil(1 s / 3 orders)
    h.now += failure.observed - 1
    assert not h.order(strategy="S1", price="105").accepted
    h.now += 1
    assert h.order(strategy="S1", price="106").accepted
    # a strategy inheriting the firm's strategy limit is unaffected
    assert h.order(strategy="S2", price="107").accepted


def test_rejected_orders_do_not_consume_rate(h):
    for _ in range(5):
        assert not h.order(strategy="S1", quantity="0").accepted
    for i in range(3):
        assert h.order(strategy="S1", price=f"{100 + i}").accepted


def test_account_throttle(kernel_class):
    rules = RULES.replace(
        "order_rate_limit = { orders = 1000, window_ms = 1000 }\n\n[firm.strategy_limits]",
        "order_rate_limit = { orders = 2, window_ms = 100 }\n\n[firm.strategy_limits]",
    )
    h = Harness(rules, kernel_class, prices=PRICES)
    assert h.order(price="100").accepted and h.order(price="101").accepted
    failure = h.failure(h.order(price="102"), Check.ACCOUNT_ORDER_RATE_EXCEEDED)
    assert failure.rule_path == "firm.limits.order_rate_limit"
    assert h.order(account="NOLIM", price="102").accepted  # another account has its own bucket
    h.advance_ms(50)
    assert h.order(price="103").accepted


# -- duplicates --------------------------------------------------------------------------------


def test_duplicate_client_order_id_per_account(h):
    assert h.order(client_order_id="X1").accepted
    result = h.order(client_order_id="X1", price="101")
    assert h.failed(result) == {Check.DUPLICATE_CLIENT_ORDER_ID}
    assert h.order(account="NOLIM", client_order_id="X1", price="102").accepted


def test_rejected_client_order_id_can_be_reused(h):
    assert not h.order(client_order_id="X2", quantity="0").accepted
    assert h.order(client_order_id="X2").accepted


def test_client_order_id_memory_is_a_count_window(kernel_class):
    h = Harness(RULES, kernel_class, prices=PRICES, client_order_id_memory=2)
    for cid, price in (("A", "100"), ("B", "101"), ("C", "102")):
        assert h.order(client_order_id=cid, price=price).accepted
    assert h.order(client_order_id="A", price="103").accepted  # evicted
    assert not h.order(client_order_id="C", price="104").accepted


def test_duplicate_content_window(h):
    assert h.order(quantity="5", price="100").accepted
    h.advance_ms(500)
    result = h.order(quantity="5", price="100")
    failure = h.failure(result, Check.DUPLICATE_ORDER_CONTENT)
    assert (failure.limit, failure.observed) == (500_000_000, 500_000_000)
    h.now += 1
    assert h.order(quantity="5", price="100").accepted
    assert h.order(quantity="5", price="100.01").accepted  # different content
    assert h.order(account="ACC2", side=Side.SELL, quantity="5", price="100").accepted
    assert h.order(account="ACC2", side=Side.SELL, quantity="5", price="100").accepted  # window 0: off


# -- working orders and self-match --------------------------------------------------------------


def test_max_working_orders(h):
    assert h.order(account="ACC2", side=Side.SELL, price="100").accepted
    assert h.order(account="ACC2", side=Side.SELL, price="101").accepted
    failure = h.failure(h.order(account="ACC2", side=Side.SELL, price="102"), Check.MAX_WORKING_ORDERS_EXCEEDED)
    assert (failure.limit, failure.observed) == (2, 3)


@pytest.mark.parametrize(
    ("resting_side", "resting_price", "new_side", "inside", "crossing"),
    [
        (Side.SELL, "101", Side.BUY, "100.99", "101"),
        (Side.BUY, "99", Side.SELL, "99.01", "99"),
        (Side.BUY, "99", Side.SELL_SHORT, "99.01", "98"),
    ],
)
def test_self_match_both_sides(h, resting_side, resting_price, new_side, inside, crossing):
    assert h.order(side=resting_side, price=resting_price).accepted
    assert h.order(side=new_side, price=inside).accepted
    result = h.order(side=new_side, price=crossing, quantity="2")
    failure = h.failure(result, Check.SELF_MATCH_PREVENTED)
    assert (failure.limit, failure.observed) == (px(resting_price), px(crossing))


def test_market_order_crosses_any_own_opposite_order(h):
    assert h.order(side=Side.SELL, price="105").accepted
    assert Check.SELF_MATCH_PREVENTED in h.failed(h.order(order_type=OrderType.MARKET))


def test_self_match_prevention_can_be_off_per_account(h):
    assert h.order(account="ACC2", symbol="RST", side=Side.SELL, quantity="100", price="10.01").accepted
    assert h.order(account="ACC2", symbol="RST", side=Side.BUY, quantity="100", price="10.02").accepted


def test_self_match_cleared_when_the_resting_order_ends(h):
    resting = h.order(side=Side.SELL, price="101")
    h.engine.release(resting.handle)
    assert h.order(side=Side.BUY, price="101").accepted


# -- trading state -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("scope", "name", "blocked", "unaffected"),
    [
        (Scope.FIRM, "", {}, None),
        (Scope.ACCOUNT, "ACC1", {}, {"account": "NOLIM"}),
        (Scope.STRATEGY, "S2", {"strategy": "S2"}, {"strategy": "S1"}),
        (Scope.SYMBOL, "AAA", {}, {"symbol": "RST", "quantity": "100", "price": "10"}),
    ],
)
def test_halt_blocks_exactly_its_scope(h, scope, name, blocked, unaffected):
    h.engine.set_trading_state(scope, name, TradingState.HALTED)
    result = h.order(**blocked)
    failure = h.failure(result, Check.TRADING_HALTED)
    assert (failure.limit, failure.observed) == (scope, TradingState.HALTED)
    if unaffected is not None:
        assert h.order(**unaffected).accepted
    h.engine.set_trading_state(scope, name, TradingState.ACTIVE)
    assert h.order(**blocked, price="100.5").accepted


def test_most_restrictive_state_wins_and_first_scope_is_reported(h):
    h.engine.set_trading_state(Scope.SYMBOL, "AAA", TradingState.HALTED)
    h.engine.set_trading_state(Scope.ACCOUNT, "ACC1", TradingState.REDUCING)
    failure = h.failure(h.order(), Check.TRADING_HALTED)
    assert failure.limit == Scope.SYMBOL


def test_reducing_lets_exits_through_and_blocks_increases(h):
    acc, sym = h.rules.interner.account_ids["ACC1"], h.rules.interner.symbol_ids["AAA"]
    entry = h.order(quantity="100", price="100")
    h.engine.fill(entry.handle, qty(100), px("100"))
    h.engine.set_trading_state(Scope.ACCOUNT, "ACC1", TradingState.REDUCING)
    assert h.order(side=Side.SELL, quantity="60", price="100").accepted
    assert h.order(side=Side.SELL, quantity="40", price="100.01").accepted  # flat with working sells
    failure = h.failure(h.order(side=Side.SELL, quantity="1", price="100.02"), Check.REDUCE_ONLY_VIOLATION)
    assert (failure.limit, failure.observed) == (qty(100), qty(101))
    assert Check.REDUCE_ONLY_VIOLATION in h.failed(h.order(side=Side.BUY, quantity="1"))
    assert h.engine.kernel.position(acc, sym) == (qty(100), 0, qty(100))


def test_halt_on_a_name_not_yet_declared_holds_when_it_appears(kernel_class):
    h = Harness(RULES, kernel_class, prices=PRICES)
    h.engine.set_trading_state(Scope.ACCOUNT, "NEWACC", TradingState.HALTED)
    assert h.engine.trading_state(Scope.ACCOUNT, "NEWACC") == TradingState.HALTED
    from fastpath.rules import compile_rules

    reloaded = compile_rules(RULES + "\n[accounts.NEWACC]\n", "test-rules.toml", h.engine.interner)
    h.engine.reload(reloaded)
    assert Check.TRADING_HALTED in h.failed(h.order(account="NEWACC"))


# -- capacity ----------------------------------------------------------------------------------


def test_order_capacity_fails_closed(kernel_class):
    h = Harness(RULES, kernel_class, prices=PRICES, max_orders=2)
    assert h.order(price="100").accepted and h.order(price="101").accepted
    failure = h.failure(h.order(price="102"), Check.STATE_CAPACITY_EXHAUSTED)
    assert (failure.limit, failure.observed) == (2, 2)


def test_position_capacity_fails_closed(kernel_class):
    h = Harness(RULES, kernel_class, prices=PRICES, max_positions=1)
    assert h.order(price="100").accepted
    assert h.order(price="101").accepted  # same pair
    failure = h.failure(h.order(symbol="RST", quantity="100", price="10"), Check.STATE_CAPACITY_EXHAUSTED)
    assert (failure.limit, failure.observed) == (1, 1)


# -- reload ------------------------------------------------------------------------------------


def test_reload_swaps_limits_and_keeps_state(h):
    from fastpath.rules import compile_rules

    acc = h.rules.interner.account_ids["ACC1"]
    assert h.order(quantity="100", price="100").accepted
    tighter = compile_rules(RULES.replace("max_order_qty = 1000", "max_order_qty = 50"), "r2", h.engine.interner)
    old_version = h.engine.version
    h.engine.reload(tighter)
    assert h.engine.version != old_version
    assert h.failed(h.order(quantity="51", price="101")) == {Check.MAX_ORDER_QTY_EXCEEDED}
    assert h.engine.kernel.exposure(acc)[0] == 10_000 * NOTIONAL_SCALE
    assert h.engine.kernel.working_orders(acc) == 1


def test_reload_requires_the_engine_interner(h):
    from fastpath.rules import compile_rules

    with pytest.raises(ValueError, match="interner"):
        h.engine.reload(compile_rules(RULES, "r2"))


def test_failures_carry_readable_detail(h):
    failure = h.failure(h.order(quantity="1001", price="1"), Check.MAX_ORDER_QTY_EXCEEDED)
    assert failure.detail == "limit=1000 observed=1001"

