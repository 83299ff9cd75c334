"""The MT5 bridge against a real gateway: a Python stand-in terminal speaks the wire protocol
(line-delimited JSON, docs/adapters.md; v1 as older terminals do, v2 as
clients/mt5/PretradeBridge.mqh does) over loopback, and the bridge checks its orders through
StreamOrders and reports its deals — kept in its state file and delivered until the gateway
answers, also across a gateway outage and a bridge restart."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import itertools
import json
import logging
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path

import pytest

from clients import make_order
from clients.adapters.mt5 import Mt5Bridge, load_config, parse_config
from clients.adapters.mt5.cli import build_config, register
from clients.adapters.mt5.config import ConfigError, ConversionError
from clients.adapters.reports import StateFileError
from pretrade.v1 import gateway_pb2
from tests.clients.gateway_harness import running_gateway

pytestmark = pytest.mark.integration

REPLY_TIMEOUT_S = 10.0

SYMBOLS = {
    # MT5 name -> gateway symbol of tests/clients/gateway_harness.CHECKS_RULES
    "AAPL.m": {"gateway_symbol": "AAPL", "digits": 2, "contract_size": 1, "volume_step": "1"},
    "LOTS.m": {"gateway_symbol": "LOTS", "digits": 2, "contract_size": 100, "volume_step": "0.1"},
}


def bridge_config(target: str, token: str, **bridge):
    return parse_config(
        {"bridge": {"listen": "127.0.0.1:0", "target": target, "token": token, **bridge}, "symbols": SYMBOLS}
    )


class Terminal:
    """A stand-in MT5 terminal: one TCP connection, requests with ids, pushed controls."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, version: int = 1) -> None:
        self.reader, self.writer = reader, writer
        self.version = version
        self.ids = itertools.count(1)
        self.replies: dict[object, asyncio.Future] = {}
        self.controls: asyncio.Queue[dict] = asyncio.Queue()
        self._task = asyncio.create_task(self._read())

    @classmethod
    async def connect(cls, port: int, version: int = 1) -> Terminal:
        return cls(*await asyncio.open_connection("127.0.0.1", port), version=version)

    async def _read(self) -> None:
        while line := await self.reader.readline():
            message = json.loads(line)
            if message["type"] == "control":
                self.controls.put_nowait(message)
            else:
                self.replies.pop(message["id"]).set_result(message)

    async def raw(self, line: bytes, request_id) -> dict:
        future = self.replies[request_id] = asyncio.get_running_loop().create_future()
        self.writer.write(line)
        await self.writer.drain()
        return await asyncio.wait_for(future, REPLY_TIMEOUT_S)

    async def request(self, type_: str, **fields) -> dict:
        request_id = f"r{next(self.ids)}"
        message = {"v": self.version, "id": request_id, "type": type_, **fields}
        return await self.raw(json.dumps(message).encode() + b"\n", request_id)

    async def check(self, client_order_id, side="buy", symbol="AAPL.m", volume=1.0, price=100.0, **fields):
        return await self.request(
            "check", account=fields.pop("account", "ACC1"), symbol=symbol, side=side,
            order_type=fields.pop("order_type", "limit"), volume=volume, price=price,
            client_order_id=client_order_id, **fields,
        )

    async def deal(self, client_order_id, exec_type, execution_id, volume=None, price=None, account="ACC1",
                   symbol="AAPL.m"):
        fields = dict(account=account, client_order_id=client_order_id, exec_type=exec_type,
                      execution_id=execution_id, symbol=symbol)
        if volume is not None:
            fields.update(volume=volume, price=price)
        return await self.request("execution", **fields)

    async def close(self) -> None:
        self.writer.close()
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)


@pytest.fixture
async def setup(tmp_path):
    async with running_gateway(tmp_path / "gw") as gateway:
        await gateway.set_reference_prices()
        bridge = Mt5Bridge(bridge_config(gateway.target, gateway.tokens["trader"]))
        await bridge.start()
        terminal = await Terminal.connect(bridge.port)
        try:
            yield gateway, bridge, terminal
        finally:
            await terminal.close()
            await bridge.stop()


