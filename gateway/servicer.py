"""The gRPC services: the order gate (GatewayService) and gateway administration (AdminService).

Hot path of one order (all on the event loop thread, no ``await`` between deciding and
recording, so nothing can interleave and sequences are assigned in decision order):

    read and validate the order from the request bytes (gateway.orders) -> engine.check
    -> serialize the Decision (next sequence, gateway id, rules version, timestamps,
    explained failures; gateway.wire) -> outbox.append -> publisher.notify() -> respond
    with those same bytes framed into the response

The per-order part (from engine.check to publisher.notify) is compiled:
``gateway.orderpath.OrderPath``, which :class:`OrderGate` extends.

The outbox append happens before the response is returned, so a decision a client has
seen survives a crash of the gateway (``gateway.outbox``); the publisher copies it to
JetStream in the background. A decision is serialized once: the client receives byte for
byte what is published and ledgered. The servicer's order methods therefore return
serialized responses, which the server registers with a pass-through serializer
(``gateway.server``), and take their requests as bytes. A request the reader cannot
answer on its fast path is parsed by the protobuf library and explained field by field
(INVALID_ARGUMENT, ``gateway.validation``).

Fail closed: an exception while deciding one order turns that order into a REJECT with
reason code INTERNAL_ERROR (still recorded and published); an accepted order whose decision
cannot be built or recorded is released in the kernel first. If the decision log itself
cannot be written, the batch's orders are answered with unrecorded INTERNAL_ERROR rejects
(sequence 0) and every kernel effect of the batch is undone.

State the servicer keeps beside the kernel:

* idempotency: ``(account, request_id)`` -> serialized decision, bounded (least recently
  used entries go first); a retry gets the original decision with ``replayed = true``;
* working orders: ``(account, client_order_id)`` -> kernel handle, so that execution
  reports (which name orders the way the venue does) reach the kernel;
* execution ids already applied, bounded, to drop duplicate reports;
* open order streams, for cancel-on-disconnect and for control messages (kill switch).

Ledger events: with a :class:`GatewayEventLog`, every execution report (with the status it
got) and every rules load is recorded in a second outbox before the RPC returns, and
published to ``PRETRADE_EVENTS`` like decisions, so the ledger sees the whole order
lifecycle (docs/ledger.md).
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
import time
import uuid
from collections import OrderedDict
from collections.abc import Sequence
from typing import Callable

import grpc
from google.protobuf.message import DecodeError

from fastpath.codes import Check, ExecStatus
from fastpath.errors import RulesError
from fastpath.rules import CompiledRules, LimitOverride, load_rules_with_text
from gateway.auth import current_principal
from gateway.config import (
    DEFAULT_EXECUTION_DEDUP_CAPACITY,
    DEFAULT_IDEMPOTENCY_CAPACITY,
    DEFAULT_MAX_OPEN_STREAMS,
)
from gateway.metrics import GatewayMetrics
from gateway.orderpath import OrderPath, WorkingOrder
from gateway.orders import OrderReader
from gateway.validation import RequestValidator, invalid_argument_status
from gateway.wire import (
    check_order_response,
    check_orders_response,
    encode_decision,
    stream_orders_response,
)
from pretrade.v1 import gateway_pb2, gateway_pb2_grpc, ledger_pb2, types_pb2

log = logging.getLogger(__name__)

_FILL_TYPES = frozenset((types_pb2.EXECUTION_TYPE_PARTIAL_FILL, types_pb2.EXECUTION_TYPE_FILL))
_EXEC_STATUS_TO_PROTO = {
    ExecStatus.OK: types_pb2.EXECUTION_STATUS_APPLIED,
    ExecStatus.OVERFILL: types_pb2.EXECUTION_STATUS_OVERFILL,
    ExecStatus.UNKNOWN_ORDER: types_pb2.EXECUTION_STATUS_UNKNOWN_ORDER,
}
VERDICT_REJECT = types_pb2.VERDICT_REJECT
#: Sequence of a decision that could not be recorded (the decision log failed).
UNRECORDED_SEQUENCE = 0
#: How long a control message (kill switch) may wait for one stream's flow control, seconds.
DEFAULT_CONTROL_SEND_TIMEOUT_S = 2.0


class BoundedMemory(OrderedDict):
    """A dict that forgets its least recently used entries beyond ``capacity``."""

    def __init__(self, capacity: int) -> None:
        super().__init__()
        self.capacity = capacity

    def remember(self, key, value) -> None:
        self[key] = value
        self.move_to_end(key)
        if len(self) > self.capacity:
            self.popitem(last=False)


class GatewayEventLog:
    """The gateway's ledger events, recorded like decisions (outbox first, publish later).

    :meth:`record` numbers events ``last_sequence + 1, ...`` of the event outbox (their own
    sequence space, contiguous per gateway like decisions'), stamps gateway id and time,
    appends them in one outbox append (no fsync: the process-crash guarantee of
    ``gateway.outbox``) and wakes the publisher (a ``DecisionPublisher`` with
    ``target=EVENTS_TARGET``). Called on the event loop thread only. Raises the outbox's
    errors: the caller decides what an unrecorded event means for its RPC.
    """

    def __init__(self, outbox, publisher, gateway_id: str, *, clock: Callable[[], int] = time.time_ns) -> None:
        self.outbox = outbox
        self.publisher = publisher
        self.gateway_id = gateway_id
        self._clock = clock

    def record(self, events: Sequence[ledger_pb2.GatewayEvent]) -> None:
        occurred_ns = self._clock()
        sequence = self.outbox.last_sequence
        records = []
        for event in events:
            sequence += 1
            event.gateway_id = self.gateway_id
            event.sequence = sequence
            event.occurred_ns = occurred_ns
            records.append((sequence, event.SerializeToString()))
        self.outbox.append(records)
        self.publisher.notify()


class OrderStream:
    """One open StreamOrders call: where its responses go and which orders it owns."""

    def __init__(self, stream_id: int, principal_name: str, context: grpc.aio.ServicerContext) -> None:
        self.stream_id = stream_id
        self.principal_name = principal_name
        self.cancel_on_disconnect = False
        self.working: set[WorkingOrder] = set()
        self._context = context
        self._write_lock = asyncio.Lock()  # decision batches and control messages interleave

    async def send(self, response: gateway_pb2.StreamOrdersResponse | bytes) -> None:
        """Write a response: a message (control) or one serialized by gateway.wire."""
        async with self._write_lock:
            await self._context.write(response)


class OrderGate(OrderPath):
    """Kernel + decision log + the servicer-side state (see the module docstring). The
    order path itself, :meth:`decide`, is compiled: :class:`gateway.orderpath.OrderPath`."""

    def __init__(
        self,
        engine,
        outbox,
        publisher,
        gateway_id: str,
        *,
        metrics: GatewayMetrics | None = None,
        idempotency_capacity: int = DEFAULT_IDEMPOTENCY_CAPACITY,
        execution_dedup_capacity: int = DEFAULT_EXECUTION_DEDUP_CAPACITY,
        clock: Callable[[], int] = time.time_ns,
        events: GatewayEventLog | None = None,
    ) -> None:
        super().__init__(engine, outbox, publisher, gateway_id, metrics, clock, BoundedMemory(idempotency_capacity))
        self.events = events
        self._applied_executions = BoundedMemory(execution_dedup_capacity)

    # -- orders (decide: OrderPath) ---------------------------------------------------------
    def _gateway_reject(self, order, sequence: int, received_ns: int, code: Check, detail: str):
        """(serialized REJECT the gateway decides without the kernel (fail closed), its one
        failure code, None)."""
        payload = encode_decision(
            VERDICT_REJECT,
            [types_pb2.CheckFailure(code=code.name, detail=detail).SerializeToString()],
            sequence, self._gateway_id_bytes, self.rules_version_bytes(),
            received_ns, self._clock(), order.encoded, 0,
        )
        return payload, (code.name,), None

    def _undo_unrecorded(self, orders, payloads, accepted, remembered, received_ns: int, exc: BaseException) -> None:
        """The decision log refused a batch: undo its kernel effects and turn every new
        decision of it into an unrecorded INTERNAL_ERROR reject, in ``payloads``."""
        for working in accepted:
            self._forget(working)
            self._release_quietly(working.handle)
        for key in remembered:
            self._replies.pop(key, None)
        first_unrecorded = self.outbox.last_sequence + 1
        self._next_sequence = first_unrecorded
        # Replays of decisions recorded earlier stand; everything numbered in this batch
        # (replays of this batch's own decisions included) was never recorded. A rare
        # path: reading the sequence back from the bytes is fine here.
        for index, payload in enumerate(payloads):
            if types_pb2.Decision.FromString(payload).sequence >= first_unrecorded:
                payloads[index], _, _ = self._gateway_reject(
                    orders[index], UNRECORDED_SEQUENCE, received_ns, Check.INTERNAL_ERROR, f"error={type(exc).__name__}"
                )

    def _release_quietly(self, handle: int) -> None:
        try:
            self.engine.release(handle)
        except Exception:
            log.exception("could not release kernel handle %d", handle)

    # -- working orders ---------------------------------------------------------------------
    def _forget(self, working: WorkingOrder) -> None:
        if self.working.get(working.key) is working:
            del self.working[working.key]
        if working.stream is not None:
            working.stream.working.discard(working)

    def release_stream_orders(self, stream: OrderStream) -> int:
        """Cancel-on-disconnect: release every order of ``stream`` that is still working."""
        released = 0
        for working in list(stream.working):
            self._forget(working)
            if self.engine.release(working.handle) == ExecStatus.OK:
                released += 1
        return released

    # -- executions and market data ----------------------------------------------------------
    def apply_executions(self, executions) -> list[gateway_pb2.ExecutionResult]:
        """Apply validated execution reports in order; one result per report.

        With an event log, every report and the status it got is recorded before this
        returns. The reports are applied first (the status is part of the record); if the
        record then fails the error propagates (the RPC fails, the venue retries, and the
        retry is recorded as a DUPLICATE of the already applied report).
        """
        applied = [self._apply_execution(execution) for execution in executions]
        if self.events is not None and applied:
            try:
                self.events.record(
                    [
                        ledger_pb2.GatewayEvent(
                            execution_reported=ledger_pb2.ExecutionReported(
                                execution=execution, status=result.status, decision_sequence=decision_sequence
                            )
                        )
                        for execution, (result, decision_sequence) in zip(executions, applied)
                    ]
                )
            except Exception:
                log.critical("execution reports applied but not recorded for the ledger", exc_info=True)
                raise
        return [result for result, _ in applied]

    def _apply_execution(self, execution) -> tuple[gateway_pb2.ExecutionResult, int]:
        """The result of one report and the sequence of the decision that accepted its
        order (0 when no working order matched)."""
        result = gateway_pb2.ExecutionResult(
            account=execution.account,
            client_order_id=execution.client_order_id,
            execution_id=execution.execution_id,
        )
        if execution.execution_id in self._applied_executions:
            result.status = types_pb2.EXECUTION_STATUS_DUPLICATE
            return result, 0
        working = self.working.get((execution.account, execution.client_order_id))
        if working is None:
            result.status = types_pb2.EXECUTION_STATUS_UNKNOWN_ORDER
            return result, 0
        if execution.execution_type in _FILL_TYPES:
            quantity = execution.last_quantity_nanos
            status = self.engine.fill(working.handle, quantity, execution.last_price_nanos)
            working.remaining_nanos -= quantity
            order_ended = working.remaining_nanos <= 0 or status != ExecStatus.OK
            if execution.execution_type == types_pb2.EXECUTION_TYPE_FILL and not order_ended:
                # The venue says the order is done: release whatever the kernel still reserves.
                self.engine.release(working.handle)
                order_ended = True
        else:
            status = self.engine.release(working.handle)
            order_ended = True
        if status not in _EXEC_STATUS_TO_PROTO:
            raise RuntimeError(f"kernel refused a validated execution: {status.name}")
        if order_ended:
            self._forget(working)
        result.status = _EXEC_STATUS_TO_PROTO[status]
        if status != ExecStatus.UNKNOWN_ORDER:
            self._applied_executions.remember(execution.execution_id, True)
        return result, working.decision_sequence

    def record_rules_loaded(
        self, rules: CompiledRules, text: str, previous_version: str = "", overrides: Sequence[LimitOverride] = ()
    ) -> None:
        """Record that ``rules`` (compiled from ``text`` with the limit ``overrides`` on
        top) are in force: at startup (no ``previous_version``) and after every reload
        (``RulesReloader(on_loaded=...)``). Does nothing without an event log."""
        if self.events is None:
            return
        cause = ledger_pb2.RULES_LOAD_CAUSE_RELOAD if previous_version else ledger_pb2.RULES_LOAD_CAUSE_STARTUP
        self.events.record(
            [
                ledger_pb2.GatewayEvent(
                    rules_loaded=ledger_pb2.RulesLoaded(
                        rules_version=rules.version,
                        previous_version=previous_version,
                        source=rules.source,
                        text=text,
                        cause=cause,
                        override_ids=[override.override_id for override in overrides],
                    )
                )
            ]
        )

    def apply_reference_price(self, symbol: str, price_nanos: int, timestamp_ns: int) -> bool:
        """Record a reference price; False for a symbol the rules do not declare."""
        return self.engine.set_reference_price(symbol, price_nanos, timestamp_ns)


# ------------------------------------------------------------------------------------------
# Error handling shared by the servicers.
# ------------------------------------------------------------------------------------------


def _guarded(method):
    """Turn any unexpected exception of a servicer method into INTERNAL with a message and
    a reference to the log line, instead of gRPC's bare UNKNOWN."""

    @functools.wraps(method)
    async def guarded(self, request, context):
        try:
            return await method(self, request, context)
        except (grpc.aio.AbortError, asyncio.CancelledError):
            raise
        except Exception as exc:
            reference = uuid.uuid4().hex[:12]
            log.exception("unexpected error in %s (ref %s)", method.__name__, reference)
            await context.abort(
                grpc.StatusCode.INTERNAL,
                f"internal error in {method.__name__}: {type(exc).__name__} (gateway log ref {reference})",
            )

    return guarded


async def _abort_invalid(context, violations) -> None:
    """End the call with INVALID_ARGUMENT naming every violation. Callers test for
    violations first, so a valid request (the hot path) creates no coroutine here."""
    await context.abort_with_status(invalid_argument_status(violations))


def _principal_name() -> str:
    principal = current_principal.get()
    return principal.name if principal is not None else ""


class GatewayServicer(gateway_pb2_grpc.GatewayServiceServicer):
    """pretrade.v1.GatewayService over an :class:`OrderGate`."""

    def __init__(
        self,
        gate: OrderGate,
        validator: RequestValidator | None = None,
        *,
        max_open_streams: int = DEFAULT_MAX_OPEN_STREAMS,
        metrics: GatewayMetrics | None = None,
    ) -> None:
        self.gate = gate
        self.validator = validator or RequestValidator()
        self.reader = OrderReader(self.validator.limits)
        self.max_open_streams = max_open_streams
        self._metrics = metrics
        self._streams: dict[int, OrderStream] = {}
        self._stream_ids = itertools.count(1)

    @property
    def open_streams(self) -> int:
        return len(self._streams)

    async def _read_slowly(self, read, message_type, request: bytes, violations_of, context):
        """The order requests' slow path, when ``read`` (a method of :attr:`reader`) could
        not answer: parse ``request`` with the protobuf library and end the call with
        INVALID_ARGUMENT naming every malformed field; a valid request in an encoding the
        reader leaves to the library (an order in several parts) is read again from its
        canonical serialization."""
        try:
            message = message_type.FromString(request)
        except DecodeError as exc:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, f"not a valid {message_type.DESCRIPTOR.full_name}: {exc}"
            )
        if violations := violations_of(message):
            await _abort_invalid(context, violations)
        result = read(message.SerializeToString())
        if result is None:  # fail closed; tests/gateway/test_orders.py keeps the two in agreement
            raise RuntimeError(f"gateway.orders refused a {message_type.DESCRIPTOR.full_name} the validator accepts")
        return result

    @_guarded
    async def CheckOrder(self, request: bytes, context):  # noqa: N802 (gRPC method name)
        read = self.reader.check_order_request
        order = read(request)
        if order is None:
            order = await self._read_slowly(
                read, gateway_pb2.CheckOrderRequest, request, self.validator.check_order_violations, context
            )
        (decision,) = self.gate.decide((order,))
        return check_order_response(decision)

    def _batch_violations(self, message) -> list:
        return self.validator.order_batch_violations(message.orders)

    @_guarded
    async def CheckOrders(self, request: bytes, context):  # noqa: N802
        read = self.reader.check_orders_request
        orders = read(request)
        if orders is None:
            orders = await self._read_slowly(
                read, gateway_pb2.CheckOrdersRequest, request, self._batch_violations, context
            )
        return check_orders_response(self.gate.decide(orders))

    @_guarded
    async def StreamOrders(self, request_iterator, context):  # noqa: N802 (requests: bytes)
        if len(self._streams) >= self.max_open_streams:
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"too many open order streams (limit {self.max_open_streams})",
            )
        # Headers now, before any decision: a client can then tell "stream admitted" from
        # "refused" before its first write (a write racing a refusal can mask its status).
        await context.send_initial_metadata(())
        stream = OrderStream(next(self._stream_ids), _principal_name(), context)
        self._streams[stream.stream_id] = stream
        if self._metrics is not None:
            self._metrics.open_streams.inc()
        read = self.reader.stream_orders_request
        try:
            first = True
            async for request in request_iterator:
                batch = read(request)
                if batch is None:
                    batch = await self._read_slowly(
                        read, gateway_pb2.StreamOrdersRequest, request, self._batch_violations, context
                    )
                if first:
                    stream.cancel_on_disconnect = batch.cancel_on_disconnect
                    first = False
                decisions = self.gate.decide(batch.orders, stream if stream.cancel_on_disconnect else None)
                await stream.send(stream_orders_response(batch.batch_id, decisions))
        finally:
            del self._streams[stream.stream_id]
            if self._metrics is not None:
                self._metrics.open_streams.dec()
            if stream.working:
                released = self.gate.release_stream_orders(stream)
                log.info(
                    "stream %d of %s ended: cancel-on-disconnect released %d working orders",
                    stream.stream_id,
                    stream.principal_name,
                    released,
                )

    async def broadcast_control(
        self, message: gateway_pb2.ControlMessage, timeout_s: float = DEFAULT_CONTROL_SEND_TIMEOUT_S
    ) -> int:
        """Send ``message`` (e.g. CANCEL_ALL from the kill switch) to every open order
        stream, concurrently so that one slow reader delays no one else; returns how many
        streams took it within ``timeout_s`` (the others are logged)."""
        response = gateway_pb2.StreamOrdersResponse(control=message)
        streams = list(self._streams.values())
        outcomes = await asyncio.gather(
            *(asyncio.wait_for(stream.send(response), timeout_s) for stream in streams),
            return_exceptions=True,
        )
        reached = 0
        for stream, outcome in zip(streams, outcomes):
            if isinstance(outcome, BaseException):
                log.warning("control message not delivered to stream %d: %r", stream.stream_id, outcome)
            else:
                reached += 1
        return reached

    @_guarded
    async def ReportExecutions(self, request, context):  # noqa: N802
        if violations := self.validator.executions_violations(request):
            await _abort_invalid(context, violations)
        return gateway_pb2.ReportExecutionsResponse(results=self.gate.apply_executions(request.executions))

    @_guarded
    async def UpdateReferencePrices(self, request, context):  # noqa: N802
        if violations := self.validator.reference_prices_violations(request, time.time_ns()):
            await _abort_invalid(context, violations)
        response = gateway_pb2.UpdateReferencePricesResponse()
        for price in request.prices:
            if self.gate.apply_reference_price(price.symbol, price.price_nanos, price.timestamp_ns):
                response.applied += 1
            else:
                response.unknown_symbols.append(price.symbol)
        return response


