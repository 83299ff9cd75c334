"""Portfolio and system watchdogs: the ten controls trading operations teams run, each on
its documented input (``StrategyMetric``, ``NewsCount``, ``Trade``, ``ServiceHealth``).

Metric names (``StrategyMetric.metric``) are the ``METRIC_*`` constants below; the user's
own systems publish them on ``pretrade.v1.metrics.strategy.<name>``. A metric's scope and
name are the scope a finding applies to.
"""

from __future__ import annotations

import abc
import math
import statistics
from collections import deque
from dataclasses import dataclass
from typing import ClassVar

from pretrade.v1 import watchdogs_pb2
from watchdogs.core import (
    FIRM,
    NANOS_PER_SECOND,
    Action,
    Event,
    EventKind,
    Finding,
    PerTargetWindows,
    ScopeKind,
    Target,
    Watchdog,
    WindowedWatchdog,
)

METRIC_NAV = "nav"
METRIC_NAV_EXPECTED = "nav_expected"
METRIC_NAV_EXPECTED_SIGMA = "nav_expected_sigma"
METRIC_PNL = "pnl"
METRIC_IC_LIVE = "ic_live"
METRIC_IC_BACKTEST_MEAN = "ic_backtest_mean"
METRIC_IC_BACKTEST_SIGMA = "ic_backtest_sigma"
METRIC_NET_THETA = "net_theta"
METRIC_POSITION = "position"
METRIC_LEDGER_LAG_S = "ledger_lag_s"
METRIC_LEDGER_VERIFIED = "ledger_verified"

SECONDS_PER_YEAR = 365.25 * 24 * 3600
NANOS_PER_UNIT = 1_000_000_000


def metric_target(metric: watchdogs_pb2.StrategyMetric) -> Target | None:
    """The scope a metric belongs to; None when it names none (UNSPECIFIED, or no name
    below FIRM)."""
    try:
        scope = ScopeKind(metric.scope)
    except ValueError:
        return None
    if scope is ScopeKind.FIRM:
        return FIRM
    return Target(scope, metric.name) if metric.name else None


def parse_target(text: str) -> Target:
    """``"firm"`` or ``"<scope>:<name>"`` (e.g. ``"account:ACC1"``) as a Target."""
    scope_text, _, name = str(text).partition(":")
    try:
        scope = ScopeKind.parse(scope_text)
    except KeyError:
        scope = None
    if scope is None or (scope is ScopeKind.FIRM) != (not name):
        raise ValueError(f"target {text!r}: 'firm', or '<account|strategy|symbol>:<name>'")
    return Target(scope, name)


class _MetricWatchdog(Watchdog):
    """Base of the watchdogs fed by StrategyMetric: dispatches on the metric name."""

    inputs = frozenset({EventKind.METRIC})
    metrics: frozenset[str] = frozenset()

    def observe(self, event: Event) -> list[Finding]:
        metric = event.payload
        if metric.metric not in self.metrics or not math.isfinite(metric.value):
            return []
        target = metric_target(metric)
        if target is None:
            return []
        return self.observe_metric(target, metric, event.time_ns)

    @abc.abstractmethod
    def observe_metric(self, target: Target, metric, time_ns: int) -> list[Finding]:
        """The findings of one finite value of a watched metric for ``target``."""


class _BaselineZScoreWatchdog(_MetricWatchdog):
    """Base of the watchdogs that judge a live metric by its z-score against a baseline the
    user's systems publish per target as two more metrics: its mean and its sigma.

    The latest mean and sigma of each target are kept; a live value is judged only once both
    have arrived and sigma is positive (no z otherwise). Subclasses name the two baseline
    metrics (``metrics`` lists them with the live one) and say what breaches in
    :meth:`judge_z`.
    """

    mean_metric: ClassVar[str]
    sigma_metric: ClassVar[str]

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._mean: dict[Target, float] = {}
        self._sigma: dict[Target, float] = {}

    def observe_metric(self, target, metric, time_ns):
        if metric.metric == self.mean_metric:
            self._mean[target] = metric.value
            return []
        if metric.metric == self.sigma_metric:
            self._sigma[target] = metric.value
            return []
        mean, sigma = self._mean.get(target), self._sigma.get(target)
        if mean is None or not sigma or sigma <= 0:
            return []
        return self.judge_z(target, metric.value, mean, (metric.value - mean) / sigma, time_ns)

    @abc.abstractmethod
    def judge_z(self, target: Target, value: float, mean: float, z: float, time_ns: int) -> list[Finding]:
        """The findings of one live ``value`` of the target, ``z`` sigma from its ``mean``."""


