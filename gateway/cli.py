"""The ``pretrade`` command line.

Subcommands::

    pretrade up           the whole system: embedded nats-server (unless --nats-url) + gateway;
                          demo tokens when no --tokens file is given
    pretrade serve        the gateway only (needs --tokens and a reachable NATS)
    pretrade check        send one order, print the decision
    pretrade rules check  compile a rules file, print its version and counts
    pretrade token new    make a bearer token and the token-file entry that admits it

Every subcommand takes ``--data-dir``, ``--target``, ``--token`` (or ``PRETRADE_TOKEN``) and
``--json``, except ``fix run``/``mt5 run`` (no ``--json``; their ``--target``/``--token``
replace their file's: :func:`add_adapter_options`) and the ledger's (ledger/cli.py); the
commands that call the gateway take ``--tls-ca`` (TLS, trusting that CA) and
``--tls-client-cert``/``--tls-client-key`` (mutual TLS), see :func:`client_credentials`.
``up``/``serve`` serve TLS with ``--tls-cert``/``--tls-key`` (and ``--tls-client-ca`` to
require client certificates). Errors are one readable line on stderr, never a traceback.

Exit codes: 0 success (``check``: the order was ACCEPTED); 1 ``check``: the order was
REJECTED; 2 error (bad usage, bad file, gateway unreachable, call failed); 130 interrupted.
"""

from __future__ import annotations

import os

# gRPC's C core logs its own copy of errors we report as one line (e.g. a port in use);
# GRPC_VERBOSITY=ERROR brings those logs back. Must be set before grpc is imported.
os.environ.setdefault("GRPC_VERBOSITY", "NONE")

import argparse  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import sys  # noqa: E402
from typing import NoReturn  # noqa: E402

from google.protobuf import json_format  # noqa: E402

EXIT_OK = 0
EXIT_REJECTED = 1
EXIT_ERROR = 2
EXIT_INTERRUPTED = 130

TOKEN_ENV_VAR = "PRETRADE_TOKEN"
DEFAULT_CHECK_TIMEOUT_S = 5.0
DEFAULT_LOG_LEVEL = "INFO"
METRICS_OFF = "off"


class CommandError(Exception):
    """A failure the CLI reports as one line and exit code 2."""