class RulesReloader:
    """Recompile a rules file off the event loop thread and swap it into the engine on it.

    Compilation takes milliseconds to seconds; the swap is one assignment, so the order
    path never pauses. Reloads are serialized (one compile at a time). The default path is
    the file the engine's current rules came from.

    ``on_loaded(rules, text, previous_version, overrides)`` (e.g.
    ``OrderGate.record_rules_loaded``) runs on the loop just before the swap; if it raises,
    the old rules stay in force, so no rules are ever used that the ledger was not told
    about.

    Every reload, whoever asked for it, is counted here by outcome in ``metrics``
    (:meth:`GatewayMetrics.count_rules_reload`): a failed one leaves stale limits in force.
    """

    def __init__(
        self,
        engine,
        on_loaded: Callable[[CompiledRules, str, str, Sequence[LimitOverride]], object] | None = None,
        metrics: GatewayMetrics | None = None,
    ) -> None:
        self._engine = engine
        self._on_loaded = on_loaded
        self._metrics = metrics
        self._lock = asyncio.Lock()
        #: Temporary limit overrides in force (set by the halt follower); every reload
        #: compiles them on top of the file, so a SIGHUP never drops an approved override.
        self.overrides: tuple[LimitOverride, ...] = ()

    async def reload(
        self, path: str | None = None, overrides: Sequence[LimitOverride] | None = None
    ) -> tuple[str, str]:
        """(previous version, new version); raises RulesError and keeps the old rules (and
        overrides) when the file or an override does not compile. ``overrides`` replaces
        the set in force; None keeps it."""
        async with self._lock:
            source = path or self._engine.rules.source
            in_force = self.overrides if overrides is None else tuple(overrides)
            try:
                rules, text = await asyncio.to_thread(
                    load_rules_with_text, source, self._engine.interner, in_force
                )
                previous = self._engine.version
                if self._on_loaded is not None:
                    self._on_loaded(rules, text, previous, in_force)
            except Exception:
                self._count(succeeded=False)
                raise
            self.overrides = in_force
            self._engine.reload(rules)
            self._count(succeeded=True)
            log.info("rules reloaded from %s: %s -> %s", source, previous[:12], rules.version[:12])
            return previous, rules.version

    def _count(self, succeeded: bool) -> None:
        if self._metrics is not None:
            self._metrics.count_rules_reload(succeeded)


