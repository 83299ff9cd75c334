"""DecisionPublisher against a real nats-server: ordering, dedup, outages, crashes, shutdown."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import nats
import pytest
from nats.js.api import AckPolicy, ConsumerConfig, StorageType, StreamConfig
from prometheus_client import CollectorRegistry, Counter

from gateway.outbox import DecisionOutbox
from gateway.publisher import DecisionPublisher, DecisionSequenceConflictError, PublisherMetricHooks
from gateway.subjects import DECISIONS_STREAM, MSG_ID_HEADER, decisions_subject
from pretrade.v1 import types_pb2

pytestmark = pytest.mark.timeout(60)

REPO_ROOT = Path(__file__).resolve().parents[2]
GATEWAY_ID = "gw-test"
# Fast failure detection so outage tests take seconds, not the production defaults.
FAST = dict(ack_timeout_s=1.0, reconnect_wait_s=0.1, retry_backoff_max_s=0.2, flush_interval_s=0.02)


async def eventually(condition, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        await asyncio.sleep(0.01)


def append_decisions(outbox: DecisionOutbox, count: int, make_payload) -> list[int]:
    first = outbox.last_sequence + 1
    sequences = list(range(first, first + count))
    outbox.append([(sequence, make_payload(sequence)) for sequence in sequences])
    return sequences


async def read_stream(url: str, gateway_id: str = GATEWAY_ID):
    """Every message of ``gateway_id`` in the decisions stream, in stream order, and the
    stream's total message count."""
    nc = await nats.connect(url, allow_reconnect=False)
    try:
        js = nc.jetstream()
        total = (await js.stream_info(DECISIONS_STREAM)).state.messages
        messages = []
        if total:
            subscription = await js.pull_subscribe(
                decisions_subject(gateway_id),
                stream=DECISIONS_STREAM,
                config=ConsumerConfig(ack_policy=AckPolicy.NONE),  # no ack-pending cap
            )
            while len(messages) < total:
                try:
                    messages.extend(await subscription.fetch(min(1000, total - len(messages)), timeout=2))
                except nats.errors.TimeoutError:
                    break
        return messages, total
    finally:
        await nc.close()


def assert_exactly_once_in_order(messages, total: int, sequences: list[int], gateway_id: str = GATEWAY_ID):
    assert total == len(sequences), f"stream holds {total} messages for {len(sequences)} decisions"
    assert [msg.headers[MSG_ID_HEADER] for msg in messages] == [f"{gateway_id}:{seq}" for seq in sequences]
    assert [types_pb2.Decision.FromString(msg.data).sequence for msg in messages] == sequences


def assert_exactly_once(messages, total: int, sequences: list[int], gateway_id: str = GATEWAY_ID):
    """Every decision stored once, the header matching the payload. Across a reconnect the
    stream order may differ from sequence order (publishes nats-py buffered before the drop
    are sent ahead of the re-publish of earlier ones), so order is not asserted."""
    assert total == len(sequences), f"stream holds {total} messages for {len(sequences)} decisions"
    stored = [types_pb2.Decision.FromString(msg.data).sequence for msg in messages]
    assert sorted(stored) == sequences
    assert [msg.headers[MSG_ID_HEADER] for msg in messages] == [f"{gateway_id}:{seq}" for seq in stored]


async def test_publishes_every_decision_in_order_with_msg_ids(nats_server, outbox, make_decision_payload):
    publisher = DecisionPublisher(outbox, GATEWAY_ID, **FAST)
    await publisher.start(nats_server.url)
    assert await publisher.wait_connected(5)
    sequences = []
    for _ in range(40):  # 40 appends of 25 as the order path would make them
        sequences += append_decisions(outbox, 25, make_decision_payload)
        publisher.notify()
        await asyncio.sleep(0)
    await eventually(lambda: outbox.depth == 0, 10, "the outbox to drain")
    assert publisher.counters.decisions_published == 1000
    assert publisher.counters.duplicates_dropped == 0
    assert publisher.publish_lag_s == 0.0
    await publisher.stop()
    messages, total = await read_stream(nats_server.url)
    assert_exactly_once_in_order(messages, total, sequences)
    assert messages[0].subject == decisions_subject(GATEWAY_ID)