class PredictiveHealthWatchdog(_BaselineZScoreWatchdog):
    """NAV outside the envelope the user's model predicts (expected NAV +- k sigma)."""

    kind = "predictive_health"
    metrics = frozenset({METRIC_NAV, METRIC_NAV_EXPECTED, METRIC_NAV_EXPECTED_SIGMA})
    mean_metric = METRIC_NAV_EXPECTED
    sigma_metric = METRIC_NAV_EXPECTED_SIGMA
    default_action = Action.WARN

    @dataclass(frozen=True)
    class Params:
        k_sigma: float = 3.0

    def judge_z(self, target, value, mean, z, time_ns):
        k = self.params_for(target).k_sigma
        return self._judge(
            target, abs(z) > k, time_ns, z, k,
            f"NAV of {target.label()} {value:,.0f} is {z:+.1f} sigma "
            f"from the expected {mean:,.0f}",
        )


class DriftMonitorWatchdog(_BaselineZScoreWatchdog):
    """Live information coefficient vs the backtest's: z = (IC_live - mean) / sigma below
    -z_limit means the signal stopped working (halve its allocation)."""

    kind = "drift_monitor"
    metrics = frozenset({METRIC_IC_LIVE, METRIC_IC_BACKTEST_MEAN, METRIC_IC_BACKTEST_SIGMA})
    mean_metric = METRIC_IC_BACKTEST_MEAN
    sigma_metric = METRIC_IC_BACKTEST_SIGMA
    default_action = Action.THROTTLE
    default_scope = ScopeKind.STRATEGY

    @dataclass(frozen=True)
    class Params:
        z_limit: float = 2.0

    def judge_z(self, target, value, mean, z, time_ns):
        limit = self.params_for(target).z_limit
        return self._judge(
            target, z < -limit, time_ns, z, -limit,
            f"live IC of {target.label()} {value:.3f} is {z:+.1f} sigma from its backtest {mean:.3f}",
        )


class VpinWatchdog(Watchdog):
    """Volume-synchronised probability of informed trading (Easley, Lopez de Prado, O'Hara):
    trades classified buy/sell by the tick rule into equal-volume buckets; VPIN is the mean
    order imbalance |V_buy - V_sell| / V over the last ``buckets`` buckets."""

    kind = "vpin"
    inputs = frozenset({EventKind.TRADE})
    default_action = Action.WARN
    default_scope = ScopeKind.SYMBOL

    @dataclass(frozen=True)
    class Params:
        bucket_volume: float = 10_000.0
        buckets: int = 50
        max_vpin: float = 0.6

    @dataclass
    class _State:
        last_price: int = 0
        last_sign: int = 1
        buy: float = 0.0
        sell: float = 0.0
        imbalances: deque | None = None

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._states: dict[str, VpinWatchdog._State] = {}

    def observe(self, event: Event) -> list[Finding]:
        trade = event.payload
        if trade.price_nanos <= 0 or trade.quantity_nanos <= 0:
            return []
        target = Target(ScopeKind.SYMBOL, trade.symbol)
        params = self.params_for(target)
        state = self._states.get(trade.symbol)
        if state is None:
            state = self._states[trade.symbol] = self._State(imbalances=deque(maxlen=params.buckets))
        if state.last_price and trade.price_nanos != state.last_price:
            state.last_sign = 1 if trade.price_nanos > state.last_price else -1
        state.last_price = trade.price_nanos
        remaining = trade.quantity_nanos / NANOS_PER_UNIT
        findings: list[Finding] = []
        while remaining > 0:
            room = params.bucket_volume - state.buy - state.sell
            taken = min(room, remaining)
            if state.last_sign > 0:
                state.buy += taken
            else:
                state.sell += taken
            remaining -= taken
            if state.buy + state.sell >= params.bucket_volume:
                state.imbalances.append(abs(state.buy - state.sell) / params.bucket_volume)
                state.buy = state.sell = 0.0
                if len(state.imbalances) == params.buckets:
                    vpin = sum(state.imbalances) / params.buckets
                    findings += self._judge(
                        target, vpin > params.max_vpin, event.time_ns, vpin, params.max_vpin,
                        f"VPIN of {trade.symbol} is {vpin:.2f} over {params.buckets} buckets",
                    )
        return findings


