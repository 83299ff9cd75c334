"""One gateway process: engine + decision outbox + publisher + market data + gRPC server.

Start-up order (each step fails fast with a one-line error before anything listens):
rules compile -> token file -> engine -> outboxes (decisions, ledger events; single-writer
locks) -> [embedded nats-server] -> [halt manager, with ``host_halt_manager``] -> gRPC server (health
NOT_SERVING, every order rejected with HALT_STATE_UNAVAILABLE) -> metrics endpoint ->
publisher, market data and the halt follower connect in the background -> health SERVING
once the publisher has connected and the halt follower has applied the whole halt state.

Publishing and halts answer NATS outages differently, on purpose. Decisions queue in the
outbox, so a publishing outage alone does not stop trading (``nats_connected`` in
GetStatus and the ``pretrade_publish_lag_seconds`` metric tell the story). But a gateway
that cannot follow the halt state for longer than the follower's staleness bound might be
missing a halt or a kill switch: it rejects every order with HALT_STATE_UNAVAILABLE and
reports NOT_SERVING until it has reloaded the state (fail closed).

Signals: SIGHUP reloads the token file, then recompiles the rules file, each read off the
event loop thread and swapped in on the loop, each independently (a bad file is logged in
one ERROR line and what was in force stays; a bad rules file never delays a revocation).
Both outcomes are counted on /metrics (``pretrade_token_reloads_total``,
``pretrade_rules_reloads_total``), so a failed reload can be alerted on.
A token reload ends the open streams of revoked tokens (gateway.auth). SIGINT/SIGTERM shut down gracefully:
health NOT_SERVING, stop accepting calls, let open calls and streams finish within the
grace period, flush the outbox to JetStream, stop the embedded nats-server.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import time
from collections.abc import Callable, Sequence
from typing import Protocol
from pathlib import Path

import nats
from grpc_health.v1 import health

from fastpath.engine import Engine
from fastpath.errors import RulesError
from fastpath.rules import load_rules, load_rules_with_text
from gateway.aio import cancel_until_done
from gateway.auth import AuthInterceptor, TokenStore, reload_token_file
from gateway.config import GatewayConfig, claim_data_dir
from gateway.embedded_nats import EmbeddedNats
from gateway.marketdata import ReferencePriceSubscriber
from gateway.metrics import GatewayMetrics, MetricsHttpServer
from gateway.outbox import EVENTS_OUTBOX_SUBDIR, DecisionOutbox
from gateway.publisher import EVENTS_TARGET, DecisionPublisher, PublisherMetricHooks
from gateway.server import HostedService, create_server, gateway_method_roles, set_health
from gateway.servicer import (
    AdminServicer,
    GatewayEventLog,
    GatewayServicer,
    OrderGate,
    RulesReloader,
)
from gateway.validation import RequestValidator
from halts.follower import HaltFollower
from ledger.runtime import LedgerRuntime
from ledger.service import LEDGER_METHOD_ROLES, LEDGER_SERVICE_NAME, add_ledger_service
from halts.manager import HaltManager
from halts.servicer import HALT_METHOD_ROLES, HALT_SERVICE_NAME, add_halt_service
from halts.store import HaltStore

log = logging.getLogger(__name__)

#: Wait between reconnect attempts of the market-data and halt connections, seconds.
MARKETDATA_RECONNECT_WAIT_S = 0.5
HALTS_RECONNECT_WAIT_S = 0.25


class Companion(Protocol):
    """A component run beside the gateway in one process (``GatewayApp.run``)."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


def _log_nats_error(purpose: str):
    """A NATS error callback that logs one line (nats-py's default logs a traceback for
    every failed reconnect, which buries the one line an operator needs)."""

    async def log_error(error: Exception) -> None:
        log.warning("NATS (%s connection): %s", purpose, error or type(error).__name__)

    return log_error