# -- exact conversions (no gateway) -----------------------------------------------------------


def test_mt5_doubles_convert_exactly_through_their_repr():
    specs = bridge_config("x:1", "t").symbols
    lots = specs["LOTS.m"]
    assert lots.quantity_nanos(0.1 + 0.2) == 30 * 10**9  # 0.30000000000000004 lots = 30 units
    assert lots.price_nanos(100.1) == 100_100_000_000  # not 100.0999999999999943...
    assert lots.price_nanos(0.1 + 0.2) == 300_000_000
    assert lots.price_nanos(100.005) == 100_000_000_000  # quantized to 2 digits, half-even
    assert lots.lots_from_quantity_nanos(30 * 10**9) == Decimal("0.3")
    with pytest.raises(ConversionError, match="volume_step"):
        lots.quantity_nanos(0.15)  # never rounded to a step
    for bad in (0.0, -1.0, float("nan"), "abc", True, None):
        with pytest.raises(ConversionError):
            lots.quantity_nanos(bad)


def test_config_errors_are_one_line(tmp_path):
    with pytest.raises(ConfigError, match="digits"):
        parse_config({"symbols": {"X": {"contract_size": 1}}})
    with pytest.raises(ConfigError, match="strings or integers"):
        parse_config({"symbols": {"X": {"digits": 2, "volume_step": 0.01}}})
    with pytest.raises(ConfigError, match="at least one"):
        parse_config({"bridge": {}})
    path = tmp_path / "mt5.toml"
    path.write_text('[bridge]\ntoken = "t"\n[symbols.EURUSD]\ndigits = 5\ncontract_size = 100000\nvolume_step = "0.01"\n')
    assert load_config(path).symbols["EURUSD"].quantity_nanos(0.01) == 1000 * 10**9


def test_cli_registers_mt5_run(tmp_path):
    path = tmp_path / "mt5.toml"
    path.write_text('[bridge]\ntoken = "t"\nlisten = "127.0.0.1:7000"\n[symbols.X]\ndigits = 2\n')
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["mt5", "run", "--config", str(path), "--listen", "127.0.0.1:7001"])
    config = build_config(args)
    assert args.mt5_command == "run" and config.listen == "127.0.0.1:7001" and config.token == "t"


# -- against the gateway ----------------------------------------------------------------------


async def test_accepted_order_echoes_exact_quantity_and_price(setup):
    _, _, terminal = setup
    reply = await terminal.check("mt5-1", volume=5.0, price=100.1)
    assert reply["id"] == "r1" and reply["type"] == "decision" and reply["verdict"] == "accept"
    assert reply["client_order_id"] == "mt5-1" and reply["sequence"] > 0 and reply["failures"] == []
    assert (reply["quantity"], reply["price"]) == ("5", "100.1")
    # lots -> quantity via contract_size: 0.1 + 0.2 lots of LOTS.m = 30 units (lot size 10)
    reply = await terminal.check("mt5-2", symbol="LOTS.m", volume=0.1 + 0.2, price=100.0)
    assert reply["verdict"] == "accept" and reply["quantity"] == "30"


async def test_rejected_order_carries_the_gateway_reason(setup):
    _, _, terminal = setup
    reply = await terminal.check("mt5-big", volume=2000.0)
    assert reply["verdict"] == "reject"
    assert "MAX_ORDER_QTY_EXCEEDED" in [f["code"] for f in reply["failures"]]
    assert reply["failures"][0]["rule_path"] and reply["sequence"] > 0


async def test_unconvertible_order_is_rejected_by_the_bridge(setup):
    _, _, terminal = setup
    reply = await terminal.check("mt5-step", symbol="LOTS.m", volume=0.15)
    assert reply["verdict"] == "reject" and reply["sequence"] == 0
    assert reply["failures"][0]["code"] == "INVALID_ORDER" and "volume_step" in reply["failures"][0]["detail"]


