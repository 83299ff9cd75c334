"""``pretrade ledger run --listen`` with ``--tls-cert``/``--tls-key`` (and ``--tls-client-ca``):
the standalone LedgerService serves TLS / mutual TLS as the gateway's port does. A real
``ledger run`` process on a real nats-server, real gRPC over loopback with a throwaway CA
(tests/gateway/tls_material.py), called by ``pretrade ledger proof|explain --target``."""

from __future__ import annotations

import json

import pytest

from gateway.auth import ensure_demo_tokens
from ledger.cli import EXIT_ERROR, EXIT_OK
from tests.gateway.tls_material import make_tls_files
from tests.ledger.test_cli import data_dir, run  # noqa: F401 - data_dir is a fixture: a signed ledger
from tests.ledger.test_metrics import LedgerProcess

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory):
    return make_tls_files(tmp_path_factory.mktemp("tls"))


async def _serving(ledger_dir, nats_server, *tls_flags) -> LedgerProcess:
    process = LedgerProcess(ledger_dir, nats_server.url, "--origin", "cli.test/ledger", "--listen", "127.0.0.1:0",
                            "--metrics-listen", "off", *tls_flags)
    await process.start()
    return process


def _target(process: LedgerProcess, token: str) -> list[str]:
    return ["--target", process.info["listen"], "--token", token]


async def test_ledger_listen_with_tls_answers_clients_that_trust_its_ca(data_dir, nats_server, tls_files,  # noqa: F811
                                                                         capsys):
    token = ensure_demo_tokens(data_dir).tokens["trader"]
    process = await _serving(data_dir, nats_server, "--tls-cert", tls_files.server_cert,
                             "--tls-key", tls_files.server_key)
    try:
        assert process.info["tls"] is True and process.info["mutual_tls"] is False
        target = _target(process, token)
        code, out, err = run(capsys, "proof", *target, "--seq", "3", "--json", "--tls-ca", tls_files.ca)
        assert code == EXIT_OK, err
        assert json.loads(out)["index"] == 3 and json.loads(out)["tree_size"] > 3
        code, out, err = run(capsys, "explain", *target, "--account", "ACC1", "--client-order-id", "cl-1",
                             "--tls-ca", tls_files.ca)
        assert code == EXIT_OK, err
        assert out.startswith("order ACC1/cl-1"), out
        code, _, err = run(capsys, "proof", *target, "--seq", "3")  # plaintext: refused
        assert code == EXIT_ERROR and err.count("\n") == 1 and "GatewayUnavailable" in err, err
        code, _, err = run(capsys, "proof", *target, "--seq", "3", "--tls-ca", tls_files.other_ca)  # other CA
        assert code == EXIT_ERROR and "GatewayUnavailable" in err, err
    finally:
        assert await process.stop() == EXIT_OK


async def test_ledger_listen_with_mutual_tls_requires_a_client_certificate(data_dir, nats_server,  # noqa: F811
                                                                            tls_files, capsys):
    token = ensure_demo_tokens(data_dir).tokens["trader"]
    process = await _serving(data_dir, nats_server, "--tls-cert", tls_files.server_cert,
                             "--tls-key", tls_files.server_key, "--tls-client-ca", tls_files.ca)
    try:
        assert process.info["mutual_tls"] is True
        target = _target(process, token)
        with_cert = ["--tls-ca", tls_files.ca, "--tls-client-cert", tls_files.client_cert,
                     "--tls-client-key", tls_files.client_key]
        code, out, err = run(capsys, "proof", *target, "--seq", "3", *with_cert)
        assert code == EXIT_OK, err
        code, _, err = run(capsys, "proof", *target, "--seq", "3", "--tls-ca", tls_files.ca)  # no certificate
        assert code == EXIT_ERROR and err.count("\n") == 1 and "GatewayUnavailable" in err, err
        stranger = ["--tls-ca", tls_files.ca, "--tls-client-cert", tls_files.other_client_cert,
                    "--tls-client-key", tls_files.other_client_key]
        code, _, err = run(capsys, "proof", *target, "--seq", "3", *stranger)  # signed by another CA
        assert code == EXIT_ERROR and "GatewayUnavailable" in err, err
    finally:
        assert await process.stop() == EXIT_OK


async def test_ledger_listen_without_tls_flags_stays_plaintext(data_dir, nats_server, capsys):  # noqa: F811
    token = ensure_demo_tokens(data_dir).tokens["trader"]
    process = await _serving(data_dir, nats_server)
    try:
        assert process.info["tls"] is False
        code, _, err = run(capsys, "proof", *_target(process, token), "--seq", "3")
        assert code == EXIT_OK, err
    finally:
        assert await process.stop() == EXIT_OK
