"""The scenario runner: replay a named failure through the real system and check that the
right watchdog fired, fast enough, and that the gateway then enforced its response.

A scenario file (TOML, ``examples/scenarios/*.toml``) says what happens, what must be
detected and what the gateway must do afterwards::

    name = "runaway strategy"
    description = "..."

    [expect]
    watchdog = "order_rate"      # the watchdog that must fire
    scope = "strategy"           # optional: the scope and name it must act on
    name = "ALGO"
    action = "halt"              # the response it must ask for
    sla_s = 2.0                  # detection latency limit, event-time seconds

    [expect.enforced]            # optional: an order the gateway must then refuse
    account = "ACC1"
    strategy = "ALGO"
    symbol = "AAPL"
    side = "buy"
    quantity = "1"
    price = "100"
    reject_code = "TRADING_HALTED"

    [watchdogs.order_rate]       # the watchdog configuration (as in watchdogs.toml)
    max_orders = 100

    [[steps]]                    # what is injected, in scenario time (at_s)
    at_s = 0
    kind = "reference_prices"
    prices = { AAPL = "100" }

Step kinds: ``reference_prices`` (``prices``), ``reference_path`` (``symbols``, ``from``,
``to``, ``count``, ``every_s``: a straight line), ``orders`` (``count``, ``account``,
``strategy``, ``symbol``, ``side``, ``quantity``, ``price``; ``fill = true`` reports a full
fill of every accepted order), ``metrics`` (``scope``,
``name``, ``metric``, ``values``, ``every_s``, ``symbol``), ``news`` (``topic``,
``counts``, ``every_s``), ``health`` (``service``, ``statuses``, ``every_s``) and
``trades`` (``symbol``, ``prices``, ``quantity``, ``every_s``). A list may be repeated with
``repeat = N``. The step with ``breach = true`` starts the detection clock.

Scenario time runs ``speed`` times faster than the wall clock: published messages carry
scenario timestamps (start of the run + ``at_s``), and the runner sleeps ``delta/speed``
between them. Orders go through the gateway and carry the gateway's wall-clock time, so
their latency is measured from the wall-clock instant their step started.

The runner starts a private nats-server, a gateway with its halt manager (as ``pretrade
up``) and a watchdog worker holding a ``watchdog:scenario`` operator token, then injects
through NATS and the SDK.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from nats.aio.client import Client as NatsClient

from clients import AsyncGatewayClient, make_execution, make_order, make_reference_price, new_client_order_id
from gateway.app import GatewayApp
from gateway.auth import ROLE_OPERATOR, ensure_demo_tokens, generate_token, token_entry_toml
from gateway.config import GatewayConfig
from gateway.embedded_nats import EmbeddedNats
from pretrade.v1 import halts_pb2, halts_pb2_grpc, types_pb2, watchdogs_pb2
from watchdogs import subjects
from watchdogs.config import WATCHDOG_CLASSES, WatchdogConfigError, parse_config
from watchdogs.core import NANOS_PER_SECOND, Action, ScopeKind
from watchdogs.worker import WatchdogWorker

#: Scenario seconds per wall-clock second, unless ``--speed`` says otherwise: a 30-day
#: scenario replays in about 3 s (``--speed 1`` replays in real time).
DEFAULT_SPEED = 1_000_000.0
#: Wall-clock seconds to wait for the expected finding after the last step.
DEFAULT_DETECTION_WAIT_S = 10.0
#: Wall-clock seconds the gateway has to enforce the response after the finding.
DEFAULT_ENFORCE_WAIT_S = 10.0
#: Orders per CheckOrders call in an ``orders`` step.
DEFAULT_ORDER_BATCH = 50
#: Wall-clock seconds for the system to start (NATS, gateway, worker).
DEFAULT_START_TIMEOUT_S = 30.0
WATCHDOG_PRINCIPAL = "watchdog:scenario"
GATEWAY_ID = "scenario"

#: Rules every scenario runs under unless it names its own (``rules = "file.toml"``):
#: generous limits, so that what stops orders is the watchdogs' response.
SCENARIO_RULES = """
[firm]
name = "SCENARIOS"
max_reference_age_ms = 86_400_000
self_match_prevention = false
duplicate_content_window_ms = 0
require_strategy = false

[firm.limits]
max_order_qty = 1_000_000
max_order_notional = 1_000_000_000
max_long_position = 10_000_000
max_short_position = 10_000_000
price_collar_pct = 50
price_collar_ticks = "unlimited"
credit_limit = 100_000_000_000
max_working_orders = 100_000
order_rate_limit = { orders = 1_000_000, window_ms = 1000 }

