"""The watchdog interface: events in, findings out, in event time.

A watchdog is a pure object: :meth:`Watchdog.observe` takes one :class:`Event` (a decoded
NATS message with its event timestamp) and returns the findings it completes. It never
reads the wall clock, never does I/O and never sleeps, so a replay can feed it a day of
events in a second and a unit test can drive it without NATS. The worker
(``watchdogs/worker.py``) does the I/O: it decodes messages into events, and turns findings
into alerts, webhooks and halt requests.

"No phantom halts": every watchdog decides *breached or not* per observation and hands
that to a :class:`BreachPolicy`, which acts only after ``consecutive`` breaching
observations in a row for the same key, and then stays quiet for ``cooldown_s`` of event
time for that key.
"""

from __future__ import annotations

import abc
import enum
from dataclasses import dataclass, field
from typing import Any, ClassVar, Hashable

from pretrade.v1 import trading_pb2, watchdogs_pb2

NANOS_PER_SECOND = 1_000_000_000
#: Breaching observations in a row before a watchdog acts, unless configured.
DEFAULT_CONSECUTIVE = 3
#: Event-time seconds a watchdog stays quiet for a key after acting on it, unless configured.
DEFAULT_COOLDOWN_S = 60.0


class EventKind(str, enum.Enum):
    """What an :class:`Event` carries; each maps to one documented NATS input."""

    DECISION = "decision"  # pretrade.v1.Decision
    EXECUTION = "execution"  # pretrade.v1.ExecutionReported (from a GatewayEvent)
    REFERENCE_PRICE = "reference_price"  # pretrade.v1.ReferencePrice
    TRADE = "trade"  # pretrade.v1.Trade
    NEWS = "news"  # pretrade.v1.NewsCount
    METRIC = "metric"  # pretrade.v1.StrategyMetric
    HEALTH = "health"  # pretrade.v1.ServiceHealth


@dataclass(frozen=True)
class Event:
    """One observation: its kind, its event time (Unix epoch ns) and the decoded payload."""

    kind: EventKind
    time_ns: int
    payload: Any


class Action(enum.IntEnum):
    """The graduated responses, mildest first; values are the proto ``WatchdogAction``."""

    WARN = watchdogs_pb2.WATCHDOG_ACTION_WARN
    THROTTLE = watchdogs_pb2.WATCHDOG_ACTION_THROTTLE
    REDUCE_ONLY = watchdogs_pb2.WATCHDOG_ACTION_REDUCE_ONLY
    HALT = watchdogs_pb2.WATCHDOG_ACTION_HALT

    @classmethod
    def parse(cls, text: str) -> Action:
        return cls[text.strip().upper().replace("-", "_")]


class ScopeKind(enum.IntEnum):
    """Where a finding applies; values are the proto ``Scope``."""

    FIRM = trading_pb2.SCOPE_FIRM
    ACCOUNT = trading_pb2.SCOPE_ACCOUNT
    STRATEGY = trading_pb2.SCOPE_STRATEGY
    SYMBOL = trading_pb2.SCOPE_SYMBOL

    @classmethod
    def parse(cls, text: str) -> ScopeKind:
        return cls[text.strip().upper()]


@dataclass(frozen=True)
class Target:
    """A scope and its name (empty for FIRM): the key of a watchdog's state and findings."""

    scope: ScopeKind
    name: str = ""

    def label(self) -> str:
        scope = self.scope.name.lower()
        return scope if self.scope is ScopeKind.FIRM else f"{scope}:{self.name}"


FIRM = Target(ScopeKind.FIRM)


