"""RawDeliveryParser: the ingest worker's receive path, byte for byte against the NATS
client protocol, and alongside nats-py on a real server."""

from __future__ import annotations

import asyncio
import random

import nats
import pytest
from nats.aio.client import Client
from nats.errors import ProtocolError

from ledger.natsraw import RawDeliveryParser

SINK_SID = 7
OTHER_SID = 3


class Sink:
    def __init__(self) -> None:
        self.payloads: list[bytes] = []
        self.replies: list[bytes] = []
        self.events: list[tuple] = []  # ("delivered", messages so far) and ("status", code, description)

    async def delivered(self) -> None:
        self.events.append(("delivered", len(self.payloads)))

    async def status(self, code: str, description: str) -> None:
        self.events.append(("status", code, description))


class FakeClient:
    """What the parser calls on nats-py's client, recorded."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []
        self.parser: RawDeliveryParser | None = None
        self.reset_on_ping = False

    async def _process_msg(self, sid, subject, reply, data, headers) -> None:
        self.calls.append(("msg", sid, subject, reply, data, headers))

    async def _process_ping(self) -> None:
        self.calls.append(("ping",))
        if self.reset_on_ping:
            self.parser.reset()

    async def _process_pong(self) -> None:
        self.calls.append(("pong",))

    async def _process_info(self, info) -> None:
        self.calls.append(("info", info))

    async def _process_err(self, message) -> None:
        self.calls.append(("err", message))


def hmsg(subject: bytes, sid: int, reply: bytes | None, headers: bytes, payload: bytes) -> bytes:
    reply_part = b" " + reply if reply else b""
    return b"HMSG %s %d%s %d %d\r\n%s%s\r\n" % (subject, sid, reply_part, len(headers), len(headers) + len(payload),
                                                headers, payload)


def delivery(sequence: int, payload: bytes) -> bytes:
    """A JetStream message as a pull consumer receives it (stored headers, ack subject)."""
    headers = b"NATS/1.0\r\nNats-Msg-Id: gw1:%d\r\n\r\n" % sequence
    return hmsg(b"_INBOX.x", SINK_SID, ack(sequence), headers, payload)


def ack(sequence: int) -> bytes:
    return b"$JS.ACK.S.C.1.%d.%d.1763712000000000000.0" % (sequence, sequence)


def status(code: bytes, description: bytes = b"") -> bytes:
    return hmsg(b"_INBOX.x", SINK_SID, None, b"NATS/1.0 " + code + (b" " + description if description else b"") + b"\r\n\r\n", b"")


async def feed(stream: bytes, chunk_sizes) -> tuple[Sink, FakeClient]:
    client = FakeClient()
    parser = RawDeliveryParser(client)
    client.parser = parser
    sink = Sink()
    parser.attach(SINK_SID, sink)
    position = 0
    for size in chunk_sizes:
        await parser.parse(stream[position : position + size])
        position += size
    await parser.parse(stream[position:])
    return sink, client


def stream_of_everything() -> tuple[bytes, list[bytes]]:
    payloads = [bytes([n]) * (n * 7 % 300) + b"\r\nMSG 1 2 3\r\n" for n in range(1, 40)]  # CRLF inside payloads
    parts = [b"INFO {\"server_id\":\"x\"}\r\n", b"+OK\r\n"]
    for number, payload in enumerate(payloads, 1):
        parts.append(delivery(number, payload))
        if number == 10:
            parts += [status(b"100", b"Idle Heartbeat"), b"PING\r\n"]
        if number == 20:
            parts += [hmsg(b"other.subject", OTHER_SID, b"_INBOX.r", b"NATS/1.0\r\nA: b\r\n\r\n", b"for nats-py"),
                      b"MSG other.plain 3 5\r\nhello\r\n", b"PONG\r\n"]
        if number == 30:
            parts += [status(b"408", b"Request Timeout"), b"-ERR 'Stale Connection'\r\n"]
    parts.append(status(b"409", b"Consumer Deleted"))
    return b"".join(parts), payloads


EXPECTED_CALLS = [
    ("info", {"server_id": "x"}),
    ("ping",),
    ("msg", OTHER_SID, b"other.subject", b"_INBOX.r", b"for nats-py", b"NATS/1.0\r\nA: b\r\n\r\n"),
    ("msg", OTHER_SID, b"other.plain", b"", b"hello", None),
    ("pong",),
    ("err", "'stale connection'"),
]


@pytest.mark.parametrize("seed", range(12))
async def test_any_split_of_the_stream_gives_the_same_deliveries_in_order(seed):
    stream, payloads = stream_of_everything()
    randomness = random.Random(seed)
    chunks = [randomness.choice((1, 2, 3, 17, 64, 500, 4096)) for _ in range(len(stream))]
    sink, client = await feed(stream, chunks if seed else [len(stream)])
    assert sink.payloads == payloads
    assert sink.replies == [ack(number) for number in range(1, len(payloads) + 1)]
    assert client.calls == EXPECTED_CALLS
    statuses = [event for event in sink.events if event[0] == "status"]
    assert statuses == [("status", "100", "Idle Heartbeat"), ("status", "408", "Request Timeout"),
                        ("status", "409", "Consumer Deleted")]
    # Data is announced before anything that came after it, and all of it by the end.
    for at, event in enumerate(sink.events):
        if event == ("status", "100", "Idle Heartbeat"):
            assert ("delivered", 10) in sink.events[:at]
        if event == ("status", "408", "Request Timeout"):
            assert ("delivered", 30) in sink.events[:at]
    assert ("delivered", len(payloads)) in sink.events


async def test_a_sink_message_without_headers_is_data():
    sink, client = await feed(b"MSG _INBOX.x %d $JS.ACK.S.C.1.5.5.1.0 3\r\nabc\r\n" % SINK_SID, [])
    assert (sink.payloads, sink.replies, client.calls) == ([b"abc"], [b"$JS.ACK.S.C.1.5.5.1.0"], [])


async def test_a_detached_subscription_goes_back_to_nats_py():
    client = FakeClient()
    parser = RawDeliveryParser(client)
    sink = Sink()
    parser.attach(SINK_SID, sink)
    parser.detach(SINK_SID)
    await parser.parse(delivery(1, b"x"))
    assert sink.payloads == [] and client.calls[0][:2] == ("msg", SINK_SID)


async def test_a_reset_in_a_callback_drops_the_rest_of_the_old_connection():
    client = FakeClient()
    parser = RawDeliveryParser(client)
    client.parser = parser
    client.reset_on_ping = True
    sink = Sink()
    parser.attach(SINK_SID, sink)
    await parser.parse(delivery(1, b"a") + b"PING\r\n" + delivery(2, b"b") + delivery(3, b"c")[:5])
    assert sink.payloads == [b"a"]
    await parser.parse(delivery(4, b"d"))  # the new connection's bytes parse from scratch
    assert sink.payloads == [b"a", b"d"]


@pytest.mark.parametrize(
    "garbage",
    [b"WHAT\r\n", b"HMSG a 7 b x y\r\n", b"MSG a 3 q\r\n", b"HMSG a " + b"x" * 5000],
)
async def test_protocol_errors_are_reported_as_nats_py_does(garbage):
    parser = RawDeliveryParser(FakeClient())
    parser.attach(SINK_SID, Sink())
    with pytest.raises(ProtocolError):
        await parser.parse(garbage)


async def test_nats_py_works_as_usual_on_a_connection_with_the_parser(nats_server):
    """Subscriptions, requests and the JetStream API of the same connection take nats-py's
    path; a raw sink on it receives its messages."""
    client = Client()
    client._ps = RawDeliveryParser(client)
    await client.connect(nats_server.url)
    other = await nats.connect(nats_server.url)
    try:
        received = []

        async def on_plain(msg) -> None:
            received.append(msg.data)

        async def on_service(msg) -> None:
            await msg.respond(b"pong:" + msg.data)

        await client.subscribe("plain", cb=on_plain)
        await other.subscribe("service", cb=on_service)
        sink = Sink()
        raw = await client.subscribe("raw")
        client._ps.attach(raw._id, sink)
        await other.flush()
        await client.flush()
        for number in range(200):
            await other.publish("raw", b"r%d" % number, reply="r.%d" % number, headers={"H": "v"} if number % 2 else None)
        await other.publish("plain", b"p")
        assert (await client.request("service", b"ping", timeout=5)).data == b"pong:ping"
        await other.flush()
        for _ in range(100):
            if len(sink.payloads) == 200 and received:
                break
            await asyncio.sleep(0.02)
        assert sink.payloads == [b"r%d" % number for number in range(200)]
        assert sink.replies == [b"r.%d" % number for number in range(200)]
        assert received == [b"p"]
        assert (await client.jetstream().account_info()) is not None
    finally:
        await other.close()
        await client.close()
