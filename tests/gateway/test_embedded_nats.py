"""EmbeddedNats: start with JetStream, restart on the same port, stop, clear errors."""

from __future__ import annotations

import os
import stat

import nats
import pytest

from gateway.embedded_nats import (
    EmbeddedNats,
    NatsServerBinaryNotFoundError,
    NatsServerStartError,
    find_nats_server_binary,
)

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
