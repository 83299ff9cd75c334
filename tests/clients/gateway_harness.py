"""A real gateway for integration tests: GatewayApp on loopback port 0 with demo tokens.

Shared by the gateway integration tests (``tests/gateway/test_server_integration.py``,
``tests/gateway/test_cli.py``) and the SDK tests. Everything is real: rules compiler,
engine, outbox, publisher, nats-server, gRPC. The engine runs the compiled kernel;
only a source tree whose kernel was never built falls back to the reference kernel (same
semantics, proven by the parity suite), so these tests still exercise the gateway.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass
from pathlib import Path

from clients import AsyncGatewayClient, make_reference_price
from gateway.app import GatewayApp
from gateway.auth import ensure_demo_tokens
from gateway.config import GatewayConfig

try:
    import fastpath.kernel  # noqa: F401

    ENGINE_OPTIONS: dict[str, object] = {}
except ImportError:
    from fastpath.reference import ReferenceKernel

    ENGINE_OPTIONS = {"kernel_class": ReferenceKernel}

GATEWAY_ID = "gwtest"
START_TIMEOUT_S = 20.0
READY_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 20.0

#: Rules in which every check the kernel can produce is reachable with one or a few
#: orders, each scenario on its own account so that they do not interfere.
CHECKS_RULES = """
[firm]
name = "TEST"
max_reference_age_ms = 60000
self_match_prevention = true
duplicate_content_window_ms = 60000
require_strategy = false

[firm.limits]
max_order_qty = 1_000
max_order_notional = 100_000
max_long_position = 5_000
max_short_position = 100
price_collar_pct = 5
price_collar_ticks = "unlimited"
max_working_orders = 5
order_rate_limit = { orders = 1_000, window_ms = 1000 }
# No credit_limit here: every account sets its own except NOLIMIT (MISSING_LIMIT).

[firm.strategy_limits]
order_rate_limit = { orders = 2, window_ms = 60000 }

[symbols.AAPL]
tick_size = "0.01"
lot_size = 1

[symbols.LOTS]
tick_size = "0.01"
lot_size = 10

[symbols.FAST]
tick_size = "0.01"
lot_size = 1
max_reference_age_ms = 1000

[symbols.NOREF]
tick_size = "0.01"
lot_size = 1

[symbols.HTB]
tick_size = "0.01"
lot_size = 1

[strategies.ALGO]

[accounts.ACC1.limits]
credit_limit = 1_000_000

[accounts.CREDIT.limits]
credit_limit = 250_000

[accounts.LONG.limits]
credit_limit = 1_000_000
max_long_position = 10

[accounts.SLOW.limits]
credit_limit = 1_000_000
order_rate_limit = { orders = 1, window_ms = 60000 }

[accounts.NOLIMIT]
self_match_prevention = true

[accounts.STRAT.limits]
credit_limit = 1_000_000

[accounts.DUP.limits]
credit_limit = 1_000_000

[accounts.WORK.limits]
credit_limit = 1_000_000

[accounts.SMP.limits]
credit_limit = 1_000_000

[accounts.HALTACC.limits]
credit_limit = 1_000_000

[accounts.REDUCE.limits]
credit_limit = 1_000_000