[firm.strategy_limits]
order_rate_limit = { orders = 1_000_000, window_ms = 1000 }

[symbols.AAPL]
tick_size = "0.01"
lot_size = 1

[symbols.MSFT]
tick_size = "0.01"
lot_size = 1

[symbols.IBM]
tick_size = "0.01"
lot_size = 1

[symbols.USDC]
tick_size = "0.0001"
lot_size = 1

[strategies.ALGO]
[strategies.MEANREV]

[accounts.ACC1]
[accounts.ACC2]
"""

_STEP_KINDS = frozenset(
    {"reference_prices", "reference_path", "orders", "metrics", "news", "health", "trades"}
)
_HEALTH = {
    "green": watchdogs_pb2.HEALTH_STATUS_GREEN,
    "amber": watchdogs_pb2.HEALTH_STATUS_AMBER,
    "red": watchdogs_pb2.HEALTH_STATUS_RED,
}


class ScenarioError(ValueError):
    """Base of the errors about a scenario file (one line, naming the file)."""


class ScenarioFileError(ScenarioError):
    """The file cannot be read or is not valid TOML."""


class InvalidScenarioError(ScenarioError):
    """A scenario that is missing a key, has an unknown step kind or a bad value."""


@dataclass(frozen=True)
class Expectation:
    watchdog: str
    action: Action
    sla_s: float
    scope: ScopeKind | None = None
    name: str | None = None
    enforced_order: dict | None = None
    reject_code: str | None = None


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    path: Path
    expect: Expectation
    watchdogs: dict
    steps: tuple[dict, ...]
    rules_text: str = SCENARIO_RULES


@dataclass
class ScenarioResult:
    scenario: str
    watchdog: str
    detected: bool = False
    latency_s: float | None = None
    wall_latency_s: float | None = None
    sla_s: float = 0.0
    within_sla: bool = False
    action: str = ""
    expected_action: str = ""
    halt_request: str = ""
    enforced: bool | None = None
    error: str = ""
    findings: list = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return (
            self.detected and self.within_sla and self.action == self.expected_action
            and self.enforced is not False and not self.error
        )

    def to_dict(self) -> dict:
        document = dataclasses.asdict(self)
        document["passed"] = self.passed
        return document


def load_scenario(path: str | Path) -> Scenario:
    path = Path(path)
    source = str(path)
    try:
        document = tomllib.loads(path.read_text())
    except OSError as exc:
        raise ScenarioFileError(f"{source}: cannot read: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioFileError(f"{source}: not valid TOML: {exc}") from None
    try:
        expect = document["expect"]
        watchdog = expect["watchdog"]
        if watchdog not in WATCHDOG_CLASSES:
            raise InvalidScenarioError(f"{source}: expect.watchdog: unknown watchdog {watchdog!r}")
        enforced = dict(expect.get("enforced", {})) or None
        reject_code = enforced.pop("reject_code") if enforced else None
        try:
            action = Action.parse(expect.get("action", WATCHDOG_CLASSES[watchdog].default_action.name))
            scope = ScopeKind.parse(expect["scope"]) if "scope" in expect else None
        except (KeyError, AttributeError):
            raise InvalidScenarioError(
                f"{source}: expect.action or expect.scope: warn|throttle|reduce_only|halt, "
                "firm|account|strategy|symbol"
            ) from None
        expectation = Expectation(
            watchdog=watchdog,
            action=action,
            sla_s=float(expect["sla_s"]),
            scope=scope,
            name=expect.get("name"),
            enforced_order=enforced,
            reject_code=reject_code,
        )
        steps = tuple(document.get("steps", []))
        for index, step in enumerate(steps):
            if step.get("kind") not in _STEP_KINDS:
                raise InvalidScenarioError(
                    f"{source}: steps[{index}].kind: one of {', '.join(sorted(_STEP_KINDS))}"
                )
        watchdogs = document.get("watchdogs", {})
        parse_config({"watchdogs": watchdogs}, source)
        rules_text = SCENARIO_RULES
        if "rules" in document:
            rules_text = (path.parent / document["rules"]).read_text()
        return Scenario(
            name=document.get("name", path.stem), description=document.get("description", ""), path=path,
            expect=expectation, watchdogs=watchdogs, steps=steps, rules_text=rules_text,
        )
    except KeyError as exc:
        raise InvalidScenarioError(f"{source}: missing key {exc.args[0]!r}") from None
    except (TypeError, ValueError, OSError) as exc:
        if isinstance(exc, ScenarioError):
            raise
        if isinstance(exc, WatchdogConfigError):
            raise InvalidScenarioError(str(exc)) from None
        raise InvalidScenarioError(f"{source}: {exc}") from None


def _repeated(step: dict, key: str) -> list:
    return list(step[key]) * int(step.get("repeat", 1))


@dataclass
class _Message:
    at_s: float
    subject: str
    payload: bytes


class _Injector:
    """Turns steps into NATS messages and orders, paced at ``speed``."""

    def __init__(self, nc: NatsClient, client: AsyncGatewayClient, speed: float) -> None:
        self._nc = nc
        self._client = client
        self._speed = speed
        self.base_ns = time.time_ns()
        self.wall_start = time.monotonic()
        self.breach_started_ns: int | None = None
        self.breach_started_wall: float | None = None

    def sim_ns(self, at_s: float) -> int:
        return self.base_ns + int(at_s * NANOS_PER_SECOND)

    async def _pace(self, at_s: float) -> None:
        delay = self.wall_start + at_s / self._speed - time.monotonic()
        await asyncio.sleep(max(0.0, delay))

    async def run(self, step: dict) -> None:
        at_s = float(step.get("at_s", 0.0))
        await self._pace(at_s)
        if step.get("breach") and self.breach_started_wall is None:
            self.breach_started_wall = time.monotonic()
            self.breach_started_ns = time.time_ns() if step["kind"] == "orders" else self.sim_ns(at_s)
        if step["kind"] == "orders":
            await self._orders(step)
            return
        for message in self._messages(step, at_s):
            await self._pace(message.at_s)
            await self._nc.publish(message.subject, message.payload)
        await self._nc.flush()

    async def _orders(self, step: dict) -> None:
        fields = {key: step[key] for key in ("account", "symbol", "side", "quantity", "price") if key in step}
        fields["strategy"] = step.get("strategy", "")
        remaining = int(step.get("count", 1))
        while remaining > 0:
            batch = min(remaining, DEFAULT_ORDER_BATCH)
            decisions = await self._client.check_orders([make_order(**fields) for _ in range(batch)])
            if step.get("fill"):
                await self._client.report_executions([
                    make_execution(
                        account=d.order.account,
                        client_order_id=d.order.client_order_id,
                        execution_type="fill",
                        execution_id=f"x-{d.order.client_order_id}",
                        last_quantity=fields["quantity"],
                        last_price=fields["price"],
                    )
                    for d in decisions if d.verdict == types_pb2.VERDICT_ACCEPT
                ])
            remaining -= batch

    def _messages(self, step: dict, at_s: float) -> list[_Message]:
        kind, every_s = step["kind"], float(step.get("every_s", 1.0))
        if kind == "reference_prices":
            return [
                _Message(at_s, subjects.reference_price_subject(symbol),
                         make_reference_price(symbol, str(price), self.sim_ns(at_s)).SerializeToString())
                for symbol, price in step["prices"].items()
            ]
        if kind == "reference_path":
            start, end, count = float(step["from"]), float(step["to"]), int(step["count"])
            messages = []
            for index in range(count):
                price = start + (end - start) * (index + 1) / count
                t = at_s + index * every_s
                for symbol in step["symbols"]:
                    payload = make_reference_price(symbol, f"{price:.4f}", self.sim_ns(t)).SerializeToString()
                    messages.append(_Message(t, subjects.reference_price_subject(symbol), payload))
            return messages
        if kind == "metrics":
            scope = ScopeKind.parse(step.get("scope", "strategy"))
            name = step.get("name", "")
            return [
                _Message(
                    at_s + index * every_s,
                    subjects.strategy_metric_subject(name),
                    watchdogs_pb2.StrategyMetric(
                        scope=int(scope), name=name, metric=step["metric"], value=float(value),
                        timestamp_ns=self.sim_ns(at_s + index * every_s), symbol=step.get("symbol", ""),
                    ).SerializeToString(),
                )
                for index, value in enumerate(_repeated(step, "values"))
            ]
        if kind == "news":
            messages = []
            for index, count in enumerate(_repeated(step, "counts")):
                t = at_s + index * every_s
                news = watchdogs_pb2.NewsCount(
                    topic=step["topic"], count=int(count), interval_start_ns=self.sim_ns(t - every_s),
                    interval_end_ns=self.sim_ns(t),
                )
                subject = subjects.news_count_subject(step["topic"])
                messages.append(_Message(t, subject, news.SerializeToString()))
            return messages
        if kind == "health":
            return [
                _Message(at_s + index * every_s, subjects.service_health_subject(step["service"]),
                         watchdogs_pb2.ServiceHealth(
                             service=step["service"], status=_HEALTH[status], detail=step.get("detail", ""),
                             timestamp_ns=self.sim_ns(at_s + index * every_s),
                         ).SerializeToString())
                for index, status in enumerate(_repeated(step, "statuses"))
            ]
        quantity = int(float(step.get("quantity", 1)) * 1e9)
        return [
            _Message(at_s + index * every_s, subjects.trade_subject(step["symbol"]), watchdogs_pb2.Trade(
                symbol=step["symbol"], price_nanos=int(float(price) * 1e9), quantity_nanos=quantity,
                timestamp_ns=self.sim_ns(at_s + index * every_s),
            ).SerializeToString())
            for index, price in enumerate(_repeated(step, "prices"))
        ]


def _matches(finding: watchdogs_pb2.Finding, expect: Expectation) -> bool:
    return (
        finding.watchdog == expect.watchdog
        and (expect.scope is None or finding.scope == int(expect.scope))
        and (expect.name is None or finding.name == expect.name)
    )


@contextlib.asynccontextmanager
async def _system(work_dir: Path, scenario: Scenario, engine_options: dict | None):
    """nats-server + gateway with halt manager + watchdog worker, all private to one run."""
    work_dir.mkdir(parents=True, exist_ok=True)
    nats = EmbeddedNats(work_dir)
    await asyncio.wait_for(nats.start(), DEFAULT_START_TIMEOUT_S)
    try:
        demo = ensure_demo_tokens(work_dir)
        watchdog_token = generate_token()
        tokens_path = work_dir / "scenario-tokens.toml"
        tokens_path.write_text(
            demo.hashes_path.read_text()
            + "\n"
            + token_entry_toml(WATCHDOG_PRINCIPAL, (ROLE_OPERATOR,), watchdog_token)
        )
        rules_path = work_dir / "rules.toml"
        rules_path.write_text(scenario.rules_text)
        app = GatewayApp(GatewayConfig(
            rules_path=str(rules_path), tokens_path=str(tokens_path), listen="127.0.0.1:0", nats_url=nats.url,
            data_dir=str(work_dir / "gateway"), gateway_id=GATEWAY_ID, metrics_listen=None,
            shutdown_grace_s=1.0, publish_flush_timeout_s=2.0, engine_options=dict(engine_options or {}),
            host_halt_manager=True,
        ))
        await asyncio.wait_for(app.start(), DEFAULT_START_TIMEOUT_S)
        try:
            if not await app.wait_ready(DEFAULT_START_TIMEOUT_S):
                raise RuntimeError("the gateway did not connect to NATS")
            target = f"127.0.0.1:{app.port}"
            config = parse_config(
                {
                    "worker": {"worker_id": "scenario", "status_listen": "off"},
                    "watchdogs": scenario.watchdogs,
                },
                str(scenario.path),
            )
            worker = WatchdogWorker(config, nats.url, target, watchdog_token)
            await worker.start()
            try:
                yield nats.url, target, demo.tokens["trader"], worker
            finally:
                await worker.stop()
        finally:
            await asyncio.wait_for(app.stop(), DEFAULT_START_TIMEOUT_S)
    finally:
        await nats.stop()


async def run_scenario(
    scenario: Scenario,
    work_dir: str | Path,
    *,
    speed: float = DEFAULT_SPEED,
    detection_wait_s: float = DEFAULT_DETECTION_WAIT_S,
    enforce_wait_s: float = DEFAULT_ENFORCE_WAIT_S,
    engine_options: dict | None = None,
) -> ScenarioResult:
    expect = scenario.expect
    result = ScenarioResult(
        scenario=scenario.name, watchdog=expect.watchdog, sla_s=expect.sla_s,
        expected_action=expect.action.name.lower(),
    )
    async with _system(Path(work_dir), scenario, engine_options) as (nats_url, target, trader_token, worker):
        nc = NatsClient()
        await nc.connect(servers=[nats_url])
        findings: list[tuple[watchdogs_pb2.Finding, float]] = []

        async def collect(msg) -> None:
            with contextlib.suppress(Exception):
                findings.append((watchdogs_pb2.Finding.FromString(msg.data), time.monotonic()))

        await nc.subscribe(subjects.ALERTS_WILDCARD, cb=collect)
        await nc.flush()
        try:
            async with AsyncGatewayClient(target, trader_token) as client:
                injector = _Injector(nc, client, speed)
                for step in scenario.steps:
                    await injector.run(step)
                deadline = time.monotonic() + detection_wait_s
                while not any(_matches(f, expect) for f, _ in findings) and time.monotonic() < deadline:
                    await asyncio.sleep(0.02)
                result.findings = [
                    f"{f.watchdog} {Action(f.action).name.lower()} {f.message}" for f, _ in findings
                ]
                matching = [(f, seen) for f, seen in findings if _matches(f, expect)]
                if not matching:
                    return result
                finding, seen_wall = matching[0]
                result.detected = True
                result.action = Action(finding.action).name.lower()
                started_ns = injector.breach_started_ns or injector.base_ns
                started_wall = injector.breach_started_wall or injector.wall_start
                result.latency_s = max(0.0, (finding.event_ns - started_ns) / NANOS_PER_SECOND)
                result.wall_latency_s = max(0.0, seen_wall - started_wall)
                result.within_sla = result.latency_s <= expect.sla_s
                result.halt_request = await _halt_outcome(worker, finding.finding_id)
                if expect.enforced_order is not None:
                    result.enforced = await _enforced(client, expect, enforce_wait_s)
                elif expect.action is Action.THROTTLE:
                    result.enforced = await _throttle_in_force(target, trader_token, finding, enforce_wait_s)
        except Exception as exc:  # a broken scenario is a failed row, not a crashed runner
            result.error = f"{type(exc).__name__}: {exc}"
        finally:
            await nc.close()
    return result


async def _halt_outcome(
    worker: WatchdogWorker, finding_id: str, wait_s: float = DEFAULT_ENFORCE_WAIT_S
) -> str:
    """The outcome of the halt request the worker made for the finding."""
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        for record in worker.recent_findings:
            if record.get("finding_id") == finding_id:
                return record["outcome"]
        await asyncio.sleep(0.02)
    return "unknown"


async def _enforced(client: AsyncGatewayClient, expect: Expectation, wait_s: float) -> bool:
    """Whether the gateway refuses the scenario's probe order with the expected code."""
    fields = dict(expect.enforced_order)
    deadline = time.monotonic() + wait_s
    while True:
        probe = make_order(client_order_id=new_client_order_id("probe"), **fields)
        decision = await client.check_order(probe)
        if expect.reject_code in {failure.code for failure in decision.failures}:
            return True
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(0.05)


