"""The worker reads decisions from JetStream on a real nats-server: nothing published while
it is cut off from NATS (or while NATS restarts) is missed, a restarted worker resumes
without counting twice, a redelivered decision is counted once, and a worker started
before the gateway created its streams waits for them."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time

import nats
import nats.errors
import pytest

from gateway.subjects import DECISIONS_STREAM, DECISIONS_STREAM_SUBJECTS, decisions_subject, msg_id
from tests.watchdogs import events as ev
from watchdogs import subjects
from watchdogs.config import parse_config
from watchdogs.worker import RecentIds, WatchdogWorker

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

#: Generous: a loaded CI host must not turn a slow pass into a failure.
WAIT_S = 30.0
GATEWAY = "gw"


async def _until(predicate, timeout_s: float = WAIT_S, describe=lambda: ""):
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"condition not reached in time {describe()}"
        await asyncio.sleep(0.02)


async def _until_async(predicate, timeout_s: float = WAIT_S, describe=lambda: ""):
    deadline = time.monotonic() + timeout_s
    while not await predicate():
        assert time.monotonic() < deadline, f"condition not reached in time {describe()}"
        await asyncio.sleep(0.05)


class Proxy:
    """A TCP proxy between the worker and nats-server that can cut the worker off: while
    closed it drops every connection and refuses new ones (by closing them at once)."""

    def __init__(self, upstream_port: int) -> None:
        self._upstream_port = upstream_port
        self._open = True
        self._writers: set[asyncio.StreamWriter] = set()
        self._server = None

    async def __aenter__(self):
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.url = f"nats://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"
        return self

    async def __aexit__(self, *exc_info):
        self.cut()
        self._server.close()
        await self._server.wait_closed()

    def cut(self) -> None:
        self._open = False
        for writer in list(self._writers):
            writer.close()
        self._writers.clear()

    def restore(self) -> None:
        self._open = True

    async def _handle(self, reader, writer):
        if not self._open:
            writer.close()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self._upstream_port)
        except OSError:
            writer.close()
            return
        self._writers |= {writer, up_writer}

        async def pipe(src, dst):
            with contextlib.suppress(Exception):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.close()
            self._writers.discard(dst)

        pipes = [asyncio.create_task(pipe(reader, up_writer)), asyncio.create_task(pipe(up_reader, writer))]
        try:
            await asyncio.wait(pipes)
        finally:  # the server closing at teardown cancels this handler: end the pipes quietly
            for task in pipes:
                task.cancel()


def _config(worker_id: str = "wd-js", max_orders: int = 5):
    return parse_config({
        "worker": {"worker_id": worker_id, "status_listen": "off"},
        "watchdogs": {"order_rate": {
            "max_orders": max_orders, "window_s": 1.0, "consecutive": 1, "cooldown_s": 0, "action": "warn",
        }},
    })


async def _decisions_stream(js) -> None:
    """The decisions stream as the gateway makes it (file storage)."""
    await js.add_stream(name=DECISIONS_STREAM, subjects=list(DECISIONS_STREAM_SUBJECTS))


async def _publish(js, first: int, count: int, *, t: float = 0.0) -> None:
    """Decisions ``first .. first+count-1`` of strategy ALGO, all within ~10 ms of event time
    ``t``, with the gateway's message ids."""
    for sequence in range(first, first + count):
        decision = ev.decision(t + sequence * 1e-5, sequence=sequence).payload
        deadline = time.monotonic() + WAIT_S
        for attempt in itertools.count():
            try:  # retried like the gateway does (the id makes it safe) while NATS comes back
                ack = await js.publish(
                    decisions_subject(GATEWAY), decision.SerializeToString(),
                    headers={subjects.MSG_ID_HEADER: msg_id(GATEWAY, sequence)}, timeout=1.0,
                )
            except (nats.errors.Error, asyncio.TimeoutError):
                assert time.monotonic() < deadline, f"decision {sequence} not stored in time"
                await asyncio.sleep(0.05)
                continue
            assert attempt > 0 or not ack.duplicate
            break


async def _publish_without_ids(js, count: int, *, t: float) -> None:
    """Decisions without a ``Nats-Msg-Id`` (as a non-gateway publisher might send)."""
    for index in range(count):
        decision = ev.decision(t + index * 1e-5, sequence=1_000 + index).payload
        await js.publish(decisions_subject(GATEWAY), decision.SerializeToString())


async def _settled(js, worker_id: str, stream_seq: int) -> bool:
    """The worker's consumer has acked everything up to ``stream_seq``."""
    info = await js.consumer_info(DECISIONS_STREAM, subjects.consumer_name(worker_id))
    return info.ack_floor.stream_seq >= stream_seq and info.num_ack_pending == 0 and info.num_pending == 0


def test_recent_ids_are_bounded():
    seen = RecentIds(capacity=3)
    assert [seen.add(key) for key in ("a", "b", "a", "c", "d")] == [True, True, False, True, True]
    assert len(seen) == 3 and seen.add("a"), "the oldest id was forgotten"


def test_consumer_names_are_valid():
    assert subjects.consumer_name("wd.1 *>") == "pretrade-watchdogs-wd_1___"
    assert subjects.JETSTREAM_INPUTS == {
        subjects.DECISIONS_WILDCARD: DECISIONS_STREAM, subjects.EVENTS_WILDCARD: "PRETRADE_EVENTS",
    }


