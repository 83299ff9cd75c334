"""TLS and mutual TLS on the gateway's port: real gRPC over loopback with a throwaway CA
(tests/gateway/tls_material.py), the SDK's ``clients.tls_credentials``, the ``--tls-*``
flags' one-line errors, and ``pretrade up`` with mutual TLS end to end (``pretrade check
--tls-ca``, and the companions' plaintext Unix socket)."""

from __future__ import annotations

import asyncio
import os
import re
import stat

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from clients import (
    AsyncGatewayClient,
    GatewayClient,
    GatewayUnavailable,
    TlsFileError,
    make_order,
    make_reference_price,
    tls_credentials,
)
from gateway.cli import EXIT_ERROR, EXIT_OK, main
from pretrade.v1 import types_pb2
from tests.adapters.test_fix_adapter import free_port
from tests.adapters.test_mt5_bridge import Terminal
from tests.clients.gateway_harness import running_gateway, write_rules
from tests.gateway.test_cli import (
    EXAMPLE_RULES,
    UP_START_TIMEOUT_S,
    UP_STOP_TIMEOUT_S,
    UpProcess,
    assert_one_error_line,
    run,
)
from tests.gateway.tls_material import make_tls_files
from watchdogs.core import Action, Finding, ScopeKind, Target
from watchdogs.worker import HaltRequester, WatchdogMetrics

pytestmark = pytest.mark.timeout(90)

EXAMPLE_WATCHDOGS = EXAMPLE_RULES.parent / "watchdogs.toml"

#: Long enough that a refusal shows as UNAVAILABLE, not as a deadline on a slow machine.
REFUSAL_TIMEOUT_S = 20.0


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory):
    return make_tls_files(tmp_path_factory.mktemp("tls"))


def _order(client_order_id: str, quantity: int = 10):
    return make_order(account="ACC1", symbol="AAPL", side="buy", quantity=quantity, price="100.00",
                      client_order_id=client_order_id)


async def _assert_refused(gateway, credentials) -> None:
    async with gateway.client("trader", credentials=credentials, timeout_s=REFUSAL_TIMEOUT_S) as client:
        with pytest.raises(GatewayUnavailable):
            await client.check_order(_order("refused"))


# -- the SDK helper --------------------------------------------------------------------------


def test_tls_credentials_errors_name_the_setting_and_file(tls_files, tmp_path):
    not_pem = tmp_path / "not.pem"
    not_pem.write_text("hello\n")
    cases = [
        (lambda: tls_credentials(str(tmp_path / "missing.pem")), ["ca_path", "missing.pem", "cannot read"]),
        (lambda: tls_credentials(str(not_pem)), ["ca_path", "not.pem", "not a PEM certificate"]),
        (lambda: tls_credentials(str(tls_files.ca), str(tls_files.client_cert)), ["cert_path", "key_path"]),
        (lambda: tls_credentials(str(tls_files.ca), str(tls_files.client_cert), str(tls_files.server_key)),
         ["key_path", "does not match"]),
        (lambda: tls_credentials(str(tls_files.ca), str(tls_files.client_cert), str(not_pem)),
         ["key_path", "not a PEM private key"]),
    ]
    for build, words in cases:
        with pytest.raises(TlsFileError) as failure:
            build()
        message = str(failure.value)
        assert "\n" not in message
        for word in words:
            assert word in message, (word, message)
    assert isinstance(tls_credentials(str(tls_files.ca)), grpc.ChannelCredentials)
    assert isinstance(
        tls_credentials(str(tls_files.ca), str(tls_files.client_cert), str(tls_files.client_key)),
        grpc.ChannelCredentials,
    )


# -- the gateway with TLS ------------------------------------------------------------------------


@pytest.mark.integration
async def test_tls_gateway_answers_clients_that_trust_its_ca_only(tmp_path, tls_files):
    trusted = tls_credentials(str(tls_files.ca))
    async with running_gateway(tmp_path / "gw", credentials=trusted, tls_cert_path=str(tls_files.server_cert),
                               tls_key_path=str(tls_files.server_key)) as gateway:
        await gateway.set_reference_prices()
        async with gateway.client("trader") as trader:
            decision = await trader.check_order(_order("tls-1"))
        assert decision.verdict == types_pb2.VERDICT_ACCEPT
        async with grpc.aio.secure_channel(gateway.target, trusted) as channel:  # health needs no token
            response = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
            assert response.status == health_pb2.HealthCheckResponse.SERVING
        await _assert_refused(gateway, None)  # plaintext
        await _assert_refused(gateway, tls_credentials(str(tls_files.other_ca)))  # does not trust the CA
        # no companion socket unless asked for (`pretrade up` asks)
        assert not list((tmp_path / "gw").glob("*.sock"))