@dataclass(frozen=True)
class Finding:
    """A breach a watchdog acts on. The worker turns it into a ``pretrade.v1.Finding``."""

    watchdog: str
    target: Target
    action: Action
    observed: float
    limit: float
    message: str
    event_ns: int
    breach_started_ns: int
    consecutive: int

    def to_proto(self, *, finding_id: str, worker_id: str, emitted_ns: int) -> watchdogs_pb2.Finding:
        severity = (
            watchdogs_pb2.FINDING_SEVERITY_WARNING
            if self.action is Action.WARN
            else watchdogs_pb2.FINDING_SEVERITY_CRITICAL
        )
        return watchdogs_pb2.Finding(
            finding_id=finding_id,
            watchdog=self.watchdog,
            scope=int(self.target.scope),
            name=self.target.name,
            action=int(self.action),
            severity=severity,
            observed=self.observed,
            limit=self.limit,
            message=self.message,
            event_ns=self.event_ns,
            breach_started_ns=self.breach_started_ns,
            emitted_ns=emitted_ns,
            consecutive=self.consecutive,
            worker_id=worker_id,
        )


@dataclass
class _Streak:
    count: int = 0
    started_ns: int = 0
    quiet_until_ns: int = 0


class BreachPolicy:
    """N consecutive breaching observations before acting, then a cooldown, per key.

    A non-breaching observation resets the key's streak. During the cooldown (event time)
    breaches neither act nor build a streak, so the first action after the cooldown again
    needs ``consecutive`` fresh breaches.
    """

    def __init__(
        self, consecutive: int = DEFAULT_CONSECUTIVE, cooldown_s: float = DEFAULT_COOLDOWN_S
    ) -> None:
        if consecutive < 1:
            raise ValueError("consecutive must be >= 1")
        if cooldown_s < 0:
            raise ValueError("cooldown_s must be >= 0")
        self.consecutive = consecutive
        self.cooldown_ns = int(cooldown_s * NANOS_PER_SECOND)
        self._streaks: dict[Hashable, _Streak] = {}

    def observe(self, key: Hashable, breached: bool, event_ns: int) -> tuple[int, int] | None:
        """``(consecutive, breach_started_ns)`` when this observation completes a breach to
        act on, else None."""
        streak = self._streaks.get(key)
        if streak is None:
            if not breached:
                return None
            streak = self._streaks[key] = _Streak()
        if event_ns < streak.quiet_until_ns:
            return None
        if not breached:
            streak.count = 0
            return None
        if streak.count == 0:
            streak.started_ns = event_ns
        streak.count += 1
        if streak.count < self.consecutive:
            return None
        acted = (streak.count, streak.started_ns)
        streak.count = 0
        streak.quiet_until_ns = event_ns + self.cooldown_ns
        return acted


@dataclass(frozen=True)
class CommonSettings:
    """What every watchdog has besides its own parameters."""

    action: Action
    consecutive: int = DEFAULT_CONSECUTIVE
    cooldown_s: float = DEFAULT_COOLDOWN_S
    #: Throttle factor asked for by the THROTTLE action ("halve allocation").
    throttle_factor: str = "0.5"
    #: Seconds a throttle stays in force.
    throttle_duration_s: int = 900


class Watchdog(abc.ABC):
    """Base class: subclasses set ``kind``, ``inputs``, ``default_action``, ``Params`` (a
    dataclass of their parameters with defaults) and implement :meth:`observe`.

    Per-scope parameters: ``self.params_for(target)`` returns the parameters configured for
    that account, strategy or symbol (``[watchdogs.<kind>.accounts.<name>]`` ...), else the
    watchdog's own.
    """

    kind: ClassVar[str]
    inputs: ClassVar[frozenset[EventKind]]
    default_action: ClassVar[Action] = Action.WARN
    #: The scope a finding applies to when the watchdog can act at more than one.
    default_scope: ClassVar[ScopeKind] = ScopeKind.FIRM

    @dataclass(frozen=True)
    class Params:
        pass

    def __init__(
        self,
        params: Any | None = None,
        common: CommonSettings | None = None,
        *,
        scoped_params: dict[Target, Any] | None = None,
        scope: ScopeKind | None = None,
    ) -> None:
        self.params = params if params is not None else self.Params()
        self.common = common if common is not None else CommonSettings(action=self.default_action)
        self.scoped_params = dict(scoped_params or {})
        self.scope = scope if scope is not None else self.default_scope
        self.policy = BreachPolicy(self.common.consecutive, self.common.cooldown_s)

    def params_for(self, target: Target) -> Any:
        return self.scoped_params.get(target, self.params)

    @abc.abstractmethod
    def observe(self, event: Event) -> list[Finding]:
        """The findings one event leads to (usually none)."""

    def _judge(
        self, target: Target, breached: bool, event_ns: int, observed: float, limit: float, message: str
    ) -> list[Finding]:
        """Feed one observation to the policy, keyed by its target; the finding when it
        completes a breach."""
        acted = self.policy.observe(target, breached, event_ns)
        if acted is None:
            return []
        return [self._finding(target, acted, event_ns, float(observed), float(limit), message)]

    def _finding(
        self, target: Target, acted: tuple[int, int], event_ns: int, observed: float, limit: float, message: str
    ) -> Finding:
        """The finding for a breach the policy acted on; ``acted`` is what
        :meth:`BreachPolicy.observe` returned. Separate from :meth:`_judge` for the watchdogs
        whose policy key is not the finding's target."""
        consecutive, started_ns = acted
        return Finding(
            watchdog=self.kind,
            target=target,
            action=self.common.action,
            observed=observed,
            limit=limit,
            message=message,
            event_ns=event_ns,
            breach_started_ns=started_ns,
            consecutive=consecutive,
        )


