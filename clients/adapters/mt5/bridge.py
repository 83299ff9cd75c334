"""The MT5 bridge: an asyncio TCP server speaking the pretrade MT5 wire protocol v1.

Protocol (docs/adapters.md is the reference): one JSON object per line (UTF-8, ``\\n``
terminated, at most 64 KiB). Every request carries ``"v": 1``, a terminal-chosen request
id ``"id"`` (echoed in the reply) and a ``"type"``:

* ``check``     → ``decision``          an order to decide before OrderSend
* ``execution`` → ``execution_result``  a deal / cancel / reject of a checked order
* ``ping``      → ``pong``

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
import time
from typing import Any

from clients import DeadlineExceeded, GatewayError
from clients.adapters.link import GatewayLink
from clients.adapters.mt5.config import BridgeConfig, ConversionError
from clients.orders import price_from_nanos, qty_from_nanos
from pretrade.v1 import gateway_pb2, types_pb2

PROTOCOL_VERSION = 1
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
        self._server: asyncio.AbstractServer | None = None
        self._connections: set[_Connection] = set()
        self.port: int | None = None

    async def start(self) -> None:
        self._link = GatewayLink(
            self.config.target, self.config.token, self.config.decision_timeout_s,
            batch_max_delay_s=self.config.batch_max_delay_s, on_control=self._on_control,
        )
        host, port = self.config.host_port
        self._server = await asyncio.start_server(self._serve, host, port, limit=MAX_LINE_BYTES)
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("MT5 bridge listening on %s:%s, gateway %s", host, self.port, self.config.target)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for connection in list(self._connections):
            connection.close()
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 5)
        if self._link is not None:
            await self._link.close()

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
            "v": PROTOCOL_VERSION,
            "type": "control",
            "action": "cancel_all",
            "account": control.account,
            "symbol": self._mt5_symbol(control.symbol) if control.symbol else "",
            "reason": control.reason,
            "requested_by": control.requested_by,
        }
        for connection in list(self._connections):
            await connection.send(message)

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
                    await connection.send(self._error(None, "BAD_REQUEST", "line longer than 64 KiB"))
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
            if request.get("v") != PROTOCOL_VERSION:
                raise ProtocolError(
                    "UNSUPPORTED_VERSION", f"protocol version {request.get('v')!r}; this bridge speaks 1"
                )
            if not isinstance(request_id, str | int) or isinstance(request_id, bool) or request_id == "":
                raise ProtocolError("BAD_REQUEST", "id: a request id (string or integer) is required")
            kind = request.get("type")
            if kind == "check":
                reply = await self._check(request)
            elif kind == "execution":
                reply = await self._execution(request)
            elif kind == "ping":
                reply = {"type": "pong", "server_time_ns": time.time_ns()}
            else:
                raise ProtocolError("BAD_REQUEST", f"type: unknown message type {kind!r}")
            reply = {"v": PROTOCOL_VERSION, "id": request_id, **reply}
        except ProtocolError as exc:
            reply = self._error(request_id, exc.code, exc.message)
        except Exception as exc:  # noqa: BLE001 - a bridge bug must still answer (fail closed)
            log.exception("MT5 request failed")
            reply = self._error(request_id, "INTERNAL", f"{type(exc).__name__}: {exc}")
        await connection.send(reply)

    @staticmethod
    def _error(request_id, code: str, message: str) -> dict:
        return {"v": PROTOCOL_VERSION, "id": request_id, "type": "error", "code": code, "message": message}

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

    async def _execution(self, request: dict) -> dict:
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
        try:
            (result,) = await self._link.report_executions([execution])
        except GatewayError as exc:
            raise ProtocolError("GATEWAY_UNAVAILABLE", f"{type(exc).__name__}: {exc.message}") from None
        status = types_pb2.ExecutionStatus.Name(result.status).removeprefix("EXECUTION_STATUS_").lower()
        return {"type": "execution_result", "client_order_id": execution.client_order_id, "status": status}


class _Connection:
    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self._writer = writer
        self._lock = asyncio.Lock()

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
