"""The watchdog configuration: the example file, per-scope parameters, and one error class
per kind of mistake, each a one-line message naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from watchdogs.config import (
    WATCHDOG_CLASSES,
    ConfigFileError,
    InvalidSettingError,
    UnknownSettingError,
    UnknownWatchdogError,
    default_config,
    load_config,
    parse_config,
)
from watchdogs.core import Action, ScopeKind, Target

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "watchdogs.toml"


def test_the_example_configures_every_watchdog():
    config = load_config(EXAMPLE)
    assert {spec.kind for spec in config.watchdogs} == set(WATCHDOG_CLASSES)
    order_rate = next(spec for spec in config.watchdogs if spec.kind == "order_rate")
    assert order_rate.common.action is Action.HALT and order_rate.scope is ScopeKind.STRATEGY
    assert order_rate.scoped_params[Target(ScopeKind.STRATEGY, "MM")].max_orders == 400
    assert order_rate.scoped_params[Target(ScopeKind.STRATEGY, "MM")].window_s == 1.0, "inherits the rest"
    assert len(config.build()) == len(WATCHDOG_CLASSES)


def test_default_config_runs_every_watchdog_with_its_default_action():
    config = default_config()
    assert {spec.kind: spec.common.action for spec in config.watchdogs} == {
        kind: cls.default_action for kind, cls in WATCHDOG_CLASSES.items()
    }


def test_defaults_and_disabled_watchdogs():
    config = parse_config({"watchdogs": {"reject_rate": {}, "vpin": {"enabled": False}}})
    (spec,) = config.watchdogs
    assert spec.common.action is Action.THROTTLE and spec.common.consecutive == 3
    assert config.status_listen == "127.0.0.1:9470" and config.webhooks == ()
    assert config.replay_bound_s == 300.0
    assert parse_config({"worker": {"replay_bound_s": 60}}).replay_bound_s == 60.0


@pytest.mark.parametrize(
    ("document", "error", "names"),
    [
        ({"watchdogs": {"no_such": {}}}, UnknownWatchdogError, "watchdogs.no_such"),
        ({"watchdogs": {"order_rate": {"max_ordres": 1}}}, UnknownSettingError, "max_ordres"),
        ({"watchdogs": {"order_rate": {"strategies": {"A": {"x": 1}}}}}, UnknownSettingError, "strategies.A"),
        ({"wrker": {}}, UnknownSettingError, "wrker"),
        ({"watchdogs": {"order_rate": {"max_orders": "many"}}}, InvalidSettingError, "max_orders"),
        ({"watchdogs": {"order_rate": {"action": "explode"}}}, InvalidSettingError, "action"),
        ({"watchdogs": {"order_rate": {"scope": "galaxy"}}}, InvalidSettingError, "scope"),
        ({"watchdogs": {"order_rate": {"consecutive": 0}}}, InvalidSettingError, "consecutive"),
        ({"watchdogs": {"order_rate": {"cooldown_s": -1}}}, InvalidSettingError, "cooldown_s"),
        ({"watchdogs": {"order_rate": {"throttle_factor": "2"}}}, InvalidSettingError, "throttle_factor"),
        ({"watchdogs": {"dependency_watchdog": {"default_target": "x"}}}, InvalidSettingError, "dependency"),
        ({"worker": {"heartbeat_interval_s": 0}}, InvalidSettingError, "heartbeat_interval_s"),
        ({"worker": {"replay_bound_s": 0}}, InvalidSettingError, "replay_bound_s"),
        ({"webhooks": [{"url": "ftp://x"}]}, InvalidSettingError, "webhooks[0].url"),
        ({"webhooks": [{"url": "http://x", "max_attempts": 0}]}, InvalidSettingError, "max_attempts"),
    ],
)
def test_errors_name_the_key(document, error, names):
    with pytest.raises(error, match=names.replace("[", r"\[").replace("]", r"\]")) as raised:
        parse_config(document, "w.toml")
    assert "\n" not in str(raised.value) and str(raised.value).startswith("w.toml")


def test_file_errors(tmp_path):
    with pytest.raises(ConfigFileError, match="cannot read"):
        load_config(tmp_path / "missing.toml")
    broken = tmp_path / "broken.toml"
    broken.write_text("[watchdogs\n")
    with pytest.raises(ConfigFileError, match="not valid TOML"):
        load_config(broken)