async def _throttle_in_force(target: str, token: str, finding: watchdogs_pb2.Finding, wait_s: float) -> bool:
    """Whether a throttle on the finding's account or strategy is in force (a throttle
    lowers a rate limit, which one probe order cannot show)."""
    field_name = "account" if finding.scope == int(ScopeKind.ACCOUNT) else "strategy"
    deadline = time.monotonic() + wait_s
    async with grpc.aio.insecure_channel(target) as channel:
        stub = halts_pb2_grpc.HaltServiceStub(channel)
        while True:
            listed = await stub.ListHalts(
                halts_pb2.ListHaltsRequest(), metadata=(("authorization", f"Bearer {token}"),), timeout=5.0
            )
            if any(
                o.kind == halts_pb2.OVERRIDE_KIND_THROTTLE and getattr(o, field_name) == finding.name
                for o in listed.overrides
            ):
                return True
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.05)


def format_table(results: list[ScenarioResult]) -> str:
    """The report: one row per scenario."""
    header = (
        "scenario", "watchdog", "detected", "latency_s", "sla_s", "action", "halt_request", "enforced",
        "result",
    )
    rows = [header]
    for r in results:
        rows.append((
            r.scenario, r.watchdog, "yes" if r.detected else "NO",
            "-" if r.latency_s is None else f"{r.latency_s:.3f}", f"{r.sla_s:g}",
            r.action or "-", r.halt_request or "-",
            {None: "n/a", True: "yes", False: "NO"}[r.enforced],
            "PASS" if r.passed else f"FAIL{': ' + r.error if r.error else ''}",
        ))
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(header))]
    lines = ("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows)
    return "\n".join(lines)


def results_json(results: list[ScenarioResult]) -> str:
    return json.dumps([r.to_dict() for r in results], sort_keys=True)


def scenario_files(path: str | Path) -> list[Path]:
    """A scenario file, or every ``*.toml`` in a folder (sorted)."""
    path = Path(path)
    return sorted(path.glob("*.toml")) if path.is_dir() else [path]