class GatewayApp:
    """The running gateway. ``await start()``, then ``await stop()`` (or ``await run()``,
    which does both around the signals)."""

    def __init__(self, config: GatewayConfig) -> None:
        self.config = config
        self.started_ns = time.time_ns()
        self.port: int | None = None
        self.metrics_port: int | None = None
        self.nats_url: str | None = config.nats_url
        self.metrics = GatewayMetrics()
        self.engine: Engine | None = None
        self.gate: OrderGate | None = None
        self.gateway_servicer: GatewayServicer | None = None
        self.reloader: RulesReloader | None = None
        #: The auth interceptor of the port: SIGHUP reloads the token file into it.
        self.auth: AuthInterceptor | None = None
        self.health = health.aio.HealthServicer()
        self._outbox: DecisionOutbox | None = None
        self._publisher: DecisionPublisher | None = None
        # Ledger events (executions applied, rules loaded): a second outbox and publisher.
        self._event_outbox: DecisionOutbox | None = None
        self._event_publisher: DecisionPublisher | None = None
        self._embedded_nats: EmbeddedNats | None = None
        self._server = None
        self._metrics_http: MetricsHttpServer | None = None
        self._marketdata_nc = None
        self._marketdata: ReferencePriceSubscriber | None = None
        self._halt_nc = None
        self._halt_manager_nc = None
        self.halt_follower: HaltFollower | None = None
        self.halt_manager: HaltManager | None = None
        self.ledger: LedgerRuntime | None = None
        self._background: list[asyncio.Task] = []
        self._stopping = asyncio.Event()
        self._ready = asyncio.Event()
        #: Why the gateway shut itself down (a publisher that stopped for good), if it did.
        self.fatal_error: BaseException | None = None
        self._stopped = False

    @property
    def companion_target(self) -> str | None:
        """Where companions in this process reach the gateway when its port has TLS (the
        plaintext Unix socket ``config.companion_socket``), else None: use the port."""
        socket_path = self.config.companion_socket
        return f"unix:{socket_path}" if socket_path is not None else None

    @property
    def publisher(self) -> DecisionPublisher | None:
        return self._publisher

    async def start(self) -> None:
        """Bring everything up; on failure, tear down what was started and re-raise."""
        config = self.config
        try:
            rules, rules_text = load_rules_with_text(config.rules_path)
            tokens = TokenStore.load(config.tokens_path)
            claim_data_dir(config.data_dir, config.gateway_id)
            self.engine = Engine(rules, **config.engine_options)
            self._outbox = DecisionOutbox(config.outbox_path)
            self._event_outbox = DecisionOutbox(Path(config.data_dir) / EVENTS_OUTBOX_SUBDIR)
            self._event_publisher = DecisionPublisher(
                self._event_outbox,
                config.gateway_id,
                target=EVENTS_TARGET,
                linger_s=config.publish_linger_s,
                on_fatal=self._on_publisher_failed,
            )
            self._publisher = DecisionPublisher(
                self._outbox,
                config.gateway_id,
                linger_s=config.publish_linger_s,
                metric_hooks=PublisherMetricHooks(
                    decisions_published=self.metrics.decisions_published,
                    publish_failures=self.metrics.publish_failures,
                ),
                on_fatal=self._on_publisher_failed,
            )
            self.metrics.watch_publisher(
                lambda: self._publisher.publish_lag_s,
                lambda: self._publisher.outbox_depth,
                lambda: self._publisher.connected,
            )
            self.gate = OrderGate(
                self.engine,
                self._outbox,
                self._publisher,
                config.gateway_id,
                metrics=self.metrics,
                idempotency_capacity=config.idempotency_capacity,
                execution_dedup_capacity=config.execution_dedup_capacity,
                events=GatewayEventLog(self._event_outbox, self._event_publisher, config.gateway_id),
            )
            self.gate.record_rules_loaded(rules, rules_text)
            validator = RequestValidator(config.validation)
            self.reloader = RulesReloader(self.engine, on_loaded=self.gate.record_rules_loaded, metrics=self.metrics)
            self.metrics.watch_rules(lambda: self.engine.version)
            self.gateway_servicer = GatewayServicer(
                self.gate, validator, max_open_streams=config.max_open_streams, metrics=self.metrics
            )
            admin_servicer = AdminServicer(self.gate, self.reloader, validator, started_ns=self.started_ns)
            if self.nats_url is None:
                self._embedded_nats = EmbeddedNats(config.data_dir)
                await self._embedded_nats.start()
                self.nats_url = self._embedded_nats.url
            hosted = []
            if config.host_halt_manager:
                hosted.append(await self._start_halt_manager())
            if config.host_ledger:
                # Its metrics go on this gateway's /metrics: no second port.
                self.ledger = LedgerRuntime(config.data_dir, metrics_registry=self.metrics.registry)
                reader = self.ledger.reader
                hosted.append(
                    HostedService(
                        LEDGER_SERVICE_NAME, LEDGER_METHOD_ROLES, lambda server: add_ledger_service(server, reader)
                    )
                )
            self.gate.halt_state_available = False  # until the follower has loaded it
            await set_health(self.health, serving=False)
            self.auth = AuthInterceptor(tokens, gateway_method_roles(hosted))
            self.metrics.watch_auth(self.auth)
            self._server, self.port = create_server(
                config,
                gateway_servicer=self.gateway_servicer,
                admin_servicer=admin_servicer,
                health_servicer=self.health,
                auth=self.auth,
                metrics=self.metrics,
                hosted=hosted,
            )
            await self._server.start()
            if config.metrics_listen is not None:
                self._metrics_http = MetricsHttpServer(self.metrics, config.metrics_listen)
                self.metrics_port = self._metrics_http.port
            await self._publisher.start(self.nats_url)
            if self.ledger is not None:
                await self.ledger.start(self.nats_url)
            await self._event_publisher.start(self.nats_url)
            self._background.append(
                asyncio.create_task(self._subscribe_marketdata(), name="marketdata-connect")
            )
            self._background.append(asyncio.create_task(self._become_ready(), name="health-ready"))
        except BaseException:
            await self.stop()
            raise
        # Everything built so far (modules, protobuf descriptors, compiled rules, servers)
        # lives as long as the process. Moved out of the collector's generations, it is no
        # longer traversed by every full collection, each of which would otherwise pause
        # the order path's thread (the imports alone are ~50,000 objects, ~10 ms to traverse).
        gc.collect()
        gc.freeze()
        log.info(
            "gateway %s listening on port %d (%s), rules %s (%s), NATS %s",
            config.gateway_id,
            self.port,
            ("mutual TLS" if config.tls_client_ca_path else "TLS") if config.tls else "plaintext",
            rules.source,
            rules.version[:12],
            self.nats_url,
        )

    async def wait_ready(self, timeout_s: float) -> bool:
        """Whether the gateway became ready (publisher connected, halt state loaded;
        health SERVING) within ``timeout_s``."""
        try:
            await asyncio.wait_for(self._ready.wait(), timeout_s)
        except TimeoutError:
            return False
        return True

    async def _become_ready(self) -> None:
        while not await self._publisher.wait_connected(self.config.nats_connect_timeout_s):
            log.warning("not connected to NATS at %s yet; health stays NOT_SERVING", self.nats_url)
        await self._follow_halts()

    async def _start_halt_manager(self) -> HostedService:
        """The halt manager on its own connection, serving HaltService on our port. An
        override is validated against this gateway's own rules file before it is stored."""
        self._halt_manager_nc = await nats.connect(
            self.nats_url,
            name=f"pretrade-halt-manager-{self.config.gateway_id}",
            error_cb=_log_nats_error("halt-manager"),
            allow_reconnect=True,
            max_reconnect_attempts=-1,
            reconnect_time_wait=HALTS_RECONNECT_WAIT_S,
        )
        rules_path = self.config.rules_path
        self.halt_manager = HaltManager(
            await HaltStore.open(self._halt_manager_nc),
            validate_override=lambda override: load_rules(rules_path, overrides=[override]),
        )
        await self.halt_manager.start()
        manager = self.halt_manager
        return HostedService(HALT_SERVICE_NAME, HALT_METHOD_ROLES, lambda server: add_halt_service(server, manager))

    async def _follow_halts(self) -> None:
        """Load the whole halt state into the engine, then follow it; orders pass (and
        health is SERVING) only while the follower is ready."""
        self._halt_nc = await nats.connect(
            self.nats_url,
            name=f"pretrade-halts-{self.config.gateway_id}",
            error_cb=_log_nats_error("halts"),
            allow_reconnect=True,
            max_reconnect_attempts=-1,
            reconnect_time_wait=HALTS_RECONNECT_WAIT_S,
        )
        self.halt_follower = HaltFollower(
            self._halt_nc,
            self.engine,
            gateway_id=self.config.gateway_id,
            reload_rules=lambda overrides: self.reloader.reload(overrides=overrides),
            on_cancel_all=self.gateway_servicer.broadcast_control,
            on_ready_change=self._on_halt_state_ready,
        )
        await self.halt_follower.start()
        if self.halt_manager is not None:
            # A halt through this gateway's HaltService returns once this gateway enforces it.
            self.halt_manager.wait_applied_locally = self.halt_follower.wait_applied
        await self._on_halt_state_ready(True)

    async def _on_halt_state_ready(self, ready: bool) -> None:
        if self._stopped or (ready == self.gate.halt_state_available and ready == self._ready.is_set()):
            return
        self.gate.halt_state_available = ready
        await set_health(self.health, serving=ready)
        if ready:
            self._ready.set()
            log.info("gateway %s is SERVING (halt state loaded)", self.config.gateway_id)
        else:
            self._ready.clear()
            log.error("gateway %s lost the halt state: rejecting every order until it is back", self.config.gateway_id)

    async def _subscribe_marketdata(self) -> None:
        """Reference prices from NATS, on a connection of their own (so a burst of market
        data never queues behind decision publishing); connects in the background and
        retries forever, like the publisher."""
        self._marketdata_nc = await nats.connect(
            self.nats_url,
            name=f"pretrade-marketdata-{self.config.gateway_id}",
            error_cb=_log_nats_error("marketdata"),
            allow_reconnect=True,
            max_reconnect_attempts=-1,
            reconnect_time_wait=MARKETDATA_RECONNECT_WAIT_S,
        )
        self._marketdata = ReferencePriceSubscriber(self._marketdata_nc, self.gate.apply_reference_price)
        await self._marketdata.start()

    async def reload_rules(self, path: str | None = None) -> tuple[str, str]:
        """Recompile and swap the rules (SIGHUP and AdminService.ReloadRules)."""
        return await self.reloader.reload(path)

    async def reload_tokens(self) -> bool:
        """Reload the token file (SIGHUP): whether it took effect (see
        :func:`gateway.auth.reload_token_file`; a bad file is logged and changes nothing)."""
        return await reload_token_file(self.auth, self.config.tokens_path)

    async def _reload_on_signal(self) -> None:
        """SIGHUP: the token file, then the rules file. Tokens first, as a revocation is
        urgent and reading them takes microseconds; a rules file that does not compile
        must not hold it up."""
        await self.reload_tokens()
        try:
            previous, current = await self.reload_rules()
        except RulesError as exc:
            log.error("SIGHUP reload failed, keeping rules %s: %s", self.engine.version[:12], exc)
            return
        except Exception:
            log.exception("SIGHUP reload failed, keeping rules %s", self.engine.version[:12])
            return
        log.info("SIGHUP reload: rules %s -> %s", previous[:12], current[:12])

    def request_stop(self) -> None:
        self._stopping.set()

    def _on_publisher_failed(self, error: BaseException) -> None:
        """A publisher stopped for good (e.g. a sequence conflict under this gateway id):
        decisions could no longer reach the stream, so the gateway must not decide more.
        Shut down; :meth:`run` raises the error once everything is stopped."""
        if self.fatal_error is None:
            self.fatal_error = error
        log.critical("shutting the gateway down: %s", error)
        self.request_stop()

    def install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGINT, self.request_stop)
        loop.add_signal_handler(signal.SIGTERM, self.request_stop)
        loop.add_signal_handler(
            signal.SIGHUP, lambda: self._background.append(asyncio.create_task(self._reload_on_signal()))
        )

    async def run(
        self,
        on_started: Callable[[], None] | None = None,
        companions: Sequence[Callable[[GatewayApp], Companion]] = (),
    ) -> None:
        """Start; once the gateway is ready, start the ``companions`` (each made from this
        app: the parts of ``pretrade up`` that need its NATS URL and port, such as the
        watchdog worker) and call ``on_started`` (so whatever it announces, e.g. a first
        order to try, works); serve until SIGINT/SIGTERM (or :meth:`request_stop`); stop
        the companions, in reverse order, then the gateway (and its embedded NATS)."""
        await self.start()
        self.install_signal_handlers()
        ready = asyncio.create_task(self._ready.wait())
        stopping = asyncio.create_task(self._stopping.wait())
        await asyncio.wait((ready, stopping), return_when=asyncio.FIRST_COMPLETED)
        ready.cancel()
        started: list[Companion] = []
        try:
            if self._ready.is_set() and not self._stopping.is_set():
                for make in companions:
                    companion = make(self)
                    await companion.start()
                    started.append(companion)
                if on_started is not None:
                    on_started()
            await stopping
        finally:
            for companion in reversed(started):
                await companion.stop()
            await self.stop()
        if self.fatal_error is not None:
            raise self.fatal_error

    async def stop(self) -> None:
        """Graceful shutdown of whatever was started. Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        config = self.config
        await self.health.enter_graceful_shutdown()
        if self._server is not None:
            log.info("stopping: open calls and streams get %.1f s to finish", config.shutdown_grace_s)
            await self._server.stop(config.shutdown_grace_s)
            if config.companion_socket is not None:
                Path(config.companion_socket).unlink(missing_ok=True)
        await cancel_until_done(self._background)
        if self._marketdata is not None:
            await self._marketdata.stop()
        if self._marketdata_nc is not None:
            await self._marketdata_nc.close()
        if self.halt_follower is not None:
            await self.halt_follower.stop()
        if self.halt_manager is not None:
            await self.halt_manager.stop()
        for nc in (self._halt_nc, self._halt_manager_nc):
            if nc is not None:
                await nc.close()
        if self._publisher is not None:
            await self._publisher.stop(config.publish_flush_timeout_s)
        if self._outbox is not None:
            self._outbox.close()
        if self._event_publisher is not None:
            await self._event_publisher.stop(config.publish_flush_timeout_s)
        if self._event_outbox is not None:
            self._event_outbox.close()
        if self.ledger is not None:  # after the publishers flushed: ingest what they sent
            await self.ledger.stop()
        if self._embedded_nats is not None:
            await self._embedded_nats.stop()
        if self._metrics_http is not None:
            self._metrics_http.stop()
        log.info("gateway %s stopped", config.gateway_id)
