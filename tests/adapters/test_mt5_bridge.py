"""The MT5 bridge against a real gateway: a Python stand-in terminal speaks wire protocol v1
(line-delimited JSON, docs/adapters.md) over loopback, exactly as clients/mt5/PretradeBridge.mqh
does, and the bridge checks its orders through StreamOrders and reports its deals."""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import time
from decimal import Decimal

import pytest

from clients.adapters.mt5 import Mt5Bridge, load_config, parse_config
from clients.adapters.mt5.cli import build_config, register
from clients.adapters.mt5.config import ConfigError, ConversionError
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

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.ids = itertools.count(1)
        self.replies: dict[object, asyncio.Future] = {}
        self.controls: asyncio.Queue[dict] = asyncio.Queue()
        self._task = asyncio.create_task(self._read())

    @classmethod
    async def connect(cls, port: int) -> Terminal:
        return cls(*await asyncio.open_connection("127.0.0.1", port))

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
        message = {"v": 1, "id": request_id, "type": type_, **fields}
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
    assert (await terminal.request("ping"))["type"] == "pong"
    wrong_version = await terminal.raw(b'{"v": 2, "id": 7, "type": "ping"}\n', 7)
    assert (wrong_version["type"], wrong_version["code"]) == ("error", "UNSUPPORTED_VERSION")
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
        deal = await terminal.deal("before", "cancelled", "down-deal")
        assert (deal["type"], deal["code"]) == ("error", "GATEWAY_UNAVAILABLE")
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
            assert (await terminal.deal("after", "cancelled", "up-deal"))["status"] == "applied"
    finally:
        await terminal.close()
        await bridge.stop()