@pytest.mark.integration
async def test_mutual_tls_requires_a_client_certificate_signed_by_the_client_ca(tmp_path, tls_files):
    with_cert = tls_credentials(str(tls_files.ca), str(tls_files.client_cert), str(tls_files.client_key))
    socket_path = tmp_path / "gw" / "gateway.sock"
    async with running_gateway(tmp_path / "gw", credentials=with_cert, tls_cert_path=str(tls_files.server_cert),
                               tls_key_path=str(tls_files.server_key),
                               tls_client_ca_path=str(tls_files.ca),
                               companion_socket=str(socket_path)) as gateway:
        await gateway.set_reference_prices()
        async with gateway.client("trader") as trader:
            assert (await trader.check_order(_order("mtls-1"))).verdict == types_pb2.VERDICT_ACCEPT
        await _assert_refused(gateway, tls_credentials(str(tls_files.ca)))  # no client certificate
        stranger = tls_credentials(str(tls_files.ca), str(tls_files.other_client_cert),
                                   str(tls_files.other_client_key))
        await _assert_refused(gateway, stranger)  # a certificate the client CA did not sign
        await _assert_refused(gateway, None)
        # companions in the process reach it over the plaintext socket, only this user may
        assert stat.S_ISSOCK(socket_path.stat().st_mode)
        assert stat.S_IMODE(socket_path.stat().st_mode) == 0o600
        async with AsyncGatewayClient(f"unix:{socket_path}", gateway.tokens["trader"]) as companion:
            assert (await companion.check_order(_order("mtls-2", quantity=11))).verdict == types_pb2.VERDICT_ACCEPT
    assert not socket_path.exists()


# -- the command line ----------------------------------------------------------------------------


def test_tls_flag_errors_are_one_line_naming_flag_and_file(capsys, tmp_path, tls_files):
    not_pem = tmp_path / "junk.pem"
    not_pem.write_text("junk\n")
    serve = ["serve", "--rules", "r.toml", "--tokens", "t.toml", "--data-dir", str(tmp_path / "d"),
             "--listen", "127.0.0.1:0", "--metrics-listen", "off"]
    cert, key = str(tls_files.server_cert), str(tls_files.server_key)
    fix_config = tmp_path / "adapter.toml"
    fix_config.write_text('[gateway]\ntoken = "t"\n[fix]\nacceptor = "a.cfg"\ninitiator = "i.cfg"\n')
    mt5_config = tmp_path / "bridge.toml"
    mt5_config.write_text('[bridge]\ntoken = "t"\n[symbols.X]\ndigits = 2\n')
    ledger_run = ["ledger", "run", "--data-dir", str(tmp_path / "d"), "--nats-url", "nats://127.0.0.1:1",
                  "--metrics-listen", "off"]
    cases = [
        ([*serve, "--tls-cert", cert], ["--tls-cert", "--tls-key"]),
        ([*serve, "--tls-key", key], ["--tls-key", "--tls-cert"]),
        ([*serve, "--tls-client-ca", cert], ["--tls-client-ca", "--tls-cert"]),
        ([*serve, "--tls-cert", str(tmp_path / "nope.pem"), "--tls-key", key],
         ["--tls-cert", "nope.pem", "cannot read"]),
        ([*serve, "--tls-cert", str(not_pem), "--tls-key", key], ["--tls-cert", "junk.pem", "not a PEM certificate"]),
        ([*serve, "--tls-cert", cert, "--tls-key", str(not_pem)], ["--tls-key", "junk.pem", "not a PEM private key"]),
        ([*serve, "--tls-cert", cert, "--tls-key", str(tls_files.client_key)],
         ["--tls-key", "client-key.pem", "does not match"]),
        ([*serve, "--tls-cert", cert, "--tls-key", key, "--tls-client-ca", str(not_pem)],
         ["--tls-client-ca", "junk.pem"]),
        (["check", "--token", "t", "--account", "A", "--symbol", "S", "--side", "buy", "--qty", "1",
          "--tls-ca", str(tmp_path / "ca-missing.pem")], ["--tls-ca", "ca-missing.pem", "cannot read"]),
        (["check", "--token", "t", "--account", "A", "--symbol", "S", "--side", "buy", "--qty", "1",
          "--tls-client-cert", str(tls_files.client_cert)], ["--tls-client-cert", "--tls-ca"]),
        (["check", "--token", "t", "--account", "A", "--symbol", "S", "--side", "buy", "--qty", "1",
          "--tls-ca", str(tls_files.ca), "--tls-client-cert", str(tls_files.client_cert),
          "--tls-client-key", str(tls_files.server_key)], ["--tls-client-key", "does not match"]),
        (["watchdogs", "run", "--config", str(EXAMPLE_WATCHDOGS), "--tls-ca", str(tmp_path / "ca-missing.pem")],
         ["--tls-ca", "ca-missing.pem", "cannot read"]),
        (["watchdogs", "run", "--config", str(tmp_path / "missing.toml")], ["missing.toml", "cannot read"]),
        # the adapters as processes of their own take the same client flags
        (["fix", "run", "--config", str(fix_config), "--data-dir", str(tmp_path / "d"),
          "--tls-ca", str(tmp_path / "ca-missing.pem")], ["--tls-ca", "ca-missing.pem", "cannot read"]),
        (["fix", "run", "--config", str(fix_config), "--data-dir", str(tmp_path / "d"),
          "--tls-client-cert", str(tls_files.client_cert)], ["--tls-client-cert", "needs --tls-ca"]),
        (["mt5", "run", "--config", str(mt5_config), "--data-dir", str(tmp_path / "d"),
          "--tls-ca", str(tls_files.ca), "--tls-client-cert", str(tls_files.client_cert)],
         ["--tls-client-cert", "needs --tls-client-key"]),
        (["mt5", "run", "--config", str(mt5_config), "--data-dir", str(tmp_path / "d"),
          "--tls-ca", str(not_pem)], ["--tls-ca", "junk.pem", "not a PEM certificate"]),
        # the standalone ledger's --listen takes the same server flags as the gateway
        ([*ledger_run, "--listen", "127.0.0.1:0", "--tls-cert", cert], ["--tls-cert", "--tls-key"]),
        ([*ledger_run, "--listen", "127.0.0.1:0", "--tls-client-ca", cert], ["--tls-client-ca", "--tls-cert"]),
        ([*ledger_run, "--listen", "127.0.0.1:0", "--tls-cert", cert, "--tls-key", str(tls_files.client_key)],
         ["--tls-key", "client-key.pem", "does not match"]),
        ([*ledger_run, "--listen", "127.0.0.1:0", "--tls-cert", cert, "--tls-key", key,
          "--tls-client-ca", str(tmp_path / "nope.pem")], ["--tls-client-ca", "nope.pem", "cannot read"]),
        ([*ledger_run, "--tls-cert", cert, "--tls-key", key], ["--tls-cert", "needs --listen"]),
    ]
    for argv, words in cases:
        code, _, err = run(capsys, *argv)
        assert code == EXIT_ERROR, argv
        assert_one_error_line(err, *words)
    assert not (tmp_path / "d").exists()  # refused before anything started