async def test_concurrent_orders_each_get_their_own_decision(setup):
    _, _, terminal = setup
    # distinct prices (identical content would be DUPLICATE_ORDER_CONTENT); 4 accepts stay
    # within max_working_orders = 5
    replies = await asyncio.gather(
        *(terminal.check(f"c{i}", volume=1.0 if i % 2 else 5000.0, price=100.0 + i / 100) for i in range(8))
    )
    for i, reply in enumerate(replies):
        assert reply["client_order_id"] == f"c{i}"
        assert reply["verdict"] == ("accept" if i % 2 else "reject")


async def test_deals_update_exposure_in_the_gateway(setup):
    _, _, terminal = setup
    # LONG: max_long_position 10 (position + working buys + order)
    assert (await terminal.check("l1", account="LONG", volume=8.0))["verdict"] == "accept"
    blocked = await terminal.check("l2", account="LONG", volume=5.0)
    assert [f["code"] for f in blocked["failures"]] == ["LONG_POSITION_LIMIT_EXCEEDED"]
    cancelled = await terminal.deal("l1", "cancelled", "d-1", account="LONG")
    assert cancelled == {"v": 1, "id": cancelled["id"], "type": "execution_result",
                         "client_order_id": "l1", "status": "applied"}
    assert (await terminal.check("l3", account="LONG", volume=5.0))["verdict"] == "accept"
    fill = await terminal.deal("l3", "fill", "d-2", volume=5.0, price=100.0, account="LONG")
    assert fill["status"] == "applied"
    assert (await terminal.deal("l3", "fill", "d-2", volume=5.0, price=100.0, account="LONG"))["status"] == "duplicate"
    # position 5 now: 6 more would be 11 > 10
    rejected = await terminal.check("l4", account="LONG", volume=6.0)
    assert [f["code"] for f in rejected["failures"]] == ["LONG_POSITION_LIMIT_EXCEEDED"]
    assert (await terminal.check("l5", account="LONG", volume=5.0, price=100.01))["verdict"] == "accept"
    assert (await terminal.deal("nope", "fill", "d-3", volume=1.0, price=100.0))["status"] == "unknown_order"


async def test_kill_switch_is_pushed_to_every_terminal(setup):
    gateway, bridge, terminal = setup
    other = await Terminal.connect(bridge.port)
    try:
        assert (await terminal.check("k1"))["verdict"] == "accept"  # opens the order stream
        await gateway.app.gateway_servicer.broadcast_control(
            gateway_pb2.ControlMessage(
                action=gateway_pb2.CONTROL_ACTION_CANCEL_ALL, reason="kill", requested_by="alice", symbol="AAPL"
            )
        )
        for t in (terminal, other):
            control = await asyncio.wait_for(t.controls.get(), REPLY_TIMEOUT_S)
            assert control == {"v": 1, "type": "control", "action": "cancel_all", "account": "",
                               "symbol": "AAPL.m", "reason": "kill", "requested_by": "alice"}
    finally:
        await other.close()


async def test_protocol_errors_are_answered_by_id(setup):
    _, _, terminal = setup
    pong = await terminal.request("ping")
    assert (pong["type"], pong["v"], pong["versions"]) == ("pong", 1, [1, 2])
    v2 = await terminal.raw(b'{"v": 2, "id": 6, "type": "ping"}\n', 6)  # replies carry the request's version
    assert (v2["type"], v2["v"]) == ("pong", 2)
    wrong_version = await terminal.raw(b'{"v": 3, "id": 7, "type": "ping"}\n', 7)
    assert (wrong_version["type"], wrong_version["code"]) == ("error", "UNSUPPORTED_VERSION")
    assert "1, 2" in wrong_version["message"]
    unknown = await terminal.check("u1", symbol="NOPE")
    assert (unknown["type"], unknown["code"]) == ("error", "UNKNOWN_SYMBOL")
    bad_side = await terminal.check("u2", side="up")
    assert (bad_side["type"], bad_side["code"]) == ("error", "BAD_REQUEST") and "side" in bad_side["message"]
    not_json = await terminal.raw(b"{nope\n", None)
    assert (not_json["type"], not_json["code"], not_json["id"]) == ("error", "BAD_REQUEST", None)
    assert (await terminal.request("teleport"))["code"] == "BAD_REQUEST"


