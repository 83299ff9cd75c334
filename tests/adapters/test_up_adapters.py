"""``pretrade up --fix-config … --mt5-config …``: the adapters run as companions of the
gateway in its process. Everything real: ``pretrade up`` in a subprocess (embedded NATS,
gateway, demo tokens), a QuickFIX client and venue in this process, a stand-in MT5
terminal; the adapters stop cleanly with the gateway on SIGTERM."""

from __future__ import annotations

import asyncio
import itertools
import re
import sqlite3
import time
from pathlib import Path

import pytest
import quickfix as fix

from clients import AsyncGatewayClient, make_reference_price
from gateway.cli import EXIT_ERROR, EXIT_OK, main
from tests.adapters.test_fix_adapter import WAIT_S, Engine, Recorder, Venue, free_port, nos, settings_file
from tests.adapters.test_mt5_bridge import Terminal
from tests.clients.gateway_harness import write_rules, write_up_watchdogs
from tests.gateway.test_cli import UP_START_TIMEOUT_S, UP_STOP_TIMEOUT_S, UpProcess

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]


def adapter_files(tmp_path: Path, client_port: int, venue_port: int, mt5_port: int) -> tuple[Path, Path]:
    settings_file(tmp_path / "acceptor.cfg", "acceptor", tmp_path / "adapter-store-a", "UPPRETRADE", "UPCLIENT",
                  client_port, dictionary=False)
    settings_file(tmp_path / "initiator.cfg", "initiator", tmp_path / "adapter-store-i", "UPPRETRADE", "UPVENUE",
                  venue_port, dictionary=False)
    (tmp_path / "logs").mkdir()
    fix_config = tmp_path / "adapter.toml"
    # target and token of the files are not used by `up`: its own gateway, its demo trader token
    fix_config.write_text(
        '[gateway]\ntarget = "127.0.0.1:1"\ntoken_env = "PRETRADE_TEST_NO_SUCH_VARIABLE"\n'
        '[fix]\nacceptor = "acceptor.cfg"\ninitiator = "initiator.cfg"\nlog_dir = "logs"\n'
    )
    mt5_config = tmp_path / "bridge.toml"
    mt5_config.write_text(
        f'[bridge]\nlisten = "127.0.0.1:{mt5_port}"\ntarget = "127.0.0.1:1"\n'
        'token_env = "PRETRADE_TEST_NO_SUCH_VARIABLE"\n'
        '[symbols."AAPL.m"]\ngateway_symbol = "AAPL"\ndigits = 2\ncontract_size = 1\nvolume_step = "1"\n'
    )
    return fix_config, mt5_config


