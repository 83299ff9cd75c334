"""FIX 4.4 adapter on the QuickFIX engine (``pip install 'pretrade[fix]'``).

Two QuickFIX engines, configured by ordinary QuickFIX session settings files:

* an **acceptor** for the clients' sessions: NewOrderSingle (35=D), OrderCancelRequest
  (35=F) and OrderCancelReplaceRequest (35=G);
* an **initiator** to the venue (its first session), where accepted orders go.

Both are QuickFIX's *threaded* engines (ThreadedSocketAcceptor / ThreadedSocketInitiator,
one thread per session): with the single-threaded SocketAcceptor, ``stop()`` crashed the
process now and then in the loopback tests (quickfix 1.16 Python wheel).

Logon, heartbeats, sequence numbers, resend and persistence are QuickFIX's. The adapter's
own logic runs on an asyncio loop: QuickFIX callbacks (its threads) hand each application
message over with ``call_soon_threadsafe``; sends use ``Session.sendToTarget``.

* 35=D → checked through StreamOrders (orders of all sessions coalesced by one
  :class:`clients.OrderBatcher`). Rejected → ExecutionReport 150=8/39=8 with OrdRejReason
  (103) from :mod:`clients.adapters.fix.reasons` and Text (58) ``CODE: detail``; never a
  session Reject. Accepted → forwarded to the venue with the same ClOrdID.
* 35=F → forwarded at once (cancels are never blocked).
* 35=G → the replacement is checked as a new order (ClOrdID = the new 11); rejected →
  OrderCancelReject 35=9 (434=2, 102=99, 58 ``CODE: detail``: the original order keeps
  working); accepted → forwarded.
* Venue ExecutionReports / OrderCancelRejects are relayed to the owning client session and
  turned into ``ReportExecutions`` (fills, partial fills, cancels, venue rejects, expiries;
  a confirmed replace ends the original order in the gateway).
* CANCEL_ALL from the gateway (kill switch) → an OrderCancelRequest to the venue for every
  working order in scope; the venue's cancels reach the clients as unsolicited
  ExecutionReports 150=4 on their own ClOrdID.
* An accepted order (or replace) is sent only while the venue session is logged on; if it
  is not, the client gets a reject (VENUE_UNAVAILABLE) and the gateway a VENUE_REJECTED
  execution (exposure released).
* The order book (:mod:`clients.adapters.fix.book`, SQLite) is written before each send, so
  a restarted adapter still relays and reports the venue's messages for earlier orders;
  executions are reported in order, retried until the gateway answers, and the ones not
  acknowledged are reported again at the next start.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import sys
import time
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path

import grpc
import quickfix as fix

from clients import DeadlineExceeded, GatewayError
from clients.adapters.fix.book import OrderBook, WorkingOrder
from clients.adapters.fix.reasons import OTHER, ord_rej_reason
from clients.adapters.link import GatewayLink
from clients.adapters.reports import ExecutionReporter
from fastpath.codes import PRICE_SCALE, QTY_SCALE
from fastpath.fixedpoint import FixedPointError, to_fixed
from pretrade.v1 import gateway_pb2, types_pb2

log = logging.getLogger("pretrade.fix")

# tags
ACCOUNT, AVG_PX, CL_ORD_ID, CUM_QTY, EXEC_ID, LAST_PX, LAST_QTY = 1, 6, 11, 14, 17, 31, 32
MSG_TYPE, ORDER_ID, ORDER_QTY, ORD_STATUS, ORD_TYPE, ORIG_CL_ORD_ID, PRICE = 35, 37, 38, 39, 40, 41, 44
SIDE, SYMBOL, TEXT, TIME_IN_FORCE, TRANSACT_TIME = 54, 55, 58, 59, 60
ORD_REJ_REASON, CXL_REJ_REASON, EXEC_TYPE, LEAVES_QTY, CXL_REJ_RESPONSE_TO = 103, 102, 150, 151, 434

_SIDES = {"1": types_pb2.SIDE_BUY, "2": types_pb2.SIDE_SELL, "5": types_pb2.SIDE_SELL_SHORT}
_ORD_TYPES = {"1": types_pb2.ORDER_TYPE_MARKET, "2": types_pb2.ORDER_TYPE_LIMIT}
_TIME_IN_FORCE = {
    "0": types_pb2.TIME_IN_FORCE_DAY,
    "1": types_pb2.TIME_IN_FORCE_GOOD_TILL_CANCEL,
    "3": types_pb2.TIME_IN_FORCE_IMMEDIATE_OR_CANCEL,
    "4": types_pb2.TIME_IN_FORCE_FILL_OR_KILL,
    "6": types_pb2.TIME_IN_FORCE_GOOD_TILL_DATE,
}
#: Fields of a client order copied onto the venue's NewOrderSingle / replace / cancel.
_ORDER_FIELDS = (ACCOUNT, SYMBOL, SIDE, ORDER_QTY, ORD_TYPE, PRICE, TIME_IN_FORCE)
_TERMINAL_STATUSES = {"2", "3", "4", "8", "C"}  # filled, done for day, cancelled, rejected, expired

#: Text (58) after VENUE_UNAVAILABLE when an order the gateway accepted / a replace / a cancel could not be sent.
NOT_SENT = "the venue session is not logged on: not sent to the venue (the gateway released the order)"
REPLACE_NOT_SENT = ("the venue session is not logged on: the replace was not sent to the venue (the gateway released "
                    "the replacement; the original order keeps working)")
CANCEL_NOT_SENT = "the venue session is not logged on: the cancel was not sent to the venue"
#: On stop, messages in hand get the decision timeout plus this long to finish.
STOP_REPORT_GRACE_S = 1.0

#: The FIX 4.4 data dictionary installed with the quickfix package.
BUNDLED_FIX44 = Path(sys.prefix) / "share" / "quickfix" / "FIX44.xml"


class InvalidFixOrder(ValueError):
    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


def _decimal_field(fields: dict[int, str], tag: int, name: str) -> Decimal:
    try:
        value = Decimal(fields[tag])
    except KeyError:
        raise InvalidFixOrder("INVALID_ORDER", f"{name}({tag}) is required") from None
    except InvalidOperation:
        raise InvalidFixOrder("INVALID_ORDER", f"{name}({tag}) is not a decimal: {fields[tag]!r}") from None
    return value


def order_from_fields(fields: dict[int, str], default_account: str = "") -> types_pb2.Order:
    """The gateway Order of a 35=D (or the replacement of a 35=G). FIX decimals are text:
    they convert to nanos exactly."""
    side = _SIDES.get(fields.get(SIDE, ""))
    if side is None:
        raise InvalidFixOrder("UNSUPPORTED_ORDER", f"Side(54)={fields.get(SIDE)!r} is not 1, 2 or 5")
    order_type = _ORD_TYPES.get(fields.get(ORD_TYPE, "2"))
    if order_type is None:
        raise InvalidFixOrder("UNSUPPORTED_ORDER", f"OrdType(40)={fields.get(ORD_TYPE)!r} is not 1 or 2")
    try:
        quantity = to_fixed(_decimal_field(fields, ORDER_QTY, "OrderQty"), QTY_SCALE)
        price = (
            to_fixed(_decimal_field(fields, PRICE, "Price"), PRICE_SCALE)
            if order_type == types_pb2.ORDER_TYPE_LIMIT
            else 0
        )
    except FixedPointError as exc:
        raise InvalidFixOrder("INVALID_ORDER", str(exc)) from None
    return types_pb2.Order(
        client_order_id=fields.get(CL_ORD_ID, ""),
        account=fields.get(ACCOUNT) or default_account,
        symbol=fields.get(SYMBOL, ""),
        side=side,
        order_type=order_type,
        time_in_force=_TIME_IN_FORCE.get(fields.get(TIME_IN_FORCE, ""), types_pb2.TIME_IN_FORCE_UNSPECIFIED),
        quantity_nanos=quantity,
        price_nanos=price,
    )


def message_fields(message: fix.Message) -> dict[int, str]:
    """Body fields of a message (no repeating groups are needed here), tag -> text."""
    fields: dict[int, str] = {}
    for part in message.toString().split("\x01"):
        tag, sep, value = part.partition("=")
        if sep and tag.isdigit():
            fields.setdefault(int(tag), value)
    return fields


@dataclass
class FixAdapterConfig:
    acceptor_settings: Path
    initiator_settings: Path
    target: str = "127.0.0.1:50051"
    token: str | None = None
    decision_timeout_s: float = 2.0
    default_account: str = ""
    batch_max_delay_s: float = 0.0005
    log_dir: Path | None = None  # QuickFIX message logs (FileLog) when set
    state_path: Path | None = None  # the order book (SQLite, clients/adapters/fix/book.py); None: in memory
    #: TLS to the gateway (gateway.tls_* of the file, or the --tls-* flags); None: plaintext
    credentials: grpc.ChannelCredentials | None = None
    extra: dict = field(default_factory=dict)


def load_settings(path: Path) -> fix.SessionSettings:
    """A QuickFIX settings file; sessions naming no DataDictionary validate against the
    FIX 4.4 dictionary installed with quickfix."""
    settings = fix.SessionSettings(str(path))
    missing = any(not settings.get(session_id).has("DataDictionary") for session_id in settings.getSessions())
    if missing and BUNDLED_FIX44.exists():
        defaults = settings.get()
        defaults.setString("UseDataDictionary", "Y")
        defaults.setString("DataDictionary", str(BUNDLED_FIX44))
        settings.set(defaults)  # merged into every session that does not set them
    return settings


class _Application(fix.Application):
    """QuickFIX callbacks (engine threads) → the adapter's asyncio loop."""

    def __init__(self, adapter: FixAdapter, role: str) -> None:
        super().__init__()
        self._adapter = adapter
        self._role = role

    def onCreate(self, sessionID):  # noqa: N802
        pass

    def onLogon(self, sessionID):  # noqa: N802
        log.info("%s session %s logged on", self._role, sessionID.toString())
        self._adapter._post(self._adapter._on_logon, self._role, sessionID)

    def onLogout(self, sessionID):  # noqa: N802
        log.info("%s session %s logged out", self._role, sessionID.toString())

    def toAdmin(self, message, sessionID):  # noqa: N802
        pass

    def fromAdmin(self, message, sessionID):  # noqa: N802
        pass

    def toApp(self, message, sessionID):  # noqa: N802
        pass

    def fromApp(self, message, sessionID):  # noqa: N802
        msg_type = message.getHeader().getField(MSG_TYPE)
        self._adapter._post(self._adapter._on_message, self._role, sessionID, msg_type, message_fields(message))


