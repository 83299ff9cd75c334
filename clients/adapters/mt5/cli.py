"""``pretrade mt5 run --config FILE``: run the MT5 bridge.

Register with ``clients.adapters.mt5.cli.register(subparsers)``. ``--target``/``--token``
(:func:`gateway.cli.add_adapter_options`), when given, replace the file's
``bridge.target``/``bridge.token``; ``--tls-ca``/``--tls-client-cert``/``--tls-client-key`` (as
for every command that calls the gateway), when given, replace the file's ``bridge.tls_*``.
The execution reports owed to the gateway are kept in ``bridge.state_file``, else
``<--data-dir>/mt5/reports.sqlite``.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys

from gateway.cli import add_adapter_options


def register(subparsers) -> None:
    mt5 = subparsers.add_parser("mt5", help="MetaTrader 5 bridge")
    mt5_commands = mt5.add_subparsers(dest="mt5_command", required=True, metavar="COMMAND")
    run = mt5_commands.add_parser("run", help="run the MT5 bridge")
    run.add_argument("--config", required=True, help="bridge configuration (TOML, see docs/adapters.md)")
    run.add_argument("--listen", help="override bridge.listen (host:port)")
    run.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    add_adapter_options(run, "bridge")
    run.set_defaults(handler=cmd_run)


def build_config(args):
    """The bridge configuration of ``args``: the ``--config`` file's, with the flags over it.
    Raises ``ConfigError`` or ``clients.tls.TlsFileError`` (one line each)."""
    from clients.adapters.mt5.config import load_config
    from gateway.cli import client_credentials

    config = load_config(args.config, args.data_dir)
    overrides = {}
    credentials = client_credentials(args)
    if credentials is not None:
        overrides["credentials"] = credentials
    if args.listen:
        overrides["listen"] = args.listen
    token = args.token or (None if config.token else os.environ.get("PRETRADE_TOKEN"))
    if token:
        overrides["token"] = token
    if args.target is not None:
        overrides["target"] = args.target
    return dataclasses.replace(config, **overrides)


def cmd_run(args) -> int:
    """Errors are :class:`gateway.cli.CommandError`: ``pretrade`` prints them as one line."""
    import asyncio

    from clients.adapters.mt5.bridge import Mt5Bridge
    from clients.adapters.mt5.config import ConfigError
    from clients.adapters.reports import StateFileError
    from gateway.cli import EXIT_OK, CommandError

    logging.basicConfig(
        level=args.log_level, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        config = build_config(args)
    except ConfigError as exc:
        raise CommandError(str(exc)) from None
    if not config.token:
        raise CommandError("no token: set bridge.token, --token or $PRETRADE_TOKEN")
    try:
        asyncio.run(Mt5Bridge(config).run_forever())
    except StateFileError as exc:
        raise CommandError(str(exc)) from None
    return EXIT_OK