[[restrictions]]
symbol = "HTB"
sides = ["SELL_SHORT"]
reason = "hard to borrow"
"""

#: Reference price of every priced symbol in CHECKS_RULES (FAST gets a stale one).
REFERENCE_PRICE = "100"
#: Channel arguments of the harness's own calls: a connection of their own. gRPC shares a
#: connection, and its reconnect backoff, among a process's channels with the same target and
#: arguments, so right after a gateway restart a harness call would otherwise fail at once
#: while the client under test (an adapter's) still waits for its next reconnect attempt.
HARNESS_CHANNEL_OPTIONS = (("grpc.use_local_subchannel_pool", 1),)


def write_rules(directory: Path, text: str = CHECKS_RULES, name: str = "rules.toml") -> Path:
    path = directory / name
    path.write_text(text)
    return path


@dataclass
class RunningGateway:
    app: GatewayApp
    target: str
    tokens: dict[str, str]  # demo principal name -> token: trader, alice, bob (operators), admin
    #: Channel credentials of the harness's own clients (a TLS gateway), None: plaintext.
    credentials: object = None

    def client(self, principal: str | None = "trader", **options) -> AsyncGatewayClient:
        token = self.tokens[principal] if principal is not None else None
        options.setdefault("credentials", self.credentials)
        return AsyncGatewayClient(self.target, token, **options)

    async def set_reference_prices(self, symbols=("AAPL", "LOTS", "HTB"), stale=("FAST",)) -> None:
        """Fresh prices for ``symbols``, 5 s old ones for ``stale`` (older than FAST's 1 s)."""
        five_seconds_ago = time.time_ns() - 5_000_000_000
        prices = [make_reference_price(symbol, REFERENCE_PRICE) for symbol in symbols]
        prices += [make_reference_price(symbol, REFERENCE_PRICE, five_seconds_ago) for symbol in stale]
        async with self.client(channel_options=HARNESS_CHANNEL_OPTIONS) as client:
            await client.update_reference_prices(prices)

    async def wait_published(self, timeout_s: float = 10.0) -> None:
        """Until JetStream acknowledged every decision made so far."""
        deadline = time.monotonic() + timeout_s
        while self.app.publisher.outbox_depth > 0:
            assert time.monotonic() < deadline, "decisions not published in time"
            await asyncio.sleep(0.02)


def gateway_config(data_dir: Path, rules_path: Path, *, nats_url: str | None, tokens_path: Path, **overrides):
    settings = dict(
        rules_path=str(rules_path),
        tokens_path=str(tokens_path),
        listen="127.0.0.1:0",
        nats_url=nats_url,
        data_dir=str(data_dir),
        gateway_id=GATEWAY_ID,
        metrics_listen="127.0.0.1:0",
        shutdown_grace_s=1.0,
        publish_flush_timeout_s=2.0,
        engine_options=dict(ENGINE_OPTIONS),
    )
    settings.update(overrides)
    return GatewayConfig(**settings)


@contextlib.asynccontextmanager
async def running_gateway(
    data_dir: Path,
    rules_path: Path | None = None,
    *,
    nats_url: str | None = None,
    wait_ready: bool = True,
    credentials=None,
    **overrides,
):
    """A started gateway (embedded nats-server in ``data_dir`` unless ``nats_url``);
    ``credentials``: what its clients use (a gateway with ``tls_cert_path`` overrides)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    if rules_path is None:
        rules_path = write_rules(data_dir)
    demo = ensure_demo_tokens(data_dir)
    config = gateway_config(
        data_dir, rules_path, nats_url=nats_url, tokens_path=demo.hashes_path, **overrides
    )
    app = GatewayApp(config)
    await asyncio.wait_for(app.start(), START_TIMEOUT_S)
    try:
        if wait_ready:
            assert await app.wait_ready(READY_TIMEOUT_S), "gateway did not connect to NATS"
        yield RunningGateway(app, f"127.0.0.1:{app.port}", demo.tokens, credentials)
    finally:
        await asyncio.wait_for(app.stop(), STOP_TIMEOUT_S)


def write_up_watchdogs(directory: Path) -> Path:
    """A watchdogs file for ``pretrade up`` in tests: every watchdog at its defaults, like
    ``up`` without ``--watchdogs``, but the worker's status endpoint on a free port instead
    of the fixed default (127.0.0.1:9470), so a test never depends on that port being free."""
    from watchdogs.config import WATCHDOG_CLASSES

    path = directory / "watchdogs.toml"
    tables = "".join(f"\n[watchdogs.{kind}]\n" for kind in WATCHDOG_CLASSES)
    path.write_text(f'[worker]\nstatus_listen = "127.0.0.1:0"\n{tables}')
    return path


def accept_all_rules(name: str, accounts: list[str], *, max_reference_age_ms: int = 3_600_000) -> str:
    """Rules under which every order of AAPL (tick 0.01, within 10 % of its reference price,
    at most 1 000) is accepted however many are working: no rate, exposure or working-order
    limit, no duplicate-content check, no self-match prevention. For tests and benchmarks
    that need every call to take the accept path, the one that records a working order."""
    account_tables = "".join(f"\n[accounts.{account}]\n" for account in accounts)
    return f"""
[firm]
name = "{name}"
max_reference_age_ms = {max_reference_age_ms}
self_match_prevention = false
duplicate_content_window_ms = 0

[firm.limits]
max_order_qty = 1_000
max_order_notional = "unlimited"
max_long_position = "unlimited"
max_short_position = "unlimited"
price_collar_pct = 10
price_collar_ticks = "unlimited"
credit_limit = "unlimited"
max_working_orders = "unlimited"
order_rate_limit = "unlimited"

[symbols.AAPL]
tick_size = "0.01"
lot_size = 1
{account_tables}"""
