"""Reference prices from NATS: ``pretrade.v1.marketdata.ref.<symbol>`` into the risk engine.

Each message is a serialized ``pretrade.v1.ReferencePrice``. The symbol inside the payload
is authoritative; the subject's trailing tokens only route (a symbol may contain dots, so
``ref.BRK.B`` is two tokens). Market data comes from systems the gateway does not control,
so a malformed message (not a ReferencePrice, empty symbol, non-positive price or
timestamp) is counted, logged at debug level and skipped: it never stops the subscription.

Delivery is core NATS (no stream): a reference price is a level, the next one supersedes
it, and staleness is judged from ``timestamp_ns`` by the engine, not from delivery.

Threading: ``on_price`` is called on the event loop that owns the NATS connection, once per
valid message, in arrival order per subscription; it must be quick (it shares the loop with
the order path).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from google.protobuf.message import DecodeError
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from gateway.subjects import REFERENCE_PRICE_SUBJECT_WILDCARD
from pretrade.v1.types_pb2 import ReferencePrice

log = logging.getLogger(__name__)

#: ``on_price(symbol, price_nanos, timestamp_ns)``: apply one reference price.
PriceCallback = Callable[[str, int, int], None]


@dataclass
class ReferencePriceCounters:
    """Running totals since the subscriber was created (read them, do not write them)."""

    #: Valid messages handed to ``on_price``.
    applied: int = 0
    #: Messages skipped because the payload was not a valid ReferencePrice.
    invalid: int = 0
    #: Valid messages whose ``on_price`` raised (a gateway bug; logged with the traceback).
    callback_errors: int = 0


class ReferencePriceSubscriber:
    """Subscribes ``nc`` to reference prices and hands each valid one to ``on_price``.

    ``on_price`` decides what a price means (e.g. ignore symbols the rules do not declare).
    An exception from it is a gateway bug: it is counted and logged with its traceback
    (nats-py would hand it to the connection's ``error_cb``, or drop it silently without
    one), and the subscription goes on with the next message.
    """

    def __init__(
        self,
        nc: NatsClient,
        on_price: PriceCallback,
        *,
        subject: str = REFERENCE_PRICE_SUBJECT_WILDCARD,
    ) -> None:
        self._nc = nc
        self._on_price = on_price
        self._subject = subject
        self._subscription: Subscription | None = None
        self.counters = ReferencePriceCounters()

    @property
    def subject(self) -> str:
        return self._subject

    async def start(self) -> None:
        """Subscribe; idempotent. Re-subscription after a reconnect is nats-py's job."""
        if self._subscription is None:
            self._subscription = await self._nc.subscribe(self._subject, cb=self._handle)

    async def stop(self) -> None:
        """Unsubscribe (messages already received are still handled); idempotent."""
        if self._subscription is not None:
            subscription, self._subscription = self._subscription, None
            await subscription.unsubscribe()

    async def _handle(self, msg: Msg) -> None:
        price = ReferencePrice()
        try:
            price.ParseFromString(msg.data)
        except DecodeError as error:
            self._skip(msg, f"not a ReferencePrice: {error}")
            return
        if not price.symbol:
            self._skip(msg, "empty symbol")
            return
        if price.price_nanos <= 0:
            self._skip(msg, f"price_nanos {price.price_nanos} is not positive")
            return
        if price.timestamp_ns <= 0:
            self._skip(msg, f"timestamp_ns {price.timestamp_ns} is not positive")
            return
        try:
            self._on_price(price.symbol, price.price_nanos, price.timestamp_ns)
        except Exception:
            self.counters.callback_errors += 1
            log.exception("applying the reference price of %r failed", price.symbol)
            return
        self.counters.applied += 1

    def _skip(self, msg: Msg, reason: str) -> None:
        self.counters.invalid += 1
        log.debug("skipped reference price on %s (%d bytes): %s", msg.subject, len(msg.data), reason)