async def test_stream_is_created_with_file_storage_and_a_duplicate_window(nats_server, outbox):
    publisher = DecisionPublisher(outbox, GATEWAY_ID, duplicate_window_s=30, **FAST)
    await publisher.start(nats_server.url)
    nc = await nats.connect(nats_server.url)
    try:
        js = nc.jetstream()
        await eventually(lambda: publisher.connected, 5, "connection")
        outbox.append([(1, b"x")])
        publisher.notify()
        await eventually(lambda: outbox.depth == 0, 5, "first publish")
        config = (await js.stream_info(DECISIONS_STREAM)).config
        assert config.storage == StorageType.FILE
        assert config.subjects == ["pretrade.v1.decisions.>"]
        assert config.duplicate_window == 30
    finally:
        await publisher.stop()
        await nc.close()


async def test_existing_stream_is_extended_not_replaced(nats_server, outbox):
    nc = await nats.connect(nats_server.url)
    js = nc.jetstream()
    await js.add_stream(
        StreamConfig(
            name=DECISIONS_STREAM,
            subjects=["audit.decisions"],
            storage=StorageType.FILE,
            duplicate_window=10,
            max_msgs=1_000_000,
        )
    )
    publisher = DecisionPublisher(outbox, GATEWAY_ID, duplicate_window_s=60, **FAST)
    await publisher.start(nats_server.url)
    try:
        outbox.append([(1, b"x")])
        publisher.notify()
        await eventually(lambda: outbox.depth == 0, 5, "publish into the extended stream")
        config = (await js.stream_info(DECISIONS_STREAM)).config
        assert config.subjects == ["audit.decisions", "pretrade.v1.decisions.>"]
        assert config.duplicate_window == 60
        assert config.max_msgs == 1_000_000  # the operator's limit survives
    finally:
        await publisher.stop()
        await nc.close()


async def test_memory_stream_is_refused_and_decisions_stay_in_the_outbox(nats_server, outbox):
    nc = await nats.connect(nats_server.url)
    js = nc.jetstream()
    await js.add_stream(
        StreamConfig(name=DECISIONS_STREAM, subjects=["pretrade.v1.decisions.>"], storage=StorageType.MEMORY)
    )
    publisher = DecisionPublisher(outbox, GATEWAY_ID, **FAST)
    await publisher.start(nats_server.url)
    try:
        outbox.append([(1, b"x")])
        publisher.notify()
        await eventually(lambda: publisher.counters.publish_failures >= 2, 5, "repeated stream refusals")
        assert outbox.depth == 1
        assert (await js.stream_info(DECISIONS_STREAM)).state.messages == 0
    finally:
        await publisher.stop(flush_timeout_s=0.1)
        await nc.close()


async def test_decisions_survive_a_nats_crash_and_land_exactly_once(nats_server, outbox, make_decision_payload):
    """SIGKILL nats-server mid-stream, keep deciding, restart it: every decision is in the
    stream exactly once."""
    publisher = DecisionPublisher(outbox, GATEWAY_ID, **FAST)
    await publisher.start(nats_server.url)
    assert await publisher.wait_connected(5)
    sequences: list[int] = []

    async def order_path(count: int) -> None:
        for _ in range(count):
            sequences.extend(append_decisions(outbox, 5, make_decision_payload))
            publisher.notify()
            await asyncio.sleep(0.001)

    await order_path(300)
    sequences.extend(append_decisions(outbox, 1000, make_decision_payload))  # a burst in flight...
    publisher.notify()
    await asyncio.sleep(0.005)
    await asyncio.to_thread(nats_server.kill)  # ...when the server dies
    assert not nats_server.running
    await order_path(200)  # decided while NATS is down: only the outbox has them
    await eventually(lambda: not publisher.connected, 5, "the publisher to notice the outage")
    assert outbox.depth > 0
    assert publisher.publish_lag_s > 0
    restart = asyncio.create_task(asyncio.to_thread(nats_server.start))
    await order_path(300)  # keep deciding during the restart and the catch-up
    await restart
    await eventually(lambda: outbox.depth == 0, 20, "the outbox to drain after the restart")
    assert publisher.counters.disconnects >= 1
    await publisher.stop()

    messages, total = await read_stream(nats_server.url)
    assert_exactly_once(messages, total, sequences)