async def test_fails_closed_when_the_gateway_is_unreachable(tmp_path):
    bridge = Mt5Bridge(bridge_config("127.0.0.1:1", "token", decision_timeout_ms=1000))
    await bridge.start()
    terminal = await Terminal.connect(bridge.port)
    try:
        reply = await terminal.check("dead-1")
        assert reply["verdict"] == "reject" and reply["sequence"] == 0
        assert reply["failures"][0]["code"] in ("GATEWAY_UNAVAILABLE", "DECISION_TIMEOUT")
    finally:
        await terminal.close()
        await bridge.stop()


# -- gateway restart ----------------------------------------------------------------------------

#: The EA's own timeout in this test (InpTimeoutMs): the bridge's decision timeout plus a margin.
EA_TIMEOUT_S = 2.5
RECOVERY_TIMEOUT_S = 60.0


async def _check_timed(terminal: Terminal, client_order_id: str, price: float) -> tuple[dict, float]:
    started = time.monotonic()
    reply = await terminal.check(client_order_id, price=price)
    return reply, time.monotonic() - started


def _assert_fail_closed(reply: dict, elapsed: float) -> None:
    assert reply["type"] == "decision" and reply["verdict"] == "reject" and reply["sequence"] == 0, reply
    assert reply["failures"][0]["code"] in ("GATEWAY_UNAVAILABLE", "DECISION_TIMEOUT"), reply
    assert reply["failures"][0]["detail"], reply
    assert elapsed < EA_TIMEOUT_S, f"the reject took {elapsed:.2f} s, past the EA's timeout"


@pytest.mark.timeout(240)
async def test_bridge_fails_closed_while_the_gateway_restarts_then_passes_orders_again(tmp_path):
    data_dir = tmp_path / "gw"  # the same data dir (and demo tokens) for both gateway runs
    prices = itertools.count(1)
    async with running_gateway(data_dir) as gateway:
        await gateway.set_reference_prices()
        port = gateway.app.port
        bridge = Mt5Bridge(bridge_config(gateway.target, gateway.tokens["trader"], decision_timeout_ms=1000))
        await bridge.start()
        terminal = await Terminal.connect(bridge.port)
        assert (await terminal.check("before", price=100.0))["verdict"] == "accept"
    try:
        # the gateway is stopped: every check is refused by the bridge, in time, with a reason
        for i in range(3):
            reply, elapsed = await _check_timed(terminal, f"down-{i}", 100 + next(prices) / 100)
            _assert_fail_closed(reply, elapsed)
        # a v1 terminal still gets the v1 error for a deal the gateway did not take; the bridge
        # keeps it all the same and delivers it once the gateway is back
        deal = await terminal.deal("before", "cancelled", "down-deal")
        assert (deal["type"], deal["code"]) == ("error", "GATEWAY_UNAVAILABLE") and "keeps" in deal["message"]
        assert bridge.pending_reports() == ["down-deal"]
        # the gateway comes back on the same port: the bridge re-opens its stream by itself
        async with running_gateway(data_dir, listen=f"127.0.0.1:{port}") as gateway:
            await gateway.set_reference_prices()
            deadline = time.monotonic() + RECOVERY_TIMEOUT_S
            attempt = 0
            while True:
                attempt += 1
                reply, elapsed = await _check_timed(terminal, f"up-{attempt}", 100 + next(prices) / 100)
                if reply["verdict"] == "accept":
                    break
                _assert_fail_closed(reply, elapsed)  # not yet reconnected: still refused in time
                assert time.monotonic() < deadline, "the bridge did not reconnect to the restarted gateway"
                await asyncio.sleep(0.1)
            assert reply["sequence"] > 0 and reply["failures"] == []
            # the re-opened stream carries decisions and control messages, and deals reach the gateway
            assert (await terminal.check("after", price=100 + next(prices) / 100))["verdict"] == "accept"
            await gateway.app.gateway_servicer.broadcast_control(
                gateway_pb2.ControlMessage(action=gateway_pb2.CONTROL_ACTION_CANCEL_ALL, reason="kill",
                                           requested_by="alice")
            )
            control = await asyncio.wait_for(terminal.controls.get(), REPLY_TIMEOUT_S)
            assert control["action"] == "cancel_all" and control["reason"] == "kill"
            # a deal now reaches the gateway: answered at once, or (v1) GATEWAY_UNAVAILABLE while the
            # bridge's report worker still waits for its next attempt (backoff up to 2 s) — kept
            # and delivered all the same
            deal = await terminal.deal("after", "cancelled", "up-deal")
            assert deal.get("status") == "applied" or deal.get("code") == "GATEWAY_UNAVAILABLE", deal
            # the deal kept while the gateway was away was delivered to the restarted one (which
            # no longer knows the order checked by its previous run: its state is in memory)
            await wait_until(lambda: bridge.pending_reports() == [], "the kept deals were not delivered")
            assert bridge.report_outcome("down-deal") == "UNKNOWN_ORDER"
            assert bridge.report_outcome("up-deal") == "APPLIED"
    finally:
        await terminal.close()
        await bridge.stop()


