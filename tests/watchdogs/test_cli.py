"""``pretrade scenario run`` and ``pretrade watchdogs run`` through :func:`watchdogs.cli.register`
(on a parser of their own, as gateway.cli will call it), with real processes where they block."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import nats
import pytest

from pretrade.v1 import watchdogs_pb2
from watchdogs import cli, subjects

ROOT = Path(__file__).resolve().parents[2]
SCENARIO = ROOT / "examples" / "scenarios" / "dependency_outage.toml"

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


def _main(argv: list[str]) -> int:
    """What ``pretrade`` does once gateway.cli registers these commands."""
    parser = argparse.ArgumentParser(prog="pretrade")
    cli.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.handler(args)


def test_scenario_run_prints_the_table_and_json(tmp_path, capsys):
    assert _main(["scenario", "run", str(SCENARIO), "--speed", "1e7", "--work-dir", str(tmp_path)]) == 0
    table = capsys.readouterr().out
    assert "dependency outage" in table and "PASS" in table and "latency_s" in table
    assert _main(["scenario", "run", str(SCENARIO), "--speed", "1e7", "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert row["passed"] and row["watchdog"] == "dependency_watchdog" and row["enforced"] is True


def test_scenario_run_exits_1_when_a_scenario_fails(tmp_path, capsys):
    failing = tmp_path / "failing.toml"
    failing.write_text(SCENARIO.read_text().replace("sla_s = 30.0", "sla_s = 1.0"))
    assert _main(["scenario", "run", str(failing), "--speed", "1e7"]) == 1
    assert "FAIL" in capsys.readouterr().out


async def test_watchdogs_run_heartbeats_until_sigterm(tmp_path, nats_server):
    config = tmp_path / "watchdogs.toml"
    config.write_text(textwrap.dedent("""
        [worker]
        worker_id = "cli-test"
        heartbeat_interval_s = 0.1
        status_listen = "off"
        [watchdogs.theta_watchdog]
    """))
    nc = await nats.connect(nats_server.url)
    beats: list = []

    async def collect(msg):
        beats.append(watchdogs_pb2.WatchdogHeartbeat.FromString(msg.data))

    await nc.subscribe(subjects.heartbeat_subject("cli-test"), cb=collect)
    argv = ["watchdogs", "run", "--config", str(config), "--nats-url", nats_server.url]
    script = f"import sys; from tests.watchdogs.test_cli import _main; sys.exit(_main({argv!r}))"
    environment = {**os.environ, "PRETRADE_WATCHDOG_TOKEN": ""}
    process = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, env=environment)
    try:
        deadline = time.monotonic() + 20
        while not beats:
            assert time.monotonic() < deadline and process.poll() is None, "no heartbeat"
            await asyncio.sleep(0.05)
        assert list(beats[0].watchdogs) == ["theta_watchdog"]
        process.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(process.wait, 20) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
        await nc.close()