class NewsSpikeWatchdog(Watchdog):
    """News volume on a topic more than k sigma above its average of the last 30 days."""

    kind = "news_spike"
    inputs = frozenset({EventKind.NEWS})
    default_action = Action.WARN
    default_scope = ScopeKind.SYMBOL

    @dataclass(frozen=True)
    class Params:
        baseline_days: float = 30.0
        k_sigma: float = 4.0
        #: Intervals of history needed before a spike can be judged.
        min_samples: int = 20

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        # per topic (as a SYMBOL target), the counts of the baseline period
        self._history = PerTargetWindows()

    def observe(self, event: Event) -> list[Finding]:
        news = event.payload
        target = Target(ScopeKind.SYMBOL, news.topic)
        params = self.params_for(target)
        history = self._history.get(target, params.baseline_days * 86_400)
        history.expire(event.time_ns)
        past = history.values()
        breached, findings = False, []
        if len(past) >= params.min_samples:
            mean = statistics.fmean(past)
            sigma = max(statistics.pstdev(past), 1.0)
            threshold = mean + params.k_sigma * sigma
            breached = news.count > threshold
            findings = self._judge(
                target, breached, event.time_ns, news.count, threshold,
                f"{news.count} news items on {news.topic} (30-day mean {mean:.1f}, sigma {sigma:.1f})",
            )
        if not breached:  # a spike must not raise the baseline it is judged against
            history.add(event.time_ns, float(news.count))
        return findings


class PositionAnomalyWatchdog(_MetricWatchdog):
    """A position change more than k sigma of the usual changes of that position."""

    kind = "position_anomaly"
    metrics = frozenset({METRIC_POSITION})
    default_action = Action.REDUCE_ONLY
    default_scope = ScopeKind.ACCOUNT

    @dataclass(frozen=True)
    class Params:
        k_sigma: float = 5.0
        history: int = 100
        min_samples: int = 20

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._last: dict[tuple[Target, str], float] = {}
        self._deltas: dict[tuple[Target, str], deque] = {}

    def observe_metric(self, target, metric, time_ns):
        params = self.params_for(target)
        key = (target, metric.symbol)
        previous = self._last.get(key)
        self._last[key] = metric.value
        if previous is None:
            return []
        delta = metric.value - previous
        deltas = self._deltas.setdefault(key, deque(maxlen=params.history))
        breached, findings = False, []
        if len(deltas) >= params.min_samples:
            sigma = statistics.pstdev(deltas) or 1e-12
            z = abs(delta) / sigma
            breached = z > params.k_sigma
            findings = self._judge(
                target, breached, time_ns, z, params.k_sigma,
                f"position of {target.label()} in {metric.symbol or '-'} moved {delta:+,.0f} ({z:.1f} sigma)",
            )
        if not breached:  # an anomaly must not widen the distribution it is judged against
            deltas.append(delta)
        return findings


class DbWatchdog(_MetricWatchdog):
    """Ledger integrity and lag, as the ledger's verifier reports them: ``ledger_verified``
    (1 when the incremental verify of the tail passed, 0 when it failed) and
    ``ledger_lag_s`` (ingest lag behind the decision stream)."""

    kind = "db_watchdog"
    metrics = frozenset({METRIC_LEDGER_LAG_S, METRIC_LEDGER_VERIFIED})
    default_action = Action.REDUCE_ONLY

    @dataclass(frozen=True)
    class Params:
        max_lag_s: float = 30.0

    def observe_metric(self, target, metric, time_ns):
        if metric.metric == METRIC_LEDGER_VERIFIED:
            return self._judge(
                target, metric.value < 1.0, time_ns, metric.value, 1.0,
                "ledger verification of the tail failed" if metric.value < 1.0 else "ledger verified",
            )
        limit = self.params_for(target).max_lag_s
        return self._judge(
            target, metric.value > limit, time_ns, metric.value, limit,
            f"ledger ingest lags {metric.value:.1f} s behind the decisions",
        )


class StrategyWatchdog(_MetricWatchdog, WindowedWatchdog):
    """Rolling P/L (sum of ``pnl`` over ``window_s``) outside the strategy's expected band."""

    kind = "strategy_watchdog"
    metrics = frozenset({METRIC_PNL})
    default_action = Action.THROTTLE
    default_scope = ScopeKind.STRATEGY

    @dataclass(frozen=True)
    class Params:
        window_s: float = 3600.0
        min_pnl: float = -100_000.0
        max_pnl: float = math.inf

    def observe_metric(self, target, metric, time_ns):
        return self._add_to_window(target, time_ns, metric.value)

    def judge_window(self, target, params, window, time_ns):
        rolling = window.total
        breached = not (params.min_pnl <= rolling <= params.max_pnl)
        limit = params.min_pnl if rolling < params.min_pnl else params.max_pnl
        return self._judge(
            target, breached, time_ns, rolling, limit,
            f"rolling P/L of {target.label()} over {params.window_s:g} s is {rolling:,.0f}, "
            f"band [{params.min_pnl:,.0f}, {params.max_pnl:,.0f}]",
        )