async def test_decisions_survive_a_graceful_nats_restart(nats_server, outbox, make_decision_payload):
    publisher = DecisionPublisher(outbox, GATEWAY_ID, **FAST)
    await publisher.start(nats_server.url)
    assert await publisher.wait_connected(5)
    sequences = append_decisions(outbox, 500, make_decision_payload)
    publisher.notify()
    await asyncio.to_thread(nats_server.restart)
    sequences += append_decisions(outbox, 500, make_decision_payload)
    publisher.notify()
    await eventually(lambda: outbox.depth == 0, 20, "the outbox to drain")
    await publisher.stop()
    messages, total = await read_stream(nats_server.url)
    assert_exactly_once(messages, total, sequences)


async def test_start_while_nats_is_down_publishes_once_it_is_up(nats_server, outbox, make_decision_payload):
    nats_server.stop()
    publisher = DecisionPublisher(outbox, GATEWAY_ID, **FAST)
    await publisher.start(nats_server.url)  # returns although nothing listens
    sequences = append_decisions(outbox, 100, make_decision_payload)
    publisher.notify()
    await asyncio.sleep(0.3)
    assert not publisher.connected
    assert outbox.depth == 100
    await asyncio.to_thread(nats_server.start)
    assert await publisher.wait_connected(5)
    await eventually(lambda: outbox.depth == 0, 10, "the outbox to drain")
    await publisher.stop()
    messages, total = await read_stream(nats_server.url)
    assert_exactly_once_in_order(messages, total, sequences)


async def test_stop_flushes_what_is_pending(nats_server, outbox, make_decision_payload):
    publisher = DecisionPublisher(outbox, GATEWAY_ID, **FAST)
    await publisher.start(nats_server.url)
    assert await publisher.wait_connected(5)
    sequences = append_decisions(outbox, 2000, make_decision_payload)
    publisher.notify()
    await publisher.stop(flush_timeout_s=10)  # immediately: stop does the publishing
    assert outbox.depth == 0
    assert not publisher.connected
    messages, total = await read_stream(nats_server.url)
    assert_exactly_once_in_order(messages, total, sequences)


async def test_stop_with_nats_down_keeps_decisions_for_the_next_start(nats_server, tmp_path, make_decision_payload):
    path = tmp_path / "outbox"
    with DecisionOutbox(path) as box:
        publisher = DecisionPublisher(box, GATEWAY_ID, **FAST)
        await publisher.start(nats_server.url)
        assert await publisher.wait_connected(5)
        await asyncio.to_thread(nats_server.stop)
        sequences = append_decisions(box, 50, make_decision_payload)
        publisher.notify()
        started = time.monotonic()
        await publisher.stop(flush_timeout_s=0.5)
        assert time.monotonic() - started < 3
        assert box.depth == 50
    await asyncio.to_thread(nats_server.start)
    with DecisionOutbox(path) as box:
        assert box.last_sequence == 50
        publisher = DecisionPublisher(box, GATEWAY_ID, **FAST)
        await publisher.start(nats_server.url)
        await eventually(lambda: box.depth == 0, 10, "the replay of the outbox")
        await publisher.stop()
    messages, total = await read_stream(nats_server.url)
    assert_exactly_once_in_order(messages, total, sequences)


async def test_gateway_killed_mid_publish_loses_nothing(nats_server, tmp_path):
    """A gateway process appends 2000 decisions, publishes some of them and dies by SIGKILL;
    a new publisher on the same outbox publishes the rest, and JetStream holds each once."""
    path = tmp_path / "outbox"
    child = textwrap.dedent(
        f"""
        import asyncio, os
        from gateway.outbox import DecisionOutbox
        from gateway.publisher import DecisionPublisher

        async def main():
            box = DecisionOutbox({str(path)!r})
            publisher = DecisionPublisher(box, {GATEWAY_ID!r})
            await publisher.start({nats_server.url!r})
            assert await publisher.wait_connected(5)
            for first in range(1, 2001, 20):
                box.append([(seq, b"decision-%d" % seq) for seq in range(first, first + 20)])
                publisher.notify()
            while publisher.counters.decisions_published < 300:
                await asyncio.sleep(0.001)
            print(publisher.counters.decisions_published, box.depth, flush=True)
            os.kill(os.getpid(), 9)

        asyncio.run(main())
        """
    )
    result = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-c", child], cwd=REPO_ROOT, timeout=30, capture_output=True
    )
    assert result.returncode == -signal.SIGKILL, result.stderr.decode()
    published_before_kill, depth_at_kill = map(int, result.stdout.split())
    assert published_before_kill >= 300
    assert depth_at_kill > 0, "the child published everything before dying: the test proves nothing"

    with DecisionOutbox(path) as box:
        assert box.last_sequence == 2000
        publisher = DecisionPublisher(box, GATEWAY_ID, **FAST)
        await publisher.start(nats_server.url)
        await eventually(lambda: box.depth == 0, 10, "the replay of the outbox")
        await publisher.stop()
    messages, total = await read_stream(nats_server.url)
    assert total == 2000
    assert [msg.headers[MSG_ID_HEADER] for msg in messages] == [f"{GATEWAY_ID}:{seq}" for seq in range(1, 2001)]
    assert [msg.data for msg in messages] == [b"decision-%d" % seq for seq in range(1, 2001)]


