"""A gateway with halts, assembled in-process the way ``pretrade up`` is to wire it.

Engine, decision outbox and publisher, order gate and GatewayService, HaltService with its
manager, and a HaltFollower whose hooks reload the rules with overrides and broadcast
CANCEL_ALL to the open order streams; one ``grpc.aio`` server on 127.0.0.1:0 whose auth
interceptor admits ``HALT_METHOD_ROLES``. Used by the end-to-end tests and by
``bench/bench_halts.py``: ``python -m tests.halts.harness NATS_URL DATA_DIR`` runs it as
a process of its own on uvloop, as ``pretrade up`` does (what the benchmark measures: in one
process the client and the gateway would take turns on the GIL in 5 ms slices), printing
``{"target": ..., "tokens": {...}}`` on one line once it serves and stopping when its stdin
closes.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import grpc
import nats

from fastpath.engine import Engine
from fastpath.rules import load_rules
from gateway.auth import (
    DEFAULT_METHOD_ROLES,
    AuthInterceptor,
    Principal,
    TokenStore,
    generate_token,
    token_sha256,
)
from gateway.outbox import DecisionOutbox
from gateway.publisher import DecisionPublisher
from gateway.server import add_gateway_service
from gateway.servicer import GatewayServicer, OrderGate
from halts.follower import HaltFollower
from halts.manager import HaltManager
from halts.servicer import HALT_METHOD_ROLES, add_halt_service
from halts.store import HaltStore

EXAMPLE_RULES = Path(__file__).resolve().parents[2] / "examples" / "rules.toml"
GATEWAY_ID = "gw-halts"
#: name -> roles of the principals the test gateway admits.
PRINCIPALS = {
    "trader": ("trader",),
    "alice": ("operator",),
    "bob": ("operator",),
    "admin": ("admin",),
    "watchdog:pnl": ("operator",),
}

try:  # prefer the compiled kernel
    from fastpath.kernel import Kernel as KERNEL_CLASS
except ImportError:  # pragma: no cover - only on a broken build
    from fastpath.reference import ReferenceKernel as KERNEL_CLASS


class InProcessGateway:
    """See the module docstring. ``await start()`` returns once the follower has loaded the
    halt state (the point at which the gateway would turn health SERVING)."""

    def __init__(
        self,
        data_dir: Path,
        nats_url: str,
        *,
        gateway_id: str = GATEWAY_ID,
        follower_options: dict | None = None,
        manager_options: dict | None = None,
    ) -> None:
        self.data_dir = data_dir
        self.nats_url = nats_url
        self.gateway_id = gateway_id
        self.follower_options = follower_options or {}
        self.manager_options = manager_options or {}
        self.tokens = {name: generate_token() for name in PRINCIPALS}
        self.engine = Engine(load_rules(EXAMPLE_RULES), kernel_class=KERNEL_CLASS)
        self.port = 0
        self.gateway_servicer: GatewayServicer | None = None
        self.manager: HaltManager | None = None
        self.follower: HaltFollower | None = None
        self._outbox: DecisionOutbox | None = None
        self._publisher: DecisionPublisher | None = None
        self._server: grpc.aio.Server | None = None
        self._connections: list = []

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def metadata(self, name: str) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.tokens[name]}"),)

    def reload_rules(self, overrides) -> None:
        self.engine.reload(load_rules(EXAMPLE_RULES, self.engine.interner, overrides))

    async def start(self) -> None:
        self._outbox = DecisionOutbox(self.data_dir / "outbox")
        self._publisher = DecisionPublisher(self._outbox, self.gateway_id)
        gate = OrderGate(self.engine, self._outbox, self._publisher, self.gateway_id)
        self.gateway_servicer = GatewayServicer(gate)

        manager_nc = await self._connect("pretrade-halt-manager")
        follower_nc = await self._connect("pretrade-halt-follower")
        self.manager = HaltManager(await HaltStore.open(manager_nc), **self.manager_options)
        self.follower = HaltFollower(
            follower_nc,
            self.engine,
            gateway_id=self.gateway_id,
            reload_rules=self.reload_rules,
            on_cancel_all=self.gateway_servicer.broadcast_control,
            **self.follower_options,
        )

        store = TokenStore(
            {
                token_sha256(self.tokens[name]): Principal(name, frozenset(roles))
                for name, roles in PRINCIPALS.items()
            }
        )
        self._server = grpc.aio.server(
            interceptors=[AuthInterceptor(store, {**DEFAULT_METHOD_ROLES, **HALT_METHOD_ROLES})]
        )
        add_gateway_service(self.gateway_servicer, self._server)
        add_halt_service(self._server, self.manager)
        self.port = self._server.add_insecure_port("127.0.0.1:0")
        await self._server.start()
        await self._publisher.start(self.nats_url)
        await self.manager.start()
        await self.follower.start()

    async def _connect(self, name: str):
        nc = await nats.connect(
            self.nats_url,
            name=name,
            allow_reconnect=True,
            max_reconnect_attempts=-1,
            reconnect_time_wait=0.05,
        )
        self._connections.append(nc)
        return nc

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.stop(0.5)
        if self.follower is not None:
            await self.follower.stop()
        if self.manager is not None:
            await self.manager.stop()
        if self._publisher is not None:
            await self._publisher.stop(1.0)
        for nc in self._connections:
            await nc.close()
        if self._outbox is not None:
            self._outbox.close()


async def _serve_until_stdin_closes(nats_url: str, data_dir: Path) -> None:
    gateway = InProcessGateway(data_dir, nats_url)
    await gateway.start()
    try:
        print(json.dumps({"target": gateway.target, "tokens": gateway.tokens}), flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    finally:
        await gateway.stop()


if __name__ == "__main__":
    import uvloop

    uvloop.run(_serve_until_stdin_closes(sys.argv[1], Path(sys.argv[2])))
