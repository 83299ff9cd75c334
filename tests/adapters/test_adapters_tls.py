"""The adapters as processes of their own (``pretrade fix run``, ``pretrade mt5 run``) reach a
gateway with mutual TLS: real gRPC over loopback with a throwaway CA
(tests/gateway/tls_material.py). The adapters' configurations are built as the commands
build them (``build_config`` of the parsed command line: the file's ``tls_*`` keys, the
``--tls-*`` flags over them); without a client certificate the gateway refuses them and
the orders are rejected in time (fail closed)."""

from __future__ import annotations

import pytest

from clients import tls_credentials
from clients.adapters.fix import cli as fix_cli
from clients.adapters.fix.config import FixConfigError, load_fix_config
from clients.adapters.mt5 import Mt5Bridge, load_config
from clients.adapters.mt5 import cli as mt5_cli
from clients.adapters.mt5.config import ConfigError
from gateway.cli import build_parser
from tests.adapters.test_fix_adapter import nos, world_on
from tests.adapters.test_mt5_bridge import SYMBOLS, Terminal
from tests.clients.gateway_harness import running_gateway
from tests.gateway.tls_material import make_tls_files

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory):
    return make_tls_files(tmp_path_factory.mktemp("tls"))


def _gateway(tmp_path, tls_files):
    """A gateway whose port requires a client certificate signed by the test CA."""
    with_cert = tls_credentials(str(tls_files.ca), str(tls_files.client_cert), str(tls_files.client_key))
    return running_gateway(tmp_path / "gw", credentials=with_cert, tls_cert_path=str(tls_files.server_cert),
                           tls_key_path=str(tls_files.server_key), tls_client_ca_path=str(tls_files.ca))


def _client_flags(tls_files, client_certificate: bool = True) -> list[str]:
    flags = ["--tls-ca", str(tls_files.ca)]
    if client_certificate:
        flags += ["--tls-client-cert", str(tls_files.client_cert), "--tls-client-key", str(tls_files.client_key)]
    return flags


def _command_line(*argv: str):
    return build_parser().parse_args([str(argument) for argument in argv])


# -- FIX ------------------------------------------------------------------------------------------


def _fix_run(tmp_path, flags):
    """``load`` for world_on: the configuration ``pretrade fix run --config FILE FLAGS`` runs."""
    return lambda path: fix_cli.build_config(
        _command_line("fix", "run", "--config", path, "--data-dir", tmp_path / "data", *flags)
    )


async def test_fix_run_reaches_a_mutual_tls_gateway_with_the_tls_flags(tmp_path, tls_files):
    async with _gateway(tmp_path, tls_files) as gateway:
        await gateway.set_reference_prices()
        async with world_on(tmp_path, gateway, load=_fix_run(tmp_path, _client_flags(tls_files))) as world:
            world.client.send("D", nos("TLS1"))
            sent = await world.venue.next("D")
            assert sent[11] == "TLS1"  # accepted by the gateway, on to the venue
            ack = await world.client.next("8")
            assert (ack[11], ack[150], ack[39]) == ("TLS1", "0", "0")


async def test_fix_run_without_a_client_certificate_is_refused_and_rejects_in_time(tmp_path, tls_files):
    async with _gateway(tmp_path, tls_files) as gateway:
        await gateway.set_reference_prices()
        flags = _client_flags(tls_files, client_certificate=False)
        async with world_on(tmp_path, gateway, load=_fix_run(tmp_path, flags)) as world:
            world.client.send("D", nos("TLS2"))
            report = await world.client.next("8")
            assert (report[11], report[150], report[39]) == ("TLS2", "8", "8")
            assert report[58].startswith("GATEWAY_UNAVAILABLE"), report[58]


def test_fix_config_tls_keys_are_relative_to_the_file_and_checked(tmp_path, tls_files):
    (tmp_path / "ca.pem").write_bytes(tls_files.ca.read_bytes())
    fix = '[fix]\nacceptor = "a.cfg"\ninitiator = "i.cfg"\n'
    path = tmp_path / "adapter.toml"
    path.write_text(f'[gateway]\ntoken = "t"\ntls_ca = "ca.pem"\n{fix}')
    assert load_fix_config(path).credentials is not None
    path.write_text(f'[gateway]\ntoken = "t"\n{fix}')
    assert load_fix_config(path).credentials is None  # plaintext
    path.write_text(f'[gateway]\ntls_client_cert = "{tls_files.client_cert}"\n{fix}')
    with pytest.raises(FixConfigError) as failure:
        load_fix_config(path)
    message = str(failure.value)
    assert "\n" not in message and "adapter.toml" in message
    assert "gateway.tls_client_cert" in message and "needs gateway.tls_ca" in message


# -- MT5 ------------------------------------------------------------------------------------------


def _bridge_file(tmp_path, gateway, **bridge) -> str:
    """A bridge configuration file for ``gateway`` (its symbols: tests/adapters/test_mt5_bridge.py)."""
    lines = ["[bridge]", 'listen = "127.0.0.1:0"', f'target = "{gateway.target}"',
             f'token = "{gateway.tokens["trader"]}"', "decision_timeout_ms = 5000"]
    lines += [f'{key} = "{value}"' for key, value in bridge.items()]
    for name, spec in SYMBOLS.items():
        lines.append(f'[symbols."{name}"]')
        lines += [f"{key} = {value!r}".replace("'", '"') for key, value in spec.items()]
    path = tmp_path / "bridge.toml"
    path.write_text("\n".join(lines) + "\n")
    return str(path)


async def _check(bridge: Mt5Bridge, client_order_id: str) -> dict:
    await bridge.start()
    terminal = await Terminal.connect(bridge.port)
    try:
        return await terminal.check(client_order_id, symbol="AAPL.m", volume=2.0, price=100.02)
    finally:
        await terminal.close()
        await bridge.stop()


async def test_mt5_run_reaches_a_mutual_tls_gateway_from_its_file_and_flags(tmp_path, tls_files):
    async with _gateway(tmp_path, tls_files) as gateway:
        await gateway.set_reference_prices()
        config_path = _bridge_file(tmp_path, gateway, tls_ca=tls_files.ca)  # the file: TLS, no client certificate
        refused = await _check(Mt5Bridge(load_config(config_path)), "mt5-tls-refused")
        assert refused["verdict"] == "reject" and refused["sequence"] == 0, refused
        assert refused["failures"][0]["code"] == "GATEWAY_UNAVAILABLE", refused
        # `pretrade mt5 run --config FILE --tls-ca ... --tls-client-cert ... --tls-client-key ...`
        args = _command_line("mt5", "run", "--config", config_path, "--data-dir", tmp_path / "data",
                             *_client_flags(tls_files))
        accepted = await _check(Mt5Bridge(mt5_cli.build_config(args)), "mt5-tls-1")
        assert accepted["verdict"] == "accept" and accepted["sequence"] > 0, accepted


def test_mt5_config_tls_errors_name_the_key_and_file(tmp_path):
    path = tmp_path / "bridge.toml"
    path.write_text('[bridge]\ntoken = "t"\ntls_ca = "missing-ca.pem"\n[symbols.X]\ndigits = 2\n')
    with pytest.raises(ConfigError) as failure:
        load_config(path)
    message = str(failure.value)
    assert "\n" not in message
    assert "bridge.tls_ca" in message and str(tmp_path / "missing-ca.pem") in message and "cannot read" in message