async def test_republished_decisions_are_dropped_as_duplicates(nats_server, tmp_path, make_decision_payload):
    """Entries acked but not yet removed when the gateway died are published again on the
    next start; JetStream recognises them by Nats-Msg-Id."""
    path = tmp_path / "outbox"
    with DecisionOutbox(path) as box:
        sequences = append_decisions(box, 10, make_decision_payload)
    nc = await nats.connect(nats_server.url)
    js = nc.jetstream()
    await js.add_stream(StreamConfig(name=DECISIONS_STREAM, subjects=["pretrade.v1.decisions.>"], duplicate_window=60))
    for sequence in sequences[:4]:  # stored by the previous life, which died before removing them
        await js.publish(
            decisions_subject(GATEWAY_ID),
            make_decision_payload(sequence),
            headers={MSG_ID_HEADER: f"{GATEWAY_ID}:{sequence}"},
        )
    await nc.close()
    with DecisionOutbox(path) as box:
        publisher = DecisionPublisher(box, GATEWAY_ID, duplicate_window_s=60, **FAST)
        await publisher.start(nats_server.url)
        await eventually(lambda: box.depth == 0, 10, "the replay of the outbox")
        await publisher.stop()
    assert publisher.counters.duplicates_dropped == 4
    assert publisher.counters.decisions_published == 6
    messages, total = await read_stream(nats_server.url)
    assert_exactly_once_in_order(messages, total, sequences)


async def test_a_fresh_outbox_under_a_used_gateway_id_stops_before_publishing(
    nats_server, tmp_path, make_decision_payload
):
    """A wiped data directory restarts sequences at 1; JetStream would drop those new
    decisions as duplicates of the old ones. The publisher refuses instead, keeps them in
    the outbox and reports the conflict."""
    with DecisionOutbox(tmp_path / "first-life") as box:
        publisher = DecisionPublisher(box, GATEWAY_ID, **FAST)
        await publisher.start(nats_server.url)
        append_decisions(box, 5, make_decision_payload)
        publisher.notify()
        await eventually(lambda: box.depth == 0, 10, "the first life's decisions published")
        await publisher.stop()
    fatal_errors = []
    with DecisionOutbox(tmp_path / "wiped") as box:
        publisher = DecisionPublisher(box, GATEWAY_ID, on_fatal=fatal_errors.append, **FAST)
        await publisher.start(nats_server.url)
        append_decisions(box, 2, make_decision_payload)
        publisher.notify()
        assert not await publisher.wait_connected(2)
        await eventually(lambda: fatal_errors, 5, "the conflict reported")
        await publisher.stop(flush_timeout_s=0.1)
        assert box.depth == 2
    (error,) = fatal_errors
    assert isinstance(error, DecisionSequenceConflictError) and publisher.fatal_error is error
    assert f"already has sequence 5 in JetStream stream {DECISIONS_STREAM}" in str(error)
    assert "ends at 2" in str(error) and "--gateway-id" in str(error)
    messages, total = await read_stream(nats_server.url)
    assert_exactly_once_in_order(messages, total, [1, 2, 3, 4, 5])


