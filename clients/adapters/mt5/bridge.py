"""The MT5 bridge: an asyncio TCP server speaking the pretrade MT5 wire protocol v2 (and v1).

Protocol (docs/adapters.md is the reference): one JSON object per line (UTF-8, ``\\n``
terminated, at most 64 KiB). Every request carries ``"v"`` (2, or 1 for older terminals;
replies carry the request's), a terminal-chosen request id ``"id"`` (echoed in the reply)
and a ``"type"``:

* ``check``     → ``decision``          an order to decide before OrderSend
* ``execution`` → ``execution_result``  a deal / cancel / reject of a checked order
* ``ping``      → ``pong`` (with ``reports``: pending, quarantined, why the gateway is not
  answering them)

Execution reports are the bridge's responsibility once it has them: each is committed to
the bridge's state file (``bridge.state_file``, default ``<data dir>/mt5/reports.sqlite``,
:mod:`clients.adapters.reports`, shared with the FIX adapter) *before* the terminal gets a
reply, then one worker delivers them to the gateway (``ReportExecutions``) in order,
retrying until the gateway answers; those not delivered are delivered after a restart. An
execution id is delivered once (a repeat from the terminal is answered ``duplicate``). The
reply carries the gateway's answer when it comes within the decision timeout; otherwise
v2 answers ``"status": "queued"`` (accepted for delivery) and v1 an ``error``
``GATEWAY_UNAVAILABLE`` (as v1 always did; the bridge delivers it anyway, a retry is safe).

Malformed requests get ``error`` replies. The bridge pushes ``control`` messages (no id)
when the gateway sends CANCEL_ALL (the kill switch). Whatever goes wrong (gateway
unreachable, timeout, a value that cannot be converted exactly) the order is answered
with ``verdict = "reject"``: the bridge fails closed.

Orders of every connected terminal are coalesced into StreamOrders batches by one
:class:`clients.OrderBatcher` (:class:`clients.adapters.link.GatewayLink`: the stream is
re-opened after a gateway restart; until then orders are rejected within the decision
timeout).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sqlite3
import time
from typing import Any

from clients import DeadlineExceeded, GatewayError
from clients.adapters.link import GatewayLink
from clients.adapters.mt5.config import BridgeConfig, ConversionError
from clients.adapters.reports import (
    DEFAULT_OUTCOME_RETENTION_S,
    OUTCOMES_SCHEMA,
    REPORTS_SCHEMA,
    ExecutionReporter,
    ReportStore,
    StateFileError,
    open_state_db,
    status_name,
)
from clients.orders import price_from_nanos, qty_from_nanos
from pretrade.v1 import gateway_pb2, types_pb2

#: The newest wire protocol version; the bridge answers every version in SUPPORTED_VERSIONS
#: (replies carry the request's version). v2 = v1 + ``execution_result.status = "queued"``.
PROTOCOL_VERSION = 2
SUPPORTED_VERSIONS = (1, 2)
#: The execution_result status of a report the bridge keeps and delivers later (v2).
STATUS_QUEUED = "queued"
MAX_LINE_BYTES = 64 * 1024

log = logging.getLogger("pretrade.mt5")

_SIDES = {"buy": types_pb2.SIDE_BUY, "sell": types_pb2.SIDE_SELL, "sell_short": types_pb2.SIDE_SELL_SHORT}
_ORDER_TYPES = {"limit": types_pb2.ORDER_TYPE_LIMIT, "market": types_pb2.ORDER_TYPE_MARKET}
_EXEC_TYPES = {
    "partial_fill": types_pb2.EXECUTION_TYPE_PARTIAL_FILL,
    "fill": types_pb2.EXECUTION_TYPE_FILL,
    "cancelled": types_pb2.EXECUTION_TYPE_CANCELLED,
    "rejected": types_pb2.EXECUTION_TYPE_VENUE_REJECTED,
    "expired": types_pb2.EXECUTION_TYPE_EXPIRED,
}
_FILLS = (types_pb2.EXECUTION_TYPE_PARTIAL_FILL, types_pb2.EXECUTION_TYPE_FILL)

#: Failure codes the bridge itself puts in a fail-closed reject (never from the gateway).
BRIDGE_GATEWAY_UNAVAILABLE = "GATEWAY_UNAVAILABLE"
BRIDGE_DECISION_TIMEOUT = "DECISION_TIMEOUT"
BRIDGE_INVALID_ORDER = "INVALID_ORDER"


class ProtocolError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _text(request: dict, key: str, *, required: bool = True, default: str = "") -> str:
    value = request.get(key, default)
    if not isinstance(value, str) or (required and not value):
        raise ProtocolError("BAD_REQUEST", f"{key}: a non-empty string is required")
    return value


def _choice(request: dict, key: str, choices: dict, default: str | None = None) -> int:
    value = request.get(key, default)
    if not isinstance(value, str) or value.lower() not in choices:
        raise ProtocolError("BAD_REQUEST", f"{key}: one of {sorted(choices)} is required, got {value!r}")
    return choices[value.lower()]


class Mt5Bridge:
    """``Mt5Bridge(config)``; ``await start()``, ``port``, ``await stop()``."""

    def __init__(self, config: BridgeConfig) -> None:
        self.config = config
        self._link: GatewayLink | None = None
        self._db = None
        self._reporter: ExecutionReporter | None = None
        self._server: asyncio.AbstractServer | None = None
        self._connections: set[_Connection] = set()
        self._tasks: set[asyncio.Task] = set()  # requests being handled
        self._stopped = False
        self.port: int | None = None

    async def start(self) -> None:
        """Open the state file (first: a second bridge on it fails here, with
        :class:`StateFileError`), the gateway link, the report worker and the server; on
        failure, whatever was started is stopped again."""
        try:
            await self._start()
        except BaseException:
            await self.stop()
            raise

    async def _start(self) -> None:
        path = self.config.state_path
        try:
            self._db = open_state_db(path, REPORTS_SCHEMA + OUTCOMES_SCHEMA)  # locked exclusively
        except sqlite3.Error as exc:
            raise StateFileError(
                f"{path}: cannot open the MT5 bridge's execution reports ({exc}); is another bridge using it?"
            ) from None
        store = ReportStore(self._db, keep_outcomes=True)
        store.prune_outcomes(DEFAULT_OUTCOME_RETENTION_S)
        self._link = GatewayLink(
            self.config.target, self.config.token, self.config.decision_timeout_s,
            batch_max_delay_s=self.config.batch_max_delay_s, on_control=self._on_control,
            credentials=self.config.credentials,
        )
        self._reporter = ExecutionReporter(
            store, lambda executions: self._link.report_executions(executions),
            log=log, name="mt5-report-executions", dedup=True,
        )
        queued = self._reporter.start()
        if queued:
            log.warning("%d execution report(s) from before the restart not delivered yet: delivering them",
                        queued)
        host, port = self.config.host_port
        self._server = await asyncio.start_server(self._serve, host, port, limit=MAX_LINE_BYTES)
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("MT5 bridge listening on %s:%s, gateway %s, execution reports %s", host, self.port,
                 self.config.target, path or "in memory")

    async def stop(self) -> None:
        """Stop serving; execution reports not delivered yet stay in the state file and are
        delivered after the next start. Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        if self._server is not None:
            self._server.close()
        for connection in list(self._connections):
            connection.close()
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 5)
        if self._reporter is not None:
            await self._reporter.stop()  # waiting requests get their reply ("queued") at once
        if self._tasks:  # every wait of a request is bounded by the decision timeout
            await asyncio.wait(list(self._tasks), timeout=self.config.decision_timeout_s + 1.0)
        if self._link is not None:
            await self._link.close()
        if self._db is not None:
            self._db.close()

    def pending_reports(self) -> list[str]:
        """Execution ids received from terminals and not yet answered by the gateway (oldest
        first): kept in the state file, delivered by the worker."""
        return self._reporter.pending_ids() if self._reporter is not None and not self._stopped else []

    def quarantined_reports(self) -> list[tuple[str, str]]:
        """(execution id, the gateway's answer) of the executions the gateway refused as
        malformed: kept in the state file, not delivered (``reports.ReportStore.quarantined``)."""
        return self._reporter.store.quarantined() if self._reporter is not None and not self._stopped else []

    def reports_status(self) -> dict[str, Any]:
        """The execution reports' state for ``pong``: how many wait for the gateway, how many
        it refused (quarantined), and why it is not answering, if it is not (``failing``:
        e.g. ``Unauthenticated: invalid bearer token`` for a revoked token; else null)."""
        failing = self._reporter.failing if self._reporter is not None else None
        return {
            "pending": len(self.pending_reports()),
            "quarantined": len(self.quarantined_reports()),
            "failing": f"{type(failing).__name__}: {failing.message}" if failing is not None else None,
        }

    def report_outcome(self, execution_id: str) -> str | None:
        """The gateway's answer to a delivered execution (``APPLIED``, ``DUPLICATE``,
        ``UNKNOWN_ORDER``, ``OVERFILL``), None if it was not delivered (yet)."""
        if self._reporter is None or self._stopped:
            return None
        return self._reporter.store.outcome(execution_id)

    async def run_forever(self) -> None:
        await self.start()
        try:
            await asyncio.Event().wait()
        finally:
            await self.stop()

    # -- gateway side --------------------------------------------------------------------

    async def _on_control(self, control: gateway_pb2.ControlMessage) -> None:
        if control.action != gateway_pb2.CONTROL_ACTION_CANCEL_ALL:
            return
        log.warning("CANCEL_ALL from %s: %s", control.requested_by or "gateway", control.reason)
        message = {
            "type": "control",
            "action": "cancel_all",
            "account": control.account,
            "symbol": self._mt5_symbol(control.symbol) if control.symbol else "",
            "reason": control.reason,
            "requested_by": control.requested_by,
        }
        for connection in list(self._connections):
            await connection.send({"v": connection.version, **message})

    def _mt5_symbol(self, gateway_symbol: str) -> str:
        for spec in self.config.symbols.values():
            if spec.gateway_symbol == gateway_symbol:
                return spec.name
        return gateway_symbol

    # -- requests ------------------------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connection = _Connection(writer)
        self._connections.add(connection)
        tasks: set[asyncio.Task] = set()
        try:
            while True:
                try:
                    line = await reader.readline()
                except (ValueError, asyncio.LimitOverrunError):
                    await connection.send(
                        self._error(connection.version, None, "BAD_REQUEST", "line longer than 64 KiB")
                    )
                    break
                except ConnectionError:
                    break
                if not line:
                    break
                if not line.strip():
                    continue
                task = asyncio.create_task(self._handle_line(connection, line))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
        finally:
            if tasks:
                await asyncio.gather(*tasks, return_exceptions=True)
            self._connections.discard(connection)
            connection.close()

    async def _handle_line(self, connection: _Connection, line: bytes) -> None:
        request_id = None
        try:
            try:
                request = json.loads(line)
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise ProtocolError("BAD_REQUEST", f"not a JSON object: {exc}") from None
            if not isinstance(request, dict):
                raise ProtocolError("BAD_REQUEST", "not a JSON object")
            request_id = request.get("id")
            version = request.get("v")
            if isinstance(version, bool) or version not in SUPPORTED_VERSIONS:
                raise ProtocolError(
                    "UNSUPPORTED_VERSION",
                    f"protocol version {version!r}; this bridge speaks "
                    + ", ".join(str(v) for v in SUPPORTED_VERSIONS),
                )
            version = int(version)  # 1.0 is 1, as v1 always took it
            connection.version = version  # pushed control messages use the terminal's version
            if not isinstance(request_id, str | int) or isinstance(request_id, bool) or request_id == "":
                raise ProtocolError("BAD_REQUEST", "id: a request id (string or integer) is required")
            kind = request.get("type")
            if kind == "check":
                reply = await self._check(request)
            elif kind == "execution":
                reply = await self._execution(request, version)
            elif kind == "ping":
                reply = {"type": "pong", "server_time_ns": time.time_ns(),
                         "versions": list(SUPPORTED_VERSIONS), "reports": self.reports_status()}
            else:
                raise ProtocolError("BAD_REQUEST", f"type: unknown message type {kind!r}")
            reply = {"v": version, "id": request_id, **reply}
        except ProtocolError as exc:
            reply = self._error(connection.version, request_id, exc.code, exc.message)
        except Exception as exc:  # noqa: BLE001 - a bridge bug must still answer (fail closed)
            log.exception("MT5 request failed")
            reply = self._error(connection.version, request_id, "INTERNAL", f"{type(exc).__name__}: {exc}")
        await connection.send(reply)

    @staticmethod
    def _error(version: int, request_id, code: str, message: str) -> dict:
        return {"v": version, "id": request_id, "type": "error", "code": code, "message": message}

    @staticmethod
    def _fail_closed(client_order_id: str, code: str, detail: str) -> dict:
        log.warning("order %s rejected by the bridge (fail closed): %s %s", client_order_id, code, detail)
        return {
            "type": "decision",
            "client_order_id": client_order_id,
            "verdict": "reject",
            "failures": [{"code": code, "detail": detail}],
            "sequence": 0,
            "gateway_id": "",
        }

    def _spec(self, request: dict):
        symbol = _text(request, "symbol")
        spec = self.config.symbols.get(symbol)
        if spec is None:
            raise ProtocolError("UNKNOWN_SYMBOL", f"symbol {symbol!r} has no spec in the bridge config")
        return spec

    async def _check(self, request: dict) -> dict:
        client_order_id = _text(request, "client_order_id")
        spec = self._spec(request)
        order_type = _choice(request, "order_type", _ORDER_TYPES, "limit")
        try:
            quantity = spec.quantity_nanos(request.get("volume"))
            price = spec.price_nanos(request.get("price")) if order_type == types_pb2.ORDER_TYPE_LIMIT else 0
        except ConversionError as exc:
            return self._fail_closed(client_order_id, BRIDGE_INVALID_ORDER, str(exc))
        order = types_pb2.Order(
            client_order_id=client_order_id,
            account=_text(request, "account"),
            strategy=_text(request, "strategy", required=False),
            symbol=spec.gateway_symbol,
            side=_choice(request, "side", _SIDES),
            order_type=order_type,
            quantity_nanos=quantity,
            price_nanos=price,
            request_id=_text(request, "request_id", required=False),
            trace_id=_text(request, "trace_id", required=False),
        )
        try:
            decision = await self._link.decide(order)  # at most decision_timeout_s, reconnecting included
        except GatewayError as exc:
            code = BRIDGE_DECISION_TIMEOUT if isinstance(exc, DeadlineExceeded) else BRIDGE_GATEWAY_UNAVAILABLE
            return self._fail_closed(client_order_id, code, f"{type(exc).__name__}: {exc.message}")
        accepted = decision.verdict == types_pb2.VERDICT_ACCEPT
        if not accepted:
            log.info(
                "order %s rejected: %s",
                client_order_id,
                "; ".join(f"{f.code} {f.detail}" for f in decision.failures),
            )
        return {
            "type": "decision",
            "client_order_id": client_order_id,
            "verdict": "accept" if accepted else "reject",
            "failures": [
                {"code": f.code, "detail": f.detail, "limit": f.limit, "observed": f.observed, "rule_path": f.rule_path}
                for f in decision.failures
            ],
            "sequence": decision.sequence,
            "gateway_id": decision.gateway_id,
            "quantity": format(qty_from_nanos(order.quantity_nanos).normalize(), "f"),
            "price": format(price_from_nanos(order.price_nanos).normalize(), "f"),
        }

    async def _execution(self, request: dict, version: int) -> dict:
        exec_type = _choice(request, "exec_type", _EXEC_TYPES)
        execution = types_pb2.Execution(
            account=_text(request, "account"),
            client_order_id=_text(request, "client_order_id"),
            execution_type=exec_type,
            execution_id=_text(request, "execution_id"),
            transact_ns=time.time_ns(),
        )
        transact_ns = request.get("transact_ns")
        if transact_ns is not None:
            if not isinstance(transact_ns, int) or isinstance(transact_ns, bool) or transact_ns <= 0:
                raise ProtocolError("BAD_REQUEST", "transact_ns: a positive integer (Unix epoch ns)")
            execution.transact_ns = transact_ns
        if exec_type in _FILLS:
            spec = self._spec(request)
            try:
                execution.last_quantity_nanos = spec.quantity_nanos(request.get("volume"))
                execution.last_price_nanos = spec.price_nanos(request.get("price"))
            except ConversionError as exc:
                raise ProtocolError("BAD_REQUEST", str(exc)) from None
        # committed to the state file before any reply: from here on the bridge delivers it
        delivery = self._reporter.submit(execution)
        status = await self._reporter.outcome(delivery, self.config.decision_timeout_s)
        if delivery.refused is not None:  # quarantined: the terminal must not send it again
            raise ProtocolError("INVALID_EXECUTION", f"{delivery.refused}; the bridge keeps it in quarantine, "
                                                     "not delivered")
        if status is None:  # the gateway did not answer (yet): the worker retries until it does
            if version >= 2:
                return {"type": "execution_result", "client_order_id": execution.client_order_id,
                        "status": STATUS_QUEUED}
            error = self._reporter.failing
            raise ProtocolError(
                "GATEWAY_UNAVAILABLE",
                (f"{type(error).__name__}: {error.message}; " if error is not None else "no answer in time; ")
                + "the bridge keeps the execution and reports it when the gateway is back (a retry is safe)",
            )
        name = "duplicate" if delivery.repeat else status_name(status).lower()
        return {"type": "execution_result", "client_order_id": execution.client_order_id, "status": name}


class _Connection:
    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self._writer = writer
        self._lock = asyncio.Lock()
        #: the protocol version of the terminal's last valid request (1 until it sent one)
        self.version = 1

    async def send(self, message: dict[str, Any]) -> None:
        data = json.dumps(message, separators=(",", ":")).encode() + b"\n"
        async with self._lock:
            if self._writer.is_closing():
                return
            try:
                self._writer.write(data)
                await self._writer.drain()
            except ConnectionError:
                self._writer.close()

    def close(self) -> None:
        self._writer.close()