# -- execution reports: kept by the bridge, delivered until the gateway answers ----------------

WAIT_S = 30.0


async def wait_until(condition, what: str, timeout_s: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.02)


class Cuttable:
    """A TCP relay from the bridge to the gateway that can be cut (the gateway is unreachable
    for the bridge: its connections drop and new ones are refused, while the gateway itself and
    its state stay up) and restored on the same port."""

    def __init__(self, gateway_port: int) -> None:
        self._gateway_port = gateway_port
        self._server: asyncio.AbstractServer | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self.port = 0

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def restore(self) -> None:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def cut(self) -> None:
        self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        await self._server.wait_closed()

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self._gateway_port)
        except OSError:
            writer.transport.abort()
            return
        self._writers |= {writer, up_writer}

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError, OSError):
                while data := await source.read(65536):
                    sink.write(data)
                    await sink.drain()
            sink.transport.abort()

        try:
            await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        finally:
            self._writers -= {writer, up_writer}


async def _short_check(probe, client_order_id: str, price: str) -> list[str]:
    """A sell of 105 on LONG, straight to the gateway: SHORT_POSITION_LIMIT_EXCEEDED (max 100)
    unless the account holds a long position that brings it within the limit (priced above the
    account's working buys, so that self-match prevention stays out of it)."""
    decision = await probe.check_order(make_order(account="LONG", symbol="AAPL", side="sell", quantity="105",
                                                  price=price, client_order_id=client_order_id))
    return [failure.code for failure in decision.failures]


def _delivered(caplog, execution_id: str) -> list[str]:
    """The gateway's answers the bridge logged for ``execution_id`` (one per delivery)."""
    prefix = f"execution {execution_id} of "
    return [record.getMessage() for record in caplog.records
            if record.name == "pretrade.mt5" and record.getMessage().startswith(prefix)]


