"""EmbeddedNats: start with JetStream, restart on the same port, stop, clear errors, and no
server left behind when the process that started it is killed with SIGKILL."""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import nats
import pytest

from gateway.embedded_nats import (
    EmbeddedNats,
    NatsServerBinaryNotFoundError,
    NatsServerStartError,
    find_nats_server_binary,
)
from tests.clients.gateway_harness import CHECKS_RULES, write_up_watchdogs

REPO_ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.timeout(60)


def test_binary_is_found_next_to_the_venv_python():
    binary = find_nats_server_binary()
    assert binary.name == "nats-server"
    assert os.access(binary, os.X_OK)


async def test_start_serves_jetstream_and_stop_ends_the_process(tmp_path):
    server = EmbeddedNats(tmp_path)
    async with server:
        assert server.running
        assert server.port > 0
        nc = await nats.connect(server.url, allow_reconnect=False)
        try:
            account = await nc.jetstream().account_info()
            assert account is not None
        finally:
            await nc.close()
        pid = server.pid
        assert (tmp_path / "nats" / "jetstream").is_dir()
    assert not server.running
    assert pid is not None
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # reaped, not a zombie or an orphan


def test_restart_keeps_the_port_and_the_store(tmp_path):
    server = EmbeddedNats(tmp_path)
    with server:
        first_port = server.port
    with server:
        assert server.port == first_port
    assert (tmp_path / "nats" / "nats-server.log").stat().st_size > 0


def test_a_missing_binary_is_a_clear_error(tmp_path):
    server = EmbeddedNats(tmp_path, binary=tmp_path / "no-such-nats-server")
    with pytest.raises(NatsServerBinaryNotFoundError, match="no-such-nats-server"):
        server.start_blocking()
    assert not server.running


def test_a_binary_that_fails_reports_its_output(tmp_path):
    fake = tmp_path / "fake-nats-server"
    fake.write_text("#!/bin/sh\necho 'fatal: cannot listen, config is broken' >&2\nexit 3\n")
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    server = EmbeddedNats(tmp_path, binary=fake, startup_timeout_s=5)
    with pytest.raises(NatsServerStartError, match="(?s)exited with code 3.*config is broken"):
        server.start_blocking()
    assert not server.running


def test_a_binary_that_never_becomes_ready_times_out_and_is_killed(tmp_path):
    fake = tmp_path / "silent-nats-server"
    fake.write_text("#!/bin/sh\necho 'starting forever'\nexec sleep 60\n")
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    server = EmbeddedNats(tmp_path, binary=fake, port=1, startup_timeout_s=0.5, stop_timeout_s=1)
    with pytest.raises(NatsServerStartError, match="(?s)within 0.5 s.*starting forever"):
        server.start_blocking()
    assert not server.running


def test_port_in_use_fails_with_the_server_log(tmp_path):
    with EmbeddedNats(tmp_path / "first") as first:
        second = EmbeddedNats(tmp_path / "second", port=first.port, startup_timeout_s=5)
        with pytest.raises(NatsServerStartError, match="(?i)address already in use"):
            second.start_blocking()


def test_nats_server_fixture_restarts_on_the_same_url(nats_server):
    url = nats_server.url
    nats_server.stop()
    assert not nats_server.running
    nats_server.start()
    assert nats_server.running
    assert nats_server.url == url
    nats_server.kill()
    nats_server.start()
    assert nats_server.url == url


# -- no orphans: a killed starter leaves no server behind -------------------------------------

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="parent-death signal and /proc")

#: A process that starts an embedded server on a given data dir and port, prints the
#: server's pid, then waits to be killed.
STARTER_SCRIPT = """
import asyncio, sys, time
from gateway.embedded_nats import EmbeddedNats

async def main():
    server = EmbeddedNats(sys.argv[1], port=int(sys.argv[2]))
    await server.start()  # from a worker thread, as GatewayApp does
    print(server.pid, flush=True)
    time.sleep(120)

asyncio.run(main())
"""
STARTER_TIMEOUT_S = 20.0
ORPHAN_EXIT_TIMEOUT_S = 10.0


