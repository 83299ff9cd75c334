"""The FIX adapter over loopback, everything real: a QuickFIX initiator as the client, the
adapter (QuickFIX acceptor + initiator), a QuickFIX acceptor as the venue simulator, and a
gateway (tests/clients/gateway_harness.py)."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import queue
import socket
import threading
import time
from pathlib import Path

import pytest
import quickfix as fix

from clients.adapters.fix.adapter import BUNDLED_FIX44, FixAdapter, FixAdapterConfig, message_fields
from clients.adapters.fix.config import load_fix_config
from clients.adapters.fix.reasons import ORD_REJ_REASON
from clients.adapters.link import adapter_client
from clients import make_execution, make_order
from pretrade.v1 import gateway_pb2, types_pb2
from tests.clients.gateway_harness import running_gateway

pytestmark = pytest.mark.integration

WAIT_S = 10.0
DECISION_TIMEOUT_MS = 5000
WORLDS = itertools.count(1)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def settings_file(path: Path, connection: str, store: Path, sender: str, target: str, port: int,
                  dictionary: bool = True) -> Path:
    """A QuickFIX settings file (the adapter's own name no DataDictionary: it supplies the bundled one)."""
    where = f"SocketAcceptPort={port}" if connection == "acceptor" else (
        f"SocketConnectHost=127.0.0.1\nSocketConnectPort={port}\nReconnectInterval=1"
    )
    dd = f"UseDataDictionary=Y\nDataDictionary={BUNDLED_FIX44}\n" if dictionary else ""
    path.write_text(
        f"""[DEFAULT]
ConnectionType={connection}
FileStorePath={store}
StartTime=00:00:00
EndTime=00:00:00
HeartBtInt=30
SocketReuseAddress=Y
ResetOnLogon=Y
{dd}
[SESSION]
BeginString=FIX.4.4
SenderCompID={sender}
TargetCompID={target}
{where}
"""
    )
    return path


def new_message(msg_type: str, fields: dict[int, str]) -> fix.Message:
    message = fix.Message()
    message.getHeader().setField(fix.BeginString("FIX.4.4"))
    message.getHeader().setField(fix.MsgType(msg_type))
    for tag, value in fields.items():
        message.setField(tag, str(value))
    return message


def now() -> str:
    return time.strftime("%Y%m%d-%H:%M:%S", time.gmtime())


class Recorder(fix.Application):
    """Collects application messages (type, fields) and logons, thread-safely."""

    def __init__(self) -> None:
        super().__init__()
        self.messages: queue.Queue = queue.Queue()
        self.session: fix.SessionID | None = None
        self.logged_on = threading.Event()
        self.session_rejects: list[str] = []

    def onCreate(self, sessionID):  # noqa: N802
        self.session = sessionID

    def onLogon(self, sessionID):  # noqa: N802
        self.logged_on.set()

    def onLogout(self, sessionID):  # noqa: N802
        self.logged_on.clear()

    def toAdmin(self, message, sessionID):  # noqa: N802
        pass

    def fromAdmin(self, message, sessionID):  # noqa: N802
        if message.getHeader().getField(35) == "3":
            self.session_rejects.append(message.toString())

    def toApp(self, message, sessionID):  # noqa: N802
        pass

    def fromApp(self, message, sessionID):  # noqa: N802
        self.handle(message.getHeader().getField(35), message_fields(message))

    def handle(self, msg_type: str, fields: dict[int, str]) -> None:
        self.messages.put((msg_type, fields))

    def send(self, msg_type: str, fields: dict[int, str]) -> None:
        assert fix.Session.sendToTarget(new_message(msg_type, fields), self.session)

    async def next(self, msg_type: str | None = None) -> dict[int, str]:
        got_type, fields = await asyncio.to_thread(self.messages.get, True, WAIT_S)
        if msg_type is not None:
            assert got_type == msg_type, (got_type, fields)
        return fields


class Venue(Recorder):
    """A venue simulator: acks orders (150=0), cancels (150=4) and replaces (150=5) at once;
    fills when the test says so."""

    def __init__(self) -> None:
        super().__init__()
        self.exec_ids = iter(range(1, 1_000_000))
        self.orders: dict[str, dict[int, str]] = {}
        self.refuse_replaces = False  # answer 35=G with an OrderCancelReject (434=2)

    def report(self, fields: dict[int, str], exec_type: str, status: str, extra: dict | None = None) -> None:
        body = {37: f"V-{fields[11]}", 11: fields[11], 17: f"E{next(self.exec_ids)}", 150: exec_type, 39: status,
                55: fields[55], 54: fields[54], 38: fields.get(38, "0"), 151: fields.get(38, "0"), 14: "0", 6: "0"}
        if fields.get(1):
            body[1] = fields[1]
        body.update(extra or {})
        self.send("8", body)

    def handle(self, msg_type: str, fields: dict[int, str]) -> None:
        super().handle(msg_type, fields)
        if msg_type == "D":
            self.orders[fields[11]] = fields
            self.report(fields, "0", "0")
        elif msg_type == "F":
            order = self.orders[fields[41]]
            self.report({**order, 11: fields[11]}, "4", "4", {41: fields[41], 151: "0"})
        elif msg_type == "G" and self.refuse_replaces:
            self.send("9", {37: f"V-{fields[41]}", 11: fields[11], 41: fields[41], 39: "0", 434: "2", 102: "0",
                            58: "too late to replace"})
        elif msg_type == "G":
            self.orders[fields[11]] = fields
            self.report(fields, "5", "0", {41: fields[41]})

    def fill(self, cl_ord_id: str, qty: str, price: str, full: bool) -> None:
        order = self.orders[cl_ord_id]
        self.report(order, "F", "2" if full else "1", {32: qty, 31: price, 14: qty, 6: price})


class Engine:
    def __init__(self, app: Recorder, settings_path: Path, kind, log_dir: Path) -> None:
        # QuickFIX keeps references to all of these: they must outlive the engine
        self.app = app
        self.settings = fix.SessionSettings(str(settings_path))
        self.store = fix.FileStoreFactory(self.settings)
        self.log = fix.FileLogFactory(str(log_dir))
        self.engine = kind(app, self.store, self.settings, self.log)
        self.running = False

    def start(self):
        self.engine.start()
        self.running = True

    def stop(self):
        if self.running:
            self.running = False
            self.engine.stop()


class World:
    """What a FIX test works with; iterates as (gateway, adapter, client, venue)."""

    def __init__(self, gateway, adapter, client, venue, venue_engine, config_path: Path) -> None:
        self.gateway, self.adapter, self.client, self.venue = gateway, adapter, client, venue
        self.venue_engine = venue_engine
        self.config_path = config_path

    def __iter__(self):
        return iter((self.gateway, self.adapter, self.client, self.venue))

    async def wait_logged_on(self) -> None:
        assert await asyncio.to_thread(self.client.logged_on.wait, WAIT_S), "client did not log on"
        assert await asyncio.to_thread(self.venue.logged_on.wait, WAIT_S), "adapter did not log on to the venue"
        await wait_until(self.adapter.venue_logged_on, "the adapter's venue session did not log on")
        await wait_until(self.adapter.client_logged_on, "the adapter's client session did not log on")

    async def restart_adapter(self) -> FixAdapter:
        """Stop the adapter (both sessions log out), start a new one on the same
        configuration (and order book file), wait until both sessions are back."""
        await self.adapter.stop()
        await wait_until(lambda: not self.client.logged_on.is_set() and not self.venue.logged_on.is_set(),
                         "the sessions did not log out")
        self.adapter = FixAdapter(load_fix_config(self.config_path))
        await self.adapter.start()
        await self.wait_logged_on()
        return self.adapter


async def wait_until(condition, what: str, timeout_s: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.02)


@pytest.fixture
async def fix_world(tmp_path):
    async with running_gateway(tmp_path / "gw") as gateway:
        await gateway.set_reference_prices()
        async with world_on(tmp_path, gateway) as world:
            yield world


@contextlib.asynccontextmanager
async def world_on(tmp_path: Path, gateway, load=load_fix_config):
    """Client, adapter and venue around ``gateway`` (which the world does not own);
    ``load(path)``: the adapter's configuration from its file (``pretrade fix run``'s
    ``build_config`` in the TLS tests)."""
    client_port, venue_port = free_port(), free_port()
    # QuickFIX registers sessions process-wide: every test gets its own CompIDs
    n = next(WORLDS)
    pretrade, client_id, venue_id = f"PRETRADE{n}", f"CLIENT{n}", f"VENUE{n}"
    venue, client = Venue(), Recorder()
    venue_engine = Engine(venue, settings_file(tmp_path / "venue.cfg", "acceptor", tmp_path / "venue-store",
                                               venue_id, pretrade, venue_port), fix.ThreadedSocketAcceptor, tmp_path)
    (tmp_path / "adapter.toml").write_text(f"""
[gateway]
target = "{gateway.target}"
token = "{gateway.tokens['trader']}"
decision_timeout_ms = {DECISION_TIMEOUT_MS}

[fix]
acceptor = "acceptor.cfg"
initiator = "initiator.cfg"
log_dir = "adapter-logs"
state_file = "adapter-state/orders.sqlite"
""")
    (tmp_path / "adapter-logs").mkdir()
    settings_file(tmp_path / "acceptor.cfg", "acceptor", tmp_path / "adapter-store-a", pretrade, client_id,
                  client_port, dictionary=False)
    settings_file(tmp_path / "initiator.cfg", "initiator", tmp_path / "adapter-store-i", pretrade, venue_id,
                  venue_port, dictionary=False)
    adapter = FixAdapter(load(tmp_path / "adapter.toml"))
    client_engine = Engine(client, settings_file(tmp_path / "client.cfg", "initiator", tmp_path / "client-store",
                                                 client_id, pretrade, client_port), fix.ThreadedSocketInitiator, tmp_path)
    await asyncio.to_thread(venue_engine.start)
    await adapter.start()
    await asyncio.to_thread(client_engine.start)
    world = World(gateway, adapter, client, venue, venue_engine, tmp_path / "adapter.toml")
    try:
        await world.wait_logged_on()
        yield world
        assert client.session_rejects == [] and venue.session_rejects == []
    finally:
        # One engine at a time, each after the other side saw the logout: QuickFIX's
        # Acceptor.stop racing a disconnect it is still handling can crash the process.
        await asyncio.to_thread(client_engine.stop)
        await settle(lambda: not world.adapter.client_logged_on())
        await world.adapter.stop()
        await settle(lambda: not venue.logged_on.is_set())
        await asyncio.to_thread(venue_engine.stop)


async def settle(condition, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition() and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    await asyncio.sleep(0.2)


def nos(cl_ord_id: str, qty="10", price="100.01", side="1", account="ACC1", symbol="AAPL") -> dict[int, str]:
    return {11: cl_ord_id, 1: account, 55: symbol, 54: side, 38: qty, 40: "2", 44: price, 59: "0", 60: now()}


async def test_accepted_order_goes_to_the_venue_and_its_reports_come_back(fix_world):
    _, _, client, venue = fix_world
    client.send("D", nos("A1"))
    sent = await venue.next("D")
    assert (sent[11], sent[1], sent[55], sent[54], sent[38], sent[44]) == ("A1", "ACC1", "AAPL", "1", "10", "100.01")
    ack = await client.next("8")
    assert (ack[11], ack[150], ack[39], ack[37]) == ("A1", "0", "0", "V-A1")


async def test_rejected_order_gets_an_execution_report_never_a_session_reject(fix_world):
    _, _, client, venue = fix_world
    client.send("D", nos("R1", qty="5000"))
    report = await client.next("8")
    assert (report[11], report[150], report[39]) == ("R1", "8", "8")
    assert report[103] == str(ORD_REJ_REASON["MAX_ORDER_QTY_EXCEEDED"]) == "3"
    assert report[58].startswith("MAX_ORDER_QTY_EXCEEDED: ")
    client.send("D", nos("R2", symbol="NOPE"))
    report = await client.next("8")
    assert (report[11], report[103]) == ("R2", "1") and "UNKNOWN_SYMBOL" in report[58]
    assert venue.messages.empty()


async def test_cancel_is_forwarded_and_releases_the_order(fix_world):
    gateway, adapter, client, venue = fix_world
    client.send("D", nos("C1", account="LONG", qty="8"))
    await venue.next("D")
    await client.next("8")
    client.send("D", nos("C2", account="LONG", qty="5", price="100.02"))
    blocked = await client.next("8")
    assert blocked[150] == "8" and "LONG_POSITION_LIMIT_EXCEEDED" in blocked[58]
    client.send("F", {41: "C1", 11: "C1-cxl", 55: "AAPL", 54: "1", 60: now(), 38: "8"})
    cancel = await venue.next("F")
    assert (cancel[41], cancel[11]) == ("C1", "C1-cxl")
    done = await client.next("8")
    assert (done[11], done[41], done[150], done[39]) == ("C1-cxl", "C1", "4", "4")
    await adapter.idle()  # the CANCELLED report reached the gateway
    client.send("D", nos("C3", account="LONG", qty="5", price="100.03"))
    await venue.next("D")
    assert (await client.next("8"))[150] == "0"


async def test_replace_is_checked_as_the_new_order(fix_world):
    _, _, client, venue = fix_world
    client.send("D", nos("P1"))
    await venue.next("D")
    await client.next("8")
    client.send("G", {41: "P1", 11: "P2", 1: "ACC1", 55: "AAPL", 54: "1", 38: "5000", 40: "2", 44: "100.01", 60: now()})
    refused = await client.next("9")
    assert (refused[11], refused[41], refused[434], refused[39]) == ("P2", "P1", "2", "0")
    assert "MAX_ORDER_QTY_EXCEEDED" in refused[58]
    client.send("G", {41: "P1", 11: "P3", 1: "ACC1", 55: "AAPL", 54: "1", 38: "20", 40: "2", 44: "100.02", 60: now()})
    forwarded = await venue.next("G")
    assert (forwarded[41], forwarded[11], forwarded[38], forwarded[44]) == ("P1", "P3", "20", "100.02")
    replaced = await client.next("8")
    assert (replaced[11], replaced[41], replaced[150]) == ("P3", "P1", "5")


@pytest.mark.timeout(120)
async def test_replace_refused_by_the_venue_releases_the_replacement_and_keeps_the_original(fix_world):
    gateway, adapter, client, venue = fix_world
    venue.refuse_replaces = True
    client.send("D", nos("V1", account="LONG", qty="3"))
    await venue.next("D")
    await client.next("8")
    # the replacement (6) is checked beside the original (3): 9 <= max_long_position 10
    client.send("G", {41: "V1", 11: "V2", 1: "LONG", 55: "AAPL", 54: "1", 38: "6", 40: "2", 44: "100.02", 60: now()})
    forwarded = await venue.next("G")
    assert (forwarded[41], forwarded[11], forwarded[38]) == ("V1", "V2", "6")
    refused = await client.next("9")  # the venue's OrderCancelReject, relayed
    assert (refused[11], refused[41], refused[434], refused[39], refused[58]) == (
        "V2", "V1", "2", "0", "too late to replace")
    await adapter.idle()  # the replacement's VENUE_REJECTED reached the gateway
    assert [order.client_order_id for order in adapter.working_orders()] == ["V1"]
    async with gateway.client() as probe:
        # replacement released: 3 (V1) + 7 = 10 passes; V1 still held: 3 + 7 + 1 = 11 does not
        assert (await probe.check_order(make_order(
            account="LONG", symbol="AAPL", side="buy", quantity="7", price="100.03", client_order_id="probe-1",
        ))).verdict == types_pb2.VERDICT_ACCEPT
        held = await probe.check_order(make_order(
            account="LONG", symbol="AAPL", side="buy", quantity="1", price="100.04", client_order_id="probe-2",
        ))
        assert [f.code for f in held.failures] == ["LONG_POSITION_LIMIT_EXCEEDED"]
        # the gateway already counts the replacement as ended: a repeat is a duplicate
        (result,) = await probe.report_executions([make_execution(
            account="LONG", client_order_id="V2", execution_type="venue_rejected",
            execution_id="pretrade-replace-refused-V2",
        )])
        assert result.status == types_pb2.EXECUTION_STATUS_DUPLICATE
    # the original keeps working at the venue: it can still be cancelled
    client.send("F", {41: "V1", 11: "V1-cxl", 55: "AAPL", 54: "1", 60: now(), 38: "3"})
    assert (await venue.next("F"))[41] == "V1"
    assert (await client.next("8"))[150] == "4"


@pytest.mark.timeout(120)
async def test_venue_down_after_the_decision_rejects_and_releases_the_order(fix_world):
    gateway, adapter, client, venue = fix_world
    decide = adapter._decide

    async def decide_then_lose_the_venue(order):
        # the venue goes down between the gateway's accept and the forwarding
        outcome = await decide(order)
        await asyncio.to_thread(fix_world.venue_engine.stop)
        await wait_until(lambda: not adapter.venue_logged_on(), "the venue session did not log out")
        return outcome

    adapter._decide = decide_then_lose_the_venue
    client.send("D", nos("VD1", account="LONG", qty="8"))
    report = await client.next("8")
    assert (report[11], report[150], report[39], report[103]) == ("VD1", "8", "8", "2")
    assert report[58].startswith("VENUE_UNAVAILABLE: ") and "not sent to the venue" in report[58]
    await adapter.idle()
    assert adapter.working_orders() == []
    async with gateway.client() as probe:
        # the gateway accepted VD1 (8), then was told it ended: 5 more pass (8 + 5 > 10 otherwise)
        assert (await probe.check_order(make_order(
            account="LONG", symbol="AAPL", side="buy", quantity="5", price="100.02", client_order_id="probe-3",
        ))).verdict == types_pb2.VERDICT_ACCEPT
    # while the venue stays down, orders are refused before the gateway is asked
    adapter._decide = decide
    client.send("D", nos("VD2", account="ACC1", qty="1"))
    report = await client.next("8")
    assert (report[11], report[150], report[103]) == ("VD2", "8", "2")
    assert report[58] == "VENUE_UNAVAILABLE: the venue session is not logged on"
    assert all(msg_type != "D" for msg_type, _ in list(venue.messages.queue))


@pytest.mark.timeout(180)
async def test_orders_survive_an_adapter_restart(fix_world):
    gateway, adapter, client, venue = fix_world
    for cl_ord_id, price in (("S1", "100.01"), ("S2", "100.02")):
        client.send("D", nos(cl_ord_id, account="LONG", qty="4", price=price))
        await venue.next("D")
        assert (await client.next("8"))[150] == "0"
    adapter = await fix_world.restart_adapter()
    assert sorted(order.client_order_id for order in adapter.working_orders()) == ["S1", "S2"]
    # a fill of an order sent before the restart: relayed to its client and reported
    venue.fill("S1", "4", "100.01", full=True)
    fill = await client.next("8")
    assert (fill[11], fill[150], fill[39], fill[32]) == ("S1", "F", "2", "4")
    # a cancel of an order sent before the restart: forwarded with the order's fields (1, 38)
    client.send("F", {41: "S2", 11: "S2-cxl", 55: "AAPL", 54: "1", 60: now()})
    cancel = await venue.next("F")
    assert (cancel[41], cancel[11], cancel[1], cancel[55], cancel[54], cancel[38]) == (
        "S2", "S2-cxl", "LONG", "AAPL", "1", "4")
    done = await client.next("8")
    assert (done[11], done[41], done[150]) == ("S2-cxl", "S2", "4")
    await adapter.idle()
    assert adapter.working_orders() == []
    async with gateway.client() as probe:
        (result,) = await probe.report_executions([make_execution(
            account="LONG", client_order_id="S1", execution_type="fill", execution_id=fill[17],
            last_quantity="4", last_price="100.01",
        )])
        assert result.status == types_pb2.EXECUTION_STATUS_DUPLICATE  # the adapter reported it
        # position 4 (S1 filled), S2 released: 6 more is exactly max_long_position 10
        assert (await probe.check_order(make_order(
            account="LONG", symbol="AAPL", side="buy", quantity="6", price="100.05", client_order_id="probe-4",
        ))).verdict == types_pb2.VERDICT_ACCEPT
    # a ClOrdID used before the restart is still known
    client.send("D", nos("S1", account="ACC1", qty="1", price="100.06"))
    duplicate = await client.next("8")
    assert duplicate[150] == "8" and duplicate[58].startswith("DUPLICATE_CLIENT_ORDER_ID")


@pytest.mark.timeout(180)
async def test_executions_the_gateway_did_not_take_are_reported_after_a_restart(fix_world):
    gateway, adapter, client, venue = fix_world
    client.send("D", nos("U1", account="LONG", qty="4"))
    await venue.next("D")
    await client.next("8")
    # the gateway becomes unreachable for the adapter: its client now points at a closed port
    reachable = adapter._link.client
    adapter._link.client = adapter_client(f"127.0.0.1:{free_port()}", gateway.tokens["trader"], 1.0)
    try:
        venue.fill("U1", "4", "100.01", full=True)
        fill = await client.next("8")  # relayed at once; the report is retried meanwhile
        assert (fill[11], fill[150]) == ("U1", "F")
        assert adapter.unreported_executions() == [fill[17]]
        adapter = await fix_world.restart_adapter()  # stops while the report still fails
    finally:
        await reachable.close()
    # the new adapter reports it from the order book, to the reachable gateway
    await wait_until(lambda: adapter.unreported_executions() == [], "the kept execution was not reported")
    async with gateway.client() as probe:
        (result,) = await probe.report_executions([make_execution(
            account="LONG", client_order_id="U1", execution_type="fill", execution_id=fill[17],
            last_quantity="4", last_price="100.01",
        )])
        assert result.status == types_pb2.EXECUTION_STATUS_DUPLICATE


@pytest.mark.timeout(240)
async def test_gateway_restart_rejects_in_time_then_orders_pass_and_kept_fills_are_reported(tmp_path):
    data_dir = tmp_path / "gw"  # the same data dir (and demo tokens) for both gateway runs
    first = running_gateway(data_dir)
    gateway = await first.__aenter__()
    try:
        await gateway.set_reference_prices()
        port = gateway.app.port
        async with world_on(tmp_path, gateway) as world:
            _, adapter, client, venue = world
            client.send("D", nos("G1"))
            await venue.next("D")
            assert (await client.next("8"))[150] == "0"
            await first.__aexit__(None, None, None)  # the gateway stops
            first = None
            started = time.monotonic()
            client.send("D", nos("G2", price="100.02"))
            refused = await client.next("8")
            assert (refused[11], refused[150], refused[39]) == ("G2", "8", "8")
            assert refused[58].split(":")[0] in ("GATEWAY_UNAVAILABLE", "DECISION_TIMEOUT"), refused[58]
            assert time.monotonic() - started < DECISION_TIMEOUT_MS / 1000 + 1.0
            # a fill while the gateway is away: relayed at once, kept and retried for the gateway
            venue.fill("G1", "10", "100.01", full=True)
            fill = await client.next("8")
            assert (fill[11], fill[150]) == ("G1", "F")
            assert adapter.unreported_executions() == [fill[17]]
            async with running_gateway(data_dir, listen=f"127.0.0.1:{port}") as gateway:
                await gateway.set_reference_prices()
                await wait_until(lambda: adapter.unreported_executions() == [],
                                 "the kept fill was not reported to the restarted gateway", timeout_s=30.0)
                deadline = time.monotonic() + 30.0
                for attempt in itertools.count(3):
                    client.send("D", nos(f"G{attempt}", price=f"100.{attempt:02d}"))
                    report = await client.next("8")
                    if report[150] == "0":
                        break
                    assert report[58].split(":")[0] in ("GATEWAY_UNAVAILABLE", "DECISION_TIMEOUT"), report[58]
                    assert time.monotonic() < deadline, "the adapter did not reconnect to the restarted gateway"
                    await asyncio.sleep(0.1)
                assert (await venue.next("D"))[11] == f"G{attempt}"
                assert adapter.stream_open()
    finally:
        if first is not None:
            await first.__aexit__(None, None, None)


async def test_fills_are_relayed_and_update_exposure(fix_world):
    _, adapter, client, venue = fix_world
    client.send("D", nos("F1", account="LONG", qty="6"))
    await venue.next("D")
    await client.next("8")
    venue.fill("F1", "4", "100.01", full=False)
    venue.fill("F1", "2", "100.00", full=True)
    partial, full = await client.next("8"), await client.next("8")
    assert (partial[150], partial[39], partial[32], partial[31]) == ("F", "1", "4", "100.01")
    assert (full[150], full[39], full[32]) == ("F", "2", "2")
    await adapter.idle()  # both fills reached the gateway
    # position 6 now (max_long_position 10): 5 more is refused, 4 passes
    client.send("D", nos("F2", account="LONG", qty="5", price="100.02"))
    refused = await client.next("8")
    assert refused[150] == "8" and "LONG_POSITION_LIMIT_EXCEEDED" in refused[58]
    client.send("D", nos("F3", account="LONG", qty="4", price="100.03"))
    await venue.next("D")
    assert (await client.next("8"))[150] == "0"


async def test_kill_switch_cancels_working_orders_on_the_venue(fix_world):
    gateway, _, client, venue = fix_world
    for cl_ord_id, price in (("K1", "100.01"), ("K2", "100.02")):
        client.send("D", nos(cl_ord_id, price=price))
        await venue.next("D")
        await client.next("8")
    await gateway.app.gateway_servicer.broadcast_control(
        gateway_pb2.ControlMessage(action=gateway_pb2.CONTROL_ACTION_CANCEL_ALL, reason="kill", requested_by="alice")
    )
    cancels = [await venue.next("F"), await venue.next("F")]
    assert sorted(c[41] for c in cancels) == ["K1", "K2"]
    reports = [await client.next("8"), await client.next("8")]
    assert sorted((r[11], r[150], r[39]) for r in reports) == [("K1", "4", "4"), ("K2", "4", "4")]
    assert all(41 not in r for r in reports)


def test_config_resolves_settings_relative_to_the_file(tmp_path):
    (tmp_path / "a.toml").write_text('[gateway]\ntoken="t"\n[fix]\nacceptor="acc.cfg"\ninitiator="/x/ini.cfg"\n')
    config = load_fix_config(tmp_path / "a.toml")
    assert isinstance(config, FixAdapterConfig)
    assert config.acceptor_settings == tmp_path / "acc.cfg" and str(config.initiator_settings) == "/x/ini.cfg"


def test_every_gateway_reason_code_has_an_ord_rej_reason():
    from fastpath.codes import Check

    assert {check.name for check in Check} <= set(ORD_REJ_REASON)
    assert set(ORD_REJ_REASON.values()) <= {0, 1, 2, 3, 6, 11, 13, 15, 99}  # FIX 4.4 tag 103 values


def test_fix_decimals_convert_exactly_and_bad_orders_are_named():
    from clients.adapters.fix.adapter import InvalidFixOrder, order_from_fields
    from pretrade.v1 import types_pb2

    order = order_from_fields({11: "X", 55: "AAPL", 54: "5", 38: "0.0001", 40: "2", 44: "189.123456789"}, "DEF")
    assert (order.account, order.side, order.quantity_nanos, order.price_nanos) == (
        "DEF", types_pb2.SIDE_SELL_SHORT, 100_000, 189_123_456_789)
    market = order_from_fields({11: "Y", 1: "A", 55: "S", 54: "1", 38: "3", 40: "1"})
    assert market.order_type == types_pb2.ORDER_TYPE_MARKET and market.price_nanos == 0
    for fields, code in (
        ({54: "9", 38: "1", 40: "2", 44: "1"}, "UNSUPPORTED_ORDER"),
        ({54: "1", 38: "1", 40: "P", 44: "1"}, "UNSUPPORTED_ORDER"),
        ({54: "1", 40: "2", 44: "1"}, "INVALID_ORDER"),
        ({54: "1", 38: "1e-12", 40: "2", 44: "1"}, "INVALID_ORDER"),
    ):
        with pytest.raises(InvalidFixOrder) as caught:
            order_from_fields({11: "Z", 55: "S", **fields})
        assert caught.value.code == code