@dataclass
class EventTimeWindow:
    """Values in a sliding window of event time (seconds); ``total`` is their sum."""

    window_s: float
    _items: list[tuple[int, float]] = field(default_factory=list)
    total: float = 0.0
    _head: int = 0

    def add(self, time_ns: int, value: float = 1.0) -> None:
        self._items.append((time_ns, value))
        self.total += value
        self.expire(time_ns)

    def expire(self, now_ns: int) -> None:
        horizon = now_ns - int(self.window_s * NANOS_PER_SECOND)
        items = self._items
        while self._head < len(items) and items[self._head][0] <= horizon:
            self.total -= items[self._head][1]
            self._head += 1
        if self._head > 1024 and self._head * 2 > len(items):
            del items[: self._head]
            self._head = 0

    def __len__(self) -> int:
        return len(self._items) - self._head

    def values(self) -> list[float]:
        return [value for _, value in self._items[self._head :]]


class PerTargetWindows:
    """One :class:`EventTimeWindow` per target, made on the target's first value.

    The window's length is fixed when it is made: a target's parameters (``params_for``)
    do not change while a watchdog runs, so the caller passes the target's own length.
    """

    def __init__(self) -> None:
        self._windows: dict[Target, EventTimeWindow] = {}

    def get(self, target: Target, window_s: float) -> EventTimeWindow:
        window = self._windows.get(target)
        if window is None:
            window = self._windows[target] = EventTimeWindow(window_s)
        return window


class WindowedWatchdog(Watchdog):
    """Base of the watchdogs that judge a sum or count over a sliding window of event time,
    one window per target, after every value added to it.

    Subclasses decide which target an event feeds and what it adds, call
    :meth:`_add_to_window`, and say what breaches in :meth:`judge_window`. Their ``Params``
    have ``window_s``, which may differ per target (``[watchdogs.<kind>.accounts.<name>]``).
    A watchdog whose events come through another base lists that base first, e.g.
    ``class StrategyWatchdog(_MetricWatchdog, WindowedWatchdog)``: the first turns events
    into a target and a value, this one keeps the windows.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._windows = PerTargetWindows()

    def _add_to_window(self, target: Target, time_ns: int, value: float = 1.0) -> list[Finding]:
        """Add ``value`` at ``time_ns`` to the target's window, then judge the window."""
        params = self.params_for(target)
        window = self._windows.get(target, params.window_s)
        window.add(time_ns, value)
        return self.judge_window(target, params, window, time_ns)

    @abc.abstractmethod
    def judge_window(
        self, target: Target, params: Any, window: EventTimeWindow, time_ns: int
    ) -> list[Finding]:
        """The findings of the target's window just after a value was added (``params`` are
        the target's own); usually one :meth:`_judge` call."""
