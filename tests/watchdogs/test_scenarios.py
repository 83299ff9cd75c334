"""Every scenario in examples/scenarios passes end to end at high replay speed: a private
nats-server, a gateway with its halt manager and a watchdog worker, injected through NATS
and the SDK. Also the scenario file errors and the report."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.clients.gateway_harness import ENGINE_OPTIONS
from watchdogs.config import WATCHDOG_CLASSES
from watchdogs.scenarios import (
    InvalidScenarioError,
    ScenarioFileError,
    ScenarioResult,
    format_table,
    load_scenario,
    run_scenario,
    scenario_files,
)

SCENARIOS_DIR = Path(__file__).resolve().parents[2] / "examples" / "scenarios"
#: Scenario seconds per wall second in the suite: a 36 h scenario replays in about 10 ms.
TEST_SPEED = 10_000_000.0
#: Wall-clock seconds to wait for the finding and for enforcement: generous, so that a
#: loaded CI host fails only when something is really missing (a pass takes milliseconds).
PATIENCE_S = 30.0
#: Hard limit of one scenario run (start NATS + gateway + worker, replay, enforce, stop).
SCENARIO_TIMEOUT_S = 120


@pytest.mark.integration
@pytest.mark.timeout(SCENARIO_TIMEOUT_S)
@pytest.mark.parametrize("path", scenario_files(SCENARIOS_DIR), ids=lambda path: path.stem)
async def test_scenario_passes_end_to_end(path, tmp_path):
    scenario = load_scenario(path)
    result = await run_scenario(
        scenario, tmp_path, speed=TEST_SPEED, engine_options=ENGINE_OPTIONS,
        detection_wait_s=PATIENCE_S, enforce_wait_s=PATIENCE_S,
    )
    assert result.passed, format_table([result]) + f"\nfindings: {result.findings}"
    if scenario.expect.enforced_order is not None:
        assert result.enforced and result.halt_request in ("ok", "already_stricter")


def test_every_required_scenario_is_there_and_every_watchdog_has_one():
    names = {path.stem for path in scenario_files(SCENARIOS_DIR)}
    assert {"runaway_strategy", "fat_finger_burst", "market_crash", "stablecoin_depeg", "stale_feed",
            "news_spike", "dependency_outage", "settlement_failure"} <= names
    detected_by = {load_scenario(path).expect.watchdog for path in scenario_files(SCENARIOS_DIR)}
    assert detected_by == set(WATCHDOG_CLASSES)


def test_scenario_file_errors_are_one_line_and_typed(tmp_path):
    with pytest.raises(ScenarioFileError):
        load_scenario(tmp_path / "missing.toml")
    bad_toml = tmp_path / "bad.toml"
    bad_toml.write_text("name = ")
    with pytest.raises(ScenarioFileError):
        load_scenario(bad_toml)
    no_expect = tmp_path / "no_expect.toml"
    no_expect.write_text('name = "x"\n')
    with pytest.raises(InvalidScenarioError, match="expect"):
        load_scenario(no_expect)
    bad_step = tmp_path / "bad_step.toml"
    bad_step.write_text('[expect]\nwatchdog = "order_rate"\nsla_s = 1\n[[steps]]\nkind = "teleport"\n')
    with pytest.raises(InvalidScenarioError, match="steps\\[0\\].kind"):
        load_scenario(bad_step)
    bad_action = tmp_path / "bad_action.toml"
    bad_action.write_text('[expect]\nwatchdog = "order_rate"\nsla_s = 1\naction = "explode"\n')
    with pytest.raises(InvalidScenarioError, match="expect.action"):
        load_scenario(bad_action)
    bad_watchdog = tmp_path / "bad_watchdog.toml"
    bad_watchdog.write_text(
        '[expect]\nwatchdog = "order_rate"\nsla_s = 1\n[watchdogs.order_rate]\nmax_orders = "x"\n'
    )
    with pytest.raises(InvalidScenarioError, match="max_orders"):
        load_scenario(bad_watchdog)


def test_report_marks_a_missed_detection_as_failed():
    missed = ScenarioResult(scenario="s", watchdog="order_rate", sla_s=1.0, expected_action="halt")
    assert not missed.passed
    assert "NO" in format_table([missed]) and "FAIL" in format_table([missed])
