"""Watchdog configuration in TOML: which watchdogs run, their parameters per account,
strategy and symbol, the action each takes, webhooks and the worker's own settings.

::

    [worker]
    worker_id = "watchdogs"            # heartbeat subject and finding ids
    heartbeat_interval_s = 5.0
    status_listen = "127.0.0.1:9470"   # GET /status (JSON) and /metrics; "off" to disable
    replay_bound_s = 300.0             # how far back a new JetStream consumer starts

    [[webhooks]]
    url = "https://hooks.example.com/T000/B000"
    min_action = "warn"                # post findings at or above this action

    [watchdogs.order_rate]             # a table per watchdog that runs
    action = "halt"                    # warn | throttle | reduce_only | halt
    scope = "strategy"                 # what the finding applies to (where it can vary)
    consecutive = 3                    # breaching observations in a row before acting
    cooldown_s = 60                    # event-time seconds of quiet after acting
    window_s = 1.0                     # the watchdog's own parameters ...
    max_orders = 100

    [watchdogs.order_rate.strategies.ALGO]   # ... overridden for one strategy
    max_orders = 500

Every error is one line naming the file and the key, raised as one of the
:class:`WatchdogConfigError` subclasses.
"""

from __future__ import annotations

import dataclasses
import math
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from watchdogs.core import Action, CommonSettings, ScopeKind, Target, Watchdog
from watchdogs.flow import FLOW_WATCHDOGS
from watchdogs.portfolio import PORTFOLIO_WATCHDOGS

#: Every watchdog by its ``kind``.
WATCHDOG_CLASSES: dict[str, type[Watchdog]] = {cls.kind: cls for cls in FLOW_WATCHDOGS + PORTFOLIO_WATCHDOGS}

DEFAULT_WORKER_ID = "watchdogs"
DEFAULT_HEARTBEAT_INTERVAL_S = 5.0
#: How far back (seconds) a worker's JetStream consumers start when they are (re)created:
#: five times the longest default window of a flow watchdog (repeated_executions, 60 s).
DEFAULT_REPLAY_BOUND_S = 300.0
DEFAULT_STATUS_LISTEN = "127.0.0.1:9470"
STATUS_OFF = "off"
DEFAULT_WEBHOOK_MAX_ATTEMPTS = 5
DEFAULT_WEBHOOK_BACKOFF_S = 0.5
DEFAULT_WEBHOOK_TIMEOUT_S = 5.0

_COMMON_KEYS = frozenset(
    {"enabled", "action", "scope", "consecutive", "cooldown_s", "throttle_factor", "throttle_duration_s"}
)
_SCOPED_TABLES = {
    "accounts": ScopeKind.ACCOUNT,
    "strategies": ScopeKind.STRATEGY,
    "symbols": ScopeKind.SYMBOL,
}
_WORKER_KEYS = frozenset({"worker_id", "heartbeat_interval_s", "status_listen", "replay_bound_s"})
_WEBHOOK_KEYS = frozenset({"url", "min_action", "max_attempts", "backoff_s", "timeout_s"})


class WatchdogConfigError(ValueError):
    """Base of every configuration error (one line, naming the file and key)."""


class ConfigFileError(WatchdogConfigError):
    """The file cannot be read or is not valid TOML."""


class UnknownWatchdogError(WatchdogConfigError):
    """A ``[watchdogs.<kind>]`` table for a kind that does not exist."""


class UnknownSettingError(WatchdogConfigError):
    """A key that is not a setting of its table."""


class InvalidSettingError(WatchdogConfigError):
    """A setting of the wrong type or out of range."""


@dataclass(frozen=True)
class WebhookConfig:
    url: str
    min_action: Action = Action.WARN
    max_attempts: int = DEFAULT_WEBHOOK_MAX_ATTEMPTS
    backoff_s: float = DEFAULT_WEBHOOK_BACKOFF_S
    timeout_s: float = DEFAULT_WEBHOOK_TIMEOUT_S


@dataclass(frozen=True)
class WatchdogSpec:
    """One configured watchdog: what :meth:`build` needs to make a fresh instance."""

    kind: str
    params: Any
    common: CommonSettings
    scope: ScopeKind
    scoped_params: dict[Target, Any] = field(default_factory=dict)

    def build(self) -> Watchdog:
        cls = WATCHDOG_CLASSES[self.kind]
        return cls(self.params, self.common, scoped_params=self.scoped_params, scope=self.scope)


