"""A faster receive path for the ingest worker's pull subscriptions (nats-py 2.x).

nats-py turns every delivered message into a ``Msg``: two regular-expression matches on the
control line, a decoded subject and reply, a parsed header dict, and a trip through an
``asyncio.Queue`` to a per-subscription task. That is about 10 µs of interpreter time per
message, more than the ledger's whole commit costs, and the ingest worker needs none of it:
it keeps the message body and, for the last message of a batch, the reply subject (the
JetStream ack subject, which also carries the stream sequence).

:class:`RawDeliveryParser` replaces the client's protocol parser (``Client._ps``; set it
before ``connect``). For a subscription registered with :meth:`RawDeliveryParser.attach`
it appends each data message's body and reply subject to the sink's two lists and tells
the sink (``await sink.delivered()``) once per chunk read from the socket. JetStream
status messages (``NATS/1.0 408 ...``: pull request over, heartbeat, consumer deleted) go
to ``await sink.status(code, description)``, in order, after the data received before
them. Every other message, and every other protocol operation, takes nats-py's own path
unchanged (``Client._process_msg`` and friends), so requests, the JetStream API and other
subscriptions on the connection work as usual.

The wire format (``MSG <subject> <sid> [reply] <size>`` and ``HMSG <subject> <sid> [reply]
<header size> <total size>``, each followed by the bytes and CRLF) is NATS's client
protocol, stable across server versions; nats-py's parser interface (``parse``, ``reset``,
the ``_process_*`` callbacks) is what this depends on, checked against the pinned client
by ``tests/ledger/test_natsraw.py`` and the ingest tests.
"""

from __future__ import annotations

import json
from typing import Protocol

from nats.errors import ProtocolError
from nats.protocol import parser as nats_parser

_CRLF = b"\r\n"
_MAX_CONTROL_LINE_BYTES = nats_parser.MAX_CONTROL_LINE_SIZE
_HMSG = b"HMSG "
_MSG = b"MSG "
_HEADER_LINE_BYTES = len(b"NATS/1.0")
_SPACE = ord(" ")


_MAX_CACHED_SIZES = 4096


class _SizeCache(dict):
    """Decimal size fields -> int: deliveries repeat a few sizes, and a dict lookup is
    cheaper than ``int()``."""

    def __missing__(self, text: bytes) -> int:
        if not text.isdigit():
            raise ValueError(text)
        value = self[text] = int(text)
        return value


class RawSink(Protocol):
    """Where :class:`RawDeliveryParser` puts a subscription's messages."""

    payloads: list[bytes]  # appended to in place: message bodies
    replies: list[bytes]  # appended to in place: reply subjects, parallel to ``payloads``

    async def delivered(self) -> None:
        """Data messages were appended (once per chunk read, and before any later status)."""

    async def status(self, code: str, description: str) -> None:
        """A status message (JetStream: 100 heartbeat, 404/408 request over, 409 ...)."""