@pytest.mark.timeout(120)
async def test_fill_while_the_gateway_is_unreachable_is_queued_then_reaches_its_exposure(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="pretrade.mt5")
    async with running_gateway(tmp_path / "gw") as gateway, gateway.client() as probe:
        await gateway.set_reference_prices()
        relay = Cuttable(gateway.app.port)
        await relay.restore()
        bridge = Mt5Bridge(bridge_config(relay.target, gateway.tokens["trader"], decision_timeout_ms=1000,
                                         state_file=str(tmp_path / "mt5" / "reports.sqlite")))
        await bridge.start()
        terminal = await Terminal.connect(bridge.port, version=2)
        old = await Terminal.connect(bridge.port, version=1)
        try:
            assert (await terminal.check("q1", account="LONG", volume=8.0))["verdict"] == "accept"
            assert (await old.check("q2", account="LONG", volume=2.0, price=100.01))["verdict"] == "accept"
            await relay.cut()
            # the fill is accepted for delivery (v2), at once, and kept; its repeat is not queued again
            started = time.monotonic()
            fill = await terminal.deal("q1", "fill", "q1-fill", volume=8.0, price=100.0, account="LONG")
            assert fill == {"v": 2, "id": fill["id"], "type": "execution_result", "client_order_id": "q1",
                            "status": "queued"}
            assert time.monotonic() - started < EA_TIMEOUT_S
            again = await terminal.deal("q1", "fill", "q1-fill", volume=8.0, price=100.0, account="LONG")
            assert again["status"] == "queued"
            # a v1 terminal gets the v1 error, and the bridge keeps its report all the same
            cancel = await old.deal("q2", "cancelled", "q2-cancel", account="LONG")
            assert (cancel["v"], cancel["type"], cancel["code"]) == (1, "error", "GATEWAY_UNAVAILABLE")
            assert bridge.pending_reports() == ["q1-fill", "q2-cancel"]
            # checks meanwhile are refused by the bridge (fail closed)
            refused = await terminal.check("q3", account="LONG", volume=1.0, price=100.02)
            assert refused["verdict"] == "reject" and refused["sequence"] == 0
            # the gateway has neither yet: LONG has no position, a sell of 105 is 105 short
            assert await _short_check(probe, "probe-1", "100.50") == ["SHORT_POSITION_LIMIT_EXCEEDED"]

            await relay.restore()
            await wait_until(lambda: bridge.pending_reports() == [], "the kept reports were not delivered")
            assert bridge.report_outcome("q1-fill") == bridge.report_outcome("q2-cancel") == "APPLIED"
            # in the gateway's exposure now: long 8, so a sell of 105 is 97 short (limit 100) ...
            assert await _short_check(probe, "probe-2", "100.51") == []
            # ... and q2 (2) no longer works: 8 + 2 is exactly max_long_position 10
            decision = await probe.check_order(make_order(account="LONG", symbol="AAPL", side="buy", quantity="2",
                                                          price="100.03", client_order_id="probe-3"))
            assert [failure.code for failure in decision.failures] == []
            # delivered once (a second delivery would have been logged, and recorded DUPLICATE);
            # a later repeat is answered duplicate without going to the gateway
            assert _delivered(caplog, "q1-fill") == ["execution q1-fill of q1: EXECUTION_STATUS_APPLIED"]
            repeat = await terminal.deal("q1", "fill", "q1-fill", volume=8.0, price=100.0, account="LONG")
            assert repeat["status"] == "duplicate"
            assert len(_delivered(caplog, "q1-fill")) == 1
        finally:
            await terminal.close()
            await old.close()
            await bridge.stop()


async def test_repeated_reports_while_the_gateway_answers_are_delivered_once(setup, caplog):
    caplog.set_level(logging.INFO, logger="pretrade.mt5")
    _, bridge, terminal = setup
    assert (await terminal.check("d1", account="LONG", volume=4.0))["verdict"] == "accept"
    first, second = await asyncio.gather(
        terminal.deal("d1", "fill", "d1-fill", volume=4.0, price=100.0, account="LONG"),
        terminal.deal("d1", "fill", "d1-fill", volume=4.0, price=100.0, account="LONG"),
    )
    assert sorted([first["status"], second["status"]]) == ["applied", "duplicate"]
    assert _delivered(caplog, "d1-fill") == ["execution d1-fill of d1: EXECUTION_STATUS_APPLIED"]
    assert bridge.pending_reports() == [] and bridge.report_outcome("d1-fill") == "APPLIED"