async def _mt5_check(port: int) -> dict:
    terminal = await Terminal.connect(port)
    try:
        return await terminal.check("mt5-tls-1", symbol="AAPL.m", volume=2.0, price=100.02)
    finally:
        await terminal.close()


@pytest.mark.integration
def test_up_with_mutual_tls_and_check_with_tls_flags(tmp_path, capsys, tls_files):
    """`pretrade check --tls-*` against `up` with mutual TLS; `up`'s companions (here the
    MT5 bridge) reach the gateway through the companion socket."""
    rules = write_rules(tmp_path, EXAMPLE_RULES.read_text())
    data_dir = tmp_path / "data"
    mt5_port = free_port()
    mt5_config = tmp_path / "bridge.toml"
    mt5_config.write_text(
        f'[bridge]\nlisten = "127.0.0.1:{mt5_port}"\ntarget = "127.0.0.1:1"\n'
        'token_env = "PRETRADE_TEST_NO_SUCH_VARIABLE"\n'
        '[symbols."AAPL.m"]\ngateway_symbol = "AAPL"\ndigits = 2\ncontract_size = 1\nvolume_step = "1"\n'
    )
    up = UpProcess(["up", "--rules", str(rules), "--data-dir", str(data_dir), "--listen", "127.0.0.1:0",
                    "--mt5-config", str(mt5_config),
                    "--metrics-listen", "off", "--tls-cert", str(tls_files.server_cert),
                    "--tls-key", str(tls_files.server_key), "--tls-client-ca", str(tls_files.ca)],
                   tmp_path / "up.stderr")
    try:
        banner = up.read_until("Ctrl-C stops", UP_START_TIMEOUT_S)
        text = "\n".join(banner)
        assert "(mutual TLS)" in text
        check_line = next(line.strip() for line in banner if line.strip().startswith("pretrade check "))
        grpcurl_line = next(line.strip() for line in banner if line.strip().startswith("grpcurl "))
        assert "--tls-ca CA.pem --tls-client-cert CLIENT.pem" in check_line
        assert "-cacert CA.pem -cert CLIENT.pem" in grpcurl_line and "-plaintext" not in grpcurl_line
        target = re.search(r"listening on (\S+)", text).group(1)
        token, account, symbol, quantity = (
            re.search(rf"--{flag} (\S+)", check_line).group(1) for flag in ("token", "account", "symbol", "qty")
        )
        order = ["check", "--target", target, "--token", token, "--account", account, "--symbol", symbol,
                 "--side", "buy", "--qty", quantity, "--price", "100", "--reference-price", "100", "--timeout", "20"]
        tls = ["--tls-ca", str(tls_files.ca), "--tls-client-cert", str(tls_files.client_cert),
               "--tls-client-key", str(tls_files.client_key)]
        code = main([*order, *tls])
        captured = capsys.readouterr()
        assert code == EXIT_OK, captured
        assert captured.out.startswith("ACCEPT ")
        code, _, err = run(capsys, *order)  # plaintext: refused
        assert code == EXIT_ERROR
        assert_one_error_line(err, "GatewayUnavailable")
        code, _, err = run(capsys, *order, "--tls-ca", str(tls_files.ca))  # no client certificate
        assert code == EXIT_ERROR
        assert_one_error_line(err, "GatewayUnavailable")
        operator = next(line.split()[2] for line in (data_dir / "demo-tokens.txt").read_text().splitlines()
                        if line.startswith("alice "))
        code, out, err = run(capsys, "halts", "--target", target, "--token", operator, "--json", *tls)
        assert code == EXIT_OK, err  # the halt commands take the same flags
        assert stat.S_ISSOCK(os.stat(data_dir / "gateway.sock").st_mode)  # the companions' way in
        with GatewayClient(f"unix:{data_dir / 'gateway.sock'}", token, 20) as companion:
            via_socket = make_order(account=account, symbol=symbol, side="buy", quantity=quantity, price="101")
            assert companion.check_order(via_socket).verdict == types_pb2.VERDICT_ACCEPT
            companion.update_reference_prices([make_reference_price("AAPL", "100")])
        reply = asyncio.run(_mt5_check(mt5_port))  # the MT5 bridge, a companion, through the socket
        assert reply["verdict"] == "accept" and reply["sequence"] > 0, reply
    finally:
        exit_code = up.stop(UP_STOP_TIMEOUT_S)
    stderr = (tmp_path / "up.stderr").read_text()
    assert exit_code == EXIT_OK, stderr
    assert "Traceback" not in stderr
    assert not (data_dir / "gateway.sock").exists()