class _Parser(argparse.ArgumentParser):
    """argparse that reports usage errors as one line (and exit code 2)."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_ERROR, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _common_options(client_tls: bool = True) -> argparse.ArgumentParser:
    """The shared flags; ``client_tls``: with the ``--tls-*`` client flags (commands that
    call the gateway and honor them)."""
    from gateway.config import DEFAULT_LISTEN

    common = argparse.ArgumentParser(add_help=False)
    _add_data_dir_option(common)
    common.add_argument(
        "--target", default=DEFAULT_LISTEN, help="gateway address to call (default: %(default)s)"
    )
    common.add_argument("--token", help=f"bearer token (default: ${TOKEN_ENV_VAR})")
    common.add_argument("--json", action="store_true", help="machine-readable output")
    if client_tls:
        add_client_tls_options(common)
    return common


def _add_data_dir_option(parser: argparse.ArgumentParser) -> None:
    from gateway.config import DEFAULT_DATA_DIR

    parser.add_argument("--data-dir", default=DEFAULT_DATA_DIR, help="state directory (default: %(default)s)")


def add_adapter_options(parser: argparse.ArgumentParser, section: str) -> None:
    """The flags of ``fix run`` and ``mt5 run``, whose configuration file (its ``section``)
    already names the gateway: ``--data-dir``, ``--target``, ``--token`` and the ``--tls-*``
    client flags. ``--target``/``--token`` default to None so that a value given on the
    command line, in any form argparse accepts, replaces the file's and none leaves it; no
    ``--json``: the adapters print nothing to format."""
    _add_data_dir_option(parser)
    parser.add_argument("--target", help=f"gateway address to call (default: the file's {section}.target)")
    parser.add_argument(
        "--token", help=f"bearer token (default: the file's {section}.token / token_env, else ${TOKEN_ENV_VAR})"
    )
    add_client_tls_options(parser)


def add_client_tls_options(parser: argparse.ArgumentParser) -> None:
    """``--tls-ca``, ``--tls-client-cert``, ``--tls-client-key``: how a command that calls
    the gateway connects (:func:`client_credentials`): ``check``, the halt, ledger and
    watchdog commands, ``fix run`` and ``mt5 run`` (:func:`add_adapter_options`)."""
    parser.add_argument(
        "--tls-ca", metavar="PEM", help="connect with TLS, trusting the gateway certificate's CA in this file"
    )
    parser.add_argument(
        "--tls-client-cert", metavar="PEM", help="client certificate (chain) for mutual TLS (with --tls-ca)"
    )
    parser.add_argument("--tls-client-key", metavar="PEM", help="private key of --tls-client-cert")


def client_credentials(args):
    """The channel credentials the ``--tls-*`` client flags ask for (None: plaintext),
    built by :func:`clients.tls.optional_tls_credentials`, the one way to do it."""
    from clients.tls import optional_tls_credentials

    return optional_tls_credentials(
        getattr(args, "tls_ca", None),
        getattr(args, "tls_client_cert", None),
        getattr(args, "tls_client_key", None),
        settings=("--tls-ca", "--tls-client-cert", "--tls-client-key"),
    )


def add_server_tls_options(parser: argparse.ArgumentParser, where: str = "") -> None:
    """``--tls-cert``, ``--tls-key``, ``--tls-client-ca``: how a server's port speaks TLS
    (:func:`clients.tls.server_tls_credentials`): ``up``/``serve``, and ``ledger run``'s
    ``--listen``. ``where``: which port, in the help (default: the command's one port)."""
    parser.add_argument(
        "--tls-cert",
        metavar="PEM",
        help=f"serve TLS{where} with this certificate (chain); needs --tls-key "
        "(default: plaintext, for localhost only)",
    )
    parser.add_argument("--tls-key", metavar="PEM", help="private key of --tls-cert (unencrypted PEM)")
    parser.add_argument(
        "--tls-client-ca", metavar="PEM", help="mutual TLS: require client certificates signed by this CA"
    )


def _server_options(parser: argparse.ArgumentParser) -> None:
    from gateway.config import (
        DEFAULT_LISTEN,
        DEFAULT_MAX_CONCURRENT_RPCS,
        DEFAULT_MAX_OPEN_STREAMS,
        DEFAULT_METRICS_LISTEN,
        DEFAULT_PUBLISH_LINGER_S,
    )

    parser.add_argument("--rules", required=True, help="rules file (TOML)")
    parser.add_argument("--listen", default=DEFAULT_LISTEN, help="gRPC listen address (default: %(default)s)")
    parser.add_argument("--nats-url", help="NATS server URL")
    parser.add_argument("--tokens", help="token file of [[tokens]] entries (hashes only); SIGHUP reloads it")
    parser.add_argument(
        "--gateway-id", help="gateway id in decisions and subjects (default: host name, else gw1)"
    )
    parser.add_argument(
        "--metrics-listen",
        default=DEFAULT_METRICS_LISTEN,
        help=f"Prometheus /metrics address, or '{METRICS_OFF}' (default: %(default)s)",
    )
    parser.add_argument(
        "--max-concurrent-rpcs",
        type=int,
        default=DEFAULT_MAX_CONCURRENT_RPCS,
        help="calls in flight before RESOURCE_EXHAUSTED (default: %(default)s)",
    )
    parser.add_argument(
        "--max-open-streams",
        type=int,
        default=DEFAULT_MAX_OPEN_STREAMS,
        help="open StreamOrders calls before RESOURCE_EXHAUSTED (default: %(default)s)",
    )
    parser.add_argument(
        "--publish-linger-ms",
        type=float,
        default=DEFAULT_PUBLISH_LINGER_S * 1000,
        help="let decisions gather this long before publishing them to JetStream: less CPU per "
        "decision, later in the ledger and watchdogs; 0 = at once (default: %(default)g)",
    )
    add_server_tls_options(parser)
    parser.add_argument(
        "--log-level", default=DEFAULT_LOG_LEVEL, choices=("DEBUG", "INFO", "WARNING", "ERROR")
    )


def build_parser() -> argparse.ArgumentParser:
    from gateway.config import DEFAULT_NATS_URL

    common = _common_options()
    # Commands without the shared --tls-* client flags: up/serve serve TLS themselves
    # (--tls-cert), rules/token never call the gateway, and `watchdogs run` adds the client
    # flags itself (`fix run`/`mt5 run` take add_adapter_options instead of these).
    local = _common_options(client_tls=False)
    parser = _Parser(prog="pretrade", description="Low-latency pre-trade risk gateway.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    up = commands.add_parser(
        "up",
        parents=[local],
        help="run the whole system (embedded NATS, gateway, halt manager, ledger, watchdogs)",
    )
    _server_options(up)
    up.add_argument(
        "--watchdogs",
        help="watchdog configuration (TOML, see examples/watchdogs.toml; default: every watchdog at its defaults)",
    )
    up.add_argument(
        "--fix-config",
        help="also run the FIX 4.4 adapter on this gateway (its TOML, see examples/fix/adapter.toml)",
    )
    up.add_argument(
        "--mt5-config",
        help="also run the MetaTrader 5 bridge on this gateway (its TOML, see clients/mt5/bridge.example.toml)",
    )
    up.set_defaults(handler=_cmd_up, host_halt_manager=True, host_ledger=True, hosts_companions=True)

    serve = commands.add_parser("serve", parents=[local], help="run the gateway only")
    _server_options(serve)
    serve.set_defaults(handler=_cmd_serve, nats_url_default=DEFAULT_NATS_URL)

    check = commands.add_parser("check", parents=[common], help="send one order and print the decision")
    check.add_argument("--account", required=True)
    check.add_argument("--symbol", required=True)
    check.add_argument("--side", required=True, help="buy, sell or sell_short")
    check.add_argument("--qty", required=True, help="quantity as a decimal, e.g. 100 or 0.5")
    check.add_argument("--price", help="limit price as a decimal (omit for a market order)")
    check.add_argument(
        "--type", dest="order_type", help="limit or market (default: limit with --price, else market)"
    )
    check.add_argument("--strategy", default="")
    check.add_argument("--client-order-id", help="default: a fresh unique id")
    check.add_argument(
        "--request-id", default="", help="idempotency key: a retry returns the original decision"
    )
    check.add_argument(
        "--reference-price",
        help="first send this reference price for --symbol, stamped now (demos without a market-data feed)",
    )
    check.add_argument(
        "--timeout", type=float, default=DEFAULT_CHECK_TIMEOUT_S, help="seconds (default: %(default)s)"
    )
    check.set_defaults(handler=_cmd_check)

    rules = commands.add_parser("rules", help="rules file tools")
    rules_commands = rules.add_subparsers(dest="rules_command", required=True, metavar="COMMAND")
    rules_check = rules_commands.add_parser("check", parents=[local], help="compile a rules file")
    rules_check.add_argument("file")
    rules_check.set_defaults(handler=_cmd_rules_check)

    token = commands.add_parser("token", help="bearer tokens")
    token_commands = token.add_subparsers(dest="token_command", required=True, metavar="COMMAND")
    token_new = token_commands.add_parser("new", parents=[local], help="make a new token")
    token_new.add_argument("--name", required=True, help="principal name")
    token_new.add_argument("--roles", required=True, help="comma-separated: trader, operator, admin")
    token_new.set_defaults(handler=_cmd_token_new)

    # imported here: halts.cli builds on this module (CommandError, shared options)
    import clients.adapters.fix.cli
    import clients.adapters.mt5.cli
    import halts.cli
    import ledger.cli
    import watchdogs.cli

    halts.cli.register(commands, common)
    ledger.cli.register(commands)
    watchdogs.cli.register(commands, local)
    clients.adapters.fix.cli.register(commands)
    clients.adapters.mt5.cli.register(commands)
    return parser


def _print_json(document) -> None:
    print(json.dumps(document, sort_keys=True))


# ------------------------------------------------------------------------------------------
# up / serve
# ------------------------------------------------------------------------------------------


#: The plaintext Unix socket (in the data dir) through which ``pretrade up``'s companions
#: reach a gateway whose port has TLS.
COMPANION_SOCKET = "gateway.sock"


def _gateway_config(args, nats_url: str | None, tokens_path: str):
    from gateway.config import GatewayConfig, default_gateway_id

    tls = args.tls_cert is not None
    return GatewayConfig(
        rules_path=args.rules,
        tokens_path=tokens_path,
        listen=args.listen,
        nats_url=nats_url,
        data_dir=args.data_dir,
        gateway_id=args.gateway_id or default_gateway_id(),
        metrics_listen=None if args.metrics_listen == METRICS_OFF else args.metrics_listen,
        max_concurrent_rpcs=args.max_concurrent_rpcs,
        max_open_streams=args.max_open_streams,
        publish_linger_s=args.publish_linger_ms / 1000,
        host_halt_manager=getattr(args, "host_halt_manager", False),
        host_ledger=getattr(args, "host_ledger", False),
        tls_cert_path=args.tls_cert,
        tls_key_path=args.tls_key,
        tls_client_ca_path=args.tls_client_ca,
        companion_socket=os.path.join(args.data_dir, COMPANION_SOCKET)
        if tls and getattr(args, "hosts_companions", False)
        else None,
    )


def _client_target(listen: str, port: int) -> str:
    """The address a client on this host uses to reach a server bound to ``listen``."""
    host = listen.rpartition(":")[0]
    if host in ("0.0.0.0", "[::]", "::"):
        host = "127.0.0.1"
    return f"{host}:{port}"


def _tls_hints(config) -> tuple[str, str]:
    """What ``pretrade check`` and grpcurl need on the command line to reach ``config``'s
    port: nothing / ``-plaintext`` without TLS, the CA (and a client certificate) with it."""
    if not config.tls:
        return "", "-plaintext"
    check, grpcurl = " --tls-ca CA.pem", "-cacert CA.pem"
    if config.tls_client_ca_path is not None:
        check += " --tls-client-cert CLIENT.pem --tls-client-key CLIENT-KEY.pem"
        grpcurl += " -cert CLIENT.pem -key CLIENT-KEY.pem"
    return check, grpcurl


def _first_order_hint(app, target: str, token: str) -> tuple[str, str] | None:
    """A ready-to-paste ``pretrade check`` line and grpcurl line for the loaded rules (the
    first account and symbol, one lot at 100), or None when the rules declare none."""
    from fastpath.codes import QTY_SCALE
    from fastpath.fixedpoint import from_fixed

    rules = app.engine.rules
    if not rules.accounts or not rules.symbols:
        return None
    account = sorted(rules.accounts)[0]
    symbol = sorted(rules.symbols)[0]
    lot = rules.symbols[symbol].lot_nanos
    quantity = format(from_fixed(lot, QTY_SCALE).normalize(), "f")
    price = "100"
    check_tls, grpcurl_tls = _tls_hints(app.config)
    check_line = (
        f"pretrade check --target {target}{check_tls} --token {token} --account {account} --symbol {symbol} "
        f"--side buy --qty {quantity} --price {price} --reference-price {price}"
    )
    order = {
        "order": {
            "client_order_id": "grpcurl-1",
            "account": account,
            "symbol": symbol,
            "side": "SIDE_BUY",
            "order_type": "ORDER_TYPE_LIMIT",
            "quantity_nanos": str(lot),
            "price_nanos": str(100 * 10**9),
        }
    }
    grpcurl_line = (
        f"grpcurl {grpcurl_tls} -H 'authorization: Bearer {token}' -d '{json.dumps(order)}' "
        f"{target} pretrade.v1.GatewayService/CheckOrder"
    )
    return check_line, grpcurl_line


def _announce(app, args, demo) -> None:
    target = _client_target(app.config.listen, app.port)
    rules = app.engine.rules
    info = {
        "gateway_id": app.config.gateway_id,
        "target": target,
        "rules": rules.source,
        "rules_version": rules.version,
        "nats_url": app.nats_url,
        "metrics": f"http://{_client_target(app.config.metrics_listen, app.metrics_port)}/metrics"
        if app.metrics_port is not None
        else None,
        "tokens": str(demo.plaintext_path) if demo is not None else app.config.tokens_path,
        "demo_tokens": demo is not None,
        "tls": app.config.tls,
        "mutual_tls": app.config.tls_client_ca_path is not None,
    }
    if args.json:
        _print_json(info)
        sys.stdout.flush()
        return
    transport = ("mutual TLS" if info["mutual_tls"] else "TLS") if info["tls"] else "plaintext"
    print(f"pretrade gateway {info['gateway_id']} listening on {target} ({transport})")
    if info["tls"]:
        print("  (CA.pem: the CA of --tls-cert; CLIENT*.pem: a client certificate of --tls-client-ca)")
    print(f"  rules    {rules.source} (version {rules.version[:12]})")
    print(f"  NATS     {app.nats_url}")
    if info["metrics"]:
        print(f"  metrics  {info['metrics']}")
    if demo is not None:
        print(f"  tokens   {demo.plaintext_path} (trader, operators alice and bob, admin, watchdog:default)")
        print("  WARNING: demo tokens are not for production: make real ones with `pretrade token new`")
        hint = _first_order_hint(app, target, demo.tokens["trader"])
        if hint is not None:
            print("First order:")
            print(f"  {hint[0]}")
            print(f"  {hint[1]}")
            print("  (grpcurl's order needs a fresh reference price: run the line above first)")
    print("Ctrl-C stops (SIGHUP reloads the rules and the token file).")
    sys.stdout.flush()


def _watchdog_worker(args, demo):
    """The watchdog worker of ``pretrade up``, made once the gateway is ready. It asks the
    halt manager for graduated responses as ``watchdog:default`` (a demo token) or with
    the token in $PRETRADE_WATCHDOG_TOKEN; with neither it only raises alerts."""
    from watchdogs.cli import WATCHDOG_TOKEN_ENV_VAR
    from watchdogs.config import default_config, load_config
    from watchdogs.worker import WatchdogWorker

    config = load_config(args.watchdogs) if args.watchdogs else default_config()
    token = demo.tokens["watchdog:default"] if demo is not None else os.environ.get(WATCHDOG_TOKEN_ENV_VAR)

    def make(app):
        return WatchdogWorker(config, app.nats_url, _companion_target(app, args), token)

    return make


def _adapter_companions(args, demo) -> list:
    """The adapters of ``pretrade up --fix-config/--mt5-config``, run on this gateway (their
    files are checked now, before anything starts): clients/adapters/companions.py."""
    from clients.adapters.companions import AdapterConfigError, adapter_companions

    try:
        makers = adapter_companions(
            fix_config=args.fix_config,
            mt5_config=args.mt5_config,
            data_dir=args.data_dir,
            token=args.token,
            default_token=demo.tokens["trader"] if demo is not None else None,
        )
    except AdapterConfigError as exc:
        raise CommandError(str(exc)) from None
    return [lambda app, make=make: make(_companion_target(app, args)) for make in makers]


def _companion_target(app, args) -> str:
    """Where a companion of ``pretrade up`` calls this gateway: its port, or, when the port
    has TLS, the plaintext companion socket (they have no certificates of their own)."""
    return app.companion_target or _client_target(args.listen, app.port)


def _run_gateway(args, nats_url: str | None, tokens_path: str, demo, companions=()) -> int:
    import uvloop

    from gateway.app import GatewayApp

    logging.basicConfig(
        level=args.log_level, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    from gateway.server import server_credentials

    config = _gateway_config(args, nats_url, tokens_path)
    server_credentials(config)  # a bad TLS file fails now, before anything starts
    app = GatewayApp(config)
    uvloop.run(app.run(on_started=lambda: _announce(app, args, demo), companions=companions))
    return EXIT_OK


def _cmd_up(args) -> int:
    from gateway.auth import ensure_demo_tokens

    demo = None
    tokens_path = args.tokens
    if tokens_path is None:
        demo = ensure_demo_tokens(args.data_dir)
        tokens_path = str(demo.hashes_path)
    companions = [_watchdog_worker(args, demo), *_adapter_companions(args, demo)]
    return _run_gateway(args, args.nats_url, tokens_path, demo, companions=companions)


def _cmd_serve(args) -> int:
    if args.tokens is None:
        raise CommandError(
            "serve needs --tokens FILE (make entries with `pretrade token new`, "
            "or use `pretrade up` for demo tokens)"
        )
    return _run_gateway(args, args.nats_url or args.nats_url_default, args.tokens, None)


# ------------------------------------------------------------------------------------------
# check
# ------------------------------------------------------------------------------------------


def _describe_decision(decision) -> list[str]:
    from clients.orders import price_from_nanos, qty_from_nanos
    from pretrade.v1 import types_pb2

    order = decision.order
    verdict = types_pb2.Verdict.Name(decision.verdict).removeprefix("VERDICT_")
    side = types_pb2.Side.Name(order.side).removeprefix("SIDE_")
    order_type = types_pb2.OrderType.Name(order.order_type).removeprefix("ORDER_TYPE_")
    quantity = format(qty_from_nanos(order.quantity_nanos).normalize(), "f")
    what = f"{order.account} {side} {quantity} {order.symbol} {order_type}"
    if order.order_type == types_pb2.ORDER_TYPE_LIMIT:
        what += f" @ {format(price_from_nanos(order.price_nanos).normalize(), 'f')}"
    facts = [
        f"seq={decision.sequence}",
        f"gateway={decision.gateway_id}",
        f"rules={decision.rules_version[:12]}",
    ]
    if decision.verdict == types_pb2.VERDICT_ACCEPT:
        facts.insert(1, f"handle={decision.order_handle}")
    if decision.replayed:
        facts.append("replayed")
    lines = [f"{verdict} {order.client_order_id}: {what}  ({' '.join(facts)})"]
    for failure in decision.failures:
        where = f"  [{failure.rule_path}]" if failure.rule_path else ""
        lines.append(f"  {failure.code}: {failure.detail}{where}")
    return lines


def _token(args) -> str:
    token = args.token or os.environ.get(TOKEN_ENV_VAR)
    if not token:
        raise CommandError(f"no token: pass --token or set {TOKEN_ENV_VAR}")
    return token


def _cmd_check(args) -> int:
    from clients import GatewayClient, make_order, make_reference_price
    from pretrade.v1 import types_pb2

    token = _token(args)
    order = make_order(
        account=args.account,
        symbol=args.symbol,
        side=args.side,
        quantity=args.qty,
        price=args.price,
        order_type=args.order_type,
        strategy=args.strategy,
        client_order_id=args.client_order_id,
        request_id=args.request_id,
    )
    with GatewayClient(args.target, token, args.timeout, credentials=client_credentials(args)) as client:
        if args.reference_price is not None:
            price = make_reference_price(args.symbol, args.reference_price)
            if client.update_reference_prices([price]).unknown_symbols:
                print(
                    f"pretrade: warning: reference price ignored: {args.symbol} is not in the rules",
                    file=sys.stderr,
                )
        decision = client.check_order(order)
    if args.json:
        _print_json(json_format.MessageToDict(decision, preserving_proto_field_name=True))
    else:
        print("\n".join(_describe_decision(decision)))
    return EXIT_OK if decision.verdict == types_pb2.VERDICT_ACCEPT else EXIT_REJECTED


# ------------------------------------------------------------------------------------------
# rules check / token new
# ------------------------------------------------------------------------------------------


def _cmd_rules_check(args) -> int:
    from fastpath.rules import load_rules

    rules = load_rules(args.file)
    restrictions = sum(1 for symbol in rules.symbols.values() if symbol.restriction is not None) + sum(
        len(account.restrictions) for account in rules.accounts.values()
    )
    counts = {
        "accounts": len(rules.accounts),
        "symbols": len(rules.symbols),
        "strategies": len(rules.strategies),
        "restrictions": restrictions,
    }
    if args.json:
        _print_json({"file": rules.source, "version": rules.version, **counts})
    else:
        summary = ", ".join(f"{count} {name}" for name, count in counts.items())
        print(f"{rules.source}: ok, version {rules.version}: {summary}")
    return EXIT_OK


def _cmd_token_new(args) -> int:
    from gateway.auth import generate_token, parse_roles, token_entry_toml, token_sha256

    name = args.name.strip()
    if not name or not name.isprintable():
        raise CommandError("--name: must be a non-empty printable name")
    roles = parse_roles(args.roles.split(","))
    token = generate_token()
    entry = token_entry_toml(name, roles, token)
    if args.json:
        _print_json(
            {
                "name": name,
                "roles": sorted(roles),
                "token": token,
                "sha256": token_sha256(token),
                "entry": entry,
            }
        )
    else:
        print(f"token: {token}")
        print("Keep it secret; it is shown only now. Add this entry to the gateway's token file:")
        print()
        print(entry, end="")
    return EXIT_OK


# ------------------------------------------------------------------------------------------
# main
# ------------------------------------------------------------------------------------------


def _known_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that are a user-facing condition (reported as their message)."""
    from clients.errors import GatewayError
    from clients.tls import TlsFileError
    from fastpath.engine import KernelNotBuiltError
    from fastpath.errors import RulesError
    from gateway.auth import InvalidRolesError, TokenFileError
    from gateway.config import ConfigError
    from gateway.embedded_nats import EmbeddedNatsError
    from gateway.outbox import OutboxError
    from gateway.publisher import DecisionSequenceConflictError
    from gateway.server import ListenError
    from gateway.subjects import InvalidSubjectTokenError
    from ledger.cli import known_errors as ledger_known_errors
    from watchdogs.config import WatchdogConfigError
    from watchdogs.scenarios import ScenarioError

    return (
        CommandError,
        GatewayError,
        RulesError,
        TokenFileError,
        InvalidRolesError,
        ConfigError,
        EmbeddedNatsError,
        DecisionSequenceConflictError,
        OutboxError,
        ListenError,
        InvalidSubjectTokenError,
        KernelNotBuiltError,
        TlsFileError,
        WatchdogConfigError,
        ScenarioError,
        *ledger_known_errors(),
    )


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _error_message(exc: BaseException) -> str:
    from clients.errors import GatewayError, InvalidOrder

    if isinstance(exc, InvalidOrder) and exc.violations:
        return "invalid order: " + "; ".join(f"{v.field}: {v.description}" for v in exc.violations)
    if isinstance(exc, GatewayError):
        return f"{type(exc).__name__}: {exc.message}"
    if isinstance(exc, _known_errors()):
        return str(exc)
    return f"unexpected {type(exc).__name__}: {exc}"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_request:  # --help (0) or a usage error (2, already printed)
        return exit_request.code
    try:
        return args.handler(args)
    except KeyboardInterrupt:
        print("pretrade: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # the reader went away (`pretrade ... | head`): not an error; keep Python from
        # complaining again when it flushes stdout at exit
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    except Exception as exc:  # noqa: BLE001 - every error becomes one line, never a traceback
        logging.getLogger("pretrade.cli").debug("command failed", exc_info=True)
        print(f"pretrade: error: {_one_line(_error_message(exc))}", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    # `python -m gateway.cli`: run the imported module's main, not this __main__ copy's, so
    # that the subcommand modules (which import gateway.cli) raise the CommandError main
    # catches as a one-line error.
    from gateway.cli import main as module_main

    sys.exit(module_main())