@pytest.mark.timeout(120)
async def test_a_report_queued_before_a_bridge_restart_is_delivered_after_it(tmp_path):
    state_file = str(tmp_path / "mt5" / "reports.sqlite")
    async with running_gateway(tmp_path / "gw") as gateway, gateway.client() as probe:
        await gateway.set_reference_prices()
        relay = Cuttable(gateway.app.port)
        await relay.restore()
        config = bridge_config(relay.target, gateway.tokens["trader"], decision_timeout_ms=1000,
                               state_file=state_file)
        bridge = Mt5Bridge(config)
        await bridge.start()
        terminal = await Terminal.connect(bridge.port, version=2)
        try:
            assert (await terminal.check("r1", account="LONG", volume=8.0))["verdict"] == "accept"
            await relay.cut()
            fill = await terminal.deal("r1", "fill", "r1-fill", volume=8.0, price=100.0, account="LONG")
            assert fill["status"] == "queued"
        finally:
            await terminal.close()
            await bridge.stop()
        # a new bridge on the same state file, the gateway still unreachable: the report is there
        bridge = Mt5Bridge(config)
        await bridge.start()
        terminal = await Terminal.connect(bridge.port, version=2)
        try:
            assert bridge.pending_reports() == ["r1-fill"]
            # the terminal sends it again (its retry queue): still one report
            assert (await terminal.deal("r1", "fill", "r1-fill", volume=8.0, price=100.0,
                                        account="LONG"))["status"] == "queued"
            assert bridge.pending_reports() == ["r1-fill"]
            assert await _short_check(probe, "probe-1", "100.50") == ["SHORT_POSITION_LIMIT_EXCEEDED"]
            await relay.restore()
            await wait_until(lambda: bridge.pending_reports() == [], "the kept report was not delivered")
            assert bridge.report_outcome("r1-fill") == "APPLIED"
            assert await _short_check(probe, "probe-2", "100.51") == []  # long 8: 97 short
            assert (await terminal.deal("r1", "fill", "r1-fill", volume=8.0, price=100.0,
                                        account="LONG"))["status"] == "duplicate"
        finally:
            await terminal.close()
            await bridge.stop()
        # the outcome survives a restart too: a repeat is still not delivered again
        bridge = Mt5Bridge(config)
        await bridge.start()
        try:
            assert bridge.pending_reports() == [] and bridge.report_outcome("r1-fill") == "APPLIED"
        finally:
            await bridge.stop()


async def test_reports_refused_for_a_revoked_token_are_kept_then_delivered_once_the_token_is_fixed(tmp_path, caplog):
    """A bridge whose token the gateway refuses (UNAUTHENTICATED for every call) keeps its
    reports, retries them with the backoff, logs the refusal once and says it in ``pong``;
    restarted with a valid token on the same state file, it delivers all of them, in order,
    once each."""
    caplog.set_level(logging.INFO, logger="pretrade.mt5")
    state_file = str(tmp_path / "mt5" / "reports.sqlite")
    async with running_gateway(tmp_path / "gw") as gateway:
        revoked = bridge_config(gateway.target, "revoked-token", decision_timeout_ms=500, state_file=state_file)
        bridge = Mt5Bridge(revoked)
        await bridge.start()
        terminal = await Terminal.connect(bridge.port, version=2)
        try:
            for number in range(1, 4):
                reply = await terminal.deal(f"t{number}", "cancelled", f"t{number}-cancel")
                assert reply["status"] == "queued"
            await wait_until(lambda: bridge._reporter._failed_attempts >= 4, "the refused batch was not retried")
            pong = await terminal.request("ping")
            assert pong["reports"] == {"pending": 3, "quarantined": 0,
                                       "failing": "Unauthenticated: invalid bearer token"}
            refusals = [r for r in caplog.records if "not delivered" in r.getMessage()]
            assert len(refusals) == 1 and refusals[0].levelname == "ERROR", [r.getMessage() for r in refusals]
            assert _delivered(caplog, "t1-cancel") == []
        finally:
            await terminal.close()
            await bridge.stop()

        bridge = Mt5Bridge(dataclasses.replace(revoked, token=gateway.tokens["trader"]))  # the token fixed
        await bridge.start()
        terminal = await Terminal.connect(bridge.port, version=2)
        try:
            await wait_until(lambda: bridge.pending_reports() == [], "the kept reports were not delivered")
            answers = [r.getMessage() for r in caplog.records
                       if r.name == "pretrade.mt5" and r.getMessage().startswith("execution t")]
            assert answers == [f"execution t{n}-cancel of t{n}: EXECUTION_STATUS_UNKNOWN_ORDER" for n in (1, 2, 3)]
            assert (await terminal.request("ping"))["reports"] == {"pending": 0, "quarantined": 0, "failing": None}
        finally:
            await terminal.close()
            await bridge.stop()