def process_is_gone(pid: int) -> bool:
    """Exited: no such process, or a zombie nobody reaped (its parent died with it)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


def wait_until_gone(pid: int, timeout_s: float = ORPHAN_EXIT_TIMEOUT_S) -> None:
    """Until ``pid`` exited; else kill it (no orphan outlives a failed test) and fail."""
    deadline = time.monotonic() + timeout_s
    while not process_is_gone(pid):
        if time.monotonic() >= deadline:
            os.kill(pid, signal.SIGKILL)
            pytest.fail(f"nats-server {pid} still ran {timeout_s} s after its starter died")
        time.sleep(0.02)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_and_kill_a_starter(data_dir: Path, port: int) -> int:
    """Run STARTER_SCRIPT until its server is up, SIGKILL it; return the server's pid."""
    starter = subprocess.Popen(
        [sys.executable, "-c", STARTER_SCRIPT, str(data_dir), str(port)],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        ready, _, _ = select.select([starter.stdout], [], [], STARTER_TIMEOUT_S)
        assert ready, "the starter did not start its nats-server in time"
        server_pid = int(starter.stdout.readline())
        assert not process_is_gone(server_pid)
    finally:
        starter.kill()
        starter.wait(STARTER_TIMEOUT_S)
        starter.stdout.close()
    return server_pid


@linux_only
def test_a_server_dies_with_its_killed_starter_and_the_next_start_reuses_port_and_store(tmp_path):
    port = free_port()
    server_pid = start_and_kill_a_starter(tmp_path, port)
    wait_until_gone(server_pid)
    assert "Server Exiting" in (tmp_path / "nats" / "nats-server.log").read_text()  # SIGTERM: clean stop
    with EmbeddedNats(tmp_path, port=port) as again:
        assert again.port == port and again.running


@linux_only
def test_pretrade_up_killed_with_sigkill_leaves_no_nats_server_and_starts_again(tmp_path):
    rules = tmp_path / "rules.toml"
    rules.write_text(CHECKS_RULES)
    data_dir = tmp_path / "data"
    argv = [sys.executable, "-m", "gateway.cli", "up", "--rules", str(rules), "--data-dir", str(data_dir),
            "--listen", "127.0.0.1:0", "--metrics-listen", "off", "--watchdogs", str(write_up_watchdogs(tmp_path)),
            "--json", "--log-level", "WARNING"]
    for attempt in ("first", "second"):
        up = subprocess.Popen(argv, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                              text=True)
        try:
            ready, _, _ = select.select([up.stdout], [], [], STARTER_TIMEOUT_S)
            assert ready, f"{attempt} pretrade up did not start in time"
            announced = json.loads(up.stdout.readline())
            assert announced["nats_url"].startswith("nats://127.0.0.1:"), announced
            server_pid = json.loads((data_dir / "nats" / "nats-server.pid.json").read_text())["pid"]
        finally:
            up.kill()
            up.wait(STARTER_TIMEOUT_S)
            up.stdout.close()
        wait_until_gone(server_pid)


@linux_only
def test_an_orphaned_server_on_the_store_is_stopped_by_the_next_start(tmp_path):
    """The second layer: a server left running without a parent-death signal (another
    platform, an older version) is found by the pid file and stopped."""
    port = free_port()
    store_dir = tmp_path / "nats"
    store_dir.mkdir()
    orphan = subprocess.Popen(
        [str(find_nats_server_binary()), "--addr", "127.0.0.1", "--port", str(port), "--jetstream",
         "--store_dir", str(store_dir)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        gone_starter = subprocess.Popen(["true"])
        gone_starter.wait()
        (store_dir / "nats-server.pid.json").write_text(
            json.dumps({"pid": orphan.pid, "parent_pid": gone_starter.pid})
        )
        wait_for_port(port)
        with EmbeddedNats(tmp_path, port=port) as server:
            assert server.running and server.pid != orphan.pid
            assert orphan.wait(ORPHAN_EXIT_TIMEOUT_S) == 0  # SIGTERM: a clean stop
    finally:
        orphan.kill()
        orphan.wait()
    assert not (store_dir / "nats-server.pid.json").exists()


@linux_only
def test_a_store_in_use_by_a_live_process_is_refused_not_taken_over(tmp_path):
    with EmbeddedNats(tmp_path) as first:
        second = EmbeddedNats(tmp_path, startup_timeout_s=5)
        with pytest.raises(NatsServerStartError, match=f"in use by nats-server pid {first.pid}"):
            second.start_blocking()
        assert first.running and not second.running


def wait_for_port(port: int, timeout_s: float = STARTER_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            assert time.monotonic() < deadline, f"nothing listens on port {port}"
            time.sleep(0.02)
