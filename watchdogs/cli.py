"""The watchdog commands of ``pretrade``::

    pretrade watchdogs run --config FILE [--nats-url URL] [--target ADDR] [--token T]
    pretrade scenario run FILE|DIR [--speed X] [--json] [--work-dir DIR]

:func:`register` adds them to the ``pretrade`` parser (call it from ``gateway.cli``'s
``build_parser`` like ``halts.cli.register``). ``watchdogs run`` asks the halt manager on
``--target`` for responses with ``--token`` (or ``$PRETRADE_WATCHDOG_TOKEN``), which must
be an operator token named ``watchdog:<name>``; without a token it only alerts.
``scenario run`` exits 0 when every scenario passed, 1 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
import tempfile

from gateway.cli import EXIT_OK, EXIT_REJECTED, CommandError, add_client_tls_options, client_credentials

#: Where ``watchdogs run`` looks for its token when ``--token`` is not given.
WATCHDOG_TOKEN_ENV_VAR = "PRETRADE_WATCHDOG_TOKEN"


def register(subparsers, common: argparse.ArgumentParser | None = None) -> None:
    """Add ``watchdogs run`` and ``scenario run`` to ``subparsers``; ``common`` holds the
    shared ``--data-dir --target --token --json`` options."""
    parents = [common] if common is not None else [_shared_options()]

    watchdogs = subparsers.add_parser("watchdogs", help="watchdog workers")
    watchdog_commands = watchdogs.add_subparsers(dest="watchdogs_command", required=True, metavar="COMMAND")
    run = watchdog_commands.add_parser("run", parents=parents, help="run a watchdog worker until Ctrl-C")
    run.add_argument(
        "--config", required=True, help="watchdog configuration (TOML, see examples/watchdogs.toml)"
    )
    run.add_argument("--nats-url", help="NATS server URL (default: the gateway's default)")
    run.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    add_client_tls_options(run)
    run.set_defaults(handler=_cmd_watchdogs_run)

    scenario = subparsers.add_parser("scenario", help="failure scenarios")
    scenario_commands = scenario.add_subparsers(dest="scenario_command", required=True, metavar="COMMAND")
    scenario_run = scenario_commands.add_parser(
        "run", parents=parents, help="replay scenarios through a private system and report"
    )
    scenario_run.add_argument("file", help="a scenario file, or a folder of them (examples/scenarios)")
    scenario_run.add_argument(
        "--speed", type=float, default=None,
        help="scenario seconds per wall second (default: 1e6; 1 replays in real time)",
    )
    scenario_run.add_argument(
        "--work-dir", help="where the private NATS and gateway keep state (default: temp)"
    )
    scenario_run.set_defaults(handler=_cmd_scenario_run)


def _shared_options() -> argparse.ArgumentParser:
    from gateway.config import DEFAULT_LISTEN

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--target", default=DEFAULT_LISTEN)
    common.add_argument("--token")
    common.add_argument("--json", action="store_true")
    return common


def _cmd_watchdogs_run(args) -> int:
    from gateway.config import DEFAULT_NATS_URL
    from watchdogs.config import load_config
    from watchdogs.worker import WatchdogWorker

    logging.basicConfig(
        level=args.log_level, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    config = load_config(args.config)
    credentials = client_credentials(args)
    token = args.token or os.environ.get(WATCHDOG_TOKEN_ENV_VAR)
    if not token:
        logging.getLogger(__name__).warning(
            "no token (--token or $%s): findings are alerts only, no halt requests", WATCHDOG_TOKEN_ENV_VAR
        )

    async def run() -> None:
        worker = WatchdogWorker(
            config, args.nats_url or DEFAULT_NATS_URL, args.target, token, credentials=credentials
        )
        await worker.start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        try:
            await stop.wait()
        finally:
            await worker.stop()

    asyncio.run(run())
    return EXIT_OK


def _cmd_scenario_run(args) -> int:
    from watchdogs.scenarios import (
        DEFAULT_SPEED,
        format_table,
        load_scenario,
        results_json,
        run_scenario,
        scenario_files,
    )

    files = scenario_files(args.file)
    if not files:
        raise CommandError(f"{args.file}: no scenario files (*.toml)")
    scenarios = [load_scenario(path) for path in files]
    speed = args.speed if args.speed is not None else DEFAULT_SPEED
    if speed <= 0:
        raise CommandError("--speed must be > 0")

    async def run_all():
        results = []
        for index, scenario in enumerate(scenarios):
            with _work_dir(args.work_dir, index) as work_dir:
                results.append(await run_scenario(scenario, work_dir, speed=speed))
        return results

    logging.basicConfig(level=logging.ERROR, stream=sys.stderr)
    results = asyncio.run(run_all())
    print(results_json(results) if args.json else format_table(results))
    return EXIT_OK if all(result.passed for result in results) else EXIT_REJECTED


@contextlib.contextmanager
def _work_dir(base: str | None, index: int):
    if base is not None:
        yield os.path.join(base, f"scenario-{index}")
        return
    with tempfile.TemporaryDirectory(prefix="pretrade-scenario-") as directory:
        yield directory
