"""The language-neutral examples against a real gateway: examples/oms_sidecar.py (the SDK
as an OMS sidecar, run as its own process) and examples/node_client (CheckOrder from
Node.js with @grpc/grpc-js, its packages installed with `npm ci` into tmp_path)."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sys
from pathlib import Path

import pytest

from tests.clients.gateway_harness import running_gateway

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
SIDECAR = ROOT / "examples" / "oms_sidecar.py"
NODE_CLIENT = ROOT / "examples" / "node_client"
PROCESS_TIMEOUT_S = 60
NPM_TIMEOUT_S = 240


async def _run(*command, stdin: bytes = b"", env=None, cwd=None, timeout_s=PROCESS_TIMEOUT_S):
    process = await asyncio.create_subprocess_exec(
        *command,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, **(env or {})},
        cwd=cwd or ROOT,
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(stdin), timeout_s)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    return process.returncode, out.decode(), err.decode()


async def test_oms_sidecar_checks_orders_and_reports_fills(tmp_path):
    async with running_gateway(tmp_path / "gw") as gateway:
        lines = [
            {"op": "price", "symbol": "AAPL", "price": "100"},
            {"op": "check", "account": "ACC1", "symbol": "AAPL", "side": "buy", "qty": "10", "price": "100.01",
             "client_order_id": "oms-1"},
            {"op": "check", "account": "ACC1", "symbol": "AAPL", "side": "buy", "qty": "5000", "price": "100",
             "client_order_id": "oms-2"},
            {"op": "execution", "account": "ACC1", "client_order_id": "oms-1", "type": "fill", "qty": "10",
             "price": "100.01", "execution_id": "X1"},
            {"op": "execution", "account": "ACC1", "client_order_id": "oms-1", "type": "fill", "qty": "10",
             "price": "100.01", "execution_id": "X1"},
            {"op": "check", "account": "ACC1", "symbol": "AAPL", "side": "buy", "qty": "0.1", "price": "100",
             "client_order_id": "oms-3"},
        ]
        stdin = "".join(json.dumps(line) + "\n" for line in lines).encode()
        code, out, err = await _run(
            sys.executable, str(SIDECAR), "--target", gateway.target, stdin=stdin,
            env={"PRETRADE_TOKEN": gateway.tokens["trader"]},
        )
    assert code == 0, err
    replies = [json.loads(line) for line in out.splitlines()]
    assert replies[0] == {"op": "price", "applied": 1}
    assert replies[1]["route"] is True and replies[1]["client_order_id"] == "oms-1" and replies[1]["sequence"] > 0
    assert replies[2]["route"] is False and any(r.startswith("MAX_ORDER_QTY_EXCEEDED") for r in replies[2]["reasons"])
    assert replies[3] == {"op": "execution", "client_order_id": "oms-1", "status": "APPLIED"}
    assert replies[4]["status"] == "DUPLICATE"
    assert replies[5]["route"] is False and any("QUANTITY_OFF_LOT" in r for r in replies[5]["reasons"])


@pytest.fixture(scope="module")
def node_modules(tmp_path_factory):
    """@grpc/grpc-js and @grpc/proto-loader installed from package-lock.json (npm ci)."""
    directory = tmp_path_factory.mktemp("node_client")
    for name in ("package.json", "package-lock.json"):
        shutil.copy(NODE_CLIENT / name, directory / name)
    code, out, err = asyncio.run(
        _run("npm", "ci", "--no-audit", "--no-fund", "--ignore-scripts", cwd=directory, timeout_s=NPM_TIMEOUT_S)
    )
    assert code == 0, f"npm ci failed: {out}{err}"
    return directory / "node_modules"


async def test_node_client_calls_check_order(tmp_path, node_modules):
    async with running_gateway(tmp_path / "gw") as gateway:
        await gateway.set_reference_prices()
        base = ["node", str(NODE_CLIENT / "client.js"), "--target", gateway.target,
                "--account", "ACC1", "--symbol", "AAPL", "--side", "buy"]
        env = {"NODE_PATH": str(node_modules), "PRETRADE_TOKEN": gateway.tokens["trader"]}
        code, out, err = await _run(*base, "--qty", "10", "--price", "100.01", "--client-order-id", "node-1", env=env)
        assert code == 0, err
        decision = json.loads(out)
        assert decision["verdict"] == "VERDICT_ACCEPT" and decision["order"]["client_order_id"] == "node-1"
        assert decision["order"]["price_nanos"] == "100010000000" and int(decision["sequence"]) > 0
        code, out, err = await _run(*base, "--qty", "5000", "--price", "100", env=env)
        assert code == 1, err
        assert "MAX_ORDER_QTY_EXCEEDED" in [f["code"] for f in json.loads(out)["failures"]]
        code, _, err = await _run(*base, "--qty", "1", "--price", "100", env={**env, "PRETRADE_TOKEN": "wrong"})
        assert code == 2 and "UNAUTHENTICATED" in err