async def test_a_burst_published_while_the_worker_is_cut_off_is_observed(nats_server):
    nc = await nats.connect(nats_server.url, reconnect_time_wait=0.1, max_reconnect_attempts=-1)
    js = nc.jetstream()
    await _decisions_stream(js)
    async with Proxy(nats_server.port) as proxy:
        worker = WatchdogWorker(_config(), proxy.url)
        await worker.start()
        try:
            await _publish(js, 1, 3)  # below the limit: the path is live, nothing fires
            await _until(lambda: worker.engine.events_observed == 3, describe=worker.status)
            assert worker.engine.findings_emitted == 0

            proxy.cut()
            await _until(lambda: not worker.status()["nats_connected"])
            await _publish(js, 4, 20, t=10.0)  # a runaway burst during the outage
            assert worker.engine.events_observed == 3
            proxy.restore()

            await _until(lambda: worker.engine.events_observed == 23, describe=worker.status)
            await _until(lambda: worker.engine.findings_emitted >= 1)
            assert worker.recent_findings[0]["watchdog"] == "order_rate"
            assert worker.recent_findings[0]["name"] == "ALGO"

            # and across a restart of nats-server itself (file store: the consumer survives)
            nats_server.restart()
            await _publish(js, 24, 4, t=20.0)
            await _until(lambda: worker.engine.events_observed == 27, describe=worker.status)
            await _until_async(lambda: _settled(js, "wd-js", 27))
            assert worker.engine.events_observed == 27, "nothing counted twice"
        finally:
            await worker.stop()
    await nc.close()


async def test_a_restarted_worker_resumes_without_counting_twice(nats_server):
    nc = await nats.connect(nats_server.url, reconnect_time_wait=0.1, max_reconnect_attempts=-1)
    js = nc.jetstream()
    await _decisions_stream(js)
    first = WatchdogWorker(_config(max_orders=1000), nats_server.url)
    await first.start()
    try:
        await _publish(js, 1, 10)
        await _until(lambda: first.engine.events_observed == 10, describe=first.status)
        await _until_async(lambda: _settled(js, "wd-js", 10))
    finally:
        await first.stop()

    await _publish(js, 11, 5)  # while no worker runs
    second = WatchdogWorker(_config(max_orders=1000), nats_server.url)
    await second.start()
    try:
        await _until(lambda: second.engine.events_observed == 5, describe=second.status)
        await _publish(js, 16, 2)
        await _until(lambda: second.engine.events_observed == 7, describe=second.status)
        await _until_async(lambda: _settled(js, "wd-js", 17))
        assert second.engine.events_observed == 7, "the first worker's decisions are not replayed"
    finally:
        await second.stop()
    await nc.close()


async def test_a_redelivered_decision_is_counted_once(nats_server):
    nc = await nats.connect(nats_server.url, reconnect_time_wait=0.1, max_reconnect_attempts=-1)
    js = nc.jetstream()
    # a short duplicate window, so the stream stores a re-published decision again
    await js.add_stream(
        name=DECISIONS_STREAM, subjects=list(DECISIONS_STREAM_SUBJECTS), duplicate_window=0.2
    )
    worker = WatchdogWorker(_config(max_orders=1000), nats_server.url)
    await worker.start()
    try:
        await _publish(js, 1, 1)
        await _until(lambda: worker.engine.events_observed == 1, describe=worker.status)
        payload = ev.decision(1e-5, sequence=1).payload.SerializeToString()
        headers = {subjects.MSG_ID_HEADER: msg_id(GATEWAY, 1)}

        async def stored_again() -> bool:
            return not (await js.publish(decisions_subject(GATEWAY), payload, headers=headers)).duplicate

        await _until_async(stored_again)
        await _until_async(lambda: _settled(js, "wd-js", 2))
        assert worker.engine.events_observed == 1
        await _until(lambda: worker.metrics.duplicates.labels("decision")._value.get() >= 1)
    finally:
        await worker.stop()
    await nc.close()


async def test_the_worker_waits_for_streams_the_gateway_has_not_created_yet(nats_server):
    worker = WatchdogWorker(_config(), nats_server.url)
    await worker.start()
    nc = await nats.connect(nats_server.url, reconnect_time_wait=0.1, max_reconnect_attempts=-1)
    js = nc.jetstream()
    try:
        assert worker.status()["jetstream_inputs"] == {DECISIONS_STREAM: False}
        await _decisions_stream(js)
        await _until(lambda: worker.status()["jetstream_inputs"][DECISIONS_STREAM], describe=worker.status)
        await _publish(js, 1, 8)
        await _publish_without_ids(js, 1, t=1.0)  # stream sequence 9, keyed by that
        await _until(lambda: worker.engine.events_observed == 9, describe=worker.status)
        await _until(lambda: worker.engine.findings_emitted >= 1)

        # the stream deleted and made again (as a fresh gateway would): the worker re-binds,
        # and the new stream's sequences (1, 2, ... 9 again) are new decisions
        await js.delete_stream(DECISIONS_STREAM)
        await _decisions_stream(js)
        await _publish_without_ids(js, 10, t=50.0)
        await _until(lambda: worker.engine.events_observed == 19, describe=worker.status)
        assert worker.status()["jetstream_inputs"][DECISIONS_STREAM]
    finally:
        await worker.stop()
        await nc.close()
