"""The adapters' connection to the gateway: one gRPC channel, one StreamOrders stream
(:class:`clients.OrderBatcher`) that is re-opened after it broke (a gateway restart), and
every wait bounded by the decision timeout, so that an order is always answered in time
(fail closed) while the gateway is away and passes again as soon as it is back.

* ``await link.decide(order)`` → the Decision, or a :class:`clients.GatewayError`
  (``DeadlineExceeded`` when no decision came within ``decision_timeout_s``,
  ``GatewayUnavailable`` / others when the gateway cannot be reached). The whole call —
  re-opening the stream included — takes at most ``decision_timeout_s``.
* Re-opening is shared: orders arriving while the stream is being re-opened wait for that
  one attempt (each within its own deadline). After a failed attempt, orders fail at once
  for ``retry_interval_s`` (no connection storm), then the next order tries again.
* The channel retries a lost connection with the SDK's bounded backoff
  (``clients.sync_client.DEFAULT_MAX_RECONNECT_BACKOFF_MS``; gRPC's own grows to 120 s,
  which would keep orders rejected for up to two minutes after the gateway is back).
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

import grpc

from clients import AsyncGatewayClient, DeadlineExceeded, GatewayError, GatewayUnavailable, OrderBatcher
from clients.tls import TlsFileError, optional_tls_credentials
from pretrade.v1 import types_pb2

log = logging.getLogger("pretrade.adapters")

DEFAULT_RETRY_INTERVAL_S = 0.25


def adapter_client(
    target: str, token: str | None, timeout_s: float, credentials: grpc.ChannelCredentials | None = None
) -> AsyncGatewayClient:
    """An :class:`AsyncGatewayClient` (the SDK's channel defaults: bounded reconnect backoff);
    ``credentials`` (``clients.tls_credentials``): TLS to the gateway, None: plaintext (a
    plaintext gateway, or ``pretrade up``'s companion socket)."""
    return AsyncGatewayClient(target, token, timeout_s, credentials=credentials)


#: The keys of an adapter's gateway section (FIX ``[gateway]``, MT5 ``[bridge]``) naming its
#: TLS files, as the ``--tls-*`` client flags do.
TLS_KEYS = ("tls_ca", "tls_client_cert", "tls_client_key")


def config_credentials(
    section: dict, section_name: str, base_dir: Path | None
) -> grpc.ChannelCredentials | None:
    """The channel credentials of an adapter configuration file's :data:`TLS_KEYS` in
    ``section`` (paths relative to ``base_dir``, the file's directory); None: no key set
    (plaintext). The files are read and checked now (``clients.tls.TlsFileError``, one line
    naming ``section_name.key`` and the file), so that a bad file stops the adapter at start."""
    paths = []
    for key in TLS_KEYS:
        value = section.get(key)
        if value is not None and (not isinstance(value, str) or not value):
            raise TlsFileError(f"{section_name}.{key}", repr(value), "a path (non-empty string) is required")
        if value is not None and base_dir is not None and not Path(value).is_absolute():
            value = str(base_dir / value)
        paths.append(value)
    return optional_tls_credentials(*paths, settings=tuple(f"{section_name}.{key}" for key in TLS_KEYS))


def _retrieve(task: asyncio.Task) -> None:
    """Mark the outcome of an opening attempt seen (its waiters may all have timed out)."""
    if not task.cancelled():
        task.exception()


class GatewayLink:
    """``GatewayLink(target, token, decision_timeout_s, ...)``; ``decide``,
    ``report_executions``, ``await close()``. Make it on the event loop that uses it.
    ``credentials``: see :func:`adapter_client`."""

    def __init__(
        self,
        target: str,
        token: str | None,
        decision_timeout_s: float,
        *,
        batch_max_delay_s: float = 0.0005,
        on_control=None,
        retry_interval_s: float = DEFAULT_RETRY_INTERVAL_S,
        credentials: grpc.ChannelCredentials | None = None,
    ) -> None:
        self.decision_timeout_s = decision_timeout_s
        self._batch_max_delay_s = batch_max_delay_s
        self._on_control = on_control
        self._retry_interval_s = retry_interval_s
        self.client = adapter_client(target, token, decision_timeout_s, credentials)
        self._batcher: OrderBatcher | None = None
        self._opening: asyncio.Task | None = None
        self._last_failure: tuple[float, GatewayError] | None = None
        self._closed = False

    @property
    def stream_open(self) -> bool:
        """Whether the order stream is up (as far as the link knows)."""
        return self._batcher is not None and self._batcher.failure is None

    async def decide(self, order: types_pb2.Order) -> types_pb2.Decision:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.decision_timeout_s
        batcher = await self._stream(deadline)
        remaining = deadline - loop.time()
        if remaining <= 0:
            raise DeadlineExceeded(f"no decision for {order.client_order_id!r} within {self.decision_timeout_s} s")
        try:
            return await asyncio.wait_for(batcher.submit(order), remaining)
        except TimeoutError:
            raise DeadlineExceeded(
                f"no decision for {order.client_order_id!r} within {self.decision_timeout_s} s"
            ) from None

    async def report_executions(self, executions, *, timeout_s: float | None = None):
        return await self.client.report_executions(executions, timeout_s=timeout_s)

    async def _stream(self, deadline: float) -> OrderBatcher:
        if self._closed:
            raise GatewayUnavailable("the adapter is stopping")
        batcher = self._batcher
        if batcher is not None and batcher.failure is None:
            return batcher
        loop = asyncio.get_running_loop()
        if self._opening is None:
            if self._last_failure is not None:
                failed_at, error = self._last_failure
                if time.monotonic() - failed_at < self._retry_interval_s:
                    raise GatewayUnavailable(f"the order stream is down: {type(error).__name__}: {error.message}")
            self._opening = loop.create_task(self._open(), name="adapter-open-order-stream")
            self._opening.add_done_callback(_retrieve)
        opening = self._opening
        try:
            return await asyncio.wait_for(asyncio.shield(opening), max(deadline - loop.time(), 0.001))
        except TimeoutError:
            raise DeadlineExceeded("the gateway did not admit the order stream in time") from None

    async def _open(self) -> OrderBatcher:
        try:
            old, self._batcher = self._batcher, None
            if old is not None:
                log.warning("order stream to the gateway lost (%s): re-opening", old.failure)
                await old.close(timeout_s=0.1)
            batcher = self.client.batcher(
                max_delay_s=self._batch_max_delay_s,
                submit_timeout_s=self.decision_timeout_s,
                on_control=self._on_control,
            )
            await batcher.start(timeout_s=self.decision_timeout_s)
            if batcher.failure is not None:  # refused (gateway down, auth, overload)
                await batcher.close(timeout_s=0.1)
                raise batcher.failure
            if old is not None or self._last_failure is not None:
                log.warning("order stream to the gateway re-opened")
            self._batcher = batcher
            self._last_failure = None
            return batcher
        except GatewayError as exc:
            self._last_failure = (time.monotonic(), exc)
            raise
        finally:
            self._opening = None

    async def close(self) -> None:
        self._closed = True
        if self._opening is not None:
            self._opening.cancel()
            await asyncio.gather(self._opening, return_exceptions=True)
        if self._batcher is not None:
            await self._batcher.close(timeout_s=1.0)
        await self.client.close()