async def test_a_watchdog_asks_a_mutual_tls_gateway_for_a_halt(tmp_path, tls_files):
    """``pretrade watchdogs run --tls-ca ...`` on its own host: the worker's halt requests go
    over mutual TLS (``HaltRequester(credentials=...)``), and the halt is in force."""
    with_cert = tls_credentials(str(tls_files.ca), str(tls_files.client_cert), str(tls_files.client_key))
    async with running_gateway(tmp_path / "gw", credentials=with_cert, tls_cert_path=str(tls_files.server_cert),
                               tls_key_path=str(tls_files.server_key), tls_client_ca_path=str(tls_files.ca),
                               host_halt_manager=True) as gateway:
        await gateway.set_reference_prices()
        finding = Finding(watchdog="order_rate", target=Target(ScopeKind.SYMBOL, "AAPL"), action=Action.HALT,
                          observed=2.0, limit=1.0, message="test", event_ns=1, breach_started_ns=1, consecutive=1)
        plaintext = HaltRequester(gateway.target, gateway.tokens["watchdog:default"], WatchdogMetrics(), 5.0)
        secure = HaltRequester(gateway.target, gateway.tokens["watchdog:default"], WatchdogMetrics(), 5.0,
                               credentials=with_cert)
        try:
            assert await plaintext.act(finding, "0.5", 60) == "unavailable"
            assert await secure.act(finding, "0.5", 60) == "ok"
        finally:
            await plaintext.close()
            await secure.close()
        async with gateway.client("trader") as trader:
            await wait_until_halted(trader)


async def wait_until_halted(trader, timeout_s: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        decision = await trader.check_order(_order(f"after-halt-{asyncio.get_running_loop().time()}"))
        if [failure.code for failure in decision.failures] == ["TRADING_HALTED"]:
            return
        assert asyncio.get_running_loop().time() < deadline, f"no halt in force: {decision}"
        await asyncio.sleep(0.05)