@dataclass(frozen=True)
class WatchdogsConfig:
    worker_id: str = DEFAULT_WORKER_ID
    heartbeat_interval_s: float = DEFAULT_HEARTBEAT_INTERVAL_S
    status_listen: str = DEFAULT_STATUS_LISTEN
    replay_bound_s: float = DEFAULT_REPLAY_BOUND_S
    webhooks: tuple[WebhookConfig, ...] = ()
    watchdogs: tuple[WatchdogSpec, ...] = ()

    def build(self) -> list[Watchdog]:
        return [spec.build() for spec in self.watchdogs]


def default_config() -> WatchdogsConfig:
    """Every watchdog with its documented defaults (what ``pretrade up`` runs when it is
    given no watchdog configuration)."""
    return parse_config({"watchdogs": {kind: {} for kind in WATCHDOG_CLASSES}}, "<defaults>")


def load_config(path: str | os.PathLike) -> WatchdogsConfig:
    source = str(path)
    try:
        document = tomllib.loads(Path(path).read_text())
    except OSError as exc:
        raise ConfigFileError(f"{source}: cannot read: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigFileError(f"{source}: not valid TOML: {exc}") from None
    return parse_config(document, source)


def parse_config(document: dict, source: str = "<config>") -> WatchdogsConfig:
    """The config of a parsed TOML document (``source`` names it in errors)."""
    _no_unknown(document, {"worker", "webhooks", "watchdogs"}, source)
    worker = document.get("worker", {})
    _no_unknown(worker, _WORKER_KEYS, f"{source}: worker")
    heartbeat = _number(
        worker.get("heartbeat_interval_s", DEFAULT_HEARTBEAT_INTERVAL_S),
        f"{source}: worker.heartbeat_interval_s",
    )
    if heartbeat <= 0:
        raise InvalidSettingError(f"{source}: worker.heartbeat_interval_s: must be > 0")
    replay_bound = _number(
        worker.get("replay_bound_s", DEFAULT_REPLAY_BOUND_S), f"{source}: worker.replay_bound_s"
    )
    if replay_bound <= 0:
        raise InvalidSettingError(f"{source}: worker.replay_bound_s: must be > 0")
    webhooks = tuple(
        _webhook(raw, f"{source}: webhooks[{index}]")
        for index, raw in enumerate(document.get("webhooks", []))
    )
    specs = []
    for kind, table in document.get("watchdogs", {}).items():
        where = f"{source}: watchdogs.{kind}"
        if kind not in WATCHDOG_CLASSES:
            known = ", ".join(sorted(WATCHDOG_CLASSES))
            raise UnknownWatchdogError(f"{where}: unknown watchdog (known: {known})")
        if not isinstance(table, dict):
            raise InvalidSettingError(f"{where}: must be a table")
        if table.get("enabled", True) is False:
            continue
        specs.append(_watchdog_spec(WATCHDOG_CLASSES[kind], table, where))
    return WatchdogsConfig(
        worker_id=_string(worker.get("worker_id", DEFAULT_WORKER_ID), f"{source}: worker.worker_id"),
        heartbeat_interval_s=heartbeat,
        status_listen=_string(
            worker.get("status_listen", DEFAULT_STATUS_LISTEN), f"{source}: worker.status_listen"
        ),
        replay_bound_s=replay_bound,
        webhooks=webhooks,
        watchdogs=tuple(specs),
    )


def _watchdog_spec(cls: type[Watchdog], table: dict, where: str) -> WatchdogSpec:
    param_fields = {f.name: f for f in dataclasses.fields(cls.Params)}
    _no_unknown(table, _COMMON_KEYS | set(param_fields) | set(_SCOPED_TABLES), where)
    try:
        action = Action.parse(table.get("action", cls.default_action.name))
    except (KeyError, AttributeError):
        raise InvalidSettingError(f"{where}.action: one of warn, throttle, reduce_only, halt") from None
    try:
        scope = ScopeKind.parse(table.get("scope", cls.default_scope.name))
    except (KeyError, AttributeError):
        raise InvalidSettingError(f"{where}.scope: one of firm, account, strategy, symbol") from None
    consecutive = table.get("consecutive", CommonSettings.consecutive)
    if not isinstance(consecutive, int) or isinstance(consecutive, bool) or consecutive < 1:
        raise InvalidSettingError(f"{where}.consecutive: an integer >= 1")
    cooldown_s = _number(table.get("cooldown_s", CommonSettings.cooldown_s), f"{where}.cooldown_s")
    if cooldown_s < 0:
        raise InvalidSettingError(f"{where}.cooldown_s: must be >= 0")
    throttle_factor = str(table.get("throttle_factor", CommonSettings.throttle_factor))
    try:
        factor_ok = 0 < float(throttle_factor) <= 1
    except ValueError:
        factor_ok = False
    if not factor_ok:
        raise InvalidSettingError(f"{where}.throttle_factor: a decimal in (0, 1]")
    throttle_duration_s = table.get("throttle_duration_s", CommonSettings.throttle_duration_s)
    if not isinstance(throttle_duration_s, int) or throttle_duration_s <= 0:
        raise InvalidSettingError(f"{where}.throttle_duration_s: an integer > 0")
    base = {name: table[name] for name in param_fields if name in table}
    params = _params(cls, base, {}, where)
    scoped: dict[Target, Any] = {}
    for table_name, scope_kind in _SCOPED_TABLES.items():
        for name, overrides in table.get(table_name, {}).items():
            scoped_where = f"{where}.{table_name}.{name}"
            if not isinstance(overrides, dict):
                raise InvalidSettingError(f"{scoped_where}: must be a table")
            _no_unknown(overrides, set(param_fields), scoped_where)
            scoped[Target(scope_kind, name)] = _params(cls, base, overrides, scoped_where)
    common = CommonSettings(
        action=action, consecutive=consecutive, cooldown_s=cooldown_s,
        throttle_factor=throttle_factor, throttle_duration_s=throttle_duration_s,
    )
    spec = WatchdogSpec(cls.kind, params, common, scope, scoped)
    try:
        spec.build()  # parameters a watchdog checks itself (e.g. dependency targets)
    except ValueError as exc:
        raise InvalidSettingError(f"{where}: {exc}") from None
    return spec


def _params(cls: type[Watchdog], base: dict, overrides: dict, where: str):
    values = {**base, **overrides}
    for f in dataclasses.fields(cls.Params):
        if f.name not in values:
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        values[f.name] = _coerce(values[f.name], default, f"{where}.{f.name}")
    return cls.Params(**values)


def _coerce(value: Any, default: Any, where: str) -> Any:
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise InvalidSettingError(f"{where}: true or false")
        return value
    if isinstance(default, int):
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise InvalidSettingError(f"{where}: an integer >= 0")
        return value
    if isinstance(default, float):
        number = _number(value, where)
        if math.isnan(number):
            raise InvalidSettingError(f"{where}: a number")
        return number
    if isinstance(default, str):
        return _string(value, where)
    if isinstance(default, dict) or default is None:
        if not isinstance(value, dict):
            raise InvalidSettingError(f"{where}: a table")
        return dict(value)
    return value


def _webhook(raw: Any, where: str) -> WebhookConfig:
    if not isinstance(raw, dict):
        raise InvalidSettingError(f"{where}: must be a table")
    _no_unknown(raw, _WEBHOOK_KEYS, where)
    url = _string(raw.get("url", ""), f"{where}.url")
    if not url.startswith(("http://", "https://")):
        raise InvalidSettingError(f"{where}.url: an http:// or https:// URL")
    try:
        min_action = Action.parse(raw.get("min_action", "warn"))
    except (KeyError, AttributeError):
        raise InvalidSettingError(f"{where}.min_action: one of warn, throttle, reduce_only, halt") from None
    attempts = raw.get("max_attempts", DEFAULT_WEBHOOK_MAX_ATTEMPTS)
    if not isinstance(attempts, int) or attempts < 1:
        raise InvalidSettingError(f"{where}.max_attempts: an integer >= 1")
    return WebhookConfig(
        url=url, min_action=min_action, max_attempts=attempts,
        backoff_s=_number(raw.get("backoff_s", DEFAULT_WEBHOOK_BACKOFF_S), f"{where}.backoff_s"),
        timeout_s=_number(raw.get("timeout_s", DEFAULT_WEBHOOK_TIMEOUT_S), f"{where}.timeout_s"),
    )


def _no_unknown(table: Any, allowed: set | frozenset, where: str) -> None:
    if not isinstance(table, dict):
        raise InvalidSettingError(f"{where}: must be a table")
    unknown = set(table) - set(allowed)
    if unknown:
        raise UnknownSettingError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}")


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidSettingError(f"{where}: a number")
    return float(value)


def _string(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise InvalidSettingError(f"{where}: a string")
    return value
