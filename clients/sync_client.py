"""Blocking client of the gateway (scripts, the CLI, tests, synchronous OMS adapters).

Every unary call has a deadline (``timeout_s`` per call, else the client's default) and
every failure surfaces as a typed :mod:`clients.errors` exception, never a raw
``grpc.RpcError``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

import grpc

from clients.errors import error_from_rpc
from pretrade.v1 import gateway_pb2, gateway_pb2_grpc, types_pb2

DEFAULT_TARGET = "127.0.0.1:50051"
#: Deadline of a unary call, seconds: long enough for a batch over a WAN link, short
#: enough that a hung gateway does not hold an order back unnoticed.
DEFAULT_TIMEOUT_S = 5.0
#: Reconnect backoff of the SDK's channels, milliseconds: the first retry after a lost
#: connection comes after the initial backoff, each further one 1.6 times later (±20 %
#: jitter) up to the max. gRPC's own defaults (1 s growing to 120 s) keep a client failing
#: for up to two minutes after the gateway is back from an outage of a few minutes; with
#: these it reconnects within about a second of the gateway's return.
DEFAULT_INITIAL_RECONNECT_BACKOFF_MS = 100
DEFAULT_MAX_RECONNECT_BACKOFF_MS = 1000
#: The channel arguments every SDK channel starts from (see :func:`merged_channel_options`).
#: ``grpc.min_reconnect_backoff_ms`` is deliberately not set: in gRPC it is the minimum time
#: a connection attempt is given (default 20 s), and lowering it would cut slow handshakes
#: (TLS over a WAN) short instead of retrying sooner.
DEFAULT_CHANNEL_OPTIONS: tuple[tuple[str, object], ...] = (
    ("grpc.initial_reconnect_backoff_ms", DEFAULT_INITIAL_RECONNECT_BACKOFF_MS),
    ("grpc.max_reconnect_backoff_ms", DEFAULT_MAX_RECONNECT_BACKOFF_MS),
)


def merged_channel_options(options: Sequence[tuple[str, object]] = ()) -> tuple[tuple[str, object], ...]:
    """The channel arguments of a client given ``options``: :data:`DEFAULT_CHANNEL_OPTIONS`
    first, then ``options``; a key given in ``options`` replaces the default's value (the
    last one wins if a key is given twice), other keys are added. One merge rule, so that
    gRPC never sees a key twice and which value counts does not depend on gRPC's handling of
    duplicates."""
    merged = dict(DEFAULT_CHANNEL_OPTIONS)
    merged.update(options)
    return tuple(merged.items())


def auth_metadata(token: str | None) -> tuple[tuple[str, str], ...]:
    """The ``authorization: Bearer <token>`` call metadata (none without a token)."""
    return (("authorization", f"Bearer {token}"),) if token else ()


class GatewayClient:
    """``GatewayClient(target, token, timeout_s)``; use as a context manager or call
    :meth:`close`. ``credentials`` switches the channel to TLS; ``channel_options`` are gRPC
    channel arguments merged over :data:`DEFAULT_CHANNEL_OPTIONS` (:func:`merged_channel_options`).

    Calls fail fast: while the channel has no connection (the gateway is down, or between
    two reconnect attempts right after it came back) a call fails at once with
    :class:`~clients.errors.GatewayUnavailable` and gRPC's reason, rather than waiting out
    its deadline (gRPC's ``wait_for_ready``). A pre-trade check wants the negative answer,
    and its cause, now: with the reconnect backoff capped at
    :data:`DEFAULT_MAX_RECONNECT_BACKOFF_MS`, such failures end within about a second of
    the gateway's return (retry after that); waiting would instead hold every call for its
    whole deadline during an outage and report a refused connection or a failed TLS
    handshake as a bare deadline."""

    def __init__(
        self,
        target: str = DEFAULT_TARGET,
        token: str | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        *,
        credentials: grpc.ChannelCredentials | None = None,
        channel_options: Sequence[tuple[str, object]] = (),
    ) -> None:
        self.target = target
        self.timeout_s = timeout_s
        self._metadata = auth_metadata(token)
        options = merged_channel_options(channel_options)
        self._channel = (
            grpc.secure_channel(target, credentials, options=options)
            if credentials is not None
            else grpc.insecure_channel(target, options=options)
        )
        self._gateway = gateway_pb2_grpc.GatewayServiceStub(self._channel)
        self._admin = gateway_pb2_grpc.AdminServiceStub(self._channel)

    def _call(self, method, request, timeout_s: float | None):
        try:
            return method(request, timeout=timeout_s or self.timeout_s, metadata=self._metadata)
        except grpc.RpcError as error:
            raise error_from_rpc(error) from None

    # -- orders -----------------------------------------------------------------------------
    def check_order(self, order: types_pb2.Order, *, timeout_s: float | None = None) -> types_pb2.Decision:
        """The decision for one order (see :func:`clients.orders.make_order`)."""
        request = gateway_pb2.CheckOrderRequest(order=order)
        return self._call(self._gateway.CheckOrder, request, timeout_s).decision

    def check_orders(
        self, orders: Sequence[types_pb2.Order], *, timeout_s: float | None = None
    ) -> list[types_pb2.Decision]:
        """Decisions for a batch of orders, in order."""
        request = gateway_pb2.CheckOrdersRequest(orders=orders)
        response = self._call(self._gateway.CheckOrders, request, timeout_s)
        return list(response.decisions)

    def stream(
        self, requests: Iterable[gateway_pb2.StreamOrdersRequest], *, timeout_s: float | None = None
    ) -> Iterator[gateway_pb2.StreamOrdersResponse]:
        """StreamOrders: send ``requests`` (batches), yield decision batches and control
        messages. A stream is long-lived, so it has no deadline unless ``timeout_s`` is given."""
        try:
            yield from self._gateway.StreamOrders(iter(requests), timeout=timeout_s, metadata=self._metadata)
        except grpc.RpcError as error:
            raise error_from_rpc(error) from None

    # -- executions and market data ----------------------------------------------------------
    def report_executions(
        self, executions: Sequence[types_pb2.Execution], *, timeout_s: float | None = None
    ) -> list[gateway_pb2.ExecutionResult]:
        request = gateway_pb2.ReportExecutionsRequest(executions=executions)
        return list(self._call(self._gateway.ReportExecutions, request, timeout_s).results)

    def update_reference_prices(
        self, prices: Sequence[types_pb2.ReferencePrice], *, timeout_s: float | None = None
    ) -> gateway_pb2.UpdateReferencePricesResponse:
        request = gateway_pb2.UpdateReferencePricesRequest(prices=prices)
        return self._call(self._gateway.UpdateReferencePrices, request, timeout_s)

    # -- administration (admin role) ---------------------------------------------------------
    def reload_rules(
        self, path: str = "", *, timeout_s: float | None = None
    ) -> gateway_pb2.ReloadRulesResponse:
        return self._call(self._admin.ReloadRules, gateway_pb2.ReloadRulesRequest(path=path), timeout_s)

    def get_status(self, *, timeout_s: float | None = None) -> gateway_pb2.GetStatusResponse:
        return self._call(self._admin.GetStatus, gateway_pb2.GetStatusRequest(), timeout_s)

    # -- lifecycle ---------------------------------------------------------------------------
    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> GatewayClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