async def test_up_runs_the_fix_adapter_and_the_mt5_bridge(tmp_path):
    rules = write_rules(tmp_path)
    data_dir = tmp_path / "data"
    client_port, venue_port, mt5_port = free_port(), free_port(), free_port()
    fix_config, mt5_config = adapter_files(tmp_path, client_port, venue_port, mt5_port)
    venue, client = Venue(), Recorder()
    venue_engine = Engine(venue, settings_file(tmp_path / "venue.cfg", "acceptor", tmp_path / "venue-store",
                                               "UPVENUE", "UPPRETRADE", venue_port), fix.ThreadedSocketAcceptor, tmp_path)
    client_engine = Engine(client, settings_file(tmp_path / "client.cfg", "initiator", tmp_path / "client-store",
                                                 "UPCLIENT", "UPPRETRADE", client_port), fix.ThreadedSocketInitiator,
                           tmp_path)
    await asyncio.to_thread(venue_engine.start)
    up = UpProcess(["up", "--rules", str(rules), "--data-dir", str(data_dir), "--listen", "127.0.0.1:0",
                    "--metrics-listen", "off", "--watchdogs", str(write_up_watchdogs(tmp_path)),
                    "--fix-config", str(fix_config), "--mt5-config", str(mt5_config)],
                   tmp_path / "up.stderr")
    terminal = None
    try:
        try:
            banner = await asyncio.to_thread(up.read_until, "Ctrl-C stops", UP_START_TIMEOUT_S)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{(tmp_path / 'up.stderr').read_text()}") from None
        target = re.search(r"listening on (\S+)", "\n".join(banner)).group(1)
        trader = next(line.split()[2] for line in (data_dir / "demo-tokens.txt").read_text().splitlines()
                      if line.startswith("trader "))
        async with AsyncGatewayClient(target, trader) as gateway:
            await gateway.update_reference_prices([make_reference_price("AAPL", "100")])

        # FIX: the companion adapter took the client session and logged on to the venue
        await asyncio.to_thread(client_engine.start)
        assert await asyncio.to_thread(client.logged_on.wait, WAIT_S), "the FIX client did not log on"
        assert await asyncio.to_thread(venue.logged_on.wait, WAIT_S), "the adapter did not log on to the venue"
        # the venue saw the logon before the adapter did: until the adapter has, it refuses
        # orders with VENUE_UNAVAILABLE (before asking the gateway); retry until it has
        deadline = time.monotonic() + WAIT_S
        for attempt in itertools.count(1):
            cl_ord_id = f"UP1-{attempt}"
            client.send("D", nos(cl_ord_id, price=f"100.{attempt:02d}"))
            report = await client.next("8")
            if not (report[150] == "8" and report[58].startswith("VENUE_UNAVAILABLE")):
                break
            assert time.monotonic() < deadline, "the adapter did not log on to the venue"
            await asyncio.sleep(0.05)
        assert (report[11], report[150], report[39]) == (cl_ord_id, "0", "0"), report
        sent = await venue.next("D")
        assert (sent[11], sent[1], sent[38]) == (cl_ord_id, "ACC1", "10")
        client.send("D", nos("UP2", qty="5000"))
        rejected = await client.next("8")
        assert (rejected[11], rejected[150]) == ("UP2", "8") and "MAX_ORDER_QTY_EXCEEDED" in rejected[58]

        # MT5: the companion bridge checks through the same gateway
        terminal = await Terminal.connect(mt5_port)
        reply = await terminal.check("mt5-up-1", symbol="AAPL.m", volume=2.0, price=100.02)
        assert reply["verdict"] == "accept" and reply["sequence"] > 0, reply
        cancel = await terminal.deal("mt5-up-1", "cancelled", "mt5-up-1-cxl", symbol="AAPL.m")
        assert cancel["status"] == "applied", cancel
    finally:
        if terminal is not None:
            await terminal.close()
        await asyncio.to_thread(client_engine.stop)
        exit_code = await asyncio.to_thread(up.stop, UP_STOP_TIMEOUT_S)
        await asyncio.to_thread(venue_engine.stop)
    stderr = (tmp_path / "up.stderr").read_text()
    assert exit_code == EXIT_OK, stderr
    assert "Traceback" not in stderr
    assert "MT5 bridge listening" in stderr
    # the FIX order book is under the data dir and holds the order
    with sqlite3.connect(data_dir / "fix" / "orders.sqlite") as book:
        assert book.execute("SELECT client_order_id, account FROM orders").fetchall() == [(cl_ord_id, "ACC1")]
    # the MT5 bridge's execution reports are under the data dir too: the cancel was delivered
    with sqlite3.connect(data_dir / "mt5" / "reports.sqlite") as reports:
        delivered = reports.execute("SELECT execution_id, status FROM delivered").fetchall()
        assert delivered == [("mt5-up-1-cxl", "APPLIED")]
        assert reports.execute("SELECT count(*) FROM reports").fetchone() == (0,)


def test_up_with_a_bad_adapter_config_fails_with_one_line_before_starting(tmp_path, capsys):
    rules = write_rules(tmp_path)
    bad = tmp_path / "adapter.toml"
    bad.write_text('[fix]\nacceptor = "missing.cfg"\ninitiator = "missing.cfg"\n')
    code = main(["up", "--rules", str(rules), "--data-dir", str(tmp_path / "data"), "--metrics-listen", "off",
                 "--listen", "127.0.0.1:0", "--fix-config", str(bad)])
    err = capsys.readouterr().err
    assert code == EXIT_ERROR and len(err.strip().splitlines()) == 1, err
    assert "--fix-config" in err and "missing.cfg" in err
    bad.write_text('[bridge]\nlisten = "127.0.0.1:0"\n')
    code = main(["up", "--rules", str(rules), "--data-dir", str(tmp_path / "data"), "--metrics-listen", "off",
                 "--listen", "127.0.0.1:0", "--mt5-config", str(bad)])
    err = capsys.readouterr().err
    assert code == EXIT_ERROR and "--mt5-config" in err and "symbols" in err, err