async def test_a_report_the_gateway_refuses_as_malformed_is_quarantined_and_blocks_nothing(setup, caplog):
    """The gateway refuses an execution id longer than its name limit (64) with
    INVALID_ARGUMENT, for the whole batch: the bridge quarantines that report, answers the
    terminal an error it does not retry, and the reports behind it are delivered."""
    caplog.set_level(logging.INFO, logger="pretrade.mt5")
    _, bridge, terminal = setup
    long_id = "x" * 65
    refused = await terminal.deal("m1", "cancelled", long_id)
    assert (refused["type"], refused["code"]) == ("error", "INVALID_EXECUTION")
    assert "execution_id" in refused["message"] and "quarantine" in refused["message"]
    after = await terminal.deal("m2", "cancelled", "m2-cancel")
    assert (after["type"], after["status"]) == ("execution_result", "unknown_order")
    assert bridge.pending_reports() == []
    assert [execution_id for execution_id, _ in bridge.quarantined_reports()] == [long_id]
    assert (await terminal.request("ping"))["reports"] == {"pending": 0, "quarantined": 1, "failing": None}
    assert len([r for r in caplog.records if r.levelname == "ERROR" and "quarantined" in r.getMessage()]) == 1


async def test_a_second_bridge_on_the_same_state_file_fails_at_start_with_one_line(tmp_path):
    data_dir = tmp_path / "data"
    config_path = tmp_path / "bridge.toml"
    config_path.write_text(
        '[bridge]\nlisten = "127.0.0.1:0"\ntarget = "127.0.0.1:1"\ntoken = "t"\n'
        '[symbols."AAPL.m"]\ngateway_symbol = "AAPL"\ndigits = 2\ncontract_size = 1\nvolume_step = "1"\n'
    )
    config = load_config(config_path, data_dir)
    assert config.state_path == data_dir / "mt5" / "reports.sqlite"  # the default: under the data dir
    first = Mt5Bridge(config)
    await first.start()
    try:
        second = Mt5Bridge(config)
        with pytest.raises(StateFileError, match="another bridge") as refused:
            await second.start()
        assert "\n" not in str(refused.value)
        # `pretrade mt5 run` on the same data dir: one line, exit code 2
        process = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "gateway.cli", "mt5", "run", "--config", str(config_path),
             "--data-dir", str(data_dir)],
            cwd=Path(__file__).resolve().parents[2], capture_output=True, text=True, timeout=60,
        )
        assert process.returncode == 2, process.stderr
        lines = process.stderr.strip().splitlines()
        assert len(lines) == 1 and "is another bridge using it?" in lines[0], process.stderr
        assert str(config.state_path) in lines[0]
    finally:
        await first.stop()
    # free again once the first has stopped
    again = Mt5Bridge(config)
    await again.start()
    await again.stop()


def test_state_file_setting(tmp_path):
    path = tmp_path / "conf" / "bridge.toml"
    path.parent.mkdir()
    path.write_text('[bridge]\nstate_file = "state/reports.sqlite"\n[symbols.X]\ndigits = 2\n')
    assert load_config(path, tmp_path / "data").state_path == path.parent / "state" / "reports.sqlite"
    path.write_text('[symbols.X]\ndigits = 2\n')
    assert load_config(path).state_path is None  # made in code without a data dir: in memory
    with pytest.raises(ConfigError, match="state_file"):
        parse_config({"bridge": {"state_file": 5}, "symbols": {"X": {"digits": 2}}})