class FixAdapter:
    """``FixAdapter(config)``; ``await start()`` / ``await stop()``."""

    def __init__(self, config: FixAdapterConfig) -> None:
        self.config = config
        self._loop: asyncio.AbstractEventLoop | None = None
        self._link: GatewayLink | None = None
        self._book: OrderBook | None = None
        self._reporter: ExecutionReporter | None = None
        self._stopped = False
        self._book_closed = False
        self._orders: dict[str, WorkingOrder] = {}  # current venue ClOrdID -> order
        self._cancels: dict[str, tuple[str, fix.SessionID | None]] = {}  # cancel ClOrdID -> (order ClOrdID, asker)
        self._pending: set[str] = set()  # ClOrdIDs being checked
        self._exec_ids = itertools.count(1)
        self._kill_ids = itertools.count(1)
        self._tasks: set[asyncio.Task] = set()
        self._venue: fix.SessionID | None = None
        self._acceptor = None
        self._initiator = None

    # -- lifecycle ----------------------------------------------------------------------

    async def start(self) -> None:
        """Open the order book, the gateway link and both QuickFIX engines (on failure,
        whatever was started is stopped again)."""
        try:
            await self._start()
        except BaseException:
            await self.stop()
            raise

    async def _start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._book = OrderBook(self.config.state_path)
        self._orders, self._cancels, unreported = self._book.load()
        if self._orders:
            log.info("order book %s: %d orders (%d working), %d executions to report", self.config.state_path,
                     len(self._orders), len(self.working_orders()), len(unreported))
        self._link = GatewayLink(
            self.config.target, self.config.token, self.config.decision_timeout_s,
            batch_max_delay_s=self.config.batch_max_delay_s, on_control=self._on_control,
            credentials=self.config.credentials,
        )
        # one worker reports executions in order, retrying until the gateway answers; it starts
        # with those not acknowledged before the last stop (the book's reports table)
        self._reporter = ExecutionReporter(
            self._book.reports, lambda executions: self._link.report_executions(executions),
            log=log, name="fix-report-executions",
        )
        self._reporter.start()
        acceptor_settings = load_settings(self.config.acceptor_settings)
        initiator_settings = load_settings(self.config.initiator_settings)
        venues = list(initiator_settings.getSessions())
        if not venues:
            raise ValueError(f"{self.config.initiator_settings}: no venue session")
        self._venue = venues[0]
        self._apps = (_Application(self, "client"), _Application(self, "venue"))
        # QuickFIX keeps references to the settings and factories: they must outlive the engines
        self._keep = (
            acceptor_settings, initiator_settings,
            fix.FileStoreFactory(acceptor_settings), self._log_factory(acceptor_settings),
            fix.FileStoreFactory(initiator_settings), self._log_factory(initiator_settings),
        )
        self._acceptor = fix.ThreadedSocketAcceptor(self._apps[0], self._keep[2], acceptor_settings, self._keep[3])
        self._initiator = fix.ThreadedSocketInitiator(self._apps[1], self._keep[4], initiator_settings, self._keep[5])
        await asyncio.to_thread(self._acceptor.start)
        await asyncio.to_thread(self._initiator.start)
        log.info(
            "FIX adapter: %d client session(s) (%s), venue session %s, gateway %s, order book %s",
            len(list(acceptor_settings.getSessions())), self.config.acceptor_settings, self._venue.toString(),
            self.config.target, self.config.state_path or "in memory",
        )

    def _log_factory(self, settings):
        if self.config.log_dir is not None:
            return fix.FileLogFactory(str(self.config.log_dir))
        if _has_default(settings, "FileLogPath"):
            return fix.FileLogFactory(settings)
        return fix.ScreenLogFactory(False, False, True)  # session events only, on stdout

    async def stop(self) -> None:
        """Stop the engines, finish the messages in hand (executions the gateway cannot take
        now stay in the order book and are reported at the next start). Idempotent."""
        if self._stopped:
            return
        for engine in (self._acceptor, self._initiator):
            if engine is not None:
                await asyncio.to_thread(engine.stop)
        self._stopped = True  # late QuickFIX callbacks are dropped from here on
        # drop the engines (their sessions leave QuickFIX's process-wide registry)
        self._acceptor = self._initiator = None
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=self.config.decision_timeout_s + STOP_REPORT_GRACE_S)
        if self._reporter is not None:
            await self._reporter.stop()  # what is not reported yet is left in the book for the next start
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._link is not None:
            await self._link.close()
        if self._book is not None:
            self._book_closed = True
            self._book.close()

    async def run_forever(self) -> None:
        await self.start()
        try:
            await asyncio.Event().wait()
        finally:
            await self.stop()

    async def idle(self, timeout_s: float = 10.0) -> None:
        """Until every message handed over so far is fully handled (its gateway calls done)."""
        deadline = asyncio.get_running_loop().time() + timeout_s
        while self._tasks:
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                raise TimeoutError("FIX adapter still busy")
            await asyncio.wait(list(self._tasks), timeout=remaining)

    def stream_open(self) -> bool:
        """Whether the order stream to the gateway is open."""
        return self._link is not None and self._link.stream_open

    def venue_logged_on(self) -> bool:
        session = fix.Session.lookupSession(self._venue) if self._venue is not None else None
        return session is not None and session.isLoggedOn()

    def client_logged_on(self) -> bool:
        """Whether any client session is logged on."""
        acceptor = self._acceptor
        return acceptor is not None and bool(acceptor.isLoggedOn())

    def unreported_executions(self) -> list[str]:
        """Ids of the executions the gateway has not acknowledged yet (retried; kept in the
        order book across restarts)."""
        return self._book.unreported() if self._book is not None and not self._book_closed else []

    def working_orders(self) -> list[WorkingOrder]:
        return [order for order in self._orders.values() if not order.done and order.replaced_by is None]

    # -- thread hand-over ---------------------------------------------------------------

    def _post(self, handler, *args) -> None:
        """From a QuickFIX thread: run ``handler(*args)`` (a coroutine function) on the loop."""
        def spawn():
            if self._stopped:
                return
            task = self._loop.create_task(handler(*args))
            self._tasks.add(task)
            task.add_done_callback(self._task_done)

        try:
            self._loop.call_soon_threadsafe(spawn)
        except RuntimeError:  # the loop is closed (a late callback at shutdown)
            pass

    def _task_done(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("FIX handler failed", exc_info=task.exception())

    async def _on_logon(self, role: str, session_id) -> None:
        pass

    async def _on_message(self, role: str, session_id, msg_type: str, fields: dict[int, str]) -> None:
        if role == "client":
            if msg_type == "D":
                await self._new_order(session_id, fields)
            elif msg_type == "F":
                self._cancel(session_id, fields)
            elif msg_type == "G":
                await self._replace(session_id, fields)
            else:
                self._business_reject(session_id, msg_type, fields)
        else:
            if msg_type == "8":
                await self._venue_execution(fields)
            elif msg_type == "9":
                await self._venue_cancel_reject(fields)

    # -- gateway ------------------------------------------------------------------------

    async def _decide(self, order: types_pb2.Order) -> tuple[bool, list[tuple[str, str]]]:
        """(accepted, [(code, detail)]) — fail closed on any error, within the decision timeout."""
        try:
            decision = await self._link.decide(order)
        except GatewayError as exc:
            code = "DECISION_TIMEOUT" if isinstance(exc, DeadlineExceeded) else "GATEWAY_UNAVAILABLE"
            return False, [(code, f"{type(exc).__name__}: {exc.message}")]
        failures = [(failure.code, failure.detail) for failure in decision.failures]
        return decision.verdict == types_pb2.VERDICT_ACCEPT, failures

    async def _report(self, execution: types_pb2.Execution) -> None:
        """Report an execution to the gateway: written to the order book first, then sent in
        order by one worker that retries until the gateway answers (or the adapter stops:
        then it is reported at the next start). Returns once it is reported (or stopping)."""
        if self._book is None or self._book_closed:
            log.error("execution %s of %s not reported: the adapter has stopped", execution.execution_id,
                      execution.client_order_id)
            return
        if self._reporter is None:  # not started: kept in the book for the next start
            self._book.add_report(execution.execution_id, execution.SerializeToString())
            return
        # in the book first; stopping: it stays there and is reported at the next start
        delivery = self._reporter.submit(execution)
        await asyncio.shield(delivery.done)

    def _save(self, cl_ord_id: str) -> None:
        self._book.save_order(cl_ord_id, self._orders[cl_ord_id])

    def _add_cancel(self, cl_ord_id: str, target: str, asker) -> None:
        self._cancels[cl_ord_id] = (target, asker)
        self._book.save_cancel(cl_ord_id, target, asker)

    async def _on_control(self, control: gateway_pb2.ControlMessage) -> None:
        if control.action != gateway_pb2.CONTROL_ACTION_CANCEL_ALL:
            return
        log.warning("CANCEL_ALL (%s, by %s): cancelling working orders on the venue", control.reason, control.requested_by)
        for venue_id, order in list(self._orders.items()):
            if order.done or order.replaced_by is not None:
                continue
            if control.account and control.account != order.account:
                continue
            if control.symbol and control.symbol != order.symbol:
                continue
            cancel_id = f"KILL-{time.time_ns()}-{next(self._kill_ids)}"
            self._add_cancel(cancel_id, venue_id, None)
            if not self._send_venue("F", {**order.fields, CL_ORD_ID: cancel_id, ORIG_CL_ORD_ID: venue_id},
                                    (ORIG_CL_ORD_ID, CL_ORD_ID, ACCOUNT, SYMBOL, SIDE, ORDER_QTY)):
                log.error("CANCEL_ALL: could not send the cancel of %s: the venue session is not logged on",
                          venue_id)

    # -- client → venue -----------------------------------------------------------------

    async def _new_order(self, session_id, fields: dict[int, str]) -> None:
        cl_ord_id = fields.get(CL_ORD_ID, "")
        try:
            order = order_from_fields(fields, self.config.default_account)
        except InvalidFixOrder as exc:
            self._reject_order(session_id, fields, [(exc.code, exc.detail)])
            return
        if cl_ord_id in self._orders or cl_ord_id in self._pending or cl_ord_id in self._cancels:
            self._reject_order(session_id, fields, [("DUPLICATE_CLIENT_ORDER_ID", f"ClOrdID {cl_ord_id} is in use")])
            return
        if not self.venue_logged_on():
            self._reject_order(session_id, fields, [("VENUE_UNAVAILABLE", "the venue session is not logged on")])
            return
        self._pending.add(cl_ord_id)
        try:
            accepted, failures = await self._decide(order)
            if not accepted:
                self._reject_order(session_id, fields, failures)
                return
            # in the book before it goes out: a restart still knows whose it is
            self._orders[cl_ord_id] = WorkingOrder(session_id, cl_ord_id, order.account, order.symbol, dict(fields))
            self._save(cl_ord_id)
        finally:
            self._pending.discard(cl_ord_id)
        if not self._send_venue("D", {**fields, ACCOUNT: order.account}, (CL_ORD_ID, *_ORDER_FIELDS)):
            # accepted by the gateway but not sent: the gateway is told it ended, the client is rejected
            self._orders[cl_ord_id].done = True
            self._save(cl_ord_id)
            self._reject_order(session_id, fields, [("VENUE_UNAVAILABLE", NOT_SENT)])
            await self._report(self._execution(order.account, cl_ord_id, types_pb2.EXECUTION_TYPE_VENUE_REJECTED,
                                               f"pretrade-not-sent-{cl_ord_id}"))

    def _cancel(self, session_id, fields: dict[int, str]) -> None:
        """Never blocked: straight to the venue."""
        orig = fields.get(ORIG_CL_ORD_ID, "")
        self._add_cancel(fields.get(CL_ORD_ID, ""), orig, session_id)
        order = self._orders.get(orig)
        merged = {**(order.fields if order else {}), **fields}
        if order is not None:
            merged[ACCOUNT] = order.account
        if not self._send_venue("F", merged, (ORIG_CL_ORD_ID, CL_ORD_ID, ACCOUNT, SYMBOL, SIDE, ORDER_QTY, TRANSACT_TIME)):
            self._cancel_reject(session_id, fields, "1", f"VENUE_UNAVAILABLE: {CANCEL_NOT_SENT}")

    async def _replace(self, session_id, fields: dict[int, str]) -> None:
        orig = fields.get(ORIG_CL_ORD_ID, "")
        new_id = fields.get(CL_ORD_ID, "")
        original = self._orders.get(orig)
        if original is None or original.done or original.replaced_by is not None:
            self._cancel_reject(session_id, fields, "2", "UNKNOWN_ORDER: no working order with this OrigClOrdID",
                                reason="1")
            return
        if new_id in self._orders or new_id in self._pending or new_id in self._cancels:
            self._cancel_reject(session_id, fields, "2", f"DUPLICATE_CLIENT_ORDER_ID: ClOrdID {new_id} is in use")
            return
        if not self.venue_logged_on():
            self._cancel_reject(session_id, fields, "2", "VENUE_UNAVAILABLE: the venue session is not logged on")
            return
        replacement = {**original.fields, **fields}
        try:
            order = order_from_fields(replacement, self.config.default_account)
        except InvalidFixOrder as exc:
            self._cancel_reject(session_id, fields, "2", f"{exc.code}: {exc.detail}")
            return
        self._pending.add(new_id)
        try:
            accepted, failures = await self._decide(order)
            if not accepted:
                self._cancel_reject(session_id, fields, "2", _text(failures))
                return
            self._orders[new_id] = WorkingOrder(session_id, new_id, order.account, order.symbol, replacement)
            self._save(new_id)
            self._add_cancel(new_id, orig, session_id)
        finally:
            self._pending.discard(new_id)
        if not self._send_venue("G", {**replacement, ACCOUNT: order.account},
                                (ORIG_CL_ORD_ID, CL_ORD_ID, *_ORDER_FIELDS)):
            self._orders[new_id].done = True
            self._save(new_id)
            self._cancel_reject(session_id, fields, "2", f"VENUE_UNAVAILABLE: {REPLACE_NOT_SENT}")
            await self._report(self._execution(order.account, new_id, types_pb2.EXECUTION_TYPE_VENUE_REJECTED,
                                               f"pretrade-not-sent-{new_id}"))

    # -- venue → client -----------------------------------------------------------------

    async def _venue_execution(self, fields: dict[int, str]) -> None:
        cl_ord_id = fields.get(CL_ORD_ID, "")
        exec_type = fields.get(EXEC_TYPE, "")
        order = self._orders.get(cl_ord_id)
        order_id = cl_ord_id
        kill = None
        if order is None and cl_ord_id in self._cancels:  # a cancel ack: ClOrdID is the cancel's
            target_id, asker = self._cancels[cl_ord_id]
            order, order_id = self._orders.get(target_id), target_id
            if asker is None:
                kill = target_id
        if order is None:
            log.warning("venue execution report for unknown ClOrdID %r ignored", cl_ord_id)
            return
        relay = dict(fields)
        if kill is not None:  # unsolicited cancel (kill switch): the client sees its own ClOrdID
            relay[CL_ORD_ID] = kill
            relay.pop(ORIG_CL_ORD_ID, None)
        self._send(order.session, "8", relay)
        execution_id = fields.get(EXEC_ID, "") or f"pretrade-{next(self._exec_ids)}"
        status = fields.get(ORD_STATUS, "")
        if exec_type in ("F", "1", "2"):  # Trade (4.4), or 4.2-style partial fill / fill
            filled = status == "2" or exec_type == "2"
            execution = self._execution(
                order.account, order.client_order_id,
                types_pb2.EXECUTION_TYPE_FILL if filled else types_pb2.EXECUTION_TYPE_PARTIAL_FILL,
                execution_id,
            )
            try:
                execution.last_quantity_nanos = to_fixed(Decimal(fields[LAST_QTY]), QTY_SCALE)
                execution.last_price_nanos = to_fixed(Decimal(fields[LAST_PX]), PRICE_SCALE)
            except (KeyError, InvalidOperation, FixedPointError) as exc:
                log.error("venue fill %s without a usable LastQty/LastPx: %s", execution_id, exc)
                return
            if filled:
                order.done = True
                self._save(order_id)
            await self._report(execution)
        elif exec_type in ("4", "8", "C"):
            order.done = True
            self._save(order_id)
            kind = {"4": types_pb2.EXECUTION_TYPE_CANCELLED, "8": types_pb2.EXECUTION_TYPE_VENUE_REJECTED,
                    "C": types_pb2.EXECUTION_TYPE_EXPIRED}[exec_type]
            await self._report(self._execution(order.account, order.client_order_id, kind, execution_id))
        elif exec_type == "5":  # Replaced: the original order ends, the replacement works
            orig_id = fields.get(ORIG_CL_ORD_ID) or self._cancels.get(cl_ord_id, ("", None))[0]
            original = self._orders.get(orig_id)
            if original is not None and not original.done:
                original.done = True
                original.replaced_by = cl_ord_id
                self._save(orig_id)
                await self._report(self._execution(
                    original.account, original.client_order_id, types_pb2.EXECUTION_TYPE_CANCELLED,
                    f"{execution_id}-replaced",
                ))

    async def _venue_cancel_reject(self, fields: dict[int, str]) -> None:
        cl_ord_id = fields.get(CL_ORD_ID, "")
        target_id, asker = self._cancels.get(cl_ord_id, ("", None))
        if asker is not None:
            self._send(asker, "9", fields)
        elif target_id:
            log.error("the venue refused the kill switch's cancel %s of %s: %s", cl_ord_id, target_id,
                      fields.get(TEXT, ""))
        else:
            log.warning("venue OrderCancelReject for unknown ClOrdID %r ignored", cl_ord_id)
        if fields.get(CXL_REJ_RESPONSE_TO) == "2":  # the venue refused a replace: release the replacement
            replacement = self._orders.get(cl_ord_id)
            if replacement is not None and not replacement.done:
                replacement.done = True
                self._save(cl_ord_id)
                await self._report(self._execution(
                    replacement.account, replacement.client_order_id, types_pb2.EXECUTION_TYPE_VENUE_REJECTED,
                    f"pretrade-replace-refused-{cl_ord_id}",
                ))

    # -- message building ---------------------------------------------------------------

    def _execution(self, account, client_order_id, kind, execution_id: str | None = None) -> types_pb2.Execution:
        return types_pb2.Execution(
            account=account, client_order_id=client_order_id, execution_type=kind,
            execution_id=execution_id or f"pretrade-{time.time_ns()}-{next(self._exec_ids)}",
            transact_ns=time.time_ns(),
        )

    def _reject_order(self, session_id, fields: dict[int, str], failures: list[tuple[str, str]]) -> None:
        """ExecutionReport 150=8 / 39=8: a business reject, never a session Reject."""
        code = failures[0][0] if failures else "INTERNAL_ERROR"
        log.info("order %s rejected: %s", fields.get(CL_ORD_ID), _text(failures))
        self._send(session_id, "8", {
            ORDER_ID: "NONE",
            CL_ORD_ID: fields.get(CL_ORD_ID, "NONE"),
            EXEC_ID: f"REJ-{time.time_ns()}-{next(self._exec_ids)}",
            EXEC_TYPE: "8",
            ORD_STATUS: "8",
            ORD_REJ_REASON: str(ord_rej_reason(code)),
            ACCOUNT: fields.get(ACCOUNT, ""),
            SYMBOL: fields.get(SYMBOL, ""),
            SIDE: fields.get(SIDE, "1") if fields.get(SIDE) in ("1", "2", "5") else "1",
            ORDER_QTY: fields.get(ORDER_QTY, "0"),
            LEAVES_QTY: "0",
            CUM_QTY: "0",
            AVG_PX: "0",
            TEXT: _text(failures),
        })

    def _cancel_reject(self, session_id, fields, response_to: str, text: str, reason: str = str(OTHER)) -> None:
        """OrderCancelReject 35=9 (434=1 cancel, 2 replace)."""
        orig = self._orders.get(fields.get(ORIG_CL_ORD_ID, ""))
        self._send(session_id, "9", {
            ORDER_ID: "NONE",
            CL_ORD_ID: fields.get(CL_ORD_ID, ""),
            ORIG_CL_ORD_ID: fields.get(ORIG_CL_ORD_ID, ""),
            ORD_STATUS: "0" if orig is not None and not orig.done else "8",
            CXL_REJ_RESPONSE_TO: response_to,
            CXL_REJ_REASON: reason,
            TEXT: text,
        })

    def _send_venue(self, msg_type: str, fields: dict[int, str], tags) -> bool:
        """Send to the venue if its session is logged on (QuickFIX would otherwise store the
        message and send it at the next logon, possibly much later: never for orders)."""
        if not self.venue_logged_on():
            log.error("venue session not logged on: %s %s not sent", msg_type, fields.get(CL_ORD_ID))
            return False
        body = {tag: fields[tag] for tag in tags if fields.get(tag)}
        body.setdefault(TRANSACT_TIME, _utc_timestamp())
        return self._send(self._venue, msg_type, body)

    def _send(self, session_id, msg_type: str, fields: dict[int, str]) -> bool:
        message = fix.Message()
        message.getHeader().setField(fix.BeginString(session_id.getBeginString().getValue()))
        message.getHeader().setField(fix.MsgType(msg_type))
        for tag, value in fields.items():
            if _is_header_or_trailer(tag):
                continue
            message.setField(tag, str(value))
        try:
            return bool(fix.Session.sendToTarget(message, session_id))
        except fix.SessionNotFound:
            log.error("no FIX session %s", session_id.toString())
            return False


def _text(failures: list[tuple[str, str]]) -> str:
    return "; ".join(f"{code}: {detail}" if detail else code for code, detail in failures)


_HEADER_TRAILER = {8, 9, 10, 34, 35, 43, 49, 50, 52, 56, 57, 97, 115, 122, 128, 129, 142, 143, 144, 145}


def _is_header_or_trailer(tag: int) -> bool:
    return tag in _HEADER_TRAILER


def _utc_timestamp() -> str:
    return time.strftime("%Y%m%d-%H:%M:%S", time.gmtime()) + f".{time.time_ns() // 1_000_000 % 1000:03d}"


def _has_default(settings, key: str) -> bool:
    try:
        return settings.get().has(key)
    except fix.ConfigError:
        return False


def environ_token(name: str = "PRETRADE_TOKEN") -> str | None:
    return os.environ.get(name)
