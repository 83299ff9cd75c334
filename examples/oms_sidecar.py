#!/usr/bin/env python3
"""An OMS/EMS sidecar on the pretrade SDK: the OMS hands it each order before routing and
each venue execution after, one JSON object per line on stdin; the sidecar answers one JSON
line per input on stdout.

    {"op": "check", "account": "ACC1", "symbol": "AAPL", "side": "buy", "qty": "100", "price": "189.12",
     "client_order_id": "oms-1"}
      -> {"op": "decision", "client_order_id": "oms-1", "route": true, "sequence": 7, "reasons": []}
    {"op": "execution", "account": "ACC1", "client_order_id": "oms-1", "type": "fill",
     "qty": "100", "price": "189.10", "execution_id": "X1"}
      -> {"op": "execution", "client_order_id": "oms-1", "status": "APPLIED"}
    {"op": "price", "symbol": "AAPL", "price": "189.00"}        (reference price, demos without NATS)
      -> {"op": "price", "applied": 1}

Values are decimal strings (never floats): the SDK converts them exactly. A gateway that
cannot be reached yields ``"route": false`` (fail closed) with the error as the reason.

    PRETRADE_TOKEN=... python examples/oms_sidecar.py --target 127.0.0.1:50051 < orders.jsonl
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys

from clients import AsyncGatewayClient, GatewayError, make_execution, make_order, make_reference_price
from pretrade.v1 import types_pb2


class OmsSidecar:
    """The pre-trade hook of an OMS: ``check`` before routing, ``execution`` after."""

    def __init__(self, client: AsyncGatewayClient) -> None:
        self.client = client

    async def check(self, message: dict) -> dict:
        client_order_id = message.get("client_order_id")
        try:
            order = make_order(
                account=message["account"],
                symbol=message["symbol"],
                side=message["side"],
                quantity=message["qty"],
                price=message.get("price"),
                strategy=message.get("strategy", ""),
                client_order_id=client_order_id,
                request_id=message.get("request_id", ""),
            )
            decision = await self.client.check_order(order)
        except GatewayError as exc:  # includes InvalidOrder: never route what was not checked
            return {"op": "decision", "client_order_id": client_order_id, "route": False, "sequence": 0,
                    "reasons": [f"{type(exc).__name__}: {exc.message}"]}
        return {
            "op": "decision",
            "client_order_id": decision.order.client_order_id,
            "route": decision.verdict == types_pb2.VERDICT_ACCEPT,
            "sequence": decision.sequence,
            "reasons": [f"{failure.code}: {failure.detail}" for failure in decision.failures],
        }

    async def execution(self, message: dict) -> dict:
        execution = make_execution(
            account=message["account"],
            client_order_id=message["client_order_id"],
            execution_type=message["type"],
            execution_id=message["execution_id"],
            last_quantity=message.get("qty", 0),
            last_price=message.get("price", 0),
        )
        (result,) = await self.client.report_executions([execution])
        return {
            "op": "execution",
            "client_order_id": result.client_order_id,
            "status": types_pb2.ExecutionStatus.Name(result.status).removeprefix("EXECUTION_STATUS_"),
        }

    async def price(self, message: dict) -> dict:
        response = await self.client.update_reference_prices(
            [make_reference_price(message["symbol"], message["price"])]
        )
        return {"op": "price", "applied": response.applied}

    async def handle(self, message: dict) -> dict:
        handler = {"check": self.check, "execution": self.execution, "price": self.price}.get(message.get("op"))
        if handler is None:
            return {"op": "error", "message": f"unknown op {message.get('op')!r}"}
        try:
            return await handler(message)
        except (GatewayError, KeyError) as exc:
            return {"op": "error", "message": f"{type(exc).__name__}: {exc}"}


async def run(target: str, token: str, timeout_s: float) -> None:
    loop = asyncio.get_running_loop()
    async with AsyncGatewayClient(target, token, timeout_s) as client:
        sidecar = OmsSidecar(client)
        while line := await loop.run_in_executor(None, sys.stdin.readline):
            if not line.strip():
                continue
            try:
                reply = await sidecar.handle(json.loads(line))
            except json.JSONDecodeError as exc:
                reply = {"op": "error", "message": f"not JSON: {exc}"}
            print(json.dumps(reply), flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", default="127.0.0.1:50051")
    parser.add_argument("--token", default=os.environ.get("PRETRADE_TOKEN"))
    parser.add_argument("--timeout", type=float, default=2.0, help="seconds per call")
    args = parser.parse_args()
    if not args.token:
        parser.error("no token: pass --token or set PRETRADE_TOKEN")
    asyncio.run(run(args.target, args.token, args.timeout))
    return 0


if __name__ == "__main__":
    sys.exit(main())