class RawDeliveryParser(nats_parser.Parser):
    """nats-py's protocol parser with a fast path for :meth:`attach`-ed subscriptions."""

    def __init__(self, nc=None) -> None:
        self._sinks: dict[int, RawSink] = {}
        self._rest = b""
        self._generation = 0
        self._sizes = _SizeCache()
        super().__init__(nc)

    def attach(self, sid: int, sink: RawSink) -> None:
        self._sinks[str(sid).encode()] = sink  # as the server echoes it

    def detach(self, sid: int) -> None:
        self._sinks.pop(str(sid).encode(), None)

    def reset(self) -> None:
        super().reset()
        self._rest = b""
        self._generation += 1  # a parse() suspended in a callback must not resume on old data

    async def parse(self, data: bytes = b"") -> None:
        buf = self._rest + data if self._rest else bytes(data)
        self._rest = b""
        size = len(buf)
        pos = 0
        sinks = self._sinks
        sizes = self._sizes
        if len(sizes) > _MAX_CACHED_SIZES:
            sizes.clear()
        touched: list[RawSink] = []  # sinks with data not yet announced by delivered()
        generation = self._generation
        while pos < size:
            end = buf.find(_CRLF, pos)
            if end < 0:
                if size - pos > _MAX_CONTROL_LINE_BYTES:
                    raise ProtocolError("nats: control line too long")
                break
            if buf.startswith(_HMSG, pos):
                parts = buf[pos + 5 : end].split()
                if len(parts) == 5 and (sink := sinks.get(parts[1])) is not None:
                    # The hot path: a JetStream delivery to a sink (it always has headers,
                    # at least the status line, and a reply subject).
                    try:
                        header_bytes = sizes[parts[3]]
                        stop = end + 2 + sizes[parts[4]]
                    except ValueError:
                        raise ProtocolError("nats: malformed HMSG") from None
                    if stop + 2 > size:
                        break  # the rest of this message is still to come
                    if buf[end + 2 + _HEADER_LINE_BYTES] != _SPACE:  # no status: a message
                        pos = stop + 2
                        sink.payloads.append(buf[end + 2 + header_bytes : stop])
                        sink.replies.append(parts[2])
                        if not touched or touched[-1] is not sink and sink not in touched:
                            touched.append(sink)
                        continue
                has_reply = len(parts) == 5
                try:
                    header_bytes = int(parts[-2])
                    total_bytes = int(parts[-1])
                except (IndexError, ValueError):
                    raise ProtocolError("nats: malformed HMSG") from None
            elif buf.startswith(_MSG, pos):
                parts = buf[pos + 4 : end].split()
                has_reply = len(parts) == 4
                header_bytes = 0
                try:
                    total_bytes = int(parts[-1])
                except (IndexError, ValueError):
                    raise ProtocolError("nats: malformed MSG") from None
            else:
                # Anything else (PING, PONG, +OK, -ERR, INFO): nats-py's own handling, in order.
                if touched:
                    await self._announce(touched)
                    touched = []
                    if self._generation != generation:
                        return
                await self._control(buf[pos : end + 2])
                if self._generation != generation:
                    return
                pos = end + 2
                continue
            start = end + 2
            stop = start + total_bytes
            if stop + 2 > size:
                break  # the rest of this message is still to come
            pos = stop + 2
            reply = parts[2] if has_reply else b""
            sink = sinks.get(parts[1]) if len(parts) > 1 else None
            if sink is not None and not (header_bytes and buf[start + _HEADER_LINE_BYTES] == _SPACE):
                sink.payloads.append(buf[start + header_bytes : stop])
                sink.replies.append(reply)
                if sink not in touched:
                    touched.append(sink)
                continue
            # A status for a sink ("NATS/1.0 <code> <description>"), or another subscription's
            # message: after the data received before it.
            if touched:
                await self._announce(touched)
                touched = []
                if self._generation != generation:
                    return
            if sink is not None:
                line = buf[start : buf.find(_CRLF, start)].decode("utf-8", "replace")
                code, _, description = line[_HEADER_LINE_BYTES + 1 :].partition(" ")
                await sink.status(code, description.strip())
            else:
                try:
                    sid = int(parts[1])
                except (IndexError, ValueError):
                    raise ProtocolError("nats: malformed MSG") from None
                header = buf[start : start + header_bytes] if header_bytes else None
                await self.nc._process_msg(sid, parts[0], reply, buf[start + header_bytes : stop], header)
            if self._generation != generation:
                return
        self._rest = buf[pos:]
        if touched:
            await self._announce(touched)

    @staticmethod
    async def _announce(touched: list[RawSink]) -> None:
        for sink in touched:
            await sink.delivered()

    async def _control(self, line: bytes) -> None:
        """One protocol operation other than a message (a whole line, CRLF included)."""
        nc = self.nc
        if nats_parser.OK_RE.match(line):
            return
        if nats_parser.PING_RE.match(line):
            await nc._process_ping()
        elif nats_parser.PONG_RE.match(line):
            await nc._process_pong()
        elif info := nats_parser.INFO_RE.match(line):
            await nc._process_info(json.loads(info.group(1).decode()))
        elif err := nats_parser.ERR_RE.match(line):
            message = err.group(1)
            await nc._process_err(message.decode().lower() if message else "")
        else:
            raise ProtocolError("nats: unknown protocol")
