"""Fixtures of the halt tests: a real nats-server (the gateway tests' fixture), a NATS
connection, the store, a manager on a fake clock, operators and an engine on the example
rules."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import nats
import pytest

from fastpath.engine import Engine
from fastpath.reference import ReferenceKernel
from fastpath.rules import load_rules
from halts.manager import HaltManager
from halts.model import Operator
from halts.store import HaltStore
from tests.gateway.conftest import NatsServerHandle, nats_server  # noqa: F401 (the fixture)

try:  # prefer the compiled kernel; the reference evaluator when it is not built
    from fastpath.kernel import Kernel as KERNEL_CLASS
except ImportError:  # pragma: no cover - exercised only on a broken build
    KERNEL_CLASS = ReferenceKernel

EXAMPLE_RULES = Path(__file__).resolve().parents[2] / "examples" / "rules.toml"
#: A fixed time for the engine's order path (Unix epoch ns).
T0 = 1_700_000_000 * 1_000_000_000
NS_PER_S = 1_000_000_000

ALICE = Operator("alice", frozenset({"operator"}))
BOB = Operator("bob", frozenset({"operator"}))
ADMIN = Operator("admin", frozenset({"admin"}))
TRADER = Operator("trader", frozenset({"trader"}))
WATCHDOG = Operator("watchdog:pnl", frozenset({"operator"}))


class FakeClock:
    """Wall-clock ns that only moves when a test says so. It starts at the real time, so
    that records it stamps mean the same to components on the real clock."""

    def __init__(self) -> None:
        self.now_ns = time.time_ns()

    def __call__(self) -> int:
        return self.now_ns

    def advance_s(self, seconds: float) -> None:
        self.now_ns += int(seconds * NS_PER_S)


async def eventually(condition, timeout_s: float = 5.0, what: str = "the condition") -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        await asyncio.sleep(0.005)


async def connect(url: str):
    """A client that reconnects forever, as the gateway's and the manager's are."""
    return await nats.connect(
        url, allow_reconnect=True, max_reconnect_attempts=-1, reconnect_time_wait=0.05, connect_timeout=1
    )


@pytest.fixture
async def nc(nats_server: NatsServerHandle):  # noqa: F811 (the fixture imported above)
    client = await connect(nats_server.url)
    yield client
    await client.close()


@pytest.fixture
async def store(nc) -> HaltStore:
    return await HaltStore.open(nc)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def manager(store, clock) -> HaltManager:
    return HaltManager(store, clock=clock)


@pytest.fixture
def engine() -> Engine:
    return make_engine()


def make_engine() -> Engine:
    return Engine(load_rules(EXAMPLE_RULES), kernel_class=KERNEL_CLASS)


class TcpProxy:
    """A loopback TCP proxy to a port that a test can cut (close every connection and
    refuse new ones) and restore: one client's network outage while others stay up. With
    ``delay_s`` everything the server sends reaches the client that much later (a slow
    link), in order."""

    def __init__(self, target_port: int, *, delay_s: float = 0.0) -> None:
        self._target_port = target_port
        self._delay_s = delay_s
        self._server: asyncio.base_events.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._open = asyncio.Event()
        self._open.set()
        self.port = 0

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    async def __aenter__(self) -> TcpProxy:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc_info) -> None:
        self._server.close()
        await self.cut()

    async def cut(self) -> None:
        self._open.clear()
        for writer in list(self._writers):
            writer.close()
        self._writers.clear()

    def restore(self) -> None:
        self._open.set()

    async def _serve(self, client_reader, client_writer) -> None:
        if not self._open.is_set():
            client_writer.close()
            return
        try:
            server_reader, server_writer = await asyncio.open_connection("127.0.0.1", self._target_port)
        except OSError:
            client_writer.close()
            return
        self._writers.update((client_writer, server_writer))
        await asyncio.gather(
            self._pipe(client_reader, server_writer, 0.0),
            self._pipe(server_reader, client_writer, self._delay_s),
            return_exceptions=True,
        )

    async def _pipe(self, reader, writer, delay_s: float) -> None:
        try:
            while data := await reader.read(65536):
                if delay_s:
                    await asyncio.sleep(delay_s)
                writer.write(data)
                await writer.drain()
        finally:
            writer.close()
            self._writers.discard(writer)
