"""Every watchdog, without NATS: fires on its breach, stays quiet on noise just under it,
respects N-consecutive and the cooldown, and the engine survives bad input.

Each case gives ``warmup()`` (events that set the scene without breaching), ``breach(i)``
(the i-th breaching observation, ``dt`` event-time seconds apart) and ``noise(i)`` (input
just under the limit). The same four checks run over every case.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pretrade.v1 import trading_pb2
from tests.watchdogs import events as ev
from watchdogs.config import WATCHDOG_CLASSES, parse_config
from watchdogs.core import FIRM, BreachPolicy, EventKind, ScopeKind, Target
from watchdogs.worker import WatchdogEngine


@dataclass
class Case:
    kind: str
    params: dict
    target: Target
    breach: Callable[[int], list]
    noise: Callable[[int], list]
    dt: float
    warmup: Callable[[], list] = field(default=lambda: [])


def _pair(t, i, symbol="AAPL", qty=10.0, account="ACC1"):
    cl = f"c{symbol}{i}-{t}"
    return [ev.decision(t, client_order_id=cl, symbol=symbol, qty=qty, account=account),
            ev.fill(t, client_order_id=cl, qty=qty, account=account)]


ALGO = Target(ScopeKind.STRATEGY, "ALGO")
ACC1 = Target(ScopeKind.ACCOUNT, "ACC1")
FIRM_METRIC = dict(scope=trading_pb2.SCOPE_FIRM, target="")
ACC1_AAPL = dict(scope=trading_pb2.SCOPE_ACCOUNT, target="ACC1", symbol="AAPL")

CASES = [
    Case("order_rate", {"window_s": 10.0, "max_orders": 5}, ALGO,
         warmup=lambda: [ev.decision(i * 0.01) for i in range(5)],
         breach=lambda i: [ev.decision(1 + i * 0.01)], noise=lambda i: [ev.decision(i * 2.1)], dt=0.01),
    Case("reject_rate", {"window_s": 100.0, "max_reject_ratio": 0.5, "min_decisions": 10}, ACC1,
         warmup=lambda: [ev.decision(i * 0.01, accept=False) for i in range(9)],
         breach=lambda i: [ev.decision(1 + i * 0.01, accept=False)],
         noise=lambda i: [ev.decision(i * 0.01, accept=i % 2 == 0)], dt=0.01),
    Case("notional_velocity", {"window_s": 100.0, "max_notional": 1000.0}, ACC1,
         breach=lambda i: [ev.decision(i * 0.01, qty=11)],
         noise=lambda i: [ev.decision(i * 101, qty=9.99)], dt=0.01),
    Case("concentration", {"max_share": 0.5, "min_gross_notional": 1000.0}, ACC1,
         warmup=lambda: _pair(0, 0, qty=5),
         breach=lambda i: _pair(1 + i * 0.01, i),
         noise=lambda i: _pair(i * 0.01, i, symbol=("AAPL", "MSFT", "IBM")[i % 3], qty=4), dt=0.01),
    Case("repeated_executions", {"window_s": 100.0, "max_executions": 5}, ALGO,
         warmup=lambda: [e for i in range(5) for e in _pair(i * 0.01, i)],
         breach=lambda i: _pair(1 + i * 0.01, 100 + i), noise=lambda i: _pair(i * 25.0, i), dt=0.01),
    Case("stale_market_data", {"max_age_s": 5.0}, Target(ScopeKind.SYMBOL, "AAPL"),
         warmup=lambda: [ev.reference(0, "AAPL", 100), ev.reference(0, "MSFT", 100)],
         breach=lambda i: [ev.reference(6 + i * 0.1, "MSFT", 100)],
         noise=lambda i: [ev.reference(i * 2.4, ("AAPL", "MSFT")[i % 2], 100)], dt=0.1),
    Case("price_divergence", {"max_divergence_pct": 2.0}, Target(ScopeKind.SYMBOL, "AAPL"),
         warmup=lambda: [ev.reference(0, "AAPL", 100)],
         breach=lambda i: [ev.trade(1 + i, "AAPL", 103, 1)],
         noise=lambda i: [ev.reference(0, "AAPL", 100)] if i == 0 else [ev.trade(i, "AAPL", 101.9, 1)],
         dt=1.0),
    Case("price_shock", {"window_s": 1000.0, "max_drop_pct": 10.0, "min_symbols": 2}, FIRM,
         warmup=lambda: [ev.reference(0, "A", 100), ev.reference(0, "B", 100), ev.reference(1, "A", 89)],
         breach=lambda i: [ev.reference(2 + i, "B", 89 - i * 0.01)],
         noise=lambda i: [ev.reference(i, ("A", "B")[i % 2], 100 if i < 2 else 91)], dt=1.0),
    Case("depeg", {"pegs": {"USDC": 1.0}, "max_deviation_bps": 50.0}, Target(ScopeKind.SYMBOL, "USDC"),
         breach=lambda i: [ev.reference(i * 60, "USDC", 0.99)],
         noise=lambda i: [ev.reference(i * 60, "USDC", 0.996)],
         dt=60.0),
    Case("settlement", {"max_unsettled_notional": 1000.0}, ACC1,
         breach=lambda i: [ev.fill(i, client_order_id=f"s{i}", qty=11)],
         noise=lambda i: [ev.fill(i, client_order_id=f"s{i}", qty=10),
                          ev.metric(i, "settled_notional", 1000.0 * (i + 1), scope=trading_pb2.SCOPE_ACCOUNT,
                                    target="ACC1")], dt=1.0),
    Case("predictive_health", {"k_sigma": 3.0}, ALGO,
         warmup=lambda: [ev.metric(0, "nav_expected", 1000), ev.metric(0, "nav_expected_sigma", 10)],
         breach=lambda i: [ev.metric(1 + i, "nav", 1031)],
         noise=lambda i: [ev.metric(0, "nav_expected", 1000), ev.metric(0, "nav_expected_sigma", 10)]
         if i == 0 else [ev.metric(i, "nav", 1029 if i % 2 else 971)], dt=1.0),
    Case("drift_monitor", {"z_limit": 2.0}, ALGO,
         warmup=lambda: [ev.metric(0, "ic_backtest_mean", 0.05), ev.metric(0, "ic_backtest_sigma", 0.01)],
         breach=lambda i: [ev.metric(1 + i, "ic_live", 0.02)],
         noise=lambda i: [ev.metric(0, "ic_backtest_mean", 0.05), ev.metric(0, "ic_backtest_sigma", 0.01)]
         if i == 0 else [ev.metric(i, "ic_live", 0.031)], dt=1.0),
    Case("vpin", {"bucket_volume": 100.0, "buckets": 5, "max_vpin": 0.6}, Target(ScopeKind.SYMBOL, "AAPL"),
         warmup=lambda: [ev.trade(i, "AAPL", 100 + i, 100) for i in range(4)],
         breach=lambda i: [ev.trade(10 + i, "AAPL", 110 + i, 100)],
         noise=lambda i: [ev.trade(i, "AAPL", 100 if i % 2 == 0 else 99, 50)], dt=1.0),
    Case("news_spike", {"k_sigma": 4.0, "min_samples": 20}, Target(ScopeKind.SYMBOL, "AAPL"),
         warmup=lambda: [ev.news(i * 3600, "AAPL", 10 + 2 * (i % 2)) for i in range(30)],
         breach=lambda i: [ev.news((31 + i) * 3600, "AAPL", 100)],
         noise=lambda i: [ev.news(i * 3600, "AAPL", 14)], dt=3600.0),
    Case("position_anomaly", {"k_sigma": 5.0, "min_samples": 10}, ACC1,
         warmup=lambda: [ev.metric(i, "position", 10 * (i % 2), **ACC1_AAPL) for i in range(12)],
         breach=lambda i: [ev.metric(20 + i, "position", 1000 * (i + 1), **ACC1_AAPL)],
         noise=lambda i: [ev.metric(i, "position", 40 * (i % 2), **ACC1_AAPL)], dt=1.0),
    Case("db_watchdog", {"max_lag_s": 30.0}, FIRM,
         breach=lambda i: [ev.metric(i, "ledger_lag_s", 31, **FIRM_METRIC)],
         noise=lambda i: [ev.metric(i, "ledger_lag_s", 29, **FIRM_METRIC)], dt=1.0),
    Case("strategy_watchdog", {"window_s": 100.0, "min_pnl": -1000.0}, ALGO,
         breach=lambda i: [ev.metric(i, "pnl", -1001)],
         noise=lambda i: [ev.metric(i * 101, "pnl", -999)], dt=1.0),
    Case("theta_watchdog", {"max_abs_theta": 500.0}, ALGO,
         breach=lambda i: [ev.metric(i, "net_theta", -501)],
         noise=lambda i: [ev.metric(i, "net_theta", -499)], dt=1.0),
    Case("dependency_watchdog", {}, FIRM,
         breach=lambda i: [ev.health(i, "risk-db", True)],
         noise=lambda i: [ev.health(i, "risk-db", i % 3 != 2)],
         dt=1.0),
    Case("portfolio_vol_dd", {"max_drawdown_pct": 10.0}, FIRM,
         warmup=lambda: [ev.metric(0, "nav", 1000, **FIRM_METRIC)],
         breach=lambda i: [ev.metric(86400 * (1 + i), "nav", 880, **FIRM_METRIC)],
         noise=lambda i: [ev.metric(86400 * i, "nav", 1000 if i % 2 == 0 else 1005, **FIRM_METRIC)],
         dt=86400.0),
]


def test_every_watchdog_has_a_case():
    assert {case.kind for case in CASES} == set(WATCHDOG_CLASSES)


def _engine(case: Case, **common) -> WatchdogEngine:
    config = parse_config({"watchdogs": {case.kind: {**case.params, **common}}})
    return WatchdogEngine(config.build())


def _feed(engine, events) -> list:
    return [finding for event in events for finding in engine.observe(event)]


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.kind)
def test_fires_after_n_consecutive_breaches(case):
    engine = _engine(case, consecutive=3, cooldown_s=1e9)
    assert _feed(engine, case.warmup()) == []
    assert _feed(engine, case.breach(0)) == []
    assert _feed(engine, case.breach(1)) == []
    findings = _feed(engine, case.breach(2))
    assert len(findings) == 1
    finding = findings[0]
    assert (finding.watchdog, finding.target, finding.consecutive) == (case.kind, case.target, 3)
    assert finding.action is WATCHDOG_CLASSES[case.kind].default_action
    assert finding.breach_started_ns <= finding.event_ns


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.kind)
def test_quiet_on_noise_just_under_the_limit(case):
    engine = _engine(case, consecutive=3)
    assert _feed(engine, [event for i in range(60) for event in case.noise(i)]) == []


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.kind)
def test_cooldown_after_acting(case):
    engine = _engine(case, consecutive=1, cooldown_s=4.5 * case.dt)
    _feed(engine, case.warmup())
    fired_at = [i for i in range(12) if _feed(engine, case.breach(i))]
    assert fired_at == [0, 5, 10]


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.kind)
def test_malformed_messages_are_counted_and_skipped(case):
    engine = _engine(case, consecutive=1)
    for kind in EventKind:
        for garbage in (b"\xff\xff\xff", b"", b"\x08\x96\x01"):
            assert engine.observe_message(kind, garbage) == []
    assert engine.malformed_messages == 3 * len(EventKind)
    _feed(engine, case.warmup())
    assert _feed(engine, case.breach(0)), "the engine still works after bad input"


def test_a_watchdog_that_raises_is_counted_and_the_others_go_on():
    config = parse_config(
        {"watchdogs": {"order_rate": {"max_orders": 0, "consecutive": 1}, "reject_rate": {}}}
    )
    engine = WatchdogEngine(config.build())
    broken = engine.watchdogs[1]
    broken.observe = lambda event: 1 / 0
    assert len(engine.observe(ev.decision(0))) == 1
    assert engine.metrics.errors.labels("reject_rate")._value.get() == 1


def test_fills_that_arrive_before_their_decision_still_count():
    """Decisions and gateway events travel on different streams: either may come first."""
    config = parse_config({"watchdogs": {"repeated_executions": {
        "window_s": 100.0, "max_executions": 2, "consecutive": 1}}})
    engine = WatchdogEngine(config.build())
    fills = [ev.fill(i, client_order_id=f"early-{i}") for i in range(3)]
    decisions = [ev.decision(i, client_order_id=f"early-{i}") for i in range(3)]
    assert _feed(engine, fills) == []
    assert _feed(engine, decisions[:2]) == []
    (finding,) = _feed(engine, decisions[2:])
    assert finding.target == ALGO and finding.observed == 3


def test_non_breach_resets_the_streak():
    policy = BreachPolicy(consecutive=2, cooldown_s=0)
    assert policy.observe("k", True, 1) is None
    assert policy.observe("k", False, 2) is None
    assert policy.observe("k", True, 3) is None
    assert policy.observe("k", True, 4) == (2, 3)
    assert policy.observe("other", True, 4) is None


def test_scoped_parameters_apply_to_their_target_only():
    config = parse_config({"watchdogs": {"order_rate": {
        "window_s": 10.0, "max_orders": 2, "consecutive": 1, "strategies": {"BIG": {"max_orders": 100}}}}})
    engine = WatchdogEngine(config.build())
    big = _feed(engine, [ev.decision(i * 0.01, strategy="BIG") for i in range(10)])
    small = _feed(engine, [ev.decision(i * 0.01, strategy="SMALL") for i in range(10)])
    assert big == [] and small and small[0].target == Target(ScopeKind.STRATEGY, "SMALL")


@settings(max_examples=300, deadline=None)
@given(
    consecutive=st.integers(1, 5),
    cooldown_s=st.integers(0, 10),
    observations=st.lists(st.tuples(st.booleans(), st.integers(0, 3)), max_size=80),
)
def test_policy_acts_after_n_in_a_row_and_never_within_the_cooldown(consecutive, cooldown_s, observations):
    """Against a straightforward model: act exactly when the run of breaches since the last
    non-breach (or since the cooldown ended, or since acting) reaches N."""
    policy = BreachPolicy(consecutive=consecutive, cooldown_s=cooldown_s)
    now_ns, run, quiet_until_ns, last_acted_ns = 0, 0, 0, None
    for breached, step_s in observations:
        now_ns += step_s * 1_000_000_000
        acted = policy.observe("key", breached, now_ns)
        expected = False
        if now_ns >= quiet_until_ns:
            run = run + 1 if breached else 0
            if run == consecutive:
                expected, run = True, 0
                quiet_until_ns = now_ns + cooldown_s * 1_000_000_000
        assert (acted is not None) == expected
        if acted is not None:
            assert acted[0] == consecutive
            assert last_acted_ns is None or now_ns - last_acted_ns >= cooldown_s * 1_000_000_000
            last_acted_ns = now_ns
