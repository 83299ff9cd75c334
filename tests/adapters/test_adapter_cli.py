"""``pretrade fix run`` / ``pretrade mt5 run``: the flags of their ``--help`` are the flags they
use. ``--target`` and ``--token``, when given in any form argparse accepts (``--target X``,
``--target=X``, an abbreviation, an explicit argv list), replace the file's; absent, the file's
stay. Parsed by the ``pretrade`` parser (``gateway.cli``); the integration tests reach a real
gateway over gRPC through ``--target`` while the file names an unused port."""

from __future__ import annotations

import pytest

from clients.adapters.fix import cli as fix_cli
from clients.adapters.mt5 import Mt5Bridge
from clients.adapters.mt5 import cli as mt5_cli
from gateway.cli import EXIT_ERROR, EXIT_OK, build_parser, main
from tests.adapters.test_adapters_tls import _bridge_file, _check
from tests.adapters.test_fix_adapter import free_port, nos, world_on
from tests.clients.gateway_harness import running_gateway

FILE_TARGET = "127.0.0.1:1"
FLAG_TARGET = "10.9.8.7:5000"


def _command_line(*argv) -> object:
    return build_parser().parse_args([str(argument) for argument in argv])


def _fix_file(tmp_path) -> str:
    path = tmp_path / "adapter.toml"
    path.write_text(f'[gateway]\ntarget = "{FILE_TARGET}"\ntoken = "file-token"\n'
                    '[fix]\nacceptor = "a.cfg"\ninitiator = "i.cfg"\n')
    return str(path)


def _mt5_file(tmp_path) -> str:
    path = tmp_path / "bridge.toml"
    path.write_text(f'[bridge]\ntarget = "{FILE_TARGET}"\ntoken = "file-token"\n[symbols.X]\ndigits = 2\n')
    return str(path)


ADAPTERS = {"fix": (_fix_file, fix_cli.build_config), "mt5": (_mt5_file, mt5_cli.build_config)}


@pytest.mark.parametrize("adapter", sorted(ADAPTERS))
@pytest.mark.parametrize(
    "flags",
    [("--target", FLAG_TARGET), (f"--target={FLAG_TARGET}",), ("--targ", FLAG_TARGET)],
    ids=["separate", "equals", "abbreviated"],
)
def test_target_flag_replaces_the_files_target(tmp_path, adapter, flags):
    write_file, build_config = ADAPTERS[adapter]
    args = _command_line(adapter, "run", "--config", write_file(tmp_path), "--data-dir", tmp_path / "d", *flags)
    assert build_config(args).target == FLAG_TARGET


@pytest.mark.parametrize("adapter", sorted(ADAPTERS))
def test_without_flags_the_files_target_and_token_stay(tmp_path, adapter):
    write_file, build_config = ADAPTERS[adapter]
    config = build_config(_command_line(adapter, "run", "--config", write_file(tmp_path), "--data-dir", tmp_path / "d"))
    assert (config.target, config.token) == (FILE_TARGET, "file-token")
    args = _command_line(adapter, "run", "--config", write_file(tmp_path), "--data-dir", tmp_path / "d",
                         "--token=flag-token")
    assert build_config(args).token == "flag-token"


@pytest.mark.parametrize(("adapter", "section"), [("fix", "gateway"), ("mt5", "bridge")])
def test_help_offers_the_flags_run_uses_and_no_json(capsys, adapter, section):
    code = main([adapter, "run", "--help"])
    out = capsys.readouterr().out
    assert code == EXIT_OK
    assert f"the file's {section}.target" in " ".join(out.split())
    for flag in ("--target", "--token", "--data-dir", "--tls-ca", "--tls-client-cert", "--tls-client-key"):
        assert flag in out, flag
    assert "--json" not in out  # the adapters print nothing to format
    code = main([adapter, "run", "--config", "x.toml", "--json"])
    assert code == EXIT_ERROR and "unrecognized arguments: --json" in capsys.readouterr().err


# -- against a real gateway ---------------------------------------------------------------------


@pytest.mark.integration
@pytest.mark.timeout(90)
async def test_fix_run_target_flag_reaches_that_gateway_not_the_files(tmp_path):
    async with running_gateway(tmp_path / "gw") as gateway:
        await gateway.set_reference_prices()

        def load(path):
            """The file world_on wrote, pointed at an unused port; --target at the gateway."""
            path.write_text(path.read_text().replace(gateway.target, f"127.0.0.1:{free_port()}"))
            return fix_cli.build_config(_command_line("fix", "run", "--config", path, "--data-dir", tmp_path / "data",
                                                      "--target", gateway.target))

        async with world_on(tmp_path, gateway, load=load) as world:
            world.client.send("D", nos("TGT1"))
            sent = await world.venue.next("D")
            assert sent[11] == "TGT1"  # accepted by the gateway of --target, on to the venue


@pytest.mark.integration
@pytest.mark.timeout(90)
async def test_mt5_run_target_equals_form_reaches_that_gateway_not_the_files(tmp_path):
    async with running_gateway(tmp_path / "gw") as gateway:
        await gateway.set_reference_prices()
        config_path = _bridge_file(tmp_path, gateway)
        unused = f"127.0.0.1:{free_port()}"
        with open(config_path) as file:
            text = file.read()
        with open(config_path, "w") as file:
            file.write(text.replace(gateway.target, unused))
        args = _command_line("mt5", "run", "--config", config_path, "--data-dir", tmp_path / "data",
                             f"--target={gateway.target}")
        accepted = await _check(Mt5Bridge(mt5_cli.build_config(args)), "mt5-target-1")
        assert accepted["verdict"] == "accept" and accepted["sequence"] > 0, accepted