class ThetaWatchdog(_MetricWatchdog):
    """Net option theta (time decay per day, currency units) beyond a limit."""

    kind = "theta_watchdog"
    metrics = frozenset({METRIC_NET_THETA})
    default_action = Action.REDUCE_ONLY
    default_scope = ScopeKind.ACCOUNT

    @dataclass(frozen=True)
    class Params:
        max_abs_theta: float = 50_000.0

    def observe_metric(self, target, metric, time_ns):
        limit = self.params_for(target).max_abs_theta
        return self._judge(
            target, abs(metric.value) > limit, time_ns, metric.value, limit,
            f"net theta of {target.label()} is {metric.value:,.0f} per day (limit +-{limit:,.0f})",
        )


class DependencyWatchdog(Watchdog):
    """A service's health RED for N consecutive polls (N is the policy's ``consecutive``).

    ``targets`` maps a service to the scope it protects (``"firm"``, ``"account:ACC1"``);
    services not listed act on ``default_target``.
    """

    kind = "dependency_watchdog"
    inputs = frozenset({EventKind.HEALTH})
    default_action = Action.REDUCE_ONLY

    @dataclass(frozen=True)
    class Params:
        default_target: str = "firm"
        targets: dict | None = None

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._default_target = parse_target(self.params.default_target)
        self._targets = {service: parse_target(text) for service, text in (self.params.targets or {}).items()}

    def observe(self, event: Event) -> list[Finding]:
        health = event.payload
        target = self._targets.get(health.service, self._default_target)
        red = health.status == watchdogs_pb2.HEALTH_STATUS_RED
        # the policy key is the service, so two services do not share a streak
        acted = self.policy.observe(health.service, red, event.time_ns)
        if acted is None:
            return []
        consecutive = acted[0]
        return [
            self._finding(
                target, acted, event.time_ns, consecutive, self.common.consecutive,
                f"service {health.service} red for {consecutive} polls: {health.detail}",
            )
        ]


class PortfolioVolDrawdownWatchdog(_MetricWatchdog):
    """Realised volatility of NAV returns (annualised) against a target, and drawdown from
    the NAV's peak."""

    kind = "portfolio_vol_dd"
    metrics = frozenset({METRIC_NAV})
    default_action = Action.REDUCE_ONLY

    @dataclass(frozen=True)
    class Params:
        target_vol: float = 0.15
        #: Realised vol above target x (1 + tolerance) breaches.
        vol_tolerance: float = 1.0
        returns_window: int = 50
        min_samples: int = 20
        max_drawdown_pct: float = 10.0

    @dataclass
    class _State:
        last_nav: float
        last_ns: int
        peak: float
        returns: deque
        intervals_s: deque

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._states: dict[Target, PortfolioVolDrawdownWatchdog._State] = {}

    def observe_metric(self, target, metric, time_ns):
        params = self.params_for(target)
        nav = metric.value
        state = self._states.get(target)
        if state is None or state.last_nav <= 0:
            self._states[target] = self._State(
                nav, time_ns, nav, deque(maxlen=params.returns_window), deque(maxlen=params.returns_window)
            )
            return []
        if time_ns > state.last_ns:
            state.returns.append(nav / state.last_nav - 1.0)
            state.intervals_s.append((time_ns - state.last_ns) / NANOS_PER_SECOND)
        state.last_nav, state.last_ns = nav, time_ns
        state.peak = max(state.peak, nav)
        drawdown_pct = (1.0 - nav / state.peak) * 100.0 if state.peak > 0 else 0.0
        vol = 0.0
        if len(state.returns) >= params.min_samples:
            per_period = statistics.pstdev(state.returns)
            vol = per_period * math.sqrt(SECONDS_PER_YEAR / statistics.fmean(state.intervals_s))
        vol_limit = params.target_vol * (1.0 + params.vol_tolerance)
        if drawdown_pct > params.max_drawdown_pct:
            return self._judge(
                target, True, time_ns, drawdown_pct, params.max_drawdown_pct,
                f"drawdown of {target.label()} is {drawdown_pct:.1f} % from its peak {state.peak:,.0f}",
            )
        return self._judge(
            target, vol > vol_limit, time_ns, vol, vol_limit,
            f"realised vol of {target.label()} is {vol:.1%} against a target of {params.target_vol:.1%}",
        )


PORTFOLIO_WATCHDOGS: tuple[type[Watchdog], ...] = (
    PredictiveHealthWatchdog,
    DriftMonitorWatchdog,
    VpinWatchdog,
    NewsSpikeWatchdog,
    PositionAnomalyWatchdog,
    DbWatchdog,
    StrategyWatchdog,
    ThetaWatchdog,
    DependencyWatchdog,
    PortfolioVolDrawdownWatchdog,
)
