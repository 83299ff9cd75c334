"""``pretrade fix run --config FILE``: run the FIX adapter (needs ``pretrade[fix]``).

Register with ``clients.adapters.fix.cli.register(subparsers)``. ``--target``/``--token``
(:func:`gateway.cli.add_adapter_options`), when given, replace the file's
``gateway.target``/``gateway.token``; ``--tls-ca``/``--tls-client-cert``/``--tls-client-key``
(as for every command that calls the gateway), when given, replace the file's
``gateway.tls_*`` keys.
"""

from __future__ import annotations

import logging
import sys

from gateway.cli import add_adapter_options


def register(subparsers) -> None:
    fix = subparsers.add_parser("fix", help="FIX 4.4 adapter (QuickFIX)")
    commands = fix.add_subparsers(dest="fix_command", required=True, metavar="COMMAND")
    run = commands.add_parser("run", help="run the FIX adapter")
    run.add_argument("--config", required=True, help="adapter configuration (TOML, see examples/fix/)")
    run.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    add_adapter_options(run, "gateway")
    run.set_defaults(handler=cmd_run)


def build_config(args):
    """The adapter configuration of ``args``: the ``--config`` file's, with ``--target``,
    ``--token`` and the ``--tls-*`` flags (checked by ``gateway.cli.client_credentials``) over
    the file's. Raises ``FixConfigError`` or ``clients.tls.TlsFileError`` (one line each)."""
    from clients.adapters.fix.config import load_fix_config
    from gateway.cli import client_credentials

    config = load_fix_config(args.config, args.data_dir)
    credentials = client_credentials(args)
    if credentials is not None:
        config.credentials = credentials
    if args.target is not None:
        config.target = args.target
    if args.token:
        config.token = args.token
    return config


def cmd_run(args) -> int:
    """Errors are :class:`gateway.cli.CommandError`: ``pretrade`` prints them as one line."""
    import asyncio

    from gateway.cli import EXIT_OK, CommandError

    logging.basicConfig(
        level=args.log_level, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        from clients.adapters.fix.adapter import FixAdapter
    except ImportError:
        raise CommandError("the quickfix package is missing: pip install 'pretrade[fix]'") from None
    from clients.adapters.fix.book import OrderBookError
    from clients.adapters.fix.config import FixConfigError

    try:
        config = build_config(args)
    except FixConfigError as exc:
        raise CommandError(str(exc)) from None
    if not config.token:
        raise CommandError("no token: set gateway.token, --token or $PRETRADE_TOKEN")
    try:
        asyncio.run(FixAdapter(config).run_forever())
    except OrderBookError as exc:
        raise CommandError(str(exc)) from None
    return EXIT_OK