class AdminServicer(gateway_pb2_grpc.AdminServiceServicer):
    """pretrade.v1.AdminService: hot reload and status."""

    def __init__(
        self,
        gate: OrderGate,
        reloader: RulesReloader,
        validator: RequestValidator | None = None,
        *,
        started_ns: int | None = None,
    ) -> None:
        self.gate = gate
        self.reloader = reloader
        self.validator = validator or RequestValidator()
        self.started_ns = started_ns if started_ns is not None else time.time_ns()

    @_guarded
    async def ReloadRules(self, request, context):  # noqa: N802
        if violations := self.validator.reload_violations(request):
            await _abort_invalid(context, violations)
        try:
            previous, current = await self.reloader.reload(request.path or None)
        except RulesError as exc:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(exc))
        log.info("rules reloaded by %s", _principal_name())
        return gateway_pb2.ReloadRulesResponse(previous_version=previous, rules_version=current)

    @_guarded
    async def GetStatus(self, request, context):  # noqa: N802
        gate = self.gate
        return gateway_pb2.GetStatusResponse(
            gateway_id=gate.gateway_id,
            rules_version=gate.engine.version,
            rules_path=gate.engine.rules.source,
            nats_connected=bool(gate.publisher.connected),
            last_sequence=gate.last_sequence,
            outbox_depth=gate.publisher.outbox_depth,
            started_ns=self.started_ns,
        )
