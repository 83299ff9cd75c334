"""ReferencePriceSubscriber against a real nats-server: valid prices applied, bad ones counted."""

from __future__ import annotations

import asyncio
import time

import nats
import pytest

from gateway.marketdata import ReferencePriceSubscriber
from gateway.subjects import InvalidSubjectTokenError, reference_price_subject
from pretrade.v1.types_pb2 import ReferencePrice

pytestmark = pytest.mark.timeout(30)


def price_message(symbol: str, price_nanos: int, timestamp_ns: int = 1_700_000_000_000_000_000) -> bytes:
    return ReferencePrice(symbol=symbol, price_nanos=price_nanos, timestamp_ns=timestamp_ns).SerializeToString()


async def wait_for_total(subscriber: ReferencePriceSubscriber, total: int, timeout_s: float = 5) -> None:
    deadline = time.monotonic() + timeout_s
    counters = subscriber.counters
    while counters.applied + counters.invalid + counters.callback_errors < total:
        assert time.monotonic() < deadline, f"only {counters} of {total} messages handled"
        await asyncio.sleep(0.01)


async def flushed(nc) -> None:
    """Return once the server has processed everything ``nc`` sent before.

    nats-py 2.16's ``flush()`` writes its PING straight to the socket, so it can overtake
    SUB/PUB commands still queued for the flusher task; by the time the first PONG is
    back the flusher has written them, so the second PING/PONG follows them.
    """
    await nc.flush()
    await nc.flush()


@pytest.fixture
async def connections(nats_server):
    subscriber_nc = await nats.connect(nats_server.url)
    publisher_nc = await nats.connect(nats_server.url)
    try:
        yield subscriber_nc, publisher_nc
    finally:
        await publisher_nc.close()
        await subscriber_nc.close()


async def test_valid_prices_are_applied_with_the_payload_symbol(connections):
    subscriber_nc, publisher_nc = connections
    applied: list[tuple[str, int, int]] = []
    subscriber = ReferencePriceSubscriber(subscriber_nc, lambda *price: applied.append(price))
    await subscriber.start()
    await flushed(subscriber_nc)
    await publisher_nc.publish(reference_price_subject("AAPL"), price_message("AAPL", 189_120_000_000, 11))
    # Dotted symbol: two subject tokens, one symbol (from the payload).
    await publisher_nc.publish(reference_price_subject("BRK.B"), price_message("BRK.B", 412_000_000_000, 12))
    # The subject only routes: the payload's symbol wins.
    await publisher_nc.publish(reference_price_subject("MSFT"), price_message("MSFT.OLD", 1, 13))
    await flushed(publisher_nc)
    await wait_for_total(subscriber, 3)
    assert applied == [
        ("AAPL", 189_120_000_000, 11),
        ("BRK.B", 412_000_000_000, 12),
        ("MSFT.OLD", 1, 13),
    ]
    assert subscriber.counters.applied == 3
    assert subscriber.counters.invalid == 0
    await subscriber.stop()


async def test_malformed_messages_are_counted_and_skipped(connections):
    subscriber_nc, publisher_nc = connections
    applied: list[tuple[str, int, int]] = []
    subscriber = ReferencePriceSubscriber(subscriber_nc, lambda *price: applied.append(price))
    await subscriber.start()
    await flushed(subscriber_nc)
    subject = reference_price_subject("AAPL")
    for payload in (
        b"\xff\xff\xff not protobuf",
        b"",  # decodes to an all-default message: no symbol
        price_message("", 100),
        price_message("AAPL", 0),
        price_message("AAPL", -5),
        price_message("AAPL", 100, timestamp_ns=0),
    ):
        await publisher_nc.publish(subject, payload)
    await publisher_nc.publish(subject, price_message("AAPL", 100, 7))  # still subscribed
    await flushed(publisher_nc)
    await wait_for_total(subscriber, 7)
    assert subscriber.counters.invalid == 6
    assert subscriber.counters.applied == 1
    assert applied == [("AAPL", 100, 7)]


async def test_a_failing_callback_is_counted_and_does_not_stop_the_subscription(connections, caplog):
    subscriber_nc, publisher_nc = connections
    applied: list[str] = []

    def on_price(symbol: str, price_nanos: int, timestamp_ns: int) -> None:
        if symbol == "BOOM":
            raise KeyError(symbol)
        applied.append(symbol)

    subscriber = ReferencePriceSubscriber(subscriber_nc, on_price)
    await subscriber.start()
    await flushed(subscriber_nc)
    for symbol in ("BOOM", "AAPL"):
        await publisher_nc.publish(reference_price_subject(symbol), price_message(symbol, 100))
    await flushed(publisher_nc)
    await wait_for_total(subscriber, 2)
    assert subscriber.counters.callback_errors == 1
    assert applied == ["AAPL"]
    assert "BOOM" in caplog.text


async def test_stop_unsubscribes(connections):
    subscriber_nc, publisher_nc = connections
    subscriber = ReferencePriceSubscriber(subscriber_nc, lambda *price: None)
    await subscriber.start()
    await subscriber.start()  # idempotent
    await subscriber.stop()
    await subscriber.stop()
    await flushed(subscriber_nc)
    await publisher_nc.publish(reference_price_subject("AAPL"), price_message("AAPL", 100))
    await flushed(publisher_nc)
    await asyncio.sleep(0.1)
    assert subscriber.counters.applied == 0


@pytest.mark.parametrize("symbol", ["", "A B", "A*", ">", ".A", "A.", "A..B"])
def test_symbols_that_cannot_be_subjects_are_refused(symbol):
    with pytest.raises(InvalidSubjectTokenError):
        reference_price_subject(symbol)