async def test_the_outbox_that_published_the_stream_continues_it(nats_server, tmp_path, make_decision_payload):
    """The same data directory after a restart (and another gateway id beside it) is no
    conflict: both go on publishing."""
    path = tmp_path / "outbox"
    with DecisionOutbox(tmp_path / "other") as other:
        publisher = DecisionPublisher(other, "gw-other", **FAST)
        await publisher.start(nats_server.url)
        append_decisions(other, 7, make_decision_payload)
        publisher.notify()
        await eventually(lambda: other.depth == 0, 10, "the other gateway's decisions published")
        await publisher.stop()
    sequences = []
    for _ in range(2):
        with DecisionOutbox(path) as box:
            publisher = DecisionPublisher(box, GATEWAY_ID, **FAST)
            await publisher.start(nats_server.url)
            assert await publisher.wait_connected(5)
            sequences += append_decisions(box, 3, make_decision_payload)
            publisher.notify()
            await eventually(lambda: box.depth == 0, 10, "the outbox to drain")
            await publisher.stop()
            assert publisher.fatal_error is None
    messages, total = await read_stream(nats_server.url)
    assert sorted(int(m.headers[MSG_ID_HEADER].rpartition(":")[2]) for m in messages) == sequences
    assert total == 13  # 7 of gw-other and ours


async def test_deleted_stream_is_recreated(nats_server, outbox, make_decision_payload):
    publisher = DecisionPublisher(outbox, GATEWAY_ID, **FAST)
    await publisher.start(nats_server.url)
    append_decisions(outbox, 10, make_decision_payload)
    publisher.notify()
    await eventually(lambda: outbox.depth == 0, 5, "first publish")
    nc = await nats.connect(nats_server.url)
    await nc.jetstream().delete_stream(DECISIONS_STREAM)
    await nc.close()
    later = append_decisions(outbox, 10, make_decision_payload)
    publisher.notify()
    await eventually(lambda: outbox.depth == 0, 10, "publish into the recreated stream")
    await publisher.stop()
    messages, total = await read_stream(nats_server.url)
    assert_exactly_once_in_order(messages, total, later)
    assert publisher.counters.publish_failures >= 1


async def test_metric_hooks_accept_callables_and_prometheus_counters(nats_server, outbox, make_decision_payload):
    registry = CollectorRegistry()
    published = Counter("test_decisions_published", "test", registry=registry)
    failures: list[float] = []
    hooks = PublisherMetricHooks(decisions_published=published, publish_failures=failures.append)
    publisher = DecisionPublisher(outbox, GATEWAY_ID, metric_hooks=hooks, **FAST)
    await publisher.start(nats_server.url)
    append_decisions(outbox, 300, make_decision_payload)
    publisher.notify()
    await eventually(lambda: outbox.depth == 0, 10, "the outbox to drain")
    await publisher.stop()
    assert registry.get_sample_value("test_decisions_published_total") == 300
    assert failures == []
    with pytest.raises(TypeError):
        DecisionPublisher(outbox, GATEWAY_ID, metric_hooks=PublisherMetricHooks(publish_failures=object()))


async def test_publish_lag_is_the_age_of_the_oldest_unacked_decision(nats_server, outbox):
    nats_server.stop()
    publisher = DecisionPublisher(outbox, GATEWAY_ID, **FAST)
    await publisher.start(nats_server.url)
    assert publisher.publish_lag_s == 0.0
    outbox.append([(1, b"x")])
    publisher.notify()
    await asyncio.sleep(0.3)
    assert 0.3 <= publisher.publish_lag_s < 5
    assert publisher.outbox_depth == 1
    await asyncio.to_thread(nats_server.start)
    await eventually(lambda: publisher.publish_lag_s == 0.0, 10, "the lag to clear")
    await publisher.stop()


def test_invalid_gateway_id_is_refused(outbox):
    with pytest.raises(ValueError):
        DecisionPublisher(outbox, "gw.1")


async def test_stop_before_start_and_twice_is_harmless(nats_server, outbox):
    publisher = DecisionPublisher(outbox, GATEWAY_ID, **FAST)
    await publisher.stop()
    await publisher.start(nats_server.url)
    await publisher.stop()
    await publisher.stop()
    outbox.append([(1, b"x")])  # the publisher does not own (or close) the outbox


async def test_stop_when_nats_never_came_up_returns_within_the_flush_timeout(outbox):
    publisher = DecisionPublisher(outbox, GATEWAY_ID, **FAST)
    await publisher.start("nats://127.0.0.1:9")  # nothing listens on the discard port
    outbox.append([(1, b"x")])
    publisher.notify()
    started = time.monotonic()
    await publisher.stop(flush_timeout_s=0.3)
    assert time.monotonic() - started < 3
    assert not publisher.connected
    assert outbox.depth == 1
